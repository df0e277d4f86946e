//! The gateway's settings as plain data: the HTTP server's limits, the etcd connection, key
//! prefix and read timeout, the queue and store settings (to read the queue status and the
//! store) and the PromQL engine's limits. Built by `main` from flags and environment variables, or directly by tests.

use std::time::Duration;

use function_runtime::{EtcdConfig, QueueSettings, StoreSettings};
use promql_engine::EngineConfig;

/// Everything `gateway run` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Limits of the HTTP layer.
    pub http: HttpSettings,
    /// etcd and the key prefix.
    pub etcd: EtcdConfig,
    /// Longest time one etcd read may take before the request is answered with 503; also the
    /// readiness probe's limit.
    pub etcd_read_timeout: Duration,
    /// The telemetry topic's settings; the stored partition count wins when it differs.
    pub queue: QueueSettings,
    /// The store's settings; the bucket must be the collectors' (reads look one bucket back).
    pub store: StoreSettings,
    /// Most buckets one aggregated query may compute per metric (Prometheus allows 11,000
    /// points per series); a query over more is answered 400 with the step that would fit.
    pub max_points_per_series: usize,
    /// The Prometheus API's PromQL engine: query timeout, lookback, series and sample limits.
    pub promql: EngineConfig,
}

/// The Prometheus API's default query timeout: below the default request timeout, so a slow
/// query gets Prometheus' `timeout` error rather than the request timeout's problem document.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(9);

impl Default for Config {
    fn default() -> Self {
        Config {
            http: HttpSettings::default(),
            etcd: EtcdConfig::default(),
            etcd_read_timeout: Duration::from_secs(2),
            queue: QueueSettings::default(),
            store: StoreSettings::default(),
            max_points_per_series: 11_000,
            promql: EngineConfig {
                timeout: DEFAULT_QUERY_TIMEOUT,
                ..EngineConfig::default()
            },
        }
    }
}

/// Limits and policies of the HTTP layer, independent of etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Longest time one API request may take before it is answered with 503.
    pub request_timeout: Duration,
    /// Largest request body accepted, in bytes (413 above).
    pub body_limit: usize,
    /// Origins allowed by CORS (`*` for any). Empty: no CORS headers at all (browsers then refuse
    /// cross-origin reads).
    pub cors_origins: Vec<String>,
    /// Most API requests answered at once (a streamed body counts until it is sent); more are
    /// answered 503 with `Retry-After` at once instead of queueing.
    pub max_concurrency: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            request_timeout: Duration::from_secs(10),
            body_limit: 64 * 1024,
            cors_origins: Vec::new(),
            max_concurrency: 16,
        }
    }
}
