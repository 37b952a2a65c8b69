//! Idempotent producers through the real broker: a retried batch is written once, gaps
//! and stale epochs are refused, and the state survives kill -9 (across segment rolls,
//! through producer snapshots).

use bytes::Bytes;
use meridian_client::{Client, ErrorCode, NewTopic, Offset};
use meridian_wire::batch::{encode_batch, Compression, NewRecord, ProducerIdentity};
use meridian_wire::messages::*;

use crate::harness::{produce, TestBroker};

fn batch(producer_id: i64, epoch: i16, first_seq: i32, n: usize) -> Bytes {
    let records: Vec<NewRecord> = (0..n)
        .map(|i| NewRecord {
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!("seq {}", first_seq as usize + i))),
            headers: vec![],
        })
        .collect();
    encode_batch(
        &records,
        Compression::None,
        ProducerIdentity {
            producer_id,
            producer_epoch: epoch,
            base_sequence: first_seq,
        },
    )
    .unwrap()
}

/// Sends one batch to partition 0; `(error, base_offset)`.
pub(crate) async fn send(client: &Client, topic: &str, records: Bytes) -> (ErrorCode, i64) {
    let Response::Produce(r) = client
        .request(produce(topic, 0, -1, records))
        .await
        .unwrap()
    else {
        panic!("not a produce response");
    };
    let p = &r.topics[0].partitions[0];
    (p.error, p.base_offset)
}

pub(crate) async fn producer_id(client: &Client) -> i64 {
    let request = Request::InitProducerId(InitProducerIdRequest {
        transactional_id: None,
    });
    let Response::InitProducerId(r) = client.request(request).await.unwrap() else {
        panic!("not an InitProducerId response");
    };
    assert_eq!(r.error, ErrorCode::None, "{}", r.message);
    assert_eq!(r.producer_epoch, 0);
    r.producer_id
}

/// The headers of the batches stored in partition 0 of `topic` (one fetch from 0).
pub(crate) async fn stored_batch_headers(
    client: &Client,
    topic: &str,
) -> Vec<meridian_wire::batch::BatchHeader> {
    let Response::Fetch(r) = client
        .request(crate::harness::fetch(topic, 0, 0, 1, 1 << 20))
        .await
        .unwrap()
    else {
        panic!("not a fetch response");
    };
    meridian_wire::batch::split_batches(r.topics[0].partitions[0].records.clone())
        .map(|item| item.unwrap().0)
        .collect()
}

