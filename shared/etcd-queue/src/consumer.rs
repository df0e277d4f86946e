//! Consuming a topic as a member of its consumer group: owned partitions, deliveries in order, and
//! fenced commits that can carry the caller's own writes (exactly-once effects).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, Txn, TxnOp, TxnOpResponse};
use futures::future::try_join_all;

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

/// What one partition contributes to a commit: the first `take` messages of its delivery (the
/// rest is delivered again), the caller's writes for them, and the messages among them that go
/// to the dead-letter prefix.
#[derive(Debug)]
pub struct PartitionCommit<'a> {
    pub delivery: &'a Delivery,
    pub take: usize,
    pub fence: Fence,
    pub dead_letters: &'a [DeadLetter],
}

impl<'a> PartitionCommit<'a> {
    /// The whole of `delivery`.
    pub fn whole(delivery: &'a Delivery, fence: Fence, dead_letters: &'a [DeadLetter]) -> Self {
        Self::prefix(delivery, delivery.messages.len(), fence, dead_letters)
    }

    /// The first `take` messages of `delivery` (all of them if it has fewer).
    pub fn prefix(
        delivery: &'a Delivery,
        take: usize,
        fence: Fence,
        dead_letters: &'a [DeadLetter],
    ) -> Self {
        PartitionCommit {
            delivery,
            take: take.min(delivery.messages.len()),
            fence,
            dead_letters,
        }
    }

