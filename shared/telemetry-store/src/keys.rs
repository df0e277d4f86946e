//! The store's etcd key layout. This module is the only place that knows it; ARCHITECTURE.md
//! documents the same layout.
//!
//! ```text
//! {prefix}/store/gpu/{uuid}                                   GPU registry record (JSON)
//! {prefix}/store/chunk/{uuid}/open                            the GPU's open chunk, rewritten per commit
//! {prefix}/store/chunk/{uuid}/s/{start:020}-{end:020}-{tag}   a sealed (immutable) chunk
//! {prefix}/store/retention/{bucket_start:020}                 lease id of a retention bucket
//! ```
//! Times are microseconds since the Unix epoch, zero-padded so key order is time order. A sealed
//! chunk's tag says who wrote it: `q` (sealed from the open chunk), `m{partition}.{offset}` (a queue
//! message too large for one transaction) or `e{hash}` (an event posted over HTTP); tags derived
//! from message and event ids make replays rewrite the same keys.

use telemetry_model::GpuUuid;

/// Builds every key of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreKeys {
    root: String,
}

impl StoreKeys {
    pub fn new(prefix: &str) -> Self {
        StoreKeys {
            root: format!("{}/store", prefix.trim_end_matches('/')),
        }
    }

    pub fn gpus_prefix(&self) -> String {
        format!("{}/gpu/", self.root)
    }

    pub fn gpu(&self, uuid: &GpuUuid) -> String {
        format!("{}/gpu/{}", self.root, uuid.as_str())
    }

    pub fn chunks_prefix(&self) -> String {
        format!("{}/chunk/", self.root)
    }

    pub fn open_chunk(&self, uuid: &GpuUuid) -> String {
        format!("{}/chunk/{}/open", self.root, uuid.as_str())
    }

    pub fn sealed_chunk(&self, uuid: &GpuUuid, start_us: i64, end_us: i64, tag: &str) -> String {
        format!(
            "{}/chunk/{}/s/{:020}-{:020}-{tag}",
            self.root,
            uuid.as_str(),
            key_time(start_us),
            key_time(end_us)
        )
    }

    /// The first possible sealed-chunk key of `uuid` starting at or after `start_us`.
    pub fn sealed_from(&self, uuid: &GpuUuid, start_us: i64) -> String {
        format!(
            "{}/chunk/{}/s/{:020}",
            self.root,
            uuid.as_str(),
            key_time(start_us)
        )
    }

    /// Just past every sealed-chunk key of `uuid` starting at or before `start_us`.
    pub fn sealed_through(&self, uuid: &GpuUuid, start_us: i64) -> String {
        format!(
            "{}/chunk/{}/s/{:020}.",
            self.root,
            uuid.as_str(),
            key_time(start_us)
        )
    }

    pub fn retention_bucket(&self, bucket_start_us: i64) -> String {
        format!("{}/retention/{:020}", self.root, key_time(bucket_start_us))
    }
}

/// Times before the epoch sort as the epoch (they never come from the streamer).
fn key_time(us: i64) -> u64 {
    us.max(0) as u64
}

/// Parses `{start}-{end}-{tag}` from the last segment of a sealed-chunk key.
pub fn parse_sealed(key: &[u8]) -> Option<(i64, i64)> {
    let key = std::str::from_utf8(key).ok()?;
    let last = key.rsplit('/').next()?;
    let mut parts = last.splitn(3, '-');
    let start = parts.next()?.parse().ok()?;
    let end = parts.next()?.parse().ok()?;
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable_and_time_ordered() {
        let keys = StoreKeys::new("/gpu-telemetry");
        let gpu = GpuUuid::parse("GPU-1").unwrap();
        assert_eq!(keys.gpu(&gpu), "/gpu-telemetry/store/gpu/GPU-1");
        assert_eq!(
            keys.open_chunk(&gpu),
            "/gpu-telemetry/store/chunk/GPU-1/open"
        );
        let sealed = keys.sealed_chunk(&gpu, 5, 9, "q");
        assert_eq!(
            sealed,
            "/gpu-telemetry/store/chunk/GPU-1/s/00000000000000000005-00000000000000000009-q"
        );
        assert_eq!(parse_sealed(sealed.as_bytes()), Some((5, 9)));
        assert!(keys.sealed_from(&gpu, 5) <= sealed && sealed < keys.sealed_through(&gpu, 5));
        assert!(sealed < keys.sealed_from(&gpu, 6));
        assert!(keys.sealed_chunk(&gpu, 10, 11, "q") > keys.sealed_chunk(&gpu, 9, 1000, "q"));
    }
}
