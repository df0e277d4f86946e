//! Function calls: the instant-vector functions, `time`/`vector`/`scalar`, the label functions
//! and the range-vector functions (`rate` and its kin with Prometheus' extrapolation, and the
//! `*_over_time` family).

use std::sync::Arc;

use super::stats::{self, go_max, go_min};
use super::{ensure_unique_labelsets, Evaluator, Sample, StepValue};
use crate::error::QueryError;
use crate::plan::{Func, Node};
use crate::source::Point;

pub(super) fn eval(
    ev: &Evaluator<'_>,
    func: &Func,
    args: &[Node],
    t: i64,
) -> Result<StepValue, QueryError> {
    let out = match func {
        Func::Time => return Ok(StepValue::Scalar(t as f64 / 1000.0)),
        Func::Vector => {
            return Ok(StepValue::Vector(vec![Sample::new(
                Arc::default(),
                ev.eval_scalar(&args[0], t)?,
            )]))
        }
        Func::Scalar => {
            let v = ev.eval_vector(&args[0], t)?;
            return Ok(StepValue::Scalar(match v.as_slice() {
                [only] => only.value,
                _ => f64::NAN,
            }));
        }
        Func::Abs => map_values(ev.eval_vector(&args[0], t)?, f64::abs),
        Func::Ceil => map_values(ev.eval_vector(&args[0], t)?, f64::ceil),
        Func::Floor => map_values(ev.eval_vector(&args[0], t)?, f64::floor),
        Func::Round => {
            let v = ev.eval_vector(&args[0], t)?;
            let to_nearest = match args.get(1) {
                Some(node) => ev.eval_scalar(node, t)?,
                None => 1.0,
            };
            // Dividing by the inverse is what Prometheus does (fewer rounding surprises).
            let inverse = 1.0 / to_nearest;
            map_values(v, |x| (x * inverse + 0.5).floor() / inverse)
        }
        Func::Clamp => {
            let v = ev.eval_vector(&args[0], t)?;
            let min = ev.eval_scalar(&args[1], t)?;
            let max = ev.eval_scalar(&args[2], t)?;
            clamp(v, min, max)
        }
        Func::ClampMin => {
            let v = ev.eval_vector(&args[0], t)?;
            clamp(v, ev.eval_scalar(&args[1], t)?, f64::INFINITY)
        }
        Func::ClampMax => {
            let v = ev.eval_vector(&args[0], t)?;
            clamp(v, f64::NEG_INFINITY, ev.eval_scalar(&args[1], t)?)
        }
        Func::Timestamp => match &args[0] {
            // Of a selector, the samples' own times; of anything else, the evaluation time.
            Node::VectorSelector(id) => ev
                .instant_points(*id, t)
                .map(|(series, p)| Sample::of(series, 0.0).unnamed_with(p.t_ms as f64 / 1000.0))
                .collect(),
            other => map_values(ev.eval_vector(other, t)?, |_| t as f64 / 1000.0),
        },
        Func::Sort | Func::SortDesc => {
            let mut v = ev.eval_vector(&args[0], t)?;
            let descending = matches!(func, Func::SortDesc);
            v.sort_by(|a, b| stats::by_value_nan_last(a.value, b.value, descending));
            return Ok(StepValue::Vector(v));
        }
        Func::LabelReplace {
            dst,
            replacement,
            src,
            regex,
        } => ev
            .eval_vector(&args[0], t)?
            .into_iter()
            .map(|s| match regex.captures(s.labels.value_or_empty(src)) {
                Some(caps) => {
                    let mut value = String::new();
                    caps.expand(replacement, &mut value);
                    Sample::new(Arc::new(s.labels.with(dst, &value)), s.value)
                }
                None => s,
            })
            .collect(),
        Func::LabelJoin {
            dst,
            separator,
            src,
        } => ev
            .eval_vector(&args[0], t)?
            .into_iter()
            .map(|s| {
                let joined = src
                    .iter()
                    .map(|name| s.labels.value_or_empty(name))
                    .collect::<Vec<_>>()
                    .join(separator);
                Sample::new(Arc::new(s.labels.with(dst, &joined)), s.value)
            })
            .collect(),
        range_func => over_range(ev, range_func, args, t)?,
    };
    ensure_unique_labelsets(&out)?;
    Ok(StepValue::Vector(out))
}

fn map_values(v: Vec<Sample>, f: impl Fn(f64) -> f64) -> Vec<Sample> {
    v.iter().map(|s| s.unnamed_with(f(s.value))).collect()
}

fn clamp(v: Vec<Sample>, min: f64, max: f64) -> Vec<Sample> {
    if max < min {
        return Vec::new();
    }
    map_values(v, |x| go_max(min, go_min(max, x)))
}

