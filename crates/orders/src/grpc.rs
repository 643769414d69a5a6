//! The tonic adapter: proto ⇄ domain, who may do what, errors → `Status`. The saga itself is in
//! [`crate::checkout`].

use bookstore_api::orders::v1 as pb;
use bookstore_api::orders::v1::order_service_server::OrderService;
use bookstore_platform::auth::{Identity, Role, require, require_or_scope};
use bookstore_platform::grpc::deadline_of;
use bookstore_platform::grpc::timestamp;
use bookstore_platform::page::PageRequest;
use tonic::{Request, Response, Status};

use bookstore_api::users::v1 as users;
use bookstore_api::users::v1::user_service_client::UserServiceClient;
use bookstore_platform::balance::PeerChannel;

use crate::checkout::Checkout;
use crate::domain::{
    BasketLine, Order, PlainAddress, ShippingAddress, Status as OrderStatus, parse_basket,
    parse_idempotency_key,
};
use crate::live::{Live, RESUME_SLACK_MS, RESUMED_AT_MOST};
use crate::store::StoreError;

const STAFF: &[Role] = &[Role::Staff, Role::Admin];
/// The deadline of a checkout whose caller sent none.
const DEFAULT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
const ANYONE: &[Role] = &[Role::Customer, Role::Staff, Role::Admin];
/// What a service account needs to read every order, and to cancel or move one.
const READ: &str = "orders:read";
const WRITE: &str = "orders:write";

/// An unexpected failure: logged in full, answered as a bare INTERNAL.
pub(crate) fn internal(err: impl std::fmt::Display) -> Status {
    bookstore_platform::status::unexpected("orders", &anyhow::anyhow!("{err}"))
}

impl From<StoreError> for Status {
    /// Nothing the store raises is the caller's doing: logged in full, answered as INTERNAL
    /// (UNAVAILABLE, to retry, when no database connection came free in time).
    fn from(err: StoreError) -> Self {
        let err = match err {
            StoreError::Database(e) => anyhow::Error::new(e),
            StoreError::Unexpected(e) => e,
            other => anyhow::Error::new(other),
        };
        bookstore_platform::status::unexpected("orders", &err)
    }
}

/// The order as events carry it: everything but personal data (the shipping address travels
/// sealed, beside it). Answers add the address ([`answer`]).
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
        shipping_address: None,
        status_reason: o.status_reason.clone(),
    }
}

/// The order as its owner and staff see it: with where it ships.
fn answer(o: &Order) -> pb::Order {
    let mut order = to_proto(o);
    order.shipping_address = o.shipping_address.as_ref().map(|a| {
        let a = a.plain();
        pb::ShippingAddress {
            name: a.name,
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            postal_code: a.postal_code,
            country: a.country,
        }
    });
    order
}

/// The orders service's gRPC face.
#[derive(Clone)]
pub struct OrdersGrpc {
    checkout: Checkout,
    /// For the caller's account address, asked with the caller's own token.
    users: UserServiceClient<PeerChannel>,
    /// Changed orders, for their owners' watches.
    live: Live,
}

impl OrdersGrpc {
    pub fn new(checkout: Checkout, users: PeerChannel, live: Live) -> Self {
        Self { checkout, users: UserServiceClient::new(users), live }
    }

    /// Where an order ships: the address the request gives, else the caller's account name and
    /// address (asked of users with the caller's own token, so users' own rules apply).
    async fn shipping_address(
        &self,
        who: &Identity,
        given: Option<pb::ShippingAddress>,
        authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
        deadline: bookstore_platform::grpc::Deadline,
    ) -> Result<ShippingAddress, Status> {
        if let Some(a) = given {
            let plain = PlainAddress {
                name: a.name,
                line1: a.line1,
                line2: a.line2,
                city: a.city,
                postal_code: a.postal_code,
                country: a.country,
            };
            return plain.parse().map_err(Status::from);
        }
        let mut request = deadline.request(users::GetUserRequest { id: who.subject.clone() });
        if let Some(authorization) = authorization {
            request.metadata_mut().insert("authorization", authorization);
        }
        let account = self.users.clone().get_user(request).await?.into_inner();
        let name = if account.full_name.trim().is_empty() { &account.username } else { &account.full_name };
        let plain = PlainAddress::from_account(name, &account.address).ok_or_else(|| {
            Status::from(bookstore_platform::status::InvalidField::new(
                "shipping_address",
                "is required: give one, or set an address on your account",
            ))
        })?;
        plain.parse().map_err(|e| {
            Status::from(bookstore_platform::status::InvalidField::new(
                "shipping_address",
                format!("your account's address cannot be used ({e}); give shipping_address"),
            ))
        })
    }

