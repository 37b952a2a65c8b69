//! Seeded simulation of the group coordinator with members that join, heartbeat, sync,
//! apply assignments late, pause past their session, crash, leave and come back
//! (static members too), some of them Kafka clients (which sync only when a
//! heartbeat calls a rebalance, and whose driver confirms each sync's answer
//! later, with other members' requests in between), while topics appear and the
//! coordinator fails over (a new one restores the membership the old one persisted). After every step it checks that no
//! partition is owned by two live members; at the end, with faults stopped, that the
//! group converges to every partition owned exactly once.

use std::collections::{BTreeMap, BTreeSet};

use meridian_core::assignor::Assignor;
use meridian_core::group::{Coordinator, CoordinatorConfig, GroupError, GroupState, JoinRequest};
use meridian_core::TopicPartition;

use crate::rng::Rng;

const GROUP: &str = "g";
const SESSION_MS: u32 = 10_000;
const REBALANCE_MS: u32 = 20_000;

/// A simulated consumer: what it believes, as the SDK would.
#[derive(Default)]
struct Member {
    member_id: Option<String>,
    instance_id: Option<String>,
    /// Partitions it is consuming.
    owned: BTreeSet<TopicPartition>,
    /// The last assignment a sync gave it, not yet applied.
    assigned: Option<BTreeSet<TopicPartition>>,
    /// Paused members do nothing until this time (a GC pause, SIGSTOP).
    paused_until: i64,
    /// Whether its last heartbeat said "sync".
    must_sync: bool,
    /// A Kafka client behind the Kafka listener: it joins and syncs only when a
    /// heartbeat calls a rebalance (an eager one giving up everything first),
    /// and takes what SyncGroup answers once the listener has confirmed it.
    kafka: bool,
    /// Kafka: a SyncGroup answer made, not yet confirmed and delivered.
    answer: Option<BTreeSet<TopicPartition>>,
}

struct Sim {
    rng: Rng,
    now: i64,
    coordinator: Coordinator,
    members: Vec<Member>,
    assignor: Assignor,
    topics: BTreeSet<String>,
    /// Partition counts the coordinator was told, for a new coordinator.
    counts: BTreeMap<String, u32>,
    config: CoordinatorConfig,
    failovers: u64,
}

impl Sim {
    fn join_request(&self, i: usize) -> JoinRequest {
        JoinRequest {
            group_id: GROUP.into(),
            member_id: String::new(),
            instance_id: self.members[i].instance_id.clone(),
            client_id: format!("c{i}"),
            client_host: "sim".into(),
            topics: self.topics.clone(),
            assignor: self.assignor,
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: REBALANCE_MS,
        }
    }

    fn join(&mut self, i: usize) {
        let request = self.join_request(i);
        let response = self
            .coordinator
            .join(request, self.now)
            .expect("join succeeds");
        let m = &mut self.members[i];
        m.member_id = Some(response.member_id);
        m.must_sync = true;
    }

    /// What the SDK does on UnknownMemberId / FencedInstanceId: drop everything.
    fn lost(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.member_id = None;
        m.owned.clear();
        m.assigned = None;
        m.answer = None;
    }

    fn step(&mut self, i: usize) {
        if self.members[i].paused_until > self.now {
            return;
        }
        let Some(member_id) = self.members[i].member_id.clone() else {
            self.join(i);
            return;
        };
        if self.members[i].kafka {
            self.kafka_step(i, &member_id);
            return;
        }
        match self.rng.below(4) {
            0 => match self.coordinator.heartbeat(GROUP, &member_id, self.now) {
                Ok(changed) => self.members[i].must_sync |= changed,
                Err(GroupError::UnknownMemberId(_)) => self.lost(i),
                Err(e) => panic!("heartbeat: {e:?}"),
            },
            1 if self.members[i].must_sync => {
                let owned = self.members[i].owned.clone();
                match self.coordinator.sync(GROUP, &member_id, owned, self.now) {
                    Ok(response) => {
                        let m = &mut self.members[i];
                        m.assigned = Some(response.assignment);
                        m.must_sync = response.pending;
                    }
                    Err(GroupError::UnknownMemberId(_)) => self.lost(i),
                    Err(e) => panic!("sync: {e:?}"),
                }
            }
            // Apply the assignment at the next poll: revoke, then take the new ones,
            // then tell the coordinator.
            2 => {
                let m = &mut self.members[i];
                if let Some(assigned) = m.assigned.take() {
                    m.owned = assigned;
                    m.must_sync = true;
                }
            }
            _ => {}
        }
    }

