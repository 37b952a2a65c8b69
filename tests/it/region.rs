//! A region of real broker processes, started by `meridian up` and by
//! `meridian bench failover`: a three-broker cluster on 127.0.0.1 with RF=3 and
//! min.insync.replicas=2 under acks=all load while leaders are SIGKILLed, a follower
//! is SIGSTOPped, and the whole cluster is killed and restarted. The checker inside
//! the bench reads every partition back; these tests hold it to zero
//! acknowledged-but-missing records, zero duplicates and zero order violations.
//! (Speed is the bench's business, not the tests'.)

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::free_ports;
use crate::harness::meridian_bin;

/// A region file for three brokers on free ports, data under `dir`.
fn region_file(dir: &Path, extra: &str) -> std::path::PathBuf {
    region_file_with(dir, extra, |_| String::new())
}

/// [`region_file`], with `broker_lines(id)` added to broker `id`'s table.
fn region_file_with(
    dir: &Path,
    extra: &str,
    broker_lines: impl Fn(usize) -> String,
) -> std::path::PathBuf {
    let ports = free_ports(3);
    let mut text = format!(
        "[region]\nname = \"test\"\ndata_dir = \"{}\"\n\n[broker_defaults]\n{extra}\n",
        dir.join("region").display()
    );
    for (i, port) in ports.iter().enumerate() {
        text.push_str(&format!(
            "\n[[broker]]\nid = {}\nlisten = \"127.0.0.1:{port}\"\nrack = \"r{}\"\n{}",
            i + 1,
            i + 1,
            broker_lines(i + 1)
        ));
    }
    let path = dir.join("region.toml");
    std::fs::write(&path, text).expect("write region file");
    path
}

fn failover(fault: &str, extra_args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("temp dir");
    // A follower that stops fetching leaves the ISR after 3 s instead of 30.
    let region = region_file(dir.path(), "replica_lag_time_max_ms = 3000");
    let output = Command::new(meridian_bin())
        .args(["bench", "failover", "--json", "--fault", fault])
        .arg("--region")
        .arg(&region)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--partitions", "4", "--rate", "400", "--record-size", "256"])
        .args(extra_args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run meridian bench failover");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failover failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON result in\n{stdout}\nstderr:\n{stderr}"));
    let result: serde_json::Value = serde_json::from_str(line).expect("JSON result");
    let check = &result["check"];
    let summary = format!("{result:#}");
    assert_eq!(
        check["acked_missing"], 0,
        "acknowledged records lost: {summary}"
    );
    assert_eq!(check["duplicates"], 0, "duplicates: {summary}");
    assert_eq!(check["order_violations"], 0, "reordered: {summary}");
    assert!(
        result["acked"].as_u64().unwrap_or(0) > 0,
        "nothing was acknowledged: {summary}"
    );
    let read = check["read"].as_u64().unwrap_or(0);
    assert!(
        read >= result["acked"].as_u64().unwrap_or(0),
        "read fewer records than were acknowledged: {summary}"
    );
    for fault in result["faults"].as_array().expect("faults") {
        assert!(
            !fault["writes_resumed_ms"].is_null(),
            "writes never resumed after {fault}: {summary}"
        );
    }
    result
}

#[test]
fn leaders_killed_repeatedly_lose_nothing_acknowledged() {
    let result = failover(
        "kill-leader",
        &[
            "--duration",
            "24",
            "--faults",
            "3",
            "--fault-every",
            "6",
            "--heal-after",
            "3",
        ],
    );
    assert_eq!(result["faults"].as_array().map(Vec::len), Some(3));
}

#[test]
fn paused_follower_leaves_and_rejoins_without_loss() {
    failover(
        "pause-follower",
        &[
            "--duration",
            "16",
            "--faults",
            "1",
            "--fault-every",
            "4",
            "--heal-after",
            "6",
        ],
    );
}

