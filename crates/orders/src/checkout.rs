//! The checkout saga, its compensation, and the moves of an order's life.
//!
//! Placing an order: claim the idempotency key → reserve every line at books (all or nothing,
//! keyed by the new order's id) → store the order, its lines, its OrderPlaced event and the
//! key's answer in one transaction → confirm the reservation (in groups, [`Confirmer`]). If
//! storing fails, the reservation is released; if confirming fails, the order stands and the
//! sweeper confirms it later (the hold lasts 15 minutes). Nothing a client was told succeeded is
//! ever undone.
//!
//! Errors are `tonic::Status`: the saga's failures are mostly books' answers, passed on as they
//! came (out of stock, unavailable, deadline exceeded).

use std::sync::Arc;
use std::time::Duration;

use bookstore_api::books::v1 as books;
use bookstore_api::books::v1::book_service_client::BookServiceClient;
use bookstore_platform::auth::{Identity, ServiceToken};
use bookstore_platform::balance::PeerChannel;
use bookstore_platform::clock::now_ms;
use bookstore_platform::grpc::Deadline;
use bookstore_platform::service::Tasks;
use tonic::{Code, Request, Status};

use crate::confirmer::Confirmer;
use crate::domain::{
    BasketLine, Line, Order, Settle, ShippingAddress, Status as OrderStatus, basket_hash, total,
};
use crate::events;
use crate::grpc::internal;
use crate::store::{KeyClaim, OrderStore};

/// How long a settlement call to books may take.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The saga's parts: the store, books, the service's own token, the confirmer.
#[derive(Clone)]
pub struct Checkout {
    store: OrderStore,
    /// Books' replicas: its retries (every saga step is idempotent by order id).
    peer: PeerChannel,
    books: BookServiceClient<PeerChannel>,
    token: Arc<ServiceToken>,
    confirmer: Confirmer,
    /// Seals shipping addresses in OrderPlaced ([`events::order_placed`]).
    events_key: Arc<bookstore_platform::crypto::DataKey>,
}

impl Checkout {
    /// The saga, with its confirmer running on `tasks`.
    pub fn new(
        store: OrderStore,
        peer: PeerChannel,
        token: Arc<ServiceToken>,
        events_key: bookstore_platform::crypto::DataKey,
        tasks: &Tasks,
    ) -> Self {
        let books = BookServiceClient::new(peer.clone());
        let confirmer = Confirmer::start(store.clone(), books.clone(), token.clone(), SETTLE_TIMEOUT, tasks);
        Self { store, peer, books, token, confirmer, events_key: Arc::new(events_key) }
    }

    pub fn store(&self) -> &OrderStore {
        &self.store
    }

    /// A call to books with the orders service's own token, due by `deadline`.
    async fn books_request<T>(&self, message: T, deadline: Deadline) -> Result<Request<T>, Status> {
        let mut request = deadline.request(message);
        self.token.authorize(&mut request).await?;
        Ok(request)
    }

    /// Places `basket` for `who`, shipping to `address`, once per idempotency `key` when one is
    /// given: a repeat of a finished request gets the same order back.
    pub async fn place(
        &self,
        who: &Identity,
        basket: &[BasketLine],
        address: ShippingAddress,
        key: Option<&str>,
        deadline: Deadline,
    ) -> Result<Order, Status> {
        if let Some(key) = key {
            match self.store.claim_key(&who.subject, key, &basket_hash(basket)).await? {
                KeyClaim::Claimed => {}
                KeyClaim::Done(order_id) => {
                    return self
                        .store
                        .get(&order_id)
                        .await?
                        .ok_or_else(|| internal("answered order is gone"));
                }
                KeyClaim::InFlight => {
                    return Err(Status::aborted("a request with this idempotency key is in progress"));
                }
                KeyClaim::Mismatch => {
                    return Err(bookstore_platform::status::with_reason(
                        Code::FailedPrecondition,
                        "this idempotency key was used with a different request",
                        bookstore_platform::status::reason::IDEMPOTENCY_KEY_REUSED,
                    ));
                }
            }
        }
        let result = self.reserve_and_store(who, basket, address, key, deadline).await;
        if result.is_err()
            && let Some(key) = key
        {
            // The request did not happen; a retry under the same key may try again.
            if let Err(e) = self.store.release_key(&who.subject, key).await {
                tracing::warn!(error = %format!("{e:#}"), "releasing an idempotency key failed");
            }
        }
        result
    }

