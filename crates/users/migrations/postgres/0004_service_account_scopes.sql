-- What each service account is granted (space-separated scopes), and when it was revoked: a
-- revoked account gets no more tokens.
ALTER TABLE service_accounts ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
ALTER TABLE service_accounts ADD COLUMN revoked_at BIGINT;
-- Accounts made before scopes existed could read the catalog and run the checkout saga's stock
-- calls (orders' account does): they keep exactly that, so an upgrade breaks no deployment.
UPDATE service_accounts SET scopes = 'books:read books:reserve';
