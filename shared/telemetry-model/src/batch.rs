//! Sample batches, the unit that travels on the queue, and their CloudEvents 1.0 envelope.
//!
//! A batch stores each GPU and metric once and refers to them by index from compact rows, so a
//! sample costs a few dozen bytes on the wire instead of a repeated UUID and label map.
//! Wire form of the `data` member:
//! `{"gpus":[GpuInfo..],"metrics":["DCGM_FI_DEV_GPU_UTIL",..],"t0":<micros>,"rows":[[g,m,dt,v],..]}`
//! where a row's timestamp is `t0 + dt`.
//!
//! The same batch may travel in the columnar binary form instead ([`crate::columnar`]), base64 in
//! the event's `data_base64` member with `datacontenttype` [`COLUMNAR_CONTENT_TYPE`]: about a
//! quarter of the JSON's size. Decoders accept both. On the queue an event travels in the
//! binary form of [`crate::frame`] (attributes in a compact header, the data raw); structured
//! JSON events are still accepted there.

use std::collections::{HashMap, HashSet};
use std::fmt;

use cloudevents::event::SpecVersion;
use cloudevents::{AttributesReader, AttributesWriter, Data, Event};
use serde::de::{SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeTuple};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use base64::Engine as _;

use crate::columnar::{self, COLUMNAR_CONTENT_TYPE};
use crate::gpu::GpuInfo;
use crate::ids::{GpuUuid, MetricName};
use crate::time::{TimeParseError, TimestampMicros};

/// Why a batch or its event envelope was rejected.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("decode CloudEvent JSON: {0}")]
    DecodeJson(#[from] serde_json::Error),
    #[error("unsupported CloudEvents specversion {found:?}, expected \"1.0\"")]
    CheckSpecVersion { found: String },
    #[error(
        "unexpected event type {found:?}, expected {:?}",
        BatchEvent::EVENT_TYPE
    )]
    CheckEventType { found: String },
    #[error(
        "unsupported datacontenttype {found:?}, expected \"application/json\" or {:?}",
        crate::columnar::COLUMNAR_CONTENT_TYPE
    )]
    CheckContentType { found: String },
    #[error("decode data_base64: {0}")]
    DecodeBase64(#[from] base64::DecodeError),
    #[error("decode columnar data at byte {offset}: {reason}")]
    DecodeColumnar { offset: usize, reason: String },
    #[error("decode framed event at byte {offset}: {reason}")]
    DecodeFrame { offset: usize, reason: String },
    #[error("the event has both data and data_base64")]
    CheckDataMembers,
    #[error("CloudEvent attribute {attribute:?} is missing or empty")]
    CheckAttribute { attribute: &'static str },
    #[error("CloudEvent time: {0}")]
    ParseTime(#[from] TimeParseError),
    #[error("CloudEvent carries no data")]
    CheckData,
    #[error("row {row}: GPU index {index} is out of range ({len} GPUs)")]
    ValidateGpuIndex { row: usize, index: u32, len: usize },
    #[error("row {row}: metric index {index} is out of range ({len} metrics)")]
    ValidateMetricIndex { row: usize, index: u32, len: usize },
    #[error("row {row}: value {value} is not finite")]
    ValidateValue { row: usize, value: f64 },
    #[error("row {row}: timestamp {micros} µs is outside the years 0000..=9999")]
    ValidateTimestamp { row: usize, micros: i64 },
    #[error("GPU {uuid} is listed twice")]
    ValidateDuplicateGpu { uuid: GpuUuid },
    #[error("metric {metric} is listed twice")]
    ValidateDuplicateMetric { metric: MetricName },
}

/// One sample inside a [`SampleBatch`], referring to the batch's GPU and metric tables.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PackedSample {
    /// Index into [`SampleBatch::gpus`].
    pub gpu: u32,
    /// Index into [`SampleBatch::metrics`].
    pub metric: u32,
    pub timestamp: TimestampMicros,
    pub value: f64,
}

/// Samples of any number of GPUs and metrics, with each GPU and metric stored once.
///
/// Serde uses the compact wire form described in the module docs; deserializing validates.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleBatch {
    pub gpus: Vec<GpuInfo>,
    pub metrics: Vec<MetricName>,
    pub rows: Vec<PackedSample>,
}

