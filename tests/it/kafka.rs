//! The Kafka listener (`kafka_listen`) as Kafka clients see it. rskafka, a Kafka
//! client written for Kafka brokers, creates topics, produces and fetches; records
//! cross between the Kafka and Meridian protocols both ways; offsets committed
//! through Kafka's API are the group's; bad frames close their own connection only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{self as k, ApiKey, GroupId, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

use meridian_wire::TopicId;

use crate::harness::{batch, described_setting, free_ports, mutate, seeded, TestBroker};

/// A broker with a Kafka listener, and that listener's address.
pub(crate) fn kafka_broker(settings: &[&str]) -> (TestBroker, String) {
    kafka_broker_started(settings, TestBroker::start)
}

/// [`kafka_broker`] with its log appended to `log` and `env` set
/// ([`TestBroker::start_logging_to`]).
fn kafka_broker_logging_to(
    log: &std::path::Path,
    settings: &[&str],
    env: &[(&str, &str)],
) -> (TestBroker, String) {
    kafka_broker_started(settings, |all| TestBroker::start_logging_to(log, all, env))
}

/// `start` with `settings` and a Kafka listener on a free port, and its address.
fn kafka_broker_started(
    settings: &[&str],
    start: impl FnOnce(&[&str]) -> TestBroker,
) -> (TestBroker, String) {
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let listen = format!("kafka_listen={addr}");
    let mut all = vec![listen.as_str()];
    all.extend_from_slice(settings);
    (start(&all), addr)
}

pub(crate) async fn kafka_client(addr: &str) -> Client {
    ClientBuilder::new(vec![addr.to_string()])
        .client_id("meridian-it")
        .build()
        .await
        .expect("rskafka connects to the Kafka listener")
}

/// The first `n` records of `topic` as `meridian consume --format json` prints them.
pub(crate) fn consume_json(broker: &TestBroker, topic: &str, n: usize) -> Vec<serde_json::Value> {
    let n = n.to_string();
    let args = [
        "consume", topic, "--from", "earliest", "-n", &n, "--format", "json",
    ];
    let (ok, out, err) = broker.cli(&args, "");
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len().to_string(), n, "{out}");
    lines
}

pub(crate) fn record(i: usize) -> Record {
    Record {
        key: Some(format!("key-{i}").into_bytes()),
        value: Some(format!("value-{i}").into_bytes()),
        headers: [("n".to_string(), i.to_string().into_bytes())].into(),
        timestamp: Utc
            .timestamp_millis_opt(1_700_000_000_000 + i as i64)
            .unwrap(),
    }
}

/// Every record of `partition` from `from` to the high watermark, in order.
pub(crate) async fn fetch_all(
    client: &rskafka::client::partition::PartitionClient,
    from: i64,
) -> Vec<(i64, Record)> {
    let mut got = Vec::new();
    let mut next = from;
    loop {
        let (records, high_watermark) = client
            .fetch_records(next, 1..1_000_000, 1_000)
            .await
            .expect("fetch");
        // A fetch inside a batch returns the whole batch; the client skips ahead.
        for r in records {
            if r.offset < next {
                continue;
            }
            assert_eq!(r.offset, next, "offsets in order, none missing");
            next += 1;
            got.push((r.offset, r.record));
        }
        if next >= high_watermark {
            return got;
        }
    }
}

#[tokio::test]
async fn a_kafka_client_creates_a_topic_produces_and_fetches() {
    let (broker, addr) = kafka_broker(&[]);
    let client = kafka_client(&addr).await;
    let controller = client.controller_client().unwrap();
    controller
        .create_topic("orders", 3, 1, 5_000)
        .await
        .unwrap();
    let again = controller.create_topic("orders", 3, 1, 5_000).await;
    let e = format!("{:?}", again.expect_err("the topic exists"));
    assert!(e.contains("TopicAlreadyExists"), "{e}");

    let topics = client.list_topics().await.unwrap();
    let orders = topics.iter().find(|t| t.name == "orders").expect("listed");
    assert_eq!(orders.partitions.len(), 3);

    let p0 = client
        .partition_client("orders", 0, UnknownTopicHandling::Error)
        .await
        .unwrap();
    let plain: Vec<Record> = (0..100).map(record).collect();
    let offsets = p0.produce(plain, Compression::NoCompression).await.unwrap();
    assert_eq!(offsets, (0..100).collect::<Vec<i64>>());
    let zstd: Vec<Record> = (100..300).map(record).collect();
    let offsets = p0.produce(zstd, Compression::Zstd).await.unwrap();
    assert_eq!(offsets, (100..300).collect::<Vec<i64>>());

    let got = fetch_all(&p0, 0).await;
    assert_eq!(got.len(), 300);
    for (offset, r) in &got {
        let expected = record(*offset as usize);
        assert_eq!(r.key, expected.key);
        assert_eq!(r.value, expected.value);
        assert_eq!(r.headers, expected.headers);
        assert_eq!(r.timestamp, expected.timestamp);
    }
    // From the middle of the zstd batch.
    assert_eq!(fetch_all(&p0, 150).await[0].0, 150);
    assert_eq!(p0.get_offset(OffsetAt::Earliest).await.unwrap(), 0);
    assert_eq!(p0.get_offset(OffsetAt::Latest).await.unwrap(), 300);
    let at = Utc.timestamp_millis_opt(1_700_000_000_000 + 120).unwrap();
    assert_eq!(p0.get_offset(OffsetAt::Timestamp(at)).await.unwrap(), 120);
    // ListOffsets 7's max timestamp (the last record here; none on an empty
    // partition) and 8's earliest local offset (the log start: no tiered storage).
    let mut raw = Raw::connect(&addr);
    let ask = |timestamp: i64| {
        use k::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
        k::ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
            .with_name(name("orders"))
            .with_partitions(
                (0..2)
                    .map(|p| {
                        ListOffsetsPartition::default()
                            .with_partition_index(p)
                            .with_timestamp(timestamp)
                    })
                    .collect(),
            )])
    };
    for (version, timestamp, expected) in [
        (7, -3, [(299, 1_700_000_000_299), (-1, -1)]),
        (8, -4, [(0, -1), (0, -1)]),
    ] {
        raw.send(ApiKey::ListOffsets, version, &ask(timestamp));
        let r: k::ListOffsetsResponse = raw.receive(ApiKey::ListOffsets, version);
        let got: Vec<(i64, i64)> = r.topics[0]
            .partitions
            .iter()
            .map(|p| (p.offset, p.timestamp))
            .collect();
        assert_eq!(got, expected, "version {version}");
    }

    // Meridian's own CLI (QUIC) reads what the Kafka client wrote.
    let lines = consume_json(&broker, "orders", 300);
    assert_eq!(lines[7]["key"], "key-7");
    assert_eq!(lines[7]["value"], "value-7");
    assert_eq!(lines[250]["offset"], 250);

    // And the Kafka client reads what Meridian's CLI wrote, compressed.
    let (ok, _, err) = broker.cli(
        &[
            "produce",
            "orders",
            "-p",
            "1",
            "-K",
            ":",
            "--compression",
            "zstd",
        ],
        "a:1\nb:2\nc:3\n",
    );
    assert!(ok, "{err}");
    let p1 = client
        .partition_client("orders", 1, UnknownTopicHandling::Error)
        .await
        .unwrap();
    let got: Vec<(Vec<u8>, Vec<u8>)> = fetch_all(&p1, 0)
        .await
        .into_iter()
        .map(|(_, r)| (r.key.unwrap(), r.value.unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"2".to_vec()),
            (b"c".to_vec(), b"3".to_vec())
        ]
    );

    // Unknown topics and partitions are Kafka's errors.
    let missing = client
        .partition_client("nope", 0, UnknownTopicHandling::Error)
        .await;
    assert!(missing.is_err());
    let far = client
        .partition_client("orders", 7, UnknownTopicHandling::Error)
        .await;
    assert!(far.is_err());

    controller.delete_topic("orders", 5_000).await.unwrap();
    let (ok, out, err) = broker.cli(&["topic", "list"], "");
    assert!(ok, "{err}");
    assert!(!out.contains("orders"), "{out}");
}

/// A request frame as a Kafka client sends it, without its size.
fn request_body<T: Encodable + HeaderVersion>(
    api: ApiKey,
    version: i16,
    correlation: i32,
    body: &T,
) -> BytesMut {
    let mut frame = BytesMut::new();
    k::RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str("raw")))
        .encode(&mut frame, T::header_version(version))
        .unwrap();
    body.encode(&mut frame, version).unwrap();
    frame
}

/// `body` behind its 4-byte size, as it goes on the wire.
fn sized(body: &[u8]) -> Vec<u8> {
    [&(body.len() as i32).to_be_bytes()[..], body].concat()
}

/// A consumer's JoinGroup metadata (ConsumerProtocolSubscription v1) for `topic`.
fn subscription(topic: &'static str) -> Bytes {
    let mut subscription = BytesMut::new();
    subscription.put_i16(1);
    k::ConsumerProtocolSubscription::default()
        .with_topics(vec![StrBytes::from_static_str(topic)])
        .encode(&mut subscription, 1)
        .unwrap();
    subscription.freeze()
}

/// A raw Kafka connection: requests encoded, responses decoded by kafka-protocol.
pub(crate) struct Raw {
    stream: TcpStream,
    correlation: i32,
}

