//! Seeded simulation of one partition replicated on three of four brokers with a
//! controller, reassigned among them now and then:
//! a client producing with acks=all while brokers crash, shut down cleanly (leadership
//! moved away first) and restart, links are cut
//! and healed, messages are dropped, delayed and reordered, and clocks are skewed.
//!
//! Checked after every event:
//! - at most one leader per leader epoch;
//! - every replica's log below its high watermark agrees with the committed log (so
//!   committed prefixes are identical everywhere, and what a consumer can read below
//!   the high watermark never changes);
//! - an acknowledged record is in the committed log at its offset;
//! - no record is committed twice, though the idempotent producer retries every
//!   unanswered record (to whoever leads by then).
//!
//! And at the end, with faults healed: every replica holds the whole committed log,
//! including every acknowledged record, and all logs are equal.

use std::collections::{BTreeMap, BTreeSet};

use meridian_core::replication::{
    AlterIsr, BrokerId, Controller, EpochCache, FetchAnswer, FollowerFetch, LeaderAndIsr, Replica,
    ReplicaConfig, ReplicationError,
};

use crate::rng::Rng;

const CONTROLLER: BrokerId = 100;
const CLIENT: BrokerId = 200;
/// Four brokers; the partition starts on the first three and is reassigned among all.
const BROKERS: [BrokerId; 4] = [1, 2, 3, 4];
const PARTITION: u32 = 0;
const HEARTBEAT_MS: i64 = 50;
const FETCH_RETRY_MS: i64 = 300;
const MAX_FETCH_ENTRIES: usize = 20;

#[derive(Clone, Debug)]
enum Msg {
    Heartbeat {
        incarnation: u64,
    },
    /// A broker asks to stop cleanly; the controller answers with `ShutdownDone`.
    ControlledShutdown {
        incarnation: u64,
    },
    ShutdownDone,
    State(LeaderAndIsr),
    AlterIsr(AlterIsr),
    AlterIsrRefused,
    Fetch {
        request: u64,
        fetch: FollowerFetch,
    },
    FetchReply {
        request: u64,
        reply: Result<Reply, ReplicationError>,
    },
    Produce {
        request: u64,
        record: u64,
    },
    ProduceReply {
        request: u64,
        result: Result<i64, ProduceError>,
    },
}

#[derive(Clone, Debug)]
enum ProduceError {
    /// Not the leader, or too few in-sync replicas: try again.
    Refused,
    /// An idempotent record whose predecessor is not in this leader's log.
    OutOfOrderSequence,
}

/// Record ids from this one up belong to the idempotent producer: id - base is its
/// sequence number. It sends one record at a time and retries it (same sequence)
/// until acknowledged, like the SDK's idempotent producer.
const IDEMPOTENT_BASE: u64 = 1 << 40;

#[derive(Clone, Debug)]
enum Reply {
    Records {
        base: i64,
        entries: Vec<(i32, u64)>,
        high_watermark: i64,
    },
    Diverging {
        epoch: i32,
        end_offset: i64,
    },
}

/// A produce waiting for the high watermark: (offset, request).
type PendingAck = (i64, u64);

struct Node {
    id: BrokerId,
    alive: bool,
    incarnation: u64,
    replica: Replica,
    /// The partition log on disk: (leader epoch, record id). Survives crashes (the page
    /// cache outlives a killed process).
    log: Vec<(i32, u64)>,
    clock_skew_ms: i64,
    next_heartbeat_ms: i64,
    fetch_in_flight: Option<(u64, i64)>,
    pending_acks: Vec<PendingAck>,
    /// Asked for a controlled shutdown at this time; stops when the controller answers,
    /// or after `SHUTDOWN_WAIT_MS` without an answer (as Kafka's broker gives up
    /// waiting and stops anyway).
    stopping_since: Option<i64>,
}

const SHUTDOWN_WAIT_MS: i64 = 500;

