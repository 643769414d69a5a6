//! Group commit for confirmations: each checkout hands its order over and waits, and one task
//! sends whatever queued up while the previous group was at books as one `ConfirmReservations`
//! call, then records the group's stock state in one statement. Under load that turns a gRPC
//! call and two transactions per order into the same per group; an order placed alone waits
//! for nobody.

use std::sync::Arc;
use std::time::Duration;

use bookstore_api::books::v1 as books;
use bookstore_api::books::v1::book_service_client::BookServiceClient;
use bookstore_platform::auth::ServiceToken;
use bookstore_platform::balance::PeerChannel;
use bookstore_platform::grpc::Deadline;
use bookstore_platform::service::Tasks;
use tonic::Status;

use crate::domain::StockState;
use crate::store::OrderStore;

type ConfirmReply = tokio::sync::oneshot::Sender<Result<(), Status>>;

/// The most orders one confirmation carries.
const CONFIRM_GROUP: usize = 256;

/// Hands orders to the confirming task; cheap to clone.
#[derive(Clone)]
pub struct Confirmer {
    queue: tokio::sync::mpsc::UnboundedSender<(String, ConfirmReply)>,
}

impl Confirmer {
    /// Starts the confirming task on `tasks`; it ends when the last `Confirmer` is dropped
    /// (the service's router and sweeper), after answering every order it was handed.
    pub fn start(
        store: OrderStore,
        books: BookServiceClient<PeerChannel>,
        token: Arc<ServiceToken>,
        timeout: Duration,
        tasks: &Tasks,
    ) -> Self {
        let (queue, mut pending) = tokio::sync::mpsc::unbounded_channel::<(String, ConfirmReply)>();
        tasks.spawn("orders-confirmer", async move {
            while let Some(first) = pending.recv().await {
                let mut group = vec![first];
                while group.len() < CONFIRM_GROUP {
                    match pending.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                let ids: Vec<String> = group.iter().map(|(id, _)| id.clone()).collect();
                match confirm_group(&store, &books, &token, timeout, ids).await {
                    Ok(states) => {
                        for ((_, reply), state) in group.into_iter().zip(states) {
                            let outcome = match state {
                                Some(StockState::Confirmed) => Ok(()),
                                Some(other) => Err(Status::failed_precondition(format!(
                                    "the reservation is {}",
                                    other.as_str()
                                ))),
                                None => Err(Status::failed_precondition("the reservation is missing")),
                            };
                            let _ = reply.send(outcome);
                        }
                    }
                    Err(status) => {
                        for (_, reply) in group {
                            let _ = reply.send(Err(status.clone()));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// Confirms `order_id`'s reservation with the next group; records it when books agrees.
    pub async fn confirm(&self, order_id: &str) -> Result<(), Status> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        self.queue
            .send((order_id.to_owned(), reply))
            .map_err(|_| Status::unavailable("the orders service is stopping"))?;
        outcome.await.map_err(|_| Status::unavailable("the orders service is stopping"))?
    }
}

/// One group's call and record; each order's state at books (`None`: books has no
/// reservation for it), in `ids`' order.
async fn confirm_group(
    store: &OrderStore,
    books: &BookServiceClient<PeerChannel>,
    token: &ServiceToken,
    timeout: Duration,
    ids: Vec<String>,
) -> Result<Vec<Option<StockState>>, Status> {
    let mut request =
        Deadline::after(timeout).request(books::ConfirmReservationsRequest { order_ids: ids.clone() });
    token.authorize(&mut request).await?;
    let outcomes = books.clone().confirm_reservations(request).await?.into_inner().outcomes;
    let states: Vec<Option<StockState>> = ids
        .iter()
        .map(|id| outcomes.iter().find(|o| &o.order_id == id).and_then(|o| StockState::parse(&o.state)))
        .collect();
    let confirmed: Vec<&str> = ids
        .iter()
        .zip(&states)
        .filter(|(_, s)| **s == Some(StockState::Confirmed))
        .map(|(id, _)| id.as_str())
        .collect();
    store.set_stock_states(&confirmed, StockState::Confirmed).await?;
    Ok(states)
}
