//! Changing a topic after its creation on a single broker: its settings (taking
//! effect on the data already there) and its partition count, through the SDK and
//! the CLI, kept across restarts.

use std::time::{Duration, Instant};

use meridian_client::{
    AutoOffsetReset, Client, ConsumerConfig, ErrorCode, GroupConfig, NewTopic, Offset,
    ProducerConfig, ProducerRecord, TopicConfigChanges,
};

use crate::harness::TestBroker;

/// The topic's effective value of `key` and whether it is the broker default.
async fn setting(client: &Client, topic: &str, key: &str) -> (String, bool) {
    let d = client.admin().describe_topic(topic).await.unwrap();
    let c = d.configs.iter().find(|c| c.key == key).unwrap();
    (c.value.clone(), c.is_default)
}

async fn send(
    client: &Client,
    topic: &str,
    partition: u32,
    value: Vec<u8>,
) -> meridian_client::Result<i64> {
    let producer = client.producer(ProducerConfig::default());
    let delivery = producer
        .send(ProducerRecord::new(topic, value).partition(partition))
        .await?;
    let metadata = delivery.await;
    metadata.map(|m| m.offset)
}

fn code(result: meridian_client::Result<()>) -> Option<ErrorCode> {
    result.err().and_then(|e| e.code())
}

