//! The consume loop: deliveries from owned partitions are decoded, persisted and committed in one
//! fenced transaction; undecodable messages go to the dead-letter prefix in the same commit, and
//! so does a message whose samples cannot be persisted for a reason of their own (poison), so
//! that no message blocks its partition. The deliveries of several partitions whose writes fit
//! one transaction together are committed together; any other delivery, or a group whose commit
//! failed, is committed on its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_queue::{
    is_lease_not_found, is_request_refused, Consumer, DeadLetter, Delivery, Fence, PartitionCommit,
    QueueError, COMMIT_READ_BACK_OPS, COMMIT_RESERVED_COMPARES, COMMIT_RESERVED_OPS,
    DEAD_LETTER_OPS, MAX_TXN_BYTES, MAX_TXN_OPS,
};
use telemetry_model::{BatchEvent, SampleBatch};
use telemetry_store::{
    group_by_gpu, ChunkTag, FenceBudget, PreparedWrite, StoreWriter, TelemetryStore,
};

use crate::metrics::CollectorMetrics;
use crate::CollectorError;

/// How many times a commit is re-prepared after its store fence failed before the delivery is
/// handed back to the queue.
const FENCE_RETRIES: usize = 3;
/// Longest key a commit writes (prefix, topic and partition included).
const MAX_KEY_BYTES: usize = 800;
/// Request bytes the store's writes and the dead letters of one commit may carry: the transaction
/// budget less the keys of the queue's own operations (offset, message range, dead letters), which
/// neither the fence's nor the dead letters' byte count includes.
const COMMIT_MAX_BYTES: usize = MAX_TXN_BYTES - MAX_TXN_OPS * MAX_KEY_BYTES;

/// One decoded message of a delivery.
enum Decoded {
    Event(BatchEvent),
    Undecodable(String),
}

/// Persists deliveries of one consumer.
pub struct DeliveryProcessor {
    store: TelemetryStore,
    writer: StoreWriter,
    metrics: Arc<CollectorMetrics>,
}

/// What committing a prefix of a delivery came to.
enum PrefixOutcome {
    Committed(Processed),
    /// The writes of one of its GPUs alone do not fit one transaction; nothing was written.
    TooLarge,
    /// Its samples cannot be persisted for a reason of their own (the reason); nothing was
    /// committed.
    Poisoned(String),
}

/// The next step after a failed write of a delivery.
enum Retry {
    /// Reload the cache and prepare the writes again.
    Again,
    /// The partition moved to another member: stop; it continues from the committed offset.
    Moved,
    /// etcd refused the write for what it writes: the prefix's own data (the reason).
    Poisoned(String),
    /// Give the delivery back: it is delivered again.
    Fail(CollectorError),
}

impl Retry {
    /// How the prefix ends, `landed` samples having been stored by its transactions before the
    /// failure; `None` to prepare its writes again.
    fn end(self, landed: usize) -> Option<Result<PrefixOutcome, CollectorError>> {
        match self {
            Retry::Again => None,
            Retry::Moved => Some(Ok(PrefixOutcome::Committed(Processed {
                samples: landed,
                ..Processed::default()
            }))),
            Retry::Poisoned(reason) => Some(Ok(PrefixOutcome::Poisoned(reason))),
            Retry::Fail(e) => Some(Err(e)),
        }
    }
}

/// What one processed delivery (or several) did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    pub messages: usize,
    pub samples: usize,
    pub dead_letters: usize,
}

impl std::ops::AddAssign for Processed {
    fn add_assign(&mut self, other: Processed) {
        self.messages += other.messages;
        self.samples += other.samples;
        self.dead_letters += other.dead_letters;
    }
}

/// A delivery whose writes are prepared as one fence that may share a transaction with others.
struct Joinable {
    /// Its index among the deliveries polled.
    index: usize,
    write: PreparedWrite,
}

/// What one commit of several deliveries spends of the transaction budget so far.
#[derive(Default)]
struct GroupCost {
    ops: usize,
    compares: usize,
    bytes: usize,
    partitions: usize,
}

