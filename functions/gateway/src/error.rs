//! The gateway's errors: [`GatewayError`], what stops the gateway, and [`ApiError`], what fails
//! one request. This is the one place where failures become HTTP answers: every error the API can
//! give is an [`ApiError`], rendered as an RFC 9457 `application/problem+json` document.
//!
//! Store and queue errors are mapped variant by variant (no wildcard), so a new failure mode has
//! to be given a status here before the code compiles; nothing falls through to a 500.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use etcd_queue::QueueError;
use function_runtime::RuntimeError;
use telemetry_store::StoreError;
use utoipa::ToResponse;

pub use function_runtime::{Problem, PROBLEM_CONTENT_TYPE};

/// What stops the gateway. etcd being unreachable does not: the API answers 503 meanwhile.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The etcd settings are unusable (a certificate without its key, two passwords, ...).
    #[error("check the etcd settings: {0}")]
    CheckEtcdSettings(#[source] RuntimeError),

    #[error("serve HTTP: {0}")]
    Serve(#[source] RuntimeError),

    #[cfg(feature = "lambda")]
    #[error("run under the Lambda runtime: {0}")]
    RunLambda(String),
}

/// Everything that can go wrong while answering a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// A query parameter is malformed or out of range.
    #[error("invalid {parameter}: {reason}")]
    InvalidParameter {
        parameter: &'static str,
        reason: String,
    },

    /// The GPU id in the path is outside the UUID alphabet or too long.
    #[error("invalid GPU id: {0}")]
    InvalidGpuId(String),

    /// No GPU with this id has telemetry.
    #[error("no GPU with id {0} has telemetry")]
    GpuNotFound(String),

    /// No route matches the path.
    #[error("no resource at {0}")]
    RouteNotFound(String),

    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,

    /// The request body is larger than `GATEWAY_BODY_LIMIT`.
    #[error("request body is larger than the limit")]
    PayloadTooLarge,

    /// The gateway has not connected to etcd yet (it serves while connecting).
    #[error("not connected to etcd yet")]
    NotConnected,

    /// etcd did not answer within `GATEWAY_ETCD_TIMEOUT`.
    #[error("etcd did not answer {operation} within {waited:?}")]
    EtcdTimeout {
        operation: &'static str,
        waited: Duration,
    },

    /// etcd refused or failed the request (down, no leader, connection lost).
    #[error("etcd is unavailable ({operation}): {detail}")]
    EtcdUnavailable {
        operation: &'static str,
        detail: String,
    },

    /// The whole request took longer than `GATEWAY_REQUEST_TIMEOUT`.
    #[error("the request did not complete within {0:?}")]
    RequestTimeout(Duration),

    /// etcd answered with data the gateway cannot read (corrupt record, chunk or queue metadata).
    #[error("stored data is unreadable: {0}")]
    StoredDataUnreadable(String),

    /// Any other error status produced outside the handlers (framework rejections).
    #[error("{}", .0.canonical_reason().unwrap_or("request failed"))]
    Other(StatusCode),
}

impl ApiError {
    pub fn invalid(parameter: &'static str, reason: impl Into<String>) -> Self {
        ApiError::InvalidParameter {
            parameter,
            reason: reason.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidParameter { .. } | ApiError::InvalidGpuId(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::GpuNotFound(_) | ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotConnected
            | ApiError::EtcdTimeout { .. }
            | ApiError::EtcdUnavailable { .. }
            | ApiError::RequestTimeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::StoredDataUnreadable(_) => StatusCode::BAD_GATEWAY,
            ApiError::Other(status) => *status,
        }
    }

    /// The problem `type` slug and `title` of this kind of error.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::InvalidParameter { .. } => ("invalid-parameter", "Invalid parameter"),
            ApiError::InvalidGpuId(_) => ("invalid-gpu-id", "Invalid GPU id"),
            ApiError::GpuNotFound(_) => ("gpu-not-found", "GPU not found"),
            ApiError::RouteNotFound(_) => ("not-found", "Not found"),
            ApiError::MethodNotAllowed => ("method-not-allowed", "Method not allowed"),
            ApiError::PayloadTooLarge => ("payload-too-large", "Payload too large"),
            ApiError::NotConnected
            | ApiError::EtcdTimeout { .. }
            | ApiError::EtcdUnavailable { .. } => ("etcd-unavailable", "Storage unavailable"),
            ApiError::RequestTimeout(_) => ("request-timeout", "Request timed out"),
            ApiError::StoredDataUnreadable(_) => {
                ("stored-data-unreadable", "Stored data unreadable")
            }
            ApiError::Other(_) => ("http-error", "Request failed"),
        }
    }

    /// The problem document of this error.
    pub fn problem(&self) -> Problem {
        let (slug, title) = self.kind();
        Problem::new(
            self.status(),
            format!("urn:gpu-telemetry:problem:{slug}"),
            title,
            self.to_string(),
        )
    }

    /// The error for a bare error status produced by the framework or a middleware (no body of
    /// ours), so that every error answer is a problem document.
    pub fn from_bare_status(status: StatusCode) -> Self {
        match status {
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            other => ApiError::Other(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request rejected");
        }
        self.problem().into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Etcd { operation, source } => ApiError::EtcdUnavailable {
                operation,
                detail: source.to_string(),
            },
            StoreError::Queue(error) => error.into(),
            StoreError::CorruptRecord { .. } | StoreError::CorruptChunk { .. } => {
                ApiError::StoredDataUnreadable(error.to_string())
            }
            StoreError::InvalidCursor(text) => ApiError::invalid(
                "cursor",
                format!("{text:?} is not a cursor from next_cursor"),
            ),
            StoreError::InvalidQuery(reason) => ApiError::invalid("query", reason),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        match error {
            QueueError::Etcd { operation, source } => ApiError::EtcdUnavailable {
                operation,
                detail: source.to_string(),
            },
            QueueError::Unavailable {
                operation,
                last_error,
                ..
            } => ApiError::EtcdUnavailable {
                operation,
                detail: last_error,
            },
            // The gateway only reads the queue: the remaining variants can only come from
            // metadata or configuration it cannot make sense of.
            QueueError::InvalidConfig(_)
            | QueueError::PartitionMismatch { .. }
            | QueueError::CorruptMetadata { .. }
            | QueueError::PayloadTooLarge { .. }
            | QueueError::TransactionTooLarge { .. }
            | QueueError::QueueFull { .. }
            | QueueError::FenceFailed
            | QueueError::LostOwnership { .. }
            | QueueError::StaleDelivery { .. }
            | QueueError::LeaseExpired
            | QueueError::WatchBroken(_)
            | QueueError::DeliveryInFlight { .. } => {
                ApiError::StoredDataUnreadable(error.to_string())
            }
        }
    }
}

