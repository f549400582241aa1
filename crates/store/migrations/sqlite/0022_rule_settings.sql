-- The rule settings owners chose (opentab_core::rules::RuleOverrides, as JSON): an owner's own
-- defaults (session_key '') and per-key overrides. Each change is in audit_log too. Gateways
-- hear of a change through key_changes, like a change to a key.
CREATE TABLE rule_settings (
    owner       TEXT NOT NULL,
    session_key TEXT NOT NULL,
    overrides   TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (owner, session_key)
);

CREATE TRIGGER rule_settings_inserted AFTER INSERT ON rule_settings
BEGIN
    INSERT INTO key_changes (owner) VALUES (NEW.owner);
END;
CREATE TRIGGER rule_settings_updated AFTER UPDATE ON rule_settings
BEGIN
    INSERT INTO key_changes (owner) VALUES (NEW.owner);
END;
CREATE TRIGGER rule_settings_deleted AFTER DELETE ON rule_settings
BEGIN
    INSERT INTO key_changes (owner) VALUES (OLD.owner);
END;
