//! Stock reservations: the books side of the checkout saga.

use std::time::Duration;

use bookstore_books::domain::{ReservationState, ReserveLine, Settlement};
use bookstore_books::store::{BookStore, StoreError};
use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;

use crate::{new_book, store};

backend_tests!(
    a_reservation_is_all_or_nothing_and_names_the_lines_that_failed,
    a_reservation_is_idempotent_by_order_id,
    confirm_and_release_move_units_and_keep_the_total,
    concurrent_baskets_never_oversell,
    expired_holds_go_back_on_the_shelf,
    a_group_confirmation_settles_each_order_once_and_reports_each,
    group_confirmations_racing_releases_keep_the_total,
);

fn line(book_id: &str, quantity: i64) -> ReserveLine {
    ReserveLine { book_id: book_id.into(), quantity }
}

async fn units(store: &BookStore, id: &str) -> (i64, i64, i64) {
    let b = store.get(id).await.unwrap();
    (b.stock, b.reserved, b.sold)
}

const HOLD: Duration = Duration::from_secs(600);

async fn a_reservation_is_all_or_nothing_and_names_the_lines_that_failed(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let a = store.create(new_book(1, "A", "X", "")).await.unwrap();
    let b = store.create(new_book(2, "B", "X", "")).await.unwrap();
    let err =
        store.reserve("o1", &[line(&a.id, 3), line(&b.id, 11), line("ghost", 1)], HOLD).await.unwrap_err();
    let StoreError::OutOfStock(failed) = err else { panic!("{err:?}") };
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().any(|f| f.book_id == b.id && f.available == 10 && f.requested == 11));
    assert!(failed.iter().any(|f| f.book_id == "ghost" && f.reason == "no such book"));
    assert_eq!(units(&store, &a.id).await, (10, 0, 0), "the line that fitted was not held either");

    let (lines, _) = store.reserve("o2", &[line(&a.id, 3), line(&b.id, 10)], HOLD).await.unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines.iter().find(|l| l.book_id == a.id).unwrap().price_minor, 1001, "price at reservation");
    assert_eq!(units(&store, &a.id).await, (7, 3, 0));
    assert_eq!(units(&store, &b.id).await, (0, 10, 0));
}

