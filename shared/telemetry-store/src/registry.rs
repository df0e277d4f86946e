//! Registry persistence: how a GPU's record ([`GpuRecord`]) is kept in its two etcd keys, read
//! back (one GPU in one transaction, every GPU in one range read), and brought up to date, either
//! inside the collector's fence ([`StoredRegistry::write_for`]) or by a compare-and-swap of its
//! own on the idempotent path.

use std::collections::BTreeMap;

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use etcd_queue::kv::first_kv;
use telemetry_model::{GpuInfo, GpuUuid, MetricName};

use crate::chunk_write::{LeasedPut, LiveSample};
use crate::error::StoreError;
use crate::keys::{GpuKey, StoreKeys};
use crate::record::{GpuIdentity, GpuRecord};
use crate::retention::RetentionLeases;
use crate::TelemetryStore;

impl TelemetryStore {
    /// Every GPU in the registry (one range read over both registry keys), in UUID order.
    pub async fn list_gpus(&self) -> Result<Vec<GpuRecord>, StoreError> {
        let mut client = self.client().clone();
        let response = client
            .get(
                self.keys().gpus_prefix(),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(StoreError::etcd("list GPUs"))?;
        self.records_from(response.kvs())
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

    /// Merges the registry keys of a range read into records, in UUID order. A seen value without
    /// its identity record says nothing on its own and is skipped.
    fn records_from(&self, kvs: &[KeyValue]) -> Result<Vec<GpuRecord>, StoreError> {
        let mut parts: BTreeMap<&str, (Option<&KeyValue>, Option<&[u8]>)> = BTreeMap::new();
        for kv in kvs {
            match self.keys().parse_gpu_key(kv.key()) {
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
                .when(stored.compares(self.keys(), uuid))
                .and_then(write.ops);
            if self.txn("write GPU", txn).await?.succeeded() {
                return Ok(());
            }
        }
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

impl RegistryWrite {
    fn add(&mut self, put: LeasedPut) {
        self.bytes += put.request_bytes;
        self.ops.push(put.op);
    }
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
