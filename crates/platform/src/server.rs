//! The lifecycle every service shares.
//!
//! A service is an axum [`Router`]: its gRPC services (tonic routes turned into axum routes,
//! [`grpc_service_router`]) or its REST API. [`serve`] runs it on one listener that speaks
//! HTTP/1 and HTTP/2 (h2c, which gRPC uses) and, on shutdown, stops accepting and waits for
//! in-flight requests; over TLS when given a certificate ([`serve_tls`], [`crate::tls`]). The
//! process's operational endpoints ([`ops_router`]: `/healthz`,
//! `/readyz`, `/metrics`) are served the same way on a listener of their own.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::telemetry;

/// A readiness check: `Ok` when the service can do useful work (its database answers, its
/// dependencies are reachable).
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

/// Work done before each `/metrics` scrape, e.g. sampling pool gauges.
pub type ScrapeHook = Arc<dyn Fn() + Send + Sync>;

/// The operational endpoints of a process, on its admin listener.
#[derive(Clone)]
pub(crate) struct Ops {
    /// Cancelled when the process starts to stop: readiness turns 503 at once.
    pub draining: CancellationToken,
    /// Every service's readiness checks, with its name.
    pub readiness: Vec<(&'static str, ReadinessCheck)>,
    pub on_scrape: Vec<ScrapeHook>,
    /// The process's peer channels, for `/status`.
    pub board: crate::balance::Board,
}

/// `/healthz` (the process is alive), `/readyz` (every service in it can serve; 503 while
/// shutting down), `/metrics` (Prometheus text), `/status` (peers' replicas, as JSON) and
/// `/debug/traces` (the last traces, [`crate::recent_traces`]). These live on the admin listener
/// (`admin_http`), off the public port.
pub(crate) fn ops_router(ops: Ops) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/debug/traces", get(crate::recent_traces::list))
        .route("/debug/traces/{trace_id}", get(crate::recent_traces::show))
        .with_state(Arc::new(ops))
}

async fn readyz(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    if ops.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned());
    }
    for (service, check) in &ops.readiness {
        if let Err(err) = check().await {
            tracing::warn!(service, error = %format!("{err:#}"), "not ready");
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{service} not ready: {err:#}"));
        }
    }
    (StatusCode::OK, "ready".to_owned())
}

/// The process's clients of its peers: each replica's weight, breaker, ejection, calls in
/// flight and latency estimate, as JSON.
async fn status(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    axum::Json(serde_json::json!({ "peers": ops.board.snapshot() }))
}

async fn metrics(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    telemetry::record_runtime();
    ops.board.record_gauges();
    for hook in &ops.on_scrape {
        hook();
    }
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], telemetry::metrics_handle().render())
}

/// Everything a gRPC service shares, around its own `routes`: the caller's trace continued,
/// token verification (callers' identities reach handlers), the caller's deadline enforced,
/// the standard gRPC health service reporting `health_name` SERVING, and request metrics.
/// Each service's router is this call.
pub async fn grpc_service_router(
    service: &'static str,
    health_name: &str,
    routes: tonic::service::Routes,
    verifier: Arc<crate::auth::Verifier>,
) -> Router {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_service_status(health_name, tonic_health::ServingStatus::Serving).await;
    let grpc = routes.add_service(health_service).into_axum_router();
    // Wrapped once, as one tower stack around the routed services: `Router::layer` would wrap
    // each service on its own, and each layer's call clones (and allocates) the chain below it.
    // gRPC's request metrics name the method from the path, so they need no matched route.
    telemetry::metrics_handle();
    let stack = tower::ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(service, telemetry::track_requests))
        .layer(axum::middleware::from_fn(crate::grpc::enforce_grpc_deadline))
        .layer(axum::middleware::from_fn_with_state((verifier, service), crate::auth::authenticate_grpc))
        .service(grpc);
    Router::new().fallback_service(stack)
}

/// Adds the request metrics layer for `service` to a router.
pub fn with_request_metrics(router: Router, service: &'static str) -> Router {
    // Install the registry now: what is recorded before it exists is lost.
    telemetry::metrics_handle();
    router.layer(axum::middleware::from_fn_with_state(service, telemetry::track_requests))
}

