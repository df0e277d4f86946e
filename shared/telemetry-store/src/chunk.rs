//! Compressed sample chunk: the samples of one GPU (several metrics) over a bounded time span, and
//! its binary codec.
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
//!                 timestamps, then values (see below); zero bits pad the last byte
//! end-4   4     crc32 of every byte before it
//! ```
//!
//! **Timestamps** of a series (sorted ascending) become integers `x[k]` in one of two ways:
//! `0` = own: `x[k] = ts[k] - min_timestamp`; `1` + 3 bits `d - 1` = relative to the series `d`
//! places earlier (same sample count): `x[k] = ts[k] - ref_ts[k]`. Every metric of a GPU is sampled
//! in the same streamer pass, so a series' timestamps sit at a near-constant offset from its
//! neighbour's and the offset changes by far less than the pass jitter does. The encoder picks the
//! cheapest candidate.
//!
//! **Values** are `0` = XOR or `1` + 4 bits exponent `e` = decimal. Decimal mode is used when every
//! value is exactly `m / 10^e` for an integer `|m| <= 2^53` (bit-exact after the division, so `-0.0`,
//! subnormals, huge values, NaN and infinities never qualify); `x[k] = m[k]`. Most telemetry is
//! integers or fixed-point decimals (power in W with 3 decimals), whose differences are small
//! integers while their IEEE mantissas differ in almost every bit. XOR mode is Gorilla: the first
//! value as 64 raw bits, then per value the XOR with its predecessor: `0` = equal; `10` + the
//! meaningful bits inside the previous window; `11` + 6 bits leading zeros + 6 bits
//! (meaningful length - 1) + the meaningful bits. The encoder picks the cheaper mode.
//!
//! **Integer streams** (`x[k]`; wrapping i64 arithmetic throughout, so any i64 round-trips) start
//! with 2 bits predictor, its parameter if it has one (7 bits bit length `n` + `n` bits, zigzag),
//! and 6 bits Rice parameter `r`. Predictors: `0` = step `s`: previous value plus `s` (delta
//! coding when `s = 0`, a jittered regular grid when `s` is the typical delta); `1` = slope:
//! previous value plus previous delta (delta-of-delta); `2` = constant `c` (noise around a level,
//! e.g. an offset from a reference series). Step and slope predict 0 for the first value and slope assumes a first delta
//! of 0. Each residual (actual - predicted) is zigzag-mapped to `z` and Rice-coded: `q = z >> r` as
//! `q` one bits and a zero, then the low `r` bits of `z`; when `q >= 16` it is escaped instead as 16
//! one bits, 6 bits (bit length `n` - 1) and the low `n - 1` bits of `z` (the top bit is implied).
//! The encoder prices each predictor (step 0, slope, step = median delta, constant = median value)
//! at the Rice parameters around the one its mean residual suggests, and keeps the smallest, so the
//! code adapts to microsecond jitter and to second-scale gaps alike; a constant series costs 1 bit
//! per sample.
//!
//! Encoding is deterministic: series order is name order, samples inside a series are sorted by
//! timestamp stably on push order, and every choice above is a pure function of the samples.

use std::sync::Arc;

/// The format version written by [`Chunk::encode`].
pub const CHUNK_FORMAT_VERSION: u8 = 1;

/// Bytes of the fixed header that [`read_chunk_header`] reads.
pub const CHUNK_HEADER_LEN: usize = 25;

