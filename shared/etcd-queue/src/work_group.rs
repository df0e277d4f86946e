//! Lease-registered members sharing numbered work items (queue partitions, CSV shards).
//!
//! Each member registers a key attached to its lease. Items are spread over the live members by
//! rendezvous hashing, so a join or leave moves only the items that member wins or held. A member
//! owns an item only while its owner key exists: the key is created with `create_revision == 0`
//! (so two members can never own an item at once) and is attached to the member's lease (so a
//! crashed member's items free themselves after one TTL). Every write made on behalf of an item is
//! fenced on the owner key's `mod_revision`, which changes whenever ownership changes hands.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};

use crate::error::QueueError;
use crate::hash::rendezvous_owner;
use crate::keys::{
    trailing_number, trailing_segment, validate_member_id, WorkGroupKeys, MEMBER_ID_BYTES,
};
use crate::lease::{is_lease_not_found, KeptLease};
use crate::range::{read_ranges, RangeRead};
use crate::retry::with_retry;

/// Who owns what, read at one etcd revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSnapshot {
    pub revision: i64,
    /// Live member ids, sorted.
    pub members: Vec<String>,
    /// The owner key of each owned item.
    pub owners: BTreeMap<u32, ItemOwner>,
}

/// An item's owner key as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemOwner {
    /// The owning member's id (the key's value).
    pub member: String,
    /// The key's `mod_revision`, which every write fenced on ownership compares.
    pub revision: i64,
    /// The lease the key is attached to: the owner's lease.
    pub lease: i64,
}

/// What one rebalance changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rebalance {
    pub released: Vec<u32>,
    /// Items acquired, with the responses of the extra reads done in the acquiring transaction.
    pub acquired: Vec<u32>,
    /// Items found owned by someone else (our ownership had lapsed).
    pub lost: Vec<u32>,
    /// Items whose owner key is on this member's lease although it did not count them as its own
    /// (an acquire whose answer was lost, a release that failed): owned again, not stranded.
    pub adopted: Vec<u32>,
}

/// One member of a work group.
pub struct WorkGroup {
    client: Client,
    keys: WorkGroupKeys,
    items: u32,
    member_id: String,
    lease_ttl: Duration,
    lease: KeptLease,
    owned: BTreeMap<u32, i64>,
    members: Vec<String>,
    retry_budget: Duration,
}

impl WorkGroup {
    /// Registers `member_id` (with a lease of `lease_ttl`) in the group.
    pub async fn join(
        client: Client,
        keys: WorkGroupKeys,
        items: u32,
        member_id: String,
        lease_ttl: Duration,
        retry_budget: Duration,
    ) -> Result<Self, QueueError> {
        validate_member_id(&member_id)?;
        let lease = KeptLease::grant(&client, lease_ttl, retry_budget).await?;
        let group = WorkGroup {
            client,
            keys,
            items,
            member_id,
            lease_ttl,
            lease,
            owned: BTreeMap::new(),
            members: Vec::new(),
            retry_budget,
        };
        group.register().await?;
        Ok(group)
    }

