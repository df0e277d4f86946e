//! Each operator and function on small hand-made series, with the exact results Prometheus gives
//! (worked out by hand in the comments), plus limits, deadlines, cancellation and error mapping.

use std::time::Duration;

use promql_engine::{
    format_value, CancelToken, Engine, EngineConfig, InMemorySource, Labels, Matchers, Point,
    QueryError, QueryLimits, QueryOptions, Series, SeriesSource, SourceError, Value,
};

const S: i64 = 1_000;

fn series(name: &str, labels: &[(&str, &str)], samples: &[(i64, f64)]) -> Series {
    let mut pairs: Vec<(&str, &str)> = labels.to_vec();
    pairs.push(("__name__", name));
    Series::new(
        Labels::new(pairs),
        samples.iter().map(|&(t, v)| Point::new(t * S, v)).collect(),
    )
}

/// Samples every 15 s from 0 to 60 s, except where noted:
/// - temp a/0: 40 42 41 45 43; temp a/1: 50 52 54 56 58; temp b/0: 30 at 0 s only.
/// - power a/0: 100; power a/1: 200 (all five times); power b/0: 300 at 0 s only.
/// - energy a/0 (a counter): 100 130 160 10 40 (reset between 30 s and 45 s).
/// - host_info a (rack r1), b (rack r2): 1 at 0 s; odd: NaN, 1, 2 on three series at 60 s.
fn source() -> InMemorySource {
    let every = |values: [f64; 5]| -> Vec<(i64, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as i64 * 15, v))
            .collect()
    };
    let a0 = [("host", "a"), ("gpu", "0")];
    let a1 = [("host", "a"), ("gpu", "1")];
    let b0 = [("host", "b"), ("gpu", "0")];
    InMemorySource::new(vec![
        series("temp", &a0, &every([40.0, 42.0, 41.0, 45.0, 43.0])),
        series("temp", &a1, &every([50.0, 52.0, 54.0, 56.0, 58.0])),
        series("temp", &b0, &[(0, 30.0)]),
        series("power", &a0, &every([100.0; 5])),
        series("power", &a1, &every([200.0; 5])),
        series("power", &b0, &[(0, 300.0)]),
        series("energy", &a0, &every([100.0, 130.0, 160.0, 10.0, 40.0])),
        series("host_info", &[("host", "a"), ("rack", "r1")], &[(0, 1.0)]),
        series("host_info", &[("host", "b"), ("rack", "r2")], &[(0, 1.0)]),
        series("odd", &[("k", "x")], &[(60, f64::NAN)]),
        series("odd", &[("k", "y")], &[(60, 1.0)]),
        series("odd", &[("k", "z")], &[(60, 2.0)]),
    ])
}

fn render(labels: &Labels, value: f64) -> String {
    format!("{labels} {}", format_value(value))
}

/// An instant query's samples as `labels value`, in the engine's order.
async fn instant_ordered(query: &str, t: i64) -> Vec<String> {
    match Engine::default()
        .instant_query(&source(), query, t, &QueryOptions::default())
        .await
    {
        Ok(Value::Vector(v)) => v.iter().map(|s| render(&s.labels, s.value)).collect(),
        Ok(Value::Scalar { value, .. }) => vec![format!("scalar {}", format_value(value))],
        other => panic!("{query}: unexpected {other:?}"),
    }
}

/// An instant query's samples as `labels value`, sorted (for results Prometheus leaves unordered).
async fn instant(query: &str, t: i64) -> Vec<String> {
    let mut v = instant_ordered(query, t).await;
    v.sort();
    v
}

async fn error(query: &str, t: i64) -> QueryError {
    Engine::default()
        .instant_query(&source(), query, t, &QueryOptions::default())
        .await
        .expect_err(query)
}