#[test]
fn whole_cluster_killed_and_restarted_keeps_acknowledged_records() {
    failover(
        "restart-cluster",
        &[
            "--duration",
            "16",
            "--faults",
            "1",
            "--fault-every",
            "5",
            "--heal-after",
            "2",
        ],
    );
}

/// `meridian up REGION` running: the bootstrap list and certificate it printed, and
/// its output and log collected until it stops.
struct UpRegion {
    up: UpProcess,
    bootstrap: String,
    cert: String,
    /// The Kafka bootstrap list, when brokers have Kafka listeners.
    kafka: Option<String>,
    stdout: std::thread::JoinHandle<Vec<String>>,
    stderr: std::thread::JoinHandle<Vec<String>>,
}

/// The `meridian up` process. A test that fails before [`UpRegion::stop`] leaves
/// it running: dropping it stops it (SIGINT, then SIGKILL, which its brokers follow),
/// so a region never outlives its test.
struct UpProcess(std::process::Child);

impl Drop for UpProcess {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl UpRegion {
    fn start(region: &Path) -> UpRegion {
        let mut up = UpProcess(
            Command::new(meridian_bin())
                .arg("up")
                .arg(region)
                .env_remove("RUST_LOG")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start meridian up"),
        );
        let stderr = up.0.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        let stdout = up.0.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut bootstrap, mut cert, mut kafka) = (None, None, None);
        while bootstrap.is_none() || cert.is_none() {
            let line = lines
                .next()
                .expect("meridian up ended early")
                .expect("read line");
            if let Some(b) = line.trim().strip_prefix("bootstrap:") {
                bootstrap = Some(b.trim().to_owned());
            }
            if let Some(k) = line.trim().strip_prefix("kafka:") {
                kafka = k.split_whitespace().next().map(str::to_owned);
            }
            if let Some(c) = line.trim().strip_prefix("certificate:") {
                cert = Some(c.trim().to_owned());
            }
        }
        let stdout = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
        UpRegion {
            up,
            bootstrap: bootstrap.unwrap(),
            cert: cert.unwrap(),
            kafka,
            stdout,
            stderr,
        }
    }

    /// `meridian ARGS --broker BOOTSTRAP` and `connect` (`--ca CERT` by default),
    /// with `stdin`; returns (status ok, stdout, stderr).
    fn cli_with(&self, args: &[&str], stdin: &str, connect: &[&str]) -> (bool, String, String) {
        let mut command = Command::new(meridian_bin());
        command
            .args(args)
            .args(["--broker", &self.bootstrap])
            .args(connect);
        crate::harness::run_with_stdin(command, stdin)
    }

    fn cli(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        self.cli_with(args, stdin, &["--ca", &self.cert])
    }

    /// Creates a topic once the quorum has elected a controller and registered the
    /// brokers.
    fn create_topic(&self, args: &[&str], connect: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, _, err) = self.cli_with(args, "", connect);
            // An earlier attempt may have been created but answered with an error (the
            // controller lost its leadership mid-write while the quorum settled).
            if ok || err.contains("TopicAlreadyExists") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "topic create kept failing: {err}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Sends `signal` to the `meridian up` process.
    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.up.0.id() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal meridian up");
    }

    /// Stops the region with Ctrl-C (SIGINT); asserts every broker stopped cleanly
    /// and returns the brokers' log.
    fn stop(mut self) -> Vec<String> {
        self.signal(rustix::process::Signal::INT);
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.up.0.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "meridian up did not stop");
            std::thread::sleep(Duration::from_millis(100));
        };
        let output = self.stdout.join().expect("reader");
        assert!(
            status.success(),
            "meridian up failed to stop cleanly: {status}\n{}",
            output.join("\n")
        );
        for id in 1..=3 {
            assert!(
                output
                    .iter()
                    .any(|l| l.starts_with(&format!("[broker-{id}] stopped: exit status: 0"))),
                "broker {id} did not stop cleanly:\n{}",
                output.join("\n")
            );
        }
        self.stderr.join().expect("reader")
    }
}