    /// One step of a Kafka client and the listener's work for it.
    fn kafka_step(&mut self, i: usize, member_id: &str) {
        let m = &self.members[i];
        let (waiting, must_sync) = (m.answer.is_some(), m.must_sync);
        match self.rng.below(3) {
            // Heartbeats only between rebalances.
            0 if !waiting && !must_sync => {
                match self.coordinator.heartbeat(GROUP, member_id, self.now) {
                    Ok(true) => self.kafka_rejoin(i, member_id),
                    Ok(false) => {}
                    Err(GroupError::UnknownMemberId(_)) => self.lost(i),
                    Err(e) => panic!("heartbeat: {e:?}"),
                }
            }
            // SyncGroup; an answer short of the member's share is sometimes held
            // and made again later (the listener's hold), else confirmed later.
            1 if !waiting && must_sync => {
                let owned = self.members[i].owned.clone();
                match self.coordinator.sync(GROUP, member_id, owned, self.now) {
                    Ok(r) if r.pending && self.rng.chance(50) => {}
                    Ok(r) => {
                        let m = &mut self.members[i];
                        m.answer = Some(r.assignment);
                        m.must_sync = false;
                    }
                    Err(GroupError::UnknownMemberId(_)) => self.lost(i),
                    Err(e) => panic!("sync: {e:?}"),
                }
            }
            // The listener confirms the answer and sends it: the member holds it,
            // and a cooperative one what it held before until it gives that up
            // and joins again.
            2 if waiting => {
                let answer = self.members[i].answer.take().expect("waiting");
                let held: BTreeSet<TopicPartition> =
                    answer.union(&self.members[i].owned).cloned().collect();
                match self.coordinator.confirm(GROUP, member_id, held, self.now) {
                    Ok(()) => {
                        let m = &mut self.members[i];
                        let revoke = !m.owned.is_subset(&answer);
                        m.owned = answer;
                        if revoke {
                            self.kafka_rejoin(i, member_id);
                        }
                    }
                    Err(GroupError::UnknownMemberId(_)) => self.lost(i),
                    Err(e) => panic!("confirm: {e:?}"),
                }
            }
            _ => {}
        }
    }

    /// A Kafka client joins again with its member id (an eager one having given
    /// up everything) and will sync.
    fn kafka_rejoin(&mut self, i: usize, member_id: &str) {
        if self.assignor.is_eager() {
            self.members[i].owned.clear();
        }
        let mut request = self.join_request(i);
        request.member_id = member_id.to_string();
        match self.coordinator.join(request, self.now) {
            Ok(_) => self.members[i].must_sync = true,
            Err(GroupError::UnknownMemberId(_)) => self.lost(i),
            Err(e) => panic!("rejoin: {e:?}"),
        }
    }

    fn fault(&mut self) {
        let i = self.rng.below(self.members.len() as u64) as usize;
        match self.rng.below(5) {
            // Crash: gone without a word; restarts later as a new process.
            0 => self.lost(i),
            // Pause past the session timeout sometimes.
            1 => {
                self.members[i].paused_until =
                    self.now + self.rng.below(2 * SESSION_MS as u64) as i64
            }
            // Clean leave.
            2 => {
                if let Some(id) = self.members[i].member_id.clone() {
                    match self.coordinator.leave(GROUP, &id, None, self.now) {
                        Ok(()) | Err(GroupError::UnknownMemberId(_)) => {}
                        Err(e) => panic!("leave: {e:?}"),
                    }
                    self.lost(i);
                }
            }
            // A new topic appears.
            3 => {
                let name = format!("t{}", self.counts.len());
                if self.counts.len() < 4 {
                    let count = 1 + self.rng.below(8) as u32;
                    self.counts.insert(name.clone(), count);
                    self.coordinator.topic_changed(&name, Some(count), self.now);
                }
            }
            4 => self.fail_over(),
            _ => {}
        }
    }

