-- The catalog. Times are Unix milliseconds and ids UUIDv7 text, so that the same queries run on
-- PostgreSQL and SQLite. title_key and author_key are lower-cased in Rust (identically for both
-- backends); title_key sorts bytewise ("C") so that both backends page in the same order.
CREATE TABLE books (
    id          TEXT PRIMARY KEY,
    isbn        TEXT NOT NULL CONSTRAINT books_isbn_key UNIQUE,
    title       TEXT NOT NULL,
    title_key   TEXT COLLATE "C" NOT NULL,
    author      TEXT NOT NULL,
    author_key  TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    price_minor BIGINT NOT NULL CHECK (price_minor >= 0),
    currency    TEXT NOT NULL,
    stock       BIGINT NOT NULL CHECK (stock >= 0),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    search      TSVECTOR GENERATED ALWAYS AS (
                    setweight(to_tsvector('english', title), 'A') ||
                    setweight(to_tsvector('english', author), 'B') ||
                    setweight(to_tsvector('english', description), 'C')
                ) STORED
);

CREATE INDEX books_title_order ON books (title_key, id);
CREATE INDEX books_author_order ON books (author_key, title_key, id);
CREATE INDEX books_search ON books USING GIN (search);
