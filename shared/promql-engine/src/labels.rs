//! Label sets: sorted, unique names, no empty values (Prometheus treats an empty value as absent).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// The label that names a series' metric.
pub const METRIC_NAME: &str = "__name__";

/// A series' labels, sorted by name (bytewise, as Prometheus sorts them, so `__name__` comes after
/// upper-case names and before lower-case ones). Names are unique and values never empty. Ordered
/// and compared pair by pair, like Prometheus' `labels.Compare`. The set's hash is computed once,
/// when it is built: evaluation hashes the same sets at every step.
#[derive(Clone, Debug)]
pub struct Labels {
    pairs: Vec<(String, String)>,
    hash: u64,
}

impl Default for Labels {
    fn default() -> Self {
        Labels::from_sorted(Vec::new())
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.pairs == other.pairs
    }
}

impl Eq for Labels {}

impl Hash for Labels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Labels {
    fn cmp(&self, other: &Self) -> Ordering {
        self.pairs.cmp(&other.pairs)
    }
}

impl Labels {
    /// Builds a label set from pairs in any order. Pairs with an empty value are dropped; of two
    /// pairs with one name, the later wins.
    pub fn new<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Self
    where
        N: Into<String>,
        V: Into<String>,
    {
        let mut labels: Vec<(String, String)> = Vec::new();
        for (name, value) in pairs {
            let (name, value) = (name.into(), value.into());
            labels.retain(|(n, _)| *n != name);
            if !value.is_empty() {
                labels.push((name, value));
            }
        }
        labels.sort();
        Labels::from_sorted(labels)
    }

    /// Pairs already sorted by name, names unique, values not empty.
    fn from_sorted(pairs: Vec<(String, String)>) -> Self {
        let mut hash: u64 = 0;
        for (name, value) in &pairs {
            hash = hash_str(hash_str(hash, name), value);
        }
        Labels { pairs, hash }
    }

    /// The value of `name`, if the set has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| self.pairs[i].1.as_str())
    }

    /// The value of `name`, or `""` when absent (how Prometheus matches a missing label).
    pub fn value_or_empty(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }

    /// The metric name (`__name__`), if any.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    /// The pairs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The same set without `__name__`.
    pub fn without_metric_name(&self) -> Labels {
        self.without(&[METRIC_NAME])
    }

    /// The same set without the given names.
    pub fn without<S: AsRef<str>>(&self, names: &[S]) -> Labels {
        Labels::from_sorted(
            self.pairs
                .iter()
                .filter(|(n, _)| !names.iter().any(|x| x.as_ref() == n))
                .cloned()
                .collect(),
        )
    }

    /// Only the given names (those the set has).
    pub fn keep<S: AsRef<str>>(&self, names: &[S]) -> Labels {
        Labels::from_sorted(
            self.pairs
                .iter()
                .filter(|(n, _)| names.iter().any(|x| x.as_ref() == n))
                .cloned()
                .collect(),
        )
    }

    /// The same set with `name` set to `value` (removed when `value` is empty).
    pub fn with(&self, name: &str, value: &str) -> Labels {
        let mut labels = self.pairs.clone();
        match labels.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) if value.is_empty() => {
                labels.remove(i);
            }
            Ok(i) => labels[i].1 = value.to_string(),
            Err(_) if value.is_empty() => {}
            Err(i) => labels.insert(i, (name.to_string(), value.to_string())),
        }
        Labels::from_sorted(labels)
    }

    /// The set as a JSON object (`{"name":"value",...}`, names in order), as Prometheus writes a
    /// series' `metric`.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    pub(crate) fn write_json(&self, out: &mut String) {
        out.push('{');
        for (i, (name, value)) in self.pairs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_json_string(out, name);
            out.push(':');
            write_json_string(out, value);
        }
        out.push('}');
    }
}

