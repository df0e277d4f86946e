//! The collector's `POST /` over real HTTP: the bearer token, the body limit, and samples stamped
//! beyond the future bound, each on its own.

mod common;

use std::time::Duration;

use common::*;
use telemetry_model::{BatchEvent, SampleBatch, TimestampMicros};
use test_support::{http_request, unique_prefix, EtcdHarness};

const STRUCTURED: (&str, &str) = ("content-type", "application/cloudevents+json");

/// An event of `count` samples of the real data, the i-th stamped `stamp(i)`.
fn event(id: &str, count: usize, stamp: impl Fn(usize) -> i64) -> BatchEvent {
    let mut builder = SampleBatch::builder();
    for (i, (info, metric, value)) in real_rows().iter().take(count).enumerate() {
        builder.push(info, metric, TimestampMicros(stamp(i)), *value);
    }
    BatchEvent::new(id, "/test/ingest", builder.build())
}

async fn start(prefix: &str, etcd: &EtcdHarness, ingest: collector::IngestSettings) -> InProcess {
    let collector = InProcess::start(collector::Config {
        ingest,
        ..config_for(&etcd.endpoint(), prefix, "ingest")
    })
    .await;
    collector.wait_ready().await;
    collector
}

/// With a token configured, `POST /` without it (or with another) is refused with 401 before
/// anything is stored; with it, the event is stored. Health and metrics need no token.
#[tokio::test]
async fn a_configured_bearer_token_is_required() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("ingest-token");
    let collector = start(
        &prefix,
        &etcd,
        collector::IngestSettings {
            token: Some("s3cret-token".into()),
            ..collector::IngestSettings::default()
        },
    )
    .await;
    let now = TimestampMicros::now().0;
    let body = event("tok", 10, |i| now - 1_000_000 + i as i64).to_json();
    for authorization in [
        None,
        Some("Bearer wrong-token!"),
        Some("Bearer s3cret-toke"),
        Some("Basic s3cret-token"),
        Some("s3cret-token"),
    ] {
        let mut headers = vec![STRUCTURED];
        headers.extend(authorization.map(|a| ("authorization", a)));
        let refused = http_request("POST", &collector.url("/"), &headers, body.clone())
            .await
            .unwrap();
        assert_eq!(refused.status, 401, "{authorization:?}: {}", refused.text());
        assert_eq!(
            refused.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
        assert_eq!(refused.json()["status"], 401);
    }
    let store = store_for(etcd.client().await, &prefix);
    assert_eq!(
        store.footprint().await.unwrap().samples,
        0,
        "nothing stored"
    );
    for authorization in ["Bearer s3cret-token", "bearer s3cret-token"] {
        let accepted = http_request(
            "POST",
            &collector.url("/"),
            &[STRUCTURED, ("authorization", authorization)],
            body.clone(),
        )
        .await
        .unwrap();
        assert_eq!(accepted.status, 200, "{}", accepted.text());
    }
    assert_eq!(store.footprint().await.unwrap().samples, 10, "stored once");
    assert_eq!(collector.get("/healthz").await.0, 200);
    assert_eq!(collector.get("/metrics").await.0, 200);
    collector.stop().await;
}

/// A body over the limit is refused with 413 and a problem document; one within it is stored.
#[tokio::test]
async fn a_body_over_the_limit_is_refused() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("ingest-limit");
    let limit = 4 * 1024;
    let collector = start(
        &prefix,
        &etcd,
        collector::IngestSettings {
            body_limit: limit,
            ..collector::IngestSettings::default()
        },
    )
    .await;
    let now = TimestampMicros::now().0;
    let small = event("small", 10, |i| now - 1_000_000 + i as i64).to_json();
    let large = event("large", 400, |i| now - 1_000_000 + i as i64).to_json();
    assert!(small.len() <= limit && large.len() > limit);
    let refused = http_request("POST", &collector.url("/"), &[STRUCTURED], large)
        .await
        .unwrap();
    assert_eq!(refused.status, 413, "{}", refused.text());
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        refused.json()["detail"],
        "the body exceeds 4096 bytes (COLLECTOR_BODY_LIMIT)"
    );
    let accepted = http_request("POST", &collector.url("/"), &[STRUCTURED], small)
        .await
        .unwrap();
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    let store = store_for(etcd.client().await, &prefix);
    assert_eq!(store.footprint().await.unwrap().samples, 10);
    collector.stop().await;
}

/// Samples stamped further ahead than the future bound are rejected and counted over HTTP as on
/// the queue path; the rest of the event is stored exactly.
#[tokio::test]
async fn samples_beyond_the_future_bound_are_rejected_over_http() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("ingest-future");
    let collector = start(&prefix, &etcd, collector::IngestSettings::default()).await;
    let now = TimestampMicros::now().0;
    let hour = 3_600_000_000;
    // Of 10 samples, 4 are stamped an hour ahead (past the default bound of 5 minutes).
    let mixed = event("mixed", 10, |i| {
        if i % 3 == 0 {
            now + hour + i as i64
        } else {
            now - 1_000_000 + i as i64
        }
    });
    let response = http_request("POST", &collector.url("/"), &[STRUCTURED], mixed.to_json())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.json(),
        serde_json::json!({"id": "mixed", "samples": 6, "expired": 0, "rejected_future": 4})
    );
    let store = store_for(etcd.client().await, &prefix);
    assert_eq!(store.footprint().await.unwrap().samples, 6);
    let metrics = collector.get("/metrics").await.1;
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"collector_samples_rejected_total{reason="future"} 4"#),
        "{metrics}"
    );
    tokio::time::timeout(Duration::from_secs(60), collector.stop())
        .await
        .unwrap();
}
