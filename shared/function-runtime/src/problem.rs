//! RFC 9457 problem documents: the body of every error answer of the functions' HTTP APIs.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The media type of every error body.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// A URI naming the kind of problem (stable; match on it rather than on `title`).
    #[serde(rename = "type")]
    #[cfg_attr(
        feature = "openapi",
        schema(example = "urn:gpu-telemetry:problem:invalid-parameter")
    )]
    pub problem_type: String,
    /// Short summary of the kind of problem.
    #[cfg_attr(feature = "openapi", schema(example = "Invalid parameter"))]
    pub title: String,
    /// The HTTP status code.
    #[cfg_attr(
        feature = "openapi",
        schema(example = 400, minimum = 400, maximum = 599)
    )]
    pub status: u16,
    /// What went wrong with this request.
    #[cfg_attr(
        feature = "openapi",
        schema(example = "invalid limit: must be between 1 and 10000, got 0")
    )]
    pub detail: String,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        problem_type: impl Into<String>,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            problem_type: problem_type.into(),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
        }
    }

    /// The status as an HTTP status code (500 if the document holds no valid one).
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).expect("a problem serializes");
        let mut response = (self.status_code(), body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_answers_with_its_status_media_type_and_four_members() {
        let problem = Problem::new(
            StatusCode::BAD_REQUEST,
            "about:blank",
            "Invalid CloudEvent",
            "no \"id\"",
        );
        let value = serde_json::to_value(&problem).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "about:blank",
                "title": "Invalid CloudEvent",
                "status": 400,
                "detail": "no \"id\"",
            })
        );
        let response = problem.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            PROBLEM_CONTENT_TYPE
        );
    }
}
