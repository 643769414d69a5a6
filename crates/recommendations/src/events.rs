//! What recommendations hears: OrderPlaced records the order's books at the order's own time,
//! OrderCancelled takes them out of every count (and, heard first, keeps them out). Its queue is bound to those two types only;
//! each event is applied once (the inbox, in the transaction of its effect), and applying one
//! again would change nothing anyway ([`crate::store`] counts from the purchases).

use anyhow::Context;
use bookstore_api::orders::v1 as orders;
use bookstore_platform::clock::now_ms;
use bookstore_platform::events::{Event, inbox_begin};
use prost::Message;

use crate::store::{Purchase, Store};

/// The consumer's name: its RabbitMQ queue, its inbox rows.
pub const CONSUMER: &str = "recommendations";
/// The only events its queue is bound to.
pub const TYPES: [&str; 2] = ["OrderPlaced", "OrderCancelled"];

/// Milliseconds since the epoch of a protobuf timestamp.
fn millis(t: Option<prost_types::Timestamp>) -> Option<i64> {
    t.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// Applies one event.
pub async fn handle(store: &Store, event: Event) -> anyhow::Result<()> {
    let envelope = orders::EventEnvelope::decode(event.body.as_slice()).context("decoding an envelope")?;
    let Some(mut tx) = inbox_begin(store.database(), CONSUMER, &event.id).await? else {
        return Ok(()); // applied before
    };
    let (order, cancelled) = match envelope.r#type.as_str() {
        "OrderPlaced" => {
            let placed =
                orders::OrderPlaced::decode(envelope.payload.as_slice()).context("decoding OrderPlaced")?;
            (placed.order.context("OrderPlaced without an order")?, false)
        }
        "OrderCancelled" => {
            let cancelled = orders::OrderCancelled::decode(envelope.payload.as_slice())
                .context("decoding OrderCancelled")?;
            (cancelled.order.context("OrderCancelled without an order")?, true)
        }
        _ => return Ok(()),
    };
    let lines: Vec<Purchase> =
        order.lines.iter().map(|l| Purchase { book_id: l.book_id.clone(), quantity: l.quantity }).collect();
    // The order's own time: a replay next month still counts it in its own month.
    let at = millis(order.create_time).context("an order event without the order's time")?;
    if cancelled {
        let when = millis(order.update_time).unwrap_or_else(now_ms);
        Store::cancelled(&mut tx, &order.id, &order.user_id, at, &lines, when).await?;
    } else {
        Store::placed(&mut tx, &order.id, &order.user_id, at, &lines).await?;
    }
    tx.commit().await.context("committing an event's effect")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use bookstore_platform::db::{Backend, Database, PoolConfig};
    use bookstore_platform::events::{OUTBOX_MIGRATIONS, enveloped};
    use bookstore_platform::grpc::timestamp;
    use bookstore_platform::testing::TestDatabase;

    use super::*;
    use crate::store::Ranked;

    bookstore_platform::backend_tests!(
        rankings_equal_the_hand_counted_ones_with_ties_cancellations_and_the_window,
        replaying_every_event_changes_nothing,
        a_cancellation_heard_before_its_order_keeps_the_order_out,
    );

    const DAY: i64 = 24 * 3600 * 1000;

    /// An order event of `kind` for `order` of `user`, placed `days_ago`, with `lines`.
    fn event(kind: &str, order: &str, user: &str, days_ago: i64, lines: &[(&str, i64)]) -> Event {
        let order = orders::Order {
            id: order.into(),
            user_id: user.into(),
            lines: lines
                .iter()
                .map(|(book, quantity)| orders::OrderLine {
                    book_id: (*book).into(),
                    quantity: *quantity,
                    ..Default::default()
                })
                .collect(),
            create_time: Some(timestamp(now_ms() - days_ago * DAY)),
            update_time: Some(timestamp(now_ms())),
            ..Default::default()
        };
        let payload = match kind {
            "OrderPlaced" => orders::OrderPlaced { order: Some(order), ..Default::default() }.encode_to_vec(),
            _ => orders::OrderCancelled { order: Some(order) }.encode_to_vec(),
        };
        enveloped(kind, payload, 1)
    }

    /// The fixed story the expectations below are counted by hand from:
    /// - o1: ada buys A and B, a day ago;  o2: bob buys A, B and C, 2 days ago;
    /// - o3: cat buys A and C, 3 days ago; o4: ada buys D, 4 days ago;
    /// - o5: dan buys A and 5 × E, 40 days ago (outside the best-sellers' 30 days);
    /// - o6: eve buys 3 × C and B, a day ago, and cancels it;
    /// - o7: bob buys E, a day ago.
    fn story() -> Vec<Event> {
        vec![
            event("OrderPlaced", "o1", "ada", 1, &[("A", 1), ("B", 1)]),
            event("OrderPlaced", "o2", "bob", 2, &[("A", 1), ("B", 1), ("C", 1)]),
            event("OrderPlaced", "o3", "cat", 3, &[("A", 1), ("C", 1)]),
            event("OrderPlaced", "o4", "ada", 4, &[("D", 1)]),
            event("OrderPlaced", "o5", "dan", 40, &[("A", 1), ("E", 5)]),
            event("OrderPlaced", "o6", "eve", 1, &[("C", 3), ("B", 1)]),
            event("OrderCancelled", "o6", "eve", 1, &[("C", 3), ("B", 1)]),
            event("OrderPlaced", "o7", "bob", 1, &[("E", 1)]),
        ]
    }

    async fn store(backend: Backend) -> Option<(TestDatabase, Store)> {
        let db = TestDatabase::new(backend).await?;
        let database = Database::connect(&db.url, &PoolConfig::default()).await.unwrap();
        database.migrate_all(&[&crate::MIGRATIONS, &OUTBOX_MIGRATIONS]).await.unwrap();
        Some((db, Store::new(database)))
    }

    fn ranked(pairs: &[(&str, i64)]) -> Vec<Ranked> {
        pairs.iter().map(|(book, score)| Ranked { book_id: (*book).into(), score: *score }).collect()
    }

    async fn rankings(store: &Store) -> (Vec<Ranked>, Vec<Ranked>, Vec<Ranked>, Vec<Ranked>) {
        let (ada, _) = store.for_customer("ada", 10).await.unwrap();
        (
            store.bought_together("A", 10).await.unwrap(),
            store.bought_together("C", 10).await.unwrap(),
            ada,
            store.best_sellers(now_ms(), 10).await.unwrap(),
        )
    }

    async fn rankings_equal_the_hand_counted_ones_with_ties_cancellations_and_the_window(backend: Backend) {
        let Some((_db, store)) = store(backend).await else { return };
        for e in story() {
            handle(&store, e).await.unwrap();
        }
        let (with_a, with_c, for_ada, best) = rankings(&store).await;
        // A: B in 2 baskets (ada, bob) and C in 2 (bob, cat), both by 2 customers: the tie goes
        // to the smaller id; E in 1 basket (dan) by 2 customers (dan, and bob across orders);
        // D in no basket, by 1 customer (ada across orders).
        assert_eq!(with_a, ranked(&[("B", 2), ("C", 2), ("E", 1), ("D", 0)]));
        // C: A in 2 baskets; B in 1 (bob's; eve's was cancelled); E by bob across orders.
        assert_eq!(with_c, ranked(&[("A", 2), ("B", 1), ("E", 0)]));
        // Ada bought A, B and D: C is with A in 2 baskets and with B in 1, E with A in 1; D
        // adds nothing; what she bought is left out.
        assert_eq!(for_ada, ranked(&[("C", 3), ("E", 1)]));
        let (_, bought) = store.for_customer("ada", 10).await.unwrap();
        assert_eq!(bought, ["A", "B", "D"].into_iter().map(String::from).collect());
        // Units in 30 days: A 3, B 2, C 2 (eve's 3 cancelled), D 1, E 1 (dan's 5 are older).
        assert_eq!(best, ranked(&[("A", 3), ("B", 2), ("C", 2), ("D", 1), ("E", 1)]));
    }

    async fn replaying_every_event_changes_nothing(backend: Backend) {
        let Some((_db, store)) = store(backend).await else { return };
        let events = story();
        for e in &events {
            handle(&store, e.clone()).await.unwrap();
        }
        let first = rankings(&store).await;
        // The same deliveries again (the inbox skips them), then the same orders under new
        // event ids (the counts are recounted from purchases, and come out the same).
        for e in &events {
            handle(&store, e.clone()).await.unwrap();
        }
        for e in story() {
            handle(&store, e).await.unwrap();
        }
        assert_eq!(rankings(&store).await, first);
    }

    async fn a_cancellation_heard_before_its_order_keeps_the_order_out(backend: Backend) {
        let Some((_db, store)) = store(backend).await else { return };
        handle(&store, event("OrderCancelled", "o1", "ada", 1, &[("A", 1), ("B", 1)])).await.unwrap();
        handle(&store, event("OrderPlaced", "o1", "ada", 1, &[("A", 1), ("B", 1)])).await.unwrap();
        assert_eq!(store.bought_together("A", 10).await.unwrap(), Vec::new());
        assert_eq!(store.best_sellers(now_ms(), 10).await.unwrap(), Vec::new());
    }
}
