//! Timestamp coding: a series' timestamps as integers relative to the chunk's first timestamp or
//! to an earlier series' timestamps, which the integer coding then writes.
//!
//! A series' timestamps (sorted ascending) become integers `x[k]` in one of two ways:
//! `0` = own: `x[k] = ts[k] - min_timestamp`; `1` + 3 bits `d - 1` = relative to the series `d`
//! places earlier (same sample count): `x[k] = ts[k] - ref_ts[k]`. Every metric of a GPU is sampled
//! in the same streamer pass, so a series' timestamps sit at a near-constant offset from its
//! neighbour's and the offset changes by far less than the pass jitter does. The encoder picks the
//! cheapest candidate.

use super::bits::{BitReader, BitSink, BitWriter};
use super::int_coding::{
    plan_int_stream, read_int_stream, write_int_stream, EncodeScratch, SequenceKind,
};
use super::{ChunkError, Series};

/// How far back a series may look for a reference series; 3 bits in the stream.
const MAX_REFERENCE_DISTANCE: usize = 8;

pub(super) fn encode_timestamps(
    sink: &mut BitWriter,
    series: &[Series],
    index: usize,
    min_ts: i64,
    scratch: &mut EncodeScratch,
) {
    let own = &series[index].timestamps;
    scratch.sequence.clear();
    scratch
        .sequence
        .extend(own.iter().map(|&ts| ts.wrapping_sub(min_ts)));
    let mut best = plan_int_stream(
        &scratch.sequence,
        SequenceKind::Timestamps,
        &mut scratch.sorting,
        &mut scratch.residuals,
    );
    let mut best_reference = None;
    for distance in 1..=MAX_REFERENCE_DISTANCE.min(index) {
        let reference = &series[index - distance].timestamps;
        if reference.len() != own.len() {
            continue;
        }
        scratch.candidate.clear();
        scratch.candidate.extend(
            own.iter()
                .zip(reference)
                .map(|(&ts, &r)| ts.wrapping_sub(r)),
        );
        let plan = plan_int_stream(
            &scratch.candidate,
            SequenceKind::Offsets,
            &mut scratch.sorting,
            &mut scratch.residuals,
        );
        // Naming the reference costs 3 bits.
        if plan.bits + 3 < best.bits {
            best = plan;
            best_reference = Some(distance);
            std::mem::swap(&mut scratch.sequence, &mut scratch.candidate);
        }
    }
    match best_reference {
        None => sink.put(0, 1),
        Some(distance) => {
            sink.put(1, 1);
            sink.put((distance - 1) as u64, 3);
        }
    }
    write_int_stream(sink, &scratch.sequence, best, &mut scratch.residuals);
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
