//! The bottom layer of the chunk codec: a bit stream written and read most significant bit first
//! (through a 64-bit accumulator), a counter that prices bits without writing them, a byte cursor
//! for the series table, LEB128 varints and the zigzag map from signed to unsigned integers.

use super::ChunkError;

pub(crate) fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads bytes, LEB128 varints and fixed-size arrays from a byte slice (the series table, the
/// header fields, the registry's seen values).
pub(crate) struct ByteCursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> ByteCursor<'a> {
    /// A cursor over `bytes`, at `pos`.
    pub(crate) fn new(bytes: &'a [u8], pos: usize) -> Self {
        ByteCursor { bytes, pos }
    }

    /// Where the next read starts.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Whether every byte has been read.
    pub(crate) fn is_at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    pub(crate) fn byte(&mut self) -> Result<u8, ChunkError> {
        let byte = *self.bytes.get(self.pos).ok_or(ChunkError::Truncated)?;
        self.pos += 1;
        Ok(byte)
    }

    pub(crate) fn varint(&mut self) -> Result<u64, ChunkError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let low = u64::from(byte & 0x7f);
            if shift == 63 && low > 1 {
                return Err(ChunkError::Corrupt("varint overflows 64 bits"));
            }
            value |= low << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ChunkError::Corrupt("varint overflows 64 bits"))
    }

    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], ChunkError> {
        let end = self.pos.checked_add(len).ok_or(ChunkError::Truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or(ChunkError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ChunkError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }
}

/// Where encoded bits go: the real writer, or a counter used to price alternatives before writing.
pub(super) trait BitSink {
    /// Appends the low `n` bits of `value` (`n <= 64`), most significant first.
    fn put(&mut self, value: u64, n: u32);
}

pub(super) struct BitCounter(pub(super) u64);

impl BitSink for BitCounter {
    fn put(&mut self, _value: u64, n: u32) {
        self.0 += u64::from(n);
    }
}

/// Appends bits to a byte vector through a 64-bit accumulator.
#[derive(Debug, Clone, Default)]
pub(super) struct BitWriter {
    out: Vec<u8>,
    /// The low `filled` bits are pending; `filled < 32` between calls.
    acc: u64,
    filled: u32,
}

impl BitWriter {
    pub(super) fn new(out: Vec<u8>) -> Self {
        Self {
            out,
            acc: 0,
            filled: 0,
        }
    }

    fn put_small(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 32);
        if n == 0 {
            return;
        }
        self.acc = (self.acc << n) | (value & ((1u64 << n) - 1));
        self.filled += n;
        if self.filled >= 32 {
            self.filled -= 32;
            self.out
                .extend_from_slice(&((self.acc >> self.filled) as u32).to_be_bytes());
        }
    }

    /// Appends every bit `other` holds (its pending ones included), as if written here.
    pub(super) fn append(&mut self, other: &BitWriter) {
        let mut words = other.out.chunks_exact(4);
        for word in &mut words {
            let word: [u8; 4] = word.try_into().expect("chunks of 4 bytes");
            self.put_small(u64::from(u32::from_be_bytes(word)), 32);
        }
        for &byte in words.remainder() {
            self.put_small(u64::from(byte), 8);
        }
        self.put_small(other.acc, other.filled);
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        while self.filled >= 8 {
            self.filled -= 8;
            self.out.push((self.acc >> self.filled) as u8);
        }
        if self.filled > 0 {
            self.out.push((self.acc << (8 - self.filled)) as u8);
        }
        self.out
    }
}

impl BitSink for BitWriter {
    fn put(&mut self, value: u64, n: u32) {
        if n > 32 {
            self.put_small(value >> 32, n - 32);
            self.put_small(value & 0xffff_ffff, 32);
        } else {
            self.put_small(value, n);
        }
    }
}

pub(super) struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    len: usize,
}

