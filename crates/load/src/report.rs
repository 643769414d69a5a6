//! What a run says, for people and for programs: per scenario and in total, the count, the
//! latency percentiles from the intended start, goodput, errors by status and by kind, and the
//! rejections with their own p99. The same summary prints as a table and serializes as JSON;
//! each scenario's histogram can also be written as a `.hgrm` file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::BufWriter;
use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::engine::Plan;
use crate::hgrm;
use crate::record::{Recording, ScenarioRecord};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latencies {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    pub max: f64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Latencies {
    /// `None` for an empty histogram: no requests, no latency.
    pub fn of(histogram: &Histogram<u64>) -> Option<Self> {
        (!histogram.is_empty()).then(|| Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p99_9: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        })
    }
}

/// One scenario's requests (or all of them, as `total`).
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioSummary {
    pub scenario: String,
    pub count: u64,
    /// Requests answered as the scenario wanted.
    pub succeeded: u64,
    /// Wanted answers a second over the recorded window.
    pub goodput_per_sec: f64,
    /// From each request's intended start; `null` with no requests.
    pub latency_ms: Option<Latencies>,
    /// Unwanted statuses (`"503"`) and failures (`"timeout"`, `"connect"`, ...), with counts.
    pub errors: BTreeMap<String, u64>,
    pub error_rate: f64,
    /// 429 and 503 answers (also in `errors`).
    pub rejections: u64,
    pub rejections_p99_ms: Option<f64>,
}

impl ScenarioSummary {
    pub fn new(label: &str, record: &ScenarioRecord, window_secs: f64) -> Self {
        let mut errors: BTreeMap<String, u64> =
            record.statuses.iter().map(|(status, n)| (status.to_string(), *n)).collect();
        errors.extend(record.failures.iter().map(|(failure, n)| (failure.label().to_owned(), *n)));
        Self {
            scenario: label.to_owned(),
            count: record.count(),
            succeeded: record.succeeded,
            goodput_per_sec: if window_secs > 0.0 { record.succeeded as f64 / window_secs } else { 0.0 },
            latency_ms: Latencies::of(&record.latency),
            errors,
            error_rate: record.error_rate(),
            rejections: record.rejections(),
            rejections_p99_ms: (!record.rejected.is_empty())
                .then(|| ms(record.rejected.value_at_quantile(0.99))),
        }
    }
}

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub target: String,
    pub mix: String,
    pub rate_per_sec: f64,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub max_in_flight: usize,
    /// Requests due in the recorded window: rate × duration.
    pub requests: u64,
    /// Of those, how many found the in-flight cap full when due and were sent late.
    pub held_by_in_flight_cap: u64,
    /// Of those, how many were never sent (the cap still full when the run had had its time).
    pub never_sent: u64,
    /// How late requests were sent after their intended start (part of every latency).
    pub send_lag_ms: Option<Latencies>,
    /// From the window's first intended start to its last answer.
    pub elapsed_secs: f64,
    pub scenarios: Vec<ScenarioSummary>,
    pub total: ScenarioSummary,
}

impl RunSummary {
    pub fn new(target: &str, plan: &Plan, recording: &Recording) -> Self {
        let window = recording.elapsed.as_secs_f64();
        let total = recording.total();
        Self {
            target: target.to_owned(),
            mix: plan.mix.to_string(),
            rate_per_sec: plan.rate.get(),
            duration_secs: plan.duration.get().as_secs_f64(),
            warmup_secs: plan.warmup.get().as_secs_f64(),
            max_in_flight: plan.max_in_flight.get(),
            requests: total.count(),
            held_by_in_flight_cap: recording.held_by_cap,
            never_sent: recording.unsent(),
            send_lag_ms: Latencies::of(&recording.send_lag),
            elapsed_secs: window,
            scenarios: recording
                .scenarios
                .iter()
                .map(|(scenario, record)| ScenarioSummary::new(scenario.label(), record, window))
                .collect(),
            total: ScenarioSummary::new("total", &total, window),
        }
    }

