//! Sample batches as the queue carries them: each batch one CloudEvent ([`BatchEvent`]) with a
//! fresh id, from this streamer's source.

use std::sync::Arc;

use etcd_queue::OutgoingMessage;
use telemetry_model::{BatchEvent, SampleBatch};

/// The CloudEvents `source` of the events streamer `member_id` publishes.
pub fn source(member_id: &str) -> Arc<str> {
    format!("/streamer/{member_id}").into()
}

/// `batch` as the JSON of a new event from `source`.
pub fn event(source: &str, batch: SampleBatch) -> Vec<u8> {
    BatchEvent::new(uuid::Uuid::new_v4().simple().to_string(), source, batch).to_json()
}

/// One queue message per `(partition, batch)`, in order.
pub fn messages(source: &str, batches: Vec<(u32, SampleBatch)>) -> Vec<OutgoingMessage> {
    batches
        .into_iter()
        .map(|(partition, batch)| OutgoingMessage {
            partition,
            payload: event(source, batch),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use telemetry_model::{GpuInfo, GpuUuid, MetricName, TimestampMicros};

    use super::*;

    #[test]
    fn each_batch_becomes_an_event_of_its_own() {
        let gpu = GpuInfo::new(GpuUuid::parse("GPU-1").unwrap());
        let metric = MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap();
        let batch = |samples: i64| {
            let mut builder = SampleBatch::builder();
            for i in 0..samples {
                builder.push(&gpu, &metric, TimestampMicros(1_000 + i), 1.0);
            }
            builder.build()
        };
        let source = source("host-0123abcd");
        assert_eq!(&*source, "/streamer/host-0123abcd");
        let messages = messages(&source, vec![(3, batch(2)), (0, batch(5))]);
        let shape: Vec<(u32, usize)> = messages
            .iter()
            .map(|m| {
                let event = BatchEvent::from_json(&m.payload).unwrap();
                assert_eq!(event.source, "/streamer/host-0123abcd");
                (m.partition, event.batch.len())
            })
            .collect();
        assert_eq!(shape, [(3, 2), (0, 5)]);
        let ids: Vec<String> = messages
            .iter()
            .map(|m| BatchEvent::from_json(&m.payload).unwrap().id)
            .collect();
        assert_ne!(ids[0], ids[1], "every event has its own id");
    }
}
