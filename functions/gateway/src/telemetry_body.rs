//! The bodies of `GET /api/v1/gpus/{id}/telemetry`, made straight from the store's pages and
//! written by hand, byte for byte what serde makes of the DTOs: the entry list (a
//! [`TelemetryPage`](crate::dto::TelemetryPage)) without a `String` per timestamp and per metric
//! name, and the series form (a [`TelemetrySeriesPage`](crate::dto::TelemetrySeriesPage)) from
//! the store's per-metric columns, without copying them into DTOs.
//!
//! A page of 10,000 entries is about a megabyte of JSON; building it as DTOs first spent most of
//! the request formatting each timestamp through chrono and copying the strings around.

use telemetry_model::TimestampMicros;
use telemetry_store::{Cursor, MetricSlots, SeriesPage, StoredSample};

use crate::dto::GpuSummary;

/// Bytes of JSON an entry takes, about: enough to size the body once.
const ENTRY_BYTES: usize = 96;
/// Bytes of JSON a point of a series takes, about (a 16-digit timestamp, a short value).
const SERIES_POINT_BYTES: usize = 24;

/// One page of samples of one GPU, in the shape it is written in.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryAnswer {
    pub gpu: GpuSummary,
    pub rows: TelemetryRows,
}

/// A page's samples: an entry list, or per metric.
#[derive(Debug, Clone, PartialEq)]
pub enum TelemetryRows {
    Entries {
        /// In the page's order: by time (ties by metric name), ascending unless `order=desc`.
        samples: Vec<StoredSample>,
        next_cursor: Option<Cursor>,
    },
    Series(SeriesPage),
}

impl TelemetryAnswer {
    /// The body: a [`TelemetryPage`](crate::dto::TelemetryPage) or a
    /// [`TelemetrySeriesPage`](crate::dto::TelemetrySeriesPage) as JSON.
    pub fn json(&self) -> Vec<u8> {
        match &self.rows {
            TelemetryRows::Entries {
                samples,
                next_cursor,
            } => self.entries_json(samples, next_cursor.as_ref()),
            TelemetryRows::Series(page) => self.series_json(page),
        }
    }

    /// `{"gpu":...,"entries":[...],"count":n,"next_cursor":...}`.
    fn entries_json(&self, samples: &[StoredSample], next_cursor: Option<&Cursor>) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024 + samples.len() * ENTRY_BYTES);
        out.extend_from_slice(b"{\"gpu\":");
        serde_json::to_writer(&mut out, &self.gpu).expect("a GPU summary serializes");
        out.extend_from_slice(b",\"entries\":[");
        let mut times = Rfc3339Writer::default();
        // Each metric's name as JSON, written once per page.
        let mut slots = MetricSlots::default();
        let mut names: Vec<Vec<u8>> = Vec::new();
        for (i, sample) in samples.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"timestamp\":\"");
            times.write(sample.timestamp, &mut out);
            out.extend_from_slice(b"\",\"metric_name\":");
            let slot = slots.slot(&sample.metric);
            if slot == names.len() {
                let mut name = Vec::new();
                write_json_string(&sample.metric, &mut name);
                names.push(name);
            }
            out.extend_from_slice(&names[slot]);
            out.extend_from_slice(b",\"value\":");
            // serde_json's own float writing (and its `null` for a non-finite value).
            serde_json::to_writer(&mut out, &sample.value).expect("a float serializes");
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"count\":");
        out.extend_from_slice(samples.len().to_string().as_bytes());
        write_cursor(next_cursor, &mut out);
        out
    }

    /// `{"gpu":...,"series":[{"metric_name":...,"timestamps_us":[...],"values":[...]},...],
    /// "count":n,"next_cursor":...}`.
    fn series_json(&self, page: &SeriesPage) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024 + page.count * SERIES_POINT_BYTES);
        out.extend_from_slice(b"{\"gpu\":");
        serde_json::to_writer(&mut out, &self.gpu).expect("a GPU summary serializes");
        out.extend_from_slice(b",\"series\":[");
        for (i, column) in page.series.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"metric_name\":");
            write_json_string(&column.metric, &mut out);
            out.extend_from_slice(b",\"timestamps_us\":");
            write_integers(&column.timestamps, &mut out);
            out.extend_from_slice(b",\"values\":");
            write_floats(&column.values, &mut out);
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"count\":");
        out.extend_from_slice(page.count.to_string().as_bytes());
        write_cursor(page.next_cursor.as_ref(), &mut out);
        out
    }
}

