//! Shared pieces of the streamer's integration tests: configs on a fresh prefix, reading every
//! sample back from the queue, the CSV's rows per shard, the exact-and-released check, the health
//! and metrics endpoints over HTTP, and bounded waits on conditions.

#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use etcd_queue::{Queue, QueueConfig, WorkGroupKeys};
use streamer::{shard_for, ShardState, StreamerConfig, SHARDS, WORK_GROUP};
use telemetry_model::{BatchEvent, DcgmCsvReader, RowOutcome};
pub use test_support::wait_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use test_support::REAL_CSV;
pub const REAL_ROWS: u64 = 2_470;

pub use test_support::testdata;

pub fn queue_config(prefix: &str) -> QueueConfig {
    QueueConfig {
        prefix: prefix.to_string(),
        retry_budget: Duration::from_secs(30),
        ..QueueConfig::default()
    }
}

/// A streamer config for `csv` under `prefix`: no pause between passes, a short lease.
pub fn config(prefix: &str, csv: &str, member: &str) -> StreamerConfig {
    StreamerConfig {
        interval: Duration::ZERO,
        member_id: member.to_string(),
        lease_ttl: Duration::from_secs(2),
        ..StreamerConfig::new(testdata(csv), queue_config(prefix))
    }
}

/// One sample as read back from the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedSample {
    pub partition: u32,
    pub gpu: String,
    pub metric: String,
    pub timestamp: i64,
    pub value: f64,
}

/// Every sample on the queue, partition by partition, in queue order.
pub async fn queued_samples(queue: &Queue) -> Vec<QueuedSample> {
    let mut samples = Vec::new();
    for partition in 0..queue.config().partitions {
        let mut after = 0;
        loop {
            let messages = queue.peek(partition, after, 500).await.unwrap();
            let Some(last) = messages.last() else {
                break;
            };
            after = last.offset;
            for message in &messages {
                let event = BatchEvent::from_queue_message(&message.payload).unwrap();
                assert_eq!(event.batch.validate().ok(), Some(()));
                for (gpu, metric, ts, value) in event.batch.samples() {
                    samples.push(QueuedSample {
                        partition,
                        gpu: gpu.uuid.as_str().to_string(),
                        metric: metric.as_str().to_string(),
                        timestamp: ts.0,
                        value,
                    });
                }
            }
        }
    }
    samples
}

/// Asserts every GPU's samples have strictly increasing timestamps in queue order.
pub fn assert_timestamps_increase_per_gpu(samples: &[QueuedSample]) {
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for s in samples {
        if let Some(previous) = last.insert(&s.gpu, s.timestamp) {
            assert!(
                s.timestamp > previous,
                "GPU {} went from {previous} to {}",
                s.gpu,
                s.timestamp
            );
        }
    }
}

/// How many times each (GPU, metric, value) row of the CSV appears among `samples`.
pub fn row_counts(samples: &[QueuedSample]) -> BTreeMap<(String, String, String), u64> {
    let mut counts = BTreeMap::new();
    for s in samples {
        *counts
            .entry((s.gpu.clone(), s.metric.clone(), s.value.to_string()))
            .or_insert(0) += 1;
    }
    counts
}

/// The CSV's good rows as (GPU, metric, value) keys with their multiplicity.
pub fn csv_rows(csv: &str) -> BTreeMap<(String, String, String), u64> {
    let mut counts = BTreeMap::new();
    for outcome in DcgmCsvReader::open(testdata(csv)).unwrap() {
        if let RowOutcome::Row(row) = outcome {
            *counts
                .entry((
                    row.info.uuid.as_str().to_string(),
                    row.metric.as_str().to_string(),
                    row.value.to_string(),
                ))
                .or_insert(0) += 1;
        }
    }
    counts
}

/// Good rows of the CSV per shard.
pub fn rows_per_shard(csv: &str) -> BTreeMap<u32, u64> {
    let mut rows = BTreeMap::new();
    for outcome in DcgmCsvReader::open(testdata(csv)).unwrap() {
        if let RowOutcome::Row(row) = outcome {
            *rows.entry(shard_for(&row.info.uuid)).or_insert(0) += 1;
        }
    }
    rows
}

/// Every shard's state as stored in etcd.
pub async fn shard_states(client: &Client, prefix: &str) -> BTreeMap<u32, ShardState> {
    let keys = WorkGroupKeys::new(prefix, WORK_GROUP).unwrap();
    let mut client = client.clone();
    let response = client
        .get(
            keys.item_states_prefix(),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    response
        .kvs()
        .iter()
        .map(|kv| {
            let shard = kv.key_str().unwrap().rsplit('/').next().unwrap();
            (
                shard.parse().unwrap(),
                serde_json::from_slice(kv.value()).unwrap(),
            )
        })
        .collect()
}

/// The samples the shard states say were published: every completed pass of a shard plus the
/// rows of its current pass.
pub fn samples_per_states(states: &BTreeMap<u32, ShardState>, rows: &BTreeMap<u32, u64>) -> u64 {
    states
        .iter()
        .map(|(shard, s)| s.passes * rows.get(shard).copied().unwrap_or(0) + s.row)
        .sum()
}

/// Keys under the streamers' group root whose path contains `/{kind}/` (member, owner, state).
pub async fn group_keys(client: &Client, prefix: &str, kind: &str) -> Vec<String> {
    let mut client = client.clone();
    let response = client
        .get(
            format!("{prefix}/{WORK_GROUP}/{kind}/"),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    response
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect()
}

pub fn all_shards() -> Vec<u32> {
    (0..SHARDS).collect()
}

/// The queue holds exactly what the shard states account for, and nothing is owned any more;
/// returns how many samples the queue holds.
pub async fn assert_exact_and_released(etcd: &test_support::EtcdHarness, prefix: &str) -> u64 {
    let client = etcd.client().await;
    assert_eq!(
        group_keys(&client, prefix, "owner").await,
        Vec::<String>::new()
    );
    assert_eq!(
        group_keys(&client, prefix, "member").await,
        Vec::<String>::new()
    );
    let states = shard_states(&client, prefix).await;
    assert!(!states.is_empty());
    let queue = Queue::open(client, queue_config(prefix)).await.unwrap();
    let samples = queued_samples(&queue).await;
    assert_eq!(
        samples.len() as u64,
        samples_per_states(&states, &rows_per_shard(REAL_CSV))
    );
    assert_timestamps_increase_per_gpu(&samples);
    samples.len() as u64
}

/// `GET path` on localhost; `None` while nothing listens.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

/// The value of an un-labelled metric in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} "))?.parse().ok())
}

/// Waits until the streamer serves health and metrics and has published samples.
pub async fn wait_streaming(port: u16) -> String {
    wait_until(
        "streamer serves and publishes",
        Duration::from_secs(30),
        || async {
            let (Some((200, _)), Some((200, _)), Some((200, text))) = (
                http_get(port, "/healthz").await,
                http_get(port, "/readyz").await,
                http_get(port, "/metrics").await,
            ) else {
                return false;
            };
            metric(&text, "streamer_samples_published_total").unwrap_or(0.0) > 0.0
        },
    )
    .await;
    http_get(port, "/metrics").await.unwrap().1
}
