-- The idempotency key (its hash, scoped to the session key) a charge was made under; its void
-- carries it too. Counters rebuilt from the ledger (after a Redis data loss, or a restart with
-- in-process counters) then still refuse a retried request that was charged: a key counts while
-- its charges outnumber its voids, for the idempotency window.
ALTER TABLE usage_ledger ADD COLUMN idempotency TEXT;
CREATE INDEX usage_ledger_idempotency ON usage_ledger (session_key, at) WHERE idempotency IS NOT NULL;
