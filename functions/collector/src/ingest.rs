//! `POST /`: a CloudEvent sample batch delivered over HTTP (binary or structured content mode), so
//! the collector can be invoked directly as a function. Stored idempotently: chunk keys derive from
//! the event's source and id, so posting the same event twice stores it once. The body is bounded
//! (`COLLECTOR_BODY_LIMIT`, 413 above it); with `COLLECTOR_INGEST_TOKEN` set, a request must carry
//! `Authorization: Bearer <token>` (401 otherwise, checked before the body is read); samples
//! stamped beyond the future bound are rejected as on the queue path (the store's write core
//! judges both). Until the collector has reached etcd, it answers 503.

use std::sync::{Arc, OnceLock};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use function_runtime::Problem;
use telemetry_model::BatchEvent;
use telemetry_store::{group_by_gpu, ChunkTag, TelemetryStore};

use crate::metrics::CollectorMetrics;

/// The store `POST /` writes to, once etcd has been reached.
pub(crate) type StoreSlot = Arc<OnceLock<TelemetryStore>>;

#[derive(Clone)]
struct IngestState {
    store: StoreSlot,
    metrics: Arc<CollectorMetrics>,
    body_limit: usize,
}

/// How `POST /` is guarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestSettings {
    /// Largest request body accepted (413 above it).
    pub body_limit: usize,
    /// When set, the bearer token every request must carry (401 without it).
    pub token: Option<String>,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            body_limit: 4 * 1024 * 1024,
            token: None,
        }
    }
}

/// What `POST /` answers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IngestResponse {
    pub id: String,
    /// Samples stored.
    pub samples: usize,
    /// Samples already past retention, not stored.
    pub expired: usize,
    /// Samples stamped further ahead than `TELEMETRY_MAX_FUTURE`, rejected.
    pub rejected_future: usize,
}

/// The `POST /` route, guarded as `settings` say.
pub(crate) fn ingest_router(
    store: StoreSlot,
    metrics: Arc<CollectorMetrics>,
    settings: &IngestSettings,
) -> Router {
    let state = IngestState {
        store,
        metrics,
        body_limit: settings.body_limit,
    };
    let router = Router::new()
        .route("/", post(ingest))
        .layer(DefaultBodyLimit::max(settings.body_limit))
        .with_state(state);
    match &settings.token {
        Some(token) => router.route_layer(middleware::from_fn_with_state(
            Arc::<str>::from(token.as_str()),
            require_bearer,
        )),
        None => router,
    }
}

/// Lets a request through only with `Authorization: Bearer <token>`, compared in constant time.
async fn require_bearer(State(token): State<Arc<str>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, credentials)| credentials.trim());
    if presented.is_some_and(|presented| same_secret(presented.as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    let mut response = problem(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "this collector requires Authorization: Bearer <token> (COLLECTOR_INGEST_TOKEN)",
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Whether `presented` is `secret`, in time that depends only on their lengths.
fn same_secret(presented: &[u8], secret: &[u8]) -> bool {
    if presented.len() != secret.len() {
        return false;
    }
    let difference = presented
        .iter()
        .zip(secret)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(difference) == 0
}

async fn ingest(
    State(state): State<IngestState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload too large",
                &format!(
                    "the body exceeds {} bytes (COLLECTOR_BODY_LIMIT)",
                    state.body_limit
                ),
            )
        }
        Err(rejection) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Unreadable body",
                &rejection.body_text(),
            )
        }
    };
    let mut request = Request::new(Body::from(body));
    *request.headers_mut() = headers;
    let Ok(event) = cloudevents::Event::from_request(request, &()).await else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid CloudEvent",
            "the request is neither a structured (application/cloudevents+json) nor a binary-mode (ce-* headers) CloudEvent",
        );
    };
    let event = match BatchEvent::from_cloudevent(event) {
        Ok(event) => event,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Invalid telemetry batch",
                &e.to_string(),
            )
        }
    };
    let tag = ChunkTag::Event {
        source: &event.source,
        id: &event.id,
    };
    let Some(store) = state.store.get() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Store unavailable",
            "not connected to etcd yet",
        );
    };
    let grouped = group_by_gpu([&event.batch]);
    match store.write_idempotent(tag, &grouped).await {
        Ok(stats) => {
            state.metrics.http_events.inc();
            state.metrics.http_samples.inc_by(stats.samples as u64);
            state.metrics.rejected_future(stats.future);
            (
                StatusCode::OK,
                Json(IngestResponse {
                    id: event.id,
                    samples: stats.samples,
                    expired: stats.expired,
                    rejected_future: stats.future,
                }),
            )
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "storing an HTTP event failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Store unavailable",
                &e.to_string(),
            )
        }
    }
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    Problem::new(status, "about:blank", title, detail).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_secret_is_the_same() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3creT", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
        assert!(same_secret(b"", b""));
    }
}
