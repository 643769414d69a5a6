//! Fulfillment's types and rules; no I/O.

use bookstore_platform::status::InvalidField;

/// Where a task is. QUEUED → PICKING (claimed) → PACKED → SHIPPED; REMOVED by staff with a
/// reason; CANCELLED when its order was cancelled first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    Queued,
    Picking,
    Packed,
    Shipped,
    Removed,
    Cancelled,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "QUEUED",
            TaskState::Picking => "PICKING",
            TaskState::Packed => "PACKED",
            TaskState::Shipped => "SHIPPED",
            TaskState::Removed => "REMOVED",
            TaskState::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Queued, Self::Picking, Self::Packed, Self::Shipped, Self::Removed, Self::Cancelled]
            .into_iter()
            .find(|state| state.as_str() == s)
    }

    /// Still to be done: on the queue or in someone's hands.
    pub fn open(self) -> bool {
        matches!(self, TaskState::Queued | TaskState::Picking | TaskState::Packed)
    }

    /// The next step an `advance` takes, if there is one.
    pub fn next(self) -> Option<Self> {
        match self {
            TaskState::Picking => Some(TaskState::Packed),
            TaskState::Packed => Some(TaskState::Shipped),
            _ => None,
        }
    }
}

/// One book of a task, as the order had it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Line {
    pub book_id: String,
    pub quantity: i64,
    pub title: String,
}

/// A task as staff see it. `shipping_address` is the order's address as JSON, decrypted; it
/// is never serialized (the change history keeps tasks without it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Task {
    pub id: String,
    pub order_id: String,
    pub lines: Vec<Line>,
    #[serde(skip)]
    pub shipping_address: Option<String>,
    pub state: TaskState,
    /// 0-based among the queued tasks; `None` when not queued.
    pub position: Option<usize>,
    pub version: i64,
    pub assignee: String,
    pub reason: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a change did, as clients are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ChangeKind {
    #[serde(rename = "task_added")]
    Added,
    #[serde(rename = "task_moved")]
    Moved,
    #[serde(rename = "task_updated")]
    Updated,
    #[serde(rename = "task_removed")]
    Removed,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "task_added",
            ChangeKind::Moved => "task_moved",
            ChangeKind::Updated => "task_updated",
            ChangeKind::Removed => "task_removed",
        }
    }
}

/// A change, committed: its sequence number and the task after it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    pub seq: i64,
    pub kind: ChangeKind,
    pub task: Task,
}

/// Why staff removed a task: 1 to 500 characters.
pub fn parse_reason(reason: &str) -> Result<String, InvalidField> {
    bookstore_platform::text::bounded("reason", reason, 1, 500)
}

/// Where a moved task goes: 0 or more.
pub fn parse_position(position: i32) -> Result<usize, InvalidField> {
    usize::try_from(position).map_err(|_| InvalidField::new("position", "must be 0 or more"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_advance_one_step_at_a_time_and_only_open_ones_change() {
        use TaskState::*;
        assert_eq!((Picking.next(), Packed.next()), (Some(Packed), Some(Shipped)));
        assert_eq!((Queued.next(), Shipped.next(), Removed.next()), (None, None, None));
        assert!(Queued.open() && Picking.open() && Packed.open());
        assert!(!Shipped.open() && !Removed.open() && !Cancelled.open());
        for state in [Queued, Picking, Packed, Shipped, Removed, Cancelled] {
            assert_eq!(TaskState::parse(state.as_str()), Some(state));
        }
    }

    #[test]
    fn a_removal_needs_a_reason_and_a_position_is_not_negative() {
        assert!(parse_reason("  ").is_err());
        assert_eq!(parse_reason(" damaged ").unwrap(), "damaged");
        assert_eq!(parse_position(3).unwrap(), 3);
        assert_eq!(parse_position(-1).unwrap_err().field, "position");
    }
}
