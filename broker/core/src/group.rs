//! The consumer-group coordinator as a state machine.
//!
//! Membership: a consumer *joins* (gets a member id), *syncs* (reports the partitions
//! it owns and receives the partitions it may own now), *heartbeats* (stays alive and
//! learns whether its assignment changed) and *leaves*. The coordinator computes the
//! assignment itself with the group's assignor (server-side assignment, as in Kafka's
//! KIP-848), and hands a partition to its new owner only once the old owner has
//! reported giving it up, or has left or died. So a partition never has two owners,
//! and with the cooperative assignor members keep consuming what does not move.
//!
//! Offsets: commits are validated here and applied after the driver has made them
//! durable (the driver writes them to the offsets topic).
//!
//! No I/O and no clock: every input carries `now_ms`; [`Coordinator::tick`] expires
//! sessions and stuck revocations.

use std::collections::{BTreeMap, BTreeSet};

use crate::assignor::Assignor;
use crate::TopicPartition;

/// Coordinator limits. Every one is a broker config key (see the server's config).
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// `group_min_session_timeout_ms`: the shortest session a member may ask for.
    pub min_session_timeout_ms: u32,
    /// `group_max_session_timeout_ms`: the longest session a member may ask for.
    pub max_session_timeout_ms: u32,
    /// `group_max_size`: members per group.
    pub max_group_size: u32,
    /// `group_heartbeat_interval_ms`: how often members heartbeat (and the longest a
    /// heartbeat is held open waiting for an assignment change).
    pub heartbeat_interval_ms: u32,
    /// `offset_metadata_max_bytes`: the longest metadata string of a commit.
    pub offset_metadata_max_bytes: u32,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            max_group_size: 1_000,
            heartbeat_interval_ms: 3_000,
            offset_metadata_max_bytes: 4_096,
        }
    }
}

/// Why a group request was refused. The server maps each to a wire error code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupError {
    InvalidGroupId(String),
    /// The member id is not (or no longer) in the group: rejoin.
    UnknownMemberId(String),
    /// A static member's instance id was taken over by a newer member.
    FencedInstanceId(String),
    IllegalGeneration(String),
    InvalidSessionTimeout(String),
    GroupMaxSizeReached(String),
    InconsistentProtocol(String),
    GroupIdNotFound(String),
    NonEmptyGroup(String),
    /// Offsets of a topic a member subscribes to cannot be deleted.
    GroupSubscribedToTopic(String),
    OffsetMetadataTooLarge(String),
    InvalidCommitOffset(String),
    /// Another broker coordinates the group (cluster mode): find the coordinator again.
    NotCoordinator(String),
    /// The group's coordinator is not ready (offsets topic not created, or its
    /// partition still loading): retry.
    CoordinatorNotAvailable(String),
}

impl GroupError {
    pub fn message(&self) -> &str {
        match self {
            GroupError::InvalidGroupId(m)
            | GroupError::UnknownMemberId(m)
            | GroupError::FencedInstanceId(m)
            | GroupError::IllegalGeneration(m)
            | GroupError::InvalidSessionTimeout(m)
            | GroupError::GroupMaxSizeReached(m)
            | GroupError::InconsistentProtocol(m)
            | GroupError::GroupIdNotFound(m)
            | GroupError::NonEmptyGroup(m)
            | GroupError::GroupSubscribedToTopic(m)
            | GroupError::OffsetMetadataTooLarge(m)
            | GroupError::InvalidCommitOffset(m)
            | GroupError::NotCoordinator(m)
            | GroupError::CoordinatorNotAvailable(m) => m,
        }
    }
}

pub type Result<T> = std::result::Result<T, GroupError>;

/// Longest group id accepted.
pub const MAX_GROUP_ID_LEN: usize = 255;

#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub group_id: String,
    /// Empty for a new member.
    pub member_id: String,
    /// Static membership: a stable id that survives restarts without a rebalance.
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub topics: BTreeSet<String>,
    pub assignor: Assignor,
    pub session_timeout_ms: u32,
    /// How long the member may take to give up partitions once asked (Kafka's
    /// `max.poll.interval.ms`): a member that keeps them longer is removed.
    pub rebalance_timeout_ms: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinResponse {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncResponse {
    pub member_epoch: i32,
    /// The partitions this member may own now.
    pub assignment: BTreeSet<TopicPartition>,
    /// The member's target holds partitions it cannot have yet (their old owner has
    /// not given them up); another sync follows when they are free.
    pub pending: bool,
}

/// A committed offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    /// Leader epoch of the last consumed record's batch; -1 when not known.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// The incarnation of the topic committed to (in a region, the metadata log
    /// index that created it); 0 when not known. A commit of another incarnation
    /// is one of a topic since deleted and created again under the name.
    pub topic_incarnation: u64,
}

