//! The gateway at fleet size: 10,000 GPUs (the real export's rows repeated with fresh UUIDs and
//! host names, generated at run time), streamed twice by the real streamer and persisted by the
//! collector. Every sample is stored exactly; the GPU list is whole and pages without a GPU
//! missing or repeated, and so do the newest values; hostile queries are refused or bounded, on a
//! real gateway process whose peak memory (`VmHWM`) stays under the chart's memory limit.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;
use test_support::{repo_path, Fleet};

const FLEET_GPUS: usize = 10_000;
const FLEET_PASSES: usize = 2;
/// Requests sent at once in the load rounds.
const CONCURRENT: usize = 8;

/// The gateway's memory limit in the chart (`gateway.resources.limits.memory`), in KiB.
fn chart_memory_limit_kib() -> u64 {
    let values = std::fs::read_to_string(repo_path("helm/gpu-telemetry/values.yaml"))
        .expect("read the chart's values");
    let gateway = values
        .split("\ngateway:")
        .nth(1)
        .expect("a gateway section");
    let limits = gateway.split("limits:").nth(1).expect("gateway limits");
    let memory = limits
        .lines()
        .find_map(|line| line.trim().strip_prefix("memory:"))
        .expect("a memory limit")
        .trim()
        .trim_matches('"');
    let mebibytes: u64 = memory
        .strip_suffix("Mi")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("memory limit {memory:?} is not in Mi"));
    mebibytes * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_10000_gpus_is_stored_listed_and_served_in_bounded_memory() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gateway-fleet");
    std::fs::create_dir_all(&dir).unwrap();
    let fleet = Fleet::generate(&dir, FLEET_GPUS, 20_251_201);
    assert_eq!((fleet.gpus, fleet.rows), (FLEET_GPUS, 10 * FLEET_GPUS));
    // Every sample of both passes stored exactly (the fixture reads each GPU back).
    let fixture = Fixture::filled_from("gateway-fleet", &fleet.path, FLEET_PASSES).await;
    assert_eq!(fixture.gpus.len(), FLEET_GPUS);
    let all: Vec<String> = fixture.gpus.keys().cloned().collect();

    // Debug builds on shared cores: the limits under test are memory and points, not time.
    let gateway = GatewayProcess::start(
        &fixture.etcd.endpoint(),
        &fixture.prefix,
        &[
            ("GATEWAY_REQUEST_TIMEOUT", "120s"),
            ("GATEWAY_ETCD_TIMEOUT", "30s"),
        ],
    )
    .await;

    // Every GPU by default, in UUID order; then page by page.
    let list = gateway.get("/api/v1/gpus").await;
    assert_eq!(list.status, 200, "{}", list.text());
    let list_bytes = list.body.len();
    let list = list.json();
    assert_eq!(list["count"], FLEET_GPUS);
    assert_eq!(list["next_cursor"], Value::Null);
    let listed: Vec<&str> = list["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(listed, all);
    println!(
        "GET /api/v1/gpus: {FLEET_GPUS} GPUs in {list_bytes} bytes, {} bytes per GPU",
        list_bytes / FLEET_GPUS
    );
    for limit in [1_000, 777] {
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = gateway
                .json(&format!("/api/v1/gpus?limit={limit}{cursor}"))
                .await;
            let gpus = page["gpus"].as_array().unwrap();
            assert!(gpus.len() <= limit);
            seen.extend(gpus.iter().map(|g| g["uuid"].as_str().unwrap().to_string()));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => break,
            }
        }
        let distinct: BTreeSet<&String> = seen.iter().collect();
        assert_eq!(distinct.len(), seen.len(), "limit {limit}: no GPU repeated");
        assert_eq!(seen, all, "limit {limit}: every GPU, in order");
    }
    // The newest values of every GPU, in the dashboard's pages of the default size.
    let mut latest = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = gateway
            .json(&format!(
                "/api/v1/latest?metric_name=DCGM_FI_DEV_GPU_TEMP{cursor}"
            ))
            .await;
        for gpu in page["gpus"].as_array().unwrap() {
            let uuid = gpu["uuid"].as_str().unwrap().to_string();
            let newest = fixture.gpus[&uuid]
                .samples
                .iter()
                .rfind(|s| s.metric == "DCGM_FI_DEV_GPU_TEMP")
                .unwrap()
                .value;
            assert_eq!(gpu["metrics"][0]["value"], newest, "{uuid}");
            latest.push(uuid);
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(latest, all, "GET /api/v1/latest: every GPU once, in order");
    let host = fixture.gpus[&all[0]].info.hostname.clone().unwrap();
    let on_host = gateway
        .json(&format!("/api/v1/gpus?hostname={}", encode(&host)))
        .await;
    let expected_on_host = fixture
        .gpus
        .values()
        .filter(|g| g.info.hostname.as_deref() == Some(host.as_str()))
        .count();
    assert_eq!(on_host["count"], expected_on_host);

    // Hostile aggregations: a microsecond step over all the data, several at once, on GPUs
    // spread over the fleet. Refused before any chunk is read: memory stays flat.
    let hostile: Vec<String> = all
        .iter()
        .step_by(FLEET_GPUS / (4 * CONCURRENT))
        .map(|uuid| format!("/api/v1/gpus/{uuid}/telemetry?step=1us&agg=avg"))
        .collect();
    let rss_before = gateway.memory_kib("VmRSS");
    let peak_before = gateway.memory_kib("VmHWM");
    for answer in gateway.burst(&hostile, CONCURRENT).await {
        assert_eq!(answer.status, 400, "{}", answer.text());
        assert_eq!(
            answer.json()["type"],
            "urn:gpu-telemetry:problem:too-many-points"
        );
    }
    let rss_after = gateway.memory_kib("VmRSS");
    let peak_after = gateway.memory_kib("VmHWM");
    println!(
        "{} hostile aggregations, {CONCURRENT} at once: VmRSS {rss_before} -> {rss_after} KiB, VmHWM {peak_before} -> {peak_after} KiB",
        hostile.len()
    );
    assert!(
        peak_after <= peak_before + 8 * 1024,
        "the peak grew by {} KiB",
        peak_after - peak_before
    );

    // The heaviest answers the limits allow, eight at once, in rounds: the whole list, the
    // finest aggregation that fits, whole-window aggregations, 10,000-entry raw pages, the
    // metric list (a scan of the registry).
    let uuid = &all[FLEET_GPUS / 2];
    let refused = gateway
        .get(&format!("/api/v1/gpus/{uuid}/telemetry?step=1us"))
        .await;
    let detail = refused.json()["detail"].as_str().unwrap().to_string();
    let finest = detail
        .split("use step=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no step in {detail}"))
        .to_string();
    let heavy = [
        "/api/v1/gpus".to_string(),
        format!("/api/v1/gpus/{uuid}/telemetry?step={finest}&agg=max&limit=10000"),
        format!("/api/v1/gpus/{uuid}/telemetry?agg=avg"),
        format!("/api/v1/gpus/{uuid}/telemetry?limit=10000"),
        "/api/v1/metrics".to_string(),
        "/api/v1/gpus".to_string(),
        format!("/api/v1/gpus/{}/telemetry?limit=10000&order=desc", all[7]),
        "/api/v1/gpus?limit=10000".to_string(),
    ];
    let rounds: Vec<String> = heavy.iter().cycle().take(4 * CONCURRENT).cloned().collect();
    for (path, answer) in rounds.iter().zip(gateway.burst(&rounds, CONCURRENT).await) {
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    }
    let peak = gateway.memory_kib("VmHWM");
    let limit = chart_memory_limit_kib();
    println!(
        "after {} heavy requests, {CONCURRENT} at once: gateway VmHWM {peak} KiB, chart limit {limit} KiB",
        rounds.len()
    );
    assert!(
        peak < limit,
        "peak RSS {peak} KiB over the chart's {limit} KiB"
    );
}
