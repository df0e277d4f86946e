//! Compressed sample chunk: the samples of one GPU (several metrics) over a bounded time span, and
//! its binary codec. This module holds the chunk format itself (header, series table, [`Chunk`],
//! encode and decode); the bit stream is written in layers below it: `bits` (bit and byte
//! cursors, varints, zigzag), `int_coding` (predictors, Rice codes, integer streams),
//! `timestamps` and `values` (decimal and XOR modes), each documenting its part of the format.
//!
//! # Format (version 1)
//!
//! All fixed-width integers are little-endian; `varint` is unsigned LEB128.
//!
//! ```text
//! offset  size  field
//! 0       1     version (1)
//! 1       4     u32 sample count
//! 5       8     i64 min timestamp (µs; 0 when the chunk is empty)
//! 13      8     i64 max timestamp (µs; 0 when the chunk is empty)
//! 21      4     crc32 of bytes 0..21          (lets a reader trust the header without decoding)
//! 25      ..    series table:
//!                 varint series count
//!                 per series, in ascending name order (names unique):
//!                   varint shared prefix length with the previous name (bytes, <= 64)
//!                   varint suffix length, suffix bytes (the name is UTF-8)
//!                   varint sample count (>= 1)
//! ..      ..    bit stream (most significant bit first), per series in table order:
//!                 timestamps, then values (see `timestamps`, `values`); zero bits pad the last byte
//! end-4   4     crc32 of every byte before it
//! ```
//!
//! Encoding is deterministic: series order is name order, samples inside a series are sorted by
//! timestamp stably on push order, and every choice above is a pure function of the samples (each
//! priced on the series' planning prefix, `plan`), whether or not the plans were reused.

mod bits;
mod int_coding;
mod plan;
mod timestamps;
mod values;

use std::sync::Arc;

pub(crate) use bits::{unzigzag, write_varint, zigzag, ByteCursor};
use bits::{BitReader, BitWriter};
use int_coding::EncodeScratch;
use timestamps::{decode_timestamps, encode_timestamps, TimestampPlans};
use values::{decode_values, encode_values, ValueCoding};

/// The format version written by [`Chunk::encode`].
pub(crate) const CHUNK_FORMAT_VERSION: u8 = 1;

/// Bytes of the fixed header that [`read_chunk_header`] reads.
pub(crate) const CHUNK_HEADER_LEN: usize = 25;

const CHECKSUM_LEN: usize = 4;
const HEADER_CRC_OFFSET: usize = 21;
/// Every sample costs at least one timestamp bit and one value bit; bounds allocations on decode.
const MIN_BITS_PER_SAMPLE: u64 = 2;
/// Front coding shares at most this many name bytes, so crafted bytes cannot make the decoder
/// build names far larger than its input (each name is at most this plus its stored suffix).
const MAX_SHARED_NAME_PREFIX: usize = 64;

/// Why a chunk could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The bytes end before the structure they describe does.
    #[error("chunk is truncated")]
    Truncated,
    /// The version byte is not one this code can read.
    #[error("unknown chunk format version {0}")]
    UnknownVersion(u8),
    /// The bytes pass the checksum but describe an impossible chunk.
    #[error("chunk is corrupt: {0}")]
    Corrupt(&'static str),
    /// A stored crc32 does not match the bytes it covers.
    #[error("chunk checksum mismatch")]
    ChecksumMismatch,
}

/// One sample of a chunk, as returned by queries.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkSample {
    pub metric: Arc<str>,
    pub timestamp_us: i64,
    pub value: f64,
}

/// The fixed header of an encoded chunk, readable without decoding the samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkHeader {
    pub samples: u32,
    /// 0 when `samples == 0`.
    pub min_timestamp_us: i64,
    /// 0 when `samples == 0`.
    pub max_timestamp_us: i64,
}

impl ChunkHeader {
    /// Whether the chunk may hold samples with `start_us <= ts <= end_us`. Readers select chunks
    /// by the time range in their keys instead; tests check the header through this.
    #[cfg(test)]
    fn overlaps(&self, start_us: i64, end_us: i64) -> bool {
        self.samples > 0 && start_us <= self.max_timestamp_us && self.min_timestamp_us <= end_us
    }
}

/// The samples of one metric, sorted by timestamp (stable on push order).
#[derive(Debug, Clone, PartialEq)]
struct Series {
    name: Arc<str>,
    timestamps: Vec<i64>,
    values: Vec<f64>,
}

/// The encoding plans of one series and the streams written with them, kept between encodes of
/// a chunk that keeps growing.
#[derive(Debug, Clone, Default)]
struct SeriesPlans {
    timestamps: TimestampPlans,
    values: ValueCoding,
}

/// The samples of one GPU: several metrics over a bounded time span.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    /// Sorted by name, names unique, none empty of samples.
    series: Vec<Series>,
    len: usize,
    min_timestamp_us: Option<i64>,
    max_timestamp_us: Option<i64>,
    /// Plans of the last [`Chunk::encode_reusing_plans`] and the bits written with them, index for
    /// index with `series`; empty once a push changed what they were made from (an insert before
    /// a series' end, a new series, a new minimum timestamp), as appends never do. Derived from
    /// the samples: not part of the value.
    plans: Vec<SeriesPlans>,
}

impl PartialEq for Chunk {
    fn eq(&self, other: &Self) -> bool {
        self.series == other.series
            && self.len == other.len
            && self.min_timestamp_us == other.min_timestamp_us
            && self.max_timestamp_us == other.max_timestamp_us
    }
}

