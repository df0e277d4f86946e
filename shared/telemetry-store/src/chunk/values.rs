//! Value coding: a series' values in decimal mode (integer mantissas at one power of ten, written
//! by the integer coding) or XOR mode (Gorilla), whichever is smaller.
//!
//! A series' values start with `0` = XOR or `1` + 4 bits exponent `e` = decimal. Decimal mode is
//! used when every value is exactly `m / 10^e` for an integer `|m| <= 2^53` (bit-exact after the
//! division, so `-0.0`, subnormals, huge values, NaN and infinities never qualify); `x[k] = m[k]`.
//! Most telemetry is integers or fixed-point decimals (power in W with 3 decimals), whose
//! differences are small integers while their IEEE mantissas differ in almost every bit. XOR mode
//! is Gorilla: the first value as 64 raw bits, then per value the XOR with its predecessor: `0` =
//! equal; `10` + the meaningful bits inside the previous window; `11` + 6 bits leading zeros + 6
//! bits (meaningful length - 1) + the meaningful bits. The encoder picks the cheaper mode, priced on
//! the series' planning prefix (`plan`).

use super::bits::{BitCounter, BitReader, BitSink, BitWriter};
use super::int_coding::{
    plan_int_stream, read_int_stream, write_int_stream, EncodeScratch, IntStreamPlan, SequenceKind,
};
use super::plan::{planning_prefix, Planned};
use super::ChunkError;

/// Largest decimal exponent; 10^15 is exact in f64 and 4 bits hold it.
const MAX_DECIMAL_EXPONENT: usize = 15;
const POWERS_OF_TEN: [f64; MAX_DECIMAL_EXPONENT + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
/// Integers up to 2^53 convert to f64 exactly, which makes decimal mode bit-exact.
const MAX_EXACT_INTEGER: i64 = 1 << 53;

/// The smallest `e` with `value == m / 10^e` bit-exactly for an integer `|m| <= 2^53`, and that `m`.
fn decimal_form(value: f64) -> Option<(usize, i64)> {
    POWERS_OF_TEN
        .iter()
        .enumerate()
        .find_map(|(exponent, &power)| {
            let mantissa = exact_mantissa(value, power)?;
            Some((exponent, mantissa))
        })
}

/// `m` with `value == m / power` bit-exactly and `|m| <= 2^53`, if there is one.
fn exact_mantissa(value: f64, power: f64) -> Option<i64> {
    let scaled = (value * power).round();
    if scaled.is_nan() || scaled.abs() > MAX_EXACT_INTEGER as f64 {
        return None;
    }
    let mantissa = scaled as i64;
    ((mantissa as f64 / power).to_bits() == value.to_bits()).then_some(mantissa)
}

/// Fills `scaled` with the decimal mantissas of `values` at one shared exponent, if there is one.
fn decimal_series(values: &[f64], scaled: &mut Vec<i64>) -> Option<usize> {
    scaled.clear();
    let mut exponent = 0;
    for &value in values {
        let (e, mantissa) = decimal_form(value)?;
        exponent = exponent.max(e);
        scaled.push(mantissa);
    }
    let power = POWERS_OF_TEN[exponent];
    if exponent > 0 {
        // A value found exact at a smaller exponent is normally exact at a larger one too, but the
        // scaled product may round differently, so each one is checked again.
        for (mantissa, &value) in scaled.iter_mut().zip(values) {
            *mantissa = exact_mantissa(value, power)?;
        }
    }
    Some(exponent)
}

/// What the value plan of a series depends on besides its prefix samples: the prefix length and
/// the decimal exponent of the whole series (none when some value has no decimal form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ValueInputs {
    prefix: usize,
    exponent: Option<usize>,
}

/// How a series' values are written.
#[derive(Debug, Clone, Copy)]
pub(super) enum ValuePlan {
    Decimal(IntStreamPlan),
    Xor,
}

pub(super) fn encode_values(
    sink: &mut BitWriter,
    values: &[f64],
    planned: &mut Planned<ValueInputs, ValuePlan>,
    scratch: &mut EncodeScratch,
) {
    let exponent = decimal_series(values, &mut scratch.sequence);
    let inputs = ValueInputs {
        prefix: planning_prefix(values.len()),
        exponent,
    };
    let plan = planned.get_or_plan(inputs, || plan_values(values, inputs, scratch));
    match (plan, exponent) {
        (ValuePlan::Decimal(stream), Some(exponent)) => {
            sink.put(1, 1);
            sink.put(exponent as u64, 4);
            write_int_stream(sink, &scratch.sequence, stream, &mut scratch.residuals);
        }
        _ => {
            sink.put(0, 1);
            write_xor_values(sink, values);
        }
    }
}

/// The cheaper mode for `values`, priced on the first `inputs.prefix` of them; `scratch.sequence`
/// holds their decimal mantissas when `inputs.exponent` is set.
fn plan_values(values: &[f64], inputs: ValueInputs, scratch: &mut EncodeScratch) -> ValuePlan {
    if inputs.exponent.is_none() {
        return ValuePlan::Xor;
    }
    let prefix = inputs.prefix;
    let stream = plan_int_stream(
        &scratch.sequence[..prefix],
        SequenceKind::Values,
        &mut scratch.sorting,
        &mut scratch.residuals,
    );
    // XOR needs 64 bits for the first value and at least 1 for each other one, which spares
    // pricing it for most integer series.
    let xor_floor = 64 + prefix as u64 - 1;
    let decimal_wins = stream.bits + 4 < xor_floor || {
        let mut xor_bits = BitCounter(0);
        write_xor_values(&mut xor_bits, &values[..prefix]);
        stream.bits + 4 < xor_bits.0
    };
    if decimal_wins {
        ValuePlan::Decimal(stream)
    } else {
        ValuePlan::Xor
    }
}

