//! The SDK's examples (`sdk/client/examples/`), run against a real broker the way
//! their doc comments say: what a user copies first must work.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::TestBroker;

/// An example's binary, which cargo builds beside the `meridian` binary with the
/// workspace's tests (`cargo test --workspace`, as `.ci/run` does) or with `cargo
/// build --workspace --all-targets`.
fn example(name: &str) -> PathBuf {
    let path = crate::harness::meridian_bin()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: `cargo build -p meridian-client --examples` (or run the \
         workspace's tests, which build it)",
        path.display()
    );
    path
}

fn run(name: &str, args: &[&str]) -> String {
    let out = Command::new(example(name)).args(args).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `(partition, offset, value)` of each line shaped `topic/P offset O: value`
/// (`value` empty where the line has no `: value`).
fn records(out: &str, topic: &str) -> Vec<(u32, i64, String)> {
    out.lines()
        .filter_map(|line| line.strip_prefix(&format!("{topic}/")))
        .map(|rest| {
            let (partition, rest) = rest.split_once(" offset ").unwrap();
            let (offset, value) = match rest.split_once(": ") {
                Some((offset, value)) => (offset, value.to_owned()),
                None => (rest.split_whitespace().next().unwrap(), String::new()),
            };
            (partition.parse().unwrap(), offset.parse().unwrap(), value)
        })
        .collect()
}

#[test]
fn the_sdk_examples_produce_consume_and_share_a_group() {
    let broker = TestBroker::start(&[]);
    let cert = broker.cert_path();
    let cert = cert.to_str().unwrap();
    let topic = "example-topic";

    // The producer trusts the broker by fingerprint, creates the topic, and prints
    // where each of its 20 records landed.
    let out = run(
        "producer",
        &[&broker.addr, &broker.fingerprint, topic, "20"],
    );
    assert!(out.contains(&format!("created topic {topic}")), "{out}");
    let produced = records(&out, topic);
    assert_eq!(produced.len(), 20, "{out}");
    let mut places: Vec<(u32, i64)> = produced.iter().map(|(p, o, _)| (*p, *o)).collect();
    places.sort_unstable();
    places.dedup();
    assert_eq!(places.len(), 20, "each record its own offset: {out}");

    // The consumer trusts the broker's certificate file and reads them all back.
    let out = run("consumer", &[&broker.addr, cert, topic]);
    assert!(
        out.contains(&format!("read 20 records from {topic}")),
        "{out}"
    );
    let mut consumed: Vec<(u32, i64)> = records(&out, topic)
        .into_iter()
        .map(|(p, o, value)| {
            assert!(value.starts_with("message "), "{out}");
            (p, o)
        })
        .collect();
    consumed.sort_unstable();
    assert_eq!(consumed, places, "{out}");

    // A group member gets every partition, prints the records, and on Ctrl-C
    // commits them and leaves.
    let mut member = Command::new(example("group_consumer"))
        .args([&broker.addr, &broker.fingerprint, topic, "example-group"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let rx = crate::harness::stdout_lines(&mut member);
    let mut printed = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while records(&printed, topic).len() < 20 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                printed.push_str(&line);
                printed.push('\n');
            }
            Err(e) => {
                let _ = member.kill();
                panic!("group member: {e} before reading 20 records:\n{printed}");
            }
        }
    }
    assert!(printed.starts_with("assigned ["), "{printed}");
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&member),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let status = member.wait().unwrap();
    assert!(status.success(), "group member ended: {status}\n{printed}");

    // Its commits hold every record: no lag left.
    let (ok, out, err) = broker.cli(&["group", "describe", "example-group", "--json"], "");
    assert!(ok, "{err}");
    let described: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(described["members"], serde_json::json!([]), "{out}");
    let partitions = described["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 3, "{out}");
    for partition in partitions {
        assert_eq!(partition["lag"], 0, "{out}");
    }
}