/// What an OffsetDelete may do ([`Coordinator::prepare_delete_offsets`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetDeletion {
    /// The commits to delete.
    pub partitions: Vec<TopicPartition>,
    /// The topics whose commits stay, with why.
    pub refused: Vec<(String, GroupError)>,
}

/// Something that happened on its own (from [`Coordinator::tick`]), for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    SessionExpired { group_id: String, member_id: String },
    RevocationTimedOut { group_id: String, member_id: String },
}

impl Event {
    pub fn group_id(&self) -> &str {
        match self {
            Event::SessionExpired { group_id, .. } | Event::RevocationTimedOut { group_id, .. } => {
                group_id
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    /// No members (committed offsets may exist).
    Empty,
    /// Some member does not own exactly its target yet.
    Reconciling,
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::Reconciling => "Reconciling",
            GroupState::Stable => "Stable",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub member_epoch: i32,
    pub topics: BTreeSet<String>,
    pub owned: BTreeSet<TopicPartition>,
    pub target: BTreeSet<TopicPartition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: GroupState,
    pub assignor: Option<Assignor>,
    pub epoch: i32,
    pub members: Vec<MemberDescription>,
}

/// A group's own part of its membership, as the driver persists it (with one
/// [`MemberRecord`] per member): enough for another coordinator, or this one after a
/// restart, to carry on with the same members without a rebalance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRecord {
    pub epoch: i32,
    pub assignor: Assignor,
    /// Eager assignors: partitions are withheld until every member gave up all it owned.
    pub revoking_all: bool,
}

/// One member as the driver persists it: everything but when it was last heard
/// from (its session starts again when a coordinator loads it, as in Kafka).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub topics: BTreeSet<String>,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    pub epoch: i32,
    pub owned: BTreeSet<TopicPartition>,
    pub sent: BTreeSet<TopicPartition>,
    pub target: BTreeSet<TopicPartition>,
    /// It holds partitions its target no longer has (its rebalance timeout runs
    /// again from the load).
    pub revoking: bool,
}

/// A group's membership as persisted: `None` and no members for a group without
/// members.
pub type Membership = (Option<GroupRecord>, BTreeMap<String, MemberRecord>);

#[derive(Debug)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    topics: BTreeSet<String>,
    session_timeout_ms: u32,
    rebalance_timeout_ms: u32,
    last_seen_ms: i64,
    /// The group epoch this member last synced at.
    epoch: i32,
    /// What the member said it owns at its last sync.
    owned: BTreeSet<TopicPartition>,
    /// What the last sync told it to own.
    sent: BTreeSet<TopicPartition>,
    /// Since when the member holds partitions its target no longer has.
    revoking_since_ms: Option<i64>,
}

#[derive(Debug, Default)]
struct Group {
    epoch: i32,
    assignor: Option<Assignor>,
    members: BTreeMap<String, Member>,
    /// instance id → member id, for static members.
    instances: BTreeMap<String, String>,
    target: BTreeMap<String, BTreeSet<TopicPartition>>,
    /// Eager assignors: partitions are withheld from everyone until every member has
    /// given up all it owned.
    revoking_all: bool,
    offsets: BTreeMap<TopicPartition, CommittedOffset>,
}

impl Group {
    fn state(&self) -> GroupState {
        if self.members.is_empty() {
            GroupState::Empty
        } else if self.revoking_all
            || self
                .members
                .iter()
                .any(|(id, m)| m.owned != self.target[id] || m.sent != m.owned)
        {
            GroupState::Reconciling
        } else {
            GroupState::Stable
        }
    }

    /// What `member_id` may own now: its target minus anything another member owns or
    /// was told it may own.
    fn allowed(&self, member_id: &str) -> BTreeSet<TopicPartition> {
        if self.revoking_all {
            return BTreeSet::new();
        }
        let Some(target) = self.target.get(member_id) else {
            return BTreeSet::new();
        };
        target
            .iter()
            .filter(|tp| {
                !self.members.iter().any(|(id, m)| {
                    id != member_id && (m.owned.contains(*tp) || m.sent.contains(*tp))
                })
            })
            .cloned()
            .collect()
    }

