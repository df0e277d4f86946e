//! Waiting on etcd's NOSPACE alarm: a function whose writes etcd refuses for lack of space counts
//! each refusal, says on `/readyz` why it is not ready, and logs (at most once a minute) what the
//! operator must do; the first write that lands again clears it all.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::ops::Readiness;

/// How often the operator is told again while the alarm lasts.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The readiness fault kind NOSPACE is reported under.
const FAULT: &str = "nospace";

/// What `/readyz` says while writes are refused for lack of space.
pub const NO_SPACE_REASON: &str =
    "etcd is out of space (NOSPACE alarm): writes are refused until an operator frees space";

/// A function's wait on etcd's NOSPACE alarm. Cheap to clone; clones share the state.
#[derive(Clone, Debug)]
pub struct NoSpaceWait {
    readiness: Readiness,
    refusals: Counter,
    waiting: Gauge,
    state: Arc<Mutex<WaitState>>,
}

#[derive(Debug, Default)]
struct WaitState {
    /// When the current wait began, if writes are being refused.
    since: Option<Instant>,
    last_logged: Option<Instant>,
}

impl NoSpaceWait {
    /// Reports to `readiness`, counting refusals in `refusals` and showing 1 in `waiting` while
    /// writes are refused.
    pub fn new(readiness: Readiness, refusals: Counter, waiting: Gauge) -> Self {
        NoSpaceWait {
            readiness,
            refusals,
            waiting,
            state: Arc::default(),
        }
    }

    /// etcd refused `operation` for lack of space (`error`): the function waits and tries again.
    pub fn refused(&self, operation: &str, error: &dyn std::fmt::Display) {
        self.refusals.inc();
        self.waiting.set(1);
        self.readiness.report_fault(FAULT, NO_SPACE_REASON);
        let now = Instant::now();
        let mut state = self.lock();
        let since = *state.since.get_or_insert(now);
        if state
            .last_logged
            .is_none_or(|logged| now.duration_since(logged) >= LOG_EVERY)
        {
            state.last_logged = Some(now);
            tracing::error!(
                operation,
                %error,
                waiting_for = ?now.duration_since(since),
                "etcd is out of space (NOSPACE alarm) and refuses writes; waiting, nothing is \
                 lost. To recover: compact the revision history (etcdctl compact <current \
                 revision>), defragment every member (etcdctl defrag --cluster), then clear the \
                 alarm (etcdctl alarm disarm); raise --quota-backend-bytes if the data needs more \
                 room. Writing resumes by itself."
            );
        }
    }

    /// A write landed: if writes were being refused, they are not any more.
    pub fn resumed(&self) {
        let since = {
            let mut state = self.lock();
            state.last_logged = None;
            state.since.take()
        };
        if let Some(since) = since {
            self.waiting.set(0);
            self.readiness.clear_fault(FAULT);
            tracing::info!(waited = ?since.elapsed(), "etcd accepts writes again; NOSPACE is over");
        }
    }

    /// Whether writes are being refused now (since the last refusal, no write landed).
    pub fn is_waiting(&self) -> bool {
        self.lock().since.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WaitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refusals_are_counted_and_reported_until_a_write_lands() {
        let readiness = Readiness::new("/p", Duration::from_secs(1));
        let (refusals, waiting) = (Counter::default(), Gauge::default());
        let wait = NoSpaceWait::new(readiness.clone(), refusals.clone(), waiting.clone());
        wait.resumed();
        assert!(!wait.is_waiting());
        assert!(readiness.faults().is_empty());

        wait.refused("publish", &"database space exceeded");
        wait.clone().refused("publish", &"database space exceeded");
        assert!(wait.is_waiting());
        assert_eq!((refusals.get(), waiting.get()), (2, 1));
        assert_eq!(readiness.faults(), [NO_SPACE_REASON]);
        assert_eq!(readiness.check().await, Err(NO_SPACE_REASON.to_string()));

        wait.resumed();
        assert!(!wait.is_waiting());
        assert_eq!((refusals.get(), waiting.get()), (2, 0));
        assert!(readiness.faults().is_empty());
    }
}
