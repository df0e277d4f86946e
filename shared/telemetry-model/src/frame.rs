//! The queue's binary form of a batch event, in the spirit of the CloudEvents binary content
//! mode: the attributes in a compact header, the data bytes raw after it. Beside the structured
//! JSON event it saves the JSON envelope and the base64 of `data_base64` (together about a third
//! of a columnar event).
//!
//! Layout (integers are unsigned LEB128 varints, the time zigzag-coded first):
//!
//! ```text
//! magic              0xC1 (never a byte of UTF-8, so no JSON event starts with it)
//! version            1 byte, 0x01; specversion is "1.0" and type BatchEvent::EVENT_TYPE
//! id                 1 byte kind, then: kind 0: byte length, UTF-8 bytes;
//!                    kind 1: 16 bytes, an id of 32 lowercase hex digits
//! source             byte length, UTF-8 bytes
//! time               microseconds since the Unix epoch
//! datacontenttype    1 byte: 0 application/json, 1 the columnar form
//! data               every byte after the header
//! ```

use crate::batch::{check_envelope, BatchError, BatchEvent, DataEncoding, WireBatch};
use crate::columnar;
use crate::time::TimestampMicros;
use crate::wire::{hex_bytes, push_hex, put_bytes, put_varint, unzigzag, zigzag, Input};

const MAGIC: u8 = 0xC1;
const VERSION: u8 = 1;
const ID_TEXT: u8 = 0;
const ID_HEX: u8 = 1;
const DATA_JSON: u8 = 0;
const DATA_COLUMNAR: u8 = 1;

impl BatchEvent {
    /// The event in the queue's binary form, its data in `encoding`.
    pub fn to_frame(&self, encoding: DataEncoding) -> Vec<u8> {
        let data = match encoding {
            DataEncoding::Json => serde_json::to_vec(&self.batch)
                .expect("serializing to a Vec with string map keys cannot fail"),
            DataEncoding::Columnar => columnar::encode(&self.batch),
        };
        let mut out = Vec::with_capacity(32 + self.id.len() + self.source.len() + data.len());
        out.push(MAGIC);
        out.push(VERSION);
        match hex_bytes(self.id.as_bytes()) {
            Some(raw) => {
                out.push(ID_HEX);
                out.extend_from_slice(&raw);
            }
            None => {
                out.push(ID_TEXT);
                put_bytes(&mut out, self.id.as_bytes());
            }
        }
        put_bytes(&mut out, self.source.as_bytes());
        put_varint(&mut out, zigzag(self.time.0));
        out.push(match encoding {
            DataEncoding::Json => DATA_JSON,
            DataEncoding::Columnar => DATA_COLUMNAR,
        });
        out.extend_from_slice(&data);
        out
    }

    /// Whether `bytes` are in the binary form (rather than a structured JSON event).
    pub fn is_frame(bytes: &[u8]) -> bool {
        bytes.first() == Some(&MAGIC)
    }

    /// Decodes and checks an event written by [`BatchEvent::to_frame`].
    pub fn from_frame(bytes: &[u8]) -> Result<Self, BatchError> {
        let mut input = Input::new(bytes, frame_error);
        if input.byte()? != MAGIC {
            return Err(input.error("not a framed event"));
        }
        let version = input.byte()?;
        if version != VERSION {
            return Err(input.error(format!("unsupported version {version}")));
        }
        let id = match input.byte()? {
            ID_TEXT => input.text()?.to_owned(),
            ID_HEX => input
                .take(16)?
                .iter()
                .fold(String::with_capacity(32), |mut id, b| {
                    push_hex(&mut id, *b);
                    id
                }),
            kind => return Err(input.error(format!("unknown id kind {kind}"))),
        };
        let source = input.text()?.to_owned();
        let time = TimestampMicros(unzigzag(input.varint()?));
        if !time.is_rfc3339_representable() {
            return Err(input.error(format!("time {} µs is out of range", time.0)));
        }
        let encoding = match input.byte()? {
            DATA_JSON => DataEncoding::Json,
            DATA_COLUMNAR => DataEncoding::Columnar,
            code => return Err(input.error(format!("unknown data content type {code}"))),
        };
        check_envelope(
            &id,
            &source,
            BatchEvent::EVENT_TYPE,
            Some(encoding.content_type()),
        )?;
        let data = input.rest();
        let batch = match encoding {
            DataEncoding::Json => serde_json::from_slice::<WireBatch>(data)?.into_batch()?,
            DataEncoding::Columnar => columnar::decode(data)?,
        };
        Ok(BatchEvent {
            id,
            source,
            time,
            batch,
        })
    }

    /// Decodes a queue message in any form producers write: the binary form, or a structured
    /// JSON event (either data encoding), as queues written before the binary form hold.
    pub fn from_queue_message(bytes: &[u8]) -> Result<Self, BatchError> {
        if Self::is_frame(bytes) {
            Self::from_frame(bytes)
        } else {
            Self::from_json(bytes)
        }
    }
}

