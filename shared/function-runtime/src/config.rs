//! Configuration every function shares. Each option is a flag and an environment variable; the
//! README's configuration table lists them.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use etcd_queue::{Backoff, QueueConfig};

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

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
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

    fn connect_options(&self) -> anyhow::Result<ConnectOptions> {
        let mut options = ConnectOptions::new()
            .with_timeout(self.etcd_timeout)
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let (Some(user), Some(password)) = (&self.etcd_username, &self.etcd_password) {
            options = options.with_user(user, password);
        }
        if self.etcd_ca_file.is_some() || self.etcd_cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.etcd_ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| anyhow::anyhow!("read ETCD_CA_FILE {}: {e}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&self.etcd_cert_file, &self.etcd_key_file) {
                let cert = std::fs::read(cert)
                    .map_err(|e| anyhow::anyhow!("read ETCD_CERT_FILE {}: {e}", cert.display()))?;
                let key = std::fs::read(key)
                    .map_err(|e| anyhow::anyhow!("read ETCD_KEY_FILE {}: {e}", key.display()))?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        Ok(options)
    }

    /// Connects to etcd, retrying with backoff until it answers (logging each failure), so that a
    /// function started before etcd waits instead of crashing.
    pub async fn connect_etcd(&self) -> anyhow::Result<Client> {
        let options = self.connect_options()?;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match Client::connect(&self.etcd_endpoints, Some(options.clone())).await {
                Ok(client) => {
                    tracing::info!(endpoints = ?self.etcd_endpoints, "connected to etcd");
                    return Ok(client);
                }
                Err(e) => {
                    tracing::warn!(endpoints = ?self.etcd_endpoints, error = %e, "etcd unreachable; retrying");
                    backoff.wait().await;
                }
            }
        }
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

/// Parses durations like `55s`, `1m`, `500ms`, `24h`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?}: {e} (examples: 500ms, 55s, 1m, 24h)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("55s"), Ok(Duration::from_secs(55)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("soon").unwrap_err().contains("examples"));
        assert!(parse_duration("10").is_err(), "a unit is required");
    }
}
