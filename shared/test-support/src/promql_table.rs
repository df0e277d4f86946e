//! The differential tests' PromQL table and data, shared by the engine's test and the gateway's:
//! one hour of samples made from the real DCGM export, every query of the DCGM Exporter Dashboard
//! (Grafana 12239) and of the operator and function cases, the evaluation times, the dashboard's
//! variable queries, and the comparison of two Prometheus HTTP API answers (same series and label
//! sets, equal timestamps, values within 1e-9 relative, NaN equal to NaN, the same error type).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use telemetry_model::{
    series_labels, CsvRow, DcgmCsvReader, GpuInfo, MetricName, SampleBatch, TimestampMicros,
};

use crate::testdata::{testdata, REAL_CSV};

/// A label set, as the API writes `metric` objects.
pub type LabelSet = BTreeMap<String, String>;

/// Time between two passes over the export.
pub const PASS_SPACING_MS: i64 = 15_000;
/// Passes in the hour, both ends included.
pub const PASSES: i64 = 241;
/// The counter the dataset adds to the export's gauges.
pub const COUNTER: &str = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION";

/// One series of the dataset: the GPU and metric it was made from, its labels as dcgm-exporter
/// names them ([`series_labels`]) and its samples (Unix milliseconds, value) in time order.
#[derive(Clone, Debug)]
pub struct DatasetSeries {
    pub info: GpuInfo,
    pub metric: String,
    pub labels: LabelSet,
    pub points: Vec<(i64, f64)>,
}

/// The samples both sides hold.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub series: Vec<DatasetSeries>,
    /// Time of the first pass (a whole minute).
    pub start_ms: i64,
    /// The first three hostnames and instances, for the dashboard's variables.
    pub hosts: Vec<String>,
    pub instances: Vec<String>,
}

impl Dataset {
    /// One hour of passes over the real export, ending three hours ago (so promtool writes
    /// blocks), 15 s apart. Each GPU reports a few milliseconds (1..997) into the pass, so no
    /// sample sits on a whole second and the queries (at whole seconds) never meet a window edge
    /// exactly. Values vary per pass and GPU; zero stays zero (idle GPUs). A counter
    /// (`DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`, the integral of the power) restarts on some GPUs;
    /// some GPUs go silent for ten minutes (a gap longer than the lookback) and some stop early.
    pub fn generate() -> Dataset {
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
            let m = (metric_index / 247) as f64;
            let points = passes(g, start_ms)
                .map(|(p, t)| (t, gauge(row.value, p, g, m)))
                .collect();
            series.push(DatasetSeries::new(row, row.metric.as_str(), points));
            if row.metric.as_str() == "DCGM_FI_DEV_POWER_USAGE" {
                power_rows.push((g, row));
            }
        }
        for (g, row) in power_rows {
            let mut energy_mj = 1e9 + g as f64 * 1e7;
            let points = passes(g, start_ms)
                .map(|(p, t)| {
                    let watts = gauge(row.value, p, g, 8.0);
                    if g % 17 == 0 && p == 150 {
                        energy_mj = watts * 3_000.0; // the exporter restarted
                    } else {
                        energy_mj += watts * 15_000.0;
                    }
                    (t, energy_mj)
                })
                .collect();
            series.push(DatasetSeries::new(row, COUNTER, points));
        }
        let values = |name: &str| {
            let mut all: Vec<String> = series
                .iter()
                .filter_map(|s| s.labels.get(name).cloned())
                .collect();
            all.sort();
            all.dedup();
            all.truncate(3);
            all
        };
        let (hosts, instances) = (values("Hostname"), values("instance"));
        Dataset {
            series,
            start_ms,
            hosts,
            instances,
        }
    }

    /// Time of the last pass.
    pub fn end_ms(&self) -> i64 {
        self.start_ms + (PASSES - 1) * PASS_SPACING_MS
    }

    /// Every sample as one batch, as the pipeline carries them (for writing into the store).
    pub fn sample_batch(&self) -> SampleBatch {
        let mut builder = SampleBatch::builder();
        for series in &self.series {
            let metric = MetricName::parse(&series.metric).expect("a valid metric name");
            for &(t_ms, value) in &series.points {
                builder.push(&series.info, &metric, TimestampMicros(t_ms * 1000), value);
            }
        }
        builder.build()
    }

    /// Samples in the dataset.
    pub fn sample_count(&self) -> usize {
        self.series.iter().map(|s| s.points.len()).sum()
    }

    /// The samples as OpenMetrics text.
    pub fn openmetrics(&self) -> String {
        openmetrics(self.series.iter().map(|s| (&s.labels, s.points.as_slice())))
    }
}

