//! Log compaction through the broker: produce to a compacted topic, let the cleaner
//! thread run, consume from the start.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use meridian_client::{
    AutoOffsetReset, Compression, ConsumerConfig, ErrorCode, GroupConfig, NewTopic, Offset,
    OffsetCommit, ProducerConfig, ProducerRecord,
};

use crate::harness::TestBroker;

const KEYS: u32 = 20;
const ROUNDS: u32 = 30;

/// Everything from the log start: `(offset, key, value)`.
async fn read_all(
    client: &meridian_client::Client,
    topic: &str,
) -> Vec<(i64, Bytes, Option<Bytes>)> {
    crate::harness::read_partition_0(client, topic, Duration::from_secs(20))
        .await
        .into_iter()
        .map(|record| (record.offset, record.key.unwrap(), record.value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_topic_keeps_the_latest_value_of_every_key() {
    let mut broker = TestBroker::start(&["log_cleaner_backoff_ms=100", "log_cleaner_threads=2"]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(
            NewTopic::new("table", 1)
                .config("cleanup.policy", "compact")
                .config("segment.bytes", "4096")
                .config("min.cleanable.dirty.ratio", "0.01")
                .config("delete.retention.ms", "3600000"),
        )
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig {
        compression: Compression::Lz4,
        batch_size: 600,
        ..ProducerConfig::default()
    });
    // Every key rewritten ROUNDS times; keys 0..4 deleted (tombstone) at the end.
    let mut deliveries = Vec::new();
    for round in 0..ROUNDS {
        for key in 0..KEYS {
            let key_bytes = Bytes::from(format!("key-{key}"));
            let record = if round == ROUNDS - 1 && key < 4 {
                ProducerRecord::tombstone("table", key_bytes)
            } else {
                ProducerRecord::new(
                    "table",
                    Bytes::from(format!("{key}:{round}:{}", "v".repeat(60))),
                )
                .key(key_bytes)
            };
            let value = record.value.clone();
            deliveries.push((key, value, producer.send(record).await.unwrap()));
        }
    }
    producer.flush().await.unwrap();
    let mut produced: HashMap<i64, (u32, Option<Bytes>)> = HashMap::new();
    let mut latest: HashMap<u32, i64> = HashMap::new();
    for (key, value, delivery) in deliveries {
        let offset = delivery.await.unwrap().offset;
        produced.insert(offset, (key, value));
        let slot = latest.entry(key).or_insert(offset);
        *slot = (*slot).max(offset);
    }
    let n_produced = produced.len();

    // A record without a key is refused: the topic is compacted.
    let refused = producer
        .send(ProducerRecord::new("table", Bytes::from_static(b"no key")))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::InvalidRecord), "{refused}");

    // Wait for the cleaner thread.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let full_size = loop {
        let d = client.admin().describe_topic("table").await.unwrap();
        let p = &d.partitions[0];
        if p.size_bytes > 0 && read_all(&client, "table").await.len() * 3 < n_produced {
            break p.size_bytes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never cleaned: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let check = |read: &[(i64, Bytes, Option<Bytes>)]| {
        let mut last_read: HashMap<u32, i64> = HashMap::new();
        let mut previous = -1;
        for (offset, key, value) in read {
            assert!(*offset > previous, "offsets strictly increase");
            previous = *offset;
            let (produced_key, produced_value) = &produced[offset];
            assert_eq!(
                key,
                &Bytes::from(format!("key-{produced_key}")),
                "key at {offset}"
            );
            assert_eq!(value, produced_value, "value at {offset}");
            last_read.insert(*produced_key, *offset);
        }
        // Every key's latest record is there, tombstones (within
        // delete.retention.ms) included.
        assert_eq!(last_read, latest);
    };
    let read = read_all(&client, "table").await;
    check(&read);
    assert!(
        read.iter().filter(|r| r.2.is_none()).count() == 4,
        "the 4 tombstones stay"
    );

    // The swapped segments survive a restart.
    drop(client);
    broker.stop();
    broker.restart();
    let client = broker.client().await;
    let after_restart = read_all(&client, "table").await;
    assert_eq!(after_restart, read);
    let d = client.admin().describe_topic("table").await.unwrap();
    assert!(d.partitions[0].size_bytes <= full_size);
    let policy = d
        .configs
        .iter()
        .find(|c| c.key == "cleanup.policy")
        .unwrap();
    assert_eq!(policy.value, "compact");
    check(&after_restart);
}

/// A group whose committed offset lies among records the cleaner removed from the
/// front of the log resumes at the first record kept. The log start stays where it
/// was, so the position is not out of range and the default reset (`latest`) does
/// not skip what is left. (The log start used to move past the emptied segments.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_behind_cleaned_records_resumes_at_the_first_kept_one() {
    let broker = TestBroker::start(&["log_cleaner_backoff_ms=100"]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(
            NewTopic::new("state", 1)
                .config("cleanup.policy", "compact")
                .config("segment.bytes", "1024")
                .config("min.cleanable.dirty.ratio", "0.01"),
        )
        .await
        .unwrap();
    // Key `a` rewritten in 40 batches of its own (three to a segment), then keys
    // b0..b4 once each.
    let producer = client.producer(ProducerConfig::default());
    let value = Bytes::from("v".repeat(300));
    let keys = (0..40)
        .map(|_| "a".to_string())
        .chain((0..5).map(|i| format!("b{i}")));
    for key in keys {
        let record = ProducerRecord::new("state", value.clone())
            .key(key)
            .partition(0);
        producer.send(record).await.unwrap().await.unwrap();
    }
    // The group had read up to offset 3.
    client
        .admin()
        .set_committed_offsets("g", &[OffsetCommit::new("state", 0, 3)])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let read = read_all(&client, "state").await;
        if read.first().is_some_and(|r| r.0 == 39) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never cleaned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let earliest = client
        .admin()
        .list_offsets("state", 0, Offset::Earliest)
        .await
        .unwrap();
    assert_eq!(earliest, 0, "compaction does not move the log start");

    let config = ConsumerConfig::default();
    assert_eq!(config.auto_offset_reset, AutoOffsetReset::Latest);
    let mut consumer = client.consumer(config);
    consumer
        .subscribe(GroupConfig::new("g"), &["state"])
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 6 {
        assert!(
            tokio::time::Instant::now() < deadline + Duration::from_secs(20),
            "read only {got:?}"
        );
        for record in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            got.push((record.offset, record.key.unwrap()));
        }
    }
    let expected: Vec<(i64, Bytes)> = [(39, "a"), (40, "b0"), (41, "b1"), (42, "b2")]
        .into_iter()
        .chain([(43, "b3"), (44, "b4")])
        .map(|(o, k)| (o, Bytes::from(k)))
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleaner_stays_within_its_io_budget() {
    let broker = TestBroker::start(&[
        "log_cleaner_backoff_ms=50",
        "log_cleaner_io_max_bytes_per_second=100000",
    ]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(
            NewTopic::new("slow", 1)
                .config("cleanup.policy", "compact")
                .config("segment.bytes", "16384")
                .config("min.cleanable.dirty.ratio", "0.01"),
        )
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let producer = client.producer(ProducerConfig::default());
    let n_records = 1500;
    for i in 0..n_records {
        let record = ProducerRecord::new("slow", Bytes::from(vec![b'v'; 100]))
            .key(Bytes::from(format!("key-{}", i % 10)));
        producer.send(record).await.unwrap();
    }
    producer.flush().await.unwrap();
    let deadline = started + Duration::from_secs(60);
    while read_all(&client, "slow").await.len() * 3 >= n_records {
        assert!(tokio::time::Instant::now() < deadline, "never cleaned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Removing 1000 records of 100-byte values means reading them twice (key map,
    // rewrite): over 200 kB, which the budget of 100 kB/s stretches past 2 s.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "cleaned within {elapsed:?}"
    );
}
