//! The telemetry store in etcd: a registry of GPUs and compressed, time-bucketed chunks of samples
//! per GPU, expiring on their own after a retention period. This crate is the only code that knows
//! the store's key layout ([`keys`]). A GPU's registry record is kept as two keys, a rarely
//! rewritten identity and a small value rewritten on every commit; reads merge them.
//!
//! Writes come in two forms, built on one write core (which samples are live, their retention
//! bucket and lease, sealing and putting chunks). The collector's normal path ([`StoreWriter`])
//! turns a delivery's samples into a fence for the queue commit: samples, offset and message
//! deletion land in one transaction. Batches too large for one transaction, and events posted
//! over HTTP, go through [`TelemetryStore::write_idempotent`]: immutable chunks under keys derived
//! from the message or event id, so a replay rewrites the same keys with the same bytes.
//!
//! This file is the façade: the store's handle and configuration. The rest lives by job: `chunk`
//! (the codec), `chunk_write` (the write core), `writer` and `idempotent` (the two write paths),
//! `record` and `registry` (the registry model and its persistence), `retention` (bucket leases),
//! `reader` and `aggregate` (queries, with `metric_slots` numbering a read's metrics), `footprint` (what the store holds).

mod aggregate;
mod chunk;
mod chunk_write;
mod error;
mod footprint;
mod idempotent;
pub mod keys;
mod metric_slots;
mod open_chunk;
mod reader;
mod record;
mod registry;
mod retention;
mod series_page;
mod writer;

use std::time::Duration;

use etcd_client::{Client, Txn, TxnResponse};
use etcd_queue::{RangePages, RangeRead};

pub use aggregate::{Aggregation, Aggregator};
pub use chunk::{Chunk, ChunkError, ChunkSample};
pub use chunk_write::{group_by_gpu, GpuSamples};
pub use error::StoreError;
pub use footprint::StoreFootprint;
pub use idempotent::WriteStats;
pub use keys::{ChunkTag, GpuKey, StoreKeys};
pub use metric_slots::MetricSlots;
pub use open_chunk::Applied;
pub use reader::{Cursor, Order, SamplePage, SampleQuery, StoredSample, WindowStats};
pub use record::{GpuRecord, LatestValue};
pub use registry::GpuPages;
pub use retention::RetentionLeases;
pub use series_page::{MetricColumn, SeriesPage};
pub use writer::{FenceBudget, PreparedWrite, StoreWriter, COMPARES_PER_GPU, OPS_PER_GPU};

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
    /// How far ahead of this host's clock a sample may be stamped (`TELEMETRY_MAX_FUTURE`);
    /// samples stamped later are rejected and counted, never stored.
    pub max_future: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            prefix: "/gpu-telemetry".into(),
            retention: Duration::from_secs(24 * 3600),
            bucket: Duration::from_secs(3600),
            chunk_max_samples: 1200,
            max_future: telemetry_model::DEFAULT_MAX_FUTURE,
        }
    }
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

    /// A paged read of `range`. Store reads are not retried (a failure surfaces at once, like
    /// that of a transaction).
    pub(crate) fn pages(&self, operation: &'static str, range: RangeRead) -> RangePages {
        RangePages::new(self.client.clone(), operation, range, Duration::ZERO)
    }

    /// Sends one transaction; `operation` names it in the error.
    pub(crate) async fn txn(
        &self,
        operation: &'static str,
        txn: Txn,
    ) -> Result<TxnResponse, StoreError> {
        self.client
            .clone()
            .txn(txn)
            .await
            .map_err(StoreError::etcd(operation))
    }
}
