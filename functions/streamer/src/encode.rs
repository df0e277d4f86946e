//! Sample batches as the queue carries them: each batch one CloudEvent ([`BatchEvent`]) with a
//! fresh id, from this streamer's source: columnar data in the queue's binary event form, or a
//! structured JSON event with JSON data. Several shards sharing a transaction share its messages:
//! each partition's batches of all of them become one event ([`EventWriter::joint_messages`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use etcd_queue::OutgoingMessage;
use telemetry_model::{BatchEvent, DataEncoding, SampleBatch, SampleBatchBuilder};

/// The CloudEvents `source` of the events streamer `member_id` publishes.
pub fn source(member_id: &str) -> Arc<str> {
    format!("/streamer/{member_id}").into()
}

/// Writes the events of one streamer.
#[derive(Debug, Clone)]
pub struct EventWriter {
    source: Arc<str>,
    encoding: DataEncoding,
    /// Most samples of one event (the streamer's batch size).
    max_samples: usize,
    /// Most bytes of one message (the queue's payload limit).
    max_payload_bytes: usize,
}

impl EventWriter {
    /// A writer without limits of its own: each batch it is given becomes one event as it is.
    pub fn new(source: Arc<str>, encoding: DataEncoding) -> Self {
        EventWriter {
            source,
            encoding,
            max_samples: usize::MAX,
            max_payload_bytes: usize::MAX,
        }
    }

    /// The same writer, merging batches ([`EventWriter::joint_messages`]) into events of at most
    /// `max_samples` samples and `max_payload_bytes` bytes.
    pub fn with_limits(self, max_samples: usize, max_payload_bytes: usize) -> Self {
        EventWriter {
            max_samples,
            max_payload_bytes,
            ..self
        }
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

    /// The messages of one transaction shared by several shards' parts (each a list of
    /// `(partition, batch)`), their batches merged as [`JointBatches`] places them, so the
    /// transaction carries about one message per partition instead of one per shard and
    /// partition. `bound` is the parts' upper bound together, as for [`EventWriter::messages`].
    /// `None` when a merged message exceeds the queue's payload limit: the parts then go out on
    /// their own.
    pub fn joint_messages<'a>(
        &self,
        parts: impl IntoIterator<Item = &'a [(u32, SampleBatch)]>,
        bound: usize,
    ) -> Option<Vec<OutgoingMessage>> {
        let mut joint = JointBatches::default();
        let mut merged: Vec<(u32, SampleBatchBuilder)> = Vec::new();
        for batches in parts {
            let places = joint.place(
                batches
                    .iter()
                    .map(|(partition, batch)| (*partition, batch.len())),
                self.max_samples,
            );
            for ((partition, batch), at) in batches.iter().zip(places) {
                if at == merged.len() {
                    merged.push((*partition, SampleBatch::builder()));
                }
                let builder = &mut merged[at].1;
                for row in &batch.rows {
                    builder.push(
                        &batch.gpus[row.gpu as usize],
                        &batch.metrics[row.metric as usize],
                        row.timestamp,
                        row.value,
                    );
                }
            }
        }
        let batches = merged
            .into_iter()
            .map(|(partition, builder)| (partition, builder.build()))
            .collect();
        let messages = self.messages(batches, bound);
        messages
            .iter()
            .all(|m| m.payload.len() <= self.max_payload_bytes)
            .then_some(messages)
    }
}

/// Where the batches of parts sharing a transaction go when they are merged, so that packing
/// counts the messages [`EventWriter::joint_messages`] writes: a partition's batches of
/// different parts join one batch (the shards hold disjoint GPUs, and each GPU's rows keep their
/// order) while it stays within the sample limit; a part's second batch for a partition starts
/// a batch of its own (the buffer started it for a reason, and a batch keeps one metadata per
/// GPU).
#[derive(Debug, Clone, Default)]
pub struct JointBatches {
    /// Per partition, the merged batch its rows join now and the samples that batch holds.
    joining: HashMap<u32, (usize, usize)>,
    batches: usize,
}