/// A running server: its address, and a handle to wait until it has drained.
pub struct Running {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// How long a client may take to send a request's headers, and how long an HTTP/1 connection
/// may sit idle between requests: a connection that sends half a header (slowloris) or nothing
/// is closed after this.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// HTTP/2 connections are pinged this often when idle, and closed when a ping goes unanswered
/// for [`HTTP2_PING_TIMEOUT`].
pub const HTTP2_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(20);
pub const HTTP2_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Streams one HTTP/2 connection may have open at once. Long-lived streams are normal here
/// (the live queue: one per staff socket, all on the gateway's connection to fulfillment), so
/// far above hyper's default of 200, past which new calls would wait and time out.
pub const HTTP2_MAX_STREAMS: u32 = 10_000;
/// The most header lines hyper parses in an HTTP/1 request (its default is 100), and the most
/// header bytes it takes in an HTTP/2 one (its default is 16 KiB). Set above what the gateway
/// allows (`bookstore_gateway::security`), so that the gateway, not hyper, refuses what is too
/// much, with its own words; what hyper refuses itself (a request it cannot parse, or past
/// these) leaves as the envelope too, written in place of hyper's bare status line
/// ([`envelope_for`]).
pub const HTTP1_MAX_HEADERS: usize = 512;
pub const HTTP2_MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains in-flight requests.
///
/// HTTP/1.1 and HTTP/2 (h2c, for gRPC) on one port, through hyper-util's connection builder
/// rather than `axum::serve`, because only the builder takes a timer: with it, headers must
/// arrive within [`HEADER_READ_TIMEOUT`] and idle keep-alive connections close after it.
/// Each request carries the peer's address (`ConnectInfo<SocketAddr>`).
pub fn serve(
    service: &'static str,
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<Running> {
    serve_tls(service, listener, router, shutdown, None)
}

/// [`serve`], over TLS when `tls` is given ([`crate::tls::acceptor`]): the handshake must end
/// within [`HEADER_READ_TIMEOUT`], on the connection's own task (a slow one holds up no other).
pub fn serve_tls(
    service: &'static str,
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<Running> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        tracing::info!(service, %addr, "listening");
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true)
            .max_headers(HTTP1_MAX_HEADERS);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(HTTP2_PING_INTERVAL)
            .keep_alive_timeout(HTTP2_PING_TIMEOUT)
            .max_concurrent_streams(HTTP2_MAX_STREAMS)
            .max_header_list_size(HTTP2_MAX_HEADER_LIST_SIZE);
        let builder = Arc::new(builder);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.cancelled() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: not fatal.
                    tracing::warn!(service, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            // Small request/response pairs; Nagle's delay would dominate their latency.
            let _ = tcp.set_nodelay(true);
            let (router, builder, watcher) = (router.clone(), builder.clone(), graceful.watcher());
            let (shutdown, tls) = (shutdown.clone(), tls.clone());
            tokio::spawn(async move {
                let Some(tls) = tls else {
                    return serve_connection(tcp, peer, None, router, &builder, watcher, shutdown).await;
                };
                let stream = match tokio::time::timeout(HEADER_READ_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
                serve_connection(stream, peer, Some(OverTls), router, &builder, watcher, shutdown).await;
            });
        }
        drop(listener);
        graceful.shutdown().await;
        tracing::info!(service, %addr, "drained and stopped");
        Ok(())
    });
    Ok(Running { addr, task })
}

/// On a request that came over TLS to this process ([`serve_tls`]): what answers only HTTPS
/// may say (HSTS) looks for it.
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

type ConnectionBuilder = hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>;

