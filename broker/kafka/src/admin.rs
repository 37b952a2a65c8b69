//! Kafka's topic administration beyond create and delete, as Kafka's tools send it
//! (`kafka-configs`, `kafka-topics --alter`, `kafka-delete-records`, admin clients):
//! DescribeConfigs, IncrementalAlterConfigs and the legacy AlterConfigs of topics
//! (which replaces a topic's settings: those it leaves out revert to the defaults),
//! CreatePartitions and DeleteRecords, each translated to the Meridian request that
//! does the same.
//!
//! Only topics have settings a client can change here: a broker resource
//! (Meridian's broker settings live in its configuration file and flags) and the
//! list operations `APPEND`/`SUBTRACT` are refused per resource, with a message,
//! while the request's other resources are served. A broker's settings can be
//! read: DescribeConfigs of a broker resource lists them, read-only.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages as k;
use kafka_protocol::protocol::StrBytes;
use meridian_wire::messages as m;
use meridian_wire::topic_changes as tc;
use meridian_wire::ErrorCode;

use super::{code, message, partition, topic_name, with_refused, Listener};

/// Kafka's resource types of a topic and a broker.
const TOPIC: i8 = 2;
const BROKER: i8 = 4;
/// Kafka's `config_source` of a value set on the topic, of one in the broker's
/// configuration file, and of a default.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;
/// `config_operation` of IncrementalAlterConfigs.
const SET: i8 = 0;
const DELETE: i8 = 1;

/// A resource refused without the broker: always `INVALID_REQUEST`, with `why`.
#[derive(Debug)]
pub(crate) struct Refusal {
    resource_type: i8,
    name: String,
    why: &'static str,
}

/// The refusal's error code and message.
const REFUSED: ResponseError = ResponseError::InvalidRequest;

const NOT_A_TOPIC: &str = "only topics have settings changed over Kafka; a Meridian broker's \
                           settings are its configuration file and flags";
/// DescribeConfigs of a resource neither a topic nor a broker (broker loggers).
const NOT_DESCRIBED: &str = "only topics and brokers have settings described over Kafka";
const BROKER_WITH_TOPICS: &str = "describe a broker's settings in a request without topics, \
                                  as Kafka's admin clients send them";

/// The resources asked about, in order: a topic's or broker's name and the keys
/// it asks for (`None`: all), or a refusal.
#[derive(Debug)]
pub(crate) enum Described {
    Topic {
        name: String,
        keys: Option<Vec<String>>,
        detail: Detail,
    },
    /// A broker's settings: `name` is its id, or empty for the cluster's defaults.
    Broker {
        name: String,
        keys: Option<Vec<String>>,
        detail: Detail,
    },
    Refused(Refusal),
}

/// What a DescribeConfigs asks to be told of each setting beyond its value.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Detail {
    /// Its synonyms (`include_synonyms`).
    synonyms: bool,
    /// Its type, and documentation when asked: both from version 3.
    version_3: bool,
    documentation: bool,
}

/// The Meridian request for a DescribeConfigs, and what its response needs:
/// DescribeTopics for topics; DescribeCluster for brokers alone (a broker's
/// settings are the listener's, but reading them takes what describing the
/// cluster takes under `acl_file`, as Kafka's takes DESCRIBE_CONFIGS on the
/// cluster); `None` when every resource is refused. Brokers asked about beside
/// topics are refused: Kafka's admin clients ask each broker on its own.
pub(crate) fn describe_configs(
    r: k::DescribeConfigsRequest,
    version: i16,
) -> (Option<m::Request>, Vec<Described>) {
    let topics = r
        .resources
        .iter()
        .any(|resource| resource.resource_type == TOPIC);
    let mut names = Vec::new();
    let mut brokers = false;
    let detail = Detail {
        synonyms: r.include_synonyms,
        version_3: version >= 3,
        documentation: r.include_documentation && version >= 3,
    };
    let asked: Vec<Described> = r
        .resources
        .into_iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            // Null asks for every setting; so does an empty list, which would
            // otherwise ask for none.
            let keys = resource
                .configuration_keys
                .filter(|keys| !keys.is_empty())
                .map(|keys| keys.iter().map(ToString::to_string).collect());
            let why = match resource.resource_type {
                TOPIC => {
                    names.push(name.clone());
                    return Described::Topic { name, keys, detail };
                }
                BROKER if !topics => {
                    brokers = true;
                    return Described::Broker { name, keys, detail };
                }
                BROKER => BROKER_WITH_TOPICS,
                _ => NOT_DESCRIBED,
            };
            Described::Refused(Refusal {
                resource_type: resource.resource_type,
                name,
                why,
            })
        })
        .collect();
    let request = if !names.is_empty() {
        Some(m::Request::DescribeTopics(m::DescribeTopicsRequest {
            names,
        }))
    } else {
        brokers.then_some(m::Request::DescribeCluster)
    };
    (request, asked)
}