impl GroupCost {
    /// The cost with `write`'s delivery added, if it stays within one transaction.
    fn with(&self, write: &PreparedWrite) -> Option<GroupCost> {
        let next = GroupCost {
            ops: self.ops + COMMIT_RESERVED_OPS + write.fence.ops.len(),
            compares: self.compares + COMMIT_RESERVED_COMPARES + write.fence.compares.len(),
            bytes: self.bytes + write.fence.bytes,
            partitions: self.partitions + 1,
        };
        let fits = next.ops <= MAX_TXN_OPS
            && next.compares <= MAX_TXN_OPS
            && next.bytes <= COMMIT_MAX_BYTES
            && next.partitions * COMMIT_READ_BACK_OPS <= MAX_TXN_OPS;
        fits.then_some(next)
    }
}

/// The store writes one commit may spend when it holds one delivery without dead letters.
fn single_commit_budget() -> FenceBudget {
    FenceBudget {
        ops: MAX_TXN_OPS - COMMIT_RESERVED_OPS,
        compares: MAX_TXN_OPS - COMMIT_RESERVED_COMPARES,
        bytes: COMMIT_MAX_BYTES,
    }
}

fn decode(delivery: &Delivery) -> Vec<Decoded> {
    delivery
        .messages
        .iter()
        .map(|m| match BatchEvent::from_queue_message(&m.payload) {
            Ok(event) => Decoded::Event(event),
            Err(e) => Decoded::Undecodable(e.to_string()),
        })
        .collect()
}

/// The batches of `decoded` as `(offset, batch)`, if every message of it decoded.
fn all_events<'a>(
    delivery: &Delivery,
    decoded: &'a [Decoded],
) -> Option<Vec<(u64, &'a SampleBatch)>> {
    delivery
        .messages
        .iter()
        .zip(decoded)
        .map(|(message, d)| match d {
            Decoded::Event(event) => Some((message.offset, &event.batch)),
            Decoded::Undecodable(_) => None,
        })
        .collect()
}

impl DeliveryProcessor {
    pub fn new(store: TelemetryStore, metrics: Arc<CollectorMetrics>) -> Self {
        DeliveryProcessor {
            writer: StoreWriter::new(store.clone()),
            store,
            metrics,
        }
    }

    /// Persists and commits `delivery` (or the longest prefix of it that fits one transaction;
    /// the rest is delivered again). Ownership loss is not an error: the partition's new owner
    /// continues from the committed offset.
    pub async fn process(
        &mut self,
        consumer: &mut Consumer,
        delivery: Delivery,
    ) -> Result<Processed, CollectorError> {
        let decoded = decode(&delivery);
        self.process_decoded(consumer, &delivery, &decoded, None)
            .await
    }

    /// Persists and commits `deliveries` (of different partitions, as [`Consumer::poll_many`]
    /// hands them out), as [`DeliveryProcessor::process`] does each: those whose writes fit one
    /// transaction each are committed together in as few transactions as hold them (the store
    /// state of a GPU is touched by its one partition only, so their fences are disjoint); a
    /// delivery that needs more (dead letters, several transactions, a poisoned or oversized
    /// message) is committed on its own. A joint commit that fails because one of its partitions
    /// moved or its fences are stale writes nothing, and its deliveries are committed one by one
    /// (the moved one then stops where it is, the others land). On an error the deliveries not
    /// yet committed are given back.
    pub async fn process_many(
        &mut self,
        consumer: &mut Consumer,
        deliveries: Vec<Delivery>,
    ) -> Result<Processed, CollectorError> {
        if deliveries.len() <= 1 {
            let mut done = Processed::default();
            for delivery in deliveries {
                done += self.process(consumer, delivery).await?;
            }
            return Ok(done);
        }
        let decoded: Vec<Vec<Decoded>> = deliveries.iter().map(decode).collect();
        let outcome = self
            .process_decoded_many(consumer, &deliveries, &decoded)
            .await;
        if outcome.is_err() {
            for delivery in &deliveries {
                consumer.abandon(delivery);
            }
        }
        outcome
    }

