//! The autoscaler's Prometheus metrics: replicas running and desired, the depth it saw, restarts,
//! forced kills and decisions.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Which way a decision moved the replica count (the `change` label of `autoscaler_decisions`).
pub type ChangeLabel = [(&'static str, &'static str); 1];

/// Handles on every metric; cheap to clone (each is shared).
#[derive(Debug, Clone, Default)]
pub struct AutoscalerMetrics {
    pub replicas: Gauge,
    pub draining_replicas: Gauge,
    pub desired_replicas: Gauge,
    pub queue_depth: Gauge,
    pub restarts: Counter,
    pub forced_kills: Counter,
    pub spawn_failures: Counter,
    pub depth_read_errors: Counter,
    pub decisions: Family<ChangeLabel, Counter>,
}

impl AutoscalerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = AutoscalerMetrics::default();
        registry.register(
            "autoscaler_replicas",
            "Worker processes running (not counting those draining after SIGTERM)",
            metrics.replicas.clone(),
        );
        registry.register(
            "autoscaler_draining_replicas",
            "Worker processes sent SIGTERM that have not exited yet",
            metrics.draining_replicas.clone(),
        );
        registry.register(
            "autoscaler_desired_replicas",
            "Replica count chosen by the last decision",
            metrics.desired_replicas.clone(),
        );
        registry.register(
            "autoscaler_queue_depth",
            "Queue depth (the depth key) seen by the last decision",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "autoscaler_restarts",
            "Worker processes that exited unexpectedly and were replaced",
            metrics.restarts.clone(),
        );
        registry.register(
            "autoscaler_forced_kills",
            "Worker processes killed with SIGKILL after the grace period",
            metrics.forced_kills.clone(),
        );
        registry.register(
            "autoscaler_spawn_failures",
            "Worker processes that could not be started",
            metrics.spawn_failures.clone(),
        );
        registry.register(
            "autoscaler_depth_read_errors",
            "Failed or timed-out reads of the depth key (the replica count is then held)",
            metrics.depth_read_errors.clone(),
        );
        registry.register(
            "autoscaler_decisions",
            "Scaling decisions by change: up, down or none",
            metrics.decisions.clone(),
        );
        metrics
    }

    pub fn count_decision(&self, current: u32, desired: u32) {
        let change = match desired.cmp(&current) {
            std::cmp::Ordering::Greater => "up",
            std::cmp::Ordering::Less => "down",
            std::cmp::Ordering::Equal => "none",
        };
        self.decisions.get_or_create(&[("change", change)]).inc();
    }
}

/// A count as a gauge value.
pub(crate) fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
