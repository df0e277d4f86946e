//! Integer coding: how a sequence of integers `x[k]` (timestamps or decimal mantissas) becomes
//! bits: a predictor, then Rice-coded residuals.
//!
//! An integer stream (`x[k]`; wrapping i64 arithmetic throughout, so any i64 round-trips) starts
//! with 2 bits predictor, its parameter if it has one (7 bits bit length `n` + `n` bits, zigzag),
//! and 6 bits Rice parameter `r`. Predictors: `0` = step `s`: previous value plus `s` (delta
//! coding when `s = 0`, a jittered regular grid when `s` is the typical delta); `1` = slope:
//! previous value plus previous delta (delta-of-delta); `2` = constant `c` (noise around a level,
//! e.g. an offset from a reference series). Step and slope predict 0 for the first value and
//! slope assumes a first delta of 0. Each residual (actual - predicted) is zigzag-mapped to `z`
//! and Rice-coded: `q = z >> r` as `q` one bits and a zero, then the low `r` bits of `z`; when
//! `q >= 16` it is escaped instead as 16 one bits, 6 bits (bit length `n` - 1) and the low `n - 1`
//! bits of `z` (the top bit is implied). The encoder prices each predictor (step 0, slope, step =
//! median delta, constant = median value) at the Rice parameters around the one its mean
//! residual suggests, and keeps the smallest, so the code adapts to microsecond jitter and to
//! second-scale gaps alike; a constant series costs 1 bit per sample.

use super::bits::{unzigzag, zigzag, BitReader, BitSink};
use super::ChunkError;

fn bit_length(value: u64) -> u32 {
    64 - value.leading_zeros()
}

const PREDICTOR_TAG_BITS: u32 = 2;
const PARAMETER_LENGTH_BITS: u32 = 7;
const RICE_PARAMETER_BITS: u32 = 6;
/// Quotients from this many up are escaped; keeps a rare outlier from costing thousands of bits.
const RICE_UNARY_LIMIT: u32 = 16;
const ESCAPE_LENGTH_BITS: u32 = 6;

/// How the next integer of a stream is predicted; residuals are actual minus prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Predictor {
    /// Previous value plus a fixed step: delta coding (step 0) or a jittered regular grid.
    Step(i64),
    /// Previous value plus the previous delta: delta-of-delta coding.
    Slope,
    /// A fixed value: noise around a level, such as a series' offset from its reference.
    Constant(i64),
}

impl Predictor {
    /// Bits of the stream parameters: predictor tag, its parameter, Rice parameter.
    fn parameter_bits(self) -> u64 {
        let parameter = match self {
            Predictor::Step(p) | Predictor::Constant(p) => {
                PARAMETER_LENGTH_BITS + bit_length(zigzag(p))
            }
            Predictor::Slope => 0,
        };
        u64::from(PREDICTOR_TAG_BITS + parameter + RICE_PARAMETER_BITS)
    }

    fn write(self, sink: &mut impl BitSink) {
        let (tag, parameter) = match self {
            Predictor::Step(p) => (0, Some(p)),
            Predictor::Slope => (1, None),
            Predictor::Constant(p) => (2, Some(p)),
        };
        sink.put(tag, PREDICTOR_TAG_BITS);
        if let Some(p) = parameter {
            let z = zigzag(p);
            sink.put(u64::from(bit_length(z)), PARAMETER_LENGTH_BITS);
            sink.put(z, bit_length(z));
        }
    }

    fn read(bits: &mut BitReader<'_>) -> Result<Self, ChunkError> {
        let tag = bits.get_small(PREDICTOR_TAG_BITS)?;
        let mut parameter = || -> Result<i64, ChunkError> {
            let len = bits.get_small(PARAMETER_LENGTH_BITS)? as u32;
            if len > 64 {
                return Err(ChunkError::Corrupt(
                    "predictor parameter longer than 64 bits",
                ));
            }
            Ok(unzigzag(bits.get(len)?))
        };
        match tag {
            0 => Ok(Predictor::Step(parameter()?)),
            1 => Ok(Predictor::Slope),
            2 => Ok(Predictor::Constant(parameter()?)),
            _ => Err(ChunkError::Corrupt("unknown predictor")),
        }
    }
}

