//! Byte-level pieces the binary forms share: LEB128 varints, zigzag signed integers and a
//! bounds-checked cursor whose errors name the form being read.

use crate::batch::BatchError;

pub(crate) fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

pub(crate) fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Bytes `put_varint` writes for `n`.
pub(crate) fn varint_len(n: u64) -> usize {
    (64 - n.max(1).leading_zeros() as usize).div_ceil(7)
}

/// The 16 bytes 32 lowercase hex digits spell (uppercase digits would not round trip).
pub(crate) fn hex_bytes(digits: &[u8]) -> Option<[u8; 16]> {
    if digits.len() != 32 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut raw = [0u8; 16];
    for (byte, pair) in raw.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(raw)
}

/// `byte` as two lowercase hex digits.
pub(crate) fn push_hex(out: &mut String, byte: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push(DIGITS[usize::from(byte >> 4)] as char);
    out.push(DIGITS[usize::from(byte & 15)] as char);
}

/// A varint length, then the bytes.
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A cursor over encoded bytes; `error` turns an offset and a reason into the form's error.
pub(crate) struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
    error: fn(usize, String) -> BatchError,
}

impl<'a> Input<'a> {
    pub(crate) fn new(bytes: &'a [u8], error: fn(usize, String) -> BatchError) -> Self {
        Input {
            bytes,
            at: 0,
            error,
        }
    }

    pub(crate) fn error(&self, reason: impl Into<String>) -> BatchError {
        (self.error)(self.at, reason.into())
    }

    pub(crate) fn byte(&mut self) -> Result<u8, BatchError> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| self.error("unexpected end"))?;
        self.at += 1;
        Ok(b)
    }

    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], BatchError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| self.error("unexpected end"))?;
        let bytes: &'a [u8] = self.bytes;
        let taken = &bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let bytes: &'a [u8] = self.bytes;
        let rest = &bytes[self.at..];
        self.at = bytes.len();
        rest
    }

    /// An error unless every byte was read.
    pub(crate) fn finish(&self, reason: &str) -> Result<(), BatchError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(self.error(reason))
        }
    }

    pub(crate) fn varint(&mut self) -> Result<u64, BatchError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(self.error("a varint is longer than 10 bytes"))
    }

    /// A count of things that follow; each takes at least one byte, so a count larger than the
    /// bytes left is corrupt (and must not size an allocation).
    pub(crate) fn count(&mut self) -> Result<usize, BatchError> {
        let n = self.varint()?;
        let left = (self.bytes.len() - self.at) as u64;
        if n > left {
            return Err(self.error(format!("a count of {n} exceeds the {left} bytes left")));
        }
        Ok(n as usize)
    }

    /// A varint length, then that many bytes of UTF-8.
    pub(crate) fn text(&mut self) -> Result<&'a str, BatchError> {
        let len = self.count()?;
        let raw = self.take(len)?;
        std::str::from_utf8(raw).map_err(|_| self.error("a string is not UTF-8"))
    }

    pub(crate) fn index_u32(&mut self) -> Result<u32, BatchError> {
        let n = self.varint()?;
        u32::try_from(n).map_err(|_| self.error(format!("index {n} exceeds 32 bits")))
    }

    pub(crate) fn string<'s>(&mut self, strings: &[&'s str]) -> Result<&'s str, BatchError> {
        let i = self.varint()?;
        usize::try_from(i)
            .ok()
            .and_then(|i| strings.get(i).copied())
            .ok_or_else(|| {
                self.error(format!(
                    "string index {i} is out of range ({} strings)",
                    strings.len()
                ))
            })
    }
}
