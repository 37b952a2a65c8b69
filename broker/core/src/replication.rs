//! Partition replication inside a region, as state machines: the controller's view
//! of brokers and partitions ([`Controller`]) and one broker's replica of one partition
//! ([`Replica`]): leader or follower, log end offset, high watermark, leader-epoch
//! cache and ISR.
//!
//! The model is Kafka's (KRaft era):
//! - The controller (backed by a Raft quorum in the server) fences brokers that stop
//!   heartbeating, elects leaders from the ISR only (unclean election only when the
//!   partition allows it), bumps the leader epoch on every leader change, and accepts
//!   ISR changes only from the current leader at the current partition epoch.
//! - Followers pull from the leader with their fetch offset and last fetched epoch;
//!   a leader that does not have that epoch's history answers with where it diverges
//!   and the follower truncates there (leader-epoch truncation, KIP-101/KIP-320), so a
//!   follower never keeps a tail the leader does not have.
//! - The high watermark is the smallest log end among the *maximal* ISR: the ISR the
//!   controller committed plus additions the leader has proposed. A shrink counts only
//!   once the controller confirms it. So every record below the high watermark is on
//!   every replica the controller could elect.
//!
//! Records themselves never pass through here: the driver moves bytes and tells the
//! state machine what it appended (counts and epochs).

use std::collections::{BTreeMap, BTreeSet};

pub type BrokerId = u32;

/// Leader epochs of a log: `(epoch, start_offset)` ascending in both.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<(i32, i64)>,
}

impl EpochCache {
    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|(e, _)| *e)
    }

    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    /// Records that `epoch` starts at `start_offset` (no-op when it is already the latest).
    pub fn assign(&mut self, epoch: i32, start_offset: i64) {
        match self.entries.last() {
            Some((latest, _)) if *latest == epoch => {}
            Some((latest, start)) => {
                assert!(epoch > *latest, "epochs only grow: {epoch} after {latest}");
                assert!(start_offset >= *start, "epoch starts only grow");
                self.entries.push((epoch, start_offset));
            }
            None => self.entries.push((epoch, start_offset)),
        }
    }

    /// The largest epoch at or below `epoch`, and where it ends (the start of the
    /// next epoch, or `log_end`). `None` when every known epoch is above `epoch`.
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> Option<(i32, i64)> {
        let i = self.entries.partition_point(|(e, _)| *e <= epoch);
        if i == 0 {
            return None;
        }
        let found = self.entries[i - 1].0;
        let end = self.entries.get(i).map_or(log_end, |(_, start)| *start);
        Some((found, end))
    }

    /// Forgets epochs starting at or after `offset` (the log was truncated there).
    pub fn truncate_from(&mut self, offset: i64) {
        self.entries.retain(|(_, start)| *start < offset);
    }
}

/// The leader epoch of `offset` in a log whose leader epochs are `entries`: the
/// latest one starting at or below it (at the log end, the latest); `None` below
/// every epoch or without epochs.
pub fn epoch_at(entries: &[(i32, i64)], offset: i64) -> Option<i32> {
    let after = entries.partition_point(|(_, start)| *start <= offset);
    after.checked_sub(1).map(|i| entries[i].0)
}

/// Where `requested` ends in a log whose leader epochs are `entries` (`(epoch,
/// start_offset)` ascending) and whose end is `log_end`, as Kafka's
/// OffsetForLeaderEpoch answers a client: the latest epoch ends at `log_end`; an
/// older one at the start of the next epoch, answered with the largest epoch here at
/// or below it; one older than every epoch here answers itself and the start of the
/// oldest. `None` (Kafka's undefined epoch and offset) for one newer than every epoch
/// here, a negative one, or a log without epochs.
pub fn epoch_end_offset(
    entries: &[(i32, i64)],
    requested: i32,
    log_end: i64,
) -> Option<(i32, i64)> {
    let &(latest, _) = entries.last()?;
    if requested < 0 || requested > latest {
        return None;
    }
    if requested == latest {
        return Some((latest, log_end));
    }
    let next = entries.partition_point(|(e, _)| *e <= requested);
    let end = entries[next].1;
    Some(match next.checked_sub(1) {
        Some(floor) => (entries[floor].0, end),
        None => (requested, end),
    })
}

/// The controller's record of one partition, pushed to its replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderAndIsr {
    pub leader: Option<BrokerId>,
    pub leader_epoch: i32,
    pub isr: BTreeSet<BrokerId>,
    pub replicas: Vec<BrokerId>,
    /// Bumped on every change (leader or ISR): orders the records a broker receives.
    pub partition_epoch: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationError {
    /// This replica is not the leader (or not at that epoch).
    NotLeader,
    /// acks=all with fewer in-sync replicas than `min.insync.replicas`.
    NotEnoughReplicas { isr: usize, min: usize },
    /// The request's leader epoch is older than the leader's.
    FencedLeaderEpoch,
    /// The request's leader epoch is newer than what this replica knows.
    UnknownLeaderEpoch,
}

/// A follower's fetch, as the leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerFetch {
    pub replica: BrokerId,
    /// The leader epoch the follower believes current.
    pub leader_epoch: i32,
    pub fetch_offset: i64,
    /// The epoch of the follower's last record, for divergence checks.
    pub last_fetched_epoch: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchAnswer {
    /// Send the records from `fetch_offset` up to the log end, and the high watermark.
    Records { high_watermark: i64 },
    /// The follower's log diverges: truncate to at most `end_offset` of `epoch`.
    Diverging { epoch: i32, end_offset: i64 },
}

/// An ISR change the leader asks the controller for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterIsr {
    pub leader: BrokerId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: BTreeSet<BrokerId>,
}

#[derive(Clone, Debug, Default)]
struct Progress {
    /// The follower's log end as of its last fetch; -1 until it fetched at this epoch.
    log_end: i64,
    last_caught_up_ms: i64,
    last_fetch_ms: i64,
    leader_end_at_last_fetch: i64,
    /// It fetched since it last left the ISR: only then may it rejoin (as in Kafka,
    /// where expansion happens on a fetch), so a replica the controller just fenced
    /// is not proposed back on the strength of its fetches before it died.
    fetched_since_removal: bool,
}

#[derive(Clone, Debug)]
struct LeaderState {
    followers: BTreeMap<BrokerId, Progress>,
    /// Proposed to the controller and not yet answered, with when it was sent.
    pending: Option<(AlterIsr, i64)>,
}

#[derive(Clone, Debug)]
enum Role {
    Leader(LeaderState),
    Follower,
    /// Not a replica, or no leader known.
    None,
}

/// Settings of one partition's replication.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaConfig {
    /// `replica.lag.time.max.ms`: a follower not caught up for this long leaves the ISR.
    pub replica_lag_time_max_ms: i64,
    /// `min.insync.replicas`.
    pub min_insync_replicas: usize,
    /// How long the leader waits for the controller's answer before asking again.
    pub alter_isr_retry_ms: i64,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            replica_lag_time_max_ms: 30_000,
            min_insync_replicas: 1,
            alter_isr_retry_ms: 1_000,
        }
    }
}

/// One broker's replica of one partition.
#[derive(Clone, Debug)]
pub struct Replica {
    pub id: BrokerId,
    config: ReplicaConfig,
    state: Option<LeaderAndIsr>,
    role: Role,
    log_end: i64,
    high_watermark: i64,
    epochs: EpochCache,
}

impl Replica {
    /// A replica whose log (after recovery) ends at `log_end` with `epochs`.
    pub fn new(id: BrokerId, config: ReplicaConfig, log_end: i64, epochs: EpochCache) -> Replica {
        Replica {
            id,
            config,
            state: None,
            role: Role::None,
            log_end,
            high_watermark: 0,
            epochs,
        }
    }

    pub fn log_end(&self) -> i64 {
        self.log_end
    }

