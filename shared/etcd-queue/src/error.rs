//! The queue's error type, one variant per operation that can fail.

use std::time::Duration;

/// What went wrong in a queue operation.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("invalid queue configuration: {0}")]
    InvalidConfig(String),

    #[error("topic {topic} has {stored} partitions in etcd but this client is configured with {configured}")]
    PartitionMismatch {
        topic: String,
        stored: u32,
        configured: u32,
    },

    #[error("topic metadata at {key} is unreadable: {reason}")]
    CorruptMetadata { key: String, reason: String },

    #[error("message of {size} bytes exceeds the maximum payload of {max} bytes")]
    PayloadTooLarge { size: usize, max: usize },

    #[error("publish of {messages} messages ({bytes} bytes) does not fit in one transaction")]
    TransactionTooLarge { messages: usize, bytes: usize },

    #[error("queue is full: {depth} messages of {pending_bytes} bytes are pending (at most {max} messages or {max_bytes} bytes) and it did not drain within {waited:?}")]
    QueueFull {
        depth: u64,
        max: u64,
        pending_bytes: u64,
        max_bytes: u64,
        waited: Duration,
    },

    #[error("the caller's fence condition no longer holds; nothing was written")]
    FenceFailed,

    #[error("partition {partition} is no longer owned by this member; nothing was committed")]
    LostOwnership { partition: u32 },

    #[error("delivery for partition {partition} is stale: committed offset is {actual}, delivery started after {expected}")]
    StaleDelivery {
        partition: u32,
        expected: u64,
        actual: u64,
    },

    #[error("the member's lease expired; it must rejoin")]
    LeaseExpired,

    #[error("watch broke: {0}")]
    WatchBroken(String),

    #[error("a delivery for partition {partition} is still in flight; commit or abandon it first")]
    DeliveryInFlight { partition: u32 },

    #[error("etcd request failed during {operation}: {source}")]
    Etcd {
        operation: &'static str,
        #[source]
        source: etcd_client::Error,
    },

    #[error("etcd stayed unavailable during {operation} for {waited:?}: {last_error}")]
    Unavailable {
        operation: &'static str,
        waited: Duration,
        last_error: String,
    },
}

impl QueueError {
    /// Whether etcd refused the operation because it is out of space
    /// ([`crate::retry::is_no_space`]).
    pub fn is_no_space(&self) -> bool {
        matches!(self, QueueError::Etcd { source, .. } if crate::retry::is_no_space(source))
    }

    pub(crate) fn etcd(operation: &'static str) -> impl FnOnce(etcd_client::Error) -> QueueError {
        move |source| QueueError::Etcd { operation, source }
    }
}
