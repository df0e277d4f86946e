//! The flags and environment variables of the shared settings, flattened by each function's
//! `cli.rs` and converted into the plain configs ([`EtcdConfig`], [`QueueSettings`],
//! [`StoreSettings`]), and the argument types they share ([`DurationArg`], [`ByteSize`]). Every default shown here is taken from those configs' `Default`, so it is
//! stated once. [`worker_env`] is the reverse: the variables that give another function the same
//! settings.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::config::{EtcdConfig, LogFormat, QueueSettings, StoreSettings};

/// A duration on the command line: parsed with a unit (`500ms`, `55s`, `1m`, `24h`), shown in the
/// largest unit that divides it (`24h`, not `86400s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurationArg(pub Duration);

impl FromStr for DurationArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_duration(text).map(DurationArg)
    }
}

impl fmt::Display for DurationArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u128); 6] = [
            ("h", 3_600_000_000_000),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
            ("ns", 1),
        ];
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        let (unit, size) = UNITS
            .into_iter()
            .find(|(_, size)| nanos % size == 0)
            .unwrap_or(("ns", 1));
        write!(f, "{}{unit}", nanos / size)
    }
}

impl From<DurationArg> for Duration {
    fn from(arg: DurationArg) -> Duration {
        arg.0
    }
}

/// Parses durations like `55s`, `1m`, `500ms`, `24h`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?}: {e} (examples: 500ms, 55s, 1m, 24h)"))
}

/// A size in bytes on the command line: `65536`, `64KiB`, `1MiB`; shown in the largest binary unit
/// that divides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_byte_size(text).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("0"),
            n if n % (1024 * 1024) == 0 => write!(f, "{}MiB", n / (1024 * 1024)),
            n if n % 1024 == 0 => write!(f, "{}KiB", n / 1024),
            n => write!(f, "{n}"),
        }
    }
}

/// Parses `65536`, `64KiB`, `1MiB` (also `KB`/`MB`/`K`/`M`, all powers of 1024).
pub fn parse_byte_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?} (examples: 65536, 64KiB, 1MiB)"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?} (use KiB or MiB)"
            ))
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// How to reach etcd, and the key prefix.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma separated.
    #[arg(
        long,
        env = "ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_values_t = EtcdConfig::default().endpoints
    )]
    pub etcd_endpoints: Vec<String>,

    /// Root of every key this deployment writes; several deployments can share one etcd.
    #[arg(long, env = "TELEMETRY_PREFIX", default_value_t = EtcdConfig::default().prefix)]
    pub prefix: String,

    /// Timeout of one etcd request.
    #[arg(long, env = "ETCD_TIMEOUT", default_value_t = DurationArg(EtcdConfig::default().timeout))]
    pub etcd_timeout: DurationArg,

    /// etcd user name (password from ETCD_PASSWORD or ETCD_PASSWORD_FILE).
    #[arg(long, env = "ETCD_USERNAME")]
    pub etcd_username: Option<String>,

    /// The etcd user's password; prefer ETCD_PASSWORD_FILE, which no process listing shows.
    #[arg(long, env = "ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,

    /// A file holding the etcd user's password (a trailing newline is ignored); exclusive with
    /// ETCD_PASSWORD.
    #[arg(long, env = "ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<PathBuf>,

    /// CA certificate (PEM) to verify etcd's TLS certificate.
    #[arg(long, env = "ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS, with ETCD_KEY_FILE.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub etcd_cert_file: Option<PathBuf>,

    #[arg(long, env = "ETCD_KEY_FILE")]
    pub etcd_key_file: Option<PathBuf>,
}

impl From<EtcdArgs> for EtcdConfig {
    fn from(args: EtcdArgs) -> EtcdConfig {
        EtcdConfig {
            endpoints: args.etcd_endpoints,
            prefix: args.prefix,
            timeout: args.etcd_timeout.into(),
            username: args.etcd_username,
            password: args.etcd_password,
            password_file: args.etcd_password_file,
            ca_file: args.etcd_ca_file,
            cert_file: args.etcd_cert_file,
            key_file: args.etcd_key_file,
        }
    }
}

