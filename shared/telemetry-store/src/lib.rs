//! The telemetry store in etcd: a registry of GPUs and compressed, time-bucketed chunks of samples
//! per GPU, expiring on their own after a retention period. This crate is the only code that knows
//! the store's key layout ([`keys`]). A GPU's registry record is kept as two keys, a rarely
//! rewritten identity ([`GpuIdentity`]) and a small value rewritten on every commit
//! ([`GpuRecord::encode_seen`]); reads merge them.
//!
//! Writes come in two forms. The collector's normal path ([`StoreWriter`]) turns a delivery's
//! samples into a fence for the queue commit: samples, offset and message deletion land in one
//! transaction. Batches too large for one transaction, and events posted over HTTP, go through
//! [`TelemetryStore::write_idempotent`]: immutable chunks under keys derived from the message or
//! event id, so a replay rewrites the same keys with the same bytes.

mod aggregate;
mod chunk;
mod error;
pub mod keys;
mod reader;
mod record;
mod retention;
mod writer;

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use etcd_queue::{MAX_TXN_BYTES, MAX_TXN_OPS};
use telemetry_model::{GpuUuid, MetricName};

pub use aggregate::{aggregate, Aggregation};
pub use chunk::*;
pub use error::StoreError;
pub use keys::{GpuKey, StoreKeys};
pub use reader::{Cursor, Order, SamplePage, SampleQuery, StoredSample};
pub use record::{GpuIdentity, GpuRecord, LatestValue};
pub use retention::RetentionLeases;
pub use writer::{
    group_by_gpu, id_hash, GpuSamples, PreparedWrite, StoreWriter, COMPARES_PER_GPU, OPS_PER_GPU,
};

/// How the store keeps data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Root of every key (`TELEMETRY_PREFIX`).
    pub prefix: String,
    /// How long samples are kept (`STORE_RETENTION`).
    pub retention: Duration,
    /// Retention bucket: data expires bucket by bucket; a chunk never spans two buckets.
    pub bucket: Duration,
    /// Samples at which an open chunk is sealed.
    pub chunk_max_samples: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            prefix: "/gpu-telemetry".into(),
            retention: Duration::from_secs(24 * 3600),
            bucket: Duration::from_secs(3600),
            chunk_max_samples: 1200,
        }
    }
}

/// Counts from writing samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub samples: usize,
    pub expired: usize,
    pub chunk_bytes: usize,
}

/// Byte accounting of what the store holds, for the bytes-per-sample figure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreFootprint {
    pub chunks: u64,
    pub samples: u64,
    pub chunk_value_bytes: u64,
    pub chunk_key_bytes: u64,
    /// Both registry keys of every GPU: identity records and seen values.
    pub registry_value_bytes: u64,
}

/// A handle on the store. Cheap to clone.
#[derive(Clone)]
pub struct TelemetryStore {
    client: Client,
    keys: StoreKeys,
    config: StoreConfig,
    leases: RetentionLeases,
}

