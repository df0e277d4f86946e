//! Shared pieces of the collector's tests: publishing passes of the real CSV the way the streamer
//! does, running collector processes, and checking the store's exact contents.

#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_queue::{OutgoingMessage, Queue, QueueConfig};
use function_runtime::{EtcdConfig, QueueSettings, Shutdown};
use telemetry_model::{
    BatchEvent, DataEncoding, DcgmCsvReader, GpuInfo, MetricName, RowOutcome, SampleBatch,
    TimestampMicros,
};
use telemetry_store::{SampleQuery, StoreConfig, TelemetryStore};
pub use test_support::wait_until;
use test_support::{http_request, testdata, REAL_CSV};
use tokio::task::JoinHandle;

pub const ROWS: usize = 2_470;

pub fn real_rows() -> Vec<(GpuInfo, MetricName, f64)> {
    DcgmCsvReader::open(testdata(REAL_CSV))
        .unwrap()
        .filter_map(RowOutcome::row)
        .map(|row| (row.info, row.metric, row.value))
        .collect()
}

pub fn queue_config(prefix: &str) -> QueueConfig {
    QueueConfig {
        prefix: prefix.to_string(),
        ..QueueConfig::default()
    }
}

/// The queue message forms a collector reads, in the order [`publish_passes`] uses them: what the
/// streamer writes (the binary frame with columnar data) first, then the structured JSON events
/// a queue written by older streamers holds, and the frame with JSON data.
pub fn queue_message(event: &BatchEvent, form: usize) -> Vec<u8> {
    match form % 4 {
        0 => event.to_frame(DataEncoding::Columnar),
        1 => event.to_json(),
        2 => event.to_json_with(DataEncoding::Columnar),
        _ => event.to_frame(DataEncoding::Json),
    }
}

/// Publishes `passes` passes of the real CSV like the streamer: per pass, one CloudEvent batch per
/// queue partition, each row stamped with a strictly increasing time. Pass `n` is in the message
/// form `n` of [`queue_message`], so every form is consumed.
pub async fn publish_passes(queue: &Queue, passes: usize, t0: i64) {
    let rows = real_rows();
    let mut producer = queue.producer();
    for pass in 0..passes {
        let mut builders: BTreeMap<u32, telemetry_model::SampleBatchBuilder> = BTreeMap::new();
        for (i, (info, metric, value)) in rows.iter().enumerate() {
            let partition = queue.partition_for(info.uuid.as_str().as_bytes());
            let ts = TimestampMicros(t0 + ((pass * ROWS + i) as i64) * 10);
            builders
                .entry(partition)
                .or_insert_with(SampleBatch::builder)
                .push(info, metric, ts, *value);
        }
        let messages = builders
            .into_iter()
            .map(|(partition, builder)| OutgoingMessage {
                partition,
                payload: queue_message(
                    &BatchEvent::new(
                        format!("pass{pass}-p{partition}"),
                        "/test/publisher",
                        builder.build(),
                    ),
                    pass,
                ),
            })
            .collect();
        producer.publish_batch(messages).await.unwrap();
    }
    producer.close().await.unwrap();
}

/// A queue message carrying `batch` as the CloudEvent `id` from `source`.
pub fn event_message(
    partition: u32,
    id: &str,
    source: &str,
    batch: SampleBatch,
) -> OutgoingMessage {
    OutgoingMessage {
        partition,
        payload: BatchEvent::new(id, source, batch).to_json(),
    }
}

/// Messages committed so far over every partition.
pub async fn committed_messages(queue: &Queue) -> u64 {
    queue.progress().await.unwrap().offsets.values().sum()
}

/// Streams `passes` passes of the real CSV with the real streamer (one instance, no pause).
pub async fn stream_passes(client: etcd_client::Client, prefix: &str, passes: u64) {
    let mut config = streamer::StreamerConfig::new(testdata(REAL_CSV), queue_config(prefix));
    config.passes = Some(passes);
    config.interval = Duration::ZERO;
    let metrics =
        streamer::StreamerMetrics::register(&mut prometheus_client::registry::Registry::default());
    let report = streamer::Streamer::new(client, config, metrics)
        .run(function_runtime::Shutdown::new())
        .await
        .unwrap();
    assert_eq!(report.samples_published, passes * ROWS as u64);
}

/// A collector process of the real binary.
pub fn spawn_collector(endpoint: &str, prefix: &str, id: &str) -> Child {
    spawn_collector_with(endpoint, prefix, id, &[])
}

/// A collector process of the real binary, with `env` added to (or replacing) the defaults.
pub fn spawn_collector_with(endpoint: &str, prefix: &str, id: &str, env: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_collector"))
        .arg("run")
        .env("ETCD_ENDPOINTS", endpoint)
        .env("TELEMETRY_PREFIX", prefix)
        .env("PORT", "0")
        .env("COLLECTOR_ID", id)
        .env("QUEUE_LEASE_TTL", "2s")
        .env("COLLECTOR_GRACE_PERIOD", "10s")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn the collector binary")
}

/// The value of the un-labelled metric `name` served on `port`, if it answers.
pub async fn scrape(port: u16, name: &str) -> Option<f64> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let response = http_request("GET", &url, &[], Vec::new()).await.ok()?;
    response
        .text()
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} "))?.parse().ok())
}

/// `/readyz` on `port`: the status and the JSON body, if it answers.
pub async fn readiness(port: u16) -> Option<(u16, serde_json::Value)> {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let response = http_request("GET", &url, &[], Vec::new()).await.ok()?;
    Some((response.status, response.json()))
}

