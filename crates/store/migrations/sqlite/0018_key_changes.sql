-- Gateways cache what they know of keys and tabs (the paid hot path reads no database). SQLite
-- has no notifications: every change to a key or a tab appends its owner here, whichever
-- process made it, and gateways in other processes read what is new every few milliseconds
-- (the process that made the change tells its own gateway at once). Rows older than ten
-- minutes are pruned.
CREATE TABLE key_changes (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    at    BIGINT NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))
);

CREATE TRIGGER session_keys_inserted AFTER INSERT ON session_keys
BEGIN
    INSERT INTO key_changes (owner) VALUES (NEW.owner);
END;
CREATE TRIGGER session_keys_updated AFTER UPDATE ON session_keys
BEGIN
    INSERT INTO key_changes (owner) VALUES (NEW.owner);
END;
CREATE TRIGGER session_keys_deleted AFTER DELETE ON session_keys
BEGIN
    INSERT INTO key_changes (owner) VALUES (OLD.owner);
END;
CREATE TRIGGER tabs_inserted AFTER INSERT ON tabs
BEGIN
    INSERT INTO key_changes (owner) VALUES (NEW.owner);
END;
CREATE TRIGGER tabs_updated AFTER UPDATE ON tabs
BEGIN
    INSERT INTO key_changes (owner) VALUES (NEW.owner);
END;
CREATE TRIGGER tabs_deleted AFTER DELETE ON tabs
BEGIN
    INSERT INTO key_changes (owner) VALUES (OLD.owner);
END;
