//! Loopback tests over real QUIC + TLS against a minimal in-process peer that speaks
//! the wire protocol (the real broker's end-to-end tests live at the workspace level).
//! They check what needs a real handshake and real streams: certificate trust,
//! the ApiVersions handshake, produce with acks=1 and acks=0, and fetch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use meridian_client::{
    certificate_fingerprint, Acks, Client, ClientConfig, ConsumerConfig, Error, ErrorCode, Offset,
    ProducerConfig, ProducerRecord, Trust,
};
use meridian_wire::batch::{patch_batch, split_batches};
use meridian_wire::frame::{decode_request, encode_error_response, encode_response};
use meridian_wire::messages::*;

const N_PARTITIONS: u32 = 2;

struct TestPeer {
    address: SocketAddr,
    cert_der: Vec<u8>,
    cert_pem: String,
    /// Requests seen, by API.
    seen: Arc<Mutex<Vec<ApiKey>>>,
    _endpoint: quinn::Endpoint,
}

/// Partition logs of topic `t`: whole batches with patched offsets.
type Logs = Arc<Mutex<HashMap<u32, Vec<(i64, Bytes)>>>>;

fn start_peer() -> TestPeer {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_der = certified.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        certified.key_pair.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone().into()], key)
        .unwrap();
    tls.alpn_protocols = vec![meridian_wire::frame::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let address = endpoint.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let logs: Logs = Arc::default();
    let accept = endpoint.clone();
    let seen_by_peer = seen.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            let Ok(connection) = incoming.await else {
                continue;
            };
            let seen = seen_by_peer.clone();
            let logs = logs.clone();
            tokio::spawn(async move {
                while let Ok((send, recv)) = connection.accept_bi().await {
                    tokio::spawn(serve(send, recv, seen.clone(), logs.clone()));
                }
            });
        }
    });
    TestPeer {
        address,
        cert_der,
        cert_pem: certified.cert.pem(),
        seen,
        _endpoint: endpoint,
    }
}

