//! The highest rate that meets a latency objective: short open-loop runs ("steps"), the rate
//! doubled from a starting point until a step misses the objective (or halved until one meets
//! it), then halved intervals between the best rate met and the lowest missed until they are
//! within the precision asked for.
//!
//! A step meets the objective when the chosen scenarios' p99, from intended starts, is at most
//! the target and at most the allowed share of their requests failed. Rejections are failures:
//! a shop that sheds half its load fast has not met a latency objective.

use std::future::Future;
use std::time::Duration;

use crate::input::{Fraction, LatencyObjective, Rate};
use crate::record::Recording;
use crate::scenario::ScenarioSet;

/// What a step must meet.
#[derive(Debug, Clone)]
pub struct Objective {
    pub p99: LatencyObjective,
    /// The scenarios held to it; `None`: every scenario sent.
    pub scenarios: Option<ScenarioSet>,
    /// The largest share of failed requests allowed.
    pub max_errors: Fraction,
}

/// How a step did against the objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// `None` when the step sent none of the objective's scenarios.
    pub p99: Option<Duration>,
    pub error_rate: f64,
    pub met: bool,
}

impl Objective {
    pub fn judge(&self, recording: &Recording) -> Verdict {
        let record = match &self.scenarios {
            Some(set) => recording.merged(set.iter()),
            None => recording.total(),
        };
        let p99 = (record.count() > 0).then(|| Duration::from_micros(record.latency.value_at_quantile(0.99)));
        let error_rate = record.error_rate();
        let met = p99.is_some_and(|p| p <= self.p99.get()) && error_rate <= self.max_errors.get();
        Verdict { p99, error_rate, met }
    }
}

/// Runs one step at a rate.
pub trait Stepper {
    fn step(&mut self, rate: Rate) -> impl Future<Output = anyhow::Result<Recording>>;
}

/// One step's rate and verdict.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub rate: Rate,
    pub verdict: Verdict,
}

/// Where a search ended.
#[derive(Debug, Clone)]
pub struct Found {
    pub steps: Vec<Step>,
    /// The highest rate that met the objective, and its step's recording.
    pub best: Option<(Rate, Recording)>,
}

/// How far a search goes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Stop once the lowest rate missed is within this share above the highest met.
    pub precision: f64,
    pub max_steps: usize,
}

/// Searches from `from` (see the module's documentation); `on_step` hears each step as it ends.
pub async fn search(
    from: Rate,
    objective: &Objective,
    limits: Limits,
    stepper: &mut impl Stepper,
    mut on_step: impl FnMut(&Step),
) -> anyhow::Result<Found> {
    let mut steps = Vec::new();
    let mut best: Option<(Rate, Recording)> = None;
    let mut missed: Option<Rate> = None;
    let mut rate = from;
    while steps.len() < limits.max_steps {
        let recording = stepper.step(rate).await?;
        let verdict = objective.judge(&recording);
        let step = Step { rate, verdict };
        on_step(&step);
        steps.push(step);
        if verdict.met {
            if best.as_ref().is_none_or(|(met, _)| rate > *met) {
                best = Some((rate, recording));
            }
        } else if missed.is_none_or(|m| rate < m) {
            missed = Some(rate);
        }
        let next = match (best.as_ref().map(|(r, _)| *r), missed) {
            (Some(met), None) => met.scaled(2.0),
            (None, Some(missed)) => missed.scaled(0.5),
            (Some(met), Some(missed)) if missed.get() > met.get() * (1.0 + limits.precision) => {
                Rate::per_second((met.get() + missed.get()) / 2.0)
            }
            _ => break,
        };
        // Past the largest rate (every step met) or below the smallest (none did): done.
        let Ok(next) = next else { break };
        rate = next;
    }
    Ok(Found { steps, best })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::{self, Pacing, Plan};
    use crate::input::{MaxInFlight, Pause, RunLength};
    use crate::testing::SlowTarget;

    /// Steps against a fake shop that holds 10 requests at a time for 10 ms each (1000 a second)
    /// and answers 503 at once to any request beyond those 10.
    struct FakeShop {
        target: Arc<SlowTarget>,
    }

    impl Stepper for FakeShop {
        async fn step(&mut self, rate: Rate) -> anyhow::Result<Recording> {
            let plan = Plan {
                rate,
                duration: RunLength::new(Duration::from_secs(2)).unwrap(),
                warmup: Pause::new(Duration::from_millis(200)).unwrap(),
                max_in_flight: MaxInFlight::new(1024).unwrap(),
                timeout: RunLength::new(Duration::from_secs(5)).unwrap(),
                mix: "read=1".parse().unwrap(),
                seed: 3,
                pacing: Pacing::Timer,
            };
            Ok(engine::run(self.target.clone(), &plan).await)
        }
    }

    fn objective(p99_ms: u64) -> Objective {
        Objective {
            p99: LatencyObjective::new(Duration::from_millis(p99_ms)).unwrap(),
            scenarios: Some("read".parse().unwrap()),
            max_errors: Fraction::new(0.01).unwrap(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_search_finds_the_capacity_of_a_shop_that_sheds_above_it() {
        let mut shop =
            FakeShop { target: Arc::new(SlowTarget::with_capacity(Duration::from_millis(10), 10)) };
        let limits = Limits { precision: 0.05, max_steps: 30 };
        let mut heard = 0;
        let found =
            search(Rate::per_second(100.0).unwrap(), &objective(20), limits, &mut shop, |_| heard += 1)
                .await
                .unwrap();
        let (best, recording) = found.best.expect("a rate met the objective");
        assert!((900.0..=1000.0).contains(&best.get()), "found {best}, the capacity is 1000/s");
        assert_eq!(heard, found.steps.len());
        // Doubling from 100 reaches 1600, which misses; halving the gap does the rest.
        let rates: Vec<f64> = found.steps.iter().map(|s| s.rate.get()).collect();
        assert_eq!(rates[..5], [100.0, 200.0, 400.0, 800.0, 1600.0]);
        assert!(!found.steps[4].verdict.met);
        assert!(found.steps.len() < 15, "{} steps", found.steps.len());
        assert_eq!(recording.total().errors(), 0);
        // Above capacity the misses are rejections, which come back at once.
        let above = found.steps.iter().find(|s| !s.verdict.met).unwrap();
        assert!(above.verdict.error_rate > 0.01);
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_above_capacity_halves_down_to_a_rate_that_meets() {
        let mut shop =
            FakeShop { target: Arc::new(SlowTarget::with_capacity(Duration::from_millis(10), 10)) };
        let limits = Limits { precision: 0.05, max_steps: 30 };
        let found = search(Rate::per_second(5000.0).unwrap(), &objective(20), limits, &mut shop, |_| {})
            .await
            .unwrap();
        let rates: Vec<f64> = found.steps.iter().map(|s| s.rate.get()).collect();
        assert_eq!(rates[..3], [5000.0, 2500.0, 1250.0]);
        let (best, _) = found.best.unwrap();
        assert!((900.0..=1000.0).contains(&best.get()), "found {best}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_objective_below_the_service_time_is_met_at_no_rate() {
        let mut shop = FakeShop { target: Arc::new(SlowTarget::new(Duration::from_millis(10))) };
        let limits = Limits { precision: 0.05, max_steps: 30 };
        let found =
            search(Rate::per_second(100.0).unwrap(), &objective(5), limits, &mut shop, |_| {}).await.unwrap();
        assert!(found.best.is_none());
        assert!(found.steps.iter().all(|s| !s.verdict.met));
        assert!(found.steps.last().unwrap().rate.get() < 1.0, "it halved down to the smallest rate");
    }
}
