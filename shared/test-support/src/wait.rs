//! Waiting on conditions in tests: poll until true or fail with what was awaited. Never a sleep
//! standing in for a condition.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `condition` (with a short backoff, at most every 100 ms) until it returns true; panics
/// with `what` if `limit` passes first.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A loopback port that was free a moment ago (for a process the test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral loopback port")
}
