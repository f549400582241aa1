-- Gateways cache what they know of keys and tabs (the paid hot path reads no database). Every
-- change to a key or a tab names its owner on the channel `opentab_key_changes`, delivered when
-- the change commits, whichever process made it: each gateway node drops what it cached about
-- that owner.
CREATE FUNCTION opentab_key_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('opentab_key_changes', OLD.owner);
    ELSE
        PERFORM pg_notify('opentab_key_changes', NEW.owner);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER session_keys_changed AFTER INSERT OR UPDATE OR DELETE ON session_keys
    FOR EACH ROW EXECUTE FUNCTION opentab_key_changed();
CREATE TRIGGER tabs_changed AFTER INSERT OR UPDATE OR DELETE ON tabs
    FOR EACH ROW EXECUTE FUNCTION opentab_key_changed();
