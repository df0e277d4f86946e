//! `GET /api/v1/latest`: the latest values of many GPUs in one paged answer, so that a fleet view
//! costs one request per page rather than one `GET /api/v1/gpus/{id}/latest` per GPU. The values
//! come from the registry records, which keep each GPU's newest sample per metric; no chunk is
//! read.

use axum::extract::{RawQuery, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use telemetry_model::{GpuUuid, MetricName};
use telemetry_store::GpuRecord;
use utoipa::{IntoParams, ToSchema};

use crate::backend::{ApiState, Backend};
use crate::dto::LatestEntry;
use crate::error::{ApiError, BadGateway, BadRequest, Unavailable};
use crate::params::{parse_metric_names, query_pairs, set_once, MAX_FILTER_LEN};
use crate::routes::TAG_GPUS;

/// GPUs per page when `limit` is not given.
pub const DEFAULT_FLEET_LIMIT: usize = 1000;
/// Most GPUs per page.
pub const MAX_FLEET_LIMIT: usize = 10_000;

/// Query of `GET /api/v1/latest`, as received (validated by [`FleetLatestParams::validate`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FleetLatestParams {
    /// Only GPUs on this host (exact match).
    #[param(max_length = 256, example = "mtv5-dgx1-hgpu-031")]
    pub hostname: Option<String>,
    /// Only GPUs of this model (exact match).
    #[param(max_length = 256, example = "NVIDIA H100 80GB HBM3")]
    pub model_name: Option<String>,
    /// Only these metrics' values: repeat the parameter or separate names with commas (default:
    /// every metric).
    #[param(value_type = Option<Vec<String>>, style = Form, explode, example = json!(["DCGM_FI_DEV_GPU_UTIL"]))]
    pub metric_name: Vec<String>,
    /// GPUs per page (default 1000).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000, default = 1000)]
    pub limit: Option<String>,
    /// Where to continue: the `next_cursor` of the previous page (a GPU UUID).
    #[param(value_type = Option<String>, pattern = r"^[A-Za-z0-9_-]{1,64}$", max_length = 64)]
    pub cursor: Option<String>,
}

/// A validated `GET /api/v1/latest` query.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetLatestRequest {
    pub hostname: Option<String>,
    pub model_name: Option<String>,
    /// `None`: every metric.
    pub metrics: Option<Vec<MetricName>>,
    pub limit: usize,
    /// Only GPUs whose UUID sorts after this one.
    pub after: Option<GpuUuid>,
}

impl FleetLatestParams {
    /// Collects the parameters; an unknown one is an error, so a misspelt filter cannot silently
    /// widen the answer.
    pub fn from_query(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut params = FleetLatestParams::default();
        for (name, value) in query_pairs(raw) {
            match name.as_str() {
                "hostname" => set_once(&mut params.hostname, "hostname", value)?,
                "model_name" => set_once(&mut params.model_name, "model_name", value)?,
                "metric_name" => params.metric_name.push(value),
                "limit" => set_once(&mut params.limit, "limit", value)?,
                "cursor" => set_once(&mut params.cursor, "cursor", value)?,
                _ => {
                    return Err(ApiError::invalid(
                        "query",
                        format!(
                            "unknown parameter {:?} (known: hostname, model_name, metric_name, limit, cursor)",
                            name.chars().take(40).collect::<String>()
                        ),
                    ))
                }
            }
        }
        Ok(params)
    }

