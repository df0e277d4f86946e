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

/// Heads and committed offsets of every partition, and the payload bytes published to and
/// committed from each, read at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub revision: i64,
    pub heads: BTreeMap<u32, u64>,
    pub offsets: BTreeMap<u32, u64>,
    /// Payload bytes ever published, per partition.
    pub head_bytes: BTreeMap<u32, u64>,
    /// Payload bytes ever committed by the group, per partition.
    pub offset_bytes: BTreeMap<u32, u64>,
}

impl Progress {
    /// The four ranges a progress is read from: heads, committed offsets, bytes published and
    /// bytes committed (decimal values, one key per partition).
    pub(crate) fn ranges(keys: &QueueKeys, group: &GroupKeys) -> [RangeRead; PROGRESS_READS] {
        [
            RangeRead::prefix(keys.heads_prefix(), DECIMAL_VALUE_BYTES),
            RangeRead::prefix(group.offsets_prefix(), DECIMAL_VALUE_BYTES),
            RangeRead::prefix(keys.head_bytes_prefix(), DECIMAL_VALUE_BYTES),
            RangeRead::prefix(group.offset_bytes_prefix(), DECIMAL_VALUE_BYTES),
        ]
    }

    /// The progress from the key-values of [`Progress::ranges`], in its order.
    pub(crate) fn from_kvs(revision: i64, kvs: &[Vec<KeyValue>]) -> Self {
        let numbers = |i: usize| {
            kvs.get(i)
                .map_or_else(BTreeMap::new, |kvs| numbers_by_partition(kvs))
        };
        Progress {
            revision,
            heads: numbers(0),
            offsets: numbers(1),
            head_bytes: numbers(2),
            offset_bytes: numbers(3),
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
        Ok(Self::from_kvs(revision, &kvs))
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

    /// Payload bytes pending in `partition`.
    pub fn lag_bytes(&self, partition: u32) -> u64 {
        let published = self.head_bytes.get(&partition).copied().unwrap_or(0);
        let committed = self.offset_bytes.get(&partition).copied().unwrap_or(0);
        published.saturating_sub(committed)
    }

    /// Payload bytes pending in the whole topic.
    pub fn pending_bytes(&self) -> u64 {
        self.head_bytes.keys().map(|p| self.lag_bytes(*p)).sum()
    }
}

/// Largest value of a key holding a decimal u64 (heads, offsets, byte counters).
pub(crate) const DECIMAL_VALUE_BYTES: usize = 20;

/// How many ranges [`Progress::ranges`] reads.
pub(crate) const PROGRESS_READS: usize = 4;

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

    /// Reads the progress, writes the depth it gives, and returns it.
    pub(crate) async fn flush(
        &mut self,
        client: &Client,
        keys: &QueueKeys,
        group: &GroupKeys,
        budget: Duration,
    ) -> Result<Progress, QueueError> {
        let progress = Progress::read(client, keys, group, budget).await?;
        write_depth(client, keys, progress.depth(), progress.revision, budget).await?;
        self.dirty = false;
        self.last_write = Some(Instant::now());
        Ok(progress)
    }
}
