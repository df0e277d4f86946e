//! The idempotent write path, for what cannot go through the collector's commit (a message too
//! large for one transaction, an event posted over HTTP, development seeding): every chunk is
//! sealed at once under a key derived from the message or event id, so a replay rewrites the
//! same keys with the same bytes, and the registry records are merged by compare-and-swap.

use std::collections::BTreeMap;

use etcd_client::Txn;
use etcd_queue::{MAX_TXN_BYTES, MAX_TXN_OPS};
use telemetry_model::GpuUuid;

use crate::chunk::Chunk;
use crate::chunk_write::{admitted, GpuSamples, LeasedPut};
use crate::error::StoreError;
use crate::keys::ChunkTag;
use crate::TelemetryStore;

/// Counts from writing samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub samples: usize,
    /// Samples already past retention, not written.
    pub expired: usize,
    /// Samples stamped beyond the future bound, rejected.
    pub future: usize,
    pub chunk_bytes: usize,
}

impl TelemetryStore {
    /// Stores `gpus` as immutable chunks tagged `tag` (derived from a message or event id), one per
    /// GPU and retention bucket, and merges the registry records. Replaying the same tag and
    /// samples writes the same keys and bytes, so it cannot duplicate samples.
    pub async fn write_idempotent(
        &self,
        tag: ChunkTag<'_>,
        gpus: &BTreeMap<GpuUuid, GpuSamples>,
    ) -> Result<WriteStats, StoreError> {
        let mut stats = WriteStats::default();
        let mut puts = Vec::new();
        let mut records = Vec::with_capacity(gpus.len());
        for (uuid, gpu) in gpus {
            let admitted = admitted(self, gpu.rows());
            let live = admitted.live;
            stats.expired += admitted.expired;
            stats.future += admitted.future;
            stats.samples += live.len();
            let mut by_bucket: BTreeMap<i64, Chunk> = BTreeMap::new();
            for sample in &live {
                by_bucket.entry(sample.bucket).or_default().push(
                    sample.metric.as_str(),
                    sample.timestamp.0,
                    sample.value,
                );
            }
            for chunk in by_bucket.values_mut() {
                let put = self.seal(uuid, chunk, tag).await?;
                stats.chunk_bytes += put.value_bytes;
                puts.push(put);
            }
            records.push((uuid, &gpu.info, live));
        }
        self.put_all(puts).await?;
        for (uuid, info, live) in records {
            self.merge_record(uuid, info, &live).await?;
        }
        Ok(stats)
    }

    /// Applies `puts` in as few transactions as the transaction budget allows.
    async fn put_all(&self, puts: Vec<LeasedPut>) -> Result<(), StoreError> {
        let mut ops = Vec::new();
        let mut bytes = 0;
        for put in puts {
            if !ops.is_empty()
                && (ops.len() >= MAX_TXN_OPS || bytes + put.request_bytes > MAX_TXN_BYTES)
            {
                self.txn(
                    "write chunks",
                    Txn::new().and_then(std::mem::take(&mut ops)),
                )
                .await?;
                bytes = 0;
            }
            bytes += put.request_bytes;
            ops.push(put.op);
        }
        if !ops.is_empty() {
            self.txn("write chunks", Txn::new().and_then(ops)).await?;
        }
        Ok(())
    }
}
