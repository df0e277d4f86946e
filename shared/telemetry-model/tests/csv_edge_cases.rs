//! The CSV reader on the edge-case fixtures in `testdata/`: exact counts, line numbers and reasons.

use telemetry_model::{summarize, BadRow, CsvError, DcgmCsvReader, ReadStats, RowOutcome};
use test_support::testdata;

fn read(name: &str) -> (Vec<RowOutcome>, ReadStats) {
    let mut reader = DcgmCsvReader::open(testdata(name)).unwrap();
    let outcomes = reader.by_ref().collect();
    (outcomes, reader.stats())
}

/// `(line, kind, detail)` where detail is the metric and value of a row, or the reason.
fn describe(outcomes: &[RowOutcome]) -> Vec<(u64, &'static str, String)> {
    outcomes
        .iter()
        .map(|o| match o {
            RowOutcome::Row(r) => (r.line, "ok", format!("{} {}", r.metric, r.value)),
            RowOutcome::Bad(b) => (b.line, "bad", b.reason.clone()),
            RowOutcome::Blank(b) => (b.line, "blank", b.reason.clone()),
        })
        .collect()
}

fn stats(total: u64, ok: u64, bad: u64, blank: u64) -> ReadStats {
    ReadStats {
        rows_total: total,
        rows_ok: ok,
        rows_bad: bad,
        rows_blank: blank,
    }
}

#[test]
fn crlf_bom_quoted_unquoted_padded_and_blank_lines() {
    let (outcomes, read_stats) = read("csv-crlf-bom.csv");
    assert_eq!(read_stats, stats(4, 4, 0, 0));
    assert_eq!(
        describe(&outcomes),
        [
            (2, "ok", "DCGM_FI_DEV_GPU_UTIL 0".to_string()),
            (4, "ok", "DCGM_FI_DEV_GPU_UTIL 100".to_string()),
            (6, "ok", "DCGM_FI_DEV_GPU_TEMP 35.5".to_string()),
            (7, "ok", "DCGM_FI_DEV_GPU_TEMP 41".to_string()),
        ]
    );
    let RowOutcome::Row(padded) = &outcomes[2] else {
        unreachable!()
    };
    // Padding around unquoted fields is trimmed; empty fields are absent, not "".
    assert_eq!(
        padded.info.uuid.as_str(),
        "GPU-6c8915d7-f04d-beb9-3e8a-e06f97ca4480"
    );
    assert_eq!(padded.info.gpu_index, Some(2));
    assert_eq!(
        padded.info.model_name.as_deref(),
        Some("NVIDIA H100 80GB HBM3")
    );
    assert_eq!(padded.info.container, None);
    assert!(padded.info.labels.is_empty());
    assert_eq!(
        padded.source_timestamp.as_deref(),
        Some("2025-07-18T20:42:35Z")
    );
    let RowOutcome::Row(first) = &outcomes[0] else {
        unreachable!()
    };
    assert_eq!(
        first.info.labels.keys().collect::<Vec<_>>(),
        ["DCGM_FI_DRIVER_VERSION", "instance", "job"]
    );
}

#[test]
fn bad_rows_are_skipped_with_line_and_reason() {
    let (outcomes, read_stats) = read("csv-bad-rows.csv");
    assert_eq!(read_stats, stats(16, 4, 12, 0));
    let described = describe(&outcomes);
    let expected: Vec<(u64, &str, &str)> = vec![
        (2, "ok", "DCGM_FI_DEV_GPU_UTIL 7"),
        (3, "bad", "missing value"),
        (4, "bad", "unparsable value \"abc\""),
        (5, "bad", "non-finite value \"NaN\""),
        (6, "bad", "non-finite value \"-inf\""),
        (
            7,
            "bad",
            "invalid uuid: GPU UUID contains '.' at position 0, which is not allowed",
        ),
        (8, "bad", "missing uuid"),
        (
            9,
            "bad",
            "invalid metric_name: metric name contains '1' at position 0, which is not allowed",
        ),
        (10, "bad", "expected 12 fields, found 11"),
        (
            11,
            "bad",
            "invalid labels_raw: value of label \"a\" has no closing quote",
        ),
        (12, "bad", "invalid gpu_id \"x\""),
        (13, "ok", "DCGM_FI_DEV_GPU_TEMP 33"),
        (14, "bad", "expected 12 fields, found 13"),
        // This row's quoted `container` spans lines 15 and 16.
        (15, "ok", "DCGM_FI_DEV_GPU_TEMP 36"),
        (
            17,
            "bad",
            "invalid uuid: GPU UUID contains ' ' at position 3, which is not allowed",
        ),
        (18, "ok", "DCGM_FI_DEV_GPU_TEMP 38.25"),
    ];
    let expected: Vec<(u64, &str, String)> = expected
        .into_iter()
        .map(|(l, k, d)| (l, k, d.to_string()))
        .collect();
    assert_eq!(described, expected);
    let RowOutcome::Row(multi) = &outcomes[13] else {
        unreachable!()
    };
    assert_eq!(multi.info.container.as_deref(), Some("multi\nline"));
}

