//! Publishing parts and landing them: each transaction flies as its own task on a producer lent
//! from the idle ones (so at most `in_flight` run at once, never two for one shard), a shared
//! transaction the fence refuses is retried shard by shard, and each landing is booked: what was
//! published, which shards moved (their rows are left to the new owner), which ended their pass.

use std::collections::HashMap;
use std::time::Instant;

use etcd_queue::{Fence, OutgoingMessage, Producer, QueueError};
use function_runtime::{NoSpaceWait, Shutdown};
use tokio::task::{JoinError, JoinSet};

use crate::encode::EventWriter;
use crate::error::StreamerError;
use crate::metrics::StreamerMetrics;
use crate::packing::Part;
use crate::retry::{Attempt, Retry};
use crate::shard::joint_fence;
use crate::streamer::SHUTDOWN_GRACE;

/// What this streamer's publishes came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    pub samples: u64,
    pub batches: u64,
    pub transactions: u64,
    /// Parts that ended a shard's pass.
    pub shard_passes: u64,
}

/// What publishing did to one shard of the pass so far.
#[derive(Debug, Clone, Copy, Default)]
struct ShardPublishing {
    in_flight: bool,
    /// Left for the rest of the pass (moved to another streamer, or stopping).
    dropped: bool,
    completed: bool,
}

/// What a transaction (or the parts of it) came to.
#[derive(Debug)]
enum Publish {
    Landed,
    /// The fence did not hold: a shard moved or its state changed; nothing was written.
    Refused,
    /// Given up because the streamer is stopping (nothing known to be written).
    Abandoned,
    Failed(StreamerError),
}

struct PartLanding {
    shard: u32,
    last: bool,
    samples: u64,
    batches: u64,
    /// Payload bytes of the batches' events.
    bytes: u64,
    outcome: Publish,
}

/// A finished publish task: the producer it borrowed and what became of each part.
struct Landing {
    producer: Producer,
    parts: Vec<PartLanding>,
    transactions: u64,
}

/// The publish tasks of one streamer and what they did to the shards of the current pass.
pub struct Publisher {
    /// Idle producers; one is lent to each flight.
    idle: Vec<Producer>,
    flights: JoinSet<Landing>,
    shards: HashMap<u32, ShardPublishing>,
    events: EventWriter,
    stop: Shutdown,
    metrics: StreamerMetrics,
    nospace: NoSpaceWait,
    published: Published,
}

impl Publisher {
    /// Publishes the events `events` writes with `producers`, one flight per producer at a
    /// time; publishes etcd refuses for lack of space wait through `nospace`.
    pub fn new(
        producers: Vec<Producer>,
        events: EventWriter,
        stop: Shutdown,
        metrics: StreamerMetrics,
        nospace: NoSpaceWait,
    ) -> Self {
        Publisher {
            idle: producers,
            flights: JoinSet::new(),
            shards: HashMap::new(),
            events,
            stop,
            metrics,
            nospace,
            published: Published::default(),
        }
    }

    pub fn published(&self) -> Published {
        self.published
    }

    /// Starts a pass over `shards`: none in flight, dropped or completed yet.
    pub fn begin_pass(&mut self, shards: impl IntoIterator<Item = u32>) {
        self.shards = shards
            .into_iter()
            .map(|shard| (shard, ShardPublishing::default()))
            .collect();
    }

    /// Whether `shard` is left for the rest of the pass (or not part of it).
    pub fn is_dropped(&self, shard: u32) -> bool {
        self.shards.get(&shard).is_none_or(|s| s.dropped)
    }

    /// Whether every shard of the pass published its last part.
    pub fn all_completed(&self) -> bool {
        self.shards.values().all(|s| s.completed)
    }

    pub fn has_flights(&self) -> bool {
        !self.flights.is_empty()
    }

    /// Waits until `shard` has no publish in flight (each publish compares the state the
    /// previous one wrote). False if the shard was dropped meanwhile.
    pub async fn wait_idle(&mut self, shard: u32) -> Result<bool, StreamerError> {
        loop {
            match self.shards.get(&shard) {
                None => return Ok(false),
                Some(s) if s.dropped => return Ok(false),
                Some(s) if !s.in_flight => return Ok(true),
                Some(_) => {}
            }
            self.land_next().await?;
        }
    }

    /// Hands `parts` (one transaction) to a publish task once a producer is idle.
    pub async fn launch(&mut self, parts: Vec<Part>) -> Result<(), StreamerError> {
        while self.idle.is_empty() {
            self.land_next().await?;
        }
        for part in &parts {
            if let Some(shard) = self.shards.get_mut(&part.shard) {
                shard.in_flight = true;
            }
        }
        let producer = self.idle.pop().expect("checked above");
        self.flights.spawn(fly(
            producer,
            parts,
            self.events.clone(),
            self.stop.clone(),
            self.metrics.clone(),
            self.nospace.clone(),
        ));
        Ok(())
    }

