//! Collector benchmark: samples/s consumed and persisted by one collector from a real etcd, next to
//! raw etcd writes of the same message bytes in the same run, stored bytes per sample, and the
//! registry's bytes and puts; then the same throughput for generated fleets of 10,000 and 100,000
//! GPUs (one pass each: every message covers 500 GPUs, as the streamer's batches of a fleet do).
//! Writes `target/bench/collector.json`. Run with `cargo bench -p collector`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use collector::{CollectorMetrics, DeliveryProcessor};
use etcd_client::{GetOptions, Txn, TxnOp};
use etcd_queue::{ConsumerConfig, OutgoingMessage, Queue};
use prometheus_client::registry::Registry;
use serde_json::json;
use telemetry_model::{BatchEvent, DcgmCsvReader, RowOutcome, SampleBatch, TimestampMicros};
use test_support::{median, target_dir, unique_prefix, BenchReport, EtcdHarness, Fleet};

const PASSES: usize = 40;
const RUNS: usize = 3;
/// Fleet sizes measured besides the real 247 GPUs, and runs of each.
const FLEETS: [usize; 2] = [10_000, 100_000];
const FLEET_RUNS: usize = 3;
/// Samples per queue message, as the streamer's default batch.
const BATCH_SIZE: usize = 500;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let etcd = EtcdHarness::start().await;
        let client = etcd.client().await;
        let mut report = BenchReport::new("collector");
        let mut rates = Vec::new();
        let mut raw_rates = Vec::new();
        let mut bytes_per_sample = Vec::new();
        let mut registry_bytes = Vec::new();
        let mut registry_puts = Vec::new();
        let mut chunk_puts = Vec::new();
        for _ in 0..RUNS {
            let prefix = unique_prefix("bench-collector");
            let queue = Queue::open(client.clone(), common::queue_config(&prefix)).await.unwrap();
            common::publish_passes(&queue, PASSES, TimestampMicros::now().0 - 3_600_000_000).await;
            // The message bytes the collector will consume, for the raw baseline.
            let mut c = client.clone();
            let mut payloads: Vec<Vec<u8>> = Vec::new();
            let mut from = format!("{prefix}/queue/telemetry/msg/");
            let end = format!("{prefix}/queue/telemetry/msg0");
            loop {
                let page = c
                    .get(from.clone(), Some(GetOptions::new().with_range(end.clone()).with_limit(100)))
                    .await
                    .unwrap();
                let Some(last) = page.kvs().last() else { break };
                from = format!("{}\0", last.key_str().unwrap());
                payloads.extend(page.kvs().iter().map(|kv| kv.value().to_vec()));
            }
            let message_bytes: usize = payloads.iter().map(Vec::len).sum();

            let store = common::store_for(client.clone(), &prefix);
            let mut registry = Registry::default();
            let metrics = Arc::new(CollectorMetrics::register(&mut registry));
            let mut processor = DeliveryProcessor::new(store.clone(), metrics);
            let mut consumer = queue.consumer(ConsumerConfig::new("bench")).await.unwrap();
            let started = Instant::now();
            let mut samples = 0;
            while samples < PASSES * common::ROWS {
                let delivery = consumer.poll(Duration::from_secs(10)).await.unwrap().expect("pending");
                samples += processor.process(&mut consumer, delivery).await.unwrap().samples;
            }
            let elapsed = started.elapsed();
            consumer.leave().await.unwrap();
            rates.push(samples as f64 / elapsed.as_secs_f64());

            // Raw baseline: the same message bytes as plain puts, sequential like one collector,
            // 64 per transaction, the most a delivery carries (here each partition's 40 messages
            // come as one delivery).
            let started = Instant::now();
            for (i, chunk) in payloads.chunks(64).enumerate() {
                let ops: Vec<TxnOp> = chunk
                    .iter()
                    .enumerate()
                    .map(|(j, p)| TxnOp::put(format!("{prefix}/raw/{i:06}-{j:03}"), p.clone(), None))
                    .collect();
                c.txn(Txn::new().and_then(ops)).await.unwrap();
            }
            let raw_elapsed = started.elapsed();
            raw_rates.push(samples as f64 / raw_elapsed.as_secs_f64());
            let footprint = store.footprint().await.unwrap();
            bytes_per_sample.push(footprint.chunk_value_bytes as f64 / footprint.samples as f64);
            registry_bytes.push(footprint.registry_value_bytes as f64);
            // Nothing under the store expired or was deleted during the run, so the sum of the
            // keys' versions is the number of puts each part of the store made.
            let registry = puts_under(&mut c, store.keys().gpus_prefix()).await;
            let chunks = puts_under(&mut c, store.keys().chunks_prefix()).await;
            registry_puts.push(registry as f64);
            chunk_puts.push(chunks as f64);
            println!(
                "run: {samples} samples in {elapsed:?} ({:.0}/s); raw puts of the {message_bytes} message bytes in {raw_elapsed:?}; registry {} bytes, {registry} puts (chunks {chunks} puts)",
                samples as f64 / elapsed.as_secs_f64(),
                footprint.registry_value_bytes
            );
        }
        let rate_247 = median(&rates);
        for gpus in FLEETS {
            let dir = target_dir().join("bench-data");
            std::fs::create_dir_all(&dir).unwrap();
            let fleet = Fleet::generate(&dir, gpus, 7);
            let mut fleet_rates = Vec::new();
            for _ in 0..FLEET_RUNS {
                // A fresh etcd per run: a first pass over a fleet writes every GPU's records
                // (over a gigabyte at 100,000 GPUs), which would fill one member's quota.
                let etcd = EtcdHarness::start_with_args(&["--quota-backend-bytes", "8589934592"]).await;
                fleet_rates.push(fleet_run(&etcd.client().await, &fleet).await);
            }
            report.add(json!({
                "name": "collector_fleet_throughput",
                "gpus": gpus,
                "samples_per_run": fleet.rows,
                "runs": FLEET_RUNS,
                "collector_samples_per_s": median(&fleet_rates),
                "collector_samples_per_s_at_247_gpus": rate_247,
                "vs_247_gpus": median(&fleet_rates) / rate_247,
            }));
            std::fs::remove_file(&fleet.path).ok();
        }
        report.add(json!({
            "name": "collector_throughput",
            "passes": PASSES,
            "samples_per_run": PASSES * common::ROWS,
            "runs": RUNS,
            "collector_samples_per_s": median(&rates),
            "raw_put_same_bytes_samples_per_s": median(&raw_rates),
            "collector_vs_raw": median(&rates) / median(&raw_rates),
            "stored_value_bytes_per_sample": median(&bytes_per_sample),
            "registry_value_bytes": median(&registry_bytes),
            "registry_puts": median(&registry_puts),
            "chunk_puts": median(&chunk_puts),
        }));
        report.write();
    });
}

