//! A commit's failure never strands its partition, whatever its cause: a commit that lands after
//! the consumer gave up on it, an etcd outage longer than the retry budget, a commit etcd refuses
//! for good, a lease named by the commit that is gone, an owner key whose revision the member did
//! not know, and a producer whose marker lease expired. Each ends with every message committed
//! exactly once by a member that still owns the partition.

mod common;

use std::time::Duration;

use common::*;
use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions, TxnOp};
use etcd_queue::{Delivery, Fence, OutgoingMessage, Queue, QueueConfig, QueueError};
use test_support::{unique_prefix, EtcdHarness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long one etcd request may take before the client gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);

/// A client of `endpoint` whose requests time out after [`REQUEST_TIMEOUT`], as a deployed
/// function's do.
async fn client_with_timeout(endpoint: String) -> Client {
    let options = ConnectOptions::new().with_timeout(REQUEST_TIMEOUT);
    Client::connect([endpoint], Some(options)).await.unwrap()
}

/// A TCP proxy in front of etcd that passes every request on but can hold etcd's answers back:
/// what a client sees when the network loses the answers to requests etcd has applied.
struct AnswerGate {
    port: u16,
    open: watch::Sender<bool>,
}

impl AnswerGate {
    async fn start(etcd: &EtcdHarness) -> Self {
        let upstream = etcd.endpoint().trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, gate) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, gate.clone()));
            }
        });
        AnswerGate { port, open }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From now on etcd's answers wait at the proxy.
    fn hold(&self) {
        self.open.send_replace(false);
    }

    /// The answers held back, and every later one, go through.
    fn release(&self) {
        self.open.send_replace(true);
    }
}

/// Copies requests from `client` to `server` at once, and answers back while `gate` is open.
async fn relay(client: TcpStream, server: TcpStream, mut gate: watch::Receiver<bool>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let requests = tokio::io::copy(&mut from_client, &mut to_server);
    let answers = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = from_server.read(&mut buffer).await?;
            if n == 0 || gate.wait_for(|open| *open).await.is_err() {
                return Ok::<(), std::io::Error>(());
            }
            to_client.write_all(&buffer[..n]).await?;
        }
    };
    tokio::select! {
        _ = requests => {}
        _ = answers => {}
    }
}

/// A one-partition queue whose operations give up after `retry_budget` of transient failures.
async fn open_queue(client: Client, prefix: &str, retry_budget: Duration) -> Queue {
    let config = QueueConfig {
        partitions: 1,
        retry_budget,
        ..config(prefix)
    };
    Queue::open(client, config).await.unwrap()
}

async fn publish(queue: &Queue, ids: &[&str]) {
    let mut producer = queue.producer();
    let messages = ids
        .iter()
        .map(|id| OutgoingMessage {
            partition: 0,
            payload: id.as_bytes().to_vec(),
        })
        .collect();
    producer.publish_batch(messages).await.unwrap();
    producer.close().await.unwrap();
}

/// A fence that records the delivery's message ids under `{sink}/{n}` in the commit itself.
fn recording(sink: &str, n: usize, delivery: &Delivery) -> Fence {
    let ids: Vec<String> = delivery
        .messages
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect();
    Fence {
        compares: vec![],
        ops: vec![TxnOp::put(format!("{sink}/{n:04}"), ids.join(","), None)],
        bytes: 0,
    }
}

async fn next_delivery(consumer: &mut etcd_queue::Consumer) -> Delivery {
    consumer
        .poll(Duration::from_secs(20))
        .await
        .unwrap()
        .expect("a delivery")
}

fn offsets(delivery: &Delivery) -> Vec<u64> {
    delivery.messages.iter().map(|m| m.offset).collect()
}

