-- Settlement intents (DESIGN §4): written before the transaction is sent, so a restart
-- resumes from here and checks the chain before sending again. 'pending' until the voucher
-- is settled on-chain ('succeeded') or the retries are spent ('dead', retried by hand).
CREATE TABLE settlements (
    id              BIGSERIAL PRIMARY KEY,
    session_key     TEXT NOT NULL,
    owner           TEXT NOT NULL,
    payee           TEXT NOT NULL,
    -- The voucher to submit, zero-padded to 78 digits like usage_ledger.voucher.
    voucher         TEXT NOT NULL,
    signature       TEXT NOT NULL,
    -- What the voucher moves: its amount less what was settled when the intent was written.
    amount          BIGINT NOT NULL,
    -- threshold, frozen, revoked, expired or withdrawal.
    reason          TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    -- The worker holding it and until when: one key settles in one place at a time.
    lease_owner     TEXT,
    lease_until     BIGINT,
    tx_hash         TEXT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
-- At most one open intent per key; a dead letter counts as open, so a key whose settlement
-- keeps failing is not planned again and again: it waits for someone to retry it by hand.
CREATE UNIQUE INDEX settlements_one_open_per_key ON settlements (session_key) WHERE status <> 'succeeded';
CREATE INDEX settlements_due ON settlements (status, next_attempt_at);
