-- What an operator does with a dead letter: how many attempts it had; a replay asked for (the
-- consumer takes it on its next pass); a discard, with its reason (kept, no longer listed).
-- Columns only added: the previous release reads this table as it was.
ALTER TABLE event_dead_letters ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE event_dead_letters ADD COLUMN replay_requested_at BIGINT;
ALTER TABLE event_dead_letters ADD COLUMN discarded_at BIGINT;
ALTER TABLE event_dead_letters ADD COLUMN discard_reason TEXT;
