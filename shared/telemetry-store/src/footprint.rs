//! What the store holds, for the bytes-per-sample figure: chunk and registry bytes and the samples
//! in the chunks, counted from the chunk headers (no chunk is decoded).

use etcd_client::{GetOptions, Txn, TxnOp, TxnOpResponse};

use crate::chunk::read_chunk_header;
use crate::error::StoreError;
use crate::TelemetryStore;

/// Byte accounting of what the store holds, for the bytes-per-sample figure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreFootprint {
    pub chunks: u64,
    pub samples: u64,
    pub chunk_value_bytes: u64,
    pub chunk_key_bytes: u64,
    /// Both registry keys of every GPU: identity records and seen values.
    pub registry_value_bytes: u64,
}

impl TelemetryStore {
    /// What the store holds: chunk and registry bytes and the number of samples in the chunks.
    pub async fn footprint(&self) -> Result<StoreFootprint, StoreError> {
        let txn = Txn::new().and_then([
            TxnOp::get(
                self.keys().chunks_prefix(),
                Some(GetOptions::new().with_prefix()),
            ),
            TxnOp::get(
                self.keys().gpus_prefix(),
                Some(GetOptions::new().with_prefix()),
            ),
        ]);
        let response = self.txn("measure store", txn).await?;
        let mut footprint = StoreFootprint::default();
        let responses = response.op_responses();
        if let Some(TxnOpResponse::Get(get)) = responses.first() {
            for kv in get.kvs() {
                footprint.chunks += 1;
                footprint.chunk_value_bytes += kv.value().len() as u64;
                footprint.chunk_key_bytes += kv.key().len() as u64;
                let header =
                    read_chunk_header(kv.value()).map_err(|source| StoreError::CorruptChunk {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        source,
                    })?;
                footprint.samples += u64::from(header.samples);
            }
        }
        if let Some(TxnOpResponse::Get(get)) = responses.get(1) {
            footprint.registry_value_bytes =
                get.kvs().iter().map(|kv| kv.value().len() as u64).sum();
        }
        Ok(footprint)
    }
}
