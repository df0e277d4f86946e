//! The streamer function: streams a DCGM CSV onto the etcd telemetry queue in passes, stamping
//! each row with the time it is processed, as one of 0..10 elastic instances that share the CSV's
//! shards through etcd leases.
//!
//! * [`run`] is `streamer run`: the health and metrics server on the listener it is given, the
//!   etcd connection, then [`Streamer`], until the shutdown future resolves.
//! * [`validate::run_validate`] is `streamer validate`: a summary of the file, without etcd.
//!
//! Exactly once per pass: a shard's rows are published by fenced transactions that also advance
//! the shard's state in etcd (see [`shard`]), so a pass of a shard is never published twice, even
//! across crashes, shard moves and etcd restarts.

pub mod buffer;
pub mod clock;
pub mod config;
mod encode;
pub mod error;
pub mod metrics;
mod packing;
mod pass;
mod publish;
pub mod reader;
mod retry;
pub mod shard;
pub mod streamer;
pub mod validate;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use function_runtime::{ops_router, HttpServer, Readiness, Shutdown};
use prometheus_client::registry::Registry;
use telemetry_model::DcgmCsvReader;
use tokio::net::TcpListener;

pub use config::{Config, StreamerConfig, WORK_GROUP};
pub use error::StreamerError;
pub use metrics::StreamerMetrics;
pub use shard::{shard_for, ShardState, SHARDS};
pub use streamer::{RunReport, Streamer, SHUTDOWN_GRACE};

/// How long `/readyz` waits for etcd to answer.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// `streamer run`: checks the CSV, serves `/healthz` `/readyz` `/metrics` on `listener`, connects
/// to etcd (retrying until it answers) and streams until `shutdown` resolves, the end of
/// `config.run_for`, or `config.passes` reached; then releases its shards.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunReport, StreamerError> {
    let engine = config.streamer_config();
    check_csv(&engine.csv)?;
    let shutdown = Shutdown::when(shutdown);
    let stop = stop_after(&shutdown, config.run_for);

    let mut registry = Registry::default();
    let metrics = StreamerMetrics::register(&mut registry);
    let readiness = Readiness::new(&config.etcd.prefix, READINESS_TIMEOUT);
    let server = HttpServer::spawn(listener, ops_router(Arc::new(registry), readiness.clone()));

    let result = async {
        let client = tokio::select! {
            client = config.etcd.connect() => client.map_err(StreamerError::ConnectEtcd)?,
            _ = stop.wait() => return Ok(RunReport::default()),
        };
        readiness.set_client(client.clone());
        tracing::info!(
            member = %engine.member_id,
            csv = %engine.csv.display(),
            passes = ?engine.passes,
            window = ?config.run_for,
            "streaming"
        );
        Streamer::new(client, engine, metrics)
            .with_readiness(readiness.clone())
            .run(stop.clone())
            .await
    }
    .await;
    if shutdown.is_triggered() {
        tracing::info!("stopped on shutdown");
    } else if stop.is_triggered() {
        tracing::info!("streaming window ended");
    }
    if let Err(e) = server.stop().await {
        tracing::warn!(error = %e, "the health and metrics server failed");
    }
    if let Ok(report) = &result {
        tracing::info!(
            samples = report.samples_published,
            transactions = report.transactions,
            shard_passes = report.shard_passes,
            "streamer done"
        );
    }
    result
}

/// A stop signal that triggers on `shutdown` or, with a window, once the window has passed.
fn stop_after(shutdown: &Shutdown, window: Option<Duration>) -> Shutdown {
    let shutdown = shutdown.clone();
    Shutdown::when(async move {
        let window_end = async {
            match window {
                Some(window) => tokio::time::sleep(window).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.wait() => {}
            _ = window_end => {}
        }
    })
}

/// Fails early, with a clear message, on a CSV that cannot be opened or has no usable header.
fn check_csv(csv: &Path) -> Result<(), StreamerError> {
    DcgmCsvReader::open(csv)
        .map(drop)
        .map_err(|source| StreamerError::OpenCsv {
            path: csv.to_owned(),
            source,
        })
}
