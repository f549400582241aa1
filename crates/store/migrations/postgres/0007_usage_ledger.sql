-- Every charge and void of the gateway, append-only (a void is a new row, never an update):
-- the durable truth the gateway's counters are rebuilt from after a restart.
CREATE TABLE usage_ledger (
    id          BIGSERIAL PRIMARY KEY,
    at          BIGINT NOT NULL,
    session_key TEXT NOT NULL,
    owner       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    amount      BIGINT NOT NULL,
    route       TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    -- The voucher's cumulative amount, zero-padded to 78 digits so text order is numeric order.
    voucher     TEXT NOT NULL,
    signature   TEXT NOT NULL
);
CREATE INDEX usage_ledger_by_key ON usage_ledger (session_key, voucher);