/// What the broker answered a DescribeConfigs with.
pub(crate) enum DescribedBy {
    /// Nothing was asked of it.
    Nothing,
    Topics(m::DescribeTopicsResponse),
    /// Brokers were asked about: whether describing the cluster was allowed.
    Cluster(m::DescribeClusterResponse),
}

/// The DescribeConfigs response: each topic's settings from the broker's
/// description, each broker's from the `listener` (once the broker allowed it),
/// refusals in place.
pub(crate) fn described_configs(
    answer: DescribedBy,
    asked: Vec<Described>,
    listener: &Listener,
) -> k::DescribeConfigsResponse {
    let (mut topics, cluster) = match answer {
        DescribedBy::Nothing => (Vec::new(), None),
        DescribedBy::Topics(a) => (a.topics, None),
        DescribedBy::Cluster(c) => (Vec::new(), Some(c)),
    };
    let results = asked
        .into_iter()
        .map(|asked| match asked {
            Described::Broker { name, keys, detail } => match &cluster {
                Some(c) if !c.error.is_ok() => {
                    k::describe_configs_response::DescribeConfigsResult::default()
                        .with_error_code(code(c.error))
                        .with_error_message(message(c.error, c.message.clone()))
                        .with_resource_type(BROKER)
                        .with_resource_name(StrBytes::from_string(name))
                }
                _ => described_broker(name, keys, detail, listener),
            },
            Described::Refused(refused) => {
                k::describe_configs_response::DescribeConfigsResult::default()
                    .with_error_code(REFUSED.code())
                    .with_error_message(Some(StrBytes::from_static_str(refused.why)))
                    .with_resource_type(refused.resource_type)
                    .with_resource_name(StrBytes::from_string(refused.name))
            }
            Described::Topic { name, keys, detail } => {
                let result = k::describe_configs_response::DescribeConfigsResult::default()
                    .with_resource_type(TOPIC)
                    .with_resource_name(StrBytes::from_string(name.clone()));
                let Some(i) = topics.iter().position(|t| t.name == name) else {
                    return result
                        .with_error_code(code(ErrorCode::UnknownTopic))
                        .with_error_message(message(ErrorCode::UnknownTopic, String::new()));
                };
                let topic = topics.swap_remove(i);
                if !topic.error.is_ok() {
                    return result
                        .with_error_code(code(topic.error))
                        .with_error_message(message(topic.error, topic.message));
                }
                let configs = topic
                    .configs
                    .iter()
                    .filter(|c| asked_for(&keys, &c.key))
                    .map(|c| {
                        let (source, found) = topic_setting(c, listener);
                        let mut described = setting(c.key.clone(), c.value.clone(), source, detail);
                        if detail.synonyms {
                            described = described.with_synonyms(found);
                        }
                        match topic_setting_info(&c.key) {
                            Some(info) if detail.version_3 => {
                                let doc = detail
                                    .documentation
                                    .then(|| StrBytes::from_static_str(info.doc));
                                described
                                    .with_config_type(info.kind)
                                    .with_documentation(doc)
                            }
                            _ => described,
                        }
                    })
                    .collect();
                result.with_configs(configs)
            }
        })
        .collect();
    k::DescribeConfigsResponse::default().with_results(results)
}

