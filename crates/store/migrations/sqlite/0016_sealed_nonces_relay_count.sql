-- Secrets the servers of one deployment share, made once by whichever starts first: the key
-- that seals sign-in nonces, so issuing one writes nothing and any node can check it.
CREATE TABLE server_secrets (
    name   TEXT PRIMARY KEY,
    secret TEXT NOT NULL
);

-- The relay quota counts an owner's `relay.sent` entries of the last day on every relayed action.
CREATE INDEX audit_log_by_actor_action_at ON audit_log (actor, action, at);
