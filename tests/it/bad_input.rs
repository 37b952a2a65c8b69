//! Every kind of bad input gets a typed error, and the broker keeps serving.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use meridian_client::{ErrorCode, NewTopic, ProducerConfig, ProducerRecord};
use meridian_tests::{mounts_here, SKIP};
use meridian_wire::frame::{decode_response, encode_request, ResponseFrame};
use meridian_wire::messages::*;

use crate::harness::{batch, fetch, mutate, produce, raw_request, seeded, TestBroker};

/// Sends a produce request and returns the one partition's error code and message.
async fn produce_error(client: &meridian_client::Client, request: Request) -> (ErrorCode, String) {
    match client.request(request).await.unwrap() {
        Response::Produce(r) => {
            let p = &r.topics[0].partitions[0];
            (p.error, p.message.clone())
        }
        other => panic!("unexpected response {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_errors_are_typed_and_harmless() {
    let broker = TestBroker::start(&["max_partitions_per_request=3"]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("small", 2).config("max.message.bytes", "1024"))
        .await
        .unwrap();

    let mut bad_crc = batch(10).to_vec();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xFF;
    let mut truncated = batch(10).to_vec();
    truncated.truncate(30);
    let many_partitions = Request::Produce(ProduceRequest {
        acks: 1,
        timeout_ms: 1000,
        topics: vec![ProduceTopic {
            name: "small".into(),
            partitions: (0..4)
                .map(|p| ProducePartition {
                    partition: p,
                    records: batch(1),
                })
                .collect(),
        }],
    });
    let cases: Vec<(&str, Request, ErrorCode, &str)> = vec![
        (
            "bad crc",
            produce("small", 0, 1, Bytes::from(bad_crc)),
            ErrorCode::CorruptMessage,
            "CRC",
        ),
        (
            "truncated batch",
            produce("small", 0, 1, Bytes::from(truncated)),
            ErrorCode::CorruptMessage,
            "truncated",
        ),
        (
            "empty records",
            produce("small", 0, 1, Bytes::new()),
            ErrorCode::CorruptMessage,
            "",
        ),
        (
            "too large",
            produce("small", 0, 1, batch(2000)),
            ErrorCode::MessageTooLarge,
            "max.message.bytes=1024",
        ),
        (
            "unknown topic",
            produce("nope", 0, 1, batch(1)),
            ErrorCode::UnknownTopic,
            "does not exist",
        ),
        (
            "bad topic name",
            produce("bad/name", 0, 1, batch(1)),
            ErrorCode::InvalidTopic,
            "contains `/`",
        ),
        (
            "partition out of range",
            produce("small", 7, 1, batch(1)),
            ErrorCode::InvalidPartition,
            "partition 7",
        ),
        (
            "bad acks",
            produce("small", 0, 5, batch(1)),
            ErrorCode::InvalidRequiredAcks,
            "acks",
        ),
        (
            "too many partitions",
            many_partitions,
            ErrorCode::PolicyViolation,
            "max_partitions_per_request",
        ),
    ];
    for (name, request, code, message) in cases {
        let (got_code, got_message) = produce_error(&client, request).await;
        assert_eq!(got_code, code, "{name}: {got_message}");
        assert!(
            got_message.contains(message),
            "{name}: `{got_message}` lacks `{message}`"
        );
    }
    // Nothing bad was appended; a good batch lands at offset 0.
    let (code, _) = produce_error(&client, produce("small", 0, 1, batch(10))).await;
    assert_eq!(code, ErrorCode::None);
    let described = client.admin().describe_topic("small").await.unwrap();
    assert_eq!(described.partitions[0].high_watermark, 1);

    // The SDK surfaces the same errors on the delivery future.
    let producer = client.producer(ProducerConfig {
        linger: Duration::ZERO,
        ..ProducerConfig::default()
    });
    // (The client may refuse it before sending, or the broker after; either way typed.)
    let outcome = match producer
        .send(ProducerRecord::new("small", Bytes::from(vec![0u8; 4000])))
        .await
    {
        Err(e) => Err(e),
        Ok(delivery) => delivery.await.map(drop),
    };
    let err = outcome.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::MessageTooLarge), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_admin_errors() {
    let broker = TestBroker::start(&["max_partitions_per_topic=100"]);
    let admin = broker.client().await.admin();
    let cases: Vec<(NewTopic, ErrorCode, &str)> = vec![
        (NewTopic::new("", 1), ErrorCode::InvalidTopic, "empty"),
        (NewTopic::new("..", 1), ErrorCode::InvalidTopic, "reserved"),
        (
            NewTopic::new("x".repeat(250), 1),
            ErrorCode::InvalidTopic,
            "limit is 249",
        ),
        (
            NewTopic::new("huge", 101),
            ErrorCode::InvalidPartitions,
            "max_partitions_per_topic",
        ),
        (
            NewTopic::new("cfg", 1).config("retention.ms", "soon"),
            ErrorCode::InvalidConfig,
            "integer",
        ),
        (
            NewTopic::new("cfg", 1).config("no.such.key", "1"),
            ErrorCode::InvalidConfig,
            "unknown topic config",
        ),
        (
            NewTopic::new("cfg", 1).config("cleanup.policy", "compacted"),
            ErrorCode::InvalidConfig,
            "expected delete, compact or compact,delete",
        ),
        (
            NewTopic::new("cfg", 1).config("min.cleanable.dirty.ratio", "1.5"),
            ErrorCode::InvalidConfig,
            "between 0 and 1",
        ),
        (
            NewTopic {
                replication_factor: 3,
                ..NewTopic::new("rf", 1)
            },
            ErrorCode::InvalidReplicationFactor,
            "single-broker",
        ),
    ];
    for (topic, code, message) in cases {
        let name = topic.name.clone();
        let err = admin.create_topic(topic).await.unwrap_err();
        assert_eq!(err.code(), Some(code), "{name}: {err}");
        assert!(
            err.to_string().contains(message),
            "{name}: `{err}` lacks `{message}`"
        );
    }
    // 0 partitions is not an error: it asks for the broker's default_partitions.
    admin.create_topic(NewTopic::new("zero", 0)).await.unwrap();
    assert_eq!(
        admin.describe_topic("zero").await.unwrap().partitions.len(),
        1
    );
    admin.delete_topic("zero").await.unwrap();
    admin.create_topic(NewTopic::new("dup", 1)).await.unwrap();
    let err = admin
        .create_topic(NewTopic::new("dup", 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TopicAlreadyExists));
    let err = admin.delete_topic("ghost").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic));
    admin.delete_topic("dup").await.unwrap();
    assert!(admin.list_topics().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_create_topics_when_enabled() {
    let broker = TestBroker::start(&["auto_create_topics=true", "default_partitions=3"]);
    let client = broker.client().await;
    let (code, message) = produce_error(&client, produce("fresh", 2, 1, batch(5))).await;
    assert_eq!(code, ErrorCode::None, "{message}");
    let described = client.admin().describe_topic("fresh").await.unwrap();
    assert_eq!(described.partitions.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_out_of_range_is_an_error() {
    let broker = TestBroker::start(&[]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("f", 1))
        .await
        .unwrap();
    produce_error(&client, produce("f", 0, 1, batch(5))).await;
    for (offset, code) in [
        (0, ErrorCode::None),
        (1, ErrorCode::None),
        (2, ErrorCode::OffsetOutOfRange),
        (-5, ErrorCode::OffsetOutOfRange),
    ] {
        let Response::Fetch(r) = client
            .request(fetch("f", offset, 0, 0, 1 << 20))
            .await
            .unwrap()
        else {
            panic!("not a fetch response")
        };
        assert_eq!(r.topics[0].partitions[0].error, code, "offset {offset}");
        assert_eq!(
            r.topics[0].partitions[0].high_watermark >= 0,
            code == ErrorCode::None
        );
    }
}

fn frame_error(body: Option<Bytes>) -> (ErrorCode, String) {
    match decode_response(ApiKey::ApiVersions, body.expect("an error response")).unwrap() {
        ResponseFrame::Error { code, message } => (code, message),
        ResponseFrame::Ok(r) => panic!("expected an error, got {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_stream() {
    let broker = TestBroker::start(&["max_frame_bytes=65536"]);
    let connection = broker.raw_connection().await;
    let mut oversized = BytesMut::new();
    oversized.put_u32(65537);
    oversized.put_slice(&[0u8; 64]);
    let cases: Vec<(&str, Vec<u8>, ErrorCode, &str)> = vec![
        (
            "garbage body",
            vec![0, 0, 0, 2, 0, 0],
            ErrorCode::InvalidRequest,
            "truncated",
        ),
        (
            "unknown api",
            vec![0, 0, 0, 4, 0, 99, 0, 0],
            ErrorCode::UnsupportedVersion,
            "API key 99",
        ),
        (
            "future version",
            vec![0, 0, 0, 4, 0, 5, 0, 9],
            ErrorCode::UnsupportedVersion,
            "version 9",
        ),
        (
            "oversized frame",
            oversized.to_vec(),
            ErrorCode::FrameTooLarge,
            "65536",
        ),
        (
            "stream ends inside frame",
            vec![0, 0, 0, 100, 0, 0, 0],
            ErrorCode::InvalidRequest,
            "ended inside a frame",
        ),
        (
            "short length prefix",
            vec![0, 0],
            ErrorCode::InvalidRequest,
            "ended inside a frame",
        ),
        (
            "trailing bytes",
            [
                &encode_request(&Request::DescribeTopics(DescribeTopicsRequest {
                    names: vec![],
                }))[..],
                &[1, 2, 3],
            ]
            .concat(),
            ErrorCode::InvalidRequest,
            "",
        ),
    ];
    for (name, bytes, code, message) in cases {
        let mut bytes = bytes;
        if name == "trailing bytes" {
            // Grow the length prefix to cover the junk, so the frame itself is whole.
            let len = (bytes.len() - 4) as u32;
            bytes[..4].copy_from_slice(&len.to_be_bytes());
        }
        let (got, got_message) = frame_error(raw_request(&connection, &bytes).await);
        assert_eq!(got, code, "{name}: {got_message}");
        assert!(
            got_message.contains(message),
            "{name}: `{got_message}` lacks `{message}`"
        );
    }
    // The same connection still works.
    let ok = raw_request(
        &connection,
        &encode_request(&Request::ApiVersions(ApiVersionsRequest {
            client_software: "t".into(),
        })),
    )
    .await
    .unwrap();
    assert!(matches!(
        decode_response(ApiKey::ApiVersions, ok).unwrap(),
        ResponseFrame::Ok(Response::ApiVersions(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_request_harms_nothing() {
    let broker = TestBroker::start(&[]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("v", 1))
        .await
        .unwrap();
    for _ in 0..5 {
        let connection = broker.raw_connection().await;
        let frame = encode_request(&produce("v", 0, 1, batch(5000)));
        let (mut send, _recv) = connection.open_bi().await.unwrap();
        send.write_all(&frame[..frame.len() / 2]).await.unwrap();
        connection.close(0u32.into(), b"bye");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Nothing half-sent was appended; the broker still serves.
    let described = client.admin().describe_topic("v").await.unwrap();
    assert_eq!(described.partitions[0].high_watermark, 0);
    let (code, _) = produce_error(&client, produce("v", 0, 1, batch(5))).await;
    assert_eq!(code, ErrorCode::None);
}

/// A full disk: produce gets StorageError, reads keep working, nothing acknowledged
/// is lost, and writes resume once space is freed. The disk is a 3 MiB tmpfs: as
/// root mounted here, else in a user namespace of its own
/// ([`meridian_tests::mounts_here`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_refuses_writes_and_keeps_serving_reads() {
    let name = "disk_full_refuses_writes_and_keeps_serving_reads";
    if !mounts_here(module_path!(), name) {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let mount = temp.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&mount)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("{SKIP} {name}: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let broker = TestBroker::start_in(&mount.join("data"), &[], None);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("filler", 1))
        .await
        .unwrap();
    client
        .admin()
        .create_topic(NewTopic::new("data", 1))
        .await
        .unwrap();
    let (code, _) = produce_error(&client, produce("filler", 0, 1, batch(1_000_000))).await;
    assert_eq!(code, ErrorCode::None);
    let mut accepted = 0i64;
    let mut full = None;
    for _ in 0..200 {
        let (code, message) = produce_error(&client, produce("data", 0, 1, batch(50_000))).await;
        if code == ErrorCode::None {
            accepted += 1;
        } else {
            full = Some((code, message));
            break;
        }
    }
    let (code, message) = full.expect("the 3 MiB disk never filled");
    assert_eq!(code, ErrorCode::StorageError, "{message}");
    assert!(accepted > 0);
    // Fill the last pages with small batches too.
    for _ in 0..2_000 {
        let (code, _) = produce_error(&client, produce("data", 0, 1, batch(100))).await;
        if code != ErrorCode::None {
            break;
        }
        accepted += 1;
    }
    // A group's membership cannot be written either: the join is refused, and no
    // member is left behind holding a share of the partitions.
    let join = Request::JoinGroup(JoinGroupRequest {
        group_id: "g".into(),
        member_id: String::new(),
        instance_id: None,
        client_id: "c".into(),
        topics: vec!["data".into()],
        assignor: "range".into(),
        session_timeout_ms: 30_000,
        rebalance_timeout_ms: 30_000,
    });
    let Response::JoinGroup(joined) = client.request(join).await.unwrap() else {
        panic!()
    };
    assert_eq!(joined.error, ErrorCode::StorageError, "{}", joined.message);
    let members = client
        .admin()
        .describe_group("g")
        .await
        .map(|d| d.members.len())
        .unwrap_or(0);
    assert_eq!(members, 0, "a member left behind");
    // Reads work and see exactly the accepted batches.
    let described = client.admin().describe_topic("data").await.unwrap();
    assert_eq!(described.partitions[0].high_watermark, accepted);
    let mut consumer = client.consumer(meridian_client::ConsumerConfig::default());
    consumer.assign("data", &[0]).await.unwrap();
    consumer
        .seek("data", 0, meridian_client::Offset::Earliest)
        .await
        .unwrap();
    let mut n = 0;
    while n < accepted {
        n += consumer.poll(Duration::from_secs(5)).await.unwrap().len() as i64;
    }
    assert_eq!(n, accepted);
    // Free space; writes resume at the next offset.
    client.admin().delete_topic("filler").await.unwrap();
    let request = produce("data", 0, 1, batch(50_000));
    let Response::Produce(r) = client.request(request).await.unwrap() else {
        panic!()
    };
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.error, ErrorCode::None, "{}", p.message);
    assert_eq!(p.base_offset, accepted);
}

/// The broker never stops for a malformed request on QUIC either: requests of nine
/// kinds, each changed at one place (`harness::mutate`: a byte, an INT32 or INT16
/// made extreme, a varint spliced in, the frame cut short; from a fixed seed, so a
/// failure repeats), each on a stream of its own. Every stream gets its answer within the
/// harness's 10 s (a typed error, or the request served), the connection stays
/// up, and the broker's log has no panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_never_stop_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("broker.log");
    let broker = TestBroker::start_logging_to(&log, &["max_fetch_wait_ms=100"], &[]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("fuzz", 2))
        .await
        .unwrap();
    let requests: Vec<Bytes> = [
        Request::ApiVersions(ApiVersionsRequest {
            client_software: "fuzz".into(),
        }),
        Request::Metadata(MetadataRequest {
            topics: Some(vec!["fuzz".into()]),
        }),
        produce("fuzz", 0, 1, batch(40)),
        fetch("fuzz", 0, 50, 1, 1 << 20),
        Request::ListOffsets(ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: "fuzz".into(),
                partitions: vec![ListOffsetsPartition {
                    partition: 1,
                    timestamp: EARLIEST_TIMESTAMP,
                }],
            }],
        }),
        Request::CreateTopics(CreateTopicsRequest {
            topics: vec![CreateTopic {
                name: "fuzz-created".into(),
                partitions: 2,
                replication_factor: 1,
                configs: vec![ConfigEntry {
                    key: "retention.ms".into(),
                    value: "60000".into(),
                }],
            }],
            validate_only: false,
        }),
        Request::DescribeTopics(DescribeTopicsRequest {
            names: vec!["fuzz".into(), "fuzz-created".into()],
        }),
        Request::DeleteRecords(DeleteRecordsRequest {
            topics: vec![DeleteRecordsTopic {
                name: "fuzz".into(),
                partitions: vec![DeleteRecordsPartition {
                    partition: 0,
                    offset: 1,
                }],
            }],
        }),
        Request::DeleteTopics(DeleteTopicsRequest {
            names: vec!["fuzz-created".into()],
            ids: vec![meridian_wire::TopicId([9; 16])],
        }),
    ]
    .iter()
    .map(encode_request)
    .collect();
    let mut next = seeded(0x2545_f491_4f6c_dd1d);
    let connection = broker.raw_connection().await;
    let mut answered = 0;
    for _ in 0..2000 {
        let mut frame = requests[next(requests.len())].to_vec();
        // Past the length prefix, API key and version.
        mutate(&mut frame, 8, &mut next);
        // The length prefix covers what is there, so the body itself is what is bad.
        let body_len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&body_len.to_be_bytes());
        if raw_request(&connection, &frame).await.is_some() {
            answered += 1;
        }
    }
    assert_eq!(answered, 2000, "every stream is answered");
    assert!(broker.is_running());
    let described = client.admin().describe_topic("fuzz").await.unwrap();
    assert_eq!(described.partitions.len(), 2);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

/// A record dated further ahead of the broker's clock than the topic's
/// `message.timestamp.after.max.ms` (1 hour by default) is refused with
/// `InvalidTimestamp` and nothing is written (one such record would keep time
/// retention from ever deleting its segment); the setting moves the bound, and
/// `message.timestamp.before.max.ms` refuses old records once set.
#[test]
fn records_dated_far_from_the_brokers_clock_are_refused() {
    let broker = TestBroker::start(&[]);
    let cli = |args: &[&str], input: &str| broker.cli(args, input);
    assert!(cli(&["topic", "create", "dated"], "").0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let hour = 3_600_000;
    let record = |ts: i64| format!("{{\"value\":\"at{ts}\",\"timestamp\":{ts}}}\n");
    let produce = |ts: i64| cli(&["produce", "dated", "--format", "json"], &record(ts));

    let (ok, _, err) = produce(now + 2 * hour);
    assert!(!ok);
    assert!(
        err.contains("InvalidTimestamp")
            && err.contains("message.timestamp.after.max.ms allows 3600000 ms"),
        "{err}"
    );
    assert!(produce(now).0);
    let (ok, _, err) = cli(
        &[
            "topic",
            "alter",
            "dated",
            "-c",
            "message.timestamp.after.max.ms=86400000",
        ],
        "",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = produce(now + 2 * hour);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &[
            "topic",
            "alter",
            "dated",
            "-c",
            "message.timestamp.before.max.ms=3600000",
        ],
        "",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = produce(now - 2 * hour);
    assert!(!ok);
    assert!(
        err.contains("InvalidTimestamp") && err.contains("message.timestamp.before.max.ms"),
        "{err}"
    );

    let (ok, out, err) = cli(&["consume", "dated", "--from", "earliest", "-n", "2"], "");
    assert!(ok, "{err}");
    assert_eq!(out, format!("at{now}\nat{}\n", now + 2 * hour));
    let (ok, out, _) = cli(&["consume", "dated", "--from", "2", "--until", "3"], "");
    assert!(ok && out.is_empty(), "nothing after the two: {out}");
}
