//! The streamer's settings as plain data: [`Config`], what `streamer run` is configured with
//! (built by `main` from flags and environment variables, or directly by tests), and
//! [`StreamerConfig`], what the streaming engine needs of it.

use std::path::PathBuf;
use std::time::Duration;

use etcd_queue::QueueConfig;
use function_runtime::{member_id_for, EtcdConfig, QueueSettings};
use telemetry_model::DataEncoding;

/// Name of the streamers' work group under the key prefix.
pub const WORK_GROUP: &str = "streamers";

/// Everything `streamer run` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// etcd and the key prefix.
    pub etcd: EtcdConfig,
    /// The telemetry topic's settings; `lease_ttl` is how long a crashed streamer holds its shards.
    pub queue: QueueSettings,
    /// The DCGM CSV to stream.
    pub csv: PathBuf,
    /// Pause between this streamer's passes over its shards.
    pub interval: Duration,
    /// Stop once every shard has completed this many passes (counted in etcd by the whole group).
    pub passes: Option<u64>,
    /// Stop after this wall-clock window (the CronJob mode).
    pub run_for: Option<Duration>,
    /// Most samples in one batch (one queue message, one CloudEvent).
    pub batch_size: usize,
    /// Samples per second this streamer publishes at most; 0 = as fast as possible.
    pub rate: u64,
    /// Publish transactions in flight at once (each on its own shard).
    pub in_flight: usize,
    /// This streamer's id in the work group (unique per process).
    pub member_id: String,
    /// A shard state whose last stamp is further ahead of the clock than this is not followed:
    /// the streamer stamps from its clock again (the collector rejects samples that far ahead).
    pub max_future: Duration,
    /// How events carry their batch: columnar binary (the default) or JSON.
    pub encoding: DataEncoding,
    /// A CSV no larger than this is parsed once and its rows replayed on later passes; larger
    /// files are read from disk on every pass. 0 always reads from disk.
    pub parse_once_bytes: u64,
    /// Longest a buffered row waits before it is published (when its buffer has not filled).
    pub linger: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let engine = StreamerConfig::new(PathBuf::new(), QueueConfig::default());
        Config {
            etcd: EtcdConfig::default(),
            queue: QueueSettings::default(),
            csv: engine.csv,
            interval: engine.interval,
            passes: engine.passes,
            run_for: None,
            batch_size: engine.batch_size,
            rate: engine.rate,
            in_flight: engine.in_flight,
            member_id: engine.member_id,
            max_future: engine.max_future,
            encoding: engine.encoding,
            parse_once_bytes: engine.parse_once_bytes,
            linger: engine.linger,
        }
    }
}

impl Config {
    /// The streaming engine's settings.
    pub fn streamer_config(&self) -> StreamerConfig {
        StreamerConfig {
            csv: self.csv.clone(),
            interval: self.interval,
            passes: self.passes,
            batch_size: self.batch_size,
            rate: self.rate,
            in_flight: self.in_flight,
            member_id: self.member_id.clone(),
            lease_ttl: self.queue.lease_ttl,
            max_future: self.max_future,
            encoding: self.encoding,
            parse_once_bytes: self.parse_once_bytes,
            linger: self.linger,
            queue: self.queue.queue_config(&self.etcd.prefix),
        }
    }
}

/// How one streamer streams, once connected.
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
    /// How far ahead of the clock a stamp (its own, or a shard state's) may be and still be
    /// followed.
    pub max_future: Duration,
    /// How events carry their batch.
    pub encoding: DataEncoding,
    /// A CSV no larger than this is parsed once and replayed from memory.
    pub parse_once_bytes: u64,
    /// Longest a buffered row waits before it is published.
    pub linger: Duration,
    /// The queue the samples go to.
    pub queue: QueueConfig,
}

impl StreamerConfig {
    /// Defaults for streaming `csv` to the queue described by `queue`, as a member with a fresh
    /// random id.
    pub fn new(csv: impl Into<PathBuf>, queue: QueueConfig) -> Self {
        StreamerConfig {
            csv: csv.into(),
            interval: Duration::from_secs(1),
            passes: None,
            batch_size: 500,
            rate: 0,
            in_flight: 4,
            member_id: member_id_for("", "streamer"),
            lease_ttl: QueueSettings::default().lease_ttl,
            max_future: telemetry_model::DEFAULT_MAX_FUTURE,
            encoding: DataEncoding::default(),
            // The real 1.1 MB file takes about 4 MB parsed.
            parse_once_bytes: 64 * 1024 * 1024,
            // Well under the 50 ms a sample may take to become queryable; at full speed buffers
            // fill (or the pass ends) long before.
            linger: Duration::from_millis(20),
            queue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_gets_the_prefix_and_queue_settings_of_the_config() {
        let config = Config {
            etcd: EtcdConfig {
                prefix: "/p".into(),
                ..EtcdConfig::default()
            },
            queue: QueueSettings {
                partitions: 8,
                lease_ttl: Duration::from_secs(2),
                ..QueueSettings::default()
            },
            csv: "data.csv".into(),
            member_id: "s-1".into(),
            ..Config::default()
        };
        let engine = config.streamer_config();
        assert_eq!(
            engine,
            StreamerConfig {
                member_id: "s-1".into(),
                lease_ttl: Duration::from_secs(2),
                ..StreamerConfig::new(
                    "data.csv",
                    QueueConfig {
                        prefix: "/p".into(),
                        partitions: 8,
                        ..QueueConfig::default()
                    }
                )
            }
        );
        assert!(Config::default().member_id.starts_with("streamer-"));
    }
}