async fn range(query: &str, start: i64, end: i64, step: i64) -> Vec<(String, Vec<(i64, String)>)> {
    match Engine::default()
        .range_query(&source(), query, start, end, step, &QueryOptions::default())
        .await
    {
        Ok(Value::Matrix(m)) => m
            .iter()
            .map(|s| {
                let points = s
                    .points
                    .iter()
                    .map(|p| (p.t_ms, format_value(p.value)))
                    .collect();
                (s.labels.to_string(), points)
            })
            .collect(),
        other => panic!("{query}: unexpected {other:?}"),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn instant_selector_takes_the_latest_sample_within_the_lookback() {
    assert_eq!(
        instant("temp", 50 * S).await,
        strings(&[
            r#"temp{gpu="0", host="a"} 45"#,
            r#"temp{gpu="0", host="b"} 30"#,
            r#"temp{gpu="1", host="a"} 56"#,
        ])
    );
    // b/0's only sample (0 s) is visible until 5 minutes after it, the window being left-open.
    assert_eq!(
        instant(r#"temp{host="b"}"#, 299_999).await,
        strings(&[r#"temp{gpu="0", host="b"} 30"#])
    );
    assert_eq!(
        instant(r#"temp{host="b"}"#, 300_000).await,
        Vec::<String>::new()
    );
    // A sample exactly at the evaluation time is in.
    assert_eq!(
        instant(r#"temp{gpu="1"}"#, 15 * S).await,
        strings(&[r#"temp{gpu="1", host="a"} 52"#])
    );
    // A shorter lookback, configured.
    let engine = Engine::new(EngineConfig {
        lookback_delta: Duration::from_secs(10),
        ..EngineConfig::default()
    });
    let v = engine
        .instant_query(&source(), "temp", 24 * S, &QueryOptions::default())
        .await
        .unwrap();
    let Value::Vector(v) = v else { panic!() };
    // (14 s, 24 s] holds the 15 s samples of a/0 and a/1; b/0's (0 s) is stale.
    assert_eq!(v.len(), 2);
    let v = engine
        .instant_query(&source(), "temp", 25 * S, &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(v, Value::Vector(vec![]), "(15 s, 25 s] holds no sample");
}

#[tokio::test]
async fn matchers_select_by_every_operator_and_the_metric_name() {
    assert_eq!(
        instant(r#"temp{host!="a"}"#, 60 * S).await,
        strings(&[r#"temp{gpu="0", host="b"} 30"#])
    );
    assert_eq!(instant(r#"temp{gpu=~"0"}"#, 60 * S).await.len(), 2);
    assert_eq!(instant(r#"temp{gpu!~"0|1"}"#, 60 * S).await.len(), 0);
    assert_eq!(instant(r#"{__name__=~"te.*"}"#, 60 * S).await.len(), 3);
    assert_eq!(
        instant(r#"{__name__!="temp", host="b"}"#, 60 * S).await,
        strings(&[
            r#"host_info{host="b", rack="r2"} 1"#,
            r#"power{gpu="0", host="b"} 300"#
        ])
    );
    // A missing label matches the empty string.
    assert_eq!(instant(r#"host_info{gpu=""}"#, 60 * S).await.len(), 2);
}

#[tokio::test]
async fn offset_and_at_move_the_evaluation_time() {
    assert_eq!(
        instant(r#"temp{host="a"} offset 30s"#, 60 * S).await,
        strings(&[
            r#"temp{gpu="0", host="a"} 41"#,
            r#"temp{gpu="1", host="a"} 54"#
        ])
    );
    assert_eq!(
        instant(r#"temp{host="a"} offset -15s"#, 45 * S).await,
        strings(&[
            r#"temp{gpu="0", host="a"} 43"#,
            r#"temp{gpu="1", host="a"} 58"#
        ])
    );
    assert_eq!(
        instant(r#"temp{gpu="1"} @ 15"#, 200 * S).await,
        strings(&[r#"temp{gpu="1", host="a"} 52"#])
    );
    assert_eq!(
        range(r#"temp{gpu="1"} @ start()"#, 15 * S, 45 * S, 15 * S).await,
        [(
            r#"temp{gpu="1", host="a"}"#.to_string(),
            vec![
                (15 * S, "52".into()),
                (30 * S, "52".into()),
                (45 * S, "52".into())
            ]
        )]
    );
    assert_eq!(
        instant(r#"temp{gpu="1"} @ end()"#, 30 * S).await,
        strings(&[r#"temp{gpu="1", host="a"} 54"#])
    );
}

#[tokio::test]
async fn range_queries_step_from_start_without_alignment() {
    // Unaligned: 7 s, 27 s, 47 s (67 s is past the end).
    assert_eq!(
        range(r#"temp{gpu="1"}"#, 7 * S, 60 * S, 20 * S).await,
        [(
            r#"temp{gpu="1", host="a"}"#.to_string(),
            vec![
                (7 * S, "50".into()),
                (27 * S, "52".into()),
                (47 * S, "56".into())
            ]
        )]
    );
    // b/0 ends five minutes after its last sample.
    assert_eq!(
        range(r#"temp{host="b"}"#, 0, 600 * S, 100 * S).await,
        [(
            r#"temp{gpu="0", host="b"}"#.to_string(),
            vec![
                (0, "30".into()),
                (100 * S, "30".into()),
                (200 * S, "30".into())
            ]
        )]
    );
    // A scalar is a matrix of one series without labels.
    assert_eq!(
        range("time()", 0, 30 * S, 15 * S).await,
        [(
            "{}".to_string(),
            vec![
                (0, "0".into()),
                (15 * S, "15".into()),
                (30 * S, "30".into())
            ]
        )]
    );
}

#[tokio::test]
async fn arithmetic_drops_the_name_and_follows_go_float_rules() {
    assert_eq!(
        instant("temp + power", 60 * S).await,
        strings(&[
            r#"{gpu="0", host="a"} 143"#,
            r#"{gpu="0", host="b"} 330"#,
            r#"{gpu="1", host="a"} 258"#
        ])
    );
    assert_eq!(
        instant(r#"100 - temp{gpu="1"}"#, 60 * S).await,
        strings(&[r#"{gpu="1", host="a"} 42"#])
    );
    assert_eq!(
        instant(r#"temp{gpu="1"} / 4"#, 60 * S).await,
        strings(&[r#"{gpu="1", host="a"} 14.5"#])
    );
    assert_eq!(
        instant(r#"temp{gpu="1"} % 7"#, 60 * S).await,
        strings(&[r#"{gpu="1", host="a"} 2"#])
    );
    assert_eq!(
        instant(r#"2 ^ (temp{gpu="1"} / 29)"#, 60 * S).await,
        strings(&[r#"{gpu="1", host="a"} 4"#])
    );
    assert_eq!(
        instant(r#"-temp{gpu="1"}"#, 60 * S).await,
        strings(&[r#"{gpu="1", host="a"} -58"#])
    );
    assert_eq!(instant("2 ^ 3 % 5", 0).await, strings(&["scalar 3"]));
    assert_eq!(instant("-7 % 3", 0).await, strings(&["scalar -1"]));
    assert_eq!(instant("1 / 0", 0).await, strings(&["scalar +Inf"]));
    assert_eq!(instant("-1 / 0", 0).await, strings(&["scalar -Inf"]));
    assert_eq!(instant("0 / 0", 0).await, strings(&["scalar NaN"]));
    // Go's Pow(1, NaN) is NaN (C's pow gives 1); Pow(NaN, 0) is 1.
    assert_eq!(instant("1 ^ NaN", 0).await, strings(&["scalar NaN"]));
    assert_eq!(instant("NaN ^ 0", 0).await, strings(&["scalar 1"]));
    assert_eq!(instant("0 atan2 1", 0).await, strings(&["scalar 0"]));
}

#[tokio::test]
async fn comparisons_filter_or_return_bool() {
    // A filter keeps the series (name included) and the vector's value, on either side.
    let kept = strings(&[
        r#"temp{gpu="0", host="a"} 43"#,
        r#"temp{gpu="1", host="a"} 58"#,
    ]);
    assert_eq!(instant("temp > 40", 60 * S).await, kept);
    assert_eq!(instant("40 < temp", 60 * S).await, kept);
    assert_eq!(
        instant("temp > bool 40", 60 * S).await,
        strings(&[
            r#"{gpu="0", host="a"} 1"#,
            r#"{gpu="0", host="b"} 0"#,
            r#"{gpu="1", host="a"} 1"#
        ])
    );
    assert_eq!(
        instant("temp == 30", 60 * S).await,
        strings(&[r#"temp{gpu="0", host="b"} 30"#])
    );
    assert_eq!(instant("temp != 30", 60 * S).await.len(), 2);
    assert_eq!(instant("temp >= 43", 60 * S).await.len(), 2);
    assert_eq!(instant("temp <= 43", 60 * S).await.len(), 2);
    assert_eq!(instant("temp < 43", 60 * S).await.len(), 1);
    // Vector to vector: the left side's value and labels.
    assert_eq!(
        instant("power > temp * 4", 60 * S).await,
        strings(&[r#"power{gpu="0", host="b"} 300"#])
    );
    assert_eq!(
        instant("power < bool temp * 4", 60 * S).await,
        strings(&[
            r#"{gpu="0", host="a"} 1"#,
            r#"{gpu="0", host="b"} 0"#,
            r#"{gpu="1", host="a"} 1"#
        ])
    );
    assert_eq!(instant("5 > bool 3", 0).await, strings(&["scalar 1"]));
    assert_eq!(instant("2 == bool 3", 0).await, strings(&["scalar 0"]));
    // NaN compares false.
    assert_eq!(instant("odd > 0", 60 * S).await.len(), 2);
}

#[tokio::test]
async fn vector_matching_on_ignoring_and_groups() {
    // on() keeps only the listed labels in a one-to-one result.
    assert_eq!(
        instant("temp * on(gpu, host) power", 60 * S).await,
        strings(&[
            r#"{gpu="0", host="a"} 4300"#,
            r#"{gpu="0", host="b"} 9000"#,
            r#"{gpu="1", host="a"} 11600"#
        ])
    );
    assert_eq!(
        instant(r#"temp * on(host) group_left max by (host) (temp)"#, 60 * S).await,
        strings(&[
            r#"{gpu="0", host="a"} 2494"#,
            r#"{gpu="0", host="b"} 900"#,
            r#"{gpu="1", host="a"} 3364"#
        ])
    );
    // group_left(rack) copies rack from the one side.
    assert_eq!(
        instant("power * on(host) group_left(rack) host_info", 60 * S).await,
        strings(&[
            r#"{gpu="0", host="a", rack="r1"} 100"#,
            r#"{gpu="0", host="b", rack="r2"} 300"#,
            r#"{gpu="1", host="a", rack="r1"} 200"#,
        ])
    );
    // group_right: the right side is the many side; the one side is on the left.
    assert_eq!(
        instant("host_info * on(host) group_right(rack) power", 60 * S).await,
        strings(&[
            r#"{gpu="0", host="a", rack="r1"} 100"#,
            r#"{gpu="0", host="b", rack="r2"} 300"#,
            r#"{gpu="1", host="a", rack="r1"} 200"#,
        ])
    );
    assert_eq!(
        instant(
            "temp - ignoring(gpu) group_left max without (gpu) (temp)",
            60 * S
        )
        .await,
        strings(&[
            r#"{gpu="0", host="a"} -15"#,
            r#"{gpu="0", host="b"} 0"#,
            r#"{gpu="1", host="a"} 0"#
        ])
    );
}

#[tokio::test]
async fn ambiguous_matches_fail_as_in_prometheus() {
    let err = error("temp + on(host) power", 60 * S).await;
    assert!(
        err.to_string()
            .starts_with("found duplicate series for the match group"),
        "{err}"
    );
    assert_eq!(
        (err.error_type().as_str(), err.http_status()),
        ("execution", 422)
    );
    let err = error("temp + on(host) max by (host) (power)", 60 * S).await;
    assert_eq!(
        err.to_string(),
        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
    );
    let err = error(
        r#"{__name__=~"temp|power", gpu="0", host="a"} * on(host) group_left max by (host) (temp)"#,
        60 * S,
    )
    .await;
    assert_eq!(
        err.to_string(),
        "multiple matches for labels: grouping labels must ensure unique matches"
    );
    let err = error(r#"abs({__name__=~"temp|power"})"#, 60 * S).await;
    assert_eq!(
        err.to_string(),
        "vector cannot contain metrics with the same labelset"
    );
}

#[tokio::test]
async fn set_operators() {
    assert_eq!(
        instant("temp and (power > 150)", 60 * S).await,
        strings(&[
            r#"temp{gpu="0", host="b"} 30"#,
            r#"temp{gpu="1", host="a"} 58"#
        ])
    );
    assert_eq!(
        instant("temp unless (power > 150)", 60 * S).await,
        strings(&[r#"temp{gpu="0", host="a"} 43"#])
    );
    assert_eq!(
        instant("(temp > 50) or power", 60 * S).await,
        strings(&[
            r#"power{gpu="0", host="a"} 100"#,
            r#"power{gpu="0", host="b"} 300"#,
            r#"temp{gpu="1", host="a"} 58"#,
        ])
    );
    assert_eq!(
        instant(r#"temp and on(host) host_info{rack="r2"}"#, 60 * S).await,
        strings(&[r#"temp{gpu="0", host="b"} 30"#])
    );
}

#[tokio::test]
async fn aggregations_by_and_without() {
    // temp at 60 s: a/0 43, a/1 58, b/0 30.
    assert_eq!(instant("sum(temp)", 60 * S).await, strings(&["{} 131"]));
    assert_eq!(
        instant("avg(temp)", 60 * S).await,
        strings(&[&format!("{{}} {}", format_value(131.0 / 3.0))])
    );
    assert_eq!(instant("min(temp)", 60 * S).await, strings(&["{} 30"]));
    assert_eq!(instant("max(temp)", 60 * S).await, strings(&["{} 58"]));
    assert_eq!(instant("count(temp)", 60 * S).await, strings(&["{} 3"]));
    assert_eq!(
        instant("sum by (host) (temp)", 60 * S).await,
        strings(&[r#"{host="a"} 101"#, r#"{host="b"} 30"#])
    );
    assert_eq!(
        instant("avg without (gpu) (temp)", 60 * S).await,
        strings(&[r#"{host="a"} 50.5"#, r#"{host="b"} 30"#])
    );
    // Population variance of {43, 58} is 7.5^2.
    assert_eq!(
        instant("stdvar by (host) (temp)", 60 * S).await,
        strings(&[r#"{host="a"} 56.25"#, r#"{host="b"} 0"#])
    );
    assert_eq!(
        instant("stddev by (host) (temp)", 60 * S).await,
        strings(&[r#"{host="a"} 7.5"#, r#"{host="b"} 0"#])
    );
    assert_eq!(
        instant("group by (host) (temp)", 60 * S).await,
        strings(&[r#"{host="a"} 1"#, r#"{host="b"} 1"#])
    );
    assert_eq!(
        instant("quantile(0.5, temp)", 60 * S).await,
        strings(&["{} 43"])
    );
    assert_eq!(
        instant("quantile(0.75, temp)", 60 * S).await,
        strings(&["{} 50.5"])
    );
    assert_eq!(
        instant(r#"count_values("value", power)"#, 60 * S).await,
        strings(&[
            r#"{value="100"} 1"#,
            r#"{value="200"} 1"#,
            r#"{value="300"} 1"#
        ])
    );
    assert_eq!(
        instant(r#"sum by (__name__) ({__name__=~"temp|power"})"#, 60 * S).await,
        strings(&["power 600", "temp 131"])
    );
    // Grouping by a label nobody has gives one group without labels.
    assert_eq!(
        instant("max by (uuid) (temp)", 60 * S).await,
        strings(&["{} 58"])
    );
}

#[tokio::test]
async fn topk_and_bottomk_keep_series_and_sort() {
    assert_eq!(
        instant_ordered("topk(2, temp)", 60 * S).await,
        strings(&[
            r#"temp{gpu="1", host="a"} 58"#,
            r#"temp{gpu="0", host="a"} 43"#
        ])
    );
    assert_eq!(
        instant_ordered("bottomk(2, temp)", 60 * S).await,
        strings(&[
            r#"temp{gpu="0", host="b"} 30"#,
            r#"temp{gpu="0", host="a"} 43"#
        ])
    );
    assert_eq!(
        instant("bottomk by (host) (1, temp)", 60 * S).await,
        strings(&[
            r#"temp{gpu="0", host="a"} 43"#,
            r#"temp{gpu="0", host="b"} 30"#
        ])
    );
    assert_eq!(instant("topk(0, temp)", 60 * S).await.len(), 0);
    assert_eq!(instant("topk(10, temp)", 60 * S).await.len(), 3);
    // NaN is the smallest for topk and last in both orders.
    assert_eq!(
        instant_ordered("topk(3, odd)", 60 * S).await,
        strings(&[r#"odd{k="z"} 2"#, r#"odd{k="y"} 1"#, r#"odd{k="x"} NaN"#])
    );
    assert_eq!(
        instant_ordered("bottomk(2, odd)", 60 * S).await,
        strings(&[r#"odd{k="y"} 1"#, r#"odd{k="z"} 2"#])
    );
}

#[tokio::test]
async fn rate_increase_and_delta_extrapolate_like_prometheus() {
    // energy in (0, 60 s]: 130 160 10 40 at 15..60 s. The reset adds 160: 40 - 130 + 160 = 70
    // over 45 s of samples; the first sample is 15 s from the window start (< 1.1 * 15 s) and
    // the counter's zero point far (45 s * 130 / 70), so it extrapolates to the full 60 s.
    let increase = 70.0 * ((45.0 + 15.0) / 45.0);
    assert_eq!(
        instant("increase(energy[1m])", 60 * S).await,
        strings(&[&format!(
            r#"{{gpu="0", host="a"}} {}"#,
            format_value(increase)
        )])
    );
    let rate = 70.0 * ((45.0 + 15.0) / 45.0 / 60.0);
    assert_eq!(
        instant("rate(energy[1m])", 60 * S).await,
        strings(&[&format!(r#"{{gpu="0", host="a"}} {}"#, format_value(rate))])
    );
    // delta treats the drop as a change: 40 - 130.
    let delta = -90.0 * ((45.0 + 15.0) / 45.0);
    assert_eq!(
        instant("delta(energy[1m])", 60 * S).await,
        strings(&[&format!(r#"{{gpu="0", host="a"}} {}"#, format_value(delta))])
    );
    // irate and idelta use the last two samples: 10 -> 40 over 15 s; at 45 s 160 -> 10 (reset).
    assert_eq!(
        instant("irate(energy[1m])", 60 * S).await,
        strings(&[r#"{gpu="0", host="a"} 2"#])
    );
    assert_eq!(
        instant("idelta(energy[1m])", 60 * S).await,
        strings(&[r#"{gpu="0", host="a"} 30"#])
    );
    assert_eq!(
        instant("irate(energy[1m])", 45 * S).await,
        strings(&[&format!(
            r#"{{gpu="0", host="a"}} {}"#,
            format_value(10.0 / 15.0)
        )])
    );
    assert_eq!(
        instant("idelta(energy[1m])", 45 * S).await,
        strings(&[r#"{gpu="0", host="a"} -150"#])
    );
    // One sample in the window (b/0 at 0 s): no result.
    assert_eq!(
        instant(r#"rate(temp{host="b"}[1m])"#, 30 * S).await.len(),
        0
    );
    // Offset moves the window: (0, 30 s] holds 130 and 160; 15 s to the start is extrapolated,
    // the end is at the last sample.
    let shifted = 30.0 * ((15.0 + 15.0) / 15.0);
    assert_eq!(
        instant("increase(energy[30s] offset 30s)", 60 * S).await,
        strings(&[&format!(
            r#"{{gpu="0", host="a"}} {}"#,
            format_value(shifted)
        )])
    );
}

#[tokio::test]
async fn over_time_functions() {
    // temp a/1 in (0, 60 s]: 52 54 56 58.
    let q = |f: &str| format!(r#"{f}(temp{{gpu="1"}}[1m])"#);
    let one = |v: &str| strings(&[&format!(r#"{{gpu="1", host="a"}} {v}"#)]);
    assert_eq!(instant(&q("avg_over_time"), 60 * S).await, one("55"));
    assert_eq!(instant(&q("min_over_time"), 60 * S).await, one("52"));
    assert_eq!(instant(&q("max_over_time"), 60 * S).await, one("58"));
    assert_eq!(instant(&q("sum_over_time"), 60 * S).await, one("220"));
    assert_eq!(instant(&q("count_over_time"), 60 * S).await, one("4"));
    assert_eq!(instant(&q("stdvar_over_time"), 60 * S).await, one("5"));
    assert_eq!(
        instant(&q("stddev_over_time"), 60 * S).await,
        one(&format_value(5f64.sqrt()))
    );
    assert_eq!(
        instant(r#"quantile_over_time(0.5, temp{gpu="1"}[1m])"#, 60 * S).await,
        one("55")
    );
    // last_over_time keeps the metric name.
    assert_eq!(
        instant(&q("last_over_time"), 60 * S).await,
        strings(&[r#"temp{gpu="1", host="a"} 58"#])
    );
    // The window is left-open: at 60 s, [45s] is (15 s, 60 s], holding 54 56 58 but not 52.
    assert_eq!(
        instant(r#"count_over_time(temp{gpu="1"}[45s])"#, 60 * S).await,
        one("3")
    );
}

#[tokio::test]
async fn instant_vector_functions() {
    assert_eq!(
        instant("abs(temp - 50)", 60 * S).await,
        strings(&[
            r#"{gpu="0", host="a"} 7"#,
            r#"{gpu="0", host="b"} 20"#,
            r#"{gpu="1", host="a"} 8"#
        ])
    );
    assert_eq!(
        instant("ceil(temp / 10)", 60 * S).await,
        strings(&[
            r#"{gpu="0", host="a"} 5"#,
            r#"{gpu="0", host="b"} 3"#,
            r#"{gpu="1", host="a"} 6"#
        ])
    );
    assert_eq!(
        instant("floor(temp / 10)", 60 * S).await,
        strings(&[
            r#"{gpu="0", host="a"} 4"#,
            r#"{gpu="0", host="b"} 3"#,
            r#"{gpu="1", host="a"} 5"#
        ])
    );
    // round: ties up; to a multiple of to_nearest.
    assert_eq!(
        instant("round(temp / 4)", 60 * S).await,
        strings(&[
            r#"{gpu="0", host="a"} 11"#,
            r#"{gpu="0", host="b"} 8"#,
            r#"{gpu="1", host="a"} 15"#
        ])
    );
    assert_eq!(
        instant("round(temp / 4, 0.5)", 60 * S).await,
        strings(&[
            r#"{gpu="0", host="a"} 11"#,
            r#"{gpu="0", host="b"} 7.5"#,
            r#"{gpu="1", host="a"} 14.5"#
        ])
    );
    assert_eq!(
        instant("clamp(temp, 35, 50)", 60 * S).await,
        strings(&[
            r#"{gpu="0", host="a"} 43"#,
            r#"{gpu="0", host="b"} 35"#,
            r#"{gpu="1", host="a"} 50"#
        ])
    );
    assert_eq!(instant("clamp(temp, 50, 40)", 60 * S).await.len(), 0);
    assert_eq!(
        instant("clamp_min(temp, 40)", 60 * S).await,
        strings(&[
            r#"{gpu="0", host="a"} 43"#,
            r#"{gpu="0", host="b"} 40"#,
            r#"{gpu="1", host="a"} 58"#
        ])
    );
    assert_eq!(
        instant("clamp_max(temp, 40)", 60 * S).await,
        strings(&[
            r#"{gpu="0", host="a"} 40"#,
            r#"{gpu="0", host="b"} 30"#,
            r#"{gpu="1", host="a"} 40"#
        ])
    );
    // timestamp() of a selector is the sample's time; of anything else, the evaluation time.
    assert_eq!(
        instant("timestamp(temp)", 70 * S).await,
        strings(&[
            r#"{gpu="0", host="a"} 60"#,
            r#"{gpu="0", host="b"} 0"#,
            r#"{gpu="1", host="a"} 60"#
        ])
    );
    assert_eq!(instant("timestamp(abs(temp))", 70 * S).await.len(), 3);
    assert!(instant("timestamp(abs(temp))", 70 * S)
        .await
        .iter()
        .all(|s| s.ends_with(" 70")));
    assert_eq!(instant("time()", 60 * S).await, strings(&["scalar 60"]));
    assert_eq!(instant("vector(2)", 0).await, strings(&["{} 2"]));
    assert_eq!(
        instant("scalar(temp)", 60 * S).await,
        strings(&["scalar NaN"])
    );
    assert_eq!(
        instant("scalar(sum(temp))", 60 * S).await,
        strings(&["scalar 131"])
    );
}

#[tokio::test]
async fn sort_puts_nan_last() {
    assert_eq!(
        instant_ordered("sort(odd)", 60 * S).await,
        strings(&[r#"odd{k="y"} 1"#, r#"odd{k="z"} 2"#, r#"odd{k="x"} NaN"#])
    );
    assert_eq!(
        instant_ordered("sort_desc(odd)", 60 * S).await,
        strings(&[r#"odd{k="z"} 2"#, r#"odd{k="y"} 1"#, r#"odd{k="x"} NaN"#])
    );
    assert_eq!(
        instant_ordered("sort_desc(temp)", 60 * S).await,
        strings(&[
            r#"temp{gpu="1", host="a"} 58"#,
            r#"temp{gpu="0", host="a"} 43"#,
            r#"temp{gpu="0", host="b"} 30"#
        ])
    );
}

#[tokio::test]
async fn label_functions() {
    assert_eq!(
        instant(
            r#"label_replace(temp{gpu="1"}, "h", "host-$1", "host", "(.*)")"#,
            60 * S
        )
        .await,
        strings(&[r#"temp{gpu="1", h="host-a", host="a"} 58"#])
    );
    // No match: unchanged. Anchored: "a" does not match "(b)".
    assert_eq!(
        instant(
            r#"label_replace(temp{gpu="1"}, "h", "$1", "host", "(b)")"#,
            60 * S
        )
        .await,
        strings(&[r#"temp{gpu="1", host="a"} 58"#])
    );
    // An empty result removes the label, which here leaves two series alike.
    let err = error(r#"label_replace(temp, "gpu", "", "gpu", ".*")"#, 60 * S).await;
    assert_eq!(
        err.to_string(),
        "vector cannot contain metrics with the same labelset"
    );
    assert_eq!(
        instant(
            r#"label_join(temp{host="b"}, "id", "/", "host", "gpu", "missing")"#,
            60 * S
        )
        .await,
        strings(&[r#"temp{gpu="0", host="b", id="b/0/"} 30"#])
    );
}

#[tokio::test]
async fn results_serialize_as_prometheus_writes_them() {
    let v = Engine::default()
        .instant_query(
            &source(),
            r#"temp{host="b"}"#,
            60_500,
            &QueryOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        v.to_json(),
        r#"{"resultType":"vector","result":[{"metric":{"__name__":"temp","gpu":"0","host":"b"},"value":[60.500,"30"]}]}"#
    );
    let m = Engine::default()
        .range_query(
            &source(),
            r#"temp{host="b"} / 0"#,
            0,
            1_000,
            1_000,
            &QueryOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        m.to_json(),
        r#"{"resultType":"matrix","result":[{"metric":{"gpu":"0","host":"b"},"values":[[0,"+Inf"],[1,"+Inf"]]}]}"#
    );
    let s = Engine::default()
        .instant_query(&source(), r#""text""#, 1_500, &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(
        s.to_json(),
        r#"{"resultType":"string","result":[1.5,"text"]}"#
    );
    let r = Engine::default()
        .instant_query(
            &source(),
            r#"temp{gpu="1"}[20s]"#,
            60 * S,
            &QueryOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        r.to_json(),
        r#"{"resultType":"matrix","result":[{"metric":{"__name__":"temp","gpu":"1","host":"a"},"values":[[45,"56"],[60,"58"]]}]}"#
    );
}

#[tokio::test]
async fn bad_queries_and_parameters_are_bad_data() {
    let engine = Engine::default();
    let options = QueryOptions::default();
    let src = source();
    for (result, expected) in [
        (engine.instant_query(&src, "temp{", 0, &options).await, "parse error"),
        (
            engine.instant_query(&src, "changes(temp[5m])", 0, &options).await,
            "unsupported: function changes() is not supported",
        ),
        (
            engine.range_query(&src, "temp[1m]", 0, 10, 1, &options).await,
            r#"invalid expression type "range vector" for range query, must be Scalar or instant Vector"#,
        ),
        (
            engine.range_query(&src, "temp", 10, 0, 1, &options).await,
            "end timestamp must not be before start time",
        ),
        (
            engine.range_query(&src, "temp", 0, 10, 0, &options).await,
            "zero or negative query resolution step widths are not accepted",
        ),
        (
            engine.range_query(&src, "temp", 0, 11_001, 1, &options).await,
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ),
    ] {
        let err = result.expect_err(expected);
        assert!(err.to_string().starts_with(expected), "{err}");
        assert_eq!((err.error_type().as_str(), err.http_status()), ("bad_data", 400), "{err}");
    }
    // 11,000 steps after the start (11,001 points) are still within Prometheus' limit.
    assert!(engine
        .range_query(&src, "temp", 0, 11_000, 1, &options)
        .await
        .is_ok());
}

#[tokio::test]
async fn series_and_sample_limits() {
    let limited = |limits: QueryLimits| {
        Engine::new(EngineConfig {
            limits,
            ..EngineConfig::default()
        })
    };
    let options = QueryOptions::default();
    let engine = limited(QueryLimits {
        max_series: 2,
        ..QueryLimits::default()
    });
    let err = engine
        .instant_query(&source(), "temp", 60 * S, &options)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "query selects more than 2 series; add label matchers to select fewer"
    );
    assert_eq!(err.http_status(), 400);
    assert!(engine
        .instant_query(&source(), r#"temp{host="a"}"#, 60 * S, &options)
        .await
        .is_ok());
    // Two selectors count together: 3 + 3 series.
    let engine = limited(QueryLimits {
        max_series: 5,
        ..QueryLimits::default()
    });
    assert!(engine
        .instant_query(&source(), "temp + power", 60 * S, &options)
        .await
        .is_err());
    // temp{gpu="1"}[1m] at 60 s loads 52 54 56 58 (and the fetch window's first sample is not
    // loaded: (0, 60 s]).
    let engine = limited(QueryLimits {
        max_samples: 3,
        ..QueryLimits::default()
    });
    let err = engine
        .instant_query(
            &source(),
            r#"sum_over_time(temp{gpu="1"}[1m])"#,
            60 * S,
            &options,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "query loads more than 3 samples; shorten the time range or select fewer series"
    );
    let engine = limited(QueryLimits {
        max_samples: 4,
        ..QueryLimits::default()
    });
    let fetched = engine
        .prepare_instant(r#"sum_over_time(temp{gpu="1"}[1m])"#, 60 * S, &options)
        .unwrap()
        .fetch(&source())
        .await
        .unwrap();
    assert_eq!((fetched.series_loaded(), fetched.samples_loaded()), (1, 4));
}

#[tokio::test]
async fn deadline_and_cancellation_stop_the_query() {
    let engine = Engine::default();
    let expired = QueryOptions {
        timeout: Some(Duration::ZERO),
        ..QueryOptions::default()
    };
    let err = engine
        .instant_query(&source(), "temp", 0, &expired)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "query timed out in query preparation");
    assert_eq!(
        (err.error_type().as_str(), err.http_status()),
        ("timeout", 503)
    );

    let options = QueryOptions::default();
    let fetched = engine
        .prepare_range("sum(temp)", 0, 60 * S, 15 * S, &options)
        .unwrap()
        .fetch(&source())
        .await
        .unwrap();
    assert!(fetched.evaluate().is_ok());
    options.cancel.cancel();
    let err = fetched.evaluate().unwrap_err();
    assert_eq!(
        err.to_string(),
        "query was canceled in expression evaluation"
    );
    assert_eq!(
        (err.error_type().as_str(), err.http_status()),
        ("canceled", 499)
    );

    let canceled = QueryOptions {
        cancel: {
            let token = CancelToken::new();
            token.cancel();
            token
        },
        ..QueryOptions::default()
    };
    let err = engine
        .instant_query(&source(), "temp", 0, &canceled)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "query was canceled in query preparation");
}

/// A source whose store is down.
struct Unavailable;

impl SeriesSource for Unavailable {
    async fn select(&self, _: &Matchers, _: i64, _: i64) -> Result<Vec<Series>, SourceError> {
        Err(SourceError::unavailable("etcd is unreachable"))
    }

    async fn select_labels(
        &self,
        _: &Matchers,
        _: i64,
        _: i64,
    ) -> Result<Vec<Labels>, SourceError> {
        Err(SourceError::unavailable("etcd is unreachable"))
    }
}

#[tokio::test]
async fn source_failures_map_to_unavailable() {
    let err = Engine::default()
        .instant_query(&Unavailable, "temp", 0, &QueryOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "selecting series failed: etcd is unreachable"
    );
    assert_eq!(
        (err.error_type().as_str(), err.http_status()),
        ("unavailable", 503)
    );
    // A query without selectors never asks the source.
    assert!(Engine::default()
        .instant_query(&Unavailable, "1 + time()", 0, &QueryOptions::default())
        .await
        .is_ok());
}
