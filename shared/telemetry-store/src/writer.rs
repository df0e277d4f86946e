//! The collector's write path. Samples are appended to each GPU's open chunk, which is rewritten
//! (a few KiB) on every commit and sealed under an immutable, time-keyed key when it is full or
//! its retention bucket ends (the chunk puts come from the write core, `chunk_write`). The writes
//! come back as a [`Fence`] that the collector adds to its queue commit, so persisting and
//! acknowledging are one etcd transaction: exactly once.
//!
//! A GPU's registry record is two keys: its seen value (last seen, latest values; a few dozen
//! bytes) is rewritten with the open chunk, its identity (metadata, metric names, retention
//! bucket) only when that changes, typically once per retention bucket.
//!
//! The writer caches each GPU's open chunk and registry keys with their `mod_revision`; the fence
//! compares those revisions on every key it writes or may write, so a stale cache (another writer,
//! a lost partition) makes the commit fail cleanly instead of overwriting data. The caller then
//! invalidates and retries.
//!
//! Preparing a GPU's writes moves its open chunk and record out of the cache into the
//! [`PreparedWrite`] (copying them would cost more than the encoding: the chunk's samples and
//! streams are kilobytes per GPU per commit), and [`StoreWriter::committed`] puts them back. A GPU
//! whose prepared write is dropped (a failed commit, a prefix cut shorter) is missing from the
//! cache, so its next use loads it from etcd again: the cache never holds a chunk that did not
//! land.
//!
//! A delivery whose writes exceed one transaction is prepared as several fences, GPU by GPU
//! ([`StoreWriter::prepare_delivery`]); each GPU's open chunk is marked with the delivery's last
//! message (`open_chunk`), and samples of messages a GPU's mark covers are skipped, so writing
//! the delivery again after a crash between its transactions stores nothing twice.

use std::collections::{BTreeMap, HashMap};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use etcd_queue::kv::first_kv;
use etcd_queue::{Fence, MAX_RESPONSE_BYTES, MAX_TXN_OPS};
use futures::future::try_join_all;
use telemetry_model::{GpuInfo, GpuUuid, SampleBatch};

use crate::chunk::Chunk;
use crate::chunk_write::{admitted, group_where, Admitted, GpuSamples, LeasedPut, LiveSample};
use crate::error::StoreError;
use crate::keys::ChunkTag;
use crate::open_chunk::{self, Applied};
use crate::reader::CHUNK_VALUE_BYTES;
use crate::record::GpuRecord;
use crate::registry::{RegistryWrite, StoredRegistry, REGISTRY_VALUE_BYTES};
use crate::TelemetryStore;

#[derive(Debug, Clone)]
struct OpenState {
    chunk: Chunk,
    bucket: i64,
    revision: i64,
    /// The last queue message whose samples of the GPU are all stored.
    applied: Option<Applied>,
}

/// Writes prepared for one transaction.
#[derive(Debug)]
pub struct PreparedWrite {
    /// Add to the transaction: compares on cached revisions, and the puts.
    pub fence: Fence,
    /// Samples the fence stores.
    pub samples: usize,
    /// Samples dropped because they were already past retention when they arrived.
    pub expired: usize,
    /// Samples rejected because they were stamped beyond the future bound.
    pub future: usize,
    /// Bytes of chunk values written (open and sealed).
    pub chunk_bytes: usize,
    /// The open chunks and records of the GPUs written, moved out of the cache until the write
    /// lands.
    open: Vec<(GpuUuid, OpenState)>,
    records: Vec<(GpuUuid, GpuRecord, Option<RegistryWrite>)>,
}

impl Default for PreparedWrite {
    fn default() -> Self {
        PreparedWrite::new()
    }
}

impl PreparedWrite {
    fn new() -> Self {
        PreparedWrite {
            fence: Fence::default(),
            samples: 0,
            expired: 0,
            future: 0,
            chunk_bytes: 0,
            open: Vec::new(),
            records: Vec::new(),
        }
    }

