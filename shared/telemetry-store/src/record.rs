//! The GPU registry record: what is known about a GPU and the latest value of each metric.
//! Records are merged, never blindly replaced, so applying the same samples twice (a replay) or in
//! another order gives the same record.
//!
//! A record is stored as two keys (see [`crate::keys`]) because its parts change at different
//! rates. The identity ([`GpuIdentity`], JSON) holds what rarely changes: the GPU's metadata,
//! first sighting, the metric names seen and the retention bucket of its last sighting. The seen
//! value ([`GpuRecord::encode_seen`], binary) holds what every commit changes: the last sighting
//! and the latest sample of each metric, metrics named by their index in the identity's sorted
//! list. Rewriting only the seen value on every commit keeps etcd's history small; the identity
//! is rewritten when it differs, which a new metric (and so a new index) always makes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use telemetry_model::{GpuInfo, MetricName, TimestampMicros};

use crate::chunk::{unzigzag, write_varint, zigzag, ByteCursor, ChunkError};

/// First byte of a seen value: its format.
const SEEN_FORMAT: u8 = 1;
/// Integral values within this magnitude are stored as varints (all such f64 are exact integers).
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// One GPU in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuRecord {
    pub info: GpuInfo,
    pub first_seen: TimestampMicros,
    pub last_seen: TimestampMicros,
    /// Latest sample of each metric seen: metric -> (timestamp, value).
    pub latest: BTreeMap<MetricName, LatestValue>,
}

/// The most recent sample of one metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatestValue {
    pub timestamp: TimestampMicros,
    pub value: f64,
}

impl GpuRecord {
    /// A record for a GPU first seen with one sample.
    pub fn new(info: GpuInfo, timestamp: TimestampMicros) -> Self {
        GpuRecord {
            info,
            first_seen: timestamp,
            last_seen: timestamp,
            latest: BTreeMap::new(),
        }
    }

    /// Metric names seen, sorted.
    pub fn metrics(&self) -> impl Iterator<Item = &MetricName> {
        self.latest.keys()
    }

    /// Folds one sample in. Idempotent and order-independent.
    pub fn observe(&mut self, metric: &MetricName, timestamp: TimestampMicros, value: f64) {
        self.first_seen = self.first_seen.min(timestamp);
        self.last_seen = self.last_seen.max(timestamp);
        let observed = LatestValue { timestamp, value };
        match self.latest.get_mut(metric) {
            // Updated in place: inserting would copy the name only to drop the copy.
            Some(latest) => {
                let newer = latest.timestamp < timestamp
                    || (latest.timestamp == timestamp && latest.value.total_cmp(&value).is_lt());
                if newer {
                    *latest = observed;
                }
            }
            None => {
                self.latest.insert(metric.clone(), observed);
            }
        }
    }