const CHECKSUM_LEN: usize = 4;
const HEADER_CRC_OFFSET: usize = 21;
/// How far back a series may look for a reference series; 3 bits in the stream.
const MAX_REFERENCE_DISTANCE: usize = 8;
/// Largest decimal exponent; 10^15 is exact in f64 and 4 bits hold it.
const MAX_DECIMAL_EXPONENT: usize = 15;
const POWERS_OF_TEN: [f64; MAX_DECIMAL_EXPONENT + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
/// Integers up to 2^53 convert to f64 exactly, which makes decimal mode bit-exact.
const MAX_EXACT_INTEGER: i64 = 1 << 53;
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
pub struct ChunkHeader {
    pub samples: u32,
    /// 0 when `samples == 0`.
    pub min_timestamp_us: i64,
    /// 0 when `samples == 0`.
    pub max_timestamp_us: i64,
}

impl ChunkHeader {
    /// Whether the chunk may hold samples with `start_us <= ts <= end_us`.
    pub fn overlaps(&self, start_us: i64, end_us: i64) -> bool {
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

/// The samples of one GPU: several metrics over a bounded time span.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chunk {
    /// Sorted by name, names unique, none empty of samples.
    series: Vec<Series>,
    len: usize,
    min_timestamp_us: Option<i64>,
    max_timestamp_us: Option<i64>,
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

    /// Number of samples of one metric (0 when absent).
    pub fn metric_len(&self, metric: &str) -> usize {
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
        if start_us > end_us {
            return out;
        }
        for series in &self.series {
            if metrics.is_some_and(|wanted| !wanted.contains(&series.name.as_ref())) {
                continue;
            }
            let from = series.timestamps.partition_point(|&ts| ts < start_us);
            let to = series.timestamps.partition_point(|&ts| ts <= end_us);
            out.extend(
                series.timestamps[from..to]
                    .iter()
                    .zip(&series.values[from..to])
                    .map(|(&timestamp_us, &value)| ChunkSample {
                        metric: Arc::clone(&series.name),
                        timestamp_us,
                        value,
                    }),
            );
        }
        // Series are visited in name order, so a stable sort by timestamp yields (timestamp, name).
        out.sort_by_key(|sample| sample.timestamp_us);
        out
    }

    /// The sample with the largest timestamp of each metric (the last pushed among equals), in
    /// metric name order.
    pub fn latest_per_metric(&self) -> Vec<ChunkSample> {
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
        for (index, series) in self.series.iter().enumerate() {
            encode_timestamps(&mut bits, &self.series, index, min_ts, &mut scratch);
            encode_values(&mut bits, &series.values, &mut scratch);
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
        let mut cursor = ByteCursor {
            bytes: content,
            pos: CHUNK_HEADER_LEN,
        };

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
        let stream = &content[cursor.pos..];
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
        })
    }
}

/// Reads the fixed header of an encoded chunk in O(1), checking its own crc32 (not the samples').
pub fn read_chunk_header(bytes: &[u8]) -> Result<ChunkHeader, ChunkError> {
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
    bytes
        .get(at..at + 4)
        .and_then(|slice| slice.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(ChunkError::Truncated)
}

fn read_i64(bytes: &[u8], at: usize) -> Result<i64, ChunkError> {
    bytes
        .get(at..at + 8)
        .and_then(|slice| slice.try_into().ok())
        .map(i64::from_le_bytes)
        .ok_or(ChunkError::Truncated)
}

pub(crate) fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

struct ByteCursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> ByteCursor<'a> {
    fn varint(&mut self) -> Result<u64, ChunkError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.pos).ok_or(ChunkError::Truncated)?;
            self.pos += 1;
            let low = u64::from(byte & 0x7f);
            if shift == 63 && low > 1 {
                return Err(ChunkError::Corrupt("varint overflows 64 bits"));
            }
            value |= low << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ChunkError::Corrupt("varint overflows 64 bits"))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], ChunkError> {
        let end = self.pos.checked_add(len).ok_or(ChunkError::Truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or(ChunkError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }
}

/// Where encoded bits go: the real writer, or a counter used to price alternatives before writing.
trait BitSink {
    /// Appends the low `n` bits of `value` (`n <= 64`), most significant first.
    fn put(&mut self, value: u64, n: u32);
}

struct BitCounter(u64);

impl BitSink for BitCounter {
    fn put(&mut self, _value: u64, n: u32) {
        self.0 += u64::from(n);
    }
}

/// Appends bits to a byte vector through a 64-bit accumulator.
struct BitWriter {
    out: Vec<u8>,
    /// The low `filled` bits are pending; `filled < 32` between calls.
    acc: u64,
    filled: u32,
}

impl BitWriter {
    fn new(out: Vec<u8>) -> Self {
        Self {
            out,
            acc: 0,
            filled: 0,
        }
    }

    fn put_small(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 32);
        if n == 0 {
            return;
        }
        self.acc = (self.acc << n) | (value & ((1u64 << n) - 1));
        self.filled += n;
        if self.filled >= 32 {
            self.filled -= 32;
            self.out
                .extend_from_slice(&((self.acc >> self.filled) as u32).to_be_bytes());
        }
    }

    fn finish(mut self) -> Vec<u8> {
        while self.filled >= 8 {
            self.filled -= 8;
            self.out.push((self.acc >> self.filled) as u8);
        }
        if self.filled > 0 {
            self.out.push((self.acc << (8 - self.filled)) as u8);
        }
        self.out
    }
}

