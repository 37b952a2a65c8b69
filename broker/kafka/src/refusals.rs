//! A request refused whole by `acl_file` (a group, the cluster, a topic to create)
//! gets the answer a Kafka broker gives: the request's own response carrying the
//! authorization error, not a closed connection, which a Kafka client would retry
//! until its request timeout or for ever.

use meridian_wire::group as g;
use meridian_wire::messages as m;
use meridian_wire::topic_changes as tc;
use meridian_wire::ErrorCode;

/// Meridian's answer refusing `request` with `error`, for the Kafka response that
/// carries it; `None` for a request `acl_file` filters rather than refuses whole
/// (the connection is then closed).
pub fn refusal(request: &m::Request, error: ErrorCode, message: &str) -> Option<m::Response> {
    let message = message.to_string();
    let topics = |names: &mut dyn Iterator<Item = &String>| -> Vec<m::TopicResult> {
        names
            .map(|name| m::TopicResult {
                name: name.clone(),
                error,
                message: message.clone(),
            })
            .collect()
    };
    Some(match request {
        m::Request::CreateTopics(r) => m::Response::CreateTopics(m::CreateTopicsResponse {
            results: topics(&mut r.topics.iter().map(|t| &t.name)),
            created: Vec::new(),
        }),
        m::Request::DeleteTopics(r) => m::Response::DeleteTopics(m::DeleteTopicsResponse {
            results: topics(&mut r.names.iter()),
            by_id: (r.ids.iter())
                .map(|&id| m::DeletedById {
                    id,
                    name: String::new(),
                    error,
                    message: message.clone(),
                })
                .collect(),
        }),
        m::Request::DescribeTopics(r) => m::Response::DescribeTopics(m::DescribeTopicsResponse {
            topics: r
                .names
                .iter()
                .map(|name| m::TopicDescription {
                    name: name.clone(),
                    id: meridian_wire::TopicId::NONE,
                    error,
                    message: message.clone(),
                    replication_factor: 0,
                    configs: Vec::new(),
                    partitions: Vec::new(),
                    plugins: Vec::new(),
                })
                .collect(),
        }),
        m::Request::AlterTopicConfigs(r) => {
            m::Response::AlterTopicConfigs(tc::AlterTopicConfigsResponse {
                results: topics(&mut r.topics.iter().map(|t| &t.name)),
            })
        }
        m::Request::CreatePartitions(r) => {
            m::Response::CreatePartitions(tc::CreatePartitionsResponse {
                results: topics(&mut r.topics.iter().map(|t| &t.name)),
            })
        }
        m::Request::DeleteRecords(r) => m::Response::DeleteRecords(m::DeleteRecordsResponse {
            topics: r
                .topics
                .iter()
                .map(|t| m::DeleteRecordsTopicResponse {
                    name: t.name.clone(),
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| m::DeleteRecordsPartitionResponse {
                            partition: p.partition,
                            error,
                            message: message.clone(),
                            low_watermark: -1,
                        })
                        .collect(),
                })
                .collect(),
        }),
        m::Request::OffsetDelete(_) => m::Response::OffsetDelete(g::OffsetDeleteResponse {
            error,
            message,
            deleted: Vec::new(),
            refused: Vec::new(),
        }),
        m::Request::FindCoordinator(_) => {
            m::Response::FindCoordinator(g::FindCoordinatorResponse {
                error,
                message,
                broker_id: m::NO_BROKER,
                host: String::new(),
                port: 0,
            })
        }
        m::Request::JoinGroup(_) => m::Response::JoinGroup(g::JoinGroupResponse {
            error,
            message,
            member_id: String::new(),
            member_epoch: 0,
            heartbeat_interval_ms: 0,
        }),
        m::Request::SyncGroup(_) => m::Response::SyncGroup(g::SyncGroupResponse {
            error,
            message,
            member_epoch: 0,
            assignment: Vec::new(),
            pending: false,
        }),
        m::Request::Heartbeat(_) => m::Response::Heartbeat(g::HeartbeatResponse {
            error,
            message,
            sync_needed: false,
        }),
        m::Request::LeaveGroup(_) => {
            m::Response::LeaveGroup(g::LeaveGroupResponse { error, message })
        }
        m::Request::OffsetCommit(_) => {
            m::Response::OffsetCommit(g::OffsetCommitResponse { error, message })
        }
        m::Request::OffsetFetch(_) => m::Response::OffsetFetch(g::OffsetFetchResponse {
            error,
            message,
            topics: Vec::new(),
        }),
        m::Request::DescribeGroups(r) => m::Response::DescribeGroups(g::DescribeGroupsResponse {
            groups: r
                .group_ids
                .iter()
                .map(|id| g::GroupDescription {
                    group_id: id.clone(),
                    error,
                    message: message.clone(),
                    state: String::new(),
                    assignor: String::new(),
                    epoch: 0,
                    members: Vec::new(),
                })
                .collect(),
        }),
        m::Request::DeleteGroups(r) => m::Response::DeleteGroups(g::DeleteGroupsResponse {
            results: r
                .group_ids
                .iter()
                .map(|id| g::GroupResult {
                    group_id: id.clone(),
                    error,
                    message: message.clone(),
                })
                .collect(),
        }),
        m::Request::InitProducerId(_) => m::Response::InitProducerId(m::InitProducerIdResponse {
            error,
            message,
            producer_id: -1,
            producer_epoch: -1,
        }),
        m::Request::AlterPartitionReassignments(r) => {
            m::Response::AlterPartitionReassignments(m::AlterPartitionReassignmentsResponse {
                results: r
                    .reassignments
                    .iter()
                    .map(|p| m::ReassignmentResult {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        error,
                        message: message.clone(),
                    })
                    .collect(),
            })
        }
        m::Request::ListPartitionReassignments(_) => {
            m::Response::ListPartitionReassignments(m::ListPartitionReassignmentsResponse {
                error,
                message,
                reassignments: Vec::new(),
            })
        }
        m::Request::ElectLeaders(r) => m::Response::ElectLeaders(m::ElectLeadersResponse {
            error,
            results: r
                .partitions
                .iter()
                .flatten()
                .flat_map(|t| {
                    t.partitions.iter().map(|p| m::ElectionResult {
                        topic: t.topic.clone(),
                        partition: *p,
                        error,
                        message: message.clone(),
                        leader: m::NO_BROKER,
                    })
                })
                .collect(),
            message,
        }),
        m::Request::DescribeLogs(_) => m::Response::DescribeLogs(m::DescribeLogsResponse {
            error,
            message,
            broker_id: m::NO_BROKER,
            log_dir: String::new(),
            total_bytes: -1,
            usable_bytes: -1,
            logs: Vec::new(),
        }),
        m::Request::UnregisterBroker(_) => m::Response::UnregisterBroker(
            meridian_wire::describe_cluster::UnregisterBrokerResponse { error, message },
        ),
        // DescribeConfigs of brokers asks it (see `admin::describe_configs`).
        m::Request::DescribeCluster => {
            m::Response::DescribeCluster(meridian_wire::describe_cluster::DescribeClusterResponse {
                error,
                message,
                cluster_id: String::new(),
                broker_id: m::NO_BROKER,
                controller_id: m::NO_BROKER,
                quorum: None,
                brokers: Vec::new(),
            })
        }
        _ => return None,
    })
}
