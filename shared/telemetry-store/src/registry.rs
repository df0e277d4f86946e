//! Registry persistence: how a GPU's record ([`GpuRecord`]) is kept in its two etcd keys, read
//! back (one GPU in one transaction, every GPU page by page in UUID order), and brought up to date, either
//! inside the collector's fence ([`StoredRegistry::write_for`]) or by a compare-and-swap of its
//! own on the idempotent path.

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use etcd_queue::kv::first_kv;
use etcd_queue::range::prefix_end;
use etcd_queue::{RangePages, RangeRead};
use telemetry_model::{GpuInfo, GpuUuid, MetricName};

use crate::chunk_write::{LeasedPut, LiveSample};
use crate::error::StoreError;
use crate::keys::{GpuKey, StoreKeys};
use crate::record::{GpuIdentity, GpuRecord};
use crate::retention::RetentionLeases;
use crate::TelemetryStore;

impl TelemetryStore {
    /// Every GPU in the registry, in UUID order, collected. Memory grows with the fleet: servers
    /// walk [`TelemetryStore::gpu_pages`] instead.
    pub async fn list_gpus(&self) -> Result<Vec<GpuRecord>, StoreError> {
        let mut pages = self.gpu_pages(None);
        let mut records = Vec::new();
        while let Some(page) = pages.next_page().await? {
            records.extend(page);
        }
        Ok(records)
    }

    /// The registry page by page, in UUID order, starting after the GPU `after` (none: from the
    /// first): one consistent snapshot, each page a bounded etcd response.
    pub fn gpu_pages(&self, after: Option<&GpuUuid>) -> GpuPages {
        let range = match after {
            None => RangeRead::prefix(self.keys().gpus_prefix(), REGISTRY_VALUE_BYTES),
            Some(uuid) => {
                // Just past the identity of `after`: the GPUs whose UUID extends it come next.
                let mut start = self.keys().gpu(uuid).into_bytes();
                start.push(0);
                RangeRead::between(
                    start,
                    prefix_end(self.keys().gpus_prefix().as_bytes()),
                    REGISTRY_VALUE_BYTES,
                )
            }
        };
        GpuPages {
            store: self.clone(),
            pages: self.pages("list GPUs", range),
            pending: None,
            resolved: BTreeSet::new(),
        }
    }

    /// One GPU's seen value at `revision`.
    async fn seen_at(&self, uuid: &str, revision: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.keys().gpu_seen_of(uuid);
        let mut client = self.client().clone();
        let mut response = client
            .get(key, Some(GetOptions::new().with_revision(revision)))
            .await
            .map_err(StoreError::etcd("list GPUs"))?;
        Ok(response
            .take_kvs()
            .into_iter()
            .next()
            .map(|kv| kv.into_key_value().1))
    }

    /// One GPU's record, if it has telemetry (one transaction reading both registry keys).
    pub async fn gpu(&self, uuid: &GpuUuid) -> Result<Option<GpuRecord>, StoreError> {
        Ok(self.read_registry(uuid).await?.record)
    }

    /// Both registry keys of one GPU, read in one transaction.
    pub(crate) async fn read_registry(&self, uuid: &GpuUuid) -> Result<StoredRegistry, StoreError> {
        let response = self
            .txn("read GPU", Txn::new().and_then(self.registry_gets(uuid)))
            .await?;
        StoredRegistry::from_responses(self.keys(), uuid, &response.op_responses())
    }

