//! The slice of WASI preview 1 a plugin may import, implemented here rather than with
//! wasmtime-wasi: plugins get no files, no sockets, no environment and no arguments, and
//! what they print to stdout/stderr is captured line by line, with a line length cap and
//! a lines-per-second cap, for the broker to append to its logs topic.
//!
//! A module importing anything else is refused at load with the import's name.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Extern, Linker};

use crate::StoreState;

pub(crate) const MODULE: &str = "wasi_snapshot_preview1";

/// The preview 1 functions this host provides.
pub(crate) const PROVIDED: &[&str] = &[
    "fd_write",
    "fd_read",
    "fd_close",
    "fd_seek",
    "fd_fdstat_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "environ_get",
    "environ_sizes_get",
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "clock_res_get",
    "random_get",
    "sched_yield",
    "proc_exit",
];

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;

/// Which stream a plugin line was printed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line a plugin printed (without its newline; cut at the line length cap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub stream: LogStream,
    pub text: String,
}

/// Captured output of one instance.
pub(crate) struct LogCapture {
    partial: [Vec<u8>; 2],
    pub(crate) lines: Vec<LogLine>,
    pub(crate) dropped_lines: u64,
    line_bytes_max: usize,
    lines_per_sec_max: u32,
    window_start: Instant,
    lines_in_window: u32,
}

impl LogCapture {
    pub(crate) fn new(line_bytes_max: usize, lines_per_sec_max: u32) -> LogCapture {
        LogCapture {
            partial: [Vec::new(), Vec::new()],
            lines: Vec::new(),
            dropped_lines: 0,
            line_bytes_max,
            lines_per_sec_max,
            window_start: Instant::now(),
            lines_in_window: 0,
        }
    }

    fn write(&mut self, stream: LogStream, mut data: &[u8]) {
        let idx = stream as usize;
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            self.push_partial(idx, &data[..nl]);
            self.finish_line(stream);
            data = &data[nl + 1..];
        }
        self.push_partial(idx, data);
    }

    fn push_partial(&mut self, idx: usize, data: &[u8]) {
        // Bytes beyond the cap are dropped as they arrive, so a plugin printing a huge
        // line without a newline holds at most `line_bytes_max` bytes of host memory.
        let room = self.line_bytes_max.saturating_sub(self.partial[idx].len());
        self.partial[idx].extend_from_slice(&data[..data.len().min(room)]);
    }

    fn finish_line(&mut self, stream: LogStream) {
        let bytes = std::mem::take(&mut self.partial[stream as usize]);
        let now = Instant::now();
        if now.duration_since(self.window_start).as_secs() >= 1 {
            self.window_start = now;
            self.lines_in_window = 0;
        }
        if self.lines_in_window >= self.lines_per_sec_max {
            self.dropped_lines += 1;
            return;
        }
        self.lines_in_window += 1;
        self.lines.push(LogLine {
            stream,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }

    /// Ends unterminated lines, e.g. when the instance is torn down.
    pub(crate) fn flush(&mut self) {
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            if !self.partial[stream as usize].is_empty() {
                self.finish_line(stream);
            }
        }
    }
}