    pub fn validate(&self) -> Result<FleetLatestRequest, ApiError> {
        for (parameter, value) in [
            ("hostname", &self.hostname),
            ("model_name", &self.model_name),
        ] {
            if value.as_ref().is_some_and(|v| v.len() > MAX_FILTER_LEN) {
                return Err(ApiError::invalid(
                    parameter,
                    format!("longer than {MAX_FILTER_LEN} bytes"),
                ));
            }
        }
        let limit = match self.limit.as_deref() {
            None => DEFAULT_FLEET_LIMIT,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| {
                    text.bytes().all(|b| b.is_ascii_digit()) && (1..=MAX_FLEET_LIMIT).contains(n)
                })
                .ok_or_else(|| {
                    ApiError::invalid(
                        "limit",
                        format!("must be an integer from 1 to {MAX_FLEET_LIMIT}, got {text:?}"),
                    )
                })?,
        };
        let after = self
            .cursor
            .as_deref()
            .map(|text| {
                GpuUuid::parse(text).map_err(|_| {
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
        Ok(FleetLatestRequest {
            hostname: self.hostname.clone(),
            model_name: self.model_name.clone(),
            metrics: parse_metric_names(&self.metric_name)?,
            limit,
            after,
        })
    }
}

impl FleetLatestRequest {
    fn admits(&self, record: &GpuRecord) -> bool {
        let is = |wanted: &Option<String>, have: &Option<String>| {
            wanted.is_none() || wanted.as_ref() == have.as_ref()
        };
        self.after
            .as_ref()
            .is_none_or(|after| &record.info.uuid > after)
            && is(&self.hostname, &record.info.hostname)
            && is(&self.model_name, &record.info.model_name)
    }
}

/// One GPU's newest values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuLatest {
    #[schema(example = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50")]
    pub uuid: String,
    /// The GPU's index on its host.
    #[schema(example = 0, minimum = 0)]
    #[schema(required = true)]
    pub gpu_id: Option<u32>,
    #[schema(example = "mtv5-dgx1-hgpu-031")]
    #[schema(required = true)]
    pub hostname: Option<String>,
    #[schema(example = "NVIDIA H100 80GB HBM3")]
    #[schema(required = true)]
    pub model_name: Option<String>,
    /// Time of the newest sample received from this GPU.
    #[schema(format = DateTime, example = "2025-07-18T20:42:44.000000Z")]
    pub last_seen: String,
    /// The newest value of each requested metric this GPU reports, sorted by metric name.
    pub metrics: Vec<LatestEntry>,
}

impl GpuLatest {
    fn new(record: &GpuRecord, metrics: Option<&[MetricName]>) -> Self {
        GpuLatest {
            uuid: record.info.uuid.to_string(),
            gpu_id: record.info.gpu_index,
            hostname: record.info.hostname.clone(),
            model_name: record.info.model_name.clone(),
            last_seen: record.last_seen.to_rfc3339(),
            metrics: record
                .latest
                .iter()
                .filter(|(name, _)| metrics.is_none_or(|wanted| wanted.contains(name)))
                .map(|(name, latest)| LatestEntry {
                    metric_name: name.to_string(),
                    timestamp: latest.timestamp.to_rfc3339(),
                    value: latest.value,
                })
                .collect(),
        }
    }
}

/// `GET /api/v1/latest`: one page of GPUs with their newest values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FleetLatest {
    /// Sorted by UUID.
    pub gpus: Vec<GpuLatest>,
    pub count: usize,
    /// Pass as `cursor` (with the same other parameters) for the next page; null on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

impl Backend {
    /// One page of the GPUs the request admits, in UUID order, with their newest values.
    pub async fn fleet_latest(
        &self,
        request: &FleetLatestRequest,
    ) -> Result<FleetLatest, ApiError> {
        // The registry lists GPUs in UUID order, the order pages are cut in.
        let records = self.bounded("list GPUs", self.store().list_gpus()).await?;
        let mut admitted = records.iter().filter(|r| request.admits(r));
        let gpus: Vec<GpuLatest> = admitted
            .by_ref()
            .take(request.limit)
            .map(|r| GpuLatest::new(r, request.metrics.as_deref()))
            .collect();
        let next_cursor = match admitted.next() {
            Some(_) => gpus.last().map(|g| g.uuid.clone()),
            None => None,
        };
        Ok(FleetLatest {
            count: gpus.len(),
            gpus,
            next_cursor,
        })
    }
}

/// The newest values of every GPU, paged.
///
/// One entry per GPU, sorted by UUID, with the newest sample of each metric it reports (or of
/// the metrics named). Filters are exact matches. Follow `next_cursor` (repeating the other
/// parameters) until it is null to read every GPU once. Unknown parameters are rejected.
#[utoipa::path(
    get,
    path = "/api/v1/latest",
    tag = TAG_GPUS,
    operation_id = "listLatestValues",
    params(FleetLatestParams),
    responses(
        (status = 200, description = "One page of GPUs with their latest values", body = FleetLatest),
        (status = 400, response = BadRequest),
        (status = 502, response = BadGateway),
        (status = 503, response = Unavailable),
    )
)]
pub async fn get_fleet_latest(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Json<FleetLatest>, ApiError> {
    let request = FleetLatestParams::from_query(query.as_deref())?.validate()?;
    Ok(Json(state.backend()?.fleet_latest(&request).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str) -> Result<FleetLatestRequest, ApiError> {
        FleetLatestParams::from_query(Some(query))?.validate()
    }

    fn invalid_parameter(result: Result<FleetLatestRequest, ApiError>) -> &'static str {
        match result {
            Err(ApiError::InvalidParameter { parameter, .. }) => parameter,
            other => panic!("expected an invalid parameter, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_every_parameter() {
        assert_eq!(
            FleetLatestParams::from_query(None)
                .unwrap()
                .validate()
                .unwrap(),
            FleetLatestRequest {
                hostname: None,
                model_name: None,
                metrics: None,
                limit: DEFAULT_FLEET_LIMIT,
                after: None,
            }
        );
        let all = request(
            "hostname=h%201&model_name=NVIDIA+H100&metric_name=B,A&metric_name=A&limit=10000&cursor=GPU-1",
        )
        .unwrap();
        assert_eq!(
            all,
            FleetLatestRequest {
                hostname: Some("h 1".into()),
                model_name: Some("NVIDIA H100".into()),
                metrics: Some(vec![
                    MetricName::parse("A").unwrap(),
                    MetricName::parse("B").unwrap()
                ]),
                limit: 10_000,
                after: Some(GpuUuid::parse("GPU-1").unwrap()),
            }
        );
    }

    #[test]
    fn bad_values_and_unknown_parameters_are_rejected() {
        let long = format!("hostname={}", "x".repeat(257));
        let cases = [
            ("limit=0", "limit"),
            ("limit=10001", "limit"),
            ("limit=%2B5", "limit"),
            ("limit=ten", "limit"),
            ("cursor=a/b", "cursor"),
            ("cursor=", "cursor"),
            ("metric_name=a/b", "metric_name"),
            ("metric_name=,", "metric_name"),
            (long.as_str(), "hostname"),
            ("hostname=a&hostname=b", "hostname"),
            ("step=1m", "query"),
        ];
        for (query, parameter) in cases {
            assert_eq!(invalid_parameter(request(query)), parameter, "{query}");
        }
    }
}
