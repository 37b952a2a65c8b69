//! Where partitions' replicas live, as Kafka's tools manage it
//! (`kafka-reassign-partitions`, `kafka-leader-election`, `kafka-log-dirs`, admin
//! clients): AlterPartitionReassignments, ListPartitionReassignments, ElectLeaders
//! and DescribeLogDirs, each translated to the Meridian request that does the same.
//!
//! ElectLeaders elects preferred leaders, or, of type unclean, a live replica for
//! each partition without a leader (from outside the ISR when no in-sync one is
//! left), as `kafka-leader-election --election-type` asks. A broker has one log
//! directory; it is described with the size of each partition log it holds.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{self as k, TopicName};
use kafka_protocol::protocol::StrBytes;
use meridian_wire::group as g;
use meridian_wire::messages as m;

use super::{broker_id, code, message, partition, topic_name};

/// `election_type` of a preferred leader election, and of an unclean one.
const PREFERRED: i8 = 0;
const UNCLEAN: i8 = 1;

pub(crate) const UNKNOWN_ELECTION: &str =
    "election_type is 0 (preferred) or 1 (unclean); no other election is known";

/// Items in the order given, gathered by topic in the order each topic first came,
/// each topic's made by `make` from its name and items.
fn by_topic<T, U>(
    items: impl IntoIterator<Item = (String, T)>,
    make: impl Fn(TopicName, Vec<T>) -> U,
) -> Vec<U> {
    let mut topics: Vec<(String, Vec<T>)> = Vec::new();
    for (topic, item) in items {
        match topics.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, list)) => list.push(item),
            None => topics.push((topic, vec![item])),
        }
    }
    topics
        .into_iter()
        .map(|(topic, items)| make(topic_name(topic), items))
        .collect()
}

/// A Kafka broker id as Meridian's; a negative one, never a broker, as one that is
/// not registered either.
fn broker(id: k::BrokerId) -> u32 {
    u32::try_from(id.0).unwrap_or(u32::MAX)
}

fn brokers(ids: &[u32]) -> Vec<k::BrokerId> {
    ids.iter().map(|b| broker_id(*b)).collect()
}

pub(crate) fn alter_reassignments(r: k::AlterPartitionReassignmentsRequest) -> m::Request {
    let reassignments = r
        .topics
        .into_iter()
        .flat_map(|t| {
            let name = t.name.0.to_string();
            t.partitions
                .into_iter()
                .map(move |p| m::PartitionReassignment {
                    topic: name.clone(),
                    partition: partition(p.partition_index),
                    replicas: p
                        .replicas
                        .map(|replicas| replicas.into_iter().map(broker).collect()),
                })
        })
        .collect();
    m::Request::AlterPartitionReassignments(m::AlterPartitionReassignmentsRequest { reassignments })
}

pub(crate) fn altered_reassignments(
    answer: m::AlterPartitionReassignmentsResponse,
) -> k::AlterPartitionReassignmentsResponse {
    let results = answer.results.into_iter().map(|r| {
        let partition =
            k::alter_partition_reassignments_response::ReassignablePartitionResponse::default()
                .with_partition_index(r.partition as i32)
                .with_error_code(code(r.error))
                .with_error_message(message(r.error, r.message));
        (r.topic, partition)
    });
    let responses = by_topic(results, |name, partitions| {
        k::alter_partition_reassignments_response::ReassignableTopicResponse::default()
            .with_name(name)
            .with_partitions(partitions)
    });
    k::AlterPartitionReassignmentsResponse::default().with_responses(responses)
}

/// The partitions a ListPartitionReassignments named, by topic (`None`: all).
pub(crate) type Listed = Option<Vec<(String, Vec<i32>)>>;

pub(crate) fn list_reassignments(r: k::ListPartitionReassignmentsRequest) -> (m::Request, Listed) {
    let asked: Listed = r.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let request = m::Request::ListPartitionReassignments(m::ListPartitionReassignmentsRequest {
        topics: asked
            .as_ref()
            .map(|topics| topics.iter().map(|(t, _)| t.clone()).collect()),
    });
    (request, asked)
}

