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
mod registry;
mod retention;
mod writer;

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use etcd_queue::{MAX_TXN_BYTES, MAX_TXN_OPS};
use telemetry_model::GpuUuid;

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