    fn recompute(&mut self, partition_counts: &BTreeMap<String, u32>, now_ms: i64) {
        let Some(assignor) = self.assignor else {
            return;
        };
        let subscriptions: BTreeMap<String, BTreeSet<String>> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.topics.clone()))
            .collect();
        let target = assignor.assign(&subscriptions, partition_counts, &self.target);
        if target == self.target {
            return;
        }
        self.target = target;
        self.epoch += 1;
        if assignor.is_eager() {
            self.revoking_all = self
                .members
                .values()
                .any(|m| !m.owned.is_empty() || !m.sent.is_empty());
        }
        self.update_revocations(now_ms);
    }

    fn update_revocations(&mut self, now_ms: i64) {
        if self.revoking_all
            && self
                .members
                .values()
                .all(|m| m.owned.is_empty() && m.sent.is_empty())
        {
            self.revoking_all = false;
        }
        for (id, member) in &mut self.members {
            let must_give_up = if self.revoking_all {
                !member.owned.is_empty()
            } else {
                !member.owned.is_subset(&self.target[id])
            };
            if !must_give_up {
                member.revoking_since_ms = None;
            } else if member.revoking_since_ms.is_none() {
                member.revoking_since_ms = Some(now_ms);
            }
        }
    }

    /// The member, heard from at `now_ms`, says it owns `owned`. It can only own
    /// what it was given at some point; anything else it claims is ignored. (Not
    /// just the last `sent`: if that sync's response was lost, the member still
    /// holds what it owned before.)
    fn reports(&mut self, member_id: &str, owned: BTreeSet<TopicPartition>, now_ms: i64) {
        let member = self
            .members
            .get_mut(member_id)
            .expect("a member of the group");
        member.last_seen_ms = now_ms;
        member.owned = owned
            .into_iter()
            .filter(|tp| member.sent.contains(tp) || member.owned.contains(tp))
            .collect();
    }

    fn remove_member(&mut self, member_id: &str) {
        if let Some(member) = self.members.remove(member_id) {
            if let Some(instance) = member.instance_id {
                if self.instances.get(&instance).map(String::as_str) == Some(member_id) {
                    self.instances.remove(&instance);
                }
            }
        }
        self.target.remove(member_id);
        if self.members.is_empty() {
            self.assignor = None;
            self.revoking_all = false;
        }
    }
}

/// Every group this coordinator owns.
#[derive(Debug)]
pub struct Coordinator {
    config: CoordinatorConfig,
    groups: BTreeMap<String, Group>,
    /// Partition count of every topic (from the driver).
    partition_counts: BTreeMap<String, u32>,
    /// Makes member ids unique across coordinator restarts (given by the driver).
    incarnation: u64,
    next_member: u64,
    /// When [`Coordinator::tick`] last ran.
    last_tick_ms: Option<i64>,
}

/// Ticks further apart than this mean the coordinator did not run in between (its
/// process was stopped or starved, or the clock jumped): it heard no heartbeat
/// then, so that time does not count against any member's session.
pub const TICK_GAP_MAX_MS: i64 = 1_000;