impl DatasetSeries {
    fn new(row: &CsvRow, metric: &str, points: Vec<(i64, f64)>) -> Self {
        DatasetSeries {
            info: row.info.clone(),
            metric: metric.to_string(),
            labels: series_labels(&row.info, metric),
            points,
        }
    }
}

/// Series as OpenMetrics text for `promtool tsdb create-blocks-from openmetrics`, series after
/// series, each in time order, ending in `# EOF`.
pub fn openmetrics<'a>(
    series: impl IntoIterator<Item = (&'a LabelSet, &'a [(i64, f64)])>,
) -> String {
    let mut out = String::new();
    for (labels, points) in series {
        let name = labels.get("__name__").expect("every series has a name");
        let mut head = format!("{name}{{");
        for (i, (n, v)) in labels.iter().filter(|(n, _)| *n != "__name__").enumerate() {
            if i > 0 {
                head.push(',');
            }
            write!(head, "{n}={v:?}").unwrap();
        }
        head.push('}');
        for (t_ms, value) in points {
            // Rust prints the shortest decimal that reads back as the same float; Go parses
            // it to exactly that float.
            writeln!(out, "{head} {value} {}.{:03}", t_ms / 1000, t_ms % 1000).unwrap();
        }
    }
    out.push_str("# EOF\n");
    out
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Same series and values; instant vectors as sets.
    Set,
    /// Also the order of an instant vector's values (sort, sort_desc, topk, bottomk).
    Ordered,
    /// Also the JSON of the `data` object, byte for byte.
    ExactJson,
}

/// One query of the table.
#[derive(Clone, Debug)]
pub struct Case {
    pub query: String,
    pub check: Check,
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
pub fn dashboard_cases(data: &Dataset) -> Vec<Case> {
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
pub fn operator_cases(data: &Dataset) -> Vec<Case> {
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

/// Whole-second evaluation times of the instant queries: just after the last pass, inside the
/// gap while the gap's GPUs are still within the lookback, after they went stale, near the start,
/// and after the data (instant selectors empty, ranges still reaching back).
pub fn instants(data: &Dataset) -> [i64; 5] {
    let (start, end) = (data.start_ms, data.end_ms());
    [
        end + 1_000,
        start + 1_700_000,
        start + 1_900_000,
        start + 123_000,
        end + 400_000,
    ]
}

/// The range queries' (start, end, step) in milliseconds: a wide range with an unaligned start,
/// and a fine one across the gap.
pub fn ranges(data: &Dataset) -> [(i64, i64, i64); 2] {
    let (start, end) = (data.start_ms, data.end_ms());
    [
        (start - 113_000, end + 420_000, 45_000),
        (start + 1_380_000, start + 2_280_000, 15_000),
    ]
}

/// Where one query of the table is evaluated: at an instant, or over a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evaluation {
    Instant(i64),
    Range { start: i64, end: i64, step: i64 },
}

/// One request of the differential run: a case of the table at one evaluation.
#[derive(Clone, Debug)]
pub struct TableQuery<'a> {
    pub case: &'a Case,
    pub evaluation: Evaluation,
}

impl TableQuery<'_> {
    /// The API path: `/api/v1/query` or `/api/v1/query_range`.
    pub fn path(&self) -> &'static str {
        match self.evaluation {
            Evaluation::Instant(_) => "/api/v1/query",
            Evaluation::Range { .. } => "/api/v1/query_range",
        }
    }

    /// The request's parameters, as Prometheus' HTTP API takes them.
    pub fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = vec![("query", self.case.query.clone())];
        match self.evaluation {
            Evaluation::Instant(t) => params.push(("time", seconds_param(t))),
            Evaluation::Range { start, end, step } => params.extend([
                ("start", seconds_param(start)),
                ("end", seconds_param(end)),
                ("step", seconds_param(step)),
            ]),
        }
        params
    }

    /// How a difference is reported: the query and where it was evaluated.
    pub fn describe(&self) -> String {
        match self.evaluation {
            Evaluation::Instant(t) => format!("{} @ {t}", self.case.query),
            Evaluation::Range { start, end, step } => {
                format!("{} over {start}..{end}/{step}", self.case.query)
            }
        }
    }
}

