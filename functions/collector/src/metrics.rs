//! The collector's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use telemetry_model::{SampleBatch, TimestampMicros};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: u32,
}

/// Why samples were rejected.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabel {
    /// `future`: stamped further ahead of the clock than `TELEMETRY_MAX_FUTURE`.
    pub reason: &'static str,
}

/// Steps of every decade of the ingest lag's buckets, in tenths.
const LAG_STEPS_TENTHS: [u32; 8] = [10, 15, 20, 30, 40, 50, 60, 80];

/// Upper bounds of `collector_ingest_lag_seconds`: 1, 1.5, 2, 3, 4, 5, 6 and 8 in every decade
/// from 1 ms to 80 s. Neighbouring bounds differ by at most 1.5x, so a quantile interpolated
/// within a bucket is close at the tens of milliseconds a steady pipeline takes (doubling
/// buckets put 33 ms and 63 ms in one); 50 ms is a bound, so the share of samples queryable
/// within it is read off exactly.
pub fn ingest_lag_buckets() -> Vec<f64> {
    (-3..=1)
        .flat_map(|decade: i32| {
            // Exact integers on both sides, so each bound is the double nearest its decimal.
            let scale = 10f64.powi((decade - 1).abs());
            LAG_STEPS_TENTHS.iter().map(move |&tenths| {
                if decade >= 1 {
                    f64::from(tenths) * scale
                } else {
                    f64::from(tenths) / scale
                }
            })
        })
        .collect()
}

impl CollectorMetrics {
    /// Records, for each sample of `batches` just committed, how long ago it was stamped.
    pub fn observe_ingest_lag<'a>(&self, batches: impl IntoIterator<Item = &'a SampleBatch>) {
        let now = TimestampMicros::now().0;
        for batch in batches {
            for row in &batch.rows {
                let lag_us = now.saturating_sub(row.timestamp.0).max(0);
                self.ingest_lag.observe(lag_us as f64 / 1e6);
            }
        }
    }

    /// Counts `samples` rejected for being stamped beyond the future bound.
    pub fn rejected_future(&self, samples: usize) {
        if samples > 0 {
            self.samples_rejected
                .get_or_create(&RejectionLabel { reason: "future" })
                .inc_by(samples as u64);
        }
    }
}

/// Counters and gauges the collector exports on `/metrics`.
#[derive(Debug)]
pub struct CollectorMetrics {
    pub batches_persisted: Counter,
    pub samples_persisted: Counter,
    pub samples_expired: Counter,
    pub samples_rejected: Family<RejectionLabel, Counter>,
    pub dead_letters: Counter,
    pub commits: Counter,
    pub commit_conflicts: Counter,
    pub ownership_changes: Counter,
    pub owned_partitions: Gauge,
    pub lag: Family<PartitionLabel, Gauge>,
    pub commit_latency: Histogram,
    /// Commit time minus sample time, for every sample committed from the queue.
    pub ingest_lag: Histogram,
    pub http_events: Counter,
    pub http_samples: Counter,
    pub nospace_waits: Counter,
    pub nospace_waiting: Gauge,
}

impl CollectorMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = CollectorMetrics {
            batches_persisted: Counter::default(),
            samples_persisted: Counter::default(),
            samples_expired: Counter::default(),
            samples_rejected: Family::default(),
            dead_letters: Counter::default(),
            commits: Counter::default(),
            commit_conflicts: Counter::default(),
            ownership_changes: Counter::default(),
            owned_partitions: Gauge::default(),
            lag: Family::default(),
            commit_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            ingest_lag: Histogram::new(ingest_lag_buckets()),
            http_events: Counter::default(),
            http_samples: Counter::default(),
            nospace_waits: Counter::default(),
            nospace_waiting: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("collector");
        r.register(
            "batches_persisted",
            "Queue messages (CloudEvent batches) persisted",
            metrics.batches_persisted.clone(),
        );
        r.register(
            "samples_persisted",
            "Samples persisted from the queue",
            metrics.samples_persisted.clone(),
        );
        r.register(
            "samples_expired",
            "Samples dropped because they were older than the retention on arrival",
            metrics.samples_expired.clone(),
        );
        r.register(
            "samples_rejected",
            "Samples rejected, never stored, by reason (future: stamped beyond the future bound)",
            metrics.samples_rejected.clone(),
        );
        r.register(
            "dead_letters",
            "Messages moved to the dead-letter prefix",
            metrics.dead_letters.clone(),
        );
        r.register("commits", "Fenced commits", metrics.commits.clone());
        r.register(
            "commit_conflicts",
            "Commits retried or abandoned after a fence failed",
            metrics.commit_conflicts.clone(),
        );
        r.register(
            "ownership_changes",
            "Partitions acquired, released or lost since start",
            metrics.ownership_changes.clone(),
        );
        r.register(
            "owned_partitions",
            "Partitions owned now",
            metrics.owned_partitions.clone(),
        );
        r.register(
            "partition_lag",
            "Pending messages per owned partition",
            metrics.lag.clone(),
        );
        r.register(
            "commit_latency_seconds",
            "Time to persist and commit one delivery",
            metrics.commit_latency.clone(),
        );
        r.register(
            "ingest_lag_seconds",
            "Commit time minus the sample's timestamp, for every sample committed from the queue",
            metrics.ingest_lag.clone(),
        );
        r.register(
            "http_events",
            "CloudEvents received over HTTP",
            metrics.http_events.clone(),
        );
        r.register(
            "http_samples",
            "Samples stored from CloudEvents received over HTTP",
            metrics.http_samples.clone(),
        );
        r.register(
            "nospace_waits",
            "Writes etcd refused for lack of space (NOSPACE alarm), each retried",
            metrics.nospace_waits.clone(),
        );
        r.register(
            "nospace_waiting",
            "1 while etcd refuses this collector's writes for lack of space",
            metrics.nospace_waiting.clone(),
        );
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_lag_buckets_step_through_each_decade_from_1_ms_to_80_s() {
        let bounds: Vec<String> = ingest_lag_buckets().iter().map(f64::to_string).collect();
        assert_eq!(bounds.len(), 40);
        assert_eq!(
            bounds[..16],
            [
                "0.001", "0.0015", "0.002", "0.003", "0.004", "0.005", "0.006", "0.008", "0.01",
                "0.015", "0.02", "0.03", "0.04", "0.05", "0.06", "0.08"
            ]
        );
        assert_eq!(
            bounds[32..],
            ["10", "15", "20", "30", "40", "50", "60", "80"]
        );
        let buckets = ingest_lag_buckets();
        assert!(buckets
            .windows(2)
            .all(|w| w[1] > w[0] && w[1] / w[0] <= 1.5));
    }
}
