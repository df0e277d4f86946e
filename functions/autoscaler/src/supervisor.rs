//! Keeps a number of worker processes of one command running: starts them, stops the newest on
//! scale-down with SIGTERM (SIGKILL only after the grace period), and replaces any that exit on
//! their own.
//!
//! Each worker is owned by a task that waits for it to exit, or, when told to stop, signals it
//! and waits out its graceful drain; the task reports the exit on a channel. So a slow drain never
//! blocks the control loop, and a worker that exits while draining is not mistaken for a crash.
//!
//! Workers get `PORT` set to a distinct free port and inherit the rest of the environment (plus
//! the variables of [`WorkerCommand::env`]). Each runs in its own process group: a Ctrl-C in the
//! terminal reaches only the autoscaler, which then stops its workers in order instead of having
//! them race it. Should the supervisor be dropped without [`Supervisor::shutdown`], the worker
//! tasks still stop their workers gracefully, and a runtime shutting down kills them
//! (`kill_on_drop`), so no worker outlives the autoscaler's runtime.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::AutoscalerError;
use crate::metrics::{gauge_value, AutoscalerMetrics};

/// A worker that ran at least this long before exiting counts as healthy: the next restart is
/// immediate. Workers that keep dying sooner are restarted with a growing delay.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// First delay of the restart backoff, doubled per further quick failure.
const RESTART_BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest delay between restarts of a worker that keeps failing.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What to run as a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Variables set for every worker on top of the inherited environment.
    pub env: Vec<(String, String)>,
}

impl WorkerCommand {
    pub fn new(program: impl Into<PathBuf>, args: Vec<String>) -> Self {
        WorkerCommand {
            program: program.into(),
            args,
            env: Vec::new(),
        }
    }

    /// Adds a variable to every worker's environment.
    pub fn with_env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// Fails clearly, before anything starts, when the program cannot be found: a bare name is
    /// looked up on `PATH`, a path must name a file.
    pub fn check(&self) -> Result<(), AutoscalerError> {
        let found = if self.program.components().count() > 1 {
            self.program.is_file()
        } else {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path).any(|dir| dir.join(&self.program).is_file())
        };
        if found {
            Ok(())
        } else {
            Err(AutoscalerError::FindCommand {
                program: self.program.clone(),
                hint: "build the collector (`cargo build -p collector`) or set --command / \
                       AUTOSCALER_COMMAND"
                    .into(),
            })
        }
    }
}

/// The collector binary beside `executable` (the autoscaler's own), run as `collector run`.
pub fn default_worker_command(executable: &Path) -> WorkerCommand {
    WorkerCommand::new(
        executable.with_file_name("collector"),
        vec!["run".to_string()],
    )
}

/// Identity of one worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Sequence number, unique within this supervisor.
    pub id: u64,
    pub pid: u32,
    /// The `PORT` it was given.
    pub port: u16,
}

/// A worker process that ended.
#[derive(Debug)]
pub struct WorkerExit {
    pub worker: WorkerInfo,
    /// `None` if waiting for the process failed.
    pub status: Option<ExitStatus>,
    /// The supervisor had asked it to stop (scale-down or shutdown); otherwise it crashed or quit.
    pub requested: bool,
    /// It outlived the grace period and was killed.
    pub forced: bool,
    /// From start to exit.
    pub ran_for: Duration,
    /// From being told to stop to exit, for a worker that was told.
    pub stopped_in: Option<Duration>,
}

struct RunningWorker {
    info: WorkerInfo,
    stop: oneshot::Sender<()>,
}

/// Keeps [`Supervisor::scale_to`]'s count of workers running.
pub struct Supervisor {
    command: WorkerCommand,
    grace_period: Duration,
    metrics: AutoscalerMetrics,
    next_id: u64,
    /// Oldest first: scale-down stops the newest, which holds the least work.
    running: Vec<RunningWorker>,
    draining: Vec<WorkerInfo>,
    exits_tx: mpsc::UnboundedSender<WorkerExit>,
    exits_rx: mpsc::UnboundedReceiver<WorkerExit>,
    /// Consecutive quick failures (exits or spawn errors), for the restart backoff.
    failure_streak: u32,
    spawn_not_before: Option<Instant>,
}

impl Supervisor {
    pub fn new(command: WorkerCommand, grace_period: Duration, metrics: AutoscalerMetrics) -> Self {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        Supervisor {
            command,
            grace_period,
            metrics,
            next_id: 1,
            running: Vec::new(),
            draining: Vec::new(),
            exits_tx,
            exits_rx,
            failure_streak: 0,
            spawn_not_before: None,
        }
    }

    /// Workers running (not draining).
    pub fn running(&self) -> u32 {
        self.running.len() as u32
    }

    /// Workers told to stop that have not exited yet.
    pub fn draining(&self) -> u32 {
        self.draining.len() as u32
    }

