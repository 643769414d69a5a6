//! The tonic adapter and the checkout saga.
//!
//! CreateOrder: claim the idempotency key → reserve every line at books (all or nothing, keyed
//! by the new order's id) → store the order, its lines, its OrderPlaced event and the key's
//! answer in one transaction → confirm the reservation. If storing fails, the reservation is
//! released; if confirming fails, the order stands and the sweeper confirms it later (the hold
//! lasts 15 minutes). Nothing a client was told succeeded is ever undone.

use std::sync::Arc;

use bookstore_api::books::v1 as books;
use bookstore_api::books::v1::book_service_client::BookServiceClient;
use bookstore_api::orders::v1 as pb;
use bookstore_api::orders::v1::order_service_server::OrderService;
use bookstore_platform::auth::{Identity, Role, ServiceToken, require};
use bookstore_platform::grpc::timestamp;
use bookstore_platform::grpc::{Deadline, deadline_of};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::domain::{
    BasketLine, Line, Order, Status as OrderStatus, basket_hash, parse_basket, parse_idempotency_key, total,
};
use crate::store::{KeyClaim, OrderStore};
use bookstore_platform::clock::now_ms;

const STAFF: &[Role] = &[Role::Staff, Role::Admin];
/// How long a settlement call to books may take.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The deadline of a checkout whose caller sent none.
const DEFAULT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
const ANYONE: &[Role] = &[Role::Customer, Role::Staff, Role::Admin];

fn internal(err: impl std::fmt::Display) -> Status {
    tracing::error!(error = %err, "orders service failed");
    Status::internal("internal error")
}

pub fn to_proto(o: &Order) -> pb::Order {
    pb::Order {
        id: o.id.clone(),
        user_id: o.user_id.clone(),
        lines: o
            .lines
            .iter()
            .map(|l| pb::OrderLine {
                book_id: l.book_id.clone(),
                quantity: l.quantity,
                unit_price: Some(pb::Money {
                    amount_minor: l.unit_price_minor,
                    currency: l.currency.clone(),
                }),
                title: l.title.clone(),
            })
            .collect(),
        total: Some(pb::Money { amount_minor: o.total_minor, currency: o.currency.clone() }),
        status: o.status.as_str().to_owned(),
        create_time: Some(timestamp(o.created_at)),
        update_time: Some(timestamp(o.updated_at)),
    }
}

/// An event for the outbox: (id, type, protobuf envelope).
fn event(event_type: &str, payload: Vec<u8>) -> (String, String, Vec<u8>) {
    let id = uuid::Uuid::now_v7().to_string();
    let envelope = pb::EventEnvelope {
        id: id.clone(),
        r#type: event_type.to_owned(),
        time: Some(timestamp(now_ms())),
        // The trace of the request that caused it, so its consumers' work joins that trace.
        traceparent: bookstore_platform::trace::current().map(|t| t.to_string()).unwrap_or_default(),
        payload,
    };
    (id, event_type.to_owned(), envelope.encode_to_vec())
}

#[derive(Clone)]
pub struct OrdersGrpc {
    store: OrderStore,
    books: BookServiceClient<Channel>,
    token: Arc<ServiceToken>,
    confirmer: Confirmer,
}

type ConfirmReply = tokio::sync::oneshot::Sender<Result<(), Status>>;

/// Confirms placed orders' reservations in groups (group commit): each checkout hands its order
/// over and waits, and one task sends whatever queued up while the previous group was at books
/// as one `ConfirmReservations` call, then records the group's stock state in one statement.
/// Under load that turns a gRPC call and two transactions per order into the same per group;
/// an order placed alone waits for nobody.
#[derive(Clone)]
struct Confirmer {
    queue: tokio::sync::mpsc::UnboundedSender<(String, ConfirmReply)>,
}

/// The most orders one confirmation carries.
const CONFIRM_GROUP: usize = 256;