    /// Folds in one batch of this GPU's samples, which arrived described by `info`. The metadata
    /// (labels, hostname...) kept is that of the batch with the newest sample, and of two such
    /// batches the greater `info`; like [`GpuRecord::observe`], the result is the same whatever
    /// order the batches arrive in and however often one is replayed. An empty batch changes
    /// nothing.
    pub fn observe_batch<'a, I>(&mut self, info: &GpuInfo, samples: I)
    where
        I: IntoIterator<Item = (&'a MetricName, TimestampMicros, f64)>,
        I::IntoIter: Clone,
    {
        let samples = samples.into_iter();
        let Some(newest) = samples.clone().map(|(_, timestamp, _)| timestamp).max() else {
            return;
        };
        // `last_seen` is the newest sample of the batches folded in so far, and `self.info` the
        // greatest description among the batches holding it: compare before this batch moves it.
        let wins = newest > self.last_seen || (newest == self.last_seen && info > &self.info);
        if wins && &self.info != info {
            self.info = info.clone();
        }
        for (metric, timestamp, value) in samples {
            self.observe(metric, timestamp, value);
        }
    }

    /// Whether `identity` is the identity part of this record for the retention bucket starting
    /// at `bucket`, without building it (most commits change only the seen value).
    pub(crate) fn has_identity(&self, identity: &GpuIdentity, bucket: i64) -> bool {
        identity.bucket == bucket
            && identity.first_seen == self.first_seen
            && identity.metrics.iter().eq(self.latest.keys())
            && identity.info == self.info
    }

    /// The identity part of this record, for the retention bucket starting at `bucket`
    /// (the bucket of `last_seen`).
    pub(crate) fn identity(&self, bucket: i64) -> GpuIdentity {
        GpuIdentity {
            info: self.info.clone(),
            first_seen: self.first_seen,
            metrics: self.latest.keys().cloned().collect(),
            bucket,
        }
    }

    /// The seen value: `last_seen`, then per metric its index in [`GpuRecord::metrics`] (which
    /// is the identity's metric list), the age of its latest sample relative to `last_seen` and
    /// the value (a varint when it is an exact integer, else the f64 bits). About 50 bytes for
    /// ten metrics, against a kilobyte of JSON for the whole record.
    ///
    /// ```text
    /// u8      format (1)
    /// varint  zigzag(last_seen µs)
    /// varint  entry count
    /// per entry:
    ///   varint  metric index << 1 | 1 if the value is an integer
    ///   varint  zigzag(last_seen - timestamp)
    ///   varint  zigzag(value as i64)   or   8 bytes f64 bits, little-endian
    /// ```
    pub(crate) fn encode_seen(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 6 * self.latest.len());
        out.push(SEEN_FORMAT);
        write_varint(&mut out, zigzag(self.last_seen.0));
        write_varint(&mut out, self.latest.len() as u64);
        for (index, latest) in self.latest.values().enumerate() {
            let integer = exact_integer(latest.value);
            write_varint(
                &mut out,
                ((index as u64) << 1) | u64::from(integer.is_some()),
            );
            write_varint(
                &mut out,
                zigzag(self.last_seen.0.wrapping_sub(latest.timestamp.0)),
            );
            match integer {
                Some(i) => write_varint(&mut out, zigzag(i)),
                None => out.extend_from_slice(&latest.value.to_bits().to_le_bytes()),
            }
        }
        out
    }

    /// Rebuilds a record from its identity and seen value. Without a seen value (a record written
    /// before the split, or a lost key) the record is the identity alone: last seen when first
    /// seen, no latest values.
    pub(crate) fn from_parts(identity: GpuIdentity, seen: Option<&[u8]>) -> Result<Self, String> {
        let mut record = GpuRecord::new(identity.info, identity.first_seen);
        let Some(seen) = seen else {
            return Ok(record);
        };
        let mut reader = SeenReader(ByteCursor::new(seen, 0));
        let format = reader.byte()?;
        if format != SEEN_FORMAT {
            return Err(format!("unknown seen format {format}"));
        }
        let last_seen = unzigzag(reader.varint()?);
        record.last_seen = TimestampMicros(last_seen.max(record.first_seen.0));
        let entries = reader.varint()?;
        for _ in 0..entries {
            let tag = reader.varint()?;
            let index = usize::try_from(tag >> 1).map_err(|_| "metric index overflows")?;
            let metric = identity
                .metrics
                .get(index)
                .ok_or_else(|| format!("metric index {index} beyond the identity's metrics"))?;
            let timestamp = TimestampMicros(last_seen.wrapping_sub(unzigzag(reader.varint()?)));
            let value = if tag & 1 == 1 {
                unzigzag(reader.varint()?) as f64
            } else {
                f64::from_bits(u64::from_le_bytes(reader.array()?))
            };
            record
                .latest
                .insert(metric.clone(), LatestValue { timestamp, value });
        }
        if !reader.0.is_at_end() {
            return Err("trailing bytes".into());
        }
        Ok(record)
    }
}

/// The registry's identity record of a GPU: what changes rarely. Stored as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct GpuIdentity {
    pub info: GpuInfo,
    pub first_seen: TimestampMicros,
    /// Metric names seen, sorted: the seen value refers to them by index.
    #[serde(default)]
    pub metrics: Vec<MetricName>,
    /// Start of the retention bucket of `last_seen` when this was written (µs): the bucket whose
    /// lease both registry keys are attached to. When `last_seen` moves to a later bucket the
    /// identity is rewritten onto that bucket's lease, so it lives as long as the GPU reports.
    #[serde(default)]
    pub bucket: i64,
}

/// `value` as an i64 when that round-trips bit for bit (so not -0.0, NaN or fractions).
fn exact_integer(value: f64) -> Option<i64> {
    if value.fract() != 0.0 || value.abs() >= MAX_EXACT_INTEGER {
        return None;
    }
    let integer = value as i64;
    ((integer as f64).to_bits() == value.to_bits()).then_some(integer)
}