    fn add(&mut self, gpu: GpuWrite) {
        self.fence.compares.extend(gpu.compares);
        self.fence.ops.extend(gpu.ops);
        self.fence.bytes += gpu.bytes;
        self.samples += gpu.samples;
        self.expired += gpu.expired;
        self.future += gpu.future;
        self.chunk_bytes += gpu.chunk_bytes;
        self.open.extend(gpu.open);
        self.records.extend(gpu.record);
    }
}

/// What one transaction's store writes may spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceBudget {
    pub ops: usize,
    pub compares: usize,
    pub bytes: usize,
}

/// The writes of one GPU, before they join a transaction.
struct GpuWrite {
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
    bytes: usize,
    samples: usize,
    expired: usize,
    future: usize,
    chunk_bytes: usize,
    open: Option<(GpuUuid, OpenState)>,
    record: Option<(GpuUuid, GpuRecord, Option<RegistryWrite>)>,
}

impl GpuWrite {
    fn fits(&self, budget: &FenceBudget) -> bool {
        self.ops.len() <= budget.ops
            && self.compares.len() <= budget.compares
            && self.bytes <= budget.bytes
    }
}

/// Operations per GPU in the usual worst case: sealed put, open put, identity put, seen put (a
/// GPU with more samples than a chunk holds seals more than once).
pub const OPS_PER_GPU: usize = 4;
/// Compares per GPU: the open chunk's revision and the seen key's, which versions both registry
/// keys.
pub const COMPARES_PER_GPU: usize = 2;

/// GPUs whose open chunk and registry keys one load transaction reads: three gets each, and
/// their values within one response.
const LOAD_BATCH: usize = {
    let by_ops = MAX_TXN_OPS / 3;
    let by_bytes = MAX_RESPONSE_BYTES / (CHUNK_VALUE_BYTES + 2 * REGISTRY_VALUE_BYTES);
    if by_ops < by_bytes {
        by_ops
    } else {
        by_bytes
    }
};
/// Load transactions in flight at once when thousands of GPUs are new to the cache.
const LOADS_IN_FLIGHT: usize = 4;

/// The collector's per-process write cache.
#[derive(Clone)]
pub struct StoreWriter {
    store: TelemetryStore,
    open: HashMap<GpuUuid, OpenState>,
    records: HashMap<GpuUuid, StoredRegistry>,
}

impl StoreWriter {
    pub fn new(store: TelemetryStore) -> Self {
        StoreWriter {
            store,
            open: HashMap::new(),
            records: HashMap::new(),
        }
    }

    /// Prepares appending `gpus` to the store as one fence.
    pub async fn prepare(
        &mut self,
        gpus: &BTreeMap<GpuUuid, GpuSamples>,
    ) -> Result<PreparedWrite, StoreError> {
        self.load(gpus.keys()).await?;
        let mut prepared = PreparedWrite::new();
        for (uuid, batch) in gpus {
            let admitted = admitted(&self.store, batch.rows());
            prepared.add(self.prepare_gpu(uuid, &batch.info, admitted, None).await?);
        }
        Ok(prepared)
    }

