//! The open-loop schedule: requests start at a constant arrival rate whatever the answers do,
//! and each is timed from when it was meant to start.
//!
//! A closed-loop tool (wrk, a fixed set of connections each waiting for its answer before the
//! next request) sends less when the shop slows down, so a stall is recorded as one slow
//! request instead of the hundreds that would have queued behind it: coordinated omission.
//! Here, as in wrk2 and oha's latency correction, the `i`-th request is due at `t0 + i / rate`
//! and its latency runs from that intended start to the end of its answer. Requests run
//! concurrently up to a cap (`max_in_flight`); a request due while the cap is full waits for
//! room and is sent late, its wait part of its latency and the wait counted (`held_by_cap`).
//! Nothing is skipped: a request that is still waiting when the run's requests have had their
//! time (the run's end plus one timeout) is recorded as never sent, with the time it waited.
//!
//! Requests sent during the warm-up are not recorded.
//!
//! How the schedule waits for a due time is its [`Pacing`]. tokio's timer ticks in
//! milliseconds, so with it a request goes out up to about a millisecond after it is due (as
//! wrk2's do), and that lateness is part of its latency: a fifth of a 5 ms objective. The
//! command line paces with a thread of its own instead, which sleeps to each due time with the
//! operating system's timer (tens of microseconds late) and wakes the schedule. The tests pace
//! with tokio's timer, which a paused clock drives. Either way the lateness is also recorded on
//! its own (`send_lag`), so a report says how much of a latency was the generator's.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio::time::{Instant, sleep_until};

use crate::input::{MaxInFlight, Pause, Rate, RunLength};
use crate::record::{Failure, Outcome, Recording};
use crate::scenario::{Mix, Scenario, dice};

/// What the schedule sends requests to: the shop over HTTP, or a fake in the tests.
pub trait Target: Send + Sync + 'static {
    /// Sends one request of `scenario` and reads its answer to the end. `dice` are random bits
    /// for the request's own choices (which book, which customer). The schedule applies the
    /// timeout.
    fn send(&self, scenario: Scenario, dice: u64) -> impl Future<Output = Outcome> + Send;
}

/// One open-loop run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub rate: Rate,
    pub duration: RunLength,
    pub warmup: Pause,
    pub max_in_flight: MaxInFlight,
    /// The longest a request may take once sent; past it, it is a timeout.
    pub timeout: RunLength,
    pub mix: Mix,
    /// The same seed sends the same requests in the same order.
    pub seed: u64,
    pub pacing: Pacing,
}

/// How the schedule waits until a request is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// tokio's timer: millisecond ticks, so up to a millisecond late; the only pacing a paused
    /// clock drives.
    Timer,
    /// A thread of its own, sleeping to each due time with the operating system's timer.
    Thread,
}

