//! Sample timestamps: microseconds since the Unix epoch, with RFC 3339 conversion.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Why a string is not an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeParseError {
    /// chrono rejected the text.
    #[error("invalid RFC 3339 timestamp {input:?}: {reason}")]
    ParseRfc3339 { input: String, reason: String },
    /// The text is a valid RFC 3339 time outside the years 0000..=9999.
    #[error("timestamp {input:?} is outside the years 0000..=9999")]
    OutOfRange { input: String },
}

/// How far ahead of a host's clock a sample's timestamp may be unless configured otherwise
/// (`TELEMETRY_MAX_FUTURE`). A sample stamped further ahead came from a clock that ran ahead:
/// the collector rejects it (stored, it would keep a retention lease that long), and a streamer
/// whose shard state is that far ahead stamps from its own clock again.
pub const DEFAULT_MAX_FUTURE: Duration = Duration::from_secs(5 * 60);

/// Microseconds since 1970-01-01T00:00:00Z. Serializes as a bare `i64`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct TimestampMicros(pub i64);

impl TimestampMicros {
    /// 0000-01-01T00:00:00Z, the earliest time RFC 3339 can write.
    pub const RFC3339_MIN: TimestampMicros = TimestampMicros(-62_167_219_200_000_000);
    /// 9999-12-31T23:59:59.999999Z, the latest time RFC 3339 can write.
    pub const RFC3339_MAX: TimestampMicros = TimestampMicros(253_402_300_799_999_999);

    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from_datetime(Utc::now())
    }

    /// Whether this time is more than `bound` ahead of `now`: the one rule that says a timestamp
    /// is too far in the future.
    pub fn is_beyond(self, now: TimestampMicros, bound: Duration) -> bool {
        let bound = i64::try_from(bound.as_micros()).unwrap_or(i64::MAX);
        self.0 > now.0.saturating_add(bound)
    }

    /// Truncates sub-microsecond precision.
    pub fn from_datetime(dt: DateTime<Utc>) -> Self {
        Self(dt.timestamp_micros())
    }

    /// Saturates at chrono's representable range, which is narrower than `i64` microseconds.
    pub fn to_datetime(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.0).unwrap_or(if self.0 < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
    }

    /// Whether RFC 3339 can represent this time (years 0000..=9999).
    pub fn is_rfc3339_representable(&self) -> bool {
        (Self::RFC3339_MIN..=Self::RFC3339_MAX).contains(self)
    }

    /// UTC, always six fractional digits and a `Z`, e.g. `2025-07-18T20:42:34.000000Z`.
    pub fn to_rfc3339(&self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// Accepts any offset; digits below a microsecond are truncated.
    pub fn parse_rfc3339(s: &str) -> Result<Self, TimeParseError> {
        let dt = DateTime::parse_from_rfc3339(s).map_err(|e| TimeParseError::ParseRfc3339 {
            input: s.to_owned(),
            reason: e.to_string(),
        })?;
        let ts = Self::from_datetime(dt.with_timezone(&Utc));
        // An offset can push a year-0000 or year-9999 local time outside what we can write back.
        if !ts.is_rfc3339_representable() {
            return Err(TimeParseError::OutOfRange {
                input: s.to_owned(),
            });
        }
        Ok(ts)
    }
}

impl fmt::Display for TimestampMicros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl From<DateTime<Utc>> for TimestampMicros {
    fn from(dt: DateTime<Utc>) -> Self {
        Self::from_datetime(dt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_means_strictly_more_than_the_bound_ahead() {
        let now = TimestampMicros(1_000_000);
        let bound = Duration::from_secs(1);
        assert!(
            !TimestampMicros(2_000_000).is_beyond(now, bound),
            "exactly the bound"
        );
        assert!(TimestampMicros(2_000_001).is_beyond(now, bound));
        assert!(
            !TimestampMicros(0).is_beyond(now, bound),
            "the past is never beyond"
        );
        assert!(!TimestampMicros(i64::MAX).is_beyond(TimestampMicros(i64::MAX - 1), bound));
        assert!(!TimestampMicros(i64::MAX).is_beyond(now, Duration::from_secs(u64::MAX / 2)));
    }

    #[test]
    fn formats_with_six_digits_and_z() {
        let t = TimestampMicros(1_752_871_354_000_000);
        assert_eq!(t.to_rfc3339(), "2025-07-18T20:42:34.000000Z");
        assert_eq!(
            TimestampMicros(1_752_871_354_123_456).to_rfc3339(),
            "2025-07-18T20:42:34.123456Z"
        );
        assert_eq!(
            TimestampMicros(-1).to_rfc3339(),
            "1969-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn parses_offsets_and_truncates_nanoseconds() {
        assert_eq!(
            TimestampMicros::parse_rfc3339("2025-07-18T20:42:34Z").unwrap(),
            TimestampMicros(1_752_871_354_000_000)
        );
        assert_eq!(
            TimestampMicros::parse_rfc3339("2025-07-18T22:42:34.123456789+02:00").unwrap(),
            TimestampMicros(1_752_871_354_123_456)
        );
        assert!(matches!(
            TimestampMicros::parse_rfc3339("2025-07-18 nope"),
            Err(TimeParseError::ParseRfc3339 { .. })
        ));
        assert!(matches!(
            TimestampMicros::parse_rfc3339("0000-01-01T00:00:00+01:00"),
            Err(TimeParseError::OutOfRange { .. })
        ));
    }

    #[test]
    fn range_ends_round_trip() {
        for t in [TimestampMicros::RFC3339_MIN, TimestampMicros::RFC3339_MAX] {
            let text = t.to_rfc3339();
            assert_eq!(TimestampMicros::parse_rfc3339(&text).unwrap(), t, "{text}");
        }
        assert_eq!(
            TimestampMicros::RFC3339_MIN.to_rfc3339(),
            "0000-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            TimestampMicros::RFC3339_MAX.to_rfc3339(),
            "9999-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn to_datetime_saturates_instead_of_panicking() {
        assert_eq!(
            TimestampMicros(i64::MAX).to_datetime(),
            DateTime::<Utc>::MAX_UTC
        );
        assert_eq!(
            TimestampMicros(i64::MIN).to_datetime(),
            DateTime::<Utc>::MIN_UTC
        );
    }

    #[test]
    fn serializes_as_a_bare_integer() {
        assert_eq!(serde_json::to_string(&TimestampMicros(42)).unwrap(), "42");
        assert_eq!(
            serde_json::from_str::<TimestampMicros>("-7").unwrap(),
            TimestampMicros(-7)
        );
    }
}
