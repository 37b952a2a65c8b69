//! The client's view of the cluster, sans-IO: which broker leads each partition (and
//! in which leader epoch), where each broker listens, and what to do when a request
//! routed by that view fails. The [`Client`](crate::Client) feeds it metadata
//! responses and asks it questions; tests drive it with plain values and an explicit
//! `now`.
//!
//! Invariants:
//! - a partition's cached leader epoch never goes back, except after the leader was
//!   reported failing ([`MetadataCache::leader_failed`]) or the topic changed shape:
//!   a lagging broker's older answer must not undo a newer one (Kafka's KIP-320 rule),
//!   but a recreated topic (epochs start again) must not pin a dead leader forever;
//! - a leader that is not among the answer's brokers is no leader: the partition is
//!   unroutable until a later answer names both.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meridian_wire::messages::MetadataResponse;
use meridian_wire::ErrorCode;
use rustc_hash::FxHashMap;

use crate::error::Error;

/// A broker's id, as metadata and the ApiVersions handshake name it.
pub(crate) type BrokerId = u32;

#[derive(Clone, Debug, PartialEq, Eq)]
struct PartitionEntry {
    /// `None` when the answer named no usable leader (error, or unknown broker).
    leader: Option<BrokerId>,
    leader_epoch: i32,
    error: ErrorCode,
    /// A request to `leader` failed in a way that says it may no longer lead.
    suspect: bool,
}

/// Where a request for one partition should go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LeaderLookup {
    /// To this broker, the leader in `epoch`.
    Known { broker: BrokerId, epoch: i32 },
    /// Not known right now (no metadata for the topic yet, an election under way, a
    /// leader whose address is unknown): refresh metadata, wait, ask again.
    Unknown,
    /// The topic or partition does not exist (as of the last metadata).
    Missing(ErrorCode),
}

#[derive(Debug, Default)]
pub(crate) struct MetadataCache {
    brokers: BTreeMap<BrokerId, String>,
    controller: Option<BrokerId>,
    topics: FxHashMap<String, Vec<PartitionEntry>>,
    /// Topics the last answers said do not exist or may not be used, with the code
    /// and the broker's message (empty from a version 0 answer).
    missing: FxHashMap<String, (ErrorCode, String)>,
    refreshed_at: Option<Instant>,
    /// Something failed in a way newer metadata may fix.
    stale: bool,
    /// Bumped by every applied answer, so concurrent refreshers can tell that one
    /// happened while they waited.
    version: u64,
}

impl MetadataCache {
    pub fn new() -> MetadataCache {
        MetadataCache::default()
    }

    /// Takes in a metadata answer. `asked`: the topics the request named (`None`: all
    /// topics, so topics absent from the answer are gone).
    pub fn apply(&mut self, response: &MetadataResponse, asked: Option<&[String]>, now: Instant) {
        self.brokers = response
            .brokers
            .iter()
            .map(|b| (b.broker_id, host_port(&b.host, b.port)))
            .collect();
        self.controller = Some(response.controller_id);
        if asked.is_none() {
            let present: std::collections::HashSet<&str> =
                response.topics.iter().map(|t| t.name.as_str()).collect();
            self.topics
                .retain(|name, _| present.contains(name.as_str()));
        }
        for topic in &response.topics {
            if !topic.error.is_ok() {
                self.topics.remove(&topic.name);
                self.missing
                    .insert(topic.name.clone(), (topic.error, topic.message.clone()));
                continue;
            }
            self.missing.remove(&topic.name);
            let mut partitions: Vec<&_> = topic.partitions.iter().collect();
            partitions.sort_by_key(|p| p.partition);
            let old = self.topics.remove(&topic.name);
            // Same shape as before: keep newer epochs against a lagging answer.
            let comparable = old.as_ref().filter(|old| old.len() == partitions.len());
            let entries = partitions
                .iter()
                .enumerate()
                .map(|(index, p)| {
                    let known_broker = self.brokers.contains_key(&p.leader);
                    let fresh = PartitionEntry {
                        leader: (p.error.is_ok() && known_broker).then_some(p.leader),
                        leader_epoch: p.leader_epoch,
                        error: p.error,
                        suspect: false,
                    };
                    match comparable.map(|old| &old[index]) {
                        Some(cached)
                            if !cached.suspect
                                && cached.leader.is_some()
                                && fresh.leader_epoch < cached.leader_epoch =>
                        {
                            tracing::debug!(
                                topic = %topic.name,
                                partition = p.partition,
                                cached = cached.leader_epoch,
                                answered = fresh.leader_epoch,
                                "ignoring metadata with an older leader epoch"
                            );
                            cached.clone()
                        }
                        _ => fresh,
                    }
                })
                .collect();
            self.topics.insert(topic.name.clone(), entries);
        }
        if let Some(asked) = asked {
            for name in asked {
                if !response.topics.iter().any(|t| &t.name == name) {
                    // Asked but not answered: the broker knows no such topic.
                    self.topics.remove(name);
                    self.missing
                        .insert(name.clone(), (ErrorCode::UnknownTopic, String::new()));
                }
            }
        }
        self.refreshed_at = Some(now);
        self.stale = false;
        self.version += 1;
    }

