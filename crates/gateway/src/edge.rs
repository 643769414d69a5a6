//! The gateway as an edge: per-client rate limits and a concurrency limit that sheds overload.
//!
//! **Rate limits** count requests per client in fixed windows: the client is the verified
//! token's subject, else its address ([`crate::client`]). Every response says where the client
//! stands with the IETF draft's headers (`RateLimit-Policy: "default";q=100;w=60` and
//! `RateLimit: "default";r=42;t=30`); past the limit the answer is 429 with `Retry-After`.
//! With `redis_url`, counts live in Redis (`INCR` + `EXPIRE` per window), shared by every
//! gateway replica; if Redis fails, counting falls back to this replica's memory.
//!
//! Libraries looked at: `governor` (GCRA, in-memory only; its keyed store grows until pruned)
//! and `tower_governor` (the same, keyed by address only). A fixed window counts the same way
//! in memory and in Redis and maps directly onto the draft's `r` and `t`.
//!
//! **The concurrency limit** is a semaphore: a request that finds no permit gets 503 with
//! `Retry-After: 1` at once, rather than queueing behind the overload.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use moka::sync::Cache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Where a client stands in its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub allowed: bool,
    pub remaining: u32,
    /// Seconds until the window resets.
    pub reset: u64,
}

/// Counts requests per client per window.
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    local: Cache<(String, u64), Arc<AtomicU32>>,
    redis: Option<redis::aio::ConnectionManager>,
    /// Keeps this deployment's (or test's) keys apart in a shared Redis.
    prefix: String,
    policy: HeaderValue,
    trusted_proxies: Arc<[ipnet::IpNet]>,
}

impl RateLimiter {
    /// `limit` requests per `window` per client (0: no limit); counts in Redis when given.
    pub async fn new(
        limit: u32,
        window: Duration,
        redis_url: Option<&str>,
        prefix: &str,
        trusted_proxies: Arc<[ipnet::IpNet]>,
    ) -> anyhow::Result<Self> {
        let redis = match redis_url {
            None => None,
            Some(url) => {
                let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("redis_url: {e}"))?;
                Some(
                    client
                        .get_connection_manager()
                        .await
                        .map_err(|e| anyhow::anyhow!("connecting to Redis: {e}"))?,
                )
            }
        };
        let policy = HeaderValue::from_str(&format!("\"default\";q={limit};w={}", window.as_secs()))?;
        Ok(Self {
            limit,
            window,
            local: Cache::builder().max_capacity(100_000).time_to_live(window).build(),
            redis,
            prefix: prefix.to_owned(),
            policy,
            trusted_proxies,
        })
    }

    /// Counts one request of `client` at `now_secs`.
    pub async fn hit(&self, client: &str, now_secs: u64) -> Standing {
        let window = self.window.as_secs();
        let index = now_secs / window;
        let reset = window - now_secs % window;
        let count = match self.count_in_redis(client, index).await {
            Some(count) => count,
            None => {
                let counter = self.local.get_with((client.to_owned(), index), || Arc::new(AtomicU32::new(0)));
                counter.fetch_add(1, Ordering::Relaxed).saturating_add(1)
            }
        };
        Standing { allowed: count <= self.limit, remaining: self.limit.saturating_sub(count), reset }
    }

    async fn count_in_redis(&self, client: &str, index: u64) -> Option<u32> {
        let mut redis = self.redis.clone()?;
        let key = format!("{}:ratelimit:{client}:{index}", self.prefix);
        let counted: redis::RedisResult<(u32, bool)> = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .expire(&key, self.window.as_secs() as i64 + 1)
            .query_async(&mut redis)
            .await;
        match counted {
            Ok((count, _)) => Some(count),
            Err(e) => {
                tracing::warn!(error = %e, "Redis did not count a request; counting in memory");
                None
            }
        }
    }

    /// The client a request counts for: its verified subject, else its address.
    fn client_of(&self, request: &Request) -> String {
        if let Some(caller) = request.extensions().get::<Caller>() {
            return format!("sub:{}", caller.identity.subject);
        }
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        match peer {
            Some(peer) => format!(
                "ip:{}",
                crate::client::client_address(peer, request.headers(), &self.trusted_proxies)
            ),
            None => "ip:unknown".to_owned(),
        }
    }
}