/// The etcd at `endpoint`, keys under `prefix`.
pub fn etcd_config(endpoint: &str, prefix: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![endpoint.to_string()],
        prefix: prefix.to_string(),
        ..EtcdConfig::default()
    }
}

/// The configuration of a collector of the etcd at `endpoint`, under `prefix`, with a short lease.
pub fn config_for(endpoint: &str, prefix: &str, id: &str) -> collector::Config {
    collector::Config {
        etcd: etcd_config(endpoint, prefix),
        queue: QueueSettings {
            lease_ttl: Duration::from_secs(2),
            ..QueueSettings::default()
        },
        member_id: id.to_string(),
        grace_period: Duration::from_secs(10),
        ..collector::Config::default()
    }
}

/// A collector run in this process by the library's `run`, serving on a free port.
pub struct InProcess {
    pub port: u16,
    stop: Shutdown,
    task: JoinHandle<Result<collector::RunSummary, collector::CollectorError>>,
}

impl InProcess {
    pub async fn start(config: collector::Config) -> InProcess {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Shutdown::new();
        let until = stop.clone();
        let task = tokio::spawn(collector::run(config, listener, async move {
            until.wait().await
        }));
        InProcess { port, stop, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `GET path`: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = http_request("GET", &self.url(path), &[], Vec::new())
            .await
            .unwrap();
        (response.status, response.text())
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        wait_until(
            "the collector is ready",
            Duration::from_secs(60),
            || async { self.get("/readyz").await.0 == 200 },
        )
        .await;
    }

    /// Resolves the shutdown future and returns what `run` returned.
    pub async fn stop(self) -> collector::RunSummary {
        self.stop.trigger();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("run returns after shutdown")
            .unwrap()
            .expect("run ends without error")
    }
}

/// Sends SIGTERM and waits for exit; returns whether it exited with status 0.
pub fn terminate(child: &mut Child) -> bool {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    child.wait().unwrap().success()
}

/// Asserts the store holds exactly `passes` x 10 samples for each of the 247 GPUs, strictly
/// increasing in time per metric, and registry records matching the CSV.
pub async fn assert_store_exact(store: &TelemetryStore, passes: usize) {
    let rows = real_rows();
    let mut expected_info: BTreeMap<String, GpuInfo> = BTreeMap::new();
    for (info, _, _) in &rows {
        expected_info.insert(info.uuid.as_str().to_string(), info.clone());
    }
    let records = store.list_gpus().await.unwrap();
    assert_eq!(records.len(), 247, "GPUs in the registry");
    for record in records {
        let expected = &expected_info[record.info.uuid.as_str()];
        assert_eq!(record.info.hostname, expected.hostname);
        assert_eq!(record.info.gpu_index, expected.gpu_index);
        assert_eq!(record.info.model_name, expected.model_name);
        let samples = store
            .query(
                &record.info.uuid,
                &SampleQuery {
                    limit: 100_000,
                    ..SampleQuery::default()
                },
            )
            .await
            .unwrap()
            .samples;
        assert_eq!(
            samples.len(),
            passes * 10,
            "samples of {}",
            record.info.uuid
        );
        let mut per_metric: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for s in &samples {
            per_metric.entry(&s.metric).or_default().push(s.timestamp.0);
        }
        assert_eq!(per_metric.len(), 10);
        for (metric, times) in per_metric {
            assert_eq!(times.len(), passes, "{} {metric}", record.info.uuid);
            assert!(
                times.windows(2).all(|w| w[0] < w[1]),
                "{metric}: duplicate or unordered times"
            );
        }
    }
    let footprint = store.footprint().await.unwrap();
    assert_eq!(
        footprint.samples as usize,
        passes * ROWS,
        "samples in all chunks"
    );
}

pub fn store_for(client: etcd_client::Client, prefix: &str) -> TelemetryStore {
    TelemetryStore::new(
        client,
        StoreConfig {
            prefix: prefix.to_string(),
            ..StoreConfig::default()
        },
    )
}

/// A processor of deliveries into `store`, and the registry its metrics are in.
pub fn processor_for(
    store: &TelemetryStore,
) -> (
    collector::DeliveryProcessor,
    prometheus_client::registry::Registry,
) {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = std::sync::Arc::new(collector::CollectorMetrics::register(&mut registry));
    (
        collector::DeliveryProcessor::new(store.clone(), metrics),
        registry,
    )
}

/// Persists `consumer`'s deliveries through `processor` until the queue is empty, as a
/// collector does (every delivery must persist without error); returns what each delivery
/// committed as (messages, samples, dead letters).
pub async fn drain_with(
    queue: &Queue,
    consumer: &mut etcd_queue::Consumer,
    processor: &mut collector::DeliveryProcessor,
) -> Vec<(usize, usize, usize)> {
    let mut committed = Vec::new();
    while queue.depth().await.unwrap() > 0 {
        let delivery = consumer
            .poll(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("a delivery while messages remain");
        let done = processor.process(consumer, delivery).await.unwrap();
        committed.push((done.messages, done.samples, done.dead_letters));
    }
    committed
}

/// Drains the queue through one `DeliveryProcessor`, one delivery at a time, as a collector
/// does; returns what each delivery committed as (messages, samples, dead letters).
pub async fn drain_deliveries(
    queue: &Queue,
    store: &TelemetryStore,
    consumer: etcd_queue::ConsumerConfig,
) -> Vec<(usize, usize, usize)> {
    let (mut processor, _registry) = processor_for(store);
    let mut consumer = queue.consumer(consumer).await.unwrap();
    let committed = drain_with(queue, &mut consumer, &mut processor).await;
    consumer.leave().await.unwrap();
    committed
}
