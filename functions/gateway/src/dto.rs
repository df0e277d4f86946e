//! The JSON bodies the API returns. Only the gateway speaks these DTOs; they are built from the
//! store's records, with every time rendered as RFC 3339 UTC with six fractional digits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use telemetry_store::{GpuRecord, StoredSample};
use utoipa::ToSchema;

/// A GPU that has telemetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuSummary {
    /// The GPU's identity (DCGM UUID).
    #[schema(example = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50")]
    pub uuid: String,
    /// The GPU's index on its host (DCGM `gpu_id`; repeats across hosts).
    #[schema(example = 0, minimum = 0)]
    #[schema(required = true)]
    pub gpu_id: Option<u32>,
    #[schema(example = "nvidia0")]
    #[schema(required = true)]
    pub device: Option<String>,
    #[schema(example = "NVIDIA H100 80GB HBM3")]
    #[schema(required = true)]
    pub model_name: Option<String>,
    #[schema(example = "mtv5-dgx1-hgpu-031")]
    #[schema(required = true)]
    pub hostname: Option<String>,
    /// Time of the oldest sample received.
    #[schema(format = DateTime, example = "2025-07-18T20:42:34.000000Z")]
    pub first_seen: String,
    /// Time of the newest sample received.
    #[schema(format = DateTime, example = "2025-07-18T20:42:44.000000Z")]
    pub last_seen: String,
    /// Names of the metrics this GPU reports, sorted.
    #[schema(example = json!(["DCGM_FI_DEV_GPU_UTIL"]))]
    pub metrics: Vec<String>,
}

impl From<&GpuRecord> for GpuSummary {
    fn from(record: &GpuRecord) -> Self {
        GpuSummary {
            uuid: record.info.uuid.to_string(),
            gpu_id: record.info.gpu_index,
            device: record.info.device.clone(),
            model_name: record.info.model_name.clone(),
            hostname: record.info.hostname.clone(),
            first_seen: record.first_seen.to_rfc3339(),
            last_seen: record.last_seen.to_rfc3339(),
            metrics: record.metrics().map(|m| m.to_string()).collect(),
        }
    }
}

/// `GET /api/v1/gpus`: about 400 bytes of JSON per GPU with ten metrics (before gzip).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuList {
    /// Sorted by UUID.
    pub gpus: Vec<GpuSummary>,
    pub count: usize,
    /// Pass as `cursor` (with the same filters) for the GPUs after these; null when no GPU
    /// follows (always null without `limit`).
    #[schema(required = true, pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/gpus/{id}`: the summary plus the GPU's placement and exporter labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuDetail {
    #[serde(flatten)]
    pub summary: GpuSummary,
    /// Kubernetes container the GPU was assigned to, when known.
    #[schema(required = true)]
    pub container: Option<String>,
    /// Kubernetes pod the GPU was assigned to, when known.
    #[schema(required = true)]
    pub pod: Option<String>,
    /// Kubernetes namespace of that pod, when known.
    #[schema(required = true)]
    pub namespace: Option<String>,
    /// Exporter labels not already given by a field above.
    #[schema(example = json!({"DCGM_FI_DRIVER_VERSION": "535.129.03"}))]
    pub labels: BTreeMap<String, String>,
}

impl From<&GpuRecord> for GpuDetail {
    fn from(record: &GpuRecord) -> Self {
        GpuDetail {
            summary: record.into(),
            container: record.info.container.clone(),
            pod: record.info.pod.clone(),
            namespace: record.info.namespace.clone(),
            labels: record.info.labels.clone(),
        }
    }
}

/// One sample, or one bucket when downsampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TelemetryEntry {
    /// Sample time (bucket start when downsampling).
    #[schema(format = DateTime, example = "2025-07-18T20:42:34.000000Z")]
    pub timestamp: String,
    #[schema(example = "DCGM_FI_DEV_GPU_UTIL")]
    pub metric_name: String,
    #[schema(example = 87.0)]
    pub value: f64,
}

impl From<&StoredSample> for TelemetryEntry {
    fn from(sample: &StoredSample) -> Self {
        TelemetryEntry {
            timestamp: sample.timestamp.to_rfc3339(),
            metric_name: sample.metric.to_string(),
            value: sample.value,
        }
    }
}