impl TelemetryStore {
    pub fn new(client: Client, config: StoreConfig) -> Self {
        let keys = StoreKeys::new(&config.prefix);
        let leases = RetentionLeases::new(
            client.clone(),
            keys.clone(),
            config.retention,
            config.bucket,
        );
        TelemetryStore {
            client,
            keys,
            config,
            leases,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn keys(&self) -> &StoreKeys {
        &self.keys
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn leases(&self) -> &RetentionLeases {
        &self.leases
    }

    /// Every GPU in the registry (one range read over both registry keys), in UUID order.
    pub async fn list_gpus(&self) -> Result<Vec<GpuRecord>, StoreError> {
        let mut client = self.client.clone();
        let response = client
            .get(
                self.keys.gpus_prefix(),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(|source| StoreError::Etcd {
                operation: "list GPUs",
                source,
            })?;
        self.records_from(response.kvs())
    }

    /// One GPU's record, if it has telemetry (one transaction reading both registry keys).
    pub async fn gpu(&self, uuid: &GpuUuid) -> Result<Option<GpuRecord>, StoreError> {
        Ok(self.read_registry(uuid).await?.record)
    }

    /// Both registry keys of one GPU, read in one transaction.
    async fn read_registry(&self, uuid: &GpuUuid) -> Result<StoredRegistry, StoreError> {
        let mut client = self.client.clone();
        let response = client
            .txn(Txn::new().and_then(self.registry_gets(uuid)))
            .await
            .map_err(|source| StoreError::Etcd {
                operation: "read GPU",
                source,
            })?;
        StoredRegistry::from_responses(&self.keys, uuid, &response.op_responses())
    }

    /// The two reads of a GPU's registry keys, identity first.
    fn registry_gets(&self, uuid: &GpuUuid) -> [TxnOp; 2] {
        [
            TxnOp::get(self.keys.gpu(uuid), None),
            TxnOp::get(self.keys.gpu_seen(uuid), None),
        ]
    }

    /// Merges the registry keys of a range read into records, in UUID order. A seen value without
    /// its identity record says nothing on its own and is skipped.
    fn records_from(&self, kvs: &[KeyValue]) -> Result<Vec<GpuRecord>, StoreError> {
        let mut parts: BTreeMap<&str, (Option<&KeyValue>, Option<&[u8]>)> = BTreeMap::new();
        for kv in kvs {
            match self.keys.parse_gpu_key(kv.key()) {
                Some((uuid, GpuKey::Identity)) => parts.entry(uuid).or_default().0 = Some(kv),
                Some((uuid, GpuKey::Seen)) => parts.entry(uuid).or_default().1 = Some(kv.value()),
                None => {}
            }
        }
        parts
            .into_values()
            .filter_map(|(identity, seen)| Some((identity?, seen)))
            .map(|(identity, seen)| {
                let key = || String::from_utf8_lossy(identity.key()).into_owned();
                let identity = parse_identity(identity.value(), key)?;
                GpuRecord::from_parts(identity, seen).map_err(|reason| StoreError::CorruptRecord {
                    key: format!("{}/seen", key()),
                    reason,
                })
            })
            .collect()
    }

    /// Metric names seen on any GPU, sorted.
    pub async fn metric_names(&self) -> Result<Vec<MetricName>, StoreError> {
        let mut names: Vec<MetricName> = self
            .list_gpus()
            .await?
            .into_iter()
            .flat_map(|r| r.latest.into_keys())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Stores `gpus` as immutable chunks tagged `tag` (derived from a message or event id) and
    /// merges the registry records. Replaying the same tag and samples writes the same keys and
    /// bytes, so it cannot duplicate samples.
    pub async fn write_idempotent(
        &self,
        tag: &str,
        gpus: &BTreeMap<GpuUuid, GpuSamples>,
    ) -> Result<WriteStats, StoreError> {
        let mut stats = WriteStats::default();
        let mut puts: Vec<(TxnOp, usize)> = Vec::new();
        for (uuid, batch) in gpus {
            let mut by_bucket: BTreeMap<i64, Chunk> = BTreeMap::new();
            for (metric, timestamp, value) in &batch.samples {
                if self.leases.is_expired(timestamp.0) {
                    stats.expired += 1;
                    continue;
                }
                by_bucket
                    .entry(self.leases.bucket_of(timestamp.0))
                    .or_default()
                    .push(metric.as_str(), timestamp.0, *value);
                stats.samples += 1;
            }
            for chunk in by_bucket.values() {
                let (start, end) = (
                    chunk.min_timestamp().unwrap_or_default(),
                    chunk.max_timestamp().unwrap_or_default(),
                );
                let key = self.keys.sealed_chunk(uuid, start, end, tag);
                let bytes = chunk.encode();
                stats.chunk_bytes += bytes.len();
                let lease = self.leases.lease_for(start).await?;
                let size = bytes.len() + key.len();
                puts.push((
                    TxnOp::put(key, bytes, Some(PutOptions::new().with_lease(lease))),
                    size,
                ));
            }
        }
        let mut batch: Vec<TxnOp> = Vec::new();
        let mut batch_bytes = 0;
        for (op, size) in puts {
            if !batch.is_empty()
                && (batch.len() >= MAX_TXN_OPS || batch_bytes + size > MAX_TXN_BYTES)
            {
                self.apply(std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push(op);
        }
        if !batch.is_empty() {
            self.apply(batch).await?;
        }
        for (uuid, batch) in gpus {
            self.merge_record(uuid, batch).await?;
        }
        Ok(stats)
    }

    async fn apply(&self, ops: Vec<TxnOp>) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        client
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(|source| StoreError::Etcd {
                operation: "write chunks",
                source,
            })?;
        Ok(())
    }

    /// Read-merge-write of one GPU's registry keys with compare-and-swap on both (retried on a
    /// race). The identity is rewritten only when it changes and the seen value only when the
    /// record does, so a replay writes nothing.
    async fn merge_record(&self, uuid: &GpuUuid, batch: &GpuSamples) -> Result<(), StoreError> {
        let live: Vec<_> = batch
            .samples
            .iter()
            .filter(|(_, t, _)| !self.leases.is_expired(t.0))
            .collect();
        let Some(first) = live.first() else {
            return Ok(());
        };
        loop {
            let stored = self.read_registry(uuid).await?;
            let mut record = stored
                .record
                .clone()
                .unwrap_or_else(|| GpuRecord::new(batch.info.clone(), first.1));
            record.observe_batch(&batch.info, live.iter().map(|(m, t, v)| (m, *t, *v)));
            let Some(write) = stored
                .write_for(&self.keys, &self.leases, uuid, &record)
                .await?
            else {
                return Ok(());
            };
            let txn = Txn::new()
                .when(stored.compares(&self.keys, uuid))
                .and_then(write.ops);
            let response =
                self.client
                    .clone()
                    .txn(txn)
                    .await
                    .map_err(|source| StoreError::Etcd {
                        operation: "write GPU",
                        source,
                    })?;
            if response.succeeded() {
                return Ok(());
            }
        }
    }

    /// What the store holds: chunk and registry bytes and the number of samples in the chunks.
    pub async fn footprint(&self) -> Result<StoreFootprint, StoreError> {
        let mut client = self.client.clone();
        let txn = Txn::new().and_then([
            TxnOp::get(
                self.keys.chunks_prefix(),
                Some(GetOptions::new().with_prefix()),
            ),
            TxnOp::get(
                self.keys.gpus_prefix(),
                Some(GetOptions::new().with_prefix()),
            ),
        ]);
        let response = client.txn(txn).await.map_err(|source| StoreError::Etcd {
            operation: "measure store",
            source,
        })?;
        let mut footprint = StoreFootprint::default();
        let responses = response.op_responses();
        if let Some(TxnOpResponse::Get(get)) = responses.first() {
            for kv in get.kvs() {
                footprint.chunks += 1;
                footprint.chunk_value_bytes += kv.value().len() as u64;
                footprint.chunk_key_bytes += kv.key().len() as u64;
                let header =
                    read_chunk_header(kv.value()).map_err(|source| StoreError::CorruptChunk {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        source,
                    })?;
                footprint.samples += u64::from(header.samples);
            }
        }
        if let Some(TxnOpResponse::Get(get)) = responses.get(1) {
            footprint.registry_value_bytes =
                get.kvs().iter().map(|kv| kv.value().len() as u64).sum();
        }
        Ok(footprint)
    }
}

fn parse_identity(bytes: &[u8], key: impl FnOnce() -> String) -> Result<GpuIdentity, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::CorruptRecord {
        key: key(),
        reason: e.to_string(),
    })
}

/// A GPU's registry keys as read, with their revisions (0: absent).
#[derive(Debug, Clone, Default)]
pub(crate) struct StoredRegistry {
    /// The merged record (`None`: the GPU has no identity record).
    pub record: Option<GpuRecord>,
    /// The identity record as stored.
    pub identity: Option<GpuIdentity>,
    /// The seen value as stored.
    pub seen: Option<Vec<u8>>,
    pub identity_revision: i64,
    pub seen_revision: i64,
}

/// The puts that bring a GPU's registry keys to a record.
#[derive(Debug)]
pub(crate) struct RegistryWrite {
    pub ops: Vec<TxnOp>,
    /// Request bytes of the puts.
    pub bytes: usize,
    /// The identity written, if it changed.
    pub identity: Option<GpuIdentity>,
    /// The seen value written, if it changed.
    pub seen: Option<Vec<u8>>,
}

impl StoredRegistry {
    /// What is stored once `write` of `record` has landed at `revision`.
    pub fn committed(&mut self, record: GpuRecord, write: RegistryWrite, revision: i64) {
        self.record = Some(record);
        if let Some(identity) = write.identity {
            self.identity = Some(identity);
            self.identity_revision = revision;
        }
        if let Some(seen) = write.seen {
            self.seen = Some(seen);
            self.seen_revision = revision;
        }
    }

    /// Reads the responses of [`TelemetryStore::registry_gets`].
    pub fn from_responses(
        keys: &StoreKeys,
        uuid: &GpuUuid,
        responses: &[TxnOpResponse],
    ) -> Result<Self, StoreError> {
        let first = |i: usize| match responses.get(i) {
            Some(TxnOpResponse::Get(get)) => get.kvs().first(),
            _ => None,
        };
        let mut stored = StoredRegistry::default();
        let seen = first(1);
        if let Some(kv) = seen {
            stored.seen_revision = kv.mod_revision();
            stored.seen = Some(kv.value().to_vec());
        }
        if let Some(kv) = first(0) {
            let identity = parse_identity(kv.value(), || keys.gpu(uuid))?;
            stored.identity_revision = kv.mod_revision();
            let record = GpuRecord::from_parts(identity.clone(), seen.map(KeyValue::value))
                .map_err(|reason| StoreError::CorruptRecord {
                    key: keys.gpu_seen(uuid),
                    reason,
                })?;
            stored.identity = Some(identity);
            stored.record = Some(record);
        }
        Ok(stored)
    }

    /// Compares that hold while both keys are as read.
    pub fn compares(&self, keys: &StoreKeys, uuid: &GpuUuid) -> [Compare; 2] {
        [
            Compare::mod_revision(keys.gpu(uuid), CompareOp::Equal, self.identity_revision),
            Compare::mod_revision(keys.gpu_seen(uuid), CompareOp::Equal, self.seen_revision),
        ]
    }

    /// The puts that store `record` over what was read: the identity when it differs from the
    /// stored one (new metadata, metric or first sighting, or a later retention bucket), the seen
    /// value when its bytes differ or the bucket or metric list it depends on changed. Both go on
    /// the lease of the bucket of `last_seen`, which the identity records, so the two keys always
    /// share a lease and expire together. `None` when nothing changed.
    pub async fn write_for(
        &self,
        keys: &StoreKeys,
        leases: &RetentionLeases,
        uuid: &GpuUuid,
        record: &GpuRecord,
    ) -> Result<Option<RegistryWrite>, StoreError> {
        let identity = record.identity(leases.bucket_of(record.last_seen.0));
        let identity_changed = self.identity.as_ref() != Some(&identity);
        let seen = record.encode_seen();
        let seen_changed = self.seen.as_ref() != Some(&seen)
            || self.identity.as_ref().is_none_or(|stored| {
                stored.bucket != identity.bucket || stored.metrics != identity.metrics
            });
        if !identity_changed && !seen_changed {
            return Ok(None);
        }
        let lease = leases.lease_for(record.last_seen.0).await?;
        let mut write = RegistryWrite {
            ops: Vec::with_capacity(2),
            bytes: 0,
            identity: None,
            seen: None,
        };
        if identity_changed {
            let key = keys.gpu(uuid);
            let json = serde_json::to_vec(&identity).expect("identity serializes");
            write.bytes += key.len() + json.len();
            write.ops.push(TxnOp::put(
                key,
                json,
                Some(PutOptions::new().with_lease(lease)),
            ));
            write.identity = Some(identity);
        }
        if seen_changed {
            let key = keys.gpu_seen(uuid);
            write.bytes += key.len() + seen.len();
            write.ops.push(TxnOp::put(
                key,
                seen.clone(),
                Some(PutOptions::new().with_lease(lease)),
            ));
            write.seen = Some(seen);
        }
        Ok(Some(write))
    }
}
