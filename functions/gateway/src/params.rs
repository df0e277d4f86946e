//! Request parameters: the documented query structs (the OpenAPI spec is generated from them) and
//! their validation into typed requests. Parsing is done here rather than by serde so that every
//! malformed value becomes a precise 400 problem naming the parameter.

use std::time::Duration;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::Serialize;
use telemetry_model::{GpuUuid, MetricName, TimestampMicros};
use telemetry_store::{Aggregation, Cursor, Order, SampleQuery};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

/// Default page size of a telemetry query.
pub const DEFAULT_LIMIT: usize = 1000;
/// Largest page size of a telemetry query.
pub const MAX_LIMIT: usize = 10_000;
/// Longest accepted value of a free-text filter.
pub(crate) const MAX_FILTER_LEN: usize = 256;
/// Longest accepted cursor.
const MAX_CURSOR_LEN: usize = 200;
/// Longest accepted aggregation step: one year.
const MAX_STEP: Duration = Duration::from_secs(366 * 24 * 3600);

/// The `{id}` path segment: a GPU UUID, validated before anything else happens.
#[derive(Debug, Clone, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct GpuIdPath {
    /// The GPU's UUID, e.g. `GPU-5fd4f087-86f3-7a43-b711-4771313afc50`.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    pub id: String,
}

/// A validated GPU id taken from the path. Extracting it never touches etcd, so hostile ids
/// (`/`, `..`, NUL, over-long) are answered with 400 before any storage access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuId(pub GpuUuid);

impl<S: Send + Sync> FromRequestParts<S> for GpuId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::InvalidGpuId(rejection.body_text()))?;
        GpuUuid::parse(&raw)
            .map(GpuId)
            .map_err(|e| ApiError::InvalidGpuId(e.to_string()))
    }
}

/// The raw `name=value` pairs of a query string, percent-decoded.
pub(crate) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| {
        form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// Stores `value` into a single-valued parameter, rejecting a second occurrence.
pub(crate) fn set_once(
    slot: &mut Option<String>,
    parameter: &'static str,
    value: String,
) -> Result<(), ApiError> {
    if slot.is_some() {
        return Err(ApiError::invalid(parameter, "given more than once"));
    }
    *slot = Some(value);
    Ok(())
}

/// Filters of `GET /api/v1/gpus`.
#[derive(Debug, Clone, Default, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListGpusParams {
    /// Only GPUs on this host (exact match).
    #[param(max_length = 256, example = "mtv5-dgx1-hgpu-031")]
    pub hostname: Option<String>,
    /// Only GPUs of this model (exact match).
    #[param(max_length = 256, example = "NVIDIA H100 80GB HBM3")]
    pub model_name: Option<String>,
}

impl ListGpusParams {
    pub fn from_query(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut params = ListGpusParams::default();
        for (name, value) in query_pairs(raw) {
            match name.as_str() {
                "hostname" => set_once(&mut params.hostname, "hostname", value)?,
                "model_name" => set_once(&mut params.model_name, "model_name", value)?,
                _ => {}
            }
        }
        for (parameter, value) in [
            ("hostname", &params.hostname),
            ("model_name", &params.model_name),
        ] {
            if value.as_ref().is_some_and(|v| v.len() > MAX_FILTER_LEN) {
                return Err(ApiError::invalid(
                    parameter,
                    format!("longer than {MAX_FILTER_LEN} bytes"),
                ));
            }
        }
        Ok(params)
    }
}

/// Sort direction by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    Asc,
    Desc,
}

/// How the samples of one step bucket become one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AggregationName {
    Avg,
    Min,
    Max,
    Last,
    Count,
}

/// Query of `GET /api/v1/gpus/{id}/telemetry`, as received (values are validated by
/// [`TelemetryParams::validate`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TelemetryParams {
    /// Inclusive lower bound: RFC 3339 (any offset, with or without fraction, e.g.
    /// `2025-07-18T20:42:34Z`) or Unix seconds with an optional fraction (`1752871354.5`).
    #[param(value_type = Option<String>, pattern = r"^(-?[0-9]+(\.[0-9]+)?|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+ -][0-9]{2}:[0-9]{2}))$", example = "2025-07-18T20:42:34Z")]
    pub start_time: Option<String>,
    /// Inclusive upper bound, same forms as `start_time`; must not be before it.
    #[param(value_type = Option<String>, pattern = r"^(-?[0-9]+(\.[0-9]+)?|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+ -][0-9]{2}:[0-9]{2}))$", example = "2025-07-18T21:42:34.5Z")]
    pub end_time: Option<String>,
    /// Only these metrics: repeat the parameter or separate names with commas.
    #[param(value_type = Option<Vec<String>>, style = Form, explode, example = json!(["DCGM_FI_DEV_GPU_UTIL"]))]
    pub metric_name: Vec<String>,
    /// Entries per page (default 1000).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000, default = 1000)]
    pub limit: Option<String>,
    /// Where to continue: the `next_cursor` of the previous page of the same query.
    #[param(value_type = Option<String>, max_length = 200, pattern = r"^-?[0-9]{1,19}\.[A-Za-z_:][A-Za-z0-9_:]*$")]
    pub cursor: Option<String>,
    /// Time order of the entries (default `asc`).
    #[param(value_type = Option<SortOrder>)]
    pub order: Option<String>,
    /// Downsample into buckets of this length (e.g. `10s`, `1m`, `500ms`); one entry per metric
    /// per bucket, timestamped with the bucket start.
    #[param(value_type = Option<String>, pattern = r"^[0-9A-Za-z ]{2,32}$", example = "1m")]
    pub step: Option<String>,
    /// Aggregation of each bucket (default `avg`); requires `step`.
    #[param(value_type = Option<AggregationName>)]
    pub agg: Option<String>,
}

