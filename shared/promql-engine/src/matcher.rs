//! Label matchers (`=`, `!=`, `=~`, `!~`) and the selectors of `match[]` parameters.

use std::fmt;

use promql_parser::label::{MatchOp as ParserOp, Matcher as ParserMatcher};
use promql_parser::parser::Expr;
use regex::Regex;

use crate::error::QueryError;
use crate::labels::{Labels, METRIC_NAME};

/// How a matcher compares a label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~` (fully anchored regular expression)
    Regex,
    /// `!~`
    NotRegex,
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// One label matcher. A missing label matches as the empty string, as in Prometheus.
#[derive(Clone, Debug)]
pub struct LabelMatcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    /// The anchored expression of `=~` / `!~`.
    regex: Option<Regex>,
}

impl LabelMatcher {
    /// A matcher; a regular expression is anchored at both ends (`^(?:value)$`) and, as in
    /// Prometheus 3, `.` also matches a newline.
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Self, QueryError> {
        let regex = match op {
            MatchOp::Equal | MatchOp::NotEqual => None,
            MatchOp::Regex | MatchOp::NotRegex => Some(anchored_regex(value)?),
        };
        Ok(LabelMatcher {
            name: name.to_string(),
            op,
            value: value.to_string(),
            regex,
        })
    }

    /// Whether a label value (`""` for a missing label) satisfies the matcher.
    pub fn matches(&self, value: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => self.value == value,
            (MatchOp::NotEqual, _) => self.value != value,
            (MatchOp::Regex, Some(re)) => re.is_match(value),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(value),
            (MatchOp::Regex | MatchOp::NotRegex, None) => false,
        }
    }

    /// The matcher of the parser's AST. The parser has already checked (and where Go accepts a
    /// literal `{`, escaped) the expression; its anchored text is reused.
    pub(crate) fn from_parser(m: &ParserMatcher) -> Result<Self, QueryError> {
        let (op, regex) = match &m.op {
            ParserOp::Equal => (MatchOp::Equal, None),
            ParserOp::NotEqual => (MatchOp::NotEqual, None),
            ParserOp::Re(re) => (MatchOp::Regex, Some(dot_matches_newline(re.as_str())?)),
            ParserOp::NotRe(re) => (MatchOp::NotRegex, Some(dot_matches_newline(re.as_str())?)),
        };
        Ok(LabelMatcher {
            name: m.name.clone(),
            op,
            value: m.value.clone(),
            regex,
        })
    }
}

impl PartialEq for LabelMatcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl Eq for LabelMatcher {}

impl fmt::Display for LabelMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.as_str(), self.value)
    }
}

fn anchored_regex(value: &str) -> Result<Regex, QueryError> {
    dot_matches_newline(&format!("^(?:{value})$"))
        .map_err(|_| QueryError::Parse(format!("invalid regular expression {value:?}")))
}

fn dot_matches_newline(anchored: &str) -> Result<Regex, QueryError> {
    Regex::new(&format!("(?s:{anchored})"))
        .map_err(|e| QueryError::Parse(format!("invalid regular expression: {e}")))
}

/// The matchers of one selector, all of which a series must satisfy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matchers(pub Vec<LabelMatcher>);

impl Matchers {
    /// Whether a series with these labels is selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0
            .iter()
            .all(|m| m.matches(labels.value_or_empty(&m.name)))
    }

    /// The metric name when the selector names exactly one (`__name__="x"`, which `x{...}` means).
    pub fn metric_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|m| m.name == METRIC_NAME && m.op == MatchOp::Equal)
            .map(|m| m.value.as_str())
    }

    /// The equality matchers (`name="value"`), which a label index can answer directly.
    pub fn equalities(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .filter(|m| m.op == MatchOp::Equal)
            .map(|m| (m.name.as_str(), m.value.as_str()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &LabelMatcher> {
        self.0.iter()
    }
}

impl fmt::Display for Matchers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{")?;
        for (i, m) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{m}")?;
        }
        write!(f, "}}")
    }
}

