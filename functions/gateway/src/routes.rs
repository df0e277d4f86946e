//! The API's handlers. Each carries its OpenAPI annotation (the spec is generated from these) and
//! does three things: take validated input from the request, call the
//! [`Backend`](crate::Backend), wrap the DTO. Validation happens in extractors and before
//! `state.backend()`, so a bad request is answered 400 without touching etcd.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::backend::{ApiState, GpuListing, ListingEntry};
use crate::dto::{GpuDetail, GpuList, LatestValues, MetricList, QueueInfo, TelemetryResponse};
use crate::error::{ApiError, BadGateway, BadRequest, NotFound, Unavailable};
use crate::params::{no_query_parameters, GpuId, GpuIdPath, ListGpusParams, TelemetryParams};

pub const TAG_GPUS: &str = "gpus";
pub const TAG_METRICS: &str = "metrics";
pub const TAG_QUEUE: &str = "queue";

/// The API routes with their OpenAPI description.
pub fn api_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_gpus))
        .routes(routes!(get_gpu))
        .routes(routes!(get_telemetry))
        .routes(routes!(get_latest))
        .routes(routes!(list_metrics))
        .routes(routes!(get_queue))
        .routes(routes!(crate::fleet_latest::get_fleet_latest))
        .merge(crate::prom_api::prometheus_routes())
}

/// List every GPU that has telemetry.
///
/// Sorted by UUID (the registry's order, so the list is streamed as the registry is read, in
/// memory that does not grow with the fleet). Filters are exact matches. Every GPU by default;
/// with `limit`, follow `next_cursor` until it is null to read each GPU exactly once.
#[utoipa::path(
    get,
    path = "/api/v1/gpus",
    tag = TAG_GPUS,
    operation_id = "listGpus",
    params(ListGpusParams),
    responses(
        (status = 200, description = "The GPUs", body = GpuList),
        (status = 400, response = BadRequest),
        (status = 502, response = BadGateway),
        (status = 503, response = Unavailable),
    )
)]
pub async fn list_gpus(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let request = ListGpusParams::from_query(query.as_deref())?.validate()?;
    let listing = state
        .backend()?
        .list_gpus(&request, ListingEntry::Summary)
        .await?;
    Ok(listing_response(listing))
}

/// A GPU listing as a JSON body streamed as it is written.
pub(crate) fn listing_response(listing: GpuListing) -> Response {
    let body = Body::from_stream(listing.into_stream());
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// One GPU: its summary, placement and exporter labels.
#[utoipa::path(
    get,
    path = "/api/v1/gpus/{id}",
    tag = TAG_GPUS,
    operation_id = "getGpu",
    params(GpuIdPath),
    responses(
        (status = 200, description = "The GPU", body = GpuDetail),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 502, response = BadGateway),
        (status = 503, response = Unavailable),
    )
)]
pub async fn get_gpu(
    GpuId(id): GpuId,
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Json<GpuDetail>, ApiError> {
    no_query_parameters(query.as_deref())?;
    Ok(Json(state.backend()?.gpu(&id).await?))
}

/// A GPU's telemetry in a time window, paged; optionally downsampled.
///
/// Entries are ordered by time, ties by metric name. Both bounds are inclusive. Follow
/// `next_cursor` (repeating the other parameters) until it is null to read every entry exactly
/// once. With `step`, each entry is one metric's aggregate over one bucket `[t, t + step)`,
/// timestamped `t` (buckets are aligned to multiples of the step since the Unix epoch).
///
/// With `format=series` the same samples come per metric: one series per metric, each an array
/// of integer Unix-microsecond timestamps and the array of their values (about 20 bytes of JSON
/// per point instead of 95), and `limit` counts points per metric, so `limit=3600` gives an hour
/// of ten 1 Hz metrics in one page.
#[utoipa::path(
    get,
    path = "/api/v1/gpus/{id}/telemetry",
    tag = TAG_GPUS,
    operation_id = "getGpuTelemetry",
    params(GpuIdPath, TelemetryParams),
    responses(
        (status = 200, description = "One page of entries, or of series with `format=series`", body = TelemetryResponse),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 502, response = BadGateway),
        (status = 503, response = Unavailable),
    )
)]
pub async fn get_telemetry(
    GpuId(id): GpuId,
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let request = TelemetryParams::from_query(query.as_deref())?.validate()?;
    let answer = state.backend()?.telemetry(&id, &request).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], answer.json()).into_response())
}

/// The latest value of every metric of a GPU.
#[utoipa::path(
    get,
    path = "/api/v1/gpus/{id}/latest",
    tag = TAG_GPUS,
    operation_id = "getGpuLatest",
    params(GpuIdPath),
    responses(
        (status = 200, description = "Latest values, one per metric", body = LatestValues),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 502, response = BadGateway),
        (status = 503, response = Unavailable),
    )
)]
pub async fn get_latest(
    GpuId(id): GpuId,
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Json<LatestValues>, ApiError> {
    no_query_parameters(query.as_deref())?;
    Ok(Json(state.backend()?.latest(&id).await?))
}

/// Metric names seen in the store, with description and unit for known DCGM fields.
#[utoipa::path(
    get,
    path = "/api/v1/metrics",
    tag = TAG_METRICS,
    operation_id = "listMetrics",
    responses(
        (status = 200, description = "The metrics, sorted by name", body = MetricList),
        (status = 400, response = BadRequest),
        (status = 502, response = BadGateway),
        (status = 503, response = Unavailable),
    )
)]
pub async fn list_metrics(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Json<MetricList>, ApiError> {
    no_query_parameters(query.as_deref())?;
    Ok(Json(state.backend()?.metrics().await?))
}

/// Queue status: depth, partitions with owner, committed offset and lag, members.
#[utoipa::path(
    get,
    path = "/api/v1/queue",
    tag = TAG_QUEUE,
    operation_id = "getQueueStatus",
    responses(
        (status = 200, description = "The queue status (exists = false before the topic is created)", body = QueueInfo),
        (status = 400, response = BadRequest),
        (status = 502, response = BadGateway),
        (status = 503, response = Unavailable),
    )
)]
pub async fn get_queue(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Json<QueueInfo>, ApiError> {
    no_query_parameters(query.as_deref())?;
    Ok(Json(state.backend()?.queue_status().await?))
}