async fn serve(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    seen: Arc<Mutex<Vec<ApiKey>>>,
    logs: Logs,
) {
    let Ok(frame) = recv.read_to_end(64 << 20).await else {
        return;
    };
    let request = match decode_request(Bytes::from(frame).slice(4..)) {
        Ok(request) => request,
        Err(e) => {
            let _ = send
                .write_all(&encode_error_response(e.code(), &e.to_string()))
                .await;
            let _ = send.finish();
            return;
        }
    };
    seen.lock().unwrap().push(request.api_key());
    let response = match request {
        Request::ApiVersions(_) => Response::ApiVersions(ApiVersionsResponse {
            apis: ApiKey::ALL
                .iter()
                .map(|api| ApiVersionRange {
                    api_key: *api as u16,
                    min_version: 0,
                    max_version: 0,
                })
                .collect(),
            broker_id: 1,
            cluster_id: "test".into(),
            max_frame_bytes: 64 << 20,
        }),
        Request::Metadata(_) => Response::Metadata(MetadataResponse {
            brokers: vec![],
            controller_id: 1,
            topics: vec![TopicMetadata {
                name: "t".into(),
                error: ErrorCode::None,
                partitions: (0..N_PARTITIONS)
                    .map(|partition| PartitionMetadata {
                        partition,
                        error: ErrorCode::None,
                        leader: 1,
                        leader_epoch: 0,
                        replicas: vec![1],
                        isr: vec![1],
                    })
                    .collect(),
            }],
        }),
        Request::Produce(produce) => {
            let mut partitions = Vec::new();
            for topic in &produce.topics {
                for p in &topic.partitions {
                    let mut logs = logs.lock().unwrap();
                    let log = logs.entry(p.partition).or_default();
                    let mut next = log.last().map_or(0, |(base, b)| {
                        base + meridian_wire::batch::BatchHeader::parse(b)
                            .unwrap()
                            .records_count as i64
                    });
                    let base_offset = next;
                    for batch in split_batches(p.records.clone()) {
                        let (header, bytes) = batch.unwrap();
                        let mut bytes = bytes.to_vec();
                        patch_batch(&mut bytes, next, 0);
                        log.push((next, Bytes::from(bytes)));
                        next += header.records_count as i64;
                    }
                    partitions.push(ProducePartitionResponse {
                        partition: p.partition,
                        error: ErrorCode::None,
                        message: String::new(),
                        base_offset,
                        log_append_time: -1,
                        log_start_offset: 0,
                    });
                }
            }
            if produce.acks == 0 {
                let _ = send.finish();
                return;
            }
            Response::Produce(ProduceResponse {
                topics: vec![ProduceTopicResponse {
                    name: "t".into(),
                    partitions,
                }],
            })
        }
        Request::ListOffsets(list) => {
            let logs = logs.lock().unwrap();
            Response::ListOffsets(ListOffsetsResponse {
                topics: list
                    .topics
                    .iter()
                    .map(|t| ListOffsetsTopicResponse {
                        name: t.name.clone(),
                        partitions: t
                            .partitions
                            .iter()
                            .map(|p| {
                                let end = logs.get(&p.partition).map_or(0, |log| {
                                    log.iter()
                                        .map(|(_, b)| {
                                            meridian_wire::batch::BatchHeader::parse(b)
                                                .unwrap()
                                                .records_count
                                                as i64
                                        })
                                        .sum()
                                });
                                ListOffsetsPartitionResponse {
                                    partition: p.partition,
                                    error: ErrorCode::None,
                                    offset: if p.timestamp == EARLIEST_TIMESTAMP {
                                        0
                                    } else {
                                        end
                                    },
                                    timestamp: -1,
                                }
                            })
                            .collect(),
                    })
                    .collect(),
            })
        }
        Request::Fetch(fetch) => {
            let topics = fetch_answer(&fetch, &logs);
            if topics.iter().all(|t| {
                t.partitions
                    .iter()
                    .all(|p| p.records.is_empty() && p.error.is_ok())
            }) {
                tokio::time::sleep(
                    Duration::from_millis(fetch.max_wait_ms as u64).min(Duration::from_millis(50)),
                )
                .await;
            }
            Response::Fetch(FetchResponse { topics })
        }
        Request::CreateTopics(_) | Request::DeleteTopics(_) | Request::DescribeTopics(_) => {
            let _ = send
                .write_all(&encode_error_response(
                    ErrorCode::UnsupportedVersion,
                    "not in the test peer",
                ))
                .await;
            let _ = send.finish();
            return;
        }
    };
    let _ = send.write_all(&encode_response(&response)).await;
    let _ = send.finish();
}

fn fetch_answer(fetch: &FetchRequest, logs: &Logs) -> Vec<FetchTopicResponse> {
    let logs = logs.lock().unwrap();
    let mut topics = Vec::new();
    for t in &fetch.topics {
        let mut partitions = Vec::new();
        for p in &t.partitions {
            let log = logs.get(&p.partition).cloned().unwrap_or_default();
            let end: i64 = log.last().map_or(0, |(base, b)| {
                base + meridian_wire::batch::BatchHeader::parse(b)
                    .unwrap()
                    .records_count as i64
            });
            if p.partition == 1 && p.fetch_offset > end {
                partitions.push(FetchPartitionResponse {
                    partition: p.partition,
                    error: ErrorCode::OffsetOutOfRange,
                    message: String::new(),
                    high_watermark: end,
                    log_start_offset: 0,
                    records: Bytes::new(),
                });
                continue;
            }
            let mut records = Vec::new();
            for (base, batch) in &log {
                let header = meridian_wire::batch::BatchHeader::parse(batch).unwrap();
                if base + header.records_count as i64 > p.fetch_offset {
                    records.extend_from_slice(batch);
                }
            }
            partitions.push(FetchPartitionResponse {
                partition: p.partition,
                error: ErrorCode::None,
                message: String::new(),
                high_watermark: end,
                log_start_offset: 0,
                records: Bytes::from(records),
            });
        }
        topics.push(FetchTopicResponse {
            name: t.name.clone(),
            partitions,
        });
    }
    topics
}

fn config(peer: &TestPeer, trust: Trust) -> ClientConfig {
    let mut config = ClientConfig::new(peer.address.to_string(), trust);
    config.request_timeout = Duration::from_secs(5);
    config
}

