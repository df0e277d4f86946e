//! The GPU registry record: what is known about a GPU and the latest value of each metric.
//! Records are merged, never blindly replaced, so applying the same samples twice (a replay) or in
//! another order gives the same record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use telemetry_model::{GpuInfo, MetricName, TimestampMicros};

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
        match self.latest.get_mut(metric) {
            Some(latest) if latest.timestamp > timestamp => {}
            Some(latest)
                if latest.timestamp == timestamp && latest.value.total_cmp(&value).is_ge() => {}
            _ => {
                self.latest
                    .insert(metric.clone(), LatestValue { timestamp, value });
            }
        }
    }

    /// Takes newer GPU metadata (labels, hostname...) when it differs.
    pub fn update_info(&mut self, info: &GpuInfo) {
        if &self.info != info {
            self.info = info.clone();
        }
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
}