/// Settings changed on a topic with data: the new segment size rolls the next
/// appends, the new retention deletes the old segments, a lower `max.message.bytes`
/// refuses what it allowed before, and a reset brings the default back. Bad changes
/// are refused whole. Everything holds across a clean restart and a kill -9.
#[tokio::test]
async fn altered_settings_apply_to_existing_data_and_survive_restarts() {
    let mut broker = TestBroker::start(&["retention_check_interval_ms=200"]);
    let client = broker.client().await;
    let admin = client.admin();
    admin.create_topic(NewTopic::new("t", 1)).await.unwrap();
    for _ in 0..20 {
        send(&client, "t", 0, vec![1; 500]).await.unwrap();
    }
    let d = admin.describe_topic("t").await.unwrap();
    assert_eq!(d.partitions[0].segments, 1);
    assert!(setting(&client, "t", "segment.bytes").await.1);

    admin
        .alter_topic_configs(
            "t",
            TopicConfigChanges::new()
                .set("segment.bytes", "2048")
                .set("max.message.bytes", "1024"),
        )
        .await
        .unwrap();
    assert_eq!(
        setting(&client, "t", "segment.bytes").await,
        ("2048".to_string(), false)
    );
    for _ in 0..20 {
        send(&client, "t", 0, vec![2; 500]).await.unwrap();
    }
    let segments = admin.describe_topic("t").await.unwrap().partitions[0].segments;
    assert!(
        segments >= 4,
        "the new segment size rolls new appends: {segments} segments"
    );
    let too_large = send(&client, "t", 0, vec![3; 4000]).await.unwrap_err();
    assert_eq!(
        too_large.code(),
        Some(ErrorCode::MessageTooLarge),
        "{too_large}"
    );

    // Refused whole: one bad value, an unknown key, an unknown topic, the internal
    // topic. Nothing of a refused request changes.
    let bad = admin
        .alter_topic_configs(
            "t",
            TopicConfigChanges::new()
                .set("retention.ms", "1000")
                .set("segment.bytes", "10"),
        )
        .await;
    assert_eq!(code(bad), Some(ErrorCode::InvalidConfig));
    assert!(setting(&client, "t", "retention.ms").await.1);
    let unknown_key = admin
        .alter_topic_configs("t", TopicConfigChanges::new().reset("retention.hours"))
        .await;
    assert_eq!(code(unknown_key), Some(ErrorCode::InvalidConfig));
    let unknown_topic = admin
        .alter_topic_configs("nope", TopicConfigChanges::new().set("retention.ms", "1"))
        .await;
    assert_eq!(code(unknown_topic), Some(ErrorCode::UnknownTopic));
    let internal = admin
        .alter_topic_configs(
            "__consumer_offsets",
            TopicConfigChanges::new().set("retention.ms", "1"),
        )
        .await;
    assert_eq!(code(internal), Some(ErrorCode::PolicyViolation));

    // Retention by size, set now, deletes the oldest segments of the data there.
    admin
        .alter_topic_configs(
            "t",
            TopicConfigChanges::new().set("retention.bytes", "4096"),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = &admin.describe_topic("t").await.unwrap().partitions[0];
        if p.log_start_offset > 0 && p.size_bytes <= 4096 + 2048 {
            break;
        }
        assert!(Instant::now() < deadline, "retention never ran: {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Reset: the default is back, and so is what it allows.
    admin
        .alter_topic_configs("t", TopicConfigChanges::new().reset("max.message.bytes"))
        .await
        .unwrap();
    assert!(setting(&client, "t", "max.message.bytes").await.1);
    send(&client, "t", 0, vec![4; 4000]).await.unwrap();

    client.close();
    for restart in ["clean", "kill -9"] {
        if restart == "clean" {
            broker.stop();
        } else {
            broker.kill9();
        }
        broker.restart();
        let client = broker.client().await;
        assert_eq!(
            setting(&client, "t", "segment.bytes").await,
            ("2048".to_string(), false),
            "after a {restart} restart"
        );
        assert_eq!(
            setting(&client, "t", "retention.bytes").await,
            ("4096".to_string(), false)
        );
        assert!(setting(&client, "t", "max.message.bytes").await.1);
        client.close();
    }
}

/// Partitions added to a topic: empty, writable and readable at once, seen by a
/// group subscribed to the topic, kept across a restart; fewer or as many as now,
/// or more than `max_partitions_per_topic`, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_partitions_serve_at_once_reach_groups_and_survive_a_restart() {
    let mut broker = TestBroker::start(&[
        "max_partitions_per_topic=8",
        "offsets_topic_num_partitions=4",
    ]);
    let client = broker.client().await;
    let admin = client.admin();
    admin.create_topic(NewTopic::new("grow", 2)).await.unwrap();
    for p in 0..2 {
        send(&client, "grow", p, format!("old-{p}").into_bytes())
            .await
            .unwrap();
    }
    let mut member = client.consumer(ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    member
        .subscribe(
            GroupConfig {
                session_timeout: Duration::from_secs(10),
                ..GroupConfig::new("growers")
            },
            &["grow"],
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut read = Vec::new();
    while read.len() < 2 {
        assert!(Instant::now() < deadline, "read {read:?}");
        read.extend(member.poll(Duration::from_millis(100)).await.unwrap());
    }

    admin.create_partitions("grow", 4).await.unwrap();
    let d = admin.describe_topic("grow").await.unwrap();
    assert_eq!(d.partitions.len(), 4);
    assert_eq!(
        (
            d.partitions[3].log_start_offset,
            d.partitions[3].high_watermark
        ),
        (0, 0)
    );
    assert_eq!(
        send(&client, "grow", 3, b"new-3".to_vec()).await.unwrap(),
        0
    );
    // The group rebalances over the new partitions and reads the new record.
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        assert!(
            Instant::now() < deadline,
            "the group never read partition 3; assignment {:?}",
            member.assignment()
        );
        let records = member.poll(Duration::from_millis(100)).await.unwrap();
        if let Some(r) = records.into_iter().find(|r| r.partition == 3) {
            break r;
        }
    };
    assert_eq!(new.value.as_deref(), Some(&b"new-3"[..]));
    member.close().await.unwrap();

    for (count, why) in [(4, "as many as now"), (3, "fewer"), (9, "over the maximum")] {
        let refused = admin.create_partitions("grow", count).await;
        assert_eq!(code(refused), Some(ErrorCode::InvalidPartitions), "{why}");
    }
    assert_eq!(
        code(admin.create_partitions("nope", 4).await),
        Some(ErrorCode::UnknownTopic)
    );
    assert_eq!(
        code(admin.create_partitions("__consumer_offsets", 64).await),
        Some(ErrorCode::PolicyViolation)
    );
    client.close();

    broker.stop();
    broker.restart();
    let client = broker.client().await;
    let d = client.admin().describe_topic("grow").await.unwrap();
    assert_eq!(d.partitions.len(), 4);
    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign("grow", &[3]).await.unwrap();
    consumer.seek("grow", 3, Offset::Earliest).await.unwrap();
    let records = consumer.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value.as_deref(), Some(&b"new-3"[..]));
}

/// Each topic is given an ID when it is created (Kafka's KIP-516): the same in
/// every answer and across restarts, a new one for a topic created again under a
/// deleted one's name (none for a create that only validates: see below); a topic
/// from before IDs gets one at the broker's first start with them, and keeps it.
#[tokio::test]
async fn topic_ids_tell_a_topic_created_again_from_the_deleted_one() {
    let mut broker = TestBroker::start(&[]);
    let client = broker.client().await;
    let admin = client.admin();
    let created = async || {
        admin
            .create_topic(NewTopic::new("orders", 2))
            .await
            .unwrap();
        let id = admin.describe_topic("orders").await.unwrap().id;
        assert!(!id.is_none());
        id
    };
    let id = created().await;
    let metadata = client.metadata(Some(vec!["orders".into()])).await.unwrap();
    assert_eq!(
        metadata.topics[0].id, id,
        "Metadata and DescribeTopics agree"
    );

    let (ok, out, err) = broker.cli(&["topic", "describe", "orders"], "");
    assert!(ok, "{err}");
    assert!(out.contains(&format!("\nid: {id}\n")), "{out}");
    let described = |broker: &TestBroker| {
        let (ok, out, err) = broker.cli(&["topic", "describe", "orders", "--json"], "");
        assert!(ok, "{err}");
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        json["id"].as_str().unwrap().to_string()
    };
    assert_eq!(described(&broker), id.to_string());

    admin.delete_topic("orders").await.unwrap();
    let again = created().await;
    assert_ne!(again, id, "a topic created again is a new topic");

    drop(client);
    broker.stop();
    broker.restart();
    assert_eq!(
        described(&broker),
        again.to_string(),
        "kept across a restart"
    );

    // A topic from before IDs: its topic.json names none.
    broker.stop();
    let file = broker.data_dir.join("topics/orders/topic.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(
        json.as_object_mut().unwrap().remove("id").is_some(),
        "{json}"
    );
    std::fs::write(&file, serde_json::to_vec(&json).unwrap()).unwrap();
    broker.restart();
    let given = described(&broker);
    assert_eq!(given.len(), 22, "{given}");
    assert_ne!(given, again.to_string());
    broker.stop();
    broker.restart();
    assert_eq!(described(&broker), given, "the ID given is kept");

    // Deleting by ID deletes that topic, never one created since under its name.
    let client = broker.client().await;
    let admin = client.admin();
    let e = admin.delete_topic_by_id(id).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownTopicId), "{e}");
    admin.describe_topic("orders").await.unwrap();
    let offsets = admin.describe_topic("__consumer_offsets").await.unwrap().id;
    let e = admin.delete_topic_by_id(offsets).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PolicyViolation), "{e}");
    let delete = |args: &[&str]| broker.cli(&[&["topic", "delete"], args].concat(), "");
    let (ok, out, err) = delete(&["--id", &given]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("deleted topic orders (ID {given})")),
        "{out}"
    );
    assert!(admin.list_topics().await.unwrap().is_empty());
    let (ok, out, err) = delete(&["--id", &given, "--if-exists"]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("no topic has ID {given}")), "{out}");
    let (ok, _, err) = delete(&["--id", &given]);
    assert!(!ok && err.contains("UnknownTopicId"), "{err}");
    let (ok, _, err) = delete(&["--id", "orders"]);
    assert!(!ok && err.contains("is not a topic ID"), "{err}");
}

