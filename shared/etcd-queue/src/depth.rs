//! The depth key: pending messages of the topic's group as plain decimal text, so that KEDA's
//! `etcd` scaler (which reads one key as a number) can scale consumers on it.
//!
//! Depth is derived, not counted: it is the sum over partitions of `head - committed offset`, read
//! in one transaction at one revision. Writers race (producers after publishing, consumers after
//! committing, and both on a timer), so each write is conditional on the revision it was computed
//! at being newer than the one recorded beside it: a stale computation never overwrites a fresh one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, KeyValue, Txn, TxnOp};

use crate::error::QueueError;
use crate::keys::{trailing_number, GroupKeys, QueueKeys};
use crate::kv::decimal_value;
use crate::range::{read_ranges, RangeRead};
use crate::retry::with_retry;

/// Heads and committed offsets of every partition, read at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub revision: i64,
    pub heads: BTreeMap<u32, u64>,
    pub offsets: BTreeMap<u32, u64>,
}

impl Progress {
    /// The two ranges a progress is read from: heads, then committed offsets (decimal values,
    /// one key per partition).
    pub(crate) fn ranges(keys: &QueueKeys, group: &GroupKeys) -> [RangeRead; 2] {
        [
            RangeRead::prefix(keys.heads_prefix(), DECIMAL_VALUE_BYTES),
            RangeRead::prefix(group.offsets_prefix(), DECIMAL_VALUE_BYTES),
        ]
    }

    pub(crate) fn from_kvs(revision: i64, heads: &[KeyValue], offsets: &[KeyValue]) -> Self {
        Progress {
            revision,
            heads: numbers_by_partition(heads),
            offsets: numbers_by_partition(offsets),
        }
    }

    pub async fn read(
        client: &Client,
        keys: &QueueKeys,
        group: &GroupKeys,
        budget: Duration,
    ) -> Result<Self, QueueError> {
        let (revision, kvs) = read_ranges(
            client,
            "read queue progress",
            &Self::ranges(keys, group),
            budget,
        )
        .await?;
        Ok(Self::from_kvs(revision, &kvs[0], &kvs[1]))
    }

    /// Pending messages in `partition`.
    pub fn lag(&self, partition: u32) -> u64 {
        let head = self.heads.get(&partition).copied().unwrap_or(0);
        let offset = self.offsets.get(&partition).copied().unwrap_or(0);
        head.saturating_sub(offset)
    }

    /// Pending messages in the whole topic.
    pub fn depth(&self) -> u64 {
        self.heads.keys().map(|p| self.lag(*p)).sum()
    }
}

/// Largest value of a key holding a decimal u64 (heads, offsets).
pub(crate) const DECIMAL_VALUE_BYTES: usize = 20;

pub(crate) fn numbers_by_partition(kvs: &[etcd_client::KeyValue]) -> BTreeMap<u32, u64> {
    kvs.iter()
        .filter_map(|kv| {
            let partition = trailing_number(kv.key())? as u32;
            let value = decimal_value(kv)?;
            Some((partition, value))
        })
        .collect()
}

/// Writes `depth` computed at `revision` unless a newer computation was already written.
pub(crate) async fn write_depth(
    client: &Client,
    keys: &QueueKeys,
    depth: u64,
    revision: i64,
    budget: Duration,
) -> Result<(), QueueError> {
    let rev_text = format!("{revision:020}");
    with_retry("write depth key", budget, || {
        let mut client = client.clone();
        let txn = Txn::new()
            .when([Compare::value(
                keys.depth_revision(),
                CompareOp::Less,
                rev_text.clone(),
            )])
            .and_then([
                TxnOp::put(keys.depth(), depth.to_string(), None),
                TxnOp::put(keys.depth_revision(), rev_text.clone(), None),
            ]);
        async move { client.txn(txn).await }
    })
    .await?;
    Ok(())
}

/// Rewrites the depth key after local changes, at most once per `min_interval`, so that a burst of
/// publishes or commits costs one extra round trip rather than one per call.
#[derive(Debug)]
pub(crate) struct DepthReporter {
    min_interval: Duration,
    last_write: Option<Instant>,
    dirty: bool,
}

impl DepthReporter {
    pub(crate) fn new(min_interval: Duration) -> Self {
        DepthReporter {
            min_interval,
            last_write: None,
            dirty: false,
        }
    }

    pub(crate) fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// True when a write is due: something changed and the interval has passed.
    pub(crate) fn due(&self) -> bool {
        self.dirty
            && self
                .last_write
                .is_none_or(|t| t.elapsed() >= self.min_interval)
    }

    /// When the next write becomes due, if one is pending.
    pub(crate) fn due_at(&self) -> Option<Instant> {
        if !self.dirty {
            return None;
        }
        Some(
            self.last_write
                .map(|t| t + self.min_interval)
                .unwrap_or_else(Instant::now),
        )
    }

    pub(crate) async fn flush(
        &mut self,
        client: &Client,
        keys: &QueueKeys,
        group: &GroupKeys,
        budget: Duration,
    ) -> Result<u64, QueueError> {
        let progress = Progress::read(client, keys, group, budget).await?;
        let depth = progress.depth();
        write_depth(client, keys, depth, progress.revision, budget).await?;
        self.dirty = false;
        self.last_write = Some(Instant::now());
        Ok(depth)
    }
}
