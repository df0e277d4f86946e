//! `streamer validate`: reads a CSV without touching etcd and prints what is in it.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use telemetry_model::{summarize, CsvSummary, DcgmCsvReader};

use crate::error::StreamerError;

/// What `streamer validate` reads and how it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateConfig {
    /// The DCGM CSV file to check.
    pub csv: PathBuf,
    pub format: OutputFormat,
}

/// Output format of `streamer validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// For people.
    Text,
    /// For scripts.
    Json,
}

/// Exit code when the file is readable (even with bad rows).
pub const EXIT_OK: u8 = 0;
/// Exit code when reading stopped part-way on an I/O error (the summary covers what was read).
pub const EXIT_READ_FAILED: u8 = 1;
/// Exit code when the file cannot be used at all (missing, unreadable, no usable header).
pub const EXIT_UNUSABLE: u8 = 2;

/// Reads the whole file and counts rows, bad rows (the first 100 with line and reason), GPUs,
/// hosts and metrics.
pub fn validate_csv(path: &Path) -> Result<CsvSummary, StreamerError> {
    let reader = DcgmCsvReader::open(path).map_err(|source| StreamerError::OpenCsv {
        path: path.to_owned(),
        source,
    })?;
    Ok(summarize(reader))
}

/// The summary as `format`: pretty JSON with the fields `rows_total`, `rows_ok`, `rows_bad`,
/// `rows_blank`, `gpus`, `hosts`, `metrics`, `errors` (`[{line, reason}]`), or text.
pub fn render_summary(path: &Path, summary: &CsvSummary, format: OutputFormat) -> String {
    match format {
        OutputFormat::Json => {
            let mut json = serde_json::to_string_pretty(summary).expect("summary serializes");
            json.push('\n');
            json
        }
        OutputFormat::Text => {
            let mut out = String::new();
            let _ = writeln!(out, "file:       {}", path.display());
            let _ = writeln!(out, "rows read:  {}", summary.rows_total);
            let _ = writeln!(out, "rows ok:    {}", summary.rows_ok);
            let _ = writeln!(out, "rows bad:   {}", summary.rows_bad);
            let _ = writeln!(
                out,
                "rows blank: {} (DCGM blank sentinels)",
                summary.rows_blank
            );
            let _ = writeln!(out, "gpus:       {}", summary.gpus);
            let _ = writeln!(out, "hosts:      {}", summary.hosts);
            let _ = writeln!(out, "metrics:    {}", summary.metrics);
            if !summary.errors.is_empty() {
                let shown = if summary.rows_bad > summary.errors.len() as u64 {
                    format!(" (first {})", summary.errors.len())
                } else {
                    String::new()
                };
                let _ = writeln!(out, "bad rows{shown}:");
                for bad in &summary.errors {
                    let _ = writeln!(out, "  line {}: {}", bad.line, bad.reason);
                }
            }
            if let Some(error) = &summary.read_error {
                let _ = writeln!(out, "read stopped early: {error}");
            }
            out
        }
    }
}

/// Runs `streamer validate`: the summary on `stdout`, problems on `stderr`; returns the exit code.
pub fn run_validate(config: &ValidateConfig, stdout: &mut dyn Write, stderr: &mut dyn Write) -> u8 {
    match validate_csv(&config.csv) {
        Ok(summary) => {
            let _ =
                stdout.write_all(render_summary(&config.csv, &summary, config.format).as_bytes());
            match &summary.read_error {
                Some(error) => {
                    let _ = writeln!(
                        stderr,
                        "error: reading {} stopped early: {error}",
                        config.csv.display()
                    );
                    EXIT_READ_FAILED
                }
                None => EXIT_OK,
            }
        }
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            EXIT_UNUSABLE
        }
    }
}

#[cfg(test)]
mod tests {
    use test_support::testdata;

    use super::*;

    fn validate(name: &str, format: OutputFormat) -> (u8, String, String) {
        let config = ValidateConfig {
            csv: testdata(name),
            format,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_validate(&config, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn text_summary_lists_bad_rows_with_lines() {
        let (code, out, err) = validate("csv-bad-rows.csv", OutputFormat::Text);
        assert_eq!(code, EXIT_OK);
        assert_eq!(err, "");
        let lines: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(
            lines[..9],
            [
                "rows read:  16",
                "rows ok:    4",
                "rows bad:   12",
                "rows blank: 0 (DCGM blank sentinels)",
                "gpus:       4",
                "hosts:      1",
                "metrics:    2",
                "bad rows:",
                "  line 3: missing value",
            ]
        );
        assert_eq!(lines.len(), 8 + 12);
        assert_eq!(
            lines.last().copied(),
            Some("  line 17: invalid uuid: GPU UUID contains ' ' at position 3, which is not allowed")
        );
    }

    #[test]
    fn unusable_files_fail_with_a_message() {
        let (code, out, err) = validate("csv-missing-columns.csv", OutputFormat::Json);
        assert_eq!(code, EXIT_UNUSABLE);
        assert_eq!(out, "");
        assert!(
            err.starts_with("error: unusable CSV ")
                && err
                    .trim_end()
                    .ends_with("CSV header lacks required column(s): uuid, value"),
            "{err}"
        );
        let (code, _, err) = validate("no-such-file.csv", OutputFormat::Text);
        assert_eq!(code, EXIT_UNUSABLE);
        assert!(err.contains("no-such-file.csv"), "{err}");
    }
}
