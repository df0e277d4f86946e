//! What the tests that run the whole system as real processes share: child processes stopped on
//! drop, JSON over HTTP, scraping one metric, and finding collector processes by their prefix.

#![allow(dead_code)]

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use test_support::{http_request, wait_until};

/// A child process that is stopped with SIGTERM (then waited for) when dropped.
pub struct Process {
    pub name: String,
    pub child: Child,
}

impl Process {
    /// Spawns `command` with stdin and stdout closed (stderr as the command sets it).
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> Self {
        let name = name.into();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Process { name, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it exited, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("query the child's state")
    }

    /// SIGTERM, then wait; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// SIGKILL, as a crash would, then wait for it to be gone.
    pub fn kill(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if !self.terminate() {
                eprintln!("{} did not exit cleanly", self.name);
            }
        }
    }
}

/// The JSON body of a 200 answer to `GET url`, `None` for anything else.
pub async fn get_json(url: &str) -> Option<serde_json::Value> {
    let response = http_request("GET", url, &[], Vec::new()).await.ok()?;
    (response.status == 200).then(|| response.json())
}

/// Waits until the function serving on each of `ports` answers `/readyz` with `ready`.
pub async fn wait_ready(what: &str, ports: impl IntoIterator<Item = u16>, limit: Duration) {
    for port in ports {
        wait_until(what, limit, || async move {
            let url = format!("http://127.0.0.1:{port}/readyz");
            get_json(&url)
                .await
                .is_some_and(|body| body["status"] == "ready")
        })
        .await;
    }
}

/// The value of the sample of `metric` (no labels) on the `/metrics` page served on `port`.
pub async fn scrape(port: u16, metric: &str) -> Option<f64> {
    let response = http_request(
        "GET",
        &format!("http://127.0.0.1:{port}/metrics"),
        &[],
        Vec::new(),
    )
    .await
    .ok()?;
    response
        .text()
        .lines()
        .find(|l| l.split(' ').next() == Some(metric))
        .and_then(|l| l.split(' ').nth(1)?.parse().ok())
}

/// Whether process `pid` runs (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

/// Pids of live collector processes whose environment contains `needle` (the test's prefix).
pub fn collectors_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline);
        if text.contains("collector")
            && String::from_utf8_lossy(&environ).contains(needle)
            && alive(pid)
        {
            pids.push(pid);
        }
    }
    pids
}
