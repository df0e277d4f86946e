//! Wake-ups from etcd watches. A consumer does not trust watch events for state: an event only
//! says "something changed", and the consumer re-reads what it needs in one transaction. So a
//! cancelled, broken or compacted watch loses nothing: the consumer re-reads and opens a new feed
//! from the revision it read at.

use etcd_client::{Client, WatchOptions, WatchStream};
use futures::FutureExt;

use crate::error::QueueError;

/// One watch stream over several key prefixes.
#[derive(Debug)]
pub struct ChangeFeed {
    stream: WatchStream,
    lazy: Vec<String>,
}

/// What a wake-up was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Only keys under the lazy prefixes changed (e.g. partition heads: new messages); their new
    /// (key, value) pairs, in revision order. Deletions are not reported.
    Lazy(Vec<(Vec<u8>, Vec<u8>)>),
    /// Something else changed (e.g. membership or ownership): act on it now.
    Urgent,
}

impl Change {
    /// Folds a later change into this one.
    fn merge(self, later: Change) -> Change {
        match (self, later) {
            (Change::Lazy(mut a), Change::Lazy(b)) => {
                a.extend(b);
                Change::Lazy(a)
            }
            _ => Change::Urgent,
        }
    }
}

impl ChangeFeed {
    /// Watches every key under each of `prefixes` and `lazy` (prefixes whose changes are
    /// reported as [`Change::Lazy`]), from `start_revision` (inclusive).
    pub async fn open(
        client: &Client,
        prefixes: &[String],
        lazy: &[String],
        start_revision: i64,
    ) -> Result<Self, QueueError> {
        let options = || {
            WatchOptions::new()
                .with_prefix()
                .with_start_revision(start_revision)
        };
        let mut client = client.clone();
        let all: Vec<String> = prefixes.iter().chain(lazy).cloned().collect();
        let (first, rest) = all
            .split_first()
            .ok_or_else(|| QueueError::InvalidConfig("a change feed needs a prefix".into()))?;
        let mut stream = client
            .watch(first.clone(), Some(options()))
            .await
            .map_err(QueueError::etcd("open watch"))?;
        for prefix in rest {
            stream
                .watch(prefix.clone(), Some(options()))
                .await
                .map_err(QueueError::etcd("open watch"))?;
        }
        Ok(ChangeFeed {
            stream,
            lazy: lazy.to_vec(),
        })
    }

    /// Waits until a watched key changes. An error means the feed is broken (cancelled, compacted,
    /// or the connection dropped): re-read state and open a new feed.
    pub async fn changed(&mut self) -> Result<Change, QueueError> {
        loop {
            match self.stream.message().await {
                Ok(Some(response)) => {
                    if response.canceled() || response.compact_revision() > 0 {
                        return Err(QueueError::WatchBroken(format!(
                            "watch cancelled (compacted at {}): {}",
                            response.compact_revision(),
                            response.cancel_reason()
                        )));
                    }
                    if !response.events().is_empty() {
                        let mut lazy = Vec::new();
                        for event in response.events() {
                            let Some(kv) = event.kv() else { continue };
                            if !self.lazy.iter().any(|p| kv.key().starts_with(p.as_bytes())) {
                                return Ok(Change::Urgent);
                            }
                            if event.event_type() == etcd_client::EventType::Put {
                                lazy.push((kv.key().to_vec(), kv.value().to_vec()));
                            }
                        }
                        return Ok(Change::Lazy(lazy));
                    }
                }
                Ok(None) => return Err(QueueError::WatchBroken("watch stream ended".into())),
                Err(source) => {
                    return Err(QueueError::Etcd {
                        operation: "watch",
                        source,
                    })
                }
            }
        }
    }

    /// Non-blocking: drains the changes already waiting. `Some(Ok)` with the most urgent of them,
    /// `Some(Err)` if the feed broke, `None` if nothing happened.
    pub fn try_changed(&mut self) -> Option<Result<Change, QueueError>> {
        let mut seen: Option<Change> = None;
        loop {
            match self.changed().now_or_never() {
                Some(Ok(change)) => {
                    seen = Some(match seen {
                        Some(earlier) => earlier.merge(change),
                        None => change,
                    })
                }
                Some(Err(e)) => return Some(Err(e)),
                None => return seen.map(Ok),
            }
        }
    }
}
