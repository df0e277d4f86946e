//! The Prometheus HTTP API (`/api/v1/query`, `/query_range`, `/series`, `/labels`,
//! `/label/{name}/values`, `/metadata`, `/status/buildinfo`) over the telemetry store, so Grafana's
//! Prometheus data source and `promtool` work against the gateway unchanged. Requests are GET with
//! a query string or POST with a form-encoded body, as Prometheus takes them (the body's values
//! win, unknown parameters are ignored); answers use Prometheus' envelope
//! (`{"status":"success","data":...}`, errors as `status`/`errorType`/`error` with Prometheus'
//! HTTP statuses). PromQL is evaluated by `promql-engine` over [`StoreSeries`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use promql_engine::{
    label_names, parse_duration, parse_series_selector, CancelToken, ErrorType, Labels, Matchers,
    PreparedQuery, QueryError, QueryOptions, SeriesSource,
};
use serde::Serialize;
use telemetry_model::TimestampMicros;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::backend::{ApiState, Backend};
use crate::dcgm_fields::dcgm_field;
use crate::error::ApiError;
use crate::prom_source::StoreSeries;

pub const TAG_PROMETHEUS: &str = "prometheus";

/// The Prometheus release whose HTTP API and PromQL results the gateway matches (its differential
/// test runs against it); `/api/v1/status/buildinfo` reports it so Grafana picks its features.
pub const PROMETHEUS_COMPATIBLE_VERSION: &str = "2.42.0";

/// Times beyond this many milliseconds from the epoch (about ±146 million years) are clamped, so
/// Prometheus' "min time" and "max time" (what `promtool` sends for an open window) work and the
/// engine's window arithmetic cannot overflow.
const TIME_LIMIT_MS: i64 = i64::MAX / 2;

/// The largest `limit` of the metadata endpoints (0 means no limit).
const MAX_LIMIT: usize = 1_000_000_000;

/// A selector matching every series (the metadata endpoints without `match[]`).
const EVERY_SERIES: &str = r#"{__name__=~".+"}"#;

/// The Prometheus API routes with their OpenAPI description.
pub fn prometheus_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(query_get, query_post))
        .routes(routes!(query_range_get, query_range_post))
        .routes(routes!(series_get, series_post))
        .routes(routes!(labels_get, labels_post))
        .routes(routes!(label_values))
        .routes(routes!(metadata))
        .routes(routes!(buildinfo))
}

/// A failed request, in Prometheus' terms.
#[derive(Debug)]
pub struct PromError {
    error_type: ErrorType,
    message: String,
}

impl PromError {
    fn bad_data(message: impl Into<String>) -> Self {
        PromError {
            error_type: ErrorType::BadData,
            message: message.into(),
        }
    }

    fn invalid(parameter: &str, reason: impl std::fmt::Display) -> Self {
        PromError::bad_data(format!("invalid parameter {parameter:?}: {reason}"))
    }
}

impl From<QueryError> for PromError {
    fn from(error: QueryError) -> Self {
        PromError {
            error_type: error.error_type(),
            message: error.to_string(),
        }
    }
}

impl From<ApiError> for PromError {
    fn from(error: ApiError) -> Self {
        let error_type = match error.status().as_u16() {
            503 => ErrorType::Unavailable,
            400..=499 => ErrorType::BadData,
            _ => ErrorType::Internal,
        };
        PromError {
            error_type,
            message: error.to_string(),
        }
    }
}