/// Counts the request against its client's limit; 429 past it. Every answer carries the
/// client's standing.
pub async fn rate_limit(State(limiter): State<Arc<RateLimiter>>, request: Request, next: Next) -> Response {
    if limiter.limit == 0 {
        return next.run(request).await;
    }
    let standing = match limiter.admit(&request).await {
        Ok(standing) => standing,
        Err(refused) => return refused,
    };
    let mut response = next.run(request).await;
    limiter.stamp(&mut response, standing);
    response
}

impl RateLimiter {
    /// Whether limits are on at all.
    pub fn enabled(&self) -> bool {
        self.limit > 0
    }

    /// Counts `request` for its client: its standing when it may go on, else the 429 to send
    /// (already stamped with the headers).
    pub fn admit(&self, request: &Request) -> impl Future<Output = Result<Standing, Response>> + Send + '_ {
        // The client is read now: the request (its body is not `Sync`) stays out of the future.
        let client = self.client_of(request);
        async move { self.admit_client(&client).await }
    }

    async fn admit_client(&self, client: &str) -> Result<Standing, Response> {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let standing = self.hit(client, now).await;
        if standing.allowed {
            return Ok(standing);
        }
        metrics::counter!("http_server_rate_limited_total", "service" => crate::SERVICE).increment(1);
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::ResourceExhausted,
            "too many requests; slow down",
        );
        error.retry_after = Some(standing.reset.max(1));
        let mut response = error.into_response();
        self.stamp(&mut response, standing);
        Err(response)
    }

    /// Writes the client's standing on `response` (`RateLimit-Policy` and `RateLimit`).
    pub fn stamp(&self, response: &mut Response, standing: Standing) {
        let headers = response.headers_mut();
        headers.insert(RATELIMIT_POLICY, self.policy.clone());
        if let Ok(value) =
            HeaderValue::from_str(&format!("\"default\";r={};t={}", standing.remaining, standing.reset))
        {
            headers.insert(RATELIMIT, value);
        }
    }
}

/// Requests in flight, bounded: one that finds no room is refused at once.
pub async fn shed_overload(State(permits): State<Arc<Semaphore>>, request: Request, next: Next) -> Response {
    let Some(_permit) = admit_in_flight(&permits) else { return overloaded() };
    next.run(request).await
}

/// A permit for one request in flight (held until it is dropped), or none when there is no
/// room: answer [`overloaded`] then.
pub fn admit_in_flight(permits: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    permits.clone().try_acquire_owned().ok()
}

/// 503 with `Retry-After: 1`, closing the connection: the gateway has no room for the request.
pub fn overloaded() -> Response {
    metrics::counter!("http_server_shed_total", "service" => crate::SERVICE).increment(1);
    let mut error =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "the gateway is overloaded");
    error.retry_after = Some(1);
    let mut response = error.into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn limiter(limit: u32, redis: Option<&str>, prefix: &str) -> RateLimiter {
        RateLimiter::new(limit, Duration::from_secs(60), redis, prefix, Arc::from(Vec::new())).await.unwrap()
    }

    #[tokio::test]
    async fn a_client_past_its_limit_is_refused_until_the_window_turns() {
        let limiter = limiter(3, None, "t").await;
        let at = 120; // the start of a window
        let standings: Vec<Standing> = futures::future::join_all((0..4).map(|_| limiter.hit("a", at))).await;
        assert_eq!(standings.iter().filter(|s| s.allowed).count(), 3);
        assert_eq!(limiter.hit("a", at + 59).await, Standing { allowed: false, remaining: 0, reset: 1 });
        assert!(limiter.hit("b", at).await.allowed, "another client has its own count");
        assert_eq!(limiter.hit("a", at + 60).await, Standing { allowed: true, remaining: 2, reset: 60 });
    }
}
