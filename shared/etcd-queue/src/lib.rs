//! A partitioned, durable message queue on etcd with lease-fenced consumer groups and a depth key
//! for autoscaling. This crate is the only code that knows the queue's etcd key layout ([`keys`]).
//!
//! * A topic has a fixed number of partitions; a message goes to `hash(partition key) % P`.
//! * Messages are etcd keys with no lease: nothing expires while no consumer runs. Producers wait
//!   (and finally fail) when the backlog reaches the maximum depth: backpressure, never dropping.
//! * Consumers of the topic's group own partitions through lease-bound owner keys and commit with
//!   a transaction fenced on ownership and offset, to which callers add their own writes.
//! * The depth key holds the backlog as decimal text for KEDA's etcd scaler.

pub mod change_feed;
pub mod config;
pub mod consumer;
pub mod depth;
pub mod error;
pub mod hash;
pub mod keys;
pub mod kv;
pub mod lease;
pub mod producer;
pub mod range;
pub mod retry;
pub mod txn_budget;
pub mod work_group;

use std::collections::BTreeMap;

use etcd_client::{Client, Compare, CompareOp, GetOptions, GetResponse, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};

pub use config::{ConsumerConfig, QueueConfig};
pub use consumer::{
    Consumer, ConsumerStats, DeadLetter, Delivery, Message, PartitionCommit, COMMIT_READ_BACK_OPS,
    COMMIT_RESERVED_COMPARES, COMMIT_RESERVED_OPS, DEAD_LETTER_OPS,
};
pub use depth::Progress;
pub use error::QueueError;
pub use keys::{GroupKeys, QueueKeys, WorkGroupKeys};
pub use lease::is_lease_not_found;
pub use producer::{Fence, OutgoingMessage, Position, Producer};
pub use range::{RangePages, RangeRead, MAX_RESPONSE_BYTES};
pub use retry::{
    is_no_space, is_request_refused, is_size_limit, is_transient, with_retry, Backoff,
};
pub use txn_budget::{MAX_TXN_BYTES, MAX_TXN_OPS};
pub use work_group::{GroupSnapshot, ItemOwner, Rebalance, WorkGroup};

use crate::depth::PROGRESS_READS;
use crate::keys::{parse_message, trailing_number, trailing_segment, MEMBER_ID_BYTES};
use crate::range::complete_ranges;
use crate::retry::with_retry as retry;

/// Topic metadata stored in etcd when the topic is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TopicMeta {
    partitions: u32,
    version: u32,
}

/// Partition counts a topic may have.
const PARTITIONS: std::ops::RangeInclusive<u32> = 1..=4096;

impl TopicMeta {
    fn parse(keys: &QueueKeys, stored: &[u8]) -> Result<Self, QueueError> {
        let corrupt = |reason: String| QueueError::CorruptMetadata {
            key: keys.meta(),
            reason,
        };
        let meta: TopicMeta = serde_json::from_slice(stored).map_err(|e| corrupt(e.to_string()))?;
        if !PARTITIONS.contains(&meta.partitions) {
            return Err(corrupt(format!("{} partitions", meta.partitions)));
        }
        Ok(meta)
    }
}

/// A handle on one topic and its consumer group. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    client: Client,
    config: QueueConfig,
    keys: QueueKeys,
    group: GroupKeys,
}

/// Status of one partition for the API and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionStatus {
    pub partition: u32,
    pub owner: Option<String>,
    pub head: u64,
    pub committed: u64,
    pub lag: u64,
}

/// Status of the topic and its group, read at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStatus {
    pub topic: String,
    pub group: String,
    pub depth: u64,
    /// Payload bytes of the pending messages (what backpressure bounds by bytes).
    pub pending_bytes: u64,
    pub partitions: Vec<PartitionStatus>,
    pub members: Vec<String>,
    pub dead_letters: u64,
}

/// A message that was moved to the dead-letter prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRecord {
    pub partition: u32,
    pub offset: u64,
    pub reason: String,
    pub payload: Vec<u8>,
}

