//! The columnar binary form of a [`SampleBatch`]: the data of a batch event whose
//! `datacontenttype` is [`COLUMNAR_CONTENT_TYPE`] (raw in a queue frame or a binary-mode HTTP
//! body, base64 in a structured event's `data_base64`).
//!
//! Layout 2, which [`encode`] writes (every integer an unsigned LEB128 varint; "signed" ones
//! zigzag-coded first):
//!
//! ```text
//! version            1 byte, 0x02
//! strings            count, then each distinct string once, in byte order: header 1 and the
//!                    16 bytes of a `GPU-` UUID of lowercase hex in the 8-4-4-4-12 form, or
//!                    header `p << 1`, then byte length and UTF-8 bytes of what follows the
//!                    first p bytes of the previous string
//! gpus               count, then each: uuid (string index), presence mask (1 byte),
//!                    then for each bit set, in bit order: gpu_index (value), device, model_name,
//!                    hostname, container, pod, namespace (string indexes), labels (count, then
//!                    key and value string indexes)
//! metrics            count, then each a string index
//! rows               count n, then four columns of n entries each:
//!                    gpu indexes and metric indexes (each a mode byte: 0 then n indexes, or 1
//!                    then a count of runs, each its first index, signed step and length),
//!                    timestamps (signed: the first relative to 0, each next one relative to the
//!                    previous row's), values (see below)
//! ```
//!
//! Layout 1, which [`decode`] still reads, differs in two places: strings are in first-use
//! order, each written whole (byte length, bytes), and the index columns are n indexes each,
//! without a mode byte.
//!
//! A value is one varint `tag`: `tag & 7 = k` in `0..=6` means the value is `m / 10^k` with
//! `m = zigzag_decode(tag >> 3)` (exact: the encoder only chooses it when dividing gives back the
//! very same bits); `k = 7` means the 8 bytes after the tag are the value's IEEE 754 bits, little
//! endian. DCGM gauges are mostly small integers or have a couple of decimals, so a value takes
//! one to three bytes; GPUs and metrics are listed once per batch, rows are in the batch's order.
//! Sorted strings share their prefixes (`DCGM_FI_DEV_`, a host's name in its `instance` label,
//! `nvidia` in devices), and a pass's rows cycle through their GPUs within each metric, so the
//! index columns are a few runs each.

use std::collections::BTreeMap;

use crate::batch::{BatchError, PackedSample, SampleBatch};
use crate::gpu::GpuInfo;
use crate::ids::{GpuUuid, MetricName};
use crate::time::TimestampMicros;
use crate::wire::{
    hex_bytes, push_hex, put_bytes, put_varint, unzigzag, varint_len, zigzag, Input,
};

/// The `datacontenttype` of a batch event whose data is this form.
pub const COLUMNAR_CONTENT_TYPE: &str = "application/vnd.gpu-telemetry.columnar.v1";

/// The layout [`encode`] writes; [`decode`] also reads [`VERSION_1`].
const VERSION: u8 = 2;
/// The first layout: strings in first-use order as written, index columns row by row.
const VERSION_1: u8 = 1;
/// Largest decimal exponent a value is scaled by; tag 7 marks raw bits.
const MAX_DECIMALS: u32 = 6;
const RAW_VALUE: u64 = 7;
const POWERS_OF_TEN: [f64; 7] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];
/// Magnitude below which every integer is exactly an f64 (2^53).
const EXACT_INT_LIMIT: f64 = 9_007_199_254_740_992.0;

