//! What every function binary shares: the common configuration (etcd endpoints and credentials,
//! key prefix, queue settings, port, log format), tracing setup, connecting to etcd with retry,
//! the `/healthz` `/readyz` `/metrics` server, and the shutdown signal.
//!
//! A function's `main` parses its clap config (which flattens [`CommonArgs`]), calls
//! [`init_tracing`], and hands plain config values to its library `run`.

mod config;
mod ops;
mod shutdown;

pub use config::{parse_duration, CommonArgs, LogFormat, QueueArgs};
pub use ops::{ops_router, serve, Readiness};
pub use shutdown::{shutdown_signal, Shutdown};

/// Sets up `tracing` from `RUST_LOG` (default `info`), as JSON lines or human-readable text.
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
