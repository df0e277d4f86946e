//! Streaming reader for DCGM telemetry CSV files: one row in memory at a time, bad rows reported
//! with their line number instead of stopping the read.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::gpu::{parse_labels, GpuInfo};
use crate::ids::{GpuUuid, MetricName};

/// Why a CSV could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("open CSV {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("read CSV at line {line}: {source}")]
    Read { line: u64, source: csv::Error },
    #[error("CSV header lacks required column(s): {}", missing.join(", "))]
    MissingColumns { missing: Vec<String> },
    #[error("CSV is empty: no header line")]
    EmptyFile,
}

/// One valid data row.
#[derive(Clone, Debug, PartialEq)]
pub struct CsvRow {
    /// 1-based physical line where the row starts.
    pub line: u64,
    pub info: GpuInfo,
    pub metric: MetricName,
    pub value: f64,
    /// The CSV's `timestamp` column, verbatim. Not the sample time: the pipeline stamps samples
    /// when it processes them.
    pub source_timestamp: Option<String>,
}

/// A row that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRow {
    /// 1-based physical line where the row starts.
    pub line: u64,
    pub reason: String,
}

/// What one data line turned out to be.
// `Row` is by far the common case; boxing it would add an allocation per row to shrink the rare
// variants.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum RowOutcome {
    Row(CsvRow),
    /// Skipped and counted as bad.
    Bad(BadRow),
    /// A DCGM blank sentinel value: skipped and counted, never stored.
    Blank(BadRow),
}

impl RowOutcome {
    /// The row, if it became a sample (`reader.filter_map(RowOutcome::row)`: every valid row).
    pub fn row(self) -> Option<CsvRow> {
        match self {
            RowOutcome::Row(row) => Some(row),
            RowOutcome::Bad(_) | RowOutcome::Blank(_) => None,
        }
    }
}

/// Counters since the reader was created. `rows_total == rows_ok + rows_bad + rows_blank`;
/// the header and blank lines are not rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadStats {
    pub rows_total: u64,
    pub rows_ok: u64,
    pub rows_bad: u64,
    pub rows_blank: u64,
}

/// Reason given for every [`RowOutcome::Blank`].
pub const BLANK_SENTINEL_REASON: &str = "DCGM blank sentinel";

/// Smallest DCGM int64 blank sentinel (`DCGM_INT64_BLANK`, 0x7ffffffffffffff0), as text.
const INT64_BLANK_MIN: &str = "9223372036854775792";
/// `DCGM_FP64_BLANK`: 2^47.
const FP64_BLANK_MIN: f64 = 140_737_488_355_328.0;

/// Whether a value is one of DCGM's "no data" sentinels: an integer >= 9223372036854775792 or a
/// float >= 2^47 (e.g. `9223372036854775794`, `140737488355328.0`, `1.40737488355328e+14`).
pub fn is_blank_sentinel(raw: &str) -> bool {
    let s = raw.trim();
    let digits = s.strip_prefix('+').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        // Compared as text: these integers do not fit an f64 exactly and may not fit an i64.
        let significant = digits.trim_start_matches('0');
        return significant.len() > INT64_BLANK_MIN.len()
            || (significant.len() == INT64_BLANK_MIN.len() && significant >= INT64_BLANK_MIN);
    }
    s.parse::<f64>()
        .is_ok_and(|v| v.is_finite() && v >= FP64_BLANK_MIN)
}

/// Column positions, resolved from the header once.
#[derive(Clone, Debug)]
struct Columns {
    count: usize,
    metric_name: usize,
    uuid: usize,
    value: usize,
    timestamp: Option<usize>,
    gpu_id: Option<usize>,
    device: Option<usize>,
    model_name: Option<usize>,
    hostname: Option<usize>,
    container: Option<usize>,
    pod: Option<usize>,
    namespace: Option<usize>,
    labels_raw: Option<usize>,
}

