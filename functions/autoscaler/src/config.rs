//! The autoscaler's settings as plain data, built by `main` from flags and environment variables
//! or directly by tests, and the worker command they describe.

use std::path::PathBuf;
use std::time::Duration;

use function_runtime::args::worker_env;
use function_runtime::{EtcdConfig, LogFormat, QueueSettings};

use crate::error::AutoscalerError;
use crate::policy::PolicyConfig;
use crate::supervisor::{default_worker_command, WorkerCommand};

/// Everything `autoscaler run` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// etcd and the key prefix; workers get the same.
    pub etcd: EtcdConfig,
    /// The telemetry topic's settings, passed to the workers.
    pub queue: QueueSettings,
    /// The log format, passed to the workers.
    pub log_format: LogFormat,
    /// How many workers for a depth.
    pub policy: PolicyConfig,
    /// Which program runs as a worker, and how it is stopped.
    pub workers: WorkerConfig,
    /// How often the policy is re-evaluated without a depth change (cooldown and stabilization
    /// are time-based).
    pub interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            etcd: EtcdConfig::default(),
            queue: QueueSettings::default(),
            log_format: LogFormat::default(),
            policy: PolicyConfig::default(),
            workers: WorkerConfig::default(),
            interval: Duration::from_secs(1),
        }
    }
}

/// Which program the autoscaler runs as a worker, and how it stops one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Program to run as a worker; `None`: the `collector` binary beside the autoscaler's own.
    pub command: Option<PathBuf>,
    /// Arguments of the command (with the default command and none given: `run`).
    pub args: Vec<String>,
    /// How long a stopped worker may drain after SIGTERM before it gets SIGKILL.
    pub grace_period: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            command: None,
            args: Vec::new(),
            grace_period: Duration::from_secs(25),
        }
    }
}

impl Config {
    /// The worker command: the configured one or the collector beside this executable, with the
    /// etcd, queue and log settings of this autoscaler in its environment, so that the workers
    /// consume the queue the autoscaler watches even when it was configured by flags.
    pub fn worker_command(&self) -> Result<WorkerCommand, AutoscalerError> {
        let base = match &self.workers.command {
            Some(program) => WorkerCommand::new(program.clone(), self.workers.args.clone()),
            None => {
                let executable =
                    std::env::current_exe().map_err(AutoscalerError::LocateExecutable)?;
                let mut command = default_worker_command(&executable);
                if !self.workers.args.is_empty() {
                    command.args = self.workers.args.clone();
                }
                command
            }
        };
        Ok(worker_env(&self.etcd, &self.queue, self.log_format)
            .into_iter()
            .fold(base, |command, (key, value)| command.with_env(key, value)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn workers_get_the_autoscalers_etcd_and_queue_settings() {
        let config = Config {
            etcd: EtcdConfig {
                endpoints: vec![
                    "http://127.0.0.1:2379".into(),
                    "http://127.0.0.2:2379".into(),
                ],
                prefix: "/prod".into(),
                username: Some("telemetry".into()),
                ..EtcdConfig::default()
            },
            queue: QueueSettings {
                partitions: 32,
                ..QueueSettings::default()
            },
            workers: WorkerConfig {
                command: Some("/opt/collector".into()),
                args: vec!["run".into()],
                ..WorkerConfig::default()
            },
            ..Config::default()
        };
        let command = config.worker_command().unwrap();
        assert_eq!(command.program, PathBuf::from("/opt/collector"));
        assert_eq!(command.args, ["run"]);
        let env: BTreeMap<&str, &str> = command
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let expected: BTreeMap<&str, &str> = [
            (
                "ETCD_ENDPOINTS",
                "http://127.0.0.1:2379,http://127.0.0.2:2379",
            ),
            ("TELEMETRY_PREFIX", "/prod"),
            ("ETCD_TIMEOUT", "5s"),
            ("LOG_FORMAT", "text"),
            ("QUEUE_PARTITIONS", "32"),
            ("QUEUE_MAX_DEPTH", "100000"),
            ("QUEUE_LEASE_TTL", "10s"),
            ("QUEUE_RETRY_BUDGET", "1m"),
            ("ETCD_USERNAME", "telemetry"),
        ]
        .into_iter()
        .collect();
        assert_eq!(env, expected);
    }

    #[test]
    fn the_default_worker_is_the_collector_beside_this_executable() {
        let command = Config::default().worker_command().unwrap();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(command.program, exe.with_file_name("collector"));
        assert_eq!(command.args, ["run"]);
    }
}
