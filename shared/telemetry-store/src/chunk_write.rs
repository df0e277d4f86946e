//! The write core both write paths share: a GPU's samples, which of them are still within
//! retention and the retention bucket of each, and the put of a chunk on its bucket's lease, either
//! sealed under its immutable time-keyed key or as the GPU's open chunk. The collector's fenced
//! path (`writer`) and the idempotent path (`idempotent`) differ only in which chunks they build
//! from the live samples and how the puts reach etcd.

use std::collections::BTreeMap;

use etcd_client::{PutOptions, TxnOp};
use telemetry_model::{GpuInfo, GpuUuid, MetricName, SampleBatch, TimestampMicros};

use crate::chunk::Chunk;
use crate::error::StoreError;
use crate::keys::ChunkTag;
use crate::open_chunk::{self, Applied};
use crate::TelemetryStore;

/// The samples of one GPU gathered from one or more batches.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSamples {
    pub info: GpuInfo,
    pub samples: Vec<(MetricName, TimestampMicros, f64)>,
}

impl GpuSamples {
    /// The samples, borrowed, as [`admitted`] takes them.
    pub(crate) fn rows(
        &self,
    ) -> impl ExactSizeIterator<Item = (&MetricName, TimestampMicros, f64)> {
        self.samples
            .iter()
            .map(|(metric, timestamp, value)| (metric, *timestamp, *value))
    }
}

/// Groups the samples of `batches` by GPU (the last metadata seen for a GPU wins), as owned
/// samples for the idempotent path and callers outside the store.
pub fn group_by_gpu<'a>(
    batches: impl IntoIterator<Item = &'a SampleBatch>,
) -> BTreeMap<GpuUuid, GpuSamples> {
    group_where(batches.into_iter().map(|batch| (0, batch)), |_, _| true)
        .into_iter()
        .map(|(uuid, rows)| {
            let samples = rows
                .samples
                .into_iter()
                .map(|(metric, timestamp, value)| (metric.clone(), timestamp, value))
                .collect();
            let info = rows.info.clone();
            (uuid.clone(), GpuSamples { info, samples })
        })
        .collect()
}

/// The samples of one GPU gathered from one or more batches, borrowed from them: the collector
/// groups every delivery, and a metric name copied per sample would cost an allocation each.
#[derive(Debug)]
pub(crate) struct GpuRows<'a> {
    pub info: &'a GpuInfo,
    pub samples: Vec<(&'a MetricName, TimestampMicros, f64)>,
}

/// Groups the samples of the messages `(offset, batch)` by GPU in batch and row order (the last
/// metadata seen for a GPU wins), leaving out each GPU of a message for which `keep(offset,
/// gpu)` is false (its samples of that message are stored already). A batch is already keyed by
/// GPU (its rows index its GPU table), so each GPU of a batch costs one lookup, not one per
/// sample.
pub(crate) fn group_where<'a>(
    messages: impl IntoIterator<Item = (u64, &'a SampleBatch)>,
    mut keep: impl FnMut(u64, &GpuInfo) -> bool,
) -> BTreeMap<&'a GpuUuid, GpuRows<'a>> {
    // GPUs in first-seen order, and where each UUID's rows are: the UUID is looked up once per
    // GPU of a batch, and each row goes straight to its GPU's rows.
    let mut position: BTreeMap<&'a GpuUuid, usize> = BTreeMap::new();
    let mut grouped: Vec<GpuRows<'a>> = Vec::new();
    let mut slots: Vec<Option<Option<usize>>> = Vec::new();
    for (offset, batch) in messages {
        // Per GPU of the batch, where its samples go (`None`: left out), decided at its first
        // row: a GPU listed without rows neither appears nor changes metadata.
        slots.clear();
        slots.resize(batch.gpus.len(), None);
        for row in &batch.rows {
            let slot = slots[row.gpu as usize].get_or_insert_with(|| {
                let info = &batch.gpus[row.gpu as usize];
                if !keep(offset, info) {
                    return None;
                }
                let at = *position.entry(&info.uuid).or_insert_with(|| {
                    grouped.push(GpuRows {
                        info,
                        samples: Vec::new(),
                    });
                    grouped.len() - 1
                });
                grouped[at].info = info;
                Some(at)
            });
            let Some(at) = *slot else {
                continue;
            };
            grouped[at].samples.push((
                &batch.metrics[row.metric as usize],
                row.timestamp,
                row.value,
            ));
        }
    }
    let mut grouped: Vec<Option<GpuRows<'a>>> = grouped.into_iter().map(Some).collect();
    position
        .into_iter()
        .map(|(uuid, at)| (uuid, grouped[at].take().expect("one position per GPU")))
        .collect()
}

