-- Roles, one row per user and role, so "who is an admin" is an exact, indexed match (the
-- last-admin guard locks these rows). users.roles keeps the same list for reading a user in
-- one row; both are written in the same transaction.
CREATE TABLE user_roles (
    user_id TEXT NOT NULL,
    role    TEXT NOT NULL,
    PRIMARY KEY (user_id, role)
);
CREATE INDEX user_roles_by_role ON user_roles (role, user_id);

INSERT INTO user_roles (user_id, role) SELECT id, 'customer' FROM users WHERE ',' || roles || ',' LIKE '%,customer,%';
INSERT INTO user_roles (user_id, role) SELECT id, 'staff' FROM users WHERE ',' || roles || ',' LIKE '%,staff,%';
INSERT INTO user_roles (user_id, role) SELECT id, 'admin' FROM users WHERE ',' || roles || ',' LIKE '%,admin,%';
INSERT INTO user_roles (user_id, role) SELECT id, 'service' FROM users WHERE ',' || roles || ',' LIKE '%,service,%';