impl Node {
    /// A killed broker comes back: same log, fresh state, a new incarnation.
    fn restart_if_down(&mut self) {
        if self.alive {
            return;
        }
        self.alive = true;
        self.incarnation += 1;
        // The broker's leader-epoch checkpoint is durable, epochs without records
        // (it led in them and appended nothing) included.
        let epochs = self.replica.epochs().clone();
        self.replica = Replica::new(self.id, replica_config(), self.log.len() as i64, epochs);
        self.fetch_in_flight = None;
        self.pending_acks.clear();
        self.next_heartbeat_ms = 0;
        self.stopping_since = None;
    }
}

fn replica_config() -> ReplicaConfig {
    ReplicaConfig {
        replica_lag_time_max_ms: 500,
        min_insync_replicas: 2,
        alter_isr_retry_ms: 200,
    }
}

/// The epochs of a log written at the given epochs (used by the tests below; the
/// `sim` example shares this file without them).
#[cfg_attr(not(test), allow(dead_code))]
fn epochs_of(log: &[(i32, u64)]) -> EpochCache {
    let mut cache = EpochCache::default();
    for (offset, (epoch, _)) in log.iter().enumerate() {
        cache.assign(*epoch, offset as i64);
    }
    cache
}

struct Sim {
    /// This run's partition allows unclean leader election (every eighth seed): then
    /// data loss is allowed and only leadership and convergence are checked.
    unclean: bool,
    unclean_elections: usize,
    seed: u64,
    rng: Rng,
    now: i64,
    nodes: Vec<Node>,
    controller: Controller,
    /// (deliver at, sequence, from, to, message).
    network: Vec<(i64, u64, BrokerId, BrokerId, Msg)>,
    sequence: u64,
    cut: BTreeSet<(BrokerId, BrokerId)>,
    drop_percent: u64,
    committed: Vec<(i32, u64)>,
    committed_ids: BTreeSet<u64>,
    leaders: BTreeMap<i32, BrokerId>,
    acked: Vec<(i64, u64)>,
    next_request: u64,
    next_record: u64,
    produce_in_flight: BTreeMap<u64, u64>,
    /// The idempotent producer's one request: (request, sent at).
    idempotent_in_flight: Option<(u64, i64)>,
    next_idempotent_seq: u64,
    /// Leaderships moved back to the preferred replica.
    preferred_elections: usize,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut controller = Controller::new(400);
        for b in BROKERS {
            controller.heartbeat(b, 0, 0);
        }
        let unclean = seed % 8 == 7;
        controller.create_partition(PARTITION, BROKERS[..3].to_vec(), unclean);
        let nodes = BROKERS
            .iter()
            .map(|&id| Node {
                id,
                alive: true,
                incarnation: 0,
                replica: Replica::new(id, replica_config(), 0, EpochCache::default()),
                log: Vec::new(),
                clock_skew_ms: 0,
                next_heartbeat_ms: 0,
                fetch_in_flight: None,
                pending_acks: Vec::new(),
                stopping_since: None,
            })
            .collect();
        let mut sim = Sim {
            unclean,
            unclean_elections: 0,
            seed,
            rng: Rng::new(seed),
            now: 0,
            nodes,
            controller,
            network: Vec::new(),
            sequence: 0,
            cut: BTreeSet::new(),
            drop_percent: 0,
            committed: Vec::new(),
            committed_ids: BTreeSet::new(),
            leaders: BTreeMap::new(),
            acked: Vec::new(),
            next_request: 0,
            next_record: 0,
            produce_in_flight: BTreeMap::new(),
            idempotent_in_flight: None,
            next_idempotent_seq: 0,
            preferred_elections: 0,
        };
        sim.broadcast_state();
        sim
    }

    fn send(&mut self, from: BrokerId, to: BrokerId, msg: Msg) {
        let (a, b) = (from.min(to), from.max(to));
        if self.cut.contains(&(a, b)) || self.rng.chance(self.drop_percent) {
            return;
        }
        let delay = 1 + self.rng.below(30) as i64;
        self.sequence += 1;
        self.network
            .push((self.now + delay, self.sequence, from, to, msg));
    }

    fn broadcast_state(&mut self) {
        let state = self
            .controller
            .partition(&PARTITION)
            .expect("created")
            .clone();
        for b in BROKERS {
            self.send(CONTROLLER, b, Msg::State(state.clone()));
        }
    }

    fn node(&mut self, id: BrokerId) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("known broker")
    }

    fn local_now(&self, id: BrokerId) -> i64 {
        self.now
            + self
                .nodes
                .iter()
                .find(|n| n.id == id)
                .map_or(0, |n| n.clock_skew_ms)
    }

    fn deliver(&mut self, from: BrokerId, to: BrokerId, msg: Msg) {
        match to {
            CONTROLLER => self.controller_receive(from, msg),
            CLIENT => self.client_receive(msg),
            _ => self.broker_receive(from, to, msg),
        }
    }

    fn controller_receive(&mut self, from: BrokerId, msg: Msg) {
        match msg {
            Msg::Heartbeat { incarnation } => {
                let changed = self.controller.heartbeat(from, incarnation, self.now);
                let state = self
                    .controller
                    .partition(&PARTITION)
                    .expect("created")
                    .clone();
                self.send(CONTROLLER, from, Msg::State(state));
                if !changed.is_empty() {
                    self.broadcast_state();
                }
            }
            Msg::ControlledShutdown { incarnation } => {
                if !self
                    .controller
                    .controlled_shutdown(from, incarnation)
                    .is_empty()
                {
                    self.broadcast_state();
                }
                self.send(CONTROLLER, from, Msg::ShutdownDone);
            }
            Msg::AlterIsr(request) => match self.controller.alter_isr(&PARTITION, &request) {
                Ok(()) => self.broadcast_state(),
                Err(_) => self.send(CONTROLLER, from, Msg::AlterIsrRefused),
            },
            other => panic!("controller got {other:?}"),
        }
    }

    fn client_receive(&mut self, msg: Msg) {
        let Msg::ProduceReply { request, result } = msg else {
            panic!("client got {msg:?}");
        };
        let Some(record) = self.produce_in_flight.remove(&request) else {
            return;
        };
        if record >= IDEMPOTENT_BASE && self.idempotent_in_flight.map(|(r, _)| r) == Some(request) {
            self.idempotent_in_flight = None;
            if result.is_ok() {
                self.next_idempotent_seq += 1;
            }
        }
        if let (Ok(offset), false) = (result, self.unclean) {
            let position = offset as usize;
            assert!(
                self.committed.get(position).map(|e| e.1) == Some(record),
                "seed {}: acked record {record} at {offset} is not committed there",
                self.seed
            );
            self.acked.push((offset, record));
        }
    }

    fn broker_receive(&mut self, from: BrokerId, to: BrokerId, msg: Msg) {
        let now = self.local_now(to);
        let node = self.node(to);
        if !node.alive {
            return;
        }
        match msg {
            Msg::State(state) => {
                if node.replica.apply(state, now) {
                    node.fetch_in_flight = None;
                }
                if !node.replica.is_leader() {
                    let failed: Vec<u64> = node.pending_acks.drain(..).map(|(_, r)| r).collect();
                    for request in failed {
                        self.send(
                            to,
                            CLIENT,
                            Msg::ProduceReply {
                                request,
                                result: Err(ProduceError::Refused),
                            },
                        );
                    }
                }
            }
            Msg::AlterIsrRefused => node.replica.alter_isr_refused(),
            // Leadership has moved: now the process stops.
            Msg::ShutdownDone => {
                // A late answer to a previous incarnation's request means nothing now.
                if node.stopping_since.is_some() {
                    node.alive = false;
                }
            }
            Msg::Produce { request, record } => {
                let result = match node.replica.check_append(true) {
                    Err(_) => Some(Err(ProduceError::Refused)),
                    Ok(epoch) if record >= IDEMPOTENT_BASE => {
                        // The producer state a real partition keeps is what its log
                        // says; a new leader rebuilds it from replicated batches.
                        if let Some(offset) = node.log.iter().position(|(_, r)| *r == record) {
                            // A retry: answer with the original offset once committed.
                            node.pending_acks.push((offset as i64, request));
                            None
                        } else {
                            let last = node
                                .log
                                .iter()
                                .map(|(_, r)| *r)
                                .filter(|r| *r >= IDEMPOTENT_BASE)
                                .max();
                            let expected = last.map_or(IDEMPOTENT_BASE, |r| r + 1);
                            if record == expected {
                                node.log.push((epoch, record));
                                let offset = node.replica.appended_as_leader(1);
                                node.pending_acks.push((offset, request));
                                None
                            } else {
                                Some(Err(ProduceError::OutOfOrderSequence))
                            }
                        }
                    }
                    Ok(epoch) => {
                        node.log.push((epoch, record));
                        let offset = node.replica.appended_as_leader(1);
                        node.pending_acks.push((offset, request));
                        None
                    }
                };
                if let Some(result) = result {
                    self.send(to, CLIENT, Msg::ProduceReply { request, result });
                }
            }
            Msg::Fetch { request, fetch } => {
                let reply = node
                    .replica
                    .handle_fetch(fetch, 0, now)
                    .map(|answer| match answer {
                        FetchAnswer::Records { high_watermark } => {
                            let start = fetch.fetch_offset as usize;
                            let end = node.log.len().min(start + MAX_FETCH_ENTRIES);
                            Reply::Records {
                                base: fetch.fetch_offset,
                                entries: node.log[start..end].to_vec(),
                                high_watermark,
                            }
                        }
                        FetchAnswer::Diverging { epoch, end_offset } => {
                            Reply::Diverging { epoch, end_offset }
                        }
                    });
                self.send(to, from, Msg::FetchReply { request, reply });
            }
            Msg::FetchReply { request, reply } => {
                if node.fetch_in_flight.map(|(r, _)| r) != Some(request) || node.replica.is_leader()
                {
                    return;
                }
                node.fetch_in_flight = None;
                match reply {
                    Ok(Reply::Records {
                        base,
                        entries,
                        high_watermark,
                    }) => {
                        if base != node.replica.log_end() {
                            return;
                        }
                        let batches: Vec<(i32, i64, u32)> = entries
                            .iter()
                            .enumerate()
                            .map(|(i, (epoch, _))| (*epoch, base + i as i64, 1))
                            .collect();
                        node.log.extend(entries);
                        node.replica.appended_as_follower(&batches, high_watermark);
                    }
                    Ok(Reply::Diverging { epoch, end_offset }) => {
                        let to_offset = node.replica.divergence_truncation(epoch, end_offset);
                        node.log.truncate(to_offset as usize);
                        node.replica.truncated(to_offset);
                    }
                    Err(_) => {}
                }
            }
            other => panic!("broker got {other:?}"),
        }
    }

    /// Timers of every live broker, the controller and the client.
    fn timers(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            let id = self.nodes[i].id;
            if self.nodes[i]
                .stopping_since
                .is_some_and(|since| self.now - since > SHUTDOWN_WAIT_MS)
            {
                self.nodes[i].alive = false;
                continue;
            }
            let now = self.local_now(id);
            if now >= self.nodes[i].next_heartbeat_ms {
                self.nodes[i].next_heartbeat_ms = now + HEARTBEAT_MS;
                let incarnation = self.nodes[i].incarnation;
                self.send(id, CONTROLLER, Msg::Heartbeat { incarnation });
            }
            if let Some(proposal) = self.nodes[i].replica.poll_isr_change(now) {
                self.send(id, CONTROLLER, Msg::AlterIsr(proposal));
            }
            let stale = self.nodes[i]
                .fetch_in_flight
                .is_none_or(|(_, sent)| now - sent > FETCH_RETRY_MS);
            if stale {
                if let Some((leader, fetch)) = self.nodes[i].replica.next_fetch() {
                    self.next_request += 1;
                    let request = self.next_request;
                    self.nodes[i].fetch_in_flight = Some((request, now));
                    self.send(id, leader, Msg::Fetch { request, fetch });
                }
            }
            // Answer produces the high watermark now covers.
            let hw = self.nodes[i].replica.high_watermark();
            let (done, waiting): (Vec<PendingAck>, Vec<PendingAck>) = self.nodes[i]
                .pending_acks
                .drain(..)
                .partition(|(offset, _)| *offset < hw);
            self.nodes[i].pending_acks = waiting;
            for (offset, request) in done {
                self.send(
                    id,
                    CLIENT,
                    Msg::ProduceReply {
                        request,
                        result: Ok(offset),
                    },
                );
            }
        }
        let (_, changed) = self.controller.tick(self.now);
        if !self.controller.take_unclean_elections().is_empty() {
            assert!(
                self.unclean,
                "seed {}: unclean election on a partition that does not allow it",
                self.seed
            );
            self.unclean_elections += 1;
        }
        if !changed.is_empty() {
            self.broadcast_state();
        }
    }

    fn produce(&mut self) {
        let Some(leader) = self.controller.partition(&PARTITION).and_then(|p| p.leader) else {
            return;
        };
        self.next_request += 1;
        self.next_record += 1;
        let (request, record) = (self.next_request, self.next_record);
        self.produce_in_flight.insert(request, record);
        self.send(CLIENT, leader, Msg::Produce { request, record });
    }

    /// The idempotent producer: sends its next record, or the same one again after
    /// 300 ms without an answer (to whoever leads now).
    fn produce_idempotent(&mut self) {
        if self
            .idempotent_in_flight
            .is_some_and(|(_, sent)| self.now - sent < 300)
        {
            return;
        }
        let Some(leader) = self.controller.partition(&PARTITION).and_then(|p| p.leader) else {
            return;
        };
        self.next_request += 1;
        let request = self.next_request;
        let record = IDEMPOTENT_BASE + self.next_idempotent_seq;
        self.produce_in_flight.insert(request, record);
        self.idempotent_in_flight = Some((request, self.now));
        self.send(CLIENT, leader, Msg::Produce { request, record });
    }

    /// Every broker's view and the controller's, for failure messages.
    fn describe(&self) -> String {
        let mut out = format!("controller: {:?}\n", self.controller.partition(&PARTITION));
        for n in &self.nodes {
            out += &format!(
                "broker {}: alive {} log {} hw {} leader {:?} epoch {:?} isr {:?} fenced {}\n",
                n.id,
                n.alive,
                n.log.len(),
                n.replica.high_watermark(),
                n.replica.leader(),
                n.replica.leader_epoch(),
                n.replica.isr(),
                self.controller.is_fenced(n.id)
            );
        }
        out + &format!("committed {}", self.committed.len())
    }

    fn fault(&mut self) {
        let b = BROKERS[self.rng.below(BROKERS.len() as u64) as usize];
        match self.rng.below(8) {
            7 => {
                // Reassign to three of the four brokers, in a random order.
                let mut target = BROKERS.to_vec();
                for i in (1..target.len()).rev() {
                    let j = self.rng.below(i as u64 + 1) as usize;
                    target.swap(i, j);
                }
                target.truncate(3);
                if self
                    .controller
                    .reassign(&PARTITION, target)
                    .unwrap_or(false)
                {
                    self.broadcast_state();
                }
            }
            0 => {
                let node = self.node(b);
                node.alive = false;
            }
            6 => {
                self.controlled_shutdown(b);
                // Half the time a second broker right after, as a rolling restart
                // that does not wait does: leadership moves twice in a row, maybe to
                // a broker that had fetched less of the first leader's tail than the
                // one after it.
                if self.rng.chance(50) {
                    let next = BROKERS
                        [(BROKERS.iter().position(|x| *x == b).unwrap() + 1) % BROKERS.len()];
                    self.controlled_shutdown(next);
                }
            }
            1 => {
                self.node(b).restart_if_down();
            }
            2 => {
                let other = [BROKERS[0], BROKERS[1], BROKERS[2], BROKERS[3], CONTROLLER]
                    [self.rng.below(5) as usize];
                if other != b {
                    self.cut.insert((b.min(other), b.max(other)));
                }
            }
            3 => self.cut.clear(),
            4 => self.drop_percent = [0, 0, 5, 20][self.rng.below(4) as usize],
            _ => {
                let skew = self.rng.below(400) as i64 - 200;
                self.node(b).clock_skew_ms = skew;
            }
        }
    }

    /// A preferred leader election (asked, or the automatic rebalance): leadership
    /// moves back while records are in flight to the old leader.
    fn elect_preferred(&mut self) {
        if self.controller.elect_preferred_leader(&PARTITION).is_ok() {
            self.preferred_elections += 1;
            self.broadcast_state();
        }
    }

    fn controlled_shutdown(&mut self, b: BrokerId) {
        let now = self.now;
        let node = self.node(b);
        if node.alive && node.stopping_since.is_none() {
            node.stopping_since = Some(now);
            let incarnation = node.incarnation;
            self.send(b, CONTROLLER, Msg::ControlledShutdown { incarnation });
        }
    }

    fn check(&mut self) {
        for node in &self.nodes {
            assert_eq!(
                node.log.len() as i64,
                node.replica.log_end(),
                "seed {}: broker {} log and state disagree",
                self.seed,
                node.id
            );
            if node.alive && node.replica.is_leader() {
                let epoch = node
                    .replica
                    .leader_epoch()
                    .expect("a leader knows its epoch");
                let claimed = *self.leaders.entry(epoch).or_insert(node.id);
                assert_eq!(
                    claimed, node.id,
                    "seed {}: two leaders in epoch {epoch}",
                    self.seed
                );
            }
            let hw = node.replica.high_watermark() as usize;
            assert!(hw <= node.log.len());
            if self.unclean {
                continue;
            }
            for offset in 0..hw {
                match self.committed.get(offset) {
                    Some(entry) => assert_eq!(
                        &node.log[offset], entry,
                        "seed {}: broker {} has a different committed record at {offset}",
                        self.seed, node.id
                    ),
                    None => {
                        assert_eq!(offset, self.committed.len());
                        let record = node.log[offset].1;
                        assert!(
                            self.committed_ids.insert(record),
                            "seed {}: record {record} committed twice (offset {offset})",
                            self.seed
                        );
                        self.committed.push(node.log[offset]);
                    }
                }
            }
        }
    }

    fn step(&mut self) {
        self.now += 1 + self.rng.below(10) as i64;
        self.network.sort_by_key(|(at, seq, ..)| (*at, *seq));
        let due = self.network.partition_point(|(at, ..)| *at <= self.now);
        let batch: Vec<_> = self.network.drain(..due).collect();
        for (_, _, from, to, msg) in batch {
            self.deliver(from, to, msg);
            self.check();
        }
        self.timers();
        self.check();
    }
}

