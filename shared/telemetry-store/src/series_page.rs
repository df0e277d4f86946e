//! A page of samples per metric (the series shape of a query): what it holds, how it is cut from
//! an entry page, and how it is made straight from each chunk's per-metric columns, with no
//! global time order.
//!
//! Both ways give the same page: the entry page of `limit` samples (in (time, metric) order,
//! after the cursor), cut short before any metric's `per_series + 1`-th sample, grouped per
//! metric. The direct way only merges where a metric's chunks overlap in time, and finds the
//! cut from each metric's `per_series + 1`-th sample.

use std::sync::Arc;

use telemetry_model::{MetricName, TimestampMicros};

use crate::metric_slots::MetricSlots;
use crate::reader::{Cursor, Order, SampleQuery, StoredSample};

/// One metric's samples of a page, in the page's order.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricColumn {
    pub metric: Arc<str>,
    pub timestamps: Vec<i64>,
    /// The value at each of `timestamps`, position by position.
    pub values: Vec<f64>,
}

/// A page of samples per metric.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPage {
    /// One per metric with samples on the page, sorted by metric name.
    pub series: Vec<MetricColumn>,
    /// Samples on the page, over all series.
    pub count: usize,
    pub next_cursor: Option<Cursor>,
}

impl SeriesPage {
    /// The series page of an entry page (`samples` in page order, `next_cursor` its cursor): cut
    /// before the first sample that would be its metric's `per_series + 1`-th, the cursor then
    /// after the last one kept, and grouped per metric.
    pub fn from_entries(
        mut samples: Vec<StoredSample>,
        next_cursor: Option<Cursor>,
        per_series: usize,
    ) -> SeriesPage {
        let mut slots = MetricSlots::default();
        let mut counts: Vec<usize> = Vec::new();
        let cut = samples.iter().position(|sample| {
            let slot = slots.slot(&sample.metric);
            if slot == counts.len() {
                counts.push(0);
            }
            counts[slot] += 1;
            counts[slot] > per_series
        });
        let next_cursor = match cut {
            Some(cut) => {
                samples.truncate(cut);
                samples
                    .last()
                    .map(|last| cursor_at(last.timestamp.0, &last.metric))
            }
            None => next_cursor,
        };
        let mut slots = MetricSlots::default();
        let mut series: Vec<MetricColumn> = Vec::new();
        for sample in &samples {
            let slot = slots.slot(&sample.metric);
            if slot == series.len() {
                series.push(MetricColumn {
                    metric: Arc::clone(&sample.metric),
                    timestamps: Vec::new(),
                    values: Vec::new(),
                });
            }
            series[slot].timestamps.push(sample.timestamp.0);
            series[slot].values.push(sample.value);
        }
        series.sort_unstable_by(|a, b| a.metric.cmp(&b.metric));
        SeriesPage {
            series,
            count: samples.len(),
            next_cursor,
        }
    }
}

/// The cursor just after the sample `(timestamp, metric)`.
fn cursor_at(timestamp: i64, metric: &str) -> Cursor {
    Cursor {
        timestamp: TimestampMicros(timestamp),
        metric: MetricName::parse(metric).expect("chunk decoding validates metric names"),
    }
}

/// The samples of one chunk for one metric, in time order.
#[derive(Debug)]
struct Run {
    timestamps: Vec<i64>,
    values: Vec<f64>,
}

/// One metric's runs, in the order their chunks were read.
#[derive(Debug)]
struct MetricRuns {
    metric: Arc<str>,
    runs: Vec<Run>,
}

/// What a series page read keeps of the chunks it decodes: each chunk's columns, per metric.
#[derive(Debug, Default)]
pub(crate) struct SeriesRows {
    metrics: Vec<MetricRuns>,
}

impl SeriesRows {
    /// Keeps one chunk's samples of `metric` (its interned name), in time order.
    pub(crate) fn push_run(&mut self, metric: Arc<str>, timestamps: Vec<i64>, values: Vec<f64>) {
        let run = Run { timestamps, values };
        match self
            .metrics
            .iter_mut()
            .find(|known| Arc::ptr_eq(&known.metric, &metric) || known.metric == metric)
        {
            Some(known) => known.runs.push(run),
            None => self.metrics.push(MetricRuns {
                metric,
                runs: vec![run],
            }),
        }
    }

    /// Samples kept so far that `keep` accepts (by timestamp and metric).
    pub(crate) fn count_kept(&self, keep: impl Fn(i64, &str) -> bool) -> usize {
        self.metrics
            .iter()
            .map(|metric| {
                metric
                    .runs
                    .iter()
                    .flat_map(|run| &run.timestamps)
                    .filter(|&&ts| keep(ts, &metric.metric))
                    .count()
            })
            .sum()
    }

