//! Consuming a topic as a member of its consumer group: owned partitions, deliveries in order, and
//! fenced commits that can carry the caller's own writes (exactly-once effects).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, Txn, TxnOp, TxnOpResponse};

use crate::change_feed::{Change, ChangeFeed};
use crate::config::{ConsumerConfig, QueueConfig};
use crate::depth::{DepthReporter, Progress};
use crate::error::QueueError;
use crate::keys::{parse_message, trailing_number, GroupKeys, QueueKeys};
use crate::kv::{decimal_value, first_kv};
use crate::producer::Fence;
use crate::range::{RangePages, RangeRead};
use crate::retry::{is_transient, with_retry, Backoff};
use crate::txn_budget::MAX_TXN_OPS;
use crate::work_group::WorkGroup;

/// A message as delivered: its partition, its offset (sequence number) and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub partition: u32,
    pub offset: u64,
    pub payload: Vec<u8>,
}

/// Consecutive messages of one partition, handed out together and committed together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub partition: u32,
    pub messages: Vec<Message>,
    /// The committed offset the delivery starts after.
    pub after: u64,
}

impl Delivery {
    /// The offset the commit advances to.
    pub fn last_offset(&self) -> u64 {
        self.messages.last().map(|m| m.offset).unwrap_or(self.after)
    }
}

/// A message the consumer could not process, moved to the dead-letter prefix by a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub offset: u64,
    pub reason: String,
}

/// Operations a commit spends besides the caller's: the offset and its byte count, and the
/// message range delete.
pub const COMMIT_RESERVED_OPS: usize = 3;
/// Operations a dead letter adds to a commit (payload and reason).
pub const DEAD_LETTER_OPS: usize = 2;

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    pub ownership_changes: u64,
    pub commits: u64,
    pub messages_committed: u64,
    pub dead_letters: u64,
    pub watch_restarts: u64,
}

/// While busy, group state is re-read at most this often (events still wake an idle consumer at once).
const BUSY_SNAPSHOT_INTERVAL: Duration = Duration::from_millis(100);

/// One member of a topic's consumer group.
pub struct Consumer {
    client: Client,
    keys: QueueKeys,
    group_keys: GroupKeys,
    queue: QueueConfig,
    config: ConsumerConfig,
    group: WorkGroup,
    heads: BTreeMap<u32, u64>,
    offsets: BTreeMap<u32, u64>,
    /// Payload bytes committed from each partition, as of the last read or commit.
    offset_bytes: BTreeMap<u32, u64>,
    feed: Option<ChangeFeed>,
    need_snapshot: bool,
    last_snapshot: Option<Instant>,
    depth: DepthReporter,
    last_depth_write: Instant,
    cursor: usize,
    in_flight: Option<u32>,
    stats: ConsumerStats,
}

impl Consumer {
    pub(crate) async fn join(
        client: Client,
        keys: QueueKeys,
        group_keys: GroupKeys,
        queue: QueueConfig,
        config: ConsumerConfig,
    ) -> Result<Self, QueueError> {
        let group = WorkGroup::join(
            client.clone(),
            group_keys.work_group(),
            queue.partitions,
            config.member_id.clone(),
            config.lease_ttl,
            queue.retry_budget,
        )
        .await?;
        Ok(Consumer {
            client,
            keys,
            group_keys,
            depth: DepthReporter::new(Duration::from_millis(100)),
            last_depth_write: Instant::now(),
            queue,
            config,
            group,
            heads: BTreeMap::new(),
            offsets: BTreeMap::new(),
            offset_bytes: BTreeMap::new(),
            feed: None,
            need_snapshot: true,
            last_snapshot: None,
            cursor: 0,
            in_flight: None,
            stats: ConsumerStats::default(),
        })
    }

    pub fn member_id(&self) -> &str {
        self.group.member_id()
    }

    /// The lease this member's registration and partition ownership hang on.
    pub fn lease_id(&self) -> i64 {
        self.group.lease_id()
    }

