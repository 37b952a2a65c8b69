//! Consumer groups through the real broker: members in separate processes, crashes,
//! cooperative and eager rebalances, static membership, committed offsets across
//! restarts, admin commands and limits.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_client::{
    Assignor, AutoOffsetReset, Client, ConsumerConfig, ErrorCode, GroupConfig, NewTopic,
    OffsetCommit, ProducerConfig, ProducerRecord, RebalanceListener,
};

use crate::harness::TestBroker;

/// Broker settings that let tests use short sessions.
const FAST_GROUPS: &[&str] = &[
    "group_min_session_timeout_ms=500",
    "group_heartbeat_interval_ms=300",
    "offsets_topic_num_partitions=4",
];

/// A broker with fast group settings, a client, and one topic.
async fn broker_with_topic(topic: &str, partitions: u32) -> (TestBroker, Client) {
    let broker = TestBroker::start(FAST_GROUPS);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new(topic, partitions))
        .await
        .unwrap();
    (broker, client)
}

fn group_config(group: &str, assignor: Assignor) -> GroupConfig {
    GroupConfig {
        assignor,
        session_timeout: Duration::from_millis(2_000),
        auto_commit_interval: Duration::from_millis(200),
        ..GroupConfig::new(group)
    }
}

async fn produce_n(client: &Client, topic: &str, partitions: u32, n: u32) {
    let producer = client.producer(ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..n {
        let record = ProducerRecord::new(topic, format!("v{i}")).partition(i % partitions);
        deliveries.push(producer.send(record).await.unwrap());
    }
    for d in deliveries {
        d.await.unwrap();
    }
}

/// `meridian consume TOPIC --group GROUP --from earliest EXTRA…`, its stdout piped.
fn spawn_cli_member(broker: &TestBroker, topic: &str, group: &str, extra: &[&str]) -> Child {
    broker
        .cli_command(&["consume", topic, "--group", group, "--from", "earliest"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn consumer")
}

/// A `meridian consume --group` process whose stdout lines are collected.
struct CliMember {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl CliMember {
    fn start(broker: &TestBroker, topic: &str, group: &str) -> CliMember {
        CliMember::spawn(
            broker,
            topic,
            group,
            &[
                "--session-timeout-ms",
                "1500",
                "--commit-interval-ms",
                "100",
                "--idle-exit-ms",
                "5000",
            ],
        )
    }

    /// A member printing `--format full` lines, with `extra` arguments.
    fn spawn(broker: &TestBroker, topic: &str, group: &str, extra: &[&str]) -> CliMember {
        let args: Vec<&str> = ["--format", "full"].iter().chain(extra).copied().collect();
        let mut child = spawn_cli_member(broker, topic, group, &args);
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        CliMember {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Waits (at most 30 s) until it has printed `n` records.
    async fn wait_count(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count() < n {
            assert!(Instant::now() < deadline, "printed {} of {n}", self.count());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself; its printed (partition, offset) pairs.
    fn finish(mut self, within: Duration) -> Vec<(u32, i64)> {
        let deadline = Instant::now() + within;
        loop {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "consumer did not exit in time");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.collect()
    }

    fn collect(&mut self) -> Vec<(u32, i64)> {
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|line| {
                let mut fields = line.split('\t');
                let partition = fields.next().unwrap().parse().unwrap();
                let offset = fields.next().unwrap().parse().unwrap();
                (partition, offset)
            })
            .collect()
    }
}

impl Drop for CliMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three members in three processes; one is killed with SIGKILL mid-stream. Every
/// record is printed at least once with no gap, and the only duplicates are the
/// killed member's uncommitted tail of each of its partitions, re-read by the member
/// that took the partition over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_members_loses_nothing() {
    let partitions = 6;
    let total = 30_000u32;
    let (broker, client) = broker_with_topic("events", partitions).await;
    let mut members: Vec<CliMember> = (0..3)
        .map(|_| CliMember::start(&broker, "events", "workers"))
        .collect();

    // Produce while they consume; kill member 0 once it has printed a share.
    let producer = tokio::spawn({
        let client = client.clone();
        async move {
            for _ in 0..50 {
                produce_n(&client, "events", partitions, total / 50).await;
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        }
    });
    members[0].wait_count(2_000).await;
    members[0].kill9();
    let killed = members[0].collect();
    producer.await.unwrap();

    let survivors: Vec<Vec<(u32, i64)>> = members
        .drain(1..)
        .map(|m| m.finish(Duration::from_secs(60)))
        .collect();
    let mut seen: BTreeMap<(u32, i64), usize> = BTreeMap::new();
    for out in survivors.iter().chain([&killed]) {
        for key in out {
            *seen.entry(*key).or_default() += 1;
        }
    }
    // No gap: every offset of every partition, as many as were produced.
    for p in 0..partitions {
        let offsets: Vec<i64> = seen
            .keys()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .collect();
        let expected: Vec<i64> = (0..i64::from(total / partitions)).collect();
        assert_eq!(offsets, expected, "partition {p} has gaps or extra offsets");
    }
    // Survivors never print the same record twice between them.
    let mut survivor_seen = BTreeSet::new();
    for out in &survivors {
        for key in out {
            assert!(
                survivor_seen.insert(*key),
                "{key:?} printed twice by survivors"
            );
        }
    }
    // Duplicates are a suffix of what the killed member printed per partition: the
    // window after its last commit.
    for p in 0..partitions {
        let killed_p: Vec<i64> = killed
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .collect();
        let dups: Vec<i64> = seen
            .iter()
            .filter(|((q, _), n)| *q == p && **n > 1)
            .map(|((_, o), _)| *o)
            .collect();
        if let Some(first) = dups.first() {
            let tail: Vec<i64> = killed_p.iter().copied().filter(|o| o >= first).collect();
            assert_eq!(
                dups, tail,
                "partition {p}: duplicates are not the killed member's uncommitted tail"
            );
        }
    }
    let n_dups: usize = seen.values().filter(|n| **n > 1).count();
    eprintln!(
        "killed member printed {}, duplicates after takeover: {n_dups}",
        killed.len()
    );
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Assigned(Vec<(String, u32)>),
    Revoked(Vec<(String, u32)>),
    Lost(Vec<(String, u32)>),
}

struct Recorder(Arc<Mutex<Vec<Event>>>);

impl RebalanceListener for Recorder {
    fn on_assigned(&mut self, partitions: &[(String, u32)]) {
        self.0
            .lock()
            .unwrap()
            .push(Event::Assigned(partitions.to_vec()));
    }
    fn on_revoked(&mut self, partitions: &[(String, u32)]) {
        self.0
            .lock()
            .unwrap()
            .push(Event::Revoked(partitions.to_vec()));
    }
    fn on_lost(&mut self, partitions: &[(String, u32)]) {
        self.0
            .lock()
            .unwrap()
            .push(Event::Lost(partitions.to_vec()));
    }
}

/// Waits until the broker reports `group` Stable, polling `consumers` meanwhile. A
/// member reports the partitions it took up at its next sync, after `poll` has
/// shown them to it: the group turns Stable a little after every member sees its
/// assignment, not at once.
async fn poll_until_stable(
    client: &Client,
    group: &str,
    consumers: &mut [meridian_client::Consumer],
) -> meridian_wire::group::GroupDescription {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let description = client.admin().describe_group(group).await.unwrap();
        if description.state == "Stable" {
            return description;
        }
        assert!(Instant::now() < deadline, "not Stable: {description:?}");
        for consumer in consumers.iter_mut() {
            consumer.poll(Duration::from_millis(20)).await.unwrap();
        }
    }
}

/// Polls `consumer` until `done` says so; returns how many records it read.
async fn poll_until(
    consumer: &mut meridian_client::Consumer,
    within: Duration,
    mut done: impl FnMut(&meridian_client::Consumer) -> bool,
) -> usize {
    let deadline = Instant::now() + within;
    let mut n = 0;
    while !done(consumer) {
        assert!(
            Instant::now() < deadline,
            "condition not reached; assignment {:?}",
            consumer.assignment()
        );
        n += consumer
            .poll(Duration::from_millis(50))
            .await
            .unwrap()
            .len();
    }
    n
}

/// A second member joins a group of one on six partitions. Cooperative-sticky moves
/// exactly three partitions and the first member keeps consuming the other three
/// throughout; the eager range assignor takes all six away first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_rebalance_keeps_unaffected_partitions_consuming() {
    let broker = TestBroker::start(FAST_GROUPS);
    let client = broker.client().await;
    for (topic, assignor) in [
        ("coop", Assignor::CooperativeSticky),
        ("eager", Assignor::Range),
    ] {
        client
            .admin()
            .create_topic(NewTopic::new(topic, 6))
            .await
            .unwrap();
        produce_n(&client, topic, 6, 600).await;
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut first = client.consumer(ConsumerConfig {
            auto_offset_reset: AutoOffsetReset::Earliest,
            max_partition_fetch_bytes: 256,
            ..ConsumerConfig::default()
        });
        first.set_rebalance_listener(Box::new(Recorder(events.clone())));
        first
            .subscribe(group_config(topic, assignor), &[topic])
            .await
            .unwrap();
        poll_until(&mut first, Duration::from_secs(10), |c| {
            c.assignment().len() == 6
        })
        .await;

        let mut second = client.consumer(ConsumerConfig {
            auto_offset_reset: AutoOffsetReset::Earliest,
            ..ConsumerConfig::default()
        });
        second
            .subscribe(group_config(topic, assignor), &[topic])
            .await
            .unwrap();
        // Keep producing so there is always something to read.
        let producing = tokio::spawn({
            let client = client.clone();
            async move {
                for _ in 0..20 {
                    produce_n(&client, topic, 6, 60).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        let second_task = tokio::spawn(async move {
            poll_until(&mut second, Duration::from_secs(15), |c| {
                c.assignment().len() == 3
            })
            .await;
            second
        });
        let mut smallest_assignment = 6;
        let deadline = Instant::now() + Duration::from_secs(15);
        while !(first.assignment().len() == 3 && second_task.is_finished()) {
            assert!(Instant::now() < deadline, "rebalance did not settle");
            first.poll(Duration::from_millis(50)).await.unwrap();
            smallest_assignment = smallest_assignment.min(first.assignment().len());
        }
        let second = second_task.await.unwrap();
        producing.await.unwrap();
        let kept: BTreeSet<(String, u32)> = first.assignment().into_iter().collect();
        let moved: BTreeSet<(String, u32)> = second.assignment().into_iter().collect();
        assert!(kept.is_disjoint(&moved));
        let events = events.lock().unwrap().clone();
        let revoked: Vec<(String, u32)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Revoked(p) => Some(p.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(
            !events.iter().any(|e| matches!(e, Event::Lost(_))),
            "{events:?}"
        );
        if assignor == Assignor::CooperativeSticky {
            assert_eq!(
                smallest_assignment, 3,
                "the first member never stopped its kept partitions"
            );
            let revoked: BTreeSet<(String, u32)> = revoked.into_iter().collect();
            assert_eq!(
                revoked, moved,
                "only the moved partitions were revoked: {events:?}"
            );
        } else {
            // Eager: all six were revoked before three came back.
            assert_eq!(revoked.len(), 6, "{events:?}");
        }
        first.close().await.unwrap();
        second.close().await.unwrap();
    }
}

/// Ten partitions, eleven members: every partition has one owner, one member idles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleventh_member_of_ten_partitions_is_idle() {
    let (_broker, client) = broker_with_topic("ten", 10).await;
    let mut consumers = Vec::new();
    for _ in 0..11 {
        let mut c = client.consumer(ConsumerConfig::default());
        c.subscribe(
            group_config("eleven", Assignor::CooperativeSticky),
            &["ten"],
        )
        .await
        .unwrap();
        consumers.push(c);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for c in &mut consumers {
            c.poll(Duration::from_millis(10)).await.unwrap();
        }
        let owned: Vec<usize> = consumers.iter().map(|c| c.assignment().len()).collect();
        let all: BTreeSet<(String, u32)> = consumers.iter().flat_map(|c| c.assignment()).collect();
        if all.len() == 10 && owned.iter().sum::<usize>() == 10 {
            assert_eq!(owned.iter().filter(|n| **n == 0).count(), 1, "{owned:?}");
            assert!(owned.iter().all(|n| *n <= 1), "{owned:?}");
            break;
        }
        assert!(Instant::now() < deadline, "not settled: {owned:?}");
    }
    let description = poll_until_stable(&client, "eleven", &mut consumers).await;
    assert_eq!(description.members.len(), 11);
}

/// A static member that restarts within its session gets its partitions back without
/// a rebalance: the group epoch does not move and the other member loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_member_restart_keeps_its_partitions() {
    let (_broker, client) = broker_with_topic("s", 4).await;
    let config = |instance: &str| GroupConfig {
        instance_id: Some(instance.into()),
        session_timeout: Duration::from_secs(10),
        ..group_config("static", Assignor::CooperativeSticky)
    };
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut a = client.consumer(ConsumerConfig::default());
    a.subscribe(config("a"), &["s"]).await.unwrap();
    let mut b = client.consumer(ConsumerConfig::default());
    b.set_rebalance_listener(Box::new(Recorder(events.clone())));
    b.subscribe(config("b"), &["s"]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(a.assignment().len() == 2 && b.assignment().len() == 2) {
        assert!(Instant::now() < deadline);
        a.poll(Duration::from_millis(20)).await.unwrap();
        b.poll(Duration::from_millis(20)).await.unwrap();
    }
    let a_partitions = a.assignment();
    let epoch = client.admin().describe_group("static").await.unwrap().epoch;
    a.close().await.unwrap(); // a static member does not leave
    let b_before = events.lock().unwrap().len();

    let mut a2 = client.consumer(ConsumerConfig::default());
    a2.subscribe(config("a"), &["s"]).await.unwrap();
    poll_until(&mut a2, Duration::from_secs(10), |c| {
        c.assignment().len() == 2
    })
    .await;
    b.poll(Duration::from_millis(200)).await.unwrap();
    assert_eq!(a2.assignment(), a_partitions);
    assert_eq!(
        client.admin().describe_group("static").await.unwrap().epoch,
        epoch
    );
    assert_eq!(events.lock().unwrap().len(), b_before, "b saw a rebalance");

    // Removing the static member by instance id hands its partitions to b at once.
    drop(a2);
    client
        .admin()
        .remove_static_member("static", "a")
        .await
        .unwrap();
    poll_until(&mut b, Duration::from_secs(10), |c| {
        c.assignment().len() == 4
    })
    .await;
}

/// Offsets committed by a CLI consumer survive a broker restart; the next member
/// resumes exactly after them. Admin commands: describe, reset (refused while
/// members are active, dry run), delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_restart_and_admin_commands_work() {
    let mut broker = TestBroker::start(FAST_GROUPS);
    {
        let client = broker.client().await;
        client
            .admin()
            .create_topic(NewTopic::new("orders", 2))
            .await
            .unwrap();
        produce_n(&client, "orders", 2, 100).await;
    }
    // A member that reads `expected` records (`-n`) and exits. The idle clock starts
    // before the member has joined and fetched, so where records are expected it is
    // only a backstop; where none are, it ends the run (a join slower than that
    // reads nothing either, so the check cannot fail wrongly).
    let consume = |broker: &TestBroker, expected: usize| {
        let n = expected.to_string();
        let mut args = vec![
            "consume", "orders", "--group", "billing", "--from", "earliest", "--format", "full",
        ];
        if expected > 0 {
            args.extend_from_slice(&["-n", &n, "--idle-exit-ms", "20000"]);
        } else {
            args.extend_from_slice(&["--idle-exit-ms", "1500"]);
        }
        let (ok, out, err) = broker.cli(&args, "");
        assert!(ok, "{err}");
        out.lines()
            .map(|l| {
                let mut f = l.split('\t');
                (
                    f.next().unwrap().parse::<u32>().unwrap(),
                    f.next().unwrap().parse::<i64>().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let reset = |broker: &TestBroker, to: &[&str]| {
        let mut args = vec![
            "group",
            "reset-offsets",
            "billing",
            "--topic",
            "orders",
            "--to",
        ];
        args.extend_from_slice(to);
        broker.cli(&args, "")
    };
    let first = consume(&broker, 30);
    assert_eq!(first.len(), 30);
    broker.stop();
    broker.restart();
    let described = broker.cli(&["group", "describe", "billing"], "").1;
    assert!(described.contains("COMMITTED"), "{described}");
    // The same for scripts: 30 of the 100 records committed, 70 of lag, no member.
    let (ok, json, err) = broker.cli(&["group", "describe", "billing", "--json"], "");
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["group"], "billing", "{json}");
    assert_eq!(json["members"], serde_json::json!([]), "{json}");
    let partitions = json["partitions"].as_array().unwrap();
    let sum = |field: &str| -> i64 { partitions.iter().map(|p| p[field].as_i64().unwrap()).sum() };
    assert_eq!(
        (sum("committed"), sum("log_end"), sum("lag")),
        (30, 100, 70),
        "{json}"
    );
    assert!(
        partitions
            .iter()
            .all(|p| p["owner"].is_null() && p["topic"] == "orders"),
        "{json}"
    );
    let rest = consume(&broker, 70);
    assert_eq!(rest.len(), 70, "resumed after the commit");
    let all: BTreeSet<(u32, i64)> = first.iter().chain(&rest).copied().collect();
    assert_eq!(all.len(), 100, "no record twice, none missed");

    // Reset to earliest: dry run changes nothing; the real one rewinds.
    let (ok, out, err) = reset(&broker, &["earliest", "--dry-run"]);
    assert!(ok && out.contains("dry run"), "{out}{err}");
    assert!(consume(&broker, 0).is_empty(), "dry run committed nothing");
    let (ok, _, err) = reset(&broker, &["earliest"]);
    assert!(ok, "{err}");
    assert_eq!(consume(&broker, 100).len(), 100);

    // Shift back by 10 in each partition: those 20 records again, no more; a shift
    // never leaves the log; a group without commits has nothing to shift.
    let shift = |group: &str, n: &str, extra: &[&str]| {
        let mut args = vec![
            "group",
            "reset-offsets",
            group,
            "--topic",
            "orders",
            "--shift-by",
            n,
        ];
        args.extend_from_slice(extra);
        broker.cli(&args, "")
    };
    let (ok, out, err) = shift("billing", "+1000", &["--dry-run"]);
    assert!(ok, "{err}");
    assert_eq!(out.matches(" 50\n").count(), 2, "clamped to the end: {out}");
    let (ok, out, err) = shift("billing", "-10", &[]);
    assert!(ok, "{err}");
    assert_eq!(out.matches(" 40\n").count(), 2, "{out}");
    let again = consume(&broker, 20);
    assert_eq!(again.len(), 20);
    assert!(again.iter().all(|(_, o)| (40..50).contains(o)), "{again:?}");
    assert!(consume(&broker, 0).is_empty(), "no more than the 20");
    let (ok, _, err) = shift("nobody", "-1", &[]);
    assert!(!ok && err.contains("no committed offset"), "{err}");

    // With a member active, reset and delete are refused.
    let client = broker.client().await;
    let mut member = client.consumer(ConsumerConfig::default());
    member
        .subscribe(group_config("billing", Assignor::Range), &["orders"])
        .await
        .unwrap();
    poll_until(&mut member, Duration::from_secs(10), |c| {
        c.assignment().len() == 2
    })
    .await;
    let (ok, _, err) = reset(&broker, &["latest"]);
    assert!(!ok && err.contains("NonEmptyGroup"), "{err}");
    let (ok, _, err) = broker.cli(&["group", "delete", "billing"], "");
    assert!(!ok && err.contains("NonEmptyGroup"), "{err}");
    poll_until_stable(&client, "billing", std::slice::from_mut(&mut member)).await;
    let listed = broker.cli(&["group", "list"], "").1;
    assert!(
        listed.contains("billing") && listed.contains("Stable"),
        "{listed}"
    );
    let listed = broker.cli(&["group", "list", "--json"], "").1;
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed,
        serde_json::json!([{"group": "billing", "state": "Stable"}])
    );
    member.close().await.unwrap();
    let (ok, _, err) = broker.cli(&["group", "delete", "billing"], "");
    assert!(ok, "{err}");
    assert!(!broker.cli(&["group", "list"], "").1.contains("billing"));
    let (ok, _, err) = broker.cli(&["group", "describe", "billing"], "");
    assert!(!ok && err.contains("GroupIdNotFound"), "{err}");
}

/// A member that stops polling leaves after max_poll_interval; its partitions move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_polling_loses_its_partitions() {
    let (_broker, client) = broker_with_topic("slow", 2).await;
    let config = GroupConfig {
        max_poll_interval: Duration::from_millis(1_500),
        ..group_config("slow", Assignor::CooperativeSticky)
    };
    let mut stuck = client.consumer(ConsumerConfig::default());
    stuck.subscribe(config.clone(), &["slow"]).await.unwrap();
    let mut live = client.consumer(ConsumerConfig::default());
    live.subscribe(config, &["slow"]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(stuck.assignment().len() == 1 && live.assignment().len() == 1) {
        assert!(Instant::now() < deadline);
        stuck.poll(Duration::from_millis(20)).await.unwrap();
        live.poll(Duration::from_millis(20)).await.unwrap();
    }
    // `stuck` stops polling; `live` takes over everything.
    let started = Instant::now();
    poll_until(&mut live, Duration::from_secs(10), |c| {
        c.assignment().len() == 2
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(1_000),
        "moved before the interval ran out"
    );
}

/// Every group limit, and auto_offset_reset=none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_limits_are_enforced() {
    let broker = TestBroker::start(&[
        "group_min_session_timeout_ms=1000",
        "group_max_session_timeout_ms=5000",
        "group_max_size=2",
        "offset_metadata_max_bytes=8",
        "offsets_topic_num_partitions=2",
    ]);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("l", 1))
        .await
        .unwrap();
    produce_n(&client, "l", 1, 5).await;
    async fn first_error(
        client: &Client,
        config: GroupConfig,
        reset: AutoOffsetReset,
    ) -> meridian_client::Error {
        let mut c = client.consumer(ConsumerConfig {
            auto_offset_reset: reset,
            ..ConsumerConfig::default()
        });
        c.subscribe(config, &["l"]).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.poll(Duration::from_millis(50)).await {
                Err(e) => return e,
                Ok(_) => assert!(Instant::now() < deadline, "no error"),
            }
        }
    }
    for session in [Duration::from_millis(999), Duration::from_millis(5001)] {
        let config = GroupConfig {
            session_timeout: session,
            ..GroupConfig::new("limits")
        };
        let e = first_error(&client, config, AutoOffsetReset::Latest).await;
        assert_eq!(e.code(), Some(ErrorCode::InvalidSessionTimeout), "{e}");
    }
    let config = GroupConfig {
        session_timeout: Duration::from_secs(2),
        ..GroupConfig::new("limits")
    };
    // No committed offset and auto_offset_reset=none: a clear error.
    let none = GroupConfig {
        group_id: "limits-none".into(),
        ..config.clone()
    };
    let e = first_error(&client, none, AutoOffsetReset::None).await;
    assert!(e.to_string().contains("no committed offset"), "{e}");

    // group_max_size=2: the third member is refused. Members join in the background,
    // so each is in the group before the next starts.
    let mut members = Vec::new();
    for _ in 0..2 {
        let mut c = client.consumer(ConsumerConfig::default());
        c.subscribe(config.clone(), &["l"]).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.member_id().is_none() {
            assert!(
                Instant::now() < deadline,
                "member {} never joined",
                members.len() + 1
            );
            c.poll(Duration::from_millis(50)).await.unwrap();
        }
        members.push(c);
    }
    let e = first_error(&client, config.clone(), AutoOffsetReset::Latest).await;
    assert_eq!(e.code(), Some(ErrorCode::GroupMaxSizeReached), "{e}");

    // A member's commit carries its metadata string.
    members[0]
        .commit_offsets(&[OffsetCommit::new("l", 0, 3).metadata("batch-7")])
        .await
        .unwrap();
    let committed = client
        .admin()
        .committed_offsets("limits", Some("l"))
        .await
        .unwrap();
    assert_eq!(
        (committed[0].offset, committed[0].metadata.as_str()),
        (3, "batch-7")
    );

    // offset_metadata_max_bytes=8.
    use meridian_wire::messages::*;
    let long = OffsetCommitRequest {
        group_id: "other".into(),
        member_id: String::new(),
        member_epoch: -1,
        topics: vec![TopicOffsets {
            topic: "l".into(),
            partitions: vec![PartitionOffset {
                partition: 0,
                offset: 1,
                leader_epoch: -1,
                metadata: "123456789".into(),
                commit_timestamp_ms: -1,
            }],
        }],
    };
    let Response::OffsetCommit(r) = client
        .request(Request::OffsetCommit(long.clone()))
        .await
        .unwrap()
    else {
        panic!("wrong response");
    };
    assert_eq!(r.error, ErrorCode::OffsetMetadataTooLarge, "{}", r.message);
    // A leader epoch below -1 (none) is not an epoch.
    let mut bad_epoch = long.clone();
    bad_epoch.topics[0].partitions[0].metadata = String::new();
    bad_epoch.topics[0].partitions[0].leader_epoch = -5;
    let Response::OffsetCommit(r) = client
        .request(Request::OffsetCommit(bad_epoch))
        .await
        .unwrap()
    else {
        panic!("wrong response");
    };
    assert_eq!(r.error, ErrorCode::InvalidCommitOffset, "{}", r.message);
    // A negative offset clears the partition's commit, as Kafka clients read one
    // (KafkaJS's resetOffsets commits -2).
    let commit = |offset: i64| {
        let mut request = long.clone();
        request.topics[0].partitions[0].metadata = String::new();
        request.topics[0].partitions[0].offset = offset;
        Request::OffsetCommit(request)
    };
    for (offset, expected) in [(5, Some(5)), (-2, None)] {
        let Response::OffsetCommit(r) = client.request(commit(offset)).await.unwrap() else {
            panic!("wrong response");
        };
        assert_eq!(r.error, ErrorCode::None, "{}", r.message);
        let committed = client
            .admin()
            .committed_offsets("other", Some("l"))
            .await
            .unwrap();
        let found = committed
            .iter()
            .find(|c| c.partition == 0)
            .map(|c| c.offset);
        assert_eq!(found, expected, "after committing {offset}");
    }
    // An unknown topic in a commit is refused as a whole.
    let bad = OffsetCommitRequest {
        group_id: "other".into(),
        member_id: String::new(),
        member_epoch: -1,
        topics: vec![TopicOffsets {
            topic: "missing".into(),
            partitions: vec![PartitionOffset {
                partition: 0,
                offset: 1,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp_ms: -1,
            }],
        }],
    };
    let Response::OffsetCommit(r) = client.request(Request::OffsetCommit(bad)).await.unwrap()
    else {
        panic!("wrong response");
    };
    assert_eq!(r.error, ErrorCode::UnknownTopic, "{}", r.message);
    // Clients cannot write to the offsets topic.
    let produce = crate::harness::produce("__consumer_offsets", 0, 1, crate::harness::batch(10));
    let Response::Produce(r) = client.request(produce).await.unwrap() else {
        panic!("wrong response");
    };
    assert_eq!(r.topics[0].partitions[0].error, ErrorCode::PolicyViolation);
}

/// A client from before leader epochs in commits speaks version 0 of OffsetCommit
/// and OffsetFetch: the broker reads its commits (no epoch) and answers its fetches
/// at version 0, and today's SDK, at version 1, sees those commits without an epoch.
#[tokio::test]
async fn clients_from_before_epochs_in_commits_are_served_at_version_0() {
    use meridian_wire::frame::{decode_response_at, encode_request_chunks_at, ResponseFrame};
    use meridian_wire::messages::*;
    let broker = TestBroker::start(FAST_GROUPS);
    let client = broker.client().await;
    client
        .admin()
        .create_topic(NewTopic::new("v0", 1))
        .await
        .unwrap();
    let connection = broker.raw_connection().await;
    let exchange = |request: Request| {
        let connection = connection.clone();
        async move {
            let api = request.api_key();
            let frame = encode_request_chunks_at(&request, 0).concat();
            let body = crate::harness::raw_request(&connection, &frame)
                .await
                .expect("an answer");
            match decode_response_at(api, 0, body).expect("a version 0 answer") {
                ResponseFrame::Ok(response) => response,
                ResponseFrame::Error { code, message } => panic!("{code:?}: {message}"),
            }
        }
    };
    let commit = OffsetCommitRequest {
        group_id: "old".into(),
        member_id: String::new(),
        member_epoch: -1,
        topics: vec![TopicOffsets {
            topic: "v0".into(),
            partitions: vec![PartitionOffset {
                partition: 0,
                offset: 5,
                // Not in a version 0 body.
                leader_epoch: 9,
                metadata: "m".into(),
                commit_timestamp_ms: -1,
            }],
        }],
    };
    let Response::OffsetCommit(r) = exchange(Request::OffsetCommit(commit)).await else {
        panic!("not an OffsetCommit answer");
    };
    assert_eq!(r.error, ErrorCode::None, "{}", r.message);
    let fetch = OffsetFetchRequest {
        group_id: "old".into(),
        topics: None,
    };
    let Response::OffsetFetch(r) = exchange(Request::OffsetFetch(fetch)).await else {
        panic!("not an OffsetFetch answer");
    };
    let p = &r.topics[0].partitions[0];
    assert_eq!(
        (p.offset, p.leader_epoch, p.metadata.as_str()),
        (5, NO_LEADER_EPOCH, "m")
    );
    let committed = client
        .admin()
        .committed_offsets("old", Some("v0"))
        .await
        .unwrap();
    assert_eq!((committed[0].offset, committed[0].leader_epoch), (5, None));
}

/// `group delete-offsets` (Kafka's OffsetDelete) deletes a group's commits of a
/// topic it no longer reads, some partitions or all (of a topic deleted, none are
/// left);
/// it is refused while a member subscribes to the topic and for an unknown group;
/// the deletion survives a restart, and the other topic's commits stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_of_a_topic_no_longer_read_can_be_deleted() {
    let (mut broker, client) = broker_with_topic("events", 2).await;
    client
        .admin()
        .create_topic(NewTopic::new("old", 3))
        .await
        .unwrap();
    let commits: Vec<OffsetCommit> = ["events", "old"]
        .iter()
        .flat_map(|t| (0..2).map(move |p| OffsetCommit::new(*t, p, 5)))
        .collect();
    client
        .admin()
        .set_committed_offsets("g", &commits)
        .await
        .unwrap();
    let committed = |client: Client, topic: &'static str| async move {
        client
            .admin()
            .committed_offsets("g", None)
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.topic == topic)
            .map(|c| c.partition)
            .collect::<Vec<_>>()
    };
    let mut member = client.consumer(ConsumerConfig::default());
    member
        .subscribe(group_config("g", Assignor::Range), &["events"])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while member.assignment().is_empty() {
        assert!(Instant::now() < deadline, "never assigned");
        member.poll(Duration::from_millis(100)).await.unwrap();
    }

    let (ok, _, err) = broker.cli(&["group", "delete-offsets", "g", "--topic", "events"], "");
    assert!(!ok);
    assert!(err.contains("GroupSubscribedToTopic"), "{err}");
    assert_eq!(committed(client.clone(), "events").await, vec![0, 1]);

    let (ok, out, err) = broker.cli(
        &[
            "group",
            "delete-offsets",
            "g",
            "--topic",
            "old",
            "-p",
            "1",
            "-p",
            "2",
        ],
        "",
    );
    assert!(ok, "{err}");
    assert!(out.contains("partition(s) 1\n"), "{out}");
    assert_eq!(committed(client.clone(), "old").await, vec![0]);

    // Deleting the topic deletes its commits (see
    // `deleting_a_topic_deletes_its_committed_offsets`).
    client.admin().delete_topic("old").await.unwrap();
    let (ok, described, err) = broker.cli(&["group", "describe", "g"], "");
    assert!(ok, "{err}");
    assert!(!described.contains("old"), "{described}");
    assert_eq!(committed(client.clone(), "old").await, Vec::<u32>::new());
    let (ok, out, err) = broker.cli(&["group", "delete-offsets", "g", "--topic", "old"], "");
    assert!(ok, "{err}");
    assert!(out.contains("no committed offsets of old"), "{out}");
    let err = client
        .admin()
        .delete_committed_offsets("nobody", "old", None)
        .await
        .expect_err("no such group");
    assert_eq!(err.code(), Some(ErrorCode::GroupIdNotFound), "{err}");

    member.close().await.unwrap();
    broker.kill9();
    broker.restart();
    let client = broker.client().await;
    assert_eq!(committed(client.clone(), "old").await, Vec::<u32>::new());
    assert_eq!(committed(client.clone(), "events").await, vec![0, 1]);
}

/// SIGTERM (what `kill`, `timeout` and service managers send) stops a CLI member as
/// Ctrl-C does: it commits what it printed and leaves the group at once. Its
/// session and commit interval are long, so neither would happen by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_member_stopped_with_sigterm_commits_and_leaves() {
    let (broker, client) = broker_with_topic("events", 1).await;
    produce_n(&client, "events", 1, 10).await;
    let mut child = spawn_cli_member(
        &broker,
        "events",
        "term",
        &[
            "--session-timeout-ms",
            "60000",
            "--commit-interval-ms",
            "600000",
        ],
    );
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for i in 0..10 {
        assert_eq!(lines.next().unwrap().unwrap(), format!("v{i}"));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the member keeps running"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = crate::harness::wait_for_exit(&mut child, Duration::from_secs(10))
        .expect("SIGTERM did not stop the member");
    assert!(status.success(), "{status}");
    let description = client.admin().describe_group("term").await.unwrap();
    assert!(
        description.members.is_empty(),
        "the member left: {description:?}"
    );
    let committed = client
        .admin()
        .committed_offsets("term", Some("events"))
        .await
        .unwrap();
    assert_eq!(committed[0].offset, 10, "{committed:?}");
}

/// A member carries on across its coordinator's restart (kill -9): the coordinator
/// loads the group's membership from the offsets topic, so the member keeps its id
/// and its partitions, nothing is lost or assigned again, and nothing is read twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_carries_on_across_its_coordinators_restart() {
    let (mut broker, client) = broker_with_topic("events", 2).await;
    produce_n(&client, "events", 2, 100).await;
    let mut consumer = client.consumer(ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    let events = Arc::new(Mutex::new(Vec::new()));
    consumer.set_rebalance_listener(Box::new(Recorder(events.clone())));
    let config = GroupConfig {
        // No auto-commit happens before the restart: a member that rejoined would
        // start again from the beginning.
        auto_commit_interval: Duration::from_secs(600),
        // Room for the broker to restart and the client to reconnect on a loaded
        // machine: the session starts again when the coordinator loads the group.
        session_timeout: Duration::from_secs(6),
        ..group_config("restarts", Assignor::CooperativeSticky)
    };
    consumer.subscribe(config, &["events"]).await.unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 100 {
        assert!(Instant::now() < deadline, "read {} of 100", seen.len());
        for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            seen.push((r.partition, r.offset));
        }
    }
    let member_before = consumer.member_id().expect("a member");
    let events_before = events.lock().unwrap().len();
    let epoch_before = client
        .admin()
        .describe_group("restarts")
        .await
        .unwrap()
        .epoch;
    broker.kill9();
    broker.restart();
    produce_n(&client, "events", 2, 10).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 110 {
        assert!(Instant::now() < deadline, "read {} of 110", seen.len());
        for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            seen.push((r.partition, r.offset));
        }
    }
    // Heartbeats go on across the restart, and the member stays.
    for _ in 0..10 {
        for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            seen.push((r.partition, r.offset));
        }
    }
    assert_eq!(consumer.member_id(), Some(member_before.clone()));
    {
        let events = events.lock().unwrap();
        assert_eq!(
            events.len(),
            events_before,
            "no rebalance after the restart: {:?}",
            &events[events_before..]
        );
    }
    let description = client.admin().describe_group("restarts").await.unwrap();
    assert_eq!(description.epoch, epoch_before, "{description:?}");
    assert_eq!(description.members.len(), 1, "{description:?}");
    assert_eq!(description.members[0].member_id, member_before);
    let owned: usize = description.members[0]
        .owned
        .iter()
        .map(|t| t.partitions.len())
        .sum();
    assert_eq!(owned, 2, "{description:?}");
    let unique: BTreeSet<_> = seen.iter().copied().collect();
    assert_eq!(
        (seen.len(), unique.len()),
        (110, 110),
        "records read twice after the restart"
    );
}

/// A member the coordinator removed while it was stopped (SIGSTOP past its session)
/// finds out when it resumes, and does not read again what it read since its last
/// commit: before joining again it commits its positions as a commit from outside
/// the group, which the coordinator takes because the group has no member then.
/// (This is also what a member does whose coordinator lost the group's membership,
/// say a broker from before membership was kept.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_while_stopped_does_not_reread_when_it_resumes() {
    let (broker, client) = broker_with_topic("events", 2).await;
    produce_n(&client, "events", 2, 100).await;
    let mut member = CliMember::spawn(
        &broker,
        "events",
        "paused",
        &[
            "--session-timeout-ms",
            "1000",
            "--commit-interval-ms",
            "600000",
        ],
    );
    member.wait_count(100).await;
    let pid = rustix::process::Pid::from_child(&member.child);
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let description = client.admin().describe_group("paused").await.unwrap();
        if description.members.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never removed: {description:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce_n(&client, "events", 2, 10).await;
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    member.wait_count(110).await;
    // Nothing more comes: the first 100 are not read again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    member.kill9();
    let seen = member.collect();
    let unique: BTreeSet<_> = seen.iter().copied().collect();
    assert_eq!(
        (seen.len(), unique.len()),
        (110, 110),
        "records read twice after the member resumed"
    );
}

/// A topic deleted takes its groups' committed offsets with it (as in Kafka), for
/// good: a group reading the topic created again under the name, after a kill -9
/// and restart too, starts where its reset policy says, not at the old topic's offsets; its
/// commits of other topics stay.
#[test]
fn deleting_a_topic_deletes_its_committed_offsets() {
    let mut broker = TestBroker::start(FAST_GROUPS);
    let cli = |broker: &TestBroker, args: &[&str], input: &str| {
        let (ok, out, err) = broker.cli(args, input);
        assert!(ok, "{args:?}: {err}");
        out
    };
    let old: String = (0..10).map(|i| format!("old{i}\n")).collect();
    for topic in ["events", "other"] {
        cli(&broker, &["topic", "create", topic, "-p", "1"], "");
        cli(&broker, &["produce", topic], &old);
    }
    let consume = |broker: &TestBroker, topic: &str, n: &str| {
        cli(
            broker,
            &[
                "consume", topic, "--group", "g", "--from", "earliest", "-n", n,
            ],
            "",
        )
    };
    consume(&broker, "events", "10");
    consume(&broker, "other", "4");
    let described = cli(&broker, &["group", "describe", "g"], "");
    assert!(described.contains("events"), "{described}");
    cli(&broker, &["topic", "delete", "events"], "");
    let described = cli(&broker, &["group", "describe", "g"], "");
    assert!(
        !described.contains("events") && described.contains("other"),
        "{described}"
    );

    broker.kill9();
    broker.restart();
    cli(&broker, &["topic", "create", "events", "-p", "1"], "");
    let new: String = (0..20).map(|i| format!("new{i}\n")).collect();
    cli(&broker, &["produce", "events"], &new);
    assert_eq!(consume(&broker, "events", "3"), "new0\nnew1\nnew2\n");
    assert_eq!(consume(&broker, "other", "1"), "old4\n");
}