    /// The page `query` (its `limit` counting all samples) asks for, at most `per_series`
    /// samples per metric, from the samples read: those after the query's cursor and, with
    /// `unread_bound`, before it in the query's order (every later sample may be in a chunk not
    /// read).
    pub(crate) fn into_page(
        self,
        query: &SampleQuery,
        unread_bound: Option<i64>,
        per_series: usize,
    ) -> SeriesPage {
        let order = query.order;
        let mut series: Vec<MetricColumn> = self
            .metrics
            .into_iter()
            .filter_map(|metric| {
                let mut column = concatenate(metric);
                settle(&mut column, order, query.cursor.as_ref(), unread_bound);
                (!column.timestamps.is_empty()).then_some(column)
            })
            .collect();
        series.sort_unstable_by(|a, b| a.metric.cmp(&b.metric));
        // Samples are ordered by (timestamp, metric); with series in name order a metric's index
        // stands for its name.
        let before = |a: (i64, usize), b: (i64, usize)| match order {
            Order::Asc => a < b,
            Order::Desc => a > b,
        };
        let total: usize = series.iter().map(|s| s.timestamps.len()).sum();
        // The first sample that would be its metric's `per_series + 1`-th.
        let over = series
            .iter()
            .enumerate()
            .filter_map(|(index, s)| Some((*s.timestamps.get(per_series)?, index)))
            .reduce(|a, b| if before(b, a) { b } else { a });
        let kept: Vec<usize> = match over {
            Some(over) => series
                .iter()
                .enumerate()
                .map(|(index, s)| {
                    if index == over.1 {
                        per_series
                    } else {
                        s.timestamps
                            .partition_point(|&ts| before((ts, index), over))
                    }
                })
                .collect(),
            None => series.iter().map(|s| s.timestamps.len()).collect(),
        };
        let kept_total: usize = kept.iter().sum();
        let (kept, next_cursor) = if kept_total <= query.limit {
            // Cut there (or nothing to cut): the entry page holds all of that, and the cursor is
            // after the last of it.
            let last = over.map(|_| {
                kept.iter()
                    .enumerate()
                    .filter(|(_, &kept)| kept > 0)
                    .map(|(index, &kept)| (series[index].timestamps[kept - 1], index))
                    .reduce(|a, b| if before(a, b) { b } else { a })
                    .expect("a cut keeps the per-series samples before it")
            });
            (kept, last)
        } else {
            // The entry page ends first, after `limit` samples: found by merging the series'
            // heads, which only a page limit below `per_series` times the series needs.
            first_in_order(&series, query.limit, before)
        };
        debug_assert!(kept_total <= total);
        let next_cursor = next_cursor.map(|(ts, index)| cursor_at(ts, &series[index].metric));
        let mut count = 0;
        for (column, kept) in series.iter_mut().zip(&kept) {
            column.timestamps.truncate(*kept);
            column.values.truncate(*kept);
            count += kept;
        }
        series.retain(|s| !s.timestamps.is_empty());
        SeriesPage {
            series,
            count,
            next_cursor,
        }
    }
}

/// How many of each series' samples the first `limit` in the order `before` defines are, and
/// the last of them; the position of none when there are no more than `limit`.
fn first_in_order(
    series: &[MetricColumn],
    limit: usize,
    before: impl Fn((i64, usize), (i64, usize)) -> bool,
) -> (Vec<usize>, Option<(i64, usize)>) {
    let mut heads = vec![0; series.len()];
    let mut last = None;
    for _ in 0..limit {
        let next = series
            .iter()
            .enumerate()
            .filter_map(|(index, s)| Some((*s.timestamps.get(heads[index])?, index)))
            .reduce(|a, b| if before(b, a) { b } else { a });
        let Some(next) = next else {
            return (heads, None);
        };
        heads[next.1] += 1;
        last = Some(next);
    }
    let more = series
        .iter()
        .zip(&heads)
        .any(|(s, &head)| head < s.timestamps.len());
    (heads, last.filter(|_| more))
}