/// Sleeps to each due time and says which requests are due: `released` is how many, and
/// `notify` wakes the schedule when it grows. Stops early when `stop` is set.
struct PacerThread {
    released: Arc<AtomicU64>,
    notify: Arc<Notify>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PacerThread {
    fn start(start: std::time::Instant, rate: Rate, total: u64) -> Self {
        let released = Arc::new(AtomicU64::new(0));
        let notify = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (r, n, s) = (released.clone(), notify.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("load-pacer".into())
            .spawn(move || {
                let mut next = 0;
                while next < total && !s.load(Ordering::Relaxed) {
                    let now = std::time::Instant::now();
                    let due = start + rate.offset_of(next);
                    if due > now {
                        std::thread::sleep(due - now);
                        continue;
                    }
                    // Everything due by now goes at once: after a late wake-up, a batch.
                    while next < total && start + rate.offset_of(next) <= now {
                        next += 1;
                    }
                    r.store(next, Ordering::Release);
                    n.notify_one();
                }
            })
            .expect("a thread can be started");
        Self { released, notify, stop, thread: Some(thread) }
    }

    async fn until_due(&self, index: u64) {
        // `notify_one` keeps a permit when nobody waits, so a release between the load and the
        // wait is not missed.
        while self.released.load(Ordering::Acquire) <= index {
            self.notify.notified().await;
        }
    }

    async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // It is done, or wakes within one interval to see `stop`.
            let joined =
                tokio::task::spawn_blocking(move || thread.join()).await.expect("the join is not cancelled");
            if let Err(panic) = joined {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Drop for PacerThread {
    fn drop(&mut self) {
        // A run given up on (its future dropped) stops its pacer too.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A request that ended.
struct Done {
    scenario: Scenario,
    intended: Instant,
    sent: Instant,
    ended: Instant,
    outcome: Outcome,
    recorded: bool,
}

/// The recording as answers come in.
struct Tally {
    recording: Recording,
    last_end: Option<Instant>,
}

impl Tally {
    fn take(&mut self, joined: Result<Done, JoinError>) {
        let done = match joined {
            Ok(done) => done,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Cancelled: only an aborted set cancels, and this one never is.
            Err(_) => return,
        };
        if !done.recorded {
            return;
        }
        self.recording.record(
            done.scenario,
            done.outcome,
            done.ended.saturating_duration_since(done.intended),
        );
        let lag = done.sent.saturating_duration_since(done.intended);
        self.recording.send_lag.saturating_record(u64::try_from(lag.as_micros()).unwrap_or(u64::MAX).max(1));
        self.last_end = Some(self.last_end.map_or(done.ended, |last| last.max(done.ended)));
    }
}

/// Runs `plan` against `target` and returns what the recorded window saw.
pub async fn run<T: Target>(target: Arc<T>, plan: &Plan) -> Recording {
    let warmup_requests = plan.rate.requests_in(plan.warmup.get());
    let total = warmup_requests + plan.rate.requests_in(plan.duration.get());
    let start_std = std::time::Instant::now();
    let start = match plan.pacing {
        Pacing::Timer => Instant::now(),
        Pacing::Thread => Instant::from_std(start_std),
    };
    let pacer = (plan.pacing == Pacing::Thread).then(|| PacerThread::start(start_std, plan.rate, total));
    let window_start = start + plan.rate.offset_of(warmup_requests);
    // Every request due in the run has had its time once the last one due could have timed out.
    let give_up_at = start + plan.warmup.get() + plan.duration.get() + plan.timeout.get();
    let due = |index: u64| start + plan.rate.offset_of(index);
    let choose = |index: u64| (plan.mix.pick(dice(plan.seed, 2 * index)), dice(plan.seed, 2 * index + 1));

    let permits = Arc::new(Semaphore::new(plan.max_in_flight.get()));
    let mut tasks = JoinSet::new();
    let mut tally = Tally { recording: Recording::default(), last_end: None };

    'schedule: for index in 0..total {
        let intended = due(index);
        let recorded = index >= warmup_requests;
        while let Some(joined) = tasks.try_join_next() {
            tally.take(joined);
        }
        // Until the request is due, take in the answers that arrive.
        let until_due = async {
            match &pacer {
                Some(pacer) => pacer.until_due(index).await,
                None if Instant::now() < intended => sleep_until(intended).await,
                None => {}
            }
        };
        tokio::pin!(until_due);
        loop {
            tokio::select! {
                biased;
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => tally.take(joined),
                () = &mut until_due => break,
            }
        }
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if recorded {
                    tally.recording.held_by_cap += 1;
                }
                // The cap is full: wait for room, taking in answers, but not past the point
                // where every request due has had its time.
                let room = loop {
                    tokio::select! {
                        biased;
                        Some(joined) = tasks.join_next(), if !tasks.is_empty() => tally.take(joined),
                        permit = permits.clone().acquire_owned() => break Some(permit.expect("the semaphore is never closed")),
                        () = sleep_until(give_up_at) => break None,
                    }
                };
                match room {
                    Some(permit) => permit,
                    None => {
                        let now = Instant::now();
                        for unsent in (index..total).filter(|i| *i >= warmup_requests) {
                            let (scenario, _) = choose(unsent);
                            let waited = now.saturating_duration_since(due(unsent));
                            tally.recording.record(scenario, Outcome::Failed(Failure::Unsent), waited);
                        }
                        break 'schedule;
                    }
                }
            }
        };
        let (scenario, request_dice) = choose(index);
        let target = target.clone();
        let timeout = plan.timeout.get();
        tasks.spawn(async move {
            let sent = Instant::now();
            let outcome = tokio::time::timeout(timeout, target.send(scenario, request_dice))
                .await
                .unwrap_or(Outcome::Failed(Failure::Timeout));
            let ended = Instant::now();
            drop(permit);
            Done { scenario, intended, sent, ended, outcome, recorded }
        });
    }
    if let Some(pacer) = pacer {
        pacer.finish().await;
    }
    while let Some(joined) = tasks.join_next().await {
        tally.take(joined);
    }
    let mut recording = tally.recording;
    let answered_for =
        tally.last_end.map(|last| last.saturating_duration_since(window_start)).unwrap_or_default();
    recording.elapsed = answered_for.max(plan.duration.get());
    recording
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::testing::SlowTarget;

    fn plan(rate: f64, seconds: u64, max_in_flight: usize) -> Plan {
        Plan {
            rate: Rate::per_second(rate).unwrap(),
            duration: RunLength::new(Duration::from_secs(seconds)).unwrap(),
            warmup: Pause::default(),
            max_in_flight: MaxInFlight::new(max_in_flight).unwrap(),
            timeout: RunLength::new(Duration::from_secs(30)).unwrap(),
            mix: "read=1".parse().unwrap(),
            seed: 1,
            pacing: Pacing::Timer,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_start_at_the_rate_whatever_the_latency() {
        let target = Arc::new(SlowTarget::new(Duration::from_millis(50)));
        let recording = run(target.clone(), &plan(1000.0, 2, 1024)).await;
        let read = &recording.scenarios[&Scenario::Read];
        assert_eq!(read.count(), 2000, "1000/s for 2 s is 2000 requests");
        assert_eq!(read.succeeded, 2000);
        assert_eq!(target.started(), 2000);
        // 50 requests are in flight at any time, well under the cap.
        assert_eq!(recording.held_by_cap, 0);
        assert!(target.most_in_flight() <= 51, "{} in flight at most", target.most_in_flight());
        let p99 = read.latency.value_at_quantile(0.99);
        assert!((50_000..=50_100).contains(&p99), "p99 {p99} µs: the server's 50 ms and no more");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_held_by_the_cap_are_sent_late_and_their_wait_is_in_their_latency() {
        // 10 in flight of 50 ms each serve 200 a second; 1000 a second are due.
        let target = Arc::new(SlowTarget::new(Duration::from_millis(50)));
        let recording = run(target.clone(), &plan(1000.0, 2, 10)).await;
        let read = &recording.scenarios[&Scenario::Read];
        assert_eq!(read.count(), 2000, "every request due is recorded, none dropped");
        assert_eq!(target.started(), 2000, "and every one was sent, late");
        assert_eq!(target.most_in_flight(), 10);
        assert!(recording.held_by_cap >= 1980, "{} held back", recording.held_by_cap);
        // Sending 2000 at 200 a second takes 10 s, so the last request due (at 2 s) waited
        // about 8 s; a closed-loop count would say 50 ms for every one.
        let max = read.latency.max();
        assert!((7_900_000..=8_100_000).contains(&max), "max {max} µs");
        let median = read.latency.value_at_quantile(0.5);
        assert!(median > 3_000_000, "median {median} µs includes the wait for room");
        assert!(recording.send_lag.max() > 7_800_000, "sending fell behind by the wait");
        assert!(recording.elapsed >= Duration::from_secs(10), "the window lasted until the last answer");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_still_held_when_the_run_has_had_its_time_are_counted_as_never_sent() {
        let target = Arc::new(SlowTarget::new(Duration::from_secs(3600)));
        let mut plan = plan(100.0, 1, 5);
        plan.timeout = RunLength::new(Duration::from_secs(2)).unwrap();
        let recording = run(target.clone(), &plan).await;
        let read = &recording.scenarios[&Scenario::Read];
        assert_eq!(read.count(), 100, "every request due is accounted for");
        // 5 sent at once time out at 2 s; 5 more sent then; the run gives up at 1 s + 2 s.
        assert_eq!(read.failures.get(&Failure::Timeout), Some(&10));
        assert_eq!(read.failures.get(&Failure::Unsent), Some(&90));
        assert_eq!(recording.unsent(), 90);
        assert_eq!(read.succeeded, 0);
        // The first never-sent request was due at 100 ms and waited until 3 s.
        assert!(read.latency.max() >= 2_900_000, "max {} µs", read.latency.max());
    }

    #[tokio::test(start_paused = true)]
    async fn the_warmup_is_sent_but_not_recorded() {
        let target = Arc::new(SlowTarget::new(Duration::from_millis(1)));
        let mut plan = plan(100.0, 1, 64);
        plan.warmup = Pause::new(Duration::from_secs(2)).unwrap();
        let recording = run(target.clone(), &plan).await;
        assert_eq!(target.started(), 300);
        assert_eq!(recording.total().count(), 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pacer_thread_sends_every_request_and_none_before_it_is_due() {
        struct Stopwatch {
            start: std::time::Instant,
            last_sent: std::sync::Mutex<Duration>,
        }
        impl Target for Stopwatch {
            async fn send(&self, _scenario: Scenario, _dice: u64) -> Outcome {
                let mut last = self.last_sent.lock().unwrap();
                *last = (*last).max(self.start.elapsed());
                Outcome::Answered(200)
            }
        }
        let stopwatch =
            Arc::new(Stopwatch { start: std::time::Instant::now(), last_sent: Default::default() });
        let mut plan = plan(1000.0, 1, 64);
        plan.pacing = Pacing::Thread;
        let recording = run(stopwatch.clone(), &plan).await;
        assert_eq!(recording.total().count(), 1000);
        let last_sent = *stopwatch.last_sent.lock().unwrap();
        assert!(
            last_sent >= Duration::from_millis(999),
            "the last request, due at 999 ms, went at {last_sent:?}"
        );
        // Wall-clock time on a shared machine: a bound that only a broken pacer misses.
        let lag = recording.send_lag.value_at_quantile(0.5);
        assert!(lag < 20_000, "half the requests went more than {lag} µs late");
    }

    #[tokio::test(start_paused = true)]
    async fn the_mix_decides_each_requests_scenario() {
        struct Echo(AtomicUsize);
        impl Target for Echo {
            async fn send(&self, scenario: Scenario, _dice: u64) -> Outcome {
                self.0.fetch_add(1, Ordering::Relaxed);
                Outcome::Answered(if scenario == Scenario::Checkout { 201 } else { 200 })
            }
        }
        let mut plan = plan(1000.0, 4, 16);
        plan.mix = "read=3,checkout=1".parse().unwrap();
        let recording = run(Arc::new(Echo(AtomicUsize::new(0))), &plan).await;
        let reads = recording.scenarios[&Scenario::Read].count();
        let checkouts = recording.scenarios[&Scenario::Checkout].count();
        assert_eq!(reads + checkouts, 4000);
        assert!((2800..3200).contains(&reads), "{reads} reads of 4000");
        assert_eq!(recording.total().errors(), 0, "each scenario's expected status is a success");
    }
}
