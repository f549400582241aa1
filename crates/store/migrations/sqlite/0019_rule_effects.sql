-- What a rule decision must tell or do outside the database (email the owner, freeze the key
-- on-chain as its guardian), written in the transaction that records the alert and carried
-- out by a worker with a timeout: never on the charge that fired the rule.
CREATE TABLE rule_effects (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL,    -- email or guardian_freeze
    session_key     TEXT NOT NULL,
    rule            TEXT NOT NULL,
    -- email: {"subject", "body"}; guardian_freeze: {}.
    payload         TEXT NOT NULL,
    -- pending, done or dead.
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    -- Also the lease: a worker that takes an effect moves this past its own deadline.
    next_attempt_at BIGINT NOT NULL,
    done_at         BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL
);
CREATE INDEX rule_effects_due ON rule_effects (kind, status, next_attempt_at);

-- Each key's calls (charges less voids) beside its served total: the rule engine loads every
-- key's running average in one read when it starts.
ALTER TABLE key_usage ADD COLUMN calls BIGINT NOT NULL DEFAULT 0;
UPDATE key_usage SET calls = (
    SELECT COALESCE(SUM(CASE WHEN u.kind = 'charge' THEN 1 ELSE -1 END), 0)
    FROM usage_ledger u WHERE u.session_key = key_usage.session_key
);
-- The last minute's charges of every key, read when the engine starts.
CREATE INDEX usage_ledger_by_time ON usage_ledger (at);
