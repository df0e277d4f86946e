//! The library's `run` in-process, configured with a plain `Config`: it serves health, readiness
//! and metrics on the listener it is given, streams until its shutdown future resolves, releases
//! its shards, and reports exactly what the queue holds.

mod common;

use std::time::Duration;

use common::*;
use etcd_queue::Queue;
use function_runtime::{EtcdConfig, Shutdown};
use test_support::{http_request, unique_prefix, EtcdHarness};

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let response = http_request(
        "GET",
        &format!("http://127.0.0.1:{port}{path}"),
        &[],
        vec![],
    )
    .await
    .ok()?;
    Some((response.status, response.text()))
}

fn samples_published(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("streamer_samples_published_total ")?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_streams_until_shutdown_and_reports_what_the_queue_holds() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("run");
    let config = streamer::Config {
        etcd: EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            prefix: prefix.clone(),
            ..EtcdConfig::default()
        },
        csv: testdata(REAL_CSV),
        interval: Duration::ZERO,
        rate: 20_000,
        member_id: "in-process".into(),
        ..streamer::Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Shutdown::new();
    let run = tokio::spawn(streamer::run(config, listener, {
        let stop = stop.clone();
        async move { stop.wait().await }
    }));

    wait_until(
        "healthy, ready and publishing",
        Duration::from_secs(30),
        || async {
            let (Some((200, health)), Some((200, _)), Some((200, metrics))) = (
                get(port, "/healthz").await,
                get(port, "/readyz").await,
                get(port, "/metrics").await,
            ) else {
                return false;
            };
            assert_eq!(health, r#"{"status":"ok"}"#);
            samples_published(&metrics) > 0.0
        },
    )
    .await;
    stop.trigger();
    let report = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("run returns after the shutdown future resolved")
        .unwrap()
        .expect("run ends without error");

    let client = etcd.client().await;
    assert_eq!(
        group_keys(&client, &prefix, "owner").await,
        Vec::<String>::new()
    );
    assert_eq!(
        group_keys(&client, &prefix, "member").await,
        Vec::<String>::new()
    );
    let queue = Queue::open(client.clone(), queue_config(&prefix))
        .await
        .unwrap();
    let samples = queued_samples(&queue).await;
    assert_eq!(samples.len() as u64, report.samples_published);
    assert_eq!(
        report.samples_published,
        samples_per_states(
            &shard_states(&client, &prefix).await,
            &rows_per_shard(REAL_CSV)
        )
    );
    assert_timestamps_increase_per_gpu(&samples);
    assert_eq!(
        get(port, "/healthz").await,
        None,
        "the server stopped with run"
    );
}