    /// The coordinator stops; a new one (another broker, or this one restarted) takes
    /// over with the membership the old one persisted after its last change, as the
    /// driver writes it before answering.
    fn fail_over(&mut self) {
        let persisted = self.coordinator.membership(GROUP);
        self.failovers += 1;
        let mut next = Coordinator::new(self.config.clone(), 1_000 + self.failovers);
        for (topic, count) in &self.counts {
            next.topic_changed(topic, Some(*count), self.now);
        }
        next.restore_membership(GROUP, persisted, self.now);
        next.recompute_all(self.now);
        self.coordinator = next;
    }

    /// No partition is consumed by two members the coordinator still counts as members.
    fn check_exclusive(&self, seed: u64) {
        let live: BTreeSet<String> = self
            .coordinator
            .describe(GROUP)
            .map(|d| d.members.into_iter().map(|m| m.member_id).collect())
            .unwrap_or_default();
        let mut seen: BTreeMap<&TopicPartition, usize> = BTreeMap::new();
        for (i, m) in self.members.iter().enumerate() {
            if !m.member_id.as_ref().is_some_and(|id| live.contains(id)) {
                continue;
            }
            for tp in &m.owned {
                if let Some(other) = seen.insert(tp, i) {
                    panic!(
                        "seed {seed}: at {} ms {tp} is owned by members {other} and {i}",
                        self.now
                    );
                }
            }
        }
    }
}

pub(crate) fn run(seed: u64) {
    let mut rng = Rng::new(seed);
    let assignor = Assignor::ALL[rng.below(3) as usize];
    let n_members = 1 + rng.below(6) as usize;
    // In half the runs most members are Kafka clients.
    let kafka_members = rng.chance(50);
    let config = CoordinatorConfig {
        min_session_timeout_ms: 1_000,
        ..CoordinatorConfig::default()
    };
    let mut coordinator = Coordinator::new(config.clone(), seed);
    let mut topics = BTreeSet::new();
    for t in 0..4 {
        topics.insert(format!("t{t}"));
    }
    let t0 = 1 + rng.below(12) as u32;
    coordinator.topic_changed("t0", Some(t0), 0);
    let members = (0..n_members)
        .map(|i| Member {
            instance_id: (i % 2 == 0).then(|| format!("static-{i}")),
            kafka: kafka_members && i % 3 != 2,
            ..Member::default()
        })
        .collect();
    let mut sim = Sim {
        rng,
        now: 0,
        coordinator,
        members,
        assignor,
        topics,
        counts: BTreeMap::from([("t0".to_string(), t0)]),
        config,
        failovers: 0,
    };
    // Faulty phase.
    for _ in 0..2_000 {
        sim.now += sim.rng.below(500) as i64;
        for event in sim.coordinator.tick(sim.now) {
            let _ = event;
        }
        if sim.rng.chance(3) {
            sim.fault();
        }
        let i = sim.rng.below(n_members as u64) as usize;
        sim.step(i);
        sim.check_exclusive(seed);
    }
    // Quiet phase: everyone alive and attentive; the group must settle.
    for m in &mut sim.members {
        m.paused_until = 0;
    }
    for _ in 0..5_000 {
        sim.now += 10;
        sim.coordinator.tick(sim.now);
        for i in 0..n_members {
            sim.step(i);
        }
        sim.check_exclusive(seed);
        // A coordinator that took over a group without members has no group until
        // someone joins.
        let Some(description) = sim.coordinator.describe(GROUP) else {
            continue;
        };
        let live: BTreeSet<&String> = description.members.iter().map(|m| &m.member_id).collect();
        // A member expired while paused still believes in its partitions until its next
        // heartbeat tells it otherwise (as in Kafka); settled means it has heard.
        let zombies_heard = sim.members.iter().all(|m| {
            m.member_id.as_ref().is_some_and(|id| live.contains(id)) || m.owned.is_empty()
        });
        if description.state == GroupState::Stable
            && zombies_heard
            && sim
                .members
                .iter()
                .all(|m| m.assigned.is_none() && m.answer.is_none())
        {
            let owned: Vec<&TopicPartition> = sim.members.iter().flat_map(|m| &m.owned).collect();
            let distinct: BTreeSet<&TopicPartition> = owned.iter().copied().collect();
            assert_eq!(
                owned.len(),
                distinct.len(),
                "seed {seed}: a partition owned twice"
            );
            let expected: usize = description.members.iter().map(|m| m.target.len()).sum();
            if owned.len() == expected {
                return;
            }
        }
    }
    panic!(
        "seed {seed}: the group did not settle: {:#?}",
        sim.coordinator.describe(GROUP)
    );
}

