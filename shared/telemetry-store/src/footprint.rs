//! What the store holds, for the bytes-per-sample figure: chunk and registry bytes and the samples
//! in the chunks, counted from the chunk headers (no chunk is decoded).

use etcd_queue::RangeRead;

use crate::chunk::read_chunk_header;
use crate::error::StoreError;
use crate::open_chunk;
use crate::reader::CHUNK_VALUE_BYTES;
use crate::registry::REGISTRY_VALUE_BYTES;
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
    /// Read in pages (the chunks, then the registry), so it is not one snapshot while writers run.
    pub async fn footprint(&self) -> Result<StoreFootprint, StoreError> {
        let mut footprint = StoreFootprint::default();
        let chunks = RangeRead::prefix(self.keys().chunks_prefix(), CHUNK_VALUE_BYTES);
        let mut pages = self.pages("measure store", chunks);
        while let Some(page) = pages.next_page().await? {
            for kv in page {
                footprint.chunks += 1;
                footprint.chunk_value_bytes += kv.value().len() as u64;
                footprint.chunk_key_bytes += kv.key().len() as u64;
                let header = open_chunk::split(kv.value())
                    .and_then(|(_, chunk)| read_chunk_header(chunk))
                    .map_err(|source| StoreError::CorruptChunk {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        source,
                    })?;
                footprint.samples += u64::from(header.samples);
            }
        }
        let registry = RangeRead::prefix(self.keys().gpus_prefix(), REGISTRY_VALUE_BYTES);
        let mut pages = self.pages("measure store", registry);
        while let Some(page) = pages.next_page().await? {
            footprint.registry_value_bytes +=
                page.iter().map(|kv| kv.value().len() as u64).sum::<u64>();
        }
        Ok(footprint)
    }
}
