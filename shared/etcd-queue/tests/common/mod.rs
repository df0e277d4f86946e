//! Shared pieces of the queue's integration tests: a queue on a fresh prefix, a consumer loop that
//! records every commit in a sink, and bounded waits on conditions.

#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, GetOptions, TxnOp};
use etcd_queue::{ConsumerConfig, Fence, Queue, QueueConfig, QueueError};
pub use test_support::wait_until;
use tokio::sync::watch;

pub fn config(prefix: &str) -> QueueConfig {
    QueueConfig {
        prefix: prefix.to_string(),
        retry_budget: Duration::from_secs(30),
        ..QueueConfig::default()
    }
}

pub fn consumer_config(member_id: &str) -> ConsumerConfig {
    ConsumerConfig {
        lease_ttl: Duration::from_secs(2),
        ..ConsumerConfig::new(member_id)
    }
}

/// A member whose lease outlives the stalls and outages of a test.
pub fn patient_member(id: &str) -> ConsumerConfig {
    ConsumerConfig {
        lease_ttl: Duration::from_secs(30),
        ..ConsumerConfig::new(id)
    }
}

/// Consumes until `stop` turns true and the consumer is idle, recording each commit's message
/// payloads under `{sink}/{member}/{n}` IN the commit transaction. Returns messages committed.
pub async fn run_consumer(
    queue: Queue,
    config: ConsumerConfig,
    sink: String,
    mut stop: watch::Receiver<bool>,
) -> Result<u64, QueueError> {
    let member = config.member_id.clone();
    let mut consumer = queue.consumer(config).await?;
    let mut commits = 0u64;
    let mut committed = 0u64;
    loop {
        let delivery = tokio::select! {
            d = consumer.poll(Duration::from_millis(200)) => d?,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(delivery) = delivery else {
            if *stop.borrow() {
                break;
            }
            continue;
        };
        let ids: Vec<String> = delivery
            .messages
            .iter()
            .map(|m| String::from_utf8(m.payload.clone()).unwrap())
            .collect();
        let key = format!("{sink}/{member}/{commits:08}");
        let fence = Fence {
            compares: vec![],
            ops: vec![TxnOp::put(key, ids.join(","), None)],
            bytes: 0,
        };
        match consumer.commit(&delivery, fence, &[]).await {
            Ok(_revision) => {
                commits += 1;
                committed += ids.len() as u64;
            }
            Err(QueueError::LostOwnership { .. } | QueueError::StaleDelivery { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    consumer.leave().await?;
    Ok(committed)
}

/// Every message id recorded in the sink, with how many times it was committed.
pub async fn sink_contents(client: &Client, sink: &str) -> BTreeMap<String, u32> {
    let mut client = client.clone();
    let response = client
        .get(format!("{sink}/"), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut counts = BTreeMap::new();
    for kv in response.kvs() {
        for id in std::str::from_utf8(kv.value()).unwrap().split(',') {
            *counts.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// Asserts the sink holds exactly `expected` ids, each once.
pub fn assert_exactly_once(counts: &BTreeMap<String, u32>, expected: &[String]) {
    let duplicates: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(duplicates.is_empty(), "duplicated commits: {duplicates:?}");
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "never committed: {missing:?}");
    assert_eq!(counts.len(), expected.len(), "unexpected extra ids in sink");
}

pub fn message_id(producer: usize, n: usize) -> String {
    format!("p{producer}-{n:06}")
}
