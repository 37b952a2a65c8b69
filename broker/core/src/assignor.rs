//! Partition assignors. The coordinator runs them (server-side assignment, as in
//! Kafka's KIP-848), so every member of a group gets its partitions from one place and
//! the clients stay simple.
//!
//! - `range`: per topic, contiguous ranges of partitions to the subscribed members in
//!   member order (Kafka's RangeAssignor).
//! - `roundrobin`: all subscribed partitions dealt out one by one (RoundRobinAssignor).
//! - `cooperative-sticky`: keeps every member's partitions where it can and moves only
//!   what balance requires (CooperativeStickyAssignor).
//!
//! `range` and `roundrobin` are *eager*: on every rebalance each member gives up all
//! its partitions before any are handed out again. `cooperative-sticky` is
//! *incremental*: only partitions that change owner stop, everything else keeps
//! being consumed.

use std::collections::{BTreeMap, BTreeSet};

use crate::TopicPartition;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Assignor {
    Range,
    RoundRobin,
    CooperativeSticky,
}

impl Assignor {
    pub const ALL: [Assignor; 3] = [
        Assignor::Range,
        Assignor::RoundRobin,
        Assignor::CooperativeSticky,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }

    pub fn parse(name: &str) -> Option<Assignor> {
        Assignor::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether every member gives up all partitions on a rebalance.
    pub fn is_eager(self) -> bool {
        !matches!(self, Assignor::CooperativeSticky)
    }

    /// Computes the target assignment.
    ///
    /// `members` maps each member to its subscribed topics; `partition_counts` gives
    /// the partition count of each existing topic (a subscribed topic missing from it
    /// has no partitions to assign); `previous` is the current target, used by the
    /// sticky assignor. Every partition of a subscribed topic goes to exactly one
    /// member subscribed to that topic; every member appears in the result.
    pub fn assign(
        self,
        members: &BTreeMap<String, BTreeSet<String>>,
        partition_counts: &BTreeMap<String, u32>,
        previous: &BTreeMap<String, BTreeSet<TopicPartition>>,
    ) -> BTreeMap<String, BTreeSet<TopicPartition>> {
        let mut result: BTreeMap<String, BTreeSet<TopicPartition>> = members
            .keys()
            .map(|m| (m.clone(), BTreeSet::new()))
            .collect();
        match self {
            Assignor::Range => range(members, partition_counts, &mut result),
            Assignor::RoundRobin => round_robin(members, partition_counts, &mut result),
            Assignor::CooperativeSticky => sticky(members, partition_counts, previous, &mut result),
        }
        result
    }
}

/// Subscribed topics that exist, each with the members subscribed to it (sorted).
fn subscribers<'a>(
    members: &'a BTreeMap<String, BTreeSet<String>>,
    partition_counts: &BTreeMap<String, u32>,
) -> BTreeMap<String, (u32, Vec<&'a String>)> {
    let mut topics: BTreeMap<String, (u32, Vec<&String>)> = BTreeMap::new();
    for (member, subscribed) in members {
        for topic in subscribed {
            let Some(&count) = partition_counts.get(topic) else {
                continue;
            };
            topics
                .entry(topic.clone())
                .or_insert_with(|| (count, Vec::new()))
                .1
                .push(member);
        }
    }
    topics
}

fn range(
    members: &BTreeMap<String, BTreeSet<String>>,
    partition_counts: &BTreeMap<String, u32>,
    result: &mut BTreeMap<String, BTreeSet<TopicPartition>>,
) {
    for (topic, (count, subscribed)) in subscribers(members, partition_counts) {
        let n_members = subscribed.len() as u32;
        let per_member = count / n_members;
        let with_extra = count % n_members;
        let mut next = 0;
        for (i, member) in subscribed.into_iter().enumerate() {
            let n = per_member + u32::from((i as u32) < with_extra);
            let owned = result.get_mut(member).expect("every member has an entry");
            owned.extend((next..next + n).map(|p| TopicPartition::new(topic.clone(), p)));
            next += n;
        }
        debug_assert_eq!(next, count);
    }
}

fn round_robin(
    members: &BTreeMap<String, BTreeSet<String>>,
    partition_counts: &BTreeMap<String, u32>,
    result: &mut BTreeMap<String, BTreeSet<TopicPartition>>,
) {
    let order: Vec<&String> = members.keys().collect();
    let mut cursor = 0usize;
    for (topic, (count, _)) in subscribers(members, partition_counts) {
        for partition in 0..count {
            // The next member, in a circle, that subscribes to this topic (one exists).
            for _ in 0..order.len() {
                let member = order[cursor % order.len()];
                cursor += 1;
                if members[member].contains(&topic) {
                    let owned = result.get_mut(member).expect("every member has an entry");
                    owned.insert(TopicPartition::new(topic.clone(), partition));
                    break;
                }
            }
        }
    }
}

