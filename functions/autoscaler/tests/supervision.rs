//! The autoscaler against a real etcd, supervising the `fake_worker` example: it scales up with
//! the depth the test publishes, down after stabilization, to zero after the cooldown, replaces a
//! killed worker, kills a worker that ignores SIGTERM after the grace period, and leaves no
//! process behind on shutdown, in-process and as the `autoscaler` binary.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use autoscaler::{AutoscalerError, Config, PolicyConfig, WorkerCommand, WorkerConfig};
use etcd_client::GetOptions;
use etcd_queue::{ConsumerConfig, Fence, OutgoingMessage, Queue};
use function_runtime::{EtcdConfig, QueueSettings, Shutdown};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use test_support::{unique_prefix, wait_until, EtcdHarness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// Generous bound on every wait: the conditions are met within a few seconds on a loaded machine.
const WAIT: Duration = Duration::from_secs(60);

/// The `fake_worker` example, built (or found up to date) once per test run by the cargo that
/// runs the tests, into the same target directory and profile: `cargo test --test supervision`
/// alone does not build examples, and a stale one would test old code.
fn fake_worker() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let profile_dir = test_support::build_workspace_binaries();
        let path = profile_dir.join("examples").join("fake_worker");
        assert!(
            path.is_file(),
            "{} is missing after building it",
            path.display()
        );
        path
    })
    .clone()
}

/// A worker command whose processes carry `tag` on their command line, so each test finds its own.
fn worker_command(tag: &str, extra: &[&str]) -> WorkerCommand {
    let mut args = vec!["--tag".to_string(), tag.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    WorkerCommand::new(fake_worker(), args)
}

/// Live (not zombie) processes whose command line holds `tag` as an argument, sorted by pid.
fn processes_tagged(tag: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if !cmdline.split(|b| *b == 0).any(|arg| arg == tag.as_bytes()) {
            continue;
        }
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// The `PORT` a process was started with.
fn port_of(pid: u32) -> u16 {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(b"PORT="))
        .and_then(|port| std::str::from_utf8(port).ok()?.parse().ok())
        .unwrap_or_else(|| panic!("process {pid} has no PORT"))
}

/// `/metrics` of the autoscaler on `port`.
async fn scrape(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the autoscaler's HTTP port");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

/// The value of the sample named exactly `name` (labels included, e.g. `x_total{change="up"}`).
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (sample, value) = line.rsplit_once(' ')?;
        (sample == name).then(|| value.parse().ok())?
    })
}

async fn metric(port: u16, name: &str) -> f64 {
    sample(&scrape(port).await, name).unwrap_or_else(|| panic!("no sample {name}"))
}

/// The autoscaler running in this process.
struct Running {
    shutdown: Shutdown,
    task: JoinHandle<Result<(), AutoscalerError>>,
    port: u16,
}

impl Running {
    /// Runs the library's `run` on a free port.
    async fn start(config: Config) -> Running {
        let shutdown = Shutdown::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = shutdown.clone();
        let task = tokio::spawn(autoscaler::run(config, listener, async move {
            stop.wait().await
        }));
        Running {
            shutdown,
            task,
            port,
        }
    }

    async fn replicas(&self) -> f64 {
        metric(self.port, "autoscaler_replicas").await
    }