    /// Partitions owned now, sorted.
    pub fn owned_partitions(&self) -> Vec<u32> {
        self.group.owned().keys().copied().collect()
    }

    /// Pending messages per owned partition, as of the last read.
    pub fn lag(&self) -> BTreeMap<u32, u64> {
        self.group
            .owned()
            .keys()
            .map(|p| {
                let head = self.heads.get(p).copied().unwrap_or(0);
                (
                    *p,
                    head.saturating_sub(self.offsets.get(p).copied().unwrap_or(0)),
                )
            })
            .collect()
    }

    pub fn stats(&self) -> ConsumerStats {
        self.stats
    }

    /// Waits for the next delivery.
    pub async fn next(&mut self) -> Result<Delivery, QueueError> {
        loop {
            if let Some(delivery) = self.poll(Duration::from_secs(3600)).await? {
                return Ok(delivery);
            }
        }
    }

    /// Waits up to `max_wait` for a delivery from an owned partition. Meanwhile keeps ownership
    /// in line with the group (rebalancing between deliveries) and the depth key current.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Option<Delivery>, QueueError> {
        if let Some(partition) = self.in_flight {
            return Err(QueueError::DeliveryInFlight { partition });
        }
        let deadline = Instant::now() + max_wait;
        loop {
            if let Some(feed) = self.feed.as_mut() {
                match feed.try_changed() {
                    Some(Ok(change)) => self.changed(change),
                    Some(Err(e)) => self.feed_broken(e),
                    None => {}
                }
            }
            if self.group.lease_lost() {
                self.need_snapshot = true;
            }
            let busy = self.has_work();
            let snapshot_due = self.need_snapshot
                && (!busy
                    || self
                        .last_snapshot
                        .is_none_or(|t| t.elapsed() >= BUSY_SNAPSHOT_INTERVAL));
            if snapshot_due || self.feed.is_none() {
                self.refresh().await?;
            }
            if let Some(delivery) = self.fetch().await? {
                return Ok(Some(delivery));
            }
            self.maybe_write_depth().await;
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let tick = (self.last_depth_write + self.config.depth_interval)
                .max(now + Duration::from_millis(5));
            let wake = deadline
                .min(tick)
                .min(self.depth.due_at().unwrap_or(deadline));
            let Some(feed) = self.feed.as_mut() else {
                continue;
            };
            tokio::select! {
                changed = feed.changed() => match changed {
                    Ok(change) => self.changed(change),
                    Err(e) => self.feed_broken(e),
                },
                _ = self.group.wait_lease_lost() => self.need_snapshot = true,
                _ = tokio::time::sleep_until(wake.into()) => {
                    // The periodic re-read is a safety net; events normally arrive first.
                    if Instant::now() >= tick {
                        self.need_snapshot = true;
                    }
                }
            }
        }
    }

    fn changed(&mut self, change: Change) {
        match change {
            Change::Urgent => {
                // Membership or ownership moved: rebalance before the next delivery.
                self.need_snapshot = true;
                self.last_snapshot = None;
            }
            Change::Lazy(heads) => {
                // New messages: the head values in the events are all that changed, so no
                // re-read is needed before fetching.
                for (key, value) in heads {
                    let partition = trailing_number(&key);
                    let head = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok());
                    if let (Some(p), Some(h)) = (partition, head) {
                        let entry = self.heads.entry(p as u32).or_insert(0);
                        *entry = (*entry).max(h);
                    }
                }
            }
        }
    }

    fn feed_broken(&mut self, error: QueueError) {
        tracing::info!(error = %error, "watch broke; re-reading state and re-watching");
        self.feed = None;
        self.need_snapshot = true;
        self.last_snapshot = None;
        self.stats.watch_restarts += 1;
    }

    fn has_work(&self) -> bool {
        self.group.owned().keys().any(|p| {
            self.heads.get(p).copied().unwrap_or(0) > self.offsets.get(p).copied().unwrap_or(0)
        })
    }

    /// Re-reads members, owners, heads and offsets at one revision, rebalances, and (re)opens the
    /// change feed from just after that revision so that no change in between is missed.
    async fn refresh(&mut self) -> Result<(), QueueError> {
        let ranges = Progress::ranges(&self.keys, &self.group_keys);
        let (snapshot, kvs) = self.group.snapshot_with(&ranges).await?;
        let progress = Progress::from_kvs(snapshot.revision, &kvs);
        self.heads = progress.heads;
        self.offsets = progress.offsets;
        self.offset_bytes = progress.offset_bytes;
        let offset_key = |p: u32| self.group_keys.offset(p);
        let offset_bytes_key = |p: u32| self.group_keys.offset_bytes(p);
        let head_key = |p: u32| self.keys.head(p);
        let (change, reads) = self
            .group
            .rebalance(&snapshot, |p| {
                vec![
                    TxnOp::get(offset_key(p), None),
                    TxnOp::get(head_key(p), None),
                    TxnOp::get(offset_bytes_key(p), None),
                ]
            })
            .await?;
        for responses in reads.values() {
            for response in responses {
                if let TxnOpResponse::Get(get) = response {
                    for kv in get.kvs() {
                        let key = kv.key();
                        let Some(p) = trailing_number(key) else {
                            continue;
                        };
                        let Some(value) = decimal_value(kv) else {
                            continue;
                        };
                        if key.starts_with(self.group_keys.offsets_prefix().as_bytes()) {
                            self.offsets.insert(p as u32, value);
                        } else if key.starts_with(self.group_keys.offset_bytes_prefix().as_bytes())
                        {
                            self.offset_bytes.insert(p as u32, value);
                        } else {
                            self.heads.insert(p as u32, value);
                        }
                    }
                }
            }
        }
        let changes = change.acquired.len() + change.released.len() + change.lost.len();
        self.stats.ownership_changes += changes as u64;
        if self.feed.is_none() {
            let (members, owners) = self.group_keys.work_group_prefixes();
            let lazy = [self.keys.heads_prefix()];
            match ChangeFeed::open(
                &self.client,
                &[members, owners],
                &lazy,
                snapshot.revision + 1,
            )
            .await
            {
                Ok(feed) => self.feed = Some(feed),
                Err(e) => {
                    tracing::warn!(error = %e, "could not open watch; will retry");
                    Backoff::for_etcd().wait().await;
                }
            }
        }
        self.need_snapshot = self.feed.is_none();
        self.last_snapshot = Some(Instant::now());
        Ok(())
    }

    /// Reads the next messages of an owned partition with pending messages, round robin.
    async fn fetch(&mut self) -> Result<Option<Delivery>, QueueError> {
        let owned: Vec<u32> = self.group.owned().keys().copied().collect();
        if owned.is_empty() {
            return Ok(None);
        }
        for i in 0..owned.len() {
            let partition = owned[(self.cursor + i) % owned.len()];
            let after = self.offsets.get(&partition).copied().unwrap_or(0);
            if self.heads.get(&partition).copied().unwrap_or(0) <= after {
                continue;
            }
            let messages = self.read_pending(partition, after).await?;
            if messages.is_empty() {
                // The head we saw is ahead of what is readable: our view is stale.
                self.need_snapshot = true;
                continue;
            }
            self.cursor = (self.cursor + i + 1) % owned.len();
            self.in_flight = Some(partition);
            return Ok(Some(Delivery {
                partition,
                messages,
                after,
            }));
        }
        Ok(None)
    }

    /// The messages of `partition` after `after` that one delivery holds: at most `max_messages`,
    /// and at most `max_bytes` of payload (but always the first). Bounded before any payload is
    /// read: a keys-only read lists the pending messages with the payload size each key carries,
    /// the delivery is cut from those sizes, and its payloads are read in ranges that each fit
    /// one page.
    async fn read_pending(&self, partition: u32, after: u64) -> Result<Vec<Message>, QueueError> {
        let pages = |operation, range| {
            RangePages::new(
                self.client.clone(),
                operation,
                range,
                self.queue.retry_budget,
            )
        };
        let listed = RangeRead::between(
            self.keys.message(partition, after + 1),
            self.keys.message(partition, u64::MAX),
            0,
        )
        .keys_only()
        .limit(self.config.max_messages.max(1));
        let mut chosen: Vec<(Vec<u8>, usize)> = Vec::new();
        let mut bytes = 0;
        for kv in pages("list messages", listed).collect().await? {
            let Some((_, size)) = parse_message(kv.key()) else {
                continue;
            };
            // A key without its size holds at most the largest payload allowed.
            let size = size.unwrap_or(self.queue.max_payload_bytes);
            if !chosen.is_empty() && bytes + size > self.config.max_bytes {
                break;
            }
            bytes += size;
            chosen.push((kv.key().to_vec(), size));
        }
        let mut messages = Vec::with_capacity(chosen.len());
        let mut rest = chosen.as_slice();
        while let Some((first, _)) = rest.first() {
            // The longest run of keys that one page holds at the largest size among them.
            let mut take = 0;
            let mut largest = 0;
            for (_, size) in rest {
                let candidate = largest.max(*size);
                let range = RangeRead::between(first.clone(), Vec::new(), candidate);
                if take > 0 && take + 1 > range.keys_per_page() {
                    break;
                }
                largest = candidate;
                take += 1;
            }
            let (run, after_run) = rest.split_at(take);
            rest = after_run;
            let mut end = run[take - 1].0.clone();
            end.push(0);
            let range = RangeRead::between(first.clone(), end, largest).limit(take);
            for kv in pages("fetch messages", range).collect().await? {
                let Some((offset, _)) = parse_message(kv.key()) else {
                    continue;
                };
                messages.push(Message {
                    partition,
                    offset,
                    payload: kv.into_key_value().1,
                });
            }
        }
        Ok(messages)
    }

    /// Gives a delivery back uncommitted: its messages will be delivered again.
    pub fn abandon(&mut self, delivery: &Delivery) {
        if self.in_flight == Some(delivery.partition) {
            self.in_flight = None;
        }
    }

    /// Commits `delivery`: advances the partition's offset past it, deletes its messages, moves
    /// `dead_letters` to the dead-letter prefix, and applies `fence`'s operations, all in ONE
    /// transaction that holds only if this member still owns the partition, the offset is still
    /// where the delivery started, and every compare of `fence` holds. Otherwise nothing is
    /// written and the error says why ([`QueueError::LostOwnership`], [`QueueError::StaleDelivery`],
    /// [`QueueError::FenceFailed`]). Returns the etcd revision of the commit: the `mod_revision`
    /// of every key the commit wrote.
    ///
    /// `delivery` may be a prefix of what [`Consumer::poll`] returned (fewer messages): the rest is
    /// delivered again.
    ///
    /// Whatever the error, the partition is never left owned by nobody: it is given up only when
    /// its owner key is gone or on another member's lease. A commit etcd refused (a permanent
    /// error) wrote nothing and the partition stays this member's; a commit whose answer was lost
    /// is resolved by reading the owner and offset back, and if etcd stays unreachable for the
    /// retry budget the error is returned with the partition still owned: the next poll re-reads
    /// the committed offset, so a commit that lands after its timeout is not delivered again.
    pub async fn commit(
        &mut self,
        delivery: &Delivery,
        fence: Fence,
        dead_letters: &[DeadLetter],
    ) -> Result<i64, QueueError> {
        let partition = delivery.partition;
        let ops_needed =
            COMMIT_RESERVED_OPS + DEAD_LETTER_OPS * dead_letters.len() + fence.ops.len();
        if ops_needed > MAX_TXN_OPS {
            return Err(QueueError::TransactionTooLarge {
                messages: delivery.messages.len(),
                bytes: fence.bytes,
            });
        }
        if !self.group.owned().contains_key(&partition) {
            self.in_flight = None;
            return Err(QueueError::LostOwnership { partition });
        }
        let attempt = CommitAttempt::new(self, delivery, fence, dead_letters);
        match self.send_commit(&attempt).await {
            Ok(revision) => {
                self.in_flight = None;
                self.offsets.insert(partition, attempt.to);
                self.offset_bytes.insert(partition, attempt.to_bytes);
                self.stats.commits += 1;
                self.stats.messages_committed += delivery.messages.len() as u64;
                self.stats.dead_letters += dead_letters.len() as u64;
                self.depth.mark_dirty();
                self.maybe_write_depth().await;
                Ok(revision)
            }
            // The caller's own compares failed: it re-prepares and commits the delivery again.
            Err(QueueError::FenceFailed) => Err(QueueError::FenceFailed),
            Err(e) => {
                self.in_flight = None;
                // Re-read the committed offsets before the next delivery: a commit whose outcome
                // is unknown may have landed.
                self.need_snapshot = true;
                self.last_snapshot = None;
                Err(e)
            }
        }
    }

    /// Sends `attempt` until it lands or its outcome is known, retrying transient failures for
    /// the retry budget.
    async fn send_commit(&mut self, attempt: &CommitAttempt) -> Result<i64, QueueError> {
        let partition = attempt.partition;
        let started = Instant::now();
        let mut backoff = Backoff::for_etcd();
        loop {
            let Some(owner_fence) = self.group.owner_fence(partition) else {
                return Err(QueueError::LostOwnership { partition });
            };
            let mut compares = vec![
                owner_fence,
                Compare::value(
                    attempt.offset_key.clone(),
                    CompareOp::Equal,
                    attempt.from.to_string(),
                ),
            ];
            compares.extend(attempt.compares.iter().cloned());
            let txn = Txn::new()
                .when(compares)
                .and_then(attempt.ops.clone())
                .or_else(attempt.read_back());
            let mut client = self.client.clone();
            match client.txn(txn).await {
                Ok(response) if response.succeeded() => {
                    return Ok(response.header().map(|h| h.revision()).unwrap_or_default())
                }
                Ok(response) => {
                    let owned_rev = self.group.owned().get(&partition).copied();
                    let state = CommitState::read(&response.op_responses());
                    match self.judge(attempt, &state) {
                        // An earlier attempt whose answer was lost landed.
                        Judged::Landed(revision) => return Ok(revision),
                        // Our owner key had a revision we did not know: fenced on it now.
                        Judged::NotLanded if state.owner_revision() != owned_rev => {
                            backoff.wait().await;
                        }
                        Judged::NotLanded => return Err(QueueError::FenceFailed),
                        Judged::Failed(e) => return Err(e),
                    }
                }
                Err(e) if is_transient(&e) => {
                    if started.elapsed() >= self.queue.retry_budget {
                        return Err(QueueError::Unavailable {
                            operation: "commit",
                            waited: started.elapsed(),
                            last_error: e.to_string(),
                        });
                    }
                    tracing::warn!(partition, error = %e, "commit failed; checking whether it landed");
                    backoff.wait().await;
                    let budget = self.queue.retry_budget.saturating_sub(started.elapsed());
                    let state = self.read_commit_state(attempt, budget).await?;
                    match self.judge(attempt, &state) {
                        Judged::Landed(revision) => return Ok(revision),
                        Judged::NotLanded => {}
                        Judged::Failed(e) => return Err(e),
                    }
                }
                // Refused by etcd (too large, a lease gone, no space): nothing was written.
                Err(e) => {
                    return Err(QueueError::Etcd {
                        operation: "commit",
                        source: e,
                    })
                }
            }
        }
    }

    /// Writes `fence` for `delivery` without committing it, in one transaction that holds only if
    /// this member still owns the partition and its offset is still where the delivery started
    /// (the conditions of [`Consumer::commit`]): a member that lost the partition writes nothing.
    /// For a delivery whose writes need several transactions, all but the last are written this
    /// way; the caller makes these writes idempotent, since a delivery that is never committed is
    /// delivered again, and a write whose answer was lost is sent again (its own compares then
    /// fail if it had landed). Returns the revision of the write. Errors and books as
    /// [`Consumer::commit`]'s: the partition is given up only when its owner key is gone or on
    /// another member's lease, and a failure other than [`QueueError::FenceFailed`] ends the
    /// delivery (the committed offsets are re-read before the next).
    pub async fn write_fenced(
        &mut self,
        delivery: &Delivery,
        fence: Fence,
    ) -> Result<i64, QueueError> {
        let partition = delivery.partition;
        if !self.group.owned().contains_key(&partition) {
            self.in_flight = None;
            return Err(QueueError::LostOwnership { partition });
        }
        let attempt = CommitAttempt::fenced_write(self, delivery, fence);
        let outcome = self.send_commit(&attempt).await;
        if let Err(e) = &outcome {
            if !matches!(e, QueueError::FenceFailed) {
                self.in_flight = None;
                self.need_snapshot = true;
                self.last_snapshot = None;
            }
        }
        outcome
    }

    /// What the owner key and the committed offset say about `attempt`. Keeps the books: a
    /// partition whose owner key is gone or on another lease is forgotten (nobody else can be
    /// holding it for us), an owner key on our lease is ours whatever its revision, and an offset
    /// moved by an earlier commit of ours is adopted.
    fn judge(&mut self, attempt: &CommitAttempt, state: &CommitState) -> Judged {
        let partition = attempt.partition;
        match state.owner {
            Some((revision, lease)) if self.group.is_own_lease(lease) => {
                self.group.adopt(partition, revision);
            }
            _ => {
                self.group.forget(partition);
                return Judged::Failed(QueueError::LostOwnership { partition });
            }
        }
        match state.offset {
            Some((offset, revision)) if offset == attempt.to && attempt.to != attempt.from => {
                Judged::Landed(revision)
            }
            Some((offset, _)) if offset == attempt.from => Judged::NotLanded,
            offset => {
                let actual = offset.map_or(0, |(o, _)| o);
                self.offsets.insert(partition, actual);
                self.offset_bytes
                    .insert(partition, state.offset_bytes.unwrap_or(0));
                Judged::Failed(QueueError::StaleDelivery {
                    partition,
                    expected: attempt.from,
                    actual,
                })
            }
        }
    }

    /// Reads the owner key and the committed offset of `attempt`'s partition, retrying for
    /// `budget`.
    async fn read_commit_state(
        &self,
        attempt: &CommitAttempt,
        budget: Duration,
    ) -> Result<CommitState, QueueError> {
        let response = with_retry("read commit state", budget, || {
            let mut client = self.client.clone();
            let txn = Txn::new().and_then(attempt.read_back());
            async move { client.txn(txn).await }
        })
        .await?;
        Ok(CommitState::read(&response.op_responses()))
    }

    async fn maybe_write_depth(&mut self) {
        let periodic = self.last_depth_write.elapsed() >= self.config.depth_interval;
        if self.depth.due() || periodic {
            match self.write_depth().await {
                Ok(_) => self.last_depth_write = Instant::now(),
                Err(e) => tracing::debug!(error = %e, "depth update failed; will retry"),
            }
        }
    }

    /// Recomputes the depth key from the heads and offsets and writes it.
    async fn write_depth(&mut self) -> Result<u64, QueueError> {
        self.depth
            .flush(
                &self.client,
                &self.keys,
                &self.group_keys,
                self.queue.retry_budget,
            )
            .await
            .map(|progress| progress.depth())
    }

    /// Leaves the group: releases owned partitions (commit or abandon in-flight work first),
    /// writes the depth key, deregisters and revokes the lease.
    pub async fn leave(mut self) -> Result<(), QueueError> {
        let _ = self.write_depth().await;
        self.group.leave().await
    }
}

