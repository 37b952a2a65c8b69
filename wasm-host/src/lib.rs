//! Runs Meridian's WebAssembly plugins (filters, transforms, partitioners) with wasmtime.
//!
//! - One [`Host`] per process owns the wasmtime engine and a ticker thread that advances
//!   its epoch while guest code runs (and sleeps otherwise); a call that outlives its
//!   deadline traps at the next epoch check.
//! - [`Host::load`] validates a module (size cap, imports, exports, ABI version, kind),
//!   compiles it once (or loads the compiled artifact from the disk cache) and prepares
//!   its imports (`InstancePre`), giving a [`Plugin`].
//! - [`Plugin::instantiate`] makes an [`Instance`] with parameters and limits; the broker
//!   keeps one per (plugin, partition) and reuses it across batches, so plugin state
//!   lives between batches (and is lost on restart or after a failure).
//! - [`Instance::run`] makes one guest call per batch (see [`abi`]). A trap, a timeout, a
//!   memory-cap hit or malformed output fails that batch only; the instance is dropped
//!   and a fresh one is made for the next batch.
//!
//! No wasmtime type appears in this crate's public API, and it runs no async runtime:
//! calls block the calling thread for at most the batch deadline.

pub mod abi;
mod cache;
mod wasi;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meridian_wire::batch::Record;
use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, ExternType, InstancePre, Linker, Module, ResourceLimiter, Store, Trap,
    TypedFunc, ValType,
};

pub use abi::{BatchOutput, PluginKind, ABI_VERSION};
pub use wasi::{LogLine, LogStream};

/// Process-wide settings of the plugin host.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Largest module accepted by [`Host::load`].
    pub module_size_max_bytes: usize,
    /// Where compiled artifacts are cached (`<sha256>.cwasm`); `None` compiles every load.
    pub cache_dir: Option<PathBuf>,
    /// Epoch tick: the granularity of batch deadlines.
    pub epoch_tick_ms: u64,
    /// Plugin output lines are cut at this many bytes.
    pub log_line_bytes_max: usize,
    /// Lines per second kept per instance; the rest are counted as dropped.
    pub log_lines_per_sec_max: u32,
    /// Most records one transform call may produce from one batch.
    pub transform_records_max: usize,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            module_size_max_bytes: 16 << 20,
            cache_dir: None,
            epoch_tick_ms: 5,
            log_line_bytes_max: 1024,
            log_lines_per_sec_max: 100,
            transform_records_max: 1_000_000,
        }
    }
}

/// Limits of one attachment, enforced per instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time one batch call may take (epoch deadline).
    pub batch_time_max_ms: u64,
    /// Largest linear memory the instance may grow to.
    pub memory_max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            batch_time_max_ms: 200,
            memory_max_bytes: 64 << 20,
        }
    }
}

/// Why a module was refused by [`Host::load`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("module is {size} bytes, over the {max}-byte cap")]
    TooLarge { size: usize, max: usize },
    #[error("not a valid WebAssembly module: {0}")]
    Malformed(String),
    #[error("module imports `{module}::{name}`, which the plugin host does not provide")]
    UnknownImport { module: String, name: String },
    #[error("module does not export `{name}` as {expected}: not a Meridian plugin (build it with the meridian-plugin SDK)")]
    MissingExport {
        name: &'static str,
        expected: &'static str,
    },
    #[error("module speaks plugin ABI version {found}; this broker speaks version {expected}")]
    WrongAbi { found: i32, expected: i32 },
    #[error("module reports unknown plugin kind {0}")]
    UnknownKind(i32),
    #[error("module failed while starting: {0}")]
    Start(String),
}

/// Why [`Plugin::instantiate`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InstantiateError {
    #[error("plugin refused its parameters: {0}")]
    Params(String),
    #[error("plugin failed to start: {0}")]
    Failed(BatchFailure),
}

/// What went wrong with a whole batch call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The guest trapped (panic, unreachable, out-of-bounds access, exit).
    Trap,
    /// The call ran past the attachment's `batch_time_max_ms`.
    Timeout,
    /// The guest tried to grow memory past the attachment's `memory_max_bytes`.
    MemoryLimit,
    /// The guest returned output that does not follow the ABI, or a call-level error.
    BadOutput,
}

/// A failed batch: the instance was torn down and the next batch gets a fresh one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", match .kind {
    FailureKind::Trap => "trap",
    FailureKind::Timeout => "timeout",
    FailureKind::MemoryLimit => "memory limit",
    FailureKind::BadOutput => "bad output",
})]
pub struct BatchFailure {
    pub kind: FailureKind,
    pub message: String,
}

