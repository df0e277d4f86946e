//! The `streamer` binary as a process: a `--for` window ends the run with its shards released,
//! SIGTERM finishes the publishes in flight and releases, the health and metrics endpoints answer,
//! and `streamer validate` reports files and fails clearly on unusable ones.

mod common;

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use test_support::{free_port, unique_prefix, EtcdHarness};
use tokio::process::{Child, Command};

const BINARY: &str = env!("CARGO_BIN_EXE_streamer");

/// Starts `streamer run` against `etcd` under `prefix`, logging to `log`.
fn spawn_run(etcd: &EtcdHarness, prefix: &str, port: u16, log: &Path, extra: &[&str]) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(BINARY)
        .arg("run")
        .arg("--csv")
        .arg(testdata(REAL_CSV))
        .args(extra)
        .env("ETCD_ENDPOINTS", etcd.endpoint())
        .env("TELEMETRY_PREFIX", prefix)
        .env("PORT", port.to_string())
        .env("QUEUE_LEASE_TTL", "10s")
        .env("RUST_LOG", "info")
        .env_remove("STREAMER_PASSES")
        .env_remove("STREAMER_FOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn wait_exit(child: &mut Child) -> ExitStatus {
    tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("streamer did not exit on its own")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_for_window_ends_the_run_on_time_with_its_shards_released() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("window");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("streamer.log");
    let started = Instant::now();
    let mut child = spawn_run(
        &etcd,
        &prefix,
        port,
        &log,
        &["--for", "3s", "--interval", "0s", "--rate", "20000"],
    );
    let metrics = wait_streaming(port).await;
    for name in [
        "streamer_rows_read_total",
        "streamer_bad_rows_total",
        "streamer_batches_published_total",
        "streamer_publish_latency_seconds_count",
        "streamer_owned_shards",
    ] {
        assert!(
            metric(&metrics, name).is_some(),
            "{name} missing:\n{metrics}"
        );
    }
    let status = wait_exit(&mut child).await;
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "stopped before the window ended"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("streaming window ended"), "{log}");
    assert!(log.contains("released shards and left"), "{log}");
    assert_exact_and_released(&etcd, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_publishes_and_releases_the_shards() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("sigterm");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("streamer.log");
    let mut child = spawn_run(
        &etcd,
        &prefix,
        port,
        &log,
        &["--interval", "0s", "--rate", "20000"],
    );
    wait_streaming(port).await;
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wait_exit(&mut child).await;
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("received SIGTERM"), "{log}");
    assert!(log.contains("released shards and left"), "{log}");
    assert_exact_and_released(&etcd, &prefix).await;
}

#[tokio::test]
async fn run_refuses_an_unusable_csv_before_touching_etcd() {
    let output = Command::new(BINARY)
        .args(["run", "--csv", "/nonexistent/dcgm.csv"])
        // Nothing listens here: the CSV check must come first.
        .env("ETCD_ENDPOINTS", "http://127.0.0.1:1")
        .env("PORT", free_port().to_string())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("unusable CSV /nonexistent/dcgm.csv"),
        "{stderr}"
    );
}

fn validate(args: &[&str]) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(BINARY)
        .arg("validate")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn validate_summarizes_the_real_csv() {
    let csv = testdata(REAL_CSV);
    let (code, out, err) = validate(&["--csv", csv.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        summary,
        serde_json::json!({
            "rows_total": 2470,
            "rows_ok": 2470,
            "rows_bad": 0,
            "rows_blank": 0,
            "gpus": 247,
            "hosts": 31,
            "metrics": 10,
            "errors": [],
        })
    );
    let (code, out, _) = validate(&["--csv", csv.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert!(out.contains("rows ok:    2470\n"), "{out}");
    assert!(out.contains("gpus:       247\n"), "{out}");
}

#[test]
fn validate_reports_edge_case_files_exactly() {
    let json = |name: &str| {
        let (code, out, err) = validate(&[
            "--csv",
            testdata(name).to_str().unwrap(),
            "--format",
            "json",
        ]);
        assert_eq!(code, Some(0), "{name}: {err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let bad = json("csv-bad-rows.csv");
    assert_eq!(
        (&bad["rows_total"], &bad["rows_ok"], &bad["rows_bad"]),
        (&16.into(), &4.into(), &12.into())
    );
    let lines: Vec<u64> = bad["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 17]);
    assert_eq!(bad["errors"][0]["reason"], "missing value");

    let blank = json("csv-blank-sentinels.csv");
    assert_eq!(
        (&blank["rows_ok"], &blank["rows_blank"], &blank["rows_bad"]),
        (&4.into(), &4.into(), &0.into())
    );
    let crlf = json("csv-crlf-bom.csv");
    assert_eq!((&crlf["rows_ok"], &crlf["gpus"]), (&4.into(), &4.into()));
    let labels = json("csv-labels-only.csv");
    assert_eq!(labels["rows_ok"], 4);
}

#[test]
fn validate_fails_clearly_on_unusable_files() {
    let (code, out, err) = validate(&["--csv", "/nonexistent/dcgm.csv"]);
    assert_eq!(code, Some(2));
    assert_eq!(out, "");
    assert!(
        err.starts_with("error: unusable CSV /nonexistent/dcgm.csv: open CSV"),
        "{err}"
    );

    let missing = testdata("csv-missing-columns.csv");
    let (code, _, err) = validate(&["--csv", missing.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("CSV header lacks required column(s): uuid, value"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "").unwrap();
    let (code, _, err) = validate(&["--csv", empty.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("CSV is empty: no header line"), "{err}");

    let (code, _, err) = validate(&["--csv", dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(2), "a directory is not a CSV: {err}");
}
