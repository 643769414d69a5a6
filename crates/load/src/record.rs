//! What a run recorded: for each scenario, every request's latency from its intended start (an
//! HdrHistogram), how it ended (a status, or a failure of the connection), and the rejections
//! (429, 503) on their own with their own latencies; for the run, how far sending fell behind
//! its schedule and how many requests the in-flight cap held back.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::scenario::Scenario;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The shop answered, with this status (the body read to its end).
    Answered(u16),
    /// No answer: what went wrong instead.
    Failed(Failure),
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// The connection could not be opened (refused, unreachable, out of file descriptors).
    Connect,
    /// No whole answer within the request timeout.
    Timeout,
    /// The connection closed or was reset before the answer was whole.
    Closed,
    /// The answer was not HTTP the client could read.
    Protocol,
    /// Never sent: the in-flight cap was still full when the run ended and its requests had
    /// had their time. Its latency is recorded as at least the time it waited.
    Unsent,
    /// Anything else the client reported.
    Other,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Closed => "closed",
            Failure::Protocol => "protocol",
            Failure::Unsent => "unsent",
            Failure::Other => "other",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Whether a status says the shop turned the request away for lack of room: too many requests
/// from this client (429) or too many in flight (503). How fast these come back is what
/// overload looks like from outside.
pub fn is_rejection(status: u16) -> bool {
    status == 429 || status == 503
}

/// Latencies are kept in microseconds, from 1 µs to an hour, to three significant digits.
pub const LOWEST_MICROS: u64 = 1;
pub const HIGHEST_MICROS: u64 = 3_600_000_000;
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram with the bounds every recording uses.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_MICROS, HIGHEST_MICROS, SIGNIFICANT_DIGITS)
        .expect("valid histogram bounds")
}

fn micros(span: Duration) -> u64 {
    u64::try_from(span.as_micros()).unwrap_or(u64::MAX).max(LOWEST_MICROS)
}

/// One scenario's requests (or several scenarios' merged).
#[derive(Debug, Clone)]
pub struct ScenarioRecord {
    /// Every request, however it ended, from its intended start to its end.
    pub latency: Histogram<u64>,
    /// The requests that got the answer their scenario wanted.
    pub succeeded: u64,
    /// Answers that were not wanted, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests with no answer, by why.
    pub failures: BTreeMap<Failure, u64>,
    /// The 429 and 503 answers' latencies (also counted in `statuses` and `latency`).
    pub rejected: Histogram<u64>,
}

impl Default for ScenarioRecord {
    fn default() -> Self {
        Self {
            latency: latency_histogram(),
            succeeded: 0,
            statuses: BTreeMap::new(),
            failures: BTreeMap::new(),
            rejected: latency_histogram(),
        }
    }
}

impl ScenarioRecord {
    pub fn record(&mut self, scenario: Scenario, outcome: Outcome, latency: Duration) {
        let us = micros(latency);
        self.latency.saturating_record(us);
        match outcome {
            Outcome::Answered(status) if scenario.succeeded(status) => self.succeeded += 1,
            Outcome::Answered(status) => {
                *self.statuses.entry(status).or_default() += 1;
                if is_rejection(status) {
                    self.rejected.saturating_record(us);
                }
            }
            Outcome::Failed(failure) => *self.failures.entry(failure).or_default() += 1,
        }
    }

    /// Every request recorded.
    pub fn count(&self) -> u64 {
        self.latency.len()
    }

    /// Requests that did not get the answer they wanted: unwanted statuses and failures.
    pub fn errors(&self) -> u64 {
        self.count() - self.succeeded
    }

    pub fn rejections(&self) -> u64 {
        self.rejected.len()
    }

    /// The share of requests that did not get the answer they wanted (0 with no requests).
    pub fn error_rate(&self) -> f64 {
        if self.count() == 0 { 0.0 } else { self.errors() as f64 / self.count() as f64 }
    }

