//! One shard's rows waiting to be published: grouped into sample batches per queue partition
//! (at most `batch_size` samples and one payload limit per batch), and kept within what one etcd
//! transaction can carry, so the shard's next publish is always a single fenced transaction.
//!
//! Sizes are upper bounds computed as rows arrive, without encoding: the encoded events are never
//! larger than the estimate, so a full buffer always fits its transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use etcd_queue::Producer;
use telemetry_model::{CsvRow, SampleBatch, SampleBatchBuilder, TimestampMicros};

use crate::shard::{FENCE_BYTES, FENCE_OPS};

/// Limits every batch and transaction of a buffer respects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimits {
    /// Most samples in one batch (one CloudEvent).
    pub batch_size: usize,
    /// Most bytes of one event's JSON (the queue's payload limit).
    pub max_payload_bytes: usize,
    /// Bytes of an event's JSON besides its GPUs, metrics and rows (envelope, id, source).
    pub envelope_bytes: usize,
}

impl BufferLimits {
    /// Limits for events whose `source` attribute is `source`.
    pub fn new(batch_size: usize, max_payload_bytes: usize, source: &str) -> Self {
        BufferLimits {
            batch_size: batch_size.max(1),
            max_payload_bytes,
            // The fixed members, the 27-character time and a 32-character id take under 320 bytes.
            envelope_bytes: 320 + source.len(),
        }
    }
}

/// The batch being filled for one queue partition.
#[derive(Debug)]
struct OpenBatch {
    builder: SampleBatchBuilder,
    bytes: usize,
    first_ts: i64,
}

/// What adding one row costs.
#[derive(Debug, Clone, Copy)]
struct RowCost {
    /// The partition's open batch is full and is sealed first.
    seal: bool,
    /// A new batch is opened for the row.
    opens: bool,
    /// Bytes the row adds to its batch (including a newly listed GPU or metric).
    bytes: usize,
    new_partition: bool,
}

/// Rows taken out of a buffer for one publish.
#[derive(Debug, Default)]
pub struct TakenRows {
    /// (queue partition, batch), in the order the batches were started.
    pub batches: Vec<(u32, SampleBatch)>,
    /// Shard rows covered, including rows skipped as too large.
    pub rows: u64,
    pub samples: u64,
    pub last_ts: Option<i64>,
    /// Upper bound of the batches' encoded size (event JSON).
    pub bytes: usize,
}

impl TakenRows {
    /// Distinct queue partitions the batches go to.
    pub fn partitions(&self) -> BTreeSet<u32> {
        self.batches.iter().map(|(p, _)| *p).collect()
    }
}

/// A shard's unpublished rows.
#[derive(Debug)]
pub struct ShardBuffer {
    limits: BufferLimits,
    open: BTreeMap<u32, OpenBatch>,
    sealed: Vec<(u32, SampleBatch)>,
    sealed_bytes: usize,
    partitions: BTreeSet<u32>,
    rows: u64,
    samples: u64,
    last_ts: Option<i64>,
}

impl ShardBuffer {
    pub fn new(limits: BufferLimits) -> Self {
        ShardBuffer {
            limits,
            open: BTreeMap::new(),
            sealed: Vec::new(),
            sealed_bytes: 0,
            partitions: BTreeSet::new(),
            rows: 0,
            samples: 0,
            last_ts: None,
        }
    }

