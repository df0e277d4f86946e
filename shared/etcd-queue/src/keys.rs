//! The queue's etcd key layout. This module is the only place that knows it; ARCHITECTURE.md
//! documents the same layout.
//!
//! ```text
//! {prefix}/queue/{topic}/meta                      topic metadata (JSON: partition count)
//! {prefix}/queue/{topic}/depth                     pending messages of the topic's group (decimal; KEDA reads it)
//! {prefix}/queue/{topic}/depth-rev                 etcd revision the depth value was computed at (20 digits)
//! {prefix}/queue/{topic}/head/{p:05}               last sequence number published to partition p (decimal)
//! {prefix}/queue/{topic}/head-bytes/{p:05}         payload bytes ever published to partition p (decimal)
//! {prefix}/queue/{topic}/msg/{p:05}/{seq:020}/{bytes}  message payload (its size in the key), deleted when its group commits past it
//! {prefix}/queue/{topic}/dead/{p:05}/{seq:020}     dead-lettered payload
//! {prefix}/queue/{topic}/dead-reason/{p:05}/{seq:020}  why it was dead-lettered
//! {prefix}/queue/{topic}/producer/{id}             last transaction number of a producer (ambiguous-retry check)
//! {prefix}/queue/{topic}/group/{g}/member/{id}     group member, attached to the member's lease
//! {prefix}/queue/{topic}/group/{g}/owner/{p:05}    owner of partition p, attached to the owner's lease
//! {prefix}/queue/{topic}/group/{g}/offset/{p:05}   last committed sequence number of partition p
//! {prefix}/queue/{topic}/group/{g}/offset-bytes/{p:05}  payload bytes committed from partition p
//! ```
//! Sequence numbers are zero-padded so that key order is sequence order and a partition's pending
//! messages are one key range. A message key ends with its payload's size, so a consumer sizes a
//! delivery from a keys-only read before it reads any payload; `msg/{p:05}/{seq:020}` without the
//! size (what producers before that change wrote) counts as the largest payload allowed.

use crate::error::QueueError;

/// Builds every key of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    root: String,
}

impl QueueKeys {
    /// Keys of `topic` under `prefix` (e.g. `/gpu-telemetry`).
    pub fn new(prefix: &str, topic: &str) -> Result<Self, QueueError> {
        validate_name("topic", topic)?;
        let prefix = prefix.trim_end_matches('/');
        if prefix.contains("//") || (!prefix.is_empty() && !prefix.starts_with('/')) {
            return Err(QueueError::InvalidConfig(format!(
                "key prefix {prefix:?} must start with '/' and contain no empty segment"
            )));
        }
        Ok(QueueKeys {
            root: format!("{prefix}/queue/{topic}"),
        })
    }

    pub fn meta(&self) -> String {
        format!("{}/meta", self.root)
    }

    /// The numeric key KEDA's etcd scaler watches.
    pub fn depth(&self) -> String {
        format!("{}/depth", self.root)
    }

    pub(crate) fn depth_revision(&self) -> String {
        format!("{}/depth-rev", self.root)
    }

    pub(crate) fn heads_prefix(&self) -> String {
        format!("{}/head/", self.root)
    }

    pub(crate) fn head(&self, partition: u32) -> String {
        format!("{}/head/{partition:05}", self.root)
    }

    pub(crate) fn head_bytes_prefix(&self) -> String {
        format!("{}/head-bytes/", self.root)
    }

    /// Payload bytes ever published to `partition` (written with its head).
    pub(crate) fn head_bytes(&self, partition: u32) -> String {
        format!("{}/head-bytes/{partition:05}", self.root)
    }

    pub(crate) fn all_messages_prefix(&self) -> String {
        format!("{}/msg/", self.root)
    }

    /// Where partition `partition`'s message `seq` starts in key order: the bound of range reads
    /// and deletes (the message itself is [`QueueKeys::message_entry`], just after it).
    pub(crate) fn message(&self, partition: u32, seq: u64) -> String {
        format!("{}/msg/{partition:05}/{seq:020}", self.root)
    }

    /// The key message `seq` of `partition` is stored under, carrying its payload's size.
    pub(crate) fn message_entry(&self, partition: u32, seq: u64, payload_bytes: usize) -> String {
        format!("{}/msg/{partition:05}/{seq:020}/{payload_bytes}", self.root)
    }

