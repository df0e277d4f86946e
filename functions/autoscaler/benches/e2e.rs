//! End-to-end benchmark (`make bench-e2e`): the pipeline as a user runs it (release binaries, one
//! etcd member on loopback started here on free ports, one streamer at full speed over the real
//! CSV, 1, 2 and 4 collectors, the gateway), next to raw etcd transactions writing the same bytes
//! and VictoriaMetrics ingesting the same samples, in the same run.
//!
//! * ingest: a fixed number of samples (`E2E_PASSES` passes of the CSV, 400 by default), timed
//!   from the streamer's start until every sample is committed; then every sample is verified
//!   stored through the gateway's API (each GPU holds exactly one sample per pass and metric);
//! * latency at a steady 10,000 samples/s: the collector's `collector_ingest_lag_seconds`
//!   histogram (commit time minus sample time), p50/p99 and the highest bucket reached;
//! * query latency on the stored data: the GPU list, and one GPU's hour at 1 Hz x 10 metrics
//!   (36,000 points, four pages of 10,000 entries, and one page of series) posted to the
//!   collector beforehand;
//! * queue bytes per sample (`streamer_bytes_published_total`), stored bytes per sample (the
//!   store's chunk and registry values), the etcd database size, each process's CPU seconds per
//!   million samples (`/proc/<pid>/stat`) and peak RSS (`VmHWM`).
//!
//! Markdown tables go to stdout; `target/bench/e2e.json` holds the figures. Timings depend on
//! the machine: run it on an idle one.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{get_json, wait_ready, Process};
use etcd_client::{Client, GetOptions, Txn, TxnOp};
use serde_json::{json, Value};
use telemetry_model::{
    BatchEvent, CsvRow, DataEncoding, DcgmCsvReader, GpuInfo, GpuUuid, MetricName, RowOutcome,
    SampleBatch, TimestampMicros,
};
use test_support::{
    build_workspace_binaries, free_port, http_request, median, percentile, target_dir, testdata,
    unique_prefix, wait_until, EtcdHarness, REAL_CSV,
};

