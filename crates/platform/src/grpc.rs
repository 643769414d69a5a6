//! Deadlines between services: every call carries the caller's deadline (`grpc-timeout`), so
//! a request that the edge has given up on is not still working three services deep. The
//! channels themselves (discovery, balancing, breakers, retries) are [`crate::balance`]'s.

use std::time::{Duration, Instant};

/// A protobuf timestamp from Unix milliseconds.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// The moment by which a request must be answered, carried from the edge inwards.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

impl Deadline {
    pub fn after(timeout: Duration) -> Self {
        Self(Instant::now() + timeout)
    }

    pub(crate) fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Wraps `message` in a request whose `grpc-timeout` is what is left of this deadline, so the
    /// callee stops when the caller would. (The trace context goes on in the balancer, on each
    /// attempt's headers.)
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.remaining());
        request
    }
}

/// The deadline a caller sent with `request` (its `grpc-timeout`), to pass on to the calls this
/// request makes; `fallback` when it sent none.
pub fn deadline_of<T>(request: &tonic::Request<T>, fallback: Duration) -> Deadline {
    let timeout = request.metadata().get("grpc-timeout").and_then(|v| parse_grpc_timeout(v.as_bytes()));
    Deadline::after(timeout.unwrap_or(fallback))
}

/// Server side of deadlines: an axum middleware that reads the caller's `grpc-timeout` and
/// answers DEADLINE_EXCEEDED when it passes, dropping the handler's future (and with it any
/// query in flight). tonic's own server does this too; ours is shared with the HTTP endpoints,
/// so it lives here.
pub(crate) async fn enforce_grpc_deadline(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let timeout = request.headers().get("grpc-timeout").and_then(|v| parse_grpc_timeout(v.as_bytes()));
    match timeout {
        None => next.run(request).await,
        Some(timeout) => match tokio::time::timeout(timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                let status = tonic::Status::deadline_exceeded("the caller's deadline passed");
                status.into_http::<axum::body::Body>().map(axum::body::Body::new)
            }
        },
    }
}

/// Parses the gRPC wire format of a timeout: up to 8 digits and a unit (H, M, S, m, u, n).
pub(crate) fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(amount * 3600),
        b"M" => Duration::from_secs(amount * 60),
        b"S" => Duration::from_secs(amount),
        b"m" => Duration::from_millis(amount),
        b"u" => Duration::from_micros(amount),
        b"n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_reject_garbage() {
        assert_eq!(parse_grpc_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout(b"S"), None);
        assert_eq!(parse_grpc_timeout(b"123456789S"), None);
        assert_eq!(parse_grpc_timeout(b"12X"), None);
        assert_eq!(parse_grpc_timeout(b""), None);
    }

    #[test]
    fn deadline_request_carries_the_remaining_time() {
        let deadline = Deadline::after(Duration::from_secs(3));
        let request = deadline.request(());
        let header = request.metadata().get("grpc-timeout").expect("grpc-timeout is set");
        let sent = parse_grpc_timeout(header.as_bytes()).unwrap();
        assert!(sent <= Duration::from_secs(3) && sent > Duration::from_secs(2), "{sent:?}");
    }
}
