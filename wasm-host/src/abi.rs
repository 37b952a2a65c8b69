//! ABI version 1 between the host and a guest module: the byte layouts the host writes
//! into guest memory and reads back. Pure encoding and decoding, no wasmtime.
//!
//! Guest exports (checked at load):
//! - `memory`
//! - `meridian_abi_version() -> i32`: must return [`ABI_VERSION`]
//! - `meridian_kind() -> i32`: 0 filter, 1 transform, 2 partitioner
//! - `meridian_alloc(len: i32) -> i32`: a guest buffer of `len` bytes the host fills
//!   (the guest reuses one growing buffer)
//! - `meridian_init(ptr: i32, len: i32) -> i64`: parameters, once per instance
//! - `meridian_process(ptr: i32, len: i32) -> i64`: one whole batch
//!
//! `init` and `process` return `(out_ptr << 32) | out_len`, an output area in the guest's
//! arena (reset at each call). Its first byte is the call status: 0 ok, 1 error followed
//! by a message.
//!
//! All integers are little-endian. Bytes fields are `i32 length` (-1 for null) then the
//! bytes; strings are `u32 length` then UTF-8.
//!
//! Params: `u32 count`, then `count` × (`string key`, `string value`).
//!
//! Batch input: `u32 n_partitions` (0 unless partitioner), `u32 n_records`, then per
//! record: `i64 offset`, `i64 timestamp`, `bytes key`, `bytes value`, `u32 n_headers`,
//! `n_headers` × (`string key`, `bytes value`).
//!
//! Batch output after the status byte, one entry per input record in order, a tag byte:
//! - filter: 0 drop, 1 keep;
//! - transform: 0 then `u32 n_out` and `n_out` × (`i64 timestamp`, `bytes key`,
//!   `bytes value`, `u32 n_headers`, headers);
//! - partitioner: 0 then `u32 partition`;
//! - any kind: 2 then `string message`, the plugin returned an error for that record.

use bytes::Bytes;
use meridian_wire::batch::{Header, NewRecord, Record};

/// The ABI version this host speaks. A module exporting another one is refused at load.
pub const ABI_VERSION: i32 = 1;

/// What a plugin does with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PluginKind {
    /// Keeps or drops each record.
    Filter,
    /// Maps each record to zero or more records.
    Transform,
    /// Chooses the partition of each record produced without one.
    Partitioner,
}

impl PluginKind {
    pub(crate) fn from_abi(code: i32) -> Option<PluginKind> {
        match code {
            0 => Some(PluginKind::Filter),
            1 => Some(PluginKind::Transform),
            2 => Some(PluginKind::Partitioner),
            _ => None,
        }
    }

    /// The kind's name as used in the CLI and metadata: `filter`, `transform`, `partitioner`.
    pub fn name(self) -> &'static str {
        match self {
            PluginKind::Filter => "filter",
            PluginKind::Transform => "transform",
            PluginKind::Partitioner => "partitioner",
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PluginKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "filter" => Ok(PluginKind::Filter),
            "transform" => Ok(PluginKind::Transform),
            "partitioner" => Ok(PluginKind::Partitioner),
            other => Err(format!(
                "unknown plugin kind `{other}` (expected filter, transform or partitioner)"
            )),
        }
    }
}

/// What a plugin made of a batch: one entry per input record, in order. `Err` carries the
/// message of an error the plugin returned for that record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOutput {
    Filter(Vec<Result<bool, String>>),
    Transform(Vec<Result<Vec<NewRecord>, String>>),
    Partition(Vec<Result<u32, String>>),
}

impl BatchOutput {
    /// How many input records the output covers.
    pub fn len(&self) -> usize {
        match self {
            BatchOutput::Filter(v) => v.len(),
            BatchOutput::Transform(v) => v.len(),
            BatchOutput::Partition(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub(crate) fn encode_params(params: &[(String, String)], out: &mut Vec<u8>) {
    out.clear();
    put_u32(out, params.len() as u32);
    for (key, value) in params {
        put_str(out, key);
        put_str(out, value);
    }
}

pub(crate) fn encode_batch(records: &[Record], n_partitions: u32, out: &mut Vec<u8>) {
    out.clear();
    put_u32(out, n_partitions);
    put_u32(out, records.len() as u32);
    for record in records {
        out.extend_from_slice(&record.offset.to_le_bytes());
        out.extend_from_slice(&record.timestamp.to_le_bytes());
        put_bytes(out, record.key.as_deref());
        put_bytes(out, record.value.as_deref());
        put_u32(out, record.headers.len() as u32);
        for header in &record.headers {
            put_str(out, &header.key);
            put_bytes(out, header.value.as_deref());
        }
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
        Some(b) => {
            out.extend_from_slice(&(b.len() as i32).to_le_bytes());
            out.extend_from_slice(b);
        }
    }
}

/// Reads guest output. Every read is bounds-checked: the guest is untrusted.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(format!(
                "output truncated: wanted {n} bytes at {} of {}",
                self.pos,
                self.buf.len()
            )),
        }
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Result<i64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn bytes(&mut self) -> Result<Option<Bytes>, String> {
        let n = self.u32()? as i32;
        if n == -1 {
            return Ok(None);
        }
        if n < 0 {
            return Err(format!("negative length {n}"));
        }
        Ok(Some(Bytes::copy_from_slice(self.take(n as usize)?)))
    }
}

