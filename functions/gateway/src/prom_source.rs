//! The telemetry store as a PromQL [`SeriesSource`]: series are selected from the GPU registry
//! alone (each GPU's labels and the metrics it has, named as dcgm-exporter names them by
//! [`series_labels`]), then only the selected GPUs' chunks in the window are read, with only the
//! selected metrics decoded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use promql_engine::{Labels, Matchers, Point, Series, SeriesSource, SourceError};
use telemetry_model::{series_labels, GpuUuid, MetricName, TimestampMicros};
use telemetry_store::GpuRecord;
use tokio::sync::OnceCell;

use crate::backend::Backend;
use crate::error::ApiError;

/// GPUs whose chunks are read at the same time.
const CONCURRENT_READS: usize = 8;

/// One GPU's selected series: the metrics to read and their labels (owned, so reads of several
/// GPUs can run at once without borrowing the registry).
struct Selected {
    uuid: GpuUuid,
    series: Vec<(MetricName, Labels)>,
}

/// The store seen by one query: the registry is read once (in pages, one snapshot) on first use and
/// shared by every selector of the query.
pub struct StoreSeries<'a> {
    backend: &'a Backend,
    registry: OnceCell<Vec<GpuRecord>>,
    gpus_read: AtomicUsize,
}

impl<'a> StoreSeries<'a> {
    pub fn new(backend: &'a Backend) -> Self {
        StoreSeries {
            backend,
            registry: OnceCell::new(),
            gpus_read: AtomicUsize::new(0),
        }
    }

    /// How many GPUs' chunks this query has read so far (a GPU counts once per selector that
    /// selected it): what label selection saves shows here.
    pub fn gpus_read(&self) -> usize {
        self.gpus_read.load(Ordering::Relaxed)
    }

    async fn registry(&self) -> Result<&[GpuRecord], SourceError> {
        self.registry
            .get_or_try_init(|| {
                self.backend
                    .bounded("list GPUs", self.backend.store().list_gpus())
            })
            .await
            .map(Vec::as_slice)
            .map_err(source_error)
    }

    /// The series `matchers` select that may have samples in `start_ms..=end_ms`, by GPU, from
    /// the registry alone: a GPU not seen in the window, and a metric whose latest sample is older
    /// than the window, are left out without reading anything.
    async fn selected(
        &self,
        matchers: &Matchers,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Selected>, SourceError> {
        let (start_us, end_us) = window_us(start_ms, end_ms);
        let name = matchers.metric_name();
        let mut selected = Vec::new();
        for record in self.registry().await? {
            if record.last_seen.0 < start_us || record.first_seen.0 > end_us {
                continue;
            }
            let series: Vec<(MetricName, Labels)> = record
                .latest
                .iter()
                .filter(|(metric, latest)| {
                    latest.timestamp.0 >= start_us && name.is_none_or(|n| n == metric.as_str())
                })
                .filter_map(|(metric, _)| {
                    let labels = Labels::new(series_labels(&record.info, metric.as_str()));
                    matchers.matches(&labels).then(|| (metric.clone(), labels))
                })
                .collect();
            if !series.is_empty() {
                selected.push(Selected {
                    uuid: record.info.uuid.clone(),
                    series,
                });
            }
        }
        Ok(selected)
    }

    /// Reads one GPU's selected metrics in the window.
    async fn read(
        &self,
        gpu: Selected,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Series>, SourceError> {
        self.gpus_read.fetch_add(1, Ordering::Relaxed);
        let (start_us, end_us) = window_us(start_ms, end_ms);
        let metrics: Vec<MetricName> = gpu.series.iter().map(|(m, _)| m.clone()).collect();
        let mut points: BTreeMap<Arc<str>, Vec<(i64, f64)>> = BTreeMap::new();
        self.backend
            .bounded(
                "read telemetry",
                self.backend.store().for_each_sample(
                    &gpu.uuid,
                    TimestampMicros(start_us),
                    TimestampMicros(end_us),
                    Some(&metrics),
                    |sample| {
                        points
                            .entry(sample.metric)
                            .or_default()
                            .push((sample.timestamp.0, sample.value));
                    },
                ),
            )
            .await
            .map_err(source_error)?;
        // Chunks come in no particular order (the samples of one chunk in time order): sorted by
        // their microsecond timestamps, each metric's samples are its series in time order.
        for samples in points.values_mut() {
            samples.sort_unstable_by_key(|&(t_us, _)| t_us);
        }
        Ok(gpu
            .series
            .into_iter()
            .filter_map(|(metric, labels)| {
                let samples = points.remove(metric.as_str())?;
                let samples = samples
                    .into_iter()
                    .map(|(t_us, value)| Point::new(t_us.div_euclid(1000), value))
                    .collect();
                Some(Series::new(labels, samples))
            })
            .collect())
    }
}

impl SeriesSource for StoreSeries<'_> {
    async fn select(
        &self,
        matchers: &Matchers,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Series>, SourceError> {
        let selected = self.selected(matchers, start_ms, end_ms).await?;
        let per_gpu: Vec<Vec<Series>> = futures::stream::iter(selected)
            .map(|gpu| self.read(gpu, start_ms, end_ms))
            .buffer_unordered(CONCURRENT_READS)
            .try_collect()
            .await?;
        Ok(per_gpu.into_iter().flatten().collect())
    }

    async fn select_labels(
        &self,
        matchers: &Matchers,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Labels>, SourceError> {
        Ok(self
            .selected(matchers, start_ms, end_ms)
            .await?
            .into_iter()
            .flat_map(|gpu| gpu.series.into_iter().map(|(_, labels)| labels))
            .collect())
    }
}

/// The store's inclusive microsecond window for the milliseconds `start_ms..=end_ms` (a sample
/// belongs to the millisecond it falls in, as Prometheus truncates to milliseconds).
fn window_us(start_ms: i64, end_ms: i64) -> (i64, i64) {
    (
        start_ms.saturating_mul(1000),
        end_ms.saturating_mul(1000).saturating_add(999),
    )
}

/// 503 (try again) for etcd being unreachable or slow, 500 for anything else.
fn source_error(error: ApiError) -> SourceError {
    if error.status().as_u16() == 503 {
        SourceError::unavailable(error)
    } else {
        SourceError::internal(error)
    }
}

#[cfg(test)]
mod tests {
    use super::window_us;

    #[test]
    fn a_millisecond_window_covers_its_microseconds_and_saturates() {
        assert_eq!(window_us(1, 2), (1_000, 2_999));
        assert_eq!(window_us(-1, -1), (-1_000, -1));
        assert_eq!(window_us(i64::MIN / 2, i64::MAX / 2), (i64::MIN, i64::MAX));
    }
}
