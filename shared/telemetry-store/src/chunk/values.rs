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
    plan_int_stream, read_int_stream, resume_context, write_int_residuals, write_int_stream_header,
    EncodeScratch, IntStreamPlan, SequenceKind,
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

/// What the encoder keeps of a series' values between encodes: the plan and the stream written
/// with it, the series' decimal form so far, and where its XOR stream stands.
#[derive(Debug, Clone, Default)]
pub(super) struct ValueCoding {
    planned: Planned<ValueInputs, ValuePlan>,
    decimal: DecimalCheck,
    xor: XorState,
}

/// The decimal form of a series' first `checked` values.
#[derive(Debug, Clone, Copy, Default)]
struct DecimalCheck {
    checked: usize,
    form: DecimalForm,
}

#[derive(Debug, Clone, Copy, Default)]
enum DecimalForm {
    /// Every value is exact at this exponent, the largest any of them needs.
    Exponent(usize),
    /// Some value has no decimal form: no later value changes that.
    #[default]
    NotDecimal,
    /// Every value has one, but not all at the exponent the largest needs: checked again in
    /// full when values are added.
    Inexact,
}

impl DecimalCheck {
    /// The decimal exponent of all of `values` (`decimal_series`), checking only the values
    /// added since the last call when their exponent is no larger.
    fn exponent_of(&mut self, values: &[f64], scratch: &mut Vec<i64>) -> Option<usize> {
        let resumable = match self.form {
            _ if self.checked == 0 => false,
            DecimalForm::NotDecimal => true,
            DecimalForm::Inexact => false,
            DecimalForm::Exponent(exponent) => {
                values[self.checked..].iter().all(|&value| {
                    decimal_form(value).is_some_and(|(needed, _)| needed <= exponent)
                        && exact_mantissa(value, POWERS_OF_TEN[exponent]).is_some()
                }) || {
                    // A value without a decimal form settles it; anything else is checked anew.
                    if values[self.checked..]
                        .iter()
                        .any(|&value| decimal_form(value).is_none())
                    {
                        self.form = DecimalForm::NotDecimal;
                        true
                    } else {
                        false
                    }
                }
            }
        };
        if !resumable {
            self.form = match decimal_series(values, scratch) {
                Some(exponent) => DecimalForm::Exponent(exponent),
                None if values.iter().all(|&value| decimal_form(value).is_some()) => {
                    DecimalForm::Inexact
                }
                None => DecimalForm::NotDecimal,
            };
        }
        self.checked = values.len();
        match self.form {
            DecimalForm::Exponent(exponent) => Some(exponent),
            DecimalForm::NotDecimal | DecimalForm::Inexact => None,
        }
    }
}

/// The mantissas of `values` at `exponent`, at which every one of them is exact.
fn mantissas_at(values: &[f64], exponent: usize, out: &mut Vec<i64>) {
    let power = POWERS_OF_TEN[exponent];
    out.clear();
    out.extend(values.iter().map(|&value| {
        exact_mantissa(value, power).expect("every value was checked exact at this exponent")
    }));
}

pub(super) fn encode_values(
    sink: &mut BitWriter,
    values: &[f64],
    coding: &mut ValueCoding,
    scratch: &mut EncodeScratch,
) {
    let exponent = coding.decimal.exponent_of(values, &mut scratch.sequence);
    let inputs = ValueInputs {
        prefix: planning_prefix(values.len()),
        exponent,
    };
    let planned = &mut coding.planned;
    let plan = planned.get_or_plan(inputs, || plan_values(values, inputs, scratch));
    let from = planned.written;
    match (plan, exponent) {
        (ValuePlan::Decimal(stream), Some(exponent)) => {
            if from == 0 {
                planned.stream.put(1, 1);
                planned.stream.put(exponent as u64, 4);
                write_int_stream_header(&mut planned.stream, stream);
            }
            let context = resume_context(from);
            mantissas_at(&values[from - context..], exponent, &mut scratch.sequence);
            write_int_residuals(
                &mut planned.stream,
                &scratch.sequence,
                context,
                stream,
                &mut scratch.residuals,
            );
        }
        _ => {
            if from == 0 {
                planned.stream.put(0, 1);
            }
            write_xor_from(&mut planned.stream, values, from, &mut coding.xor);
        }
    }
    planned.written = values.len();
    sink.append(&planned.stream);
}

/// The cheaper mode for `values`, priced on the first `inputs.prefix` of them.
fn plan_values(values: &[f64], inputs: ValueInputs, scratch: &mut EncodeScratch) -> ValuePlan {
    let Some(exponent) = inputs.exponent else {
        return ValuePlan::Xor;
    };
    let prefix = &values[..inputs.prefix];
    mantissas_at(prefix, exponent, &mut scratch.candidate);
    let stream = plan_int_stream(
        &scratch.candidate,
        SequenceKind::Values,
        &mut scratch.sorting,
        &mut scratch.residuals,
    );
    // XOR needs 64 bits for the first value and at least 1 for each other one, which spares
    // pricing it for most integer series.
    let xor_floor = 64 + prefix.len() as u64 - 1;
    let decimal_wins = stream.bits + 4 < xor_floor || {
        let mut xor_bits = BitCounter(0);
        write_xor_values(&mut xor_bits, prefix);
        stream.bits + 4 < xor_bits.0
    };
    if decimal_wins {
        ValuePlan::Decimal(stream)
    } else {
        ValuePlan::Xor
    }
}

/// Where an XOR stream stands after its last value: what the next value's code depends on.
#[derive(Debug, Clone, Copy, Default)]
struct XorState {
    previous: u64,
    window: Option<(u32, u32)>,
}

fn write_xor_values(sink: &mut impl BitSink, values: &[f64]) {
    write_xor_from(sink, values, 0, &mut XorState::default());
}

/// The XOR codes of `values[from..]`, `state` being where the stream stood after `values[..from]`.
fn write_xor_from(sink: &mut impl BitSink, values: &[f64], from: usize, state: &mut XorState) {
    for (index, value) in values.iter().enumerate().skip(from) {
        let bits = value.to_bits();
        if index == 0 {
            sink.put(bits, 64);
            *state = XorState {
                previous: bits,
                window: None,
            };
            continue;
        }
        let xor = bits ^ state.previous;
        state.previous = bits;
        if xor == 0 {
            sink.put(0, 1);
            continue;
        }
        let leading = xor.leading_zeros();
        let trailing = xor.trailing_zeros();
        match state.window {
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
                state.window = Some((leading, trailing));
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
