-- A settlement succeeds when its transaction is mined, and becomes final once its block is deep
-- enough (confirmed_at). A reorganisation can drop it before then: it is then 'reverted' (the
-- key is planned again from what the chain holds), which is not an open intent.
ALTER TABLE settlements ADD COLUMN confirmed_at BIGINT;
DROP INDEX settlements_one_open_per_key;
CREATE UNIQUE INDEX settlements_one_open_per_key ON settlements (session_key) WHERE status IN ('pending', 'dead');
