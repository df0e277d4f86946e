//! The streamer against a real etcd: exact sample counts read back through the queue, per-GPU
//! timestamp order, several streamers sharing the shards, rebalancing on join and leave, bad rows,
//! an etcd restart mid-run, the producers' marker leases expiring mid-run, and shard states
//! stamped ahead of the clock.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

use etcd_queue::Queue;
use function_runtime::Shutdown;
use streamer::{RunReport, Streamer, StreamerConfig, StreamerMetrics, SHARDS, WORK_GROUP};
use test_support::{unique_prefix, EtcdHarness, OwnershipLog};

type StreamerTask = tokio::task::JoinHandle<RunReport>;

fn spawn_streamer(
    client: etcd_client::Client,
    config: StreamerConfig,
    metrics: StreamerMetrics,
    stop: Shutdown,
) -> StreamerTask {
    tokio::spawn(async move {
        Streamer::new(client, config, metrics)
            .run(stop)
            .await
            .unwrap()
    })
}

/// Runs one streamer until it stops by itself (its `passes` reached).
async fn run_streamer(
    etcd: &EtcdHarness,
    config: StreamerConfig,
    metrics: &StreamerMetrics,
) -> RunReport {
    Streamer::new(etcd.client().await, config, metrics.clone())
        .run(Shutdown::new())
        .await
        .unwrap()
}

/// Every row of `csv` counted `passes` times: what that many passes put on the queue.
fn csv_rows_times(csv: &str, passes: u64) -> BTreeMap<(String, String, String), u64> {
    csv_rows(csv)
        .into_iter()
        .map(|(row, n)| (row, passes * n))
        .collect()
}

