//! Round trips of `BatchEvent` through its own JSON and through `cloudevents-sdk`, and the wire
//! size of a batch built from the real data.

use std::collections::HashMap;

use cloudevents::{AttributesReader, Data};
use proptest::prelude::*;
use telemetry_model::{
    BatchEvent, DataEncoding, DcgmCsvReader, GpuInfo, GpuUuid, MetricName, RowOutcome, SampleBatch,
    TimestampMicros,
};
use test_support::{testdata, REAL_CSV};

/// `PartialEq` on f64 treats -0.0 and 0.0 as equal; the wire format must keep the sign, so rows
/// are also compared bit for bit.
fn assert_same_event(actual: &BatchEvent, expected: &BatchEvent) {
    assert_eq!(actual, expected);
    let bits =
        |ev: &BatchEvent| -> Vec<u64> { ev.batch.rows.iter().map(|r| r.value.to_bits()).collect() };
    assert_eq!(bits(actual), bits(expected));
}

fn gpu_info() -> impl Strategy<Value = GpuInfo> {
    let text = || proptest::option::of("\\PC{1,24}");
    (
        "[A-Za-z0-9_-]{1,64}",
        proptest::option::of(any::<u32>()),
        (text(), text(), text()),
        (text(), text(), text()),
        proptest::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,12}", ".{0,24}", 0..4),
    )
        .prop_map(
            |(
                uuid,
                gpu_index,
                (device, model_name, hostname),
                (container, pod, namespace),
                labels,
            )| {
                GpuInfo {
                    uuid: GpuUuid::parse(&uuid).unwrap(),
                    gpu_index,
                    device,
                    model_name,
                    hostname,
                    container,
                    pod,
                    namespace,
                    labels,
                }
            },
        )
}

fn finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    prop_oneof![
        POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO,
        Just(-0.0),
        Just(0.0),
        Just(f64::MAX),
        Just(f64::MIN),
        Just(f64::MIN_POSITIVE),
        Just(f64::from_bits(1)),
        Just(9_007_199_254_740_992.0),
        Just(-9_007_199_254_740_993.0),
        Just(1e300),
        (-1_000_000i64..1_000_000).prop_map(|i| i as f64),
        (0u32..100_000).prop_map(|i| f64::from(i) / 1000.0),
    ]
}

fn timestamp() -> impl Strategy<Value = TimestampMicros> {
    (TimestampMicros::RFC3339_MIN.0..=TimestampMicros::RFC3339_MAX.0).prop_map(TimestampMicros)
}

fn batch() -> impl Strategy<Value = SampleBatch> {
    (
        proptest::collection::vec(gpu_info(), 1..6),
        proptest::collection::vec("[A-Za-z_:][A-Za-z0-9_:]{0,40}", 1..5),
        // Timestamps cluster around one base, as a real batch does, but some rows use the full
        // range so offsets from t0 can be as large as the format allows.
        timestamp(),
    )
        .prop_flat_map(|(gpus, metrics, base)| {
            let (g, m) = (gpus.len(), metrics.len());
            let row = (
                0..g,
                0..m,
                prop_oneof![
                    4 => (0i64..10_000_000).prop_map(move |d| TimestampMicros(
                        base.0.saturating_add(d).min(TimestampMicros::RFC3339_MAX.0)
                    )),
                    1 => timestamp(),
                ],
                finite_f64(),
            );
            (
                Just(gpus),
                Just(metrics),
                proptest::collection::vec(row, 0..40),
            )
        })
        .prop_map(|(gpus, metrics, rows)| {
            let metrics: Vec<MetricName> = metrics
                .iter()
                .map(|m| MetricName::parse(m).unwrap())
                .collect();
            let mut builder = SampleBatch::builder();
            for (g, m, ts, v) in rows {
                builder.push(&gpus[g], &metrics[m], ts, v);
            }
            builder.build()
        })
}

