//! A real three-member (or larger) etcd cluster on free loopback ports, for tests of leader loss:
//! find the leader through the maintenance `status` API, kill (SIGKILL) or stall (SIGSTOP) a
//! member or the leader, restart it on its data, and wait for the cluster to elect a new leader.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;

use crate::etcd::{
    all_threads_stopped, answers_reads, clear_dir, find_etcd, member_command, send_signal,
    INSTALL_HINT, STARTUP_DEADLINE,
};
use crate::wait::{free_port, wait_until};

/// How long a cluster may take to elect a leader after a member was lost.
const ELECTION_DEADLINE: Duration = Duration::from_secs(60);

/// One member of an [`EtcdCluster`].
#[derive(Debug)]
struct Member {
    name: String,
    data_dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    /// Stopped with SIGSTOP and not resumed yet.
    stalled: bool,
}

impl Member {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stalled = false;
    }
}

/// A running etcd cluster owned by a test; every member is killed, and its data removed, on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    binary: PathBuf,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts a fresh cluster of `size` members and waits until every member answers reads.
    pub async fn start(size: usize) -> EtcdCluster {
        assert!(size >= 1, "a cluster has at least one member");
        let binary = find_etcd();
        let members = (0..size)
            .map(|i| Member {
                name: format!("member-{i}"),
                data_dir: tempfile::Builder::new()
                    .prefix("etcd-cluster-")
                    .tempdir()
                    .expect("create temp data dir for etcd"),
                client_port: 0,
                peer_port: 0,
                child: None,
                stalled: false,
            })
            .collect();
        let mut cluster = EtcdCluster { binary, members };
        // Ports probed free can be taken before etcd binds them; start over on new ones.
        for attempt in 0..5 {
            for member in &mut cluster.members {
                member.client_port = free_port();
                member.peer_port = free_port();
            }
            for i in 0..size {
                cluster.spawn(i);
            }
            if cluster.wait_all_answer().await {
                return cluster;
            }
            for member in &mut cluster.members {
                member.kill();
                clear_dir(member.data_dir.path());
            }
            eprintln!("etcd cluster did not become healthy on attempt {attempt}; retrying");
        }
        panic!("etcd cluster failed to start after 5 attempts");
    }

    /// Number of members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// The client URL of member `index`.
    pub fn endpoint(&self, index: usize) -> String {
        self.members[index].endpoint()
    }

    /// A client balanced over every member.
    pub async fn client(&self) -> Client {
        Client::connect(self.endpoints(), Some(options()))
            .await
            .expect("connect to the harness cluster")
    }

    /// The process id of member `index`, if it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.members[index].child.as_ref().map(Child::id)
    }

    /// The index of the leader the running (not stalled) members agree on, found through each
    /// member's `status`; `None` while they do not agree or have none.
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for (index, member) in self.members.iter().enumerate() {
            if member.child.is_none() || member.stalled {
                continue;
            }
            let status = async {
                let mut client = Client::connect([member.endpoint()], Some(options())).await?;
                client.status().await
            };
            let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), status).await else {
                return None;
            };
            let id = status.header()?.member_id();
            ids.push((id, index));
            leaders.push(status.leader());
        }
        let first = *leaders.first()?;
        if first == 0 || leaders.iter().any(|&leader| leader != first) {
            return None;
        }
        ids.into_iter()
            .find(|&(id, _)| id == first)
            .map(|(_, index)| index)
    }

    /// Waits until the running members agree on a leader other than `not` and returns it.
    pub async fn wait_for_leader(&self, not: Option<usize>) -> usize {
        let deadline = std::time::Instant::now() + ELECTION_DEADLINE;
        loop {
            if let Some(leader) = self.leader().await.filter(|&leader| Some(leader) != not) {
                return leader;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no leader other than {not:?} within {ELECTION_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills member `index` (SIGKILL, as a crash would) and waits for it to exit. Its data stays.
    pub fn kill(&mut self, index: usize) {
        self.members[index].kill();
    }

    /// Kills the current leader (waiting for one first) and returns its index.
    pub async fn kill_leader(&mut self) -> usize {
        let leader = self.wait_for_leader(None).await;
        self.kill(leader);
        leader
    }

    /// Stalls member `index` as a hung host would (SIGSTOP, every thread stopped).
    pub async fn stall(&mut self, index: usize) {
        let pid = self.pid(index).expect("the member runs");
        send_signal(pid, "-STOP");
        wait_until(
            "every thread of the etcd member to stop",
            STARTUP_DEADLINE,
            || async move { all_threads_stopped(pid) },
        )
        .await;
        self.members[index].stalled = true;
    }

    /// Lets a stalled member go on (SIGCONT).
    pub fn resume(&mut self, index: usize) {
        send_signal(self.pid(index).expect("the member runs"), "-CONT");
        self.members[index].stalled = false;
    }

    /// Starts member `index` again on its ports and data and waits until it answers reads.
    pub async fn restart(&mut self, index: usize) {
        self.members[index].kill();
        self.spawn(index);
        let endpoint = self.endpoint(index);
        wait_until(
            "the restarted etcd member to answer reads",
            STARTUP_DEADLINE,
            || {
                let endpoint = endpoint.clone();
                async move { answers_reads(&endpoint, options()).await }
            },
        )
        .await;
    }

    fn spawn(&mut self, index: usize) {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let member = &self.members[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(member.data_dir.path().join("etcd.log"))
            .expect("open etcd log");
        let child = member_command(
            &self.binary,
            &member.name,
            &member.data_dir.path().join("member"),
            &member.endpoint(),
            &member.peer_url(),
            &initial_cluster,
        )
        .args(["--initial-cluster-state", "new"])
        .args(["--initial-cluster-token", "harness-cluster"])
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}. {INSTALL_HINT}", self.binary));
        self.members[index].child = Some(child);
        self.members[index].stalled = false;
    }

    async fn wait_all_answer(&mut self) -> bool {
        let deadline = std::time::Instant::now() + STARTUP_DEADLINE;
        while std::time::Instant::now() < deadline {
            for member in &mut self.members {
                if let Some(child) = member.child.as_mut() {
                    if let Ok(Some(_)) = child.try_wait() {
                        return false;
                    }
                }
            }
            let mut all = true;
            for member in &self.members {
                all &= answers_reads(&member.endpoint(), options()).await;
            }
            if all {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if member.stalled {
                if let Some(pid) = member.child.as_ref().map(Child::id) {
                    send_signal(pid, "-CONT");
                }
            }
            member.kill();
        }
    }
}

fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cluster_elects_a_new_leader_when_its_leader_dies_and_takes_it_back() {
        let mut cluster = EtcdCluster::start(3).await;
        let prefix = crate::unique_prefix("cluster");
        let mut client = cluster.client().await;
        client.put(format!("{prefix}/k"), "v1", None).await.unwrap();

        let first = cluster.kill_leader().await;
        let second = cluster.wait_for_leader(Some(first)).await;
        assert_ne!(first, second);
        let mut survivor = Client::connect([cluster.endpoint(second)], Some(options()))
            .await
            .unwrap();
        survivor
            .put(format!("{prefix}/k"), "v2", None)
            .await
            .unwrap();

        cluster.restart(first).await;
        let mut restarted = Client::connect([cluster.endpoint(first)], Some(options()))
            .await
            .unwrap();
        let got = restarted.get(format!("{prefix}/k"), None).await.unwrap();
        assert_eq!(
            got.kvs()[0].value(),
            b"v2",
            "the restarted member caught up"
        );

        cluster.stall(second).await;
        let third = cluster.wait_for_leader(Some(second)).await;
        assert_ne!(third, second);
        cluster.resume(second);
        assert!(cluster.wait_for_leader(None).await < cluster.size());
    }
}
