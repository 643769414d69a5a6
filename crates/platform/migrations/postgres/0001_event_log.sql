-- The embedded event log of `bookstore up`: an append-only table of events, deduplicated by
-- event id, and each consumer's position in it.
CREATE TABLE event_log (
    seq        BIGSERIAL PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    body       BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE event_offsets (
    consumer TEXT PRIMARY KEY,
    seq      BIGINT NOT NULL
);

-- Events a consumer gave up on after repeated failures (the log's dead-letter queue).
CREATE TABLE event_dead_letters (
    consumer   TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    id         TEXT NOT NULL,
    error      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, seq)
);
