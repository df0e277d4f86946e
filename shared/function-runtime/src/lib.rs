//! What every function shares: the settings several of them take (etcd connection and key
//! prefix, queue and store settings, log format, default ports, member ids) as plain configs
//! ([`EtcdConfig`], [`QueueSettings`], [`StoreSettings`]) with the flags that fill them
//! ([`args`]); connecting to etcd with retry; tracing setup; the HTTP listener ([`bind_http`],
//! IPv6 and IPv4) and server; the `/healthz` `/readyz` `/metrics` endpoints and the faults
//! readiness reports (waiting on etcd's NOSPACE alarm: [`NoSpaceWait`]); problem documents; and
//! the shutdown signal.
//!
//! A function's `main` parses its `cli.rs` (which flattens the [`args`] structs), calls
//! [`init_tracing`], binds its port with [`bind_http`], and hands its library's plain `Config`,
//! the listener and [`shutdown_signal`] to the library's `run`.

pub mod args;
mod config;
mod error;
mod etcd;
mod http;
mod nospace;
mod ops;
mod problem;
mod shutdown;

pub use args::{parse_duration, DurationArg};
pub use config::{
    member_id, member_id_for, ports, EtcdConfig, LogFormat, QueueSettings, StoreSettings,
};
pub use error::RuntimeError;
pub use http::{bind_http, serve_http, HttpServer};
pub use nospace::{NoSpaceWait, NO_SPACE_REASON};
pub use ops::{ops_router, Readiness};
pub use problem::{Problem, PROBLEM_CONTENT_TYPE};
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