fn batch_event() -> impl Strategy<Value = BatchEvent> {
    ("[A-Za-z0-9-]{1,36}", "\\PC{1,40}", timestamp(), batch()).prop_map(
        |(id, source, time, batch)| BatchEvent {
            id,
            source,
            time,
            batch,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Integration tests have no lib.rs for proptest to anchor regression files to.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn json_round_trip_is_exact(event in batch_event()) {
        let json = event.to_json();
        let back = BatchEvent::from_json(&json).unwrap();
        assert_same_event(&back, &event);
        // Encoding is deterministic, so an identical batch re-encodes to identical bytes.
        prop_assert_eq!(back.to_json(), json);
    }

    #[test]
    fn frame_round_trip_is_exact(event in batch_event()) {
        for encoding in [DataEncoding::Json, DataEncoding::Columnar] {
            let frame = event.to_frame(encoding);
            let back = BatchEvent::from_queue_message(&frame).unwrap();
            assert_same_event(&back, &event);
            prop_assert_eq!(back.to_frame(encoding), frame);
        }
        // A structured JSON event is still a valid queue message.
        assert_same_event(&BatchEvent::from_queue_message(&event.to_json()).unwrap(), &event);
    }

    #[test]
    fn cloudevent_round_trip_is_exact(event in batch_event()) {
        let back = BatchEvent::from_cloudevent(event.to_cloudevent()).unwrap();
        assert_same_event(&back, &event);
    }

    #[test]
    fn sdk_reads_our_json_and_we_read_the_sdks(event in batch_event()) {
        let parsed: cloudevents::Event = serde_json::from_slice(&event.to_json()).unwrap();
        let back = BatchEvent::from_cloudevent(parsed.clone()).unwrap();
        assert_same_event(&back, &event);

        let sdk_json = serde_json::to_vec(&parsed).unwrap();
        let back = BatchEvent::from_json(&sdk_json).unwrap();
        assert_same_event(&back, &event);
    }
}

#[test]
fn sdk_deserializer_sees_a_structured_json_event() {
    let mut builder = SampleBatch::builder();
    let gpu = GpuInfo::new(GpuUuid::parse("GPU-5fd4f087-86f3-7a43-b711-4771313afc50").unwrap());
    let metric = MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap();
    builder.push(&gpu, &metric, TimestampMicros(1_752_871_354_000_000), 87.0);
    let mut event = BatchEvent::new("batch-42", "/streamer/3", builder.build());
    event.time = TimestampMicros(1_752_871_354_500_000);

    let parsed: cloudevents::Event = serde_json::from_slice(&event.to_json()).unwrap();
    assert_eq!(parsed.specversion(), cloudevents::event::SpecVersion::V10);
    assert_eq!(parsed.id(), "batch-42");
    assert_eq!(parsed.source(), "/streamer/3");
    assert_eq!(parsed.ty(), "io.gpu-telemetry.samples.batch.v1");
    assert_eq!(parsed.datacontenttype(), Some("application/json"));
    assert_eq!(
        parsed.time().unwrap().to_rfc3339(),
        "2025-07-18T20:42:34.500+00:00"
    );
    assert_eq!(
        parsed.data(),
        Some(&Data::Json(serde_json::json!({
            "gpus": [{"uuid": "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"}],
            "metrics": ["DCGM_FI_DEV_GPU_UTIL"],
            "t0": 1_752_871_354_000_000i64,
            "rows": [[0, 0, 0, 87]],
        })))
    );
    assert_eq!(BatchEvent::from_cloudevent(parsed).unwrap(), event);
}

/// The real file's rows grouped per GPU, in file order of first appearance.
fn real_rows_by_gpu() -> Vec<(GpuInfo, Vec<(MetricName, f64)>)> {
    let mut order: Vec<GpuInfo> = Vec::new();
    let mut samples: HashMap<GpuUuid, Vec<(MetricName, f64)>> = HashMap::new();
    for outcome in DcgmCsvReader::open(testdata(REAL_CSV)).unwrap() {
        let RowOutcome::Row(row) = outcome else {
            panic!("unexpected {outcome:?}");
        };
        let entry = samples.entry(row.info.uuid.clone()).or_insert_with(|| {
            order.push(row.info.clone());
            Vec::new()
        });
        entry.push((row.metric, row.value));
    }
    order
        .into_iter()
        .map(|info| {
            let s = samples.remove(&info.uuid).unwrap();
            (info, s)
        })
        .collect()
}

#[test]
fn real_batch_of_160_samples_costs_under_48_bytes_each() {
    // A streamer partition batch: 16 GPUs x 10 metrics, stamped 250 µs apart as the rows are
    // processed.
    let per_gpu = real_rows_by_gpu();
    assert_eq!(per_gpu.len(), 247);
    let mut builder = SampleBatch::builder();
    let base = 1_752_871_354_000_000;
    let mut i = 0;
    for (info, samples) in per_gpu.iter().take(16) {
        assert_eq!(samples.len(), 10);
        for (metric, value) in samples {
            builder.push(info, metric, TimestampMicros(base + i * 250), *value);
            i += 1;
        }
    }
    let batch = builder.build();
    assert_eq!(
        (batch.len(), batch.gpus.len(), batch.metrics.len()),
        (160, 16, 10)
    );

    let mut event = BatchEvent::new("0f8e2a4c-6b1d-4e7a-9c3f-2d5b8a1e7c40", "/streamer/0", batch);
    event.time = TimestampMicros(base + 40_000);
    let json = event.to_json();
    let bytes_per_sample = json.len() as f64 / 160.0;
    println!(
        "160-sample batch: {} bytes, {bytes_per_sample:.1} bytes/sample",
        json.len()
    );
    assert!(bytes_per_sample < 48.0, "{bytes_per_sample} bytes/sample");
    assert_same_event(&BatchEvent::from_json(&json).unwrap(), &event);
}