/// The whole table: the dashboard's cases first, then the operator and function cases.
pub fn table(data: &Dataset) -> Table {
    let dashboard = dashboard_cases(data);
    let dashboard_count = dashboard.len();
    let mut cases = dashboard;
    cases.extend(operator_cases(data));
    Table {
        cases,
        dashboard_count,
        instants: instants(data),
        ranges: ranges(data),
    }
}

/// The cases and where each is evaluated.
#[derive(Clone, Debug)]
pub struct Table {
    pub cases: Vec<Case>,
    /// How many of the cases come from the dashboard.
    pub dashboard_count: usize,
    pub instants: [i64; 5],
    pub ranges: [(i64, i64, i64); 2],
}

impl Table {
    /// Every case at every instant, then over every range.
    pub fn queries(&self) -> impl Iterator<Item = TableQuery<'_>> {
        self.cases.iter().flat_map(move |case| {
            let instants = self.instants.iter().map(|&t| Evaluation::Instant(t));
            let ranges = self
                .ranges
                .iter()
                .map(|&(start, end, step)| Evaluation::Range { start, end, step });
            instants
                .chain(ranges)
                .map(move |evaluation| TableQuery { case, evaluation })
        })
    }

    /// One line on what was compared.
    pub fn summary(&self, compared: usize) -> String {
        format!(
            "compared {compared} query results ({} queries: {} from the dashboard, {} operator \
             and function cases; {} instants and {} ranges each)",
            self.cases.len(),
            self.dashboard_count,
            self.cases.len() - self.dashboard_count,
            self.instants.len(),
            self.ranges.len()
        )
    }
}

/// Milliseconds as the seconds of an API parameter.
pub fn seconds_param(t_ms: i64) -> String {
    format!("{}", t_ms as f64 / 1000.0)
}

/// The dashboards' variable queries, as Grafana sends them to `/api/v1/label/{label}/values`:
/// the label and the `match[]` selector, if any.
pub fn variable_queries(data: &Dataset) -> Vec<(&'static str, Option<String>)> {
    let (h0, h1) = (&data.hosts[0], &data.hosts[1]);
    vec![
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
    ]
}

