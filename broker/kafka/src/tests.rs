//! The translation, driven as a Kafka client would: requests encoded by the
//! client half of kafka-protocol, responses decoded by it.

use super::*;
use bytes::Buf;
use kafka_protocol::protocol::HeaderVersion;

fn broker_setting(name: &str, value: &str, is_default: bool) -> BrokerSetting {
    BrokerSetting {
        name: name.into(),
        value: value.into(),
        is_default,
        config_type: config_type::LONG,
    }
}

/// Topic `orders` as the broker describes it, with these settings (key, value, and
/// whether it is the default).
fn orders_described(configs: &[(&str, &str, bool)]) -> m::TopicDescription {
    m::TopicDescription {
        name: "orders".into(),
        id: ORDERS_ID,
        error: ErrorCode::None,
        message: String::new(),
        replication_factor: 1,
        configs: configs
            .iter()
            .map(|&(key, value, is_default)| m::DescribedConfig {
                key: key.into(),
                value: value.into(),
                is_default,
            })
            .collect(),
        partitions: Vec::new(),
        plugins: Vec::new(),
    }
}

/// A single broker's DescribeCluster answer: describing the cluster is allowed.
fn cluster_described() -> meridian_wire::describe_cluster::DescribeClusterResponse {
    meridian_wire::describe_cluster::DescribeClusterResponse {
        error: ErrorCode::None,
        message: String::new(),
        cluster_id: "meridian-test".into(),
        broker_id: 1,
        controller_id: 1,
        quorum: None,
        brokers: Vec::new(),
    }
}

fn listener() -> Listener {
    Listener {
        broker_id: 1,
        cluster_id: "meridian-test".into(),
        brokers: vec![KafkaBroker {
            id: 1,
            host: "kafka.example".into(),
            port: 9092,
            rack: None,
        }],
        settings: vec![
            broker_setting("log.retention.ms", "604800000", true),
            broker_setting("num.partitions", "3", false),
        ]
        .into(),
    }
}

/// A request frame as a client sends it (without the size).
fn frame_of<T: Encodable + HeaderVersion>(api: ApiKey, version: i16, body: &T) -> Bytes {
    let mut out = BytesMut::new();
    k::RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(42)
        .with_client_id(Some(StrBytes::from_static_str("test-client")))
        .encode(&mut out, T::header_version(version))
        .unwrap();
    body.encode(&mut out, version).unwrap();
    out.freeze()
}

/// The body of a response frame, after checking its size and correlation id.
fn response<T: Decodable>(api: ApiKey, version: i16, frame: Bytes) -> T {
    let mut frame = frame;
    let size = frame.get_i32();
    assert_eq!(size as usize, frame.len());
    let header =
        k::ResponseHeader::decode(&mut frame, api.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, 42);
    let body = T::decode(&mut frame, version).unwrap();
    assert!(!frame.has_remaining(), "{} bytes left over", frame.len());
    body
}

fn serve(frame: Bytes) -> (m::Request, Pending) {
    match decode(frame).unwrap() {
        Step::Serve(request, pending) => (*request, pending),
        Step::Reply(_) | Step::Refused { .. } | Step::Sasl(_) => {
            panic!("answered without the broker")
        }
    }
}

fn reply(frame: Bytes) -> Bytes {
    match decode(frame).unwrap() {
        Step::Reply(bytes) | Step::Refused { reply: bytes, .. } => bytes,
        Step::Serve(request, _) => panic!("handed to the broker: {request:?}"),
        Step::Sasl(_) => panic!("a SASL request"),
    }
}

/// The response frame to a request handed to the broker, given the broker's
/// answer (on the single-broker [`listener`]).
fn answered(pending: Pending, answer: m::Response) -> Bytes {
    pending.respond(Some(answer), &listener()).unwrap().unwrap()
}

fn sasl_request(frame: Bytes) -> SaslRequest {
    match decode(frame).unwrap() {
        Step::Sasl(request) => request,
        other => panic!("not a SASL request: {other:?}"),
    }
}

/// SaslHandshake and SaslAuthenticate as a Kafka client sends them: PLAIN with the
/// password the credential was made from authenticates; out of place (no exchange
/// under way) both answer `ILLEGAL_SASL_STATE`.
#[test]
fn sasl_requests_are_answered_by_the_connection_authenticator() {
    use sasl::{Authenticator, Mechanism, Outcome, ScramCredential, Users};
    let credential = ScramCredential::new(Mechanism::ScramSha256, b"pw", b"salt", 4096).unwrap();
    let users = std::sync::Arc::new(Users {
        users: [(
            "alice".to_string(),
            [(Mechanism::ScramSha256, credential)].into(),
        )]
        .into(),
    });
    let mut auth = Authenticator::new(users.clone(), Mechanism::ALL.to_vec(), b"n");
    let handshake = frame_of(
        ApiKey::SaslHandshake,
        1,
        &k::SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    );
    let (frame, outcome) = sasl_request(handshake.clone())
        .answer(Some(&mut auth), 0)
        .unwrap();
    assert_eq!(outcome, Outcome::Continue);
    let answer: k::SaslHandshakeResponse = response(ApiKey::SaslHandshake, 1, frame);
    assert_eq!(answer.error_code, 0);
    assert_eq!(
        answer.mechanisms,
        ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"].map(StrBytes::from_static_str)
    );
    for version in [0, 2] {
        let token = frame_of(
            ApiKey::SaslAuthenticate,
            version,
            &k::SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from_static(b"\0alice\0pw")),
        );
        let mut auth = Authenticator::new(users.clone(), Mechanism::ALL.to_vec(), b"n");
        auth.handshake("PLAIN");
        let (frame, outcome) = sasl_request(token.clone())
            .answer(Some(&mut auth), 0)
            .unwrap();
        assert_eq!(outcome, Outcome::Authenticated("alice".into()));
        let answer: k::SaslAuthenticateResponse =
            response(ApiKey::SaslAuthenticate, version, frame);
        assert_eq!(answer.error_code, 0);
        let (frame, outcome) = sasl_request(token).answer(None, 0).unwrap();
        assert_eq!(outcome, Outcome::Continue);
        let answer: k::SaslAuthenticateResponse =
            response(ApiKey::SaslAuthenticate, version, frame);
        assert_eq!(answer.error_code, 34);
    }
    let (frame, _) = sasl_request(handshake).answer(None, 0).unwrap();
    let answer: k::SaslHandshakeResponse = response(ApiKey::SaslHandshake, 1, frame);
    assert_eq!(answer.error_code, 34);
}

#[test]
fn api_versions_lists_what_is_served_at_every_version() {
    for version in 0..=3 {
        let frame = frame_of(
            ApiKey::ApiVersions,
            version,
            &k::ApiVersionsRequest::default(),
        );
        let r: k::ApiVersionsResponse = response(ApiKey::ApiVersions, version, reply(frame));
        assert_eq!(r.error_code, 0);
        let produce = r
            .api_keys
            .iter()
            .find(|a| a.api_key == ApiKey::Produce as i16)
            .unwrap();
        assert_eq!((produce.min_version, produce.max_version), (3, 11));
        assert_eq!(r.api_keys.len(), APIS.len());
        assert!(!r
            .api_keys
            .iter()
            .any(|a| a.api_key == ApiKey::DescribeAcls as i16));
    }
}

#[test]
fn a_newer_api_versions_gets_version_0_with_the_versions_served() {
    let frame = frame_of(ApiKey::ApiVersions, 3, &k::ApiVersionsRequest::default());
    // The same bytes, claiming version 9 (a client from the future).
    let mut bytes = frame.to_vec();
    bytes[2..4].copy_from_slice(&9i16.to_be_bytes());
    let r: k::ApiVersionsResponse = response(ApiKey::ApiVersions, 0, reply(bytes.into()));
    assert_eq!(r.error_code, ResponseError::UnsupportedVersion.code());
    assert_eq!(r.api_keys.len(), APIS.len());
}

#[test]
fn what_is_not_served_is_refused_by_name() {
    // ACL administration is not served: the rules are each broker's `acl_file`.
    let acls = frame_of(ApiKey::DescribeAcls, 1, &k::DescribeAclsRequest::default());
    let e = decode(acls).unwrap_err();
    assert_eq!(e, KafkaError::UnknownApi(ApiKey::DescribeAcls as i16));
    assert!(e.to_string().contains("Produce, Fetch"), "{e}");
    let fetch18 = frame_of(ApiKey::Fetch, 18, &k::FetchRequest::default());
    assert_eq!(
        decode(fetch18).unwrap_err(),
        KafkaError::UnsupportedVersion {
            api: ApiKey::Fetch,
            version: 18,
            min: 4,
            max: 17
        }
    );
    assert_eq!(
        decode(Bytes::from_static(&[0, 1, 0])).unwrap_err(),
        KafkaError::Truncated(3)
    );
    assert_eq!(
        decode(Bytes::from_static(&[0x7f, 0, 0, 0, 0, 0, 0, 1])).unwrap_err(),
        KafkaError::UnknownApi(0x7f00)
    );
}

#[test]
fn a_truncated_body_is_malformed_not_a_panic() {
    let mut topic =
        k::produce_request::TopicProduceData::default().with_name(topic_name("orders".into()));
    topic.partition_data.push(
        k::produce_request::PartitionProduceData::default()
            .with_index(0)
            .with_records(Some(Bytes::from_static(&[1; 100]))),
    );
    let frame = frame_of(
        ApiKey::Produce,
        9,
        &k::ProduceRequest::default()
            .with_acks(1)
            .with_topic_data(vec![topic]),
    );
    for cut in 8..frame.len() {
        match decode(frame.slice(..cut)) {
            Err(KafkaError::Malformed {
                api: ApiKey::Produce,
                version: 9,
                ..
            }) => {}
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn produce_passes_records_through_and_answers_per_partition() {
    for version in [3, 7, 9, 11] {
        let records = Bytes::from_static(b"a record batch, untouched");
        let topic = k::produce_request::TopicProduceData::default()
            .with_name(topic_name("orders".into()))
            .with_partition_data(vec![
                k::produce_request::PartitionProduceData::default()
                    .with_index(2)
                    .with_records(Some(records.clone())),
                k::produce_request::PartitionProduceData::default()
                    .with_index(-1)
                    .with_records(Some(records.clone())),
            ]);
        let frame = frame_of(
            ApiKey::Produce,
            version,
            &k::ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(1500)
                .with_topic_data(vec![topic]),
        );
        let (request, pending) = serve(frame);
        let m::Request::Produce(p) = request else {
            panic!("{request:?}")
        };
        assert_eq!((p.acks, p.timeout_ms), (-1, 1500));
        assert_eq!(p.topics[0].name, "orders");
        assert_eq!(p.topics[0].partitions[0].partition, 2);
        assert_eq!(p.topics[0].partitions[0].records, records);
        // Never "unassigned" (a partitioner plugin's cue): out of range instead.
        assert_ne!(p.topics[0].partitions[1].partition, m::UNASSIGNED_PARTITION);
        let answer = m::ProduceResponse {
            topics: vec![m::ProduceTopicResponse {
                name: "orders".into(),
                partitions: vec![
                    m::ProducePartitionResponse {
                        partition: 2,
                        error: ErrorCode::None,
                        message: String::new(),
                        base_offset: 17,
                        log_append_time: -1,
                        log_start_offset: 0,
                    },
                    m::ProducePartitionResponse {
                        partition: u32::MAX - 1,
                        error: ErrorCode::InvalidPartition,
                        message: "no such partition".into(),
                        base_offset: -1,
                        log_append_time: -1,
                        log_start_offset: -1,
                    },
                ],
            }],
        };
        let frame = answered(pending, m::Response::Produce(answer));
        let r: k::ProduceResponse = response(ApiKey::Produce, version, frame);
        let ps = &r.responses[0].partition_responses;
        assert_eq!(
            (ps[0].index, ps[0].error_code, ps[0].base_offset),
            (2, 0, 17)
        );
        assert_eq!(
            ps[1].error_code,
            ResponseError::UnknownTopicOrPartition.code()
        );
        if version >= 8 {
            assert_eq!(ps[1].error_message.as_deref(), Some("no such partition"));
        }
    }
}

#[test]
fn acks_0_gets_no_response_and_transactions_are_refused() {
    let frame = frame_of(
        ApiKey::Produce,
        9,
        &k::ProduceRequest::default().with_acks(0),
    );
    let (_, pending) = serve(frame);
    assert_eq!(pending.respond(None, &listener()).unwrap(), None);

    let topic = k::produce_request::TopicProduceData::default()
        .with_name(topic_name("orders".into()))
        .with_partition_data(vec![
            k::produce_request::PartitionProduceData::default().with_index(0)
        ]);
    let transactional = k::ProduceRequest::default()
        .with_transactional_id(Some(StrBytes::from_static_str("tx").into()))
        .with_acks(-1)
        .with_topic_data(vec![topic]);
    let r: k::ProduceResponse = response(
        ApiKey::Produce,
        9,
        reply(frame_of(ApiKey::Produce, 9, &transactional)),
    );
    assert_eq!(
        r.responses[0].partition_responses[0].error_code,
        ResponseError::TransactionalIdAuthorizationFailed.code()
    );
    let init = k::InitProducerIdRequest::default()
        .with_transactional_id(Some(StrBytes::from_static_str("tx").into()));
    let r: k::InitProducerIdResponse = response(
        ApiKey::InitProducerId,
        4,
        reply(frame_of(ApiKey::InitProducerId, 4, &init)),
    );
    assert_eq!(r.error_code, ResponseError::InvalidRequest.code());
}

#[test]
fn metadata_names_the_kafka_listener() {
    for version in [0, 1, 4, 9, 12] {
        let asked = k::MetadataRequest::default().with_topics(Some(vec![
            k::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(topic_name("orders".into()))),
        ]));
        let (request, pending) = serve(frame_of(ApiKey::Metadata, version, &asked));
        assert_eq!(
            request,
            m::Request::Metadata(m::MetadataRequest {
                topics: Some(vec!["orders".into()])
            })
        );
        let answer = m::MetadataResponse {
            brokers: vec![m::BrokerInfo {
                broker_id: 1,
                host: "127.0.0.1".into(),
                port: 7000,
            }],
            controller_id: 1,
            topics: vec![m::TopicMetadata {
                name: "orders".into(),
                id: ORDERS_ID,
                error: ErrorCode::None,
                message: String::new(),
                partitions: vec![m::PartitionMetadata {
                    partition: 0,
                    error: ErrorCode::None,
                    leader: 1,
                    leader_epoch: 3,
                    replicas: vec![1],
                    isr: vec![1],
                }],
            }],
        };
        let frame = answered(pending, m::Response::Metadata(answer));
        let r: k::MetadataResponse = response(ApiKey::Metadata, version, frame);
        assert_eq!(r.brokers.len(), 1);
        assert_eq!(
            (&*r.brokers[0].host, r.brokers[0].port),
            ("kafka.example", 9092)
        );
        let t = &r.topics[0];
        assert_eq!(t.name.as_ref().map(|n| &*n.0), Some("orders"));
        assert_eq!(t.partitions[0].leader_id, BrokerId(1));
        if version >= 2 {
            assert_eq!(r.cluster_id.as_deref(), Some("meridian-test"));
        }
        if version >= 10 {
            assert_eq!(t.topic_id, crate::kafka_topic_id(ORDERS_ID));
        }
    }
    // Version 0 has no null list: empty asks for every topic.
    let every = k::MetadataRequest::default().with_topics(Some(Vec::new()));
    let (request, _) = serve(frame_of(ApiKey::Metadata, 0, &every));
    assert_eq!(
        request,
        m::Request::Metadata(m::MetadataRequest { topics: None })
    );
    let (request, _) = serve(frame_of(ApiKey::Metadata, 4, &every));
    assert_eq!(
        request,
        m::Request::Metadata(m::MetadataRequest {
            topics: Some(Vec::new())
        })
    );
}

const ORDERS_ID: meridian_wire::TopicId = meridian_wire::TopicId([7; 16]);

/// Metadata naming topics by ID (KIP-516, version 12) asks the broker for every
/// topic the client may see and answers with those that have the IDs, in the order
/// asked; an ID none has (or one asked twice, once) is `UNKNOWN_TOPIC_ID`.
#[test]
fn metadata_by_topic_id_answers_the_topics_with_those_ids() {
    let by_id = |id: meridian_wire::TopicId| {
        k::metadata_request::MetadataRequestTopic::default()
            .with_name(None)
            .with_topic_id(crate::kafka_topic_id(id))
    };
    let payments_id = meridian_wire::TopicId([9; 16]);
    let unknown_id = meridian_wire::TopicId([1; 16]);
    let asked = k::MetadataRequest::default().with_topics(Some(vec![
        by_id(payments_id),
        by_id(unknown_id),
        by_id(ORDERS_ID),
        by_id(ORDERS_ID),
    ]));
    let (request, pending) = serve(frame_of(ApiKey::Metadata, 12, &asked));
    assert_eq!(
        request,
        m::Request::Metadata(m::MetadataRequest { topics: None })
    );
    let topic = |name: &str, id| m::TopicMetadata {
        name: name.into(),
        id,
        error: ErrorCode::None,
        message: String::new(),
        partitions: Vec::new(),
    };
    let answer = m::MetadataResponse {
        brokers: Vec::new(),
        controller_id: 1,
        topics: vec![
            topic("orders", ORDERS_ID),
            topic("audit", meridian_wire::TopicId([3; 16])),
            topic("payments", payments_id),
        ],
    };
    let frame = answered(pending, m::Response::Metadata(answer));
    let r: k::MetadataResponse = response(ApiKey::Metadata, 12, frame);
    let got: Vec<(Option<&str>, uuid::Uuid, i16)> = r
        .topics
        .iter()
        .map(|t| (t.name.as_ref().map(|n| &*n.0), t.topic_id, t.error_code))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("payments"), crate::kafka_topic_id(payments_id), 0),
            (Some("orders"), crate::kafka_topic_id(ORDERS_ID), 0),
            (
                None,
                crate::kafka_topic_id(unknown_id),
                ResponseError::UnknownTopicId.code()
            ),
        ]
    );
}

