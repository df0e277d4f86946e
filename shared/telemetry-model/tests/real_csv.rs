//! Reads the real DCGM export (2,470 rows, 247 GPUs on 31 hosts, 10 metrics) and its 100-row slice
//! and checks exact counts and contents.

use std::collections::{BTreeMap, HashMap};

use telemetry_model::{summarize, CsvRow, DcgmCsvReader, GpuInfo, RowOutcome};
use test_support::{testdata, REAL_CSV as REAL_FILE};

fn rows(name: &str) -> Vec<CsvRow> {
    DcgmCsvReader::open(testdata(name))
        .unwrap()
        .map(|outcome| match outcome {
            RowOutcome::Row(row) => row,
            other => panic!("unexpected outcome {other:?}"),
        })
        .collect()
}

#[test]
fn real_file_summary_has_exact_counts() {
    let summary = summarize(DcgmCsvReader::open(testdata(REAL_FILE)).unwrap());
    assert_eq!(summary.rows_total, 2_470);
    assert_eq!(summary.rows_ok, 2_470);
    assert_eq!(summary.rows_bad, 0);
    assert_eq!(summary.rows_blank, 0);
    assert_eq!(summary.gpus, 247);
    assert_eq!(summary.hosts, 31);
    assert_eq!(summary.metrics, 10);
    assert_eq!(summary.errors, []);
    assert_eq!(summary.read_error, None);
}

#[test]
fn real_file_first_row_is_parsed_exactly() {
    let first = DcgmCsvReader::open(testdata(REAL_FILE))
        .unwrap()
        .next()
        .unwrap();
    let RowOutcome::Row(row) = first else {
        panic!("expected a row, got {first:?}");
    };
    assert_eq!(row.line, 2);
    assert_eq!(row.metric.as_str(), "DCGM_FI_DEV_GPU_UTIL");
    assert_eq!(row.value, 0.0);
    assert_eq!(
        row.source_timestamp.as_deref(),
        Some("2025-07-18T20:42:34Z")
    );
    let expected = GpuInfo {
        uuid: "GPU-5fd4f087-86f3-7a43-b711-4771313afc50".parse().unwrap(),
        gpu_index: Some(0),
        device: Some("nvidia0".into()),
        model_name: Some("NVIDIA H100 80GB HBM3".into()),
        hostname: Some("mtv5-dgx1-hgpu-031".into()),
        container: None,
        pod: None,
        namespace: None,
        // Labels that repeat a field (UUID, gpu, device, modelName, Hostname) and the per-row
        // __name__ are folded away; what is left describes the GPU, not the sample.
        labels: BTreeMap::from([
            ("DCGM_FI_DRIVER_VERSION".into(), "535.129.03".into()),
            ("instance".into(), "mtv5-dgx1-hgpu-031:9400".into()),
            ("job".into(), "dgx_dcgm_exporter".into()),
        ]),
    };
    assert_eq!(row.info, expected);
}

#[test]
fn real_file_rows_have_exact_values_and_line_numbers() {
    let rows = rows(REAL_FILE);
    assert_eq!(rows.len(), 2_470);
    // One row per physical line, in order, after the header.
    assert!(rows.iter().enumerate().all(|(i, r)| r.line == i as u64 + 2));
    assert_eq!(rows.iter().filter(|r| r.value == 0.0).count(), 756);
    assert_eq!(rows.iter().filter(|r| r.value.fract() != 0.0).count(), 246);
    assert_eq!(
        rows.iter().map(|r| r.value).fold(f64::MIN, f64::max),
        81_003.0
    );

    let last = rows.last().unwrap();
    assert_eq!(last.line, 2_471);
    assert_eq!(last.metric.as_str(), "DCGM_FI_DEV_MEM_CLOCK");
    assert_eq!(
        last.info.uuid.as_str(),
        "GPU-6babf988-9820-274a-1df1-585720ae19cf"
    );
    assert_eq!(last.info.hostname.as_deref(), Some("mtv5-dgx1-hgpu-026"));
    assert_eq!(last.info.gpu_index, Some(6));
    assert_eq!(last.value, 2_619.0);
}

#[test]
fn real_file_gpu_info_is_identical_on_every_row_of_a_gpu() {
    // The batch builder keeps the first GpuInfo per UUID; that is only lossless if the reader
    // produces the same GpuInfo for every row of a GPU.
    let mut per_gpu: HashMap<String, GpuInfo> = HashMap::new();
    let mut rows_per_gpu: HashMap<String, usize> = HashMap::new();
    for row in rows(REAL_FILE) {
        let key = row.info.uuid.to_string();
        *rows_per_gpu.entry(key.clone()).or_default() += 1;
        let first = per_gpu.entry(key).or_insert_with(|| row.info.clone());
        assert_eq!(*first, row.info, "line {}", row.line);
    }
    assert_eq!(per_gpu.len(), 247);
    assert!(rows_per_gpu.values().all(|&n| n == 10));
    let mut gpus_per_host: HashMap<&str, usize> = HashMap::new();
    for info in per_gpu.values() {
        *gpus_per_host
            .entry(info.hostname.as_deref().unwrap())
            .or_default() += 1;
    }
    let mut sizes: Vec<usize> = gpus_per_host.values().copied().collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [[7].as_slice(), &[8; 30]].concat());
}

#[test]
fn slice_of_100_rows_has_exact_counts() {
    let summary = summarize(DcgmCsvReader::open(testdata("dcgm-slice-100.csv")).unwrap());
    assert_eq!(summary.rows_total, 100);
    assert_eq!(summary.rows_ok, 100);
    assert_eq!(summary.rows_bad, 0);
    assert_eq!(summary.rows_blank, 0);
    assert_eq!(summary.gpus, 100);
    assert_eq!(summary.hosts, 14);
    assert_eq!(summary.metrics, 1);
    let rows = rows("dcgm-slice-100.csv");
    assert_eq!(rows.iter().map(|r| r.value).sum::<f64>(), 5_429.0);
    assert_eq!(rows[99].line, 101);
}