fn write_xor_values(sink: &mut impl BitSink, values: &[f64]) {
    let Some((&first, rest)) = values.split_first() else {
        return;
    };
    sink.put(first.to_bits(), 64);
    let mut previous = first.to_bits();
    let mut window: Option<(u32, u32)> = None;
    for value in rest {
        let bits = value.to_bits();
        let xor = bits ^ previous;
        previous = bits;
        if xor == 0 {
            sink.put(0, 1);
            continue;
        }
        let leading = xor.leading_zeros();
        let trailing = xor.trailing_zeros();
        match window {
            Some((window_leading, window_trailing))
                if leading >= window_leading && trailing >= window_trailing =>
            {
                sink.put(0b10, 2);
                sink.put(
                    xor >> window_trailing,
                    64 - window_leading - window_trailing,
                );
            }
            _ => {
                let meaningful = 64 - leading - trailing;
                sink.put(0b11, 2);
                sink.put(u64::from(leading), 6);
                sink.put(u64::from(meaningful - 1), 6);
                sink.put(xor >> trailing, meaningful);
                window = Some((leading, trailing));
            }
        }
    }
}

pub(super) fn decode_values(
    bits: &mut BitReader<'_>,
    count: usize,
) -> Result<Vec<f64>, ChunkError> {
    let mut values = Vec::with_capacity(count);
    if bits.bit()? {
        let exponent = bits.get_small(4)? as usize;
        let power = *POWERS_OF_TEN
            .get(exponent)
            .ok_or(ChunkError::Corrupt("decimal exponent out of range"))?;
        read_int_stream(bits, count, |_, mantissa| {
            values.push(mantissa as f64 / power);
            Ok(())
        })?;
        return Ok(values);
    }
    if count == 0 {
        return Ok(values);
    }
    let mut previous = bits.get(64)?;
    values.push(f64::from_bits(previous));
    let mut window: Option<(u32, u32)> = None;
    for _ in 1..count {
        if bits.bit()? {
            let (leading, trailing) = if !bits.bit()? {
                window.ok_or(ChunkError::Corrupt("XOR window reused before it was set"))?
            } else {
                let leading = bits.get_small(6)? as u32;
                let meaningful = bits.get_small(6)? as u32 + 1;
                if leading + meaningful > 64 {
                    return Err(ChunkError::Corrupt("XOR window exceeds 64 bits"));
                }
                let window_now = (leading, 64 - leading - meaningful);
                window = Some(window_now);
                window_now
            };
            previous ^= bits.get(64 - leading - trailing)? << trailing;
        }
        values.push(f64::from_bits(previous));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::tests::{assert_round_trip, FEED_START_US};
    use crate::chunk::Chunk;
    use test_support::SplitMix;

    #[test]
    fn power_random_walk_with_3_decimals_uses_decimal_mode() {
        let mut rng = SplitMix::new(3);
        let mut milliwatts = 250_000i64;
        let values: Vec<f64> = (0..1_000)
            .map(|_| {
                milliwatts += rng.below(2_001) - 1_000;
                milliwatts as f64 / 1_000.0
            })
            .collect();
        let mut scaled = Vec::new();
        assert_eq!(decimal_series(&values, &mut scaled), Some(3));
        let mut chunk = Chunk::new();
        for (k, &value) in values.iter().enumerate() {
            chunk.push(
                "DCGM_FI_DEV_POWER_USAGE",
                FEED_START_US + k as i64 * 1_000_000,
                value,
            );
        }
        let bytes = assert_round_trip(&chunk);
        let mut xor_bits = BitCounter(0);
        write_xor_values(&mut xor_bits, &values);
        println!(
            "power walk: {} bytes = {:.3} bytes/sample (values alone as XOR: {:.3})",
            bytes.len(),
            bytes.len() as f64 / 1_000.0,
            xor_bits.0 as f64 / 8_000.0
        );
        // Steps of up to 1 W are 11 bits + 2 of code; the timestamps are exact seconds (1 bit).
        assert!(bytes.len() < 1_000 * 2, "{} bytes", bytes.len());
        assert!(
            xor_bits.0 / 8 > 1_000 * 4,
            "XOR should be the worse choice here"
        );
    }

    #[test]
    fn decimal_form_rejects_values_that_would_not_round_trip() {
        assert_eq!(decimal_form(312.457), Some((3, 312_457)));
        assert_eq!(decimal_form(-7.0), Some((0, -7)));
        assert_eq!(decimal_form(0.0), Some((0, 0)));
        assert_eq!(decimal_form(-0.0), None);
        assert_eq!(decimal_form(f64::MIN_POSITIVE / 4.0), None);
        assert_eq!(decimal_form(1e300), None);
        assert_eq!(
            decimal_form(9_007_199_254_740_993.0),
            Some((0, 9_007_199_254_740_992))
        );
        assert_eq!(decimal_form(f64::NAN), None);
        assert_eq!(decimal_form(f64::INFINITY), None);
        assert_eq!(decimal_form(0.1 + 0.2), None);
    }
}