/// The decoder's running prediction of an integer stream: the inverse of [`fill_residuals`].
#[derive(Default)]
struct PredictorState {
    previous: i64,
    delta: i64,
    started: bool,
}

impl PredictorState {
    fn predict(&self, predictor: Predictor) -> i64 {
        match predictor {
            Predictor::Step(step) if self.started => self.previous.wrapping_add(step),
            Predictor::Slope if self.started => self.previous.wrapping_add(self.delta),
            Predictor::Step(_) | Predictor::Slope => 0,
            Predictor::Constant(level) => level,
        }
    }

    fn observe(&mut self, value: i64) {
        if self.started {
            self.delta = value.wrapping_sub(self.previous);
        }
        self.started = true;
        self.previous = value;
    }
}

/// Size of `z` as a Rice code with parameter `k` (quotient in unary, `k` low bits), or escaped.
fn rice_bits(z: u64, k: u32) -> u64 {
    let quotient = z >> k;
    if quotient < u64::from(RICE_UNARY_LIMIT) {
        quotient + 1 + u64::from(k)
    } else {
        u64::from(RICE_UNARY_LIMIT + ESCAPE_LENGTH_BITS + bit_length(z) - 1)
    }
}

fn write_rice(sink: &mut impl BitSink, z: u64, k: u32) {
    let quotient = z >> k;
    if quotient < u64::from(RICE_UNARY_LIMIT) {
        let ones = quotient as u32;
        sink.put((1u64 << (ones + 1)) - 2, ones + 1);
        sink.put(z, k);
    } else {
        let len = bit_length(z);
        sink.put((1u64 << RICE_UNARY_LIMIT) - 1, RICE_UNARY_LIMIT);
        sink.put(u64::from(len - 1), ESCAPE_LENGTH_BITS);
        sink.put(z, len - 1);
    }
}

