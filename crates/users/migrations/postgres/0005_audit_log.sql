-- The audit trail: every action of staff, admins and service accounts, append-only. Who is a
-- subject id (no name, no email); the client's address is sealed with the users data key.
CREATE TABLE audit_log (
    id             TEXT PRIMARY KEY,
    at_ms          BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    roles          TEXT NOT NULL,
    action         TEXT NOT NULL,
    target         TEXT NOT NULL,
    status         BIGINT NOT NULL,
    request_id     TEXT NOT NULL,
    address_sealed BYTEA NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at_ms);
CREATE INDEX audit_log_actor ON audit_log (actor, at_ms);

-- Nothing changes or leaves it, whatever the code above it does.
CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
