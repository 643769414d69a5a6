//! Access tokens that stop working before they expire.
//!
//! Access tokens are verified locally, with no call to users, so a token outlives what it was
//! issued for (a session signed out, a password changed, a role taken away, an account deleted)
//! until its `exp`, up to the access-token lifetime. To close that gap, users publishes
//! `TokensRevoked` through its outbox, in the transaction that ends the sessions, and every
//! process that verifies tokens follows those events on a per-instance subscription
//! ([`follow`]): from a day back when it starts (longer than any access token lives), then as
//! they come. Its [`Verifier`](crate::auth::Verifier) refuses a revoked token on every request
//! from memory: two hash lookups, no network, nothing added to the checkout path.
//!
//! A revocation names a subject and the sessions (`sid`) whose tokens end: signing out ends one
//! session, a password or role change all of the account's, and a deleted or revoked account
//! every token of its subject. Each is held until its `until_ms`, when the last token it could
//! touch has expired anyway.
//!
//! **Caught up at start.** A starting process must not take a token revoked before it started
//! for a good one. So [`follow`] publishes a *checkpoint* of its own once the subscription is in
//! place (a revocation of nobody, already expired, carrying a fresh nonce) and reports
//! [`CaughtUp`] when it reads that checkpoint back: the bus delivers in order, so everything
//! published before it has been applied by then. The process is not ready (`/readyz`) until
//! then, and `up`/`serve` wait for it, briefly, before they report started. Checkpoints of other
//! processes are read and dropped.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use bookstore_api::orders::v1::EventEnvelope;
use bookstore_api::users::v1::TokensRevoked;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::clock::now_ms;
use crate::events::{Bus, Event, StartAt, Subscription};

/// The event's type on the bus.
pub const EVENT: &str = "TokensRevoked";
/// The per-instance subscription every process follows.
pub const SUBSCRIPTION: &str = "revocations";
/// How far back a starting process reads, and how long the bus keeps revocations: longer than
/// the longest access-token lifetime users accepts (a day).
pub const REPLAY: Duration = Duration::from_secs(24 * 3600);
const KEEP: &str = "1D";
/// The schema of the event's payload.
const SCHEMA_VERSION: u32 = 1;

/// The event that ends the tokens of `sessions` of `subject` (every token of `subject` when
/// `sessions` is empty), to be held until `until_ms`.
pub fn event(subject: &str, sessions: &[String], until_ms: i64) -> Event {
    let payload =
        TokensRevoked { subject: subject.to_owned(), sessions: sessions.to_vec(), until_ms }.encode_to_vec();
    crate::events::enveloped(EVENT, payload, SCHEMA_VERSION)
}

/// The revocation in `event`, or `None` for an event of another type.
fn decode(event: &Event) -> anyhow::Result<Option<TokensRevoked>> {
    if event.event_type != EVENT {
        return Ok(None);
    }
    let envelope = EventEnvelope::decode(event.body.as_slice()).context("decoding an envelope")?;
    Ok(Some(TokensRevoked::decode(envelope.payload.as_slice()).context("decoding TokensRevoked")?))
}

/// A process's checkpoint: a revocation of nobody, expired before it is published, so any
/// reader drops it; `nonce` tells the process its own.
fn checkpoint(nonce: &str) -> Event {
    event("", &[nonce.to_owned()], 0)
}

#[derive(Default)]
struct Held {
    /// Session id → until when.
    sessions: HashMap<String, i64>,
    /// Subject → until when: every token of it.
    subjects: HashMap<String, i64>,
    /// When expired entries were last dropped.
    pruned_at: i64,
}

/// What one process holds: the revoked sessions and subjects, each until it no longer matters.
#[derive(Default)]
pub struct Revocations {
    held: RwLock<Held>,
}

impl Revocations {
    /// Whether a token of `subject` in session `sid` is revoked now.
    pub fn revoked(&self, subject: &str, sid: Option<&str>) -> bool {
        let Ok(held) = self.held.read() else { return false };
        if held.sessions.is_empty() && held.subjects.is_empty() {
            return false;
        }
        let now = now_ms();
        let live = |until: Option<&i64>| until.is_some_and(|until| *until > now);
        live(held.subjects.get(subject)) || sid.is_some_and(|sid| live(held.sessions.get(sid)))
    }

