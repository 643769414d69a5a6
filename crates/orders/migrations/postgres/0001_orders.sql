-- Orders and their lines. Prices and titles are copied from the books service at checkout.
-- stock_state mirrors the order's reservation at books (held, confirmed, released); a sweeper
-- finishes any settlement a crash interrupted.
CREATE TABLE orders (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    status      TEXT NOT NULL,
    total_minor BIGINT NOT NULL,
    currency    TEXT NOT NULL,
    stock_state TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX orders_by_user ON orders (user_id, created_at);
CREATE INDEX orders_by_status ON orders (status, created_at);
CREATE INDEX orders_by_stock_state ON orders (stock_state);

CREATE TABLE order_lines (
    order_id         TEXT NOT NULL,
    book_id          TEXT NOT NULL,
    quantity         BIGINT NOT NULL,
    unit_price_minor BIGINT NOT NULL,
    currency         TEXT NOT NULL,
    title            TEXT NOT NULL,
    PRIMARY KEY (order_id, book_id)
);

-- Idempotency keys, per user (as Stripe scopes them per account), kept 24 h.
CREATE TABLE idempotency_keys (
    user_id      TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    order_id     TEXT,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (user_id, key)
);

-- The transactional outbox: events written with the change that caused them; a relay
-- publishes them and marks them.
CREATE TABLE outbox (
    id           TEXT PRIMARY KEY,
    event_type   TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    published_at BIGINT
);
CREATE INDEX outbox_unpublished ON outbox (published_at, created_at);
