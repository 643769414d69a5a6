-- Accounts. Personal data (email, full name, address) is only ever stored as AES-256-GCM
-- ciphertext under the data key `dek_id`; email lookups go through the keyed blind index.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL CONSTRAINT users_username_key UNIQUE,
    email_bidx    TEXT NOT NULL CONSTRAINT users_email_bidx_key UNIQUE,
    email_ct      BYTEA NOT NULL,
    full_name_ct  BYTEA NOT NULL,
    address_ct    BYTEA NOT NULL,
    dek_id        TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    roles         TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX users_by_username ON users (username);

-- Keys wrapped by the master key: the data key, the blind-index key, the token signing keys.
CREATE TABLE crypto_keys (
    id            TEXT PRIMARY KEY,
    purpose       TEXT NOT NULL,
    wrapped       BYTEA NOT NULL,
    master_key_id TEXT NOT NULL,
    public_jwk    TEXT,
    created_at    BIGINT NOT NULL,
    active_from   BIGINT NOT NULL,
    retired_at    BIGINT
);

-- Refresh tokens: stored hashed, used once; a family is one login's chain of rotations.
CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    family_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    revoked_at  BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_by_user ON refresh_tokens (user_id);

CREATE TABLE service_accounts (
    client_id   TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