impl SampleBatch {
    pub fn builder() -> SampleBatchBuilder {
        SampleBatchBuilder::default()
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Resolves every row against the GPU and metric tables, in row order.
    ///
    /// # Panics
    /// If a row's index is out of range; batches from the builder or from decoding never are,
    /// hand-built ones should pass [`SampleBatch::validate`] first.
    pub fn samples(&self) -> impl Iterator<Item = (&GpuInfo, &MetricName, TimestampMicros, f64)> {
        self.rows.iter().map(move |r| {
            (
                &self.gpus[r.gpu as usize],
                &self.metrics[r.metric as usize],
                r.timestamp,
                r.value,
            )
        })
    }

    /// Checks that every index is in range, every value finite, every timestamp writable as
    /// RFC 3339, and that no GPU or metric is listed twice.
    pub fn validate(&self) -> Result<(), BatchError> {
        let mut uuids = HashSet::with_capacity(self.gpus.len());
        for gpu in &self.gpus {
            if !uuids.insert(&gpu.uuid) {
                return Err(BatchError::ValidateDuplicateGpu {
                    uuid: gpu.uuid.clone(),
                });
            }
        }
        let mut metrics = HashSet::with_capacity(self.metrics.len());
        for metric in &self.metrics {
            if !metrics.insert(metric) {
                return Err(BatchError::ValidateDuplicateMetric {
                    metric: metric.clone(),
                });
            }
        }
        for (row, r) in self.rows.iter().enumerate() {
            if r.gpu as usize >= self.gpus.len() {
                return Err(BatchError::ValidateGpuIndex {
                    row,
                    index: r.gpu,
                    len: self.gpus.len(),
                });
            }
            if r.metric as usize >= self.metrics.len() {
                return Err(BatchError::ValidateMetricIndex {
                    row,
                    index: r.metric,
                    len: self.metrics.len(),
                });
            }
            if !r.value.is_finite() {
                return Err(BatchError::ValidateValue {
                    row,
                    value: r.value,
                });
            }
            if !r.timestamp.is_rfc3339_representable() {
                return Err(BatchError::ValidateTimestamp {
                    row,
                    micros: r.timestamp.0,
                });
            }
        }
        Ok(())
    }

    /// The base the wire form's row offsets are relative to: the earliest timestamp, so that
    /// offsets are small and non-negative.
    fn t0(&self) -> i64 {
        self.rows.iter().map(|r| r.timestamp.0).min().unwrap_or(0)
    }

    /// A rough upper bound of the JSON size, to size the output buffer once.
    fn encoded_size_hint(&self) -> usize {
        256 + self.gpus.len() * 320 + self.metrics.len() * 32 + self.rows.len() * 28
    }
}

/// Builds a [`SampleBatch`], storing each GPU (by UUID) and metric once. Its indexes hash with
/// foldhash (seeded per process): a streamer looks a GPU and a metric up for every row it reads.
#[derive(Debug, Default)]
pub struct SampleBatchBuilder {
    gpu_index: HashMap<GpuUuid, u32, foldhash::fast::RandomState>,
    metric_index: HashMap<MetricName, u32, foldhash::fast::RandomState>,
    batch: SampleBatch,
}

impl SampleBatchBuilder {
    /// Adds one sample. The first `GpuInfo` seen for a UUID is the one the batch keeps.
    pub fn push(
        &mut self,
        gpu: &GpuInfo,
        metric: &MetricName,
        timestamp: TimestampMicros,
        value: f64,
    ) -> &mut Self {
        let gpu = match self.gpu_index.get(&gpu.uuid) {
            Some(&i) => i,
            None => {
                let i = index_u32(self.batch.gpus.len());
                self.gpu_index.insert(gpu.uuid.clone(), i);
                self.batch.gpus.push(gpu.clone());
                i
            }
        };
        let metric = match self.metric_index.get(metric) {
            Some(&i) => i,
            None => {
                let i = index_u32(self.batch.metrics.len());
                self.metric_index.insert(metric.clone(), i);
                self.batch.metrics.push(metric.clone());
                i
            }
        };
        self.batch.rows.push(PackedSample {
            gpu,
            metric,
            timestamp,
            value,
        });
        self
    }

    /// Number of samples pushed so far.
    pub fn len(&self) -> usize {
        self.batch.rows.len()
    }

    /// Whether a sample of the GPU `uuid` was pushed.
    pub fn has_gpu(&self, uuid: &GpuUuid) -> bool {
        self.gpu_index.contains_key(uuid)
    }

