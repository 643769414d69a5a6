//! `/api/v1/orders`: checkout and order history over REST, translated to the orders service.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use bookstore_api::orders::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Auth;
use crate::books::{Money, rfc3339};
use crate::error::{ApiError, ErrorBody, ErrorCode, Json, Path, Query};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderLine {
    pub book_id: String,
    pub quantity: i64,
    /// The book's price at checkout.
    pub unit_price: Money,
    pub title: String,
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Stock reserved, waiting for staff.
    Placed,
    Fulfilling,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    /// The name the orders service uses, which is the JSON name.
    fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "PLACED",
            OrderStatus::Fulfilling => "FULFILLING",
            OrderStatus::Shipped => "SHIPPED",
            OrderStatus::Delivered => "DELIVERED",
            OrderStatus::Cancelled => "CANCELLED",
        }
    }

    fn from_proto(status: &str) -> Result<Self, ApiError> {
        serde_json::from_value(serde_json::Value::String(status.to_owned())).map_err(|_| {
            tracing::error!(status, "the orders service sent a status the gateway does not know");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, "internal error")
        })
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Order {
    pub id: String,
    pub user_id: String,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub status: OrderStatus,
    pub created_at: String,
    pub updated_at: String,
    /// Where it ships (absent only on orders placed before addresses existed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipping_address: Option<ShippingAddress>,
    /// Why it is in its status, when someone said (e.g. why it could not be fulfilled).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_reason: String,
}

/// A postal address. `name` and `line1` are required; the rest as the country's format needs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShippingAddress {
    #[schema(example = "Ada Lovelace")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^\s*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F]([^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F])?\s*$"
    )]
    pub name: String,
    #[schema(example = "12 St James's Square")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^\s*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F]([^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F])?\s*$"
    )]
    pub line1: String,
    #[serde(default)]
    #[schema(max_length = 200, pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$")]
    pub line2: String,
    #[serde(default)]
    #[schema(example = "London")]
    #[schema(max_length = 100, pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$")]
    pub city: String,
    #[serde(default)]
    #[schema(example = "SW1Y 4JH")]
    #[schema(max_length = 20, pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$")]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    #[serde(default)]
    #[schema(example = "GB", pattern = r"^\s*([A-Za-z]{2})?\s*$")]
    pub country: String,
}

impl From<pb::ShippingAddress> for ShippingAddress {
    fn from(a: pb::ShippingAddress) -> Self {
        Self {
            name: a.name,
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            postal_code: a.postal_code,
            country: a.country,
        }
    }
}

impl From<ShippingAddress> for pb::ShippingAddress {
    fn from(a: ShippingAddress) -> Self {
        Self {
            name: a.name,
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            postal_code: a.postal_code,
            country: a.country,
        }
    }
}

impl TryFrom<pb::Order> for Order {
    type Error = ApiError;

    fn try_from(o: pb::Order) -> Result<Self, ApiError> {
        let total = o.total.unwrap_or_default();
        Ok(Self {
            id: o.id,
            user_id: o.user_id,
            lines: o
                .lines
                .into_iter()
                .map(|l| {
                    let price = l.unit_price.unwrap_or_default();
                    OrderLine {
                        book_id: l.book_id,
                        quantity: l.quantity,
                        unit_price: Money { amount_minor: price.amount_minor, currency: price.currency },
                        title: l.title,
                    }
                })
                .collect(),
            total: Money { amount_minor: total.amount_minor, currency: total.currency },
            status: OrderStatus::from_proto(&o.status)?,
            created_at: rfc3339(o.create_time),
            updated_at: rfc3339(o.update_time),
            shipping_address: o.shipping_address.map(ShippingAddress::from),
            status_reason: o.status_reason,
        })
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderPage {
    pub items: Vec<Order>,
    pub total: i64,
    pub page: i32,
    pub limit: i32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BasketLine {
    #[schema(min_length = 1, max_length = 64)]
    pub book_id: String,
    /// 1 to 100 units.
    #[schema(example = 1, minimum = 1, maximum = 100)]
    #[serde(deserialize_with = "crate::error::integral")]
    pub quantity: i64,
}

/// A basket to check out. Prices and titles come from the catalog, never from here.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// 1 to 50 lines, each book once.
    #[schema(min_items = 1, max_items = 50)]
    pub lines: Vec<BasketLine>,
    /// Where to ship; without it, your account's name and address are used.
    #[serde(default)]
    pub shipping_address: Option<ShippingAddress>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    /// FULFILLING, SHIPPED or DELIVERED, one step at a time (cancelling is its own operation).
    #[schema(example = "FULFILLING", value_type = NextStatus)]
    pub status: OrderStatus,
}

/// The statuses staff move an order to.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the body is read as an [`OrderStatus`]
#[schema(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NextStatus {
    Fulfilling,
    Shipped,
    Delivered,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Staff only: one status.
    pub status: Option<OrderStatus>,
    /// 1-based page number (default 1).
    #[param(minimum = 1, maximum = 10000)]
    pub page: Option<i32>,
    /// Orders per page, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i32>,
}

/// Check out a basket. Send an `Idempotency-Key` header to make retries safe.
#[utoipa::path(post, path = "/api/v1/orders", tag = "orders", security(("bearer" = [])), request_body = CreateOrder,
    params(("idempotency-key" = Option<String>, Header, description = "Same key and body: the same order, once")),
    responses(
        (status = 201, description = "Placed; stock is reserved", body = Order),
        (status = 400, description = "A bad basket or address, or no address given and none on the account", body = ErrorBody),
        (status = 401, description = "Sign in first", body = ErrorBody),
        (status = 409, description = "Out of stock (the lines that failed are in `details`), or the same key is in flight", body = ErrorBody),
        (status = 422, description = "The idempotency key was used with another body", body = ErrorBody),
    ))]
