//! Time and cancellation of one query: a deadline and a token the caller can trip (when the
//! client goes away); both are checked between fetches and at every evaluation step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::error::QueryError;

/// Cancels the queries it was given to (clones share one flag).
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_canceled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Control {
    pub(crate) deadline: Instant,
    pub(crate) cancel: CancelToken,
}

impl Control {
    /// Fails once the query is canceled or past its deadline; `phase` names where.
    pub(crate) fn check(&self, phase: &'static str) -> Result<(), QueryError> {
        if self.cancel.is_canceled() {
            return Err(QueryError::Canceled(phase));
        }
        if Instant::now() >= self.deadline {
            return Err(QueryError::Timeout(phase));
        }
        Ok(())
    }
}