/// What one seed did, so the test can check the faults happened (the `sim` example
/// only runs seeds).
#[derive(Default)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct Outcome {
    /// Records acknowledged, all and the idempotent producer's.
    acked: usize,
    idempotent: usize,
    /// Whether the partition ended on other replicas than it started.
    moved: bool,
    /// Unclean elections (only runs that allow them have any).
    unclean_elections: usize,
    preferred_elections: usize,
}

/// Runs one seed.
pub(crate) fn run(seed: u64) -> Outcome {
    let mut sim = Sim::new(seed);
    for _ in 0..3_000 {
        if sim.rng.chance(30) {
            sim.produce();
        }
        sim.produce_idempotent();
        if sim.rng.chance(2) {
            sim.fault();
        }
        if sim.rng.chance(1) {
            sim.elect_preferred();
        }
        sim.step();
    }
    // Heal: everyone up, no cuts or drops, no more writes; let it converge.
    sim.cut.clear();
    sim.drop_percent = 0;
    for b in BROKERS {
        let node = sim.node(b);
        if node.stopping_since.is_some() {
            // Finish a shutdown under way, then start again.
            node.alive = false;
        }
        node.restart_if_down();
    }
    // Let a reassignment under way finish too; then only the current replicas matter.
    let replicas = |sim: &Sim| -> Vec<usize> {
        let state = sim.controller.partition(&PARTITION).expect("created");
        sim.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| state.replicas.contains(&n.id))
            .map(|(i, _)| i)
            .collect()
    };
    for _ in 0..3_000 {
        sim.step();
        let current = replicas(&sim);
        let first = &sim.nodes[current[0]].log;
        let converged = current.len() == 3
            && current.iter().all(|&i| {
                let n = &sim.nodes[i];
                &n.log == first && n.replica.high_watermark() == n.log.len() as i64
            });
        if converged && first.len() >= sim.committed.len() {
            break;
        }
    }
    let current = replicas(&sim);
    for &i in current.iter().filter(|_| !sim.unclean) {
        let node = &sim.nodes[i];
        assert!(
            node.log.len() >= sim.committed.len()
                && node.log[..sim.committed.len()] == sim.committed[..],
            "seed {}: broker {} lacks committed records after healing\n{}",
            seed,
            node.id,
            sim.describe()
        );
        for (offset, record) in &sim.acked {
            assert_eq!(
                node.log[*offset as usize].1, *record,
                "seed {seed}: acked record lost"
            );
        }
    }
    let first = &sim.nodes[current[0]].log;
    assert!(
        current.iter().all(|&i| &sim.nodes[i].log == first),
        "seed {seed}: replicas did not converge\n{}",
        sim.describe()
    );
    let moved = sim
        .controller
        .partition(&PARTITION)
        .expect("created")
        .replicas
        != BROKERS[..3];
    Outcome {
        acked: sim.acked.len(),
        idempotent: sim.next_idempotent_seq as usize,
        moved,
        unclean_elections: sim.unclean_elections,
        preferred_elections: sim.preferred_elections,
    }
}

