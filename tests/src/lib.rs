//! Integration tests live in `it/`. This library holds what tests of several crates
//! share (it has no dependencies, so any crate of the workspace may dev-depend on it).

use std::process::Command;

/// The README's Rust examples (the SDK's tour and the plugin), compiled as this
/// crate's doctests so that they stay true to the APIs they show; its other blocks
/// (shell, TOML, Python) are not Rust and rustdoc leaves them be.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;

/// Where a test that must mount a file system (a small tmpfs, to fill a disk) runs.
#[derive(Debug)]
pub enum MountPrivilege {
    /// This process may mount (root, or root of its own user namespace): run here.
    Here,
    /// The test ran again, alone, in a new user and mount namespace, and passed there.
    RanInNamespace,
    /// Neither is possible; why (the test prints it and returns).
    Unavailable(String),
}

/// Set in the copy of a test binary [`mount_privilege`] starts in a namespace.
const IN_NAMESPACE: &str = "MOUNT_TESTS_IN_USER_NAMESPACE";

/// For a test that mounts a tmpfs. As root the test runs here. Otherwise the test
/// binary runs this one test again under `unshare --user --map-root-user --mount`,
/// where it is root of namespaces of its own (mounts included, which vanish with
/// it), when the kernel lets unprivileged users make user namespaces; this returns
/// once that run passed, and panics with its output if it failed.
///
/// `module` is the test's `module_path!()` and `name` its function's name.
pub fn mount_privilege(module: &str, name: &str) -> MountPrivilege {
    if is_root() {
        return MountPrivilege::Here;
    }
    if std::env::var_os(IN_NAMESPACE).is_some() {
        return MountPrivilege::Unavailable("not root inside the user namespace either".into());
    }
    // The harness names tests without their crate: `it::bad_input` → `bad_input::name`.
    let test = match module.split_once("::") {
        Some((_, path)) => format!("{path}::{name}"),
        None => name.to_string(),
    };
    let exe = std::env::current_exe().expect("the test binary's path");
    let run = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "--"])
        .arg(exe)
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_NAMESPACE, "1")
        .output();
    let output = match run {
        Ok(output) => output,
        Err(e) => {
            return MountPrivilege::Unavailable(format!(
                "not root, and cannot run `unshare` for a user namespace: {e}"
            ))
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // A failed Rust test exits with 101; `unshare` refused (user namespaces off) with 1.
    match output.status.code() {
        Some(0) => {}
        Some(101) => panic!("{test}, run in a user namespace, failed:\n{stdout}\n{stderr}"),
        _ => {
            return MountPrivilege::Unavailable(format!(
                "not root, and no user namespace: {}",
                stderr.trim()
            ))
        }
    }
    if let Some(line) = stderr.lines().find(|l| l.starts_with(SKIP)) {
        return MountPrivilege::Unavailable(format!("in a user namespace: {line}"));
    }
    assert!(
        stdout.contains("1 passed"),
        "{test} did not run in the user namespace:\n{stdout}\n{stderr}"
    );
    MountPrivilege::RanInNamespace
}

/// [`mount_privilege`] as a mounting test's first line: `true` when the test goes on
/// here; `false` when it already ran (and passed) in a namespace, or cannot run,
/// which it then says on stderr.
pub fn mounts_here(module: &str, name: &str) -> bool {
    match mount_privilege(module, name) {
        MountPrivilege::Here => true,
        MountPrivilege::RanInNamespace => false,
        MountPrivilege::Unavailable(why) => {
            eprintln!("{SKIP} {name}: mounting a tmpfs needs root: {why}");
            false
        }
    }
}

/// How a skipped test's line starts.
pub const SKIP: &str = "skipping";

/// Whether this process runs as root (of the machine or of its user namespace).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
