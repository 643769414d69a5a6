//! The command line: `prepare`, `run` and `search`, their options, and what each prints. The
//! table goes to standard output; progress (preparation, each search step) to standard error,
//! so `> results.txt` keeps only the results.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::client::ShopClient;
use crate::engine::{self, Pacing, Plan};
use crate::input::{
    CustomerCount, Fraction, LatencyObjective, MaxInFlight, Pause, Rate, RunLength, Secret, ShopAddress,
};
use crate::record::Recording;
use crate::report::{self, RunSummary};
use crate::scenario::{Mix, Scenario, ScenarioSet};
use crate::search::{self, Limits, Objective, Stepper};
use crate::shop::{self, Preparation, Shop, ShopTarget};

const ABOUT: &str = "An open-loop load generator for the bookstore: requests start at a constant \
rate whatever the answers do, and each is timed from when it was meant to start, so queueing in the \
shop shows in the latencies (no coordinated omission).";

#[derive(Debug, Parser)]
#[command(name = "bookstore-load", version, about = ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sign in as the admin, restock the first 100 books, register and sign in the customers;
    /// `run` and `search` do this first too.
    Prepare(ShopArgs),
    /// One open-loop run at a fixed rate.
    Run(RunArgs),
    /// The highest rate whose p99 meets an objective: doubling, then halving the interval.
    Search(SearchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ShopArgs {
    /// The shop's gateway.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub target: ShopAddress,
    /// The admin account the preparation signs in as.
    #[arg(long, value_name = "NAME", default_value = "admin")]
    pub admin_user: String,
    /// The admin's password; better set in the environment (flags show in process lists).
    #[arg(long, value_name = "PASSWORD", env = "BOOKSTORE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Secret,
    /// Customers to register (or sign in, if they exist) and act as.
    #[arg(long, value_name = "N", default_value = "64")]
    pub customers: CustomerCount,
    /// The customers are <prefix>0, <prefix>1, ...
    #[arg(long, value_name = "PREFIX", default_value = "bench")]
    pub customer_prefix: String,
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Scenario weights: browse, search, book, read, login, checkout.
    #[arg(long, value_name = "WEIGHTS", default_value = Mix::DEFAULT)]
    pub mix: Mix,
    /// The most requests in flight at once (each on its own keep-alive connection); a request
    /// due while this many are in flight waits, and its wait counts in its latency.
    #[arg(long, value_name = "N", default_value = "1024")]
    pub max_in_flight: MaxInFlight,
    /// How long a request may take once sent.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub timeout: RunLength,
    /// The same seed sends the same requests in the same order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also write each scenario's latency histogram (ms) as HdrHistogram's .hgrm text here.
    #[arg(long, value_name = "DIR")]
    pub hgrm: Option<PathBuf>,
}

impl LoadArgs {
    /// A run of these settings at `rate` for `duration` after `warmup`, paced by a thread.
    fn plan(&self, rate: Rate, duration: RunLength, warmup: Pause) -> Plan {
        Plan {
            rate,
            duration,
            warmup,
            max_in_flight: self.max_in_flight,
            timeout: self.timeout,
            mix: self.mix.clone(),
            seed: self.seed,
            pacing: Pacing::Thread,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub shop: ShopArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Requests started a second.
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Rate,
    /// How long the recorded run lasts.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub duration: RunLength,
    /// How long requests are sent, unrecorded, before it.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub warmup: Pause,
}

#[derive(Debug, Clone, Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub shop: ShopArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    /// The latency objective: the p99 (from intended starts) a rate must stay within.
    #[arg(long, value_name = "DURATION")]
    pub p99: LatencyObjective,
    /// The scenarios held to the objective (default: every scenario in the mix).
    #[arg(long, value_name = "SCENARIOS")]
    pub scenario: Option<ScenarioSet>,
    /// The largest share of failed requests (any unwanted status, rejections included) a rate
    /// may have.
    #[arg(long, value_name = "SHARE", default_value = "1%")]
    pub max_errors: Fraction,
    /// The first rate tried.
    #[arg(long, value_name = "PER_SECOND", default_value = "100")]
    pub from: Rate,
    /// How long each step is recorded.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub step: RunLength,
    /// How long each step sends before it records.
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub warmup: Pause,
    /// A pause between steps, for the shop to finish what the last step left (queued events).
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub cooldown: Pause,
    /// Stop when the lowest rate missed is within this share above the highest met.
    #[arg(long, value_name = "SHARE", default_value = "5%")]
    pub precision: Fraction,
    /// The most steps a search takes.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub max_steps: usize,
    /// Then run at twice the rate found, to see how the shop sheds what it cannot serve.
    #[arg(long)]
    pub overload: bool,
    /// How long the overload run is recorded.
    #[arg(long, value_name = "DURATION", default_value = "20s")]
    pub overload_duration: RunLength,
}

/// Parses the command line, runs it, and says how it went.
pub async fn main() -> ExitCode {
    match execute(Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("bookstore-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

pub async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Prepare(shop) => {
            let client = ShopClient::new(&shop.target, 16, std::time::Duration::from_secs(10));
            let (prepared_shop, _) = prepare(&client, &shop).await?;
            println!(
                "{} books to read and order, {} customers signed in, {} search words",
                prepared_shop.books.len(),
                prepared_shop.customers.len(),
                prepared_shop.words.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run(args).await,
        Command::Search(args) => search(args).await,
    }
}

async fn prepare(client: &ShopClient, args: &ShopArgs) -> anyhow::Result<(Shop, shop::Prepared)> {
    let preparation = Preparation {
        admin_username: args.admin_user.clone(),
        admin_password: args.admin_password.clone(),
        customers: args.customers,
        customer_prefix: args.customer_prefix.clone(),
    };
    eprintln!("preparing {}: restocking, registering {} customers...", args.target, args.customers.get());
    let (shop, prepared) = shop::prepare(client, &preparation).await?;
    eprintln!(
        "prepared: {} books restocked, {} customers registered, {} already there, all signed in",
        prepared.restocked, prepared.registered, prepared.existing
    );
    Ok((shop, prepared))
}

fn client_for(shop: &ShopArgs, load: &LoadArgs) -> ShopClient {
    ShopClient::new(&shop.target, load.max_in_flight.get(), load.timeout.get())
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let client = client_for(&args.shop, &args.load);
    let (shop, _) = prepare(&client, &args.shop).await?;
    let checks_out = args.load.mix.weight(Scenario::Checkout) > 0;
    if checks_out && args.warmup.get() + args.duration.get() > shop.token_lifetime {
        eprintln!(
            "note: the run outlasts the customers' tokens ({} s): checkouts after that fail with 401",
            shop.token_lifetime.as_secs()
        );
    }
    let plan = args.load.plan(args.rate, args.duration, args.warmup);
    eprintln!(
        "running {} for {:?} after a {:?} warm-up, mix {}",
        plan.rate,
        plan.duration.get(),
        plan.warmup.get(),
        plan.mix
    );
    let recording = engine::run(Arc::new(ShopTarget { client, shop }), &plan).await;
    let summary = RunSummary::new(args.shop.target.as_str(), &plan, &recording);
    print!("{}", summary.table());
    if let Some(path) = &args.load.json {
        report::write_json(path, &summary)?;
    }
    if let Some(dir) = &args.load.hgrm {
        report::write_hgrm_files(dir, "", &recording)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The search's steps against the shop: each a fresh run with the same options, the
/// customers signed in again when their tokens are past half their life.
struct ShopStepper {
    client: ShopClient,
    shop: Shop,
    plan: Plan,
    cooldown: Pause,
    first: bool,
}

impl ShopStepper {
    async fn run_at(&mut self, rate: Rate, duration: RunLength) -> anyhow::Result<Recording> {
        if !std::mem::take(&mut self.first) {
            tokio::time::sleep(self.cooldown.get()).await;
        }
        if self.shop.tokens_are_stale() {
            shop::sign_in_customers(&self.client, &mut self.shop).await?;
        }
        let plan = Plan { rate, duration, ..self.plan.clone() };
        let target = Arc::new(ShopTarget { client: self.client.clone(), shop: self.shop.clone() });
        Ok(engine::run(target, &plan).await)
    }
}

impl Stepper for ShopStepper {
    async fn step(&mut self, rate: Rate) -> anyhow::Result<Recording> {
        let duration = self.plan.duration;
        self.run_at(rate, duration).await
    }
}

#[derive(Serialize)]
struct StepJson {
    rate_per_sec: f64,
    p99_ms: Option<f64>,
    error_rate: f64,
    met: bool,
}

#[derive(Serialize)]
struct OverloadJson {
    rate_per_sec: f64,
    goodput_per_sec: f64,
    /// Goodput at twice the rate found, over the goodput at the rate found.
    goodput_fraction_of_max: f64,
    rejections: u64,
    rejections_p99_ms: Option<f64>,
    run: RunSummary,
}

#[derive(Serialize)]
struct SearchJson {
    p99_objective_ms: f64,
    scenarios: String,
    max_error_rate: f64,
    steps: Vec<StepJson>,
    max_rate_per_sec: Option<f64>,
    at_max: Option<RunSummary>,
    overload: Option<OverloadJson>,
}

async fn search(args: SearchArgs) -> anyhow::Result<ExitCode> {
    if let Some(set) = &args.scenario
        && let Some(missing) = set.iter().find(|s| args.load.mix.weight(*s) == 0)
    {
        bail!("--scenario names {missing}, which the mix ({}) does not send", args.load.mix);
    }
    if args.precision.get() <= 0.0 {
        bail!("--precision must be above 0");
    }
    let client = client_for(&args.shop, &args.load);
    let (shop, _) = prepare(&client, &args.shop).await?;
    let objective =
        Objective { p99: args.p99, scenarios: args.scenario.clone(), max_errors: args.max_errors };
    let held_to = args.scenario.as_ref().map_or_else(|| args.load.mix.to_string(), ToString::to_string);
    let plan = args.load.plan(args.from, args.step, args.warmup);
    eprintln!(
        "searching for the highest rate with p99 ≤ {:?} and errors ≤ {} ({held_to}), from {}, {:?} steps",
        args.p99.get(),
        args.max_errors,
        args.from,
        args.step.get()
    );
    let mut stepper = ShopStepper { client, shop, plan: plan.clone(), cooldown: args.cooldown, first: true };
    let limits = Limits { precision: args.precision.get(), max_steps: args.max_steps };
    let mut number = 0;
    let found = search::search(args.from, &objective, limits, &mut stepper, |step| {
        number += 1;
        let p99 =
            step.verdict.p99.map_or_else(|| "-".to_owned(), |p| format!("{:.2} ms", p.as_secs_f64() * 1e3));
        eprintln!(
            "step {number:>2}: {:>12}  p99 {p99:>10}  errors {:>6.2}%  {}",
            step.rate.to_string(),
            step.verdict.error_rate * 100.0,
            if step.verdict.met { "met" } else { "missed" }
        );
    })
    .await?;

    let steps = found
        .steps
        .iter()
        .map(|s| StepJson {
            rate_per_sec: s.rate.get(),
            p99_ms: s.verdict.p99.map(|p| p.as_micros() as f64 / 1000.0),
            error_rate: s.verdict.error_rate,
            met: s.verdict.met,
        })
        .collect();
    let mut result = SearchJson {
        p99_objective_ms: args.p99.get().as_micros() as f64 / 1000.0,
        scenarios: held_to,
        max_error_rate: args.max_errors.get(),
        steps,
        max_rate_per_sec: None,
        at_max: None,
        overload: None,
    };
    let Some((best, at_best)) = found.best else {
        println!(
            "no rate from {} down meets p99 ≤ {:?} with errors ≤ {}",
            args.from,
            args.p99.get(),
            args.max_errors
        );
        if let Some(path) = &args.load.json {
            report::write_json(path, &result)?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    let best_plan = Plan { rate: best, ..plan.clone() };
    let at_max = RunSummary::new(args.shop.target.as_str(), &best_plan, &at_best);
    println!("highest rate meeting p99 ≤ {:?} ({}): {best}", args.p99.get(), result.scenarios);
    if found.steps.iter().all(|s| s.verdict.met) {
        println!("(no step missed before --max-steps: the shop may hold more)");
    }
    print!("{}", at_max.table());
    if let Some(dir) = &args.load.hgrm {
        report::write_hgrm_files(dir, "max-", &at_best)?;
    }

    if args.overload {
        let rate = best.scaled(2.0)?;
        eprintln!("overload: {rate} (twice the rate found) for {:?}", args.overload_duration.get());
        let recording = stepper.run_at(rate, args.overload_duration).await?;
        let overload_plan = Plan { rate, duration: args.overload_duration, ..plan };
        let run = RunSummary::new(args.shop.target.as_str(), &overload_plan, &recording);
        let fraction = if at_max.total.goodput_per_sec > 0.0 {
            run.total.goodput_per_sec / at_max.total.goodput_per_sec
        } else {
            0.0
        };
        println!("\noverload: {rate}, twice the rate found");
        print!("{}", run.table());
        let rejections_p99 =
            run.total.rejections_p99_ms.map_or_else(|| "-".to_owned(), |p| format!("{p:.2} ms"));
        println!(
            "goodput {:.1}/s = {fraction:.2} of the {:.1}/s at the rate found; {} rejected (429/503), their p99 {rejections_p99}",
            run.total.goodput_per_sec, at_max.total.goodput_per_sec, run.total.rejections
        );
        if let Some(dir) = &args.load.hgrm {
            report::write_hgrm_files(dir, "overload-", &recording)?;
        }
        result.overload = Some(OverloadJson {
            rate_per_sec: rate.get(),
            goodput_per_sec: run.total.goodput_per_sec,
            goodput_fraction_of_max: fraction,
            rejections: run.total.rejections,
            rejections_p99_ms: run.total.rejections_p99_ms,
            run,
        });
    }
    result.max_rate_per_sec = Some(best.get());
    result.at_max = Some(at_max);
    if let Some(path) = &args.load.json {
        report::write_json(path, &result)?;
    }
    Ok(ExitCode::SUCCESS)
}
