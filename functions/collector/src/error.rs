//! The collector's error type, one variant per operation that can fail.

use etcd_queue::QueueError;
use function_runtime::RuntimeError;
use telemetry_store::StoreError;

/// What can stop the collector or fail one delivery. etcd being unreachable is not among them: the
/// collector waits for it.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("connect to etcd: {0}")]
    ConnectEtcd(#[source] RuntimeError),

    #[error("open the queue and join the consumer group: {0}")]
    JoinGroup(#[source] QueueError),

    #[error("commit a delivery: {0}")]
    Commit(#[from] QueueError),

    #[error("persist a delivery: {0}")]
    Persist(#[from] StoreError),

    #[error("commit for partition {partition} kept conflicting; the delivery was handed back")]
    CommitConflict { partition: u32 },
}

impl CollectorError {
    /// Whether etcd refused the work because it is out of space (its NOSPACE alarm): a state the
    /// collector waits in, keeping its partitions.
    pub fn is_no_space(&self) -> bool {
        match self {
            CollectorError::JoinGroup(e) | CollectorError::Commit(e) => e.is_no_space(),
            CollectorError::Persist(e) => e.is_no_space(),
            CollectorError::ConnectEtcd(_) | CollectorError::CommitConflict { .. } => false,
        }
    }
}
