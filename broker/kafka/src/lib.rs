//! Kafka's wire protocol, spoken by translation: a Kafka client's request becomes the
//! Meridian request that does the same thing, and Meridian's answer becomes the Kafka
//! response the client expects. Both protocols carry records as Kafka RecordBatch v2,
//! so records pass through untouched either way.
//!
//! Sans-IO: [`decode`] takes one request frame (without its 4-byte size) and says
//! what to do; [`Pending::respond`] turns the broker's answer into the response frame
//! (with its size). The broker's TCP listener drives it; tests drive it directly.
//!
//! Served: the APIs of [`APIS`] at the versions listed there, enough for producers
//! (idempotent ones included), consumers (assigning partitions themselves, or as
//! members of a consumer group, eager or cooperative), topic administration and
//! the replica tools' requests (reassignments, preferred elections, log directories). Not
//! served (a client asking gets a closed connection, as from a Kafka broker for an
//! API it lacks): transactions and ACL administration.
//!
//! Consumer groups: Kafka's classic protocol has one member (the leader) compute
//! the assignment; Meridian's coordinator computes it (with the assignor the
//! member named: `range`, `roundrobin` or `cooperative-sticky`). So every member is
//! told that another leads, and gets its partitions from SyncGroup. When the
//! coordinator wants partitions to move, a member's Heartbeat answers
//! `REBALANCE_IN_PROGRESS`; an eager member then gives up all it holds, joins again
//! and syncs, which is when the coordinator learns its partitions are free. A
//! `cooperative-sticky` member keeps its partitions across the rejoin and says which
//! in its JoinGroup subscription; SyncGroup, where the coordinator takes them, does
//! not carry them, so the connection's [`Session`] keeps them from one to the other
//! ([`decode_in`]). Told to give some up, it does, and joins again owning fewer.

mod admin;
pub mod alloc;
mod refusals;
mod replicas;
pub mod sasl;

pub use admin::{config_type, topic_default_key, TopicSettingInfo, TOPIC_SETTINGS};
pub use refusals::refusal;

// Decoding a lying array count must not abort the tests either (see `alloc`).
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: alloc::LazyLargeAllocator = alloc::LazyLargeAllocator;

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{self as k, ApiKey, BrokerId, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use meridian_wire::group as g;
use meridian_wire::messages as m;
use meridian_wire::ErrorCode;

/// The APIs served, with the lowest and highest version of each, as `ApiVersions`
/// tells clients. Versions stop where Kafka moved to what Meridian lacks: topic IDs
/// in Produce (13), a follower's high watermark in Fetch (18; Fetch 13 on asks by
/// topic ID, served), fetch sessions beyond sessionless full fetches, batched
/// coordinator lookups (FindCoordinator 4, OffsetFetch 8) and tiered storage's
/// offsets (ListOffsets 9).
pub const APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 17),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 3),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 0),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::DescribeTopicPartitions, 0, 0),
    (ApiKey::UnregisterBroker, 0, 0),
    (ApiKey::SaslHandshake, 1, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// Where Kafka clients reach the brokers: what Metadata and FindCoordinator answers
/// name (Kafka listeners, not QUIC endpoints).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listener {
    /// The broker answering.
    pub broker_id: u32,
    pub cluster_id: String,
    /// The brokers with a Kafka listener, this one included; a broker missing here
    /// (in a cluster, one without `kafka_listen`) is left out of Metadata answers.
    pub brokers: Vec<KafkaBroker>,
    /// This broker's settings, as DescribeConfigs of its broker resource shows
    /// them (read-only: they come from its configuration).
    pub settings: std::sync::Arc<[BrokerSetting]>,
}

/// One of a broker's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerSetting {
    pub name: String,
    pub value: String,
    /// Not set in the broker's configuration: the built-in default.
    pub is_default: bool,
    /// Kafka's `config_type` of its value in the configuration ([`config_type`]).
    pub config_type: i8,
}

/// One broker's Kafka listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaBroker {
    pub id: u32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

impl Listener {
    fn broker(&self, id: u32) -> Option<&KafkaBroker> {
        self.brokers.iter().find(|b| b.id == id)
    }
}

