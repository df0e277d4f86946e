//! The whole HTTP application: API routes, `/openapi.json`, the Swagger UI and the dashboard
//! (assets compiled into the binary), `/healthz` `/readyz` `/metrics`, the layers every request
//! goes through (tracing, metrics, CORS, gzip, problem documents for bare errors, request timeout,
//! body limit), and the API's concurrency limit.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, Uri};
use axum::middleware::{from_fn_with_state, map_response, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use function_runtime::{ops_router, Readiness};
use http_body::{Frame, SizeHint};
use prometheus_client::registry::Registry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceBuilder;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::backend::ApiState;
use crate::config::HttpSettings;
use crate::error::ApiError;
use crate::http_metrics::{record_request, HttpMetrics};
use crate::openapi::ApiDoc;
use crate::routes::api_routes;

/// Responses smaller than this are sent uncompressed: gzip would not pay for itself.
const COMPRESS_ABOVE_BYTES: u64 = 1024;

/// Builds the application. `readiness` backs `/readyz`; `state` backs the API.
pub fn app(state: ApiState, readiness: Readiness, settings: &HttpSettings) -> Router {
    let mut registry = Registry::with_prefix("gateway");
    let http_metrics = HttpMetrics::register(&mut registry);
    let (api, spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(api_routes())
        .split_for_parts();
    let compression = CompressionLayer::new().gzip(true).compress_when(
        SizeAbove::new(COMPRESS_ABOVE_BYTES)
            .and(NotForContentType::GRPC)
            .and(NotForContentType::IMAGES)
            .and(NotForContentType::SSE),
    );
    let limiter = ConcurrencyLimit::new(settings.max_concurrency);
    api.with_state(state)
        .layer(from_fn_with_state(limiter, limit_concurrency))
        .merge(SwaggerUi::new("/swagger-ui").url("/openapi.json", spec))
        .merge(crate::ui::router())
        .merge(ops_router(Arc::new(registry), readiness))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http())
                .layer(from_fn_with_state(http_metrics, record_request))
                .option_layer(cors_layer(&settings.cors_origins))
                .layer(compression)
                .layer(map_response(problem_for_bare_errors))
                .layer(from_fn_with_state(
                    settings.request_timeout,
                    request_timeout,
                ))
                .layer(RequestBodyLimitLayer::new(settings.body_limit)),
        )
}

async fn route_not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().chars().take(200).collect())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The API's admission control: a fixed number of requests in flight.
#[derive(Clone)]
struct ConcurrencyLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

impl ConcurrencyLimit {
    fn new(max: usize) -> Self {
        ConcurrencyLimit {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

/// Admits an API request if fewer than the limit are in flight, else answers 503 with
/// `Retry-After` at once (a queue would only grow under overload). The permit is held until the
/// response body has been sent: a streamed GPU list counts while it streams.
async fn limit_concurrency(
    State(limit): State<ConcurrencyLimit>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(permit) = limit.permits.clone().try_acquire_owned() else {
        return ApiError::Overloaded(limit.max).into_response();
    };
    next.run(request).await.map(|body| {
        Body::new(PermitBody {
            body,
            _permit: permit,
        })
    })
}

/// A response body that holds a concurrency permit until it is dropped (sent or abandoned).
struct PermitBody {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for PermitBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Answers 503 when the handler takes longer than the request timeout.
async fn request_timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout(limit).into_response(),
    }
}

/// Error statuses produced outside the handlers (framework rejections, the body limit) come with
/// no body or a plain-text one; they are turned into problem documents here. Problem documents and
/// JSON bodies (like `/readyz`'s, documented as they are) are left alone.
async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.is_empty() || content_type.starts_with("text/plain") {
        return ApiError::from_bare_status(status).into_response();
    }
    response
}

/// CORS for the configured origins (`*`: any); `None` (no CORS headers) when none are configured.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|origin| match HeaderValue::from_str(origin) {
                Ok(value) => Some(value),
                Err(_) => {
                    tracing::warn!(
                        origin,
                        "ignoring CORS origin that is not a valid header value"
                    );
                    None
                }
            })
            .collect();
        AllowOrigin::list(values)
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::HEAD, Method::OPTIONS])
            .allow_headers([header::ACCEPT, header::CONTENT_TYPE]),
    )
}
