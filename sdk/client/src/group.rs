//! Consumer groups: settings, the membership task that keeps a consumer in its group,
//! and the group admin calls.
//!
//! The broker's coordinator computes assignments. A member joins, then a background
//! task heartbeats (the broker holds each heartbeat until the member's assignment
//! changes, so rebalances take milliseconds, not heartbeat intervals) and syncs: it
//! reports the partitions the consumer owns and receives the ones it may own now.
//! [`Consumer::poll`](crate::Consumer::poll) applies a new assignment: it commits and
//! releases revoked partitions first, then starts the new ones from their committed
//! offsets, and calls the [`RebalanceListener`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_wire::messages::*;
use meridian_wire::ErrorCode;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::accumulator::TopicPartition;
use crate::admin::Admin;
use crate::client::{unexpected, Client};
use crate::error::{Error, Result};
use crate::metadata::{on_error, OnError};

const JOIN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How partitions are spread over a group's members (all members must agree).
///
/// ```
/// use meridian_client::{Assignor, GroupConfig};
/// let config = GroupConfig {
///     assignor: Assignor::parse("roundrobin").unwrap(),
///     ..GroupConfig::new("billing")
/// };
/// assert_eq!(config.assignor.name(), "roundrobin");
/// assert_eq!(GroupConfig::new("billing").assignor, Assignor::CooperativeSticky);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assignor {
    /// Contiguous ranges per topic. Eager: every member stops on a rebalance.
    Range,
    /// Partitions dealt out in turn. Eager.
    RoundRobin,
    /// Keeps partitions where they are and moves only what balance needs; members
    /// keep consuming what does not move. The default.
    CooperativeSticky,
}

impl Assignor {
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }

    pub fn parse(name: &str) -> Option<Assignor> {
        [
            Assignor::Range,
            Assignor::RoundRobin,
            Assignor::CooperativeSticky,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }
}

/// Group settings for [`Consumer::subscribe`](crate::Consumer::subscribe); defaults
/// follow Kafka's consumer.
///
/// ```
/// use std::time::Duration;
/// use meridian_client::GroupConfig;
/// let config = GroupConfig {
///     instance_id: Some("billing-1".into()), // static membership
///     ..GroupConfig::new("billing")
/// };
/// assert_eq!(config.session_timeout, Duration::from_secs(45));
/// ```
#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub group_id: String,
    /// Static membership: a member that restarts with the same instance id within
    /// its session timeout gets its partitions back without a rebalance.
    pub instance_id: Option<String>,
    pub client_id: String,
    pub assignor: Assignor,
    /// A member not heard from for this long is removed. Default 45 s.
    pub session_timeout: Duration,
    /// The longest gap between `poll` calls; a consumer that exceeds it leaves the
    /// group so its partitions move on. Default 5 min.
    pub max_poll_interval: Duration,
    /// Commit positions in the background every `auto_commit_interval`, before
    /// partitions are revoked, and on close. Default on.
    pub enable_auto_commit: bool,
    /// Default 5 s.
    pub auto_commit_interval: Duration,
}

impl GroupConfig {
    pub fn new(group_id: impl Into<String>) -> GroupConfig {
        GroupConfig {
            group_id: group_id.into(),
            instance_id: None,
            client_id: "meridian-client".into(),
            assignor: Assignor::CooperativeSticky,
            session_timeout: Duration::from_secs(45),
            max_poll_interval: Duration::from_secs(300),
            enable_auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
        }
    }
}

/// Called from [`Consumer::poll`](crate::Consumer::poll) as the group's assignment
/// changes. Positions of revoked partitions are already committed when auto-commit
/// is on; commit your own state here otherwise.
///
/// ```no_run
/// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
/// use meridian_client::{ConsumerConfig, GroupConfig, RebalanceListener};
/// struct Log;
/// impl RebalanceListener for Log {
///     fn on_assigned(&mut self, partitions: &[(String, u32)]) {
///         println!("now consuming {partitions:?}");
///     }
///     fn on_revoked(&mut self, partitions: &[(String, u32)]) {
///         println!("handed over {partitions:?}");
///     }
/// }
/// let mut consumer = client.consumer(ConsumerConfig::default());
/// consumer.set_rebalance_listener(Box::new(Log));
/// consumer.subscribe(GroupConfig::new("billing"), &["orders"]).await?;
/// # Ok(()) }
/// ```
pub trait RebalanceListener: Send {
    /// Partitions newly assigned, with their positions set.
    fn on_assigned(&mut self, _partitions: &[(String, u32)]) {}
    /// Partitions given up cleanly in a rebalance.
    fn on_revoked(&mut self, _partitions: &[(String, u32)]) {}
    /// Partitions lost without a clean hand-over (the session expired, or the member
    /// was fenced): another member may already be consuming them.
    fn on_lost(&mut self, _partitions: &[(String, u32)]) {}
}