/// Serves one accepted connection (`tls` marks its requests when it is TLS) until it ends or
/// the server drains.
async fn serve_connection<I>(
    mut io: I,
    peer: SocketAddr,
    tls: Option<OverTls>,
    router: Router,
    builder: &ConnectionBuilder,
    watcher: hyper_util::server::graceful::Watcher,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // hyper tells HTTP/1 from HTTP/2 by the first bytes, and waits for them without a timeout:
    // a client that connects and sends nothing (or part of HTTP/2's preface) would hold the
    // connection forever. So they are read here, within the time a header has, and handed back.
    let opening = tokio::select! {
        opening = tokio::time::timeout(HEADER_READ_TIMEOUT, opening(&mut io)) => opening,
        () = shutdown.cancelled() => return,
    };
    let Ok(Ok(head)) = opening else {
        tracing::debug!(%peer, "connection closed before it said anything");
        return;
    };
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        if let Some(tls) = tls {
            request.extensions_mut().insert(tls);
        }
        tower::ServiceExt::oneshot(router.clone(), request)
    });
    let io = hyper_util::rt::TokioIo::new(Replay { head, read: 0, io, refusal: Vec::new(), refusal_sent: 0 });
    let connection = builder.serve_connection_with_upgrades(io, service).into_owned();
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// HTTP/2's connection preface, which an h2c client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads a connection's first bytes: until they are HTTP/2's whole preface or stop matching it
/// (an HTTP/1 request), or the client closes.
async fn opening<I: tokio::io::AsyncRead + Unpin>(tcp: &mut I) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::with_capacity(H2_PREFACE.len());
    let mut buf = [0u8; H2_PREFACE.len()];
    while head.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&head) {
        let n = tcp.read(&mut buf[..H2_PREFACE.len() - head.len()]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

/// A connection that first gives back the bytes [`opening`] read from it, and that answers in
/// the API's error envelope where hyper would answer with a bare status line ([`envelope_for`]).
struct Replay<I> {
    head: Vec<u8>,
    read: usize,
    io: I,
    /// An envelope written in place of hyper's bare refusal, and how much of it is sent.
    refusal: Vec<u8>,
    refusal_sent: usize,
}

impl<I: tokio::io::AsyncWrite + Unpin> Replay<I> {
    /// Sends what is left of a substituted refusal before anything else.
    fn poll_refusal(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        while self.refusal_sent < self.refusal.len() {
            let n =
                std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.refusal[self.refusal_sent..]))?;
            if n == 0 {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.refusal_sent += n;
        }
        std::task::Poll::Ready(Ok(()))
    }

    /// Takes `buf` as written when it is hyper's bare refusal, sending the envelope instead.
    fn substitute(&mut self, cx: &mut std::task::Context<'_>, buf: &[u8]) -> Option<std::io::Result<usize>> {
        let envelope = envelope_for(buf)?;
        self.refusal = envelope;
        self.refusal_sent = 0;
        match self.poll_refusal(cx) {
            std::task::Poll::Ready(Err(e)) => Some(Err(e)),
            // The rest goes out before the next write, flush or shutdown.
            _ => Some(Ok(buf.len())),
        }
    }
}

/// The statuses hyper answers by itself, with a bare status line and no body, when it cannot
/// parse a request (hyper's HTTP/1 `on_error`; it then closes the connection), and what the
/// envelope says of each.
const BARE_REFUSALS: [(&[u8], &str, &str); 3] = [
    (b"400", "400 Bad Request", "the request could not be read as HTTP"),
    (b"414", "414 URI Too Long", "the request target is too long"),
    (b"431", "431 Request Header Fields Too Large", "the request's headers are too large"),
];

/// The API's error envelope (`code`, `message`, `request_id`, as the gateway's `ErrorBody`) with
/// the gateway's security headers, when `written` is hyper's bare refusal: a whole response head
/// of one of [`BARE_REFUSALS`], `content-length: 0`, and no request id, which every answer of
/// ours carries. hyper 1.x has no hook for that answer, so it is replaced on its way out.
fn envelope_for(written: &[u8]) -> Option<Vec<u8>> {
    let status = written.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let (_, line, message) = BARE_REFUSALS.iter().find(|(code, _, _)| *code == status)?;
    let head = std::str::from_utf8(written).ok()?.to_ascii_lowercase();
    if !head.ends_with("\r\n\r\n")
        || !head.contains("\r\ncontent-length: 0\r\n")
        || head.contains("x-request-id:")
    {
        return None;
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let body =
        serde_json::json!({"code": "BAD_REQUEST", "message": message, "request_id": request_id}).to_string();
    tracing::info!(%request_id, status = line, "refused a request hyper could not parse");
    Some(
        format!(
            "HTTP/1.1 {line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\n\
             x-content-type-options: nosniff\r\ncache-control: no-store\r\nreferrer-policy: no-referrer\r\n\
             content-security-policy: frame-ancestors 'none'\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Replay<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.read < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.read);
            buf.put_slice(&this.head[this.read..this.read + n]);
            this.read += n;
            return std::task::Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Replay<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_refusal(cx))?;
        if let Some(taken) = this.substitute(cx, buf) {
            return std::task::Poll::Ready(taken);
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_refusal(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && let Some(taken) = this.substitute(cx, first)
        {
            return std::task::Poll::Ready(taken);
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_refusal(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_refusal(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Resolves on SIGTERM or Ctrl-C, then cancels `token`.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
        () = token.cancelled() => return,
    }
    token.cancel();
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn hypers_bare_refusals_and_nothing_else_become_the_envelope() {
        let bare =
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 01:00:00 GMT\r\n\r\n";
        let envelope = String::from_utf8(envelope_for(bare).expect("hyper's own 400")).unwrap();
        let (head, body) = envelope.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 400 Bad Request\r\n") && head.contains("connection: close"),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["code"], "BAD_REQUEST");
        assert!(head.contains(&format!("content-length: {}", envelope.len() - head.len() - 4)), "{head}");
        assert!(head.contains(&format!("x-request-id: {}", body["request_id"].as_str().unwrap())), "{head}");
        let too_large = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert!(envelope_for(too_large).is_some_and(|e| e.starts_with(b"HTTP/1.1 431 ")));

        for ours in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-request-id: abc\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"\x00\x00\x04\x08\x00\x00\x00\x00\x00",
        ] {
            assert!(envelope_for(ours).is_none(), "{:?}", String::from_utf8_lossy(ours));
        }
    }

    async fn hello_server() -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stop = CancellationToken::new();
        let router = Router::new().route("/", get(|| async { "hello" }));
        let running = serve("test", listener, router, stop.clone()).unwrap();
        (running.addr, stop)
    }

    /// Reads until the server closes the connection; how long that took.
    async fn closed_after(stream: &mut tokio::net::TcpStream) -> Duration {
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        let read_all = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), read_all).await.expect("the server never closed it");
        started.elapsed()
    }

    #[tokio::test]
    async fn a_connection_that_sends_half_a_header_is_closed() {
        let (addr, _stop) = hello_server().await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        let took = closed_after(&mut slow).await;
        assert!(took >= HEADER_READ_TIMEOUT - Duration::from_secs(1), "closed early: {took:?}");
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_or_part_of_the_http2_preface_is_closed() {
        let (addr, _stop) = hello_server().await;
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut partial = tokio::net::TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let (silent, partial) = tokio::join!(closed_after(&mut silent), closed_after(&mut partial));
        for took in [silent, partial] {
            assert!(took >= HEADER_READ_TIMEOUT - Duration::from_secs(1), "closed early: {took:?}");
        }
    }

    #[tokio::test]
    async fn http1_and_h2c_are_both_served_after_the_first_bytes_are_read() {
        let (addr, _stop) = hello_server().await;
        let mut h1 = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The first byte alone, then the rest: hyper gets them all.
        h1.write_all(b"G").await.unwrap();
        h1.write_all(b"ET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        h1.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"), "{answer}");

        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut h2, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::get("http://x/").body(axum::body::Body::empty()).unwrap();
        let response = h2.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), hyper::Version::HTTP_2);
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not() {
        let (addr, _stop) = hello_server().await;
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("hello"));
        closed_after(&mut idle).await;

        // A connection that keeps asking is served past the timeout.
        let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        while started.elapsed() < HEADER_READ_TIMEOUT + Duration::from_secs(2) {
            busy.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            let n = busy.read(&mut buf).await.unwrap();
            assert!(n > 0 && String::from_utf8_lossy(&buf[..n]).contains("hello"), "answered");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
