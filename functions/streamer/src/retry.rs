//! Riding out etcd outages: which failures are worth another attempt, and how long to wait.

use std::time::Duration;

use etcd_queue::{is_transient, Backoff, QueueError};
use function_runtime::Shutdown;

use crate::error::StreamerError;

/// Whether an operation is worth retrying: etcd was unavailable, the queue was full, a watch
/// broke, or the lease lapsed (the next rebalance rejoins).
pub fn is_retryable(error: &QueueError) -> bool {
    match error {
        QueueError::Unavailable { .. }
        | QueueError::QueueFull { .. }
        | QueueError::WatchBroken(_)
        | QueueError::LeaseExpired => true,
        QueueError::Etcd { source, .. } => {
            is_transient(source) || source.to_string().contains("lease not found")
        }
        _ => false,
    }
}

/// Runs `op` until it succeeds or fails permanently, backing off on retryable failures. `None`
/// if `stop` triggered first.
pub async fn retrying<T, F, Fut>(
    operation: &'static str,
    stop: &Shutdown,
    mut op: F,
) -> Result<Option<T>, StreamerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueueError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        if stop.is_triggered() {
            return Ok(None);
        }
        match op().await {
            Ok(value) => return Ok(Some(value)),
            Err(e) if is_retryable(&e) => {
                tracing::warn!(operation, error = %e, "etcd unavailable; retrying");
                sleep_or_stop(backoff.next_delay(), stop).await;
            }
            Err(source) => return Err(StreamerError::Queue { operation, source }),
        }
    }
}

/// Sleeps for `duration`, or less if `stop` triggers first.
pub async fn sleep_or_stop(duration: Duration, stop: &Shutdown) {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = stop.wait() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors() {
        assert!(is_retryable(&QueueError::Unavailable {
            operation: "x",
            waited: Duration::from_secs(1),
            last_error: "down".into()
        }));
        assert!(is_retryable(&QueueError::QueueFull {
            depth: 10,
            max: 10,
            waited: Duration::from_secs(1)
        }));
        assert!(!is_retryable(&QueueError::FenceFailed));
        assert!(!is_retryable(&QueueError::TransactionTooLarge {
            messages: 1,
            bytes: 1
        }));
        assert!(!is_retryable(&QueueError::PartitionMismatch {
            topic: "t".into(),
            stored: 16,
            configured: 8
        }));
    }
}