/// State shared by the membership task and the consumer.
#[derive(Debug, Default)]
pub(crate) struct MemberState {
    pub(crate) member_id: String,
    pub(crate) member_epoch: i32,
    /// Partitions the consumer owns (reported at sync).
    pub(crate) owned: BTreeSet<TopicPartition>,
    /// The latest assignment, waiting for `poll` to apply it.
    pub(crate) assignment: Option<BTreeSet<TopicPartition>>,
    /// Membership was lost: `poll` drops every partition, then clears this (the
    /// membership task waits for that before joining again).
    pub(crate) lost: bool,
    pub(crate) last_poll: Option<Instant>,
    /// A persistent failure to report from `poll` (e.g. a refused session timeout).
    pub(crate) error: Option<Error>,
}

/// The membership task and its handles. Dropping it stops the task (the member's
/// session then expires on the broker).
pub(crate) struct Membership {
    pub(crate) config: GroupConfig,
    pub(crate) state: Arc<Mutex<MemberState>>,
    /// Poked by `poll` after it applied an assignment: sync now.
    pub(crate) sync_now: Arc<Notify>,
    /// Poked by the task when an assignment arrives or membership is lost.
    pub(crate) assignment_ready: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
    pub(crate) last_auto_commit: Instant,
    /// The background auto-commit under way, awaited before any other commit so an
    /// older position can never land after a newer one.
    pub(crate) auto_commit: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) fn lock(state: &Mutex<MemberState>) -> std::sync::MutexGuard<'_, MemberState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Membership {
    pub(crate) fn start(
        client: Client,
        config: GroupConfig,
        topics: BTreeSet<String>,
    ) -> Membership {
        let state = Arc::new(Mutex::new(MemberState {
            last_poll: Some(Instant::now()),
            ..MemberState::default()
        }));
        let sync_now = Arc::new(Notify::new());
        let assignment_ready = Arc::new(Notify::new());
        let task = tokio::spawn(run_membership(
            client,
            config.clone(),
            topics,
            state.clone(),
            sync_now.clone(),
            assignment_ready.clone(),
        ));
        Membership {
            config,
            state,
            sync_now,
            assignment_ready,
            task,
            last_auto_commit: Instant::now(),
            auto_commit: None,
        }
    }

    /// Stops the task and leaves the group (static members stay, so a restart within
    /// the session timeout gets the same partitions back).
    pub(crate) async fn leave(&self, client: &Client) -> Result<()> {
        self.task.abort();
        let member_id = lock(&self.state).member_id.clone();
        if member_id.is_empty() || self.config.instance_id.is_some() {
            return Ok(());
        }
        leave_group(client, &self.config.group_id, &member_id, None).await
    }
}

fn wire_tps(tps: &BTreeSet<TopicPartition>) -> Vec<TopicPartitions> {
    TopicPartitions::group(tps.iter().map(|tp| (tp.topic.as_str(), tp.partition)))
}

fn from_wire(tps: Vec<TopicPartitions>) -> BTreeSet<TopicPartition> {
    TopicPartitions::pairs(&tps)
        .map(|(topic, partition)| TopicPartition {
            topic: topic.to_string(),
            partition,
        })
        .collect()
}

fn check(error: ErrorCode, message: String) -> Result<()> {
    if error.is_ok() {
        Ok(())
    } else {
        Err(Error::broker(error, message))
    }
}

async fn leave_group(
    client: &Client,
    group_id: &str,
    member_id: &str,
    instance_id: Option<String>,
) -> Result<()> {
    let response = client
        .coordinator_request(
            group_id,
            Request::LeaveGroup(LeaveGroupRequest {
                group_id: group_id.to_string(),
                member_id: member_id.to_string(),
                instance_id,
            }),
        )
        .await?;
    let Response::LeaveGroup(r) = response else {
        return Err(unexpected(ApiKey::LeaveGroup, &response));
    };
    check(r.error, r.message)
}

