//! Dead letters: the events a consumer gave up on, and what an operator does with them.
//!
//! A consumer whose handler fails an event `max_attempts` times sets it aside with the last
//! error and the number of attempts, and moves on. An operator can then, on either bus:
//!
//! - **list** and **inspect** them ([`Bus::dead_letters`]): the decoded envelope (type, publish
//!   time, trace, schema version, payload), the error, the attempts;
//! - **replay** one or all ([`Bus::replay_dead_letters`]): the event goes back to its consumer,
//!   whose inbox makes a replay of an event already applied change nothing;
//! - **discard** one with a reason ([`Bus::discard_dead_letter`]), logged with the event.
//!
//! On the embedded log a dead letter is a row; a replay marks it and announces itself in the log
//! ([`REPLAY_ASKED`]), and the consumer takes it when it reads that far, in whichever process it
//! runs (or when it starts); a discarded row
//! is kept with its reason and no longer listed. On RabbitMQ a dead letter is a message in the
//! consumer's `<queue>.dead`: the consumer puts it there itself on the last attempt, with the
//! error in its headers (the broker's delivery limit stays as the backstop for a consumer that
//! dies on an event, and those say so); a replay publishes it to the consumer's queue again, a
//! discard acknowledges it away. [`admin_routes`] serves all of this on the admin listener.

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sqlx::Row;

use super::{Bus, Event, EventLog, RabbitBus};
use crate::clock::now_ms;

/// An event a consumer gave up on.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub consumer: String,
    pub event: Event,
    /// What the last attempt failed with.
    pub error: String,
    /// How many times the consumer tried it since it was published, or last replayed.
    pub attempts: u32,
    /// When it was set aside (ms since the epoch), where the bus knows.
    pub dead_at_ms: Option<i64>,
    /// A replay was asked for and its consumer has not taken it yet (the embedded log only: on
    /// RabbitMQ a replayed event is back in the consumer's queue at once).
    pub replay_pending: bool,
}

/// Renders an event's payload for a person, given its type and bytes (`None`: not a type it
/// knows). The process that serves the services knows their payload types; platform does not.
pub type Describe = fn(&str, &[u8]) -> Option<String>;

impl DeadLetter {
    /// The dead letter for a person: the envelope decoded, the payload as `describe` renders it.
    pub fn to_json(&self, describe: Describe) -> serde_json::Value {
        use prost::Message;
        let envelope = bookstore_api::orders::v1::EventEnvelope::decode(self.event.body.as_slice()).ok();
        let envelope = envelope.map(|e| {
            serde_json::json!({
                "published_at_ms": e.time.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000),
                "traceparent": e.traceparent,
                "schema_version": e.schema_version,
                "payload_bytes": e.payload.len(),
                "payload": describe(&e.r#type, &e.payload),
            })
        });
        serde_json::json!({
            "consumer": self.consumer,
            "id": self.event.id,
            "type": self.event.event_type,
            "error": self.error,
            "attempts": self.attempts,
            "dead_at_ms": self.dead_at_ms,
            "replay_pending": self.replay_pending,
            // `null`: the body is not an event envelope (which may be why it failed).
            "envelope": envelope,
        })
    }
}

/// Why an operator discards a dead letter: 1 to 500 characters, not all blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscardReason(String);

impl DiscardReason {
    pub const MAX_CHARS: usize = 500;