impl IntoResponse for PromError {
    fn into_response(self) -> Response {
        let body = format!(
            r#"{{"status":"error","errorType":"{}","error":{}}}"#,
            self.error_type.as_str(),
            serde_json::to_string(&self.message).expect("a string serializes")
        );
        let status = StatusCode::from_u16(self.error_type.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(status, body)
    }
}

/// `{"status":"success","data":<data>}`, `data` already JSON.
fn success(data: &str) -> Response {
    let mut body = String::with_capacity(data.len() + 30);
    body.push_str(r#"{"status":"success","data":"#);
    body.push_str(data);
    body.push('}');
    json_response(StatusCode::OK, body)
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn respond(result: Result<String, PromError>) -> Response {
    match result {
        Ok(data) => success(&data),
        Err(error) => error.into_response(),
    }
}

/// The parameters of one request: a POST's form-encoded body first, then the query string, as
/// Go's `Request.ParseForm` orders them (so the body's value of a name wins).
#[derive(Debug, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(query: Option<&str>, body: Option<(&HeaderMap, &Bytes)>) -> Form {
        let mut pairs = Vec::new();
        if let Some((headers, body)) = body {
            let form_encoded = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            if form_encoded {
                pairs.extend(form_urlencoded::parse(body).into_owned());
            }
        }
        if let Some(query) = query {
            pairs.extend(form_urlencoded::parse(query.as_bytes()).into_owned());
        }
        Form(pairs)
    }

    /// The first value of `name`, if given (an empty value counts as not given, as in Go).
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn time(&self, name: &str, default: i64) -> Result<i64, PromError> {
        self.get(name).map_or(Ok(default), |text| {
            parse_time(text).map_err(|e| PromError::invalid(name, e))
        })
    }

    fn required_time(&self, name: &str) -> Result<i64, PromError> {
        parse_time(self.get(name).unwrap_or("")).map_err(|e| PromError::invalid(name, e))
    }

    /// The `timeout` parameter, and a token that cancels the query when the request is dropped
    /// (the client went away, or the request timed out).
    fn options(&self) -> Result<(QueryOptions, CancelOnDrop), PromError> {
        let timeout = self
            .get("timeout")
            .map(|text| {
                parse_duration_ms(text)
                    .map(|ms| std::time::Duration::from_millis(ms.max(0) as u64))
                    .map_err(|e| PromError::invalid("timeout", e))
            })
            .transpose()?;
        let cancel = CancelToken::new();
        let options = QueryOptions {
            timeout,
            cancel: cancel.clone(),
        };
        Ok((options, CancelOnDrop(cancel)))
    }

    /// The `match[]` selectors; `None` when there are none.
    fn matchers(&self) -> Result<Option<Vec<Matchers>>, PromError> {
        let selectors: Vec<&str> = self.all("match[]").collect();
        if selectors.is_empty() {
            return Ok(None);
        }
        selectors
            .into_iter()
            .map(|s| parse_series_selector(s).map_err(|e| PromError::invalid("match[]", e)))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The `limit` parameter (0 or absent: no limit).
    fn limit(&self) -> Result<usize, PromError> {
        match self.get("limit").map(str::parse::<usize>) {
            None | Some(Ok(0)) => Ok(usize::MAX),
            Some(Ok(n)) if n <= MAX_LIMIT => Ok(n),
            _ => Err(PromError::invalid(
                "limit",
                format!("must be an integer from 0 to {MAX_LIMIT}"),
            )),
        }
    }
}

/// Trips the query's cancel token when dropped.
struct CancelOnDrop(CancelToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A time as Prometheus takes it: Unix seconds with an optional fraction, or RFC 3339; in
/// milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        if !seconds.is_finite() {
            return Err(format!("cannot parse {text:?} to a valid timestamp"));
        }
        // `as` saturates at the i64 range; the clamp brings it within the engine's.
        let ms = (seconds * 1000.0).round() as i64;
        return Ok(ms.clamp(-TIME_LIMIT_MS, TIME_LIMIT_MS));
    }
    TimestampMicros::parse_rfc3339(text)
        .map(|t| t.0.div_euclid(1000))
        .map_err(|_| format!("cannot parse {text:?} to a valid timestamp"))
}

/// A duration as Prometheus takes it: seconds with an optional fraction, or a PromQL duration
/// (`15s`, `1m30s`, `500ms`); in milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        let ms = seconds * 1000.0;
        if !ms.is_finite() || ms.abs() >= TIME_LIMIT_MS as f64 {
            return Err(format!(
                "cannot parse {text:?} to a valid duration. It overflows int64"
            ));
        }
        return Ok(ms.trunc() as i64);
    }
    parse_duration(text)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .map_err(|_| format!("cannot parse {text:?} to a valid duration"))
}

