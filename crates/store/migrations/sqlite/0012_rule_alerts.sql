-- Every alert of the rule engine, with why it fired and the numbers it saw: a user can see why
-- a key was frozen. recovered_at is set when the condition clears; an open alert per (key,
-- rule) at a time, so a crossing fires once.
CREATE TABLE rule_alerts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    session_key  TEXT NOT NULL,
    owner        TEXT NOT NULL,
    rule         TEXT NOT NULL,
    mode         TEXT NOT NULL,
    reason       TEXT NOT NULL,
    -- The rule's inputs (JSON).
    inputs       TEXT NOT NULL,
    -- 1 if the key was frozen for it (BIGINT: the Any driver decodes no SQLite BOOLEAN).
    froze        BIGINT NOT NULL,
    fired_at     BIGINT NOT NULL,
    recovered_at BIGINT
);
CREATE UNIQUE INDEX rule_alerts_one_open ON rule_alerts (session_key, rule) WHERE recovered_at IS NULL;
CREATE INDEX rule_alerts_by_key ON rule_alerts (session_key, fired_at);
