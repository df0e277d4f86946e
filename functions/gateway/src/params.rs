//! Request parameters: the documented query structs (the OpenAPI spec is generated from them) and
//! their validation into typed requests. Parsing is done here rather than by serde so that every
//! malformed value becomes a precise 400 problem naming the parameter.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::Serialize;
use telemetry_model::{GpuUuid, MetricName, TimeParseError, TimestampMicros};
use telemetry_store::{Aggregation, Cursor, Order, SampleQuery};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

/// Default page size of a telemetry query.
pub const DEFAULT_LIMIT: usize = 1000;
/// Largest page size of a telemetry query.
pub const MAX_LIMIT: usize = 10_000;
/// Most points of one page in the series form, over all its series (`limit` counts per series).
pub const MAX_SERIES_PAGE_POINTS: usize = 100_000;
/// Longest accepted value of a free-text filter.
pub(crate) const MAX_FILTER_LEN: usize = 256;
/// Longest accepted cursor.
const MAX_CURSOR_LEN: usize = 200;
/// Default page size of `GET /api/v1/gpus`: every GPU.
const GPU_PAGE_MAX: usize = 10_000;

/// The pattern of a time bound: RFC 3339 (a real calendar date, any offset) or Unix seconds
/// within the years RFC 3339 can write. Kept exactly as strict as [`parse_time`].
pub const TIME_PATTERN: &str = concat!(
    r"^(-?[0-9]{1,10}(\.[0-9]+)?|[0-9]{11}(\.[0-9]+)?|",
    r"([0-9]{4}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))",
    r"|([0-9]{2}(0[48]|[2468][048]|[13579][26])|([02468][048]|[13579][26])00)-02-29)",
    r"[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?([Zz]|[+ -]([01][0-9]|2[0-3]):[0-5][0-9]))$"
);

/// The pattern of one `metric_name` value: metric names (see `MetricName`) separated by commas.
pub const METRIC_NAMES_PATTERN: &str =
    "^[A-Za-z_:][A-Za-z0-9_:]{0,127}(,[A-Za-z_:][A-Za-z0-9_:]{0,127})*$";

/// The pattern of an aggregation step: a whole number (no leading zero) and one unit, up to a
/// size whose microseconds fit the arithmetic of buckets. Kept exactly as strict as `parse_step`.
pub const STEP_PATTERN: &str =
    "^([1-9][0-9]{0,10}(us|ms)|[1-9][0-9]{0,9}s|[1-9][0-9]{0,7}m|[1-9][0-9]{0,6}h|[1-9][0-9]{0,5}d)$";

/// A string schema with one of the patterns above (the parameter attributes take literals only).
macro_rules! pattern_schema {
    ($(#[$doc:meta])* $name:ident, $pattern:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some($pattern))
                    .into()
            }
        }

        impl ToSchema for $name {}
    };
}

pattern_schema!(
    /// A time bound: RFC 3339 or Unix seconds.
    TimeBound,
    TIME_PATTERN
);
pattern_schema!(
    /// One value of `metric_name`: metric names separated by commas.
    MetricNames,
    METRIC_NAMES_PATTERN
);
pattern_schema!(
    /// An aggregation step: a whole number and a unit.
    Step,
    STEP_PATTERN
);

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

/// Rejects any query parameter, for the routes that take none.
pub fn no_query_parameters(raw: Option<&str>) -> Result<(), ApiError> {
    match query_pairs(raw).into_iter().next() {
        None => Ok(()),
        Some((name, _)) => Err(ApiError::unknown_parameter(&name, &[])),
    }
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

/// Query of `GET /api/v1/gpus`, as received (validated by [`ListGpusParams::validate`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListGpusParams {
    /// Only GPUs on this host (exact match).
    #[param(max_length = 256, example = "mtv5-dgx1-hgpu-031")]
    pub hostname: Option<String>,
    /// Only GPUs of this model (exact match).
    #[param(max_length = 256, example = "NVIDIA H100 80GB HBM3")]
    pub model_name: Option<String>,
    /// At most this many GPUs (default: every GPU, in one response); with fewer GPUs than the
    /// registry holds, `next_cursor` continues.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000)]
    pub limit: Option<String>,
    /// Where to continue: the `next_cursor` of the previous page (with the same filters).
    #[param(value_type = Option<String>, pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub cursor: Option<String>,
}

