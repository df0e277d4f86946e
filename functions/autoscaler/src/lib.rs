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
//! while crashed workers are still replaced. The autoscaler writes nothing to etcd: it attaches
//! to the topic (retried on every tick until a producer or consumer has created it; the depth is
//! 0 meanwhile) and reads its depth key.

pub mod config;
pub mod error;
pub mod metrics;
pub mod policy;
pub mod supervisor;

use std::future::Future;
use std::mem::discriminant;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use etcd_queue::change_feed::ChangeFeed;
use etcd_queue::{Queue, QueueConfig, QueueError};
use function_runtime::{ops_router, HttpServer, Readiness, Shutdown};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::time::Instant;

pub use config::{Config, WorkerConfig};
pub use error::AutoscalerError;
pub use metrics::AutoscalerMetrics;
pub use policy::{Decision, PolicyConfig, Reason, ScalingPolicy};
pub use supervisor::{default_worker_command, Supervisor, WorkerCommand, WorkerExit, WorkerInfo};

/// Runs the autoscaler until `shutdown` resolves, serving `/healthz` `/readyz` `/metrics` on
/// `listener`; then stops every worker gracefully and returns `Ok`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
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
    let shutdown = Shutdown::when(shutdown);

    let mut registry = Registry::default();
    let metrics = AutoscalerMetrics::register(&mut registry);
    let readiness = Readiness::new(&config.etcd.prefix, config.etcd.timeout);
    // The server outlives the control loop so that /metrics shows the final drain.
    let mut server = HttpServer::spawn(listener, ops_router(Arc::new(registry), readiness.clone()));

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
        failed = server.failed() => Err(AutoscalerError::Serve(failed)),
    };
    tracing::info!(
        workers = supervisor.running() + supervisor.draining(),
        "stopping workers"
    );
    supervisor.shutdown().await;
    if let Err(e) = server.stop().await {
        tracing::warn!(error = %e, "the HTTP server failed");
    }
    tracing::info!("autoscaler stopped");
    result
}

/// What the autoscaler knows of the topic.
enum Topic {
    /// No producer or consumer has created it yet: nothing is pending.
    Absent,
    /// The last attempt to attach failed: the depth is unknown.
    Unreachable(String),
    Attached(Box<Queue>),
}

/// Connects, then decides and scales until shutdown.
async fn control(
    config: &Config,
    mut policy: ScalingPolicy,
    supervisor: &mut Supervisor,
    metrics: &AutoscalerMetrics,
    readiness: &Readiness,
    shutdown: &Shutdown,
) -> Result<(), AutoscalerError> {
    let client = tokio::select! {
        client = config.etcd.connect() => client.map_err(AutoscalerError::ConnectEtcd)?,
        _ = shutdown.wait() => return Ok(()),
    };
    readiness.set_client(client.clone());
    let queue_config = config.queue.queue_config(&config.etcd.prefix);
    // A request that does not answer within this is given up until the next wake-up, so that a
    // slow etcd never delays restarts or shutdown.
    let read_limit = config.etcd.timeout;
    let mut topic = Topic::Unreachable("not attached yet".into());
    let mut feed = None;
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
                if !matches!(topic, Topic::Attached(_)) {
                    topic = attach(&client, &queue_config, read_limit).await;
                }
                if let (None, Topic::Attached(queue)) = (&feed, &topic) {
                    feed = open_feed(queue, read_limit).await;
                }
            }
            _ = supervisor.next_exit() => {}
            _ = sleep_until(retry_at) => {}
        }
        let depth = match &topic {
            Topic::Attached(queue) => {
                match tokio::time::timeout(read_limit, queue.depth_key_value()).await {
                    Ok(Ok(depth)) => Ok(depth.unwrap_or(0)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {read_limit:?}")),
                }
            }
            Topic::Absent => Ok(0),
            Topic::Unreachable(reason) => Err(reason.clone()),
        };
        let depth = match depth {
            Ok(depth) => depth,
            Err(error) => {
                metrics.depth_read_errors.inc();
                tracing::warn!(%error, replicas = target, "cannot read the depth key; holding the replica count");
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

/// Attaches to the topic without writing anything.
async fn attach(client: &Client, config: &QueueConfig, limit: Duration) -> Topic {
    match tokio::time::timeout(limit, Queue::attach(client.clone(), config.clone())).await {
        Ok(Ok(Some(queue))) => {
            tracing::info!(
                partitions = queue.config().partitions,
                "attached to the topic"
            );
            Topic::Attached(Box::new(queue))
        }
        Ok(Ok(None)) => Topic::Absent,
        Ok(Err(e)) => Topic::Unreachable(format!("attaching to the topic failed: {e}")),
        Err(_) => Topic::Unreachable(format!("attaching to the topic timed out after {limit:?}")),
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