impl Columns {
    fn from_header(header: &csv::ByteRecord) -> Result<Self, CsvError> {
        let names: Vec<String> = header
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                let name = String::from_utf8_lossy(raw);
                // csv strips a BOM on its own; this also covers one inside quotes.
                let name = if i == 0 {
                    name.trim_start_matches('\u{feff}')
                } else {
                    &name
                };
                name.trim().to_ascii_lowercase()
            })
            .collect();
        // First occurrence wins, so a duplicated column cannot silently shift meaning.
        let find = |wanted: &str| names.iter().position(|n| n == wanted);
        let required = ["metric_name", "uuid", "value"];
        let missing: Vec<String> = required
            .iter()
            .filter(|c| find(c).is_none())
            .map(|c| c.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(CsvError::MissingColumns { missing });
        }
        Ok(Self {
            count: names.len(),
            metric_name: find("metric_name").unwrap_or_default(),
            uuid: find("uuid").unwrap_or_default(),
            value: find("value").unwrap_or_default(),
            timestamp: find("timestamp"),
            gpu_id: find("gpu_id"),
            device: find("device"),
            model_name: find("modelname"),
            hostname: find("hostname"),
            container: find("container"),
            pod: find("pod"),
            namespace: find("namespace"),
            labels_raw: find("labels_raw"),
        })
    }
}

/// Reads DCGM telemetry rows from CSV, yielding one [`RowOutcome`] per data line.
///
/// The header decides the layout: columns are matched case-insensitively, `metric_name`, `uuid`
/// and `value` are required, everything else (`timestamp`, `gpu_id`, `device`, `modelName`,
/// `Hostname`, `container`, `pod`, `namespace`, `labels_raw`) is optional, and GPU fields absent
/// from the columns are taken from `labels_raw` (`UUID`, `gpu`, `device`, `modelName`,
/// `Hostname`, `container`, `pod`, `namespace`). Fields are trimmed; CRLF, a UTF-8 BOM, quoted
/// fields and blank lines are accepted.
pub struct DcgmCsvReader<R: Read> {
    csv: csv::Reader<LineTracked<R>>,
    columns: Columns,
    record: csv::ByteRecord,
    stats: ReadStats,
    last_line: u64,
    finished: bool,
    read_error: Option<CsvError>,
}

impl<R: Read> fmt::Debug for DcgmCsvReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DcgmCsvReader")
            .field("columns", &self.columns)
            .field("stats", &self.stats)
            .field("last_line", &self.last_line)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl DcgmCsvReader<File> {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CsvError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| CsvError::Open {
            path: path.to_owned(),
            source,
        })?;
        Self::new(file)
    }
}

