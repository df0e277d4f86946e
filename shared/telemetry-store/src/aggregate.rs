//! Downsampling: one value per metric per step bucket (bucket start aligned to multiples of the
//! step since the epoch), with avg, min, max, last or count.

use std::collections::BTreeMap;
use std::sync::Arc;

use telemetry_model::TimestampMicros;

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

/// Aggregates `samples` (any order) into buckets of `step_us`; the result is ordered by
/// (bucket start, metric name) and each entry's timestamp is its bucket start.
pub fn aggregate<'a>(
    samples: impl IntoIterator<Item = &'a StoredSample>,
    step_us: i64,
    aggregation: Aggregation,
) -> Vec<StoredSample> {
    assert!(step_us > 0, "step must be positive");
    let mut buckets: BTreeMap<(i64, Arc<str>), Acc> = BTreeMap::new();
    for s in samples {
        let bucket = s.timestamp.0.div_euclid(step_us) * step_us;
        buckets
            .entry((bucket, s.metric.clone()))
            .and_modify(|acc| {
                acc.sum += s.value;
                acc.min = acc.min.min(s.value);
                acc.max = acc.max.max(s.value);
                if s.timestamp.0 >= acc.last_ts {
                    acc.last = s.value;
                    acc.last_ts = s.timestamp.0;
                }
                acc.count += 1;
            })
            .or_insert(Acc {
                sum: s.value,
                min: s.value,
                max: s.value,
                last: s.value,
                last_ts: s.timestamp.0,
                count: 1,
            });
    }
    buckets
        .into_iter()
        .map(|((bucket, metric), acc)| StoredSample {
            timestamp: TimestampMicros(bucket),
            metric,
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

    #[test]
    fn buckets_align_to_the_step_and_each_aggregation_is_exact() {
        let samples = vec![
            s(1_000_000, "a", 1.0),
            s(9_999_999, "a", 3.0),
            s(5_000_000, "a", 8.0),
            s(10_000_000, "a", 4.0),
            s(2, "b", 7.0),
        ];
        let step = 10_000_000;
        let got = |agg| {
            aggregate(&samples, step, agg)
                .into_iter()
                .map(|s| (s.timestamp.0, s.metric.to_string(), s.value))
                .collect::<Vec<_>>()
        };
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
}