/// A sample still within retention, with the start of its retention bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LiveSample<'a> {
    pub bucket: i64,
    pub metric: &'a MetricName,
    pub timestamp: TimestampMicros,
    pub value: f64,
}

impl<'a> LiveSample<'a> {
    /// The sample as the registry record folds it in.
    pub fn observed(&self) -> (&'a MetricName, TimestampMicros, f64) {
        (self.metric, self.timestamp, self.value)
    }
}

/// What of a GPU's samples may be written: the samples in their order, each with its retention
/// bucket, and how many were left out and why.
#[derive(Debug)]
pub(crate) struct Admitted<'a> {
    pub live: Vec<LiveSample<'a>>,
    /// Already past retention: they would expire on arrival.
    pub expired: usize,
    /// Stamped further ahead of the clock than the store's future bound: a clock ran ahead, and
    /// stored they would keep their retention lease (and the GPU's last sighting) that long.
    pub future: usize,
}

/// The samples of one GPU that may be written (within retention, not beyond the future bound),
/// and how many were left out. Both are judged once, against the clock, for the chunks and the
/// registry alike, so both write paths apply the same bounds.
pub(crate) fn admitted<'a>(
    store: &TelemetryStore,
    samples: impl ExactSizeIterator<Item = (&'a MetricName, TimestampMicros, f64)>,
) -> Admitted<'a> {
    let leases = store.leases();
    let now = TimestampMicros::now();
    let max_future = store.config().max_future;
    let mut admitted = Admitted {
        live: Vec::with_capacity(samples.len()),
        expired: 0,
        future: 0,
    };
    for (metric, timestamp, value) in samples {
        let bucket = leases.bucket_of(timestamp.0);
        if timestamp.is_beyond(now, max_future) {
            admitted.future += 1;
        } else if leases.is_expired(bucket, now.0) {
            admitted.expired += 1;
        } else {
            admitted.live.push(LiveSample {
                bucket,
                metric,
                timestamp,
                value,
            });
        }
    }
    admitted
}

/// A put on a retention lease, and what it adds to a request.
#[derive(Debug)]
pub(crate) struct LeasedPut {
    pub op: TxnOp,
    /// Bytes of the key and the value.
    pub request_bytes: usize,
    /// Bytes of the value alone.
    pub value_bytes: usize,
}

impl LeasedPut {
    pub fn new(key: String, value: Vec<u8>, lease: i64) -> Self {
        LeasedPut {
            request_bytes: key.len() + value.len(),
            value_bytes: value.len(),
            op: TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease))),
        }
    }
}

impl TelemetryStore {
    /// The put that seals `chunk` under the immutable key its time range and `tag` name.
    pub(crate) async fn seal(
        &self,
        uuid: &GpuUuid,
        chunk: &mut Chunk,
        tag: ChunkTag<'_>,
    ) -> Result<LeasedPut, StoreError> {
        let key = self.keys().sealed_chunk(
            uuid,
            chunk.min_timestamp().unwrap_or_default(),
            chunk.max_timestamp().unwrap_or_default(),
            tag,
        );
        let value = chunk.encode_reusing_plans();
        self.chunk_put(key, chunk, value).await
    }

    /// The put that rewrites `uuid`'s open chunk, marked with the last message it holds all the
    /// GPU's samples of.
    pub(crate) async fn put_open(
        &self,
        uuid: &GpuUuid,
        chunk: &mut Chunk,
        applied: Option<Applied>,
    ) -> Result<LeasedPut, StoreError> {
        let value = open_chunk::encode(chunk, applied);
        self.chunk_put(self.keys().open_chunk(uuid), chunk, value)
            .await
    }

