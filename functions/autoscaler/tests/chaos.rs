//! The fault suite (`make chaos`): the whole pipeline as real processes (the gateway, collectors,
//! a streamer, in one scenario the autoscaler) against real etcd members, one fault per scenario
//! during a steady stream of the real CSV:
//!
//! * (a) collectors SIGKILLed repeatedly (and replaced);
//! * (b) etcd SIGKILLed and restarted, twice;
//! * (c) etcd stalled (SIGSTOP) longer than the request timeout, three times, then longer than the
//!   queue's retry budget;
//! * (d) a three-member cluster losing its leader twice;
//! * (e) NOSPACE under a small quota, recovered by compaction, defragmentation and disarming while
//!   everything runs;
//! * (f) authentication on, every function a user whose role may touch the prefix only, etcd
//!   restarted (forgetting every token) twice;
//! * (g) a shard state and a batch stamped centuries ahead (a clock that stepped);
//! * (h) collectors scaled 0 -> 10 -> 0 by the autoscaler, pass after pass.
//!
//! After each, through the gateway's API, every GPU must hold exactly one sample per pass for each
//! of its metrics (the streamer runs `--passes`, so the count is exact), the queue depth must be
//! back to 0, and no process may have died: the streamer exits 0 after its passes, and every
//! process still running stops cleanly on SIGTERM. Each scenario prints its recovery time: from
//! the end of its fault to the depth at 0 with every sample queryable.
//!
//! Timeouts, lease TTLs and retry budgets are shortened through the functions' configuration
//! (environment variables), never in code. Each process logs to
//! `target/chaos/<scenario>/<process>.log`. The scenarios take minutes, so `cargo test` skips them
//! (`#[ignore]`); `make chaos` runs them one at a time.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{alive, collectors_with, get_json, scrape, wait_ready, Process};
use etcd_queue::{OutgoingMessage, Queue, QueueConfig, WorkGroupKeys};
use telemetry_model::{BatchEvent, DcgmCsvReader, RowOutcome, SampleBatch, TimestampMicros};
use test_support::{
    build_workspace_binaries, free_port, target_dir, testdata, unique_prefix, wait_until,
    EtcdCluster, EtcdHarness, EtcdUser, REAL_CSV,
};

/// Rows (and samples) in one pass over the real CSV; 247 GPUs x 10 metrics.
const ROWS: u64 = 2_470;
const GPUS: usize = 247;
const METRICS: usize = 10;

/// How long one etcd request may take (`ETCD_TIMEOUT`): a stall longer than this is a timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a queue operation retries (`QUEUE_RETRY_BUDGET`): a stall longer than this makes
/// operations fail, not just wait.
const RETRY_BUDGET: Duration = Duration::from_secs(4);
/// Lease TTL of collectors and streamers (`QUEUE_LEASE_TTL`).
const LEASE_TTL: &str = "2s";

/// The longest a scenario may take to catch up after its fault before it fails.
const CATCH_UP: Duration = Duration::from_secs(120);
/// The longest the processes may take to start and become ready.
const START: Duration = Duration::from_secs(60);

/// The collector counter of samples refused for being stamped too far in the future.
const FUTURE_REJECTED_METRIC: &str = r#"collector_samples_rejected_total{reason="future"}"#;

/// What the streamer streams: `passes` passes at `rate` samples/s, `interval` between passes.
#[derive(Clone, Copy)]
struct Stream {
    passes: u64,
    rate: u64,
    interval: &'static str,
}

impl Stream {
    /// About 16 s of streaming at 2,500 samples/s.
    const STEADY: Stream = Stream {
        passes: 16,
        rate: 2_500,
        interval: "0s",
    };

    fn samples(&self) -> u64 {
        self.passes * ROWS
    }
}

/// Where the pipeline's etcd is and how to log in to it.
struct Etcd {
    endpoints: Vec<String>,
    user: Option<EtcdUser>,
}

impl Etcd {
    fn of(harness: &EtcdHarness) -> Etcd {
        Etcd {
            endpoints: vec![harness.endpoint()],
            user: None,
        }
    }
}

/// A collector process and its port.
struct Collector {
    process: Process,
    port: u16,
}

/// What every process of a scenario is started with.
struct Settings {
    bin: PathBuf,
    logs: PathBuf,
    prefix: String,
    etcd: Etcd,
    password_file: Option<tempfile::NamedTempFile>,
}