/// A range-vector function over a range selector's window at `t`, one result per series with
/// samples in the window.
fn over_range(
    ev: &Evaluator<'_>,
    func: &Func,
    args: &[Node],
    t: i64,
) -> Result<Vec<Sample>, QueryError> {
    let (param, matrix) = match func {
        Func::QuantileOverTime => (ev.eval_scalar(&args[0], t)?, &args[1]),
        _ => (f64::NAN, &args[0]),
    };
    let Node::MatrixSelector(id) = matrix else {
        return Err(QueryError::Unsupported(
            "a range-vector function over anything but a range selector".to_string(),
        ));
    };
    let (range_start, range_end) = ev.window_bounds(*id, t);
    let range_seconds = (range_end - range_start) as f64 / 1000.0;
    let mut out = Vec::new();
    for (series, window) in ev.range_windows(*id, t) {
        let values = || window.iter().map(|p| p.value);
        let value = match func {
            Func::Rate => {
                extrapolated_rate(window, range_start, range_end, true, Some(range_seconds))
            }
            Func::Increase => extrapolated_rate(window, range_start, range_end, true, None),
            Func::Delta => extrapolated_rate(window, range_start, range_end, false, None),
            Func::Irate => instant_change(window, true),
            Func::Idelta => instant_change(window, false),
            Func::AvgOverTime => Some(stats::mean(&values().collect::<Vec<_>>())),
            Func::MinOverTime => Some(stats::min(values())),
            Func::MaxOverTime => Some(stats::max(values())),
            Func::SumOverTime => Some(stats::sum(values())),
            Func::CountOverTime => Some(window.len() as f64),
            Func::LastOverTime => window.last().map(|p| p.value),
            Func::QuantileOverTime => Some(stats::quantile(param, values().collect())),
            Func::StddevOverTime => Some(stats::variance(values()).sqrt()),
            Func::StdvarOverTime => Some(stats::variance(values())),
            _ => {
                return Err(QueryError::Evaluate(
                    "not a range-vector function".to_string(),
                ))
            }
        };
        if let Some(value) = value {
            // last_over_time is the one range function that keeps the metric name.
            let sample = Sample::of(series, value);
            out.push(if matches!(func, Func::LastOverTime) {
                sample
            } else {
                sample.unnamed_with(value)
            });
        }
    }
    Ok(out)
}

