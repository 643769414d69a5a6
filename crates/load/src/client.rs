//! The HTTP/1.1 client the load speaks to the shop with: hyper-util's pooled client over
//! keep-alive connections, one connection per request in flight (HTTP/1.1 has no pipelining
//! worth using), reused as answers end. A connection the shop closes (a 503 from its
//! concurrency limit says `Connection: close`) is replaced by a new one on the next request,
//! as a browser would.
//!
//! Every answer's body is read to its end before the request counts as done, and a failure
//! is named by kind: could not connect, closed early, not HTTP.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::input::ShopAddress;
use crate::record::{Failure, Outcome};

/// A pool of keep-alive connections to one shop.
#[derive(Clone)]
pub struct ShopClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl ShopClient {
    /// A client for the shop at `address` that keeps up to `connections` idle connections (as
    /// many as requests may be in flight, so a burst's connections are there for the next).
    pub fn new(address: &ShopAddress, connections: usize, connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(connections)
            .build(connector);
        Self { base: address.as_str().to_owned(), client }
    }

    /// A request for `path_and_query` on the shop, with a bearer token and a JSON body if given.
    pub fn request(
        &self,
        method: Method,
        path_and_query: &str,
        token: Option<&str>,
        json: Option<Bytes>,
    ) -> Request<Full<Bytes>> {
        let mut builder = Request::builder().method(method).uri(format!("{}{path_and_query}", self.base));
        if let Some(token) = token {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match json {
            Some(json) => {
                builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                json
            }
            None => Bytes::new(),
        };
        builder.body(Full::new(body)).expect("a request of a valid origin, path and header values")
    }

    /// Sends `request` and reads the answer to its end, keeping nothing of it.
    pub async fn exchange(&self, request: Request<Full<Bytes>>) -> Outcome {
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(error) => return Outcome::Failed(client_failure(&error)),
        };
        let status = response.status().as_u16();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            if let Err(error) = frame {
                return Outcome::Failed(failure_of(&error));
            }
        }
        Outcome::Answered(status)
    }

    /// Sends `request` and returns the answer's status and body, for the preparation's calls.
    pub async fn fetch(&self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), Failure> {
        let response = self.client.request(request).await.map_err(|e| client_failure(&e))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| failure_of(&e))?.to_bytes();
        Ok((status, body))
    }
}

fn client_failure(error: &hyper_util::client::legacy::Error) -> Failure {
    if error.is_connect() { Failure::Connect } else { failure_of(error) }
}

/// The kind of failure, from the first error in the chain that says.
fn failure_of(error: &(dyn StdError + 'static)) -> Failure {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(error) = error.downcast_ref::<hyper::Error>() {
            if error.is_timeout() {
                return Failure::Timeout;
            }
            if error.is_parse() || error.is_parse_status() || error.is_parse_too_large() {
                return Failure::Protocol;
            }
            if error.is_incomplete_message() || error.is_closed() || error.is_canceled() {
                return Failure::Closed;
            }
        }
        if let Some(error) = error.downcast_ref::<io::Error>() {
            match error.kind() {
                io::ErrorKind::ConnectionRefused => return Failure::Connect,
                io::ErrorKind::TimedOut => return Failure::Timeout,
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => return Failure::Closed,
                _ => {}
            }
        }
        next = error.source();
    }
    Failure::Other
}
