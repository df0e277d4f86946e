//! The autoscaler function: a KEDA-style scaler for local and bare-metal runs. It watches the
//! queue's depth key and keeps between `--min` and `--max` collector processes running, as KEDA
//! and the HPA would in Kubernetes.
//!
//! * [`policy`]: how many replicas for a depth (activation, `ceil(depth / target)`, step limit,
//!   stabilization, cooldown), a pure function of depths and times.
//! * [`supervisor`]: the worker processes: start, stop gracefully (SIGTERM, drain, SIGKILL after
//!   the grace period), restart on crash.
//! * [`run`]: the control loop tying them to the depth key, plus `/healthz`, `/readyz`, `/metrics`.
//!
//! The loop wakes on every change of the depth key and once per `--interval` (stabilization and
//! cooldown are time-based), reads the key, asks the policy, and scales the supervisor to its
//! answer. If the key cannot be read, the replica count is held (as KEDA does on scaler errors)
//! while crashed workers are still replaced.

pub mod error;
pub mod metrics;
pub mod policy;
pub mod supervisor;

use std::mem::discriminant;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_queue::change_feed::ChangeFeed;
use etcd_queue::{Queue, QueueError};
use function_runtime::{
    ops_router, parse_duration, serve, CommonArgs, LogFormat, QueueArgs, Readiness, Shutdown,
};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

pub use error::AutoscalerError;
pub use metrics::AutoscalerMetrics;
pub use policy::{Decision, PolicyConfig, Reason, ScalingPolicy};
pub use supervisor::{default_worker_command, Supervisor, WorkerCommand, WorkerExit, WorkerInfo};

/// The port the autoscaler serves `/healthz`, `/readyz` and `/metrics` on when `PORT` is unset.
pub const DEFAULT_PORT: u16 = 8083;

/// Everything `autoscaler run` is configured with.
#[derive(Debug, Clone, clap::Args)]
pub struct AutoscalerConfig {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub queue: QueueArgs,

    #[command(flatten)]
    pub policy: PolicyConfig,

    #[command(flatten)]
    pub workers: WorkerArgs,

    /// How often the policy is re-evaluated without a depth change (cooldown and stabilization
    /// are time-based).
    #[arg(long, env = "AUTOSCALER_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
}

/// Which program the autoscaler runs as a worker, and how it stops one.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Program to run as a worker [default: the `collector` binary beside the autoscaler's own,
    /// with the argument `run`].
    #[arg(long, env = "AUTOSCALER_COMMAND")]
    pub command: Option<PathBuf>,

    /// Argument for the worker command; repeat it, or give several separated by spaces
    /// (`--arg=--flag` for one starting with a dash).
    #[arg(
        long = "arg",
        env = "AUTOSCALER_ARGS",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,

    /// How long a stopped worker may drain after SIGTERM before it gets SIGKILL.
    #[arg(long, env = "AUTOSCALER_GRACE_PERIOD", default_value = "25s", value_parser = parse_duration)]
    pub grace_period: Duration,
}

impl AutoscalerConfig {
    /// Defaults for tests and embedding: one local etcd, `prefix`, HTTP on a free port, and
    /// `command` as the worker.
    pub fn local(endpoint: &str, prefix: &str, command: WorkerCommand) -> Self {
        AutoscalerConfig {
            common: CommonArgs::local(endpoint, prefix),
            queue: QueueArgs::default(),
            policy: PolicyConfig::default(),
            workers: WorkerArgs {
                command: Some(command.program),
                args: command.args,
                grace_period: Duration::from_secs(25),
            },
            interval: Duration::from_secs(1),
        }
    }