/// Validated only (Kafka's `validateOnly`): each check answers as the real change
/// would, and nothing changes, on disk either (a restart shows the same topic).
#[tokio::test]
async fn validating_changes_answers_as_the_change_would_and_changes_nothing() {
    let mut broker = TestBroker::start(&[
        "max_partitions_per_topic=8",
        "offsets_topic_num_partitions=4",
    ]);
    let client = broker.client().await;
    let admin = client.admin();
    admin.create_topic(NewTopic::new("v", 2)).await.unwrap();

    // The answer is the topic as it would be made, defaults filled in.
    let would_be = admin
        .validate_create_topic(NewTopic::new("new", 3).config("retention.ms", "1000"))
        .await
        .unwrap()
        .expect("the broker describes the topic it would create");
    assert_eq!((would_be.partitions, would_be.replication_factor), (3, 1));
    let would_set = |key: &str| {
        let c = would_be.configs.iter().find(|c| c.key == key).unwrap();
        (c.value.clone(), c.is_default)
    };
    assert_eq!(would_set("retention.ms"), ("1000".to_string(), false));
    assert_eq!(would_set("cleanup.policy"), ("delete".to_string(), true));
    let defaulted = admin
        .validate_create_topic(NewTopic::new("new", 0))
        .await
        .unwrap()
        .unwrap();
    assert!(defaulted.id.is_none(), "validating gives no ID");
    assert_eq!(
        (defaulted.partitions, defaulted.replication_factor),
        (1, 1),
        "default_partitions, and one broker's replication factor"
    );
    let refusals = [
        (NewTopic::new("v", 1), ErrorCode::TopicAlreadyExists),
        (NewTopic::new("bad name!", 1), ErrorCode::InvalidTopic),
        (
            NewTopic::new("new", 1).config("segment.bytes", "10"),
            ErrorCode::InvalidConfig,
        ),
        (NewTopic::new("new", 9), ErrorCode::InvalidPartitions),
    ];
    for (topic, expected) in refusals {
        let what = format!("{topic:?}");
        assert_eq!(
            code(admin.validate_create_topic(topic).await.map(drop)),
            Some(expected),
            "{what}"
        );
    }

    let retention = TopicConfigChanges::new().set("retention.ms", "60000");
    admin
        .validate_topic_configs("v", retention.clone())
        .await
        .unwrap();
    let bad = TopicConfigChanges::new().set("segment.bytes", "10");
    assert_eq!(
        code(admin.validate_topic_configs("v", bad).await),
        Some(ErrorCode::InvalidConfig)
    );
    assert_eq!(
        code(
            admin
                .validate_topic_configs("nope", retention.clone())
                .await
        ),
        Some(ErrorCode::UnknownTopic)
    );
    assert_eq!(
        code(
            admin
                .validate_topic_configs("__consumer_offsets", retention)
                .await
        ),
        Some(ErrorCode::PolicyViolation)
    );

    admin.validate_create_partitions("v", 4).await.unwrap();
    for count in [2, 1, 9] {
        assert_eq!(
            code(admin.validate_create_partitions("v", count).await),
            Some(ErrorCode::InvalidPartitions),
            "{count}"
        );
    }
    assert_eq!(
        code(admin.validate_create_partitions("nope", 4).await),
        Some(ErrorCode::UnknownTopic)
    );

    client.close();
    broker.stop();
    broker.restart();
    let client = broker.client().await;
    assert_eq!(client.admin().list_topics().await.unwrap(), vec!["v"]);
    let d = client.admin().describe_topic("v").await.unwrap();
    assert_eq!(d.partitions.len(), 2);
    assert!(setting(&client, "v", "retention.ms").await.1);
    // What was validated can be done.
    client.admin().create_partitions("v", 4).await.unwrap();
}

