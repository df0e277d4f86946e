//! The Prometheus API next to Prometheus on the same data in the same run: the hour of samples of
//! the differential tests (the real export's 247 GPUs on 31 hosts, 11 series each, every 15 s) is
//! written into the store in a real etcd and backfilled into a real Prometheus (2.42); then one
//! panel query of the DCGM Exporter Dashboard runs as `query_range` over the hour at a 15 s step
//! (241 points per series) against both, one request after the other, and so does the same panel
//! narrowed to one host (the registry selects its 8 GPUs without reading the others' chunks).
//! Median, p90 and max per side go to `target/bench/prometheus_api.json`.
//!
//! `PROM_BENCH_ITERATIONS` (default 20) sets the requests per query and side.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::{config_for, Served};
use serde_json::{json, Value};
use telemetry_model::TimestampMicros;
use telemetry_store::{group_by_gpu, ChunkTag, TelemetryStore};
use test_support::promql_table::{seconds_param, Dataset, PASS_SPACING_MS};
use test_support::{
    http_request, median, millis, percentile, unique_prefix, BenchReport, EtcdHarness,
    PrometheusHarness,
};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(bench());
}

/// POSTs a range query (as Grafana does) and returns its latency and the series answered.
async fn range_query(base: &str, query: &str, start: &str, end: &str, step: &str) -> (f64, usize) {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("query", query),
            ("start", start),
            ("end", end),
            ("step", step),
        ])
        .finish();
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    let started = Instant::now();
    let response = http_request(
        "POST",
        &format!("{base}/api/v1/query_range"),
        &headers,
        body.into_bytes(),
    )
    .await
    .expect("range query");
    let elapsed = millis(started.elapsed());
    assert_eq!(response.status, 200, "{}", response.text());
    let json: Value = response.json();
    (elapsed, json["data"]["result"].as_array().unwrap().len())
}

async fn bench() {
    let iterations = std::env::var("PROM_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20usize);
    let data = Dataset::generate();
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("prometheus-api-bench");
    let config = config_for(&etcd, &prefix);
    let store = TelemetryStore::new(etcd.client().await, config.store.store_config(&prefix));
    let stats = store
        .write_idempotent(
            ChunkTag::Seed {
                at: TimestampMicros(data.start_ms * 1000),
            },
            &group_by_gpu([&data.sample_batch()]),
        )
        .await
        .expect("write the dataset");
    assert_eq!(stats.samples, data.sample_count());
    let prometheus = PrometheusHarness::start_with_openmetrics(&data.openmetrics()).await;

    let served = Served::start(config).await;
    let gateway = served.base.clone();

    let (start, end) = (seconds_param(data.start_ms), seconds_param(data.end_ms()));
    let step = seconds_param(PASS_SPACING_MS);
    let host = &data.hosts[0];
    let queries = [
        (
            "panel_gpu_temp_all_gpus",
            r#"max(DCGM_FI_DEV_GPU_TEMP{Hostname=~".*", gpu=~".*"}) by (Hostname, gpu, uuid)"#
                .to_string(),
        ),
        (
            "panel_gpu_temp_one_host",
            format!(
                r#"max(DCGM_FI_DEV_GPU_TEMP{{Hostname=~"{host}", gpu=~".*"}}) by (Hostname, gpu, uuid)"#
            ),
        ),
    ];
    let mut report = BenchReport::new("prometheus_api");
    for (name, query) in &queries {
        for (side, base) in [
            ("gateway", gateway.as_str()),
            ("prometheus", &prometheus.url()),
        ] {
            // One warm-up request: connections and caches as a dashboard refresh finds them.
            let (_, series) = range_query(base, query, &start, &end, &step).await;
            let mut latencies = Vec::with_capacity(iterations);
            for _ in 0..iterations {
                let (ms, answered) = range_query(base, query, &start, &end, &step).await;
                assert_eq!(answered, series);
                latencies.push(ms);
            }
            report.add(json!({
                "scenario": name,
                "server": side,
                "query": query,
                "window_s": (data.end_ms() - data.start_ms) / 1000,
                "step_s": PASS_SPACING_MS / 1000,
                "series": series,
                "iterations": iterations,
                "median_ms": median(&latencies),
                "p90_ms": percentile(&latencies, 90.0),
                "max_ms": percentile(&latencies, 100.0),
            }));
        }
    }
    report.write();
}
