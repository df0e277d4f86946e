//! Streamer throughput against a real etcd, next to raw etcd puts of the same bytes in the same
//! run, plus CSV parse rate and the peak memory of streaming (and validating) a generated ~1 GiB
//! CSV. Writes `<target>/bench/streamer.json`. Run with `cargo bench -p streamer`.
//!
//! * `streamer`: passes of the real CSV (2,470 rows) published by one streamer (`in_flight` 4,
//!   batch size 500); samples/s from start to the last shard's last pass.
//! * `raw_puts`: the very event payloads that run left on the queue, written again with plain etcd
//!   puts, 4 in flight: what etcd does with the same bytes without CSV parsing, stamping, encoding,
//!   fencing or queue bookkeeping.
//! * `csv_parse`: rows/s of the CSV reader plus shard routing, as the streamer's reader thread does.
//! * `large_file`: one pass over a generated ~1 GiB CSV (the real rows repeated) with
//!   `/usr/bin/time -v`: wall time, samples/s and peak RSS of `streamer run` and `streamer validate`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::Client;
use etcd_queue::{Queue, QueueConfig};
use function_runtime::Shutdown;
use serde_json::json;
use streamer::{shard_for, Streamer, StreamerConfig, StreamerMetrics};
use telemetry_model::{BatchEvent, DcgmCsvReader, RowOutcome};
use test_support::{
    median, target_dir, testdata, unique_prefix, BenchReport, EtcdHarness, REAL_CSV,
};

const REAL_ROWS: u64 = 2_470;
const IN_FLIGHT: usize = 4;
const LARGE_FILE_BYTES: u64 = 1 << 30;

fn real_csv() -> PathBuf {
    testdata(REAL_CSV)
}

fn queue_config(prefix: &str) -> QueueConfig {
    QueueConfig {
        prefix: prefix.to_string(),
        ..QueueConfig::default()
    }
}

/// Rows/s of reading the real file and routing each row to its shard.
fn csv_parse_rate(copies: usize) -> f64 {
    let started = Instant::now();
    let mut rows = 0u64;
    let mut shards = 0u64;
    for _ in 0..copies {
        for outcome in DcgmCsvReader::open(real_csv()).unwrap() {
            if let RowOutcome::Row(row) = outcome {
                shards += u64::from(shard_for(&row.info.uuid));
                rows += 1;
            }
        }
    }
    std::hint::black_box(shards);
    rows as f64 / started.elapsed().as_secs_f64()
}

struct StreamerRun {
    elapsed: Duration,
    samples: u64,
    transactions: u64,
    payloads: Vec<Vec<u8>>,
}

async fn streamer_run(etcd: &EtcdHarness, passes: u64) -> StreamerRun {
    let prefix = unique_prefix("bench-streamer");
    let config = StreamerConfig {
        passes: Some(passes),
        interval: Duration::ZERO,
        in_flight: IN_FLIGHT,
        member_id: "bench".into(),
        ..StreamerConfig::new(real_csv(), queue_config(&prefix))
    };
    let client = etcd.client().await;
    let started = Instant::now();
    let report = Streamer::new(client.clone(), config, StreamerMetrics::default())
        .run(Shutdown::new())
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report.samples_published, passes * REAL_ROWS);
    let queue = Queue::open(client, queue_config(&prefix)).await.unwrap();
    let mut payloads = Vec::new();
    let mut samples = 0;
    for partition in 0..queue.config().partitions {
        let mut after = 0;
        loop {
            let messages = queue.peek(partition, after, 1_000).await.unwrap();
            let Some(last) = messages.last() else { break };
            after = last.offset;
            for m in messages {
                samples += BatchEvent::from_queue_message(&m.payload)
                    .unwrap()
                    .batch
                    .len() as u64;
                payloads.push(m.payload);
            }
        }
    }
    assert_eq!(samples, report.samples_published);
    StreamerRun {
        elapsed,
        samples,
        transactions: report.transactions,
        payloads,
    }
}