    /// Rows held (including skipped ones not yet accounted in a publish).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    fn cost(&self, row: &CsvRow, partition: u32, ts: TimestampMicros) -> RowCost {
        let batch = self.open.get(&partition);
        let mut cost = RowCost {
            seal: false,
            opens: batch.is_none(),
            bytes: 0,
            new_partition: !self.partitions.contains(&partition),
        };
        let first_ts = batch.map_or(ts.0, |b| b.first_ts);
        let mut bytes = row_bytes(ts.0.wrapping_sub(first_ts), row.value);
        let new_gpu = batch.is_none_or(|b| !b.builder.has_gpu(&row.info.uuid));
        let new_metric = batch.is_none_or(|b| !b.builder.has_metric(&row.metric));
        if new_gpu {
            bytes += json_len(&row.info) + 1;
        }
        if new_metric {
            bytes += row.metric.as_str().len() + 3;
        }
        if let Some(b) = batch {
            let full = b.builder.len() >= self.limits.batch_size
                || b.bytes + bytes > self.limits.max_payload_bytes;
            if full {
                // The row starts a new batch: recompute against an empty one.
                cost.seal = true;
                cost.opens = true;
                bytes = row_bytes(0, row.value)
                    + json_len(&row.info)
                    + 1
                    + row.metric.as_str().len()
                    + 3;
            }
        }
        if cost.opens {
            bytes += self.limits.envelope_bytes;
        }
        cost.bytes = bytes;
        cost
    }

    fn open_bytes(&self) -> usize {
        self.open.values().map(|b| b.bytes).sum()
    }

    /// Whether the row fits one transaction together with everything buffered.
    pub fn fits(&self, row: &CsvRow, partition: u32, ts: TimestampMicros) -> bool {
        self.fits_at(&self.cost(row, partition, ts))
    }

    fn fits_at(&self, cost: &RowCost) -> bool {
        if cost.opens && cost.bytes > self.limits.max_payload_bytes {
            return false;
        }
        // Sealing moves a batch from open to sealed; only opening adds a message.
        let messages = self.sealed.len() + self.open.len() + usize::from(cost.opens);
        let partitions = self.partitions.len() + usize::from(cost.new_partition);
        let bytes = self.sealed_bytes + self.open_bytes() + cost.bytes + FENCE_BYTES;
        Producer::fits_one_transaction(messages, partitions, bytes, FENCE_OPS)
    }

    /// Whether the row fits an empty buffer at all (a row too large is skipped as bad).
    pub fn fits_alone(
        limits: BufferLimits,
        row: &CsvRow,
        partition: u32,
        ts: TimestampMicros,
    ) -> bool {
        ShardBuffer::new(limits).fits(row, partition, ts)
    }

    /// Adds the row if it [`fits`](ShardBuffer::fits); says whether it did.
    pub fn try_push(&mut self, row: &CsvRow, partition: u32, ts: TimestampMicros) -> bool {
        let cost = self.cost(row, partition, ts);
        let fits = self.fits_at(&cost);
        if fits {
            self.push_at(row, partition, ts, cost);
        }
        fits
    }

    /// Adds a row. Call only after [`ShardBuffer::fits`] said yes.
    pub fn push(&mut self, row: &CsvRow, partition: u32, ts: TimestampMicros) {
        let cost = self.cost(row, partition, ts);
        self.push_at(row, partition, ts, cost);
    }

    fn push_at(&mut self, row: &CsvRow, partition: u32, ts: TimestampMicros, cost: RowCost) {
        if cost.seal {
            if let Some(full) = self.open.remove(&partition) {
                self.sealed_bytes += full.bytes;
                self.sealed.push((partition, full.builder.build()));
            }
        }
        let batch = self.open.entry(partition).or_insert_with(|| OpenBatch {
            builder: SampleBatch::builder(),
            bytes: 0,
            first_ts: ts.0,
        });
        batch.builder.push(&row.info, &row.metric, ts, row.value);
        batch.bytes += cost.bytes;
        self.partitions.insert(partition);
        self.rows += 1;
        self.samples += 1;
        self.last_ts = Some(ts.0);
    }

    /// Counts a row that is not published (too large for any message) so row numbers stay exact.
    pub fn skip_row(&mut self) {
        self.rows += 1;
    }

    /// Takes everything buffered, leaving the buffer empty.
    pub fn take(&mut self) -> TakenRows {
        let bytes = self.sealed_bytes + self.open_bytes();
        let mut batches = std::mem::take(&mut self.sealed);
        batches.extend(
            std::mem::take(&mut self.open)
                .into_iter()
                .map(|(partition, open)| (partition, open.builder.build())),
        );
        let taken = TakenRows {
            batches,
            rows: self.rows,
            samples: self.samples,
            last_ts: self.last_ts,
            bytes,
        };
        self.sealed_bytes = 0;
        self.partitions.clear();
        self.rows = 0;
        self.samples = 0;
        self.last_ts = None;
        taken
    }
}

