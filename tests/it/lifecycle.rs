//! Log lifecycle through the broker: retention deleting old segments while serving,
//! and a corrupted sealed segment taking only its own partition offline.

use std::time::Duration;

use meridian_client::{ErrorCode, NewTopic};
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
