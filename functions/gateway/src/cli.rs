//! Command line of the `gateway` binary: `gateway run`, `gateway openapi`, the hidden development
//! command `gateway seed`, and `gateway lambda` with the `lambda` feature. Every option of `run`
//! is also an environment variable; `main` parses them once and converts them into the library's
//! plain configs.

use std::path::PathBuf;

use function_runtime::args::{ByteSize, EtcdArgs, LogArgs, QueueArgs, ServeArgs, StoreArgs};
use function_runtime::{ports, DurationArg};
use gateway::seed::SeedConfig;
use gateway::{Config, HttpSettings};
use promql_engine::{EngineConfig, QueryLimits};

/// The subcommands (`--help` shows the crate's description).
#[derive(Debug, clap::Parser)]
#[command(version, about)]
pub enum Command {
    /// Serve the API on PORT (default 8080) until SIGTERM.
    Run(Box<RunArgs>),
    /// Print the OpenAPI document (JSON) on stdout.
    Openapi,
    /// Fill the store from a DCGM CSV, for trying the API without streamer and collector.
    #[command(hide = true)]
    Seed(Box<SeedArgs>),
    /// Serve the API under the AWS Lambda runtime.
    #[cfg(feature = "lambda")]
    Lambda(Box<RunArgs>),
}

/// Options of `gateway run` (and `gateway lambda`).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,

    #[command(flatten)]
    pub serve: ServeArgs<{ ports::GATEWAY }>,

    #[command(flatten)]
    pub queue: QueueArgs,

    #[command(flatten)]
    pub store: StoreArgs,

    /// Longest time one API request may take before it is answered with 503.
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT", default_value_t = DurationArg(HttpSettings::default().request_timeout))]
    pub request_timeout: DurationArg,

    /// Longest time one etcd read may take before the request is answered with 503.
    #[arg(long = "gateway-etcd-timeout", env = "GATEWAY_ETCD_TIMEOUT", default_value_t = DurationArg(Config::default().etcd_read_timeout))]
    pub etcd_read_timeout: DurationArg,

    /// Origins allowed by CORS, comma separated (`*` for any); none turns CORS off.
    #[arg(long, env = "GATEWAY_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Largest request body accepted, in bytes (suffixes KiB and MiB allowed).
    #[arg(long, env = "GATEWAY_BODY_LIMIT", default_value_t = ByteSize(HttpSettings::default().body_limit))]
    pub body_limit: ByteSize,

    /// Most API requests answered at once; more get 503 with Retry-After.
    #[arg(long, env = "GATEWAY_MAX_CONCURRENCY", default_value_t = HttpSettings::default().max_concurrency, value_parser = at_least::<1>)]
    pub max_concurrency: usize,

    /// Most buckets per metric one aggregated query may compute (more: 400).
    #[arg(long, env = "GATEWAY_MAX_POINTS_PER_SERIES", default_value_t = Config::default().max_points_per_series, value_parser = at_least::<3>)]
    pub max_points_per_series: usize,

    #[command(flatten)]
    pub promql: PromqlArgs,
}

/// Limits of the Prometheus API's queries.
#[derive(Debug, Clone, clap::Args)]
pub struct PromqlArgs {
    /// Longest time one PromQL query may take (fetching included); keep it below
    /// GATEWAY_REQUEST_TIMEOUT. A request's `timeout` parameter can only shorten it.
    #[arg(long, env = "GATEWAY_QUERY_TIMEOUT", default_value_t = DurationArg(Config::default().promql.timeout))]
    pub query_timeout: DurationArg,

    /// Series one PromQL query may select, all selectors together.
    #[arg(long, env = "GATEWAY_QUERY_MAX_SERIES", default_value_t = Config::default().promql.limits.max_series)]
    pub query_max_series: usize,

    /// Samples one PromQL query may load, all selectors together.
    #[arg(long, env = "GATEWAY_QUERY_MAX_SAMPLES", default_value_t = Config::default().promql.limits.max_samples)]
    pub query_max_samples: usize,
}