    pub fn parse(reason: &str) -> Result<Self, String> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err("a discard needs a reason".into());
        }
        if reason.chars().count() > Self::MAX_CHARS {
            return Err(format!("a reason is at most {} characters", Self::MAX_CHARS));
        }
        Ok(Self(reason.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which dead letters of a consumer a replay takes.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    One(&'a str),
    All,
}

impl Which<'_> {
    fn takes(&self, id: &str) -> bool {
        match self {
            Which::One(wanted) => *wanted == id,
            Which::All => true,
        }
    }
}

impl Bus {
    /// `consumer`'s dead letters, oldest first.
    pub async fn dead_letters(&self, consumer: &str) -> anyhow::Result<Vec<DeadLetter>> {
        match self {
            Bus::Log(log) => log.dead_letters(consumer).await,
            Bus::Rabbit(rabbit) => rabbit.dead_letters(consumer).await,
        }
    }

    /// Sends `which` of `consumer`'s dead letters back to it; the ids sent. The consumer's inbox
    /// keeps a replay of an event it applied before from having a second effect; one that fails
    /// again `max_attempts` times is a dead letter again, with the new error.
    pub async fn replay_dead_letters(&self, consumer: &str, which: Which<'_>) -> anyhow::Result<Vec<String>> {
        let replayed = match self {
            Bus::Log(log) => log.replay_dead_letters(consumer, which).await,
            Bus::Rabbit(rabbit) => rabbit.replay_dead_letters(consumer, which).await,
        }?;
        for id in &replayed {
            tracing::info!(consumer, event = %id, "dead letter replayed");
        }
        Ok(replayed)
    }

    /// Discards `consumer`'s dead letter `id` for `reason`; the dead letter, or `None` when
    /// there was none with that id. The reason is logged with the event.
    pub async fn discard_dead_letter(
        &self,
        consumer: &str,
        id: &str,
        reason: &DiscardReason,
    ) -> anyhow::Result<Option<DeadLetter>> {
        let discarded = match self {
            Bus::Log(log) => log.discard_dead_letter(consumer, id, reason).await,
            Bus::Rabbit(rabbit) => rabbit.discard_dead_letter(consumer, id).await,
        }?;
        if let Some(dead) = &discarded {
            tracing::warn!(
                consumer,
                event = %id,
                event_type = %dead.event.event_type,
                error = %dead.error,
                reason = reason.as_str(),
                "dead letter discarded"
            );
        }
        Ok(discarded)
    }
}

impl EventLog {
    pub(crate) async fn dead_letters(&self, consumer: &str) -> anyhow::Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT d.id, l.event_type, l.body, d.error, d.attempts, d.created_at, d.replay_requested_at \
             FROM event_dead_letters d JOIN event_log l ON l.seq = d.seq \
             WHERE d.consumer = $1 AND d.discarded_at IS NULL ORDER BY d.seq",
        )
        .bind(consumer)
        .fetch_all(self.db.pool())
        .await
        .context("reading dead letters")?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    consumer: consumer.to_owned(),
                    event: Event { id: row.try_get(0)?, event_type: row.try_get(1)?, body: row.try_get(2)? },
                    error: row.try_get(3)?,
                    attempts: u32::try_from(row.try_get::<i64, _>(4)?).unwrap_or(0),
                    dead_at_ms: Some(row.try_get(5)?),
                    replay_pending: row.try_get::<Option<i64>, _>(6)?.is_some(),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("reading dead letters")
    }

    async fn replay_dead_letters(&self, consumer: &str, which: Which<'_>) -> anyhow::Result<Vec<String>> {
        let mut tx = self.db.begin_write().await.context("starting a replay")?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM event_dead_letters WHERE consumer = $1 AND discarded_at IS NULL ORDER BY seq",
        )
        .bind(consumer)
        .fetch_all(&mut *tx)
        .await
        .context("reading dead letters")?;
        let ids: Vec<String> = ids.into_iter().filter(|id| which.takes(id)).collect();
        for id in &ids {
            sqlx::query(
                "UPDATE event_dead_letters SET replay_requested_at = $3 WHERE consumer = $1 AND id = $2 \
                 AND discarded_at IS NULL",
            )
            .bind(consumer)
            .bind(id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .context("asking for a replay")?;
        }
        if !ids.is_empty() {
            // Announced in the log, which the consumer reads anyway: it takes the replays when
            // it reaches this entry, in whichever process it runs.
            sqlx::query("INSERT INTO event_log (id, event_type, body, created_at) VALUES ($1, $2, $3, $4)")
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(REPLAY_ASKED)
                .bind(consumer.as_bytes().to_vec())
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .context("announcing a replay")?;
        }
        tx.commit().await.context("asking for a replay")?;
        self.appended.notify_waiters();
        Ok(ids)
    }

    async fn discard_dead_letter(
        &self,
        consumer: &str,
        id: &str,
        reason: &DiscardReason,
    ) -> anyhow::Result<Option<DeadLetter>> {
        let Some(dead) = self.dead_letters(consumer).await?.into_iter().find(|d| d.event.id == id) else {
            return Ok(None);
        };
        let done = sqlx::query(
            "UPDATE event_dead_letters SET discarded_at = $3, discard_reason = $4, replay_requested_at = NULL \
             WHERE consumer = $1 AND id = $2 AND discarded_at IS NULL",
        )
        .bind(consumer)
        .bind(id)
        .bind(now_ms())
        .bind(reason.as_str())
        .execute(self.db.pool())
        .await
        .context("discarding a dead letter")?;
        Ok((done.rows_affected() > 0).then_some(dead))
    }

    /// Runs the replays asked for `consumer` through `handler`: a success removes the dead
    /// letter; another failure leaves it dead with the new error and the new attempts.
    pub(super) async fn take_replays<F, Fut>(&self, consumer: &str, handler: &F) -> anyhow::Result<()>
    where
        F: Fn(Event) -> Fut + Send + Sync,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
    {
        let rows = sqlx::query(
            "SELECT d.seq, l.id, l.event_type, l.body FROM event_dead_letters d \
             JOIN event_log l ON l.seq = d.seq \
             WHERE d.consumer = $1 AND d.replay_requested_at IS NOT NULL AND d.discarded_at IS NULL \
             ORDER BY d.seq",
        )
        .bind(consumer)
        .fetch_all(self.db.pool())
        .await
        .context("reading the replays asked for")?;
        for row in rows {
            let seq: i64 = row.try_get(0)?;
            let event = Event { id: row.try_get(1)?, event_type: row.try_get(2)?, body: row.try_get(3)? };
            match self.attempt(consumer, handler, &event).await? {
                Ok(()) => {
                    sqlx::query("DELETE FROM event_dead_letters WHERE consumer = $1 AND seq = $2")
                        .bind(consumer)
                        .bind(seq)
                        .execute(self.db.pool())
                        .await
                        .context("removing a replayed dead letter")?;
                    tracing::info!(consumer, event = %event.id, "replayed dead letter applied");
                }
                Err((attempts, error)) => {
                    tracing::warn!(consumer, event = %event.id, error = %error, "replayed dead letter failed again");
                    sqlx::query(
                        "UPDATE event_dead_letters SET replay_requested_at = NULL, error = $3, \
                         attempts = $4, created_at = $5 WHERE consumer = $1 AND seq = $2",
                    )
                    .bind(consumer)
                    .bind(seq)
                    .bind(error)
                    .bind(i64::from(attempts))
                    .bind(now_ms())
                    .execute(self.db.pool())
                    .await
                    .context("keeping a replayed dead letter")?;
                }
            }
        }
        Ok(())
    }
}

