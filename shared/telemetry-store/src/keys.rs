//! The store's etcd key layout. This module is the only place that knows it; ARCHITECTURE.md
//! documents the same layout.
//!
//! ```text
//! {prefix}/store/gpu/{uuid}                                   GPU identity: info, first seen, metric names, bucket (JSON)
//! {prefix}/store/gpu/{uuid}/seen                              GPU last seen and latest values (binary), rewritten per commit
//! {prefix}/store/chunk/{uuid}/open                            the GPU's open chunk, rewritten per commit
//! {prefix}/store/chunk/{uuid}/s/{start:020}-{end:020}-{tag}   a sealed (immutable) chunk
//! {prefix}/store/retention/{bucket_start:020}                 lease id of a retention bucket
//! ```
//! Times are microseconds since the Unix epoch, zero-padded so key order is time order. A sealed
//! chunk's tag ([`ChunkTag`]) says who wrote it: `q` (sealed from the open chunk),
//! `m{partition}.{offset}` (a queue message too large for one transaction), `e{hash}` (an event
//! posted over HTTP) or `seed-{time}` (a development seeding pass); tags derived from message and
//! event ids make replays rewrite the same keys.
//!
//! Both registry keys of a GPU live under `gpu/`, so one range read lists every GPU. They are not
//! always adjacent in that range: `-` sorts before `/`, so `GPU-1-2` comes between `GPU-1` and
//! `GPU-1/seen`. Readers group them by the UUID [`StoreKeys::parse_gpu_key`] returns.

use telemetry_model::{GpuUuid, TimestampMicros};

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

    /// A GPU's identity record.
    pub fn gpu(&self, uuid: &GpuUuid) -> String {
        format!("{}/gpu/{}", self.root, uuid.as_str())
    }

    /// A GPU's seen value: last seen and latest values.
    pub fn gpu_seen(&self, uuid: &GpuUuid) -> String {
        self.gpu_seen_of(uuid.as_str())
    }

    /// The seen key of the GPU whose identity key [`StoreKeys::parse_gpu_key`] named `uuid`.
    pub(crate) fn gpu_seen_of(&self, uuid: &str) -> String {
        format!("{}/gpu/{uuid}/{SEEN_SUFFIX}", self.root)
    }

    /// Which registry key `key` (from a range read of [`StoreKeys::gpus_prefix`]) is, and the
    /// UUID it belongs to. `None` for a key of neither kind.
    pub fn parse_gpu_key<'a>(&self, key: &'a [u8]) -> Option<(&'a str, GpuKey)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.root)?.strip_prefix("/gpu/")?;
        match rest.split_once('/') {
            None => Some((rest, GpuKey::Identity)),
            Some((uuid, SEEN_SUFFIX)) => Some((uuid, GpuKey::Seen)),
            Some(_) => None,
        }
    }

    pub fn chunks_prefix(&self) -> String {
        format!("{}/chunk/", self.root)
    }

    pub fn open_chunk(&self, uuid: &GpuUuid) -> String {
        format!("{}/chunk/{}/open", self.root, uuid.as_str())
    }

    pub fn sealed_chunk(
        &self,
        uuid: &GpuUuid,
        start_us: i64,
        end_us: i64,
        tag: ChunkTag,
    ) -> String {
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

const SEEN_SUFFIX: &str = "seen";

/// Who wrote a sealed chunk: the last part of its key. A tag derived from a message or event id
/// makes a replay of it rewrite the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkTag<'a> {
    /// `q`: sealed from a GPU's open chunk by the collector.
    Sealed,
    /// `m{partition}.{offset}`: a queue message too large for one commit.
    Message { partition: u32, offset: u64 },
    /// `e{hash:016x}`: an event posted over HTTP, named by its source and id (a stable 64-bit
    /// FNV-1a hash of both).
    Event { source: &'a str, id: &'a str },
    /// `seed-{at}`: a development seeding pass stamped `at`.
    Seed { at: TimestampMicros },
}

impl std::fmt::Display for ChunkTag<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChunkTag::Sealed => f.write_str("q"),
            ChunkTag::Message { partition, offset } => write!(f, "m{partition}.{offset}"),
            ChunkTag::Event { source, id } => {
                let hash = etcd_queue::hash::stable_hash(format!("{source}\n{id}").as_bytes());
                write!(f, "e{hash:016x}")
            }
            ChunkTag::Seed { at } => write!(f, "seed-{}", at.0),
        }
    }
}

