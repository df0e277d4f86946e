//! Queue and consumer settings, plain data built by the caller.

use std::time::Duration;

/// Where the topic lives and how it behaves. Every field has a documented default.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// Root of every key (`TELEMETRY_PREFIX`), e.g. `/gpu-telemetry`.
    pub prefix: String,
    /// Topic name.
    pub topic: String,
    /// The group that consumes (and deletes) the topic's messages; the depth key counts its backlog.
    pub group: String,
    /// Partition count, fixed when the topic is created.
    pub partitions: u32,
    /// Largest payload accepted by `publish`.
    pub max_payload_bytes: usize,
    /// Depth at which producers wait (backpressure).
    pub max_depth: u64,
    /// Payload bytes pending at which producers wait (backpressure), so that the queue's backlog
    /// stays well inside etcd's quota whatever the size of its messages.
    pub max_pending_bytes: u64,
    /// How long a producer waits for the depth to fall below `max_depth` before failing.
    pub backpressure_timeout: Duration,
    /// How long transient etcd failures are retried before an operation fails.
    pub retry_budget: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            prefix: "/gpu-telemetry".into(),
            topic: "telemetry".into(),
            group: "collectors".into(),
            partitions: 16,
            max_payload_bytes: 1024 * 1024,
            max_depth: 100_000,
            max_pending_bytes: 1024 * 1024 * 1024,
            backpressure_timeout: Duration::from_secs(30),
            retry_budget: Duration::from_secs(60),
        }
    }
}

/// How one member of the consumer group behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerConfig {
    /// Unique id of this member (e.g. pod name plus a random suffix).
    pub member_id: String,
    /// TTL of the member's lease: how long a crashed member holds its partitions.
    pub lease_ttl: Duration,
    /// Most messages handed out in one delivery.
    pub max_messages: usize,
    /// Most payload bytes handed out in one delivery (at least one message is always delivered).
    pub max_bytes: usize,
    /// How often the depth key is rewritten while idle.
    pub depth_interval: Duration,
}

impl ConsumerConfig {
    pub fn new(member_id: impl Into<String>) -> Self {
        ConsumerConfig {
            member_id: member_id.into(),
            lease_ttl: Duration::from_secs(10),
            max_messages: 64,
            max_bytes: 1024 * 1024,
            depth_interval: Duration::from_secs(1),
        }
    }
}
