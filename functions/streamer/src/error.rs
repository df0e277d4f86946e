//! The streamer's error type, one variant per operation that can fail.

use std::path::PathBuf;

use etcd_queue::QueueError;
use function_runtime::RuntimeError;
use telemetry_model::CsvError;

/// What stopped the streamer. Transient etcd failures never surface here: they are retried.
#[derive(Debug, thiserror::Error)]
pub enum StreamerError {
    #[error("invalid streamer configuration: {0}")]
    InvalidConfig(String),

    #[error("unusable CSV {}: {source}", path.display())]
    OpenCsv {
        path: PathBuf,
        #[source]
        source: CsvError,
    },

    #[error("reading CSV {} failed mid-pass: {reason}", path.display())]
    ReadCsv { path: PathBuf, reason: String },

    #[error("queue operation {operation} failed: {source}")]
    Queue {
        operation: &'static str,
        #[source]
        source: QueueError,
    },

    #[error("shard state at {key} is unreadable: {reason}")]
    CorruptShardState { key: String, reason: String },

    #[error("connecting to etcd failed: {0}")]
    ConnectEtcd(#[source] RuntimeError),

    #[error("the CSV reader stopped unexpectedly: {0}")]
    ReaderTask(String),
}

impl StreamerError {
    pub(crate) fn queue(operation: &'static str) -> impl FnOnce(QueueError) -> StreamerError {
        move |source| StreamerError::Queue { operation, source }
    }
}