/// Why a frame cannot be served. The connection is closed after any of them, as a
/// Kafka broker does: the client cannot tell which response would be missing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KafkaError {
    #[error("request frame of {0} bytes is shorter than a request header")]
    Truncated(usize),
    #[error("API key {0} is not served on the Kafka listener (served: {list})", list = served_list())]
    UnknownApi(i16),
    #[error("{api:?} version {version} is not served (versions {min} to {max} are)")]
    UnsupportedVersion {
        api: ApiKey,
        version: i16,
        min: i16,
        max: i16,
    },
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("{api:?} got a {got:?} answer from the broker")]
    WrongAnswer { api: ApiKey, got: m::ApiKey },
    #[error("encoding the {api:?} v{version} response: {reason}")]
    Encode {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

fn served_list() -> String {
    let names: Vec<String> = APIS.iter().map(|(api, _, _)| format!("{api:?}")).collect();
    names.join(", ")
}

/// What to do with one request frame.
#[derive(Debug)]
pub enum Step {
    /// Hand the request to the broker, then [`Pending::respond`] with its answer.
    Serve(Box<m::Request>, Pending),
    /// Send this response frame; the broker is not involved (ApiVersions).
    Reply(Bytes),
    /// Send this response frame, which refuses the request whole for `reason` (a
    /// Kafka feature not served, such as transactions); worth logging, since some
    /// responses have no room for a message.
    Refused { reply: Bytes, reason: String },
    /// SASL authentication (`SaslHandshake`, `SaslAuthenticate`), for the
    /// connection's [`sasl::Authenticator`]: [`SaslRequest::answer`].
    Sasl(SaslRequest),
}

/// A SASL request and what its answer needs.
#[derive(Debug)]
pub struct SaslRequest {
    header: Header,
    message: SaslMessage,
}

#[derive(Debug)]
enum SaslMessage {
    Handshake(String),
    Authenticate(Bytes),
}

impl SaslRequest {
    /// Whether it is a `SaslHandshake` (which starts an exchange, or a
    /// re-authentication).
    pub fn is_handshake(&self) -> bool {
        matches!(self.message, SaslMessage::Handshake(_))
    }

    /// The response frame, and what became of the exchange, from `authenticator`:
    /// the connection's exchange while it has one under way; `None` once it is over
    /// (or on a listener without SASL), when both requests are out of place
    /// (`ILLEGAL_SASL_STATE`) and change nothing. A successful login's answer
    /// tells the client `session_lifetime_ms` (version 1 on; 0: no limit), after
    /// which it must log in again on the same connection (KIP-368).
    pub fn answer(
        self,
        authenticator: Option<&mut sasl::Authenticator>,
        session_lifetime_ms: i64,
    ) -> Result<(Bytes, sasl::Outcome), KafkaError> {
        const ILLEGAL_SASL_STATE: i16 = 34;
        match (self.message, authenticator) {
            (SaslMessage::Handshake(mechanism), Some(authenticator)) => {
                let answer = authenticator.handshake(&mechanism);
                let body = k::SaslHandshakeResponse::default()
                    .with_error_code(answer.error_code)
                    .with_mechanisms(
                        answer
                            .mechanisms
                            .into_iter()
                            .map(StrBytes::from_static_str)
                            .collect(),
                    );
                Ok((self.header.frame(&body)?, sasl::Outcome::Continue))
            }
            (SaslMessage::Handshake(_), None) => {
                let body = k::SaslHandshakeResponse::default().with_error_code(ILLEGAL_SASL_STATE);
                Ok((self.header.frame(&body)?, sasl::Outcome::Continue))
            }
            (SaslMessage::Authenticate(token), Some(authenticator)) => {
                let answer = authenticator.authenticate(&token);
                let lifetime = match answer.outcome {
                    sasl::Outcome::Authenticated(_) => session_lifetime_ms,
                    _ => 0,
                };
                let body = k::SaslAuthenticateResponse::default()
                    .with_error_code(answer.error_code)
                    .with_error_message(answer.error_message.map(StrBytes::from_string))
                    .with_auth_bytes(Bytes::from(answer.auth_bytes))
                    .with_session_lifetime_ms(lifetime);
                Ok((self.header.frame(&body)?, answer.outcome))
            }
            (SaslMessage::Authenticate(_), None) => {
                let body = k::SaslAuthenticateResponse::default()
                    .with_error_code(ILLEGAL_SASL_STATE)
                    .with_error_message(Some(StrBytes::from_static_str(
                        "no SASL exchange is under way on this connection",
                    )));
                Ok((self.header.frame(&body)?, sasl::Outcome::Continue))
            }
        }
    }
}

/// A request handed to the broker: what its response needs besides the answer.
#[derive(Debug)]
pub struct Pending {
    header: Header,
    /// The Meridian API the request went to, which its answer must come from.
    sent: m::ApiKey,
    shape: Shape,
}

#[derive(Clone, Debug)]
struct Header {
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: Option<String>,
}

/// What a response needs from its request.
#[derive(Debug)]
enum Shape {
    Plain,
    /// Metadata of the topics with these IDs, from an answer listing every topic.
    MetadataByIds {
        ids: Vec<uuid::Uuid>,
    },
    /// Topics refused before reaching the broker (manual replica assignments).
    CreateTopics {
        refused: Vec<(String, String)>,
    },
    /// Every partition named, each of which gets the commit's outcome.
    OffsetCommit {
        partitions: Vec<(String, Vec<i32>)>,
    },
    /// The partitions asked for (`None`: every committed one), each answered even
    /// when nothing is committed for it.
    OffsetFetch {
        partitions: Option<Vec<(String, Vec<i32>)>>,
    },
    /// The protocol (assignor) chosen from the member's list.
    JoinGroup {
        protocol: StrBytes,
    },
    /// Echoed back (version 5 checks them).
    SyncGroup {
        protocol_type: Option<StrBytes>,
        protocol_name: Option<StrBytes>,
    },
    /// Version 3 on: the member who left, named in the answer.
    LeaveGroup {
        member: Option<(StrBytes, Option<StrBytes>)>,
    },
    /// The partitions named (each answered), with those that cannot be a
    /// partition's index.
    OffsetDelete {
        partitions: Vec<(String, Vec<i32>)>,
    },
    /// Version 4 on: only groups in these (Kafka) states; empty: all.
    ListGroups {
        states: Vec<StrBytes>,
    },
    /// The resources asked about, in order.
    DescribeConfigs {
        asked: Vec<admin::Described>,
    },
    /// Resources refused before reaching the broker; `replace`: the legacy
    /// AlterConfigs asked, not IncrementalAlterConfigs.
    AlterConfigs {
        refused: Vec<admin::Refusal>,
        replace: bool,
    },
    /// Topics refused before reaching the broker (manual replica assignments).
    CreatePartitions {
        refused: Vec<(String, String)>,
    },
    /// DescribeCluster, answered from a Metadata answer naming no topic.
    DescribeCluster,
    /// DescribeTopicPartitions, answered from a Metadata answer listing every
    /// topic the client may see: one page of them.
    DescribeTopicPartitions(TopicPartitionsPage),
    /// The partitions asked about (Meridian's request names topics only).
    ListReassignments {
        asked: replicas::Listed,
    },
}

/// Kafka's eager protocols, by the names Kafka clients give them, and the assignor
/// Meridian's coordinator runs for each: Java's and librdkafka's names (which are
/// Meridian's), and KafkaJS's round robin (`RoundRobinAssigner`, its default).
const EAGER_PROTOCOLS: [(&str, &str); 3] = [
    ("range", "range"),
    ("roundrobin", "roundrobin"),
    ("RoundRobinAssigner", "roundrobin"),
];

/// The cooperative one: its members keep their partitions across a rejoin.
const COOPERATIVE_PROTOCOL: &str = "cooperative-sticky";

/// Cooperative members a [`Session::default`] remembers (the broker's
/// `kafka_cooperative_members_max`): a client has one member per group it consumes
/// in, so only a client in this many groups at once over one connection comes near
/// it.
pub const SESSION_MEMBERS_MAX: usize = 64;

/// What one connection's requests leave for its later ones: the partitions each
/// cooperative group member on it said it owns when it last joined (Kafka's
/// JoinGroup carries them in its subscription; its SyncGroup, where Meridian's
/// coordinator takes them, does not).
#[derive(Debug)]
pub struct Session {
    /// (group, member) → the partitions it owns, oldest join first.
    owned: VecDeque<((String, String), Vec<g::TopicPartitions>)>,
    /// Past this many members, the oldest is forgotten.
    members_max: usize,
}

impl Default for Session {
    fn default() -> Session {
        Session::new(SESSION_MEMBERS_MAX)
    }
}

impl Session {
    /// A session remembering at most `members_max` (at least one) members.
    pub fn new(members_max: usize) -> Session {
        Session {
            owned: VecDeque::new(),
            members_max: members_max.max(1),
        }
    }

    fn joined(&mut self, group: &str, member: &str, owned: Vec<g::TopicPartitions>) {
        self.owned
            .retain(|((gr, me), _)| !(gr == group && me == member));
        if self.owned.len() >= self.members_max {
            self.owned.pop_front();
        }
        self.owned
            .push_back(((group.to_owned(), member.to_owned()), owned));
    }

    /// What the member said it owns at its last join on this connection (nothing
    /// for an eager member, or one that joined on another connection).
    fn owned(&self, group: &str, member: &str) -> Vec<g::TopicPartitions> {
        self.owned
            .iter()
            .find(|((gr, me), _)| gr == group && me == member)
            .map(|(_, owned)| owned.clone())
            .unwrap_or_default()
    }
}

const TRANSACTIONS: &str = "transactions are not served by this broker";

/// ListOffsets' timestamp asking for the earliest offset on the broker's own disk
/// (version 8, for tiered storage).
const EARLIEST_LOCAL_TIMESTAMP: i64 = -4;

/// What a kafka-protocol error says, on one line: its messages end in a newline
/// (`Not enough bytes remaining in buffer!\n`), which left a blank line in the log
/// after each refused request.
fn reason(e: &impl std::fmt::Display) -> String {
    format!("{e:#}").trim_end().to_string()
}

/// Reads one request frame (the bytes after its size), on a connection of its own.
pub fn decode(frame: Bytes) -> Result<Step, KafkaError> {
    decode_in(frame, &mut Session::default())
}

/// Reads one request frame (the bytes after its size) of a connection whose earlier
/// requests left `session`.
pub fn decode_in(frame: Bytes, session: &mut Session) -> Result<Step, KafkaError> {
    if frame.len() < 8 {
        return Err(KafkaError::Truncated(frame.len()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api = ApiKey::try_from(key).map_err(|_| KafkaError::UnknownApi(key))?;
    let &(_, min, max) = APIS
        .iter()
        .find(|(served, _, _)| *served == api)
        .ok_or(KafkaError::UnknownApi(key))?;
    if !(min..=max).contains(&version) {
        if api == ApiKey::ApiVersions && version > max {
            // A client newer than this broker: answer in version 0 with the versions
            // served, and it retries with one of them (KIP-511).
            let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            let header = Header {
                api,
                version: 0,
                correlation_id,
                client_id: None,
            };
            let body = api_versions(ResponseError::UnsupportedVersion.code());
            return Ok(Step::Reply(header.frame(&body)?));
        }
        return Err(KafkaError::UnsupportedVersion {
            api,
            version,
            min,
            max,
        });
    }
    let mut buf = frame;
    let malformed = |reason: String| KafkaError::Malformed {
        api,
        version,
        reason,
    };
    let request_header = k::RequestHeader::decode(&mut buf, api.request_header_version(version))
        .map_err(|e| malformed(reason(&e)))?;
    let header = Header {
        api,
        version,
        correlation_id: request_header.correlation_id,
        client_id: request_header.client_id.map(|s| s.to_string()),
    };
    let serve = |request: m::Request, shape: Shape| {
        let pending = Pending {
            header: header.clone(),
            sent: request.api_key(),
            shape,
        };
        Ok(Step::Serve(Box::new(request), pending))
    };
    macro_rules! body {
        ($t:ty) => {
            <$t>::decode(&mut buf, version).map_err(|e| malformed(reason(&e)))?
        };
    }
    match api {
        ApiKey::ApiVersions => {
            let _ = body!(k::ApiVersionsRequest);
            Ok(Step::Reply(header.frame(&api_versions(0))?))
        }
        ApiKey::SaslHandshake => {
            let r = body!(k::SaslHandshakeRequest);
            Ok(Step::Sasl(SaslRequest {
                header,
                message: SaslMessage::Handshake(r.mechanism.to_string()),
            }))
        }
        ApiKey::SaslAuthenticate => {
            let r = body!(k::SaslAuthenticateRequest);
            Ok(Step::Sasl(SaslRequest {
                header,
                message: SaslMessage::Authenticate(r.auth_bytes),
            }))
        }
        ApiKey::Metadata => {
            let r = body!(k::MetadataRequest);
            // Topics named by ID (version 10 on; Kafka's own brokers take them from
            // 12): every topic the client may see is asked for, and the answer keeps
            // those with the IDs, in the order asked.
            let ids: Vec<uuid::Uuid> = (r.topics.iter().flatten())
                .map(|t| t.topic_id)
                .filter(|id| !id.is_nil())
                .collect();
            if !ids.is_empty() {
                return serve(
                    m::Request::Metadata(m::MetadataRequest { topics: None }),
                    Shape::MetadataByIds { ids },
                );
            }
            let topics = match r.topics {
                // Version 0 has no null list: empty meant every topic.
                Some(list) if version == 0 && list.is_empty() => None,
                Some(list) => Some(
                    list.into_iter()
                        .filter_map(|t| t.name.map(|n| n.0.to_string()))
                        .collect(),
                ),
                None => None,
            };
            serve(
                m::Request::Metadata(m::MetadataRequest { topics }),
                Shape::Plain,
            )
        }
        ApiKey::DescribeTopicPartitions => {
            let r = body!(k::DescribeTopicPartitionsRequest);
            let mut names: Vec<String> = r.topics.iter().map(|t| t.name.0.to_string()).collect();
            names.sort();
            names.dedup();
            let cursor = r
                .cursor
                .map(|c| (c.topic_name.0.to_string(), c.partition_index));
            if let Some((topic, partition)) = &cursor {
                let outside = !names.is_empty() && names.binary_search(topic).is_err();
                if outside || *partition < 0 {
                    let reason = format!(
                        "DescribeTopicPartitions: the cursor ({topic}, {partition}) is not a \
                         partition of a topic asked for"
                    );
                    let topics = r
                        .topics
                        .into_iter()
                        .map(|t| {
                            k::describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic::default()
                                .with_name(Some(t.name))
                                .with_error_code(ResponseError::InvalidRequest.code())
                        })
                        .collect();
                    let body = k::DescribeTopicPartitionsResponse::default().with_topics(topics);
                    return header.refuse(&body, reason);
                }
            }
            // Every topic the client may see is asked for (naming them could
            // create them under `auto_create_topics`, which this request never does).
            serve(
                m::Request::Metadata(m::MetadataRequest { topics: None }),
                Shape::DescribeTopicPartitions(TopicPartitionsPage {
                    names,
                    cursor,
                    limit: r.response_partition_limit.clamp(1, MAX_PARTITIONS_PER_PAGE),
                }),
            )
        }
        ApiKey::DescribeCluster => {
            let r = body!(k::DescribeClusterRequest);
            // Version 0 has no endpoint type: it asks about brokers.
            if version >= 1 && r.endpoint_type != BROKER_ENDPOINTS {
                let mismatched = k::DescribeClusterResponse::default()
                    .with_error_code(ResponseError::MismatchedEndpointType.code())
                    .with_error_message(Some(StrBytes::from_static_str(
                        "this is a broker's Kafka listener: it describes brokers (endpoint \
                         type 1); Meridian has no controller endpoints for clients",
                    )))
                    .with_endpoint_type(r.endpoint_type);
                return Ok(Step::Reply(header.frame(&mismatched)?));
            }
            serve(
                m::Request::Metadata(m::MetadataRequest {
                    topics: Some(Vec::new()),
                }),
                Shape::DescribeCluster,
            )
        }
        ApiKey::UnregisterBroker => {
            let r = body!(k::UnregisterBrokerRequest);
            match u32::try_from(r.broker_id.0) {
                Ok(broker_id) => serve(
                    m::Request::UnregisterBroker(
                        meridian_wire::describe_cluster::UnregisterBrokerRequest { broker_id },
                    ),
                    Shape::Plain,
                ),
                Err(_) => {
                    let unknown = k::UnregisterBrokerResponse::default()
                        .with_error_code(code(ErrorCode::BrokerIdNotRegistered))
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "no broker {} is registered: broker ids are not negative",
                            r.broker_id.0
                        ))));
                    Ok(Step::Reply(header.frame(&unknown)?))
                }
            }
        }
        ApiKey::Produce => {
            let r = body!(k::ProduceRequest);
            if r.transactional_id.is_some() {
                return header.refuse(&refuse_produce(&r), TRANSACTIONS.into());
            }
            let topics = r
                .topic_data
                .into_iter()
                .map(|t| m::ProduceTopic {
                    name: t.name.0.to_string(),
                    partitions: t
                        .partition_data
                        .into_iter()
                        .map(|p| m::ProducePartition {
                            partition: partition(p.index),
                            records: p.records.unwrap_or_default(),
                        })
                        .collect(),
                })
                .collect();
            serve(
                m::Request::Produce(m::ProduceRequest {
                    acks: r.acks.clamp(i8::MIN as i16, i8::MAX as i16) as i8,
                    timeout_ms: r.timeout_ms.max(0) as u32,
                    topics,
                }),
                Shape::Plain,
            )
        }
        ApiKey::Fetch => {
            let r = body!(k::FetchRequest);
            if r.session_id != 0 || r.session_epoch > 0 {
                // Sessions are never handed out (every answer says session 0), so
                // an incremental fetch names one this broker does not have.
                let body = k::FetchResponse::default()
                    .with_error_code(ResponseError::FetchSessionIdNotFound.code());
                let reason = format!(
                    "incremental fetch of session {}: this broker creates no fetch sessions",
                    r.session_id
                );
                return header.refuse(&body, reason);
            }
            let topics = r
                .topics
                .into_iter()
                .map(|t| m::FetchTopic {
                    // From version 13 a topic is asked by its ID alone.
                    name: t.topic.0.to_string(),
                    id: if version >= 13 {
                        meridian_wire::TopicId(t.topic_id.into_bytes())
                    } else {
                        meridian_wire::TopicId::NONE
                    },
                    partitions: t
                        .partitions
                        .into_iter()
                        .map(|p| m::FetchPartition {
                            partition: partition(p.partition),
                            fetch_offset: p.fetch_offset,
                            partition_max_bytes: p.partition_max_bytes.max(0) as u32,
                            current_leader_epoch: p.current_leader_epoch,
                            last_fetched_epoch: p.last_fetched_epoch,
                        })
                        .collect(),
                })
                .collect();
            serve(
                m::Request::Fetch(m::FetchRequest {
                    max_wait_ms: r.max_wait_ms.max(0) as u32,
                    min_bytes: r.min_bytes.max(0) as u32,
                    max_bytes: r.max_bytes.max(0) as u32,
                    topics,
                    filter: None,
                    // Always a consumer: a Kafka broker cannot follow a Meridian one.
                    replica_id: m::CONSUMER_REPLICA_ID,
                }),
                Shape::Plain,
            )
        }
        ApiKey::ListOffsets => {
            let r = body!(k::ListOffsetsRequest);
            let topics = r
                .topics
                .into_iter()
                .map(|t| m::ListOffsetsTopic {
                    name: t.name.0.to_string(),
                    partitions: t
                        .partitions
                        .into_iter()
                        .map(|p| m::ListOffsetsPartition {
                            partition: partition(p.partition_index),
                            timestamp: match p.timestamp {
                                // Version 8's earliest local offset: without tiered
                                // storage, the log start offset.
                                EARLIEST_LOCAL_TIMESTAMP => m::EARLIEST_TIMESTAMP,
                                // Version 7's max timestamp is Meridian's own -3.
                                timestamp => timestamp,
                            },
                        })
                        .collect(),
                })
                .collect();
            serve(
                m::Request::ListOffsets(m::ListOffsetsRequest { topics }),
                Shape::Plain,
            )
        }
        ApiKey::OffsetForLeaderEpoch => serve(
            offset_for_leader_epoch(body!(k::OffsetForLeaderEpochRequest)),
            Shape::Plain,
        ),
        ApiKey::CreateTopics => {
            let r = body!(k::CreateTopicsRequest);
            let mut refused = Vec::new();
            let mut topics = Vec::new();
            for t in r.topics {
                let name = t.name.0.to_string();
                if !t.assignments.is_empty() {
                    refused.push((
                        name,
                        "replica assignments are not taken at creation; create the topic, then \
                         `meridian partition reassign`"
                            .to_string(),
                    ));
                    continue;
                }
                topics.push(m::CreateTopic {
                    name,
                    // -1, Kafka's "the broker's default", is Meridian's 0.
                    partitions: t.num_partitions.max(0) as u32,
                    replication_factor: t.replication_factor.max(0) as u16,
                    configs: t
                        .configs
                        .into_iter()
                        .filter_map(|c| {
                            c.value.map(|v| m::ConfigEntry {
                                key: c.name.to_string(),
                                value: v.to_string(),
                            })
                        })
                        .collect(),
                });
            }
            serve(
                m::Request::CreateTopics(m::CreateTopicsRequest {
                    topics,
                    validate_only: r.validate_only,
                }),
                Shape::CreateTopics { refused },
            )
        }
        ApiKey::DescribeConfigs => {
            let (request, asked) =
                admin::describe_configs(body!(k::DescribeConfigsRequest), version);
            match request {
                Some(request) => serve(request, Shape::DescribeConfigs { asked }),
                None => Ok(Step::Reply(header.frame(&admin::described_configs(
                    admin::DescribedBy::Nothing,
                    asked,
                    &Listener::default(),
                ))?)),
            }
        }
        ApiKey::IncrementalAlterConfigs | ApiKey::AlterConfigs => {
            let replace = api == ApiKey::AlterConfigs;
            let (request, refused) = if replace {
                admin::replace_configs(body!(k::AlterConfigsRequest))
            } else {
                admin::alter_configs(body!(k::IncrementalAlterConfigsRequest))
            };
            match request {
                Some(request) => serve(request, Shape::AlterConfigs { refused, replace }),
                None => Ok(Step::Reply(altered_configs_frame(
                    &header, None, refused, replace,
                )?)),
            }
        }
        ApiKey::CreatePartitions => {
            let (request, refused) = admin::create_partitions(body!(k::CreatePartitionsRequest));
            serve(request, Shape::CreatePartitions { refused })
        }
        ApiKey::DeleteRecords => serve(
            admin::delete_records(body!(k::DeleteRecordsRequest)),
            Shape::Plain,
        ),
        ApiKey::AlterPartitionReassignments => serve(
            replicas::alter_reassignments(body!(k::AlterPartitionReassignmentsRequest)),
            Shape::Plain,
        ),
        ApiKey::ListPartitionReassignments => {
            let (request, asked) =
                replicas::list_reassignments(body!(k::ListPartitionReassignmentsRequest));
            serve(request, Shape::ListReassignments { asked })
        }
        ApiKey::ElectLeaders => match replicas::elect_leaders(body!(k::ElectLeadersRequest)) {
            Ok(request) => serve(request, Shape::Plain),
            Err(refused) => header.refuse(&refused, replicas::UNKNOWN_ELECTION.into()),
        },
        ApiKey::DescribeLogDirs => serve(
            replicas::describe_log_dirs(body!(k::DescribeLogDirsRequest)),
            Shape::Plain,
        ),
        ApiKey::DeleteTopics => {
            let r = body!(k::DeleteTopicsRequest);
            let mut names: Vec<String> = r.topic_names.iter().map(|n| n.0.to_string()).collect();
            let mut ids = Vec::new();
            // Version 6 names each topic by name or by ID (KIP-516).
            for t in r.topics {
                match t.name {
                    Some(name) if t.topic_id.is_nil() => names.push(name.0.to_string()),
                    _ => ids.push(meridian_wire::TopicId(t.topic_id.into_bytes())),
                }
            }
            serve(
                m::Request::DeleteTopics(m::DeleteTopicsRequest { names, ids }),
                Shape::Plain,
            )
        }
        ApiKey::InitProducerId => {
            let r = body!(k::InitProducerIdRequest);
            if r.transactional_id.is_some() {
                // Transactions are not served; an idempotent producer has no id.
                let body = k::InitProducerIdResponse::default()
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_producer_id((-1).into());
                return header.refuse(&body, TRANSACTIONS.into());
            }
            serve(
                m::Request::InitProducerId(meridian_wire::idempotence::InitProducerIdRequest {
                    transactional_id: None,
                }),
                Shape::Plain,
            )
        }
        ApiKey::FindCoordinator => {
            let r = body!(k::FindCoordinatorRequest);
            if r.key_type != 0 {
                // 1: a transaction coordinator.
                let body = k::FindCoordinatorResponse::default()
                    .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                    .with_error_message(Some(StrBytes::from_static_str(TRANSACTIONS)))
                    .with_node_id((-1).into())
                    .with_port(-1);
                return header.refuse(&body, TRANSACTIONS.into());
            }
            serve(
                m::Request::FindCoordinator(g::FindCoordinatorRequest {
                    group_id: r.key.to_string(),
                }),
                Shape::Plain,
            )
        }
        ApiKey::OffsetCommit => {
            let r = body!(k::OffsetCommitRequest);
            let partitions = r
                .topics
                .iter()
                .map(|t| {
                    let list = t.partitions.iter().map(|p| p.partition_index).collect();
                    (t.name.0.to_string(), list)
                })
                .collect();
            let topics = r
                .topics
                .into_iter()
                .map(|t| g::TopicOffsets {
                    topic: t.name.0.to_string(),
                    partitions: t
                        .partitions
                        .into_iter()
                        .map(|p| g::PartitionOffset {
                            partition: partition(p.partition_index),
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: p
                                .committed_metadata
                                .map(|s| s.to_string())
                                .unwrap_or_default(),
                            commit_timestamp_ms: -1,
                        })
                        .collect(),
                })
                .collect();
            serve(
                m::Request::OffsetCommit(g::OffsetCommitRequest {
                    group_id: r.group_id.0.to_string(),
                    member_id: r.member_id.to_string(),
                    member_epoch: r.generation_id_or_member_epoch,
                    topics,
                }),
                Shape::OffsetCommit { partitions },
            )
        }
        ApiKey::OffsetFetch => {
            let r = body!(k::OffsetFetchRequest);
            let partitions: Option<Vec<(String, Vec<i32>)>> = r.topics.map(|topics| {
                topics
                    .into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let topics = partitions.as_ref().map(|list| {
                list.iter()
                    .map(|(topic, ps)| g::TopicPartitions {
                        topic: topic.clone(),
                        partitions: ps.iter().map(|p| partition(*p)).collect(),
                    })
                    .collect()
            });
            serve(
                m::Request::OffsetFetch(g::OffsetFetchRequest {
                    group_id: r.group_id.0.to_string(),
                    topics,
                }),
                Shape::OffsetFetch { partitions },
            )
        }
        ApiKey::JoinGroup => {
            let r = body!(k::JoinGroupRequest);
            let refuse = |reason: String| {
                let body = k::JoinGroupResponse::default()
                    .with_error_code(ResponseError::InconsistentGroupProtocol.code())
                    .with_generation_id(-1)
                    .with_member_id(r.member_id.clone())
                    .with_protocol_name(Some(StrBytes::default()));
                header.refuse(&body, reason)
            };
            if &*r.protocol_type != "consumer" {
                return refuse(format!(
                    "protocol type `{}`: only consumer groups (`consumer`) are served",
                    &*r.protocol_type
                ));
            }
            // An eager assignor the member offers, else the cooperative one: a group
            // has one assignor, and members rolled onto both keep the eager one the
            // group runs.
            let eager = |name: &str| {
                EAGER_PROTOCOLS
                    .iter()
                    .find(|(kafka, _)| *kafka == name)
                    .map(|&(_, meridian)| meridian)
            };
            let Some((protocol, assignor)) = r
                .protocols
                .iter()
                .find_map(|p| Some((p, eager(&p.name)?)))
                .or_else(|| {
                    r.protocols
                        .iter()
                        .find(|p| &*p.name == COOPERATIVE_PROTOCOL)
                        .map(|p| (p, COOPERATIVE_PROTOCOL))
                })
            else {
                let offered: Vec<&str> = r.protocols.iter().map(|p| &*p.name).collect();
                let served: Vec<&str> = EAGER_PROTOCOLS.iter().map(|(name, _)| *name).collect();
                return refuse(format!(
                    "assignors {offered:?}: Meridian's coordinator runs {served:?} \
                     and {COOPERATIVE_PROTOCOL:?} for Kafka clients"
                ));
            };
            let subscription = versioned::<k::ConsumerProtocolSubscription>(&protocol.metadata)
                .map_err(|reason| KafkaError::Malformed {
                    api,
                    version,
                    reason: format!("the `{}` subscription: {reason}", &*protocol.name),
                })?;
            if &*protocol.name == COOPERATIVE_PROTOCOL && !r.member_id.is_empty() {
                // A cooperative member rejoins holding partitions; its SyncGroup
                // reports them to the coordinator.
                let owned = subscription
                    .owned_partitions
                    .iter()
                    .map(|t| g::TopicPartitions {
                        topic: t.topic.0.to_string(),
                        partitions: t.partitions.iter().map(|&p| p.max(0) as u32).collect(),
                    });
                session.joined(&r.group_id.0, &r.member_id, owned.collect());
            }
            let session_timeout_ms = r.session_timeout_ms.max(0) as u32;
            let rebalance_timeout_ms = if version >= 1 {
                r.rebalance_timeout_ms.max(0) as u32
            } else {
                session_timeout_ms
            };
            serve(
                m::Request::JoinGroup(g::JoinGroupRequest {
                    group_id: r.group_id.0.to_string(),
                    member_id: r.member_id.to_string(),
                    instance_id: r.group_instance_id.map(|s| s.to_string()),
                    client_id: header.client_id.clone().unwrap_or_default(),
                    topics: subscription.topics.iter().map(|t| t.to_string()).collect(),
                    assignor: assignor.to_owned(),
                    session_timeout_ms,
                    rebalance_timeout_ms,
                }),
                Shape::JoinGroup {
                    protocol: protocol.name.clone(),
                },
            )
        }
        ApiKey::SyncGroup => {
            let r = body!(k::SyncGroupRequest);
            // An eager member syncs after giving up everything it held; a
            // cooperative one still holds what it said it owns when it joined.
            serve(
                m::Request::SyncGroup(g::SyncGroupRequest {
                    owned: session.owned(&r.group_id.0, &r.member_id),
                    group_id: r.group_id.0.to_string(),
                    member_id: r.member_id.to_string(),
                }),
                Shape::SyncGroup {
                    protocol_type: r.protocol_type,
                    protocol_name: r.protocol_name,
                },
            )
        }
        ApiKey::Heartbeat => {
            let r = body!(k::HeartbeatRequest);
            serve(
                m::Request::Heartbeat(g::HeartbeatRequest {
                    group_id: r.group_id.0.to_string(),
                    member_id: r.member_id.to_string(),
                    member_epoch: r.generation_id,
                    // Kafka's heartbeats are answered at once.
                    max_wait_ms: 0,
                }),
                Shape::Plain,
            )
        }
        ApiKey::LeaveGroup => {
            let r = body!(k::LeaveGroupRequest);
            let (member_id, instance_id, member) = if version >= 3 {
                let [one] = &r.members[..] else {
                    let body = k::LeaveGroupResponse::default()
                        .with_error_code(ResponseError::InvalidRequest.code());
                    let reason = format!(
                        "{} members leaving in one request: one at a time is served",
                        r.members.len()
                    );
                    return header.refuse(&body, reason);
                };
                let named = (one.member_id.clone(), one.group_instance_id.clone());
                (
                    one.member_id.to_string(),
                    one.group_instance_id.as_ref().map(|s| s.to_string()),
                    Some(named),
                )
            } else {
                (r.member_id.to_string(), None, None)
            };
            serve(
                m::Request::LeaveGroup(g::LeaveGroupRequest {
                    group_id: r.group_id.0.to_string(),
                    member_id,
                    instance_id,
                }),
                Shape::LeaveGroup { member },
            )
        }
        ApiKey::ListGroups => {
            let r = body!(k::ListGroupsRequest);
            serve(
                m::Request::ListGroups(g::ListGroupsRequest {}),
                Shape::ListGroups {
                    states: r.states_filter,
                },
            )
        }
        ApiKey::DescribeGroups => {
            let r = body!(k::DescribeGroupsRequest);
            serve(
                m::Request::DescribeGroups(g::DescribeGroupsRequest {
                    group_ids: r.groups.into_iter().map(|g| g.0.to_string()).collect(),
                }),
                Shape::Plain,
            )
        }
        ApiKey::DeleteGroups => {
            let r = body!(k::DeleteGroupsRequest);
            serve(
                m::Request::DeleteGroups(g::DeleteGroupsRequest {
                    group_ids: r
                        .groups_names
                        .into_iter()
                        .map(|g| g.0.to_string())
                        .collect(),
                }),
                Shape::Plain,
            )
        }
        ApiKey::OffsetDelete => {
            let r = body!(k::OffsetDeleteRequest);
            let partitions: Vec<(String, Vec<i32>)> = r
                .topics
                .into_iter()
                .map(|t| {
                    let list = t.partitions.iter().map(|p| p.partition_index).collect();
                    (t.name.0.to_string(), list)
                })
                .collect();
            // Meridian reads a topic without partitions as all of them; Kafka as none.
            let topics = partitions
                .iter()
                .filter(|(_, ps)| !ps.is_empty())
                .map(|(topic, ps)| g::TopicPartitions {
                    topic: topic.clone(),
                    partitions: ps.iter().map(|&p| partition(p)).collect(),
                })
                .collect();
            serve(
                m::Request::OffsetDelete(g::OffsetDeleteRequest {
                    group_id: r.group_id.0.to_string(),
                    topics,
                }),
                Shape::OffsetDelete { partitions },
            )
        }
        _ => Err(KafkaError::UnknownApi(key)),
    }
}

/// Kafka's OffsetDelete answer: a group's failure at the top, without partitions;
/// otherwise each partition named, with its topic's refusal (a member subscribes to
/// it, the client may not read it) or none.
fn offset_delete(
    r: g::OffsetDeleteResponse,
    partitions: Vec<(String, Vec<i32>)>,
) -> k::OffsetDeleteResponse {
    use k::offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
    let group_failed = !r.error.is_ok() && !r.refused.iter().any(|t| t.error == r.error);
    if group_failed {
        return k::OffsetDeleteResponse::default().with_error_code(code(r.error));
    }
    let topics = partitions
        .into_iter()
        .map(|(topic, ps)| {
            let refused = r.refused.iter().find(|t| t.topic == topic);
            let answers = ps
                .into_iter()
                .map(|p| {
                    let error = match refused {
                        Some(t) => t.error,
                        None if p < 0 => ErrorCode::UnknownTopic,
                        None => ErrorCode::None,
                    };
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p)
                        .with_error_code(code(error))
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(answers)
        })
        .collect();
    k::OffsetDeleteResponse::default().with_topics(topics)
}

/// Kafka's name for a group state of Meridian's coordinator. A group moving
/// partitions (`Reconciling`) is what Kafka calls a rebalance under way.
fn kafka_state(state: &str) -> &str {
    match state {
        "Reconciling" => "PreparingRebalance",
        other => other,
    }
}

/// Kafka's embedded group messages: a version, then the message at that version
/// (read at the newest this crate knows when the client's is newer still).
fn versioned<T: Decodable + kafka_protocol::protocol::Message>(bytes: &Bytes) -> Result<T, String> {
    let mut buf = bytes.clone();
    if buf.len() < 2 {
        return Err("shorter than its version".into());
    }
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    bytes::Buf::advance(&mut buf, 2);
    if version < T::VERSIONS.min {
        return Err(format!("version {version}"));
    }
    T::decode(&mut buf, version.min(T::VERSIONS.max)).map_err(|e| reason(&e))
}

/// Kafka's partition index, for Meridian. A negative one becomes an index no topic
/// has (`max_partitions_per_topic` is far below it), so the broker answers it as a
/// partition out of range, as Kafka does; not [`m::UNASSIGNED_PARTITION`], which
/// would ask a partitioner plugin to route the records.
fn partition(index: i32) -> u32 {
    u32::try_from(index).unwrap_or(m::UNASSIGNED_PARTITION - 1)
}

/// A produce of a transactional producer, refused partition by partition.
fn refuse_produce(r: &k::ProduceRequest) -> k::ProduceResponse {
    let code = ResponseError::TransactionalIdAuthorizationFailed.code();
    let responses = r
        .topic_data
        .iter()
        .map(|t| {
            k::produce_response::TopicProduceResponse::default()
                .with_name(t.name.clone())
                .with_partition_responses(
                    t.partition_data
                        .iter()
                        .map(|p| {
                            k::produce_response::PartitionProduceResponse::default()
                                .with_index(p.index)
                                .with_error_code(code)
                                .with_base_offset(-1)
                                .with_error_message(Some(StrBytes::from_static_str(TRANSACTIONS)))
                        })
                        .collect(),
                )
        })
        .collect();
    k::ProduceResponse::default().with_responses(responses)
}

fn api_versions(error_code: i16) -> k::ApiVersionsResponse {
    let api_keys = APIS
        .iter()
        .map(|&(api, min, max)| {
            k::api_versions_response::ApiVersion::default()
                .with_api_key(api as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect();
    k::ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(api_keys)
}

impl Header {
    fn refuse<T: Encodable>(&self, body: &T, reason: String) -> Result<Step, KafkaError> {
        Ok(Step::Refused {
            reply: self.frame(body)?,
            reason,
        })
    }

    /// The response frame: size, response header, body.
    fn frame<T: Encodable>(&self, body: &T) -> Result<Bytes, KafkaError> {
        let encode_error = |reason: String| KafkaError::Encode {
            api: self.api,
            version: self.version,
            reason,
        };
        let mut out = BytesMut::with_capacity(64);
        out.put_i32(0);
        k::ResponseHeader::default()
            .with_correlation_id(self.correlation_id)
            .encode(&mut out, self.api.response_header_version(self.version))
            .map_err(|e| encode_error(reason(&e)))?;
        body.encode(&mut out, self.version)
            .map_err(|e| encode_error(reason(&e)))?;
        let size = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&size.to_be_bytes());
        Ok(out.freeze())
    }
}

impl Pending {
    /// Whether the response names brokers (Metadata, FindCoordinator,
    /// DescribeCluster, and Produce and Fetch with KIP-951's leader hints): the
    /// only ones whose [`Listener::brokers`] must be current.
    pub fn names_brokers(&self) -> bool {
        matches!(
            self.header.api,
            ApiKey::Metadata
                | ApiKey::FindCoordinator
                | ApiKey::DescribeCluster
                | ApiKey::Produce
                | ApiKey::Fetch
        )
    }

    /// Whether the response lists this broker's settings (DescribeConfigs): the only
    /// one whose [`Listener::settings`] must be current.
    pub fn reads_settings(&self) -> bool {
        self.header.api == ApiKey::DescribeConfigs
    }

    pub fn api(&self) -> ApiKey {
        self.header.api
    }

    pub fn version(&self) -> i16 {
        self.header.version
    }

    /// The `client.id` the client sent, if any.
    pub fn client_id(&self) -> Option<&str> {
        self.header.client_id.as_deref()
    }

    /// The response frame for the broker's answer; `None` when there is none to
    /// send (a produce with acks=0).
    pub fn respond(
        self,
        answer: Option<m::Response>,
        listener: &Listener,
    ) -> Result<Option<Bytes>, KafkaError> {
        self.respond_with_leaders(answer, listener, &|_, _| None)
    }

    /// As [`Pending::respond`], with where each partition's leader is now: a
    /// Produce answer (version 10 on) that refuses a partition as
    /// `NOT_LEADER_OR_FOLLOWER`, or a Fetch answer (version 16 on; the leader
    /// alone from 12) that refuses one as that or `FENCED_LEADER_EPOCH`, names
    /// its current leader and that leader's listener (KIP-951), so the client
    /// goes there without refreshing its metadata first.
    pub fn respond_with_leaders(
        self,
        answer: Option<m::Response>,
        listener: &Listener,
        leader_of: LeaderOf<'_>,
    ) -> Result<Option<Bytes>, KafkaError> {
        let Some(answer) = answer else {
            return Ok(None);
        };
        let h = &self.header;
        if answer.api_key() != self.sent {
            return Err(KafkaError::WrongAnswer {
                api: h.api,
                got: answer.api_key(),
            });
        }
        let frame = match (answer, self.shape) {
            (m::Response::Metadata(r), Shape::DescribeCluster) => {
                h.frame(&describe_cluster(r, listener))?
            }
            (m::Response::Metadata(r), Shape::MetadataByIds { ids }) => {
                h.frame(&metadata_by_ids(r, ids, listener))?
            }
            (m::Response::Metadata(r), Shape::DescribeTopicPartitions(page)) => {
                h.frame(&describe_topic_partitions(r, page))?
            }
            (m::Response::Metadata(r), _) => h.frame(&metadata(r, listener))?,
            (m::Response::Produce(r), _) => h.frame(&produce(r, listener, leader_of))?,
            (m::Response::Fetch(r), _) => h.frame(&fetch(r, listener, leader_of))?,
            (m::Response::ListOffsets(r), _) => h.frame(&list_offsets(r, h.version))?,
            (m::Response::OffsetForLeaderEpoch(r), _) => h.frame(&epoch_end_offsets(r))?,
            (m::Response::CreateTopics(r), Shape::CreateTopics { refused }) => {
                h.frame(&create_topics(r, refused, listener))?
            }
            (m::Response::DescribeTopics(r), Shape::DescribeConfigs { asked }) => {
                let answer = admin::DescribedBy::Topics(r);
                h.frame(&admin::described_configs(answer, asked, listener))?
            }
            (m::Response::DescribeCluster(r), Shape::DescribeConfigs { asked }) => {
                let answer = admin::DescribedBy::Cluster(r);
                h.frame(&admin::described_configs(answer, asked, listener))?
            }

            (m::Response::AlterTopicConfigs(r), Shape::AlterConfigs { refused, replace }) => {
                altered_configs_frame(h, Some(r), refused, replace)?
            }
            (m::Response::CreatePartitions(r), Shape::CreatePartitions { refused }) => {
                h.frame(&admin::created_partitions(r, refused))?
            }
            (m::Response::DeleteRecords(r), _) => h.frame(&admin::deleted_records(r))?,
            (m::Response::AlterPartitionReassignments(r), _) => {
                h.frame(&replicas::altered_reassignments(r))?
            }
            (m::Response::ListPartitionReassignments(r), Shape::ListReassignments { asked }) => {
                h.frame(&replicas::listed_reassignments(r, asked))?
            }
            (m::Response::ElectLeaders(r), _) => h.frame(&replicas::elected_leaders(r))?,
            (m::Response::UnregisterBroker(r), _) => h.frame(
                &k::UnregisterBrokerResponse::default()
                    .with_error_code(code(r.error))
                    .with_error_message(message(r.error, r.message)),
            )?,
            (m::Response::DescribeLogs(r), _) => h.frame(&replicas::described_log_dirs(r))?,
            (m::Response::DeleteTopics(r), _) => {
                let result = |name: Option<String>, id, error, text| {
                    k::delete_topics_response::DeletableTopicResult::default()
                        .with_name(name.map(topic_name))
                        .with_topic_id(kafka_topic_id(id))
                        .with_error_code(code(error))
                        .with_error_message(message(error, text))
                };
                let by_name = (r.results.into_iter()).map(|t| {
                    result(
                        Some(t.name),
                        meridian_wire::TopicId::NONE,
                        t.error,
                        t.message,
                    )
                });
                // By ID (version 6): a null name where no topic has the ID, as Kafka.
                let by_id = (r.by_id.into_iter()).map(|d| {
                    result(
                        Some(d.name).filter(|n| !n.is_empty()),
                        d.id,
                        d.error,
                        d.message,
                    )
                });
                let responses = by_name.chain(by_id).collect();
                h.frame(&k::DeleteTopicsResponse::default().with_responses(responses))?
            }
            (m::Response::InitProducerId(r), _) => h.frame(
                &k::InitProducerIdResponse::default()
                    .with_error_code(code(r.error))
                    .with_producer_id(r.producer_id.into())
                    .with_producer_epoch(r.producer_epoch),
            )?,
            (m::Response::FindCoordinator(r), _) => {
                let coordinator = listener.broker(r.broker_id).filter(|_| r.error.is_ok());
                let body = if let Some(b) = coordinator {
                    k::FindCoordinatorResponse::default()
                        .with_node_id(broker_id(b.id))
                        .with_host(StrBytes::from_string(b.host.clone()))
                        .with_port(b.port.into())
                } else {
                    let (error, text) = if r.error.is_ok() {
                        (
                            ErrorCode::CoordinatorNotAvailable,
                            format!("the group's coordinator is broker {}, which has no Kafka listener (kafka_listen)", r.broker_id),
                        )
                    } else {
                        (r.error, r.message)
                    };
                    k::FindCoordinatorResponse::default()
                        .with_error_code(code(error))
                        .with_error_message(message(error, text))
                        .with_node_id((-1).into())
                        .with_port(-1)
                };
                h.frame(&body)?
            }
            (m::Response::OffsetCommit(r), Shape::OffsetCommit { partitions }) => {
                let error = match r.error {
                    // A commit from outside a group that has members (librdkafka's
                    // after its session ran out, say): Kafka answers that the
                    // member is unknown, which clients answer by joining again.
                    // `NON_EMPTY_GROUP` is DeleteGroups' word, which they do not know here.
                    ErrorCode::NonEmptyGroup => ResponseError::UnknownMemberId.code(),
                    other => code(other),
                };
                let topics = partitions
                    .into_iter()
                    .map(|(topic, ps)| {
                        k::offset_commit_response::OffsetCommitResponseTopic::default()
                            .with_name(topic_name(topic))
                            .with_partitions(
                                ps.into_iter()
                                    .map(|p| {
                                        k::offset_commit_response::OffsetCommitResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_error_code(error)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                h.frame(&k::OffsetCommitResponse::default().with_topics(topics))?
            }
            (m::Response::OffsetFetch(r), Shape::OffsetFetch { partitions }) => {
                h.frame(&offset_fetch(r, partitions))?
            }
            (m::Response::JoinGroup(r), Shape::JoinGroup { protocol }) => {
                // Nobody leads: the coordinator assigns, and SyncGroup hands it out.
                let body = k::JoinGroupResponse::default()
                    .with_error_code(code(r.error))
                    .with_generation_id(if r.error.is_ok() { r.member_epoch } else { -1 })
                    .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
                    .with_protocol_name(Some(protocol))
                    .with_leader(StrBytes::default())
                    .with_member_id(StrBytes::from_string(r.member_id));
                h.frame(&body)?
            }
            (
                m::Response::SyncGroup(r),
                Shape::SyncGroup {
                    protocol_type,
                    protocol_name,
                },
            ) => {
                let assignment = if r.error.is_ok() {
                    assignment(&r.assignment, ApiKey::SyncGroup)?
                } else {
                    Bytes::new()
                };
                let body = k::SyncGroupResponse::default()
                    .with_error_code(code(r.error))
                    .with_protocol_type(protocol_type)
                    .with_protocol_name(protocol_name)
                    .with_assignment(assignment);
                h.frame(&body)?
            }
            (m::Response::Heartbeat(r), _) => {
                let error = if r.error.is_ok() && r.sync_needed {
                    // Partitions are to move: give them up, join again, sync.
                    ResponseError::RebalanceInProgress.code()
                } else {
                    code(r.error)
                };
                h.frame(&k::HeartbeatResponse::default().with_error_code(error))?
            }
            (m::Response::LeaveGroup(r), Shape::LeaveGroup { member }) => {
                let error = code(r.error);
                let members = member
                    .into_iter()
                    .map(|(member_id, instance_id)| {
                        k::leave_group_response::MemberResponse::default()
                            .with_member_id(member_id)
                            .with_group_instance_id(instance_id)
                            .with_error_code(error)
                    })
                    .collect();
                h.frame(
                    &k::LeaveGroupResponse::default()
                        .with_error_code(error)
                        .with_members(members),
                )?
            }
            (m::Response::ListGroups(r), Shape::ListGroups { states }) => {
                let groups = r
                    .groups
                    .into_iter()
                    .filter(|l| {
                        states.is_empty() || states.iter().any(|s| &**s == kafka_state(&l.state))
                    })
                    .map(|l| {
                        k::list_groups_response::ListedGroup::default()
                            .with_group_state(StrBytes::from_string(kafka_state(&l.state).into()))
                            .with_group_id(k::GroupId(StrBytes::from_string(l.group_id)))
                            .with_protocol_type(StrBytes::from_static_str("consumer"))
                            .with_group_type(StrBytes::from_static_str("classic"))
                    })
                    .collect();
                h.frame(&k::ListGroupsResponse::default().with_groups(groups))?
            }
            (m::Response::DeleteGroups(r), _) => {
                let results = r
                    .results
                    .into_iter()
                    .map(|g| {
                        k::delete_groups_response::DeletableGroupResult::default()
                            .with_group_id(k::GroupId(StrBytes::from_string(g.group_id)))
                            .with_error_code(code(g.error))
                    })
                    .collect();
                h.frame(&k::DeleteGroupsResponse::default().with_results(results))?
            }
            (m::Response::OffsetDelete(r), Shape::OffsetDelete { partitions }) => {
                h.frame(&offset_delete(r, partitions))?
            }
            (m::Response::DescribeGroups(r), _) => {
                let groups = r
                    .groups
                    .into_iter()
                    .map(|d| described_group(d, h.version))
                    .collect::<Result<_, _>>()?;
                h.frame(&k::DescribeGroupsResponse::default().with_groups(groups))?
            }
            (other, _) => {
                return Err(KafkaError::WrongAnswer {
                    api: h.api,
                    got: other.api_key(),
                })
            }
        };
        Ok(Some(frame))
    }
}

/// A group as Kafka's group tools read it: each member's subscription and what it
/// owns, in the consumer protocol's own encodings; at `version`, only the fields it
/// has (a static member's instance id from 4, an error message from 6).
fn described_group(
    d: g::GroupDescription,
    version: i16,
) -> Result<k::describe_groups_response::DescribedGroup, KafkaError> {
    if d.error == ErrorCode::GroupIdNotFound && version < 6 {
        // Before version 6 a group that does not exist is described as Kafka's
        // coordinator does, `Dead` and without an error; admin clients (KafkaJS's
        // setOffsets, say) take that as a group with no running members.
        return Ok(k::describe_groups_response::DescribedGroup::default()
            .with_group_id(k::GroupId(StrBytes::from_string(d.group_id)))
            .with_group_state(StrBytes::from_static_str("Dead")));
    }
    let members = d
        .members
        .into_iter()
        .map(|member| {
            let topics = member
                .topics
                .into_iter()
                .map(StrBytes::from_string)
                .collect();
            let subscription = k::ConsumerProtocolSubscription::default().with_topics(topics);
            let metadata = embedded(&subscription, ApiKey::DescribeGroups, "a subscription")?;
            Ok(k::describe_groups_response::DescribedGroupMember::default()
                .with_member_id(StrBytes::from_string(member.member_id))
                .with_group_instance_id(
                    member
                        .instance_id
                        .filter(|_| version >= 4)
                        .map(StrBytes::from_string),
                )
                .with_client_id(StrBytes::from_string(member.client_id))
                .with_client_host(StrBytes::from_string(member.client_host))
                .with_member_metadata(metadata)
                .with_member_assignment(assignment(&member.owned, ApiKey::DescribeGroups)?))
        })
        .collect::<Result<_, KafkaError>>()?;
    Ok(k::describe_groups_response::DescribedGroup::default()
        .with_error_code(code(d.error))
        .with_error_message(message(d.error, d.message).filter(|_| version >= 6))
        .with_group_id(k::GroupId(StrBytes::from_string(d.group_id)))
        .with_group_state(StrBytes::from_string(kafka_state(&d.state).into()))
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocol_data(StrBytes::from_string(d.assignor))
        .with_members(members))
}

/// A member's assignment as Kafka's consumers read it: `ConsumerProtocolAssignment`
/// version 0, after its version.
fn assignment(partitions: &[g::TopicPartitions], api: ApiKey) -> Result<Bytes, KafkaError> {
    let assigned = partitions
        .iter()
        .map(|t| {
            k::consumer_protocol_assignment::TopicPartition::default()
                .with_topic(topic_name(t.topic.clone()))
                .with_partitions(t.partitions.iter().map(|p| *p as i32).collect())
        })
        .collect();
    let message = k::ConsumerProtocolAssignment::default().with_assigned_partitions(assigned);
    embedded(&message, api, "an assignment")
}

/// A group message embedded in another as bytes: its version (0), then the message
/// at that version. What [`versioned`] reads.
fn embedded<T: Encodable>(message: &T, api: ApiKey, what: &str) -> Result<Bytes, KafkaError> {
    let mut out = BytesMut::new();
    out.put_i16(0);
    message
        .encode(&mut out, 0)
        .map_err(|e| KafkaError::Encode {
            api,
            version: 0,
            reason: format!("{what}: {}", reason(&e)),
        })?;
    Ok(out.freeze())
}

fn topic_name(name: String) -> TopicName {
    TopicName(StrBytes::from_string(name))
}

fn broker_id(id: u32) -> BrokerId {
    BrokerId(i32::try_from(id).unwrap_or(-1))
}

/// Meridian's message for a failure; none for success.
fn message(error: ErrorCode, text: String) -> Option<StrBytes> {
    if error.is_ok() {
        None
    } else if text.is_empty() {
        Some(StrBytes::from_static_str(error.description()))
    } else {
        Some(StrBytes::from_string(text))
    }
}

/// The response frame to either AlterConfigs: the legacy one's (`replace`) or
/// IncrementalAlterConfigs', from the broker's answer (`None`: every resource was
/// refused before it) and the refusals.
fn altered_configs_frame(
    h: &Header,
    answer: Option<meridian_wire::topic_changes::AlterTopicConfigsResponse>,
    refused: Vec<admin::Refusal>,
    replace: bool,
) -> Result<Bytes, KafkaError> {
    if replace {
        h.frame(&admin::replaced_configs(answer, refused))
    } else {
        h.frame(&admin::altered_configs(answer, refused))
    }
}

/// The live brokers of a Metadata answer, each at its Kafka listener; one without
/// (a cluster broker without `kafka_listen`) is left out, and a client sees the
/// partitions it leads as without a reachable leader.
fn kafka_brokers<'a>(
    r: &'a m::MetadataResponse,
    listener: &'a Listener,
) -> impl Iterator<Item = &'a KafkaBroker> {
    r.brokers
        .iter()
        .filter_map(|b| listener.broker(b.broker_id))
}

/// DescribeCluster's `endpoint_type` asking about brokers.
const BROKER_ENDPOINTS: i8 = 1;

/// DescribeCluster (the admin clients' `describeCluster`): the cluster id, the
/// controller and the live brokers, as Metadata names them. Authorized operations
/// are not computed: their field says "not known" (Kafka's `Integer.MIN_VALUE`).
fn describe_cluster(r: m::MetadataResponse, listener: &Listener) -> k::DescribeClusterResponse {
    use k::describe_cluster_response::DescribeClusterBroker;
    let brokers = kafka_brokers(&r, listener)
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(broker_id(b.id))
                .with_host(StrBytes::from_string(b.host.clone()))
                .with_port(b.port.into())
                .with_rack(b.rack.clone().map(StrBytes::from_string))
        })
        .collect();
    k::DescribeClusterResponse::default()
        .with_endpoint_type(BROKER_ENDPOINTS)
        .with_cluster_id(StrBytes::from_string(listener.cluster_id.clone()))
        .with_controller_id(broker_id(r.controller_id))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(i32::MIN)
}

fn metadata(r: m::MetadataResponse, listener: &Listener) -> k::MetadataResponse {
    let brokers = kafka_brokers(&r, listener)
        .map(|b| {
            k::metadata_response::MetadataResponseBroker::default()
                .with_node_id(broker_id(b.id))
                .with_host(StrBytes::from_string(b.host.clone()))
                .with_port(b.port.into())
                .with_rack(b.rack.clone().map(StrBytes::from_string))
        })
        .collect();
    let ids = |list: Vec<u32>| list.into_iter().map(broker_id).collect();
    let topics = r
        .topics
        .into_iter()
        .map(|t| {
            // The broker's own topics (`__consumer_offsets`), as Kafka marks them.
            let internal = t.name.starts_with("__");
            k::metadata_response::MetadataResponseTopic::default()
                .with_is_internal(internal)
                .with_topic_id(kafka_topic_id(t.id))
                .with_name(Some(topic_name(t.name)))
                .with_error_code(code(t.error))
                .with_partitions(
                    t.partitions
                        .into_iter()
                        .map(|p| {
                            k::metadata_response::MetadataResponsePartition::default()
                                .with_partition_index(p.partition as i32)
                                .with_error_code(code(p.error))
                                .with_leader_id(broker_id(p.leader))
                                .with_leader_epoch(p.leader_epoch)
                                .with_replica_nodes(ids(p.replicas))
                                .with_isr_nodes(ids(p.isr))
                        })
                        .collect(),
                )
        })
        .collect();
    k::MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(listener.cluster_id.clone())))
        .with_controller_id(broker_id(r.controller_id))
        .with_topics(topics)
}

/// Metadata of the topics with `ids` (in the order asked) from `r`, which lists
/// every topic the client may see, then an `UNKNOWN_TOPIC_ID` for each ID none of
/// them has, as Kafka answers (a topic the client may not describe is as good as
/// unknown).
fn metadata_by_ids(
    mut r: m::MetadataResponse,
    mut ids: Vec<uuid::Uuid>,
    listener: &Listener,
) -> k::MetadataResponse {
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    let mut listed = std::mem::take(&mut r.topics);
    let mut unknown = Vec::new();
    for id in ids {
        match listed.iter().position(|t| kafka_topic_id(t.id) == id) {
            Some(at) => r.topics.push(listed.swap_remove(at)),
            None => unknown.push(
                k::metadata_response::MetadataResponseTopic::default()
                    .with_name(None)
                    .with_topic_id(id)
                    .with_error_code(ResponseError::UnknownTopicId.code()),
            ),
        }
    }
    let mut answer = metadata(r, listener);
    answer.topics.extend(unknown);
    answer
}

/// The most partitions one DescribeTopicPartitions answer describes, whatever the
/// client asks: Kafka's default `max.request.partition.size.limit`.
pub const MAX_PARTITIONS_PER_PAGE: i32 = 2000;

/// What a DescribeTopicPartitions request asks for: the topics named (sorted, no
/// repeats; none: every topic), where the previous page stopped, and how many
/// partitions this page may hold.
#[derive(Debug)]
struct TopicPartitionsPage {
    names: Vec<String>,
    cursor: Option<(String, i32)>,
    limit: i32,
}

/// One page of DescribeTopicPartitions (KIP-966), Kafka's way: topics in name
/// order from the cursor's (its partitions from the cursor's index), at most
/// `limit` partitions, and the cursor of the next page when some are left. A topic
/// named that the client may not see, or that does not exist, is
/// `UNKNOWN_TOPIC_OR_PARTITION` (costing no partition); asked for every topic, the
/// answer holds only those that exist.
fn describe_topic_partitions(
    r: m::MetadataResponse,
    page: TopicPartitionsPage,
) -> k::DescribeTopicPartitionsResponse {
    use k::describe_topic_partitions_response::{
        Cursor, DescribeTopicPartitionsResponsePartition as Partition,
        DescribeTopicPartitionsResponseTopic as Topic,
    };
    let mut listed: std::collections::BTreeMap<String, m::TopicMetadata> = r
        .topics
        .into_iter()
        .filter(|t| t.error == ErrorCode::None)
        .map(|t| (t.name.clone(), t))
        .collect();
    let (from_topic, from_partition) = page.cursor.unwrap_or_default();
    let names: Vec<String> = if page.names.is_empty() {
        listed.keys().cloned().collect()
    } else {
        page.names
    };
    let mut left = page.limit.max(1) as usize;
    let mut topics = Vec::new();
    let mut next_cursor = None;
    let mut names = names.into_iter().filter(|n| *n >= from_topic);
    while let Some(name) = names.next() {
        let Some(t) = listed.remove(&name) else {
            topics.push(
                Topic::default()
                    .with_name(Some(topic_name(name)))
                    .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
            );
            continue;
        };
        let first = if name == from_topic {
            from_partition
        } else {
            0
        };
        let ids = |list: Vec<u32>| list.into_iter().map(broker_id).collect();
        let mut partitions: Vec<Partition> = t
            .partitions
            .into_iter()
            .filter(|p| i64::from(p.partition) >= i64::from(first))
            .map(|p| {
                Partition::default()
                    .with_partition_index(p.partition as i32)
                    .with_error_code(code(p.error))
                    .with_leader_id(broker_id(p.leader))
                    .with_leader_epoch(p.leader_epoch)
                    .with_replica_nodes(ids(p.replicas))
                    .with_isr_nodes(ids(p.isr))
                    // No eligible leader replicas (KIP-966's ELR): none kept.
                    .with_eligible_leader_replicas(Some(Vec::new()))
                    .with_last_known_elr(Some(Vec::new()))
            })
            .collect();
        partitions.sort_by_key(|p| p.partition_index);
        if partitions.len() > left {
            next_cursor = Some(
                Cursor::default()
                    .with_topic_name(topic_name(name.clone()))
                    .with_partition_index(partitions[left].partition_index),
            );
            partitions.truncate(left);
        }
        left -= partitions.len();
        topics.push(
            Topic::default()
                .with_name(Some(topic_name(name.clone())))
                .with_topic_id(kafka_topic_id(t.id))
                .with_is_internal(name.starts_with("__"))
                .with_partitions(partitions),
        );
        if next_cursor.is_some() {
            break;
        }
        if left == 0 {
            // Full: the next page starts at the next topic.
            next_cursor = names.next().map(|n| {
                Cursor::default()
                    .with_topic_name(topic_name(n))
                    .with_partition_index(0)
            });
            break;
        }
    }
    k::DescribeTopicPartitionsResponse::default()
        .with_topics(topics)
        .with_next_cursor(next_cursor)
}

/// A topic's ID as Kafka's messages carry it (the nil UUID: none).
pub fn kafka_topic_id(id: meridian_wire::TopicId) -> uuid::Uuid {
    uuid::Uuid::from_bytes(id.0)
}

/// Where a partition (topic, index) is led now, as the answering broker knows it:
/// the leader's id and epoch (`None`: unknown, or offline).
pub type LeaderOf<'a> = &'a dyn Fn(&str, u32) -> Option<(u32, i32)>;

/// A KIP-951 `CurrentLeader` of type `$leader` (Produce's and Fetch's are two
/// types of one shape): `$hint`'s broker and epoch, or Kafka's unset -1/-1.
macro_rules! current_leader {
    ($leader:ty, $hint:expr) => {
        match $hint {
            Some((id, epoch)) => <$leader>::default()
                .with_leader_id(id)
                .with_leader_epoch(epoch),
            None => <$leader>::default(),
        }
    };
}

/// KIP-951 `NodeEndpoints` of type `$endpoint` (Produce's and Fetch's are two
/// types of one shape) for the Kafka listeners `$named`.
macro_rules! node_endpoints {
    ($endpoint:ty, $named:expr) => {
        $named
            .into_iter()
            .map(|b: &KafkaBroker| {
                <$endpoint>::default()
                    .with_node_id(broker_id(b.id))
                    .with_host(StrBytes::from_string(b.host.clone()))
                    .with_port(i32::from(b.port))
                    .with_rack(b.rack.clone().map(StrBytes::from_string))
            })
            .collect()
    };
}

/// KIP-951's hints: the current leader of each partition an answer refuses as
/// not this broker's, and the Kafka listeners of the leaders so named, for the
/// client to go there without refreshing its metadata first.
struct LeaderHints<'a> {
    listener: &'a Listener,
    leader_of: LeaderOf<'a>,
    /// The refusals that name the leader.
    refusals: &'a [ErrorCode],
    /// The leaders named so far, each once.
    named: Vec<&'a KafkaBroker>,
}

impl<'a> LeaderHints<'a> {
    fn new(listener: &'a Listener, leader_of: LeaderOf<'a>, refusals: &'a [ErrorCode]) -> Self {
        LeaderHints {
            listener,
            leader_of,
            refusals,
            named: Vec::new(),
        }
    }

    /// The leader (Kafka's id) and epoch of `partition` of `topic` when `error`
    /// is one of the refusals and the leader has a Kafka listener to name.
    fn leader(&mut self, topic: &str, partition: u32, error: ErrorCode) -> Option<(BrokerId, i32)> {
        if !self.refusals.contains(&error) {
            return None;
        }
        let (leader, epoch) = (self.leader_of)(topic, partition)?;
        let broker = self.listener.brokers.iter().find(|b| b.id == leader)?;
        if !self.named.contains(&broker) {
            self.named.push(broker);
        }
        Some((broker_id(leader), epoch))
    }
}

fn produce(
    r: m::ProduceResponse,
    listener: &Listener,
    leader_of: LeaderOf<'_>,
) -> k::ProduceResponse {
    use k::produce_response::{LeaderIdAndEpoch, NodeEndpoint};
    // KIP-951: a partition refused as not this broker's names its leader.
    let mut hints = LeaderHints::new(listener, leader_of, &[ErrorCode::NotLeaderOrFollower]);
    let responses = r
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let hint = hints.leader(&t.name, p.partition, p.error);
                    let leader = current_leader!(LeaderIdAndEpoch, hint);
                    k::produce_response::PartitionProduceResponse::default()
                        .with_index(p.partition as i32)
                        .with_error_code(code(p.error))
                        .with_base_offset(p.base_offset)
                        .with_log_append_time_ms(p.log_append_time)
                        .with_log_start_offset(p.log_start_offset)
                        .with_current_leader(leader)
                        .with_error_message(message(p.error, p.message))
                })
                .collect();
            k::produce_response::TopicProduceResponse::default()
                .with_name(topic_name(t.name))
                .with_partition_responses(partitions)
        })
        .collect();
    let node_endpoints = node_endpoints!(NodeEndpoint, hints.named);
    k::ProduceResponse::default()
        .with_responses(responses)
        .with_node_endpoints(node_endpoints)
}

