//! The streamer's settings as plain data, built by `main` from flags and environment variables
//! (see [`crate::cli`]) or directly by tests.

use std::path::PathBuf;
use std::time::Duration;

use etcd_queue::QueueConfig;

/// Default port of the health and metrics server.
pub const DEFAULT_PORT: u16 = 8082;

/// Name of the streamers' work group under the key prefix.
pub const WORK_GROUP: &str = "streamers";

/// How one streamer behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamerConfig {
    /// The DCGM CSV to stream.
    pub csv: PathBuf,
    /// Pause between this streamer's passes over its shards.
    pub interval: Duration,
    /// Stop once every shard has completed this many passes (counted in etcd by the whole group).
    pub passes: Option<u64>,
    /// Most samples in one batch (one queue message, one CloudEvent).
    pub batch_size: usize,
    /// Samples per second this streamer publishes at most; 0 = as fast as possible.
    pub rate: u64,
    /// Publish transactions in flight at once (each on its own shard).
    pub in_flight: usize,
    /// This streamer's id in the work group (unique per process).
    pub member_id: String,
    /// TTL of the member's lease: how long a crashed streamer holds its shards.
    pub lease_ttl: Duration,
    /// The queue the samples go to.
    pub queue: QueueConfig,
}

impl StreamerConfig {
    /// Defaults for streaming `csv` to the queue described by `queue`.
    pub fn new(csv: impl Into<PathBuf>, queue: QueueConfig) -> Self {
        StreamerConfig {
            csv: csv.into(),
            interval: Duration::from_secs(1),
            passes: None,
            batch_size: 500,
            rate: 0,
            in_flight: 4,
            member_id: member_id(),
            lease_ttl: Duration::from_secs(10),
            queue,
        }
    }
}

/// `<hostname>-<8 random hex digits>` (the host name is the pod name in Kubernetes), or
/// `streamer-<hex>` when there is no usable host name.
pub fn member_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default();
    member_id_for(&host)
}

/// The member id for `host` with a fresh random suffix.
pub fn member_id_for(host: &str) -> String {
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(100)
        .collect();
    let host = host.trim_matches('.');
    let host = if host.is_empty() { "streamer" } else { host };
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_valid_and_unique() {
        let a = member_id_for("gpu-telemetry-streamer-29000001-abcde");
        let b = member_id_for("gpu-telemetry-streamer-29000001-abcde");
        assert_ne!(a, b);
        assert!(a.starts_with("gpu-telemetry-streamer-29000001-abcde-"));
        assert_eq!(a.len(), "gpu-telemetry-streamer-29000001-abcde-".len() + 8);
        for host in ["", "  ", "..", "héllo/wörld\n", &"h".repeat(300)] {
            let id = member_id_for(host);
            etcd_queue::keys::validate_member_id(&id).unwrap();
        }
        assert!(member_id_for("").starts_with("streamer-"));
        assert!(member_id_for("..").starts_with("streamer-"));
        assert!(member_id_for("host.example\n").starts_with("host.example-"));
    }
}
