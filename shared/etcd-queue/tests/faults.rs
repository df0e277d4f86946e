//! The queue under failure: consumers killed mid-stream, revoked leases, no consumers at all,
//! membership churn, a full queue (by messages and by bytes), and an etcd restart. Counts are
//! exact.

mod common;

use std::time::Duration;

use common::*;
use etcd_client::TxnOp;
use etcd_queue::{Fence, OutgoingMessage, Queue, QueueConfig, QueueError};
use rand::Rng;
use test_support::{unique_prefix, EtcdHarness, OwnershipLog};
use tokio::sync::watch;

type ConsumerTask = tokio::task::JoinHandle<Result<u64, QueueError>>;

async fn publish_all(
    queue: Queue,
    producer_no: usize,
    count: usize,
    per_batch: usize,
) -> Vec<String> {
    let mut producer = queue.producer();
    let mut ids = Vec::with_capacity(count);
    for start in (0..count).step_by(per_batch) {
        let messages: Vec<OutgoingMessage> = (start..(start + per_batch).min(count))
            .map(|n| {
                let id = message_id(producer_no, n);
                ids.push(id.clone());
                OutgoingMessage {
                    partition: queue.partition_for(id.as_bytes()),
                    payload: id.into_bytes(),
                }
            })
            .collect();
        producer.publish_batch(messages).await.unwrap();
    }
    producer.close().await.unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_consumers_never_lose_or_duplicate_a_commit() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("kill");
    let sink = format!("{prefix}/sink");
    let queue = Queue::open(etcd.client().await, config(&prefix))
        .await
        .unwrap();
    let (stop_tx, stop) = watch::channel(false);

    let producers: Vec<_> = (0..3)
        .map(|p| tokio::spawn(publish_all(queue.clone(), p, 6_667, 50)))
        .collect();
    // Four consumer slots; each slot's consumer is killed (task aborted, lease left to expire) at
    // random moments and replaced by a new incarnation.
    let mut slots: Vec<(usize, tokio::task::JoinHandle<Result<u64, QueueError>>)> = (0..4)
        .map(|slot| {
            let handle = tokio::spawn(run_consumer(
                queue.clone(),
                consumer_config(&format!("slot{slot}-0")),
                sink.clone(),
                stop.clone(),
            ));
            (0, handle)
        })
        .collect();
    let mut kills = 0;
    for _ in 0..6 {
        let pause = rand::rng().random_range(50..400);
        tokio::time::sleep(Duration::from_millis(pause)).await; // a random kill moment, not a wait
        let slot = rand::rng().random_range(0..4);
        let (incarnation, handle) = &mut slots[slot];
        handle.abort();
        kills += 1;
        *incarnation += 1;
        *handle = tokio::spawn(run_consumer(
            queue.clone(),
            consumer_config(&format!("slot{slot}-{incarnation}")),
            sink.clone(),
            stop.clone(),
        ));
    }
    let mut expected = Vec::new();
    for p in producers {
        expected.extend(p.await.unwrap());
    }
    assert_eq!(expected.len(), 20_001);
    wait_until("queue drained", Duration::from_secs(120), || async {
        queue.depth().await.unwrap() == 0
    })
    .await;
    stop_tx.send(true).unwrap();
    for (_, handle) in slots {
        handle.await.unwrap().unwrap();
    }
    assert_eq!(kills, 6);
    let counts = sink_contents(&etcd.client().await, &sink).await;
    assert_exactly_once(&counts, &expected);
    assert_eq!(queue.stored_message_count().await.unwrap(), 0);
    assert_eq!(queue.depth_key_value().await.unwrap(), Some(0));
}

