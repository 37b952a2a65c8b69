//! The SDK's cluster awareness against the real broker: several bootstrap addresses
//! of which the first is dead, and a broker that goes away mid-produce and comes back
//! (kill -9, restart on the same port): the producer re-routes through fresh metadata,
//! retries, and idempotence keeps every record exactly once, in order.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use meridian_client::{
    Client, ClientConfig, ConsumerConfig, NewTopic, Offset, ProducerConfig, ProducerRecord, Trust,
};

use crate::harness::{meridian_bin, TestBroker};

/// An address where nothing answers: a UDP socket that is bound (so no ICMP error
/// comes back) but never read, like a host that died. Kept alive by the caller.
fn silent_address() -> (std::net::UdpSocket, String) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap().to_string();
    (socket, address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_reachable_bootstrap_address_is_used() {
    let broker = TestBroker::start(&[]);
    let (_silent, dead) = silent_address();
    let trust = Trust::parse_fingerprint(&broker.fingerprint).unwrap();
    let mut config = ClientConfig::new(format!("{dead}, {}", broker.addr), trust.clone());
    // The dead address costs this much; the broker's handshake must fit in it too,
    // on a loaded machine.
    config.connect_timeout = Duration::from_secs(3);
    assert_eq!(
        config.bootstrap_servers,
        vec![dead.clone(), broker.addr.clone()]
    );
    let client = Client::connect(config).await.unwrap();
    let broker_id = client.broker_info().await.unwrap().broker_id;

    // Everything works through the routed paths: admin, produce to the leader,
    // list offsets and fetch from the leader.
    client
        .admin()
        .create_topic(NewTopic::new("boot", 3))
        .await
        .unwrap();
    for p in 0..3 {
        // A single broker leads everything.
        assert_eq!(client.leader("boot", p).await.unwrap(), broker_id);
    }
    let producer = client.producer(ProducerConfig::default());
    for i in 0..30 {
        producer
            .send(ProducerRecord::new("boot", format!("r{i}")).partition(i % 3))
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();
    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign_all("boot").await.unwrap();
    for p in 0..3 {
        consumer.seek("boot", p, Offset::Earliest).await.unwrap();
        assert_eq!(
            client
                .admin()
                .list_offsets("boot", p, Offset::Latest)
                .await
                .unwrap(),
            10
        );
    }
    let mut n = 0;
    while n < 30 {
        n += consumer.poll(Duration::from_secs(5)).await.unwrap().len();
    }
    assert_eq!(n, 30);

    // Nothing reachable at all: one error naming every address.
    let (_other, dead_too) = silent_address();
    let mut config = ClientConfig::with_bootstrap([dead.clone(), dead_too.clone()], trust);
    config.connect_timeout = Duration::from_millis(200);
    let error = Client::connect(config)
        .await
        .err()
        .expect("nothing answers");
    let message = error.to_string();
    assert!(
        message.contains(&dead) && message.contains(&dead_too),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_takes_a_bootstrap_list() {
    let broker = TestBroker::start(&[]);
    // An unresolvable first address fails fast; the second is the broker.
    let list = format!("no-such-broker.invalid:9092,{}", broker.addr);
    let run = |args: &[&str], env: Option<(&str, &str)>| {
        let mut command = std::process::Command::new(meridian_bin());
        command
            .args(args)
            .arg("--fingerprint")
            .arg(&broker.fingerprint)
            .env_remove("MERIDIAN_BROKER")
            .env_remove("MERIDIAN_BOOTSTRAP")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((key, value)) = env {
            command.env(key, value);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {stderr}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["topic", "create", "cli-a", "--bootstrap", &list], None);
    run(&["topic", "create", "cli-b", "--broker", &list], None);
    let listed = run(&["topic", "list"], Some(("MERIDIAN_BOOTSTRAP", &list)));
    assert!(
        listed.contains("cli-a") && listed.contains("cli-b"),
        "{listed}"
    );
    let listed = run(&["topic", "list"], Some(("MERIDIAN_BROKER", &broker.addr)));
    assert!(listed.contains("cli-a"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_lost_mid_produce_is_retried_without_duplicates_or_reordering() {
    let listen = format!("listen=127.0.0.1:{}", crate::harness::free_ports(1)[0]);
    let mut broker = TestBroker::start(&[listen.as_str()]);
    let client = broker
        .client_with(|c| {
            c.request_timeout = Duration::from_secs(2);
            c.connect_timeout = Duration::from_millis(500);
        })
        .await;
    client
        .admin()
        .create_topic(NewTopic::new("moving", 2))
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig {
        linger: Duration::from_millis(1),
        batch_size: 512,
        request_timeout: Duration::from_secs(2),
        ..ProducerConfig::default()
    });
    assert!(producer.config().enable_idempotence);
    let n = 2_000usize;
    let sending = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut deliveries = Vec::with_capacity(n);
            for i in 0..n {
                let record =
                    ProducerRecord::new("moving", format!("{i:06}")).key(format!("k{}", i % 7));
                deliveries.push(producer.send(record).await.unwrap());
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            let mut outcomes = Vec::with_capacity(n);
            for d in deliveries {
                outcomes.push(d.await);
            }
            outcomes
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The connection drops under the producer; the broker is gone for a while.
    broker.kill9();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    broker.restart();
    let outcomes = tokio::time::timeout(Duration::from_secs(60), sending)
        .await
        .expect("deliveries finish once the broker is back")
        .unwrap();
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );

    // Every record once, and each key's records in send order.
    let reader = broker.client().await;
    let mut consumer = reader.consumer(ConsumerConfig::default());
    consumer.assign_all("moving").await.unwrap();
    let mut ends = BTreeMap::new();
    for p in 0..2 {
        consumer.seek("moving", p, Offset::Earliest).await.unwrap();
        ends.insert(
            p,
            reader
                .admin()
                .list_offsets("moving", p, Offset::Latest)
                .await
                .unwrap(),
        );
    }
    let mut by_key: BTreeMap<Vec<u8>, Vec<usize>> = BTreeMap::new();
    let mut total = 0;
    while ends
        .iter()
        .any(|(p, end)| consumer.position("moving", *p).unwrap() < *end)
    {
        for r in consumer.poll(Duration::from_secs(2)).await.unwrap() {
            let value: usize = std::str::from_utf8(r.value.as_ref().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            by_key
                .entry(r.key.unwrap().to_vec())
                .or_default()
                .push(value);
            total += 1;
        }
    }
    assert_eq!(total, n, "every acknowledged record exactly once");
    for (key, values) in by_key {
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "records of key {:?} out of order or duplicated",
            String::from_utf8_lossy(&key)
        );
    }
}