impl Chunk {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sample. Samples may come in any order; a sample with the same metric and timestamp as
    /// an earlier one is kept after it (callers keep samples unique).
    pub fn push(&mut self, metric: &str, timestamp_us: i64, value: f64) {
        let index = match self
            .series
            .binary_search_by(|series| series.name.as_ref().cmp(metric))
        {
            Ok(index) => index,
            Err(index) => {
                self.plans.clear();
                self.series.insert(
                    index,
                    Series {
                        name: Arc::from(metric),
                        timestamps: Vec::new(),
                        values: Vec::new(),
                    },
                );
                index
            }
        };
        let series = &mut self.series[index];
        if series
            .timestamps
            .last()
            .is_none_or(|&last| last <= timestamp_us)
        {
            series.timestamps.push(timestamp_us);
            series.values.push(value);
        } else {
            let at = series.timestamps.partition_point(|&ts| ts <= timestamp_us);
            series.timestamps.insert(at, timestamp_us);
            series.values.insert(at, value);
            self.plans.clear();
        }
        if self.min_timestamp_us.is_some_and(|min| timestamp_us < min) {
            // Own-mode timestamps are coded relative to the minimum.
            self.plans.clear();
        }
        self.len += 1;
        self.min_timestamp_us = Some(
            self.min_timestamp_us
                .map_or(timestamp_us, |m| m.min(timestamp_us)),
        );
        self.max_timestamp_us = Some(
            self.max_timestamp_us
                .map_or(timestamp_us, |m| m.max(timestamp_us)),
        );
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn min_timestamp(&self) -> Option<i64> {
        self.min_timestamp_us
    }

    pub fn max_timestamp(&self) -> Option<i64> {
        self.max_timestamp_us
    }

    /// Metric names, ascending.
    pub fn metrics(&self) -> impl Iterator<Item = &str> {
        self.series.iter().map(|series| series.name.as_ref())
    }

    /// Number of samples of one metric (0 when absent). For tests of the series table.
    #[cfg(test)]
    fn metric_len(&self, metric: &str) -> usize {
        self.series
            .binary_search_by(|series| series.name.as_ref().cmp(metric))
            .map_or(0, |index| self.series[index].timestamps.len())
    }

    /// Samples with `start_us <= ts <= end_us`, optionally only of the given metrics (unknown names
    /// are ignored), ordered by (timestamp, metric name); equal pairs keep push order.
    pub fn samples_in(
        &self,
        start_us: i64,
        end_us: i64,
        metrics: Option<&[&str]>,
    ) -> Vec<ChunkSample> {
        let mut out = Vec::new();
        self.visit_in(start_us, end_us, metrics, |series, timestamp_us, value| {
            out.push(ChunkSample {
                metric: Arc::clone(&self.series[series].name),
                timestamp_us,
                value,
            })
        });
        out
    }

    /// Hands the samples [`Chunk::samples_in`] returns to `visit`, in the same order, without
    /// collecting them: the index of the sample's metric in [`Chunk::metrics`], its timestamp
    /// and its value.
    pub fn visit_in(
        &self,
        start_us: i64,
        end_us: i64,
        metrics: Option<&[&str]>,
        mut visit: impl FnMut(usize, i64, f64),
    ) {
        if start_us > end_us {
            return;
        }
        // Each selected series' samples in the window, as a run sorted by timestamp.
        let mut runs: Vec<(usize, &Series, usize, usize)> = self
            .series
            .iter()
            .enumerate()
            .filter(|(_, series)| {
                metrics.is_none_or(|wanted| wanted.contains(&series.name.as_ref()))
            })
            .map(|(index, series)| {
                let from = series.timestamps.partition_point(|&ts| ts < start_us);
                let to = series.timestamps.partition_point(|&ts| ts <= end_us);
                (index, series, from, to)
            })
            .filter(|(_, _, from, to)| from < to)
            .collect();
        // Merging the runs, a tie going to the first in name order, gives (timestamp, name)
        // order without sorting: series share timestamps, and a chunk holds a few of them.
        while !runs.is_empty() {
            let mut best = 0;
            let mut best_ts = runs[0].1.timestamps[runs[0].2];
            for (run, (_, series, at, _)) in runs.iter().enumerate().skip(1) {
                let ts = series.timestamps[*at];
                if ts < best_ts {
                    (best, best_ts) = (run, ts);
                }
            }
            let (index, series, at, to) = &mut runs[best];
            while *at < *to && series.timestamps[*at] == best_ts {
                visit(*index, best_ts, series.values[*at]);
                *at += 1;
            }
            if *at == *to {
                runs.remove(best);
            }
        }
    }

    /// The columns [`Chunk::visit_in`] merges, taken out of the chunk: each selected series with
    /// its samples in `[start_us, end_us]`, in time order (equal timestamps in push order), in
    /// name order; series without samples there are left out. For reads that want samples per
    /// metric, which need no merge.
    pub fn into_series_in<'a>(
        self,
        start_us: i64,
        end_us: i64,
        metrics: Option<&'a [&'a str]>,
    ) -> impl Iterator<Item = (Arc<str>, Vec<i64>, Vec<f64>)> + 'a {
        self.series
            .into_iter()
            .filter(move |series| {
                start_us <= end_us
                    && metrics.is_none_or(|wanted| wanted.contains(&series.name.as_ref()))
            })
            .filter_map(move |mut series| {
                let from = series.timestamps.partition_point(|&ts| ts < start_us);
                let to = series.timestamps.partition_point(|&ts| ts <= end_us);
                if from == to {
                    return None;
                }
                series.timestamps.truncate(to);
                series.values.truncate(to);
                series.timestamps.drain(..from);
                series.values.drain(..from);
                Some((series.name, series.timestamps, series.values))
            })
    }

    /// The sample with the largest timestamp of each metric (the last pushed among equals), in
    /// metric name order. For tests of series order (the registry keeps the latest values).
    #[cfg(test)]
    fn latest_per_metric(&self) -> Vec<ChunkSample> {
        self.series
            .iter()
            .filter_map(|series| {
                Some(ChunkSample {
                    metric: Arc::clone(&series.name),
                    timestamp_us: *series.timestamps.last()?,
                    value: *series.values.last()?,
                })
            })
            .collect()
    }

    /// Encodes the chunk in the format described at the top of this module.
    ///
    /// # Panics
    /// If the chunk holds more than `u32::MAX` samples (chunks are sealed at a few thousand).
    pub fn encode(&self) -> Vec<u8> {
        let mut plans = Vec::new();
        self.encode_with(&mut plans)
    }

    /// Encodes the chunk as [`Chunk::encode`] does (to the same bytes), reusing the plans of the
    /// previous call where the samples they were priced on are unchanged, and the bits written
    /// with them: only the samples added since are written. For a chunk that is re-encoded as it
    /// grows (the open chunk, on every commit).
    pub fn encode_reusing_plans(&mut self) -> Vec<u8> {
        let mut plans = std::mem::take(&mut self.plans);
        let bytes = self.encode_with(&mut plans);
        self.plans = plans;
        bytes
    }

    fn encode_with(&self, plans: &mut Vec<SeriesPlans>) -> Vec<u8> {
        plans.resize_with(self.series.len(), SeriesPlans::default);
        let samples = u32::try_from(self.len).expect("a chunk holds at most u32::MAX samples");
        let min_ts = self.min_timestamp_us.unwrap_or(0);
        let max_ts = self.max_timestamp_us.unwrap_or(0);

        let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + 64 * self.series.len() + self.len * 2);
        out.push(CHUNK_FORMAT_VERSION);
        out.extend_from_slice(&samples.to_le_bytes());
        out.extend_from_slice(&min_ts.to_le_bytes());
        out.extend_from_slice(&max_ts.to_le_bytes());
        let header_crc = crc32fast::hash(&out[..HEADER_CRC_OFFSET]);
        out.extend_from_slice(&header_crc.to_le_bytes());

        write_varint(&mut out, self.series.len() as u64);
        let mut previous_name: &[u8] = &[];
        for series in &self.series {
            let name = series.name.as_bytes();
            let shared = name
                .iter()
                .zip(previous_name)
                .take_while(|(a, b)| a == b)
                .count()
                .min(MAX_SHARED_NAME_PREFIX);
            write_varint(&mut out, shared as u64);
            write_varint(&mut out, (name.len() - shared) as u64);
            out.extend_from_slice(&name[shared..]);
            write_varint(&mut out, series.timestamps.len() as u64);
            previous_name = name;
        }

        let mut bits = BitWriter::new(out);
        let mut scratch = EncodeScratch::default();
        for (index, (series, plans)) in self.series.iter().zip(plans.iter_mut()).enumerate() {
            encode_timestamps(
                &mut bits,
                &self.series,
                index,
                min_ts,
                &mut plans.timestamps,
                &mut scratch,
            );
            encode_values(&mut bits, &series.values, &mut plans.values, &mut scratch);
        }
        let mut out = bits.finish();
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes bytes written by [`Chunk::encode`]. Never panics, whatever the bytes; damaged bytes
    /// fail the checksums, and bytes that pass them but break the format are [`ChunkError::Corrupt`].
    pub fn decode(bytes: &[u8]) -> Result<Chunk, ChunkError> {
        let header = read_chunk_header(bytes)?;
        if bytes.len() < CHUNK_HEADER_LEN + CHECKSUM_LEN {
            return Err(ChunkError::Truncated);
        }
        let (content, stored_crc) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if crc32fast::hash(content) != read_u32(stored_crc, 0)? {
            return Err(ChunkError::ChecksumMismatch);
        }
        let mut cursor = ByteCursor::new(content, CHUNK_HEADER_LEN);

        let series_count = cursor.varint()?;
        if series_count > u64::from(header.samples) {
            return Err(ChunkError::Corrupt("more series than samples"));
        }
        let mut table: Vec<(Arc<str>, usize)> = Vec::new();
        let mut previous_name: Vec<u8> = Vec::new();
        let mut total: u64 = 0;
        for _ in 0..series_count {
            let shared = usize::try_from(cursor.varint()?)
                .map_err(|_| ChunkError::Corrupt("name prefix too long"))?;
            if shared > previous_name.len() || shared > MAX_SHARED_NAME_PREFIX {
                return Err(ChunkError::Corrupt("name prefix longer than allowed"));
            }
            let suffix_len =
                usize::try_from(cursor.varint()?).map_err(|_| ChunkError::Truncated)?;
            let suffix = cursor.take(suffix_len)?;
            let mut name = previous_name[..shared].to_vec();
            name.extend_from_slice(suffix);
            if !table.is_empty() && name <= previous_name {
                return Err(ChunkError::Corrupt("series names not strictly ascending"));
            }
            let count = cursor.varint()?;
            if count == 0 {
                return Err(ChunkError::Corrupt("empty series"));
            }
            total = total.saturating_add(count);
            if total > u64::from(header.samples) {
                return Err(ChunkError::Corrupt(
                    "series hold more samples than the header",
                ));
            }
            let text = std::str::from_utf8(&name)
                .map_err(|_| ChunkError::Corrupt("series name is not UTF-8"))?;
            // `count <= total <= header.samples`, a u32, so the cast cannot truncate.
            table.push((Arc::from(text), count as usize));
            previous_name = name;
        }
        if total != u64::from(header.samples) {
            return Err(ChunkError::Corrupt(
                "series hold fewer samples than the header",
            ));
        }
        let stream = &content[cursor.position()..];
        if total.saturating_mul(MIN_BITS_PER_SAMPLE) > stream.len() as u64 * 8 {
            return Err(ChunkError::Truncated);
        }

        let mut bits = BitReader::new(stream);
        let mut series: Vec<Series> = Vec::with_capacity(table.len());
        let mut min_ts = i64::MAX;
        let mut max_ts = i64::MIN;
        for (name, count) in table {
            let timestamps = decode_timestamps(&mut bits, &series, count, header.min_timestamp_us)?;
            if let (Some(&first), Some(&last)) = (timestamps.first(), timestamps.last()) {
                min_ts = min_ts.min(first);
                max_ts = max_ts.max(last);
            }
            let values = decode_values(&mut bits, count)?;
            series.push(Series {
                name,
                timestamps,
                values,
            });
        }
        bits.expect_padding()?;

        let len = header.samples as usize;
        let (min_timestamp_us, max_timestamp_us) = if len == 0 {
            (None, None)
        } else {
            if min_ts != header.min_timestamp_us || max_ts != header.max_timestamp_us {
                return Err(ChunkError::Corrupt(
                    "header time range disagrees with samples",
                ));
            }
            (Some(min_ts), Some(max_ts))
        };
        Ok(Chunk {
            series,
            len,
            min_timestamp_us,
            max_timestamp_us,
            plans: Vec::new(),
        })
    }
}