#[tokio::test]
async fn a_consumer_whose_lease_was_revoked_cannot_commit() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("revoked");
    let queue = Queue::open(
        etcd.client().await,
        QueueConfig {
            partitions: 2,
            ..config(&prefix)
        },
    )
    .await
    .unwrap();
    let mut producer = queue.producer();
    for i in 0..10 {
        producer
            .publish_batch(vec![OutgoingMessage {
                partition: i % 2,
                payload: vec![b'x'; 10],
            }])
            .await
            .unwrap();
    }
    let mut consumer = queue.consumer(consumer_config("paused")).await.unwrap();
    let delivery = consumer
        .poll(Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    // Mid-batch, the lease goes (as if the process had been paused past its TTL).
    let mut client = etcd.client().await;
    client.lease_revoke(consumer.lease_id()).await.unwrap();
    let side_effect = format!("{prefix}/store-write");
    let fence = Fence {
        compares: vec![],
        ops: vec![TxnOp::put(side_effect.clone(), "written", None)],
        bytes: 0,
    };
    let err = consumer.commit(&delivery, fence, &[]).await.err().unwrap();
    assert!(
        matches!(err, QueueError::LostOwnership { partition } if partition == delivery.partition),
        "{err}"
    );
    assert!(
        client
            .get(side_effect, None)
            .await
            .unwrap()
            .kvs()
            .is_empty(),
        "extra op applied"
    );
    assert_eq!(queue.depth().await.unwrap(), 10, "nothing committed");
    // The member rejoins with a new lease and the messages are delivered again.
    let mut seen = 0;
    while seen < 10 {
        let d = consumer
            .poll(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("redelivery");
        seen += d.messages.len();
        consumer.commit(&d, Fence::default(), &[]).await.unwrap();
    }
    assert_eq!(seen, 10);
    assert_eq!(queue.depth().await.unwrap(), 0);
}

#[tokio::test]
async fn messages_wait_for_a_consumer_without_expiring() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("zero");
    let sink = format!("{prefix}/sink");
    let queue = Queue::open(etcd.client().await, config(&prefix))
        .await
        .unwrap();
    let expected = publish_all(queue.clone(), 0, 10_000, 100).await;
    assert_eq!(queue.stored_message_count().await.unwrap(), 10_000);
    assert_eq!(queue.depth_key_value().await.unwrap(), Some(10_000));
    // Nothing on the queue can expire: no message key is attached to a lease. (An hour without
    // consumers is simulated by this: etcd only ever deletes keys by lease expiry or request.)
    let mut client = etcd.client().await;
    let all = client
        .get(
            format!("{prefix}/queue/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let leased: Vec<_> = all
        .kvs()
        .iter()
        .filter(|kv| kv.lease() != 0 && kv.key_str().unwrap().contains("/msg/"))
        .collect();
    assert!(
        leased.is_empty(),
        "{} message keys carry a lease",
        leased.len()
    );
    let (stop_tx, stop) = watch::channel(false);
    let consumer = tokio::spawn(run_consumer(
        queue.clone(),
        consumer_config("late"),
        sink.clone(),
        stop,
    ));
    wait_until("drained", Duration::from_secs(60), || async {
        queue.depth().await.unwrap() == 0
    })
    .await;
    stop_tx.send(true).unwrap();
    assert_eq!(consumer.await.unwrap().unwrap(), 10_000);
    assert_exactly_once(&sink_contents(&client, &sink).await, &expected);
    assert_eq!(queue.depth_key_value().await.unwrap(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_churn_never_double_owns_a_partition() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("churn");
    let sink = format!("{prefix}/sink");
    let queue = Queue::open(etcd.client().await, config(&prefix))
        .await
        .unwrap();
    // Record every owner-key event from the start to check exclusivity afterwards.
    let client = etcd.client().await;
    let owners_prefix = format!("{prefix}/queue/telemetry/group/collectors/owner/");
    let ownership = OwnershipLog::start(&client, &owners_prefix).await;

    let producer = tokio::spawn(publish_all(queue.clone(), 0, 6_000, 20));
    let mut running: Vec<(watch::Sender<bool>, ConsumerTask)> = Vec::new();
    let mut next_id = 0;
    for target in [1usize, 10, 3, 0] {
        while running.len() < target {
            let (tx, rx) = watch::channel(false);
            let id = format!("member-{next_id}");
            next_id += 1;
            running.push((
                tx,
                tokio::spawn(run_consumer(
                    queue.clone(),
                    consumer_config(&id),
                    sink.clone(),
                    rx,
                )),
            ));
        }
        while running.len() > target {
            let (tx, handle) = running.pop().unwrap();
            tx.send(true).unwrap();
            handle.await.unwrap().unwrap();
        }
        // Let the group settle at this size while messages flow.
        let size = target;
        wait_until(
            "group reaches its size",
            Duration::from_secs(20),
            || async { queue.status().await.unwrap().members.len() == size },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await; // traffic at this size, not a condition
    }
    let expected = producer.await.unwrap();
    // Group is empty now: nothing lost, the backlog waits.
    let remaining = queue.depth().await.unwrap();
    let (tx, rx) = watch::channel(false);
    let last = tokio::spawn(run_consumer(
        queue.clone(),
        consumer_config("final"),
        sink.clone(),
        rx,
    ));
    wait_until("drained", Duration::from_secs(60), || async {
        queue.depth().await.unwrap() == 0
    })
    .await;
    tx.send(true).unwrap();
    let final_count = last.await.unwrap().unwrap();
    assert!(
        final_count <= remaining,
        "final consumer committed {final_count} > backlog {remaining}"
    );
    let ownership = ownership.finish().await;
    assert_exactly_once(&sink_contents(&client, &sink).await, &expected);
    // Exclusivity (checked by the log): per partition, owner keys alternate create and delete.
    assert!(
        ownership.total_acquisitions() >= 16 * 3,
        "expected ownership to move through the churn, saw {}",
        ownership.total_acquisitions()
    );
    assert!(
        ownership.still_owned.is_empty(),
        "partitions still owned after all left: {:?}",
        ownership.still_owned
    );
}

#[tokio::test]
async fn a_full_queue_blocks_then_fails_and_drops_nothing() {
    let etcd = EtcdHarness::start().await;
    let queue = Queue::open(
        etcd.client().await,
        QueueConfig {
            partitions: 2,
            max_depth: 100,
            backpressure_timeout: Duration::from_millis(500),
            ..config(&unique_prefix("full"))
        },
    )
    .await
    .unwrap();
    let mut producer = queue.producer();
    for i in 0..100u32 {
        producer
            .publish_batch(vec![OutgoingMessage {
                partition: i % 2,
                payload: i.to_string().into_bytes(),
            }])
            .await
            .unwrap();
    }
    let started = std::time::Instant::now();
    let err = producer
        .publish_batch(vec![OutgoingMessage {
            partition: 0,
            payload: b"overflow".to_vec(),
        }])
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            QueueError::QueueFull {
                depth: 100,
                max: 100,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "failed without waiting"
    );
    assert_eq!(
        queue.stored_message_count().await.unwrap(),
        100,
        "nothing dropped or added"
    );
    // Once a consumer drains some, the producer can publish again.
    let mut consumer = queue.consumer(consumer_config("drain")).await.unwrap();
    let d = consumer
        .poll(Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let drained = d.messages.len() as u64;
    consumer.commit(&d, Fence::default(), &[]).await.unwrap();
    producer
        .publish_batch(vec![OutgoingMessage {
            partition: 0,
            payload: b"fits".to_vec(),
        }])
        .await
        .unwrap();
    assert_eq!(queue.depth().await.unwrap(), 100 - drained + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producers_and_consumers_survive_an_etcd_restart() {
    let mut etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("restart");
    let sink = format!("{prefix}/sink");
    let queue = Queue::open(etcd.client().await, config(&prefix))
        .await
        .unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let consumers: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(run_consumer(
                queue.clone(),
                consumer_config(&format!("c{i}")),
                sink.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let producer = tokio::spawn(publish_all(queue.clone(), 0, 4_000, 10));
    wait_until(
        "some traffic committed",
        Duration::from_secs(30),
        || async {
            let depth = queue.progress().await.unwrap();
            depth.offsets.values().sum::<u64>() > 200
        },
    )
    .await;
    etcd.restart().await;
    let expected = producer.await.unwrap();
    wait_until("drained after restart", Duration::from_secs(90), || async {
        matches!(queue.depth().await, Ok(0))
    })
    .await;
    stop_tx.send(true).unwrap();
    for c in consumers {
        c.await.unwrap().unwrap();
    }
    assert_exactly_once(&sink_contents(&etcd.client().await, &sink).await, &expected);
}

/// etcd's answers about a lease that is gone are recognised whichever request met them, and a
/// lease revoked behind its keeper's back still revokes cleanly.
#[tokio::test]
async fn a_missing_lease_is_recognised_in_every_answer() {
    use etcd_client::{PutOptions, Txn};
    use etcd_queue::is_lease_not_found;
    use etcd_queue::lease::KeptLease;

    let etcd = EtcdHarness::start().await;
    let mut client = etcd.client().await;
    let key = format!("{}/leased", unique_prefix("lease-not-found"));
    let kept = KeptLease::grant(&client, Duration::from_secs(30), Duration::from_secs(10))
        .await
        .unwrap();
    let id = kept.id();
    client.lease_revoke(id).await.unwrap();

    let revoke = client.lease_revoke(id).await.unwrap_err();
    assert!(is_lease_not_found(&revoke), "{revoke:?}");
    let put = client
        .put(key.clone(), "v", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap_err();
    assert!(is_lease_not_found(&put), "{put:?}");
    let txn = client
        .txn(Txn::new().and_then([TxnOp::put(
            key.clone(),
            "v",
            Some(PutOptions::new().with_lease(id)),
        )]))
        .await
        .unwrap_err();
    assert!(is_lease_not_found(&txn), "{txn:?}");
    // Another refusal is not a missing lease.
    let too_many = client
        .txn(
            Txn::new().and_then(
                (0..=etcd_queue::MAX_TXN_OPS)
                    .map(|i| TxnOp::put(format!("{key}/{i}"), "v", None))
                    .collect::<Vec<_>>(),
            ),
        )
        .await
        .unwrap_err();
    assert!(!is_lease_not_found(&too_many), "{too_many:?}");

    kept.revoke(&client).await.unwrap();
}

/// Backpressure counts bytes as well as messages: the pending payload bytes are exact whatever
/// producers and consumers race (each counter is written only under the compare that already
/// orders its writers), and a producer waits, then fails, at the byte bound while the message
/// bound is far away.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_bytes_are_exact_under_concurrency_and_bound_the_backlog() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("pending-bytes");
    let queue = Queue::open(
        etcd.client().await,
        QueueConfig {
            partitions: 2,
            max_pending_bytes: 64 * 1024,
            backpressure_timeout: Duration::from_millis(300),
            ..config(&prefix)
        },
    )
    .await
    .unwrap();
    // Four producers race on both partitions with messages of different sizes.
    let producers: Vec<_> = (0..4u32)
        .map(|producer| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut producer_handle = queue.producer();
                let mut bytes = 0u64;
                for n in 0..25u32 {
                    let size = 100 + (producer * 25 + n) as usize * 7;
                    bytes += size as u64;
                    producer_handle
                        .publish_batch(vec![OutgoingMessage {
                            partition: n % 2,
                            payload: vec![b'x'; size],
                        }])
                        .await
                        .unwrap();
                }
                producer_handle.close().await.unwrap();
                bytes
            })
        })
        .collect();
    let mut published = 0;
    for producer in producers {
        published += producer.await.unwrap();
    }
    let status = queue.status().await.unwrap();
    assert_eq!((status.depth, status.pending_bytes), (100, published));

    // Two consumers race to commit part of it: what is left is exact.
    let mut committed = 0u64;
    for member in ["a", "b"] {
        let mut consumer = queue.consumer(consumer_config(member)).await.unwrap();
        let delivery = consumer
            .poll(Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        let taken = &delivery.messages[..delivery.messages.len().min(10)];
        let prefix_delivery = etcd_queue::Delivery {
            messages: taken.to_vec(),
            ..delivery.clone()
        };
        consumer
            .commit(&prefix_delivery, Fence::default(), &[])
            .await
            .unwrap();
        committed += taken.iter().map(|m| m.payload.len() as u64).sum::<u64>();
        consumer.leave().await.unwrap();
    }
    let left = published - committed;
    assert_eq!(queue.status().await.unwrap().pending_bytes, left);

    // The byte bound, not the message bound (100,000), stops a publish one byte too large, and
    // admits one that fills it exactly.
    let room = 64 * 1024 - left as usize;
    let mut producer = queue.producer();
    let one = |size: usize| {
        vec![OutgoingMessage {
            partition: 0,
            payload: vec![b'y'; size],
        }]
    };
    let err = producer.publish_batch(one(room + 1)).await.err().unwrap();
    assert!(
        matches!(
            err,
            QueueError::QueueFull { pending_bytes, max_bytes: 65536, .. } if pending_bytes == left
        ),
        "{err}"
    );
    assert_eq!(queue.status().await.unwrap().pending_bytes, left);
    producer.publish_batch(one(room)).await.unwrap();
    producer.close().await.unwrap();
    assert_eq!(queue.status().await.unwrap().pending_bytes, 64 * 1024);
}
