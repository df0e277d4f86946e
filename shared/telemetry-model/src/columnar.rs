//! The columnar binary form of a [`SampleBatch`]: what the `data_base64` member of a batch event
//! carries when its `datacontenttype` is [`COLUMNAR_CONTENT_TYPE`].
//!
//! Layout (every integer an unsigned LEB128 varint; "signed" ones zigzag-coded first):
//!
//! ```text
//! version            1 byte, 0x01
//! strings            count, then each: byte length, UTF-8 bytes    (each distinct string once)
//! gpus               count, then each: uuid (string index), presence mask (1 byte),
//!                    then for each bit set, in bit order: gpu_index (value), device, model_name,
//!                    hostname, container, pod, namespace (string indexes), labels (count, then
//!                    key and value string indexes)
//! metrics            count, then each a string index
//! rows               count n, then four columns of n entries each:
//!                    gpu indexes, metric indexes,
//!                    timestamps (signed: the first relative to 0, each next one relative to the
//!                    previous row's), values (see below)
//! ```
//!
//! A value is one varint `tag`: `tag & 7 = k` in `0..=6` means the value is `m / 10^k` with
//! `m = zigzag_decode(tag >> 3)` (exact: the encoder only chooses it when dividing gives back the
//! very same bits); `k = 7` means the 8 bytes after the tag are the value's IEEE 754 bits, little
//! endian. DCGM gauges are mostly small integers or have a couple of decimals, so a value takes
//! one to three bytes; GPUs and metrics are listed once per batch, rows are in the batch's order.

use std::collections::{BTreeMap, HashMap};

use crate::batch::{BatchError, PackedSample, SampleBatch};
use crate::gpu::GpuInfo;
use crate::ids::{GpuUuid, MetricName};
use crate::time::TimestampMicros;
use crate::wire::{put_bytes, put_varint, unzigzag, zigzag, Input};

/// The `datacontenttype` of a batch event whose data is this form.
pub const COLUMNAR_CONTENT_TYPE: &str = "application/vnd.gpu-telemetry.columnar.v1";

const VERSION: u8 = 1;
/// Largest decimal exponent a value is scaled by; tag 7 marks raw bits.
const MAX_DECIMALS: u32 = 6;
const RAW_VALUE: u64 = 7;
const POWERS_OF_TEN: [f64; 7] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];
/// Magnitude below which every integer is exactly an f64 (2^53).
const EXACT_INT_LIMIT: f64 = 9_007_199_254_740_992.0;

/// `batch` in the columnar form.
pub fn encode(batch: &SampleBatch) -> Vec<u8> {
    let mut strings = StringTable::default();
    let mut gpus = Vec::with_capacity(batch.gpus.len() * 16);
    put_varint(&mut gpus, batch.gpus.len() as u64);
    for gpu in &batch.gpus {
        encode_gpu(&mut gpus, &mut strings, gpu);
    }
    let mut metrics = Vec::with_capacity(batch.metrics.len() * 2 + 1);
    put_varint(&mut metrics, batch.metrics.len() as u64);
    for metric in &batch.metrics {
        put_varint(&mut metrics, strings.index(metric.as_str()));
    }

    let mut out = Vec::with_capacity(
        1 + strings.bytes + gpus.len() + metrics.len() + 8 + batch.rows.len() * 6,
    );
    out.push(VERSION);
    put_varint(&mut out, strings.order.len() as u64);
    for s in &strings.order {
        put_bytes(&mut out, s.as_bytes());
    }
    out.extend_from_slice(&gpus);
    out.extend_from_slice(&metrics);
    put_varint(&mut out, batch.rows.len() as u64);
    for row in &batch.rows {
        put_varint(&mut out, u64::from(row.gpu));
    }
    for row in &batch.rows {
        put_varint(&mut out, u64::from(row.metric));
    }
    let mut previous = 0i64;
    for row in &batch.rows {
        // Wrapping keeps the round trip exact for any timestamp; decoding wraps back.
        put_varint(&mut out, zigzag(row.timestamp.0.wrapping_sub(previous)));
        previous = row.timestamp.0;
    }
    for row in &batch.rows {
        put_value(&mut out, row.value);
    }
    out
}

