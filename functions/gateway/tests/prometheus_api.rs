//! The Prometheus HTTP API of the gateway against a real Prometheus (2.42, Debian's package): the
//! hour of samples of the shared PromQL table (`test_support::promql_table`) is written into the
//! store in a real etcd, read back through the gateway's REST API (exactly what was written) and
//! backfilled into Prometheus with promtool; then every query of the table runs as instant
//! queries (GET) and range queries (POST, form-encoded) against the gateway's HTTP API and
//! Prometheus' and the answers must agree (same series and label sets, equal timestamps, values
//! within 1e-9 relative, the same error type where Prometheus fails), as must the dashboard's
//! variable queries through `/api/v1/label/{name}/values`, `/api/v1/series` and `/api/v1/labels`,
//! and `promtool query instant|range|labels|series` pointed at either server.

mod common;

use std::collections::BTreeMap;

use common::{config_for, Served};
use serde_json::Value;
use telemetry_model::{series_labels, TimestampMicros};
use telemetry_store::{group_by_gpu, ChunkTag, TelemetryStore};
use test_support::promql_table::{
    assert_no_differences, compare_answers, openmetrics, seconds_param, series_selectors, table,
    variable_queries, Dataset, Evaluation, LabelSet,
};
use test_support::{http_request, unique_prefix, EtcdHarness, HttpResponse, PrometheusHarness};
use tokio::process::Command;

/// A request to `base` + `path`: GET with the parameters in the query string, or POST with them
/// as a form-encoded body.
async fn call(base: &str, method: &str, path: &str, params: &[(&str, &str)]) -> HttpResponse {
    let encoded: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let result = if method == "GET" {
        http_request("GET", &format!("{base}{path}?{encoded}"), &[], Vec::new()).await
    } else {
        let headers = [("content-type", "application/x-www-form-urlencoded")];
        http_request(
            "POST",
            &format!("{base}{path}"),
            &headers,
            encoded.into_bytes(),
        )
        .await
    };
    result.unwrap_or_else(|e| panic!("{method} {path} failed: {e}"))
}

/// Writes the dataset into the store as the idempotent path stores it; the samples written.
async fn store_dataset(store: &TelemetryStore, data: &Dataset) -> usize {
    let batch = data.sample_batch();
    let stats = store
        .write_idempotent(
            ChunkTag::Seed {
                at: TimestampMicros(data.start_ms * 1000),
            },
            &group_by_gpu([&batch]),
        )
        .await
        .expect("write the dataset");
    assert_eq!((stats.expired, stats.future), (0, 0));
    stats.samples
}

/// Every stored sample, read back through `GET /api/v1/gpus` and the paged
/// `GET /api/v1/gpus/{id}/telemetry`, as series named by [`series_labels`].
async fn read_back(served: &Served, data: &Dataset) -> BTreeMap<LabelSet, Vec<(i64, f64)>> {
    let infos: BTreeMap<&str, _> = data
        .series
        .iter()
        .map(|s| (s.info.uuid.as_str(), &s.info))
        .collect();
    let gpus = served.get("/api/v1/gpus").await.json();
    let mut series: BTreeMap<LabelSet, Vec<(i64, f64)>> = BTreeMap::new();
    for gpu in gpus["gpus"].as_array().unwrap() {
        let uuid = gpu["uuid"].as_str().unwrap();
        let info = infos[uuid];
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/gpus/{uuid}/telemetry?limit=10000");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={}", common::encode(c)));
            }
            let page = served.get(&path).await.json();
            for entry in page["entries"].as_array().unwrap() {
                let metric = entry["metric_name"].as_str().unwrap();
                let t =
                    TimestampMicros::parse_rfc3339(entry["timestamp"].as_str().unwrap()).unwrap();
                series
                    .entry(series_labels(info, metric))
                    .or_default()
                    .push((t.0 / 1000, entry["value"].as_f64().unwrap()));
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
    }
    series
}