/// One commit as it is sent, attempt after attempt: the owner compare is added per attempt, as an
/// owner key of ours with a revision we did not know is adopted between attempts.
struct CommitAttempt {
    partition: u32,
    from: u64,
    to: u64,
    /// The partition's committed payload bytes once the commit lands.
    to_bytes: u64,
    offset_key: String,
    offset_bytes_key: String,
    owner_key: String,
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
}

impl CommitAttempt {
    fn new(
        consumer: &Consumer,
        delivery: &Delivery,
        fence: Fence,
        dead_letters: &[DeadLetter],
    ) -> Self {
        let partition = delivery.partition;
        let from = delivery.after;
        let to = delivery.last_offset();
        let keys = &consumer.keys;
        let offset_key = consumer.group_keys.offset(partition);
        let offset_bytes_key = consumer.group_keys.offset_bytes(partition);
        // The offset's compare fences its byte count too: both are only ever written together.
        let delivered: u64 = delivery
            .messages
            .iter()
            .map(|m| m.payload.len() as u64)
            .sum();
        let to_bytes = consumer.offset_bytes.get(&partition).copied().unwrap_or(0) + delivered;
        let mut ops = vec![
            TxnOp::put(offset_key.clone(), to.to_string(), None),
            TxnOp::put(offset_bytes_key.clone(), to_bytes.to_string(), None),
            TxnOp::delete(
                keys.message(partition, from + 1),
                Some(DeleteOptions::new().with_range(keys.message(partition, to + 1))),
            ),
        ];
        for dead in dead_letters {
            let payload = delivery
                .messages
                .iter()
                .find(|m| m.offset == dead.offset)
                .map(|m| m.payload.clone())
                .unwrap_or_default();
            ops.push(TxnOp::put(keys.dead(partition, dead.offset), payload, None));
            ops.push(TxnOp::put(
                keys.dead_reason(partition, dead.offset),
                dead.reason.clone(),
                None,
            ));
        }
        ops.extend(fence.ops);
        CommitAttempt {
            partition,
            from,
            to,
            to_bytes,
            owner_key: consumer.group_keys.work_group().owner(partition),
            offset_key,
            offset_bytes_key,
            compares: fence.compares,
            ops,
        }
    }