/// `meridian topic alter`: settings, resets and partitions in one command, a
/// refusal with the broker's reason, and no command without a change.
#[test]
fn topic_alter_from_the_cli() {
    let broker = TestBroker::start(&[]);
    let (ok, _, stderr) = broker.cli(
        &[
            "topic",
            "create",
            "c",
            "-p",
            "1",
            "-c",
            "max.message.bytes=2048",
        ],
        "",
    );
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = broker.cli(
        &[
            "topic",
            "alter",
            "c",
            "--partitions",
            "3",
            "--config",
            "retention.ms=60000",
            "--delete-config",
            "max.message.bytes",
        ],
        "",
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("set retention.ms=60000 on topic c"),
        "{stdout}"
    );
    assert!(
        stdout.contains("reverted max.message.bytes to the default"),
        "{stdout}"
    );
    assert!(stdout.contains("topic c now has 3 partitions"), "{stdout}");
    let (ok, stdout, _) = broker.cli(&["topic", "describe", "c"], "");
    assert!(ok);
    assert!(stdout.contains("partitions: 3"), "{stdout}");
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("retention.ms").contains("60000"), "{stdout}");
    assert!(!line("retention.ms").contains("(default)"), "{stdout}");
    assert!(line("max.message.bytes").contains("(default)"), "{stdout}");

    let (ok, _, stderr) = broker.cli(&["topic", "alter", "c", "--config", "segment.bytes=1"], "");
    assert!(!ok);
    assert!(
        stderr.contains("segment.bytes must be at least 1024"),
        "{stderr}"
    );
    let (ok, _, stderr) = broker.cli(&["topic", "alter", "c", "--partitions", "2"], "");
    assert!(!ok);
    assert!(stderr.contains("partitions cannot be removed"), "{stderr}");
    // Nothing to change: usage, not a request.
    let (ok, _, stderr) = broker.cli(&["topic", "alter", "c"], "");
    assert!(!ok);
    assert!(stderr.contains("nothing to change"), "{stderr}");

    // Both parts are checked before either applies: a refused partition count
    // leaves the settings as they were.
    let (ok, _, stderr) = broker.cli(
        &[
            "topic",
            "alter",
            "c",
            "--config",
            "retention.ms=1000",
            "--partitions",
            "2",
        ],
        "",
    );
    assert!(!ok);
    assert!(stderr.contains("partitions cannot be removed"), "{stderr}");
    // A dry run says what would change and changes nothing.
    let (ok, stdout, stderr) = broker.cli(
        &[
            "topic",
            "alter",
            "c",
            "--config",
            "retention.ms=2000",
            "--partitions",
            "5",
            "--dry-run",
        ],
        "",
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("would set retention.ms=2000 on topic c"),
        "{stdout}"
    );
    assert!(
        stdout.contains("topic c would have 5 partitions"),
        "{stdout}"
    );
    assert!(stdout.contains("nothing was changed"), "{stdout}");
    let (ok, _, stderr) = broker.cli(
        &["topic", "alter", "c", "--partitions", "10001", "--dry-run"],
        "",
    );
    assert!(!ok);
    assert!(stderr.contains("max_partitions_per_topic"), "{stderr}");
    let (ok, stdout, stderr) =
        broker.cli(&["topic", "create", "d", "-p", "2", "--validate-only"], "");
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("topic d can be created with 2 partition(s), replication factor 1"),
        "{stdout}"
    );
    let (ok, _, stderr) = broker.cli(&["topic", "create", "c", "--dry-run"], "");
    assert!(!ok);
    assert!(stderr.contains("already exists"), "{stderr}");

    let (ok, stdout, _) = broker.cli(&["topic", "describe", "c"], "");
    assert!(ok);
    assert!(stdout.contains("partitions: 3"), "{stdout}");
    let retention = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("retention.ms"))
        .unwrap_or_default();
    assert!(retention.contains("60000"), "{stdout}");
    let (ok, stdout, _) = broker.cli(&["topic", "list"], "");
    assert!(ok);
    assert!(!stdout.lines().any(|l| l == "d"), "{stdout}");
}
