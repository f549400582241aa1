-- Every confirmed validator event, in chain order: the source the mirrored tables are folded
-- from, so a reorg is undone by deleting the orphaned rows and folding again.
CREATE TABLE chain_events (
    block_number BIGINT NOT NULL,
    log_index    BIGINT NOT NULL,
    block_hash   TEXT NOT NULL,
    tx_hash      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    owner        TEXT NOT NULL,
    session_key  TEXT,
    payload      TEXT NOT NULL,
    PRIMARY KEY (block_number, log_index)
);
CREATE INDEX chain_events_by_key ON chain_events (session_key);
CREATE INDEX chain_events_by_owner ON chain_events (owner);

-- Where the chain listener stands (JSON of opentab_chain::Cursor), per validator.
CREATE TABLE chain_cursor (
    validator  TEXT PRIMARY KEY,
    cursor     TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