    async fn reserve_and_store(
        &self,
        who: &Identity,
        basket: &[BasketLine],
        address: ShippingAddress,
        key: Option<&str>,
        deadline: Deadline,
    ) -> Result<Order, Status> {
        let order_id = uuid::Uuid::now_v7().to_string();
        let reserve = books::ReserveStockRequest {
            order_id: order_id.clone(),
            lines: basket
                .iter()
                .map(|l| books::ReserveLine { book_id: l.book_id.clone(), quantity: l.quantity })
                .collect(),
            hold_seconds: 0,
        };
        // Idempotent by order id: a retry gets the same reservation.
        let reserved = self
            .peer
            .retrying(deadline, || async {
                self.books.clone().reserve_stock(self.books_request(reserve.clone(), deadline).await?).await
            })
            .await?
            .into_inner();
        let lines: Vec<Line> = reserved
            .lines
            .into_iter()
            .map(|l| {
                let price = l.unit_price.unwrap_or_default();
                Line {
                    book_id: l.book_id,
                    quantity: l.quantity,
                    unit_price_minor: price.amount_minor,
                    currency: price.currency,
                    title: l.title,
                }
            })
            .collect();
        let placed = match total(&lines) {
            Ok((total_minor, currency)) => {
                let now = now_ms();
                let order = Order {
                    id: order_id.clone(),
                    user_id: who.subject.clone(),
                    status: OrderStatus::Placed,
                    lines,
                    total_minor,
                    currency,
                    created_at: now,
                    updated_at: now,
                    shipping_address: Some(address),
                    status_reason: String::new(),
                };
                let idempotency = key.map(|k| (who.subject.as_str(), k));
                self.store
                    .insert_order(&order, idempotency, &events::order_placed(&order, &self.events_key))
                    .await
                    .map(|()| order)
                    .map_err(Status::from)
            }
            Err(e) => Err(e.into()),
        };
        match placed {
            Ok(order) => {
                if let Err(e) = self.confirmer.confirm(&order.id).await {
                    tracing::warn!(order = %order.id, error = %e, "confirming stock failed; will retry");
                }
                tracing::info!(order = %order.id, user = %order.user_id, total = order.total_minor, "order placed");
                metrics::counter!("orders_placed_total", "service" => "orders").increment(1);
                Ok(order)
            }
            Err(status) => {
                // Compensate: the order does not exist, so neither may its hold.
                if let Err(e) = self.settle(&order_id, Settle::Release).await {
                    tracing::warn!(order = %order_id, error = %e, "releasing a failed order's stock failed; it expires");
                }
                Err(status)
            }
        }
    }

    /// Settles the order's reservation at books; records it when books agrees.
    pub async fn settle(&self, order_id: &str, how: Settle) -> Result<(), Status> {
        let message = books::ReservationRequest { order_id: order_id.to_owned() };
        // Settling finishes what was started even if the client has gone: its own deadline.
        let deadline = Deadline::after(SETTLE_TIMEOUT);
        // Both settlements are idempotent: safe to retry.
        let result = self
            .peer
            .retrying(deadline, || async {
                let request = self.books_request(message.clone(), deadline).await?;
                let mut client = self.books.clone();
                match how {
                    Settle::Confirm => client.confirm_reservation(request).await,
                    Settle::Release => client.release_reservation(request).await,
                }
            })
            .await;
        match result {
            Ok(_) => {}
            // Nothing held (the reservation never happened or was swept): nothing to return.
            Err(s) if s.code() == Code::NotFound && how == Settle::Release => {}
            Err(s) => return Err(s),
        }
        Ok(self.store.set_stock_state(order_id, how.outcome()).await?)
    }

    /// Settles up to `limit` orders a crash or an outage left unsettled (the sweeper's pass).
    pub async fn settle_unsettled(&self, limit: i64) {
        let pending = match self.store.unsettled(limit).await {
            Ok(pending) => pending,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "finding unsettled orders failed; will retry");
                return;
            }
        };
        for (order, how) in pending {
            if let Err(e) = self.settle(&order, how).await {
                tracing::warn!(%order, error = %e, "settling stock failed; will retry");
            }
        }
    }

    /// Moves `order` to `to` with its event, if the move is allowed and nobody moved it first.
    pub async fn move_order(&self, order: &Order, to: OrderStatus) -> Result<Order, Status> {
        if !order.status.can_become(to) {
            return Err(Status::failed_precondition(format!(
                "an order that is {} cannot become {}",
                order.status.as_str(),
                to.as_str()
            )));
        }
        let mut moved = order.clone();
        moved.status = to;
        moved.updated_at = now_ms();
        let event = if to == OrderStatus::Cancelled {
            events::order_cancelled(&moved)
        } else {
            events::order_status_changed(&moved, order.status)
        };
        if !self.store.transition(&order.id, order.status, to, &event).await? {
            return Err(Status::aborted("the order changed meanwhile; read it again"));
        }
        Ok(moved)
    }

    /// Cancels a PLACED order and puts its stock back (now, or by the sweeper if books is away).
    pub async fn cancel(&self, order: &Order) -> Result<Order, Status> {
        let cancelled = self.move_order(order, OrderStatus::Cancelled).await?;
        if let Err(e) = self.settle(&order.id, Settle::Release).await {
            // Cancelled all the same; the sweeper returns the stock when books answers.
            tracing::warn!(order = %order.id, error = %e, "releasing stock failed; will retry");
        }
        Ok(cancelled)
    }
}