/// The event type of a log entry that tells a consumer (named in its body) to take the replays
/// asked for it. Consumers pass it over; no handler ever sees one.
pub const REPLAY_ASKED: &str = "bookstore.DeadLetterReplayAsked";

/// Headers a dead letter carries on RabbitMQ.
const ERROR_HEADER: &str = "x-bookstore-error";
const ATTEMPTS_HEADER: &str = "x-bookstore-attempts";
const DEAD_AT_HEADER: &str = "x-bookstore-dead-at";
/// How long an error kept in a header may be (headers travel with every copy).
const ERROR_HEADER_MAX: usize = 2000;

/// The headers a consumer puts on an event it gives up on.
pub(super) fn dead_headers(error: &str, attempts: u32) -> lapin::types::FieldTable {
    use lapin::types::{AMQPValue, FieldTable};
    let error: String = error.chars().take(ERROR_HEADER_MAX).collect();
    let mut headers = FieldTable::default();
    headers.insert(ERROR_HEADER.into(), AMQPValue::LongString(error.into()));
    headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(i64::from(attempts)));
    headers.insert(DEAD_AT_HEADER.into(), AMQPValue::LongLongInt(now_ms()));
    headers
}

/// A whole number from a header, whichever integer type the broker wrote it as.
pub(super) fn header_number(headers: &lapin::types::FieldTable, name: &str) -> Option<i64> {
    use lapin::types::AMQPValue;
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// A dead letter as the message in `<queue>.dead` holds it.
fn dead_letter_of(consumer: &str, delivery: &lapin::message::Delivery) -> DeadLetter {
    use lapin::types::AMQPValue;
    let event = super::rabbit::event_of(delivery);
    let empty = lapin::types::FieldTable::default();
    let headers = delivery.properties.headers().as_ref().unwrap_or(&empty);
    let error = match headers.inner().get(ERROR_HEADER) {
        Some(AMQPValue::LongString(error)) => error.to_string(),
        // Set aside by the broker: delivered its limit of times and never acknowledged.
        _ => "delivered the broker's limit of times without an acknowledgement: the consumer \
              stopped or lost its connection while handling it"
            .to_owned(),
    };
    let attempts = header_number(headers, ATTEMPTS_HEADER)
        .or_else(|| header_number(headers, "x-delivery-count").map(|n| n + 1))
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    DeadLetter {
        consumer: consumer.to_owned(),
        event,
        error,
        attempts,
        dead_at_ms: header_number(headers, DEAD_AT_HEADER),
        replay_pending: false,
    }
}

/// The most dead letters one look at `<queue>.dead` takes in hand.
const MAX_DEAD_IN_HAND: usize = 10_000;

/// The messages of a consumer's dead-letter queue, taken in hand unacknowledged: those
/// acknowledged are gone, and closing the connection puts the rest back, in their order.
struct InHand {
    conn: lapin::Connection,
    channel: lapin::Channel,
    messages: Vec<lapin::message::BasicGetMessage>,
}

impl InHand {
    async fn close(self) {
        self.conn.close(200, "done".into()).await.ok();
    }
}

impl RabbitBus {
    async fn dead_in_hand(&self, consumer: &str) -> anyhow::Result<InHand> {
        use lapin::options::{BasicGetOptions, ConfirmSelectOptions};
        let (conn, channel) = self.open().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.context("enabling confirms")?;
        let queue = format!("{}.dead", self.queue(consumer));
        let mut messages = Vec::new();
        while messages.len() < MAX_DEAD_IN_HAND {
            match channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .context("reading dead letters")?
            {
                Some(message) => messages.push(message),
                None => break,
            }
        }
        Ok(InHand { conn, channel, messages })
    }

    pub(crate) async fn dead_letters(&self, consumer: &str) -> anyhow::Result<Vec<DeadLetter>> {
        self.within("reading dead letters", async {
            let hand = self.dead_in_hand(consumer).await?;
            let dead = hand.messages.iter().map(|m| dead_letter_of(consumer, &m.delivery)).collect();
            hand.close().await;
            Ok(dead)
        })
        .await
    }

    async fn replay_dead_letters(&self, consumer: &str, which: Which<'_>) -> anyhow::Result<Vec<String>> {
        use lapin::options::{BasicAckOptions, BasicPublishOptions};
        let queue = self.queue(consumer);
        self.within("replaying dead letters", async {
            let hand = self.dead_in_hand(consumer).await?;
            let mut replayed = Vec::new();
            for message in &hand.messages {
                let event = super::rabbit::event_of(&message.delivery);
                if !which.takes(&event.id) {
                    continue;
                }
                // Straight to the consumer's queue (the default exchange routes by queue name),
                // as a new message: its deliveries count from zero again.
                let properties = message
                    .delivery
                    .properties
                    .clone()
                    .with_headers(Default::default())
                    .with_type(event.event_type.as_str().into())
                    .with_delivery_mode(2);
                let confirm = hand
                    .channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &message.delivery.data,
                        properties,
                    )
                    .await
                    .context("replaying a dead letter")?;
                anyhow::ensure!(
                    confirm.await.context("replaying a dead letter")?.is_ack(),
                    "the broker refused a replayed event"
                );
                message.delivery.acker.ack(BasicAckOptions::default()).await.context("acknowledging")?;
                replayed.push(event.id);
            }
            hand.close().await;
            Ok(replayed)
        })
        .await
    }

    async fn discard_dead_letter(&self, consumer: &str, id: &str) -> anyhow::Result<Option<DeadLetter>> {
        use lapin::options::BasicAckOptions;
        self.within("discarding a dead letter", async {
            let hand = self.dead_in_hand(consumer).await?;
            let mut found = None;
            for message in &hand.messages {
                let dead = dead_letter_of(consumer, &message.delivery);
                if dead.event.id == id {
                    message.delivery.acker.ack(BasicAckOptions::default()).await.context("discarding")?;
                    found = Some(dead);
                    break;
                }
            }
            hand.close().await;
            Ok(found)
        })
        .await
    }
}

