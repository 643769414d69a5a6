//! The platform kit: everything a bookstore service needs that is not its own business.
//!
//! - [`telemetry`]: structured JSON logs, the Prometheus registry, request metrics.
//! - [`db`]: one code path over PostgreSQL and SQLite (sqlx `Any`), migrations per backend,
//!   pool gauges.
//! - [`service`]: the service contract (a spec, a context in, what to serve out), the tracked
//!   background tasks, and the process that serves services and stops them in order.
//! - [`status`]: errors across service boundaries, with gRPC's standard rich details.
//! - [`settings`]: configuration keys, each defined once (struct, default, flag, variable, help).
//! - [`server`]: what every listener shares: one listener that speaks gRPC and HTTP/1, gRPC
//!   health, the admin endpoints (`/healthz`, `/readyz`, `/metrics`), graceful draining.
//! - [`events`]: the event bus (an embedded durable log, or RabbitMQ), the outbox relay,
//!   and the inbox that makes redelivery harmless.
//! - [`grpc`]: the one place where inter-service gRPC clients are built: a timeout on every call
//!   and the caller's deadline passed on.
//! - [`auth`]: who is calling: access-token verification against the users service's JWKS,
//!   roles, and the middleware that puts the caller's [`auth::Identity`] on each request.
//! - [`revocation`]: access tokens that stop working before they expire (sign-out, a password
//!   or role change, a deleted account), known to every verifier through the bus.
//! - [`basket`]: the rules of a basket, for the services that take one.
//! - [`page`]: paging of listings, one rule for every service.
//! - [`pubsub`]: a Redis pub/sub channel listened to for the life of the process.
//! - [`text`]: one rule for free text (names, titles, addresses) and newtypes over it.
//! - [`local`]: calls between services of one process, straight into the callee's router.
//! - [`jwt_crypto`]: EdDSA for `jsonwebtoken`, without compiling RSA.
//! - [`crypto`]: personal data encrypted at rest and in events: the master key, data keys,
//!   values bound to their row and column.
//! - [`tls`]: rustls for the public listener (a certificate reloaded when its files change) and
//!   development certificates.
//! - [`trace`]: W3C trace context, continued from the caller or started, carried by every
//!   outgoing call and every event.
//! - `testing` (feature `testing`, tests only): fresh databases on either backend, test
//!   brokers, a token issuer.
#![forbid(unsafe_code)]

pub mod auth;
pub mod balance;
pub mod basket;
pub mod breaker;
pub mod clock;
pub mod crypto;
pub mod db;
pub mod discovery;
pub mod etcd;
pub mod events;
pub mod grpc;
pub mod jwt_crypto;
pub mod local;
pub mod page;
pub mod pubsub;
pub mod recent_traces;
pub mod revocation;
pub mod server;
pub mod service;
pub mod settings;
pub mod status;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod text;
pub mod tls;
pub mod trace;

/// Arms the crash points named in `FAILPOINTS` (`name=action;...`, the `fail` crate's syntax)
/// in builds with the `failpoints` feature, which only the tests' executable has; `None`
/// elsewhere. Hold the guard for the life of the process.
pub fn arm_failpoints() -> Option<fail::FailScenario<'static>> {
    cfg!(feature = "failpoints").then(fail::FailScenario::setup)
}

/// A pause point for shutdown tests: in builds with the `failpoints` feature, when `FAILPOINTS`
/// arms `name` as `name=return(MS)`, waits MS milliseconds (without blocking the runtime) and
/// logs before and after, so a test can land a SIGTERM in the middle of a unit of work. Does
/// nothing in other builds.
pub async fn pause_point(name: &str) {
    #[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
    fn armed(name: &str) -> Option<u64> {
        fail::fail_point!(name, |ms: Option<String>| ms.and_then(|ms| ms.parse().ok()));
        None
    }
    if let Some(ms) = armed(name) {
        tracing::warn!(point = name, ms, "pausing at a test pause point");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        tracing::warn!(point = name, "resuming after a test pause point");
    }
}
