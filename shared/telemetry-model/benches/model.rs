//! Benchmarks of CSV parsing and batch encoding/decoding (JSON events, and the queue's binary
//! frames with columnar data) on the real DCGM data, with a JSON
//! summary written to `<target>/bench/model.json`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use serde_json::json;
use telemetry_model::{
    BatchEvent, CsvRow, DataEncoding, DcgmCsvReader, RowOutcome, SampleBatch, TimestampMicros,
};

const REAL_FILE: &str = "dcgm_metrics_20250718_134233.csv";
const COPIES: usize = 20;
/// Timed runs per figure in the JSON summary; the median is reported.
const RUNS: usize = 15;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                manifest_dir().join("../..").join(dir)
            }
        }
        None => manifest_dir().join("../../target"),
    }
}

/// The real file with its body repeated `COPIES` times under one header.
fn looped_csv() -> Vec<u8> {
    let file = std::fs::read(manifest_dir().join("../../testdata").join(REAL_FILE)).unwrap();
    let header_end = file.iter().position(|&b| b == b'\n').unwrap() + 1;
    let (header, body) = file.split_at(header_end);
    let mut out = Vec::with_capacity(header.len() + body.len() * COPIES);
    out.extend_from_slice(header);
    for _ in 0..COPIES {
        out.extend_from_slice(body);
    }
    out
}

fn parse_all(data: &[u8]) -> usize {
    DcgmCsvReader::new(data)
        .unwrap()
        .filter(|o| matches!(o, RowOutcome::Row(_)))
        .count()
}