/// `meridian up` starts the region, the CLI works against any broker, and Ctrl-C
/// (SIGINT) stops every broker cleanly; nothing on the way logs an error.
#[test]
fn up_runs_a_region_and_stops_it_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("temp dir");
    let region_path = region_file(dir.path(), "");
    let region = UpRegion::start(&region_path);
    let (bootstrap, cert) = (region.bootstrap.clone(), region.cert.clone());
    let cli = |args: &[&str], stdin: &str| region.cli(args, stdin);
    region.create_topic(
        &["topic", "create", "replicated", "--partitions", "3"],
        &["--ca", &cert],
    );
    let (ok, out, err) = cli(&["topic", "describe", "replicated"], "");
    assert!(ok, "{err}");
    // No --replication-factor: the cluster's default, 3 with three voters.
    assert!(
        out.contains("topic: replicated  partitions: 3  replication-factor: 3"),
        "{out}"
    );
    let (ok, _, err) = cli(&["produce", "replicated", "--acks", "all"], "a\nb\nc\n");
    assert!(ok, "{err}");
    let (ok, out, err) = cli(
        &["consume", "replicated", "--from", "earliest", "-n", "3"],
        "",
    );
    assert!(ok, "{err}");
    let mut values: Vec<&str> = out.lines().collect();
    values.sort();
    assert_eq!(values, ["a", "b", "c"]);
    // A plugin deployed and attached from the CLI filters on every leader.
    let module = crate::plugins::plugin_module("json_filter");
    let (ok, out, err) = cli(&["plugin", "deploy", module.to_str().unwrap()], "");
    assert!(ok, "{err}");
    assert!(out.contains("json-filter"), "{out}");
    let (ok, _, err) = cli(
        &[
            "topic",
            "attach",
            "replicated",
            "--plugin",
            "json-filter",
            "--param",
            "where=n>=10",
        ],
        "",
    );
    assert!(ok, "{err}");
    // Any broker describes the chain the cluster's metadata holds.
    let (ok, out, err) = cli(&["topic", "describe", "replicated"], "");
    assert!(ok, "{err}");
    assert!(
        out.contains("  1. json-filter (filter)  --param where=n>=10  --on-failure reject"),
        "{out}"
    );
    let lines: String = (0..3)
        .flat_map(|p| [format!("{{\"n\": {p}}}"), format!("{{\"n\": 1{p}}}")])
        .map(|line| line + "\n")
        .collect();
    for p in 0..3 {
        let part = p.to_string();
        let (ok, _, err) = cli(
            &["produce", "replicated", "--acks", "all", "-p", &part],
            &lines,
        );
        assert!(ok, "{err}");
    }
    let (ok, out, err) = cli(&["consume", "replicated", "--from", "earliest"], "");
    assert!(ok, "{err}");
    let mut kept: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
    kept.sort();
    let expected: Vec<String> = (0..3)
        .flat_map(|_| (10..13).map(|n| format!("{{\"n\": {n}}}")))
        .collect();
    let mut expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(
        kept, expected,
        "each partition's leader kept n >= 10:\n{out}"
    );
    // From a directory whose meridian-data/ holds regions' certificates (where
    // `meridian up` with the region files' default data dir runs), the CLI finds
    // and trusts them without --ca.
    let home = tempfile::tempdir().expect("temp dir");
    for region in ["test", "other"] {
        let found = home
            .path()
            .join(format!("meridian-data/{region}/tls/cert.pem"));
        std::fs::create_dir_all(found.parent().unwrap()).unwrap();
        std::fs::copy(&cert, &found).unwrap();
    }
    let out = Command::new(meridian_bin())
        .args(["topic", "list", "--broker", &bootstrap])
        .current_dir(home.path())
        .output()
        .expect("run cli");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains("replicated"),
        "{listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // So does the benchmark against running brokers.
    let out = Command::new(meridian_bin())
        .args(["bench", "produce", "--broker", &bootstrap, "--json"])
        .args(["--topic", "bench-region", "--partitions", "3"])
        .args(["--replication-factor", "3", "--records", "2000"])
        .current_dir(home.path())
        .output()
        .expect("run bench");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && summary.contains("\"records\":2000"),
        "{summary}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Starting a broker that is already running fails at once, and `up` says which
    // broker ended and that its own lines say why (not that it did not stop).
    let mut again = Command::new(meridian_bin())
        .arg("up")
        .arg(&region_path)
        .args(["--broker", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run up");
    let deadline = Instant::now() + Duration::from_secs(60);
    while again.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            again.kill().ok();
            panic!("a second `up --broker 2` kept running");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = again.wait_with_output().expect("up output");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("is in use by another broker"), "{stderr}");
    assert!(
        stderr.contains("error: broker-2 (exit status: 1) of region test exited on its own"),
        "{stdout}{stderr}"
    );
    // A broker the file does not have: the error lists those it has and how to add one.
    let out = Command::new(meridian_bin())
        .arg("up")
        .arg(&region_path)
        .args(["--broker", "9"])
        .output()
        .expect("run up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "has no broker 9 (it has 1, 2, 3); to add one, give it a [[broker]] with id = 9"
        ),
        "{stderr}"
    );

    let logged = region.stop();
    // Brokers started one after another are not errors (openraft logged each vote
    // request to a broker not yet up).
    let errors: Vec<&String> = logged.iter().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "errors logged:\n{errors:#?}");
}

