//! The streamer's Prometheus metrics, served on `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Counters and gauges of one streamer process. Cheap to clone (the metrics are shared handles).
#[derive(Debug, Clone)]
pub struct StreamerMetrics {
    /// CSV data rows read (every pass reads the whole file).
    pub rows_read: Counter,
    /// Samples published to the queue.
    pub samples_published: Counter,
    /// Bad rows skipped (counted on this process's first pass over the file).
    pub bad_rows: Counter,
    /// DCGM blank-sentinel rows skipped (counted on this process's first pass over the file).
    pub blank_rows: Counter,
    /// Batches (CloudEvents, queue messages) published.
    pub batches_published: Counter,
    /// Payload bytes of the events published (what the queue carries per sample).
    pub bytes_published: Counter,
    /// Publish transactions committed.
    pub transactions: Counter,
    /// Passes over a shard completed by this process.
    pub shard_passes: Counter,
    /// Publishes refused because the shard moved to another streamer.
    pub fence_failures: Counter,
    /// Publishes retried after a transient etcd failure or a full queue.
    pub publish_retries: Counter,
    /// Time to commit one publish transaction (seconds).
    pub publish_latency: Histogram,
    /// CSV shards owned now.
    pub owned_shards: Gauge,
    /// Writes etcd refused because it is out of space (its NOSPACE alarm); each is retried.
    pub nospace_waits: Counter,
    /// 1 while etcd refuses this streamer's writes for lack of space, else 0.
    pub nospace_waiting: Gauge,
}

impl Default for StreamerMetrics {
    fn default() -> Self {
        StreamerMetrics {
            rows_read: Counter::default(),
            samples_published: Counter::default(),
            bad_rows: Counter::default(),
            blank_rows: Counter::default(),
            batches_published: Counter::default(),
            bytes_published: Counter::default(),
            transactions: Counter::default(),
            shard_passes: Counter::default(),
            fence_failures: Counter::default(),
            publish_retries: Counter::default(),
            // 0.5 ms .. ~8 s.
            publish_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
            owned_shards: Gauge::default(),
            nospace_waits: Counter::default(),
            nospace_waiting: Gauge::default(),
        }
    }
}

impl StreamerMetrics {
    /// New metrics registered in `registry` under the `streamer_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = StreamerMetrics::default();
        registry.register(
            "streamer_rows_read",
            "CSV data rows read",
            m.rows_read.clone(),
        );
        registry.register(
            "streamer_samples_published",
            "Samples published to the queue",
            m.samples_published.clone(),
        );
        registry.register(
            "streamer_bad_rows",
            "Bad CSV rows skipped (counted on the first pass)",
            m.bad_rows.clone(),
        );
        registry.register(
            "streamer_blank_rows",
            "DCGM blank-sentinel rows skipped (counted on the first pass)",
            m.blank_rows.clone(),
        );
        registry.register(
            "streamer_batches_published",
            "Sample batches (queue messages) published",
            m.batches_published.clone(),
        );
        registry.register(
            "streamer_bytes_published",
            "Payload bytes of the events published to the queue",
            m.bytes_published.clone(),
        );
        registry.register(
            "streamer_transactions",
            "Publish transactions committed",
            m.transactions.clone(),
        );
        registry.register(
            "streamer_shard_passes",
            "Passes over a CSV shard completed",
            m.shard_passes.clone(),
        );
        registry.register(
            "streamer_fence_failures",
            "Publishes refused because the shard moved to another streamer",
            m.fence_failures.clone(),
        );
        registry.register(
            "streamer_publish_retries",
            "Publishes retried after a transient etcd failure or a full queue",
            m.publish_retries.clone(),
        );
        registry.register(
            "streamer_publish_latency_seconds",
            "Time to commit one publish transaction",
            m.publish_latency.clone(),
        );
        registry.register(
            "streamer_owned_shards",
            "CSV shards owned now",
            m.owned_shards.clone(),
        );
        registry.register(
            "streamer_nospace_waits",
            "Writes etcd refused for lack of space (NOSPACE alarm), each retried",
            m.nospace_waits.clone(),
        );
        registry.register(
            "streamer_nospace_waiting",
            "1 while etcd refuses this streamer's writes for lack of space",
            m.nospace_waiting.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_with_their_names() {
        let mut registry = Registry::default();
        let metrics = StreamerMetrics::register(&mut registry);
        metrics.samples_published.inc_by(42);
        metrics.owned_shards.set(7);
        metrics.publish_latency.observe(0.002);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "streamer_samples_published_total 42",
            "streamer_owned_shards 7",
            "streamer_publish_latency_seconds_count 1",
            "streamer_rows_read_total 0",
            "streamer_bad_rows_total 0",
            "streamer_batches_published_total 0",
            "streamer_nospace_waits_total 0",
            "streamer_nospace_waiting 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