/// `batch` in the columnar form (the current layout, version 2).
pub fn encode(batch: &SampleBatch) -> Vec<u8> {
    let strings = SortedStrings::of(batch);
    let mut out = Vec::with_capacity(
        16 + strings.bytes + batch.gpus.len() * 16 + batch.metrics.len() * 2 + batch.rows.len() * 5,
    );
    out.push(VERSION);
    strings.encode(&mut out);
    put_varint(&mut out, batch.gpus.len() as u64);
    for gpu in &batch.gpus {
        encode_gpu(&mut out, &strings, gpu);
    }
    put_varint(&mut out, batch.metrics.len() as u64);
    for metric in &batch.metrics {
        put_varint(&mut out, strings.index(metric.as_str()));
    }
    put_varint(&mut out, batch.rows.len() as u64);
    let gpus: Vec<u32> = batch.rows.iter().map(|row| row.gpu).collect();
    put_index_column(&mut out, &gpus);
    let metrics: Vec<u32> = batch.rows.iter().map(|row| row.metric).collect();
    put_index_column(&mut out, &metrics);
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

/// Decodes and validates (as [`SampleBatch::validate`]) a batch in the columnar form, of
/// either layout version.
pub fn decode(bytes: &[u8]) -> Result<SampleBatch, BatchError> {
    let mut input = Input::new(bytes, columnar_error);
    let version = input.byte()?;
    if version != VERSION && version != VERSION_1 {
        return Err(input.error(format!("unsupported version {version}")));
    }
    let owned = if version == VERSION_1 {
        read_plain_strings(&mut input)?
    } else {
        read_sorted_strings(&mut input)?
    };
    let strings: Vec<&str> = owned.iter().map(String::as_str).collect();
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
    let (gpu_column, metric_column) = if version == VERSION_1 {
        (
            read_plain_column(&mut input, n)?,
            read_plain_column(&mut input, n)?,
        )
    } else {
        (
            read_index_column(&mut input, n)?,
            read_index_column(&mut input, n)?,
        )
    };
    let mut rows: Vec<PackedSample> = gpu_column
        .into_iter()
        .zip(metric_column)
        .map(|(gpu, metric)| PackedSample {
            gpu,
            metric,
            timestamp: TimestampMicros(0),
            value: 0.0,
        })
        .collect();
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

fn encode_gpu(out: &mut Vec<u8>, strings: &SortedStrings<'_>, gpu: &GpuInfo) {
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

/// Every distinct string of a batch, in byte order, numbered by position: sorted neighbours
/// share long prefixes (metric names, hostnames, devices), which the table does not repeat.
struct SortedStrings<'a> {
    sorted: Vec<&'a str>,
    bytes: usize,
}

impl<'a> SortedStrings<'a> {
    fn of(batch: &'a SampleBatch) -> Self {
        let mut sorted: Vec<&'a str> =
            Vec::with_capacity(batch.gpus.len() * 8 + batch.metrics.len());
        for gpu in &batch.gpus {
            sorted.push(gpu.uuid.as_str());
            sorted.extend(
                text_fields(gpu)
                    .into_iter()
                    .filter_map(|(_, f)| f.as_deref()),
            );
            for (key, value) in &gpu.labels {
                sorted.push(key);
                sorted.push(value);
            }
        }
        sorted.extend(batch.metrics.iter().map(MetricName::as_str));
        sorted.sort_unstable();
        sorted.dedup();
        let bytes = sorted.iter().map(|s| s.len() + 2).sum();
        SortedStrings { sorted, bytes }
    }

    fn index(&self, s: &str) -> u64 {
        self.sorted
            .binary_search(&s)
            .expect("every string of the batch is in its table") as u64
    }

    /// Count, then each string: a GPU UUID of the common form as its 16 bytes (header 1), any
    /// other as the length of the prefix it shares with the previous string (header
    /// `prefix << 1`) and the rest (length, bytes).
    fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.sorted.len() as u64);
        let mut previous: &[u8] = b"";
        for s in &self.sorted {
            let s = s.as_bytes();
            if let Some(raw) = packed_uuid(s) {
                put_varint(out, PACKED_UUID);
                out.extend_from_slice(&raw);
            } else {
                let shared = previous.iter().zip(s).take_while(|(a, b)| a == b).count();
                put_varint(out, (shared as u64) << 1);
                put_bytes(out, &s[shared..]);
            }
            previous = s;
        }
    }
}

/// String table header of a packed UUID.
const PACKED_UUID: u64 = 1;
/// Where the dashes of a `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` UUID are.
const UUID_DASHES: [usize; 4] = [12, 17, 22, 27];
const UUID_LEN: usize = 40;