    /// Holds `revoked` until its `until_ms` (not at all when that has passed, or when it names
    /// no subject: a checkpoint).
    pub fn hold(&self, revoked: &TokensRevoked) {
        let now = now_ms();
        if revoked.until_ms <= now {
            return;
        }
        let Ok(mut held) = self.held.write() else { return };
        if revoked.sessions.is_empty() {
            let until = held.subjects.entry(revoked.subject.clone()).or_default();
            *until = (*until).max(revoked.until_ms);
        }
        for sid in &revoked.sessions {
            let until = held.sessions.entry(sid.clone()).or_default();
            *until = (*until).max(revoked.until_ms);
        }
        // Dropping what expired costs a scan: at most once a minute.
        if now - held.pruned_at > 60_000 {
            held.sessions.retain(|_, until| *until > now);
            held.subjects.retain(|_, until| *until > now);
            held.pruned_at = now;
        }
    }

    /// Holds what `event` revokes; other events are not for it.
    pub fn apply(&self, event: &Event) -> anyhow::Result<()> {
        if let Some(revoked) = decode(event)? {
            self.apply_revoked(&revoked);
        }
        Ok(())
    }

    fn apply_revoked(&self, revoked: &TokensRevoked) {
        if revoked.subject.is_empty() {
            return;
        }
        tracing::info!(subject = %revoked.subject, sessions = revoked.sessions.len(), "tokens revoked");
        self.hold(revoked);
    }