    /// The running workers, oldest first.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.running.iter().map(|w| w.info).collect()
    }

    /// When a start held back by the restart backoff becomes due, if one is.
    pub fn retry_at(&self, target: u32) -> Option<Instant> {
        if self.running() < target {
            self.spawn_not_before
        } else {
            None
        }
    }

    /// Starts or stops workers so that `target` run. Starts wait for the restart backoff (see
    /// [`Supervisor::retry_at`]); stops take the newest workers and return at once, their drain
    /// finishing in the background.
    pub fn scale_to(&mut self, target: u32) {
        while self.running() > target {
            let Some(worker) = self.running.pop() else {
                break;
            };
            tracing::info!(
                pid = worker.info.pid,
                port = worker.info.port,
                grace_period = ?self.grace_period,
                "stopping worker (SIGTERM, then waiting for it to drain)"
            );
            // The task is gone only if the worker already exited; its exit report is on its way.
            let _ = worker.stop.send(());
            self.draining.push(worker.info);
        }
        while self.running() < target {
            if self.spawn_not_before.is_some_and(|t| Instant::now() < t) {
                break;
            }
            match self.spawn() {
                Ok(info) => {
                    self.spawn_not_before = None;
                    tracing::info!(
                        pid = info.pid,
                        port = info.port,
                        program = %self.command.program.display(),
                        args = ?self.command.args,
                        "started worker"
                    );
                }
                Err(e) => {
                    self.metrics.spawn_failures.inc();
                    let delay = self.note_failure();
                    tracing::error!(error = %e, retry_in = ?delay, "cannot start worker");
                    break;
                }
            }
        }
        self.update_gauges();
    }

    /// Waits for the next worker exit and accounts for it: a drained worker leaves the draining
    /// set; a worker that exited on its own is dropped from the running set (so the next
    /// [`Supervisor::scale_to`] replaces it) and counted as a restart. Cancel-safe.
    pub async fn next_exit(&mut self) -> WorkerExit {
        let mut exit = self
            .exits_rx
            .recv()
            .await
            .expect("the supervisor holds a sender, so the channel stays open");
        let id = exit.worker.id;
        // Where the worker was decides, not the task's view: a worker that exited on its own just
        // as it was told to stop was meant to go anyway.
        if let Some(index) = self.draining.iter().position(|w| w.id == id) {
            self.draining.remove(index);
            exit.requested = true;
            if exit.forced {
                self.metrics.forced_kills.inc();
                tracing::warn!(
                    pid = exit.worker.pid,
                    grace_period = ?self.grace_period,
                    "worker did not exit within the grace period; killed it (SIGKILL)"
                );
            }
            tracing::info!(
                pid = exit.worker.pid,
                status = %describe(exit.status),
                stopped_in = ?exit.stopped_in.unwrap_or_default(),
                "worker stopped"
            );
        } else if let Some(index) = self.running.iter().position(|w| w.info.id == id) {
            self.running.remove(index);
            exit.requested = false;
            self.metrics.restarts.inc();
            if exit.ran_for >= HEALTHY_RUN {
                self.failure_streak = 0;
            }
            let delay = self.note_failure();
            tracing::warn!(
                pid = exit.worker.pid,
                port = exit.worker.port,
                status = %describe(exit.status),
                ran_for = ?exit.ran_for,
                restart_in = ?delay,
                "worker exited unexpectedly; replacing it"
            );
        }
        self.update_gauges();
        exit
    }

    /// Stops every worker gracefully and waits until all have exited (each within its grace
    /// period, then killed).
    pub async fn shutdown(mut self) {
        self.scale_to(0);
        while !self.draining.is_empty() {
            self.next_exit().await;
        }
    }

    /// Records a quick failure and returns how long the next start waits.
    fn note_failure(&mut self) -> Duration {
        self.failure_streak = self.failure_streak.saturating_add(1);
        let delay = if self.failure_streak <= 1 {
            Duration::ZERO
        } else {
            let doublings = (self.failure_streak - 2).min(16);
            (RESTART_BACKOFF_START * 2u32.pow(doublings)).min(RESTART_BACKOFF_MAX)
        };
        self.spawn_not_before = Some(Instant::now() + delay);
        delay
    }

    fn spawn(&mut self) -> Result<WorkerInfo, AutoscalerError> {
        let port = self.free_port()?;
        let mut command = Command::new(&self.command.program);
        command
            .args(&self.command.args)
            .envs(self.command.env.iter().map(|(k, v)| (k, v)))
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let spawn_error = |source| AutoscalerError::SpawnWorker {
            program: self.command.program.clone(),
            source,
        };
        let child = command.spawn().map_err(spawn_error)?;
        let pid = child.id().ok_or_else(|| {
            spawn_error(std::io::Error::other(
                "the worker exited before it had a pid",
            ))
        })?;
        let info = WorkerInfo {
            id: self.next_id,
            pid,
            port,
        };
        self.next_id += 1;
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(watch_worker(
            child,
            info,
            stop_rx,
            self.grace_period,
            self.exits_tx.clone(),
        ));
        self.running.push(RunningWorker {
            info,
            stop: stop_tx,
        });
        Ok(info)
    }

    /// A free port no other worker of this supervisor was given.
    fn free_port(&self) -> Result<u16, AutoscalerError> {
        let taken = |port: u16| {
            self.running.iter().any(|w| w.info.port == port)
                || self.draining.iter().any(|w| w.port == port)
        };
        let mut last = 0;
        for _ in 0..16 {
            let port = TcpListener::bind(("127.0.0.1", 0))
                .and_then(|listener| listener.local_addr())
                .map_err(AutoscalerError::PickPort)?
                .port();
            if !taken(port) {
                return Ok(port);
            }
            last = port;
        }
        Err(AutoscalerError::PickPort(std::io::Error::other(format!(
            "the system keeps handing out port {last}, which a worker already has"
        ))))
    }

    fn update_gauges(&self) {
        self.metrics
            .replicas
            .set(gauge_value(self.running.len() as u64));
        self.metrics
            .draining_replicas
            .set(gauge_value(self.draining.len() as u64));
    }
}