    pub fn merge(&mut self, other: &ScenarioRecord) {
        self.latency.add(&other.latency).expect("histograms of equal bounds add");
        self.rejected.add(&other.rejected).expect("histograms of equal bounds add");
        self.succeeded += other.succeeded;
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        for (failure, n) in &other.failures {
            *self.failures.entry(*failure).or_default() += n;
        }
    }
}

/// Everything one run recorded.
#[derive(Debug, Clone)]
pub struct Recording {
    pub scenarios: BTreeMap<Scenario, ScenarioRecord>,
    /// How late each recorded request was sent, after its intended start: the generator's own
    /// delay (timer ticks, a busy machine) and waits for room under the in-flight cap. It is
    /// part of every latency.
    pub send_lag: Histogram<u64>,
    /// Recorded requests that found the in-flight cap full at their intended start and waited
    /// for room (their wait is in their latency).
    pub held_by_cap: u64,
    /// The recorded window: from its first intended start until the last of its requests ended
    /// (at least the run's length).
    pub elapsed: Duration,
}

impl Default for Recording {
    fn default() -> Self {
        Self {
            scenarios: BTreeMap::new(),
            send_lag: latency_histogram(),
            held_by_cap: 0,
            elapsed: Duration::ZERO,
        }
    }
}

impl Recording {
    pub fn record(&mut self, scenario: Scenario, outcome: Outcome, latency: Duration) {
        self.scenarios.entry(scenario).or_default().record(scenario, outcome, latency);
    }

    /// The given scenarios' records merged (an empty record if none ran).
    pub fn merged(&self, scenarios: impl IntoIterator<Item = Scenario>) -> ScenarioRecord {
        let mut all = ScenarioRecord::default();
        for scenario in scenarios {
            if let Some(record) = self.scenarios.get(&scenario) {
                all.merge(record);
            }
        }
        all
    }

    /// Every scenario's records merged.
    pub fn total(&self) -> ScenarioRecord {
        self.merged(self.scenarios.keys().copied())
    }

    /// Never-sent requests over every scenario.
    pub fn unsent(&self) -> u64 {
        self.scenarios.values().map(|r| r.failures.get(&Failure::Unsent).copied().unwrap_or(0)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwanted_answers_are_counted_by_status_and_failures_by_kind() {
        let mut record = ScenarioRecord::default();
        let ms = Duration::from_millis;
        record.record(Scenario::Checkout, Outcome::Answered(201), ms(10));
        record.record(Scenario::Checkout, Outcome::Answered(200), ms(10));
        record.record(Scenario::Checkout, Outcome::Answered(409), ms(10));
        record.record(Scenario::Checkout, Outcome::Answered(503), ms(1));
        record.record(Scenario::Checkout, Outcome::Answered(503), ms(2));
        record.record(Scenario::Checkout, Outcome::Failed(Failure::Timeout), ms(5000));
        assert_eq!(record.count(), 6);
        assert_eq!(record.succeeded, 1);
        assert_eq!(record.statuses, BTreeMap::from([(200, 1), (409, 1), (503, 2)]));
        assert_eq!(record.failures, BTreeMap::from([(Failure::Timeout, 1)]));
        assert_eq!(record.rejections(), 2);
        assert!(record.rejected.max() <= 2_002, "only the rejections are in their histogram");
        assert!((record.error_rate() - 5.0 / 6.0).abs() < 1e-9);
    }

    #[test]
    fn merged_records_add_up() {
        let mut recording = Recording::default();
        recording.record(Scenario::Read, Outcome::Answered(200), Duration::from_millis(1));
        recording.record(Scenario::Book, Outcome::Answered(500), Duration::from_millis(2));
        recording.record(Scenario::Book, Outcome::Failed(Failure::Unsent), Duration::from_millis(3));
        let total = recording.total();
        assert_eq!((total.count(), total.succeeded, total.errors()), (3, 1, 2));
        assert_eq!(recording.merged([Scenario::Read]).count(), 1);
        assert_eq!(recording.merged([Scenario::Login]).count(), 0);
        assert_eq!(recording.unsent(), 1);
    }
}