    /// Waits until the autoscaler has made `n` decisions that kept the replica count.
    async fn wait_unchanged_decisions(&self, n: u32, what: &str) {
        wait_until(what, WAIT, || async {
            let metrics = scrape(self.port).await;
            sample(&metrics, r#"autoscaler_decisions_total{change="none"}"#).unwrap_or(0.0)
                >= f64::from(n)
        })
        .await;
    }

    /// Waits until the metrics and the process table agree on `n` workers; returns their pids.
    async fn wait_for_workers(&self, tag: &str, n: usize, what: &str) -> Vec<u32> {
        wait_until(what, WAIT, || async {
            self.replicas().await == n as f64
                && metric(self.port, "autoscaler_draining_replicas").await == 0.0
                && processes_tagged(tag).len() == n
        })
        .await;
        processes_tagged(tag)
    }

    async fn stop(self) {
        self.shutdown.trigger();
        let result = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the autoscaler stops within the bound")
            .expect("the autoscaler task did not panic");
        assert!(result.is_ok(), "the autoscaler failed: {result:?}");
    }
}

/// Waits until every worker accepts connections on its port, i.e. has its SIGTERM handler.
async fn wait_listening(pids: &[u32]) {
    for pid in pids {
        let port = port_of(*pid);
        wait_until(
            &format!("worker {pid} listening on {port}"),
            WAIT,
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
    }
}

/// Opens (and so creates) the topic under `prefix`, as a producer does.
async fn open_queue(etcd: &EtcdHarness, prefix: &str) -> Queue {
    Queue::open(
        etcd.client().await,
        QueueSettings::default().queue_config(prefix),
    )
    .await
    .unwrap()
}

async fn publish(queue: &Queue, n: u32) {
    let mut producer = queue.producer();
    let messages = (0..n)
        .map(|i| OutgoingMessage {
            partition: i % queue.config().partitions,
            payload: format!("message-{i}").into_bytes(),
        })
        .collect();
    assert_eq!(
        producer.publish_batch(messages).await.unwrap().len(),
        n as usize
    );
    producer.close().await.unwrap();
}

/// Consumes and commits exactly `n` messages, then rewrites the depth key.
async fn consume(queue: &Queue, n: usize) {
    let mut consumer = queue
        .consumer(ConsumerConfig {
            max_messages: 1,
            ..ConsumerConfig::new(format!("test-consumer-{}", uuid_like()))
        })
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let mut consumed = 0;
    while consumed < n {
        assert!(
            Instant::now() < deadline,
            "consumed only {consumed} of {n} messages"
        );
        if let Some(delivery) = consumer.poll(Duration::from_secs(1)).await.unwrap() {
            assert_eq!(delivery.messages.len(), 1);
            consumer
                .commit(&delivery, Fence::default(), &[])
                .await
                .unwrap();
            consumed += 1;
        }
    }
    consumer.leave().await.unwrap();
    queue.refresh_depth().await.unwrap();
}

fn uuid_like() -> String {
    unique_prefix("c").rsplit('-').next().unwrap().to_string()
}

fn test_config(etcd: &EtcdHarness, prefix: &str, command: WorkerCommand) -> Config {
    Config {
        etcd: EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            prefix: prefix.to_string(),
            ..EtcdConfig::default()
        },
        policy: PolicyConfig {
            target_per_replica: 10,
            scale_up_step: 10,
            stabilization: Duration::from_secs(2),
            cooldown: Duration::from_secs(2),
            ..PolicyConfig::default()
        },
        workers: WorkerConfig {
            command: Some(command.program),
            args: command.args,
            grace_period: Duration::from_secs(20),
        },
        interval: Duration::from_millis(100),
        ..Config::default()
    }
}

fn drained_pids(path: &Path) -> BTreeSet<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| line.parse().expect("a pid per line"))
        .collect()
}

