//! The gateway served over HTTP on a real etcd holding the real data set (2,470 rows, 247 GPUs on
//! 31 hosts, 10 metrics), streamed three times, a second apart, by the streamer and persisted by
//! the collector: exact listings, counts, inclusive bounds to the microsecond, pagination,
//! aggregation, and ids that could escape the key space.

mod common;

use std::collections::BTreeMap;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};

async fn served(test: &str) -> (Fixture, Served) {
    let fixture = Fixture::filled(test, REAL_CSV).await;
    let served = Served::start(fixture.config()).await;
    (fixture, served)
}

async fn ok_json(served: &Served, path: &str) -> Value {
    let reply = served.get(path).await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
    assert_eq!(reply.content_type(), "application/json", "{path}");
    reply.json()
}

/// Requests `path` and the pages after it, following `next_cursor` until it is null; hands each
/// page to `visit` and returns how many there were.
async fn each_page(served: &Served, path: &str, mut visit: impl FnMut(&Value)) -> usize {
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = path.to_string();
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={}", encode(c)));
        }
        let page = ok_json(served, &url).await;
        pages += 1;
        visit(&page);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return pages,
        }
    }
}

#[tokio::test]
async fn all_247_gpus_are_listed_with_correct_fields() {
    let (fixture, served) = served("gateway-real-list").await;
    assert_eq!(fixture.gpus.len(), 247);
    let list = ok_json(&served, "/api/v1/gpus").await;
    assert_eq!(list["count"], 247);
    let gpus = list["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 247);

    // In UUID order (the registry's, so the list streams in bounded memory).
    let expected: Vec<&ExpectedGpu> = fixture.gpus.values().collect();
    for (got, want) in gpus.iter().zip(&expected) {
        assert_eq!(want.samples.len(), 10 * PASSES);
        let first = want.samples[0].timestamp;
        let last = want.samples[want.samples.len() - 1].timestamp;
        assert!(fixture.passes[0].contains(first) && fixture.passes[PASSES - 1].contains(last));
        let metrics: Vec<String> = {
            let mut m: Vec<String> = want.samples.iter().map(|s| s.metric.clone()).collect();
            m.sort();
            m.dedup();
            m
        };
        assert_eq!(metrics.len(), 10);
        assert_eq!(
            *got,
            json!({
                "uuid": want.info.uuid.to_string(),
                "gpu_id": want.info.gpu_index,
                "device": want.info.device,
                "model_name": want.info.model_name,
                "hostname": want.info.hostname,
                "first_seen": rfc3339(first),
                "last_seen": rfc3339(last),
                "metrics": metrics,
            })
        );
    }
    let hosts: std::collections::BTreeSet<String> = gpus
        .iter()
        .map(|g| g["hostname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hosts.len(), 31);

    let on_host = ok_json(&served, "/api/v1/gpus?hostname=mtv5-dgx1-hgpu-031").await;
    let want_on_host = expected
        .iter()
        .filter(|g| g.info.hostname.as_deref() == Some("mtv5-dgx1-hgpu-031"))
        .count();
    assert_eq!(on_host["count"], want_on_host);
    let uuids: Vec<_> = on_host["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["uuid"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = uuids.clone();
    sorted.sort();
    assert_eq!(uuids, sorted, "sorted by UUID");

    let model = expected[0].info.model_name.clone().unwrap();
    let of_model = ok_json(
        &served,
        &format!("/api/v1/gpus?model_name={}", encode(&model)),
    )
    .await;
    let want_of_model = expected
        .iter()
        .filter(|g| g.info.model_name.as_deref() == Some(model.as_str()))
        .count();
    assert_eq!(of_model["count"], want_of_model);
    let none = ok_json(&served, "/api/v1/gpus?hostname=no-such-host").await;
    assert_eq!(none, json!({"gpus": [], "count": 0, "next_cursor": null}));
}

#[tokio::test]
async fn per_gpu_counts_and_contents_are_exact() {
    let (fixture, served) = served("gateway-real-counts").await;
    let mut total = 0;
    for (uuid, gpu) in &fixture.gpus {
        let page = ok_json(
            &served,
            &format!("/api/v1/gpus/{uuid}/telemetry?limit=10000"),
        )
        .await;
        assert_eq!(page["count"], 30, "{uuid}");
        assert_eq!(entries(&page), expected_entries(&gpu.samples), "{uuid}");
        assert_eq!(page["next_cursor"], json!(null));
        total += page["count"].as_u64().unwrap();

        let one_metric = ok_json(
            &served,
            &format!("/api/v1/gpus/{uuid}/telemetry?metric_name=DCGM_FI_DEV_POWER_USAGE"),
        )
        .await;
        let want: Vec<_> = gpu
            .samples
            .iter()
            .filter(|s| s.metric == "DCGM_FI_DEV_POWER_USAGE")
            .collect();
        assert_eq!(entries(&one_metric), expected_entries(want), "{uuid}");
    }
    assert_eq!(total, 2_470 * PASSES as u64);

    let (uuid, gpu) = fixture.gpus.iter().next().unwrap();
    let latest = ok_json(&served, &format!("/api/v1/gpus/{uuid}/latest")).await;
    // Each metric's sample of the last pass, by metric name.
    let mut last_pass = gpu.in_pass(&fixture.passes[PASSES - 1]);
    last_pass.sort_by(|a, b| a.metric.cmp(&b.metric));
    let want: Vec<_> = last_pass
        .iter()
        .map(|s| json!({"metric_name": s.metric, "timestamp": rfc3339(s.timestamp), "value": s.value}))
        .collect();
    assert_eq!(want.len(), 10);
    assert_eq!(latest["metrics"], json!(want));
    assert_eq!(latest["count"], 10);

    let metrics = ok_json(&served, "/api/v1/metrics").await;
    assert_eq!(metrics["count"], 10);
    for metric in metrics["metrics"].as_array().unwrap() {
        assert_eq!(metric["gpu_count"], 247, "{metric}");
        assert!(metric["description"].is_string(), "{metric}");
        assert!(metric["unit"].is_string(), "{metric}");
    }
}

#[tokio::test]
async fn time_bounds_are_inclusive_to_the_microsecond() {
    let (fixture, served) = served("gateway-real-bounds").await;
    let (uuid, gpu) = fixture.gpus.iter().nth(100).unwrap();
    let [first_pass, middle_pass, last_pass] = [0, 1, PASSES - 1].map(|i| fixture.passes[i]);
    // The GPU's first sample of the middle pass, stamped by the streamer: no other sample of the
    // GPU lies within a microsecond of it.
    let at_middle = gpu.in_pass(&middle_pass);
    assert_eq!(at_middle.len(), 10);
    let sample = at_middle[0];
    let t = sample.timestamp;
    assert_eq!(gpu.between(t - 1, t + 1), vec![sample]);
    let window = |start: i64, end: i64| {
        format!(
            "/api/v1/gpus/{uuid}/telemetry?start_time={}&end_time={}",
            encode(&rfc3339(start)),
            encode(&rfc3339(end))
        )
    };

    // start = end = the sample's exact time: exactly that sample.
    let exact = ok_json(&served, &window(t, t)).await;
    assert_eq!(entries(&exact), expected_entries([sample]));
    // One microsecond off on either side: nothing.
    for (start, end) in [(t + 1, t + 1), (t - 1, t - 1)] {
        let off = ok_json(&served, &window(start, end)).await;
        assert_eq!(off["count"], 0, "[{start}, {end}]");
    }
    // A window ending 1 µs before it holds exactly the first pass; one starting 1 µs after it
    // holds the rest of the middle pass and the last pass.
    let before = ok_json(&served, &window(first_pass.first, t - 1)).await;
    assert_eq!(entries(&before), expected_entries(gpu.in_pass(&first_pass)));
    assert_eq!(before["count"], 10);
    let after = ok_json(&served, &window(t + 1, last_pass.last)).await;
    let mut rest: Vec<&Expected> = at_middle[1..].to_vec();
    rest.extend(gpu.in_pass(&last_pass));
    assert_eq!(entries(&after), expected_entries(rest));
    assert_eq!(after["count"], 19);
    // ...and one including it by 1 µs on each side includes exactly it.
    let around = ok_json(&served, &window(t - 1, t + 1)).await;
    assert_eq!(entries(&around), expected_entries([sample]));
    // The whole middle pass, bounds being its first and last stamps.
    let pass = ok_json(&served, &window(middle_pass.first, middle_pass.last)).await;
    assert_eq!(entries(&pass), expected_entries(at_middle.iter().copied()));

    // The same bound written as Unix seconds, and with an offset.
    let seconds = format!("{}.{:06}", t.div_euclid(1_000_000), t.rem_euclid(1_000_000));
    let unix = ok_json(
        &served,
        &format!("/api/v1/gpus/{uuid}/telemetry?start_time={seconds}&end_time={seconds}"),
    )
    .await;
    assert_eq!(entries(&unix), expected_entries([sample]));
    // The same instant as local time at UTC+2.
    let shifted = rfc3339(t + 2 * 3_600_000_000).replace('Z', "+02:00");
    let offset = ok_json(
        &served,
        &format!(
            "/api/v1/gpus/{uuid}/telemetry?start_time={}&end_time={}",
            encode(&shifted),
            encode(&shifted)
        ),
    )
    .await;
    assert_eq!(entries(&offset), expected_entries([sample]));
}

#[tokio::test]
async fn pagination_returns_every_entry_exactly_once_in_order() {
    let (fixture, served) = served("gateway-real-pages").await;
    let (uuid, gpu) = fixture.gpus.iter().nth(7).unwrap();
    for (order, limit) in [
        ("asc", 7),
        ("desc", 7),
        ("asc", 1),
        ("desc", 30),
        ("asc", 29),
    ] {
        let mut seen = Vec::new();
        let path = format!("/api/v1/gpus/{uuid}/telemetry?limit={limit}&order={order}");
        let pages = each_page(&served, &path, |page| {
            let got = entries(page);
            assert!(got.len() <= limit);
            assert_eq!(page["count"], got.len());
            seen.extend(got);
        })
        .await;
        let mut want = expected_entries(&gpu.samples);
        if order == "desc" {
            want.reverse();
        }
        assert_eq!(seen, want, "order={order} limit={limit}");
        assert_eq!(
            pages,
            30usize.div_ceil(limit),
            "order={order} limit={limit}"
        );
    }
}

/// Stores 240 samples of two metrics for an extra, synthetic GPU (not in the CSV), 250 ms apart
/// starting mid-second, with values that change on every sample, and returns what was stored.
/// They are written directly with the store's idempotent write, not through the pipeline.
async fn varying_gpu(fixture: &Fixture) -> ExpectedGpu {
    use telemetry_model::{GpuInfo, GpuUuid, MetricName, SampleBatch, TimestampMicros};
    let info = GpuInfo::new(GpuUuid::parse("GPU-varying-values").unwrap());
    let metrics = [
        MetricName::parse("DCGM_FI_DEV_GPU_TEMP").unwrap(),
        MetricName::parse("DCGM_FI_DEV_POWER_USAGE").unwrap(),
    ];
    let start = fixture.passes[0].first + 250_000;
    let mut builder = SampleBatch::builder();
    let mut samples = Vec::new();
    for i in 0..120i64 {
        for (m, metric) in metrics.iter().enumerate() {
            let timestamp = start + i * 250_000;
            let value = ((i * 37 + m as i64 * 11) % 101) as f64 / 4.0;
            builder.push(&info, metric, TimestampMicros(timestamp), value);
            samples.push(Expected {
                timestamp,
                metric: metric.to_string(),
                value,
            });
        }
    }
    let batch = builder.build();
    fixture
        .store
        .write_idempotent(
            telemetry_store::ChunkTag::Event {
                source: "/test",
                id: "varying",
            },
            &telemetry_store::group_by_gpu([&batch]),
        )
        .await
        .unwrap();
    samples.sort_by(|a, b| (a.timestamp, &a.metric).cmp(&(b.timestamp, &b.metric)));
    ExpectedGpu { info, samples }
}

fn expected_aggregate(samples: &[Expected], step: i64, agg: &str) -> Vec<(String, String, f64)> {
    let mut buckets: BTreeMap<(i64, String), Vec<&Expected>> = BTreeMap::new();
    for s in samples {
        buckets
            .entry((s.timestamp.div_euclid(step) * step, s.metric.clone()))
            .or_default()
            .push(s);
    }
    buckets
        .into_iter()
        .map(|((start, metric), members)| {
            let values: Vec<f64> = members.iter().map(|s| s.value).collect();
            let value = match agg {
                "avg" => values.iter().sum::<f64>() / values.len() as f64,
                "min" => values.iter().copied().fold(f64::INFINITY, f64::min),
                "max" => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                "last" => members.iter().max_by_key(|s| s.timestamp).unwrap().value,
                "count" => values.len() as f64,
                other => panic!("unknown aggregation {other}"),
            };
            (rfc3339(start), metric, value)
        })
        .collect()
}

#[tokio::test]
async fn aggregation_matches_values_computed_here() {
    let (mut fixture, served) = served("gateway-real-agg").await;
    // The CSV repeats its values on every pass, so only `count` differs between buckets of the
    // real GPUs; one extra synthetic GPU with values varying sample by sample checks every
    // aggregation.
    let varying = varying_gpu(&fixture).await;
    fixture.gpus.insert(varying.info.uuid.to_string(), varying);
    for (uuid, gpu) in fixture.gpus.iter().step_by(40).chain(
        fixture
            .gpus
            .iter()
            .filter(|(u, _)| u.starts_with("GPU-varying")),
    ) {
        for (step, step_us) in [("2s", 2_000_000), ("1m", 60_000_000), ("500ms", 500_000)] {
            for agg in ["avg", "min", "max", "last", "count"] {
                let page = ok_json(
                    &served,
                    &format!("/api/v1/gpus/{uuid}/telemetry?step={step}&agg={agg}&limit=10000"),
                )
                .await;
                assert_eq!(
                    entries(&page),
                    expected_aggregate(&gpu.samples, step_us, agg),
                    "{uuid} step={step} agg={agg}"
                );
            }
        }
        // A window and a metric filter apply before aggregating.
        let (start, end) = (fixture.passes[1].first, fixture.passes[2].last);
        let page = ok_json(
            &served,
            &format!(
                "/api/v1/gpus/{uuid}/telemetry?step=10s&agg=count&metric_name=DCGM_FI_DEV_GPU_TEMP,DCGM_FI_DEV_SM_CLOCK&start_time={}&end_time={}",
                encode(&rfc3339(start)),
                encode(&rfc3339(end))
            ),
        )
        .await;
        let filtered: Vec<Expected> = gpu
            .samples
            .iter()
            .filter(|s| s.timestamp >= start && s.timestamp <= end)
            .filter(|s| s.metric == "DCGM_FI_DEV_GPU_TEMP" || s.metric == "DCGM_FI_DEV_SM_CLOCK")
            .cloned()
            .collect();
        assert!(!filtered.is_empty());
        assert_eq!(
            entries(&page),
            expected_aggregate(&filtered, 10_000_000, "count")
        );
    }

    // Without a step: one value per metric over the window, timestamped with its start (or the
    // oldest sample when the window has none).
    for (uuid, gpu) in fixture.gpus.iter().step_by(60).chain(
        fixture
            .gpus
            .iter()
            .filter(|(u, _)| u.starts_with("GPU-varying")),
    ) {
        for agg in ["avg", "min", "max", "last", "count"] {
            let page = ok_json(&served, &format!("/api/v1/gpus/{uuid}/telemetry?agg={agg}")).await;
            let oldest = gpu.samples[0].timestamp;
            let whole: Vec<_> = expected_aggregate(&gpu.samples, i64::MAX / 4, agg)
                .into_iter()
                .map(|(_, metric, value)| (rfc3339(oldest), metric, value))
                .collect();
            assert_eq!(entries(&page), whole, "{uuid} agg={agg}");
        }
        if uuid.starts_with("GPU-varying") {
            continue;
        }
        let start = fixture.passes[1].first;
        let page = ok_json(
            &served,
            &format!(
                "/api/v1/gpus/{uuid}/telemetry?agg=count&start_time={}",
                encode(&rfc3339(start))
            ),
        )
        .await;
        let counts: Vec<_> = entries(&page).into_iter().map(|(t, _, v)| (t, v)).collect();
        let per_metric = (2 * gpu.samples.len() / 3 / 10) as f64;
        assert_eq!(counts, vec![(rfc3339(start), per_metric); 10], "{uuid}");
    }

    // Aggregated results page like raw ones.
    let uuid = "GPU-varying-values";
    let gpu = fixture.gpu(uuid);
    let want = expected_aggregate(&gpu.samples, 500_000, "max");
    let mut seen = Vec::new();
    let path = format!("/api/v1/gpus/{uuid}/telemetry?step=500ms&agg=max&limit=4");
    each_page(&served, &path, |page| seen.extend(entries(page))).await;
    assert_eq!(seen, want);
}

#[tokio::test]
async fn ids_that_could_escape_the_key_space_are_rejected() {
    let (fixture, served) = served("gateway-real-ids").await;
    let uuid = fixture.gpus.keys().next().unwrap();
    for path in [
        "/api/v1/gpus/GPU-x%2F..%2Fy".to_string(),
        format!("/api/v1/gpus/{uuid}%2F..%2F{uuid}/telemetry"),
        "/api/v1/gpus/%2E%2E/latest".to_string(),
        "/api/v1/gpus/..".to_string(),
        "/api/v1/gpus/GPU-1%00".to_string(),
        format!("/api/v1/gpus/{}", "9".repeat(65)),
    ] {
        assert_eq!(
            served.get(&path).await.problem(400),
            "invalid-gpu-id",
            "{path}"
        );
    }
    // Unencoded separators never reach a GPU route.
    let raw = served.get(&format!("/api/v1/gpus/{uuid}/../{uuid}")).await;
    assert_eq!(raw.problem(404), "not-found");
    // A valid id that is a prefix of a real one finds nothing (no prefix reads).
    let prefix_of_real = &uuid[..uuid.len() - 4];
    assert_eq!(
        served
            .get(&format!("/api/v1/gpus/{prefix_of_real}"))
            .await
            .problem(404),
        "gpu-not-found"
    );
}

/// `(timestamp, metric, value)` of a series page, metric by metric (sorted by name), each in the
/// page's time order; with the values' bits, so a float that does not round trip shows.
fn series_points(page: &Value) -> Vec<(String, String, u64)> {
    let mut points = Vec::new();
    for series in page["series"].as_array().expect("series is an array") {
        let metric = series["metric_name"].as_str().unwrap();
        let times = series["timestamps_us"].as_array().unwrap();
        let values = series["values"].as_array().unwrap();
        assert_eq!(times.len(), values.len(), "{metric}");
        for (t, v) in times.iter().zip(values) {
            points.push((
                rfc3339(t.as_i64().unwrap()),
                metric.to_string(),
                v.as_f64().unwrap().to_bits(),
            ));
        }
    }
    points
}

/// Entries regrouped the way a series page holds them: by metric name, time order kept.
fn by_metric(entries: Vec<(String, String, f64)>) -> Vec<(String, String, u64)> {
    let mut grouped: BTreeMap<String, Vec<(String, String, u64)>> = BTreeMap::new();
    for (t, metric, value) in entries {
        grouped
            .entry(metric.clone())
            .or_default()
            .push((t, metric, value.to_bits()));
    }
    grouped.into_values().flatten().collect()
}

#[tokio::test]
async fn the_series_form_holds_exactly_the_entry_lists_samples() {
    let (mut fixture, served) = served("gateway-real-series").await;
    let varying = varying_gpu(&fixture).await;
    fixture.gpus.insert(varying.info.uuid.to_string(), varying);
    let (start, end) = (fixture.passes[1].first, fixture.passes[2].last);
    let window = format!(
        "start_time={}&end_time={}",
        encode(&rfc3339(start)),
        encode(&rfc3339(end))
    );
    let queries = [
        String::new(),
        "order=desc".to_string(),
        "metric_name=DCGM_FI_DEV_POWER_USAGE,DCGM_FI_DEV_GPU_TEMP".to_string(),
        window.clone(),
        format!("{window}&order=desc&metric_name=DCGM_FI_DEV_GPU_TEMP"),
        "step=2s&agg=max".to_string(),
        "step=500ms&agg=avg&order=desc".to_string(),
        "agg=count".to_string(),
    ];
    let mut compared = 0;
    for (uuid, gpu) in fixture.gpus.iter().step_by(50).chain(
        fixture
            .gpus
            .iter()
            .filter(|(u, _)| u.starts_with("GPU-varying")),
    ) {
        for query in &queries {
            let path = format!("/api/v1/gpus/{uuid}/telemetry?limit=10000&{query}");
            let listed = ok_json(&served, &path).await;
            let series = ok_json(&served, &format!("{path}&format=series")).await;
            assert_eq!(series["gpu"], listed["gpu"], "{uuid} {query}");
            assert_eq!(series["count"], listed["count"], "{uuid} {query}");
            assert_eq!(series["next_cursor"], json!(null), "{uuid} {query}");
            let want = by_metric(entries(&listed));
            assert!(!want.is_empty(), "{uuid} {query}");
            assert_eq!(series_points(&series), want, "{uuid} {query}");
            compared += 1;
        }
        // Values bit for bit as stored.
        let series = ok_json(
            &served,
            &format!("/api/v1/gpus/{uuid}/telemetry?limit=10000&format=series"),
        )
        .await;
        assert_eq!(
            series_points(&series),
            by_metric(expected_entries(&gpu.samples)),
            "{uuid}"
        );
    }
    assert_eq!(compared, 6 * queries.len());

    // Paging: `limit` counts points per metric; following next_cursor gives every point once.
    for (uuid, per_metric) in [
        ("GPU-varying-values", 120usize),
        (fixture.gpus.keys().nth(3).unwrap().as_str(), 3),
    ] {
        let gpu = fixture.gpu(uuid);
        let metrics = gpu.samples.len() / per_metric;
        for (order, limit) in [
            ("asc", 1),
            ("desc", 7),
            ("asc", 50),
            ("desc", 120),
            ("asc", 2),
        ] {
            let mut seen: BTreeMap<String, Vec<(String, String, u64)>> = BTreeMap::new();
            let path =
                format!("/api/v1/gpus/{uuid}/telemetry?format=series&limit={limit}&order={order}");
            let pages = each_page(&served, &path, |page| {
                let points = series_points(page);
                assert_eq!(page["count"], points.len());
                for series in page["series"].as_array().unwrap() {
                    let len = series["values"].as_array().unwrap().len();
                    assert!(len <= limit, "{uuid} {order} limit={limit}: {len}");
                }
                for point in points {
                    seen.entry(point.1.clone()).or_default().push(point);
                }
            })
            .await;
            let mut want = expected_entries(&gpu.samples);
            if order == "desc" {
                want.reverse();
            }
            let seen: Vec<_> = seen.into_values().flatten().collect();
            assert_eq!(seen, by_metric(want), "{uuid} order={order} limit={limit}");
            // Every metric has a point at every timestamp, so each page but the last is full.
            assert_eq!(
                pages,
                per_metric.div_ceil(limit).max(1),
                "{uuid} order={order} limit={limit} ({metrics} metrics)"
            );
        }
    }

    let uuid = fixture.gpus.keys().next().unwrap();
    for query in [
        "format=csv",
        "format=SERIES",
        "format=",
        "format=series&format=entries",
        "format=series&limit=0",
        "format=series&limit=10001",
    ] {
        let path = format!("/api/v1/gpus/{uuid}/telemetry?{query}");
        assert_eq!(
            served.get(&path).await.problem(400),
            "invalid-parameter",
            "{query}"
        );
    }
}
