-- What each change left the task as (JSON, without the shipping address, which is read from the
-- task when a change is sent again), so a client that reconnects with the last seq it saw gets
-- exactly the changes after it. The newest `change_history` changes are kept.
ALTER TABLE changes ADD COLUMN body TEXT NOT NULL DEFAULT '';
