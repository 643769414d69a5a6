-- What was bought: a row per book of each order, with the order's own time, until the order is
-- cancelled (cancelled_at). The one source of everything this service answers.
CREATE TABLE purchases (
    order_id     TEXT NOT NULL,
    book_id      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    quantity     INTEGER NOT NULL,
    ordered_at   INTEGER NOT NULL,
    cancelled_at INTEGER,
    PRIMARY KEY (order_id, book_id)
);
CREATE INDEX purchases_by_user ON purchases (user_id, book_id);
CREATE INDEX purchases_by_book ON purchases (book_id);
CREATE INDEX purchases_by_time ON purchases (ordered_at);

-- Co-purchase counts of every pair of books bought by one customer, both ways round: orders
-- with both in one basket, and customers who bought both. Recomputed from purchases for the
-- books of each event, so applying an event again changes nothing.
CREATE TABLE pairs (
    book_id   TEXT NOT NULL,
    other_id  TEXT NOT NULL,
    baskets   INTEGER NOT NULL,
    customers INTEGER NOT NULL,
    PRIMARY KEY (book_id, other_id)
);
CREATE INDEX pairs_by_other ON pairs (other_id);