fn frame_error(offset: usize, reason: String) -> BatchError {
    BatchError::DecodeFrame { offset, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::GpuInfo;
    use crate::ids::{GpuUuid, MetricName};
    use crate::SampleBatch;

    fn event(id: &str) -> BatchEvent {
        let mut gpu =
            GpuInfo::new(GpuUuid::parse("GPU-5fd4f087-86f3-7a43-b711-4771313afc50").unwrap());
        gpu.hostname = Some("mtv5-dgx1-hgpu-031".into());
        let metric = MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap();
        let mut builder = SampleBatch::builder();
        builder.push(&gpu, &metric, TimestampMicros(1_752_871_354_000_000), 87.0);
        builder.push(&gpu, &metric, TimestampMicros(1_752_871_354_000_004), -0.0);
        BatchEvent {
            id: id.into(),
            source: "/streamer/host-1".into(),
            time: TimestampMicros(1_752_871_354_500_000),
            batch: builder.build(),
        }
    }

    #[test]
    fn the_header_is_the_attributes_and_the_data_follows_raw() {
        let ev = event("0123456789abcdef0123456789abcdef");
        let frame = ev.to_frame(DataEncoding::Columnar);
        let data = columnar::encode(&ev.batch);
        // magic, version, id kind + 16 bytes, source, time, content type
        let header = 2 + 17 + 1 + ev.source.len() + 8 + 1;
        assert_eq!(frame.len(), header + data.len());
        assert_eq!(&frame[..3], &[MAGIC, VERSION, ID_HEX]);
        assert_eq!(&frame[3..19], &hex_bytes(ev.id.as_bytes()).unwrap());
        assert_eq!(frame[header - 1], DATA_COLUMNAR);
        assert_eq!(&frame[header..], &data[..]);
        assert!(BatchEvent::is_frame(&frame));
        assert!(!BatchEvent::is_frame(&ev.to_json()));
        let back = BatchEvent::from_frame(&frame).unwrap();
        assert_eq!(back, ev);
        assert!(back.batch.rows[1].value.is_sign_negative());

        let json_data = ev.to_frame(DataEncoding::Json);
        assert_eq!(json_data[header - 1], DATA_JSON);
        assert_eq!(
            &json_data[header..],
            &serde_json::to_vec(&ev.batch).unwrap()[..]
        );
        assert_eq!(BatchEvent::from_frame(&json_data).unwrap(), ev);
    }

    #[test]
    fn ids_that_are_not_lowercase_hex_travel_as_text() {
        for id in [
            "0123456789ABCDEF0123456789abcdef",
            "0f8e2a4c-6b1d-4e7a-9c3f-2d5b8a1e7c40",
            "batch-1",
            "0123456789abcdef0123456789abcdeg",
        ] {
            let ev = event(id);
            let frame = ev.to_frame(DataEncoding::Columnar);
            assert_eq!(frame[2], ID_TEXT, "{id}");
            assert_eq!(BatchEvent::from_frame(&frame).unwrap().id, id);
        }
    }

    #[test]
    fn corrupt_frames_are_errors_not_panics() {
        let ev = event("0123456789abcdef0123456789abcdef");
        let frame = ev.to_frame(DataEncoding::Columnar);
        for cut in 0..frame.len() {
            assert!(
                BatchEvent::from_queue_message(&frame[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let header = frame.len() - columnar::encode(&ev.batch).len();
        let with = |at: usize, byte: u8| {
            let mut bad = frame.clone();
            bad[at] = byte;
            BatchEvent::from_frame(&bad)
        };
        assert!(matches!(
            with(1, 2),
            Err(BatchError::DecodeFrame { offset: 2, .. })
        ));
        assert!(matches!(
            with(2, 7),
            Err(BatchError::DecodeFrame { offset: 3, .. })
        ));
        assert!(matches!(
            with(header - 1, 9),
            Err(BatchError::DecodeFrame { .. })
        ));
        assert!(matches!(
            with(header, 0),
            Err(BatchError::DecodeColumnar { .. })
        ));
        let mut trailing = frame.clone();
        trailing.push(0);
        assert!(matches!(
            BatchEvent::from_frame(&trailing),
            Err(BatchError::DecodeColumnar { .. })
        ));
        let mut unsourced = event("0123456789abcdef0123456789abcdef");
        unsourced.source.clear();
        assert!(matches!(
            BatchEvent::from_frame(&unsourced.to_frame(DataEncoding::Columnar)),
            Err(BatchError::CheckAttribute {
                attribute: "source"
            })
        ));
        let mut far = event("x");
        far.time = TimestampMicros(i64::MAX);
        assert!(matches!(
            BatchEvent::from_frame(&far.to_frame(DataEncoding::Columnar)),
            Err(BatchError::DecodeFrame { .. })
        ));
    }

    #[test]
    fn a_frame_is_a_fraction_of_the_structured_event() {
        let ev = event("0123456789abcdef0123456789abcdef");
        let structured = ev.to_json_with(DataEncoding::Columnar).len();
        let frame = ev.to_frame(DataEncoding::Columnar).len();
        // The envelope and base64 are most of a small event.
        assert!(
            frame * 2 < structured,
            "frame {frame}, structured {structured}"
        );
    }
}