pub async fn create_order(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    Json(body): Json<CreateOrder>,
) -> Result<impl IntoResponse, ApiError> {
    auth.required()?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => String::new(),
        Some(v) => {
            v.to_str().map_err(|_| ApiError::invalid("Idempotency-Key: must be visible ASCII"))?.to_owned()
        }
    };
    let request = pb::CreateOrderRequest {
        lines: body
            .lines
            .into_iter()
            .map(|l| pb::BasketLine { book_id: l.book_id, quantity: l.quantity })
            .collect(),
        idempotency_key,
        shipping_address: body.shipping_address.map(Into::into),
    };
    let order: Order =
        state.orders.clone().create_order(state.request(request, &auth)).await?.into_inner().try_into()?;
    let location = format!("/api/v1/orders/{}", order.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(order)))
}

/// One server-sent event of your orders' stream, as it travels.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the stream writes the events
pub struct OrderStreamEvent {
    /// `order`, `expired` or `error`.
    #[schema(value_type = OrderStreamEventName)]
    pub event: String,
    /// For `order`: the order's `updated_at` in milliseconds, to resume from (`Last-Event-ID`).
    pub id: Option<String>,
    /// For `order`: the order as JSON, as `GET /api/v1/orders/{id}` answers it without its
    /// shipping address (`Order`); for `expired`: empty; for `error`: `{"code", "message"}`.
    pub data: String,
}

/// The events of your orders' stream.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
#[schema(rename_all = "lowercase")]
pub enum OrderStreamEventName {
    Order,
    Expired,
    Error,
}

/// Where a stream of your orders resumes.
#[derive(Debug, Deserialize, IntoParams)]
pub struct EventsQuery {
    /// The `id` of the last event you saw (milliseconds since the epoch: the order's
    /// `updated_at`); the `Last-Event-ID` header, which browsers send on reconnecting, wins.
    #[param(minimum = 0)]
    pub since: Option<i64>,
}