pub(crate) async fn log_end(client: &Client, topic: &str) -> i64 {
    client
        .admin()
        .list_offsets(topic, 0, Offset::Latest)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_batches_are_written_once_and_gaps_are_refused() {
    // Small segments, so the state has to come back from snapshots after the restart.
    let mut broker = TestBroker::start(&[]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("idem", 1).config("segment.bytes", "1024"))
        .await
        .unwrap();
    let pid = producer_id(&client).await;
    let other = producer_id(&client).await;
    assert_ne!(pid, other, "ids are unique");

    let mut next_seq = 0;
    let mut expected_end = 0;
    for round in 0..40 {
        let records = batch(pid, 0, next_seq, 3);
        let (error, base) = send(&client, "idem", records.clone()).await;
        assert_eq!(
            (error, base),
            (ErrorCode::None, expected_end),
            "round {round}"
        );
        // The retry (say the first answer was lost) gets the same offsets, no new copy.
        assert_eq!(
            send(&client, "idem", records).await,
            (ErrorCode::None, expected_end)
        );
        next_seq += 3;
        expected_end += 3;
    }
    assert_eq!(log_end(&client, "idem").await, expected_end);
    let described = client.admin().describe_topic("idem").await.unwrap();
    assert!(
        described.partitions[0].segments >= 3,
        "the test should roll segments"
    );

    // A gap, an unknown producer past sequence 0, two batches in one request.
    let (error, _) = send(&client, "idem", batch(pid, 0, next_seq + 1, 1)).await;
    assert_eq!(error, ErrorCode::OutOfOrderSequenceNumber);
    let (error, _) = send(&client, "idem", batch(other, 0, 7, 1)).await;
    assert_eq!(error, ErrorCode::UnknownProducerId);
    let two = [batch(other, 0, 0, 1), batch(other, 0, 1, 1)].concat();
    let (error, _) = send(&client, "idem", Bytes::from(two)).await;
    assert_eq!(error, ErrorCode::InvalidRequest);

    // kill -9; the dedup state comes back (snapshot at the last roll + replay).
    broker.kill9();
    broker.restart();
    let client = broker.client().await;
    let last = batch(pid, 0, next_seq - 3, 3);
    assert_eq!(
        send(&client, "idem", last).await,
        (ErrorCode::None, expected_end - 3)
    );
    assert_eq!(log_end(&client, "idem").await, expected_end);
    let (error, base) = send(&client, "idem", batch(pid, 0, next_seq, 1)).await;
    assert_eq!((error, base), (ErrorCode::None, expected_end));

    // A newer epoch restarts sequences and fences the old one.
    assert_eq!(
        send(&client, "idem", batch(pid, 1, 0, 1)).await.0,
        ErrorCode::None
    );
    let (error, _) = send(&client, "idem", batch(pid, 0, next_seq + 1, 1)).await;
    assert_eq!(error, ErrorCode::InvalidProducerEpoch);

    // Producer ids are never handed out twice, even across a crash.
    let after_restart = producer_id(&client).await;
    assert!(after_restart > other, "{after_restart} after {other}");
}

/// The SDK producer is idempotent by default: a million-record run elsewhere checks
/// no duplicates; here, its batches carry a producer id and sequences the broker
/// tracks (a replayed batch from it is recognised).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_producer_is_idempotent_by_default() {
    let broker = TestBroker::start(&[]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("sdk", 1))
        .await
        .unwrap();
    let producer = client.producer(meridian_client::ProducerConfig::default());
    assert!(producer.config().enable_idempotence);
    for i in 0..10 {
        producer
            .send(meridian_client::ProducerRecord::new("sdk", format!("r{i}")))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Read the stored batches: every one carries a producer id and consecutive sequences.
    let mut expected_seq = 0;
    let mut producer_ids = std::collections::BTreeSet::new();
    for header in stored_batch_headers(&client, "sdk").await {
        assert!(header.producer_id >= 0, "batch without a producer id");
        assert_eq!(header.base_sequence, expected_seq);
        expected_seq += header.records_count;
        producer_ids.insert(header.producer_id);
    }
    assert_eq!(expected_seq, 10);
    assert_eq!(producer_ids.len(), 1);
}

/// Produces `n` records while the broker is frozen (SIGSTOP) for a while: requests
/// time out and are retried while the originals still wait in the broker's socket, so
/// after SIGCONT the broker sees both. Returns (acknowledged, records in the log,
/// distinct values in the log).
async fn produce_through_a_freeze(idempotent: bool, n: usize) -> (usize, usize, usize) {
    let broker = TestBroker::start(&[]);
    // The topic is made, and the producer's client learns of it, before the freeze,
    // with time to spare: only the produce requests need the short timeout.
    broker
        .client()
        .await
        .admin()
        .create_topic(NewTopic::new("retry", 1))
        .await
        .unwrap();
    let client = broker
        .client_with(|c| c.request_timeout = std::time::Duration::from_millis(300))
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while let Err(e) = client.partition_count("retry").await {
        assert!(
            std::time::Instant::now() < deadline,
            "no metadata for `retry`: {e}"
        );
    }
    let producer = client.producer(meridian_client::ProducerConfig {
        enable_idempotence: idempotent,
        retries: 1_000,
        linger: std::time::Duration::ZERO,
        batch_size: 64,
        request_timeout: std::time::Duration::from_millis(300),
        ..meridian_client::ProducerConfig::default()
    });
    let sending = tokio::spawn(async move {
        let mut deliveries = Vec::with_capacity(n);
        for i in 0..n {
            let record = meridian_client::ProducerRecord::new("retry", format!("{i:06}"));
            deliveries.push(producer.send(record).await.unwrap());
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let mut acked = 0;
        for d in deliveries {
            if d.await.is_ok() {
                acked += 1;
            }
        }
        acked
    });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    broker.signal("STOP");
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    broker.signal("CONT");
    let acked = sending.await.unwrap();

    let reader = broker.client().await;
    let end = log_end(&reader, "retry").await;
    let mut consumer = reader.consumer(meridian_client::ConsumerConfig::default());
    consumer.assign("retry", &[0]).await.unwrap();
    consumer.seek("retry", 0, Offset::Earliest).await.unwrap();
    let mut values = Vec::new();
    while consumer.position("retry", 0).unwrap() < end {
        for r in consumer
            .poll(std::time::Duration::from_secs(1))
            .await
            .unwrap()
        {
            values.push(r.value.unwrap());
        }
    }
    let distinct: std::collections::BTreeSet<_> = values.iter().cloned().collect();
    (acked, values.len(), distinct.len())
}

/// Answers lost after the write: the idempotent producer's retries are recognised and
/// nothing is duplicated; the same run without idempotence shows why it matters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_lost_answers_do_not_duplicate() {
    let n = 500;
    let (acked, stored, distinct) = produce_through_a_freeze(true, n).await;
    assert_eq!(
        (acked, stored, distinct),
        (n, n, n),
        "idempotent: every record once"
    );
    let (_, stored, distinct) = produce_through_a_freeze(false, n).await;
    assert_eq!(distinct, n);
    assert!(
        stored > n,
        "without idempotence the same retries duplicate ({stored} stored)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_the_partition_forgot_starts_its_sequence_again() {
    // The broker forgets producers idle for 1 s, looking every 100 ms.
    let broker = TestBroker::start(&[
        "producer_id_expiration_ms=1000",
        "retention_check_interval_ms=100",
    ]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("idle", 1))
        .await
        .unwrap();
    let producer = client.producer(meridian_client::ProducerConfig::default());
    let send = |i: usize| {
        let producer = producer.clone();
        async move {
            producer
                .send(meridian_client::ProducerRecord::new(
                    "idle",
                    format!("r{i}"),
                ))
                .await
                .unwrap()
                .await
                .unwrap_or_else(|e| panic!("record {i}: {e}"))
        }
    };
    for i in 0..5 {
        send(i).await;
    }
    // Idle well past the expiration: the partition forgets the producer, and its
    // next batch (sequence 5) would be refused as `UnknownProducerId`.
    tokio::time::sleep(std::time::Duration::from_millis(3_000)).await;
    for i in 5..10 {
        send(i).await;
    }
    let records =
        crate::harness::read_partition_0(&client, "idle", std::time::Duration::from_secs(10)).await;
    let values: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    assert_eq!(values, expected, "each record once, in order");
    // The sequence started over under the same producer id, with the first batch
    // after the idle time. A pause of a loaded machine between two other sends may
    // have made the broker forget the producer there too: every other batch goes on
    // from the one before or starts over.
    let headers = stored_batch_headers(&client, "idle").await;
    assert_eq!(headers.len(), 10, "one batch per record: {headers:?}");
    assert_eq!(headers[5].base_sequence, 0, "{headers:?}");
    for pair in headers.windows(2) {
        assert!(
            [0, pair[0].base_sequence + pair[0].records_count].contains(&pair[1].base_sequence),
            "{headers:?}"
        );
    }
    assert!(
        headers
            .iter()
            .all(|h| h.producer_id == headers[0].producer_id),
        "{headers:?}"
    );
}
