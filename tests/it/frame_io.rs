//! `frame_io::read_body`, which broker and client both read frame bodies with, over
//! a real QUIC connection on 127.0.0.1: a body is allocated whole on its first bytes
//! only within the connection's budget, and read correctly either way; large bodies
//! are received into the memory of earlier ones nobody holds any more.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_client::frame_io::{read_body, BodyBudget};
use meridian_wire::buffers::{BufferPool, MIN_POOLED_BYTES};

use crate::harness::raw_client_endpoint;

/// A server and a client endpoint connected to each other, the server taking
/// unidirectional streams.
async fn connected_pair() -> (quinn::Endpoint, quinn::Connection, quinn::Connection) {
    let dir = tempfile::tempdir().unwrap();
    let identity = meridian_server::tls::load_or_generate(
        &dir.path().join("cert.pem"),
        &dir.path().join("key.pem"),
        &[],
    )
    .unwrap();
    let mut server_config = quinn::ServerConfig::with_crypto(
        meridian_server::tls::server_crypto(&identity, None).unwrap(),
    );
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(8));
    server_config.transport_config(Arc::new(transport));
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();

    let client = raw_client_endpoint(identity.certs[0].clone());
    let addr = server.local_addr().unwrap();
    let (accepted, connected) = tokio::join!(
        async { server.accept().await.unwrap().await.unwrap() },
        async { client.connect(addr, "localhost").unwrap().await.unwrap() }
    );
    (server, accepted, connected)
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_body_sets_aside_memory_only_within_the_budget() {
    let (_server, server_side, client_side) = connected_pair().await;
    let budget = BodyBudget::new(1_000_000, BufferPool::new(0));
    let body = |seed: u8| -> Vec<u8> {
        (0..600_000u32)
            .map(|i| (i as u8).wrapping_mul(seed))
            .collect()
    };
    let (a, b) = (body(3), body(7));

    // A's first bytes arrive: its whole body is set aside.
    let mut send_a = client_side.open_uni().await.unwrap();
    send_a.write_all(&a[..100]).await.unwrap();
    let mut recv_a = server_side.accept_uni().await.unwrap();
    let reader_budget = budget.clone();
    let read_a = tokio::spawn(async move { read_body(&mut recv_a, 600_000, &reader_budget).await });
    until("A's body to be set aside", || budget.available() == 400_000).await;

    // B does not fit in what is left: it is read as chunks, joined at the end, and
    // nothing more is set aside.
    let mut send_b = client_side.open_uni().await.unwrap();
    send_b.write_all(&b[..100]).await.unwrap();
    let mut recv_b = server_side.accept_uni().await.unwrap();
    let reader_budget = budget.clone();
    let read_b = tokio::spawn(async move { read_body(&mut recv_b, 600_000, &reader_budget).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(budget.available(), 400_000);
    for piece in b[100..].chunks(50_000) {
        send_b.write_all(piece).await.unwrap();
    }
    let got_b = tokio::time::timeout(Duration::from_secs(10), read_b)
        .await
        .expect("B must not wait for A")
        .unwrap()
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    assert_eq!(
        got_b, b,
        "B, read as chunks, must come out whole and in order"
    );
    assert_eq!(budget.available(), 400_000, "A still holds its share");

    // A's remaining bytes are copied in as they come; once read, its share is back.
    for piece in a[100..].chunks(50_000) {
        send_a.write_all(piece).await.unwrap();
    }
    let got_a = tokio::time::timeout(Duration::from_secs(10), read_a)
        .await
        .expect("A's body arrived")
        .unwrap()
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    assert_eq!(
        got_a, a,
        "A, copied in as it came, must come out whole and in order"
    );
    assert_eq!(budget.available(), 1_000_000);

    // A body cut short is an error, and gives its share back too.
    let mut send_c = client_side.open_uni().await.unwrap();
    send_c.write_all(&a[..1000]).await.unwrap();
    send_c.finish().unwrap();
    let mut recv_c = server_side.accept_uni().await.unwrap();
    let short = read_body(&mut recv_c, 600_000, &budget).await;
    assert!(
        matches!(
            short,
            Err(meridian_client::frame_io::BodyError::FinishedEarly(1000))
        ),
        "{short:?}"
    );
    assert_eq!(budget.available(), 1_000_000);
}

/// Sends `body` on a new stream and reads it with `read_body`.
async fn send_and_read(
    server_side: &quinn::Connection,
    client_side: &quinn::Connection,
    budget: &BodyBudget,
    body: &[u8],
) -> Bytes {
    let mut send = client_side.open_uni().await.unwrap();
    send.write_all(body).await.unwrap();
    send.finish().unwrap();
    let mut recv = server_side.accept_uni().await.unwrap();
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        read_body(&mut recv, body.len(), budget),
    )
    .await
    .expect("the body arrived")
    .map_err(|e| format!("{e:?}"))
    .unwrap();
    assert_eq!(got, body, "a body must come out whole and in order");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_are_received_into_memory_nobody_holds_within_the_limit() {
    let (_server, server_side, client_side) = connected_pair().await;
    let kept = BufferPool::new(1_000_000);
    let budget = BodyBudget::new(10_000_000, kept.clone());
    let body = |len: usize, seed: u8| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
            .collect()
    };

    // A is kept; while something holds part of it (a record), B needs new memory.
    let a = send_and_read(&server_side, &client_side, &budget, &body(300_000, 3)).await;
    assert_eq!(kept.kept_bytes(), 300_000);
    let a_memory = a.as_ptr();
    let a_record = a.slice(1000..2000);
    drop(a);
    let b = send_and_read(&server_side, &client_side, &budget, &body(300_000, 5)).await;
    assert_ne!(b.as_ptr(), a_memory, "A's memory is still held");
    assert_eq!(kept.kept_bytes(), 600_000);

    // Once A's last record is dropped, C (smaller, but not much) lands in its memory.
    drop(a_record);
    let c = send_and_read(&server_side, &client_side, &budget, &body(250_000, 7)).await;
    assert_eq!(c.as_ptr(), a_memory, "C must reuse A's memory");
    assert_eq!(kept.kept_bytes(), 600_000, "A's buffer is counted once");

    // D would take the kept memory past the limit: read into new memory, not kept.
    let d = send_and_read(&server_side, &client_side, &budget, &body(500_000, 9)).await;
    assert_eq!(kept.kept_bytes(), 600_000);
    drop(d);

    // Small bodies are left to the allocator.
    let small = send_and_read(&server_side, &client_side, &budget, &body(10_000, 11)).await;
    assert!(small.len() < MIN_POOLED_BYTES);
    assert_eq!(kept.kept_bytes(), 600_000);

    // A body far smaller than the free buffers does not take one of them.
    drop((b, c));
    let e = send_and_read(&server_side, &client_side, &budget, &body(70_000, 13)).await;
    assert_ne!(e.as_ptr(), a_memory);
    assert_eq!(kept.kept_bytes(), 670_000);

    // Nothing kept at a limit of 0.
    let none = BufferPool::new(0);
    let budget = BodyBudget::new(10_000_000, none.clone());
    send_and_read(&server_side, &client_side, &budget, &body(300_000, 15)).await;
    assert_eq!(none.kept_bytes(), 0);
}
