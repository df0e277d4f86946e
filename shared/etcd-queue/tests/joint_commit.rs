//! Deliveries of several partitions read at once and committed in ONE transaction: every
//! partition's offset, message range and fence land together, and a partition lost before the
//! commit makes it write nothing, so the others commit again without it, each message once.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use etcd_client::{Client, GetOptions, PutOptions, TxnOp};
use etcd_queue::{
    Delivery, Fence, OutgoingMessage, PartitionCommit, Queue, QueueConfig, QueueError,
};
use test_support::{unique_prefix, EtcdHarness};

const PARTITIONS: u32 = 4;

async fn open_queue(client: Client, prefix: &str) -> Queue {
    let config = QueueConfig {
        partitions: PARTITIONS,
        ..config(prefix)
    };
    Queue::open(client, config).await.unwrap()
}

/// Partition `p` gets `p + 1` messages `p{p}-{n}`; returns every id.
async fn publish_uneven(queue: &Queue) -> Vec<String> {
    let mut producer = queue.producer();
    let mut ids = Vec::new();
    let mut messages = Vec::new();
    for partition in 0..PARTITIONS {
        for n in 0..=partition {
            let id = format!("p{partition}-{n}");
            messages.push(OutgoingMessage {
                partition,
                payload: id.as_bytes().to_vec(),
            });
            ids.push(id);
        }
    }
    producer.publish_batch(messages).await.unwrap();
    producer.close().await.unwrap();
    ids
}

/// A fence that records the delivery's message ids under `{sink}/{partition}` in the commit.
fn recording(sink: &str, delivery: &Delivery) -> Fence {
    let ids: Vec<String> = delivery
        .messages
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect();
    Fence {
        compares: vec![],
        ops: vec![TxnOp::put(
            format!("{sink}/{}", delivery.partition),
            ids.join(","),
            None,
        )],
        bytes: 0,
    }
}

fn shape(deliveries: &[Delivery]) -> Vec<(u32, u64, Vec<u64>)> {
    deliveries
        .iter()
        .map(|d| {
            (
                d.partition,
                d.after,
                d.messages.iter().map(|m| m.offset).collect(),
            )
        })
        .collect()
}

/// The `mod_revision` of every key under `{sink}/`.
async fn sink_revisions(client: &Client, sink: &str) -> BTreeMap<String, i64> {
    let mut client = client.clone();
    let response = client
        .get(format!("{sink}/"), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    response
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
        .collect()
}

#[tokio::test]
async fn deliveries_of_several_partitions_are_committed_in_one_transaction() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("joint-commit");
    let sink = format!("{prefix}/sink");
    let client = etcd.client().await;
    let queue = open_queue(client.clone(), &prefix).await;
    let ids = publish_uneven(&queue).await;
    let mut consumer = queue.consumer(patient_member("joint")).await.unwrap();

    let deliveries = consumer
        .poll_many(Duration::from_secs(20), 16)
        .await
        .unwrap();
    assert_eq!(
        shape(&deliveries),
        vec![
            (0, 0, vec![1]),
            (1, 0, vec![1, 2]),
            (2, 0, vec![1, 2, 3]),
            (3, 0, vec![1, 2, 3, 4]),
        ]
    );
    // Handed out, not yet committed: polling again is refused.
    assert!(matches!(
        consumer.poll(Duration::from_millis(10)).await,
        Err(QueueError::DeliveryInFlight { .. })
    ));
    let commits = deliveries
        .iter()
        .map(|d| PartitionCommit::whole(d, recording(&sink, d), &[]))
        .collect();
    let revision = consumer.commit_all(commits).await.unwrap();

    let stats = consumer.stats();
    assert_eq!((stats.commits, stats.messages_committed), (1, 10));
    assert_exactly_once(&sink_contents(&client, &sink).await, &ids);
    let revisions = sink_revisions(&client, &sink).await;
    assert_eq!(revisions.len(), PARTITIONS as usize);
    assert!(
        revisions.values().all(|r| *r == revision),
        "every partition's fence in the one commit at {revision}: {revisions:?}"
    );
    let progress = queue.progress().await.unwrap();
    assert_eq!(
        progress.offsets,
        BTreeMap::from([(0, 1), (1, 2), (2, 3), (3, 4)])
    );
    assert_eq!(queue.refresh_depth().await.unwrap(), 0);
    // Nothing is in flight any more, and nothing is delivered again.
    assert!(consumer
        .poll_many(Duration::from_millis(200), 16)
        .await
        .unwrap()
        .is_empty());
    consumer.leave().await.unwrap();
}

