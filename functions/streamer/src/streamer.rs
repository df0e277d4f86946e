//! The streaming loop of one streamer process.
//!
//! Between passes the streamer reads the group (members, shard owners, shard states) at one
//! revision, rebalances its shards, and decides what to do: stop (every shard reached `--passes`),
//! wait for a change (nothing for it to stream), or stream a pass over the shards it owns. A pass
//! reads the file from the start on a blocking thread, stamps each row of an owned shard as it is
//! processed, and publishes each shard's rows in fenced transactions that also advance the shard's
//! state: a shard whose buffer fills one transaction publishes it alone, and at the end of the pass
//! the shards' remaining rows share transactions, as many shards as fit. Up to `in_flight`
//! transactions run at once, never two for one shard. A transaction the fence refuses means the
//! shard moved: its rows are left to the new owner, never published twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, GetOptions, TxnOp, TxnOpResponse};
use etcd_queue::change_feed::ChangeFeed;
use etcd_queue::{
    is_transient, Backoff, Fence, OutgoingMessage, Producer, Queue, QueueError, WorkGroup,
    WorkGroupKeys, MAX_TXN_OPS,
};
use function_runtime::Shutdown;
use telemetry_model::{BatchEvent, SampleBatch};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};

use crate::buffer::{BufferLimits, ShardBuffer};
use crate::clock::{Pacer, Stamper};
use crate::config::{StreamerConfig, WORK_GROUP};
use crate::error::StreamerError;
use crate::metrics::StreamerMetrics;
use crate::reader::{read_pass, PassPlan, ReaderEvent, ShardRow, CHANNEL_CHUNKS};
use crate::shard::{StoredShardState, SHARDS};

/// How long a stopping streamer waits for its transactions in flight (and for leaving the group)
/// before giving up on them. Abandoning is safe: an unfinished publish either landed with its
/// state update or not at all. Kept under the pod's termination grace period.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// When idle, the streamer re-reads the group at least this often even without a watch event.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// What one streamer did before it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    pub member_id: String,
    pub samples_published: u64,
    /// Batches (queue messages) published.
    pub batches_published: u64,
    pub transactions: u64,
    /// Passes over a shard this streamer completed.
    pub shard_passes: u64,
    /// Passes over the file that read it to the end.
    pub file_passes: u64,
    /// True when it stopped because every shard reached `--passes`.
    pub passes_reached: bool,
}

/// Streams the CSV to the queue as one member of the streamers' work group.
pub struct Streamer {
    client: Client,
    config: StreamerConfig,
    metrics: StreamerMetrics,
}

impl Streamer {
    pub fn new(client: Client, config: StreamerConfig, metrics: StreamerMetrics) -> Self {
        Streamer {
            client,
            config,
            metrics,
        }
    }