/// The broker's answer to a fetch of `orders` partition 1 (high watermark 90).
fn fetched(records: Bytes, diverging_epoch: Option<m::DivergingEpoch>) -> m::FetchResponse {
    m::FetchResponse {
        topics: vec![m::FetchTopicResponse {
            name: "orders".into(),
            id: meridian_wire::TopicId::NONE,
            partitions: vec![m::FetchPartitionResponse {
                partition: 1,
                error: ErrorCode::None,
                message: String::new(),
                high_watermark: 90,
                log_start_offset: 0,
                records,
                diverging_epoch,
            }],
        }],
    }
}

#[test]
fn fetch_is_sessionless_and_carries_records_back() {
    let asked = k::FetchRequest::default()
        .with_replica_id(BrokerId(3))
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![k::fetch_request::FetchTopic::default()
            .with_topic(topic_name("orders".into()))
            .with_partitions(vec![k::fetch_request::FetchPartition::default()
                .with_partition(1)
                .with_fetch_offset(40)
                .with_partition_max_bytes(65536)])]);
    for version in [4, 7, 11, 12] {
        let (request, pending) = serve(frame_of(ApiKey::Fetch, version, &asked));
        let m::Request::Fetch(f) = request else {
            panic!()
        };
        // A Kafka client is never taken for a follower.
        assert_eq!(f.replica_id, m::CONSUMER_REPLICA_ID);
        assert_eq!(
            (f.max_wait_ms, f.topics[0].partitions[0].fetch_offset),
            (500, 40)
        );
        let records = Bytes::from_static(b"batches as stored");
        let answer = fetched(records.clone(), None);
        let frame = answered(pending, m::Response::Fetch(answer));
        let r: k::FetchResponse = response(ApiKey::Fetch, version, frame);
        let p = &r.responses[0].partitions[0];
        assert_eq!((p.high_watermark, p.last_stable_offset), (90, 90));
        assert_eq!(p.records.as_ref(), Some(&records));
        assert_eq!(r.session_id, 0);
    }
    // A consumer whose log diverges from the leader's (after an unclean election)
    // names the epoch of what it last read (version 12); the answer says where its
    // epoch ends on the leader, so it truncates there rather than fetch for ever.
    let mut diverged = asked.clone();
    diverged.topics[0].partitions[0].last_fetched_epoch = 4;
    diverged.topics[0].partitions[0].current_leader_epoch = 6;
    let (request, pending) = serve(frame_of(ApiKey::Fetch, 12, &diverged));
    let m::Request::Fetch(f) = request else {
        panic!()
    };
    let p = &f.topics[0].partitions[0];
    assert_eq!((p.last_fetched_epoch, p.current_leader_epoch), (4, 6));
    let diverging = m::DivergingEpoch {
        epoch: 3,
        end_offset: 35,
    };
    let answer = fetched(Bytes::new(), Some(diverging));
    let r: k::FetchResponse = response(
        ApiKey::Fetch,
        12,
        answered(pending, m::Response::Fetch(answer)),
    );
    let d = &r.responses[0].partitions[0].diverging_epoch;
    assert_eq!((d.epoch, d.end_offset), (3, 35));
    // An incremental fetch names a session this broker never created.
    let incremental = asked.with_session_id(7).with_session_epoch(1);
    let r: k::FetchResponse = response(
        ApiKey::Fetch,
        12,
        reply(frame_of(ApiKey::Fetch, 12, &incremental)),
    );
    assert_eq!(r.error_code, ResponseError::FetchSessionIdNotFound.code());
}

/// From version 13 a consumer names each topic by its ID alone (KIP-516): the
/// broker is asked by that ID, and the answer names the topic by it again.
/// Version 15 moves the replica id into a replica state, 16 adds the leaders'
/// endpoints and 17 a replica's directory; a consumer sets none of them.
#[test]
fn fetch_from_version_13_asks_by_topic_id() {
    let id = meridian_wire::TopicId([7; 16]);
    let asked = k::FetchRequest::default()
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_replica_state(k::fetch_request::ReplicaState::default().with_replica_id(BrokerId(-1)))
        .with_topics(vec![k::fetch_request::FetchTopic::default()
            .with_topic_id(crate::kafka_topic_id(id))
            .with_partitions(vec![k::fetch_request::FetchPartition::default()
                .with_partition(1)
                .with_fetch_offset(40)
                .with_partition_max_bytes(65536)])]);
    for version in [13, 14, 15, 16, 17] {
        let (request, pending) = serve(frame_of(ApiKey::Fetch, version, &asked));
        let m::Request::Fetch(f) = request else {
            panic!()
        };
        assert_eq!((f.topics[0].id, f.topics[0].name.as_str()), (id, ""));
        assert_eq!(f.replica_id, m::CONSUMER_REPLICA_ID);
        let records = Bytes::from_static(b"batches as stored");
        let mut answer = fetched(records.clone(), None);
        answer.topics[0].id = id;
        let frame = answered(pending, m::Response::Fetch(answer));
        let r: k::FetchResponse = response(ApiKey::Fetch, version, frame);
        let t = &r.responses[0];
        assert_eq!(t.topic_id, crate::kafka_topic_id(id), "version {version}");
        assert_eq!(t.partitions[0].records.as_ref(), Some(&records));
    }
    // Before version 13 the name is what counts; no ID is asked for.
    let by_name = asked
        .clone()
        .with_topics(vec![k::fetch_request::FetchTopic::default()
            .with_topic(topic_name("orders".into()))
            .with_topic_id(crate::kafka_topic_id(id))]);
    let (request, _) = serve(frame_of(ApiKey::Fetch, 12, &by_name));
    let m::Request::Fetch(f) = request else {
        panic!()
    };
    assert_eq!(
        (f.topics[0].id, f.topics[0].name.as_str()),
        (meridian_wire::TopicId::NONE, "orders")
    );
    // No topic has the ID: Kafka's UNKNOWN_TOPIC_ID for each partition.
    let (_, pending) = serve(frame_of(ApiKey::Fetch, 13, &asked));
    let unknown = m::FetchResponse {
        topics: vec![m::FetchTopicResponse {
            name: String::new(),
            id,
            partitions: vec![m::FetchPartitionResponse {
                partition: 1,
                error: ErrorCode::UnknownTopicId,
                message: "no topic has ID …".into(),
                high_watermark: -1,
                log_start_offset: -1,
                records: Bytes::new(),
                diverging_epoch: None,
            }],
        }],
    };
    let r: k::FetchResponse = response(
        ApiKey::Fetch,
        13,
        answered(pending, m::Response::Fetch(unknown)),
    );
    assert_eq!(r.responses[0].topic_id, crate::kafka_topic_id(id));
    assert_eq!(
        r.responses[0].partitions[0].error_code,
        ResponseError::UnknownTopicId.code()
    );
}

#[test]
fn offsets_commit_and_fetch_answer_every_partition_named() {
    let commit = k::OffsetCommitRequest::default()
        .with_group_id(k::GroupId(StrBytes::from_static_str("billing")))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            k::offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(topic_name("orders".into()))
                .with_partitions(vec![
                    k::offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(5),
                    k::offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(1)
                        .with_committed_offset(9)
                        .with_committed_metadata(Some(StrBytes::from_static_str("m"))),
                ]),
        ]);
    let (request, pending) = serve(frame_of(ApiKey::OffsetCommit, 8, &commit));
    let m::Request::OffsetCommit(c) = request else {
        panic!()
    };
    assert_eq!(
        (c.group_id.as_str(), c.member_id.as_str(), c.member_epoch),
        ("billing", "", -1)
    );
    assert_eq!(c.topics[0].partitions[1].offset, 9);
    assert_eq!(c.topics[0].partitions[1].metadata, "m");
    let answer = g::OffsetCommitResponse {
        error: ErrorCode::UnknownTopic,
        message: "no".into(),
    };
    let frame = answered(pending, m::Response::OffsetCommit(answer));
    let r: k::OffsetCommitResponse = response(ApiKey::OffsetCommit, 8, frame);
    let codes: Vec<i16> = r.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(codes, [3, 3]);
    // A commit from outside a group with members: Kafka's "unknown member", on
    // which clients join again, not DeleteGroups' "not empty".
    let (_, pending) = serve(frame_of(ApiKey::OffsetCommit, 8, &commit));
    let answer = g::OffsetCommitResponse {
        error: ErrorCode::NonEmptyGroup,
        message: "group `billing` has 2 active members".into(),
    };
    let frame = answered(pending, m::Response::OffsetCommit(answer));
    let r: k::OffsetCommitResponse = response(ApiKey::OffsetCommit, 8, frame);
    assert!(r.topics[0]
        .partitions
        .iter()
        .all(|p| p.error_code == ResponseError::UnknownMemberId.code()));

    let fetch = k::OffsetFetchRequest::default()
        .with_group_id(k::GroupId(StrBytes::from_static_str("billing")))
        .with_topics(Some(vec![
            k::offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(topic_name("orders".into()))
                .with_partition_indexes(vec![0, 1]),
        ]));
    let (request, pending) = serve(frame_of(ApiKey::OffsetFetch, 7, &fetch));
    let m::Request::OffsetFetch(f) = request else {
        panic!()
    };
    assert_eq!(f.topics.as_ref().unwrap()[0].partitions, [0, 1]);
    let answer = g::OffsetFetchResponse {
        error: ErrorCode::None,
        message: String::new(),
        topics: vec![g::TopicOffsets {
            topic: "orders".into(),
            partitions: vec![g::PartitionOffset {
                partition: 1,
                offset: 9,
                leader_epoch: -1,
                metadata: "m".into(),
                commit_timestamp_ms: 0,
            }],
        }],
    };
    let frame = answered(pending, m::Response::OffsetFetch(answer));
    let r: k::OffsetFetchResponse = response(ApiKey::OffsetFetch, 7, frame);
    let offsets: Vec<(i32, i64)> = r.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.committed_offset))
        .collect();
    assert_eq!(offsets, [(0, -1), (1, 9)]);
}