    /// Whether a sample of `metric` was pushed.
    pub fn has_metric(&self, metric: &MetricName) -> bool {
        self.metric_index.contains_key(metric)
    }

    pub fn is_empty(&self) -> bool {
        self.batch.rows.is_empty()
    }

    pub fn build(self) -> SampleBatch {
        self.batch
    }
}

fn index_u32(len: usize) -> u32 {
    u32::try_from(len).expect("a batch holds fewer than 2^32 distinct GPUs and metrics")
}

/// Largest magnitude below which every integer is exactly an f64 (2^53).
const EXACT_INT_LIMIT: f64 = 9_007_199_254_740_992.0;

/// A row as the wire's `[g, m, dt, v]` array.
struct WireRow {
    gpu: u32,
    metric: u32,
    dt: i64,
    value: f64,
}

impl Serialize for WireRow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(4)?;
        t.serialize_element(&self.gpu)?;
        t.serialize_element(&self.metric)?;
        t.serialize_element(&self.dt)?;
        // Integral values (most DCGM gauges) are written without the ".0": two bytes per sample.
        // They decode to the same f64; -0.0 keeps its float form so its sign survives.
        let v = self.value;
        if v.fract() == 0.0 && v.abs() < EXACT_INT_LIMIT && !(v == 0.0 && v.is_sign_negative()) {
            t.serialize_element(&(v as i64))?;
        } else {
            t.serialize_element(&v)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for WireRow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = WireRow;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a [gpu, metric, dt, value] array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<WireRow, A::Error> {
                use serde::de::Error;
                let gpu = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let metric = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                let dt = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(2, &self))?;
                let value = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(3, &self))?;
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(5, &self));
                }
                Ok(WireRow {
                    gpu,
                    metric,
                    dt,
                    value,
                })
            }
        }
        deserializer.deserialize_seq(RowVisitor)
    }
}

struct WireRowsRef<'a> {
    rows: &'a [PackedSample],
    t0: i64,
}

impl Serialize for WireRowsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.rows.iter().map(|r| WireRow {
            gpu: r.gpu,
            metric: r.metric,
            // Wrapping keeps the round trip exact even for timestamps that validation would
            // reject; decoding wraps back the same way.
            dt: r.timestamp.0.wrapping_sub(self.t0),
            value: r.value,
        }))
    }
}

impl Serialize for SampleBatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let t0 = self.t0();
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("gpus", &self.gpus)?;
        map.serialize_entry("metrics", &self.metrics)?;
        map.serialize_entry("t0", &t0)?;
        map.serialize_entry(
            "rows",
            &WireRowsRef {
                rows: &self.rows,
                t0,
            },
        )?;
        map.end()
    }
}

/// The `data` member as decoded, before validation.
#[derive(Deserialize)]
pub(crate) struct WireBatch {
    #[serde(default)]
    gpus: Vec<GpuInfo>,
    #[serde(default)]
    metrics: Vec<MetricName>,
    #[serde(default)]
    t0: i64,
    #[serde(default)]
    rows: Vec<WireRow>,
}

impl WireBatch {
    pub(crate) fn into_batch(self) -> Result<SampleBatch, BatchError> {
        let t0 = self.t0;
        let batch = SampleBatch {
            gpus: self.gpus,
            metrics: self.metrics,
            rows: self
                .rows
                .into_iter()
                .map(|r| PackedSample {
                    gpu: r.gpu,
                    metric: r.metric,
                    timestamp: TimestampMicros(t0.wrapping_add(r.dt)),
                    value: r.value,
                })
                .collect(),
        };
        batch.validate()?;
        Ok(batch)
    }
}

impl<'de> Deserialize<'de> for SampleBatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        WireBatch::deserialize(deserializer)?
            .into_batch()
            .map_err(serde::de::Error::custom)
    }
}

/// A [`SampleBatch`] in a CloudEvents 1.0 envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchEvent {
    /// Unique per batch; consumers derive idempotent store keys from it.
    pub id: String,
    /// URI-reference naming the producer.
    pub source: String,
    /// When the event was created.
    pub time: TimestampMicros,
    pub batch: SampleBatch,
}

const SPEC_VERSION: &str = "1.0";
const CONTENT_TYPE: &str = "application/json";