    /// Streams until `stop` triggers or every shard reached `config.passes`; then finishes the
    /// transactions in flight, releases its shards and returns. Transient etcd failures are
    /// retried (and logged) for as long as it takes; only permanent failures return an error.
    pub async fn run(self, stop: Shutdown) -> Result<RunReport, StreamerError> {
        let config = &self.config;
        if config.batch_size == 0 || config.in_flight == 0 {
            return Err(StreamerError::InvalidConfig(
                "batch size and transactions in flight must be at least 1".into(),
            ));
        }
        let keys = WorkGroupKeys::new(&config.queue.prefix, WORK_GROUP)
            .map_err(StreamerError::queue("work group keys"))?;
        let report = RunReport {
            member_id: config.member_id.clone(),
            ..RunReport::default()
        };
        let Some(queue) = retrying("open queue", &stop, || {
            Queue::open(self.client.clone(), config.queue.clone())
        })
        .await?
        else {
            return Ok(report);
        };
        let Some(group) = retrying("join streamer group", &stop, || {
            WorkGroup::join(
                self.client.clone(),
                keys.clone(),
                SHARDS,
                config.member_id.clone(),
                config.lease_ttl,
                config.queue.retry_budget,
            )
        })
        .await?
        else {
            return Ok(report);
        };
        let source: Arc<str> = format!("/streamer/{}", config.member_id).into();
        let mut session = Session {
            client: self.client.clone(),
            config,
            metrics: &self.metrics,
            stop: stop.clone(),
            keys,
            producers: (0..config.in_flight).map(|_| queue.producer()).collect(),
            queue,
            group,
            flights: JoinSet::new(),
            stamper: Stamper::default(),
            pacer: Pacer::new(config.rate),
            limits: BufferLimits::new(config.batch_size, config.queue.max_payload_bytes, &source),
            source,
            report,
            bad_rows_reported: false,
        };
        let result = session.run_loop().await;
        session.flights.abort_all();
        let producers = std::mem::take(&mut session.producers);
        let report = std::mem::take(&mut session.report);
        let group = session.group;
        let close = async {
            for producer in producers {
                if let Err(e) = producer.close().await {
                    tracing::warn!(error = %e, "could not write the final queue depth");
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, close).await.is_err() {
            tracing::warn!("gave up writing the final queue depth");
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, group.leave()).await {
            Ok(Ok(())) => tracing::info!(member = %report.member_id, "released shards and left"),
            Ok(Err(e)) => tracing::warn!(error = %e,
                "could not leave the group; the shards free themselves when the lease expires"),
            Err(_) => tracing::warn!(
                "leaving the group timed out; the shards free themselves when the lease expires"
            ),
        }
        self.metrics.owned_shards.set(0);
        result.map(|()| report)
    }
}

/// Whether an operation is worth retrying: etcd was unavailable, the queue was full, a watch
/// broke, or the lease lapsed (the next rebalance rejoins).
pub fn is_retryable(error: &QueueError) -> bool {
    match error {
        QueueError::Unavailable { .. }
        | QueueError::QueueFull { .. }
        | QueueError::WatchBroken(_)
        | QueueError::LeaseExpired => true,
        QueueError::Etcd { source, .. } => {
            is_transient(source) || source.to_string().contains("lease not found")
        }
        _ => false,
    }
}

/// Runs `op` until it succeeds or fails permanently, backing off on retryable failures. `None`
/// if `stop` triggered first.
async fn retrying<T, F, Fut>(
    operation: &'static str,
    stop: &Shutdown,
    mut op: F,
) -> Result<Option<T>, StreamerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueueError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        if stop.is_triggered() {
            return Ok(None);
        }
        match op().await {
            Ok(value) => return Ok(Some(value)),
            Err(e) if is_retryable(&e) => {
                tracing::warn!(operation, error = %e, "etcd unavailable; retrying");
                sleep_or_stop(backoff.next_delay(), stop).await;
            }
            Err(source) => return Err(StreamerError::Queue { operation, source }),
        }
    }
}

async fn sleep_or_stop(duration: Duration, stop: &Shutdown) {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = stop.wait() => {}
    }
}

/// What the loop does after one round.
enum Step {
    Continue,
    Done,
}

/// One shard being streamed in the current pass.
struct ShardSlot {
    buffer: ShardBuffer,
    /// The state the next publish compares (what the last publish wrote, once it is in flight).
    stored: StoredShardState,
    owner_fence: Compare,
    in_flight: bool,
    /// Left for the rest of the pass (moved to another streamer, or stopping).
    dropped: bool,
    completed: bool,
}

/// One shard's share of a publish transaction.
struct Part {
    shard: u32,
    last: bool,
    samples: u64,
    batches: Vec<(u32, SampleBatch)>,
    partitions: BTreeSet<u32>,
    /// Upper bound of the batches' encoded size.
    bytes: usize,
    fence: Fence,
}

/// What a transaction (or the parts of it) came to.
#[derive(Debug)]
enum Publish {
    Landed,
    /// The fence did not hold: a shard moved or its state changed; nothing was written.
    Refused,
    /// Given up because the streamer is stopping (nothing known to be written).
    Abandoned,
    Failed(QueueError),
}