/// Kafka's Fetch answer. A partition refused as not this broker's, or for an
/// epoch older than its leader's, names the current leader (version 12 on) and
/// the answer that leader's listener (version 16 on): KIP-951, as for Produce.
fn fetch(r: m::FetchResponse, listener: &Listener, leader_of: LeaderOf<'_>) -> k::FetchResponse {
    use k::fetch_response::{LeaderIdAndEpoch, NodeEndpoint};
    let refusals = [ErrorCode::NotLeaderOrFollower, ErrorCode::FencedLeaderEpoch];
    let mut hints = LeaderHints::new(listener, leader_of, &refusals);
    let responses = r
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let hint = hints.leader(&t.name, p.partition, p.error);
                    let leader = current_leader!(LeaderIdAndEpoch, hint);
                    // No transactions: everything below the high watermark is
                    // stable, and nothing was aborted.
                    k::fetch_response::PartitionData::default()
                        .with_partition_index(p.partition as i32)
                        .with_error_code(code(p.error))
                        .with_high_watermark(p.high_watermark)
                        .with_last_stable_offset(p.high_watermark)
                        .with_log_start_offset(p.log_start_offset)
                        .with_aborted_transactions(Some(Vec::new()))
                        .with_preferred_read_replica((-1).into())
                        .with_diverging_epoch(diverging_epoch(p.diverging_epoch))
                        .with_current_leader(leader)
                        .with_records(Some(p.records))
                })
                .collect();
            k::fetch_response::FetchableTopicResponse::default()
                .with_topic(topic_name(t.name))
                .with_topic_id(kafka_topic_id(t.id))
                .with_partitions(partitions)
        })
        .collect();
    let node_endpoints = node_endpoints!(NodeEndpoint, hints.named);
    // Session 0: no fetch session was created; the client keeps sending full fetches.
    k::FetchResponse::default()
        .with_session_id(0)
        .with_responses(responses)
        .with_node_endpoints(node_endpoints)
}

