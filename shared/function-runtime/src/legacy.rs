//! The flags functions flattened before [`crate::args`]; kept while the functions move to plain
//! configs, as a thin layer over the new pieces.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use etcd_client::Client;
use etcd_queue::QueueConfig;

use crate::args::parse_duration;
use crate::config::{EtcdConfig, LogFormat};
use crate::http::{bind_http, serve_http};

/// Options common to every function.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// etcd client URLs, comma separated.
    #[arg(
        long,
        env = "ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,

    /// Root of every key this deployment writes; several deployments can share one etcd.
    #[arg(long, env = "TELEMETRY_PREFIX", default_value = "/gpu-telemetry")]
    pub prefix: String,

    /// Port of the HTTP server (health, readiness, metrics; the API for the gateway).
    #[arg(long, env = "PORT")]
    pub port: Option<u16>,

    /// Log format: `text` or `json` (filter with RUST_LOG).
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Timeout of one etcd request.
    #[arg(long, env = "ETCD_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub etcd_timeout: Duration,

    /// etcd user name (password from ETCD_PASSWORD).
    #[arg(long, env = "ETCD_USERNAME")]
    pub etcd_username: Option<String>,

    #[arg(long, env = "ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,

    /// CA certificate (PEM) to verify etcd's TLS certificate.
    #[arg(long, env = "ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS, with ETCD_KEY_FILE.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub etcd_cert_file: Option<PathBuf>,

    #[arg(long, env = "ETCD_KEY_FILE")]
    pub etcd_key_file: Option<PathBuf>,
}

impl CommonArgs {
    /// Defaults for tests and embedding: one local etcd, default prefix.
    pub fn local(endpoint: &str, prefix: &str) -> Self {
        CommonArgs {
            etcd_endpoints: vec![endpoint.to_string()],
            prefix: prefix.to_string(),
            port: Some(0),
            log_format: LogFormat::Text,
            etcd_timeout: Duration::from_secs(5),
            etcd_username: None,
            etcd_password: None,
            etcd_ca_file: None,
            etcd_cert_file: None,
            etcd_key_file: None,
        }
    }

    /// The plain etcd settings of these flags.
    pub fn etcd_config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.prefix.clone(),
            timeout: self.etcd_timeout,
            username: self.etcd_username.clone(),
            password: self.etcd_password.clone(),
            ca_file: self.etcd_ca_file.clone(),
            cert_file: self.etcd_cert_file.clone(),
            key_file: self.etcd_key_file.clone(),
        }
    }

    /// Connects to etcd, retrying with backoff until it answers.
    pub async fn connect_etcd(&self) -> anyhow::Result<Client> {
        Ok(self.etcd_config().connect().await?)
    }
}

/// Queue settings shared by the functions that publish or consume.
#[derive(Debug, Clone, clap::Args)]
pub struct QueueArgs {
    /// Partitions of the telemetry topic (fixed when the topic is created).
    #[arg(long, env = "QUEUE_PARTITIONS", default_value_t = 16)]
    pub partitions: u32,

    /// Backlog (messages) at which producers wait, then fail.
    #[arg(long, env = "QUEUE_MAX_DEPTH", default_value_t = 100_000)]
    pub max_depth: u64,

    /// Lease TTL of group members: how long a crashed member holds its work.
    #[arg(long, env = "QUEUE_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
}

impl QueueArgs {
    /// The queue configuration for the telemetry topic under `prefix`.
    pub fn queue_config(&self, prefix: &str) -> QueueConfig {
        QueueConfig {
            prefix: prefix.to_string(),
            partitions: self.partitions,
            max_depth: self.max_depth,
            ..QueueConfig::default()
        }
    }
}

impl Default for QueueArgs {
    fn default() -> Self {
        QueueArgs {
            partitions: 16,
            max_depth: 100_000,
            lease_ttl: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on every address at `port` until `shutdown` resolves. Returns the bound port
/// through `on_bound` (useful with port 0).
pub async fn serve(
    router: Router,
    port: u16,
    on_bound: impl FnOnce(u16),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = bind_http(port)?;
    on_bound(listener.local_addr()?.port());
    serve_http(listener, router, shutdown).await?;
    Ok(())
}
