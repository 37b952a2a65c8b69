//! Primitive encoding: big-endian integers, length-prefixed strings and byte blobs,
//! counted arrays, and Kafka's zigzag varints. Decoding never allocates more than
//! the input could possibly describe: every count is checked against what is left.

use bytes::{Buf, BufMut, Bytes, BytesMut};

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum DecodeError {
    #[error("truncated: needed {needed} more bytes, {available} left")]
    Truncated { needed: usize, available: usize },
    #[error("varint longer than allowed")]
    VarintOverflow,
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("array count {count} cannot fit in the {available} bytes left")]
    BadCount { count: u32, available: usize },
    #[error("unknown {what} value {value}")]
    UnknownValue { what: &'static str, value: i64 },
    #[error("{0} trailing bytes after message")]
    TrailingBytes(usize),
}

/// Reads primitives from a `Bytes`, slicing (not copying) blobs.
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                needed: n,
                available: self.buf.len(),
            });
        }
        Ok(())
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    pub fn i8(&mut self) -> Result<i8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_i8())
    }
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        Ok(self.u8()? != 0)
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }
    pub fn i16(&mut self) -> Result<i16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_i16())
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_i32())
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_i64())
    }

    /// `N` bytes with no length prefix.
    pub fn array_of<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.need(N)?;
        let mut out = [0u8; N];
        self.buf.copy_to_slice(&mut out);
        Ok(out)
    }

    /// A `u32`-length-prefixed blob, returned as a zero-copy slice.
    pub fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u32()? as usize;
        self.need(len)?;
        Ok(self.buf.split_to(len))
    }

    /// A `u16`-length-prefixed UTF-8 string.
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.u16()? as usize;
        self.need(len)?;
        let raw = self.buf.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// A `u32` element count, checked so that each element takes at least
    /// `min_element_size` bytes of what is left.
    pub fn count(&mut self, min_element_size: usize) -> Result<usize, DecodeError> {
        let count = self.u32()?;
        let available = self.buf.len();
        if (count as usize).saturating_mul(min_element_size.max(1)) > available {
            return Err(DecodeError::BadCount { count, available });
        }
        Ok(count as usize)
    }

    pub fn array<T>(
        &mut self,
        min_element_size: usize,
        mut element: impl FnMut(&mut Reader) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = self.count(min_element_size)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(element(self)?);
        }
        Ok(out)
    }

    pub fn option<T>(
        &mut self,
        element: impl FnOnce(&mut Reader) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        if self.bool()? {
            Ok(Some(element(self)?))
        } else {
            Ok(None)
        }
    }

    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}

/// Payloads at least this long are sent as chunks of their own by a chunked writer
/// instead of being copied into the frame.
pub const SHARED_CHUNK_MIN: usize = 4096;

