//! WebAssembly plugins: the first-party modules built from `plugins/` for
//! wasm32-wasip1, run through `meridian plugin test` (the real host), and the
//! `plugin new` → `plugin build` → `plugin test` path a plugin author takes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::meridian_bin;

pub(crate) fn repo_root() -> PathBuf {
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
fn schema_validator_module_reports_violations() {
    let schema =
        r#"schema={"type":"object","required":["id"],"properties":{"id":{"type":"integer"}}}"#;
    let out = plugin_test(
        "schema_validator",
        &[
            r#"{"value": "{\"id\":1}"}"#,
            r#"{"value": "{\"id\":\"x\"}"}"#,
        ],
        &["--param", schema],
    )
    .unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0]["offset"], 0);
    assert_eq!(
        out[1]["error"],
        "schema violation: `$.id` is not of type \"integer\""
    );
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

// ---- In the broker ----------------------------------------------------------------

#[path = "../../wasm-host/tests/fixtures/wat.rs"]
pub(crate) mod wat_fixtures;

use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_client::{
    Attachment, Client, ConsumerConfig, ErrorCode, NewTopic, Offset, ProducerConfig, ProducerRecord,
};

use crate::harness::TestBroker;

/// A broker whose plugins may take 5 s per batch (the default is 200 ms): on a loaded
/// 2-core machine a stalled test process must not turn a filter call into a plugin
/// timeout. Tests of the deadline itself set their own.
fn plugin_broker() -> TestBroker {
    TestBroker::start(&["plugins.batch_time_max_ms=5000"])
}

pub fn attachment(plugin: &str, params: &[(&str, &str)], on_failure: &str) -> Attachment {
    Attachment {
        plugin: plugin.into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        batch_time_max_ms: 0,
        memory_max_bytes: 0,
        on_failure: on_failure.into(),
    }
}

/// Asserts that attaching a partitioner failed because the topic has `existing`.
pub fn refused_as_second_partitioner(attached: meridian_client::Result<()>, existing: &str) {
    let err = attached.expect_err("a topic takes one partitioner");
    assert_eq!(err.code(), Some(ErrorCode::InvalidConfig), "{err}");
    let named = format!("already has partitioner `{existing}`");
    assert!(err.to_string().contains(&named), "{err}");
}

async fn deploy(client: &Client, name: &str, module: &str) -> meridian_client::PluginInfo {
    let wasm = std::fs::read(plugin_module(module)).unwrap();
    client
        .admin()
        .deploy_plugin(name, "1.0.0", Bytes::from(wasm))
        .await
        .unwrap()
}

async fn deploy_wat(client: &Client, name: &str, wat: &str) -> meridian_client::Result<()> {
    let wasm = wat::parse_str(wat).unwrap();
    client
        .admin()
        .deploy_plugin(name, "test", Bytes::from(wasm))
        .await
        .map(|_| ())
}

async fn create(client: &Client, topic: &str, partitions: u32) {
    client
        .admin()
        .create_topic(NewTopic::new(topic, partitions))
        .await
        .unwrap();
}

/// Sends each value as one request (one batch) and waits for it; returns each outcome.
async fn send_each(
    client: &Client,
    topic: &str,
    values: &[&str],
) -> Vec<meridian_client::Result<()>> {
    let producer = client.producer(ProducerConfig {
        linger: Duration::ZERO,
        retries: 0,
        ..ProducerConfig::default()
    });
    let mut out = Vec::new();
    for v in values {
        let record = ProducerRecord::new(topic, Bytes::from(v.to_string())).partition(0);
        let delivery = producer.send(record).await.unwrap();
        // A failed batch fails flush too; the delivery says which.
        let _ = producer.flush().await;
        out.push(delivery.await.map(|_| ()));
    }
    out
}

/// Every value in the topic (all partitions), in partition then offset order.
async fn read_all(client: &Client, topic: &str) -> Vec<String> {
    read_all_with(client, topic, ConsumerConfig::default()).await
}

async fn read_all_with(client: &Client, topic: &str, config: ConsumerConfig) -> Vec<String> {
    read_records(client, topic, config)
        .await
        .into_iter()
        .map(|(_, _, v)| v)
        .collect()
}

/// Every record in the topic as (partition, offset, value), in that order.
async fn read_records(
    client: &Client,
    topic: &str,
    config: ConsumerConfig,
) -> Vec<(u32, i64, String)> {
    let admin = client.admin();
    let mut consumer = client.consumer(config);
    let partitions = consumer.assign_all(topic).await.unwrap();
    let mut ends = Vec::new();
    for &p in &partitions {
        consumer.seek(topic, p, Offset::Earliest).await.unwrap();
        ends.push(admin.list_offsets(topic, p, Offset::Latest).await.unwrap());
    }
    let mut values: Vec<(u32, i64, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while partitions
        .iter()
        .zip(&ends)
        .any(|(&p, &end)| consumer.position(topic, p).unwrap_or(0) < end)
    {
        assert!(Instant::now() < deadline, "timed out reading {topic}");
        for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            values.push((
                r.partition,
                r.offset,
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
            ));
        }
    }
    values.sort();
    values
}