#[derive(Serialize)]
struct StructuredEventOut<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    ty: &'static str,
    time: String,
    datacontenttype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a SampleBatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

/// How a batch event carries its data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataEncoding {
    /// `data` is the batch's JSON wire form (`application/json`).
    Json,
    /// `data_base64` is the columnar binary form ([`COLUMNAR_CONTENT_TYPE`]).
    #[default]
    Columnar,
}

impl DataEncoding {
    /// The event's `datacontenttype`.
    pub fn content_type(self) -> &'static str {
        match self {
            DataEncoding::Json => CONTENT_TYPE,
            DataEncoding::Columnar => COLUMNAR_CONTENT_TYPE,
        }
    }

    /// The encoding a `datacontenttype` names (absent means JSON, as CloudEvents defines);
    /// parameters such as `; charset=utf-8` are allowed.
    pub fn from_content_type(ct: Option<&str>) -> Result<DataEncoding, BatchError> {
        let Some(ct) = ct else {
            return Ok(DataEncoding::Json);
        };
        let media_type = ct.split(';').next().unwrap_or("").trim();
        if media_type.eq_ignore_ascii_case(CONTENT_TYPE) {
            Ok(DataEncoding::Json)
        } else if media_type.eq_ignore_ascii_case(COLUMNAR_CONTENT_TYPE) {
            Ok(DataEncoding::Columnar)
        } else {
            Err(BatchError::CheckContentType {
                found: ct.to_owned(),
            })
        }
    }
}

#[derive(Deserialize)]
struct StructuredEventIn {
    specversion: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    source: String,
    #[serde(rename = "type", default)]
    ty: String,
    time: Option<String>,
    datacontenttype: Option<String>,
    data: Option<WireBatch>,
    data_base64: Option<String>,
}

impl BatchEvent {
    /// The CloudEvents `type` of every batch event.
    pub const EVENT_TYPE: &'static str = "io.gpu-telemetry.samples.batch.v1";

    /// An event created now.
    pub fn new(id: impl Into<String>, source: impl Into<String>, batch: SampleBatch) -> Self {
        Self {
            id: id.into(),
            source: source.into(),
            time: TimestampMicros::now(),
            batch,
        }
    }

    /// CloudEvents 1.0 structured-mode JSON, the batch as JSON `data`.
    pub fn to_json(&self) -> Vec<u8> {
        self.to_json_with(DataEncoding::Json)
    }

    /// CloudEvents 1.0 structured-mode JSON, the batch in `encoding`.
    pub fn to_json_with(&self, encoding: DataEncoding) -> Vec<u8> {
        let (data, data_base64, hint) = match encoding {
            DataEncoding::Json => (Some(&self.batch), None, self.batch.encoded_size_hint()),
            DataEncoding::Columnar => {
                let binary = columnar::encode(&self.batch);
                let text = base64::engine::general_purpose::STANDARD.encode(&binary);
                let hint = text.len() + 256 + self.id.len() + self.source.len();
                (None, Some(text), hint)
            }
        };
        let mut out = Vec::with_capacity(hint);
        let event = StructuredEventOut {
            specversion: SPEC_VERSION,
            id: &self.id,
            source: &self.source,
            ty: Self::EVENT_TYPE,
            time: self.time.to_rfc3339(),
            datacontenttype: encoding.content_type(),
            data,
            data_base64,
        };
        serde_json::to_writer(&mut out, &event)
            .expect("serializing to a Vec with string map keys cannot fail");
        out
    }

    /// Decodes and checks structured-mode JSON written by [`BatchEvent::to_json_with`] (either
    /// encoding) or any CloudEvents producer following the same data schema.
    pub fn from_json(bytes: &[u8]) -> Result<Self, BatchError> {
        let ev: StructuredEventIn = serde_json::from_slice(bytes)?;
        if ev.specversion != SPEC_VERSION {
            return Err(BatchError::CheckSpecVersion {
                found: ev.specversion,
            });
        }
        let encoding = check_envelope(&ev.id, &ev.source, &ev.ty, ev.datacontenttype.as_deref())?;
        let time = ev
            .time
            .as_deref()
            .ok_or(BatchError::CheckAttribute { attribute: "time" })
            .and_then(|t| Ok(TimestampMicros::parse_rfc3339(t)?))?;
        let batch = match (encoding, ev.data, ev.data_base64) {
            (_, Some(_), Some(_)) => return Err(BatchError::CheckDataMembers),
            (DataEncoding::Json, Some(data), None) => data.into_batch()?,
            (DataEncoding::Columnar, None, Some(text)) => columnar::decode(
                &base64::engine::general_purpose::STANDARD.decode(text.as_bytes())?,
            )?,
            _ => return Err(BatchError::CheckData),
        };
        Ok(Self {
            id: ev.id,
            source: ev.source,
            time,
            batch,
        })
    }