    /// How many sessions and subjects are held.
    pub fn len(&self) -> usize {
        self.held.read().map_or(0, |h| h.sessions.len() + h.subjects.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a process has read back every revocation published before it started ([`follow`]).
#[derive(Clone, Debug)]
pub struct CaughtUp(tokio::sync::watch::Receiver<bool>);

impl CaughtUp {
    pub fn now(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until caught up, up to `limit`; whether it is.
    pub async fn wait(&self, limit: Duration) -> bool {
        let mut seen = self.0.clone();
        tokio::time::timeout(limit, seen.wait_for(|caught_up| *caught_up)).await.is_ok_and(|r| r.is_ok())
    }
}

/// Follows the revocations on `bus` into `verifier` until `shutdown`: from [`REPLAY`] back, then
/// as they come; every process runs one. The work to run, and a [`CaughtUp`] that turns true once this process's
/// checkpoint was read back.
pub fn follow(
    bus: Bus,
    verifier: Arc<Verifier>,
    shutdown: CancellationToken,
) -> (CaughtUp, impl Future<Output = ()> + Send + 'static) {
    let (caught_up, seen) = tokio::sync::watch::channel(false);
    let work = async move {
        let subscription = Subscription {
            name: SUBSCRIPTION.to_owned(),
            types: vec![EVENT.to_owned()],
            start: StartAt::Since(now_ms() - REPLAY.as_millis() as i64),
            keep: KEEP,
        };
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        // Published once the subscription is in place, so the bus keeps it for this reader;
        // tried again while the bus is away.
        let mark = async {
            let mut pause = Duration::from_millis(100);
            loop {
                let marked = async {
                    bus.declare_subscription(&subscription).await?;
                    bus.publish(&[checkpoint(&nonce)]).await
                };
                match marked.await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "revocations: checkpoint not published yet")
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => pause = (pause * 2).min(Duration::from_secs(5)),
                    () = shutdown.cancelled() => return,
                }
            }
        };
        let handler = |event: Event, _position: i64| {
            let (verifier, caught_up, nonce) = (verifier.clone(), &caught_up, nonce.as_str());
            async move {
                let Some(revoked) = decode(&event)? else { return Ok(()) };
                if revoked.subject.is_empty() && revoked.sessions.iter().any(|s| s == nonce) {
                    caught_up.send_replace(true);
                }
                verifier.revocations().apply_revoked(&revoked);
                Ok(())
            }
        };
        let (_, read) = tokio::join!(mark, bus.subscribe(&subscription, handler, shutdown.clone()));
        if let Err(e) = read {
            tracing::error!(error = %format!("{e:#}"), "following revocations stopped");
        }
    };
    (CaughtUp(seen), work)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revoked(subject: &str, sessions: &[&str], until_ms: i64) -> TokensRevoked {
        TokensRevoked {
            subject: subject.into(),
            sessions: sessions.iter().map(|s| (*s).to_owned()).collect(),
            until_ms,
        }
    }

    #[test]
    fn a_revoked_session_ends_its_tokens_alone_and_a_revoked_subject_all_of_them() {
        let r = Revocations::default();
        let later = now_ms() + 60_000;
        r.hold(&revoked("ada", &["s1"], later));
        assert!(r.revoked("ada", Some("s1")));
        assert!(!r.revoked("ada", Some("s2")), "another session of the same account");
        assert!(!r.revoked("ada", None));
        r.hold(&revoked("bob", &[], later));
        assert!(r.revoked("bob", Some("any")) && r.revoked("bob", None));
        assert!(!r.revoked("carol", None));
    }

    #[test]
    fn what_no_token_can_outlive_is_not_held() {
        let r = Revocations::default();
        r.hold(&revoked("ada", &["old"], now_ms() - 1));
        assert!(r.is_empty());
        assert!(!r.revoked("ada", Some("old")));
    }

    /// A process that starts after a revocation refuses the token as soon as it reports
    /// caught up (it reads back), and one published while it runs reaches it too.
    async fn refuses_tokens_revoked_before_and_after_it_started(bus: Bus) {
        use crate::auth::{AuthError, Role};
        use crate::testing::TestIssuer;
        let issuer = TestIssuer::new();
        let verifier = issuer.verifier();
        let token = |sid: &str| {
            issuer.sign(&crate::auth::Claims {
                sid: Some(sid.into()),
                ..issuer.claims("ada", &[Role::Customer])
            })
        };
        let until = now_ms() + 60_000;
        // Another process's checkpoint on the bus, before: read and dropped.
        bus.publish(&[checkpoint("someone else's")]).await.unwrap();
        bus.publish(&[event("ada", &["before".into()], until)]).await.unwrap();
        assert!(verifier.verify(&token("before")).await.is_ok(), "not followed yet");

        let stop = CancellationToken::new();
        let (caught_up, work) = follow(bus.clone(), verifier.clone(), stop.clone());
        assert!(!caught_up.now(), "nothing read yet");
        let following = tokio::spawn(work);
        assert!(caught_up.wait(Duration::from_secs(30)).await, "caught up");
        assert!(
            matches!(verifier.verify(&token("before")).await, Err(AuthError::Revoked)),
            "read back by the time it is caught up"
        );
        assert_eq!(verifier.revocations().len(), 1, "checkpoints are not held");

        bus.publish(&[event("ada", &["after".into()], until)]).await.unwrap();
        let mut refused = false;
        for _ in 0..1500 {
            if matches!(verifier.verify(&token("after")).await, Err(AuthError::Revoked)) {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "followed while running");
        assert!(verifier.verify(&token("other")).await.is_ok(), "another session still works");
        stop.cancel();
        following.await.unwrap();
    }

    async fn a_verifier_on_the_log_refuses_tokens_revoked_before_and_after_it_started(
        backend: crate::db::Backend,
    ) {
        let Some(test_db) = crate::testing::TestDatabase::new(backend).await else { return };
        let db = crate::db::Database::connect(&test_db.url, &Default::default()).await.unwrap();
        refuses_tokens_revoked_before_and_after_it_started(Bus::Log(
            crate::events::EventLog::open(db).await.unwrap(),
        ))
        .await;
    }

    crate::backend_tests!(a_verifier_on_the_log_refuses_tokens_revoked_before_and_after_it_started);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_verifier_on_rabbitmq_refuses_tokens_revoked_before_and_after_it_started() {
        let Some(url) = crate::testing::amqp_url_or_skip() else { return };
        let mut rabbit = crate::events::RabbitBus::new(url).unwrap();
        rabbit.namespace = format!("test-{}", uuid::Uuid::new_v4().simple());
        let rabbit = Arc::new(rabbit);
        let bus = Bus::Rabbit(rabbit.clone());
        // The stream exists before the revocation, as it does once any process has started.
        let subscription = Subscription {
            name: SUBSCRIPTION.to_owned(),
            types: vec![EVENT.to_owned()],
            start: StartAt::Now,
            keep: KEEP,
        };
        bus.declare_subscription(&subscription).await.unwrap();
        refuses_tokens_revoked_before_and_after_it_started(bus).await;
        rabbit.delete_namespace(&[], &[SUBSCRIPTION]).await.unwrap();
    }

    #[test]
    fn the_event_round_trips() {
        let r = Revocations::default();
        let sessions = vec!["s1".to_owned(), "s2".to_owned()];
        r.apply(&event("ada", &sessions, now_ms() + 60_000)).unwrap();
        assert!(r.revoked("ada", Some("s2")));
        assert_eq!(r.len(), 2);
    }
}
