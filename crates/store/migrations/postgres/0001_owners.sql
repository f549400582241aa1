-- Everyone who signed in or holds a key; addresses are lowercase 0x-hex.
CREATE TABLE owners (
    address    TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);