/// `rate` (`per_second` = the range in seconds), `increase` and `delta` as Prometheus computes
/// them: the change between the window's first and last sample (counter resets added back for
/// counters), extrapolated to the window's edges when the samples come close enough to them
/// (within 110% of the average spacing; otherwise by half the average spacing), and for counters
/// never extrapolated below zero. Fewer than two samples give no result.
fn extrapolated_rate(
    window: &[Point],
    range_start: i64,
    range_end: i64,
    is_counter: bool,
    per_second: Option<f64>,
) -> Option<f64> {
    let (first, last) = match window {
        [first, .., last] => (*first, *last),
        _ => return None,
    };
    let mut result = last.value - first.value;
    if is_counter {
        for pair in window.windows(2) {
            if pair[1].value < pair[0].value {
                result += pair[0].value;
            }
        }
    }
    let mut to_start = (first.t_ms - range_start) as f64 / 1000.0;
    let mut to_end = (range_end - last.t_ms) as f64 / 1000.0;
    let sampled = (last.t_ms - first.t_ms) as f64 / 1000.0;
    let average_spacing = sampled / (window.len() - 1) as f64;
    let threshold = average_spacing * 1.1;
    if to_start >= threshold {
        to_start = average_spacing / 2.0;
    }
    if is_counter && result > 0.0 && first.value >= 0.0 {
        // Counters cannot be negative: stop the extrapolation where the counter would be zero.
        let to_zero = sampled * (first.value / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    if to_end >= threshold {
        to_end = average_spacing / 2.0;
    }
    let mut factor = (sampled + to_start + to_end) / sampled;
    if let Some(seconds) = per_second {
        factor /= seconds;
    }
    Some(result * factor)
}

/// `irate` (per second, a drop taken as a counter reset) and `idelta` from the last two samples.
fn instant_change(window: &[Point], is_rate: bool) -> Option<f64> {
    let (previous, last) = match window {
        [.., previous, last] => (*previous, *last),
        _ => return None,
    };
    let interval_ms = last.t_ms - previous.t_ms;
    if interval_ms == 0 {
        return None;
    }
    let change = if is_rate && last.value < previous.value {
        last.value
    } else {
        last.value - previous.value
    };
    Some(if is_rate {
        change / (interval_ms as f64 / 1000.0)
    } else {
        change
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(samples: &[(i64, f64)]) -> Vec<Point> {
        samples.iter().map(|&(t, v)| Point::new(t, v)).collect()
    }

    #[test]
    fn rate_extrapolates_to_window_edges() {
        // Samples every 10 s from 5 s to 55 s in a 60 s window: 5 s to each edge (< 11 s), so
        // the 50 s of samples are extrapolated to the full 60 s.
        let w = points(&[
            (5_000, 100.0),
            (15_000, 110.0),
            (25_000, 120.0),
            (35_000, 130.0),
            (45_000, 140.0),
            (55_000, 150.0),
        ]);
        let factor = (50.0 + 5.0 + 5.0) / 50.0;
        assert_eq!(
            extrapolated_rate(&w, 0, 60_000, false, None),
            Some(50.0 * factor)
        );
        assert_eq!(
            extrapolated_rate(&w, 0, 60_000, true, Some(60.0)),
            Some(50.0 * (factor / 60.0))
        );
    }

    #[test]
    fn counters_stop_at_zero_and_resets_are_added_back() {
        // First value 10, increase 50 over 50 s: zero lies 10 s before the first sample, farther
        // than the window's start (5 s), so the full extrapolation applies.
        let w = points(&[(5_000, 10.0), (30_000, 35.0), (55_000, 60.0)]);
        assert_eq!(
            extrapolated_rate(&w, 0, 60_000, true, None),
            Some(50.0 * ((50.0 + 5.0 + 5.0) / 50.0))
        );
        // First value 1 with an increase of 50: zero lies 1 s before the first sample.
        let w = points(&[(5_000, 1.0), (30_000, 26.0), (55_000, 51.0)]);
        assert_eq!(
            extrapolated_rate(&w, 0, 60_000, true, None),
            Some(50.0 * ((50.0 + 1.0 + 5.0) / 50.0))
        );
        // A reset (30 -> 5) adds the value before it: 30 + 25 = 55 over the samples; the first
        // value is 0, so nothing is extrapolated before the first sample.
        let w = points(&[(5_000, 0.0), (20_000, 30.0), (35_000, 5.0), (50_000, 25.0)]);
        let got = extrapolated_rate(&w, 0, 60_000, true, None).unwrap();
        assert_eq!(got, 55.0 * ((45.0 + 0.0 + 10.0) / 45.0));
        // delta does not treat the drop as a reset, nor stop at zero.
        let got = extrapolated_rate(&w, 0, 60_000, false, None).unwrap();
        assert_eq!(got, 25.0 * ((45.0 + 5.0 + 10.0) / 45.0));
    }

    #[test]
    fn zero_point_limits_the_start_after_the_threshold_rule() {
        // The series starts 20 s into the window, beyond the 16.5 s threshold, so the start is
        // extrapolated by half the spacing (7.5 s); the zero point (15 s * 50 / 50 = 15 s before
        // the first sample) is farther and changes nothing. That is Prometheus 3's order.
        // Prometheus 2.42 limits by the zero point first (20 s -> 15 s), finds 15 s under the
        // threshold and extrapolates by 15 s: 125 instead of 100.
        let w = points(&[(20_000, 50.0), (35_000, 100.0)]);
        let got = extrapolated_rate(&w, 0, 60_000, true, None).unwrap();
        assert_eq!(got, 50.0 * ((15.0 + 7.5 + 7.5) / 15.0));
    }

    #[test]
    fn far_edges_extrapolate_by_half_the_spacing() {
        // Samples 20 s..40 s every 10 s in a 60 s window: 20 s to each edge exceeds 11 s.
        let w = points(&[(20_000, 100.0), (30_000, 110.0), (40_000, 120.0)]);
        assert_eq!(
            extrapolated_rate(&w, 0, 60_000, false, None),
            Some(20.0 * ((20.0 + 5.0 + 5.0) / 20.0))
        );
        assert_eq!(
            extrapolated_rate(&points(&[(20_000, 1.0)]), 0, 60_000, true, None),
            None
        );
    }

    #[test]
    fn irate_and_idelta_use_the_last_two_samples() {
        let w = points(&[(0, 1.0), (10_000, 50.0), (15_000, 60.0)]);
        assert_eq!(instant_change(&w, true), Some(2.0));
        assert_eq!(instant_change(&w, false), Some(10.0));
        let reset = points(&[(0, 50.0), (10_000, 20.0)]);
        assert_eq!(instant_change(&reset, true), Some(2.0));
        assert_eq!(instant_change(&reset, false), Some(-30.0));
        assert_eq!(instant_change(&points(&[(0, 1.0)]), true), None);
    }
}
