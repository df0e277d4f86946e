//! CSV shards and their progress state in etcd.
//!
//! The CSV's rows are split into [`SHARDS`] shards by GPU UUID, so all rows of a GPU come from the
//! one streamer that owns its shard. Each shard's progress lives at
//! `WorkGroupKeys::item_state(shard)` as JSON `{"passes":n,"row":k,"last_ts":us}`: passes
//! completed, rows of the current pass already published, and the last timestamp stamped on a
//! published row. Every publish compares the exact bytes read and writes the next value in the
//! same transaction, so a shard's rows are published once per pass no matter who owns it.
//!
//! This module is the only one that reads or writes the state keys and builds the shards' fences
//! (the compares and the state put a publish carries); the rest of the streamer hands those
//! fences to the queue as they are.

use std::collections::BTreeMap;

use etcd_client::{Compare, CompareOp, KeyValue, TxnOp, TxnOpResponse};
use etcd_queue::{Fence, RangeRead, WorkGroupKeys};
use serde::{Deserialize, Serialize};
use telemetry_model::GpuUuid;

use crate::error::StreamerError;

/// Number of CSV shards. Fixed: changing it would move GPUs between shards mid-pass.
pub const SHARDS: u32 = 32;

/// Operations a shard's fence adds to a publish besides the messages: the state put.
pub(crate) const FENCE_OPS: usize = 1;
/// Bytes a shard's fence adds to the request (state key and JSON value, generously).
pub(crate) const FENCE_BYTES: usize = 512;

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

/// Largest stored shard state: three numbers in JSON.
const STATE_BYTES: usize = 128;

/// The range of every shard's state, read with the group.
pub(crate) fn read_states(keys: &WorkGroupKeys) -> RangeRead {
    RangeRead::prefix(keys.item_states_prefix(), STATE_BYTES)
}

/// The states [`read_states`] found, by shard; shards without a state are absent.
pub(crate) fn decode_states(
    kvs: &[KeyValue],
) -> Result<BTreeMap<u32, StoredShardState>, StreamerError> {
    let mut states = BTreeMap::new();
    for kv in kvs {
        let key = String::from_utf8_lossy(kv.key());
        let Some(shard) = key.rsplit('/').next().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        states.insert(shard, StoredShardState::decode(&key, Some(kv.value()))?);
    }
    Ok(states)
}

/// The read of one shard's state, to run in the transaction that acquires the shard.
pub(crate) fn read_state(keys: &WorkGroupKeys, shard: u32) -> TxnOp {
    TxnOp::get(keys.item_state(shard), None)
}

/// The state [`read_state`] found for `shard`.
pub(crate) fn decode_state(
    keys: &WorkGroupKeys,
    shard: u32,
    response: Option<&TxnOpResponse>,
) -> Result<StoredShardState, StreamerError> {
    let value = match response {
        Some(TxnOpResponse::Get(get)) => get.kvs().first().map(|kv| kv.value()),
        _ => None,
    };
    StoredShardState::decode(&keys.item_state(shard), value)
}

/// A shard this streamer publishes in a pass: the compare that it still owns the shard (from the
/// work group) and the state its next publish compares.
#[derive(Debug, Clone)]
pub(crate) struct OwnedShard {
    id: u32,
    key: String,
    owner: Compare,
    stored: StoredShardState,
}

impl OwnedShard {
    /// `shard`, owned while `owner` holds, with `stored` as its state.
    pub(crate) fn new(
        keys: &WorkGroupKeys,
        shard: u32,
        owner: Compare,
        stored: StoredShardState,
    ) -> Self {
        OwnedShard {
            id: shard,
            key: keys.item_state(shard),
            owner,
            stored,
        }
    }

    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// The state the next publish starts from.
    pub(crate) fn state(&self) -> &ShardState {
        &self.stored.state
    }

    /// Stops following the shard's last stamp (it is further ahead of the clock than the future
    /// bound): the next publish writes the last stamp it stamped, not the larger stored one.
    pub(crate) fn restart_stamps(&mut self) {
        self.stored.state.last_ts = 0;
    }

