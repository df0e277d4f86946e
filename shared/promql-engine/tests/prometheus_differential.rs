//! Differential test against a real Prometheus (2.42, Debian's package): one hour of samples made
//! from the real DCGM export is backfilled into Prometheus with promtool and held in memory for
//! the engine; every query of the shared table (`test_support::promql_table`) runs as instant
//! queries at several times and as range queries, and both answers must agree (same series and
//! label sets, equal timestamps, values within 1e-9 relative, NaN equal to NaN, the same error
//! type where Prometheus fails). The metadata queries of the dashboard's variables are compared
//! through `/api/v1/label/.../values` and `/api/v1/series`. Needs `prometheus` and `promtool` on
//! PATH (fails with an install hint).

use promql_engine::{
    label_names, label_values, parse_series_selector, Engine, InMemorySource, Labels, Point,
    QueryError, QueryOptions, Series, SeriesSource, Value,
};
use test_support::promql_table::{
    assert_no_differences, compare_answers, json_labels, seconds_param, series_selectors, table,
    variable_queries, Dataset, Evaluation,
};
use test_support::PrometheusHarness;

/// The engine's result in the envelope Prometheus' API writes.
fn envelope(result: Result<Value, QueryError>) -> String {
    match result {
        Ok(value) => format!(r#"{{"status":"success","data":{}}}"#, value.to_json()),
        Err(e) => format!(
            r#"{{"status":"error","errorType":"{}","error":{:?}}}"#,
            e.error_type().as_str(),
            e.to_string()
        ),
    }
}

fn labels(set: &test_support::promql_table::LabelSet) -> Labels {
    Labels::new(set.iter().map(|(n, v)| (n.as_str(), v.as_str())))
}

#[tokio::test]
async fn engine_answers_as_prometheus_does() {
    let data = Dataset::generate();
    let prometheus = PrometheusHarness::start_with_openmetrics(&data.openmetrics()).await;
    let source = InMemorySource::new(
        data.series
            .iter()
            .map(|s| {
                let points = s.points.iter().map(|&(t, v)| Point::new(t, v)).collect();
                Series::new(labels(&s.labels), points)
            })
            .collect(),
    );
    let engine = Engine::default();
    let options = QueryOptions::default();
    let (start, end) = (data.start_ms, data.end_ms());

    let table = table(&data);
    let mut compared = 0;
    let mut failures = Vec::new();
    for query in table.queries() {
        let params = query.params();
        let params: Vec<(&str, &str)> = params.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let text = query.case.query.as_str();
        let got = async {
            match query.evaluation {
                Evaluation::Instant(t) => engine.instant_query(&source, text, t, &options).await,
                Evaluation::Range { start, end, step } => {
                    engine
                        .range_query(&source, text, start, end, step, &options)
                        .await
                }
            }
        };
        // Prometheus answers while the engine evaluates.
        let (response, got) = tokio::join!(prometheus.get(query.path(), &params), got);
        let what = query.describe();
        compare_answers(
            &what,
            &envelope(got),
            &response.text(),
            query.case.check,
            &mut failures,
        );
        compared += 1;
    }

    // The dashboards' variable queries, as Grafana sends them to the metadata endpoints.
    let window = [
        ("start", seconds_param(start)),
        ("end", seconds_param(end + 1_000)),
    ];
    let mut metadata_compared = 0;
    for (label, selector) in &variable_queries(&data) {
        let mut params: Vec<(&str, &str)> = window.iter().map(|(n, v)| (*n, v.as_str())).collect();
        if let Some(s) = selector {
            params.push(("match[]", s));
        }
        let body = prometheus
            .get(&format!("/api/v1/label/{label}/values"), &params)
            .await
            .json();
        let want: Vec<String> = serde_json::from_value(body["data"].clone()).unwrap();
        let matchers =
            parse_series_selector(selector.as_deref().unwrap_or(r#"{__name__=~".+"}"#)).unwrap();
        let selected = source
            .select_labels(&matchers, start, end + 1_000)
            .await
            .unwrap();
        let got = label_values(&selected, label);
        assert!(
            !want.is_empty(),
            "label_values({label}) is empty in Prometheus"
        );
        assert_eq!(got, want, "label_values({selector:?}, {label})");
        metadata_compared += 1;
    }
    for selector in series_selectors(&data) {
        let mut params: Vec<(&str, &str)> = window.iter().map(|(n, v)| (*n, v.as_str())).collect();
        params.push(("match[]", &selector));
        let matchers = parse_series_selector(&selector).unwrap();
        let mut got = source
            .select_labels(&matchers, start, end + 1_000)
            .await
            .unwrap();
        got.sort();
        let body = prometheus.get("/api/v1/series", &params).await.json();
        let mut want: Vec<Labels> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| labels(&json_labels(s)))
            .collect();
        want.sort();
        assert!(!want.is_empty());
        assert_eq!(got, want, "series {selector}");
        let body = prometheus.get("/api/v1/labels", &params).await.json();
        let want_names: Vec<String> = serde_json::from_value(body["data"].clone()).unwrap();
        assert_eq!(label_names(&got), want_names, "labels {selector}");
        metadata_compared += 2;
    }

    eprintln!(
        "{} and {metadata_compared} metadata answers; {} differences",
        table.summary(compared),
        failures.len()
    );
    assert_no_differences(&failures, compared);
}
