//! Publishing messages: batched, ordered per partition, idempotent across ambiguous failures, and
//! slowed down (never dropped) by backpressure.
//!
//! Each partition has a head key holding its last sequence number. A publish transaction compares
//! every touched head with the value this producer last saw, writes the messages under the next
//! sequence numbers and advances the heads, so key order is commit order and producers never
//! overwrite each other. A lost race re-reads the heads from the failed transaction's else-branch
//! and tries again. The transaction also records the producer's attempt number under its own key;
//! after a timeout or dropped connection the producer reads that key to learn whether the attempt
//! landed instead of publishing it twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};

use crate::config::QueueConfig;
use crate::depth::{numbers_by_partition, DepthReporter, Progress, DECIMAL_VALUE_BYTES};
use crate::error::QueueError;
use crate::keys::{GroupKeys, QueueKeys};
use crate::kv::{decimal_value, first_kv, read_decimal};
use crate::lease::is_lease_not_found;
use crate::range::{read_ranges, RangeRead};
use crate::retry::{is_transient, Backoff};
use crate::txn_budget::{MAX_TXN_BYTES, MAX_TXN_OPS};

/// A message to publish to a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub partition: u32,
    pub payload: Vec<u8>,
}

/// Where a published message sits: its partition and sequence number (offset) in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// Extra conditions and operations to make part of a publish (or commit) transaction: the publish
/// happens only if every compare holds, and the operations are applied atomically with it.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    pub compares: Vec<Compare>,
    pub ops: Vec<TxnOp>,
    /// Bytes the extra operations add to the request (for the transaction size limit).
    pub bytes: usize,
}

/// A partition's head as a producer knows it: the last sequence number published to it and the
/// payload bytes ever published to it, written together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Head {
    seq: u64,
    bytes: u64,
}

/// What backpressure last saw: when, and the depth and pending bytes then (plus what this
/// producer published since).
#[derive(Debug, Clone, Copy)]
struct Backlog {
    at: Instant,
    depth: u64,
    bytes: u64,
}

/// Marker keys live on a long lease so that abandoned producers leave nothing behind.
const MARKER_LEASE_TTL: Duration = Duration::from_secs(3600);
/// Per-message overhead on the request besides the payload (key and framing).
const MESSAGE_OVERHEAD: usize = 96;
/// Operations every publish transaction spends besides one put per message.
const FIXED_OPS: usize = 1;
/// Operations a publish spends per partition it touches: the head and its byte count.
const OPS_PER_PARTITION: usize = 2;
/// Request bytes a publish spends per partition it touches (the two keys and values).
const PARTITION_OVERHEAD: usize = 2 * MESSAGE_OVERHEAD;
/// Times one publish grants a new marker lease after etcd said the last one was gone, before it
/// reports the error.
const MAX_LAPSED_LEASES: u32 = 3;

/// Publishes to one topic. Not shared between tasks: each task that publishes owns one.
pub struct Producer {
    client: Client,
    keys: QueueKeys,
    group: GroupKeys,
    config: QueueConfig,
    id: String,
    attempt: u64,
    /// The attempt number last known to have landed (what the marker key holds).
    landed: Option<u64>,
    heads: Option<BTreeMap<u32, Head>>,
    depth_reporter: DepthReporter,
    last_backlog: Option<Backlog>,
    marker_lease: Option<(i64, Instant)>,
}

impl Producer {
    pub(crate) fn new(
        client: Client,
        keys: QueueKeys,
        group: GroupKeys,
        config: QueueConfig,
    ) -> Self {
        Producer {
            client,
            keys,
            group,
            config,
            id: uuid::Uuid::new_v4().simple().to_string(),
            attempt: 0,
            landed: None,
            heads: None,
            depth_reporter: DepthReporter::new(Duration::from_millis(100)),
            last_backlog: None,
            marker_lease: None,
        }
    }

    /// This producer's unique id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The partition `key` maps to.
    pub fn partition_for(&self, key: &[u8]) -> u32 {
        crate::hash::partition_for(key, self.config.partitions)
    }

    /// Publishes one message to the partition of `partition_key`.
    pub async fn publish(
        &mut self,
        partition_key: &[u8],
        payload: Vec<u8>,
    ) -> Result<Position, QueueError> {
        let partition = self.partition_for(partition_key);
        let positions = self
            .publish_batch(vec![OutgoingMessage { partition, payload }])
            .await?;
        Ok(positions[0])
    }