    /// Waits for the next publish task to finish and books it.
    pub async fn land_next(&mut self) -> Result<(), StreamerError> {
        match self.flights.join_next().await {
            Some(done) => self.landed(done),
            None => Err(StreamerError::ReaderTask(
                "waited for a publish but none is in flight".into(),
            )),
        }
    }

    /// Books a finished publish task.
    fn landed(&mut self, done: Result<Landing, JoinError>) -> Result<(), StreamerError> {
        let landing = done.map_err(|e| StreamerError::ReaderTask(format!("publish task: {e}")))?;
        self.idle.push(landing.producer);
        self.metrics.transactions.inc_by(landing.transactions);
        self.published.transactions += landing.transactions;
        let mut failure = None;
        for part in landing.parts {
            let Some(shard) = self.shards.get_mut(&part.shard) else {
                continue;
            };
            shard.in_flight = false;
            match part.outcome {
                Publish::Landed => {
                    self.metrics.samples_published.inc_by(part.samples);
                    self.metrics.batches_published.inc_by(part.batches);
                    self.metrics.bytes_published.inc_by(part.bytes);
                    self.published.samples += part.samples;
                    self.published.batches += part.batches;
                    if part.last {
                        shard.completed = true;
                        self.metrics.shard_passes.inc();
                        self.published.shard_passes += 1;
                    }
                }
                Publish::Refused => {
                    self.metrics.fence_failures.inc();
                    tracing::info!(
                        shard = part.shard,
                        "shard moved or its state changed; leaving it for this pass"
                    );
                    shard.dropped = true;
                }
                Publish::Abandoned => shard.dropped = true,
                Publish::Failed(e) => {
                    shard.dropped = true;
                    failure.get_or_insert(e);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Waits for every publish in flight; once stopping, for at most [`SHUTDOWN_GRACE`].
    pub async fn drain(&mut self) -> Result<(), StreamerError> {
        let stop = self.stop.clone();
        let grace = async move {
            stop.wait().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::pin!(grace);
        loop {
            tokio::select! {
                done = self.flights.join_next() => match done {
                    Some(done) => self.landed(done)?,
                    None => return Ok(()),
                },
                _ = &mut grace => {
                    tracing::warn!(
                        in_flight = self.flights.len(),
                        "publishes still unfinished after the shutdown grace; abandoning them"
                    );
                    self.flights.abort_all();
                    return Ok(());
                }
            }
        }
    }

    /// Abandons the publishes in flight (each either landed with its state update or not at
    /// all).
    pub fn abort_all(&mut self) {
        self.flights.abort_all();
    }

    /// Abandons the publishes in flight and writes the final queue depth through the idle
    /// producers, for at most [`SHUTDOWN_GRACE`].
    pub async fn close(mut self) {
        self.abort_all();
        let close = async {
            for producer in self.idle {
                if let Err(e) = producer.close().await {
                    tracing::warn!(error = %e, "could not write the final queue depth");
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, close).await.is_err() {
            tracing::warn!("gave up writing the final queue depth");
        }
    }
}

/// One publish task's producer and the transactions it committed.
struct Flight {
    producer: Producer,
    stop: Shutdown,
    metrics: StreamerMetrics,
    nospace: NoSpaceWait,
    transactions: u64,
}

impl Flight {
    /// Publishes `messages` with `fence` in one transaction, retrying transient failures, a full
    /// queue and an etcd out of space until it lands, the fence refuses it, or the streamer stops.
    async fn publish(
        &mut self,
        messages: &[OutgoingMessage],
        fence: &Fence,
        shards: &[u32],
    ) -> Publish {
        let Flight {
            producer,
            stop,
            metrics,
            nospace,
            transactions,
        } = self;
        let metrics = &*metrics;
        let nospace = &*nospace;
        let mut transaction = Transaction {
            producer,
            messages,
            fence,
            metrics,
            transactions,
        };
        let on_retry = |operation, error: &QueueError, stopping| {
            metrics.publish_retries.inc();
            if error.is_no_space() {
                nospace.refused(operation, error);
            } else if stopping {
                tracing::warn!(?shards, %error,
                    "publish failed while stopping; the shards' next owner publishes these rows");
            } else {
                tracing::warn!(?shards, %error, "publish failed; retrying");
            }
        };
        let retried = Retry::PUBLISH.run(stop, &mut transaction, Transaction::attempt, on_retry);
        match retried.await {
            Ok(Some(Publish::Landed)) => {
                nospace.resumed();
                Publish::Landed
            }
            Ok(Some(outcome)) => outcome,
            Ok(None) => Publish::Abandoned,
            Err(e) => Publish::Failed(e),
        }
    }
}

/// One publish transaction, as each attempt sends it.
struct Transaction<'a> {
    producer: &'a mut Producer,
    messages: &'a [OutgoingMessage],
    fence: &'a Fence,
    metrics: &'a StreamerMetrics,
    /// Counts the transactions that landed.
    transactions: &'a mut u64,
}

impl Transaction<'_> {
    fn attempt(&mut self) -> Attempt<'_, Publish> {
        Box::pin(async move {
            let started = Instant::now();
            match self
                .producer
                .publish_fenced(self.messages.to_vec(), self.fence.clone())
                .await
            {
                Ok(_) => {
                    self.metrics
                        .publish_latency
                        .observe(started.elapsed().as_secs_f64());
                    *self.transactions += 1;
                    Ok(Publish::Landed)
                }
                Err(QueueError::FenceFailed) => Ok(Publish::Refused),
                Err(source) => Err(StreamerError::Queue {
                    operation: "publish",
                    source,
                }),
            }
        })
    }
}

/// Encodes the parts' batches as CloudEvents and publishes the parts in one transaction: a part
/// alone as its own messages, several with their batches merged per partition
/// ([`EventWriter::joint_messages`]; the messages are booked on the first part). If that
/// transaction's fence fails (one of the shards moved), or a merged message would exceed the
/// payload limit, each part goes out on its own, as its own messages, so the others still go out
/// (a part always fits a transaction alone).
async fn fly(
    producer: Producer,
    parts: Vec<Part>,
    events: EventWriter,
    stop: Shutdown,
    metrics: StreamerMetrics,
    nospace: NoSpaceWait,
) -> Landing {
    let mut flight = Flight {
        producer,
        stop,
        metrics,
        nospace,
        transactions: 0,
    };
    let mut landings: Vec<PartLanding> = parts
        .iter()
        .map(|part| PartLanding {
            shard: part.shard,
            last: part.last,
            samples: part.samples,
            batches: 0,
            bytes: 0,
            outcome: Publish::Abandoned,
        })
        .collect();
    let shards: Vec<u32> = landings.iter().map(|p| p.shard).collect();
    let book = |landing: &mut PartLanding, messages: &[OutgoingMessage]| {
        landing.batches += messages.len() as u64;
        landing.bytes += messages.iter().map(|m| m.payload.len() as u64).sum::<u64>();
    };
    let bound = parts.iter().map(|part| part.bytes).sum();
    // Part by part when there is one, when a merged message would be too large, or when the
    // shared fence fails.
    let joint = match parts.len() {
        1 => None,
        _ => events.joint_messages(parts.iter().map(|part| &part.batches[..]), bound),
    };
    let alone = match joint {
        None => true,
        Some(messages) => {
            let fence = joint_fence(parts.iter().map(|part| &part.fence));
            match flight.publish(&messages, &fence, &shards).await {
                Publish::Refused => true,
                Publish::Landed => {
                    book(&mut landings[0], &messages);
                    for landing in &mut landings {
                        landing.outcome = Publish::Landed;
                    }
                    false
                }
                Publish::Abandoned => false,
                Publish::Failed(e) => {
                    landings[0].outcome = Publish::Failed(e);
                    false
                }
            }
        }
    };
    if alone {
        for (part, landing) in parts.into_iter().zip(&mut landings) {
            let messages = events.messages(part.batches, part.bytes);
            book(landing, &messages);
            landing.outcome = flight.publish(&messages, &part.fence, &[part.shard]).await;
        }
    }
    Landing {
        producer: flight.producer,
        parts: landings,
        transactions: flight.transactions,
    }
}

#[cfg(test)]
mod tests {
    use etcd_queue::{Queue, QueueConfig, WorkGroupKeys};
    use telemetry_model::BatchEvent;
    use test_support::{unique_prefix, EtcdHarness};

    use super::*;
    use crate::config::WORK_GROUP;
    use crate::packing::tests::part;

    /// Flies `parts` on a producer of `queue`, with a writer without limits of its own.
    async fn fly_parts(queue: &Queue, parts: Vec<Part>) -> Landing {
        let metrics = StreamerMetrics::default();
        let readiness = function_runtime::Readiness::new("/p", std::time::Duration::from_secs(1));
        let nospace = NoSpaceWait::new(
            readiness,
            metrics.nospace_waits.clone(),
            metrics.nospace_waiting.clone(),
        );
        let writer = EventWriter::new("/streamer/test".into(), Default::default());
        fly(
            queue.producer(),
            parts,
            writer,
            Shutdown::new(),
            metrics,
            nospace,
        )
        .await
    }

    #[tokio::test]
    async fn a_shared_transaction_lands_one_message_per_partition() {
        let etcd = EtcdHarness::start().await;
        let prefix = unique_prefix("shared-messages");
        let config = QueueConfig {
            prefix: prefix.clone(),
            ..QueueConfig::default()
        };
        let queue = Queue::open(etcd.client().await, config).await.unwrap();
        let keys = WorkGroupKeys::new(&prefix, WORK_GROUP).unwrap();
        // Shards 1 and 17 both go to partition 1, shard 5 to partition 5.
        let parts = vec![part(&keys, 1, 3), part(&keys, 17, 4), part(&keys, 5, 2)];
        let landing = fly_parts(&queue, parts).await;
        let booked: Vec<(u32, u64, bool)> = landing
            .parts
            .iter()
            .map(|p| (p.shard, p.batches, matches!(p.outcome, Publish::Landed)))
            .collect();
        assert_eq!(booked, [(1, 2, true), (17, 0, true), (5, 0, true)]);
        assert_eq!(landing.transactions, 1);
        assert_eq!(queue.stored_message_count().await.unwrap(), 2);
        let mut stored = Vec::new();
        for partition in [1, 5] {
            for message in queue.peek(partition, 0, 10).await.unwrap() {
                let batch = BatchEvent::from_queue_message(&message.payload)
                    .unwrap()
                    .batch;
                let gpus: Vec<String> = batch
                    .rows
                    .iter()
                    .map(|row| batch.gpus[row.gpu as usize].uuid.to_string())
                    .collect();
                stored.push((partition, gpus));
            }
        }
        let gpus = |runs: &[(&str, usize)]| -> Vec<String> {
            runs.iter()
                .flat_map(|&(gpu, n)| std::iter::repeat_n(gpu.to_owned(), n))
                .collect()
        };
        assert_eq!(
            stored,
            [
                (1, gpus(&[("GPU-1", 3), ("GPU-17", 4)])),
                (5, gpus(&[("GPU-5", 2)]))
            ]
        );
        let mut client = etcd.client().await;
        for shard in [1, 17, 5] {
            let state = client.get(keys.item_state(shard), None).await.unwrap();
            assert_eq!(
                state.kvs()[0].value(),
                br#"{"passes":1,"row":0,"last_ts":2000}"#,
                "shard {shard}"
            );
        }
    }

    #[tokio::test]
    async fn a_refused_shared_transaction_is_retried_shard_by_shard() {
        let etcd = EtcdHarness::start().await;
        let prefix = unique_prefix("shared-txn");
        let config = QueueConfig {
            prefix: prefix.clone(),
            ..QueueConfig::default()
        };
        let queue = Queue::open(etcd.client().await, config).await.unwrap();
        let keys = WorkGroupKeys::new(&prefix, WORK_GROUP).unwrap();
        // Shard 5 moved on: its state exists, so its fence fails and with it the shared one.
        let mut client = etcd.client().await;
        client.put(keys.item_state(5), "{}", None).await.unwrap();
        let parts = vec![part(&keys, 1, 3), part(&keys, 5, 4), part(&keys, 9, 5)];
        let landing = fly_parts(&queue, parts).await;
        let outcomes: Vec<(u32, u64, &str)> = landing
            .parts
            .iter()
            .map(|p| {
                let outcome = match p.outcome {
                    Publish::Landed => "landed",
                    Publish::Refused => "refused",
                    Publish::Abandoned => "abandoned",
                    Publish::Failed(_) => "failed",
                };
                (p.shard, p.batches, outcome)
            })
            .collect();
        assert_eq!(
            outcomes,
            [(1, 1, "landed"), (5, 1, "refused"), (9, 1, "landed")]
        );
        assert_eq!(landing.transactions, 2);
        assert_eq!(queue.stored_message_count().await.unwrap(), 2);
        for (partition, samples) in [(1, 3), (5, 0), (9, 5)] {
            let messages = queue.peek(partition, 0, 10).await.unwrap();
            let published: usize = messages
                .iter()
                .map(|m| {
                    BatchEvent::from_queue_message(&m.payload)
                        .unwrap()
                        .batch
                        .len()
                })
                .sum();
            assert_eq!(published, samples, "partition {partition}");
        }
        let stored = client.get(keys.item_state(5), None).await.unwrap();
        assert_eq!(stored.kvs()[0].value(), b"{}", "refused state untouched");
        let stored = client.get(keys.item_state(9), None).await.unwrap();
        assert_eq!(
            stored.kvs()[0].value(),
            br#"{"passes":1,"row":0,"last_ts":2000}"#
        );
    }
}