impl Raw {
    pub(crate) fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect to the Kafka listener");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Raw {
            stream,
            correlation: 0,
        }
    }

    pub(crate) fn send<T: Encodable + HeaderVersion>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &T,
    ) {
        self.correlation += 1;
        let body = request_body(api, version, self.correlation, body);
        self.stream.write_all(&sized(&body)).unwrap();
    }

    pub(crate) fn receive<T: Decodable>(&mut self, api: ApiKey, version: i16) -> T {
        self.receive_for(api, version, self.correlation)
    }

    /// The response to request `correlation` (of several in flight), which must
    /// be the next one on the connection.
    fn receive_for<T: Decodable>(&mut self, api: ApiKey, version: i16, correlation: i32) -> T {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).expect("a response");
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut body).unwrap();
        let mut body = Bytes::from(body);
        let header =
            k::ResponseHeader::decode(&mut body, api.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, correlation);
        let response = T::decode(&mut body, version).unwrap();
        assert!(!body.has_remaining());
        response
    }

    /// Whether the broker closed the connection (reading gives end of file).
    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
            || matches!(self.stream.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }

    /// Whether the broker ends the connection within the read timeout, whatever it
    /// sends first (a TLS listener answers bytes that are not TLS with an alert).
    pub(crate) fn ends(&mut self) -> bool {
        let mut buffer = [0u8; 512];
        loop {
            match self.stream.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
    }

    /// A connection the broker serves, waiting (up to 5 s) for a free slot.
    fn connect_served(addr: &str) -> Raw {
        for _ in 0..50 {
            let mut raw = Raw::connect(addr);
            // Correlation id 1.
            raw.send(ApiKey::ApiVersions, 3, &k::ApiVersionsRequest::default());
            let mut size = [0u8; 4];
            if raw.stream.read_exact(&mut size).is_ok() {
                let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
                raw.stream.read_exact(&mut body).unwrap();
                return raw;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no connection slot came free");
    }

    fn api_versions(&mut self) -> k::ApiVersionsResponse {
        self.send(ApiKey::ApiVersions, 3, &k::ApiVersionsRequest::default());
        self.receive(ApiKey::ApiVersions, 3)
    }
}

/// Gzip and snappy batches are stored as they came and read by every client: rskafka
/// writes snappy as one raw block (as librdkafka does), kafka-python in snappy-java's
/// stream format (as Kafka's Java client does), Meridian's CLI in the latter too.
#[tokio::test]
async fn gzip_and_snappy_batches_cross_between_kafka_and_meridian_clients() {
    let (broker, addr) = kafka_broker(&[]);
    let (ok, _, err) = broker.cli(&["topic", "create", "codecs", "--partitions", "1"], "");
    assert!(ok, "{err}");
    let cli_records: Vec<(String, String)> = ["gzip", "snappy"]
        .iter()
        .flat_map(|codec| (0..3).map(move |i| (format!("cli-{codec}-{i}"), format!("{codec} {i}"))))
        .collect();
    for (codec, records) in ["gzip", "snappy"].iter().zip(cli_records.chunks(3)) {
        let lines: String = records.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let (ok, _, err) = broker.cli(
            &["produce", "codecs", "-K", ":", "--compression", codec],
            &lines,
        );
        assert!(ok, "{err}");
    }

    let client = kafka_client(&addr).await;
    let p0 = client
        .partition_client("codecs", 0, UnknownTopicHandling::Error)
        .await
        .unwrap();
    let gzip = p0.produce((0..100).map(record).collect(), Compression::Gzip);
    assert_eq!(gzip.await.unwrap(), (6..106).collect::<Vec<i64>>());
    let snappy = p0.produce((100..200).map(record).collect(), Compression::Snappy);
    assert_eq!(snappy.await.unwrap(), (106..206).collect::<Vec<i64>>());
    let got = fetch_all(&p0, 0).await;
    assert_eq!(got.len(), 206);
    for (offset, r) in &got[..6] {
        let (key, value) = &cli_records[*offset as usize];
        assert_eq!(r.key.as_deref(), Some(key.as_bytes()));
        assert_eq!(r.value.as_deref(), Some(value.as_bytes()));
    }
    for (offset, r) in &got[6..] {
        let expected = record(*offset as usize - 6);
        assert_eq!(
            (&r.key, &r.value, &r.headers),
            (&expected.key, &expected.value, &expected.headers)
        );
    }
    // From inside the snappy batch.
    assert_eq!(fetch_all(&p0, 150).await[0].0, 150);

    // kafka-python adds 300 records of each codec and reads all the partition back.
    let mut end: usize = 206;
    if let Some(summary) = kafka_python("compression.py", &[&addr, "codecs"]) {
        end = 806;
        assert_eq!(summary["end"], end);
        let seen = summary["records"].as_array().unwrap();
        assert_eq!(seen.len(), end);
        for (i, r) in seen.iter().enumerate() {
            assert_eq!(r[0], i, "{r}");
        }
        assert_eq!(seen[4][1], "cli-snappy-1");
        assert_eq!(seen[4][2], "snappy 1");
        assert_eq!(seen[150][1], "key-144");
        assert_eq!(seen[206][1], "gzip-0");
        assert_eq!(seen[805][1], "snappy-299");
        assert_eq!(seen[805][2], "snappy 299 ".repeat(40));
    }

    // Stored as the clients sent them: snappy-java streams (the CLI's, kafka-python's)
    // and gzip members are in the log, not records decompressed by the broker.
    let log = std::fs::read(
        broker
            .data_dir
            .join("topics/codecs/0/00000000000000000000.log"),
    )
    .unwrap();
    let count = |needle: &[u8]| log.windows(needle.len()).filter(|w| *w == needle).count();
    let streams = if end == 806 { 2 } else { 1 };
    assert_eq!(count(b"\x82SNAPPY\0"), streams);
    // The CLI's, rskafka's and kafka-python's gzip batches.
    assert!(count(b"\x1f\x8b\x08") > streams, "gzip members");

    // Meridian's CLI reads every batch, whichever client compressed it.
    let lines = consume_json(&broker, "codecs", end);
    assert_eq!(lines[2]["value"], "gzip 2");
    assert_eq!(lines[120]["key"], "key-114");
    if end == 806 {
        assert_eq!(lines[300]["key"], "gzip-94");
        assert_eq!(lines[700]["key"], "snappy-194");
        assert_eq!(lines[700]["value"], "snappy 194 ".repeat(40));
    }
}

pub(crate) fn name(s: &'static str) -> TopicName {
    TopicName(StrBytes::from_static_str(s))
}

/// OffsetForLeaderEpoch (version 4) for partition 0 of `topic`, one query per
/// `(current_leader_epoch, leader_epoch)`: each answer's error code, epoch and end
/// offset.
pub(crate) fn leader_epoch_ends(
    raw: &mut Raw,
    topic: &'static str,
    queries: &[(i32, i32)],
) -> Vec<(i16, i32, i64)> {
    use k::offset_for_leader_epoch_request::{OffsetForLeaderPartition, OffsetForLeaderTopic};
    let partitions = queries
        .iter()
        .map(|&(current, epoch)| {
            OffsetForLeaderPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(current)
                .with_leader_epoch(epoch)
        })
        .collect();
    let request = k::OffsetForLeaderEpochRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(name(topic))
            .with_partitions(partitions)]);
    raw.send(ApiKey::OffsetForLeaderEpoch, 4, &request);
    let r: k::OffsetForLeaderEpochResponse = raw.receive(ApiKey::OffsetForLeaderEpoch, 4);
    r.topics[0]
        .partitions
        .iter()
        .map(|p| (p.error_code, p.leader_epoch, p.end_offset))
        .collect()
}

/// On a single broker (no elections: one epoch, 0, as Metadata says), a Kafka
/// client's OffsetForLeaderEpoch and ListOffsets place every offset in epoch 0.
#[test]
fn a_single_broker_answers_leader_epochs_with_epoch_0() {
    let (broker, addr) = kafka_broker(&[]);
    let (ok, _, err) = broker.cli(&["topic", "create", "solo", "-p", "1"], "");
    assert!(ok, "{err}");
    let mut raw = Raw::connect(&addr);
    // Before any record: epoch 0 ends at the (empty) log's end.
    assert_eq!(
        leader_epoch_ends(&mut raw, "solo", &[(0, 0), (0, 1)]),
        [(0, 0, 0), (0, -1, -1)]
    );
    let (ok, _, err) = broker.cli(&["produce", "solo"], "a\nb\nc\n");
    assert!(ok, "{err}");
    assert_eq!(
        leader_epoch_ends(&mut raw, "solo", &[(0, 0), (0, 1)]),
        [(0, 0, 3), (0, -1, -1)]
    );
    // UNKNOWN_TOPIC_OR_PARTITION, per partition.
    assert_eq!(
        leader_epoch_ends(&mut raw, "missing", &[(0, 0)]),
        [(3, -1, -1)]
    );

    let list = k::ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![k::list_offsets_request::ListOffsetsTopic::default()
            .with_name(name("solo"))
            .with_partitions(vec![
                k::list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1),
            ])]);
    raw.send(ApiKey::ListOffsets, 8, &list);
    let r: k::ListOffsetsResponse = raw.receive(ApiKey::ListOffsets, 8);
    let p = &r.topics[0].partitions[0];
    assert_eq!((p.error_code, p.offset, p.leader_epoch), (0, 3, 0));
}

/// The ID Metadata (version 12) gives `topic`.
pub(crate) fn metadata_topic_id(raw: &mut Raw, topic: &'static str) -> TopicId {
    let metadata = k::MetadataRequest::default().with_topics(Some(vec![
        k::metadata_request::MetadataRequestTopic::default().with_name(Some(name(topic))),
    ]));
    raw.send(ApiKey::Metadata, 12, &metadata);
    let r: k::MetadataResponse = raw.receive(ApiKey::Metadata, 12);
    assert_eq!(r.topics[0].error_code, 0, "{r:?}");
    TopicId(r.topics[0].topic_id.into_bytes())
}