    /// The topic's `min.insync.replicas` changed: acks=all appends from now on need
    /// this many in-sync replicas.
    pub fn set_min_insync_replicas(&mut self, n: usize) {
        self.config.min_insync_replicas = n;
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    pub fn epochs(&self) -> &EpochCache {
        &self.epochs
    }

    /// KIP-320 for consumers. A consumer whose last batch was written in
    /// `last_fetched_epoch` and that now fetches from `fetch_offset` has read records
    /// this log does not hold when that epoch (or the largest here below it) ends
    /// here before `fetch_offset`: an unclean election or a failover to a replica
    /// that was behind cut them. Returns that epoch and where it ends here, the
    /// offset to read on from. `None` also when every epoch here is newer (nothing
    /// to compare with), as Kafka's consumer does.
    pub fn consumer_divergence(
        &self,
        last_fetched_epoch: i32,
        fetch_offset: i64,
    ) -> Option<(i32, i64)> {
        let (epoch, end) = self
            .epochs
            .end_offset_for(last_fetched_epoch, self.log_end)?;
        (end < fetch_offset).then_some((epoch, end))
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    pub fn leader_epoch(&self) -> Option<i32> {
        self.state.as_ref().map(|s| s.leader_epoch)
    }

    pub fn leader(&self) -> Option<BrokerId> {
        self.state.as_ref().and_then(|s| s.leader)
    }

    pub fn isr(&self) -> BTreeSet<BrokerId> {
        self.state
            .as_ref()
            .map(|s| s.isr.clone())
            .unwrap_or_default()
    }

    /// Applies the controller's record if it is newer than what this replica has.
    /// Returns true when leadership or the leader epoch changed.
    pub fn apply(&mut self, update: LeaderAndIsr, now_ms: i64) -> bool {
        if let Some(current) = &self.state {
            let newer = (update.leader_epoch, update.partition_epoch)
                > (current.leader_epoch, current.partition_epoch);
            if !newer {
                return false;
            }
        }
        let epoch_changed =
            self.state.as_ref().map(|s| s.leader_epoch) != Some(update.leader_epoch);
        let leads = update.leader == Some(self.id);
        if leads && epoch_changed {
            // A new epoch starts at our log end; followers are unknown until they fetch.
            self.epochs.assign(update.leader_epoch, self.log_end);
            let followers = update
                .replicas
                .iter()
                .filter(|r| **r != self.id)
                .map(|r| {
                    (
                        *r,
                        Progress {
                            log_end: -1,
                            last_caught_up_ms: now_ms,
                            ..Progress::default()
                        },
                    )
                })
                .collect();
            self.role = Role::Leader(LeaderState {
                followers,
                pending: None,
            });
        } else if leads {
            // Same epoch: a new ISR (the controller answered our proposal) or new
            // replicas (a reassignment adds some to copy the log, then drops the old).
            if let Role::Leader(leader) = &mut self.role {
                leader.pending = None;
                leader
                    .followers
                    .retain(|id, _| update.replicas.contains(id));
                for (id, progress) in &mut leader.followers {
                    if !update.isr.contains(id)
                        && self.state.as_ref().is_some_and(|s| s.isr.contains(id))
                    {
                        progress.fetched_since_removal = false;
                    }
                }
                for r in update.replicas.iter().filter(|r| **r != self.id) {
                    leader.followers.entry(*r).or_insert(Progress {
                        log_end: -1,
                        last_caught_up_ms: now_ms,
                        ..Progress::default()
                    });
                }
            }
        } else if update.leader.is_some() && update.replicas.contains(&self.id) {
            self.role = Role::Follower;
        } else {
            self.role = Role::None;
        }
        self.state = Some(update);
        self.maybe_advance_high_watermark();
        epoch_changed
    }

    /// Checks a produce before the driver appends it.
    pub fn check_append(&self, acks_all: bool) -> Result<i32, ReplicationError> {
        let (Role::Leader(_), Some(state)) = (&self.role, &self.state) else {
            return Err(ReplicationError::NotLeader);
        };
        if acks_all && state.isr.len() < self.config.min_insync_replicas {
            return Err(ReplicationError::NotEnoughReplicas {
                isr: state.isr.len(),
                min: self.config.min_insync_replicas,
            });
        }
        Ok(state.leader_epoch)
    }

    /// The leader appended `n_records` at its log end, stamped with its epoch. Returns
    /// their base offset.
    pub fn appended_as_leader(&mut self, n_records: u32) -> i64 {
        assert!(self.is_leader(), "only a leader appends produced records");
        let base = self.log_end;
        self.log_end += i64::from(n_records);
        self.maybe_advance_high_watermark();
        base
    }

    /// Handles a follower's fetch on the leader, whose log now starts at `log_start`.
    pub fn handle_fetch(
        &mut self,
        fetch: FollowerFetch,
        log_start: i64,
        now_ms: i64,
    ) -> Result<FetchAnswer, ReplicationError> {
        let (Role::Leader(leader), Some(state)) = (&mut self.role, &self.state) else {
            return Err(ReplicationError::NotLeader);
        };
        if fetch.leader_epoch < state.leader_epoch {
            return Err(ReplicationError::FencedLeaderEpoch);
        }
        if fetch.leader_epoch > state.leader_epoch {
            return Err(ReplicationError::UnknownLeaderEpoch);
        }
        let Some(progress) = leader.followers.get_mut(&fetch.replica) else {
            return Err(ReplicationError::NotLeader);
        };
        if let Some(last_epoch) = fetch.last_fetched_epoch {
            match self.epochs.end_offset_for(last_epoch, self.log_end) {
                Some((epoch, end)) if epoch == last_epoch && fetch.fetch_offset <= end => {}
                Some((epoch, end)) => {
                    return Ok(FetchAnswer::Diverging {
                        epoch,
                        end_offset: end,
                    })
                }
                None => {
                    return Ok(FetchAnswer::Diverging {
                        epoch: -1,
                        end_offset: 0,
                    })
                }
            }
        } else if fetch.fetch_offset > log_start {
            // Records without epochs: keep nothing we cannot vouch for. (A follower
            // with an empty log at or below our log start has none; below it, the
            // read fails and the follower restarts its log at our start.)
            return Ok(FetchAnswer::Diverging {
                epoch: -1,
                end_offset: 0,
            });
        }
        if fetch.fetch_offset > self.log_end {
            return Ok(FetchAnswer::Diverging {
                epoch: self.epochs.latest_epoch().unwrap_or(-1),
                end_offset: self.log_end,
            });
        }
        // Kafka's rule: caught up if at our end now, or at least where our end was at
        // the previous fetch (then it was caught up as of that fetch).
        if fetch.fetch_offset >= self.log_end {
            progress.last_caught_up_ms = now_ms;
        } else if fetch.fetch_offset >= progress.leader_end_at_last_fetch {
            progress.last_caught_up_ms = progress.last_caught_up_ms.max(progress.last_fetch_ms);
        }
        progress.log_end = fetch.fetch_offset;
        progress.fetched_since_removal = true;
        progress.leader_end_at_last_fetch = self.log_end;
        progress.last_fetch_ms = now_ms;
        self.maybe_advance_high_watermark();
        Ok(FetchAnswer::Records {
            high_watermark: self.high_watermark,
        })
    }

    /// The smallest log end among the maximal ISR.
    fn maybe_advance_high_watermark(&mut self) {
        let (Role::Leader(leader), Some(state)) = (&self.role, &self.state) else {
            return;
        };
        let mut maximal = state.isr.clone();
        if let Some((proposal, _)) = &leader.pending {
            maximal.extend(proposal.isr.iter().copied());
        }
        let min_end = maximal
            .iter()
            .map(|r| {
                if *r == self.id {
                    self.log_end
                } else {
                    leader.followers.get(r).map_or(-1, |p| p.log_end)
                }
            })
            .min()
            .unwrap_or(self.log_end);
        // Only records of the current epoch's log can be vouched for by follower log
        // ends learned in this epoch (they passed the divergence check).
        if min_end > self.high_watermark {
            self.high_watermark = min_end;
        }
    }

    /// ISR maintenance on the leader: followers lagging longer than
    /// `replica_lag_time_max_ms` leave, caught-up ones join. Returns a proposal for the
    /// controller when the ISR should change and none is outstanding.
    pub fn poll_isr_change(&mut self, now_ms: i64) -> Option<AlterIsr> {
        let (Role::Leader(leader), Some(state)) = (&mut self.role, &self.state) else {
            return None;
        };
        if let Some((proposal, sent_ms)) = &leader.pending {
            if now_ms - sent_ms < self.config.alter_isr_retry_ms {
                return None;
            }
            let proposal = proposal.clone();
            leader.pending = Some((proposal.clone(), now_ms));
            return Some(proposal);
        }
        let epoch_start = self
            .epochs
            .end_offset_for(state.leader_epoch, self.log_end)
            .and_then(|_| self.epochs.entries().last().map(|(_, s)| *s))
            .unwrap_or(0);
        let mut isr = state.isr.clone();
        for (id, progress) in &leader.followers {
            let in_isr = isr.contains(id);
            let lagging = now_ms - progress.last_caught_up_ms > self.config.replica_lag_time_max_ms;
            if in_isr && lagging {
                isr.remove(id);
            } else if !in_isr
                && progress.fetched_since_removal
                && progress.log_end >= self.high_watermark
                && progress.log_end >= epoch_start
                && !lagging
            {
                isr.insert(*id);
            }
        }
        isr.insert(self.id);
        if isr == state.isr {
            return None;
        }
        let proposal = AlterIsr {
            leader: self.id,
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            isr,
        };
        leader.pending = Some((proposal.clone(), now_ms));
        self.maybe_advance_high_watermark();
        Some(proposal)
    }

    /// The controller refused our proposal (stale epoch): drop it; a newer record
    /// from the controller follows.
    pub fn alter_isr_refused(&mut self) {
        if let Role::Leader(leader) = &mut self.role {
            leader.pending = None;
        }
    }

    /// Whether the last `LeaderAndIsr` applied names this replica in the ISR. A
    /// follower outside it is catching up: a new replica of a reassignment, or one
    /// back after being away.
    pub fn in_sync(&self) -> bool {
        self.state
            .as_ref()
            .is_some_and(|state| state.isr.contains(&self.id))
    }

    /// What a follower asks its leader for next.
    pub fn next_fetch(&self) -> Option<(BrokerId, FollowerFetch)> {
        let (Role::Follower, Some(state)) = (&self.role, &self.state) else {
            return None;
        };
        let leader = state.leader?;
        Some((
            leader,
            FollowerFetch {
                replica: self.id,
                leader_epoch: state.leader_epoch,
                fetch_offset: self.log_end,
                last_fetched_epoch: self.epochs.latest_epoch(),
            },
        ))
    }

    /// A follower learns it diverges: where to truncate its log to. The driver
    /// truncates, then calls [`Replica::truncated`].
    pub fn divergence_truncation(&self, epoch: i32, end_offset: i64) -> i64 {
        match self.epochs.end_offset_for(epoch, self.log_end) {
            Some((_, own_end)) => own_end.min(end_offset).min(self.log_end),
            None => 0,
        }
    }

    /// The driver truncated the log to `offset`.
    pub fn truncated(&mut self, offset: i64) {
        assert!(!self.is_leader(), "a leader never truncates");
        assert!(offset <= self.log_end);
        self.log_end = offset;
        self.epochs.truncate_from(offset);
        self.high_watermark = self.high_watermark.min(offset);
    }

    /// The driver emptied the log and restarted it at `offset`: this follower had
    /// fallen below the leader's log start (or its empty log restarts at the first
    /// batch the leader sent). Nothing it had is kept, so no epochs either;
    /// everything below `offset` was committed (a leader's log start never passes
    /// its high watermark).
    pub fn restarted_at(&mut self, offset: i64) {
        assert!(!self.is_leader(), "a leader never restarts its log");
        self.log_end = offset;
        self.epochs = EpochCache::default();
        self.high_watermark = offset;
    }

    /// The driver appended a fetched batch `(epoch, base_offset, n_records)` as a
    /// follower; `leader_high_watermark` came with it.
    pub fn appended_as_follower(
        &mut self,
        batches: &[(i32, i64, u32)],
        leader_high_watermark: i64,
    ) {
        assert!(!self.is_leader(), "followers append fetched records");
        if !batches.is_empty() {
            // Epochs starting at the log end hold no records here (this replica led
            // in them and appended nothing): the leader's log says what comes next,
            // possibly records of an older epoch (as Kafka's epoch cache lets a new
            // entry replace later ones).
            self.epochs.truncate_from(self.log_end);
        }
        for (epoch, base, n) in batches {
            // A compacted leader log may skip offsets between batches.
            assert!(*base >= self.log_end, "fetched batches continue the log");
            self.epochs.assign(*epoch, *base);
            self.log_end = base + i64::from(*n);
        }
        self.high_watermark = self
            .high_watermark
            .max(leader_high_watermark.min(self.log_end));
    }
}

/// Ends a reassignment (finished or cancelled): `replicas` become the partition's
/// replicas (the caller already narrowed the ISR to them); a leader not among them
/// hands over to the first in-sync, unfenced one, in a new leader epoch.
fn settle_replicas(state: &mut LeaderAndIsr, replicas: Vec<BrokerId>, fenced: &BTreeSet<BrokerId>) {
    if state.leader.is_some_and(|l| !replicas.contains(&l)) {
        state.leader = replicas
            .iter()
            .copied()
            .find(|r| state.isr.contains(r) && !fenced.contains(r));
        state.leader_epoch += 1;
    }
    state.replicas = replicas;
    state.partition_epoch += 1;
}

/// The controller's view of a broker.
#[derive(Clone, Debug)]
struct BrokerRecord {
    last_heartbeat_ms: i64,
    incarnation: u64,
    fenced: bool,
    /// In controlled shutdown: stays fenced until it comes back as a new incarnation.
    shutting_down: bool,
}

/// The controller's view of one partition, with its election policy.
#[derive(Clone, Debug)]
pub struct PartitionRecord {
    pub state: LeaderAndIsr,
    pub unclean_leader_election: bool,
    /// A reassignment under way. Until every target replica is in sync, the partition
    /// is replicated to the old and the new replicas together.
    pub reassignment: Option<Reassignment>,
}

/// A partition moving to other replicas (Kafka's KIP-455 state): `replicas` is the
/// original ones followed by `adding`; `removing` are the original ones not in `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reassignment {
    /// The replicas the partition ends with, in order (the first is preferred).
    pub target: Vec<BrokerId>,
    /// In `target` but not among the original replicas: they copy the log.
    pub adding: Vec<BrokerId>,
    /// Original replicas not in `target`: dropped once every target replica is in sync.
    pub removing: Vec<BrokerId>,
}

/// Why the controller refused a reassignment or its cancellation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReassignError {
    UnknownPartition,
    /// Empty, repeats a broker, or names a broker that is not registered.
    InvalidAssignment(String),
    /// A cancellation, but the partition is not being reassigned.
    NoReassignmentInProgress,
    /// Cancelling would leave no original replica in sync (the data lives only on
    /// replicas being added): let the reassignment finish instead.
    CannotCancel(String),
}