/// Creating the host failed (engine configuration or cache directory).
#[derive(Debug, thiserror::Error)]
#[error("plugin host: {0}")]
pub struct HostError(String);

/// Per-store state: the memory limiter, captured logs, and the WASI shim's clock and PRNG.
pub(crate) struct StoreState {
    limiter: MemoryLimiter,
    pub(crate) logs: wasi::LogCapture,
    pub(crate) started: Instant,
    pub(crate) random_state: u64,
}

struct MemoryLimiter {
    memory_max_bytes: u64,
    exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_max_bytes {
            self.exceeded = true;
            return Err(wasmtime::Error::msg(format!(
                "memory would grow to {desired} bytes, over the {}-byte cap",
                self.memory_max_bytes
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        1
    }
    fn tables(&self) -> usize {
        4
    }
    fn memories(&self) -> usize {
        1
    }
}

struct HostInner {
    engine: Engine,
    linker: Linker<StoreState>,
    config: HostConfig,
    ticker: Arc<Ticker>,
    ticker_thread: Option<JoinHandle<()>>,
}

impl Drop for HostInner {
    fn drop(&mut self) {
        self.ticker.lock().stop = true;
        self.ticker.wake.notify_all();
        if let Some(t) = self.ticker_thread.take() {
            let _ = t.join();
        }
    }
}

/// Advances the engine's epoch, the clock of every call's deadline, every tick while
/// some guest code runs, and sleeps while none does, so that a broker without
/// plugin calls is not woken 200 times a second. A deadline is set relative to the
/// epoch when its call starts, so a paused clock changes no deadline.
#[derive(Default)]
struct Ticker {
    state: Mutex<TickerState>,
    wake: Condvar,
}

#[derive(Default)]
struct TickerState {
    /// Guest calls under way.
    running: usize,
    stop: bool,
    /// Ticks so far (for tests).
    ticks: u64,
}

impl Ticker {
    fn lock(&self) -> MutexGuard<'_, TickerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, engine: &Engine, tick: Duration) {
        let mut state = self.lock();
        loop {
            while state.running == 0 && !state.stop {
                state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.stop {
                return;
            }
            drop(state);
            std::thread::sleep(tick);
            engine.increment_epoch();
            state = self.lock();
            state.ticks += 1;
        }
    }

    /// Keeps the clock going until the returned guard is dropped.
    fn running(&self) -> Running<'_> {
        let mut state = self.lock();
        state.running += 1;
        if state.running == 1 {
            self.wake.notify_one();
        }
        Running(self)
    }
}

/// A guest call under way (see [`Ticker::running`]).
struct Running<'a>(&'a Ticker);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.lock().running -= 1;
    }
}

/// The plugin runtime of a process. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