/// Reads the fixed header of an encoded chunk in O(1), checking its own crc32 (not the samples').
pub(crate) fn read_chunk_header(bytes: &[u8]) -> Result<ChunkHeader, ChunkError> {
    let version = *bytes.first().ok_or(ChunkError::Truncated)?;
    if version != CHUNK_FORMAT_VERSION {
        return Err(ChunkError::UnknownVersion(version));
    }
    if bytes.len() < CHUNK_HEADER_LEN {
        return Err(ChunkError::Truncated);
    }
    if crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]) != read_u32(bytes, HEADER_CRC_OFFSET)? {
        return Err(ChunkError::ChecksumMismatch);
    }
    let header = ChunkHeader {
        samples: read_u32(bytes, 1)?,
        min_timestamp_us: read_i64(bytes, 5)?,
        max_timestamp_us: read_i64(bytes, 13)?,
    };
    if header.samples == 0 && (header.min_timestamp_us != 0 || header.max_timestamp_us != 0) {
        return Err(ChunkError::Corrupt("empty chunk with a time range"));
    }
    if header.min_timestamp_us > header.max_timestamp_us {
        return Err(ChunkError::Corrupt("min timestamp after max timestamp"));
    }
    Ok(header)
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, ChunkError> {
    ByteCursor::new(bytes, at).array().map(u32::from_le_bytes)
}

