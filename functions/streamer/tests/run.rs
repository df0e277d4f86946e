//! The library's `run` in-process, configured with a plain `Config`: it serves health, readiness
//! and metrics on the listener it is given, streams until its shutdown future resolves, releases
//! its shards, and reports exactly what the queue holds.

mod common;

use std::time::Duration;

use common::*;
use function_runtime::{EtcdConfig, Shutdown};
use test_support::{unique_prefix, EtcdHarness};

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

    wait_streaming(port).await;
    assert_eq!(
        http_get(port, "/healthz").await,
        Some((200, r#"{"status":"ok"}"#.to_string()))
    );
    stop.trigger();
    let report = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("run returns after the shutdown future resolved")
        .unwrap()
        .expect("run ends without error");

    assert_eq!(
        assert_exact_and_released(&etcd, &prefix).await,
        report.samples_published
    );
    assert_eq!(
        http_get(port, "/healthz").await,
        None,
        "the server stopped with run"
    );
}
