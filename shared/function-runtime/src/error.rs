//! The runtime's error type, one variant per operation that can fail.

use std::path::PathBuf;

/// What went wrong while setting a function up: reading its etcd credentials, binding or serving
/// its HTTP port. etcd being unreachable is not an error here: connecting waits for it.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file named by the etcd settings (password, CA, client certificate or key) is unreadable.
    #[error("read {variable} {}: {source}", path.display())]
    ReadFile {
        variable: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The etcd settings contradict themselves or are incomplete.
    #[error("invalid etcd settings: {0}")]
    InvalidEtcdSettings(String),

    #[error("bind port {port}: {source}")]
    BindPort {
        port: u16,
        #[source]
        source: std::io::Error,
    },

    #[error("serve HTTP: {0}")]
    ServeHttp(#[source] std::io::Error),

    #[error("the HTTP server stopped unexpectedly: {0}")]
    ServerStopped(String),
}
