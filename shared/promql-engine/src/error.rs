//! What can go wrong with a query, and how each failure maps to Prometheus' error types and HTTP
//! statuses (the API layer builds `{"status":"error","errorType":..,"error":..}` from them).

use std::error::Error as StdError;

/// A failed query. Variants are named by what failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The query text is not PromQL (or a regular expression in it does not compile).
    #[error("parse error: {0}")]
    Parse(String),
    /// Valid PromQL this engine does not evaluate (the message names the construct).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A parameter of the request is invalid (end before start, a non-positive step, ...).
    #[error("{0}")]
    InvalidParameter(String),
    /// The query would exceed a configured limit; the message says which and what to change.
    #[error("{0}")]
    LimitExceeded(String),
    /// Evaluation failed as Prometheus' would (duplicate series, ambiguous matching, ...).
    #[error("{0}")]
    Evaluate(String),
    /// The query ran out of time in the named phase.
    #[error("query timed out in {0}")]
    Timeout(&'static str),
    /// The query was canceled in the named phase.
    #[error("query was canceled in {0}")]
    Canceled(&'static str),
    /// The series source failed.
    #[error("selecting series failed: {0}")]
    Select(#[source] SourceError),
}

/// Prometheus' `errorType` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    BadData,
    Execution,
    Timeout,
    Canceled,
    Unavailable,
    Internal,
}

impl ErrorType {
    /// The `errorType` string of Prometheus' error envelope.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::BadData => "bad_data",
            ErrorType::Execution => "execution",
            ErrorType::Timeout => "timeout",
            ErrorType::Canceled => "canceled",
            ErrorType::Unavailable => "unavailable",
            ErrorType::Internal => "internal",
        }
    }

    /// The HTTP status Prometheus answers with for this type (499 is "client closed request";
    /// `unavailable` is 503 here, where the series source is what is unavailable).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorType::BadData => 400,
            ErrorType::Execution => 422,
            ErrorType::Timeout => 503,
            ErrorType::Canceled => 499,
            ErrorType::Unavailable => 503,
            ErrorType::Internal => 500,
        }
    }
}

impl QueryError {
    pub fn error_type(&self) -> ErrorType {
        match self {
            QueryError::Parse(_)
            | QueryError::Unsupported(_)
            | QueryError::InvalidParameter(_)
            | QueryError::LimitExceeded(_) => ErrorType::BadData,
            QueryError::Evaluate(_) => ErrorType::Execution,
            QueryError::Timeout(_) => ErrorType::Timeout,
            QueryError::Canceled(_) => ErrorType::Canceled,
            QueryError::Select(e) if e.is_unavailable() => ErrorType::Unavailable,
            QueryError::Select(_) => ErrorType::Internal,
        }
    }

    pub fn http_status(&self) -> u16 {
        self.error_type().http_status()
    }
}

/// A failure of the series source, classified so the API answers 503 (try again later) or 500.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct SourceError {
    unavailable: bool,
    source: Box<dyn StdError + Send + Sync>,
}

impl SourceError {
    /// The store cannot be reached or did not answer in time: worth retrying.
    pub fn unavailable(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        SourceError {
            unavailable: true,
            source: source.into(),
        }
    }

    /// Anything else (corrupt data, a bug).
    pub fn internal(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        SourceError {
            unavailable: false,
            source: source.into(),
        }
    }

    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_prometheus_type_and_status() {
        let cases = [
            (QueryError::Parse("x".into()), "bad_data", 400),
            (QueryError::Unsupported("x".into()), "bad_data", 400),
            (QueryError::InvalidParameter("x".into()), "bad_data", 400),
            (QueryError::LimitExceeded("x".into()), "bad_data", 400),
            (QueryError::Evaluate("x".into()), "execution", 422),
            (QueryError::Timeout("query evaluation"), "timeout", 503),
            (QueryError::Canceled("query evaluation"), "canceled", 499),
            (
                QueryError::Select(SourceError::unavailable("etcd down")),
                "unavailable",
                503,
            ),
            (
                QueryError::Select(SourceError::internal("corrupt chunk")),
                "internal",
                500,
            ),
        ];
        for (err, kind, status) in cases {
            assert_eq!(err.error_type().as_str(), kind, "{err}");
            assert_eq!(err.http_status(), status, "{err}");
        }
        assert_eq!(
            QueryError::Timeout("query evaluation").to_string(),
            "query timed out in query evaluation"
        );
        assert_eq!(
            QueryError::Select(SourceError::unavailable("etcd down")).to_string(),
            "selecting series failed: etcd down"
        );
    }
}