    /// The table printed after a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<9} {:>9} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>7}",
            "scenario",
            "requests",
            "ok",
            "goodput/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "rejected",
            "rej p99",
            "errors"
        );
        for row in self.scenarios.iter().chain([&self.total]) {
            let l = row.latency_ms;
            let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
            let _ = writeln!(
                out,
                "{:<9} {:>9} {:>9} {:>10.1} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>6.2}%",
                row.scenario,
                row.count,
                row.succeeded,
                row.goodput_per_sec,
                cell(l.map(|l| l.p50)),
                cell(l.map(|l| l.p90)),
                cell(l.map(|l| l.p99)),
                cell(l.map(|l| l.p99_9)),
                cell(l.map(|l| l.max)),
                row.rejections,
                cell(row.rejections_p99_ms),
                row.error_rate * 100.0,
            );
        }
        let lag = self.send_lag_ms.map_or_else(String::new, |l| {
            format!("; sent late by p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms", l.p50, l.p99, l.max)
        });
        let _ = writeln!(
            out,
            "\n{} requests due at {}/s over {} s{lag}; {} held back by the in-flight cap ({}), {} never sent; \
             last answer {:.1} s after the first request was due",
            self.requests,
            self.rate_per_sec,
            self.duration_secs,
            self.held_by_in_flight_cap,
            self.max_in_flight,
            self.never_sent,
            self.elapsed_secs
        );
        for row in self.scenarios.iter().filter(|r| !r.errors.is_empty()) {
            let errors: Vec<String> = row.errors.iter().map(|(what, n)| format!("{what} ×{n}")).collect();
            let _ = writeln!(out, "errors, {}: {}", row.scenario, errors.join(", "));
        }
        out
    }
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    serde_json::to_writer_pretty(BufWriter::new(file), value)
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes each scenario's latency histogram, and the total's, as `<dir>/<prefix><scenario>.hgrm`.
pub fn write_hgrm_files(dir: &Path, prefix: &str, recording: &Recording) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let total = recording.total();
    let histograms =
        recording.scenarios.iter().map(|(s, r)| (s.label(), &r.latency)).chain([("total", &total.latency)]);
    for (label, histogram) in histograms {
        let path = dir.join(format!("{prefix}{label}.hgrm"));
        let mut out = Vec::new();
        hgrm::write(histogram, hgrm::MICROS_PER_MILLI, &mut out).expect("writing to memory");
        fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::input::{MaxInFlight, Pause, Rate, RunLength};
    use crate::record::{Failure, Outcome};
    use crate::scenario::Scenario;

    #[test]
    fn the_summary_counts_errors_by_status_and_kind_and_rejections_apart() {
        let plan = Plan {
            rate: Rate::per_second(10.0).unwrap(),
            duration: RunLength::new(Duration::from_secs(2)).unwrap(),
            warmup: Pause::default(),
            max_in_flight: MaxInFlight::new(8).unwrap(),
            timeout: RunLength::new(Duration::from_secs(1)).unwrap(),
            mix: "read=1,checkout=1".parse().unwrap(),
            seed: 0,
            pacing: crate::engine::Pacing::Timer,
        };
        let mut recording = Recording::default();
        let ms = Duration::from_millis;
        for _ in 0..8 {
            recording.record(Scenario::Read, Outcome::Answered(200), ms(4));
        }
        recording.record(Scenario::Read, Outcome::Answered(503), ms(1));
        recording.record(Scenario::Read, Outcome::Failed(Failure::Connect), ms(2));
        recording.record(Scenario::Checkout, Outcome::Answered(201), ms(20));
        recording.record(Scenario::Checkout, Outcome::Answered(429), ms(3));
        recording.elapsed = Duration::from_secs(2);
        let summary = RunSummary::new("http://shop", &plan, &recording);
        let read = &summary.scenarios[0];
        assert_eq!((read.scenario.as_str(), read.count, read.succeeded), ("read", 10, 8));
        assert_eq!(read.errors, BTreeMap::from([("503".to_owned(), 1), ("connect".to_owned(), 1)]));
        assert_eq!(read.rejections, 1);
        assert_eq!(read.rejections_p99_ms, Some(1.0));
        assert_eq!(read.goodput_per_sec, 4.0);
        assert_eq!(summary.total.count, 12);
        assert_eq!(summary.total.rejections, 2);
        let table = summary.table();
        assert!(table.contains("errors, read: 503 ×1, connect ×1"), "{table}");
        assert!(table.lines().any(|l| l.starts_with("total ")), "{table}");
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["scenarios"][1]["errors"]["429"], 1);
        assert_eq!(json["total"]["count"], 12);
        assert!(json["total"]["latency_ms"]["p99.9"].as_f64().unwrap() >= 20.0);
    }
}
