//! The collector function: joins the queue's consumer group `collectors`, persists each delivery
//! into the telemetry store and commits it in ONE fenced etcd transaction (exactly once), and
//! accepts CloudEvent batches over HTTP (`POST /`) as a plain function, stored idempotently by event
//! id. On shutdown it finishes the delivery in flight, releases its partitions and exits.

mod consume;
mod ingest;
mod metrics;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use etcd_queue::{ConsumerConfig, Queue, QueueConfig, QueueError};
use function_runtime::Shutdown;
use telemetry_store::{StoreConfig, StoreError, TelemetryStore};

pub use consume::{DeliveryProcessor, Processed};
pub use ingest::{ingest_router, IngestResponse};
pub use metrics::CollectorMetrics;

/// Everything the collector needs, as plain data.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub queue: QueueConfig,
    pub consumer: ConsumerConfig,
    pub store: StoreConfig,
    /// Time allowed, after a shutdown signal, to finish the delivery in flight and leave the group.
    pub grace_period: Duration,
}

/// What can stop the collector.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("queue operation failed: {0}")]
    Queue(#[from] QueueError),
    #[error("store operation failed: {0}")]
    Store(StoreError),
    #[error("commit for partition {partition} kept conflicting; the delivery was handed back")]
    Conflict { partition: u32 },
}

/// Totals of one run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    pub messages: u64,
    pub samples: u64,
    pub dead_letters: u64,
}

/// Consumes until `shutdown` triggers, then drains within the grace period and leaves the group.
pub async fn run(
    client: Client,
    config: CollectorConfig,
    metrics: Arc<CollectorMetrics>,
    shutdown: Shutdown,
) -> Result<RunSummary, CollectorError> {
    let queue = Queue::open(client.clone(), config.queue.clone()).await?;
    let store = TelemetryStore::new(client, config.store.clone());
    let mut consumer = queue.consumer(config.consumer.clone()).await?;
    let mut processor = DeliveryProcessor::new(store, metrics.clone());
    let mut summary = RunSummary::default();
    tracing::info!(
        member = consumer.member_id(),
        "collector joined the consumer group"
    );
    while !shutdown.is_triggered() {
        let delivery = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            polled = consumer.poll(consume::POLL_WAIT) => polled,
        };
        let delivery = match delivery {
            Ok(Some(d)) => d,
            Ok(None) => {
                publish_ownership(&consumer, &metrics);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "polling failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // A delivery in flight is always finished, even if the shutdown signal arrives meanwhile.
        match processor.process(&mut consumer, delivery).await {
            Ok(done) => {
                summary.messages += done.messages as u64;
                summary.samples += done.samples as u64;
                summary.dead_letters += done.dead_letters as u64;
            }
            Err(e) => {
                tracing::warn!(error = %e, "delivery not persisted; it will be delivered again")
            }
        }
        publish_ownership(&consumer, &metrics);
    }
    tracing::info!(
        grace = ?config.grace_period,
        messages = summary.messages,
        samples = summary.samples,
        "shutting down: releasing partitions"
    );
    match tokio::time::timeout(config.grace_period, consumer.leave()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "leaving the group failed; partitions free up when the lease expires"),
        Err(_) => tracing::warn!("grace period over before the group was left; partitions free up when the lease expires"),
    }
    Ok(summary)
}

fn publish_ownership(consumer: &etcd_queue::Consumer, metrics: &CollectorMetrics) {
    let lag = consumer.lag();
    metrics.owned_partitions.set(lag.len() as i64);
    metrics
        .ownership_changes
        .set(consumer.stats().ownership_changes as i64);
    metrics.lag.clear();
    for (partition, pending) in lag {
        metrics
            .lag
            .get_or_create(&metrics::PartitionLabel { partition })
            .set(pending as i64);
    }
}
