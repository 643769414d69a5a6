//! The gateway: the single entry point of bookstore.
//!
//! REST/JSON under `/api/v1` at the edge, gRPC to the services behind it. Every error is one
//! envelope ([`error`]); every request gets an `x-request-id`; responses are compressed; bodies
//! are size-limited; the OpenAPI document is generated from the handlers ([`openapi`]) and served
//! with Swagger UI at `/docs`.
#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod books;
pub mod client;
pub mod edge;
pub mod error;
pub mod fulfillment;
pub mod live;
pub mod openapi;
pub mod orders;
pub mod proxy;
pub mod recommendations;
pub mod scopes;
pub mod security;
pub mod settings;
pub mod stale;
pub mod users;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::{get, post};
use bookstore_api::books::v1::book_service_client::BookServiceClient;
use bookstore_api::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use bookstore_api::orders::v1::order_service_client::OrderServiceClient;
use bookstore_api::recommendations::v1::recommendation_service_client::RecommendationServiceClient;
use bookstore_api::users::v1::user_service_client::UserServiceClient;
use bookstore_platform::auth::Verifier;
use bookstore_platform::balance::PeerChannel;
use bookstore_platform::grpc::Deadline;
use bookstore_platform::server::with_request_metrics;
use bookstore_platform::service::{Built, Context, Spec};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

pub use settings::Settings;

pub const SERVICE: &str = "gateway";

/// How many catalog reads the gateway remembers to serve stale, and for how long.
pub const STALE_ENTRIES: u64 = 10_000;
pub const STALE_FOR: Duration = Duration::from_secs(3600);

pub static SPEC: Spec = Spec { name: SERVICE, migrations: None, uses_bus: false, uses_master_key: false };

/// The gateway from its [`Context`]: the REST edge over the books, users and orders services,
/// ready when all three answer their gRPC health checks.
pub async fn build(ctx: Context, settings: Settings) -> anyhow::Result<Built> {
    let config = GatewayConfig {
        books_url: ctx.peer_url("books")?.to_owned(),
        users_url: ctx.peer_url("users")?.to_owned(),
        orders_url: ctx.peer_url("orders")?.to_owned(),
        fulfillment_url: ctx.peer_url("fulfillment")?.to_owned(),
        recommendations_url: ctx.peer_url("recommendations")?.to_owned(),
        max_body_bytes: settings.max_body_bytes,
        request_timeout: ctx.request_timeout,
        cors_allowed_origins: settings.cors_origins(),
        trusted_proxies: settings.trusted_proxies()?,
        hsts_max_age_secs: settings.hsts_max_age_secs,
    };
    // One channel per peer, shared by the API and the readiness checks.
    let (books, users, orders) =
        (ctx.channel("books").await?, ctx.channel("users").await?, ctx.channel("orders").await?);
    // Not in readiness: the shop sells while the work queue is down.
    let fulfillment = ctx.channel("fulfillment").await?;
    // Nor without recommendations: pages get the fallback.
    let recommendations = ctx.channel("recommendations").await?;
    let state = Arc::new(Services {
        books: BookServiceClient::new(books.clone()),
        users: UserServiceClient::new(users.clone()),
        orders: OrderServiceClient::new(orders.clone()),
        fulfillment: FulfillmentServiceClient::new(fulfillment.clone()),
        recommendations: RecommendationServiceClient::new(recommendations.clone()),
        recommendations_fallback: Arc::new(recommendations::Fallback::new(
            Duration::from_millis(settings.recommendations_budget_ms),
            Duration::from_millis(settings.recommendations_edge_cache_ms),
        )),
        peers: Peers {
            books: books.clone(),
            users: users.clone(),
            orders: orders.clone(),
            fulfillment,
            recommendations,
        },
        stale: stale::StaleCache::new(STALE_ENTRIES, STALE_FOR),
        request_timeout: config.request_timeout,
        trusted_proxies: config.trusted_proxies.clone().into(),
        live: Arc::new(live::Live::new(
            ctx.verifier.clone(),
            settings.queue_sockets_per_user,
            config.cors_allowed_origins.clone(),
        )),
    });
    let trusted: Arc<[ipnet::IpNet]> = config.trusted_proxies.clone().into();
    let shared = proxy::Shared {
        limiter: Arc::new(
            edge::RateLimiter::new(
                settings.rate_limit_requests,
                Duration::from_secs(settings.rate_limit_window_secs),
                settings.redis_url.as_deref(),
                &settings.redis_key_prefix,
                trusted.clone(),
            )
            .await?,
        ),
        permits: Arc::new(tokio::sync::Semaphore::new(settings.concurrency_limit)),
        trusted_proxies: trusted,
    };
    let edge = Edge {
        limiter: shared.limiter.clone(),
        permits: shared.permits.clone(),
        routes: proxy::router(&settings.routes, ctx.resilience, &ctx.board, shared).await?,
    };
    let tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(cert), Some(key)) => Some(bookstore_platform::tls::acceptor(cert, key)?),
        _ => None,
    };
    let router = router(&config, state, ctx.verifier.clone(), edge)?;
    let mut built = Built::new(router);
    built.tls = tls;
    Ok(built.ready_when(move || {
        let (books, users, orders) = (books.clone(), users.clone(), orders.clone());
        async move {
            check_serving(books, "bookstore.books.v1.BookService").await?;
            check_serving(users, "bookstore.users.v1.UserService").await?;
            check_serving(orders, "bookstore.orders.v1.OrderService").await
        }
    }))
}