fn sticky(
    members: &BTreeMap<String, BTreeSet<String>>,
    partition_counts: &BTreeMap<String, u32>,
    previous: &BTreeMap<String, BTreeSet<TopicPartition>>,
    result: &mut BTreeMap<String, BTreeSet<TopicPartition>>,
) {
    let topics = subscribers(members, partition_counts);
    let all: BTreeSet<TopicPartition> = topics
        .iter()
        .flat_map(|(topic, (count, _))| (0..*count).map(|p| TopicPartition::new(topic.clone(), p)))
        .collect();
    if members.is_empty() || all.is_empty() {
        return;
    }
    // Keep what each member had, up to an even share: a member that kept more than
    // its share would only have to give it up in the balancing pass below.
    let cap = all.len().div_ceil(members.len());
    let mut taken: BTreeSet<TopicPartition> = BTreeSet::new();
    for (member, subscribed) in members {
        let Some(had) = previous.get(member) else {
            continue;
        };
        let owned = result.get_mut(member).expect("every member has an entry");
        for tp in had {
            if owned.len() == cap {
                break;
            }
            if subscribed.contains(&tp.topic) && all.contains(tp) && !taken.contains(tp) {
                taken.insert(tp.clone());
                owned.insert(tp.clone());
            }
        }
    }
    // Hand out the rest, each to the least loaded member subscribed to its topic.
    for tp in all.iter().filter(|tp| !taken.contains(*tp)) {
        let member =
            least_loaded(result, members, &tp.topic).expect("a topic in `all` has a subscriber");
        result
            .get_mut(&member)
            .expect("member exists")
            .insert(tp.clone());
    }
    // Balance: move one partition at a time from the most to the least loaded member
    // that can take it, until loads differ by at most one. Each move lowers the
    // spread, so this ends; the bound is a guard.
    for _ in 0..all.len() {
        let Some((from, tp, to)) = best_move(result, members) else {
            break;
        };
        result.get_mut(&from).expect("member exists").remove(&tp);
        result.get_mut(&to).expect("member exists").insert(tp);
    }
}

fn least_loaded(
    result: &BTreeMap<String, BTreeSet<TopicPartition>>,
    members: &BTreeMap<String, BTreeSet<String>>,
    topic: &str,
) -> Option<String> {
    members
        .iter()
        .filter(|(_, subscribed)| subscribed.contains(topic))
        .min_by_key(|(member, _)| (result[*member].len(), *member))
        .map(|(member, _)| member.clone())
}