impl BitSink for BitWriter {
    fn put(&mut self, value: u64, n: u32) {
        if n > 32 {
            self.put_small(value >> 32, n - 32);
            self.put_small(value & 0xffff_ffff, 32);
        } else {
            self.put_small(value, n);
        }
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    len: usize,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pos: 0,
            len: bytes.len() * 8,
        }
    }

    /// The next `n <= 56` bits without consuming them.
    fn peek_small(&self, n: u32) -> Result<u64, ChunkError> {
        debug_assert!(n <= 56);
        if n == 0 {
            return Ok(0);
        }
        if self.pos + n as usize > self.len {
            return Err(ChunkError::Truncated);
        }
        let byte = self.pos / 8;
        let word = match self.bytes.get(byte..byte + 8) {
            Some(slice) => {
                let mut full = [0u8; 8];
                full.copy_from_slice(slice);
                u64::from_be_bytes(full)
            }
            None => {
                let mut padded = [0u8; 8];
                let tail = self.bytes.get(byte..).unwrap_or_default();
                padded[..tail.len()].copy_from_slice(tail);
                u64::from_be_bytes(padded)
            }
        };
        Ok((word << (self.pos % 8)) >> (64 - n))
    }

    /// Reads `n <= 56` bits.
    fn get_small(&mut self, n: u32) -> Result<u64, ChunkError> {
        let value = self.peek_small(n)?;
        self.pos += n as usize;
        Ok(value)
    }

    /// Reads `n <= 64` bits.
    fn get(&mut self, n: u32) -> Result<u64, ChunkError> {
        if n > 32 {
            let high = self.get_small(n - 32)?;
            Ok((high << 32) | self.get_small(32)?)
        } else {
            self.get_small(n)
        }
    }

    fn bit(&mut self) -> Result<bool, ChunkError> {
        Ok(self.get_small(1)? == 1)
    }

    /// Reads one bits up to a zero (consumed) or until `limit <= 32` ones; returns how many.
    fn unary(&mut self, limit: u32) -> Result<u32, ChunkError> {
        let window = (limit + 1).min((self.len - self.pos).min(33) as u32);
        let bits = self.peek_small(window)?;
        let ones = if window == 0 {
            0
        } else {
            (bits << (64 - window)).leading_ones()
        };
        if ones >= limit {
            self.pos += limit as usize;
            Ok(limit)
        } else if ones < window {
            self.pos += ones as usize + 1;
            Ok(ones)
        } else {
            Err(ChunkError::Truncated)
        }
    }

    /// The stream must end here, up to zero padding of the last byte.
    fn expect_padding(&mut self) -> Result<(), ChunkError> {
        let rest = self.len - self.pos;
        if rest >= 8 {
            return Err(ChunkError::Corrupt("trailing bytes after the last series"));
        }
        if self.get_small(rest as u32)? != 0 {
            return Err(ChunkError::Corrupt("non-zero padding"));
        }
        Ok(())
    }
}

pub(crate) fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

pub(crate) fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn bit_length(value: u64) -> u32 {
    64 - value.leading_zeros()
}

const PREDICTOR_TAG_BITS: u32 = 2;
const PARAMETER_LENGTH_BITS: u32 = 7;
const RICE_PARAMETER_BITS: u32 = 6;
/// Quotients from this many up are escaped; keeps a rare outlier from costing thousands of bits.
const RICE_UNARY_LIMIT: u32 = 16;
const ESCAPE_LENGTH_BITS: u32 = 6;

/// How the next integer of a stream is predicted; residuals are actual minus prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Predictor {
    /// Previous value plus a fixed step: delta coding (step 0) or a jittered regular grid.
    Step(i64),
    /// Previous value plus the previous delta: delta-of-delta coding.
    Slope,
    /// A fixed value: noise around a level, such as a series' offset from its reference.
    Constant(i64),
}