/// ListOffsets at every version served: each offset's leader epoch reaches a
/// client from version 4, which has the field; older versions answer without it
/// rather than fail to encode.
#[test]
fn list_offsets_names_leader_epochs_from_version_4() {
    for version in 1..=8 {
        let asked = k::ListOffsetsRequest::default()
            .with_replica_id((-1).into())
            .with_topics(vec![k::list_offsets_request::ListOffsetsTopic::default()
                .with_name(topic_name("orders".into()))
                .with_partitions(vec![
                    k::list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1),
                ])]);
        let (request, pending) = serve(frame_of(ApiKey::ListOffsets, version, &asked));
        let m::Request::ListOffsets(r) = request else {
            panic!("{request:?}")
        };
        assert_eq!(r.topics[0].partitions[0].timestamp, m::LATEST_TIMESTAMP);
        let answer = m::ListOffsetsResponse {
            topics: vec![m::ListOffsetsTopicResponse {
                name: "orders".into(),
                partitions: vec![m::ListOffsetsPartitionResponse {
                    partition: 0,
                    error: ErrorCode::None,
                    offset: 42,
                    timestamp: -1,
                    leader_epoch: 3,
                }],
            }],
        };
        let frame = answered(pending, m::Response::ListOffsets(answer));
        let r: k::ListOffsetsResponse = response(ApiKey::ListOffsets, version, frame);
        let p = &r.topics[0].partitions[0];
        let epoch = if version >= 4 { 3 } else { -1 };
        assert_eq!((p.offset, p.leader_epoch), (42, epoch), "version {version}");
    }
}

/// OffsetForLeaderEpoch at every version served: each partition's epochs reach the
/// broker, and each partition's answer (an end offset, or an error with undefined
/// epoch and offset) reaches the client.
#[test]
fn offset_for_leader_epoch_asks_the_broker_per_partition() {
    for version in 2..=4 {
        let asked = k::OffsetForLeaderEpochRequest::default()
            .with_replica_id((-1).into())
            .with_topics(vec![
                k::offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(topic_name("orders".into()))
                    .with_partitions(vec![
                        k::offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(7)
                            .with_leader_epoch(5),
                        k::offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(1)
                            .with_current_leader_epoch(3)
                            .with_leader_epoch(3),
                    ]),
            ]);
        let (request, pending) = serve(frame_of(ApiKey::OffsetForLeaderEpoch, version, &asked));
        let m::Request::OffsetForLeaderEpoch(r) = request else {
            panic!("{request:?}")
        };
        assert_eq!(r.topics[0].name, "orders");
        let queries: Vec<(u32, i32, i32)> = r.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition, p.current_leader_epoch, p.leader_epoch))
            .collect();
        assert_eq!(queries, [(0, 7, 5), (1, 3, 3)]);
        let answer = m::OffsetForLeaderEpochResponse {
            topics: vec![m::EpochEndTopic {
                name: "orders".into(),
                partitions: vec![
                    m::EpochEnd {
                        partition: 0,
                        error: ErrorCode::None,
                        message: String::new(),
                        leader_epoch: 4,
                        end_offset: 1200,
                    },
                    m::EpochEnd {
                        partition: 1,
                        error: ErrorCode::FencedLeaderEpoch,
                        message: "stale".into(),
                        leader_epoch: m::UNDEFINED_EPOCH,
                        end_offset: m::UNDEFINED_EPOCH_OFFSET,
                    },
                ],
            }],
        };
        let frame = answered(pending, m::Response::OffsetForLeaderEpoch(answer));
        let r: k::OffsetForLeaderEpochResponse =
            response(ApiKey::OffsetForLeaderEpoch, version, frame);
        let ends: Vec<(i32, i16, i32, i64)> = r.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition, p.error_code, p.leader_epoch, p.end_offset))
            .collect();
        assert_eq!(
            ends,
            [(0, 0, 4, 1200), (1, 74, -1, -1)],
            "version {version}"
        );
    }
}

#[test]
fn the_coordinator_is_this_listener() {
    let find = k::FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("billing"));
    let (request, pending) = serve(frame_of(ApiKey::FindCoordinator, 3, &find));
    assert_eq!(
        request,
        m::Request::FindCoordinator(g::FindCoordinatorRequest {
            group_id: "billing".into()
        })
    );
    let answer = g::FindCoordinatorResponse {
        error: ErrorCode::None,
        message: String::new(),
        broker_id: 1,
        host: "127.0.0.1".into(),
        port: 7000,
    };
    let frame = answered(pending, m::Response::FindCoordinator(answer));
    let r: k::FindCoordinatorResponse = response(ApiKey::FindCoordinator, 3, frame);
    assert_eq!((r.error_code, &*r.host, r.port), (0, "kafka.example", 9092));
    // Transaction coordinators: none.
    let txn = find.with_key_type(1);
    let r: k::FindCoordinatorResponse = response(
        ApiKey::FindCoordinator,
        3,
        reply(frame_of(ApiKey::FindCoordinator, 3, &txn)),
    );
    assert_eq!(r.error_code, ResponseError::CoordinatorNotAvailable.code());
}

/// Where the KIP-951 tests' partitions of `orders` are led: 0 and 1 by broker 2
/// (epoch 7), 2 by broker 3 (which has no Kafka listener), 4 by broker 1; 3 is
/// offline.
fn leaders_of_orders(topic: &str, p: u32) -> Option<(u32, i32)> {
    assert_eq!(topic, "orders");
    match p {
        0 | 1 => Some((2, 7)),
        2 => Some((3, 4)),
        4 => Some((1, 1)),
        _ => None,
    }
}

/// KIP-951: from version 10 a partition refused as not this broker's names its
/// current leader, and the answer that leader's Kafka listener; a leader without
/// one (broker 3 here), or unknown, is not named; other errors name nobody.
#[test]
fn a_produce_refused_for_leadership_names_the_current_leader() {
    for version in [9, 10, 11] {
        let request = k::ProduceRequest::default().with_acks(1);
        let (_, pending) = serve(frame_of(ApiKey::Produce, version, &request));
        let partition = |partition: u32, error: ErrorCode| m::ProducePartitionResponse {
            partition,
            error,
            message: String::new(),
            base_offset: -1,
            log_append_time: -1,
            log_start_offset: -1,
        };
        let answer = m::ProduceResponse {
            topics: vec![m::ProduceTopicResponse {
                name: "orders".into(),
                partitions: vec![
                    partition(0, ErrorCode::NotLeaderOrFollower),
                    partition(1, ErrorCode::NotLeaderOrFollower),
                    partition(2, ErrorCode::NotLeaderOrFollower),
                    partition(3, ErrorCode::NotLeaderOrFollower),
                    partition(4, ErrorCode::RequestTimedOut),
                ],
            }],
        };
        let frame = pending
            .respond_with_leaders(
                Some(m::Response::Produce(answer)),
                &cluster_listener(),
                &leaders_of_orders,
            )
            .unwrap()
            .unwrap();
        let r: k::ProduceResponse = response(ApiKey::Produce, version, frame);
        let leaders: Vec<(i32, i32)> = r.responses[0]
            .partition_responses
            .iter()
            .map(|p| (p.current_leader.leader_id.0, p.current_leader.leader_epoch))
            .collect();
        let endpoints: Vec<(i32, &str, i32)> = r
            .node_endpoints
            .iter()
            .map(|e| (e.node_id.0, e.host.as_str(), e.port))
            .collect();
        if version >= 10 {
            assert_eq!(leaders, [(2, 7), (2, 7), (-1, -1), (-1, -1), (-1, -1)]);
            assert_eq!(endpoints, [(2, "kafka-2.example", 9092)]);
            assert_eq!(r.node_endpoints[0].rack.as_deref(), Some("b"));
        } else {
            assert_eq!(leaders, [(-1, -1); 5]);
            assert!(endpoints.is_empty());
        }
    }
}

/// KIP-951 for Fetch: a partition refused as not this broker's, or for an old
/// leader epoch, names its current leader from version 12, and the answer that
/// leader's Kafka listener from version 16 (the first version clients read it
/// in); a leader without a listener, or unknown, is not named, and other errors
/// name nobody.
#[test]
fn a_fetch_refused_for_leadership_names_the_current_leader() {
    for version in [11, 12, 15, 16, 17] {
        let request = k::FetchRequest::default().with_max_wait_ms(0);
        let (_, pending) = serve(frame_of(ApiKey::Fetch, version, &request));
        let partition = |partition: u32, error: ErrorCode| m::FetchPartitionResponse {
            partition,
            error,
            message: String::new(),
            high_watermark: -1,
            log_start_offset: -1,
            records: Bytes::new(),
            diverging_epoch: None,
        };
        let answer = m::FetchResponse {
            topics: vec![m::FetchTopicResponse {
                name: "orders".into(),
                id: meridian_wire::TopicId([1; 16]),
                partitions: vec![
                    partition(0, ErrorCode::NotLeaderOrFollower),
                    partition(1, ErrorCode::FencedLeaderEpoch),
                    partition(2, ErrorCode::NotLeaderOrFollower),
                    partition(3, ErrorCode::NotLeaderOrFollower),
                    partition(4, ErrorCode::OffsetOutOfRange),
                ],
            }],
        };
        let frame = pending
            .respond_with_leaders(
                Some(m::Response::Fetch(answer)),
                &cluster_listener(),
                &leaders_of_orders,
            )
            .unwrap()
            .unwrap();
        let r: k::FetchResponse = response(ApiKey::Fetch, version, frame);
        let leaders: Vec<(i32, i32)> = r.responses[0]
            .partitions
            .iter()
            .map(|p| (p.current_leader.leader_id.0, p.current_leader.leader_epoch))
            .collect();
        let endpoints: Vec<(i32, &str, i32)> = r
            .node_endpoints
            .iter()
            .map(|e| (e.node_id.0, e.host.as_str(), e.port))
            .collect();
        let none = (-1, -1);
        if version >= 12 {
            assert_eq!(leaders, [(2, 7), (2, 7), none, none, none], "{version}");
        } else {
            assert_eq!(leaders, [none; 5]);
        }
        if version >= 16 {
            assert_eq!(endpoints, [(2, "kafka-2.example", 9092)]);
            assert_eq!(r.node_endpoints[0].rack.as_deref(), Some("b"));
        } else {
            assert!(endpoints.is_empty());
        }
    }
}

/// Brokers 1 and 2 of a cluster have Kafka listeners; broker 3 has none.
fn cluster_listener() -> Listener {
    let kafka = |id: u32, rack: &str| KafkaBroker {
        id,
        host: format!("kafka-{id}.example"),
        port: 9090 + id as u16,
        rack: Some(rack.into()),
    };
    Listener {
        brokers: vec![kafka(1, "a"), kafka(2, "b")],
        ..listener()
    }
}

/// A cluster's Metadata answer with `topics`: brokers 1 to 3, broker 2 the
/// controller.
fn cluster_metadata(topics: Vec<m::TopicMetadata>) -> m::MetadataResponse {
    let info = |broker_id: u32| m::BrokerInfo {
        broker_id,
        host: "127.0.0.1".into(),
        port: 7000 + broker_id as u16,
    };
    m::MetadataResponse {
        brokers: vec![info(1), info(2), info(3)],
        controller_id: 2,
        topics,
    }
}

/// The brokers of [`cluster_metadata`] a Kafka client is told of, at their Kafka
/// listeners in [`cluster_listener`] (id, host, port, rack).
const CLUSTER_KAFKA_BROKERS: [(i32, &str, i32, Option<&str>); 2] = [
    (1, "kafka-1.example", 9091, Some("a")),
    (2, "kafka-2.example", 9092, Some("b")),
];

#[test]
fn in_a_cluster_metadata_names_each_brokers_kafka_listener() {
    let asked = k::MetadataRequest::default().with_topics(None);
    let (_, pending) = serve(frame_of(ApiKey::Metadata, 12, &asked));
    assert!(pending.names_brokers());
    let partition = |partition: u32, leader: u32| m::PartitionMetadata {
        partition,
        error: ErrorCode::None,
        leader,
        leader_epoch: 1,
        replicas: vec![1, 2, 3],
        isr: vec![1, 2, 3],
    };
    let answer = cluster_metadata(vec![m::TopicMetadata {
        name: "orders".into(),
        id: ORDERS_ID,
        error: ErrorCode::None,
        message: String::new(),
        partitions: vec![partition(0, 1), partition(1, 2), partition(2, 3)],
    }]);
    let frame = pending
        .respond(Some(m::Response::Metadata(answer)), &cluster_listener())
        .unwrap()
        .unwrap();
    let r: k::MetadataResponse = response(ApiKey::Metadata, 12, frame);
    let brokers: Vec<(i32, &str, i32, Option<&str>)> = r
        .brokers
        .iter()
        .map(|b| (b.node_id.0, &*b.host, b.port, b.rack.as_deref()))
        .collect();
    // Broker 3 has no Kafka listener: not named, so the partition it leads has no
    // leader a Kafka client can reach (it retries until another leads).
    assert_eq!(brokers, CLUSTER_KAFKA_BROKERS);
    let leaders: Vec<i32> = r.topics[0]
        .partitions
        .iter()
        .map(|p| p.leader_id.0)
        .collect();
    assert_eq!(leaders, [1, 2, 3]);
    assert_eq!(r.controller_id, BrokerId(2));
}

/// DescribeCluster (librdkafka's and Java's `describeCluster`) names the brokers
/// Metadata names, at their Kafka listeners, and the controller; it asks the broker
/// about no topic. Asked for controller endpoints, it says this is a broker's.
#[test]
fn describe_cluster_names_the_brokers_at_their_kafka_listeners() {
    for version in 0..=2 {
        let asked = k::DescribeClusterRequest::default();
        let (request, pending) = serve(frame_of(ApiKey::DescribeCluster, version, &asked));
        assert_eq!(
            request,
            m::Request::Metadata(m::MetadataRequest {
                topics: Some(Vec::new())
            })
        );
        assert!(pending.names_brokers());
        let frame = pending
            .respond(
                Some(m::Response::Metadata(cluster_metadata(Vec::new()))),
                &cluster_listener(),
            )
            .unwrap()
            .unwrap();
        let r: k::DescribeClusterResponse = response(ApiKey::DescribeCluster, version, frame);
        assert_eq!(r.error_code, 0);
        assert_eq!(&*r.cluster_id, "meridian-test");
        assert_eq!(r.controller_id, BrokerId(2));
        let brokers: Vec<(i32, &str, i32, Option<&str>)> = r
            .brokers
            .iter()
            .map(|b| (b.broker_id.0, &*b.host, b.port, b.rack.as_deref()))
            .collect();
        assert_eq!(brokers, CLUSTER_KAFKA_BROKERS);
        assert_eq!(r.cluster_authorized_operations, i32::MIN);
    }
    let controllers = k::DescribeClusterRequest::default().with_endpoint_type(2);
    let r: k::DescribeClusterResponse = response(
        ApiKey::DescribeCluster,
        1,
        reply(frame_of(ApiKey::DescribeCluster, 1, &controllers)),
    );
    assert_eq!(r.error_code, ResponseError::MismatchedEndpointType.code());
    assert!(r.brokers.is_empty());
}