/// Why the controller did not move a partition's leadership to its preferred replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElectError {
    UnknownPartition,
    /// Nothing to elect: the preferred replica leads it already (a preferred
    /// election), or it has a leader (an unclean one).
    NotNeeded,
    /// No replica of it is registered and unfenced (an unclean election).
    NoLiveReplica,
    /// The preferred replica is fenced or not registered, not in the ISR, or the
    /// partition is being reassigned (the reassignment decides where leadership ends).
    PreferredNotAvailable(String),
}

/// Something the controller decided on its own (for logs and tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControllerEvent<P = u32> {
    BrokerFenced(BrokerId),
    LeaderElected {
        partition: P,
        leader: BrokerId,
        epoch: i32,
        unclean: bool,
    },
    PartitionOffline {
        partition: P,
    },
}

/// Brokers, partitions, leaders and ISRs; the state the metadata quorum replicates.
///
/// Partitions are keyed by `P`: a bare partition number in the simulation, a
/// (topic, partition) pair in the broker.
#[derive(Clone, Debug)]
pub struct Controller<P = u32> {
    session_timeout_ms: i64,
    /// Partitions given an out-of-sync leader since the last `take_unclean_elections`.
    unclean_elections: Vec<P>,
    brokers: BTreeMap<BrokerId, BrokerRecord>,
    partitions: BTreeMap<P, PartitionRecord>,
}

