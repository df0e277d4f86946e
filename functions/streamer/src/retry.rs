//! Riding out etcd outages: which failures are worth another attempt, and the one retry loop
//! that joining, every round and every publish go through.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use etcd_queue::{is_lease_not_found, is_no_space, is_transient, Backoff, QueueError};
use function_runtime::{NoSpaceWait, Shutdown};

use crate::error::StreamerError;

/// The longest wait between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// Whether an operation is worth retrying: etcd was unavailable, the queue was full, a watch
/// broke, the lease lapsed (the next rebalance rejoins), or etcd is out of space (a state to wait
/// in, like a full queue, until the operator frees space).
pub fn is_retryable(error: &QueueError) -> bool {
    match error {
        QueueError::Unavailable { .. }
        | QueueError::QueueFull { .. }
        | QueueError::WatchBroken(_)
        | QueueError::LeaseExpired => true,
        QueueError::Etcd { source, .. } => {
            is_transient(source) || is_lease_not_found(source) || is_no_space(source)
        }
        _ => false,
    }
}

/// How one kind of operation is retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// The first wait; each next one doubles, up to [`MAX_DELAY`].
    first_delay: Duration,
    /// Whether an attempt still starts once the streamer is stopping (it still gives up after
    /// a failed one).
    attempts_while_stopping: bool,
}

impl Retry {
    /// Group and queue operations: nothing new starts once the streamer is stopping.
    pub const ETCD: Retry = Retry {
        first_delay: Duration::from_millis(100),
        attempts_while_stopping: false,
    };

    /// A publish under way: it keeps its attempts while the streamer stops (within the shutdown
    /// grace), until one fails.
    pub const PUBLISH: Retry = Retry {
        first_delay: Duration::from_millis(50),
        attempts_while_stopping: true,
    };

    /// Runs `attempt` on `state` until it succeeds or fails for good. After a retryable failure
    /// (a [`StreamerError::Queue`] that [`is_retryable`]) `on_retry` is told the operation, the
    /// error and whether the streamer is stopping; then the loop gives up if it is, or waits a
    /// growing backoff and tries again. `None` when it gave up because the streamer is stopping.
    pub async fn run<S, T>(
        self,
        stop: &Shutdown,
        state: &mut S,
        mut attempt: impl FnMut(&mut S) -> Attempt<'_, T>,
        mut on_retry: impl FnMut(&'static str, &QueueError, bool),
    ) -> Result<Option<T>, StreamerError> {
        let mut backoff = Backoff::new(self.first_delay, MAX_DELAY);
        loop {
            if !self.attempts_while_stopping && stop.is_triggered() {
                return Ok(None);
            }
            match attempt(state).await {
                Ok(value) => return Ok(Some(value)),
                Err(StreamerError::Queue { operation, source }) if is_retryable(&source) => {
                    let stopping = stop.is_triggered();
                    on_retry(operation, &source, stopping);
                    if stopping {
                        return Ok(None);
                    }
                    sleep_or_stop(backoff.next_delay(), stop).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// One attempt of a retried operation: a future borrowing the state the loop lends it for that
/// attempt. Boxed, because a closure's unnamed future cannot borrow from the closure's argument,
/// and an async closure's future cannot be shown `Send`, which the spawned publish tasks need.
pub type Attempt<'a, T> = Pin<Box<dyn Future<Output = Result<T, StreamerError>> + Send + 'a>>;

/// [`Retry::ETCD`], logging each retry (a refusal for lack of space through `nospace`, which
/// logs it once a minute).
pub async fn etcd<S, T>(
    stop: &Shutdown,
    nospace: &NoSpaceWait,
    state: &mut S,
    attempt: impl FnMut(&mut S) -> Attempt<'_, T>,
) -> Result<Option<T>, StreamerError> {
    Retry::ETCD
        .run(stop, state, attempt, |operation, error, _| {
            if error.is_no_space() {
                nospace.refused(operation, error);
            } else {
                tracing::warn!(operation, %error, "etcd unavailable; retrying");
            }
        })
        .await
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

    fn unavailable() -> StreamerError {
        StreamerError::Queue {
            operation: "x",
            source: QueueError::Unavailable {
                operation: "x",
                waited: Duration::from_secs(1),
                last_error: "down".into(),
            },
        }
    }

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
            pending_bytes: 100,
            max_bytes: 1000,
            waited: Duration::from_secs(1)
        }));
        let no_space =
            tonic::Status::resource_exhausted("etcdserver: mvcc: database space exceeded");
        assert!(is_retryable(&QueueError::Etcd {
            operation: "publish",
            source: etcd_client::Error::GRpcStatus(no_space),
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

    #[tokio::test]
    async fn retryable_failures_are_retried_and_others_returned() {
        let stop = Shutdown::new();
        let mut attempts = 0;
        let mut retries = 0;
        let outcome = Retry::ETCD
            .run(
                &stop,
                &mut attempts,
                |attempts| {
                    *attempts += 1;
                    let result = match *attempts {
                        1 | 2 => Err(unavailable()),
                        n => Ok(n),
                    };
                    Box::pin(async move { result })
                },
                |operation, _, stopping| {
                    assert_eq!((operation, stopping), ("x", false));
                    retries += 1;
                },
            )
            .await;
        assert_eq!(outcome.unwrap(), Some(3));
        assert_eq!((attempts, retries), (3, 2));

        let nospace = NoSpaceWait::new(
            function_runtime::Readiness::new("/p", Duration::from_secs(1)),
            Default::default(),
            Default::default(),
        );
        let permanent = etcd(&stop, &nospace, &mut (), |_| {
            Box::pin(async { Err::<(), _>(StreamerError::InvalidConfig("no".into())) })
        })
        .await;
        assert!(matches!(permanent, Err(StreamerError::InvalidConfig(_))));
    }

    fn failing(attempts: &mut u32) -> Attempt<'_, ()> {
        *attempts += 1;
        Box::pin(async { Err(unavailable()) })
    }

    #[tokio::test]
    async fn stopping_ends_the_retries() {
        let stop = Shutdown::new();
        stop.trigger();
        let mut attempts = 0;
        let nospace = NoSpaceWait::new(
            function_runtime::Readiness::new("/p", Duration::from_secs(1)),
            Default::default(),
            Default::default(),
        );
        assert!(etcd(&stop, &nospace, &mut attempts, failing)
            .await
            .unwrap()
            .is_none());
        assert_eq!(attempts, 0, "nothing new starts once stopping");

        let mut stopping = None;
        let outcome = Retry::PUBLISH
            .run(&stop, &mut attempts, failing, |_, _, now| {
                stopping = Some(now)
            })
            .await;
        assert!(outcome.unwrap().is_none());
        assert_eq!(attempts, 1, "a publish under way gets its attempt");
        assert_eq!(stopping, Some(true));
    }
}