impl Settings {
    /// The command for `program` with the pipeline's etcd, prefix, shortened timeouts and port,
    /// logging to its own file.
    fn command(&self, program: &str, name: &str, port: u16) -> Command {
        let mut command = Command::new(self.bin.join(program));
        let log = std::fs::File::create(self.logs.join(format!("{name}.log"))).unwrap();
        command
            .env("ETCD_ENDPOINTS", self.etcd.endpoints.join(","))
            .env("TELEMETRY_PREFIX", &self.prefix)
            .env("PORT", port.to_string())
            .env("ETCD_TIMEOUT", format!("{}ms", REQUEST_TIMEOUT.as_millis()))
            .env(
                "QUEUE_RETRY_BUDGET",
                format!("{}ms", RETRY_BUDGET.as_millis()),
            )
            .env("QUEUE_LEASE_TTL", LEASE_TTL)
            .env("COLLECTOR_GRACE_PERIOD", "15s")
            .env("RUST_LOG", "warn")
            .stderr(log);
        if let (Some(user), Some(file)) = (&self.etcd.user, &self.password_file) {
            command
                .env("ETCD_USERNAME", &user.name)
                .env("ETCD_PASSWORD_FILE", file.path());
        }
        command
    }
}

/// The running pipeline of one scenario.
struct Pipeline {
    scenario: &'static str,
    settings: Settings,
    started: Instant,
    gateway: Process,
    gateway_port: u16,
    collectors: Vec<Collector>,
    /// Collector processes started so far (names `collector-<n>`).
    spawned: usize,
    streamer: Option<(Process, u16)>,
    /// When the streamer was first seen to have exited.
    stream_end: Option<Instant>,
    autoscaler: Option<(Process, u16)>,
}

