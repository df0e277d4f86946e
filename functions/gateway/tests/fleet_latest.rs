//! `GET /api/v1/latest` over the real data set (247 GPUs on 31 hosts, 10 metrics) streamed three
//! times by the streamer and persisted by the collector: every GPU exactly once across pages, in
//! UUID order, with its newest value per metric; filters by host, model and metric; errors.

mod common;

use std::collections::BTreeMap;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn the_latest_values_of_every_gpu_page_by_page() {
    let fixture = Fixture::filled("gateway-fleet-latest", REAL_CSV).await;
    let router = fixture.router().await;
    assert_eq!(fixture.gpus.len(), 247);

    // Each GPU's newest sample per metric, sorted by metric name, GPUs sorted by UUID.
    let expected: Vec<Value> = fixture
        .gpus
        .values()
        .map(|gpu| {
            let mut newest: BTreeMap<&str, &Expected> = BTreeMap::new();
            for sample in &gpu.samples {
                newest.insert(&sample.metric, sample);
            }
            let last_seen = gpu.samples.iter().map(|s| s.timestamp).max().unwrap();
            json!({
                "uuid": gpu.info.uuid.to_string(),
                "gpu_id": gpu.info.gpu_index,
                "hostname": gpu.info.hostname,
                "model_name": gpu.info.model_name,
                "last_seen": rfc3339(last_seen),
                "metrics": newest.values().map(|s| json!({
                    "metric_name": s.metric,
                    "timestamp": rfc3339(s.timestamp),
                    "value": s.value,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    assert!(expected
        .iter()
        .all(|g| g["metrics"].as_array().unwrap().len() == 10));

    let all = get(&router, "/api/v1/latest").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.content_type(), "application/json");
    let all = all.json();
    assert_eq!(all["count"], 247);
    assert_eq!(all["next_cursor"], Value::Null);
    assert_eq!(all["gpus"], json!(expected));

    // Pages of 50 follow each other and hold every GPU once.
    let mut paged = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/api/v1/latest?limit=50".to_string(),
            Some(c) => format!("/api/v1/latest?limit=50&cursor={c}"),
        };
        let page = get(&router, &path).await.json();
        pages += 1;
        let gpus = page["gpus"].as_array().unwrap();
        assert_eq!(page["count"], gpus.len());
        assert_eq!(gpus.len(), if pages < 5 { 50 } else { 47 }, "page {pages}");
        paged.extend(gpus.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(next, gpus.last().unwrap()["uuid"]);
                cursor = Some(next.to_string());
            }
            None => break,
        }
    }
    assert_eq!(pages, 5);
    assert_eq!(json!(paged), json!(expected));
    // A page that ends exactly at the last GPU says so.
    let exact = get(&router, "/api/v1/latest?limit=247").await.json();
    assert_eq!(exact["count"], 247);
    assert_eq!(exact["next_cursor"], Value::Null);

    // Filters: host, model and metrics.
    let host = "mtv5-dgx1-hgpu-012";
    let on_host = get(&router, &format!("/api/v1/latest?hostname={host}"))
        .await
        .json();
    let want: Vec<&Value> = expected.iter().filter(|g| g["hostname"] == host).collect();
    assert_eq!(want.len(), 7);
    assert_eq!(on_host["gpus"], json!(want));
    let model = encode("NVIDIA H100 80GB HBM3");
    let by_model = get(&router, &format!("/api/v1/latest?model_name={model}"))
        .await
        .json();
    assert_eq!(by_model["count"], 247);
    let nothing = get(&router, "/api/v1/latest?hostname=no-such-host")
        .await
        .json();
    assert_eq!(
        nothing,
        json!({"gpus": [], "count": 0, "next_cursor": null})
    );
    let two = get(
        &router,
        "/api/v1/latest?metric_name=DCGM_FI_DEV_GPU_UTIL&metric_name=DCGM_FI_DEV_GPU_TEMP,DCGM_FI_DEV_NOT_REPORTED&limit=1",
    )
    .await
    .json();
    let names: Vec<&str> = two["gpus"][0]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["metric_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_GPU_UTIL"]);
    assert_eq!(two["gpus"][0]["uuid"], expected[0]["uuid"]);

    // Bad input is a 400 before etcd is read; no backend is a 503.
    for query in [
        "limit=0",
        "limit=10001",
        "cursor=..%2Fx",
        "metric_name=a%2Fb",
        "hostname=a&hostname=b",
    ] {
        assert_eq!(
            get(&router, &format!("/api/v1/latest?{query}"))
                .await
                .problem(400),
            "invalid-parameter",
            "{query}"
        );
    }
    // A name the route does not take is the same problem as on every other route.
    assert_eq!(
        get(&router, "/api/v1/latest?step=1m").await.problem(400),
        "unknown-parameter"
    );
    assert_eq!(
        get(&unconnected_router(), "/api/v1/latest")
            .await
            .problem(503),
        "etcd-unavailable"
    );
}
