-- Webhooks waiting to be delivered (Standard Webhooks), written in the same transaction as
-- the change they announce, so none is lost; event_id makes a replayed change announce once.
CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL UNIQUE,
    event_type      TEXT NOT NULL,
    -- The JSON body, exactly as it is signed and sent.
    payload         TEXT NOT NULL,
    -- pending, delivered or dead.
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    delivered_at    BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (status, next_attempt_at);