async fn open_queue(etcd: &EtcdHarness, prefix: &str) -> Queue {
    Queue::open(etcd.client().await, queue_config(prefix))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_passes_put_exactly_n_times_the_rows_on_the_queue() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("passes");
    let metrics = StreamerMetrics::default();
    let config = StreamerConfig {
        passes: Some(3),
        ..config(&prefix, REAL_CSV, "solo")
    };
    let report = run_streamer(&etcd, config, &metrics).await;

    assert!(report.passes_reached);
    assert_eq!(report.samples_published, 3 * REAL_ROWS);
    assert_eq!(report.shard_passes, 3 * u64::from(SHARDS));
    assert_eq!(report.file_passes, 3);
    assert_eq!(metrics.samples_published.get(), 3 * REAL_ROWS);
    assert_eq!(metrics.rows_read.get(), 3 * REAL_ROWS);
    assert_eq!(metrics.bad_rows.get(), 0);
    assert_eq!(metrics.owned_shards.get(), 0, "shards released");

    let queue = open_queue(&etcd, &prefix).await;
    let samples = queued_samples(&queue).await;
    assert_eq!(samples.len() as u64, 3 * REAL_ROWS);
    let expected = csv_rows_times(REAL_CSV, 3);
    assert_eq!(row_counts(&samples), expected, "every row exactly 3 times");
    assert_timestamps_increase_per_gpu(&samples);
    for s in &samples {
        assert_eq!(
            s.partition,
            queue.partition_for(s.gpu.as_bytes()),
            "GPU {} on the wrong partition",
            s.gpu
        );
    }
    assert_eq!(
        queue.stored_message_count().await.unwrap(),
        report.batches_published
    );
    assert_eq!(
        queue.depth_key_value().await.unwrap(),
        Some(report.batches_published)
    );

    let client = etcd.client().await;
    let states = shard_states(&client, &prefix).await;
    assert_eq!(states.keys().copied().collect::<Vec<_>>(), all_shards());
    assert!(states.values().all(|s| s.passes == 3 && s.row == 0));
    let newest = samples.iter().map(|s| s.timestamp).max().unwrap();
    assert_eq!(states.values().map(|s| s.last_ts).max(), Some(newest));
    assert_eq!(
        group_keys(&client, &prefix, "owner").await,
        Vec::<String>::new()
    );
    assert_eq!(
        group_keys(&client, &prefix, "member").await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_streamers_with_two_passes_emit_every_row_exactly_twice() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("three");
    let mut tasks: Vec<StreamerTask> = Vec::new();
    for i in 0..3 {
        let config = StreamerConfig {
            passes: Some(2),
            ..config(&prefix, REAL_CSV, &format!("streamer-{i}"))
        };
        tasks.push(spawn_streamer(
            etcd.client().await,
            config,
            StreamerMetrics::default(),
            Shutdown::new(),
        ));
    }
    let mut total = 0;
    for task in tasks {
        let report = task.await.unwrap();
        assert!(report.passes_reached, "{report:?}");
        total += report.samples_published;
    }
    assert_eq!(total, 2 * REAL_ROWS);

    let queue = open_queue(&etcd, &prefix).await;
    let samples = queued_samples(&queue).await;
    assert_eq!(samples.len() as u64, 2 * REAL_ROWS);
    let expected = csv_rows_times(REAL_CSV, 2);
    assert_eq!(row_counts(&samples), expected, "every row exactly twice");
    assert_timestamps_increase_per_gpu(&samples);
    let states = shard_states(&etcd.client().await, &prefix).await;
    assert!(states.values().all(|s| s.passes == 2 && s.row == 0));
    assert_eq!(states.len(), SHARDS as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_and_a_leave_rebalance_with_no_shard_owned_twice() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("rebalance");
    let owners_prefix = format!("{prefix}/{WORK_GROUP}/owner/");
    let client = etcd.client().await;
    let ownership = OwnershipLog::start(&client, &owners_prefix).await;

    // A streams alone, passes back to back, until told to stop.
    let (a_stop, a_metrics) = (Shutdown::new(), StreamerMetrics::default());
    // Leases long enough that a busy machine cannot make a member lapse (which would add moves).
    let member = |id: &str| StreamerConfig {
        lease_ttl: Duration::from_secs(10),
        ..config(&prefix, REAL_CSV, id)
    };
    let a = spawn_streamer(
        etcd.client().await,
        member("member-a"),
        a_metrics.clone(),
        a_stop.clone(),
    );
    wait_until(
        "A owns every shard and streamed",
        Duration::from_secs(20),
        || async {
            a_metrics.owned_shards.get() == i64::from(SHARDS) && a_metrics.shard_passes.get() >= 32
        },
    )
    .await;

    // B joins: A hands over B's shards after its current pass.
    let (b_stop, b_metrics) = (Shutdown::new(), StreamerMetrics::default());
    let b = spawn_streamer(
        etcd.client().await,
        member("member-b"),
        b_metrics.clone(),
        b_stop.clone(),
    );
    wait_until(
        "B owns shards and streams them",
        Duration::from_secs(20),
        || async {
            let (a_owned, b_owned) = (a_metrics.owned_shards.get(), b_metrics.owned_shards.get());
            b_owned > 0
                && a_owned + b_owned == i64::from(SHARDS)
                && b_metrics.shard_passes.get() > 0
        },
    )
    .await;
    let a_before_leaving = a_metrics.owned_shards.get();
    assert!(a_before_leaving > 0 && a_before_leaving < i64::from(SHARDS));

    // A leaves: B takes over every shard.
    a_stop.trigger();
    let a_report = a.await.unwrap();
    wait_until("B owns every shard", Duration::from_secs(20), || async {
        b_metrics.owned_shards.get() == i64::from(SHARDS)
    })
    .await;
    let b_passes = b_metrics.shard_passes.get();
    wait_until("B streams all shards", Duration::from_secs(20), || async {
        b_metrics.shard_passes.get() >= b_passes + u64::from(SHARDS)
    })
    .await;
    b_stop.trigger();
    let b_report = b.await.unwrap();
    let ownership = ownership.finish().await;

    // Exactly once per pass across both moves: the queue holds what the shard states account for.
    let queue = open_queue(&etcd, &prefix).await;
    let samples = queued_samples(&queue).await;
    let states = shard_states(&client, &prefix).await;
    let expected = samples_per_states(&states, &rows_per_shard(REAL_CSV));
    assert_eq!(samples.len() as u64, expected);
    assert_eq!(
        a_report.samples_published + b_report.samples_published,
        expected
    );
    assert_timestamps_increase_per_gpu(&samples);

    // Exclusivity (checked by the log): per shard, owner keys alternate create and delete.
    let acquisitions = &ownership.acquisitions;
    assert_eq!(acquisitions.get("member-a"), Some(&32));
    assert_eq!(
        acquisitions.get("member-b").copied(),
        Some(32),
        "B acquired its own shards on joining and A's when A left"
    );
    assert!(
        ownership.still_owned.is_empty(),
        "still owned: {:?}",
        ownership.still_owned
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_blank_rows_are_skipped_and_counted_once() {
    let etcd = EtcdHarness::start().await;
    for (csv, ok, bad, blank, total) in [
        ("csv-bad-rows.csv", 4u64, 12u64, 0u64, 16u64),
        ("csv-blank-sentinels.csv", 4, 0, 4, 8),
    ] {
        let prefix = unique_prefix("bad-rows");
        let metrics = StreamerMetrics::default();
        let config = StreamerConfig {
            passes: Some(2),
            ..config(&prefix, csv, "bad-rows")
        };
        let report = run_streamer(&etcd, config, &metrics).await;
        assert_eq!(report.samples_published, 2 * ok, "{csv}");
        assert_eq!(
            metrics.bad_rows.get(),
            bad,
            "{csv}: counted on the first pass only"
        );
        assert_eq!(metrics.blank_rows.get(), blank, "{csv}");
        assert_eq!(metrics.rows_read.get(), 2 * total, "{csv}");

        let queue = open_queue(&etcd, &prefix).await;
        let samples = queued_samples(&queue).await;
        let expected = csv_rows_times(csv, 2);
        assert_eq!(expected.values().sum::<u64>(), 2 * ok);
        assert_eq!(row_counts(&samples), expected, "{csv}");
        assert_timestamps_increase_per_gpu(&samples);
        // Shards without a good row still count their passes.
        let states = shard_states(&etcd.client().await, &prefix).await;
        assert_eq!(states.len(), SHARDS as usize);
        assert!(states.values().all(|s| s.passes == 2 && s.row == 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_mid_run_loses_and_duplicates_nothing() {
    let mut etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("restart");
    let metrics = StreamerMetrics::default();
    let stop = Shutdown::new();
    // Small batches and a rate cap keep the run long enough to restart etcd under it.
    let task = spawn_streamer(
        etcd.client().await,
        StreamerConfig {
            passes: Some(4),
            batch_size: 10,
            rate: 5_000,
            lease_ttl: Duration::from_secs(10),
            ..config(&prefix, REAL_CSV, "survivor")
        },
        metrics.clone(),
        stop,
    );
    wait_until("some shards published", Duration::from_secs(20), || async {
        metrics.transactions.get() >= 8
    })
    .await;
    let passes_before = metrics.shard_passes.get();
    assert!(passes_before < 4 * u64::from(SHARDS), "restarting mid-run");
    etcd.restart().await;
    let report = task.await.unwrap();
    assert!(report.passes_reached);
    // (The report may count fewer: a publish that failed ambiguously and landed is confirmed by
    // the shard state, not by the publish call. The queue is the truth.)
    assert!(report.samples_published <= 4 * REAL_ROWS);

    let queue = open_queue(&etcd, &prefix).await;
    let samples = queued_samples(&queue).await;
    let expected = csv_rows_times(REAL_CSV, 4);
    assert_eq!(row_counts(&samples), expected, "every row exactly 4 times");
    assert_timestamps_increase_per_gpu(&samples);
}

/// The leases of the producers' marker keys end mid-run (as they expire when a streamer sits
/// paused past their TTL): the publishes etcd refuses for it are published again, once, and no
/// shard is left owned but never published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_refused_for_an_expired_marker_lease_are_published_once() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("marker-lease");
    let metrics = StreamerMetrics::default();
    let task = spawn_streamer(
        etcd.client().await,
        StreamerConfig {
            passes: Some(3),
            batch_size: 10,
            rate: 2_000,
            ..config(&prefix, REAL_CSV, "lapsed")
        },
        metrics.clone(),
        Shutdown::new(),
    );
    wait_until(
        "the first pass published",
        Duration::from_secs(20),
        || async { metrics.shard_passes.get() >= u64::from(SHARDS) },
    )
    .await;
    let mut client = etcd.client().await;
    let markers = client
        .get(
            format!("{prefix}/queue/telemetry/producer/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let leases: std::collections::BTreeSet<i64> =
        markers.kvs().iter().map(|kv| kv.lease()).collect();
    assert!(!leases.is_empty());
    assert!(!task.is_finished(), "revoking mid-run");
    for lease in leases {
        client.lease_revoke(lease).await.unwrap();
    }
    let report = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the streamer finishes its passes")
        .unwrap();
    assert!(report.passes_reached);
    let samples = queued_samples(&open_queue(&etcd, &prefix).await).await;
    assert_eq!(
        row_counts(&samples),
        csv_rows_times(REAL_CSV, 3),
        "every row exactly 3 times"
    );
    assert_timestamps_increase_per_gpu(&samples);
}

/// Shard states whose last stamp is centuries ahead (written by a streamer whose clock ran
/// ahead) are not followed: the streamer stamps from its clock again and writes its own stamps
/// back. One a minute ahead, within the future bound, is followed: every stamp is above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_states_beyond_the_future_bound_are_not_followed() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("clock-ahead");
    let keys = etcd_queue::WorkGroupKeys::new(&prefix, WORK_GROUP).unwrap();
    let mut client = etcd.client().await;
    let now = telemetry_model::TimestampMicros::now().0;
    let floor = now + 60_000_000;
    let centuries = now + 300 * 365 * 86_400 * 1_000_000;
    let near = 7;
    for shard in 0..SHARDS {
        let last_ts = if shard == near { floor } else { centuries };
        let state = streamer::ShardState {
            passes: 0,
            row: 0,
            last_ts,
        };
        client
            .put(keys.item_state(shard), state.to_json(), None)
            .await
            .unwrap();
    }
    let report = run_streamer(
        &etcd,
        StreamerConfig {
            passes: Some(1),
            ..config(&prefix, REAL_CSV, "stepped-back")
        },
        &StreamerMetrics::default(),
    )
    .await;
    assert!(report.passes_reached);

    let samples = queued_samples(&open_queue(&etcd, &prefix).await).await;
    assert_eq!(row_counts(&samples), csv_rows_times(REAL_CSV, 1));
    assert_timestamps_increase_per_gpu(&samples);
    // Every stamp follows the near state, and none the centuries-ahead ones: one microsecond
    // apart at least, the clock being a minute behind the floor.
    let out_of_range: Vec<i64> = samples
        .iter()
        .map(|s| s.timestamp)
        .filter(|t| *t <= floor || *t > floor + REAL_ROWS as i64)
        .collect();
    assert!(out_of_range.is_empty(), "{out_of_range:?}");
    let states = shard_states(&client, &prefix).await;
    assert_eq!(states.len(), SHARDS as usize);
    for (shard, state) in states {
        assert_eq!((state.passes, state.row), (1, 0), "shard {shard}");
        assert!(
            state.last_ts > floor && state.last_ts <= floor + REAL_ROWS as i64,
            "shard {shard} keeps last_ts {}",
            state.last_ts
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_slows_the_streamer_down_and_drops_nothing() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("backpressure");
    let queue_config = etcd_queue::QueueConfig {
        max_depth: 5,
        backpressure_timeout: Duration::from_millis(100),
        ..queue_config(&prefix)
    };
    let metrics = StreamerMetrics::default();
    let task = spawn_streamer(
        etcd.client().await,
        StreamerConfig {
            passes: Some(3),
            queue: queue_config.clone(),
            // Each pass goes out at its end, as the pass counts below expect, however long the
            // pass takes in this build.
            linger: Duration::from_secs(3600),
            ..config(&prefix, REAL_CSV, "patient")
        },
        metrics.clone(),
        Shutdown::new(),
    );
    // Without a consumer the second pass finds the queue full, waits, and retries.
    wait_until(
        "the streamer hits a full queue",
        Duration::from_secs(20),
        || async { metrics.publish_retries.get() >= 1 },
    )
    .await;
    assert_eq!(
        metrics.shard_passes.get(),
        u64::from(SHARDS),
        "one pass got in"
    );

    let queue = Queue::open(etcd.client().await, queue_config)
        .await
        .unwrap();
    let mut consumer = queue
        .consumer(etcd_queue::ConsumerConfig::new("drain"))
        .await
        .unwrap();
    let mut consumed = Vec::new();
    loop {
        match consumer.poll(Duration::from_millis(100)).await.unwrap() {
            Some(delivery) => {
                for message in &delivery.messages {
                    let event =
                        telemetry_model::BatchEvent::from_queue_message(&message.payload).unwrap();
                    for (gpu, metric, ts, value) in event.batch.samples() {
                        consumed.push(QueuedSample {
                            partition: delivery.partition,
                            gpu: gpu.uuid.as_str().to_string(),
                            metric: metric.as_str().to_string(),
                            timestamp: ts.0,
                            value,
                        });
                    }
                }
                consumer
                    .commit(&delivery, etcd_queue::Fence::default(), &[])
                    .await
                    .unwrap();
            }
            None if task.is_finished() && queue.depth().await.unwrap() == 0 => break,
            None => {}
        }
    }
    consumer.leave().await.unwrap();
    let report = task.await.unwrap();
    assert!(report.passes_reached);
    let expected = csv_rows_times(REAL_CSV, 3);
    assert_eq!(row_counts(&consumed), expected, "every row exactly 3 times");
    // Consumed partition by partition, each in queue order: per-GPU order holds in each.
    let mut by_partition = consumed.clone();
    by_partition.sort_by_key(|s| s.partition);
    assert_timestamps_increase_per_gpu(&by_partition);
}

/// Streams one pass of `csv` at `rate` samples/s with a 20 ms linger and waits until at least
/// `min_queued` samples are queued while every shard is still at pass 0 (a part that ends a
/// shard's pass advances its state in the same transaction, so those went out mid-pass); then
/// checks the pass published every row once, in per-GPU order, and ended every shard's pass.
async fn assert_published_mid_pass(csv: &str, rate: u64, min_queued: usize) {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("linger");
    let config = StreamerConfig {
        passes: Some(1),
        rate,
        linger: Duration::from_millis(20),
        ..config(&prefix, csv, "linger")
    };
    let task = spawn_streamer(
        etcd.client().await,
        config,
        StreamerMetrics::default(),
        Shutdown::new(),
    );
    let client = etcd.client().await;
    let queue = open_queue(&etcd, &prefix).await;
    // Read before the states: were the states still at pass 0, so was every shard when the
    // samples were read.
    test_support::wait_until(
        "samples published mid-pass",
        Duration::from_secs(30),
        || {
            let (client, queue, prefix) = (client.clone(), &queue, &prefix);
            async move {
                let queued = queued_samples(queue).await.len();
                let states = shard_states(&client, prefix).await;
                queued >= min_queued && states.values().all(|s| s.passes == 0)
            }
        },
    )
    .await;
    let report = task.await.unwrap();
    assert!(report.passes_reached);
    let expected = csv_rows_times(csv, 1);
    assert_eq!(report.samples_published, expected.values().sum::<u64>());
    let samples = queued_samples(&queue).await;
    assert_eq!(row_counts(&samples), expected, "every row once");
    assert_timestamps_increase_per_gpu(&samples);
    let states = shard_states(&client, &prefix).await;
    assert!(states.values().all(|s| s.passes == 1 && s.row == 0));
}

/// A slow pass publishes what waited the linger time long before the pass ends, without
/// publishing any row twice or ending a shard's pass early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_waited_the_linger_time_are_published_mid_pass() {
    // 2,470 rows at 500 samples/s: a pass of about five seconds.
    assert_published_mid_pass(REAL_CSV, 500, 100).await;
}

/// A paced pass publishes what waited the linger time while it waits for the rate cap, not only
/// between the chunks the reader hands over: a file smaller than one chunk goes out long before
/// its pass ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_pass_publishes_within_the_linger_inside_one_read_chunk() {
    // 100 rows (fewer than one chunk of the reader) at 25 samples/s: a pass of four seconds.
    assert_published_mid_pass("dcgm-slice-100.csv", 25, 1).await;
}
