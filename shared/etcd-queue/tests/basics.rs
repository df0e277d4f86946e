//! Topic creation, ordering, limits, dead letters and the depth key, against a real etcd.

mod common;

use std::time::Duration;

use common::*;
use etcd_client::{GetOptions, TxnOp};
use etcd_queue::{DeadLetter, Fence, OutgoingMessage, Queue, QueueConfig, QueueError};
use test_support::{unique_prefix, EtcdHarness};

#[tokio::test]
async fn topic_partition_count_is_fixed_at_creation() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("partitions");
    let queue = Queue::open(etcd.client().await, config(&prefix))
        .await
        .unwrap();
    assert_eq!(queue.config().partitions, 16);
    // Reopening with the same count works; another count is a clear error.
    Queue::open(etcd.client().await, config(&prefix))
        .await
        .unwrap();
    let err = Queue::open(
        etcd.client().await,
        QueueConfig {
            partitions: 32,
            ..config(&prefix)
        },
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(
            err,
            QueueError::PartitionMismatch {
                stored: 16,
                configured: 32,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        queue.depth_key_value().await.unwrap(),
        Some(0),
        "depth key exists from the start"
    );
}

/// A reader attaches without writing: nothing for a missing topic, the stored partition count
/// for an existing one, and etcd's revision unchanged either way.
#[tokio::test]
async fn attaching_reads_the_topic_and_writes_nothing() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("attach");
    let mut client = etcd.client().await;
    let revision = |response: etcd_client::GetResponse| response.header().unwrap().revision();

    let before = revision(client.get("/", None).await.unwrap());
    let missing = Queue::attach(client.clone(), config(&prefix))
        .await
        .unwrap();
    assert!(missing.is_none());
    let keys = client
        .get(
            prefix.clone(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(keys.count(), 0, "a missing topic is not created");
    assert_eq!(revision(keys), before, "nothing was written");

    Queue::open(client.clone(), config(&prefix)).await.unwrap();
    let before = revision(client.get("/", None).await.unwrap());
    let attached = Queue::attach(
        client.clone(),
        QueueConfig {
            partitions: 32,
            ..config(&prefix)
        },
    )
    .await
    .unwrap()
    .expect("the topic exists");
    assert_eq!(attached.config().partitions, 16, "the stored count wins");
    let status = attached.status().await.unwrap();
    assert_eq!(status.partitions.len(), 16);
    assert_eq!(status.depth, 0);
    assert_eq!(
        revision(client.get("/", None).await.unwrap()),
        before,
        "attaching and reading the status wrote nothing"
    );

    // A stored partition count no topic can have is corrupt metadata, not a queue to use.
    let corrupt = unique_prefix("attach-corrupt");
    let meta_key = Queue::open(client.clone(), config(&corrupt))
        .await
        .unwrap()
        .keys()
        .meta();
    client
        .put(meta_key.clone(), r#"{"partitions":0,"version":1}"#, None)
        .await
        .unwrap();
    let err = Queue::attach(client.clone(), config(&corrupt))
        .await
        .err()
        .expect("corrupt metadata");
    assert!(
        matches!(&err, QueueError::CorruptMetadata { key, .. } if *key == meta_key),
        "{err}"
    );
}

#[tokio::test]
async fn per_partition_order_is_publish_order_across_producers() {
    let etcd = EtcdHarness::start().await;
    let queue = Queue::open(
        etcd.client().await,
        QueueConfig {
            partitions: 4,
            ..config(&unique_prefix("order"))
        },
    )
    .await
    .unwrap();
    // Three producers publish concurrently to all partitions.
    let mut tasks = Vec::new();
    for producer_no in 0..3 {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut producer = queue.producer();
            for batch in 0..20 {
                let messages = (0..10)
                    .map(|i| OutgoingMessage {
                        partition: ((batch + i) % 4) as u32,
                        payload: message_id(producer_no, batch * 10 + i).into_bytes(),
                    })
                    .collect();
                producer.publish_batch(messages).await.unwrap();
            }
            producer.close().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut consumer = queue.consumer(consumer_config("only")).await.unwrap();
    let mut per_partition: Vec<Vec<(u64, String)>> = vec![Vec::new(); 4];
    let mut total = 0;
    while total < 600 {
        let delivery = consumer
            .poll(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("delivery");
        for m in &delivery.messages {
            per_partition[m.partition as usize]
                .push((m.offset, String::from_utf8(m.payload.clone()).unwrap()));
        }
        total += delivery.messages.len();
        consumer
            .commit(&delivery, Fence::default(), &[])
            .await
            .unwrap();
    }
    assert_eq!(total, 600);
    for (p, messages) in per_partition.iter().enumerate() {
        // Offsets are 1..=n without gaps, in delivery order.
        let offsets: Vec<u64> = messages.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (1..=messages.len() as u64).collect::<Vec<_>>(),
            "partition {p}"
        );
        // Each producer's messages keep the order that producer published them in.
        for producer_no in 0..3 {
            let mine: Vec<&String> = messages
                .iter()
                .map(|(_, id)| id)
                .filter(|id| id.starts_with(&format!("p{producer_no}-")))
                .collect();
            let mut sorted = mine.clone();
            sorted.sort();
            assert_eq!(
                mine, sorted,
                "producer {producer_no} order broken in partition {p}"
            );
        }
    }
    assert_eq!(queue.depth().await.unwrap(), 0);
    consumer.leave().await.unwrap();
    assert_eq!(
        queue.depth_key_value().await.unwrap(),
        Some(0),
        "depth key exactly 0 after drain"
    );
    assert_eq!(
        queue.stored_message_count().await.unwrap(),
        0,
        "committed messages are deleted"
    );
}

#[tokio::test]
async fn oversized_payload_is_a_clear_error() {
    let etcd = EtcdHarness::start().await;
    let queue = Queue::open(
        etcd.client().await,
        QueueConfig {
            max_payload_bytes: 1000,
            ..config(&unique_prefix("payload"))
        },
    )
    .await
    .unwrap();
    let mut producer = queue.producer();
    let err = producer.publish(b"k", vec![0; 1001]).await.err().unwrap();
    assert!(
        matches!(
            err,
            QueueError::PayloadTooLarge {
                size: 1001,
                max: 1000
            }
        ),
        "{err}"
    );
    let position = producer.publish(b"k", vec![0; 1000]).await.unwrap();
    assert_eq!(position.offset, 1);
    assert_eq!(queue.stored_message_count().await.unwrap(), 1);
}

#[tokio::test]
async fn dead_letters_are_counted_listed_and_do_not_block() {
    let etcd = EtcdHarness::start().await;
    let queue = Queue::open(
        etcd.client().await,
        QueueConfig {
            partitions: 1,
            ..config(&unique_prefix("dead"))
        },
    )
    .await
    .unwrap();
    let mut producer = queue.producer();
    for payload in ["good-1", "poison", "good-2"] {
        producer
            .publish(b"k", payload.as_bytes().to_vec())
            .await
            .unwrap();
    }
    producer.close().await.unwrap();
    let mut consumer = queue.consumer(consumer_config("c")).await.unwrap();
    let delivery = consumer
        .poll(Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.messages.len(), 3);
    let poison = delivery
        .messages
        .iter()
        .find(|m| m.payload == b"poison")
        .unwrap();
    consumer
        .commit(
            &delivery,
            Fence::default(),
            &[DeadLetter {
                offset: poison.offset,
                reason: "cannot decode".into(),
            }],
        )
        .await
        .unwrap();
    assert_eq!(queue.dead_letter_count().await.unwrap(), 1);
    let dead = queue.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].partition, dead[0].offset), (0, 2));
    assert_eq!(dead[0].reason, "cannot decode");
    assert_eq!(dead[0].payload, b"poison");
    // The partition moves on.
    let mut producer = queue.producer();
    producer.publish(b"k", b"after".to_vec()).await.unwrap();
    producer.close().await.unwrap();
    let next = consumer
        .poll(Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.messages.len(), 1);
    assert_eq!(next.messages[0].payload, b"after");
    assert_eq!(next.messages[0].offset, 4);
    consumer.commit(&next, Fence::default(), &[]).await.unwrap();
    assert_eq!(queue.status().await.unwrap().dead_letters, 1);
    consumer.leave().await.unwrap();
    assert_eq!(queue.depth_key_value().await.unwrap(), Some(0));
}

#[tokio::test]
async fn commit_applies_caller_operations_atomically_and_fence_failure_writes_nothing() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("fence");
    let queue = Queue::open(
        etcd.client().await,
        QueueConfig {
            partitions: 1,
            ..config(&prefix)
        },
    )
    .await
    .unwrap();
    let mut producer = queue.producer();
    producer.publish(b"k", b"m1".to_vec()).await.unwrap();
    let mut consumer = queue.consumer(consumer_config("c")).await.unwrap();
    let delivery = consumer
        .poll(Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    // A caller compare that does not hold: nothing is written, the delivery stays pending.
    let guard = format!("{prefix}/guard");
    let fence = Fence {
        compares: vec![etcd_client::Compare::version(
            guard.clone(),
            etcd_client::CompareOp::Greater,
            0,
        )],
        ops: vec![TxnOp::put(format!("{prefix}/side-effect"), "x", None)],
        bytes: 0,
    };
    let err = consumer
        .commit(&delivery, fence.clone(), &[])
        .await
        .err()
        .unwrap();
    assert!(matches!(err, QueueError::FenceFailed), "{err}");
    let mut client = etcd.client().await;
    assert_eq!(
        client
            .get(format!("{prefix}/side-effect"), None)
            .await
            .unwrap()
            .kvs()
            .len(),
        0
    );
    assert_eq!(queue.depth().await.unwrap(), 1);
    // Once the condition holds, the same commit applies both the offset and the side effect.
    client.put(guard, "1", None).await.unwrap();
    consumer.commit(&delivery, fence, &[]).await.unwrap();
    assert_eq!(
        client
            .get(format!("{prefix}/side-effect"), None)
            .await
            .unwrap()
            .kvs()
            .len(),
        1
    );
    assert_eq!(queue.depth().await.unwrap(), 0);
    let _ = client
        .get(
            format!("{prefix}/"),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_reports_broken_so_consumers_re_list() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("compacted");
    let queue = Queue::open(etcd.client().await, config(&prefix))
        .await
        .unwrap();
    let mut producer = queue.producer();
    for i in 0..5u32 {
        producer
            .publish(&i.to_be_bytes(), b"m".to_vec())
            .await
            .unwrap();
    }
    let mut client = etcd.client().await;
    let revision = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(revision, None).await.unwrap();
    let mut feed =
        etcd_queue::change_feed::ChangeFeed::open(&client, &[format!("{prefix}/")], &[], 2)
            .await
            .unwrap();
    let err = feed
        .changed()
        .await
        .expect_err("a compacted start revision breaks the feed");
    assert!(matches!(err, QueueError::WatchBroken(_)), "{err}");
    // A consumer whose feed breaks re-reads from its committed offset: all 5 are delivered once.
    let mut consumer = queue
        .consumer(consumer_config("after-compaction"))
        .await
        .unwrap();
    let mut seen = 0;
    while seen < 5 {
        let d = consumer
            .poll(Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        seen += d.messages.len();
        consumer.commit(&d, Fence::default(), &[]).await.unwrap();
    }
    assert_eq!(seen, 5);
    assert_eq!(queue.depth().await.unwrap(), 0);
}

/// Ten messages near the largest payload (900 KiB each) are pending at once: together 9 MB, over
/// the client's 4 MiB message limit had they been read in one range. Each delivery is cut from
/// the sizes the message keys carry before a payload is read: one message per delivery (two
/// would exceed the 1 MiB `max_bytes`), and every message arrives whole, in order.
#[tokio::test]
async fn large_messages_are_delivered_within_the_byte_bound() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("large-fetch");
    let queue = Queue::open(etcd.client().await, config(&prefix))
        .await
        .unwrap();
    let payload = |i: u8| vec![i; 900 * 1024];
    let mut producer = queue.producer();
    for i in 0..10u8 {
        producer
            .publish_batch(vec![OutgoingMessage {
                partition: 0,
                payload: payload(i),
            }])
            .await
            .unwrap();
    }
    producer.close().await.unwrap();
    // A peek reads the same range in pages.
    let peeked = queue.peek(0, 0, 100).await.unwrap();
    assert_eq!(
        peeked.iter().map(|m| m.offset).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<u64>>()
    );
    assert!(peeked
        .iter()
        .zip(0u8..)
        .all(|(m, i)| m.payload == payload(i)));

    let mut consumer = queue.consumer(consumer_config("large")).await.unwrap();
    for i in 0..10u8 {
        let delivery = consumer
            .poll(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("a pending message");
        assert_eq!(delivery.messages.len(), 1, "delivery {i}");
        assert_eq!(delivery.messages[0].offset, u64::from(i) + 1);
        assert_eq!(delivery.messages[0].payload, payload(i));
        consumer
            .commit(&delivery, Fence::default(), &[])
            .await
            .unwrap();
    }
    assert_eq!(queue.depth().await.unwrap(), 0);
    consumer.leave().await.unwrap();
}

/// 4,096 partitions (the most a topic may have) with a member and an owner key each are read in
/// pages at one revision: the status lists every partition.
#[tokio::test]
async fn the_status_of_the_largest_topic_is_read_in_pages() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("status-pages");
    let queue = Queue::open(
        etcd.client().await,
        QueueConfig {
            partitions: 4096,
            ..config(&prefix)
        },
    )
    .await
    .unwrap();
    let mut producer = queue.producer();
    let messages: Vec<OutgoingMessage> = (0..100u32)
        .map(|p| OutgoingMessage {
            partition: p * 40,
            payload: vec![1; 10],
        })
        .collect();
    producer.publish_batch(messages).await.unwrap();
    producer.close().await.unwrap();
    let status = queue.status().await.unwrap();
    assert_eq!(status.partitions.len(), 4096);
    assert_eq!(status.depth, 100);
    assert_eq!(
        status.partitions.iter().filter(|p| p.head == 1).count(),
        100
    );
    assert_eq!(queue.progress().await.unwrap().offsets.len(), 4096);
}

/// A range of thousands of keys read in pages of a few keys each (a large stated value bound):
/// the pages narrow their window of the range as they go, and every key comes exactly once, in
/// order, with a limit as without, keys that extend others included.
#[tokio::test]
async fn a_large_range_is_read_in_windows_with_every_key_once_in_order() {
    use etcd_queue::{RangePages, RangeRead};

    let etcd = EtcdHarness::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("range-windows");
    let mut keys: Vec<String> = (0..3_000u32)
        .map(|i| format!("{prefix}/k/{:08x}", i.wrapping_mul(2_654_435_761)))
        .collect();
    keys.extend(["a", "a\u{7f}", "a\u{7f}\u{7f}", "b"].map(|t| format!("{prefix}/k/{t}")));
    for group in keys.chunks(100) {
        let ops: Vec<TxnOp> = group
            .iter()
            .map(|k| TxnOp::put(k.clone(), "v", None))
            .collect();
        client
            .clone()
            .txn(etcd_client::Txn::new().and_then(ops))
            .await
            .unwrap();
    }
    keys.sort();
    let read = |range: RangeRead| async {
        let mut pages = RangePages::new(client.clone(), "read", range, Duration::from_secs(5));
        let mut read = Vec::new();
        let mut count = 0;
        while let Some(page) = pages.next_page().await.unwrap() {
            count += 1;
            read.extend(page.iter().map(|kv| kv.key_str().unwrap().to_string()));
        }
        (read, count)
    };
    // About 15 keys per page at a stated 64 KiB per value.
    let range = RangeRead::prefix(format!("{prefix}/k/"), 64 * 1024);
    let (all, pages) = read(range.clone()).await;
    assert_eq!(all, keys);
    assert!(pages > 100, "{pages} pages");
    let (first, _) = read(range.limit(1_234)).await;
    assert_eq!(first, keys[..1_234]);
}
