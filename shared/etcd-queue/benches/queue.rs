//! Queue benchmark: publish and consume throughput for 1 KiB, 64 KiB and 512 KiB payloads, and
//! publish-to-delivery latency at a light steady rate, each next to raw etcd operations on the
//! same payloads in the same process and run. Writes `target/bench/queue.json`.
//!
//! Run with `cargo bench -p etcd-queue --bench queue` (or `make bench`).

use std::time::{Duration, Instant};

use etcd_client::{Client, DeleteOptions, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use etcd_queue::{ConsumerConfig, Fence, OutgoingMessage, Queue, QueueConfig};
use serde_json::json;
use test_support::{median, percentile, unique_prefix, BenchReport, EtcdHarness};

const IN_FLIGHT: usize = 8;
const RUNS: usize = 5;

fn config(prefix: &str) -> QueueConfig {
    QueueConfig {
        prefix: prefix.to_string(),
        max_depth: 10_000_000,
        ..QueueConfig::default()
    }
}

/// Messages per publish call / per raw transaction: as many as fit ~1 MiB, at most 64.
fn per_request(size: usize) -> usize {
    (1024 * 1024 / size).clamp(1, 64)
}

async fn raw_put(client: &Client, prefix: &str, size: usize, count: usize) -> Duration {
    let payload = vec![b'x'; size];
    let batch = per_request(size);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..IN_FLIGHT {
        let client = client.clone();
        let payload = payload.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mine: Vec<usize> = (task..count).step_by(IN_FLIGHT).collect();
            for chunk in mine.chunks(batch) {
                let ops: Vec<TxnOp> = chunk
                    .iter()
                    .map(|i| TxnOp::put(format!("{prefix}/raw/{i:020}"), payload.clone(), None))
                    .collect();
                client.txn(Txn::new().and_then(ops)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

async fn raw_read_delete(client: &Client, prefix: &str, size: usize) -> (Duration, usize) {
    let batch = per_request(size) as i64;
    let mut client = client.clone();
    let started = Instant::now();
    let mut read = 0;
    loop {
        let got = client
            .get(
                format!("{prefix}/raw/"),
                Some(GetOptions::new().with_prefix().with_limit(batch)),
            )
            .await
            .unwrap();
        let Some(last) = got.kvs().last() else { break };
        read += got.kvs().len();
        let first = got.kvs()[0].key().to_vec();
        let mut end = last.key().to_vec();
        end.push(0);
        client
            .delete(first, Some(DeleteOptions::new().with_range(end)))
            .await
            .unwrap();
    }
    (started.elapsed(), read)
}

/// How producers pick partitions: `Disjoint` gives each producer its own partitions (how streamers
/// publish: a CSV shard maps to one partition and shards are owned by one streamer); `Shared`
/// spreads every producer's batches over all partitions (the worst case: producers race on every
/// partition head and retry on conflicts).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spread {
    Disjoint,
    Shared,
}

async fn queue_publish(queue: &Queue, size: usize, count: usize, spread: Spread) -> Duration {
    let payload = vec![b'x'; size];
    let batch = per_request(size);
    let partitions = queue.config().partitions;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..IN_FLIGHT {
        let queue = queue.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut producer = queue.producer();
            let mine: Vec<usize> = (task..count).step_by(IN_FLIGHT).collect();
            for chunk in mine.chunks(batch) {
                let messages = chunk
                    .iter()
                    .map(|i| OutgoingMessage {
                        partition: match spread {
                            Spread::Shared => (*i as u32) % partitions,
                            Spread::Disjoint => {
                                let own = partitions / IN_FLIGHT as u32;
                                task as u32 * own + (*i as u32 / IN_FLIGHT as u32) % own
                            }
                        },
                        payload: payload.clone(),
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
    started.elapsed()
}

async fn queue_consume(queue: &Queue, size: usize, count: usize) -> Duration {
    let mut consumer = queue
        .consumer(ConsumerConfig {
            max_messages: per_request(size),
            ..ConsumerConfig::new("bench")
        })
        .await
        .unwrap();
    let started = Instant::now();
    let mut consumed = 0;
    while consumed < count {
        let delivery = consumer
            .poll(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("messages pending");
        consumed += delivery.messages.len();
        consumer
            .commit(&delivery, Fence::default(), &[])
            .await
            .unwrap();
    }
    let elapsed = started.elapsed();
    consumer.leave().await.unwrap();
    elapsed
}

fn throughput(count: usize, size: usize, elapsed: Duration) -> (f64, f64) {
    let secs = elapsed.as_secs_f64();
    (count as f64 / secs, (count * size) as f64 / secs / 1e6)
}

async fn latency(etcd: &EtcdHarness, report: &mut BenchReport) {
    let client = etcd.client().await;
    let prefix = unique_prefix("bench-latency");
    let queue = Queue::open(client.clone(), config(&prefix)).await.unwrap();
    let rate = 200u64; // messages per second: light load
    let total = 1_000usize;
    let consumer_queue = queue.clone();
    let consumer = tokio::spawn(async move {
        let mut consumer = consumer_queue
            .consumer(ConsumerConfig::new("latency"))
            .await
            .unwrap();
        // Wait until this member owns every partition before measuring.
        while consumer.owned_partitions().len() < 16 {
            let _ = consumer.poll(Duration::from_millis(50)).await.unwrap();
        }
        let mut latencies = Vec::with_capacity(total);
        let origin = Instant::now();
        let _ = origin;
        while latencies.len() < total {
            let Some(delivery) = consumer.poll(Duration::from_secs(10)).await.unwrap() else {
                continue;
            };
            let now = epoch_micros();
            for m in &delivery.messages {
                let sent: i64 = std::str::from_utf8(&m.payload[..20])
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                latencies.push((now - sent) as f64 / 1000.0);
            }
            consumer
                .commit(&delivery, Fence::default(), &[])
                .await
                .unwrap();
        }
        consumer.leave().await.unwrap();
        latencies
    });
    tokio::time::sleep(Duration::from_millis(500)).await; // let the consumer take its partitions
    let mut producer = queue.producer();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    for i in 0..total {
        ticker.tick().await;
        let mut payload = format!("{:>20}", epoch_micros()).into_bytes();
        payload.resize(1024, b'x');
        producer
            .publish(format!("k{i}").as_bytes(), payload)
            .await
            .unwrap();
    }
    let latencies = consumer.await.unwrap();

    // Baseline: a raw put to a watched key, put-to-event latency.
    let mut watch_client = client.clone();
    let key = format!("{prefix}/raw-latency");
    let mut watch = watch_client
        .watch(key.clone(), Some(WatchOptions::new()))
        .await
        .unwrap();
    let mut raw = Vec::new();
    let mut put_client = client.clone();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    for _ in 0..total {
        ticker.tick().await;
        let sent = Instant::now();
        put_client
            .put(key.clone(), vec![b'x'; 1024], None)
            .await
            .unwrap();
        loop {
            let response = watch.message().await.unwrap().unwrap();
            if response
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Put)
            {
                break;
            }
        }
        raw.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    report.add(json!({
        "name": "publish_to_delivery_latency",
        "payload_bytes": 1024,
        "rate_per_s": rate,
        "messages": total,
        "queue_p50_ms": percentile(&latencies, 50.0),
        "queue_p99_ms": percentile(&latencies, 99.0),
        "raw_put_to_watch_p50_ms": percentile(&raw, 50.0),
        "raw_put_to_watch_p99_ms": percentile(&raw, 99.0),
    }));
}

fn epoch_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let etcd = EtcdHarness::start_with_args(&["--quota-backend-bytes=8589934592"]).await;
        let client = etcd.client().await;
        let mut report = BenchReport::new("queue");
        for (size, count) in [(1024usize, 10_000usize), (64 * 1024, 600), (512 * 1024, 80)] {
            let mut publish = Vec::new();
            let mut publish_shared = Vec::new();
            let mut consume = Vec::new();
            let mut raw_put_s = Vec::new();
            let mut raw_read_s = Vec::new();
            for _ in 0..RUNS {
                let prefix = unique_prefix("bench-queue");
                let queue = Queue::open(client.clone(), config(&prefix)).await.unwrap();
                let p = queue_publish(&queue, size, count, Spread::Disjoint).await;
                let c = queue_consume(&queue, size, count).await;
                let shared_prefix = unique_prefix("bench-queue-shared");
                let shared = Queue::open(client.clone(), config(&shared_prefix))
                    .await
                    .unwrap();
                let ps = queue_publish(&shared, size, count, Spread::Shared).await;
                queue_consume(&shared, size, count).await;
                let r = raw_put(&client, &prefix, size, count).await;
                let (rd, read) = raw_read_delete(&client, &prefix, size).await;
                assert_eq!(read, count);
                publish.push(throughput(count, size, p).1);
                publish_shared.push(throughput(count, size, ps).1);
                consume.push(throughput(count, size, c).1);
                raw_put_s.push(throughput(count, size, r).1);
                raw_read_s.push(throughput(count, size, rd).1);
                // Keep the database small between runs.
                let mut c = client.clone();
                let rev = c.get("/", None).await.unwrap().header().unwrap().revision();
                c.compact(rev, None).await.unwrap();
            }
            let (pub_mb, con_mb, raw_mb, raw_rd_mb) = (
                median(&publish),
                median(&consume),
                median(&raw_put_s),
                median(&raw_read_s),
            );
            report.add(json!({
                "name": format!("throughput_{}k", size / 1024),
                "payload_bytes": size,
                "messages_per_run": count,
                "runs": RUNS,
                "in_flight": IN_FLIGHT,
                "messages_per_request": per_request(size),
                "publish_mb_per_s": pub_mb,
                "publish_msgs_per_s": pub_mb * 1e6 / size as f64,
                "raw_put_mb_per_s": raw_mb,
                "publish_vs_raw": pub_mb / raw_mb,
                "publish_all_partitions_mb_per_s": median(&publish_shared),
                "publish_all_partitions_vs_raw": median(&publish_shared) / raw_mb,
                "consume_mb_per_s": con_mb,
                "consume_msgs_per_s": con_mb * 1e6 / size as f64,
                "raw_read_delete_mb_per_s": raw_rd_mb,
                "consume_vs_raw": con_mb / raw_rd_mb,
            }));
        }
        latency(&etcd, &mut report).await;
        report.write();
    });
}