    /// The same event as a `cloudevents-sdk` [`Event`], for its HTTP bindings.
    pub fn to_cloudevent(&self) -> Event {
        self.to_cloudevent_with(DataEncoding::Json)
    }

    /// The same event as a `cloudevents-sdk` [`Event`] with its data in `encoding` (columnar
    /// data is binary, which the HTTP binary mode carries as the raw body).
    pub fn to_cloudevent_with(&self, encoding: DataEncoding) -> Event {
        let mut ev = Event::default();
        ev.set_id(self.id.clone());
        ev.set_source(self.source.clone());
        ev.set_type(Self::EVENT_TYPE);
        ev.set_time(Some(self.time.to_datetime()));
        ev.set_subject(None::<String>);
        match encoding {
            DataEncoding::Json => {
                let data = serde_json::to_value(&self.batch)
                    .expect("a batch serializes to a JSON value: all map keys are strings");
                ev.set_data(CONTENT_TYPE, data);
            }
            DataEncoding::Columnar => {
                ev.set_data(COLUMNAR_CONTENT_TYPE, columnar::encode(&self.batch));
            }
        }
        ev
    }

    /// Accepts JSON data in any of the SDK's forms (parsed JSON, bytes from the binary HTTP
    /// mode, or a string), and columnar data as bytes.
    pub fn from_cloudevent(mut ev: Event) -> Result<Self, BatchError> {
        if ev.specversion() != SpecVersion::V10 {
            return Err(BatchError::CheckSpecVersion {
                found: ev.specversion().as_str().to_owned(),
            });
        }
        let time = ev
            .time()
            .map(|t| TimestampMicros::from_datetime(*t))
            .ok_or(BatchError::CheckAttribute { attribute: "time" })?;
        let encoding = check_envelope(ev.id(), ev.source(), ev.ty(), ev.datacontenttype())?;
        let id = ev.id().to_owned();
        let source = ev.source().to_string();
        let (_, _, data) = ev.take_data();
        let batch = match (encoding, data.ok_or(BatchError::CheckData)?) {
            (DataEncoding::Json, Data::Json(v)) => serde_json::from_value::<WireBatch>(v)?,
            (DataEncoding::Json, Data::Binary(b)) => serde_json::from_slice::<WireBatch>(&b)?,
            (DataEncoding::Json, Data::String(s)) => serde_json::from_str::<WireBatch>(&s)?,
            (DataEncoding::Columnar, Data::Binary(b)) => {
                return Ok(Self {
                    id,
                    source,
                    time,
                    batch: columnar::decode(&b)?,
                })
            }
            (DataEncoding::Columnar, _) => return Err(BatchError::CheckData),
        }
        .into_batch()?;
        Ok(Self {
            id,
            source,
            time,
            batch,
        })
    }
}