fn now_ms() -> i64 {
    TimestampMicros::now().0.div_euclid(1000)
}

/// Fetches through the store and evaluates on a blocking thread (evaluation is CPU work).
async fn run(backend: &Backend, prepared: PreparedQuery) -> Result<String, PromError> {
    let source = StoreSeries::new(backend);
    let fetched = prepared.fetch(&source).await?;
    tokio::task::spawn_blocking(move || fetched.evaluate().map(|value| value.to_json()))
        .await
        .map_err(|e| PromError {
            error_type: ErrorType::Internal,
            message: format!("query evaluation failed: {e}"),
        })?
        .map_err(PromError::from)
}

async fn instant_query(state: &ApiState, form: &Form) -> Result<String, PromError> {
    let time = form.time("time", now_ms())?;
    let (options, _cancel) = form.options()?;
    let backend = state.backend()?;
    let query = form.get("query").unwrap_or("");
    let prepared = backend.engine().prepare_instant(query, time, &options)?;
    run(backend, prepared).await
}

async fn range_query(state: &ApiState, form: &Form) -> Result<String, PromError> {
    let start = form.required_time("start")?;
    let end = form.required_time("end")?;
    let step = parse_duration_ms(form.get("step").unwrap_or(""))
        .map_err(|e| PromError::invalid("step", e))?;
    let (options, _cancel) = form.options()?;
    let backend = state.backend()?;
    let query = form.get("query").unwrap_or("");
    let prepared = backend
        .engine()
        .prepare_range(query, start, end, step, &options)?;
    run(backend, prepared).await
}

/// The label sets the `match[]` selectors (every series without them, unless `required`) select
/// in the request's `start`..`end` (default: all time), each once, sorted.
async fn selected_labels(
    state: &ApiState,
    form: &Form,
    required: bool,
) -> Result<Vec<Labels>, PromError> {
    let start = form.time("start", -TIME_LIMIT_MS)?;
    let end = form.time("end", TIME_LIMIT_MS)?;
    let matchers = match form.matchers()? {
        Some(matchers) => matchers,
        None if required => return Err(PromError::bad_data("no match[] parameter provided")),
        None => vec![parse_series_selector(EVERY_SERIES).expect("a valid selector")],
    };
    let backend = state.backend()?;
    let source = StoreSeries::new(backend);
    let mut all = Vec::new();
    for m in &matchers {
        all.extend(
            source
                .select_labels(m, start, end)
                .await
                .map_err(QueryError::Select)?,
        );
    }
    all.sort();
    all.dedup();
    Ok(all)
}

async fn series(state: &ApiState, form: &Form) -> Result<String, PromError> {
    let limit = form.limit()?;
    let labels = selected_labels(state, form, true).await?;
    let mut out = String::from("[");
    for (i, l) in labels.iter().take(limit).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&l.to_json());
    }
    out.push(']');
    Ok(out)
}

fn string_array(values: &[String]) -> String {
    serde_json::to_string(values).expect("strings serialize")
}

async fn labels(state: &ApiState, form: &Form) -> Result<String, PromError> {
    let limit = form.limit()?;
    let selected = selected_labels(state, form, false).await?;
    let mut names = label_names(&selected);
    names.truncate(limit);
    Ok(string_array(&names))
}

/// Prometheus 2's label names: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

// ---- OpenAPI descriptions of the parameters and bodies (the handlers read `Form`). ----

/// Parameters of an instant query.
#[derive(Debug, Serialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct InstantQueryParams {
    /// The PromQL expression.
    #[param(example = "max(DCGM_FI_DEV_GPU_TEMP) by (Hostname, gpu)")]
    pub query: String,
    /// Evaluation time: Unix seconds (with an optional fraction) or RFC 3339; default now.
    #[param(example = "1752871354.5")]
    pub time: Option<String>,
    /// Shorter limit than the gateway's query timeout: seconds or a duration (`10s`).
    #[param(example = "10s")]
    pub timeout: Option<String>,
}