impl PromqlArgs {
    fn into_config(self) -> EngineConfig {
        let defaults = Config::default().promql;
        EngineConfig {
            timeout: self.query_timeout.into(),
            limits: QueryLimits {
                max_series: self.query_max_series,
                max_samples: self.query_max_samples,
                ..defaults.limits
            },
            ..defaults
        }
    }
}

impl RunArgs {
    /// The library's configuration.
    pub fn into_config(self) -> Config {
        Config {
            http: HttpSettings {
                request_timeout: self.request_timeout.into(),
                body_limit: self.body_limit.0,
                cors_origins: self
                    .cors_origins
                    .iter()
                    .map(|o| o.trim().to_string())
                    .filter(|o| !o.is_empty())
                    .collect(),
                max_concurrency: self.max_concurrency,
            },
            etcd: self.etcd.into(),
            etcd_read_timeout: self.etcd_read_timeout.into(),
            queue: self.queue.into(),
            store: self.store.into(),
            max_points_per_series: self.max_points_per_series,
            promql: self.promql.into_config(),
        }
    }
}

/// Options of `gateway seed`.
#[derive(Debug, Clone, clap::Args)]
pub struct SeedArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// The CSV to load.
    #[arg(long)]
    pub csv: PathBuf,

    /// Passes over the file; each pass is one sample per row.
    #[arg(long, default_value_t = SeedConfig::default().passes)]
    pub passes: u32,

    /// Time between passes (the last pass is stamped now).
    #[arg(long, default_value_t = DurationArg(SeedConfig::default().interval))]
    pub interval: DurationArg,
}

impl SeedArgs {
    pub fn into_config(self) -> SeedConfig {
        SeedConfig {
            etcd: self.etcd.into(),
            csv: self.csv,
            passes: self.passes,
            interval: self.interval.into(),
        }
    }
}

/// A count of at least `MIN`.
fn at_least<const MIN: usize>(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= MIN => Ok(n),
        _ => Err(format!(
            "expected a whole number of at least {MIN}, got {text:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::{CommandFactory, Parser};

    use super::*;

    fn run_args(flags: &[&str]) -> RunArgs {
        let cli = Command::try_parse_from(["gateway", "run"].iter().chain(flags)).unwrap();
        let Command::Run(args) = cli else {
            panic!("expected run");
        };
        *args
    }

    #[test]
    fn the_command_line_is_consistent() {
        Command::command().debug_assert();
        let cli = Command::try_parse_from(["gateway", "seed", "--csv", "x.csv", "--passes", "2"])
            .unwrap();
        let Command::Seed(seed) = cli else {
            panic!("expected seed");
        };
        let seed = seed.into_config();
        assert_eq!((seed.passes, seed.interval), (2, Duration::from_secs(1)));
    }

    #[test]
    fn the_flags_are_consistent_and_parse() {
        let config = run_args(&[
            "--request-timeout",
            "3s",
            "--gateway-etcd-timeout",
            "250ms",
            "--cors-origins",
            "https://a.example,https://b.example",
            "--body-limit",
            "1MiB",
            "--max-concurrency",
            "3",
            "--max-points-per-series",
            "500",
        ])
        .into_config();
        assert_eq!(config.http.max_concurrency, 3);
        assert_eq!(config.max_points_per_series, 500);
        assert_eq!(config.http.request_timeout, Duration::from_secs(3));
        assert_eq!(config.etcd_read_timeout, Duration::from_millis(250));
        assert_eq!(config.http.body_limit, 1024 * 1024);
        assert_eq!(
            config.http.cors_origins,
            vec![
                "https://a.example".to_string(),
                "https://b.example".to_string()
            ]
        );
    }

    #[test]
    fn cors_origins_drop_blanks_and_the_port_defaults_to_8080() {
        let args = run_args(&["--cors-origins", ", https://a.example "]);
        assert_eq!(args.serve.port, 8080);
        assert_eq!(
            args.into_config().http.cors_origins,
            vec!["https://a.example".to_string()]
        );
        assert_eq!(run_args(&[]).into_config(), Config::default());
    }
}