    async fn register(&self) -> Result<(), QueueError> {
        let key = self.keys.member(&self.member_id);
        let lease = self.lease.id();
        let id = self.member_id.clone();
        with_retry("register member", self.retry_budget, || {
            let mut client = self.client.clone();
            let (key, id) = (key.clone(), id.clone());
            async move {
                client
                    .put(key, id, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await?;
        tracing::info!(member = %self.member_id, lease = lease, "joined work group");
        Ok(())
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    pub fn lease_id(&self) -> i64 {
        self.lease.id()
    }

    /// Items owned now, with their owner key's mod_revision.
    pub fn owned(&self) -> &BTreeMap<u32, i64> {
        &self.owned
    }

    /// Live members as of the last snapshot.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// The condition that proves this member still owns `item`, for use in a transaction.
    pub fn owner_fence(&self, item: u32) -> Option<Compare> {
        self.owned
            .get(&item)
            .map(|rev| Compare::mod_revision(self.keys.owner(item), CompareOp::Equal, *rev))
    }

    /// Forgets `item` after a fenced write proved it is no longer ours: its owner key is gone or
    /// on another member's lease.
    pub fn forget(&mut self, item: u32) {
        self.owned.remove(&item);
    }

    /// Whether an owner key attached to `lease` is this member's: ownership is the lease, whatever
    /// the key's revision.
    pub fn is_own_lease(&self, lease: i64) -> bool {
        lease == self.lease.id() && !self.lease.is_lost()
    }

    /// Counts `item` as owned at `revision` after reading its owner key on this member's lease
    /// ([`WorkGroup::is_own_lease`]) with a revision it did not know: the fence of its next write
    /// compares that revision.
    pub fn adopt(&mut self, item: u32, revision: i64) {
        self.owned.insert(item, revision);
    }

    /// True once the lease is gone; the member must [`WorkGroup::rebalance`] (which rejoins).
    pub fn lease_lost(&self) -> bool {
        self.lease.is_lost()
    }

    /// Resolves when the lease is lost.
    pub async fn wait_lease_lost(&mut self) {
        self.lease.wait_lost().await
    }

    /// Reads members and owners, plus the `extra` ranges, at one revision. Returns the keys of
    /// each extra range, in order.
    pub async fn snapshot_with(
        &self,
        extra: &[RangeRead],
    ) -> Result<(GroupSnapshot, Vec<Vec<KeyValue>>), QueueError> {
        let mut ranges = vec![
            RangeRead::prefix(self.keys.members_prefix(), MEMBER_ID_BYTES),
            RangeRead::prefix(self.keys.owners_prefix(), MEMBER_ID_BYTES),
        ];
        ranges.extend_from_slice(extra);
        let (revision, kvs) = read_ranges(
            &self.client,
            "read group snapshot",
            &ranges,
            self.retry_budget,
        )
        .await?;
        let mut kvs = kvs.into_iter();
        let mut snapshot = GroupSnapshot {
            revision,
            ..GroupSnapshot::default()
        };
        if let Some(members) = kvs.next() {
            snapshot.members = members
                .iter()
                .filter_map(|kv| trailing_segment(kv.key()).map(str::to_string))
                .collect();
            snapshot.members.sort();
        }
        if let Some(owners) = kvs.next() {
            for kv in &owners {
                if let Some(item) = trailing_number(kv.key()) {
                    let owner = ItemOwner {
                        member: String::from_utf8_lossy(kv.value()).into_owned(),
                        revision: kv.mod_revision(),
                        lease: kv.lease(),
                    };
                    snapshot.owners.insert(item as u32, owner);
                }
            }
        }
        Ok((snapshot, kvs.collect()))
    }

    /// The items this member should own given the live members it last saw.
    pub fn desired(&self) -> BTreeSet<u32> {
        (0..self.items)
            .filter(|item| rendezvous_owner(&self.members, *item) == Some(self.member_id.as_str()))
            .collect()
    }

    /// Brings ownership in line with `snapshot`: rejoins if the lease was lost, drops items whose
    /// ownership lapsed, adopts items whose owner key is on this member's lease (so none is left
    /// owned by nobody's intent), releases items another member should own, and tries to acquire
    /// the desired items nobody owns. `acquire_reads(item)` names extra reads done in the acquiring
    /// transaction (e.g. the partition's committed offset), returned per acquired item.
    ///
    /// Call only when no work on an owned item is in flight: releasing happens immediately.
    pub async fn rebalance(
        &mut self,
        snapshot: &GroupSnapshot,
        acquire_reads: impl Fn(u32) -> Vec<TxnOp>,
    ) -> Result<(Rebalance, BTreeMap<u32, Vec<TxnOpResponse>>), QueueError> {
        let mut change = Rebalance::default();
        let mut reads = BTreeMap::new();
        if self.lease.is_lost() || !snapshot.members.contains(&self.member_id) {
            change.lost.extend(self.owned.keys().copied());
            self.owned.clear();
            self.rejoin().await?;
            // Our own member key is new; count ourselves live even though the snapshot predates it.
        }
        self.members = snapshot.members.clone();
        if !self.members.contains(&self.member_id) {
            self.members.push(self.member_id.clone());
            self.members.sort();
        }
        for (item, rev) in self.owned.clone() {
            match snapshot.owners.get(&item) {
                // Ours is the lease; a revision newer than ours is a write of ours whose answer
                // was lost.
                Some(owner) if self.is_own_lease(owner.lease) => {
                    self.owned.insert(item, rev.max(owner.revision));
                }
                // Our snapshot may predate our own acquisition.
                _ if rev > snapshot.revision => {}
                _ => {
                    self.owned.remove(&item);
                    change.lost.push(item);
                }
            }
        }
        for (item, owner) in &snapshot.owners {
            if self.is_own_lease(owner.lease) && !self.owned.contains_key(item) {
                self.owned.insert(*item, owner.revision);
                change.adopted.push(*item);
            }
        }
        let desired = self.desired();
        let to_release: Vec<u32> = self
            .owned
            .keys()
            .copied()
            .filter(|item| !desired.contains(item))
            .collect();
        for item in to_release {
            self.release(item).await?;
            change.released.push(item);
        }
        for item in desired {
            if self.owned.contains_key(&item) || snapshot.owners.contains_key(&item) {
                continue;
            }
            if let Some(responses) = self.acquire(item, acquire_reads(item)).await? {
                change.acquired.push(item);
                reads.insert(item, responses);
            }
        }
        if !change.released.is_empty()
            || !change.acquired.is_empty()
            || !change.lost.is_empty()
            || !change.adopted.is_empty()
        {
            tracing::info!(
                member = %self.member_id,
                members = self.members.len(),
                released = ?change.released,
                acquired = ?change.acquired,
                lost = ?change.lost,
                adopted = ?change.adopted,
                owned = ?self.owned.keys().collect::<Vec<_>>(),
                "rebalanced"
            );
        }
        Ok((change, reads))
    }

    /// Creates the owner key of `item` if nobody holds it. Returns the extra reads' responses.
    async fn acquire(
        &mut self,
        item: u32,
        extra_reads: Vec<TxnOp>,
    ) -> Result<Option<Vec<TxnOpResponse>>, QueueError> {
        let key = self.keys.owner(item);
        let lease = self.lease.id();
        let mut ops = vec![TxnOp::put(
            key.clone(),
            self.member_id.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )];
        ops.extend(extra_reads);
        let response = with_retry("acquire item", self.retry_budget, || {
            let mut client = self.client.clone();
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then(ops.clone());
            async move { client.txn(txn).await }
        })
        .await;
        let response = match response {
            Ok(r) => r,
            // The lease expired under us: the next rebalance rejoins.
            Err(QueueError::Etcd { source, .. }) if is_lease_not_found(&source) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !response.succeeded() {
            return Ok(None);
        }
        let revision = response.header().map(|h| h.revision()).unwrap_or_default();
        self.owned.insert(item, revision);
        Ok(Some(response.op_responses().into_iter().skip(1).collect()))
    }

    /// Deletes the owner key of `item` if it is still ours.
    pub async fn release(&mut self, item: u32) -> Result<(), QueueError> {
        let Some(rev) = self.owned.remove(&item) else {
            return Ok(());
        };
        let key = self.keys.owner(item);
        with_retry("release item", self.retry_budget, || {
            let mut client = self.client.clone();
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                .and_then([TxnOp::delete(key.clone(), None)]);
            async move { client.txn(txn).await }
        })
        .await?;
        Ok(())
    }

    async fn rejoin(&mut self) -> Result<(), QueueError> {
        tracing::warn!(member = %self.member_id, "lease lost; rejoining with a new lease");
        self.lease = KeptLease::grant(&self.client, self.lease_ttl, self.retry_budget).await?;
        self.register().await
    }

    /// Releases every owned item, deregisters and revokes the lease.
    pub async fn leave(mut self) -> Result<(), QueueError> {
        let items: Vec<u32> = self.owned.keys().copied().collect();
        for item in items {
            self.release(item).await?;
        }
        let member = self.member_id.clone();
        self.lease.revoke(&self.client).await?;
        tracing::info!(member = %member, "left work group");
        Ok(())
    }
}