/// `GET /api/v1/gpus/{id}/telemetry`: one page of entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TelemetryPage {
    pub gpu: GpuSummary,
    /// Ordered by time (ties by metric name), ascending unless `order=desc`.
    pub entries: Vec<TelemetryEntry>,
    pub count: usize,
    /// Pass as `cursor` (with the same other parameters) for the next page; null on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// One metric's points of a series page, in the page's time order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricSeries {
    #[schema(example = "DCGM_FI_DEV_GPU_UTIL")]
    pub metric_name: String,
    /// Sample times (bucket starts when downsampling) as integer Unix microseconds.
    #[schema(example = json!([1752871354000000_i64, 1752871355000000_i64]))]
    pub timestamps_us: Vec<i64>,
    /// The value at each of `timestamps_us`, position by position.
    #[schema(example = json!([87.0, 88.5]))]
    pub values: Vec<f64>,
}

/// `GET /api/v1/gpus/{id}/telemetry?format=series`: one page of the same samples as the entry
/// list, per metric; about 20 bytes of JSON per point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TelemetrySeriesPage {
    pub gpu: GpuSummary,
    /// One per metric with points on this page, sorted by metric name.
    pub series: Vec<MetricSeries>,
    /// Points on this page, over all series.
    pub count: usize,
    /// Pass as `cursor` (with the same other parameters) for the next page; null on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// A telemetry page in the shape `format` asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TelemetryResponse {
    Entries(TelemetryPage),
    Series(TelemetrySeriesPage),
}

/// The newest value of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LatestEntry {
    #[schema(example = "DCGM_FI_DEV_GPU_UTIL")]
    pub metric_name: String,
    #[schema(format = DateTime, example = "2025-07-18T20:42:44.000000Z")]
    pub timestamp: String,
    #[schema(example = 100.0)]
    pub value: f64,
}

/// `GET /api/v1/gpus/{id}/latest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LatestValues {
    pub gpu: GpuSummary,
    /// One entry per metric, sorted by metric name.
    pub metrics: Vec<LatestEntry>,
    pub count: usize,
}

impl From<&GpuRecord> for LatestValues {
    fn from(record: &GpuRecord) -> Self {
        let metrics: Vec<LatestEntry> = record
            .latest
            .iter()
            .map(|(name, latest)| LatestEntry {
                metric_name: name.to_string(),
                timestamp: latest.timestamp.to_rfc3339(),
                value: latest.value,
            })
            .collect();
        LatestValues {
            gpu: record.into(),
            count: metrics.len(),
            metrics,
        }
    }
}

/// A metric name seen in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricInfo {
    #[schema(example = "DCGM_FI_DEV_GPU_UTIL")]
    pub name: String,
    /// dcgm-exporter's description, for known DCGM fields.
    #[schema(example = "GPU utilization (in %).")]
    #[schema(required = true)]
    pub description: Option<String>,
    /// Unit of the values, for known DCGM fields that have one.
    #[schema(example = "%")]
    #[schema(required = true)]
    pub unit: Option<String>,
    /// Prometheus type dcgm-exporter gives the field (`gauge`, `counter`, `label`), when known.
    #[schema(example = "gauge")]
    #[schema(required = true)]
    pub kind: Option<String>,
    /// GPUs reporting this metric.
    #[schema(example = 247, minimum = 0)]
    pub gpu_count: usize,
}

/// `GET /api/v1/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricList {
    /// Sorted by name.
    pub metrics: Vec<MetricInfo>,
    pub count: usize,
}

/// One queue partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PartitionInfo {
    #[schema(minimum = 0)]
    pub partition: u32,
    /// Member id of the collector that owns it; null while unowned.
    #[schema(required = true)]
    pub owner: Option<String>,
    /// Last sequence number published.
    #[schema(minimum = 0)]
    pub head: u64,
    /// Last sequence number committed by the collectors.
    #[schema(minimum = 0)]
    pub committed_offset: u64,
    /// Messages published but not yet committed.
    #[schema(minimum = 0)]
    pub lag: u64,
}

/// `GET /api/v1/queue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueInfo {
    #[schema(example = "telemetry")]
    pub topic: String,
    #[schema(example = "collectors")]
    pub group: String,
    /// Whether the topic exists yet (it is created by the first streamer or collector).
    pub exists: bool,
    /// Pending messages (sum of the partitions' lag).
    #[schema(minimum = 0)]
    pub depth: u64,
    #[schema(minimum = 0)]
    pub dead_letters: u64,
    pub partitions: Vec<PartitionInfo>,
    /// Member ids of the live collectors.
    pub members: Vec<String>,
}