#[test]
fn group_membership_simulation() {
    for seed in crate::rng::seeds(200) {
        run(seed);
    }
}

/// A new member of `group` subscribing to topic `t`.
#[cfg(test)]
fn join_t(group: &str, instance: Option<&str>) -> JoinRequest {
    JoinRequest {
        group_id: group.into(),
        member_id: String::new(),
        instance_id: instance.map(str::to_string),
        client_id: "c".into(),
        client_host: "h".into(),
        topics: BTreeSet::from(["t".to_string()]),
        assignor: Assignor::ALL[0],
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: REBALANCE_MS,
    }
}

/// A coordinator that loses a group's offsets partition drops the group, members
/// and offsets included; groups it still owns are untouched.
#[test]
fn unload_drops_only_groups_no_longer_owned() {
    use meridian_core::group::CommittedOffset;
    let mut coordinator = Coordinator::new(CoordinatorConfig::default(), 1);
    coordinator.topic_changed("t", Some(2), 0);
    for group in ["kept", "moved"] {
        coordinator
            .join(join_t(group, None), 0)
            .expect("join succeeds");
        coordinator.apply_commit(
            group,
            TopicPartition::new("t", 0),
            CommittedOffset {
                offset: 7,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp_ms: 0,
                topic_incarnation: 0,
            },
        );
    }
    let gone = coordinator.unload(|group| group == "kept");
    assert_eq!(gone, vec!["moved".to_string()]);
    assert!(coordinator.describe("moved").is_none());
    assert!(coordinator.committed("moved").is_empty());
    let kept = coordinator.describe("kept").expect("kept group stays");
    assert_eq!(kept.members.len(), 1);
    assert_eq!(coordinator.committed("kept").len(), 1);
}

/// A coordinator that takes over a group's persisted membership carries on with the
/// same members, ids, epochs and assignments: no one has to rejoin or sync, and
/// sessions run from the takeover.
#[test]
fn a_new_coordinator_carries_on_with_the_persisted_membership() {
    let config = CoordinatorConfig {
        min_session_timeout_ms: 1_000,
        ..CoordinatorConfig::default()
    };
    let mut old = Coordinator::new(config.clone(), 1);
    old.topic_changed("t", Some(4), 0);
    let join = |c: &mut Coordinator, instance: Option<&str>, now| {
        c.join(join_t(GROUP, instance), now)
            .expect("join succeeds")
            .member_id
    };
    let a = join(&mut old, None, 0);
    let b = join(&mut old, Some("static-b"), 0);
    for _ in 0..3 {
        for id in [&a, &b] {
            let owned = old
                .describe(GROUP)
                .unwrap()
                .members
                .into_iter()
                .find(|m| &m.member_id == id)
                .unwrap()
                .owned;
            let given = old.sync(GROUP, id, owned, 0).expect("sync").assignment;
            old.sync(GROUP, id, given, 0).expect("sync");
        }
    }
    let before = old.describe(GROUP).expect("group");
    assert_eq!(before.state, GroupState::Stable);

    let mut new = Coordinator::new(config, 2);
    new.topic_changed("t", Some(4), 50_000);
    new.restore_membership(GROUP, old.membership(GROUP), 50_000);
    assert!(new.recompute_all(50_000).is_empty(), "nothing to move");
    assert_eq!(new.describe(GROUP), Some(before.clone()));
    assert_eq!(new.membership(GROUP), old.membership(GROUP));
    for id in [&a, &b] {
        assert_eq!(
            new.heartbeat(GROUP, id, 50_000),
            Ok(false),
            "{id} carries on"
        );
    }
    // The static member's instance id still points at it: a restart of it takes
    // over its place.
    let b2 = join(&mut new, Some("static-b"), 51_000);
    assert_ne!(b2, b);
    assert!(
        new.heartbeat(GROUP, &b, 51_000).is_err(),
        "the old one is fenced"
    );
    // A member not heard from after the takeover expires one session later (the
    // coordinator ticking all along).
    let mut expired = Vec::new();
    for now in (50_000..=51_000 + i64::from(SESSION_MS) + 100).step_by(100) {
        expired.extend(new.tick(now));
        if now <= 50_000 + i64::from(SESSION_MS) {
            assert!(expired.is_empty(), "{expired:?} at {now}");
        }
    }
    assert_eq!(expired.len(), 2, "{expired:?}");

    // An empty membership (the group's last member left) restores to no members.
    let mut empty = Coordinator::new(CoordinatorConfig::default(), 3);
    empty.restore_membership(GROUP, (None, BTreeMap::new()), 0);
    assert!(empty.describe(GROUP).is_none());
}