/// Upper bound of a `[g,m,dt,v],` row in the wire form (indexes below 100,000).
fn row_bytes(dt: i64, value: f64) -> usize {
    const FRAME: usize = 2 + 3 + 1 + 5 + 5;
    FRAME + decimal_len(dt) + value_len(value)
}

/// Upper bound of a value as the batch encoder writes it: integral values as integers (except
/// -0.0), others in the shortest round-trip form (at most 24 characters).
fn value_len(value: f64) -> usize {
    let negative_zero = value == 0.0 && value.is_sign_negative();
    if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 && !negative_zero {
        decimal_len(value as i64)
    } else {
        24
    }
}

fn decimal_len(n: i64) -> usize {
    let sign = usize::from(n < 0);
    let mut digits = 1;
    let mut rest = n.unsigned_abs();
    while rest >= 10 {
        rest /= 10;
        digits += 1;
    }
    sign + digits
}

/// Length of `value`'s JSON without building it.
fn json_len<T: serde::Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("GPU info serializes");
    count.0
}

#[cfg(test)]
mod tests {
    use telemetry_model::{DataEncoding, GpuInfo, GpuUuid, MetricName};

    use super::*;

    fn row(uuid: &str, metric: &str, value: f64) -> CsvRow {
        let mut info = GpuInfo::new(GpuUuid::parse(uuid).unwrap());
        info.hostname = Some("mtv5-dgx1-hgpu-031".into());
        info.model_name = Some("NVIDIA H100 80GB HBM3".into());
        info.labels.insert("job".into(), "dgx_dcgm_exporter".into());
        CsvRow {
            line: 2,
            info,
            metric: MetricName::parse(metric).unwrap(),
            value,
            source_timestamp: None,
        }
    }

    const SOURCE: &str = "/streamer/host-0123abcd";

    fn encoded_len(batch: &SampleBatch) -> usize {
        let writer = crate::encode::EventWriter::new(SOURCE.into(), DataEncoding::Json);
        writer.messages(vec![(0, batch.clone())], usize::MAX)[0]
            .payload
            .len()
    }

    #[test]
    fn batches_split_per_partition_and_at_batch_size() {
        let limits = BufferLimits::new(3, 1024 * 1024, SOURCE);
        let mut buffer = ShardBuffer::new(limits);
        let mut ts = 1_752_871_354_000_000;
        for i in 0..7 {
            let r = row(&format!("GPU-{}", i % 2), "DCGM_FI_DEV_GPU_UTIL", i as f64);
            let partition = (i % 2) as u32;
            assert!(buffer.fits(&r, partition, TimestampMicros(ts)));
            buffer.push(&r, partition, TimestampMicros(ts));
            ts += 1;
        }
        assert_eq!(buffer.rows(), 7);
        let taken = buffer.take();
        assert!(buffer.is_empty());
        assert_eq!((taken.rows, taken.samples), (7, 7));
        assert_eq!(taken.last_ts, Some(ts - 1));
        let shape: Vec<(u32, usize)> = taken.batches.iter().map(|(p, b)| (*p, b.len())).collect();
        // Partition 0 got rows 0,2,4,6 (a full batch sealed, then one more); partition 1 got 1,3,5.
        assert_eq!(shape, [(0, 3), (0, 1), (1, 3)]);
    }

    #[test]
    fn estimates_bound_the_encoded_size() {
        let limits = BufferLimits::new(500, 1024 * 1024, SOURCE);
        let mut buffer = ShardBuffer::new(limits);
        let mut ts = 1_752_871_354_000_000;
        let values = [0.0, 100.0, -3.5, 156.596, 1e300, -0.0, 81003.0, 1.0 / 3.0];
        for i in 0..2_000 {
            let r = row(
                &format!("GPU-{:04}", i % 37),
                &format!("DCGM_FI_DEV_M{}", i % 11),
                values[i % values.len()],
            );
            ts += 1 + (i as i64 % 5) * 1_000;
            buffer.push(&r, (i % 16) as u32, TimestampMicros(ts));
        }
        let estimated = buffer.sealed_bytes + buffer.open_bytes();
        let taken = buffer.take();
        assert_eq!(taken.bytes, estimated);
        let actual: usize = taken.batches.iter().map(|(_, b)| encoded_len(b)).sum();
        assert!(
            actual <= estimated,
            "encoded {actual} bytes, estimated {estimated}"
        );
        assert!(
            actual * 2 > estimated,
            "estimate {estimated} too loose for {actual}"
        );
    }

