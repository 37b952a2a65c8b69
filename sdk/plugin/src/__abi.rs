//! ABI v1 glue between the broker's plugin host and a plugin (see the host's
//! `meridian_wasm_host::abi` for the byte layouts). The attribute macros expand to
//! [`export!`](crate::__export) which calls these functions; plugin authors never do.
//!
//! No unsafe: the host writes each call's input into `INPUT` (whose address
//! `meridian_alloc` returns), and the guest reads it back through the same buffer rather
//! than through the raw pointer argument. Output goes to `OUTPUT`, an arena cleared at
//! every call, whose address and length are returned to the host.

use std::cell::RefCell;

use crate::{Filter, Header, OutputRecord, Params, Partitioner, Record, Transform};

pub const ABI_VERSION: i32 = 1;
pub const KIND_FILTER: i32 = 0;
pub const KIND_TRANSFORM: i32 = 1;
pub const KIND_PARTITIONER: i32 = 2;

thread_local! {
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `meridian_alloc`: makes the input buffer `len` bytes long and returns its address.
pub fn alloc(len: i32) -> i32 {
    INPUT.with(|input| {
        let mut input = input.borrow_mut();
        input.clear();
        input.resize(len.max(0) as usize, 0);
        input.as_mut_ptr() as usize as i32
    })
}

/// Copies bytes into the input buffer, as the host does (native tests).
pub fn write_input(bytes: &[u8]) {
    INPUT.with(|input| {
        let mut input = input.borrow_mut();
        input.clear();
        input.extend_from_slice(bytes);
    })
}

/// Returns a copy of the output area described by a packed `(ptr << 32) | len`, as the host
/// reads it (native tests). The pointer is checked against the arena, not dereferenced.
pub fn read_output(packed: i64) -> Vec<u8> {
    OUTPUT.with(|out| {
        let out = out.borrow();
        let ptr = (packed as u64 >> 32) as usize;
        let len = packed as u32 as usize;
        assert_eq!(ptr, out.as_ptr() as usize as u32 as usize);
        out[..len].to_vec()
    })
}

fn with_input<R>(len: i32, f: impl FnOnce(&[u8]) -> R) -> R {
    INPUT.with(|input| {
        let input = input.borrow();
        let len = (len.max(0) as usize).min(input.len());
        f(&input[..len])
    })
}

/// Runs `f` to fill the output arena after an ok status byte; an `Err` from `f` replaces
/// the whole area with an error status and message.
fn respond(f: impl FnOnce(&mut Vec<u8>) -> Result<(), String>) -> i64 {
    OUTPUT.with(|out| {
        let mut out = out.borrow_mut();
        out.clear();
        out.push(0);
        if let Err(message) = f(&mut out) {
            out.clear();
            out.push(1);
            put_str(&mut out, &message);
        }
        ((out.as_ptr() as usize as u32 as i64) << 32) | out.len() as i64
    })
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
        Some(b) => {
            out.extend_from_slice(&(b.len() as i32).to_le_bytes());
            out.extend_from_slice(b);
        }
    }
}

fn put_record_error(out: &mut Vec<u8>, e: &crate::Error) {
    out.push(2);
    put_str(out, &e.to_string());
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("input truncated at byte {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Result<i64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(a))
    }
    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|e| e.to_string())
    }
    fn bytes(&mut self) -> Result<Option<&'a [u8]>, String> {
        let n = self.u32()? as i32;
        if n < 0 {
            return Ok(None);
        }
        Ok(Some(self.take(n as usize)?))
    }
}

/// Decodes the params blob of `meridian_init`.
pub fn decode_params(bytes: &[u8]) -> Result<Params, String> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let n = r.u32()?;
    let mut pairs = Vec::with_capacity(n.min(1024) as usize);
    for _ in 0..n {
        let key = r.str()?;
        let value = r.str()?;
        pairs.push((key, value));
    }
    Ok(Params::new(pairs))
}

/// Decodes a batch in place: the records borrow from `bytes`.
pub fn decode_batch(bytes: &[u8]) -> Result<(u32, Vec<Record<'_>>), String> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let n_partitions = r.u32()?;
    let n = r.u32()?;
    let mut records = Vec::with_capacity(n.min(1 << 16) as usize);
    for _ in 0..n {
        let offset = r.i64()?;
        let timestamp = r.i64()?;
        let key = r.bytes()?;
        let value = r.bytes()?;
        let n_headers = r.u32()?;
        let mut headers = Vec::with_capacity(n_headers.min(64) as usize);
        for _ in 0..n_headers {
            let key = r.str()?;
            let value = r.bytes()?;
            headers.push(Header { key, value });
        }
        records.push(Record {
            key,
            value,
            headers,
            timestamp,
            offset,
        });
    }
    Ok((n_partitions, records))
}

