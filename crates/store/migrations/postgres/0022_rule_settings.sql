-- The rule settings owners chose (opentab_core::rules::RuleOverrides, as JSON): an owner's own
-- defaults (session_key '') and per-key overrides. Each change is in audit_log too. Gateways
-- hear of a change on `opentab_key_changes`, like a change to a key.
CREATE TABLE rule_settings (
    owner       TEXT NOT NULL,
    session_key TEXT NOT NULL,
    overrides   TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (owner, session_key)
);

CREATE TRIGGER rule_settings_changed AFTER INSERT OR UPDATE OR DELETE ON rule_settings
    FOR EACH ROW EXECUTE FUNCTION opentab_key_changed();
