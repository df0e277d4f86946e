//! Checking lease-fenced ownership from the outside: record every event on a prefix of owner keys
//! and verify that no key was ever taken while held (each owner key alternates create, with
//! version 1, and delete).

use std::collections::BTreeMap;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::task::JoinHandle;

type OwnerEvent = (String, EventType, String, i64);

/// Records owner-key events from the moment it starts.
pub struct OwnershipLog {
    client: Client,
    done_key: String,
    recorder: JoinHandle<Vec<OwnerEvent>>,
}

/// What the log saw, after the exclusivity checks passed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnershipSummary {
    /// Acquisitions per member (owner key value).
    pub acquisitions: BTreeMap<String, u32>,
    /// Keys still owned at the end, with their owner.
    pub still_owned: BTreeMap<String, String>,
}

impl OwnershipSummary {
    pub fn total_acquisitions(&self) -> u32 {
        self.acquisitions.values().sum()
    }
}

impl OwnershipLog {
    /// Starts watching every key under `owners_prefix`.
    pub async fn start(client: &Client, owners_prefix: &str) -> Self {
        let mut watch_client = client.clone();
        let done_key = format!("{owners_prefix}~log-done");
        let mut watch = watch_client
            .watch(owners_prefix, Some(WatchOptions::new().with_prefix()))
            .await
            .expect("watch owner keys");
        let done = done_key.clone();
        let recorder = tokio::spawn(async move {
            let mut events = Vec::new();
            while let Ok(Some(response)) = watch.message().await {
                for event in response.events() {
                    let kv = event.kv().expect("events carry a key");
                    let key = kv.key_str().unwrap_or("").to_string();
                    if key == done {
                        return events;
                    }
                    events.push((
                        key,
                        event.event_type(),
                        kv.value_str().unwrap_or("").to_string(),
                        kv.version(),
                    ));
                }
            }
            events
        });
        OwnershipLog {
            client: client.clone(),
            done_key,
            recorder,
        }
    }

    /// Stops recording and checks exclusivity, panicking on the first violation.
    pub async fn finish(self) -> OwnershipSummary {
        let mut client = self.client.clone();
        client
            .put(self.done_key.clone(), "", None)
            .await
            .expect("write the end marker");
        let events = self.recorder.await.expect("recorder task");
        client
            .delete(self.done_key, None)
            .await
            .expect("delete the end marker");
        let mut owned: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut summary = OwnershipSummary::default();
        for (key, kind, value, version) in events {
            let state = owned.entry(key.clone()).or_insert(None);
            match kind {
                EventType::Put => {
                    assert!(
                        state.is_none(),
                        "{key} acquired by {value} while owned by {state:?}"
                    );
                    assert_eq!(version, 1, "{key} overwritten instead of created");
                    *summary.acquisitions.entry(value.clone()).or_insert(0) += 1;
                    *state = Some(value);
                }
                EventType::Delete => {
                    assert!(state.is_some(), "{key} released while free");
                    *state = None;
                }
            }
        }
        summary.still_owned = owned
            .into_iter()
            .filter_map(|(k, v)| v.map(|owner| (k, owner)))
            .collect();
        summary
    }
}
