//! The generated OpenAPI document: the checked-in copy (`testdata/openapi.json`) is current, and
//! the document is OpenAPI 3.1 describing every route, parameter and error response.
//! `scripts/check-openapi.sh` additionally runs a full OpenAPI 3.1 validator over it.

mod common;

use std::collections::BTreeSet;

use serde_json::Value;

fn spec() -> Value {
    serde_json::from_str(&gateway::openapi_json()).expect("the document is JSON")
}

#[test]
fn checked_in_spec_matches_the_generated_one() {
    let path = common::testdata("openapi.json");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == gateway::openapi_json(),
        "{} is missing or out of date: run `make openapi` and commit the result",
        path.display()
    );
}

const API_ROUTES: [&str; 7] = [
    "/api/v1/gpus",
    "/api/v1/gpus/{id}",
    "/api/v1/gpus/{id}/telemetry",
    "/api/v1/gpus/{id}/latest",
    "/api/v1/metrics",
    "/api/v1/queue",
    "/api/v1/latest",
];
/// The Prometheus HTTP API, with the methods Prometheus serves each on.
const PROMETHEUS_ROUTES: [(&str, &[&str]); 7] = [
    ("/api/v1/query", &["get", "post"]),
    ("/api/v1/query_range", &["get", "post"]),
    ("/api/v1/series", &["get", "post"]),
    ("/api/v1/labels", &["get", "post"]),
    ("/api/v1/label/{name}/values", &["get"]),
    ("/api/v1/metadata", &["get"]),
    ("/api/v1/status/buildinfo", &["get"]),
];
const OPS_ROUTES: [&str; 6] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/swagger-ui/",
    "/ui/",
];

/// Follows a local `$ref` (`#/components/...`), panicking if it does not resolve.
fn resolve<'a>(spec: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("local reference");
            let target = spec
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {reference}"));
            resolve(spec, target)
        }
        None => value,
    }
}

fn all_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "$ref" {
                    out.push(v.as_str().expect("$ref is a string").to_string());
                } else {
                    all_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| all_refs(v, out)),
        _ => {}
    }
}

#[test]
fn spec_is_openapi_3_1_with_every_route_and_resolvable_references() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0");
    assert_eq!(spec["info"]["title"], "GPU telemetry gateway");
    assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths: BTreeSet<&str> = spec["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = API_ROUTES
        .iter()
        .chain(&OPS_ROUTES)
        .copied()
        .chain(PROMETHEUS_ROUTES.iter().map(|(path, _)| *path))
        .collect();
    assert_eq!(paths, expected);

    let mut refs = Vec::new();
    all_refs(&spec, &mut refs);
    assert!(refs.len() > 20, "components are referenced, not inlined");
    for reference in &refs {
        resolve(&spec, &serde_json::json!({ "$ref": reference }));
    }

    let mut operation_ids = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        let methods: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        // Only the Prometheus API takes POST, as Prometheus does (a query in a form body); it
        // reads like every other route.
        let allowed = PROMETHEUS_ROUTES
            .iter()
            .find(|(p, _)| p == path)
            .map_or(&["get"][..], |(_, methods)| methods);
        assert_eq!(methods, allowed, "{path} methods");
        for method in methods {
            let operation = &item[method];
            assert!(
                operation_ids.insert(operation["operationId"].as_str().unwrap().to_string()),
                "duplicate operationId at {method} {path}"
            );
            assert!(operation["summary"].is_string(), "{path} has a summary");
            let ok = resolve(&spec, &operation["responses"]["200"]);
            assert!(
                ok["content"].as_object().is_some_and(|c| !c.is_empty()),
                "{path} 200 has a body"
            );
        }
    }
}