/// What the admin routes need: the bus, the consumers of this process's services, a verifier
/// for the operator's token, how to show payloads, and where replays and discards are recorded.
#[derive(Clone)]
pub struct DeadLetterAdmin {
    pub bus: Bus,
    pub consumers: Vec<&'static str>,
    pub verifier: Arc<crate::auth::Verifier>,
    pub describe: Describe,
    pub audit: Option<AuditSink>,
}

/// An admin's action on the admin listener, for the deployment's audit trail.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// The admin's token: the audit trail reads who from it.
    pub token: String,
    /// `METHOD /route/{template}`.
    pub action: String,
    pub target: String,
    pub status: u16,
    pub request_id: String,
    pub address: String,
}

/// Appends an [`AuditRecord`] to the audit trail (the users service's).
pub type AuditSink = Arc<
    dyn Fn(AuditRecord) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>
        + Send
        + Sync,
>;

/// Records a replay or a discard an admin asked for (a route layer: it knows the route). A
/// call without a valid admin token changed nothing and is not recorded.
async fn record(
    State(admin): State<Arc<DeadLetterAdmin>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(sink) = admin.audit.clone() else { return next.run(request).await };
    let token = crate::auth::bearer(request.headers()).map(str::to_owned);
    let route = request.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_owned());
    let action = format!("{} {}", request.method(), route.unwrap_or_default());
    let target = request.uri().path().to_owned();
    let address = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    // The caller's request id, or an error's, or one of our own.
    let asked = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let response = next.run(request).await;
    let status = response.status();
    if let (Some(token), false) = (token, matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN))
    {
        let answered =
            response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let request_id = asked.or(answered).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let entry = AuditRecord { token, action, target, status: status.as_u16(), request_id, address };
        if let Err(e) = sink(entry.clone()).await {
            tracing::error!(action = entry.action, target = entry.target, status = entry.status, error = %format!("{e:#}"), "audit entry not recorded");
        }
    }
    response
}