fn init<P>(
    state: &mut Option<P>,
    len: i32,
    new: impl FnOnce(&Params) -> Result<P, crate::Error>,
) -> i64 {
    with_input(len, |input| {
        respond(|_| {
            let params = decode_params(input)?;
            *state = Some(new(&params).map_err(|e| e.to_string())?);
            Ok(())
        })
    })
}

fn process<P>(
    state: &mut Option<P>,
    len: i32,
    mut each: impl FnMut(&mut P, &Record<'_>, u32, &mut Vec<u8>),
) -> i64 {
    with_input(len, |input| {
        respond(|out| {
            let plugin = state
                .as_mut()
                .ok_or("meridian_process called before meridian_init")?;
            let (n_partitions, records) = decode_batch(input)?;
            for record in &records {
                each(plugin, record, n_partitions, out);
            }
            Ok(())
        })
    })
}

pub fn init_filter<F: Filter>(state: &mut Option<F>, len: i32) -> i64 {
    init(state, len, F::new)
}

pub fn process_filter<F: Filter>(state: &mut Option<F>, len: i32) -> i64 {
    process(state, len, |f, record, _, out| match f.filter(record) {
        Ok(keep) => out.push(keep as u8),
        Err(e) => put_record_error(out, &e),
    })
}

pub fn init_transform<T: Transform>(state: &mut Option<T>, len: i32) -> i64 {
    init(state, len, T::new)
}

pub fn process_transform<T: Transform>(state: &mut Option<T>, len: i32) -> i64 {
    process(state, len, |t, record, _, out| match t.transform(record) {
        Ok(records) => {
            out.push(0);
            put_u32(out, records.len() as u32);
            for r in &records {
                put_output_record(out, r);
            }
        }
        Err(e) => put_record_error(out, &e),
    })
}

fn put_output_record(out: &mut Vec<u8>, r: &OutputRecord) {
    out.extend_from_slice(&r.timestamp.to_le_bytes());
    put_bytes(out, r.key.as_deref());
    put_bytes(out, r.value.as_deref());
    put_u32(out, r.headers.len() as u32);
    for (key, value) in &r.headers {
        put_str(out, key);
        put_bytes(out, value.as_deref());
    }
}

pub fn init_partitioner<P: Partitioner>(state: &mut Option<P>, len: i32) -> i64 {
    init(state, len, P::new)
}

pub fn process_partitioner<P: Partitioner>(state: &mut Option<P>, len: i32) -> i64 {
    process(state, len, |p, record, n_partitions, out| {
        match p.partition(record, n_partitions) {
            Ok(partition) => {
                out.push(0);
                put_u32(out, partition);
            }
            Err(e) => put_record_error(out, &e),
        }
    })
}

/// Emits the five ABI exports for a plugin type, on wasm32 only (natively there is no
/// host to call them; [`crate::testing`] drives the same functions directly).
#[doc(hidden)]
#[macro_export]
macro_rules! __export {
    ($ty:ty, $kind:expr, $init:ident, $process:ident) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static STATE: ::std::cell::RefCell<::std::option::Option<$ty>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }
            // no_mangle is how a wasm module names its exports; these are the ABI's five.
            #[allow(unsafe_code)]
            #[no_mangle]
            extern "C" fn meridian_abi_version() -> i32 {
                $crate::__abi::ABI_VERSION
            }
            #[allow(unsafe_code)]
            #[no_mangle]
            extern "C" fn meridian_kind() -> i32 {
                $kind
            }
            #[allow(unsafe_code)]
            #[no_mangle]
            extern "C" fn meridian_alloc(len: i32) -> i32 {
                $crate::__abi::alloc(len)
            }
            #[allow(unsafe_code)]
            #[no_mangle]
            extern "C" fn meridian_init(_ptr: i32, len: i32) -> i64 {
                STATE.with(|s| $crate::__abi::$init::<$ty>(&mut s.borrow_mut(), len))
            }
            #[allow(unsafe_code)]
            #[no_mangle]
            extern "C" fn meridian_process(_ptr: i32, len: i32) -> i64 {
                STATE.with(|s| $crate::__abi::$process::<$ty>(&mut s.borrow_mut(), len))
            }
        };
    };
}
