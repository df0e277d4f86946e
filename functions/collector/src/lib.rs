//! The collector function: joins the queue's consumer group `collectors`, persists each delivery
//! into the telemetry store and commits it in ONE fenced etcd transaction (exactly once), and
//! accepts CloudEvent batches over HTTP (`POST /`) as a plain function, stored idempotently by event
//! id. On shutdown it finishes the delivery in flight, releases its partitions and returns.
//!
//! [`run`] serves `/healthz`, `/readyz`, `/metrics` and `POST /` from the start: while etcd is
//! unreachable the process is healthy (a liveness probe leaves it alone), `/readyz` and `POST /`
//! answer 503, and the collector waits for etcd before it joins the group.

mod config;
mod consume;
mod error;
mod ingest;
mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use etcd_queue::{is_transient, Backoff, Consumer, Queue, QueueError};
use function_runtime::{ops_router, HttpServer, NoSpaceWait, Readiness, Shutdown};
use prometheus_client::registry::Registry;
use telemetry_store::TelemetryStore;
use tokio::net::TcpListener;

pub use config::Config;
pub use consume::{DeliveryProcessor, Processed};
pub use error::CollectorError;
pub use ingest::{IngestResponse, IngestSettings};
pub use metrics::CollectorMetrics;

/// How long `/readyz` waits for etcd to answer.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Totals of one run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    pub messages: u64,
    pub samples: u64,
    pub dead_letters: u64,
}

/// Serves HTTP on `listener`, waits for etcd, joins the group and consumes until `shutdown`
/// resolves; then drains within the grace period, leaves the group and stops serving.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunSummary, CollectorError> {
    let shutdown = Shutdown::when(shutdown);
    let mut registry = Registry::default();
    let metrics = Arc::new(CollectorMetrics::register(&mut registry));
    let readiness = Readiness::new(&config.etcd.prefix, READINESS_TIMEOUT);
    let nospace = NoSpaceWait::new(
        readiness.clone(),
        metrics.nospace_waits.clone(),
        metrics.nospace_waiting.clone(),
    );
    let store = ingest::StoreSlot::default();
    let router = ops_router(Arc::new(registry), readiness.clone()).merge(ingest::ingest_router(
        store.clone(),
        metrics.clone(),
        &config.ingest,
    ));
    let server = HttpServer::spawn(listener, router);

    let result = async {
        let Some((client, consumer)) = join(&config, &nospace, &shutdown).await? else {
            return Ok(RunSummary::default());
        };
        let telemetry = TelemetryStore::new(client.clone(), config.store_config());
        let _ = store.set(telemetry.clone());
        readiness.set_client(client);
        let processor = DeliveryProcessor::new(telemetry, metrics.clone());
        let worker = Worker {
            consumer,
            partitions_per_commit: config.partitions_per_commit,
            processor,
            metrics: &metrics,
            nospace: &nospace,
            shutdown: &shutdown,
        };
        Ok(worker.consume(config.grace_period).await)
    }
    .await;
    if let Err(e) = server.stop().await {
        tracing::warn!(error = %e, "the HTTP server failed");
    }
    result
}

/// Connects to etcd, opens the queue and joins the consumer group, waiting with backoff while
/// etcd is unreachable or out of space; `None` if `shutdown` came first.
async fn join(
    config: &Config,
    nospace: &NoSpaceWait,
    shutdown: &Shutdown,
) -> Result<Option<(Client, Consumer)>, CollectorError> {
    let client = tokio::select! {
        client = config.etcd.connect() => client.map_err(CollectorError::ConnectEtcd)?,
        _ = shutdown.wait() => return Ok(None),
    };
    let mut backoff = fault_backoff();
    loop {
        let attempt = async {
            let queue = Queue::open(client.clone(), config.queue_config()).await?;
            queue.consumer(config.consumer_config()).await
        };
        let joined = tokio::select! {
            joined = attempt => joined,
            _ = shutdown.wait() => return Ok(None),
        };
        match joined {
            Ok(consumer) => {
                nospace.resumed();
                return Ok(Some((client, consumer)));
            }
            Err(e) if e.is_no_space() => nospace.refused("join the consumer group", &e),
            Err(e) if etcd_unavailable(&e) => {
                tracing::warn!(error = %e, "etcd unavailable; waiting to join the consumer group");
            }
            Err(e) => return Err(CollectorError::JoinGroup(e)),
        }
        if !sleep_unless_shutdown(backoff.next_delay(), shutdown).await {
            return Ok(None);
        }
    }
}