/// The two registry keys of a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuKey {
    /// `gpu/{uuid}`: the identity record.
    Identity,
    /// `gpu/{uuid}/seen`: last seen and latest values.
    Seen,
}

/// Times before the epoch sort as the epoch (they never come from the streamer).
fn key_time(us: i64) -> u64 {
    us.max(0) as u64
}

/// Parses `{start}-{end}-{tag}` from the last segment of a sealed-chunk key.
pub(crate) fn parse_sealed(key: &[u8]) -> Option<(i64, i64)> {
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
        assert_eq!(keys.gpu_seen(&gpu), "/gpu-telemetry/store/gpu/GPU-1/seen");
        assert!(keys.gpu(&gpu).starts_with(&keys.gpus_prefix()));
        assert!(keys.gpu_seen(&gpu).starts_with(&keys.gpus_prefix()));
        assert_eq!(
            keys.open_chunk(&gpu),
            "/gpu-telemetry/store/chunk/GPU-1/open"
        );
        let sealed = keys.sealed_chunk(&gpu, 5, 9, ChunkTag::Sealed);
        assert_eq!(
            sealed,
            "/gpu-telemetry/store/chunk/GPU-1/s/00000000000000000005-00000000000000000009-q"
        );
        assert_eq!(parse_sealed(sealed.as_bytes()), Some((5, 9)));
        assert!(keys.sealed_from(&gpu, 5) <= sealed && sealed < keys.sealed_through(&gpu, 5));
        assert!(sealed < keys.sealed_from(&gpu, 6));
        assert!(
            keys.sealed_chunk(&gpu, 10, 11, ChunkTag::Sealed)
                > keys.sealed_chunk(&gpu, 9, 1000, ChunkTag::Sealed)
        );
    }

    #[test]
    fn chunk_tags_keep_their_formats() {
        let tags = [
            (ChunkTag::Sealed, "q"),
            (
                ChunkTag::Message {
                    partition: 5,
                    offset: 42,
                },
                "m5.42",
            ),
            (
                ChunkTag::Event {
                    source: "/streamer/a",
                    id: "batch-7",
                },
                "e259b55f84437e10f",
            ),
            (
                ChunkTag::Seed {
                    at: TimestampMicros(8_000_000),
                },
                "seed-8000000",
            ),
        ];
        let keys = StoreKeys::new("/p");
        let gpu = GpuUuid::parse("GPU-1").unwrap();
        for (tag, text) in tags {
            assert_eq!(tag.to_string(), text);
            let key = keys.sealed_chunk(&gpu, 1, 2, tag);
            assert!(key.ends_with(&format!("-{text}")), "{key}");
            assert_eq!(parse_sealed(key.as_bytes()), Some((1, 2)), "{key}");
        }
    }

    #[test]
    fn registry_keys_parse_by_suffix_not_by_adjacency() {
        let keys = StoreKeys::new("/gpu-telemetry/");
        let one = GpuUuid::parse("GPU-1").unwrap();
        let other = GpuUuid::parse("GPU-1-2").unwrap();
        // Another GPU's key sorts between a GPU's identity and its seen key.
        let mut sorted = [keys.gpu(&one), keys.gpu_seen(&one), keys.gpu(&other)];
        sorted.sort();
        assert_eq!(sorted[1], keys.gpu(&other));
        assert_eq!(
            keys.parse_gpu_key(keys.gpu(&one).as_bytes()),
            Some(("GPU-1", GpuKey::Identity))
        );
        assert_eq!(
            keys.parse_gpu_key(keys.gpu_seen(&one).as_bytes()),
            Some(("GPU-1", GpuKey::Seen))
        );
        assert_eq!(
            keys.parse_gpu_key(keys.gpu(&other).as_bytes()),
            Some(("GPU-1-2", GpuKey::Identity))
        );
        for foreign in [
            "/gpu-telemetry/store/gpu/GPU-1/other",
            "/gpu-telemetry/store/chunk/GPU-1/open",
            "/elsewhere/store/gpu/GPU-1",
        ] {
            assert_eq!(keys.parse_gpu_key(foreign.as_bytes()), None, "{foreign}");
        }
    }
}