/// Fetch `version` (13 on) of partition 0 of the topic with ID `id`, from offset 0:
/// the ID the answer names, the partition's error code and its records.
fn fetch_by_id(raw: &mut Raw, id: TopicId, version: i16) -> (TopicId, i16, Bytes) {
    let request = k::FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![k::fetch_request::FetchTopic::default()
            .with_topic_id(meridian_kafka::kafka_topic_id(id))
            .with_partitions(vec![k::fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    raw.send(ApiKey::Fetch, version, &request);
    let r: k::FetchResponse = raw.receive(ApiKey::Fetch, version);
    assert_eq!(r.error_code, 0);
    let t = &r.responses[0];
    let p = &t.partitions[0];
    (
        TopicId(t.topic_id.into_bytes()),
        p.error_code,
        p.records.clone().unwrap_or_default(),
    )
}

fn holds(records: &[u8], value: &str) -> bool {
    records.windows(value.len()).any(|w| w == value.as_bytes())
}

/// Kafka consumers from Fetch 13 on (Java's since 3.1) name each topic by the ID
/// Metadata gave them (KIP-516): they read the topic with that ID, and once it is
/// deleted and created again under its name, the old ID reads nothing
/// (UNKNOWN_TOPIC_ID, where a name would have read the new topic from offset 0)
/// while the new ID reads the new topic.
#[test]
fn kafka_fetches_by_topic_id_read_that_topic_and_no_other() {
    let (broker, addr) = kafka_broker(&[]);
    let cli = |args: &[&str], stdin: &str| {
        let (ok, _, err) = broker.cli(args, stdin);
        assert!(ok, "{args:?}: {err}");
    };
    cli(&["topic", "create", "by-id", "-p", "1"], "");
    cli(
        &["produce", "by-id"],
        "first-incarnation
",
    );
    let mut raw = Raw::connect(&addr);
    let old = metadata_topic_id(&mut raw, "by-id");
    assert!(!old.is_none());
    for version in [13, 15, 17] {
        let (id, error, records) = fetch_by_id(&mut raw, old, version);
        assert_eq!((id, error), (old, 0), "version {version}");
        assert!(holds(&records, "first-incarnation"), "version {version}");
    }

    cli(&["topic", "delete", "by-id"], "");
    cli(&["topic", "create", "by-id", "-p", "1"], "");
    cli(
        &["produce", "by-id"],
        "second-incarnation
",
    );
    let new = metadata_topic_id(&mut raw, "by-id");
    assert_ne!(new, old, "a topic created again has a new ID");
    let (id, error, records) = fetch_by_id(&mut raw, old, 13);
    assert_eq!((id, error), (old, 100), "UNKNOWN_TOPIC_ID");
    assert!(records.is_empty());
    let (id, error, records) = fetch_by_id(&mut raw, new, 13);
    assert_eq!((id, error), (new, 0));
    assert!(holds(&records, "second-incarnation"));
    assert!(!holds(&records, "first-incarnation"));
    // The nil ID names no topic.
    let (_, error, _) = fetch_by_id(&mut raw, TopicId::NONE, 13);
    assert_ne!(error, 0);
}

/// DescribeTopicPartitions (KIP-966), as Kafka's admin clients from 3.7 describe
/// topics: page after page of at most the limit's partitions, in name order, the
/// next page where the cursor says, until the pages have described every
/// partition once; a topic named that does not exist is
/// UNKNOWN_TOPIC_OR_PARTITION and is not created by asking.
#[test]
fn describe_topic_partitions_pages_through_every_partition_once() {
    use k::describe_topic_partitions_request::{Cursor, TopicRequest};
    let (broker, addr) = kafka_broker(&["auto_create_topics=true"]);
    for (topic, partitions) in [("pages-b", "3"), ("pages-a", "4"), ("pages-c", "1")] {
        let (ok, _, err) = broker.cli(&["topic", "create", topic, "-p", partitions], "");
        assert!(ok, "{err}");
    }
    let mut raw = Raw::connect(&addr);
    let mut describe = |names: &[&'static str], cursor: Option<Cursor>| {
        let request = k::DescribeTopicPartitionsRequest::default()
            .with_topics(
                names
                    .iter()
                    .map(|n| TopicRequest::default().with_name(name(n)))
                    .collect(),
            )
            .with_response_partition_limit(3)
            .with_cursor(cursor);
        raw.send(ApiKey::DescribeTopicPartitions, 0, &request);
        let r: k::DescribeTopicPartitionsResponse = raw.receive(ApiKey::DescribeTopicPartitions, 0);
        r
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    for page in 1.. {
        assert!(
            page <= 4,
            "more pages than 8 partitions in 3s need: {seen:?}"
        );
        let r = describe(&["pages-c", "pages-a", "pages-b"], cursor);
        let partitions: usize = r.topics.iter().map(|t| t.partitions.len()).sum();
        assert!(partitions <= 3, "{r:?}");
        for t in &r.topics {
            assert_eq!(t.error_code, 0, "{t:?}");
            assert!(!t.topic_id.is_nil());
            for p in &t.partitions {
                assert_eq!((p.error_code, p.leader_id.0, p.leader_epoch), (0, 1, 0));
                let name = t.name.as_ref().unwrap().0.to_string();
                seen.push((name, p.partition_index));
            }
        }
        cursor = r.next_cursor.map(|c| {
            Cursor::default()
                .with_topic_name(c.topic_name)
                .with_partition_index(c.partition_index)
        });
        if cursor.is_none() {
            break;
        }
    }
    let expected: Vec<(String, i32)> = [("pages-a", 4), ("pages-b", 3), ("pages-c", 1)]
        .iter()
        .flat_map(|&(t, n)| (0..n).map(move |p| (t.to_string(), p)))
        .collect();
    assert_eq!(seen, expected);

    // Not there, and not made by asking (`auto_create_topics` is on).
    let r = describe(&["pages-ghost"], None);
    assert_eq!(
        (r.topics.len(), r.topics[0].error_code),
        (1, 3),
        "UNKNOWN_TOPIC_OR_PARTITION: {r:?}"
    );
    let (ok, out, err) = broker.cli(&["topic", "list"], "");
    assert!(ok && !out.contains("pages-ghost"), "{out}{err}");
}

/// Kafka's admin requests (as `kafka-configs`, `kafka-topics --alter` and
/// `kafka-delete-records` send them) read and change what Meridian's own tools see.
#[tokio::test]
async fn kafka_admin_requests_change_topic_settings_partitions_and_records() {
    use k::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
    let (broker, addr) = kafka_broker(&[]);
    let (ok, _, err) = broker.cli(&["topic", "create", "admin", "-p", "2"], "");
    assert!(ok, "{err}");
    let mut raw = Raw::connect(&addr);

    // Set a topic setting (a broker's settings are refused, the topic's still set).
    let set = |value: &'static str| {
        k::IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("admin"))
                .with_configs(vec![AlterableConfig::default()
                    .with_name(StrBytes::from_static_str("retention.ms"))
                    .with_config_operation(0)
                    .with_value(Some(StrBytes::from_static_str(value)))]),
            AlterConfigsResource::default()
                .with_resource_type(4)
                .with_resource_name(StrBytes::from_static_str("1")),
        ])
    };
    raw.send(ApiKey::IncrementalAlterConfigs, 1, &set("3600000"));
    let r: k::IncrementalAlterConfigsResponse = raw.receive(ApiKey::IncrementalAlterConfigs, 1);
    let mut codes: Vec<(i8, i16)> = r
        .responses
        .iter()
        .map(|r| (r.resource_type, r.error_code))
        .collect();
    codes.sort();
    assert_eq!(codes, [(2, 0), (4, 42)], "{r:?}");
    raw.send(ApiKey::IncrementalAlterConfigs, 1, &set("-7"));
    let r: k::IncrementalAlterConfigsResponse = raw.receive(ApiKey::IncrementalAlterConfigs, 1);
    let topic = r.responses.iter().find(|r| r.resource_type == 2).unwrap();
    assert_eq!(topic.error_code, 40, "INVALID_CONFIG: {r:?}");
    assert!(
        topic
            .error_message
            .as_deref()
            .unwrap()
            .contains("retention.ms"),
        "{r:?}"
    );

    // Read it back, as Kafka's tools and Meridian's do.
    let describe = k::DescribeConfigsRequest::default().with_resources(vec![
        k::describe_configs_request::DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str("admin"))
            .with_configuration_keys(None),
    ]);
    raw.send(ApiKey::DescribeConfigs, 4, &describe);
    let r: k::DescribeConfigsResponse = raw.receive(ApiKey::DescribeConfigs, 4);
    let configs: std::collections::BTreeMap<String, (String, i8)> = r.results[0]
        .configs
        .iter()
        .map(|c| {
            (
                c.name.to_string(),
                (
                    c.value.as_deref().unwrap_or("").to_string(),
                    c.config_source,
                ),
            )
        })
        .collect();
    assert_eq!(
        configs["retention.ms"],
        ("3600000".to_string(), 1),
        "{configs:?}"
    );
    assert_eq!(
        configs["cleanup.policy"],
        ("delete".to_string(), 5),
        "{configs:?}"
    );
    let (ok, out, err) = broker.cli(&["topic", "describe", "admin"], "");
    assert!(ok, "{err}");
    assert_eq!(
        described_setting(&out, "retention.ms").as_deref(),
        Some("3600000"),
        "{out}"
    );

    // Add partitions; fewer than there are is refused.
    let grow = |count| {
        k::CreatePartitionsRequest::default().with_topics(vec![
            k::create_partitions_request::CreatePartitionsTopic::default()
                .with_name(name("admin"))
                .with_count(count)
                .with_assignments(None),
        ])
    };
    raw.send(ApiKey::CreatePartitions, 3, &grow(4));
    let r: k::CreatePartitionsResponse = raw.receive(ApiKey::CreatePartitions, 3);
    assert_eq!(r.results[0].error_code, 0, "{r:?}");
    raw.send(ApiKey::CreatePartitions, 3, &grow(3));
    let r: k::CreatePartitionsResponse = raw.receive(ApiKey::CreatePartitions, 3);
    assert_eq!(r.results[0].error_code, 37, "INVALID_PARTITIONS: {r:?}");
    let (ok, out, err) = broker.cli(&["topic", "describe", "admin"], "");
    assert!(ok, "{err}");
    assert!(out.contains("partitions: 4"), "{out}");

    // Delete records below an offset (rskafka sends DeleteRecords).
    let client = kafka_client(&addr).await;
    let p3 = client
        .partition_client("admin", 3, UnknownTopicHandling::Error)
        .await
        .unwrap();
    p3.produce((0..10).map(record).collect(), Compression::NoCompression)
        .await
        .unwrap();
    p3.delete_records(4, 5_000).await.unwrap();
    assert_eq!(p3.get_offset(OffsetAt::Earliest).await.unwrap(), 4);
    assert_eq!(fetch_all(&p3, 4).await.len(), 6);
    let (ok, out, err) = broker.cli(
        &[
            "consume", "admin", "-p", "3", "--from", "earliest", "-n", "6", "--format", "json",
        ],
        "",
    );
    assert!(ok, "{err}");
    assert!(
        out.lines().next().unwrap().contains("\"offset\":4"),
        "{out}"
    );

    // kafka-python's admin client does the same (`tests/kafka/admin.py`).
    if let Some(summary) = kafka_python("admin.py", &[&addr]) {
        // The ID Kafka's answers gave the topic is the one Meridian's tools show.
        let (ok, out, err) = broker.cli(&["topic", "describe", "py-defaults"], "");
        assert!(ok, "{err}");
        assert!(out.contains("partitions: 1"), "{out}");
        let id = out
            .lines()
            .find_map(|l| l.strip_prefix("id: "))
            .unwrap_or_else(|| panic!("no topic ID in:\n{out}"));
        let created = serde_json::json!({
            "partitions": 1,
            "replication_factor": 1,
            "settings": {
                "retention.ms": ["60000", "DYNAMIC_TOPIC_CONFIG"],
                "cleanup.policy": ["delete", "DEFAULT_CONFIG"],
            },
        });
        assert_eq!(
            summary,
            serde_json::json!({
                "modified": {"retention.ms": "3600000"},
                "partitions": 4,
                "pages": [[0, 1, 2], [3]],
                "low_watermark": 4,
                "broker": {
                    "log.retention.ms": ["604800000", "DEFAULT_CONFIG", true],
                    "kafka_listen": [addr, "STATIC_BROKER_CONFIG", true],
                },
                // The defaults a create left to the broker, as its answer gives them.
                "validated": created,
                "created": created,
                "topic_id": id,
                "deleted_by_id": [["py-doomed", true, 0]],
                // UNKNOWN_TOPIC_ID, no name.
                "deleted_again": [[null, true, 100]],
            })
        );
        let (ok, out, err) = broker.cli(&["topic", "describe", "py-admin"], "");
        assert!(ok, "{err}");
        assert!(out.contains("partitions: 4"), "{out}");
        assert_eq!(
            described_setting(&out, "retention.ms").as_deref(),
            Some("3600000"),
            "{out}"
        );
    }
}