impl Predictor {
    /// Bits of the stream parameters: predictor tag, its parameter, Rice parameter.
    fn parameter_bits(self) -> u64 {
        let parameter = match self {
            Predictor::Step(p) | Predictor::Constant(p) => {
                PARAMETER_LENGTH_BITS + bit_length(zigzag(p))
            }
            Predictor::Slope => 0,
        };
        u64::from(PREDICTOR_TAG_BITS + parameter + RICE_PARAMETER_BITS)
    }

    fn write(self, sink: &mut impl BitSink) {
        let (tag, parameter) = match self {
            Predictor::Step(p) => (0, Some(p)),
            Predictor::Slope => (1, None),
            Predictor::Constant(p) => (2, Some(p)),
        };
        sink.put(tag, PREDICTOR_TAG_BITS);
        if let Some(p) = parameter {
            let z = zigzag(p);
            sink.put(u64::from(bit_length(z)), PARAMETER_LENGTH_BITS);
            sink.put(z, bit_length(z));
        }
    }

    fn read(bits: &mut BitReader<'_>) -> Result<Self, ChunkError> {
        let tag = bits.get_small(PREDICTOR_TAG_BITS)?;
        let mut parameter = || -> Result<i64, ChunkError> {
            let len = bits.get_small(PARAMETER_LENGTH_BITS)? as u32;
            if len > 64 {
                return Err(ChunkError::Corrupt(
                    "predictor parameter longer than 64 bits",
                ));
            }
            Ok(unzigzag(bits.get(len)?))
        };
        match tag {
            0 => Ok(Predictor::Step(parameter()?)),
            1 => Ok(Predictor::Slope),
            2 => Ok(Predictor::Constant(parameter()?)),
            _ => Err(ChunkError::Corrupt("unknown predictor")),
        }
    }
}

/// The decoder's running prediction of an integer stream: the inverse of [`fill_residuals`].
#[derive(Default)]
struct PredictorState {
    previous: i64,
    delta: i64,
    started: bool,
}

impl PredictorState {
    fn predict(&self, predictor: Predictor) -> i64 {
        match predictor {
            Predictor::Step(step) if self.started => self.previous.wrapping_add(step),
            Predictor::Slope if self.started => self.previous.wrapping_add(self.delta),
            Predictor::Step(_) | Predictor::Slope => 0,
            Predictor::Constant(level) => level,
        }
    }

    fn observe(&mut self, value: i64) {
        if self.started {
            self.delta = value.wrapping_sub(self.previous);
        }
        self.started = true;
        self.previous = value;
    }
}

/// Size of `z` as a Rice code with parameter `k` (quotient in unary, `k` low bits), or escaped.
fn rice_bits(z: u64, k: u32) -> u64 {
    let quotient = z >> k;
    if quotient < u64::from(RICE_UNARY_LIMIT) {
        quotient + 1 + u64::from(k)
    } else {
        u64::from(RICE_UNARY_LIMIT + ESCAPE_LENGTH_BITS + bit_length(z) - 1)
    }
}

fn write_rice(sink: &mut impl BitSink, z: u64, k: u32) {
    let quotient = z >> k;
    if quotient < u64::from(RICE_UNARY_LIMIT) {
        let ones = quotient as u32;
        sink.put((1u64 << (ones + 1)) - 2, ones + 1);
        sink.put(z, k);
    } else {
        let len = bit_length(z);
        sink.put((1u64 << RICE_UNARY_LIMIT) - 1, RICE_UNARY_LIMIT);
        sink.put(u64::from(len - 1), ESCAPE_LENGTH_BITS);
        sink.put(z, len - 1);
    }
}

fn read_rice(bits: &mut BitReader<'_>, k: u32) -> Result<u64, ChunkError> {
    let quotient = bits.unary(RICE_UNARY_LIMIT)?;
    if quotient < RICE_UNARY_LIMIT {
        Ok((u64::from(quotient) << k) | bits.get(k)?)
    } else {
        let len = bits.get_small(ESCAPE_LENGTH_BITS)? as u32 + 1;
        Ok((1u64 << (len - 1)) | bits.get(len - 1)?)
    }
}

#[derive(Debug, Clone, Copy)]
struct IntStreamPlan {
    predictor: Predictor,
    rice: u32,
    bits: u64,
}

/// Buffers reused across the series of one encode.
#[derive(Default)]
struct EncodeScratch {
    sequence: Vec<i64>,
    candidate: Vec<i64>,
    sorting: Vec<i64>,
    residuals: Vec<u64>,
}