/// A broker resource's settings: this broker's (by its id, or the empty name of
/// the cluster's defaults, which are each broker's configuration); another broker
/// is described at its own listener, as Kafka's admin clients send it.
fn described_broker(
    name: String,
    keys: Option<Vec<String>>,
    detail: Detail,
    listener: &Listener,
) -> k::describe_configs_response::DescribeConfigsResult {
    let result = k::describe_configs_response::DescribeConfigsResult::default()
        .with_resource_type(BROKER)
        .with_resource_name(StrBytes::from_string(name.clone()));
    if !name.is_empty() && name != listener.broker_id.to_string() {
        let why = format!(
            "this is broker {}: broker {name}'s settings are described by its own listener",
            listener.broker_id
        );
        return result
            .with_error_code(REFUSED.code())
            .with_error_message(Some(StrBytes::from_string(why)));
    }
    let configs = listener
        .settings
        .iter()
        .filter(|s| asked_for(&keys, &s.name))
        .map(|s| {
            let source = broker_source(s);
            let described =
                setting(s.name.clone(), s.value.clone(), source, detail).with_read_only(true);
            let described = if detail.synonyms {
                described.with_synonyms(vec![synonym(&s.name, &s.value, source)])
            } else {
                described
            };
            if !detail.version_3 {
                return described;
            }
            // The default of a topic setting (under Kafka's name or Meridian's) is
            // of the setting's type, and documented as it is; the rest are of
            // their type in the configuration, and undocumented.
            let behind = TOPIC_SETTINGS
                .iter()
                .find(|i| i.broker == s.name || topic_default_key(i.key) == s.name);
            match behind {
                Some(info) => {
                    let doc = detail.documentation.then(|| {
                        StrBytes::from_string(format!(
                            "The default of the topic setting {}: {}",
                            info.key, info.doc
                        ))
                    });
                    described
                        .with_config_type(info.kind)
                        .with_documentation(doc)
                }
                None => described.with_config_type(s.config_type),
            }
        })
        .collect();
    result.with_configs(configs)
}

/// What DescribeConfigs tells of a topic setting beyond its value.
#[derive(Clone, Copy, Debug)]
pub struct TopicSettingInfo {
    /// The topic setting's name.
    pub key: &'static str,
    /// Kafka's broker setting behind it (the value a topic without its own takes),
    /// listed among its synonyms. The broker lists its settings under these names
    /// too; a test of its list keeps the two in step.
    pub broker: &'static str,
    /// Kafka's `config_type` (version 3 on).
    kind: i8,
    /// What it does, for `include_documentation` (version 3 on).
    doc: &'static str,
}

/// Kafka's `config_type` values (DescribeConfigs version 3 on).
pub mod config_type {
    pub const BOOLEAN: i8 = 1;
    pub const STRING: i8 = 2;
    pub const INT: i8 = 3;
    pub const SHORT: i8 = 4;
    pub const LONG: i8 = 5;
    pub const DOUBLE: i8 = 6;
    pub const LIST: i8 = 7;
}
use config_type::*;

/// The broker configuration's key of a topic setting's default
/// (`retention.ms`: `topic_defaults.retention_ms`).
pub fn topic_default_key(topic_key: &str) -> String {
    format!("topic_defaults.{}", topic_key.replace('.', "_"))
}

const fn info(
    key: &'static str,
    broker: &'static str,
    kind: i8,
    doc: &'static str,
) -> TopicSettingInfo {
    TopicSettingInfo {
        key,
        broker,
        kind,
        doc,
    }
}