/// One pass of `fleet` published in batches of `BATCH_SIZE` samples per partition, in the file's
/// order (metric by metric over the fleet), then consumed and persisted by one collector;
/// returns samples/s. A first pass: every GPU is new, so its records are created (and its
/// identity rewritten for each of its ten metrics, which arrive in ten messages).
async fn fleet_run(client: &etcd_client::Client, fleet: &Fleet) -> f64 {
    let prefix = unique_prefix("bench-collector-fleet");
    let queue = Queue::open(client.clone(), common::queue_config(&prefix))
        .await
        .unwrap();
    let t0 = TimestampMicros::now().0 - 3_600_000_000;
    let mut producer = queue.producer();
    let mut builders: BTreeMap<u32, telemetry_model::SampleBatchBuilder> = BTreeMap::new();
    let mut outgoing = Vec::new();
    let mut batches = 0;
    let reader = DcgmCsvReader::open(&fleet.path).unwrap();
    for (i, row) in reader.filter_map(RowOutcome::row).enumerate() {
        let partition = queue.partition_for(row.info.uuid.as_str().as_bytes());
        let builder = builders
            .entry(partition)
            .or_insert_with(SampleBatch::builder);
        builder.push(
            &row.info,
            &row.metric,
            TimestampMicros(t0 + i as i64),
            row.value,
        );
        if builder.len() >= BATCH_SIZE {
            let batch = builders.remove(&partition).unwrap().build();
            outgoing.push(fleet_message(partition, batches, batch));
            batches += 1;
        }
        if outgoing.len() >= 16 {
            producer
                .publish_batch(std::mem::take(&mut outgoing))
                .await
                .unwrap();
        }
    }
    for (partition, builder) in std::mem::take(&mut builders) {
        outgoing.push(fleet_message(partition, batches, builder.build()));
        batches += 1;
    }
    producer.publish_batch(outgoing).await.unwrap();
    producer.close().await.unwrap();

    let store = common::store_for(client.clone(), &prefix);
    let mut registry = Registry::default();
    let metrics = Arc::new(CollectorMetrics::register(&mut registry));
    let mut processor = DeliveryProcessor::new(store, metrics);
    let mut consumer = queue
        .consumer(ConsumerConfig::new("bench-fleet"))
        .await
        .unwrap();
    let started = Instant::now();
    let mut samples = 0;
    while samples < fleet.rows {
        let delivery = consumer
            .poll(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("pending");
        samples += processor
            .process(&mut consumer, delivery)
            .await
            .unwrap()
            .samples;
    }
    let elapsed = started.elapsed();
    consumer.leave().await.unwrap();
    assert_eq!(samples, fleet.rows, "every sample persisted once");
    let rate = samples as f64 / elapsed.as_secs_f64();
    println!(
        "fleet of {} GPUs: {samples} samples in {batches} messages persisted in {elapsed:?} ({rate:.0}/s)",
        fleet.gpus
    );
    rate
}

fn fleet_message(partition: u32, n: usize, batch: SampleBatch) -> OutgoingMessage {
    OutgoingMessage {
        partition,
        payload: BatchEvent::new(format!("fleet-{n}"), "/bench/fleet", batch).to_json(),
    }
}

/// Puts made under `prefix`: the sum of its keys' versions.
async fn puts_under(client: &mut etcd_client::Client, prefix: String) -> i64 {
    client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| kv.version())
        .sum()
}
