//! Timestamp coding: a series' timestamps as integers relative to the chunk's first timestamp or
//! to an earlier series' timestamps, which the integer coding then writes.
//!
//! A series' timestamps (sorted ascending) become integers `x[k]` in one of two ways:
//! `0` = own: `x[k] = ts[k] - min_timestamp`; `1` + 3 bits `d - 1` = relative to the series `d`
//! places earlier (same sample count): `x[k] = ts[k] - ref_ts[k]`. Every metric of a GPU is sampled
//! in the same streamer pass, so a series' timestamps sit at a near-constant offset from its
//! neighbour's and the offset changes by far less than the pass jitter does. The encoder picks the
//! cheapest candidate, priced on the series' planning prefix (`plan`).

use super::bits::{BitReader, BitSink, BitWriter};
use super::int_coding::{
    plan_int_stream, read_int_stream, resume_context, write_int_residuals, write_int_stream_header,
    EncodeScratch, IntStreamPlan, SequenceKind,
};
use super::plan::{planning_prefix, Planned};
use super::{ChunkError, Series};

/// How far back a series may look for a reference series; 3 bits in the stream.
const MAX_REFERENCE_DISTANCE: usize = 8;

/// What the timestamp plan of a series depends on besides its prefix samples: the prefix length
/// and which earlier series have the same sample count (and may serve as its reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TimestampInputs {
    prefix: usize,
    references: u8,
}

/// How a series' timestamps are written: own or relative to a reference, and the stream's plan.
#[derive(Debug, Clone, Copy)]
pub(super) struct TimestampPlan {
    reference: Option<usize>,
    stream: IntStreamPlan,
}

pub(super) fn encode_timestamps(
    sink: &mut BitWriter,
    series: &[Series],
    index: usize,
    min_ts: i64,
    planned: &mut Planned<TimestampInputs, TimestampPlan>,
    scratch: &mut EncodeScratch,
) {
    let own = &series[index].timestamps;
    let mut references = 0u8;
    for distance in 1..=MAX_REFERENCE_DISTANCE.min(index) {
        if series[index - distance].timestamps.len() == own.len() {
            references |= 1 << (distance - 1);
        }
    }
    let inputs = TimestampInputs {
        prefix: planning_prefix(own.len()),
        references,
    };
    let plan = planned.get_or_plan(inputs, || {
        plan_timestamps(series, index, min_ts, inputs, scratch)
    });
    let from = planned.written;
    if from == 0 {
        match plan.reference {
            None => planned.stream.put(0, 1),
            Some(distance) => {
                planned.stream.put(1, 1);
                planned.stream.put((distance - 1) as u64, 3);
            }
        }
        write_int_stream_header(&mut planned.stream, plan.stream);
    }
    let context = resume_context(from);
    let window = from - context..own.len();
    scratch.sequence.clear();
    match plan.reference {
        None => scratch
            .sequence
            .extend(own[window].iter().map(|&ts| ts.wrapping_sub(min_ts))),
        Some(distance) => {
            let reference = &series[index - distance].timestamps;
            scratch.sequence.extend(
                own[window.clone()]
                    .iter()
                    .zip(&reference[window])
                    .map(|(&ts, &r)| ts.wrapping_sub(r)),
            );
        }
    }
    write_int_residuals(
        &mut planned.stream,
        &scratch.sequence,
        context,
        plan.stream,
        &mut scratch.residuals,
    );
    planned.written = own.len();
    sink.append(&planned.stream);
}

/// The cheapest way to write the timestamps of `series[index]`, priced on their first
/// `inputs.prefix` samples.
fn plan_timestamps(
    series: &[Series],
    index: usize,
    min_ts: i64,
    inputs: TimestampInputs,
    scratch: &mut EncodeScratch,
) -> TimestampPlan {
    let own = &series[index].timestamps[..inputs.prefix];
    scratch.candidate.clear();
    scratch
        .candidate
        .extend(own.iter().map(|&ts| ts.wrapping_sub(min_ts)));
    let mut best = TimestampPlan {
        reference: None,
        stream: plan_int_stream(
            &scratch.candidate,
            SequenceKind::Timestamps,
            &mut scratch.sorting,
            &mut scratch.residuals,
        ),
    };
    for distance in 1..=MAX_REFERENCE_DISTANCE.min(index) {
        if inputs.references & (1 << (distance - 1)) == 0 {
            continue;
        }
        let reference = &series[index - distance].timestamps;
        scratch.candidate.clear();
        scratch.candidate.extend(
            own.iter()
                .zip(reference)
                .map(|(&ts, &r)| ts.wrapping_sub(r)),
        );
        let stream = plan_int_stream(
            &scratch.candidate,
            SequenceKind::Offsets,
            &mut scratch.sorting,
            &mut scratch.residuals,
        );
        // Naming the reference costs 3 bits.
        if stream.bits + 3 < best.stream.bits {
            best = TimestampPlan {
                reference: Some(distance),
                stream,
            };
        }
    }
    best
}

pub(super) fn decode_timestamps(
    bits: &mut BitReader<'_>,
    decoded: &[Series],
    count: usize,
    min_ts: i64,
) -> Result<Vec<i64>, ChunkError> {
    let reference: Option<&[i64]> = if bits.bit()? {
        let distance = bits.get_small(3)? as usize + 1;
        let series = decoded
            .len()
            .checked_sub(distance)
            .and_then(|at| decoded.get(at))
            .ok_or(ChunkError::Corrupt("reference series does not exist"))?;
        if series.timestamps.len() != count {
            return Err(ChunkError::Corrupt(
                "reference series has another sample count",
            ));
        }
        Some(&series.timestamps)
    } else {
        None
    };
    let mut timestamps = Vec::with_capacity(count);
    read_int_stream(bits, count, |index, x| {
        let base = reference.map_or(min_ts, |reference| reference[index]);
        let ts = base.wrapping_add(x);
        if timestamps.last().is_some_and(|&last| last > ts) {
            return Err(ChunkError::Corrupt("timestamps not ascending"));
        }
        timestamps.push(ts);
        Ok(())
    })?;
    Ok(timestamps)
}
