//! Retrying transient etcd failures with capped exponential backoff and jitter.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::QueueError;

/// Capped exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { next: initial, max }
    }

    /// The default for etcd round trips: 10 ms doubling up to 1 s.
    pub fn for_etcd() -> Self {
        Backoff::new(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// The next delay to wait (jittered between half and all of the current step).
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let nanos = step.as_nanos() as u64;
        let jitter = jitter_fraction(nanos);
        Duration::from_nanos(nanos / 2 + jitter)
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

fn jitter_fraction(nanos: u64) -> u64 {
    if nanos < 2 {
        return 0;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    crate::hash::mix64(seed) % (nanos / 2)
}

/// Whether an etcd error is worth retrying: the server or the connection was unavailable, or the
/// request timed out. Everything else (bad request, permission, too large) is permanent.
pub fn is_transient(error: &etcd_client::Error) -> bool {
    use etcd_client::Error;
    match error {
        Error::GRpcStatus(status) => {
            matches!(
                status.code(),
                tonic_code::UNAVAILABLE
                    | tonic_code::DEADLINE_EXCEEDED
                    | tonic_code::UNKNOWN
                    | tonic_code::ABORTED
                    | tonic_code::CANCELLED
                    | tonic_code::INTERNAL
            ) && !status.message().contains("too large")
        }
        Error::TransportError(_) | Error::IoError(_) | Error::WatchError(_) => true,
        Error::LeaseKeepAliveError(_) => false,
        _ => false,
    }
}

/// Whether etcd or its client refused a request or a response for its size: a response over
/// the client's message limit (4 MiB), a request over etcd's `--max-request-bytes`, or a
/// transaction over `--max-txn-ops`. Never transient, and never a sign that etcd is down: the
/// request must be made smaller. Recognised here only, by gRPC message.
pub fn is_size_limit(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            // tonic, decoding a response or encoding a request over its limit.
            message.contains("message length too large")
                // grpc-go in etcd, receiving or sending a message over its limit.
                || message.contains("message larger than max")
                // etcd's own request checks.
                || message.contains("etcdserver: request is too large")
                || message.contains("etcdserver: too many operations in txn request")
        }
        _ => false,
    }
}

/// What etcd answers to a write while its NOSPACE alarm is raised (its database reached
/// `--quota-backend-bytes`): gRPC `ResourceExhausted` with this message. Reads, deletes and lease
/// keep-alives still work; puts, transactions with a put, and lease grants do not, until the
/// operator compacts, defragments and disarms the alarm.
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

/// Whether `error` is etcd refusing a write because it is out of space (the NOSPACE alarm). Not
/// transient in the sense of [`is_transient`] (waiting a moment does not help, and the request
/// was not applied), but a state to wait in: writes succeed again once the operator has freed
/// space and disarmed the alarm.
pub fn is_no_space(error: &etcd_client::Error) -> bool {
    matches!(
        error,
        etcd_client::Error::GRpcStatus(status)
            if status.code() == tonic::Code::ResourceExhausted && status.message() == NO_SPACE
    )
}

/// Whether etcd refused the request for what it asks, not for the state it is in: a value or
/// request too large, a lease TTL beyond etcd's maximum, too many operations (gRPC
/// `InvalidArgument` or `OutOfRange`). Nothing was applied, and the same request would be refused
/// again whenever and by whomever it is sent.
pub fn is_request_refused(error: &etcd_client::Error) -> bool {
    matches!(
        error,
        etcd_client::Error::GRpcStatus(status)
            if matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::OutOfRange)
    )
}

/// gRPC codes that mean "try again".
mod tonic_code {
    pub use tonic::Code;
    pub const UNAVAILABLE: Code = Code::Unavailable;
    pub const DEADLINE_EXCEEDED: Code = Code::DeadlineExceeded;
    pub const UNKNOWN: Code = Code::Unknown;
    pub const ABORTED: Code = Code::Aborted;
    pub const CANCELLED: Code = Code::Cancelled;
    pub const INTERNAL: Code = Code::Internal;
}

/// Runs `op` until it succeeds, fails permanently, or transient failures have lasted `budget`.
pub async fn with_retry<T, F, Fut>(
    operation: &'static str,
    budget: Duration,
    mut op: F,
) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let started = Instant::now();
    let mut backoff = Backoff::for_etcd();
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) if is_transient(&e) => {
                if started.elapsed() >= budget {
                    return Err(QueueError::Unavailable {
                        operation,
                        waited: started.elapsed(),
                        last_error: e.to_string(),
                    });
                }
                tracing::debug!(operation, error = %e, "transient etcd error; retrying");
                backoff.wait().await;
            }
            Err(e) => {
                return Err(QueueError::Etcd {
                    operation,
                    source: e,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_limits_are_recognised_and_permanent() {
        let too_large = etcd_client::Error::GRpcStatus(tonic::Status::out_of_range(
            "Error, decoded message length too large: found 8365677 bytes, the limit is: 4194304 bytes",
        ));
        assert!(is_size_limit(&too_large));
        assert!(!is_transient(&too_large));
        for message in [
            "etcdserver: request is too large",
            "etcdserver: too many operations in txn request",
        ] {
            let refused = etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument(message));
            assert!(is_size_limit(&refused), "{message}");
        }
        let down = etcd_client::Error::GRpcStatus(tonic::Status::unavailable("connection refused"));
        assert!(!is_size_limit(&down));
    }

    #[test]
    fn only_etcds_no_space_status_is_no_space() {
        let status =
            |code, message: &str| etcd_client::Error::GRpcStatus(tonic::Status::new(code, message));
        assert!(is_no_space(&status(
            tonic::Code::ResourceExhausted,
            NO_SPACE
        )));
        assert!(!is_transient(&status(
            tonic::Code::ResourceExhausted,
            NO_SPACE
        )));
        // gRPC's own message-size refusal shares the code; the words alone under another code.
        assert!(!is_no_space(&status(
            tonic::Code::ResourceExhausted,
            "grpc: received message larger than max (4194305 vs. 4194304)"
        )));
        assert!(!is_no_space(&status(tonic::Code::Unavailable, NO_SPACE)));
    }

    #[test]
    fn requests_refused_for_what_they_ask_are_told_from_states_to_wait_in() {
        let status =
            |code, message: &str| etcd_client::Error::GRpcStatus(tonic::Status::new(code, message));
        assert!(is_request_refused(&status(
            tonic::Code::InvalidArgument,
            "etcdserver: request is too large"
        )));
        assert!(is_request_refused(&status(
            tonic::Code::OutOfRange,
            "etcdserver: too large lease TTL"
        )));
        for waitable in [
            status(tonic::Code::ResourceExhausted, NO_SPACE),
            status(
                tonic::Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            status(
                tonic::Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            status(tonic::Code::Unavailable, "etcdserver: leader changed"),
        ] {
            assert!(!is_request_refused(&waitable), "{waitable:?}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        for (d, step) in delays.iter().zip([10u64, 20, 40, 80, 80, 80]) {
            assert!(
                *d >= Duration::from_millis(step) / 2,
                "{d:?} < half of {step}ms"
            );
            assert!(*d <= Duration::from_millis(step), "{d:?} > {step}ms");
        }
    }
}