/// A validated `GET /api/v1/gpus` query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuListRequest {
    pub hostname: Option<String>,
    pub model_name: Option<String>,
    /// `None`: every GPU.
    pub limit: Option<usize>,
    /// Start after this GPU.
    pub after: Option<GpuUuid>,
}

impl GpuListRequest {
    /// Whether `info` passes the filters.
    pub fn matches(&self, info: &telemetry_model::GpuInfo) -> bool {
        self.hostname
            .as_ref()
            .is_none_or(|h| info.hostname.as_ref() == Some(h))
            && self
                .model_name
                .as_ref()
                .is_none_or(|m| info.model_name.as_ref() == Some(m))
    }
}

impl ListGpusParams {
    const NAMES: &'static [&'static str] = &["hostname", "model_name", "limit", "cursor"];

    pub fn from_query(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut params = ListGpusParams::default();
        for (name, value) in query_pairs(raw) {
            if !params.take(&name, value)? {
                return Err(ApiError::unknown_parameter(&name, Self::NAMES));
            }
        }
        Ok(params)
    }

    /// Takes the value of one listing parameter (filters and page, which every GPU listing
    /// shares); `false` if `name` is none of them.
    pub(crate) fn take(&mut self, name: &str, value: String) -> Result<bool, ApiError> {
        match name {
            "hostname" => set_once(&mut self.hostname, "hostname", value)?,
            "model_name" => set_once(&mut self.model_name, "model_name", value)?,
            "limit" => set_once(&mut self.limit, "limit", value)?,
            "cursor" => set_once(&mut self.cursor, "cursor", value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    pub fn validate(&self) -> Result<GpuListRequest, ApiError> {
        for (parameter, value) in [
            ("hostname", &self.hostname),
            ("model_name", &self.model_name),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.chars().count() > MAX_FILTER_LEN)
            {
                return Err(ApiError::invalid(
                    parameter,
                    format!("longer than {MAX_FILTER_LEN} characters"),
                ));
            }
        }
        let limit = self
            .limit
            .as_deref()
            .map(|text| parse_limit(text, GPU_PAGE_MAX))
            .transpose()?;
        let after = self
            .cursor
            .as_deref()
            .map(|text| GpuUuid::parse(text).map_err(|_| invalid_cursor(text)))
            .transpose()?;
        Ok(GpuListRequest {
            hostname: self.hostname.clone(),
            model_name: self.model_name.clone(),
            limit,
            after,
        })
    }
}

/// The answer to a cursor that no `next_cursor` gave.
fn invalid_cursor(text: &str) -> ApiError {
    ApiError::invalid(
        "cursor",
        format!(
            "{:?} is not a cursor returned as next_cursor",
            text.chars().take(80).collect::<String>()
        ),
    )
}

/// A page size from 1 to `max`, as decimal digits only.
fn parse_limit(text: &str, max: usize) -> Result<usize, ApiError> {
    match text.parse::<usize>() {
        Ok(n) if text.bytes().all(|b| b.is_ascii_digit()) && (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid(
            "limit",
            format!("must be an integer from 1 to {max}, got {text:?}"),
        )),
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

/// The shape of a telemetry page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TelemetryFormat {
    /// One object per sample (`entries`).
    #[default]
    Entries,
    /// Per metric, an array of timestamps and an array of values (`series`).
    Series,
}

/// Query of `GET /api/v1/gpus/{id}/telemetry`, as received (values are validated by
/// [`TelemetryParams::validate`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TelemetryParams {
    /// Inclusive lower bound: RFC 3339 (any offset, with or without fraction, e.g.
    /// `2025-07-18T20:42:34Z`) or Unix seconds with an optional fraction (`1752871354.5`).
    #[param(value_type = Option<TimeBound>, inline, example = "2025-07-18T20:42:34Z")]
    pub start_time: Option<String>,
    /// Inclusive upper bound, same forms as `start_time`; must not be before it.
    #[param(value_type = Option<TimeBound>, inline, example = "2025-07-18T21:42:34.5Z")]
    pub end_time: Option<String>,
    /// Only these metrics: repeat the parameter or separate names with commas (no spaces).
    #[param(value_type = Option<Vec<MetricNames>>, inline, style = Form, explode, example = json!(["DCGM_FI_DEV_GPU_UTIL"]))]
    pub metric_name: Vec<String>,
    /// Entries per page (default 1000); with `format=series`, points per metric (a page then holds
    /// at most 100,000 points in all).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000, default = 1000)]
    pub limit: Option<String>,
    /// Where to continue: the `next_cursor` of the previous page of the same query.
    #[param(value_type = Option<String>, max_length = 200, pattern = r"^-?[0-9]{1,18}\.[A-Za-z_:][A-Za-z0-9_:]{0,127}$")]
    pub cursor: Option<String>,
    /// Time order of the entries (default `asc`).
    #[param(value_type = Option<SortOrder>)]
    pub order: Option<String>,
    /// Downsample into buckets of this length: a whole number and one of `us`, `ms`, `s`, `m`,
    /// `h`, `d` (e.g. `10s`, `1m`, `500ms`); one entry per metric per bucket, timestamped with the
    /// bucket start. The window (clipped to the GPU's first and last sample) may hold at most
    /// the gateway's points per series (11,000 by default) buckets.
    #[param(value_type = Option<Step>, inline, example = "1m")]
    pub step: Option<String>,
    /// Aggregation of each bucket (default `avg`). Without `step`, one entry per metric over the
    /// whole window, timestamped with `start_time` (or the window's oldest sample).
    #[param(value_type = Option<AggregationName>)]
    pub agg: Option<String>,
    /// Shape of the page (default `entries`). `series`: one series per metric (sorted by name),
    /// each an array of timestamps (integer Unix microseconds) and the array of their values, in
    /// the same order, window, paging and cursor as the entries.
    #[param(value_type = Option<TelemetryFormat>)]
    pub format: Option<String>,
}

/// A validated telemetry query.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryRequest {
    /// Window, metrics (`None`: every metric), limit, cursor and order, as the store takes them.
    pub query: SampleQuery,
    /// Step (µs; `None`: the whole window) and aggregation, when aggregating.
    pub aggregation: Option<(Option<i64>, Aggregation)>,
    /// Entries, or series whose `query.limit` counts points per metric.
    pub format: TelemetryFormat,
}