#[tokio::test]
async fn follows_the_depth_up_down_and_to_zero_and_replaces_a_killed_worker() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("autoscaler");
    let tag = unique_prefix("tag");
    let dir = tempfile::tempdir().unwrap();
    let drained = dir.path().join("drained");
    let command = worker_command(&tag, &["--drained-file", drained.to_str().unwrap()]);
    let queue = open_queue(&etcd, &prefix).await;
    let running = Running::start(test_config(&etcd, &prefix, command)).await;

    // Idle: decisions are made, nothing runs.
    running
        .wait_unchanged_decisions(1, "a first decision at depth 0")
        .await;
    let metrics = scrape(running.port).await;
    assert_eq!(sample(&metrics, "autoscaler_replicas"), Some(0.0));
    assert_eq!(sample(&metrics, "autoscaler_desired_replicas"), Some(0.0));
    assert_eq!(sample(&metrics, "autoscaler_queue_depth"), Some(0.0));
    assert_eq!(processes_tagged(&tag), Vec::<u32>::new());

    // 25 messages at 10 per replica: 3 workers, each on its own port.
    publish(&queue, 25).await;
    let first = running
        .wait_for_workers(&tag, 3, "3 workers for depth 25")
        .await;
    let metrics = scrape(running.port).await;
    assert_eq!(sample(&metrics, "autoscaler_desired_replicas"), Some(3.0));
    assert_eq!(sample(&metrics, "autoscaler_queue_depth"), Some(25.0));
    let ports: BTreeSet<u16> = first.iter().map(|pid| port_of(*pid)).collect();
    assert_eq!(ports.len(), 3, "distinct ports: {ports:?}");
    wait_listening(&first).await;

    // Depth 10: one worker after the stabilization window; the two newest drain on SIGTERM.
    consume(&queue, 15).await;
    let remaining = running
        .wait_for_workers(&tag, 1, "1 worker for depth 10")
        .await;
    // Pids grow with start order (barring a wrap-around of the pid space).
    assert_eq!(remaining, vec![first[0]], "the oldest worker stays");
    assert_eq!(drained_pids(&drained), first[1..].iter().copied().collect());

    // A killed worker is replaced.
    kill(Pid::from_raw(remaining[0] as i32), Signal::SIGKILL).unwrap();
    wait_until("the killed worker replaced", WAIT, || async {
        let pids = processes_tagged(&tag);
        pids.len() == 1 && pids[0] != remaining[0]
    })
    .await;
    assert_eq!(metric(running.port, "autoscaler_restarts_total").await, 1.0);
    let replacement = running
        .wait_for_workers(&tag, 1, "1 worker after the restart")
        .await;
    wait_listening(&replacement).await;

    // Depth 0: to zero once the cooldown has passed.
    consume(&queue, 10).await;
    running
        .wait_for_workers(&tag, 0, "0 workers after the cooldown at depth 0")
        .await;
    let metrics = scrape(running.port).await;
    assert_eq!(sample(&metrics, "autoscaler_desired_replicas"), Some(0.0));
    assert_eq!(sample(&metrics, "autoscaler_queue_depth"), Some(0.0));
    assert_eq!(sample(&metrics, "autoscaler_restarts_total"), Some(1.0));
    assert_eq!(sample(&metrics, "autoscaler_forced_kills_total"), Some(0.0));
    assert_eq!(
        drained_pids(&drained),
        [first[1], first[2], replacement[0]].into_iter().collect(),
        "every stopped worker drained on SIGTERM"
    );
    running.stop().await;
    assert_eq!(processes_tagged(&tag), Vec::<u32>::new());
}

#[tokio::test]
async fn shutdown_drains_every_worker_and_kills_one_that_ignores_sigterm() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("autoscaler");
    let dir = tempfile::tempdir().unwrap();

    // Two workers kept by --min; both drain on SIGTERM when the autoscaler stops.
    let tag = unique_prefix("tag");
    let drained = dir.path().join("drained");
    let mut config = test_config(
        &etcd,
        &prefix,
        worker_command(&tag, &["--drained-file", drained.to_str().unwrap()]),
    );
    config.policy.min_replicas = 2;
    let running = Running::start(config).await;
    let pids = running
        .wait_for_workers(&tag, 2, "2 workers for --min 2")
        .await;
    wait_listening(&pids).await;
    running.stop().await;
    assert_eq!(processes_tagged(&tag), Vec::<u32>::new());
    assert_eq!(drained_pids(&drained), pids.iter().copied().collect());

    // A worker that ignores SIGTERM is killed after the grace period on scale-down.
    let tag = unique_prefix("tag");
    let queue = open_queue(&etcd, &prefix).await;
    let mut config = test_config(&etcd, &prefix, worker_command(&tag, &["--ignore-term"]));
    config.workers.grace_period = Duration::from_millis(300);
    let running = Running::start(config).await;
    publish(&queue, 5).await;
    let pids = running
        .wait_for_workers(&tag, 1, "1 worker for depth 5")
        .await;
    wait_listening(&pids).await;
    consume(&queue, 5).await;
    running
        .wait_for_workers(&tag, 0, "0 workers after the cooldown")
        .await;
    assert_eq!(
        metric(running.port, "autoscaler_forced_kills_total").await,
        1.0
    );
    assert_eq!(metric(running.port, "autoscaler_restarts_total").await, 0.0);
    running.stop().await;
}