impl<R: Read> DcgmCsvReader<R> {
    /// Reads the header line; fails if there is none or it lacks a required column.
    pub fn new(reader: R) -> Result<Self, CsvError> {
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(false)
            // Rows with the wrong number of fields become per-row errors, not a fatal one.
            .flexible(true)
            .from_reader(LineTracked::new(reader));
        let mut header = csv::ByteRecord::new();
        loop {
            let more = csv
                .read_byte_record(&mut header)
                .map_err(|source| CsvError::Read {
                    line: source.position().map_or(1, |p| p.line()),
                    source,
                })?;
            if !more {
                return Err(CsvError::EmptyFile);
            }
            if !is_blank_line(&header) {
                break;
            }
        }
        let columns = Columns::from_header(&header)?;
        let last_line = record_line(&mut csv, &header, 0);
        Ok(Self {
            csv,
            columns,
            record: csv::ByteRecord::new(),
            stats: ReadStats::default(),
            last_line,
            finished: false,
            read_error: None,
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> ReadStats {
        self.stats
    }

    /// Set when reading stopped early because the underlying reader failed; that failure was
    /// also yielded (and counted) as a bad row.
    pub fn read_error(&self) -> Option<&CsvError> {
        self.read_error.as_ref()
    }

    fn parse_record(&self, line: u64) -> RowOutcome {
        match self.parse_fields(line) {
            Ok(outcome) => outcome,
            Err(reason) => RowOutcome::Bad(BadRow { line, reason }),
        }
    }

    fn parse_fields(&self, line: u64) -> Result<RowOutcome, String> {
        let rec = &self.record;
        let cols = &self.columns;
        if rec.len() != cols.count {
            return Err(format!(
                "expected {} fields, found {}",
                cols.count,
                rec.len()
            ));
        }
        let field = |idx: usize| -> Result<&str, String> {
            let bytes = rec.get(idx).unwrap_or_default();
            std::str::from_utf8(bytes)
                .map(str::trim)
                .map_err(|_| format!("field {} is not valid UTF-8", idx + 1))
        };
        let optional = |idx: Option<usize>| -> Result<Option<&str>, String> {
            Ok(idx.map(field).transpose()?.filter(|s| !s.is_empty()))
        };

        let mut labels = match optional(cols.labels_raw)? {
            Some(raw) => parse_labels(raw).map_err(|e| format!("invalid labels_raw: {e}"))?,
            None => Default::default(),
        };
        let metric_text = resolve(
            &mut labels,
            Some(field(cols.metric_name)?).filter(|s| !s.is_empty()),
            "__name__",
        )
        .ok_or("missing metric_name")?;
        let metric =
            MetricName::parse(&metric_text).map_err(|e| format!("invalid metric_name: {e}"))?;
        let uuid_text = resolve(
            &mut labels,
            Some(field(cols.uuid)?).filter(|s| !s.is_empty()),
            "UUID",
        )
        .ok_or("missing uuid")?;
        let uuid = GpuUuid::parse(&uuid_text).map_err(|e| format!("invalid uuid: {e}"))?;

        let gpu_index = match optional(cols.gpu_id)? {
            Some(text) => {
                let index: u32 = text
                    .parse()
                    .map_err(|_| format!("invalid gpu_id {:?}", excerpt(text)))?;
                if labels.get("gpu").is_some_and(|l| l.parse() == Ok(index)) {
                    labels.remove("gpu");
                }
                Some(index)
            }
            // An unparsable label is kept as a label rather than failing the row: only the
            // column is part of the file's contract.
            None => match labels.get("gpu").map(|l| l.parse::<u32>()) {
                Some(Ok(index)) => {
                    labels.remove("gpu");
                    Some(index)
                }
                _ => None,
            },
        };
        let device = resolve(&mut labels, optional(cols.device)?, "device");
        let model_name = resolve(&mut labels, optional(cols.model_name)?, "modelName");
        let hostname = resolve(&mut labels, optional(cols.hostname)?, "Hostname");
        let container = resolve(&mut labels, optional(cols.container)?, "container");
        let pod = resolve(&mut labels, optional(cols.pod)?, "pod");
        let namespace = resolve(&mut labels, optional(cols.namespace)?, "namespace");

        let raw_value = field(cols.value)?;
        if raw_value.is_empty() {
            return Err("missing value".to_owned());
        }
        if is_blank_sentinel(raw_value) {
            return Ok(RowOutcome::Blank(BadRow {
                line,
                reason: BLANK_SENTINEL_REASON.to_owned(),
            }));
        }
        let value: f64 = raw_value
            .parse()
            .map_err(|_| format!("unparsable value {:?}", excerpt(raw_value)))?;
        if !value.is_finite() {
            return Err(format!("non-finite value {:?}", excerpt(raw_value)));
        }

        Ok(RowOutcome::Row(CsvRow {
            line,
            info: GpuInfo {
                uuid,
                gpu_index,
                device,
                model_name,
                hostname,
                container,
                pod,
                namespace,
                labels,
            },
            metric,
            value,
            source_timestamp: optional(cols.timestamp)?.map(str::to_owned),
        }))
    }
}

impl<R: Read> Iterator for DcgmCsvReader<R> {
    type Item = RowOutcome;

    fn next(&mut self) -> Option<RowOutcome> {
        loop {
            if self.finished {
                return None;
            }
            match self.csv.read_byte_record(&mut self.record) {
                Ok(false) => {
                    self.finished = true;
                    return None;
                }
                Ok(true) => {}
                Err(source) => {
                    let line = source.position().map_or(self.last_line + 1, |p| p.line());
                    let reason = format!("read error: {source}");
                    // I/O failures leave the stream in an unknown state; stopping is the only
                    // way not to loop on the same error.
                    if matches!(source.kind(), csv::ErrorKind::Io(_)) {
                        self.finished = true;
                        self.read_error = Some(CsvError::Read { line, source });
                    }
                    self.stats.rows_total += 1;
                    self.stats.rows_bad += 1;
                    return Some(RowOutcome::Bad(BadRow { line, reason }));
                }
            }
            let line = record_line(&mut self.csv, &self.record, self.last_line);
            self.last_line = line;
            if is_blank_line(&self.record) {
                continue;
            }
            let outcome = self.parse_record(line);
            self.stats.rows_total += 1;
            match &outcome {
                RowOutcome::Row(_) => self.stats.rows_ok += 1,
                RowOutcome::Bad(_) => self.stats.rows_bad += 1,
                RowOutcome::Blank(_) => self.stats.rows_blank += 1,
            }
            return Some(outcome);
        }
    }
}

/// Takes a GPU field from its column, falling back to the label of the same meaning; a label that
/// only repeats the column is dropped so each fact is stored once.
fn resolve(
    labels: &mut BTreeMap<String, String>,
    column: Option<&str>,
    label: &str,
) -> Option<String> {
    match column {
        Some(value) => {
            if labels.get(label).is_some_and(|l| l == value) {
                labels.remove(label);
            }
            Some(value.to_owned())
        }
        None => labels.remove(label).filter(|l| !l.is_empty()),
    }
}

/// Passes bytes through and remembers where the CR and LF bytes are.
///
/// csv reports a record's position from before it skipped blank lines (and, with CRLF endings,
/// before the previous record's LF), so its line number can be off. The terminator offsets let
/// [`record_line`] step over those bytes to the line where the record's text starts.
struct LineTracked<R> {
    inner: R,
    offset: u64,
    /// `(byte offset, is_lf)` of every CR/LF csv has read but we have not yet passed.
    terminators: VecDeque<(u64, bool)>,
}

impl<R> LineTracked<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            terminators: VecDeque::new(),
        }
    }

