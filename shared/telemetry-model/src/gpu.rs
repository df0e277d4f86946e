//! GPU metadata (`GpuInfo`) and the parser for Prometheus-style label strings (`labels_raw`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::ids::GpuUuid;

/// What is known about one GPU. Empty strings are stored as `None`. Ordered field by field, so
/// two different descriptions of one GPU can be chosen between without regard to arrival order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GpuInfo {
    pub uuid: GpuUuid,
    /// DCGM's `gpu_id`: the GPU's index on its host, repeated on every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_index: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub device: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub model_name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub hostname: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub container: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub pod: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub namespace: Option<String>,
    /// Exporter labels not already held by a field above.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl GpuInfo {
    /// A GPU known only by its UUID.
    pub fn new(uuid: GpuUuid) -> Self {
        Self {
            uuid,
            gpu_index: None,
            device: None,
            model_name: None,
            hostname: None,
            container: None,
            pod: None,
            namespace: None,
            labels: BTreeMap::new(),
        }
    }
}

/// `Some("")` becomes `None`, so "absent" has exactly one representation.
pub(crate) fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn empty_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(non_empty(Option::<String>::deserialize(d)?))
}

/// Why a label string could not be parsed. Positions are byte offsets into the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelsError {
    #[error("expected a label name at byte {position}")]
    ParseName { position: usize },
    #[error("label name {name:?} is not [A-Za-z_][A-Za-z0-9_]*")]
    ValidateName { name: String },
    #[error("expected '=' after label {name:?} at byte {position}")]
    ParseEquals { name: String, position: usize },
    #[error("value of label {name:?} has no closing quote")]
    ParseValue { name: String },
    #[error("expected ',' or end after label {name:?} at byte {position}")]
    ParseSeparator { name: String, position: usize },
    #[error("label {name:?} appears twice")]
    DuplicateName { name: String },
}

/// Parses `k="v",k2="v2"` as Prometheus writes it (optionally inside `{...}`, with spaces after
/// commas and `\"`, `\\`, `\n` escapes).
///
/// Also accepts values wrapped in doubled quotes (`k=""v""`), which is how a label string looks
/// when a CSV writer's quote doubling survives into the field, and bare values up to the next comma.
pub fn parse_labels(raw: &str) -> Result<BTreeMap<String, String>, LabelsError> {
    let mut parser = LabelParser {
        s: raw.as_bytes(),
        raw,
        pos: 0,
    };
    parser.skip_ws();
    let braced = parser.eat(b'{');
    let mut labels = BTreeMap::new();
    loop {
        parser.skip_ws();
        if parser.at_end() || (braced && parser.peek() == Some(b'}')) {
            break;
        }
        let name = parser.name()?;
        parser.skip_ws();
        if !parser.eat(b'=') {
            return Err(LabelsError::ParseEquals {
                name: name.to_owned(),
                position: parser.pos,
            });
        }
        parser.skip_ws();
        let value = parser.value(name, braced)?;
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(LabelsError::DuplicateName {
                name: name.to_owned(),
            });
        }
        parser.skip_ws();
        if parser.eat(b',') {
            continue;
        }
        if parser.at_end() || (braced && parser.peek() == Some(b'}')) {
            break;
        }
        return Err(LabelsError::ParseSeparator {
            name: name.to_owned(),
            position: parser.pos,
        });
    }
    if braced {
        if !parser.eat(b'}') {
            return Err(LabelsError::ParseSeparator {
                name: labels.keys().last().cloned().unwrap_or_default(),
                position: parser.pos,
            });
        }
        parser.skip_ws();
        if !parser.at_end() {
            return Err(LabelsError::ParseSeparator {
                name: labels.keys().last().cloned().unwrap_or_default(),
                position: parser.pos,
            });
        }
    }
    Ok(labels)
}

struct LabelParser<'a> {
    s: &'a [u8],
    raw: &'a str,
    pos: usize,
}