const ROWS_PER_PASS: u64 = 2_470;
const METRICS: u64 = 10;
const QUERY_RUNS: usize = 40;
const STEADY_RATE: u64 = 10_000;
const STEADY_FOR: Duration = Duration::from_secs(20);
const RAW_IN_FLIGHT: usize = 8;
const TICKS_PER_SECOND: f64 = 100.0;

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let passes: u64 = std::env::var("E2E_PASSES")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(400);
    let samples = passes * ROWS_PER_PASS;
    eprintln!("building the release binaries");
    let bin = build_workspace_binaries();
    let csv = testdata(REAL_CSV);
    let out_dir = target_dir().join("bench").join("e2e");
    std::fs::create_dir_all(&out_dir).expect("create target/bench/e2e");

    let mut ingest = Vec::new();
    for collectors in [1, 2, 4] {
        eprintln!("ingest: {samples} samples, {collectors} collector(s)");
        ingest.push(ingest_run(&bin, &csv, &out_dir, collectors, passes).await);
    }
    eprintln!("latency at {STEADY_RATE} samples/s");
    let latency = latency_run(&bin, &csv, &out_dir).await;
    let queue_bytes = ingest[0].queue_bytes as f64 / samples as f64;
    eprintln!("raw etcd writing the same bytes");
    let raw = raw_etcd(ingest[0].queue_bytes, ingest[0].messages).await;
    eprintln!("VictoriaMetrics");
    let vm = victoria_metrics(&csv, passes, &out_dir).await;

    let best = &ingest[0];
    let raw_samples_per_s = samples as f64 / raw.seconds;
    let report = json!({
        "samples": samples,
        "ingest_samples_per_s": best.samples_per_s,
        "ingest_vs_raw_etcd": best.samples_per_s / raw_samples_per_s,
        "ingest_vs_victoriametrics": best.samples_per_s / vm.ingest_samples_per_s,
        "ingest_by_collectors": ingest.iter().map(|r| json!({
            "collectors": r.collectors,
            "samples_per_s": r.samples_per_s,
            "seconds": r.seconds,
            "etcd_db_bytes": r.db_bytes,
            "store_bytes_per_sample": r.store_bytes as f64 / samples as f64,
            "cpu_s_per_million": r.cpu.iter().map(|(k, v)| (k.clone(), json!(v / samples as f64 * 1e6))).collect::<serde_json::Map<_, _>>(),
            "peak_rss_mib": r.rss.iter().map(|(k, v)| (k.clone(), json!(*v as f64 / 1024.0))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
        "e2e_latency_ms_p50": latency.p50_ms,
        "e2e_latency_ms_p99": latency.p99_ms,
        "e2e_latency_ms_max_bucket": latency.max_bucket_ms,
        "e2e_latency_samples": latency.samples,
        "query_gpus_ms_p50": best.query_gpus.0,
        "query_gpus_ms_p99": best.query_gpus.1,
        "query_36k_ms_p50": best.query_36k.0,
        "query_36k_ms_p99": best.query_36k.1,
        "query_36k_vs_victoriametrics": best.query_36k.1 / vm.query_36k_ms_p99,
        "query_36k_series_ms_p50": best.query_36k_series.0,
        "query_36k_series_ms_p99": best.query_36k_series.1,
        "query_36k_series_vs_victoriametrics": best.query_36k_series.1 / vm.query_36k_ms_p99,
        "queue_bytes_per_sample": queue_bytes,
        "store_bytes_per_sample": best.store_bytes as f64 / samples as f64,
        "etcd_db_bytes": best.db_bytes,
        "raw_etcd_mb_per_s": raw.bytes as f64 / raw.seconds / 1e6,
        "raw_etcd_samples_per_s": raw_samples_per_s,
        "victoriametrics_ingest_samples_per_s": vm.ingest_samples_per_s,
        "victoriametrics_query_36k_ms_p50": vm.query_36k_ms_p50,
        "victoriametrics_query_36k_ms_p99": vm.query_36k_ms_p99,
    });
    print_tables(&report, &ingest, &raw, &vm, &latency);
    let path = target_dir().join("bench").join("e2e.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).expect("write e2e.json");
    println!("\nwrote {}", path.display());
}

/// What one ingest run measured.
struct IngestRun {
    collectors: usize,
    seconds: f64,
    samples_per_s: f64,
    queue_bytes: u64,
    messages: u64,
    store_bytes: u64,
    db_bytes: u64,
    /// CPU seconds per process kind (the collectors summed).
    cpu: BTreeMap<String, f64>,
    /// Peak RSS in KiB per process kind (the largest collector).
    rss: BTreeMap<String, u64>,
    /// GPU list, p50 and p99 ms.
    query_gpus: (f64, f64),
    /// The 36,000-point window as entry pages, p50 and p99 ms.
    query_36k: (f64, f64),
    /// The same window as one page of series, p50 and p99 ms.
    query_36k_series: (f64, f64),
}

/// Environment of every function: etcd, the prefix, quiet logs.
fn function(bin: &Path, name: &str, etcd: &EtcdHarness, prefix: &str, port: u16) -> Command {
    let mut command = Command::new(bin.join(name));
    command
        .env("ETCD_ENDPOINTS", etcd.endpoint())
        .env("TELEMETRY_PREFIX", prefix)
        .env("RUST_LOG", "warn")
        .env("PORT", port.to_string());
    command
}

fn logged(command: &mut Command, dir: &Path, name: &str) -> Process {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("create log");
    Process::spawn(name, command.stderr(log))
}

/// utime + stime of `pid` in seconds (also readable while it is a zombie, before it is reaped).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of stat(5); after the name, state is field 3.
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(14) + ticks(15)) / TICKS_PER_SECOND
}

/// Peak resident set of `pid` in KiB (0 once it exited).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn metric_sum(ports: &[u16], metric: &str) -> f64 {
    let mut sum = 0.0;
    for port in ports {
        sum += common::scrape(*port, metric).await.unwrap_or(0.0);
    }
    sum
}

async fn ingest_run(
    bin: &Path,
    csv: &Path,
    out: &Path,
    collectors: usize,
    passes: u64,
) -> IngestRun {
    let etcd = EtcdHarness::start_with_args(&["--quota-backend-bytes=8589934592"]).await;
    let prefix = unique_prefix(&format!("e2e-{collectors}"));
    let dir = out.join(format!("ingest-{collectors}"));
    std::fs::create_dir_all(&dir).unwrap();
    let samples = passes * ROWS_PER_PASS;

    let collector_ports: Vec<u16> = (0..collectors).map(|_| free_port()).collect();
    let mut collector_processes: Vec<Process> = collector_ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            logged(
                function(bin, "collector", &etcd, &prefix, *port).arg("run"),
                &dir,
                &format!("collector-{i}"),
            )
        })
        .collect();
    wait_ready(
        "collectors",
        collector_ports.clone(),
        Duration::from_secs(60),
    )
    .await;
    // Every collector owns its partitions before the clock starts.
    let owned = collector_ports.clone();
    wait_until("partitions owned", Duration::from_secs(60), || {
        let owned = owned.clone();
        async move { metric_sum(&owned, "collector_owned_partitions").await >= 16.0 }
    })
    .await;
    let etcd_pid = etcd.pid().expect("etcd runs");
    let etcd_cpu_before = cpu_seconds(etcd_pid);
    let collector_cpu_before: f64 = collector_processes
        .iter()
        .map(|p| cpu_seconds(p.pid()))
        .sum();

    let streamer_port = free_port();
    let started = Instant::now();
    let mut streamer = logged(
        function(bin, "streamer", &etcd, &prefix, streamer_port)
            .arg("run")
            .arg("--csv")
            .arg(csv)
            .args(["--interval", "0s", "--passes", &passes.to_string()]),
        &dir,
        "streamer",
    );
    let mut streamer_rss = 0;
    let mut streamer_bytes = 0.0;
    let mut streamer_messages = 0.0;
    let seconds = loop {
        // Not try_wait: that would reap it, and its CPU times with it.
        if common::alive(streamer.pid()) {
            streamer_rss = streamer_rss.max(peak_rss_kib(streamer.pid()));
            if let Some(bytes) =
                common::scrape(streamer_port, "streamer_bytes_published_total").await
            {
                streamer_bytes = bytes;
            }
            if let Some(m) = common::scrape(streamer_port, "streamer_batches_published_total").await
            {
                streamer_messages = m;
            }
        }
        let persisted = metric_sum(&collector_ports, "collector_samples_persisted_total").await;
        if persisted >= samples as f64 {
            break started.elapsed().as_secs_f64();
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "stuck: {persisted} of {samples} persisted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Waited for without reaping it: a zombie's stat still holds its CPU times.
    let pid = nix::unistd::Pid::from_raw(streamer.pid() as i32);
    tokio::task::spawn_blocking(move || {
        nix::sys::wait::waitid(
            nix::sys::wait::Id::Pid(pid),
            nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT,
        )
    })
    .await
    .unwrap()
    .expect("wait for the streamer");
    let streamer_cpu = cpu_seconds(streamer.pid());
    let status = streamer
        .child
        .wait()
        .expect("streamer exits after its passes");
    assert!(status.success(), "the streamer failed: {status}");

    let mut cpu = BTreeMap::new();
    cpu.insert("streamer".to_string(), streamer_cpu);
    cpu.insert(
        "collectors".to_string(),
        collector_processes
            .iter()
            .map(|p| cpu_seconds(p.pid()))
            .sum::<f64>()
            - collector_cpu_before,
    );
    cpu.insert("etcd".to_string(), cpu_seconds(etcd_pid) - etcd_cpu_before);
    let mut rss = BTreeMap::new();
    rss.insert("streamer".to_string(), streamer_rss);
    rss.insert(
        "collector".to_string(),
        collector_processes
            .iter()
            .map(|p| peak_rss_kib(p.pid()))
            .max()
            .unwrap_or(0),
    );
    rss.insert("etcd".to_string(), peak_rss_kib(etcd_pid));

    let mut client = etcd.client().await;
    let store_bytes = value_bytes(&mut client, &format!("{prefix}/store/")).await;
    let db_bytes = client.status().await.expect("etcd status").db_size() as u64;

    // Queries on the stored data, through the gateway.
    let gateway_port = free_port();
    let _gateway = logged(
        function(bin, "gateway", &etcd, &prefix, gateway_port).arg("run"),
        &dir,
        "gateway",
    );
    wait_ready("gateway", [gateway_port], Duration::from_secs(60)).await;
    verify_stored(gateway_port, passes).await;
    let window = post_hour(collector_ports[0]).await;
    let query_gpus = time_queries(|| async move {
        let list = get_json(&format!("http://127.0.0.1:{gateway_port}/api/v1/gpus"))
            .await
            .expect("GPU list");
        assert_eq!(list["count"], 248, "the CSV's 247 GPUs and the posted one");
    })
    .await;
    let query_36k = time_queries(|| {
        let window = window.clone();
        async move {
            let points = read_window(gateway_port, &window, ENTRY_PAGES).await;
            assert_eq!(points, 36_000);
        }
    })
    .await;
    let query_36k_series = time_queries(|| {
        let window = window.clone();
        async move {
            let points = read_window(gateway_port, &window, SERIES_PAGE).await;
            assert_eq!(points, 36_000);
        }
    })
    .await;
    for p in &mut collector_processes {
        assert!(p.terminate(), "{} did not stop cleanly", p.name);
    }
    let samples_per_s = samples as f64 / seconds;
    eprintln!("  {samples_per_s:.0} samples/s over {seconds:.2} s");
    IngestRun {
        collectors,
        seconds,
        samples_per_s,
        queue_bytes: streamer_bytes as u64,
        messages: streamer_messages as u64,
        store_bytes,
        db_bytes,
        cpu,
        rss,
        query_gpus,
        query_36k,
        query_36k_series,
    }
}

/// Sum of the value sizes under `prefix`, read in pages.
async fn value_bytes(client: &mut Client, prefix: &str) -> u64 {
    let mut from = prefix.as_bytes().to_vec();
    let mut range_end = prefix.as_bytes().to_vec();
    *range_end.last_mut().unwrap() += 1;
    let mut total = 0u64;
    loop {
        let page = client
            .get(
                from.clone(),
                Some(
                    GetOptions::new()
                        .with_range(range_end.clone())
                        .with_limit(500),
                ),
            )
            .await
            .expect("read the store");
        for kv in page.kvs() {
            total += kv.value().len() as u64;
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return total,
        }
    }
}

/// Every GPU of the CSV holds exactly `passes` samples of each of its metrics.
async fn verify_stored(gateway: u16, passes: u64) {
    let list = get_json(&format!("http://127.0.0.1:{gateway}/api/v1/gpus"))
        .await
        .expect("GPU list");
    let gpus = list["gpus"].as_array().expect("gpus").clone();
    assert_eq!(gpus.len(), 247);
    let mut total = 0u64;
    for gpu in gpus {
        let uuid = gpu["uuid"].as_str().unwrap();
        let mut per_metric: BTreeMap<String, u64> = BTreeMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!(
                "http://127.0.0.1:{gateway}/api/v1/gpus/{uuid}/telemetry?start_time=0&limit=10000"
            );
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page = get_json(&url).await.expect("telemetry page");
            for entry in page["entries"].as_array().unwrap() {
                *per_metric
                    .entry(entry["metric_name"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(per_metric.len() as u64, METRICS, "{uuid}: {per_metric:?}");
        for (metric, n) in &per_metric {
            assert_eq!(*n, passes, "{uuid} {metric}");
            total += n;
        }
    }
    assert_eq!(total, passes * ROWS_PER_PASS, "every sample stored once");
}

/// The 36,000-point window: one GPU, one hour ending a minute ago, 1 Hz x 10 metrics.
#[derive(Clone)]
struct Window {
    uuid: String,
    start_s: i64,
    end_s: i64,
}

/// The hour's samples of one GPU, as the real CSV's first GPU with its ten metrics.
fn hour_batches() -> (Window, Vec<SampleBatch>) {
    let rows = csv_rows(&testdata(REAL_CSV));
    let first = rows[0].info.clone();
    let metrics: Vec<&CsvRow> = rows.iter().filter(|r| r.info.uuid == first.uuid).collect();
    assert_eq!(metrics.len() as u64, METRICS);
    let mut info = first.clone();
    info.uuid = GpuUuid::parse("GPU-e2e-window-0000").unwrap();
    let end_s = TimestampMicros::now().0 / 1_000_000 - 60;
    let start_s = end_s - 3_599;
    let mut batches = Vec::new();
    for minute in 0..60 {
        let mut builder = SampleBatch::builder();
        for second in 0..60 {
            let t = start_s + minute * 60 + second;
            for row in &metrics {
                builder.push(
                    &info,
                    &row.metric,
                    TimestampMicros(t * 1_000_000),
                    row.value,
                );
            }
        }
        batches.push(builder.build());
    }
    let window = Window {
        uuid: info.uuid.as_str().to_owned(),
        start_s,
        end_s,
    };
    (window, batches)
}

fn csv_rows(csv: &Path) -> Vec<CsvRow> {
    DcgmCsvReader::open(csv)
        .expect("open the CSV")
        .filter_map(|o| match o {
            RowOutcome::Row(row) => Some(row),
            _ => None,
        })
        .collect()
}

/// Posts the window's samples to the collector's `POST /` (stored idempotently).
async fn post_hour(collector: u16) -> Window {
    let (window, batches) = hour_batches();
    for (i, batch) in batches.into_iter().enumerate() {
        let event = BatchEvent::new(format!("e2e-window-{i}"), "/bench/e2e", batch);
        let body = event.to_json_with(DataEncoding::Columnar);
        let response = http_request(
            "POST",
            &format!("http://127.0.0.1:{collector}/"),
            &[("content-type", "application/cloudevents+json")],
            body,
        )
        .await
        .expect("post the window");
        assert_eq!(response.status, 200, "{}", response.text());
    }
    window
}

/// The window as the entry list, in pages of 10,000 entries.
const ENTRY_PAGES: &str = "limit=10000";
/// The window as series, one page of 3,600 points per metric.
const SERIES_PAGE: &str = "format=series&limit=3600";

/// Reads the whole window through the gateway in the `shape` given (the query parameters of
/// [`ENTRY_PAGES`] or [`SERIES_PAGE`]), following the cursor; returns the points read.
async fn read_window(gateway: u16, window: &Window, shape: &str) -> usize {
    let mut points = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!(
            "http://127.0.0.1:{gateway}/api/v1/gpus/{}/telemetry?start_time={}&end_time={}&{shape}",
            window.uuid, window.start_s, window.end_s
        );
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = get_json(&url).await.expect("window page");
        points += match page["series"].as_array() {
            Some(series) => series
                .iter()
                .map(|s| s["values"].as_array().unwrap().len())
                .sum(),
            None => page["entries"].as_array().unwrap().len(),
        };
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return points,
        }
    }
}

/// p50 and p99 in ms of `QUERY_RUNS` runs of `query` (after two warm-up runs).
async fn time_queries<F, Fut>(mut query: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..2 {
        query().await;
    }
    let mut ms = Vec::with_capacity(QUERY_RUNS);
    for _ in 0..QUERY_RUNS {
        let started = Instant::now();
        query().await;
        ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    (median(&ms), percentile(&ms, 99.0))
}

/// The collector's ingest lag at a steady rate.
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    max_bucket_ms: f64,
    samples: u64,
}

async fn latency_run(bin: &Path, csv: &Path, out: &Path) -> Latency {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("e2e-latency");
    let dir = out.join("latency");
    std::fs::create_dir_all(&dir).unwrap();
    let collector_port = free_port();
    let _collector = logged(
        function(bin, "collector", &etcd, &prefix, collector_port).arg("run"),
        &dir,
        "collector",
    );
    wait_ready("collector", [collector_port], Duration::from_secs(60)).await;
    let streamer_port = free_port();
    let mut streamer = logged(
        function(bin, "streamer", &etcd, &prefix, streamer_port)
            .arg("run")
            .arg("--csv")
            .arg(csv)
            .args(["--interval", "0s", "--rate", &STEADY_RATE.to_string()])
            .args(["--for", &format!("{}s", STEADY_FOR.as_secs())]),
        &dir,
        "streamer",
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = streamer.child.wait();
        (streamer, status)
    })
    .await
    .unwrap();
    assert!(status.1.expect("streamer").success(), "the streamer failed");
    // Everything published is committed once the lag's count stops growing.
    let mut last = -1.0;
    let text = loop {
        let text = metrics_text(collector_port).await;
        let count = histogram(&text, "collector_ingest_lag_seconds")
            .last()
            .map_or(0.0, |(_, c)| *c);
        if count == last && count > 0.0 {
            break text;
        }
        last = count;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let buckets = histogram(&text, "collector_ingest_lag_seconds");
    let total = buckets.last().map_or(0.0, |(_, c)| *c);
    Latency {
        p50_ms: quantile(&buckets, 0.5) * 1e3,
        p99_ms: quantile(&buckets, 0.99) * 1e3,
        max_bucket_ms: buckets
            .iter()
            .find(|(_, c)| *c >= total)
            .map_or(f64::INFINITY, |(le, _)| *le * 1e3),
        samples: total as u64,
    }
}

async fn metrics_text(port: u16) -> String {
    http_request(
        "GET",
        &format!("http://127.0.0.1:{port}/metrics"),
        &[],
        Vec::new(),
    )
    .await
    .expect("metrics")
    .text()
}

/// Cumulative `(le, count)` buckets of a histogram in a metrics page, `+Inf` last.
fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The `q` quantile of cumulative buckets, interpolated linearly inside its bucket.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |(_, c)| *c);
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let within = if count > lower.1 {
                (rank - lower.1) / (count - lower.1)
            } else {
                0.0
            };
            return lower.0 + (le - lower.0) * within;
        }
        lower = (le, count);
    }
    lower.0
}

