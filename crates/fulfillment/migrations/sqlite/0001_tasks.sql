-- One task per placed order. Queued tasks are served in `rank` order (position = index among
-- the queued); `version` grows with every change and guards concurrent edits. The shipping
-- address (JSON) is AES-256-GCM ciphertext under fulfillment's data key, bound to the row.
CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    order_id         TEXT NOT NULL UNIQUE,
    lines            TEXT NOT NULL,
    shipping_address BLOB,
    state            TEXT NOT NULL,
    rank             INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    assignee         TEXT NOT NULL,
    reason           TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX tasks_by_state ON tasks (state, rank);

-- The queue's sequence: every change takes the next number by updating this one row, so
-- writers queue up behind each other and numbers follow commit order without gaps.
CREATE TABLE queue_head (
    id  INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL
);
INSERT INTO queue_head (id, seq) VALUES (1, 0);

-- Every change by its sequence number (no personal data: the task as it is lives in tasks).
CREATE TABLE changes (
    seq     INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    kind    TEXT NOT NULL,
    version INTEGER NOT NULL,
    at      INTEGER NOT NULL
);

-- Fulfillment's data key, wrapped by the master key (platform::crypto::stored_data_key).
CREATE TABLE data_keys (
    id            TEXT PRIMARY KEY,
    scope         TEXT NOT NULL,
    master_key_id TEXT NOT NULL,
    wrapped       BLOB NOT NULL,
    created_at    INTEGER NOT NULL
);
