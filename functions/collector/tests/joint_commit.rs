//! Deliveries of several partitions persisted by one commit against a real etcd: exact store
//! contents and commit counts, a partition taken over before the joint commit (the others land,
//! every sample stored once), and a dead letter beside deliveries that commit together.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use etcd_client::PutOptions;
use etcd_queue::{ConsumerConfig, Delivery, OutgoingMessage, Queue};
use telemetry_model::{BatchEvent, GpuInfo, MetricName, SampleBatch, TimestampMicros};
use telemetry_store::{SampleQuery, TelemetryStore};
use test_support::{unique_prefix, EtcdHarness};

/// Partitions the tests publish to, one GPU of the real CSV each.
const PARTITIONS: usize = 4;
/// Messages per partition.
const PASSES: usize = 2;

/// A GPU's rows of the real CSV.
type GpuRows = Vec<(GpuInfo, MetricName, f64)>;

/// The first GPU of the real CSV on each of the first [`PARTITIONS`] partitions that have one.
fn one_gpu_per_partition(queue: &Queue) -> BTreeMap<u32, GpuRows> {
    let mut by_partition: BTreeMap<u32, GpuRows> = BTreeMap::new();
    for row in real_rows() {
        let partition = queue.partition_for(row.0.uuid.as_str().as_bytes());
        let rows = by_partition.entry(partition).or_default();
        if rows.first().is_none_or(|first| first.0.uuid == row.0.uuid) {
            rows.push(row);
        }
    }
    by_partition.into_iter().take(PARTITIONS).collect()
}

/// Expected store contents per GPU: (timestamp, metric, value), in time order.
type Expected = BTreeMap<String, Vec<(i64, String, f64)>>;

/// Publishes [`PASSES`] messages on each partition of `gpus`, each with its GPU's 10 rows.
async fn publish(queue: &Queue, gpus: &BTreeMap<u32, GpuRows>, t0: i64) -> Expected {
    let mut expected = Expected::new();
    let mut messages = Vec::new();
    for pass in 0..PASSES {
        for (partition, rows) in gpus {
            let mut builder = SampleBatch::builder();
            for (i, (info, metric, value)) in rows.iter().enumerate() {
                let ts = t0 + (pass * 1_000 + i) as i64;
                builder.push(info, metric, TimestampMicros(ts), *value);
                expected
                    .entry(info.uuid.as_str().to_string())
                    .or_default()
                    .push((ts, metric.as_str().to_string(), *value));
            }
            let event = BatchEvent::new(format!("p{partition}-{pass}"), "/test", builder.build());
            messages.push(OutgoingMessage {
                partition: *partition,
                payload: queue_message(&event, pass),
            });
        }
    }
    let mut producer = queue.producer();
    producer.publish_batch(messages).await.unwrap();
    producer.close().await.unwrap();
    expected
}

/// Asserts the store holds exactly `expected`, GPU by GPU.
async fn assert_stored(store: &TelemetryStore, expected: &Expected) {
    let records = store.list_gpus().await.unwrap();
    assert_eq!(records.len(), expected.len(), "GPUs in the registry");
    for record in records {
        let samples = store
            .query(
                &record.info.uuid,
                &SampleQuery {
                    limit: 1_000,
                    ..SampleQuery::default()
                },
            )
            .await
            .unwrap()
            .samples;
        let mut stored: Vec<(i64, String, f64)> = samples
            .iter()
            .map(|s| (s.timestamp.0, s.metric.to_string(), s.value))
            .collect();
        stored.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(&stored, &expected[record.info.uuid.as_str()]);
    }
}

struct Setup {
    _etcd: EtcdHarness,
    client: etcd_client::Client,
    queue: Queue,
    store: TelemetryStore,
    expected: Expected,
    /// The partitions published to.
    partitions: Vec<u32>,
}

async fn published(test: &str) -> Setup {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix(test);
    let client = etcd.client().await;
    let queue = Queue::open(client.clone(), queue_config(&prefix))
        .await
        .unwrap();
    let store = store_for(client.clone(), &prefix);
    let gpus = one_gpu_per_partition(&queue);
    assert_eq!(gpus.len(), PARTITIONS);
    let expected = publish(&queue, &gpus, TimestampMicros::now().0 - 60_000_000).await;
    Setup {
        _etcd: etcd,
        client,
        queue,
        store,
        expected,
        partitions: gpus.into_keys().collect(),
    }
}

fn patient_member(id: &str) -> ConsumerConfig {
    ConsumerConfig {
        lease_ttl: Duration::from_secs(30),
        ..ConsumerConfig::new(id)
    }
}

fn message_counts(deliveries: &[Delivery]) -> Vec<usize> {
    deliveries.iter().map(|d| d.messages.len()).collect()
}

