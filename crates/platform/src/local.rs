//! Calls between services of one process, without a socket.
//!
//! When `up` (or `serve` with several services) runs a service and its caller in the same
//! process, a call to it need not be framed as HTTP/2, written to a loopback socket, read back
//! and parsed: the request goes straight into the service's router, the same router its
//! listener serves, with every layer of the server stack (trace context, token check, deadline,
//! request metrics). The client side is untouched too: the call still goes through the peer's
//! [`PeerChannel`](crate::balance::PeerChannel), so balancing, breakers, retries and deadlines
//! behave as they do over the network.
//!
//! What is skipped is what only a socket needs: HTTP/2 framing and flow control, header
//! compression, the kernel's copies and wake-ups, and TLS (nothing leaves the process). A peer
//! is called in process only when its URL is the address this process itself listens on for
//! it; any other URL (another host, a proxy in between, a registry) is dialled as before.
//! `local_calls = false` turns it off, to measure the difference or to exercise the sockets.
//!
//! gRPC's in-process transports (grpc-java's `InProcessChannel`, grpc-go's `bufconn`) do the
//! same. tonic has none of its own; its clients take any `tower::Service` over HTTP requests,
//! which is all this needs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::task::{Context as TaskContext, Poll};

use axum::Router;
use futures::FutureExt;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

use crate::balance::Connector;
use crate::discovery::Target;

/// The services of this process that peers may call in process, by the URL they listen on
/// (`http://127.0.0.1:50051`). Each is a slot, filled when the service starts serving and
/// emptied when its listener has drained: a caller built before its callee can hold a
/// transport to it already, and a call to a service that is not serving fails as a refused
/// connection would (`UNAVAILABLE`, which the channel's breaker and retries know).
///
/// Emptying the slot also lets the service's state go: its router holds its clients, whose
/// transports hold these slots.
#[derive(Clone, Default)]
pub struct LocalServices {
    slots: Arc<HashMap<String, Arc<Slot>>>,
}

type Slot = RwLock<Option<Router>>;

impl std::fmt::Debug for LocalServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalServices").field("urls", &self.slots.keys().collect::<Vec<_>>()).finish()
    }
}

/// The URL peers of this process call a service listening at `addr` by: the key of its slot.
pub fn url_of(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

impl LocalServices {
    /// Slots for services that will listen at `addrs`; none (calls always go over the network)
    /// when the list is empty.
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self { slots: Arc::new(addrs.into_iter().map(|addr| (url_of(addr), Arc::default())).collect()) }
    }

    /// The service listening at `addr` serves: calls to it go to `router` from now on.
    pub fn provide(&self, addr: SocketAddr, router: Router) {
        if let Some(slot) = self.slots.get(&url_of(addr)) {
            *slot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(router);
        }
    }

    /// The service listening at `addr` has stopped serving: calls to it fail from now on.
    pub fn withdraw(&self, addr: SocketAddr) {
        if let Some(slot) = self.slots.get(&url_of(addr)) {
            slot.write().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        }
    }

    /// Whether calls to `url` stay in this process.
    pub fn serves(&self, url: &str) -> bool {
        self.slots.contains_key(url)
    }

    /// `connector`, except for targets this process serves itself, which it calls in process.
    pub fn connector(&self, connector: Connector) -> Connector {
        if self.slots.is_empty() {
            return connector;
        }
        let slots = self.slots.clone();
        Arc::new(move |target: &Target| match slots.get(&target.url) {
            Some(slot) => Ok(BoxCloneSyncService::new(InProcess { slot: slot.clone() })),
            None => connector(target),
        })
    }
}

/// A transport into a router of this process.
#[derive(Clone)]
struct InProcess {
    slot: Arc<Slot>,
}

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

impl Service<HttpRequest> for InProcess {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<HttpResponse, BoxError>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let router = self.slot.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(router) = router else {
            return futures::future::ready(Err(BoxError::from(NotStarted))).boxed();
        };
        router
            .oneshot(request.map(axum::body::Body::new))
            .map(|answer| match answer {
                Ok(response) => Ok(response.map(tonic::body::Body::new)),
                Err(never) => match never {},
            })
            .boxed()
    }
}

/// A call to a service of this process that is not serving (not yet, or no longer).
#[derive(Debug)]
struct NotStarted;

impl std::fmt::Display for NotStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the service is not serving in this process")
    }
}