/// Before any producer or collector has created the topic, the autoscaler sees depth 0 and
/// writes nothing; once a producer creates it and publishes, it attaches on its next tick and
/// follows the depth.
#[tokio::test]
async fn attaches_once_the_topic_exists_and_writes_nothing() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("autoscaler");
    let tag = unique_prefix("tag");
    let running = Running::start(test_config(&etcd, &prefix, worker_command(&tag, &[]))).await;
    running
        .wait_unchanged_decisions(2, "decisions at depth 0 without a topic")
        .await;
    let metrics = scrape(running.port).await;
    assert_eq!(sample(&metrics, "autoscaler_queue_depth"), Some(0.0));
    assert_eq!(sample(&metrics, "autoscaler_replicas"), Some(0.0));
    assert_eq!(
        sample(&metrics, "autoscaler_depth_read_errors_total"),
        Some(0.0)
    );
    let written = etcd
        .client()
        .await
        .get(
            prefix.clone(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap()
        .count();
    assert_eq!(written, 0, "the autoscaler wrote nothing");

    let queue = open_queue(&etcd, &prefix).await;
    publish(&queue, 25).await;
    running
        .wait_for_workers(&tag, 3, "3 workers once the topic holds 25 messages")
        .await;
    running.stop().await;
    assert_eq!(processes_tagged(&tag), Vec::<u32>::new());
}

#[tokio::test]
async fn the_binary_stops_its_workers_and_exits_zero_on_sigterm() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("autoscaler");
    let tag = unique_prefix("tag");
    let dir = tempfile::tempdir().unwrap();
    let drained = dir.path().join("drained");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_autoscaler"))
        .arg("run")
        .args(["--min", "2", "--port", "0", "--interval", "100ms"])
        .arg("--command")
        .arg(fake_worker())
        // `--arg=VALUE`: the tag must not stand alone on the autoscaler's own command line.
        .arg("--arg=--tag")
        .arg(format!("--arg={tag}"))
        .args(["--arg", "--drained-file", "--arg"])
        .arg(&drained)
        .env("ETCD_ENDPOINTS", etcd.endpoint())
        .env("TELEMETRY_PREFIX", &prefix)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start the autoscaler binary");
    let mut autoscaler = StopOnDrop(Some(child));
    let autoscaler_pid = autoscaler.pid();

    wait_until("2 workers started by the binary", WAIT, || async {
        processes_tagged(&tag).len() == 2
    })
    .await;
    let pids = processes_tagged(&tag);
    for pid in &pids {
        assert_eq!(
            parent_of(*pid),
            autoscaler_pid,
            "worker {pid} is the autoscaler's child"
        );
    }
    wait_listening(&pids).await;

    kill(Pid::from_raw(autoscaler_pid as i32), Signal::SIGTERM).unwrap();
    let mut status = None;
    wait_until("the autoscaler exits after SIGTERM", WAIT, || {
        status = autoscaler.try_wait();
        std::future::ready(status.is_some())
    })
    .await;
    let status = status.unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(processes_tagged(&tag), Vec::<u32>::new());
    assert_eq!(drained_pids(&drained), pids.iter().copied().collect());
}

fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after_name = stat.rsplit_once(')').expect("stat has a name").1;
    after_name
        .split_whitespace()
        .nth(1)
        .and_then(|ppid| ppid.parse().ok())
        .expect("stat has a parent pid")
}

/// The autoscaler binary, stopped with SIGTERM (so that it stops its workers) if the test ends
/// before it did: a failing test leaves no process behind either.
struct StopOnDrop(Option<std::process::Child>);

impl StopOnDrop {
    fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.0.as_mut()?.try_wait().expect("poll the autoscaler")?;
        self.0 = None;
        Some(status)
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