/// Deleting committed offsets: refused for an unknown group, and for a topic a
/// member subscribes to (the other topics' go all the same); otherwise the listed
/// partitions that have a commit, or all of a topic's when none are listed.
#[test]
fn offsets_of_topics_no_member_reads_can_be_deleted() {
    use meridian_core::group::CommittedOffset;
    let mut coordinator = Coordinator::new(CoordinatorConfig::default(), 1);
    coordinator.topic_changed("t", Some(2), 0);
    coordinator
        .join(join_t("g", None), 0)
        .expect("join succeeds");
    for (topic, partition) in [("t", 0), ("old", 0), ("old", 1), ("old", 3)] {
        let committed = CommittedOffset {
            offset: 1,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 0,
            topic_incarnation: 0,
        };
        coordinator.apply_commit("g", TopicPartition::new(topic, partition), committed);
    }
    let topics = |list: &[(&str, &[u32])]| -> BTreeMap<String, BTreeSet<u32>> {
        list.iter()
            .map(|(t, ps)| (t.to_string(), ps.iter().copied().collect()))
            .collect()
    };
    let mixed = coordinator
        .prepare_delete_offsets("g", &topics(&[("old", &[0]), ("t", &[0])]))
        .unwrap();
    assert_eq!(mixed.partitions, vec![TopicPartition::new("old", 0)]);
    assert!(
        matches!(
            &mixed.refused[..],
            [(t, GroupError::GroupSubscribedToTopic(m))] if t == "t" && m.contains("`t`")
        ),
        "{mixed:?}"
    );
    assert!(matches!(
        coordinator.prepare_delete_offsets("h", &topics(&[("old", &[])])),
        Err(GroupError::GroupIdNotFound(_))
    ));
    let some = coordinator
        .prepare_delete_offsets("g", &topics(&[("old", &[1, 2])]))
        .unwrap();
    assert_eq!(some.partitions, vec![TopicPartition::new("old", 1)]);
    assert!(some.refused.is_empty());
    let all = coordinator
        .prepare_delete_offsets("g", &topics(&[("old", &[])]))
        .unwrap();
    assert_eq!(all.partitions.len(), 3, "{all:?}");
}

/// A topic deleted: every group's commits of it are listed for removal, a member
/// subscribing to it or not, and no other topic's.
#[test]
fn a_deleted_topics_commits_are_listed_in_every_group() {
    use meridian_core::group::CommittedOffset;
    let mut coordinator = Coordinator::new(CoordinatorConfig::default(), 1);
    coordinator.topic_changed("t", Some(2), 0);
    coordinator
        .join(join_t("g", None), 0)
        .expect("join succeeds");
    for (group, topic, partition) in [("g", "t", 0), ("g", "t", 1), ("g", "u", 0), ("h", "t", 1)] {
        let committed = CommittedOffset {
            offset: 1,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 0,
            topic_incarnation: 0,
        };
        coordinator.apply_commit(group, TopicPartition::new(topic, partition), committed);
    }
    coordinator.topic_changed("t", None, 1);
    let commits = coordinator.commits_of(|t, _| t == "t");
    assert_eq!(
        commits,
        vec![
            (
                "g".to_string(),
                vec![TopicPartition::new("t", 0), TopicPartition::new("t", 1)]
            ),
            ("h".to_string(), vec![TopicPartition::new("t", 1)]),
        ]
    );
    for (group, partitions) in &commits {
        for tp in partitions {
            coordinator.remove_commit(group, tp);
        }
    }
    assert!(coordinator.commits_of(|t, _| t == "t").is_empty());
    assert_eq!(coordinator.committed("g").len(), 1, "u/0 stays");
    assert!(coordinator.committed("h").is_empty());
}