/// Every topic setting Meridian has.
pub const TOPIC_SETTINGS: [TopicSettingInfo; 15] = [
    info(
        "cleanup.policy",
        "log.cleanup.policy",
        LIST,
        "delete: retention deletes old segments; compact: the cleaner keeps each key's latest record; compact,delete: both",
    ),
    info(
        "delete.retention.ms",
        "log.cleaner.delete.retention.ms",
        LONG,
        "how long a tombstone that is its key's latest record is kept after the clean that first took it in",
    ),
    info(
        "index.interval.bytes",
        "log.index.interval.bytes",
        INT,
        "bytes of log between two entries of the offset index",
    ),
    info(
        "max.message.bytes",
        "message.max.bytes",
        INT,
        "the largest record batch accepted",
    ),
    info(
        "message.timestamp.after.max.ms",
        "log.message.timestamp.after.max.ms",
        LONG,
        "a batch whose newest timestamp is further ahead of the broker's clock is refused",
    ),
    info(
        "message.timestamp.before.max.ms",
        "log.message.timestamp.before.max.ms",
        LONG,
        "a batch whose first timestamp is further behind the broker's clock is refused",
    ),
    info(
        "message.timestamp.type",
        "log.message.timestamp.type",
        STRING,
        "CreateTime: records keep the producer's timestamps; LogAppendTime: the broker stamps each batch as it appends it",
    ),
    info(
        "min.cleanable.dirty.ratio",
        "log.cleaner.min.cleanable.ratio",
        DOUBLE,
        "a partition is cleaned once its not-yet-cleaned bytes are at least this share of its cleanable bytes",
    ),
    info(
        "min.compaction.lag.ms",
        "log.cleaner.min.compaction.lag.ms",
        LONG,
        "a segment is cleaned only once its newest record is at least this old",
    ),
    info(
        "min.insync.replicas",
        "min.insync.replicas",
        INT,
        "an acks=all produce is refused while the partition has fewer in-sync replicas",
    ),
    info(
        "retention.bytes",
        "log.retention.bytes",
        LONG,
        "the oldest sealed segments are deleted while the partition is larger (-1: no limit)",
    ),
    info(
        "retention.ms",
        "log.retention.ms",
        LONG,
        "sealed segments older than this are deleted (-1: kept forever)",
    ),
    info(
        "segment.bytes",
        "log.segment.bytes",
        INT,
        "the active segment is rolled at this size",
    ),
    info(
        "segment.ms",
        "log.roll.ms",
        LONG,
        "the active segment is rolled at this age",
    ),
    info(
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
        BOOLEAN,
        "when no in-sync replica is alive, an out-of-sync one is elected (acknowledged records may be lost) rather than the partition left offline",
    ),
];

/// Where a topic's setting takes its value from, and its synonyms, most specific
/// first, as Kafka lists them: the topic's own value (`DYNAMIC_TOPIC_CONFIG`), then
/// the broker setting behind it (`STATIC_BROKER_CONFIG` when the broker's
/// configuration sets it, `DEFAULT_CONFIG` when not). The source is the first.
fn topic_setting(
    c: &m::DescribedConfig,
    listener: &Listener,
) -> (
    i8,
    Vec<k::describe_configs_response::DescribeConfigsSynonym>,
) {
    let mut synonyms = Vec::new();
    if !c.is_default {
        synonyms.push(synonym(&c.key, &c.value, DYNAMIC_TOPIC_CONFIG));
    }
    let broker = topic_setting_info(&c.key)
        .and_then(|info| listener.settings.iter().find(|s| s.name == info.broker));
    if let Some(s) = broker {
        synonyms.push(synonym(&s.name, &s.value, broker_source(s)));
    }
    let source = synonyms.first().map_or(DEFAULT_CONFIG, |s| s.source);
    (source, synonyms)
}

fn topic_setting_info(key: &str) -> Option<&'static TopicSettingInfo> {
    TOPIC_SETTINGS.iter().find(|info| info.key == key)
}

/// A broker setting's source: its configuration, or the built-in default.
fn broker_source(s: &super::BrokerSetting) -> i8 {
    if s.is_default {
        DEFAULT_CONFIG
    } else {
        STATIC_BROKER_CONFIG
    }
}

fn synonym(
    name: &str,
    value: &str,
    source: i8,
) -> k::describe_configs_response::DescribeConfigsSynonym {
    k::describe_configs_response::DescribeConfigsSynonym::default()
        .with_name(StrBytes::from_string(name.to_owned()))
        .with_value(Some(StrBytes::from_string(value.to_owned())))
        .with_source(source)
}

/// Whether a DescribeConfigs resource asking for `keys` (`None`: all) asks for `key`.
fn asked_for(keys: &Option<Vec<String>>, key: &str) -> bool {
    keys.as_ref()
        .is_none_or(|keys| keys.iter().any(|k| k == key))
}

/// A created topic's settings, as CreateTopics (version 5 on) lists them, each
/// with where its value comes from ([`topic_setting`]).
pub(crate) fn created_configs(
    configs: &[m::DescribedConfig],
    listener: &Listener,
) -> Vec<k::create_topics_response::CreatableTopicConfigs> {
    configs
        .iter()
        .map(|c| {
            k::create_topics_response::CreatableTopicConfigs::default()
                .with_name(StrBytes::from_string(c.key.clone()))
                .with_value(Some(StrBytes::from_string(c.value.clone())))
                .with_config_source(topic_setting(c, listener).0)
        })
        .collect()
}