fn expected(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

/// The partition's messages `ids` are delivered again to the same member, from offset 0;
/// committed now, each is in the sink once and nothing is left pending.
async fn assert_redelivered_and_committed_once(
    queue: &Queue,
    consumer: etcd_queue::Consumer,
    client: &Client,
    sink: &str,
    ids: &[&str],
) {
    let mut consumer = consumer;
    let again = next_delivery(&mut consumer).await;
    let all: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!((again.after, offsets(&again)), (0, all));
    consumer
        .commit(&again, recording(sink, 1, &again), &[])
        .await
        .unwrap();
    assert_eq!(consumer.owned_partitions(), [0]);
    assert_exactly_once(&sink_contents(client, sink).await, &expected(ids));
    assert_eq!(queue.refresh_depth().await.unwrap(), 0);
    consumer.leave().await.unwrap();
}

/// etcd applies the commit but its answers are lost: the commit times out, the read-backs too,
/// and the consumer gives up after its retry budget. It must still own the partition and, having
/// re-read the offset once etcd answers again, must not deliver those messages again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_lands_after_the_consumer_gave_up_is_not_delivered_again() {
    let etcd = EtcdHarness::start().await;
    let gate = AnswerGate::start(&etcd).await;
    let prefix = unique_prefix("late-commit");
    let sink = format!("{prefix}/sink");
    let queue = open_queue(
        client_with_timeout(gate.endpoint()).await,
        &prefix,
        Duration::from_secs(1),
    )
    .await;
    publish(&queue, &["m1", "m2", "m3"]).await;
    let mut consumer = queue.consumer(patient_member("late")).await.unwrap();
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(offsets(&delivery), [1, 2, 3]);

    gate.hold();
    let gave_up = consumer
        .commit(&delivery, recording(&sink, 0, &delivery), &[])
        .await;
    assert_eq!(consumer.owned_partitions(), [0], "the partition is kept");
    assert!(
        matches!(gave_up, Err(QueueError::Unavailable { .. })),
        "{gave_up:?}"
    );
    let direct = open_queue(etcd.client().await, &prefix, Duration::from_secs(5)).await;
    assert_eq!(
        direct.progress().await.unwrap().offsets.get(&0),
        Some(&3),
        "the commit landed although its answer never arrived"
    );
    gate.release();

    publish(&queue, &["m4"]).await;
    let next = next_delivery(&mut consumer).await;
    assert_eq!((next.after, offsets(&next)), (3, vec![4]), "no redelivery");
    consumer
        .commit(&next, recording(&sink, 1, &next), &[])
        .await
        .unwrap();
    assert_eq!(consumer.owned_partitions(), [0]);
    assert_exactly_once(
        &sink_contents(&etcd.client().await, &sink).await,
        &expected(&["m1", "m2", "m3", "m4"]),
    );
    assert_eq!(queue.refresh_depth().await.unwrap(), 0);
    consumer.leave().await.unwrap();
}

/// etcd is down for longer than the retry budget while the commit is tried: nothing reached it,
/// so once it is back the same messages are delivered again, to the same member, and committed
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_retry_budget_keeps_the_partition_and_redelivers() {
    let mut etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("long-outage");
    let sink = format!("{prefix}/sink");
    let queue = open_queue(
        client_with_timeout(etcd.endpoint()).await,
        &prefix,
        Duration::from_secs(1),
    )
    .await;
    publish(&queue, &["m1", "m2"]).await;
    let mut consumer = queue.consumer(patient_member("outage")).await.unwrap();
    let delivery = next_delivery(&mut consumer).await;

    etcd.kill();
    let failed = consumer
        .commit(&delivery, recording(&sink, 0, &delivery), &[])
        .await;
    assert_eq!(consumer.owned_partitions(), [0], "the partition is kept");
    assert!(
        matches!(failed, Err(QueueError::Unavailable { .. })),
        "{failed:?}"
    );
    etcd.restart().await;

    let client = etcd.client().await;
    assert_redelivered_and_committed_once(&queue, consumer, &client, &sink, &["m1", "m2"]).await;
}