impl Coordinator {
    pub fn new(config: CoordinatorConfig, incarnation: u64) -> Coordinator {
        Coordinator {
            config,
            groups: BTreeMap::new(),
            partition_counts: BTreeMap::new(),
            incarnation,
            next_member: 0,
            last_tick_ms: None,
        }
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// A topic was created (`Some(count)`) or deleted (`None`). Groups subscribed to it
    /// are rebalanced. Returns the groups whose assignment changed.
    pub fn topic_changed(
        &mut self,
        topic: &str,
        partitions: Option<u32>,
        now_ms: i64,
    ) -> Vec<String> {
        match partitions {
            Some(n) => self.partition_counts.insert(topic.to_string(), n),
            None => self.partition_counts.remove(topic),
        };
        let mut changed = Vec::new();
        for (group_id, group) in &mut self.groups {
            if group.members.values().any(|m| m.topics.contains(topic)) {
                let epoch = group.epoch;
                group.recompute(&self.partition_counts, now_ms);
                if group.epoch != epoch {
                    changed.push(group_id.clone());
                }
            }
        }
        changed
    }

    pub fn join(&mut self, request: JoinRequest, now_ms: i64) -> Result<JoinResponse> {
        validate_group_id(&request.group_id)?;
        let config = &self.config;
        if request.session_timeout_ms < config.min_session_timeout_ms
            || request.session_timeout_ms > config.max_session_timeout_ms
        {
            return Err(GroupError::InvalidSessionTimeout(format!(
                "session timeout {} ms is outside the broker's range {}..={} ms (group_min_session_timeout_ms, group_max_session_timeout_ms)",
                request.session_timeout_ms, config.min_session_timeout_ms, config.max_session_timeout_ms
            )));
        }
        if request.topics.is_empty() {
            return Err(GroupError::InconsistentProtocol(
                "a member must subscribe to at least one topic".into(),
            ));
        }
        let group = self.groups.entry(request.group_id.clone()).or_default();
        if let Some(assignor) = group.assignor {
            if assignor != request.assignor && !group.members.is_empty() {
                return Err(GroupError::InconsistentProtocol(format!(
                    "group `{}` uses the {} assignor; this member asked for {}",
                    request.group_id,
                    assignor.name(),
                    request.assignor.name()
                )));
            }
        }

        // A known member joining again (for example after a network blip) keeps its id.
        if !request.member_id.is_empty() {
            let Some(member) = group.members.get_mut(&request.member_id) else {
                return Err(GroupError::UnknownMemberId(format!(
                    "member `{}` is not in group `{}`; join with an empty member id",
                    request.member_id, request.group_id
                )));
            };
            member.last_seen_ms = now_ms;
            member.session_timeout_ms = request.session_timeout_ms;
            member.rebalance_timeout_ms = request.rebalance_timeout_ms;
            let topics_changed = member.topics != request.topics;
            member.topics = request.topics;
            let epoch = member.epoch;
            if topics_changed {
                group.recompute(&self.partition_counts, now_ms);
            }
            return Ok(JoinResponse {
                member_id: request.member_id,
                member_epoch: epoch,
                heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            });
        }

        self.next_member += 1;
        let member_id = format!(
            "{}-{:x}-{}",
            if request.client_id.is_empty() {
                "member"
            } else {
                &request.client_id
            },
            self.incarnation,
            self.next_member
        );
        let mut member = Member {
            instance_id: request.instance_id.clone(),
            client_id: request.client_id,
            client_host: request.client_host,
            topics: request.topics,
            session_timeout_ms: request.session_timeout_ms,
            rebalance_timeout_ms: request.rebalance_timeout_ms,
            last_seen_ms: now_ms,
            epoch: group.epoch,
            owned: BTreeSet::new(),
            sent: BTreeSet::new(),
            revoking_since_ms: None,
        };

        // A static member coming back takes over its predecessor's place and target,
        // without a rebalance; the predecessor is fenced.
        if let Some(instance) = &request.instance_id {
            if let Some(old_id) = group.instances.get(instance).cloned() {
                let old = group
                    .members
                    .remove(&old_id)
                    .expect("instances index members");
                let target = group.target.remove(&old_id).unwrap_or_default();
                if old.topics == member.topics {
                    group.instances.insert(instance.clone(), member_id.clone());
                    group.target.insert(member_id.clone(), target);
                    group.members.insert(member_id.clone(), member);
                    group.update_revocations(now_ms);
                    return Ok(JoinResponse {
                        member_id,
                        member_epoch: group.epoch,
                        heartbeat_interval_ms: self.config.heartbeat_interval_ms,
                    });
                }
                // Subscriptions changed: treat it as a new member.
                group.instances.remove(instance);
                member.epoch = group.epoch;
            }
        }
        if group.members.len() as u32 >= self.config.max_group_size {
            return Err(GroupError::GroupMaxSizeReached(format!(
                "group `{}` already has {} members (group_max_size)",
                request.group_id,
                group.members.len()
            )));
        }
        if let Some(instance) = request.instance_id {
            group.instances.insert(instance, member_id.clone());
        }
        group.assignor = Some(request.assignor);
        group.members.insert(member_id.clone(), member);
        group.target.insert(member_id.clone(), BTreeSet::new());
        group.recompute(&self.partition_counts, now_ms);
        Ok(JoinResponse {
            member_id,
            member_epoch: group.epoch,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
        })
    }

    fn member_mut<'a>(
        groups: &'a mut BTreeMap<String, Group>,
        group_id: &str,
        member_id: &str,
    ) -> Result<(&'a mut Group, String)> {
        let unknown = || {
            GroupError::UnknownMemberId(format!(
                "member `{member_id}` is not in group `{group_id}` (its session may have expired); rejoin"
            ))
        };
        let group = groups.get_mut(group_id).ok_or_else(unknown)?;
        if !group.members.contains_key(member_id) {
            return Err(unknown());
        }
        Ok((group, member_id.to_string()))
    }