/// Drops membership: the consumer must give up everything (its partitions may be
/// someone else's already).
fn mark_lost(state: &Mutex<MemberState>, ready: &Notify) {
    let mut s = lock(state);
    s.member_id.clear();
    s.assignment = None;
    s.lost = true;
    drop(s);
    ready.notify_one();
}

/// The coordinator no longer knows this member: marks the membership lost, then
/// waits (at most `limit`) for `poll` to deal with it before the task joins again.
/// The consumer then commits the positions it read since its last commit, which the
/// coordinator takes only while the group has no member, this one's new membership
/// included (see `Consumer::save_lost_positions`).
async fn lose_membership(
    state: &Mutex<MemberState>,
    ready: &Notify,
    handled: &Notify,
    limit: Duration,
) {
    mark_lost(state, ready);
    let deadline = tokio::time::Instant::now() + limit;
    while lock(state).lost {
        if tokio::time::timeout_at(deadline, handled.notified())
            .await
            .is_err()
        {
            break;
        }
    }
}

async fn run_membership(
    client: Client,
    config: GroupConfig,
    topics: BTreeSet<String>,
    state: Arc<Mutex<MemberState>>,
    sync_now: Arc<Notify>,
    assignment_ready: Arc<Notify>,
) {
    let mut backoff = JOIN_BACKOFF_MIN;
    let mut heartbeat_interval = Duration::from_secs(3);
    let mut must_sync = true;
    loop {
        // Too long since the application polled: leave, so the partitions move on; join
        // again once it polls.
        let last_poll = lock(&state).last_poll;
        let idle = last_poll.map_or(Duration::ZERO, |t| t.elapsed());
        if idle > config.max_poll_interval {
            let member_id = std::mem::take(&mut lock(&state).member_id);
            if !member_id.is_empty() {
                tracing::warn!(group = %config.group_id, ?idle, "poll not called within max_poll_interval; leaving the group");
                let _ = leave_group(&client, &config.group_id, &member_id, None).await;
                mark_lost(&state, &assignment_ready);
            }
            sync_now.notified().await;
            continue;
        }

        let member_id = lock(&state).member_id.clone();
        if member_id.is_empty() {
            match join(&client, &config, &topics).await {
                Ok(joined) => {
                    heartbeat_interval =
                        Duration::from_millis(u64::from(joined.heartbeat_interval_ms.max(1)));
                    let mut s = lock(&state);
                    s.member_id = joined.member_id;
                    s.member_epoch = joined.member_epoch;
                    s.error = None;
                    must_sync = true;
                    backoff = JOIN_BACKOFF_MIN;
                }
                Err(e) => {
                    tracing::debug!(group = %config.group_id, error = %e, "join failed");
                    // A coordinator that died (connection refused or timed out) is
                    // replaced once its offsets partition has a new leader: retry, as
                    // the client does for every request routed to a leader.
                    if on_error(&e) == OnError::Fail {
                        lock(&state).error = Some(e);
                        assignment_ready.notify_one();
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(JOIN_BACKOFF_MAX);
                    continue;
                }
            }
        }
        let member_id = lock(&state).member_id.clone();

        if must_sync {
            let owned = lock(&state).owned.clone();
            let response = client
                .coordinator_request(
                    &config.group_id,
                    Request::SyncGroup(SyncGroupRequest {
                        group_id: config.group_id.clone(),
                        member_id: member_id.clone(),
                        owned: wire_tps(&owned),
                    }),
                )
                .await;
            match response {
                Ok(Response::SyncGroup(r)) if r.error.is_ok() => {
                    let assignment = from_wire(r.assignment);
                    let mut s = lock(&state);
                    s.member_epoch = r.member_epoch;
                    if assignment != s.owned {
                        s.assignment = Some(assignment);
                        drop(s);
                        assignment_ready.notify_one();
                    } else {
                        s.assignment = None;
                    }
                    must_sync = false;
                }
                Ok(Response::SyncGroup(r))
                    if matches!(
                        r.error,
                        ErrorCode::UnknownMemberId | ErrorCode::FencedInstanceId
                    ) =>
                {
                    tracing::info!(group = %config.group_id, reason = %r.message, "membership lost; rejoining");
                    lose_membership(
                        &state,
                        &assignment_ready,
                        &sync_now,
                        config.session_timeout / 3,
                    )
                    .await;
                    continue;
                }
                Ok(other) => {
                    tracing::warn!(group = %config.group_id, response = ?other.api_key(), "sync refused");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(group = %config.group_id, error = %e, "sync failed; retrying");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
        }

        // A heartbeat at most a third of the session apart, held by the broker until
        // our assignment changes; `poll` interrupts it when it has news to sync.
        let max_wait = heartbeat_interval.min(config.session_timeout / 3);
        let epoch = lock(&state).member_epoch;
        let heartbeat = client.coordinator_request(
            &config.group_id,
            Request::Heartbeat(HeartbeatRequest {
                group_id: config.group_id.clone(),
                member_id: member_id.clone(),
                member_epoch: epoch,
                max_wait_ms: max_wait.as_millis() as u32,
            }),
        );
        tokio::select! {
            _ = sync_now.notified() => {
                must_sync = true;
            }
            response = heartbeat => match response {
                Ok(Response::Heartbeat(r)) if r.error.is_ok() => must_sync |= r.sync_needed,
                Ok(Response::Heartbeat(r)) if matches!(r.error, ErrorCode::UnknownMemberId | ErrorCode::FencedInstanceId) => {
                    tracing::info!(group = %config.group_id, reason = %r.message, "membership lost; rejoining");
                    lose_membership(&state, &assignment_ready, &sync_now, config.session_timeout / 3)
                        .await;
                }
                Ok(_) | Err(_) => tokio::time::sleep(JOIN_BACKOFF_MIN).await,
            }
        }
    }
}

async fn join(
    client: &Client,
    config: &GroupConfig,
    topics: &BTreeSet<String>,
) -> Result<JoinGroupResponse> {
    let response = client
        .coordinator_request(
            &config.group_id,
            Request::JoinGroup(JoinGroupRequest {
                group_id: config.group_id.clone(),
                member_id: String::new(),
                instance_id: config.instance_id.clone(),
                client_id: config.client_id.clone(),
                topics: topics.iter().cloned().collect(),
                assignor: config.assignor.name().to_string(),
                session_timeout_ms: config.session_timeout.as_millis() as u32,
                rebalance_timeout_ms: config.max_poll_interval.as_millis() as u32,
            }),
        )
        .await?;
    let Response::JoinGroup(r) = response else {
        return Err(unexpected(ApiKey::JoinGroup, &response));
    };
    check(r.error, r.message.clone())?;
    Ok(r)
}

/// One offset to commit: the next offset to consume of a partition, and a metadata
/// string kept with it (up to the broker's `offset_metadata_max_bytes`).
///
/// With the leader epoch of the last consumed record
/// ([`ConsumerRecord::leader_epoch`](crate::ConsumerRecord::leader_epoch)), a
/// consumer that later resumes from this commit notices when a leader change has cut
/// the log below it since, instead of reading on past a gap
/// ([`Error::LogTruncated`](crate::Error::LogTruncated)). [`Consumer::commit`](crate::Consumer::commit)
/// and auto-commit include it.
///
/// ```no_run
/// # async fn example(mut consumer: meridian_client::Consumer) -> meridian_client::Result<()> {
/// use meridian_client::OffsetCommit;
/// // Processed up to offset 41 of orders/0: the next to consume is 42.
/// consumer
///     .commit_offsets(&[OffsetCommit::new("orders", 0, 42).metadata("batch 7")])
///     .await?;
/// assert_eq!(consumer.committed("orders", 0).await?, Some(42));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub leader_epoch: Option<i32>,
    pub metadata: String,
}

impl OffsetCommit {
    pub fn new(topic: impl Into<String>, partition: u32, offset: i64) -> OffsetCommit {
        OffsetCommit {
            topic: topic.into(),
            partition,
            offset,
            leader_epoch: None,
            metadata: String::new(),
        }
    }

    /// The leader epoch of the last consumed record (the one before `offset`).
    pub fn leader_epoch(mut self, epoch: i32) -> OffsetCommit {
        self.leader_epoch = (epoch >= 0).then_some(epoch);
        self
    }

    pub fn metadata(mut self, metadata: impl Into<String>) -> OffsetCommit {
        self.metadata = metadata.into();
        self
    }
}

/// Where a consumer stands in a partition: the next offset to read, and the leader
/// epoch of the batch of the last record read before it (`NO_LEADER_EPOCH` when
/// not known).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    pub offset: i64,
    pub epoch: i32,
}

/// Commits positions for a group: as a member (`member_id`, `member_epoch`) or, with
/// an empty member id, for a group that has no active members.
pub(crate) async fn commit(
    client: &Client,
    group_id: &str,
    member_id: &str,
    member_epoch: i32,
    positions: &BTreeMap<TopicPartition, Position>,
) -> Result<()> {
    let offsets: Vec<OffsetCommit> = positions
        .iter()
        .map(|(tp, p)| {
            OffsetCommit::new(tp.topic.clone(), tp.partition, p.offset).leader_epoch(p.epoch)
        })
        .collect();
    commit_with_metadata(client, group_id, member_id, member_epoch, &offsets).await
}

pub(crate) async fn commit_with_metadata(
    client: &Client,
    group_id: &str,
    member_id: &str,
    member_epoch: i32,
    offsets: &[OffsetCommit],
) -> Result<()> {
    let mut topics: BTreeMap<&str, Vec<PartitionOffset>> = BTreeMap::new();
    for o in offsets {
        topics.entry(&o.topic).or_default().push(PartitionOffset {
            partition: o.partition,
            offset: o.offset,
            leader_epoch: o.leader_epoch.unwrap_or(NO_LEADER_EPOCH),
            metadata: o.metadata.clone(),
            commit_timestamp_ms: -1,
        });
    }
    let response = client
        .coordinator_request(
            group_id,
            Request::OffsetCommit(OffsetCommitRequest {
                group_id: group_id.to_string(),
                member_id: member_id.to_string(),
                member_epoch,
                topics: topics
                    .into_iter()
                    .map(|(topic, partitions)| TopicOffsets {
                        topic: topic.to_string(),
                        partitions,
                    })
                    .collect(),
            }),
        )
        .await?;
    let Response::OffsetCommit(r) = response else {
        return Err(unexpected(ApiKey::OffsetCommit, &response));
    };
    check(r.error, r.message)
}

/// A group as listed by [`Admin::list_groups`].
///
/// ```no_run
/// # async fn example(admin: meridian_client::Admin) -> meridian_client::Result<()> {
/// for group in admin.list_groups().await? {
///     println!("{} is {}", group.group_id, group.state);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    /// `Empty`, `Reconciling` or `Stable`.
    pub state: String,
}