/// Why [`Controller::unregister_broker`] refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnregisterRefused<P> {
    NotRegistered,
    /// Not fenced: it heartbeats.
    Running,
    /// The partitions listing it among their replicas.
    HoldsReplicas(Vec<P>),
}

/// What the controller knows of a broker, for rebuilding it from replicated state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokerState {
    pub incarnation: u64,
    pub fenced: bool,
    pub shutting_down: bool,
}

impl<P: Ord + Clone> Controller<P> {
    pub fn new(session_timeout_ms: i64) -> Controller<P> {
        Controller {
            session_timeout_ms,
            unclean_elections: Vec::new(),
            brokers: BTreeMap::new(),
            partitions: BTreeMap::new(),
        }
    }

    pub fn partition(&self, partition: &P) -> Option<&LeaderAndIsr> {
        self.partitions.get(partition).map(|p| &p.state)
    }

    pub fn partitions(&self) -> impl Iterator<Item = (&P, &LeaderAndIsr)> {
        self.partitions.iter().map(|(k, v)| (k, &v.state))
    }

    pub fn is_fenced(&self, broker: BrokerId) -> bool {
        self.brokers.get(&broker).is_none_or(|b| b.fenced)
    }

    /// Creates a partition on `replicas` (the first live one leads).
    pub fn create_partition(
        &mut self,
        partition: P,
        replicas: Vec<BrokerId>,
        unclean_leader_election: bool,
    ) {
        let leader = replicas.iter().copied().find(|r| !self.is_fenced(*r));
        let state = LeaderAndIsr {
            leader,
            leader_epoch: 0,
            isr: replicas.iter().copied().collect(),
            replicas,
            partition_epoch: 0,
        };
        self.partitions.insert(
            partition,
            PartitionRecord {
                state,
                unclean_leader_election,
                reassignment: None,
            },
        );
    }

    /// A broker's heartbeat. A new incarnation (the broker restarted) is treated as a
    /// failure of the old one: partitions it led get a new epoch. Returns changed
    /// partitions.
    pub fn heartbeat(&mut self, broker: BrokerId, incarnation: u64, now_ms: i64) -> Vec<P> {
        let record = self.brokers.entry(broker).or_insert(BrokerRecord {
            last_heartbeat_ms: now_ms,
            incarnation,
            fenced: true,
            shutting_down: false,
        });
        record.last_heartbeat_ms = now_ms;
        let restarted = record.incarnation != incarnation;
        if record.shutting_down && !restarted {
            // Its last heartbeats before it stops: it stays out.
            return Vec::new();
        }
        record.shutting_down = false;
        record.incarnation = incarnation;
        let was_fenced = record.fenced;
        record.fenced = false;
        let mut changed = Vec::new();
        if restarted {
            // Its in-memory replica state is gone: re-elect where it led.
            changed.extend(self.elect_away_from(broker, false));
        }
        if was_fenced || restarted {
            // Offline partitions may come back with this broker.
            for (id, p) in &mut self.partitions {
                if p.state.leader.is_none() && p.state.isr.contains(&broker) {
                    p.state.leader = Some(broker);
                    p.state.leader_epoch += 1;
                    p.state.partition_epoch += 1;
                    changed.push(id.clone());
                }
            }
        }
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    /// Fences brokers whose heartbeats stopped and moves their leaderships. Returns the
    /// events and the partitions that changed.
    pub fn tick(&mut self, now_ms: i64) -> (Vec<ControllerEvent<P>>, Vec<P>) {
        let expired: Vec<BrokerId> = self
            .brokers
            .iter()
            .filter(|(_, b)| !b.fenced && now_ms - b.last_heartbeat_ms > self.session_timeout_ms)
            .map(|(id, _)| *id)
            .collect();
        let mut events = Vec::new();
        let mut changed = Vec::new();
        for broker in expired {
            self.brokers.get_mut(&broker).expect("listed above").fenced = true;
            events.push(ControllerEvent::BrokerFenced(broker));
            changed.extend(self.elect_away_from(broker, true));
        }
        for id in &changed {
            let p = &self.partitions[id].state;
            match p.leader {
                Some(leader) => events.push(ControllerEvent::LeaderElected {
                    partition: id.clone(),
                    leader,
                    epoch: p.leader_epoch,
                    unclean: self.unclean_elections.contains(id),
                }),
                None => events.push(ControllerEvent::PartitionOffline {
                    partition: id.clone(),
                }),
            }
        }
        changed.sort_unstable();
        changed.dedup();
        (events, changed)
    }

    /// The topic's `unclean.leader.election.enable` changed for `partition`. Turned
    /// on while the partition is offline (no live replica in its ISR), a live replica
    /// from outside the ISR leads at once, as when Kafka's setting is turned on
    /// dynamically; it is then listed by [`Controller::take_unclean_elections`].
    /// Returns whether the partition's state changed.
    pub fn set_unclean_leader_election(&mut self, partition: &P, allowed: bool) -> bool {
        let Some(p) = self.partitions.get_mut(partition) else {
            return false;
        };
        p.unclean_leader_election = allowed;
        if !allowed {
            return false;
        }
        match self.elect_any_live_replica(partition) {
            Ok((_, out_of_sync)) => {
                if out_of_sync {
                    self.unclean_elections.push(partition.clone());
                }
                true
            }
            Err(_) => false,
        }
    }

    /// An unclean election asked by an administrator (Kafka's `ElectLeaders` of type
    /// unclean), whatever the topic's `unclean.leader.election.enable`: a partition
    /// without a leader gets a live replica as its leader, from outside the ISR when
    /// no in-sync one is left. Returns the new leader and whether it came from
    /// outside the ISR (then records only the lost replicas held are given up, and
    /// the caller says so; it is not listed by
    /// [`Controller::take_unclean_elections`]).
    pub fn elect_unclean_leader(&mut self, partition: &P) -> Result<(BrokerId, bool), ElectError> {
        self.elect_any_live_replica(partition)
    }

    /// Elects a leader for a partition that has none: the first registered,
    /// unfenced replica in replica order, an in-sync one when any is; one from
    /// outside the ISR starts the ISR again from itself (an unclean election).
    /// Returns the leader and whether it was out of sync.
    fn elect_any_live_replica(&mut self, partition: &P) -> Result<(BrokerId, bool), ElectError> {
        let fenced = self.fenced();
        let brokers = &self.brokers;
        let p = self
            .partitions
            .get_mut(partition)
            .ok_or(ElectError::UnknownPartition)?;
        if p.state.leader.is_some() {
            return Err(ElectError::NotNeeded);
        }
        let live: Vec<BrokerId> = p
            .state
            .replicas
            .iter()
            .copied()
            .filter(|r| brokers.contains_key(r) && !fenced.contains(r))
            .collect();
        let leader = live
            .iter()
            .copied()
            .find(|r| p.state.isr.contains(r))
            .or_else(|| live.first().copied())
            .ok_or(ElectError::NoLiveReplica)?;
        let out_of_sync = !p.state.isr.contains(&leader);
        if out_of_sync {
            p.state.isr = [leader].into_iter().collect();
        }
        p.state.leader = Some(leader);
        p.state.leader_epoch += 1;
        p.state.partition_epoch += 1;
        Ok((leader, out_of_sync))
    }

    /// Partitions that got a leader from outside their ISR since the last call: the
    /// driver logs each as possible data loss.
    pub fn take_unclean_elections(&mut self) -> Vec<P> {
        std::mem::take(&mut self.unclean_elections)
    }

    /// Forgets a broker gone for good (`UnregisterBroker`). Refused while it is
    /// not fenced (it is heartbeating, and would only register again) and while any
    /// partition, a reassignment's targets included, has it among its replicas.
    pub fn unregister_broker(&mut self, broker: BrokerId) -> Result<(), UnregisterRefused<P>> {
        let record = self
            .brokers
            .get(&broker)
            .ok_or(UnregisterRefused::NotRegistered)?;
        if !record.fenced {
            return Err(UnregisterRefused::Running);
        }
        let holding: Vec<P> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.state.replicas.contains(&broker))
            .map(|(key, _)| key.clone())
            .collect();
        if !holding.is_empty() {
            return Err(UnregisterRefused::HoldsReplicas(holding));
        }
        self.brokers.remove(&broker);
        Ok(())
    }

