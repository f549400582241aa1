-- Tabs replace the per-owner escrow: the contract now holds money per (owner, payee), and a
-- key draws only on its owner's tab with its payee. The contract was replaced (pre-release,
-- no data migration): events of the old one do not fold into tabs, so they are dropped and the
-- listener reads the new deployment from its first block.
DROP TABLE escrows;
DELETE FROM chain_events;
DELETE FROM chain_cursor;

-- Each owner's tab with each payee as the contract holds it, folded from events.
CREATE TABLE tabs (
    owner                    TEXT NOT NULL,
    payee                    TEXT NOT NULL,
    balance_units            BIGINT NOT NULL,
    withdrawal_units         BIGINT,
    withdrawal_grace_ends_at BIGINT,
    updated_at               BIGINT NOT NULL,
    PRIMARY KEY (owner, payee)
);
CREATE INDEX tabs_by_payee ON tabs (payee);

-- The guardian each owner chose on-chain (it may freeze the owner's keys), folded from events.
ALTER TABLE owners ADD COLUMN guardian TEXT;

-- The payee of the tab (or key) an event concerns; `owner` is the key's owner for settlements,
-- whose logs name only the key.
ALTER TABLE chain_events ADD COLUMN payee TEXT;
CREATE INDEX chain_events_by_tab ON chain_events (owner, payee);

-- The key's settled total once a settlement succeeded, zero-padded to 78 digits like voucher.
-- A short tab pays less than the voucher's increase: then this is below the voucher, and the
-- rest stays claimable with the same voucher.
ALTER TABLE settlements ADD COLUMN settled_total TEXT;
