//! One telemetry sample: a GPU's metric value at a point in time.

use serde::{Deserialize, Serialize};

use crate::ids::{GpuUuid, MetricName};
use crate::time::TimestampMicros;

/// A single measurement. `timestamp` is when the pipeline observed the value, not the CSV's
/// `timestamp` column (see the design: the file is replayed as a continuous feed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub gpu: GpuUuid,
    pub metric: MetricName,
    pub timestamp: TimestampMicros,
    pub value: f64,
}
