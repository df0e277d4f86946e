//! etcd's transaction budget, stated once for every crate: whatever the queue, the store, the
//! collector and the streamer put in one transaction is sized against these two numbers, so a
//! deployment that keeps etcd's defaults (`--max-txn-ops 128`, `--max-request-bytes 1.5 MiB`) never
//! sees a transaction refused for its size. A use that adds its own overhead reserves it from
//! these numbers, saying why.

/// Most operations in one transaction: etcd's `--max-txn-ops` default. etcd checks the compares,
/// the success operations and the failure operations against it separately.
pub const MAX_TXN_OPS: usize = 128;

/// etcd's `--max-request-bytes` default.
const ETCD_MAX_REQUEST_BYTES: usize = 1_536 * 1024;

/// What [`MAX_TXN_BYTES`] leaves of etcd's request limit for what the byte counts do not see:
/// protobuf framing, lease ids, the request header and the keys of up to [`MAX_TXN_OPS`]
/// compares.
const UNCOUNTED_REQUEST_BYTES: usize = 136 * 1024;

/// Most bytes of keys and values the operations of one transaction may carry (1,400 KiB).
pub const MAX_TXN_BYTES: usize = ETCD_MAX_REQUEST_BYTES - UNCOUNTED_REQUEST_BYTES;