    /// Counts the LFs in the unbroken run of CR/LF bytes starting at `start`, and forgets every
    /// terminator before `start` (records arrive in order, so they are never needed again).
    fn newlines_in_run_at(&mut self, start: u64) -> u64 {
        while self
            .terminators
            .front()
            .is_some_and(|&(off, _)| off < start)
        {
            self.terminators.pop_front();
        }
        (start..)
            .zip(&self.terminators)
            .take_while(|&(expected, &(off, _))| off == expected)
            .map(|(_, &(_, is_lf))| u64::from(is_lf))
            .sum()
    }
}

impl<R: Read> Read for LineTracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for (i, &b) in buf[..n].iter().enumerate() {
            if b == b'\n' || b == b'\r' {
                self.terminators
                    .push_back((self.offset + i as u64, b == b'\n'));
            }
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// The 1-based physical line (counting LFs) where `record`'s text starts.
fn record_line<R: Read>(
    csv: &mut csv::Reader<LineTracked<R>>,
    record: &csv::ByteRecord,
    fallback_before: u64,
) -> u64 {
    match record.position() {
        Some(pos) => pos.line() + csv.get_mut().newlines_in_run_at(pos.byte()),
        None => fallback_before + 1,
    }
}

/// A line holding only whitespace reaches us as a single blank field.
fn is_blank_line(record: &csv::ByteRecord) -> bool {
    record.len() == 1 && record[0].iter().all(u8::is_ascii_whitespace)
}

/// Keeps error messages short when a field is huge.
fn excerpt(s: &str) -> &str {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What `streamer validate` prints about a file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvSummary {
    pub rows_total: u64,
    pub rows_ok: u64,
    pub rows_bad: u64,
    pub rows_blank: u64,
    /// Distinct GPU UUIDs among the good rows.
    pub gpus: usize,
    /// Distinct hostnames among the good rows.
    pub hosts: usize,
    /// Distinct metric names among the good rows.
    pub metrics: usize,
    /// The first [`CsvSummary::MAX_ERRORS`] bad rows, in file order.
    pub errors: Vec<BadRow>,
    /// Set when the read stopped early on an I/O error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_error: Option<String>,
}

impl CsvSummary {
    pub const MAX_ERRORS: usize = 100;
}

/// Reads the whole file and counts what is in it.
pub fn summarize<R: Read>(mut reader: DcgmCsvReader<R>) -> CsvSummary {
    let mut gpus = HashSet::new();
    let mut hosts = HashSet::new();
    let mut metrics = HashSet::new();
    let mut errors = Vec::new();
    for outcome in reader.by_ref() {
        match outcome {
            RowOutcome::Row(row) => {
                if let Some(host) = row.info.hostname {
                    hosts.insert(host);
                }
                gpus.insert(row.info.uuid);
                metrics.insert(row.metric);
            }
            RowOutcome::Bad(bad) => {
                if errors.len() < CsvSummary::MAX_ERRORS {
                    errors.push(bad);
                }
            }
            RowOutcome::Blank(_) => {}
        }
    }
    let stats = reader.stats();
    CsvSummary {
        rows_total: stats.rows_total,
        rows_ok: stats.rows_ok,
        rows_bad: stats.rows_bad,
        rows_blank: stats.rows_blank,
        gpus: gpus.len(),
        hosts: hosts.len(),
        metrics: metrics.len(),
        errors,
        read_error: reader.read_error().map(ToString::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exporter_sentinels_are_blank() {
        // From the dcgm-exporter README example output, plus DCGM's other int64/fp64 blanks
        // (NOT_FOUND, NOT_SUPPORTED, NOT_PERMISSIONED are BLANK + 1, + 2, + 3).
        for raw in [
            "9223372036854775794",
            "9223372036854775792",
            "9223372036854775793",
            "9223372036854775795",
            "9223372036854775807",
            "18446744073709551615",
            "+9223372036854775792",
            " 9223372036854775794 ",
            "140737488355328.0",
            "140737488355329.0",
            "1.40737488355328e+14",
            "1.40737488355330e14",
            "9.223372036854775794e18",
        ] {
            assert!(is_blank_sentinel(raw), "{raw} should be a blank sentinel");
        }
    }

    #[test]
    fn ordinary_values_are_not_blank() {
        for raw in [
            "0",
            "100",
            "81003",
            "156.596",
            "9223372036854775791",
            "0009223372036854775791",
            "140737488355327.9",
            "140737488355328",
            "-9223372036854775808",
            "-1.5e300",
            "inf",
            "NaN",
            "",
            "abc",
        ] {
            assert!(
                !is_blank_sentinel(raw),
                "{raw} should not be a blank sentinel"
            );
        }
    }

    fn read_all(csv: &str) -> (Vec<RowOutcome>, ReadStats) {
        let mut reader = DcgmCsvReader::new(csv.as_bytes()).unwrap();
        let outcomes: Vec<_> = reader.by_ref().collect();
        (outcomes, reader.stats())
    }

    #[test]
    fn labels_fill_missing_fields_and_redundant_labels_are_dropped() {
        let csv = "metric_name,uuid,value,Hostname,labels_raw\n\
            DCGM_FI_DEV_GPU_TEMP,GPU-1,41,host-a,\"Hostname=\"\"host-a\"\",UUID=\"\"GPU-1\"\",gpu=\"\"3\"\",device=\"\"nvidia3\"\",__name__=\"\"DCGM_FI_DEV_GPU_TEMP\"\",job=\"\"dcgm\"\",modelName=\"\"H100\"\"\"\n";
        let (outcomes, stats) = read_all(csv);
        assert_eq!(
            stats,
            ReadStats {
                rows_total: 1,
                rows_ok: 1,
                rows_bad: 0,
                rows_blank: 0
            }
        );
        let RowOutcome::Row(row) = &outcomes[0] else {
            panic!("expected a row, got {:?}", outcomes[0]);
        };
        assert_eq!(row.line, 2);
        assert_eq!(row.info.gpu_index, Some(3));
        assert_eq!(row.info.device.as_deref(), Some("nvidia3"));
        assert_eq!(row.info.model_name.as_deref(), Some("H100"));
        assert_eq!(row.info.hostname.as_deref(), Some("host-a"));
        assert_eq!(
            row.info.labels.iter().collect::<Vec<_>>(),
            [(&"job".to_string(), &"dcgm".to_string())]
        );
        assert_eq!(row.value, 41.0);
        assert_eq!(row.source_timestamp, None);
    }

    #[test]
    fn conflicting_labels_are_kept() {
        let csv = "metric_name,uuid,value,gpu_id,labels_raw\n\
            m,GPU-1,1,2,\"gpu=\"\"5\"\",UUID=\"\"GPU-9\"\"\"\n";
        let (outcomes, _) = read_all(csv);
        let RowOutcome::Row(row) = &outcomes[0] else {
            panic!("expected a row, got {:?}", outcomes[0]);
        };
        assert_eq!(row.info.uuid.as_str(), "GPU-1");
        assert_eq!(row.info.gpu_index, Some(2));
        assert_eq!(row.info.labels.get("gpu").map(String::as_str), Some("5"));
        assert_eq!(
            row.info.labels.get("UUID").map(String::as_str),
            Some("GPU-9")
        );
    }

    #[test]
    fn header_errors_are_fatal_and_name_the_columns() {
        assert!(matches!(
            DcgmCsvReader::new("".as_bytes()),
            Err(CsvError::EmptyFile)
        ));
        assert!(matches!(
            DcgmCsvReader::new("\n  \n".as_bytes()),
            Err(CsvError::EmptyFile)
        ));
        let err = DcgmCsvReader::new("timestamp,UUID\n".as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CSV header lacks required column(s): metric_name, value"
        );
    }

    #[test]
    fn open_names_the_path() {
        let err = DcgmCsvReader::open("/nonexistent/dcgm.csv").unwrap_err();
        assert!(matches!(err, CsvError::Open { .. }));
        assert!(
            err.to_string()
                .starts_with("open CSV /nonexistent/dcgm.csv: "),
            "{err}"
        );
    }

    /// Yields its bytes, then fails, like a network file system dropping out.
    struct FailingReader {
        data: &'static [u8],
    }

    impl Read for FailingReader {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.data.is_empty() {
                return Err(std::io::Error::other("device gone"));
            }
            let n = buf.len().min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn io_errors_end_the_read_as_a_counted_bad_row() {
        let reader = DcgmCsvReader::new(FailingReader {
            data: b"metric_name,uuid,value\nm,GPU-1,1\n",
        })
        .unwrap();
        let summary = summarize(reader);
        assert_eq!(summary.rows_ok, 1);
        assert_eq!(summary.rows_bad, 1);
        assert_eq!(summary.rows_total, 2);
        assert_eq!(summary.errors.len(), 1);
        assert_eq!(summary.errors[0].line, 3);
        assert!(
            summary.errors[0].reason.contains("device gone"),
            "{:?}",
            summary.errors
        );
        assert!(summary.read_error.unwrap().contains("device gone"));
    }

    #[test]
    fn excerpt_cuts_on_char_boundaries() {
        let s = "é".repeat(40);
        assert_eq!(excerpt(&s).len(), 64);
        assert_eq!(excerpt("short"), "short");
    }
}
