-- Each owner's escrow as the contract holds it, folded from events.
CREATE TABLE escrows (
    owner               TEXT PRIMARY KEY,
    balance_units       BIGINT NOT NULL,
    withdrawal_units    BIGINT,
    withdrawal_ready_at BIGINT,
    guardian            TEXT,
    updated_at          BIGINT NOT NULL
);