/// Where a consumer's log diverges from the leader's (Fetch version 12 on; only a
/// request naming its last fetched epoch, which only version 12 on carries, can
/// get one): the largest epoch the leader has at or below it, and where that epoch
/// ends, for the consumer to truncate to. Unset is Kafka's -1/-1.
fn diverging_epoch(diverging: Option<m::DivergingEpoch>) -> k::fetch_response::EpochEndOffset {
    let unset = k::fetch_response::EpochEndOffset::default();
    match diverging {
        Some(d) => unset.with_epoch(d.epoch).with_end_offset(d.end_offset),
        None => unset,
    }
}

/// Kafka's ListOffsets answer at `version`: the offsets' leader epochs from version
/// 4 (an older version has no field for them).
fn list_offsets(r: m::ListOffsetsResponse, version: i16) -> k::ListOffsetsResponse {
    let topics = r
        .topics
        .into_iter()
        .map(|t| {
            k::list_offsets_response::ListOffsetsTopicResponse::default()
                .with_name(topic_name(t.name))
                .with_partitions(
                    t.partitions
                        .into_iter()
                        .map(|p| {
                            k::list_offsets_response::ListOffsetsPartitionResponse::default()
                                .with_partition_index(p.partition as i32)
                                .with_error_code(code(p.error))
                                .with_offset(p.offset)
                                .with_timestamp(p.timestamp)
                                .with_leader_epoch(if version >= 4 {
                                    p.leader_epoch
                                } else {
                                    m::NO_LEADER_EPOCH
                                })
                        })
                        .collect(),
                )
        })
        .collect();
    k::ListOffsetsResponse::default().with_topics(topics)
}