    /// Where requests for `topic`/`partition` go.
    pub fn leader(&self, topic: &str, partition: u32) -> LeaderLookup {
        let Some(partitions) = self.topics.get(topic) else {
            return match self.missing.get(topic) {
                Some((code, _)) => LeaderLookup::Missing(*code),
                None => LeaderLookup::Unknown,
            };
        };
        let Some(entry) = partitions.get(partition as usize) else {
            return LeaderLookup::Missing(ErrorCode::InvalidPartition);
        };
        match entry.leader {
            Some(broker) if !entry.suspect => LeaderLookup::Known {
                broker,
                epoch: entry.leader_epoch,
            },
            _ if !entry.error.is_ok() && !entry.error.is_retriable() => {
                LeaderLookup::Missing(entry.error)
            }
            _ => LeaderLookup::Unknown,
        }
    }

    /// The number of partitions of `topic`, if metadata has it.
    pub fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topics.get(topic).map(|p| p.len() as u32)
    }

    /// Whether the last answers said `topic` does not exist (and with which code).
    pub fn missing_topic(&self, topic: &str) -> Option<ErrorCode> {
        self.missing.get(topic).map(|(code, _)| *code)
    }

    /// Why a partition of `topic` is [`LeaderLookup::Missing`] with `code`, for an
    /// error: the broker's message for the topic when its answer gave one (which rule
    /// refused this client), else the code's description.
    pub fn missing_reason(&self, topic: &str, code: ErrorCode) -> String {
        match self.missing.get(topic) {
            Some((refused, message)) if *refused == code && !message.is_empty() => message.clone(),
            _ => code.description().to_string(),
        }
    }

    /// `host:port` of a broker, as metadata advertised it.
    pub fn broker_address(&self, broker: BrokerId) -> Option<&str> {
        self.brokers.get(&broker).map(String::as_str)
    }

    /// Every broker metadata listed, by id.
    pub fn brokers(&self) -> Vec<(BrokerId, String)> {
        self.brokers
            .iter()
            .map(|(id, address)| (*id, address.clone()))
            .collect()
    }

    /// Topics the cache holds, for a refresh that keeps all of them current.
    pub fn topics(&self) -> Vec<String> {
        let mut names: Vec<String> = self.topics.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Asks for a refresh before the next routing decision.
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// A request to the leader of `topic`/`partition` failed in a way that says it may
    /// not lead any more: stop routing there until metadata is refreshed (which may
    /// then name the same leader again, at any epoch).
    pub fn leader_failed(&mut self, topic: &str, partition: u32) {
        if let Some(entry) = self
            .topics
            .get_mut(topic)
            .and_then(|p| p.get_mut(partition as usize))
        {
            entry.suspect = true;
        }
        self.stale = true;
    }

    /// Every partition led by `broker` is suspect (its connection failed).
    pub fn broker_failed(&mut self, broker: BrokerId) {
        for entry in self.topics.values_mut().flatten() {
            if entry.leader == Some(broker) {
                entry.suspect = true;
            }
        }
        self.stale = true;
    }

    /// Forgets a topic (deleted, or recreated with another shape).
    pub fn forget_topic(&mut self, topic: &str) {
        self.topics.remove(topic);
        self.missing.remove(topic);
    }

    /// Whether routing should wait for fresh metadata: nothing known yet, marked stale,
    /// or older than `max_age`.
    pub fn needs_refresh(&self, now: Instant, max_age: Duration) -> bool {
        match self.refreshed_at {
            None => true,
            Some(at) => self.stale || now.saturating_duration_since(at) >= max_age,
        }
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// What to do after a request routed to a partition's leader (or a group's
/// coordinator) failed, for the partitions it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnError {
    /// The target may have moved (not the leader, stale epoch, no leader, connection
    /// lost, no answer): mark it suspect, refresh metadata, retry after a backoff.
    RefreshAndRetry,
    /// A transient failure at the right target (say, too few in-sync replicas): retry
    /// after a backoff; metadata is fine.
    Retry,
    /// Retrying cannot help.
    Fail,
}

/// Decides [`OnError`] for an error, the same way for produce, fetch, list-offsets
/// and group requests (Kafka's classification of these codes).
pub(crate) fn on_error(error: &Error) -> OnError {
    match error {
        Error::Broker { code, .. } => match code {
            ErrorCode::NotLeaderOrFollower
            | ErrorCode::LeaderNotAvailable
            | ErrorCode::FencedLeaderEpoch
            | ErrorCode::UnknownLeaderEpoch
            | ErrorCode::BrokerShuttingDown
            | ErrorCode::NotCoordinator
            | ErrorCode::CoordinatorNotAvailable
            // A broker that just started and has not caught up with the metadata log.
            | ErrorCode::MetadataNotReady
            // A broker that just restarted may not have applied the topic yet; after
            // the refresh, a topic the cluster does not have fails as `missing`.
            | ErrorCode::UnknownTopic => OnError::RefreshAndRetry,
            code if code.is_retriable() => OnError::Retry,
            _ => OnError::Fail,
        },
        // No answer (no connection, a lost one, a timeout): the broker may be gone,
        // and its partitions may have a new leader by now. Which errors those are
        // is `Error::is_retriable`'s to say.
        other if other.is_retriable() => OnError::RefreshAndRetry,
        _ => OnError::Fail,
    }
}

/// Items (batches, fetch positions, offset look-ups) grouped by the broker that leads
/// their partition; those without a known leader wait in `unroutable`, those whose
/// partition does not exist in `missing`.
#[derive(Debug)]
pub(crate) struct Routed<T> {
    pub by_broker: BTreeMap<BrokerId, Vec<T>>,
    pub unroutable: Vec<T>,
    pub missing: Vec<(T, ErrorCode)>,
}

impl<T> Default for Routed<T> {
    fn default() -> Self {
        Routed {
            by_broker: BTreeMap::new(),
            unroutable: Vec::new(),
            missing: Vec::new(),
        }
    }
}

/// Groups `items` by their partition's leader, `leader_of` being a look-up in the
/// cache (`|item| cache.leader(topic, partition)`) or a decision of the caller's.
pub(crate) fn route<T>(
    items: impl IntoIterator<Item = T>,
    leader_of: impl Fn(&T) -> LeaderLookup,
) -> Routed<T> {
    let mut routed = Routed::default();
    for item in items {
        match leader_of(&item) {
            LeaderLookup::Known { broker, .. } => {
                routed.by_broker.entry(broker).or_default().push(item)
            }
            LeaderLookup::Unknown => routed.unroutable.push(item),
            LeaderLookup::Missing(code) => routed.missing.push((item, code)),
        }
    }
    routed
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_wire::messages::{BrokerInfo, PartitionMetadata, TopicMetadata};

    const MINUTE: Duration = Duration::from_secs(60);

    /// Metadata naming brokers 1..=3 and `topics` as (name, [(leader, epoch)]).
    fn answer(topics: &[(&str, &[(u32, i32)])]) -> MetadataResponse {
        MetadataResponse {
            brokers: (1..=3)
                .map(|id| BrokerInfo {
                    broker_id: id,
                    host: "127.0.0.1".into(),
                    port: 9090 + id as u16,
                })
                .collect(),
            controller_id: 1,
            topics: topics
                .iter()
                .map(|(name, partitions)| TopicMetadata {
                    name: name.to_string(),
                    id: meridian_wire::TopicId::NONE,
                    error: ErrorCode::None,
                    message: String::new(),
                    partitions: partitions
                        .iter()
                        .enumerate()
                        .map(|(i, (leader, epoch))| PartitionMetadata {
                            partition: i as u32,
                            error: ErrorCode::None,
                            leader: *leader,
                            leader_epoch: *epoch,
                            replicas: vec![1, 2, 3],
                            isr: vec![1, 2, 3],
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn known(broker: BrokerId, epoch: i32) -> LeaderLookup {
        LeaderLookup::Known { broker, epoch }
    }

    #[test]
    fn leaders_and_addresses_come_from_the_answer() {
        let t0 = Instant::now();
        let mut cache = MetadataCache::new();
        assert!(cache.needs_refresh(t0, MINUTE));
        assert_eq!(cache.leader("t", 0), LeaderLookup::Unknown);
        cache.apply(&answer(&[("t", &[(1, 0), (2, 0)])]), None, t0);
        assert_eq!(cache.leader("t", 0), known(1, 0));
        assert_eq!(cache.leader("t", 1), known(2, 0));
        assert_eq!(
            cache.leader("t", 2),
            LeaderLookup::Missing(ErrorCode::InvalidPartition)
        );
        assert_eq!(cache.partition_count("t"), Some(2));
        assert_eq!(cache.broker_address(3), Some("127.0.0.1:9093"));
        assert_eq!(cache.broker_address(4), None);
        assert!(!cache.needs_refresh(t0 + MINUTE / 2, MINUTE));
        assert!(cache.needs_refresh(t0 + MINUTE, MINUTE), "periodic refresh");
    }

    #[test]
    fn a_single_broker_leads_everything() {
        // What today's single broker answers: itself, epoch 0, for every partition.
        let mut response = answer(&[("a", &[(1, 0), (1, 0), (1, 0)])]);
        response.brokers.truncate(1);
        let mut cache = MetadataCache::new();
        cache.apply(&response, None, Instant::now());
        let routed = route(0..3u32, |p| cache.leader("a", *p));
        assert_eq!(routed.by_broker, BTreeMap::from([(1, vec![0, 1, 2])]));
        assert!(routed.unroutable.is_empty() && routed.missing.is_empty());
    }

    #[test]
    fn unknown_and_missing_topics() {
        let t0 = Instant::now();
        let mut cache = MetadataCache::new();
        let mut response = answer(&[("gone", &[])]);
        response.topics[0].error = ErrorCode::UnknownTopic;
        let asked = ["gone".to_string(), "never".to_string()];
        cache.apply(&response, Some(&asked), t0);
        assert_eq!(
            cache.leader("gone", 0),
            LeaderLookup::Missing(ErrorCode::UnknownTopic)
        );
        assert_eq!(
            cache.leader("never", 0),
            LeaderLookup::Missing(ErrorCode::UnknownTopic)
        );
        assert_eq!(cache.leader("other", 0), LeaderLookup::Unknown);
        // Created meanwhile: the next answer routes it.
        cache.apply(&answer(&[("gone", &[(2, 0)])]), Some(&asked[..1]), t0);
        assert_eq!(cache.leader("gone", 0), known(2, 0));
        assert_eq!(cache.missing_topic("gone"), None);
        // A full listing without it: forgotten.
        cache.apply(&answer(&[]), None, t0);
        assert_eq!(cache.leader("gone", 0), LeaderLookup::Unknown);
    }

    /// A refusal keeps the broker's message (Metadata version 1) for the errors of
    /// the partitions it cannot route; without one, the code says what it can.
    #[test]
    fn a_refused_topic_keeps_the_brokers_reason() {
        let t0 = Instant::now();
        let mut cache = MetadataCache::new();
        let mut response = answer(&[("audit", &[]), ("gone", &[])]);
        response.topics[0].error = ErrorCode::TopicAuthorizationFailed;
        response.topics[0].message = "client `a` may not describe topic `audit` (acl_file)".into();
        response.topics[1].error = ErrorCode::UnknownTopic;
        cache.apply(&response, None, t0);
        let refused = ErrorCode::TopicAuthorizationFailed;
        assert_eq!(cache.leader("audit", 0), LeaderLookup::Missing(refused));
        assert_eq!(
            cache.missing_reason("audit", refused),
            "client `a` may not describe topic `audit` (acl_file)"
        );
        assert_eq!(
            cache.missing_reason("gone", ErrorCode::UnknownTopic),
            ErrorCode::UnknownTopic.description()
        );
    }

    #[test]
    fn leader_moves_follow_newer_epochs_only() {
        let t0 = Instant::now();
        let mut cache = MetadataCache::new();
        cache.apply(&answer(&[("t", &[(1, 5)])]), None, t0);
        // A lagging broker still says epoch 4 with the old leader: ignored.
        cache.apply(&answer(&[("t", &[(3, 4)])]), None, t0);
        assert_eq!(cache.leader("t", 0), known(1, 5));
        // The real move.
        cache.apply(&answer(&[("t", &[(2, 6)])]), None, t0);
        assert_eq!(cache.leader("t", 0), known(2, 6));
        // The leader refuses (NotLeaderOrFollower): not routable until refreshed, and
        // the next answer is taken whatever its epoch (the topic may be new).
        cache.leader_failed("t", 0);
        assert!(cache.needs_refresh(t0, MINUTE));
        assert_eq!(cache.leader("t", 0), LeaderLookup::Unknown);
        cache.apply(&answer(&[("t", &[(3, 0)])]), None, t0);
        assert_eq!(cache.leader("t", 0), known(3, 0));
        // A different partition count means another topic: epochs start over.
        cache.apply(&answer(&[("t", &[(1, 0), (1, 0)])]), None, t0);
        assert_eq!(cache.leader("t", 0), known(1, 0));
    }

    #[test]
    fn partitions_without_a_usable_leader_wait() {
        let t0 = Instant::now();
        let mut cache = MetadataCache::new();
        let mut response = answer(&[("t", &[(1, 0), (7, 0), (2, 0), (2, 0)])]);
        // Partition 2: an election under way; partition 3: offline for good.
        response.topics[0].partitions[2].error = ErrorCode::LeaderNotAvailable;
        response.topics[0].partitions[3].error = ErrorCode::CorruptLog;
        cache.apply(&response, None, t0);
        let routed = route(0..4u32, |p| cache.leader("t", *p));
        assert_eq!(routed.by_broker, BTreeMap::from([(1, vec![0])]));
        // Broker 7 is not among the brokers: unroutable, like the election.
        assert_eq!(routed.unroutable, vec![1, 2]);
        assert_eq!(routed.missing, vec![(3, ErrorCode::CorruptLog)]);
    }

    #[test]
    fn a_failed_broker_makes_its_partitions_unroutable() {
        let t0 = Instant::now();
        let mut cache = MetadataCache::new();
        cache.apply(&answer(&[("t", &[(1, 0), (2, 0), (1, 0)])]), None, t0);
        cache.broker_failed(1);
        let routed = route(0..3u32, |p| cache.leader("t", *p));
        assert_eq!(routed.by_broker, BTreeMap::from([(2, vec![1])]));
        assert_eq!(routed.unroutable, vec![0, 2]);
        // Failover: the controller moved both to broker 3.
        cache.apply(&answer(&[("t", &[(3, 1), (2, 0), (3, 1)])]), None, t0);
        let routed = route(0..3u32, |p| cache.leader("t", *p));
        assert_eq!(
            routed.by_broker,
            BTreeMap::from([(2, vec![1]), (3, vec![0, 2])])
        );
    }

    #[test]
    fn errors_map_to_actions() {
        let check = |error: Error, expected: OnError| {
            assert_eq!(on_error(&error), expected, "{error}");
        };
        for code in [
            ErrorCode::NotLeaderOrFollower,
            ErrorCode::LeaderNotAvailable,
            ErrorCode::FencedLeaderEpoch,
            ErrorCode::UnknownLeaderEpoch,
            ErrorCode::BrokerShuttingDown,
            ErrorCode::NotCoordinator,
            ErrorCode::CoordinatorNotAvailable,
            ErrorCode::MetadataNotReady,
        ] {
            check(Error::broker(code, ""), OnError::RefreshAndRetry);
        }
        for code in [
            ErrorCode::NotEnoughReplicas,
            ErrorCode::NotEnoughReplicasAfterAppend,
            ErrorCode::StorageError,
            ErrorCode::RequestTimedOut,
        ] {
            check(Error::broker(code, ""), OnError::Retry);
        }
        check(
            Error::broker(ErrorCode::UnknownTopic, ""),
            OnError::RefreshAndRetry,
        );
        for code in [
            ErrorCode::MessageTooLarge,
            ErrorCode::OutOfOrderSequenceNumber,
            ErrorCode::InvalidProducerEpoch,
        ] {
            check(Error::broker(code, ""), OnError::Fail);
        }
        check(Error::Timeout, OnError::RefreshAndRetry);
        check(Error::Transport("reset".into()), OnError::RefreshAndRetry);
        check(Error::Connect("refused".into()), OnError::RefreshAndRetry);
        check(Error::Tls("bad certificate".into()), OnError::Fail);
        check(Error::Closed, OnError::Fail);
    }
}