/// Kafka's `kafka-cluster unregister --id N` (`Admin::unregisterBroker`): served as
/// Meridian's own UnregisterBroker, the controller's refusal passed on with its
/// code and words; a negative id is answered at once.
#[test]
fn unregister_broker_is_meridians_own() {
    use meridian_wire::describe_cluster::{UnregisterBrokerRequest, UnregisterBrokerResponse};
    let asked = k::UnregisterBrokerRequest::default().with_broker_id(BrokerId(4));
    let (request, pending) = serve(frame_of(ApiKey::UnregisterBroker, 0, &asked));
    assert_eq!(
        request,
        m::Request::UnregisterBroker(UnregisterBrokerRequest { broker_id: 4 })
    );
    let frame = answered(
        pending,
        m::Response::UnregisterBroker(UnregisterBrokerResponse {
            error: ErrorCode::InvalidRequest,
            message: "broker 4 is running".into(),
        }),
    );
    let r: k::UnregisterBrokerResponse = response(ApiKey::UnregisterBroker, 0, frame);
    assert_eq!(r.error_code, ResponseError::InvalidRequest.code());
    assert_eq!(r.error_message.as_deref(), Some("broker 4 is running"));

    let (_, pending) = serve(frame_of(ApiKey::UnregisterBroker, 0, &asked));
    let frame = answered(
        pending,
        m::Response::UnregisterBroker(UnregisterBrokerResponse {
            error: ErrorCode::None,
            message: String::new(),
        }),
    );
    let r: k::UnregisterBrokerResponse = response(ApiKey::UnregisterBroker, 0, frame);
    assert_eq!((r.error_code, r.error_message), (0, None));

    let negative = k::UnregisterBrokerRequest::default().with_broker_id(BrokerId(-1));
    let r: k::UnregisterBrokerResponse = response(
        ApiKey::UnregisterBroker,
        0,
        reply(frame_of(ApiKey::UnregisterBroker, 0, &negative)),
    );
    assert_eq!(r.error_code, ResponseError::BrokerIdNotRegistered.code());
    assert!(r.error_message.unwrap().contains("no broker -1"));
}

#[test]
fn in_a_cluster_the_coordinator_is_its_brokers_kafka_listener() {
    let find = k::FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("billing"));
    let at = |coordinator: u32| {
        let (_, pending) = serve(frame_of(ApiKey::FindCoordinator, 3, &find));
        assert!(pending.names_brokers());
        let answer = g::FindCoordinatorResponse {
            error: ErrorCode::None,
            message: String::new(),
            broker_id: coordinator,
            host: "127.0.0.1".into(),
            port: 7000,
        };
        let frame = pending
            .respond(
                Some(m::Response::FindCoordinator(answer)),
                &cluster_listener(),
            )
            .unwrap()
            .unwrap();
        response::<k::FindCoordinatorResponse>(ApiKey::FindCoordinator, 3, frame)
    };
    let r = at(2);
    assert_eq!(
        (r.error_code, r.node_id.0, &*r.host, r.port),
        (0, 2, "kafka-2.example", 9092)
    );
    let r = at(3);
    assert_eq!(r.error_code, ResponseError::CoordinatorNotAvailable.code());
    assert_eq!(
        r.error_message.as_deref(),
        Some("the group's coordinator is broker 3, which has no Kafka listener (kafka_listen)")
    );
    // Only these two answers name brokers.
    let (_, pending) = serve(frame_of(
        ApiKey::Heartbeat,
        4,
        &k::HeartbeatRequest::default().with_group_id(k::GroupId(StrBytes::from_static_str("g"))),
    ));
    assert!(!pending.names_brokers());
}

#[test]
fn create_topics_takes_kafka_defaults_and_refuses_assignments() {
    let asked = k::CreateTopicsRequest::default().with_topics(vec![
        k::create_topics_request::CreatableTopic::default()
            .with_name(topic_name("orders".into()))
            .with_num_partitions(-1)
            .with_replication_factor(-1)
            .with_configs(vec![
                k::create_topics_request::CreatableTopicConfig::default()
                    .with_name(StrBytes::from_static_str("retention.ms"))
                    .with_value(Some(StrBytes::from_static_str("60000"))),
            ]),
        k::create_topics_request::CreatableTopic::default()
            .with_name(topic_name("placed".into()))
            .with_num_partitions(-1)
            .with_replication_factor(-1)
            .with_assignments(vec![
                k::create_topics_request::CreatableReplicaAssignment::default(),
            ]),
    ]);
    let (request, pending) = serve(frame_of(ApiKey::CreateTopics, 7, &asked));
    let m::Request::CreateTopics(c) = request else {
        panic!()
    };
    assert_eq!(c.topics.len(), 1);
    assert_eq!(
        (c.topics[0].partitions, c.topics[0].replication_factor),
        (0, 0)
    );
    assert_eq!(c.topics[0].configs[0].key, "retention.ms");
    let answer = m::CreateTopicsResponse {
        results: vec![m::TopicResult {
            name: "orders".into(),
            error: ErrorCode::None,
            message: String::new(),
        }],
        created: vec![m::CreatedTopic {
            name: "orders".into(),
            id: ORDERS_ID,
            partitions: 3,
            replication_factor: 1,
            configs: vec![
                m::DescribedConfig {
                    key: "retention.ms".into(),
                    value: "60000".into(),
                    is_default: false,
                },
                m::DescribedConfig {
                    key: "cleanup.policy".into(),
                    value: "delete".into(),
                    is_default: true,
                },
            ],
        }],
    };
    let frame = answered(pending, m::Response::CreateTopics(answer));
    let r: k::CreateTopicsResponse = response(ApiKey::CreateTopics, 7, frame);
    assert_eq!(r.topics[0].error_code, 0);
    // The topic as created, defaults resolved, as Java's numPartitions() reads it,
    // with its ID (Java's topicId()).
    assert_eq!(
        (r.topics[0].num_partitions, r.topics[0].replication_factor),
        (3, 1)
    );
    assert_eq!(r.topics[0].topic_id, crate::kafka_topic_id(ORDERS_ID));
    let configs: Vec<(String, String, i8)> = r.topics[0]
        .configs
        .iter()
        .flatten()
        .map(|c| {
            let value = c.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
            (c.name.to_string(), value, c.config_source)
        })
        .collect();
    assert_eq!(
        configs,
        [
            ("retention.ms".to_string(), "60000".to_string(), 1),
            ("cleanup.policy".to_string(), "delete".to_string(), 5),
        ]
    );
    assert_eq!(&*r.topics[1].name.0, "placed");
    assert_eq!(
        r.topics[1].error_code,
        ResponseError::InvalidReplicaAssignment.code()
    );
    // A topic refused has nothing to describe: Kafka's "unknown".
    assert_eq!(
        (r.topics[1].num_partitions, r.topics[1].replication_factor),
        (-1, -1)
    );
}

/// A broker from before CreateTopics described the topics it created (Meridian's
/// version 0) leaves Kafka's answer at "unknown" rather than guessing.
#[test]
fn create_topics_without_a_description_answers_unknown() {
    let asked = k::CreateTopicsRequest::default().with_topics(vec![
        k::create_topics_request::CreatableTopic::default()
            .with_name(topic_name("orders".into()))
            .with_num_partitions(3)
            .with_replication_factor(1),
    ]);
    let (_, pending) = serve(frame_of(ApiKey::CreateTopics, 7, &asked));
    let answer = m::CreateTopicsResponse {
        results: vec![m::TopicResult {
            name: "orders".into(),
            error: ErrorCode::None,
            message: String::new(),
        }],
        created: Vec::new(),
    };
    let frame = answered(pending, m::Response::CreateTopics(answer));
    let r: k::CreateTopicsResponse = response(ApiKey::CreateTopics, 7, frame);
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(
        (r.topics[0].num_partitions, r.topics[0].replication_factor),
        (-1, -1)
    );
}

/// DeleteTopics 6 names each topic by name or by ID (KIP-516): the broker is asked
/// for both, and each answer carries what named the topic; an ID no topic has is
/// `UNKNOWN_TOPIC_ID` with a null name, as Kafka answers.
#[test]
fn delete_topics_by_name_or_id() {
    use k::delete_topics_request::DeleteTopicState;
    let unknown_id = meridian_wire::TopicId([1; 16]);
    let asked = k::DeleteTopicsRequest::default().with_topics(vec![
        DeleteTopicState::default().with_name(Some(topic_name("payments".into()))),
        DeleteTopicState::default().with_topic_id(crate::kafka_topic_id(ORDERS_ID)),
        DeleteTopicState::default().with_topic_id(crate::kafka_topic_id(unknown_id)),
    ]);
    let (request, pending) = serve(frame_of(ApiKey::DeleteTopics, 6, &asked));
    assert_eq!(
        request,
        m::Request::DeleteTopics(m::DeleteTopicsRequest {
            names: vec!["payments".into()],
            ids: vec![ORDERS_ID, unknown_id],
        })
    );
    let by_id = |id, name: &str, error| m::DeletedById {
        id,
        name: name.into(),
        error,
        message: String::new(),
    };
    let answer = m::DeleteTopicsResponse {
        results: vec![m::TopicResult {
            name: "payments".into(),
            error: ErrorCode::None,
            message: String::new(),
        }],
        by_id: vec![
            by_id(ORDERS_ID, "orders", ErrorCode::None),
            by_id(unknown_id, "", ErrorCode::UnknownTopicId),
        ],
    };
    let frame = answered(pending, m::Response::DeleteTopics(answer));
    let r: k::DeleteTopicsResponse = response(ApiKey::DeleteTopics, 6, frame);
    let got: Vec<(Option<&str>, uuid::Uuid, i16)> = (r.responses.iter())
        .map(|t| (t.name.as_ref().map(|n| &*n.0), t.topic_id, t.error_code))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("payments"), uuid::Uuid::nil(), 0),
            (Some("orders"), crate::kafka_topic_id(ORDERS_ID), 0),
            (
                None,
                crate::kafka_topic_id(unknown_id),
                ResponseError::UnknownTopicId.code()
            ),
        ]
    );
    // Before version 6 topics are named only.
    let old = k::DeleteTopicsRequest::default().with_topic_names(vec![topic_name("a".into())]);
    let (request, _) = serve(frame_of(ApiKey::DeleteTopics, 5, &old));
    assert_eq!(
        request,
        m::Request::DeleteTopics(m::DeleteTopicsRequest {
            names: vec!["a".into()],
            ids: Vec::new(),
        })
    );
}

#[test]
fn a_mismatched_answer_is_an_error_not_a_wrong_frame() {
    let (_, pending) = serve(frame_of(
        ApiKey::Metadata,
        9,
        &k::MetadataRequest::default(),
    ));
    let e = pending
        .respond(
            Some(m::Response::DeleteTopics(m::DeleteTopicsResponse {
                results: Vec::new(),
                by_id: Vec::new(),
            })),
            &listener(),
        )
        .unwrap_err();
    assert_eq!(
        e,
        KafkaError::WrongAnswer {
            api: ApiKey::Metadata,
            got: m::ApiKey::DeleteTopics
        }
    );
}

#[test]
fn every_meridian_error_has_a_kafka_code_clients_know() {
    for raw in 0..=u16::from(u8::MAX) {
        let error = ErrorCode::from_u16(raw);
        if error == ErrorCode::Unknown && raw != ErrorCode::Unknown as u16 {
            continue;
        }
        let kafka = code(error);
        assert_eq!(kafka == 0, error.is_ok(), "{error:?}");
        assert!(
            !matches!(
                ResponseError::try_from_code(kafka),
                Some(ResponseError::Unknown(_))
            ),
            "{error:?} -> {kafka}"
        );
    }
}

