//! The store's error type, one variant per operation that can fail.

/// What went wrong in a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd request failed during {operation}: {source}")]
    Etcd {
        operation: &'static str,
        #[source]
        source: etcd_client::Error,
    },

    #[error(transparent)]
    Queue(#[from] etcd_queue::QueueError),

    #[error("stored record at {key} is unreadable: {reason}")]
    CorruptRecord { key: String, reason: String },

    #[error("stored chunk at {key} is unreadable: {source}")]
    CorruptChunk {
        key: String,
        #[source]
        source: crate::chunk::ChunkError,
    },

    #[error("invalid cursor {0:?}")]
    InvalidCursor(String),

    #[error("invalid query: {0}")]
    InvalidQuery(String),
}

impl StoreError {
    /// Whether the error is due to the data written, not to etcd's state, so that writing the
    /// same samples again fails again: stored data they extend is unreadable, or etcd refused
    /// the request for what it asks ([`etcd_queue::is_request_refused`]).
    pub fn is_caused_by_data(&self) -> bool {
        match self {
            StoreError::CorruptRecord { .. } | StoreError::CorruptChunk { .. } => true,
            StoreError::Etcd { source, .. } => etcd_queue::is_request_refused(source),
            StoreError::Queue(etcd_queue::QueueError::Etcd { source, .. }) => {
                etcd_queue::is_request_refused(source)
            }
            _ => false,
        }
    }

    /// Whether etcd refused the operation because it is out of space
    /// ([`etcd_queue::is_no_space`]).
    pub fn is_no_space(&self) -> bool {
        match self {
            StoreError::Etcd { source, .. } => etcd_queue::is_no_space(source),
            StoreError::Queue(queue) => queue.is_no_space(),
            _ => false,
        }
    }

    /// Wraps an etcd error of `operation` (for `map_err`).
    pub(crate) fn etcd(operation: &'static str) -> impl FnOnce(etcd_client::Error) -> StoreError {
        move |source| StoreError::Etcd { operation, source }
    }
}