#[test]
fn replication_simulation() {
    let seeds = crate::rng::seeds(100);
    let mut total = Outcome::default();
    let mut moved = 0;
    for &seed in &seeds {
        let outcome = std::panic::catch_unwind(|| run(seed)).unwrap_or_else(|e| {
            eprintln!(
                "replication simulation failed with seed {seed}; replay: MERIDIAN_SIM_SEED={seed}"
            );
            std::panic::resume_unwind(e)
        });
        total.acked += outcome.acked;
        total.idempotent += outcome.idempotent;
        moved += usize::from(outcome.moved);
        total.unclean_elections += outcome.unclean_elections;
        total.preferred_elections += outcome.preferred_elections;
    }
    let Outcome {
        acked,
        idempotent,
        unclean_elections: unclean,
        preferred_elections,
        ..
    } = total;
    // The faults must not stop all progress: on average each run acknowledges writes.
    assert!(
        acked >= seeds.len() * 50 && idempotent >= seeds.len() * 10,
        "only {acked} records ({idempotent} idempotent) acknowledged over {} seeds",
        seeds.len()
    );
    // Reassignments must complete, not just start.
    assert!(
        moved * 5 >= seeds.len(),
        "only {moved} of {} runs ended reassigned",
        seeds.len()
    );
    // Runs that allow unclean election do elect out-of-sync leaders sometimes.
    assert!(
        unclean > 0 || seeds.len() < 100,
        "no unclean election in {} runs",
        seeds.len()
    );
    // Leadership does move back to the preferred replica, under the same faults.
    assert!(
        preferred_elections * 5 >= seeds.len(),
        "only {preferred_elections} preferred leader elections in {} runs",
        seeds.len()
    );
}

