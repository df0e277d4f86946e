//! Where series come from: the `SeriesSource` trait the store implements, and an in-memory source.

use std::collections::HashMap;
use std::future::Future;

use crate::error::SourceError;
use crate::labels::Labels;
use crate::matcher::Matchers;

/// One sample: a timestamp in Unix milliseconds and a value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub t_ms: i64,
    pub value: f64,
}

impl Point {
    pub fn new(t_ms: i64, value: f64) -> Self {
        Point { t_ms, value }
    }
}

/// A series as a source returns it: its labels (`__name__` included) and its samples in time order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<Point>,
}

impl Series {
    pub fn new(labels: Labels, samples: Vec<Point>) -> Self {
        Series { labels, samples }
    }
}

/// Read access to stored series. Both calls return exactly the series whose labels satisfy every
/// matcher (`Matchers::matches`), each series once.
pub trait SeriesSource: Sync {
    /// The selected series with their samples in `start_ms..=end_ms` (both ends included), in time
    /// order. A series without samples in the window may be left out.
    fn select(
        &self,
        matchers: &Matchers,
        start_ms: i64,
        end_ms: i64,
    ) -> impl Future<Output = Result<Vec<Series>, SourceError>> + Send;

    /// The label sets of the selected series that have samples in `start_ms..=end_ms` (for
    /// `/api/v1/series`, `/labels`, `/label/{name}/values`); no samples are read.
    fn select_labels(
        &self,
        matchers: &Matchers,
        start_ms: i64,
        end_ms: i64,
    ) -> impl Future<Output = Result<Vec<Labels>, SourceError>> + Send;
}

/// Series held in memory: for tests, benchmarks and small fixed data sets. Indexed by metric
/// name, so a selector naming its metric only looks at that metric's series.
#[derive(Clone, Debug, Default)]
pub struct InMemorySource {
    series: Vec<Series>,
    by_name: HashMap<String, Vec<usize>>,
}

impl InMemorySource {
    /// Takes the series as given; samples are put in time order.
    pub fn new(mut series: Vec<Series>) -> Self {
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in series.iter_mut().enumerate() {
            s.samples.sort_by_key(|p| p.t_ms);
            by_name
                .entry(s.labels.metric_name().unwrap_or_default().to_string())
                .or_default()
                .push(i);
        }
        InMemorySource { series, by_name }
    }

    pub fn series(&self) -> &[Series] {
        &self.series
    }

    fn window<'a>(
        &'a self,
        matchers: &'a Matchers,
        start_ms: i64,
        end_ms: i64,
    ) -> impl Iterator<Item = (&'a Labels, &'a [Point])> + 'a {
        let candidates: Box<dyn Iterator<Item = &Series>> = match matchers.metric_name() {
            Some(name) => Box::new(
                self.by_name
                    .get(name)
                    .into_iter()
                    .flatten()
                    .map(|&i| &self.series[i]),
            ),
            None => Box::new(self.series.iter()),
        };
        candidates
            .filter(|s| matchers.matches(&s.labels))
            .map(move |s| {
                let from = s.samples.partition_point(|p| p.t_ms < start_ms);
                let to = s.samples.partition_point(|p| p.t_ms <= end_ms);
                (&s.labels, &s.samples[from..to.max(from)])
            })
            .filter(|(_, samples)| !samples.is_empty())
    }
}

impl SeriesSource for InMemorySource {
    async fn select(
        &self,
        matchers: &Matchers,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Series>, SourceError> {
        Ok(self
            .window(matchers, start_ms, end_ms)
            .map(|(labels, samples)| Series::new(labels.clone(), samples.to_vec()))
            .collect())
    }

    async fn select_labels(
        &self,
        matchers: &Matchers,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Labels>, SourceError> {
        Ok(self
            .window(matchers, start_ms, end_ms)
            .map(|(labels, _)| labels.clone())
            .collect())
    }
}

/// The sorted, distinct label names of `series` (what `/api/v1/labels` answers).
pub fn label_names<'a>(series: impl IntoIterator<Item = &'a Labels>) -> Vec<String> {
    let mut names: Vec<String> = series
        .into_iter()
        .flat_map(|l| l.iter().map(|(n, _)| n.to_string()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The sorted, distinct values of label `name` in `series` (what `/api/v1/label/{name}/values`
/// answers); series without the label contribute nothing.
pub fn label_values<'a>(series: impl IntoIterator<Item = &'a Labels>, name: &str) -> Vec<String> {
    let mut values: Vec<String> = series
        .into_iter()
        .filter_map(|l| l.get(name).map(str::to_string))
        .collect();
    values.sort();
    values.dedup();
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::parse_series_selector;

    fn source() -> InMemorySource {
        let series = |name: &str, host: &str, ts: &[i64]| {
            Series::new(
                Labels::new([("__name__", name), ("Hostname", host)]),
                ts.iter().rev().map(|&t| Point::new(t, t as f64)).collect(),
            )
        };
        InMemorySource::new(vec![
            series("temp", "a", &[10, 20, 30]),
            series("temp", "b", &[40]),
            series("power", "a", &[10]),
        ])
    }

    #[tokio::test]
    async fn select_filters_by_matchers_and_window_inclusively() {
        let source = source();
        let temp = parse_series_selector("temp").unwrap();
        let got = source.select(&temp, 20, 30).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].labels.get("Hostname"), Some("a"));
        assert_eq!(got[0].samples, [Point::new(20, 20.0), Point::new(30, 30.0)]);
        let all = source.select(&temp, 0, 100).await.unwrap();
        assert_eq!(all.len(), 2);
    }

    #[tokio::test]
    async fn label_helpers_answer_sorted_distinct() {
        let source = source();
        let any = parse_series_selector(r#"{Hostname=~".+"}"#).unwrap();
        let labels = source.select_labels(&any, 0, 15).await.unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(label_names(&labels), ["Hostname", "__name__"]);
        assert_eq!(label_values(&labels, "__name__"), ["power", "temp"]);
        assert_eq!(label_values(&labels, "gpu"), Vec::<String>::new());
    }
}