/// 400: a parameter or the GPU id is invalid.
#[derive(ToResponse)]
#[response(
    description = "Invalid request: a bad time, a window with start after end, a bad limit, cursor, step, aggregation or metric name, or a GPU id outside the UUID alphabet",
    content_type = "application/problem+json"
)]
pub struct BadRequest(#[allow(dead_code)] Problem);

/// 404: no GPU with this id has telemetry.
#[derive(ToResponse)]
#[response(
    description = "No GPU with this id has telemetry",
    content_type = "application/problem+json"
)]
pub struct NotFound(#[allow(dead_code)] Problem);

/// 502: etcd answered with unreadable data.
#[derive(ToResponse)]
#[response(
    description = "etcd answered with data the gateway cannot read",
    content_type = "application/problem+json"
)]
pub struct BadGateway(#[allow(dead_code)] Problem);

/// 503: etcd is unreachable or too slow, or the request timed out.
#[derive(ToResponse)]
#[response(
    description = "etcd is unreachable or did not answer in time, or the request timed out",
    content_type = "application/problem+json"
)]
pub struct Unavailable(#[allow(dead_code)] Problem);

#[cfg(test)]
mod tests {
    use axum::http::header;

    use super::*;

    #[test]
    fn each_error_has_its_status_and_a_stable_type() {
        let cases = [
            (ApiError::invalid("limit", "x"), 400, "invalid-parameter"),
            (ApiError::InvalidGpuId("x".into()), 400, "invalid-gpu-id"),
            (ApiError::GpuNotFound("GPU-1".into()), 404, "gpu-not-found"),
            (ApiError::RouteNotFound("/x".into()), 404, "not-found"),
            (ApiError::MethodNotAllowed, 405, "method-not-allowed"),
            (ApiError::PayloadTooLarge, 413, "payload-too-large"),
            (ApiError::NotConnected, 503, "etcd-unavailable"),
            (
                ApiError::EtcdTimeout {
                    operation: "read GPU",
                    waited: Duration::from_secs(2),
                },
                503,
                "etcd-unavailable",
            ),
            (
                ApiError::RequestTimeout(Duration::from_secs(10)),
                503,
                "request-timeout",
            ),
            (
                ApiError::StoredDataUnreadable("x".into()),
                502,
                "stored-data-unreadable",
            ),
            (ApiError::Other(StatusCode::IM_A_TEAPOT), 418, "http-error"),
        ];
        for (error, status, slug) in cases {
            let problem = error.problem();
            assert_eq!(problem.status, status, "{error:?}");
            assert_eq!(
                problem.problem_type,
                format!("urn:gpu-telemetry:problem:{slug}")
            );
            assert_eq!(problem.detail, error.to_string());
        }
    }

    #[test]
    fn the_response_is_problem_json_with_four_members() {
        let response = ApiError::invalid("limit", "must be at least 1").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            PROBLEM_CONTENT_TYPE
        );
        let value = serde_json::to_value(ApiError::invalid("limit", "bad").problem()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "urn:gpu-telemetry:problem:invalid-parameter",
                "title": "Invalid parameter",
                "status": 400,
                "detail": "invalid limit: bad",
            })
        );
    }

    #[test]
    fn store_and_queue_errors_map_without_a_500() {
        let mapped: ApiError = StoreError::InvalidCursor("zz".into()).into();
        assert_eq!(mapped.status(), StatusCode::BAD_REQUEST);
        let mapped: ApiError = StoreError::CorruptRecord {
            key: "k".into(),
            reason: "r".into(),
        }
        .into();
        assert_eq!(mapped.status(), StatusCode::BAD_GATEWAY);
        let mapped: ApiError = QueueError::Unavailable {
            operation: "read queue status",
            waited: Duration::from_secs(1),
            last_error: "connection refused".into(),
        }
        .into();
        assert_eq!(mapped.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            ApiError::from_bare_status(StatusCode::PAYLOAD_TOO_LARGE),
            ApiError::PayloadTooLarge
        );
    }
}
