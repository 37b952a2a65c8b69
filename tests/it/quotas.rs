//! Client quotas: a client over `producer_byte_rate` or `consumer_byte_rate` has its
//! answers held back, so it settles at its rate instead of taking the broker's.

use std::time::{Duration, Instant};

use meridian_client::{
    Client, ConsumerConfig, NewTopic, Offset, Producer, ProducerConfig, ProducerRecord,
};

use crate::harness::{send_all, TestBroker};

const RATE: usize = 256 * 1024;

/// Topic `quota` (one partition), and a producer.
async fn topic_and_producer(client: &Client) -> Producer {
    client
        .admin()
        .create_topic(NewTopic::new("quota", 1))
        .await
        .unwrap();
    client.producer(ProducerConfig::default())
}

/// 1 MiB for topic `quota`, in 1 KiB records.
fn megabyte() -> impl Iterator<Item = ProducerRecord> {
    (0..1024).map(|_| ProducerRecord::new("quota", vec![b'q'; 1024]))
}

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
    let producer = topic_and_producer(&client).await;
    let started = Instant::now();
    send_all(&producer, megabyte()).await;
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

/// `producer_byte_rate` as Kafka's DescribeConfigs of the broker lists it, under
/// Meridian's key, and its `config_source` (4: the configuration, 5: the default).
fn described_producer_rate(kafka: &str) -> (String, i8) {
    use kafka_protocol::messages::{self as k, ApiKey};
    let mut raw = crate::kafka::Raw::connect(kafka);
    let describe = k::DescribeConfigsRequest::default().with_resources(vec![
        k::describe_configs_request::DescribeConfigsResource::default()
            .with_resource_type(4)
            .with_resource_name(kafka_protocol::protocol::StrBytes::from_static_str("1"))
            .with_configuration_keys(None),
    ]);
    raw.send(ApiKey::DescribeConfigs, 4, &describe);
    let r: k::DescribeConfigsResponse = raw.receive(ApiKey::DescribeConfigs, 4);
    assert_eq!(r.results[0].error_code, 0, "{r:?}");
    let setting = r.results[0]
        .configs
        .iter()
        .find(|c| c.name.as_str() == "producer_byte_rate")
        .unwrap_or_else(|| panic!("{r:?}"));
    (
        setting.value.as_deref().unwrap_or_default().to_string(),
        setting.config_source,
    )
}

/// SIGHUP reads the configuration file again and takes its client quotas: a quota
/// lifted there holds nothing back any more, without a restart, and Kafka's
/// DescribeConfigs of the broker shows the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_takes_the_quotas_of_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, format!("producer_byte_rate = {RATE}\n")).unwrap();
    let log = dir.path().join("broker.log");
    let [metrics, kafka] = crate::harness::free_ports(2)[..] else {
        unreachable!()
    };
    let (metrics, kafka) = (format!("127.0.0.1:{metrics}"), format!("127.0.0.1:{kafka}"));
    let broker = TestBroker::start_logging_to(
        &log,
        &[
            &format!("metrics_listen={metrics}"),
            &format!("kafka_listen={kafka}"),
        ],
        &[
            ("MERIDIAN_CONFIG", config.to_str().unwrap()),
            ("RUST_LOG", "info"),
        ],
    );
    let producer = topic_and_producer(&broker.client().await).await;
    send_all(&producer, megabyte()).await;
    let held = || {
        crate::metrics::value(
            &crate::metrics::scrape(&metrics),
            "meridian_client_throttle_seconds_total{flow=\"produce\"}",
        )
    };
    let before = held();
    assert!(before > 0.0, "the quota held nothing back");
    assert_eq!(described_producer_rate(&kafka), (RATE.to_string(), 4));

    std::fs::write(&config, "producer_byte_rate = 0\n").unwrap();
    broker.signal("HUP");
    let logged = crate::harness::await_log(&log, "SIGHUP: reloaded the client quotas", 1);
    assert!(logged.contains("producer_byte_rate=0"), "{logged}");
    for _ in 0..4 {
        send_all(&producer, megabyte()).await;
    }
    assert_eq!(held(), before, "answers held after the quota was lifted");
    assert_eq!(described_producer_rate(&kafka), ("0".to_string(), 5));
}