impl Pipeline {
    /// Starts the gateway and `collectors` collector processes, and waits until they are ready.
    async fn start(
        scenario: &'static str,
        prefix: String,
        etcd: Etcd,
        collectors: usize,
    ) -> Pipeline {
        let started = Instant::now();
        let bin = build_workspace_binaries();
        let logs = target_dir().join("chaos").join(scenario);
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs).expect("create the log directory");
        let logs = logs.canonicalize().unwrap_or(logs);
        let password_file = etcd.user.as_ref().map(|user| {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), format!("{}\n", user.password)).unwrap();
            file
        });
        let settings = Settings {
            bin,
            logs,
            prefix,
            etcd,
            password_file,
        };
        let gateway_port = free_port();
        let mut gateway = settings.command("gateway", "gateway", gateway_port);
        gateway.arg("run");
        let gateway = Process::spawn("gateway", &mut gateway);
        let mut pipeline = Pipeline {
            scenario,
            settings,
            started,
            gateway,
            gateway_port,
            collectors: Vec::new(),
            spawned: 0,
            streamer: None,
            stream_end: None,
            autoscaler: None,
        };
        for _ in 0..collectors {
            pipeline.start_collector();
        }
        pipeline.wait_ready().await;
        pipeline
    }

    fn start_collector(&mut self) {
        self.spawned += 1;
        let name = format!("collector-{}", self.spawned);
        let port = free_port();
        let mut command = self.settings.command("collector", &name, port);
        command.arg("run").env("COLLECTOR_ID", &name);
        let process = Process::spawn(name, &mut command);
        self.collectors.push(Collector { process, port });
    }

    /// Waits until the gateway and every collector answer `/readyz` with 200.
    async fn wait_ready(&self) {
        let ports =
            std::iter::once(self.gateway_port).chain(self.collectors.iter().map(|c| c.port));
        wait_ready("the gateway and the collectors ready", ports, START).await;
    }

    fn start_streamer(&mut self, stream: Stream) {
        let port = free_port();
        let mut command = self.settings.command("streamer", "streamer", port);
        let csv = testdata(REAL_CSV);
        command.args(["run", "--csv", csv.to_str().unwrap()]).args([
            "--passes",
            &stream.passes.to_string(),
            "--rate",
            &stream.rate.to_string(),
            "--interval",
            stream.interval,
        ]);
        self.streamer = Some((Process::spawn("streamer", &mut command), port));
    }

    /// Waits until the streamer has published `fraction` of `stream` (or has exited).
    async fn wait_streamed(&mut self, stream: Stream, fraction: f64) {
        let target = (stream.samples() as f64 * fraction) as u64;
        let (streamer, port) = self.streamer.as_mut().expect("the streamer runs");
        let port = *port;
        let what = format!("the streamer to publish {target} samples");
        let deadline = Instant::now() + CATCH_UP;
        loop {
            if streamer.exited().is_some() {
                return;
            }
            let published = scrape(port, "streamer_samples_published_total").await;
            if published.is_some_and(|p| p as u64 >= target) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the streamer still runs.
    fn streamer_runs(&mut self) -> bool {
        let (streamer, _) = self.streamer.as_mut().expect("the streamer was started");
        let runs = streamer.exited().is_none();
        if !runs && self.stream_end.is_none() {
            self.stream_end = Some(Instant::now());
        }
        runs
    }

    /// Waits until the streamer has exited (how is checked by [`Pipeline::wait_caught_up`]).
    async fn wait_streamer_done(&mut self) -> Instant {
        let deadline = Instant::now() + CATCH_UP;
        while self.streamer_runs() {
            assert!(
                Instant::now() < deadline,
                "{}: the streamer did not finish",
                self.scenario
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stream_end.expect("the streamer's end was recorded")
    }

    /// The depth the gateway reports.
    async fn depth(&self) -> Option<u64> {
        let url = format!("http://127.0.0.1:{}/api/v1/queue", self.gateway_port);
        get_json(&url).await?["depth"].as_u64()
    }

    /// `Ok` when, through the gateway, every GPU of the CSV holds exactly `passes` samples of each
    /// of its metrics; otherwise the first difference.
    async fn stored_exactly(&self, passes: u64) -> Result<(), String> {
        let base = format!("http://127.0.0.1:{}/api/v1", self.gateway_port);
        let list = get_json(&format!("{base}/gpus"))
            .await
            .ok_or("the GPU list is unavailable")?;
        let gpus = list["gpus"].as_array().ok_or("no GPU list")?;
        if gpus.len() != GPUS {
            return Err(format!("{} GPUs, expected {GPUS}", gpus.len()));
        }
        let mut total = 0;
        for gpu in gpus {
            let id = gpu["uuid"].as_str().ok_or("a GPU without uuid")?;
            let url = format!("{base}/gpus/{id}/telemetry?limit=10000");
            let telemetry = get_json(&url).await.ok_or(format!("{id}: unavailable"))?;
            let mut per_metric = std::collections::BTreeMap::<String, u64>::new();
            for entry in telemetry["entries"].as_array().ok_or("no entries")? {
                let metric = entry["metric_name"].as_str().unwrap_or_default();
                *per_metric.entry(metric.to_string()).or_default() += 1;
            }
            if per_metric.len() != METRICS {
                return Err(format!("{id}: {} metrics", per_metric.len()));
            }
            if let Some((metric, count)) = per_metric.iter().find(|(_, &n)| n != passes) {
                return Err(format!("{id} {metric}: {count} samples, expected {passes}"));
            }
            total += per_metric.values().sum::<u64>();
        }
        if total != passes * ROWS {
            return Err(format!("{total} samples, expected {}", passes * ROWS));
        }
        Ok(())
    }

    /// Waits until the streamer has exited 0, the depth is 0 and every sample is queryable exactly
    /// once; returns when that held.
    async fn wait_caught_up(&mut self, stream: Stream) -> Instant {
        let deadline = Instant::now() + CATCH_UP;
        let mut last = String::from("nothing checked yet");
        loop {
            let runs = self.streamer_runs();
            let (streamer, _) = self.streamer.as_mut().expect("the streamer was started");
            match streamer.exited() {
                Some(status) => assert!(
                    status.success(),
                    "{}: the streamer exited with {status} (logs in {})",
                    self.scenario,
                    self.settings.logs.display()
                ),
                None => last = "the streamer still runs".into(),
            }
            if !runs {
                match self.depth().await {
                    Some(0) => match self.stored_exactly(stream.passes).await {
                        Ok(()) => return Instant::now(),
                        Err(e) => last = e,
                    },
                    depth => last = format!("depth {depth:?}"),
                }
            }
            assert!(
                Instant::now() < deadline,
                "{}: not caught up within {CATCH_UP:?}: {last} (logs in {})",
                self.scenario,
                self.settings.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Asserts no process the test did not kill has exited.
    fn assert_all_running(&mut self) {
        let logs = self.settings.logs.display().to_string();
        let check = |process: &mut Process| {
            if let Some(status) = process.exited() {
                panic!("{} died: {status} (logs in {logs})", process.name);
            }
        };
        check(&mut self.gateway);
        for collector in &mut self.collectors {
            check(&mut collector.process);
        }
        if let Some((autoscaler, _)) = &mut self.autoscaler {
            check(autoscaler);
        }
    }

    /// Prints the scenario's result line.
    fn report(&self, fault_end: Instant, caught_up: Instant) {
        let recovery = caught_up.duration_since(fault_end).as_secs_f64();
        // When the streamer ended, from the end of the fault (negative: before it).
        let stream = self.stream_end.map_or(f64::NAN, |end| {
            if end >= fault_end {
                end.duration_since(fault_end).as_secs_f64()
            } else {
                -fault_end.duration_since(end).as_secs_f64()
            }
        });
        println!(
            "chaos {:<24} recovered in {recovery:>5.1} s after the fault ended (the stream ended at {stream:+.1} s); scenario {:.1} s",
            self.scenario,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// After the fault ended at `fault_end`: waits until caught up, checks that nothing died,
    /// prints the recovery time and stops everything.
    async fn finish(mut self, stream: Stream, fault_end: Instant) {
        let caught_up = self.wait_caught_up(stream).await;
        self.assert_all_running();
        self.report(fault_end, caught_up);
        self.stop();
    }

    /// Stops every process with SIGTERM and asserts each exits 0.
    fn stop(mut self) {
        if let Some((mut autoscaler, _)) = self.autoscaler.take() {
            assert!(autoscaler.terminate(), "the autoscaler exits 0 on SIGTERM");
        }
        for mut collector in self.collectors.drain(..) {
            assert!(
                collector.process.terminate(),
                "{} exits 0 on SIGTERM",
                collector.process.name
            );
        }
        assert!(self.gateway.terminate(), "the gateway exits 0 on SIGTERM");
        assert!(
            collectors_with(&self.settings.prefix).is_empty(),
            "collector processes left behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by `make chaos`"]
async fn a_collectors_sigkilled_repeatedly() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("chaos-a");
    let mut pipeline = Pipeline::start("a-collectors-sigkilled", prefix, Etcd::of(&etcd), 3).await;
    let stream = Stream::STEADY;
    pipeline.start_streamer(stream);
    for (round, fraction) in [0.15, 0.3, 0.45, 0.6, 0.75].into_iter().enumerate() {
        pipeline.wait_streamed(stream, fraction).await;
        let victim = round % pipeline.collectors.len();
        let mut killed = pipeline.collectors.remove(victim);
        killed.process.kill();
        pipeline.start_collector();
    }
    pipeline.finish(stream, Instant::now()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by `make chaos`"]
async fn b_etcd_sigkilled_and_restarted() {
    let mut etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("chaos-b");
    let mut pipeline = Pipeline::start("b-etcd-sigkilled", prefix, Etcd::of(&etcd), 2).await;
    let stream = Stream::STEADY;
    pipeline.start_streamer(stream);
    for fraction in [0.25, 0.6] {
        pipeline.wait_streamed(stream, fraction).await;
        etcd.kill();
        // The outage: etcd is down this long.
        tokio::time::sleep(Duration::from_secs(3)).await;
        etcd.restart().await;
    }
    pipeline.finish(stream, Instant::now()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by `make chaos`"]
async fn c_etcd_stalled_beyond_the_request_timeout_and_the_retry_budget() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("chaos-c");
    let mut pipeline = Pipeline::start("c-etcd-stalled", prefix, Etcd::of(&etcd), 2).await;
    let stream = Stream::STEADY;
    pipeline.start_streamer(stream);
    let short = REQUEST_TIMEOUT + Duration::from_secs(1);
    let long = RETRY_BUDGET + Duration::from_secs(3);
    for (fraction, stall) in [(0.15, short), (0.3, short), (0.45, short), (0.6, long)] {
        pipeline.wait_streamed(stream, fraction).await;
        etcd.stall().await;
        // The stall: etcd answers nothing this long.
        tokio::time::sleep(stall).await;
        etcd.resume();
    }
    pipeline.finish(stream, Instant::now()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by `make chaos`"]
async fn d_cluster_loses_its_leader_twice() {
    let mut cluster = EtcdCluster::start(3).await;
    let prefix = unique_prefix("chaos-d");
    let etcd = Etcd {
        endpoints: cluster.endpoints(),
        user: None,
    };
    let mut pipeline = Pipeline::start("d-cluster-leader-lost", prefix, etcd, 2).await;
    let stream = Stream::STEADY;
    pipeline.start_streamer(stream);
    for fraction in [0.25, 0.6] {
        pipeline.wait_streamed(stream, fraction).await;
        let old = cluster.kill_leader().await;
        let new = cluster.wait_for_leader(Some(old)).await;
        assert_ne!(old, new);
        cluster.restart(old).await;
    }
    pipeline.finish(stream, Instant::now()).await;
}

/// The quota of the NOSPACE scenario: the steady stream's revision history fills it several times
/// (etcd here runs without auto-compaction, and every commit rewrites the open chunks it touches),
/// and after compaction and defragmentation the live data takes a fraction of it.
const NOSPACE_QUOTA: u64 = 4 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by `make chaos`"]
async fn e_nospace_recovered_by_compact_defrag_and_disarm() {
    let etcd = EtcdHarness::start_with_quota(NOSPACE_QUOTA).await;
    let prefix = unique_prefix("chaos-e");
    let mut pipeline = Pipeline::start("e-nospace", prefix, Etcd::of(&etcd), 2).await;
    let stream = Stream::STEADY;
    pipeline.start_streamer(stream);
    // The operator's (or the chart's job's) answer whenever the alarm is raised, until the queue
    // is drained: leave it raised a while, then compact, defragment and disarm. The collectors'
    // commits after the stream ended can raise it again, so watching stops only at depth 0.
    let mut episodes = 0;
    let mut fault_end = Instant::now();
    let deadline = Instant::now() + 3 * CATCH_UP;
    loop {
        assert!(
            Instant::now() < deadline,
            "e-nospace: the queue was not drained within {:?} ({episodes} NOSPACE episodes)",
            3 * CATCH_UP
        );
        if etcd.alarms().await.is_empty() {
            if !pipeline.streamer_runs() && pipeline.depth().await == Some(0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        episodes += 1;
        // Everything waits in NOSPACE this long before the operator acts.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (before, after) = etcd.reclaim_space().await;
        println!("chaos e-nospace: NOSPACE #{episodes}: reclaimed {before} -> {after} bytes");
        fault_end = Instant::now();
    }
    assert!(
        episodes > 0,
        "the stream never filled the {NOSPACE_QUOTA}-byte quota"
    );
    pipeline.finish(stream, fault_end).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by `make chaos`"]
async fn f_auth_with_a_prefix_role_and_etcd_restarted() {
    let prefix = unique_prefix("chaos-f");
    let (mut etcd, user) = EtcdHarness::start_with_auth(&prefix, &[]).await;
    let auth = Etcd {
        endpoints: vec![etcd.endpoint()],
        user: Some(user),
    };
    let mut pipeline = Pipeline::start("f-auth-restart", prefix, auth, 2).await;
    let stream = Stream::STEADY;
    pipeline.start_streamer(stream);
    for fraction in [0.3, 0.65] {
        pipeline.wait_streamed(stream, fraction).await;
        // The restarted member has forgotten every token (see `EtcdHarness::restart`).
        etcd.restart().await;
    }
    pipeline.finish(stream, Instant::now()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by `make chaos`"]
async fn g_shard_state_and_samples_centuries_ahead() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("chaos-g");
    let centuries_ahead = TimestampMicros::now().0 + 300 * 365 * 24 * 3_600 * 1_000_000;
    // A streamer whose clock once stepped 300 years ahead left this state on shard 0.
    let mut client = etcd.client().await;
    let state = streamer::ShardState {
        passes: 0,
        row: 0,
        last_ts: centuries_ahead,
    };
    let key = WorkGroupKeys::new(&prefix, streamer::WORK_GROUP)
        .unwrap()
        .item_state(0);
    client.put(key, state.to_json(), None).await.unwrap();
    // And one batch stamped that far ahead: one sample of each metric of the CSV's first GPU.
    let queue = Queue::open(
        etcd.client().await,
        QueueConfig {
            prefix: prefix.clone(),
            ..QueueConfig::default()
        },
    )
    .await
    .unwrap();
    let rows: Vec<_> = DcgmCsvReader::open(testdata(REAL_CSV))
        .unwrap()
        .filter_map(RowOutcome::row)
        .collect();
    let first = rows[0].info.clone();
    let mut future = SampleBatch::builder();
    for (i, row) in rows
        .iter()
        .filter(|r| r.info.uuid == first.uuid)
        .enumerate()
    {
        future.push(
            &row.info,
            &row.metric,
            TimestampMicros(centuries_ahead + i as i64),
            row.value,
        );
    }
    let future = future.build();
    let future_samples = future.len() as f64;
    assert_eq!(future.len(), METRICS);
    let mut producer = queue.producer();
    producer
        .publish_batch(vec![OutgoingMessage {
            partition: queue.partition_for(first.uuid.as_str().as_bytes()),
            payload: BatchEvent::new("centuries-ahead", "/chaos/clock-step", future).to_json(),
        }])
        .await
        .unwrap();
    producer.close().await.unwrap();

    let mut pipeline = Pipeline::start("g-future-state", prefix, Etcd::of(&etcd), 2).await;
    let stream = Stream {
        passes: 4,
        ..Stream::STEADY
    };
    pipeline.start_streamer(stream);
    let stream_end = pipeline.wait_streamer_done().await;
    // The rest is exact (the first GPU holds its 4 samples per metric, not 5), and no
    // partition stays blocked behind the future batch.
    let caught_up = pipeline.wait_caught_up(stream).await;
    let mut rejected = 0.0;
    for collector in &pipeline.collectors {
        rejected += scrape(collector.port, FUTURE_REJECTED_METRIC)
            .await
            .unwrap_or_default();
    }
    assert_eq!(
        rejected, future_samples,
        "future samples counted as rejected"
    );
    pipeline.assert_all_running();
    pipeline.report(stream_end, caught_up);
    pipeline.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by `make chaos`"]
async fn h_collectors_scaled_from_0_to_10_and_back_mid_stream() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("chaos-h");
    let mut pipeline = Pipeline::start("h-scale-0-10-0", prefix, Etcd::of(&etcd), 0).await;
    let port = free_port();
    let mut autoscaler = pipeline.settings.command("autoscaler", "autoscaler", port);
    autoscaler.args([
        "run",
        "--max",
        "10",
        "--target",
        "1",
        "--scale-up-step",
        "10",
        "--scale-up-period",
        "1s",
        "--stabilization",
        "1s",
        "--cooldown",
        "2s",
        "--interval",
        "100ms",
        "--grace-period",
        "15s",
    ]);
    pipeline.autoscaler = Some((Process::spawn("autoscaler", &mut autoscaler), port));
    wait_until("the autoscaler up with 0 collectors", START, || async {
        scrape(port, "autoscaler_replicas").await == Some(0.0)
    })
    .await;

    // Every pass fills the queue from zero collectors, and the pause after it lets them drain
    // it and scale back to zero before the next: 0 -> 10 -> 0, pass after pass.
    let stream = Stream {
        passes: 3,
        rate: 5_000,
        interval: "8s",
    };
    let most = Arc::new(AtomicU64::new(0));
    let back_to_zero = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (most, back_to_zero) = (most.clone(), back_to_zero.clone());
        tokio::spawn(async move {
            let mut was_up = false;
            loop {
                if let Some(replicas) = scrape(port, "autoscaler_replicas").await {
                    let replicas = replicas as u64;
                    most.fetch_max(replicas, Ordering::SeqCst);
                    if replicas >= 10 {
                        was_up = true;
                    } else if replicas == 0 && was_up {
                        was_up = false;
                        back_to_zero.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    pipeline.start_streamer(stream);
    let stream_end = pipeline.wait_streamer_done().await;
    let caught_up = pipeline.wait_caught_up(stream).await;
    wait_until("the collectors scaled back to 0", START, || async {
        scrape(port, "autoscaler_replicas").await == Some(0.0)
            && collectors_with(&pipeline.settings.prefix).is_empty()
    })
    .await;
    watcher.abort();
    assert_eq!(
        most.load(Ordering::SeqCst),
        10,
        "scaled up to 10 collectors"
    );
    assert!(
        back_to_zero.load(Ordering::SeqCst) >= 2,
        "scaled from 10 back to 0 between passes and at the end: {} times",
        back_to_zero.load(Ordering::SeqCst)
    );
    assert_eq!(scrape(port, "autoscaler_restarts_total").await, Some(0.0));
    assert_eq!(
        scrape(port, "autoscaler_forced_kills_total").await,
        Some(0.0)
    );
    assert!(alive(pipeline.autoscaler.as_ref().unwrap().0.pid()));
    pipeline.assert_all_running();
    pipeline.report(stream_end, caught_up);
    pipeline.stop();
}