    /// Prepares the samples of `messages` (consecutive messages of queue partition `partition`,
    /// as `(offset, batch)` in offset order) as fences of at most `budget` each, GPU by GPU: a
    /// delivery covering more GPUs than one transaction holds is written in several. Every GPU
    /// written is marked as holding all its samples up to the last message, and the samples of
    /// messages a GPU's mark already covers are skipped, so writing the same messages again (after
    /// a crash between the transactions) stores nothing twice. `None` when one GPU's writes alone
    /// exceed the budget. There is always at least one fence (empty for no samples).
    pub async fn prepare_delivery(
        &mut self,
        partition: u32,
        messages: &[(u64, &SampleBatch)],
        budget: FenceBudget,
    ) -> Result<Option<Vec<PreparedWrite>>, StoreError> {
        let Some(last) = messages.last().map(|(offset, _)| *offset) else {
            return Ok(Some(vec![PreparedWrite::new()]));
        };
        let mut uuids: Vec<&GpuUuid> = messages
            .iter()
            .flat_map(|(_, batch)| batch.gpus.iter().map(|info| &info.uuid))
            .collect();
        uuids.sort();
        uuids.dedup();
        self.load(uuids.into_iter()).await?;
        // Samples of messages a GPU's mark covers are stored already.
        let open = &self.open;
        let by_gpu = group_where(messages.iter().copied(), |offset, info| {
            let applied = open.get(&info.uuid).and_then(|open| open.applied);
            !applied.is_some_and(|a| a.covers(partition, offset))
        });
        let applied = Applied {
            partition,
            offset: last,
        };
        let mut writes = vec![PreparedWrite::new()];
        for (uuid, rows) in by_gpu {
            let admitted = admitted(&self.store, rows.samples.into_iter());
            let gpu = self
                .prepare_gpu(uuid, rows.info, admitted, Some(applied))
                .await?;
            if !gpu.fits(&budget) {
                return Ok(None);
            }
            let current = writes.last_mut().expect("one write at least");
            let room = FenceBudget {
                ops: budget.ops - current.fence.ops.len(),
                compares: budget.compares - current.fence.compares.len(),
                bytes: budget.bytes - current.fence.bytes,
            };
            if gpu.fits(&room) {
                current.add(gpu);
            } else {
                let mut next = PreparedWrite::new();
                next.add(gpu);
                writes.push(next);
            }
        }
        Ok(Some(writes))
    }

    /// The writes that append the `admitted` samples (which came described by `info`) to `uuid`'s
    /// cached open chunk and fold them into its record, marking the open chunk with `applied`
    /// (none: the mark it has is kept). A GPU with samples to write leaves the cache for the
    /// write (see the module's note).
    async fn prepare_gpu(
        &mut self,
        uuid: &GpuUuid,
        info: &GpuInfo,
        admitted: Admitted<'_>,
        applied: Option<Applied>,
    ) -> Result<GpuWrite, StoreError> {
        let keys = self.store.keys();
        let leases = self.store.leases();
        let max_samples = self.store.config().chunk_max_samples;
        let open = self.open.get(uuid).expect("loaded");
        let stored = self.records.get(uuid).expect("loaded");
        let mut write = GpuWrite {
            compares: vec![Compare::mod_revision(
                keys.open_chunk(uuid),
                CompareOp::Equal,
                open.revision,
            )],
            ops: Vec::new(),
            bytes: 0,
            samples: 0,
            expired: admitted.expired,
            future: admitted.future,
            chunk_bytes: 0,
            open: None,
            record: None,
        };
        write.compares.push(stored.compare(keys, uuid));
        let live = admitted.live;
        write.samples = live.len();
        let Some(first) = live.first() else {
            // Nothing to write for this GPU; keep the compares (harmless) but skip the puts.
            return Ok(write);
        };
        let mut open = self.open.remove(uuid).expect("loaded");
        let stored = self.records.get_mut(uuid).expect("loaded");
        let mut record = stored
            .record
            .take()
            .unwrap_or_else(|| GpuRecord::new(info.clone(), first.timestamp));
        let add_chunk = |write: &mut GpuWrite, put: LeasedPut| {
            write.chunk_bytes += put.value_bytes;
            write.bytes += put.request_bytes;
            write.ops.push(put.op);
        };
        for sample in &live {
            if !open.chunk.is_empty()
                && (sample.bucket != open.bucket || open.chunk.len() >= max_samples)
            {
                // Seal: the full chunk moves to an immutable key; a fresh open chunk starts.
                let sealed = self
                    .store
                    .seal(uuid, &mut open.chunk, ChunkTag::Sealed)
                    .await?;
                add_chunk(&mut write, sealed);
                open.chunk = Chunk::new();
            }
            if open.chunk.is_empty() {
                open.bucket = sample.bucket;
            }
            open.chunk
                .push(sample.metric.as_str(), sample.timestamp.0, sample.value);
        }
        record.observe_batch(info, live.iter().map(LiveSample::observed));
        open.applied = applied.or(open.applied);
        let put = self
            .store
            .put_open(uuid, &mut open.chunk, open.applied)
            .await?;
        add_chunk(&mut write, put);
        write.open = Some((uuid.clone(), open));
        let stored = &self.records[uuid];
        let mut registry = stored.write_for(keys, leases, uuid, &record).await?;
        if let Some(registry) = &mut registry {
            write.bytes += registry.bytes;
            write.ops.append(&mut registry.ops);
        }
        write.record = Some((uuid.clone(), record, registry));
        Ok(write)
    }