/// One setting in a DescribeConfigs answer, from `source`; from version 3 without
/// documentation (null, as Kafka answers what it was not asked).
fn setting(
    name: String,
    value: String,
    source: i8,
    detail: Detail,
) -> k::describe_configs_response::DescribeConfigsResourceResult {
    let described = k::describe_configs_response::DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_string(name))
        .with_value(Some(StrBytes::from_string(value)))
        .with_config_source(source);
    if detail.version_3 {
        described.with_documentation(None)
    } else {
        described
    }
}

/// The Meridian request for an IncrementalAlterConfigs (`None` when every
/// resource is refused), and the refusals, which go before the broker's results.
pub(crate) fn alter_configs(
    r: k::IncrementalAlterConfigsRequest,
) -> (Option<m::Request>, Vec<Refusal>) {
    let resources = r.resources.into_iter().map(|resource| {
        let changes = resource
            .configs
            .into_iter()
            .map(|config| {
                let value = match config.config_operation {
                    SET => Some(config.value.map(|v| v.to_string()).unwrap_or_default()),
                    DELETE => None,
                    _ => {
                        return Err("APPEND and SUBTRACT are not served: SET the whole value \
                                    (a topic's only list setting is cleanup.policy)")
                    }
                };
                Ok(tc::ConfigChange {
                    key: config.name.to_string(),
                    value,
                })
            })
            .collect();
        (resource.resource_type, resource.resource_name, changes)
    });
    alter_request(resources, false, r.validate_only)
}

/// The Meridian request for a legacy AlterConfigs (`None` when every resource is
/// refused), and the refusals. Each topic's settings are replaced: a setting not
/// named, or named with a null value, reverts to the broker default.
pub(crate) fn replace_configs(r: k::AlterConfigsRequest) -> (Option<m::Request>, Vec<Refusal>) {
    let resources = r.resources.into_iter().map(|resource| {
        let changes = resource
            .configs
            .into_iter()
            .map(|config| tc::ConfigChange {
                key: config.name.to_string(),
                value: config.value.map(|v| v.to_string()),
            })
            .collect();
        (resource.resource_type, resource.resource_name, Ok(changes))
    });
    alter_request(resources, true, r.validate_only)
}