    pub(crate) fn dead_prefix(&self) -> String {
        format!("{}/dead/", self.root)
    }

    pub(crate) fn dead(&self, partition: u32, seq: u64) -> String {
        format!("{}/dead/{partition:05}/{seq:020}", self.root)
    }

    pub(crate) fn dead_reason(&self, partition: u32, seq: u64) -> String {
        format!("{}/dead-reason/{partition:05}/{seq:020}", self.root)
    }

    pub(crate) fn producer(&self, producer_id: &str) -> String {
        format!("{}/producer/{producer_id}", self.root)
    }

    /// Keys of consumer group `group` of this topic.
    pub fn group(&self, group: &str) -> Result<GroupKeys, QueueError> {
        validate_name("group", group)?;
        Ok(GroupKeys {
            root: format!("{}/group/{group}", self.root),
        })
    }
}

/// Keys of one consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKeys {
    root: String,
}

impl GroupKeys {
    pub(crate) fn offsets_prefix(&self) -> String {
        format!("{}/offset/", self.root)
    }

    pub(crate) fn offset(&self, partition: u32) -> String {
        format!("{}/offset/{partition:05}", self.root)
    }

    pub(crate) fn offset_bytes_prefix(&self) -> String {
        format!("{}/offset-bytes/", self.root)
    }

    /// Payload bytes the group ever committed from `partition` (written with its offset).
    pub(crate) fn offset_bytes(&self, partition: u32) -> String {
        format!("{}/offset-bytes/{partition:05}", self.root)
    }

    /// The member and owner prefixes, which a consumer watches for rebalancing.
    pub(crate) fn work_group_prefixes(&self) -> (String, String) {
        let wg = self.work_group();
        (wg.members_prefix(), wg.owners_prefix())
    }

    /// The group's members and partition owners, laid out as a work group's.
    pub fn work_group(&self) -> WorkGroupKeys {
        WorkGroupKeys {
            root: self.root.clone(),
        }
    }
}

/// Keys of a set of lease-registered members sharing numbered work items (queue partitions, CSV
/// shards): `{root}/member/{id}` and `{root}/owner/{item:05}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkGroupKeys {
    root: String,
}

impl WorkGroupKeys {
    /// A work group rooted at `{prefix}/{name}` (e.g. the streamers' CSV shards).
    pub fn new(prefix: &str, name: &str) -> Result<Self, QueueError> {
        validate_name("work group", name)?;
        Ok(WorkGroupKeys {
            root: format!("{}/{name}", prefix.trim_end_matches('/')),
        })
    }

    /// The prefix of every key of the group (members, owners, item states), for watching it.
    pub fn prefix(&self) -> String {
        format!("{}/", self.root)
    }

    pub(crate) fn members_prefix(&self) -> String {
        format!("{}/member/", self.root)
    }

    pub(crate) fn member(&self, member_id: &str) -> String {
        format!("{}/member/{member_id}", self.root)
    }

    pub(crate) fn owners_prefix(&self) -> String {
        format!("{}/owner/", self.root)
    }

    pub fn owner(&self, item: u32) -> String {
        format!("{}/owner/{item:05}", self.root)
    }

    /// A key for per-item state kept by the group's users (e.g. a shard's pass counter).
    pub fn item_state(&self, item: u32) -> String {
        format!("{}/state/{item:05}", self.root)
    }

    pub fn item_states_prefix(&self) -> String {
        format!("{}/state/", self.root)
    }
}

/// The last `/`-separated segment of a key, parsed as a number (partition, item or sequence).
pub(crate) fn trailing_number(key: &[u8]) -> Option<u64> {
    let key = std::str::from_utf8(key).ok()?;
    key.rsplit('/').next()?.parse().ok()
}

/// The sequence number and payload size (`None`: a key written without it) of a message key.
pub(crate) fn parse_message(key: &[u8]) -> Option<(u64, Option<usize>)> {
    let key = std::str::from_utf8(key).ok()?;
    let (rest, last) = key.rsplit_once('/')?;
    let (_, before_last) = rest.rsplit_once('/')?;
    // `.../{p:05}/{seq:020}/{bytes}` or `.../{p:05}/{seq:020}`: the sequence is 20 digits.
    if last.len() == 20 && before_last.len() == 5 {
        return Some((last.parse().ok()?, None));
    }
    Some((before_last.parse().ok()?, Some(last.parse().ok()?)))
}

