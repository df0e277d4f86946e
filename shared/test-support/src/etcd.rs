//! A real single-member etcd started on free loopback ports with a temporary data directory.
//!
//! Tests that touch the queue or the store run against this, never against a mock: the behaviour under
//! test (transactions, leases, watches, compaction) is etcd's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;
use tempfile::TempDir;

use crate::wait::{free_port, wait_until};

/// How long a member may take to become healthy before the test fails.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// The hint printed when no `etcd` binary can be found.
const INSTALL_HINT: &str = "etcd is required by this test but was not found. Install it with \
`apt-get install -y etcd-server etcd-client` (or put an etcd 3.4+ binary on PATH, or set ETCD_BIN).";

/// A running etcd member owned by a test. Killed, and its data removed, on drop.
#[derive(Debug)]
pub struct EtcdHarness {
    binary: PathBuf,
    data_dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl EtcdHarness {
    /// Starts a fresh member and waits until it answers requests.
    pub async fn start() -> EtcdHarness {
        Self::start_with_args(&[]).await
    }

    /// Starts a fresh member with extra etcd flags (e.g. `--auto-compaction-retention`).
    pub async fn start_with_args(extra_args: &[&str]) -> EtcdHarness {
        let binary = find_etcd();
        let data_dir = tempfile::Builder::new()
            .prefix("etcd-harness-")
            .tempdir()
            .expect("create temp data dir for etcd");
        let mut harness = EtcdHarness {
            binary,
            data_dir,
            client_port: 0,
            peer_port: 0,
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        // A free port can be taken by someone else between probing and binding; retry with new ports.
        for attempt in 0..5 {
            harness.client_port = free_port();
            harness.peer_port = free_port();
            harness.spawn();
            if harness.wait_healthy().await {
                return harness;
            }
            harness.kill_child();
            // Leftover WAL from a failed first boot would pin the old peer URL; start clean.
            clear_dir(harness.data_dir.path());
            eprintln!("etcd did not become healthy on attempt {attempt}; retrying on new ports");
        }
        panic!(
            "etcd failed to start after 5 attempts (binary {:?})",
            harness.binary
        );
    }

    /// The client URL, e.g. `http://127.0.0.1:23791`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        Client::connect([self.endpoint()], None)
            .await
            .expect("connect to harness etcd")
    }

    /// The data directory (kept across [`EtcdHarness::restart`]).
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The process id of the running member, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stalls the member as a hung host would: it keeps its connections open and answers nothing
    /// until [`EtcdHarness::resume`]. Sends SIGSTOP, then waits until every thread of the process
    /// has stopped: the signal reaches a busy process's threads only as they are scheduled, and
    /// until then the others go on answering.
    pub async fn stall(&self) {
        let pid = self.pid().expect("etcd runs");
        send_signal(pid, "-STOP");
        wait_until(
            "every etcd thread to stop",
            STARTUP_DEADLINE,
            || async move { all_threads_stopped(pid) },
        )
        .await;
    }

    /// Lets a stalled member go on (SIGCONT).
    pub fn resume(&self) {
        send_signal(self.pid().expect("etcd runs"), "-CONT");
    }

    /// Kills the member (SIGKILL, as a crash would) and waits for it to exit. The data stays.
    pub fn kill(&mut self) {
        self.kill_child();
    }

    /// Starts the same member again (same ports, same data) and waits until it is healthy.
    pub async fn restart(&mut self) {
        self.kill_child();
        self.spawn();
        assert!(
            self.wait_healthy().await,
            "etcd did not come back healthy after restart"
        );
    }

    fn spawn(&mut self) {
        let name = "harness";
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.endpoint();
        let log =
            std::fs::File::create(self.data_dir.path().join("etcd.log")).expect("create etcd log");
        let child = Command::new(&self.binary)
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(self.data_dir.path().join("member"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("{name}={peer}"))
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn")
            .arg("--experimental-enable-lease-checkpoint")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}. {INSTALL_HINT}", self.binary));
        self.child = Some(child);
    }

    async fn wait_healthy(&mut self) -> bool {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let mut backoff = Duration::from_millis(10);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_status)) = child.try_wait() {
                    return false;
                }
            }
            let options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_secs(2));
            if let Ok(mut client) = Client::connect([self.endpoint()], Some(options)).await {
                if client.get("/__harness_health", None).await.is_ok() {
                    return true;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
        false
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdHarness {
    fn drop(&mut self) {
        self.kill_child();
    }
}

/// A key prefix no other test uses, so tests can share one etcd without seeing each other's keys.
pub fn unique_prefix(test_name: &str) -> String {
    format!("/test/{test_name}-{}", uuid::Uuid::new_v4().simple())
}

fn find_etcd() -> PathBuf {
    if let Some(path) = std::env::var_os("ETCD_BIN") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{INSTALL_HINT}"))
}

fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// Whether every thread of `pid` is stopped (state `T` in `/proc/{pid}/task/*/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses and may hold spaces.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        })
    })
}

fn clear_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process_alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| !stat.contains(") Z "))
                .unwrap_or(false)
    }

    #[tokio::test]
    async fn starts_restarts_and_cleans_up() {
        let mut etcd = EtcdHarness::start().await;
        let prefix = unique_prefix("harness");
        let mut client = etcd.client().await;
        client.put(format!("{prefix}/k"), "v1", None).await.unwrap();
        let first_pid = etcd.pid().unwrap();
        let data_dir = etcd.data_dir().to_path_buf();

        etcd.restart().await;
        let second_pid = etcd.pid().unwrap();
        assert_ne!(first_pid, second_pid);
        assert!(!process_alive(first_pid), "old member still running");

        let mut client = etcd.client().await;
        let got = client.get(format!("{prefix}/k"), None).await.unwrap();
        assert_eq!(got.kvs().len(), 1);
        assert_eq!(got.kvs()[0].value(), b"v1", "data survives a restart");

        drop(client);
        drop(etcd);
        assert!(!process_alive(second_pid), "member left running after drop");
        assert!(!data_dir.exists(), "data dir left behind after drop");
    }

    #[tokio::test]
    async fn a_stalled_member_answers_nothing_until_resumed() {
        let etcd = EtcdHarness::start().await;
        let key = format!("{}/k", unique_prefix("stall"));
        let mut client = etcd.client().await;
        client.put(key.as_str(), "v", None).await.unwrap();

        etcd.stall().await;
        let pid = etcd.pid().unwrap();
        assert!(all_threads_stopped(pid));
        let stalled =
            tokio::time::timeout(Duration::from_millis(300), client.get(key.as_str(), None)).await;
        assert!(stalled.is_err(), "a stalled member answered: {stalled:?}");

        etcd.resume();
        let got = client.get(key.as_str(), None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"v");
        assert!(!all_threads_stopped(pid));
    }

    #[test]
    fn unique_prefixes_differ() {
        assert_ne!(unique_prefix("a"), unique_prefix("a"));
        assert!(unique_prefix("name").starts_with("/test/name-"));
    }
}