/// What the gateway needs to know.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The books service, e.g. `http://127.0.0.1:50051`.
    pub books_url: String,
    /// The users service, e.g. `http://127.0.0.1:50052`.
    pub users_url: String,
    /// The orders service, e.g. `http://127.0.0.1:50053`.
    pub orders_url: String,
    /// The fulfillment service, e.g. `http://127.0.0.1:50054`.
    pub fulfillment_url: String,
    /// The recommendations service, e.g. `http://127.0.0.1:50055`.
    pub recommendations_url: String,
    /// The largest JSON body accepted; larger gets 413.
    pub max_body_bytes: usize,
    /// How long a request may take end to end; passed on as the gRPC deadline.
    pub request_timeout: Duration,
    /// Origins allowed by CORS; empty turns CORS off (same-origin only).
    pub cors_allowed_origins: Vec<String>,
    /// Proxies whose `X-Forwarded-For` (and `X-Forwarded-Proto`) is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `Strict-Transport-Security: max-age` on answers to requests that came over TLS; 0: none.
    pub hsts_max_age_secs: u64,
}

/// Shared by every handler, behind one `Arc`: handlers' extractors clone it on every request,
/// and cloning the clients one by one (each with its own URI and channel) showed in profiles.
pub type AppState = Arc<Services>;

