//! A real single-member etcd started on free loopback ports with a temporary data directory,
//! optionally with authentication on (a root user, and a user whose role may touch one key prefix
//! only) or a small backend quota (to run into NOSPACE).
//!
//! Tests that touch the queue or the store run against this, never against a mock: the behaviour under
//! test (transactions, leases, watches, compaction, alarms, auth) is etcd's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Client, CompactionOptions, ConnectOptions, Permission,
};
use tempfile::TempDir;

use crate::wait::{free_port, wait_until};

/// How long a member may take to become healthy before the test fails.
pub(crate) const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// The hint printed when no `etcd` binary can be found.
pub(crate) const INSTALL_HINT: &str = "etcd is required by this test but was not found. Install it with \
`apt-get install -y etcd-server etcd-client` (or put an etcd 3.4+ binary on PATH, or set ETCD_BIN).";

/// The flag every etcd the project starts runs with: leases keep their remaining TTL across
/// restarts and leader changes instead of being renewed.
pub(crate) const LEASE_CHECKPOINT: &str = "--experimental-enable-lease-checkpoint";

/// The root user's name; etcd requires it (with the `root` role) before auth can be enabled.
const ROOT_USER: &str = "root";

/// `--snapshot-count` of an auth-enabled member. etcd keeps auth tokens in memory only, and a
/// restarted member replays its log from the last snapshot, re-creating the tokens handed out
/// since: with the default count (100,000 entries) a test's restart would keep every token, a
/// production member's seldom does. With a small count, and [`EtcdHarness::restart`] writing past
/// it first, a restart forgets every token, as in production.
const AUTH_SNAPSHOT_COUNT: u32 = 100;

/// A user of an auth-enabled member whose only permission is `readwrite` on one key prefix, as an
/// operator sharing one etcd between deployments would set it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUser {
    /// User name.
    pub name: String,
    /// The user's password.
    pub password: String,
    /// The role granted to the user (and only to it).
    pub role: String,
    /// The key prefix the role may read and write (`--prefix=true`), ending in `/`.
    pub prefix: String,
}

impl EtcdUser {
    /// Options that log in as this user.
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions::new().with_user(&self.name, &self.password)
    }
}

/// A running etcd member owned by a test. Killed, and its data removed, on drop.
#[derive(Debug)]
pub struct EtcdHarness {
    binary: PathBuf,
    data_dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// The root password once [`EtcdHarness::enable_auth`] turned authentication on.
    root_password: Option<String>,
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
            root_password: None,
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

    /// Starts a fresh member whose backend may hold at most `bytes` (`--quota-backend-bytes`):
    /// writes beyond it raise the NOSPACE alarm, after which etcd refuses every write but deletes
    /// and compaction until the alarm is disarmed ([`EtcdHarness::reclaim_space`]).
    pub async fn start_with_quota(bytes: u64) -> EtcdHarness {
        Self::start_with_args(&[&format!("--quota-backend-bytes={bytes}")]).await
    }

    /// Starts a fresh member with authentication on (and `extra_args`, e.g. `--auth-token-ttl=1`)
    /// and returns it with a user that may read and write `prefix` and nothing else.
    ///
    /// The harness sets auth up through the client API as an operator would with `etcdctl`: the
    /// root user (with the `root` role), a role granted `readwrite` on `prefix` (`--prefix=true`,
    /// `/` appended) and nothing else, and a user with that role; then it enables auth.
    /// [`EtcdHarness::client`] logs in as root from then on, and [`EtcdHarness::restart`] makes
    /// the member forget every token it handed out, as a production member does.
    pub async fn start_with_auth(prefix: &str, extra_args: &[&str]) -> (EtcdHarness, EtcdUser) {
        let snapshot_count = format!("--snapshot-count={AUTH_SNAPSHOT_COUNT}");
        let mut args = vec![snapshot_count.as_str()];
        args.extend_from_slice(extra_args);
        let mut etcd = Self::start_with_args(&args).await;
        let user = etcd.enable_auth(prefix).await;
        (etcd, user)
    }