    fn messages(&self) -> &'a [Message] {
        &self.delivery.messages[..self.take]
    }

    /// Operations the commit spends on this partition, the caller's included.
    fn ops(&self) -> usize {
        COMMIT_RESERVED_OPS + DEAD_LETTER_OPS * self.dead_letters.len() + self.fence.ops.len()
    }

    /// Compares the commit spends on this partition: owner and offset, and the caller's.
    fn compares(&self) -> usize {
        COMMIT_RESERVED_COMPARES + self.fence.compares.len()
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
/// Compares a commit spends on each partition besides the caller's: owner and offset.
pub const COMMIT_RESERVED_COMPARES: usize = 2;
/// Reads a failed commit spends on each partition to tell what became of it: owner, offset and
/// the offset's byte count.
pub const COMMIT_READ_BACK_OPS: usize = 3;

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
    /// Partitions with a delivery handed out and neither committed nor abandoned.
    in_flight: BTreeSet<u32>,
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
            in_flight: BTreeSet::new(),
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
        Ok(self.poll_many(max_wait, 1).await?.pop())
    }

    /// Waits up to `max_wait` for deliveries, then hands out one from each owned partition with
    /// pending messages, at most `max_partitions` (round robin), read concurrently: a consumer
    /// that commits them together visits all its partitions in one round trip. Empty when
    /// nothing came within `max_wait`. Each delivery is in flight until it is committed or
    /// abandoned; polling again before that is an error.
    pub async fn poll_many(
        &mut self,
        max_wait: Duration,
        max_partitions: usize,
    ) -> Result<Vec<Delivery>, QueueError> {
        if let Some(&partition) = self.in_flight.first() {
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
            let deliveries = self.fetch(max_partitions.max(1)).await?;
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            self.maybe_write_depth().await;
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
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

    /// Reads the next messages of up to `limit` owned partitions with pending messages, round
    /// robin, all at once.
    async fn fetch(&mut self, limit: usize) -> Result<Vec<Delivery>, QueueError> {
        let owned: Vec<u32> = self.group.owned().keys().copied().collect();
        let mut pending = Vec::new();
        let mut next_cursor = self.cursor;
        for i in 0..owned.len() {
            if pending.len() == limit {
                break;
            }
            let partition = owned[(self.cursor + i) % owned.len()];
            let after = self.offsets.get(&partition).copied().unwrap_or(0);
            if self.heads.get(&partition).copied().unwrap_or(0) > after {
                pending.push((partition, after));
                next_cursor = (self.cursor + i + 1) % owned.len();
            }
        }
        let read = try_join_all(
            pending
                .iter()
                .map(|&(partition, after)| self.read_pending(partition, after)),
        )
        .await?;
        self.cursor = next_cursor;
        let mut deliveries = Vec::with_capacity(pending.len());
        for ((partition, after), messages) in pending.into_iter().zip(read) {
            if messages.is_empty() {
                // The head we saw is ahead of what is readable: our view is stale.
                self.need_snapshot = true;
                continue;
            }
            self.in_flight.insert(partition);
            deliveries.push(Delivery {
                partition,
                messages,
                after,
            });
        }
        Ok(deliveries)
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
        self.in_flight.remove(&delivery.partition);
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
        self.commit_all(vec![PartitionCommit::whole(delivery, fence, dead_letters)])
            .await
    }

    /// Commits the deliveries of several partitions in ONE transaction, each as
    /// [`Consumer::commit`] commits one: it holds only if this member owns every one of the
    /// partitions, each offset is still where its delivery started, and every compare of every
    /// fence holds; otherwise nothing of any of them is written. The partitions must differ, and
    /// together stay within the transaction budget (operations, compares, and the reads that
    /// tell what became of a failed commit; [`QueueError::TransactionTooLarge`] otherwise).
    ///
    /// Errors as [`Consumer::commit`]'s, for the first partition that failed: after
    /// [`QueueError::FenceFailed`] every delivery is still in flight, after any other error none
    /// is. A partition that was lost does not stop the caller from committing the others again
    /// without it: the books of each are kept by what etcd said about it.
    pub async fn commit_all(
        &mut self,
        commits: Vec<PartitionCommit<'_>>,
    ) -> Result<i64, QueueError> {
        let partitions: BTreeSet<u32> = commits.iter().map(|c| c.delivery.partition).collect();
        assert_eq!(
            partitions.len(),
            commits.len(),
            "a commit holds one delivery per partition"
        );
        let ops: usize = commits.iter().map(PartitionCommit::ops).sum();
        let compares: usize = commits.iter().map(PartitionCommit::compares).sum();
        if ops > MAX_TXN_OPS
            || compares > MAX_TXN_OPS
            || COMMIT_READ_BACK_OPS * commits.len() > MAX_TXN_OPS
        {
            return Err(QueueError::TransactionTooLarge {
                messages: commits.iter().map(|c| c.take).sum(),
                bytes: commits.iter().map(|c| c.fence.bytes).sum(),
            });
        }
        if let Some(partition) = partitions
            .iter()
            .copied()
            .find(|p| !self.group.owned().contains_key(p))
        {
            for p in &partitions {
                self.in_flight.remove(p);
            }
            return Err(QueueError::LostOwnership { partition });
        }
        let messages: u64 = commits.iter().map(|c| c.take as u64).sum();
        let dead_letters: u64 = commits.iter().map(|c| c.dead_letters.len() as u64).sum();
        let attempt = CommitAttempt::new(self, commits);
        match self.send_commit(&attempt).await {
            Ok(revision) => {
                for part in &attempt.partitions {
                    self.in_flight.remove(&part.partition);
                    self.offsets.insert(part.partition, part.to);
                    self.offset_bytes.insert(part.partition, part.to_bytes);
                }
                self.stats.commits += 1;
                self.stats.messages_committed += messages;
                self.stats.dead_letters += dead_letters;
                self.depth.mark_dirty();
                self.maybe_write_depth().await;
                Ok(revision)
            }
            // The caller's own compares failed: it re-prepares and commits the deliveries again.
            Err(QueueError::FenceFailed) => Err(QueueError::FenceFailed),
            Err(e) => {
                for part in &attempt.partitions {
                    self.in_flight.remove(&part.partition);
                }
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
        let started = Instant::now();
        let mut backoff = Backoff::for_etcd();
        loop {
            let mut compares = Vec::with_capacity(
                COMMIT_RESERVED_COMPARES * attempt.partitions.len() + attempt.compares.len(),
            );
            for part in &attempt.partitions {
                let Some(owner_fence) = self.group.owner_fence(part.partition) else {
                    return Err(QueueError::LostOwnership {
                        partition: part.partition,
                    });
                };
                compares.push(owner_fence);
                compares.push(Compare::value(
                    part.offset_key.clone(),
                    CompareOp::Equal,
                    part.from.to_string(),
                ));
            }
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
                    let owned_revisions: Vec<Option<i64>> = attempt
                        .partitions
                        .iter()
                        .map(|part| self.group.owned().get(&part.partition).copied())
                        .collect();
                    let states = CommitState::read_all(&response.op_responses());
                    // Our owner key had a revision we did not know: fenced on it now.
                    let owner_moved = states
                        .iter()
                        .zip(&owned_revisions)
                        .any(|(state, known)| state.owner_revision() != *known);
                    match self.judge(attempt, &states) {
                        // An earlier attempt whose answer was lost landed.
                        Judged::Landed(revision) => return Ok(revision),
                        Judged::NotLanded if owner_moved => backoff.wait().await,
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
                    tracing::warn!(partitions = ?attempt.partition_ids(), error = %e,
                        "commit failed; checking whether it landed");
                    backoff.wait().await;
                    let budget = self.queue.retry_budget.saturating_sub(started.elapsed());
                    let states = self.read_commit_state(attempt, budget).await?;
                    match self.judge(attempt, &states) {
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
            self.in_flight.remove(&partition);
            return Err(QueueError::LostOwnership { partition });
        }
        let attempt = CommitAttempt::fenced_write(self, delivery, fence);
        let outcome = self.send_commit(&attempt).await;
        if let Err(e) = &outcome {
            if !matches!(e, QueueError::FenceFailed) {
                self.in_flight.remove(&partition);
                self.need_snapshot = true;
                self.last_snapshot = None;
            }
        }
        outcome
    }

    /// What the owner keys and the committed offsets say about `attempt`: landed if any of its
    /// partitions shows it landed (the transaction is atomic), else the first partition's failure,
    /// else not landed. Every partition's books are kept, whatever the verdict.
    fn judge(&mut self, attempt: &CommitAttempt, states: &[CommitState]) -> Judged {
        let mut verdict = Judged::NotLanded;
        for (part, state) in attempt.partitions.iter().zip(states) {
            verdict = match (verdict, self.judge_partition(part, state)) {
                (Judged::Landed(revision), _) | (_, Judged::Landed(revision)) => {
                    Judged::Landed(revision)
                }
                (Judged::Failed(e), _) | (Judged::NotLanded, Judged::Failed(e)) => {
                    Judged::Failed(e)
                }
                (Judged::NotLanded, Judged::NotLanded) => Judged::NotLanded,
            };
        }
        verdict
    }

    /// What the owner key and the committed offset say about one partition of a commit. Keeps
    /// the books: a partition whose owner key is gone or on another lease is forgotten (nobody
    /// else can be holding it for us), an owner key on our lease is ours whatever its revision,
    /// and an offset moved by an earlier commit of ours is adopted.
    fn judge_partition(&mut self, part: &PartitionAttempt, state: &CommitState) -> Judged {
        let partition = part.partition;
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
            Some((offset, revision)) if offset == part.to && part.to != part.from => {
                Judged::Landed(revision)
            }
            Some((offset, _)) if offset == part.from => Judged::NotLanded,
            offset => {
                let actual = offset.map_or(0, |(o, _)| o);
                self.offsets.insert(partition, actual);
                self.offset_bytes
                    .insert(partition, state.offset_bytes.unwrap_or(0));
                Judged::Failed(QueueError::StaleDelivery {
                    partition,
                    expected: part.from,
                    actual,
                })
            }
        }
    }

    /// Reads the owner keys and the committed offsets of `attempt`'s partitions, retrying for
    /// `budget`.
    async fn read_commit_state(
        &self,
        attempt: &CommitAttempt,
        budget: Duration,
    ) -> Result<Vec<CommitState>, QueueError> {
        let response = with_retry("read commit state", budget, || {
            let mut client = self.client.clone();
            let txn = Txn::new().and_then(attempt.read_back());
            async move { client.txn(txn).await }
        })
        .await?;
        Ok(CommitState::read_all(&response.op_responses()))
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

/// One commit as it is sent, attempt after attempt: the owner compares are added per attempt, as
/// an owner key of ours with a revision we did not know is adopted between attempts.
struct CommitAttempt {
    partitions: Vec<PartitionAttempt>,
    /// The callers' compares, all partitions'.
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
}

/// What a commit does to one partition, and the keys that tell whether it did.
struct PartitionAttempt {
    partition: u32,
    from: u64,
    to: u64,
    /// The partition's committed payload bytes once the commit lands.
    to_bytes: u64,
    offset_key: String,
    offset_bytes_key: String,
    owner_key: String,
}

impl PartitionAttempt {
    /// The partition of `delivery`, its offset moving to `to` and its byte count up by
    /// `delivered`.
    fn new(consumer: &Consumer, delivery: &Delivery, to: u64, delivered: u64) -> Self {
        let partition = delivery.partition;
        PartitionAttempt {
            partition,
            from: delivery.after,
            to,
            to_bytes: consumer.offset_bytes.get(&partition).copied().unwrap_or(0) + delivered,
            owner_key: consumer.group_keys.work_group().owner(partition),
            offset_key: consumer.group_keys.offset(partition),
            offset_bytes_key: consumer.group_keys.offset_bytes(partition),
        }
    }
}

impl CommitAttempt {
    fn new(consumer: &Consumer, commits: Vec<PartitionCommit<'_>>) -> Self {
        let keys = &consumer.keys;
        let mut attempt = CommitAttempt {
            partitions: Vec::with_capacity(commits.len()),
            compares: Vec::new(),
            ops: Vec::with_capacity(commits.iter().map(PartitionCommit::ops).sum()),
        };
        for commit in commits {
            let partition = commit.delivery.partition;
            let messages = commit.messages();
            let from = commit.delivery.after;
            let to = messages.last().map_or(from, |m| m.offset);
            // The offset's compare fences its byte count too: both are only ever written
            // together.
            let delivered: u64 = messages.iter().map(|m| m.payload.len() as u64).sum();
            let part = PartitionAttempt::new(consumer, commit.delivery, to, delivered);
            attempt.ops.extend([
                TxnOp::put(part.offset_key.clone(), to.to_string(), None),
                TxnOp::put(
                    part.offset_bytes_key.clone(),
                    part.to_bytes.to_string(),
                    None,
                ),
                TxnOp::delete(
                    keys.message(partition, from + 1),
                    Some(DeleteOptions::new().with_range(keys.message(partition, to + 1))),
                ),
            ]);
            for dead in commit.dead_letters {
                let payload = messages
                    .iter()
                    .find(|m| m.offset == dead.offset)
                    .map(|m| m.payload.clone())
                    .unwrap_or_default();
                attempt
                    .ops
                    .push(TxnOp::put(keys.dead(partition, dead.offset), payload, None));
                attempt.ops.push(TxnOp::put(
                    keys.dead_reason(partition, dead.offset),
                    dead.reason.clone(),
                    None,
                ));
            }
            attempt.ops.extend(commit.fence.ops);
            attempt.compares.extend(commit.fence.compares);
            attempt.partitions.push(part);
        }
        attempt
    }

    /// `fence` alone, on the conditions of a commit of `delivery`: the offset stays where it is,
    /// so the attempt never counts as landed by the offset it reads back.
    fn fenced_write(consumer: &Consumer, delivery: &Delivery, fence: Fence) -> Self {
        CommitAttempt {
            partitions: vec![PartitionAttempt::new(consumer, delivery, delivery.after, 0)],
            compares: fence.compares,
            ops: fence.ops,
        }
    }

    fn partition_ids(&self) -> Vec<u32> {
        self.partitions.iter().map(|p| p.partition).collect()
    }

    /// The reads that tell what became of the commit: each partition's owner key, committed
    /// offset and its byte count ([`COMMIT_READ_BACK_OPS`] each).
    fn read_back(&self) -> Vec<TxnOp> {
        self.partitions
            .iter()
            .flat_map(|part| {
                [
                    TxnOp::get(part.owner_key.clone(), None),
                    TxnOp::get(part.offset_key.clone(), None),
                    TxnOp::get(part.offset_bytes_key.clone(), None),
                ]
            })
            .collect()
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
    /// The states of a read-back's partitions, in its order.
    fn read_all(responses: &[TxnOpResponse]) -> Vec<Self> {
        responses
            .chunks(COMMIT_READ_BACK_OPS)
            .map(|part| CommitState {
                owner: first_kv(part.first()).map(|kv| (kv.mod_revision(), kv.lease())),
                offset: first_kv(part.get(1))
                    .and_then(|kv| Some((decimal_value(kv)?, kv.mod_revision()))),
                offset_bytes: first_kv(part.get(2)).and_then(decimal_value),
            })
            .collect()
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
