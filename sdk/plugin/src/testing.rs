//! Native test helpers: run a plugin type over records through the same byte-level ABI
//! the broker uses (params blob, batch layout, output arena), without a Wasm runtime.
//!
//! ```
//! use meridian_plugin::{testing, Error, Filter, Params, Record};
//!
//! struct Small;
//! impl Filter for Small {
//!     fn new(_: &Params) -> Result<Self, Error> { Ok(Small) }
//!     fn filter(&mut self, r: &Record<'_>) -> Result<bool, Error> {
//!         Ok(r.value.is_some_and(|v| v.len() < 4))
//!     }
//! }
//! let out = testing::run_filter::<Small>(&[], &[Record::with_value(b"abc"), Record::with_value(b"abcdef")]);
//! assert_eq!(out.unwrap(), vec![Ok(true), Ok(false)]);
//! ```

use crate::__abi::{self, decode_batch, put_bytes, put_str, put_u32};
use crate::{Filter, OutputRecord, Partitioner, Record, Transform};

/// The plugin's answer for one record: `Err` carries the message of a record error.
pub type RecordResult<T> = Result<T, String>;

fn encode_params(params: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    put_u32(&mut out, params.len() as u32);
    for (k, v) in params {
        put_str(&mut out, k);
        put_str(&mut out, v);
    }
    out
}

/// Encodes records exactly as the host does.
pub fn encode_batch(records: &[Record<'_>], n_partitions: u32) -> Vec<u8> {
    let mut out = Vec::new();
    put_u32(&mut out, n_partitions);
    put_u32(&mut out, records.len() as u32);
    for r in records {
        out.extend_from_slice(&r.offset.to_le_bytes());
        out.extend_from_slice(&r.timestamp.to_le_bytes());
        put_bytes(&mut out, r.key);
        put_bytes(&mut out, r.value);
        put_u32(&mut out, r.headers.len() as u32);
        for h in &r.headers {
            put_str(&mut out, h.key);
            put_bytes(&mut out, h.value);
        }
    }
    out
}

fn call(bytes: &[u8], f: impl FnOnce(i32) -> i64) -> Vec<u8> {
    __abi::write_input(bytes);
    __abi::read_output(f(bytes.len() as i32))
}

/// Splits the status byte off; `Err` is the plugin's call-level error.
fn status(area: Vec<u8>) -> Result<Vec<u8>, String> {
    match area.first() {
        Some(0) => Ok(area[1..].to_vec()),
        Some(1) => Err(String::from_utf8_lossy(&area[5..]).into_owned()),
        _ => Err(format!("malformed output area {area:?}")),
    }
}

struct Cursor {
    buf: Vec<u8>,
    pos: usize,
}

impl Cursor {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u32(&mut self) -> u32 {
        let b = self.take(4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn i64(&mut self) -> i64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8));
        i64::from_le_bytes(a)
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32() as i32;
        (n >= 0).then(|| self.take(n as usize).to_vec())
    }
    fn string(&mut self) -> String {
        let n = self.u32() as usize;
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
    fn record_error(&mut self) -> RecordResult<()> {
        Err(self.string())
    }
}

fn run<P, T>(
    params: &[(&str, &str)],
    records: &[Record<'_>],
    n_partitions: u32,
    init: fn(&mut Option<P>, i32) -> i64,
    process: fn(&mut Option<P>, i32) -> i64,
    mut decode: impl FnMut(&mut Cursor) -> RecordResult<T>,
) -> Result<Vec<RecordResult<T>>, String> {
    let mut state = None;
    status(call(&encode_params(params), |len| init(&mut state, len)))?;
    let body = status(call(&encode_batch(records, n_partitions), |len| {
        process(&mut state, len)
    }))?;
    let mut cursor = Cursor { buf: body, pos: 0 };
    let out = (0..records.len()).map(|_| decode(&mut cursor)).collect();
    assert_eq!(cursor.pos, cursor.buf.len(), "trailing output bytes");
    Ok(out)
}

/// Runs a filter over one batch; `Err` is a parameter or call-level error.
pub fn run_filter<F: Filter>(
    params: &[(&str, &str)],
    records: &[Record<'_>],
) -> Result<Vec<RecordResult<bool>>, String> {
    run(
        params,
        records,
        0,
        __abi::init_filter::<F>,
        __abi::process_filter::<F>,
        |c| match c.u8() {
            0 => Ok(false),
            1 => Ok(true),
            _ => c.record_error().map(|()| false),
        },
    )
}

/// Runs a transform over one batch.
pub fn run_transform<T: Transform>(
    params: &[(&str, &str)],
    records: &[Record<'_>],
) -> Result<Vec<RecordResult<Vec<OutputRecord>>>, String> {
    run(
        params,
        records,
        0,
        __abi::init_transform::<T>,
        __abi::process_transform::<T>,
        |c| match c.u8() {
            0 => {
                let n = c.u32();
                Ok((0..n)
                    .map(|_| {
                        let timestamp = c.i64();
                        let key = c.bytes();
                        let value = c.bytes();
                        let n_headers = c.u32();
                        let headers = (0..n_headers).map(|_| (c.string(), c.bytes())).collect();
                        OutputRecord {
                            key,
                            value,
                            headers,
                            timestamp,
                        }
                    })
                    .collect())
            }
            _ => c.record_error().map(|()| Vec::new()),
        },
    )
}

/// Runs a partitioner over one batch for a topic of `n_partitions`.
pub fn run_partitioner<P: Partitioner>(
    params: &[(&str, &str)],
    records: &[Record<'_>],
    n_partitions: u32,
) -> Result<Vec<RecordResult<u32>>, String> {
    run(
        params,
        records,
        n_partitions,
        __abi::init_partitioner::<P>,
        __abi::process_partitioner::<P>,
        |c| match c.u8() {
            0 => Ok(c.u32()),
            _ => c.record_error().map(|()| 0),
        },
    )
}

/// Decodes a batch the way the guest glue does, for round-trip tests.
pub fn decode(bytes: &[u8]) -> Result<(u32, Vec<Record<'_>>), String> {
    decode_batch(bytes)
}