/// What a sequence holds, which decides the predictors worth pricing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SequenceKind {
    /// Ascending timestamps: no constant level predicts them.
    Timestamps,
    /// Offsets from a reference series' timestamps: a level, rarely a regular step.
    Offsets,
    /// Decimal mantissas: anything goes.
    Values,
}

fn median(sorting: &mut Vec<i64>, values: impl Iterator<Item = i64>) -> i64 {
    sorting.clear();
    sorting.extend(values);
    if sorting.is_empty() {
        return 0;
    }
    let middle = sorting.len() / 2;
    *sorting.select_nth_unstable(middle).1
}

/// The cheapest predictor and Rice parameter for `values`, with its exact size in bits.
fn plan_int_stream(
    values: &[i64],
    kind: SequenceKind,
    sorting: &mut Vec<i64>,
    residuals: &mut Vec<u64>,
) -> IntStreamPlan {
    let mut predictors = [Some(Predictor::Step(0)), Some(Predictor::Slope), None, None];
    if kind != SequenceKind::Offsets {
        let step = median(sorting, values.windows(2).map(|w| w[1].wrapping_sub(w[0])));
        predictors[2] = (step != 0).then_some(Predictor::Step(step));
    }
    if kind != SequenceKind::Timestamps {
        predictors[3] = Some(Predictor::Constant(median(sorting, values.iter().copied())));
    }
    predictors
        .into_iter()
        .flatten()
        .map(|predictor| price_int_stream(values, predictor, residuals))
        .min_by_key(|plan| plan.bits)
        .unwrap_or(IntStreamPlan {
            predictor: Predictor::Step(0),
            rice: 0,
            bits: 0,
        })
}

/// Zigzag residuals of `values` under `predictor`; the decoder's [`PredictorState`] inverts this.
fn fill_residuals(values: &[i64], predictor: Predictor, out: &mut Vec<u64>) {
    out.clear();
    let Some(&first) = values.first() else {
        return;
    };
    match predictor {
        Predictor::Step(step) => {
            out.push(zigzag(first));
            out.extend(
                values
                    .windows(2)
                    .map(|w| zigzag(w[1].wrapping_sub(w[0]).wrapping_sub(step))),
            );
        }
        Predictor::Slope => {
            out.push(zigzag(first));
            if let Some(&second) = values.get(1) {
                out.push(zigzag(second.wrapping_sub(first)));
            }
            out.extend(values.windows(3).map(|w| {
                zigzag(
                    w[2].wrapping_sub(w[1])
                        .wrapping_sub(w[1].wrapping_sub(w[0])),
                )
            }));
        }
        Predictor::Constant(level) => {
            out.extend(values.iter().map(|&v| zigzag(v.wrapping_sub(level))));
        }
    }
}

/// Prices one predictor at the Rice parameters around the one its mean residual suggests.
fn price_int_stream(
    values: &[i64],
    predictor: Predictor,
    residuals: &mut Vec<u64>,
) -> IntStreamPlan {
    fill_residuals(values, predictor, residuals);
    let sum: u128 = residuals.iter().map(|&z| u128::from(z)).sum();
    let mean = (sum / residuals.len().max(1) as u128) as u64;
    let center = bit_length(mean).saturating_sub(1);
    let (rice, size) = [center.saturating_sub(1), center, (center + 1).min(63)]
        .into_iter()
        .map(|k| (k, residuals.iter().map(|&z| rice_bits(z, k)).sum::<u64>()))
        .min_by_key(|&(_, size)| size)
        .unwrap_or((0, 0));
    IntStreamPlan {
        predictor,
        rice,
        bits: predictor.parameter_bits() + size,
    }
}

fn write_int_stream(
    sink: &mut impl BitSink,
    values: &[i64],
    plan: IntStreamPlan,
    residuals: &mut Vec<u64>,
) {
    plan.predictor.write(sink);
    sink.put(u64::from(plan.rice), RICE_PARAMETER_BITS);
    fill_residuals(values, plan.predictor, residuals);
    for &z in residuals.iter() {
        write_rice(sink, z, plan.rice);
    }
}