/// The matchers of a selector as the parser gives it: the metric name (if written before the
/// braces) becomes a `__name__` matcher.
pub(crate) fn selector_matchers(
    name: Option<&str>,
    matchers: &promql_parser::label::Matchers,
) -> Result<Matchers, QueryError> {
    if !matchers.or_matchers.is_empty() {
        return Err(QueryError::Unsupported(
            "`or` inside a selector's braces".to_string(),
        ));
    }
    let mut out = Vec::with_capacity(matchers.matchers.len() + 1);
    if let Some(name) = name {
        out.push(LabelMatcher::new(METRIC_NAME, MatchOp::Equal, name)?);
    }
    for m in &matchers.matchers {
        out.push(LabelMatcher::from_parser(m)?);
    }
    Ok(Matchers(out))
}

/// Parses a series selector as the metadata endpoints take it in `match[]`
/// (`DCGM_FI_DEV_FB_FREE{Hostname=~"h.*"}`, `{gpu="0"}`): a bare vector selector, no offset or
/// `@`, with at least one matcher that does not match the empty string.
pub fn parse_series_selector(selector: &str) -> Result<Matchers, QueryError> {
    let expr = promql_parser::parser::parse(selector).map_err(QueryError::Parse)?;
    match expr {
        Expr::VectorSelector(vs) if vs.offset.is_none() && vs.at.is_none() => {
            let matchers = selector_matchers(vs.name.as_deref(), &vs.matchers)?;
            if matchers.0.iter().all(|m| m.matches("")) {
                return Err(QueryError::InvalidParameter(
                    "match[] must contain at least one non-empty matcher".to_string(),
                ));
            }
            Ok(matchers)
        }
        _ => Err(QueryError::InvalidParameter(format!(
            "{selector:?} is not a series selector (a metric name and/or label matchers in braces)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels {
        Labels::new([
            (METRIC_NAME, "DCGM_FI_DEV_GPU_TEMP"),
            ("Hostname", "host-7"),
            ("gpu", "3"),
        ])
    }

    #[test]
    fn each_operator_matches_and_missing_labels_are_empty() {
        let m = |name: &str, op, value: &str| LabelMatcher::new(name, op, value).unwrap();
        let l = labels();
        assert!(Matchers(vec![m("gpu", MatchOp::Equal, "3")]).matches(&l));
        assert!(!Matchers(vec![m("gpu", MatchOp::NotEqual, "3")]).matches(&l));
        assert!(Matchers(vec![m("Hostname", MatchOp::Regex, "host-.")]).matches(&l));
        // Anchored: a partial match is no match.
        assert!(!Matchers(vec![m("Hostname", MatchOp::Regex, "host")]).matches(&l));
        assert!(Matchers(vec![m("Hostname", MatchOp::NotRegex, "host")]).matches(&l));
        assert!(Matchers(vec![m("pod", MatchOp::Equal, "")]).matches(&l));
        assert!(!Matchers(vec![m("pod", MatchOp::NotEqual, "")]).matches(&l));
        assert!(Matchers(vec![m("pod", MatchOp::Regex, ".*")]).matches(&l));
        assert!(m("x", MatchOp::Regex, "a.b").matches("a\nb"));
    }

    #[test]
    fn match_selector_parses_name_and_matchers() {
        let matchers =
            parse_series_selector(r#"DCGM_FI_DEV_FB_FREE{Hostname=~"host-.*", gpu!="1"}"#).unwrap();
        assert_eq!(matchers.metric_name(), Some("DCGM_FI_DEV_FB_FREE"));
        assert_eq!(
            matchers.to_string(),
            r#"{__name__="DCGM_FI_DEV_FB_FREE", Hostname=~"host-.*", gpu!="1"}"#
        );
        assert!(matchers.matches(&Labels::new([
            (METRIC_NAME, "DCGM_FI_DEV_FB_FREE"),
            ("Hostname", "host-1"),
            ("gpu", "0"),
        ])));
        assert_eq!(
            matchers.equalities().collect::<Vec<_>>(),
            [(METRIC_NAME, "DCGM_FI_DEV_FB_FREE")]
        );
    }

    #[test]
    fn match_selector_rejects_expressions_and_empty_matchers() {
        for bad in [
            "rate(x[5m])",
            "x offset 5m",
            "x[5m]",
            "1",
            r#"{gpu=~".*"}"#,
            "x{",
        ] {
            let err = parse_series_selector(bad).unwrap_err();
            assert_eq!(err.error_type().as_str(), "bad_data", "{bad}: {err}");
        }
    }
}