    async fn process_decoded_many(
        &mut self,
        consumer: &mut Consumer,
        deliveries: &[Delivery],
        decoded: &[Vec<Decoded>],
    ) -> Result<Processed, CollectorError> {
        let mut done = Processed::default();
        let mut joinable = Vec::new();
        for (index, (delivery, decoded)) in deliveries.iter().zip(decoded).enumerate() {
            let events =
                all_events(delivery, decoded).filter(|_| fitting_prefix(decoded) == decoded.len());
            let Some(events) = events else {
                done += self
                    .process_decoded(consumer, delivery, decoded, None)
                    .await?;
                continue;
            };
            let prepared = self
                .writer
                .prepare_delivery(delivery.partition, &events, single_commit_budget())
                .await;
            match prepared {
                Ok(Some(mut writes)) if writes.len() == 1 => joinable.push(Joinable {
                    index,
                    write: writes.pop().expect("one write"),
                }),
                // Several transactions: committed on its own, with the writes prepared.
                Ok(Some(writes)) => {
                    done += self
                        .process_decoded(consumer, delivery, decoded, Some(writes))
                        .await?;
                }
                // Too large or failed: the delivery's own commit finds out what to do.
                Ok(None) | Err(_) => {
                    done += self
                        .process_decoded(consumer, delivery, decoded, None)
                        .await?;
                }
            }
        }
        let mut group: Vec<Joinable> = Vec::new();
        let mut cost = GroupCost::default();
        for next in joinable {
            if let Some(with) = cost.with(&next.write) {
                cost = with;
                group.push(next);
                continue;
            }
            done += self
                .commit_group(consumer, deliveries, decoded, std::mem::take(&mut group))
                .await?;
            cost = GroupCost::default()
                .with(&next.write)
                .expect("one delivery's write fits a transaction");
            group.push(next);
        }
        done += self
            .commit_group(consumer, deliveries, decoded, group)
            .await?;
        Ok(done)
    }

    /// Commits the prepared deliveries of `group` in one transaction, or, if that fails for a
    /// reason of one of them, each on its own.
    async fn commit_group(
        &mut self,
        consumer: &mut Consumer,
        deliveries: &[Delivery],
        decoded: &[Vec<Decoded>],
        mut group: Vec<Joinable>,
    ) -> Result<Processed, CollectorError> {
        if group.is_empty() {
            return Ok(Processed::default());
        }
        let started = Instant::now();
        let commits = group
            .iter_mut()
            .map(|joinable| {
                PartitionCommit::whole(
                    &deliveries[joinable.index],
                    std::mem::take(&mut joinable.write.fence),
                    &[],
                )
            })
            .collect();
        match consumer.commit_all(commits).await {
            Ok(revision) => {
                let mut done = Processed::default();
                for joinable in group {
                    let delivery = &deliveries[joinable.index];
                    let batches = decoded[joinable.index].iter().filter_map(|d| match d {
                        Decoded::Event(event) => Some(&event.batch),
                        Decoded::Undecodable(_) => None,
                    });
                    self.metrics.observe_ingest_lag(batches);
                    self.metrics
                        .batches_persisted
                        .inc_by(delivery.messages.len() as u64);
                    self.count_stored(&joinable.write);
                    done += Processed {
                        messages: delivery.messages.len(),
                        samples: joinable.write.samples,
                        dead_letters: 0,
                    };
                    self.writer.committed(joinable.write, revision);
                }
                self.metrics.commits.inc();
                self.metrics
                    .commit_latency
                    .observe(started.elapsed().as_secs_f64());
                Ok(done)
            }
            Err(e) => {
                self.writer.invalidate_all();
                match e {
                    QueueError::FenceFailed => {
                        self.metrics.commit_conflicts.inc();
                    }
                    QueueError::LostOwnership { .. }
                    | QueueError::StaleDelivery { .. }
                    | QueueError::TransactionTooLarge { .. } => {}
                    QueueError::Etcd { source, .. } if is_lease_not_found(&source) => {
                        self.store.leases().forget_all().await;
                    }
                    QueueError::Etcd { source, .. } if is_request_refused(&source) => {}
                    e => return Err(e.into()),
                }
                tracing::debug!(
                    deliveries = group.len(),
                    "joint commit failed; committing its deliveries one by one"
                );
                let mut done = Processed::default();
                for joinable in group {
                    let index = joinable.index;
                    done += self
                        .process_decoded(consumer, &deliveries[index], &decoded[index], None)
                        .await?;
                }
                Ok(done)
            }
        }
    }