/// A follower restarted at its leader's log start fetches from there, with no epoch
/// to check divergence against, and the leader takes it back into the ISR once it
/// reaches the log end.
#[test]
fn a_follower_restarted_at_the_leaders_log_start_fetches_from_there() {
    let state = LeaderAndIsr {
        leader: Some(1),
        leader_epoch: 3,
        isr: BTreeSet::from([1]),
        replicas: vec![1, 2],
        partition_epoch: 5,
    };
    let mut follower = Replica::new(2, replica_config(), 10, epochs_of(&[(0, 0); 10]));
    follower.apply(state.clone(), 0);
    assert_eq!(follower.next_fetch().unwrap().1.fetch_offset, 10);
    follower.restarted_at(500);
    let (to, fetch) = follower.next_fetch().unwrap();
    assert_eq!(to, 1);
    assert_eq!(
        fetch,
        FollowerFetch {
            replica: 2,
            leader_epoch: 3,
            fetch_offset: 500,
            last_fetched_epoch: None,
        }
    );
    assert_eq!((follower.log_end(), follower.high_watermark()), (500, 500));
    follower.appended_as_follower(&[(3, 500, 4)], 504);
    assert_eq!((follower.log_end(), follower.high_watermark()), (504, 504));

    // The leader, whose log starts at 500, serves an epoch-less fetch there (an
    // empty follower log) but not past it (records it cannot vouch for).
    let mut leader = Replica::new(1, replica_config(), 600, epochs_of(&[(3, 0); 600]));
    leader.apply(state, 0);
    let at = |fetch_offset| FollowerFetch {
        replica: 2,
        leader_epoch: 3,
        fetch_offset,
        last_fetched_epoch: None,
    };
    assert!(matches!(
        leader.handle_fetch(at(500), 500, 0),
        Ok(FetchAnswer::Records { .. })
    ));
    assert!(matches!(
        leader.handle_fetch(at(501), 500, 0),
        Ok(FetchAnswer::Diverging { .. })
    ));
}