/// Raw etcd writing `bytes` in `messages` values, `RAW_IN_FLIGHT` transactions in flight.
struct Raw {
    bytes: u64,
    seconds: f64,
}

async fn raw_etcd(bytes: u64, messages: u64) -> Raw {
    let etcd = EtcdHarness::start_with_args(&["--quota-backend-bytes=8589934592"]).await;
    let client = etcd.client().await;
    let messages = messages.max(1);
    let size = (bytes / messages).max(1) as usize;
    // As many values per transaction as a publish carries at most (~1 MiB, 64 values).
    let per_txn = (1024 * 1024 / size).clamp(1, 64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..RAW_IN_FLIGHT {
        let mut client = client.clone();
        let value = vec![b'x'; size];
        tasks.push(tokio::spawn(async move {
            let mine: Vec<u64> = (task as u64..messages).step_by(RAW_IN_FLIGHT).collect();
            for chunk in mine.chunks(per_txn) {
                let ops: Vec<TxnOp> = chunk
                    .iter()
                    .map(|i| TxnOp::put(format!("/raw/{i:020}"), value.clone(), None))
                    .collect();
                client.txn(Txn::new().and_then(ops)).await.expect("raw txn");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Raw {
        bytes: size as u64 * messages,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// VictoriaMetrics ingesting the same samples (Prometheus text import) and answering the same
/// window (raw export of the GPU's series over the hour).
struct Vm {
    ingest_samples_per_s: f64,
    query_36k_ms_p50: f64,
    query_36k_ms_p99: f64,
}

fn victoria_metrics_binary() -> PathBuf {
    let installed = PathBuf::from("/usr/bin/victoria-metrics");
    if !installed.exists() {
        eprintln!("installing victoria-metrics (apt-get)");
        let status = Command::new("apt-get")
            .args(["install", "-y", "victoria-metrics"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        assert!(
            status.is_ok_and(|s| s.success()) && installed.exists(),
            "VictoriaMetrics is missing: run `apt-get install -y victoria-metrics` as root"
        );
    }
    installed
}

/// One sample in the Prometheus text format, with the labels a DCGM exporter gives it.
fn prometheus_line(out: &mut String, info: &GpuInfo, metric: &MetricName, value: f64, ts_ms: i64) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "{}{{UUID=\"{}\",Hostname=\"{}\",gpu=\"{}\",modelName=\"{}\"}} {} {}",
        metric.as_str(),
        info.uuid.as_str(),
        info.hostname.as_deref().unwrap_or(""),
        info.gpu_index.unwrap_or(0),
        info.model_name.as_deref().unwrap_or(""),
        value,
        ts_ms
    );
}

async fn victoria_metrics(csv: &Path, passes: u64, out: &Path) -> Vm {
    let binary = victoria_metrics_binary();
    let data = tempfile::tempdir().expect("VictoriaMetrics data dir");
    let port = free_port();
    let log = std::fs::File::create(out.join("victoria-metrics.log")).unwrap();
    let _vm = Process::spawn(
        "victoria-metrics",
        Command::new(binary)
            .arg(format!("-storageDataPath={}", data.path().display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg("-retentionPeriod=10y")
            .stderr(log),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_until("VictoriaMetrics", Duration::from_secs(60), || {
        let url = format!("{base}/health");
        async move {
            http_request("GET", &url, &[], Vec::new())
                .await
                .is_ok_and(|r| r.status == 200)
        }
    })
    .await;

    // The same samples: every pass of the CSV, one millisecond apart, in bodies of ~20,000 lines
    // prepared before the clock starts.
    let rows = csv_rows(csv);
    let t0 = TimestampMicros::now().0 / 1_000 - (passes as i64 * ROWS_PER_PASS as i64) - 7_200_000;
    let mut bodies = Vec::new();
    let mut body = String::new();
    let mut lines = 0;
    let mut ts = t0;
    for _ in 0..passes {
        for row in &rows {
            prometheus_line(&mut body, &row.info, &row.metric, row.value, ts);
            ts += 1;
            lines += 1;
            if lines % 20_000 == 0 {
                bodies.push(std::mem::take(&mut body));
            }
        }
    }
    bodies.push(body);
    let samples = lines as f64;
    let started = Instant::now();
    let mut posts = Vec::new();
    for body in bodies {
        let url = format!("{base}/api/v1/import/prometheus");
        posts.push(tokio::spawn(async move {
            let r = http_request("POST", &url, &[], body.into_bytes())
                .await
                .expect("import");
            assert_eq!(r.status, 204, "{}", r.text());
        }));
        if posts.len() >= 4 {
            posts.remove(0).await.unwrap();
        }
    }
    for p in posts {
        p.await.unwrap();
    }
    flush_vm(&base).await;
    let seconds = started.elapsed().as_secs_f64();
    let count_url = format!(
        "{base}/api/v1/query?query={}",
        query_escape(r#"sum(count_over_time({UUID!=""}[1d]))"#)
    );
    let counted = http_request("GET", &count_url, &[], Vec::new())
        .await
        .expect("count the samples");
    assert_eq!(counted.status, 200, "{}", counted.text());
    let stored: f64 = counted.json()["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no count: {}", counted.text()));
    assert_eq!(stored, samples, "VictoriaMetrics stored every sample");

    // The window: the same GPU hour at 1 Hz x 10 metrics.
    let (window, batches) = hour_batches();
    let mut body = String::new();
    for batch in &batches {
        for (info, metric, ts, value) in batch.samples() {
            prometheus_line(&mut body, info, metric, value, ts.0 / 1_000);
        }
    }
    let r = http_request(
        "POST",
        &format!("{base}/api/v1/import/prometheus"),
        &[],
        body.into_bytes(),
    )
    .await
    .expect("import the window");
    assert_eq!(r.status, 204);
    flush_vm(&base).await;
    let export = format!(
        "{base}/api/v1/export?match%5B%5D={}&start={}&end={}",
        query_escape(&format!(r#"{{UUID="{}"}}"#, window.uuid)),
        window.start_s,
        window.end_s
    );
    let (p50, p99) = time_queries(|| {
        let export = export.clone();
        async move {
            let r = http_request("GET", &export, &[], Vec::new())
                .await
                .expect("export");
            let points: usize = r
                .text()
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["values"]
                        .as_array()
                        .unwrap()
                        .len()
                })
                .sum();
            assert_eq!(points, 36_000);
        }
    })
    .await;
    Vm {
        ingest_samples_per_s: samples / seconds,
        query_36k_ms_p50: p50,
        query_36k_ms_p99: p99,
    }
}

/// `text` percent-encoded for a query string (PromQL selectors hold characters a URI may not).
fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Makes what was imported searchable now instead of within a second or so.
async fn flush_vm(base: &str) {
    let r = http_request(
        "GET",
        &format!("{base}/internal/force_flush"),
        &[],
        Vec::new(),
    )
    .await
    .expect("force_flush");
    assert_eq!(r.status, 200);
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}", a / b)
}

fn print_tables(report: &Value, ingest: &[IngestRun], raw: &Raw, vm: &Vm, latency: &Latency) {
    let samples = report["samples"].as_f64().unwrap();
    let raw_sps = report["raw_etcd_samples_per_s"].as_f64().unwrap();
    println!("\n### Ingest ({samples} samples, every one verified stored)\n");
    println!("| collectors | samples/s | vs raw etcd | vs VictoriaMetrics | seconds |");
    println!("|---|---|---|---|---|");
    for r in ingest {
        println!(
            "| {} | {:.0} | {} | {} | {:.2} |",
            r.collectors,
            r.samples_per_s,
            ratio(r.samples_per_s, raw_sps),
            ratio(r.samples_per_s, vm.ingest_samples_per_s),
            r.seconds
        );
    }
    println!(
        "| raw etcd, same bytes | {:.0} | 1.00 | | {:.2} ({:.0} MB/s) |",
        raw_sps,
        raw.seconds,
        raw.bytes as f64 / raw.seconds / 1e6
    );
    println!(
        "| VictoriaMetrics | {:.0} | | 1.00 | |",
        vm.ingest_samples_per_s
    );
    println!("\n### Resources per run (CPU seconds per million samples, peak RSS MiB)\n");
    println!("| collectors | streamer CPU | collectors CPU | etcd CPU | streamer RSS | collector RSS | etcd RSS | etcd DB MiB |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in ingest {
        let cpu = |k: &str| r.cpu.get(k).copied().unwrap_or(0.0) / samples * 1e6;
        let rss = |k: &str| r.rss.get(k).copied().unwrap_or(0) as f64 / 1024.0;
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.collectors,
            cpu("streamer"),
            cpu("collectors"),
            cpu("etcd"),
            rss("streamer"),
            rss("collector"),
            rss("etcd"),
            r.db_bytes as f64 / 1048576.0
        );
    }
    println!("\n### Bytes per sample\n");
    println!("| queue | store |");
    println!("|---|---|");
    println!(
        "| {:.2} | {:.2} |",
        report["queue_bytes_per_sample"].as_f64().unwrap(),
        report["store_bytes_per_sample"].as_f64().unwrap()
    );
    println!(
        "\n### End-to-end latency at {STEADY_RATE} samples/s ({} samples)\n",
        latency.samples
    );
    println!("| p50 ms | p99 ms | max (bucket bound) ms |");
    println!("|---|---|---|");
    println!(
        "| {:.1} | {:.1} | {:.0} |",
        latency.p50_ms, latency.p99_ms, latency.max_bucket_ms
    );
    println!("\n### Queries (1 collector run's data, {QUERY_RUNS} runs)\n");
    println!("| query | p50 ms | p99 ms | VictoriaMetrics p50 ms | p99 ms | ratio p99 |");
    println!("|---|---|---|---|---|---|");
    let r = &ingest[0];
    println!(
        "| GPU list | {:.2} | {:.2} | | | |",
        r.query_gpus.0, r.query_gpus.1
    );
    println!(
        "| one GPU, 1 h, 36,000 points | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
        r.query_36k.0,
        r.query_36k.1,
        vm.query_36k_ms_p50,
        vm.query_36k_ms_p99,
        ratio(r.query_36k.1, vm.query_36k_ms_p99)
    );
    println!(
        "| one GPU, 1 h, 36,000 points as series (`format=series`) | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
        r.query_36k_series.0,
        r.query_36k_series.1,
        vm.query_36k_ms_p50,
        vm.query_36k_ms_p99,
        ratio(r.query_36k_series.1, vm.query_36k_ms_p99)
    );
}