#[tokio::test]
async fn a_joint_commit_is_bounded_by_max_partitions() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("joint-limit");
    let queue = open_queue(etcd.client().await, &prefix).await;
    publish_uneven(&queue).await;
    let mut consumer = queue.consumer(patient_member("limited")).await.unwrap();
    let first = consumer
        .poll_many(Duration::from_secs(20), 3)
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|d| d.partition).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    for delivery in &first {
        consumer
            .commit(delivery, Fence::default(), &[])
            .await
            .unwrap();
    }
    // Round robin: the partition left out comes next.
    let next = consumer
        .poll_many(Duration::from_secs(20), 3)
        .await
        .unwrap();
    assert_eq!(shape(&next), vec![(3, 0, vec![1, 2, 3, 4])]);
    consumer
        .commit(&next[0], Fence::default(), &[])
        .await
        .unwrap();
    assert_eq!(queue.refresh_depth().await.unwrap(), 0);
    consumer.leave().await.unwrap();
}

/// Partition 2 moves to a second member after the first read it: the first member's joint
/// commit writes nothing and says which partition it lost; committed again without it, the
/// other three land, and the new owner commits partition 2. Each message is in the sink once.
#[tokio::test]
async fn a_partition_lost_before_a_joint_commit_leaves_the_others_to_commit_once() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("joint-lost");
    let sink = format!("{prefix}/sink");
    let mut client = etcd.client().await;
    let queue = open_queue(client.clone(), &prefix).await;
    let ids = publish_uneven(&queue).await;
    let mut first = queue.consumer(patient_member("first")).await.unwrap();
    let deliveries = first.poll_many(Duration::from_secs(20), 16).await.unwrap();
    assert_eq!(deliveries.len(), PARTITIONS as usize);

    // The second member takes partition 2: its owner key moves to the second member's lease.
    let mut second = queue.consumer(patient_member("second")).await.unwrap();
    let owner_key = queue
        .keys()
        .group("collectors")
        .unwrap()
        .work_group()
        .owner(2);
    client
        .put(
            owner_key,
            "second",
            Some(PutOptions::new().with_lease(second.lease_id())),
        )
        .await
        .unwrap();
    let taken = second.poll(Duration::from_secs(20)).await.unwrap().unwrap();
    assert_eq!(
        shape(std::slice::from_ref(&taken)),
        vec![(2, 0, vec![1, 2, 3])]
    );
    second
        .commit(&taken, recording(&format!("{sink}-second"), &taken), &[])
        .await
        .unwrap();

    let commits = deliveries
        .iter()
        .map(|d| PartitionCommit::whole(d, recording(&sink, d), &[]))
        .collect();
    match first.commit_all(commits).await {
        Err(QueueError::LostOwnership { partition: 2 }) => {}
        other => panic!("expected partition 2 lost, got {other:?}"),
    }
    assert!(
        sink_contents(&client, &sink).await.is_empty(),
        "nothing written"
    );
    assert_eq!(first.owned_partitions(), [0, 1, 3]);

    let rest: Vec<PartitionCommit> = deliveries
        .iter()
        .filter(|d| d.partition != 2)
        .map(|d| PartitionCommit::whole(d, recording(&sink, d), &[]))
        .collect();
    first.commit_all(rest).await.unwrap();

    let mut counts = sink_contents(&client, &sink).await;
    for (id, n) in sink_contents(&client, &format!("{sink}-second")).await {
        *counts.entry(id).or_insert(0) += n;
    }
    assert_exactly_once(&counts, &ids);
    assert_eq!(
        queue.progress().await.unwrap().offsets,
        BTreeMap::from([(0, 1), (1, 2), (2, 3), (3, 4)])
    );
    assert_eq!(queue.refresh_depth().await.unwrap(), 0);
    first.leave().await.unwrap();
    second.leave().await.unwrap();
}
