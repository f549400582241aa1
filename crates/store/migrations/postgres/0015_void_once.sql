-- A void names the charge it undoes, once: an app retrying a void whose answer it lost must not
-- take the price off twice (the ledger would then under-count what was served).
ALTER TABLE usage_ledger ADD COLUMN void_of TEXT;
CREATE UNIQUE INDEX usage_ledger_one_void_per_charge ON usage_ledger (void_of);