#[test]
fn every_parameter_and_error_response_is_documented() {
    let spec = spec();
    let params_of = |path: &str| -> Vec<(String, String, bool)> {
        spec["paths"][path]["get"]["parameters"]
            .as_array()
            .map(|params| {
                params
                    .iter()
                    .map(|p| {
                        let p = resolve(&spec, p);
                        assert!(p["schema"].is_object(), "{path} {} has a schema", p["name"]);
                        assert!(
                            p["description"].is_string(),
                            "{path} {} is described",
                            p["name"]
                        );
                        (
                            p["name"].as_str().unwrap().to_string(),
                            p["in"].as_str().unwrap().to_string(),
                            p["required"].as_bool().unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let id = ("id".to_string(), "path".to_string(), true);
    let query = |name: &str| (name.to_string(), "query".to_string(), false);
    assert_eq!(
        params_of("/api/v1/gpus"),
        vec![
            query("hostname"),
            query("model_name"),
            query("limit"),
            query("cursor")
        ]
    );
    assert_eq!(params_of("/api/v1/gpus/{id}"), vec![id.clone()]);
    assert_eq!(params_of("/api/v1/gpus/{id}/latest"), vec![id.clone()]);
    assert_eq!(
        params_of("/api/v1/gpus/{id}/telemetry"),
        vec![
            id.clone(),
            query("start_time"),
            query("end_time"),
            query("metric_name"),
            query("limit"),
            query("cursor"),
            query("order"),
            query("step"),
            query("agg"),
            query("format"),
        ]
    );
    assert_eq!(params_of("/api/v1/metrics"), vec![]);
    assert_eq!(params_of("/api/v1/queue"), vec![]);
    assert_eq!(
        params_of("/api/v1/latest"),
        vec![
            query("hostname"),
            query("model_name"),
            query("metric_name"),
            query("limit"),
            query("cursor"),
        ]
    );

    let id_schema = &spec["paths"]["/api/v1/gpus/{id}"]["get"]["parameters"][0]["schema"];
    assert_eq!(id_schema["pattern"], "^[A-Za-z0-9_-]{1,64}$");
    let telemetry = &spec["paths"]["/api/v1/gpus/{id}/telemetry"]["get"]["parameters"];
    let limit = &telemetry[4]["schema"];
    assert_eq!(
        (limit["minimum"].as_u64(), limit["maximum"].as_u64()),
        (Some(1), Some(10_000))
    );
    let order = resolve(&spec, &telemetry[6]["schema"]);
    assert_eq!(order["enum"], serde_json::json!(["asc", "desc"]));
    let agg = resolve(&spec, &telemetry[8]["schema"]);
    assert_eq!(
        agg["enum"],
        serde_json::json!(["avg", "min", "max", "last", "count"])
    );
    let format = resolve(&spec, &telemetry[9]["schema"]);
    assert_eq!(format["enum"], serde_json::json!(["entries", "series"]));
    // The 200 body is either shape, told apart by their required fields.
    let page = resolve(
        &spec,
        &spec["paths"]["/api/v1/gpus/{id}/telemetry"]["get"]["responses"]["200"]["content"]
            ["application/json"]["schema"],
    );
    let shapes: Vec<Value> = page["oneOf"]
        .as_array()
        .expect("oneOf the two shapes")
        .iter()
        .map(|shape| resolve(&spec, shape)["required"].clone())
        .collect();
    assert_eq!(
        shapes,
        [
            serde_json::json!(["gpu", "entries", "count", "next_cursor"]),
            serde_json::json!(["gpu", "series", "count", "next_cursor"]),
        ]
    );

    for path in API_ROUTES {
        let responses = &spec["paths"][path]["get"]["responses"];
        let mut statuses: Vec<&str> = responses
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        statuses.sort();
        // Every API route rejects an unknown query parameter with 400.
        let mut expected = vec!["200", "400", "502", "503"];
        if path.contains("{id}") {
            expected.push("404");
        }
        expected.sort();
        assert_eq!(statuses, expected, "{path}");
        for status in expected.iter().filter(|s| **s != "200") {
            let response = resolve(&spec, &responses[*status]);
            let content = response["content"].as_object().unwrap();
            assert_eq!(
                content.keys().collect::<Vec<_>>(),
                ["application/problem+json"],
                "{path} {status}"
            );
            let schema = resolve(&spec, &content["application/problem+json"]["schema"]);
            let mut required: Vec<&str> = schema["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            required.sort();
            assert_eq!(
                required,
                ["detail", "status", "title", "type"],
                "{path} {status}"
            );
        }
    }
    let readyz = &spec["paths"]["/readyz"]["get"]["responses"];
    assert!(readyz["503"].is_object(), "readiness failure is documented");
}
