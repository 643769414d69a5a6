//! `GET /api/v1/fulfillment/queue/ws`: the work queue, live, over a WebSocket.
//!
//! - The first message authenticates (tokens never go in the URL):
//!   `{"type": "auth", "token": "<access token>"}`, within 10 s. The shop's own staff page opens
//!   the socket at `/staff/queue/ws` instead, where the browser's session cookie has already
//!   said who is calling (`gateway::web::session`): its first message is `{"type": "auth"}`,
//!   without a token (which its scripts never see). A token that does not verify
//!   closes the socket with 4401, a customer's with 4403, one socket too many of a user (`queue_sockets_per_user`, 5) with 4429,
//!   anything else first with 4400. The socket closes (4401) when the token expires.
//! - Server → client: `{"type": "snapshot", "seq", "tasks"}` first, then each change as
//!   fulfillment commits it, in sequence order: `{"type": "task_added" | "task_moved" |
//!   "task_updated" | "task_removed", "seq", "task"}`.
//! - Client → server: `move` (`task_id`, `position`, `version`), `claim`, `advance` (`task_id`,
//!   `version`), `remove` (`task_id`, `version`, `reason`), each with a `request_id` of the
//!   client's, answered `{"type": "ack", "request_id", "seq"}` or `{"type": "error",
//!   "request_id", "code", "message"}` (the REST error codes).
//! - Pings every 20 s; a socket silent for 60 s is closed. Nothing is buffered without bound: a
//!   client that does not read within 10 s is disconnected (1008), and one that falls more
//!   than fulfillment's backlog behind gets 1013 and reconnects to a fresh snapshot.
//!
//! The changes come from fulfillment's `WatchQueue` stream, called with the client's token, so
//! fulfillment checks the caller as it does for every call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bookstore_api::fulfillment::v1 as pb;
use bookstore_platform::auth::{Role, Verifier};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::auth::{Auth, Caller};
use crate::error::ApiError;
use crate::fulfillment::Task;

/// How long a client has to send its `auth` message.
pub const AUTH_WITHIN: Duration = Duration::from_secs(10);
/// How long a message to the client may wait for the client to read.
pub const SEND_WITHIN: Duration = Duration::from_secs(10);
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// A socket that sent nothing (not even a pong) for this long is closed.
pub const IDLE_AFTER: Duration = Duration::from_secs(60);
/// Open live connections (sockets and order streams) per user, unless `queue_sockets_per_user` says otherwise.
pub const SOCKETS_PER_USER: usize = 5;

/// What the live endpoint needs besides the clients: who may connect, and how many each has.
pub struct Live {
    verifier: Arc<Verifier>,
    open: Mutex<HashMap<String, usize>>,
    per_user: usize,
    /// Pages of other origins that may open a socket (`cors_allowed_origins`).
    origins: Vec<String>,
}

impl Live {
    /// Sockets verified by `verifier`, at most `per_user` of one user at once, opened by pages
    /// of the gateway's own origin or of `origins`.
    pub fn new(verifier: Arc<Verifier>, per_user: usize, origins: Vec<String>) -> Self {
        Self { verifier, open: Mutex::default(), per_user, origins }
    }

    /// A place for one more socket (or order stream) of `subject`, given back when the guard drops.
    pub(crate) fn admit(self: &Arc<Self>, subject: &str) -> Option<SocketGuard> {
        let mut open = self.open.lock().expect("sockets lock");
        let count = open.entry(subject.to_owned()).or_default();
        if *count >= self.per_user {
            return None;
        }
        *count += 1;
        Some(SocketGuard { live: self.clone(), subject: subject.to_owned() })
    }
}

pub(crate) struct SocketGuard {
    live: Arc<Live>,
    subject: String,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let mut open = self.live.open.lock().expect("sockets lock");
        if let Some(count) = open.get_mut(&self.subject) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.subject);
            }
        }
    }
}

/// What a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Incoming {
    Auth {
        /// Absent when the upgrade itself was authenticated (the pages' session cookie).
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        last_seq: Option<i64>,
    },
    Move {
        request_id: String,
        task_id: String,
        position: i32,
        version: i64,
    },
    Claim {
        request_id: String,
        task_id: String,
        version: i64,
    },
    Advance {
        request_id: String,
        task_id: String,
        version: i64,
    },
    Remove {
        request_id: String,
        task_id: String,
        version: i64,
        reason: String,
    },
}

