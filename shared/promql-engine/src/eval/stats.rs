//! The numeric reductions aggregations and `*_over_time` functions share, with Prometheus'
//! summation (Kahan-Neumaier), NaN rules and quantile interpolation, and Go's float edge cases.

/// One step of Kahan-Neumaier summation: adds `inc` to `sum` with compensation `c`.
fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// The compensated sum.
pub(crate) fn sum(values: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut c) = (0.0, 0.0);
    for v in values {
        (s, c) = kahan_inc(v, s, c);
    }
    s + c
}

/// The mean: the compensated sum divided by the count, or, once the sum overflows, an incremental
/// mean (each value divided by the count first), which stays finite where the sum cannot.
pub(crate) fn mean(values: &[f64]) -> f64 {
    let (mut s, mut c) = (0.0, 0.0);
    for &v in values {
        let (next, next_c) = kahan_inc(v, s, c);
        if next.is_infinite() && !v.is_infinite() {
            return incremental_mean(values);
        }
        (s, c) = (next, next_c);
    }
    (s + c) / values.len() as f64
}

fn incremental_mean(values: &[f64]) -> f64 {
    let (mut mean, mut c, mut count) = (0.0_f64, 0.0, 0.0);
    for &v in values {
        count += 1.0;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        (mean, c) = kahan_inc(v / count - mean / count, mean, c);
    }
    if mean.is_infinite() {
        mean
    } else {
        mean + c
    }
}

/// The largest value; NaN only when every value is NaN (Prometheus replaces a NaN maximum).
pub(crate) fn max(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(
        f64::NAN,
        |acc, v| if v > acc || acc.is_nan() { v } else { acc },
    )
}

/// The smallest value, with `max`'s NaN rule.
pub(crate) fn min(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(
        f64::NAN,
        |acc, v| if v < acc || acc.is_nan() { v } else { acc },
    )
}

/// The population variance (Welford's method, compensated).
pub(crate) fn variance(values: impl Iterator<Item = f64>) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for v in values {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// The φ-quantile by linear interpolation between the closest ranks, as Prometheus computes it:
/// NaN for no values or a NaN φ, -Inf for φ < 0, +Inf for φ > 1. NaN values sort first.
pub(crate) fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| nan_first(*a, *b));
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Ascending order with NaN before every number (Go's `sort.Float64s`).
pub(crate) fn nan_first(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
    }
}

/// Ascending (or descending) by value, NaN last either way (`sort`, `sort_desc`, `topk`,
/// `bottomk`).
pub(crate) fn by_value_nan_last(a: f64, b: f64, descending: bool) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => {
            let order = a.partial_cmp(&b).unwrap_or(Ordering::Equal);
            if descending {
                order.reverse()
            } else {
                order
            }
        }
    }
}

/// Go's `math.Pow` where it differs from C's `pow`: `Pow(x, 0) = 1` and `Pow(x, 1) = x` for any
/// x, else NaN in either argument gives NaN (C gives `pow(1, NaN) = 1`).
pub(crate) fn go_pow(x: f64, y: f64) -> f64 {
    if y == 0.0 {
        1.0
    } else if y == 1.0 {
        x
    } else if x.is_nan() || y.is_nan() {
        f64::NAN
    } else {
        x.powf(y)
    }
}

/// Go's `math.Max`: +Inf wins over NaN, NaN over everything else, +0 over -0.
pub(crate) fn go_max(x: f64, y: f64) -> f64 {
    if x == f64::INFINITY || y == f64::INFINITY {
        f64::INFINITY
    } else if x.is_nan() || y.is_nan() {
        f64::NAN
    } else if x == 0.0 && y == 0.0 {
        if x.is_sign_negative() {
            y
        } else {
            x
        }
    } else if x > y {
        x
    } else {
        y
    }
}

/// Go's `math.Min`: -Inf wins over NaN, NaN over everything else, -0 over +0.
pub(crate) fn go_min(x: f64, y: f64) -> f64 {
    if x == f64::NEG_INFINITY || y == f64::NEG_INFINITY {
        f64::NEG_INFINITY
    } else if x.is_nan() || y.is_nan() {
        f64::NAN
    } else if x == 0.0 && y == 0.0 {
        if x.is_sign_negative() {
            x
        } else {
            y
        }
    } else if x < y {
        x
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compensated_sum_keeps_small_terms() {
        assert_eq!(sum([1e100, 1.0, -1e100].into_iter()), 1.0);
        assert_eq!(sum([0.1, 0.2, 0.3].into_iter()), 0.6);
        assert_eq!(sum(std::iter::empty()), 0.0);
    }

    #[test]
    fn mean_survives_overflow() {
        assert_eq!(mean(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(mean(&[f64::MAX, f64::MAX]), f64::MAX);
        assert_eq!(mean(&[f64::INFINITY, 1.0]), f64::INFINITY);
        assert!(mean(&[f64::INFINITY, f64::NEG_INFINITY]).is_nan());
    }

    #[test]
    fn min_max_skip_nan_unless_all_nan() {
        assert_eq!(max([f64::NAN, 1.0, 3.0, 2.0].into_iter()), 3.0);
        assert_eq!(min([2.0, f64::NAN, 1.0].into_iter()), 1.0);
        assert!(max([f64::NAN, f64::NAN].into_iter()).is_nan());
    }

    #[test]
    fn variance_of_known_values() {
        // Population variance of 2, 4, 4, 4, 5, 5, 7, 9 is 4.
        assert_eq!(
            variance([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0].into_iter()),
            4.0
        );
        assert_eq!(variance([3.0].into_iter()), 0.0);
    }

    #[test]
    fn quantile_interpolates_and_clamps() {
        let v = vec![1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(0.5, v.clone()), 2.5);
        assert_eq!(quantile(0.0, v.clone()), 1.0);
        assert_eq!(quantile(1.0, v.clone()), 4.0);
        assert_eq!(quantile(0.9, v.clone()), 3.7);
        assert_eq!(quantile(-0.1, v.clone()), f64::NEG_INFINITY);
        assert_eq!(quantile(1.1, v.clone()), f64::INFINITY);
        assert!(quantile(f64::NAN, v).is_nan());
        assert!(quantile(0.5, vec![]).is_nan());
        // NaN sorts first: the 0-quantile of {NaN, 1} is NaN.
        assert!(quantile(0.0, vec![1.0, f64::NAN]).is_nan());
    }

    #[test]
    fn go_float_edge_cases() {
        assert!(go_pow(1.0, f64::NAN).is_nan());
        assert_eq!(go_pow(f64::NAN, 0.0), 1.0);
        assert_eq!(go_pow(2.0, 10.0), 1024.0);
        assert_eq!(go_max(f64::INFINITY, f64::NAN), f64::INFINITY);
        assert!(go_max(1.0, f64::NAN).is_nan());
        assert!(go_max(-0.0, 0.0).is_sign_positive());
        assert_eq!(go_min(f64::NEG_INFINITY, f64::NAN), f64::NEG_INFINITY);
        assert!(go_min(0.0, -0.0).is_sign_negative());
        assert_eq!(go_min(3.0, 2.0), 2.0);
    }
}