struct PartLanding {
    shard: u32,
    last: bool,
    samples: u64,
    batches: u64,
    outcome: Publish,
}

struct Landing {
    producer: Producer,
    parts: Vec<PartLanding>,
    transactions: u64,
}

/// The size of a transaction being put together from parts.
#[derive(Debug, Clone, Default)]
struct TxnSize {
    messages: usize,
    partitions: BTreeSet<u32>,
    bytes: usize,
    fence_ops: usize,
    compares: usize,
}

impl TxnSize {
    fn with(&self, part: &Part) -> TxnSize {
        let mut next = self.clone();
        next.messages += part.batches.len();
        next.partitions.extend(part.partitions.iter().copied());
        next.bytes += part.bytes + part.fence.bytes;
        next.fence_ops += part.fence.ops.len();
        next.compares += part.fence.compares.len();
        next
    }

    /// Within etcd's limits as the queue counts them (one head compare per partition and one for
    /// the producer's marker next to the fences' compares).
    fn fits(&self) -> bool {
        Producer::fits_one_transaction(
            self.messages,
            self.partitions.len(),
            self.bytes,
            self.fence_ops,
        ) && self.compares + self.partitions.len() < MAX_TXN_OPS
    }
}

struct Session<'a> {
    client: Client,
    config: &'a StreamerConfig,
    metrics: &'a StreamerMetrics,
    stop: Shutdown,
    keys: WorkGroupKeys,
    queue: Queue,
    group: WorkGroup,
    /// Idle producers; one is lent to each flight.
    producers: Vec<Producer>,
    flights: JoinSet<Landing>,
    stamper: Stamper,
    pacer: Pacer,
    limits: BufferLimits,
    source: Arc<str>,
    report: RunReport,
    bad_rows_reported: bool,
}

