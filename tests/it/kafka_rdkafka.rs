//! librdkafka, the C client under most non-Java Kafka clients (Python's
//! confluent-kafka, Go's confluent-kafka-go, .NET, kcat), against the Kafka
//! listener: `tests/kafka/librdkafka.py` through confluent-kafka, which `.ci/run`
//! installs beside kafka-python.

use crate::harness::TestBroker;
use crate::kafka::{consume_json, kafka_broker, kafka_python};

/// Runs `librdkafka.py` with `config` (librdkafka settings as JSON).
fn librdkafka(addr: &str, config: &str, action: &str, prefix: &str) -> Option<serde_json::Value> {
    kafka_python("librdkafka.py", &[addr, config, action, prefix])
}

/// What `roundtrip` must have seen: every record once, each key's records in
/// order, and the group's commits at the end of every partition; Meridian's CLI
/// reads the same records and shows the same commits.
fn check_roundtrip(broker: &TestBroker, prefix: &str, seen: &serde_json::Value) {
    assert_eq!(seen["produced"], 3000, "{seen}");
    assert_eq!(seen["consumed"], 3000, "{seen}");
    assert_eq!(seen["duplicates"], 0, "{seen}");
    assert_eq!(seen["keys_in_order"], true, "{seen}");
    let (committed, ends) = (seen["committed"].as_object().unwrap(), &seen["ends"]);
    assert_eq!(committed.len(), 15, "{seen}");
    for (partition, offset) in committed {
        assert_eq!(offset, &ends[partition], "{partition}: {seen}");
    }
    for codec in ["zstd", "lz4", "snappy", "gzip", "none"] {
        let topic = format!("{prefix}-{codec}");
        let records = consume_json(broker, &topic, 600);
        let value = records[0]["value"].as_str().unwrap();
        assert!(value.starts_with(&format!("{codec} ")), "{value}");
    }
    let group = format!("{prefix}-group");
    let (ok, described, err) = broker.cli(&["group", "describe", &group], "");
    assert!(ok, "{err}");
    let (partition, offset) = committed.iter().next().unwrap();
    let (topic, index) = partition.split_once('/').unwrap();
    assert!(
        described.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.contains(&topic)
                && words.contains(&index)
                && words.contains(&offset.to_string().as_str())
        }),
        "{partition} at {offset} not in:\n{described}"
    );
}

/// librdkafka's idempotent producer (acks=all) in each of Kafka's codecs, and a
/// consumer group member reading all five topics and committing, over plain TCP.
#[test]
fn librdkafka_produces_and_consumes_in_a_group() {
    let (broker, addr) = kafka_broker(&[]);
    let Some(seen) = librdkafka(&addr, "{}", "roundtrip", "rdk") else {
        return;
    };
    check_roundtrip(&broker, "rdk", &seen);
}

/// The same over SASL_SSL with SCRAM-SHA-256 (a user `meridian sasl add` made);
/// PLAIN with a wrong password gets no metadata.
#[test]
fn librdkafka_logs_in_with_sasl_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    let mut add = std::process::Command::new(crate::harness::meridian_bin());
    add.args(["sasl", "add", "alice", "--file", users.to_str().unwrap()]);
    let (ok, _, err) = crate::harness::run_with_stdin(add, "s3cret\n");
    assert!(ok, "{err}");
    let (broker, addr) = kafka_broker(&[
        "kafka_tls=true",
        &format!("kafka_sasl_users_file={}", users.display()),
    ]);
    let ca = broker.cert_path();
    let config = |mechanism: &str, password: &str| {
        serde_json::json!({
            "security.protocol": "SASL_SSL",
            "ssl.ca.location": ca,
            "sasl.mechanism": mechanism,
            "sasl.username": "alice",
            "sasl.password": password,
        })
        .to_string()
    };
    let Some(seen) = librdkafka(
        &addr,
        &config("SCRAM-SHA-256", "s3cret"),
        "roundtrip",
        "sasl",
    ) else {
        return;
    };
    check_roundtrip(&broker, "sasl", &seen);
    let wrong = librdkafka(&addr, &config("PLAIN", "guess"), "login", "-").unwrap();
    assert_ne!(wrong["result"], "ok", "{wrong}");
    let right = librdkafka(&addr, &config("PLAIN", "s3cret"), "login", "-").unwrap();
    assert_eq!(right["result"], "ok", "{right}");
}

/// librdkafka's `cooperative-sticky` consumers: when a second member joins, the
/// first gives up only the partitions that move (its other partitions stay assigned
/// throughout) and the two hold disjoint halves; every record is read once; when
/// the second leaves, the first is given its partitions back.
#[test]
fn librdkafka_cooperative_members_give_up_only_what_moves() {
    let (broker, addr) = kafka_broker(&[]);
    let Some(seen) = librdkafka(&addr, "{}", "cooperative", "coop") else {
        return;
    };
    assert_eq!(seen["consumed"], seen["records"], "{seen}");
    // The second member starts where the first committed as it gave them up: the
    // coordinator hands them over only once the first has joined again without
    // them.
    assert_eq!(seen["duplicates"], 0, "{seen}");
    assert_eq!(seen["overlap"], false, "{seen}");
    let split: Vec<u64> = serde_json::from_value(seen["split"].clone()).unwrap();
    assert_eq!(split, [3, 3], "{seen}");
    // A's callbacks: all six assigned, then three (and only three) revoked while it
    // kept the rest, then B's three assigned back after it left.
    let events: Vec<(String, u64)> = serde_json::from_value(seen["a_events"].clone()).unwrap();
    assert_eq!(events[0], ("assign".to_string(), 6), "{seen}");
    let revoked: Vec<u64> = events
        .iter()
        .filter(|(kind, _)| kind == "revoke")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(revoked, [3], "{seen}");
    let assigned: u64 = events
        .iter()
        .filter(|(kind, _)| kind == "assign")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(assigned, 9, "{seen}");
    let (ok, described, err) = broker.cli(&["group", "describe", "coop-coop"], "");
    assert!(ok, "{err}");
    assert!(described.contains("0 members"), "{described}");
}

/// librdkafka's admin client: describe_cluster (DescribeCluster) names the broker
/// at its Kafka listener, and alter_configs (the legacy AlterConfigs) replaces a
/// topic's settings, so the one it was created with reverts to the default;
/// list_offsets finds the record with the largest timestamp.
#[test]
fn librdkafka_admin_describes_the_cluster_and_replaces_settings() {
    let (broker, addr) = kafka_broker(&["cluster_id=rdk-cluster", "broker_id=7"]);
    let Some(seen) = librdkafka(&addr, "{}", "admin", "adm") else {
        return;
    };
    let (host, port) = addr.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    assert_eq!(
        seen,
        serde_json::json!({
            "cluster_id": "rdk-cluster",
            "controller": 7,
            "nodes": [[7, host, port]],
            "own": {"segment.ms": "600000"},
            "max_timestamp": [1, 5000],
        })
    );
    let (ok, out, err) = broker.cli(&["topic", "describe", "adm-conf"], "");
    assert!(ok, "{err}");
    assert_eq!(
        crate::harness::described_setting(&out, "retention.ms").as_deref(),
        Some("604800000 (default)"),
        "{out}"
    );
}