fn broker_code(result: &meridian_client::Result<()>) -> Option<ErrorCode> {
    result.as_ref().err().and_then(|e| e.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_list_describe_remove_and_refusals() {
    let broker = plugin_broker();
    let client = broker.client().await;
    let admin = client.admin();
    let info = deploy(&client, "json-filter", "json_filter").await;
    assert_eq!(info.kind, "filter");
    assert_eq!(info.sha256.len(), 64);
    let stored = broker
        .data_dir
        .join("plugins/modules")
        .join(format!("{}.wasm", info.sha256));
    assert_eq!(
        std::fs::read(stored).unwrap(),
        std::fs::read(plugin_module("json_filter")).unwrap()
    );
    assert_eq!(admin.list_plugins().await.unwrap(), vec![info.clone()]);

    // Refused at upload: malformed, not a plugin, wrong ABI version.
    for (module, message) in [
        (b"garbage".to_vec(), "not a valid WebAssembly module"),
        (b"\0asm\x01\0\0\0".to_vec(), "does not export `memory`"),
        (
            wat::parse_str(wat_fixtures::filter_wat(2, 0, "")).unwrap(),
            "module speaks plugin ABI version 2; this broker speaks version 1",
        ),
    ] {
        let err = admin
            .deploy_plugin("bad", "1", Bytes::from(module))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidPlugin), "{err}");
        assert!(err.to_string().contains(message), "{err}");
    }
    let err = admin.describe_plugin("bad").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginNotFound));

    // Bad parameters are refused at attach, by the plugin itself.
    create(&client, "orders", 1).await;
    let err = admin
        .attach_plugin("orders", attachment("json-filter", &[], "reject"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidPlugin));
    assert!(
        err.to_string().contains("missing parameter `where`"),
        "{err}"
    );
    let err = admin
        .attach_plugin(
            "orders",
            attachment("json-filter", &[("where", "a=1")], "maybe"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidConfig));

    admin
        .attach_plugin(
            "orders",
            attachment("json-filter", &[("where", "a=1")], "reject"),
        )
        .await
        .unwrap();
    assert_eq!(
        admin
            .describe_plugin("json-filter")
            .await
            .unwrap()
            .attached_to,
        ["orders"]
    );
    let err = admin.remove_plugin("json-filter").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginInUse));
    admin.detach_plugin("orders", "json-filter").await.unwrap();
    admin.remove_plugin("json-filter").await.unwrap();

    // Deleting a topic drops its attachments: a topic recreated under the name has none.
    deploy(&client, "jf", "json_filter").await;
    admin
        .attach_plugin("orders", attachment("jf", &[("where", "a=1")], "reject"))
        .await
        .unwrap();
    admin.delete_topic("orders").await.unwrap();
    assert!(admin
        .describe_plugin("jf")
        .await
        .unwrap()
        .attached_to
        .is_empty());
    admin.remove_plugin("jf").await.unwrap();
    assert!(admin.list_plugins().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_chain_filters_then_transforms_and_survives_restart() {
    let mut broker = plugin_broker();
    let client = broker.client().await;
    let admin = client.admin();
    deploy(&client, "big-orders", "json_filter").await;
    deploy(&client, "redact", "pii_redactor").await;
    create(&client, "orders", 1).await;
    admin
        .attach_plugin(
            "orders",
            attachment("big-orders", &[("where", "total>=100")], "reject"),
        )
        .await
        .unwrap();
    admin
        .attach_plugin(
            "orders",
            attachment("redact", &[("paths", "name")], "reject"),
        )
        .await
        .unwrap();
    let results = send_each(
        &client,
        "orders",
        &[
            r#"{"total":50,"name":"Ann","email":"ann@x.org"}"#,
            r#"{"total":150,"name":"Bob","email":"bob@y.org"}"#,
        ],
    )
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        read_all(&client, "orders").await,
        [r#"{"email":"[EMAIL]","name":"[REDACTED]","total":150}"#]
    );

    // Plugins, modules and attachments survive a restart.
    drop(client);
    broker.stop();
    broker.restart();
    let client = broker.client().await;
    let results = send_each(&client, "orders", &[r#"{"total":500,"name":"Cy"}"#]).await;
    assert!(results[0].is_ok(), "{results:?}");
    assert_eq!(
        read_all(&client, "orders").await.last().unwrap(),
        r#"{"name":"[REDACTED]","total":500}"#
    );
    // Describing the topic shows the chain in order, with the broker's limits
    // (this broker's batch time, the default memory cap) and the failure policy.
    let described = client.admin().describe_topic("orders").await.unwrap();
    let mut big_orders = attachment("big-orders", &[("where", "total>=100")], "reject");
    big_orders.batch_time_max_ms = 5000;
    big_orders.memory_max_bytes = 64 << 20;
    let mut redact = attachment("redact", &[("paths", "name")], "reject");
    redact.batch_time_max_ms = 5000;
    redact.memory_max_bytes = 64 << 20;
    assert_eq!(described.plugins, [big_orders, redact]);
}

/// A batch of JSON values `{"n":…}` from an idempotent producer.
fn idempotent_batch(producer_id: i64, first_seq: i32, ns: &[u32]) -> Bytes {
    use meridian_wire::batch::{encode_batch, Compression, NewRecord, ProducerIdentity};
    let records: Vec<NewRecord> = ns
        .iter()
        .map(|n| NewRecord {
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!(r#"{{"n":{n}}}"#))),
            headers: vec![],
        })
        .collect();
    let identity = ProducerIdentity {
        producer_id,
        producer_epoch: 0,
        base_sequence: first_seq,
    };
    encode_batch(&records, Compression::Zstd, identity).unwrap()
}

/// A filter in the produce chain keeps what producers count on: each record sent takes
/// its offset (the one the producer is told) whether kept or not, and an idempotent
/// producer's sequence numbers go on across dropped records and emptied batches, so
/// its next batch is taken and a retried one is still recognised, also after kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_filter_keeps_offsets_and_an_idempotent_producers_sequence() {
    use crate::idempotence::{log_end, producer_id, send, stored_batch_headers};
    let mut broker = plugin_broker();
    let client = broker.client().await;
    deploy(&client, "big", "json_filter").await;
    create(&client, "orders", 1).await;
    client
        .admin()
        .attach_plugin("orders", attachment("big", &[("where", "n>=10")], "reject"))
        .await
        .unwrap();
    let pid = producer_id(&client).await;
    let first = idempotent_batch(pid, 0, &[5, 10, 3, 20]);
    let emptied = idempotent_batch(pid, 4, &[1, 2]);
    let third = idempotent_batch(pid, 6, &[30]);
    assert_eq!(
        send(&client, "orders", first.clone()).await,
        (ErrorCode::None, 0)
    );
    assert_eq!(
        send(&client, "orders", emptied.clone()).await,
        (ErrorCode::None, 4)
    );
    assert_eq!(
        send(&client, "orders", third.clone()).await,
        (ErrorCode::None, 6)
    );
    // Retries (their answers lost, say) are answered from the producer state.
    assert_eq!(send(&client, "orders", first).await, (ErrorCode::None, 0));
    assert_eq!(send(&client, "orders", emptied).await, (ErrorCode::None, 4));
    assert_eq!(log_end(&client, "orders").await, 7);
    let kept = read_records(&client, "orders", ConsumerConfig::default()).await;
    let expected = [
        (0, 1, r#"{"n":10}"#),
        (0, 3, r#"{"n":20}"#),
        (0, 6, r#"{"n":30}"#),
    ];
    let expected: Vec<(u32, i64, String)> = expected
        .iter()
        .map(|&(p, o, v)| (p, o, v.to_string()))
        .collect();
    assert_eq!(kept, expected);
    let headers = stored_batch_headers(&client, "orders").await;
    let stored: Vec<(i64, i32, i32, i32)> = headers
        .iter()
        .map(|h| {
            (
                h.producer_id,
                h.base_sequence,
                h.last_offset_delta,
                h.records_count,
            )
        })
        .collect();
    assert_eq!(stored, [(pid, 0, 3, 2), (pid, 4, 1, 0), (pid, 6, 0, 1)]);
    // Such batches are the broker's to make: from a producer, one with a gap is
    // refused even when the filter would keep all it holds.
    let gap = meridian_wire::batch::encode_batch_spanning(
        &[meridian_wire::batch::NewRecord {
            timestamp: 1,
            key: None,
            value: Some(Bytes::from_static(br#"{"n":99}"#)),
            headers: vec![],
        }],
        &[1],
        1,
        meridian_wire::batch::Compression::None,
        meridian_wire::batch::ProducerIdentity::NONE,
    )
    .unwrap();
    assert_eq!(
        send(&client, "orders", gap).await.0,
        ErrorCode::CorruptMessage
    );
    assert_eq!(log_end(&client, "orders").await, 7);

    // The state comes back after kill -9: the last batch is still a duplicate and the
    // sequence goes on.
    broker.kill9();
    broker.restart();
    let client = broker.client().await;
    assert_eq!(send(&client, "orders", third).await, (ErrorCode::None, 6));
    let next = idempotent_batch(pid, 7, &[1, 40]);
    assert_eq!(send(&client, "orders", next).await, (ErrorCode::None, 7));
    assert_eq!(log_end(&client, "orders").await, 9);

    // The SDK's producer (idempotent by default) is told each record's offset; the
    // kept ones are where it was told.
    let producer = client.producer(ProducerConfig {
        linger: Duration::from_millis(20),
        ..ProducerConfig::default()
    });
    let mut deliveries = Vec::new();
    for n in 0..40u32 {
        let value = Bytes::from(format!(r#"{{"n":{}}}"#, n * 7 % 20));
        let record = ProducerRecord::new("orders", value.clone()).partition(0);
        deliveries.push((value, producer.send(record).await.unwrap()));
        if n % 9 == 0 {
            producer.flush().await.unwrap();
        }
    }
    producer.flush().await.unwrap();
    let mut told = Vec::new();
    for (value, delivery) in deliveries {
        let metadata = delivery.await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        if v["n"].as_u64().unwrap() >= 10 {
            told.push((
                0,
                metadata.offset,
                String::from_utf8(value.to_vec()).unwrap(),
            ));
        }
    }
    let kept = read_records(&client, "orders", ConsumerConfig::default()).await;
    assert_eq!(kept[4..], told[..]);
    assert_eq!(log_end(&client, "orders").await, 49);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_policies_reject_skip_and_dead_letter() {
    let broker = plugin_broker();
    let client = broker.client().await;
    let admin = client.admin();
    deploy(&client, "where-a", "json_filter").await;
    let params = [("where", "a=1")];
    for (topic, policy) in [
        ("rejecting", "reject"),
        ("skipping", "skip"),
        ("dead-lettering", "dead-letter:dlq"),
    ] {
        create(&client, topic, 1).await;
        admin
            .attach_plugin(topic, attachment("where-a", &params, policy))
            .await
            .unwrap();
        let results = send_each(&client, topic, &[r#"{"a":1}"#, "not json", r#"{"a":2}"#]).await;
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        match policy {
            "reject" => {
                assert_eq!(broker_code(&results[1]), Some(ErrorCode::PluginRejected));
                let message = results[1].as_ref().unwrap_err().to_string();
                assert!(
                    message.contains(
                        "plugin `where-a` rejected the record at offset 0: value is not JSON"
                    ),
                    "{message}"
                );
            }
            _ => assert!(results[1].is_ok(), "{results:?}"),
        }
        assert_eq!(read_all(&client, topic).await, [r#"{"a":1}"#]);
    }
    assert_eq!(read_all(&client, "dlq").await, ["not json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_infinite_loop_and_memory_bomb_are_contained() {
    use wat_fixtures::*;
    let broker = plugin_broker();
    let client = broker.client().await;
    let admin = client.admin();
    create(&client, "other", 1).await;
    for (name, action, expected) in [
        ("trapper", TRAP, "trap"),
        ("looper", LOOP_FOREVER, "timeout"),
        ("bomber", MEMORY_BOMB, "memory limit"),
    ] {
        let wat = filter_wat(1, 0, &when(FIRST_VALUE_STARTS_WITH_B, action));
        deploy_wat(&client, name, &wat).await.unwrap();
        create(&client, name, 1).await;
        let mut a = attachment(name, &[], "reject");
        a.batch_time_max_ms = 100;
        a.memory_max_bytes = 8 << 20;
        admin.attach_plugin(name, a).await.unwrap();

        // Another topic keeps producing while the bad batch runs into its limit.
        let other = {
            let client = client.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let results = send_each(&client, "other", &["x"; 20]).await;
                (results.iter().all(Result::is_ok), started.elapsed())
            })
        };
        let started = Instant::now();
        let results = send_each(&client, name, &["fine", "boom", "fine again"]).await;
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            results[0].is_ok() && results[2].is_ok(),
            "{name}: {results:?}"
        );
        assert_eq!(broker_code(&results[1]), Some(ErrorCode::PluginRejected));
        let message = results[1].as_ref().unwrap_err().to_string();
        assert!(
            message.contains(&format!(
                "plugin `{name}` failed on the batch starting at offset 0: {expected}"
            )),
            "{message}"
        );
        let (all_ok, _) = other.await.unwrap();
        assert!(all_ok);
        assert_eq!(read_all(&client, name).await, ["fine", "fine again"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_are_held_to_the_brokers_limits() {
    use wat_fixtures::*;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = TestBroker::start_in(&data, &[], None);
    let client = broker.client().await;
    let admin = client.admin();
    let wat = filter_wat(1, 0, &when(FIRST_VALUE_STARTS_WITH_B, LOOP_FOREVER));
    deploy_wat(&client, "looper", &wat).await.unwrap();
    create(&client, "slow", 1).await;
    let asking = |batch_time_max_ms, memory_max_bytes| Attachment {
        batch_time_max_ms,
        memory_max_bytes,
        ..attachment("looper", &[], "reject")
    };
    for (a, want) in [
        (
            asking(10_001, 0),
            "--batch-time-max-ms 10001 is above this broker's limit of 10000 \
             (plugins.batch_time_max_ms_limit)",
        ),
        (
            asking(0, (1 << 30) + 1),
            "--memory-max-bytes 1073741825 is above this broker's limit of 1073741824 \
             (plugins.memory_max_bytes_limit)",
        ),
    ] {
        let err = admin.attach_plugin("slow", a).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidConfig), "{err}");
        assert!(err.to_string().contains(want), "{err}");
    }
    admin
        .attach_plugin("slow", asking(10_000, 1 << 30))
        .await
        .unwrap();
    drop(admin);
    drop(client);

    // Limits lowered since: the stored attachment still asks for 10 s a batch, and
    // gets what the broker allows now.
    broker.stop();
    let broker = TestBroker::start_in(
        &data,
        &[
            "plugins.batch_time_max_ms=100",
            "plugins.batch_time_max_ms_limit=100",
        ],
        None,
    );
    let client = broker.client().await;
    let chain = client.admin().describe_topic("slow").await.unwrap().plugins;
    assert_eq!(
        (chain[0].batch_time_max_ms, chain[0].memory_max_bytes),
        (100, 1 << 30),
        "the limits in effect"
    );
    let started = Instant::now();
    let results = send_each(&client, "slow", &["boom"]).await;
    let took = started.elapsed();
    let message = results[0].as_ref().unwrap_err().to_string();
    assert!(message.contains("timeout"), "{message}");
    assert!(took < Duration::from_secs(5), "the loop ran for {took:?}");
}

/// A module of `functions` large functions (seconds to compile) that is not a plugin;
/// `tag` makes its content, so its SHA-256, differ from another's.
fn large_non_plugin(functions: usize, tag: usize) -> String {
    let body: String = (0..200)
        .map(|i| format!("(local.set 0 (i32.add (local.get 0) (i32.const {i})))"))
        .collect();
    let mut wat = format!("(module (memory (export \"memory\") 1) (global i32 (i32.const {tag}))");
    for i in 0..functions {
        wat.push_str(&format!(
            "(func $f{i} (param i32) (result i32) {body} (local.get 0))"
        ));
    }
    wat.push(')');
    wat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiling_large_modules_does_not_stall_the_broker() {
    // Two deploys compile at once while a client keeps asking for the topic list.
    // Were compiles run on the runtime's workers (two here), the broker would answer
    // nothing, keep-alives included, until they were done, and clients would drop
    // their connections (the client gives up on a silent broker after 2.5 s).
    let broker = TestBroker::start(&["worker_threads=2"]);
    let asker = broker.client().await;
    let mut deploys = Vec::new();
    for tag in 0..2 {
        let client = broker.client().await;
        let wat = large_non_plugin(2000, tag);
        deploys.push(tokio::spawn(async move {
            deploy_wat(&client, "big", &wat).await
        }));
    }
    let mut answered = 0;
    while deploys.iter().any(|d| !d.is_finished()) {
        asker.admin().list_topics().await.unwrap();
        answered += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for deploy in deploys {
        let err = deploy.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidPlugin), "{err}");
        assert!(
            err.to_string()
                .contains("does not export `meridian_abi_version`"),
            "{err}"
        );
    }
    assert!(answered > 0);
    // Refused modules leave neither a stored module nor a compiled artifact.
    for dir in ["modules", "cache"] {
        let left = plugin_files(&broker, dir);
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
}

/// The files in the broker's `plugins/<dir>` (`modules` or `cache`), sorted.
fn plugin_files(broker: &TestBroker, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(broker.data_dir.join("plugins").join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_and_removed_modules_leave_no_files() {
    use wat_fixtures::*;
    let broker = plugin_broker();
    let client = broker.client().await;
    let admin = client.admin();
    let files = |dir: &str| plugin_files(&broker, dir);
    deploy_wat(&client, "keep", &filter_wat(1, 0, ""))
        .await
        .unwrap();
    deploy_wat(&client, "also-keep", &filter_wat(1, 0, ""))
        .await
        .unwrap();
    let v1 = admin.describe_plugin("keep").await.unwrap().sha256;
    assert_eq!(files("modules"), [format!("{v1}.wasm")]);
    assert_eq!(files("cache"), [format!("{v1}.cwasm")]);

    // A new version of `keep`: the old module stays while `also-keep` uses it.
    let wat = filter_wat(1, 0, &when(FIRST_VALUE_STARTS_WITH_B, TRAP));
    deploy_wat(&client, "keep", &wat).await.unwrap();
    let v2 = admin.describe_plugin("keep").await.unwrap().sha256;
    let mut both = [v1, v2.clone()];
    both.sort();
    assert_eq!(
        files("modules"),
        both.each_ref().map(|sha| format!("{sha}.wasm"))
    );
    assert_eq!(
        files("cache"),
        both.each_ref().map(|sha| format!("{sha}.cwasm"))
    );

    admin.remove_plugin("also-keep").await.unwrap();
    assert_eq!(files("modules"), [format!("{v2}.wasm")]);
    assert_eq!(files("cache"), [format!("{v2}.cwasm")]);
    admin.remove_plugin("keep").await.unwrap();
    assert!(files("modules").is_empty() && files("cache").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_loses_and_duplicates_nothing_and_logs_reach_the_topic() {
    use wat_fixtures::*;
    let broker = plugin_broker();
    let client = broker.client().await;
    let admin = client.admin();
    create(&client, "events", 2).await;
    // v1 keeps everything silently; v2 keeps everything and prints a line per batch.
    deploy_wat(&client, "keep", &filter_wat(1, 0, ""))
        .await
        .unwrap();
    let v1 = admin.describe_plugin("keep").await.unwrap();
    admin
        .attach_plugin("events", attachment("keep", &[], "reject"))
        .await
        .unwrap();
    let n = 4000usize;
    let producer = client.producer(ProducerConfig {
        linger: Duration::from_millis(1),
        batch_size: 2048,
        ..ProducerConfig::default()
    });
    let mut deliveries = Vec::with_capacity(n);
    for i in 0..n {
        if i == n / 2 {
            deploy_wat(&client, "keep", &filter_wat(1, 0, LOG_LINE))
                .await
                .unwrap();
        }
        let record =
            ProducerRecord::new("events", Bytes::from(format!("{i}"))).partition((i % 2) as u32);
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
    for d in deliveries {
        d.await.unwrap();
    }
    drop(producer);
    let v2 = admin.describe_plugin("keep").await.unwrap();
    assert_ne!(v1.sha256, v2.sha256);
    let mut values: Vec<usize> = read_all(&client, "events")
        .await
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, (0..n).collect::<Vec<_>>(), "no loss, no duplicates");
    // The new version ran (its output is in the logs topic), and only after the swap.
    let logs = read_all(&client, "__plugin_logs").await;
    assert!(!logs.is_empty());
    assert!(logs.iter().all(|l| l == "hello from wasm"), "{logs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_filter_sends_only_kept_records_and_consumers_move_past_the_rest() {
    use meridian_wire::messages::{
        FetchPartition, FetchRequest, FetchTopic, Request, Response, CONSUMER_REPLICA_ID,
    };
    let broker = plugin_broker();
    let client = broker.client().await;
    deploy(&client, "jf", "json_filter").await;
    create(&client, "events", 2).await;
    // Uncompressed, so bytes on the wire track records kept (the re-encoding of
    // compressed batches is covered in meridian-wire).
    let producer = client.producer(ProducerConfig::default());
    let n = 1000;
    let pad = "x".repeat(200);
    for i in 0..n {
        let value = format!(r#"{{"i":{i},"keep":{},"pad":"{pad}"}}"#, i % 10 == 0);
        let record = ProducerRecord::new("events", Bytes::from(value)).partition((i % 2) as u32);
        producer.send(record).await.unwrap();
    }
    producer.flush().await.unwrap();
    drop(producer);

    let filter = meridian_client::FetchFilter {
        plugin: "jf".into(),
        params: vec![("where".into(), "keep=true".into())],
    };
    let config = ConsumerConfig {
        filter: Some(filter.clone()),
        ..ConsumerConfig::default()
    };
    let mut kept: Vec<i64> = read_all_with(&client, "events", config)
        .await
        .iter()
        .map(|v| {
            serde_json::from_str::<serde_json::Value>(v).unwrap()["i"]
                .as_i64()
                .unwrap()
        })
        .collect();
    kept.sort_unstable();
    assert_eq!(kept, (0..n).step_by(10).collect::<Vec<_>>());

    // The same fetch with and without the filter: far fewer bytes cross the network.
    let fetch_bytes = |filter: Option<meridian_client::FetchFilter>| {
        let client = client.clone();
        async move {
            let request = Request::Fetch(FetchRequest {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 64 << 20,
                topics: vec![FetchTopic {
                    name: "events".into(),
                    id: meridian_wire::TopicId::NONE,
                    partitions: vec![FetchPartition::new(0, 0, 64 << 20)],
                }],
                filter,
                replica_id: CONSUMER_REPLICA_ID,
            });
            let Response::Fetch(response) = client.request(request).await.unwrap() else {
                panic!("not a fetch response")
            };
            assert!(response.topics[0].partitions[0].error.is_ok());
            response.topics[0].partitions[0].records.len()
        }
    };
    let all = fetch_bytes(None).await;
    let filtered = fetch_bytes(Some(filter)).await;
    assert!(filtered * 4 < all, "filtered {filtered} of {all} bytes");

    // A plugin that is not deployed fails the partition, not the broker.
    let err = read_error(&client, "events", "nope").await;
    assert_eq!(err, Some(ErrorCode::PluginNotFound));

    // And from the CLI.
    let (ok, stdout, stderr) = broker.cli(
        &[
            "consume",
            "events",
            "--partition",
            "0",
            "--filter",
            "jf",
            "--param",
            "where=i<30",
        ],
        "",
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 15, "{stdout}");
}

async fn read_error(client: &Client, topic: &str, plugin: &str) -> Option<ErrorCode> {
    let mut consumer = client.consumer(ConsumerConfig {
        filter: Some(meridian_client::FetchFilter {
            plugin: plugin.into(),
            params: vec![],
        }),
        ..ConsumerConfig::default()
    });
    consumer.assign(topic, &[0]).await.unwrap();
    consumer.seek(topic, 0, Offset::Earliest).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Err(e) = consumer.poll(Duration::from_millis(200)).await {
            return e.code();
        }
    }
    None
}

/// Sends `values` (null keys unless given) in one batch without a partition.
async fn produce_unassigned(
    client: &Client,
    topic: &str,
    records: &[(Option<&str>, &str)],
) -> meridian_wire::messages::ProducePartitionResponse {
    use meridian_wire::batch::{encode_batch, Compression, NewRecord, ProducerIdentity};
    use meridian_wire::messages::{Response, UNASSIGNED_PARTITION};
    let records: Vec<NewRecord> = records
        .iter()
        .map(|(k, v)| NewRecord {
            timestamp: 1,
            key: k.map(|k| Bytes::from(k.to_string())),
            value: Some(Bytes::from(v.to_string())),
            headers: vec![],
        })
        .collect();
    let batch = encode_batch(&records, Compression::Lz4, ProducerIdentity::NONE).unwrap();
    let request = crate::harness::produce(topic, UNASSIGNED_PARTITION, 1, batch);
    let Response::Produce(response) = client.request(request).await.unwrap() else {
        panic!("not a produce response")
    };
    response.topics[0].partitions[0].clone()
}

/// Values per partition.
async fn by_partition(client: &Client, topic: &str, n_partitions: u32) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for p in 0..n_partitions {
        let mut consumer = client.consumer(ConsumerConfig::default());
        consumer.assign(topic, &[p]).await.unwrap();
        consumer.seek(topic, p, Offset::Earliest).await.unwrap();
        let end = client
            .admin()
            .list_offsets(topic, p, Offset::Latest)
            .await
            .unwrap();
        let mut values = Vec::new();
        while consumer.position(topic, p).unwrap_or(0) < end {
            for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
                values.push(String::from_utf8_lossy(r.value.as_deref().unwrap()).into_owned());
            }
        }
        out.push(values);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioners_route_records_sent_without_a_partition() {
    let broker = plugin_broker();
    let client = broker.client().await;
    let admin = client.admin();
    deploy(&client, "regions", "region_router").await;
    deploy(&client, "salter", "hot_key_salter").await;
    deploy(&client, "jf", "json_filter").await;
    create(&client, "geo", 3).await;

    // No partitioner attached: a record without a partition is refused.
    let response = produce_unassigned(&client, "geo", &[(None, r#"{"region":"eu"}"#)]).await;
    assert_eq!(
        response.error,
        ErrorCode::InvalidPartition,
        "{}",
        response.message
    );

    // The partitioner routes; each partition's chain (the filter) runs on what it got.
    admin
        .attach_plugin(
            "geo",
            attachment(
                "regions",
                &[("field", "region"), ("map", "eu=0,us=1,apac=2")],
                "dead-letter:geo-dlq",
            ),
        )
        .await
        .unwrap();
    admin
        .attach_plugin(
            "geo",
            attachment(
                "jf",
                &[("where", "drop!=yes"), ("missing", "keep")],
                "reject",
            ),
        )
        .await
        .unwrap();
    let response = produce_unassigned(
        &client,
        "geo",
        &[
            (None, r#"{"region":"us","n":1}"#),
            (None, r#"{"region":"eu","n":2}"#),
            (None, r#"{"region":"apac","n":3}"#),
            (None, r#"{"region":"us","n":4,"drop":"yes"}"#),
            (None, r#"{"region":"mars","n":5}"#),
            (None, r#"{"region":"eu","n":6}"#),
        ],
    )
    .await;
    assert_eq!(response.error, ErrorCode::None, "{}", response.message);
    assert_eq!(
        by_partition(&client, "geo", 3).await,
        [
            vec![r#"{"region":"eu","n":2}"#, r#"{"region":"eu","n":6}"#],
            vec![r#"{"region":"us","n":1}"#],
            vec![r#"{"region":"apac","n":3}"#],
        ]
    );
    assert_eq!(
        read_all(&client, "geo-dlq").await,
        [r#"{"region":"mars","n":5}"#]
    );
    // Records sent with a partition are not routed.
    let results = send_each(&client, "geo", &[r#"{"region":"apac"}"#]).await;
    assert!(results[0].is_ok());
    assert_eq!(by_partition(&client, "geo", 3).await[0].len(), 3);

    // The Rust producer asks for routing with UNASSIGNED_PARTITION.
    let producer = client.producer(ProducerConfig::default());
    let mut deliveries = Vec::new();
    for region in ["us", "apac", "us"] {
        let value = format!(r#"{{"region":"{region}","from":"sdk"}}"#);
        let record = ProducerRecord::new("geo", Bytes::from(value))
            .partition(meridian_client::UNASSIGNED_PARTITION);
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
    for d in deliveries {
        let meta = d.await.unwrap();
        assert_eq!(
            (meta.partition, meta.offset),
            (meridian_client::UNASSIGNED_PARTITION, -1)
        );
    }
    let placed = by_partition(&client, "geo", 3).await;
    let from_sdk = |p: usize| placed[p].iter().filter(|v| v.contains("sdk")).count();
    assert_eq!((from_sdk(0), from_sdk(1), from_sdk(2)), (0, 2, 1));

    // And from the CLI.
    let (ok, _, stderr) = broker.cli(
        &["produce", "geo", "--partition", "4294967295"],
        "{\"region\":\"apac\",\"from\":\"cli\"}\n",
    );
    assert!(ok, "{stderr}");
    let placed = by_partition(&client, "geo", 3).await;
    assert!(placed[2].iter().any(|v| v.contains("cli")), "{placed:?}");

    // One partitioner per topic.
    let refused = admin
        .attach_plugin("geo", attachment("salter", &[("hot_keys", "h")], "reject"))
        .await;
    refused_as_second_partitioner(refused, "regions");

    // The hot-key salter spreads a hot key over every partition of the topic.
    create(&client, "clicks", 4).await;
    admin
        .attach_plugin(
            "clicks",
            attachment("salter", &[("hot_keys", "hot")], "reject"),
        )
        .await
        .unwrap();
    let records: Vec<(Option<&str>, &str)> = (0..8).map(|_| (Some("hot"), "x")).collect();
    let response = produce_unassigned(&client, "clicks", &records).await;
    assert_eq!(response.error, ErrorCode::None, "{}", response.message);
    let counts: Vec<usize> = by_partition(&client, "clicks", 4)
        .await
        .iter()
        .map(Vec::len)
        .collect();
    assert_eq!(counts, [2, 2, 2, 2]);
}

/// Every `plugins.*` limit, set on the broker, takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_limits_come_from_the_broker_config() {
    use wat_fixtures::*;
    let broker = TestBroker::start(&[
        "plugins.module_size_max_bytes=100000",
        "plugins.batch_time_max_ms=50",
        "plugins.memory_max_bytes=4194304",
        "plugins.epoch_tick_ms=1",
        "plugins.log_line_bytes_max=5",
        "plugins.log_lines_per_sec_max=1",
        "plugins.logs_topic=my-plugin-logs",
    ]);
    let client = broker.client().await;
    let admin = client.admin();

    // json_filter is ~150 KB, over the 100,000-byte cap.
    let wasm = std::fs::read(plugin_module("json_filter")).unwrap();
    let err = admin
        .deploy_plugin("big", "1", Bytes::from(wasm))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidPlugin));
    assert!(
        err.to_string().contains("over the 100000-byte cap"),
        "{err}"
    );

    // Attachments that set no limits get the broker's.
    for (name, action, expected) in [
        ("looper", LOOP_FOREVER, "timeout"),
        ("bomber", MEMORY_BOMB, "memory limit"),
    ] {
        let wat = filter_wat(1, 0, &when(FIRST_VALUE_STARTS_WITH_B, action));
        deploy_wat(&client, name, &wat).await.unwrap();
        create(&client, name, 1).await;
        admin
            .attach_plugin(name, attachment(name, &[], "reject"))
            .await
            .unwrap();
        let started = Instant::now();
        let results = send_each(&client, name, &["boom"]).await;
        let message = results[0].as_ref().unwrap_err().to_string();
        assert!(message.contains(expected), "{message}");
        if expected == "timeout" {
            // A liveness bound (the loop is cut at all), roomy for a loaded machine.
            assert!(started.elapsed() < Duration::from_secs(15));
        }
    }

    // Output lines are cut and rate-capped, and go to the configured topic. The
    // plugin prints three lines per batch, all in one call: the rate cap's 1 s window
    // starts as the instance is made, just before, so one is kept and two dropped
    // (three batches, each a round trip, could span two windows).
    let three_lines = LOG_LINE.repeat(3);
    deploy_wat(&client, "talker", &filter_wat(1, 0, &three_lines))
        .await
        .unwrap();
    create(&client, "talk", 1).await;
    admin
        .attach_plugin("talk", attachment("talker", &[], "reject"))
        .await
        .unwrap();
    let results = send_each(&client, "talk", &["a"]).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let logs = read_all(&client, "my-plugin-logs").await;
    assert_eq!(
        logs,
        ["hello", "2 lines dropped (plugins.log_lines_per_sec_max)"]
    );
}

#[test]
fn cli_deploys_attaches_and_detaches() {
    let broker = TestBroker::start(&["auto_create_topics=true"]);
    let module = plugin_module("json_filter");
    let (ok, stdout, stderr) = broker.cli(
        &[
            "plugin",
            "deploy",
            module.to_str().unwrap(),
            "--plugin-version",
            "2.1.0",
        ],
        "",
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("deployed json-filter 2.1.0 (filter, "),
        "{stdout}"
    );
    let sha256 = stdout
        .trim_end()
        .trim_end_matches(')')
        .rsplit(' ')
        .next()
        .unwrap();
    assert_eq!(sha256.len(), 64, "{stdout}");
    assert!(!stderr.contains("note:"), "one broker has it all: {stderr}");
    let (ok, _, stderr) = broker.cli(&["topic", "create", "t"], "");
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = broker.cli(
        &[
            "topic",
            "attach",
            "t",
            "--plugin",
            "json-filter",
            "--param",
            "where=keep=yes",
        ],
        "",
    );
    assert!(ok, "{stderr}");
    let (ok, described, stderr) = broker.cli(&["topic", "describe", "t"], "");
    assert!(ok, "{stderr}");
    assert!(
        described.contains(
            "  1. json-filter (filter)  --param where=keep=yes  --on-failure reject  \
             --batch-time-max-ms 200  --memory-max-bytes 67108864\n"
        ),
        "{described}"
    );
    let (ok, _, stderr) = broker.cli(&["produce", "t"], "{\"keep\":\"yes\"}\n{\"keep\":\"no\"}\n");
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = broker.cli(&["consume", "t"], "");
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "{\"keep\":\"yes\"}\n");
    // The same for scripts.
    let (ok, described, stderr) = broker.cli(&["topic", "describe", "t", "--json"], "");
    assert!(ok, "{stderr}");
    let described: serde_json::Value = serde_json::from_str(&described).unwrap();
    assert_eq!(described["topic"], "t", "{described}");
    assert_eq!(
        described["plugins"],
        serde_json::json!([{"plugin": "json-filter", "params": {"where": "keep=yes"},
            "on_failure": "reject", "batch_time_max_ms": 200, "memory_max_bytes": 67108864}]),
        "{described}"
    );
    assert_eq!(
        described["configs"]["retention.ms"],
        serde_json::json!({"value": "604800000", "default": true}),
        "{described}"
    );
    let partition = &described["partitions"][0];
    assert_eq!(partition["partition"], 0, "{described}");
    assert_eq!(partition["status"], "online", "{described}");
    assert!(
        partition["high_watermark"].as_i64() >= Some(1),
        "{described}"
    );
    let (ok, stdout, _) = broker.cli(&["plugin", "list"], "");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(ok && lines.len() == 2, "{stdout}");
    assert!(
        lines[0].starts_with("NAME ") && lines[0].ends_with("  TOPICS"),
        "{stdout}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row,
        ["json-filter", "2.1.0", "filter", row[3], &sha256[..12], "t"]
    );
    let (ok, stdout, _) = broker.cli(&["plugin", "list", "--json"], "");
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(ok, "{stdout}");
    assert_eq!(
        listed,
        serde_json::json!([{"name": "json-filter", "version": "2.1.0", "kind": "filter",
            "size_bytes": row[3].parse::<u64>().unwrap(), "sha256": sha256, "attached_to": ["t"]}])
    );
    let (ok, stdout, _) = broker.cli(&["plugin", "describe", "json-filter"], "");
    assert!(
        ok && stdout.contains(&format!("sha256:   {sha256}\n")),
        "{stdout}"
    );
    assert!(stdout.contains("topics:   t\n"), "{stdout}");
    let (ok, _, stderr) = broker.cli(&["plugin", "remove", "json-filter"], "");
    assert!(!ok && stderr.contains("PluginInUse"), "{stderr}");
    let (ok, _, stderr) = broker.cli(&["topic", "detach", "t", "--plugin", "json-filter"], "");
    assert!(ok, "{stderr}");
    let (ok, described, stderr) = broker.cli(&["topic", "describe", "t"], "");
    assert!(ok && !described.contains("plugins"), "{described} {stderr}");
    let (ok, _, stderr) = broker.cli(&["plugin", "remove", "json-filter"], "");
    assert!(ok, "{stderr}");
    let (ok, stdout, _) = broker.cli(&["plugin", "list", "--json"], "");
    assert!(ok && stdout == "[]\n", "{stdout}");
}
