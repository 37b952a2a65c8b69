//! KafkaJS, the pure-JavaScript client most Node.js applications use, against the
//! Kafka listener: `tests/kafka/kafkajs.js`, with the kafkajs package `.ci/run`
//! installs from npm (its `node_modules` named by `KAFKAJS_FOR_TESTS`).

use crate::kafka::{client_script, kafka_broker};

/// Runs `tests/kafka/kafkajs.js ARGS` with node and returns the JSON line it prints,
/// after checking it succeeded; `None`, saying so, when KAFKAJS_FOR_TESTS is not
/// set.
fn kafkajs(args: &[&str]) -> Option<serde_json::Value> {
    let Some(modules) = std::env::var_os("KAFKAJS_FOR_TESTS") else {
        println!("skipped: KAFKAJS_FOR_TESTS is not set (.ci/run installs kafkajs and sets it)");
        return None;
    };
    let mut node = std::process::Command::new("node");
    node.env("NODE_PATH", modules);
    Some(client_script(node, "kafkajs.js", args))
}

/// KafkaJS's admin client creates a topic, its idempotent producer writes with
/// acks=all (gzip and uncompressed), and a consumer group member with KafkaJS's own
/// default assignor (`RoundRobinAssigner`, which Meridian's coordinator runs as
/// `roundrobin`) reads every record once, each key's in order, and commits; the
/// commits are the group's for Meridian's tools too. Then KafkaJS's admin tools
/// for groups and topics each do what they say, alterConfigs (the legacy
/// AlterConfigs) replacing a topic's settings.
#[test]
fn kafkajs_produces_and_consumes_in_a_group() {
    let (broker, addr) = kafka_broker(&[]);
    let Some(seen) = kafkajs(&[&addr, "js"]) else {
        return;
    };
    assert_eq!(seen["produced"], 600, "{seen}");
    assert_eq!(seen["consumed"], 600, "{seen}");
    assert_eq!(seen["duplicates"], 0, "{seen}");
    assert_eq!(seen["keys_in_order"], true, "{seen}");
    let committed = seen["committed"].as_object().unwrap();
    let total: u64 = committed.values().map(|o| o.as_u64().unwrap()).sum();
    assert_eq!(total, 600, "every record committed: {seen}");
    let (ok, described, err) = broker.cli(&["group", "describe", "js-group", "--json"], "");
    assert!(ok, "{err}");
    let described: serde_json::Value = serde_json::from_str(&described).unwrap();
    let text = described.to_string();
    for (partition, offset) in committed {
        let row = described["partitions"]
            .as_array()
            .unwrap_or_else(|| panic!("no partitions in {text}"))
            .iter()
            .find(|o| o["partition"].as_u64().unwrap().to_string() == *partition)
            .unwrap_or_else(|| panic!("partition {partition} not in {text}"));
        assert_eq!(&row["committed"], offset, "{text}");
    }
    // The admin client's tools: the group described once its member left; another
    // group's partition set, then reset to the earliest (KafkaJS commits -2, which
    // clears the commits: it reads them back as -1), then deleted; partitions
    // added, records deleted, settings read.
    assert_eq!(seen["described_state"], "Empty", "{seen}");
    let none = serde_json::json!({"0": -1, "1": -1, "2": -1});
    assert_eq!(seen["after_reset"], none, "{seen}");
    assert_eq!(
        seen["after_set"],
        serde_json::json!({"0": 5, "1": -1, "2": -1}),
        "{seen}"
    );
    assert_eq!(seen["partitions"], 4, "{seen}");
    assert_eq!(seen["low_of_0"], 3, "{seen}");
    assert_eq!(seen["retention_ms"], "3600000", "{seen}");
    // alterConfigs replaced the topic's settings: retention.ms, left out, is the
    // default again, also for Meridian's tools; a bad value is refused, typed, and
    // changes nothing.
    assert_eq!(
        seen["replaced"],
        serde_json::json!({"retention.ms": ["604800000", true], "segment.ms": ["600000", false]}),
        "{seen}"
    );
    assert_eq!(seen["refused"], "INVALID_CONFIG", "{seen}");
    let (ok, described, err) = broker.cli(&["topic", "describe", "js-kept", "--json"], "");
    assert!(ok, "{err}");
    let described: serde_json::Value = serde_json::from_str(&described).unwrap();
    let own: Vec<&String> = described["configs"]
        .as_object()
        .unwrap_or_else(|| panic!("no configs in {described}"))
        .iter()
        .filter(|(_, c)| c["default"] == false)
        .map(|(key, _)| key)
        .collect();
    assert_eq!(own, ["segment.ms"], "{described}");
    assert_eq!(
        seen["listed"],
        serde_json::json!({"js-group": true, "js-tools": false}),
        "{seen}"
    );
}
