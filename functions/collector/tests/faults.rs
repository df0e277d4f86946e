//! The collector under the faults a production etcd produces, each on its own so that a failure
//! names its cause: a retention lease that expired under it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use etcd_client::GetOptions;
use etcd_queue::{ConsumerConfig, Queue};
use prometheus_client::registry::Registry;
use telemetry_model::TimestampMicros;
use test_support::{unique_prefix, EtcdHarness};

fn now_us() -> i64 {
    TimestampMicros::now().0
}

/// Persists deliveries until the queue is empty, as a collector does; every delivery must
/// persist without error.
async fn drain(
    queue: &Queue,
    consumer: &mut etcd_queue::Consumer,
    processor: &mut collector::DeliveryProcessor,
) {
    while queue.depth().await.unwrap() > 0 {
        let delivery = consumer
            .poll(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("a delivery while messages remain");
        processor.process(consumer, delivery).await.unwrap();
    }
}

fn processor_for(store: &telemetry_store::TelemetryStore) -> collector::DeliveryProcessor {
    let metrics = Arc::new(collector::CollectorMetrics::register(
        &mut Registry::default(),
    ));
    collector::DeliveryProcessor::new(store.clone(), metrics)
}

/// Revokes every retention lease of the store under `prefix`, as their expiry would end them.
async fn revoke_retention_leases(client: &etcd_client::Client, prefix: &str) -> usize {
    let mut client = client.clone();
    let buckets = client
        .get(
            format!("{prefix}/store/retention/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let leases: Vec<i64> = buckets.kvs().iter().map(|kv| kv.lease()).collect();
    for lease in &leases {
        client.lease_revoke(*lease).await.unwrap();
    }
    leases.len()
}

/// The lease of the retention bucket the collector writes into goes away under it (its cached
/// lease id is stale, and the data on it is gone): the next commit is refused, the collector
/// takes a new lease and commits again, and no partition is left owned by nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_lease_gone_between_prepare_and_commit_is_granted_again() {
    let etcd = EtcdHarness::start().await;
    let prefix = unique_prefix("collector-lease-gone");
    let client = etcd.client().await;
    let queue = Queue::open(client.clone(), queue_config(&prefix))
        .await
        .unwrap();
    let store = store_for(client.clone(), &prefix);
    let mut processor = processor_for(&store);
    let member = ConsumerConfig {
        lease_ttl: Duration::from_secs(30),
        ..ConsumerConfig::new("lease-gone")
    };
    let mut consumer = queue.consumer(member).await.unwrap();
    let t0 = now_us() - 600_000_000;
    publish_passes(&queue, 1, t0).await;
    drain(&queue, &mut consumer, &mut processor).await;
    assert!(revoke_retention_leases(&client, &prefix).await >= 1);

    publish_passes(&queue, 1, t0 + (ROWS * 10) as i64).await;
    drain(&queue, &mut consumer, &mut processor).await;
    assert_eq!(consumer.owned_partitions(), (0..16).collect::<Vec<_>>());
    // The first pass went with its lease; the second is stored exactly once.
    assert_store_exact(&store, 1).await;
    assert_eq!(queue.refresh_depth().await.unwrap(), 0);
    consumer.leave().await.unwrap();
}