impl std::error::Error for NotStarted {}

/// The transport a test gets for `url` from `services`, if it serves it.
#[cfg(test)]
fn transport(services: &LocalServices, url: &str) -> Option<crate::balance::Transport> {
    let never: Connector = Arc::new(|_: &Target| anyhow::bail!("dialled"));
    services.connector(never)(&Target { url: url.to_owned(), weight: 1 }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;

    /// An address that may hold a slot; nothing listens there.
    fn one() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    fn request(path: &str) -> HttpRequest {
        http::Request::post(format!("http://127.0.0.1:1{path}"))
            .body(tonic::body::Body::new(axum::body::Body::from("ping")))
            .unwrap()
    }

    async fn text(response: HttpResponse) -> String {
        let body = axum::body::Body::new(response.into_body());
        String::from_utf8(axum::body::to_bytes(body, usize::MAX).await.unwrap().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_call_to_a_url_this_process_serves_reaches_its_router_with_method_path_and_body() {
        let services = LocalServices::new([one()]);
        let mut transport = transport(&services, "http://127.0.0.1:1").expect("served in process");
        services.provide(one(), Router::new().route("/echo", post(|body: String| async move { body })));
        let response = transport.ready().await.unwrap().call(request("/echo")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(text(response).await, "ping");
    }

    #[tokio::test]
    async fn a_call_fails_before_the_service_serves_and_after_it_is_withdrawn() {
        let services = LocalServices::new([one()]);
        let mut transport = transport(&services, "http://127.0.0.1:1").unwrap();
        let early = transport.ready().await.unwrap().call(request("/echo")).await;
        assert!(early.unwrap_err().to_string().contains("not serving"));
        services.provide(one(), Router::new().route("/echo", post(|| async { "late" })));
        let response = transport.ready().await.unwrap().call(request("/echo")).await.unwrap();
        assert_eq!(text(response).await, "late");
        services.withdraw(one());
        let after = transport.ready().await.unwrap().call(request("/echo")).await;
        assert!(after.unwrap_err().to_string().contains("not serving"));
    }

    /// The health check of a gRPC service at an address where nothing listens, through a
    /// peer channel whose transports come from `services`: it answers only in process.
    async fn check_health(services: &LocalServices, url: &str) -> Result<(), tonic::Status> {
        use crate::balance::{PeerChannel, ResilienceConfig, tonic_connector};
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let config =
            ResilienceConfig { call_timeout: std::time::Duration::from_secs(2), ..Default::default() };
        let connector = services.connector(tonic_connector(&config, None));
        let channel = PeerChannel::connect_via("test", "health", url, config, connector).await.unwrap();
        let request = HealthCheckRequest { service: String::new() };
        HealthClient::new(channel).check(request).await.map(drop)
    }

    #[tokio::test]
    async fn a_grpc_client_reaches_a_service_of_its_process_without_its_socket_and_dials_when_told_to() {
        // An address nothing listens on: a dialled call is refused.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let url = url_of(addr);
        let (_, health) = tonic_health::server::health_reporter();
        let router = tonic::service::Routes::new(health).into_axum_router();
        let services = LocalServices::new([addr]);
        services.provide(addr, router);
        check_health(&services, &url).await.expect("answered in process");
        let dialled = check_health(&LocalServices::default(), &url).await.unwrap_err();
        assert_eq!(dialled.code(), tonic::Code::Unavailable, "{dialled:?}");
    }

    #[tokio::test]
    async fn withdrawing_a_service_lets_its_state_go() {
        let services = LocalServices::new([one()]);
        let state = Arc::new(());
        let held = state.clone();
        services.provide(one(), Router::new().route("/", post(move || async move { drop(held) })));
        assert_eq!(Arc::strong_count(&state), 2);
        services.withdraw(one());
        assert_eq!(Arc::strong_count(&state), 1, "the router, and what it holds, is dropped");
    }

    #[tokio::test]
    async fn other_urls_are_dialled_by_the_connector_given() {
        let services = LocalServices::new([one()]);
        assert!(transport(&services, &url_of(one())).is_some(), "its own address is served in process");
        assert!(transport(&services, "http://127.0.0.1:2").is_none(), "another URL must be dialled");
        assert!(transport(&LocalServices::default(), "http://127.0.0.1:1").is_none());
    }
}
