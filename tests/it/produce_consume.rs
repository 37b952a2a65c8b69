use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use meridian_client::{
    partition_for_key, Acks, Compression, ConsumerConfig, NewTopic, Offset, ProducerConfig,
    ProducerRecord,
};
use meridian_wire::ErrorCode;

use crate::harness::TestBroker;

/// Produces `n` keyed records and reads them all back: per-partition order, no loss,
/// no duplicates, and every key on the partition Kafka's partitioner would pick.
async fn round_trip(n: u64, partitions: u32, compression: Compression) {
    let broker = TestBroker::start(&[]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("events", partitions))
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig {
        compression,
        acks: Acks::Leader,
        batch_size: 64 * 1024,
        ..ProducerConfig::default()
    });
    let mut deliveries = Vec::with_capacity(n as usize);
    for i in 0..n {
        let key = format!("key-{}", i % 1000);
        let record =
            ProducerRecord::new("events", Bytes::from(format!("{i}"))).key(Bytes::from(key));
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
    let mut acked_offsets: HashMap<u32, Vec<i64>> = HashMap::new();
    for d in deliveries {
        let meta = d.await.unwrap();
        acked_offsets
            .entry(meta.partition)
            .or_default()
            .push(meta.offset);
    }
    for offsets in acked_offsets.values_mut() {
        offsets.sort_unstable();
        offsets.dedup();
    }
    assert_eq!(
        acked_offsets.values().map(Vec::len).sum::<usize>() as u64,
        n,
        "every record got its own offset"
    );

    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign_all("events").await.unwrap();
    for p in 0..partitions {
        consumer.seek("events", p, Offset::Earliest).await.unwrap();
    }
    let mut seen = vec![false; n as usize];
    let mut last_offset: HashMap<u32, i64> = HashMap::new();
    let mut last_seq_per_key: HashMap<String, u64> = HashMap::new();
    let mut received = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while received < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out with {received}/{n} records"
        );
        for record in consumer.poll(Duration::from_secs(1)).await.unwrap() {
            let seq: u64 = std::str::from_utf8(record.value.as_ref().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            let key = String::from_utf8(record.key.as_ref().unwrap().to_vec()).unwrap();
            assert!(!seen[seq as usize], "record {seq} delivered twice");
            seen[seq as usize] = true;
            received += 1;
            // Offsets strictly increase within a partition.
            if let Some(prev) = last_offset.insert(record.partition, record.offset) {
                assert!(
                    record.offset > prev,
                    "partition {} went from {prev} to {}",
                    record.partition,
                    record.offset
                );
            }
            // Per-key order is production order (a key lives on one partition).
            if let Some(prev) = last_seq_per_key.insert(key.clone(), seq) {
                assert!(seq > prev, "key {key}: {seq} after {prev}");
            }
            assert_eq!(
                record.partition,
                partition_for_key(key.as_bytes(), partitions),
                "key {key} on the wrong partition"
            );
        }
    }
    assert!(seen.iter().all(|s| *s), "records missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_records_round_trip_in_order_without_loss_or_duplicates() {
    round_trip(1_000_000, 8, Compression::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_round_trip() {
    round_trip(50_000, 4, Compression::Zstd).await;
    round_trip(50_000, 4, Compression::Lz4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_by_timestamp_and_list_offsets() {
    let broker = TestBroker::start(&[]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("t", 1))
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig {
        linger: Duration::from_millis(0),
        ..ProducerConfig::default()
    });
    for i in 0..100i64 {
        let record =
            ProducerRecord::new("t", Bytes::from(i.to_string())).timestamp(1_000_000 + i * 10);
        producer.send(record).await.unwrap().await.unwrap();
    }
    let admin = client.admin();
    assert_eq!(
        admin.list_offsets("t", 0, Offset::Earliest).await.unwrap(),
        0
    );
    assert_eq!(
        admin.list_offsets("t", 0, Offset::Latest).await.unwrap(),
        100
    );
    assert_eq!(
        admin
            .list_offsets("t", 0, Offset::Timestamp(1_000_000 + 425))
            .await
            .unwrap(),
        43
    );
    assert_eq!(
        admin
            .list_offsets("t", 0, Offset::Timestamp(9_000_000))
            .await
            .unwrap(),
        100
    );

    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign("t", &[0]).await.unwrap();
    consumer
        .seek("t", 0, Offset::Timestamp(1_000_000 + 500))
        .await
        .unwrap();
    let records = consumer.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(records.first().map(|r| r.offset), Some(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_fetch_wakes_when_data_arrives() {
    let broker = TestBroker::start(&[]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("live", 2))
        .await
        .unwrap();
    let mut consumer = client.consumer(ConsumerConfig {
        fetch_max_wait: Duration::from_secs(20),
        ..ConsumerConfig::default()
    });
    consumer.assign_all("live").await.unwrap();
    let producer_client = broker.client().await;
    let started = tokio::time::Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let producer = producer_client.producer(ProducerConfig::default());
        producer
            .send(ProducerRecord::new("live", Bytes::from_static(b"hello")).partition(1))
            .await
            .unwrap()
            .await
            .unwrap();
    });
    let mut got = Vec::new();
    while got.is_empty() {
        got = consumer.poll(Duration::from_secs(30)).await.unwrap();
    }
    assert_eq!(got[0].value.as_deref(), Some(&b"hello"[..]));
    // Woken by the append, not by the 20 s max wait.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fetch was not woken by the append"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_restart_keeps_topics_configs_and_data() {
    let mut broker = TestBroker::start(&[]);
    {
        let client = broker.client().await;
        let topic = NewTopic::new("kept", 3)
            .config("retention.ms", "3600000")
            .config("segment.bytes", "1048576");
        client.admin().create_topic(topic).await.unwrap();
        let producer = client.producer(ProducerConfig::default());
        for i in 0..3000u32 {
            producer
                .send(ProducerRecord::new("kept", Bytes::from(vec![7u8; 1100])).partition(i % 3))
                .await
                .unwrap();
        }
        producer.flush().await.unwrap();
    }
    broker.stop();
    broker.restart();
    let client = broker.client().await;
    let described = client.admin().describe_topic("kept").await.unwrap();
    assert_eq!(described.partitions.len(), 3);
    assert!(described
        .configs
        .iter()
        .any(|c| c.key == "retention.ms" && c.value == "3600000" && !c.is_default));
    assert!(described
        .partitions
        .iter()
        .all(|p| p.high_watermark == 1000));
    // 1.1 MB per partition with segment.bytes = 1 MiB: each partition rolled.
    assert!(
        described
            .partitions
            .iter()
            .all(|p| p.size_bytes >= 1_100_000 && p.segments >= 2),
        "{described:?}"
    );
}

/// Records without key or partition, sent faster than the broker takes them, still
/// spread evenly: each partition takes a batch's worth in turn, instead of the one
/// whose batches wait behind the request in flight taking records until the buffer
/// memory runs out (which left one of sixteen partitions with six times the others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_spread_evenly_when_the_producer_is_ahead() {
    let broker = TestBroker::start(&[]);
    let client = broker.client().await;
    let partitions = 8u32;
    client
        .admin()
        .create_topic(NewTopic::new("keyless", partitions))
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig {
        acks: Acks::Leader,
        batch_size: 16 * 1024,
        linger: Duration::from_millis(50),
        ..ProducerConfig::default()
    });
    let value = Bytes::from(vec![7u8; 1000]);
    let n = 8_000u32;
    let mut deliveries = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let record = ProducerRecord::new("keyless", value.clone());
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
    let mut per_partition = vec![0u32; partitions as usize];
    for d in deliveries {
        per_partition[d.await.unwrap().partition as usize] += 1;
    }
    let (min, max) = (
        *per_partition.iter().min().unwrap(),
        *per_partition.iter().max().unwrap(),
    );
    // 1,000 records each if perfectly even, and a batch is 16 records: measured
    // 988-1,008 per partition; the old partitioner gave from 16 to 7,693.
    assert!(
        4 * max <= 5 * min,
        "keyless records piled into some partitions: {per_partition:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_waits_at_most_max_block_for_partitions_and_for_buffer_room() {
    use std::time::Instant;
    let mut broker = TestBroker::start(&[]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("known", 1))
        .await
        .unwrap();
    let max_block = Duration::from_millis(1500);
    let producer = client.producer(ProducerConfig {
        buffer_memory: 4096,
        max_block,
        linger: Duration::ZERO,
        ..ProducerConfig::default()
    });
    // The topic's partition count is learnt while the broker is up.
    producer
        .send(ProducerRecord::new("known", "first"))
        .await
        .unwrap()
        .await
        .unwrap();
    broker.kill9();

    // A topic never seen: send asks for its partitions while no broker answers,
    // then fails with the reason, a retriable error.
    let started = Instant::now();
    let error = producer
        .send(ProducerRecord::new("unseen", "x"))
        .await
        .expect_err("no broker can say how many partitions `unseen` has");
    let waited = started.elapsed();
    assert!(error.is_retriable(), "{error}");
    assert!(
        waited >= max_block - Duration::from_millis(100)
            && waited < max_block + Duration::from_secs(2),
        "send gave up after {waited:?}, with max_block {max_block:?}: {error}"
    );

    // The buffer fills with a record nobody acknowledges; the next one waits for
    // room for max_block, then fails with Timeout.
    let _unacknowledged = producer
        .send(ProducerRecord::new("known", vec![0u8; 4000]))
        .await
        .unwrap();
    let started = Instant::now();
    let error = producer
        .send(ProducerRecord::new("known", vec![0u8; 1000]))
        .await
        .expect_err("the buffer is full");
    let waited = started.elapsed();
    assert!(matches!(error, meridian_client::Error::Timeout), "{error}");
    assert!(
        waited >= max_block - Duration::from_millis(100) && waited < Duration::from_secs(30),
        "send gave up on buffer room after {waited:?}"
    );
}

/// `send_with_callback` over a real broker: every record's callback runs once, with
/// the offset its record was written at, before `flush` returns; a batch the broker
/// refuses gives its callbacks the broker's error. On a current-thread runtime, a
/// loop of sends that never has to wait still lets other tasks (the producer's
/// sender among them) run meanwhile.
#[tokio::test]
async fn delivery_callbacks_report_each_record_before_flush_returns() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    use meridian_client::ErrorCode;

    let broker = TestBroker::start(&[]);
    let client = broker.client().await;
    let admin = client.admin();
    admin.create_topic(NewTopic::new("cb", 2)).await.unwrap();
    admin
        .create_topic(NewTopic::new("small", 1).config("max.message.bytes", "1024"))
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig {
        linger: Duration::ZERO,
        ..ProducerConfig::default()
    });

    const N: u64 = 20_000;
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicU64::new(0));
    // How many records had been sent when a task spawned after the first send ran.
    // Whether the broker has answered by then depends on the machine's load; whether
    // a task queued on this thread got its turn does not.
    let sent_when_other_task_ran = Arc::new(OnceLock::new());
    for i in 0..N {
        if i == 1 {
            let (sent, ran) = (sent.clone(), sent_when_other_task_ran.clone());
            tokio::spawn(async move {
                let _ = ran.set(sent.load(Ordering::Relaxed));
            });
        }
        let delivered = delivered.clone();
        let record = ProducerRecord::new("cb", format!("{i}")).partition((i % 2) as u32);
        producer
            .send_with_callback(record, move |metadata| {
                let metadata = metadata.expect("the broker accepts every record");
                delivered
                    .lock()
                    .unwrap()
                    .push((i, metadata.partition, metadata.offset));
            })
            .await
            .unwrap();
        sent.fetch_add(1, Ordering::Relaxed);
    }
    producer.flush().await.unwrap();
    let delivered = std::mem::take(&mut *delivered.lock().unwrap());
    assert_eq!(
        delivered.len() as u64,
        N,
        "one callback per record by flush"
    );
    let ran_at = *sent_when_other_task_ran.get().unwrap();
    assert!(
        ran_at < N,
        "no other task ran until all {N} records had been sent: the send loop kept the sender from running"
    );
    // Each partition's records got consecutive offsets in send order.
    let mut next = [0i64; 2];
    let mut value_at = HashMap::new();
    for &(i, partition, offset) in &delivered {
        assert_eq!(partition, (i % 2) as u32);
        assert_eq!(offset, next[partition as usize], "record {i}");
        next[partition as usize] += 1;
        value_at.insert((partition, offset), i);
    }
    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign_all("cb").await.unwrap();
    for p in 0..2 {
        consumer.seek("cb", p, Offset::Earliest).await.unwrap();
    }
    let mut read = 0;
    while read < N {
        for record in consumer.poll(Duration::from_secs(5)).await.unwrap() {
            let value = std::str::from_utf8(record.value.as_deref().unwrap()).unwrap();
            assert_eq!(
                value_at[&(record.partition, record.offset)].to_string(),
                value,
                "the callback's offset is where the record is"
            );
            read += 1;
        }
    }

    // Refused by the broker: the error reaches the callback, flush reports it too.
    let refused = Arc::new(OnceLock::new());
    let seen = refused.clone();
    producer
        .send_with_callback(
            ProducerRecord::new("small", vec![7u8; 4000]),
            move |metadata| {
                seen.set(metadata).unwrap();
            },
        )
        .await
        .unwrap();
    let flushed = producer.flush().await;
    let error = match refused.get() {
        Some(Err(e)) => e,
        other => panic!("the callback saw {other:?}"),
    };
    assert_eq!(error.code(), Some(ErrorCode::MessageTooLarge), "{error}");
    assert!(flushed.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_metrics_count_what_became_of_each_record() {
    let broker = TestBroker::start(&[]);
    let (ok, out, err) = broker.cli(
        &[
            "topic",
            "create",
            "counted",
            "-p",
            "2",
            "-c",
            "max.message.bytes=2000",
        ],
        "",
    );
    assert!(ok, "{out} {err}");
    let client = broker.client().await;
    let config = ProducerConfig {
        linger: Duration::ZERO,
        ..ProducerConfig::default()
    };
    let buffer_memory = config.buffer_memory as u64;
    let producer = client.producer(config);
    assert_eq!(producer.metrics().buffer_available_bytes, buffer_memory);

    let mut deliveries = Vec::new();
    for i in 0..50u32 {
        let record = ProducerRecord::new("counted", format!("record {i}")).partition(i % 2);
        deliveries.push(producer.send(record).await.unwrap());
    }
    let pending = producer.metrics();
    assert_eq!(pending.records_accepted, 50);
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    // Over the topic's max.message.bytes: refused for good, no retry.
    let too_large = producer
        .send(ProducerRecord::new("counted", vec![b'x'; 4000]))
        .await
        .unwrap();
    assert!(too_large.await.is_err());
    // `flush` reports the failure since the last flush.
    let flushed = producer.flush().await.unwrap_err();
    assert_eq!(
        flushed.code(),
        Some(ErrorCode::MessageTooLarge),
        "{flushed}"
    );

    let metrics = producer.metrics();
    assert_eq!(metrics.records_accepted, 51);
    assert_eq!(metrics.records_delivered, 50);
    assert_eq!(metrics.records_failed, 1);
    assert_eq!(metrics.records_pending(), 0);
    // MessageTooLarge is not retriable (retries are counted in the replication
    // test `acks_all_is_refused_below_min_insync_replicas`).
    assert_eq!(metrics.retries, 0, "{metrics:?}");
    assert!(metrics.batches_delivered >= 2, "{metrics:?}");
    // Each delivered record is at least its value's bytes on the wire.
    assert!(metrics.bytes_delivered > 50 * 9, "{metrics:?}");
    // The delivered batches went in one request or more, the refused one in its own.
    assert!(metrics.requests >= 2, "{metrics:?}");
    assert_eq!(metrics.requests_unanswered, 0);
    assert_eq!(metrics.buffer_available_bytes, buffer_memory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_too_large_for_its_topic_goes_again_in_halves() {
    // 40 records of ~120 bytes batch to ~5 KB, over the topic's 1000 bytes: the
    // producer halves the batch until each part fits, and only the one record that
    // can never fit fails. Futures and callbacks learn the offsets the halves got.
    let broker = TestBroker::start(&[]);
    let (ok, out, err) = broker.cli(
        &["topic", "create", "small", "-c", "max.message.bytes=1000"],
        "",
    );
    assert!(ok, "{out} {err}");
    let client = broker.client().await;
    let producer = client.producer(ProducerConfig {
        // Everything goes in one batch.
        linger: Duration::from_millis(200),
        ..ProducerConfig::default()
    });
    let value = |i: usize| {
        if i == 25 {
            Bytes::from(vec![b'x'; 1500])
        } else {
            Bytes::from(format!("{i:03} {}", "y".repeat(110)))
        }
    };
    let called = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut futures = Vec::new();
    for i in 0..40 {
        let record = ProducerRecord::new("small", value(i));
        if i % 2 == 0 {
            futures.push((i, producer.send(record).await.unwrap()));
        } else {
            let called = called.clone();
            producer
                .send_with_callback(record, move |delivered| {
                    called.lock().unwrap().push((i, delivered));
                })
                .await
                .unwrap();
        }
    }
    let flushed = producer.flush().await.unwrap_err();
    assert_eq!(
        flushed.code(),
        Some(ErrorCode::MessageTooLarge),
        "{flushed}"
    );
    let mut offsets: Vec<(usize, i64)> = Vec::new();
    for (i, future) in futures {
        offsets.push((i, future.await.unwrap().offset));
    }
    for (i, delivered) in called.lock().unwrap().drain(..) {
        match delivered {
            Ok(metadata) => offsets.push((i, metadata.offset)),
            Err(e) => {
                assert_eq!(i, 25, "record {i} failed: {e}");
                assert_eq!(e.code(), Some(ErrorCode::MessageTooLarge));
            }
        }
    }
    offsets.sort_unstable();
    assert_eq!(offsets.len(), 39);
    // In send order, one offset each, from 0 with no gap (nothing else was written).
    let expected: Vec<(usize, i64)> = (0..40)
        .filter(|i| *i != 25)
        .enumerate()
        .map(|(offset, i)| (i, offset as i64))
        .collect();
    assert_eq!(offsets, expected);
    let metrics = producer.metrics();
    assert_eq!(
        (
            metrics.records_delivered,
            metrics.records_failed,
            metrics.retries
        ),
        (39, 1, 0),
        "{metrics:?}"
    );

    // The log holds them in that order, each once.
    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign_all("small").await.unwrap();
    consumer.seek("small", 0, Offset::Earliest).await.unwrap();
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while read.len() < 39 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "read {}",
            read.len()
        );
        for record in consumer.poll(Duration::from_secs(1)).await.unwrap() {
            read.push((record.offset, record.value.unwrap()));
        }
    }
    let want: Vec<(i64, Bytes)> = expected.iter().map(|(i, o)| (*o, value(*i))).collect();
    assert_eq!(read, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_metrics_count_records_fetches_and_lag() {
    let mut broker = TestBroker::start(&[]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("lagged", 2))
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig::default());
    crate::harness::send_all(
        &producer,
        (0..40u32).map(|i| {
            let partition = if i < 30 { 0 } else { 1 };
            ProducerRecord::new("lagged", format!("record {i:02}")).partition(partition)
        }),
    )
    .await;

    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign_all("lagged").await.unwrap();
    assert_eq!(
        consumer.metrics(),
        meridian_client::ConsumerMetrics::default(),
        "nothing fetched yet"
    );
    assert_eq!(consumer.lag("lagged", 0), None);
    for partition in 0..2 {
        consumer
            .seek("lagged", partition, Offset::Earliest)
            .await
            .unwrap();
    }
    let mut read = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while read < 40 || consumer.lag("lagged", 1).is_none() {
        assert!(tokio::time::Instant::now() < deadline, "read {read}");
        read += consumer.poll(Duration::from_secs(1)).await.unwrap().len();
    }
    let metrics = consumer.metrics();
    assert_eq!(metrics.records_consumed, 40, "{metrics:?}");
    // Each record is at least its 9-byte value in its batch.
    assert!(metrics.bytes_consumed > 40 * 9, "{metrics:?}");
    assert!(metrics.fetch_requests >= 1, "{metrics:?}");
    assert_eq!(metrics.fetch_failures, 0, "{metrics:?}");
    assert_eq!(metrics.records_lag_max, Some(0), "{metrics:?}");

    // Back to offset 5 of partition 0: 25 records to read again.
    consumer.seek("lagged", 0, Offset::At(5)).await.unwrap();
    assert_eq!(consumer.lag("lagged", 0), Some(25));
    assert_eq!(consumer.lag("lagged", 1), Some(0));
    assert_eq!(consumer.metrics().records_lag_max, Some(25));

    // Fetches from a broker that went away fail (and are retried).
    broker.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while consumer.metrics().fetch_failures == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            consumer.metrics()
        );
        let _ = consumer.poll(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_partition_returns_nothing_until_resumed() {
    let broker = TestBroker::start(&[]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("held", 2))
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig::default());
    crate::harness::send_all(
        &producer,
        (0..20u32).map(|i| ProducerRecord::new("held", format!("{i}")).partition(i % 2)),
    )
    .await;

    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign_all("held").await.unwrap();
    for partition in 0..2 {
        consumer
            .seek("held", partition, Offset::Earliest)
            .await
            .unwrap();
    }
    consumer.pause("held", &[0]).unwrap();
    assert_eq!(consumer.paused(), vec![("held".to_string(), 0)]);
    let err = consumer.pause("held", &[7]).unwrap_err();
    assert!(err.to_string().contains("not assigned"), "{err}");

    // Partition 1's ten records, none of partition 0's, however long we wait.
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while read.len() < 10 {
        assert!(tokio::time::Instant::now() < deadline, "read {read:?}");
        for record in consumer.poll(Duration::from_secs(1)).await.unwrap() {
            read.push((record.partition, record.offset));
        }
    }
    assert_eq!(read, (0..10).map(|o| (1, o)).collect::<Vec<_>>());
    assert!(consumer
        .poll(Duration::from_millis(500))
        .await
        .unwrap()
        .is_empty());
    // A seek moves a paused partition without resuming it.
    consumer.seek("held", 0, Offset::At(4)).await.unwrap();
    assert!(consumer
        .poll(Duration::from_millis(500))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(consumer.position("held", 0), Some(4));

    consumer.resume("held", &[0]).unwrap();
    assert!(consumer.paused().is_empty());
    let mut read = Vec::new();
    while read.len() < 6 {
        assert!(tokio::time::Instant::now() < deadline, "read {read:?}");
        for record in consumer.poll(Duration::from_secs(1)).await.unwrap() {
            read.push((record.partition, record.offset));
        }
    }
    assert_eq!(read, (4..10).map(|o| (0, o)).collect::<Vec<_>>());
}

/// A topic with `message.timestamp.type=LogAppendTime`: the broker stamps each
/// batch with its clock as it appends it. The producer learns that time from the
/// answer, a consumer reads it for every record whatever the producer set (even ten
/// years ahead, which a CreateTime topic refuses), and lookups by time go by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_append_time_topic_takes_the_brokers_clock() {
    let broker = TestBroker::start(&[]);
    let client = broker.client().await;
    let topic = NewTopic::new("stamped", 1).config("message.timestamp.type", "LogAppendTime");
    client.admin().create_topic(topic).await.unwrap();
    let producer = client.producer(ProducerConfig {
        linger: Duration::from_millis(0),
        ..ProducerConfig::default()
    });
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let before = now();
    let mut delivered = Vec::new();
    for timestamp in [1_000, before + 10 * 365 * 86_400_000] {
        let record = ProducerRecord::new("stamped", Bytes::from_static(b"x")).timestamp(timestamp);
        delivered.push(
            producer
                .send(record)
                .await
                .unwrap()
                .await
                .unwrap()
                .timestamp,
        );
    }
    let after = now();
    assert!(
        delivered.iter().all(|t| (before..=after).contains(t)),
        "{delivered:?} not within {before}..={after}"
    );

    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign("stamped", &[0]).await.unwrap();
    consumer.seek("stamped", 0, Offset::Earliest).await.unwrap();
    let mut read = Vec::new();
    while read.len() < 2 {
        let records = consumer.poll(Duration::from_secs(5)).await.unwrap();
        assert!(!records.is_empty(), "no records");
        read.extend(records.iter().map(|r| r.timestamp));
    }
    assert_eq!(read, delivered);
    let admin = client.admin();
    let by_time = |t| admin.list_offsets("stamped", 0, Offset::Timestamp(t));
    assert_eq!(by_time(before).await.unwrap(), 0);
    assert_eq!(by_time(after + 1).await.unwrap(), 2);
}