    /// Rebuilds a broker's record from replicated state (a new controller taking over).
    /// Its session starts at `now_ms`: a new controller gives every broker a fresh
    /// session before fencing anyone, since it never saw their earlier heartbeats.
    pub fn restore_broker(&mut self, broker: BrokerId, state: BrokerState, now_ms: i64) {
        self.brokers.insert(
            broker,
            BrokerRecord {
                last_heartbeat_ms: now_ms,
                incarnation: state.incarnation,
                fenced: state.fenced,
                shutting_down: state.shutting_down,
            },
        );
    }

    /// Rebuilds (or replaces) a partition from replicated state.
    pub fn restore_partition(&mut self, partition: P, record: PartitionRecord) {
        self.partitions.insert(partition, record);
    }

    /// Forgets a partition (its topic was deleted).
    pub fn remove_partition(&mut self, partition: &P) {
        self.partitions.remove(partition);
    }

    pub fn partition_record(&self, partition: &P) -> Option<&PartitionRecord> {
        self.partitions.get(partition)
    }

    /// Every broker the controller knows, with its state.
    pub fn brokers(&self) -> impl Iterator<Item = (BrokerId, BrokerState)> + '_ {
        self.brokers.iter().map(|(id, b)| {
            (
                *id,
                BrokerState {
                    incarnation: b.incarnation,
                    fenced: b.fenced,
                    shutting_down: b.shutting_down,
                },
            )
        })
    }

    /// Partitions `broker` leads.
    pub fn led_by(&self, broker: BrokerId) -> impl Iterator<Item = &P> + '_ {
        self.partitions
            .iter()
            .filter(move |(_, p)| p.state.leader == Some(broker))
            .map(|(id, _)| id)
    }

    fn fenced(&self) -> BTreeSet<BrokerId> {
        self.brokers
            .iter()
            .filter(|(_, b)| b.fenced)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Starts moving a partition to `target` replicas (Kafka's reassignment): the new
    /// replicas are added and copy the log as followers; once every one of them is in
    /// the ISR, the old ones are dropped (and leadership moves if the leader is one of
    /// them). Data is never removed from a replica before its successor holds it.
    ///
    /// A new target for a partition already moving replaces the old one: replicas it
    /// was adding that are still copying and not wanted any more are dropped; those
    /// already in sync count as original ones (they may hold the only copy of the
    /// latest records) and are removed only once the new target is in sync. Returns
    /// whether anything changed.
    pub fn reassign(
        &mut self,
        partition: &P,
        target: Vec<BrokerId>,
    ) -> Result<bool, ReassignError> {
        if target.is_empty() {
            return Err(ReassignError::InvalidAssignment(
                "the replica list is empty".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for r in &target {
            if !seen.insert(*r) {
                return Err(ReassignError::InvalidAssignment(format!(
                    "broker {r} appears twice in {target:?}"
                )));
            }
            if !self.brokers.contains_key(r) {
                let registered: Vec<BrokerId> = self.brokers.keys().copied().collect();
                return Err(ReassignError::InvalidAssignment(format!(
                    "broker {r} is not registered (registered brokers: {registered:?})"
                )));
            }
        }
        let p = self
            .partitions
            .get_mut(partition)
            .ok_or(ReassignError::UnknownPartition)?;
        let original: Vec<BrokerId> = match &p.reassignment {
            Some(r) => p
                .state
                .replicas
                .iter()
                .copied()
                .filter(|b| !r.adding.contains(b) || p.state.isr.contains(b))
                .collect(),
            None => p.state.replicas.clone(),
        };
        if target == original && p.reassignment.is_none() {
            return Ok(false);
        }
        let mut replicas = original.clone();
        for r in &target {
            if !replicas.contains(r) {
                replicas.push(*r);
            }
        }
        let before = p.state.clone();
        // Every in-sync replica is among `original`, so the ISR and its leader stay.
        assert!(p.state.isr.iter().all(|r| replicas.contains(r)));
        p.state.replicas = replicas;
        p.reassignment = (target != original).then(|| Reassignment {
            adding: target
                .iter()
                .copied()
                .filter(|r| !original.contains(r))
                .collect(),
            removing: original
                .iter()
                .copied()
                .filter(|r| !target.contains(r))
                .collect(),
            target,
        });
        if p.state != before {
            p.state.partition_epoch += 1;
        }
        self.finish_reassignments();
        Ok(true)
    }

    /// Cancels a reassignment under way: back to the original replicas (Kafka's
    /// cancellation). The replicas being added leave the ISR and the replica list; if
    /// one of them leads, leadership moves to an in-sync original replica.
    pub fn cancel_reassignment(&mut self, partition: &P) -> Result<(), ReassignError> {
        let fenced = self.fenced();
        let p = self
            .partitions
            .get_mut(partition)
            .ok_or(ReassignError::UnknownPartition)?;
        let Some(reassignment) = &p.reassignment else {
            return Err(ReassignError::NoReassignmentInProgress);
        };
        let original: Vec<BrokerId> = p
            .state
            .replicas
            .iter()
            .copied()
            .filter(|b| !reassignment.adding.contains(b))
            .collect();
        let isr: BTreeSet<BrokerId> = p
            .state
            .isr
            .iter()
            .copied()
            .filter(|r| original.contains(r))
            .collect();
        if isr.is_empty() {
            return Err(ReassignError::CannotCancel(format!(
                "no original replica {original:?} is in sync (ISR {:?}); let the reassignment finish",
                p.state.isr
            )));
        }
        p.state.isr = isr;
        settle_replicas(&mut p.state, original, &fenced);
        p.reassignment = None;
        Ok(())
    }

    /// Completes reassignments whose target replicas are all in sync: the replicas
    /// become the target, the ISR keeps only target replicas, and a leader being
    /// removed hands over to an in-sync target replica (a new leader epoch). Returns
    /// the partitions that changed.
    fn finish_reassignments(&mut self) -> Vec<P> {
        let fenced = self.fenced();
        let mut changed = Vec::new();
        for (id, p) in &mut self.partitions {
            let Some(reassignment) = &p.reassignment else {
                continue;
            };
            let target = reassignment.target.clone();
            if !target.iter().all(|r| p.state.isr.contains(r)) {
                continue;
            }
            p.state.isr.retain(|r| target.contains(r));
            settle_replicas(&mut p.state, target, &fenced);
            p.reassignment = None;
            changed.push(id.clone());
        }
        changed
    }

    /// Controlled shutdown: before `broker` stops, its leaderships move to other in-sync
    /// replicas and it leaves every ISR (so acks=all writes stop waiting for it). It
    /// stays fenced until it restarts (a new incarnation). A partition with no other
    /// in-sync replica goes offline rather than electing an out-of-sync one (unless its
    /// unclean election is allowed); the broker leads it again when it comes back.
    /// Returns the partitions that changed.
    ///
    /// The request carries the broker's incarnation: a request from an earlier life of
    /// the broker (delayed in the network past a restart) is ignored, or it would fence
    /// the new one for good (Kafka's broker epoch serves the same purpose).
    pub fn controlled_shutdown(&mut self, broker: BrokerId, incarnation: u64) -> Vec<P> {
        let Some(record) = self.brokers.get_mut(&broker) else {
            return Vec::new();
        };
        if record.incarnation != incarnation {
            return Vec::new();
        }
        record.fenced = true;
        record.shutting_down = true;
        self.elect_away_from(broker, true)
    }

    /// Moves leadership off `broker` (fenced, or restarted) and, when fenced, takes it
    /// out of ISRs (never emptying one: the last member is the one that has the data).
    fn elect_away_from(&mut self, broker: BrokerId, remove_from_isr: bool) -> Vec<P> {
        let fenced = self.fenced();
        let mut changed = Vec::new();
        let mut unclean = Vec::new();
        for (id, p) in &mut self.partitions {
            let mut touched = false;
            if remove_from_isr && p.state.isr.contains(&broker) && p.state.isr.len() > 1 {
                p.state.isr.remove(&broker);
                touched = true;
            }
            if p.state.leader == Some(broker) {
                let candidates: Vec<BrokerId> = p
                    .state
                    .replicas
                    .iter()
                    .copied()
                    .filter(|r| p.state.isr.contains(r) && !fenced.contains(r))
                    .collect();
                // A restarted leader may lead again (it is still in sync); prefer others.
                let clean = candidates
                    .iter()
                    .copied()
                    .find(|r| *r != broker)
                    .or_else(|| candidates.first().copied());
                let leader = match clean {
                    Some(l) => Some(l),
                    None if p.unclean_leader_election => p
                        .state
                        .replicas
                        .iter()
                        .copied()
                        .find(|r| !fenced.contains(r) && *r != broker),
                    None => None,
                };
                if let Some(l) = leader {
                    if !p.state.isr.contains(&l) {
                        // Unclean: the new leader's log is the truth from now on.
                        p.state.isr = [l].into_iter().collect();
                        unclean.push(id.clone());
                    }
                }
                p.state.leader = leader;
                p.state.leader_epoch += 1;
                touched = true;
            }
            if touched {
                p.state.partition_epoch += 1;
                changed.push(id.clone());
            }
        }
        self.unclean_elections.extend(unclean);
        changed
    }

    /// Moves `partition`'s leadership to its preferred replica, the first of its
    /// replicas (Kafka's preferred leader election), with a new leader epoch. Only to
    /// a replica that is registered, unfenced and in the ISR, so it holds every
    /// acknowledged record, and not while the partition is being reassigned.
    pub fn elect_preferred_leader(&mut self, partition: &P) -> Result<(), ElectError> {
        let preferred = self.preferred_leader(partition)?;
        let p = self.partitions.get_mut(partition).expect("checked above");
        p.state.leader = Some(preferred);
        p.state.leader_epoch += 1;
        p.state.partition_epoch += 1;
        Ok(())
    }

    /// The replica [`Controller::elect_preferred_leader`] would make `partition`'s
    /// leader, or why it would not.
    fn preferred_leader(&self, partition: &P) -> Result<BrokerId, ElectError> {
        let p = self
            .partitions
            .get(partition)
            .ok_or(ElectError::UnknownPartition)?;
        let Some(&preferred) = p.state.replicas.first() else {
            return Err(ElectError::UnknownPartition);
        };
        if p.state.leader == Some(preferred) {
            return Err(ElectError::NotNeeded);
        }
        let unavailable = |why: String| Err(ElectError::PreferredNotAvailable(why));
        if p.reassignment.is_some() {
            return unavailable("the partition is being reassigned".into());
        }
        if self.is_fenced(preferred) {
            return unavailable(format!(
                "its preferred replica, broker {preferred}, is fenced or not registered"
            ));
        }
        if !p.state.isr.contains(&preferred) {
            return unavailable(format!(
                "its preferred replica, broker {preferred}, is not in the ISR"
            ));
        }
        Ok(preferred)
    }

    /// The partitions an automatic leader rebalance moves (Kafka's
    /// `auto.leader.rebalance.enable`): for each broker that is the preferred replica
    /// of partitions it does not lead, when those are more than `imbalance_percent`
    /// of the partitions it is preferred for, the ones whose preferred leader
    /// election can happen now. Nothing while any partition is being reassigned.
    pub fn imbalanced_partitions(&self, imbalance_percent: u32) -> Vec<P> {
        if self.partitions.values().any(|p| p.reassignment.is_some()) {
            return Vec::new();
        }
        // Per preferred broker: partitions it is preferred for, and those it does not lead.
        let mut preferred: BTreeMap<BrokerId, (usize, Vec<&P>)> = BTreeMap::new();
        for (id, p) in &self.partitions {
            let Some(&first) = p.state.replicas.first() else {
                continue;
            };
            let entry = preferred.entry(first).or_default();
            entry.0 += 1;
            if p.state.leader != Some(first) {
                entry.1.push(id);
            }
        }
        preferred
            .into_values()
            .filter(|(total, not_led)| not_led.len() * 100 > *total * imbalance_percent as usize)
            .flat_map(|(_, not_led)| not_led)
            .filter(|id| self.preferred_leader(id).is_ok())
            .cloned()
            .collect()
    }

    /// An ISR change from a partition's leader. Accepted only from the current leader
    /// at the current leader and partition epochs, and only with unfenced members.
    pub fn alter_isr(&mut self, partition: &P, request: &AlterIsr) -> Result<(), ReplicationError> {
        let fenced = self.fenced();
        let p = self
            .partitions
            .get_mut(partition)
            .ok_or(ReplicationError::NotLeader)?;
        if p.state.leader != Some(request.leader) || p.state.leader_epoch != request.leader_epoch {
            return Err(ReplicationError::FencedLeaderEpoch);
        }
        if p.state.partition_epoch != request.partition_epoch {
            return Err(ReplicationError::FencedLeaderEpoch);
        }
        if !request.isr.contains(&request.leader)
            || request
                .isr
                .iter()
                .any(|r| fenced.contains(r) || !p.state.replicas.contains(r))
        {
            return Err(ReplicationError::NotLeader);
        }
        p.state.isr = request.isr.clone();
        p.state.partition_epoch += 1;
        self.finish_reassignments();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller_with(brokers: &[BrokerId], replicas: Vec<BrokerId>) -> Controller {
        let mut c = Controller::new(10_000);
        for b in brokers {
            c.heartbeat(*b, 1, 0);
        }
        c.create_partition(0, replicas, false);
        c
    }

    fn isr_change(c: &mut Controller, isr: &[BrokerId]) -> Result<(), ReplicationError> {
        let s = c.partition(&0).unwrap().clone();
        c.alter_isr(
            &0,
            &AlterIsr {
                leader: s.leader.unwrap(),
                leader_epoch: s.leader_epoch,
                partition_epoch: s.partition_epoch,
                isr: isr.iter().copied().collect(),
            },
        )
    }

    #[test]
    fn only_a_fenced_broker_holding_no_replicas_is_unregistered() {
        let mut c = controller_with(&[1, 2, 3], vec![1, 2]);
        assert_eq!(
            c.unregister_broker(4),
            Err(UnregisterRefused::NotRegistered)
        );
        assert_eq!(c.unregister_broker(3), Err(UnregisterRefused::Running));
        // 2 and 3 stop heartbeating and are fenced.
        c.heartbeat(1, 1, 15_000);
        c.tick(15_000);
        assert!(c.is_fenced(2) && c.is_fenced(3));
        assert_eq!(
            c.unregister_broker(2),
            Err(UnregisterRefused::HoldsReplicas(vec![0]))
        );
        assert_eq!(c.unregister_broker(3), Ok(()));
        assert!(c.brokers().all(|(id, _)| id != 3));
        // It comes back: registered again.
        c.heartbeat(3, 2, 16_000);
        assert!(c.brokers().any(|(id, _)| id == 3));
    }

    #[test]
    fn allowing_unclean_election_brings_an_offline_partition_back_at_once() {
        let mut c = controller_with(&[1, 2], vec![1, 2]);
        // Broker 1 stops: 2 leads alone. Then 2 stops: offline, its ISR kept.
        c.heartbeat(2, 1, 15_000);
        c.tick(20_000);
        c.tick(40_000);
        let s = c.partition(&0).unwrap().clone();
        assert_eq!((s.leader, s.isr.clone()), (None, [2].into_iter().collect()));
        // Broker 1 returns, out of sync: the partition stays offline.
        assert!(c.heartbeat(1, 1, 40_001).is_empty());
        assert_eq!(c.partition(&0).unwrap().leader, None);
        // Disallowing changes nothing; allowing elects broker 1 from outside the ISR.
        assert!(!c.set_unclean_leader_election(&0, false));
        assert!(c.set_unclean_leader_election(&0, true));
        let after = c.partition(&0).unwrap();
        assert_eq!(
            (after.leader, after.isr.clone(), after.leader_epoch),
            (Some(1), [1].into_iter().collect(), s.leader_epoch + 1)
        );
        assert_eq!(c.take_unclean_elections(), vec![0]);
        // A partition with a leader keeps it.
        assert!(!c.set_unclean_leader_election(&0, true));
        assert!(c.partition_record(&0).unwrap().unclean_leader_election);
    }

    #[test]
    fn an_unclean_election_asked_for_brings_an_offline_partition_back() {
        let mut c = controller_with(&[1, 2, 3], vec![1, 2, 3]);
        assert_eq!(c.elect_unclean_leader(&0), Err(ElectError::NotNeeded));
        assert_eq!(
            c.elect_unclean_leader(&7),
            Err(ElectError::UnknownPartition)
        );
        // Brokers 1 and 2 stop: 3 leads alone. Then 3 stops: offline, its ISR kept,
        // and with no broker up there is no one to elect.
        c.heartbeat(3, 1, 15_000);
        c.tick(20_000);
        c.heartbeat(3, 1, 20_000);
        c.tick(24_000);
        c.tick(40_000);
        let s = c.partition(&0).unwrap().clone();
        assert_eq!((s.leader, s.isr.clone()), (None, [3].into_iter().collect()));
        assert_eq!(c.elect_unclean_leader(&0), Err(ElectError::NoLiveReplica));
        // Brokers 2 and 1 return, out of sync: the partition stays offline (the
        // topic does not allow unclean elections) until one is asked for, which
        // elects the first live replica, 1, and starts the ISR from it.
        c.heartbeat(2, 1, 40_001);
        c.heartbeat(1, 1, 40_002);
        assert_eq!(c.partition(&0).unwrap().leader, None);
        assert_eq!(c.elect_unclean_leader(&0), Ok((1, true)));
        let after = c.partition(&0).unwrap();
        assert_eq!(
            (after.leader, after.isr.clone(), after.leader_epoch),
            (Some(1), [1].into_iter().collect(), s.leader_epoch + 1)
        );
        assert_eq!(after.partition_epoch, s.partition_epoch + 1);
        assert_eq!(c.elect_unclean_leader(&0), Err(ElectError::NotNeeded));
        assert!(!c.partition_record(&0).unwrap().unclean_leader_election);
    }

    #[test]
    fn reassignment_adds_then_drops_and_moves_a_removed_leader() {
        let mut c = controller_with(&[1, 2, 3, 4], vec![1, 2, 3]);
        assert_eq!(c.reassign(&0, vec![2, 3, 4]), Ok(true));
        let s = c.partition(&0).unwrap().clone();
        assert_eq!(
            (s.replicas.clone(), s.leader, s.leader_epoch),
            (vec![1, 2, 3, 4], Some(1), 0)
        );
        let r = c
            .partition_record(&0)
            .unwrap()
            .reassignment
            .clone()
            .unwrap();
        assert_eq!((r.adding, r.removing), (vec![4], vec![1]));
        // Broker 4 caught up: the leader adds it to the ISR, which completes the move.
        isr_change(&mut c, &[1, 2, 3, 4]).unwrap();
        let s = c.partition(&0).unwrap();
        assert_eq!(s.replicas, vec![2, 3, 4]);
        assert_eq!(s.isr, [2, 3, 4].into_iter().collect());
        assert_eq!((s.leader, s.leader_epoch), (Some(2), 1));
        assert!(c.partition_record(&0).unwrap().reassignment.is_none());
    }

    #[test]
    fn leadership_returns_to_the_preferred_replica_only_when_it_is_in_sync() {
        let mut c = controller_with(&[1, 2, 3], vec![1, 2, 3]);
        assert_eq!(c.elect_preferred_leader(&0), Err(ElectError::NotNeeded));
        assert_eq!(
            c.elect_preferred_leader(&7),
            Err(ElectError::UnknownPartition)
        );
        // Broker 1 stops and comes back: 2 leads, and 1 is out of the ISR until it
        // catches up.
        c.controlled_shutdown(1, 1);
        assert_eq!(c.partition(&0).unwrap().leader, Some(2));
        assert!(matches!(
            c.elect_preferred_leader(&0),
            Err(ElectError::PreferredNotAvailable(why)) if why.contains("fenced")
        ));
        c.heartbeat(1, 2, 0);
        assert!(matches!(
            c.elect_preferred_leader(&0),
            Err(ElectError::PreferredNotAvailable(why)) if why.contains("not in the ISR")
        ));
        assert_eq!(c.imbalanced_partitions(10), Vec::<u32>::new());
        isr_change(&mut c, &[1, 2, 3]).unwrap();
        assert_eq!(c.imbalanced_partitions(10), vec![0]);
        let before = c.partition(&0).unwrap().clone();
        c.elect_preferred_leader(&0).unwrap();
        let after = c.partition(&0).unwrap();
        assert_eq!(after.leader, Some(1));
        assert_eq!(after.leader_epoch, before.leader_epoch + 1);
        assert_eq!(after.partition_epoch, before.partition_epoch + 1);
        assert_eq!(after.isr, before.isr);
        assert_eq!(c.imbalanced_partitions(10), Vec::<u32>::new());
    }

    #[test]
    fn a_rebalance_moves_only_brokers_past_the_imbalance_threshold() {
        let mut c: Controller = Controller::new(10_000);
        for b in [1, 2, 3] {
            c.heartbeat(b, 1, 0);
        }
        // Broker 1 is preferred for partitions 0..4, broker 2 for 4..8.
        for p in 0..8 {
            let replicas = if p < 4 { vec![1, 2] } else { vec![2, 1] };
            c.create_partition(p, replicas, false);
        }
        // One of broker 1's four (25 %) and none of broker 2's led elsewhere.
        let mut moved = c.partitions[&0].state.clone();
        moved.leader = Some(2);
        c.partitions.get_mut(&0).unwrap().state = moved;
        assert_eq!(c.imbalanced_partitions(25), Vec::<u32>::new());
        assert_eq!(c.imbalanced_partitions(10), vec![0]);
        // A reassignment under way holds every rebalance back.
        c.reassign(&5, vec![2, 3]).unwrap();
        assert_eq!(c.imbalanced_partitions(10), Vec::<u32>::new());
    }

    #[test]
    fn reassignment_is_validated_and_can_be_cancelled() {
        let mut c = controller_with(&[1, 2, 3, 4], vec![1, 2, 3]);
        let invalid =
            |r: Result<bool, ReassignError>| matches!(r, Err(ReassignError::InvalidAssignment(_)));
        assert!(invalid(c.reassign(&0, vec![])));
        assert!(invalid(c.reassign(&0, vec![2, 2, 4])));
        assert!(invalid(c.reassign(&0, vec![2, 3, 9])));
        assert_eq!(
            c.reassign(&7, vec![1]),
            Err(ReassignError::UnknownPartition)
        );
        assert_eq!(
            c.cancel_reassignment(&0),
            Err(ReassignError::NoReassignmentInProgress)
        );
        assert_eq!(c.reassign(&0, vec![1, 2, 3]), Ok(false));
        c.reassign(&0, vec![4, 2, 3]).unwrap();
        // Broker 4 joins the ISR... of a target it no longer has: a new target drops it.
        c.reassign(&0, vec![1, 2]).unwrap();
        let s = c.partition(&0).unwrap().clone();
        assert_eq!(s.replicas, vec![1, 2]);
        assert!(
            c.partition_record(&0).unwrap().reassignment.is_none(),
            "3 only leaves: done at once"
        );
        c.reassign(&0, vec![2, 4]).unwrap();
        assert_eq!(c.partition(&0).unwrap().replicas, vec![1, 2, 4]);
        c.cancel_reassignment(&0).unwrap();
        let after = c.partition(&0).unwrap();
        assert_eq!(
            (after.replicas.clone(), after.leader),
            (vec![1, 2], Some(1))
        );
        assert!(after.partition_epoch > s.partition_epoch);
        assert!(c.partition_record(&0).unwrap().reassignment.is_none());
    }

    #[test]
    fn a_new_target_keeps_replicas_already_in_sync_until_it_completes() {
        let mut c = controller_with(&[1, 2, 3, 4, 5, 6], vec![1, 2, 3]);
        c.reassign(&0, vec![2, 3, 4, 5]).unwrap();
        isr_change(&mut c, &[1, 2, 3, 4]).unwrap();
        c.reassign(&0, vec![1, 2, 6]).unwrap();
        let s = c.partition(&0).unwrap();
        assert_eq!(
            s.replicas,
            vec![1, 2, 3, 4, 6],
            "5 was copying: dropped; 4 is in sync: kept"
        );
        let r = c
            .partition_record(&0)
            .unwrap()
            .reassignment
            .clone()
            .unwrap();
        assert_eq!((r.adding, r.removing), (vec![6], vec![3, 4]));
        isr_change(&mut c, &[1, 2, 3, 4, 6]).unwrap();
        let s = c.partition(&0).unwrap();
        assert_eq!((s.replicas.clone(), s.leader), (vec![1, 2, 6], Some(1)));
    }

    #[test]
    fn a_consumer_past_where_its_epoch_ends_here_has_diverged() {
        let mut epochs = EpochCache::default();
        epochs.assign(1, 0);
        epochs.assign(3, 50);
        let replica = Replica::new(1, ReplicaConfig::default(), 60, epochs);
        // Read up to 100 in epoch 2, which this log never had: epoch 1 ends at 50.
        assert_eq!(replica.consumer_divergence(2, 100), Some((1, 50)));
        // Read up to 40 in epoch 1, or 50: nothing cut.
        assert_eq!(replica.consumer_divergence(1, 40), None);
        assert_eq!(replica.consumer_divergence(1, 50), None);
        // Read in epoch 3 up to the log end; and beyond it (cut after the read).
        assert_eq!(replica.consumer_divergence(3, 60), None);
        assert_eq!(replica.consumer_divergence(3, 70), Some((3, 60)));
        // An epoch older than any here: nothing to compare with.
        assert_eq!(replica.consumer_divergence(0, 100), None);
    }

    /// A broker that became leader (its epoch starts at its log end) and lost the
    /// leadership before appending anything follows a leader whose log holds records
    /// of an older epoch from there: the epoch without records gives way to them.
    #[test]
    fn an_epoch_this_log_has_no_records_of_gives_way_to_the_leaders() {
        let state = |leader, leader_epoch| LeaderAndIsr {
            leader: Some(leader),
            leader_epoch,
            isr: [1, 2].into_iter().collect(),
            replicas: vec![1, 2],
            partition_epoch: leader_epoch,
        };
        let mut replica = Replica::new(1, ReplicaConfig::default(), 0, EpochCache::default());
        replica.apply(state(1, 1), 0);
        assert_eq!(replica.epochs().latest_epoch(), Some(1));
        replica.apply(state(2, 2), 10);
        // Broker 2 wrote offset 0 in epoch 0 and offset 1 in epoch 2.
        replica.appended_as_follower(&[(0, 0, 1), (2, 1, 1)], 2);
        assert_eq!(replica.log_end(), 2);
        assert_eq!(replica.epochs().end_offset_for(0, 2), Some((0, 1)));
        assert_eq!(replica.epochs().end_offset_for(1, 2), Some((0, 1)));
        assert_eq!(replica.epochs().end_offset_for(2, 2), Some((2, 2)));
    }

    #[test]
    fn epoch_end_offsets_as_kafka_answers_clients() {
        let entries = [(2, 10), (5, 12), (6, 30)];
        // The latest ends at the log end; older ones where the next starts, under
        // the largest epoch at or below the one asked for.
        assert_eq!(epoch_end_offset(&entries, 6, 40), Some((6, 40)));
        assert_eq!(epoch_end_offset(&entries, 5, 40), Some((5, 30)));
        assert_eq!(epoch_end_offset(&entries, 4, 40), Some((2, 12)));
        assert_eq!(epoch_end_offset(&entries, 2, 40), Some((2, 12)));
        // Older than every epoch: itself, ending where the oldest starts.
        assert_eq!(epoch_end_offset(&entries, 1, 40), Some((1, 10)));
        // Newer than every epoch, negative, or no epochs: undefined.
        assert_eq!(epoch_end_offset(&entries, 7, 40), None);
        assert_eq!(epoch_end_offset(&entries, -1, 40), None);
        assert_eq!(epoch_end_offset(&[], 0, 40), None);
    }

    #[test]
    fn the_epoch_of_an_offset_is_the_latest_starting_at_or_below_it() {
        let entries = [(2, 10), (5, 12), (6, 30)];
        assert_eq!(epoch_at(&entries, 9), None);
        assert_eq!(epoch_at(&entries, 10), Some(2));
        assert_eq!(epoch_at(&entries, 11), Some(2));
        assert_eq!(epoch_at(&entries, 12), Some(5));
        assert_eq!(epoch_at(&entries, 29), Some(5));
        assert_eq!(epoch_at(&entries, 40), Some(6));
        assert_eq!(epoch_at(&[], 0), None);
    }

    #[test]
    fn epoch_cache_end_offsets() {
        let mut cache = EpochCache::default();
        cache.assign(0, 0);
        cache.assign(0, 5);
        cache.assign(2, 10);
        cache.assign(5, 12);
        assert_eq!(cache.end_offset_for(0, 20), Some((0, 10)));
        assert_eq!(cache.end_offset_for(1, 20), Some((0, 10)));
        assert_eq!(cache.end_offset_for(2, 20), Some((2, 12)));
        assert_eq!(cache.end_offset_for(9, 20), Some((5, 20)));
        assert_eq!(cache.end_offset_for(-1, 20), None);
        cache.truncate_from(12);
        assert_eq!(cache.latest_epoch(), Some(2));
    }
}