/// A validated telemetry query.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryRequest {
    /// Window, metrics (`None`: every metric), limit, cursor and order, as the store takes them.
    pub query: SampleQuery,
    /// Step (µs) and aggregation, when downsampling.
    pub aggregation: Option<(i64, Aggregation)>,
}

impl Default for TelemetryRequest {
    fn default() -> Self {
        TelemetryRequest {
            query: SampleQuery {
                limit: DEFAULT_LIMIT,
                ..SampleQuery::default()
            },
            aggregation: None,
        }
    }
}

impl TelemetryParams {
    pub fn from_query(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut params = TelemetryParams::default();
        for (name, value) in query_pairs(raw) {
            match name.as_str() {
                "start_time" => set_once(&mut params.start_time, "start_time", value)?,
                "end_time" => set_once(&mut params.end_time, "end_time", value)?,
                "metric_name" => params.metric_name.push(value),
                "limit" => set_once(&mut params.limit, "limit", value)?,
                "cursor" => set_once(&mut params.cursor, "cursor", value)?,
                "order" => set_once(&mut params.order, "order", value)?,
                "step" => set_once(&mut params.step, "step", value)?,
                "agg" => set_once(&mut params.agg, "agg", value)?,
                _ => {}
            }
        }
        Ok(params)
    }

    pub fn validate(&self) -> Result<TelemetryRequest, ApiError> {
        let start = self
            .start_time
            .as_deref()
            .map(|t| parse_time("start_time", t))
            .transpose()?;
        let end = self
            .end_time
            .as_deref()
            .map(|t| parse_time("end_time", t))
            .transpose()?;
        if let (Some(start), Some(end)) = (start, end) {
            if start > end {
                return Err(ApiError::invalid(
                    "end_time",
                    format!(
                        "the window is empty: start_time {} is after end_time {}",
                        start.to_rfc3339(),
                        end.to_rfc3339()
                    ),
                ));
            }
        }
        let metrics = parse_metric_names(&self.metric_name)?;
        let limit = match self.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<usize>() {
                Ok(n)
                    if text.bytes().all(|b| b.is_ascii_digit()) && (1..=MAX_LIMIT).contains(&n) =>
                {
                    n
                }
                _ => {
                    return Err(ApiError::invalid(
                        "limit",
                        format!("must be an integer from 1 to {MAX_LIMIT}, got {text:?}"),
                    ))
                }
            },
        };
        let cursor = self
            .cursor
            .as_deref()
            .map(|text| {
                let well_formed = text.len() <= MAX_CURSOR_LEN
                    && text.split_once('.').is_some_and(|(ts, _)| {
                        let digits = ts.strip_prefix('-').unwrap_or(ts);
                        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                    });
                let decoded = if well_formed {
                    Cursor::decode(text).ok()
                } else {
                    None
                };
                decoded.ok_or_else(|| {
                    ApiError::invalid(
                        "cursor",
                        format!(
                            "{:?} is not a cursor returned as next_cursor",
                            text.chars().take(80).collect::<String>()
                        ),
                    )
                })
            })
            .transpose()?;
        let order = match self.order.as_deref() {
            None | Some("asc") => Order::Asc,
            Some("desc") => Order::Desc,
            Some(other) => {
                return Err(ApiError::invalid(
                    "order",
                    format!("must be asc or desc, got {other:?}"),
                ))
            }
        };
        let aggregation = match (self.step.as_deref(), self.agg.as_deref()) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ApiError::invalid(
                    "agg",
                    "needs a step (e.g. step=1m&agg=avg)",
                ))
            }
            (Some(step), agg) => {
                let aggregation = match agg {
                    None => Aggregation::Avg,
                    Some(name) => name
                        .parse::<Aggregation>()
                        .map_err(|reason| ApiError::invalid("agg", reason))?,
                };
                Some((parse_step(step)?, aggregation))
            }
        };
        Ok(TelemetryRequest {
            query: SampleQuery {
                start,
                end,
                metrics,
                limit,
                cursor,
                order,
            },
            aggregation,
        })
    }
}