    /// The worker command: the configured one or the collector beside this executable, with the
    /// etcd and queue settings of this autoscaler in its environment, so that the workers consume
    /// the queue the autoscaler watches even when it was configured by flags.
    pub fn worker_command(&self) -> Result<WorkerCommand, AutoscalerError> {
        let base = match &self.workers.command {
            Some(program) => WorkerCommand::new(program.clone(), self.workers.args.clone()),
            None => {
                let executable =
                    std::env::current_exe().map_err(AutoscalerError::LocateExecutable)?;
                let mut command = default_worker_command(&executable);
                if !self.workers.args.is_empty() {
                    command.args = self.workers.args.clone();
                }
                command
            }
        };
        let common = &self.common;
        let mut command = base
            .with_env("ETCD_ENDPOINTS", common.etcd_endpoints.join(","))
            .with_env("TELEMETRY_PREFIX", common.prefix.clone())
            .with_env("ETCD_TIMEOUT", format_duration(common.etcd_timeout))
            .with_env(
                "LOG_FORMAT",
                match common.log_format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                },
            )
            .with_env("QUEUE_PARTITIONS", self.queue.partitions.to_string())
            .with_env("QUEUE_MAX_DEPTH", self.queue.max_depth.to_string())
            .with_env("QUEUE_LEASE_TTL", format_duration(self.queue.lease_ttl));
        let optional = [
            ("ETCD_USERNAME", common.etcd_username.clone()),
            ("ETCD_PASSWORD", common.etcd_password.clone()),
            ("ETCD_CA_FILE", path_text(&common.etcd_ca_file)),
            ("ETCD_CERT_FILE", path_text(&common.etcd_cert_file)),
            ("ETCD_KEY_FILE", path_text(&common.etcd_key_file)),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                command = command.with_env(key, value);
            }
        }
        Ok(command)
    }
}

fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

fn path_text(path: &Option<PathBuf>) -> Option<String> {
    path.as_ref().map(|p| p.display().to_string())
}

