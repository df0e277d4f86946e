//! Differential test against a real Prometheus (2.42, Debian's package): one hour of samples made
//! from the real DCGM export is backfilled into Prometheus with promtool and held in memory for
//! the engine; every query of the table runs as instant queries at several times and as range
//! queries, and both answers must agree (same series and label sets, equal timestamps, values
//! within 1e-9 relative, NaN equal to NaN, the same error type where Prometheus fails). The
//! metadata queries of the dashboard's variables are compared through `/api/v1/label/.../values`
//! and `/api/v1/series`. Needs `prometheus` and `promtool` on PATH (fails with an install hint).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use promql_engine::{
    label_names, label_values, parse_series_selector, Engine, InMemorySource, Labels, Point,
    QueryOptions, Series, SeriesSource, Value,
};
use telemetry_model::{CsvRow, DcgmCsvReader};
use test_support::{testdata, PrometheusHarness, REAL_CSV};

const PASS_SPACING_MS: i64 = 15_000;
const PASSES: i64 = 241; // one hour, both ends included
const COUNTER: &str = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION";

/// The samples both sides hold.
struct Dataset {
    series: Vec<Series>,
    /// Time of the first pass (a whole minute).
    start_ms: i64,
    hosts: Vec<String>,
    instances: Vec<String>,
}

impl Dataset {
    /// One hour of passes over the real export, ending three hours ago (so promtool writes
    /// blocks), 15 s apart. Each GPU reports a few milliseconds (1..997) into the pass, so no
    /// sample sits on a whole second and the queries (at whole seconds) never meet a window edge
    /// exactly. Values vary per pass and GPU; zero stays zero (idle GPUs). A counter
    /// (`DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`, the integral of the power) restarts on some GPUs;
    /// some GPUs go silent for ten minutes (a gap longer than the lookback) and some stop early.
    fn generate() -> Dataset {
        let rows: Vec<CsvRow> = DcgmCsvReader::open(testdata(REAL_CSV))
            .expect("open the real CSV")
            .filter_map(|outcome| outcome.row())
            .collect();
        assert_eq!(rows.len(), 2470, "the real export has 2,470 rows");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let end_ms = (now_ms / 60_000) * 60_000 - 3 * 3_600_000;
        let start_ms = end_ms - (PASSES - 1) * PASS_SPACING_MS;

        let mut gpu_ordinal: HashMap<String, i64> = HashMap::new();
        let mut series = Vec::new();
        let mut power_rows = Vec::new();
        for (metric_index, row) in rows.iter().enumerate() {
            let next = gpu_ordinal.len() as i64;
            let g = *gpu_ordinal
                .entry(row.info.uuid.as_str().to_string())
                .or_insert(next);
            let labels = series_labels(row, row.metric.as_str());
            let m = (metric_index / 247) as f64;
            let samples = passes(g, start_ms)
                .map(|(p, t)| Point::new(t, gauge(row.value, p, g, m)))
                .collect();
            series.push(Series::new(labels, samples));
            if row.metric.as_str() == "DCGM_FI_DEV_POWER_USAGE" {
                power_rows.push((g, row));
            }
        }
        for (g, row) in power_rows {
            let mut energy_mj = 1e9 + g as f64 * 1e7;
            let samples = passes(g, start_ms)
                .map(|(p, t)| {
                    let watts = gauge(row.value, p, g, 8.0);
                    if g % 17 == 0 && p == 150 {
                        energy_mj = watts * 3_000.0; // the exporter restarted
                    } else {
                        energy_mj += watts * 15_000.0;
                    }
                    Point::new(t, energy_mj)
                })
                .collect();
            series.push(Series::new(series_labels(row, COUNTER), samples));
        }
        let mut hosts = label_values(series.iter().map(|s| &s.labels), "Hostname");
        hosts.truncate(3);
        let mut instances = label_values(series.iter().map(|s| &s.labels), "instance");
        instances.truncate(3);
        Dataset {
            series,
            start_ms,
            hosts,
            instances,
        }
    }