/// The dead letters of this process's consumers, for admins (a bearer token with the admin
/// role), on the admin listener:
/// - `GET /dead-letters`: every consumer's, with the envelopes decoded;
/// - `GET /dead-letters/{consumer}/{id}`: one;
/// - `POST /dead-letters/{consumer}/{id}/replay`, `POST /dead-letters/{consumer}/replay`: one,
///   or all of a consumer's, back to it;
/// - `POST /dead-letters/{consumer}/{id}/discard` with `{"reason": "..."}`.
///
/// Errors are in the API's envelope: `{"code", "message", "request_id"}`. Replays and discards
/// are recorded in the audit trail ([`DeadLetterAdmin::audit`]) with the admin's token.
pub fn admin_routes(admin: DeadLetterAdmin) -> Router {
    let admin = Arc::new(admin);
    // Replays and discards go to the audit trail, when the process has one to write to.
    let changes = Router::new()
        .route("/dead-letters/{consumer}/replay", post(replay_all))
        .route("/dead-letters/{consumer}/{id}/replay", post(replay_one))
        .route("/dead-letters/{consumer}/{id}/discard", post(discard))
        .route_layer(axum::middleware::from_fn_with_state(admin.clone(), record));
    Router::new()
        .route("/dead-letters", get(list))
        .route("/dead-letters/{consumer}/{id}", get(show))
        .merge(changes)
        .with_state(admin)
}

/// An error of the admin routes, in the API's envelope.
struct AdminError(StatusCode, &'static str, String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let AdminError(status, code, message) = self;
        let request_id = uuid::Uuid::now_v7().to_string();
        let body = serde_json::json!({ "code": code, "message": message, "request_id": request_id });
        (status, [("x-request-id", request_id)], axum::Json(body)).into_response()
    }
}