/// A consumer's OffsetForLeaderEpoch (Kafka's `replica_id` is not asked: whoever
/// sends it gets the leader's answer, as a consumer does).
fn offset_for_leader_epoch(r: k::OffsetForLeaderEpochRequest) -> m::Request {
    let topics = r
        .topics
        .into_iter()
        .map(|t| m::EpochQueryTopic {
            name: t.topic.0.to_string(),
            partitions: t
                .partitions
                .into_iter()
                .map(|p| m::EpochQuery {
                    partition: partition(p.partition),
                    current_leader_epoch: p.current_leader_epoch,
                    leader_epoch: p.leader_epoch,
                })
                .collect(),
        })
        .collect();
    m::Request::OffsetForLeaderEpoch(m::OffsetForLeaderEpochRequest { topics })
}

fn epoch_end_offsets(r: m::OffsetForLeaderEpochResponse) -> k::OffsetForLeaderEpochResponse {
    let topics = r
        .topics
        .into_iter()
        .map(|t| {
            k::offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                .with_topic(topic_name(t.name))
                .with_partitions(
                    t.partitions
                        .into_iter()
                        .map(|p| {
                            k::offset_for_leader_epoch_response::EpochEndOffset::default()
                                .with_partition(p.partition as i32)
                                .with_error_code(code(p.error))
                                .with_leader_epoch(p.leader_epoch)
                                .with_end_offset(p.end_offset)
                        })
                        .collect(),
                )
        })
        .collect();
    k::OffsetForLeaderEpochResponse::default().with_topics(topics)
}

