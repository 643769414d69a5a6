//! A circuit breaker per endpoint, with the semantics of the gateway pattern the bookstore
//! follows:
//!
//! - **Closed** counts failures, calls that exceeded their timeout counting as failures; a
//!   success resets the count. At `max_failures` it opens.
//! - **Open** fails fast. After `reset_timeout` it is half-open.
//! - **Half-open** lets exactly one trial call through; the others fail fast. A successful
//!   trial closes it and resets the timeout to `reset_timeout`; a failed one opens it again
//!   with the timeout multiplied by `backoff`, up to `max_reset_timeout`.
//!
//! The breaker does no I/O and reads no clock: callers pass `now`, so tests drive it transition
//! by transition. Every state it enters and every call result goes to its listener, which
//! feeds metrics and logs.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a breaker trips and recovers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures (or timeouts) that open a closed breaker.
    pub max_failures: u32,
    /// How long it stays open the first time.
    pub reset_timeout: Duration,
    /// What a failed trial multiplies the open time by.
    pub backoff: f64,
    /// The longest it stays open.
    pub max_reset_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            max_failures: 5,
            reset_timeout: Duration::from_secs(1),
            backoff: 2.0,
            max_reset_timeout: Duration::from_secs(30),
        }
    }
}

/// The state a breaker is in, as listeners and the status page see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// How one call ended, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    Success,
    Failure,
    /// The call took longer than it was allowed: counted as a failure.
    Timeout,
    /// The breaker refused the call without making it.
    Rejected,
}

impl CallResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Timeout => "timeout",
            Self::Rejected => "rejected",
        }
    }
}

/// What a breaker tells its listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerEvent {
    Entered(BreakerState),
    Call(CallResult),
}

pub type Listener = Arc<dyn Fn(BreakerEvent) + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

/// Leave to make one call; hand it back through [`Breaker::record`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a permit must be recorded, or a half-open breaker waits for its trial forever"]
pub struct Permit {
    trial: bool,
}

pub struct Breaker {
    config: BreakerConfig,
    state: State,
    /// How long the next opening lasts.
    open_for: Duration,
    listener: Listener,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").field("state", &self.state).field("open_for", &self.open_for).finish()
    }
}

impl Breaker {
    pub fn new(config: BreakerConfig, listener: Listener) -> Self {
        Self { config, state: State::Closed { failures: 0 }, open_for: config.reset_timeout, listener }
    }

