//! The collector end to end against a real etcd: queue -> collector -> store, exact counts, with
//! collector processes killed (SIGKILL) and scaled while it runs, dead letters, HTTP invocation.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use etcd_queue::{OutgoingMessage, Queue};
use prometheus_client::registry::Registry;
use rand::Rng;
use telemetry_model::{
    BatchEvent, DataEncoding, SampleBatch, TimestampMicros, COLUMNAR_CONTENT_TYPE,
};
use test_support::{http_request, unique_prefix, EtcdHarness};

fn now_us() -> i64 {
    TimestampMicros::now().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_through_the_queue_are_stored_exactly_once() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("collector-passes");
    let queue = Queue::open(etcd.client().await, queue_config(&prefix))
        .await
        .unwrap();
    publish_passes(&queue, 3, now_us() - 600_000_000).await;
    let mut collector = spawn_collector(&etcd.endpoint(), &prefix, "c1");
    wait_until("queue drained", Duration::from_secs(60), || async {
        queue.depth().await.unwrap() == 0
    })
    .await;
    assert!(terminate(&mut collector), "collector exits 0 on SIGTERM");
    assert_store_exact(&store_for(etcd.client().await, &prefix), 3).await;
    let status = queue.status().await.unwrap();
    assert!(
        status.members.is_empty(),
        "the collector left the group: {:?}",
        status.members
    );
    assert!(
        status.partitions.iter().all(|p| p.owner.is_none()),
        "partitions released on SIGTERM"
    );
    assert_eq!(queue.depth_key_value().await.unwrap(), Some(0));
}

/// Old messages may sit in a queue while collectors are upgraded: every form a streamer ever
/// wrote (structured JSON with JSON or base64 columnar data, the binary frame) is decoded and
/// stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_message_form_is_stored_exactly_once() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("collector-forms");
    let queue = Queue::open(etcd.client().await, queue_config(&prefix))
        .await
        .unwrap();
    publish_passes(&queue, 4, now_us() - 600_000_000).await;
    let mut collector = spawn_collector(&etcd.endpoint(), &prefix, "c1");
    wait_until("queue drained", Duration::from_secs(60), || async {
        queue.depth().await.unwrap() == 0
    })
    .await;
    assert!(terminate(&mut collector), "collector exits 0 on SIGTERM");
    assert_store_exact(&store_for(etcd.client().await, &prefix), 4).await;
    assert_eq!(queue.dead_letter_count().await.unwrap(), 0);
}