#[test]
fn summary_lists_bad_rows_in_order() {
    let summary = summarize(DcgmCsvReader::open(testdata("csv-bad-rows.csv")).unwrap());
    assert_eq!(
        (
            summary.rows_total,
            summary.rows_ok,
            summary.rows_bad,
            summary.rows_blank
        ),
        (16, 4, 12, 0)
    );
    assert_eq!((summary.gpus, summary.hosts, summary.metrics), (4, 1, 2));
    assert_eq!(
        summary.errors.iter().map(|e| e.line).collect::<Vec<_>>(),
        [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 17]
    );
    assert_eq!(
        serde_json::to_string(&summary.errors[0]).unwrap(),
        r#"{"line":3,"reason":"missing value"}"#
    );
}

#[test]
fn missing_required_columns_are_named() {
    let err = DcgmCsvReader::open(testdata("csv-missing-columns.csv")).unwrap_err();
    match err {
        CsvError::MissingColumns { missing } => assert_eq!(missing, ["uuid", "value"]),
        other => panic!("expected MissingColumns, got {other:?}"),
    }
}

#[test]
fn headers_match_case_insensitively_in_any_order() {
    let (outcomes, read_stats) = read("csv-uppercase-headers.csv");
    assert_eq!(read_stats, stats(3, 3, 0, 0));
    assert_eq!(
        describe(&outcomes),
        [
            (2, "ok", "DCGM_FI_DEV_SM_CLOCK 1410".to_string()),
            (3, "ok", "DCGM_FI_DEV_SM_CLOCK 1980".to_string()),
            (4, "ok", "DCGM_FI_DEV_MEM_CLOCK 2619".to_string()),
        ]
    );
    let RowOutcome::Row(row) = &outcomes[1] else {
        unreachable!()
    };
    assert_eq!(
        row.info.uuid.as_str(),
        "GPU-bc7a12ab-4998-fdc5-0785-2678a929a142"
    );
    assert_eq!(row.info.gpu_index, Some(1));
    assert_eq!(row.info.device.as_deref(), Some("nvidia1"));
    assert_eq!(row.info.hostname.as_deref(), Some("mtv5-dgx1-hgpu-031"));
    assert_eq!(
        row.source_timestamp.as_deref(),
        Some("2025-07-18T20:42:34Z")
    );
}

#[test]
fn blank_sentinels_are_counted_and_never_rows() {
    let (outcomes, read_stats) = read("csv-blank-sentinels.csv");
    assert_eq!(read_stats, stats(8, 4, 0, 4));
    assert_eq!(
        describe(&outcomes),
        [
            (2, "ok", "DCGM_FI_DEV_SM_CLOCK 139".to_string()),
            (3, "blank", "DCGM blank sentinel".to_string()),
            (4, "blank", "DCGM blank sentinel".to_string()),
            (5, "blank", "DCGM blank sentinel".to_string()),
            (6, "blank", "DCGM blank sentinel".to_string()),
            (7, "ok", "DCGM_FI_DEV_MEM_CLOCK 405".to_string()),
            (
                8,
                "ok",
                "DCGM_FI_DEV_FB_USED 9223372036854776000".to_string()
            ),
            (
                9,
                "ok",
                "DCGM_FI_DEV_POWER_USAGE 140737488355327.5".to_string()
            ),
        ]
    );
    let summary = summarize(DcgmCsvReader::open(testdata("csv-blank-sentinels.csv")).unwrap());
    assert_eq!(summary.errors, Vec::<BadRow>::new());
    assert_eq!(summary.rows_blank, 4);
}