/// Owns one worker: reports its exit, or on request (or when the supervisor is gone) sends
/// SIGTERM, waits up to `grace_period`, then SIGKILL.
async fn watch_worker(
    mut child: Child,
    info: WorkerInfo,
    mut stop: oneshot::Receiver<()>,
    grace_period: Duration,
    exits: mpsc::UnboundedSender<WorkerExit>,
) {
    let started = Instant::now();
    let exit = tokio::select! {
        status = child.wait() => WorkerExit {
            worker: info,
            status: status.ok(),
            requested: false,
            forced: false,
            ran_for: started.elapsed(),
            stopped_in: None,
        },
        _ = &mut stop => {
            let stopping_since = Instant::now();
            let (status, forced) = terminate(&mut child, info, grace_period).await;
            WorkerExit {
                worker: info,
                status,
                requested: true,
                forced,
                ran_for: started.elapsed(),
                stopped_in: Some(stopping_since.elapsed()),
            }
        }
    };
    let _ = exits.send(exit);
}

/// SIGTERM, then SIGKILL if the worker is still there after `grace_period`. The child is not
/// reaped before the signal (only `wait` reaps it), so its pid cannot have been reused.
async fn terminate(
    child: &mut Child,
    info: WorkerInfo,
    grace_period: Duration,
) -> (Option<ExitStatus>, bool) {
    match i32::try_from(info.pid) {
        Ok(pid) => {
            if let Err(e) = kill(Pid::from_raw(pid), Signal::SIGTERM) {
                tracing::warn!(pid = info.pid, error = %e, "cannot send SIGTERM to worker");
            }
        }
        Err(_) => tracing::warn!(pid = info.pid, "worker pid out of range; cannot signal it"),
    }
    match tokio::time::timeout(grace_period, child.wait()).await {
        Ok(status) => (status.ok(), false),
        Err(_) => {
            if let Err(e) = child.kill().await {
                tracing::warn!(pid = info.pid, error = %e, "cannot kill worker");
            }
            (child.wait().await.ok(), true)
        }
    }
}

/// An exit status for logs: `exit code 0`, `killed by SIGKILL`, `unknown`.
fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => match Signal::try_from(signal) {
                Ok(signal) => format!("killed by {signal}"),
                Err(_) => format!("killed by signal {signal}"),
            },
            (None, None) => status.to_string(),
        },
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_command_is_the_collector_beside_the_executable() {
        let command = default_worker_command(Path::new("/opt/gpu/bin/autoscaler"));
        assert_eq!(command.program, PathBuf::from("/opt/gpu/bin/collector"));
        assert_eq!(command.args, vec!["run".to_string()]);
        assert!(command.env.is_empty());
    }

    #[test]
    fn missing_commands_fail_the_check_with_a_hint() {
        let err = WorkerCommand::new("/nonexistent/collector", vec![])
            .check()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/collector"), "{text}");
        assert!(text.contains("AUTOSCALER_COMMAND"), "{text}");
        assert!(WorkerCommand::new("no-such-program-here", vec![])
            .check()
            .is_err());
        assert!(
            WorkerCommand::new("sh", vec![]).check().is_ok(),
            "found on PATH"
        );
        assert!(WorkerCommand::new("/bin/sh", vec![]).check().is_ok());
    }

    #[test]
    fn restart_backoff_grows_after_the_first_quick_failure() {
        let mut supervisor = Supervisor::new(
            WorkerCommand::new("/bin/true", vec![]),
            Duration::from_secs(1),
            AutoscalerMetrics::default(),
        );
        let delays: Vec<Duration> = (0..9).map(|_| supervisor.note_failure()).collect();
        let ms = Duration::from_millis;
        assert_eq!(
            delays,
            vec![
                Duration::ZERO,
                ms(250),
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(8000),
                ms(16000),
                ms(30000)
            ]
        );
    }

    #[test]
    fn exit_statuses_read_well_in_logs() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(Some(ExitStatus::from_raw(0))), "exit code 0");
        assert_eq!(describe(Some(ExitStatus::from_raw(3 << 8))), "exit code 3");
        assert_eq!(describe(Some(ExitStatus::from_raw(9))), "killed by SIGKILL");
        assert_eq!(describe(None), "unknown");
    }
}