/// Parameters of a range query.
#[derive(Debug, Serialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct RangeQueryParams {
    /// The PromQL expression (a scalar or instant vector).
    #[param(example = "max(DCGM_FI_DEV_GPU_TEMP) by (Hostname, gpu)")]
    pub query: String,
    /// First evaluation time: Unix seconds or RFC 3339.
    #[param(example = "1752867754")]
    pub start: String,
    /// Last evaluation time (no later than `start + 11000 * step`).
    #[param(example = "1752871354")]
    pub end: String,
    /// Time between evaluations: seconds or a duration (`15s`).
    #[param(example = "15s")]
    pub step: String,
    /// Shorter limit than the gateway's query timeout.
    pub timeout: Option<String>,
}

/// Parameters of the series and label endpoints.
#[derive(Debug, Serialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct SeriesParams {
    /// Series selectors; a series matching any of them counts. Required by `/api/v1/series`.
    #[param(rename = "match[]", example = json!(["DCGM_FI_DEV_GPU_TEMP{Hostname=\"mtv5-dgx1-hgpu-031\"}"]))]
    #[serde(rename = "match[]")]
    #[schema(rename = "match[]")]
    pub match_: Option<Vec<String>>,
    /// Start of the window: Unix seconds or RFC 3339; default: all time.
    pub start: Option<String>,
    /// End of the window; default: all time.
    pub end: Option<String>,
    /// At most this many results (0: all).
    #[param(value_type = Option<u32>, minimum = 0, maximum = 1000000000)]
    pub limit: Option<String>,
}

/// Parameters of `/api/v1/metadata`.
#[derive(Debug, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetadataParams {
    /// Only this metric.
    #[param(example = "DCGM_FI_DEV_GPU_TEMP")]
    pub metric: Option<String>,
    /// At most this many metrics (0: all).
    #[param(value_type = Option<u32>, minimum = 0, maximum = 1000000000)]
    pub limit: Option<String>,
}

/// A successful answer: `data` is the query result (`resultType` and `result`), the series (label
/// objects), the label names or values, the metadata or the build information.
#[derive(Serialize, ToSchema)]
pub struct PromSuccess {
    #[schema(example = "success")]
    pub status: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A failed request, as Prometheus reports it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromFailure {
    #[schema(example = "error")]
    pub status: String,
    /// `bad_data` (400), `execution` (422), `timeout` or `unavailable` (503), `canceled` (499),
    /// `internal` (500).
    #[schema(example = "bad_data")]
    pub error_type: String,
    #[schema(example = "parse error: unexpected end of input")]
    pub error: String,
}

/// A successful answer whose `data` is a list (series, label names or values).
#[derive(Serialize, ToSchema)]
pub struct PromListSuccess {
    #[schema(example = "success")]
    pub status: String,
    /// Label sets (objects) for `/series`, strings for the label endpoints.
    #[schema(value_type = Vec<Value>)]
    pub data: Vec<serde_json::Value>,
}

macro_rules! query_handlers {
    ($get:ident, $post:ident, $path:literal, $params:ty, $body:ty, $run:ident, $summary:literal, $op:literal) => {
        #[doc = $summary]
        #[utoipa::path(
            get,
            path = $path,
            tag = TAG_PROMETHEUS,
            operation_id = concat!($op, "Get"),
            params($params),
            responses(
                (status = 200, description = "The result", body = $body),
                (status = 400, description = "Bad parameters or query (`bad_data`)", body = PromFailure),
                (status = 422, description = "The query cannot be evaluated (`execution`)", body = PromFailure),
                (status = 503, description = "Timed out, or the store is unavailable", body = PromFailure),
            )
        )]
        pub async fn $get(State(state): State<ApiState>, RawQuery(query): RawQuery) -> Response {
            respond($run(&state, &Form::parse(query.as_deref(), None)).await)
        }

