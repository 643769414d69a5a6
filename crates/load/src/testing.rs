//! Fakes for the unit tests: a target that takes a fixed time to answer and, when told, has a
//! fixed capacity and turns away what does not fit, as the gateway's concurrency limit does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::engine::Target;
use crate::record::Outcome;
use crate::scenario::Scenario;

pub struct SlowTarget {
    delay: Duration,
    /// Requests beyond this many in flight are answered 503 at once.
    capacity: Option<usize>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    started: AtomicUsize,
}

impl SlowTarget {
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            capacity: None,
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
        }
    }

    pub fn with_capacity(delay: Duration, capacity: usize) -> Self {
        Self { capacity: Some(capacity), ..Self::new(delay) }
    }

    pub fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }

    pub fn most_in_flight(&self) -> usize {
        self.most_in_flight.load(Ordering::SeqCst)
    }
}

impl Target for SlowTarget {
    async fn send(&self, scenario: Scenario, _dice: u64) -> Outcome {
        self.started.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        // Left in flight until answered or given up on (the schedule drops it at its timeout).
        let _leaves = InFlight(&self.in_flight);
        if self.capacity.is_some_and(|capacity| now > capacity) {
            return Outcome::Answered(503);
        }
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        Outcome::Answered(if scenario == Scenario::Checkout { 201 } else { 200 })
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
