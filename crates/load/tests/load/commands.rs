//! The commands end to end against the fake shop: what `run` and `search` print to their JSON
//! and `.hgrm` files.

use std::process::ExitCode;

use bookstore_load::cli::{Cli, execute};
use bookstore_load::hgrm;
use clap::Parser;
use serde_json::Value;

use crate::fake_shop::{ADMIN_PASSWORD, FakeShop};

fn command(fake: &FakeShop, words: &[&str]) -> Cli {
    let mut args = vec!["bookstore-load"];
    args.extend_from_slice(words);
    args.extend_from_slice(&[
        "--target",
        &fake.address,
        "--admin-password",
        ADMIN_PASSWORD,
        "--customers",
        "2",
    ]);
    Cli::try_parse_from(args).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_writes_its_summary_as_json_and_each_scenarios_histogram_as_hgrm() {
    let fake = FakeShop::start(&[]).await;
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("run.json");
    let hgrm_dir = out.path().join("hgrm");
    let cli = command(
        &fake,
        &[
            "run",
            "--rate",
            "100",
            "--duration",
            "1s",
            "--warmup",
            "0",
            "--mix",
            "read=1,checkout=1",
            "--json",
            json.to_str().unwrap(),
            "--hgrm",
            hgrm_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(execute(cli).await.unwrap(), ExitCode::SUCCESS);

    let summary: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(summary["requests"], 100);
    assert_eq!(summary["total"]["count"], 100);
    assert_eq!(summary["total"]["succeeded"], 100);
    assert_eq!(summary["never_sent"], 0);
    let labels: Vec<&str> =
        summary["scenarios"].as_array().unwrap().iter().map(|s| s["scenario"].as_str().unwrap()).collect();
    assert_eq!(labels, ["read", "checkout"]);
    assert!(summary["total"]["latency_ms"]["p99"].as_f64().unwrap() > 0.0);

    let mut counted = 0;
    for label in ["read", "checkout"] {
        let text = std::fs::read_to_string(hgrm_dir.join(format!("{label}.hgrm"))).unwrap();
        let distribution =
            hgrm::read(&text).unwrap_or_else(|| panic!("{label}.hgrm is a distribution:\n{text}"));
        assert_eq!(
            Some(distribution.total_count),
            summary["scenarios"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["scenario"] == label)
                .and_then(|s| s["count"].as_u64())
        );
        counted += distribution.total_count;
    }
    let total = hgrm::read(&std::fs::read_to_string(hgrm_dir.join("total.hgrm")).unwrap()).unwrap();
    assert_eq!(total.total_count, counted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_reports_its_steps_the_rate_found_and_the_overload_run() {
    let fake = FakeShop::start(&[]).await;
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("search.json");
    // An objective any rate here meets: two steps, 50/s and 100/s, both met.
    let cli = command(
        &fake,
        &[
            "search",
            "--p99",
            "5s",
            "--scenario",
            "read",
            "--mix",
            "read=1",
            "--from",
            "50",
            "--max-steps",
            "2",
            "--step",
            "500ms",
            "--warmup",
            "0",
            "--cooldown",
            "0",
            "--overload",
            "--overload-duration",
            "500ms",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(execute(cli).await.unwrap(), ExitCode::SUCCESS);
    let result: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rates: Vec<f64> =
        result["steps"].as_array().unwrap().iter().map(|s| s["rate_per_sec"].as_f64().unwrap()).collect();
    assert_eq!(rates, [50.0, 100.0]);
    assert_eq!(result["max_rate_per_sec"], 100.0);
    assert_eq!(result["at_max"]["total"]["count"], 50);
    assert_eq!(result["overload"]["rate_per_sec"], 200.0);
    assert_eq!(result["overload"]["run"]["total"]["count"], 100);
    assert!(result["overload"]["goodput_fraction_of_max"].as_f64().unwrap() > 0.5);
}

#[test]
fn an_objective_on_a_scenario_the_mix_does_not_send_is_refused() {
    let cli = Cli::try_parse_from([
        "bookstore-load",
        "search",
        "--p99",
        "5ms",
        "--scenario",
        "checkout",
        "--mix",
        "read=1",
        "--admin-password",
        "x",
    ])
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let error = runtime.block_on(execute(cli)).unwrap_err().to_string();
    assert!(error.contains("checkout") && error.contains("mix"), "{error}");
}

#[test]
fn bad_values_are_refused_before_anything_is_sent() {
    for (flag, value, says) in [
        ("--rate", "fast", "requests a second"),
        ("--duration", "0s", "out of range"),
        ("--mix", "read=1,bogus=1", "unknown scenario \"bogus\""),
        ("--max-in-flight", "0", "1 to 100000"),
    ] {
        let mut args = vec!["bookstore-load", "run", "--admin-password", "x"];
        if flag != "--rate" {
            args.extend(["--rate", "10"]);
        }
        args.extend([flag, value]);
        let error = Cli::try_parse_from(args).unwrap_err().to_string();
        assert!(error.contains(flag) && error.contains(says), "{flag} {value}: {error}");
    }
}