/// etcd refuses the commit for good (one of the caller's writes is larger than a request may
/// be): nothing was written, the partition stays the member's, and the delivery comes again.
#[tokio::test]
async fn a_commit_refused_for_good_keeps_the_partition() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("refused-commit");
    let sink = format!("{prefix}/sink");
    let queue = open_queue(etcd.client().await, &prefix, Duration::from_secs(5)).await;
    publish(&queue, &["m1", "m2"]).await;
    let mut consumer = queue.consumer(patient_member("refused")).await.unwrap();
    let delivery = next_delivery(&mut consumer).await;

    let oversized = Fence {
        compares: vec![],
        ops: vec![TxnOp::put(
            format!("{sink}/big"),
            vec![0u8; 1_700_000],
            None,
        )],
        bytes: 1_700_000,
    };
    let refused = consumer.commit(&delivery, oversized, &[]).await;
    assert!(
        matches!(
            refused,
            Err(QueueError::Etcd {
                operation: "commit",
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(consumer.owned_partitions(), [0], "the partition is kept");

    let client = etcd.client().await;
    assert_redelivered_and_committed_once(&queue, consumer, &client, &sink, &["m1", "m2"]).await;
}

/// A write of the commit is attached to a lease that expired between preparing and committing
/// (as the store's retention leases can): etcd refuses the commit, the partition stays the
/// member's, and a commit on a live lease then lands.
#[tokio::test]
async fn a_commit_naming_an_expired_lease_keeps_the_partition() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("expired-lease-commit");
    let sink = format!("{prefix}/sink");
    let mut client = etcd.client().await;
    let queue = open_queue(client.clone(), &prefix, Duration::from_secs(5)).await;
    publish(&queue, &["m1"]).await;
    let mut consumer = queue.consumer(patient_member("leased")).await.unwrap();
    let delivery = next_delivery(&mut consumer).await;

    let lease = client.lease_grant(60, None).await.unwrap().id();
    let leased_write = |lease: i64| Fence {
        compares: vec![],
        ops: vec![TxnOp::put(
            format!("{sink}/0000"),
            "m1",
            Some(PutOptions::new().with_lease(lease)),
        )],
        bytes: 0,
    };
    client.lease_revoke(lease).await.unwrap();
    let refused = consumer.commit(&delivery, leased_write(lease), &[]).await;
    assert!(
        matches!(&refused, Err(QueueError::Etcd { source, .. }) if etcd_queue::is_lease_not_found(source)),
        "{refused:?}"
    );
    assert_eq!(consumer.owned_partitions(), [0], "the partition is kept");

    let again = next_delivery(&mut consumer).await;
    assert_eq!((again.after, offsets(&again)), (0, vec![1]));
    let live = client.lease_grant(60, None).await.unwrap().id();
    consumer
        .commit(&again, leased_write(live), &[])
        .await
        .unwrap();
    assert_exactly_once(&sink_contents(&client, &sink).await, &expected(&["m1"]));
    assert_eq!(queue.refresh_depth().await.unwrap(), 0);
    consumer.leave().await.unwrap();
}

/// The member's owner key was rewritten on its own lease behind its back (as an acquire whose
/// answer was lost leaves it): the key is the member's whatever its revision, so its commits
/// still land and the partition is not left owned by a key nobody acts on.
#[tokio::test]
async fn an_owner_key_on_the_members_lease_is_its_own_whatever_its_revision() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("own-lease");
    let sink = format!("{prefix}/sink");
    let mut client = etcd.client().await;
    let queue = open_queue(client.clone(), &prefix, Duration::from_secs(5)).await;
    publish(&queue, &["m1", "m2"]).await;
    let mut consumer = queue.consumer(patient_member("mine")).await.unwrap();
    let delivery = next_delivery(&mut consumer).await;

    let owners = queue.keys().group("collectors").unwrap().work_group();
    let owner_key = owners.owner(0);
    client
        .put(
            owner_key.clone(),
            "mine",
            Some(PutOptions::new().with_lease(consumer.lease_id())),
        )
        .await
        .unwrap();
    consumer
        .commit(&delivery, recording(&sink, 0, &delivery), &[])
        .await
        .unwrap();
    assert_eq!(consumer.owned_partitions(), [0]);

    // The same after a snapshot: the rebalance reads the key and keeps it.
    client
        .put(
            owner_key,
            "mine",
            Some(PutOptions::new().with_lease(consumer.lease_id())),
        )
        .await
        .unwrap();
    publish(&queue, &["m3"]).await;
    let next = next_delivery(&mut consumer).await;
    consumer
        .commit(&next, recording(&sink, 1, &next), &[])
        .await
        .unwrap();
    assert_exactly_once(
        &sink_contents(&client, &sink).await,
        &expected(&["m1", "m2", "m3"]),
    );
    assert_eq!(queue.refresh_depth().await.unwrap(), 0);
    consumer.leave().await.unwrap();
}

/// The lease of a producer's marker key expired (the producer sat idle or paused for longer than
/// its TTL): its next publish is not refused forever but lands, once.
#[tokio::test]
async fn a_publish_after_the_producer_marker_lease_expired_lands_once() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("marker-lease");
    let mut client = etcd.client().await;
    let queue = open_queue(client.clone(), &prefix, Duration::from_secs(5)).await;
    let mut producer = queue.producer();
    let one = |id: &str| {
        vec![OutgoingMessage {
            partition: 0,
            payload: id.as_bytes().to_vec(),
        }]
    };
    producer.publish_batch(one("m1")).await.unwrap();
    let marker = client
        .get(
            format!("{prefix}/queue/telemetry/producer/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let lease = marker.kvs()[0].lease();
    client.lease_revoke(lease).await.unwrap();

    let positions = producer.publish_batch(one("m2")).await.unwrap();
    assert_eq!(positions[0].offset, 2);
    producer.close().await.unwrap();
    let pending: Vec<Vec<u8>> = queue
        .peek(0, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(pending, [b"m1".to_vec(), b"m2".to_vec()]);
}
