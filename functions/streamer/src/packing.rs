//! Packing shards' rows into publish transactions: a [`Part`] is one shard's share of a
//! transaction (its batches and its fence), and at the end of a pass the shards' last parts share
//! transactions, as many as fit etcd's limits together.

use std::collections::BTreeSet;

use etcd_queue::{Fence, Producer, MAX_TXN_OPS};
use telemetry_model::SampleBatch;

use crate::buffer::TakenRows;
use crate::encode::JointBatches;

/// One shard's share of a publish transaction.
pub struct Part {
    pub shard: u32,
    /// The part ends the shard's pass.
    pub last: bool,
    pub samples: u64,
    pub batches: Vec<(u32, SampleBatch)>,
    pub partitions: BTreeSet<u32>,
    /// Upper bound of the batches' encoded size.
    pub bytes: usize,
    pub fence: Fence,
}

impl Part {
    /// The rows taken from `shard`'s buffer, published under `fence`.
    pub fn new(shard: u32, last: bool, taken: TakenRows, fence: Fence) -> Part {
        Part {
            shard,
            last,
            samples: taken.samples,
            partitions: taken.partitions(),
            bytes: taken.bytes,
            batches: taken.batches,
            fence,
        }
    }
}

/// The size of a transaction being put together from parts.
#[derive(Debug, Clone)]
struct TxnSize {
    /// Its messages: the parts' batches merged per partition, as the publish writes them.
    messages: JointBatches,
    max_samples: usize,
    partitions: BTreeSet<u32>,
    bytes: usize,
    fence_ops: usize,
    compares: usize,
}

impl TxnSize {
    /// An empty transaction whose messages hold up to `max_samples` samples each.
    fn new(max_samples: usize) -> TxnSize {
        TxnSize {
            messages: JointBatches::default(),
            max_samples,
            partitions: BTreeSet::new(),
            bytes: 0,
            fence_ops: 0,
            compares: 0,
        }
    }

    fn with(&self, part: &Part) -> TxnSize {
        let mut next = self.clone();
        next.messages.place(
            part.batches.iter().map(|(p, batch)| (*p, batch.len())),
            self.max_samples,
        );
        next.partitions.extend(part.partitions.iter().copied());
        next.bytes += part.bytes + part.fence.bytes;
        next.fence_ops += part.fence.ops.len();
        next.compares += part.fence.compares.len();
        next
    }

    /// Within etcd's limits as the queue counts them (one head compare per partition and one for
    /// the producer's marker next to the fences' compares).
    fn fits(&self) -> bool {
        Producer::fits_one_transaction(
            self.messages.len(),
            self.partitions.len(),
            self.bytes,
            self.fence_ops,
        ) && self.compares + self.partitions.len() < MAX_TXN_OPS
    }
}

/// Parts gathered into shared transactions, in the order they come.
pub struct Packing {
    parts: Vec<Part>,
    size: TxnSize,
}

impl Packing {
    /// Packing for messages of up to `max_samples` samples (the streamer's batch size).
    pub fn new(max_samples: usize) -> Packing {
        Packing {
            parts: Vec::new(),
            size: TxnSize::new(max_samples),
        }
    }

    /// Adds `part` to the transaction being packed. When it does not fit there, that
    /// transaction is returned (to publish) and `part` starts the next one. A part always fits
    /// an empty transaction: a shard's buffer never holds more than one.
    pub fn add(&mut self, part: Part) -> Option<Vec<Part>> {
        let grown = self.size.with(&part);
        let full = if self.parts.is_empty() || grown.fits() {
            self.size = grown;
            None
        } else {
            self.size = TxnSize::new(self.size.max_samples).with(&part);
            Some(std::mem::take(&mut self.parts))
        };
        self.parts.push(part);
        full
    }