impl Confirmer {
    fn start(store: OrderStore, books: BookServiceClient<Channel>, token: Arc<ServiceToken>) -> Self {
        let (queue, mut pending) = tokio::sync::mpsc::unbounded_channel::<(String, ConfirmReply)>();
        // Ends when the last sender (the service) is gone.
        tokio::spawn(async move {
            while let Some(first) = pending.recv().await {
                let mut group = vec![first];
                while group.len() < CONFIRM_GROUP {
                    match pending.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                let ids: Vec<String> = group.iter().map(|(id, _)| id.clone()).collect();
                match Self::confirm_group(&store, &books, &token, ids).await {
                    Ok(states) => {
                        for ((_, reply), state) in group.into_iter().zip(states) {
                            let outcome = if state == "confirmed" {
                                Ok(())
                            } else {
                                Err(Status::failed_precondition(format!("the reservation is {state}")))
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
    async fn confirm(&self, order_id: &str) -> Result<(), Status> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        self.queue
            .send((order_id.to_owned(), reply))
            .map_err(|_| Status::unavailable("the orders service is stopping"))?;
        outcome.await.map_err(|_| Status::unavailable("the orders service is stopping"))?
    }

    /// One group's call and record; each order's state at books, in `ids`' order.
    async fn confirm_group(
        store: &OrderStore,
        books: &BookServiceClient<Channel>,
        token: &ServiceToken,
        ids: Vec<String>,
    ) -> Result<Vec<String>, Status> {
        let mut request = Deadline::after(SETTLE_TIMEOUT)
            .request(books::ConfirmReservationsRequest { order_ids: ids.clone() });
        token.authorize(&mut request).await?;
        let outcomes = books.clone().confirm_reservations(request).await?.into_inner().outcomes;
        let states: Vec<String> = ids
            .iter()
            .map(|id| {
                outcomes
                    .iter()
                    .find(|o| &o.order_id == id)
                    .map_or_else(|| "missing".into(), |o| o.state.clone())
            })
            .collect();
        let confirmed: Vec<&str> =
            ids.iter().zip(&states).filter(|(_, s)| *s == "confirmed").map(|(id, _)| id.as_str()).collect();
        store.set_stock_states(&confirmed, "confirmed").await.map_err(internal)?;
        Ok(states)
    }
}

impl OrdersGrpc {
    pub fn new(store: OrderStore, books: BookServiceClient<Channel>, token: Arc<ServiceToken>) -> Self {
        let confirmer = Confirmer::start(store.clone(), books.clone(), token.clone());
        Self { store, books, token, confirmer }
    }

    /// A call to books with the orders service's own token, due by `deadline`.
    async fn books_request<T>(&self, message: T, deadline: Deadline) -> Result<Request<T>, Status> {
        let mut request = deadline.request(message);
        self.token.authorize(&mut request).await?;
        Ok(request)
    }

    /// Settles the order's reservation at books; records it when books agrees.
    pub async fn settle(&self, order_id: &str, confirm: bool) -> Result<(), Status> {
        let message = books::ReservationRequest { order_id: order_id.to_owned() };
        // Settling finishes what was started even if the client has gone: its own deadline.
        let request = self.books_request(message, Deadline::after(SETTLE_TIMEOUT)).await?;
        let mut client = self.books.clone();
        let result = if confirm {
            client.confirm_reservation(request).await
        } else {
            client.release_reservation(request).await
        };
        match result {
            Ok(_) => {}
            // Nothing held (the reservation never happened or was swept): nothing to return.
            Err(s) if s.code() == Code::NotFound && !confirm => {}
            Err(s) => return Err(s),
        }
        let state = if confirm { "confirmed" } else { "released" };
        self.store.set_stock_state(order_id, state).await.map_err(internal)
    }

    async fn visible(&self, who: &Identity, id: &str) -> Result<Order, Status> {
        let order = self.store.get(id).await.map_err(internal)?;
        match order {
            Some(o) if o.user_id == who.subject || who.has_any(STAFF) => Ok(o),
            _ => Err(Status::not_found(format!("no order with id {id}"))),
        }
    }

    async fn move_order(&self, order: &Order, to: OrderStatus) -> Result<Order, Status> {
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
        let (id, kind, payload) = if to == OrderStatus::Cancelled {
            event("OrderCancelled", pb::OrderCancelled { order: Some(to_proto(&moved)) }.encode_to_vec())
        } else {
            let changed = pb::OrderStatusChanged {
                order: Some(to_proto(&moved)),
                previous_status: order.status.as_str().to_owned(),
            };
            event("OrderStatusChanged", changed.encode_to_vec())
        };
        if !self
            .store
            .transition(&order.id, order.status, to, (&id, &kind, payload))
            .await
            .map_err(internal)?
        {
            return Err(Status::aborted("the order changed meanwhile; read it again"));
        }
        Ok(moved)
    }
}

#[tonic::async_trait]
impl OrderService for OrdersGrpc {
    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let who = require(&request, ANYONE)?.clone();
        let deadline = deadline_of(&request, DEFAULT_DEADLINE);
        let req = request.into_inner();
        let basket = parse_basket(
            req.lines.into_iter().map(|l| BasketLine { book_id: l.book_id, quantity: l.quantity }).collect(),
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let key = if req.idempotency_key.is_empty() {
            None
        } else {
            Some(
                parse_idempotency_key(&req.idempotency_key)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            )
        };
        if let Some(key) = key {
            match self.store.claim_key(&who.subject, key, &basket_hash(&basket)).await.map_err(internal)? {
                KeyClaim::Claimed => {}
                KeyClaim::Done(order_id) => {
                    let order = self
                        .store
                        .get(&order_id)
                        .await
                        .map_err(internal)?
                        .ok_or_else(|| internal("answered order is gone"))?;
                    return Ok(Response::new(to_proto(&order)));
                }
                KeyClaim::InFlight => {
                    return Err(Status::aborted("a request with this idempotency key is in progress"));
                }
                KeyClaim::Mismatch => {
                    let mut status =
                        Status::failed_precondition("this idempotency key was used with a different request");
                    status.metadata_mut().insert("x-http-status", "422".parse().expect("digits"));
                    return Err(status);
                }
            }
        }
        let result = self.checkout(&who, &basket, key, deadline).await;
        if result.is_err()
            && let Some(key) = key
        {
            // The request did not happen; a retry under the same key may try again.
            if let Err(e) = self.store.release_key(&who.subject, key).await {
                tracing::warn!(error = %format!("{e:#}"), "releasing an idempotency key failed");
            }
        }
        result.map(|o| Response::new(to_proto(&o)))
    }

    async fn get_order(&self, request: Request<pb::GetOrderRequest>) -> Result<Response<pb::Order>, Status> {
        let who = require(&request, ANYONE)?.clone();
        Ok(Response::new(to_proto(&self.visible(&who, &request.get_ref().id).await?)))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let who = require(&request, ANYONE)?.clone();
        let req = request.into_inner();
        let page = if req.page == 0 { 1 } else { req.page };
        let limit = if req.limit == 0 { 20 } else { req.limit };
        if page < 1 || !(1..=100).contains(&limit) {
            return Err(Status::invalid_argument("page must be 1 or more, limit between 1 and 100"));
        }
        let status = if req.status.is_empty() {
            None
        } else {
            if !who.has_any(STAFF) {
                return Err(Status::permission_denied("only staff filter orders by status"));
            }
            Some(
                OrderStatus::parse(&req.status)
                    .ok_or_else(|| Status::invalid_argument("status: unknown status"))?,
            )
        };
        let user = if who.has_any(STAFF) { None } else { Some(who.subject.as_str()) };
        let offset = i64::from(page - 1) * i64::from(limit);
        let (orders, total) =
            self.store.list(user, status, i64::from(limit), offset).await.map_err(internal)?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.iter().map(to_proto).collect(),
            total,
            page,
            limit,
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let who = require(&request, ANYONE)?.clone();
        let order = self.visible(&who, &request.get_ref().id).await?;
        let cancelled = self.move_order(&order, OrderStatus::Cancelled).await?;
        if let Err(e) = self.settle(&order.id, false).await {
            // Cancelled all the same; the sweeper returns the stock when books answers.
            tracing::warn!(order = %order.id, error = %e, "releasing stock failed; will retry");
        }
        Ok(Response::new(to_proto(&cancelled)))
    }

    async fn update_order_status(
        &self,
        request: Request<pb::UpdateOrderStatusRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let who = require(&request, STAFF)?.clone();
        let req = request.into_inner();
        let to = OrderStatus::parse(&req.status)
            .ok_or_else(|| Status::invalid_argument("status: unknown status"))?;
        if to == OrderStatus::Cancelled {
            return Err(Status::invalid_argument("status: use CancelOrder to cancel"));
        }
        let order = self.visible(&who, &req.id).await?;
        Ok(Response::new(to_proto(&self.move_order(&order, to).await?)))
    }
}

impl OrdersGrpc {
    async fn checkout(
        &self,
        who: &Identity,
        basket: &[BasketLine],
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
        let reserved = self
            .books
            .clone()
            .reserve_stock(self.books_request(reserve, deadline).await?)
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
                };
                let (id, kind, payload) =
                    event("OrderPlaced", pb::OrderPlaced { order: Some(to_proto(&order)) }.encode_to_vec());
                let idempotency = key.map(|k| (who.subject.as_str(), k));
                self.store
                    .insert_order(&order, idempotency, (&id, &kind, payload))
                    .await
                    .map(|()| order)
                    .map_err(internal)
            }
            Err(e) => Err(Status::invalid_argument(e.to_string())),
        };
        match placed {
            Ok(order) => {
                if let Err(e) = self.confirmer.confirm(&order.id).await {
                    tracing::warn!(order = %order.id, error = %e, "confirming stock failed; will retry");
                }
                tracing::info!(order = %order.id, user = %order.user_id, total = order.total_minor, "order placed");
                Ok(order)
            }
            Err(status) => {
                // Compensate: the order does not exist, so neither may its hold.
                if let Err(e) = self.settle(&order_id, false).await {
                    tracing::warn!(order = %order_id, error = %e, "releasing a failed order's stock failed; it expires");
                }
                Err(status)
            }
        }
    }
}