fn subscription(topics: &[&'static str]) -> Bytes {
    subscription_owning(topics, &[])
}

/// A subscription (version 1) whose member says it owns `owned` partitions of
/// the first of `topics`.
fn subscription_owning(topics: &[&'static str], owned: &[i32]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(1);
    let owned = (!owned.is_empty()).then(|| {
        k::consumer_protocol_subscription::TopicPartition::default()
            .with_topic(TopicName(StrBytes::from_static_str(topics[0])))
            .with_partitions(owned.to_vec())
    });
    k::ConsumerProtocolSubscription::default()
        .with_topics(
            topics
                .iter()
                .map(|t| StrBytes::from_static_str(t))
                .collect(),
        )
        .with_owned_partitions(owned.into_iter().collect())
        .encode(&mut out, 1)
        .unwrap();
    out.freeze()
}

/// The Kafka answer to a JoinGroup the coordinator admitted as `member_id` at
/// `epoch`.
fn joined(pending: Pending, version: i16, member_id: &str, epoch: i32) -> k::JoinGroupResponse {
    let answer = g::JoinGroupResponse {
        error: ErrorCode::None,
        message: String::new(),
        member_id: member_id.into(),
        member_epoch: epoch,
        heartbeat_interval_ms: 3000,
    };
    let frame = answered(pending, m::Response::JoinGroup(answer));
    response(ApiKey::JoinGroup, version, frame)
}

fn join(protocols: &[&'static str], metadata: Bytes) -> k::JoinGroupRequest {
    k::JoinGroupRequest::default()
        .with_group_id(k::GroupId(StrBytes::from_static_str("billing")))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(60_000)
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(
            protocols
                .iter()
                .map(|name| {
                    k::join_group_request::JoinGroupRequestProtocol::default()
                        .with_name(StrBytes::from_static_str(name))
                        .with_metadata(metadata.clone())
                })
                .collect(),
        )
}

#[test]
fn a_member_joins_with_the_first_eager_assignor_it_offers() {
    for version in [0, 5, 7, 9] {
        let asked = join(
            &["cooperative-sticky", "range", "roundrobin"],
            subscription(&["orders", "audit"]),
        );
        let (request, pending) = serve(frame_of(ApiKey::JoinGroup, version, &asked));
        let m::Request::JoinGroup(j) = request else {
            panic!()
        };
        assert_eq!(j.assignor, "range");
        assert_eq!(j.topics, ["orders", "audit"]);
        assert_eq!(j.client_id, "test-client");
        assert_eq!(
            j.rebalance_timeout_ms,
            if version == 0 { 10_000 } else { 60_000 }
        );
        let r = joined(pending, version, "test-client-1", 4);
        assert_eq!(
            (r.error_code, r.generation_id, &*r.member_id),
            (0, 4, "test-client-1")
        );
        // Not the leader: it syncs and is given its partitions.
        assert_ne!(r.leader, r.member_id);
        assert!(r.members.is_empty());
        if version >= 7 {
            assert_eq!(r.protocol_name.as_deref(), Some("range"));
        }
    }
    // KafkaJS's default assignor is round robin under its own name, which the
    // member is answered with.
    let kafkajs = join(&["RoundRobinAssigner"], subscription(&["orders"]));
    let (request, pending) = serve(frame_of(ApiKey::JoinGroup, 5, &kafkajs));
    let m::Request::JoinGroup(j) = request else {
        panic!()
    };
    assert_eq!(j.assignor, "roundrobin");
    let r = joined(pending, 5, "kafkajs-1", 1);
    assert_eq!(r.protocol_name.as_deref(), Some("RoundRobinAssigner"));
    // Only assignors Meridian does not run (Kafka Streams', the eager `sticky`):
    // refused, with the reason for the log.
    let unknown = join(&["stream", "sticky"], subscription(&["orders"]));
    match decode(frame_of(ApiKey::JoinGroup, 7, &unknown)).unwrap() {
        Step::Refused { reply, reason } => {
            let r: k::JoinGroupResponse = response(ApiKey::JoinGroup, 7, reply);
            assert_eq!(
                r.error_code,
                ResponseError::InconsistentGroupProtocol.code()
            );
            assert!(
                reason.contains("stream") && reason.contains("cooperative-sticky"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A subscription that does not parse is malformed.
    let garbled = join(&["range"], Bytes::from_static(&[0, 1, 0xff]));
    assert!(matches!(
        decode(frame_of(ApiKey::JoinGroup, 7, &garbled)),
        Err(KafkaError::Malformed {
            api: ApiKey::JoinGroup,
            ..
        })
    ));
}

/// A `cooperative-sticky` member keeps its partitions across a rejoin: what its
/// JoinGroup subscription says it owns, the connection's session hands to the
/// coordinator with its SyncGroup; an eager member, or one that joined elsewhere,
/// owns nothing there.
#[test]
fn a_cooperative_members_sync_reports_what_it_owned_when_it_joined() {
    let owning = |partitions: Vec<i32>| subscription_owning(&["orders"], &partitions);
    let sync = |member: &'static str| {
        k::SyncGroupRequest::default()
            .with_group_id(k::GroupId(StrBytes::from_static_str("billing")))
            .with_generation_id(4)
            .with_member_id(StrBytes::from_static_str(member))
    };
    let owned_at_sync = |session: &mut Session, member: &'static str| match decode_in(
        frame_of(ApiKey::SyncGroup, 5, &sync(member)),
        session,
    )
    .unwrap()
    {
        Step::Serve(request, _) => match *request {
            m::Request::SyncGroup(s) => s.owned,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let mut session = Session::default();
    // Only cooperative-sticky offered: the member is served with it.
    let rejoin = join(&["cooperative-sticky"], owning(vec![2, 0]))
        .with_member_id(StrBytes::from_static_str("m-1"));
    match decode_in(frame_of(ApiKey::JoinGroup, 7, &rejoin), &mut session).unwrap() {
        Step::Serve(request, _) => match *request {
            m::Request::JoinGroup(j) => assert_eq!(j.assignor, "cooperative-sticky"),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let expected = vec![g::TopicPartitions {
        topic: "orders".into(),
        partitions: vec![2, 0],
    }];
    assert_eq!(owned_at_sync(&mut session, "m-1"), expected);
    // Another member on the connection, or the same on a new one, owns nothing here.
    assert!(owned_at_sync(&mut session, "m-2").is_empty());
    assert!(owned_at_sync(&mut Session::default(), "m-1").is_empty());
    // After revoking partition 2 it rejoins owning only 0.
    let after_revoke = join(&["cooperative-sticky"], owning(vec![0]))
        .with_member_id(StrBytes::from_static_str("m-1"));
    decode_in(frame_of(ApiKey::JoinGroup, 7, &after_revoke), &mut session).unwrap();
    assert_eq!(owned_at_sync(&mut session, "m-1")[0].partitions, [0]);
    // An eager member joining on the same connection owns nothing at its sync.
    let eager = join(&["range", "cooperative-sticky"], owning(vec![1]))
        .with_member_id(StrBytes::from_static_str("m-3"));
    decode_in(frame_of(ApiKey::JoinGroup, 7, &eager), &mut session).unwrap();
    assert!(owned_at_sync(&mut session, "m-3").is_empty());
    // The session remembers a bounded number of members, the newest.
    for i in 0..SESSION_MEMBERS_MAX + 5 {
        let member = StrBytes::from_string(format!("many-{i}"));
        let joined = join(&["cooperative-sticky"], owning(vec![i as i32])).with_member_id(member);
        decode_in(frame_of(ApiKey::JoinGroup, 7, &joined), &mut session).unwrap();
    }
    assert_eq!(session.owned.len(), SESSION_MEMBERS_MAX);
    assert!(
        owned_at_sync(&mut session, "m-1").is_empty(),
        "the oldest is forgotten"
    );
    // The bound is the broker's `kafka_cooperative_members_max`.
    let mut small = Session::new(2);
    for (i, member) in ["a", "b", "c"].into_iter().enumerate() {
        let joined = join(&["cooperative-sticky"], owning(vec![i as i32]))
            .with_member_id(StrBytes::from_static_str(member));
        decode_in(frame_of(ApiKey::JoinGroup, 7, &joined), &mut small).unwrap();
    }
    assert_eq!(small.owned.len(), 2);
    assert!(owned_at_sync(&mut small, "a").is_empty());
    assert_eq!(owned_at_sync(&mut small, "c")[0].partitions, [2]);
}

#[test]
fn sync_hands_out_the_coordinators_assignment_and_heartbeats_call_rebalances() {
    let sync = k::SyncGroupRequest::default()
        .with_group_id(k::GroupId(StrBytes::from_static_str("billing")))
        .with_generation_id(4)
        .with_member_id(StrBytes::from_static_str("m-1"))
        .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
        .with_protocol_name(Some(StrBytes::from_static_str("range")));
    let (request, pending) = serve(frame_of(ApiKey::SyncGroup, 5, &sync));
    let m::Request::SyncGroup(s) = request else {
        panic!()
    };
    assert!(
        s.owned.is_empty(),
        "an eager member owns nothing when it syncs"
    );
    let answer = g::SyncGroupResponse {
        error: ErrorCode::None,
        message: String::new(),
        member_epoch: 4,
        assignment: vec![g::TopicPartitions {
            topic: "orders".into(),
            partitions: vec![0, 2],
        }],
        pending: false,
    };
    let frame = answered(pending, m::Response::SyncGroup(answer));
    let r: k::SyncGroupResponse = response(ApiKey::SyncGroup, 5, frame);
    assert_eq!(r.protocol_name.as_deref(), Some("range"));
    let mut bytes = r.assignment.clone();
    assert_eq!(bytes.get_i16(), 0);
    let assigned = k::ConsumerProtocolAssignment::decode(&mut bytes, 0).unwrap();
    assert_eq!(&*assigned.assigned_partitions[0].topic.0, "orders");
    assert_eq!(assigned.assigned_partitions[0].partitions, [0, 2]);

    let beat = k::HeartbeatRequest::default()
        .with_group_id(k::GroupId(StrBytes::from_static_str("billing")))
        .with_generation_id(4)
        .with_member_id(StrBytes::from_static_str("m-1"));
    for (sync_needed, error, expected) in [
        (false, ErrorCode::None, 0),
        (
            true,
            ErrorCode::None,
            ResponseError::RebalanceInProgress.code(),
        ),
        (
            false,
            ErrorCode::UnknownMemberId,
            ResponseError::UnknownMemberId.code(),
        ),
    ] {
        let (request, pending) = serve(frame_of(ApiKey::Heartbeat, 4, &beat));
        let m::Request::Heartbeat(h) = request else {
            panic!()
        };
        assert_eq!((h.member_epoch, h.max_wait_ms), (4, 0));
        let answer = g::HeartbeatResponse {
            error,
            message: String::new(),
            sync_needed,
        };
        let frame = answered(pending, m::Response::Heartbeat(answer));
        let r: k::HeartbeatResponse = response(ApiKey::Heartbeat, 4, frame);
        assert_eq!(r.error_code, expected);
    }
}

#[test]
fn a_member_leaves_by_id_in_every_version() {
    for version in [0, 2, 3, 5] {
        let mut leave = k::LeaveGroupRequest::default()
            .with_group_id(k::GroupId(StrBytes::from_static_str("billing")));
        if version >= 3 {
            leave = leave.with_members(vec![k::leave_group_request::MemberIdentity::default()
                .with_member_id(StrBytes::from_static_str("m-1"))]);
        } else {
            leave = leave.with_member_id(StrBytes::from_static_str("m-1"));
        }
        let (request, pending) = serve(frame_of(ApiKey::LeaveGroup, version, &leave));
        let m::Request::LeaveGroup(l) = request else {
            panic!()
        };
        assert_eq!(l.member_id, "m-1");
        let answer = g::LeaveGroupResponse {
            error: ErrorCode::None,
            message: String::new(),
        };
        let frame = answered(pending, m::Response::LeaveGroup(answer));
        let r: k::LeaveGroupResponse = response(ApiKey::LeaveGroup, version, frame);
        assert_eq!(r.error_code, 0);
        if version >= 3 {
            assert_eq!(&*r.members[0].member_id, "m-1");
        }
    }
}

#[test]
fn groups_are_listed_and_described_for_kafkas_group_tools() {
    let listing = |states: Vec<StrBytes>| {
        let asked = k::ListGroupsRequest::default().with_states_filter(states);
        let (request, pending) = serve(frame_of(ApiKey::ListGroups, 4, &asked));
        assert_eq!(request, m::Request::ListGroups(g::ListGroupsRequest {}));
        let answer = g::ListGroupsResponse {
            groups: vec![
                g::GroupListing {
                    group_id: "billing".into(),
                    state: "Stable".into(),
                },
                g::GroupListing {
                    group_id: "audit".into(),
                    state: "Reconciling".into(),
                },
            ],
        };
        let frame = answered(pending, m::Response::ListGroups(answer));
        let r: k::ListGroupsResponse = response(ApiKey::ListGroups, 4, frame);
        r.groups
            .iter()
            .map(|l| (l.group_id.0.to_string(), l.group_state.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listing(Vec::new()),
        [
            ("billing".into(), "Stable".into()),
            ("audit".into(), "PreparingRebalance".into())
        ]
    );
    assert_eq!(
        listing(vec![StrBytes::from_static_str("PreparingRebalance")]),
        [("audit".to_string(), "PreparingRebalance".to_string())]
    );

    let asked = k::DescribeGroupsRequest::default()
        .with_groups(vec![k::GroupId(StrBytes::from_static_str("billing"))]);
    let (request, pending) = serve(frame_of(ApiKey::DescribeGroups, 5, &asked));
    assert_eq!(
        request,
        m::Request::DescribeGroups(g::DescribeGroupsRequest {
            group_ids: vec!["billing".into()]
        })
    );
    let answer = g::DescribeGroupsResponse {
        groups: vec![g::GroupDescription {
            group_id: "billing".into(),
            error: ErrorCode::None,
            message: String::new(),
            state: "Stable".into(),
            assignor: "range".into(),
            epoch: 3,
            members: vec![g::GroupMember {
                member_id: "m-1".into(),
                instance_id: None,
                client_id: "app".into(),
                client_host: "127.0.0.1".into(),
                member_epoch: 3,
                topics: vec!["orders".into()],
                owned: vec![g::TopicPartitions {
                    topic: "orders".into(),
                    partitions: vec![1],
                }],
                target: vec![g::TopicPartitions {
                    topic: "orders".into(),
                    partitions: vec![1],
                }],
            }],
        }],
    };
    let frame = answered(pending, m::Response::DescribeGroups(answer));
    let r: k::DescribeGroupsResponse = response(ApiKey::DescribeGroups, 5, frame);
    let group = &r.groups[0];
    assert_eq!(
        (
            &*group.group_state,
            &*group.protocol_type,
            &*group.protocol_data
        ),
        ("Stable", "consumer", "range")
    );
    let member = &group.members[0];
    assert_eq!((&*member.member_id, &*member.client_id), ("m-1", "app"));
    let mut metadata = member.member_metadata.clone();
    let version = metadata.get_i16();
    let subscription = k::ConsumerProtocolSubscription::decode(&mut metadata, version).unwrap();
    assert_eq!(&*subscription.topics[0], "orders");
    let mut owned = member.member_assignment.clone();
    let version = owned.get_i16();
    let owned = k::ConsumerProtocolAssignment::decode(&mut owned, version).unwrap();
    assert_eq!(owned.assigned_partitions[0].partitions, [1]);
}

/// Every DescribeGroups version served encodes what it has room for (KafkaJS asks
/// with version 2, which has no instance ids and no error messages), and a group
/// that does not exist is `Dead` without an error before version 6, as Kafka's
/// coordinator says, and GROUP_ID_NOT_FOUND from it.
#[test]
fn groups_are_described_at_every_version_served() {
    let member = g::GroupMember {
        member_id: "m-1".into(),
        instance_id: Some("pod-1".into()),
        client_id: "app".into(),
        client_host: "127.0.0.1".into(),
        member_epoch: 3,
        topics: vec!["orders".into()],
        owned: Vec::new(),
        target: Vec::new(),
    };
    let group = |id: &str, error: ErrorCode, members: Vec<g::GroupMember>| g::GroupDescription {
        group_id: id.into(),
        error,
        message: if error.is_ok() {
            String::new()
        } else {
            format!("about {id}")
        },
        state: if members.is_empty() {
            "Empty"
        } else {
            "Stable"
        }
        .into(),
        assignor: "range".into(),
        epoch: 3,
        members,
    };
    let (_, min, max) = *APIS
        .iter()
        .find(|(api, _, _)| *api == ApiKey::DescribeGroups)
        .unwrap();
    for version in min..=max {
        let asked = k::DescribeGroupsRequest::default().with_groups(vec![
            k::GroupId(StrBytes::from_static_str("billing")),
            k::GroupId(StrBytes::from_static_str("nobody")),
        ]);
        let (_, pending) = serve(frame_of(ApiKey::DescribeGroups, version, &asked));
        let answer = g::DescribeGroupsResponse {
            groups: vec![
                group("billing", ErrorCode::None, vec![member.clone()]),
                group("nobody", ErrorCode::GroupIdNotFound, Vec::new()),
            ],
        };
        let frame = pending
            .respond(Some(m::Response::DescribeGroups(answer)), &listener())
            .unwrap_or_else(|e| panic!("version {version}: {e}"))
            .unwrap();
        let r: k::DescribeGroupsResponse = response(ApiKey::DescribeGroups, version, frame);
        let instance = r.groups[0].members[0].group_instance_id.as_deref();
        assert_eq!(
            instance,
            (version >= 4).then_some("pod-1"),
            "version {version}"
        );
        let nobody = &r.groups[1];
        if version < 6 {
            assert_eq!((nobody.error_code, &*nobody.group_state), (0, "Dead"));
        } else {
            assert_eq!(nobody.error_code, ResponseError::GroupIdNotFound.code());
            assert_eq!(nobody.error_message.as_deref(), Some("about nobody"));
        }
    }
}

fn config_resource(
    resource_type: i8,
    name: &'static str,
) -> k::describe_configs_request::DescribeConfigsResource {
    k::describe_configs_request::DescribeConfigsResource::default()
        .with_resource_type(resource_type)
        .with_resource_name(StrBytes::from_static_str(name))
}

/// A topic's setting without its own value takes the broker's behind it: its
/// source is `STATIC_BROKER_CONFIG` when the broker's configuration sets that, and
/// asked for synonyms (as `kafka-configs --describe` asks) the answer lists where
/// each value could come from, the topic's own first, as Kafka does.
#[test]
fn describe_configs_names_each_settings_source_and_synonyms() {
    let listener = Listener {
        settings: vec![
            broker_setting("log.cleanup.policy", "delete", true),
            broker_setting("log.retention.bytes", "-1", true),
            broker_setting("log.retention.ms", "3600000", false),
            broker_setting("num.partitions", "3", false),
        ]
        .into(),
        ..listener()
    };
    let described = orders_described(&[
        ("cleanup.policy", "delete", true),
        ("retention.bytes", "1000", false),
        ("retention.ms", "3600000", true),
    ]);
    // `asked` of topic `orders` at `version`, the broker answering with `described`.
    let describe_orders = |asked: k::DescribeConfigsRequest, version| {
        let asked = asked.with_resources(vec![config_resource(2, "orders")]);
        let (_, pending) = serve(frame_of(ApiKey::DescribeConfigs, version, &asked));
        let answer = m::DescribeTopicsResponse {
            topics: vec![described.clone()],
        };
        let frame = pending
            .respond(Some(m::Response::DescribeTopics(answer)), &listener)
            .unwrap()
            .unwrap();
        response::<k::DescribeConfigsResponse>(ApiKey::DescribeConfigs, version, frame)
    };
    type Synonym = (String, String, i8);
    let summary = |r: &k::DescribeConfigsResponse| -> Vec<(String, i8, Vec<Synonym>)> {
        r.results[0]
            .configs
            .iter()
            .map(|c| {
                let synonyms = c
                    .synonyms
                    .iter()
                    .map(|s| {
                        (
                            s.name.to_string(),
                            s.value.as_deref().unwrap().into(),
                            s.source,
                        )
                    })
                    .collect();
                (c.name.to_string(), c.config_source, synonyms)
            })
            .collect()
    };
    let named = |name: &str, value: &str, source| (name.to_string(), value.to_string(), source);
    for synonyms in [false, true] {
        let asked = k::DescribeConfigsRequest::default().with_include_synonyms(synonyms);
        let r = describe_orders(asked, 4);
        let listed = |list: Vec<Synonym>| if synonyms { list } else { Vec::new() };
        assert_eq!(
            summary(&r),
            [
                (
                    "cleanup.policy".to_string(),
                    5,
                    listed(vec![named("log.cleanup.policy", "delete", 5)])
                ),
                (
                    "retention.bytes".to_string(),
                    1,
                    listed(vec![
                        named("retention.bytes", "1000", 1),
                        named("log.retention.bytes", "-1", 5)
                    ])
                ),
                (
                    "retention.ms".to_string(),
                    4,
                    listed(vec![named("log.retention.ms", "3600000", 4)])
                ),
            ],
            "include_synonyms {synonyms}"
        );
    }
    // From version 3 each topic setting has its type, and asked for, what it does;
    // at version 1 neither.
    for (version, documentation) in [(3, true), (4, false), (1, false)] {
        let asked = k::DescribeConfigsRequest::default().with_include_documentation(documentation);
        let r = describe_orders(asked, version);
        let typed: Vec<(&str, i8, bool)> = (config_types(&r).into_iter())
            .map(|(name, kind, doc)| (name, kind, doc.is_some()))
            .collect();
        let (documented, typed_from) = (documentation && version >= 3, version >= 3);
        let kind = |k: i8| if typed_from { k } else { 0 };
        assert_eq!(
            typed,
            [
                ("cleanup.policy", kind(7), documented),
                ("retention.bytes", kind(5), documented),
                ("retention.ms", kind(5), documented),
            ],
            "version {version}, include_documentation {documentation}"
        );
    }
    // A broker's setting is its own synonym, from its configuration or the default.
    let asked = k::DescribeConfigsRequest::default()
        .with_include_synonyms(true)
        .with_resources(vec![config_resource(4, "1").with_configuration_keys(Some(
            vec![StrBytes::from_static_str("num.partitions")],
        ))]);
    let (_, pending) = serve(frame_of(ApiKey::DescribeConfigs, 4, &asked));
    let cluster = cluster_described();
    let frame = pending
        .respond(Some(m::Response::DescribeCluster(cluster)), &listener)
        .unwrap()
        .unwrap();
    let r: k::DescribeConfigsResponse = response(ApiKey::DescribeConfigs, 4, frame);
    assert_eq!(
        summary(&r),
        [(
            "num.partitions".to_string(),
            4,
            vec![named("num.partitions", "3", 4)]
        )]
    );
}

/// Each setting of the first resource of a DescribeConfigs answer: its name, type
/// and documentation (none for the empty one an answer before version 3 decodes
/// as).
fn config_types(r: &k::DescribeConfigsResponse) -> Vec<(&str, i8, Option<&str>)> {
    let configs = r.results[0].configs.iter();
    configs
        .map(|c| {
            let doc = c.documentation.as_deref().filter(|d| !d.is_empty());
            (&*c.name, c.config_type, doc)
        })
        .collect()
}

/// From version 3 a broker's setting has its type: a topic setting's default
/// (under Kafka's name or Meridian's) the topic setting's, with its documentation
/// when asked; the rest their type in the configuration, undocumented.
#[test]
fn broker_settings_have_their_type_and_topic_defaults_their_documentation() {
    let setting = |name: &str, config_type| BrokerSetting {
        config_type,
        ..broker_setting(name, "x", true)
    };
    let listener = Listener {
        settings: vec![
            setting("log.cleanup.policy", config_type::STRING),
            setting("max_inflight_requests", config_type::LONG),
            setting("topic_defaults.cleanup_policy", config_type::STRING),
            setting("auto_create_topics", config_type::BOOLEAN),
        ]
        .into(),
        ..listener()
    };
    // Version 2 cannot ask for documentation.
    for (version, documentation) in [(4, true), (3, false), (2, false)] {
        let asked = k::DescribeConfigsRequest::default()
            .with_include_documentation(documentation)
            .with_resources(vec![config_resource(4, "1")]);
        let (_, pending) = serve(frame_of(ApiKey::DescribeConfigs, version, &asked));
        let frame = pending
            .respond(
                Some(m::Response::DescribeCluster(cluster_described())),
                &listener,
            )
            .unwrap()
            .unwrap();
        let r: k::DescribeConfigsResponse = response(ApiKey::DescribeConfigs, version, frame);
        let got = config_types(&r);
        let typed = |t: i8| if version >= 3 { t } else { 0 };
        let doc = (documentation && version >= 3).then_some(
            "The default of the topic setting cleanup.policy: delete: retention deletes \
             old segments; compact: the cleaner keeps each key's latest record; \
             compact,delete: both",
        );
        assert_eq!(
            got,
            [
                ("log.cleanup.policy", typed(config_type::LIST), doc),
                ("max_inflight_requests", typed(config_type::LONG), None),
                (
                    "topic_defaults.cleanup_policy",
                    typed(config_type::LIST),
                    doc
                ),
                ("auto_create_topics", typed(config_type::BOOLEAN), None),
            ],
            "version {version}, include_documentation {documentation}"
        );
    }
}

#[test]
fn describe_configs_reads_topic_and_broker_settings() {
    let asked = k::DescribeConfigsRequest::default().with_resources(vec![
        config_resource(2, "orders"),
        config_resource(4, "1"),
        config_resource(2, "ghost"),
        config_resource(2, "orders")
            .with_configuration_keys(Some(vec![StrBytes::from_static_str("retention.ms")])),
    ]);
    for version in [1, 4] {
        let (request, pending) = serve(frame_of(ApiKey::DescribeConfigs, version, &asked));
        assert_eq!(
            request,
            m::Request::DescribeTopics(m::DescribeTopicsRequest {
                names: vec!["orders".into(), "ghost".into(), "orders".into()]
            })
        );
        let described = orders_described(&[
            ("cleanup.policy", "delete", true),
            ("retention.ms", "3600000", false),
        ]);
        let answer = m::DescribeTopicsResponse {
            topics: vec![
                described.clone(),
                m::TopicDescription {
                    name: "ghost".into(),
                    id: meridian_wire::TopicId::NONE,
                    error: ErrorCode::UnknownTopic,
                    message: "no topic ghost".into(),
                    replication_factor: 0,
                    configs: Vec::new(),
                    partitions: Vec::new(),
                    plugins: Vec::new(),
                },
                described,
            ],
        };
        let frame = answered(pending, m::Response::DescribeTopics(answer));
        let r: k::DescribeConfigsResponse = response(ApiKey::DescribeConfigs, version, frame);
        type Config<'a> = (&'a str, &'a str, i8);
        let summary: Vec<(i16, i8, &str, Vec<Config<'_>>)> = r
            .results
            .iter()
            .map(|res| {
                (
                    res.error_code,
                    res.resource_type,
                    &*res.resource_name,
                    res.configs
                        .iter()
                        .map(|c| (&*c.name, c.value.as_deref().unwrap(), c.config_source))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    0,
                    2,
                    "orders",
                    vec![
                        ("cleanup.policy", "delete", 5),
                        ("retention.ms", "3600000", 1)
                    ]
                ),
                (ResponseError::InvalidRequest.code(), 4, "1", vec![]),
                (
                    ResponseError::UnknownTopicOrPartition.code(),
                    2,
                    "ghost",
                    vec![]
                ),
                (0, 2, "orders", vec![("retention.ms", "3600000", 1)]),
            ]
        );
        assert_eq!(
            r.results[2].error_message.as_deref(),
            Some("no topic ghost")
        );
    }
    // Only brokers asked about: the broker is asked whether this client may
    // describe the cluster, and the settings are the listener's (read-only);
    // another broker's, and broker loggers, are refused.
    let brokers = k::DescribeConfigsRequest::default().with_resources(vec![
        config_resource(4, "1"),
        config_resource(4, "")
            .with_configuration_keys(Some(vec![StrBytes::from_static_str("num.partitions")])),
        config_resource(4, "2"),
        config_resource(8, "1"),
    ]);
    let refused = ResponseError::InvalidRequest.code();
    let codes = |r: &k::DescribeConfigsResponse| -> Vec<(i8, String, i16)> {
        r.results
            .iter()
            .map(|res| {
                (
                    res.resource_type,
                    res.resource_name.to_string(),
                    res.error_code,
                )
            })
            .collect()
    };
    let (request, pending) = serve(frame_of(ApiKey::DescribeConfigs, 4, &brokers));
    assert_eq!(request, m::Request::DescribeCluster);
    let allowed = cluster_described();
    let frame = answered(pending, m::Response::DescribeCluster(allowed));
    let r: k::DescribeConfigsResponse = response(ApiKey::DescribeConfigs, 4, frame);
    assert_eq!(
        codes(&r),
        [
            (4, "1".into(), 0),
            (4, "".into(), 0),
            (4, "2".into(), refused),
            (8, "1".into(), refused)
        ]
    );
    let settings: Vec<(&str, Option<&str>, i8, bool)> = r.results[0]
        .configs
        .iter()
        .map(|c| (&*c.name, c.value.as_deref(), c.config_source, c.read_only))
        .collect();
    assert_eq!(
        settings,
        [
            ("log.retention.ms", Some("604800000"), 5, true),
            ("num.partitions", Some("3"), 4, true)
        ]
    );
    assert_eq!(r.results[1].configs.len(), 1);
    assert!(r.results[2]
        .error_message
        .as_deref()
        .unwrap()
        .contains("its own listener"));
    // A client `acl_file` does not let describe the cluster reads no settings.
    let (request, pending) = serve(frame_of(ApiKey::DescribeConfigs, 4, &brokers));
    let denied = refusal(
        &request,
        ErrorCode::ClusterAuthorizationFailed,
        "not allowed",
    )
    .unwrap();
    let r: k::DescribeConfigsResponse =
        response(ApiKey::DescribeConfigs, 4, answered(pending, denied));
    let authorization = ResponseError::ClusterAuthorizationFailed.code();
    assert_eq!(
        codes(&r)[..2],
        [
            (4, "1".into(), authorization),
            (4, "".into(), authorization)
        ]
    );
    assert!(r.results.iter().all(|res| res.configs.is_empty()));
    // Only a broker logger: answered without the broker.
    let loggers =
        k::DescribeConfigsRequest::default().with_resources(vec![config_resource(8, "1")]);
    let r: k::DescribeConfigsResponse = response(
        ApiKey::DescribeConfigs,
        4,
        reply(frame_of(ApiKey::DescribeConfigs, 4, &loggers)),
    );
    assert_eq!(codes(&r), [(8, "1".into(), refused)]);
}

#[test]
fn incremental_alter_configs_sets_and_deletes_topic_settings() {
    use k::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
    let change = |name: &'static str, op: i8, value: Option<&'static str>| {
        AlterableConfig::default()
            .with_name(StrBytes::from_static_str(name))
            .with_config_operation(op)
            .with_value(value.map(StrBytes::from_static_str))
    };
    let resource = |resource_type: i8, name: &'static str, configs| {
        AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(StrBytes::from_static_str(name))
            .with_configs(configs)
    };
    let asked = k::IncrementalAlterConfigsRequest::default()
        .with_validate_only(true)
        .with_resources(vec![
            resource(
                2,
                "orders",
                vec![
                    change("retention.ms", 0, Some("1000")),
                    change("segment.ms", 1, None),
                ],
            ),
            resource(
                2,
                "listy",
                vec![change("cleanup.policy", 2, Some("compact"))],
            ),
            resource(4, "1", vec![change("log.retention.ms", 0, Some("1"))]),
        ]);
    let (request, pending) = serve(frame_of(ApiKey::IncrementalAlterConfigs, 1, &asked));
    assert_eq!(
        request,
        m::Request::AlterTopicConfigs(meridian_wire::topic_changes::AlterTopicConfigsRequest {
            topics: vec![meridian_wire::topic_changes::TopicConfigChanges {
                name: "orders".into(),
                changes: vec![
                    meridian_wire::topic_changes::ConfigChange {
                        key: "retention.ms".into(),
                        value: Some("1000".into())
                    },
                    meridian_wire::topic_changes::ConfigChange {
                        key: "segment.ms".into(),
                        value: None
                    },
                ],
                replace: false,
            }],
            validate_only: true,
        })
    );
    let answer = meridian_wire::topic_changes::AlterTopicConfigsResponse {
        results: vec![m::TopicResult {
            name: "orders".into(),
            error: ErrorCode::InvalidConfig,
            message: "retention.ms: too small".into(),
        }],
    };
    let frame = answered(pending, m::Response::AlterTopicConfigs(answer));
    let r: k::IncrementalAlterConfigsResponse = response(ApiKey::IncrementalAlterConfigs, 1, frame);
    let results: Vec<(&str, i16)> = r
        .responses
        .iter()
        .map(|res| (&*res.resource_name, res.error_code))
        .collect();
    assert_eq!(
        results,
        [
            ("listy", ResponseError::InvalidRequest.code()),
            ("1", ResponseError::InvalidRequest.code()),
            ("orders", ResponseError::InvalidConfig.code()),
        ]
    );
    assert_eq!(
        r.responses[2].error_message.as_deref(),
        Some("retention.ms: too small")
    );
}

/// The legacy AlterConfigs (KafkaJS's `alterConfigs`, librdkafka's
/// `AlterConfigs`) replaces a topic's settings: the Meridian request says so, and a
/// null value is a setting left out.
#[test]
fn legacy_alter_configs_replaces_topic_settings() {
    use k::alter_configs_request::{AlterConfigsResource, AlterableConfig};
    use meridian_wire::topic_changes as tc;
    let config = |name: &'static str, value: Option<&'static str>| {
        AlterableConfig::default()
            .with_name(StrBytes::from_static_str(name))
            .with_value(value.map(StrBytes::from_static_str))
    };
    let resource = |resource_type: i8, name: &'static str, configs| {
        AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(StrBytes::from_static_str(name))
            .with_configs(configs)
    };
    for version in 0..=2 {
        let asked = k::AlterConfigsRequest::default().with_resources(vec![
            resource(4, "1", vec![config("log.retention.ms", Some("1"))]),
            resource(
                2,
                "orders",
                vec![
                    config("retention.ms", Some("1000")),
                    config("segment.ms", None),
                ],
            ),
            resource(2, "plain", Vec::new()),
        ]);
        let (request, pending) = serve(frame_of(ApiKey::AlterConfigs, version, &asked));
        let change = |key: &str, value: Option<&str>| tc::ConfigChange {
            key: key.into(),
            value: value.map(Into::into),
        };
        assert_eq!(
            request,
            m::Request::AlterTopicConfigs(tc::AlterTopicConfigsRequest {
                topics: vec![
                    tc::TopicConfigChanges {
                        name: "orders".into(),
                        changes: vec![
                            change("retention.ms", Some("1000")),
                            change("segment.ms", None)
                        ],
                        replace: true,
                    },
                    tc::TopicConfigChanges {
                        name: "plain".into(),
                        changes: Vec::new(),
                        replace: true,
                    },
                ],
                validate_only: false,
            })
        );
        let result = |name: &str, error| m::TopicResult {
            name: name.into(),
            error,
            message: String::new(),
        };
        let answer = tc::AlterTopicConfigsResponse {
            results: vec![
                result("orders", ErrorCode::None),
                result("plain", ErrorCode::UnknownTopic),
            ],
        };
        let frame = answered(pending, m::Response::AlterTopicConfigs(answer));
        let r: k::AlterConfigsResponse = response(ApiKey::AlterConfigs, version, frame);
        let results: Vec<(i8, &str, i16)> = r
            .responses
            .iter()
            .map(|res| (res.resource_type, &*res.resource_name, res.error_code))
            .collect();
        assert_eq!(
            results,
            [
                (4, "1", ResponseError::InvalidRequest.code()),
                (2, "orders", 0),
                (2, "plain", ResponseError::UnknownTopicOrPartition.code()),
            ]
        );
    }
    // Only a broker resource: answered without the broker.
    let brokers = k::AlterConfigsRequest::default().with_resources(vec![resource(
        4,
        "1",
        vec![config("log.retention.ms", Some("1"))],
    )]);
    let r: k::AlterConfigsResponse = response(
        ApiKey::AlterConfigs,
        1,
        reply(frame_of(ApiKey::AlterConfigs, 1, &brokers)),
    );
    assert_eq!(r.responses.len(), 1);
    assert_eq!(
        r.responses[0].error_code,
        ResponseError::InvalidRequest.code()
    );
}

#[test]
fn create_partitions_and_delete_records_reach_the_broker() {
    use k::create_partitions_request::{CreatePartitionsAssignment, CreatePartitionsTopic};
    let grow = k::CreatePartitionsRequest::default().with_topics(vec![
        CreatePartitionsTopic::default()
            .with_name(topic_name("orders".into()))
            .with_count(6),
        CreatePartitionsTopic::default()
            .with_name(topic_name("placed".into()))
            .with_count(2)
            .with_assignments(Some(vec![
                CreatePartitionsAssignment::default().with_broker_ids(vec![BrokerId(1)])
            ])),
    ]);
    let (request, pending) = serve(frame_of(ApiKey::CreatePartitions, 3, &grow));
    assert_eq!(
        request,
        m::Request::CreatePartitions(meridian_wire::topic_changes::CreatePartitionsRequest {
            topics: vec![meridian_wire::topic_changes::PartitionsIncrease {
                name: "orders".into(),
                count: 6
            }],
            validate_only: false,
        })
    );
    let answer = meridian_wire::topic_changes::CreatePartitionsResponse {
        results: vec![m::TopicResult {
            name: "orders".into(),
            error: ErrorCode::None,
            message: String::new(),
        }],
    };
    let frame = answered(pending, m::Response::CreatePartitions(answer));
    let r: k::CreatePartitionsResponse = response(ApiKey::CreatePartitions, 3, frame);
    let results: Vec<(&str, i16)> = r
        .results
        .iter()
        .map(|t| (&*t.name.0, t.error_code))
        .collect();
    assert_eq!(
        results,
        [
            ("orders", 0),
            ("placed", ResponseError::InvalidReplicaAssignment.code())
        ]
    );

    let delete = k::DeleteRecordsRequest::default().with_topics(vec![
        k::delete_records_request::DeleteRecordsTopic::default()
            .with_name(topic_name("orders".into()))
            .with_partitions(vec![
                k::delete_records_request::DeleteRecordsPartition::default()
                    .with_partition_index(0)
                    .with_offset(40),
                k::delete_records_request::DeleteRecordsPartition::default()
                    .with_partition_index(1)
                    .with_offset(-1),
            ]),
    ]);
    let (request, pending) = serve(frame_of(ApiKey::DeleteRecords, 2, &delete));
    let m::Request::DeleteRecords(asked) = request else {
        panic!("not a DeleteRecords: {request:?}");
    };
    let offsets: Vec<(u32, i64)> = asked.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition, p.offset))
        .collect();
    assert_eq!(offsets, [(0, 40), (1, m::DELETE_TO_END)]);
    let answer = m::DeleteRecordsResponse {
        topics: vec![m::DeleteRecordsTopicResponse {
            name: "orders".into(),
            partitions: vec![
                m::DeleteRecordsPartitionResponse {
                    partition: 0,
                    error: ErrorCode::None,
                    message: String::new(),
                    low_watermark: 40,
                },
                m::DeleteRecordsPartitionResponse {
                    partition: 1,
                    error: ErrorCode::OffsetOutOfRange,
                    message: "beyond the end".into(),
                    low_watermark: -1,
                },
            ],
        }],
    };
    let frame = answered(pending, m::Response::DeleteRecords(answer));
    let r: k::DeleteRecordsResponse = response(ApiKey::DeleteRecords, 2, frame);
    let partitions: Vec<(i32, i64, i16)> = r.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.low_watermark, p.error_code))
        .collect();
    assert_eq!(
        partitions,
        [(0, 40, 0), (1, -1, ResponseError::OffsetOutOfRange.code())]
    );
}

#[test]
fn groups_and_their_offsets_are_deleted_for_kafkas_group_tools() {
    let group = |name: &'static str| k::GroupId(StrBytes::from_static_str(name));
    for version in 0..=2 {
        let asked = k::DeleteGroupsRequest::default()
            .with_groups_names(vec![group("billing"), group("busy")]);
        let (request, pending) = serve(frame_of(ApiKey::DeleteGroups, version, &asked));
        assert_eq!(
            request,
            m::Request::DeleteGroups(g::DeleteGroupsRequest {
                group_ids: vec!["billing".into(), "busy".into()]
            })
        );
        let result = |group_id: &str, error| g::GroupResult {
            group_id: group_id.into(),
            error,
            message: String::new(),
        };
        let answer = g::DeleteGroupsResponse {
            results: vec![
                result("billing", ErrorCode::None),
                result("busy", ErrorCode::NonEmptyGroup),
            ],
        };
        let frame = answered(pending, m::Response::DeleteGroups(answer));
        let r: k::DeleteGroupsResponse = response(ApiKey::DeleteGroups, version, frame);
        let got: Vec<(String, i16)> = r
            .results
            .iter()
            .map(|g| (g.group_id.0.to_string(), g.error_code))
            .collect();
        assert_eq!(
            got,
            [
                ("billing".to_string(), 0),
                ("busy".to_string(), ResponseError::NonEmptyGroup.code())
            ]
        );
    }

    use k::offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic};
    let topic = |name: &'static str, partitions: &[i32]| {
        OffsetDeleteRequestTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(name)))
            .with_partitions(
                partitions
                    .iter()
                    .map(|&p| OffsetDeleteRequestPartition::default().with_partition_index(p))
                    .collect(),
            )
    };
    let asked = k::OffsetDeleteRequest::default()
        .with_group_id(group("billing"))
        .with_topics(vec![
            topic("orders", &[0, 2]),
            topic("audit", &[]),
            topic("payments", &[1]),
        ]);
    let answered = |error: ErrorCode, refused: &[&str]| {
        let (request, pending) = serve(frame_of(ApiKey::OffsetDelete, 0, &asked));
        // A topic named without partitions deletes none of its commits, as in Kafka.
        let tps = |topic: &str, partitions: Vec<u32>| g::TopicPartitions {
            topic: topic.into(),
            partitions,
        };
        assert_eq!(
            request,
            m::Request::OffsetDelete(g::OffsetDeleteRequest {
                group_id: "billing".into(),
                topics: vec![tps("orders", vec![0, 2]), tps("payments", vec![1])],
            })
        );
        let mut answer = g::OffsetDeleteResponse {
            error,
            message: String::new(),
            deleted: Vec::new(),
            refused: Vec::new(),
        };
        for topic in refused {
            let why = ErrorCode::GroupSubscribedToTopic;
            answer.refuse(topic.to_string(), why, format!("`{topic}` is read"));
        }
        let frame = answered(pending, m::Response::OffsetDelete(answer));
        let r: k::OffsetDeleteResponse = response(ApiKey::OffsetDelete, 0, frame);
        let partitions: Vec<(String, i32, i16)> = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.name.0.to_string(), p.partition_index, p.error_code))
            })
            .collect();
        (r.error_code, partitions)
    };
    let each = |orders: i16, payments: i16| {
        vec![
            ("orders".to_string(), 0, orders),
            ("orders".to_string(), 2, orders),
            ("payments".to_string(), 1, payments),
        ]
    };
    assert_eq!(answered(ErrorCode::None, &[]), (0, each(0, 0)));
    // A member subscribes to `orders`: its partitions say so, as Kafka's do, and
    // `payments`' commit went all the same.
    let subscribed = ResponseError::GroupSubscribedToTopic.code();
    assert_eq!(
        answered(ErrorCode::None, &["orders"]),
        (0, each(subscribed, 0))
    );
    assert_eq!(
        answered(ErrorCode::None, &["orders", "payments"]),
        (0, each(subscribed, subscribed))
    );
    // About the group: at the top, as Kafka's admin clients look for it.
    let missing = ResponseError::GroupIdNotFound.code();
    assert_eq!(
        answered(ErrorCode::GroupIdNotFound, &[]),
        (missing, Vec::new())
    );
}

