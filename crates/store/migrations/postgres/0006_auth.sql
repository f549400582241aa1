-- Sign-In with Ethereum: server-issued nonces, each usable once.
CREATE TABLE siwe_nonces (
    nonce      TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    used_at    BIGINT
);

-- Signed-in sessions; only a hash of the token is kept.
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_by_owner ON sessions (owner);