impl JointBatches {
    /// Places one part's batches, given as `(partition, samples)`: the merged batch of each,
    /// numbered in the order they were started.
    pub fn place(
        &mut self,
        part: impl IntoIterator<Item = (u32, usize)>,
        max_samples: usize,
    ) -> Vec<usize> {
        let mut seen: BTreeSet<u32> = BTreeSet::new();
        part.into_iter()
            .map(|(partition, samples)| {
                let second = !seen.insert(partition);
                match self.joining.get_mut(&partition) {
                    Some((at, held)) if !second && *held + samples <= max_samples => {
                        *held += samples;
                        *at
                    }
                    _ => {
                        let at = self.batches;
                        self.batches += 1;
                        self.joining.insert(partition, (at, samples));
                        at
                    }
                }
            })
            .collect()
    }

    /// Merged batches so far: the messages the transaction will carry.
    pub fn len(&self) -> usize {
        self.batches
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

    fn batch_of(gpu: &str, samples: i64) -> SampleBatch {
        let gpu = GpuInfo::new(GpuUuid::parse(gpu).unwrap());
        let metric = MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap();
        let mut builder = SampleBatch::builder();
        for i in 0..samples {
            builder.push(&gpu, &metric, TimestampMicros(1_000 + i), i as f64);
        }
        builder.build()
    }

    /// Each message's partition and its samples as (GPU, timestamp), in order.
    fn contents(messages: &[OutgoingMessage]) -> Vec<(u32, Vec<(String, i64)>)> {
        messages
            .iter()
            .map(|m| {
                let batch = BatchEvent::from_queue_message(&m.payload).unwrap().batch;
                let rows = batch
                    .rows
                    .iter()
                    .map(|row| {
                        let gpu = batch.gpus[row.gpu as usize].uuid.to_string();
                        (gpu, row.timestamp.0)
                    })
                    .collect();
                (m.partition, rows)
            })
            .collect()
    }

    #[test]
    fn shards_sharing_a_transaction_share_one_message_per_partition() {
        let writer = EventWriter::new(source("s"), DataEncoding::Columnar).with_limits(6, 4_096);
        let a = [(1, batch_of("GPU-a", 2)), (2, batch_of("GPU-a2", 1))];
        // b's second batch for partition 1 stays its own; c's batch would pass the sample limit.
        let b = [(1, batch_of("GPU-b", 1)), (1, batch_of("GPU-b", 2))];
        let c = [(1, batch_of("GPU-c", 5)), (2, batch_of("GPU-c2", 2))];
        let parts = [&a[..], &b[..], &c[..]];
        let messages = writer.joint_messages(parts, usize::MAX).unwrap();
        let rows = |runs: &[(&str, i64)]| -> Vec<(String, i64)> {
            runs.iter()
                .flat_map(|&(gpu, n)| (0..n).map(move |i| (gpu.to_owned(), 1_000 + i)))
                .collect()
        };
        let expected: Vec<(u32, Vec<(String, i64)>)> = vec![
            (1, rows(&[("GPU-a", 2), ("GPU-b", 1)])),
            (2, rows(&[("GPU-a2", 1), ("GPU-c2", 2)])),
            (1, rows(&[("GPU-b", 2)])),
            (1, rows(&[("GPU-c", 5)])),
        ];
        assert_eq!(contents(&messages), expected);
        let ids: BTreeSet<String> = messages
            .iter()
            .map(|m| BatchEvent::from_queue_message(&m.payload).unwrap().id)
            .collect();
        assert_eq!(ids.len(), 4, "every event has its own id");

        // A merged message above the payload limit: the parts go out as they are.
        let largest = messages.iter().map(|m| m.payload.len()).max().unwrap();
        let tight =
            EventWriter::new(source("s"), DataEncoding::Columnar).with_limits(6, largest - 1);
        assert!(tight.joint_messages(parts, usize::MAX).is_none());
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
