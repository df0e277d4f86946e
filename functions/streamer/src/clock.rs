//! Sample timestamps and pacing: each row is stamped when it is processed, strictly later than
//! every stamp before it (even if the wall clock steps back), and an optional rate cap spaces
//! rows out evenly.

use std::time::{Duration, Instant};

use telemetry_model::TimestampMicros;

/// A source of wall-clock time in microseconds; tests step it backwards.
pub trait WallClock {
    fn now_micros(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_micros(&self) -> i64 {
        TimestampMicros::now().0
    }
}

/// Hands out strictly increasing timestamps: `max(now, last + 1)`.
#[derive(Debug, Clone)]
pub struct Stamper<C: WallClock = SystemClock> {
    clock: C,
    last: i64,
}

impl Default for Stamper<SystemClock> {
    fn default() -> Self {
        Stamper::new(SystemClock)
    }
}

impl<C: WallClock> Stamper<C> {
    pub fn new(clock: C) -> Self {
        Stamper {
            clock,
            last: i64::MIN,
        }
    }

    /// The timestamp of a row processed now.
    pub fn stamp(&mut self) -> TimestampMicros {
        let now = self.clock.now_micros();
        self.last = now.max(self.last.saturating_add(1));
        TimestampMicros(self.last)
    }

    /// Every later stamp is above `floor` (e.g. a shard's last stamp written by another streamer).
    pub fn raise_floor(&mut self, floor: i64) {
        self.last = self.last.max(floor);
    }

    /// The last stamp handed out (or the floor).
    pub fn last(&self) -> i64 {
        self.last
    }
}

/// Spaces samples so that at most `rate` pass per second on average (0 = no cap).
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: u64,
    started: Instant,
    admitted: u64,
}

/// Waits shorter than this are not slept: the timer cannot do better, and the debt is paid by
/// the next wait, so the average rate stays exact.
const MIN_SLEEP: Duration = Duration::from_millis(1);

impl Pacer {
    pub fn new(rate: u64) -> Self {
        Pacer {
            rate,
            started: Instant::now(),
            admitted: 0,
        }
    }

    /// Starts counting afresh (after a pause, so the pause is not made up by a burst).
    pub fn restart(&mut self, now: Instant) {
        self.started = now;
        self.admitted = 0;
    }

    /// Admits one sample at `now`; returns how long to sleep first, if at all.
    pub fn admit(&mut self, now: Instant) -> Option<Duration> {
        if self.rate == 0 {
            return None;
        }
        let offset_nanos = u128::from(self.admitted) * 1_000_000_000 / u128::from(self.rate);
        let due =
            self.started + Duration::from_nanos(offset_nanos.min(u128::from(u64::MAX)) as u64);
        self.admitted += 1;
        let wait = due.saturating_duration_since(now);
        (wait >= MIN_SLEEP).then_some(wait)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    struct SteppedClock<'a>(&'a Cell<i64>);

    impl WallClock for SteppedClock<'_> {
        fn now_micros(&self) -> i64 {
            self.0.get()
        }
    }

    #[test]
    fn stamps_increase_strictly_even_when_the_clock_steps_back() {
        let now = Cell::new(1_000);
        let mut stamper = Stamper::new(SteppedClock(&now));
        assert_eq!(stamper.stamp(), TimestampMicros(1_000));
        assert_eq!(stamper.stamp(), TimestampMicros(1_001), "same microsecond");
        now.set(5_000);
        assert_eq!(stamper.stamp(), TimestampMicros(5_000));
        now.set(2_000); // the wall clock steps back
        assert_eq!(stamper.stamp(), TimestampMicros(5_001));
        assert_eq!(stamper.stamp(), TimestampMicros(5_002));
        stamper.raise_floor(9_000);
        assert_eq!(stamper.stamp(), TimestampMicros(9_001));
        stamper.raise_floor(10); // a lower floor changes nothing
        assert_eq!(stamper.stamp(), TimestampMicros(9_002));
        now.set(20_000);
        assert_eq!(stamper.stamp(), TimestampMicros(20_000));
        assert_eq!(stamper.last(), 20_000);
    }

    #[test]
    fn pacer_spaces_samples_at_the_rate() {
        let start = Instant::now();
        let mut pacer = Pacer::new(100);
        pacer.restart(start);
        assert_eq!(pacer.admit(start), None, "the first sample goes at once");
        assert_eq!(pacer.admit(start), Some(Duration::from_millis(10)));
        assert_eq!(pacer.admit(start), Some(Duration::from_millis(20)));
        // Behind schedule: no wait until the schedule catches up.
        let later = start + Duration::from_secs(1);
        assert_eq!(pacer.admit(later), None);
        pacer.restart(later);
        assert_eq!(pacer.admit(later), None);
        assert_eq!(pacer.admit(later), Some(Duration::from_millis(10)));
    }

    #[test]
    fn unlimited_and_sub_millisecond_waits_do_not_sleep() {
        let now = Instant::now();
        let mut unlimited = Pacer::new(0);
        assert!((0..1000).all(|_| unlimited.admit(now).is_none()));
        let mut fast = Pacer::new(1_000_000);
        fast.restart(now);
        assert!((0..1000).all(|_| fast.admit(now).is_none()));
        assert_eq!(fast.admit(now), Some(Duration::from_millis(1)));
    }
}