/// Parses the status byte; `Ok(rest)` on success, `Err(message)` if the guest reported a
/// call-level error. A malformed area is reported as `Malformed`.
pub(crate) enum Status<'a> {
    Ok(&'a [u8]),
    GuestError(String),
    Malformed(String),
}

pub(crate) fn parse_status(area: &[u8]) -> Status<'_> {
    let mut r = Reader { buf: area, pos: 0 };
    match r.u8() {
        Ok(0) => Status::Ok(&area[1..]),
        Ok(1) => match r.string() {
            Ok(message) => Status::GuestError(message),
            Err(e) => Status::Malformed(e),
        },
        Ok(other) => Status::Malformed(format!("unknown status byte {other}")),
        Err(e) => Status::Malformed(e),
    }
}

/// Decodes the per-record part of a batch output for `n_records` inputs.
pub(crate) fn decode_output(
    kind: PluginKind,
    body: &[u8],
    n_records: usize,
    n_partitions: u32,
    transform_records_max: usize,
) -> Result<BatchOutput, String> {
    let mut r = Reader { buf: body, pos: 0 };
    let mut n_out_total = 0usize;
    let out = match kind {
        PluginKind::Filter => {
            let mut v = Vec::with_capacity(n_records);
            for _ in 0..n_records {
                v.push(match r.u8()? {
                    0 => Ok(false),
                    1 => Ok(true),
                    2 => Err(r.string()?),
                    t => return Err(format!("unknown filter tag {t}")),
                });
            }
            BatchOutput::Filter(v)
        }
        PluginKind::Transform => {
            let mut v = Vec::with_capacity(n_records);
            for _ in 0..n_records {
                v.push(match r.u8()? {
                    0 => {
                        let n = r.u32()? as usize;
                        n_out_total = n_out_total.saturating_add(n);
                        if n_out_total > transform_records_max {
                            return Err(format!(
                                "transform produced more than {transform_records_max} records from one batch"
                            ));
                        }
                        let mut records = Vec::with_capacity(n.min(1024));
                        for _ in 0..n {
                            let timestamp = r.i64()?;
                            let key = r.bytes()?;
                            let value = r.bytes()?;
                            let n_headers = r.u32()? as usize;
                            let mut headers = Vec::with_capacity(n_headers.min(64));
                            for _ in 0..n_headers {
                                let key = r.string()?;
                                let value = r.bytes()?;
                                headers.push(Header { key, value });
                            }
                            records.push(NewRecord {
                                timestamp,
                                key,
                                value,
                                headers,
                            });
                        }
                        Ok(records)
                    }
                    2 => Err(r.string()?),
                    t => return Err(format!("unknown transform tag {t}")),
                });
            }
            BatchOutput::Transform(v)
        }
        PluginKind::Partitioner => {
            let mut v = Vec::with_capacity(n_records);
            for _ in 0..n_records {
                v.push(match r.u8()? {
                    0 => {
                        let p = r.u32()?;
                        if p < n_partitions {
                            Ok(p)
                        } else {
                            Err(format!(
                                "plugin chose partition {p} of a topic with {n_partitions}"
                            ))
                        }
                    }
                    2 => Err(r.string()?),
                    t => return Err(format!("unknown partitioner tag {t}")),
                });
            }
            BatchOutput::Partition(v)
        }
    };
    if r.pos != body.len() {
        return Err(format!(
            "{} trailing bytes after {n_records} records",
            body.len() - r.pos
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_output_round_trip() {
        let body = [1u8, 0, 2, 3, 0, 0, 0, b'b', b'a', b'd'];
        let out = decode_output(PluginKind::Filter, &body, 3, 0, 10).unwrap();
        assert_eq!(
            out,
            BatchOutput::Filter(vec![Ok(true), Ok(false), Err("bad".into())])
        );
    }

    #[test]
    fn truncated_and_trailing_output_is_refused() {
        assert!(decode_output(PluginKind::Filter, &[1u8], 2, 0, 10).is_err());
        assert!(decode_output(PluginKind::Filter, &[1u8, 1], 1, 0, 10).is_err());
        assert!(decode_output(PluginKind::Filter, &[7u8], 1, 0, 10).is_err());
    }

    #[test]
    fn partition_out_of_range_is_a_record_error() {
        let mut body = vec![0u8];
        body.extend_from_slice(&5u32.to_le_bytes());
        let out = decode_output(PluginKind::Partitioner, &body, 1, 3, 10).unwrap();
        let BatchOutput::Partition(v) = out else {
            panic!()
        };
        assert!(v[0].as_ref().unwrap_err().contains("partition 5"));
    }

    #[test]
    fn transform_output_cap() {
        let mut body = vec![0u8];
        body.extend_from_slice(&1000u32.to_le_bytes());
        let err = decode_output(PluginKind::Transform, &body, 1, 0, 10).unwrap_err();
        assert!(err.contains("more than 10"), "{err}");
    }

    #[test]
    fn status_parsing() {
        assert!(matches!(parse_status(&[0, 9]), Status::Ok(&[9])));
        let mut e = vec![1u8];
        e.extend_from_slice(&2u32.to_le_bytes());
        e.extend_from_slice(b"no");
        assert!(matches!(parse_status(&e), Status::GuestError(m) if m == "no"));
        assert!(matches!(parse_status(&[]), Status::Malformed(_)));
    }
}