    /// The member reports what it owns and learns what it may own now.
    pub fn sync(
        &mut self,
        group_id: &str,
        member_id: &str,
        owned: BTreeSet<TopicPartition>,
        now_ms: i64,
    ) -> Result<SyncResponse> {
        let (group, member_id) = Self::member_mut(&mut self.groups, group_id, member_id)?;
        group.reports(&member_id, owned, now_ms);
        // Recompute `sent` from scratch: the member gives up `sent` first, so what it
        // was told before does not block its own new assignment.
        group
            .members
            .get_mut(&member_id)
            .expect("checked")
            .sent
            .clear();
        group.update_revocations(now_ms);
        let allowed = group.allowed(&member_id);
        let epoch = group.epoch;
        let target_len = group.target.get(&member_id).map_or(0, BTreeSet::len);
        let member = group.members.get_mut(&member_id).expect("checked");
        member.sent = allowed.clone();
        member.epoch = epoch;
        group.update_revocations(now_ms);
        Ok(SyncResponse {
            member_epoch: epoch,
            pending: allowed.len() < target_len,
            assignment: allowed,
        })
    }

    /// The member took what its last sync gave it and holds `owned` now (that, and
    /// for a cooperative Kafka member what it still holds from before): a Kafka
    /// member says so to nobody, since it syncs again only at its next rebalance,
    /// so its driver confirms for it once the answer is on its way. Unlike a sync
    /// this does not compute what the member may own again: the member keeps
    /// being told what it was told, so if the group changed since (another member
    /// joined), what it may own differs from that and its next heartbeat says
    /// to sync; were it told the smaller share here, the coordinator would count
    /// it as holding partitions it never had, and wait for it to give them up.
    pub fn confirm(
        &mut self,
        group_id: &str,
        member_id: &str,
        owned: BTreeSet<TopicPartition>,
        now_ms: i64,
    ) -> Result<()> {
        let (group, member_id) = Self::member_mut(&mut self.groups, group_id, member_id)?;
        group.reports(&member_id, owned, now_ms);
        group.update_revocations(now_ms);
        Ok(())
    }

    /// Keeps the member alive. `Ok(true)` when the member should sync because what it
    /// may own differs from what it was last told.
    pub fn heartbeat(&mut self, group_id: &str, member_id: &str, now_ms: i64) -> Result<bool> {
        let (group, member_id) = Self::member_mut(&mut self.groups, group_id, member_id)?;
        group
            .members
            .get_mut(&member_id)
            .expect("checked")
            .last_seen_ms = now_ms;
        self.sync_needed(group_id, &member_id)
    }

    /// Whether the member should sync, without counting as a sign of life (for a
    /// heartbeat held open: the member is only known alive when the heartbeat came).
    pub fn sync_needed(&self, group_id: &str, member_id: &str) -> Result<bool> {
        let unknown = || {
            GroupError::UnknownMemberId(format!(
                "member `{member_id}` is not in group `{group_id}` (its session may have expired); rejoin"
            ))
        };
        let group = self.groups.get(group_id).ok_or_else(unknown)?;
        let member = group.members.get(member_id).ok_or_else(unknown)?;
        Ok(group.allowed(member_id) != member.sent)
    }

    /// The member's session timeout, if the group has the member.
    pub fn session_timeout_ms(&self, group_id: &str, member_id: &str) -> Option<u32> {
        let member = self.groups.get(group_id)?.members.get(member_id)?;
        Some(member.session_timeout_ms)
    }

