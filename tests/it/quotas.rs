//! Client quotas: a client over `producer_byte_rate` or `consumer_byte_rate` has its
//! answers held back, so it settles at its rate instead of taking the broker's.

use std::time::{Duration, Instant};

use meridian_client::{ConsumerConfig, NewTopic, Offset, ProducerConfig, ProducerRecord};

use crate::harness::{send_all, TestBroker};

const RATE: usize = 256 * 1024;

/// One MiB produced and fetched at 256 KiB/s (a second of burst, then the rate)
/// takes three seconds or more each way, and the broker counts the time it held
/// answers back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_quota_is_held_to_its_rate() {
    let metrics = format!("127.0.0.1:{}", crate::harness::free_ports(1)[0]);
    let broker = TestBroker::start(&[
        &format!("producer_byte_rate={RATE}"),
        &format!("consumer_byte_rate={RATE}"),
        &format!("metrics_listen={metrics}"),
    ]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("quota", 1))
        .await
        .unwrap();
    let value = vec![b'q'; 1024];
    let records = (0..1024).map(|_| ProducerRecord::new("quota", value.clone()));
    let producer = client.producer(ProducerConfig::default());
    let started = Instant::now();
    send_all(&producer, records).await;
    let produced_in = started.elapsed();
    // 1 MiB less the 256 KiB of burst, at 256 KiB/s.
    assert!(
        produced_in >= Duration::from_millis(2_500),
        "1 MiB produced in {produced_in:?} at {RATE} bytes/s"
    );

    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign("quota", &[0]).await.unwrap();
    consumer.seek("quota", 0, Offset::Earliest).await.unwrap();
    let started = Instant::now();
    let mut received = 0;
    while received < 1024 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{received} records"
        );
        received += consumer
            .poll(Duration::from_millis(500))
            .await
            .unwrap()
            .len();
    }
    let consumed_in = started.elapsed();
    assert!(
        consumed_in >= Duration::from_millis(2_500),
        "1 MiB fetched in {consumed_in:?} at {RATE} bytes/s"
    );

    let samples = crate::metrics::scrape(&metrics);
    for flow in ["produce", "fetch"] {
        let held = crate::metrics::value(
            &samples,
            &format!("meridian_client_throttle_seconds_total{{flow=\"{flow}\"}}"),
        );
        assert!(held >= 2.0, "{flow}: answers held {held} s");
    }
}