/// Reads `count` integers, handing each to `emit` (which may reject it).
fn read_int_stream(
    bits: &mut BitReader<'_>,
    count: usize,
    mut emit: impl FnMut(usize, i64) -> Result<(), ChunkError>,
) -> Result<(), ChunkError> {
    let predictor = Predictor::read(bits)?;
    let rice = bits.get_small(RICE_PARAMETER_BITS)? as u32;
    let mut state = PredictorState::default();
    for index in 0..count {
        let z = read_rice(bits, rice)?;
        let value = state.predict(predictor).wrapping_add(unzigzag(z));
        emit(index, value)?;
        state.observe(value);
    }
    Ok(())
}

fn encode_timestamps(
    sink: &mut BitWriter,
    series: &[Series],
    index: usize,
    min_ts: i64,
    scratch: &mut EncodeScratch,
) {
    let own = &series[index].timestamps;
    scratch.sequence.clear();
    scratch
        .sequence
        .extend(own.iter().map(|&ts| ts.wrapping_sub(min_ts)));
    let mut best = plan_int_stream(
        &scratch.sequence,
        SequenceKind::Timestamps,
        &mut scratch.sorting,
        &mut scratch.residuals,
    );
    let mut best_reference = None;
    for distance in 1..=MAX_REFERENCE_DISTANCE.min(index) {
        let reference = &series[index - distance].timestamps;
        if reference.len() != own.len() {
            continue;
        }
        scratch.candidate.clear();
        scratch.candidate.extend(
            own.iter()
                .zip(reference)
                .map(|(&ts, &r)| ts.wrapping_sub(r)),
        );
        let plan = plan_int_stream(
            &scratch.candidate,
            SequenceKind::Offsets,
            &mut scratch.sorting,
            &mut scratch.residuals,
        );
        // Naming the reference costs 3 bits.
        if plan.bits + 3 < best.bits {
            best = plan;
            best_reference = Some(distance);
            std::mem::swap(&mut scratch.sequence, &mut scratch.candidate);
        }
    }
    match best_reference {
        None => sink.put(0, 1),
        Some(distance) => {
            sink.put(1, 1);
            sink.put((distance - 1) as u64, 3);
        }
    }
    write_int_stream(sink, &scratch.sequence, best, &mut scratch.residuals);
}

fn decode_timestamps(
    bits: &mut BitReader<'_>,
    decoded: &[Series],
    count: usize,
    min_ts: i64,
) -> Result<Vec<i64>, ChunkError> {
    let reference: Option<&[i64]> = if bits.bit()? {
        let distance = bits.get_small(3)? as usize + 1;
        let series = decoded
            .len()
            .checked_sub(distance)
            .and_then(|at| decoded.get(at))
            .ok_or(ChunkError::Corrupt("reference series does not exist"))?;
        if series.timestamps.len() != count {
            return Err(ChunkError::Corrupt(
                "reference series has another sample count",
            ));
        }
        Some(&series.timestamps)
    } else {
        None
    };
    let mut timestamps = Vec::with_capacity(count);
    read_int_stream(bits, count, |index, x| {
        let base = reference.map_or(min_ts, |reference| reference[index]);
        let ts = base.wrapping_add(x);
        if timestamps.last().is_some_and(|&last| last > ts) {
            return Err(ChunkError::Corrupt("timestamps not ascending"));
        }
        timestamps.push(ts);
        Ok(())
    })?;
    Ok(timestamps)
}

/// The smallest `e` with `value == m / 10^e` bit-exactly for an integer `|m| <= 2^53`, and that `m`.
fn decimal_form(value: f64) -> Option<(usize, i64)> {
    POWERS_OF_TEN
        .iter()
        .enumerate()
        .find_map(|(exponent, &power)| {
            let mantissa = exact_mantissa(value, power)?;
            Some((exponent, mantissa))
        })
}

/// `m` with `value == m / power` bit-exactly and `|m| <= 2^53`, if there is one.
fn exact_mantissa(value: f64, power: f64) -> Option<i64> {
    let scaled = (value * power).round();
    if scaled.is_nan() || scaled.abs() > MAX_EXACT_INTEGER as f64 {
        return None;
    }
    let mantissa = scaled as i64;
    ((mantissa as f64 / power).to_bits() == value.to_bits()).then_some(mantissa)
}

