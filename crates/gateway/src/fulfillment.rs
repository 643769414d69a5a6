//! `/api/v1/fulfillment`: the work queue over REST, translated to the fulfillment service's
//! gRPC. Staff and admins only. Every change names the task's `version` it was based on; a
//! stale one is 409, and the client reloads the queue.

use axum::extract::State;
use bookstore_api::fulfillment::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Auth;
use crate::books::rfc3339;
use crate::error::{ApiError, ErrorBody, Json, Path};
use crate::orders::ShippingAddress;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskLine {
    pub book_id: String,
    pub quantity: i64,
    pub title: String,
}

/// One order's work.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: String,
    pub order_id: String,
    pub lines: Vec<TaskLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipping_address: Option<ShippingAddress>,
    /// QUEUED, PICKING, PACKED, SHIPPED, REMOVED or CANCELLED.
    #[schema(example = "QUEUED")]
    pub state: String,
    /// 0-based among the queued tasks; absent when not queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// Grows with every change; send it back with a change.
    pub version: i64,
    /// Who claimed it (a user id).
    pub assignee: String,
    /// Why it was removed or cancelled.
    pub reason: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<pb::Task> for Task {
    fn from(t: pb::Task) -> Self {
        Self {
            id: t.id,
            order_id: t.order_id,
            lines: t
                .lines
                .into_iter()
                .map(|l| TaskLine { book_id: l.book_id, quantity: l.quantity, title: l.title })
                .collect(),
            shipping_address: t.shipping_address.map(ShippingAddress::from),
            state: t.state,
            position: u32::try_from(t.position).ok(),
            version: t.version,
            assignee: t.assignee,
            reason: t.reason,
            created_at: rfc3339(t.create_time),
            updated_at: rfc3339(t.update_time),
        }
    }
}

/// The queue: queued tasks by position, then the ones in hand; `seq` is its last change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Queue {
    pub seq: i64,
    pub tasks: Vec<Task>,
}

/// A change, committed: its sequence number, what happened, the task after it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Change {
    pub seq: i64,
    /// task_added, task_moved, task_updated or task_removed.
    #[schema(example = "task_moved")]
    pub kind: String,
    pub task: Task,
}

impl From<pb::Change> for Change {
    fn from(c: pb::Change) -> Self {
        Self { seq: c.seq, kind: c.kind, task: c.task.unwrap_or_default().into() }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Move {
    /// Where it goes, 0-based among the queued tasks (past the end: last).
    #[schema(minimum = 0, maximum = 2_147_483_647)]
    #[serde(deserialize_with = "crate::error::integral")]
    pub position: i32,
    /// The task's version as last read.
    #[schema(minimum = 0)]
    #[serde(deserialize_with = "crate::error::integral")]
    pub version: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The task's version as last read.
    #[schema(minimum = 0)]
    #[serde(deserialize_with = "crate::error::integral")]
    pub version: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Removal {
    /// The task's version as last read.
    #[schema(minimum = 0)]
    #[serde(deserialize_with = "crate::error::integral")]
    pub version: i64,
    /// Why it cannot be fulfilled, 1 to 500 characters.
    #[schema(example = "damaged in the warehouse")]
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^\s*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F]([^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F])?\s*$"
    )]
    pub reason: String,
}

/// The work queue as it is now (staff).
#[utoipa::path(get, path = "/api/v1/fulfillment/queue", tag = "fulfillment", security(("bearer" = [])),
    responses((status = 200, body = Queue), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn get_queue(State(state): State<AppState>, auth: Auth) -> Result<Json<Queue>, ApiError> {
    auth.required()?;
    let queue = state.read(
        &state.peers.fulfillment,
        &state.fulfillment,
        &auth,
        pb::GetQueueRequest {},
        |mut c, r| async move { c.get_queue(r).await },
    );
    let queue = queue.await?;
    Ok(Json(Queue { seq: queue.seq, tasks: queue.tasks.into_iter().map(Task::from).collect() }))
}

/// Move a queued task to another position (staff).
#[utoipa::path(post, path = "/api/v1/fulfillment/tasks/{id}/move", tag = "fulfillment", security(("bearer" = [])),
    params(("id" = String, Path, description = "Task id")), request_body = Move,
    responses((status = 200, body = Change), (status = 404, body = ErrorBody),
        (status = 409, description = "The task changed since `version`, or is not queued", body = ErrorBody)))]
pub async fn move_task(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<Move>,
) -> Result<Json<Change>, ApiError> {
    auth.required()?;
    let request = pb::MoveTaskRequest { task_id: id, position: body.position, version: body.version };
    Ok(Json(state.fulfillment.clone().move_task(state.request(request, &auth)).await?.into_inner().into()))
}

/// Claim a queued task: it is yours to pick (staff).
#[utoipa::path(post, path = "/api/v1/fulfillment/tasks/{id}/claim", tag = "fulfillment", security(("bearer" = [])),
    params(("id" = String, Path, description = "Task id")), request_body = Step,
    responses((status = 200, body = Change), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn claim_task(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<Step>,
) -> Result<Json<Change>, ApiError> {
    auth.required()?;
    let request = pb::TaskRequest { task_id: id, version: body.version };
    Ok(Json(state.fulfillment.clone().claim_task(state.request(request, &auth)).await?.into_inner().into()))
}

/// Move a task one step on: PICKING → PACKED → SHIPPED (staff).
#[utoipa::path(post, path = "/api/v1/fulfillment/tasks/{id}/advance", tag = "fulfillment", security(("bearer" = [])),
    params(("id" = String, Path, description = "Task id")), request_body = Step,
    responses((status = 200, body = Change), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn advance_task(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<Step>,
) -> Result<Json<Change>, ApiError> {
    auth.required()?;
    let request = pb::TaskRequest { task_id: id, version: body.version };
    Ok(Json(state.fulfillment.clone().advance_task(state.request(request, &auth)).await?.into_inner().into()))
}

/// Remove a task that cannot be fulfilled, with a reason (staff).
#[utoipa::path(post, path = "/api/v1/fulfillment/tasks/{id}/remove", tag = "fulfillment", security(("bearer" = [])),
    params(("id" = String, Path, description = "Task id")), request_body = Removal,
    responses((status = 200, body = Change), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn remove_task(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<Removal>,
) -> Result<Json<Change>, ApiError> {
    auth.required()?;
    let request = pb::RemoveTaskRequest { task_id: id, version: body.version, reason: body.reason };
    Ok(Json(state.fulfillment.clone().remove_task(state.request(request, &auth)).await?.into_inner().into()))
}
