//! W3C trace context (`traceparent`) carried through every hop of a request.
//!
//! The gateway takes a caller's `traceparent` (or starts a trace), every service reads the one
//! its caller sent, and the work a request does runs inside [`scope`], so [`current`] answers
//! anywhere below it: outgoing gRPC calls carry it ([`crate::grpc::Deadline::request`]), log
//! spans name its trace id, and events written to an outbox keep it in their envelope, so a
//! consumer's work joins the trace of the request that caused it.
//!
//! Only the header's format and propagation live here (the part every hop needs); recording
//! spans and exporting them is the tracing backend's business.

use std::fmt;
use std::future::Future;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use rand::RngCore;

pub(crate) const HEADER: &str = "traceparent";

/// One hop of a trace: the trace it belongs to, this hop's span id, and the sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// The first hop of a new, sampled trace.
    pub fn root() -> Self {
        let mut trace_id = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut trace_id);
        Self { trace_id, span_id: new_span_id(), flags: 1 }
    }

    /// The next hop of the same trace.
    pub fn child(&self) -> Self {
        Self { span_id: new_span_id(), ..*self }
    }

    /// Reads a `traceparent` value (version 00, or a later version's first four fields, as the
    /// recommendation asks); `None` for anything malformed, including all-zero ids.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        let version = u8::from_str_radix(version, 16).ok().filter(|_| version.len() == 2)?;
        if version == 0xff || (version == 0 && parts.next().is_some()) {
            return None;
        }
        let trace_id: [u8; 16] = hex(trace)?.try_into().ok()?;
        let span_id: [u8; 8] = hex(span)?.try_into().ok()?;
        let flags: [u8; 1] = hex(flags)?.try_into().ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self { trace_id, span_id, flags: flags[0] })
    }

    pub(crate) fn trace_id_hex(&self) -> String {
        self.trace_id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-", self.trace_id_hex())?;
        for b in self.span_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

/// Ids need to be unique, not secret: the thread's CSPRNG, not a system call per request.
fn new_span_id() -> [u8; 8] {
    let mut span_id = [0u8; 8];
    while span_id == [0; 8] {
        rand::thread_rng().fill_bytes(&mut span_id);
    }
    span_id
}

/// Lowercase hex only, as the header's grammar says.
fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2)
        || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

tokio::task_local! {
    static CURRENT: TraceParent;
}

/// The trace context of the request being handled, if any.
pub fn current() -> Option<TraceParent> {
    CURRENT.try_with(|t| *t).ok()
}

/// Runs `work` as the hop `trace`.
pub(crate) async fn scope<F: Future>(trace: TraceParent, work: F) -> F::Output {
    CURRENT.scope(trace, work).await
}

/// Middleware for every server: continues the caller's trace (a new hop of it), or starts one,
/// for the rest of the request; the request's log span is entered with its trace id.
pub async fn continue_trace(request: Request, next: Next) -> Response {
    let trace = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
        .map_or_else(TraceParent::root, |parent| parent.child());
    let span = tracing::info_span!("trace", trace_id = %trace.trace_id_hex());
    scope(trace, tracing::Instrument::instrument(next.run(request), span)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_a_child_keeps_the_trace() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).unwrap();
        assert_eq!(parsed.to_string(), text);
        let child = parsed.child();
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_ne!(child.span_id, parsed.span_id);
        assert_eq!(TraceParent::parse(&TraceParent::root().to_string()).map(|t| t.flags), Some(1));
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version may add fields; its first four are read.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later").is_some()
        );
    }

    #[tokio::test]
    async fn current_answers_inside_a_scope_only() {
        assert_eq!(current(), None);
        let trace = TraceParent::root();
        assert_eq!(scope(trace, async { current() }).await, Some(trace));
    }
}