/// Kafka clients in a region (`kafka_listen` on each broker): every broker registers
/// its Kafka listener with the controller, so a Kafka client that bootstraps from
/// any one broker is sent to each partition's leader and to its group's coordinator
/// at their own Kafka listeners, wherever those are.
#[test]
fn kafka_clients_reach_every_broker_of_a_region() {
    use crate::kafka::{fetch_all, kafka_client, kafka_python_group, record, Raw};
    use kafka_protocol::messages::{self as k, ApiKey};
    use kafka_protocol::protocol::StrBytes;
    use rskafka::client::partition::{Compression, UnknownTopicHandling};

    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(3);
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let region = UpRegion::start(&region_file_with(dir.path(), "", |id| {
        format!("settings = {{ kafka_listen = \"{}\" }}\n", addrs[id - 1])
    }));
    assert_eq!(region.kafka.as_deref(), Some(addrs.join(",").as_str()));
    region.create_topic(
        &[
            "topic",
            "create",
            "k-orders",
            "--partitions",
            "6",
            "--replication-factor",
            "3",
        ],
        &["--ca", &region.cert],
    );

    // Metadata through broker 3's Kafka listener names all three brokers at their
    // Kafka listeners, with their racks, once each has registered.
    let deadline = Instant::now() + Duration::from_secs(60);
    let metadata = loop {
        let mut raw = Raw::connect(&addrs[2]);
        raw.send(
            ApiKey::Metadata,
            12,
            &k::MetadataRequest::default().with_topics(None),
        );
        let r: k::MetadataResponse = raw.receive(ApiKey::Metadata, 12);
        let led = r
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| &*n.0 == "k-orders"))
            .is_some_and(|t| {
                t.partitions.len() == 6 && t.partitions.iter().all(|p| p.leader_id.0 > 0)
            });
        if r.brokers.len() == 3 && led {
            break r;
        }
        assert!(Instant::now() < deadline, "the region never settled: {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut brokers: Vec<(i32, String, i32, Option<String>)> = metadata
        .brokers
        .iter()
        .map(|b| {
            (
                b.node_id.0,
                b.host.to_string(),
                b.port,
                b.rack.as_ref().map(|r| r.to_string()),
            )
        })
        .collect();
    brokers.sort();
    let expected: Vec<(i32, String, i32, Option<String>)> = (1..=3)
        .map(|id| {
            (
                id,
                "127.0.0.1".to_string(),
                i32::from(ports[id as usize - 1]),
                Some(format!("r{id}")),
            )
        })
        .collect();
    assert_eq!(brokers, expected);
    let leaders: std::collections::BTreeSet<i32> = metadata
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.leader_id.0))
        .collect();
    assert!(
        leaders.len() >= 2,
        "leaders spread over brokers: {leaders:?}"
    );

    // Every broker names the same coordinator for a group, at its Kafka listener.
    let deadline = Instant::now() + Duration::from_secs(60);
    for addr in &addrs {
        let find =
            k::FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("billing"));
        let r = loop {
            let mut raw = Raw::connect(addr);
            raw.send(ApiKey::FindCoordinator, 3, &find);
            let r: k::FindCoordinatorResponse = raw.receive(ApiKey::FindCoordinator, 3);
            if r.error_code == 0 {
                break r;
            }
            // The offsets topic is created once enough brokers are live.
            assert!(Instant::now() < deadline, "no coordinator: {r:?}");
            std::thread::sleep(Duration::from_millis(200));
        };
        let id = r.node_id.0;
        assert_eq!(
            (&*r.host, r.port),
            ("127.0.0.1", i32::from(ports[id as usize - 1])),
            "{r:?}"
        );
    }

    // rskafka, bootstrapping from broker 1, writes to and reads from each
    // partition's leader.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = kafka_client(&addrs[0]).await;
        for p in 0..6 {
            let partition = client
                .partition_client("k-orders", p, UnknownTopicHandling::Retry)
                .await
                .unwrap();
            let first = p as usize * 50;
            let records = (first..first + 50).map(record).collect();
            let offsets = partition.produce(records, Compression::Zstd).await.unwrap();
            assert_eq!(offsets, (0..50).collect::<Vec<i64>>());
            let got = fetch_all(&partition, 0).await;
            let values: Vec<Option<Vec<u8>>> = got.into_iter().map(|(_, r)| r.value).collect();
            let expected: Vec<Option<Vec<u8>>> =
                (first..first + 50).map(|i| record(i).value).collect();
            assert_eq!(values, expected, "partition {p}");
        }
    });
    // Meridian's CLI reads what the Kafka client wrote.
    let (ok, out, err) = region.cli(
        &["consume", "k-orders", "--from", "earliest", "-n", "300"],
        "",
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("value-")).count(),
        300,
        "{out}"
    );

    // kafka-python's producer and group, with the region's bootstrap list: its
    // topic replicated three ways, its group on whichever broker coordinates it.
    if let Some(summary) = kafka_python_group(region.kafka.as_deref().unwrap(), 3) {
        let (ok, described, err) = region.cli(&["group", "describe", "py-group"], "");
        assert!(ok, "{err}");
        for (partition, offset) in summary["committed"].as_object().unwrap() {
            assert!(
                described.lines().any(|l| {
                    let words: Vec<&str> = l.split_whitespace().collect();
                    words.contains(&"py-orders")
                        && words.contains(&partition.as_str())
                        && words.contains(&offset.to_string().as_str())
                }),
                "partition {partition} at {offset} not in:\n{described}"
            );
        }
    }

    // kafka-python's admin client, as Kafka's replica tools: a partition moved onto
    // another broker and watched until done, refusals, the logs on the new replicas
    // only, the preferred leader elected, an unclean election not needed
    // (ELECTION_NOT_NEEDED, 84: the partition has a leader).
    let bootstrap = region.kafka.as_deref().unwrap();
    if let Some(seen) = crate::kafka::kafka_python("replicas_admin.py", &[bootstrap]) {
        assert_eq!(
            seen,
            serde_json::json!({
                "moved": {"py-moving/0": null},
                "unknown_broker": {"py-moving/0": "InvalidReplicationAssignmentError"},
                "cancel_none": {"py-moving/0": "NoReassignmentInProgressError"},
                "leader_is_preferred": true,
                "unclean": [[84, true]]
            })
        );
        let (ok, listed, err) = region.cli(&["partition", "list", "py-moving", "--json"], "");
        assert!(ok, "{err}");
        let listed: serde_json::Value = serde_json::from_str(&listed).expect(&listed);
        assert_eq!(
            listed[0]["reassignment"],
            serde_json::Value::Null,
            "{listed}"
        );
        assert_eq!(listed[0]["replicas"].as_array().map(Vec::len), Some(2));
    }

    // The legacy AlterConfigs replaces a topic's settings through whichever broker
    // it reaches (the controller's change, sent on by the others): each time only
    // the setting just given is the topic's own.
    let replacements = [
        ("retention.ms", "3600000"),
        ("segment.ms", "600000"),
        ("retention.ms", "7200000"),
    ];
    for (addr, (key, value)) in addrs.iter().zip(replacements) {
        use k::alter_configs_request::{AlterConfigsResource, AlterableConfig};
        let request =
            k::AlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("k-orders"))
                .with_configs(vec![AlterableConfig::default()
                    .with_name(StrBytes::from_static_str(key))
                    .with_value(Some(StrBytes::from_static_str(value)))])]);
        let mut raw = Raw::connect(addr);
        raw.send(ApiKey::AlterConfigs, 1, &request);
        let r: k::AlterConfigsResponse = raw.receive(ApiKey::AlterConfigs, 1);
        assert_eq!(r.responses.len(), 1, "{r:?}");
        assert_eq!(r.responses[0].error_code, 0, "{r:?} through {addr}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (ok, out, err) = region.cli(&["topic", "describe", "k-orders", "--json"], "");
            assert!(ok, "{err}");
            let described: serde_json::Value = serde_json::from_str(&out).expect(&out);
            let own: Vec<(&String, &serde_json::Value)> = described["configs"]
                .as_object()
                .unwrap_or_else(|| panic!("no configs in {out}"))
                .iter()
                .filter(|(_, c)| c["default"] == false)
                .map(|(k, c)| (k, &c["value"]))
                .collect();
            if own == [(&key.to_string(), &serde_json::json!(value))] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after replacing with {key}={value} through {addr}: {own:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    let logged = region.stop();
    let errors: Vec<&String> = logged.iter().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "errors logged:\n{errors:#?}");
}