impl From<anyhow::Error> for AdminError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!(error = %format!("{e:#}"), "a dead-letter operation failed");
        AdminError(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", format!("the bus did not answer: {e:#}"))
    }
}

impl DeadLetterAdmin {
    /// The caller, when an admin; the consumer, when this process runs it.
    async fn check(&self, headers: &HeaderMap, consumer: Option<&str>) -> Result<(), AdminError> {
        let Some(token) = crate::auth::bearer(headers) else {
            return Err(AdminError(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "an admin's bearer token is needed".into(),
            ));
        };
        let identity = self
            .verifier
            .verify(token)
            .await
            .map_err(|e| AdminError(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", e.to_string()))?;
        if !identity.is_admin() {
            return Err(AdminError(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "dead letters are for admins".into(),
            ));
        }
        if let Some(consumer) = consumer
            && !self.consumers.contains(&consumer)
        {
            return Err(AdminError(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!("no consumer {consumer:?} in this process (it has {:?})", self.consumers),
            ));
        }
        Ok(())
    }
}

async fn list(State(admin): State<Arc<DeadLetterAdmin>>, headers: HeaderMap) -> Result<Response, AdminError> {
    admin.check(&headers, None).await?;
    let mut consumers = Vec::new();
    for consumer in &admin.consumers {
        let letters = admin.bus.dead_letters(consumer).await?;
        let letters: Vec<_> = letters.iter().map(|d| d.to_json(admin.describe)).collect();
        consumers.push(
            serde_json::json!({ "consumer": consumer, "count": letters.len(), "dead_letters": letters }),
        );
    }
    Ok(axum::Json(serde_json::json!({ "consumers": consumers })).into_response())
}

async fn show(
    State(admin): State<Arc<DeadLetterAdmin>>,
    Path((consumer, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    admin.check(&headers, Some(&consumer)).await?;
    match admin.bus.dead_letters(&consumer).await?.into_iter().find(|d| d.event.id == id) {
        Some(dead) => Ok(axum::Json(dead.to_json(admin.describe)).into_response()),
        None => Err(no_such(&consumer, &id)),
    }
}

fn no_such(consumer: &str, id: &str) -> AdminError {
    AdminError(StatusCode::NOT_FOUND, "NOT_FOUND", format!("{consumer} has no dead letter {id:?}"))
}

async fn replay_one(
    State(admin): State<Arc<DeadLetterAdmin>>,
    Path((consumer, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    admin.check(&headers, Some(&consumer)).await?;
    let replayed = admin.bus.replay_dead_letters(&consumer, Which::One(&id)).await?;
    if replayed.is_empty() {
        return Err(no_such(&consumer, &id));
    }
    Ok(axum::Json(serde_json::json!({ "replayed": replayed })).into_response())
}

async fn replay_all(
    State(admin): State<Arc<DeadLetterAdmin>>,
    Path(consumer): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    admin.check(&headers, Some(&consumer)).await?;
    let replayed = admin.bus.replay_dead_letters(&consumer, Which::All).await?;
    Ok(axum::Json(serde_json::json!({ "replayed": replayed })).into_response())
}

#[derive(serde::Deserialize)]
struct DiscardBody {
    reason: String,
}

async fn discard(
    State(admin): State<Arc<DeadLetterAdmin>>,
    Path((consumer, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AdminError> {
    admin.check(&headers, Some(&consumer)).await?;
    let body: DiscardBody = serde_json::from_slice(&body).map_err(|e| {
        AdminError(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            format!("expected {{\"reason\": \"...\"}}: {e}"),
        )
    })?;
    let reason = DiscardReason::parse(&body.reason)
        .map_err(|e| AdminError(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", e))?;
    match admin.bus.discard_dead_letter(&consumer, &id, &reason).await? {
        Some(dead) => {
            Ok(axum::Json(serde_json::json!({ "discarded": dead.event.id, "reason": reason.as_str() }))
                .into_response())
        }
        None => Err(no_such(&consumer, &id)),
    }
}