    /// Adopts a prepared write after its transaction landed at `revision`.
    pub fn committed(&mut self, prepared: PreparedWrite, revision: i64) {
        for (uuid, mut open) in prepared.open {
            open.revision = revision;
            self.open.insert(uuid, open);
        }
        for (uuid, record, write) in prepared.records {
            self.records
                .entry(uuid)
                .or_default()
                .committed(record, write, revision);
        }
    }

    /// Forgets cached state (after a failed commit, or when partitions move).
    pub fn invalidate_all(&mut self) {
        self.open.clear();
        self.records.clear();
    }

    /// Loads the open chunks and registry keys of GPUs not in the cache, in transactions whose
    /// answers stay within one response's bytes, a few in flight at once.
    async fn load<'a>(
        &mut self,
        gpus: impl Iterator<Item = &'a GpuUuid>,
    ) -> Result<(), StoreError> {
        let missing: Vec<GpuUuid> = gpus
            .filter(|g| !self.open.contains_key(*g) || !self.records.contains_key(*g))
            .cloned()
            .collect();
        for group in missing.chunks(LOAD_BATCH * LOADS_IN_FLIGHT) {
            let loads: Vec<_> = group
                .chunks(LOAD_BATCH)
                .map(|batch| load_batch(&self.store, batch))
                .collect();
            for (uuid, open, registry) in try_join_all(loads).await?.into_iter().flatten() {
                self.open.insert(uuid.clone(), open);
                self.records.insert(uuid, registry);
            }
        }
        Ok(())
    }
}

/// One load transaction: the open chunk and both registry keys of each GPU of `batch`.
async fn load_batch(
    store: &TelemetryStore,
    batch: &[GpuUuid],
) -> Result<Vec<(GpuUuid, OpenState, StoredRegistry)>, StoreError> {
    let keys = store.keys();
    let ops: Vec<TxnOp> = batch
        .iter()
        .flat_map(|g| {
            let [identity, seen] = store.registry_gets(g);
            [TxnOp::get(keys.open_chunk(g), None), identity, seen]
        })
        .collect();
    let response = store
        .txn("load open chunks", Txn::new().and_then(ops))
        .await?;
    let responses = response.op_responses();
    let mut loaded = Vec::with_capacity(batch.len());
    for (i, uuid) in batch.iter().enumerate() {
        let open_state = match first_kv(responses.get(3 * i)) {
            Some(kv) => {
                let (chunk, applied) =
                    open_chunk::decode(kv.value()).map_err(|source| StoreError::CorruptChunk {
                        key: keys.open_chunk(uuid),
                        source,
                    })?;
                let bucket = store
                    .leases()
                    .bucket_of(chunk.min_timestamp().unwrap_or_default());
                OpenState {
                    chunk,
                    bucket,
                    revision: kv.mod_revision(),
                    applied,
                }
            }
            None => OpenState {
                chunk: Chunk::new(),
                bucket: 0,
                revision: 0,
                applied: None,
            },
        };
        let registry = responses.get(3 * i + 1..3 * i + 3).unwrap_or_default();
        let registry = StoredRegistry::from_responses(keys, uuid, registry)?;
        loaded.push((uuid.clone(), open_state, registry));
    }
    Ok(loaded)
}
