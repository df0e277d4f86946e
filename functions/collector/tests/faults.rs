//! The collector under the faults a production etcd produces, each on its own so that a failure
//! names its cause: a retention lease that expired under it; etcd out of space (NOSPACE)
//! mid-stream, recovered by compaction, defragmentation and disarming the alarm while the
//! streamer and the collector keep running; samples stamped centuries ahead; and a poison
//! message whose samples cannot be persisted.

mod common;

use std::time::Duration;

use common::*;
use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, CompactionOptions, DeleteOptions, GetOptions,
};
use etcd_queue::{ConsumerConfig, Queue};
use function_runtime::{QueueSettings, Shutdown, NO_SPACE_REASON};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use prometheus_client::registry::Registry;
use telemetry_model::TimestampMicros;
use test_support::{free_port, testdata, unique_prefix, EtcdHarness, REAL_CSV};

fn now_us() -> i64 {
    TimestampMicros::now().0
}

/// The metrics of `registry` as Prometheus text.
fn metrics_text(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

/// Revokes every retention lease of the store under `prefix`, as their expiry would end them.
async fn revoke_retention_leases(client: &etcd_client::Client, prefix: &str) -> usize {
    let mut client = client.clone();
    let buckets = client
        .get(
            format!("{prefix}/store/retention/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let leases: Vec<i64> = buckets.kvs().iter().map(|kv| kv.lease()).collect();
    for lease in &leases {
        client.lease_revoke(*lease).await.unwrap();
    }
    leases.len()
}

/// The lease of the retention bucket the collector writes into goes away under it (its cached
/// lease id is stale, and the data on it is gone): the next commit is refused, the collector
/// takes a new lease and commits again, and no partition is left owned by nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_lease_gone_between_prepare_and_commit_is_granted_again() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("collector-lease-gone");
    let client = etcd.client().await;
    let queue = Queue::open(client.clone(), queue_config(&prefix))
        .await
        .unwrap();
    let store = store_for(client.clone(), &prefix);
    let (mut processor, _registry) = processor_for(&store);
    let member = ConsumerConfig {
        lease_ttl: Duration::from_secs(30),
        ..ConsumerConfig::new("lease-gone")
    };
    let mut consumer = queue.consumer(member).await.unwrap();
    let t0 = now_us() - 600_000_000;
    publish_passes(&queue, 1, t0).await;
    drain_with(&queue, &mut consumer, &mut processor).await;
    assert!(revoke_retention_leases(&client, &prefix).await >= 1);

    publish_passes(&queue, 1, t0 + (ROWS * 10) as i64).await;
    drain_with(&queue, &mut consumer, &mut processor).await;
    assert_eq!(consumer.owned_partitions(), (0..16).collect::<Vec<_>>());
    // The first pass went with its lease; the second is stored exactly once.
    assert_store_exact(&store, 1).await;
    assert_eq!(queue.refresh_depth().await.unwrap(), 0);
    consumer.leave().await.unwrap();
}

/// etcd's quota in the NOSPACE test: small enough to fill in a moment, with room for the
/// pipeline's own keys once the filler is gone.
const SMALL_QUOTA: &str = "16777216";

/// Writes filler values under `prefix` until etcd refuses one for lack of space; returns how
/// many it took.
async fn fill_until_no_space(client: &etcd_client::Client, prefix: &str) -> usize {
    let mut client = client.clone();
    let value = vec![b'f'; 512 * 1024];
    for n in 0.. {
        match client
            .put(format!("{prefix}/{n:06}"), value.clone(), None)
            .await
        {
            Ok(_) => {}
            Err(e) => {
                assert!(etcd_queue::is_no_space(&e), "expected NOSPACE, got {e:?}");
                return n;
            }
        }
    }
    unreachable!()
}

/// What an operator does about NOSPACE, through the client API: delete what filled the
/// database, compact the history, defragment, disarm the alarm.
async fn free_space(client: &etcd_client::Client, filler: &str) {
    let mut client = client.clone();
    client
        .delete(filler, Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let revision = client.status().await.unwrap().header().unwrap().revision();
    client
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    client.defragment().await.unwrap();
    let alarms = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert!(
        alarms
            .alarms()
            .iter()
            .any(|a| a.alarm() == AlarmType::Nospace),
        "the NOSPACE alarm was raised"
    );
    for alarm in alarms.alarms() {
        let mut member = AlarmOptions::new();
        member.with_member(alarm.member_id());
        client
            .alarm(AlarmAction::Deactivate, alarm.alarm(), Some(member))
            .await
            .unwrap();
    }
}

/// Waits until `/readyz` on `port` answers 503 saying etcd is out of space.
async fn wait_not_ready_for_space(what: &str, port: u16) {
    wait_until(what, Duration::from_secs(30), || async {
        readiness(port).await
            == Some((
                503,
                serde_json::json!({"status": "not ready", "reason": NO_SPACE_REASON}),
            ))
    })
    .await;
}

/// etcd runs out of space mid-stream. The streamer waits (it does not exit), the collector keeps
/// its partitions and waits, both say so on `/readyz` and `/metrics`; once an operator has freed
/// space both resume by themselves, and every sample streamed is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_is_waited_in_and_recovered_from_while_everything_runs() {
    let etcd = EtcdHarness::start_with_args(&["--quota-backend-bytes", SMALL_QUOTA]).await;
    let prefix = unique_prefix("collector-nospace");
    let client = etcd.client().await;
    let queue = Queue::open(client.clone(), queue_config(&prefix))
        .await
        .unwrap();
    let collector_port = free_port();
    let port = collector_port.to_string();
    let mut collector = spawn_collector_with(
        &etcd.endpoint(),
        &prefix,
        "roomy",
        &[("PORT", &port), ("QUEUE_LEASE_TTL", "30s")],
    );
    wait_until(
        "the collector is ready",
        Duration::from_secs(60),
        || async {
            readiness(collector_port)
                .await
                .is_some_and(|(status, _)| status == 200)
        },
    )
    .await;

    // Four rate-capped passes: the stream is still going when etcd fills up.
    let passes = 4;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let streamer_port = listener.local_addr().unwrap().port();
    let stop = Shutdown::new();
    let until = stop.clone();
    let streamer = tokio::spawn(streamer::run(
        streamer::Config {
            etcd: etcd_config(&etcd.endpoint(), &prefix),
            queue: QueueSettings {
                lease_ttl: Duration::from_secs(30),
                ..QueueSettings::default()
            },
            csv: testdata(REAL_CSV),
            interval: Duration::ZERO,
            passes: Some(passes),
            rate: 1_000,
            // Publishes about four times a second, not every default linger (20 ms): each
            // publish leads to a commit that rewrites open chunks, and at fifty a second their
            // revision history alone refills the 16 MiB quota within a minute of it being freed,
            // before the passes can end. The test is about waiting through NOSPACE, not about
            // how often rows go out.
            linger: Duration::from_millis(250),
            member_id: "filler".into(),
            ..streamer::Config::default()
        },
        listener,
        async move { until.wait().await },
    ));
    wait_until(
        "some samples committed",
        Duration::from_secs(60),
        || async { committed_messages(&queue).await > 0 },
    )
    .await;

    // The collector pauses, so a backlog waits for it; then etcd fills up.
    let collector_pid = Pid::from_raw(collector.id() as i32);
    kill(collector_pid, Signal::SIGSTOP).unwrap();
    wait_until("a backlog", Duration::from_secs(30), || async {
        queue.depth().await.unwrap() > 0
    })
    .await;
    let filler = format!("{prefix}-filler");
    assert!(fill_until_no_space(&client, &filler).await > 0);
    wait_until(
        "the streamer waits on NOSPACE",
        Duration::from_secs(30),
        || async {
            scrape(streamer_port, "streamer_nospace_waits_total")
                .await
                .is_some_and(|n| n >= 1.0)
        },
    )
    .await;
    wait_not_ready_for_space("the streamer reports NOSPACE", streamer_port).await;
    assert_eq!(
        scrape(streamer_port, "streamer_nospace_waiting").await,
        Some(1.0)
    );
    kill(collector_pid, Signal::SIGCONT).unwrap();
    wait_not_ready_for_space("the collector reports NOSPACE", collector_port).await;
    assert!(scrape(collector_port, "collector_nospace_waits_total").await >= Some(1.0));
    assert_eq!(
        scrape(collector_port, "collector_nospace_waiting").await,
        Some(1.0)
    );
    let status = queue.status().await.unwrap();
    assert!(
        status
            .partitions
            .iter()
            .all(|p| p.owner.as_deref() == Some("roomy")),
        "the collector keeps its partitions: {:?}",
        status.partitions
    );
    assert!(
        !streamer.is_finished(),
        "the streamer waits, it does not exit"
    );

    free_space(&client, &filler).await;
    let report = tokio::time::timeout(Duration::from_secs(120), streamer)
        .await
        .expect("the streamer finishes its passes once space returns")
        .unwrap()
        .expect("the streamer ends without error");
    assert!(report.passes_reached);
    wait_until("the backlog drained", Duration::from_secs(60), || async {
        queue.depth().await.unwrap() == 0
    })
    .await;
    wait_until(
        "the collector is ready again",
        Duration::from_secs(30),
        || async {
            readiness(collector_port)
                .await
                .is_some_and(|(status, _)| status == 200)
        },
    )
    .await;
    assert_eq!(
        scrape(collector_port, "collector_nospace_waiting").await,
        Some(0.0)
    );
    assert_eq!(
        collector.try_wait().unwrap(),
        None,
        "the collector still runs"
    );
    assert!(
        terminate(&mut collector),
        "the collector exits 0 on SIGTERM"
    );
    assert_store_exact(&store_for(client.clone(), &prefix), passes as usize).await;
    assert_eq!(queue.refresh_depth().await.unwrap(), 0);
}

/// Batches carry samples stamped centuries ahead (by a streamer whose clock ran ahead) and ten
/// minutes ahead, beside ordinary ones. The future ones are rejected and counted, never stored
/// (their retention lease would be refused or outlive the data); every other sample is stored
/// exactly once, and no partition blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_stamped_beyond_the_future_bound_are_rejected_and_nothing_blocks() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("collector-future");
    let client = etcd.client().await;
    let queue = Queue::open(client.clone(), queue_config(&prefix))
        .await
        .unwrap();
    let store = store_for(client.clone(), &prefix);
    let now = now_us();
    let rows = real_rows();
    let mut producer = queue.producer();
    let centuries = 300 * 365 * 86_400 * 1_000_000i64;
    let messages = rows
        .iter()
        .take(40)
        .enumerate()
        .map(|(i, (info, metric, value))| {
            let ahead = if i % 2 == 0 { centuries } else { 600_000_000 };
            let mut builder = telemetry_model::SampleBatch::builder();
            builder.push(
                info,
                metric,
                TimestampMicros(now + ahead + i as i64),
                *value,
            );
            event_message(
                queue.partition_for(info.uuid.as_str().as_bytes()),
                &format!("ahead-{i}"),
                "/test/clock-ahead",
                builder.build(),
            )
        })
        .collect();
    producer.publish_batch(messages).await.unwrap();
    producer.close().await.unwrap();
    publish_passes(&queue, 1, now - 600_000_000).await;

    let (mut processor, registry) = processor_for(&store);
    let mut consumer = queue.consumer(ConsumerConfig::new("ahead")).await.unwrap();
    drain_with(&queue, &mut consumer, &mut processor).await;
    consumer.leave().await.unwrap();
    let text = metrics_text(&registry);
    assert!(
        text.lines()
            .any(|l| l == r#"collector_samples_rejected_total{reason="future"} 40"#),
        "{text}"
    );
    assert_store_exact(&store, 1).await;
    assert_eq!(queue.dead_letter_count().await.unwrap(), 0);
    assert_eq!(queue.refresh_depth().await.unwrap(), 0);
}

/// A GPU's open chunk in the store is unreadable, so the messages carrying its samples cannot be
/// persisted, whenever they are tried: each is dead-lettered with the reason in its own commit,
/// and the partition moves on to the next message; everything else is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_cannot_be_persisted_is_dead_lettered_and_its_partition_moves_on() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("collector-poison");
    let mut client = etcd.client().await;
    let queue = Queue::open(client.clone(), queue_config(&prefix))
        .await
        .unwrap();
    let store = store_for(client.clone(), &prefix);
    let rows = real_rows();
    let poisoned = rows[0].0.uuid.clone();
    let partition = queue.partition_for(poisoned.as_str().as_bytes());
    let open_chunk = store.keys().open_chunk(&poisoned);
    client
        .put(open_chunk.clone(), b"not a chunk".to_vec(), None)
        .await
        .unwrap();
    // One pass (a message per partition), then a message on the same partition without the
    // poisoned GPU.
    let t0 = now_us() - 600_000_000;
    publish_passes(&queue, 1, t0).await;
    let (other, metric, value) = rows
        .iter()
        .find(|(info, _, _)| {
            info.uuid != poisoned && queue.partition_for(info.uuid.as_str().as_bytes()) == partition
        })
        .unwrap();
    let mut builder = telemetry_model::SampleBatch::builder();
    builder.push(other, metric, TimestampMicros(t0 + 1_000_000), *value);
    let mut producer = queue.producer();
    producer
        .publish_batch(vec![event_message(
            partition,
            "after",
            "/test/poison",
            builder.build(),
        )])
        .await
        .unwrap();
    producer.close().await.unwrap();

    let (mut processor, _registry) = processor_for(&store);
    let mut consumer = queue.consumer(ConsumerConfig::new("poison")).await.unwrap();
    drain_with(&queue, &mut consumer, &mut processor).await;
    consumer.leave().await.unwrap();

    let dead = queue.dead_letters(10).await.unwrap();
    assert_eq!(
        dead.iter()
            .map(|d| (d.partition, d.offset))
            .collect::<Vec<_>>(),
        [(partition, 1)]
    );
    assert!(
        dead[0].reason.starts_with("not persistable: ") && dead[0].reason.contains(&open_chunk),
        "{}",
        dead[0].reason
    );
    assert_eq!(queue.refresh_depth().await.unwrap(), 0);
    // The dead-lettered pass message carried every GPU of its partition; the message after it
    // is stored; every other partition's GPUs are stored exactly.
    let samples_of = |uuid: &telemetry_model::GpuUuid| {
        let store = store.clone();
        let uuid = uuid.clone();
        async move {
            store
                .query(&uuid, &telemetry_store::SampleQuery::default())
                .await
                .unwrap()
                .samples
                .len()
        }
    };
    let unreadable = store
        .query(&poisoned, &telemetry_store::SampleQuery::default())
        .await;
    assert!(
        matches!(
            unreadable,
            Err(telemetry_store::StoreError::CorruptChunk { .. })
        ),
        "{unreadable:?}"
    );
    let gpus: std::collections::BTreeSet<_> = rows
        .iter()
        .map(|(info, _, _)| &info.uuid)
        .filter(|uuid| **uuid != poisoned)
        .collect();
    for uuid in gpus {
        let expected = if uuid == &other.uuid {
            1
        } else if queue.partition_for(uuid.as_str().as_bytes()) == partition {
            0
        } else {
            10
        };
        assert_eq!(samples_of(uuid).await, expected, "{uuid}");
    }
}