impl<'a> LabelParser<'a> {
    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn name(&mut self) -> Result<&'a str, LabelsError> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if matches!(b, b'=' | b',' | b' ' | b'\t' | b'"' | b'{' | b'}') {
                break;
            }
            self.pos += 1;
        }
        if start == self.pos {
            return Err(LabelsError::ParseName { position: start });
        }
        // Slicing at ASCII delimiters always lands on char boundaries.
        let name = &self.raw[start..self.pos];
        let mut bytes = name.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(LabelsError::ValidateName {
                name: name.to_owned(),
            });
        }
        Ok(name)
    }

    fn value(&mut self, name: &str, braced: bool) -> Result<String, LabelsError> {
        if self.s[self.pos..].starts_with(b"\"\"") {
            // `""v""`: doubled quotes around the value; an empty value `""` followed by a
            // separator is the plain empty string.
            let after = self.s.get(self.pos + 2).copied();
            if after.is_none() || after == Some(b',') || (braced && after == Some(b'}')) {
                self.pos += 2;
                return Ok(String::new());
            }
            self.pos += 2;
            return self.quoted_until(name, b"\"\"");
        }
        if self.eat(b'"') {
            return self.quoted_until(name, b"\"");
        }
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b == b',' || (braced && b == b'}') {
                break;
            }
            self.pos += 1;
        }
        Ok(self.raw[start..self.pos].trim_end().to_owned())
    }

    /// Reads an escaped value up to `close`, consuming it.
    fn quoted_until(&mut self, name: &str, close: &[u8]) -> Result<String, LabelsError> {
        let mut out = String::new();
        let mut run_start = self.pos;
        loop {
            let Some(b) = self.peek() else {
                return Err(LabelsError::ParseValue {
                    name: name.to_owned(),
                });
            };
            if self.s[self.pos..].starts_with(close) {
                out.push_str(&self.raw[run_start..self.pos]);
                self.pos += close.len();
                return Ok(out);
            }
            if b == b'\\' {
                out.push_str(&self.raw[run_start..self.pos]);
                match self.s.get(self.pos + 1) {
                    Some(b'"') => out.push('"'),
                    Some(b'\\') => out.push('\\'),
                    Some(b'n') => out.push('\n'),
                    // Unknown escapes are kept verbatim, as Prometheus does.
                    Some(_) | None => {
                        self.pos += 1;
                        run_start = self.pos - 1;
                        continue;
                    }
                }
                self.pos += 2;
                run_start = self.pos;
                continue;
            }
            self.pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_the_real_csv_labels() {
        let raw = r#"DCGM_FI_DRIVER_VERSION="535.129.03",Hostname="mtv5-dgx1-hgpu-031",UUID="GPU-5fd4f087-86f3-7a43-b711-4771313afc50",__name__="DCGM_FI_DEV_GPU_UTIL",device="nvidia0",gpu="0",instance="mtv5-dgx1-hgpu-031:9400",job="dgx_dcgm_exporter",modelName="NVIDIA H100 80GB HBM3""#;
        let labels = parse_labels(raw).unwrap();
        assert_eq!(
            labels,
            map(&[
                ("DCGM_FI_DRIVER_VERSION", "535.129.03"),
                ("Hostname", "mtv5-dgx1-hgpu-031"),
                ("UUID", "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"),
                ("__name__", "DCGM_FI_DEV_GPU_UTIL"),
                ("device", "nvidia0"),
                ("gpu", "0"),
                ("instance", "mtv5-dgx1-hgpu-031:9400"),
                ("job", "dgx_dcgm_exporter"),
                ("modelName", "NVIDIA H100 80GB HBM3"),
            ])
        );
    }

    #[test]
    fn parses_exporter_braces_spaces_and_empty_values() {
        let raw = r#"{gpu="0", UUID="GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52",container="",namespace="",pod=""}"#;
        assert_eq!(
            parse_labels(raw).unwrap(),
            map(&[
                ("gpu", "0"),
                ("UUID", "GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52"),
                ("container", ""),
                ("namespace", ""),
                ("pod", ""),
            ])
        );
    }

    #[test]
    fn unescapes_quotes_backslashes_and_newlines() {
        let raw = r#"a="say \"hi\"",b="C:\\dir",c="x\ny",d="keep \q""#;
        assert_eq!(
            parse_labels(raw).unwrap(),
            map(&[
                ("a", "say \"hi\""),
                ("b", "C:\\dir"),
                ("c", "x\ny"),
                ("d", "keep \\q"),
            ])
        );
        assert_eq!(parse_labels(r#"a="é,ü""#).unwrap(), map(&[("a", "é,ü")]));
    }

    #[test]
    fn tolerates_doubled_quotes_and_bare_values() {
        let raw = r#"DCGM_FI_DRIVER_VERSION=""535.129.03"",gpu=""0"",empty="""#;
        assert_eq!(
            parse_labels(raw).unwrap(),
            map(&[
                ("DCGM_FI_DRIVER_VERSION", "535.129.03"),
                ("gpu", "0"),
                ("empty", ""),
            ])
        );
        assert_eq!(
            parse_labels("gpu=0, job=dcgm").unwrap(),
            map(&[("gpu", "0"), ("job", "dcgm")])
        );
    }

    #[test]
    fn empty_input_is_no_labels() {
        assert_eq!(parse_labels("").unwrap(), BTreeMap::new());
        assert_eq!(parse_labels("  {} ").unwrap(), BTreeMap::new());
        assert_eq!(parse_labels("a=\"1\",").unwrap(), map(&[("a", "1")]));
    }

    #[test]
    fn reports_malformed_labels() {
        assert_eq!(
            parse_labels(r#"a="1",="2""#),
            Err(LabelsError::ParseName { position: 6 })
        );
        assert_eq!(
            parse_labels(r#"a"1""#),
            Err(LabelsError::ParseEquals {
                name: "a".into(),
                position: 1
            })
        );
        assert_eq!(
            parse_labels(r#"a="unterminated"#),
            Err(LabelsError::ParseValue { name: "a".into() })
        );
        assert_eq!(
            parse_labels(r#"a="1" b="2""#),
            Err(LabelsError::ParseSeparator {
                name: "a".into(),
                position: 6
            })
        );
        assert_eq!(
            parse_labels(r#"a="1",a="2""#),
            Err(LabelsError::DuplicateName { name: "a".into() })
        );
        assert_eq!(
            parse_labels(r#"9a="1""#),
            Err(LabelsError::ValidateName { name: "9a".into() })
        );
        assert_eq!(
            parse_labels(r#"{a="1""#),
            Err(LabelsError::ParseSeparator {
                name: "a".into(),
                position: 6
            })
        );
    }

    #[test]
    fn gpu_info_serde_omits_absent_fields_and_maps_empty_to_none() {
        let mut info = GpuInfo::new(GpuUuid::parse("GPU-1").unwrap());
        info.gpu_index = Some(3);
        info.hostname = Some("h1".into());
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"uuid":"GPU-1","gpu_index":3,"hostname":"h1"}"#
        );
        let back: GpuInfo =
            serde_json::from_str(r#"{"uuid":"GPU-1","gpu_index":3,"hostname":"h1","pod":""}"#)
                .unwrap();
        assert_eq!(back, info);
        assert!(serde_json::from_str::<GpuInfo>(r#"{"uuid":"a/b"}"#).is_err());
    }
}