/// ListPartitionReassignments names partitions; Meridian's request names topics, so
/// the answer keeps only the partitions asked about. An unclean election goes to
/// the broker as one; an election of a type Kafka does not have is refused
/// without it.
#[test]
fn reassignments_are_listed_as_asked_and_elections_typed() {
    let asked = k::ListPartitionReassignmentsRequest::default().with_topics(Some(vec![
        k::list_partition_reassignments_request::ListPartitionReassignmentsTopics::default()
            .with_name(topic_name("orders".into()))
            .with_partition_indexes(vec![1]),
    ]));
    let (request, pending) = serve(frame_of(ApiKey::ListPartitionReassignments, 0, &asked));
    assert_eq!(
        request,
        m::Request::ListPartitionReassignments(m::ListPartitionReassignmentsRequest {
            topics: Some(vec!["orders".into()])
        })
    );
    let ongoing = |partition: u32| m::OngoingReassignment {
        topic: "orders".into(),
        partition,
        replicas: vec![1, 2, 3],
        target: vec![3, 2],
        adding: vec![3],
        removing: vec![1],
        isr: vec![1, 2],
        leader: 1,
    };
    let answer = m::Response::ListPartitionReassignments(m::ListPartitionReassignmentsResponse {
        error: ErrorCode::None,
        message: String::new(),
        reassignments: vec![ongoing(0), ongoing(1)],
    });
    let frame = answered(pending, answer);
    let r: k::ListPartitionReassignmentsResponse =
        response(ApiKey::ListPartitionReassignments, 0, frame);
    assert_eq!(r.topics.len(), 1);
    let partitions = &r.topics[0].partitions;
    assert_eq!(partitions.len(), 1);
    assert_eq!(partitions[0].partition_index, 1);
    assert_eq!(partitions[0].adding_replicas, vec![BrokerId(3)]);
    assert_eq!(partitions[0].removing_replicas, vec![BrokerId(1)]);

    let elect = |election_type| {
        k::ElectLeadersRequest::default()
            .with_election_type(election_type)
            .with_topic_partitions(Some(vec![
                k::elect_leaders_request::TopicPartitions::default()
                    .with_topic(topic_name("orders".into()))
                    .with_partitions(vec![0, 2]),
            ]))
    };
    let partitions = Some(vec![g::TopicPartitions {
        topic: "orders".into(),
        partitions: vec![0, 2],
    }]);
    for (election_type, unclean) in [(0, false), (1, true)] {
        let (request, _) = serve(frame_of(ApiKey::ElectLeaders, 2, &elect(election_type)));
        assert_eq!(
            request,
            m::Request::ElectLeaders(m::ElectLeadersRequest {
                partitions: partitions.clone(),
                unclean
            })
        );
    }
    let r: k::ElectLeadersResponse = response(
        ApiKey::ElectLeaders,
        2,
        reply(frame_of(ApiKey::ElectLeaders, 2, &elect(2))),
    );
    let refused = ResponseError::InvalidRequest.code();
    assert_eq!(r.error_code, refused);
    let results = &r.replica_election_results[0].partition_result;
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|p| p.error_code == refused
        && p.error_message
            .as_deref()
            .is_some_and(|m| m.contains("1 (unclean)"))));
}

