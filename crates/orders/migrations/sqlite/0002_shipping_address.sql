-- Where an order ships: AES-256-GCM ciphertext of the address (JSON) under orders' data key,
-- bound to the order's row and column. Orders placed before addresses existed have none.
ALTER TABLE orders ADD COLUMN shipping_address BLOB;

-- Orders' data key, wrapped by the master key (platform::crypto::stored_data_key).
CREATE TABLE data_keys (
    id            TEXT PRIMARY KEY,
    scope         TEXT NOT NULL,
    master_key_id TEXT NOT NULL,
    wrapped       BLOB NOT NULL,
    created_at    INTEGER NOT NULL
);