    /// Publishes many messages, as few transactions as the limits allow. Messages to one partition
    /// keep their order. Returns each message's position, in input order.
    pub async fn publish_batch(
        &mut self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<Position>, QueueError> {
        let mut positions = Vec::with_capacity(messages.len());
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0;
        for message in messages {
            self.check_message(&message)?;
            let size = message.payload.len() + MESSAGE_OVERHEAD;
            let partitions_touched = {
                let mut seen: Vec<u32> = chunk
                    .iter()
                    .map(|m: &OutgoingMessage| m.partition)
                    .collect();
                seen.push(message.partition);
                seen.sort_unstable();
                seen.dedup();
                seen.len()
            };
            let ops_after = chunk.len() + 1 + OPS_PER_PARTITION * partitions_touched + FIXED_OPS;
            let bytes_after = chunk_bytes + size + PARTITION_OVERHEAD * partitions_touched;
            if !chunk.is_empty() && (ops_after > MAX_TXN_OPS || bytes_after > MAX_TXN_BYTES) {
                positions.extend(
                    self.publish_txn(std::mem::take(&mut chunk), Fence::default())
                        .await?,
                );
                chunk_bytes = 0;
            }
            chunk_bytes += size;
            chunk.push(message);
        }
        if !chunk.is_empty() {
            positions.extend(self.publish_txn(chunk, Fence::default()).await?);
        }
        Ok(positions)
    }

    /// Publishes `messages` in ONE transaction together with `fence`: all or nothing. Fails with
    /// [`QueueError::FenceFailed`] (nothing written) if a fence compare does not hold, and with
    /// [`QueueError::TransactionTooLarge`] if it cannot fit one transaction.
    pub async fn publish_fenced(
        &mut self,
        messages: Vec<OutgoingMessage>,
        fence: Fence,
    ) -> Result<Vec<Position>, QueueError> {
        for message in &messages {
            self.check_message(message)?;
        }
        let mut partitions: Vec<u32> = messages.iter().map(|m| m.partition).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let ops =
            messages.len() + OPS_PER_PARTITION * partitions.len() + FIXED_OPS + fence.ops.len();
        let bytes: usize = messages
            .iter()
            .map(|m| m.payload.len() + MESSAGE_OVERHEAD)
            .sum::<usize>()
            + PARTITION_OVERHEAD * partitions.len()
            + fence.bytes;
        if ops > MAX_TXN_OPS
            || bytes > MAX_TXN_BYTES
            || fence.compares.len() + partitions.len() + 1 > MAX_TXN_OPS
        {
            return Err(QueueError::TransactionTooLarge {
                messages: messages.len(),
                bytes,
            });
        }
        self.publish_txn(messages, fence).await
    }

    /// The number of messages and payload bytes that fit one transaction next to `fence_ops`.
    pub fn fits_one_transaction(
        messages: usize,
        partitions: usize,
        bytes: usize,
        fence_ops: usize,
    ) -> bool {
        messages + OPS_PER_PARTITION * partitions + FIXED_OPS + fence_ops <= MAX_TXN_OPS
            && bytes + messages * MESSAGE_OVERHEAD + partitions * PARTITION_OVERHEAD
                <= MAX_TXN_BYTES
    }

    fn check_message(&self, message: &OutgoingMessage) -> Result<(), QueueError> {
        if message.payload.len() > self.config.max_payload_bytes {
            return Err(QueueError::PayloadTooLarge {
                size: message.payload.len(),
                max: self.config.max_payload_bytes,
            });
        }
        if message.partition >= self.config.partitions {
            return Err(QueueError::InvalidConfig(format!(
                "partition {} out of range (topic has {})",
                message.partition, self.config.partitions
            )));
        }
        Ok(())
    }

    async fn publish_txn(
        &mut self,
        messages: Vec<OutgoingMessage>,
        fence: Fence,
    ) -> Result<Vec<Position>, QueueError> {
        let payload_bytes: u64 = messages.iter().map(|m| m.payload.len() as u64).sum();
        self.wait_for_room(messages.len() as u64, payload_bytes)
            .await?;
        let marker_key = self.keys.producer(&self.id);
        let started = Instant::now();
        let mut backoff = Backoff::for_etcd();
        let mut conflicts = 0u32;
        let mut lapsed_leases = 0u32;
        // Every attempt of this call publishes the same messages; if any of them turns out to have
        // landed, its positions are the result.
        let mut attempts: Vec<(u64, Vec<Position>, BTreeMap<u32, Head>)> = Vec::new();
        loop {
            let marker_lease = self.marker_lease().await?;
            let heads = self.heads().await?.clone();
            self.attempt += 1;
            let attempt = self.attempt;
            let mut next: BTreeMap<u32, Head> = BTreeMap::new();
            let mut positions = Vec::with_capacity(messages.len());
            let mut ops = Vec::with_capacity(messages.len() + 20);
            for message in &messages {
                let head = next
                    .entry(message.partition)
                    .or_insert_with(|| heads.get(&message.partition).copied().unwrap_or_default());
                head.seq += 1;
                head.bytes += message.payload.len() as u64;
                positions.push(Position {
                    partition: message.partition,
                    offset: head.seq,
                });
                ops.push(TxnOp::put(
                    self.keys
                        .message_entry(message.partition, head.seq, message.payload.len()),
                    message.payload.clone(),
                    None,
                ));
            }
            let mut compares = Vec::with_capacity(next.len() + fence.compares.len() + 1);
            let mut else_ops = Vec::with_capacity(OPS_PER_PARTITION * next.len() + 1);
            for (partition, new_head) in &next {
                // The head's compare also fences its byte count: both are only ever written
                // together, and a head value is written once.
                let key = self.keys.head(*partition);
                let bytes_key = self.keys.head_bytes(*partition);
                compares.push(match heads.get(partition) {
                    Some(head) => {
                        Compare::value(key.clone(), CompareOp::Equal, head.seq.to_string())
                    }
                    None => Compare::version(key.clone(), CompareOp::Equal, 0),
                });
                ops.push(TxnOp::put(key.clone(), new_head.seq.to_string(), None));
                ops.push(TxnOp::put(
                    bytes_key.clone(),
                    new_head.bytes.to_string(),
                    None,
                ));
                else_ops.push(TxnOp::get(key, None));
                else_ops.push(TxnOp::get(bytes_key, None));
            }
            compares.push(match self.landed {
                Some(n) => Compare::value(marker_key.clone(), CompareOp::Equal, n.to_string()),
                None => Compare::version(marker_key.clone(), CompareOp::Equal, 0),
            });
            else_ops.push(TxnOp::get(marker_key.clone(), None));
            ops.push(TxnOp::put(
                marker_key.clone(),
                attempt.to_string(),
                Some(PutOptions::new().with_lease(marker_lease)),
            ));
            compares.extend(fence.compares.iter().cloned());
            ops.extend(fence.ops.iter().cloned());
            let txn = Txn::new().when(compares).and_then(ops).or_else(else_ops);
            attempts.push((attempt, positions.clone(), next.clone()));

            let mut client = self.client.clone();
            match client.txn(txn).await {
                Ok(response) if response.succeeded() => {
                    self.landed = Some(attempt);
                    self.advance_heads(&next);
                    self.after_publish(messages.len() as u64, payload_bytes)
                        .await;
                    return Ok(positions);
                }
                Ok(response) => {
                    let seen = response.op_responses();
                    let marker_now = marker_value(seen.last());
                    if marker_now != self.landed {
                        // An attempt that failed ambiguously landed late.
                        if let Some(landed) = self
                            .landed_attempt(&attempts, marker_now, payload_bytes)
                            .await
                        {
                            return Ok(landed);
                        }
                        continue;
                    }
                    let fresh = self.heads_from(&seen[..seen.len() - 1]);
                    let seq = |heads: &BTreeMap<u32, Head>, p: &u32| heads.get(p).map(|h| h.seq);
                    let unchanged = next.keys().all(|p| seq(&fresh, p) == seq(&heads, p));
                    if unchanged {
                        return Err(QueueError::FenceFailed);
                    }
                    let cache = self.heads.get_or_insert_with(BTreeMap::new);
                    cache.extend(fresh);
                    conflicts += 1;
                    if conflicts > 3 {
                        backoff.wait().await;
                    }
                }
                Err(e) if is_transient(&e) => {
                    if started.elapsed() > self.config.retry_budget {
                        return Err(QueueError::Unavailable {
                            operation: "publish",
                            waited: started.elapsed(),
                            last_error: e.to_string(),
                        });
                    }
                    tracing::warn!(error = %e, "publish failed; checking whether it landed");
                    backoff.wait().await;
                    match self.read_marker().await {
                        Ok(marker) => {
                            if let Some(landed) =
                                self.landed_attempt(&attempts, marker, payload_bytes).await
                            {
                                return Ok(landed);
                            }
                        }
                        Err(_) => self.heads = None,
                    }
                }
                // The marker's lease expired (this producer was idle or paused for longer than
                // its TTL): the refused attempt wrote nothing, and the marker went with the lease,
                // which the next attempt's else-branch shows. A new lease, then try again.
                Err(e) if is_lease_not_found(&e) && lapsed_leases < MAX_LAPSED_LEASES => {
                    tracing::info!("the producer marker's lease expired; granting a new one");
                    lapsed_leases += 1;
                    self.marker_lease = None;
                }
                Err(e) => {
                    return Err(QueueError::Etcd {
                        operation: "publish",
                        source: e,
                    })
                }
            }
        }
    }

    /// Given the marker value read from etcd, returns the positions of the attempt of this call
    /// that landed, if one did; otherwise records the marker and forgets the cached heads.
    async fn landed_attempt(
        &mut self,
        attempts: &[(u64, Vec<Position>, BTreeMap<u32, Head>)],
        marker: Option<u64>,
        payload_bytes: u64,
    ) -> Option<Vec<Position>> {
        self.landed = marker;
        let landed = attempts.iter().find(|(n, _, _)| Some(*n) == marker);
        match landed {
            Some((_, positions, next)) => {
                let (positions, next) = (positions.clone(), next.clone());
                self.advance_heads(&next);
                self.after_publish(positions.len() as u64, payload_bytes)
                    .await;
                Some(positions)
            }
            None => {
                self.heads = None;
                None
            }
        }
    }

    fn advance_heads(&mut self, next: &BTreeMap<u32, Head>) {
        let cache = self.heads.get_or_insert_with(BTreeMap::new);
        for (p, h) in next {
            cache.insert(*p, *h);
        }
    }

    async fn after_publish(&mut self, published: u64, bytes: u64) {
        if let Some(backlog) = self.last_backlog.as_mut() {
            backlog.depth += published;
            backlog.bytes += bytes;
        }
        self.depth_reporter.mark_dirty();
        if self.depth_reporter.due() {
            if let Err(e) = self.flush_depth().await {
                tracing::debug!(error = %e, "depth update failed; the next one will catch up");
            }
        }
    }

    /// Rewrites the depth key now if this producer published since the last write.
    pub async fn flush(&mut self) -> Result<(), QueueError> {
        if self.depth_reporter.is_dirty() {
            self.flush_depth().await?;
        }
        Ok(())
    }

    async fn flush_depth(&mut self) -> Result<(), QueueError> {
        let progress = self
            .depth_reporter
            .flush(
                &self.client,
                &self.keys,
                &self.group,
                self.config.retry_budget,
            )
            .await?;
        self.last_backlog = Some(Backlog::of(&progress));
        Ok(())
    }

    /// Backpressure: waits (with backoff) until `incoming` more messages of `incoming_bytes`
    /// payload bytes fit under the maximum depth and the maximum pending bytes, or fails after
    /// the configured timeout. An empty queue always accepts one transaction.
    async fn wait_for_room(
        &mut self,
        incoming: u64,
        incoming_bytes: u64,
    ) -> Result<(), QueueError> {
        let max = self.config.max_depth;
        let max_bytes = self.config.max_pending_bytes;
        if let Some(backlog) = self.last_backlog {
            if backlog.at.elapsed() < Duration::from_millis(100)
                && backlog.depth + incoming <= max / 2
                && backlog.bytes + incoming_bytes <= max_bytes / 2
            {
                return Ok(());
            }
        }
        let started = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
        let mut warned = false;
        loop {
            let progress = Progress::read(
                &self.client,
                &self.keys,
                &self.group,
                self.config.retry_budget,
            )
            .await?;
            let backlog = Backlog::of(&progress);
            self.last_backlog = Some(backlog);
            let Backlog { depth, bytes, .. } = backlog;
            let fits = depth + incoming <= max && bytes + incoming_bytes <= max_bytes;
            if fits || depth == 0 {
                return Ok(());
            }
            if started.elapsed() >= self.config.backpressure_timeout {
                return Err(QueueError::QueueFull {
                    depth,
                    max,
                    pending_bytes: bytes,
                    max_bytes,
                    waited: started.elapsed(),
                });
            }
            if !warned {
                tracing::warn!(
                    depth,
                    max,
                    pending_bytes = bytes,
                    max_bytes,
                    "queue at its maximum backlog; waiting for consumers"
                );
                warned = true;
            }
            backoff.wait().await;
        }
    }

    async fn heads(&mut self) -> Result<&BTreeMap<u32, Head>, QueueError> {
        if self.heads.is_none() {
            let ranges = [
                RangeRead::prefix(self.keys.heads_prefix(), DECIMAL_VALUE_BYTES),
                RangeRead::prefix(self.keys.head_bytes_prefix(), DECIMAL_VALUE_BYTES),
            ];
            let (_, kvs) = read_ranges(
                &self.client,
                "read heads",
                &ranges,
                self.config.retry_budget,
            )
            .await?;
            self.heads = Some(self.heads_from_kvs(kvs.iter().flatten()));
        }
        Ok(self.heads.get_or_insert_with(BTreeMap::new))
    }

    /// The heads that gets of head keys and byte-count keys found (a head whose byte count is
    /// absent, written before byte counts were kept, counts 0 bytes).
    fn heads_from(&self, responses: &[TxnOpResponse]) -> BTreeMap<u32, Head> {
        self.heads_from_kvs(responses.iter().flat_map(|response| match response {
            TxnOpResponse::Get(get) => get.kvs(),
            _ => &[],
        }))
    }

    /// Heads from head and head-bytes keys, in any order.
    fn heads_from_kvs<'a>(
        &self,
        kvs: impl IntoIterator<Item = &'a etcd_client::KeyValue>,
    ) -> BTreeMap<u32, Head> {
        let bytes_prefix = self.keys.head_bytes_prefix();
        let mut seqs = BTreeMap::new();
        let mut bytes = BTreeMap::new();
        for kv in kvs {
            let found = numbers_by_partition(std::slice::from_ref(kv));
            if kv.key().starts_with(bytes_prefix.as_bytes()) {
                bytes.extend(found);
            } else {
                seqs.extend(found);
            }
        }
        seqs.into_iter()
            .map(|(p, seq)| {
                let bytes = bytes.get(&p).copied().unwrap_or(0);
                (p, Head { seq, bytes })
            })
            .collect()
    }

