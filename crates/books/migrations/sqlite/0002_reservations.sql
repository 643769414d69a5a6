-- Stock held for orders. For each book, stock (available) + reserved + sold changes only when
-- staff adjust stock; a reservation moves units from stock to reserved, then to sold (confirm)
-- or back to stock (release, expiry).
ALTER TABLE books ADD COLUMN reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0);
ALTER TABLE books ADD COLUMN sold INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0);

CREATE TABLE reservations (
    order_id   TEXT NOT NULL,
    book_id    TEXT NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    state      TEXT NOT NULL CHECK (state IN ('held', 'confirmed', 'released')),
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (order_id, book_id)
);
CREATE INDEX reservations_expiring ON reservations (state, expires_at);