    /// Counts what a landed write stored, expired and rejected.
    fn count_stored(&self, write: &PreparedWrite) {
        self.metrics.samples_persisted.inc_by(write.samples as u64);
        self.metrics.samples_expired.inc_by(write.expired as u64);
        self.metrics.rejected_future(write.future);
    }

    /// [`DeliveryProcessor::process`] of `delivery` decoded as `decoded`, with the writes of the
    /// whole delivery when they are prepared already.
    async fn process_decoded(
        &mut self,
        consumer: &mut Consumer,
        delivery: &Delivery,
        decoded: &[Decoded],
        mut prepared: Option<Vec<PreparedWrite>>,
    ) -> Result<Processed, CollectorError> {
        // The estimate picks the prefix; the prepared writes decide: a GPU whose samples fill
        // more than one chunk seals more than once, so a prefix that does not fit is halved.
        // A poisoned prefix is halved too, down to the one message that is poison.
        let mut take = fitting_prefix(decoded);
        if take < decoded.len() {
            prepared = None;
        }
        loop {
            if take == 0 {
                // One message alone is too large for a transaction: idempotent writes, then commit.
                return self
                    .process_oversized(consumer, delivery, &decoded[0])
                    .await;
            }
            match self
                .commit_prefix(consumer, delivery, decoded, take, prepared.take())
                .await?
            {
                PrefixOutcome::Committed(processed) => return Ok(processed),
                PrefixOutcome::TooLarge => take /= 2,
                PrefixOutcome::Poisoned(_) if take > 1 => take /= 2,
                PrefixOutcome::Poisoned(reason) => {
                    return self.dead_letter_first(consumer, delivery, reason).await
                }
            }
        }
    }

    /// Moves the first message of `delivery` to the dead-letter prefix with `reason`, committing
    /// past it: its samples cannot be persisted, and the partition moves on.
    async fn dead_letter_first(
        &mut self,
        consumer: &mut Consumer,
        delivery: &Delivery,
        reason: String,
    ) -> Result<Processed, CollectorError> {
        let message = &delivery.messages[0];
        tracing::warn!(partition = message.partition, offset = message.offset, %reason,
            "dead-lettering a message whose samples cannot be persisted");
        let dead = [DeadLetter {
            offset: message.offset,
            reason,
        }];
        self.writer.invalidate_all();
        let commit = PartitionCommit::prefix(delivery, 1, Fence::default(), &dead);
        match consumer.commit_all(vec![commit]).await {
            Ok(_) => {
                self.metrics.commits.inc();
                self.metrics.dead_letters.inc();
                Ok(Processed {
                    messages: 1,
                    samples: 0,
                    dead_letters: 1,
                })
            }
            Err(QueueError::LostOwnership { .. } | QueueError::StaleDelivery { .. }) => {
                Ok(Processed::default())
            }
            Err(e) => {
                consumer.abandon(delivery);
                Err(e.into())
            }
        }
    }