/// Each topic's outcome; one created (or, validating only, that would be) also
/// with its partitions, replication factor and settings (version 5 on), as Kafka
/// answers, which Java's `CreateTopicsResult.numPartitions` and `config` read. A
/// broker from before it described them leaves Kafka's "unknown", -1.
fn create_topics(
    r: m::CreateTopicsResponse,
    refused: Vec<(String, String)>,
    listener: &Listener,
) -> k::CreateTopicsResponse {
    let created = r.created;
    let result = |name: String, error: ErrorCode, text: String| {
        let described = match error {
            ErrorCode::None => created.iter().find(|t| t.name == name),
            _ => None,
        };
        let answer = k::create_topics_response::CreatableTopicResult::default()
            .with_error_code(code(error))
            .with_error_message(message(error, text));
        let answer = match described {
            Some(t) => answer
                .with_topic_id(kafka_topic_id(t.id))
                .with_num_partitions(t.partitions as i32)
                .with_replication_factor(t.replication_factor as i16)
                .with_configs(Some(admin::created_configs(&t.configs, listener))),
            None => answer.with_num_partitions(-1).with_replication_factor(-1),
        };
        answer.with_name(topic_name(name))
    };
    k::CreateTopicsResponse::default().with_topics(with_refused(r.results, refused, result))
}

