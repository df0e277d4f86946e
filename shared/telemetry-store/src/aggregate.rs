//! Downsampling: one value per metric per step bucket (bucket start aligned to multiples of the
//! step since the epoch), or per metric over the whole window, with avg, min, max, last or count.
//! The [`Aggregator`] folds samples as they are decoded, in any order, so its memory is one
//! accumulator per bucket and metric, never the window's samples. Accumulators are kept per
//! metric by bucket start, so folding a sample compares integers, not metric names.

use std::collections::BTreeMap;
use std::sync::Arc;

use telemetry_model::TimestampMicros;

use crate::metric_slots::MetricSlots;
use crate::reader::StoredSample;

/// How the samples of one bucket become one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    Avg,
    Min,
    Max,
    Last,
    Count,
}

impl std::str::FromStr for Aggregation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "avg" => Ok(Aggregation::Avg),
            "min" => Ok(Aggregation::Min),
            "max" => Ok(Aggregation::Max),
            "last" => Ok(Aggregation::Last),
            "count" => Ok(Aggregation::Count),
            other => Err(format!(
                "unknown aggregation {other:?} (use avg, min, max, last or count)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Acc {
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    last_ts: i64,
    count: u64,
}

/// A streaming fold of samples into buckets.
#[derive(Debug, Clone)]
pub struct Aggregator {
    /// Bucket length in µs; `None`: one bucket for the whole window.
    step_us: Option<i64>,
    aggregation: Aggregation,
    metrics: MetricSlots,
    /// Per metric slot, its accumulators by bucket start.
    buckets: Vec<BTreeMap<i64, Acc>>,
    /// Accumulators over all metrics.
    len: usize,
    /// Most (bucket, metric) accumulators kept; samples that would open more are dropped and
    /// [`Aggregator::overflowed`] says so.
    max_buckets: usize,
    overflowed: bool,
    earliest: Option<i64>,
}

impl Aggregator {
    /// A fold into buckets of `step_us` (`None`: the whole window), keeping at most `max_buckets`
    /// bucket and metric pairs.
    pub fn new(step_us: Option<i64>, aggregation: Aggregation, max_buckets: usize) -> Self {
        assert!(step_us.is_none_or(|s| s > 0), "step must be positive");
        Aggregator {
            step_us,
            aggregation,
            metrics: MetricSlots::default(),
            buckets: Vec::new(),
            len: 0,
            max_buckets,
            overflowed: false,
            earliest: None,
        }
    }

    /// Folds one sample in.
    pub fn add(&mut self, s: &StoredSample) {
        let ts = s.timestamp.0;
        let bucket = self.step_us.map_or(0, |step| ts.div_euclid(step) * step);
        self.earliest = Some(self.earliest.map_or(ts, |e| e.min(ts)));
        let slot = self.metrics.slot(&s.metric);
        if slot == self.buckets.len() {
            self.buckets.push(BTreeMap::new());
        }
        let buckets = &mut self.buckets[slot];
        if let Some(acc) = buckets.get_mut(&bucket) {
            acc.sum += s.value;
            acc.min = acc.min.min(s.value);
            acc.max = acc.max.max(s.value);
            if ts >= acc.last_ts {
                acc.last = s.value;
                acc.last_ts = ts;
            }
            acc.count += 1;
            return;
        }
        if self.len >= self.max_buckets {
            self.overflowed = true;
            return;
        }
        self.len += 1;
        buckets.insert(
            bucket,
            Acc {
                sum: s.value,
                min: s.value,
                max: s.value,
                last: s.value,
                last_ts: ts,
                count: 1,
            },
        );
    }

    /// Whether samples were dropped because the bucket limit was reached.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The aggregates ordered by (bucket start, metric name), each timestamped with its bucket's
    /// start; without a step, with `window_start`, or the oldest sample's time when the window
    /// has no start.
    pub fn finish(self, window_start: Option<TimestampMicros>) -> Vec<StoredSample> {
        let whole = self
            .step_us
            .is_none()
            .then(|| window_start.map_or(self.earliest.unwrap_or_default(), |t| t.0));
        let aggregation = self.aggregation;
        // Each metric's rank by name: buckets come out by (start, metric name).
        let names = self.metrics.names();
        let mut by_name: Vec<usize> = (0..names.len()).collect();
        by_name.sort_unstable_by(|&a, &b| names[a].cmp(&names[b]));
        let mut rank = vec![0; names.len()];
        for (position, &slot) in by_name.iter().enumerate() {
            rank[slot] = position;
        }
        let mut all: Vec<(i64, usize, Acc)> = Vec::with_capacity(self.len);
        for (slot, buckets) in self.buckets.into_iter().enumerate() {
            all.extend(buckets.into_iter().map(|(bucket, acc)| (bucket, slot, acc)));
        }
        all.sort_unstable_by_key(|&(bucket, slot, _)| (bucket, rank[slot]));
        all.into_iter()
            .map(|(bucket, slot, acc)| StoredSample {
                timestamp: TimestampMicros(whole.unwrap_or(bucket)),
                metric: Arc::clone(&names[slot]),
                value: match aggregation {
                    Aggregation::Avg => acc.sum / acc.count as f64,
                    Aggregation::Min => acc.min,
                    Aggregation::Max => acc.max,
                    Aggregation::Last => acc.last,
                    Aggregation::Count => acc.count as f64,
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ts: i64, metric: &str, value: f64) -> StoredSample {
        StoredSample {
            timestamp: TimestampMicros(ts),
            metric: Arc::from(metric),
            value,
        }
    }

    fn aggregate(
        samples: &[StoredSample],
        step: Option<i64>,
        agg: Aggregation,
    ) -> Vec<(i64, String, f64)> {
        let mut aggregator = Aggregator::new(step, agg, usize::MAX);
        for sample in samples {
            aggregator.add(sample);
        }
        aggregator
            .finish(None)
            .into_iter()
            .map(|s| (s.timestamp.0, s.metric.to_string(), s.value))
            .collect()
    }

    #[test]
    fn buckets_align_to_the_step_and_each_aggregation_is_exact() {
        let samples = vec![
            s(1_000_000, "a", 1.0),
            s(9_999_999, "a", 3.0),
            s(5_000_000, "a", 8.0),
            s(10_000_000, "a", 4.0),
            s(2, "b", 7.0),
        ];
        let got = |agg| aggregate(&samples, Some(10_000_000), agg);
        assert_eq!(
            got(Aggregation::Avg),
            vec![
                (0, "a".into(), 4.0),
                (0, "b".into(), 7.0),
                (10_000_000, "a".into(), 4.0)
            ]
        );
        assert_eq!(got(Aggregation::Min)[0].2, 1.0);
        assert_eq!(got(Aggregation::Max)[0].2, 8.0);
        assert_eq!(
            got(Aggregation::Last)[0].2,
            3.0,
            "last by time, not by input order"
        );
        assert_eq!(got(Aggregation::Count)[0].2, 3.0);
        assert_eq!("avg".parse::<Aggregation>(), Ok(Aggregation::Avg));
        assert!("median".parse::<Aggregation>().is_err());
    }

    #[test]
    fn without_a_step_each_metric_has_one_value_over_the_window() {
        let samples = vec![s(30, "a", 1.0), s(10, "a", 5.0), s(20, "b", 2.0)];
        assert_eq!(
            aggregate(&samples, None, Aggregation::Max),
            vec![(10, "a".into(), 5.0), (10, "b".into(), 2.0)]
        );
        let mut aggregator = Aggregator::new(None, Aggregation::Last, 10);
        samples.iter().for_each(|x| aggregator.add(x));
        let finished = aggregator.finish(Some(TimestampMicros(0)));
        assert_eq!(finished[0].timestamp, TimestampMicros(0));
        assert_eq!(finished[0].value, 1.0, "the latest sample of a");
    }

    proptest::proptest! {
        #[test]
        fn folding_matches_grouping_every_sample_first(
            samples in proptest::collection::vec((-20i64..20, 0usize..3, -1e3f64..1e3), 0..60),
            step in proptest::option::of(1i64..7),
        ) {
            // Not in name order: buckets come out by (start, name) whatever order metrics come in.
            let names = ["x", "DCGM_A", "DCGM_B"];
            let samples: Vec<StoredSample> =
                samples.iter().map(|&(ts, m, v)| s(ts, names[m], v)).collect();
            // Each (bucket, metric)'s values in the order they came, then reduced.
            let mut groups: BTreeMap<(i64, String), Vec<(i64, f64)>> = BTreeMap::new();
            for sample in &samples {
                let ts = sample.timestamp.0;
                let bucket = step.map_or(0, |step| ts.div_euclid(step) * step);
                groups
                    .entry((bucket, sample.metric.to_string()))
                    .or_default()
                    .push((ts, sample.value));
            }
            let earliest = samples.iter().map(|s| s.timestamp.0).min().unwrap_or_default();
            use Aggregation::*;
            for aggregation in [Avg, Min, Max, Last, Count] {
                let expected: Vec<(i64, String, u64)> = groups
                    .iter()
                    .map(|((bucket, metric), points)| {
                        let first = points[0].1;
                        let values = points[1..].iter().map(|p| p.1);
                        let value = match aggregation {
                            Avg => values.fold(first, |sum, v| sum + v) / points.len() as f64,
                            Min => values.fold(first, f64::min),
                            Max => values.fold(first, f64::max),
                            // The latest sample, the last given among equal times.
                            Last => points.iter().fold(points[0], |last, p| {
                                if p.0 >= last.0 { *p } else { last }
                            }).1,
                            Count => points.len() as f64,
                        };
                        (step.map_or(earliest, |_| *bucket), metric.clone(), value.to_bits())
                    })
                    .collect();
                let got: Vec<(i64, String, u64)> = aggregate(&samples, step, aggregation)
                    .into_iter()
                    .map(|(ts, metric, value)| (ts, metric, value.to_bits()))
                    .collect();
                proptest::prop_assert_eq!(got, expected, "{:?}", aggregation);
            }
        }
    }

    #[test]
    fn buckets_beyond_the_limit_are_dropped_and_reported() {
        let mut aggregator = Aggregator::new(Some(1), Aggregation::Count, 2);
        for t in 0..5 {
            aggregator.add(&s(t, "a", 1.0));
        }
        aggregator.add(&s(1, "a", 1.0));
        assert!(aggregator.overflowed());
        let finished = aggregator.finish(None);
        assert_eq!(finished.len(), 2);
        assert_eq!(finished[1].value, 2.0, "an existing bucket still counts");
    }
}
