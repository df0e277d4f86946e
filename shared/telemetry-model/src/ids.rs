//! Validated identifiers: GPU UUIDs and metric names.
//!
//! Both end up inside etcd keys and URL paths, so their alphabets are closed: a value that passed
//! `parse` can never contain `/`, `..`, NUL, `%` or whitespace and cannot escape a key prefix.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    /// The string was empty.
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    /// The string is longer than the identifier allows.
    #[error("{kind} is {len} bytes long, at most {max} are allowed")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    /// The string holds a character outside the identifier's alphabet.
    #[error("{kind} contains {ch:?} at position {position}, which is not allowed")]
    BadChar {
        kind: &'static str,
        ch: char,
        position: usize,
    },
}

/// Checks length and alphabet; `allowed(position, byte)` decides per ASCII byte.
fn validate(
    kind: &'static str,
    s: &str,
    max: usize,
    allowed: impl Fn(usize, u8) -> bool,
) -> Result<(), InvalidId> {
    if s.is_empty() {
        return Err(InvalidId::Empty { kind });
    }
    // The alphabet check runs first so that a long string with a bad character reports the
    // character, which is the more useful diagnosis for ids arriving through an API.
    for (position, ch) in s.char_indices() {
        let ok = ch.is_ascii() && allowed(position, ch as u8);
        if !ok {
            return Err(InvalidId::BadChar { kind, ch, position });
        }
    }
    if s.len() > max {
        return Err(InvalidId::TooLong {
            kind,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

/// A GPU's UUID as DCGM reports it (e.g. `GPU-5fd4f087-86f3-7a43-b711-4771313afc50`).
///
/// The GPU's identity: `gpu_id` repeats on every host, the UUID does not.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GpuUuid(String);

impl GpuUuid {
    /// Longest accepted UUID in bytes.
    pub const MAX_LEN: usize = 64;
    const KIND: &'static str = "GPU UUID";

    /// Accepts 1..=64 characters from `[A-Za-z0-9_-]`.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        validate(Self::KIND, s, Self::MAX_LEN, |_, b| {
            b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
        })?;
        Ok(Self(s.to_owned()))
    }

    /// The UUID text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The UUID text, by value.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// A metric name following the Prometheus metric-name alphabet (e.g. `DCGM_FI_DEV_GPU_UTIL`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetricName(String);

impl MetricName {
    /// Longest accepted metric name in bytes.
    pub const MAX_LEN: usize = 128;
    const KIND: &'static str = "metric name";

    /// Accepts `[A-Za-z_:][A-Za-z0-9_:]*`, 1..=128 characters.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        validate(Self::KIND, s, Self::MAX_LEN, |position, b| {
            b.is_ascii_alphabetic()
                || b == b'_'
                || b == b':'
                || (position > 0 && b.is_ascii_digit())
        })?;
        Ok(Self(s.to_owned()))
    }

    /// The metric name text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The metric name text, by value.
    pub fn into_string(self) -> String {
        self.0
    }
}

macro_rules! string_id_impls {
    ($ty:ident) => {
        impl FromStr for $ty {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = InvalidId;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        // Deserializing validates, so an id read from the queue or an API is as safe as a parsed one.
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct IdVisitor;
                impl serde::de::Visitor<'_> for IdVisitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "a {}", $ty::KIND)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        $ty::parse(v).map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(IdVisitor)
            }
        }
    };
}

string_id_impls!(GpuUuid);
string_id_impls!(MetricName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_uuids_are_accepted() {
        for s in [
            "GPU-5fd4f087-86f3-7a43-b711-4771313afc50",
            "GPU-bc7a12ab-4998-fdc5-0785-2678a929a142",
            "MIG-GPU-5fd4f087_1",
        ] {
            let id = GpuUuid::parse(s).unwrap();
            assert_eq!(id.as_str(), s);
            assert_eq!(id.to_string(), s);
            assert_eq!(s.parse::<GpuUuid>().unwrap(), id);
        }
    }

    #[test]
    fn hostile_uuids_are_rejected_with_the_reason() {
        let kind = "GPU UUID";
        assert_eq!(GpuUuid::parse(""), Err(InvalidId::Empty { kind }));
        assert_eq!(
            GpuUuid::parse("../x"),
            Err(InvalidId::BadChar {
                kind,
                ch: '.',
                position: 0
            })
        );
        assert_eq!(
            GpuUuid::parse("a/b"),
            Err(InvalidId::BadChar {
                kind,
                ch: '/',
                position: 1
            })
        );
        assert_eq!(
            GpuUuid::parse("GPU-\0"),
            Err(InvalidId::BadChar {
                kind,
                ch: '\0',
                position: 4
            })
        );
        assert_eq!(
            GpuUuid::parse("%2e%2e"),
            Err(InvalidId::BadChar {
                kind,
                ch: '%',
                position: 0
            })
        );
        assert_eq!(
            GpuUuid::parse("GPU 1"),
            Err(InvalidId::BadChar {
                kind,
                ch: ' ',
                position: 3
            })
        );
        assert_eq!(
            GpuUuid::parse("GPU-é"),
            Err(InvalidId::BadChar {
                kind,
                ch: 'é',
                position: 4
            })
        );
        assert_eq!(
            GpuUuid::parse(&"a".repeat(200)),
            Err(InvalidId::TooLong {
                kind,
                len: 200,
                max: 64
            })
        );
        assert!(GpuUuid::parse(&"a".repeat(64)).is_ok());
        assert!(GpuUuid::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn error_messages_name_the_kind_and_character() {
        assert_eq!(
            GpuUuid::parse("a/b").unwrap_err().to_string(),
            "GPU UUID contains '/' at position 1, which is not allowed"
        );
        assert_eq!(
            MetricName::parse("").unwrap_err().to_string(),
            "metric name is empty"
        );
    }

    #[test]
    fn metric_names_follow_the_prometheus_alphabet() {
        for s in ["DCGM_FI_DEV_GPU_UTIL", "_x", "a:b_1", ":x"] {
            assert_eq!(MetricName::parse(s).unwrap().as_str(), s);
        }
        let kind = "metric name";
        assert_eq!(
            MetricName::parse("1abc"),
            Err(InvalidId::BadChar {
                kind,
                ch: '1',
                position: 0
            })
        );
        assert_eq!(
            MetricName::parse("a-b"),
            Err(InvalidId::BadChar {
                kind,
                ch: '-',
                position: 1
            })
        );
        assert_eq!(
            MetricName::parse(&"m".repeat(129)),
            Err(InvalidId::TooLong {
                kind,
                len: 129,
                max: 128
            })
        );
        assert!(MetricName::parse(&"m".repeat(128)).is_ok());
    }

    #[test]
    fn serde_uses_plain_strings_and_validates_on_the_way_in() {
        let id = GpuUuid::parse("GPU-1").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"GPU-1\"");
        assert_eq!(serde_json::from_str::<GpuUuid>("\"GPU-1\"").unwrap(), id);
        let err = serde_json::from_str::<GpuUuid>("\"../etc\"").unwrap_err();
        assert!(err.to_string().contains("GPU UUID contains '.'"), "{err}");
        assert!(serde_json::from_str::<MetricName>("\"a b\"").is_err());
        assert!(serde_json::from_str::<GpuUuid>("12").is_err());
    }
}