    /// The state at `now` (an open breaker whose time is up reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if now >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a call at `now` would be let through, without taking the leave.
    pub fn would_allow(&self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until } => now >= until,
            State::HalfOpen { trial_in_flight } => !trial_in_flight,
        }
    }

    /// Leave to call at `now`, or `None` (fail fast; reported as rejected).
    pub fn try_acquire(&mut self, now: Instant) -> Option<Permit> {
        if let State::Open { until } = self.state
            && now >= until
        {
            self.enter(State::HalfOpen { trial_in_flight: false });
        }
        match &mut self.state {
            State::Closed { .. } => Some(Permit { trial: false }),
            State::HalfOpen { trial_in_flight } if !*trial_in_flight => {
                *trial_in_flight = true;
                Some(Permit { trial: true })
            }
            _ => {
                (self.listener)(BreakerEvent::Call(CallResult::Rejected));
                None
            }
        }
    }

    /// Records how the call made under `permit` ended.
    pub fn record(&mut self, permit: Permit, result: CallResult, now: Instant) {
        (self.listener)(BreakerEvent::Call(result));
        let failed = matches!(result, CallResult::Failure | CallResult::Timeout);
        match self.state {
            State::Closed { failures } if !permit.trial => {
                if !failed {
                    self.state = State::Closed { failures: 0 };
                } else if failures + 1 >= self.config.max_failures {
                    self.open(now);
                } else {
                    self.state = State::Closed { failures: failures + 1 };
                }
            }
            State::HalfOpen { .. } if permit.trial => {
                if failed {
                    let next = self.open_for.as_secs_f64() * self.config.backoff;
                    self.open_for = Duration::from_secs_f64(next).min(self.config.max_reset_timeout);
                    self.open(now);
                } else {
                    self.open_for = self.config.reset_timeout;
                    self.enter(State::Closed { failures: 0 });
                }
            }
            // A call let through before the breaker changed state: its result is stale.
            _ => {}
        }
    }

    fn open(&mut self, now: Instant) {
        self.enter(State::Open { until: now + self.open_for });
    }

    fn enter(&mut self, state: State) {
        self.state = state;
        let entered = match state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        };
        (self.listener)(BreakerEvent::Entered(entered));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn breaker() -> (Breaker, Arc<Mutex<Vec<BreakerEvent>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let config = BreakerConfig {
            max_failures: 3,
            reset_timeout: Duration::from_secs(10),
            backoff: 2.0,
            max_reset_timeout: Duration::from_secs(30),
        };
        (Breaker::new(config, Arc::new(move |e| sink.lock().unwrap().push(e))), events)
    }

    fn fail(b: &mut Breaker, now: Instant) {
        let permit = b.try_acquire(now).expect("let through");
        b.record(permit, CallResult::Failure, now);
    }

    fn entered(events: &Mutex<Vec<BreakerEvent>>) -> Vec<BreakerState> {
        events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                BreakerEvent::Entered(s) => Some(*s),
                BreakerEvent::Call(_) => None,
            })
            .collect()
    }

    #[test]
    fn closed_opens_at_max_failures_and_a_success_resets_the_count() {
        let (mut b, events) = breaker();
        let t0 = Instant::now();
        fail(&mut b, t0);
        fail(&mut b, t0);
        let ok = b.try_acquire(t0).unwrap();
        b.record(ok, CallResult::Success, t0);
        fail(&mut b, t0);
        fail(&mut b, t0);
        assert_eq!(b.state(t0), BreakerState::Closed, "the success reset the count");
        fail(&mut b, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(entered(&events), vec![BreakerState::Open]);
    }

    #[test]
    fn timeouts_count_as_failures() {
        let (mut b, _) = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            let p = b.try_acquire(t0).unwrap();
            b.record(p, CallResult::Timeout, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Open);
    }

    #[test]
    fn open_fails_fast_until_the_reset_timeout_then_lets_exactly_one_trial_through() {
        let (mut b, events) = breaker();
        let t0 = Instant::now();
        (0..3).for_each(|_| fail(&mut b, t0));
        assert_eq!(b.try_acquire(t0 + Duration::from_secs(9)), None, "open fails fast");
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        let trial = b.try_acquire(t1).expect("one trial");
        assert_eq!(b.try_acquire(t1), None, "a second call while the trial runs fails fast");
        assert_eq!(b.try_acquire(t1), None);
        b.record(trial, CallResult::Success, t1);
        assert_eq!(b.state(t1), BreakerState::Closed);
        assert_eq!(entered(&events), vec![BreakerState::Open, BreakerState::HalfOpen, BreakerState::Closed]);
        let rejected =
            events.lock().unwrap().iter().filter(|e| **e == BreakerEvent::Call(CallResult::Rejected)).count();
        assert_eq!(rejected, 3);
    }

    #[test]
    fn a_failed_trial_reopens_with_the_timeout_backed_off_up_to_the_cap() {
        let (mut b, _) = breaker();
        let mut now = Instant::now();
        (0..3).for_each(|_| fail(&mut b, now));
        let mut open_for = Duration::from_secs(10);
        for expected in [20, 30, 30] {
            assert_eq!(b.state(now + open_for - Duration::from_millis(1)), BreakerState::Open);
            now += open_for;
            let trial = b.try_acquire(now).expect("a trial once the time is up");
            b.record(trial, CallResult::Failure, now);
            assert_eq!(b.state(now), BreakerState::Open);
            open_for = Duration::from_secs(expected);
            assert_eq!(b.open_for, open_for, "backed off by 2x, capped at 30 s");
        }
        assert_eq!(b.state(now + open_for), BreakerState::HalfOpen);
    }

    #[test]
    fn a_successful_trial_resets_the_timeout() {
        let (mut b, _) = breaker();
        let mut now = Instant::now();
        (0..3).for_each(|_| fail(&mut b, now));
        now += Duration::from_secs(10);
        let trial = b.try_acquire(now).unwrap();
        b.record(trial, CallResult::Failure, now);
        assert_eq!(b.open_for, Duration::from_secs(20));
        now += Duration::from_secs(20);
        let trial = b.try_acquire(now).unwrap();
        b.record(trial, CallResult::Success, now);
        assert_eq!(b.state(now), BreakerState::Closed);
        (0..3).for_each(|_| fail(&mut b, now));
        assert_eq!(
            b.state(now + Duration::from_secs(10)),
            BreakerState::HalfOpen,
            "back to the first timeout"
        );
    }

    #[test]
    fn results_of_calls_let_through_before_it_opened_do_not_close_it() {
        let (mut b, _) = breaker();
        let t0 = Instant::now();
        let late = b.try_acquire(t0).unwrap();
        (0..3).for_each(|_| fail(&mut b, t0));
        b.record(late, CallResult::Success, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
    }
}
