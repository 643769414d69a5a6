//! The tonic adapter: proto ⇄ domain, who may do what (staff and admins only), errors →
//! `Status`.

use bookstore_api::fulfillment::v1 as pb;
use bookstore_api::fulfillment::v1::fulfillment_service_server::FulfillmentService;
use bookstore_platform::auth::{Role, require_or_scope};
use bookstore_platform::grpc::timestamp;
use tonic::{Request, Response, Status};

use crate::domain::{Change, Task, parse_position, parse_reason};
use crate::store::{TaskError, TaskStore};

const STAFF: &[Role] = &[Role::Staff, Role::Admin];
/// What a service account needs to read the queue, and to change it.
const READ: &str = "queue:read";
const WRITE: &str = "queue:write";

impl From<TaskError> for Status {
    fn from(err: TaskError) -> Self {
        match err {
            TaskError::NotFound(_) => Status::not_found(err.to_string()),
            // The client's view is behind: 409, and it reloads.
            TaskError::Stale { .. } => Status::aborted(err.to_string()),
            TaskError::NotAllowed { .. } => Status::failed_precondition(err.to_string()),
            TaskError::Store(e) => bookstore_platform::status::unexpected("fulfillment", &e),
        }
    }
}

pub fn task_to_proto(t: &Task) -> pb::Task {
    let address = t.shipping_address.as_deref().and_then(|json| serde_json::from_str::<Address>(json).ok());
    pb::Task {
        id: t.id.clone(),
        order_id: t.order_id.clone(),
        lines: t
            .lines
            .iter()
            .map(|l| pb::Line { book_id: l.book_id.clone(), quantity: l.quantity, title: l.title.clone() })
            .collect(),
        shipping_address: address.map(|a| bookstore_api::orders::v1::ShippingAddress {
            name: a.name,
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            postal_code: a.postal_code,
            country: a.country,
        }),
        state: t.state.as_str().to_owned(),
        position: t.position.map_or(-1, |p| p as i32),
        version: t.version,
        assignee: t.assignee.clone(),
        reason: t.reason.clone(),
        create_time: Some(timestamp(t.created_at)),
        update_time: Some(timestamp(t.updated_at)),
    }
}

/// The address as orders wrote it (JSON).
#[derive(serde::Deserialize)]
struct Address {
    name: String,
    line1: String,
    #[serde(default)]
    line2: String,
    #[serde(default)]
    city: String,
    #[serde(default)]
    postal_code: String,
    #[serde(default)]
    country: String,
}

pub fn change_to_proto(c: &Change) -> pb::Change {
    pb::Change { seq: c.seq, kind: c.kind.as_str().to_owned(), task: Some(task_to_proto(&c.task)) }
}

/// The fulfillment service's gRPC face.
#[derive(Clone)]
pub struct FulfillmentGrpc {
    store: TaskStore,
}

impl FulfillmentGrpc {
    pub fn new(store: TaskStore) -> Self {
        Self { store }
    }
}

/// What a watcher is sent: the snapshot, then each change after it.
type Watch = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::QueueEvent, Status>> + Send>>;

#[tonic::async_trait]
impl FulfillmentService for FulfillmentGrpc {
    type WatchQueueStream = Watch;

    async fn watch_queue(
        &self,
        request: Request<pb::WatchQueueRequest>,
    ) -> Result<Response<Self::WatchQueueStream>, Status> {
        require_or_scope(&request, STAFF, READ)?;
        // Listening before reading: nothing committed in between is missed, and what was read
        // already (seq at or below `seq`) is not sent again.
        let changes = self.store.watch();
        let resumed = match request.get_ref().last_seq {
            Some(last) => self.store.changes_after(last).await?,
            None => None,
        };
        let (seq, first) = match resumed {
            Some(kept) => {
                let seq = kept.last().map_or(request.get_ref().last_seq.unwrap_or_default(), |c| c.seq);
                let events: Vec<_> = kept
                    .iter()
                    .map(|c| {
                        Ok(pb::QueueEvent { event: Some(pb::queue_event::Event::Change(change_to_proto(c))) })
                    })
                    .collect();
                (seq, events)
            }
            None => {
                let (seq, tasks) = self.store.queue().await?;
                let snapshot = pb::Queue { seq, tasks: tasks.iter().map(task_to_proto).collect() };
                (seq, vec![Ok(pb::QueueEvent { event: Some(pb::queue_event::Event::Snapshot(snapshot)) })])
            }
        };
        use futures::StreamExt;
        use tokio::sync::broadcast::error::RecvError;
        let rest = futures::stream::unfold(Some(changes), move |changes| async move {
            let mut changes = changes?;
            loop {
                return match changes.recv().await {
                    Ok(change) if change.seq <= seq => continue,
                    Ok(change) => {
                        let event = pb::queue_event::Event::Change(change_to_proto(&change));
                        Some((Ok(pb::QueueEvent { event: Some(event) }), Some(changes)))
                    }
                    Err(RecvError::Lagged(missed)) => {
                        let behind = format!("fell {missed} changes behind; load the queue again");
                        Some((Err(Status::resource_exhausted(behind)), None))
                    }
                    Err(RecvError::Closed) => None,
                };
            }
        });
        Ok(Response::new(futures::stream::iter(first).chain(rest).boxed()))
    }

    async fn get_queue(&self, request: Request<pb::GetQueueRequest>) -> Result<Response<pb::Queue>, Status> {
        require_or_scope(&request, STAFF, READ)?;
        let (seq, tasks) = self.store.queue().await?;
        Ok(Response::new(pb::Queue { seq, tasks: tasks.iter().map(task_to_proto).collect() }))
    }

    async fn move_task(&self, request: Request<pb::MoveTaskRequest>) -> Result<Response<pb::Change>, Status> {
        require_or_scope(&request, STAFF, WRITE)?;
        let req = request.into_inner();
        let position = parse_position(req.position).map_err(Status::from)?;
        let change = self.store.move_task(&req.task_id, position, req.version).await?;
        Ok(Response::new(change_to_proto(&change)))
    }

    async fn claim_task(&self, request: Request<pb::TaskRequest>) -> Result<Response<pb::Change>, Status> {
        let who = require_or_scope(&request, STAFF, WRITE)?.subject.clone();
        let req = request.into_inner();
        let change = self.store.claim(&req.task_id, req.version, &who).await?;
        Ok(Response::new(change_to_proto(&change)))
    }

    async fn advance_task(&self, request: Request<pb::TaskRequest>) -> Result<Response<pb::Change>, Status> {
        require_or_scope(&request, STAFF, WRITE)?;
        let req = request.into_inner();
        let change = self.store.advance(&req.task_id, req.version).await?;
        Ok(Response::new(change_to_proto(&change)))
    }

    async fn remove_task(
        &self,
        request: Request<pb::RemoveTaskRequest>,
    ) -> Result<Response<pb::Change>, Status> {
        require_or_scope(&request, STAFF, WRITE)?;
        let req = request.into_inner();
        let reason = parse_reason(&req.reason).map_err(Status::from)?;
        let change = self.store.remove(&req.task_id, req.version, &reason).await?;
        Ok(Response::new(change_to_proto(&change)))
    }
}
