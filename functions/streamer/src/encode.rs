//! Sample batches as the queue carries them: each batch one CloudEvent ([`BatchEvent`]) with a
//! fresh id, from this streamer's source: columnar data in the queue's binary event form, or a
//! structured JSON event with JSON data.

use std::sync::Arc;

use etcd_queue::OutgoingMessage;
use telemetry_model::{BatchEvent, DataEncoding, SampleBatch};

/// The CloudEvents `source` of the events streamer `member_id` publishes.
pub fn source(member_id: &str) -> Arc<str> {
    format!("/streamer/{member_id}").into()
}

/// Writes the events of one streamer.
#[derive(Debug, Clone)]
pub struct EventWriter {
    source: Arc<str>,
    encoding: DataEncoding,
}

impl EventWriter {
    pub fn new(source: Arc<str>, encoding: DataEncoding) -> Self {
        EventWriter { source, encoding }
    }

    /// One queue message per `(partition, batch)`, in order, each a new event. `bound` is the
    /// buffer's upper bound of the batches' JSON events, which the transaction was sized by: the
    /// binary columnar form is several times smaller for any real batch, but should a batch of
    /// odd GPUs and values come out larger, its part goes out as JSON, so it still fits.
    pub fn messages(&self, batches: Vec<(u32, SampleBatch)>, bound: usize) -> Vec<OutgoingMessage> {
        let events: Vec<(u32, BatchEvent)> = batches
            .into_iter()
            .map(|(partition, batch)| {
                let id = uuid::Uuid::new_v4().simple().to_string();
                (partition, BatchEvent::new(id, &*self.source, batch))
            })
            .collect();
        let encode = |encoding| -> Vec<OutgoingMessage> {
            events
                .iter()
                .map(|(partition, event)| OutgoingMessage {
                    partition: *partition,
                    payload: match encoding {
                        DataEncoding::Columnar => event.to_frame(encoding),
                        DataEncoding::Json => event.to_json(),
                    },
                })
                .collect()
        };
        let messages = encode(self.encoding);
        let bytes: usize = messages.iter().map(|m| m.payload.len()).sum();
        if self.encoding == DataEncoding::Json || bytes <= bound {
            return messages;
        }
        tracing::debug!(
            bytes,
            bound,
            "columnar events exceed the JSON bound; sending JSON"
        );
        encode(DataEncoding::Json)
    }
}

#[cfg(test)]
mod tests {
    use telemetry_model::{GpuInfo, GpuUuid, MetricName, TimestampMicros};

    use super::*;

    fn batch(samples: i64) -> SampleBatch {
        let gpu = GpuInfo::new(GpuUuid::parse("GPU-1").unwrap());
        let metric = MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap();
        let mut builder = SampleBatch::builder();
        for i in 0..samples {
            builder.push(&gpu, &metric, TimestampMicros(1_000 + i), 1.0);
        }
        builder.build()
    }

    /// Which form a message is in: the binary frame, or a structured event's content type.
    fn form(payload: &[u8]) -> String {
        if BatchEvent::is_frame(payload) {
            return "frame".to_owned();
        }
        let json: serde_json::Value = serde_json::from_slice(payload).unwrap();
        json["datacontenttype"].as_str().unwrap().to_owned()
    }

    #[test]
    fn each_batch_becomes_an_event_of_its_own() {
        let source = source("host-0123abcd");
        assert_eq!(&*source, "/streamer/host-0123abcd");
        for encoding in [DataEncoding::Json, DataEncoding::Columnar] {
            let writer = EventWriter::new(source.clone(), encoding);
            let messages = writer.messages(vec![(3, batch(2)), (0, batch(5))], usize::MAX);
            let shape: Vec<(u32, usize)> = messages
                .iter()
                .map(|m| {
                    let event = BatchEvent::from_queue_message(&m.payload).unwrap();
                    assert_eq!(event.source, "/streamer/host-0123abcd");
                    let expected = match encoding {
                        DataEncoding::Columnar => "frame",
                        DataEncoding::Json => "application/json",
                    };
                    assert_eq!(form(&m.payload), expected);
                    (m.partition, event.batch.len())
                })
                .collect();
            assert_eq!(shape, [(3, 2), (0, 5)]);
            let ids: Vec<String> = messages
                .iter()
                .map(|m| BatchEvent::from_queue_message(&m.payload).unwrap().id)
                .collect();
            assert_ne!(ids[0], ids[1], "every event has its own id");
        }
    }

    #[test]
    fn columnar_events_beyond_the_bound_go_out_as_json() {
        let writer = EventWriter::new(source("s"), DataEncoding::Columnar);
        let roomy = writer.messages(vec![(1, batch(3))], usize::MAX);
        assert_eq!(form(&roomy[0].payload), "frame");
        let tight = writer.messages(vec![(1, batch(3))], roomy[0].payload.len() - 1);
        assert_eq!(form(&tight[0].payload), "application/json");
        assert_eq!(
            BatchEvent::from_queue_message(&tight[0].payload)
                .unwrap()
                .batch,
            batch(3)
        );
    }
}