    /// `fence` alone, on the conditions of a commit of `delivery`: the offset stays where it is,
    /// so the attempt never counts as landed by the offset it reads back.
    fn fenced_write(consumer: &Consumer, delivery: &Delivery, fence: Fence) -> Self {
        let partition = delivery.partition;
        CommitAttempt {
            partition,
            from: delivery.after,
            to: delivery.after,
            to_bytes: consumer.offset_bytes.get(&partition).copied().unwrap_or(0),
            owner_key: consumer.group_keys.work_group().owner(partition),
            offset_key: consumer.group_keys.offset(partition),
            offset_bytes_key: consumer.group_keys.offset_bytes(partition),
            compares: fence.compares,
            ops: fence.ops,
        }
    }

    /// The reads that tell what became of the commit: the owner key, the committed offset and
    /// its byte count.
    fn read_back(&self) -> [TxnOp; 3] {
        [
            TxnOp::get(self.owner_key.clone(), None),
            TxnOp::get(self.offset_key.clone(), None),
            TxnOp::get(self.offset_bytes_key.clone(), None),
        ]
    }
}

/// The owner key and committed offset of a partition, as [`CommitAttempt::read_back`] read them.
struct CommitState {
    /// The owner key's `mod_revision` and lease.
    owner: Option<(i64, i64)>,
    /// The committed offset and the revision that wrote it.
    offset: Option<(u64, i64)>,
    /// The committed payload bytes.
    offset_bytes: Option<u64>,
}

impl CommitState {
    fn read(responses: &[TxnOpResponse]) -> Self {
        CommitState {
            owner: first_kv(responses.first()).map(|kv| (kv.mod_revision(), kv.lease())),
            offset: first_kv(responses.get(1))
                .and_then(|kv| Some((decimal_value(kv)?, kv.mod_revision()))),
            offset_bytes: first_kv(responses.get(2)).and_then(decimal_value),
        }
    }

    fn owner_revision(&self) -> Option<i64> {
        self.owner.map(|(revision, _)| revision)
    }
}

/// What a commit's read-back says.
enum Judged {
    /// The commit (an earlier attempt of it) landed at this revision.
    Landed(i64),
    /// Nothing of it landed; the partition is still ours at the offset it started from.
    NotLanded,
    /// It cannot land: the partition moved, or its offset did.
    Failed(QueueError),
}