    async fn read_marker(&self) -> Result<Option<u64>, QueueError> {
        read_decimal(
            &self.client,
            "read producer marker",
            self.keys.producer(&self.id),
            self.config.retry_budget,
        )
        .await
    }

    async fn marker_lease(&mut self) -> Result<i64, QueueError> {
        if let Some((id, expires)) = self.marker_lease {
            if expires.saturating_duration_since(Instant::now()) > MARKER_LEASE_TTL / 6 {
                return Ok(id);
            }
        }
        let ttl = MARKER_LEASE_TTL.as_secs() as i64;
        let granted =
            crate::retry::with_retry("grant marker lease", self.config.retry_budget, || {
                let mut client = self.client.clone();
                async move { client.lease_grant(ttl, None).await }
            })
            .await?;
        // A marker moved to a new lease keeps its value; the old lease may lapse with nothing on it.
        self.marker_lease = Some((granted.id(), Instant::now() + MARKER_LEASE_TTL));
        Ok(granted.id())
    }

    /// Writes the final depth and removes this producer's marker key.
    pub async fn close(mut self) -> Result<(), QueueError> {
        self.flush().await?;
        if let Some((lease, _)) = self.marker_lease.take() {
            let mut client = self.client.clone();
            let _ = client.lease_revoke(lease).await;
        }
        Ok(())
    }
}

fn marker_value(response: Option<&TxnOpResponse>) -> Option<u64> {
    first_kv(response).and_then(decimal_value)
}

impl Backlog {
    fn of(progress: &Progress) -> Self {
        Backlog {
            at: Instant::now(),
            depth: progress.depth(),
            bytes: progress.pending_bytes(),
        }
    }
}