/// One metric's runs as one column in time order, equal timestamps in the order their chunks
/// were read (what a stable sort of the samples as read gives). Runs that follow each other in
/// time are joined whole; only overlapping ones are merged sample by sample.
fn concatenate(metric: MetricRuns) -> MetricColumn {
    let MetricRuns { metric, mut runs } = metric;
    if runs.len() == 1 {
        let run = runs.pop().expect("one run");
        return MetricColumn {
            metric,
            timestamps: run.timestamps,
            values: run.values,
        };
    }
    let len: usize = runs.iter().map(|run| run.timestamps.len()).sum();
    let mut by_start: Vec<usize> = (0..runs.len()).collect();
    by_start.sort_by_key(|&run| runs[run].timestamps[0]);
    let chained = by_start.windows(2).all(|pair| {
        let (a, b) = (&runs[pair[0]], &runs[pair[1]]);
        let (last, first) = (a.timestamps[a.timestamps.len() - 1], b.timestamps[0]);
        last < first || (last == first && pair[0] < pair[1])
    });
    let mut timestamps = Vec::with_capacity(len);
    let mut values = Vec::with_capacity(len);
    if chained {
        for run in by_start {
            timestamps.extend_from_slice(&runs[run].timestamps);
            values.extend_from_slice(&runs[run].values);
        }
    } else {
        let mut samples: Vec<(i64, f64)> = runs
            .iter()
            .flat_map(|run| {
                run.timestamps
                    .iter()
                    .copied()
                    .zip(run.values.iter().copied())
            })
            .collect();
        samples.sort_by_key(|&(ts, _)| ts);
        for (ts, value) in samples {
            timestamps.push(ts);
            values.push(value);
        }
    }
    MetricColumn {
        metric,
        timestamps,
        values,
    }
}

/// Keeps the samples of `column` (ascending) that come after `cursor` in `order` and, with
/// `unread_bound`, before it; then puts them in `order`.
fn settle(
    column: &mut MetricColumn,
    order: Order,
    cursor: Option<&Cursor>,
    unread_bound: Option<i64>,
) {
    let ts = &column.timestamps;
    let name = &*column.metric;
    let (from, to) = match order {
        Order::Asc => {
            let from = cursor.map_or(0, |c| {
                if name > c.metric.as_str() {
                    ts.partition_point(|&t| t < c.timestamp.0)
                } else {
                    ts.partition_point(|&t| t <= c.timestamp.0)
                }
            });
            let to = unread_bound.map_or(ts.len(), |bound| ts.partition_point(|&t| t < bound));
            (from, to)
        }
        Order::Desc => {
            let from = unread_bound.map_or(0, |bound| ts.partition_point(|&t| t <= bound));
            let to = cursor.map_or(ts.len(), |c| {
                if name < c.metric.as_str() {
                    ts.partition_point(|&t| t <= c.timestamp.0)
                } else {
                    ts.partition_point(|&t| t < c.timestamp.0)
                }
            });
            (from, to)
        }
    };
    let to = to.max(from);
    column.timestamps.truncate(to);
    column.values.truncate(to);
    column.timestamps.drain(..from);
    column.values.drain(..from);
    if order == Order::Desc {
        column.timestamps.reverse();
        column.values.reverse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(metrics: &str) -> Vec<StoredSample> {
        metrics
            .chars()
            .enumerate()
            .map(|(i, metric)| StoredSample {
                timestamp: TimestampMicros(i as i64),
                metric: metric.to_string().into(),
                value: i as f64,
            })
            .collect()
    }

    fn timestamps(page: &SeriesPage) -> Vec<(&str, Vec<i64>)> {
        page.series
            .iter()
            .map(|s| (&*s.metric, s.timestamps.clone()))
            .collect()
    }

    #[test]
    fn a_series_page_stops_before_any_metric_passes_its_limit() {
        let page = SeriesPage::from_entries(samples("ABABBBA"), None, 2);
        assert_eq!(timestamps(&page), [("A", vec![0, 2]), ("B", vec![1, 3])]);
        assert_eq!(page.count, 4);
        let cursor = page.next_cursor.expect("B's third point is cut");
        assert_eq!(cursor.timestamp, TimestampMicros(3));
        assert_eq!(cursor.metric.as_str(), "B");

        let page = SeriesPage::from_entries(samples("ABBA"), None, 2);
        assert_eq!(page.next_cursor, None);
        assert_eq!(timestamps(&page), [("A", vec![0, 3]), ("B", vec![1, 2])]);
        let page = SeriesPage::from_entries(samples("AA"), None, 1);
        let cursor = page.next_cursor.unwrap();
        assert_eq!((page.count, cursor.timestamp), (1, TimestampMicros(0)));
    }

    #[test]
    fn an_uncut_page_keeps_the_entry_pages_cursor() {
        let next = cursor_at(9, "B");
        let page = SeriesPage::from_entries(samples("ABBA"), Some(next.clone()), 2);
        assert_eq!(page.next_cursor, Some(next));
        assert_eq!(page.series[0].values, [0.0, 3.0]);
    }
}