/// Where each topic setting's value comes from, as `kafka-configs --describe --all`
/// asks (with synonyms): the topic's own value, else the broker setting behind
/// it, `STATIC_BROKER_CONFIG` when the broker's configuration sets that and
/// `DEFAULT_CONFIG` when not, with its type and documentation; a topic created
/// over Kafka is answered the same.
#[test]
fn topic_settings_name_their_source_and_the_broker_setting_behind_them() {
    let (broker, addr) = kafka_broker(&["topic_defaults.retention_ms=3600000"]);
    let create = [
        "topic",
        "create",
        "sourced",
        "--config",
        "retention.bytes=1000000",
    ];
    let (ok, _, err) = broker.cli(&create, "");
    assert!(ok, "{err}");
    let keys = ["retention.bytes", "retention.ms", "cleanup.policy"];
    let asked = k::DescribeConfigsRequest::default()
        .with_include_synonyms(true)
        .with_include_documentation(true)
        .with_resources(vec![
            k::describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("sourced"))
                .with_configuration_keys(Some(keys.map(StrBytes::from_static_str).to_vec())),
        ]);
    let mut raw = Raw::connect(&addr);
    raw.send(ApiKey::DescribeConfigs, 4, &asked);
    let r: k::DescribeConfigsResponse = raw.receive(ApiKey::DescribeConfigs, 4);
    assert_eq!(
        r.results[0].error_code, 0,
        "{:?}",
        r.results[0].error_message
    );
    let described: Vec<(String, i8, Vec<String>)> = r.results[0]
        .configs
        .iter()
        .map(|c| {
            let synonyms = c
                .synonyms
                .iter()
                .map(|s| format!("{}:{}={}", s.source, s.name, s.value.as_deref().unwrap()))
                .collect();
            (c.name.to_string(), c.config_source, synonyms)
        })
        .collect();
    let expected = |name: &str, source, synonyms: &[&str]| {
        let synonyms = synonyms.iter().map(ToString::to_string).collect();
        (name.to_string(), source, synonyms)
    };
    assert_eq!(
        described,
        [
            expected("cleanup.policy", 5, &["5:log.cleanup.policy=delete"]),
            expected(
                "retention.bytes",
                1,
                &["1:retention.bytes=1000000", "5:log.retention.bytes=-1"]
            ),
            expected("retention.ms", 4, &["4:log.retention.ms=3600000"]),
        ]
    );
    // Each with its type (LIST 7, LONG 5) and what it does.
    let typed = |r: &k::DescribeConfigsResponse| -> Vec<(String, i8, bool)> {
        let configs = r.results[0].configs.iter();
        configs
            .map(|c| {
                let documented = c.documentation.as_deref().is_some_and(|d| !d.is_empty());
                (c.name.to_string(), c.config_type, documented)
            })
            .collect()
    };
    let kinds: Vec<(i8, bool)> = typed(&r).into_iter().map(|(_, t, d)| (t, d)).collect();
    assert_eq!(kinds, [(7, true), (5, true), (5, true)]);
    // The broker's settings have their types too: a topic setting's default the
    // topic setting's, documented; the rest their type in the configuration.
    let asked = k::DescribeConfigsRequest::default()
        .with_include_documentation(true)
        .with_resources(vec![
            k::describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(4)
                .with_resource_name(StrBytes::from_static_str("1"))
                .with_configuration_keys(Some(
                    [
                        "log.retention.ms",
                        "auto_create_topics",
                        "default.replication.factor",
                    ]
                    .map(StrBytes::from_static_str)
                    .to_vec(),
                )),
        ]);
    raw.send(ApiKey::DescribeConfigs, 4, &asked);
    let r: k::DescribeConfigsResponse = raw.receive(ApiKey::DescribeConfigs, 4);
    let named = |name: &str, kind, documented| (name.to_string(), kind, documented);
    assert_eq!(
        typed(&r),
        [
            named("auto_create_topics", 1, false),
            named("default.replication.factor", 4, false),
            named("log.retention.ms", 5, true),
        ],
        "BOOLEAN, SHORT, LONG"
    );

    let create = k::CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![k::create_topics_request::CreatableTopic::default()
            .with_name(name("made"))
            .with_num_partitions(-1)
            .with_replication_factor(-1)]);
    raw.send(ApiKey::CreateTopics, 7, &create);
    let r: k::CreateTopicsResponse = raw.receive(ApiKey::CreateTopics, 7);
    let made = &r.topics[0];
    assert_eq!(made.error_code, 0, "{:?}", made.error_message);
    assert_eq!((made.num_partitions, made.replication_factor), (1, 1));
    let source = |key: &str| {
        let configs = made.configs.as_deref().unwrap_or_default();
        configs
            .iter()
            .find(|c| &*c.name == key)
            .map(|c| (c.value.as_deref().unwrap().to_string(), c.config_source))
    };
    assert_eq!(source("retention.ms"), Some(("3600000".into(), 4)));
    assert_eq!(source("cleanup.policy"), Some(("delete".into(), 5)));
}

#[tokio::test]
async fn offsets_committed_through_kafka_are_the_groups() {
    let (broker, addr) = kafka_broker(&[]);
    let (ok, _, err) = broker.cli(&["topic", "create", "ledger", "-p", "2"], "");
    assert!(ok, "{err}");
    let (ok, _, err) = broker.cli(&["produce", "ledger", "-p", "1"], &"x\n".repeat(20));
    assert!(ok, "{err}");

    let mut raw = Raw::connect(&addr);
    let find = k::FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("billing"));
    raw.send(ApiKey::FindCoordinator, 3, &find);
    let coordinator: k::FindCoordinatorResponse = raw.receive(ApiKey::FindCoordinator, 3);
    assert_eq!(coordinator.error_code, 0);
    assert_eq!(format!("{}:{}", &*coordinator.host, coordinator.port), addr);

    // A consumer that assigns itself partitions commits as a "simple" group member.
    let commit = k::OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("billing")))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            k::offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(name("ledger"))
                .with_partitions(vec![
                    k::offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(1)
                        .with_committed_offset(12)
                        .with_committed_metadata(Some(StrBytes::from_static_str("from kafka"))),
                ]),
        ]);
    raw.send(ApiKey::OffsetCommit, 8, &commit);
    let committed: k::OffsetCommitResponse = raw.receive(ApiKey::OffsetCommit, 8);
    assert_eq!(committed.topics[0].partitions[0].error_code, 0);

    let fetch = k::OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("billing")))
        .with_topics(Some(vec![
            k::offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(name("ledger"))
                .with_partition_indexes(vec![0, 1]),
        ]));
    raw.send(ApiKey::OffsetFetch, 7, &fetch);
    let fetched: k::OffsetFetchResponse = raw.receive(ApiKey::OffsetFetch, 7);
    let offsets: Vec<(i32, i64)> = fetched.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.committed_offset))
        .collect();
    assert_eq!(offsets, [(0, -1), (1, 12)]);

    // The group's offsets as Meridian's tools see them: 12 of 20 read, lag 8.
    let (ok, out, err) = broker.cli(&["group", "describe", "billing"], "");
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.contains("ledger") && l.split_whitespace().any(|w| w == "12"))
        .unwrap_or_else(|| panic!("no committed offset 12 in:\n{out}"));
    assert!(row.split_whitespace().any(|w| w == "8"), "lag 8 in `{row}`");

    // Committing to a partition that does not exist is Kafka's error for it.
    let bad = commit.with_topics(vec![
        k::offset_commit_request::OffsetCommitRequestTopic::default()
            .with_name(name("ledger"))
            .with_partitions(vec![
                k::offset_commit_request::OffsetCommitRequestPartition::default()
                    .with_partition_index(5)
                    .with_committed_offset(1),
            ]),
    ]);
    raw.send(ApiKey::OffsetCommit, 8, &bad);
    let refused: k::OffsetCommitResponse = raw.receive(ApiKey::OffsetCommit, 8);
    assert_eq!(refused.topics[0].partitions[0].error_code, 3);
}

/// A member of group `billing` as Kafka's eager consumers behave: joins, syncs for
/// its partitions, heartbeats, and on `REBALANCE_IN_PROGRESS` gives up everything,
/// joins again and syncs.
struct Member {
    raw: Raw,
    id: StrBytes,
    generation: i32,
}

impl Member {
    fn join(addr: &str, protocols: &[&'static str]) -> Result<Member, i16> {
        let mut member = Member {
            raw: Raw::connect(addr),
            id: StrBytes::default(),
            generation: -1,
        };
        member.rejoin(protocols)?;
        Ok(member)
    }

    fn rejoin(&mut self, protocols: &[&'static str]) -> Result<(), i16> {
        let subscription = subscription("events");
        let join = k::JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("billing")))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(30_000)
            .with_member_id(self.id.clone())
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(
                protocols
                    .iter()
                    .map(|name| {
                        k::join_group_request::JoinGroupRequestProtocol::default()
                            .with_name(StrBytes::from_static_str(name))
                            .with_metadata(subscription.clone())
                    })
                    .collect(),
            );
        self.raw.send(ApiKey::JoinGroup, 7, &join);
        let joined: k::JoinGroupResponse = self.raw.receive(ApiKey::JoinGroup, 7);
        if joined.error_code != 0 {
            return Err(joined.error_code);
        }
        assert_eq!(joined.protocol_name.as_deref(), Some("range"));
        assert_ne!(joined.leader, joined.member_id, "the coordinator assigns");
        self.id = joined.member_id;
        self.generation = joined.generation_id;
        Ok(())
    }

    /// The partitions of `events` the coordinator gives this member now.
    fn sync(&mut self) -> Vec<i32> {
        let sync = k::SyncGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("billing")))
            .with_generation_id(self.generation)
            .with_member_id(self.id.clone())
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_static_str("range")));
        self.raw.send(ApiKey::SyncGroup, 5, &sync);
        let synced: k::SyncGroupResponse = self.raw.receive(ApiKey::SyncGroup, 5);
        assert_eq!(synced.error_code, 0);
        let mut bytes = synced.assignment;
        let version = bytes.get_i16();
        let assignment = k::ConsumerProtocolAssignment::decode(&mut bytes, version).unwrap();
        let mut partitions: Vec<i32> = assignment
            .assigned_partitions
            .iter()
            .filter(|t| &*t.topic.0 == "events")
            .flat_map(|t| t.partitions.clone())
            .collect();
        partitions.sort_unstable();
        partitions
    }

    fn heartbeat(&mut self) -> i16 {
        let beat = k::HeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("billing")))
            .with_generation_id(self.generation)
            .with_member_id(self.id.clone());
        self.raw.send(ApiKey::Heartbeat, 4, &beat);
        let answer: k::HeartbeatResponse = self.raw.receive(ApiKey::Heartbeat, 4);
        answer.error_code
    }

    /// Heartbeats until told to rebalance, then rejoins and syncs (eager: all its
    /// partitions were given up first).
    fn rebalance(&mut self) -> Vec<i32> {
        for _ in 0..100 {
            match self.heartbeat() {
                0 => std::thread::sleep(Duration::from_millis(50)),
                27 => {
                    self.rejoin(&["range"]).unwrap();
                    return self.sync();
                }
                other => panic!("heartbeat error {other}"),
            }
        }
        panic!("never told to rebalance");
    }

    fn leave(&mut self) {
        let leave = k::LeaveGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("billing")))
            .with_members(vec![
                k::leave_group_request::MemberIdentity::default().with_member_id(self.id.clone())
            ]);
        self.raw.send(ApiKey::LeaveGroup, 5, &leave);
        let left: k::LeaveGroupResponse = self.raw.receive(ApiKey::LeaveGroup, 5);
        assert_eq!(left.error_code, 0);
        assert_eq!(left.members[0].error_code, 0);
    }
}