fn memory(caller: &mut Caller<'_, StoreState>) -> Option<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn write_bytes(caller: &mut Caller<'_, StoreState>, at: u32, bytes: &[u8]) -> i32 {
    let Some(mem) = memory(caller) else {
        return ERRNO_FAULT;
    };
    match mem.write(caller, at as usize, bytes) {
        Ok(()) => ERRNO_SUCCESS,
        Err(_) => ERRNO_FAULT,
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut caller: Caller<'_, StoreState>, fd: i32, iovs: u32, iovs_len: u32, nwritten: u32| {
            let stream = match fd {
                1 => LogStream::Stdout,
                2 => LogStream::Stderr,
                _ => return ERRNO_BADF,
            };
            let Some(mem) = memory(&mut caller) else {
                return ERRNO_FAULT;
            };
            let (data, state) = mem.data_and_store_mut(&mut caller);
            let mut total: u32 = 0;
            for i in 0..iovs_len as usize {
                let at = iovs as usize + i * 8;
                let (Some(ptr), Some(len)) = (read_u32(data, at), read_u32(data, at + 4)) else {
                    return ERRNO_FAULT;
                };
                let Some(chunk) = data.get(ptr as usize..ptr as usize + len as usize) else {
                    return ERRNO_FAULT;
                };
                state.logs.write(stream, chunk);
                total = total.saturating_add(len);
            }
            write_bytes(&mut caller, nwritten, &total.to_le_bytes())
        },
    )?;
    linker.func_wrap(MODULE, "fd_read", |_: i32, _: u32, _: u32, _: u32| {
        ERRNO_BADF
    })?;
    linker.func_wrap(MODULE, "fd_close", |_: i32| ERRNO_BADF)?;
    linker.func_wrap(MODULE, "fd_seek", |_: i32, _: i64, _: i32, _: u32| {
        ERRNO_BADF
    })?;
    linker.func_wrap(MODULE, "fd_fdstat_get", |_: i32, _: u32| ERRNO_BADF)?;
    // EBADF from fd_prestat_get tells the guest's libc there are no preopened directories.
    linker.func_wrap(MODULE, "fd_prestat_get", |_: i32, _: u32| ERRNO_BADF)?;
    linker.func_wrap(MODULE, "fd_prestat_dir_name", |_: i32, _: u32, _: u32| {
        ERRNO_BADF
    })?;
    for (get, sizes_get) in [
        ("environ_get", "environ_sizes_get"),
        ("args_get", "args_sizes_get"),
    ] {
        linker.func_wrap(MODULE, get, |_: u32, _: u32| ERRNO_SUCCESS)?;
        linker.func_wrap(
            MODULE,
            sizes_get,
            |mut caller: Caller<'_, StoreState>, count: u32, size: u32| {
                let e = write_bytes(&mut caller, count, &0u32.to_le_bytes());
                if e != ERRNO_SUCCESS {
                    return e;
                }
                write_bytes(&mut caller, size, &0u32.to_le_bytes())
            },
        )?;
    }
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut caller: Caller<'_, StoreState>, clock: i32, _precision: i64, out: u32| {
            let nanos: u64 = match clock {
                // realtime
                0 => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0),
                // monotonic, process and thread CPU time: all from one monotonic clock
                1..=3 => caller.data().started.elapsed().as_nanos() as u64,
                _ => return ERRNO_INVAL,
            };
            write_bytes(&mut caller, out, &nanos.to_le_bytes())
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_res_get",
        |mut caller: Caller<'_, StoreState>, _clock: i32, out: u32| {
            write_bytes(&mut caller, out, &1u64.to_le_bytes())
        },
    )?;
    linker.func_wrap(
        MODULE,
        "random_get",
        |mut caller: Caller<'_, StoreState>, buf: u32, len: u32| {
            // Not cryptographic: plugins use randomness for hashing and salting, and a
            // broker-side plugin has no business generating secrets.
            let mut bytes = Vec::with_capacity(len.min(1 << 20) as usize);
            let state = &mut caller.data_mut().random_state;
            while bytes.len() < len as usize {
                // xorshift64*
                *state ^= *state >> 12;
                *state ^= *state << 25;
                *state ^= *state >> 27;
                let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            bytes.truncate(len as usize);
            write_bytes(&mut caller, buf, &bytes)
        },
    )?;
    linker.func_wrap(MODULE, "sched_yield", || ERRNO_SUCCESS)?;
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |_: Caller<'_, StoreState>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!("plugin called exit({code})")))
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_capped_and_rate_limited() {
        let mut logs = LogCapture::new(5, 3);
        logs.write(LogStream::Stdout, b"hello world\nab");
        logs.write(LogStream::Stderr, b"err\n");
        logs.write(LogStream::Stdout, b"c\nd\ne\n");
        assert_eq!(
            logs.lines,
            vec![
                LogLine {
                    stream: LogStream::Stdout,
                    text: "hello".into()
                },
                LogLine {
                    stream: LogStream::Stderr,
                    text: "err".into()
                },
                LogLine {
                    stream: LogStream::Stdout,
                    text: "abc".into()
                },
            ]
        );
        assert_eq!(logs.dropped_lines, 2);
    }
}
