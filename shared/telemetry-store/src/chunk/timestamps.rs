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
use super::plan::planning_prefix;
use super::{ChunkError, Series};

/// How far back a series may look for a reference series; 3 bits in the stream.
const MAX_REFERENCE_DISTANCE: usize = 8;

/// How a series' timestamps are written: own or relative to a reference, and the stream's plan.
#[derive(Debug, Clone, Copy)]
struct TimestampPlan {
    reference: Option<usize>,
    stream: IntStreamPlan,
}

/// Streams a series keeps between encodes, one per way of writing it (own, or a reference).
const STREAMS_KEPT: usize = 3;

/// What the encoder keeps of a series' timestamps between encodes, for one planning prefix: the
/// price of each candidate on it, and the streams written with the recent choices.
///
/// Which candidates may be chosen depends on which earlier series have the same sample count at
/// the moment of the encode, and that changes from one commit to the next when a GPU's metrics
/// arrive in runs (the streamer replays a file sorted by metric, and a commit ends anywhere in a
/// pass): a price does not (it reads only the prefix), so each is computed once per prefix, and
/// a stream written with a choice is taken up again when the choice comes back.
#[derive(Debug, Clone, Default)]
pub(super) struct TimestampPlans {
    /// The planning prefix the prices and streams below are for.
    prefix: usize,
    /// The plan of each candidate, priced on the prefix when first allowed: own at index 0, the
    /// series `d` places earlier at index `d`.
    priced: [Option<IntStreamPlan>; MAX_REFERENCE_DISTANCE + 1],
    /// Streams written with recent choices, the latest first.
    streams: Vec<(Option<usize>, ChoiceStream)>,
}

/// Timestamp candidates priced and streams started on this thread, for the tests of the cache.
#[cfg(test)]
pub(super) mod counts {
    use std::cell::Cell;

    thread_local! {
        pub static PRICED: Cell<usize> = const { Cell::new(0) };
        pub static STARTED: Cell<usize> = const { Cell::new(0) };
    }

    pub fn add(counter: &'static std::thread::LocalKey<Cell<usize>>) {
        counter.with(|count| count.set(count.get() + 1));
    }
}

/// One choice's stream: its bits for the series' first `written` samples.
#[derive(Debug, Clone)]
struct ChoiceStream {
    stream: BitWriter,
    written: usize,
}

pub(super) fn encode_timestamps(
    sink: &mut BitWriter,
    series: &[Series],
    index: usize,
    min_ts: i64,
    plans: &mut TimestampPlans,
    scratch: &mut EncodeScratch,
) {
    let own = &series[index].timestamps;
    let prefix = planning_prefix(own.len());
    if plans.prefix != prefix {
        *plans = TimestampPlans {
            prefix,
            ..TimestampPlans::default()
        };
    }
    let plan = choose(series, index, min_ts, plans, scratch);
    let at = plans
        .streams
        .iter()
        .position(|(reference, _)| *reference == plan.reference);
    let planned = match at {
        Some(at) => {
            plans.streams[..=at].rotate_right(1);
            &mut plans.streams[0].1
        }
        None => {
            #[cfg(test)]
            counts::add(&counts::STARTED);
            plans.streams.truncate(STREAMS_KEPT - 1);
            let mut stream = BitWriter::default();
            match plan.reference {
                None => stream.put(0, 1),
                Some(distance) => {
                    stream.put(1, 1);
                    stream.put((distance - 1) as u64, 3);
                }
            }
            write_int_stream_header(&mut stream, plan.stream);
            plans
                .streams
                .insert(0, (plan.reference, ChoiceStream { stream, written: 0 }));
            &mut plans.streams[0].1
        }
    };
    let from = planned.written;
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

/// The cheapest way to write the timestamps of `series[index]` among the candidates allowed now
/// (own, and each of the earlier series within reach with the same sample count), priced on
/// their first `plans.prefix` samples; prices missing from `plans` are computed and kept.
fn choose(
    series: &[Series],
    index: usize,
    min_ts: i64,
    plans: &mut TimestampPlans,
    scratch: &mut EncodeScratch,
) -> TimestampPlan {
    let own = &series[index].timestamps[..plans.prefix];
    let own_plan = *plans.priced[0].get_or_insert_with(|| {
        #[cfg(test)]
        counts::add(&counts::PRICED);
        scratch.candidate.clear();
        scratch
            .candidate
            .extend(own.iter().map(|&ts| ts.wrapping_sub(min_ts)));
        plan_int_stream(
            &scratch.candidate,
            SequenceKind::Timestamps,
            &mut scratch.sorting,
            &mut scratch.residuals,
        )
    });
    let mut best = TimestampPlan {
        reference: None,
        stream: own_plan,
    };
    let count = series[index].timestamps.len();
    for distance in 1..=MAX_REFERENCE_DISTANCE.min(index) {
        let reference = &series[index - distance].timestamps;
        if reference.len() != count {
            continue;
        }
        let stream = *plans.priced[distance].get_or_insert_with(|| {
            #[cfg(test)]
            counts::add(&counts::PRICED);
            scratch.candidate.clear();
            scratch.candidate.extend(
                own.iter()
                    .zip(reference)
                    .map(|(&ts, &r)| ts.wrapping_sub(r)),
            );
            plan_int_stream(
                &scratch.candidate,
                SequenceKind::Offsets,
                &mut scratch.sorting,
                &mut scratch.residuals,
            )
        });
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