#[tokio::test]
async fn kafka_consumers_share_a_groups_partitions_and_rebalance() {
    let (broker, addr) = kafka_broker(&[]);
    let (ok, _, err) = broker.cli(&["topic", "create", "events", "-p", "4"], "");
    assert!(ok, "{err}");

    // A member offering cooperative-sticky first is served with range.
    let mut a = Member::join(&addr, &["cooperative-sticky", "range"]).unwrap();
    assert_eq!(a.sync(), [0, 1, 2, 3]);
    assert_eq!(a.heartbeat(), 0);

    // B joins: A is told to rebalance. B's SyncGroup waits until A gave its
    // partitions up (`kafka_sync_hold_ms`), and B gets its share in it, as from a
    // Kafka coordinator, whose JoinGroup waits for every member.
    let mut b = Member::join(&addr, &["range"]).unwrap();
    let b_sync = std::thread::spawn(move || {
        let first = b.sync();
        (b, first)
    });
    // B's sync is in before A hears of the rebalance (were it not, B would get its
    // share at once, and the test would pass without the hold it is for).
    std::thread::sleep(Duration::from_millis(500));
    let a_now = a.rebalance();
    assert_eq!(a_now.len(), 2, "A keeps half: {a_now:?}");
    let (mut b, b_now) = b_sync.join().unwrap();
    assert_eq!(b_now.len(), 2, "B's first sync: {b_now:?}");
    let mut all: Vec<i32> = a_now.iter().chain(&b_now).copied().collect();
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2, 3], "A {a_now:?}, B {b_now:?}");
    assert_eq!(a.heartbeat(), 0);
    assert_eq!(b.heartbeat(), 0);

    // The group as Meridian's tools see it: two members.
    let (ok, out, err) = broker.cli(&["group", "describe", "billing"], "");
    assert!(ok, "{err}");
    assert!(out.contains(&*a.id) && out.contains(&*b.id), "{out}");
    // And as Kafka's group tools do: listed, Stable, each member with what it owns.
    let mut admin = Raw::connect(&addr);
    admin.send(ApiKey::ListGroups, 4, &k::ListGroupsRequest::default());
    let listed: k::ListGroupsResponse = admin.receive(ApiKey::ListGroups, 4);
    let billing = listed
        .groups
        .iter()
        .find(|l| &*l.group_id.0 == "billing")
        .unwrap();
    assert_eq!(&*billing.group_state, "Stable");
    let describe = k::DescribeGroupsRequest::default()
        .with_groups(vec![GroupId(StrBytes::from_static_str("billing"))]);
    admin.send(ApiKey::DescribeGroups, 5, &describe);
    let described: k::DescribeGroupsResponse = admin.receive(ApiKey::DescribeGroups, 5);
    let group = &described.groups[0];
    assert_eq!(
        (&*group.protocol_type, &*group.protocol_data),
        ("consumer", "range")
    );
    for (member, expected) in [(&a, &a_now), (&b, &b_now)] {
        let found = group
            .members
            .iter()
            .find(|m| m.member_id == member.id)
            .unwrap();
        let mut bytes = found.member_assignment.clone();
        let version = bytes.get_i16();
        let owned = k::ConsumerProtocolAssignment::decode(&mut bytes, version).unwrap();
        let mut partitions: Vec<i32> = owned
            .assigned_partitions
            .iter()
            .flat_map(|t| t.partitions.clone())
            .collect();
        partitions.sort_unstable();
        assert_eq!(&partitions, expected);
    }

    // B leaves: A is told to rebalance and takes everything.
    b.leave();
    assert_eq!(a.rebalance(), [0, 1, 2, 3]);

    // Only cooperative-sticky while the group runs range (a group runs one
    // assignor), or only assignors Meridian does not run: refused, naming the
    // protocol problem.
    let refused = Member::join(&addr, &["cooperative-sticky"]).err();
    assert_eq!(refused, Some(23), "INCONSISTENT_GROUP_PROTOCOL");
    let refused = Member::join(&addr, &["sticky"]).err();
    assert_eq!(refused, Some(23), "INCONSISTENT_GROUP_PROTOCOL");
}

/// With `kafka_sync_hold_ms=0` a Kafka member's SyncGroup is answered at once with
/// what is free: a member joining a group whose partitions another member holds
/// gets nothing in its first sync, and its share after its next heartbeat and
/// join.
#[tokio::test]
async fn a_kafka_sync_is_answered_at_once_without_the_hold() {
    // Held, it would have waited the member's half session (5 s) for A.
    kafka_sync_left_short(&["kafka_sync_hold_ms=0"], Duration::from_secs(4));
}

/// The hold is at most half `idle_timeout_ms`: the listener reads nothing from a
/// client waiting for its answer, and would close the connection as idle before
/// a longer hold ended.
#[tokio::test]
async fn a_held_kafka_sync_ends_before_its_connection_would_idle_out() {
    // Held 1.5 s; held the default 5 s, the connection is closed at 3 s.
    kafka_sync_left_short(&["idle_timeout_ms=3000"], Duration::from_millis(2500));
}

/// A member joins a group whose partitions another member holds and syncs before
/// the other hears of it: its sync answers, with nothing, within `within`; then
/// both rebalance to two partitions each.
fn kafka_sync_left_short(settings: &[&str], within: Duration) {
    let (broker, addr) = kafka_broker(settings);
    let (ok, _, err) = broker.cli(&["topic", "create", "events", "-p", "4"], "");
    assert!(ok, "{err}");
    let mut a = Member::join(&addr, &["range"]).unwrap();
    assert_eq!(a.sync(), [0, 1, 2, 3]);
    let mut b = Member::join(&addr, &["range"]).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(b.sync(), Vec::<i32>::new());
    assert!(started.elapsed() < within, "{:?}", started.elapsed());
    assert_eq!(a.rebalance().len(), 2);
    assert_eq!(b.rebalance().len(), 2);
}

/// Runs `tests/kafka/consumer_group.py` against `bootstrap` (topic `py-orders` with
/// `replication_factor`) and returns its summary after checking it; `None`, saying
/// so, when KAFKA_PYTHON_FOR_TESTS is not set.
pub(crate) fn kafka_python_group(
    bootstrap: &str,
    replication_factor: u16,
) -> Option<serde_json::Value> {
    let summary = kafka_python(
        "consumer_group.py",
        &[bootstrap, &replication_factor.to_string()],
    )?;
    assert_eq!(summary["records"], 2000);
    assert_eq!(summary["split"], serde_json::json!([[0, 1], [2, 3]]));
    Some(summary)
}

/// Runs `tests/kafka/SCRIPT ARGS` with kafka-python and returns the JSON line it
/// prints, after checking it succeeded; `None`, saying so, when
/// KAFKA_PYTHON_FOR_TESTS is not set.
pub(crate) fn kafka_python(script: &str, args: &[&str]) -> Option<serde_json::Value> {
    let Some(python) = std::env::var_os("KAFKA_PYTHON_FOR_TESTS") else {
        println!(
            "skipped: KAFKA_PYTHON_FOR_TESTS is not set (.ci/run installs kafka-python and sets it)"
        );
        return None;
    };
    Some(client_script(
        std::process::Command::new(python),
        script,
        args,
    ))
}

/// Runs `tests/kafka/SCRIPT ARGS` with `program` (an interpreter) and returns the
/// JSON line it prints, after checking it succeeded.
pub(crate) fn client_script(
    mut program: std::process::Command,
    script: &str,
    args: &[&str],
) -> serde_json::Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("kafka")
        .join(script);
    let out = program
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    serde_json::from_str(stdout.trim()).expect(&stdout)
}

/// kafka-python (`tests/kafka/consumer_group.py`): admin, an acks=all producer and
/// two group consumers, as Kafka's users run them. `.ci/run` installs it and names
/// its Python in `KAFKA_PYTHON_FOR_TESTS` (not `MERIDIAN_*`: the broker would read that as
/// a config key).
#[test]
fn kafka_python_produces_and_consumes_in_a_group() {
    let (broker, addr) = kafka_broker(&[]);
    let Some(summary) = kafka_python_group(&addr, 1) else {
        return;
    };
    // What kafka-python committed is the group's, for Meridian's tools too.
    let (ok, described, err) = broker.cli(&["group", "describe", "py-group"], "");
    assert!(ok, "{err}");
    for (partition, offset) in summary["committed"].as_object().unwrap() {
        let row = described
            .lines()
            .find(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.contains(&"py-orders") && words.contains(&partition.as_str())
            })
            .unwrap_or_else(|| panic!("partition {partition} not in:\n{described}"));
        assert!(
            row.contains(&offset.to_string()),
            "{row} (committed {offset})"
        );
    }
}

/// kafka-python's admin client manages groups as `kafka-consumer-groups` does:
/// offsets set, read and deleted (refused per partition of a topic a member
/// subscribes to, the others' deleted all the same),
/// groups deleted (refused while one has members), and Meridian's tools agree.
#[test]
fn kafka_admin_requests_set_and_delete_group_offsets_and_groups() {
    let (broker, addr) = kafka_broker(&[]);
    let Some(seen) = kafka_python("groups_admin.py", &[&addr]) else {
        return;
    };
    let expected = serde_json::json!({
        "altered": {"py-groups/0": "NoError", "py-groups/1": "NoError"},
        "committed": {"py-groups/0": 3, "py-groups/1": 5},
        "offsets_deleted": {"py-groups/0": "NoError"},
        "committed_after": {"py-groups/1": 5},
        "busy_offsets_deleted": {
            "py-groups/0": "GroupSubscribedToTopicError",
            "py-groups/1": "GroupSubscribedToTopicError",
            "py-other/0": "NoError"
        },
        "busy_committed": {"py-groups/0": 5, "py-groups/1": 5},
        "busy_deleted": {"py-busy": "NonEmptyGroupError"},
        "deleted": {"py-busy": "OK", "py-idle": "OK"},
        "deleted_again": {"py-idle": "GroupIdNotFoundError"},
        "listed_after": []
    });
    assert_eq!(seen, expected);
    let (ok, listed, err) = broker.cli(&["group", "list"], "");
    assert!(ok, "{err}");
    assert!(
        !listed.contains("py-idle") && !listed.contains("py-busy"),
        "{listed}"
    );
}