impl Default for TelemetryRequest {
    fn default() -> Self {
        TelemetryRequest {
            query: SampleQuery {
                limit: DEFAULT_LIMIT,
                ..SampleQuery::default()
            },
            aggregation: None,
            format: TelemetryFormat::Entries,
        }
    }
}

impl TelemetryParams {
    const NAMES: &'static [&'static str] = &[
        "start_time",
        "end_time",
        "metric_name",
        "limit",
        "cursor",
        "order",
        "step",
        "agg",
        "format",
    ];

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
                "format" => set_once(&mut params.format, "format", value)?,
                _ => return Err(ApiError::unknown_parameter(&name, Self::NAMES)),
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
            Some(text) => parse_limit(text, MAX_LIMIT)?,
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
                decoded.ok_or_else(|| invalid_cursor(text))
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
            (step, agg) => {
                let aggregation = match agg {
                    None => Aggregation::Avg,
                    Some(name) => name
                        .parse::<Aggregation>()
                        .map_err(|reason| ApiError::invalid("agg", reason))?,
                };
                Some((step.map(parse_step).transpose()?, aggregation))
            }
        };
        let format = match self.format.as_deref() {
            None | Some("entries") => TelemetryFormat::Entries,
            Some("series") => TelemetryFormat::Series,
            Some(other) => {
                return Err(ApiError::invalid(
                    "format",
                    format!("must be entries or series, got {other:?}"),
                ))
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
            format,
        })
    }
}