        #[doc = $summary]
        #[utoipa::path(
            post,
            path = $path,
            tag = TAG_PROMETHEUS,
            operation_id = concat!($op, "Post"),
            request_body(content = Option<$params>, content_type = "application/x-www-form-urlencoded"),
            responses(
                (status = 200, description = "The result", body = $body),
                (status = 400, description = "Bad parameters or query (`bad_data`)", body = PromFailure),
                (status = 422, description = "The query cannot be evaluated (`execution`)", body = PromFailure),
                (status = 503, description = "Timed out, or the store is unavailable", body = PromFailure),
            )
        )]
        pub async fn $post(
            State(state): State<ApiState>,
            RawQuery(query): RawQuery,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            respond($run(&state, &Form::parse(query.as_deref(), Some((&headers, &body)))).await)
        }
    };
}

query_handlers!(
    query_get,
    query_post,
    "/api/v1/query",
    InstantQueryParams,
    PromSuccess,
    instant_query,
    "PromQL instant query (Prometheus API).",
    "promQuery"
);
query_handlers!(
    query_range_get,
    query_range_post,
    "/api/v1/query_range",
    RangeQueryParams,
    PromSuccess,
    range_query,
    "PromQL range query (Prometheus API): evaluated at start, start + step, ... up to end.",
    "promQueryRange"
);
query_handlers!(
    series_get,
    series_post,
    "/api/v1/series",
    SeriesParams,
    PromListSuccess,
    series,
    "Series matching match[] selectors (Prometheus API), as label sets.",
    "promSeries"
);
query_handlers!(
    labels_get,
    labels_post,
    "/api/v1/labels",
    SeriesParams,
    PromListSuccess,
    labels,
    "Label names of the series matching match[] (every series without), sorted (Prometheus API).",
    "promLabels"
);

/// Values of one label over the series matching match[] (every series without), sorted
/// (Prometheus API); `__name__` lists metric names.
#[utoipa::path(
    get,
    path = "/api/v1/label/{name}/values",
    tag = TAG_PROMETHEUS,
    operation_id = "promLabelValues",
    params(("name" = String, Path, description = "Label name", example = "Hostname"), SeriesParams),
    responses(
        (status = 200, description = "The values", body = PromListSuccess),
        (status = 400, description = "Bad parameters (`bad_data`)", body = PromFailure),
        (status = 503, description = "The store is unavailable", body = PromFailure),
    )
)]
pub async fn label_values(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let form = Form::parse(query.as_deref(), None);
    respond(
        async {
            if !is_label_name(&name) {
                return Err(PromError::bad_data(format!("invalid label name: {name:?}")));
            }
            let limit = form.limit()?;
            let selected = selected_labels(&state, &form, false).await?;
            let mut values = promql_engine::label_values(&selected, &name);
            values.truncate(limit);
            Ok(string_array(&values))
        }
        .await,
    )
}

/// Metric metadata (type, help, unit) of the metrics in the store (Prometheus API); types and help
/// are dcgm-exporter's, `unknown` for fields it does not describe.
#[utoipa::path(
    get,
    path = "/api/v1/metadata",
    tag = TAG_PROMETHEUS,
    operation_id = "promMetadata",
    params(MetadataParams),
    responses(
        (status = 200, description = "Metadata by metric name", body = PromSuccess),
        (status = 400, description = "Bad parameters (`bad_data`)", body = PromFailure),
        (status = 503, description = "The store is unavailable", body = PromFailure),
    )
)]
pub async fn metadata(State(state): State<ApiState>, RawQuery(query): RawQuery) -> Response {
    let form = Form::parse(query.as_deref(), None);
    respond(
        async {
            let limit = form.limit()?;
            let backend = state.backend()?;
            let names = backend
                .bounded("list GPUs", backend.store().metric_names())
                .await?;
            let mut data: BTreeMap<&str, [MetricMetadata; 1]> = BTreeMap::new();
            for name in names
                .iter()
                .filter(|n| form.get("metric").is_none_or(|m| m == n.as_str()))
                .take(limit)
            {
                let field = dcgm_field(name.as_str());
                data.insert(
                    name.as_str(),
                    [MetricMetadata {
                        kind: field.map_or("unknown", |f| f.kind.as_str()),
                        help: field.map_or("", |f| f.help),
                        unit: field.and_then(|f| f.unit).unwrap_or(""),
                    }],
                );
            }
            Ok(serde_json::to_string(&data).expect("metadata serializes"))
        }
        .await,
    )
}