/// A partition whose move from a member with `n` partitions to one with `n - 2` or
/// fewer evens things out.
fn best_move(
    result: &BTreeMap<String, BTreeSet<TopicPartition>>,
    members: &BTreeMap<String, BTreeSet<String>>,
) -> Option<(String, TopicPartition, String)> {
    let mut by_load: Vec<(&String, usize)> = result.iter().map(|(m, p)| (m, p.len())).collect();
    by_load.sort_by_key(|(m, n)| (std::cmp::Reverse(*n), *m));
    for (from, from_len) in &by_load {
        for (to, to_len) in by_load.iter().rev() {
            if to_len + 1 >= *from_len {
                break;
            }
            if let Some(tp) = result[*from]
                .iter()
                .rev()
                .find(|tp| members[*to].contains(&tp.topic))
            {
                return Some(((*from).clone(), tp.clone(), (*to).clone()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(spec: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        spec.iter()
            .map(|(m, topics)| {
                (
                    m.to_string(),
                    topics.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    fn render(assignment: &BTreeMap<String, BTreeSet<TopicPartition>>) -> String {
        assignment
            .iter()
            .map(|(m, tps)| {
                let tps: Vec<String> = tps.iter().map(|tp| tp.to_string()).collect();
                format!("{m}: {}", tps.join(" ")).trim_end().to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn check(assignor: Assignor, spec: &[(&str, &[&str])], counts: &[(&str, u32)], expected: &str) {
        let counts = counts.iter().map(|(t, n)| (t.to_string(), *n)).collect();
        let got = assignor.assign(&members(spec), &counts, &BTreeMap::new());
        assert_eq!(render(&got), expected.trim());
    }

    #[test]
    fn range_gives_contiguous_ranges_per_topic() {
        check(
            Assignor::Range,
            &[("a", &["t", "u"]), ("b", &["t", "u"])],
            &[("t", 3), ("u", 2)],
            "a: t/0 t/1 u/0\nb: t/2 u/1",
        );
    }

    #[test]
    fn roundrobin_deals_partitions_in_turn() {
        check(
            Assignor::RoundRobin,
            &[("a", &["t", "u"]), ("b", &["t", "u"])],
            &[("t", 3), ("u", 2)],
            "a: t/0 t/2 u/1\nb: t/1 u/0",
        );
    }

    #[test]
    fn the_eleventh_member_of_ten_partitions_is_idle() {
        let spec: Vec<(String, &[&str])> =
            (0..11).map(|i| (format!("m{i:02}"), &["t"][..])).collect();
        let spec: Vec<(&str, &[&str])> = spec.iter().map(|(m, t)| (m.as_str(), *t)).collect();
        for assignor in Assignor::ALL {
            let counts = [("t".to_string(), 10)].into_iter().collect();
            let got = assignor.assign(&members(&spec), &counts, &BTreeMap::new());
            let idle = got.values().filter(|tps| tps.is_empty()).count();
            assert_eq!(idle, 1, "{assignor:?}: {}", render(&got));
        }
    }

    #[test]
    fn unknown_topics_assign_nothing() {
        check(
            Assignor::CooperativeSticky,
            &[("a", &["missing"])],
            &[],
            "a: ",
        );
    }

    /// A group of members, each subscribing to a subset of four topics.
    fn group_strategy(
    ) -> impl Strategy<Value = (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, u32>)> {
        let topics = ["t0", "t1", "t2", "t3"];
        (
            prop::collection::btree_map(
                "[a-h]",
                prop::collection::btree_set(0usize..4, 1..4),
                1..8,
            ),
            prop::collection::vec(0u32..12, 4),
        )
            .prop_map(move |(members, counts)| {
                let members = members
                    .into_iter()
                    .map(|(m, ts)| (m, ts.into_iter().map(|t| topics[t].to_string()).collect()))
                    .collect();
                let counts = topics.iter().map(|t| t.to_string()).zip(counts).collect();
                (members, counts)
            })
    }

    fn assert_complete(
        members: &BTreeMap<String, BTreeSet<String>>,
        counts: &BTreeMap<String, u32>,
        got: &BTreeMap<String, BTreeSet<TopicPartition>>,
    ) {
        let mut seen = BTreeSet::new();
        for (member, tps) in got {
            for tp in tps {
                assert!(
                    members[member].contains(&tp.topic),
                    "{member} got {tp} it does not subscribe to"
                );
                assert!(seen.insert(tp.clone()), "{tp} assigned twice");
            }
        }
        let subscribed: BTreeSet<&String> = members.values().flatten().collect();
        let expected: usize = subscribed
            .iter()
            .map(|t| counts.get(*t).copied().unwrap_or(0) as usize)
            .sum();
        assert_eq!(
            seen.len(),
            expected,
            "every subscribed partition is assigned"
        );
    }

    proptest! {
        #[test]
        fn every_assignor_assigns_each_partition_once((members, counts) in group_strategy()) {
            for assignor in Assignor::ALL {
                let got = assignor.assign(&members, &counts, &BTreeMap::new());
                assert_complete(&members, &counts, &got);
            }
        }

        #[test]
        fn sticky_moves_only_a_departed_members_partitions(
            n_members in 2usize..8,
            n_partitions in 0u32..60,
            leaver in 0usize..8,
        ) {
            let members: BTreeMap<String, BTreeSet<String>> = (0..n_members)
                .map(|i| (format!("m{i}"), ["t".to_string()].into_iter().collect()))
                .collect();
            let counts: BTreeMap<String, u32> = [("t".to_string(), n_partitions)].into_iter().collect();
            let before = Assignor::CooperativeSticky.assign(&members, &counts, &BTreeMap::new());
            let mut fewer = members.clone();
            fewer.remove(&format!("m{}", leaver % n_members));
            let after = Assignor::CooperativeSticky.assign(&fewer, &counts, &before);
            assert_complete(&fewer, &counts, &after);
            for (member, tps) in &after {
                prop_assert!(before[member].is_subset(tps), "{member} lost partitions it could keep");
            }
            let loads: Vec<usize> = after.values().map(|t| t.len()).collect();
            prop_assert!(loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1);
        }

        #[test]
        fn sticky_joiner_takes_only_its_share(
            n_members in 1usize..8,
            n_partitions in 0u32..60,
        ) {
            let mut members: BTreeMap<String, BTreeSet<String>> = (0..n_members)
                .map(|i| (format!("m{i}"), ["t".to_string()].into_iter().collect()))
                .collect();
            let counts: BTreeMap<String, u32> = [("t".to_string(), n_partitions)].into_iter().collect();
            let before = Assignor::CooperativeSticky.assign(&members, &counts, &BTreeMap::new());
            members.insert("new".into(), ["t".to_string()].into_iter().collect());
            let after = Assignor::CooperativeSticky.assign(&members, &counts, &before);
            assert_complete(&members, &counts, &after);
            let moved: usize = before.iter().map(|(m, tps)| tps.difference(&after[m]).count()).sum();
            prop_assert_eq!(moved, after["new"].len(), "only the joiner's share moves");
            prop_assert_eq!(after["new"].len(), n_partitions as usize / (n_members + 1));
        }
    }
}
