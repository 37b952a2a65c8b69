//! Host edge cases with hand-written WAT modules that speak ABI v1 directly.

use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_wasm_host::{
    BatchOutput, FailureKind, Host, HostConfig, InstantiateError, Limits, LoadError, LogStream,
};
use meridian_wire::batch::Record;

#[path = "fixtures/wat.rs"]
mod wat_fixtures;
use wat_fixtures::*;

fn host() -> Host {
    Host::new(HostConfig::default()).unwrap()
}

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).unwrap()
}

fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            offset: i as i64,
            timestamp: 1000 + i as i64,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("v{i}"))),
            headers: Vec::new(),
        })
        .collect()
}

fn keep_all(n: usize) -> BatchOutput {
    BatchOutput::Filter(vec![Ok(true); n])
}

#[test]
fn filter_runs_and_instance_is_reused() {
    let plugin = host().load(&wasm(&filter_wat(1, 0, ""))).unwrap();
    assert_eq!(plugin.kind(), meridian_wasm_host::PluginKind::Filter);
    assert_eq!(plugin.sha256().len(), 64);
    let mut instance = plugin.instantiate(&[], Limits::default()).unwrap();
    for n in [0, 1, 50] {
        assert_eq!(instance.run(&records(n), 0).unwrap(), keep_all(n));
    }
    assert_eq!(instance.n_failures(), 0);
}

#[test]
fn params_refused_by_the_plugin_fail_instantiation() {
    let plugin = host().load(&wasm(&filter_wat(1, 0, ""))).unwrap();
    let params = vec![("a".into(), "1".into()), ("b".into(), "2".into())];
    match plugin.instantiate(&params, Limits::default()) {
        Err(InstantiateError::Params(m)) => assert_eq!(m, "bad"),
        other => panic!("{:?}", other.err()),
    }
}

