-- When each key was last charged or voided, for the owner's list ("last activity"), kept in
-- step with usage_ledger in the same transaction like key_usage.served.
ALTER TABLE key_usage ADD COLUMN last_at BIGINT;
UPDATE key_usage SET last_at = (SELECT MAX(at) FROM usage_ledger WHERE usage_ledger.session_key = key_usage.session_key);