/// The clients of the services behind the gateway, and what the handlers share.
pub struct Services {
    pub books: BookServiceClient<PeerChannel>,
    pub users: UserServiceClient<PeerChannel>,
    pub orders: OrderServiceClient<PeerChannel>,
    pub fulfillment: FulfillmentServiceClient<PeerChannel>,
    pub recommendations: RecommendationServiceClient<PeerChannel>,
    /// What a page gets when recommendations cannot answer ([`recommendations`]).
    pub recommendations_fallback: Arc<recommendations::Fallback>,
    /// The channels under the clients: their retries and their status.
    pub peers: Peers,
    /// Last good catalog reads, served when books cannot answer.
    pub stale: stale::StaleCache,
    pub request_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` names the client ([`client`]).
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// The live queue's sockets ([`live`]).
    pub live: Arc<live::Live>,
}

/// The gateway's channel to each peer.
#[derive(Clone, Debug)]
pub struct Peers {
    pub books: PeerChannel,
    pub users: PeerChannel,
    pub orders: PeerChannel,
    pub fulfillment: PeerChannel,
    pub recommendations: PeerChannel,
}

impl Services {
    /// A gRPC request for `message` that carries the deadline of a request starting now and
    /// the caller's token.
    pub fn request<T>(&self, message: T, auth: &auth::Auth) -> tonic::Request<T> {
        let mut request = Deadline::after(self.request_timeout).request(message);
        auth.attach(&mut request);
        request
    }

    /// Calls `call` on `client` with `message`, again when the peer was unavailable, as
    /// [`PeerChannel::retrying`] allows: for calls that are safe to repeat (reads). Every
    /// attempt shares one deadline and carries the caller's token.
    pub async fn read<C, M, R, F, Fut>(
        &self,
        peer: &PeerChannel,
        client: &C,
        auth: &auth::Auth,
        message: M,
        call: F,
    ) -> Result<R, tonic::Status>
    where
        C: Clone,
        M: Clone,
        F: Fn(C, tonic::Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let deadline = Deadline::after(self.request_timeout);
        let answer = peer
            .retrying(deadline, || {
                let mut request = deadline.request(message.clone());
                auth.attach(&mut request);
                call(client.clone(), request)
            })
            .await?;
        Ok(answer.into_inner())
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How long a client may take to send a whole request body once its headers are in.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway's edge: rate limits, the concurrency limit and the pass-through routes (which
/// count against both on their own path, [`proxy`]).
pub struct Edge {
    pub limiter: Arc<edge::RateLimiter>,
    pub permits: Arc<tokio::sync::Semaphore>,
    pub routes: Router,
}

/// The whole gateway as one router over the clients in `state`. `verifier` checks access
/// tokens (it fetches its keys from the users service).
pub fn router(
    config: &GatewayConfig,
    state: AppState,
    verifier: Arc<Verifier>,
    edge: Edge,
) -> anyhow::Result<Router> {
    // The pages call the API's handlers, under the same limits; a session cookie, not a bearer
    // token, says who is browsing.
    let pages = web::router(state.clone(), verifier.clone())
        .layer(axum::middleware::from_fn_with_state(edge.limiter.clone(), edge::rate_limit))
        .layer(axum::middleware::from_fn_with_state(BODY_READ_TIMEOUT, security::body_deadline))
        .layer(DefaultBodyLimit::max(config.max_body_bytes));
    let api = Router::new()
        .route("/api/v1/books", get(books::list_books).post(books::create_book))
        .route(
            "/api/v1/books/{id}",
            get(books::get_book).patch(books::update_book).delete(books::delete_book),
        )
        .route("/api/v1/books/{id}/stock", post(books::adjust_stock))
        .route("/api/v1/books/{id}/recommendations", get(recommendations::book_recommendations))
        .route("/api/v1/users/me/recommendations", get(recommendations::my_recommendations))
        .route("/api/v1/auth/register", post(users::register))
        .route("/api/v1/auth/login", post(users::login))
        .route("/api/v1/auth/refresh", post(users::refresh))
        .route("/api/v1/auth/logout", post(users::logout))
        .route("/api/v1/auth/token", post(users::token))
        .route("/.well-known/jwks.json", get(users::jwks))
        .route("/api/v1/users", get(users::list_users))
        .route("/api/v1/users/me", get(users::get_me).patch(users::update_me).delete(users::delete_me))
        .route(
            "/api/v1/users/{id}",
            get(users::get_user).patch(users::update_user).delete(users::delete_user),
        )
        .route(
            "/api/v1/service-accounts",
            get(users::list_service_accounts).post(users::create_service_account),
        )
        .route(
            "/api/v1/service-accounts/{client_id}/rotate-secret",
            post(users::rotate_service_account_secret),
        )
        .route("/api/v1/service-accounts/{client_id}/revoke", post(users::revoke_service_account))
        .route("/api/v1/orders", get(orders::list_orders).post(orders::create_order))
        .route("/api/v1/orders/events", get(orders::order_events))
        .route("/api/v1/orders/{id}", get(orders::get_order))
        .route("/api/v1/orders/{id}/cancel", post(orders::cancel_order))
        .route("/api/v1/orders/{id}/status", post(orders::update_status))
        .route("/api/v1/fulfillment/queue", get(fulfillment::get_queue))
        .route("/api/v1/fulfillment/queue/ws", get(live::queue_socket))
        .route("/api/v1/fulfillment/tasks/{id}/move", post(fulfillment::move_task))
        .route("/api/v1/fulfillment/tasks/{id}/claim", post(fulfillment::claim_task))
        .route("/api/v1/fulfillment/tasks/{id}/advance", post(fulfillment::advance_task))
        .route("/api/v1/fulfillment/tasks/{id}/remove", post(fulfillment::remove_task))
        .route("/api/v1/audit", get(audit::list))
        // After routing, so it knows the route; after the token check (a layer below), so it
        // knows the caller.
        .route_layer(axum::middleware::from_fn(scopes::require_scope))
        // Around it: an anonymous caller of a protected route is refused before anything (its
        // handler's extractors included) looks at what it sent.
        .route_layer(axum::middleware::from_fn(auth::require_signed_in))
        // Around both: a refused attempt by staff, an admin or a service account is recorded too.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), audit::record))
        .with_state(state)
        // Counted after the token is checked, so a signed-in client counts as itself.
        .layer(axum::middleware::from_fn_with_state(edge.limiter.clone(), edge::rate_limit))
        .layer(axum::middleware::from_fn_with_state(verifier, auth::authenticate))
        .layer(axum::middleware::from_fn_with_state(BODY_READ_TIMEOUT, security::body_deadline))
        .layer(DefaultBodyLimit::max(config.max_body_bytes));
    let router = Router::new()
        .merge(api)
        .merge(pages)
        .merge(
            Router::from(SwaggerUi::new("/docs").url("/api/openapi.json", openapi::ApiDoc::openapi())).layer(
                SetResponseHeaderLayer::overriding(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(security::DOCS_CSP),
                ),
            ),
        )
        .route("/api/asyncapi.json", get(openapi::asyncapi))
        .fallback(not_found);
    let router = with_request_metrics(router, SERVICE);
    // What needs no route wraps the routed router once, as one tower stack. `Router::layer`
    // would wrap every route on its own, and each layer's call clones (and allocates) the
    // chain of layers below it, so a request paid for this stack over and over.
    let stack = tower::ServiceBuilder::new()
        .option_layer(cors_layer(&config.cors_allowed_origins)?)
        // CORS answers a preflight with an empty body of the inner's type: one of axum's.
        .map_response(axum::response::IntoResponse::into_response)
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
            let request_id =
                request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or_default();
            // A log span only: the request's trace span is the metrics layer's, which knows the route.
            tracing::info_span!(target: "http", "http", method = %request.method(), path = %request.uri().path(), request_id)
        }))
        .layer(CompressionLayer::new())
        .layer(axum::middleware::from_fn(security::no_store))
        .layer(axum::middleware::from_fn(error::envelope))
        .layer(axum::middleware::from_fn_with_state(edge.permits, edge::shed_overload))
        .service(router);
    // Beside the stack, not under it: each route does its own edge work.
    let router = Router::new().fallback_service(stack).merge(edge.routes);
    // Around both: limits, a request id safe to echo, and the security headers (which leave a
    // backend's own alone).
    let hsts = Arc::new(security::Hsts::new(config.hsts_max_age_secs, config.trusted_proxies.clone().into()));
    Ok(router.layer(axum::middleware::from_fn_with_state(hsts, security::edge)))
}

/// No such route: the envelope for the API and its clients; a page for a person's browser
/// (which asks for HTML first) outside `/api`.
async fn not_found(uri: axum::http::Uri, headers: axum::http::HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    let wants_page = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.starts_with("text/html"));
    if wants_page && !uri.path().starts_with("/api/") {
        return web::layout::error_page(&error::ApiError::not_found("there is no page here"));
    }
    error::ApiError::not_found("no such resource").into_response()
}

pub(crate) fn cors_layer(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o)
                    .map_err(|_| anyhow::anyhow!("cors_allowed_origins: {o:?} is not a valid origin"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, REQUEST_ID])
            .expose_headers([REQUEST_ID])
            .max_age(Duration::from_secs(600)),
    ))
}

/// Ready when the service answers the standard gRPC health check with SERVING.
async fn check_serving(channel: PeerChannel, service: &str) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let mut request =
        tonic::Request::new(tonic_health::pb::HealthCheckRequest { service: service.to_owned() });
    request.set_timeout(Duration::from_secs(1));
    let status = HealthClient::new(channel).check(request).await?.into_inner().status();
    anyhow::ensure!(status == ServingStatus::Serving, "{service} is {status:?}");
    Ok(())
}
