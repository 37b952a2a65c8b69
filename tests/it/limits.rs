//! Broker limits that are not covered by bad_input.rs: connections, requests in flight,
//! fetch wait and fetch size. Each is set low through its config key and observed.

use std::time::Duration;

use meridian_client::NewTopic;
use meridian_wire::messages::*;

use crate::harness::{batch, fetch, produce, TestBroker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_extra_connections() {
    let broker = TestBroker::start(&["max_connections=2"]);
    let first = broker.raw_connection().await;
    let second = broker.raw_connection().await;
    let third = tokio::time::timeout(Duration::from_secs(10), broker.try_raw_connection())
        .await
        .expect("answered");
    assert!(third.is_err(), "a third connection must be refused");
    drop((first, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_inflight_requests_bounds_streams_per_connection() {
    let broker = TestBroker::start(&["max_inflight_requests=2"]);
    let connection = broker.raw_connection().await;
    // Two requests begun and not finished occupy both slots.
    let (mut a, _ra) = connection.open_bi().await.unwrap();
    a.write_all(&[0, 0, 0, 100]).await.unwrap();
    let (mut b, _rb) = connection.open_bi().await.unwrap();
    b.write_all(&[0, 0, 0, 100]).await.unwrap();
    let third = tokio::time::timeout(Duration::from_millis(1500), connection.open_bi()).await;
    assert!(
        third.is_err(),
        "a third concurrent request must wait for a free slot"
    );
    // Finishing one (the broker answers it with an error and closes it) frees a slot.
    a.finish().unwrap();
    let third = tokio::time::timeout(Duration::from_secs(10), connection.open_bi()).await;
    assert!(
        third.is_ok(),
        "a slot must free up once a request completes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_fetch_wait_caps_long_polls() {
    let broker = TestBroker::start(&["max_fetch_wait_ms=300"]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("quiet", 1))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let Response::Fetch(r) = client
        .request(fetch("quiet", 0, 25_000, 1, 1 << 20))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(r.topics[0].partitions[0].records.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the broker waited {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_fetch_bytes_caps_responses_but_returns_at_least_one_batch() {
    let broker = TestBroker::start(&["max_fetch_bytes=3000"]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("big", 1))
        .await
        .unwrap();
    // One batch bigger than the cap, then ten small ones.
    client
        .request(produce("big", 0, 1, batch(5000)))
        .await
        .unwrap();
    for _ in 0..10 {
        client
            .request(produce("big", 0, 1, batch(1000)))
            .await
            .unwrap();
    }
    let Response::Fetch(r) = client
        .request(fetch("big", 0, 0, 1, 1 << 20))
        .await
        .unwrap()
    else {
        panic!()
    };
    let first = &r.topics[0].partitions[0].records;
    assert!(
        first.len() > 5000 && first.len() < 6000,
        "exactly the oversized batch: {}",
        first.len()
    );
    let Response::Fetch(r) = client
        .request(fetch("big", 1, 0, 1, 1 << 20))
        .await
        .unwrap()
    else {
        panic!()
    };
    let rest = &r.topics[0].partitions[0].records;
    assert!(
        !rest.is_empty() && rest.len() <= 3000,
        "capped at max_fetch_bytes: {}",
        rest.len()
    );
}