/// Selectors compared through `/api/v1/series` and `/api/v1/labels`.
pub fn series_selectors(data: &Dataset) -> Vec<String> {
    vec![
        format!(r#"DCGM_FI_DEV_GPU_TEMP{{Hostname="{}"}}"#, data.hosts[0]),
        r#"{__name__=~"DCGM_FI_DEV_FB_.*", gpu="0"}"#.to_string(),
    ]
}

/// A result reduced to what is compared.
#[derive(Debug)]
enum Outcome {
    Error(String),
    Scalar(i64, f64),
    Vector(Vec<(LabelSet, i64, f64)>),
    Matrix(Vec<(LabelSet, Vec<(i64, f64)>)>),
    Other(String),
}

impl Outcome {
    /// A Prometheus API response body, parsed.
    fn from_json(body: &serde_json::Value) -> Outcome {
        if body["status"] != "success" {
            return Outcome::Error(body["errorType"].as_str().unwrap_or("?").to_string());
        }
        let result = &body["data"]["result"];
        let point = |p: &serde_json::Value| {
            let t = (p[0].as_f64().unwrap() * 1000.0).round() as i64;
            (t, parse_value(p[1].as_str().unwrap()))
        };
        match body["data"]["resultType"].as_str().unwrap_or("?") {
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
}

/// A label set written as a JSON object, as Prometheus writes `metric` and series.
pub fn json_labels(metric: &serde_json::Value) -> LabelSet {
    metric
        .as_object()
        .expect("labels are an object")
        .iter()
        .map(|(n, v)| (n.clone(), v.as_str().expect("a string").to_string()))
        .collect()
}

/// `{a="1", b="2"}`
fn show(labels: &LabelSet) -> String {
    let pairs: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", pairs.join(", "))
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

/// Why `got` differs from `want` (the reference), if it does.
fn difference(got: &Outcome, want: &Outcome, ordered: bool) -> Option<String> {
    match (got, want) {
        (Outcome::Error(a), Outcome::Error(b)) if a == b => None,
        (Outcome::Scalar(t1, v1), Outcome::Scalar(t2, v2)) if t1 == t2 && close(*v1, *v2) => None,
        (Outcome::Vector(a), Outcome::Vector(b)) => {
            if ordered {
                let values = |v: &[(LabelSet, i64, f64)]| v.iter().map(|s| s.2).collect::<Vec<_>>();
                let (va, vb) = (values(a), values(b));
                if va.len() != vb.len() || va.iter().zip(&vb).any(|(x, y)| !close(*x, *y)) {
                    return Some(format!("order of values differs: {va:?} vs {vb:?}"));
                }
            }
            let index: BTreeMap<&LabelSet, (i64, f64)> =
                b.iter().map(|(l, t, v)| (l, (*t, *v))).collect();
            if a.len() != b.len() {
                return Some(format!("{} samples vs {}", a.len(), b.len()));
            }
            for (labels, t, v) in a {
                match index.get(labels) {
                    None => return Some(format!("unexpected series {}", show(labels))),
                    Some((t2, v2)) if t2 != t || !close(*v, *v2) => {
                        return Some(format!("{}: [{t}, {v}] vs [{t2}, {v2}]", show(labels)))
                    }
                    Some(_) => {}
                }
            }
            None
        }
        (Outcome::Matrix(a), Outcome::Matrix(b)) => {
            if a.len() != b.len() {
                let names = |m: &[(LabelSet, Vec<(i64, f64)>)]| {
                    m.iter().map(|s| show(&s.0)).take(3).collect::<Vec<_>>()
                };
                return Some(format!(
                    "{} series vs {} (first: {:?} vs {:?})",
                    a.len(),
                    b.len(),
                    names(a),
                    names(b)
                ));
            }
            let index: BTreeMap<&LabelSet, &Vec<(i64, f64)>> =
                b.iter().map(|(l, p)| (l, p)).collect();
            for (labels, points) in a {
                let Some(expected) = index.get(labels) else {
                    return Some(format!("unexpected series {}", show(labels)));
                };
                if points.len() != expected.len() {
                    return Some(format!(
                        "{}: {} points vs {} (first {:?} vs {:?})",
                        show(labels),
                        points.len(),
                        expected.len(),
                        points.first(),
                        expected.first()
                    ));
                }
                for (p, e) in points.iter().zip(expected.iter()) {
                    if p.0 != e.0 || !close(p.1, e.1) {
                        return Some(format!("{}: {p:?} vs {e:?}", show(labels)));
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

/// Compares the body of one query answer (`got`) with the reference's (`want`, Prometheus'), both
/// in the Prometheus HTTP API's envelope, noting any difference in `failures`. With
/// [`Check::ExactJson`] a successful answer's `data` must also be the same bytes.
pub fn compare_answers(
    what: &str,
    got: &str,
    want: &str,
    check: Check,
    failures: &mut Vec<String>,
) {
    let got_json: serde_json::Value = match serde_json::from_str(got) {
        Ok(json) => json,
        Err(e) => {
            failures.push(format!("{what}: not JSON ({e}): {got:.300}"));
            return;
        }
    };
    let want_json: serde_json::Value =
        serde_json::from_str(want).expect("the reference answers JSON");
    if check == Check::ExactJson
        && got_json["status"] == "success"
        && data_text(got) != data_text(want)
    {
        failures.push(format!(
            "{what}: JSON differs:\n  got:        {:.300}\n  prometheus: {:.300}",
            data_text(got),
            data_text(want)
        ));
    }
    let ordered = check == Check::Ordered;
    if let Some(why) = difference(
        &Outcome::from_json(&got_json),
        &Outcome::from_json(&want_json),
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

/// Asserts that `failures` is empty, listing the first 40 differences of `compared` results.
pub fn assert_no_differences(failures: &[String], compared: usize) {
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
