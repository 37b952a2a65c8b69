//! Log lifecycle through the broker: retention deleting old segments while serving
//! (also under load, with consumers falling behind), deleting records before an offset,
//! and a corrupted sealed segment taking only its own partition offline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use meridian_client::{
    AutoOffsetReset, ConsumerConfig, ErrorCode, NewTopic, Offset, ProducerConfig, ProducerRecord,
};
use meridian_wire::messages::Response;

use crate::harness::{batch, fetch, produce, TestBroker};

async fn produce_ok(
    client: &meridian_client::Client,
    topic: &str,
    partition: u32,
    value_len: usize,
) {
    let Response::Produce(r) = client
        .request(produce(topic, partition, 1, batch(value_len)))
        .await
        .unwrap()
    else {
        panic!("not a produce response")
    };
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.error, ErrorCode::None, "{}", p.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_deletes_old_segments_and_moves_the_log_start() {
    let broker = TestBroker::start(&["retention_check_interval_ms=200"]);
    let client = broker.client().await;
    let topic = NewTopic::new("short", 1)
        .config("segment.bytes", "10240")
        .config("retention.bytes", "20480");
    client.admin().create_topic(topic).await.unwrap();
    for _ in 0..40 {
        produce_ok(&client, "short", 0, 2000).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let described = loop {
        let d = client.admin().describe_topic("short").await.unwrap();
        if d.partitions[0].log_start_offset > 0 {
            break d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never ran: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let p = &described.partitions[0];
    assert_eq!(p.high_watermark, 40);
    assert!(p.size_bytes <= 20480 + 10240, "{p:?}");
    // Below the log start is out of range; from the log start on, data is there.
    let Response::Fetch(r) = client
        .request(fetch("short", 0, 0, 0, 1 << 20))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(r.topics[0].partitions[0].error, ErrorCode::OffsetOutOfRange);
    let Response::Fetch(r) = client
        .request(fetch("short", p.log_start_offset, 0, 0, 1 << 20))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(r.topics[0].partitions[0].error, ErrorCode::None);
    assert!(!r.topics[0].partitions[0].records.is_empty());
    // Producing continues at the next offset.
    produce_ok(&client, "short", 0, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_sealed_segment_takes_only_its_partition_offline() {
    let mut broker = TestBroker::start(&[]);
    {
        let client = broker.client().await;
        client
            .admin()
            .create_topic(NewTopic::new("two", 2).config("segment.bytes", "4096"))
            .await
            .unwrap();
        for _ in 0..10 {
            produce_ok(&client, "two", 0, 1000).await;
            produce_ok(&client, "two", 1, 1000).await;
        }
    }
    broker.stop();
    // Flip a byte in the last batch of partition 0's first (sealed) segment.
    let segment = broker
        .data_dir
        .join("topics/two/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0xFF;
    std::fs::write(&segment, bytes).unwrap();

    broker.restart();
    let client = broker.client().await;
    let described = client.admin().describe_topic("two").await.unwrap();
    assert_eq!(
        described.partitions[0].error,
        ErrorCode::CorruptLog,
        "{described:?}"
    );
    assert_eq!(described.partitions[1].error, ErrorCode::None);
    let Response::Produce(r) = client
        .request(produce("two", 0, 1, batch(10)))
        .await
        .unwrap()
    else {
        panic!()
    };
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.error, ErrorCode::CorruptLog);
    assert!(
        p.message.contains("00000000000000000000.log"),
        "the message names the file: {}",
        p.message
    );
    // The healthy partition keeps serving.
    produce_ok(&client, "two", 1, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_before_moves_the_log_start_durably() {
    let mut broker = TestBroker::start(&[]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("trunc", 2).config("segment.bytes", "4096"))
        .await
        .unwrap();
    for _ in 0..30 {
        produce_ok(&client, "trunc", 0, 500).await;
        produce_ok(&client, "trunc", 1, 500).await;
    }
    let ok = |(success, stdout, stderr): (bool, String, String)| {
        assert!(success, "stdout: {stdout}\nstderr: {stderr}");
        stdout
    };
    let out = ok(broker.cli(
        &[
            "topic",
            "truncate-before",
            "trunc",
            "--partition",
            "0",
            "--offset",
            "17",
        ],
        "",
    ));
    assert_eq!(out, "trunc/0: log start offset 17\n");
    // Past the end: refused with the typed error, nothing changes.
    let (success, _, stderr) = broker.cli(
        &[
            "topic",
            "truncate-before",
            "trunc",
            "--partition",
            "1",
            "--offset",
            "31",
        ],
        "",
    );
    assert!(!success);
    assert!(stderr.contains("OffsetOutOfRange"), "{stderr}");
    let admin = client.admin();
    assert_eq!(
        admin
            .list_offsets("trunc", 0, Offset::Earliest)
            .await
            .unwrap(),
        17
    );
    assert_eq!(
        admin
            .list_offsets("trunc", 1, Offset::Earliest)
            .await
            .unwrap(),
        0
    );
    let d = admin.describe_topic("trunc").await.unwrap();
    assert_eq!(d.partitions[0].log_start_offset, 17);
    assert!(
        d.partitions[0].segments < d.partitions[1].segments,
        "whole segments below go"
    );
    // Reads below the start are out of range; at the start, data comes back.
    let Response::Fetch(r) = client
        .request(fetch("trunc", 16, 0, 0, 1 << 20))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(r.topics[0].partitions[0].error, ErrorCode::OffsetOutOfRange);
    let values = ok(broker.cli(
        &[
            "consume", "trunc", "-p", "0", "--from", "earliest", "--format", "json",
        ],
        "",
    ));
    let first: serde_json::Value = serde_json::from_str(values.lines().next().unwrap()).unwrap();
    assert_eq!(first["offset"], 17, "{values}");
    assert_eq!(values.lines().count(), 30 - 17);
    // From below the start: the CLI stops with the error, or resets when asked to.
    let (success, _, stderr) = broker.cli(&["consume", "trunc", "-p", "0", "--from", "5"], "");
    assert!(!success);
    assert!(stderr.contains("OffsetOutOfRange"), "{stderr}");
    let values = ok(broker.cli(
        &[
            "consume",
            "trunc",
            "-p",
            "0",
            "--from",
            "5",
            "--auto-offset-reset",
            "earliest",
            "--format",
            "json",
        ],
        "",
    ));
    let first: serde_json::Value = serde_json::from_str(values.lines().next().unwrap()).unwrap();
    assert_eq!(first["offset"], 17, "{values}");

    // All partitions, to the end, through the SDK; then a restart keeps it.
    let results = admin
        .delete_records("trunc", &[(0, Offset::Latest), (1, Offset::Latest)])
        .await
        .unwrap();
    assert_eq!(
        results
            .into_iter()
            .map(|(p, r)| (p, r.unwrap()))
            .collect::<Vec<_>>(),
        vec![(0, 30), (1, 30)]
    );
    drop(client);
    broker.stop();
    broker.restart();
    let client = broker.client().await;
    for p in 0..2 {
        assert_eq!(
            client
                .admin()
                .list_offsets("trunc", p, Offset::Earliest)
                .await
                .unwrap(),
            30
        );
    }
    produce_ok(&client, "trunc", 0, 10).await;
}

/// Records of one producer in one partition arrive in order, at most once.
fn check_in_order(seen: &mut HashMap<(u32, u32), u64>, partition: u32, value: &[u8]) {
    let text = std::str::from_utf8(value).unwrap();
    let (producer, seq) = text.split_once(':').unwrap();
    let (producer, seq): (u32, u64) = (
        producer.parse().unwrap(),
        seq[..seq.find('|').unwrap()].parse().unwrap(),
    );
    if let Some(previous) = seen.insert((partition, producer), seq) {
        assert!(
            seq > previous,
            "producer {producer} on partition {partition}: {seq} after {previous}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_at_scale_with_running_producers_and_lagging_consumers() {
    let broker = TestBroker::start(&["retention_check_interval_ms=100"]);
    let client = broker.client().await;
    let admin = client.admin();
    admin
        .create_topic(
            NewTopic::new("by-size", 2)
                .config("segment.bytes", "8192")
                .config("retention.bytes", "32768"),
        )
        .await
        .unwrap();
    admin
        .create_topic(
            NewTopic::new("by-time", 2)
                .config("segment.bytes", "8192")
                .config("retention.ms", "1000"),
        )
        .await
        .unwrap();

    // Two producers write to both topics until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for producer_id in 0..2u32 {
        let producer = client.producer(ProducerConfig {
            batch_size: 2048,
            ..ProducerConfig::default()
        });
        let stop = stop.clone();
        producers.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::SeqCst) {
                for topic in ["by-size", "by-time"] {
                    let value = format!("{producer_id}:{seq}|{}", "x".repeat(150));
                    let record =
                        ProducerRecord::new(topic, Bytes::from(value)).partition((seq % 2) as u32);
                    producer.send(record).await.unwrap();
                }
                seq += 1;
                if seq.is_multiple_of(100) {
                    producer.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            producer.flush().await.unwrap();
            seq
        }));
    }

    // A slow consumer that resets to the earliest offset when retention overtakes it.
    let slow_config = ConsumerConfig {
        max_partition_fetch_bytes: 1024,
        fetch_max_bytes: 2048,
        prefetch_bytes: 2048,
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::default()
    };
    let mut slow = client.consumer(slow_config);
    for topic in ["by-size", "by-time"] {
        slow.assign(topic, &[0, 1]).await.unwrap();
        for p in 0..2 {
            slow.seek(topic, p, Offset::Earliest).await.unwrap();
        }
    }
    let mut seen = HashMap::new();
    let mut last_offsets: HashMap<(std::sync::Arc<str>, u32), i64> = HashMap::new();
    let mut jumps = 0;
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        for record in slow.poll(Duration::from_millis(100)).await.unwrap() {
            let key = (record.topic.clone(), record.partition);
            if let Some(&last) = last_offsets.get(&key) {
                assert!(
                    record.offset > last,
                    "{key:?}: {} after {last}",
                    record.offset
                );
                if record.offset > last + 1 {
                    jumps += 1;
                }
            }
            last_offsets.insert(key, record.offset);
            let topic_id = u32::from(&*record.topic == "by-time");
            check_in_order(
                &mut seen,
                topic_id * 2 + record.partition,
                record.value.as_ref().unwrap(),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        jumps > 0,
        "retention overtook the slow consumer and it reset forward"
    );

    // Both kinds of retention deleted segments while everything ran; by size, the
    // log stays a fraction of what was written (records are over 150 bytes each).
    for topic in ["by-size", "by-time"] {
        let d = admin.describe_topic(topic).await.unwrap();
        for p in &d.partitions {
            assert!(p.log_start_offset > 0, "{topic}: {p:?}");
            if topic == "by-size" {
                assert!(p.size_bytes * 4 < p.high_watermark as u64 * 150, "{p:?}");
            }
        }
    }

    // A consumer at offset 0 with auto_offset_reset=none gets the typed error.
    let mut strict = client.consumer(ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::None,
        ..ConsumerConfig::default()
    });
    strict.assign("by-size", &[0]).await.unwrap();
    strict.seek("by-size", 0, Offset::At(0)).await.unwrap();
    let error = loop {
        match strict.poll(Duration::from_secs(5)).await {
            Err(e) => break e,
            Ok(records) => assert!(records.is_empty(), "nothing readable at 0"),
        }
    };
    assert_eq!(error.code(), Some(ErrorCode::OffsetOutOfRange), "{error}");
    // With latest, the same position moves to the log end and reads what comes next.
    let mut tail = client.consumer(ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Latest,
        ..ConsumerConfig::default()
    });
    tail.assign("by-size", &[0]).await.unwrap();
    tail.seek("by-size", 0, Offset::At(0)).await.unwrap();
    let start = admin
        .list_offsets("by-size", 0, Offset::Earliest)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        let records = tail.poll(Duration::from_millis(200)).await.unwrap();
        if let Some(record) = records.first() {
            break record.offset;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tail consumer read nothing"
        );
    };
    assert!(
        first >= start,
        "reset to the end, past the log start {start}: {first}"
    );

    stop.store(true, Ordering::SeqCst);
    for producer in producers {
        assert!(producer.await.unwrap() > 0);
    }
    // Once producers stop, retention settles: by size, less than retention.bytes plus
    // one segment; by time, only the active segment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let by_size = admin.describe_topic("by-size").await.unwrap();
        let by_time = admin.describe_topic("by-time").await.unwrap();
        let settled = by_size
            .partitions
            .iter()
            .all(|p| p.size_bytes <= 32768 + 8192)
            && by_time.partitions.iter().all(|p| p.segments == 1);
        if settled {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not settle: {by_size:?} {by_time:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The slow consumer catches up to the end with nothing out of order.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for topic in ["by-size", "by-time"] {
        for p in 0..2 {
            let end = admin.list_offsets(topic, p, Offset::Latest).await.unwrap();
            while slow.position(topic, p).unwrap() < end {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "slow consumer never caught up"
                );
                for record in slow.poll(Duration::from_millis(100)).await.unwrap() {
                    let topic_id = u32::from(&*record.topic == "by-time");
                    check_in_order(
                        &mut seen,
                        topic_id * 2 + record.partition,
                        record.value.as_ref().unwrap(),
                    );
                }
            }
        }
    }
}
