//! Command-line interface: `streamer run` and `streamer validate`. Every option is also an
//! environment variable; `main` parses these once and hands plain config to the library.

use std::path::PathBuf;
use std::time::Duration;

use function_runtime::{parse_duration, CommonArgs, QueueArgs};

use crate::config::{member_id, StreamerConfig};

/// Streams the DCGM CSV onto the telemetry queue.
#[derive(Debug, clap::Parser)]
#[command(name = "streamer", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Stream the CSV onto the queue in passes until stopped (SIGTERM, --passes or --for).
    Run(Box<RunArgs>),
    /// Read the CSV and print a summary (rows, bad rows with line numbers, GPUs, hosts,
    /// metrics) without touching etcd.
    Validate(ValidateArgs),
}

/// Options of `streamer run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The DCGM CSV file to stream.
    #[arg(long, env = "STREAMER_CSV")]
    pub csv: PathBuf,

    /// Pause between passes over this streamer's shards.
    #[arg(long, env = "STREAMER_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Stop once every shard has been streamed this many times (counted by the whole group).
    #[arg(long, env = "STREAMER_PASSES", value_parser = clap::value_parser!(u64).range(1..))]
    pub passes: Option<u64>,

    /// Stop after this wall-clock window (the CronJob mode, e.g. 55s).
    #[arg(long = "for", env = "STREAMER_FOR", value_parser = parse_duration)]
    pub run_for: Option<Duration>,

    /// Most samples per batch (one queue message, one CloudEvent).
    #[arg(long, env = "STREAMER_BATCH_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch_size: u64,

    /// Samples per second this streamer publishes at most; 0 = as fast as possible.
    #[arg(long, env = "STREAMER_RATE", default_value_t = 0)]
    pub rate: u64,

    /// Publish transactions in flight at once.
    #[arg(long, env = "STREAMER_IN_FLIGHT", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub in_flight: u64,

    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub queue: QueueArgs,
}

impl RunArgs {
    /// The streamer's plain configuration.
    pub fn streamer_config(&self) -> StreamerConfig {
        StreamerConfig {
            csv: self.csv.clone(),
            interval: self.interval,
            passes: self.passes,
            batch_size: self.batch_size as usize,
            rate: self.rate,
            in_flight: self.in_flight as usize,
            member_id: member_id(),
            lease_ttl: self.queue.lease_ttl,
            queue: self.queue.queue_config(&self.common.prefix),
        }
    }
}

/// Output format of `streamer validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Options of `streamer validate`.
#[derive(Debug, Clone, clap::Args)]
pub struct ValidateArgs {
    /// The DCGM CSV file to check.
    #[arg(long, env = "STREAMER_CSV")]
    pub csv: PathBuf,

    /// `text` for people, `json` for scripts.
    #[arg(long, default_value = "text")]
    pub format: OutputFormat,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_options_parse_into_config() {
        let cli = Cli::try_parse_from([
            "streamer",
            "run",
            "--csv",
            "data.csv",
            "--for",
            "55s",
            "--passes",
            "3",
            "--interval",
            "250ms",
            "--batch-size",
            "100",
            "--rate",
            "5000",
            "--prefix",
            "/p",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(args.run_for, Some(Duration::from_secs(55)));
        let config = args.streamer_config();
        assert_eq!(config.csv, PathBuf::from("data.csv"));
        assert_eq!(config.passes, Some(3));
        assert_eq!(config.interval, Duration::from_millis(250));
        assert_eq!(config.batch_size, 100);
        assert_eq!(config.rate, 5000);
        assert_eq!(config.in_flight, 4);
        assert_eq!(config.queue.prefix, "/p");
        assert_eq!(config.queue.partitions, 16);
        assert_eq!(config.lease_ttl, Duration::from_secs(10));
    }

    #[test]
    fn invalid_values_are_refused() {
        for bad in [
            &["--passes", "0"][..],
            &["--batch-size", "0"],
            &["--for", "soon"],
            &["--interval", "10"],
        ] {
            let mut argv = vec!["streamer", "run", "--csv", "x.csv"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(&argv).is_err(), "{bad:?} accepted");
        }
        let cli =
            Cli::try_parse_from(["streamer", "validate", "--csv", "x.csv", "--format", "json"])
                .unwrap();
        let Command::Validate(args) = cli.command else {
            panic!("expected validate");
        };
        assert_eq!(args.format, OutputFormat::Json);
    }
}
