//! The streamer function: streams a DCGM CSV onto the etcd telemetry queue in passes, stamping
//! each row with the time it is processed, as one of 0..10 elastic instances that share the CSV's
//! shards through etcd leases.
//!
//! * [`run`] is `streamer run`: health and metrics server, etcd connection, then [`Streamer`].
//! * [`validate::run_validate`] is `streamer validate`: a summary of the file, without etcd.
//!
//! Exactly once per pass: a shard's rows are published by fenced transactions that also advance
//! the shard's state in etcd (see [`shard`]), so a pass of a shard is never published twice, even
//! across crashes, shard moves and etcd restarts.

pub mod buffer;
pub mod cli;
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

use std::sync::Arc;
use std::time::Duration;

use function_runtime::{ops_router, serve, Readiness, Shutdown};
use prometheus_client::registry::Registry;
use telemetry_model::DcgmCsvReader;

pub use cli::{Cli, Command, OutputFormat, RunArgs, ValidateArgs};
pub use config::{StreamerConfig, DEFAULT_PORT, WORK_GROUP};
pub use error::StreamerError;
pub use metrics::StreamerMetrics;
pub use shard::{shard_for, ShardState, SHARDS};
pub use streamer::{RunReport, Streamer, SHUTDOWN_GRACE};

/// `streamer run`: checks the CSV, serves `/healthz` `/readyz` `/metrics` on `PORT` (default
/// 8082), connects to etcd (retrying until it answers) and streams until SIGTERM, the end of
/// `--for`, or `--passes` reached.
pub async fn run(args: RunArgs) -> Result<RunReport, StreamerError> {
    let config = args.streamer_config();
    check_csv(&config)?;
    let signal = Shutdown::on_signal();
    let stop = stop_after(&signal, args.run_for);

    let mut registry = Registry::default();
    let metrics = StreamerMetrics::register(&mut registry);
    let readiness = Readiness::new(Duration::from_secs(2));
    let router = ops_router(Arc::new(registry), readiness.clone());
    let port = args.common.port.unwrap_or(DEFAULT_PORT);
    let server_stop = Shutdown::new();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn({
        let server_stop = server_stop.clone();
        serve(
            router,
            port,
            move |bound| {
                let _ = bound_tx.send(bound);
            },
            async move { server_stop.wait().await },
        )
    });
    if bound_rx.await.is_err() {
        let reason = match server.await {
            Ok(Err(e)) => format!("{e:#}"),
            Ok(Ok(())) => "the server stopped at once".to_string(),
            Err(e) => e.to_string(),
        };
        return Err(StreamerError::ServeOps(reason));
    }

    let result = async {
        let client = tokio::select! {
            client = args.common.connect_etcd() => {
                client.map_err(|e| StreamerError::ConnectEtcd(format!("{e:#}")))?
            }
            _ = stop.wait() => return Ok(RunReport::default()),
        };
        readiness.set_client(client.clone());
        tracing::info!(
            member = %config.member_id,
            csv = %config.csv.display(),
            passes = ?config.passes,
            window = ?args.run_for,
            "streaming"
        );
        Streamer::new(client, config, metrics)
            .run(stop.clone())
            .await
    }
    .await;
    if signal.is_triggered() {
        tracing::info!("stopped on signal");
    } else if stop.is_triggered() {
        tracing::info!("streaming window ended");
    }
    server_stop.trigger();
    let _ = server.await;
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

/// A stop signal that triggers on `signal` or, with a window, once the window has passed.
pub fn stop_after(signal: &Shutdown, window: Option<Duration>) -> Shutdown {
    let stop = Shutdown::new();
    let trigger = stop.clone();
    let signal = signal.clone();
    tokio::spawn(async move {
        let window_end = async {
            match window {
                Some(window) => tokio::time::sleep(window).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signal.wait() => {}
            _ = window_end => {}
        }
        trigger.trigger();
    });
    stop
}

/// Fails early, with a clear message, on a CSV that cannot be opened or has no usable header.
fn check_csv(config: &StreamerConfig) -> Result<(), StreamerError> {
    DcgmCsvReader::open(&config.csv)
        .map(drop)
        .map_err(|source| StreamerError::OpenCsv {
            path: config.csv.clone(),
            source,
        })
}
