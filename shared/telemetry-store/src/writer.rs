//! The collector's write path. Samples are appended to each GPU's open chunk, which is rewritten
//! (a few KiB) on every commit and sealed under an immutable, time-keyed key when it is full or
//! its retention bucket ends (the chunk puts come from the write core, `chunk_write`). The writes come back as a [`Fence`] that the collector adds to its
//! queue commit, so persisting and acknowledging are one etcd transaction: exactly once.
//!
//! A GPU's registry record is two keys: its seen value (last seen, latest values; a few dozen
//! bytes) is rewritten with the open chunk, its identity (metadata, metric names, retention
//! bucket) only when that changes, typically once per retention bucket.
//!
//! The writer caches each GPU's open chunk and registry keys with their `mod_revision`; the fence
//! compares those revisions on every key it writes or may write, so a stale cache (another writer,
//! a lost partition) makes the commit fail cleanly instead of overwriting data. The caller then
//! invalidates and retries.

use std::collections::{BTreeMap, HashMap};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use etcd_queue::kv::first_kv;
use etcd_queue::{Fence, MAX_TXN_OPS};
use telemetry_model::GpuUuid;

use crate::chunk::Chunk;
use crate::chunk_write::{admitted, GpuSamples, LeasedPut, LiveSample};
use crate::error::StoreError;
use crate::keys::ChunkTag;
use crate::record::GpuRecord;
use crate::registry::{RegistryWrite, StoredRegistry};
use crate::TelemetryStore;

#[derive(Debug, Clone)]
struct OpenState {
    chunk: Chunk,
    bucket: i64,
    revision: i64,
}

/// Writes prepared for one commit.
#[derive(Debug)]
pub struct PreparedWrite {
    /// Add to the queue commit: compares on cached revisions, and the puts.
    pub fence: Fence,
    /// Samples the fence stores.
    pub samples: usize,
    /// Samples dropped because they were already past retention when they arrived.
    pub expired: usize,
    /// Samples rejected because they were stamped beyond the future bound.
    pub future: usize,
    /// Bytes of chunk values written (open and sealed).
    pub chunk_bytes: usize,
    open: Vec<(GpuUuid, OpenState)>,
    records: Vec<(GpuUuid, GpuRecord, RegistryWrite)>,
}

impl PreparedWrite {
    fn add_chunk(&mut self, put: LeasedPut) {
        self.chunk_bytes += put.value_bytes;
        self.fence.bytes += put.request_bytes;
        self.fence.ops.push(put.op);
    }
}

/// Operations per GPU in the worst case: sealed put, open put, identity put, seen put.
pub const OPS_PER_GPU: usize = 4;
/// Compares per GPU: open chunk, identity and seen revisions.
pub const COMPARES_PER_GPU: usize = 3;

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
        let keys = self.store.keys().clone();
        let leases = self.store.leases();
        let max_samples = self.store.config().chunk_max_samples;
        let mut prepared = PreparedWrite {
            fence: Fence::default(),
            samples: 0,
            expired: 0,
            future: 0,
            chunk_bytes: 0,
            open: Vec::new(),
            records: Vec::new(),
        };
        for (uuid, batch) in gpus {
            let mut open = self.open.get(uuid).cloned().expect("loaded");
            let stored = self.records.get(uuid).expect("loaded");
            prepared.fence.compares.push(Compare::mod_revision(
                keys.open_chunk(uuid),
                CompareOp::Equal,
                open.revision,
            ));
            prepared.fence.compares.extend(stored.compares(&keys, uuid));
            let admitted = admitted(&self.store, batch);
            let live = admitted.live;
            prepared.expired += admitted.expired;
            prepared.future += admitted.future;
            prepared.samples += live.len();
            for sample in &live {
                if !open.chunk.is_empty()
                    && (sample.bucket != open.bucket || open.chunk.len() >= max_samples)
                {
                    // Seal: the full chunk moves to an immutable key; a fresh open chunk starts.
                    prepared.add_chunk(self.store.seal(uuid, &open.chunk, ChunkTag::Sealed).await?);
                    open.chunk = Chunk::new();
                }
                if open.chunk.is_empty() {
                    open.bucket = sample.bucket;
                }
                open.chunk
                    .push(sample.metric.as_str(), sample.timestamp.0, sample.value);
            }
            let Some(first) = live.first() else {
                // Nothing to write for this GPU; keep the compares (harmless) but skip the puts.
                continue;
            };
            let mut record = stored
                .record
                .clone()
                .unwrap_or_else(|| GpuRecord::new(batch.info.clone(), first.timestamp));
            record.observe_batch(&batch.info, live.iter().map(LiveSample::observed));
            prepared.add_chunk(self.store.put_open(uuid, &open.chunk).await?);
            prepared.open.push((uuid.clone(), open));
            if let Some(mut write) = stored.write_for(&keys, leases, uuid, &record).await? {
                prepared.fence.bytes += write.bytes;
                prepared.fence.ops.append(&mut write.ops);
                prepared.records.push((uuid.clone(), record, write));
            }
        }
        Ok(prepared)
    }

    /// Adopts a prepared write after its commit landed at `revision`.
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

    /// Loads the open chunks and registry keys of GPUs not in the cache, in as few round trips as
    /// the transaction limits allow.
    async fn load<'a>(
        &mut self,
        gpus: impl Iterator<Item = &'a GpuUuid>,
    ) -> Result<(), StoreError> {
        let missing: Vec<GpuUuid> = gpus
            .filter(|g| !self.open.contains_key(*g) || !self.records.contains_key(*g))
            .cloned()
            .collect();
        let keys = self.store.keys().clone();
        // Three gets per GPU: open chunk, identity, seen value.
        for batch in missing.chunks(MAX_TXN_OPS / 3) {
            let ops: Vec<TxnOp> = batch
                .iter()
                .flat_map(|g| {
                    let [identity, seen] = self.store.registry_gets(g);
                    [TxnOp::get(keys.open_chunk(g), None), identity, seen]
                })
                .collect();
            let response = self
                .store
                .txn("load open chunks", Txn::new().and_then(ops))
                .await?;
            let responses = response.op_responses();
            for (i, uuid) in batch.iter().enumerate() {
                let open_state = match first_kv(responses.get(3 * i)) {
                    Some(kv) => {
                        let chunk = Chunk::decode(kv.value()).map_err(|source| {
                            StoreError::CorruptChunk {
                                key: keys.open_chunk(uuid),
                                source,
                            }
                        })?;
                        let bucket = self
                            .store
                            .leases()
                            .bucket_of(chunk.min_timestamp().unwrap_or_default());
                        OpenState {
                            chunk,
                            bucket,
                            revision: kv.mod_revision(),
                        }
                    }
                    None => OpenState {
                        chunk: Chunk::new(),
                        bucket: 0,
                        revision: 0,
                    },
                };
                self.open.insert(uuid.clone(), open_state);
                let registry = responses.get(3 * i + 1..3 * i + 3).unwrap_or_default();
                self.records.insert(
                    uuid.clone(),
                    StoredRegistry::from_responses(&keys, uuid, registry)?,
                );
            }
        }
        Ok(())
    }
}