/// Fills `scaled` with the decimal mantissas of `values` at one shared exponent, if there is one.
fn decimal_series(values: &[f64], scaled: &mut Vec<i64>) -> Option<usize> {
    scaled.clear();
    let mut exponent = 0;
    for &value in values {
        let (e, mantissa) = decimal_form(value)?;
        exponent = exponent.max(e);
        scaled.push(mantissa);
    }
    let power = POWERS_OF_TEN[exponent];
    if exponent > 0 {
        // A value found exact at a smaller exponent is normally exact at a larger one too, but the
        // scaled product may round differently, so each one is checked again.
        for (mantissa, &value) in scaled.iter_mut().zip(values) {
            *mantissa = exact_mantissa(value, power)?;
        }
    }
    Some(exponent)
}

fn encode_values(sink: &mut BitWriter, values: &[f64], scratch: &mut EncodeScratch) {
    if let Some(exponent) = decimal_series(values, &mut scratch.sequence) {
        let plan = plan_int_stream(
            &scratch.sequence,
            SequenceKind::Values,
            &mut scratch.sorting,
            &mut scratch.residuals,
        );
        // XOR needs 64 bits for the first value and at least 1 for each other one, which spares
        // pricing it for most integer series.
        let xor_floor = 64 + values.len() as u64 - 1;
        let decimal_wins = plan.bits + 4 < xor_floor || {
            let mut xor_bits = BitCounter(0);
            write_xor_values(&mut xor_bits, values);
            plan.bits + 4 < xor_bits.0
        };
        if decimal_wins {
            sink.put(1, 1);
            sink.put(exponent as u64, 4);
            write_int_stream(sink, &scratch.sequence, plan, &mut scratch.residuals);
            return;
        }
    }
    sink.put(0, 1);
    write_xor_values(sink, values);
}

fn write_xor_values(sink: &mut impl BitSink, values: &[f64]) {
    let Some((&first, rest)) = values.split_first() else {
        return;
    };
    sink.put(first.to_bits(), 64);
    let mut previous = first.to_bits();
    let mut window: Option<(u32, u32)> = None;
    for value in rest {
        let bits = value.to_bits();
        let xor = bits ^ previous;
        previous = bits;
        if xor == 0 {
            sink.put(0, 1);
            continue;
        }
        let leading = xor.leading_zeros();
        let trailing = xor.trailing_zeros();
        match window {
            Some((window_leading, window_trailing))
                if leading >= window_leading && trailing >= window_trailing =>
            {
                sink.put(0b10, 2);
                sink.put(
                    xor >> window_trailing,
                    64 - window_leading - window_trailing,
                );
            }
            _ => {
                let meaningful = 64 - leading - trailing;
                sink.put(0b11, 2);
                sink.put(u64::from(leading), 6);
                sink.put(u64::from(meaningful - 1), 6);
                sink.put(xor >> trailing, meaningful);
                window = Some((leading, trailing));
            }
        }
    }
}

