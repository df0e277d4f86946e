//! The collector's settings as plain data, built by `main` from flags and environment variables
//! or directly by tests.

use std::time::Duration;

use etcd_queue::{ConsumerConfig, QueueConfig};
use function_runtime::{member_id_for, EtcdConfig, QueueSettings, StoreSettings};
use telemetry_store::StoreConfig;

use crate::ingest::IngestSettings;

/// Everything `collector run` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// etcd and the key prefix.
    pub etcd: EtcdConfig,
    /// The telemetry topic's settings; `lease_ttl` is how long a crashed collector holds its
    /// partitions.
    pub queue: QueueSettings,
    /// Retention of the samples it stores.
    pub store: StoreSettings,
    /// This collector's id in the consumer group (unique per process).
    pub member_id: String,
    /// Most queue messages persisted per commit.
    pub max_messages: usize,
    /// Most partitions whose deliveries are read at once and committed in one transaction (1:
    /// one partition per commit).
    pub partitions_per_commit: usize,
    /// Time allowed, after shutdown, to finish the delivery in flight and leave the group.
    pub grace_period: Duration,
    /// How `POST /` is guarded: its body limit and optional bearer token.
    pub ingest: IngestSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            etcd: EtcdConfig::default(),
            queue: QueueSettings::default(),
            store: StoreSettings::default(),
            member_id: member_id_for("", "collector"),
            max_messages: ConsumerConfig::new("").max_messages,
            partitions_per_commit: 1,
            grace_period: Duration::from_secs(20),
            ingest: IngestSettings::default(),
        }
    }
}

impl Config {
    pub fn queue_config(&self) -> QueueConfig {
        self.queue.queue_config(&self.etcd.prefix)
    }

    pub fn consumer_config(&self) -> ConsumerConfig {
        ConsumerConfig {
            lease_ttl: self.queue.lease_ttl,
            max_messages: self.max_messages,
            ..ConsumerConfig::new(self.member_id.clone())
        }
    }

    pub fn store_config(&self) -> StoreConfig {
        self.store.store_config(&self.etcd.prefix)
    }
}