/// Reads a seen value with the chunk codec's byte cursor, wording its errors for a record.
struct SeenReader<'a>(ByteCursor<'a>);

impl SeenReader<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        self.0.byte().map_err(seen_error)
    }

    fn varint(&mut self) -> Result<u64, String> {
        self.0.varint().map_err(seen_error)
    }

    fn array(&mut self) -> Result<[u8; 8], String> {
        self.0.array().map_err(seen_error)
    }
}

fn seen_error(error: ChunkError) -> String {
    match error {
        ChunkError::Truncated => "truncated".into(),
        ChunkError::Corrupt(reason) => reason.into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry_model::GpuUuid;

    #[test]
    fn observing_is_idempotent_and_order_independent() {
        let info = GpuInfo::new(GpuUuid::parse("GPU-1").unwrap());
        let util = MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap();
        let temp = MetricName::parse("DCGM_FI_DEV_GPU_TEMP").unwrap();
        let samples = [
            (&util, 10, 1.0),
            (&temp, 20, 40.0),
            (&util, 30, 2.0),
            (&util, 5, 9.0),
        ];
        let mut forward = GpuRecord::new(info.clone(), TimestampMicros(10));
        for (m, t, v) in samples {
            forward.observe(m, TimestampMicros(t), v);
        }
        let mut twice_reversed = GpuRecord::new(info, TimestampMicros(30));
        for (m, t, v) in samples.iter().rev().chain(samples.iter()) {
            twice_reversed.observe(m, TimestampMicros(*t), *v);
        }
        assert_eq!(forward, twice_reversed);
        assert_eq!(forward.first_seen, TimestampMicros(5));
        assert_eq!(forward.last_seen, TimestampMicros(30));
        assert_eq!(
            forward.latest[&util],
            LatestValue {
                timestamp: TimestampMicros(30),
                value: 2.0
            }
        );
        assert_eq!(forward.metrics().collect::<Vec<_>>(), vec![&temp, &util]);
    }

    #[test]
    fn metadata_of_the_newest_batch_wins_in_any_order() {
        let uuid = GpuUuid::parse("GPU-1").unwrap();
        let described = |host: &str| {
            let mut info = GpuInfo::new(uuid.clone());
            info.hostname = Some(host.to_owned());
            info
        };
        let util = MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap();
        // (hostname, sample timestamps): "c" and "b" tie on the newest sample, "a" is older.
        let batches = [
            ("a", vec![10, 20]),
            ("c", vec![15, 30]),
            ("b", vec![30]),
            ("d", vec![]),
        ];
        // Every order of the four batches.
        let orders = (0..4usize.pow(4)).map(|n| [n % 4, n / 4 % 4, n / 16 % 4, n / 64]);
        let orders: Vec<_> = orders.filter(|o| (0..4).all(|i| o.contains(&i))).collect();
        assert_eq!(orders.len(), 24);
        for order in orders {
            let mut record: Option<GpuRecord> = None;
            // Every batch twice: a replay changes nothing.
            for &i in order.iter().chain(order.iter()) {
                let (host, times) = &batches[i];
                let info = described(host);
                let Some(first) = times.first() else { continue };
                let record = record
                    .get_or_insert_with(|| GpuRecord::new(info.clone(), TimestampMicros(*first)));
                record.observe_batch(
                    &info,
                    times
                        .iter()
                        .map(|t| (&util, TimestampMicros(*t), *t as f64)),
                );
            }
            let record = record.unwrap();
            assert_eq!(
                record.info.hostname.as_deref(),
                Some("c"),
                "order {order:?}"
            );
            assert_eq!(
                (record.first_seen, record.last_seen),
                (TimestampMicros(10), TimestampMicros(30)),
                "order {order:?}"
            );
        }
        // An empty batch leaves the record as it was, metadata included.
        let mut record = GpuRecord::new(described("a"), TimestampMicros(10));
        let before = record.clone();
        record.observe_batch(&described("z"), std::iter::empty());
        assert_eq!(record, before);
    }

    fn metric(i: usize) -> MetricName {
        MetricName::parse(&format!("DCGM_FI_DEV_METRIC_{i:02}")).unwrap()
    }

    #[test]
    fn identity_and_seen_rebuild_the_record_bit_for_bit() {
        let mut info = GpuInfo::new(GpuUuid::parse("GPU-1").unwrap());
        info.labels.insert("k".into(), "v".into());
        let t = 1_752_871_354_000_000;
        let values = [
            0.0,
            -0.0,
            45.0,
            -3.0,
            1.5,
            f64::NAN,
            f64::INFINITY,
            9_007_199_254_740_993.0,
            -9_007_199_254_740_992.0,
            1e300,
            f64::MIN_POSITIVE,
        ];
        let mut record = GpuRecord::new(info, TimestampMicros(t));
        for (i, value) in values.iter().enumerate() {
            record.observe(&metric(i), TimestampMicros(t + 7 * i as i64), *value);
        }
        let identity = record.identity(42);
        assert_eq!(
            identity.metrics,
            record.metrics().cloned().collect::<Vec<_>>()
        );
        let json = serde_json::to_vec(&identity).unwrap();
        let identity: GpuIdentity = serde_json::from_slice(&json).unwrap();
        let seen = record.encode_seen();
        let rebuilt = GpuRecord::from_parts(identity, Some(&seen)).unwrap();
        assert_eq!(rebuilt.info, record.info);
        assert_eq!(
            (rebuilt.first_seen, rebuilt.last_seen),
            (record.first_seen, record.last_seen)
        );
        assert_eq!(rebuilt.latest.len(), values.len());
        for (name, latest) in &record.latest {
            assert_eq!(rebuilt.latest[name].timestamp, latest.timestamp);
            assert_eq!(
                rebuilt.latest[name].value.to_bits(),
                latest.value.to_bits(),
                "{name}"
            );
        }
    }

    #[test]
    fn seen_value_of_ten_integer_metrics_is_small() {
        let info = GpuInfo::new(GpuUuid::parse("GPU-1").unwrap());
        let t = 1_752_871_354_000_000;
        let mut record = GpuRecord::new(info, TimestampMicros(t));
        for i in 0..10 {
            record.observe(
                &metric(i),
                TimestampMicros(t + 10 * i as i64),
                (i * 37) as f64,
            );
        }
        // Format, last_seen (8 bytes), count, then a byte each for index, age and value, plus a
        // second byte for the three ages and eight values of 64 or more.
        assert_eq!(record.encode_seen().len(), 1 + 8 + 1 + 10 * 3 + 3 + 8);
    }

    #[test]
    fn identity_without_seen_value_is_a_record_seen_once() {
        let identity = GpuIdentity {
            info: GpuInfo::new(GpuUuid::parse("GPU-1").unwrap()),
            first_seen: TimestampMicros(10),
            metrics: vec![metric(0)],
            bucket: 0,
        };
        let record = GpuRecord::from_parts(identity.clone(), None).unwrap();
        assert_eq!(
            record,
            GpuRecord::new(identity.info.clone(), TimestampMicros(10))
        );
        // A record stored before the split reads as an identity with no metrics.
        let old = serde_json::to_vec(&record).unwrap();
        let parsed: GpuIdentity = serde_json::from_slice(&old).unwrap();
        assert_eq!((parsed.metrics.len(), parsed.bucket), (0, 0));
    }

    #[test]
    fn corrupt_seen_values_are_errors() {
        let info = GpuInfo::new(GpuUuid::parse("GPU-1").unwrap());
        let mut record = GpuRecord::new(info, TimestampMicros(10));
        record.observe(&metric(0), TimestampMicros(10), 1.5);
        record.observe(&metric(1), TimestampMicros(12), 2.0);
        let seen = record.encode_seen();
        let identity = record.identity(0);
        let mut fewer = identity.clone();
        fewer.metrics.pop();
        assert!(GpuRecord::from_parts(fewer, Some(&seen)).is_err());
        for cut in 0..seen.len() {
            assert!(GpuRecord::from_parts(identity.clone(), Some(&seen[..cut])).is_err());
        }
        let mut longer = seen.clone();
        longer.push(0);
        assert!(GpuRecord::from_parts(identity.clone(), Some(&longer)).is_err());
        let mut other_format = seen;
        other_format[0] = 9;
        assert!(GpuRecord::from_parts(identity, Some(&other_format)).is_err());
    }
}
