//! The `meridian` CLI as a user drives it: topics, produce from stdin, consume.

use crate::harness::TestBroker;

fn ok(result: (bool, String, String)) -> String {
    let (success, stdout, stderr) = result;
    assert!(
        success,
        "command failed:\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

#[test]
fn topic_produce_consume_tour() {
    let broker = TestBroker::start(&["default_partitions=2"]);
    let out = ok(broker.cli(
        &[
            "topic",
            "create",
            "demo",
            "--partitions",
            "3",
            "--config",
            "retention.ms=60000",
        ],
        "",
    ));
    assert!(
        out.contains("created topic demo with 3 partition(s), replication factor 1"),
        "{out}"
    );
    // Without flags: the broker's default_partitions, and the one replica a single
    // broker has.
    let out = ok(broker.cli(&["topic", "create", "plain"], ""));
    assert!(
        out.contains("created topic plain with 2 partition(s), replication factor 1"),
        "{out}"
    );
    ok(broker.cli(&["topic", "delete", "plain"], ""));
    // An explicit zero is a mistake, not a request for the default (which the wire
    // encodes as 0): refused before anything is sent.
    for flag in ["--partitions", "--replication-factor"] {
        let (success, _, stderr) = broker.cli(&["topic", "create", "zero", flag, "0"], "");
        assert!(
            !success && stderr.contains("not in 1.."),
            "{flag}: {stderr}"
        );
    }
    assert_eq!(ok(broker.cli(&["topic", "list"], "")), "demo\n");
    // Scripts that set topics up run again: an existing topic or a missing one is
    // an error unless asked otherwise, and then it is left as it is.
    let (success, _, stderr) = broker.cli(&["topic", "create", "demo", "-p", "5"], "");
    assert!(
        !success && stderr.contains("TopicAlreadyExists"),
        "{stderr}"
    );
    let out = ok(broker.cli(
        &["topic", "create", "demo", "-p", "5", "--if-not-exists"],
        "",
    ));
    assert!(
        out.contains("topic demo already exists with 3 partition(s), replication factor 1"),
        "{out}"
    );
    let out = ok(broker.cli(&["topic", "create", "again", "--if-not-exists"], ""));
    assert!(out.contains("created topic again"), "{out}");
    let (success, _, stderr) = broker.cli(&["topic", "delete", "gone"], "");
    assert!(!success && stderr.contains("UnknownTopic"), "{stderr}");
    let out = ok(broker.cli(&["topic", "delete", "gone", "--if-exists"], ""));
    assert!(out.contains("topic gone does not exist"), "{out}");
    let out = ok(broker.cli(&["topic", "delete", "again", "--if-exists"], ""));
    assert!(out.contains("deleted topic again"), "{out}");
    assert_eq!(ok(broker.cli(&["topic", "list"], "")), "demo\n");

    let described = ok(broker.cli(&["topic", "describe", "demo"], ""));
    for needle in [
        "partitions: 3",
        "retention.ms",
        "60000",
        "retention.bytes",
        "segment.bytes",
        "max.message.bytes",
        "cleanup.policy",
        "delete  (default)",
    ] {
        assert!(
            described.contains(needle),
            "describe lacks `{needle}`:\n{described}"
        );
    }
    // One column of values, however long the longest key
    // (`unclean.leader.election.enable`).
    let value_columns: std::collections::BTreeSet<usize> = described
        .lines()
        .skip_while(|l| *l != "configs:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            let key = l.trim_start().split(' ').next().unwrap();
            let after_key = l.find(key).unwrap() + key.len();
            after_key + (l[after_key..].len() - l[after_key..].trim_start().len())
        })
        .collect();
    assert_eq!(value_columns.len(), 1, "{described}");

    // Keyed lines, explicit compression and acks, offsets printed with -v.
    let input = "a:1\nb:2\na:3\nc:4\n";
    let out = ok(broker.cli(
        &[
            "produce",
            "demo",
            "-K",
            ":",
            "--compression",
            "zstd",
            "--acks",
            "all",
            "-v",
            "-H",
            "source=cli",
            "--header",
            "trace=a=7",
        ],
        input,
    ));
    let acks: Vec<(u32, i64)> = out
        .lines()
        .map(|l| {
            let mut parts = l.split_whitespace();
            (
                parts.next().unwrap().parse().unwrap(),
                parts.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(acks.len(), 4, "{out}");
    assert_eq!(acks[0].0, acks[2].0, "same key, same partition");

    // Values only, everything, then stop at the end.
    let values = ok(broker.cli(&["consume", "demo", "--from", "earliest"], ""));
    let mut values: Vec<&str> = values.lines().collect();
    values.sort();
    assert_eq!(values, ["1", "2", "3", "4"]);

    let json = ok(broker.cli(&["consume", "demo", "--format", "json"], ""));
    let records: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 4);
    let a: Vec<&serde_json::Value> = records.iter().filter(|r| r["key"] == "a").collect();
    assert_eq!(a.len(), 2);
    assert!(a.iter().all(|r| r["partition"] == acks[0].0
        && r["topic"] == "demo"
        && r["timestamp"].as_i64().unwrap() > 0));
    // -H puts the same headers on every record (split at the first `=`).
    assert!(
        records
            .iter()
            .all(|r| r["headers"] == serde_json::json!({"source": "cli", "trace": "a=7"})),
        "{json}"
    );
    // JSON lines go back in: a copy keeps partitions, offsets, timestamps, keys,
    // values and headers.
    ok(broker.cli(&["topic", "create", "copy", "-p", "3"], ""));
    ok(broker.cli(
        &["produce", "copy", "--format", "json", "--keep-partition"],
        &json,
    ));
    let copied = ok(broker.cli(&["consume", "copy", "--format", "json"], ""));
    let without_topic = |lines: &str| {
        let mut records: Vec<serde_json::Value> = lines
            .lines()
            .map(|l| {
                let mut r: serde_json::Value = serde_json::from_str(l).unwrap();
                r.as_object_mut().unwrap().remove("topic");
                r
            })
            .collect();
        records.sort_by_key(|r| (r["partition"].as_u64(), r["offset"].as_u64()));
        records
    };
    assert_eq!(without_topic(&copied), without_topic(&json));
    let (success, _, stderr) = broker.cli(
        &["produce", "copy", "--format", "json"],
        "{\"value\": \"ok\"}\n{\"value\": \n",
    );
    assert!(!success && stderr.contains("line 2 of stdin"), "{stderr}");
    for (args, why) in [
        (&["--keep-partition"][..], "add --format json"),
        (&["--format", "json", "-K", ":"][..], "carry their own key"),
    ] {
        let mut cmd = vec!["produce", "copy"];
        cmd.extend_from_slice(args);
        let (success, _, stderr) = broker.cli(&cmd, "x\n");
        assert!(!success && stderr.contains(why), "{stderr}");
    }
    ok(broker.cli(&["topic", "delete", "copy"], ""));
    // -Z: an empty value is null (a tombstone for a compacted topic's key).
    ok(broker.cli(&["topic", "create", "kv", "-p", "1"], ""));
    ok(broker.cli(&["produce", "kv", "-K", ":", "-Z"], "a:1\nb:\n"));
    ok(broker.cli(&["produce", "kv", "-K", ":"], "c:\n"));
    let values: Vec<serde_json::Value> = ok(broker.cli(&["consume", "kv", "-f", "json"], ""))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["value"].clone())
        .collect();
    assert_eq!(
        values,
        [
            serde_json::json!("1"),
            serde_json::Value::Null,
            serde_json::json!("")
        ]
    );
    ok(broker.cli(&["topic", "delete", "kv"], ""));

    let full = ok(broker.cli(
        &[
            "consume",
            "demo",
            "--format",
            "full",
            "-p",
            &acks[0].0.to_string(),
        ],
        "",
    ));
    let first: Vec<&str> = full.lines().next().unwrap().split('\t').collect();
    assert_eq!(first[0], acks[0].0.to_string());
    assert_eq!(first[3], "a");
    assert_eq!(first[4], "1");

    // A kcat-style template.
    let templated = ok(broker.cli(
        &[
            "consume",
            "demo",
            "-p",
            &acks[0].0.to_string(),
            "-n",
            "1",
            "--format",
            r"%t/%p@%o %k=%s [%h]\n",
        ],
        "",
    ));
    assert_eq!(
        templated,
        format!(
            "demo/{}@{} a=1 [source=cli,trace=a=7]\n",
            acks[0].0, acks[0].1
        )
    );
    let (success, _, stderr) = broker.cli(&["consume", "demo", "--format", "%q"], "");
    assert!(!success && stderr.contains("unknown field %q"), "{stderr}");

    // -N: the last N offsets of each partition, never before the log start.
    let a_partition = acks[0].0.to_string();
    let last =
        |from: &str| ok(broker.cli(&["consume", "demo", "-p", &a_partition, "--from", from], ""));
    // The values in that partition, in offset order (line i of the input was i + 1).
    let mut held: Vec<(i64, String)> = (0..acks.len())
        .filter(|&i| acks[i].0 == acks[0].0)
        .map(|i| (acks[i].1, format!("{}\n", i + 1)))
        .collect();
    held.sort();
    let held: Vec<String> = held.into_iter().map(|(_, v)| v).collect();
    assert!(held.len() >= 2, "{acks:?}");
    assert_eq!(last("-1"), held[held.len() - 1]);
    assert_eq!(last("-2"), held[held.len() - 2..].concat());
    assert_eq!(last("-10"), held.concat());
    assert_eq!(last("-0"), "");
    let non_empty = acks
        .iter()
        .map(|(p, _)| p)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let tails = ok(broker.cli(&["consume", "demo", "--from", "-1"], ""));
    assert_eq!(tails.lines().count(), non_empty, "{tails}");

    // --until: before an offset, or before the first record at or after a time.
    let window = |from: &str, until: &str| {
        ok(broker.cli(
            &[
                "consume",
                "demo",
                "-p",
                &a_partition,
                "--from",
                from,
                "--until",
                until,
            ],
            "",
        ))
    };
    assert_eq!(window("earliest", "1"), held[0]);
    assert_eq!(window("1", "2"), held[1]);
    assert_eq!(window("earliest", "@0"), "");
    assert_eq!(window("earliest", "@99999999999999"), held.concat());
    assert_eq!(window("2", "1"), "");
    let (success, _, stderr) = broker.cli(&["consume", "demo", "--until", "1", "--follow"], "");
    assert!(
        !success && stderr.contains("cannot be used with"),
        "{stderr}"
    );

    // -n and --from OFFSET on one partition.
    ok(broker.cli(&["produce", "demo", "--partition", "0"], "x0\nx1\nx2\nx3\n"));
    let some = ok(broker.cli(&["consume", "demo", "-p", "0", "--from", "latest"], ""));
    assert_eq!(some, "", "latest without --follow prints nothing");
    let n = ok(broker.cli(
        &[
            "consume", "demo", "-p", "0", "-n", "2", "--from", "earliest",
        ],
        "",
    ));
    assert_eq!(n.lines().count(), 2);

    // Errors are clear and exit non-zero.
    let (success, _, stderr) = broker.cli(&["produce", "nope"], "x\n");
    assert!(!success);
    assert!(stderr.contains("UnknownTopic"), "{stderr}");
    let (success, _, stderr) = broker.cli(&["consume", "demo", "--from", "yesterday"], "");
    assert!(!success);
    assert!(stderr.contains("expected earliest, latest"), "{stderr}");

    ok(broker.cli(&["topic", "delete", "demo"], ""));
    assert_eq!(ok(broker.cli(&["topic", "list"], "")), "");
}

#[test]
fn consume_follow_tails_new_records() {
    use std::process::Stdio;
    let broker = TestBroker::start(&[]);
    ok(broker.cli(&["topic", "create", "tail"], ""));
    let mut follower = broker
        .cli_command(&["consume", "tail", "--follow", "--from", "earliest"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Lines arrive on a channel so a missing line fails the test instead of hanging it.
    let rx = crate::harness::stdout_lines(&mut follower);
    let next = || {
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("the follower printed nothing")
    };
    ok(broker.cli(&["produce", "tail"], "one\ntwo\n"));
    assert_eq!(next(), "one");
    assert_eq!(next(), "two");
    // Records produced after the follower caught up arrive too: it tails.
    ok(broker.cli(&["produce", "tail"], "three\n"));
    assert_eq!(next(), "three");
    assert!(
        follower.try_wait().unwrap().is_none(),
        "--follow must keep running"
    );
    let _ = follower.kill();
    let _ = follower.wait();
}

/// `meridian produce TOPIC -v` with its stdin, and its stdout's lines (partition
/// and offset of each record) on a channel, so a missing line fails a test instead
/// of hanging it.
fn verbose_producer(
    broker: &TestBroker,
    topic: &str,
    stderr: std::process::Stdio,
) -> (
    std::process::Child,
    std::process::ChildStdin,
    std::sync::mpsc::Receiver<String>,
) {
    use std::process::Stdio;
    let mut producer = broker
        .cli_command(&["produce", topic, "-v"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let rx = crate::harness::stdout_lines(&mut producer);
    let stdin = producer.stdin.take().unwrap();
    (producer, stdin, rx)
}

#[test]
fn a_producer_waiting_for_a_leader_sleeps_until_one_is_known() {
    use std::io::Write;
    use std::process::Stdio;
    use std::time::Duration;
    let mut broker = TestBroker::start(&[]);
    ok(broker.cli(&["topic", "create", "waits"], ""));
    let (mut producer, mut stdin, rx) = verbose_producer(&broker, "waits", Stdio::null());
    writeln!(stdin, "one").unwrap();
    let acked = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the first record was not acknowledged");
    assert_eq!(acked, "0 0", "partition and offset of the first record");
    // The only broker dies: the next record's partition has no reachable leader
    // until the delivery timeout (2 minutes by default).
    broker.kill9();
    writeln!(stdin, "two").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let before = crate::harness::process_cpu(producer.id());
    std::thread::sleep(Duration::from_secs(3));
    let used = crate::harness::process_cpu(producer.id()) - before;
    let _ = producer.kill();
    let _ = producer.wait();
    // Waiting means a metadata request per retry backoff, not a sender task woken
    // over and over by the record's linger, long past (it took 80-100 % of a core).
    assert!(
        used < Duration::from_millis(600),
        "the producer used {used:?} of CPU in 3 s while waiting for a leader"
    );
}

#[test]
fn a_producer_that_lost_its_broker_before_its_first_record_delivers_it_once_back() {
    use std::io::Write;
    use std::process::Stdio;
    use std::time::Duration;
    let mut broker = TestBroker::start(&[]);
    ok(broker.cli(&["topic", "create", "back"], ""));
    let (producer, mut stdin, rx) = verbose_producer(&broker, "back", Stdio::piped());
    // Connected, knowing nothing of the topic yet, when the broker dies: the first
    // record's send has to learn the partition count while no broker answers.
    std::thread::sleep(Duration::from_millis(500));
    broker.kill9();
    writeln!(stdin, "late").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    broker.restart();
    let acked = rx.recv_timeout(Duration::from_secs(30));
    drop(stdin);
    let out = producer.wait_with_output().unwrap();
    assert_eq!(
        acked.as_deref(),
        Ok("0 0"),
        "the record was not delivered; the producer said: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    let consumed = ok(broker.cli(&["consume", "back", "--from", "earliest", "-n", "1"], ""));
    assert_eq!(consumed, "late\n");
}

#[test]
fn a_broker_with_a_bad_worker_thread_count_says_so_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::harness::meridian_bin())
        .args(["broker", "--data-dir", "d", "--listen", "127.0.0.1:0"])
        .args(["--set", "worker_threads=5000"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("worker_threads must be at most 1024"),
        "{stderr}"
    );
}

/// `meridian dev` in `dir` with `args`; returns it and what it printed up to its
/// "From elsewhere" line.
pub(crate) fn start_dev(dir: &std::path::Path, args: &[&str]) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut dev = Command::new(crate::harness::meridian_bin())
        .arg("dev")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    while !printed.contains("From elsewhere:") {
        printed.push_str(&lines.next().unwrap().unwrap());
        printed.push('\n');
    }
    (dev, printed)
}

/// Runs the commands `meridian dev` printed under "Try, from this directory" as a
/// shell script in `dir`, as printed; returns their output.
fn run_dev_tour(dir: &std::path::Path, printed: &str) -> String {
    let script: String = printed
        .split("Try, from this directory:\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|line| line.starts_with("  "))
        .map(|line| format!("{}\n", line.trim()))
        .collect();
    let bin_dir = crate::harness::meridian_bin().parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let out = succeeded(
        std::process::Command::new("sh")
            .args(["-e", "-c", &script])
            .env("PATH", path)
            .current_dir(dir),
    );
    String::from_utf8(out).unwrap()
}

#[test]
fn dev_command_prints_address_and_fingerprint_and_generates_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dev, printed) = start_dev(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--set", "worker_threads=3"],
    );
    assert!(printed.contains("listening on 127.0.0.1:"), "{printed}");
    assert!(printed.contains("(generated, self-signed)"), "{printed}");
    // The runtime is sized by the config, read before it starts.
    assert!(
        printed.contains("workers:     3 async worker threads"),
        "{printed}"
    );
    assert!(dir.path().join("meridian-data/tls/cert.pem").exists());
    let addr = printed
        .split(" listening on ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    // From the same directory the CLI finds the dev certificate by itself; the port
    // is not the default one, so the tour sets the address first.
    assert!(
        printed.contains(&format!("  export MERIDIAN_BOOTSTRAP={addr}\n")),
        "{printed}"
    );
    let out = run_dev_tour(dir.path(), &printed);
    assert!(out.contains(r#""value":"5""#), "{out}");
    let _ = dev.kill();
    let _ = dev.wait();
}

/// A dev broker whose certificate is not under ./meridian-data and which requires
/// client certificates prints a tour that works as printed, with a client
/// certificate made beside the CA; without one it says how to make one.
#[test]
fn dev_tour_names_what_reaching_the_broker_takes() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs = certs.to_str().unwrap();
    meridian_in(dir.path(), &["cert", "create-ca", "--dir", certs]);
    let data_dir = elsewhere.path().to_str().unwrap();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir,
        "--set",
        "tls_client_ca=certs/ca.pem",
    ];
    // No client certificate yet (the broker's own, made beside the CA as README's
    // region recipe does, is not one to hand clients): where one goes, and the
    // command that makes it.
    meridian_in(
        dir.path(),
        &[
            "cert",
            "create",
            "region",
            "--dir",
            certs,
            "--host",
            "127.0.0.1",
        ],
    );
    let mut own = args.to_vec();
    own.extend([
        "--set",
        "tls_cert=certs/region.pem",
        "--set",
        "tls_key=certs/region.key",
    ]);
    let (mut dev, printed) = start_dev(dir.path(), &own);
    assert!(
        printed.contains(
            "present a certificate signed by certs/ca.pem (`meridian cert create NAME --dir certs` makes one)"
        ),
        "{printed}"
    );
    assert!(
        printed.contains("MERIDIAN_CERT=certs/NAME.pem MERIDIAN_KEY=certs/NAME.key"),
        "{printed}"
    );
    assert!(
        printed.contains("--cert certs/NAME.pem --key certs/NAME.key\n"),
        "{printed}"
    );
    let _ = dev.kill();
    let _ = dev.wait();

    meridian_in(dir.path(), &["cert", "create", "alice", "--dir", certs]);
    let (mut dev, printed) = start_dev(dir.path(), &args);
    assert!(printed.contains("MERIDIAN_CA="), "{printed}");
    assert!(
        printed.contains("MERIDIAN_CERT=certs/alice.pem MERIDIAN_KEY=certs/alice.key"),
        "{printed}"
    );
    assert!(
        printed.contains("--cert certs/alice.pem --key certs/alice.key\n"),
        "{printed}"
    );
    let out = run_dev_tour(dir.path(), &printed);
    assert!(out.contains(r#""value":"5""#), "{out}");
    let _ = dev.kill();
    let _ = dev.wait();
}

/// `meridian bench ARGS --json`, run in `dir`: its summary.
fn bench_json(dir: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(crate::harness::meridian_bin())
        .arg("bench")
        .args(args)
        .arg("--json")
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

/// A bench that starts its broker splits the cores with it, reports the split, and
/// leaves a `worker_threads` given with --broker-set alone.
#[test]
fn bench_produce_splits_the_cores_with_the_broker_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cpu_of = |extra: &[&str]| -> String {
        let args = [
            "produce",
            "--records",
            "2000",
            "--record-size",
            "128",
            "--partitions",
            "2",
        ];
        let summary = bench_json(dir.path(), &[&args, extra].concat());
        summary["cpu_of"].as_str().unwrap().to_string()
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (client, broker) = ((cores / 2).max(1), (cores - (cores / 2).max(1)).max(1));
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    assert_eq!(
        cpu_of(&[]),
        format!(
            "the bench ({client} runtime thread{}) and broker ({broker} worker{}) processes",
            plural(client),
            plural(broker)
        )
    );
    assert_eq!(
        cpu_of(&["--client-threads", "3", "--broker-set", "worker_threads=2"]),
        "the bench (3 runtime threads) and broker (2 workers) processes"
    );
}

/// A bench load that takes well under a second.
const SMALL_LOAD: [&str; 6] = [
    "--records",
    "3000",
    "--record-size",
    "100",
    "--partitions",
    "2",
];

/// Produce and consume benches say how many requests carried their records.
#[test]
fn bench_produce_and_consume_count_their_requests() {
    let dir = tempfile::tempdir().unwrap();
    let bench = |args: &[&str]| -> String {
        let out = std::process::Command::new(crate::harness::meridian_bin())
            .arg("bench")
            .args(args)
            .args(SMALL_LOAD)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}");
        stdout
    };
    let produced: serde_json::Value =
        serde_json::from_str(bench(&["produce", "--json", "--linger-ms", "0"]).trim()).unwrap();
    let requests = produced["requests"].as_u64().unwrap();
    // At least a request per partition; fewer than one per record at full speed
    // would also pass, more than one per record would not.
    assert!((2..=3000).contains(&requests), "{produced}");
    let line = bench(&["consume"]);
    let fetches: u64 = line
        .split(" fetch requests (")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fetch request count in {line}"));
    assert!((1..3000).contains(&fetches), "{line}");
}

/// Under flush=always the produce bench reports the fdatasyncs of the broker it
/// started (read from its metrics): the flush size `bench disk` compares at.
#[test]
fn bench_produce_reports_the_brokers_fdatasyncs_under_flush_always() {
    let dir = tempfile::tempdir().unwrap();
    let bench = |extra: &[&str]| {
        let args = [&["produce", "--acks", "all"][..], &SMALL_LOAD, extra].concat();
        bench_json(dir.path(), &args)
    };
    let always = bench(&["--broker-set", "flush=always"]);
    let (asked, fsyncs) = (
        always["broker_sync_requests"].as_u64().unwrap_or(0),
        always["broker_fsyncs"].as_u64().unwrap_or(0),
    );
    let requests = always["requests"].as_u64().unwrap();
    // A sync per partition of each produce request, each covered by an fdatasync.
    assert!(
        fsyncs >= 1 && fsyncs <= asked && asked <= 2 * requests,
        "{always}"
    );
    assert!(
        always["broker_fsync_seconds"].as_f64().unwrap() > 0.0,
        "{always}"
    );
    // The default flush fsyncs once a minute: a short run reports none.
    let default = bench(&[]);
    assert!(default.get("broker_fsyncs").is_none(), "{default}");
}

#[test]
fn bench_ratio_runs_each_bench_and_relates_the_medians() {
    let dir = tempfile::tempdir().unwrap();
    let summary = bench_json(
        dir.path(),
        &[
            "ratio",
            "--rounds",
            "2",
            "--flush",
            "--transport-bytes",
            "16777216",
            "--records",
            "20000",
            "--partitions",
            "2",
            "--record-size",
            "256",
        ],
    );
    let rounds = summary["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{summary:#}");
    let field = |round: &serde_json::Value, name: &str| round[name].as_f64().unwrap();
    for round in rounds {
        for name in [
            "transport_mib_per_sec",
            "consume_mib_per_sec",
            "produce_mib_per_sec",
        ] {
            assert!(field(round, name) > 0.0, "{summary:#}");
        }
    }
    // Two rounds: each median is the mean of the two runs.
    let mean = |name: &str| (field(&rounds[0], name) + field(&rounds[1], name)) / 2.0;
    let transport = mean("transport_mib_per_sec");
    assert!((field(&summary, "transport_median") - transport).abs() < 1e-6);
    let produce_ratio = mean("produce_mib_per_sec") / transport;
    assert!(
        (field(&summary, "produce_ratio") - produce_ratio).abs() < 1e-9,
        "{summary:#}"
    );
    let consume_ratio = mean("consume_mib_per_sec") / transport;
    assert!(
        (field(&summary, "consume_ratio") - consume_ratio).abs() < 1e-9,
        "{summary:#}"
    );
    // --flush: flush=always against the disk at the flush size its broker had.
    for round in rounds {
        assert!(field(round, "flush_bytes_per_fsync") >= 1.0, "{summary:#}");
    }
    let flush_ratio = mean("flush_mib_per_sec") / mean("disk_mib_per_sec");
    assert!(
        (field(&summary, "flush_ratio") - flush_ratio).abs() < 1e-9,
        "{summary:#}"
    );
    assert_eq!(field(&summary, "flush_target"), 0.8);
    // Each run's CPU per GiB (read from /proc, in 10 ms ticks: a run this small may
    // read 0), and the transport's median against produce's and consume's.
    for round in rounds {
        for name in [
            "transport_cpu_seconds_per_gib",
            "consume_cpu_seconds_per_gib",
            "produce_cpu_seconds_per_gib",
        ] {
            assert!(field(round, name) >= 0.0, "{summary:#}");
        }
    }
    // What the hypervisor stole meanwhile, per round and in all (Linux's /proc/stat).
    if std::path::Path::new("/proc/stat").exists() {
        let stolen = rounds.iter().map(|r| field(r, "stolen_seconds"));
        assert!(stolen.clone().all(|s| s >= 0.0), "{summary:#}");
        let all = field(&summary, "stolen_seconds");
        assert!((all - stolen.sum::<f64>()).abs() < 1e-9, "{summary:#}");
    }
    let transport_cpu = mean("transport_cpu_seconds_per_gib");
    for what in ["produce", "consume"] {
        let cpu = mean(&format!("{what}_cpu_seconds_per_gib"));
        if cpu > 0.0 {
            let ratio = field(&summary, &format!("{what}_cpu_ratio"));
            assert!((ratio - transport_cpu / cpu).abs() < 1e-9, "{summary:#}");
        }
    }
    // The benches' brokers ran in temporary dirs of their own and are gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Runs `meridian` with `args` in `dir`; it must succeed. Returns its stdout.
fn meridian_in(dir: &std::path::Path, args: &[&str]) -> Vec<u8> {
    succeeded(
        std::process::Command::new(crate::harness::meridian_bin())
            .args(args)
            .current_dir(dir),
    )
}

/// Runs `command`; it must succeed. Returns its stdout, byte for byte.
fn succeeded(command: &mut std::process::Command) -> Vec<u8> {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn bench_disk_appends_with_and_without_fdatasync() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["bench", "disk", "--json", "--total-bytes", "1048576"];
        args.extend(["--write-bytes", "65536"]);
        args.extend(extra);
        serde_json::from_slice::<serde_json::Value>(&meridian_in(dir.path(), &args)).unwrap()
    };
    let synced = run(&[]);
    assert_eq!(synced["bytes"], 1048576, "{synced}");
    assert_eq!(synced["fsyncs"], 16, "{synced}");
    assert_eq!(synced["sync"], true, "{synced}");
    let cached = run(&["--no-sync"]);
    assert_eq!(cached["bytes"], 1048576, "{cached}");
    assert_eq!(cached["fsyncs"], 0, "{cached}");
    assert_eq!(cached["sync"], false, "{cached}");
    assert!(
        cached["cpu_seconds_per_gib"].as_f64().unwrap() >= 0.0,
        "{cached}"
    );
    if std::path::Path::new("/proc/stat").exists() {
        assert!(
            cached["stolen_seconds"].as_f64().unwrap() >= 0.0,
            "{cached}"
        );
    }
    // The appended file went with the bench's temporary dir.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// An offset past a partition's end is out of range without `--follow` too: an
/// error under the default reset policy, else a move to the start or the end (it
/// used to print nothing and succeed).
#[test]
fn consume_from_an_offset_past_the_end_is_out_of_range() {
    let broker = TestBroker::start(&[]);
    ok(broker.cli(&["topic", "create", "short"], ""));
    ok(broker.cli(&["produce", "short"], "a\nb\nc\n"));
    let (success, stdout, stderr) = broker.cli(&["consume", "short", "--from", "5"], "");
    assert!(!success, "stdout: {stdout}");
    assert!(
        stderr
            .contains("OffsetOutOfRange: short/0 at offset 5: offset 5 is outside the log [0, 3]"),
        "{stderr}"
    );
    let from_start = ok(broker.cli(
        &[
            "consume",
            "short",
            "--from",
            "5",
            "--auto-offset-reset",
            "earliest",
        ],
        "",
    ));
    assert_eq!(from_start, "a\nb\nc\n");
    let from_end = ok(broker.cli(
        &[
            "consume",
            "short",
            "--from",
            "5",
            "--auto-offset-reset",
            "latest",
        ],
        "",
    ));
    assert_eq!(from_end, "");
    // The end itself is not out of range: nothing to print, and success.
    assert_eq!(ok(broker.cli(&["consume", "short", "--from", "3"], "")), "");
    // Below the log start the consumer resets per the policy, and a reset the user
    // asked for is news, not a warning.
    ok(broker.cli(&["topic", "truncate-before", "short", "--offset", "1"], ""));
    let (success, stdout, stderr) = broker.cli(
        &[
            "consume",
            "short",
            "--from",
            "0",
            "--auto-offset-reset",
            "earliest",
        ],
        "",
    );
    assert!(success, "{stderr}");
    assert_eq!(stdout, "b\nc\n");
    let reset = stderr
        .lines()
        .find(|line| line.contains("reset per auto_offset_reset"))
        .unwrap_or_else(|| panic!("no reset logged: {stderr}"));
    assert!(
        reset.contains("INFO") && reset.contains("from=0 to=1"),
        "{reset}"
    );
    assert!(!stderr.contains("WARN"), "{stderr}");
}

/// Binary keys and values leave `meridian consume` intact: raw bytes with
/// `--format value` and `full`, `{"base64": …}` in JSON lines (they used to be
/// turned into text, every invalid byte into U+FFFD).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_prints_binary_records_without_mangling_them() {
    use meridian_client::{NewTopic, ProducerConfig, ProducerRecord};
    let broker = TestBroker::start(&[]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("bin", 1))
        .await
        .unwrap();
    let value: &[u8] = &[0x00, 0x9f, 0x92, 0x96, 0xff, b'\n', b'x'];
    client
        .producer(ProducerConfig::default())
        .send(
            ProducerRecord::new("bin", value.to_vec())
                .key(vec![0xc3u8, 0x28])
                .header("h", vec![0xfe_u8]),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let stdout =
        |format: &str| succeeded(&mut broker.cli_command(&["consume", "bin", "--format", format]));
    assert_eq!(stdout("value"), [value, b"\n"].concat());
    let full = stdout("full");
    assert!(
        full.ends_with(&[b"\t\xc3\x28\t", value, b"\n"].concat()),
        "{full:?}"
    );
    let json: serde_json::Value = serde_json::from_slice(&stdout("json")).unwrap();
    assert_eq!(json["value"], serde_json::json!({"base64": "AJ+Slv8KeA=="}));
    assert_eq!(json["key"], serde_json::json!({"base64": "wyg="}));
    assert_eq!(json["headers"]["h"], serde_json::json!({"base64": "/g=="}));
}

/// A broker whose logs go to a pipe or a file writes them without ANSI colour codes
/// (they used to fill `meridian dev > log` and service journals with escapes);
/// `CLICOLOR_FORCE=1` asks for them anyway.
#[test]
fn broker_logs_carry_colour_codes_only_when_asked_off_a_terminal() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let first_log_line = |force: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        let mut command = std::process::Command::new(crate::harness::meridian_bin());
        command
            .args(["broker", "--set", "listen=127.0.0.1:0", "--set"])
            .arg(format!("data_dir={}", dir.path().join("data").display()))
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(force) = force {
            command.env("CLICOLOR_FORCE", force);
        }
        let mut broker = command.spawn().unwrap();
        let line = BufReader::new(broker.stderr.take().unwrap())
            .lines()
            .map(Result::unwrap)
            .find(|line| line.contains("opened data dir"))
            .expect("the broker logs opening its data dir");
        let _ = broker.kill();
        let _ = broker.wait();
        line
    };
    let plain = first_log_line(None);
    assert!(!plain.contains('\u{1b}'), "{plain:?}");
    assert!(plain.contains(" INFO "), "{plain:?}");
    let coloured = first_log_line(Some("1"));
    assert!(coloured.contains("\u{1b}["), "{coloured:?}");
}

/// Starts a CLI command with no stdin and its stdout and stderr piped to the test.
fn spawn_piped(broker: &TestBroker, args: &[&str]) -> std::process::Child {
    use std::process::Stdio;
    broker
        .cli_command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Output into a pipe whose reader has gone (`| head`) ends a command quietly: no
/// panic, no error. Admin commands end as Unix tools do (killed by SIGPIPE, or
/// done); `consume` stops at the failed write and exits 0. The reader is closed
/// before the command has connected, so every write meets the closed pipe.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;

    let broker = TestBroker::start(&[]);
    ok(broker.cli(&["topic", "create", "piped", "-p", "2"], ""));
    let lines: String = (0..2000).map(|i| format!("record-{i}\n")).collect();
    ok(broker.cli(&["produce", "piped"], &lines));
    for args in [
        &["topic", "describe", "piped"][..],
        &["topic", "list"],
        &["consume", "piped", "--from", "earliest", "-n", "2000"],
        &[
            "consume", "piped", "--group", "pipers", "--from", "earliest",
        ],
    ] {
        let mut child = spawn_piped(&broker, args);
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {} {stderr}",
            out.status
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("error"),
            "{args:?}: {stderr}"
        );
    }
    // The group member left on its way out (its partitions are free at once, not
    // after its session timeout), and committed nothing it could not print.
    let described = ok(broker.cli(&["group", "describe", "pipers"], ""));
    assert!(
        described.contains("state Empty") && described.contains("0 members"),
        "{described}"
    );
    for row in described.lines().filter(|l| l.starts_with("piped")) {
        let committed = row.split_whitespace().nth(2);
        assert!(matches!(committed, Some("0" | "-")), "{described}");
    }
}

/// A consumer that has printed everything and waits for more (`--follow`, or a
/// group member) ends when its reader goes (`| head -3` has its lines), though no
/// new record comes to fail writing; the group member commits what it printed.
#[test]
fn a_waiting_consumer_ends_when_its_reader_goes() {
    use std::io::BufRead;

    let broker = TestBroker::start(&[]);
    ok(broker.cli(&["topic", "create", "waited"], ""));
    ok(broker.cli(&["produce", "waited"], "a\nb\nc\n"));
    for args in [
        &["consume", "waited", "--from", "earliest", "--follow"][..],
        &[
            "consume", "waited", "--group", "heads", "--from", "earliest",
        ],
    ] {
        let mut child = spawn_piped(&broker, args);
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let read: Vec<String> = (0..3).map(|_| lines.next().unwrap().unwrap()).collect();
        assert_eq!(read, ["a", "b", "c"], "{args:?}");
        drop(lines);
        let Some(status) =
            crate::harness::wait_for_exit(&mut child, std::time::Duration::from_secs(30))
        else {
            child.kill().unwrap();
            panic!("{args:?} still waits after its reader went");
        };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(status.success(), "{args:?}: {status} {stderr}");
        assert!(!stderr.contains("error"), "{args:?}: {stderr}");
    }
    let described = ok(broker.cli(&["group", "describe", "heads"], ""));
    let row = described
        .lines()
        .find(|l| l.starts_with("waited"))
        .unwrap_or_else(|| panic!("{described}"));
    assert_eq!(row.split_whitespace().nth(2), Some("3"), "{described}");
    assert!(described.contains("0 members"), "{described}");
}

/// The broker row of `cluster describe`: its columns split on whitespace.
fn broker_row(text: &str) -> Vec<String> {
    text.lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or_else(|| panic!("no row of broker 1: {text}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn cluster_describe_shows_a_single_broker_as_its_own_controller() {
    let broker = TestBroker::start(&["rack=eu-1a"]);
    let before = ok(broker.cli(&["cluster", "describe"], ""));
    assert!(
        before.contains("controller:   broker 1 (a single broker: no metadata quorum)"),
        "{before}"
    );
    // broker, address, rack, state, quorum, leads, replicas, lag.
    let row = broker_row(&before);
    assert_eq!(row[1], broker.addr, "{before}");
    assert_eq!(&row[2..5], ["eu-1a", "running", "-"], "{before}");
    ok(broker.cli(&["topic", "create", "t", "--partitions", "3"], ""));
    let after = broker_row(&ok(broker.cli(&["cluster", "describe"], "")));
    let count = |row: &[String], column: usize| row[column].parse::<u32>().unwrap();
    assert_eq!(count(&after, 5), count(&row, 5) + 3, "{after:?}");
    assert_eq!(count(&after, 6), count(&after, 5), "{after:?}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(broker.cli(&["cluster", "describe", "--json"], ""))).unwrap();
    assert_eq!(json["controller_id"], 1, "{json}");
    assert!(json["quorum"].is_null(), "{json}");
    let me = &json["brokers"][0];
    assert_eq!(
        (&me["state"], &me["rack"]),
        (&"running".into(), &"eu-1a".into())
    );
    assert_eq!(
        me["leaders"].as_u64(),
        Some(count(&after, 5) as u64),
        "{json}"
    );
    // The broker's log directory: the bytes of its partition logs (none before a
    // record), and the space of the file system they are on, as `df` has it.
    let disk = rustix::fs::statvfs(&broker.data_dir).unwrap();
    assert_eq!(
        me["disk_total_bytes"].as_u64(),
        Some(disk.f_blocks * disk.f_frsize),
        "{json}"
    );
    let usable = me["disk_usable_bytes"].as_u64().unwrap();
    assert!(
        usable > 0 && usable <= disk.f_blocks * disk.f_frsize,
        "{json}"
    );
    assert_eq!(
        me["log_dir"].as_str(),
        broker.data_dir.join("topics").to_str(),
        "{json}"
    );
    assert_eq!(me["log_bytes"], 0, "{json}");
    ok(broker.cli(&["produce", "t", "-p", "1"], &"x".repeat(5000)));
    let json: serde_json::Value =
        serde_json::from_str(&ok(broker.cli(&["cluster", "describe", "--json"], ""))).unwrap();
    let logged = json["brokers"][0]["log_bytes"].as_u64().unwrap();
    assert!((5000..6000).contains(&logged), "{json}");
    let row = broker_row(&ok(broker.cli(&["cluster", "describe"], "")));
    // …, replicas, logs (`5.0 KiB`), disk free (`41.2 GiB (42 %)`), lag.
    let kib = format!("{:.1}", logged as f64 / 1024.0);
    assert_eq!(&row[7..9], [kib.as_str(), "KiB"], "{row:?}");
    assert_eq!(row[12], "%)", "{row:?}");
    // A single broker leads every partition already: nothing to elect.
    let elected = ok(broker.cli(&["partition", "elect-leaders", "t"], ""));
    assert_eq!(
        elected,
        "3 partition(s) already led by their preferred replica\n"
    );
}

/// `meridian dump-log` over a running broker's partition directory: every batch
/// with who wrote it and its records, a sealed segment's indexes, the snapshot of
/// producers written when the log rolled; then over damaged copies of each.
#[test]
fn dump_log_shows_batches_producers_and_damage() {
    let broker = TestBroker::start(&[]);
    // An index entry for every batch but a segment's first (at position 0), and
    // segments of at most 1 KiB.
    ok(broker.cli(
        &[
            "topic",
            "create",
            "dumped",
            "-p",
            "1",
            "-c",
            "index.interval.bytes=0",
            "-c",
            "segment.bytes=1024",
        ],
        "",
    ));
    ok(broker.cli(
        &["produce", "dumped", "-K", ":", "-z", "zstd"],
        "a:one\nb:two\nc:three\n",
    ));
    ok(broker.cli(&["produce", "dumped", "-H", "source=cli"], "four\n"));
    // 1.5 KiB more: the log rolls first, sealing segment 0 with its indexes and
    // snapshotting the producers' state below offset 4.
    let lines: String = (0..30).map(|i| format!("{i:050}\n")).collect();
    ok(broker.cli(&["produce", "dumped"], &lines));
    let partition = broker.data_dir.join("topics/dumped/0");
    let dump = |args: &[&str]| {
        let out = std::process::Command::new(crate::harness::meridian_bin())
            .arg("dump-log")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let dir = partition.to_str().unwrap();
    let (success, out, err) = dump(&["--json", "--records", dir]);
    assert!(success, "{err}");
    let batches: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(batches.len(), 3, "{out}");
    let (first, second, third) = (&batches[0], &batches[1], &batches[2]);
    let span = |b: &serde_json::Value| (b["base_offset"].as_i64(), b["last_offset"].as_i64());
    assert_eq!(
        [span(first), span(second), span(third)],
        [(Some(0), Some(2)), (Some(3), Some(3)), (Some(4), Some(33))],
        "{out}"
    );
    assert!(
        third["file"]
            .as_str()
            .unwrap()
            .ends_with("00000000000000000004.log"),
        "{third}"
    );
    assert_eq!(first["compression"], "zstd");
    assert_eq!(second["compression"], "none");
    // Three `produce` runs: three idempotent producers, each from sequence 0.
    let producers: Vec<i64> = batches
        .iter()
        .map(|b| b["producer_id"].as_i64().unwrap())
        .collect();
    assert!(
        producers.iter().all(|p| *p >= 0) && producers[0] != producers[1],
        "{producers:?}"
    );
    assert!(batches.iter().all(|b| b["base_sequence"] == 0), "{out}");
    let records: Vec<(i64, String, String)> = batches
        .iter()
        .flat_map(|b| b["records"].as_array().unwrap().clone())
        .take(4)
        .map(|r| {
            (
                r["offset"].as_i64().unwrap(),
                r["key"].as_str().unwrap_or("-").to_string(),
                r["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        (0, "a", "one"),
        (1, "b", "two"),
        (2, "c", "three"),
        (3, "-", "four"),
    ];
    assert_eq!(
        records,
        expected.map(|(o, k, v)| (o, k.to_string(), v.to_string()))
    );
    assert_eq!(second["records"][0]["headers"]["source"], "cli");

    // The text form, one line per batch and one per record.
    let (success, out, err) = dump(&["-r", dir]);
    assert!(success, "{err}");
    for needle in [
        "offsets 0..=2 records 3 position 0",
        "epoch 0 sequences 0..=2 compression zstd",
        "    1 timestamp ",
        " key b value two",
        " key null value four source=cli",
        "00000000000000000004.log\n  offsets 4..=33 records 30 position 0",
    ] {
        assert!(out.contains(needle), "{needle:?} in\n{out}");
    }

    // Segment 0's indexes: where the second batch starts, and its time.
    let second_at = second["position"].as_u64().unwrap();
    let index = partition.join("00000000000000000000.index");
    let (success, out, err) = dump(&[index.to_str().unwrap()]);
    assert!(success, "{err}");
    assert!(
        out.ends_with(&format!("\n  offset 3 position {second_at}\n")),
        "{out}"
    );
    let times = partition.join("00000000000000000000.timeindex");
    let (success, out, err) = dump(&["--json", times.to_str().unwrap()]);
    assert!(success, "{err}");
    let entry: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(entry["offset"], 3, "{out}");
    assert_eq!(entry["timestamp"], first["max_timestamp"], "{out}");

    // The producers' state below offset 4: the first two producers' batches.
    let snapshot = partition.join("00000000000000000004.snapshot");
    let (success, out, err) = dump(&["--json", snapshot.to_str().unwrap()]);
    assert!(success, "{err}");
    let mut remembered: Vec<(i64, serde_json::Value)> = out
        .lines()
        .map(|l| {
            let p: serde_json::Value = serde_json::from_str(l).unwrap();
            (p["producer_id"].as_i64().unwrap(), p["batches"].clone())
        })
        .collect();
    remembered.sort_by_key(|(id, _)| *id);
    let batch = |first: i64, last: i64| {
        serde_json::json!([{"first_sequence": 0, "last_sequence": last - first,
                            "base_offset": first, "last_offset": last}])
    };
    let mut expected = vec![(producers[0], batch(0, 2)), (producers[1], batch(3, 3))];
    expected.sort_by_key(|(id, _)| *id);
    assert_eq!(remembered, expected, "{out}");
    let (success, out, _) = dump(&[snapshot.to_str().unwrap()]);
    assert!(success);
    assert!(
        out.contains(&format!(
            "  producer {} epoch 0 last_timestamp ",
            producers[0]
        )) && out.contains(": sequences 0..=2 at offsets 0..=2"),
        "{out}"
    );

    // Damage, in copies: a torn last batch, a flipped byte in the first batch, an
    // index entry pointing back, a flipped byte in the snapshot. Each is reported
    // where it starts, what comes before it still printed, and the command fails.
    let segment = std::fs::read(partition.join("00000000000000000000.log")).unwrap();
    let temp = tempfile::tempdir().unwrap();
    let copy = |name: &str, bytes: &[u8]| {
        let path = temp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    let torn = copy("torn.log", &segment[..segment.len() - 3]);
    let (success, out, err) = dump(&[&torn]);
    assert!(!success, "{out}");
    assert!(out.contains("offsets 0..=2"), "{out}");
    assert!(
        out.contains(&format!("damaged at byte {second_at}: batch of")),
        "{out}"
    );
    assert!(err.contains("damaged file: "), "{err}");
    let mut flipped = segment.clone();
    flipped[second_at as usize - 1] ^= 0x01;
    let (success, out, _) = dump(&["--json", &copy("flipped.log", &flipped)]);
    assert!(!success);
    let problem: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(problem["position"], 0);
    assert!(
        problem["problem"]
            .as_str()
            .unwrap()
            .contains("CRC mismatch"),
        "{problem}"
    );
    let mut bad = std::fs::read(&index).unwrap();
    bad.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 1]);
    let (success, out, _) = dump(&[&copy("00000000000000000000.index", &bad)]);
    assert!(
        !success && out.contains("damaged at byte 8: entry 1 breaks"),
        "{out}"
    );
    let mut bad = std::fs::read(&snapshot).unwrap();
    bad[6] ^= 1;
    let (success, out, _) = dump(&[&copy("00000000000000000004.snapshot", &bad)]);
    assert!(!success && out.contains("checksum mismatch"), "{out}");

    // Neither a file nor a directory with segments.
    let (success, _, err) = dump(&[temp.path().join("missing").to_str().unwrap()]);
    assert!(!success && err.contains("No such file"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let (success, _, err) = dump(&[empty.path().to_str().unwrap()]);
    assert!(!success && err.contains("no segment files"), "{err}");
}