/// Runs the autoscaler until `shutdown` triggers, then stops every worker gracefully and returns
/// `Ok`. `on_bound` receives the HTTP port once it is bound (useful with port 0).
pub async fn run(
    config: AutoscalerConfig,
    shutdown: Shutdown,
    on_bound: impl FnOnce(u16) + Send + 'static,
) -> Result<(), AutoscalerError> {
    let policy =
        ScalingPolicy::new(config.policy.clone()).map_err(AutoscalerError::InvalidConfig)?;
    if config.interval.is_zero() {
        return Err(AutoscalerError::InvalidConfig(
            "--interval must be above zero".into(),
        ));
    }
    let command = config.worker_command()?;
    command.check()?;

    let mut registry = Registry::default();
    let metrics = AutoscalerMetrics::register(&mut registry);
    let readiness = Readiness::new(config.common.etcd_timeout);
    let router = ops_router(Arc::new(registry), readiness.clone());
    let port = config.common.port.unwrap_or(DEFAULT_PORT);
    // The server outlives the control loop so that /metrics shows the final drain.
    let server_stop = Shutdown::new();
    let server_shutdown = server_stop.clone();
    let mut server = tokio::spawn(serve(router, port, on_bound, async move {
        server_shutdown.wait().await
    }));

    tracing::info!(
        program = %command.program.display(),
        args = ?command.args,
        min = config.policy.min_replicas,
        max = config.policy.max_replicas,
        target = config.policy.target_per_replica,
        activation = config.policy.activation,
        "autoscaler starting"
    );
    let mut supervisor = Supervisor::new(command, config.workers.grace_period, metrics.clone());
    let result = tokio::select! {
        result = control(&config, policy, &mut supervisor, &metrics, &readiness, &shutdown) => result,
        result = &mut server => Err(AutoscalerError::Serve(match result {
            Ok(Ok(())) => "the HTTP server stopped".into(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        })),
    };
    tracing::info!(
        workers = supervisor.running() + supervisor.draining(),
        "stopping workers"
    );
    supervisor.shutdown().await;
    server_stop.trigger();
    if !server.is_finished() {
        let _ = server.await;
    }
    tracing::info!("autoscaler stopped");
    result
}

/// Connects, opens the queue, then decides and scales until shutdown.
async fn control(
    config: &AutoscalerConfig,
    mut policy: ScalingPolicy,
    supervisor: &mut Supervisor,
    metrics: &AutoscalerMetrics,
    readiness: &Readiness,
    shutdown: &Shutdown,
) -> Result<(), AutoscalerError> {
    let client = tokio::select! {
        client = config.common.connect_etcd() => {
            client.map_err(|e| AutoscalerError::ConnectEtcd(e.to_string()))?
        }
        _ = shutdown.wait() => return Ok(()),
    };
    readiness.set_client(client.clone());
    let queue_config = config.queue.queue_config(&config.common.prefix);
    let queue = tokio::select! {
        queue = Queue::open(client, queue_config) => queue.map_err(AutoscalerError::OpenQueue)?,
        _ = shutdown.wait() => return Ok(()),
    };
    // A request that does not answer within this is given up until the next wake-up, so that a
    // slow etcd never delays restarts or shutdown.
    let read_limit = config.common.etcd_timeout;
    let mut feed = open_feed(&queue, read_limit).await;
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut target = 0u32;
    let mut last: Option<Decision> = None;
    loop {
        let retry_at = supervisor.retry_at(target);
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            change = next_change(&mut feed) => {
                if let Err(e) = change {
                    tracing::warn!(error = %e, "depth watch broke; reopening it on the next tick");
                    feed = None;
                } else if let Some(Err(e)) = feed.as_mut().and_then(ChangeFeed::try_changed) {
                    tracing::warn!(error = %e, "depth watch broke; reopening it on the next tick");
                    feed = None;
                }
            }
            _ = tick.tick() => {
                if feed.is_none() {
                    feed = open_feed(&queue, read_limit).await;
                }
            }
            _ = supervisor.next_exit() => {}
            _ = sleep_until(retry_at) => {}
        }
        let depth = match tokio::time::timeout(read_limit, queue.depth_key_value()).await {
            Ok(Ok(depth)) => depth.unwrap_or(0),
            Ok(Err(e)) => {
                metrics.depth_read_errors.inc();
                tracing::warn!(error = %e, replicas = target, "cannot read the depth key; holding the replica count");
                supervisor.scale_to(target);
                continue;
            }
            Err(_) => {
                metrics.depth_read_errors.inc();
                tracing::warn!(timeout = ?read_limit, replicas = target, "depth key read timed out; holding the replica count");
                supervisor.scale_to(target);
                continue;
            }
        };
        let decision = policy.decide(Instant::now().into_std(), depth, target);
        metrics.queue_depth.set(metrics::gauge_value(depth));
        metrics.desired_replicas.set(i64::from(decision.desired));
        metrics.count_decision(target, decision.desired);
        log_decision(
            &decision,
            last.as_ref(),
            depth,
            target,
            supervisor.running(),
        );
        last = Some(decision);
        target = decision.desired;
        supervisor.scale_to(target);
    }
}

/// Logs a decision with its inputs: at info when it changes the count or its reason, else debug
/// (the loop decides on every depth change and tick).
fn log_decision(
    decision: &Decision,
    last: Option<&Decision>,
    depth: u64,
    current: u32,
    running: u32,
) {
    let news = decision.desired != current
        || last.is_none_or(|last| discriminant(&last.reason) != discriminant(&decision.reason));
    macro_rules! log {
        ($level:ident) => {
            tracing::$level!(
                depth,
                current,
                running,
                recommended = decision.recommended,
                desired = decision.desired,
                reason = %decision.reason,
                "scaling decision"
            )
        };
    }
    if news {
        log!(info);
    } else {
        log!(debug);
    }
}

async fn open_feed(queue: &Queue, limit: Duration) -> Option<ChangeFeed> {
    match tokio::time::timeout(limit, queue.depth_changes()).await {
        Ok(Ok(feed)) => Some(feed),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot watch the depth key; polling on the tick meanwhile");
            None
        }
        Err(_) => {
            tracing::warn!(timeout = ?limit, "watching the depth key timed out; polling on the tick meanwhile");
            None
        }
    }
}