/// The telemetry topic's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct QueueArgs {
    /// Partitions of the telemetry topic (fixed when the topic is created).
    #[arg(long, env = "QUEUE_PARTITIONS", default_value_t = QueueSettings::default().partitions)]
    pub partitions: u32,

    /// Backlog (messages) at which producers wait, then fail.
    #[arg(long, env = "QUEUE_MAX_DEPTH", default_value_t = QueueSettings::default().max_depth)]
    pub max_depth: u64,

    /// Backlog (payload bytes; suffixes KiB and MiB allowed) at which producers wait, then fail.
    #[arg(long, env = "QUEUE_MAX_BYTES", default_value_t = ByteSize(QueueSettings::default().max_bytes as usize))]
    pub max_bytes: ByteSize,

    /// Lease TTL of group members: how long a crashed member holds its work.
    #[arg(long, env = "QUEUE_LEASE_TTL", default_value_t = DurationArg(QueueSettings::default().lease_ttl))]
    pub lease_ttl: DurationArg,

    /// How long transient etcd failures of one queue operation are retried before it fails.
    #[arg(long, env = "QUEUE_RETRY_BUDGET", default_value_t = DurationArg(QueueSettings::default().retry_budget))]
    pub retry_budget: DurationArg,
}

impl From<QueueArgs> for QueueSettings {
    fn from(args: QueueArgs) -> QueueSettings {
        QueueSettings {
            partitions: args.partitions,
            max_depth: args.max_depth,
            max_bytes: args.max_bytes.0 as u64,
            lease_ttl: args.lease_ttl.into(),
            retry_budget: args.retry_budget.into(),
        }
    }
}

/// The telemetry store's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// How long samples are kept.
    #[arg(long = "store-retention", env = "STORE_RETENTION", default_value_t = DurationArg(StoreSettings::default().retention))]
    pub retention: DurationArg,

    /// Retention bucket: data expires bucket by bucket. Readers must use the writers' bucket (they
    /// look one bucket back for chunks overlapping a window).
    #[arg(long = "store-bucket", env = "STORE_BUCKET", default_value_t = DurationArg(StoreSettings::default().bucket))]
    pub bucket: DurationArg,

    #[command(flatten)]
    pub clock: ClockArgs,
}

impl From<StoreArgs> for StoreSettings {
    fn from(args: StoreArgs) -> StoreSettings {
        StoreSettings {
            retention: args.retention.into(),
            bucket: args.bucket.into(),
            max_future: args.clock.max_future.into(),
        }
    }
}

/// How far sample clocks may run ahead: shared by the collector (which rejects samples stamped
/// further ahead) and the streamer (which stops stamping after a shard state that far ahead).
#[derive(Debug, Clone, clap::Args)]
pub struct ClockArgs {
    /// Furthest a sample's timestamp may be ahead of this host's clock. The collector rejects
    /// (and counts) samples stamped later; a streamer whose shard state is further ahead stamps
    /// from its clock again.
    #[arg(long, env = "TELEMETRY_MAX_FUTURE", default_value_t = DurationArg(StoreSettings::default().max_future))]
    pub max_future: DurationArg,
}

/// How the function logs.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: `text` or `json` (filter with RUST_LOG).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::default())]
    pub log_format: LogFormat,
}

/// Where a long-running function serves HTTP, and how it logs; `PORT` is its default port.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs<const PORT: u16> {
    /// Port of the HTTP server (health, readiness, metrics; the API for the gateway).
    #[arg(long, env = "PORT", default_value_t = PORT)]
    pub port: u16,

    #[command(flatten)]
    pub log: LogArgs,
}

