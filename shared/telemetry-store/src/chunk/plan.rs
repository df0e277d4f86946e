//! Encoding plans and their reuse: which part of a series the encoder prices its choices on (the
//! planning prefix), and the cache that lets an open chunk, re-encoded on every commit, skip the
//! pricing and the writing of what it wrote before while its plans still hold.
//!
//! Every choice the encoder makes for a series (timestamp reference, predictors, Rice parameters,
//! value mode) is priced on the series' first `planning_prefix(n)` samples: all of them while the
//! series is short, then the largest power of two not above `n`. The choices stay a pure function
//! of the samples (a chunk encodes to the same bytes whether its plans were cached or not), and a
//! series that only grows keeps its plans until its length doubles: planning costs O(n) over a
//! chunk's life instead of O(n) per encode. While a plan holds, the bits written for a series'
//! first samples do not change either (each code depends only on the samples before it), so they
//! are kept too and an encode writes only the samples added since the last one.

use super::bits::BitWriter;

/// Series up to this long are priced in full.
const PRICED_IN_FULL: usize = 16;

/// How many of a series' `len` samples its encoding choices are priced on.
pub(super) fn planning_prefix(len: usize) -> usize {
    if len <= PRICED_IN_FULL {
        len
    } else {
        1 << len.ilog2()
    }
}

/// A plan, the inputs it was made from, and the part of one series' stream written with it so
/// far; reused while the inputs are the same.
#[derive(Debug, Clone)]
pub(super) struct Planned<I, P> {
    plan: Option<(I, P)>,
    /// The stream's bits for its first `written` samples.
    pub(super) stream: BitWriter,
    pub(super) written: usize,
}

impl<I, P> Default for Planned<I, P> {
    fn default() -> Self {
        Planned {
            plan: None,
            stream: BitWriter::default(),
            written: 0,
        }
    }
}

impl<I: PartialEq + Copy, P: Copy> Planned<I, P> {
    /// The plan for `inputs`: the cached one when it was made from the same inputs, else a new
    /// one from `plan`, kept for next time (the stream written so far is then dropped).
    pub(super) fn get_or_plan(&mut self, inputs: I, plan: impl FnOnce() -> P) -> P {
        match self.plan {
            Some((cached, planned)) if cached == inputs => planned,
            _ => {
                let planned = plan();
                self.plan = Some((inputs, planned));
                self.stream = BitWriter::default();
                self.written = 0;
                planned
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_series_are_priced_in_full_and_longer_ones_on_a_power_of_two() {
        let prefixes: Vec<usize> = [0, 1, 16, 17, 31, 32, 63, 64, 120, 1_200]
            .into_iter()
            .map(planning_prefix)
            .collect();
        assert_eq!(prefixes, [0, 1, 16, 16, 16, 32, 32, 64, 64, 1_024]);
    }

    #[test]
    fn a_plan_is_reused_only_for_the_same_inputs_and_a_new_one_restarts_the_stream() {
        let mut planned: Planned<usize, u32> = Planned::default();
        let mut calls = 0;
        let mut plan = |inputs: usize, planned: &mut Planned<usize, u32>| {
            planned.get_or_plan(inputs, || {
                calls += 1;
                inputs as u32 * 10
            })
        };
        assert_eq!(plan(1, &mut planned), 10);
        planned.written = 5;
        assert_eq!(plan(1, &mut planned), 10);
        assert_eq!(planned.written, 5, "the same plan keeps its stream");
        assert_eq!(plan(2, &mut planned), 20);
        assert_eq!(planned.written, 0, "a new plan restarts it");
        assert_eq!(plan(1, &mut planned), 10);
        assert_eq!(calls, 3);
    }
}