/// A region whose brokers require client certificates (`tls_client_ca`) and follow
/// an `acl_file`: they show their own certificate to each other, so the metadata
/// quorum, replication and acks=all work as before; a client with a certificate
/// from the CA produces and consumes what the rules allow it, one the rules do not
/// name is refused, and one without a certificate is refused at the handshake.
#[test]
fn a_region_requiring_client_certificates_still_replicates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    crate::tls::ca_with(&certs, &["alice", "bob"]);
    let acl_file = dir.path().join("acl.toml");
    std::fs::write(
        &acl_file,
        "[[allow]]\nprincipals = [\"alice\"]\noperations = [\"all\"]\ntopics = [\"secured\"]\n",
    )
    .unwrap();
    // The region's shared identity, signed by the CA (`meridian up` keeps what it
    // finds in <data_dir>/tls).
    let certs_dir = certs.to_str().unwrap();
    crate::tls::cert(&[
        "create",
        "region",
        "--dir",
        certs_dir,
        "--host",
        "127.0.0.1",
        "--host",
        "localhost",
    ]);
    let tls = dir.path().join("region/tls");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::copy(certs.join("region.pem"), tls.join("cert.pem")).unwrap();
    std::fs::copy(certs.join("region.key"), tls.join("key.pem")).unwrap();
    let ca = certs.join("ca.pem");
    let region = UpRegion::start(&region_file(
        dir.path(),
        &format!(
            "tls_client_ca = \"{}\"\nacl_file = \"{}\"",
            ca.display(),
            acl_file.display()
        ),
    ));
    let (ca, alice_pem, alice_key) = (
        ca.to_str().unwrap().to_owned(),
        certs.join("alice.pem").to_str().unwrap().to_owned(),
        certs.join("alice.key").to_str().unwrap().to_owned(),
    );
    let alice = ["--ca", &ca, "--cert", &alice_pem, "--key", &alice_key];
    region.create_topic(&["topic", "create", "secured", "--partitions", "2"], &alice);
    let (ok, out, err) = region.cli_with(&["topic", "describe", "secured"], "", &alice);
    assert!(ok && out.contains("replication-factor: 3"), "{out}{err}");
    let (ok, _, err) = region.cli_with(
        &["produce", "secured", "--acks", "all"],
        "a\nb\nc\n",
        &alice,
    );
    assert!(ok, "{err}");
    let (ok, out, err) = region.cli_with(
        &["consume", "secured", "--from", "earliest", "-n", "3"],
        "",
        &alice,
    );
    assert!(ok, "{err}");
    let mut values: Vec<&str> = out.lines().collect();
    values.sort();
    assert_eq!(values, ["a", "b", "c"]);
    let (bob_pem, bob_key) = (
        certs.join("bob.pem").to_str().unwrap().to_owned(),
        certs.join("bob.key").to_str().unwrap().to_owned(),
    );
    let bob = ["--ca", &ca, "--cert", &bob_pem, "--key", &bob_key];
    let (ok, _, err) = region.cli_with(&["produce", "secured"], "x\n", &bob);
    assert!(
        !ok && err.contains(
            "TopicAuthorizationFailed: client `bob` may not describe topic `secured` (acl_file)"
        ),
        "{err}"
    );
    let (ok, _, err) = region.cli_with(&["topic", "list"], "", &["--ca", &ca]);
    assert!(
        !ok && err.contains("requires a client certificate"),
        "{err}"
    );
    // SIGHUP to `meridian up` reaches every broker: each re-reads the rules, which
    // now let bob write too (without a handler the signal would end `up` and leave
    // its brokers unattended).
    std::fs::write(
        &acl_file,
        "[[allow]]\nprincipals = [\"alice\", \"bob\"]\noperations = [\"all\"]\ntopics = [\"secured\"]\n",
    )
    .unwrap();
    region.signal(rustix::process::Signal::HUP);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, _, err) = region.cli_with(&["produce", "secured", "--acks", "all"], "x\n", &bob);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "bob still refused: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let logged = region.stop();
    for id in 1..=3 {
        assert!(
            logged
                .iter()
                .any(|l| l.starts_with(&format!("[broker-{id}]"))
                    && l.contains("SIGHUP: reloaded acl_file")),
            "broker {id} did not reload its acl_file:\n{logged:#?}"
        );
    }
    let refused: Vec<&String> = logged
        .iter()
        .filter(|l| l.contains("refused a client's certificate"))
        .collect();
    // The CLI without a certificate, at each bootstrap broker it tried; never a
    // broker's connection to a peer.
    assert!(
        (1..=3).contains(&refused.len()) && refused.iter().all(|l| l.contains("error 116")),
        "only the CLI without a certificate:\n{refused:#?}"
    );
    // A broker whose peers refused it (its replica fetchers, its controller
    // connections) would say so in a warning.
    let peer_refusals: Vec<&String> = logged
        .iter()
        .filter(|l| l.contains("client certificate") && !l.contains("refused a client's"))
        .collect();
    assert!(peer_refusals.is_empty(), "{peer_refusals:#?}");
    let errors: Vec<&String> = logged.iter().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "errors logged:\n{errors:#?}");
}