/// The broker's per-topic results, then the topics refused before reaching it (for
/// naming replica assignments), each made by `result`.
fn with_refused<T>(
    results: Vec<m::TopicResult>,
    refused: Vec<(String, String)>,
    result: impl Fn(String, ErrorCode, String) -> T,
) -> Vec<T> {
    results
        .into_iter()
        .map(|t| result(t.name, t.error, t.message))
        .chain(
            refused
                .into_iter()
                .map(|(name, text)| result(name, ErrorCode::InvalidReplicaAssignment, text)),
        )
        .collect()
}

fn offset_fetch(
    r: g::OffsetFetchResponse,
    asked: Option<Vec<(String, Vec<i32>)>>,
) -> k::OffsetFetchResponse {
    use k::offset_fetch_response::{OffsetFetchResponsePartition, OffsetFetchResponseTopic};
    let committed: std::collections::HashMap<(&str, u32), &g::PartitionOffset> = r
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| ((t.topic.as_str(), p.partition), p))
        })
        .collect();
    let answer = |index: i32, found: Option<&g::PartitionOffset>| {
        let partition = OffsetFetchResponsePartition::default().with_partition_index(index);
        match found {
            Some(p) => partition
                .with_committed_offset(p.offset)
                .with_committed_leader_epoch(p.leader_epoch)
                .with_metadata(Some(StrBytes::from_string(p.metadata.clone()))),
            // Nothing committed: offset -1, as Kafka answers.
            None => partition
                .with_committed_offset(-1)
                .with_committed_leader_epoch(-1)
                .with_metadata(Some(StrBytes::default())),
        }
    };
    let topics = match asked {
        Some(list) => list
            .into_iter()
            .map(|(topic, ps)| {
                let partitions = ps
                    .into_iter()
                    .map(|i| answer(i, committed.get(&(topic.as_str(), partition(i))).copied()))
                    .collect();
                OffsetFetchResponseTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(partitions)
            })
            .collect(),
        None => r
            .topics
            .iter()
            .map(|t| {
                OffsetFetchResponseTopic::default()
                    .with_name(topic_name(t.topic.clone()))
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| answer(p.partition as i32, Some(p)))
                            .collect(),
                    )
            })
            .collect(),
    };
    k::OffsetFetchResponse::default()
        .with_error_code(code(r.error))
        .with_topics(topics)
}

