use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use meridian_client::{Acks, ConsumerConfig, NewTopic, Offset, ProducerConfig, ProducerRecord};

use crate::harness::TestBroker;

/// Produces until `acked_target` records are acknowledged, kills the broker with
/// SIGKILL mid-stream, restarts it, and checks every acknowledged record is there
/// exactly once, at the offset it was acknowledged with.
async fn kill_during_produce(settings: &[&str], acks: Acks, acked_target: usize) {
    let mut broker = TestBroker::start(settings);
    // Requests cut off by the kill fail fast instead of waiting out the default timeout.
    let client = broker
        .client_with(|c| c.request_timeout = Duration::from_secs(2))
        .await;
    client
        .admin()
        .create_topic(NewTopic::new("crash", 4))
        .await
        .unwrap();
    let acked: Arc<Mutex<Vec<(u32, i64, u64)>>> = Arc::default();
    let producer = client.producer(ProducerConfig {
        acks,
        retries: 0,
        ..ProducerConfig::default()
    });
    let producing = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let (tx, mut rx) =
                tokio::sync::mpsc::channel::<(u64, meridian_client::DeliveryFuture)>(50_000);
            let collector = tokio::spawn(async move {
                while let Some((seq, delivery)) = rx.recv().await {
                    if let Ok(meta) = delivery.await {
                        acked
                            .lock()
                            .unwrap()
                            .push((meta.partition, meta.offset, seq));
                    }
                }
            });
            for seq in 0u64.. {
                let value = Bytes::from(format!("{seq:012}-{}", "x".repeat(200)));
                let Ok(delivery) = producer.send(ProducerRecord::new("crash", value)).await else {
                    break;
                };
                if tx.send((seq, delivery)).await.is_err() {
                    break;
                }
            }
            drop(tx);
            let _ = collector.await;
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < acked_target {
        assert!(tokio::time::Instant::now() < deadline, "producer too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    broker.kill9();
    let _ = tokio::time::timeout(Duration::from_secs(60), producing).await;
    drop(client);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= acked_target);

    broker.restart();
    let client = broker.client().await;
    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign_all("crash").await.unwrap();
    let mut ends = HashMap::new();
    for p in 0..4 {
        consumer.seek("crash", p, Offset::Earliest).await.unwrap();
        ends.insert(
            p,
            client
                .admin()
                .list_offsets("crash", p, Offset::Latest)
                .await
                .unwrap(),
        );
    }
    let mut stored: HashMap<(u32, i64), u64> = HashMap::new();
    let mut seen_seq = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ends
        .iter()
        .any(|(p, end)| consumer.position("crash", *p).is_none_or(|pos| pos < *end))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "could not read back the log"
        );
        for r in consumer.poll(Duration::from_millis(500)).await.unwrap() {
            let seq: u64 = std::str::from_utf8(&r.value.as_ref().unwrap()[..12])
                .unwrap()
                .parse()
                .unwrap();
            assert!(seen_seq.insert(seq), "record {seq} stored twice");
            stored.insert((r.partition, r.offset), seq);
        }
    }
    let mut missing = 0;
    for (partition, offset, seq) in &acked {
        match stored.get(&(*partition, *offset)) {
            Some(s) if s == seq => {}
            other => {
                missing += 1;
                eprintln!("acknowledged record {seq} at {partition}/{offset}: found {other:?}");
            }
        }
    }
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged records lost after kill -9",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_produce_loses_no_acknowledged_record() {
    kill_during_produce(&[], Acks::Leader, 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_produce_with_flush_always() {
    kill_during_produce(&["flush=always"], Acks::All, 5_000).await;
}

/// The log's tail is torn by hand after a kill (as a power cut could leave it): the
/// broker truncates the torn batch and serves everything before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_truncated_on_restart() {
    let mut broker = TestBroker::start(&[]);
    {
        let client = broker.client().await;
        client
            .admin()
            .create_topic(NewTopic::new("torn", 1))
            .await
            .unwrap();
        let producer = client.producer(ProducerConfig {
            linger: Duration::ZERO,
            ..ProducerConfig::default()
        });
        for i in 0..10u32 {
            producer
                .send(ProducerRecord::new("torn", Bytes::from(vec![i as u8; 100])))
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    broker.kill9();
    let segment = broker
        .data_dir
        .join("topics/torn/0/00000000000000000000.log");
    let len = std::fs::metadata(&segment).unwrap().len();
    // Cut the last batch in half and append garbage.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(len - 50).unwrap();
    drop(file);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[0xEE; 37]);
    std::fs::write(&segment, bytes).unwrap();

    broker.restart();
    let client = broker.client().await;
    assert_eq!(
        client
            .admin()
            .list_offsets("torn", 0, Offset::Latest)
            .await
            .unwrap(),
        9
    );
    let producer = client.producer(ProducerConfig {
        linger: Duration::ZERO,
        ..ProducerConfig::default()
    });
    let meta = producer
        .send(ProducerRecord::new("torn", Bytes::from_static(b"after")))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        meta.offset, 9,
        "appends continue right after the last intact batch"
    );
}
