//! The OpenAPI 3.1 document, generated from the handlers' annotations, the parameter structs and
//! the DTOs. The operations endpoints are served by `function-runtime` and the Swagger UI crate;
//! they are described here by annotated stubs so the document covers every route.

use serde::Serialize;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::{OpenApi, ToSchema};

use crate::error::{BadGateway, BadRequest, NotFound, Problem, Unavailable};
use crate::params::{AggregationName, SortOrder, TelemetryFormat};
use crate::prom_api::TAG_PROMETHEUS;
use crate::routes::{api_routes, TAG_GPUS, TAG_METRICS, TAG_QUEUE};

const TAG_OPS: &str = "operations";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "GPU telemetry gateway",
        description = "Read GPU telemetry collected from DCGM exporters: GPUs, samples in time windows (paged, optionally downsampled), latest values, metric descriptions and the ingest queue's status.\n\nTimes in responses are RFC 3339 UTC with six fractional digits. Errors are `application/problem+json` documents (RFC 9457).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
        version = env!("CARGO_PKG_VERSION"),
    ),
    paths(healthz, readyz, metrics, openapi_json_doc, swagger_ui, dashboard),
    components(
        schemas(Problem, Health, Readiness, SortOrder, AggregationName, TelemetryFormat),
        responses(BadRequest, NotFound, BadGateway, Unavailable)
    ),
    tags(
        (name = TAG_GPUS, description = "GPUs and their telemetry"),
        (name = TAG_METRICS, description = "Metric names and their meaning"),
        (name = TAG_QUEUE, description = "The ingest queue"),
        (name = TAG_PROMETHEUS, description = "The Prometheus HTTP API (PromQL) over the same store, for Grafana's Prometheus data source and promtool"),
        (name = TAG_OPS, description = "Health, readiness, Prometheus metrics, this document and the dashboard"),
    )
)]
pub(crate) struct ApiDoc;

/// The complete document.
pub fn openapi() -> OpenApiDoc {
    let (_, api) = utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(api_routes())
        .split_for_parts();
    api
}

/// The document as pretty JSON with a final newline: what `gateway openapi` prints and
/// `testdata/openapi.json` holds.
pub fn openapi_json() -> String {
    let mut text = openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

/// `/healthz` body.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// `/readyz` body.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not ready`.
    #[schema(example = "ready")]
    pub status: String,
    /// Why the gateway is not ready (absent when ready).
    #[schema(example = "etcd did not answer within 2s")]
    pub reason: Option<String>,
}

/// Liveness: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = TAG_OPS,
    operation_id = "healthz",
    responses((status = 200, description = "The process is up", body = Health))
)]
#[allow(dead_code)]
fn healthz() {}

/// Readiness: etcd answers within the timeout.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = TAG_OPS,
    operation_id = "readyz",
    responses(
        (status = 200, description = "etcd answers", body = Readiness),
        (status = 503, description = "etcd is unreachable or not connected yet", body = Readiness),
    )
)]
#[allow(dead_code)]
fn readyz() {}

/// Prometheus metrics: requests by route, method and status; latency histograms.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = TAG_OPS,
    operation_id = "metrics",
    responses(
        (status = 200, description = "OpenMetrics text", body = String,
            content_type = "application/openmetrics-text"),
    )
)]
#[allow(dead_code)]
fn metrics() {}

/// This OpenAPI document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = TAG_OPS,
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = serde_json::Value,
        content_type = "application/json"))
)]
#[allow(dead_code)]
fn openapi_json_doc() {}

/// The Swagger UI for this document (assets are served from the binary).
#[utoipa::path(
    get,
    path = "/swagger-ui/",
    tag = TAG_OPS,
    operation_id = "swaggerUi",
    responses((status = 200, description = "The Swagger UI page", body = String,
        content_type = "text/html"))
)]
#[allow(dead_code)]
fn swagger_ui() {}

/// The dashboard's fleet overview (also served at `/`); its GPU page, scripts and styles are
/// under `/ui/` too, all served from the binary.
#[utoipa::path(
    get,
    path = "/ui/",
    tag = TAG_OPS,
    operation_id = "dashboard",
    responses((status = 200, description = "The fleet overview page", body = String,
        content_type = "text/html"))
)]
#[allow(dead_code)]
fn dashboard() {}