/// `promtool query ...`, its standard output. Awaited, not blocking: the gateway it queries is
/// served by this test's runtime.
async fn promtool(args: &[String]) -> String {
    let output = Command::new("promtool")
        .arg("query")
        .args(args)
        .output()
        .await
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool query {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The `data` list of a metadata answer, sorted (label sets as their JSON text).
fn sorted_data(body: &Value) -> Vec<String> {
    assert_eq!(body["status"], "success", "{body}");
    let mut items: Vec<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    items.sort();
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_promql_as_prometheus_does() {
    let data = Dataset::generate();
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("prometheus-api");
    let config = config_for(&etcd, &prefix);
    let store = TelemetryStore::new(etcd.client().await, config.store.store_config(&prefix));
    let written = store_dataset(&store, &data).await;
    assert_eq!(written, data.sample_count());
    let served = Served::start(config).await;

    // The store gives back exactly what was written.
    let stored = read_back(&served, &data).await;
    let expected: BTreeMap<LabelSet, Vec<(i64, f64)>> = data
        .series
        .iter()
        .map(|s| (s.labels.clone(), s.points.clone()))
        .collect();
    assert_eq!(stored.values().map(Vec::len).sum::<usize>(), written);
    assert!(
        stored == expected,
        "the samples read back differ from those written"
    );
    let prometheus = PrometheusHarness::start_with_openmetrics(&openmetrics(
        stored.iter().map(|(l, p)| (l, p.as_slice())),
    ))
    .await;
    let gateway = served.base.clone();
    let reference = prometheus.url();

    let table = table(&data);
    let mut compared = 0;
    let mut failures = Vec::new();
    for query in table.queries() {
        let params = query.params();
        let params: Vec<(&str, &str)> = params.iter().map(|(n, v)| (*n, v.as_str())).collect();
        // Instant queries as GET, range queries as POST (form-encoded), as Grafana sends them.
        let method = match query.evaluation {
            Evaluation::Instant(_) => "GET",
            Evaluation::Range { .. } => "POST",
        };
        let (ours, theirs) = tokio::join!(
            call(&gateway, method, query.path(), &params),
            call(&reference, method, query.path(), &params)
        );
        let what = query.describe();
        compare_answers(
            &what,
            &ours.text(),
            &theirs.text(),
            query.case.check,
            &mut failures,
        );
        if ours.status != theirs.status {
            failures.push(format!(
                "{what}: status {} vs {}",
                ours.status, theirs.status
            ));
        }
        compared += 1;
    }
    assert_no_differences(&failures, compared);

    // The dashboards' variable queries and the series endpoints, as Grafana sends them.
    let (start, end) = (
        seconds_param(data.start_ms),
        seconds_param(data.end_ms() + 1_000),
    );
    let mut metadata_compared = 0;
    for (label, selector) in &variable_queries(&data) {
        let mut params = vec![("start", start.as_str()), ("end", end.as_str())];
        if let Some(s) = selector {
            params.push(("match[]", s));
        }
        let path = format!("/api/v1/label/{label}/values");
        let ours = call(&gateway, "GET", &path, &params).await.json();
        let theirs = call(&reference, "GET", &path, &params).await.json();
        assert!(!sorted_data(&theirs).is_empty(), "{path} {selector:?}");
        assert_eq!(ours, theirs, "{path} {selector:?}");
        metadata_compared += 1;
    }
    for selector in series_selectors(&data) {
        let params = [
            ("start", start.as_str()),
            ("end", end.as_str()),
            ("match[]", &selector),
        ];
        for method in ["GET", "POST"] {
            let ours = call(&gateway, method, "/api/v1/series", &params)
                .await
                .json();
            let theirs = call(&reference, method, "/api/v1/series", &params)
                .await
                .json();
            assert!(!sorted_data(&theirs).is_empty());
            assert_eq!(
                sorted_data(&ours),
                sorted_data(&theirs),
                "series {selector}"
            );
            let ours = call(&gateway, method, "/api/v1/labels", &params)
                .await
                .json();
            let theirs = call(&reference, method, "/api/v1/labels", &params)
                .await
                .json();
            assert_eq!(ours, theirs, "labels {selector}");
            metadata_compared += 2;
        }
    }
    let ours = call(&gateway, "GET", "/api/v1/series", &[]).await;
    let theirs = call(&reference, "GET", "/api/v1/series", &[]).await;
    assert_eq!((ours.status, theirs.status), (400, 400));
    assert_eq!(ours.json()["errorType"], theirs.json()["errorType"]);

    // promtool, pointed at either server, prints the same.
    let end_s = seconds_param(data.end_ms() + 1_000);
    let start_s = seconds_param(data.end_ms() - 600_000);
    let host = format!(r#"DCGM_FI_DEV_GPU_TEMP{{Hostname="{}"}}"#, data.hosts[0]);
    let commands: Vec<Vec<String>> = vec![
        vec![
            "instant".into(),
            "--time".into(),
            end_s.clone(),
            "URL".into(),
            host.clone(),
        ],
        vec![
            "range".into(),
            "--start".into(),
            start_s.clone(),
            "--end".into(),
            end_s.clone(),
            "--step".into(),
            "15s".into(),
            "URL".into(),
            r#"max by (Hostname) (DCGM_FI_DEV_POWER_USAGE)"#.into(),
        ],
        vec!["labels".into(), "URL".into(), "Hostname".into()],
        vec![
            "series".into(),
            "--match".into(),
            host.clone(),
            "URL".into(),
        ],
    ];
    for command in &commands {
        let with = |url: &str| -> Vec<String> {
            command
                .iter()
                .map(|a| {
                    if a == "URL" {
                        url.to_string()
                    } else {
                        a.clone()
                    }
                })
                .collect()
        };
        let ours = promtool(&with(&gateway)).await;
        let theirs = promtool(&with(&reference)).await;
        assert!(
            !theirs.trim().is_empty(),
            "promtool query {command:?} printed nothing"
        );
        assert_eq!(ours, theirs, "promtool query {command:?}");
    }

    eprintln!(
        "over HTTP: {}, {metadata_compared} metadata answers and {} promtool commands; {written} \
         samples stored and read back",
        table.summary(compared),
        commands.len()
    );
}