/// Metric names from repeated and comma-separated values, validated, sorted and deduplicated;
/// `None` when no name is given (all metrics).
pub(crate) fn parse_metric_names(values: &[String]) -> Result<Option<Vec<MetricName>>, ApiError> {
    let mut names = Vec::new();
    for value in values {
        for part in value.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            names.push(
                MetricName::parse(part)
                    .map_err(|e| ApiError::invalid("metric_name", e.to_string()))?,
            );
        }
    }
    if names.is_empty() {
        if values.is_empty() {
            return Ok(None);
        }
        return Err(ApiError::invalid("metric_name", "no metric name given"));
    }
    names.sort();
    names.dedup();
    Ok(Some(names))
}

/// Parses a time bound: RFC 3339 (any offset, fraction optional) or Unix seconds with an optional
/// fraction (digits below a microsecond are truncated, as for RFC 3339).
pub fn parse_time(parameter: &'static str, text: &str) -> Result<TimestampMicros, ApiError> {
    let invalid = |reason: &str| {
        ApiError::invalid(
            parameter,
            format!(
                "{:?} {reason} (use RFC 3339 like 2025-07-18T20:42:34Z or Unix seconds like 1752871354.5)",
                text.chars().take(80).collect::<String>()
            ),
        )
    };
    let looks_numeric = !text.is_empty()
        && text
            .strip_prefix('-')
            .unwrap_or(text)
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.');
    let timestamp = if looks_numeric {
        parse_unix_seconds(text).ok_or_else(|| invalid("is not a valid number of seconds"))?
    } else {
        match TimestampMicros::parse_rfc3339(text) {
            Ok(t) => t,
            // An unencoded `+` in a query string arrives as a space: `...T22:42:34 02:00`.
            Err(_) if plus_lost_in_query(text) => {
                let restored = format!("{}+{}", &text[..text.len() - 6], &text[text.len() - 5..]);
                TimestampMicros::parse_rfc3339(&restored)
                    .map_err(|_| invalid("is not a valid time"))?
            }
            Err(_) => return Err(invalid("is not a valid time")),
        }
    };
    if !timestamp.is_rfc3339_representable() {
        return Err(invalid("is outside the years 0000..=9999"));
    }
    Ok(timestamp)
}

/// Whether `text` ends in ` HH:MM`, an offset whose `+` was decoded as a space.
fn plus_lost_in_query(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() > 6
        && bytes[bytes.len() - 6] == b' '
        && bytes[bytes.len() - 5..].iter().enumerate().all(|(i, b)| {
            if i == 2 {
                *b == b':'
            } else {
                b.is_ascii_digit()
            }
        })
}

/// `-?digits(.digits)?` as microseconds, or `None` when malformed or out of `i64` range.
fn parse_unix_seconds(text: &str) -> Option<TimestampMicros> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((w, f)) => (w, f),
        None => (unsigned, ""),
    };
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || (unsigned.contains('.') && fraction.is_empty())
    {
        return None;
    }
    let seconds: i64 = whole.parse().ok()?;
    let mut micros_text: String = fraction.chars().take(6).collect();
    while micros_text.len() < 6 {
        micros_text.push('0');
    }
    let micros: i64 = micros_text.parse().ok()?;
    let total = seconds.checked_mul(1_000_000)?.checked_add(micros)?;
    Some(TimestampMicros(if negative { -total } else { total }))
}

