//! The gateway's errors: [`GatewayError`], what stops the gateway, and [`ApiError`], what fails
//! one request. This is the one place where failures become HTTP answers: every error the API can
//! give is an [`ApiError`], rendered as an RFC 9457 `application/problem+json` document.
//!
//! Store and queue errors are mapped variant by variant (no wildcard), so a new failure mode has
//! to be given a status here before the code compiles; nothing falls through to a 500.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use etcd_queue::{is_size_limit, QueueError};
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

    /// A query parameter the route does not take (a misspelling, most likely).
    #[error("unknown query parameter {name:?} ({})", accepted_text(.accepted))]
    UnknownParameter {
        name: String,
        accepted: &'static [&'static str],
    },

    /// The query's answer would hold more points than the gateway computes for one request.
    #[error("{0}")]
    TooManyPoints(String),

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

    /// etcd refused a request or response for its size. Every read is paged to stay far below
    /// the limits, so this is a bug to report, not an outage.
    #[error("etcd refused a request or response for its size ({operation}): {detail}")]
    EtcdSizeLimit {
        operation: &'static str,
        detail: String,
    },

    /// `GATEWAY_MAX_CONCURRENCY` requests are in flight already.
    #[error("the gateway is answering {0} requests already; retry in a second")]
    Overloaded(usize),

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

/// How an unknown parameter's problem lists what the route accepts.
fn accepted_text(accepted: &[&str]) -> String {
    if accepted.is_empty() {
        "this route takes no query parameters".into()
    } else {
        format!("accepted: {}", accepted.join(", "))
    }
}

/// What a 503 for overload tells clients to wait before retrying, in seconds.
pub const RETRY_AFTER_SECONDS: u64 = 1;

impl ApiError {
    /// An unknown parameter `name` (truncated for the answer) of a route taking `accepted`.
    pub fn unknown_parameter(name: &str, accepted: &'static [&'static str]) -> Self {
        ApiError::UnknownParameter {
            name: name.chars().take(80).collect(),
            accepted,
        }
    }

    pub fn invalid(parameter: &'static str, reason: impl Into<String>) -> Self {
        ApiError::InvalidParameter {
            parameter,
            reason: reason.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidParameter { .. }
            | ApiError::UnknownParameter { .. }
            | ApiError::TooManyPoints(_)
            | ApiError::InvalidGpuId(_) => StatusCode::BAD_REQUEST,
            ApiError::GpuNotFound(_) | ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotConnected
            | ApiError::EtcdTimeout { .. }
            | ApiError::EtcdUnavailable { .. }
            | ApiError::Overloaded(_)
            | ApiError::RequestTimeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::StoredDataUnreadable(_) | ApiError::EtcdSizeLimit { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ApiError::Other(status) => *status,
        }
    }

    /// The problem `type` slug and `title` of this kind of error.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::InvalidParameter { .. } => ("invalid-parameter", "Invalid parameter"),
            ApiError::UnknownParameter { .. } => ("unknown-parameter", "Unknown parameter"),
            ApiError::TooManyPoints(_) => ("too-many-points", "Too many points"),
            ApiError::InvalidGpuId(_) => ("invalid-gpu-id", "Invalid GPU id"),
            ApiError::GpuNotFound(_) => ("gpu-not-found", "GPU not found"),
            ApiError::RouteNotFound(_) => ("not-found", "Not found"),
            ApiError::MethodNotAllowed => ("method-not-allowed", "Method not allowed"),
            ApiError::PayloadTooLarge => ("payload-too-large", "Payload too large"),
            ApiError::NotConnected
            | ApiError::EtcdTimeout { .. }
            | ApiError::EtcdUnavailable { .. } => ("etcd-unavailable", "Storage unavailable"),
            ApiError::RequestTimeout(_) => ("request-timeout", "Request timed out"),
            ApiError::Overloaded(_) => ("overloaded", "Gateway overloaded"),
            ApiError::EtcdSizeLimit { .. } => ("etcd-size-limit", "etcd size limit exceeded"),
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
        match &self {
            ApiError::EtcdSizeLimit { .. } => {
                tracing::error!(error = %self, "an etcd request exceeded a size limit")
            }
            _ if status.is_server_error() => {
                tracing::warn!(status = status.as_u16(), error = %self, "request failed")
            }
            _ => tracing::debug!(status = status.as_u16(), error = %self, "request rejected"),
        }
        let overloaded = matches!(self, ApiError::Overloaded(_));
        let mut response = self.problem().into_response();
        if overloaded {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}

/// An etcd error of `operation`: a size limit, or etcd being unavailable.
fn etcd_error(operation: &'static str, source: &etcd_client::Error) -> ApiError {
    if is_size_limit(source) {
        ApiError::EtcdSizeLimit {
            operation,
            detail: source.to_string(),
        }
    } else {
        ApiError::EtcdUnavailable {
            operation,
            detail: source.to_string(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Etcd { operation, source } => etcd_error(operation, &source),
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
            QueueError::Etcd { operation, source } => etcd_error(operation, &source),
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
    description = "Invalid request: an unknown query parameter, a bad time, a window with start after end, a bad limit, cursor, step, aggregation or metric name, a query whose answer would exceed the points per series, or a GPU id outside the UUID alphabet",
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

/// 502: etcd answered with unreadable data, or refused a request for its size.
#[derive(ToResponse)]
#[response(
    description = "etcd answered with data the gateway cannot read, or refused a request or response for its size (a bug to report)",
    content_type = "application/problem+json"
)]
pub struct BadGateway(#[allow(dead_code)] Problem);

/// 503: etcd is unreachable or too slow, the request timed out, or the gateway is saturated.
#[derive(ToResponse)]
#[response(
    description = "etcd is unreachable or did not answer in time, the request timed out, or the gateway is answering its most requests at once (then with Retry-After)",
    headers(("Retry-After" = u64, description = "Seconds to wait before retrying (when saturated)")),
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
            (
                ApiError::unknown_parameter("start_tme", &["start_time"]),
                400,
                "unknown-parameter",
            ),
            (ApiError::TooManyPoints("x".into()), 400, "too-many-points"),
            (ApiError::Overloaded(8), 503, "overloaded"),
            (
                ApiError::EtcdSizeLimit {
                    operation: "list GPUs",
                    detail: "x".into(),
                },
                502,
                "etcd-size-limit",
            ),
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

    #[test]
    fn a_response_over_the_message_limit_is_not_an_outage() {
        let too_large = etcd_client::Error::GRpcStatus(tonic::Status::out_of_range(
            "Error, decoded message length too large: found 8365677 bytes, the limit is: 4194304 bytes",
        ));
        let mapped: ApiError = StoreError::Etcd {
            operation: "list GPUs",
            source: too_large,
        }
        .into();
        assert_eq!(mapped.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            mapped.problem().problem_type,
            "urn:gpu-telemetry:problem:etcd-size-limit"
        );
        let down = etcd_client::Error::GRpcStatus(tonic::Status::unavailable("no leader"));
        let mapped: ApiError = QueueError::Etcd {
            operation: "read queue status",
            source: down,
        }
        .into();
        assert_eq!(mapped.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn an_overloaded_answer_says_when_to_retry() {
        let response = ApiError::Overloaded(4).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            ApiError::unknown_parameter("x", &[]).to_string(),
            "unknown query parameter \"x\" (this route takes no query parameters)"
        );
    }
}
