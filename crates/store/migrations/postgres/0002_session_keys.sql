-- Session keys: the on-chain state mirrored from events (limit, window, payee, frozen_at,
-- revoked_at, settled), plus what only opentab knows (pending creation, off-chain freeze,
-- deletion from the default list). Amounts are USDC base units; times unix seconds.
CREATE TABLE session_keys (
    address            TEXT PRIMARY KEY,
    owner              TEXT NOT NULL,
    payee              TEXT NOT NULL,
    limit_units        BIGINT NOT NULL,
    valid_after        BIGINT NOT NULL,
    valid_until        BIGINT NOT NULL,
    -- 'pending' until the registration event is confirmed, then 'registered'.
    chain_status       TEXT NOT NULL,
    frozen_at          BIGINT,
    revoked_at         BIGINT,
    settled_units      BIGINT NOT NULL DEFAULT 0,
    -- Set the moment an owner or the rule engine freezes, before any transaction is mined.
    frozen_offchain_at BIGINT,
    deleted_at         BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX session_keys_by_owner ON session_keys (owner);