/// The JSON summary a bench printed, after checking that it succeeded.
fn bench_summary(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    serde_json::from_str(stdout.trim()).unwrap()
}

/// Against a broker with `tls_client_ca`, `bench kafka-produce` presents the client
/// certificate of `--cert`/`--key`; without one its handshake is refused.
#[test]
fn bench_kafka_produce_presents_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    crate::tls::ca_with(&certs, &["bench"]);
    let (broker, addr) = kafka_broker(&[
        "kafka_tls=true",
        &format!("tls_client_ca={}", certs.join("ca.pem").display()),
    ]);
    let ca = broker.cert_path();
    let bench = |extra: &[&str]| {
        std::process::Command::new(crate::harness::meridian_bin())
            .args(["bench", "kafka-produce", "--kafka", &addr, "--json"])
            .args(["--ca", ca.to_str().unwrap(), "--records", "500"])
            .args(["--record-size", "100", "--partitions", "2"])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = bench(&[]);
    assert!(!refused.status.success(), "no client certificate");
    let (cert, key) = (certs.join("bench.pem"), certs.join("bench.key"));
    let out = bench(&[
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    let summary = bench_summary(&out);
    assert_eq!(summary["records"], 500, "{summary}");
}

/// `meridian bench kafka-produce` produces over the Kafka protocol, here over TLS
/// (`--ca`): every record it reports is in the topic, spread over its partitions, in
/// as many requests as it counts; `kafka-consume` reads them back; refused by the
/// broker (plain TCP to a TLS listener, or `--acks 0`), the bench fails and says
/// why.
#[test]
fn bench_kafka_produce_stores_every_record_it_reports() {
    let (broker, addr) = kafka_broker(&["kafka_tls=true"]);
    let ca = broker.cert_path();
    let bench = |extra: &[&str]| {
        std::process::Command::new(crate::harness::meridian_bin())
            .args(["bench", "kafka-produce", "--kafka", &addr, "--json"])
            .args([
                "--records",
                "3000",
                "--record-size",
                "100",
                "--partitions",
                "4",
            ])
            .args(["--batch-size", "1000", "--inflight", "3"])
            .args(extra)
            .output()
            .unwrap()
    };
    let summary = bench_summary(&bench(&["--ca", ca.to_str().unwrap()]));
    assert_eq!(summary["bench"], "kafka-produce", "{summary}");
    assert_eq!(summary["records"], 3000, "{summary}");
    assert_eq!(summary["bytes"], 300_000, "{summary}");
    // 10 records of 100 bytes to a 1000-byte batch, a batch per partition: 40 a request.
    assert_eq!(summary["requests"], 75, "{summary}");
    assert!(
        summary["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{summary}"
    );
    let (ok, described, err) = broker.cli(&["topic", "describe", "bench-kafka", "--json"], "");
    assert!(ok, "{err}");
    let described: serde_json::Value = serde_json::from_str(&described).unwrap();
    let ends: Vec<u64> = described["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["high_watermark"].as_u64().unwrap())
        .collect();
    assert_eq!(ends, [750, 750, 750, 750]);

    // kafka-consume fills the topic with as many again, then reads that many from
    // its start: the 3000 above first. Fetches of at most 2000 bytes a partition
    // end inside batches, which the next fetch returns whole.
    let out = std::process::Command::new(crate::harness::meridian_bin())
        .args(["bench", "kafka-consume", "--kafka", &addr, "--json"])
        .args(["--ca", ca.to_str().unwrap(), "--records", "6000"])
        .args([
            "--record-size",
            "100",
            "--partitions",
            "4",
            "--batch-size",
            "1000",
        ])
        .args(["--max-partition-fetch-bytes", "2000"])
        .output()
        .unwrap();
    let summary = bench_summary(&out);
    assert_eq!(summary["bench"], "kafka-consume", "{summary}");
    assert_eq!(summary["records"], 6000, "{summary}");
    assert_eq!(summary["bytes"], 600_000, "{summary}");
    // A fetch brings at most one whole 10-record batch of each of the 4 partitions.
    assert!(summary["requests"].as_u64().unwrap() >= 150, "{summary}");

    let plain = bench(&[]);
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(
        !plain.status.success() && stderr.contains(&addr),
        "plain TCP to a TLS listener: {stderr}"
    );
    let unanswered = bench(&["--ca", ca.to_str().unwrap(), "--acks", "0"]);
    let stderr = String::from_utf8_lossy(&unanswered.stderr);
    assert!(
        !unanswered.status.success() && stderr.contains("use --acks 1 or --acks all"),
        "{stderr}"
    );
}

/// `bench kafka-produce --rate` sends each record at its intended time and measures
/// its latency from then: it cannot end before its last record is due, requests
/// close when their first record has lingered `--linger-ms` (so there are many more
/// than full ones would make), and the linger shows in the latency, which a
/// request's round trip alone would not.
#[test]
fn bench_kafka_produce_paces_records_and_measures_from_their_intended_time() {
    let (broker, addr) = kafka_broker(&[]);
    let out = std::process::Command::new(crate::harness::meridian_bin())
        .args(["bench", "kafka-produce", "--kafka", &addr, "--json"])
        .args(["--topic", "paced", "--records", "1000", "--rate", "2000"])
        .args([
            "--linger-ms",
            "20",
            "--record-size",
            "100",
            "--partitions",
            "2",
        ])
        .output()
        .unwrap();
    let summary = bench_summary(&out);
    assert_eq!(summary["records"], 1000, "{summary}");
    // Record 999 is due 999/2000 s after the first.
    assert!(summary["seconds"].as_f64().unwrap() >= 0.49, "{summary}");
    // Full requests (2 partitions × 163 records of 100 bytes a 16384-byte batch)
    // would be 4; a request every 20 ms makes about 25.
    assert!(summary["requests"].as_u64().unwrap() > 8, "{summary}");
    // The first record of each request waited 20 ms for it to be sent.
    assert!(
        summary["latency_ms"]["p99"].as_f64().unwrap() >= 15.0,
        "{summary}"
    );
    let (ok, described, err) = broker.cli(&["topic", "describe", "paced", "--json"], "");
    assert!(ok, "{err}");
    let described: serde_json::Value = serde_json::from_str(&described).unwrap();
    let stored: u64 = described["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["high_watermark"].as_u64().unwrap())
        .sum();
    assert_eq!(stored, 1000, "{described}");
    let refused = std::process::Command::new(crate::harness::meridian_bin())
        .args(["bench", "kafka-consume", "--kafka", &addr, "--rate", "10"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("--rate is kafka-produce's"),
        "{stderr}"
    );
}

/// `kafka_tls`: a client speaking plain Kafka to the TLS listener is closed at its
/// first bytes, and one that opens a connection and sends nothing is closed after
/// `idle_timeout_ms` instead of holding a connection slot and a task for ever.
#[test]
fn kafka_tls_closes_plaintext_and_stalled_handshakes() {
    let (_broker, addr) = kafka_broker(&["kafka_tls=true", "idle_timeout_ms=1500"]);
    let mut plain = Raw::connect(&addr);
    plain.send(ApiKey::ApiVersions, 3, &k::ApiVersionsRequest::default());
    assert!(plain.ends(), "plain Kafka bytes end the connection");
    let mut stalled = Raw::connect(&addr);
    let opened = Instant::now();
    assert!(stalled.ends(), "a handshake that never starts is closed");
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_secs(15),
        "closed after {waited:?}, with idle_timeout_ms=1500"
    );
}

/// `kafka_tls`: kafka-python over TLS (`security_protocol="SSL"`, trusting the
/// broker's certificate) creates a topic, produces with acks=all and reads every
/// record back, and Meridian's CLI reads them too; a client speaking plain TCP to the
/// same port gets no answer it can use.
#[test]
fn kafka_clients_connect_over_tls() {
    let (broker, addr) = kafka_broker(&["kafka_tls=true"]);
    let ca = broker.cert_path();
    let ca = ca.to_str().unwrap();
    let Some(seen) = kafka_python("tls.py", &[&addr, ca, "-", "-", "roundtrip", "tls-orders"])
    else {
        return;
    };
    let expected = serde_json::json!({"produced": 200, "consumed": 200, "values_match": true});
    assert_eq!(seen, expected);
    assert_eq!(consume_json(&broker, "tls-orders", 200).len(), 200);
    let plain = kafka_python("tls.py", &[&addr, ca, "-", "-", "plaintext", "tls-orders"])
        .expect("kafka-python ran above");
    assert_ne!(plain["result"], "connected", "{plain}");
}

/// `kafka_tls` with `tls_client_ca`: a Kafka client's certificate names it to
/// `acl_file` as on the QUIC endpoint, so alice works in `alice.*` and is refused
/// elsewhere (with Kafka's authorization errors, also for requests refused whole);
/// a Kafka client without a certificate, or with a revoked one (`tls_client_crl`),
/// is refused at the handshake, which the broker counts.
#[test]
fn kafka_clients_are_named_by_their_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    crate::tls::ca_with(&certs, &["alice", "mallory"]);
    // Mallory's certificate is revoked: the rules would let it write, the
    // revocation list stops it at the handshake.
    crate::tls::cert(&["revoke", "mallory", "--dir", certs.to_str().unwrap()]);
    let acl_file = dir.path().join("acl.toml");
    std::fs::write(
        &acl_file,
        "[[allow]]\nprincipals = [\"alice\", \"mallory\"]\noperations = [\"all\"]\ntopics = [\"alice.*\"]\n\
         [[allow]]\nprincipals = [\"alice\"]\noperations = [\"all\"]\ngroups = [\"alice.*\"]\n",
    )
    .unwrap();
    let metrics = format!("127.0.0.1:{}", free_ports(1)[0]);
    let (broker, addr) = kafka_broker(&[
        "kafka_tls=true",
        &format!("tls_client_ca={}", certs.join("ca.pem").display()),
        &format!("tls_client_crl={}", certs.join("crl.pem").display()),
        &format!("acl_file={}", acl_file.display()),
        &format!("metrics_listen={metrics}"),
    ]);
    let ca = broker.cert_path();
    let ca = ca.to_str().unwrap();
    let (cert, key) = (certs.join("alice.pem"), certs.join("alice.key"));
    let alice = [cert.to_str().unwrap(), key.to_str().unwrap()];
    let run = |identity: [&str; 2], action: &str, topic: &str| {
        kafka_python(
            "tls.py",
            &[&addr, ca, identity[0], identity[1], action, topic],
        )
    };
    let Some(seen) = run(alice, "roundtrip", "alice.orders") else {
        return;
    };
    let expected = serde_json::json!({"produced": 200, "consumed": 200, "values_match": true});
    assert_eq!(seen, expected);
    let refused = run(alice, "produce", "bob.orders").unwrap();
    assert_eq!(
        refused["result"], "TopicAuthorizationFailedError",
        "{refused}"
    );
    // Refused whole (a topic to create, a group, the cluster), a Kafka client gets
    // the error in the request's response, as from Kafka, not a closed connection.
    // Refused in part (an OffsetDelete naming a topic it may not read), the rest of
    // the request is done.
    let refused = run(alice, "refused", "bob.orders").unwrap();
    assert_eq!(
        refused,
        serde_json::json!({
            "create": "TopicAuthorizationFailedError",
            "cluster": "ClusterAuthorizationFailedError",
            "group": "GroupAuthorizationFailedError",
            "offsets_deleted": {
                "alice.orders/0": "NoError",
                "bob.orders/0": "TopicAuthorizationFailedError"
            },
            "committed_after": 0
        })
    );
    assert_eq!(
        crate::metrics::value(
            &crate::metrics::scrape(&metrics),
            "meridian_client_certificates_refused_total"
        ),
        0.0
    );
    let anonymous = run(["-", "-"], "produce", "alice.orders").unwrap();
    assert_ne!(anonymous["result"], "ok", "{anonymous}");
    let refusals = crate::metrics::value(
        &crate::metrics::scrape(&metrics),
        "meridian_client_certificates_refused_total",
    );
    assert!(refusals >= 1.0);
    let (cert, key) = (certs.join("mallory.pem"), certs.join("mallory.key"));
    let mallory = [cert.to_str().unwrap(), key.to_str().unwrap()];
    let revoked = run(mallory, "produce", "alice.orders").unwrap();
    assert_ne!(revoked["result"], "ok", "{revoked}");
    assert!(
        crate::metrics::value(
            &crate::metrics::scrape(&metrics),
            "meridian_client_certificates_refused_total"
        ) > refusals
    );
}

/// `kill -HUP` gives new Kafka TLS connections the certificate the broker re-read:
/// after a rotation to a CA-signed certificate, kafka-python trusting that CA
/// produces and consumes, and one still trusting the old certificate is refused.
#[test]
fn sighup_rotates_the_kafka_listeners_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    crate::tls::ca_with(&certs, &[]);
    let certs_dir = certs.to_str().unwrap();
    crate::tls::cert(&[
        "create",
        "broker",
        "--dir",
        certs_dir,
        "--host",
        "127.0.0.1",
    ]);
    let log = dir.path().join("broker.log");
    let (broker, addr) =
        kafka_broker_logging_to(&log, &["kafka_tls=true"], &[("RUST_LOG", "info")]);
    let old = dir.path().join("old-cert.pem");
    std::fs::copy(broker.cert_path(), &old).unwrap();
    let run = |ca: &std::path::Path, action: &str, topic: &str| {
        kafka_python(
            "tls.py",
            &[&addr, ca.to_str().unwrap(), "-", "-", action, topic],
        )
    };
    let Some(before) = run(&old, "roundtrip", "before") else {
        return;
    };
    let expected = serde_json::json!({"produced": 200, "consumed": 200, "values_match": true});
    assert_eq!(before, expected);

    let tls = broker.data_dir.join("tls");
    std::fs::copy(certs.join("broker.pem"), tls.join("cert.pem")).unwrap();
    std::fs::copy(certs.join("broker.key"), tls.join("key.pem")).unwrap();
    broker.signal("HUP");
    crate::harness::await_log(&log, "SIGHUP: reloaded", 1);
    let seen = run(&certs.join("ca.pem"), "roundtrip", "after").unwrap();
    assert_eq!(seen, expected);
    let stale = run(&old, "produce", "before").unwrap();
    assert_ne!(stale["result"], "ok", "{stale}");
}

#[tokio::test]
async fn bad_frames_close_their_connection_and_nothing_else() {
    let metrics = format!("metrics_listen=127.0.0.1:{}", free_ports(1)[0]);
    let (broker, addr) = kafka_broker(&[
        "max_frame_bytes=65536",
        "max_connections=3",
        metrics.as_str(),
    ]);
    let versions = Raw::connect(&addr).api_versions();
    assert_eq!(versions.error_code, 0);
    let listed: Vec<i16> = versions.api_keys.iter().map(|a| a.api_key).collect();
    assert!(listed.contains(&(ApiKey::Produce as i16)));
    assert!(listed.contains(&(ApiKey::JoinGroup as i16)));
    assert!(listed.contains(&(ApiKey::DescribeConfigs as i16)));
    assert!(!listed.contains(&(ApiKey::DescribeAcls as i16)));

    // A frame over max_frame_bytes: refused from its size, before any body is read.
    let mut raw = Raw::connect(&addr);
    raw.stream.write_all(&(1i32 << 30).to_be_bytes()).unwrap();
    assert!(raw.closed(), "an oversized frame closes the connection");

    // An API not served (ACL administration).
    let mut raw = Raw::connect(&addr);
    raw.send(ApiKey::DescribeAcls, 1, &k::DescribeAclsRequest::default());
    assert!(raw.closed());

    // A version not served.
    let mut raw = Raw::connect(&addr);
    raw.send(ApiKey::Fetch, 18, &k::FetchRequest::default());
    assert!(raw.closed());

    // A truncated body: the header says Metadata v9, the body stops short.
    let mut raw = Raw::connect(&addr);
    let mut frame = BytesMut::new();
    frame.put_i32(10);
    frame.put_i16(ApiKey::Metadata as i16);
    frame.put_i16(9);
    frame.put_i32(1);
    frame.put_u8(0); // a compact client id, then nothing.
    frame.put_u8(0);
    raw.stream.write_all(&frame).unwrap();
    assert!(raw.closed());

    // Arrays claiming billions of elements.
    lying_array_counts_close_their_connections(&addr);

    // Pipelined requests are answered in order on a connection that behaves.
    let mut raw = Raw::connect_served(&addr);
    for _ in 0..3 {
        raw.send(ApiKey::ApiVersions, 3, &k::ApiVersionsRequest::default());
    }
    for n in 2..=4 {
        let mut size = [0u8; 4];
        raw.stream.read_exact(&mut size).unwrap();
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        raw.stream.read_exact(&mut body).unwrap();
        assert_eq!(i32::from_be_bytes(body[..4].try_into().unwrap()), n);
    }

    // max_connections: two more fit beside `raw`, the fourth is closed at once.
    // (A closed connection frees its slot a moment after the client sees it closed.)
    let held: Vec<Raw> = (0..2).map(|_| Raw::connect_served(&addr)).collect();
    let mut over = Raw::connect(&addr);
    assert!(over.closed(), "a connection over max_connections is closed");
    // Kafka connections have metrics of their own.
    let samples = crate::metrics::scrape(metrics.trim_start_matches("metrics_listen="));
    let value = |key| crate::metrics::value(&samples, key);
    assert_eq!(value("meridian_kafka_connections_open"), 3.0);
    assert!(value("meridian_kafka_connections_refused_total") >= 1.0);
    let lying = if meridian_kafka::alloc::lazy_blocks_refused().is_none() {
        2.0
    } else {
        0.0
    };
    assert_eq!(
        value("meridian_kafka_connections_accepted_total"),
        8.0 + lying
    );
    assert_eq!(value("meridian_connections_refused_total"), 0.0);
    drop(held);
    drop(raw);

    // The broker serves on, through both protocols.
    let client = {
        let mut tries = 0;
        loop {
            match ClientBuilder::new(vec![addr.clone()]).build().await {
                Ok(client) => break client,
                // Closed connections free their slots a moment after the close.
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert!(client.list_topics().await.is_ok());
    let (ok, _, err) = broker.cli(&["topic", "list"], "");
    assert!(ok, "{err}");
}

/// Arrays claiming billions of elements in frames of a few dozen bytes: a
/// Metadata v1 topic count (INT32), a Produce v9 partition count (a compact
/// array's varint). kafka-protocol sets aside room for the elements before it
/// reads one; that room is granted without memory (`LazyLargeAllocator`), the
/// frame ends, and the request is malformed instead of the broker aborting.
fn lying_array_counts_close_their_connections(addr: &str) {
    if let Some(why) = meridian_kafka::alloc::lazy_blocks_refused() {
        eprintln!("skipping the lying array counts: {why}");
        return;
    }
    let metadata = k::MetadataRequest::default().with_topics(Some(vec![]));
    let mut body = request_body(ApiKey::Metadata, 1, 1, &metadata);
    // It ends with the empty topic array's count.
    assert!(body.ends_with(&[0, 0, 0, 0]));
    let end = body.len() - 4;
    body[end..].copy_from_slice(&i32::MAX.to_be_bytes());
    let mut raw = Raw::connect(addr);
    raw.stream.write_all(&sized(&body)).unwrap();
    assert!(raw.closed());
    let topic = k::produce_request::TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_static_str("t")));
    let produce = k::ProduceRequest::default()
        .with_acks(1)
        .with_topic_data(vec![topic]);
    let body = request_body(ApiKey::Produce, 9, 2, &produce);
    // It ends with the empty partition array's count (1), then the topic's and the
    // request's tagged fields (none).
    assert!(body.ends_with(&[1, 0, 0]));
    let end = body.len() - 3;
    let lying: Vec<u8> = [&body[..end], &[0xff, 0xff, 0xff, 0xff, 0x0f], &[0, 0]].concat();
    let mut raw = Raw::connect(addr);
    raw.stream.write_all(&sized(&lying)).unwrap();
    assert!(raw.closed());
}

/// An idempotent producer with several produce requests in flight on one
/// connection (librdkafka and Kafka's Java client keep up to five) counts on them
/// being appended in the order sent: 200 requests, one batch of 10 records each,
/// written at once, all go in, each at the offsets its sequence numbers say. Were
/// the listener to append them in another order, the broker would refuse the
/// batches that came early as out of sequence.
#[test]
fn pipelined_idempotent_produce_requests_append_in_the_order_sent() {
    use meridian_wire::batch::{encode_batch, Compression, NewRecord, ProducerIdentity};
    const REQUESTS: i32 = 200;
    const RECORDS: i32 = 10;
    let (broker, addr) = kafka_broker(&[]);
    let (ok, _, err) = broker.cli(&["topic", "create", "ordered", "-p", "1"], "");
    assert!(ok, "{err}");
    let mut raw = Raw::connect(&addr);
    raw.send(
        ApiKey::InitProducerId,
        4,
        &k::InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000),
    );
    let id: k::InitProducerIdResponse = raw.receive(ApiKey::InitProducerId, 4);
    assert_eq!(id.error_code, 0);

    let mut frames = Vec::new();
    let first = raw.correlation + 1;
    for n in 0..REQUESTS {
        let records: Vec<NewRecord> = (0..RECORDS)
            .map(|r| NewRecord {
                timestamp: 1_700_000_000_000,
                key: None,
                value: Some(Bytes::from(format!("{}", n * RECORDS + r))),
                headers: vec![],
            })
            .collect();
        let producer = ProducerIdentity {
            producer_id: id.producer_id.0,
            producer_epoch: id.producer_epoch,
            base_sequence: n * RECORDS,
        };
        let batch = encode_batch(&records, Compression::None, producer).unwrap();
        let produce = k::ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![k::produce_request::TopicProduceData::default()
                .with_name(name("ordered"))
                .with_partition_data(vec![
                    k::produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch)),
                ])]);
        frames.extend(sized(&request_body(
            ApiKey::Produce,
            9,
            first + n,
            &produce,
        )));
    }
    raw.stream.write_all(&frames).unwrap();
    for n in 0..REQUESTS {
        let response: k::ProduceResponse = raw.receive_for(ApiKey::Produce, 9, first + n);
        let partition = &response.responses[0].partition_responses[0];
        assert_eq!(
            (partition.error_code, partition.base_offset),
            (0, i64::from(n * RECORDS)),
            "request {n}: {:?}",
            partition.error_message
        );
    }
}