/// Kafka's error code for Meridian's.
pub fn code(error: ErrorCode) -> i16 {
    use ErrorCode as E;
    use ResponseError as K;
    let kafka = match error {
        E::None => return 0,
        E::Unknown | E::InvalidUpdateVersion => K::UnknownServerError,
        E::CorruptMessage => K::CorruptMessage,
        E::UnknownTopic | E::InvalidPartition | E::TopicDeletionInProgress => {
            K::UnknownTopicOrPartition
        }
        E::MessageTooLarge => K::MessageTooLarge,
        E::InvalidTopic => K::InvalidTopicException,
        E::InvalidConfig => K::InvalidConfig,
        E::TopicAlreadyExists => K::TopicAlreadyExists,
        E::OffsetOutOfRange => K::OffsetOutOfRange,
        E::StorageError | E::CorruptLog => K::KafkaStorageError,
        E::UnsupportedVersion => K::UnsupportedVersion,
        E::InvalidRequest | E::FrameTooLarge => K::InvalidRequest,
        E::RequestTimedOut => K::RequestTimedOut,
        E::UnsupportedCompression => K::UnsupportedCompressionType,
        E::InvalidPartitions => K::InvalidPartitions,
        E::InvalidReplicationFactor => K::InvalidReplicationFactor,
        E::InvalidRequiredAcks => K::InvalidRequiredAcks,
        E::PolicyViolation => K::PolicyViolation,
        // Retriable either way: the client looks for the partition's leader again.
        E::BrokerShuttingDown | E::NotLeaderOrFollower => K::NotLeaderOrFollower,
        E::NotCoordinator => K::NotCoordinator,
        E::CoordinatorNotAvailable => K::CoordinatorNotAvailable,
        E::InvalidGroupId => K::InvalidGroupId,
        E::UnknownMemberId => K::UnknownMemberId,
        E::FencedInstanceId => K::FencedInstanceId,
        E::IllegalGeneration => K::IllegalGeneration,
        E::InvalidSessionTimeout => K::InvalidSessionTimeout,
        E::GroupMaxSizeReached => K::GroupMaxSizeReached,
        E::InconsistentGroupProtocol => K::InconsistentGroupProtocol,
        E::GroupIdNotFound => K::GroupIdNotFound,
        E::NonEmptyGroup => K::NonEmptyGroup,
        E::OffsetMetadataTooLarge => K::OffsetMetadataTooLarge,
        E::InvalidCommitOffset => K::InvalidCommitOffsetSize,
        E::OutOfOrderSequenceNumber => K::OutOfOrderSequenceNumber,
        E::InvalidProducerEpoch => K::InvalidProducerEpoch,
        E::UnknownProducerId => K::UnknownProducerId,
        E::GroupSubscribedToTopic => K::GroupSubscribedToTopic,
        E::FencedLeaderEpoch => K::FencedLeaderEpoch,
        E::UnknownLeaderEpoch => K::UnknownLeaderEpoch,
        E::NotEnoughReplicas => K::NotEnoughReplicas,
        E::NotEnoughReplicasAfterAppend => K::NotEnoughReplicasAfterAppend,
        E::LeaderNotAvailable | E::MetadataNotReady => K::LeaderNotAvailable,
        E::NotController => K::NotController,
        E::StaleBrokerEpoch => K::StaleBrokerEpoch,
        E::InvalidRecord | E::PluginRejected => K::InvalidRecord,
        E::InvalidTimestamp => K::InvalidTimestamp,
        E::PluginNotFound | E::InvalidPlugin | E::PluginInUse => K::InvalidRequest,
        E::InvalidReplicaAssignment => K::InvalidReplicaAssignment,
        E::NoReassignmentInProgress => K::NoReassignmentInProgress,
        E::ElectionNotNeeded => K::ElectionNotNeeded,
        E::PreferredLeaderNotAvailable => K::PreferredLeaderNotAvailable,
        E::EligibleLeadersNotAvailable => K::EligibleLeadersNotAvailable,
        E::UnknownTopicId => K::UnknownTopicId,
        E::BrokerIdNotRegistered => K::BrokerIdNotRegistered,
        E::TopicAuthorizationFailed => K::TopicAuthorizationFailed,
        E::GroupAuthorizationFailed => K::GroupAuthorizationFailed,
        E::ClusterAuthorizationFailed => K::ClusterAuthorizationFailed,
    };
    kafka.code()
}

#[cfg(test)]
mod tests;