/// The AlterTopicConfigs request for either AlterConfigs (`None` when every
/// resource is refused), from each resource's type, name and changes (or why they
/// cannot be made), and the refusals: resources other than topics, and topics
/// whose changes cannot be made.
fn alter_request(
    resources: impl Iterator<Item = (i8, StrBytes, Result<Vec<tc::ConfigChange>, &'static str>)>,
    replace: bool,
    validate_only: bool,
) -> (Option<m::Request>, Vec<Refusal>) {
    let mut refused = Vec::new();
    let mut topics = Vec::new();
    for (resource_type, name, changes) in resources {
        let name = name.to_string();
        let changes = if resource_type == TOPIC {
            changes
        } else {
            Err(NOT_A_TOPIC)
        };
        match changes {
            Ok(changes) => topics.push(tc::TopicConfigChanges {
                name,
                changes,
                replace,
            }),
            Err(why) => refused.push(Refusal {
                resource_type,
                name,
                why,
            }),
        }
    }
    let request = (!topics.is_empty()).then(|| {
        m::Request::AlterTopicConfigs(tc::AlterTopicConfigsRequest {
            topics,
            validate_only,
        })
    });
    (request, refused)
}

/// One resource's answer to either AlterConfigs: resource type, name, error code
/// and message. The refusals come first, then the broker's results.
fn altered(
    answer: Option<tc::AlterTopicConfigsResponse>,
    refused: Vec<Refusal>,
) -> impl Iterator<Item = (i8, StrBytes, i16, Option<StrBytes>)> {
    let refused = refused.into_iter().map(|r| {
        (
            r.resource_type,
            StrBytes::from_string(r.name),
            REFUSED.code(),
            Some(StrBytes::from_static_str(r.why)),
        )
    });
    let results = answer.into_iter().flat_map(|a| a.results).map(|t| {
        (
            TOPIC,
            StrBytes::from_string(t.name),
            code(t.error),
            message(t.error, t.message),
        )
    });
    refused.chain(results)
}

/// The per-resource answers of either AlterConfigs as `$resource`: the two
/// responses name the same fields, in generated types of their own.
macro_rules! resource_responses {
    ($resource:ty, $answer:expr, $refused:expr) => {
        altered($answer, $refused)
            .map(|(resource_type, name, error, text)| {
                <$resource>::default()
                    .with_error_code(error)
                    .with_error_message(text)
                    .with_resource_type(resource_type)
                    .with_resource_name(name)
            })
            .collect()
    };
}

pub(crate) fn altered_configs(
    answer: Option<tc::AlterTopicConfigsResponse>,
    refused: Vec<Refusal>,
) -> k::IncrementalAlterConfigsResponse {
    k::IncrementalAlterConfigsResponse::default().with_responses(resource_responses!(
        k::incremental_alter_configs_response::AlterConfigsResourceResponse,
        answer,
        refused
    ))
}

pub(crate) fn replaced_configs(
    answer: Option<tc::AlterTopicConfigsResponse>,
    refused: Vec<Refusal>,
) -> k::AlterConfigsResponse {
    k::AlterConfigsResponse::default().with_responses(resource_responses!(
        k::alter_configs_response::AlterConfigsResourceResponse,
        answer,
        refused
    ))
}

/// The Meridian request for a CreatePartitions, and the topics refused before it
/// (those naming replica assignments).
pub(crate) fn create_partitions(
    r: k::CreatePartitionsRequest,
) -> (m::Request, Vec<(String, String)>) {
    let mut refused = Vec::new();
    let mut topics = Vec::new();
    for t in r.topics {
        let name = t.name.0.to_string();
        if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
            refused.push((
                name,
                "replica assignments are not taken for new partitions; add them, then \
                 `meridian partition reassign`"
                    .to_string(),
            ));
            continue;
        }
        topics.push(tc::PartitionsIncrease {
            name,
            count: t.count.max(0) as u32,
        });
    }
    let request = m::Request::CreatePartitions(tc::CreatePartitionsRequest {
        topics,
        validate_only: r.validate_only,
    });
    (request, refused)
}

pub(crate) fn created_partitions(
    answer: tc::CreatePartitionsResponse,
    refused: Vec<(String, String)>,
) -> k::CreatePartitionsResponse {
    let result = |name: String, error: ErrorCode, text: String| {
        k::create_partitions_response::CreatePartitionsTopicResult::default()
            .with_name(topic_name(name))
            .with_error_code(code(error))
            .with_error_message(message(error, text))
    };
    k::CreatePartitionsResponse::default().with_results(with_refused(
        answer.results,
        refused,
        result,
    ))
}

pub(crate) fn delete_records(r: k::DeleteRecordsRequest) -> m::Request {
    let topics = r
        .topics
        .into_iter()
        .map(|t| m::DeleteRecordsTopic {
            name: t.name.0.to_string(),
            partitions: t
                .partitions
                .into_iter()
                .map(|p| m::DeleteRecordsPartition {
                    partition: partition(p.partition_index),
                    // Kafka's -1 (the high watermark) is Meridian's DELETE_TO_END.
                    offset: p.offset,
                })
                .collect(),
        })
        .collect();
    m::Request::DeleteRecords(m::DeleteRecordsRequest { topics })
}

pub(crate) fn deleted_records(answer: m::DeleteRecordsResponse) -> k::DeleteRecordsResponse {
    let topics = answer
        .topics
        .into_iter()
        .map(|t| {
            k::delete_records_response::DeleteRecordsTopicResult::default()
                .with_name(topic_name(t.name))
                .with_partitions(
                    t.partitions
                        .into_iter()
                        .map(|p| {
                            k::delete_records_response::DeleteRecordsPartitionResult::default()
                                .with_partition_index(p.partition as i32)
                                .with_low_watermark(p.low_watermark)
                                .with_error_code(code(p.error))
                        })
                        .collect(),
                )
        })
        .collect();
    k::DeleteRecordsResponse::default().with_topics(topics)
}