/// A follower the controller took out of the ISR (fenced: its broker died) is not
/// proposed back on the strength of fetches from before; a fetch afterwards, caught
/// up, brings it back.
#[test]
fn a_removed_follower_rejoins_only_after_fetching_again() {
    let mut state = LeaderAndIsr {
        leader: Some(1),
        leader_epoch: 0,
        isr: BTreeSet::from([1, 2, 3]),
        replicas: vec![1, 2, 3],
        partition_epoch: 0,
    };
    let mut leader = Replica::new(1, replica_config(), 0, EpochCache::default());
    leader.apply(state.clone(), 0);
    leader.appended_as_leader(10);
    let at = |replica, fetch_offset| FollowerFetch {
        replica,
        leader_epoch: 0,
        fetch_offset,
        last_fetched_epoch: (fetch_offset > 0).then_some(0),
    };
    for follower in [2, 3] {
        leader.handle_fetch(at(follower, 10), 0, 10).unwrap();
    }
    assert_eq!(leader.high_watermark(), 10);
    assert_eq!(leader.poll_isr_change(20), None);
    // The controller fences broker 2.
    state.isr = BTreeSet::from([1, 3]);
    state.partition_epoch = 1;
    leader.apply(state.clone(), 30);
    assert_eq!(leader.poll_isr_change(40), None, "not proposed back unseen");
    leader.handle_fetch(at(2, 10), 0, 50).unwrap();
    let proposal = leader.poll_isr_change(60).expect("caught up again");
    assert_eq!(proposal.isr, BTreeSet::from([1, 2, 3]));
}

#[test]
fn a_follower_knows_whether_it_is_catching_up() {
    let mut state = LeaderAndIsr {
        leader: Some(1),
        leader_epoch: 1,
        isr: BTreeSet::from([1]),
        replicas: vec![1, 2],
        partition_epoch: 1,
    };
    let mut follower = Replica::new(2, replica_config(), 0, epochs_of(&[]));
    assert!(!follower.in_sync(), "no state yet");
    follower.apply(state.clone(), 0);
    assert!(!follower.in_sync(), "a new replica catches up");
    state.isr.insert(2);
    state.partition_epoch += 1;
    follower.apply(state, 0);
    assert!(follower.in_sync());
}
