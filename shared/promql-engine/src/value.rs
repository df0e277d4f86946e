//! Query results in Prometheus' data model, and their JSON exactly as Prometheus writes it.

use crate::labels::{write_json_string, Labels};
use crate::source::Point;

/// One element of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct InstantSample {
    pub labels: Labels,
    pub t_ms: i64,
    pub value: f64,
}

/// One series of a range vector (matrix).
#[derive(Clone, Debug, PartialEq)]
pub struct RangeSeries {
    pub labels: Labels,
    pub points: Vec<Point>,
}

/// A query result.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Scalar { t_ms: i64, value: f64 },
    String { t_ms: i64, value: String },
    Vector(Vec<InstantSample>),
    Matrix(Vec<RangeSeries>),
}

impl Value {
    /// Prometheus' `resultType`.
    pub fn result_type(&self) -> &'static str {
        match self {
            Value::Scalar { .. } => "scalar",
            Value::String { .. } => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }

    /// The `data` object of a query response: `{"resultType":..,"result":..}`, byte for byte as
    /// Prometheus writes it (sample values as strings, see [`format_value`]; vector and matrix
    /// timestamps as [`format_sample_time`], scalar and string ones as [`format_scalar_time`]).
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(64);
        out.push_str("{\"resultType\":\"");
        out.push_str(self.result_type());
        out.push_str("\",\"result\":");
        match self {
            Value::Scalar { t_ms, value } => {
                out.push('[');
                out.push_str(&format_scalar_time(*t_ms));
                out.push_str(",\"");
                out.push_str(&format_value(*value));
                out.push_str("\"]");
            }
            Value::String { t_ms, value } => {
                out.push('[');
                out.push_str(&format_scalar_time(*t_ms));
                out.push(',');
                write_json_string(&mut out, value);
                out.push(']');
            }
            Value::Vector(samples) => {
                out.push('[');
                for (i, s) in samples.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str("{\"metric\":");
                    s.labels.write_json(&mut out);
                    out.push_str(",\"value\":");
                    write_point(&mut out, s.t_ms, s.value);
                    out.push('}');
                }
                out.push(']');
            }
            Value::Matrix(series) => {
                out.push('[');
                for (i, s) in series.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str("{\"metric\":");
                    s.labels.write_json(&mut out);
                    out.push_str(",\"values\":[");
                    for (j, p) in s.points.iter().enumerate() {
                        if j > 0 {
                            out.push(',');
                        }
                        write_point(&mut out, p.t_ms, p.value);
                    }
                    out.push_str("]}");
                }
                out.push(']');
            }
        }
        out.push('}');
        out
    }
}

fn write_point(out: &mut String, t_ms: i64, value: f64) {
    out.push('[');
    out.push_str(&format_sample_time(t_ms));
    out.push_str(",\"");
    out.push_str(&format_value(value));
    out.push_str("\"]");
}

/// A sample value as Prometheus writes it (Go's `strconv.FormatFloat(v, 'f', -1, 64)`: the
/// shortest decimal that reads back as the same float, never an exponent), with `NaN`, `+Inf`
/// and `-Inf` for the special values.
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        // Rust's Display is the shortest round-trip decimal without exponent, as Go's 'f', -1.
        value.to_string()
    }
}

/// A vector or matrix sample's timestamp as Prometheus writes it: Unix seconds, then (when the
/// milliseconds are not zero) a point and exactly three digits: `1700000000`, `1700000000.120`.
pub fn format_sample_time(t_ms: i64) -> String {
    let sign = if t_ms < 0 { "-" } else { "" };
    let abs = t_ms.unsigned_abs();
    let (secs, millis) = (abs / 1000, abs % 1000);
    if millis == 0 {
        format!("{sign}{secs}")
    } else {
        format!("{sign}{secs}.{millis:03}")
    }
}

/// A scalar or string result's timestamp as Prometheus writes it: the seconds as the shortest
/// decimal float (`1700000000.12`, `1.5`).
pub fn format_scalar_time(t_ms: i64) -> String {
    (t_ms as f64 / 1000.0).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_format_like_go_strconv_f_minus_one() {
        // Expected strings as Prometheus 2.42 answers `1.5`, `1/0`, `0/0`, `1e21`, ...
        let cases = [
            (1.5, "1.5"),
            (1.0, "1"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
            (1e21, "1000000000000000000000"),
            (1e-7, "0.0000001"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-0.0, "-0"),
            (1980000000.0, "1980000000"),
        ];
        for (value, text) in cases {
            assert_eq!(format_value(value), text);
        }
    }

    #[test]
    fn timestamps_format_like_prometheus() {
        assert_eq!(format_sample_time(1_700_000_000_120), "1700000000.120");
        assert_eq!(format_sample_time(1_700_000_000_000), "1700000000");
        assert_eq!(format_sample_time(1_050), "1.050");
        assert_eq!(format_sample_time(-50), "-0.050");
        assert_eq!(format_sample_time(-1_050), "-1.050");
        assert_eq!(format_scalar_time(1_700_000_000_120), "1700000000.12");
        assert_eq!(format_scalar_time(1_005), "1.005");
        assert_eq!(format_scalar_time(1_700_000_000_000), "1700000000");
        assert_eq!(format_scalar_time(-1_500), "-1.5");
    }

    #[test]
    fn json_matches_prometheus_bytes() {
        // Each expected document is what Prometheus 2.42 answered for the same result.
        assert_eq!(
            Value::Scalar {
                t_ms: 1500,
                value: f64::INFINITY
            }
            .to_json(),
            r#"{"resultType":"scalar","result":[1.5,"+Inf"]}"#
        );
        assert_eq!(
            Value::String {
                t_ms: 1_700_000_000_120,
                value: "str".into()
            }
            .to_json(),
            r#"{"resultType":"string","result":[1700000000.12,"str"]}"#
        );
        assert_eq!(
            Value::Vector(vec![InstantSample {
                labels: Labels::default(),
                t_ms: 1_700_000_000_120,
                value: 1.0
            }])
            .to_json(),
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1700000000.120,"1"]}]}"#
        );
        assert_eq!(
            Value::Matrix(vec![RangeSeries {
                labels: Labels::default(),
                points: vec![Point::new(1050, 1.05), Point::new(2050, 2.05)]
            }])
            .to_json(),
            r#"{"resultType":"matrix","result":[{"metric":{},"values":[[1.050,"1.05"],[2.050,"2.05"]]}]}"#
        );
        assert_eq!(
            Value::Vector(vec![]).to_json(),
            r#"{"resultType":"vector","result":[]}"#
        );
    }
}