/// `,"next_cursor":...}`: the end of either body.
fn write_cursor(next_cursor: Option<&Cursor>, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"next_cursor\":");
    match next_cursor {
        Some(cursor) => write_json_string(&cursor.encode(), out),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
}

/// `values` as serde_json writes a `Vec<i64>` (with the same formatter, without its writer's
/// overhead per number).
fn write_integers(values: &[i64], out: &mut Vec<u8>) {
    let mut text = itoa::Buffer::new();
    out.push(b'[');
    for (i, &value) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(text.format(value).as_bytes());
    }
    out.push(b']');
}

/// Integers below this in magnitude are exact in f64 and written in full by serde_json.
const EXACT_INTEGER_LIMIT: f64 = (1u64 << 53) as f64;

/// `values` as serde_json writes a `Vec<f64>`: `null` for a value that is not finite, else its
/// shortest form through the formatter serde_json uses (`zmij`). Most telemetry is whole
/// numbers, whose shortest form is the integer and `.0`: those are written as integers.
fn write_floats(values: &[f64], out: &mut Vec<u8>) {
    let mut integer = itoa::Buffer::new();
    let mut float = zmij::Buffer::new();
    out.push(b'[');
    for (i, &value) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if value.fract() == 0.0
            && value.abs() < EXACT_INTEGER_LIMIT
            && !(value == 0.0 && value.is_sign_negative())
        {
            out.extend_from_slice(integer.format(value as i64).as_bytes());
            out.extend_from_slice(b".0");
        } else if value.is_finite() {
            out.extend_from_slice(float.format_finite(value).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
    }
    out.push(b']');
}

/// `text` as a JSON string. Metric names and cursors never need escaping; anything else goes
/// through serde_json.
fn write_json_string(text: &str, out: &mut Vec<u8>) {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-'));
    if plain {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out, text).expect("a string serializes");
    }
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Writes times as [`TimestampMicros::to_rfc3339`] does, remembering the last one and the date
/// of the last day: a page's samples share timestamps (one per metric) and days, so the calendar
/// is consulted once per day and the time of day is plain arithmetic.
#[derive(Debug, Default)]
struct Rfc3339Writer {
    /// The last time written and its text.
    last: Option<(i64, [u8; 27])>,
    /// A day (since the epoch) and its `YYYY-MM-DDT`.
    day: Option<(i64, [u8; 11])>,
}

impl Rfc3339Writer {
    fn write(&mut self, timestamp: TimestampMicros, out: &mut Vec<u8>) {
        if let Some((at, text)) = &self.last {
            if *at == timestamp.0 {
                out.extend_from_slice(text);
                return;
            }
        }
        if !timestamp.is_rfc3339_representable() {
            out.extend_from_slice(timestamp.to_rfc3339().as_bytes());
            return;
        }
        let day = timestamp.0.div_euclid(MICROS_PER_DAY);
        let date = match self.day {
            Some((cached, date)) if cached == day => date,
            _ => {
                let midnight = TimestampMicros(day * MICROS_PER_DAY).to_rfc3339();
                let mut date = [0u8; 11];
                date.copy_from_slice(&midnight.as_bytes()[..11]);
                self.day = Some((day, date));
                date
            }
        };
        let of_day = timestamp.0.rem_euclid(MICROS_PER_DAY);
        let (seconds, micros) = (of_day / 1_000_000, of_day % 1_000_000);
        let mut text = [0u8; 27];
        text[..11].copy_from_slice(&date);
        two_digits(&mut text[11..13], seconds / 3600);
        text[13] = b':';
        two_digits(&mut text[14..16], seconds / 60 % 60);
        text[16] = b':';
        two_digits(&mut text[17..19], seconds % 60);
        text[19] = b'.';
        let mut rest = micros;
        for digit in text[20..26].iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        text[26] = b'Z';
        out.extend_from_slice(&text);
        self.last = Some((timestamp.0, text));
    }
}

fn two_digits(out: &mut [u8], value: i64) {
    out[0] = b'0' + (value / 10) as u8;
    out[1] = b'0' + (value % 10) as u8;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use telemetry_model::MetricName;

    use super::*;
    use crate::dto::{MetricSeries, TelemetryEntry, TelemetryPage, TelemetrySeriesPage};

    fn gpu() -> GpuSummary {
        GpuSummary {
            uuid: "GPU-1".into(),
            gpu_id: Some(0),
            device: Some("nvidia0".into()),
            model_name: Some("NVIDIA \"H100\"".into()),
            hostname: None,
            first_seen: TimestampMicros(0).to_rfc3339(),
            last_seen: TimestampMicros(1).to_rfc3339(),
            metrics: vec!["A".into()],
        }
    }

    fn answer(samples: Vec<StoredSample>, next_cursor: Option<Cursor>) -> TelemetryAnswer {
        TelemetryAnswer {
            gpu: gpu(),
            rows: TelemetryRows::Entries {
                samples,
                next_cursor,
            },
        }
    }

    /// What serde makes of the same page built as DTOs.
    fn serde_entries(answer: &TelemetryAnswer) -> Vec<u8> {
        let TelemetryRows::Entries {
            samples,
            next_cursor,
        } = &answer.rows
        else {
            panic!("an entry page");
        };
        let entries: Vec<TelemetryEntry> = samples.iter().map(TelemetryEntry::from).collect();
        serde_json::to_vec(&TelemetryPage {
            gpu: answer.gpu.clone(),
            count: entries.len(),
            entries,
            next_cursor: next_cursor.as_ref().map(Cursor::encode),
        })
        .unwrap()
    }

    /// A series page of `samples` (in page order), as the aggregated reads make it.
    fn series_answer(samples: Vec<StoredSample>, next_cursor: Option<Cursor>) -> TelemetryAnswer {
        TelemetryAnswer {
            gpu: gpu(),
            rows: TelemetryRows::Series(SeriesPage::from_entries(samples, next_cursor, usize::MAX)),
        }
    }

    /// What serde makes of the same series page built as DTOs.
    fn serde_series(answer: &TelemetryAnswer) -> Vec<u8> {
        let TelemetryRows::Series(page) = &answer.rows else {
            panic!("a series page");
        };
        serde_json::to_vec(&TelemetrySeriesPage {
            gpu: answer.gpu.clone(),
            series: page
                .series
                .iter()
                .map(|column| MetricSeries {
                    metric_name: column.metric.to_string(),
                    timestamps_us: column.timestamps.clone(),
                    values: column.values.clone(),
                })
                .collect(),
            count: page.count,
            next_cursor: page.next_cursor.as_ref().map(Cursor::encode),
        })
        .unwrap()
    }

    fn sample(timestamp: i64, metric: &str, value: f64) -> StoredSample {
        StoredSample {
            timestamp: TimestampMicros(timestamp),
            metric: Arc::from(metric),
            value,
        }
    }

    #[test]
    fn times_are_written_as_to_rfc3339_writes_them() {
        let mut writer = Rfc3339Writer::default();
        for at in [
            0,
            -1,
            1,
            1_752_871_354_000_000,
            1_752_871_354_000_000,
            1_752_871_354_123_456,
            1_752_883_199_999_999,
            1_752_883_200_000_000,
            -MICROS_PER_DAY,
            -MICROS_PER_DAY - 1,
            TimestampMicros::RFC3339_MIN.0,
            TimestampMicros::RFC3339_MAX.0,
            TimestampMicros::RFC3339_MAX.0 + 1,
            TimestampMicros::RFC3339_MIN.0 - 1,
            i64::MAX,
            i64::MIN,
        ] {
            let mut out = Vec::new();
            writer.write(TimestampMicros(at), &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                TimestampMicros(at).to_rfc3339(),
                "{at}"
            );
        }
    }

    #[test]
    fn an_empty_page_and_a_page_with_a_cursor_match_serde() {
        let empty = answer(Vec::new(), None);
        assert_eq!(empty.json(), serde_entries(&empty));
        let cursor = Cursor {
            timestamp: TimestampMicros(-5),
            metric: MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap(),
        };
        let page = answer(
            vec![
                sample(-5, "DCGM_FI_DEV_GPU_UTIL", f64::NAN),
                sample(7, "odd \"name\"\n", f64::INFINITY),
            ],
            Some(cursor),
        );
        assert_eq!(page.json(), serde_entries(&page));
    }

    #[test]
    fn an_empty_series_page_and_one_with_a_cursor_match_serde() {
        let empty = series_answer(Vec::new(), None);
        assert_eq!(empty.json(), serde_series(&empty));
        let cursor = Cursor {
            timestamp: TimestampMicros(7),
            metric: MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap(),
        };
        let page = series_answer(
            vec![
                sample(-5, "DCGM_FI_DEV_GPU_UTIL", f64::NAN),
                sample(7, "odd \"name\"\n", f64::INFINITY),
                sample(7, "DCGM_FI_DEV_GPU_UTIL", -0.0),
            ],
            Some(cursor),
        );
        assert_eq!(page.json(), serde_series(&page));
    }

    #[test]
    fn series_keep_each_metric_in_page_order_with_values_bit_exact() {
        let page = answer(
            vec![
                sample(3, "B", 0.1),
                sample(3, "A", -0.0),
                sample(2, "B", 1e-300),
                sample(1, "A", f64::MAX),
            ],
            None,
        );
        let page = series_answer(
            match page.rows {
                TelemetryRows::Entries { samples, .. } => samples,
                TelemetryRows::Series(_) => unreachable!(),
            },
            None,
        );
        let series: TelemetrySeriesPage = serde_json::from_slice(&page.json()).unwrap();
        assert_eq!(series.count, 4);
        let names: Vec<&str> = series
            .series
            .iter()
            .map(|s| s.metric_name.as_str())
            .collect();
        assert_eq!(names, ["A", "B"]);
        assert_eq!(series.series[0].timestamps_us, [3, 1]);
        assert_eq!(series.series[1].timestamps_us, [3, 2]);
        let parsed = series;
        let bits = |s: &MetricSeries| s.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&parsed.series[0]),
            [(-0.0f64).to_bits(), f64::MAX.to_bits()]
        );
        assert_eq!(
            bits(&parsed.series[1]),
            [0.1f64.to_bits(), 1e-300f64.to_bits()]
        );
    }

    #[test]
    fn numbers_are_written_as_serde_writes_them() {
        let mut floats = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            87.0,
            1e15,
            9_999_999_999_999_998.0,
            EXACT_INTEGER_LIMIT - 1.0,
            EXACT_INTEGER_LIMIT,
            -EXACT_INTEGER_LIMIT + 1.0,
            1e16,
            1e17,
            1e300,
            5e-324,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for exponent in 0..64 {
            let power = 2f64.powi(exponent);
            floats.extend([power, power - 1.0, power + 1.0, -power, power / 3.0]);
        }
        let mut out = Vec::new();
        write_floats(&floats, &mut out);
        assert_eq!(out, serde_json::to_vec(&floats).unwrap());
        let integers = [0, 1, -1, i64::MIN, i64::MAX, 1_752_871_354_000_000];
        let mut out = Vec::new();
        write_integers(&integers, &mut out);
        assert_eq!(out, serde_json::to_vec(&integers).unwrap());
        let mut out = Vec::new();
        write_floats(&[], &mut out);
        assert_eq!(out, b"[]");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn numbers_of_any_bits_are_written_as_serde_writes_them(
            bits in proptest::collection::vec(any::<u64>(), 0..20),
            whole in proptest::collection::vec(-(1i64 << 54)..(1i64 << 54), 0..20),
            scaled in proptest::collection::vec((-1_000_000i64..1_000_000, 0u32..6), 0..20),
            integers in proptest::collection::vec(any::<i64>(), 0..20),
        ) {
            let floats: Vec<f64> = bits
                .iter()
                .map(|&b| f64::from_bits(b))
                .chain(whole.iter().map(|&w| w as f64))
                .chain(scaled.iter().map(|&(m, e)| m as f64 / 10f64.powi(e as i32)))
                .collect();
            let mut out = Vec::new();
            write_floats(&floats, &mut out);
            prop_assert_eq!(out, serde_json::to_vec(&floats).unwrap());
            let mut out = Vec::new();
            write_integers(&integers, &mut out);
            prop_assert_eq!(out, serde_json::to_vec(&integers).unwrap());
        }

        #[test]
        fn entries_are_byte_for_byte_what_serde_writes(
            start in TimestampMicros::RFC3339_MIN.0..TimestampMicros::RFC3339_MAX.0 - 1_000_000_000_000,
            steps in proptest::collection::vec((0i64..200_000_000_000, 0usize..3, any::<u64>()), 0..40),
        ) {
            let metrics = ["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_POWER_USAGE", "X:y"];
            let mut at = start;
            let samples: Vec<StoredSample> = steps
                .iter()
                .map(|(gap, metric, bits)| {
                    at += gap;
                    sample(at, metrics[*metric], f64::from_bits(*bits))
                })
                .collect();
            let page = answer(samples.clone(), None);
            prop_assert_eq!(page.json(), serde_entries(&page));
            let page = series_answer(samples, None);
            prop_assert_eq!(page.json(), serde_series(&page));
        }
    }
}