/// Requests of the kinds Kafka clients send, with their arrays filled, for the
/// mutation test below.
fn kafka_requests() -> Vec<BytesMut> {
    let topic = || name("fuzz");
    let group = || GroupId(StrBytes::from_static_str("fuzzers"));
    let metadata = k::MetadataRequest::default().with_topics(Some(vec![
        k::metadata_request::MetadataRequestTopic::default().with_name(Some(topic())),
    ]));
    vec![
        request_body(ApiKey::ApiVersions, 3, 1, &k::ApiVersionsRequest::default()),
        request_body(ApiKey::Metadata, 1, 2, &metadata),
        request_body(ApiKey::Metadata, 12, 3, &metadata),
        request_body(
            ApiKey::Produce,
            9,
            4,
            &k::ProduceRequest::default()
                .with_acks(1)
                .with_timeout_ms(1000)
                .with_topic_data(vec![k::produce_request::TopicProduceData::default()
                    .with_name(topic())
                    .with_partition_data(vec![
                        k::produce_request::PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch(40))),
                    ])]),
        ),
        request_body(
            ApiKey::Fetch,
            12,
            5,
            &k::FetchRequest::default()
                .with_max_wait_ms(50)
                .with_max_bytes(1 << 20)
                .with_topics(vec![k::fetch_request::FetchTopic::default()
                    .with_topic(topic())
                    .with_partitions(vec![k::fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20)])]),
        ),
        request_body(
            ApiKey::ListOffsets,
            7,
            6,
            &k::ListOffsetsRequest::default().with_topics(vec![
                k::list_offsets_request::ListOffsetsTopic::default()
                    .with_name(topic())
                    .with_partitions(vec![
                        k::list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(-1),
                    ]),
            ]),
        ),
        request_body(
            ApiKey::CreateTopics,
            5,
            7,
            &k::CreateTopicsRequest::default()
                .with_timeout_ms(1000)
                .with_topics(vec![k::create_topics_request::CreatableTopic::default()
                    .with_name(name("fuzz-created"))
                    .with_num_partitions(2)
                    .with_replication_factor(1)
                    .with_configs(vec![
                        k::create_topics_request::CreatableTopicConfig::default()
                            .with_name(StrBytes::from_static_str("retention.ms"))
                            .with_value(Some(StrBytes::from_static_str("60000"))),
                    ])]),
        ),
        request_body(
            ApiKey::OffsetCommit,
            8,
            8,
            &k::OffsetCommitRequest::default()
                .with_group_id(group())
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![
                    k::offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(topic())
                        .with_partitions(vec![
                            k::offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(1),
                        ]),
                ]),
        ),
        request_body(
            ApiKey::OffsetFetch,
            7,
            9,
            &k::OffsetFetchRequest::default()
                .with_group_id(group())
                .with_topics(Some(vec![
                    k::offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_name(topic())
                        .with_partition_indexes(vec![0, 1]),
                ])),
        ),
        request_body(
            ApiKey::JoinGroup,
            5,
            10,
            &k::JoinGroupRequest::default()
                .with_group_id(group())
                .with_session_timeout_ms(6000)
                .with_rebalance_timeout_ms(100)
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![
                    k::join_group_request::JoinGroupRequestProtocol::default()
                        .with_name(StrBytes::from_static_str("range"))
                        .with_metadata(subscription("fuzz")),
                ]),
        ),
        request_body(
            ApiKey::DescribeConfigs,
            4,
            11,
            &k::DescribeConfigsRequest::default().with_resources(vec![
                k::describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("fuzz")),
            ]),
        ),
        request_body(
            ApiKey::DeleteRecords,
            2,
            12,
            &k::DeleteRecordsRequest::default().with_topics(vec![
                k::delete_records_request::DeleteRecordsTopic::default()
                    .with_name(topic())
                    .with_partitions(vec![
                        k::delete_records_request::DeleteRecordsPartition::default()
                            .with_partition_index(0)
                            .with_offset(1),
                    ]),
            ]),
        ),
        request_body(
            ApiKey::CreatePartitions,
            3,
            13,
            &k::CreatePartitionsRequest::default().with_topics(vec![
                k::create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(name("fuzz-created"))
                    .with_count(3),
            ]),
        ),
        request_body(
            ApiKey::FindCoordinator,
            3,
            14,
            &k::FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("fuzzers")),
        ),
        request_body(
            ApiKey::InitProducerId,
            4,
            15,
            &k::InitProducerIdRequest::default().with_transaction_timeout_ms(1000),
        ),
        request_body(
            ApiKey::DescribeGroups,
            5,
            16,
            &k::DescribeGroupsRequest::default().with_groups(vec![group()]),
        ),
        request_body(
            ApiKey::DescribeTopicPartitions,
            0,
            18,
            &k::DescribeTopicPartitionsRequest::default()
                .with_topics(vec![
                    k::describe_topic_partitions_request::TopicRequest::default()
                        .with_name(topic()),
                ])
                .with_response_partition_limit(1)
                .with_cursor(Some(
                    k::describe_topic_partitions_request::Cursor::default()
                        .with_topic_name(topic())
                        .with_partition_index(1),
                )),
        ),
        // By topic ID: mutated, an ID no topic has.
        request_body(
            ApiKey::Fetch,
            17,
            17,
            &k::FetchRequest::default()
                .with_max_wait_ms(50)
                .with_max_bytes(1 << 20)
                .with_topics(vec![k::fetch_request::FetchTopic::default()
                    .with_topic_id(meridian_kafka::kafka_topic_id(TopicId([9; 16])))
                    .with_partitions(vec![k::fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20)])]),
        ),
    ]
}

