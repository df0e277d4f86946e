//! Gateway latency under load, over real HTTP against a real etcd: listing the 247 GPUs of the real
//! data set, reading one GPU's telemetry over a 1 h window at 1 Hz for 10 metrics (36,000
//! entries) in pages of 10,000 and as one page of series (`format=series`), and the first page of
//! 1,000 entries (oldest and newest) of a GPU with 24 h at 1 Hz for 10 metrics (864,000 entries
//! in chunks of 1,200, as the collector seals them). A fixed number of client tasks send requests
//! back to back for a fixed time; requests/s, p50 and p99 go to `target/bench/gateway.json`.
//!
//! `GATEWAY_BENCH_SECONDS` (default 5) and `GATEWAY_BENCH_CONCURRENCY` (default 4) tune the load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Request, StatusCode};
use function_runtime::{EtcdConfig, Shutdown};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use telemetry_model::{GpuInfo, GpuUuid, MetricName, SampleBatch, TimestampMicros};
use telemetry_store::{group_by_gpu, ChunkTag, StoreConfig, TelemetryStore};
use test_support::{millis, percentile, unique_prefix, BenchReport, EtcdHarness};

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

const BENCH_GPU: &str = "GPU-bench-1h-1hz";
const WINDOW_SECONDS: i64 = 3600;
const METRICS: usize = 10;
const PAGE: usize = 10_000;
const DAY_GPU: &str = "GPU-bench-24h-1hz";
const DAY_SECONDS: i64 = 24 * 3600;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn get(client: &HttpClient, url: &str) -> (StatusCode, Bytes) {
    let response = client
        .request(Request::get(url).body(Empty::new()).expect("valid request"))
        .await
        .expect("HTTP request");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("read body")
        .to_bytes();
    (status, body)
}

/// The tag of the chunks one bench write stores, named like an event posted over HTTP.
fn bench_event(id: &str) -> ChunkTag<'_> {
    ChunkTag::Event {
        source: "/bench",
        id,
    }
}

/// Stores 1 h of 1 Hz samples of 10 metrics for one GPU, ending `end` (µs). Returns the window.
async fn fill_bench_gpu(store: &TelemetryStore, end: i64) -> (i64, i64) {
    let info = GpuInfo::new(GpuUuid::parse(BENCH_GPU).unwrap());
    let metrics: Vec<MetricName> = (0..METRICS)
        .map(|m| MetricName::parse(&format!("DCGM_FI_BENCH_METRIC_{m}")).unwrap())
        .collect();
    let start = end - (WINDOW_SECONDS - 1) * 1_000_000;
    // Ten-minute slices keep each write well inside etcd's request size.
    for slice in 0..6 {
        let mut builder = SampleBatch::builder();
        for second in slice * 600..(slice + 1) * 600 {
            let at = TimestampMicros(start + second * 1_000_000);
            for (m, metric) in metrics.iter().enumerate() {
                let value = ((second * 7 + m as i64 * 13) % 100) as f64;
                builder.push(&info, metric, at, value);
            }
        }
        let batch = builder.build();
        store
            .write_idempotent(
                bench_event(&format!("bench-{slice}")),
                &group_by_gpu([&batch]),
            )
            .await
            .expect("store bench samples");
    }
    (start, end)
}

/// Stores 24 h of 1 Hz samples of 10 metrics for [`DAY_GPU`], ending at `end`, in chunks of 1,200
/// samples (two minutes), the size the collector seals. Returns the window.
async fn fill_day_gpu(store: &TelemetryStore, end: i64) -> (i64, i64) {
    let info = GpuInfo::new(GpuUuid::parse(DAY_GPU).unwrap());
    let metrics: Vec<MetricName> = (0..METRICS)
        .map(|m| MetricName::parse(&format!("DCGM_FI_BENCH_METRIC_{m}")).unwrap())
        .collect();
    let start = end - (DAY_SECONDS - 1) * 1_000_000;
    for slice in 0..DAY_SECONDS / 120 {
        let mut builder = SampleBatch::builder();
        for second in slice * 120..(slice + 1) * 120 {
            let at = TimestampMicros(start + second * 1_000_000);
            for (m, metric) in metrics.iter().enumerate() {
                builder.push(&info, metric, at, ((second + m as i64) % 100) as f64);
            }
        }
        store
            .write_idempotent(
                bench_event(&format!("day-{slice}")),
                &group_by_gpu([&builder.build()]),
            )
            .await
            .expect("store bench samples");
    }
    (start, end)
}

/// Stores three passes over the real CSV (247 GPUs), one second apart, ending `end`.
async fn fill_real_csv(store: &TelemetryStore, end: i64) {
    let csv = test_support::testdata(test_support::REAL_CSV);
    gateway::seed::seed_from_csv(store, &csv, 3, Duration::from_secs(1), TimestampMicros(end))
        .await
        .expect("seed the real CSV");
}