fn real_rows() -> Vec<CsvRow> {
    DcgmCsvReader::open(manifest_dir().join("../../testdata").join(REAL_FILE))
        .unwrap()
        .map(|o| match o {
            RowOutcome::Row(r) => r,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

/// A streamer-like partition batch: `gpus` GPUs with all their metrics, stamped 250 µs apart.
fn batch_event(rows: &[CsvRow], gpus: usize) -> BatchEvent {
    let mut uuids: Vec<_> = Vec::new();
    for r in rows {
        if !uuids.contains(&&r.info.uuid) {
            uuids.push(&r.info.uuid);
            if uuids.len() == gpus {
                break;
            }
        }
    }
    let base = 1_752_871_354_000_000;
    let mut builder = SampleBatch::builder();
    for (i, r) in rows
        .iter()
        .filter(|r| uuids.contains(&&r.info.uuid))
        .enumerate()
    {
        builder.push(
            &r.info,
            &r.metric,
            TimestampMicros(base + i as i64 * 250),
            r.value,
        );
    }
    let mut event = BatchEvent::new(
        "0f8e2a4c-6b1d-4e7a-9c3f-2d5b8a1e7c40",
        "/streamer/0",
        builder.build(),
    );
    event.time = TimestampMicros(base);
    event
}

/// Median wall time of one call of `f`, over `RUNS` runs of `inner` calls each.
fn median_ns(inner: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..inner {
                f();
            }
            start.elapsed().as_nanos() as f64 / inner as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[RUNS / 2]
}

fn criterion_benches(c: &mut Criterion, csv: &[u8], small: &BatchEvent, full: &BatchEvent) {
    let mut group = c.benchmark_group("csv");
    group.throughput(Throughput::Bytes(csv.len() as u64));
    group.sample_size(10);
    group.bench_function("parse_real_x20", |b| b.iter(|| parse_all(black_box(csv))));
    group.finish();

    for (label, event) in [("160", small), ("2470", full)] {
        let json = event.to_json();
        let mut group = c.benchmark_group(format!("batch_{label}"));
        group.throughput(Throughput::Elements(event.batch.len() as u64));
        group.bench_function("encode", |b| b.iter(|| black_box(event).to_json()));
        group.bench_function("decode", |b| {
            b.iter(|| BatchEvent::from_json(black_box(&json)).unwrap())
        });
        group.bench_function("sdk_decode", |b| {
            b.iter(|| {
                let ev: cloudevents::Event = serde_json::from_slice(black_box(&json)).unwrap();
                BatchEvent::from_cloudevent(ev).unwrap()
            })
        });
        group.bench_function("to_cloudevent", |b| {
            b.iter(|| black_box(event).to_cloudevent())
        });
        group.finish();
    }
}

fn summary(csv: &[u8], small: &BatchEvent, full: &BatchEvent) -> serde_json::Value {
    let rows = parse_all(csv);
    let csv_ns = median_ns(1, || {
        black_box(parse_all(black_box(csv)));
    });
    let mut results = vec![json!({
        "name": "csv_parse",
        "copies": COPIES,
        "rows": rows,
        "bytes": csv.len(),
        "median_ns_per_iter": csv_ns,
        "rows_per_s": rows as f64 / (csv_ns / 1e9),
        "mb_per_s": csv.len() as f64 / 1e6 / (csv_ns / 1e9),
    })];
    // The streamer-sized batch is the headline; the whole file in one batch shows how the cost
    // scales.
    for (suffix, event) in [("", small), ("_full_file", full)] {
        let samples = event.batch.len();
        let json = event.to_json();
        let inner = (200_000 / samples).max(10);
        let encode_ns = median_ns(inner, || {
            black_box(black_box(event).to_json());
        });
        let decode_ns = median_ns(inner, || {
            black_box(BatchEvent::from_json(black_box(&json)).unwrap());
        });
        let sdk_ns = median_ns(inner, || {
            let ev: cloudevents::Event = serde_json::from_slice(black_box(&json)).unwrap();
            black_box(BatchEvent::from_cloudevent(ev).unwrap());
        });
        // The queue's default form: the binary frame with columnar data.
        let frame = event.to_frame(DataEncoding::Columnar);
        let frame_encode_ns = median_ns(inner, || {
            black_box(black_box(event).to_frame(DataEncoding::Columnar));
        });
        let frame_decode_ns = median_ns(inner, || {
            black_box(BatchEvent::from_queue_message(black_box(&frame)).unwrap());
        });
        let per_s = |ns: f64| samples as f64 / (ns / 1e9);
        let common = json!({
            "samples": samples,
            "gpus": event.batch.gpus.len(),
            "bytes": json.len(),
            "bytes_per_sample": json.len() as f64 / samples as f64,
        });
        for (name, ns) in [
            ("batch_encode", encode_ns),
            ("batch_decode", decode_ns),
            ("batch_decode_via_sdk", sdk_ns),
            ("frame_encode", frame_encode_ns),
            ("frame_decode", frame_decode_ns),
        ] {
            let mut entry = common.clone();
            if name.starts_with("frame") {
                entry["bytes"] = json!(frame.len());
                entry["bytes_per_sample"] = json!(frame.len() as f64 / samples as f64);
            }
            entry["name"] = json!(format!("{name}{suffix}"));
            entry["median_ns_per_iter"] = json!(ns);
            entry["samples_per_s"] = json!(per_s(ns));
            results.push(entry);
        }
    }
    json!({"bench": "model", "runs": RUNS, "results": results})
}

fn main() {
    let csv = looped_csv();
    let rows = real_rows();
    let small = batch_event(&rows, 16);
    let full = batch_event(&rows, 247);
    assert_eq!(parse_all(&csv), rows.len() * COPIES);
    assert_eq!((small.batch.len(), full.batch.len()), (160, 2_470));

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    criterion_benches(&mut c, &csv, &small, &full);
    c.final_summary();

    // `cargo test --benches` runs this binary without `--bench` to smoke-test it; only a real
    // benchmark run writes figures.
    if std::env::args().any(|a| a == "--bench") {
        let report = summary(&csv, &small, &full);
        let dir = target_dir().join("bench");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
        println!("wrote {}", path.display());
    }
}
