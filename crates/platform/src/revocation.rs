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

use std::collections::HashMap;
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

    /// Holds `revoked` until its `until_ms`.
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
        if event.event_type != EVENT {
            return Ok(());
        }
        let envelope = EventEnvelope::decode(event.body.as_slice()).context("decoding an envelope")?;
        let revoked = TokensRevoked::decode(envelope.payload.as_slice()).context("decoding TokensRevoked")?;
        tracing::info!(subject = %revoked.subject, sessions = revoked.sessions.len(), "tokens revoked");
        self.hold(&revoked);
        Ok(())
    }

    /// How many sessions and subjects are held.
    pub fn len(&self) -> usize {
        self.held.read().map_or(0, |h| h.sessions.len() + h.subjects.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Follows the revocations on `bus` into `verifier` until `shutdown`: from [`REPLAY`] back,
/// then as they are published. Every process runs one.
pub async fn follow(bus: Bus, verifier: Arc<Verifier>, shutdown: CancellationToken) {
    let subscription = Subscription {
        name: SUBSCRIPTION.to_owned(),
        types: vec![EVENT.to_owned()],
        start: StartAt::Since(now_ms() - REPLAY.as_millis() as i64),
        keep: KEEP,
    };
    let handler = move |event: Event, _position: i64| {
        let verifier = verifier.clone();
        async move { verifier.revocations().apply(&event) }
    };
    if let Err(e) = bus.subscribe(&subscription, handler, shutdown).await {
        tracing::error!(error = %format!("{e:#}"), "following revocations stopped");
    }
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

    /// A process that starts after a revocation still refuses the token (it reads back), and
    /// one published while it runs reaches it too.
    async fn a_verifier_on_the_bus_refuses_tokens_revoked_before_and_after_it_started(
        backend: crate::db::Backend,
    ) {
        use crate::auth::{AuthError, Role};
        use crate::testing::{TestDatabase, TestIssuer};
        let Some(test_db) = TestDatabase::new(backend).await else { return };
        let db = crate::db::Database::connect(&test_db.url, &Default::default()).await.unwrap();
        let bus = Bus::Log(crate::events::EventLog::open(db).await.unwrap());
        let issuer = TestIssuer::new();
        let verifier = issuer.verifier();
        let token = |sid: &str| {
            issuer.sign(&crate::auth::Claims {
                sid: Some(sid.into()),
                ..issuer.claims("ada", &[Role::Customer])
            })
        };
        let until = now_ms() + 60_000;
        bus.publish(&[event("ada", &["before".into()], until)]).await.unwrap();
        assert!(verifier.verify(&token("before")).await.is_ok(), "not followed yet");

        let stop = CancellationToken::new();
        let following = tokio::spawn(follow(bus.clone(), verifier.clone(), stop.clone()));
        let refused = |sid: &'static str| {
            let (verifier, token) = (verifier.clone(), token(sid));
            async move {
                for _ in 0..500 {
                    if matches!(verifier.verify(&token).await, Err(AuthError::Revoked)) {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                false
            }
        };
        assert!(refused("before").await, "read back at start");
        bus.publish(&[event("ada", &["after".into()], until)]).await.unwrap();
        assert!(refused("after").await, "followed while running");
        assert!(verifier.verify(&token("other")).await.is_ok(), "another session still works");
        stop.cancel();
        following.await.unwrap();
    }

    crate::backend_tests!(a_verifier_on_the_bus_refuses_tokens_revoked_before_and_after_it_started);

    #[test]
    fn the_event_round_trips() {
        let r = Revocations::default();
        let sessions = vec!["s1".to_owned(), "s2".to_owned()];
        r.apply(&event("ada", &sessions, now_ms() + 60_000)).unwrap();
        assert!(r.revoked("ada", Some("s2")));
        assert_eq!(r.len(), 2);
    }
}