/// The 16 bytes a `GPU-` UUID of 32 lowercase hex digits in the 8-4-4-4-12 form spells.
fn packed_uuid(s: &[u8]) -> Option<[u8; 16]> {
    if s.len() != UUID_LEN || !s.starts_with(b"GPU-") || UUID_DASHES.iter().any(|&i| s[i] != b'-') {
        return None;
    }
    let mut digits = [0u8; 32];
    let hex = s[4..]
        .iter()
        .enumerate()
        .filter(|(i, _)| !UUID_DASHES.contains(&(i + 4)))
        .map(|(_, c)| *c);
    for (slot, c) in digits.iter_mut().zip(hex) {
        *slot = c;
    }
    hex_bytes(&digits)
}

fn unpacked_uuid(raw: &[u8]) -> String {
    let mut s = String::with_capacity(UUID_LEN);
    s.push_str("GPU-");
    for (i, b) in raw.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        push_hex(&mut s, *b);
    }
    s
}

fn read_plain_strings(input: &mut Input<'_>) -> Result<Vec<String>, BatchError> {
    let count = input.count()?;
    let mut strings = Vec::with_capacity(count);
    for _ in 0..count {
        strings.push(input.text()?.to_owned());
    }
    Ok(strings)
}

fn read_sorted_strings(input: &mut Input<'_>) -> Result<Vec<String>, BatchError> {
    let count = input.count()?;
    let mut strings: Vec<String> = Vec::with_capacity(count);
    for _ in 0..count {
        let header = input.varint()?;
        let s = if header == PACKED_UUID {
            unpacked_uuid(input.take(16)?)
        } else if header & 1 == 1 {
            return Err(input.error(format!("string header {header} has no meaning")));
        } else {
            let previous = strings.last().map_or("", String::as_str).as_bytes();
            let shared = usize::try_from(header >> 1)
                .ok()
                .filter(|&n| n <= previous.len())
                .ok_or_else(|| {
                    input.error(format!(
                        "a string shares {} bytes with a previous string of {}",
                        header >> 1,
                        previous.len()
                    ))
                })?;
            let len = input.count()?;
            let mut bytes = Vec::with_capacity(shared + len);
            bytes.extend_from_slice(&previous[..shared]);
            bytes.extend_from_slice(input.take(len)?);
            String::from_utf8(bytes).map_err(|_| input.error("a string is not UTF-8"))?
        };
        strings.push(s);
    }
    Ok(strings)
}

/// A row column of table indexes: a mode byte, then either every index (mode 0) or, when it is
/// shorter, runs of indexes that step by a constant (mode 1: count, then each run's first index,
/// zigzag step and length). Rows of one pass cycle through a shard's GPUs within each metric,
/// so both columns are a few runs.
fn put_index_column(out: &mut Vec<u8>, column: &[u32]) {
    let mut runs = Vec::new();
    let mut count = 0u64;
    let mut at = 0;
    while at < column.len() {
        let first = column[at];
        let step = column
            .get(at + 1)
            .map_or(0, |next| i64::from(*next) - i64::from(first));
        let mut len = 1;
        while column
            .get(at + len)
            .is_some_and(|v| i64::from(*v) == i64::from(first) + step * len as i64)
        {
            len += 1;
        }
        put_varint(&mut runs, u64::from(first));
        put_varint(&mut runs, zigzag(step));
        put_varint(&mut runs, len as u64);
        count += 1;
        at += len;
    }
    let plain: usize = column.iter().map(|v| varint_len(u64::from(*v))).sum();
    if varint_len(count) + runs.len() < plain {
        out.push(RUNS_COLUMN);
        put_varint(out, count);
        out.extend_from_slice(&runs);
    } else {
        out.push(PLAIN_COLUMN);
        for v in column {
            put_varint(out, u64::from(*v));
        }
    }
}

const PLAIN_COLUMN: u8 = 0;
const RUNS_COLUMN: u8 = 1;

