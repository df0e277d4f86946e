//! `POST /`: a CloudEvent sample batch delivered over HTTP (binary or structured content mode), so
//! the collector can be invoked directly as a function. Stored idempotently: chunk keys derive from
//! the event's source and id, so posting the same event twice stores it once. Until the collector
//! has reached etcd, it answers 503.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
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

/// The `POST /` route.
pub(crate) fn ingest_router(store: StoreSlot, metrics: Arc<CollectorMetrics>) -> Router {
    Router::new()
        .route("/", post(ingest))
        .with_state(IngestState { store, metrics })
}

async fn ingest(
    State(state): State<IngestState>,
    event: Result<cloudevents::Event, Response>,
) -> Response {
    let Ok(event) = event else {
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
