//! Command line of the `streamer` binary: `streamer run` and `streamer validate`. Every option is
//! also an environment variable; `main` parses them once and converts them into the library's
//! plain configs.

use std::path::PathBuf;

use function_runtime::args::{ByteSize, ClockArgs, EtcdArgs, QueueArgs, ServeArgs};
use function_runtime::{member_id, ports, DurationArg};
use streamer::validate::{OutputFormat, ValidateConfig};
use streamer::Config;
use telemetry_model::DataEncoding;

/// The subcommands (`--help` shows the crate's description).
#[derive(Debug, clap::Parser)]
#[command(version, about)]
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
    #[arg(long, env = "STREAMER_INTERVAL", default_value_t = DurationArg(Config::default().interval))]
    pub interval: DurationArg,

    /// Stop once every shard has been streamed this many times (counted by the whole group).
    #[arg(long, env = "STREAMER_PASSES", value_parser = clap::value_parser!(u64).range(1..))]
    pub passes: Option<u64>,

    /// Stop after this wall-clock window (the CronJob mode, e.g. 55s).
    #[arg(long = "for", env = "STREAMER_FOR")]
    pub run_for: Option<DurationArg>,

    /// Most samples per batch (one queue message, one CloudEvent).
    #[arg(long, env = "STREAMER_BATCH_SIZE", default_value_t = Config::default().batch_size as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch_size: u64,

    /// Samples per second this streamer publishes at most; 0 = as fast as possible.
    #[arg(long, env = "STREAMER_RATE", default_value_t = Config::default().rate)]
    pub rate: u64,

    /// Publish transactions in flight at once.
    #[arg(long, env = "STREAMER_IN_FLIGHT", default_value_t = Config::default().in_flight as u64,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub in_flight: u64,

    /// How events carry their batch: `columnar` (compact binary in `data_base64`) or `json`.
    #[arg(long, env = "STREAMER_ENCODING", value_enum, default_value_t = EncodingArg::Columnar)]
    pub encoding: EncodingArg,

    /// A CSV no larger than this is parsed once and its rows replayed on later passes (larger
    /// files are read from disk on every pass); 0 always reads from disk.
    #[arg(long, env = "STREAMER_PARSE_ONCE_BYTES", default_value_t = ByteSize(Config::default().parse_once_bytes as usize))]
    pub parse_once_bytes: ByteSize,

    /// Longest a buffered row waits before it is published when its batch has not filled.
    #[arg(long, env = "STREAMER_LINGER", default_value_t = DurationArg(Config::default().linger))]
    pub linger: DurationArg,

    #[command(flatten)]
    pub etcd: EtcdArgs,

    #[command(flatten)]
    pub serve: ServeArgs<{ ports::STREAMER }>,

    #[command(flatten)]
    pub queue: QueueArgs,

    #[command(flatten)]
    pub clock: ClockArgs,
}

impl RunArgs {
    /// The library's configuration; the member id is made from this host's name.
    pub fn into_config(self) -> Config {
        Config {
            etcd: self.etcd.into(),
            queue: self.queue.into(),
            csv: self.csv,
            interval: self.interval.into(),
            passes: self.passes,
            run_for: self.run_for.map(Into::into),
            batch_size: self.batch_size as usize,
            rate: self.rate,
            in_flight: self.in_flight as usize,
            member_id: member_id("streamer"),
            max_future: self.clock.max_future.into(),
            parse_once_bytes: self.parse_once_bytes.0 as u64,
            linger: self.linger.into(),
            encoding: match self.encoding {
                EncodingArg::Columnar => DataEncoding::Columnar,
                EncodingArg::Json => DataEncoding::Json,
            },
        }
    }
}

/// The event data encoding of `streamer run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EncodingArg {
    Columnar,
    Json,
}

/// Output format of `streamer validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
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
    #[arg(long, value_enum, default_value_t = FormatArg::Text)]
    pub format: FormatArg,
}

impl ValidateArgs {
    pub fn into_config(self) -> ValidateConfig {
        ValidateConfig {
            csv: self.csv,
            format: match self.format {
                FormatArg::Text => OutputFormat::Text,
                FormatArg::Json => OutputFormat::Json,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Command::command().debug_assert();
    }

    #[test]
    fn run_options_parse_into_config() {
        let cli = Command::try_parse_from([
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
        let Command::Run(args) = cli else {
            panic!("expected run");
        };
        let config = args.into_config();
        assert_eq!(config.run_for, Some(Duration::from_secs(55)));
        let config = config.streamer_config();
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
            assert!(Command::try_parse_from(&argv).is_err(), "{bad:?} accepted");
        }
        let cli =
            Command::try_parse_from(["streamer", "validate", "--csv", "x.csv", "--format", "json"])
                .unwrap();
        let Command::Validate(args) = cli else {
            panic!("expected validate");
        };
        assert_eq!(args.into_config().format, OutputFormat::Json);
    }
}
