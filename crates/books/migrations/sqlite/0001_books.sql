-- The catalog; see the PostgreSQL migration for the shape. SQLite's full-text index is an FTS5
-- table kept in step by triggers; `seq` gives it a row id that VACUUM cannot renumber.
CREATE TABLE books (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    isbn        TEXT NOT NULL CONSTRAINT books_isbn_key UNIQUE,
    title       TEXT NOT NULL,
    title_key   TEXT NOT NULL,
    author      TEXT NOT NULL,
    author_key  TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    price_minor INTEGER NOT NULL CHECK (price_minor >= 0),
    currency    TEXT NOT NULL,
    stock       INTEGER NOT NULL CHECK (stock >= 0),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE INDEX books_title_order ON books (title_key, id);
CREATE INDEX books_author_order ON books (author_key, title_key, id);

CREATE VIRTUAL TABLE books_fts USING fts5(
    title, author, description,
    content = 'books', content_rowid = 'seq',
    tokenize = 'porter unicode61 remove_diacritics 2'
);

CREATE TRIGGER books_fts_insert AFTER INSERT ON books BEGIN
    INSERT INTO books_fts (rowid, title, author, description)
    VALUES (new.seq, new.title, new.author, new.description);
END;

CREATE TRIGGER books_fts_delete AFTER DELETE ON books BEGIN
    INSERT INTO books_fts (books_fts, rowid, title, author, description)
    VALUES ('delete', old.seq, old.title, old.author, old.description);
END;

CREATE TRIGGER books_fts_update AFTER UPDATE OF title, author, description ON books BEGIN
    INSERT INTO books_fts (books_fts, rowid, title, author, description)
    VALUES ('delete', old.seq, old.title, old.author, old.description);
    INSERT INTO books_fts (rowid, title, author, description)
    VALUES (new.seq, new.title, new.author, new.description);
END;