/// Checks the attributes both decoders share; the data's encoding comes from `datacontenttype`.
pub(crate) fn check_envelope(
    id: &str,
    source: &str,
    ty: &str,
    datacontenttype: Option<&str>,
) -> Result<DataEncoding, BatchError> {
    if ty != BatchEvent::EVENT_TYPE {
        return Err(BatchError::CheckEventType {
            found: ty.to_owned(),
        });
    }
    let encoding = DataEncoding::from_content_type(datacontenttype)?;
    if id.is_empty() {
        return Err(BatchError::CheckAttribute { attribute: "id" });
    }
    if source.is_empty() {
        return Err(BatchError::CheckAttribute {
            attribute: "source",
        });
    }
    Ok(encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(uuid: &str) -> GpuInfo {
        GpuInfo::new(GpuUuid::parse(uuid).unwrap())
    }

    fn metric(name: &str) -> MetricName {
        MetricName::parse(name).unwrap()
    }

    fn sample_batch() -> SampleBatch {
        let (a, b) = (gpu("GPU-a"), gpu("GPU-b"));
        let (util, temp) = (
            metric("DCGM_FI_DEV_GPU_UTIL"),
            metric("DCGM_FI_DEV_GPU_TEMP"),
        );
        let mut builder = SampleBatch::builder();
        builder
            .push(&a, &util, TimestampMicros(1_000_010), 100.0)
            .push(&b, &util, TimestampMicros(1_000_000), 0.5)
            .push(&a, &temp, TimestampMicros(1_000_020), -0.0);
        builder.build()
    }

    #[test]
    fn builder_dedups_gpus_and_metrics_in_first_seen_order() {
        let batch = sample_batch();
        assert_eq!(batch.len(), 3);
        assert_eq!(
            batch
                .gpus
                .iter()
                .map(|g| g.uuid.as_str())
                .collect::<Vec<_>>(),
            ["GPU-a", "GPU-b"]
        );
        assert_eq!(
            batch.metrics.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            ["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP"]
        );
        let rows: Vec<_> = batch.rows.iter().map(|r| (r.gpu, r.metric)).collect();
        assert_eq!(rows, [(0, 0), (1, 0), (0, 1)]);
        let resolved: Vec<_> = batch
            .samples()
            .map(|(g, m, t, v)| (g.uuid.as_str(), m.as_str(), t.0, v))
            .collect();
        assert_eq!(
            resolved,
            [
                ("GPU-a", "DCGM_FI_DEV_GPU_UTIL", 1_000_010, 100.0),
                ("GPU-b", "DCGM_FI_DEV_GPU_UTIL", 1_000_000, 0.5),
                ("GPU-a", "DCGM_FI_DEV_GPU_TEMP", 1_000_020, -0.0),
            ]
        );
        assert!(batch.validate().is_ok());
    }

    #[test]
    fn wire_form_is_compact_and_exact() {
        let batch = sample_batch();
        let json = serde_json::to_string(&batch).unwrap();
        assert_eq!(
            json,
            r#"{"gpus":[{"uuid":"GPU-a"},{"uuid":"GPU-b"}],"metrics":["DCGM_FI_DEV_GPU_UTIL","DCGM_FI_DEV_GPU_TEMP"],"t0":1000000,"rows":[[0,0,10,100],[1,0,0,0.5],[0,1,20,-0.0]]}"#
        );
        let back: SampleBatch = serde_json::from_str(&json).unwrap();
        assert_eq!(back, batch);
        assert!(back.rows[2].value.is_sign_negative());
    }

    #[test]
    fn validate_reports_the_first_problem() {
        let mut batch = sample_batch();
        batch.rows[1].gpu = 2;
        assert!(matches!(
            batch.validate(),
            Err(BatchError::ValidateGpuIndex {
                row: 1,
                index: 2,
                len: 2
            })
        ));

        let mut batch = sample_batch();
        batch.rows[2].metric = 9;
        assert!(matches!(
            batch.validate(),
            Err(BatchError::ValidateMetricIndex {
                row: 2,
                index: 9,
                len: 2
            })
        ));

        let mut batch = sample_batch();
        batch.rows[0].value = f64::NAN;
        assert!(matches!(
            batch.validate(),
            Err(BatchError::ValidateValue { row: 0, .. })
        ));
        batch.rows[0].value = f64::NEG_INFINITY;
        assert!(matches!(
            batch.validate(),
            Err(BatchError::ValidateValue { row: 0, .. })
        ));

        let mut batch = sample_batch();
        batch.rows[1].timestamp = TimestampMicros(i64::MAX);
        assert!(matches!(
            batch.validate(),
            Err(BatchError::ValidateTimestamp {
                row: 1,
                micros: i64::MAX
            })
        ));

        let mut batch = sample_batch();
        batch.gpus[1] = gpu("GPU-a");
        assert!(matches!(
            batch.validate(),
            Err(BatchError::ValidateDuplicateGpu { .. })
        ));

        let mut batch = sample_batch();
        batch.metrics[1] = metric("DCGM_FI_DEV_GPU_UTIL");
        assert!(matches!(
            batch.validate(),
            Err(BatchError::ValidateDuplicateMetric { .. })
        ));
    }

    #[test]
    fn decoding_rejects_out_of_range_indexes() {
        let json = r#"{"gpus":[{"uuid":"GPU-a"}],"metrics":["m"],"t0":0,"rows":[[1,0,0,1]]}"#;
        let err = serde_json::from_str::<SampleBatch>(json).unwrap_err();
        assert!(
            err.to_string().contains("GPU index 1 is out of range"),
            "{err}"
        );
        let json = r#"{"gpus":[{"uuid":"GPU-a"}],"metrics":["m"],"t0":0,"rows":[[0,0,0,1,5]]}"#;
        assert!(serde_json::from_str::<SampleBatch>(json).is_err());
    }

    #[test]
    fn event_json_has_the_cloudevents_attributes() {
        let mut ev = BatchEvent::new("batch-1", "/streamer/0", sample_batch());
        ev.time = TimestampMicros(1_752_871_354_000_000);
        let json: serde_json::Value = serde_json::from_slice(&ev.to_json()).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["id"], "batch-1");
        assert_eq!(json["source"], "/streamer/0");
        assert_eq!(json["type"], "io.gpu-telemetry.samples.batch.v1");
        assert_eq!(json["time"], "2025-07-18T20:42:34.000000Z");
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(json["data"]["t0"], 1_000_000);
        assert_eq!(BatchEvent::from_json(&ev.to_json()).unwrap(), ev);
    }

    fn event_json_with(field: &str, value: serde_json::Value) -> Vec<u8> {
        let mut ev = BatchEvent::new("id", "src", sample_batch());
        ev.time = TimestampMicros(0);
        let mut json: serde_json::Value = serde_json::from_slice(&ev.to_json()).unwrap();
        if value.is_null() {
            json.as_object_mut().unwrap().remove(field);
        } else {
            json[field] = value;
        }
        serde_json::to_vec(&json).unwrap()
    }

    #[test]
    fn from_json_checks_the_envelope() {
        use serde_json::json;
        let err = |f: &str, v| BatchEvent::from_json(&event_json_with(f, v)).unwrap_err();
        assert!(
            matches!(err("specversion", json!("0.3")), BatchError::CheckSpecVersion { found } if found == "0.3")
        );
        assert!(
            matches!(err("type", json!("other")), BatchError::CheckEventType { found } if found == "other")
        );
        assert!(
            matches!(err("datacontenttype", json!("text/csv")), BatchError::CheckContentType { found } if found == "text/csv")
        );
        assert!(matches!(
            err("id", json!("")),
            BatchError::CheckAttribute { attribute: "id" }
        ));
        assert!(matches!(
            err("source", serde_json::Value::Null),
            BatchError::CheckAttribute {
                attribute: "source"
            }
        ));
        assert!(matches!(
            err("time", json!("yesterday")),
            BatchError::ParseTime(_)
        ));
        assert!(matches!(
            err("time", serde_json::Value::Null),
            BatchError::CheckAttribute { attribute: "time" }
        ));
        assert!(matches!(
            err("data", serde_json::Value::Null),
            BatchError::CheckData
        ));
        assert!(matches!(
            err("specversion", serde_json::Value::Null),
            BatchError::DecodeJson(_)
        ));
        assert!(matches!(
            BatchEvent::from_json(b"not json"),
            Err(BatchError::DecodeJson(_))
        ));

        let ok = event_json_with("datacontenttype", json!("application/json; charset=utf-8"));
        assert!(BatchEvent::from_json(&ok).is_ok());
        let ok = event_json_with("datacontenttype", serde_json::Value::Null);
        assert!(BatchEvent::from_json(&ok).is_ok());
    }

    #[test]
    fn from_json_reports_invalid_rows_structurally() {
        let bytes = event_json_with(
            "data",
            serde_json::json!({"gpus":[{"uuid":"GPU-a"}],"metrics":["m"],"t0":0,"rows":[[0,3,0,1]]}),
        );
        assert!(matches!(
            BatchEvent::from_json(&bytes),
            Err(BatchError::ValidateMetricIndex {
                row: 0,
                index: 3,
                len: 1
            })
        ));
    }

    #[test]
    fn columnar_events_round_trip_and_name_their_encoding() {
        use serde_json::json;
        let mut ev = BatchEvent::new("batch-3", "/streamer/2", sample_batch());
        ev.time = TimestampMicros(1_752_871_354_000_000);
        let bytes = ev.to_json_with(DataEncoding::Columnar);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["datacontenttype"], COLUMNAR_CONTENT_TYPE);
        assert!(json.get("data").is_none());
        let binary = base64::engine::general_purpose::STANDARD
            .decode(json["data_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(columnar::decode(&binary).unwrap(), ev.batch);
        let back = BatchEvent::from_json(&bytes).unwrap();
        assert_eq!(back, ev);
        assert!(back.batch.rows[2].value.is_sign_negative());

        // The JSON form is still accepted, and the content type decides how data is read.
        assert_eq!(BatchEvent::from_json(&ev.to_json()).unwrap(), ev);
        let mut both = json.clone();
        both["data"] = serde_json::to_value(&ev.batch).unwrap();
        assert!(matches!(
            BatchEvent::from_json(&serde_json::to_vec(&both).unwrap()),
            Err(BatchError::CheckDataMembers)
        ));
        let mut json_typed = json.clone();
        json_typed["datacontenttype"] = json!("application/json");
        assert!(matches!(
            BatchEvent::from_json(&serde_json::to_vec(&json_typed).unwrap()),
            Err(BatchError::CheckData)
        ));
        let mut not_base64 = json.clone();
        not_base64["data_base64"] = json!("***");
        assert!(matches!(
            BatchEvent::from_json(&serde_json::to_vec(&not_base64).unwrap()),
            Err(BatchError::DecodeBase64(_))
        ));
        let mut corrupt = json;
        corrupt["data_base64"] = json!(base64::engine::general_purpose::STANDARD.encode([1, 9]));
        assert!(matches!(
            BatchEvent::from_json(&serde_json::to_vec(&corrupt).unwrap()),
            Err(BatchError::DecodeColumnar { .. })
        ));

        let ce = ev.to_cloudevent_with(DataEncoding::Columnar);
        assert_eq!(ce.datacontenttype(), Some(COLUMNAR_CONTENT_TYPE));
        assert_eq!(BatchEvent::from_cloudevent(ce).unwrap(), ev);
    }

    #[test]
    fn columnar_events_are_a_fraction_of_the_json() {
        let gpus: Vec<GpuInfo> = (0..15)
            .map(|i| {
                let mut g = gpu(&format!("GPU-5fd4f087-86f3-7a43-b711-4771313af{i:03}"));
                g.hostname = Some("mtv5-dgx1-hgpu-031".into());
                g.model_name = Some("NVIDIA H100 80GB HBM3".into());
                g.labels.insert("job".into(), "dgx_dcgm_exporter".into());
                g
            })
            .collect();
        let mut builder = SampleBatch::builder();
        let mut ts = 1_752_871_354_000_000;
        for g in &gpus {
            for m in 0..10 {
                ts += 4;
                let name = metric(&format!("DCGM_FI_DEV_M{m}"));
                builder.push(g, &name, TimestampMicros(ts), f64::from(m) * 12.5);
            }
        }
        let ev = BatchEvent::new(
            "0123456789abcdef0123456789abcdef",
            "/streamer/s",
            builder.build(),
        );
        let json = ev.to_json().len();
        let columnar = ev.to_json_with(DataEncoding::Columnar).len();
        // One pass's batch of a partition: the GPU table is most of what is left.
        assert!(
            columnar * 10 < json * 6,
            "columnar {columnar} bytes, JSON {json}"
        );
    }

    #[test]
    fn cloudevent_conversion_round_trips_and_accepts_binary_data() {
        let mut ev = BatchEvent::new("batch-2", "/streamer/1", sample_batch());
        ev.time = TimestampMicros(1_752_871_354_123_456);
        let ce = ev.to_cloudevent();
        assert_eq!(ce.ty(), BatchEvent::EVENT_TYPE);
        assert_eq!(ce.datacontenttype(), Some("application/json"));
        assert_eq!(BatchEvent::from_cloudevent(ce.clone()).unwrap(), ev);

        let mut binary = ce.clone();
        let data = serde_json::to_vec(&ev.batch).unwrap();
        binary.set_data("application/json", data);
        assert_eq!(BatchEvent::from_cloudevent(binary).unwrap(), ev);

        let mut wrong = ce.clone();
        wrong.set_type("something.else");
        assert!(matches!(
            BatchEvent::from_cloudevent(wrong),
            Err(BatchError::CheckEventType { .. })
        ));
        let mut untimed = ce;
        untimed.set_time(None::<chrono::DateTime<chrono::Utc>>);
        assert!(matches!(
            BatchEvent::from_cloudevent(untimed),
            Err(BatchError::CheckAttribute { attribute: "time" })
        ));
    }
}