    /// Order `id`, if `who` may see it: its owner, staff, or a service account granted `scope`.
    async fn visible(&self, who: &Identity, id: &str, scope: &str) -> Result<Order, Status> {
        let order = self.checkout.store().get(id).await?;
        match order {
            Some(o) if o.user_id == who.subject || who.may(STAFF, scope) => Ok(o),
            _ => Err(Status::not_found(format!("no order with id {id}"))),
        }
    }
}

/// What a watcher of its own orders is sent.
type Watch = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Order, Status>> + Send>>;

#[tonic::async_trait]
impl OrderService for OrdersGrpc {
    type WatchMyOrdersStream = Watch;

    async fn watch_my_orders(
        &self,
        request: Request<pb::WatchMyOrdersRequest>,
    ) -> Result<Response<Self::WatchMyOrdersStream>, Status> {
        use futures::StreamExt;
        use tokio::sync::broadcast::error::RecvError;
        let owner = require(&request, ANYONE)?.subject.clone();
        // Listening before reading: what changes in between comes live, if not in the replay.
        let changes = self.live.watch();
        let replay = match request.get_ref().since_ms {
            Some(since) => {
                self.checkout
                    .store()
                    .changed_since(&owner, since.saturating_sub(RESUME_SLACK_MS), RESUMED_AT_MOST)
                    .await?
            }
            None => Vec::new(),
        };
        let first: Vec<_> = replay.iter().map(|o| Ok(to_proto(o))).collect();
        let rest = futures::stream::unfold(Some(changes), move |changes| {
            let owner = owner.clone();
            async move {
                let mut changes = changes?;
                loop {
                    return match changes.recv().await {
                        Ok(order) if order.user_id != owner => continue,
                        Ok(order) => Some((Ok(pb::Order::clone(&order)), Some(changes))),
                        Err(RecvError::Lagged(missed)) => {
                            let behind = format!("fell {missed} orders behind; watch again with since_ms");
                            Some((Err(Status::resource_exhausted(behind)), None))
                        }
                        Err(RecvError::Closed) => None,
                    };
                }
            }
        });
        Ok(Response::new(futures::stream::iter(first).chain(rest).boxed()))
    }

    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let who = require(&request, ANYONE)?.clone();
        let deadline = deadline_of(&request, DEFAULT_DEADLINE);
        let authorization = request.metadata().get("authorization").cloned();
        let req = request.into_inner();
        let basket = parse_basket(
            req.lines.into_iter().map(|l| BasketLine { book_id: l.book_id, quantity: l.quantity }).collect(),
        )
        .map_err(Status::from)?;
        let key = if req.idempotency_key.is_empty() {
            None
        } else {
            Some(parse_idempotency_key(&req.idempotency_key).map_err(Status::from)?)
        };
        let address = self.shipping_address(&who, req.shipping_address, authorization, deadline).await?;
        let order = self.checkout.place(&who, &basket, address, key, deadline).await?;
        Ok(Response::new(answer(&order)))
    }

    async fn get_order(&self, request: Request<pb::GetOrderRequest>) -> Result<Response<pb::Order>, Status> {
        let who = require_or_scope(&request, ANYONE, READ)?.clone();
        Ok(Response::new(answer(&self.visible(&who, &request.get_ref().id, READ).await?)))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let who = require_or_scope(&request, ANYONE, READ)?.clone();
        let everyone = who.may(STAFF, READ);
        let req = request.into_inner();
        let paging = PageRequest::parse(req.page, req.limit).map_err(Status::from)?;
        let (page, limit) = (paging.page() as i32, paging.limit() as i32);
        let status = if req.status.is_empty() {
            None
        } else {
            if !everyone {
                return Err(Status::permission_denied("only staff filter orders by status"));
            }
            Some(
                OrderStatus::parse(&req.status)
                    .ok_or_else(|| Status::invalid_argument("status: unknown status"))?,
            )
        };
        let user = if everyone { None } else { Some(who.subject.as_str()) };
        let offset = paging.offset();
        let (orders, total) = self.checkout.store().list(user, status, i64::from(limit), offset).await?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.iter().map(answer).collect(),
            total,
            page,
            limit,
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let who = require_or_scope(&request, ANYONE, WRITE)?.clone();
        let order = self.visible(&who, &request.get_ref().id, WRITE).await?;
        Ok(Response::new(answer(&self.checkout.cancel(&order).await?)))
    }

    async fn update_order_status(
        &self,
        request: Request<pb::UpdateOrderStatusRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let who = require_or_scope(&request, STAFF, WRITE)?.clone();
        let req = request.into_inner();
        let to = OrderStatus::parse(&req.status)
            .ok_or_else(|| Status::invalid_argument("status: unknown status"))?;
        if to == OrderStatus::Cancelled {
            return Err(Status::invalid_argument("status: use CancelOrder to cancel"));
        }
        let order = self.visible(&who, &req.id, WRITE).await?;
        Ok(Response::new(answer(&self.checkout.move_order(&order, to).await?)))
    }
}