/// Your orders, live, as server-sent events: each time one of yours is placed or changes status,
/// an `order` event whose data is the order (as `GET /api/v1/orders/{id}` answers it, without
/// its shipping address) and whose `id` is its `updated_at` in milliseconds. From now on; with
/// `Last-Event-ID` (or `since`), first every order of yours changed from 5 s before it, so an
/// order may come twice (each event carries its whole state). Comments keep the stream alive
/// every 20 s. The stream ends with an `expired` event when the token expires, or an `error`
/// event (`{"code", "message"}`: `RESOURCE_EXHAUSTED` for a client that fell behind, then it
/// reconnects with `Last-Event-ID`). Live connections per user are capped as the queue's sockets are.
#[utoipa::path(get, path = "/api/v1/orders/events", tag = "orders", security(("bearer" = [])),
    params(EventsQuery, ("Last-Event-ID" = Option<i64>, Header, minimum = 0, description = "The id of the last event you saw")),
    responses(
        (status = 200, content_type = "text/event-stream", body = OrderStreamEvent, description = "`order` events, then `expired` or `error`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn order_events(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let caller = auth.required()?;
    let since = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|id| *id >= 0)
                .ok_or_else(|| ApiError::invalid("Last-Event-ID: not an event id this stream sent"))?,
        ),
        None if query.since.is_some_and(|since| since < 0) => {
            return Err(ApiError::invalid("since: must be 0 or more"));
        }
        None => query.since,
    };
    let guard = state.live.admit(&caller.identity.subject).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::ResourceExhausted,
            "too many live connections",
        )
    })?;
    let expiry = Box::pin(tokio::time::sleep(crate::live::until_expiry(&caller.identity)));
    // No deadline: the stream lives as long as the client listens.
    let mut request = tonic::Request::new(pb::WatchMyOrdersRequest { since_ms: since });
    auth.attach(&mut request);
    let orders = state.orders.clone().watch_my_orders(request).await?.into_inner();

    let ended = |kind: &str, code: ErrorCode, message: &str| {
        Event::default().event(kind).json_data(serde_json::json!({"code": code, "message": message}))
    };
    let events = futures::stream::unfold(Some((orders, expiry, guard)), move |watching| async move {
        let (mut orders, mut expiry, guard) = watching?;
        let event = tokio::select! {
            () = &mut expiry => return Some((ended("expired", ErrorCode::Unauthenticated, "the token expired"), None)),
            next = orders.next() => match next {
                Some(Ok(order)) => {
                    let id = order.update_time.map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
                    match Order::try_from(order) {
                        Ok(order) => Event::default().event("order").id(id.to_string()).json_data(order),
                        Err(e) => return Some((ended("error", e.code, &e.message), None)),
                    }
                }
                Some(Err(status)) => {
                    let e = ApiError::from(status);
                    return Some((ended("error", e.code, &e.message), None));
                }
                None => return None,
            },
        };
        Some((event, Some((orders, expiry, guard))))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(crate::live::PING_EVERY)).into_response())
}

/// One order: yours, or any for staff (others answer 404).
#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = String, Path, description = "Order id")),
    responses((status = 200, body = Order), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_order(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Order>, ApiError> {
    auth.required()?;
    let request = pb::GetOrderRequest { id };
    let order = state.read(&state.peers.orders, &state.orders, &auth, request, |mut c, r| async move {
        c.get_order(r).await
    });
    Ok(Json(order.await?.try_into()?))
}

/// Your orders, newest first; staff see everyone's and may filter by status.
#[utoipa::path(get, path = "/api/v1/orders", tag = "orders", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = OrderPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_orders(
    State(state): State<AppState>,
    auth: Auth,
    Query(params): Query<ListParams>,
) -> Result<Json<OrderPage>, ApiError> {
    auth.required()?;
    let (page, limit) = crate::error::paging(params.page, params.limit)?;
    let request = pb::ListOrdersRequest {
        page,
        limit,
        status: params.status.map(|s| s.as_str().to_owned()).unwrap_or_default(),
    };
    let page =
        state
            .read(&state.peers.orders, &state.orders, &auth, request, |mut c, r| async move {
                c.list_orders(r).await
            })
            .await?;
    Ok(Json(OrderPage {
        items: page.orders.into_iter().map(Order::try_from).collect::<Result<_, _>>()?,
        total: page.total,
        page: page.page,
        limit: page.limit,
    }))
}

/// Cancel a PLACED order; its stock goes back on the shelf.
#[utoipa::path(post, path = "/api/v1/orders/{id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("id" = String, Path, description = "Order id")),
    responses((status = 200, body = Order), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The order is past PLACED", body = ErrorBody)))]
pub async fn cancel_order(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Order>, ApiError> {
    auth.required()?;
    let order =
        state.orders.clone().cancel_order(state.request(pb::CancelOrderRequest { id }, &auth)).await?;
    Ok(Json(order.into_inner().try_into()?))
}

/// Move an order to its next status (staff).
#[utoipa::path(post, path = "/api/v1/orders/{id}/status", tag = "orders", security(("bearer" = [])),
    request_body = StatusChange, params(("id" = String, Path, description = "Order id")),
    responses((status = 200, body = Order), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Not a legal move from the current status", body = ErrorBody)))]
pub async fn update_status(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<StatusChange>,
) -> Result<Json<Order>, ApiError> {
    auth.required()?;
    let request = pb::UpdateOrderStatusRequest { id, status: body.status.as_str().to_owned() };
    let order = state.orders.clone().update_order_status(state.request(request, &auth)).await?;
    Ok(Json(order.into_inner().try_into()?))
}