    async fn enable_auth(&mut self, prefix: &str) -> EtcdUser {
        assert!(self.root_password.is_none(), "auth is already enabled");
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let root_password = format!("root-{suffix}");
        let user = EtcdUser {
            name: format!("telemetry-{}", &suffix[..8]),
            password: format!("secret-{suffix}"),
            role: format!("telemetry-rw-{}", &suffix[..8]),
            prefix: format!("{}/", prefix.trim_end_matches('/')),
        };
        let mut client = self.client().await;
        client.role_add(ROOT_USER).await.expect("add the root role");
        client
            .user_add(ROOT_USER, root_password.as_str(), None)
            .await
            .expect("add the root user");
        client
            .user_grant_role(ROOT_USER, ROOT_USER)
            .await
            .expect("grant root the root role");
        client.role_add(&user.role).await.expect("add the role");
        client
            .role_grant_permission(
                &user.role,
                Permission::read_write(user.prefix.as_str()).with_prefix(),
            )
            .await
            .expect("grant the role readwrite on the prefix");
        client
            .user_add(&user.name, user.password.as_str(), None)
            .await
            .expect("add the user");
        client
            .user_grant_role(&user.name, &user.role)
            .await
            .expect("grant the user its role");
        client.auth_enable().await.expect("enable auth");
        self.root_password = Some(root_password);
        user
    }

    /// The client URL, e.g. `http://127.0.0.1:23791`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A connected client (logged in as root once auth is enabled).
    pub async fn client(&self) -> Client {
        Client::connect([self.endpoint()], Some(self.root_options()))
            .await
            .expect("connect to harness etcd")
    }

    /// A client logged in as `user`.
    pub async fn client_as(&self, user: &EtcdUser) -> Client {
        Client::connect([self.endpoint()], Some(user.connect_options()))
            .await
            .expect("connect to harness etcd as the prefix user")
    }

    /// The alarms raised now (e.g. `Nospace`), from the maintenance API (root only).
    pub async fn alarms(&self) -> Vec<AlarmType> {
        let mut client = self.client().await;
        let response = client
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .expect("list alarms");
        response.alarms().iter().map(|a| a.alarm()).collect()
    }

    /// What an operator does about NOSPACE, in etcd's order: compacts history up to the current
    /// revision (physically), defragments the member so that the freed pages leave the file, and
    /// disarms the alarms (NOSPACE) on every member. Returns the database size before and after,
    /// in bytes.
    pub async fn reclaim_space(&self) -> (i64, i64) {
        let mut client = self.client().await;
        let before = client.status().await.expect("status").db_size();
        let revision = client
            .get("/", None)
            .await
            .expect("read the revision")
            .header()
            .expect("a response header")
            .revision();
        match client
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
        {
            Ok(_) => {}
            // Compacted to this revision already (auto-compaction, an earlier call).
            Err(e) if e.to_string().contains("compacted") => {}
            Err(e) => panic!("compact to revision {revision}: {e}"),
        }
        client.defragment().await.expect("defragment");
        // An alarm is disarmed per member, as `etcdctl alarm disarm` does.
        let alarms = client
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .expect("list alarms");
        for alarm in alarms.alarms() {
            let mut member = AlarmOptions::new();
            member.with_member(alarm.member_id());
            client
                .alarm(AlarmAction::Deactivate, alarm.alarm(), Some(member))
                .await
                .expect("disarm the alarm");
        }
        let after = client.status().await.expect("status").db_size();
        (before, after)
    }