#[test]
fn gpu_fields_come_from_labels_when_there_are_no_columns() {
    let (outcomes, read_stats) = read("csv-labels-only.csv");
    assert_eq!(read_stats, stats(4, 4, 0, 0));
    let rows: Vec<_> = outcomes
        .into_iter()
        .map(|o| match o {
            RowOutcome::Row(r) => r,
            other => panic!("unexpected {other:?}"),
        })
        .collect();

    let first = &rows[0].info;
    assert_eq!(
        first.uuid.as_str(),
        "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"
    );
    assert_eq!(first.gpu_index, Some(0));
    assert_eq!(first.device.as_deref(), Some("nvidia0"));
    assert_eq!(first.model_name.as_deref(), Some("NVIDIA H100 80GB HBM3"));
    assert_eq!(first.hostname.as_deref(), Some("mtv5-dgx1-hgpu-031"));
    assert_eq!(
        first.labels.keys().collect::<Vec<_>>(),
        ["DCGM_FI_DRIVER_VERSION", "instance", "job"]
    );

    // Empty uuid column: the UUID label fills it.
    assert_eq!(
        rows[1].info.uuid.as_str(),
        "GPU-bc7a12ab-4998-fdc5-0785-2678a929a142"
    );
    assert_eq!(rows[1].info.hostname.as_deref(), Some("mtv5-dgx1-hgpu-032"));
    assert_eq!(rows[1].value, 99.0);

    // dcgm-exporter style labels: braces, a space after a comma, empty container/pod/namespace.
    let exporter = &rows[2].info;
    assert_eq!(
        exporter.uuid.as_str(),
        "GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52"
    );
    assert_eq!(exporter.gpu_index, Some(0));
    assert_eq!(
        (
            &exporter.container,
            &exporter.pod,
            &exporter.namespace,
            &exporter.hostname
        ),
        (&None, &None, &None, &None)
    );
    assert!(exporter.labels.is_empty());

    // Empty metric_name: the __name__ label fills it.
    assert_eq!(rows[3].metric.as_str(), "DCGM_FI_DEV_FB_USED");
    assert_eq!(rows[3].info, rows[0].info);

    let summary = summarize(DcgmCsvReader::open(testdata("csv-labels-only.csv")).unwrap());
    assert_eq!((summary.gpus, summary.hosts, summary.metrics), (3, 2, 3));
}

#[test]
fn invalid_utf8_is_a_bad_row_and_reading_continues() {
    let mut data = b"metric_name,uuid,value\nm,GPU-1,1\nm,GPU-\xff,2\n\nm,GPU-2,3\n".to_vec();
    data.extend_from_slice(b"m,GPU-3,4");
    let mut reader = DcgmCsvReader::new(data.as_slice()).unwrap();
    let outcomes: Vec<_> = reader.by_ref().collect();
    assert_eq!(
        describe(&outcomes),
        [
            (2, "ok", "m 1".to_string()),
            (3, "bad", "field 2 is not valid UTF-8".to_string()),
            (5, "ok", "m 3".to_string()),
            (6, "ok", "m 4".to_string()),
        ]
    );
    assert_eq!(reader.stats(), stats(4, 3, 1, 0));
}

#[test]
fn header_after_leading_blank_lines_keeps_physical_line_numbers() {
    let data = "\n\nmetric_name,uuid,value\n\nm,GPU-1,1\n";
    let outcomes: Vec<_> = DcgmCsvReader::new(data.as_bytes()).unwrap().collect();
    assert_eq!(describe(&outcomes), [(5, "ok", "m 1".to_string())]);
}

/// Hands out at most `chunk` bytes per read, so records and CRLF pairs straddle reads.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn line_numbers_do_not_depend_on_read_chunking() {
    for name in ["csv-crlf-bom.csv", "csv-bad-rows.csv", "dcgm-slice-100.csv"] {
        let data = std::fs::read(testdata(name)).unwrap();
        let (whole, whole_stats) = read(name);
        for chunk in [1, 7, 4096] {
            let mut reader = DcgmCsvReader::new(Trickle { data: &data, chunk }).unwrap();
            let outcomes: Vec<_> = reader.by_ref().collect();
            assert_eq!(outcomes, whole, "{name} read {chunk} bytes at a time");
            assert_eq!(reader.stats(), whole_stats);
        }
    }
}

#[test]
fn crlf_inside_a_quoted_field_counts_as_one_line() {
    let data = "metric_name,uuid,value,pod\r\n\r\nm,GPU-1,1,\"a\r\nb\"\r\n\r\n\r\nm,GPU-2,x,p\r\n";
    let outcomes: Vec<_> = DcgmCsvReader::new(data.as_bytes()).unwrap().collect();
    assert_eq!(
        describe(&outcomes),
        [
            (3, "ok", "m 1".to_string()),
            (7, "bad", "unparsable value \"x\"".to_string()),
        ]
    );
}