    /// `value` (`chunk`, encoded) under `key`, on the lease of the bucket of the chunk's first
    /// sample: the bucket of all of them, as a chunk never spans two.
    async fn chunk_put(
        &self,
        key: String,
        chunk: &Chunk,
        value: Vec<u8>,
    ) -> Result<LeasedPut, StoreError> {
        let lease = self
            .leases()
            .lease_for(chunk.min_timestamp().unwrap_or_default())
            .await?;
        Ok(LeasedPut::new(key, value, lease))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_keeps_sample_order_and_the_last_metadata() {
        let metric = |m: &str| MetricName::parse(m).unwrap();
        let (util, temp) = (
            metric("DCGM_FI_DEV_GPU_UTIL"),
            metric("DCGM_FI_DEV_GPU_TEMP"),
        );
        let a = GpuInfo::new(GpuUuid::parse("GPU-a").unwrap());
        let b = GpuInfo::new(GpuUuid::parse("GPU-b").unwrap());
        let mut a_moved = a.clone();
        a_moved.hostname = Some("host-2".into());
        let unused = GpuInfo::new(GpuUuid::parse("GPU-c").unwrap());

        let mut first = SampleBatch::builder();
        first
            .push(&a, &util, TimestampMicros(3), 1.0)
            .push(&b, &util, TimestampMicros(1), 2.0)
            .push(&a, &temp, TimestampMicros(2), 3.0);
        let mut second = SampleBatch::builder();
        second.push(&b, &temp, TimestampMicros(5), 4.0).push(
            &a_moved,
            &util,
            TimestampMicros(4),
            5.0,
        );
        let mut with_unused = second.build();
        // A GPU listed without rows neither appears nor changes metadata.
        with_unused.gpus.push(unused);
        let grouped = group_by_gpu([&first.build(), &with_unused]);

        assert_eq!(
            grouped.keys().map(GpuUuid::as_str).collect::<Vec<_>>(),
            ["GPU-a", "GPU-b"]
        );
        let a_samples = &grouped[&a.uuid];
        assert_eq!(a_samples.info, a_moved, "the last metadata seen wins");
        assert_eq!(
            a_samples.samples,
            [
                (util.clone(), TimestampMicros(3), 1.0),
                (temp.clone(), TimestampMicros(2), 3.0),
                (util.clone(), TimestampMicros(4), 5.0),
            ]
        );
        assert_eq!(
            grouped[&b.uuid].samples,
            [
                (util, TimestampMicros(1), 2.0),
                (temp, TimestampMicros(5), 4.0)
            ]
        );
        assert_eq!(grouped[&b.uuid].info, b);
    }

    #[test]
    fn grouping_leaves_out_what_keep_refuses_per_message_and_gpu() {
        let util = MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap();
        let a = GpuInfo::new(GpuUuid::parse("GPU-a").unwrap());
        let b = GpuInfo::new(GpuUuid::parse("GPU-b").unwrap());
        let mut a_moved = a.clone();
        a_moved.hostname = Some("host-2".into());
        let mut first = SampleBatch::builder();
        first
            .push(&a, &util, TimestampMicros(1), 1.0)
            .push(&b, &util, TimestampMicros(2), 2.0);
        let mut second = SampleBatch::builder();
        second
            .push(&b, &util, TimestampMicros(3), 3.0)
            .push(&a_moved, &util, TimestampMicros(4), 4.0)
            .push(&b, &util, TimestampMicros(5), 5.0);
        let (first, second) = (first.build(), second.build());
        let mut asked = Vec::new();
        let grouped = group_where([(7, &first), (8, &second)], |offset, info| {
            asked.push((offset, info.uuid.as_str().to_string()));
            !(offset == 8 && info.uuid == a.uuid)
        });
        // Asked once per GPU of each message, at its first row.
        assert_eq!(
            asked,
            [
                (7, "GPU-a".to_string()),
                (7, "GPU-b".to_string()),
                (8, "GPU-b".to_string()),
                (8, "GPU-a".to_string())
            ]
        );
        let samples = |uuid: &GpuUuid| -> Vec<(i64, f64)> {
            grouped[uuid]
                .samples
                .iter()
                .map(|(_, ts, v)| (ts.0, *v))
                .collect()
        };
        assert_eq!(samples(&a.uuid), [(1, 1.0)]);
        assert_eq!(
            grouped[&a.uuid].info, &a,
            "a refused message changes no metadata"
        );
        assert_eq!(samples(&b.uuid), [(2, 2.0), (3, 3.0), (5, 5.0)]);
    }
}