/// Whether a page of `origin` may open a socket to the gateway at `host`: its own origin, or
/// one of `allowed`. WebSockets are not subject to CORS, so without this any site a user visits
/// could open one.
pub(crate) fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    let own = host.is_some_and(|host| {
        origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://")) == Some(host)
    });
    own || allowed.iter().any(|allowed| allowed == origin)
}

/// The upgrade; the socket is served by [`serve`]. A browser's socket from a page of another
/// origin than the gateway's own or the configured ones is refused (403) before it opens;
/// clients that are not browsers send no `Origin`.
pub async fn queue_socket(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    auth: Auth,
    address: crate::audit::ClientAddress,
    upgrade: WebSocketUpgrade,
) -> Response {
    use axum::http::header::{HOST, ORIGIN};
    use axum::response::IntoResponse;
    // A browser always sends its page's origin on a socket's upgrade, so this check also keeps
    // other sites from opening one with the visitor's session cookie.
    if let Some(origin) = headers.get(ORIGIN) {
        let host = headers.get(HOST).and_then(|h| h.to_str().ok());
        if !origin.to_str().is_ok_and(|origin| origin_allowed(origin, host, &state.live.origins)) {
            let refusal = ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                crate::error::ErrorCode::PermissionDenied,
                "sockets are opened from the shop's own pages or an allowed origin",
            );
            return refusal.into_response();
        }
    }
    upgrade.max_message_size(64 * 1024).on_upgrade(move |socket| serve(state, socket, auth.0, address.0))
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }))
}

async fn serve(state: AppState, mut socket: WebSocket, known: Option<Caller>, address: String) {
    let (caller, last_seq) = match authenticate(&state, &mut socket, known).await {
        Ok(caller) => caller,
        Err(refusal) => {
            let _ = tokio::time::timeout(SEND_WITHIN, socket.send(refusal)).await;
            return;
        }
    };
    let Some(_guard) = state.live.admit(&caller.identity.subject) else {
        let _ = tokio::time::timeout(SEND_WITHIN, socket.send(close(4429, "too many sockets"))).await;
        return;
    };
    let subject = caller.identity.subject.clone();
    let open = metrics::gauge!("websocket_connections", "service" => "gateway", "socket" => "queue");
    open.increment(1.0);
    let outcome = stream(&state, socket, caller, last_seq, &address).await;
    open.decrement(1.0);
    tracing::debug!(subject, ?outcome, "queue socket ended");
}

/// How long until `identity`'s token expires (zero if it has).
pub(crate) fn until_expiry(identity: &bookstore_platform::auth::Identity) -> Duration {
    let expires = std::time::UNIX_EPOCH + Duration::from_secs(identity.expires_at);
    expires.duration_since(std::time::SystemTime::now()).unwrap_or_default()
}

/// The first message: a token that verifies, of staff or an admin; or, when the upgrade already
/// named the caller (`known`), no token.
async fn authenticate(
    state: &AppState,
    socket: &mut WebSocket,
    known: Option<Caller>,
) -> Result<(Caller, Option<i64>), Message> {
    let first = tokio::time::timeout(AUTH_WITHIN, socket.recv()).await;
    let Ok(Some(Ok(Message::Text(text)))) = first else {
        return Err(close(4400, "the first message must be {\"type\": \"auth\", \"token\": ...}"));
    };
    let Ok(Incoming::Auth { token, last_seq }) = serde_json::from_str::<Incoming>(&text) else {
        return Err(close(4400, "the first message must be {\"type\": \"auth\", \"token\": ...}"));
    };
    let caller = match (token, known) {
        (Some(token), _) => {
            let identity = state
                .live
                .verifier
                .verify(&token)
                .await
                .map_err(|_| close(4401, "the token does not verify"))?;
            Caller { identity, token }
        }
        (None, Some(known)) => known,
        (None, None) => return Err(close(4401, "no token, and the upgrade was not signed in")),
    };
    if !caller.identity.has_any(&[Role::Staff, Role::Admin]) {
        return Err(close(4403, "the queue is for staff"));
    }
    Ok((caller, last_seq))
}