    /// The samples as OpenMetrics text, series after series, each in time order.
    fn openmetrics(&self) -> String {
        let mut out = String::with_capacity(self.series.len() * PASSES as usize * 300);
        for s in &self.series {
            let name = s.labels.metric_name().expect("every series has a name");
            let mut head = format!("{name}{{");
            for (i, (n, v)) in s
                .labels
                .iter()
                .filter(|(n, _)| *n != "__name__")
                .enumerate()
            {
                if i > 0 {
                    head.push(',');
                }
                write!(head, "{n}={v:?}").unwrap();
            }
            head.push('}');
            for p in &s.samples {
                // Rust prints the shortest decimal that reads back as the same float; Go parses
                // it to exactly that float.
                writeln!(
                    out,
                    "{head} {} {}.{:03}",
                    p.value,
                    p.t_ms / 1000,
                    p.t_ms % 1000
                )
                .unwrap();
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

/// A series' labels as dcgm-exporter names them: the DCGM field as `__name__`, `UUID`, `gpu`,
/// `device`, `modelName`, `Hostname`, `container`/`pod`/`namespace` where known, and the rest of
/// the row's labels (`instance`, `job`, `DCGM_FI_DRIVER_VERSION`).
fn series_labels(row: &CsvRow, metric: &str) -> Labels {
    let info = &row.info;
    let mut pairs: Vec<(String, String)> = info
        .labels
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    pairs.push(("__name__".into(), metric.into()));
    pairs.push(("UUID".into(), info.uuid.as_str().into()));
    let optional = [
        ("gpu", info.gpu_index.map(|i| i.to_string())),
        ("device", info.device.clone()),
        ("modelName", info.model_name.clone()),
        ("Hostname", info.hostname.clone()),
        ("container", info.container.clone()),
        ("pod", info.pod.clone()),
        ("namespace", info.namespace.clone()),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            pairs.push((name.into(), value));
        }
    }
    Labels::new(pairs)
}

/// The passes GPU `g` reports in, with their sample times.
fn passes(g: i64, start_ms: i64) -> impl Iterator<Item = (i64, i64)> {
    let jitter = 1 + (g * 37) % 997;
    (0..PASSES)
        .filter(move |&p| !(g % 23 == 5 && (100..140).contains(&p)))
        .filter(move |&p| !(g % 29 == 3 && p > 200))
        .map(move |p| (p, start_ms + p * PASS_SPACING_MS + jitter))
}

fn gauge(base: f64, pass: i64, g: i64, metric: f64) -> f64 {
    if base == 0.0 {
        return 0.0;
    }
    base * (1.0 + 0.08 * (pass as f64 * 0.21 + g as f64 * 1.3 + metric * 0.7).sin())
}

/// How a query's results are compared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Same series and values; instant vectors as sets.
    Set,
    /// Also the order of an instant vector's values (sort, sort_desc, topk, bottomk).
    Ordered,
    /// Also the JSON of the `data` object, byte for byte.
    ExactJson,
}

struct Case {
    query: String,
    check: Check,
}

fn case(query: impl Into<String>, check: Check) -> Case {
    Case {
        query: query.into(),
        check,
    }
}

/// Every panel query of NVIDIA's DCGM Exporter Dashboard (Grafana 12239) in both its published
/// forms, with the template variables substituted as Grafana does (`.*` for All, a value, a
/// regex alternation for several values).
fn dashboard_cases(data: &Dataset) -> Vec<Case> {
    let (h0, h1) = (&data.hosts[0], &data.hosts[1]);
    let (i0, i1) = (&data.instances[0], &data.instances[1]);
    // The current dashboard (dcgm-exporter's grafana/dcgm-exporter-dashboard.json).
    let current = [
        r#"max(DCGM_FI_DEV_GPU_TEMP{Hostname=~"$Hostname", gpu=~"$gpu"}) by (Hostname, gpu, uuid)"#,
        r#"avg(DCGM_FI_DEV_GPU_TEMP{Hostname=~"$Hostname", gpu=~"$gpu"})"#,
        r#"max(DCGM_FI_DEV_POWER_USAGE{Hostname=~"$Hostname", gpu=~"$gpu"}) by (Hostname, gpu, uuid)"#,
        r#"sum(max(DCGM_FI_DEV_POWER_USAGE{Hostname=~"$Hostname", gpu=~"$gpu"}) by (gpu))"#,
        r#"max(DCGM_FI_DEV_SM_CLOCK{Hostname=~"$Hostname", gpu=~"$gpu"} * 1000000) by (Hostname, UUID, gpu)"#,
        r#"max(DCGM_FI_PROF_GR_ENGINE_ACTIVE{Hostname=~"$Hostname", gpu=~"$gpu"}) by (Hostname, gpu, GPU_I_ID, GPU_I_PROFILE)"#,
        r#"max(DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{Hostname=~"$Hostname", gpu=~"$gpu"}) by (Hostname, gpu, GPU_I_ID, GPU_I_PROFILE)"#,
        r#"max(DCGM_FI_DEV_FB_USED{Hostname=~"$Hostname", gpu=~"$gpu"}) by (Hostname, gpu, GPU_I_ID, GPU_I_PROFILE)"#,
    ];
    let current_values = [
        (".*".to_string(), ".*".to_string()),
        (h0.clone(), ".*".to_string()),
        (format!("({h0}|{h1})"), "(0|3)".to_string()),
        (".*".to_string(), "7".to_string()),
    ];
    // The first published revision (gpu-monitoring-tools), by instance and gpu.
    let first = [
        r#"DCGM_FI_DEV_GPU_TEMP{instance=~"${instance}", gpu=~"${gpu}"}"#,
        r#"avg(DCGM_FI_DEV_GPU_TEMP{instance=~"${instance}", gpu=~"${gpu}"})"#,
        r#"DCGM_FI_DEV_POWER_USAGE{instance=~"${instance}", gpu=~"${gpu}"}"#,
        r#"sum(DCGM_FI_DEV_POWER_USAGE{instance=~"${instance}", gpu=~"${gpu}"})"#,
        r#"DCGM_FI_DEV_SM_CLOCK{instance=~"${instance}", gpu=~"${gpu}"}"#,
        r#"DCGM_FI_DEV_MEM_CLOCK{instance=~"${instance}", gpu=~"${gpu}"}"#,
        r#"DCGM_FI_DEV_GPU_UTIL{instance=~"${instance}", gpu=~"${gpu}"}"#,
        r#"DCGM_FI_DEV_MEM_COPY_UTIL{instance=~"${instance}", gpu=~"${gpu}"}"#,
        r#"DCGM_FI_DEV_FB_USED{instance=~"${instance}", gpu=~"${gpu}"}"#,
    ];
    let first_values = [
        (i0.clone(), ".*".to_string()),
        (format!("({i0}|{i1})"), "(1|2)".to_string()),
    ];
    let mut cases = Vec::new();
    for q in current {
        for (host, gpu) in &current_values {
            cases.push(case(
                q.replace("$Hostname", host).replace("$gpu", gpu),
                Check::Set,
            ));
        }
    }
    for q in first {
        for (instance, gpu) in &first_values {
            // Plain selectors answer in label order on both sides: compare the JSON bytes.
            let check = if q.starts_with("DCGM") {
                Check::ExactJson
            } else {
                Check::Set
            };
            cases.push(case(
                q.replace("${instance}", instance).replace("${gpu}", gpu),
                check,
            ));
        }
    }
    cases
}

/// Every operator and function the engine supports, on the same data.
fn operator_cases(data: &Dataset) -> Vec<Case> {
    use Check::*;
    let at = (data.start_ms + 1_000_000) / 1000;
    let h0 = &data.hosts[0];
    let t = "DCGM_FI_DEV_GPU_TEMP";
    let p = "DCGM_FI_DEV_POWER_USAGE";
    let c = COUNTER;
    let list: Vec<(String, Check)> = vec![
        // Selectors, matchers, offset, @.
        (format!("{t} offset 10m"), ExactJson),
        (format!("{t} @ {at}"), ExactJson),
        (format!("{t} @ start()"), Set),
        (format!("{t} @ end() offset 1m"), Set),
        (
            r#"{__name__=~"DCGM_FI_DEV_(GPU_TEMP|POWER_USAGE)", gpu="0"}"#.into(),
            ExactJson,
        ),
        (
            format!(r#"{t}{{Hostname!="{h0}", gpu!~"[0-3]"}}"#),
            ExactJson,
        ),
        (
            format!(r#"{t}{{modelName=~"NVIDIA.*", Hostname=~".*-0[0-9]"}}"#),
            Set,
        ),
        // Arithmetic.
        ("DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE".into(), Set),
        (
            "DCGM_FI_DEV_FB_USED / on(UUID) (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)".into(),
            Set,
        ),
        (format!("{p} * ignoring(instance, job) {t}"), Set),
        (format!("{t} - 1"), ExactJson),
        (format!("2 * {t}"), Set),
        (format!("{t} % 7"), Set),
        (format!("2 ^ ({t} / 20)"), Set),
        (format!("-{t}"), Set),
        (format!("{p} / 0"), Set),
        ("DCGM_FI_DEV_GPU_UTIL / DCGM_FI_DEV_GPU_UTIL".into(), Set),
        ("1 + 2 * 3 - 4 / 8".into(), ExactJson),
        ("2 ^ 10 % 7".into(), Set),
        // Comparisons, with and without bool.
        (format!("{t} > 35"), Set),
        (format!("{t} > bool 35"), Set),
        (format!("35 < {t}"), Set),
        ("DCGM_FI_DEV_GPU_UTIL == 0".into(), Set),
        ("DCGM_FI_DEV_GPU_UTIL != bool 0".into(), Set),
        (format!("{p} >= 300"), Set),
        (format!("{p} <= bool 300"), Set),
        ("DCGM_FI_DEV_FB_USED > DCGM_FI_DEV_FB_FREE".into(), Set),
        ("DCGM_FI_DEV_FB_USED < bool DCGM_FI_DEV_FB_FREE".into(), Set),
        (format!("{t} > on(UUID) {p} / 10"), Set),
        ("5 > bool 3".into(), Set),
        // Many-to-one and one-to-many matching.
        (
            format!("{p} * on(Hostname) group_left() count by (Hostname) ({t})"),
            Set,
        ),
        (
            format!("max by (Hostname) ({t}) - on(Hostname) group_right {t}"),
            Set,
        ),
        (
            format!("{t} / on(Hostname) group_left(modelName) max by (Hostname, modelName) ({p})"),
            Set,
        ),
        // Set operators.
        (
            "DCGM_FI_DEV_GPU_TEMP and on(UUID) (DCGM_FI_DEV_GPU_UTIL > 50)".into(),
            Set,
        ),
        (
            "DCGM_FI_DEV_GPU_TEMP unless on(UUID) (DCGM_FI_DEV_GPU_UTIL > 50)".into(),
            Set,
        ),
        (format!("{t} or {p}"), Set),
        (format!("({t} > 40) or on(Hostname) ({p} > 600)"), Set),
        (format!("{t} and ignoring(job) DCGM_FI_DEV_GPU_UTIL"), Set),
        // Aggregations.
        (format!("sum by (Hostname) ({p})"), Set),
        (format!("avg without (gpu, device, UUID) ({t})"), Set),
        (format!("min by (modelName) ({t})"), Set),
        (format!("max without (instance) ({p})"), Set),
        ("count by (Hostname) (DCGM_FI_DEV_GPU_UTIL > 0)".into(), Set),
        (format!("stddev by (Hostname) ({p})"), Set),
        (format!("stdvar({t})"), Set),
        (format!("topk(5, {p})"), Ordered),
        (format!("bottomk by (Hostname) (1, {p})"), Set),
        (format!("bottomk(3, {t})"), Ordered),
        (format!("quantile(0.9, {p})"), Set),
        (format!("quantile by (Hostname) (0.5, {t})"), Set),
        (format!(r#"count_values("temp", round({t} / 10))"#), Set),
        (format!("group by (modelName) ({t})"), Set),
        (
            r#"sum by (__name__) ({__name__=~"DCGM_FI_DEV_FB_.*"})"#.into(),
            Set,
        ),
        // Range functions.
        (format!("rate({c}[5m])"), Set),
        (format!("irate({c}[1m])"), Set),
        (format!("increase({c}[10m])"), Set),
        (format!("rate({c}[5m] offset 10m)"), Set),
        (format!("sum by (Hostname) (rate({c}[2m]))"), Set),
        (format!("delta({t}[5m])"), Set),
        (format!("idelta({p}[2m])"), Set),
        // Windows holding two or three samples, one of them a reset on some GPUs.
        (format!("rate({c}[45s])"), Set),
        (format!("avg_over_time({t}[10m])"), Set),
        (format!("min_over_time({p}[10m])"), Set),
        (format!("max_over_time({p}[10m])"), Set),
        (format!("sum_over_time({t}[5m])"), Set),
        (format!("count_over_time({t}[15m])"), Set),
        (format!("last_over_time({t}[10m])"), Set),
        (format!("quantile_over_time(0.95, {p}[15m])"), Set),
        (format!("stddev_over_time({p}[10m])"), Set),
        (format!("stdvar_over_time({t}[10m])"), Set),
        // Instant-vector functions.
        (format!("abs({t} - 40)"), Set),
        (format!("clamp_min({t}, 35)"), Set),
        (format!("clamp_max({p}, 300)"), Set),
        (format!("clamp({p}, 200, 400)"), Set),
        (format!("round({p})"), Set),
        (format!("round({p}, 5)"), Set),
        (format!("round({p}, 0.1)"), Set),
        (format!("ceil({p})"), Set),
        (format!("floor({p})"), Set),
        ("time()".into(), ExactJson),
        ("vector(1)".into(), ExactJson),
        ("vector(time())".into(), Set),
        (format!("scalar(sum({p}))"), Set),
        (format!("{t} * scalar(count({t}))"), Set),
        (
            format!(r#"label_replace({t}, "host_short", "$1", "Hostname", "mtv5-(.*)")"#),
            Set,
        ),
        (
            format!(r#"label_replace({t}, "gpu", "", "gpu", ".*")"#),
            Set,
        ),
        (
            format!(r#"label_join({t}, "id", "/", "Hostname", "gpu")"#),
            Set,
        ),
        (format!("sort({p})"), Ordered),
        (format!("sort_desc({p})"), Ordered),
        (format!("timestamp({t})"), Set),
        (format!("timestamp(abs({t}))"), Set),
        // Queries Prometheus rejects: the engine must fail with the same error type.
        (format!("{t} + on(Hostname) {p}"), Set),
        (r#"abs({__name__=~"DCGM_FI_DEV_FB_.*"})"#.into(), Set),
    ];
    list.into_iter().map(|(q, check)| case(q, check)).collect()
}

/// A result reduced to what is compared.
#[derive(Debug)]
enum Outcome {
    Error(String),
    Scalar(i64, f64),
    Vector(Vec<(Labels, i64, f64)>),
    Matrix(Vec<(Labels, Vec<(i64, f64)>)>),
    Other(String),
}

fn from_engine(result: Result<Value, promql_engine::QueryError>) -> Outcome {
    match result {
        Err(e) => Outcome::Error(e.error_type().as_str().to_string()),
        Ok(Value::Scalar { t_ms, value }) => Outcome::Scalar(t_ms, value),
        Ok(Value::String { value, .. }) => Outcome::Other(value),
        Ok(Value::Vector(v)) => {
            Outcome::Vector(v.into_iter().map(|s| (s.labels, s.t_ms, s.value)).collect())
        }
        Ok(Value::Matrix(m)) => Outcome::Matrix(
            m.into_iter()
                .map(|s| {
                    let points = s.points.iter().map(|p| (p.t_ms, p.value)).collect();
                    (s.labels, points)
                })
                .collect(),
        ),
    }
}

fn from_prometheus(body: &serde_json::Value) -> Outcome {
    if body["status"] != "success" {
        return Outcome::Error(body["errorType"].as_str().unwrap_or("?").to_string());
    }
    let result = &body["data"]["result"];
    let point = |p: &serde_json::Value| {
        let t = (p[0].as_f64().unwrap() * 1000.0).round() as i64;
        (t, parse_value(p[1].as_str().unwrap()))
    };
    match body["data"]["resultType"].as_str().unwrap() {
        "scalar" => {
            let (t, v) = point(result);
            Outcome::Scalar(t, v)
        }
        "vector" => Outcome::Vector(
            result
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let (t, v) = point(&s["value"]);
                    (json_labels(&s["metric"]), t, v)
                })
                .collect(),
        ),
        "matrix" => Outcome::Matrix(
            result
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let points = s["values"].as_array().unwrap().iter().map(point).collect();
                    (json_labels(&s["metric"]), points)
                })
                .collect(),
        ),
        other => Outcome::Other(other.to_string()),
    }
}

/// A label set written as a JSON object, as Prometheus writes `metric` and series.
fn json_labels(metric: &serde_json::Value) -> Labels {
    Labels::new(
        metric
            .as_object()
            .expect("labels are an object")
            .iter()
            .map(|(n, v)| (n.clone(), v.as_str().expect("a string").to_string())),
    )
}

fn parse_value(text: &str) -> f64 {
    match text {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().expect("a float"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Why `got` (the engine) differs from `want` (Prometheus), if it does.
fn difference(got: &Outcome, want: &Outcome, ordered: bool) -> Option<String> {
    match (got, want) {
        (Outcome::Error(a), Outcome::Error(b)) if a == b => None,
        (Outcome::Scalar(t1, v1), Outcome::Scalar(t2, v2)) if t1 == t2 && close(*v1, *v2) => None,
        (Outcome::Vector(a), Outcome::Vector(b)) => {
            if ordered {
                let values = |v: &[(Labels, i64, f64)]| v.iter().map(|s| s.2).collect::<Vec<_>>();
                let (va, vb) = (values(a), values(b));
                if va.len() != vb.len() || va.iter().zip(&vb).any(|(x, y)| !close(*x, *y)) {
                    return Some(format!("order of values differs: {va:?} vs {vb:?}"));
                }
            }
            let index: BTreeMap<&Labels, (i64, f64)> =
                b.iter().map(|(l, t, v)| (l, (*t, *v))).collect();
            if a.len() != b.len() {
                return Some(format!("{} samples vs {}", a.len(), b.len()));
            }
            for (labels, t, v) in a {
                match index.get(labels) {
                    None => return Some(format!("unexpected series {labels}")),
                    Some((t2, v2)) if t2 != t || !close(*v, *v2) => {
                        return Some(format!("{labels}: [{t}, {v}] vs [{t2}, {v2}]"))
                    }
                    Some(_) => {}
                }
            }
            None
        }
        (Outcome::Matrix(a), Outcome::Matrix(b)) => {
            if a.len() != b.len() {
                let names = |m: &[(Labels, Vec<(i64, f64)>)]| {
                    m.iter()
                        .map(|s| s.0.to_string())
                        .take(3)
                        .collect::<Vec<_>>()
                };
                return Some(format!(
                    "{} series vs {} (first: {:?} vs {:?})",
                    a.len(),
                    b.len(),
                    names(a),
                    names(b)
                ));
            }
            let index: BTreeMap<&Labels, &Vec<(i64, f64)>> =
                b.iter().map(|(l, p)| (l, p)).collect();
            for (labels, points) in a {
                let Some(expected) = index.get(labels) else {
                    return Some(format!("unexpected series {labels}"));
                };
                if points.len() != expected.len() {
                    return Some(format!(
                        "{labels}: {} points vs {} (first {:?} vs {:?})",
                        points.len(),
                        expected.len(),
                        points.first(),
                        expected.first()
                    ));
                }
                for (p, e) in points.iter().zip(expected.iter()) {
                    if p.0 != e.0 || !close(p.1, e.1) {
                        return Some(format!("{labels}: {p:?} vs {e:?}"));
                    }
                }
            }
            None
        }
        _ => Some(format!("{} vs {}", summary(got), summary(want))),
    }
}

fn summary(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Error(kind) => format!("error {kind}"),
        Outcome::Scalar(t, v) => format!("scalar [{t}, {v}]"),
        Outcome::Vector(v) => format!("vector of {}", v.len()),
        Outcome::Matrix(m) => format!("matrix of {}", m.len()),
        Outcome::Other(s) => s.clone(),
    }
}

/// Compares one engine result with Prometheus' response, noting any difference in `failures`.
fn compare(
    what: &str,
    got: Result<Value, promql_engine::QueryError>,
    response: &test_support::HttpResponse,
    check: Check,
    failures: &mut Vec<String>,
) {
    if check == Check::ExactJson {
        if let Ok(value) = &got {
            let (ours, theirs) = (value.to_json(), response.text());
            if ours != data_text(&theirs) {
                failures.push(format!(
                    "{what}: JSON differs:\n  engine:     {ours:.300}\n  prometheus: {:.300}",
                    data_text(&theirs)
                ));
            }
        }
    }
    let ordered = check == Check::Ordered;
    if let Some(why) = difference(
        &from_engine(got),
        &from_prometheus(&response.json()),
        ordered,
    ) {
        failures.push(format!("{what}: {why}"));
    }
}

/// The `data` object of a Prometheus response body, as text.
fn data_text(body: &str) -> &str {
    body.strip_prefix(r#"{"status":"success","data":"#)
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or(body)
}

#[tokio::test]
async fn engine_answers_as_prometheus_does() {
    let data = Dataset::generate();
    let prometheus = PrometheusHarness::start_with_openmetrics(&data.openmetrics()).await;
    let source = InMemorySource::new(data.series.clone());
    let engine = Engine::default();
    let options = QueryOptions::default();

    let start = data.start_ms;
    let end = start + (PASSES - 1) * PASS_SPACING_MS;
    // Whole seconds: just after the last pass, inside the gap
    // while the gap's GPUs are still within the lookback, after they went stale, near the start,
    // and after the data (instant selectors empty, ranges still reaching back).
    let instants = [
        end + 1_000,
        start + 1_700_000,
        start + 1_900_000,
        start + 123_000,
        end + 400_000,
    ];
    // A wide range with an unaligned start, and a fine one across the gap.
    let ranges = [
        (start - 113_000, end + 420_000, 45_000),
        (start + 1_380_000, start + 2_280_000, 15_000),
    ];

    let mut cases = dashboard_cases(&data);
    let dashboard_count = cases.len();
    cases.extend(operator_cases(&data));
    let mut compared = 0;
    let mut failures = Vec::new();
    for case in &cases {
        for &t in &instants {
            let time = format!("{}", t as f64 / 1000.0);
            // Prometheus answers while the engine evaluates.
            let params = [("query", case.query.as_str()), ("time", &time)];
            let (response, got) = tokio::join!(
                prometheus.get("/api/v1/query", &params),
                engine.instant_query(&source, &case.query, t, &options)
            );
            let at = format!("{} @ {t}", case.query);
            compare(&at, got, &response, case.check, &mut failures);
            compared += 1;
        }
        for &(from, to, step) in &ranges {
            let params = [
                ("query", case.query.as_str()),
                ("start", &format!("{}", from as f64 / 1000.0)),
                ("end", &format!("{}", to as f64 / 1000.0)),
                ("step", &format!("{}", step as f64 / 1000.0)),
            ];
            let (response, got) = tokio::join!(
                prometheus.get("/api/v1/query_range", &params),
                engine.range_query(&source, &case.query, from, to, step, &options)
            );
            let over = format!("{} over {from}..{to}/{step}", case.query);
            compare(&over, got, &response, case.check, &mut failures);
            compared += 1;
        }
    }

    // The dashboards' variable queries, as Grafana sends them to the metadata endpoints.
    let (h0, h1) = (&data.hosts[0], &data.hosts[1]);
    let window = [
        ("start", format!("{}", start as f64 / 1000.0)),
        ("end", format!("{}", (end + 1_000) as f64 / 1000.0)),
    ];
    let variables = [
        // label_values(DCGM_FI_DEV_FB_FREE, Hostname)
        ("Hostname", Some("DCGM_FI_DEV_FB_FREE".to_string())),
        // label_values(DCGM_FI_DEV_FB_FREE{Hostname=~"$Hostname"}, gpu)
        (
            "gpu",
            Some(r#"DCGM_FI_DEV_FB_FREE{Hostname=~".*"}"#.to_string()),
        ),
        (
            "gpu",
            Some(format!(r#"DCGM_FI_DEV_FB_FREE{{Hostname=~"({h0}|{h1})"}}"#)),
        ),
        // label_values(DCGM_FI_DEV_GPU_TEMP, instance)
        ("instance", Some("DCGM_FI_DEV_GPU_TEMP".to_string())),
        // label_values(gpu)
        ("gpu", None),
    ];
    let mut metadata_compared = 0;
    for (label, selector) in &variables {
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
    for selector in [
        format!(r#"DCGM_FI_DEV_GPU_TEMP{{Hostname="{h0}"}}"#),
        r#"{__name__=~"DCGM_FI_DEV_FB_.*", gpu="0"}"#.to_string(),
    ] {
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
            .map(json_labels)
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
        "compared {compared} query results ({} queries: {dashboard_count} from the dashboard, {} \
         operator and function cases; {} instants and {} ranges each) and {metadata_compared} \
         metadata answers; {} differences",
        cases.len(),
        cases.len() - dashboard_count,
        instants.len(),
        ranges.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {compared} results differ from Prometheus:\n{}",
        failures.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
