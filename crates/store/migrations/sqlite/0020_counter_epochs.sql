-- Rebuilds of the gateway's counters (opentab_core::charge::CounterEpoch). Redis can lose its
-- counters while gateways are still committing charges taken on them; a rebuild raises the
-- epoch as it reads the ledger, in one transaction, and a charge taken on an older epoch is
-- refused when its batch commits: it is in neither the rebuilt counters nor the ledger.
ALTER TABLE key_usage ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;

CREATE TABLE owner_epochs (
    owner TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL
);
