-- Orders follows its fulfillment task: the version of the last task event applied (older ones
-- are skipped, so events arriving out of order cannot move an order back), and why the order
-- is in its status when someone said (e.g. the reason staff removed its task).
ALTER TABLE orders ADD COLUMN task_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN status_reason TEXT NOT NULL DEFAULT '';
