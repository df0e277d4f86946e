//! Retention by leases: every chunk and registry record is attached to the lease of the time
//! bucket its data belongs to, and a bucket's lease expires `retention` after the bucket ends. etcd
//! then deletes the data itself; no sweeper has to run. One lease per bucket (not per key) keeps
//! the lease count tiny: 24 h of retention in 1 h buckets is about 25 leases.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use etcd_queue::kv::{decimal_value, first_kv};
use tokio::sync::Mutex;

use crate::error::StoreError;
use crate::keys::StoreKeys;

/// Hands out the lease of each retention bucket, creating it on first use.
#[derive(Clone)]
pub struct RetentionLeases {
    client: Client,
    keys: StoreKeys,
    retention: Duration,
    bucket: Duration,
    cache: Arc<Mutex<BTreeMap<i64, i64>>>,
}

impl RetentionLeases {
    pub(crate) fn new(
        client: Client,
        keys: StoreKeys,
        retention: Duration,
        bucket: Duration,
    ) -> Self {
        RetentionLeases {
            client,
            keys,
            retention,
            bucket: bucket.max(Duration::from_secs(1)),
            cache: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    pub fn bucket_us(&self) -> i64 {
        self.bucket.as_micros() as i64
    }

    /// The start of the bucket holding `timestamp_us`.
    pub fn bucket_of(&self, timestamp_us: i64) -> i64 {
        timestamp_us.div_euclid(self.bucket_us()) * self.bucket_us()
    }

    /// When data of the bucket starting at `bucket_start` expires (µs since epoch).
    fn expiry_of(&self, bucket_start: i64) -> i64 {
        bucket_start + self.bucket_us() + self.retention.as_micros() as i64
    }

    /// Whether data in the bucket starting at `bucket_start` is already past retention at
    /// `now_us` (it would expire on arrival). The caller reads the clock once for a whole batch.
    pub(crate) fn is_expired(&self, bucket_start: i64, now_us: i64) -> bool {
        self.expiry_of(bucket_start) <= now_us + 1_000_000
    }

    /// The lease for data at `timestamp_us`.
    pub(crate) async fn lease_for(&self, timestamp_us: i64) -> Result<i64, StoreError> {
        let bucket = self.bucket_of(timestamp_us);
        let mut cache = self.cache.lock().await;
        if let Some(lease) = cache.get(&bucket) {
            return Ok(*lease);
        }
        let ttl_secs = lease_ttl_secs(
            self.expiry_of(bucket),
            now_us(),
            self.retention + self.bucket,
        );
        let mut client = self.client.clone();
        let granted = client
            .lease_grant(ttl_secs, None)
            .await
            .map_err(StoreError::etcd("grant retention lease"))?;
        let key = self.keys.retention_bucket(bucket);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                granted.id().to_string(),
                Some(PutOptions::new().with_lease(granted.id())),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let response = client
            .txn(txn)
            .await
            .map_err(StoreError::etcd("record retention lease"))?;
        let lease = if response.succeeded() {
            granted.id()
        } else {
            // Another writer created the bucket's lease first: use theirs, drop ours.
            let _ = client.lease_revoke(granted.id()).await;
            first_kv(response.op_responses().first())
                .and_then(decimal_value)
                .ok_or_else(|| StoreError::CorruptRecord {
                    key: key.clone(),
                    reason: "retention lease id missing".into(),
                })?
        };
        // Forget buckets that have expired so the cache stays small.
        let now = now_us();
        let expired: Vec<i64> = cache
            .keys()
            .copied()
            .filter(|b| self.expiry_of(*b) < now)
            .collect();
        for b in expired {
            cache.remove(&b);
        }
        cache.insert(bucket, lease);
        Ok(lease)
    }

    /// Forgets every cached lease.
    pub async fn forget_all(&self) {
        self.cache.lock().await.clear();
    }
}

/// The TTL (seconds) of a lease granted at `now_us` for data that expires at `expiry_us`: until
/// then plus a second, so it is never short, but never more than `cap` (retention plus one
/// bucket). The cap keeps a lease from depending on the granting host's clock more than it must:
/// data of a bucket that starts after `now_us` (this clock behind the writers', or a sample
/// stamped ahead within the future bound) still expires at most retention plus one bucket after
/// its lease was granted.
fn lease_ttl_secs(expiry_us: i64, now_us: i64, cap: Duration) -> i64 {
    let until_expiry = (expiry_us - now_us) / 1_000_000;
    let cap = i64::try_from(cap.as_secs()).unwrap_or(i64::MAX).max(1);
    (until_expiry.max(1) + 1).min(cap)
}

pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;

    #[test]
    fn a_lease_lasts_until_its_data_expires_but_never_more_than_retention_plus_a_bucket() {
        // Retention 2 min, buckets of 1 min: at most 180 s.
        let cap = Duration::from_secs(180);
        let now = 1_000 * 60 * SECOND;
        // The current bucket started 10 s ago and ends in 50 s; its data expires 120 s later.
        let current = now - 10 * SECOND + 60 * SECOND + 120 * SECOND;
        assert_eq!(lease_ttl_secs(current, now, cap), 171);
        // A bucket starting 4 minutes ahead (a clock behind the writer's) is capped.
        let ahead = now + 240 * SECOND + 180 * SECOND;
        assert_eq!(lease_ttl_secs(ahead, now, cap), 180);
        // Centuries ahead: still capped, never a TTL etcd would refuse.
        assert_eq!(lease_ttl_secs(i64::MAX / 2, now, cap), 180);
        // Data about to expire (or already past it) gets a short lease, never zero.
        assert_eq!(lease_ttl_secs(now + SECOND / 2, now, cap), 2);
        assert_eq!(lease_ttl_secs(now - 60 * SECOND, now, cap), 2);
    }
}