/// A request `acl_file` refuses whole gets its own response with the error, which
/// Kafka clients raise (a closed connection, they would retry).
#[test]
fn requests_refused_whole_are_answered_with_the_authorization_error() {
    let find = k::FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g"));
    let (request, pending) = serve(frame_of(ApiKey::FindCoordinator, 3, &find));
    let answer = refusal(&request, ErrorCode::GroupAuthorizationFailed, "no group g");
    let frame = pending.respond(answer, &listener()).unwrap().unwrap();
    let r: k::FindCoordinatorResponse = response(ApiKey::FindCoordinator, 3, frame);
    assert_eq!(r.error_code, ResponseError::GroupAuthorizationFailed.code());
    assert_eq!(r.error_message.as_deref(), Some("no group g"));

    let create = k::CreateTopicsRequest::default().with_topics(vec![
        k::create_topics_request::CreatableTopic::default()
            .with_name(topic_name("bob.orders".into()))
            .with_num_partitions(1)
            .with_replication_factor(1),
    ]);
    let (request, pending) = serve(frame_of(ApiKey::CreateTopics, 7, &create));
    let answer = refusal(&request, ErrorCode::TopicAuthorizationFailed, "not bob's");
    let frame = pending.respond(answer, &listener()).unwrap().unwrap();
    let r: k::CreateTopicsResponse = response(ApiKey::CreateTopics, 7, frame);
    assert_eq!(r.topics.len(), 1);
    assert_eq!(r.topics[0].name.0.as_str(), "bob.orders");
    assert_eq!(
        r.topics[0].error_code,
        ResponseError::TopicAuthorizationFailed.code()
    );

    let unregister = k::UnregisterBrokerRequest::default().with_broker_id(BrokerId(4));
    let (request, pending) = serve(frame_of(ApiKey::UnregisterBroker, 0, &unregister));
    let answer = refusal(
        &request,
        ErrorCode::ClusterAuthorizationFailed,
        "not alice's",
    );
    let frame = pending.respond(answer, &listener()).unwrap().unwrap();
    let r: k::UnregisterBrokerResponse = response(ApiKey::UnregisterBroker, 0, frame);
    assert_eq!(
        r.error_code,
        ResponseError::ClusterAuthorizationFailed.code()
    );
    assert_eq!(r.error_message.as_deref(), Some("not alice's"));

    // A request `acl_file` filters rather than refuses has no refusal of its own.
    let list = m::Request::ListGroups(g::ListGroupsRequest {});
    assert_eq!(
        refusal(&list, ErrorCode::ClusterAuthorizationFailed, ""),
        None
    );
}