/// Puts every payload under its own key with plain puts, `IN_FLIGHT` at a time.
async fn raw_puts(client: &Client, payloads: &[Vec<u8>]) -> Duration {
    let prefix = unique_prefix("bench-raw");
    let payloads: Arc<Vec<Vec<u8>>> = Arc::new(payloads.to_vec());
    let started = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|worker| {
            let mut client = client.clone();
            let payloads = payloads.clone();
            let prefix = prefix.clone();
            tokio::spawn(async move {
                for (i, payload) in payloads.iter().enumerate().skip(worker).step_by(IN_FLIGHT) {
                    client
                        .put(format!("{prefix}/{i:08}"), payload.clone(), None)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    started.elapsed()
}

/// The real file's rows repeated under one header until the file reaches `bytes`; kept for
/// later runs.
fn large_csv(bytes: u64) -> (PathBuf, u64) {
    let path = target_dir().join("bench-data").join("streamer-1gib.csv");
    let file = std::fs::read(real_csv()).unwrap();
    let header_end = file.iter().position(|&b| b == b'\n').unwrap() + 1;
    let (header, body) = file.split_at(header_end);
    let copies = bytes.div_ceil(body.len() as u64);
    let expected_len = header.len() as u64 + copies * body.len() as u64;
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(expected_len) {
        use std::io::Write;
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        out.write_all(header).unwrap();
        for _ in 0..copies {
            out.write_all(body).unwrap();
        }
        out.flush().unwrap();
    }
    (path, copies * REAL_ROWS)
}

/// Runs `args` under `/usr/bin/time -v`; returns (wall seconds, peak RSS in MiB).
fn timed(binary: &str, args: &[&str], envs: &[(&str, String)]) -> Option<(f64, f64)> {
    if !Path::new("/usr/bin/time").exists() {
        return None;
    }
    let started = Instant::now();
    let output = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(binary)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let wall = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{binary} {args:?} failed:\n{stderr}"
    );
    let kib: f64 = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse().ok())?;
    Some((wall, kib / 1024.0))
}

fn main() {
    // `cargo test --benches` runs this binary without `--bench` to smoke-test it; only a real
    // benchmark run measures everything and writes figures.
    let bench = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let etcd = EtcdHarness::start().await;
        let client = etcd.client().await;
        let (runs, passes) = if bench { (5, 20) } else { (1, 1) };
        let mut report = BenchReport::new("streamer");

        let parse: Vec<f64> = (0..runs).map(|_| csv_parse_rate(if bench { 20 } else { 1 })).collect();
        report.add(json!({
            "name": "csv_parse",
            "rows_per_s": median(&parse),
            "runs": runs,
        }));

        let mut streamed = Vec::new();
        let mut raw = Vec::new();
        let mut shape = (0, 0, 0, 0);
        for _ in 0..runs {
            let run = streamer_run(&etcd, passes).await;
            let bytes: usize = run.payloads.iter().map(Vec::len).sum();
            let raw_elapsed = raw_puts(&client, &run.payloads).await;
            streamed.push((run.samples as f64 / run.elapsed.as_secs_f64(), run.elapsed));
            raw.push((
                run.payloads.len() as f64 / raw_elapsed.as_secs_f64(),
                bytes as f64 / raw_elapsed.as_secs_f64(),
                run.samples as f64 / raw_elapsed.as_secs_f64(),
            ));
            shape = (run.samples, run.payloads.len(), run.transactions, bytes);
        }
        let streamer_rate = median(&streamed.iter().map(|s| s.0).collect::<Vec<_>>());
        let raw_samples_rate = median(&raw.iter().map(|r| r.2).collect::<Vec<_>>());
        report.add(json!({
            "name": "streamer",
            "passes": passes,
            "samples": shape.0,
            "messages": shape.1,
            "transactions": shape.2,
            "payload_bytes": shape.3,
            "in_flight": IN_FLIGHT,
            "samples_per_s": streamer_rate,
            "elapsed_ms": median(&streamed.iter().map(|s| s.1.as_secs_f64() * 1000.0).collect::<Vec<_>>()),
            "runs": runs,
        }));
        report.add(json!({
            "name": "raw_puts",
            "what": "the same event payloads as plain etcd puts, same concurrency",
            "messages": shape.1,
            "payload_bytes": shape.3,
            "in_flight": IN_FLIGHT,
            "puts_per_s": median(&raw.iter().map(|r| r.0).collect::<Vec<_>>()),
            "mb_per_s": median(&raw.iter().map(|r| r.1).collect::<Vec<_>>()) / 1e6,
            "equivalent_samples_per_s": raw_samples_rate,
            "streamer_over_raw": streamer_rate / raw_samples_rate,
            "runs": runs,
        }));

        if bench {
            let (path, rows) = large_csv(LARGE_FILE_BYTES);
            let size = std::fs::metadata(&path).unwrap().len();
            let binary = env!("CARGO_BIN_EXE_streamer");
            let csv = path.to_str().unwrap();
            let validate = timed(binary, &["validate", "--csv", csv, "--format", "json"], &[]);
            let prefix = unique_prefix("bench-large");
            let envs = [
                ("ETCD_ENDPOINTS", etcd.endpoint()),
                ("TELEMETRY_PREFIX", prefix.clone()),
                ("PORT", "0".to_string()),
            ];
            let run = timed(binary, &["run", "--csv", csv, "--passes", "1", "--interval", "0s"], &envs);
            let queue = Queue::open(client.clone(), queue_config(&prefix)).await.unwrap();
            let messages = queue.stored_message_count().await.unwrap();
            report.add(json!({
                "name": "large_file",
                "file_bytes": size,
                "rows": rows,
                "messages": messages,
                "validate_seconds": validate.map(|v| v.0),
                "validate_rows_per_s": validate.map(|v| rows as f64 / v.0),
                "validate_peak_rss_mib": validate.map(|v| v.1),
                "run_seconds": run.map(|r| r.0),
                "run_samples_per_s": run.map(|r| rows as f64 / r.0),
                "run_peak_rss_mib": run.map(|r| r.1),
            }));
            report.write();
        }
    });
}