    /// The fence of a publish of `rows` more rows, the last stamped `last_ts` (`ends_pass`: the
    /// publish ends the shard's pass). It holds only while this streamer owns the shard and the
    /// state is still the one read or last written, and it writes the next state, which the
    /// shard's next publish then compares.
    pub(crate) fn advance(&mut self, rows: u64, last_ts: Option<i64>, ends_pass: bool) -> Fence {
        let next = if ends_pass {
            self.stored.state.completed(rows, last_ts)
        } else {
            self.stored.state.advanced(rows, last_ts)
        };
        let written = StoredShardState::written(next);
        let value = written.raw.clone().unwrap_or_default();
        let fence = Fence {
            compares: vec![self.owner.clone(), self.stored.unchanged(&self.key)],
            bytes: self.key.len() + value.len(),
            ops: vec![TxnOp::put(self.key.clone(), value, None)],
        };
        self.stored = written;
        fence
    }
}

/// The fence of one transaction that publishes several shards: every shard's compares and state
/// puts, so it holds only if each of theirs does.
pub(crate) fn joint_fence<'a>(fences: impl IntoIterator<Item = &'a Fence>) -> Fence {
    let mut joint = Fence::default();
    for fence in fences {
        joint.compares.extend(fence.compares.iter().cloned());
        joint.ops.extend(fence.ops.iter().cloned());
        joint.bytes += fence.bytes;
    }
    joint
}

#[cfg(test)]
mod tests {
    use etcd_client::{Client, Txn};
    use test_support::{unique_prefix, EtcdHarness};

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

    /// Whether a transaction with `fence` alone holds.
    async fn holds(client: &mut Client, fence: Fence) -> bool {
        let txn = Txn::new().when(fence.compares).and_then(fence.ops);
        client.txn(txn).await.unwrap().succeeded()
    }

    /// Every stored state and, read in the same transaction, that of shard 4 (never written).
    async fn stored(
        client: &mut Client,
        keys: &WorkGroupKeys,
    ) -> (BTreeMap<u32, StoredShardState>, StoredShardState) {
        let txn = Txn::new().and_then([read_states(keys).txn_op(2), read_state(keys, 4)]);
        let response = client.txn(txn).await.unwrap();
        let responses = response.op_responses();
        let Some(TxnOpResponse::Get(states)) = responses.first() else {
            panic!("a get answers a get");
        };
        (
            decode_states(states.kvs()).unwrap(),
            decode_state(keys, 4, responses.get(1)).unwrap(),
        )
    }

    #[tokio::test]
    async fn a_fence_holds_once_and_only_for_the_owner() {
        let etcd = EtcdHarness::start().await;
        let mut client = etcd.client().await;
        let keys = WorkGroupKeys::new(&unique_prefix("fences"), "streamers").unwrap();
        let put = client.put(keys.owner(3), "me", None).await.unwrap();
        let owned_at = put.header().unwrap().revision();
        let owner = Compare::mod_revision(keys.owner(3), CompareOp::Equal, owned_at);
        let mut shard = OwnedShard::new(&keys, 3, owner, StoredShardState::default());

        let first = shard.advance(10, Some(500), false);
        assert_eq!(first.ops.len(), FENCE_OPS);
        assert!(first.bytes <= FENCE_BYTES, "{} bytes", first.bytes);
        assert!(holds(&mut client, first.clone()).await, "the first publish");
        assert!(!holds(&mut client, first).await, "a replay is refused");
        assert!(holds(&mut client, shard.advance(5, None, true)).await);
        let done = ShardState {
            passes: 1,
            row: 0,
            last_ts: 500,
        };
        assert_eq!(shard.state(), &done);
        let (states, absent) = stored(&mut client, &keys).await;
        assert_eq!(
            states,
            BTreeMap::from([(3, StoredShardState::written(done))])
        );
        assert_eq!(absent, StoredShardState::default());

        client
            .put(keys.owner(3), "someone else", None)
            .await
            .unwrap();
        let moved = shard.advance(1, Some(900), false);
        assert!(!holds(&mut client, moved).await, "the shard moved");
        let (states, _) = stored(&mut client, &keys).await;
        assert_eq!(states[&3].state, done, "a refused publish writes nothing");
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
