//! CSV shards and their progress state in etcd.
//!
//! The CSV's rows are split into [`SHARDS`] shards by GPU UUID, so all rows of a GPU come from the
//! one streamer that owns its shard. Each shard's progress lives at
//! `WorkGroupKeys::item_state(shard)` as JSON `{"passes":n,"row":k,"last_ts":us}`: passes
//! completed, rows of the current pass already published, and the last timestamp stamped on a
//! published row. Every publish compares the exact bytes read and writes the next value in the
//! same transaction, so a shard's rows are published once per pass no matter who owns it.

use etcd_client::{Compare, CompareOp};
use serde::{Deserialize, Serialize};
use telemetry_model::GpuUuid;

use crate::error::StreamerError;

/// Number of CSV shards. Fixed: changing it would move GPUs between shards mid-pass.
pub const SHARDS: u32 = 32;

/// The shard that owns every row of `uuid`.
pub fn shard_for(uuid: &GpuUuid) -> u32 {
    etcd_queue::hash::partition_for(uuid.as_str().as_bytes(), SHARDS)
}

/// Progress of one shard, shared by every streamer through etcd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    /// Passes over the shard completed.
    pub passes: u64,
    /// Rows of the current pass already published (in file order among the shard's good rows).
    pub row: u64,
    /// The last timestamp (µs) stamped on a published row of the shard; later rows stamp above it.
    pub last_ts: i64,
}

impl ShardState {
    /// The state after publishing `rows` more rows, the last stamped `last_ts`.
    pub fn advanced(&self, rows: u64, last_ts: Option<i64>) -> ShardState {
        ShardState {
            passes: self.passes,
            row: self.row + rows,
            last_ts: last_ts.map_or(self.last_ts, |t| t.max(self.last_ts)),
        }
    }

    /// The state after the pass ends with `rows` more rows published.
    pub fn completed(&self, rows: u64, last_ts: Option<i64>) -> ShardState {
        let advanced = self.advanced(rows, last_ts);
        ShardState {
            passes: self.passes + 1,
            row: 0,
            last_ts: advanced.last_ts,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("shard state serializes")
    }
}

/// A shard's state as stored: the decoded value and the exact bytes the next write compares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredShardState {
    pub state: ShardState,
    /// `None` while the key does not exist (before the shard's first publish).
    pub raw: Option<Vec<u8>>,
}

impl StoredShardState {
    /// Decodes the value of `key` (`None` when the key is absent).
    pub fn decode(key: &str, value: Option<&[u8]>) -> Result<Self, StreamerError> {
        match value {
            None => Ok(StoredShardState::default()),
            Some(bytes) => {
                let state = serde_json::from_slice(bytes).map_err(|e| {
                    StreamerError::CorruptShardState {
                        key: key.to_string(),
                        reason: e.to_string(),
                    }
                })?;
                Ok(StoredShardState {
                    state,
                    raw: Some(bytes.to_vec()),
                })
            }
        }
    }

    /// The condition that the state at `key` is still exactly this one.
    pub fn unchanged(&self, key: &str) -> Compare {
        match &self.raw {
            Some(raw) => Compare::value(key, CompareOp::Equal, raw.clone()),
            None => Compare::version(key, CompareOp::Equal, 0),
        }
    }

    /// The stored form of `state`, as this process writes it.
    pub fn written(state: ShardState) -> Self {
        StoredShardState {
            raw: Some(state.to_json()),
            state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_json_is_stable() {
        let state = ShardState {
            passes: 3,
            row: 17,
            last_ts: 1_752_871_354_000_001,
        };
        assert_eq!(
            String::from_utf8(state.to_json()).unwrap(),
            r#"{"passes":3,"row":17,"last_ts":1752871354000001}"#
        );
        let stored = StoredShardState::decode("k", Some(&state.to_json())).unwrap();
        assert_eq!(stored, StoredShardState::written(state));
    }

    #[test]
    fn absent_and_corrupt_states() {
        assert_eq!(
            StoredShardState::decode("k", None).unwrap(),
            StoredShardState::default()
        );
        let err = StoredShardState::decode("/p/streamers/state/00003", Some(b"{oops")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("shard state at /p/streamers/state/00003 is unreadable"),
            "{err}"
        );
    }

    #[test]
    fn advancing_and_completing() {
        let s = ShardState {
            passes: 1,
            row: 10,
            last_ts: 500,
        };
        assert_eq!(
            s.advanced(5, Some(900)),
            ShardState {
                passes: 1,
                row: 15,
                last_ts: 900
            }
        );
        assert_eq!(
            s.completed(0, None),
            ShardState {
                passes: 2,
                row: 0,
                last_ts: 500
            }
        );
        // A stamp below the stored one never lowers it.
        assert_eq!(s.advanced(1, Some(100)).last_ts, 500);
    }

    #[test]
    fn shards_are_stable_and_spread() {
        let uuid = GpuUuid::parse("GPU-5fd4f087-86f3-7a43-b711-4771313afc50").unwrap();
        assert_eq!(shard_for(&uuid), shard_for(&uuid.clone()));
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..1_000 {
            seen.insert(shard_for(&GpuUuid::parse(&format!("GPU-{i:08x}")).unwrap()));
        }
        assert_eq!(seen.len(), SHARDS as usize);
    }
}
