//! Sample timestamps and pacing: each row is stamped when it is processed, strictly later than
//! every stamp before it (even if the wall clock steps back), unless the stamps before it are
//! further ahead of the clock than the future bound; and an optional rate cap spaces rows out
//! evenly.

use std::time::{Duration, Instant};

use telemetry_model::{TimestampMicros, DEFAULT_MAX_FUTURE};

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

/// Hands out strictly increasing timestamps, `max(now, last + 1)`, as long as `last` is not more
/// than the future bound ahead of the clock. A stamp that far ahead came from a clock that ran
/// ahead and stepped back (or from a shard state another streamer's such clock wrote): the
/// collector rejects samples stamped beyond the bound, so following it would stamp every later
/// sample past what is stored. The stamper then stamps from the clock again.
#[derive(Debug, Clone)]
pub struct Stamper<C: WallClock = SystemClock> {
    clock: C,
    last: i64,
    max_ahead: Duration,
}

impl Default for Stamper<SystemClock> {
    fn default() -> Self {
        Stamper::new(SystemClock)
    }
}

impl<C: WallClock> Stamper<C> {
    /// A stamper on `clock` with the default future bound.
    pub fn new(clock: C) -> Self {
        Stamper {
            clock,
            last: i64::MIN,
            max_ahead: DEFAULT_MAX_FUTURE,
        }
    }

    /// The same stamper, following earlier stamps only while they are at most `max_ahead` ahead
    /// of the clock.
    pub fn with_max_ahead(self, max_ahead: Duration) -> Self {
        Stamper { max_ahead, ..self }
    }

    fn too_far_ahead(&self, stamp: i64, now: i64) -> bool {
        TimestampMicros(stamp).is_beyond(TimestampMicros(now), self.max_ahead)
    }

    /// The timestamp of a row processed now.
    pub fn stamp(&mut self) -> TimestampMicros {
        let now = self.clock.now_micros();
        if self.too_far_ahead(self.last, now) {
            tracing::warn!(
                last_stamp = %TimestampMicros(self.last),
                clock = %TimestampMicros(now),
                max_ahead = ?self.max_ahead,
                "the last stamp is further ahead of the clock than the future bound (the clock \
                 stepped back after running ahead); stamping from the clock again"
            );
            self.last = i64::MIN;
        }
        self.last = now.max(self.last.saturating_add(1));
        TimestampMicros(self.last)
    }

    /// Every later stamp is above `floor` (e.g. a shard's last stamp written by another
    /// streamer), unless `floor` is further ahead of the clock than the future bound: then it is
    /// ignored and false returned.
    pub fn raise_floor(&mut self, floor: i64) -> bool {
        if self.too_far_ahead(floor, self.clock.now_micros()) {
            return false;
        }
        self.last = self.last.max(floor);
        true
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
        assert!(stamper.raise_floor(9_000));
        assert_eq!(stamper.stamp(), TimestampMicros(9_001));
        assert!(stamper.raise_floor(10)); // a lower floor changes nothing
        assert_eq!(stamper.stamp(), TimestampMicros(9_002));
        now.set(20_000);
        assert_eq!(stamper.stamp(), TimestampMicros(20_000));
        assert_eq!(stamper.last(), 20_000);
    }

    #[test]
    fn stamps_further_ahead_than_the_bound_are_not_followed() {
        let now = Cell::new(1_000_000);
        let mut stamper = Stamper::new(SteppedClock(&now)).with_max_ahead(Duration::from_secs(60));
        // A shard state a minute ahead is followed; one a minute and a microsecond ahead, or
        // centuries ahead, is not.
        assert!(stamper.raise_floor(61_000_000));
        assert_eq!(stamper.stamp(), TimestampMicros(61_000_001));
        let mut fresh = Stamper::new(SteppedClock(&now)).with_max_ahead(Duration::from_secs(60));
        assert!(!fresh.raise_floor(61_000_001));
        assert!(!fresh.raise_floor(i64::MAX / 2));
        assert_eq!(
            fresh.stamp(),
            TimestampMicros(1_000_000),
            "stamped from the clock"
        );

        // The clock ran an hour ahead, then stepped back: within the bound stamps go on from the
        // last one; beyond it they restart from the clock and increase from there.
        let ahead = Cell::new(3_600_000_000);
        let mut stepping =
            Stamper::new(SteppedClock(&ahead)).with_max_ahead(Duration::from_secs(60));
        assert_eq!(stepping.stamp(), TimestampMicros(3_600_000_000));
        ahead.set(3_550_000_000); // back 50 s: within the bound
        assert_eq!(stepping.stamp(), TimestampMicros(3_600_000_001));
        ahead.set(1_000_000); // back an hour: beyond it
        assert_eq!(stepping.stamp(), TimestampMicros(1_000_000));
        assert_eq!(stepping.stamp(), TimestampMicros(1_000_001));
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
