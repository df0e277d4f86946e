//! Router tests: every route and every error status, in-process against a real etcd.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::*;
use etcd_client::GetOptions;
use etcd_queue::{ConsumerConfig, OutgoingMessage, Queue, QueueKeys};
use function_runtime::Readiness;
use gateway::{app, ApiState, HttpSettings};
use serde_json::json;

const UUID_HOST_0: &str = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50";
const UNKNOWN_UUID: &str = "GPU-00000000-0000-0000-0000-000000000000";

#[tokio::test]
async fn every_route_answers_with_its_documented_shape() {
    let fixture = Fixture::filled("gateway-routes", SLICE_CSV).await;
    let router = fixture.router().await;
    let expected = fixture.gpu(UUID_HOST_0);

    let list = get(&router, "/api/v1/gpus").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.content_type(), "application/json");
    let list = list.json();
    assert_eq!(list["count"], fixture.gpus.len());
    assert_eq!(list["gpus"].as_array().unwrap().len(), fixture.gpus.len());
    let first = list["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["uuid"] == UUID_HOST_0)
        .expect("the GPU is listed");
    assert_eq!(first["hostname"], "mtv5-dgx1-hgpu-031");
    assert_eq!(first["gpu_id"], 0);

    let detail = get(&router, &format!("/api/v1/gpus/{UUID_HOST_0}")).await;
    assert_eq!(detail.status, StatusCode::OK);
    let detail = detail.json();
    for field in [
        "uuid",
        "gpu_id",
        "device",
        "model_name",
        "hostname",
        "first_seen",
        "last_seen",
        "metrics",
    ] {
        assert_eq!(detail[field], first[field], "{field}");
    }
    assert_eq!(detail["container"], json!(null));
    assert_eq!(
        detail["labels"]["DCGM_FI_DRIVER_VERSION"],
        expected.info.labels["DCGM_FI_DRIVER_VERSION"]
    );

    let page = get(&router, &format!("/api/v1/gpus/{UUID_HOST_0}/telemetry")).await;
    assert_eq!(page.status, StatusCode::OK);
    let page = page.json();
    assert_eq!(page["gpu"], *first);
    assert_eq!(entries(&page), expected_entries(&expected.samples));
    assert_eq!(page["count"], expected.samples.len());
    assert_eq!(page["next_cursor"], json!(null));

    let latest = get(&router, &format!("/api/v1/gpus/{UUID_HOST_0}/latest")).await;
    assert_eq!(latest.status, StatusCode::OK);
    let latest = latest.json();
    // Each metric's sample of the last pass, by metric name.
    let mut last_pass = expected.in_pass(&fixture.passes[PASSES - 1]);
    last_pass.sort_by(|a, b| a.metric.cmp(&b.metric));
    assert!(!last_pass.is_empty());
    let want: Vec<_> = last_pass
        .iter()
        .map(|s| json!({"metric_name": s.metric, "timestamp": rfc3339(s.timestamp), "value": s.value}))
        .collect();
    assert_eq!(latest["metrics"], json!(want));
    assert_eq!(latest["count"], want.len());

    let metrics = get(&router, "/api/v1/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let metrics = metrics.json();
    let util = metrics["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "DCGM_FI_DEV_GPU_UTIL")
        .expect("GPU_UTIL listed");
    assert_eq!(util["description"], "GPU utilization (in %).");
    assert_eq!(util["unit"], "%");
    assert_eq!(util["kind"], "gauge");
    let reporting = fixture
        .gpus
        .values()
        .filter(|g| g.samples.iter().any(|s| s.metric == "DCGM_FI_DEV_GPU_UTIL"))
        .count();
    assert_eq!(util["gpu_count"], reporting);

    // The streamer's topic, drained by the collector, which has left the group.
    let queue = get(&router, "/api/v1/queue").await;
    assert_eq!(queue.status, StatusCode::OK);
    let mut queue = queue.json();
    let partitions = queue["partitions"].take();
    assert_eq!(
        queue,
        json!({"topic": "telemetry", "group": "collectors", "exists": true, "depth": 0,
               "dead_letters": 0, "partitions": null, "members": []})
    );
    let partitions = partitions.as_array().expect("partitions is an array");
    assert_eq!(partitions.len(), 16);
    let mut published = 0;
    for (i, partition) in partitions.iter().enumerate() {
        let head = partition["head"].as_u64().expect("head is a number");
        assert_eq!(
            *partition,
            json!({"partition": i, "owner": null, "head": head, "committed_offset": head,
                   "lag": 0}),
        );
        published += head;
    }
    assert_eq!(
        published, fixture.messages,
        "every published message committed"
    );

    let health = get(&router, "/healthz").await;
    assert_eq!(
        (health.status, health.json()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let ready = get(&router, "/readyz").await;
    assert_eq!(
        (ready.status, ready.json()),
        (StatusCode::OK, json!({"status": "ready"}))
    );

    let spec = get(&router, "/openapi.json").await;
    assert_eq!(spec.status, StatusCode::OK);
    assert_eq!(
        spec.json(),
        serde_json::to_value(gateway::openapi()).unwrap()
    );

    let ui = get(&router, "/swagger-ui/").await;
    assert_eq!(ui.status, StatusCode::OK);
    assert!(
        ui.content_type().starts_with("text/html"),
        "{}",
        ui.content_type()
    );
    assert!(ui.text().contains("swagger-ui"));
    let initializer = get(&router, "/swagger-ui/swagger-initializer.js").await;
    assert_eq!(initializer.status, StatusCode::OK);
    assert!(
        initializer.text().contains("/openapi.json"),
        "the UI loads our document"
    );
    let redirect = get(&router, "/swagger-ui").await;
    assert!(redirect.status.is_redirection());

    // Every request above is counted by route template and status.
    let metrics = get(&router, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.text();
    for line in [
        r#"gateway_http_requests_total{route="/api/v1/gpus/{id}/telemetry",method="GET",status="200"} 1"#,
        r#"gateway_http_requests_total{route="/api/v1/gpus",method="GET",status="200"} 1"#,
        r#"gateway_http_request_duration_seconds_count{route="/api/v1/gpus/{id}",method="GET"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

#[tokio::test]
async fn every_error_status_is_a_problem_document() {
    let fixture = Fixture::filled("gateway-errors", SLICE_CSV).await;
    let router = fixture.router().await;
    let telemetry = format!("/api/v1/gpus/{UUID_HOST_0}/telemetry");
    let t = rfc3339(fixture.passes[0].first);

    let bad_requests = [
        format!("{telemetry}?start_time=yesterday"),
        format!("{telemetry}?end_time=2025-02-30T00:00:00Z"),
        format!("{telemetry}?start_time=2&end_time=1"),
        format!("{telemetry}?start_time={}&end_time=1", encode(&t)),
        format!("{telemetry}?limit=0"),
        format!("{telemetry}?limit=10001"),
        format!("{telemetry}?limit=ten"),
        format!("{telemetry}?cursor=not-a-cursor"),
        format!("{telemetry}?order=sideways"),
        format!("{telemetry}?step=soon"),
        format!("{telemetry}?step=0s"),
        format!("{telemetry}?step=1m&agg=median"),
        format!("{telemetry}?metric_name=bad-name"),
        "/api/v1/gpus?hostname=a&hostname=b".to_string(),
    ];
    for uri in &bad_requests {
        assert_eq!(
            get(&router, uri).await.problem(400),
            "invalid-parameter",
            "{uri}"
        );
    }

    let hostile_ids = [
        "GPU-x%2F..%2Fy".to_string(),
        "..".to_string(),
        "%2E%2E".to_string(),
        "GPU-1%00".to_string(),
        "%00".to_string(),
        "GPU%20x".to_string(),
        "%FF%FE".to_string(),
        "a".repeat(65),
        "b".repeat(5000),
    ];
    for id in &hostile_ids {
        for suffix in ["", "/telemetry", "/latest"] {
            let uri = format!("/api/v1/gpus/{id}{suffix}");
            assert_eq!(
                get(&router, &uri).await.problem(400),
                "invalid-gpu-id",
                "{uri}"
            );
        }
    }

    for suffix in ["", "/telemetry", "/latest"] {
        let uri = format!("/api/v1/gpus/{UNKNOWN_UUID}{suffix}");
        assert_eq!(
            get(&router, &uri).await.problem(404),
            "gpu-not-found",
            "{uri}"
        );
    }
    // An unencoded `..` never matches a GPU route.
    assert_eq!(
        get(&router, "/api/v1/gpus/GPU-x/../y").await.problem(404),
        "not-found"
    );
    assert_eq!(get(&router, "/api/v2/gpus").await.problem(404), "not-found");

    let post = send(
        &router,
        Request::post("/api/v1/gpus").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(post.problem(405), "method-not-allowed");

    let small_limit = HttpSettings {
        body_limit: 16,
        ..HttpSettings::default()
    };
    let limited = router_for(&fixture.etcd, &fixture.config(), &small_limit).await;
    let big = send(
        &limited,
        Request::get("/api/v1/gpus")
            .header(header::CONTENT_LENGTH, "100")
            .body(Body::from(vec![b'x'; 100]))
            .unwrap(),
    )
    .await;
    assert_eq!(big.problem(413), "payload-too-large");
}

#[tokio::test]
async fn bad_input_is_rejected_before_etcd_is_touched() {
    // No backend at all: anything that reached etcd would be answered 503.
    let router = app(
        ApiState::connecting(),
        Readiness::new("/gpu-telemetry", Duration::from_secs(1)),
        &HttpSettings::default(),
    );
    for uri in [
        "/api/v1/gpus/GPU-x%2F..%2Fy",
        "/api/v1/gpus/GPU-x%2F..%2Fy/telemetry",
        "/api/v1/gpus/..",
        "/api/v1/gpus/%00/latest",
        "/api/v1/gpus/GPU-1/telemetry?limit=0",
        "/api/v1/gpus/GPU-1/telemetry?start_time=3&end_time=2",
        "/api/v1/gpus?model_name=a&model_name=b",
    ] {
        let reply = get(&router, uri).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{uri}: {}",
            reply.text()
        );
    }
    for uri in [
        "/api/v1/gpus",
        "/api/v1/gpus/GPU-1",
        "/api/v1/gpus/GPU-1/telemetry?limit=5",
        "/api/v1/gpus/GPU-1/latest",
        "/api/v1/metrics",
        "/api/v1/queue",
    ] {
        assert_eq!(
            get(&router, uri).await.problem(503),
            "etcd-unavailable",
            "{uri}"
        );
    }
    let ready = get(&router, "/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["status"], "not ready");
    assert_eq!(get(&router, "/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn unreachable_or_stalled_etcd_gives_503_not_a_hang() {
    let mut fixture = Fixture::filled("gateway-etcd-down", SLICE_CSV).await;
    let mut config = fixture.config();
    config.etcd_read_timeout = Duration::from_millis(500);
    let router = router_for(&fixture.etcd, &config, &HttpSettings::default()).await;
    let timeout_first = HttpSettings {
        request_timeout: Duration::from_millis(200),
        ..HttpSettings::default()
    };
    let mut slow = fixture.config();
    slow.etcd_read_timeout = Duration::from_secs(30);
    let request_bound = router_for(&fixture.etcd, &slow, &timeout_first).await;
    let routes = [
        "/api/v1/gpus".to_string(),
        format!("/api/v1/gpus/{UUID_HOST_0}"),
        format!("/api/v1/gpus/{UUID_HOST_0}/telemetry"),
        format!("/api/v1/gpus/{UUID_HOST_0}/telemetry?step=1s&agg=max"),
        format!("/api/v1/gpus/{UUID_HOST_0}/latest"),
        "/api/v1/metrics".to_string(),
        "/api/v1/queue".to_string(),
    ];
    assert_eq!(get(&router, &routes[0]).await.status, StatusCode::OK);

    // Stalled: etcd accepts connections but answers nothing (SIGSTOP).
    fixture.etcd.stall().await;
    for uri in &routes {
        assert_eq!(
            get(&router, uri).await.problem(503),
            "etcd-unavailable",
            "{uri}"
        );
        assert_eq!(
            get(&request_bound, uri).await.problem(503),
            "request-timeout",
            "{uri}"
        );
    }
    assert_eq!(
        get(&router, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    fixture.etcd.resume();

    // Down: connections are refused.
    fixture.etcd.kill();
    for uri in &routes {
        assert_eq!(
            get(&router, uri).await.problem(503),
            "etcd-unavailable",
            "{uri}"
        );
    }
    assert_eq!(
        get(&router, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Validation still comes first.
    let hostile = get(&router, "/api/v1/gpus/GPU-x%2F..%2Fy").await;
    assert_eq!(hostile.problem(400), "invalid-gpu-id");

    // Back: the same router recovers without a restart.
    fixture.etcd.restart().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while get(&router, &routes[0]).await.status != StatusCode::OK {
        assert!(
            std::time::Instant::now() < deadline,
            "API did not recover after etcd came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn queue_status_reports_partitions_owners_and_lag_without_creating_the_topic() {
    let etcd = test_support::EtcdHarness::start().await;
    let prefix = test_support::unique_prefix("gateway-queue");
    let config = config_for(&etcd, &prefix);
    let router = router_for(&etcd, &config, &HttpSettings::default()).await;

    let before = get(&router, "/api/v1/queue").await.json();
    assert_eq!(before["exists"], false);
    let keys = QueueKeys::new(&prefix, "telemetry").unwrap();
    let mut client = etcd.client().await;
    let under_prefix = client
        .get(
            prefix.clone(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(under_prefix.count(), 0, "the gateway wrote nothing");

    // A topic created by a producer with 4 partitions (the gateway is configured with 16).
    let queue = Queue::open(
        client.clone(),
        etcd_queue::QueueConfig {
            prefix: prefix.clone(),
            partitions: 4,
            ..etcd_queue::QueueConfig::default()
        },
    )
    .await
    .unwrap();
    let mut producer = queue.producer();
    let messages: Vec<OutgoingMessage> = (0..5)
        .map(|i| OutgoingMessage {
            partition: if i < 3 { 1 } else { 2 },
            payload: format!("m{i}").into_bytes(),
        })
        .collect();
    producer.publish_batch(messages).await.unwrap();
    let status = get(&router, "/api/v1/queue").await.json();
    assert_eq!(status["exists"], true);
    assert_eq!(status["depth"], 5);
    let lags: Vec<u64> = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["lag"].as_u64().unwrap())
        .collect();
    assert_eq!(lags, vec![0, 3, 2, 0]);
    assert_eq!(status["partitions"][1]["head"], 3);
    assert_eq!(status["partitions"][1]["committed_offset"], 0);
    assert_eq!(status["partitions"][1]["owner"], json!(null));
    assert_eq!(status["members"], json!([]));

    let mut consumer = queue
        .consumer(ConsumerConfig::new("collector-a"))
        .await
        .unwrap();
    // The first poll claims the partitions (the only member owns them all) and delivers.
    let delivery = consumer
        .poll(Duration::from_secs(30))
        .await
        .unwrap()
        .expect("a delivery");
    consumer.abandon(&delivery);
    let status = get(&router, "/api/v1/queue").await.json();
    let owners: Vec<_> = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["owner"].clone())
        .collect();
    assert_eq!(owners, vec![json!("collector-a"); 4]);
    assert_eq!(status["members"], json!(["collector-a"]));
    assert_eq!(status["depth"], 5, "nothing committed");
    consumer.leave().await.unwrap();
    let meta = client.get(keys.meta(), None).await.unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(meta.kvs()[0].value()).unwrap()["partitions"],
        4,
        "the gateway did not rewrite the topic"
    );
}

#[tokio::test]
async fn cors_is_off_by_default_and_large_responses_are_gzipped() {
    let fixture = Fixture::filled("gateway-http", SLICE_CSV).await;
    let plain = fixture.router().await;
    let with_cors = router_for(
        &fixture.etcd,
        &fixture.config(),
        &HttpSettings {
            cors_origins: vec!["https://dash.example".into()],
            ..HttpSettings::default()
        },
    )
    .await;
    let request = |uri: &str, headers: &[(&str, &str)]| {
        let mut builder = Request::get(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(Body::empty()).unwrap()
    };
    let origin = [("origin", "https://dash.example")];
    let off = send(&plain, request("/api/v1/gpus", &origin)).await;
    assert_eq!(off.status, StatusCode::OK);
    assert!(off
        .headers
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
    let on = send(&with_cors, request("/api/v1/gpus", &origin)).await;
    assert_eq!(
        on.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://dash.example"
    );
    let other = send(
        &with_cors,
        request("/api/v1/gpus", &[("origin", "https://evil.example")]),
    )
    .await;
    assert!(other
        .headers
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());

    let gzip = [("accept-encoding", "gzip")];
    let large = send(&plain, request("/api/v1/gpus", &gzip)).await;
    assert_eq!(large.status, StatusCode::OK);
    assert_eq!(large.headers[header::CONTENT_ENCODING], "gzip");
    let small = send(&plain, request("/healthz", &gzip)).await;
    assert!(small.headers.get(header::CONTENT_ENCODING).is_none());
    assert_eq!(small.json(), json!({"status": "ok"}));
}

/// The library's `run`, configured with a plain `Config`, on a listener bound like `main` binds
/// it: it answers at once, reaches etcd in the background, and returns `Ok` once its shutdown
/// future resolves, having written nothing.
#[tokio::test]
async fn run_serves_on_the_listener_it_is_given_until_shutdown() {
    let etcd = test_support::EtcdHarness::start().await;
    let prefix = test_support::unique_prefix("gateway-run");
    let listener = function_runtime::bind_http(0).unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let stop = function_runtime::Shutdown::new();
    let run = tokio::spawn(gateway::run(config_for(&etcd, &prefix), listener, {
        let stop = stop.clone();
        async move { stop.wait().await }
    }));
    let get = |path: &str| {
        let url = format!("{base}{path}");
        async move { test_support::http_request("GET", &url, &[], Vec::new()).await }
    };
    let health = get("/healthz").await.unwrap();
    assert_eq!(
        (health.status, health.json()),
        (200, json!({"status": "ok"}))
    );
    test_support::wait_until("ready", Duration::from_secs(30), || async {
        get("/readyz").await.is_ok_and(|r| r.status == 200)
    })
    .await;
    let gpus = get("/api/v1/gpus").await.unwrap();
    assert_eq!(
        (gpus.status, gpus.json()),
        (200, json!({"gpus": [], "count": 0, "next_cursor": null}))
    );

    stop.trigger();
    run.await.unwrap().expect("run returns Ok after shutdown");
    assert!(get("/healthz").await.is_err(), "nothing listens any more");
    let mut client = etcd.client().await;
    let written = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(written.count(), 0, "the gateway wrote nothing");
}

/// A misspelled query parameter is a 400 naming it, on every API route; so is a step too fine
/// for the window, whose answer says which step would do (and that one is answered).
#[tokio::test]
async fn unknown_parameters_and_too_many_points_are_400s_saying_what_to_change() {
    let fixture = Fixture::filled("gateway-limits", SLICE_CSV).await;
    let router = fixture.router().await;
    for uri in [
        format!("/api/v1/gpus/{UUID_HOST_0}/telemetry?start_tme=10"),
        "/api/v1/gpus?host=x".to_string(),
        format!("/api/v1/gpus/{UUID_HOST_0}?verbose=1"),
        format!("/api/v1/gpus/{UUID_HOST_0}/latest?metric_name=x"),
        "/api/v1/metrics?limit=1".to_string(),
        "/api/v1/queue?partition=1".to_string(),
    ] {
        let reply = get(&router, &uri).await;
        assert_eq!(reply.problem(400), "unknown-parameter", "{uri}");
        let name = uri.split('?').nth(1).unwrap().split('=').next().unwrap();
        assert!(
            reply.json()["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("{name:?}")),
            "{uri}: {}",
            reply.text()
        );
    }

    let telemetry = format!("/api/v1/gpus/{UUID_HOST_0}/telemetry");
    let reply = get(&router, &format!("{telemetry}?step=1us&agg=max")).await;
    assert_eq!(reply.problem(400), "too-many-points");
    let detail = reply.json()["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("11000 points per series"), "{detail}");
    let suggested = detail
        .split("use step=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no step suggested: {detail}"));
    let fitting = get(
        &router,
        &format!("{telemetry}?step={suggested}&agg=count&limit=10000"),
    )
    .await;
    assert_eq!(fitting.status, StatusCode::OK, "{}", fitting.text());
    let counted: f64 = entries(&fitting.json()).iter().map(|(_, _, n)| n).sum();
    assert_eq!(counted as usize, fixture.gpu(UUID_HOST_0).samples.len());
}

/// `limit` and `cursor` page through the GPU list in UUID order: every GPU exactly once, the
/// last page's cursor null; filters apply across pages.
#[tokio::test]
async fn the_gpu_list_pages_with_limit_and_cursor() {
    let fixture = Fixture::filled("gateway-gpu-pages", SLICE_CSV).await;
    let router = fixture.router().await;
    let all: Vec<String> = fixture.gpus.keys().cloned().collect();
    assert!(all.len() > 5, "{} GPUs", all.len());
    for limit in [1, 2, 3, all.len(), all.len() + 1] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut uri = format!("/api/v1/gpus?limit={limit}");
            if let Some(c) = &cursor {
                uri.push_str(&format!("&cursor={c}"));
            }
            let page = get(&router, &uri).await;
            assert_eq!(page.status, StatusCode::OK, "{uri}: {}", page.text());
            let page = page.json();
            let gpus = page["gpus"].as_array().unwrap();
            assert_eq!(page["count"], gpus.len());
            assert!(gpus.len() <= limit);
            seen.extend(gpus.iter().map(|g| g["uuid"].as_str().unwrap().to_string()));
            pages += 1;
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
        assert_eq!(seen, all, "limit {limit}");
        assert_eq!(pages, all.len().div_ceil(limit), "limit {limit}");
    }
    let host = fixture.gpus[&all[0]].info.hostname.clone().unwrap();
    let on_host: Vec<&String> = all
        .iter()
        .filter(|u| fixture.gpus[*u].info.hostname.as_deref() == Some(host.as_str()))
        .collect();
    let first = get(&router, &format!("/api/v1/gpus?hostname={host}&limit=1"))
        .await
        .json();
    assert_eq!(first["gpus"][0]["uuid"], *on_host[0]);
    assert_eq!(first["next_cursor"].is_string(), on_host.len() > 1);
    let everything = get(&router, "/api/v1/gpus").await.json();
    assert_eq!(everything["count"], all.len());
    assert_eq!(everything["next_cursor"], serde_json::Value::Null);
}

/// With `GATEWAY_MAX_CONCURRENCY` requests in flight, another is answered 503 with Retry-After
/// at once (here: one request held by a stalled etcd); health stays answered.
#[tokio::test]
async fn a_saturated_gateway_answers_503_with_retry_after() {
    let fixture = Fixture::filled("gateway-saturated", SLICE_CSV).await;
    let mut config = fixture.config();
    config.etcd_read_timeout = Duration::from_secs(60);
    config.http = HttpSettings {
        max_concurrency: 1,
        request_timeout: Duration::from_secs(60),
        ..HttpSettings::default()
    };
    let served = std::sync::Arc::new(Served::start(config).await);
    fixture.etcd.stall().await;
    let request = |served: std::sync::Arc<Served>| {
        tokio::spawn(async move { served.get(&format!("/api/v1/gpus/{UUID_HOST_0}")).await })
    };
    let mut first = request(served.clone());
    let mut second = request(served.clone());
    // One of the two holds the only permit, waiting on etcd; the other is refused at once.
    let (refused, held) = tokio::select! {
        reply = &mut first => (reply.unwrap(), second),
        reply = &mut second => (reply.unwrap(), first),
    };
    assert_eq!(refused.problem(503), "overloaded");
    assert_eq!(refused.headers[header::RETRY_AFTER], "1");
    assert_eq!(served.get("/healthz").await.status, StatusCode::OK);
    fixture.etcd.resume();
    let held = held.await.unwrap();
    assert_eq!(held.status, StatusCode::OK, "{}", held.text());
    // The permit is back once that answer is sent.
    assert_eq!(
        served
            .get(&format!("/api/v1/gpus/{UUID_HOST_0}"))
            .await
            .status,
        StatusCode::OK
    );
}

/// A PromQL selector with a `Hostname` matcher picks its series from the registry: only the
/// chunks of that host's GPUs are read, and every series of theirs comes back, each in time order.
#[tokio::test]
async fn a_label_matcher_reads_only_the_matching_gpus_chunks() {
    use promql_engine::{parse_series_selector, SeriesSource};
    let fixture = Fixture::filled("gateway-promql-select", SLICE_CSV).await;
    let backend = gateway::Backend::new(fixture.etcd.client().await, &fixture.config());
    let hosts: std::collections::BTreeSet<String> = fixture
        .gpus
        .values()
        .filter_map(|gpu| gpu.info.hostname.clone())
        .collect();
    assert!(hosts.len() > 1, "{} hosts", hosts.len());
    let host = hosts.first().unwrap();
    let on_host: Vec<&String> = fixture
        .gpus
        .keys()
        .filter(|u| fixture.gpus[*u].info.hostname.as_deref() == Some(host.as_str()))
        .collect();
    let matchers = parse_series_selector(&format!(r#"{{Hostname="{host}"}}"#)).unwrap();
    let source = gateway::prom_source::StoreSeries::new(&backend);
    let series = source.select(&matchers, 0, i64::MAX / 1000).await.unwrap();
    assert_eq!(source.gpus_read(), on_host.len(), "GPUs read for {host}");
    let expected: usize = on_host
        .iter()
        .map(|u| {
            let metrics: std::collections::BTreeSet<_> = fixture.gpus[*u]
                .samples
                .iter()
                .map(|s| s.metric.clone())
                .collect();
            metrics.len()
        })
        .sum();
    assert_eq!(series.len(), expected, "series of {host}");
    let points: usize = series.iter().map(|s| s.samples.len()).sum();
    let stored: usize = on_host.iter().map(|u| fixture.gpus[*u].samples.len()).sum();
    assert_eq!(points, stored, "samples of {host}");
    for s in &series {
        assert_eq!(s.labels.get("Hostname"), Some(host.as_str()));
        assert!(s.samples.windows(2).all(|w| w[0].t_ms < w[1].t_ms));
    }
}
