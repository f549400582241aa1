-- Each key's served total (charges less voids), kept in step with usage_ledger in the same
-- transaction, so reading a key's usage does not sum its whole ledger.
CREATE TABLE key_usage (
    session_key TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    served      BIGINT NOT NULL
);
CREATE INDEX key_usage_by_owner ON key_usage (owner);

INSERT INTO key_usage (session_key, owner, served)
SELECT session_key, MIN(owner),
       CAST(SUM(CASE WHEN kind = 'charge' THEN amount ELSE -amount END) AS BIGINT)
FROM usage_ledger GROUP BY session_key;
