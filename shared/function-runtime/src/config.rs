//! The settings several functions share, as plain data: the etcd connection, the queue and store
//! settings, the log format, each function's default port, and how a member id is made. Functions
//! embed these in their own `Config`; [`crate::args`] holds the flags that fill them.

use std::path::PathBuf;
use std::time::Duration;

use etcd_queue::{ConsumerConfig, QueueConfig};
use telemetry_store::StoreConfig;

/// The port each function serves HTTP on when `PORT` is not set.
pub mod ports {
    /// The gateway: API, OpenAPI document, Swagger UI, health, metrics.
    pub const GATEWAY: u16 = 8080;
    /// The collector: `POST /` (CloudEvents), health, metrics.
    pub const COLLECTOR: u16 = 8081;
    /// The streamer: health, metrics.
    pub const STREAMER: u16 = 8082;
    /// The autoscaler: health, metrics.
    pub const AUTOSCALER: u16 = 8083;
}

/// Where etcd is and how to reach it, and the key prefix of the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// Root of every key this deployment reads or writes; several deployments can share one etcd.
    pub prefix: String,
    /// Timeout of one etcd request.
    pub timeout: Duration,
    /// User name for etcd authentication, with `password` or `password_file`.
    pub username: Option<String>,
    /// The user's password.
    pub password: Option<String>,
    /// A file holding the user's password (one trailing newline is ignored), so that it appears
    /// in no process listing or environment; exclusive with `password`.
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify etcd's TLS certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; `key_file` must be set with it.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM); `cert_file` must be set with it.
    pub key_file: Option<PathBuf>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: QueueConfig::default().prefix,
            timeout: Duration::from_secs(5),
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

/// Queue settings shared by the functions that publish, consume or watch the telemetry topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Partitions of the telemetry topic (fixed when the topic is created).
    pub partitions: u32,
    /// Backlog (messages) at which producers wait, then fail.
    pub max_depth: u64,
    /// Backlog (payload bytes) at which producers wait, then fail.
    pub max_bytes: u64,
    /// Lease TTL of group members: how long a crashed member holds its work.
    pub lease_ttl: Duration,
    /// How long transient etcd failures of one queue operation are retried before it fails.
    pub retry_budget: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        let queue = QueueConfig::default();
        QueueSettings {
            partitions: queue.partitions,
            max_depth: queue.max_depth,
            max_bytes: queue.max_pending_bytes,
            lease_ttl: ConsumerConfig::new("").lease_ttl,
            retry_budget: queue.retry_budget,
        }
    }
}

impl QueueSettings {
    /// The queue configuration for the telemetry topic under `prefix`.
    pub fn queue_config(&self, prefix: &str) -> QueueConfig {
        QueueConfig {
            prefix: prefix.to_string(),
            partitions: self.partitions,
            max_depth: self.max_depth,
            retry_budget: self.retry_budget,
            max_pending_bytes: self.max_bytes,
            ..QueueConfig::default()
        }
    }
}

/// Telemetry store settings shared by the functions that write or read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSettings {
    /// How long samples are kept.
    pub retention: Duration,
    /// Retention bucket: data expires bucket by bucket; readers must use the writers' bucket.
    pub bucket: Duration,
    /// How far ahead of this host's clock a sample may be stamped; later ones are rejected.
    pub max_future: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        let store = StoreConfig::default();
        StoreSettings {
            retention: store.retention,
            bucket: store.bucket,
            max_future: store.max_future,
        }
    }
}

impl StoreSettings {
    /// The store configuration under `prefix`.
    pub fn store_config(&self, prefix: &str) -> StoreConfig {
        StoreConfig {
            prefix: prefix.to_string(),
            retention: self.retention,
            bucket: self.bucket,
            max_future: self.max_future,
            ..StoreConfig::default()
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The name `LOG_FORMAT` takes for this format.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// A member id for a work group: `<host name>-<8 random hex digits>` (the host name is the pod
/// name in Kubernetes), or `<fallback>-<hex>` when there is no usable host name.
pub fn member_id(fallback: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default();
    member_id_for(&host, fallback)
}

/// The member id for `host` with a fresh random suffix: only the characters a member id may hold
/// are kept, and `fallback` stands in for a host name with none of them.
pub fn member_id_for(host: &str, fallback: &str) -> String {
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(100)
        .collect();
    let host = host.trim_matches('.');
    let host = if host.is_empty() { fallback } else { host };
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_valid_and_unique() {
        let a = member_id_for("gpu-telemetry-streamer-29000001-abcde", "streamer");
        let b = member_id_for("gpu-telemetry-streamer-29000001-abcde", "streamer");
        assert_ne!(a, b);
        assert!(a.starts_with("gpu-telemetry-streamer-29000001-abcde-"));
        assert_eq!(a.len(), "gpu-telemetry-streamer-29000001-abcde-".len() + 8);
        for host in ["", "  ", "..", "héllo/wörld\n", &"h".repeat(300)] {
            let id = member_id_for(host, "streamer");
            etcd_queue::keys::validate_member_id(&id).unwrap();
        }
        assert!(member_id_for("", "streamer").starts_with("streamer-"));
        assert!(member_id_for("..", "streamer").starts_with("streamer-"));
        assert!(member_id_for("host.example\n", "streamer").starts_with("host.example-"));
        assert!(member_id_for("", "collector").starts_with("collector-"));
    }

    #[test]
    fn shared_settings_become_the_libraries_configs() {
        let queue = QueueSettings {
            partitions: 32,
            ..QueueSettings::default()
        }
        .queue_config("/p");
        assert_eq!((queue.prefix.as_str(), queue.partitions), ("/p", 32));
        assert_eq!(queue.max_depth, QueueConfig::default().max_depth);
        assert_eq!(
            queue.max_pending_bytes,
            QueueConfig::default().max_pending_bytes
        );
        let store = StoreSettings {
            bucket: Duration::from_secs(60),
            ..StoreSettings::default()
        }
        .store_config("/p");
        assert_eq!(store.prefix, "/p");
        assert_eq!(store.bucket, Duration::from_secs(60));
        assert_eq!(store.retention, StoreConfig::default().retention);
    }
}