/// Writes primitives into a `BytesMut`. A *chunked* writer (see
/// [`Writer::chunked`]) also hands large payloads over as separate `Bytes`, so record
/// batches go out without being copied into the frame.
pub struct Writer<'a> {
    pub buf: &'a mut BytesMut,
    chunks: Option<&'a mut Vec<Bytes>>,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut BytesMut) -> Writer<'a> {
        Writer { buf, chunks: None }
    }

    /// A writer that moves what is written so far into `chunks` whenever a large
    /// payload is written with [`Writer::shared_bytes`], and the payload after it.
    pub fn chunked(buf: &'a mut BytesMut, chunks: &'a mut Vec<Bytes>) -> Writer<'a> {
        Writer {
            buf,
            chunks: Some(chunks),
        }
    }

    /// Like [`Writer::bytes`]; a chunked writer does not copy a large payload.
    pub fn shared_bytes(&mut self, v: &Bytes) {
        match &mut self.chunks {
            Some(chunks) if v.len() >= SHARED_CHUNK_MIN => {
                self.buf.put_u32(v.len() as u32);
                chunks.push(self.buf.split().freeze());
                chunks.push(v.clone());
            }
            _ => self.bytes(v),
        }
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.put_u8(v)
    }
    pub fn i8(&mut self, v: i8) {
        self.buf.put_i8(v)
    }
    pub fn bool(&mut self, v: bool) {
        self.buf.put_u8(v as u8)
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.put_u16(v)
    }
    pub fn i16(&mut self, v: i16) {
        self.buf.put_i16(v)
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.put_u32(v)
    }
    pub fn i32(&mut self, v: i32) {
        self.buf.put_i32(v)
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.put_u64(v)
    }
    pub fn i64(&mut self, v: i64) {
        self.buf.put_i64(v)
    }
    /// Bytes with no length prefix (the reader knows how many).
    pub fn fixed(&mut self, v: &[u8]) {
        self.buf.put_slice(v);
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.put_u32(v.len() as u32);
        self.buf.put_slice(v);
    }
    /// Strings longer than `u16::MAX` bytes are a programmer error: names and
    /// messages are bounded well below that.
    pub fn string(&mut self, v: &str) {
        let len = u16::try_from(v.len()).unwrap_or(u16::MAX);
        self.buf.put_u16(len);
        self.buf.put_slice(&v.as_bytes()[..len as usize]);
    }
    pub fn array<T>(&mut self, items: &[T], mut element: impl FnMut(&mut Writer<'_>, &T)) {
        self.buf.put_u32(items.len() as u32);
        for item in items {
            element(self, item);
        }
    }
    pub fn option<T>(&mut self, item: Option<&T>, element: impl FnOnce(&mut Writer<'_>, &T)) {
        match item {
            None => self.bool(false),
            Some(v) => {
                self.bool(true);
                element(self, v);
            }
        }
    }
}

fn zigzag32(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}
fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub fn put_varint(out: &mut BytesMut, v: i32) {
    put_uvarint(out, zigzag32(v) as u64)
}

pub fn put_varlong(out: &mut BytesMut, v: i64) {
    put_uvarint(out, zigzag64(v))
}

fn put_uvarint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn get_uvarint(buf: &mut Bytes, max_bytes: usize) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for i in 0..max_bytes {
        if buf.is_empty() {
            return Err(DecodeError::Truncated {
                needed: 1,
                available: 0,
            });
        }
        let byte = buf.get_u8();
        value |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::VarintOverflow)
}

pub fn get_varint(buf: &mut Bytes) -> Result<i32, DecodeError> {
    let raw = get_uvarint(buf, 5)?;
    if raw > u32::MAX as u64 {
        return Err(DecodeError::VarintOverflow);
    }
    let raw = raw as u32;
    Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

pub fn get_varlong(buf: &mut Bytes) -> Result<i64, DecodeError> {
    let raw = get_uvarint(buf, 10)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_round_trip(a in any::<i32>(), b in any::<i64>()) {
            let mut out = BytesMut::new();
            put_varint(&mut out, a);
            put_varlong(&mut out, b);
            let mut buf = out.freeze();
            prop_assert_eq!(get_varint(&mut buf).unwrap(), a);
            prop_assert_eq!(get_varlong(&mut buf).unwrap(), b);
            prop_assert!(buf.is_empty());
        }
    }

    #[test]
    fn zigzag_matches_kafka() {
        // Kafka's ByteUtils: 0 -> 0, -1 -> 1, 1 -> 2, -2 -> 3.
        for (v, want) in [(0, 0u8), (-1, 1), (1, 2), (-2, 3), (63, 126), (-64, 127)] {
            let mut out = BytesMut::new();
            put_varint(&mut out, v);
            assert_eq!(&out[..], &[want]);
        }
    }

    #[test]
    fn lying_counts_are_refused_before_allocating() {
        let mut out = BytesMut::new();
        out.put_u32(u32::MAX);
        let mut reader = Reader::new(out.freeze());
        assert!(matches!(reader.count(1), Err(DecodeError::BadCount { .. })));
    }
}