    /// Persists and commits the first `take` messages of `delivery`, unless the writes of one of
    /// its GPUs alone do not fit a transaction or its samples cannot be persisted for a reason of
    /// their own (then nothing is committed). The writes are split by
    /// GPU into as many transactions as they need: all but the last are written fenced on
    /// ownership and offset (each GPU's open chunk marked with the prefix's last message, so a
    /// rewrite after a crash skips what landed), the last goes with the commit. `prepared`: the
    /// writes of the first attempt, if they are prepared already.
    async fn commit_prefix(
        &mut self,
        consumer: &mut Consumer,
        delivery: &Delivery,
        decoded: &[Decoded],
        take: usize,
        mut prepared: Option<Vec<PreparedWrite>>,
    ) -> Result<PrefixOutcome, CollectorError> {
        let decoded = &decoded[..take];
        let mut dead = Vec::new();
        let mut dead_bytes = 0;
        let mut events = Vec::new();
        for (message, d) in delivery.messages[..take].iter().zip(decoded) {
            match d {
                Decoded::Event(event) => events.push((message.offset, &event.batch)),
                Decoded::Undecodable(reason) => {
                    // The commit copies the payload into the dead-letter record.
                    dead_bytes += message.payload.len() + reason.len();
                    tracing::warn!(partition = message.partition, offset = message.offset, %reason, "dead-lettering undecodable message");
                    dead.push(DeadLetter {
                        offset: message.offset,
                        reason: reason.clone(),
                    });
                }
            }
        }
        // What the store's writes may spend in each transaction: the commit's budget, less the
        // queue's own operations and compares and the dead letters it carries.
        let queue_ops = COMMIT_RESERVED_OPS + DEAD_LETTER_OPS * dead.len();
        let budget = FenceBudget {
            ops: MAX_TXN_OPS.saturating_sub(queue_ops),
            compares: MAX_TXN_OPS - COMMIT_RESERVED_COMPARES,
            bytes: COMMIT_MAX_BYTES.saturating_sub(dead_bytes),
        };
        // One undecodable message alone cannot be split further: it is committed as it is (its
        // payload is within the queue's message limit).
        let lone_dead_letter = take == 1 && dead.len() == 1;
        if (queue_ops > MAX_TXN_OPS || dead_bytes > COMMIT_MAX_BYTES) && !lone_dead_letter {
            return Ok(PrefixOutcome::TooLarge);
        }
        let started = Instant::now();
        // Samples of transactions that landed before the commit (they stay stored whatever
        // happens to the commit).
        let mut landed = 0;
        'attempts: for attempt in 0..=FENCE_RETRIES {
            let writes = match prepared.take() {
                Some(writes) => Ok(Some(writes)),
                None => {
                    self.writer
                        .prepare_delivery(delivery.partition, &events, budget)
                        .await
                }
            };
            let writes = match writes {
                Ok(Some(writes)) => writes,
                Ok(None) => {
                    tracing::debug!(
                        messages = take,
                        "one GPU's writes exceed a transaction; committing a shorter prefix"
                    );
                    return Ok(PrefixOutcome::TooLarge);
                }
                Err(e) if e.is_caused_by_data() => {
                    self.writer.invalidate_all();
                    return Ok(PrefixOutcome::Poisoned(format!("not persistable: {e}")));
                }
                Err(e) => {
                    consumer.abandon(delivery);
                    self.writer.invalidate_all();
                    return Err(e.into());
                }
            };
            let mut writes = writes.into_iter();
            let mut last = writes.next_back().unwrap_or_default();
            for mut write in writes {
                let fence = std::mem::take(&mut write.fence);
                match consumer.write_fenced(delivery, fence).await {
                    Ok(revision) => {
                        landed += write.samples;
                        self.count_stored(&write);
                        self.writer.committed(write, revision);
                    }
                    Err(e) => match self
                        .after_failed_write(consumer, delivery, e)
                        .await
                        .end(landed)
                    {
                        None => continue 'attempts,
                        Some(end) => return end,
                    },
                }
            }
            let samples = last.samples;
            // The fence moves into the commit; the rest of `last` updates the cache after it.
            let fence = std::mem::take(&mut last.fence);
            let commit = PartitionCommit::prefix(delivery, take, fence, &dead);
            match consumer.commit_all(vec![commit]).await {
                Ok(revision) => {
                    self.metrics
                        .observe_ingest_lag(events.iter().map(|(_, batch)| *batch));
                    self.count_stored(&last);
                    self.writer.committed(last, revision);
                    self.metrics.commits.inc();
                    self.metrics
                        .batches_persisted
                        .inc_by((take - dead.len()) as u64);
                    self.metrics.dead_letters.inc_by(dead.len() as u64);
                    self.metrics
                        .commit_latency
                        .observe(started.elapsed().as_secs_f64());
                    return Ok(PrefixOutcome::Committed(Processed {
                        messages: take,
                        samples: landed + samples,
                        dead_letters: dead.len(),
                    }));
                }
                Err(e) => match self
                    .after_failed_write(consumer, delivery, e)
                    .await
                    .end(landed)
                {
                    None => tracing::debug!(attempt, "store fence failed; reloading"),
                    Some(end) => return end,
                },
            }
        }
        self.metrics.commit_conflicts.inc();
        consumer.abandon(delivery);
        Err(CollectorError::CommitConflict {
            partition: delivery.partition,
        })
    }

    /// What to do after a write or commit for `delivery` failed with `error`.
    async fn after_failed_write(
        &mut self,
        consumer: &mut Consumer,
        delivery: &Delivery,
        error: QueueError,
    ) -> Retry {
        self.writer.invalidate_all();
        match error {
            QueueError::FenceFailed => {
                // Our cached chunks or records are stale: reload and try again.
                self.metrics.commit_conflicts.inc();
                Retry::Again
            }
            QueueError::LostOwnership { partition }
            | QueueError::StaleDelivery { partition, .. } => {
                tracing::info!(
                    partition,
                    "partition moved away mid-delivery; its new owner continues"
                );
                Retry::Moved
            }
            QueueError::Etcd { source, .. } if is_lease_not_found(&source) => {
                // A retention lease expired between preparing and committing.
                self.store.leases().forget_all().await;
                Retry::Again
            }
            QueueError::Etcd { source, .. } if is_request_refused(&source) => Retry::Poisoned(
                format!("not persistable: etcd refused the commit: {source}"),
            ),
            e => {
                consumer.abandon(delivery);
                Retry::Fail(e.into())
            }
        }
    }

    async fn process_oversized(
        &mut self,
        consumer: &mut Consumer,
        delivery: &Delivery,
        decoded: &Decoded,
    ) -> Result<Processed, CollectorError> {
        let message = &delivery.messages[0];
        let Decoded::Event(event) = decoded else {
            unreachable!("an undecodable message always fits a commit");
        };
        let tag = ChunkTag::Message {
            partition: message.partition,
            offset: message.offset,
        };
        let grouped = group_by_gpu([&event.batch]);
        let stats = match self.store.write_idempotent(tag, &grouped).await {
            Ok(stats) => stats,
            Err(e) if e.is_caused_by_data() => {
                return self
                    .dead_letter_first(consumer, delivery, format!("not persistable: {e}"))
                    .await
            }
            Err(e) => {
                consumer.abandon(delivery);
                return Err(e.into());
            }
        };
        self.writer.invalidate_all();
        let commit = PartitionCommit::prefix(delivery, 1, Fence::default(), &[]);
        match consumer.commit_all(vec![commit]).await {
            Ok(_) => {
                self.metrics.observe_ingest_lag([&event.batch]);
                self.metrics.commits.inc();
                self.metrics.batches_persisted.inc();
                self.metrics.samples_persisted.inc_by(stats.samples as u64);
                self.metrics.samples_expired.inc_by(stats.expired as u64);
                self.metrics.rejected_future(stats.future);
                Ok(Processed {
                    messages: 1,
                    samples: stats.samples,
                    dead_letters: 0,
                })
            }
            // The writes are idempotent: the new owner rewrites the same keys.
            Err(QueueError::LostOwnership { .. } | QueueError::StaleDelivery { .. }) => {
                Ok(Processed::default())
            }
            Err(e) => {
                consumer.abandon(delivery);
                Err(e.into())
            }
        }
    }
}

