//! WebAssembly plugins: the first-party modules built from `plugins/` for
//! wasm32-wasip1, run through `meridian plugin test` (the real host), and the
//! `plugin new` → `plugin build` → `plugin test` path a plugin author takes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::meridian_bin;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// Builds `plugins/` for wasm32-wasip1 once per test run (a no-op when up to date) and
/// returns the path of one module, e.g. `json_filter`.
pub fn plugin_module(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let plugins = repo_root().join("plugins");
        let target_dir = plugins.join("target");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--target", "wasm32-wasip1", "--target-dir"])
            .arg(&target_dir)
            .current_dir(&plugins)
            .status()
            .expect("run cargo build in plugins/");
        assert!(
            status.success(),
            "building plugins/ for wasm32-wasip1 failed (is the target installed? `rustup target add wasm32-wasip1`)"
        );
        target_dir.join("wasm32-wasip1/release")
    });
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// `meridian <args>` with no broker; returns (status ok, stdout, stderr).
fn meridian(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let out = Command::new(meridian_bin())
        .args(args)
        .current_dir(cwd)
        // Scaffolds share one target dir, so the SDK and its macros build once.
        .env(
            "CARGO_TARGET_DIR",
            repo_root().join("plugins/target/scaffolds"),
        )
        .output()
        .expect("run meridian");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `meridian plugin test MODULE --input FILE ARGS…` over `input` lines; returns
/// the output lines as JSON.
fn plugin_test(
    module: &str,
    input: &[&str],
    args: &[&str],
) -> Result<Vec<serde_json::Value>, String> {
    let dir = tempfile::tempdir().unwrap();
    let input_path = dir.path().join("in.jsonl");
    std::fs::write(&input_path, input.join("\n")).unwrap();
    let module = plugin_module(module);
    let mut all = vec![
        "plugin",
        "test",
        module.to_str().unwrap(),
        "--input",
        input_path.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = meridian(&all, dir.path());
    if !ok {
        return Err(stderr);
    }
    Ok(stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("output line is JSON"))
        .collect())
}

fn values(out: &[serde_json::Value]) -> Vec<String> {
    out.iter()
        .map(|v| v["value"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn json_filter_module_keeps_matching_records() {
    let input = [
        r#"{"value": "{\"user\":{\"age\":17},\"country\":\"FR\"}"}"#,
        r#"{"value": "{\"user\":{\"age\":30},\"country\":\"FR\"}"}"#,
        r#"{"value": "{\"user\":{\"age\":40},\"country\":\"US\"}"}"#,
        r#"{"value": "not json"}"#,
    ];
    let out = plugin_test(
        "json_filter",
        &input,
        &[
            "--param",
            "where=user.age>=18;country!=US",
            "--batch-size",
            "2",
        ],
    )
    .unwrap();
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0]["offset"], 1);
    assert_eq!(out[1]["offset"], 3);
    assert!(out[1]["error"]
        .as_str()
        .unwrap()
        .starts_with("value is not JSON"));
}

#[test]
fn module_refusing_its_params_fails_the_command() {
    let err = plugin_test("json_filter", &[r#"{"value":"{}"}"#], &[]).unwrap_err();
    assert!(
        err.contains("plugin refused its parameters: missing parameter `where`"),
        "{err}"
    );
}

#[test]
fn pii_redactor_module_masks_values() {
    let out = plugin_test(
        "pii_redactor",
        &[
            r#"{"key": "k1", "value": "{\"name\":\"Ann\",\"contact\":\"ann@example.com\",\"card\":\"4111-1111-1111-1111\"}"}"#,
        ],
        &["--param", "paths=name"],
    )
    .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["key"], "k1");
    let value: serde_json::Value = serde_json::from_str(out[0]["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"name": "[REDACTED]", "contact": "[EMAIL]", "card": "[CARD]"})
    );
}

#[test]
fn partitioner_modules_route_records() {
    let input = [
        r#"{"value": "{\"region\":\"eu\"}"}"#,
        r#"{"value": "{\"region\":\"us\"}"}"#,
        r#"{"value": "{\"region\":\"apac\"}"}"#,
    ];
    let out = plugin_test(
        "region_router",
        &input,
        &[
            "--partitions",
            "3",
            "--param",
            "field=region",
            "--param",
            "map=eu=0,us=1,apac=2",
        ],
    )
    .unwrap();
    let partitions: Vec<i64> = out
        .iter()
        .map(|v| v["partition"].as_i64().unwrap())
        .collect();
    assert_eq!(partitions, [0, 1, 2]);

    // A hot key is spread over partitions; a cold key stays on one.
    let mut input = vec![r#"{"key": "hot", "value": "x"}"#; 8];
    input.extend([r#"{"key": "cold", "value": "x"}"#; 8]);
    let out = plugin_test(
        "hot_key_salter",
        &input,
        &["--partitions", "4", "--param", "hot_keys=hot"],
    )
    .unwrap();
    let of_key = |key: &str| -> std::collections::BTreeSet<i64> {
        out.iter()
            .filter(|v| v["key"] == key)
            .map(|v| v["partition"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(of_key("hot").len(), 4);
    assert_eq!(of_key("cold").len(), 1);
}

#[test]
fn plugin_test_refuses_a_module_that_is_not_a_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "{}\n").unwrap();
    let (ok, _, stderr) = meridian(
        &["plugin", "test", "bogus.wasm", "--input", "in.jsonl"],
        dir.path(),
    );
    assert!(!ok);
    assert!(stderr.contains("does not export `memory`"), "{stderr}");
}

#[test]
fn scaffolded_plugins_build_test_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    std::fs::write(cwd.join("in.txt"), "a needle\nhay\n").unwrap();
    for kind in ["filter", "transform", "partitioner"] {
        let name = format!("my-{kind}");
        let (ok, _, stderr) = meridian(&["plugin", "new", &name, "--kind", kind], cwd);
        assert!(ok, "{stderr}");
        // The scaffold's own unit test passes natively.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(&cargo)
            .args(["test", "--quiet"])
            .env(
                "CARGO_TARGET_DIR",
                repo_root().join("plugins/target/scaffolds"),
            )
            .current_dir(cwd.join(&name))
            .status()
            .unwrap();
        assert!(status.success(), "cargo test of the {kind} scaffold");
        let (ok, stdout, stderr) = meridian(&["plugin", "build", &name], cwd);
        assert!(ok, "{stderr}");
        let module = stdout.lines().last().unwrap().to_string();
        assert!(module.ends_with(&format!("my_{kind}.wasm")), "{module}");
        let (ok, stdout, stderr) = meridian(
            &[
                "plugin",
                "test",
                &module,
                "--input",
                "in.txt",
                "--values",
                "--param",
                "contains=needle",
                "--partitions",
                "3",
            ],
            cwd,
        );
        assert!(ok, "{stderr}");
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        match kind {
            "filter" => assert_eq!(values(&lines), ["a needle"]),
            "transform" => assert_eq!(values(&lines), ["A NEEDLE", "HAY"]),
            _ => {
                let p: Vec<i64> = lines
                    .iter()
                    .map(|v| v["partition"].as_i64().unwrap())
                    .collect();
                assert_eq!(p, [8 % 3, 3 % 3]);
            }
        }
    }
}