/// One metric's metadata, as Prometheus writes it.
#[derive(Serialize)]
struct MetricMetadata {
    #[serde(rename = "type")]
    kind: &'static str,
    help: &'static str,
    unit: &'static str,
}

/// Build information, as Prometheus reports it: `version` is the Prometheus release whose API the
/// gateway matches (Grafana reads it to pick features).
#[utoipa::path(
    get,
    path = "/api/v1/status/buildinfo",
    tag = TAG_PROMETHEUS,
    operation_id = "promBuildinfo",
    responses((status = 200, description = "Build information", body = PromSuccess))
)]
pub async fn buildinfo() -> Response {
    let mut data = String::new();
    write!(
        data,
        r#"{{"version":"{PROMETHEUS_COMPATIBLE_VERSION}","revision":"gpu-telemetry-gateway {}","branch":"","buildUser":"","buildDate":"","goVersion":""}}"#,
        env!("CARGO_PKG_VERSION")
    )
    .expect("writing to a string");
    success(&data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_unix_seconds_or_rfc3339_in_milliseconds() {
        assert_eq!(parse_time("1752871354"), Ok(1_752_871_354_000));
        assert_eq!(parse_time("1752871354.5"), Ok(1_752_871_354_500));
        assert_eq!(parse_time("-1.25"), Ok(-1_250));
        assert_eq!(parse_time("2025-07-18T20:42:34.5Z"), Ok(1_752_871_354_500));
        assert_eq!(
            parse_time("2025-07-18T22:42:34+02:00"),
            Ok(1_752_871_354_000)
        );
        // promtool's open window: Prometheus' min and max time.
        assert_eq!(parse_time("-9223309901257974"), Ok(-TIME_LIMIT_MS));
        assert_eq!(parse_time("9223309901257974"), Ok(TIME_LIMIT_MS));
        for bad in ["", "now", "NaN", "inf", "2025-07-18"] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_are_seconds_or_promql_durations_in_milliseconds() {
        assert_eq!(parse_duration_ms("15"), Ok(15_000));
        assert_eq!(parse_duration_ms("0.5"), Ok(500));
        assert_eq!(parse_duration_ms("15s"), Ok(15_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("-1"), Ok(-1_000));
        for bad in ["", "15x", "1e300", "NaN"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_post_body_wins_over_the_query_string_and_other_bodies_are_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let body = Bytes::from_static(b"query=up&match%5B%5D=a");
        let form = Form::parse(Some("query=down&match[]=b&time="), Some((&headers, &body)));
        assert_eq!(form.get("query"), Some("up"));
        assert_eq!(form.all("match[]").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(form.get("time"), None);
        let json = HeaderMap::new();
        let form = Form::parse(Some("query=down"), Some((&json, &body)));
        assert_eq!(form.get("query"), Some("down"));
    }

    #[test]
    fn limits_are_bounded_and_zero_means_all() {
        let limit = |q: &str| Form::parse(Some(q), None).limit().map_err(|e| e.message);
        assert_eq!(limit(""), Ok(usize::MAX));
        assert_eq!(limit("limit=0"), Ok(usize::MAX));
        assert_eq!(limit("limit=5"), Ok(5));
        assert_eq!(limit("limit=1000000000"), Ok(MAX_LIMIT));
        for bad in ["limit=1000000001", "limit=-1", "limit=x"] {
            assert!(limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_names_follow_prometheus_2() {
        for good in ["Hostname", "__name__", "GPU_I_ID", "a1"] {
            assert!(is_label_name(good), "{good}");
        }
        for bad in ["", "1a", "a-b", "a.b", "é"] {
            assert!(!is_label_name(bad), "{bad}");
        }
    }

    #[test]
    fn errors_use_prometheus_envelope_and_status() {
        let response = PromError::bad_data("no match[] parameter provided").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let response = PromError::from(ApiError::NotConnected).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let error = PromError::from(QueryError::Evaluate("x".into()));
        assert_eq!(error.error_type, ErrorType::Execution);
    }
}