/// Relays fulfillment's changes to the client and the client's actions to fulfillment, until
/// either side ends, the token expires, or the client stops reading or answering.
async fn stream(
    state: &AppState,
    socket: WebSocket,
    caller: Caller,
    last_seq: Option<i64>,
    address: &str,
) -> anyhow::Result<()> {
    let until_expiry = until_expiry(&caller.identity);
    // The client's token goes with every call to fulfillment, as on the REST endpoints.
    let auth = &Auth(Some(caller));
    let (mut to_client, mut from_client) = socket.split();
    // No deadline: the stream lives as long as the socket.
    let mut request = tonic::Request::new(pb::WatchQueueRequest { last_seq });
    auth.attach(&mut request);
    let mut changes = match state.fulfillment.clone().watch_queue(request).await {
        Ok(stream) => stream.into_inner(),
        Err(status) => {
            let _ =
                to_client.send(close(1011, &format!("the queue is unavailable: {}", status.message()))).await;
            return Ok(());
        }
    };
    let expiry = tokio::time::sleep(until_expiry);
    tokio::pin!(expiry);
    // The first ping after a period, not at once (before the snapshot).
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut heard = tokio::time::Instant::now();
    let [received, sent] = ["in", "out"].map(|direction| {
        metrics::counter!("websocket_messages_total", "service" => "gateway", "socket" => "queue", "direction" => direction)
    });
    loop {
        let outgoing = tokio::select! {
            () = &mut expiry => close(4401, "the token expired"),
            _ = pings.tick() => {
                if heard.elapsed() > IDLE_AFTER {
                    close(1001, "no answer to pings")
                } else {
                    Message::Ping(Default::default())
                }
            }
            event = changes.next() => match event {
                Some(Ok(event)) => Message::Text(queue_event(event).to_string().into()),
                Some(Err(status)) if status.code() == tonic::Code::ResourceExhausted => {
                    close(1013, "fell behind; connect again for a fresh snapshot")
                }
                Some(Err(status)) => close(1011, &format!("the queue stream ended: {}", status.message())),
                None => close(1012, "the queue stream ended; connect again"),
            },
            message = from_client.next() => {
                heard = tokio::time::Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) => {
                        received.increment(1);
                        let span = bookstore_platform::trace::message_span("gateway", "queue");
                        let answer = tracing::Instrument::instrument(act(state, auth, &text, address), span).await;
                        Message::Text(answer.to_string().into())
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                    Some(Ok(_)) => continue, // pongs, pings (answered by the library), binary
                }
            }
        };
        let closing = matches!(outgoing, Message::Close(_));
        if matches!(outgoing, Message::Text(_)) {
            sent.increment(1);
        }
        match tokio::time::timeout(SEND_WITHIN, to_client.send(outgoing)).await {
            Ok(Ok(())) if !closing => {}
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                // The client is not reading: drop it rather than buffer for it.
                let _ = tokio::time::timeout(Duration::from_secs(1), to_client.send(close(1008, "too slow")))
                    .await;
                return Ok(());
            }
        }
    }
}

fn queue_event(event: pb::QueueEvent) -> serde_json::Value {
    match event.event {
        Some(pb::queue_event::Event::Snapshot(queue)) => json!({
            "type": "snapshot",
            "seq": queue.seq,
            "tasks": queue.tasks.into_iter().map(Task::from).collect::<Vec<_>>(),
        }),
        Some(pb::queue_event::Event::Change(change)) => json!({
            "type": change.kind,
            "seq": change.seq,
            "task": change.task.map(Task::from),
        }),
        None => json!({"type": "unknown"}),
    }
}

