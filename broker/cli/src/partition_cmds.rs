//! `meridian partition list|reassign`: where each partition's replicas live, and
//! moving them to other brokers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use meridian_client::{Client, ElectionResult, ErrorCode, LocalLog, OngoingReassignment};
use meridian_wire::messages::{PartitionMetadata, NO_BROKER};

use crate::ConnectArgs;

#[derive(Subcommand)]
pub enum PartitionCommand {
    /// Leader, leader epoch, replicas and in-sync replicas of each partition, and the
    /// reassignments under way (replicas being added and removed). The filters
    /// (Kafka's `kafka-topics --describe --under-replicated-partitions` and
    /// friends) keep the partitions that match any of them.
    List {
        /// The topic; without one, every topic (internal ones included).
        topic: Option<String>,
        /// Only partitions with fewer in-sync replicas than replicas (replicas a
        /// reassignment is still adding do not count).
        #[arg(long)]
        under_replicated: bool,
        /// Only partitions without a leader (offline).
        #[arg(long)]
        unavailable: bool,
        /// Only partitions with fewer in-sync replicas than their topic's
        /// min.insync.replicas: acks=all writes to them are refused.
        #[arg(long)]
        under_min_isr: bool,
        /// One JSON array of the partitions instead of the table (for scripts:
        /// `jq 'map(select(.leader == null))'`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Move leadership back to partitions' preferred replicas (the first of each
    /// partition's replicas), where that replica is alive and in sync: after a broker
    /// was stopped or restarted, the partitions it gave away go back to it (Kafka's
    /// preferred leader election; the controller also does it on its own every
    /// `cluster.leader_imbalance_check_interval_ms`). With --unclean, give
    /// partitions without a leader one instead.
    ElectLeaders {
        /// The topic; without one, --all.
        #[arg(required_unless_present = "all")]
        topic: Option<String>,
        /// Only these partitions of the topic (repeatable); default all of them.
        #[arg(long, short, requires = "topic")]
        partition: Vec<u32>,
        /// Every partition of every topic.
        #[arg(long, conflicts_with = "topic")]
        all: bool,
        /// An unclean election (Kafka's `--election-type unclean`): each partition
        /// without a leader gets a live replica as leader, one from outside the ISR
        /// when no in-sync replica is alive, giving up the records only the lost
        /// replicas held. For an offline partition whose in-sync replicas cannot
        /// come back.
        #[arg(long)]
        unclean: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Move a partition's replicas to other brokers. The new replicas copy the log
    /// from the leader in the background; the old ones are dropped once every new
    /// one is in sync, so nothing acknowledged is lost.
    Reassign {
        topic: String,
        /// Partition to move, repeatable.
        #[arg(long, short, required = true)]
        partition: Vec<u32>,
        /// The brokers to end on, comma-separated; the first is the preferred leader.
        #[arg(long, value_delimiter = ',', required_unless_present = "cancel")]
        replicas: Vec<u32>,
        /// Cancel a reassignment under way instead.
        #[arg(long, conflicts_with = "replicas")]
        cancel: bool,
        /// Wait until the partitions sit on exactly the new replicas, all in sync.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        wait_timeout_secs: u64,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

pub async fn run(cmd: PartitionCommand) -> anyhow::Result<()> {
    match cmd {
        PartitionCommand::List {
            topic,
            under_replicated,
            unavailable,
            under_min_isr,
            json,
            connect,
        } => {
            let client = connect.connect().await?;
            let filter = Filter {
                under_replicated,
                unavailable,
                under_min_isr,
            };
            print!(
                "{}",
                list_partitions(&client, topic.as_deref(), filter, json).await?
            );
            Ok(())
        }
        PartitionCommand::ElectLeaders {
            topic,
            partition,
            all: _,
            unclean,
            connect,
        } => {
            let client = connect.connect().await?;
            let asked: Option<Vec<(&str, u32)>> = match &topic {
                None => None,
                Some(topic) if partition.is_empty() => Some(
                    partitions(&client, topic)
                        .await?
                        .iter()
                        .map(|p| (topic.as_str(), p.partition))
                        .collect(),
                ),
                Some(topic) => Some(partition.iter().map(|p| (topic.as_str(), *p)).collect()),
            };
            let admin = client.admin();
            let results = if unclean {
                admin.elect_unclean_leaders(asked.as_deref()).await?
            } else {
                admin.elect_preferred_leaders(asked.as_deref()).await?
            };
            let (report, refusals) = election_report(&results, unclean);
            print!("{report}");
            eprint!("{refusals}");
            let failed = refusals.lines().count();
            if failed > 0 {
                let wanted = if unclean {
                    "a leader"
                } else {
                    "their preferred leader"
                };
                bail!("{failed} partition(s) could not get {wanted}");
            }
            Ok(())
        }
        PartitionCommand::Reassign {
            topic,
            partition,
            replicas,
            cancel,
            wait,
            wait_timeout_secs,
            connect,
        } => {
            let target = if cancel {
                None
            } else {
                let unique: BTreeSet<u32> = replicas.iter().copied().collect();
                if unique.len() != replicas.len() {
                    bail!("--replicas {}: a broker appears twice", list(&replicas));
                }
                Some(replicas.clone())
            };
            let client = connect.connect().await?;
            let moves: Vec<(u32, Option<Vec<u32>>)> =
                partition.iter().map(|p| (*p, target.clone())).collect();
            let mut failed = 0;
            for (p, result) in client.admin().reassign_partitions(&topic, &moves).await? {
                match result {
                    Ok(()) if cancel => println!("{topic}/{p}: reassignment cancelled"),
                    Ok(()) => println!("{topic}/{p}: moving to [{}]", list(&replicas)),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{topic}/{p}: {e}");
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} partition(s) could not be reassigned");
            }
            if wait && !cancel {
                wait_for(&client, &topic, &partition, &replicas, wait_timeout_secs).await?;
            }
            Ok(())
        }
    }
}

async fn partitions(
    client: &Client,
    topic: &str,
) -> anyhow::Result<Vec<meridian_wire::messages::PartitionMetadata>> {
    let metadata = client.metadata(Some(vec![topic.to_string()])).await?;
    let t = metadata
        .topics
        .into_iter()
        .find(|t| t.name == topic)
        .with_context(|| format!("no topic {topic} in the metadata"))?;
    if !t.error.is_ok() {
        bail!("{topic}: {}", t.error.name());
    }
    Ok(t.partitions)
}

/// Waits until every moving partition sits on exactly `replicas`, all in sync,
/// printing each partition's progress whenever a replica starts copying or joins
/// the ISR, and how much it has copied every five seconds, with the pace since it
/// was first seen copying and the time left at that pace.
async fn wait_for(
    client: &Client,
    topic: &str,
    moving: &[u32],
    replicas: &[u32],
    timeout_secs: u64,
) -> anyhow::Result<()> {
    let want: BTreeSet<u32> = replicas.iter().copied().collect();
    let started = Instant::now();
    // Per partition: the line printed last, its stage (the line without figures) and
    // when it was printed.
    let mut shown: BTreeMap<u32, (String, String, Instant)> = BTreeMap::new();
    // Per (partition, replica) copying: its bytes when first seen, and when.
    let mut first_seen: HashMap<(u32, u32), (u64, Instant)> = HashMap::new();
    let no_figures = HashMap::new();
    loop {
        let ongoing = client.admin().list_reassignments(Some(topic)).await?;
        let logs = copy_logs(client, &ongoing).await;
        let current = partitions(client, topic).await?;
        let mut pending = Vec::new();
        for p in moving {
            let mut stage = None;
            let line = match ongoing.iter().find(|m| m.partition == *p) {
                Some(m) => {
                    stage = Some(progress(m, &no_figures, &HashMap::new()));
                    let mut rates = HashMap::new();
                    for r in &m.adding {
                        let Some((copy, _)) = copy_of(m, *r, &logs) else {
                            continue;
                        };
                        let (bytes, at) = *first_seen
                            .entry((*p, *r))
                            .or_insert((copy.size_bytes, Instant::now()));
                        let secs = at.elapsed().as_secs_f64();
                        if secs >= 1.0 && copy.size_bytes > bytes {
                            rates.insert(*r, (copy.size_bytes - bytes) as f64 / secs);
                        }
                    }
                    progress(m, &logs, &rates)
                }
                None => {
                    let done = current.iter().find(|m| m.partition == *p).is_some_and(|m| {
                        m.replicas.iter().copied().collect::<BTreeSet<_>>() == want
                            && want.iter().all(|r| m.isr.contains(r))
                    });
                    if done {
                        "done".to_string()
                    } else if started.elapsed() > Duration::from_secs(5) {
                        // Not moving and not there: cancelled, or replaced by another
                        // reassignment. (Right after the request, the broker asked may
                        // not have the new metadata yet.)
                        bail!(
                            "{topic}/{p}: no reassignment to [{}] under way any more (cancelled?)",
                            list(replicas)
                        );
                    } else {
                        "starting".to_string()
                    }
                }
            };
            if line != "done" {
                pending.push(*p);
            }
            let stage = stage.unwrap_or_else(|| line.clone());
            let due = match shown.get(p) {
                None => true,
                Some((last, last_stage, at)) => {
                    *last_stage != stage
                        || (*last != line && at.elapsed() >= Duration::from_secs(5))
                }
            };
            if due {
                println!(
                    "{:>6.1}s {topic}/{p}: {line}",
                    started.elapsed().as_secs_f64()
                );
                shown.insert(*p, (line, stage, Instant::now()));
            }
        }
        if pending.is_empty() {
            println!(
                "done in {:.1}s: every partition is on [{}], all in sync",
                started.elapsed().as_secs_f64(),
                list(replicas)
            );
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(timeout_secs) {
            bail!("partitions {pending:?} still moving after {timeout_secs}s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Which partitions `partition list` keeps: any that matches one that is set, or
/// all when none is.
#[derive(Clone, Copy, Debug, Default)]
struct Filter {
    under_replicated: bool,
    unavailable: bool,
    under_min_isr: bool,
}

impl Filter {
    fn keeps(&self, p: &PartitionMetadata, adding: usize, min_insync: Option<u32>) -> bool {
        if !(self.under_replicated || self.unavailable || self.under_min_isr) {
            return true;
        }
        let isr = p.isr.len();
        (self.under_replicated && isr < p.replicas.len().saturating_sub(adding))
            || (self.unavailable && p.leader == NO_BROKER)
            || (self.under_min_isr && min_insync.is_some_and(|m| (isr as u32) < m))
    }
}

/// The table `partition list` prints: `topic` (or every topic) filtered by `filter`.
async fn list_partitions(
    client: &Client,
    topic: Option<&str>,
    filter: Filter,
    json: bool,
) -> anyhow::Result<String> {
    let metadata = client.metadata(topic.map(|t| vec![t.to_string()])).await?;
    let moving = client.admin().list_reassignments(topic).await?;
    let logs = copy_logs(client, &moving).await;
    let mut topics = metadata.topics;
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = format!(
        "{:<24} {:>9} {:>7} {:>6}  {:<16} {:<16} reassignment\n",
        "topic", "partition", "leader", "epoch", "replicas", "isr"
    );
    let mut rows = Vec::new();
    for t in topics {
        if !t.error.is_ok() {
            bail!("{}: {}", t.name, t.error.name());
        }
        let min_insync = if filter.under_min_isr {
            Some(min_insync_replicas(client, &t.name).await?)
        } else {
            None
        };
        for p in &t.partitions {
            let ongoing = moving
                .iter()
                .find(|m| m.topic == t.name && m.partition == p.partition);
            if !filter.keeps(p, ongoing.map_or(0, |m| m.adding.len()), min_insync) {
                continue;
            }
            if json {
                rows.push(serde_json::json!({
                    "topic": t.name,
                    "partition": p.partition,
                    "leader": (p.leader != NO_BROKER).then_some(p.leader),
                    "leader_epoch": p.leader_epoch,
                    "replicas": p.replicas,
                    "isr": p.isr,
                    "reassignment": ongoing.map(|m| serde_json::json!({
                        "target": m.target,
                        "adding": m.adding,
                        "removing": m.removing,
                        "copying": copying_json(m, &logs),
                    })),
                }));
                continue;
            }
            let leader = if p.leader == NO_BROKER {
                "none".to_string()
            } else {
                p.leader.to_string()
            };
            out.push_str(&format!(
                "{:<24} {:>9} {:>7} {:>6}  {:<16} {:<16} {}\n",
                t.name,
                p.partition,
                leader,
                p.leader_epoch,
                list(&p.replicas),
                list(&p.isr),
                ongoing.map_or_else(|| "-".to_string(), |m| progress(m, &logs, &HashMap::new()))
            ));
        }
    }
    if json {
        return Ok(format!("{}\n", serde_json::Value::Array(rows)));
    }
    Ok(out)
}

/// The topic's `min.insync.replicas`, its own or the broker default.
async fn min_insync_replicas(client: &Client, topic: &str) -> anyhow::Result<u32> {
    let described = client.admin().describe_topic(topic).await?;
    described
        .configs
        .iter()
        .find(|c| c.key == "min.insync.replicas")
        .and_then(|c| c.value.parse().ok())
        .with_context(|| format!("{topic}: its description has no min.insync.replicas"))
}

/// What `partition elect-leaders` prints: on stdout a line per partition elected and
/// how many needed no election (led by their preferred replica already; unclean,
/// led at all); on stderr a line per partition refused.
fn election_report(results: &[ElectionResult], unclean: bool) -> (String, String) {
    let (mut out, mut refused) = (String::new(), String::new());
    let mut already = 0;
    for r in results {
        match r.error {
            ErrorCode::None => out.push_str(&format!(
                "{}/{}: now led by broker {}\n",
                r.topic, r.partition, r.leader
            )),
            ErrorCode::ElectionNotNeeded => already += 1,
            error => refused.push_str(&format!(
                "{}/{}: {error}: {}\n",
                r.topic, r.partition, r.message
            )),
        }
    }
    if already > 0 && unclean {
        out.push_str(&format!("{already} partition(s) have a leader already\n"));
    } else if already > 0 {
        out.push_str(&format!(
            "{already} partition(s) already led by their preferred replica\n"
        ));
    }
    (out, refused)
}

/// The partition logs of moves under way that say how far each copy has got, by
/// `(broker, topic, partition)`: the leader's and those of replicas being added and
/// not in sync yet, each broker asked once and all at once. A broker that does not
/// answer within two seconds (down, say) leaves its copies without figures.
async fn copy_logs(
    client: &Client,
    moves: &[OngoingReassignment],
) -> HashMap<(u32, String, u32), LocalLog> {
    let mut asked: BTreeMap<u32, Vec<(String, u32)>> = BTreeMap::new();
    for m in moves {
        let copying: Vec<u32> = m
            .adding
            .iter()
            .copied()
            .filter(|r| !m.isr.contains(r))
            .collect();
        if copying.is_empty() || m.leader == NO_BROKER {
            continue;
        }
        for broker in copying.into_iter().chain([m.leader]) {
            asked
                .entry(broker)
                .or_default()
                .push((m.topic.clone(), m.partition));
        }
    }
    let answers = ask_brokers(asked, |broker, partitions| {
        let admin = client.admin();
        async move {
            let pairs: Vec<(&str, u32)> =
                partitions.iter().map(|(t, p)| (t.as_str(), *p)).collect();
            admin.describe_logs(broker, Some(&pairs)).await
        }
    })
    .await;
    let mut found = HashMap::new();
    for (broker, logs) in answers {
        for log in logs.into_iter().filter(|l| l.error.is_ok()) {
            found.insert((broker, log.topic.clone(), log.partition), log);
        }
    }
    found
}

/// Asks each broker of `asks` its question at once, giving each two seconds; the
/// answers of those that gave one (a broker that is down or slow is left out).
pub(crate) async fn ask_brokers<Q, T, Fut>(
    asks: impl IntoIterator<Item = (u32, Q)>,
    ask: impl Fn(u32, Q) -> Fut,
) -> HashMap<u32, T>
where
    Fut: std::future::Future<Output = meridian_client::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut answers = tokio::task::JoinSet::new();
    for (broker, question) in asks {
        let asked = ask(broker, question);
        answers.spawn(async move {
            match tokio::time::timeout(Duration::from_secs(2), asked).await {
                Ok(Ok(answer)) => Some((broker, answer)),
                _ => None,
            }
        });
    }
    let mut found = HashMap::new();
    while let Some(answer) = answers.join_next().await {
        if let Ok(Some((broker, answer))) = answer {
            found.insert(broker, answer);
        }
    }
    found
}

/// A replica's copy against the leader's log: `(copy, leader)`, when both answered.
fn copy_of<'a>(
    m: &OngoingReassignment,
    replica: u32,
    logs: &'a HashMap<(u32, String, u32), LocalLog>,
) -> Option<(&'a LocalLog, &'a LocalLog)> {
    let log = |broker: u32| logs.get(&(broker, m.topic.clone(), m.partition));
    Some((log(replica)?, log(m.leader)?))
}

/// `partition list --json`: per replica being copied, what it holds of the leader's
/// log (`null` where either did not answer).
fn copying_json(
    m: &OngoingReassignment,
    logs: &HashMap<(u32, String, u32), LocalLog>,
) -> serde_json::Value {
    let copies = m.adding.iter().filter(|r| !m.isr.contains(r)).map(|r| {
        let copy = copy_of(m, *r, logs).map(|(copy, leader)| {
            serde_json::json!({
                "bytes": copy.size_bytes,
                "leader_bytes": leader.size_bytes,
                "log_end_offset": copy.log_end_offset,
                "leader_log_end_offset": leader.log_end_offset,
            })
        });
        (r.to_string(), copy.unwrap_or(serde_json::Value::Null))
    });
    serde_json::Value::Object(copies.collect())
}

/// `512 B`, `40.2 KiB`, `39.0 MiB`, `1.3 GiB`.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `45 s`, `12 min`, `2.5 h`.
fn duration(secs: f64) -> String {
    if secs < 90.0 {
        format!("{:.0} s", secs.max(1.0))
    } else if secs < 90.0 * 60.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}

/// `adding 4 (copying, 12.3 of 39.0 MiB), removing 1 -> 2,3,4`: what a reassignment
/// still waits for (`(copying)` alone where the brokers did not say how far), with
/// `, 2.0 MiB/s, about 13 s left` where `rates` has the replica's bytes per second.
fn progress(
    m: &OngoingReassignment,
    logs: &HashMap<(u32, String, u32), LocalLog>,
    rates: &HashMap<u32, f64>,
) -> String {
    let adding: Vec<String> = m
        .adding
        .iter()
        .map(|r| {
            if m.isr.contains(r) {
                format!("{r} (in sync)")
            } else if let Some((copy, leader)) = copy_of(m, *r, logs) {
                let (copied, of) = (size(copy.size_bytes), size(leader.size_bytes));
                // `12.3 of 39.0 MiB` where both have the same unit.
                let copied = match (copied.split_once(' '), of.split_once(' ')) {
                    (Some((n, unit)), Some((_, of_unit))) if unit == of_unit => n.to_string(),
                    _ => copied,
                };
                let pace = rates.get(r).map_or_else(String::new, |rate| {
                    let left = leader.size_bytes.saturating_sub(copy.size_bytes) as f64;
                    format!(
                        ", {}/s, about {} left",
                        size(*rate as u64),
                        duration(left / rate)
                    )
                });
                format!("{r} (copying, {copied} of {of}{pace})")
            } else {
                format!("{r} (copying)")
            }
        })
        .collect();
    let mut parts = Vec::new();
    if !adding.is_empty() {
        parts.push(format!("adding {}", adding.join(" ")));
    }
    if !m.removing.is_empty() {
        parts.push(format!("removing {}", list(&m.removing)));
    }
    format!("{} -> {}", parts.join(", "), list(&m.target))
}

fn list(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(broker_bytes: u64, end: i64) -> LocalLog {
        LocalLog {
            topic: "orders".into(),
            partition: 0,
            error: ErrorCode::None,
            replica: true,
            log_start_offset: 0,
            log_end_offset: end,
            size_bytes: broker_bytes,
        }
    }

    #[test]
    fn a_copy_in_progress_shows_how_much_it_holds_of_the_leaders_log() {
        let m = OngoingReassignment {
            topic: "orders".into(),
            partition: 0,
            replicas: vec![1, 2, 3, 4, 5],
            target: vec![4, 5, 2, 3],
            adding: vec![4, 5],
            removing: vec![1],
            isr: vec![1, 2, 3, 5],
            leader: 1,
        };
        let mut logs = HashMap::new();
        assert_eq!(
            progress(&m, &logs, &HashMap::new()),
            "adding 4 (copying) 5 (in sync), removing 1 -> 4,5,2,3"
        );
        logs.insert((1, "orders".into(), 0), log(40_522_687, 40_000));
        logs.insert((4, "orders".into(), 0), log(10_470_044, 10_335));
        assert_eq!(
            progress(&m, &logs, &HashMap::new()),
            "adding 4 (copying, 10.0 of 38.6 MiB) 5 (in sync), removing 1 -> 4,5,2,3"
        );
        let rates = HashMap::from([(4, 2.0 * 1024.0 * 1024.0)]);
        assert_eq!(
            progress(&m, &logs, &rates),
            "adding 4 (copying, 10.0 of 38.6 MiB, 2.0 MiB/s, about 14 s left) 5 (in sync), \
             removing 1 -> 4,5,2,3"
        );
        logs.insert((4, "orders".into(), 0), log(900_000, 880));
        assert!(progress(&m, &logs, &HashMap::new()).contains("(copying, 878.9 KiB of 38.6 MiB)"));
        assert_eq!(
            copying_json(&m, &logs),
            serde_json::json!({"4": {"bytes": 900_000, "leader_bytes": 40_522_687,
                "log_end_offset": 880, "leader_log_end_offset": 40_000}})
        );
        logs.remove(&(1, "orders".into(), 0));
        assert_eq!(copying_json(&m, &logs), serde_json::json!({"4": null}));
    }

    #[test]
    fn times_left_read_in_seconds_minutes_or_hours() {
        assert_eq!(duration(0.2), "1 s");
        assert_eq!(duration(89.0), "89 s");
        assert_eq!(duration(600.0), "10 min");
        assert_eq!(duration(9000.0), "2.5 h");
    }

    #[test]
    fn sizes_read_in_the_largest_unit_that_keeps_a_whole_number() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(5 << 30), "5.0 GiB");
        assert_eq!(size(3 << 40), "3.0 TiB");
        assert_eq!(size(4096 << 40), "4096.0 TiB");
    }
}