impl Host {
    pub fn new(config: HostConfig) -> Result<Host, HostError> {
        let mut wasm_config = Config::new();
        wasm_config.epoch_interruption(true);
        // Failure messages go to producers and logs: the trap itself, not a backtrace.
        wasm_config.wasm_backtrace(false);
        wasm_config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&wasm_config).map_err(|e| HostError(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasi::add_to_linker(&mut linker).map_err(|e| HostError(e.to_string()))?;
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| HostError(format!("cache dir {}: {e}", dir.display())))?;
        }
        let ticker = Arc::new(Ticker::default());
        let ticker_thread = {
            let engine = engine.clone();
            let ticker = ticker.clone();
            let tick = Duration::from_millis(config.epoch_tick_ms.max(1));
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || ticker.run(&engine, tick))
                .map_err(|e| HostError(format!("epoch ticker thread: {e}")))?
        };
        Ok(Host {
            inner: Arc::new(HostInner {
                engine,
                linker,
                config,
                ticker,
                ticker_thread: Some(ticker_thread),
            }),
        })
    }

    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// Validates and compiles a module (or loads it from the artifact cache).
    pub fn load(&self, wasm: &[u8]) -> Result<Plugin, LoadError> {
        let config = &self.inner.config;
        if wasm.len() > config.module_size_max_bytes {
            return Err(LoadError::TooLarge {
                size: wasm.len(),
                max: config.module_size_max_bytes,
            });
        }
        let sha256 = hex(&Sha256::digest(wasm));
        let cached = config
            .cache_dir
            .as_deref()
            .and_then(|dir| cache::load(&self.inner.engine, dir, &sha256));
        let fresh = cached.is_none();
        let module = match cached {
            Some(module) => module,
            None => Module::new(&self.inner.engine, wasm)
                .map_err(|e| LoadError::Malformed(format!("{e:#}")))?,
        };
        check_imports(&module)?;
        check_exports(&module)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Malformed(format!("{e:#}")))?;
        // Instantiate once with default limits to ask the module its ABI version and kind.
        let mut live = new_live(&self.inner, &pre, Limits::default())
            .map_err(|f| LoadError::Start(f.message))?;
        let call = |live: &mut Live, name: &str| -> Result<i32, LoadError> {
            let f = live
                .instance
                .get_typed_func::<(), i32>(&mut live.store, name)
                .map_err(|e| LoadError::Start(e.to_string()))?;
            live.store
                .set_epoch_deadline(deadline_ticks(&Limits::default(), config));
            let _running = self.inner.ticker.running();
            f.call(&mut live.store, ())
                .map_err(|e| LoadError::Start(format!("{name}: {e:#}")))
        };
        let found = call(&mut live, "meridian_abi_version")?;
        if found != ABI_VERSION {
            return Err(LoadError::WrongAbi {
                found,
                expected: ABI_VERSION,
            });
        }
        let code = call(&mut live, "meridian_kind")?;
        let kind = PluginKind::from_abi(code).ok_or(LoadError::UnknownKind(code))?;
        drop(live);
        // Only plugins are cached: a module refused above leaves nothing behind.
        if let (true, Some(dir)) = (fresh, &config.cache_dir) {
            cache::store(dir, &sha256, &module);
        }
        Ok(Plugin {
            inner: Arc::new(PluginInner {
                host: self.inner.clone(),
                pre,
                sha256,
                size_bytes: wasm.len(),
                kind,
            }),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_imports(module: &Module) -> Result<(), LoadError> {
    for import in module.imports() {
        if import.module() != wasi::MODULE || !wasi::PROVIDED.contains(&import.name()) {
            return Err(LoadError::UnknownImport {
                module: import.module().to_string(),
                name: import.name().to_string(),
            });
        }
    }
    Ok(())
}

fn check_exports(module: &Module) -> Result<(), LoadError> {
    use ValType::{I32, I64};
    let funcs: [(&'static str, &[ValType], ValType, &'static str); 5] = [
        ("meridian_abi_version", &[], I32, "a function () -> i32"),
        ("meridian_kind", &[], I32, "a function () -> i32"),
        ("meridian_alloc", &[I32], I32, "a function (i32) -> i32"),
        (
            "meridian_init",
            &[I32, I32],
            I64,
            "a function (i32, i32) -> i64",
        ),
        (
            "meridian_process",
            &[I32, I32],
            I64,
            "a function (i32, i32) -> i64",
        ),
    ];
    match module.get_export("memory") {
        Some(ExternType::Memory(_)) => {}
        _ => {
            return Err(LoadError::MissingExport {
                name: "memory",
                expected: "a memory",
            })
        }
    }
    for (name, params, result, expected) in funcs {
        let ok = match module.get_export(name) {
            Some(ExternType::Func(ty)) => {
                let p: Vec<ValType> = ty.params().collect();
                let r: Vec<ValType> = ty.results().collect();
                p.len() == params.len()
                    && p.iter().zip(params).all(|(a, b)| a.matches(b))
                    && r.len() == 1
                    && r[0].matches(&result)
            }
            _ => false,
        };
        if !ok {
            return Err(LoadError::MissingExport { name, expected });
        }
    }
    Ok(())
}

fn deadline_ticks(limits: &Limits, config: &HostConfig) -> u64 {
    // The ticker may advance right after the deadline is set, so one extra tick makes
    // the allowance at least `batch_time_max_ms`.
    limits
        .batch_time_max_ms
        .div_ceil(config.epoch_tick_ms.max(1))
        .max(1)
        + 1
}

struct PluginInner {
    host: Arc<HostInner>,
    pre: InstancePre<StoreState>,
    sha256: String,
    size_bytes: usize,
    kind: PluginKind,
}

/// A validated, compiled module, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("sha256", &self.inner.sha256)
            .field("kind", &self.inner.kind)
            .finish()
    }
}

/// A live wasmtime instance with its store and the two hot exports.
struct Live {
    store: Store<StoreState>,
    instance: wasmtime::Instance,
    memory: wasmtime::Memory,
    alloc: TypedFunc<i32, i32>,
    process: TypedFunc<(i32, i32), i64>,
    init: TypedFunc<(i32, i32), i64>,
}