async fn run_with_kills(collectors: usize, kills: usize) {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("collector-kill");
    let queue = Queue::open(etcd.client().await, queue_config(&prefix))
        .await
        .unwrap();
    let mut children: Vec<_> = (0..collectors)
        .map(|i| spawn_collector(&etcd.endpoint(), &prefix, &format!("c{i}-0")))
        .collect();
    let t0 = now_us() - 600_000_000;
    let mut passes = 0;
    for kill in 0..kills {
        // A pass of traffic, then a kill at a random point while it is being consumed.
        let committed_before: u64 = queue.progress().await.unwrap().offsets.values().sum();
        publish_passes(&queue, 1, t0 + (passes * ROWS * 10) as i64).await;
        passes += 1;
        let target = committed_before + rand::rng().random_range(1..=12);
        wait_until(
            "progress before the kill",
            Duration::from_secs(60),
            || async {
                queue
                    .progress()
                    .await
                    .unwrap()
                    .offsets
                    .values()
                    .sum::<u64>()
                    >= target
            },
        )
        .await;
        let victim = rand::rng().random_range(0..collectors);
        children[victim].kill().unwrap(); // SIGKILL: no drain, the lease is left to expire
        children[victim].wait().unwrap();
        children[victim] = spawn_collector(
            &etcd.endpoint(),
            &prefix,
            &format!("c{victim}-{}", kill + 1),
        );
    }
    publish_passes(&queue, 2, t0 + (passes * ROWS * 10) as i64).await;
    passes += 2;
    wait_until("queue drained", Duration::from_secs(120), || async {
        queue.depth().await.unwrap() == 0
    })
    .await;
    for child in &mut children {
        assert!(terminate(child));
    }
    assert_store_exact(&store_for(etcd.client().await, &prefix), passes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_killed_ten_times_loses_and_duplicates_nothing() {
    run_with_kills(1, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_collectors_killed_independently_store_exactly_once() {
    run_with_kills(3, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_two_five_one_collectors_keeps_counts_exact() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("collector-scale");
    let queue = Queue::open(etcd.client().await, queue_config(&prefix))
        .await
        .unwrap();
    let mut children: Vec<_> = (0..2)
        .map(|i| spawn_collector(&etcd.endpoint(), &prefix, &format!("s{i}")))
        .collect();
    publish_passes(&queue, 4, now_us() - 600_000_000).await;
    let grow = children.len();
    children
        .extend((grow..5).map(|i| spawn_collector(&etcd.endpoint(), &prefix, &format!("s{i}"))));
    wait_until("five members", Duration::from_secs(30), || async {
        queue.status().await.unwrap().members.len() == 5
    })
    .await;
    publish_passes(&queue, 4, now_us() - 500_000_000).await;
    while children.len() > 1 {
        let mut child = children.pop().unwrap();
        assert!(terminate(&mut child), "graceful scale-down exits 0");
    }
    publish_passes(&queue, 4, now_us() - 400_000_000).await;
    wait_until("queue drained", Duration::from_secs(60), || async {
        queue.depth().await.unwrap() == 0
    })
    .await;
    assert!(terminate(&mut children[0]));
    assert_store_exact(&store_for(etcd.client().await, &prefix), 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_dead_lettered_and_do_not_block() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("collector-dead");
    let queue = Queue::open(etcd.client().await, queue_config(&prefix))
        .await
        .unwrap();
    let mut producer = queue.producer();
    producer
        .publish_batch(vec![
            OutgoingMessage {
                partition: 3,
                payload: b"{not json".to_vec(),
            },
            OutgoingMessage {
                partition: 3,
                payload: br#"{"specversion":"0.3"}"#.to_vec(),
            },
        ])
        .await
        .unwrap();
    producer.close().await.unwrap();
    publish_passes(&queue, 1, now_us() - 600_000_000).await;
    let mut collector = spawn_collector(&etcd.endpoint(), &prefix, "d");
    wait_until("queue drained", Duration::from_secs(60), || async {
        queue.depth().await.unwrap() == 0
    })
    .await;
    assert!(terminate(&mut collector));
    let dead = queue.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(
        dead.iter()
            .map(|d| (d.partition, d.offset))
            .collect::<Vec<_>>(),
        vec![(3, 1), (3, 2)]
    );
    assert!(dead.iter().all(|d| !d.reason.is_empty()));
    assert_store_exact(&store_for(etcd.client().await, &prefix), 1).await;
}

#[tokio::test]
async fn an_event_posted_twice_over_http_is_stored_once() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("collector-http");
    let store = store_for(etcd.client().await, &prefix);
    let collector = InProcess::start(config_for(&etcd.endpoint(), &prefix, "http")).await;
    collector.wait_ready().await;

    let rows = real_rows();
    let mut builder = SampleBatch::builder();
    let t0 = now_us() - 1_000_000;
    for (i, (info, metric, value)) in rows.iter().take(100).enumerate() {
        builder.push(info, metric, TimestampMicros(t0 + i as i64), *value);
    }
    let event = BatchEvent::new("evt-1", "/test/http", builder.build());
    let url = collector.url("/");
    // Structured mode twice, then binary mode with the same id: one copy stored.
    for _ in 0..2 {
        let response = http_request(
            "POST",
            &url,
            &[("content-type", "application/cloudevents+json")],
            event.to_json(),
        )
        .await
        .unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["samples"], 100);
    }
    let data = serde_json::to_vec(&event.batch).unwrap();
    let binary = http_request(
        "POST",
        &url,
        &[
            ("content-type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", "evt-1"),
            ("ce-source", "/test/http"),
            ("ce-type", BatchEvent::EVENT_TYPE),
            ("ce-time", &event.time.to_rfc3339()),
        ],
        data,
    )
    .await
    .unwrap();
    assert_eq!(binary.status, 200, "{}", binary.text());
    // The same event in the columnar encoding, structured (base64 in `data_base64`) and binary
    // (the raw bytes as the body): still one copy.
    let structured = http_request(
        "POST",
        &url,
        &[("content-type", "application/cloudevents+json")],
        event.to_json_with(DataEncoding::Columnar),
    )
    .await
    .unwrap();
    assert_eq!(structured.status, 200, "{}", structured.text());
    assert_eq!(structured.json()["samples"], 100);
    let binary = http_request(
        "POST",
        &url,
        &[
            ("content-type", COLUMNAR_CONTENT_TYPE),
            ("ce-specversion", "1.0"),
            ("ce-id", "evt-1"),
            ("ce-source", "/test/http"),
            ("ce-type", BatchEvent::EVENT_TYPE),
            ("ce-time", &event.time.to_rfc3339()),
        ],
        telemetry_model::columnar::encode(&event.batch),
    )
    .await
    .unwrap();
    assert_eq!(binary.status, 200, "{}", binary.text());
    assert_eq!(binary.json()["samples"], 100);
    assert_eq!(store.footprint().await.unwrap().samples, 100, "stored once");
    assert_eq!(store.list_gpus().await.unwrap().len(), 100);
    let bad = http_request(
        "POST",
        &url,
        &[("content-type", "application/cloudevents+json")],
        b"{}".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("content-type"), Some("application/problem+json"));
    assert_eq!(collector.stop().await, collector::RunSummary::default());
}

/// A collector started while etcd is down is healthy at once (a liveness probe must not kill it
/// during an etcd outage), not ready and refusing `POST /` with 503 until etcd is up; then it
/// joins the group and persists what is published, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_served_before_etcd_is_reachable_and_work_starts_once_it_is() {
    let mut etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("collector-outage");
    etcd.kill();
    let collector = InProcess::start(config_for(&etcd.endpoint(), &prefix, "early")).await;
    wait_until("/healthz answers", Duration::from_secs(30), || async {
        http_request("GET", &collector.url("/healthz"), &[], Vec::new())
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    let (status, body) = collector.get("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"status": "not ready", "reason": "not connected to etcd yet"})
    );
    let mut builder = SampleBatch::builder();
    let (info, metric, value) = &real_rows()[0];
    builder.push(info, metric, TimestampMicros(now_us()), *value);
    let event = BatchEvent::new("early", "/test/outage", builder.build());
    let refused = http_request(
        "POST",
        &collector.url("/"),
        &[("content-type", "application/cloudevents+json")],
        event.to_json(),
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(collector.get("/healthz").await.0, 200, "still healthy");

    etcd.restart().await;
    collector.wait_ready().await;
    let queue = Queue::open(etcd.client().await, queue_config(&prefix))
        .await
        .unwrap();
    publish_passes(&queue, 1, now_us() - 600_000_000).await;
    wait_until("queue drained", Duration::from_secs(60), || async {
        queue.depth().await.unwrap() == 0
    })
    .await;
    let metrics = collector.get("/metrics").await.1;
    assert!(
        metrics
            .lines()
            .any(|l| l == "# TYPE collector_ownership_changes counter"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "collector_ownership_changes_total 16"),
        "the only member acquired all 16 partitions once: {metrics}"
    );
    // Every committed sample is in the ingest lag, each stamped ten minutes before its commit.
    let lag = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("collector_ingest_lag_seconds_{name} ")))
            .unwrap_or_else(|| panic!("no ingest lag {name}: {metrics}"));
        line.split(' ').nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(lag("count"), ROWS as f64);
    assert!(lag("sum") >= 600.0 * ROWS as f64, "{}", lag("sum"));
    let summary = collector.stop().await;
    assert_eq!((summary.samples, summary.dead_letters), (ROWS as u64, 0));
    assert_store_exact(&store_for(etcd.client().await, &prefix), 1).await;
    assert!(queue.status().await.unwrap().members.is_empty());
}

/// One event with every GPU of the real CSV: 247 GPUs need far more operations than one
/// transaction allows, so the collector splits the writes by GPU over several transactions, the
/// last of them the commit. Stored exactly once, committed once.
#[tokio::test]
async fn a_message_covering_more_gpus_than_a_transaction_is_split_by_gpu() {
    use collector::DeliveryProcessor;
    use etcd_queue::ConsumerConfig;

    let WideDelivery {
        etcd: _etcd,
        queue,
        store,
        ..
    } = WideDelivery::published("collector-wide", 5).await;

    let mut registry = Registry::default();
    let metrics = Arc::new(collector::CollectorMetrics::register(&mut registry));
    let mut processor = DeliveryProcessor::new(store.clone(), metrics);
    let mut consumer = queue.consumer(ConsumerConfig::new("wide")).await.unwrap();
    let delivery = consumer
        .poll(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the message");
    let done = processor.process(&mut consumer, delivery).await.unwrap();
    assert_eq!(
        (done.messages, done.samples, done.dead_letters),
        (1, ROWS, 0)
    );
    assert_eq!(queue.depth().await.unwrap(), 0, "committed");
    consumer.leave().await.unwrap();
    assert_store_exact(&store, 1).await;
    // Through the open chunks, not one immutable chunk per GPU and message.
    let footprint = store.footprint().await.unwrap();
    assert_eq!(footprint.chunks, 247, "one open chunk per GPU");
}

/// A collector that wrote some of a wide delivery's transactions and died before the commit:
/// the next one writes the delivery again, and the marks on the open chunks make the GPUs
/// already written skip the samples they hold.
#[tokio::test]
async fn a_wide_delivery_rewritten_after_a_crash_between_its_transactions_is_stored_once() {
    use etcd_queue::{ConsumerConfig, COMMIT_RESERVED_OPS};
    use telemetry_store::{FenceBudget, StoreWriter};

    let WideDelivery {
        etcd: _etcd,
        queue,
        store,
        event,
    } = WideDelivery::published("collector-wide-crash", 3).await;

    // The first collector: prepares the delivery, writes two of its transactions, then "dies"
    // (leaves the group without committing).
    let mut crashed = queue
        .consumer(ConsumerConfig::new("crashed"))
        .await
        .unwrap();
    let delivery = crashed
        .poll(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the message");
    let mut writer = StoreWriter::new(store.clone());
    let budget = FenceBudget {
        ops: etcd_queue::MAX_TXN_OPS - COMMIT_RESERVED_OPS,
        compares: etcd_queue::MAX_TXN_OPS - 2,
        bytes: 1024 * 1024,
    };
    let writes = writer
        .prepare_delivery(
            delivery.partition,
            &[(delivery.messages[0].offset, &event.batch)],
            budget,
        )
        .await
        .unwrap()
        .expect("every GPU fits a transaction");
    assert!(writes.len() > 3, "{} transactions", writes.len());
    let mut landed = 0;
    for mut write in writes.into_iter().take(2) {
        landed += write.samples;
        let fence = std::mem::take(&mut write.fence);
        crashed.write_fenced(&delivery, fence).await.unwrap();
    }
    assert!(landed > 0 && landed < ROWS);
    assert_eq!(store.footprint().await.unwrap().samples, landed as u64);
    crashed.abandon(&delivery);
    crashed.leave().await.unwrap();

    // The next collector gets the same delivery and finishes it.
    let committed = drain_deliveries(&queue, &store, ConsumerConfig::new("next")).await;
    assert_eq!(committed, vec![(1, ROWS - landed, 0)]);
    assert_store_exact(&store, 1).await;
}

/// A message whose single GPU needs more operations than one transaction allows (here: more
/// seals than fit, with 2-sample chunks) is written with idempotent keys and then committed. A
/// previous attempt that crashed after writing but before committing leaves the same keys.
#[tokio::test]
async fn a_message_too_large_for_one_commit_is_written_idempotently_then_committed() {
    use collector::DeliveryProcessor;
    use etcd_queue::ConsumerConfig;
    use telemetry_model::{GpuInfo, GpuUuid, MetricName};
    use telemetry_store::{group_by_gpu, ChunkTag, SampleQuery, StoreConfig, TelemetryStore};

    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("collector-oversized");
    let queue = Queue::open(etcd.client().await, queue_config(&prefix))
        .await
        .unwrap();
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: prefix.clone(),
            chunk_max_samples: 2,
            ..StoreConfig::default()
        },
    );
    // 300 samples of one GPU: 150 chunks of 2, over the 128 operations of a transaction.
    let gpu = GpuInfo::new(GpuUuid::parse("GPU-oversized").unwrap());
    let metric = MetricName::parse("DCGM_FI_DEV_GPU_TEMP").unwrap();
    let t0 = now_us() - 60_000_000;
    let mut builder = SampleBatch::builder();
    for i in 0..300 {
        builder.push(&gpu, &metric, TimestampMicros(t0 + i), i as f64);
    }
    let event = BatchEvent::new("one-gpu", "/test/oversized", builder.build());
    let position = publish_one(&queue, 5, &event).await;
    // A previous attempt crashed after writing but before committing: the same keys exist already.
    let tag = ChunkTag::Message {
        partition: position.partition,
        offset: position.offset,
    };
    store
        .write_idempotent(tag, &group_by_gpu([&event.batch]))
        .await
        .unwrap();

    let mut registry = Registry::default();
    let metrics = Arc::new(collector::CollectorMetrics::register(&mut registry));
    let mut processor = DeliveryProcessor::new(store.clone(), metrics);
    let mut consumer = queue
        .consumer(ConsumerConfig::new("oversized"))
        .await
        .unwrap();
    let delivery = consumer
        .poll(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the message");
    let done = processor.process(&mut consumer, delivery).await.unwrap();
    assert_eq!(
        (done.messages, done.samples, done.dead_letters),
        (1, 300, 0)
    );
    assert_eq!(
        queue.depth().await.unwrap(),
        0,
        "committed after the writes"
    );
    consumer.leave().await.unwrap();
    let samples = store
        .query(
            &gpu.uuid,
            &SampleQuery {
                limit: 1_000,
                ..SampleQuery::default()
            },
        )
        .await
        .unwrap()
        .samples;
    let times: Vec<i64> = samples.iter().map(|s| s.timestamp.0 - t0).collect();
    assert_eq!(times, (0..300).collect::<Vec<i64>>(), "each sample once");
}

/// A queue and a store under a fresh prefix on their own etcd, with one event holding every GPU
/// of the real CSV (stamped a minute ago) published on one partition.
struct WideDelivery {
    etcd: EtcdHarness,
    queue: Queue,
    store: telemetry_store::TelemetryStore,
    event: BatchEvent,
}

impl WideDelivery {
    async fn published(test: &str, partition: u32) -> WideDelivery {
        let etcd = EtcdHarness::start().await;
        let prefix = unique_prefix(test);
        let queue = Queue::open(etcd.client().await, queue_config(&prefix))
            .await
            .unwrap();
        let store = store_for(etcd.client().await, &prefix);
        let event = all_gpus_event(now_us() - 60_000_000);
        publish_one(&queue, partition, &event).await;
        WideDelivery {
            etcd,
            queue,
            store,
            event,
        }
    }
}

/// One event with every row of the real CSV, stamped from `t0` on.
fn all_gpus_event(t0: i64) -> BatchEvent {
    let mut builder = SampleBatch::builder();
    for (i, (info, metric, value)) in real_rows().iter().enumerate() {
        builder.push(info, metric, TimestampMicros(t0 + i as i64), *value);
    }
    BatchEvent::new("all-gpus", "/test/wide", builder.build())
}

/// Publishes `event` alone on `partition`.
async fn publish_one(queue: &Queue, partition: u32, event: &BatchEvent) -> etcd_queue::Position {
    let mut producer = queue.producer();
    let position = producer
        .publish_batch(vec![OutgoingMessage {
            partition,
            payload: event.to_json(),
        }])
        .await
        .unwrap()[0];
    producer.close().await.unwrap();
    position
}

/// GPUs with more samples in one delivery than a chunk holds seal several chunks each. Writes
/// that need more operations than a transaction allows are split by GPU; when a single GPU's
/// writes alone do not fit, the collector commits a shorter prefix and the rest on the next
/// delivery: everything stored once, nothing stuck.
#[tokio::test]
async fn a_delivery_that_seals_many_chunks_is_committed_in_shorter_prefixes() {
    use etcd_queue::ConsumerConfig;
    use telemetry_model::{GpuInfo, GpuUuid, MetricName};
    use telemetry_store::{SampleQuery, StoreConfig, TelemetryStore};

    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("collector-seals");
    let queue = Queue::open(etcd.client().await, queue_config(&prefix))
        .await
        .unwrap();
    let store = TelemetryStore::new(
        etcd.client().await,
        StoreConfig {
            prefix: prefix.clone(),
            chunk_max_samples: 10,
            ..StoreConfig::default()
        },
    );
    // 4 messages on one partition, each with 8 GPUs x 10 metrics x 5 timestamps (50 samples per
    // GPU). All 4 together: 200 samples per GPU, 19 seals + open, seen and identity = 22
    // operations x 8 GPUs = 176, over etcd's 128: two transactions of GPUs. Then a ninth GPU
    // with 1,300 samples in each of two messages, 130 seals each: too many for one transaction
    // alone.
    let gpus: Vec<GpuInfo> = (0..8)
        .map(|g| GpuInfo::new(GpuUuid::parse(&format!("GPU-seals-{g}")).unwrap()))
        .collect();
    let metrics: Vec<MetricName> = (0..10)
        .map(|m| MetricName::parse(&format!("DCGM_FI_TEST_{m}")).unwrap())
        .collect();
    let t0 = now_us() - 60_000_000;
    let mut producer = queue.producer();
    for message in 0..4i64 {
        let mut builder = SampleBatch::builder();
        for step in 0..5 {
            let at = TimestampMicros(t0 + (message * 5 + step) * 1_000);
            for gpu in &gpus {
                for (m, metric) in metrics.iter().enumerate() {
                    builder.push(gpu, metric, at, m as f64);
                }
            }
        }
        let event = BatchEvent::new(format!("seals-{message}"), "/test/seals", builder.build());
        producer
            .publish_batch(vec![OutgoingMessage {
                partition: 0,
                payload: event.to_json(),
            }])
            .await
            .unwrap();
    }
    let wide = GpuInfo::new(GpuUuid::parse("GPU-seals-wide").unwrap());
    for message in 0..2i64 {
        let mut builder = SampleBatch::builder();
        for step in 0..130 {
            let at = TimestampMicros(t0 + 100_000 + (message * 130 + step) * 1_000);
            for (m, metric) in metrics.iter().enumerate() {
                builder.push(&wide, metric, at, m as f64);
            }
        }
        let event = BatchEvent::new(format!("wide-{message}"), "/test/seals", builder.build());
        producer
            .publish_batch(vec![OutgoingMessage {
                partition: 0,
                payload: event.to_json(),
            }])
            .await
            .unwrap();
    }
    producer.close().await.unwrap();

    let committed = drain_deliveries(&queue, &store, ConsumerConfig::new("seals")).await;
    // The six messages come in one delivery: the wide GPU's writes do not fit a transaction, so
    // the prefix is halved to the first three messages (the 8 GPUs' writes split over two
    // transactions), then the next delivery is halved to one; the wide GPU's messages go one
    // commit each (130 seals exceed a transaction even alone: written idempotently).
    assert_eq!(
        committed,
        vec![(3, 1200, 0), (1, 400, 0), (1, 1300, 0), (1, 1300, 0)]
    );
    for gpu in &gpus {
        let samples = store
            .query(
                &gpu.uuid,
                &SampleQuery {
                    limit: 10_000,
                    ..SampleQuery::default()
                },
            )
            .await
            .unwrap()
            .samples;
        assert_eq!(samples.len(), 200, "{}", gpu.uuid);
        let keys: Vec<_> = samples
            .iter()
            .map(|s| (s.timestamp, s.metric.to_string()))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys, sorted, "{}: ordered, no duplicates", gpu.uuid);
    }
    let wide_samples = store
        .query(
            &wide.uuid,
            &SampleQuery {
                limit: 10_000,
                ..SampleQuery::default()
            },
        )
        .await
        .unwrap()
        .samples;
    assert_eq!(wide_samples.len(), 2_600);
    assert_eq!(store.footprint().await.unwrap().samples, 1_600 + 2_600);
}

/// Undecodable messages are copied into their dead-letter records: two large ones that together
/// exceed a transaction are dead-lettered one per commit instead of blocking the partition.
#[tokio::test]
async fn large_undecodable_messages_are_dead_lettered_one_commit_each() {
    use etcd_queue::ConsumerConfig;

    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("collector-dead-large");
    let queue = Queue::open(etcd.client().await, queue_config(&prefix))
        .await
        .unwrap();
    let mut producer = queue.producer();
    for fill in [b'x', b'y'] {
        producer
            .publish_batch(vec![OutgoingMessage {
                partition: 0,
                payload: vec![fill; 790 * 1024],
            }])
            .await
            .unwrap();
    }
    producer.close().await.unwrap();

    let store = store_for(etcd.client().await, &prefix);
    // Deliveries may carry both messages (1.54 MiB); one etcd request (1.5 MiB) could not.
    let consumer = ConsumerConfig {
        max_bytes: 2 * 1024 * 1024,
        ..ConsumerConfig::new("dead-large")
    };
    let committed = drain_deliveries(&queue, &store, consumer).await;
    assert_eq!(committed, vec![(1, 0, 1), (1, 0, 1)]);
    let dead = queue.dead_letters(10).await.unwrap();
    assert_eq!(
        dead.iter()
            .map(|d| (d.offset, d.payload.len(), d.payload[0]))
            .collect::<Vec<_>>(),
        vec![(1, 790 * 1024, b'x'), (2, 790 * 1024, b'y')]
    );
}