    /// Options that log in as root once auth is on; no timeouts (tests bound their own waits).
    fn root_options(&self) -> ConnectOptions {
        let options = ConnectOptions::new();
        match &self.root_password {
            Some(password) => options.with_user(ROOT_USER, password.as_str()),
            None => options,
        }
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

    /// Starts the same member again (same ports, same data) and waits until it is healthy. With
    /// auth on, it first writes past the next snapshot, so the restarted member has forgotten
    /// every auth token.
    pub async fn restart(&mut self) {
        if self.root_password.is_some() && self.child.is_some() {
            let mut client = self.client().await;
            for i in 0..=AUTH_SNAPSHOT_COUNT {
                let put = client.put("/__harness/snapshot", i.to_string(), None);
                put.await.expect("write towards a snapshot");
            }
        }
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
        let log =
            std::fs::File::create(self.data_dir.path().join("etcd.log")).expect("create etcd log");
        let child = member_command(
            &self.binary,
            name,
            &self.data_dir.path().join("member"),
            &self.endpoint(),
            &peer,
            &format!("{name}={peer}"),
        )
        .args(&self.extra_args)
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
            let options = self
                .root_options()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_secs(2));
            if answers_reads(&self.endpoint(), options).await {
                return true;
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

/// Whether the member at `endpoint` answers a linearizable read (so it has a leader).
pub(crate) async fn answers_reads(endpoint: &str, options: ConnectOptions) -> bool {
    match Client::connect([endpoint], Some(options)).await {
        Ok(mut client) => client.get("/__harness_health", None).await.is_ok(),
        Err(_) => false,
    }
}

/// The command line of one member of a cluster described by `initial_cluster`
/// (`name=peer-url,...`), logging warnings as JSON to the stderr the caller sets.
pub(crate) fn member_command(
    binary: &Path,
    name: &str,
    data_dir: &Path,
    client_url: &str,
    peer_url: &str,
    initial_cluster: &str,
) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("--name")
        .arg(name)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen-client-urls")
        .arg(client_url)
        .arg("--advertise-client-urls")
        .arg(client_url)
        .arg("--listen-peer-urls")
        .arg(peer_url)
        .arg("--initial-advertise-peer-urls")
        .arg(peer_url)
        .arg("--initial-cluster")
        .arg(initial_cluster)
        .arg("--logger")
        .arg("zap")
        .arg("--log-level")
        .arg("warn")
        .arg(LEASE_CHECKPOINT)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// A key prefix no other test uses, so tests can share one etcd without seeing each other's keys.
pub fn unique_prefix(test_name: &str) -> String {
    format!("/test/{test_name}-{}", uuid::Uuid::new_v4().simple())
}

pub(crate) fn find_etcd() -> PathBuf {
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

pub(crate) fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// Whether every thread of `pid` is stopped (state `T` in `/proc/{pid}/task/*/stat`).
pub(crate) fn all_threads_stopped(pid: u32) -> bool {
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

pub(crate) fn clear_dir(dir: &Path) {
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

    #[tokio::test]
    async fn an_auth_enabled_member_confines_its_user_to_the_prefix() {
        let prefix = unique_prefix("auth");
        let (mut etcd, user) = EtcdHarness::start_with_auth(&prefix, &[]).await;
        assert_eq!(user.prefix, format!("{prefix}/"));

        let mut anonymous = Client::connect([etcd.endpoint()], None).await.unwrap();
        let refused = anonymous.get(format!("{prefix}/k"), None).await;
        assert!(refused.is_err(), "an anonymous read succeeded");

        let mut client = etcd.client_as(&user).await;
        client.put(format!("{prefix}/k"), "v", None).await.unwrap();
        let denied = client.put(format!("{prefix}-other/k"), "v", None).await;
        let denied = denied.expect_err("a write outside the prefix succeeded");
        assert!(denied.to_string().contains("permission denied"), "{denied}");
        let defragment = client.defragment().await;
        assert!(defragment.is_err(), "the user defragmented: {defragment:?}");

        // The harness keeps answering as root across a restart, which forgets the user's token.
        etcd.restart().await;
        let rejected = client.get(format!("{prefix}/k"), None).await.unwrap_err();
        assert!(
            rejected.to_string().contains("invalid auth token"),
            "{rejected}"
        );
        let mut root = etcd.client().await;
        let got = root.get(format!("{prefix}/k"), None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"v");
        assert!(etcd.alarms().await.is_empty());
    }

    #[tokio::test]
    async fn a_small_quota_raises_nospace_and_reclaiming_clears_it() {
        let etcd = EtcdHarness::start_with_quota(4 * 1024 * 1024).await;
        let key = format!("{}/big", unique_prefix("quota"));
        let mut client = etcd.client().await;
        let value = vec![b'x'; 512 * 1024];
        let mut refused = None;
        for _ in 0..64 {
            if let Err(e) = client.put(key.as_str(), value.clone(), None).await {
                refused = Some(e);
                break;
            }
        }
        let refused = refused.expect("writes beyond the quota were refused");
        assert!(
            refused.to_string().contains("database space exceeded"),
            "{refused}"
        );
        assert_eq!(etcd.alarms().await, [AlarmType::Nospace]);

        let (before, after) = etcd.reclaim_space().await;
        assert!(
            after < before,
            "defragmenting freed nothing: {before} -> {after}"
        );
        assert!(etcd.alarms().await.is_empty());
        client.put(key.as_str(), "small", None).await.unwrap();
    }

    #[test]
    fn unique_prefixes_differ() {
        assert_ne!(unique_prefix("a"), unique_prefix("a"));
        assert!(unique_prefix("name").starts_with("/test/name-"));
    }
}
