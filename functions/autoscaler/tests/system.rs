//! The whole system as real processes: etcd, the gateway, the autoscaler (which starts collector
//! processes from zero on queue depth) and a streamer doing 3 passes of the real CSV. The gateway
//! must then report exactly 3 x 10 samples for every one of the 247 GPUs over HTTP, the depth key
//! must return to 0, and the autoscaler must scale the collectors back to zero.
//!
//! etcd has authentication on, and every function logs in as a user whose role may read and write
//! the test's prefix and nothing else (the password in a file): least privilege is enough.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{collectors_with, get_json, scrape, wait_ready, Process};
use etcd_queue::{Queue, QueueConfig};
use test_support::{
    build_workspace_binaries, free_port, testdata, unique_prefix, wait_until, EtcdHarness, REAL_CSV,
};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamer_to_gateway_with_collectors_scaled_from_zero_and_back() {
    let bin = build_workspace_binaries();
    let prefix = unique_prefix("system");
    let (etcd, user) = EtcdHarness::start_with_auth(&prefix, &[]).await;
    let password = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(password.path(), format!("{}\n", user.password)).unwrap();
    let csv = testdata(REAL_CSV);
    let env = |command: &mut Command, port: u16| {
        command
            .env("ETCD_ENDPOINTS", etcd.endpoint())
            .env("ETCD_USERNAME", &user.name)
            .env("ETCD_PASSWORD_FILE", password.path())
            .env("TELEMETRY_PREFIX", &prefix)
            .env("PORT", port.to_string())
            .env("QUEUE_LEASE_TTL", "3s")
            .env("RUST_LOG", "warn");
    };
    let (gateway_port, autoscaler_port, streamer_port) = (free_port(), free_port(), free_port());

    let mut gateway = Command::new(bin.join("gateway"));
    gateway.arg("run");
    env(&mut gateway, gateway_port);
    let mut gateway = Process::spawn("gateway", &mut gateway);

    let mut autoscaler = Command::new(bin.join("autoscaler"));
    // The default worker is `collector run`, the collector binary beside the autoscaler.
    autoscaler.args([
        "run",
        "--target",
        "4",
        "--interval",
        "100ms",
        "--stabilization",
        "2s",
        "--cooldown",
        "3s",
        "--grace-period",
        "20s",
    ]);
    env(&mut autoscaler, autoscaler_port);
    let mut autoscaler = Process::spawn("autoscaler", &mut autoscaler);

    // Watch the replica count for the whole run.
    let max_replicas = Arc::new(AtomicU64::new(0));
    let watcher = {
        let max_replicas = max_replicas.clone();
        tokio::spawn(async move {
            loop {
                if let Some(r) = scrape(autoscaler_port, "autoscaler_replicas").await {
                    max_replicas.fetch_max(r as u64, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    wait_until("autoscaler up with 0 collectors", WAIT, || async {
        scrape(autoscaler_port, "autoscaler_replicas").await == Some(0.0)
    })
    .await;
    // Readiness probes stay inside the prefix too, so the restricted user passes them.
    let ready = [gateway_port, autoscaler_port];
    wait_ready("the gateway and the autoscaler ready", ready, WAIT).await;

    let mut streamer = Command::new(bin.join("streamer"));
    streamer.args([
        "run",
        "--csv",
        csv.to_str().unwrap(),
        "--passes",
        "3",
        "--interval",
        "0s",
    ]);
    env(&mut streamer, streamer_port);
    let mut streamer = Process::spawn("streamer", &mut streamer);
    let exit = tokio::task::spawn_blocking(move || {
        let status = streamer.child.wait().unwrap();
        (status, streamer)
    })
    .await
    .unwrap();
    assert!(
        exit.0.success(),
        "streamer exits 0 after 3 passes: {}",
        exit.0
    );

    // Every GPU reports exactly 3 passes x 10 metrics, over HTTP.
    let base = format!("http://127.0.0.1:{gateway_port}/api/v1");
    wait_until("247 GPUs with 30 samples each", WAIT, || async {
        let Some(list) = get_json(&format!("{base}/gpus")).await else {
            return false;
        };
        if list["count"] != 247 {
            return false;
        }
        for gpu in list["gpus"].as_array().unwrap() {
            let id = gpu["uuid"].as_str().unwrap();
            let Some(t) = get_json(&format!("{base}/gpus/{id}/telemetry?limit=1000")).await else {
                return false;
            };
            if t["count"] != 30 {
                return false;
            }
        }
        true
    })
    .await;
    // Exact, not "at least": one more full check after the condition held.
    let list = get_json(&format!("{base}/gpus")).await.unwrap();
    assert_eq!(list["count"], 247);
    for gpu in list["gpus"].as_array().unwrap() {
        let id = gpu["uuid"].as_str().unwrap();
        let t = get_json(&format!("{base}/gpus/{id}/telemetry?limit=1000"))
            .await
            .unwrap();
        assert_eq!(t["count"], 30, "{id}");
        assert_eq!(t["entries"].as_array().unwrap().len(), 30, "{id}");
        assert!(t["next_cursor"].is_null());
    }

    let queue = Queue::open(
        etcd.client().await,
        QueueConfig {
            prefix: prefix.clone(),
            ..QueueConfig::default()
        },
    )
    .await
    .unwrap();
    wait_until("depth key back to 0", WAIT, || async {
        queue.depth_key_value().await.unwrap() == Some(0)
    })
    .await;
    assert!(
        max_replicas.load(Ordering::SeqCst) > 0,
        "the autoscaler never scaled above 0"
    );
    wait_until("collectors scaled back to 0", WAIT, || async {
        scrape(autoscaler_port, "autoscaler_replicas").await == Some(0.0)
            && collectors_with(&prefix).is_empty()
    })
    .await;
    watcher.abort();

    assert!(autoscaler.terminate(), "autoscaler exits 0 on SIGTERM");
    assert!(gateway.terminate(), "gateway exits 0 on SIGTERM");
    assert!(
        collectors_with(&prefix).is_empty(),
        "collector processes left behind"
    );
}