fn decode_values(bits: &mut BitReader<'_>, count: usize) -> Result<Vec<f64>, ChunkError> {
    let mut values = Vec::with_capacity(count);
    if bits.bit()? {
        let exponent = bits.get_small(4)? as usize;
        let power = *POWERS_OF_TEN
            .get(exponent)
            .ok_or(ChunkError::Corrupt("decimal exponent out of range"))?;
        read_int_stream(bits, count, |_, mantissa| {
            values.push(mantissa as f64 / power);
            Ok(())
        })?;
        return Ok(values);
    }
    if count == 0 {
        return Ok(values);
    }
    let mut previous = bits.get(64)?;
    values.push(f64::from_bits(previous));
    let mut window: Option<(u32, u32)> = None;
    for _ in 1..count {
        if bits.bit()? {
            let (leading, trailing) = if !bits.bit()? {
                window.ok_or(ChunkError::Corrupt("XOR window reused before it was set"))?
            } else {
                let leading = bits.get_small(6)? as u32;
                let meaningful = bits.get_small(6)? as u32 + 1;
                if leading + meaningful > 64 {
                    return Err(ChunkError::Corrupt("XOR window exceeds 64 bits"));
                }
                let window_now = (leading, 64 - leading - meaningful);
                window = Some(window_now);
                window_now
            };
            previous ^= bits.get(64 - leading - trailing)? << trailing;
        }
        values.push(f64::from_bits(previous));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Path, PathBuf};

    const CSV_NAME: &str = "dcgm_metrics_20250718_134233.csv";
    /// 2025-07-18T20:42:34Z, the first timestamp of the real CSV.
    const FEED_START_US: i64 = 1_752_871_354_000_000;

    /// Deterministic pseudo-random numbers (splitmix64), so figures are the same on every run.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, bound: u64) -> i64 {
            (self.next() % bound) as i64
        }
    }

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
        let mut rng = SplitMix(42);
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
        }
        chunks
    }

    fn assert_round_trip(chunk: &Chunk) -> Vec<u8> {
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
        let mut rng = SplitMix(seed);
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
    fn power_random_walk_with_3_decimals_uses_decimal_mode() {
        let mut rng = SplitMix(3);
        let mut milliwatts = 250_000i64;
        let values: Vec<f64> = (0..1_000)
            .map(|_| {
                milliwatts += rng.below(2_001) - 1_000;
                milliwatts as f64 / 1_000.0
            })
            .collect();
        let mut scaled = Vec::new();
        assert_eq!(decimal_series(&values, &mut scaled), Some(3));
        let mut chunk = Chunk::new();
        for (k, &value) in values.iter().enumerate() {
            chunk.push(
                "DCGM_FI_DEV_POWER_USAGE",
                FEED_START_US + k as i64 * 1_000_000,
                value,
            );
        }
        let bytes = assert_round_trip(&chunk);
        let mut xor_bits = BitCounter(0);
        write_xor_values(&mut xor_bits, &values);
        println!(
            "power walk: {} bytes = {:.3} bytes/sample (values alone as XOR: {:.3})",
            bytes.len(),
            bytes.len() as f64 / 1_000.0,
            xor_bits.0 as f64 / 8_000.0
        );
        // Steps of up to 1 W are 11 bits + 2 of code; the timestamps are exact seconds (1 bit).
        assert!(bytes.len() < 1_000 * 2, "{} bytes", bytes.len());
        assert!(
            xor_bits.0 / 8 > 1_000 * 4,
            "XOR should be the worse choice here"
        );
    }

    #[test]
    fn decimal_form_rejects_values_that_would_not_round_trip() {
        assert_eq!(decimal_form(312.457), Some((3, 312_457)));
        assert_eq!(decimal_form(-7.0), Some((0, -7)));
        assert_eq!(decimal_form(0.0), Some((0, 0)));
        assert_eq!(decimal_form(-0.0), None);
        assert_eq!(decimal_form(f64::MIN_POSITIVE / 4.0), None);
        assert_eq!(decimal_form(1e300), None);
        assert_eq!(
            decimal_form(9_007_199_254_740_993.0),
            Some((0, 9_007_199_254_740_992))
        );
        assert_eq!(decimal_form(f64::NAN), None);
        assert_eq!(decimal_form(f64::INFINITY), None);
        assert_eq!(decimal_form(0.1 + 0.2), None);
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
        fn int_streams_round_trip_for_every_predictor_and_rice_parameter(
            values in prop::collection::vec(
                prop_oneof![3 => -3_000i64..3_000, 1 => any::<i64>()],
                0..40,
            ),
            parameter in any::<i64>(),
            rice in 0u32..64,
        ) {
            for predictor in [
                Predictor::Step(0),
                Predictor::Step(parameter),
                Predictor::Slope,
                Predictor::Constant(parameter),
            ] {
                let plan = IntStreamPlan { predictor, rice, bits: 0 };
                let mut writer = BitWriter::new(Vec::new());
                write_int_stream(&mut writer, &values, plan, &mut Vec::new());
                let mut counter = BitCounter(0);
                write_int_stream(&mut counter, &values, plan, &mut Vec::new());
                let bytes = writer.finish();
                prop_assert_eq!(bytes.len() as u64, counter.0.div_ceil(8));
                let mut reader = BitReader::new(&bytes);
                let mut decoded = Vec::new();
                read_int_stream(&mut reader, values.len(), |_, value| {
                    decoded.push(value);
                    Ok(())
                })
                .unwrap();
                prop_assert_eq!(&decoded, &values);
                reader.expect_padding().unwrap();
                let priced = price_int_stream(&values, predictor, &mut Vec::new());
                let mut at_priced_rice = BitCounter(0);
                write_int_stream(
                    &mut at_priced_rice,
                    &values,
                    IntStreamPlan { rice: priced.rice, ..plan },
                    &mut Vec::new(),
                );
                prop_assert_eq!(priced.bits, at_priced_rice.0);
            }
        }

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
