//! The autoscaler's error type, one variant per operation that can fail.

use std::path::PathBuf;

use function_runtime::RuntimeError;

/// What stopped the autoscaler (or a worker from starting).
#[derive(Debug, thiserror::Error)]
pub enum AutoscalerError {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    #[error("locate the autoscaler's own executable (to find the collector beside it): {0}")]
    LocateExecutable(#[source] std::io::Error),

    #[error("worker command {program} not found; {hint}")]
    FindCommand { program: PathBuf, hint: String },

    #[error("connect to etcd: {0}")]
    ConnectEtcd(#[source] RuntimeError),

    #[error("pick a free port for a worker: {0}")]
    PickPort(#[source] std::io::Error),

    #[error("start worker {program}: {source}")]
    SpawnWorker {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("serve HTTP: {0}")]
    Serve(#[source] RuntimeError),
}
