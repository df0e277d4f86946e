//! A stable 64-bit hash (FNV-1a with a final avalanche) for partitioning and rendezvous hashing.
//! It must never change: producers in different processes and versions must agree on partitions.

/// FNV-1a over `bytes`, then [`mix64`].
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(hash)
}

/// The splitmix64 finaliser: spreads every input bit over the output.
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The partition of `key` among `partitions`.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    (stable_hash(key) % u64::from(partitions.max(1))) as u32
}

/// Rendezvous (highest random weight) score of `member` for `item`: each item goes to the member
/// with the highest score, so a join or leave moves only the items that member wins or held.
pub fn rendezvous_score(member: &str, item: u32) -> u64 {
    mix64(stable_hash(member.as_bytes()) ^ mix64(u64::from(item) + 0x9e37_79b9_7f4a_7c15))
}

/// The member that should own `item`, if any member is live. Ties break on the member id.
pub fn rendezvous_owner(members: &[String], item: u32) -> Option<&str> {
    members
        .iter()
        .max_by(|a, b| {
            rendezvous_score(a, item)
                .cmp(&rendezvous_score(b, item))
                .then_with(|| b.cmp(a))
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_A: u64 = 198_367_012_849_983_736;
    const PINNED_PARTITION: u32 = 7;

    #[test]
    fn hash_is_stable_across_versions() {
        // Pinned values: changing the hash would move every GPU to another partition.
        assert_eq!(stable_hash(b"a"), PINNED_A);
        assert_eq!(
            partition_for(b"GPU-5fd4f087-86f3-7a43-b711-4771313afc50", 16),
            PINNED_PARTITION
        );
    }

    #[test]
    fn partitions_spread_evenly() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[partition_for(format!("GPU-{i:08x}").as_bytes(), 16) as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn rendezvous_moves_only_the_leavers_items() {
        let five: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
        let four: Vec<String> = five[..4].to_vec();
        for item in 0..64 {
            let before = rendezvous_owner(&five, item).unwrap();
            let after = rendezvous_owner(&four, item).unwrap();
            if before != "m4" {
                assert_eq!(before, after, "item {item} moved although its owner stayed");
            }
        }
        let mut per_member = std::collections::BTreeMap::new();
        for item in 0..160 {
            *per_member
                .entry(rendezvous_owner(&five, item).unwrap())
                .or_insert(0) += 1;
        }
        assert_eq!(
            per_member.len(),
            5,
            "every member gets work: {per_member:?}"
        );
        assert_eq!(rendezvous_owner(&[], 3), None);
    }
}