/// Decodes and validates (as [`SampleBatch::validate`]) a batch in the columnar form.
pub fn decode(bytes: &[u8]) -> Result<SampleBatch, BatchError> {
    let mut input = Input::new(bytes, columnar_error);
    let version = input.byte()?;
    if version != VERSION {
        return Err(input.error(format!("unsupported version {version}")));
    }
    let string_count = input.count()?;
    let mut strings = Vec::with_capacity(string_count);
    for _ in 0..string_count {
        strings.push(input.text()?);
    }
    let gpu_count = input.count()?;
    let mut gpus = Vec::with_capacity(gpu_count);
    for _ in 0..gpu_count {
        gpus.push(decode_gpu(&mut input, &strings)?);
    }
    let metric_count = input.count()?;
    let mut metrics = Vec::with_capacity(metric_count);
    for _ in 0..metric_count {
        let name = input.string(&strings)?;
        metrics.push(MetricName::parse(name).map_err(|e| input.error(e.to_string()))?);
    }
    let n = input.count()?;
    let mut rows = Vec::with_capacity(n);
    for _ in 0..n {
        rows.push(PackedSample {
            gpu: input.index_u32()?,
            metric: 0,
            timestamp: TimestampMicros(0),
            value: 0.0,
        });
    }
    for row in &mut rows {
        row.metric = input.index_u32()?;
    }
    let mut previous = 0i64;
    for row in &mut rows {
        previous = previous.wrapping_add(unzigzag(input.varint()?));
        row.timestamp = TimestampMicros(previous);
    }
    for row in &mut rows {
        row.value = read_value(&mut input)?;
    }
    input.finish("trailing bytes after the rows")?;
    let batch = SampleBatch {
        gpus,
        metrics,
        rows,
    };
    batch.validate()?;
    Ok(batch)
}

fn columnar_error(offset: usize, reason: String) -> BatchError {
    BatchError::DecodeColumnar { offset, reason }
}

/// Bits of the GPU presence mask, in the order the fields follow it.
const HAS_GPU_INDEX: u8 = 1;
const HAS_DEVICE: u8 = 1 << 1;
const HAS_MODEL_NAME: u8 = 1 << 2;
const HAS_HOSTNAME: u8 = 1 << 3;
const HAS_CONTAINER: u8 = 1 << 4;
const HAS_POD: u8 = 1 << 5;
const HAS_NAMESPACE: u8 = 1 << 6;
const HAS_LABELS: u8 = 1 << 7;

/// The optional text fields of a GPU with their mask bits, in wire order.
fn text_fields(gpu: &GpuInfo) -> [(u8, &Option<String>); 6] {
    [
        (HAS_DEVICE, &gpu.device),
        (HAS_MODEL_NAME, &gpu.model_name),
        (HAS_HOSTNAME, &gpu.hostname),
        (HAS_CONTAINER, &gpu.container),
        (HAS_POD, &gpu.pod),
        (HAS_NAMESPACE, &gpu.namespace),
    ]
}

fn encode_gpu<'a>(out: &mut Vec<u8>, strings: &mut StringTable<'a>, gpu: &'a GpuInfo) {
    put_varint(out, strings.index(gpu.uuid.as_str()));
    let mut mask = 0u8;
    if gpu.gpu_index.is_some() {
        mask |= HAS_GPU_INDEX;
    }
    for (bit, field) in text_fields(gpu) {
        if field.is_some() {
            mask |= bit;
        }
    }
    if !gpu.labels.is_empty() {
        mask |= HAS_LABELS;
    }
    out.push(mask);
    if let Some(index) = gpu.gpu_index {
        put_varint(out, u64::from(index));
    }
    for (_, field) in text_fields(gpu) {
        if let Some(text) = field {
            put_varint(out, strings.index(text));
        }
    }
    if !gpu.labels.is_empty() {
        put_varint(out, gpu.labels.len() as u64);
        for (key, value) in &gpu.labels {
            put_varint(out, strings.index(key));
            put_varint(out, strings.index(value));
        }
    }
}

fn decode_gpu(input: &mut Input<'_>, strings: &[&str]) -> Result<GpuInfo, BatchError> {
    let uuid = input.string(strings)?;
    let mut gpu =
        GpuInfo::new(GpuUuid::parse(uuid).map_err(|e| input.error(format!("GPU uuid: {e}")))?);
    let mask = input.byte()?;
    if mask & HAS_GPU_INDEX != 0 {
        gpu.gpu_index = Some(input.index_u32()?);
    }
    let mut texts = [const { None }; 6];
    for (slot, (bit, _)) in texts.iter_mut().zip(text_fields(&gpu)) {
        if mask & bit != 0 {
            *slot = Some(input.string(strings)?.to_owned());
        }
    }
    let [device, model_name, hostname, container, pod, namespace] = texts;
    gpu.device = device;
    gpu.model_name = model_name;
    gpu.hostname = hostname;
    gpu.container = container;
    gpu.pod = pod;
    gpu.namespace = namespace;
    if mask & HAS_LABELS != 0 {
        let count = input.count()?;
        let mut labels = BTreeMap::new();
        for _ in 0..count {
            let key = input.string(strings)?.to_owned();
            let value = input.string(strings)?.to_owned();
            labels.insert(key, value);
        }
        gpu.labels = labels;
    }
    Ok(gpu)
}