/// Carries out one client message, recorded in the audit trail; the ack or error to send back.
async fn act(state: &AppState, auth: &Auth, text: &str, address: &str) -> serde_json::Value {
    let incoming = match serde_json::from_str::<Incoming>(text) {
        Ok(incoming) => incoming,
        Err(e) => {
            return json!({"type": "error", "code": "INVALID_ARGUMENT", "message": format!("unreadable message: {e}")});
        }
    };
    let (kind, task) = match &incoming {
        Incoming::Auth { .. } => ("auth", String::new()),
        Incoming::Move { task_id, .. } => ("move", task_id.clone()),
        Incoming::Claim { task_id, .. } => ("claim", task_id.clone()),
        Incoming::Advance { task_id, .. } => ("advance", task_id.clone()),
        Incoming::Remove { task_id, .. } => ("remove", task_id.clone()),
    };
    let mut fulfillment = state.fulfillment.clone();
    let step = |task_id, version| state.request(pb::TaskRequest { task_id, version }, auth);
    let (request_id, answer) = match incoming {
        Incoming::Auth { .. } => {
            return json!({"type": "error", "code": "INVALID_ARGUMENT", "message": "already authenticated"});
        }
        Incoming::Move { request_id, task_id, position, version } => {
            let message = pb::MoveTaskRequest { task_id, position, version };
            (request_id, fulfillment.move_task(state.request(message, auth)).await)
        }
        Incoming::Claim { request_id, task_id, version } => {
            (request_id, fulfillment.claim_task(step(task_id, version)).await)
        }
        Incoming::Advance { request_id, task_id, version } => {
            (request_id, fulfillment.advance_task(step(task_id, version)).await)
        }
        Incoming::Remove { request_id, task_id, version, reason } => {
            let message = pb::RemoveTaskRequest { task_id, version, reason };
            (request_id, fulfillment.remove_task(state.request(message, auth)).await)
        }
    };
    let (status, reply) = match answer {
        Ok(change) => (200, json!({"type": "ack", "request_id": request_id, "seq": change.into_inner().seq})),
        Err(status) => {
            let error = ApiError::from(status);
            let reply = json!({"type": "error", "request_id": request_id, "code": error.code, "message": error.message});
            (error.status.as_u16(), reply)
        }
    };
    let entry = bookstore_api::users::v1::RecordAuditRequest {
        action: format!("WS {kind}"),
        target: format!("/api/v1/fulfillment/tasks/{task}"),
        status: i32::from(status),
        request_id: request_id.to_string(),
        address: address.to_owned(),
    };
    crate::audit::write(state, auth, entry).await;
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asyncapi() -> serde_json::Value {
        serde_json::from_str(crate::openapi::ASYNCAPI).expect("asyncapi.json is JSON")
    }

    /// The value a local `$ref` (`#/a/b`) points at.
    fn resolve<'a>(doc: &'a serde_json::Value, reference: &str) -> &'a serde_json::Value {
        let pointer = reference.strip_prefix('#').expect("a local reference");
        doc.pointer(pointer).unwrap_or_else(|| panic!("{reference} points at nothing"))
    }

    #[test]
    fn a_socket_opens_from_the_gateways_own_origin_or_an_allowed_one_only() {
        let allowed = ["https://shop.example".to_owned()];
        let host = Some("gateway:8080");
        assert!(origin_allowed("https://shop.example", host, &allowed), "allowed");
        assert!(origin_allowed("http://gateway:8080", host, &allowed), "its own");
        assert!(origin_allowed("https://gateway:8080", host, &allowed), "its own, behind TLS");
        assert!(!origin_allowed("https://evil.example", host, &allowed));
        assert!(!origin_allowed("https://gateway:8080.evil.example", host, &allowed));
        assert!(!origin_allowed("null", None, &allowed));
    }

    #[test]
    fn every_client_message_the_asyncapi_document_shows_is_one_the_socket_reads() {
        let doc = asyncapi();
        let sent = doc.pointer("/operations/actOnTheQueue/messages").unwrap().as_array().unwrap();
        assert_eq!(sent.len(), 5, "auth, move, claim, advance, remove");
        for message in sent {
            let message =
                resolve(&doc, resolve(&doc, message["$ref"].as_str().unwrap())["$ref"].as_str().unwrap());
            let examples = message["examples"].as_array().expect("each client message has an example");
            for example in examples {
                let parsed: Result<Incoming, _> = serde_json::from_value(example["payload"].clone());
                assert!(parsed.is_ok(), "the socket cannot read {}: {parsed:?}", example["payload"]);
            }
        }
    }

    #[test]
    fn every_reference_in_the_asyncapi_document_leads_somewhere() {
        fn refs<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(r)) = map.get("$ref") {
                        out.push(r);
                    }
                    map.values().for_each(|v| refs(v, out));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc = asyncapi();
        assert_eq!(doc["asyncapi"], "3.0.0");
        let mut found = Vec::new();
        refs(&doc, &mut found);
        let openapi = serde_json::to_value(<crate::openapi::ApiDoc as utoipa::OpenApi>::openapi()).unwrap();
        for reference in found {
            if let Some(pointer) = reference.strip_prefix("/api/openapi.json#") {
                assert!(openapi.pointer(pointer).is_some(), "the OpenAPI document has no {pointer}");
            } else {
                resolve(&doc, reference);
            }
        }
    }
}