async fn next_change(feed: &mut Option<ChangeFeed>) -> Result<(), QueueError> {
    match feed {
        Some(feed) => feed.changed().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        config: AutoscalerConfig,
    }

    fn parse(args: &[&str]) -> AutoscalerConfig {
        Cli::try_parse_from(std::iter::once("autoscaler").chain(args.iter().copied()))
            .unwrap()
            .config
    }

    #[test]
    fn options_default_to_the_documented_values() {
        let config = parse(&[]);
        assert_eq!(config.policy, PolicyConfig::default());
        assert_eq!(config.policy.min_replicas, 0);
        assert_eq!(config.policy.max_replicas, 10);
        assert_eq!(config.policy.target_per_replica, 100);
        assert_eq!(config.policy.activation, 0);
        assert_eq!(config.policy.scale_up_step, 4);
        assert_eq!(config.policy.scale_up_period, Duration::from_secs(15));
        assert_eq!(config.policy.stabilization, Duration::from_secs(30));
        assert_eq!(config.policy.cooldown, Duration::from_secs(60));
        assert_eq!(config.workers.command, None);
        assert!(config.workers.args.is_empty());
        assert_eq!(config.workers.grace_period, Duration::from_secs(25));
        assert_eq!(config.interval, Duration::from_secs(1));
    }

    #[test]
    fn worker_arguments_repeat_split_on_spaces_and_may_start_with_a_dash() {
        let config = parse(&[
            "--min=1",
            "--max",
            "3",
            "--cooldown",
            "5s",
            "--command",
            "/usr/bin/env",
            "--arg",
            "collector run",
            "--arg",
            "--for",
            "--arg=55s",
        ]);
        assert_eq!(
            (config.policy.min_replicas, config.policy.max_replicas),
            (1, 3)
        );
        assert_eq!(config.policy.cooldown, Duration::from_secs(5));
        assert_eq!(config.workers.command, Some(PathBuf::from("/usr/bin/env")));
        assert_eq!(config.workers.args, ["collector", "run", "--for", "55s"]);
    }

    #[test]
    fn workers_get_the_autoscalers_etcd_and_queue_settings() {
        let mut config = AutoscalerConfig::local(
            "http://127.0.0.1:2379",
            "/prod",
            WorkerCommand::new("/opt/collector", vec!["run".into()]),
        );
        config
            .common
            .etcd_endpoints
            .push("http://127.0.0.2:2379".into());
        config.common.etcd_username = Some("telemetry".into());
        config.queue.partitions = 32;
        let command = config.worker_command().unwrap();
        assert_eq!(command.program, PathBuf::from("/opt/collector"));
        assert_eq!(command.args, ["run"]);
        let env: std::collections::BTreeMap<&str, &str> = command
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let expected: std::collections::BTreeMap<&str, &str> = [
            (
                "ETCD_ENDPOINTS",
                "http://127.0.0.1:2379,http://127.0.0.2:2379",
            ),
            ("TELEMETRY_PREFIX", "/prod"),
            ("ETCD_TIMEOUT", "5s"),
            ("LOG_FORMAT", "text"),
            ("QUEUE_PARTITIONS", "32"),
            ("QUEUE_MAX_DEPTH", "100000"),
            ("QUEUE_LEASE_TTL", "10s"),
            ("ETCD_USERNAME", "telemetry"),
        ]
        .into_iter()
        .collect();
        assert_eq!(env, expected);
    }

    #[test]
    fn the_default_worker_is_the_collector_beside_this_executable() {
        let mut config = AutoscalerConfig::local(
            "http://127.0.0.1:2379",
            "/p",
            WorkerCommand::new("x", vec![]),
        );
        config.workers = WorkerArgs {
            command: None,
            args: Vec::new(),
            grace_period: Duration::from_secs(25),
        };
        let command = config.worker_command().unwrap();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(command.program, exe.with_file_name("collector"));
        assert_eq!(command.args, ["run"]);
    }
}
