//! Command line of the `collector` binary: `collector run`. Every option is also an environment
//! variable; `main` parses them once and converts them into the library's plain [`Config`].

use collector::{Config, IngestSettings};
use function_runtime::args::{ByteSize, EtcdArgs, QueueArgs, ServeArgs, StoreArgs};
use function_runtime::{member_id, ports, DurationArg};

/// The subcommands (`--help` shows the crate's description).
#[derive(Debug, clap::Parser)]
#[command(version, about)]
pub enum Command {
    /// Join the consumer group and persist telemetry until SIGTERM.
    Run(Box<RunArgs>),
}

/// Options of `collector run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,

    #[command(flatten)]
    pub serve: ServeArgs<{ ports::COLLECTOR }>,

    #[command(flatten)]
    pub queue: QueueArgs,

    #[command(flatten)]
    pub store: StoreArgs,

    /// Time to finish the delivery in flight and leave the group after SIGTERM.
    #[arg(long, env = "COLLECTOR_GRACE_PERIOD", default_value_t = DurationArg(Config::default().grace_period))]
    pub grace_period: DurationArg,

    /// Most queue messages persisted per commit.
    #[arg(long, env = "COLLECTOR_MAX_MESSAGES", default_value_t = Config::default().max_messages)]
    pub max_messages: usize,

    /// Most partitions whose deliveries are read at once and committed in one transaction.
    #[arg(long, env = "COLLECTOR_PARTITIONS_PER_COMMIT", default_value_t = Config::default().partitions_per_commit,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub partitions_per_commit: usize,

    /// Member id in the consumer group (default: host name plus a random suffix).
    #[arg(long, env = "COLLECTOR_ID")]
    pub id: Option<String>,

    /// Largest `POST /` body accepted, in bytes (suffixes KiB and MiB allowed; 413 above it).
    #[arg(long, env = "COLLECTOR_BODY_LIMIT", default_value_t = ByteSize(Config::default().ingest.body_limit))]
    pub body_limit: ByteSize,

    /// When set, `POST /` requires `Authorization: Bearer <this token>` (401 otherwise).
    #[arg(long, env = "COLLECTOR_INGEST_TOKEN", hide_env_values = true)]
    pub ingest_token: Option<String>,
}

impl RunArgs {
    /// The library's configuration; without `--id` the member id is made from this host's name.
    pub fn into_config(self) -> Config {
        Config {
            etcd: self.etcd.into(),
            queue: self.queue.into(),
            store: self.store.into(),
            member_id: self.id.unwrap_or_else(|| member_id("collector")),
            max_messages: self.max_messages,
            partitions_per_commit: self.partitions_per_commit,
            grace_period: self.grace_period.into(),
            ingest: IngestSettings {
                body_limit: self.body_limit.0,
                token: self.ingest_token.filter(|token| !token.is_empty()),
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
    fn options_parse_into_the_config() {
        Command::command().debug_assert();
        let cli = Command::try_parse_from([
            "collector",
            "run",
            "--id",
            "c1",
            "--grace-period",
            "5s",
            "--store-bucket",
            "30s",
            "--lease-ttl",
            "2s",
            "--body-limit",
            "64KiB",
            "--ingest-token",
            "s3cret",
        ])
        .unwrap();
        let Command::Run(args) = cli;
        let config = args.into_config();
        assert_eq!(config.member_id, "c1");
        assert_eq!(config.grace_period, Duration::from_secs(5));
        assert_eq!(config.store.bucket, Duration::from_secs(30));
        assert_eq!(config.consumer_config().lease_ttl, Duration::from_secs(2));
        assert_eq!(config.consumer_config().max_messages, 64);
        assert_eq!(
            config.ingest,
            IngestSettings {
                body_limit: 64 * 1024,
                token: Some("s3cret".into())
            }
        );
        let Command::Run(defaults) = Command::try_parse_from(["collector", "run"]).unwrap();
        let defaults = defaults.into_config();
        assert_eq!(
            (defaults.grace_period, defaults.store),
            (Duration::from_secs(20), Default::default())
        );
    }
}