/// Runs `concurrency` tasks, each requesting `urls` in turn (one "operation" is the whole list,
/// e.g. every page of a window), until `duration` has passed. Returns per-operation latencies.
async fn load(
    client: &HttpClient,
    urls: Arc<Vec<String>>,
    concurrency: usize,
    duration: Duration,
) -> (Vec<f64>, Duration, usize) {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let urls = urls.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut bytes = 0;
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    for url in urls.iter() {
                        let (status, body) = get(&client, url).await;
                        assert_eq!(status, StatusCode::OK, "{url}");
                        bytes = body.len();
                    }
                    latencies.push(millis(begun.elapsed()));
                }
                (latencies, bytes)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut bytes = 0;
    for task in tasks {
        let (latencies, b) = task.await.expect("load task");
        all.extend(latencies);
        bytes = bytes.max(b);
    }
    (all, started.elapsed(), bytes)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let seconds = env_number("GATEWAY_BENCH_SECONDS", 5);
    let concurrency = env_number("GATEWAY_BENCH_CONCURRENCY", 4) as usize;
    let duration = Duration::from_secs(seconds);

    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("gateway-bench");
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: prefix.clone(),
            // The 24 h GPU's oldest bucket must not expire while the bench runs.
            retention: Duration::from_secs(48 * 3600),
            ..StoreConfig::default()
        },
    );
    let now = TimestampMicros::now().0 / 1_000_000 * 1_000_000;
    let (start, end) = fill_bench_gpu(&store, now - 60_000_000).await;
    let (day_start, day_end) = fill_day_gpu(&store, now - 60_000_000).await;
    fill_real_csv(&store, now).await;

    let shutdown = Shutdown::new();
    let config = gateway::Config {
        etcd: EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            prefix: prefix.clone(),
            ..EtcdConfig::default()
        },
        ..gateway::Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let server = {
        let shutdown = shutdown.clone();
        tokio::spawn(gateway::run(config, listener, async move {
            shutdown.wait().await
        }))
    };
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&client, &format!("{base}/readyz")).await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "gateway never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The pages of the window, found by following next_cursor once.
    let window = format!(
        "{base}/api/v1/gpus/{BENCH_GPU}/telemetry?start_time={}&end_time={}&limit={PAGE}",
        TimestampMicros(start).to_rfc3339(),
        TimestampMicros(end).to_rfc3339()
    );
    let mut pages = vec![window.clone()];
    let mut entries = 0;
    loop {
        let (status, body) = get(&client, pages.last().unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let page: Value = serde_json::from_slice(&body).unwrap();
        entries += page["count"].as_u64().unwrap();
        match page["next_cursor"].as_str() {
            Some(cursor) => pages.push(format!("{window}&cursor={cursor}")),
            None => break,
        }
    }
    assert_eq!(entries, WINDOW_SECONDS as u64 * METRICS as u64);
    // The whole window as one page of series: 3,600 points for each of the 10 metrics.
    let series_window = format!(
        "{base}/api/v1/gpus/{BENCH_GPU}/telemetry?start_time={}&end_time={}&format=series&limit={WINDOW_SECONDS}",
        TimestampMicros(start).to_rfc3339(),
        TimestampMicros(end).to_rfc3339()
    );
    let (status, body) = get(&client, &series_window).await;
    assert_eq!(status, StatusCode::OK);
    let series: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(series["count"], entries);
    assert_eq!(series["series"].as_array().unwrap().len(), METRICS);
    assert_eq!(series["next_cursor"], Value::Null);
    let (status, body) = get(&client, &format!("{base}/api/v1/gpus")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["count"],
        249
    );
    let day_window = format!(
        "{base}/api/v1/gpus/{DAY_GPU}/telemetry?start_time={}&end_time={}&limit=1000",
        TimestampMicros(day_start).to_rfc3339(),
        TimestampMicros(day_end).to_rfc3339()
    );
    for order in ["asc", "desc"] {
        let (status, body) = get(&client, &format!("{day_window}&order={order}")).await;
        assert_eq!(status, StatusCode::OK);
        let page: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(page["count"], 1000, "{order}");
        let expected_first = if order == "asc" { day_start } else { day_end };
        assert_eq!(
            page["entries"][0]["timestamp"],
            TimestampMicros(expected_first).to_rfc3339(),
            "{order}"
        );
    }

    let scenarios: Vec<(&str, Vec<String>, u64)> = vec![
        ("list_gpus", vec![format!("{base}/api/v1/gpus")], 249),
        (
            "telemetry_first_page_10k",
            vec![pages[0].clone()],
            PAGE as u64,
        ),
        ("telemetry_1h_window_all_pages", pages.clone(), entries),
        (
            "telemetry_1h_window_series_one_page",
            vec![series_window.clone()],
            entries,
        ),
        (
            "telemetry_1h_window_step_1m_avg",
            vec![format!("{window}&step=1m&agg=avg")],
            60 * METRICS as u64,
        ),
        (
            "telemetry_24h_window_first_page_1k_asc",
            vec![format!("{day_window}&order=asc")],
            1000,
        ),
        (
            "telemetry_24h_window_first_page_1k_desc",
            vec![format!("{day_window}&order=desc")],
            1000,
        ),
    ];
    let mut report = BenchReport::new("gateway");
    for (name, urls, items) in scenarios {
        let requests_per_operation = urls.len();
        // A short warm-up so connections exist and caches are filled before measuring.
        load(
            &client,
            Arc::new(urls.clone()),
            concurrency,
            Duration::from_millis(300),
        )
        .await;
        let (latencies, elapsed, bytes) =
            load(&client, Arc::new(urls), concurrency, duration).await;
        let operations = latencies.len();
        report.add(json!({
            "scenario": name,
            "concurrency": concurrency,
            "seconds": elapsed.as_secs_f64(),
            "operations": operations,
            "requests_per_operation": requests_per_operation,
            "items_per_operation": items,
            "last_response_bytes": bytes,
            "operations_per_s": operations as f64 / elapsed.as_secs_f64(),
            "requests_per_s": (operations * requests_per_operation) as f64 / elapsed.as_secs_f64(),
            "p50_ms": percentile(&latencies, 50.0),
            "p99_ms": percentile(&latencies, 99.0),
            "max_ms": percentile(&latencies, 100.0),
        }));
    }
    report.write();
    shutdown.trigger();
    server
        .await
        .expect("server task")
        .expect("server stopped cleanly");
}