    /// A member leaves; its partitions go to the others at once. A static member may
    /// be removed by instance id (with an empty member id).
    pub fn leave(
        &mut self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return Err(GroupError::UnknownMemberId(format!(
                "group `{group_id}` has no members"
            )));
        };
        let member_id = match (member_id, instance_id) {
            ("", Some(instance)) => group.instances.get(instance).cloned().ok_or_else(|| {
                GroupError::UnknownMemberId(format!(
                    "no member of group `{group_id}` has instance id `{instance}`"
                ))
            })?,
            (id, _) => id.to_string(),
        };
        if !group.members.contains_key(&member_id) {
            return Err(GroupError::UnknownMemberId(format!(
                "member `{member_id}` is not in group `{group_id}`"
            )));
        }
        group.remove_member(&member_id);
        group.recompute(&self.partition_counts, now_ms);
        group.update_revocations(now_ms);
        Ok(())
    }

    /// Expires members whose session ran out and members that held on to partitions
    /// past their rebalance timeout. The driver calls it every so often; a gap of
    /// more than [`TICK_GAP_MAX_MS`] since the last call is time the coordinator was
    /// not running, and moves every session and revocation clock on by as much, so
    /// a coordinator thawed after a pause longer than a session does not expire
    /// members whose heartbeats it could not take.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Event> {
        let gap = self.last_tick_ms.map_or(0, |last| now_ms - last);
        self.last_tick_ms = Some(now_ms);
        if gap > TICK_GAP_MAX_MS {
            for m in self
                .groups
                .values_mut()
                .flat_map(|g| g.members.values_mut())
            {
                // Not past now: a heartbeat taken since the thaw already counts.
                m.last_seen_ms = (m.last_seen_ms + gap).min(now_ms);
                if let Some(since) = m.revoking_since_ms.as_mut() {
                    *since = (*since + gap).min(now_ms);
                }
            }
        }
        let mut events = Vec::new();
        for (group_id, group) in &mut self.groups {
            let mut expired = Vec::new();
            for (id, m) in &group.members {
                if now_ms - m.last_seen_ms > i64::from(m.session_timeout_ms) {
                    expired.push(Event::SessionExpired {
                        group_id: group_id.clone(),
                        member_id: id.clone(),
                    });
                } else if m
                    .revoking_since_ms
                    .is_some_and(|since| now_ms - since > i64::from(m.rebalance_timeout_ms))
                {
                    expired.push(Event::RevocationTimedOut {
                        group_id: group_id.clone(),
                        member_id: id.clone(),
                    });
                }
            }
            for event in &expired {
                let (Event::SessionExpired { member_id, .. }
                | Event::RevocationTimedOut { member_id, .. }) = event;
                group.remove_member(member_id);
            }
            if !expired.is_empty() {
                group.recompute(&self.partition_counts, now_ms);
                group.update_revocations(now_ms);
            }
            events.extend(expired);
        }
        events
    }

    /// The earliest time [`tick`](Coordinator::tick) has something to do.
    pub fn poll_timeout(&self) -> Option<i64> {
        self.groups
            .values()
            .flat_map(|g| g.members.values())
            .flat_map(|m| {
                let session = m.last_seen_ms + i64::from(m.session_timeout_ms) + 1;
                let revoke = m
                    .revoking_since_ms
                    .map(|s| s + i64::from(m.rebalance_timeout_ms) + 1);
                std::iter::once(session).chain(revoke)
            })
            .min()
    }

    /// Checks that a commit may be made. Members commit with their id and epoch; with
    /// an empty member id (a consumer outside the group, or an admin reset) a commit is
    /// allowed only while the group has no members.
    pub fn validate_commit(
        &self,
        group_id: &str,
        member_id: &str,
        member_epoch: i32,
        offsets: &[(TopicPartition, CommittedOffset)],
    ) -> Result<()> {
        validate_group_id(group_id)?;
        for (tp, committed) in offsets {
            if committed.metadata.len() > self.config.offset_metadata_max_bytes as usize {
                return Err(GroupError::OffsetMetadataTooLarge(format!(
                    "commit metadata for {tp} is {} bytes; the limit is {} (offset_metadata_max_bytes)",
                    committed.metadata.len(),
                    self.config.offset_metadata_max_bytes
                )));
            }
            if committed.offset < 0 {
                return Err(GroupError::InvalidCommitOffset(format!(
                    "offset {} for {tp} is negative",
                    committed.offset
                )));
            }
            if committed.leader_epoch < -1 {
                return Err(GroupError::InvalidCommitOffset(format!(
                    "leader epoch {} for {tp} is below -1 (none)",
                    committed.leader_epoch
                )));
            }
        }
        let group = self.groups.get(group_id);
        let n_members = group.map_or(0, |g| g.members.len());
        if member_id.is_empty() {
            if n_members > 0 {
                return Err(GroupError::NonEmptyGroup(format!(
                    "group `{group_id}` has {n_members} active members; only members may commit (stop them first)"
                )));
            }
            return Ok(());
        }
        let Some(member) = group.and_then(|g| g.members.get(member_id)) else {
            return Err(GroupError::UnknownMemberId(format!(
                "member `{member_id}` is not in group `{group_id}`; its partitions may have moved"
            )));
        };
        // Fencing is by member id: a member removed from the group cannot commit. The
        // epoch only has to be one this group has handed out to it.
        let group_epoch = group.map_or(0, |g| g.epoch);
        if member_epoch > group_epoch || member_epoch < 0 {
            return Err(GroupError::IllegalGeneration(format!(
                "member epoch {member_epoch} was never handed out by group `{group_id}` (epoch {group_epoch}, member at {})",
                member.epoch
            )));
        }
        Ok(())
    }

    /// Records a commit made durable by the driver (also used when loading).
    pub fn apply_commit(&mut self, group_id: &str, tp: TopicPartition, committed: CommittedOffset) {
        self.groups
            .entry(group_id.to_string())
            .or_default()
            .offsets
            .insert(tp, committed);
    }

    /// Removes a committed offset (a tombstone while loading).
    pub fn remove_commit(&mut self, group_id: &str, tp: &TopicPartition) {
        if let Some(group) = self.groups.get_mut(group_id) {
            group.offsets.remove(tp);
            if group.offsets.is_empty() && group.members.is_empty() {
                self.groups.remove(group_id);
            }
        }
    }

    /// Every group's commits that `deleted` picks (by topic and commit), commits of
    /// a deleted topic: as Kafka drops a deleted topic's committed offsets, the
    /// driver writes tombstones for them, then calls [`Coordinator::remove_commit`],
    /// so a topic created again under the name is read from where the consumer's
    /// reset policy says, not from the old offsets.
    pub fn commits_of(
        &self,
        deleted: impl Fn(&str, &CommittedOffset) -> bool,
    ) -> Vec<(String, Vec<TopicPartition>)> {
        self.groups
            .iter()
            .map(|(group_id, group)| {
                let partitions: Vec<TopicPartition> = group
                    .offsets
                    .iter()
                    .filter(|(tp, c)| deleted(&tp.topic, c))
                    .map(|(tp, _)| tp)
                    .cloned()
                    .collect();
                (group_id.clone(), partitions)
            })
            .filter(|(_, partitions)| !partitions.is_empty())
            .collect()
    }

    pub fn committed(&self, group_id: &str) -> BTreeMap<TopicPartition, CommittedOffset> {
        self.groups
            .get(group_id)
            .map(|g| g.offsets.clone())
            .unwrap_or_default()
    }

    /// Checks a group can be deleted and returns its committed partitions (the driver
    /// writes tombstones for them, then calls [`Coordinator::forget`]).
    pub fn prepare_delete(&self, group_id: &str) -> Result<Vec<TopicPartition>> {
        let Some(group) = self.groups.get(group_id) else {
            return Err(GroupError::GroupIdNotFound(format!(
                "group `{group_id}` does not exist"
            )));
        };
        if !group.members.is_empty() {
            return Err(GroupError::NonEmptyGroup(format!(
                "group `{group_id}` has {} active members; stop them before deleting it",
                group.members.len()
            )));
        }
        Ok(group.offsets.keys().cloned().collect())
    }

    /// Which committed offsets of `topics` may be deleted (Kafka's OffsetDelete): none
    /// if the group does not exist; of a topic a member subscribes to, none either
    /// (the topic is refused with [`GroupError::GroupSubscribedToTopic`]); of every
    /// other topic, those of the partitions listed, or of every one it committed when
    /// none are, that have a commit. The driver writes tombstones for them, then
    /// calls [`Coordinator::remove_commit`].
    pub fn prepare_delete_offsets(
        &self,
        group_id: &str,
        topics: &BTreeMap<String, BTreeSet<u32>>,
    ) -> Result<OffsetDeletion> {
        let Some(group) = self.groups.get(group_id) else {
            return Err(GroupError::GroupIdNotFound(format!(
                "group `{group_id}` does not exist"
            )));
        };
        let subscribed = |t: &str| group.members.values().any(|m| m.topics.contains(t));
        let refused = topics
            .keys()
            .filter(|t| subscribed(t))
            .map(|t| {
                let why = GroupError::GroupSubscribedToTopic(format!(
                    "members of group `{group_id}` subscribe to `{t}`; stop them or change their subscription first"
                ));
                (t.clone(), why)
            })
            .collect();
        let partitions = group
            .offsets
            .keys()
            .filter(|tp| {
                topics.get(&tp.topic).is_some_and(|ps| {
                    !subscribed(&tp.topic) && (ps.is_empty() || ps.contains(&tp.partition))
                })
            })
            .cloned()
            .collect();
        Ok(OffsetDeletion {
            partitions,
            refused,
        })
    }

    pub fn forget(&mut self, group_id: &str) {
        if self
            .groups
            .get(group_id)
            .is_some_and(|g| g.members.is_empty())
        {
            self.groups.remove(group_id);
        }
    }

    /// Drops every group `owned` says this coordinator no longer owns (another broker
    /// coordinates them now), members included: they get "not coordinator" here and
    /// carry on at the new coordinator, which loaded the group (committed offsets and
    /// membership) from the log.
    /// Returns the groups dropped.
    pub fn unload(&mut self, mut owned: impl FnMut(&str) -> bool) -> Vec<String> {
        let gone: Vec<String> = self
            .groups
            .keys()
            .filter(|id| !owned(id))
            .cloned()
            .collect();
        for id in &gone {
            self.groups.remove(id);
        }
        gone
    }

    /// The group's membership as the driver persists it (see [`GroupRecord`]). The
    /// driver compares it with what it wrote last and writes the difference, so a
    /// change made here is in the log before any answer that depends on it.
    pub fn membership(&self, group_id: &str) -> Membership {
        let Some(group) = self.groups.get(group_id) else {
            return (None, BTreeMap::new());
        };
        let Some(assignor) = group.assignor.filter(|_| !group.members.is_empty()) else {
            return (None, BTreeMap::new());
        };
        let members = group
            .members
            .iter()
            .map(|(id, m)| {
                let record = MemberRecord {
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    topics: m.topics.clone(),
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    epoch: m.epoch,
                    owned: m.owned.clone(),
                    sent: m.sent.clone(),
                    target: group.target.get(id).cloned().unwrap_or_default(),
                    revoking: m.revoking_since_ms.is_some(),
                };
                (id.clone(), record)
            })
            .collect();
        let record = GroupRecord {
            epoch: group.epoch,
            assignor,
            revoking_all: group.revoking_all,
        };
        (Some(record), members)
    }

    /// Takes over a group's membership persisted by a coordinator before (when loading
    /// the offsets log). Every member's session, and any revocation's timeout, starts
    /// at `now_ms`: a member that is gone is removed one session from now. Replaces
    /// the members this coordinator had for the group; keeps its committed offsets.
    pub fn restore_membership(&mut self, group_id: &str, membership: Membership, now_ms: i64) {
        let (record, members) = membership;
        let group = self.groups.entry(group_id.to_string()).or_default();
        group.members.clear();
        group.instances.clear();
        group.target.clear();
        group.revoking_all = false;
        group.assignor = None;
        let Some(record) = record.filter(|_| !members.is_empty()) else {
            if group.offsets.is_empty() {
                self.groups.remove(group_id);
            }
            return;
        };
        group.epoch = record.epoch;
        group.assignor = Some(record.assignor);
        group.revoking_all = record.revoking_all;
        for (id, m) in members {
            if let Some(instance) = &m.instance_id {
                group.instances.insert(instance.clone(), id.clone());
            }
            group.target.insert(id.clone(), m.target);
            let member = Member {
                instance_id: m.instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                topics: m.topics,
                session_timeout_ms: m.session_timeout_ms,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                last_seen_ms: now_ms,
                epoch: m.epoch,
                owned: m.owned,
                sent: m.sent,
                revoking_since_ms: m.revoking.then_some(now_ms),
            };
            group.members.insert(id, member);
        }
    }

    /// Computes every group's assignment again (after loading: topics may have changed
    /// while no coordinator had the group). Returns the groups whose target changed.
    pub fn recompute_all(&mut self, now_ms: i64) -> Vec<String> {
        let mut changed = Vec::new();
        for (group_id, group) in &mut self.groups {
            let epoch = group.epoch;
            group.recompute(&self.partition_counts, now_ms);
            if group.epoch != epoch {
                changed.push(group_id.clone());
            }
        }
        changed
    }

    pub fn list(&self) -> Vec<(String, GroupState)> {
        self.groups
            .iter()
            .map(|(id, g)| (id.clone(), g.state()))
            .collect()
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let group = self.groups.get(group_id)?;
        Some(GroupDescription {
            group_id: group_id.to_string(),
            state: group.state(),
            assignor: group.assignor,
            epoch: group.epoch,
            members: group
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    member_epoch: m.epoch,
                    topics: m.topics.clone(),
                    owned: m.owned.clone(),
                    target: group.target.get(id).cloned().unwrap_or_default(),
                })
                .collect(),
        })
    }
}

fn validate_group_id(group_id: &str) -> Result<()> {
    if group_id.is_empty()
        || group_id.len() > MAX_GROUP_ID_LEN
        || group_id.chars().any(char::is_control)
    {
        return Err(GroupError::InvalidGroupId(format!(
            "group id must be 1..={MAX_GROUP_ID_LEN} bytes without control characters, got {group_id:?}"
        )));
    }
    Ok(())
}