/// Each distinct string once, numbered in first-use order.
#[derive(Default)]
struct StringTable<'a> {
    index: HashMap<&'a str, u64>,
    order: Vec<&'a str>,
    bytes: usize,
}

impl<'a> StringTable<'a> {
    fn index(&mut self, s: &'a str) -> u64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.order.len() as u64;
        self.index.insert(s, i);
        self.order.push(s);
        self.bytes += s.len() + 2;
        i
    }
}

/// The shortest exact form of `value`: a scaled integer when one gives back the same bits.
fn put_value(out: &mut Vec<u8>, value: f64) {
    for (k, power) in POWERS_OF_TEN.iter().enumerate() {
        let scaled = (value * power).round();
        if scaled.abs() >= EXACT_INT_LIMIT {
            continue;
        }
        let m = scaled as i64;
        // Checked with the decoder's own expression, so -0.0 (m = 0 decodes to +0.0) and any
        // value the division would not give back exactly keep their raw bits.
        if (m as f64 / power).to_bits() == value.to_bits() {
            // |m| < 2^53, so the zigzag code shifted by three stays below 2^57.
            put_varint(out, (zigzag(m) << 3) | k as u64);
            return;
        }
    }
    put_varint(out, RAW_VALUE);
    out.extend_from_slice(&value.to_le_bytes());
}