    /// The last transaction, unless nothing was added since the previous one.
    pub fn finish(self) -> Option<Vec<Part>> {
        (!self.parts.is_empty()).then_some(self.parts)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use etcd_client::{Compare, CompareOp};
    use etcd_queue::WorkGroupKeys;
    use telemetry_model::{GpuInfo, GpuUuid, MetricName, TimestampMicros};

    use super::*;
    use crate::config::WORK_GROUP;
    use crate::shard::{OwnedShard, StoredShardState, SHARDS};

    /// The streamer's default batch size.
    const BATCH_SIZE: usize = 500;

    /// A final part of `shard` with `samples` samples on queue partition `shard % 16`, whose fence
    /// requires the shard's state key to be absent (and its owner key, as no streamer owns it).
    pub(crate) fn part(keys: &WorkGroupKeys, shard: u32, samples: u32) -> Part {
        let mut builder = SampleBatch::builder();
        let gpu = GpuInfo::new(GpuUuid::parse(&format!("GPU-{shard}")).unwrap());
        let metric = MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap();
        for i in 0..samples {
            builder.push(&gpu, &metric, TimestampMicros(1_000 + i64::from(i)), 1.0);
        }
        let unowned = Compare::version(keys.owner(shard), CompareOp::Equal, 0);
        let mut owned = OwnedShard::new(keys, shard, unowned, StoredShardState::default());
        let taken = TakenRows {
            batches: vec![(shard % 16, builder.build())],
            rows: u64::from(samples),
            samples: u64::from(samples),
            last_ts: Some(2_000),
            bytes: 4_096,
        };
        let fence = owned.advance(taken.rows, taken.last_ts, true);
        Part::new(shard, true, taken, fence)
    }

    #[test]
    fn small_parts_share_a_transaction_up_to_the_limits() {
        let keys = WorkGroupKeys::new("/p", WORK_GROUP).unwrap();
        let mut size = TxnSize::new(BATCH_SIZE);
        for shard in 0..SHARDS {
            size = size.with(&part(&keys, shard, 1));
        }
        assert!(
            size.fits(),
            "a pass's 32 final parts fit one transaction: {size:?}"
        );
        for shard in 0..40 {
            size = size.with(&part(&keys, shard, 1));
        }
        assert!(!size.fits(), "72 parts do not: {size:?}");
    }

    #[test]
    fn merged_messages_are_what_a_shared_transaction_counts() {
        let keys = WorkGroupKeys::new("/p", WORK_GROUP).unwrap();
        // Each shard's rows go to two partitions, as a pass over the real file's GPUs does.
        let two_batches = |shard: u32| {
            let mut part = part(&keys, shard, 3);
            let second = part.batches[0].1.clone();
            part.batches.push(((shard + 8) % 16, second));
            part.partitions = part.batches.iter().map(|(p, _)| *p).collect();
            part
        };
        let mut size = TxnSize::new(BATCH_SIZE);
        for shard in 0..SHARDS {
            size = size.with(&two_batches(shard));
        }
        assert_eq!(size.messages.len(), 16, "one message per partition");
        assert!(size.fits(), "64 batches of 32 shards in one transaction");
        // Batches of 4 samples at most: every partition's 4 batches of 3 samples stay apart.
        let mut small = TxnSize::new(4);
        for shard in 0..SHARDS {
            small = small.with(&two_batches(shard));
        }
        assert_eq!(small.messages.len(), 64);
        assert!(!small.fits());
    }

    #[test]
    fn packing_starts_a_new_transaction_when_a_part_does_not_fit() {
        let keys = WorkGroupKeys::new("/p", WORK_GROUP).unwrap();
        let mut packing = Packing::new(BATCH_SIZE);
        let mut transactions: Vec<Vec<u32>> = Vec::new();
        for shard in 0..72 {
            if let Some(full) = packing.add(part(&keys, shard, 1)) {
                transactions.push(full.iter().map(|p| p.shard).collect());
            }
        }
        transactions.extend(
            packing
                .finish()
                .map(|p| p.iter().map(|p| p.shard).collect()),
        );
        let shards: Vec<u32> = transactions.concat();
        assert_eq!(
            shards,
            (0..72).collect::<Vec<_>>(),
            "every part once, in order"
        );
        assert!(transactions.len() >= 2, "{transactions:?}");
        for (i, parts) in transactions.iter().enumerate() {
            let size = parts.iter().fold(TxnSize::new(BATCH_SIZE), |size, shard| {
                size.with(&part(&keys, *shard, 1))
            });
            assert!(size.fits(), "{parts:?}");
            if let Some(next) = transactions.get(i + 1) {
                let grown = size.with(&part(&keys, next[0], 1));
                assert!(!grown.fits(), "shard {} would have fit {parts:?}", next[0]);
            }
        }
        assert!(Packing::new(BATCH_SIZE).finish().is_none());
    }
}