/// The last `/`-separated segment of a key.
pub(crate) fn trailing_segment(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key).ok()?.rsplit('/').next()
}

/// Names that end up in keys: lowercase letters, digits and `-`, 1..=64 characters.
pub fn validate_name(kind: &str, name: &str) -> Result<(), QueueError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(QueueError::InvalidConfig(format!(
            "{kind} name {name:?} must be 1-64 characters of [a-z0-9_-]"
        )))
    }
}

/// Longest member id: the value of a member and an owner key.
pub const MEMBER_ID_BYTES: usize = 128;

/// Member ids: ASCII letters, digits, `-`, `_`, `.`, 1..=128 characters (host names fit).
pub fn validate_member_id(id: &str) -> Result<(), QueueError> {
    let ok = !id.is_empty()
        && id.len() <= MEMBER_ID_BYTES
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(QueueError::InvalidConfig(format!(
            "member id {id:?} must be 1-128 characters of [A-Za-z0-9._-]"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_work_group_prefix_covers_its_members_owners_and_states() {
        let keys = WorkGroupKeys::new("/gpu-telemetry", "streamers").unwrap();
        assert_eq!(keys.prefix(), "/gpu-telemetry/streamers/");
        for key in [keys.member("m1"), keys.owner(3), keys.item_state(3)] {
            assert!(key.starts_with(&keys.prefix()), "{key}");
        }
        let other = WorkGroupKeys::new("/gpu-telemetry", "streamers2").unwrap();
        assert!(!other.owner(3).starts_with(&keys.prefix()));
    }

    #[test]
    fn layout_is_stable() {
        let keys = QueueKeys::new("/gpu-telemetry", "telemetry").unwrap();
        assert_eq!(keys.depth(), "/gpu-telemetry/queue/telemetry/depth");
        assert_eq!(keys.head(3), "/gpu-telemetry/queue/telemetry/head/00003");
        assert_eq!(
            keys.message(15, 42),
            "/gpu-telemetry/queue/telemetry/msg/00015/00000000000000000042"
        );
        let group = keys.group("collectors").unwrap();
        assert_eq!(
            group.offset(7),
            "/gpu-telemetry/queue/telemetry/group/collectors/offset/00007"
        );
        assert_eq!(
            group.work_group().owner(7),
            "/gpu-telemetry/queue/telemetry/group/collectors/owner/00007"
        );
        assert_eq!(
            keys.head_bytes(3),
            "/gpu-telemetry/queue/telemetry/head-bytes/00003"
        );
        assert_eq!(
            group.offset_bytes(7),
            "/gpu-telemetry/queue/telemetry/group/collectors/offset-bytes/00007"
        );
        // A byte counter is never under the prefix of the number it goes with.
        assert!(!keys.head_bytes(3).starts_with(&keys.heads_prefix()));
        assert!(!group.offset_bytes(7).starts_with(&group.offsets_prefix()));
        assert_eq!(trailing_number(keys.message(15, 42).as_bytes()), Some(42));
        let entry = keys.message_entry(15, 42, 1234);
        assert_eq!(
            entry,
            "/gpu-telemetry/queue/telemetry/msg/00015/00000000000000000042/1234"
        );
        assert_eq!(parse_message(entry.as_bytes()), Some((42, Some(1234))));
        assert_eq!(
            parse_message(keys.message(15, 42).as_bytes()),
            Some((42, None))
        );
        // The entry sorts after its bound and before the next message's.
        assert!(keys.message(15, 42) < entry && entry < keys.message(15, 43));
        assert!(entry < keys.message_entry(15, 43, 1));
        assert_eq!(trailing_number(keys.head(15).as_bytes()), Some(15));
    }

    #[test]
    fn trailing_slash_in_prefix_is_ignored() {
        let a = QueueKeys::new("/p/", "t").unwrap();
        let b = QueueKeys::new("/p", "t").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_names_are_rejected() {
        for bad in ["", "a/b", "..", "UPPER", "x y", &"a".repeat(65)] {
            assert!(QueueKeys::new("/p", bad).is_err(), "{bad:?}");
        }
        assert!(QueueKeys::new("relative", "t").is_err());
        assert!(QueueKeys::new("/a//b", "t").is_err());
        for bad in ["", "..", "a/b", "a\0b", &"m".repeat(129)] {
            assert!(validate_member_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_member_id("collector-7f9c.node-1").is_ok());
    }
}