/// A value as [`put_value`] writes it.
fn read_value(input: &mut Input<'_>) -> Result<f64, BatchError> {
    let tag = input.varint()?;
    let k = tag & 7;
    if k == RAW_VALUE {
        let raw: [u8; 8] = input.take(8)?.try_into().expect("eight bytes");
        return Ok(f64::from_le_bytes(raw));
    }
    if k > u64::from(MAX_DECIMALS) {
        return Err(input.error(format!("value tag {tag} has no meaning")));
    }
    let m = unzigzag(tag >> 3);
    Ok(m as f64 / POWERS_OF_TEN[k as usize])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn gpu(uuid: &str) -> GpuInfo {
        GpuInfo::new(GpuUuid::parse(uuid).unwrap())
    }

    fn full_gpu() -> GpuInfo {
        let mut info = gpu("GPU-5fd4f087-86f3-7a43-b711-4771313afc50");
        info.gpu_index = Some(3);
        info.device = Some("nvidia3".into());
        info.model_name = Some("NVIDIA H100 80GB HBM3".into());
        info.hostname = Some("mtv5-dgx1-hgpu-031".into());
        info.namespace = Some("ml".into());
        info.labels.insert("job".into(), "dgx_dcgm_exporter".into());
        info.labels
            .insert("DCGM_FI_DRIVER_VERSION".into(), "535.129.03".into());
        info
    }

    #[test]
    fn a_batch_round_trips_with_its_gpu_table() {
        let mut builder = SampleBatch::builder();
        let util = MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap();
        let power = MetricName::parse("DCGM_FI_DEV_POWER_USAGE").unwrap();
        let full = full_gpu();
        let bare = gpu("GPU-2");
        builder.push(&full, &util, TimestampMicros(1_752_871_354_000_000), 100.0);
        builder.push(
            &full,
            &power,
            TimestampMicros(1_752_871_354_000_007),
            412.37,
        );
        builder.push(&bare, &util, TimestampMicros(1_752_871_353_999_990), -0.0);
        builder.push(&bare, &power, TimestampMicros(-5), 1e-9);
        let batch = builder.build();
        let bytes = encode(&batch);
        assert_eq!(decode(&bytes).unwrap(), batch);
        let back = decode(&bytes).unwrap();
        assert!(back.rows[2].value.is_sign_negative(), "-0.0 keeps its sign");
    }

    #[test]
    fn values_take_the_shortest_exact_form() {
        let len = |v: f64| {
            let mut out = Vec::new();
            put_value(&mut out, v);
            out.len()
        };
        assert_eq!(len(0.0), 1);
        assert_eq!(len(7.0), 1);
        assert_eq!(len(100.0), 2);
        assert_eq!(len(412.37), 3);
        assert_eq!(len(-0.0), 9, "raw bits keep the sign of zero");
        assert_eq!(len(std::f64::consts::PI), 9);
    }

    #[test]
    fn a_real_sized_batch_is_compact() {
        let mut builder = SampleBatch::builder();
        let metrics: Vec<MetricName> = (0..10)
            .map(|i| MetricName::parse(&format!("DCGM_FI_DEV_M{i}")).unwrap())
            .collect();
        let gpus: Vec<GpuInfo> = (0..15)
            .map(|i| {
                let mut g = full_gpu();
                g.uuid = GpuUuid::parse(&format!("GPU-5fd4f087-86f3-7a43-b711-4771313af{i:03}"))
                    .unwrap();
                g
            })
            .collect();
        let mut ts = 1_752_871_354_000_000;
        for pass in 0..4 {
            for g in &gpus {
                for (m, metric) in metrics.iter().enumerate() {
                    ts += 3;
                    builder.push(g, metric, TimestampMicros(ts), (pass * 10 + m) as f64);
                }
            }
        }
        let batch = builder.build();
        let bytes = encode(&batch);
        // 600 rows of a one-byte GPU, metric and time delta and a two-byte value, plus the
        // tables (each UUID once).
        assert!(
            bytes.len() < 600 * 5 + 15 * 60 + 400,
            "{} bytes",
            bytes.len()
        );
        assert_eq!(decode(&bytes).unwrap(), batch);
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        let mut builder = SampleBatch::builder();
        builder.push(
            &full_gpu(),
            &MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap(),
            TimestampMicros(1_000),
            1.5,
        );
        let bytes = encode(&builder.build());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode(&trailing),
            Err(BatchError::DecodeColumnar { .. })
        ));
        let mut other_version = bytes.clone();
        other_version[0] = 2;
        assert!(matches!(
            decode(&other_version),
            Err(BatchError::DecodeColumnar { offset: 1, .. })
        ));
        // A huge count cannot make the decoder allocate for it.
        assert!(decode(&[1, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn decoding_validates_like_the_json_form() {
        let batch = SampleBatch {
            gpus: vec![gpu("GPU-1")],
            metrics: vec![MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap()],
            rows: vec![PackedSample {
                gpu: 1,
                metric: 0,
                timestamp: TimestampMicros(1),
                value: 1.0,
            }],
        };
        assert!(matches!(
            decode(&encode(&batch)),
            Err(BatchError::ValidateGpuIndex { index: 1, .. })
        ));
    }

    fn arb_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            (-1_000_000i64..1_000_000).prop_map(|i| i as f64),
            (-1_000_000i64..1_000_000, 0u32..7).prop_map(|(m, k)| m as f64 / 10f64.powi(k as i32)),
            any::<f64>().prop_filter("finite", |v| v.is_finite()),
        ]
    }

    fn arb_gpu() -> impl Strategy<Value = GpuInfo> {
        (
            "[a-f0-9-]{1,40}",
            proptest::option::of(0u32..64),
            proptest::option::of("[a-z0-9 ]{1,12}"),
            proptest::option::of("[a-z0-9-]{1,12}"),
            proptest::collection::btree_map("[a-z_]{1,8}", "[a-z0-9.\"é]{0,8}", 0..4),
        )
            .prop_map(|(uuid, index, model, host, labels)| {
                let mut g = GpuInfo::new(GpuUuid::parse(&format!("GPU-{uuid}")).unwrap());
                g.gpu_index = index;
                g.model_name = model;
                g.hostname = host.clone();
                g.pod = host;
                g.labels = labels;
                g
            })
    }

    proptest! {
        #[test]
        fn every_valid_batch_round_trips(
            gpus in proptest::collection::vec(arb_gpu(), 1..6),
            rows in proptest::collection::vec(
                (0usize..6, 0usize..3, -1_000_000_000i64..1_000_000_000, arb_value()),
                0..200,
            ),
        ) {
            let metrics: Vec<MetricName> = ["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP", "X"]
                .iter()
                .map(|m| MetricName::parse(m).unwrap())
                .collect();
            let mut builder = SampleBatch::builder();
            for (g, m, ts, v) in rows {
                builder.push(
                    &gpus[g % gpus.len()],
                    &metrics[m],
                    TimestampMicros(1_752_871_354_000_000 + ts),
                    v,
                );
            }
            let batch = builder.build();
            let back = decode(&encode(&batch)).unwrap();
            prop_assert_eq!(back.gpus, batch.gpus);
            prop_assert_eq!(back.metrics, batch.metrics);
            prop_assert_eq!(back.rows.len(), batch.rows.len());
            for (a, b) in back.rows.iter().zip(&batch.rows) {
                prop_assert_eq!((a.gpu, a.metric, a.timestamp), (b.gpu, b.metric, b.timestamp));
                prop_assert_eq!(a.value.to_bits(), b.value.to_bits());
            }
        }
    }
}