fn etcd_unavailable(error: &QueueError) -> bool {
    match error {
        QueueError::Unavailable { .. } => true,
        QueueError::Etcd { source, .. } => is_transient(source),
        _ => false,
    }
}

/// The wait between attempts while etcd is unreachable or out of space.
fn fault_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

/// Sleeps for `duration` unless `shutdown` comes first; false if it did.
async fn sleep_unless_shutdown(duration: Duration, shutdown: &Shutdown) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => true,
        _ = shutdown.wait() => false,
    }
}

/// A collector that joined the group: its consumer, what persists deliveries, and what it reports.
struct Worker<'a> {
    consumer: Consumer,
    /// Most partitions whose deliveries one poll hands out and one commit may hold.
    partitions_per_commit: usize,
    processor: DeliveryProcessor,
    metrics: &'a CollectorMetrics,
    nospace: &'a NoSpaceWait,
    shutdown: &'a Shutdown,
}

impl Worker<'_> {
    /// Consumes until shutdown triggers, then leaves the group within `grace_period`. While etcd
    /// refuses writes for lack of space, the collector keeps its partitions and tries again with
    /// backoff; it resumes by itself once space returns.
    async fn consume(mut self, grace_period: Duration) -> RunSummary {
        let mut summary = RunSummary::default();
        let mut backoff = fault_backoff();
        // Whether the last poll was refused for lack of space (acquiring a partition writes).
        let mut poll_refused = false;
        tracing::info!(
            member = self.consumer.member_id(),
            "collector joined the consumer group"
        );
        while !self.shutdown.is_triggered() {
            let polled = tokio::select! {
                biased;
                _ = self.shutdown.wait() => break,
                polled = self.consumer.poll_many(consume::POLL_WAIT, self.partitions_per_commit) => polled,
            };
            if polled.is_ok() && std::mem::take(&mut poll_refused) {
                self.nospace.resumed();
            }
            let deliveries = match polled {
                Ok(deliveries) if deliveries.is_empty() => {
                    publish_ownership(&self.consumer, self.metrics);
                    continue;
                }
                Ok(deliveries) => deliveries,
                Err(e) if e.is_no_space() => {
                    poll_refused = true;
                    self.nospace.refused("rebalance partitions", &e);
                    sleep_unless_shutdown(backoff.next_delay(), self.shutdown).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "polling failed; retrying");
                    sleep_unless_shutdown(Duration::from_millis(200), self.shutdown).await;
                    continue;
                }
            };
            // Deliveries in flight are always finished, even if the shutdown signal arrives
            // meanwhile.
            match self
                .processor
                .process_many(&mut self.consumer, deliveries)
                .await
            {
                Ok(done) => {
                    if done.messages > 0 {
                        self.nospace.resumed();
                        backoff = fault_backoff();
                    }
                    summary.messages += done.messages as u64;
                    summary.samples += done.samples as u64;
                    summary.dead_letters += done.dead_letters as u64;
                }
                Err(e) if e.is_no_space() => {
                    self.nospace.refused("persist a delivery", &e);
                    sleep_unless_shutdown(backoff.next_delay(), self.shutdown).await;
                }
                Err(e) => tracing::warn!(error = %e,
                    "delivery not committed; it is delivered again unless its commit landed"),
            }
            publish_ownership(&self.consumer, self.metrics);
        }
        tracing::info!(
            grace = ?grace_period,
            messages = summary.messages,
            samples = summary.samples,
            "shutting down: releasing partitions"
        );
        match tokio::time::timeout(grace_period, self.consumer.leave()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "leaving the group failed; partitions free up when the lease expires"),
            Err(_) => tracing::warn!("grace period over before the group was left; partitions free up when the lease expires"),
        }
        summary
    }
}

fn publish_ownership(consumer: &Consumer, metrics: &CollectorMetrics) {
    let lag = consumer.lag();
    metrics.owned_partitions.set(lag.len() as i64);
    let changes = consumer.stats().ownership_changes;
    metrics
        .ownership_changes
        .inc_by(changes.saturating_sub(metrics.ownership_changes.get()));
    metrics.lag.clear();
    for (partition, pending) in lag {
        metrics
            .lag
            .get_or_create(&metrics::PartitionLabel { partition })
            .set(pending as i64);
    }
}