async fn a_reservation_is_idempotent_by_order_id(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let a = store.create(new_book(1, "A", "X", "")).await.unwrap();
    let first = store.reserve("o1", &[line(&a.id, 4)], HOLD).await.unwrap();
    let again = store.reserve("o1", &[line(&a.id, 4)], HOLD).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(units(&store, &a.id).await, (6, 4, 0), "held once");

    // Racing retries of one order hold once too.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, id) = (store.clone(), a.id.clone());
            tokio::spawn(async move { store.reserve("o2", &[line(&id, 2)], HOLD).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(units(&store, &a.id).await, (4, 6, 0));
}

async fn confirm_and_release_move_units_and_keep_the_total(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let a = store.create(new_book(1, "A", "X", "")).await.unwrap();
    store.reserve("sold", &[line(&a.id, 3)], HOLD).await.unwrap();
    store.reserve("dropped", &[line(&a.id, 2)], HOLD).await.unwrap();
    assert_eq!(store.settle("sold", Settlement::Confirm).await.unwrap(), ReservationState::Confirmed);
    assert_eq!(
        store.settle("sold", Settlement::Confirm).await.unwrap(),
        ReservationState::Confirmed,
        "idempotent"
    );
    assert_eq!(store.settle("dropped", Settlement::Release).await.unwrap(), ReservationState::Released);
    assert_eq!(
        store.settle("dropped", Settlement::Release).await.unwrap(),
        ReservationState::Released,
        "idempotent"
    );
    assert_eq!(units(&store, &a.id).await, (7, 0, 3));
    assert!(matches!(
        store.settle("dropped", Settlement::Confirm).await,
        Err(StoreError::ReservationReleased(_))
    ));
    assert!(matches!(
        store.reserve("dropped", &[line(&a.id, 1)], HOLD).await,
        Err(StoreError::ReservationReleased(_))
    ));
    assert!(matches!(store.settle("never", Settlement::Confirm).await, Err(StoreError::NoReservation(_))));

    // Cancelling a confirmed order puts its books back on sale.
    assert_eq!(store.settle("sold", Settlement::Release).await.unwrap(), ReservationState::Released);
    assert_eq!(units(&store, &a.id).await, (10, 0, 0));
}

async fn concurrent_baskets_never_oversell(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(store.create(new_book(n, &format!("B{n}"), "X", "")).await.unwrap().id);
    }
    let tasks: Vec<_> = (0..60)
        .map(|i: usize| {
            let store = store.clone();
            let basket = vec![line(&ids[i % 3], 1 + (i % 2) as i64), line(&ids[(i + 1) % 3], 1)];
            tokio::spawn(async move {
                let order = format!("order-{i}");
                let result = store.reserve(&order, &basket, HOLD).await;
                // Every other successful order is confirmed, the rest released: all three paths race.
                if result.is_ok() {
                    store
                        .settle(
                            &order,
                            if i.is_multiple_of(2) { Settlement::Confirm } else { Settlement::Release },
                        )
                        .await
                        .unwrap();
                }
                result.map(|_| basket)
            })
        })
        .collect();
    let mut taken = [0i64; 3];
    let mut ok = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(basket) => {
                ok += 1;
                if i.is_multiple_of(2) {
                    for l in basket {
                        taken[ids.iter().position(|id| *id == l.book_id).unwrap()] += l.quantity;
                    }
                }
            }
            Err(StoreError::OutOfStock(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(ok > 0);
    for (k, id) in ids.iter().enumerate() {
        let (stock, reserved, sold) = units(&store, id).await;
        assert!(stock >= 0);
        assert_eq!(reserved, 0, "every hold was settled");
        assert_eq!(stock + reserved + sold, 10, "the total is constant");
        assert_eq!(sold, taken[k], "sold is exactly what confirmed orders took");
    }
}

async fn expired_holds_go_back_on_the_shelf(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let a = store.create(new_book(1, "A", "X", "")).await.unwrap();
    store.reserve("short", &[line(&a.id, 4)], Duration::from_millis(1)).await.unwrap();
    store.reserve("long", &[line(&a.id, 1)], HOLD).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.release_expired().await.unwrap(), 1);
    assert_eq!(units(&store, &a.id).await, (9, 1, 0));
    assert!(matches!(
        store.settle("short", Settlement::Confirm).await,
        Err(StoreError::ReservationReleased(_))
    ));
}

async fn a_group_confirmation_settles_each_order_once_and_reports_each(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let a = store.create(new_book(1, "A", "X", "")).await.unwrap();
    let b = store.create(new_book(2, "B", "X", "")).await.unwrap();
    store.reserve("one", &[line(&a.id, 2), line(&b.id, 1)], HOLD).await.unwrap();
    store.reserve("two", &[line(&a.id, 3)], HOLD).await.unwrap();
    store.reserve("gone", &[line(&b.id, 4)], HOLD).await.unwrap();
    store.settle("gone", Settlement::Release).await.unwrap();
    store.reserve("done", &[line(&b.id, 1)], HOLD).await.unwrap();
    store.settle("done", Settlement::Confirm).await.unwrap();

    let ids: Vec<String> = ["one", "ghost", "gone", "two", "done", "one"].map(String::from).to_vec();
    let outcomes = store.confirm_many(&ids).await.unwrap();
    let states: Vec<Option<ReservationState>> = outcomes.iter().map(|(_, s)| *s).collect();
    let (confirmed, released) = (Some(ReservationState::Confirmed), Some(ReservationState::Released));
    assert_eq!(states, [confirmed, None, released, confirmed, confirmed, confirmed]);
    assert_eq!(units(&store, &a.id).await, (5, 0, 5), "each order's units moved once");
    assert_eq!(units(&store, &b.id).await, (8, 0, 2));
    assert_eq!(store.confirm_many(&ids).await.unwrap(), outcomes, "idempotent");
    assert_eq!(units(&store, &a.id).await, (5, 0, 5));
}

async fn group_confirmations_racing_releases_keep_the_total(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let books: Vec<String> = {
        let mut ids = Vec::new();
        for n in 1..=4 {
            ids.push(store.create(new_book(n, "T", "X", "")).await.unwrap().id);
        }
        ids
    };
    // 20 orders of two books each (all the stock), in both id orders, so groups and releases
    // cross.
    let mut orders = Vec::new();
    for n in 0..20 {
        let (x, y) = (&books[n % 4], &books[(n + 1) % 4]);
        let order = format!("o{n}");
        store.reserve(&order, &[line(x, 1), line(y, 1)], HOLD).await.unwrap();
        orders.push(order);
    }
    let mut tasks = Vec::new();
    for chunk in orders.chunks(5) {
        let (store, group) = (store.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move { store.confirm_many(&group).await.map(|_| ()) }));
    }
    for order in orders.iter().step_by(3) {
        let (store, order) = (store.clone(), order.clone());
        tasks.push(tokio::spawn(async move { store.settle(&order, Settlement::Release).await.map(|_| ()) }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for id in &books {
        let (stock, reserved, sold) = units(&store, id).await;
        assert_eq!(stock + reserved + sold, 10, "the total is constant");
        assert_eq!(reserved, 0, "every hold was settled one way or the other");
        assert!(stock >= 0 && sold >= 0);
    }
}