/// Metric names from repeated and comma-separated values, validated, sorted and deduplicated;
/// `None` when no name is given (all metrics).
pub(crate) fn parse_metric_names(values: &[String]) -> Result<Option<Vec<MetricName>>, ApiError> {
    if values.is_empty() {
        return Ok(None);
    }
    let mut names = Vec::new();
    for value in values {
        for part in value.split(',') {
            if part.is_empty() {
                return Err(ApiError::invalid(
                    "metric_name",
                    format!("{value:?} has an empty name (separate names with single commas)"),
                ));
            }
            names.push(
                MetricName::parse(part)
                    .map_err(|e| ApiError::invalid("metric_name", e.to_string()))?,
            );
        }
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
        let whole = text.split('.').next().unwrap_or(text);
        // Eleven digits reach the year 5138, ten below zero the year 1653: inside the years
        // RFC 3339 writes, like every time the pattern admits.
        let digits = whole.trim_start_matches('-').len();
        if digits > 11 || (whole.starts_with('-') && digits > 10) {
            return Err(invalid("is outside the years 0000..=9999"));
        }
        parse_unix_seconds(text).ok_or_else(|| invalid("is not a valid number of seconds"))?
    } else {
        let parsed = match TimestampMicros::parse_rfc3339(text) {
            // An unencoded `+` in a query string arrives as a space: `...T22:42:34 02:00`.
            Err(TimeParseError::ParseRfc3339 { .. }) if plus_lost_in_query(text) => {
                let restored = format!("{}+{}", &text[..text.len() - 6], &text[text.len() - 5..]);
                TimestampMicros::parse_rfc3339(&restored)
            }
            other => other,
        };
        match parsed {
            Ok(t) => t,
            // A calendar time of the years 0000 or 9999 whose offset moves it past them: a
            // bound beyond every time that can be stored and written back.
            Err(TimeParseError::OutOfRange { .. }) if text.starts_with("0000-") => {
                TimestampMicros::RFC3339_MIN
            }
            Err(TimeParseError::OutOfRange { .. }) if text.starts_with("9999-") => {
                TimestampMicros::RFC3339_MAX
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

/// A positive step such as `10s`, `1m`, `500ms` ([`STEP_PATTERN`]), in whole microseconds.
fn parse_step(text: &str) -> Result<i64, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "step",
            format!(
                "{:?} is not a duration like 10s, 1m or 500ms (a whole number and one of us, ms, s, m, h, d)",
                text.chars().take(40).collect::<String>()
            ),
        )
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (digits, unit) = text.split_at(split);
    let (unit_us, max_digits): (i64, usize) = match unit {
        "us" => (1, 11),
        "ms" => (1_000, 11),
        "s" => (1_000_000, 10),
        "m" => (60_000_000, 8),
        "h" => (3_600_000_000, 7),
        "d" => (86_400_000_000, 6),
        _ => return Err(invalid()),
    };
    if digits.is_empty() || digits.starts_with('0') || digits.len() > max_digits {
        return Err(invalid());
    }
    let count: i64 = digits.parse().map_err(|_| invalid())?;
    count.checked_mul(unit_us).ok_or_else(invalid)
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
            "start_time=10&end_time=10&metric_name=B,A&metric_name=A&limit=10000&order=desc&step=1m&agg=max&cursor=5.A&format=series",
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
        assert_eq!(ok.aggregation, Some((Some(60_000_000), Aggregation::Max)));
        assert_eq!(ok.query.cursor.unwrap().timestamp, TimestampMicros(5));
        assert_eq!(ok.format, TelemetryFormat::Series);
        assert_eq!(
            params("format=entries").validate().unwrap().format,
            TelemetryFormat::Entries
        );
        assert_eq!(
            params("step=10s").validate().unwrap().aggregation,
            Some((Some(10_000_000), Aggregation::Avg))
        );
        assert_eq!(
            params("agg=max").validate().unwrap().aggregation,
            Some((None, Aggregation::Max)),
            "agg without step: one value per metric over the window"
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
            ("format=csv", "format"),
            ("format=Series", "format"),
            ("format=", "format"),
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
        assert!(matches!(
            TelemetryParams::from_query(Some("format=series&format=series")),
            Err(ApiError::InvalidParameter {
                parameter: "format",
                ..
            })
        ));
    }

    #[test]
    fn list_filters_are_exact_strings_with_a_length_cap() {
        let list = |q: &str| ListGpusParams::from_query(Some(q)).and_then(|p| p.validate());
        let p = list("hostname=h%201&model_name=NVIDIA+H100").unwrap();
        assert_eq!(p.hostname.as_deref(), Some("h 1"));
        assert_eq!(p.model_name.as_deref(), Some("NVIDIA H100"));
        let long = format!("hostname={}", "x".repeat(257));
        assert!(list(&long).is_err());
        // The cap counts characters, as the schema's maxLength does.
        assert!(list(&format!("hostname={}", "é".repeat(256))).is_ok());
        assert!(list("hostname=a&hostname=b").is_err());
        let page = list("limit=2&cursor=GPU-1").unwrap();
        assert_eq!(page.limit, Some(2));
        assert_eq!(page.after, Some(GpuUuid::parse("GPU-1").unwrap()));
        assert_eq!(list("").unwrap(), GpuListRequest::default());
        for bad in ["limit=0", "limit=10001", "cursor=a/b", "cursor="] {
            assert!(list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_parameters_are_named_in_the_error() {
        match TelemetryParams::from_query(Some("start_tme=10")) {
            Err(ApiError::UnknownParameter { name, accepted }) => {
                assert_eq!(name, "start_tme");
                assert!(accepted.contains(&"start_time"));
            }
            other => panic!("expected an unknown parameter, got {other:?}"),
        }
        assert!(matches!(
            ListGpusParams::from_query(Some("host=a")),
            Err(ApiError::UnknownParameter { .. })
        ));
        assert!(no_query_parameters(None).is_ok());
        assert!(no_query_parameters(Some("")).is_ok());
        assert!(matches!(
            no_query_parameters(Some("x=1")),
            Err(ApiError::UnknownParameter { accepted: [], .. })
        ));
    }
}

/// The OpenAPI patterns agree with the parsers, both ways: every string a pattern admits is
/// accepted (schema-valid requests are never refused), and every string it refuses is refused
/// (schema-invalid ones are never accepted). Strings are drawn from the patterns themselves and
/// from near misses of them.
#[cfg(test)]
mod pattern_agreement {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use regex::Regex;

    use super::*;

    fn agree(pattern: &str, text: &str, accepted: bool) -> Result<(), TestCaseError> {
        let admitted = Regex::new(pattern).unwrap().is_match(text);
        prop_assert_eq!(admitted, accepted, "{:?}", text);
        Ok(())
    }

    /// The strings `pattern` admits (generation takes no anchors).
    fn admitted(pattern: &str) -> impl Strategy<Value = String> {
        let body = pattern
            .strip_prefix('^')
            .unwrap()
            .strip_suffix('$')
            .unwrap();
        proptest::string::string_regex(body).unwrap()
    }

    /// Near misses: strings of the characters the formats use.
    fn near_time() -> impl Strategy<Value = String> {
        "[-+0-9:. TtZz]{1,32}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn every_time_the_pattern_admits_is_accepted(text in admitted(TIME_PATTERN)) {
            prop_assert!(parse_time("start_time", &text).is_ok(), "{:?}", text);
        }

        #[test]
        fn a_time_the_pattern_refuses_is_refused(text in near_time()) {
            agree(TIME_PATTERN, &text, parse_time("start_time", &text).is_ok())?;
        }

        #[test]
        fn every_step_the_pattern_admits_is_accepted(text in admitted(STEP_PATTERN)) {
            prop_assert!(parse_step(&text).is_ok(), "{:?}", text);
        }

        #[test]
        fn a_step_the_pattern_refuses_is_refused(text in "[0-9]{0,13}(us|ms|s|m|h|d|x|)") {
            agree(STEP_PATTERN, &text, parse_step(&text).is_ok())?;
        }

        #[test]
        fn metric_names_agree(text in "[A-Za-z0-9_:, -]{0,40}") {
            let accepted = parse_metric_names(std::slice::from_ref(&text)).is_ok();
            agree(METRIC_NAMES_PATTERN, &text, accepted)?;
        }

        #[test]
        fn every_metric_list_the_pattern_admits_is_accepted(text in admitted(METRIC_NAMES_PATTERN)) {
            prop_assert!(parse_metric_names(std::slice::from_ref(&text)).is_ok(), "{:?}", text);
        }
    }

    /// Every query parameter the OpenAPI document gives a pattern: 300 strings it admits, each
    /// accepted by the route's parser (the time, step and metric patterns are checked both ways
    /// above).
    #[test]
    fn every_documented_pattern_is_accepted() {
        let spec = serde_json::to_value(crate::openapi()).unwrap();
        type Accepts = fn(&str) -> bool;
        let routes: [(&str, Accepts); 2] = [
            ("/api/v1/gpus/{id}/telemetry", |q| {
                TelemetryParams::from_query(Some(q))
                    .and_then(|p| p.validate())
                    .is_ok()
            }),
            ("/api/v1/gpus", |q| {
                ListGpusParams::from_query(Some(q))
                    .and_then(|p| p.validate())
                    .is_ok()
            }),
        ];
        let mut checked = 0;
        for (path, accepts) in routes {
            for param in spec["paths"][path]["get"]["parameters"].as_array().unwrap() {
                let schema = &param["schema"];
                let pattern = schema["pattern"]
                    .as_str()
                    .or_else(|| schema["items"]["pattern"].as_str());
                let (Some(pattern), "query") = (pattern, param["in"].as_str().unwrap()) else {
                    continue;
                };
                let name = param["name"].as_str().unwrap();
                let mut runner = proptest::test_runner::TestRunner::deterministic();
                let strategy = admitted(pattern);
                for _ in 0..300 {
                    let value = strategy.new_tree(&mut runner).unwrap().current();
                    let query = form_urlencoded::Serializer::new(String::new())
                        .append_pair(name, &value)
                        .finish();
                    assert!(accepts(&query), "{path} {name}={value:?}");
                }
                checked += 1;
            }
        }
        assert_eq!(
            checked, 6,
            "start_time, end_time, metric_name, cursor, step; cursor"
        );
    }

    #[test]
    fn calendar_edges_agree() {
        let pattern = Regex::new(TIME_PATTERN).unwrap();
        for (text, valid) in [
            ("2024-02-29T00:00:00Z", true),
            ("2023-02-29T00:00:00Z", false),
            ("2000-02-29T00:00:00Z", true),
            ("1900-02-29T00:00:00Z", false),
            ("2025-04-31T00:00:00Z", false),
            ("2025-12-31T23:59:60Z", true),
            ("0000-01-01T00:00:00+01:00", true),
            ("9999-12-31T23:59:59-01:00", true),
            ("2025-07-18t20:42:34z", true),
            ("2025-07-18 20:42:34+24:00", false),
            ("99999999999", true),
            ("253402300799", false),
            ("-9999999999.5", true),
            ("-99999999999", false),
        ] {
            assert_eq!(parse_time("start_time", text).is_ok(), valid, "{text}");
            assert_eq!(pattern.is_match(text), valid, "{text}");
        }
    }
}