#[tokio::test]
async fn deliveries_of_four_partitions_are_stored_by_one_commit() {
    let setup = published("joint-collector").await;
    let (mut processor, _registry) = processor_for(&setup.store);
    let mut consumer = setup.queue.consumer(patient_member("joint")).await.unwrap();
    let deliveries = consumer
        .poll_many(Duration::from_secs(20), 16)
        .await
        .unwrap();
    assert_eq!(message_counts(&deliveries), [PASSES; PARTITIONS]);

    let done = processor
        .process_many(&mut consumer, deliveries)
        .await
        .unwrap();
    assert_eq!(
        (done.messages, done.samples, done.dead_letters),
        (PARTITIONS * PASSES, PARTITIONS * PASSES * 10, 0)
    );
    assert_eq!(consumer.stats().commits, 1, "one transaction for all four");
    assert_eq!(setup.queue.refresh_depth().await.unwrap(), 0);
    assert_stored(&setup.store, &setup.expected).await;
    consumer.leave().await.unwrap();
}

/// The partition of the third delivery moves to a second collector, which stores it, before the
/// first commits its four deliveries together: the joint commit writes nothing, the first
/// collector then commits the other three one by one, and every sample is stored once.
#[tokio::test]
async fn a_partition_taken_over_before_the_joint_commit_leaves_every_sample_stored_once() {
    let setup = published("joint-collector-lost").await;
    let (mut first_processor, _r1) = processor_for(&setup.store);
    let (mut second_processor, _r2) = processor_for(&setup.store);
    let mut first = setup.queue.consumer(patient_member("first")).await.unwrap();
    let deliveries = first.poll_many(Duration::from_secs(20), 16).await.unwrap();
    assert_eq!(message_counts(&deliveries), [PASSES; PARTITIONS]);
    let moved = deliveries[2].partition;

    let mut second = setup
        .queue
        .consumer(patient_member("second"))
        .await
        .unwrap();
    let owner_key = setup
        .queue
        .keys()
        .group("collectors")
        .unwrap()
        .work_group()
        .owner(moved);
    let mut client = setup.client.clone();
    client
        .put(
            owner_key,
            "second",
            Some(PutOptions::new().with_lease(second.lease_id())),
        )
        .await
        .unwrap();
    let taken = second.poll(Duration::from_secs(20)).await.unwrap().unwrap();
    assert_eq!((taken.partition, taken.messages.len()), (moved, PASSES));
    let by_second = second_processor.process(&mut second, taken).await.unwrap();
    assert_eq!(
        (by_second.messages, by_second.samples),
        (PASSES, PASSES * 10)
    );

    let by_first = first_processor
        .process_many(&mut first, deliveries)
        .await
        .unwrap();
    assert_eq!(
        (by_first.messages, by_first.samples, by_first.dead_letters),
        ((PARTITIONS - 1) * PASSES, (PARTITIONS - 1) * PASSES * 10, 0)
    );
    assert_eq!(
        first.stats().commits,
        (PARTITIONS - 1) as u64,
        "the joint commit failed; the others committed one by one"
    );
    assert!(!first.owned_partitions().contains(&moved));
    assert_eq!(setup.queue.refresh_depth().await.unwrap(), 0);
    assert_stored(&setup.store, &setup.expected).await;
    first.leave().await.unwrap();
    second.leave().await.unwrap();
}

/// An undecodable message on a fifth partition is dead-lettered by a commit of its own; the four
/// other partitions' deliveries still commit together.
#[tokio::test]
async fn a_dead_letter_commits_alone_and_the_other_partitions_together() {
    let setup = published("joint-collector-dead").await;
    let poisoned = (0..16)
        .find(|p| !setup.partitions.contains(p))
        .expect("a partition without messages");
    let mut producer = setup.queue.producer();
    producer
        .publish_batch(vec![OutgoingMessage {
            partition: poisoned,
            payload: b"{not json".to_vec(),
        }])
        .await
        .unwrap();
    producer.close().await.unwrap();
    let (mut processor, _registry) = processor_for(&setup.store);
    let mut consumer = setup.queue.consumer(patient_member("dead")).await.unwrap();
    let deliveries = consumer
        .poll_many(Duration::from_secs(20), 16)
        .await
        .unwrap();
    let mut partitions: Vec<u32> = setup.partitions.clone();
    partitions.push(poisoned);
    partitions.sort();
    assert_eq!(
        deliveries.iter().map(|d| d.partition).collect::<Vec<_>>(),
        partitions
    );

    let done = processor
        .process_many(&mut consumer, deliveries)
        .await
        .unwrap();
    assert_eq!(
        (done.messages, done.samples, done.dead_letters),
        (PARTITIONS * PASSES + 1, PARTITIONS * PASSES * 10, 1)
    );
    assert_eq!(
        consumer.stats().commits,
        2,
        "one for the dead letter's delivery, one for the rest"
    );
    let dead = setup.queue.dead_letters(10).await.unwrap();
    let dead: Vec<(u32, u64)> = dead.iter().map(|d| (d.partition, d.offset)).collect();
    assert_eq!(dead, vec![(poisoned, 1)]);
    assert_eq!(setup.queue.refresh_depth().await.unwrap(), 0);
    assert_stored(&setup.store, &setup.expected).await;
    consumer.leave().await.unwrap();
}
