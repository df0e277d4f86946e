//! The runtime's error type, one variant per operation that can fail.

use std::path::PathBuf;

/// What went wrong while setting a function up: reading its etcd credentials, binding or serving
/// its HTTP port. etcd being unreachable is not an error here: connecting waits for it.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("read {variable} {}: {source}", path.display())]
    ReadTlsFile {
        variable: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

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