    #[test]
    fn a_full_buffer_refuses_the_next_row() {
        let limits = BufferLimits::new(500, 1024 * 1024, SOURCE);
        let mut buffer = ShardBuffer::new(limits);
        let mut ts = 0;
        let mut pushed = 0;
        loop {
            let r = row(&format!("GPU-{:05}", pushed), "DCGM_FI_DEV_GPU_UTIL", 1.5);
            let partition = (pushed % 16) as u32;
            ts += 1;
            if !buffer.fits(&r, partition, TimestampMicros(ts)) {
                break;
            }
            buffer.push(&r, partition, TimestampMicros(ts));
            pushed += 1;
        }
        let taken = buffer.take();
        let messages = taken.batches.len();
        let partitions: BTreeSet<u32> = taken.batches.iter().map(|(p, _)| *p).collect();
        let bytes: usize = taken.batches.iter().map(|(_, b)| encoded_len(b)).sum();
        assert!(Producer::fits_one_transaction(
            messages,
            partitions.len(),
            bytes + FENCE_BYTES,
            FENCE_OPS
        ));
        assert_eq!(taken.rows, pushed);
        assert!(pushed > 1_000, "only {pushed} rows per transaction");
    }

    #[test]
    fn try_push_adds_exactly_what_fits_then_push_would() {
        // Batches of five seal often, so the transaction's message budget runs out.
        let limits = BufferLimits::new(5, 1024 * 1024, SOURCE);
        let (mut checked, mut tried) = (ShardBuffer::new(limits), ShardBuffer::new(limits));
        let (mut accepted, mut refused) = (0, 0);
        for i in 0..3_000u32 {
            let r = row(
                &format!("GPU-{:05}", i % 1_500),
                &format!("DCGM_FI_DEV_M{}", i % 7),
                f64::from(i),
            );
            let (partition, ts) = (i % 16, TimestampMicros(i64::from(i) * 1_000));
            let fits = checked.fits(&r, partition, ts);
            if fits {
                checked.push(&r, partition, ts);
            }
            assert_eq!(tried.try_push(&r, partition, ts), fits, "row {i}");
            if fits {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        assert!(
            accepted > 0 && refused > 0,
            "{accepted} accepted, {refused} refused"
        );
        let (checked, tried) = (checked.take(), tried.take());
        assert_eq!((tried.rows, tried.samples), (accepted, accepted));
        assert_eq!(
            (tried.bytes, tried.last_ts),
            (checked.bytes, checked.last_ts)
        );
        assert_eq!(tried.batches, checked.batches);
    }

    #[test]
    fn a_row_larger_than_a_message_never_fits() {
        let limits = BufferLimits::new(500, 2_000, SOURCE);
        let mut r = row("GPU-1", "DCGM_FI_DEV_GPU_UTIL", 1.0);
        r.info.labels.insert("huge".into(), "x".repeat(5_000));
        assert!(!ShardBuffer::fits_alone(limits, &r, 0, TimestampMicros(1)));
        let mut buffer = ShardBuffer::new(limits);
        buffer.skip_row();
        let taken = buffer.take();
        assert_eq!((taken.rows, taken.samples, taken.batches.len()), (1, 0, 0));
    }

    #[test]
    fn decimal_lengths() {
        assert_eq!(decimal_len(0), 1);
        assert_eq!(decimal_len(9), 1);
        assert_eq!(decimal_len(10), 2);
        assert_eq!(decimal_len(-10), 3);
        assert_eq!(decimal_len(i64::MIN), 20);
        assert_eq!(decimal_len(i64::MAX), 19);
    }
}