/// How many leading messages a commit can take (0: not even the first). The store's writes are
/// split by GPU over as many transactions as they need (checked against the prepared writes), so
/// what limits a commit here is what only the commit itself can carry: the dead letters (two
/// operations and the payload each) and the messages of a batch too large to be stored through
/// the open chunks. A batch of more samples than [`MAX_SAMPLES_PER_COMMIT`] ends the prefix
/// before it, or alone makes it 0 (it is then written idempotently).
fn fitting_prefix(decoded: &[Decoded]) -> usize {
    let mut dead = 0;
    let mut dead_bytes = 0;
    let mut samples = 0;
    for (i, d) in decoded.iter().enumerate() {
        match d {
            Decoded::Event(event) => samples += event.batch.len(),
            Decoded::Undecodable(reason) => {
                dead += 1;
                dead_bytes += reason.len() + MAX_KEY_BYTES;
            }
        }
        let ops = COMMIT_RESERVED_OPS + DEAD_LETTER_OPS * dead;
        if ops > MAX_TXN_OPS || dead_bytes > COMMIT_MAX_BYTES || samples > MAX_SAMPLES_PER_COMMIT {
            return i;
        }
    }
    decoded.len()
}

/// Most samples one commit writes through the open chunks, however many transactions that takes:
/// beyond it a delivery is cut (the rest comes again), which bounds the memory a prepared
/// delivery holds.
const MAX_SAMPLES_PER_COMMIT: usize = 256 * 1024;

/// How long one poll waits for a delivery before the loop looks at ownership and shutdown again.
pub const POLL_WAIT: Duration = Duration::from_millis(500);