pub(crate) fn listed_reassignments(
    answer: m::ListPartitionReassignmentsResponse,
    asked: Listed,
) -> k::ListPartitionReassignmentsResponse {
    let wanted = |topic: &str, partition: u32| match &asked {
        None => true,
        Some(topics) => topics
            .iter()
            .any(|(t, ps)| t == topic && ps.contains(&(partition as i32))),
    };
    let ongoing = answer
        .reassignments
        .into_iter()
        .filter(|r| wanted(&r.topic, r.partition))
        .map(|r| {
            let partition =
                k::list_partition_reassignments_response::OngoingPartitionReassignment::default()
                    .with_partition_index(r.partition as i32)
                    .with_replicas(brokers(&r.replicas))
                    .with_adding_replicas(brokers(&r.adding))
                    .with_removing_replicas(brokers(&r.removing));
            (r.topic, partition)
        });
    let topics = by_topic(ongoing, |name, partitions| {
        k::list_partition_reassignments_response::OngoingTopicReassignment::default()
            .with_name(name)
            .with_partitions(partitions)
    });
    k::ListPartitionReassignmentsResponse::default()
        .with_error_code(code(answer.error))
        .with_error_message(message(answer.error, answer.message))
        .with_topics(topics)
}

/// The Meridian request for an ElectLeaders, or the answer refusing it (an
/// election type neither preferred nor unclean, named per partition).
pub(crate) fn elect_leaders(
    r: k::ElectLeadersRequest,
) -> Result<m::Request, k::ElectLeadersResponse> {
    if r.election_type != PREFERRED && r.election_type != UNCLEAN {
        let refused = ResponseError::InvalidRequest.code();
        let results = r
            .topic_partitions
            .unwrap_or_default()
            .into_iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .into_iter()
                    .map(|p| {
                        k::elect_leaders_response::PartitionResult::default()
                            .with_partition_id(p)
                            .with_error_code(refused)
                            .with_error_message(Some(StrBytes::from_static_str(UNKNOWN_ELECTION)))
                    })
                    .collect();
                k::elect_leaders_response::ReplicaElectionResult::default()
                    .with_topic(t.topic)
                    .with_partition_result(partitions)
            })
            .collect();
        return Err(k::ElectLeadersResponse::default()
            .with_error_code(refused)
            .with_replica_election_results(results));
    }
    let partitions = r.topic_partitions.map(|topics| {
        topics
            .into_iter()
            .map(|t| g::TopicPartitions {
                topic: t.topic.0.to_string(),
                partitions: t.partitions.into_iter().map(partition).collect(),
            })
            .collect()
    });
    Ok(m::Request::ElectLeaders(m::ElectLeadersRequest {
        partitions,
        unclean: r.election_type == UNCLEAN,
    }))
}

pub(crate) fn elected_leaders(answer: m::ElectLeadersResponse) -> k::ElectLeadersResponse {
    let results = answer.results.into_iter().map(|r| {
        let result = k::elect_leaders_response::PartitionResult::default()
            .with_partition_id(r.partition as i32)
            .with_error_code(code(r.error))
            .with_error_message(message(r.error, r.message));
        (r.topic, result)
    });
    let results = by_topic(results, |name, partitions| {
        k::elect_leaders_response::ReplicaElectionResult::default()
            .with_topic(name)
            .with_partition_result(partitions)
    });
    k::ElectLeadersResponse::default()
        .with_error_code(code(answer.error))
        .with_replica_election_results(results)
}

pub(crate) fn describe_log_dirs(r: k::DescribeLogDirsRequest) -> m::Request {
    let partitions = r.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| g::TopicPartitions {
                topic: t.topic.0.to_string(),
                partitions: t.partitions.into_iter().map(partition).collect(),
            })
            .collect()
    });
    m::Request::DescribeLogs(m::DescribeLogsRequest { partitions })
}

/// The broker's one log directory with the partition logs it holds as a replica
/// (Kafka lists only those; a partition asked about and not held is left out).
/// Kafka's `offset_lag` (of a log moving between directories) is always 0 here. The
/// directory's total and usable bytes (version 4) are those of its file system.
pub(crate) fn described_log_dirs(answer: m::DescribeLogsResponse) -> k::DescribeLogDirsResponse {
    if !answer.error.is_ok() {
        return k::DescribeLogDirsResponse::default().with_error_code(code(answer.error));
    }
    let held = answer
        .logs
        .into_iter()
        .filter(|l| l.error.is_ok() && l.replica)
        .map(|l| {
            let partition = k::describe_log_dirs_response::DescribeLogDirsPartition::default()
                .with_partition_index(l.partition as i32)
                .with_partition_size(i64::try_from(l.size_bytes).unwrap_or(i64::MAX));
            (l.topic, partition)
        });
    let topics = by_topic(held, |name, partitions| {
        k::describe_log_dirs_response::DescribeLogDirsTopic::default()
            .with_name(name)
            .with_partitions(partitions)
    });
    let dir = k::describe_log_dirs_response::DescribeLogDirsResult::default()
        .with_log_dir(StrBytes::from_string(answer.log_dir))
        .with_topics(topics)
        .with_total_bytes(answer.total_bytes)
        .with_usable_bytes(answer.usable_bytes);
    k::DescribeLogDirsResponse::default().with_results(vec![dir])
}