/// A committed offset of a group.
///
/// ```no_run
/// # async fn example(admin: meridian_client::Admin) -> meridian_client::Result<()> {
/// use meridian_client::Offset;
/// // The group's lag on each partition of `orders`.
/// for committed in admin.committed_offsets("billing", Some("orders")).await? {
///     let end = admin
///         .list_offsets(&committed.topic, committed.partition, Offset::Latest)
///         .await?;
///     println!("{}/{}: lag {}", committed.topic, committed.partition, end - committed.offset);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    /// Leader epoch of the last consumed record, when the commit named it.
    pub leader_epoch: Option<i32>,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

impl Admin {
    fn client(&self) -> &Client {
        &self.client
    }

    /// Every group, with its state, sorted by id. Each broker lists the groups it
    /// coordinates, so this asks every live broker (one, standalone); a broker that
    /// does not answer fails the call rather than leaving its groups out.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        let metadata = self.client().metadata(Some(Vec::new())).await?;
        let mut groups = BTreeMap::new();
        for broker in &metadata.brokers {
            let response = self
                .client()
                .request_to(broker.broker_id, Request::ListGroups(ListGroupsRequest {}))
                .await?;
            let Response::ListGroups(r) = response else {
                return Err(unexpected(ApiKey::ListGroups, &response));
            };
            // During a coordinator move a group may be listed twice; either state
            // is recent.
            groups.extend(r.groups.into_iter().map(|g| (g.group_id, g.state)));
        }
        Ok(groups
            .into_iter()
            .map(|(group_id, state)| GroupListing { group_id, state })
            .collect())
    }

    /// A group's state, assignor and members with their assignments.
    pub async fn describe_group(
        &self,
        group_id: &str,
    ) -> Result<meridian_wire::group::GroupDescription> {
        let response = self
            .client()
            .coordinator_request(
                group_id,
                Request::DescribeGroups(DescribeGroupsRequest {
                    group_ids: vec![group_id.to_string()],
                }),
            )
            .await?;
        let Response::DescribeGroups(r) = response else {
            return Err(unexpected(ApiKey::DescribeGroups, &response));
        };
        let group = r
            .groups
            .into_iter()
            .find(|g| g.group_id == group_id)
            .ok_or_else(|| {
                Error::Protocol(format!("DescribeGroups response lacks `{group_id}`"))
            })?;
        check(group.error, group.message.clone())?;
        Ok(group)
    }

    /// Committed offsets of a group: all of them, or of `topic`'s partitions only.
    pub async fn committed_offsets(
        &self,
        group_id: &str,
        topic: Option<&str>,
    ) -> Result<Vec<CommittedOffset>> {
        let topics = match topic {
            Some(topic) => {
                let n = self.client().partition_count(topic).await?;
                Some(vec![TopicPartitions {
                    topic: topic.to_string(),
                    partitions: (0..n).collect(),
                }])
            }
            None => None,
        };
        let response = self
            .client()
            .coordinator_request(
                group_id,
                Request::OffsetFetch(OffsetFetchRequest {
                    group_id: group_id.to_string(),
                    topics,
                }),
            )
            .await?;
        let Response::OffsetFetch(r) = response else {
            return Err(unexpected(ApiKey::OffsetFetch, &response));
        };
        check(r.error, r.message)?;
        Ok(r.topics
            .into_iter()
            .flat_map(|t| {
                let topic = t.topic;
                t.partitions
                    .into_iter()
                    .filter(|p| p.offset >= 0)
                    .map(move |p| CommittedOffset {
                        topic: topic.clone(),
                        partition: p.partition,
                        offset: p.offset,
                        leader_epoch: (p.leader_epoch >= 0).then_some(p.leader_epoch),
                        metadata: p.metadata,
                        commit_timestamp_ms: p.commit_timestamp_ms,
                    })
            })
            .collect())
    }

    /// Sets a group's committed offsets. Refused with [`ErrorCode::NonEmptyGroup`]
    /// while the group has active members.
    pub async fn set_committed_offsets(
        &self,
        group_id: &str,
        offsets: &[OffsetCommit],
    ) -> Result<()> {
        commit_with_metadata(self.client(), group_id, "", -1, offsets).await
    }

    /// Deletes a group and its committed offsets. Refused with
    /// [`ErrorCode::NonEmptyGroup`] while it has members.
    pub async fn delete_group(&self, group_id: &str) -> Result<()> {
        let response = self
            .client()
            .coordinator_request(
                group_id,
                Request::DeleteGroups(DeleteGroupsRequest {
                    group_ids: vec![group_id.to_string()],
                }),
            )
            .await?;
        let Response::DeleteGroups(r) = response else {
            return Err(unexpected(ApiKey::DeleteGroups, &response));
        };
        let result = r
            .results
            .into_iter()
            .find(|g| g.group_id == group_id)
            .ok_or_else(|| Error::Protocol(format!("DeleteGroups response lacks `{group_id}`")))?;
        check(result.error, result.message)
    }

    /// Deletes the group's committed offsets of `topic` (Kafka's OffsetDelete): of
    /// `partitions`, or of every partition it committed when `None` (the topic may no
    /// longer exist). Returns the partitions whose commits were deleted. Refused with
    /// [`ErrorCode::GroupSubscribedToTopic`] while a member subscribes to the topic,
    /// and with [`ErrorCode::GroupIdNotFound`] for a group the coordinator does not
    /// know. A group left with neither members nor commits is gone.
    pub async fn delete_committed_offsets(
        &self,
        group_id: &str,
        topic: &str,
        partitions: Option<&[u32]>,
    ) -> Result<Vec<u32>> {
        if partitions.is_some_and(<[u32]>::is_empty) {
            return Ok(Vec::new());
        }
        let response = self
            .client()
            .coordinator_request(
                group_id,
                Request::OffsetDelete(OffsetDeleteRequest {
                    group_id: group_id.to_string(),
                    topics: vec![TopicPartitions {
                        topic: topic.to_string(),
                        partitions: partitions.map(<[u32]>::to_vec).unwrap_or_default(),
                    }],
                }),
            )
            .await?;
        let Response::OffsetDelete(r) = response else {
            return Err(unexpected(ApiKey::OffsetDelete, &response));
        };
        check(r.error, r.message)?;
        Ok(TopicPartitions::pairs(&r.deleted)
            .filter(|(t, _)| *t == topic)
            .map(|(_, p)| p)
            .collect())
    }

    /// Removes a static member by instance id (it would otherwise stay until its
    /// session times out).
    pub async fn remove_static_member(&self, group_id: &str, instance_id: &str) -> Result<()> {
        leave_group(self.client(), group_id, "", Some(instance_id.to_string())).await
    }
}