impl Plugin {
    /// Hex sha256 of the module bytes: its identity in the content-addressed store.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }

    pub fn kind(&self) -> PluginKind {
        self.inner.kind
    }

    pub fn size_bytes(&self) -> usize {
        self.inner.size_bytes
    }

    /// Makes an instance and hands it its parameters (the plugin may refuse them).
    pub fn instantiate(
        &self,
        params: &[(String, String)],
        limits: Limits,
    ) -> Result<Instance, InstantiateError> {
        let mut instance = Instance {
            plugin: self.clone(),
            params: params.to_vec(),
            limits,
            live: None,
            logs: Vec::new(),
            dropped_log_lines: 0,
            input: Vec::new(),
            n_failures: 0,
        };
        instance.ensure_live()?;
        Ok(instance)
    }

    fn new_live(&self, limits: Limits) -> Result<Live, BatchFailure> {
        new_live(&self.inner.host, &self.inner.pre, limits)
    }
}

/// A fresh store and instance with `limits`, its hot exports looked up.
fn new_live(
    host: &HostInner,
    pre: &InstancePre<StoreState>,
    limits: Limits,
) -> Result<Live, BatchFailure> {
    let state = StoreState {
        limiter: MemoryLimiter {
            memory_max_bytes: limits.memory_max_bytes,
            exceeded: false,
        },
        logs: wasi::LogCapture::new(
            host.config.log_line_bytes_max,
            host.config.log_lines_per_sec_max,
        ),
        started: Instant::now(),
        random_state: seed(),
    };
    let mut store = Store::new(&host.engine, state);
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(deadline_ticks(&limits, &host.config));
    let running = host.ticker.running();
    let instance = pre
        .instantiate(&mut store)
        .map_err(|e| classify(&store, e))?;
    drop(running);
    let bad = |e: wasmtime::Error| BatchFailure {
        kind: FailureKind::BadOutput,
        message: e.to_string(),
    };
    let memory = instance
        .get_memory(&mut store, "memory")
        .ok_or_else(|| BatchFailure {
            kind: FailureKind::BadOutput,
            message: "no memory export".into(),
        })?;
    let alloc = instance
        .get_typed_func(&mut store, "meridian_alloc")
        .map_err(bad)?;
    let process = instance
        .get_typed_func(&mut store, "meridian_process")
        .map_err(bad)?;
    let init = instance
        .get_typed_func(&mut store, "meridian_init")
        .map_err(bad)?;
    Ok(Live {
        store,
        instance,
        memory,
        alloc,
        process,
        init,
    })
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // xorshift must not start at zero
    nanos | 1
}

fn classify(store: &Store<StoreState>, error: wasmtime::Error) -> BatchFailure {
    let message = format!("{error:#}");
    let kind = if store.data().limiter.exceeded {
        FailureKind::MemoryLimit
    } else if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        FailureKind::Timeout
    } else {
        FailureKind::Trap
    };
    BatchFailure { kind, message }
}

/// An instance of a plugin with its parameters and limits, reused across batches.
pub struct Instance {
    plugin: Plugin,
    params: Vec<(String, String)>,
    limits: Limits,
    live: Option<Live>,
    logs: Vec<LogLine>,
    dropped_log_lines: u64,
    input: Vec<u8>,
    n_failures: u64,
}

impl Instance {
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Batches that failed (and so instances recreated) since this instance was made.
    pub fn n_failures(&self) -> u64 {
        self.n_failures
    }

    /// Takes the lines the plugin printed so far, and how many were dropped by the caps.
    pub fn take_logs(&mut self) -> (Vec<LogLine>, u64) {
        if let Some(live) = &mut self.live {
            self.logs.append(&mut live.store.data_mut().logs.lines);
            self.dropped_log_lines += std::mem::take(&mut live.store.data_mut().logs.dropped_lines);
        }
        (
            std::mem::take(&mut self.logs),
            std::mem::take(&mut self.dropped_log_lines),
        )
    }

    fn ensure_live(&mut self) -> Result<(), InstantiateError> {
        if self.live.is_some() {
            return Ok(());
        }
        let mut live = self
            .plugin
            .new_live(self.limits)
            .map_err(InstantiateError::Failed)?;
        abi::encode_params(&self.params, &mut self.input);
        let area = match self.call(&mut live, true) {
            Ok(area) => area,
            Err(failure) => {
                self.retire(live);
                return Err(InstantiateError::Failed(failure));
            }
        };
        match abi::parse_status(&area) {
            abi::Status::Ok(_) => {}
            abi::Status::GuestError(message) => {
                self.retire(live);
                return Err(InstantiateError::Params(message));
            }
            abi::Status::Malformed(message) => {
                self.retire(live);
                return Err(InstantiateError::Failed(BatchFailure {
                    kind: FailureKind::BadOutput,
                    message: format!("meridian_init: {message}"),
                }));
            }
        }
        self.live = Some(live);
        Ok(())
    }