/// A request of each served API at `version`, with every field at its default (so
/// every array empty).
fn default_request(api: ApiKey, version: i16) -> Bytes {
    macro_rules! frame {
        ($($key:ident => $request:ty),* $(,)?) => {
            match api {
                $(ApiKey::$key => frame_of(api, version, &<$request>::default()),)*
                other => panic!("{other:?} is not served"),
            }
        };
    }
    frame! {
        Produce => k::ProduceRequest,
        Fetch => k::FetchRequest,
        ListOffsets => k::ListOffsetsRequest,
        OffsetForLeaderEpoch => k::OffsetForLeaderEpochRequest,
        Metadata => k::MetadataRequest,
        OffsetCommit => k::OffsetCommitRequest,
        OffsetFetch => k::OffsetFetchRequest,
        FindCoordinator => k::FindCoordinatorRequest,
        JoinGroup => k::JoinGroupRequest,
        SyncGroup => k::SyncGroupRequest,
        Heartbeat => k::HeartbeatRequest,
        LeaveGroup => k::LeaveGroupRequest,
        ListGroups => k::ListGroupsRequest,
        DescribeGroups => k::DescribeGroupsRequest,
        DeleteGroups => k::DeleteGroupsRequest,
        OffsetDelete => k::OffsetDeleteRequest,
        ApiVersions => k::ApiVersionsRequest,
        CreateTopics => k::CreateTopicsRequest,
        DeleteTopics => k::DeleteTopicsRequest,
        InitProducerId => k::InitProducerIdRequest,
        DescribeConfigs => k::DescribeConfigsRequest,
        AlterConfigs => k::AlterConfigsRequest,
        IncrementalAlterConfigs => k::IncrementalAlterConfigsRequest,
        CreatePartitions => k::CreatePartitionsRequest,
        DeleteRecords => k::DeleteRecordsRequest,
        AlterPartitionReassignments => k::AlterPartitionReassignmentsRequest,
        ListPartitionReassignments => k::ListPartitionReassignmentsRequest,
        ElectLeaders => k::ElectLeadersRequest,
        DescribeLogDirs => k::DescribeLogDirsRequest,
        DescribeCluster => k::DescribeClusterRequest,
        DescribeTopicPartitions => k::DescribeTopicPartitionsRequest,
        UnregisterBroker => k::UnregisterBrokerRequest,
        SaslHandshake => k::SaslHandshakeRequest,
        SaslAuthenticate => k::SaslAuthenticateRequest,
    }
}

/// kafka-protocol sizes an array by its count before reading an element, so a
/// count of billions in a frame of a few dozen bytes asks for hundreds of
/// gigabytes; under the system allocator that aborts the process. Every served
/// request, at its oldest and newest version, gets the largest count in each
/// encoding (INT32 for arrays before flexible versions, an unsigned varint after)
/// at every position of its body, where some land on an array's count: each must
/// come back as a typed error or a request, with the process still here.
#[test]
fn lying_array_counts_are_malformed_requests_not_an_abort() {
    if let Some(why) = alloc::lazy_blocks_refused() {
        eprintln!("skipping: {why}");
        return;
    }
    let int32 = 0x7fff_ffffi32.to_be_bytes();
    let varint = [0xff, 0xff, 0xff, 0xff, 0x0f];
    let mapped_before = alloc::blocks_mapped();
    let mut refused = 0;
    for &(api, min, max) in APIS {
        for version in [min, max] {
            let frame = default_request(api, version);
            let header_len = frame.len() - body_len(api, version, &frame);
            for at in header_len..frame.len() {
                for count in [&int32[..], &varint[..]] {
                    let mut lying = frame[..at].to_vec();
                    lying.extend_from_slice(count);
                    lying.extend_from_slice(&frame[(at + count.len()).min(frame.len())..]);
                    match decode(Bytes::from(lying)) {
                        Err(KafkaError::Malformed { reason, .. }) => {
                            assert_eq!(reason.trim_end(), reason, "one line");
                            refused += 1
                        }
                        Err(other) => panic!("{api:?} v{version} at {at}: {other}"),
                        Ok(_) => {}
                    }
                }
            }
        }
    }
    assert!(refused > 100, "{refused}");
    // The lying counts did reach the decoder's preallocation.
    assert!(alloc::blocks_mapped() > mapped_before);
}

/// How many bytes of `frame` follow its request header.
fn body_len(api: ApiKey, version: i16, frame: &Bytes) -> usize {
    let mut buf = frame.clone();
    k::RequestHeader::decode(&mut buf, api.request_header_version(version)).unwrap();
    buf.len()
}

/// A page of DescribeTopicPartitions: each topic's name, error and partitions.
type Page = (Vec<(String, i16, Vec<i32>)>, Option<(String, i32)>);

/// DescribeTopicPartitions (KIP-966; Kafka's admin clients describe topics with it
/// from 3.7): topics in name order, at most the limit's partitions per answer,
/// and a cursor where the next answer starts, within a topic or at the next one.
/// It never names topics to the broker (that could create them).
#[test]
fn describe_topic_partitions_pages_through_topics_in_name_order() {
    let topic = |name: &str, n: u32| m::TopicMetadata {
        name: name.into(),
        id: meridian_wire::TopicId([n as u8; 16]),
        error: ErrorCode::None,
        message: String::new(),
        partitions: (0..n)
            .rev()
            .map(|p| m::PartitionMetadata {
                partition: p,
                error: ErrorCode::None,
                leader: 1,
                leader_epoch: 2,
                replicas: vec![1, 2],
                isr: vec![1],
            })
            .collect(),
    };
    let everything = m::MetadataResponse {
        brokers: Vec::new(),
        controller_id: 1,
        topics: vec![topic("b", 2), topic("a", 3), topic("__consumer_offsets", 1)],
    };
    let ask = |names: &[&str], limit: i32, cursor: Option<(&str, i32)>| -> Page {
        let request = k::DescribeTopicPartitionsRequest::default()
            .with_topics(
                names
                    .iter()
                    .map(|n| {
                        k::describe_topic_partitions_request::TopicRequest::default()
                            .with_name(topic_name(n.to_string()))
                    })
                    .collect(),
            )
            .with_response_partition_limit(limit)
            .with_cursor(cursor.map(|(t, p)| {
                k::describe_topic_partitions_request::Cursor::default()
                    .with_topic_name(topic_name(t.to_string()))
                    .with_partition_index(p)
            }));
        let (asked, pending) = serve(frame_of(ApiKey::DescribeTopicPartitions, 0, &request));
        assert_eq!(
            asked,
            m::Request::Metadata(m::MetadataRequest { topics: None })
        );
        let r: k::DescribeTopicPartitionsResponse = response(
            ApiKey::DescribeTopicPartitions,
            0,
            answered(pending, m::Response::Metadata(everything.clone())),
        );
        let topics = r
            .topics
            .iter()
            .map(|t| {
                let name = t.name.as_ref().unwrap().0.to_string();
                let partitions = t.partitions.iter().map(|p| p.partition_index).collect();
                (name, t.error_code, partitions)
            })
            .collect();
        let cursor = r
            .next_cursor
            .map(|c| (c.topic_name.0.to_string(), c.partition_index));
        (topics, cursor)
    };
    let t =
        |name: &str, error: i16, partitions: &[i32]| (name.to_string(), error, partitions.to_vec());
    let at = |name: &str, partition| Some((name.to_string(), partition));
    // Everything fits.
    assert_eq!(
        ask(&[], 2000, None),
        (
            vec![
                t("__consumer_offsets", 0, &[0]),
                t("a", 0, &[0, 1, 2]),
                t("b", 0, &[0, 1])
            ],
            None
        )
    );
    // Two partitions at a time: a page ends inside a topic, or at its end.
    assert_eq!(
        ask(&[], 2, None),
        (
            vec![t("__consumer_offsets", 0, &[0]), t("a", 0, &[0])],
            at("a", 1)
        )
    );
    assert_eq!(
        ask(&[], 2, Some(("a", 1))),
        (vec![t("a", 0, &[1, 2])], at("b", 0))
    );
    assert_eq!(
        ask(&[], 2, Some(("b", 0))),
        (vec![t("b", 0, &[0, 1])], None)
    );
    // Named topics, repeated and out of order: one that does not exist (or that
    // the client may not see) is UNKNOWN_TOPIC_OR_PARTITION and costs nothing.
    let unknown = ResponseError::UnknownTopicOrPartition.code();
    assert_eq!(
        ask(&["b", "missing", "a", "b"], 3, None),
        (vec![t("a", 0, &[0, 1, 2])], at("b", 0))
    );
    assert_eq!(
        ask(&["b", "missing", "a"], 3, Some(("b", 1))),
        (vec![t("b", 0, &[1]), t("missing", unknown, &[])], None)
    );
    // A cursor outside the topics named is refused, each topic named saying so.
    let request = k::DescribeTopicPartitionsRequest::default()
        .with_topics(vec![
            k::describe_topic_partitions_request::TopicRequest::default()
                .with_name(topic_name("a".into())),
        ])
        .with_cursor(Some(
            k::describe_topic_partitions_request::Cursor::default()
                .with_topic_name(topic_name("b".into())),
        ));
    let r: k::DescribeTopicPartitionsResponse = response(
        ApiKey::DescribeTopicPartitions,
        0,
        reply(frame_of(ApiKey::DescribeTopicPartitions, 0, &request)),
    );
    assert_eq!(r.topics[0].error_code, ResponseError::InvalidRequest.code());
}