#[tokio::test]
async fn trust_by_fingerprint_and_by_ca_pem() {
    let peer = start_peer();
    let pin = certificate_fingerprint(&peer.cert_der);
    let client = Client::connect(config(&peer, Trust::Fingerprint(pin)))
        .await
        .unwrap();
    assert_eq!(client.broker_info().await.unwrap().cluster_id, "test");

    let client = Client::connect(config(
        &peer,
        Trust::CaPem(peer.cert_pem.clone().into_bytes()),
    ))
    .await
    .unwrap();
    assert_eq!(client.partition_count("t").await.unwrap(), N_PARTITIONS);

    let mut wrong = pin;
    wrong[0] ^= 1;
    let error = Client::connect(config(&peer, Trust::Fingerprint(wrong)))
        .await
        .err()
        .expect("a wrong pin must fail");
    assert!(
        matches!(error, Error::Tls(_) | Error::Connect(_)),
        "{error:?}"
    );

    let mut wrong_name = config(&peer, Trust::CaPem(peer.cert_pem.clone().into_bytes()));
    wrong_name.server_name = "elsewhere".into();
    assert!(Client::connect(wrong_name).await.is_err());
}

#[tokio::test]
async fn produce_then_consume_over_quic() {
    let peer = start_peer();
    let pin = certificate_fingerprint(&peer.cert_der);
    let client = Client::connect(config(&peer, Trust::Fingerprint(pin)))
        .await
        .unwrap();

    let producer = client.producer(ProducerConfig {
        acks: Acks::Leader,
        linger: Duration::from_millis(2),
        batch_size: 256,
        ..ProducerConfig::default()
    });
    let mut deliveries = Vec::new();
    for i in 0..50 {
        let record = ProducerRecord::new("t", format!("value {i}")).partition(i % 2);
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
    let mut next = [0i64; 2];
    for (i, delivery) in deliveries.into_iter().enumerate() {
        let metadata = delivery.await.unwrap();
        assert_eq!(metadata.partition, (i % 2) as u32);
        assert_eq!(
            metadata.offset,
            next[i % 2],
            "offsets are consecutive per partition"
        );
        next[i % 2] += 1;
    }
    let error = producer
        .send(ProducerRecord::new("t", "x").partition(9))
        .await
        .expect_err("partition 9 does not exist");
    assert_eq!(error.code(), Some(ErrorCode::InvalidPartition));

    let fire_and_forget = client.producer(ProducerConfig {
        acks: Acks::None,
        ..ProducerConfig::default()
    });
    let delivery = fire_and_forget
        .send(ProducerRecord::new("t", "no ack").partition(0))
        .await
        .unwrap();
    assert_eq!(delivery.await.unwrap().offset, -1);

    let mut consumer = client.consumer(ConsumerConfig {
        fetch_max_wait: Duration::from_millis(50),
        ..ConsumerConfig::default()
    });
    assert_eq!(consumer.assign_all("t").await.unwrap(), vec![0, 1]);
    assert_eq!(
        consumer.position("t", 0),
        Some(26),
        "starts at the end by default"
    );
    consumer.seek("t", 0, Offset::At(3)).await.unwrap();
    consumer.seek("t", 1, Offset::Earliest).await.unwrap();
    let mut got: HashMap<u32, Vec<i64>> = HashMap::new();
    while consumer.position("t", 0) < Some(26) || consumer.position("t", 1) < Some(25) {
        for record in consumer.poll(Duration::from_secs(2)).await.unwrap() {
            got.entry(record.partition).or_default().push(record.offset);
        }
    }
    assert_eq!(got[&0], (3..26).collect::<Vec<_>>());
    assert_eq!(got[&1], (0..25).collect::<Vec<_>>());
    assert_eq!(consumer.high_watermark("t", 1), Some(25));

    // An out-of-range position is reported by poll, not retried silently.
    consumer.seek("t", 1, Offset::At(1000)).await.unwrap();
    let mut error = None;
    for _ in 0..20 {
        if let Err(e) = consumer.poll(Duration::from_millis(200)).await {
            error = Some(e);
            break;
        }
    }
    assert_eq!(
        error.and_then(|e| e.code()),
        Some(ErrorCode::OffsetOutOfRange)
    );

    client.close();
    assert!(matches!(
        client.partition_count("other").await,
        Err(Error::Closed)
    ));
    let seen = peer.seen.lock().unwrap().clone();
    assert!(seen.contains(&ApiKey::Fetch) && seen.contains(&ApiKey::Produce));
}
