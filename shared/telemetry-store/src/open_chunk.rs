//! The stored value of a GPU's open chunk: the chunk, preceded by the last queue message whose
//! samples of that GPU are all in the store (in this chunk or one sealed before it). The mark
//! makes a delivery that needs several transactions idempotent per GPU: when a delivery is
//! written again (the collector crashed between two of its transactions), the samples of
//! messages up to the mark are skipped.
//!
//! ```text
//! u8      format: 'O' (0x4F)
//! varint  partition of the message
//! varint  offset of the message
//! ..      the chunk (see `chunk`)
//! ```
//! A value that starts with the chunk format's version byte instead is a bare chunk, with no
//! mark (as written before marks existed); sealed chunks are always bare.

use crate::chunk::{write_varint, ByteCursor, Chunk, ChunkError, CHUNK_FORMAT_VERSION};

const OPEN_FORMAT: u8 = b'O';

/// The last queue message whose samples of a GPU are all stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub partition: u32,
    pub offset: u64,
}

impl Applied {
    /// Whether the message at `offset` of `partition` is covered by this mark.
    pub fn covers(&self, partition: u32, offset: u64) -> bool {
        self.partition == partition && offset <= self.offset
    }
}

/// The open chunk's value: `chunk`, with `applied` when given. The chunk keeps its encoding
/// plans for the next commit's rewrite.
pub(crate) fn encode(chunk: &mut Chunk, applied: Option<Applied>) -> Vec<u8> {
    let encoded = chunk.encode_reusing_plans();
    let Some(applied) = applied else {
        return encoded;
    };
    let mut out = Vec::with_capacity(encoded.len() + 16);
    out.push(OPEN_FORMAT);
    write_varint(&mut out, u64::from(applied.partition));
    write_varint(&mut out, applied.offset);
    out.extend_from_slice(&encoded);
    out
}

/// The mark of a stored chunk value (`None` for a bare chunk) and the chunk's own bytes.
pub(crate) fn split(bytes: &[u8]) -> Result<(Option<Applied>, &[u8]), ChunkError> {
    match bytes.first() {
        Some(&OPEN_FORMAT) => {
            let mut cursor = ByteCursor::new(bytes, 1);
            let partition = u32::try_from(cursor.varint()?)
                .map_err(|_| ChunkError::Corrupt("partition of the mark overflows"))?;
            let offset = cursor.varint()?;
            let chunk = &bytes[cursor.position()..];
            Ok((Some(Applied { partition, offset }), chunk))
        }
        Some(&CHUNK_FORMAT_VERSION) | None => Ok((None, bytes)),
        Some(&other) => Err(ChunkError::UnknownVersion(other)),
    }
}

/// Decodes a stored open chunk value.
pub(crate) fn decode(bytes: &[u8]) -> Result<(Chunk, Option<Applied>), ChunkError> {
    let (applied, chunk) = split(bytes)?;
    Ok((Chunk::decode(chunk)?, applied))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_and_a_bare_chunk_has_none() {
        let mut chunk = Chunk::new();
        chunk.push("DCGM_FI_DEV_GPU_TEMP", 1_000, 42.0);
        let applied = Applied {
            partition: 15,
            offset: 1 << 40,
        };
        let stored = encode(&mut chunk, Some(applied));
        assert_eq!(decode(&stored).unwrap(), (chunk.clone(), Some(applied)));
        let bare = encode(&mut chunk, None);
        assert_eq!(bare, chunk.encode());
        assert_eq!(decode(&bare).unwrap(), (chunk, None));
        assert!(matches!(
            split(&[9, 1, 2]),
            Err(ChunkError::UnknownVersion(9))
        ));
        assert!(split(&[OPEN_FORMAT, 0x80]).is_err(), "a truncated mark");
        assert!(applied.covers(15, 7) && applied.covers(15, 1 << 40));
        assert!(!applied.covers(15, (1 << 40) + 1) && !applied.covers(14, 7));
    }
}