/// The environment variables that give another function (a worker the autoscaler starts) these
/// etcd, queue and log settings; optional settings only when set.
pub fn worker_env(
    etcd: &EtcdConfig,
    queue: &QueueSettings,
    log_format: LogFormat,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("ETCD_ENDPOINTS", etcd.endpoints.join(",")),
        ("TELEMETRY_PREFIX", etcd.prefix.clone()),
        ("ETCD_TIMEOUT", DurationArg(etcd.timeout).to_string()),
        ("LOG_FORMAT", log_format.as_str().to_string()),
        ("QUEUE_PARTITIONS", queue.partitions.to_string()),
        ("QUEUE_MAX_DEPTH", queue.max_depth.to_string()),
        ("QUEUE_LEASE_TTL", DurationArg(queue.lease_ttl).to_string()),
        (
            "QUEUE_RETRY_BUDGET",
            DurationArg(queue.retry_budget).to_string(),
        ),
    ];
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let optional = [
        ("ETCD_USERNAME", etcd.username.clone()),
        ("ETCD_PASSWORD", etcd.password.clone()),
        ("ETCD_PASSWORD_FILE", path(&etcd.password_file)),
        ("ETCD_CA_FILE", path(&etcd.ca_file)),
        ("ETCD_CERT_FILE", path(&etcd.cert_file)),
        ("ETCD_KEY_FILE", path(&etcd.key_file)),
    ];
    env.extend(
        optional
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?))),
    );
    env
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::config::ports;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        queue: QueueArgs,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        serve: ServeArgs<{ ports::COLLECTOR }>,
    }

    #[test]
    fn byte_sizes_parse_with_binary_units() {
        assert_eq!(parse_byte_size("65536"), Ok(65536));
        assert_eq!(parse_byte_size("64KiB"), Ok(65536));
        assert_eq!(parse_byte_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_byte_size(" 2 k "), Ok(2048));
        assert!(parse_byte_size("").is_err());
        assert!(parse_byte_size("KiB").is_err());
        assert!(parse_byte_size("1GiB")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_byte_size("99999999999999999999M").is_err());
        assert_eq!(ByteSize(65536).to_string(), "64KiB");
        assert_eq!(ByteSize(3 * 1024 * 1024).to_string(), "3MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("55s"), Ok(Duration::from_secs(55)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("soon").unwrap_err().contains("examples"));
        assert!(parse_duration("10").is_err(), "a unit is required");
    }

    #[test]
    fn durations_show_in_their_largest_whole_unit_and_parse_back() {
        for (duration, text) in [
            (Duration::from_secs(86_400), "24h"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(1_500), "1500us"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(DurationArg(duration).to_string(), text);
            assert_eq!(text.parse::<DurationArg>(), Ok(DurationArg(duration)));
        }
    }

    #[test]
    fn without_flags_the_plain_defaults_apply() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["f"]).unwrap();
        assert_eq!(EtcdConfig::from(cli.etcd), EtcdConfig::default());
        assert_eq!(QueueSettings::from(cli.queue), QueueSettings::default());
        assert_eq!(StoreSettings::from(cli.store), StoreSettings::default());
        assert_eq!(cli.serve.port, ports::COLLECTOR);
        assert_eq!(cli.serve.log.log_format, LogFormat::Text);
    }

    #[test]
    fn flags_fill_the_plain_configs() {
        let cli = Cli::try_parse_from([
            "f",
            "--etcd-endpoints",
            "http://a:2379,http://b:2379",
            "--prefix",
            "/p",
            "--etcd-timeout",
            "250ms",
            "--etcd-username",
            "u",
            "--etcd-ca-file",
            "/ca.pem",
            "--partitions",
            "32",
            "--lease-ttl",
            "2s",
            "--retry-budget",
            "5s",
            "--etcd-password-file",
            "/run/secrets/etcd-password",
            "--max-bytes",
            "64MiB",
            "--store-bucket",
            "30s",
            "--store-retention",
            "2m",
            "--max-future",
            "30s",
            "--port",
            "0",
            "--log-format",
            "json",
        ])
        .unwrap();
        let etcd = EtcdConfig::from(cli.etcd);
        assert_eq!(
            etcd,
            EtcdConfig {
                endpoints: vec!["http://a:2379".into(), "http://b:2379".into()],
                prefix: "/p".into(),
                timeout: Duration::from_millis(250),
                username: Some("u".into()),
                password_file: Some("/run/secrets/etcd-password".into()),
                ca_file: Some("/ca.pem".into()),
                ..EtcdConfig::default()
            }
        );
        let queue = QueueSettings::from(cli.queue);
        assert_eq!(
            queue,
            QueueSettings {
                partitions: 32,
                lease_ttl: Duration::from_secs(2),
                retry_budget: Duration::from_secs(5),
                max_bytes: 64 * 1024 * 1024,
                ..QueueSettings::default()
            }
        );
        assert_eq!(
            StoreSettings::from(cli.store),
            StoreSettings {
                retention: Duration::from_secs(120),
                bucket: Duration::from_secs(30),
                max_future: Duration::from_secs(30),
            }
        );
        assert_eq!(
            (cli.serve.port, cli.serve.log.log_format),
            (0, LogFormat::Json)
        );
        assert_eq!(
            worker_env(&etcd, &queue, LogFormat::Json),
            [
                ("ETCD_ENDPOINTS", "http://a:2379,http://b:2379"),
                ("TELEMETRY_PREFIX", "/p"),
                ("ETCD_TIMEOUT", "250ms"),
                ("LOG_FORMAT", "json"),
                ("QUEUE_PARTITIONS", "32"),
                ("QUEUE_MAX_DEPTH", "100000"),
                ("QUEUE_LEASE_TTL", "2s"),
                ("QUEUE_RETRY_BUDGET", "5s"),
                ("ETCD_USERNAME", "u"),
                ("ETCD_PASSWORD_FILE", "/run/secrets/etcd-password"),
                ("ETCD_CA_FILE", "/ca.pem"),
            ]
            .map(|(k, v)| (k, v.to_string()))
        );
    }
}
