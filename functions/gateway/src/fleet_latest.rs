//! `GET /api/v1/latest`: the latest values of many GPUs in one paged answer, so that a fleet view
//! costs one request per page rather than one `GET /api/v1/gpus/{id}/latest` per GPU. The values
//! come from the registry records, which keep each GPU's newest sample per metric; no chunk is
//! read.

use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use telemetry_model::MetricName;
use telemetry_store::GpuRecord;
use utoipa::{IntoParams, ToSchema};

use crate::backend::{ApiState, ListingEntry};
use crate::dto::LatestEntry;
use crate::error::{ApiError, BadGateway, BadRequest, Unavailable};
use crate::params::{parse_metric_names, query_pairs, GpuListRequest, ListGpusParams, MetricNames};
use crate::routes::{listing_response, TAG_GPUS};

/// GPUs per page when `limit` is not given (at most 10,000, as for `GET /api/v1/gpus`).
pub const DEFAULT_FLEET_LIMIT: usize = 1000;

/// The parameters of `GET /api/v1/latest`, as the OpenAPI document describes them; parsed by
/// [`FleetLatestRequest::from_query`], with the GPU listing's own parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FleetLatestParams {
    /// Only GPUs on this host (exact match).
    #[param(max_length = 256, example = "mtv5-dgx1-hgpu-031")]
    pub hostname: Option<String>,
    /// Only GPUs of this model (exact match).
    #[param(max_length = 256, example = "NVIDIA H100 80GB HBM3")]
    pub model_name: Option<String>,
    /// Only these metrics' values: repeat the parameter or separate names with commas (no
    /// spaces; default: every metric).
    #[param(value_type = Option<Vec<MetricNames>>, inline, style = Form, explode, example = json!(["DCGM_FI_DEV_GPU_UTIL"]))]
    pub metric_name: Vec<String>,
    /// GPUs per page (default 1000).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000, default = 1000)]
    pub limit: Option<String>,
    /// Where to continue: the `next_cursor` of the previous page (a GPU UUID).
    #[param(value_type = Option<String>, pattern = r"^[A-Za-z0-9_-]{1,64}$", max_length = 64)]
    pub cursor: Option<String>,
}

/// A validated `GET /api/v1/latest` query: a page of the GPU listing and the metrics to show.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetLatestRequest {
    /// Filters and page; the limit is always set (`DEFAULT_FLEET_LIMIT` when not given).
    pub gpus: GpuListRequest,
    /// `None`: every metric.
    pub metrics: Option<Vec<MetricName>>,
}

impl FleetLatestRequest {
    const NAMES: &'static [&'static str] =
        &["hostname", "model_name", "metric_name", "limit", "cursor"];

    /// Parses and validates the query: the listing's parameters as `GET /api/v1/gpus` takes them,
    /// and `metric_name`; an unknown one is an error, so a misspelt filter cannot silently widen
    /// the answer.
    pub fn from_query(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut listing = ListGpusParams::default();
        let mut metric_name = Vec::new();
        for (name, value) in query_pairs(raw) {
            if name == "metric_name" {
                metric_name.push(value);
            } else if !listing.take(&name, value)? {
                return Err(ApiError::unknown_parameter(&name, Self::NAMES));
            }
        }
        let mut gpus = listing.validate()?;
        gpus.limit.get_or_insert(DEFAULT_FLEET_LIMIT);
        Ok(FleetLatestRequest {
            gpus,
            metrics: parse_metric_names(&metric_name)?,
        })
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
    pub(crate) fn new(record: &GpuRecord, metrics: Option<&[MetricName]>) -> Self {
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

/// The newest values of every GPU, paged.
///
/// One entry per GPU, sorted by UUID, with the newest sample of each metric it reports (or of
/// the metrics named). Filters are exact matches. Follow `next_cursor` (repeating the other
/// parameters) until it is null to read every GPU once. Unknown parameters are rejected. The page
/// is streamed as the registry is read, like `GET /api/v1/gpus`.
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
) -> Result<Response, ApiError> {
    let request = FleetLatestRequest::from_query(query.as_deref())?;
    let listing = state
        .backend()?
        .list_gpus(&request.gpus, ListingEntry::Latest(request.metrics))
        .await?;
    Ok(listing_response(listing))
}

#[cfg(test)]
mod tests {
    use telemetry_model::GpuUuid;

    use super::*;

    fn request(query: &str) -> Result<FleetLatestRequest, ApiError> {
        FleetLatestRequest::from_query(Some(query))
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
            FleetLatestRequest::from_query(None).unwrap(),
            FleetLatestRequest {
                gpus: GpuListRequest {
                    limit: Some(DEFAULT_FLEET_LIMIT),
                    ..GpuListRequest::default()
                },
                metrics: None,
            }
        );
        let all = request(
            "hostname=h%201&model_name=NVIDIA+H100&metric_name=B,A&metric_name=A&limit=10000&cursor=GPU-1",
        )
        .unwrap();
        assert_eq!(
            all,
            FleetLatestRequest {
                gpus: GpuListRequest {
                    hostname: Some("h 1".into()),
                    model_name: Some("NVIDIA H100".into()),
                    limit: Some(10_000),
                    after: Some(GpuUuid::parse("GPU-1").unwrap()),
                },
                metrics: Some(vec![
                    MetricName::parse("A").unwrap(),
                    MetricName::parse("B").unwrap()
                ]),
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
        ];
        for (query, parameter) in cases {
            assert_eq!(invalid_parameter(request(query)), parameter, "{query}");
        }
        // An unknown name is named back, with the names the route takes.
        match request("step=1m") {
            Err(ApiError::UnknownParameter { name, accepted }) => {
                assert_eq!(name, "step");
                assert_eq!(accepted, FleetLatestRequest::NAMES);
            }
            other => panic!("expected an unknown parameter, got {other:?}"),
        }
    }
}