impl Session<'_> {
    async fn run_loop(&mut self) -> Result<(), StreamerError> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if self.stop.is_triggered() {
                return Ok(());
            }
            match self.round().await {
                Ok(Step::Done) => {
                    self.report.passes_reached = true;
                    return Ok(());
                }
                Ok(Step::Continue) => {
                    backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
                }
                Err(StreamerError::Queue { operation, source }) if is_retryable(&source) => {
                    tracing::warn!(operation, error = %source, "etcd unavailable; retrying");
                    sleep_or_stop(backoff.next_delay(), &self.stop).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the group, rebalances, then streams one pass, waits, or reports that all is done.
    async fn round(&mut self) -> Result<Step, StreamerError> {
        let states_read = TxnOp::get(
            self.keys.item_states_prefix(),
            Some(GetOptions::new().with_prefix()),
        );
        let (snapshot, responses) = self
            .group
            .snapshot_with(vec![states_read])
            .await
            .map_err(StreamerError::queue("read streamer group"))?;
        let mut states = self.decode_states(responses.first())?;
        let keys = self.keys.clone();
        let (_, acquired) = self
            .group
            .rebalance(&snapshot, |shard| {
                vec![TxnOp::get(keys.item_state(shard), None)]
            })
            .await
            .map_err(StreamerError::queue("rebalance shards"))?;
        for (shard, responses) in acquired {
            let key = self.keys.item_state(shard);
            let value = match responses.first() {
                Some(TxnOpResponse::Get(get)) => get.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            };
            states.insert(shard, StoredShardState::decode(&key, value.as_deref())?);
        }
        self.metrics
            .owned_shards
            .set(self.group.owned().len() as i64);

        let passes_of = |shard: u32| states.get(&shard).map_or(0, |s| s.state.passes);
        if let Some(target) = self.config.passes {
            if (0..SHARDS).all(|shard| passes_of(shard) >= target) {
                tracing::info!(passes = target, "every shard reached the requested passes");
                return Ok(Step::Done);
            }
        }
        let active: BTreeMap<u32, StoredShardState> = self
            .group
            .owned()
            .keys()
            .filter(|shard| self.config.passes.is_none_or(|n| passes_of(**shard) < n))
            .map(|shard| (*shard, states.get(shard).cloned().unwrap_or_default()))
            .collect();
        if active.is_empty() {
            self.wait_for_change(snapshot.revision).await;
            return Ok(Step::Continue);
        }
        let shards: Vec<u32> = active.keys().copied().collect();
        let reached_after_pass = self
            .config
            .passes
            .is_some_and(|n| active.values().all(|s| s.state.passes + 1 >= n));
        let complete = self.pass(active).await?;
        if complete && !reached_after_pass {
            tracing::debug!(shards = ?shards, "pass complete");
            sleep_or_stop(self.config.interval, &self.stop).await;
        }
        Ok(Step::Continue)
    }

    fn decode_states(
        &self,
        response: Option<&TxnOpResponse>,
    ) -> Result<BTreeMap<u32, StoredShardState>, StreamerError> {
        let mut states = BTreeMap::new();
        if let Some(TxnOpResponse::Get(get)) = response {
            for kv in get.kvs() {
                let key = String::from_utf8_lossy(kv.key());
                let Some(shard) = key.rsplit('/').next().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                states.insert(shard, StoredShardState::decode(&key, Some(kv.value()))?);
            }
        }
        Ok(states)
    }

    /// Nothing to stream: waits until the group changes (a member joins or leaves, a shard is
    /// released or advances), the lease is lost, or the streamer stops.
    async fn wait_for_change(&mut self, revision: i64) {
        let root = self.keys.prefix();
        match ChangeFeed::open(&self.client, &[root], &[], revision + 1).await {
            Ok(mut feed) => {
                tokio::select! {
                    _ = feed.changed() => {}
                    _ = self.group.wait_lease_lost() => {}
                    _ = self.stop.wait() => {}
                    _ = tokio::time::sleep(IDLE_RECHECK) => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the streamer group; re-reading shortly");
                sleep_or_stop(Duration::from_secs(1), &self.stop).await;
            }
        }
    }

    /// Streams one pass over `active` shards. True when every one of them completed the pass.
    async fn pass(
        &mut self,
        active: BTreeMap<u32, StoredShardState>,
    ) -> Result<bool, StreamerError> {
        let mut slots: HashMap<u32, ShardSlot> = HashMap::with_capacity(active.len());
        for (shard, stored) in active {
            let Some(owner_fence) = self.group.owner_fence(shard) else {
                continue;
            };
            self.stamper.raise_floor(stored.state.last_ts);
            slots.insert(
                shard,
                ShardSlot {
                    buffer: ShardBuffer::new(self.limits),
                    stored,
                    owner_fence,
                    in_flight: false,
                    dropped: false,
                    completed: false,
                },
            );
        }
        let plan = PassPlan {
            path: self.config.csv.clone(),
            skip: slots
                .iter()
                .map(|(shard, slot)| (*shard, slot.stored.state.row))
                .collect(),
            report_bad_rows: !self.bad_rows_reported,
        };
        let (tx, mut rx) = mpsc::channel(CHANNEL_CHUNKS);
        let metrics = self.metrics.clone();
        let reader = tokio::task::spawn_blocking(move || read_pass(plan, tx, metrics));
        self.pacer.restart(Instant::now());
        let streamed = self.stream_rows(&mut slots, &mut rx).await;
        drop(rx);
        // The reader notices the closed channel within a few rows.
        let _ = reader.await;
        let read_to_end = match streamed {
            Ok(read_to_end) => read_to_end,
            Err(e) => {
                self.flights.abort_all();
                return Err(e);
            }
        };
        if read_to_end {
            self.bad_rows_reported = true;
            self.report.file_passes += 1;
            self.finish_shards(&mut slots).await?;
        }
        self.drain_flights(&mut slots).await?;
        Ok(read_to_end && slots.values().all(|slot| slot.completed))
    }

    /// Feeds the reader's rows into the shard buffers. True when the file was read to the end,
    /// false when the streamer is stopping.
    async fn stream_rows(
        &mut self,
        slots: &mut HashMap<u32, ShardSlot>,
        rx: &mut mpsc::Receiver<ReaderEvent>,
    ) -> Result<bool, StreamerError> {
        loop {
            let event = tokio::select! {
                biased;
                _ = self.stop.wait() => return Ok(false),
                Some(done) = self.flights.join_next(), if !self.flights.is_empty() => {
                    self.landed(done, slots)?;
                    continue;
                }
                event = rx.recv() => event,
            };
            match event {
                Some(ReaderEvent::Rows(rows)) => {
                    for row in rows {
                        if self.stop.is_triggered() {
                            return Ok(false);
                        }
                        self.stream_row(row, slots).await?;
                    }
                }
                Some(ReaderEvent::Finished(stats)) => {
                    tracing::debug!(?stats, "read the CSV to the end");
                    return Ok(true);
                }
                Some(ReaderEvent::OpenFailed(source)) => {
                    return Err(StreamerError::OpenCsv {
                        path: self.config.csv.clone(),
                        source,
                    })
                }
                Some(ReaderEvent::ReadFailed(reason)) => {
                    return Err(StreamerError::ReadCsv {
                        path: self.config.csv.clone(),
                        reason,
                    })
                }
                None => {
                    return Err(StreamerError::ReaderTask(
                        "the reader ended without finishing the file".into(),
                    ))
                }
            }
        }
    }

    async fn stream_row(
        &mut self,
        ShardRow { shard, row }: ShardRow,
        slots: &mut HashMap<u32, ShardSlot>,
    ) -> Result<(), StreamerError> {
        if slots.get(&shard).is_none_or(|slot| slot.dropped) {
            return Ok(());
        }
        if let Some(wait) = self.pacer.admit(Instant::now()) {
            sleep_or_stop(wait, &self.stop).await;
        }
        let ts = self.stamper.stamp();
        let partition = self.queue.partition_for(row.info.uuid.as_str().as_bytes());
        let fits = slots[&shard].buffer.fits(&row, partition, ts);
        if !fits {
            if !ShardBuffer::fits_alone(self.limits, &row, partition, ts) {
                tracing::warn!(
                    line = row.line,
                    shard,
                    "skipping a row too large for one queue message"
                );
                self.metrics.bad_rows.inc();
                if let Some(slot) = slots.get_mut(&shard) {
                    slot.buffer.skip_row();
                }
                return Ok(());
            }
            // A full buffer goes out on its own, in one transaction.
            if self.wait_idle(shard, slots).await? {
                let part = self.make_part(shard, false, slots);
                self.launch(vec![part], slots).await?;
            }
        }
        if let Some(slot) = slots.get_mut(&shard).filter(|slot| !slot.dropped) {
            slot.buffer.push(&row, partition, ts);
        }
        Ok(())
    }

    /// Ends the pass of every shard still streaming: each publishes its remaining rows and marks
    /// the pass done. Small shards share transactions (each with its own fence), as many as fit.
    async fn finish_shards(
        &mut self,
        slots: &mut HashMap<u32, ShardSlot>,
    ) -> Result<(), StreamerError> {
        let mut shards: Vec<u32> = slots.keys().copied().collect();
        shards.sort_unstable();
        let mut group: Vec<Part> = Vec::new();
        let mut size = TxnSize::default();
        for shard in shards {
            if !self.wait_idle(shard, slots).await? {
                continue;
            }
            let part = self.make_part(shard, true, slots);
            let grown = size.with(&part);
            if group.is_empty() || grown.fits() {
                size = grown;
            } else {
                self.launch(std::mem::take(&mut group), slots).await?;
                size = TxnSize::default().with(&part);
            }
            group.push(part);
        }
        if !group.is_empty() {
            self.launch(group, slots).await?;
        }
        Ok(())
    }

    /// Waits until the shard has no publish in flight (each publish compares the state the
    /// previous one wrote). False if the shard was dropped meanwhile.
    async fn wait_idle(
        &mut self,
        shard: u32,
        slots: &mut HashMap<u32, ShardSlot>,
    ) -> Result<bool, StreamerError> {
        loop {
            match slots.get(&shard) {
                None => return Ok(false),
                Some(slot) if slot.dropped => return Ok(false),
                Some(slot) if !slot.in_flight => return Ok(true),
                Some(_) => {}
            }
            self.land_next(slots).await?;
        }
    }

    async fn land_next(
        &mut self,
        slots: &mut HashMap<u32, ShardSlot>,
    ) -> Result<(), StreamerError> {
        match self.flights.join_next().await {
            Some(done) => self.landed(done, slots),
            None => Err(StreamerError::ReaderTask(
                "waited for a publish but none is in flight".into(),
            )),
        }
    }

    /// Takes the shard's buffered rows as a publish that advances its state (`last` ends its
    /// pass). The slot then compares the state this publish writes.
    fn make_part(&mut self, shard: u32, last: bool, slots: &mut HashMap<u32, ShardSlot>) -> Part {
        let slot = slots.get_mut(&shard).expect("a streamed shard");
        let taken = slot.buffer.take();
        let next = if last {
            slot.stored.state.completed(taken.rows, taken.last_ts)
        } else {
            slot.stored.state.advanced(taken.rows, taken.last_ts)
        };
        let key = self.keys.item_state(shard);
        let written = StoredShardState::written(next);
        let value = written.raw.clone().unwrap_or_default();
        let fence = Fence {
            compares: vec![slot.owner_fence.clone(), slot.stored.unchanged(&key)],
            bytes: key.len() + value.len(),
            ops: vec![TxnOp::put(key, value, None)],
        };
        slot.stored = written;
        slot.in_flight = true;
        Part {
            shard,
            last,
            samples: taken.samples,
            partitions: taken.partitions(),
            bytes: taken.bytes,
            batches: taken.batches,
            fence,
        }
    }

    /// Hands `parts` (one transaction) to a publish task once a producer is idle.
    async fn launch(
        &mut self,
        parts: Vec<Part>,
        slots: &mut HashMap<u32, ShardSlot>,
    ) -> Result<(), StreamerError> {
        while self.producers.is_empty() {
            self.land_next(slots).await?;
        }
        let producer = self.producers.pop().expect("checked above");
        self.flights.spawn(fly(
            producer,
            parts,
            self.source.clone(),
            self.stop.clone(),
            self.metrics.clone(),
        ));
        Ok(())
    }

    /// Records a finished publish task.
    fn landed(
        &mut self,
        done: Result<Landing, JoinError>,
        slots: &mut HashMap<u32, ShardSlot>,
    ) -> Result<(), StreamerError> {
        let landing = done.map_err(|e| StreamerError::ReaderTask(format!("publish task: {e}")))?;
        self.producers.push(landing.producer);
        self.metrics.transactions.inc_by(landing.transactions);
        self.report.transactions += landing.transactions;
        let mut failure = None;
        for part in landing.parts {
            let Some(slot) = slots.get_mut(&part.shard) else {
                continue;
            };
            slot.in_flight = false;
            match part.outcome {
                Publish::Landed => {
                    self.metrics.samples_published.inc_by(part.samples);
                    self.metrics.batches_published.inc_by(part.batches);
                    self.report.samples_published += part.samples;
                    self.report.batches_published += part.batches;
                    if part.last {
                        slot.completed = true;
                        self.metrics.shard_passes.inc();
                        self.report.shard_passes += 1;
                    }
                }
                Publish::Refused => {
                    self.metrics.fence_failures.inc();
                    tracing::info!(
                        shard = part.shard,
                        "shard moved or its state changed; leaving it for this pass"
                    );
                    slot.dropped = true;
                }
                Publish::Abandoned => slot.dropped = true,
                Publish::Failed(source) => {
                    slot.dropped = true;
                    failure.get_or_insert(source);
                }
            }
        }
        match failure {
            Some(source) => Err(StreamerError::Queue {
                operation: "publish",
                source,
            }),
            None => Ok(()),
        }
    }

    /// Waits for every publish in flight; once stopping, for at most [`SHUTDOWN_GRACE`].
    async fn drain_flights(
        &mut self,
        slots: &mut HashMap<u32, ShardSlot>,
    ) -> Result<(), StreamerError> {
        let stop = self.stop.clone();
        let grace = async move {
            stop.wait().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::pin!(grace);
        loop {
            tokio::select! {
                done = self.flights.join_next() => match done {
                    Some(done) => self.landed(done, slots)?,
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
}

/// Encodes each part's batches as CloudEvents and publishes the parts in one transaction. If
/// that transaction's fence fails (one of the shards moved), each part is retried on its own so
/// the others still go out.
async fn fly(
    mut producer: Producer,
    parts: Vec<Part>,
    source: Arc<str>,
    stop: Shutdown,
    metrics: StreamerMetrics,
) -> Landing {
    let mut landings = Vec::with_capacity(parts.len());
    let mut encoded: Vec<(Vec<OutgoingMessage>, Fence)> = Vec::with_capacity(parts.len());
    for part in parts {
        let messages: Vec<OutgoingMessage> = part
            .batches
            .into_iter()
            .map(|(partition, batch)| OutgoingMessage {
                partition,
                payload: BatchEvent::new(
                    uuid::Uuid::new_v4().simple().to_string(),
                    &*source,
                    batch,
                )
                .to_json(),
            })
            .collect();
        landings.push(PartLanding {
            shard: part.shard,
            last: part.last,
            samples: part.samples,
            batches: messages.len() as u64,
            outcome: Publish::Abandoned,
        });
        encoded.push((messages, part.fence));
    }
    let shards: Vec<u32> = landings.iter().map(|p| p.shard).collect();
    let mut transactions = 0;
    let outcomes: Vec<Publish> = if encoded.len() == 1 {
        let (messages, fence) = &encoded[0];
        vec![
            publish(
                &mut producer,
                messages,
                fence,
                &shards,
                &stop,
                &metrics,
                &mut transactions,
            )
            .await,
        ]
    } else {
        let messages: Vec<OutgoingMessage> = encoded
            .iter()
            .flat_map(|(m, _)| m.iter().cloned())
            .collect();
        let fence = Fence {
            compares: encoded
                .iter()
                .flat_map(|(_, f)| f.compares.iter().cloned())
                .collect(),
            ops: encoded
                .iter()
                .flat_map(|(_, f)| f.ops.iter().cloned())
                .collect(),
            bytes: encoded.iter().map(|(_, f)| f.bytes).sum(),
        };
        match publish(
            &mut producer,
            &messages,
            &fence,
            &shards,
            &stop,
            &metrics,
            &mut transactions,
        )
        .await
        {
            Publish::Refused => {
                let mut outcomes = Vec::with_capacity(encoded.len());
                for ((messages, fence), shard) in encoded.iter().zip(&shards) {
                    outcomes.push(
                        publish(
                            &mut producer,
                            messages,
                            fence,
                            &[*shard],
                            &stop,
                            &metrics,
                            &mut transactions,
                        )
                        .await,
                    );
                }
                outcomes
            }
            Publish::Landed => encoded.iter().map(|_| Publish::Landed).collect(),
            Publish::Abandoned => encoded.iter().map(|_| Publish::Abandoned).collect(),
            Publish::Failed(e) => {
                let mut outcomes = vec![Publish::Failed(e)];
                outcomes.extend(encoded.iter().skip(1).map(|_| Publish::Abandoned));
                outcomes
            }
        }
    };
    for (landing, outcome) in landings.iter_mut().zip(outcomes) {
        landing.outcome = outcome;
    }
    Landing {
        producer,
        parts: landings,
        transactions,
    }
}

/// Publishes `messages` with `fence` in one transaction, retrying transient failures and a full
/// queue until it lands, the fence refuses it, or the streamer stops.
async fn publish(
    producer: &mut Producer,
    messages: &[OutgoingMessage],
    fence: &Fence,
    shards: &[u32],
    stop: &Shutdown,
    metrics: &StreamerMetrics,
    transactions: &mut u64,
) -> Publish {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        let started = Instant::now();
        match producer
            .publish_fenced(messages.to_vec(), fence.clone())
            .await
        {
            Ok(_) => {
                metrics
                    .publish_latency
                    .observe(started.elapsed().as_secs_f64());
                *transactions += 1;
                return Publish::Landed;
            }
            Err(QueueError::FenceFailed) => return Publish::Refused,
            Err(e) if is_retryable(&e) => {
                metrics.publish_retries.inc();
                if stop.is_triggered() {
                    tracing::warn!(?shards, error = %e,
                        "publish failed while stopping; the shards' next owner publishes these rows");
                    return Publish::Abandoned;
                }
                tracing::warn!(?shards, error = %e, "publish failed; retrying");
                sleep_or_stop(backoff.next_delay(), stop).await;
            }
            Err(e) => return Publish::Failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use etcd_client::CompareOp;
    use etcd_queue::QueueConfig;
    use telemetry_model::{GpuInfo, GpuUuid, MetricName, TimestampMicros};
    use test_support::{unique_prefix, EtcdHarness};

    use super::*;

    /// A final part of `shard` with `samples` samples on queue partition `shard % 16`, whose fence
    /// requires the shard's state key to be absent.
    fn part(keys: &WorkGroupKeys, shard: u32, samples: u32) -> Part {
        let mut builder = SampleBatch::builder();
        let gpu = GpuInfo::new(GpuUuid::parse(&format!("GPU-{shard}")).unwrap());
        let metric = MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap();
        for i in 0..samples {
            builder.push(&gpu, &metric, TimestampMicros(1_000 + i64::from(i)), 1.0);
        }
        let key = keys.item_state(shard);
        let value = crate::shard::ShardState::default().completed(u64::from(samples), Some(2_000));
        let value = value.to_json();
        Part {
            shard,
            last: true,
            samples: u64::from(samples),
            batches: vec![(shard % 16, builder.build())],
            partitions: [shard % 16].into(),
            bytes: 4_096,
            fence: Fence {
                compares: vec![Compare::version(key.clone(), CompareOp::Equal, 0)],
                bytes: key.len() + value.len(),
                ops: vec![TxnOp::put(key, value, None)],
            },
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
        let metrics = StreamerMetrics::default();
        let landing = fly(
            queue.producer(),
            parts,
            "/streamer/test".into(),
            Shutdown::new(),
            metrics.clone(),
        )
        .await;
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
                .map(|m| BatchEvent::from_json(&m.payload).unwrap().batch.len())
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

    #[test]
    fn small_parts_share_a_transaction_up_to_the_limits() {
        let keys = WorkGroupKeys::new("/p", WORK_GROUP).unwrap();
        let mut size = TxnSize::default();
        for shard in 0..SHARDS {
            size = size.with(&part(&keys, shard, 1));
        }
        assert!(
            size.fits(),
            "a pass's 32 final parts fit one transaction: {size:?}"
        );
        for shard in 0..40 {
            size = size.with(&part(&keys, shard, 1));
        }
        assert!(!size.fits(), "72 parts do not: {size:?}");
    }

    #[test]
    fn retryable_errors() {
        assert!(is_retryable(&QueueError::Unavailable {
            operation: "x",
            waited: Duration::from_secs(1),
            last_error: "down".into()
        }));
        assert!(is_retryable(&QueueError::QueueFull {
            depth: 10,
            max: 10,
            waited: Duration::from_secs(1)
        }));
        assert!(!is_retryable(&QueueError::FenceFailed));
        assert!(!is_retryable(&QueueError::TransactionTooLarge {
            messages: 1,
            bytes: 1
        }));
        assert!(!is_retryable(&QueueError::PartitionMismatch {
            topic: "t".into(),
            stored: 16,
            configured: 8
        }));
    }
}