impl Queue {
    /// Opens the topic, creating it with `config.partitions` partitions if it does not exist.
    /// Fails with [`QueueError::PartitionMismatch`] if it exists with another partition count.
    pub async fn open(client: Client, config: QueueConfig) -> Result<Self, QueueError> {
        if !PARTITIONS.contains(&config.partitions) {
            return Err(QueueError::InvalidConfig(format!(
                "partitions must be 1..=4096, got {}",
                config.partitions
            )));
        }
        let keys = QueueKeys::new(&config.prefix, &config.topic)?;
        let group = keys.group(&config.group)?;
        let meta = TopicMeta {
            partitions: config.partitions,
            version: 1,
        };
        let meta_json = serde_json::to_string(&meta).expect("topic meta serializes");
        let response = retry("create topic", config.retry_budget, || {
            let mut client = client.clone();
            let txn = Txn::new()
                .when([Compare::create_revision(keys.meta(), CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put(keys.meta(), meta_json.clone(), None),
                    TxnOp::put(keys.depth(), "0", None),
                    TxnOp::put(keys.depth_revision(), format!("{:020}", 0), None),
                ])
                .or_else([TxnOp::get(keys.meta(), None)]);
            async move { client.txn(txn).await }
        })
        .await?;
        if !response.succeeded() {
            let stored = match response.op_responses().first() {
                Some(TxnOpResponse::Get(get)) => get.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            }
            .unwrap_or_default();
            let stored = TopicMeta::parse(&keys, &stored)?;
            if stored.partitions != config.partitions {
                return Err(QueueError::PartitionMismatch {
                    topic: config.topic.clone(),
                    stored: stored.partitions,
                    configured: config.partitions,
                });
            }
        } else {
            tracing::info!(topic = %config.topic, partitions = config.partitions, "created topic");
        }
        let queue = Queue {
            client,
            config,
            keys,
            group,
        };
        queue.ensure_offsets().await?;
        Ok(queue)
    }

    /// Attaches to an existing topic without writing anything, for readers such as a status page:
    /// the stored partition count wins over `config.partitions`. `None` if no producer or
    /// consumer has created the topic yet. Producing or consuming through an attached queue is
    /// possible once the group's offsets exist, which [`Queue::open`] guarantees.
    pub async fn attach(client: Client, config: QueueConfig) -> Result<Option<Self>, QueueError> {
        let keys = QueueKeys::new(&config.prefix, &config.topic)?;
        let group = keys.group(&config.group)?;
        let response = retry("read topic", config.retry_budget, || {
            let mut client = client.clone();
            let key = keys.meta();
            async move { client.get(key, None).await }
        })
        .await?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        let stored = TopicMeta::parse(&keys, kv.value())?;
        Ok(Some(Queue {
            client,
            config: QueueConfig {
                partitions: stored.partitions,
                ..config
            },
            keys,
            group,
        }))
    }

    /// Every partition's committed offset exists (as "0" until the first commit), so commits can
    /// compare on its value.
    async fn ensure_offsets(&self) -> Result<(), QueueError> {
        let existing = self
            .pages(
                "read offsets",
                RangeRead::prefix(self.group.offsets_prefix(), 0).keys_only(),
            )
            .collect()
            .await?;
        let present: Vec<u64> = existing
            .iter()
            .filter_map(|kv| trailing_number(kv.key()))
            .collect();
        let missing: Vec<u32> = (0..self.config.partitions)
            .filter(|p| !present.contains(&u64::from(*p)))
            .collect();
        for chunk in missing.chunks(MAX_TXN_OPS / 2) {
            let compares: Vec<Compare> = chunk
                .iter()
                .map(|p| Compare::version(self.group.offset(*p), CompareOp::Equal, 0))
                .collect();
            let puts: Vec<TxnOp> = chunk
                .iter()
                .map(|p| TxnOp::put(self.group.offset(*p), "0", None))
                .collect();
            // A racing opener may have created some; then create the rest one by one.
            let response = retry("create offsets", self.config.retry_budget, || {
                let mut client = self.client.clone();
                let txn = Txn::new().when(compares.clone()).and_then(puts.clone());
                async move { client.txn(txn).await }
            })
            .await?;
            if !response.succeeded() {
                for p in chunk {
                    let key = self.group.offset(*p);
                    retry("create offset", self.config.retry_budget, || {
                        let mut client = self.client.clone();
                        let txn = Txn::new()
                            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                            .and_then([TxnOp::put(key.clone(), "0", None)]);
                        async move { client.txn(txn).await }
                    })
                    .await?;
                }
            }
        }
        Ok(())
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    pub fn keys(&self) -> &QueueKeys {
        &self.keys
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The partition `key` maps to.
    pub fn partition_for(&self, key: &[u8]) -> u32 {
        hash::partition_for(key, self.config.partitions)
    }

    /// A new producer with its own id.
    pub fn producer(&self) -> Producer {
        Producer::new(
            self.client.clone(),
            self.keys.clone(),
            self.group.clone(),
            self.config.clone(),
        )
    }

    /// Joins the topic's consumer group.
    pub async fn consumer(&self, config: ConsumerConfig) -> Result<Consumer, QueueError> {
        Consumer::join(
            self.client.clone(),
            self.keys.clone(),
            self.group.clone(),
            self.config.clone(),
            config,
        )
        .await
    }

    /// Heads and committed offsets of every partition at one revision.
    pub async fn progress(&self) -> Result<Progress, QueueError> {
        Progress::read(
            &self.client,
            &self.keys,
            &self.group,
            self.config.retry_budget,
        )
        .await
    }

    /// Pending messages, computed now.
    pub async fn depth(&self) -> Result<u64, QueueError> {
        Ok(self.progress().await?.depth())
    }

    /// What the depth key holds now (what KEDA sees).
    pub async fn depth_key_value(&self) -> Result<Option<u64>, QueueError> {
        kv::read_decimal(
            &self.client,
            "read depth key",
            self.keys.depth(),
            self.config.retry_budget,
        )
        .await
    }

    /// A feed that wakes on every change of the depth key (the autoscaler watches it). Read the
    /// value with [`Queue::depth_key_value`] after each wake-up.
    pub async fn depth_changes(&self) -> Result<change_feed::ChangeFeed, QueueError> {
        let revision = self
            .client
            .clone()
            .get(self.keys.depth(), None)
            .await
            .map_err(QueueError::etcd("read depth key"))?
            .header()
            .map(|h| h.revision())
            .unwrap_or_default();
        change_feed::ChangeFeed::open(&self.client, &[self.keys.depth()], &[], revision + 1).await
    }

    /// Recomputes the depth and writes the depth key; returns the depth.
    pub async fn refresh_depth(&self) -> Result<u64, QueueError> {
        let progress = self.progress().await?;
        depth::write_depth(
            &self.client,
            &self.keys,
            progress.depth(),
            progress.revision,
            self.config.retry_budget,
        )
        .await?;
        Ok(progress.depth())
    }

    /// Partitions with owner, committed offset and lag; members; depth; dead-letter count.
    pub async fn status(&self) -> Result<QueueStatus, QueueError> {
        let wg = self.group.work_group();
        let mut ranges = Progress::ranges(&self.keys, &self.group).to_vec();
        ranges.extend([
            RangeRead::prefix(wg.owners_prefix(), MEMBER_ID_BYTES),
            RangeRead::prefix(wg.members_prefix(), 0).keys_only(),
        ]);
        let mut ops: Vec<TxnOp> = ranges.iter().map(|r| r.txn_op(ranges.len())).collect();
        // A count answers with no keys, whatever their number.
        ops.push(TxnOp::get(
            self.keys.dead_prefix(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        ));
        let response = retry("read queue status", self.config.retry_budget, || {
            let mut client = self.client.clone();
            let txn = Txn::new().and_then(ops.clone());
            async move { client.txn(txn).await }
        })
        .await?;
        let revision = response.header().map(|h| h.revision()).unwrap_or_default();
        let mut responses = response.op_responses();
        let dead_letters = match responses.pop() {
            Some(TxnOpResponse::Get(get)) => get.count() as u64,
            _ => 0,
        };
        let kvs = complete_ranges(
            &self.client,
            "read queue status",
            &ranges,
            responses,
            revision,
            self.config.retry_budget,
        )
        .await?;
        let progress = Progress::from_kvs(revision, &kvs[..PROGRESS_READS]);
        let mut owners = BTreeMap::new();
        for kv in &kvs[PROGRESS_READS] {
            if let Some(p) = trailing_number(kv.key()) {
                owners.insert(p as u32, String::from_utf8_lossy(kv.value()).into_owned());
            }
        }
        let members = kvs[PROGRESS_READS + 1]
            .iter()
            .filter_map(|kv| trailing_segment(kv.key()).map(str::to_string))
            .collect();
        let partitions = (0..self.config.partitions)
            .map(|p| PartitionStatus {
                partition: p,
                owner: owners.get(&p).cloned(),
                head: progress.heads.get(&p).copied().unwrap_or(0),
                committed: progress.offsets.get(&p).copied().unwrap_or(0),
                lag: progress.lag(p),
            })
            .collect();
        Ok(QueueStatus {
            topic: self.config.topic.clone(),
            group: self.config.group.clone(),
            depth: progress.depth(),
            pending_bytes: progress.pending_bytes(),
            partitions,
            members,
            dead_letters,
        })
    }

    /// Number of dead letters.
    pub async fn dead_letter_count(&self) -> Result<u64, QueueError> {
        self.count("count dead letters", self.keys.dead_prefix())
            .await
    }

    /// Keys under `prefix`, counted by etcd.
    async fn count(&self, operation: &'static str, prefix: String) -> Result<u64, QueueError> {
        let options = GetOptions::new().with_prefix().with_count_only();
        let response = self.get_retried(operation, prefix, Some(options)).await?;
        Ok(response.count() as u64)
    }

    /// A get, retried for the queue's retry budget.
    async fn get_retried(
        &self,
        operation: &'static str,
        key: String,
        options: Option<GetOptions>,
    ) -> Result<GetResponse, QueueError> {
        retry(operation, self.config.retry_budget, || {
            let mut client = self.client.clone();
            let (key, options) = (key.clone(), options.clone());
            async move { client.get(key, options).await }
        })
        .await
    }

    /// A paged read of `range`, retried for the queue's retry budget.
    fn pages(&self, operation: &'static str, range: RangeRead) -> RangePages {
        RangePages::new(
            self.client.clone(),
            operation,
            range,
            self.config.retry_budget,
        )
    }

    /// Up to `limit` dead letters, in partition then offset order.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, QueueError> {
        let range =
            RangeRead::prefix(self.keys.dead_prefix(), self.config.max_payload_bytes).limit(limit);
        let dead = self.pages("list dead letters", range).collect().await?;
        let mut records = Vec::new();
        for kv in &dead {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let mut segments = key.rsplit('/');
            let offset = segments.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let partition = segments.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let reason_key = self.keys.dead_reason(partition, offset);
            let reason = self
                .get_retried("read dead-letter reason", reason_key, None)
                .await?
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                .unwrap_or_default();
            records.push(DeadLetterRecord {
                partition,
                offset,
                reason,
                payload: kv.value().to_vec(),
            });
        }
        Ok(records)
    }

    /// Pending (uncommitted) messages of `partition` after `after`, without consuming them.
    pub async fn peek(
        &self,
        partition: u32,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Message>, QueueError> {
        let range = RangeRead::between(
            self.keys.message(partition, after + 1),
            self.keys.message(partition, u64::MAX),
            self.config.max_payload_bytes,
        )
        .limit(limit);
        let pending = self.pages("peek messages", range).collect().await?;
        Ok(pending
            .into_iter()
            .filter_map(|kv| {
                let (offset, _) = parse_message(kv.key())?;
                Some(Message {
                    partition,
                    offset,
                    payload: kv.into_key_value().1,
                })
            })
            .collect())
    }

    /// Number of message keys stored under the topic (pending messages), counted by etcd.
    pub async fn stored_message_count(&self) -> Result<u64, QueueError> {
        self.count("count messages", self.keys.all_messages_prefix())
            .await
    }
}
