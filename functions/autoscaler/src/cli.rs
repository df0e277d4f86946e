//! Command line of the `autoscaler` binary: `autoscaler run`. Every option is also an environment
//! variable; `main` parses them once and converts them into the library's plain [`Config`].

use std::path::PathBuf;

use autoscaler::{Config, PolicyConfig, WorkerConfig};
use function_runtime::args::{EtcdArgs, QueueArgs, ServeArgs};
use function_runtime::{ports, DurationArg};

/// The subcommands (`--help` shows the crate's description).
#[derive(Debug, clap::Parser)]
#[command(version, about)]
pub enum Command {
    /// Watch the depth key and scale the collector processes until SIGTERM or Ctrl-C.
    Run(Box<RunArgs>),
}

/// Options of `autoscaler run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,

    #[command(flatten)]
    pub serve: ServeArgs<{ ports::AUTOSCALER }>,

    #[command(flatten)]
    pub queue: QueueArgs,

    #[command(flatten)]
    pub policy: PolicyArgs,

    #[command(flatten)]
    pub workers: WorkerArgs,

    /// How often the policy is re-evaluated without a depth change (cooldown and stabilization
    /// are time-based).
    #[arg(long, env = "AUTOSCALER_INTERVAL", default_value_t = DurationArg(Config::default().interval))]
    pub interval: DurationArg,
}

impl RunArgs {
    /// The library's configuration.
    pub fn into_config(self) -> Config {
        Config {
            etcd: self.etcd.into(),
            queue: self.queue.into(),
            log_format: self.serve.log.log_format,
            policy: self.policy.into(),
            workers: WorkerConfig {
                command: self.workers.command,
                args: self.workers.args,
                grace_period: self.workers.grace_period.into(),
            },
            interval: self.interval.into(),
        }
    }
}

/// The scaling policy's options (see [`PolicyConfig`]).
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Fewest collectors to keep running (0 allows scale to zero).
    #[arg(long = "min", env = "AUTOSCALER_MIN", default_value_t = PolicyConfig::default().min_replicas)]
    pub min_replicas: u32,

    /// Most collectors to run.
    #[arg(long = "max", env = "AUTOSCALER_MAX", default_value_t = PolicyConfig::default().max_replicas)]
    pub max_replicas: u32,

    /// Queue depth (messages) one collector is expected to handle: desired = ceil(depth / target).
    #[arg(long = "target", env = "AUTOSCALER_TARGET", default_value_t = PolicyConfig::default().target_per_replica)]
    pub target_per_replica: u64,

    /// Depth that must be exceeded to start collectors from zero (KEDA's activationValue).
    #[arg(long, env = "AUTOSCALER_ACTIVATION", default_value_t = PolicyConfig::default().activation)]
    pub activation: u64,

    /// Most collectors added per scale-up period.
    #[arg(long, env = "AUTOSCALER_SCALE_UP_STEP", default_value_t = PolicyConfig::default().scale_up_step)]
    pub scale_up_step: u32,

    /// The rolling period the scale-up step limit applies to.
    #[arg(long, env = "AUTOSCALER_SCALE_UP_PERIOD", default_value_t = DurationArg(PolicyConfig::default().scale_up_period))]
    pub scale_up_period: DurationArg,

    /// Scale-down stabilization window: scale down only to the highest desired count seen within it.
    #[arg(long, env = "AUTOSCALER_STABILIZATION", default_value_t = DurationArg(PolicyConfig::default().stabilization))]
    pub stabilization: DurationArg,

    /// How long the queue must stay inactive (depth <= activation) before scaling to zero.
    #[arg(long, env = "AUTOSCALER_COOLDOWN", default_value_t = DurationArg(PolicyConfig::default().cooldown))]
    pub cooldown: DurationArg,
}

impl From<PolicyArgs> for PolicyConfig {
    fn from(args: PolicyArgs) -> PolicyConfig {
        PolicyConfig {
            min_replicas: args.min_replicas,
            max_replicas: args.max_replicas,
            target_per_replica: args.target_per_replica,
            activation: args.activation,
            scale_up_step: args.scale_up_step,
            scale_up_period: args.scale_up_period.into(),
            stabilization: args.stabilization.into(),
            cooldown: args.cooldown.into(),
        }
    }
}

/// Which program the autoscaler runs as a worker, and how it stops one.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Program to run as a worker [default: the `collector` binary beside the autoscaler's own,
    /// with the argument `run`].
    #[arg(long, env = "AUTOSCALER_COMMAND")]
    pub command: Option<PathBuf>,

    /// Argument for the worker command; repeat it, or give several separated by spaces
    /// (`--arg=--flag` for one starting with a dash).
    #[arg(
        long = "arg",
        env = "AUTOSCALER_ARGS",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,

    /// How long a stopped worker may drain after SIGTERM before it gets SIGKILL.
    #[arg(long, env = "AUTOSCALER_GRACE_PERIOD", default_value_t = DurationArg(WorkerConfig::default().grace_period))]
    pub grace_period: DurationArg,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::{CommandFactory, Parser};

    use super::*;

    fn parse(args: &[&str]) -> Config {
        let cli = Command::try_parse_from(["autoscaler", "run"].iter().chain(args)).unwrap();
        let Command::Run(args) = cli;
        args.into_config()
    }

    #[test]
    fn options_default_to_the_documented_values() {
        Command::command().debug_assert();
        let config = parse(&[]);
        assert_eq!(config.policy, PolicyConfig::default());
        assert_eq!(config.policy.min_replicas, 0);
        assert_eq!(config.policy.max_replicas, 10);
        assert_eq!(config.policy.target_per_replica, 100);
        assert_eq!(config.policy.activation, 0);
        assert_eq!(config.policy.scale_up_step, 4);
        assert_eq!(config.policy.scale_up_period, Duration::from_secs(15));
        assert_eq!(config.policy.stabilization, Duration::from_secs(30));
        assert_eq!(config.policy.cooldown, Duration::from_secs(60));
        assert_eq!(config.workers.command, None);
        assert!(config.workers.args.is_empty());
        assert_eq!(config.workers.grace_period, Duration::from_secs(25));
        assert_eq!(config.interval, Duration::from_secs(1));
    }

    #[test]
    fn worker_arguments_repeat_split_on_spaces_and_may_start_with_a_dash() {
        let config = parse(&[
            "--min=1",
            "--max",
            "3",
            "--cooldown",
            "5s",
            "--command",
            "/usr/bin/env",
            "--arg",
            "collector run",
            "--arg",
            "--for",
            "--arg=55s",
        ]);
        assert_eq!(
            (config.policy.min_replicas, config.policy.max_replicas),
            (1, 3)
        );
        assert_eq!(config.policy.cooldown, Duration::from_secs(5));
        assert_eq!(config.workers.command, Some(PathBuf::from("/usr/bin/env")));
        assert_eq!(config.workers.args, ["collector", "run", "--for", "55s"]);
    }
}