/// A coordinator that did not run for longer than a session (its process stopped,
/// say) does not expire the members it could not hear meanwhile; a member that
/// stays silent after it runs again expires one session later.
#[test]
fn time_the_coordinator_did_not_run_does_not_count_against_sessions() {
    use meridian_core::group::TICK_GAP_MAX_MS;
    let mut coordinator = Coordinator::new(CoordinatorConfig::default(), 1);
    coordinator.topic_changed("t", Some(2), 0);
    let member = coordinator
        .join(join_t("g", None), 0)
        .expect("join succeeds")
        .member_id;
    let session = i64::from(SESSION_MS);
    assert!(coordinator.tick(100).is_empty());
    // Stopped from 100 until well past the session; heard from again at once.
    let thawed = 100 + 2 * session;
    assert!(
        coordinator.tick(thawed).is_empty(),
        "not expired on thawing"
    );
    assert!(coordinator.heartbeat("g", &member, thawed + 50).is_ok());
    // Ticking normally, the session runs from the last heartbeat.
    let mut now = thawed + 50;
    let mut expired = Vec::new();
    while expired.is_empty() {
        now += TICK_GAP_MAX_MS / 10;
        expired = coordinator.tick(now);
    }
    assert!(now > thawed + 50 + session, "expired at {now}");
    assert!(now <= thawed + 50 + session + TICK_GAP_MAX_MS / 10);
}

/// An eager Kafka member's SyncGroup of group `g` at `now_ms`, as the listener
/// serves it: a sync owning nothing, then its answer confirmed a moment later.
#[cfg(test)]
fn sync_confirmed(
    coordinator: &mut Coordinator,
    member: &str,
    now_ms: i64,
) -> BTreeSet<TopicPartition> {
    let share = coordinator
        .sync("g", member, BTreeSet::new(), now_ms)
        .expect("sync succeeds")
        .assignment;
    coordinator
        .confirm("g", member, share.clone(), now_ms + 1)
        .expect("confirm succeeds");
    share
}

/// A Kafka member's driver confirms what its SyncGroup gave it once the answer is
/// made (`Coordinator::confirm`). When a second member joins in between, the
/// first must still be told to rebalance: run by an eager assignor, the group
/// withholds every partition until the first gives up what it was given, which
/// it does only when its heartbeat says so. (Before `confirm`, the driver
/// confirmed with another sync, whose smaller answer, nothing, reached the
/// member instead: the coordinator counted it as holding all six, its
/// heartbeats were fine, and both members got nothing for good.)
#[test]
fn a_kafka_member_confirmed_after_another_joined_is_told_to_rebalance() {
    let mut coordinator = Coordinator::new(CoordinatorConfig::default(), 1);
    coordinator.topic_changed("t", Some(6), 0);
    let all: BTreeSet<TopicPartition> = (0..6).map(|p| TopicPartition::new("t", p)).collect();
    let first = coordinator
        .join(join_t("g", None), 0)
        .expect("join succeeds")
        .member_id;
    let given = coordinator
        .sync("g", &first, BTreeSet::new(), 1)
        .expect("sync succeeds");
    assert_eq!(given.assignment, all);
    // The second joins before the first's answer is confirmed.
    let second = coordinator
        .join(join_t("g", None), 2)
        .expect("join succeeds")
        .member_id;
    coordinator
        .confirm("g", &first, given.assignment.clone(), 3)
        .expect("confirm succeeds");
    let withheld = coordinator
        .sync("g", &second, BTreeSet::new(), 4)
        .expect("sync succeeds");
    assert!(withheld.assignment.is_empty() && withheld.pending);
    coordinator
        .confirm("g", &second, BTreeSet::new(), 5)
        .expect("confirm succeeds");
    assert_eq!(coordinator.heartbeat("g", &second, 6), Ok(false));
    assert_eq!(
        coordinator.heartbeat("g", &first, 7),
        Ok(true),
        "the first member is told to rebalance"
    );
    // Eager: it gives up everything, joins again and syncs owning nothing.
    let mut rejoin = join_t("g", None);
    rejoin.member_id = first.clone();
    coordinator.join(rejoin, 8).expect("rejoin succeeds");
    let first_share = sync_confirmed(&mut coordinator, &first, 9);
    assert_eq!(coordinator.heartbeat("g", &second, 11), Ok(true));
    let second_share = sync_confirmed(&mut coordinator, &second, 12);
    assert_eq!((first_share.len(), second_share.len()), (3, 3));
    assert_eq!(&first_share | &second_share, all);
    let group = coordinator.describe("g").expect("the group exists");
    assert_eq!(group.state, GroupState::Stable);
    assert_eq!(coordinator.heartbeat("g", &first, 14), Ok(false));
}
