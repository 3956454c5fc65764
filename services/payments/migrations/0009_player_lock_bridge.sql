-- The player's lock during a rolling deploy (issue 18). The previous release serialised one
-- player's purchases on a row of player_locks (INSERT ... ON CONFLICT DO NOTHING, then SELECT ...
-- FOR UPDATE); this one takes a transaction-scoped advisory lock instead (limits.lock_player) and
-- never touches the table. While replicas of both run, the two would not wait for each other and
-- two purchases could together pass a cap. This trigger makes the previous release's first
-- statement take the new lock too, with the same keys: a BEFORE INSERT row trigger fires for every
-- row proposed, whether or not ON CONFLICT then skips it. Dropped with player_locks in a later
-- release, once no replica of the previous version runs.
CREATE FUNCTION player_locks_take_advisory() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- 444465153 = limits.PLAYER_LOCK_CLASS (0x1A7E0001)
    PERFORM pg_advisory_xact_lock(444465153, hashtext(NEW.tenant_id || chr(31) || NEW.player_email));
    RETURN NEW;
END
$$;

CREATE TRIGGER player_locks_take_advisory
    BEFORE INSERT ON player_locks
    FOR EACH ROW EXECUTE FUNCTION player_locks_take_advisory();