/// kafka-python and a topic with `message.timestamp.type=LogAppendTime`: records
/// it dates in 1970 and ten years ahead are taken, each send learns the time the
/// broker stamped its batch with (`log_append_time_ms`), and its consumer reads
/// that time for both, as a LogAppendTime timestamp.
#[test]
fn kafka_clients_read_a_log_append_time_topic_at_the_brokers_clock() {
    let (broker, addr) = kafka_broker(&[]);
    let create = [
        "topic",
        "create",
        "stamped",
        "-c",
        "message.timestamp.type=LogAppendTime",
    ];
    let (ok, _, err) = broker.cli(&create, "");
    assert!(ok, "{err}");
    let Some(seen) = kafka_python("timestamps.py", &[&addr, "stamped"]) else {
        return;
    };
    let (before, after) = (
        seen["before"].as_i64().unwrap(),
        seen["after"].as_i64().unwrap(),
    );
    let sent: Vec<i64> = seen["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect();
    assert!(
        sent.len() == 2 && sent.iter().all(|t| (before..=after).contains(t)),
        "{seen}"
    );
    assert_eq!(
        seen["read"],
        serde_json::json!([[sent[0], 1], [sent[1], 1]]),
        "{seen}"
    );
}

/// What a client sends cannot forge a line of the broker's log: a group protocol
/// type with a newline in it is refused, and the refusal quoting it stays one line,
/// the newline written `\n`.
#[test]
fn a_client_string_cannot_start_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("broker.log");
    let (broker, addr) = kafka_broker_logging_to(&log, &[], &[("RUST_LOG", "info")]);
    let forged = "x\n[broker-1] 2026-01-01T00:00:00Z ERROR forged: \u{1b}[2Jdisk lost";
    let join = k::JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("billing")))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(30_000)
        .with_protocol_type(StrBytes::from_static_str(forged));
    let mut raw = Raw::connect(&addr);
    raw.send(ApiKey::JoinGroup, 7, &join);
    let joined: k::JoinGroupResponse = raw.receive(ApiKey::JoinGroup, 7);
    assert_ne!(joined.error_code, 0);
    assert!(broker.is_running());
    let log = std::fs::read_to_string(&log).unwrap();
    let refusal = log
        .lines()
        .find(|l| l.contains("Kafka request refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(
        refusal.contains(
            r"protocol type `x\n[broker-1] 2026-01-01T00:00:00Z ERROR forged: \u{1b}[2Jdisk lost`"
        ),
        "{refusal}"
    );
    assert!(!log.lines().any(|l| l.starts_with("[broker-1]")), "{log}");
    assert!(!log.contains('\u{1b}'), "{log}");
}

/// The broker never stops for a malformed request: requests of sixteen kinds, each
/// changed at one place (`harness::mutate`: a byte, an INT32 or INT16 made
/// extreme, the varint 2^32 - 1 spliced in, the frame cut short; from a fixed
/// seed, so a failure repeats), are sent down connections opened again as the
/// broker closes them.
/// The broker keeps answering, and its log has no panic.
#[test]
fn mutated_kafka_requests_never_stop_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("broker.log");
    let (broker, addr) = kafka_broker_logging_to(&log, &["max_fetch_wait_ms=100"], &[]);
    let (ok, _, err) = broker.cli(&["topic", "create", "fuzz", "-p", "2"], "");
    assert!(ok, "{err}");
    let requests = kafka_requests();
    let mut next = seeded(0x9e37_79b9_7f4a_7c15);
    let connect = || {
        let stream = TcpStream::connect(&addr).expect("the Kafka listener answers");
        stream
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        stream
    };
    let mut stream = connect();
    let mut closed = 0;
    for sent in 0..3000 {
        let mut frame = requests[next(requests.len())].to_vec();
        // Past the API key and version, which only pick a refusal.
        mutate(&mut frame, 4, &mut next);
        let mut gone = stream.write_all(&sized(&frame)).is_err();
        // Whatever answers have come (a read that would wait ends the draining).
        let mut answer = [0u8; 4096];
        while let Ok(n) = stream.read(&mut answer) {
            if n == 0 {
                gone = true;
                break;
            }
        }
        if gone {
            closed += 1;
            stream = connect();
        }
        if sent % 500 == 0 {
            let versions = Raw::connect(&addr).api_versions();
            assert_eq!(versions.error_code, 0, "after {sent} requests");
        }
    }
    assert!(broker.is_running());
    assert_eq!(Raw::connect(&addr).api_versions().error_code, 0);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    // Most were refused and closed their connection; some were served.
    assert!(closed > 1000 && closed < 3000, "{closed} closed");
}
