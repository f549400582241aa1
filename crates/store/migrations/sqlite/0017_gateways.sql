-- The gateways charging on this database, each announcing itself while it runs. A gateway with
-- counters of its own (in-process) must be the only one for its payee: two sets of counters
-- would each let a key spend its whole limit.
CREATE TABLE gateways (
    id          TEXT PRIMARY KEY,
    payee       TEXT NOT NULL,
    shared      BIGINT NOT NULL,  -- 1: counters shared with other gateways (Redis); 0: its own
    description TEXT NOT NULL,
    seen_at     BIGINT NOT NULL
);
CREATE INDEX gateways_by_payee ON gateways (payee, seen_at);