impl<'a> BitReader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pos: 0,
            len: bytes.len() * 8,
        }
    }

    /// The next `n <= 56` bits without consuming them.
    fn peek_small(&self, n: u32) -> Result<u64, ChunkError> {
        debug_assert!(n <= 56);
        if n == 0 {
            return Ok(0);
        }
        if self.pos + n as usize > self.len {
            return Err(ChunkError::Truncated);
        }
        let byte = self.pos / 8;
        let word = match self.bytes.get(byte..byte + 8) {
            Some(slice) => {
                let mut full = [0u8; 8];
                full.copy_from_slice(slice);
                u64::from_be_bytes(full)
            }
            None => {
                let mut padded = [0u8; 8];
                let tail = self.bytes.get(byte..).unwrap_or_default();
                padded[..tail.len()].copy_from_slice(tail);
                u64::from_be_bytes(padded)
            }
        };
        Ok((word << (self.pos % 8)) >> (64 - n))
    }

    /// Bits [`BitReader::peek_window`] shows.
    pub(super) const WINDOW_BITS: u32 = 56;

    /// The next [`BitReader::WINDOW_BITS`] bits, in the top bits of the word (the rest zero),
    /// when that many are left.
    pub(super) fn peek_window(&self) -> Option<u64> {
        self.peek_small(Self::WINDOW_BITS)
            .ok()
            .map(|bits| bits << (64 - Self::WINDOW_BITS))
    }

    /// Consumes `n` bits that [`BitReader::peek_window`] showed.
    pub(super) fn skip(&mut self, n: u32) {
        debug_assert!(n <= Self::WINDOW_BITS && self.pos + n as usize <= self.len);
        self.pos += n as usize;
    }

    /// Reads `n <= 56` bits.
    pub(super) fn get_small(&mut self, n: u32) -> Result<u64, ChunkError> {
        let value = self.peek_small(n)?;
        self.pos += n as usize;
        Ok(value)
    }

    /// Reads `n <= 64` bits.
    pub(super) fn get(&mut self, n: u32) -> Result<u64, ChunkError> {
        if n > 32 {
            let high = self.get_small(n - 32)?;
            Ok((high << 32) | self.get_small(32)?)
        } else {
            self.get_small(n)
        }
    }

    pub(super) fn bit(&mut self) -> Result<bool, ChunkError> {
        Ok(self.get_small(1)? == 1)
    }

    /// Reads one bits up to a zero (consumed) or until `limit <= 32` ones; returns how many.
    pub(super) fn unary(&mut self, limit: u32) -> Result<u32, ChunkError> {
        let window = (limit + 1).min((self.len - self.pos).min(33) as u32);
        let bits = self.peek_small(window)?;
        let ones = if window == 0 {
            0
        } else {
            (bits << (64 - window)).leading_ones()
        };
        if ones >= limit {
            self.pos += limit as usize;
            Ok(limit)
        } else if ones < window {
            self.pos += ones as usize + 1;
            Ok(ones)
        } else {
            Err(ChunkError::Truncated)
        }
    }

    /// The stream must end here, up to zero padding of the last byte.
    pub(super) fn expect_padding(&mut self) -> Result<(), ChunkError> {
        let rest = self.len - self.pos;
        if rest >= 8 {
            return Err(ChunkError::Corrupt("trailing bytes after the last series"));
        }
        if self.get_small(rest as u32)? != 0 {
            return Err(ChunkError::Corrupt("non-zero padding"));
        }
        Ok(())
    }
}

pub(crate) fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

pub(crate) fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn appending_a_writer_writes_its_bits_at_any_alignment(
            head in prop::collection::vec((any::<u64>(), 0u32..=64), 0..12),
            tail in prop::collection::vec((any::<u64>(), 0u32..=64), 0..40),
        ) {
            let mut direct = BitWriter::new(Vec::new());
            let mut joined = BitWriter::new(Vec::new());
            let mut appended = BitWriter::default();
            for &(value, n) in &head {
                direct.put(value & mask(n), n);
                joined.put(value & mask(n), n);
            }
            for &(value, n) in &tail {
                direct.put(value & mask(n), n);
                appended.put(value & mask(n), n);
            }
            joined.append(&appended);
            prop_assert_eq!(joined.finish(), direct.finish());
        }
    }

    fn mask(n: u32) -> u64 {
        u64::MAX.checked_shr(64 - n).unwrap_or(0)
    }
}