/// Prometheus' text form: `name{a="x", b="y"}`.
impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = self.metric_name() {
            write!(f, "{name}")?;
            if self.len() == 1 {
                return Ok(());
            }
        }
        write!(f, "{{")?;
        let mut first = true;
        for (name, value) in self.iter().filter(|(n, _)| *n != METRIC_NAME) {
            if !first {
                write!(f, ", ")?;
            }
            first = false;
            write!(f, "{name}={value:?}")?;
        }
        write!(f, "}}")
    }
}

/// Mixes `s` into `hash` eight bytes at a time (FxHash's multiply-rotate step, then the length so
/// that `("ab", "c")` and `("a", "bc")` differ). Not for untrusted collisions: equality still
/// compares the pairs.
fn hash_str(mut hash: u64, s: &str) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mix = |h: u64, word: u64| (h.rotate_left(5) ^ word).wrapping_mul(K);
    let mut chunks = s.as_bytes().chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        hash = mix(hash, u64::from_le_bytes(word));
    }
    let rest = chunks.remainder();
    let mut word = [0u8; 8];
    word[..rest.len()].copy_from_slice(rest);
    hash = mix(hash, u64::from_le_bytes(word));
    mix(hash, s.len() as u64)
}

/// Appends `s` as a JSON string literal.
pub(crate) fn write_json_string(out: &mut String, s: &str) {
    // serde_json escapes exactly what JSON requires; a string always serializes.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// Whether `name` is a valid label name in Prometheus' classic charset (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub(crate) fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_bytewise_and_drop_empty_values() {
        let labels = Labels::new([
            ("gpu", "0"),
            (METRIC_NAME, "DCGM_FI_DEV_GPU_TEMP"),
            ("Hostname", "h1"),
            ("pod", ""),
            ("UUID", "GPU-1"),
        ]);
        let names: Vec<&str> = labels.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["Hostname", "UUID", "__name__", "gpu"]);
        assert_eq!(labels.get("pod"), None);
        assert_eq!(labels.value_or_empty("pod"), "");
        assert_eq!(labels.metric_name(), Some("DCGM_FI_DEV_GPU_TEMP"));
    }

    #[test]
    fn later_pair_wins_and_edits_keep_order() {
        let labels = Labels::new([("a", "1"), ("a", "2"), ("c", "3")]);
        assert_eq!(labels, Labels::new([("a", "2"), ("c", "3")]));
        assert_eq!(
            labels.with("b", "x"),
            Labels::new([("a", "2"), ("b", "x"), ("c", "3")])
        );
        assert_eq!(labels.with("a", ""), Labels::new([("c", "3")]));
        assert_eq!(labels.keep(&["c", "z"]), Labels::new([("c", "3")]));
        assert_eq!(labels.without(&["c"]), Labels::new([("a", "2")]));
    }

    #[test]
    fn order_is_pairwise_then_by_length() {
        let a = Labels::new([("a", "1")]);
        let ab = Labels::new([("a", "1"), ("b", "1")]);
        let a2 = Labels::new([("a", "2")]);
        assert!(a < ab && ab < a2);
    }

    #[test]
    fn json_and_text_forms() {
        let labels = Labels::new([(METRIC_NAME, "up"), ("job", "a\"b")]);
        assert_eq!(labels.to_json(), r#"{"__name__":"up","job":"a\"b"}"#);
        assert_eq!(labels.to_string(), r#"up{job="a\"b"}"#);
        assert_eq!(Labels::default().to_json(), "{}");
        assert_eq!(Labels::default().to_string(), "{}");
        assert_eq!(Labels::new([(METRIC_NAME, "up")]).to_string(), "up");
    }

    #[test]
    fn label_name_charset() {
        assert!(is_valid_label_name("_a1"));
        assert!(is_valid_label_name("GPU_I_ID"));
        assert!(!is_valid_label_name("1a"));
        assert!(!is_valid_label_name("a-b"));
        assert!(!is_valid_label_name(""));
    }
}
