-- What each service account is granted (space-separated scopes), and when it was revoked: a
-- revoked account gets no more tokens.
ALTER TABLE service_accounts ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
ALTER TABLE service_accounts ADD COLUMN revoked_at BIGINT;
