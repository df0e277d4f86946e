//! Fleet benchmark: the pipeline at 100,000 GPUs next to the real 247. For each size, about a
//! million samples (one pass of the generated fleet; 405 passes of the real file) are streamed by
//! the streamer while one collector persists them (ingest samples/s, from the first publish to
//! the last sample stored), then a gateway process of the built binary serves
//! `GET /api/v1/gpus` (every GPU; the median of `LIST_RUNS` requests, plain and gzipped) and its
//! peak resident memory (`VmHWM`) is read after a round of eight such requests at once.
//! Writes `target/bench/fleet.json`. Run with `cargo bench -p gateway --bench fleet`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use collector::{CollectorMetrics, DeliveryProcessor};
use common::GatewayProcess;
use etcd_queue::{ConsumerConfig, Queue, QueueConfig};
use function_runtime::Shutdown;
use prometheus_client::registry::Registry;
use serde_json::json;
use telemetry_store::{StoreConfig, TelemetryStore};
use test_support::{
    median, millis, target_dir, testdata, unique_prefix, BenchReport, EtcdHarness, Fleet, REAL_CSV,
    REAL_GPUS,
};

/// Samples each size ingests (about).
const SAMPLES: usize = 1_000_000;
const FLEET_GPUS: usize = 100_000;
const LIST_RUNS: usize = 5;
const CONCURRENT: usize = 8;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut report = BenchReport::new("fleet");
        let dir = target_dir().join("bench-data");
        std::fs::create_dir_all(&dir).unwrap();
        let fleet = Fleet::generate(&dir, FLEET_GPUS, 11);
        let real = testdata(REAL_CSV);
        let small = measure(&real, REAL_GPUS, SAMPLES.div_ceil(10 * REAL_GPUS)).await;
        let large = measure(&fleet.path, FLEET_GPUS, 1).await;
        std::fs::remove_file(&fleet.path).ok();
        for (name, at_247, at_fleet) in [
            ("ingest_samples_per_s", small.ingest_rate, large.ingest_rate),
            ("list_gpus_ms", small.list_ms, large.list_ms),
            ("list_gpus_gzip_ms", small.list_gzip_ms, large.list_gzip_ms),
            ("list_gpus_bytes", small.list_bytes, large.list_bytes),
            (
                "list_gpus_gzip_bytes",
                small.list_gzip_bytes,
                large.list_gzip_bytes,
            ),
            (
                "gateway_peak_rss_mib",
                small.peak_rss_mib,
                large.peak_rss_mib,
            ),
        ] {
            report.add(json!({
                "name": name,
                "gpus_247": at_247,
                "gpus_100000": at_fleet,
                "ratio": at_fleet / at_247,
            }));
        }
        report.add(json!({
            "name": "samples_ingested",
            "gpus_247": small.samples,
            "gpus_100000": large.samples,
        }));
        report.write();
    });
}

/// What one fleet size gave.
struct Figures {
    samples: f64,
    ingest_rate: f64,
    list_ms: f64,
    list_gzip_ms: f64,
    list_bytes: f64,
    list_gzip_bytes: f64,
    peak_rss_mib: f64,
}

/// Streams `passes` passes of `csv` (`gpus` GPUs) through a fresh etcd, persists them, and
/// serves the GPU list from a gateway process.
async fn measure(csv: &Path, gpus: usize, passes: usize) -> Figures {
    let etcd = EtcdHarness::start_with_args(&["--quota-backend-bytes", "8589934592"]).await;
    let client = etcd.client().await;
    let prefix = unique_prefix("bench-fleet");
    let queue_config = QueueConfig {
        prefix: prefix.clone(),
        ..QueueConfig::default()
    };
    let rows = telemetry_model::DcgmCsvReader::open(csv)
        .unwrap()
        .filter_map(telemetry_model::RowOutcome::row)
        .count();
    let total = rows * passes;

    let started = Instant::now();
    let stream = {
        let mut config = streamer::StreamerConfig::new(csv.to_path_buf(), queue_config.clone());
        config.passes = Some(passes as u64);
        config.interval = Duration::ZERO;
        let metrics = streamer::StreamerMetrics::register(&mut Registry::default());
        streamer::Streamer::new(client.clone(), config, metrics).run(Shutdown::new())
    };
    let collect = async {
        let queue = Queue::open(client.clone(), queue_config.clone())
            .await
            .unwrap();
        let store = TelemetryStore::new(
            client.clone(),
            StoreConfig {
                prefix: prefix.clone(),
                ..StoreConfig::default()
            },
        );
        let metrics = Arc::new(CollectorMetrics::register(&mut Registry::default()));
        let mut processor = DeliveryProcessor::new(store, metrics);
        let mut consumer = queue.consumer(ConsumerConfig::new("bench")).await.unwrap();
        let mut samples = 0;
        while samples < total {
            let Some(delivery) = consumer.poll(Duration::from_millis(500)).await.unwrap() else {
                continue;
            };
            samples += processor
                .process(&mut consumer, delivery)
                .await
                .unwrap()
                .samples;
        }
        consumer.leave().await.unwrap();
        samples
    };
    let (report, samples) = tokio::join!(stream, collect);
    let elapsed = started.elapsed();
    assert_eq!(report.unwrap().samples_published, total as u64);
    assert_eq!(samples, total, "every sample persisted once");
    let ingest_rate = total as f64 / elapsed.as_secs_f64();
    println!(
        "{gpus} GPUs: {total} samples streamed and persisted in {elapsed:?} ({ingest_rate:.0}/s)"
    );

    let gateway = GatewayProcess::start(
        &etcd.endpoint(),
        &prefix,
        &[("GATEWAY_REQUEST_TIMEOUT", "60s")],
    )
    .await;
    let (list_ms, list_bytes) = list(&gateway, &[], gpus).await;
    let (list_gzip_ms, list_gzip_bytes) =
        list(&gateway, &[("accept-encoding", "gzip")], gpus).await;
    let burst = vec!["/api/v1/gpus".to_string(); CONCURRENT];
    for reply in gateway.burst(&burst, CONCURRENT).await {
        assert_eq!(reply.status, 200);
    }
    let peak_rss_mib = gateway.memory_kib("VmHWM") as f64 / 1024.0;
    println!(
        "{gpus} GPUs: GET /api/v1/gpus {list_ms:.1} ms for {list_bytes} bytes ({list_gzip_ms:.1} ms, {list_gzip_bytes} bytes gzipped); gateway VmHWM {peak_rss_mib:.1} MiB"
    );
    Figures {
        samples: total as f64,
        ingest_rate,
        list_ms,
        list_gzip_ms,
        list_bytes: list_bytes as f64,
        list_gzip_bytes: list_gzip_bytes as f64,
        peak_rss_mib,
    }
}

/// The median time of `LIST_RUNS` full lists and the body's size.
async fn list(gateway: &GatewayProcess, headers: &[(&str, &str)], gpus: usize) -> (f64, usize) {
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..LIST_RUNS {
        let started = Instant::now();
        let reply = gateway.get_with("/api/v1/gpus", headers).await;
        times.push(millis(started.elapsed()));
        assert_eq!(reply.status, 200);
        if headers.is_empty() {
            assert_eq!(reply.json()["count"], gpus);
        }
        bytes = reply.body.len();
    }
    (median(&times), bytes)
}