    /// The two reads of a GPU's registry keys, identity first.
    pub(crate) fn registry_gets(&self, uuid: &GpuUuid) -> [TxnOp; 2] {
        [
            TxnOp::get(self.keys().gpu(uuid), None),
            TxnOp::get(self.keys().gpu_seen(uuid), None),
        ]
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

    /// Read-merge-write of one GPU's registry keys with compare-and-swap on both (retried on a
    /// race), folding in the `live` samples of a batch described by `info`. The identity is
    /// rewritten only when it changes and the seen value only when the record does, so a replay
    /// writes nothing.
    pub(crate) async fn merge_record(
        &self,
        uuid: &GpuUuid,
        info: &GpuInfo,
        live: &[LiveSample<'_>],
    ) -> Result<(), StoreError> {
        let Some(first) = live.first() else {
            return Ok(());
        };
        loop {
            let stored = self.read_registry(uuid).await?;
            let mut record = stored
                .record
                .clone()
                .unwrap_or_else(|| GpuRecord::new(info.clone(), first.timestamp));
            record.observe_batch(info, live.iter().map(LiveSample::observed));
            let Some(write) = stored
                .write_for(self.keys(), self.leases(), uuid, &record)
                .await?
            else {
                return Ok(());
            };
            let txn = Txn::new()
                .when([stored.compare(self.keys(), uuid)])
                .and_then(write.ops);
            if self.txn("write GPU", txn).await?.succeeded() {
                return Ok(());
            }
        }
    }
}

/// What a page of the registry allows for one value: an identity is about 1 KB on the real data
/// (metadata, labels, ten metric names), a seen value under 100 bytes. Pages shrink when larger
/// values are met.
pub(crate) const REGISTRY_VALUE_BYTES: usize = 4096;

/// The registry read page by page ([`TelemetryStore::gpu_pages`]).
///
/// A GPU's two keys are usually adjacent, but a UUID that extends another (`GPU-1-2` after
/// `GPU-1`) sorts between that one's identity and its seen key. An identity whose seen key does
/// not follow it is completed by reading the seen key alone, at the pages' revision; the seen key
/// is then skipped when the range reaches it. A call to [`GpuPages::next_page`] must not be
/// dropped before it completes (it may be part-way through a page): bound it with retries, not
/// with a timeout around it, except to give up on the whole read.
pub struct GpuPages {
    store: TelemetryStore,
    pages: RangePages,
    /// An identity read whose seen key may come next: (UUID, identity key-value).
    pending: Option<(String, KeyValue)>,
    /// GPUs completed before the range reached their seen key.
    resolved: BTreeSet<String>,
}

impl GpuPages {
    /// Retries a page's transient etcd failures for `budget` (by default a failure surfaces at
    /// once): for a reader that cannot start over, such as an answer already being sent.
    pub fn retrying_for(mut self, budget: Duration) -> Self {
        self.pages = self.pages.retrying_for(budget);
        self
    }

    /// The records of the next page, in UUID order; `None` at the end of the registry. A page may
    /// be empty (its keys complete a record of the next one).
    pub async fn next_page(&mut self) -> Result<Option<Vec<GpuRecord>>, StoreError> {
        let Some(kvs) = self.pages.next_page().await? else {
            return Ok(match self.pending.take() {
                Some((uuid, identity)) => Some(vec![self.complete(&uuid, &identity).await?]),
                None => None,
            });
        };
        let mut records = Vec::with_capacity(kvs.len() / 2 + 1);
        for kv in kvs {
            match self.store.keys().parse_gpu_key(kv.key()) {
                Some((uuid, GpuKey::Identity)) => {
                    let uuid = uuid.to_string();
                    if let Some((before, identity)) = self.pending.take() {
                        records.push(self.complete(&before, &identity).await?);
                        self.resolved.insert(before);
                    }
                    self.pending = Some((uuid, kv));
                }
                Some((uuid, GpuKey::Seen)) => match self.pending.take() {
                    Some((pending, identity)) if pending == uuid => {
                        records.push(record_from(&identity, Some(kv.value()))?);
                    }
                    other => {
                        self.pending = other;
                        // Completed earlier, or a seen value without identity: nothing to add.
                        self.resolved.remove(uuid);
                    }
                },
                None => {}
            }
        }
        Ok(Some(records))
    }

    /// The record of `identity` with its seen value read alone.
    async fn complete(&self, uuid: &str, identity: &KeyValue) -> Result<GpuRecord, StoreError> {
        let seen = self.store.seen_at(uuid, self.pages.revision()).await?;
        record_from(identity, seen.as_deref())
    }
}

/// Merges a GPU's identity key-value and seen value into its record.
fn record_from(identity: &KeyValue, seen: Option<&[u8]>) -> Result<GpuRecord, StoreError> {
    let key = || String::from_utf8_lossy(identity.key()).into_owned();
    let parsed = parse_identity(identity.value(), key)?;
    GpuRecord::from_parts(parsed, seen).map_err(|reason| StoreError::CorruptRecord {
        key: format!("{}/seen", key()),
        reason,
    })
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

impl RegistryWrite {
    fn add(&mut self, put: LeasedPut) {
        self.bytes += put.request_bytes;
        self.ops.push(put.op);
    }
}

impl StoredRegistry {
    /// What is stored once `write` of `record` has landed at `revision` (no write: the keys
    /// already held `record`).
    pub fn committed(&mut self, record: GpuRecord, write: Option<RegistryWrite>, revision: i64) {
        self.record = Some(record);
        let Some(write) = write else {
            return;
        };
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
        let first = |i: usize| first_kv(responses.get(i));
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

    /// The compare that holds while both keys are as read. Every registry write puts the seen
    /// key (the identity only together with it, see [`StoredRegistry::write_for`]), so the seen
    /// key's revision versions the whole record and one compare fences both keys.
    pub fn compare(&self, keys: &StoreKeys, uuid: &GpuUuid) -> Compare {
        Compare::mod_revision(keys.gpu_seen(uuid), CompareOp::Equal, self.seen_revision)
    }

    /// The puts that store `record` over what was read: the identity when it differs from the
    /// stored one (new metadata, metric or first sighting, or a later retention bucket), the seen
    /// value when its bytes differ, the bucket or metric list it depends on changed, or the
    /// identity is written (so that the seen key's revision changes with every write, which is
    /// what [`StoredRegistry::compare`] relies on). Both go on
    /// the lease of the bucket of `last_seen`, which the identity records, so the two keys always
    /// share a lease and expire together. `None` when nothing changed.
    pub async fn write_for(
        &self,
        keys: &StoreKeys,
        leases: &RetentionLeases,
        uuid: &GpuUuid,
        record: &GpuRecord,
    ) -> Result<Option<RegistryWrite>, StoreError> {
        let bucket = leases.bucket_of(record.last_seen.0);
        let identity_changed = !self
            .identity
            .as_ref()
            .is_some_and(|stored| record.has_identity(stored, bucket));
        let seen = record.encode_seen();
        let seen_changed = identity_changed
            || self.seen.as_ref() != Some(&seen)
            || self.identity.as_ref().is_none_or(|stored| {
                stored.bucket != bucket || !stored.metrics.iter().eq(record.metrics())
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
            let identity = record.identity(bucket);
            let json = serde_json::to_vec(&identity).expect("identity serializes");
            write.add(LeasedPut::new(keys.gpu(uuid), json, lease));
            write.identity = Some(identity);
        }
        if seen_changed {
            write.add(LeasedPut::new(keys.gpu_seen(uuid), seen.clone(), lease));
            write.seen = Some(seen);
        }
        Ok(Some(write))
    }
}