/// A positive step such as `10s`, `1m`, `500ms`, in whole microseconds.
fn parse_step(text: &str) -> Result<i64, ApiError> {
    let plain = (2..=32).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
        && text.trim() == text;
    if !plain {
        return Err(ApiError::invalid(
            "step",
            format!(
                "{:?} is not a duration like 10s, 1m or 500ms",
                text.chars().take(40).collect::<String>()
            ),
        ));
    }
    let duration = function_runtime::parse_duration(text).map_err(|_| {
        ApiError::invalid(
            "step",
            format!("{text:?} is not a duration like 10s, 1m or 500ms"),
        )
    })?;
    if duration > MAX_STEP {
        return Err(ApiError::invalid("step", "must be at most 366 days"));
    }
    let micros = duration.as_micros() as i64;
    if micros < 1 {
        return Err(ApiError::invalid("step", "must be at least 1us"));
    }
    Ok(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(query: &str) -> TelemetryParams {
        TelemetryParams::from_query(Some(query)).unwrap()
    }

    fn invalid_parameter(result: Result<TelemetryRequest, ApiError>) -> &'static str {
        match result {
            Err(ApiError::InvalidParameter { parameter, .. }) => parameter,
            other => panic!("expected an invalid parameter, got {other:?}"),
        }
    }

    #[test]
    fn times_parse_as_rfc3339_or_unix_seconds() {
        let t = |s| parse_time("start_time", s).unwrap().0;
        assert_eq!(t("2025-07-18T20:42:34Z"), 1_752_871_354_000_000);
        assert_eq!(t("2025-07-18T20:42:34.123456Z"), 1_752_871_354_123_456);
        assert_eq!(t("2025-07-18T22:42:34.5+02:00"), 1_752_871_354_500_000);
        assert_eq!(t("2025-07-18T22:42:34 02:00"), 1_752_871_354_000_000);
        assert_eq!(t("1752871354"), 1_752_871_354_000_000);
        assert_eq!(t("1752871354.5"), 1_752_871_354_500_000);
        assert_eq!(t("1752871354.1234567"), 1_752_871_354_123_456);
        assert_eq!(t("-1.5"), -1_500_000);
        assert_eq!(t("0"), 0);
        for bad in [
            "",
            "soon",
            "1752871354.",
            ".5",
            "1.2.3",
            "--1",
            "2025-07-18",
            "2025-13-01T00:00:00Z",
            "99999999999999999999",
            "253402300800",
            "2025-07-18T20:42:34",
        ] {
            assert!(parse_time("start_time", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        assert_eq!(params("").validate().unwrap(), TelemetryRequest::default());
        assert_eq!(
            TelemetryParams::from_query(None)
                .unwrap()
                .validate()
                .unwrap(),
            TelemetryRequest::default()
        );
    }

    #[test]
    fn every_parameter_is_validated() {
        let ok = params(
            "start_time=10&end_time=10&metric_name=B,A&metric_name=A&limit=10000&order=desc&step=1m&agg=max&cursor=5.A&other=x",
        )
        .validate()
        .unwrap();
        assert_eq!(ok.query.start, Some(TimestampMicros(10_000_000)));
        assert_eq!(ok.query.end, Some(TimestampMicros(10_000_000)));
        assert_eq!(
            ok.query.metrics,
            Some(vec![
                MetricName::parse("A").unwrap(),
                MetricName::parse("B").unwrap()
            ])
        );
        assert_eq!(ok.query.limit, 10_000);
        assert_eq!(ok.query.order, Order::Desc);
        assert_eq!(ok.aggregation, Some((60_000_000, Aggregation::Max)));
        assert_eq!(ok.query.cursor.unwrap().timestamp, TimestampMicros(5));
        assert_eq!(
            params("step=10s").validate().unwrap().aggregation,
            Some((10_000_000, Aggregation::Avg))
        );

        let cases = [
            ("start_time=11&end_time=10", "end_time"),
            ("start_time=nope", "start_time"),
            ("end_time=2025-99-01T00:00:00Z", "end_time"),
            ("limit=0", "limit"),
            ("limit=10001", "limit"),
            ("limit=-1", "limit"),
            ("limit=abc", "limit"),
            ("cursor=garbage", "cursor"),
            ("order=up", "order"),
            ("agg=avg", "agg"),
            ("step=1m&agg=median", "agg"),
            ("step=0s", "step"),
            ("step=fast", "step"),
            ("step=400days", "step"),
            ("metric_name=a/b", "metric_name"),
            ("metric_name=,", "metric_name"),
            ("limit=%2B5", "limit"),
            ("limit=%205", "limit"),
            ("cursor=%2B5.A", "cursor"),
            ("cursor=5", "cursor"),
            ("step=%201s", "step"),
            ("step=1s%09", "step"),
            ("start_time=%2010", "start_time"),
        ];
        for (query, parameter) in cases {
            assert_eq!(
                invalid_parameter(params(query).validate()),
                parameter,
                "{query}"
            );
        }
        assert!(matches!(
            TelemetryParams::from_query(Some("limit=1&limit=2")),
            Err(ApiError::InvalidParameter {
                parameter: "limit",
                ..
            })
        ));
    }

    #[test]
    fn list_filters_are_exact_strings_with_a_length_cap() {
        let p = ListGpusParams::from_query(Some("hostname=h%201&model_name=NVIDIA+H100")).unwrap();
        assert_eq!(p.hostname.as_deref(), Some("h 1"));
        assert_eq!(p.model_name.as_deref(), Some("NVIDIA H100"));
        let long = format!("hostname={}", "x".repeat(257));
        assert!(ListGpusParams::from_query(Some(&long)).is_err());
        assert!(ListGpusParams::from_query(Some("hostname=a&hostname=b")).is_err());
    }
}
