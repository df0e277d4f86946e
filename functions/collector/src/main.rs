//! `collector run`: parses the configuration and runs the collector (see the library).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use collector::{ingest_router, CollectorConfig, CollectorMetrics};
use etcd_queue::ConsumerConfig;
use function_runtime::{
    init_tracing, ops_router, parse_duration, serve, CommonArgs, QueueArgs, Readiness, Shutdown,
};
use prometheus_client::registry::Registry;
use telemetry_store::{StoreConfig, TelemetryStore};

#[derive(Debug, Parser)]
#[command(
    name = "collector",
    version,
    about = "Consumes telemetry from the etcd queue and persists it exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join the consumer group and persist telemetry until SIGTERM.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    queue: QueueArgs,
    /// Time to finish the delivery in flight and leave the group after SIGTERM.
    #[arg(long, env = "COLLECTOR_GRACE_PERIOD", default_value = "20s", value_parser = parse_duration)]
    grace_period: Duration,
    /// How long samples are kept.
    #[arg(long, env = "STORE_RETENTION", default_value = "24h", value_parser = parse_duration)]
    retention: Duration,
    /// Retention bucket: data expires bucket by bucket.
    #[arg(long, env = "STORE_BUCKET", default_value = "1h", value_parser = parse_duration)]
    bucket: Duration,
    /// Most queue messages persisted per commit.
    #[arg(long, env = "COLLECTOR_MAX_MESSAGES", default_value_t = 64)]
    max_messages: usize,
    /// Member id in the consumer group (default: host name plus a random suffix).
    #[arg(long, env = "COLLECTOR_ID")]
    id: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Command::Run(args) = Cli::parse().command;
    init_tracing(args.common.log_format);
    let shutdown = Shutdown::on_signal();
    let member_id = args.id.clone().unwrap_or_else(default_member_id);
    let mut registry = Registry::default();
    let metrics = Arc::new(CollectorMetrics::register(&mut registry));
    let readiness = Readiness::new(Duration::from_secs(2));

    // Serve health and metrics before etcd is reachable: readiness reports it.
    let port = args.common.port.unwrap_or(8081);
    let server_shutdown = shutdown.clone();
    let client_slot = Arc::new(tokio::sync::OnceCell::new());
    let client = args.common.connect_etcd().await?;
    readiness.set_client(client.clone());
    let _ = client_slot.set(client.clone());
    let store_config = StoreConfig {
        prefix: args.common.prefix.clone(),
        retention: args.retention,
        bucket: args.bucket,
        ..StoreConfig::default()
    };
    let router = ops_router(Arc::new(registry), readiness).merge(ingest_router(
        TelemetryStore::new(client.clone(), store_config.clone()),
        metrics.clone(),
    ));
    let server = tokio::spawn(async move {
        serve(
            router,
            port,
            |_| {},
            async move { server_shutdown.wait().await },
        )
        .await
    });
    let config = CollectorConfig {
        queue: args.queue.queue_config(&args.common.prefix),
        consumer: ConsumerConfig {
            lease_ttl: args.queue.lease_ttl,
            max_messages: args.max_messages,
            ..ConsumerConfig::new(member_id)
        },
        store: store_config,
        grace_period: args.grace_period,
    };
    let summary = collector::run(client, config, metrics, shutdown.clone())
        .await
        .context("collector stopped")?;
    shutdown.trigger();
    let _ = server.await;
    tracing::info!(?summary, "collector stopped");
    Ok(())
}

fn default_member_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "collector".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}