    /// Keeps the logs of an instance being dropped.
    fn retire(&mut self, mut live: Live) {
        let logs = &mut live.store.data_mut().logs;
        logs.flush();
        self.logs.append(&mut logs.lines);
        self.dropped_log_lines += logs.dropped_lines;
    }

    /// Copies `self.input` into the guest and calls init or process; returns a copy of the
    /// output area.
    fn call(&self, live: &mut Live, init: bool) -> Result<Vec<u8>, BatchFailure> {
        let host = &self.plugin.inner.host;
        live.store
            .set_epoch_deadline(deadline_ticks(&self.limits, &host.config));
        let _running = host.ticker.running();
        let len = i32::try_from(self.input.len()).map_err(|_| BatchFailure {
            kind: FailureKind::BadOutput,
            message: format!("batch of {} bytes is too large", self.input.len()),
        })?;
        let ptr = live
            .alloc
            .call(&mut live.store, len)
            .map_err(|e| classify(&live.store, e))?;
        live.memory
            .write(&mut live.store, ptr as u32 as usize, &self.input)
            .map_err(|_| BatchFailure {
                kind: FailureKind::BadOutput,
                message: format!("meridian_alloc returned {ptr}, outside memory"),
            })?;
        let f = if init { &live.init } else { &live.process };
        let packed = f
            .call(&mut live.store, (ptr, len))
            .map_err(|e| classify(&live.store, e))?;
        let (out_ptr, out_len) = ((packed as u64 >> 32) as usize, packed as u32 as usize);
        live.memory
            .data(&live.store)
            .get(out_ptr..out_ptr.saturating_add(out_len))
            .map(|s| s.to_vec())
            .ok_or_else(|| BatchFailure {
                kind: FailureKind::BadOutput,
                message: format!("output area {out_ptr}+{out_len} is outside memory"),
            })
    }

    /// Runs the plugin over one batch. `n_partitions` matters to partitioners only.
    ///
    /// On failure the instance is dropped (its logs kept) and the next call makes a new
    /// one with the same parameters.
    pub fn run(
        &mut self,
        records: &[Record],
        n_partitions: u32,
    ) -> Result<BatchOutput, BatchFailure> {
        if let Err(e) = self.ensure_live() {
            self.n_failures += 1;
            return Err(match e {
                InstantiateError::Failed(f) => f,
                InstantiateError::Params(message) => BatchFailure {
                    kind: FailureKind::BadOutput,
                    message,
                },
            });
        }
        let Some(mut live) = self.live.take() else {
            unreachable!("ensure_live succeeded");
        };
        abi::encode_batch(records, n_partitions, &mut self.input);
        let result = self.call(&mut live, false).and_then(|area| {
            let body = match abi::parse_status(&area) {
                abi::Status::Ok(body) => body,
                abi::Status::GuestError(m) | abi::Status::Malformed(m) => {
                    return Err(BatchFailure {
                        kind: FailureKind::BadOutput,
                        message: m,
                    })
                }
            };
            abi::decode_output(
                self.plugin.kind(),
                body,
                records.len(),
                n_partitions,
                self.plugin.inner.host.config.transform_records_max,
            )
            .map_err(|m| BatchFailure {
                kind: FailureKind::BadOutput,
                message: m,
            })
        });
        match result {
            Ok(out) => {
                self.live = Some(live);
                Ok(out)
            }
            Err(failure) => {
                self.n_failures += 1;
                self.retire(live);
                Err(failure)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_clock_sleeps_while_no_guest_code_runs() {
        let host = Host::new(HostConfig {
            epoch_tick_ms: 1,
            ..HostConfig::default()
        })
        .unwrap();
        let ticker = &host.inner.ticker;
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ticker.lock().ticks, 0, "ticked with no call under way");
        {
            let _running = ticker.running();
            let deadline = Instant::now() + Duration::from_secs(30);
            while ticker.lock().ticks < 3 {
                assert!(Instant::now() < deadline, "the clock did not start");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // At most the tick under way when the call ended follows it.
        let after = ticker.lock().ticks;
        std::thread::sleep(Duration::from_millis(50));
        assert!(ticker.lock().ticks <= after + 1);
    }
}