fn read_rice(bits: &mut BitReader<'_>, k: u32) -> Result<u64, ChunkError> {
    // Most codes are a few ones, a zero and `k` low bits: one look at the next bits reads them
    // whole where they fit in it.
    if let Some(window) = bits.peek_window() {
        let ones = window.leading_ones();
        if ones < RICE_UNARY_LIMIT && ones + 1 + k <= BitReader::WINDOW_BITS {
            let low = if k == 0 {
                0
            } else {
                (window << (ones + 1)) >> (64 - k)
            };
            bits.skip(ones + 1 + k);
            return Ok((u64::from(ones) << k) | low);
        }
    }
    let quotient = bits.unary(RICE_UNARY_LIMIT)?;
    if quotient < RICE_UNARY_LIMIT {
        Ok((u64::from(quotient) << k) | bits.get(k)?)
    } else {
        let len = bits.get_small(ESCAPE_LENGTH_BITS)? as u32 + 1;
        Ok((1u64 << (len - 1)) | bits.get(len - 1)?)
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct IntStreamPlan {
    predictor: Predictor,
    rice: u32,
    pub(super) bits: u64,
}

/// Buffers reused across the series of one encode.
#[derive(Default)]
pub(super) struct EncodeScratch {
    pub(super) sequence: Vec<i64>,
    pub(super) candidate: Vec<i64>,
    pub(super) sorting: Vec<i64>,
    pub(super) residuals: Vec<u64>,
}

/// What a sequence holds, which decides the predictors worth pricing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SequenceKind {
    /// Ascending timestamps: no constant level predicts them.
    Timestamps,
    /// Offsets from a reference series' timestamps: a level, rarely a regular step.
    Offsets,
    /// Decimal mantissas: anything goes.
    Values,
}

fn median(sorting: &mut Vec<i64>, values: impl Iterator<Item = i64>) -> i64 {
    sorting.clear();
    sorting.extend(values);
    if sorting.is_empty() {
        return 0;
    }
    let middle = sorting.len() / 2;
    *sorting.select_nth_unstable(middle).1
}

/// The cheapest predictor and Rice parameter for `values`, with its exact size in bits.
pub(super) fn plan_int_stream(
    values: &[i64],
    kind: SequenceKind,
    sorting: &mut Vec<i64>,
    residuals: &mut Vec<u64>,
) -> IntStreamPlan {
    let mut predictors = [Some(Predictor::Step(0)), Some(Predictor::Slope), None, None];
    if kind != SequenceKind::Offsets {
        let step = median(sorting, values.windows(2).map(|w| w[1].wrapping_sub(w[0])));
        predictors[2] = (step != 0).then_some(Predictor::Step(step));
    }
    if kind != SequenceKind::Timestamps {
        predictors[3] = Some(Predictor::Constant(median(sorting, values.iter().copied())));
    }
    predictors
        .into_iter()
        .flatten()
        .map(|predictor| price_int_stream(values, predictor, residuals))
        .min_by_key(|plan| plan.bits)
        .unwrap_or(IntStreamPlan {
            predictor: Predictor::Step(0),
            rice: 0,
            bits: 0,
        })
}

/// Zigzag residuals of `values` under `predictor`; the decoder's [`PredictorState`] inverts this.
fn fill_residuals(values: &[i64], predictor: Predictor, out: &mut Vec<u64>) {
    out.clear();
    let Some(&first) = values.first() else {
        return;
    };
    match predictor {
        Predictor::Step(step) => {
            out.push(zigzag(first));
            out.extend(
                values
                    .windows(2)
                    .map(|w| zigzag(w[1].wrapping_sub(w[0]).wrapping_sub(step))),
            );
        }
        Predictor::Slope => {
            out.push(zigzag(first));
            if let Some(&second) = values.get(1) {
                out.push(zigzag(second.wrapping_sub(first)));
            }
            out.extend(values.windows(3).map(|w| {
                zigzag(
                    w[2].wrapping_sub(w[1])
                        .wrapping_sub(w[1].wrapping_sub(w[0])),
                )
            }));
        }
        Predictor::Constant(level) => {
            out.extend(values.iter().map(|&v| zigzag(v.wrapping_sub(level))));
        }
    }
}

/// Prices one predictor at the Rice parameters around the one its mean residual suggests.
fn price_int_stream(
    values: &[i64],
    predictor: Predictor,
    residuals: &mut Vec<u64>,
) -> IntStreamPlan {
    fill_residuals(values, predictor, residuals);
    let sum: u128 = residuals.iter().map(|&z| u128::from(z)).sum();
    let mean = (sum / residuals.len().max(1) as u128) as u64;
    let center = bit_length(mean).saturating_sub(1);
    let (rice, size) = [center.saturating_sub(1), center, (center + 1).min(63)]
        .into_iter()
        .map(|k| (k, residuals.iter().map(|&z| rice_bits(z, k)).sum::<u64>()))
        .min_by_key(|&(_, size)| size)
        .unwrap_or((0, 0));
    IntStreamPlan {
        predictor,
        rice,
        bits: predictor.parameter_bits() + size,
    }
}

/// A whole stream: its header, then every value's code (the encoder writes the two parts
/// separately, to resume a stream).
#[cfg(test)]
fn write_int_stream(
    sink: &mut impl BitSink,
    values: &[i64],
    plan: IntStreamPlan,
    residuals: &mut Vec<u64>,
) {
    write_int_stream_header(sink, plan);
    write_int_residuals(sink, values, 0, plan, residuals);
}

/// The stream parameters of `plan`, which start its stream.
pub(super) fn write_int_stream_header(sink: &mut impl BitSink, plan: IntStreamPlan) {
    plan.predictor.write(sink);
    sink.put(u64::from(plan.rice), RICE_PARAMETER_BITS);
}

/// The codes of `window[context..]`, where `window` starts `context` values before the first one
/// to write: the stream's values from its start, or from the two before (all a predictor looks
/// back at), so a stream written so far resumes where it stopped.
pub(super) fn write_int_residuals(
    sink: &mut impl BitSink,
    window: &[i64],
    context: usize,
    plan: IntStreamPlan,
    residuals: &mut Vec<u64>,
) {
    fill_residuals(window, plan.predictor, residuals);
    for &z in residuals.iter().skip(context) {
        write_rice(sink, z, plan.rice);
    }
}

/// How many values before `from` a stream resumed at `from` needs ([`write_int_residuals`]).
pub(super) fn resume_context(from: usize) -> usize {
    from.min(2)
}

/// Reads `count` integers, handing each to `emit` (which may reject it).
pub(super) fn read_int_stream(
    bits: &mut BitReader<'_>,
    count: usize,
    mut emit: impl FnMut(usize, i64) -> Result<(), ChunkError>,
) -> Result<(), ChunkError> {
    let predictor = Predictor::read(bits)?;
    let rice = bits.get_small(RICE_PARAMETER_BITS)? as u32;
    let mut state = PredictorState::default();
    for index in 0..count {
        let z = read_rice(bits, rice)?;
        let value = state.predict(predictor).wrapping_add(unzigzag(z));
        emit(index, value)?;
        state.observe(value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::bits::{BitCounter, BitWriter};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn int_streams_round_trip_for_every_predictor_and_rice_parameter(
            values in prop::collection::vec(
                prop_oneof![3 => -3_000i64..3_000, 1 => any::<i64>()],
                0..40,
            ),
            parameter in any::<i64>(),
            rice in 0u32..64,
        ) {
            for predictor in [
                Predictor::Step(0),
                Predictor::Step(parameter),
                Predictor::Slope,
                Predictor::Constant(parameter),
            ] {
                let plan = IntStreamPlan { predictor, rice, bits: 0 };
                let mut writer = BitWriter::new(Vec::new());
                write_int_stream(&mut writer, &values, plan, &mut Vec::new());
                let mut counter = BitCounter(0);
                write_int_stream(&mut counter, &values, plan, &mut Vec::new());
                let bytes = writer.finish();
                prop_assert_eq!(bytes.len() as u64, counter.0.div_ceil(8));
                let mut reader = BitReader::new(&bytes);
                let mut decoded = Vec::new();
                read_int_stream(&mut reader, values.len(), |_, value| {
                    decoded.push(value);
                    Ok(())
                })
                .unwrap();
                prop_assert_eq!(&decoded, &values);
                reader.expect_padding().unwrap();
                let priced = price_int_stream(&values, predictor, &mut Vec::new());
                let mut at_priced_rice = BitCounter(0);
                write_int_stream(
                    &mut at_priced_rice,
                    &values,
                    IntStreamPlan { rice: priced.rice, ..plan },
                    &mut Vec::new(),
                );
                prop_assert_eq!(priced.bits, at_priced_rice.0);

                // Written in two parts, resumed at `split`, the stream is the same bits.
                let split = (rice as usize) % (values.len() + 1);
                let mut whole = BitWriter::new(Vec::new());
                write_int_stream(&mut whole, &values, plan, &mut Vec::new());
                let mut parts = BitWriter::new(Vec::new());
                write_int_stream_header(&mut parts, plan);
                write_int_residuals(&mut parts, &values[..split], 0, plan, &mut Vec::new());
                let context = resume_context(split);
                write_int_residuals(
                    &mut parts,
                    &values[split - context..],
                    context,
                    plan,
                    &mut Vec::new(),
                );
                prop_assert_eq!(parts.finish(), whole.finish());
            }
        }
    }
}