fn check_contained(prelude: &str, limits: Limits, expected: FailureKind) {
    let plugin = host().load(&wasm(&filter_wat(1, 0, prelude))).unwrap();
    let mut instance = plugin.instantiate(&[], limits).unwrap();
    assert_eq!(instance.run(&records(2), 0).unwrap(), keep_all(2));
    let started = Instant::now();
    let failure = instance.run(&records(3), 0).unwrap_err();
    assert_eq!(failure.kind, expected, "{failure}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The next batch gets a fresh instance and succeeds.
    assert_eq!(instance.run(&records(2), 0).unwrap(), keep_all(2));
    assert_eq!(instance.n_failures(), 1);
}

#[test]
fn trap_fails_only_its_batch() {
    check_contained(
        &when(MORE_THAN_2_RECORDS, TRAP),
        Limits::default(),
        FailureKind::Trap,
    );
}

#[test]
fn infinite_loop_hits_the_batch_deadline() {
    let limits = Limits {
        batch_time_max_ms: 50,
        ..Limits::default()
    };
    let started = Instant::now();
    check_contained(
        &when(MORE_THAN_2_RECORDS, LOOP_FOREVER),
        limits,
        FailureKind::Timeout,
    );
    // Compiling the module, two good batches and one that ran to its deadline: well
    // under a second alone; the bound is a liveness one, roomy for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn memory_bomb_hits_the_memory_cap() {
    let limits = Limits {
        memory_max_bytes: 4 << 20,
        ..Limits::default()
    };
    check_contained(
        &when(MORE_THAN_2_RECORDS, MEMORY_BOMB),
        limits,
        FailureKind::MemoryLimit,
    );
}

#[test]
fn initial_memory_over_the_cap_fails_instantiation() {
    let plugin = host().load(&wasm(&filter_wat(1, 0, ""))).unwrap();
    let limits = Limits {
        memory_max_bytes: 65536,
        ..Limits::default()
    };
    match plugin.instantiate(&[], limits) {
        Err(InstantiateError::Failed(f)) => assert_eq!(f.kind, FailureKind::MemoryLimit),
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn wrong_abi_is_refused() {
    let err = host().load(&wasm(&filter_wat(2, 0, ""))).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::WrongAbi {
                found: 2,
                expected: 1
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "module speaks plugin ABI version 2; this broker speaks version 1"
    );
}

#[test]
fn unknown_kind_is_refused() {
    let err = host().load(&wasm(&filter_wat(1, 9, ""))).unwrap_err();
    assert!(matches!(err, LoadError::UnknownKind(9)), "{err}");
}

#[test]
fn malformed_module_is_refused() {
    let err = host().load(b"\0asm\x01\0\0\0garbage").unwrap_err();
    assert!(matches!(err, LoadError::Malformed(_)), "{err}");
    let err = host().load(b"not wasm at all").unwrap_err();
    assert!(matches!(err, LoadError::Malformed(_)), "{err}");
}

#[test]
fn module_without_the_abi_exports_is_refused() {
    let err = host()
        .load(&wasm(
            r#"(module (memory (export "memory") 1) (func (export "run")))"#,
        ))
        .unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::MissingExport {
                name: "meridian_abi_version",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("not a Meridian plugin"));
}

#[test]
fn unknown_import_is_refused() {
    let wat = filter_wat(1, 0, "").replace(
        r#"(import "wasi_snapshot_preview1" "fd_write""#,
        r#"(import "env" "open_socket""#,
    );
    let err = host().load(&wasm(&wat)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "module imports `env::open_socket`, which the plugin host does not provide"
    );
}

#[test]
fn module_size_cap() {
    let host = Host::new(HostConfig {
        module_size_max_bytes: 100,
        ..HostConfig::default()
    })
    .unwrap();
    let err = host.load(&wasm(&filter_wat(1, 0, ""))).unwrap_err();
    assert!(matches!(err, LoadError::TooLarge { max: 100, .. }), "{err}");
}

#[test]
fn stdout_is_captured_with_a_rate_cap() {
    let host = Host::new(HostConfig {
        log_lines_per_sec_max: 3,
        ..HostConfig::default()
    })
    .unwrap();
    let plugin = host.load(&wasm(&filter_wat(1, 0, LOG_LINE))).unwrap();
    // The cap's one-second window starts with the instance.
    let started = std::time::Instant::now();
    let mut instance = plugin.instantiate(&[], Limits::default()).unwrap();
    for _ in 0..5 {
        instance.run(&records(1), 0).unwrap();
    }
    let within_one_window = started.elapsed() < std::time::Duration::from_secs(1);
    let (lines, dropped) = instance.take_logs();
    assert_eq!(lines[0].stream, LogStream::Stdout);
    assert_eq!(lines[0].text, "hello from wasm");
    assert_eq!(lines.len() + dropped as usize, 5);
    if within_one_window {
        assert_eq!((lines.len(), dropped), (3, 2));
    } else {
        // A machine slow enough to span two windows lets up to three more through.
        assert!(
            lines.len() >= 3 && dropped <= 2,
            "{} {dropped}",
            lines.len()
        );
    }
    assert_eq!(instance.take_logs(), (Vec::new(), 0));
}

#[test]
fn compiled_artifacts_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let config = HostConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..HostConfig::default()
    };
    let module = wasm(&filter_wat(1, 0, ""));
    let sha = host().load(&module).unwrap().sha256().to_string();
    let artifact = dir.path().join(format!("{sha}.cwasm"));

    let plugin = Host::new(config.clone()).unwrap().load(&module).unwrap();
    assert!(artifact.exists());
    drop(plugin);
    // A second host (as after a restart) loads the artifact and runs it.
    let plugin = Host::new(config.clone()).unwrap().load(&module).unwrap();
    let mut instance = plugin.instantiate(&[], Limits::default()).unwrap();
    assert_eq!(instance.run(&records(3), 0).unwrap(), keep_all(3));

    // A corrupted artifact is detected and replaced by a fresh compile.
    let mut bytes = std::fs::read(&artifact).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&artifact, &bytes).unwrap();
    let plugin = Host::new(config).unwrap().load(&module).unwrap();
    let mut instance = plugin.instantiate(&[], Limits::default()).unwrap();
    assert_eq!(instance.run(&records(3), 0).unwrap(), keep_all(3));
    assert_ne!(std::fs::read(&artifact).unwrap(), bytes);
}

#[test]
fn refused_modules_leave_no_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(HostConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..HostConfig::default()
    })
    .unwrap();
    // Compiles, then fails the export check: not a plugin, so nothing is kept.
    let loaded = host.load(&wasm(
        r#"(module (memory (export "memory") 1) (func (export "f")))"#,
    ));
    assert!(
        matches!(loaded, Err(LoadError::MissingExport { .. })),
        "{:?}",
        loaded.err()
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn instantiation_is_fast_once_compiled() {
    let plugin = host().load(&wasm(&filter_wat(1, 0, ""))).unwrap();
    // Warm up, then time many instantiations (a new partition's first batch). The
    // median, not the mean: one stall of a loaded machine (a second, say) would
    // push the mean of all 200 over the bound, while each takes tens of µs.
    drop(plugin.instantiate(&[], Limits::default()).unwrap());
    let mut times: Vec<Duration> = (0..200)
        .map(|_| {
            let started = Instant::now();
            drop(plugin.instantiate(&[], Limits::default()).unwrap());
            started.elapsed()
        })
        .collect();
    times.sort_unstable();
    let median = times[times.len() / 2];
    assert!(
        median < Duration::from_millis(5),
        "{median:?} per instantiation (median)"
    );
}