fn read_plain_column(input: &mut Input<'_>, n: usize) -> Result<Vec<u32>, BatchError> {
    (0..n).map(|_| input.index_u32()).collect()
}

fn read_index_column(input: &mut Input<'_>, n: usize) -> Result<Vec<u32>, BatchError> {
    match input.byte()? {
        PLAIN_COLUMN => read_plain_column(input, n),
        RUNS_COLUMN => {
            let count = input.count()?;
            let mut column = Vec::with_capacity(n);
            for _ in 0..count {
                let first = i64::from(input.index_u32()?);
                let step = unzigzag(input.varint()?);
                let len = input.varint()?;
                if len == 0 || len > (n - column.len()) as u64 {
                    return Err(input.error(format!(
                        "a run of {len} does not fit the {} rows left",
                        n - column.len()
                    )));
                }
                for i in 0..len as i64 {
                    let index = step
                        .checked_mul(i)
                        .and_then(|d| d.checked_add(first))
                        .and_then(|v| u32::try_from(v).ok())
                        .ok_or_else(|| input.error("a run steps out of the index range"))?;
                    column.push(index);
                }
            }
            if column.len() != n {
                return Err(input.error(format!("runs cover {} of {n} rows", column.len())));
            }
            Ok(column)
        }
        mode => Err(input.error(format!("unknown column mode {mode}"))),
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
    use std::collections::HashMap;

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
        other_version[0] = 3;
        assert!(matches!(
            decode(&other_version),
            Err(BatchError::DecodeColumnar { offset: 1, .. })
        ));
        // A huge count cannot make the decoder allocate for it.
        assert!(decode(&[1, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn index_columns_are_runs_when_that_is_shorter() {
        let column = |values: &[u32]| {
            let mut out = Vec::new();
            put_index_column(&mut out, values);
            let mut input = Input::new(&out, columnar_error);
            assert_eq!(read_index_column(&mut input, values.len()).unwrap(), values);
            input.finish("trailing").unwrap();
            out
        };
        // A shard's pass: GPUs cycle within each metric, metrics in runs.
        let gpus: Vec<u32> = (0..10).flat_map(|_| 0..13).collect();
        let metrics: Vec<u32> = (0..10).flat_map(|m| [m; 13]).collect();
        let runs = |first: u8, step: u8, len: u8| [first, step, len];
        let expected_gpus: Vec<u8> = [RUNS_COLUMN, 10]
            .into_iter()
            .chain((0..10).flat_map(|_| runs(0, 2, 13)))
            .collect();
        assert_eq!(column(&gpus), expected_gpus);
        let expected_metrics: Vec<u8> = [RUNS_COLUMN, 10]
            .into_iter()
            .chain((0..10).flat_map(|m| runs(m, 0, 13)))
            .collect();
        assert_eq!(column(&metrics), expected_metrics);
        assert_eq!(column(&[3, 1, 4, 1, 5]), [PLAIN_COLUMN, 3, 1, 4, 1, 5]);
        assert_eq!(column(&[]), [PLAIN_COLUMN]);
        // A step as large as the index range round trips (the helper checks).
        assert_eq!(column(&[u32::MAX, 0]).len(), 1 + 5 + 1);

        let bad = |bytes: &[u8], n: usize| {
            let mut input = Input::new(bytes, columnar_error);
            read_index_column(&mut input, n).unwrap_err().to_string()
        };
        assert!(bad(&[RUNS_COLUMN, 1, 0, 0, 3], 2).contains("does not fit"));
        assert!(bad(&[RUNS_COLUMN, 1, 0, 0, 0], 2).contains("does not fit"));
        assert!(bad(&[RUNS_COLUMN, 1, 0, 0, 1], 2).contains("cover 1 of 2"));
        assert!(bad(&[RUNS_COLUMN, 1, 0, 1, 2], 2).contains("index range"));
        assert!(bad(&[9], 0).contains("column mode"));
    }

    #[test]
    fn strings_are_sorted_front_coded_and_uuids_packed() {
        let mut builder = SampleBatch::builder();
        let util = MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap();
        let temp = MetricName::parse("DCGM_FI_DEV_GPU_TEMP").unwrap();
        builder.push(&full_gpu(), &util, TimestampMicros(1), 1.0);
        builder.push(&full_gpu(), &temp, TimestampMicros(2), 1.0);
        let batch = builder.build();
        let strings = SortedStrings::of(&batch);
        assert!(strings.sorted.windows(2).all(|w| w[0] < w[1]));
        let mut out = Vec::new();
        strings.encode(&mut out);
        let mut input = Input::new(&out, columnar_error);
        let back = read_sorted_strings(&mut input).unwrap();
        input.finish("trailing").unwrap();
        assert_eq!(back, strings.sorted);
        // "DCGM_FI_DEV_GPU_UTIL" follows "DCGM_FI_DEV_GPU_TEMP": 16 bytes shared, 4 written.
        let temp_at = out
            .windows(4)
            .position(|w| w == b"TEMP")
            .expect("the first metric in full");
        assert_eq!(&out[temp_at + 4..temp_at + 8], &[16 << 1, 4, b'U', b'T']);
        let uuid = packed_uuid(b"GPU-5fd4f087-86f3-7a43-b711-4771313afc50").unwrap();
        assert_eq!(
            unpacked_uuid(&uuid),
            "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"
        );
        for other in [
            "GPU-5FD4F087-86f3-7a43-b711-4771313afc50",
            "GPU-5fd4f087-86f3-7a43-b711-4771313afc5",
            "GPU-5fd4f087x86f3-7a43-b711-4771313afc50",
            "MIG-5fd4f087-86f3-7a43-b711-4771313afc50",
            "GPU-5fd4f08786f37a43b7114771313afc50abcd",
        ] {
            assert_eq!(packed_uuid(other.as_bytes()), None, "{other}");
        }
        let bad = |bytes: &[u8]| {
            let mut input = Input::new(bytes, columnar_error);
            read_sorted_strings(&mut input).unwrap_err().to_string()
        };
        assert!(bad(&[1, 2 << 1, 1, b'a']).contains("shares 2 bytes"));
        assert!(bad(&[1, 3]).contains("has no meaning"));
        assert!(bad(&[1, 0, 1, 0xff]).contains("not UTF-8"));
    }

    /// A message a streamer of the first layout wrote to the queue (shard 5's rows of one pass
    /// of the real CSV): it still decodes, to exactly the CSV's values, and re-encodes smaller.
    #[test]
    fn the_first_layout_still_decodes() {
        use crate::csv_reader::{DcgmCsvReader, RowOutcome};
        let message =
            std::fs::read(test_support::testdata("queue-message-columnar-v1.json")).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&message).unwrap();
        use base64::Engine as _;
        let v1 = base64::engine::general_purpose::STANDARD
            .decode(json["data_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(v1[0], VERSION_1);
        let batch = decode(&v1).unwrap();
        assert_eq!(
            (batch.len(), batch.gpus.len(), batch.metrics.len()),
            (130, 13, 10)
        );
        let mut csv = HashMap::new();
        for outcome in DcgmCsvReader::open(test_support::testdata(test_support::REAL_CSV)).unwrap()
        {
            let RowOutcome::Row(row) = outcome else {
                panic!("{outcome:?}")
            };
            csv.insert(
                (row.info.uuid.clone(), row.metric.clone()),
                (row.info, row.value),
            );
        }
        for (gpu, metric, _, value) in batch.samples() {
            let (info, expected) = &csv[&(gpu.uuid.clone(), metric.clone())];
            assert_eq!((gpu, value.to_bits()), (info, expected.to_bits()));
        }
        let v2 = encode(&batch);
        assert_eq!(v2[0], VERSION);
        assert_eq!(decode(&v2).unwrap(), batch);
        assert!(
            v2.len() * 10 < v1.len() * 6,
            "v2 {} bytes, v1 {}",
            v2.len(),
            v1.len()
        );
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