fn read_i64(bytes: &[u8], at: usize) -> Result<i64, ChunkError> {
    ByteCursor::new(bytes, at).array().map(i64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Path, PathBuf};
    use test_support::SplitMix;

    const CSV_NAME: &str = "dcgm_metrics_20250718_134233.csv";
    /// 2025-07-18T20:42:34Z, the first timestamp of the real CSV.
    pub(super) const FEED_START_US: i64 = 1_752_871_354_000_000;

    /// The real data set, kept in the repository's `testdata/`.
    fn real_csv_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata")
            .join(CSV_NAME)
    }

    /// (gpu uuid, metric, value) per CSV row, in file order.
    fn real_csv_rows() -> Vec<(String, String, f64)> {
        let mut reader = csv::Reader::from_path(real_csv_path()).expect("open the DCGM CSV");
        reader
            .records()
            .map(|record| {
                let record = record.expect("CSV row");
                let value = record[10].parse::<f64>().expect("numeric value");
                (record[4].to_string(), record[1].to_string(), value)
            })
            .collect()
    }

    /// One chunk per GPU from the CSV streamed `passes` times: a pass every second plus up to 2 ms
    /// of jitter, rows 4-6 µs apart inside a pass, as the streamer stamps them.
    fn feed_chunks(rows: &[(String, String, f64)], passes: i64) -> Vec<Chunk> {
        feed_passes(rows, passes, |_, _| {})
    }

    /// [`feed_chunks`], handing the chunks to `after_pass` after each pass.
    fn feed_passes(
        rows: &[(String, String, f64)],
        passes: i64,
        mut after_pass: impl FnMut(i64, &mut [Chunk]),
    ) -> Vec<Chunk> {
        let mut rng = SplitMix::new(42);
        let mut gpus: Vec<&str> = rows.iter().map(|(gpu, _, _)| gpu.as_str()).collect();
        gpus.sort_unstable();
        gpus.dedup();
        let mut chunks = vec![Chunk::new(); gpus.len()];
        for pass in 0..passes {
            let mut ts = FEED_START_US + pass * 1_000_000 + rng.below(2_001);
            for (gpu, metric, value) in rows {
                let index = gpus.binary_search(&gpu.as_str()).unwrap();
                chunks[index].push(metric, ts, *value);
                ts += 4 + rng.below(3);
            }
            after_pass(pass, &mut chunks);
        }
        chunks
    }

    pub(super) fn assert_round_trip(chunk: &Chunk) -> Vec<u8> {
        let bytes = chunk.encode();
        let decoded = Chunk::decode(&bytes).expect("decode what encode wrote");
        assert_eq!(decoded.len(), chunk.len());
        assert_eq!(decoded.min_timestamp(), chunk.min_timestamp());
        assert_eq!(decoded.max_timestamp(), chunk.max_timestamp());
        assert!(decoded.metrics().eq(chunk.metrics()));
        let has_nan = chunk
            .series
            .iter()
            .any(|s| s.values.iter().any(|v| v.is_nan()));
        if !has_nan {
            assert_eq!(&decoded, chunk);
        }
        let original = chunk.samples_in(i64::MIN, i64::MAX, None);
        let restored = decoded.samples_in(i64::MIN, i64::MAX, None);
        assert_eq!(original.len(), restored.len());
        for (a, b) in original.iter().zip(&restored) {
            assert_eq!((&a.metric, a.timestamp_us), (&b.metric, b.timestamp_us));
            assert_eq!(a.value.to_bits(), b.value.to_bits(), "value of {a:?}");
        }
        assert_eq!(
            decoded.encode(),
            bytes,
            "re-encoding a decoded chunk changes its bytes"
        );
        bytes
    }

    #[test]
    fn real_feed_looped_150_times_compresses_to_at_most_4_bytes_per_sample() {
        let rows = real_csv_rows();
        assert_eq!(rows.len(), 2_470);
        let chunks = feed_chunks(&rows, 150);
        assert_eq!(chunks.len(), 247);
        let mut total_bytes = 0;
        let mut worst: f64 = 0.0;
        for chunk in &chunks {
            assert_eq!(chunk.len(), 1_500);
            assert_eq!(chunk.metrics().count(), 10);
            let bytes = assert_round_trip(chunk);
            total_bytes += bytes.len();
            worst = worst.max(bytes.len() as f64 / chunk.len() as f64);
        }
        let per_sample = total_bytes as f64 / (chunks.len() * 1_500) as f64;
        println!(
            "real feed x150: {total_bytes} bytes for {} samples = {per_sample:.3} bytes/sample \
             (worst GPU {worst:.3})",
            chunks.len() * 1_500
        );
        assert!(per_sample <= 4.0, "{per_sample} bytes/sample");
        assert!(worst <= 4.0, "worst GPU {worst} bytes/sample");
    }

    /// 10 metrics like the feed but every value moving: random walks in W with 3 decimals,
    /// fluctuating integers, and arbitrary floats.
    fn varying_chunk(passes: i64, seed: u64) -> Chunk {
        let mut rng = SplitMix::new(seed);
        let mut chunk = Chunk::new();
        let mut power = [312_457i64, 98_020, 451_003];
        let mut memory_used = 24_343i64;
        let mut drift = 0.5f64;
        for pass in 0..passes {
            let mut row: Vec<(&str, f64)> = Vec::new();
            for (index, milliwatts) in power.iter_mut().enumerate() {
                *milliwatts = (*milliwatts + rng.below(40_001) - 20_000).max(0);
                let name = ["power_a", "power_b", "power_c"][index];
                row.push((name, *milliwatts as f64 / 1_000.0));
            }
            memory_used += rng.below(201) - 100;
            drift += (rng.below(1_001) - 500) as f64 * 1e-4;
            row.push(("fb_used", memory_used as f64));
            row.push(("fb_free", (81_559 - memory_used) as f64));
            row.push(("gpu_util", rng.below(101) as f64));
            row.push(("gpu_temp", 30.0 + (pass / 17) as f64));
            row.push(("sm_clock", [345.0, 1_965.0, 1_980.0][rng.below(3) as usize]));
            row.push(("drift", drift));
            let mut ts = FEED_START_US + pass * 1_000_000 + rng.below(2_001);
            for (metric, value) in row {
                chunk.push(metric, ts, value);
                ts += 247 * (4 + rng.below(3));
            }
        }
        chunk
    }

    #[test]
    fn varying_values_round_trip_and_compress() {
        let chunk = varying_chunk(150, 7);
        assert_eq!(chunk.len(), 1_350);
        assert_eq!(chunk.metrics().count(), 9);
        let bytes = assert_round_trip(&chunk);
        let per_sample = bytes.len() as f64 / chunk.len() as f64;
        println!(
            "varying values: {} bytes = {per_sample:.3} bytes/sample",
            bytes.len()
        );
        assert!(per_sample <= 4.0, "{per_sample} bytes/sample");
    }

    #[test]
    fn extreme_values_and_timestamps_round_trip_bit_exact() {
        let values = [
            -0.0,
            0.0,
            f64::MIN_POSITIVE / 3.0,
            -f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            1e-300,
            123_456.789,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::from_bits(0x7ff8_dead_beef_0001),
        ];
        let timestamps = [i64::MIN, -1, 0, 1, i64::MAX, i64::MIN + 1, i64::MAX - 1];
        let mut chunk = Chunk::new();
        for (k, &value) in values.iter().enumerate() {
            chunk.push("x", timestamps[k % timestamps.len()], value);
            chunk.push("y", timestamps[(k * 3) % timestamps.len()], value);
        }
        assert_eq!(chunk.len(), 24);
        assert_eq!(chunk.min_timestamp(), Some(i64::MIN));
        assert_eq!(chunk.max_timestamp(), Some(i64::MAX));
        assert_round_trip(&chunk);
        let header = read_chunk_header(&chunk.encode()).unwrap();
        assert_eq!(
            header,
            ChunkHeader {
                samples: 24,
                min_timestamp_us: i64::MIN,
                max_timestamp_us: i64::MAX
            }
        );
    }

    #[test]
    fn empty_chunk_round_trips_and_its_header_overlaps_nothing() {
        let chunk = Chunk::new();
        let bytes = assert_round_trip(&chunk);
        assert_eq!(bytes.len(), CHUNK_HEADER_LEN + 1 + CHECKSUM_LEN);
        let header = read_chunk_header(&bytes).unwrap();
        assert_eq!(
            header,
            ChunkHeader {
                samples: 0,
                min_timestamp_us: 0,
                max_timestamp_us: 0
            }
        );
        assert!(!header.overlaps(i64::MIN, i64::MAX));
        let decoded = Chunk::decode(&bytes).unwrap();
        assert!(decoded.is_empty());
        assert_eq!(decoded.min_timestamp(), None);
        assert_eq!(decoded.metrics().count(), 0);
        assert_eq!(decoded.latest_per_metric(), vec![]);
    }

    #[test]
    fn header_overlaps_is_inclusive_at_both_ends() {
        let header = ChunkHeader {
            samples: 3,
            min_timestamp_us: 10,
            max_timestamp_us: 20,
        };
        assert!(header.overlaps(20, 30));
        assert!(header.overlaps(0, 10));
        assert!(header.overlaps(12, 13));
        assert!(!header.overlaps(21, 30));
        assert!(!header.overlaps(0, 9));
    }

    #[test]
    fn out_of_order_pushes_are_sorted_stably_and_queries_order_by_time_then_name() {
        let mut chunk = Chunk::new();
        chunk.push("temp", 30, 3.0);
        chunk.push("util", 10, 1.0);
        chunk.push("temp", 10, 1.5);
        chunk.push("temp", 30, 3.5); // duplicate timestamp: kept after the first
        chunk.push("power", 20, 2.0);
        chunk.push("temp", 20, 2.5);
        assert_eq!(chunk.len(), 6);
        assert_eq!(
            chunk.metrics().collect::<Vec<_>>(),
            ["power", "temp", "util"]
        );
        assert_eq!(chunk.metric_len("temp"), 4);
        assert_eq!(chunk.metric_len("absent"), 0);
        let got: Vec<(String, i64, f64)> = chunk
            .samples_in(10, 30, None)
            .into_iter()
            .map(|s| (s.metric.to_string(), s.timestamp_us, s.value))
            .collect();
        let want: Vec<(String, i64, f64)> = [
            ("temp", 10, 1.5),
            ("util", 10, 1.0),
            ("power", 20, 2.0),
            ("temp", 20, 2.5),
            ("temp", 30, 3.0),
            ("temp", 30, 3.5),
        ]
        .into_iter()
        .map(|(m, t, v)| (m.to_string(), t, v))
        .collect();
        assert_eq!(got, want);

        let filtered: Vec<(i64, f64)> = chunk
            .samples_in(11, 30, Some(&["temp", "absent", "temp"]))
            .into_iter()
            .map(|s| (s.timestamp_us, s.value))
            .collect();
        assert_eq!(filtered, [(20, 2.5), (30, 3.0), (30, 3.5)]);
        assert_eq!(chunk.samples_in(30, 10, None), vec![]);

        let latest: Vec<(String, i64, f64)> = chunk
            .latest_per_metric()
            .into_iter()
            .map(|s| (s.metric.to_string(), s.timestamp_us, s.value))
            .collect();
        assert_eq!(
            latest,
            [
                ("power".to_string(), 20, 2.0),
                ("temp".to_string(), 30, 3.5),
                ("util".to_string(), 10, 1.0)
            ]
        );
        assert_round_trip(&chunk);
    }

    #[test]
    fn an_open_chunk_reusing_its_plans_pass_by_pass_writes_fresh_bytes() {
        let rows = real_csv_rows();
        let mut encodes = 0;
        let chunks = feed_passes(&rows[..100], 130, |pass, chunks| {
            for chunk in chunks {
                let reused = chunk.encode_reusing_plans();
                assert_eq!(reused, chunk.encode(), "pass {pass}");
                assert_eq!(&Chunk::decode(&reused).unwrap(), chunk);
                encodes += 1;
            }
        });
        assert_eq!(chunks.iter().map(Chunk::len).sum::<usize>(), 130 * 100);
        assert_eq!(encodes, 130 * chunks.len());
    }

    #[test]
    fn a_reference_that_comes_and_goes_is_priced_once_and_its_stream_taken_up_again() {
        use timestamps::counts::{PRICED, STARTED};
        // "b" follows "a" at a constant offset while "a" jitters: b is cheapest relative to a,
        // which it may use only while both have the same sample count.
        let mut jitter = 17u64;
        let mut next_a = |k: i64| {
            jitter = jitter
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            k * 1_000 + (jitter >> 55) as i64
        };
        let mut chunk = Chunk::new();
        for k in 0..20 {
            let a = next_a(k);
            chunk.push("a", a, 1.0);
            chunk.push("b", a + 7, 2.0);
        }
        let counted = |chunk: &mut Chunk| {
            let before = (PRICED.get(), STARTED.get());
            let reused = chunk.encode_reusing_plans();
            let counts = (PRICED.get() - before.0, STARTED.get() - before.1);
            assert_eq!(reused, chunk.encode(), "the same bytes as a fresh encode");
            counts
        };
        // Own for a; own and relative to a for b (planning prefix 16): three prices, and a
        // stream each.
        assert_eq!(counted(&mut chunk), (3, 2));
        // A commit ending between a's sample and b's, ten times: while b is one sample short it
        // is written on its own (a new stream the first time, then taken up again), and with a
        // again once level. The planning prefix stays 16, so nothing is priced again.
        let mut per_encode = Vec::new();
        for k in 20..30 {
            let a = next_a(k);
            chunk.push("a", a, 1.0);
            per_encode.push(counted(&mut chunk));
            chunk.push("b", a + 7, 2.0);
            per_encode.push(counted(&mut chunk));
        }
        let mut expected = vec![(0, 0); 20];
        expected[0] = (0, 1);
        assert_eq!(per_encode, expected);
        assert_eq!(&Chunk::decode(&chunk.encode()).unwrap(), &chunk);
    }

    #[test]
    fn same_pushes_in_same_order_encode_to_identical_bytes() {
        let rows = real_csv_rows();
        let first = feed_chunks(&rows[..100], 20);
        let second = feed_chunks(&rows[..100], 20);
        assert_eq!(first.len(), second.len());
        for (a, b) in first.iter().zip(&second) {
            assert_eq!(a.encode(), b.encode());
        }
    }

    #[test]
    fn header_errors_are_reported_precisely() {
        let mut chunk = Chunk::new();
        chunk.push("m", 5, 1.0);
        let bytes = chunk.encode();

        assert_eq!(read_chunk_header(&[]), Err(ChunkError::Truncated));
        assert_eq!(
            read_chunk_header(&bytes[..CHUNK_HEADER_LEN - 1]),
            Err(ChunkError::Truncated)
        );
        let mut other_version = bytes.clone();
        other_version[0] = 9;
        assert_eq!(
            read_chunk_header(&other_version),
            Err(ChunkError::UnknownVersion(9))
        );
        assert_eq!(
            Chunk::decode(&other_version),
            Err(ChunkError::UnknownVersion(9))
        );

        let mut flipped_min = bytes.clone();
        flipped_min[6] ^= 1;
        assert_eq!(
            read_chunk_header(&flipped_min),
            Err(ChunkError::ChecksumMismatch)
        );

        let mut flipped_body = bytes.clone();
        flipped_body[CHUNK_HEADER_LEN + 2] ^= 0x10;
        assert!(read_chunk_header(&flipped_body).is_ok());
        assert_eq!(
            Chunk::decode(&flipped_body),
            Err(ChunkError::ChecksumMismatch)
        );

        for len in 0..bytes.len() {
            assert!(
                Chunk::decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
        let mut extended = bytes.clone();
        extended.push(0);
        assert!(Chunk::decode(&extended).is_err());
    }

    #[test]
    fn damage_behind_a_valid_checksum_is_reported_as_corrupt() {
        let mut chunk = Chunk::new();
        chunk.push("a", 5, 1.0);
        chunk.push("b", 6, 2.0);
        let bytes = chunk.encode();
        // Series table: count 2, then ("a": shared 0, len 1, 'a', count 1), ("b": ...).
        assert_eq!(
            &bytes[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + 9],
            &[2, 0, 1, b'a', 1, 0, 1, b'b', 1]
        );
        let mut unsorted = bytes.clone();
        unsorted[CHUNK_HEADER_LEN + 3] = b'c';
        assert_eq!(
            Chunk::decode(&with_fixed_checksums(unsorted)),
            Err(ChunkError::Corrupt("series names not strictly ascending"))
        );
        let mut too_many = bytes.clone();
        too_many[CHUNK_HEADER_LEN + 4] = 2;
        assert_eq!(
            Chunk::decode(&with_fixed_checksums(too_many)),
            Err(ChunkError::Corrupt(
                "series hold more samples than the header"
            ))
        );
        let mut not_utf8 = bytes.clone();
        not_utf8[CHUNK_HEADER_LEN + 3] = 0xff;
        not_utf8[CHUNK_HEADER_LEN + 7] = 0xff;
        not_utf8[CHUNK_HEADER_LEN + 6] = 1;
        not_utf8[CHUNK_HEADER_LEN + 5] = 0;
        assert!(matches!(
            Chunk::decode(&with_fixed_checksums(not_utf8)),
            Err(ChunkError::Corrupt(_))
        ));
    }

    /// Recomputes both crc32s so damage reaches the parser instead of stopping at the checksum.
    fn with_fixed_checksums(mut bytes: Vec<u8>) -> Vec<u8> {
        if bytes.len() >= CHUNK_HEADER_LEN + CHECKSUM_LEN {
            let header_crc = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
            bytes[HEADER_CRC_OFFSET..CHUNK_HEADER_LEN].copy_from_slice(&header_crc.to_le_bytes());
            let body_end = bytes.len() - CHECKSUM_LEN;
            let crc = crc32fast::hash(&bytes[..body_end]);
            bytes[body_end..].copy_from_slice(&crc.to_le_bytes());
        }
        bytes
    }

    fn metric_name() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "",
            "a",
            "ab",
            "b",
            "DCGM_FI_DEV_FB_FREE",
            "DCGM_FI_DEV_FB_USED",
            "DCGM_FI_DEV_POWER_USAGE",
            "température",
        ])
        .prop_map(str::to_string)
    }

    fn timestamp() -> impl Strategy<Value = i64> {
        prop_oneof![
            4 => (0i64..200, 0i64..2_000).prop_map(|(pass, jitter)| FEED_START_US + pass * 1_000_000 + jitter),
            1 => any::<i64>(),
            1 => prop::sample::select(vec![i64::MIN, i64::MAX, 0, -1]),
        ]
    }

    fn finite_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            2 => (-1_000_000i64..1_000_000).prop_map(|m| m as f64 / 1_000.0),
            2 => (0i64..100).prop_map(|v| v as f64),
            1 => prop::sample::select(vec![0.0, -0.0, 1.5, f64::MAX, f64::MIN_POSITIVE / 8.0]),
            2 => prop::num::f64::POSITIVE
                | prop::num::f64::NEGATIVE
                | prop::num::f64::NORMAL
                | prop::num::f64::SUBNORMAL
                | prop::num::f64::ZERO,
        ]
    }

    fn samples() -> impl Strategy<Value = Vec<(String, i64, f64)>> {
        prop::collection::vec((metric_name(), timestamp(), finite_value()), 0..300)
    }

    fn chunk_of(samples: &[(String, i64, f64)]) -> Chunk {
        let mut chunk = Chunk::new();
        for (metric, ts, value) in samples {
            chunk.push(metric, *ts, *value);
        }
        chunk
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn encode_decode_round_trips_exactly(samples in samples()) {
            let chunk = chunk_of(&samples);
            prop_assert_eq!(chunk.len(), samples.len());
            assert_round_trip(&chunk);
        }

        #[test]
        fn samples_in_matches_a_naive_filter(
            samples in samples(),
            bounds in (timestamp(), timestamp()),
            wanted in prop::option::of(prop::collection::vec(metric_name(), 0..4)),
        ) {
            let chunk = Chunk::decode(&chunk_of(&samples).encode()).unwrap();
            let (start, end) = bounds;
            let wanted_refs: Option<Vec<&str>> =
                wanted.as_ref().map(|names| names.iter().map(String::as_str).collect());
            let got: Vec<(String, i64, u64)> = chunk
                .samples_in(start, end, wanted_refs.as_deref())
                .into_iter()
                .map(|s| (s.metric.to_string(), s.timestamp_us, s.value.to_bits()))
                .collect();
            let mut expected: Vec<(String, i64, u64)> = samples
                .iter()
                .filter(|(metric, ts, _)| {
                    start <= *ts
                        && *ts <= end
                        && wanted.as_ref().is_none_or(|names| names.contains(metric))
                })
                .map(|(metric, ts, value)| (metric.clone(), *ts, value.to_bits()))
                .collect();
            expected.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn latest_per_metric_is_the_last_pushed_maximum(samples in samples()) {
            let chunk = chunk_of(&samples);
            let mut expected: Vec<(String, i64, u64)> = Vec::new();
            for (metric, ts, value) in &samples {
                match expected.iter_mut().find(|(m, _, _)| m == metric) {
                    Some(entry) if entry.1 <= *ts => *entry = (metric.clone(), *ts, value.to_bits()),
                    Some(_) => {}
                    None => expected.push((metric.clone(), *ts, value.to_bits())),
                }
            }
            expected.sort();
            let got: Vec<(String, i64, u64)> = chunk
                .latest_per_metric()
                .into_iter()
                .map(|s| (s.metric.to_string(), s.timestamp_us, s.value.to_bits()))
                .collect();
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn reused_plans_encode_to_the_bytes_of_fresh_plans(
            mut samples in samples(),
            sorted in any::<bool>(),
            swaps in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..3),
            encode_every in 1usize..24,
        ) {
            // Mostly appends (as the collector's pushes are), with a few out of order.
            if sorted {
                samples.sort_by_key(|sample| sample.1);
                for (a, b) in &swaps {
                    if !samples.is_empty() {
                        let (a, b) = (a.index(samples.len()), b.index(samples.len()));
                        samples.swap(a, b);
                    }
                }
            }
            let mut chunk = Chunk::new();
            for (k, (metric, ts, value)) in samples.iter().enumerate() {
                chunk.push(metric, *ts, *value);
                if k % encode_every == 0 {
                    let reused = chunk.encode_reusing_plans();
                    prop_assert_eq!(&reused, &chunk.encode());
                }
            }
            let reused = chunk.encode_reusing_plans();
            prop_assert_eq!(&reused, &chunk.encode());
            prop_assert_eq!(Chunk::decode(&reused).unwrap(), chunk);
        }

        #[test]
        fn header_agrees_with_decode(samples in samples()) {
            let bytes = chunk_of(&samples).encode();
            let header = read_chunk_header(&bytes).unwrap();
            let chunk = Chunk::decode(&bytes).unwrap();
            prop_assert_eq!(header.samples as usize, chunk.len());
            prop_assert_eq!(header.samples as usize, samples.len());
            prop_assert_eq!(chunk.min_timestamp(), samples.iter().map(|s| s.1).min());
            prop_assert_eq!(chunk.max_timestamp(), samples.iter().map(|s| s.1).max());
            prop_assert_eq!(header.min_timestamp_us, chunk.min_timestamp().unwrap_or(0));
            prop_assert_eq!(header.max_timestamp_us, chunk.max_timestamp().unwrap_or(0));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = read_chunk_header(&bytes);
            let _ = Chunk::decode(&bytes);
            let fixed = with_fixed_checksums(bytes);
            if let Ok(chunk) = Chunk::decode(&fixed) {
                prop_assert_eq!(read_chunk_header(&fixed).unwrap().samples as usize, chunk.len());
                assert_round_trip(&chunk);
            }
        }

        #[test]
        fn decoding_mutated_chunks_never_panics(
            samples in samples(),
            mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = chunk_of(&samples).encode();
            let mut mutated = Vec::new();
            for (at, byte) in &mutations {
                let at = at.index(bytes.len());
                // Two flips of one byte could cancel out; damage each byte at most once.
                if !mutated.contains(&at) {
                    mutated.push(at);
                    bytes[at] ^= byte | 1;
                }
            }
            prop_assert!(Chunk::decode(&bytes).is_err(), "damage went unnoticed");
            if truncate {
                let keep = cut.index(bytes.len());
                bytes.truncate(keep);
            }
            let fixed = with_fixed_checksums(bytes);
            if let Ok(chunk) = Chunk::decode(&fixed) {
                // Whatever survives the parser is a consistent chunk (though maybe not one the
                // encoder would have written byte for byte).
                prop_assert_eq!(read_chunk_header(&fixed).unwrap().samples as usize, chunk.len());
                assert_round_trip(&chunk);
            }
        }
    }
}
