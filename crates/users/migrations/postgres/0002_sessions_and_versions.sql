-- A session is a family of refresh tokens. Revoking it is one row, which a refresh locks too,
-- so a refresh racing a revocation cannot leave a live token behind.
CREATE TABLE refresh_families (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    revoked_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX refresh_families_by_user ON refresh_families (user_id);

-- Optimistic concurrency for account updates: a write applies only to the version it read.
ALTER TABLE users ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
