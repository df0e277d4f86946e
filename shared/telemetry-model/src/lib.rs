//! GPU telemetry domain model: validated ids, GPU metadata, timestamps, CloudEvent sample batches,
//! the streaming DCGM CSV reader and how a GPU's metric becomes a dcgm-exporter series.
//!
//! This crate does no I/O beyond reading a CSV from a [`std::io::Read`] or a file.

pub mod batch;
pub mod columnar;
pub mod csv_reader;
pub mod frame;
pub mod gpu;
pub mod ids;
pub mod series;
pub mod time;
mod wire;

pub use batch::{
    BatchError, BatchEvent, DataEncoding, PackedSample, SampleBatch, SampleBatchBuilder,
};
pub use columnar::COLUMNAR_CONTENT_TYPE;
pub use csv_reader::{
    is_blank_sentinel, summarize, BadRow, CsvError, CsvRow, CsvSummary, DcgmCsvReader, ReadStats,
    RowOutcome,
};
pub use gpu::{parse_labels, GpuInfo, LabelsError};
pub use ids::{GpuUuid, InvalidId, MetricName};
pub use series::{series_labels, METRIC_NAME_LABEL};
pub use time::{TimeParseError, TimestampMicros, DEFAULT_MAX_FUTURE};
