//! Three real brokers (`meridian broker` processes) forming a cluster on 127.0.0.1:
//! the Raft metadata quorum, the controller, fencing and leader election, checked
//! through what every broker answers to `Metadata`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use meridian_client::{
    Acks, AutoOffsetReset, BrokerState, Client, Consumer, ConsumerConfig, ConsumerRecord,
    GroupConfig, NewTopic, Offset, ProducerConfig, ProducerRecord, QuorumRole, TopicConfigChanges,
};
use meridian_wire::messages::{
    CreateTopic, CreateTopicsRequest, MetadataRequest, MetadataResponse, Request, Response,
    NO_BROKER,
};
use meridian_wire::ErrorCode;

use crate::harness::free_ports;
use crate::harness::TestBroker;

struct TestCluster {
    /// `brokers[i]` has broker id `i + 1`.
    brokers: Vec<TestBroker>,
    /// `cluster.voters`, as written in every config.
    voters: String,
    /// Appended to every config; `{kafka_listen}` in it becomes a free address for
    /// each broker (kept in `kafka`).
    extra: String,
    /// `kafka[i]`: broker `i + 1`'s Kafka listener, when `extra` has one.
    kafka: Vec<String>,
    /// Appended to every config's `[cluster]` table.
    cluster_extra: String,
    temp: tempfile::TempDir,
}

/// With `KEEP_FAILED_CLUSTERS` set, a test that fails leaves its cluster's
/// directory (each broker's data and config) for a look, and says where.
impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("KEEP_FAILED_CLUSTERS").is_some() {
            self.temp.disable_cleanup(true);
            eprintln!(
                "the cluster's directory is kept: {}",
                self.temp.path().display()
            );
        }
    }
}

impl TestCluster {
    /// Three brokers sharing one TLS identity; `extra` is appended to each config.
    fn start(extra: &str) -> TestCluster {
        TestCluster::start_with(extra, "")
    }

    /// As [`TestCluster::start`], with `cluster_extra` in each `[cluster]` table.
    fn start_with(extra: &str, cluster_extra: &str) -> TestCluster {
        TestCluster::start_partly(extra, cluster_extra, 3).0
    }

    /// As [`TestCluster::start_with`], only the first `up` of the three voters
    /// started; the others' ports are returned, for [`TestCluster::add_broker`].
    fn start_partly(extra: &str, cluster_extra: &str, up: usize) -> (TestCluster, Vec<u16>) {
        let temp = tempfile::tempdir().unwrap();
        let ports = free_ports(3);
        let voters: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("\"{}@127.0.0.1:{port}\"", i + 1))
            .collect();
        let mut cluster = TestCluster {
            brokers: Vec::new(),
            voters: voters.join(", "),
            extra: extra.to_string(),
            kafka: Vec::new(),
            cluster_extra: cluster_extra.to_string(),
            temp,
        };
        for port in &ports[..up] {
            // One at a time: the first generates the shared certificate.
            cluster.add_broker(*port);
        }
        (cluster, ports[up..].to_vec())
    }

    /// Starts the next broker (id = number of brokers + 1) listening on `port`, with
    /// the same voters: the first three are the voters, later ones join the running
    /// cluster as brokers that do not vote.
    fn add_broker(&mut self, port: u16) -> u32 {
        let id = self.brokers.len() + 1;
        let cert = self.temp.path().join("cert.pem");
        let key = self.temp.path().join("key.pem");
        let file = self.temp.path().join(format!("broker-{id}.toml"));
        let mut extra = self.extra.clone();
        if extra.contains("{kafka_listen}") {
            // The previous broker holds its port by now: a new one is free.
            let kafka = format!("127.0.0.1:{}", free_ports(1)[0]);
            extra = extra.replace("{kafka_listen}", &kafka);
            self.kafka.push(kafka);
        }
        std::fs::write(
            &file,
            format!(
                // Metrics on the TCP port of the same number as the QUIC (UDP) one.
                "broker_id = {id}\ntls_cert = {cert:?}\ntls_key = {key:?}\nmetrics_listen = \"127.0.0.1:{port}\"\n{extra}\n[cluster]\nvoters = [{}]\n{}",
                self.voters, self.cluster_extra
            ),
        )
        .unwrap();
        let data_dir: PathBuf = self.temp.path().join(format!("data-{id}"));
        self.brokers.push(TestBroker::start_configured(
            &data_dir,
            &file,
            &format!("127.0.0.1:{port}"),
            &[],
        ));
        id as u32
    }

    fn broker(&mut self, id: u32) -> &mut TestBroker {
        &mut self.brokers[id as usize - 1]
    }

    fn brokers_ref(&self, id: u32) -> &TestBroker {
        &self.brokers[id as usize - 1]
    }

    fn running(&self) -> Vec<u32> {
        (1..=self.brokers.len() as u32)
            .filter(|id| self.brokers[*id as usize - 1].is_running())
            .collect()
    }

    /// A client of broker `id`. Its request timeout (the SDK's default) leaves room
    /// for a forwarded admin call, which may wait seconds for a controller, and for a
    /// loaded machine: calls that must succeed are not cut short. Probes that expect
    /// no answer use their own short timeouts (see `metadata_everywhere`).
    async fn client(&self, id: u32) -> Client {
        self.brokers[id as usize - 1]
            .client_with(|c| c.request_timeout = Duration::from_secs(30))
            .await
    }

    /// The topics broker `id` lists (not the internal ones).
    async fn topics_at(&self, id: u32) -> Vec<String> {
        self.client(id).await.admin().list_topics().await.unwrap()
    }

    /// Once the three brokers agree on a controller: a client of a broker that is not
    /// the controller (it forwards what only the controller does).
    async fn forwarding_client(&self) -> Client {
        let controller = self.agreed_controller(3, Duration::from_secs(20)).await;
        self.client(if controller == 1 { 2 } else { 1 }).await
    }

    /// Metadata from every running broker (`None` where a request failed).
    async fn metadata_everywhere(&self) -> BTreeMap<u32, Option<MetadataResponse>> {
        let mut out = BTreeMap::new();
        for id in self.running() {
            let answer = async {
                let mut config = meridian_client::ClientConfig::new(
                    self.brokers[id as usize - 1].addr.clone(),
                    meridian_client::Trust::parse_fingerprint(
                        &self.brokers[id as usize - 1].fingerprint,
                    )
                    .unwrap(),
                );
                config.request_timeout = Duration::from_secs(2);
                let client = Client::connect(config).await.ok()?;
                let response = client
                    .request(Request::Metadata(MetadataRequest { topics: None }))
                    .await
                    .ok();
                client.close();
                match response? {
                    Response::Metadata(m) => Some(m),
                    _ => None,
                }
            };
            out.insert(id, answer.await);
        }
        out
    }

    /// Waits until every running broker agrees on a controller and lists `n_live`
    /// brokers; returns the controller.
    async fn agreed_controller(&self, n_live: usize, timeout: Duration) -> u32 {
        wait_for("a controller every broker agrees on", timeout, || async {
            let all = self.metadata_everywhere().await;
            let mut controllers = all
                .values()
                .map(|m| m.as_ref().map(|m| (m.controller_id, m.brokers.len())));
            let first = controllers.next()??;
            let agreed = controllers.all(|c| c == Some(first));
            (agreed && first.0 != NO_BROKER && first.1 == n_live).then_some(first.0)
        })
        .await
    }

    /// Once every running broker sees `__consumer_offsets` with a leader for each
    /// partition: its partitions.
    async fn agreed_offsets_topic(&self) -> Vec<PartitionView> {
        self.agreed_topic("__consumer_offsets", Duration::from_secs(30), |v| {
            v.iter().all(|p| p.leader != NO_BROKER)
        })
        .await
    }

    /// Waits until every running broker reports the same state for `topic` and
    /// `accept` likes it; returns that state.
    async fn agreed_topic(
        &self,
        topic: &str,
        timeout: Duration,
        accept: impl Fn(&[PartitionView]) -> bool,
    ) -> Vec<PartitionView> {
        wait_for(
            &format!("agreement on topic `{topic}`"),
            timeout,
            || async {
                let all = self.metadata_everywhere().await;
                let mut views = Vec::new();
                for m in all.values() {
                    let m = m.as_ref()?;
                    let t = m.topics.iter().find(|t| t.name == topic)?;
                    views.push(
                        t.partitions
                            .iter()
                            .map(|p| PartitionView {
                                leader: p.leader,
                                leader_epoch: p.leader_epoch,
                                replicas: p.replicas.clone(),
                                isr: p.isr.clone(),
                                error: p.error,
                            })
                            .collect::<Vec<_>>(),
                    );
                }
                let first = views.first()?.clone();
                (views.iter().all(|v| *v == first) && accept(&first)).then_some(first)
            },
        )
        .await
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PartitionView {
    leader: u32,
    leader_epoch: i32,
    replicas: Vec<u32>,
    isr: Vec<u32>,
    error: ErrorCode,
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rf3(name: &str, partitions: u32) -> NewTopic {
    let mut topic = NewTopic::new(name, partitions);
    topic.replication_factor = 3;
    topic
}

#[tokio::test]
async fn quorum_elects_a_controller_and_replaces_it_when_killed() {
    let mut cluster = TestCluster::start("");
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    // Created through a broker that is not the controller: it forwards.
    let via = if controller == 1 { 2 } else { 1 };
    cluster
        .client(via)
        .await
        .admin()
        .create_topic(rf3("orders", 3))
        .await
        .unwrap();
    let views = cluster
        .agreed_topic("orders", Duration::from_secs(10), |_| true)
        .await;
    let mut leaders: Vec<u32> = views.iter().map(|p| p.leader).collect();
    for p in &views {
        assert_eq!(p.replicas.len(), 3, "{p:?}");
        assert_eq!(p.isr, vec![1, 2, 3], "{p:?}");
        assert_eq!(p.leader_epoch, 0);
        assert_eq!(p.leader, p.replicas[0]);
    }
    leaders.sort_unstable();
    assert_eq!(leaders, vec![1, 2, 3], "leaders spread over the brokers");

    // Asked of a broker that is not the controller, `describe_cluster` also asks the
    // controller, which knows how far each broker has copied the metadata log.
    let admin = cluster.client(via).await.admin();
    let described = admin.describe_cluster().await.unwrap();
    assert_eq!(
        (described.broker_id, described.controller_id),
        (controller, controller)
    );
    let quorum = described.quorum.clone().expect("a cluster has a quorum");
    assert!(quorum.from_controller && quorum.term >= 1, "{quorum:?}");
    let ids: Vec<u32> = described.brokers.iter().map(|b| b.broker_id).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    for b in &described.brokers {
        assert_eq!(
            (b.state, b.role),
            (BrokerState::Running, QuorumRole::Voter),
            "{b:?}"
        );
        assert!(b.leaders >= 1 && b.replicas >= 3, "{b:?}");
        assert!(
            (0..=quorum.last_log_index).contains(&b.matched_index),
            "{b:?} against {quorum:?}"
        );
    }
    let (ok, text, err) = cluster.brokers_ref(via).cli(&["cluster", "describe"], "");
    assert!(ok, "{err}");
    assert!(
        text.contains(&format!("controller:   broker {controller}, Raft term")),
        "{text}"
    );
    assert_eq!(text.matches(" running ").count(), 3, "{text}");

    // SIGKILL the controller: the survivors elect a new one and keep serving.
    cluster.broker(controller).kill9();
    let next = cluster.agreed_controller(2, Duration::from_secs(15)).await;
    assert_ne!(next, controller);
    // The new controller fences the dead broker once its session runs out; both
    // survivors describe it so, and the CLI says so in capitals.
    let survivor = cluster.client(next).await.admin();
    wait_for(
        "the killed broker described as fenced",
        Duration::from_secs(15),
        || async {
            let described = survivor.describe_cluster().await.ok()?;
            let dead = described
                .brokers
                .iter()
                .find(|b| b.broker_id == controller)?;
            (described.controller_id == next && dead.state == BrokerState::Fenced).then_some(())
        },
    )
    .await;
    let other = if next == via {
        6 - controller - next
    } else {
        via
    };
    let (ok, text, err) = cluster.brokers_ref(other).cli(&["cluster", "describe"], "");
    assert!(ok, "{err}");
    let dead_row = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{controller} ")))
        .unwrap_or_else(|| panic!("no row of broker {controller}: {text}"));
    assert!(dead_row.contains("FENCED"), "{text}");
    let (ok, json_text, err) = cluster
        .brokers_ref(other)
        .cli(&["cluster", "describe", "--json"], "");
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    let states: Vec<(u64, &str)> = json["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["id"].as_u64().unwrap(), b["state"].as_str().unwrap()))
        .collect();
    let want: Vec<(u64, &str)> = (1..=3)
        .map(|id| {
            (
                id,
                if id == controller as u64 {
                    "fenced"
                } else {
                    "running"
                },
            )
        })
        .collect();
    assert_eq!(states, want, "{json}");
    assert_eq!(json["controller_id"], next, "{json}");
    assert!(
        text.contains(&format!("controller:   broker {next},")),
        "{text}"
    );
    // The partition the dead broker led moved to another in-sync replica.
    let views = cluster
        .agreed_topic("orders", Duration::from_secs(10), |views| {
            views.iter().all(|p| p.leader != controller)
        })
        .await;
    for p in &views {
        assert!(!p.isr.contains(&controller), "{p:?}");
    }
    // The new controller takes admin requests.
    cluster
        .client(next)
        .await
        .admin()
        .create_topic(rf3("after", 1))
        .await
        .expect_err("RF 3 with two live brokers is refused");
    let mut rf2 = NewTopic::new("after", 2);
    rf2.replication_factor = 2;
    cluster
        .client(next)
        .await
        .admin()
        .create_topic(rf2)
        .await
        .unwrap();
    cluster
        .agreed_topic("after", Duration::from_secs(10), |_| true)
        .await;

    // The killed broker comes back, is unfenced and listed again.
    cluster.broker(controller).restart();
    cluster.agreed_controller(3, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn a_partition_leader_killed_is_replaced_within_the_session_timeout() {
    let mut cluster = TestCluster::start("");
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    cluster
        .client(controller)
        .await
        .admin()
        .create_topic(rf3("payments", 3))
        .await
        .unwrap();
    let before = cluster
        .agreed_topic("payments", Duration::from_secs(10), |_| true)
        .await;
    // A partition led by a broker other than the controller (the controller's own
    // failover is the other test).
    let (index, victim) = before
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p.leader))
        .find(|(_, leader)| *leader != controller)
        .expect("leaders are spread");
    let killed_at = Instant::now();
    cluster.broker(victim).kill9();
    let after = cluster
        .agreed_topic("payments", Duration::from_secs(10), |views| {
            views[index].leader != victim
        })
        .await;
    let elapsed = killed_at.elapsed();
    let p = &after[index];
    assert!(before[index].isr.contains(&p.leader), "{p:?} from the ISR");
    assert_eq!(p.leader_epoch, before[index].leader_epoch + 1);
    assert!(!p.isr.contains(&victim));
    // The new leader's metrics say the same: it leads the partition, one of its
    // three replicas out of sync.
    let metrics = cluster.brokers_ref(p.leader).addr.clone();
    let labels = format!("{{topic=\"payments\",partition=\"{index}\"}}");
    let samples = wait_for("the new leader's metrics", Duration::from_secs(10), || {
        let samples = crate::metrics::scrape(&metrics);
        let in_sync = samples.get(&format!("meridian_partition_in_sync_replicas{labels}"));
        let ready = in_sync == Some(&2.0);
        async move { ready.then_some(samples) }
    })
    .await;
    for (name, expected) in [("leader", 1.0), ("replicas", 3.0)] {
        let key = format!("meridian_partition_{name}{labels}");
        assert_eq!(crate::metrics::value(&samples, &key), expected, "{key}");
    }
    assert!(crate::metrics::value(&samples, "meridian_partitions_under_replicated") >= 1.0);
    // A liveness bound, not the speed target (that is `meridian bench failover`'s):
    // the session timeout is 1.5 s, so this only fails if fencing does not happen.
    assert!(
        elapsed < Duration::from_secs(10),
        "leadership moved after {elapsed:?}; the session timeout is 1.5 s"
    );
    // Restarted, it registers again and is unfenced (listed in metadata).
    cluster.broker(victim).restart();
    cluster.agreed_controller(3, Duration::from_secs(15)).await;
}

/// The three voters and brokers 4 and 5, which do not vote, with a 3 s replica lag
/// time: for tests whose replicas die (on brokers 3, 4 and 5, see [`on_3_4_5`]).
/// Killing two of the three voters would leave the metadata quorum without a
/// majority, and then no ISR change or election could be committed at all.
async fn five_brokers() -> TestCluster {
    let mut cluster = TestCluster::start("replica_lag_time_max_ms = 3000\n");
    cluster.agreed_controller(3, Duration::from_secs(20)).await;
    // The offsets topic goes onto the first three brokers (it is created once
    // three are live), so group coordinators stay available whichever of 3, 4
    // and 5 a test kills: brokers 1 and 2 hold a replica of every partition.
    cluster
        .agreed_topic("__consumer_offsets", Duration::from_secs(20), |v| {
            v.iter().all(|p| p.leader != NO_BROKER)
        })
        .await;
    for expected in [4, 5] {
        let port = free_ports(1)[0];
        assert_eq!(cluster.add_broker(port), expected);
    }
    cluster.agreed_controller(5, Duration::from_secs(20)).await;
    cluster
}

/// Moves `topic`/0 onto brokers 3 (a voter), 4 and 5, and waits until all three are
/// in sync.
async fn on_3_4_5(cluster: &TestCluster, admin: &meridian_client::Admin, topic: &str) {
    cluster
        .agreed_topic(topic, Duration::from_secs(10), |_| true)
        .await;
    let results = admin
        .reassign_partitions(topic, &[(0, Some(vec![3, 4, 5]))])
        .await
        .unwrap();
    assert!(matches!(results[..], [(0, Ok(()))]), "{results:?}");
    cluster
        .agreed_topic(topic, Duration::from_secs(15), |v| {
            v[0].replicas == [3, 4, 5] && v[0].isr == [3, 4, 5]
        })
        .await;
}

/// The replicas that die here are brokers 4 and 5, which do not vote (see
/// [`five_brokers`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclean_election_happens_only_where_the_topic_allows_it() {
    let mut cluster = five_brokers().await;
    let admin = cluster.client(1).await.admin();
    admin.create_topic(rf3("clean", 1)).await.unwrap();
    admin
        .create_topic(rf3("unclean", 1).config("unclean.leader.election.enable", "true"))
        .await
        .unwrap();
    for topic in ["clean", "unclean"] {
        on_3_4_5(&cluster, &admin, topic).await;
    }
    // Brokers 4 and 5 die one after the other: each leaves the ISR, so broker 3 is
    // the only in-sync replica.
    for id in [4, 5] {
        cluster.broker(id).kill9();
        for topic in ["clean", "unclean"] {
            cluster
                .agreed_topic(topic, Duration::from_secs(10), |v| !v[0].isr.contains(&id))
                .await;
        }
    }
    for topic in ["clean", "unclean"] {
        let v = cluster
            .agreed_topic(topic, Duration::from_secs(5), |_| true)
            .await;
        assert_eq!((v[0].leader, v[0].isr.clone()), (3, vec![3]), "{topic}");
    }
    // Then broker 3 dies too (voters 1 and 2 are still a quorum), and 4 and 5 (out
    // of sync) come back: only the topic that allows it gets an out-of-sync leader.
    cluster.broker(3).kill9();
    cluster.broker(4).restart();
    cluster.broker(5).restart();
    cluster.agreed_controller(4, Duration::from_secs(20)).await;
    let unclean = cluster
        .agreed_topic("unclean", Duration::from_secs(15), |v| v[0].leader != 3)
        .await;
    assert!([4, 5].contains(&unclean[0].leader), "{unclean:?}");
    // The ISR restarted from the new leader alone; the other restarted broker may have
    // joined it since (its log matches the new leader's, which is now the truth).
    assert!(
        unclean[0].isr.contains(&unclean[0].leader) && !unclean[0].isr.contains(&3),
        "{unclean:?}"
    );
    let clean = cluster
        .agreed_topic("clean", Duration::from_secs(5), |_| true)
        .await;
    assert_eq!(clean[0].leader, NO_BROKER, "no unclean election: {clean:?}");
    assert_eq!(clean[0].error, ErrorCode::LeaderNotAvailable);
    assert_eq!(
        clean[0].isr,
        vec![3],
        "the ISR keeps the replica with the data"
    );
    // An unclean election asked for (`kafka-leader-election --election-type
    // unclean`) brings it back all the same, led by a live replica; one with a
    // leader needs none, and a partition no replica of which is alive gets none.
    let results = admin
        .elect_unclean_leaders(Some(&[("unclean", 0)]))
        .await
        .unwrap();
    assert_eq!(
        results[0].error,
        ErrorCode::ElectionNotNeeded,
        "{results:?}"
    );
    let (ok, text, err) = cluster
        .brokers_ref(1)
        .cli(&["partition", "elect-leaders", "clean", "--unclean"], "");
    assert!(ok, "{text}{err}");
    let clean = cluster
        .agreed_topic("clean", Duration::from_secs(15), |v| {
            v[0].leader != NO_BROKER
        })
        .await;
    assert!([4, 5].contains(&clean[0].leader), "{clean:?}");
    assert!(
        text.contains(&format!("clean/0: now led by broker {}", clean[0].leader)),
        "{text}"
    );
    assert!(!clean[0].isr.contains(&3), "{clean:?}");
    // The replica with the lost data comes back and follows the new leader.
    cluster.broker(3).restart();
    cluster
        .agreed_topic("clean", Duration::from_secs(20), |v| v[0].isr.contains(&3))
        .await;
    let clean = cluster
        .agreed_topic("clean", Duration::from_secs(5), |_| true)
        .await;
    assert_ne!(clean[0].leader, 3, "{clean:?}");
}

/// Polls `consumer` until it has returned `n` records or `timeout` passes.
async fn poll_records(consumer: &mut Consumer, n: usize, timeout: Duration) -> Vec<ConsumerRecord> {
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    while records.len() < n && Instant::now() < deadline {
        records.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    records
}

fn values(records: &[ConsumerRecord]) -> Vec<(i64, String)> {
    records
        .iter()
        .map(|r| {
            let value = r.value.as_ref().expect("a value");
            (r.offset, String::from_utf8(value.to_vec()).unwrap())
        })
        .collect()
}

/// KIP-320 for consumers. An unclean election cuts records a consumer has read; the
/// new leader's log gets new records at those offsets. The consumer learns from the
/// new leader where its log diverged and reads on from there, so it returns the new
/// records, rather than finding its position out of range and jumping per
/// `auto_offset_reset` (here to the log start, reading 0..50 again). With
/// `auto_offset_reset = none` it reports the truncation instead. A group consumer
/// resuming from a commit made before the cut does the same: the commit holds the
/// leader epoch of the last record read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_reads_on_from_where_an_unclean_election_cut_the_log() {
    let mut cluster = five_brokers().await;
    let client = cluster.client(1).await;
    let admin = client.admin();
    // On brokers 3, 4 and 5 (not the voters 1 and 2, which keep the quorum), led
    // by 3.
    admin
        .create_topic(rf3("cut", 1).config("unclean.leader.election.enable", "true"))
        .await
        .unwrap();
    on_3_4_5(&cluster, &admin, "cut").await;
    cluster
        .agreed_topic("cut", Duration::from_secs(15), |v| {
            v[0].replicas == [3, 4, 5] && v[0].isr == [3, 4, 5] && v[0].leader == 3
        })
        .await;

    // 0..50 reach all three replicas; 50..100 only broker 3, the others dead.
    send_acked(&client, "cut", (0..50).map(|i| format!("kept-{i}"))).await;
    for id in [4, 5] {
        cluster.broker(id).kill9();
        cluster
            .agreed_topic("cut", Duration::from_secs(10), |v| !v[0].isr.contains(&id))
            .await;
    }
    send_with(
        &client,
        "cut",
        (50..100).map(|i| format!("lost-{i}")),
        Acks::Leader,
    )
    .await;

    // Two consumers read all 100.
    let mut reads_on = client.consumer(ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    let mut reports = client.consumer(ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::None,
        ..ConsumerConfig::default()
    });
    for consumer in [&mut reads_on, &mut reports] {
        consumer.assign("cut", &[0]).await.unwrap();
        consumer.seek("cut", 0, Offset::Earliest).await.unwrap();
        let records = poll_records(consumer, 100, Duration::from_secs(20)).await;
        assert_eq!(records.len(), 100);
        assert_eq!(values(&records[99..]), [(99, "lost-99".to_string())]);
    }
    // A consumer that ListOffsets placed at the end, having read nothing: its
    // position carries the epoch the leader gave it.
    let mut placed = client.consumer(ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    placed.assign("cut", &[0]).await.unwrap();
    placed.seek("cut", 0, Offset::Latest).await.unwrap();
    assert_eq!(placed.position("cut", 0), Some(100));
    // A group member reads all 100 too, commits and leaves.
    let group = GroupConfig {
        enable_auto_commit: false,
        ..GroupConfig::new("resumes")
    };
    let mut member = client.consumer(ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    member.subscribe(group.clone(), &["cut"]).await.unwrap();
    let records = poll_records(&mut member, 100, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 100);
    member.commit().await.unwrap();
    member.close().await.unwrap();
    let committed = admin
        .committed_offsets("resumes", Some("cut"))
        .await
        .unwrap();
    assert_eq!(committed[0].offset, 100);
    assert_eq!(committed[0].leader_epoch, Some(records[99].leader_epoch));
    let committed_epoch = records[99].leader_epoch;

    // Broker 3 dies; 4 and 5 come back, and one of them leads without 50..100.
    cluster.broker(3).kill9();
    cluster.broker(4).restart();
    cluster.broker(5).restart();
    cluster
        .agreed_topic("cut", Duration::from_secs(20), |v| {
            [4, 5].contains(&v[0].leader)
        })
        .await;
    send_with(
        &client,
        "cut",
        (50..60).map(|i| format!("new-{i}")),
        Acks::Leader,
    )
    .await;

    let records = poll_records(&mut reads_on, 10, Duration::from_secs(20)).await;
    let expected: Vec<(i64, String)> = (50..60).map(|i| (i, format!("new-{i}"))).collect();
    assert_eq!(
        values(&records),
        expected,
        "the consumer reads on from where the log was cut"
    );
    assert_eq!(reads_on.position("cut", 0), Some(60));

    // Without the epoch, offset 100 would be out of range and it would start over
    // from offset 0.
    let records = poll_records(&mut placed, 10, Duration::from_secs(20)).await;
    assert_eq!(
        values(&records),
        expected,
        "a consumer placed by ListOffsets"
    );

    // Positions kept outside Meridian, with the epoch of the last record read.
    let mut resumes = client.consumer(ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    resumes.assign("cut", &[0]).await.unwrap();
    resumes
        .seek_with_epoch("cut", 0, 100, committed_epoch)
        .await
        .unwrap();
    let records = poll_records(&mut resumes, 10, Duration::from_secs(20)).await;
    assert_eq!(values(&records), expected, "a seek with the epoch read");

    // Without the epoch in its commit, offset 100 would be out of range and the
    // member would start over from offset 0.
    let mut member = client.consumer(ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    member.subscribe(group, &["cut"]).await.unwrap();
    let records = poll_records(&mut member, 10, Duration::from_secs(20)).await;
    assert_eq!(
        values(&records),
        expected,
        "a member resuming from a commit made before the cut"
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        match reports.poll(Duration::from_millis(200)).await {
            Ok(records) => assert!(records.is_empty(), "{:?}", values(&records)),
            Err(e) => break e,
        }
        assert!(Instant::now() < deadline, "no truncation reported");
    };
    assert!(
        matches!(
            error,
            meridian_client::Error::LogTruncated {
                position: 100,
                truncated_to: 50,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(reports.position("cut", 0), Some(100), "paused where it was");
}

#[tokio::test]
async fn topics_survive_a_full_restart_and_sigterm_moves_leadership_first() {
    let mut cluster = TestCluster::start("");
    cluster.agreed_controller(3, Duration::from_secs(20)).await;
    cluster
        .client(2)
        .await
        .admin()
        .create_topic(rf3("kept", 3))
        .await
        .unwrap();
    let before = cluster
        .agreed_topic("kept", Duration::from_secs(10), |_| true)
        .await;
    // Metadata answers from the image; each broker creates its replicas just after
    // applying it.
    wait_for(
        "every broker's replica of kept/0",
        Duration::from_secs(5),
        || async {
            (1..=3)
                .all(|id| {
                    cluster
                        .brokers_ref(id)
                        .data_dir
                        .join("topics/kept/0")
                        .is_dir()
                })
                .then_some(())
        },
    )
    .await;

    // SIGTERM: controlled shutdown moves broker 3's leaderships away before it exits.
    cluster.broker(3).stop();
    let moved = cluster
        .agreed_topic("kept", Duration::from_secs(5), |_| true)
        .await;
    assert!(moved.iter().all(|p| p.leader != 3), "{moved:?}");
    cluster.broker(3).restart();
    cluster.agreed_controller(3, Duration::from_secs(15)).await;

    for id in 1..=3 {
        cluster.broker(id).kill9();
    }
    for id in 1..=3 {
        cluster.broker(id).restart();
    }
    cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let after = cluster
        .agreed_topic("kept", Duration::from_secs(10), |_| true)
        .await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.replicas, a.replicas);
    }
    // Deleted through any broker: gone from every image and every data dir.
    cluster
        .client(1)
        .await
        .admin()
        .delete_topic("kept")
        .await
        .unwrap();
    wait_for(
        "local logs of the deleted topic to go",
        Duration::from_secs(10),
        || async {
            let all = cluster.metadata_everywhere().await;
            let gone_everywhere = all.values().all(|m| {
                m.as_ref()
                    .is_some_and(|m| m.topics.iter().all(|t| t.name != "kept"))
            });
            let dirs_gone = (1..=3).all(|id| {
                !cluster.brokers[id - 1]
                    .data_dir
                    .join("topics/kept")
                    .exists()
            });
            (gone_everywhere && dirs_gone).then_some(())
        },
    )
    .await;
}

/// An unpaced acks=all load on an RF=3 topic, started the moment the topic is
/// created, finishes and every record reads back. The first batches usually reach a
/// leader that has not applied the new topic yet (`UnknownTopic`), which drops the
/// topic from the producer's metadata cache; the producer's refreshes must still ask
/// for it, or (with `send` blocked on a full buffer, so nothing else asks) its
/// batches wait for a leader until their delivery timeout. And an RF=1 topic under
/// `min_insync_replicas = 2` is refused at creation, not left unwritable by acks=all.
#[tokio::test]
async fn unpaced_acks_all_load_on_a_new_rf3_topic_completes_and_reads_back() {
    const N_RECORDS: u64 = 20_000;
    let cluster = TestCluster::start("[topic_defaults]\nmin_insync_replicas = 2\n");
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let client = cluster.client(controller).await;
    let err = client
        .admin()
        .create_topic(NewTopic::new("single", 1).replication_factor(1))
        .await
        .expect_err("RF 1 below min.insync.replicas 2 is refused");
    assert_eq!(
        err.code(),
        Some(ErrorCode::InvalidReplicationFactor),
        "{err}"
    );
    assert!(err.to_string().contains("min.insync.replicas"), "{err}");

    // A fresh client of a broker that is not the controller (it forwards the
    // creation): the new topic's leaders learn of it through the metadata log, some
    // of them after the first batches arrive.
    // A raw request, not `Admin::create_topic`, which would wait until every broker
    // serves the topic.
    let via = if controller == 1 { 2 } else { 1 };
    let client = cluster.client(via).await;
    let response = client
        .request(Request::CreateTopics(CreateTopicsRequest {
            topics: vec![CreateTopic {
                name: "unpaced".into(),
                partitions: 8,
                replication_factor: 3,
                configs: Vec::new(),
            }],
            validate_only: false,
        }))
        .await
        .unwrap();
    let Response::CreateTopics(response) = response else {
        panic!("{response:?}")
    };
    assert!(response.results[0].error.is_ok(), "{response:?}");
    let producer = client.producer(ProducerConfig {
        acks: Acks::All,
        // Small, so `send` soon waits for room, as in an unpaced bench.
        buffer_memory: 1 << 20,
        batch_size: 64 * 1024,
        ..ProducerConfig::default()
    });
    let load = async {
        let mut deliveries = Vec::new();
        for seq in 0..N_RECORDS {
            let mut value = vec![0u8; 1024];
            value[..8].copy_from_slice(&seq.to_be_bytes());
            let record = ProducerRecord::new("unpaced", value).partition((seq % 8) as u32);
            // `send` asks the broker it talks to for the partition count; right
            // after the creation that broker may not have applied the topic yet.
            let delivery = loop {
                match producer.send(record.clone()).await {
                    Err(e) if e.code() == Some(ErrorCode::UnknownTopic) && seq == 0 => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    other => break other.expect("send"),
                }
            };
            deliveries.push(delivery);
        }
        producer.flush().await.expect("flush");
        for delivery in deliveries {
            delivery.await.expect("acknowledged");
        }
    };
    // Without the fix this waits out the 2 min delivery timeout; well under a second
    // of work otherwise, so 60 s on a busy CI machine is a stall, not slowness.
    tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .expect("the unpaced acks=all load stalled");

    let mut consumer = client.consumer(Default::default());
    let partitions = consumer.assign_all("unpaced").await.unwrap();
    for p in &partitions {
        consumer
            .seek("unpaced", *p, Offset::Earliest)
            .await
            .unwrap();
    }
    let mut seen = vec![false; N_RECORDS as usize];
    let mut n_read = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while n_read < N_RECORDS {
        assert!(
            Instant::now() < deadline,
            "read back {n_read} of {N_RECORDS} records"
        );
        for record in consumer.poll(Duration::from_millis(500)).await.unwrap() {
            let value = record.value.expect("value");
            let seq = u64::from_be_bytes(value[..8].try_into().unwrap());
            assert_eq!(record.partition as u64, seq % 8, "record {seq}");
            assert!(!seen[seq as usize], "record {seq} read twice");
            seen[seq as usize] = true;
            n_read += 1;
        }
    }
    assert!(seen.iter().all(|s| *s));
}

/// What one broker answers about `topic` to `Metadata`, over `client`'s connection.
async fn topic_seen_by(client: &Client, broker: u32, topic: &str) -> Option<Vec<(ErrorCode, u32)>> {
    let response = client
        .request_to(
            broker,
            Request::Metadata(MetadataRequest {
                topics: Some(vec![topic.to_string()]),
            }),
        )
        .await
        .unwrap();
    let Response::Metadata(m) = response else {
        panic!("{response:?}")
    };
    let t = m.topics.into_iter().find(|t| t.name == topic)?;
    t.error
        .is_ok()
        .then(|| t.partitions.iter().map(|p| (p.error, p.leader)).collect())
}

#[tokio::test]
async fn create_and_delete_return_once_every_broker_serves_the_change() {
    let cluster = TestCluster::start("");
    // Through a broker that is not the controller (it forwards), with a connection to
    // every broker already open, so each is asked the moment the call returns.
    let client = cluster.forwarding_client().await;
    let admin = client.admin();
    client.metadata(Some(Vec::new())).await.unwrap();
    for broker in 1..=3 {
        topic_seen_by(&client, broker, "warm-up").await;
    }
    for round in 0..5 {
        let name = format!("ready-{round}");
        admin.create_topic(rf3(&name, 6)).await.unwrap();
        for broker in 1..=3 {
            let seen = topic_seen_by(&client, broker, &name)
                .await
                .unwrap_or_else(|| {
                    panic!("round {round}: broker {broker} does not know `{name}` yet")
                });
            assert_eq!(seen.len(), 6, "broker {broker}: {seen:?}");
            for (error, leader) in seen {
                assert!(
                    error.is_ok() && leader != NO_BROKER,
                    "broker {broker}: {error} leader {leader}"
                );
            }
        }
        admin.delete_topic(&name).await.unwrap();
        for broker in 1..=3 {
            assert_eq!(
                topic_seen_by(&client, broker, &name).await,
                None,
                "round {round}: broker {broker} still serves deleted `{name}`"
            );
        }
    }
}

#[tokio::test]
async fn auto_create_topics_in_a_cluster_goes_through_the_controller() {
    let cluster = TestCluster::start("auto_create_topics = true\ndefault_partitions = 4\n");
    let client = cluster.forwarding_client().await;

    // A fetch of an unknown topic is refused and creates nothing, not even a local
    // topic on the broker asked (only Metadata auto-creates, through the controller).
    let response = client
        .request(crate::harness::fetch("fetched-first", 0, 0, 1, 1 << 20))
        .await
        .unwrap();
    let Response::Fetch(fetch) = response else {
        panic!("{response:?}")
    };
    assert_eq!(fetch.topics[0].partitions[0].error, ErrorCode::UnknownTopic);
    for broker in &cluster.brokers {
        assert!(
            !broker.data_dir.join("topics/fetched-first").exists(),
            "a fetch created a local topic in {}",
            broker.data_dir.display()
        );
    }

    // A producer's first send asks for metadata, which creates the topic with the
    // brokers' defaults: 4 partitions, replicated on all three brokers.
    send_acked(&client, "auto-made", (0..100).map(|i| format!("v{i}"))).await;
    let views = cluster
        .agreed_topic("auto-made", Duration::from_secs(10), |ps| ps.len() == 4)
        .await;
    for view in &views {
        assert_eq!(view.replicas.len(), 3, "{views:?}");
    }
    let expected: Vec<String> = (0..100).map(|i| format!("v{i}")).collect();
    assert_eq!(read_values(&client, "auto-made").await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_deleted_or_created_again_while_a_broker_was_down_leave_it_when_it_returns() {
    let mut cluster = TestCluster::start("");
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let away = if controller == 3 { 2 } else { 3 };
    let client = cluster.client(controller).await;
    let admin = client.admin();
    admin.create_topic(rf3("gone", 2)).await.unwrap();
    admin.create_topic(rf3("reborn", 2)).await.unwrap();
    // A producer per incarnation (`send_acked` makes one per call): a new topic does
    // not know the first one's producer id, and refuses its sequence numbers
    // (`UnknownProducerId`).
    let send_all = |topic: &'static str, prefix: &'static str, n: usize| {
        send_acked(&client, topic, (0..n).map(move |i| format!("{prefix}-{i}")))
    };
    send_all("gone", "old", 20).await;
    send_all("reborn", "old", 20).await;
    // acks=all: every replica, `away` too, has the records.
    for topic in ["gone", "reborn"] {
        assert!(local_log_bytes(cluster.brokers_ref(away), topic, 0) > 0);
    }

    cluster.broker(away).kill9();
    // The controller fences it, so new topics go to the two brokers left.
    cluster.agreed_controller(2, Duration::from_secs(20)).await;
    admin.delete_topic("gone").await.unwrap();
    admin.delete_topic("reborn").await.unwrap();
    let mut reborn = NewTopic::new("reborn", 2);
    reborn.replication_factor = 2;
    admin.create_topic(reborn).await.unwrap();
    send_all("reborn", "new", 10).await;

    cluster.broker(away).restart();
    cluster.agreed_controller(3, Duration::from_secs(30)).await;
    let data_dir = cluster.brokers_ref(away).data_dir.clone();
    wait_for(
        "the returned broker to drop its copies of the deleted topic and of the earlier `reborn`",
        Duration::from_secs(20),
        || async {
            let stale = ["gone", "reborn"].map(|t| data_dir.join("topics").join(t).exists());
            (stale == [false, false]).then_some(())
        },
    )
    .await;
    let expected: Vec<String> = (0..10).map(|i| format!("new-{i}")).collect();
    assert_eq!(read_values(&client, "reborn").await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moved_off_a_broker_while_it_was_down_is_deleted_when_it_returns() {
    let mut cluster = TestCluster::start("");
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let mut rf2 = NewTopic::new("moved", 1);
    rf2.replication_factor = 2;
    let client = cluster.client(controller).await;
    let admin = client.admin();
    admin.create_topic(rf2).await.unwrap();
    let before = cluster
        .agreed_topic("moved", Duration::from_secs(10), |v| v[0].isr.len() == 2)
        .await;
    let replicas = before[0].replicas.clone();
    // The replica to take down: not the controller, which decides the move.
    let away = *replicas.iter().find(|b| **b != controller).unwrap();
    let stays = *replicas.iter().find(|b| **b != away).unwrap();
    let outsider = (1..=3).find(|b| !replicas.contains(b)).unwrap();
    send_acked(&client, "moved", (0..50).map(|i| format!("v-{i}"))).await;
    assert!(local_log_bytes(cluster.brokers_ref(away), "moved", 0) > 0);

    cluster.broker(away).kill9();
    cluster.agreed_controller(2, Duration::from_secs(20)).await;
    for (_, result) in admin
        .reassign_partitions("moved", &[(0, Some(vec![stays, outsider]))])
        .await
        .unwrap()
    {
        result.unwrap();
    }
    cluster
        .agreed_topic("moved", Duration::from_secs(30), |v| {
            let mut r = v[0].replicas.clone();
            r.sort();
            let mut want = vec![stays, outsider];
            want.sort();
            r == want && v[0].isr.len() == 2
        })
        .await;

    // Back, it hosts nothing of `moved`: the copy it left with is deleted, not kept
    // on disk forever.
    cluster.broker(away).restart();
    cluster.agreed_controller(3, Duration::from_secs(30)).await;
    wait_for(
        "the returned broker to delete its copy of the partition moved away",
        Duration::from_secs(20),
        || async { (local_log_bytes(cluster.brokers_ref(away), "moved", 0) == 0).then_some(()) },
    )
    .await;
    let expected: Vec<String> = (0..50).map(|i| format!("v-{i}")).collect();
    assert_eq!(read_values(&client, "moved").await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_says_it_is_not_ready_rather_than_that_topics_do_not_exist() {
    let mut cluster = TestCluster::start("");
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let client = cluster.client(controller).await;
    client.admin().create_topic(rf3("known", 2)).await.unwrap();
    let restarted = if controller == 3 { 2 } else { 3 };
    cluster.broker(restarted).kill9();
    cluster.agreed_controller(2, Duration::from_secs(20)).await;

    // Until it has caught up with the metadata log, the restarted broker knows no
    // topic and no broker. Answering from that would tell a client `known` does not
    // exist (a producer's send then fails with UnknownTopic); it must say it is not
    // ready instead, and once it answers, name the topic.
    cluster.broker(restarted).restart();
    let raw = cluster.brokers_ref(restarted).client().await;
    // Asks for at least 3 s, and on until the broker has answered once (a loaded
    // machine may take longer to catch up).
    let started = Instant::now();
    let (mut not_ready, mut answered) = (0, 0);
    while started.elapsed() < Duration::from_secs(3) || answered == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never answered within 30 s ({not_ready} not-ready refusals)"
        );
        let request = Request::Metadata(MetadataRequest {
            topics: Some(vec!["known".into()]),
        });
        match raw.request(request).await {
            Ok(Response::Metadata(m)) => {
                answered += 1;
                assert_eq!(
                    m.topics[0].error,
                    ErrorCode::None,
                    "answer {answered} (after {not_ready} not-ready ones): {m:?}"
                );
                assert!(!m.brokers.is_empty(), "an answer without brokers: {m:?}");
            }
            Ok(other) => panic!("not a metadata answer: {other:?}"),
            Err(e) if e.code() == Some(ErrorCode::MetadataNotReady) => not_ready += 1,
            Err(_) => {} // Not listening yet.
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The SDK's own metadata call waits through the refusals.
    let fresh = cluster.brokers_ref(restarted).client().await;
    assert_eq!(fresh.partition_count("known").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_does_not_lead_again_on_the_metadata_it_replays() {
    let mut cluster = TestCluster::start("");
    let client = cluster.forwarding_client().await;
    client.admin().create_topic(rf3("zombie", 1)).await.unwrap();
    let before = cluster
        .agreed_topic("zombie", Duration::from_secs(10), |v| v[0].isr.len() == 3)
        .await;
    let victim = before[0].leader;
    cluster.broker(victim).kill9();
    let after = cluster
        .agreed_topic("zombie", Duration::from_secs(20), |v| {
            v[0].leader != victim && v[0].leader != NO_BROKER
        })
        .await;
    assert!(after[0].leader_epoch > before[0].leader_epoch);

    // On start the broker re-applies the metadata log it has, in which it still leads
    // the partition at the old epoch. Until it has seen the newer decisions it must
    // not act on that: an acks=1 write taken then would sit on a branch the new
    // leader's epoch truncates.
    cluster.broker(victim).restart();
    let restarted = cluster.brokers_ref(victim).client().await;
    // Writes for at least 2 s, and on until the broker has answered once (a loaded
    // machine may take longer to catch up).
    let started = Instant::now();
    let mut answers = Vec::new();
    while started.elapsed() < Duration::from_secs(2) || answers.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the restarted broker never answered within 30 s"
        );
        let request = crate::harness::produce("zombie", 0, 1, crate::harness::batch(16));
        if let Ok(Response::Produce(r)) = restarted.request(request).await {
            let p = &r.topics[0].partitions[0];
            answers.push(p.error);
            assert_ne!(
                p.error,
                ErrorCode::None,
                "the restarted broker took a write as leader at offset {} (answers so far: {answers:?})",
                p.base_offset
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends `values` to `topic`/0 with acks=all through a producer of its own, and
/// waits until every one is acknowledged.
async fn send_acked(client: &Client, topic: &str, values: impl IntoIterator<Item = String>) {
    send_with(client, topic, values, Acks::All).await;
}

/// [`send_acked`] with other acks.
async fn send_with(
    client: &Client,
    topic: &str,
    values: impl IntoIterator<Item = String>,
    acks: Acks,
) {
    let producer = client.producer(ProducerConfig {
        acks,
        ..ProducerConfig::default()
    });
    crate::harness::send_all(
        &producer,
        values
            .into_iter()
            .map(|value| ProducerRecord::new(topic, value).partition(0)),
    )
    .await;
}

/// Bytes of record data in a broker's local log of `topic`/`partition`.
fn local_log_bytes(broker: &TestBroker, topic: &str, partition: u32) -> u64 {
    let dir = broker.data_dir.join(format!("topics/{topic}/{partition}"));
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .map(|e| e.metadata().map_or(0, |m| m.len()))
                .sum()
        })
        .unwrap_or(0)
}

/// Every value of `topic`/0 from the log start, read through `client` (from the
/// partition's leader), in offset order.
async fn read_values(client: &Client, topic: &str) -> Vec<String> {
    crate::harness::read_partition_0(client, topic, Duration::from_secs(30))
        .await
        .into_iter()
        .map(|record| {
            let value = record.value.expect("every record has a value");
            String::from_utf8(value.to_vec()).unwrap()
        })
        .collect()
}

/// Produces `prefix-0`, `prefix-1`, … at acks=all until `stop`, one record at a time;
/// returns the values acknowledged, in order.
async fn produce_until(
    client: Client,
    topic: &'static str,
    prefix: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<String> {
    use meridian_client::{ProducerConfig, ProducerRecord};
    let producer = client.producer(ProducerConfig {
        linger: Duration::from_millis(1),
        delivery_timeout: Duration::from_secs(60),
        ..ProducerConfig::default()
    });
    let mut acked = Vec::new();
    let mut i = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let value = format!("{prefix}-{i}");
        i += 1;
        let delivery = producer
            .send(ProducerRecord::new(topic, value.clone()).partition(0))
            .await
            .unwrap();
        match delivery.await {
            Ok(_) => acked.push(value),
            Err(e) => eprintln!("{value} not acknowledged: {e}"),
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reassignment_onto_a_new_broker_copies_the_log_under_load_and_loses_nothing() {
    let mut cluster = TestCluster::start("");
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let admin = cluster.client(controller).await.admin();
    admin
        .create_topic(rf3("moving", 1).config("min.insync.replicas", "2"))
        .await
        .unwrap();
    let before = cluster
        .agreed_topic("moving", Duration::from_secs(10), |v| v[0].isr.len() == 3)
        .await;
    let old_leader = before[0].leader;
    let kept: Vec<u32> = before[0]
        .replicas
        .iter()
        .copied()
        .filter(|r| *r != old_leader)
        .collect();
    // The producer bootstraps from a broker that stays.
    let producing_client = cluster.client(kept[0]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first = tokio::spawn(produce_until(
        producing_client.clone(),
        "moving",
        "before",
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked_before = first.await.unwrap();
    assert!(
        acked_before.len() > 20,
        "{} acknowledged",
        acked_before.len()
    );

    // Broker 4 is not a voter: it joins the running cluster and is listed everywhere.
    let port = free_ports(1)[0];
    assert_eq!(cluster.add_broker(port), 4);
    cluster.agreed_controller(4, Duration::from_secs(20)).await;

    // Keep producing while the partition moves: 4 first (it leads once the move
    // completes, since the old leader is the replica removed).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let during = tokio::spawn(produce_until(
        producing_client.clone(),
        "moving",
        "during",
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let target = vec![4, kept[0], kept[1]];
    // Sent to a broker that is not the controller: forwarded.
    let via = *kept.iter().find(|b| **b != controller).unwrap();
    let results = cluster
        .client(via)
        .await
        .admin()
        .reassign_partitions("moving", &[(0, Some(target.clone()))])
        .await
        .unwrap();
    assert!(matches!(results[..], [(0, Ok(()))]), "{results:?}");
    let mut sorted_target = target.clone();
    sorted_target.sort_unstable();
    let after = cluster
        .agreed_topic("moving", Duration::from_secs(30), |v| {
            v[0].replicas == target && v[0].isr == sorted_target
        })
        .await;
    assert_eq!(after[0].leader, 4, "{after:?}");
    assert_eq!(after[0].leader_epoch, before[0].leader_epoch + 1);
    assert!(cluster
        .client(via)
        .await
        .admin()
        .list_reassignments(None)
        .await
        .unwrap()
        .is_empty());
    // Produce a little longer at the new leader, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked_during = during.await.unwrap();
    assert!(
        acked_during.len() > 20,
        "{} acknowledged",
        acked_during.len()
    );

    // The removed replica stopped and deleted its copy of the log.
    wait_for(
        "the removed replica's log to be deleted",
        Duration::from_secs(10),
        || async {
            (local_log_bytes(cluster.brokers_ref(old_leader), "moving", 0) == 0).then_some(())
        },
    )
    .await;
    assert!(local_log_bytes(cluster.brokers_ref(4), "moving", 0) > 0);

    // The removed broker dies; broker 4 leads and serves every acknowledged record
    // exactly once, in the order acknowledged.
    cluster.broker(old_leader).kill9();
    let values = read_values(&cluster.client(4).await, "moving").await;
    let acked: Vec<String> = acked_before.into_iter().chain(acked_during).collect();
    let mut position = 0;
    for value in &acked {
        let found = values[position..]
            .iter()
            .position(|v| v == value)
            .unwrap_or_else(|| panic!("acknowledged {value} missing or out of order"));
        position += found + 1;
    }
    let distinct: std::collections::BTreeSet<&String> = values.iter().collect();
    assert_eq!(distinct.len(), values.len(), "a record appears twice");
}

/// A broker gone for good is unregistered: refused while it runs, while it holds
/// replicas, and for a voter; then no broker lists it, and it leaves the metadata
/// quorum it had joined as a learner. Kafka's UnregisterBroker (`kafka-cluster
/// unregister`) at a Kafka listener gets the same answers.
#[tokio::test]
async fn a_broker_gone_for_good_is_unregistered() {
    use kafka_protocol::messages::{self as k, ApiKey, BrokerId};
    let mut cluster = TestCluster::start("kafka_listen = \"{kafka_listen}\"");
    cluster.agreed_controller(3, Duration::from_secs(20)).await;
    // The offsets topic goes to the three brokers there are, none to broker 4.
    cluster
        .agreed_topic("__consumer_offsets", Duration::from_secs(20), |_| true)
        .await;
    assert_eq!(cluster.add_broker(free_ports(1)[0]), 4);
    let controller = cluster.agreed_controller(4, Duration::from_secs(20)).await;
    let via = if controller == 1 { 2 } else { 1 };
    let admin = cluster.client(via).await.admin();
    // Kafka's `kafka-cluster unregister --id N`, at broker `via`'s Kafka listener.
    let kafka = cluster.kafka[via as usize - 1].clone();
    let kafka_unregister = |id: i32| {
        let mut raw = crate::kafka::Raw::connect(&kafka);
        let request = k::UnregisterBrokerRequest::default().with_broker_id(BrokerId(id));
        raw.send(ApiKey::UnregisterBroker, 0, &request);
        let r: k::UnregisterBrokerResponse = raw.receive(ApiKey::UnregisterBroker, 0);
        (
            r.error_code,
            r.error_message.unwrap_or_default().to_string(),
        )
    };
    let mut everywhere = NewTopic::new("spread", 1);
    everywhere.replication_factor = 4;
    admin.create_topic(everywhere).await.unwrap();
    cluster
        .agreed_topic("spread", Duration::from_secs(10), |v| v[0].isr.len() == 4)
        .await;

    let refusal = |result: meridian_client::Result<()>| {
        let err = result.unwrap_err();
        (err.code(), err.to_string())
    };
    let (code, message) = refusal(admin.unregister_broker(4).await);
    assert_eq!(code, Some(ErrorCode::InvalidRequest), "{message}");
    assert!(message.contains("broker 4 is running"), "{message}");
    let (code, message) = refusal(admin.unregister_broker(3).await);
    assert_eq!(code, Some(ErrorCode::InvalidRequest), "{message}");
    assert!(message.contains("broker 3 is a voter"), "{message}");
    let (code, message) = kafka_unregister(3);
    assert_eq!(code, 42, "INVALID_REQUEST: {message}");
    assert!(message.contains("broker 3 is a voter"), "{message}");
    let (code, message) = refusal(admin.unregister_broker(9).await);
    assert_eq!(code, Some(ErrorCode::BrokerIdNotRegistered), "{message}");

    // Broker 4 dies for good; the controller fences it.
    cluster.broker(4).kill9();
    wait_for("broker 4 fenced", Duration::from_secs(20), || async {
        let described = admin.describe_cluster().await.ok()?;
        described
            .brokers
            .iter()
            .any(|b| b.broker_id == 4 && b.state == BrokerState::Fenced)
            .then_some(())
    })
    .await;
    let (code, message) = refusal(admin.unregister_broker(4).await);
    assert_eq!(code, Some(ErrorCode::InvalidRequest), "{message}");
    assert!(
        message.contains("broker 4 holds replicas of 1 partition(s), spread/0 first"),
        "{message}"
    );

    // Its replica moved away, it goes (here through the CLI).
    let results = admin
        .reassign_partitions("spread", &[(0, Some(vec![1, 2, 3]))])
        .await
        .unwrap();
    assert!(matches!(results[..], [(0, Ok(()))]), "{results:?}");
    cluster
        .agreed_topic("spread", Duration::from_secs(20), |v| {
            v[0].replicas == [1, 2, 3]
        })
        .await;
    let (ok, out, err) = cluster
        .brokers_ref(via)
        .cli(&["cluster", "unregister", "--broker-id", "4"], "");
    assert!(ok, "{err}");
    assert_eq!(out, "unregistered broker 4\n");
    cluster.agreed_controller(3, Duration::from_secs(10)).await;
    wait_for(
        "broker 4 gone from the cluster and its quorum",
        Duration::from_secs(10),
        || async {
            let described = admin.describe_cluster().await.ok()?;
            let ids: Vec<u32> = described.brokers.iter().map(|b| b.broker_id).collect();
            (ids == [1, 2, 3]).then_some(())
        },
    )
    .await;
    let (code, _) = refusal(admin.unregister_broker(4).await);
    assert_eq!(code, Some(ErrorCode::BrokerIdNotRegistered));
    let (code, message) = kafka_unregister(4);
    assert_eq!(code, 102, "BROKER_ID_NOT_REGISTERED: {message}");
}

/// `replica_catch_up_bytes_per_sec` holds back a new replica copying the log: 4 MiB
/// at 1 MB/s takes over three seconds (one second's worth may go at once), where
/// without the limit it takes a fraction of one.
#[tokio::test]
async fn a_new_replica_copies_the_log_no_faster_than_the_catch_up_limit() {
    let cluster = TestCluster::start("replica_catch_up_bytes_per_sec = 1000000\n");
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let admin = cluster.client(controller).await.admin();
    let mut rf1 = NewTopic::new("copied", 1);
    rf1.replication_factor = 1;
    admin.create_topic(rf1).await.unwrap();
    let leader = cluster
        .agreed_topic("copied", Duration::from_secs(10), |_| true)
        .await[0]
        .leader;
    let client = cluster.client(leader).await;
    send_with(
        &client,
        "copied",
        (0..4096).map(|i| format!("{i:01024}")),
        Acks::Leader,
    )
    .await;
    let target = (1..=3).find(|b| *b != leader).unwrap();
    let started = Instant::now();
    let results = admin
        .reassign_partitions("copied", &[(0, Some(vec![leader, target]))])
        .await
        .unwrap();
    assert!(matches!(results[..], [(0, Ok(()))]), "{results:?}");

    // While it copies, each broker describes its own log (`DescribeLogs`): the new
    // replica's holds part of the leader's, and `partition list` says how much.
    // (The new replica knows the partition once it has applied the move.)
    let asked = [("copied", 0)];
    let copy = loop {
        let copy = admin.describe_logs(target, Some(&asked)).await.unwrap();
        if copy.iter().all(|l| l.error.is_ok() && l.replica) {
            break copy;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{copy:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let of_leader = admin.describe_logs(leader, Some(&asked)).await.unwrap();
    let (ok, listed, err) = cluster
        .brokers_ref(target)
        .cli(&["partition", "list", "copied"], "");
    assert!(ok, "{err}");
    let [of_leader] = &of_leader[..] else {
        panic!("{of_leader:?}")
    };
    let [copy] = &copy[..] else {
        panic!("{copy:?}")
    };
    assert_eq!(
        (of_leader.error, of_leader.replica, of_leader.log_end_offset),
        (ErrorCode::None, true, 4096)
    );
    assert!(of_leader.size_bytes > 4 << 20, "{of_leader:?}");
    assert!(copy.error.is_ok() && copy.replica, "{copy:?}");
    assert!(
        copy.size_bytes < of_leader.size_bytes && copy.log_end_offset < 4096,
        "copied at once despite the limit: {copy:?}"
    );
    let copying = format!("adding {target} (copying, ");
    let line = listed
        .lines()
        .find(|l| l.starts_with("copied "))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        line.contains(&copying) && line.contains(" of 4.") && line.contains(" MiB)"),
        "{listed}"
    );
    // A broker answers for partitions it does not hold too, and names the ones it
    // does not know; asked for everything, it lists only its replicas.
    let other = (1..=3).find(|b| *b != leader && *b != target).unwrap();
    let answers = admin
        .describe_logs(other, Some(&[("copied", 0), ("copied", 7), ("nothing", 0)]))
        .await
        .unwrap();
    let codes: Vec<(&str, u32, ErrorCode, bool)> = answers
        .iter()
        .map(|l| (l.topic.as_str(), l.partition, l.error, l.replica))
        .collect();
    assert_eq!(
        codes,
        [
            ("copied", 0, ErrorCode::None, false),
            ("copied", 7, ErrorCode::InvalidPartition, false),
            ("nothing", 0, ErrorCode::UnknownTopic, false),
        ]
    );
    let everything = admin.describe_logs(other, None).await.unwrap();
    assert!(
        everything.iter().all(|l| l.replica && l.topic != "copied"),
        "{everything:?}"
    );
    let everything = admin.describe_logs(leader, None).await.unwrap();
    assert!(
        everything
            .iter()
            .any(|l| l.replica && (l.topic.as_str(), l.partition) == ("copied", 0)),
        "{everything:?}"
    );
    cluster
        .agreed_topic("copied", Duration::from_secs(30), |v| {
            v[0].isr.contains(&target)
        })
        .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "4 MiB copied in {took:?} despite a 1 MB/s limit"
    );
    assert_eq!(read_values(&client, "copied").await.len(), 4096);

    // `partition reassign --wait` onto the third broker prints the copy's figures
    // while the limit holds it back, then that it is done.
    let third = (1..=3).find(|b| *b != leader && *b != target).unwrap();
    let (ok, out, err) = cluster.brokers_ref(leader).cli(
        &[
            "partition",
            "reassign",
            "copied",
            "-p",
            "0",
            "--replicas",
            &format!("{leader},{third}"),
            "--wait",
        ],
        "",
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("copied/0: adding {third} (copying, ")) && out.contains(" MiB"),
        "{out}"
    );
    assert!(out.contains("done in "), "{out}");
}

/// A new replica of a compacted topic copies a cleaned log, whose offsets skip the
/// batches the cleaner removed. It stores them as they are, joins the ISR, and once
/// it leads serves the same records at the same offsets. (It used to refuse the
/// first batch after a gap, every second, and never caught up.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_copies_a_compacted_log_with_gaps_and_takes_over() {
    let mut cluster = TestCluster::start("log_cleaner_backoff_ms = 100\n");
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let admin = cluster.client(controller).await.admin();
    let topic = NewTopic::new("compacted", 1)
        .replication_factor(1)
        .config("cleanup.policy", "compact")
        .config("segment.bytes", "1024")
        .config("min.cleanable.dirty.ratio", "0.01");
    admin.create_topic(topic).await.unwrap();
    let leader = cluster
        .agreed_topic("compacted", Duration::from_secs(10), |_| true)
        .await[0]
        .leader;
    let client = cluster.client(leader).await;
    // Rounds of two batches: keys `a` and `b` rewritten (every round's batch but the
    // last loses all its records), then a key of the round's own, which stays.
    let producer = client.producer(ProducerConfig::default());
    let value = "v".repeat(300);
    for round in 0..30 {
        for key in ["a".to_string(), "b".to_string()] {
            let record = ProducerRecord::new("compacted", value.clone())
                .key(key)
                .partition(0);
            drop(producer.send(record).await.unwrap());
        }
        producer.flush().await.unwrap();
        let record = ProducerRecord::new("compacted", value.clone())
            .key(format!("own-{round}"))
            .partition(0);
        producer.send(record).await.unwrap().await.unwrap();
    }
    // The leader cleans its sealed segments: reading from the start skips offsets.
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let records =
            crate::harness::read_partition_0(&client, "compacted", Duration::from_secs(30)).await;
        let gaps = records
            .windows(2)
            .filter(|w| w[1].offset > w[0].offset + 1)
            .count();
        if gaps >= 10 {
            break records;
        }
        assert!(Instant::now() < deadline, "not cleaned: {gaps} gaps");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let target = (1..=3).find(|b| *b != leader).unwrap();
    let results = admin
        .reassign_partitions("compacted", &[(0, Some(vec![leader, target]))])
        .await
        .unwrap();
    assert!(matches!(results[..], [(0, Ok(()))]), "{results:?}");
    cluster
        .agreed_topic("compacted", Duration::from_secs(30), |v| {
            v[0].isr.contains(&target)
        })
        .await;

    // The old leader dies; the copy leads and serves what it served.
    cluster.broker(leader).kill9();
    cluster
        .agreed_topic("compacted", Duration::from_secs(30), |v| {
            v[0].leader == target
        })
        .await;
    let after = crate::harness::read_partition_0(
        &cluster.client(target).await,
        "compacted",
        Duration::from_secs(30),
    )
    .await;
    // Cleaning goes on meanwhile, on both brokers, so `after` may hold fewer of the
    // rewritten keys' records; never another record, and always each key's latest.
    let offset_and_key = |records: &[ConsumerRecord]| -> Vec<(i64, String)> {
        records
            .iter()
            .map(|r| {
                assert_eq!(r.value.as_deref(), Some(value.as_bytes()));
                let key = r.key.as_ref().expect("keyed");
                (r.offset, String::from_utf8(key.to_vec()).unwrap())
            })
            .collect()
    };
    let (before, after) = (offset_and_key(&before), offset_and_key(&after));
    assert!(after.iter().all(|r| before.contains(r)), "{after:?}");
    let mut latest = BTreeMap::new();
    for (offset, key) in &before {
        latest.insert(key.clone(), *offset);
    }
    assert_eq!(latest.len(), 32, "a, b and 30 own keys");
    for (key, offset) in latest {
        assert!(
            after.contains(&(offset, key.clone())),
            "{key} at {offset}: {after:?}"
        );
    }
}

impl TestCluster {
    /// The leader of each partition of `topic`, once every broker agrees on them;
    /// more than one broker leads (what the plugin tests need to mean anything).
    async fn spread_leaders(&self, topic: &str) -> Vec<u32> {
        let leaders: Vec<u32> = self
            .agreed_topic(topic, Duration::from_secs(10), |_| true)
            .await
            .iter()
            .map(|p| p.leader)
            .collect();
        assert!(
            leaders.iter().any(|l| *l != leaders[0]),
            "another broker should lead a partition of {topic}: {leaders:?}"
        );
        leaders
    }
}

/// A cluster of three brokers, its controller, a client of it, and `topic` with three
/// partitions on two replicas each.
async fn three_brokers_with(topic: &str) -> (TestCluster, u32, Client) {
    // Plugins get 5 s a batch, as in the single-broker plugin tests: these tests
    // are not about the deadline, and a stalled test process must not fail them.
    let cluster = TestCluster::start("[plugins]\nbatch_time_max_ms = 5000\n");
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let client = cluster.client(controller).await;
    client
        .admin()
        .create_topic(NewTopic::new(topic, 3).replication_factor(2))
        .await
        .unwrap();
    (cluster, controller, client)
}

/// Attaches `plugin` to `topic` with `params` and the `on_failure` policy.
async fn attach(
    admin: &meridian_client::Admin,
    topic: &str,
    plugin: &str,
    params: &[(&str, &str)],
    on_failure: &str,
) {
    admin
        .attach_plugin(
            topic,
            crate::plugins::attachment(plugin, params, on_failure),
        )
        .await
        .unwrap();
}

/// A topic's partitioner routes records sent without a partition across the whole
/// cluster: the broker that takes them (partition 0's leader, where the SDK sends
/// them) passes each other partition's records to its leader, where the topic's
/// produce chain runs as for any record of that partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioner_routes_records_to_every_leader() {
    let (cluster, controller, client) = three_brokers_with("geo").await;
    let admin = client.admin();
    for (name, module) in [("regions", "region_router"), ("jf", "json_filter")] {
        let bytes = std::fs::read(crate::plugins::plugin_module(module)).unwrap();
        admin
            .deploy_plugin(name, "1.0.0", bytes.into())
            .await
            .unwrap();
    }
    let map = [("field", "region"), ("map", "eu=0,us=1,apac=2")];
    attach(&admin, "geo", "regions", &map, "dead-letter:geo-dlq").await;
    let keep = [("where", "drop!=yes"), ("missing", "keep")];
    attach(&admin, "geo", "jf", &keep, "reject").await;
    // One partitioner per topic, checked by the controller against the image.
    let again = std::fs::read(crate::plugins::plugin_module("region_router")).unwrap();
    admin
        .deploy_plugin("regions-too", "1.0.0", again.into())
        .await
        .unwrap();
    let refused = admin
        .attach_plugin(
            "geo",
            crate::plugins::attachment("regions-too", &map, "reject"),
        )
        .await;
    crate::plugins::refused_as_second_partitioner(refused, "regions");
    cluster.spread_leaders("geo").await;

    let producer = client.producer(ProducerConfig::default());
    let mut deliveries = Vec::new();
    for (n, region) in ["us", "eu", "apac", "us", "mars", "eu", "apac"]
        .iter()
        .enumerate()
    {
        let drop = if n == 3 { r#","drop":"yes""# } else { "" };
        let value = format!(r#"{{"region":"{region}","n":{n}{drop}}}"#);
        let record =
            ProducerRecord::new("geo", value).partition(meridian_client::UNASSIGNED_PARTITION);
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    let values = |records: Vec<ConsumerRecord>| -> Vec<String> {
        records
            .into_iter()
            .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
            .collect()
    };
    // Read from a broker other than the one that routed them.
    let reader = cluster.client(1 + controller % 3).await;
    let mut consumer = reader.consumer(ConsumerConfig::default());
    consumer.assign("geo", &[0, 1, 2]).await.unwrap();
    let mut by_partition: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for p in 0..3 {
        consumer.seek("geo", p, Offset::Earliest).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while by_partition.values().map(Vec::len).sum::<usize>() < 5 {
        assert!(Instant::now() < deadline, "got {by_partition:?}");
        for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            let partition = r.partition;
            by_partition
                .entry(partition)
                .or_default()
                .extend(values(vec![r]));
        }
    }
    let expected: BTreeMap<u32, Vec<String>> = [
        (
            0,
            vec![r#"{"region":"eu","n":1}"#, r#"{"region":"eu","n":5}"#],
        ),
        (1, vec![r#"{"region":"us","n":0}"#]),
        (
            2,
            vec![r#"{"region":"apac","n":2}"#, r#"{"region":"apac","n":6}"#],
        ),
    ]
    .into_iter()
    .map(|(p, v)| (p, v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(by_partition, expected);
    let dead = crate::harness::read_partition_0(&reader, "geo-dlq", Duration::from_secs(20)).await;
    assert_eq!(values(dead), [r#"{"region":"mars","n":4}"#]);
}

/// What plugins write besides the topic's records — dead letters and their log lines
/// — goes to topics of the cluster's, whichever broker ran the plugin: created
/// through the controller with the cluster's default replication factor, listed by
/// every broker, and readable from any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_plugin_logs_go_to_the_clusters_topics() {
    use crate::plugins::wat_fixtures::{filter_wat, LOG_LINE};
    let (mut cluster, controller, client) = three_brokers_with("events").await;
    let admin = client.admin();
    let json_filter = std::fs::read(crate::plugins::plugin_module("json_filter")).unwrap();
    admin
        .deploy_plugin("has-n", "1.0.0", json_filter.into())
        .await
        .unwrap();
    let chatty = wat::parse_str(filter_wat(1, 0, LOG_LINE)).unwrap();
    admin
        .deploy_plugin("chatty", "1.0.0", chatty.into())
        .await
        .unwrap();
    attach(&admin, "events", "chatty", &[], "reject").await;
    let checks = [("where", "n>=0"), ("missing", "error")];
    attach(&admin, "events", "has-n", &checks, "dead-letter:events-dlq").await;
    let leaders = cluster.spread_leaders("events").await;
    let producer = client.producer(ProducerConfig::default());
    for p in 0..3u32 {
        for value in [format!("{{\"n\":{p}}}"), format!("{{\"x\":{p}}}")] {
            let record = ProducerRecord::new("events", value).partition(p);
            producer.send(record).await.unwrap().await.unwrap();
        }
    }
    let values = |records: &[ConsumerRecord]| -> Vec<String> {
        let mut values: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
            .collect();
        values.sort();
        values
    };

    // The dead letters, from the leaders of all three partitions.
    // Every broker lists it: one partition, replicated by the cluster's default.
    let dlq = cluster
        .agreed_topic("events-dlq", Duration::from_secs(10), |_| true)
        .await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].replicas.len(), 3, "{:?}", dlq[0].replicas);
    let dead =
        crate::harness::read_partition_0(&client, "events-dlq", Duration::from_secs(20)).await;
    assert_eq!(values(&dead), [r#"{"x":0}"#, r#"{"x":1}"#, r#"{"x":2}"#]);
    let kept = values(
        &[crate::harness::read_partition_0(&client, "events", Duration::from_secs(20)).await]
            .concat(),
    );
    assert_eq!(kept, [r#"{"n":0}"#]);

    // The log lines, written in the background: every partition's plugin run.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reader = cluster.client(1 + (controller % 3)).await;
        let listed = reader.admin().list_all_topics().await.unwrap();
        if listed.iter().any(|t| t == "__plugin_logs") {
            let logs =
                crate::harness::read_partition_0(&reader, "__plugin_logs", Duration::from_secs(20))
                    .await;
            let mut partitions: Vec<String> = logs
                .iter()
                .filter(|r| r.key.as_deref() == Some(&b"chatty"[..]))
                .flat_map(|r| &r.headers)
                .filter(|h| h.key == "partition")
                .map(|h| String::from_utf8(h.value.clone().unwrap().to_vec()).unwrap())
                .collect();
            partitions.sort();
            partitions.dedup();
            if partitions == ["0", "1", "2"] {
                assert!(logs
                    .iter()
                    .all(|r| r.value.as_deref() == Some(&b"hello from wasm"[..])));
                break;
            }
        }
        assert!(Instant::now() < deadline, "plugin logs of every partition");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A dead-letter topic that cannot be written (its only replica is down) fails
    // the produce within the request's timeout, not the broker's own producer's
    // delivery timeout (two minutes).
    admin
        .create_topic(
            NewTopic::new("frail-dlq", 1)
                .replication_factor(1)
                .config("min.insync.replicas", "1"),
        )
        .await
        .unwrap();
    let frail = cluster
        .agreed_topic("frail-dlq", Duration::from_secs(10), |_| true)
        .await[0]
        .leader;
    attach(&admin, "events", "has-n", &checks, "dead-letter:frail-dlq").await;
    let (p, leader) = (0..3u32)
        .zip(leaders.iter().copied())
        .find(|(_, l)| *l != frail)
        .expect("a partition led elsewhere");
    cluster.broker(frail).kill9();
    let producer = cluster.client(leader).await.producer(ProducerConfig {
        request_timeout: Duration::from_secs(2),
        retries: 0,
        ..ProducerConfig::default()
    });
    let started = Instant::now();
    let record = ProducerRecord::new("events", r#"{"x":9}"#).partition(p);
    let err = producer.send(record).await.unwrap().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginRejected), "{err}");
    assert!(err.to_string().contains("did not finish"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "{err}");
}

/// Plugins are cluster metadata: deployed through one broker and attached through
/// another, they filter produce on every partition's leader, survive a leader's
/// death, and reach a broker that was down meanwhile; a detach and a removal reach
/// every broker too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_deployed_through_one_broker_run_on_every_leader() {
    let mut cluster = TestCluster::start("");
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let admin = cluster.client(controller).await.admin();
    admin
        .create_topic(NewTopic::new("orders", 3).replication_factor(2))
        .await
        .unwrap();
    // Broker 3 is away while the plugin is deployed and attached.
    cluster.broker(3).stop();
    let module = std::fs::read(crate::plugins::plugin_module("json_filter")).unwrap();
    let info = cluster
        .client(1)
        .await
        .admin()
        .deploy_plugin("json-filter", "1.0.0", module.into())
        .await
        .unwrap();
    assert_eq!(info.kind, "filter");
    cluster
        .client(2)
        .await
        .admin()
        .attach_plugin(
            "orders",
            crate::plugins::attachment("json-filter", &[("where", "total>=100")], "reject"),
        )
        .await
        .unwrap();
    cluster.broker(3).restart();
    let listed = |plugins: Vec<meridian_client::PluginInfo>| -> Vec<(String, Vec<String>)> {
        plugins
            .into_iter()
            .map(|p| (p.name, p.attached_to))
            .collect()
    };
    let expected = vec![("json-filter".to_string(), vec!["orders".to_string()])];
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in 1..=3 {
        loop {
            let plugins = cluster.client(id).await.admin().list_plugins().await;
            if plugins
                .as_ref()
                .is_ok_and(|p| listed(p.clone()) == expected)
            {
                break;
            }
            assert!(Instant::now() < deadline, "broker {id} lists {plugins:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Refusals, from the entry broker (parameters) or the controller (the rest).
    let admin3 = cluster.client(3).await.admin();
    let code = |r: meridian_client::Result<()>| r.unwrap_err().code();
    let attachment = |plugin: &str, params: &[(&str, &str)]| {
        crate::plugins::attachment(plugin, params, "reject")
    };
    assert_eq!(
        code(admin3.remove_plugin("json-filter").await),
        Some(ErrorCode::PluginInUse)
    );
    assert_eq!(
        code(
            admin3
                .attach_plugin("ghost", attachment("json-filter", &[("where", "a=1")]))
                .await
        ),
        Some(ErrorCode::UnknownTopic)
    );
    assert_eq!(
        code(
            admin3
                .attach_plugin("orders", attachment("nothing", &[]))
                .await
        ),
        Some(ErrorCode::PluginNotFound)
    );
    let own_dead_letters = crate::plugins::attachment(
        "json-filter",
        &[("where", "total>=100")],
        "dead-letter:orders",
    );
    assert_eq!(
        code(admin3.attach_plugin("orders", own_dead_letters).await),
        Some(ErrorCode::InvalidConfig)
    );
    assert_eq!(
        code(
            admin3
                .attach_plugin("orders", attachment("json-filter", &[]))
                .await
        ),
        Some(ErrorCode::InvalidPlugin),
        "json-filter needs `where`"
    );

    // Every leader filters, whichever broker it is.
    let client = cluster.client(1).await;
    let send = |partition: u32, total: u32| {
        let value = format!("{{\"total\": {total}}}");
        ProducerRecord::new("orders", value).partition(partition)
    };
    let producer = client.producer(ProducerConfig::default());
    for p in 0..3 {
        for total in [5, 150] {
            producer.send(send(p, total)).await.unwrap().await.unwrap();
        }
    }
    let totals = |records: Vec<ConsumerRecord>| -> Vec<String> {
        records
            .into_iter()
            .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
            .collect()
    };
    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign("orders", &[0, 1, 2]).await.unwrap();
    for p in 0..3 {
        consumer.seek("orders", p, Offset::Earliest).await.unwrap();
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 3 && Instant::now() < deadline {
        got.extend(totals(
            consumer.poll(Duration::from_millis(200)).await.unwrap(),
        ));
    }
    assert_eq!(got, vec!["{\"total\": 150}"; 3]);

    // Partition 0's leader dies; the new one filters too.
    let leader = cluster
        .agreed_topic("orders", Duration::from_secs(10), |_| true)
        .await[0]
        .leader;
    cluster.broker(leader).kill9();
    let survivor = (1..=3).find(|b| *b != leader).unwrap();
    cluster
        .agreed_topic("orders", Duration::from_secs(30), |v| {
            v[0].leader != leader && v[0].leader != NO_BROKER
        })
        .await;
    let client = cluster.client(survivor).await;
    let producer = client.producer(ProducerConfig::default());
    for total in [7, 700] {
        producer.send(send(0, total)).await.unwrap().await.unwrap();
    }
    let values =
        totals(crate::harness::read_partition_0(&client, "orders", Duration::from_secs(30)).await);
    assert_eq!(values, vec!["{\"total\": 150}", "{\"total\": 700}"]);

    // Detached and removed through the survivor: gone everywhere still running.
    let admin = client.admin();
    admin.detach_plugin("orders", "json-filter").await.unwrap();
    admin.remove_plugin("json-filter").await.unwrap();
    for id in cluster.running() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let plugins = cluster.client(id).await.admin().list_plugins().await;
            if plugins.as_ref().is_ok_and(|p| p.is_empty()) {
                break;
            }
            assert!(Instant::now() < deadline, "broker {id} lists {plugins:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    producer.send(send(0, 8)).await.unwrap().await.unwrap();
    let values =
        totals(crate::harness::read_partition_0(&client, "orders", Duration::from_secs(30)).await);
    assert_eq!(values.last().map(String::as_str), Some("{\"total\": 8}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reassignment_is_validated_shows_progress_and_can_be_cancelled() {
    let mut cluster = TestCluster::start("");
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let mut rf2 = NewTopic::new("held", 1);
    rf2.replication_factor = 2;
    let admin = cluster.client(controller).await.admin();
    admin.create_topic(rf2).await.unwrap();
    let before = cluster
        .agreed_topic("held", Duration::from_secs(10), |v| v[0].isr.len() == 2)
        .await;
    let replicas = before[0].replicas.clone();
    let outsider = (1..=3).find(|b| !replicas.contains(b)).unwrap();

    // Refused with a typed error: an unknown broker, a broker twice, no replicas, a
    // partition that does not exist, a cancel with nothing to cancel.
    let check = |results: Vec<(u32, meridian_client::Result<()>)>, code: ErrorCode| {
        let [(_, Err(e))] = &results[..] else {
            panic!("{results:?} should fail with {code:?}")
        };
        assert_eq!(e.code(), Some(code), "{e}");
    };
    // Asked through a replica (it stays up), not the controller if possible (forwarded).
    let via = *replicas
        .iter()
        .find(|b| **b != controller)
        .unwrap_or(&replicas[0]);
    let admin = cluster.client(via).await.admin();
    for (target, code) in [
        (
            Some(vec![replicas[0], 9]),
            ErrorCode::InvalidReplicaAssignment,
        ),
        (Some(vec![1, 1]), ErrorCode::InvalidReplicaAssignment),
        (Some(vec![]), ErrorCode::InvalidReplicaAssignment),
        (None, ErrorCode::NoReassignmentInProgress),
    ] {
        check(
            admin
                .reassign_partitions("held", &[(0, target)])
                .await
                .unwrap(),
            code,
        );
    }
    check(
        admin
            .reassign_partitions("held", &[(5, Some(vec![1]))])
            .await
            .unwrap(),
        ErrorCode::UnknownTopic,
    );

    // A move onto a broker that is down cannot complete: it shows as in progress, and
    // is cancelled back to the original replicas.
    cluster.broker(outsider).kill9();
    cluster
        .agreed_topic("held", Duration::from_secs(10), |_| true)
        .await;
    let target = [replicas[0], outsider];
    let (ok, out, err) = cluster.brokers_ref(via).cli(
        &[
            "partition",
            "reassign",
            "held",
            "-p",
            "0",
            "--replicas",
            &format!("{},{}", target[0], target[1]),
        ],
        "",
    );
    assert!(ok, "{out}{err}");
    cluster
        .agreed_topic("held", Duration::from_secs(10), |v| {
            v[0].replicas.len() == 3
        })
        .await;
    let ongoing = admin.list_reassignments(Some("held")).await.unwrap();
    assert_eq!(ongoing.len(), 1, "{ongoing:?}");
    assert_eq!(
        (ongoing[0].adding.clone(), ongoing[0].removing.clone()),
        (vec![outsider], vec![replicas[1]])
    );
    let (ok, out, err) = cluster
        .brokers_ref(via)
        .cli(&["partition", "list", "held"], "");
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "adding {outsider} (copying), removing {}",
            replicas[1]
        )),
        "{out}"
    );
    let (ok, out, err) = cluster.brokers_ref(via).cli(
        &["partition", "reassign", "held", "-p", "0", "--cancel"],
        "",
    );
    assert!(ok, "{out}{err}");
    let after = cluster
        .agreed_topic("held", Duration::from_secs(10), |v| {
            v[0].replicas == replicas
        })
        .await;
    assert_eq!(after[0].isr, {
        let mut r = replicas.clone();
        r.sort_unstable();
        r
    });
    assert!(admin.list_reassignments(None).await.unwrap().is_empty());
}

/// Consumer groups in a cluster, as in Kafka: the controller creates a replicated
/// `__consumer_offsets`, and a group's coordinator is the leader of the group's
/// partition of it. Two members bootstrapped to different brokers form one group with
/// a disjoint, complete assignment; every broker lists the group. The coordinator is
/// killed (SIGKILL) under them: the new one loads the group's membership with its
/// commits, so both carry on with their ids and partitions and read what is produced
/// next, without a rebalance. The offsets they committed survive too: a member
/// joining after they left (at the new coordinator) resumes from them and reads
/// exactly the records produced after the commit, none before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_spans_brokers_and_its_commits_survive_the_coordinator_killed() {
    use meridian_wire::messages::FindCoordinatorRequest;
    use std::collections::BTreeSet;

    const PARTITIONS: u32 = 6;
    let mut cluster = TestCluster::start(
        "group_min_session_timeout_ms = 500\ngroup_heartbeat_interval_ms = 300\noffsets_topic_num_partitions = 4\n",
    );
    cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let offsets = cluster
        .agreed_topic("__consumer_offsets", Duration::from_secs(20), |v| {
            v.iter().all(|p| p.isr.len() == 3)
        })
        .await;
    assert_eq!(offsets.len(), 4, "offsets_topic_num_partitions");
    let client1 = cluster.client(1).await;
    let err = client1
        .admin()
        .create_topic(NewTopic::new("__consumer_offsets", 1))
        .await
        .expect_err("the internal topic is not the clients' to create");
    assert_eq!(err.code(), Some(ErrorCode::PolicyViolation), "{err}");
    let err = client1
        .admin()
        .delete_topic("__consumer_offsets")
        .await
        .expect_err("nor to delete");
    assert_eq!(err.code(), Some(ErrorCode::PolicyViolation), "{err}");
    client1
        .admin()
        .create_topic(rf3("events", PARTITIONS))
        .await
        .unwrap();
    cluster
        .agreed_topic("events", Duration::from_secs(10), |v| {
            v.iter().all(|p| p.isr.len() == 3)
        })
        .await;

    let produce = |client: Client, from: u32, n: u32| async move {
        let producer = client.producer(ProducerConfig {
            acks: Acks::All,
            ..ProducerConfig::default()
        });
        let mut deliveries = Vec::new();
        for i in from..from + n {
            let record = ProducerRecord::new("events", format!("v{i}")).partition(i % PARTITIONS);
            deliveries.push(producer.send(record).await.unwrap());
        }
        for d in deliveries {
            d.await.unwrap();
        }
    };
    produce(client1.clone(), 0, 600).await;

    let group = |client: &Client| {
        let consumer = client.consumer(ConsumerConfig {
            auto_offset_reset: AutoOffsetReset::Earliest,
            ..ConsumerConfig::default()
        });
        let config = GroupConfig {
            // Room to find the new coordinator on a loaded machine: sessions start
            // again when it loads the group.
            session_timeout: Duration::from_secs(6),
            enable_auto_commit: false,
            ..GroupConfig::new("billing")
        };
        (consumer, config)
    };
    let client2 = cluster.client(2).await;
    let (mut a, config) = group(&client1);
    a.subscribe(config, &["events"]).await.unwrap();
    let (mut b, config) = group(&client2);
    b.subscribe(config, &["events"]).await.unwrap();
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (sa, sb) = (a.assignment(), b.assignment());
        let both: BTreeSet<_> = sa.iter().chain(&sb).cloned().collect();
        if seen.len() == 600
            && !sa.is_empty()
            && !sb.is_empty()
            && both.len() == sa.len() + sb.len()
            && both.len() == PARTITIONS as usize
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "one group of two members reading all 600 records: a {sa:?}, b {sb:?}, {} read",
            seen.len()
        );
        for consumer in [&mut a, &mut b] {
            for record in consumer.poll(Duration::from_millis(50)).await.unwrap() {
                seen.insert((record.partition, record.offset));
            }
        }
    }
    let description = cluster
        .client(3)
        .await
        .admin()
        .describe_group("billing")
        .await
        .unwrap();
    assert_eq!(description.members.len(), 2, "{description:?}");
    let listed = cluster.client(3).await.admin().list_groups().await.unwrap();
    assert!(listed.iter().any(|g| g.group_id == "billing"), "{listed:?}");
    a.commit().await.unwrap();
    b.commit().await.unwrap();
    let members = (a.member_id().unwrap(), b.member_id().unwrap());
    let assignments = (a.assignment(), b.assignment());

    let find = |client: Client| async move {
        let response = client
            .request(Request::FindCoordinator(FindCoordinatorRequest {
                group_id: "billing".into(),
            }))
            .await
            .ok()?;
        match response {
            Response::FindCoordinator(r) if r.error == ErrorCode::None => Some(r.broker_id),
            _ => None,
        }
    };
    let coordinator = find(client1.clone()).await.expect("a coordinator");
    cluster.broker(coordinator).kill9();
    let survivor = if coordinator == 1 { 2 } else { 1 };
    let client = cluster.client(survivor).await;
    let moved = wait_for("a new coordinator", Duration::from_secs(15), || {
        let client = client.clone();
        async move { find(client).await.filter(|id| *id != coordinator) }
    })
    .await;
    assert_ne!(moved, coordinator);
    // Produced after the commit: what the members read next, and all a new member
    // must read.
    produce(client.clone(), 600, 300).await;
    // `what` reads the 300 records produced after the commit, none before it.
    async fn read_the_next_300(
        consumers: &mut [&mut Consumer],
        what: &str,
    ) -> BTreeSet<(u32, i64)> {
        let mut read = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while read.len() < 300 {
            assert!(
                Instant::now() < deadline,
                "{what} read {} of the 300 records produced after the commit",
                read.len()
            );
            for consumer in consumers.iter_mut() {
                for record in consumer.poll(Duration::from_millis(50)).await.unwrap() {
                    assert!(
                        record.offset >= 100,
                        "{what} read {}/{}, committed before the coordinator died",
                        record.partition,
                        record.offset
                    );
                    read.insert((record.partition, record.offset));
                }
            }
        }
        read
    }
    read_the_next_300(&mut [&mut a, &mut b], "the carried-on members").await;
    assert_eq!(
        (a.member_id().unwrap(), b.member_id().unwrap()),
        members,
        "the members carried on"
    );
    assert_eq!((a.assignment(), b.assignment()), assignments);
    let description = client.admin().describe_group("billing").await.unwrap();
    let ids: BTreeSet<String> = description
        .members
        .iter()
        .map(|m| m.member_id.clone())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([members.0.clone(), members.1.clone()]),
        "{description:?}"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
    let committed = client
        .admin()
        .committed_offsets("billing", Some("events"))
        .await
        .unwrap();
    assert_eq!(committed.len(), PARTITIONS as usize, "{committed:?}");
    assert!(committed.iter().all(|c| c.offset == 100), "{committed:?}");

    let (mut c, config) = group(&client);
    c.subscribe(config, &["events"]).await.unwrap();
    let resumed = read_the_next_300(&mut [&mut c], "a new member").await;
    assert_eq!(resumed.len(), 300);
    c.close().await.unwrap();
}

/// The log start offset of `topic`/0 persisted in a broker's data dir (`None`: the
/// log never moved it).
fn persisted_log_start(broker: &TestBroker, topic: &str) -> Option<i64> {
    let path = broker
        .data_dir
        .join(format!("topics/{topic}/0/log-start-offset"));
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok()
}

/// DeleteRecords at the leader moves every replica's log start: a follower that is
/// up follows it; one that was down meanwhile comes back with a log ending below
/// the leader's start, so it empties its log, continues at the leader's start and
/// rejoins the ISR (without this it would fetch an out-of-range offset forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_below_the_leaders_log_start_restarts_there_and_rejoins_the_isr() {
    use meridian_client::Offset;
    let mut cluster = TestCluster::start("");
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let client = cluster.client(controller).await;
    client
        .admin()
        .create_topic(rf3("trimmed", 1))
        .await
        .unwrap();
    let views = cluster
        .agreed_topic("trimmed", Duration::from_secs(10), |v| v[0].isr.len() == 3)
        .await;
    let leader = views[0].leader;
    let mut followers: Vec<u32> = (1..=3).filter(|b| *b != leader).collect();
    // Away: a follower that is not the controller, where there is one.
    followers.sort_by_key(|b| *b == controller);
    let (away, present) = (followers[0], followers[1]);

    let produce = |n: u32| {
        let client = client.clone();
        async move {
            let producer = client.producer(ProducerConfig {
                acks: Acks::All,
                ..ProducerConfig::default()
            });
            let mut deliveries = Vec::new();
            for i in 0..n {
                let record = ProducerRecord::new("trimmed", format!("r{i}")).partition(0);
                deliveries.push(producer.send(record).await.unwrap());
            }
            for d in deliveries {
                d.await.unwrap();
            }
        }
    };
    produce(100).await;
    cluster.broker(away).kill9();
    cluster
        .agreed_topic("trimmed", Duration::from_secs(15), |v| {
            !v[0].isr.contains(&away)
        })
        .await;
    produce(100).await;
    let deleted = client
        .admin()
        .delete_records("trimmed", &[(0, Offset::At(150))])
        .await
        .unwrap();
    assert_eq!(deleted[0].1.as_ref().copied().unwrap(), 150);
    let above = client
        .admin()
        .delete_records("trimmed", &[(0, Offset::At(201))])
        .await
        .unwrap();
    assert_eq!(
        above[0].1.as_ref().unwrap_err().code(),
        Some(ErrorCode::OffsetOutOfRange),
        "past the high watermark"
    );
    produce(50).await;
    wait_for(
        "the follower that is up to follow the leader's log start",
        Duration::from_secs(10),
        || async {
            (persisted_log_start(cluster.brokers_ref(present), "trimmed") == Some(150))
                .then_some(())
        },
    )
    .await;

    cluster.broker(away).restart();
    cluster
        .agreed_topic("trimmed", Duration::from_secs(30), |v| v[0].isr.len() == 3)
        .await;
    let returned = cluster.brokers_ref(away);
    assert_eq!(persisted_log_start(returned, "trimmed"), Some(150));
    assert!(
        !returned
            .data_dir
            .join(format!("topics/trimmed/0/{:020}.log", 0))
            .exists(),
        "the old log is gone"
    );
    let earliest = client
        .admin()
        .list_offsets("trimmed", 0, Offset::Earliest)
        .await
        .unwrap();
    assert_eq!(earliest, 150);
    let values = read_values(&client, "trimmed").await;
    assert_eq!(values.len(), 100, "offsets 150..250");
    assert_eq!(values[0], "r50");
}

/// Topic changes in a cluster go through the controller and reach every broker:
/// added partitions are placed, led and replicated; settings reach each replica
/// (`min.insync.replicas` in the leader's acks=all check, `max.message.bytes` in
/// its size check) and every broker's describe; a broker down meanwhile catches up
/// when it returns. Asked of a broker that is not the controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_changes_reach_every_broker_and_a_returning_one() {
    use meridian_client::TopicConfigChanges;

    let mut cluster = TestCluster::start("replica_lag_time_max_ms = 3000\n");
    let client = cluster.forwarding_client().await;
    let admin = client.admin();
    admin.create_topic(rf3("changing", 2)).await.unwrap();
    send_acked(&client, "changing", (0..5).map(|i| format!("old-{i}"))).await;

    // Validated only, by the controller, through a broker that is not it: nothing
    // changes (were the partitions added, the real request below would be refused).
    admin
        .validate_create_partitions("changing", 5)
        .await
        .unwrap();
    admin
        .validate_topic_configs(
            "changing",
            TopicConfigChanges::new().set("retention.ms", "12345"),
        )
        .await
        .unwrap();
    let e = admin
        .validate_create_topic(rf3("changing", 2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::TopicAlreadyExists), "{e}");
    let would_be = admin
        .validate_create_topic(NewTopic::new("validated", 2))
        .await
        .unwrap()
        .expect("the controller describes the topic it would create");
    assert_eq!(
        (
            would_be.partitions,
            would_be.replication_factor,
            would_be.id
        ),
        (2, 3, meridian_wire::TopicId::NONE),
        "the controller fills in the cluster's default replication factor (and gives \
         no ID when only validating)"
    );
    let e = admin
        .validate_topic_configs(
            "changing",
            TopicConfigChanges::new().set("min.insync.replicas", "4"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidConfig), "{e}");
    admin.create_partitions("changing", 5).await.unwrap();
    let views = cluster
        .agreed_topic("changing", Duration::from_secs(20), |v| {
            v.len() == 5 && v.iter().all(|p| p.isr.len() == 3)
        })
        .await;
    let leaders: std::collections::BTreeSet<u32> = views.iter().map(|p| p.leader).collect();
    assert_eq!(
        leaders.len(),
        3,
        "leaders spread over the brokers: {views:?}"
    );
    for p in &views[2..] {
        assert_eq!((p.leader_epoch, p.replicas.len()), (0, 3), "{views:?}");
    }
    let producer = client.producer(ProducerConfig {
        acks: Acks::All,
        ..ProducerConfig::default()
    });
    let delivery = producer
        .send(ProducerRecord::new("changing", "new-4").partition(4))
        .await
        .unwrap();
    assert_eq!(delivery.await.unwrap().offset, 0);
    for (count, code) in [
        (5, ErrorCode::InvalidPartitions),
        (1, ErrorCode::InvalidPartitions),
    ] {
        let e = admin
            .create_partitions("changing", count)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(code), "{count}: {e}");
    }

    // More in sync than there are replicas: refused, nothing changes.
    let e = admin
        .alter_topic_configs(
            "changing",
            TopicConfigChanges::new()
                .set("max.message.bytes", "1024")
                .set("min.insync.replicas", "4"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidConfig), "{e}");
    assert!(e.to_string().contains("replication factor 3"), "{e}");
    admin
        .alter_topic_configs(
            "changing",
            TopicConfigChanges::new()
                .set("max.message.bytes", "1024")
                .set("min.insync.replicas", "3"),
        )
        .await
        .unwrap();
    for id in 1..=3 {
        let d = cluster
            .client(id)
            .await
            .admin()
            .describe_topic("changing")
            .await
            .unwrap();
        let value = |key: &str| {
            d.configs
                .iter()
                .find(|c| c.key == key)
                .unwrap()
                .value
                .clone()
        };
        assert_eq!(
            (
                d.partitions.len(),
                value("max.message.bytes"),
                value("min.insync.replicas"),
                d.configs
                    .iter()
                    .any(|c| c.key == "retention.ms" && c.is_default),
            ),
            (5, "1024".to_string(), "3".to_string(), true),
            "broker {id}: the validated retention.ms was not applied"
        );
        let names = cluster.topics_at(id).await;
        assert!(!names.contains(&"validated".to_string()), "{names:?}");
    }
    let e = producer
        .send(ProducerRecord::new("changing", vec![0u8; 4000]).partition(0))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MessageTooLarge), "{e}");

    // A follower of partition 0 stops: once the ISR shrinks to two, acks=all is
    // refused there, as min.insync.replicas=3 now asks.
    let leader = views[0].leader;
    let follower = *views[0].replicas.iter().find(|r| **r != leader).unwrap();
    cluster.broker(follower).stop();
    cluster
        .agreed_topic("changing", Duration::from_secs(20), |v| v[0].isr.len() == 2)
        .await;
    // Refused and retried until the delivery timeout; the broker's refusal is what
    // the delivery reports (a loaded machine gets a few seconds for the first try).
    let strict = client.producer(ProducerConfig {
        acks: Acks::All,
        delivery_timeout: Duration::from_secs(6),
        ..ProducerConfig::default()
    });
    let e = strict
        .send(ProducerRecord::new("changing", "refused").partition(0))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotEnoughReplicas), "{e}");
    // New partitions need as many live brokers as the topic has replicas; a
    // validation finds that out the same way.
    let e = admin.create_partitions("changing", 6).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidReplicationFactor), "{e}");
    let e = admin
        .validate_create_partitions("changing", 6)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidReplicationFactor), "{e}");
    // Back to the default (1) while the follower is down: acks=all goes through.
    admin
        .alter_topic_configs(
            "changing",
            TopicConfigChanges::new().reset("min.insync.replicas"),
        )
        .await
        .unwrap();
    send_acked(&client, "changing", ["accepted".to_string()]).await;

    // The follower returns with the settings it missed; partitions added now
    // reach it too.
    cluster.broker(follower).restart();
    cluster
        .agreed_topic("changing", Duration::from_secs(30), |v| {
            v.iter().all(|p| p.isr.len() == 3)
        })
        .await;
    admin.create_partitions("changing", 6).await.unwrap();
    let views = cluster
        .agreed_topic("changing", Duration::from_secs(30), |v| {
            v.len() == 6 && v.iter().all(|p| p.isr.len() == 3)
        })
        .await;
    assert_eq!(views.len(), 6);
    let d = cluster
        .client(follower)
        .await
        .admin()
        .describe_topic("changing")
        .await
        .unwrap();
    let min_insync = d
        .configs
        .iter()
        .find(|c| c.key == "min.insync.replicas")
        .unwrap();
    assert!(min_insync.is_default, "{min_insync:?}");
    let local = cluster
        .brokers_ref(follower)
        .data_dir
        .join("topics/changing");
    assert!(
        local.join("5").is_dir(),
        "the returning broker has a log for partition 5"
    );
    // Its own copy of the topic has the settings changed while it was down.
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(local.join("topic.json")).unwrap()).unwrap();
    assert_eq!(
        (file["partitions"].as_u64(), &file["configs"]),
        (Some(6), &serde_json::json!({"max.message.bytes": "1024"})),
        "{file}"
    );
    let values = read_values(&client, "changing").await;
    assert_eq!(
        values.last().map(String::as_str),
        Some("accepted"),
        "{values:?}"
    );
}

/// Appended entries of a broker's Raft log after its first `skip` lines: (term,
/// leader id, the line).
fn raft_entries_after(broker: &TestBroker, skip: usize) -> Vec<(u64, u64, String)> {
    let log = std::fs::read_to_string(broker.data_dir.join("metadata/log")).unwrap();
    log.lines()
        .skip(skip)
        .filter_map(|line| {
            let op: serde_json::Value = serde_json::from_str(line).ok()?;
            let leader = &op["append"]["entry"]["log_id"]["leader_id"];
            Some((
                leader["term"].as_u64()?,
                leader["node_id"].as_u64()?,
                line.to_string(),
            ))
        })
        .collect()
}

fn raft_log_lines(broker: &TestBroker) -> usize {
    std::fs::read_to_string(broker.data_dir.join("metadata/log"))
        .unwrap()
        .lines()
        .count()
}

/// A broker stopped with SIGTERM takes no part in the quorum's decisions once it
/// stops serving its peers: it neither wins a Raft election then (its vote requests
/// would still go out while its leader's heartbeats no longer come in) nor, as the
/// controller, fences the brokers whose heartbeats it can no longer receive. Checked
/// in the survivors' Raft logs, for each broker stopped in turn (the controller among
/// them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_broker_neither_takes_the_lead_nor_fences_the_others() {
    let mut cluster = TestCluster::start("");
    cluster.agreed_controller(3, Duration::from_secs(20)).await;
    cluster
        .agreed_topic("__consumer_offsets", Duration::from_secs(20), |v| {
            v.iter().all(|p| p.leader != NO_BROKER)
        })
        .await;
    for stopped in 1..=3u32 {
        let survivors: Vec<u32> = (1..=3).filter(|id| *id != stopped).collect();
        let seen: BTreeMap<u32, usize> = survivors
            .iter()
            .map(|id| (*id, raft_log_lines(cluster.brokers_ref(*id))))
            .collect();
        let term_before = survivors
            .iter()
            .flat_map(|id| raft_entries_after(cluster.brokers_ref(*id), 0))
            .map(|(term, _, _)| term)
            .max()
            .unwrap();
        cluster.broker(stopped).stop();
        cluster.agreed_controller(2, Duration::from_secs(20)).await;
        // Time for a shutdown's stray decisions to have reached the survivors' logs.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for id in &survivors {
            for (term, leader, line) in raft_entries_after(cluster.brokers_ref(*id), seen[id]) {
                let shown = &line[..line.len().min(300)];
                assert!(
                    !(leader == u64::from(stopped) && term > term_before),
                    "broker {stopped} led term {term} after it was stopped: {shown}"
                );
                for other in &survivors {
                    assert!(
                        !(leader == u64::from(stopped)
                            && line
                                .contains(&format!("\"type\":\"broker_fenced\",\"id\":{other}"))),
                        "broker {stopped}, stopping, fenced broker {other}: {shown}…"
                    );
                }
            }
        }
        cluster.broker(stopped).restart();
        cluster.agreed_controller(3, Duration::from_secs(20)).await;
    }
}

/// Stops `broker` with SIGTERM (its leaderships move away) and starts it again;
/// returns once it is back in the ISR of every partition of `topic`.
async fn stop_and_return(cluster: &mut TestCluster, broker: u32, topic: &str) {
    cluster.broker(broker).stop();
    cluster
        .agreed_topic(topic, Duration::from_secs(15), |views| {
            views.iter().all(|p| p.leader != broker)
        })
        .await;
    cluster.broker(broker).restart();
    cluster
        .agreed_topic(topic, Duration::from_secs(30), |views| {
            views.iter().all(|p| p.isr.contains(&broker))
        })
        .await;
}

/// Three brokers with `cluster_extra`, an RF=3 topic `orders` of `partitions`: the
/// cluster, its controller, an admin client of it, the topic's partitions, and a
/// broker that is not the controller (to stop and bring back).
async fn three_with_orders(
    cluster_extra: &str,
    partitions: u32,
) -> (
    TestCluster,
    u32,
    meridian_client::Admin,
    Vec<PartitionView>,
    u32,
) {
    let cluster = TestCluster::start_with("", cluster_extra);
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let admin = cluster.client(controller).await.admin();
    admin.create_topic(rf3("orders", partitions)).await.unwrap();
    let before = cluster
        .agreed_topic("orders", Duration::from_secs(10), |_| true)
        .await;
    let back = if controller == 3 { 2 } else { 3 };
    (cluster, controller, admin, before, back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_gives_a_returning_broker_its_leaderships_back() {
    let (mut cluster, controller, admin, before, back) =
        three_with_orders("auto_leader_rebalance_enable = false\n", 3).await;
    let led_by_back = before.iter().position(|p| p.leader == back).unwrap() as u32;

    let (ok, out, err) = cluster
        .brokers_ref(controller)
        .cli(&["partition", "list", "--under-replicated"], "");
    assert!(
        ok && !out.contains("\norders "),
        "all in sync at creation: {out}{err}"
    );
    stop_and_return(&mut cluster, back, "orders").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let views = cluster
        .agreed_topic("orders", Duration::from_secs(10), |_| true)
        .await;
    assert!(
        views.iter().all(|p| p.leader != back),
        "with automatic rebalance off, nothing moves back on its own: {views:?}"
    );

    // From the CLI: the partition goes back to its preferred replica, the others
    // are counted as led by theirs already.
    let (ok, text, err) = cluster
        .brokers_ref(controller)
        .cli(&["partition", "elect-leaders", "orders"], "");
    assert!(ok, "{text}{err}");
    assert!(
        text.contains(&format!("orders/{led_by_back}: now led by broker {back}")),
        "{text}"
    );
    assert!(
        text.contains("2 partition(s) already led by their preferred replica"),
        "{text}"
    );
    let views = cluster
        .agreed_topic("orders", Duration::from_secs(10), |views| {
            views[led_by_back as usize].leader == back
        })
        .await;
    let p = &views[led_by_back as usize];
    assert!(p.leader_epoch >= 2, "a new leader epoch each move: {p:?}");
    assert_eq!(p.isr.len(), 3, "{p:?}");
    // Records still flow to the new leader and read back.
    send_acked(
        &cluster.client(back).await,
        "orders",
        (0..30).map(|i| format!("r{i}")),
    )
    .await;
    assert_eq!(
        read_values(&cluster.client(controller).await, "orders")
            .await
            .len(),
        30
    );

    // A preferred replica that is down cannot lead: refused per partition, and the
    // CLI fails.
    cluster.broker(back).kill9();
    cluster
        .agreed_topic("orders", Duration::from_secs(15), |views| {
            views.iter().all(|p| p.leader != back)
        })
        .await;
    // `partition list` filters show what the dead broker left behind: every
    // partition of `orders` under-replicated, none offline, and, once acks=all needs
    // all three replicas, all of them under their min.insync.replicas.
    let rows = |args: &[&str]| -> Vec<String> {
        let (ok, out, err) = cluster.brokers_ref(controller).cli(args, "");
        assert!(ok, "{args:?}: {err}");
        out.lines()
            .filter(|l| l.starts_with("orders "))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(rows(&["partition", "list", "--under-replicated"]).len(), 3);
    // The same for scripts: each has a leader, three replicas, two in sync.
    let (ok, json, err) = cluster.brokers_ref(controller).cli(
        &[
            "partition",
            "list",
            "orders",
            "--under-replicated",
            "--json",
        ],
        "",
    );
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let listed = json.as_array().unwrap();
    assert_eq!(listed.len(), 3, "{json}");
    for p in listed {
        assert_eq!(p["topic"], "orders", "{json}");
        assert!(
            p["leader"].as_u64().is_some_and(|l| l != u64::from(back)),
            "{json}"
        );
        assert_eq!(p["replicas"].as_array().unwrap().len(), 3, "{json}");
        assert_eq!(p["isr"].as_array().unwrap().len(), 2, "{json}");
        assert!(p["reassignment"].is_null(), "{json}");
    }
    assert_eq!(
        rows(&["partition", "list", "orders", "--unavailable"]).len(),
        0
    );
    assert_eq!(
        rows(&["partition", "list", "orders", "--under-min-isr"]).len(),
        0
    );
    admin
        .alter_topic_configs(
            "orders",
            TopicConfigChanges::new().set("min.insync.replicas", "3"),
        )
        .await
        .unwrap();
    assert_eq!(
        rows(&["partition", "list", "orders", "--under-min-isr"]).len(),
        3
    );
    assert_eq!(rows(&["partition", "list", "orders"]).len(), 3);

    let results = admin
        .elect_preferred_leaders(Some(&[("orders", led_by_back), ("orders", 9), ("nope", 0)]))
        .await
        .unwrap();
    let codes: Vec<ErrorCode> = results.iter().map(|r| r.error).collect();
    assert_eq!(
        codes,
        vec![
            ErrorCode::PreferredLeaderNotAvailable,
            ErrorCode::InvalidPartition,
            ErrorCode::UnknownTopic
        ],
        "{results:?}"
    );
    assert!(
        results[0].message.contains(&format!("broker {back}")),
        "{results:?}"
    );
    let (ok, _, err) = cluster.brokers_ref(controller).cli(
        &[
            "partition",
            "elect-leaders",
            "orders",
            "-p",
            &led_by_back.to_string(),
        ],
        "",
    );
    assert!(!ok, "a refused election fails the command");
    assert!(err.contains("PreferredLeaderNotAvailable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_gives_a_returning_broker_its_leaderships_back_on_its_own() {
    let (mut cluster, _, _, before, back) =
        three_with_orders("leader_imbalance_check_interval_ms = 1000\n", 6).await;
    stop_and_return(&mut cluster, back, "orders").await;
    // Every partition ends led by its preferred replica again, as at creation. A
    // check each second; the bound is for a loaded machine, where a follower can
    // drop out of the ISR for a while and cannot be given a leadership then (under
    // the whole suite this once took more than 15 s; alone, about 4).
    let after = cluster
        .agreed_topic("orders", Duration::from_secs(45), |views| {
            views.iter().all(|p| p.leader == p.replicas[0])
        })
        .await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.leader, b.leader, "{before:?} {after:?}");
    }
    assert!(after.iter().any(|p| p.leader == back));
}

/// Three brokers with Kafka listeners and `topic` (one partition, RF=3, in sync)
/// holding records `a0`..`a9`: the cluster and the partition as created.
async fn kafka_region_with_10_records(topic: &str) -> (TestCluster, Vec<PartitionView>) {
    let cluster = TestCluster::start("kafka_listen = \"{kafka_listen}\"");
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let admin = cluster.client(controller).await.admin();
    admin.create_topic(rf3(topic, 1)).await.unwrap();
    let first = cluster
        .agreed_topic(topic, Duration::from_secs(10), |v| v[0].isr.len() == 3)
        .await;
    send_acked(
        &cluster.client(first[0].leader).await,
        topic,
        (0..10).map(|i| format!("a{i}")),
    )
    .await;
    (cluster, first)
}

/// KIP-951: a Kafka producer (version 10 on) that sends to a broker not leading
/// the partition is told in the same answer which broker leads it, in which
/// epoch, and at which Kafka listener, so it need not refresh its metadata first;
/// nothing is written at the follower. Version 9 answers carry no such hint.
#[tokio::test]
async fn a_kafka_produce_at_a_follower_names_the_leader_and_its_listener() {
    use kafka_protocol::messages::{self as k, ApiKey};
    let (cluster, first) = kafka_region_with_10_records("hinted").await;
    let leader = first[0].leader;
    let follower = (1..=3).find(|b| *b != leader).unwrap();
    let mut raw = crate::kafka::Raw::connect(&cluster.kafka[follower as usize - 1]);
    let produce = k::ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![k::produce_request::TopicProduceData::default()
            .with_name(crate::kafka::name("hinted"))
            .with_partition_data(vec![
                k::produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(crate::harness::batch(10))),
            ])]);
    for version in [9, 10, 11] {
        raw.send(ApiKey::Produce, version, &produce);
        let r: k::ProduceResponse = raw.receive(ApiKey::Produce, version);
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 6, "NOT_LEADER_OR_FOLLOWER: {p:?}");
        let hint = (p.current_leader.leader_id.0, p.current_leader.leader_epoch);
        let endpoints: Vec<(i32, String)> = r
            .node_endpoints
            .iter()
            .map(|e| (e.node_id.0, format!("{}:{}", e.host.as_str(), e.port)))
            .collect();
        if version >= 10 {
            assert_eq!(hint, (leader as i32, first[0].leader_epoch), "{p:?}");
            assert_eq!(
                endpoints,
                [(leader as i32, cluster.kafka[leader as usize - 1].clone())]
            );
        } else {
            assert_eq!(hint, (-1, -1));
            assert!(endpoints.is_empty(), "{endpoints:?}");
        }
    }
    let values = read_values(&cluster.client(leader).await, "hinted").await;
    let sent: Vec<String> = (0..10).map(|i| format!("a{i}")).collect();
    assert_eq!(values, sent);
}

/// KIP-951 for Fetch: a Kafka consumer fetching from a broker that does not lead
/// the partition is told which broker leads it and in which epoch (version 12
/// on), and at which Kafka listener (version 16 on, by topic ID as consumers
/// then ask), so it need not refresh its metadata first. Version 11 answers
/// carry no hint.
#[tokio::test]
async fn a_kafka_fetch_at_a_follower_names_the_leader_and_its_listener() {
    use kafka_protocol::messages::{self as k, ApiKey};
    let (cluster, first) = kafka_region_with_10_records("hinted-fetch").await;
    let leader = first[0].leader;
    let follower = (1..=3).find(|b| *b != leader).unwrap();
    let mut raw = crate::kafka::Raw::connect(&cluster.kafka[follower as usize - 1]);
    let id = crate::kafka::metadata_topic_id(&mut raw, "hinted-fetch");
    let partition = k::fetch_request::FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(0)
        .with_partition_max_bytes(1 << 20);
    for version in [11, 12, 16] {
        let topic = if version >= 13 {
            k::fetch_request::FetchTopic::default()
                .with_topic_id(meridian_kafka::kafka_topic_id(id))
        } else {
            k::fetch_request::FetchTopic::default().with_topic(crate::kafka::name("hinted-fetch"))
        };
        let fetch = k::FetchRequest::default()
            .with_max_wait_ms(0)
            .with_max_bytes(1 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![topic.with_partitions(vec![partition.clone()])]);
        raw.send(ApiKey::Fetch, version, &fetch);
        let r: k::FetchResponse = raw.receive(ApiKey::Fetch, version);
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 6, "NOT_LEADER_OR_FOLLOWER: {p:?}");
        assert!(p.records.as_ref().is_none_or(|r| r.is_empty()), "{p:?}");
        let hint = (p.current_leader.leader_id.0, p.current_leader.leader_epoch);
        let endpoints: Vec<(i32, String)> = r
            .node_endpoints
            .iter()
            .map(|e| (e.node_id.0, format!("{}:{}", e.host.as_str(), e.port)))
            .collect();
        if version >= 12 {
            assert_eq!(hint, (leader as i32, first[0].leader_epoch), "{p:?}");
        } else {
            assert_eq!(hint, (-1, -1));
        }
        if version >= 16 {
            assert_eq!(
                endpoints,
                [(leader as i32, cluster.kafka[leader as usize - 1].clone())]
            );
        } else {
            assert!(endpoints.is_empty(), "{endpoints:?}");
        }
    }
}

/// Stops `leader` (its leadership moves to an in-sync follower, in a new epoch)
/// and sends `b0`..`b4` to the new leader: the partition after the move.
async fn move_leader_and_send_5(
    cluster: &mut TestCluster,
    topic: &str,
    leader: u32,
) -> Vec<PartitionView> {
    cluster.broker(leader).stop();
    let moved = cluster
        .agreed_topic(topic, Duration::from_secs(15), |v| {
            ![NO_BROKER, leader].contains(&v[0].leader)
        })
        .await;
    send_acked(
        &cluster.client(moved[0].leader).await,
        topic,
        (0..5).map(|i| format!("b{i}")),
    )
    .await;
    moved
}

/// Kafka's OffsetForLeaderEpoch, asked of a region's brokers over their Kafka
/// listeners after a leader change: the new leader says where each epoch ends in
/// its log (the old one where the new one starts, the new one at the log end, one
/// it has never had nowhere), fences a client with a stale leader epoch, and a
/// follower sends the client to the leader. ListOffsets names each offset's epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_clients_learn_where_leader_epochs_end() {
    use crate::kafka::Raw;
    use kafka_protocol::messages::{self as k, ApiKey};
    let (mut cluster, first) = kafka_region_with_10_records("epochs").await;
    let first_leader = first[0].leader;
    let second = move_leader_and_send_5(&mut cluster, "epochs", first_leader).await;
    let (leader, epoch) = (second[0].leader, second[0].leader_epoch);
    let (old_epoch, new_epoch) = (first[0].leader_epoch, epoch);
    assert!(new_epoch > old_epoch, "{first:?} {second:?}");

    let ask = |at: u32, queries: &[(i32, i32)]| {
        let mut raw = Raw::connect(&cluster.kafka[at as usize - 1]);
        crate::kafka::leader_epoch_ends(&mut raw, "epochs", queries)
    };
    let answers = ask(
        leader,
        &[
            (new_epoch, old_epoch),
            (new_epoch, new_epoch),
            (-1, new_epoch + 1),
            (old_epoch, new_epoch),
            (new_epoch + 1, new_epoch),
        ],
    );
    assert_eq!(
        answers,
        [
            // The old epoch ends where the new leader's first record is.
            (0, old_epoch, 10),
            // The current one at the log end.
            (0, new_epoch, 15),
            // An epoch the log has never had: undefined.
            (0, -1, -1),
            // FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH.
            (74, -1, -1),
            (75, -1, -1),
        ]
    );
    // ListOffsets names the epoch of the offset it finds, which a Kafka consumer
    // that resets there checks its position against after the next leader change.
    let mut raw = Raw::connect(&cluster.kafka[leader as usize - 1]);
    let list = k::ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![k::list_offsets_request::ListOffsetsTopic::default()
            .with_name(crate::kafka::name("epochs"))
            .with_partitions(
                [-2, -1, 0]
                    .map(|timestamp| {
                        k::list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(timestamp)
                    })
                    .to_vec(),
            )]);
    raw.send(ApiKey::ListOffsets, 7, &list);
    let r: k::ListOffsetsResponse = raw.receive(ApiKey::ListOffsets, 7);
    let listed: Vec<(i16, i64, i32)> = r.topics[0]
        .partitions
        .iter()
        .map(|p| (p.error_code, p.offset, p.leader_epoch))
        .collect();
    // Earliest and the first record by time: offset 0, of the old epoch; latest:
    // the log end, of the new one.
    assert_eq!(
        listed,
        [(0, 0, old_epoch), (0, 15, new_epoch), (0, 0, old_epoch)]
    );

    // A follower: NOT_LEADER_OR_FOLLOWER.
    let follower = second[0]
        .isr
        .iter()
        .copied()
        .find(|b| *b != leader && *b != first_leader)
        .expect("a running follower");
    assert_eq!(ask(follower, &[(-1, old_epoch)]), [(6, -1, -1)]);
}

/// librdkafka, the C client under most non-Java Kafka clients, reading a
/// partition whose leader moves: it checks its position with the new leader
/// (OffsetForLeaderEpoch, counted in the new leader's request metrics) and reads
/// on, every record once, without the offset reset it is not allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_checks_its_position_with_a_new_leader() {
    let Some(python) = std::env::var_os("KAFKA_PYTHON_FOR_TESTS") else {
        println!("skipped: KAFKA_PYTHON_FOR_TESTS is not set (.ci/run installs it and sets it)");
        return;
    };
    let (mut cluster, first) = kafka_region_with_10_records("moving").await;
    let first_leader = first[0].leader;

    // `ready`: the consumer read its first 10 records.
    let bootstrap = cluster.kafka.join(",");
    let (librdkafka, mut stdout) = librdkafka_ready(&python, &bootstrap, "failover", "moving");

    let second = move_leader_and_send_5(&mut cluster, "moving", first_leader).await;
    let leader = second[0].leader;
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let seen = librdkafka.answer(&rest);
    let expected: Vec<i64> = (0..15).collect();
    assert_eq!(seen["offsets"], serde_json::json!(expected));
    let samples = crate::metrics::scrape(&cluster.brokers_ref(leader).addr);
    // No sample at all until the first such request.
    let asked = samples
        .get("meridian_requests_total{api=\"OffsetForLeaderEpoch\"}")
        .copied()
        .unwrap_or(0.0);
    assert!(asked >= 1.0, "the new leader was never asked: {asked}");
}

/// In a region a topic deleted takes its committed offsets with it at the group's
/// coordinator (it applies the deletion from the metadata log): the topic created
/// again under the name is read from its start, not from the old topic's commit.
/// It has a new ID, which every broker names, as they named the old one's.
#[tokio::test]
async fn a_deleted_topics_committed_offsets_go_with_it_in_a_region() {
    let cluster = TestCluster::start("");
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    cluster
        .agreed_topic("__consumer_offsets", Duration::from_secs(20), |_| true)
        .await;
    let broker_id = if controller == 1 { 2 } else { 1 };
    let broker = cluster.brokers_ref(broker_id);
    let cli = |args: &[&str], input: &str| {
        let (ok, out, err) = broker.cli(args, input);
        assert!(ok, "{args:?}: {err}");
        out
    };
    let consume = |n: &str| {
        cli(
            &[
                "consume", "events", "--group", "g", "--from", "earliest", "-n", n,
            ],
            "",
        )
    };
    let create = [
        "topic",
        "create",
        "events",
        "-p",
        "1",
        "--replication-factor",
        "3",
    ];
    cli(&create, "");
    let ids = || {
        let ids: std::collections::BTreeSet<String> = (1..=3)
            .map(|id| {
                let (ok, out, err) = cluster
                    .brokers_ref(id)
                    .cli(&["topic", "describe", "events", "--json"], "");
                assert!(ok, "broker {id}: {err}");
                let json: serde_json::Value = serde_json::from_str(&out).unwrap();
                json["id"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(ids.len(), 1, "every broker names the topic's ID: {ids:?}");
        ids.into_iter().next().unwrap()
    };
    let old_id = ids();
    let old: String = (0..10).map(|i| format!("old{i}\n")).collect();
    cli(&["produce", "events", "--acks", "all"], &old);
    consume("10");
    assert!(cli(&["group", "describe", "g"], "").contains("events"));
    cli(&["topic", "delete", "events"], "");
    // The group had no other commit and no member: it goes too, as in Kafka.
    no_commit_of_events(broker, "g", "the commit of events deleted", 10).await;
    let new: String = (0..20).map(|i| format!("new{i}\n")).collect();
    cli(&create, "");
    cli(&["produce", "events", "--acks", "all"], &new);
    assert_eq!(consume("3"), "new0\nnew1\nnew2\n");
    let new_id = ids();
    assert_ne!(new_id, old_id, "the topic created again has a new ID");
    // Deleted by ID through a broker that is not the controller: the old ID names
    // no topic, the new one this one.
    let admin = cluster.brokers_ref(broker_id).client().await.admin();
    let e = admin
        .delete_topic_by_id(old_id.parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownTopicId), "{e}");
    let deleted = admin.delete_topic_by_id(new_id.parse().unwrap()).await;
    assert_eq!(deleted.unwrap(), "events");
    for id in 1..=3 {
        let topics = cluster.topics_at(id).await;
        assert!(topics.is_empty(), "broker {id}: {topics:?}");
    }
}

/// A group's coordinator that was down while a topic was deleted (the only
/// replica of the group's `__consumer_offsets` partition, so nobody wrote the
/// tombstones) drops that topic's commits when it loads the group again: the topic
/// created again under the name is read from its start, not from the old commit.
#[tokio::test]
async fn commits_of_a_topic_deleted_while_their_coordinator_was_down_are_dropped() {
    commits_outlive_their_topic_while_the_coordinator_is_down(false).await;
}

/// As above, the topic created again (and written to) before the coordinator
/// returns: the commit names the old topic's incarnation, and is dropped.
#[tokio::test]
async fn commits_of_a_topic_deleted_and_created_again_while_their_coordinator_was_down_are_dropped()
{
    commits_outlive_their_topic_while_the_coordinator_is_down(true).await;
}

async fn commits_outlive_their_topic_while_the_coordinator_is_down(recreate_while_down: bool) {
    use meridian_wire::messages::FindCoordinatorRequest;

    let mut cluster = TestCluster::start_with(
        "offsets_topic_num_partitions = 3\n",
        "offsets_topic_replication_factor = 1\n",
    );
    cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let offsets = cluster.agreed_offsets_topic().await;
    let mut events = NewTopic::new("events", 1);
    events.replication_factor = 1;
    cluster
        .client(1)
        .await
        .admin()
        .create_topic(events.clone())
        .await
        .unwrap();
    let mut host = cluster
        .agreed_topic("events", Duration::from_secs(10), |v| {
            v[0].leader != NO_BROKER
        })
        .await[0]
        .leader;
    // The controller creates the offsets topic once one broker is up, so all its
    // partitions may lie on one broker; if that one hosts `events` too, no group is
    // coordinated elsewhere: `events` moves.
    if offsets.iter().all(|p| p.leader == host) {
        let elsewhere = (1..=3).find(|b| *b != host).unwrap();
        let (ok, out, err) = cluster.brokers_ref(host).cli(
            &[
                "partition",
                "reassign",
                "events",
                "-p",
                "0",
                "--replicas",
                &elsewhere.to_string(),
                "--wait",
            ],
            "",
        );
        assert!(ok, "{out}{err}");
        host = cluster
            .agreed_topic("events", Duration::from_secs(20), |v| {
                v[0].leader == elsewhere && v[0].replicas == [elsewhere]
            })
            .await[0]
            .leader;
    }
    // A group whose coordinator does not host `events` (a host would delete the
    // commits as it drops its copy of the topic on return).
    let client = cluster.client(host).await;
    let mut found = None;
    for i in 0..64 {
        let group = format!("g{i}");
        let response = client
            .request(Request::FindCoordinator(FindCoordinatorRequest {
                group_id: group.clone(),
            }))
            .await
            .unwrap();
        let Response::FindCoordinator(r) = response else {
            panic!("{response:?}")
        };
        assert_eq!(r.error, ErrorCode::None, "{}", r.message);
        if r.broker_id != host {
            found = Some((group, r.broker_id));
            break;
        }
    }
    let (group, coordinator) = found.expect("a group coordinated elsewhere");
    // The third broker.
    let live = 6 - host - coordinator;
    let cli = |broker: &TestBroker, args: &[&str], input: &str| {
        let (ok, out, err) = broker.cli(args, input);
        assert!(ok, "{args:?}: {err}");
        out
    };
    let consume = [
        "consume", "events", "--group", &group, "--from", "earliest", "-n",
    ];
    let create = [
        "topic",
        "create",
        "events",
        "-p",
        "1",
        "--replication-factor",
        "1",
    ];
    let old: String = (0..10).map(|i| format!("old{i}\n")).collect();
    let new: String = (0..20).map(|i| format!("new{i}\n")).collect();
    let at_host = cluster.brokers_ref(host);
    cli(at_host, &["produce", "events", "--acks", "all"], &old);
    cli(at_host, &[&consume[..], &["10"]].concat(), "");
    let described = cli(at_host, &["group", "describe", &group], "");
    assert!(described.contains("events"), "{described}");

    cluster.broker(coordinator).kill9();
    let at_live = cluster.brokers_ref(live);
    cli(at_live, &["topic", "delete", "events"], "");
    if recreate_while_down {
        cli(at_live, &create, "");
        cli(at_live, &["produce", "events", "--acks", "all"], &new);
    }
    cluster.broker(coordinator).restart();
    no_commit_of_events(
        cluster.brokers_ref(live),
        &group,
        "the returned coordinator to serve the group without the commit",
        30,
    )
    .await;
    let back = cluster.brokers_ref(coordinator);
    if !recreate_while_down {
        cli(back, &create, "");
        cli(back, &["produce", "events", "--acks", "all"], &new);
    }
    let read = cli(back, &[&consume[..], &["3"]].concat(), "");
    assert_eq!(read, "new0\nnew1\nnew2\n");
}

/// The controller creates `__consumer_offsets` once every voter is live, not as
/// soon as enough brokers are for its replication factor: its partitions stay where
/// they were placed, and their leaders coordinate the groups, so a region whose
/// brokers come up one by one gets coordinators on all of them. Until then a group
/// request is told why it waits.
#[tokio::test]
async fn the_offsets_topic_waits_for_every_voter_and_spreads_the_coordinators() {
    use meridian_wire::messages::FindCoordinatorRequest;

    let (mut cluster, down) = TestCluster::start_partly(
        "offsets_topic_num_partitions = 3\n",
        "offsets_topic_replication_factor = 1\noffsets_topic_create_wait_ms = 600000\n",
        2,
    );
    cluster.agreed_controller(2, Duration::from_secs(20)).await;
    let client = cluster.client(1).await;
    // Two brokers are enough for its replication factor; the third voter is down.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let response = client
            .request(Request::FindCoordinator(FindCoordinatorRequest {
                group_id: "billing".into(),
            }))
            .await
            .unwrap();
        let Response::FindCoordinator(r) = response else {
            panic!("{response:?}")
        };
        assert_eq!(r.error, ErrorCode::CoordinatorNotAvailable, "{r:?}");
        assert!(
            r.message.contains("offsets_topic_create_wait_ms"),
            "{}",
            r.message
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all = cluster.metadata_everywhere().await;
    for m in all.values() {
        let m = m.as_ref().expect("metadata");
        assert!(m.topics.iter().all(|t| t.name != "__consumer_offsets"));
    }
    cluster.add_broker(down[0]);
    let offsets = cluster.agreed_offsets_topic().await;
    let leaders: std::collections::BTreeSet<u32> = offsets.iter().map(|p| p.leader).collect();
    assert_eq!(leaders, [1, 2, 3].into(), "{offsets:?}");
}

/// A voter that stays down holds the offsets topic back for
/// `offsets_topic_create_wait_ms` only: then it is created on the brokers that are
/// live, and groups work.
#[tokio::test]
async fn the_offsets_topic_is_created_without_a_voter_that_stays_down() {
    let (cluster, _down) = TestCluster::start_partly(
        "offsets_topic_num_partitions = 3\n",
        "offsets_topic_replication_factor = 1\noffsets_topic_create_wait_ms = 1000\n",
        2,
    );
    let offsets = cluster.agreed_offsets_topic().await;
    let leaders: std::collections::BTreeSet<u32> = offsets.iter().map(|p| p.leader).collect();
    assert_eq!(leaders, [1, 2].into(), "{offsets:?}");
    let at = cluster.brokers_ref(1);
    let (ok, _, err) = at.cli(
        &[
            "topic",
            "create",
            "events",
            "-p",
            "1",
            "--replication-factor",
            "2",
        ],
        "",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = at.cli(&["produce", "events", "--acks", "all"], "a\nb\n");
    assert!(ok, "{err}");
    let (ok, out, err) = at.cli(
        &[
            "consume", "events", "--group", "g", "--from", "earliest", "-n", "2",
        ],
        "",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "a\nb\n");
    let (ok, out, err) = at.cli(&["group", "describe", "g"], "");
    assert!(ok && out.contains("events"), "{out}{err}");
}

/// Waits until `group describe GROUP` (asked of `broker`) shows no commit of
/// `events`, or the group is gone.
async fn no_commit_of_events(broker: &TestBroker, group: &str, what: &str, seconds: u64) {
    wait_for(what, Duration::from_secs(seconds), || async {
        let (ok, out, err) = broker.cli(&["group", "describe", group], "");
        let gone = if ok {
            !out.contains("events")
        } else {
            err.contains("does not exist")
        };
        gone.then_some(())
    })
    .await;
}

/// Brokers of a region killed (kill -9) and restarted, ten times, one or two at
/// a time (two: the metadata quorum and acks=all both stall until one is back),
/// while an idempotent producer sends with acks=all to six partitions (RF 3,
/// min.insync.replicas 2) through a client of one broker, and a group of two
/// consumers reads and commits after every poll: every record acknowledged is in
/// the log exactly once, at the offset its acknowledgement named, each key's
/// records in the order they were sent; the group reads every one of them; and no
/// commit fails but for the group's membership (a member fenced): not for a
/// connection the coordinator's death cut (the client sends it again to the next
/// coordinator, as Kafka's `commitSync` does), nor for the offsets partition's
/// leadership moving (that is `NotCoordinator`, which the client follows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_killed_and_restarted_lose_no_acknowledged_record() {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let mut cluster = chaos_region("").await;
    let client = cluster.client(1).await;
    let producer = client.producer(ProducerConfig {
        acks: Acks::All,
        linger: Duration::from_millis(2),
        batch_size: 4096,
        ..ProducerConfig::default()
    });
    let stop_sending = Arc::new(AtomicBool::new(false));
    let sending = {
        let (producer, stop) = (producer.clone(), stop_sending.clone());
        tokio::spawn(async move {
            let mut deliveries = Vec::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let record =
                    ProducerRecord::new("chaos", format!("{i:08}")).key(format!("k{}", i % 97));
                deliveries.push((i, producer.send(record).await.unwrap()));
                i += 1;
                if i.is_multiple_of(20) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            let mut acknowledged = Vec::new();
            let mut failed = 0usize;
            for (i, d) in deliveries {
                match d.await {
                    Ok(m) => acknowledged.push((i, m.partition, Some(m.offset))),
                    Err(_) => failed += 1,
                }
            }
            (acknowledged, failed)
        })
    };
    let read_by_group = Arc::new(Mutex::new(BTreeSet::new()));
    let stop_reading = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for id in [2, 3] {
        let client = cluster.client(id).await;
        let (read, stop) = (read_by_group.clone(), stop_reading.clone());
        readers.push(tokio::spawn(async move {
            let mut consumer = client.consumer(ConsumerConfig {
                auto_offset_reset: AutoOffsetReset::Earliest,
                ..ConsumerConfig::default()
            });
            let config = GroupConfig {
                session_timeout: Duration::from_secs(6),
                enable_auto_commit: false,
                ..GroupConfig::new("readers")
            };
            consumer.subscribe(config, &["chaos"]).await.unwrap();
            let mut failed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match consumer.poll(Duration::from_millis(100)).await {
                    Ok(records) => read.lock().unwrap().extend(records.iter().map(value_of)),
                    Err(e) => eprintln!("poll failed: {e}"),
                }
                match consumer.commit().await {
                    // A rebalance may fence a commit; that is the caller's to handle.
                    Err(e)
                        if matches!(
                            e.code(),
                            Some(ErrorCode::IllegalGeneration | ErrorCode::UnknownMemberId)
                        ) =>
                    {
                        eprintln!("commit failed: {e}")
                    }
                    Err(e) => failed.push(e.to_string()),
                    Ok(()) => {}
                }
            }
            failed
        }));
    }

    kill_and_restart_in_rounds(&mut cluster).await;
    stop_sending.store(true, Ordering::Relaxed);
    let (acknowledged, failed) = tokio::time::timeout(Duration::from_secs(120), sending)
        .await
        .expect("every delivery ends")
        .unwrap();
    assert!(
        acknowledged.len() > 1_000,
        "{} acknowledged, {failed} failed",
        acknowledged.len()
    );

    // The group reads every acknowledged record (at least once).
    let wanted: BTreeSet<u32> = acknowledged.iter().map(|a| a.0).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = wanted.difference(&read_by_group.lock().unwrap()).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group has not read {missing} acknowledged records"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_reading.store(true, Ordering::Relaxed);
    for reader in readers {
        let failed = reader.await.unwrap();
        assert!(failed.is_empty(), "commits failed: {failed:?}");
    }

    let in_log = check_log_of_chaos(&cluster, &acknowledged, false).await;
    eprintln!(
        "{} acknowledged, {failed} failed, {in_log} in the log",
        acknowledged.len()
    );
}

/// The same faults under Kafka clients: librdkafka's idempotent producer
/// (acks=all) writes to `chaos` through the region's Kafka listeners, and a
/// group of two librdkafka consumers reads it and commits after every poll,
/// while brokers are killed and restarted as above. Every record librdkafka
/// acknowledged is in the log once (once per producer epoch: librdkafka sends
/// again what it holds after bumping its own, see [`check_log_of_chaos`]), at
/// the offset it was told, each key's
/// records in order; the group reads all of them; librdkafka neither gives up
/// on a record nor raises a fatal error (an idempotent producer's answer to a
/// broker losing or reordering what it wrote) and sends every record (unless
/// stuck on a broker that does not lead the partition, librdkafka's issue
/// 4976, which it then says), and a commit fails only as
/// coordinators moving make it. Without the listener's produce order this
/// failed four runs in five (a fatal error); without its start-up wait, one in
/// three (a consumer stuck for good: a restarted broker's first Metadata answer
/// named it alone, and librdkafka forgot the group's coordinator). Its clients
/// do not re-bootstrap (`metadata.recovery.strategy=none`): after one, with two
/// brokers killed at once, a 2.16.1 consumer hung for good now and then, its
/// `close()` never returning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_clients_lose_no_acknowledged_record_when_brokers_are_killed() {
    let Some(python) = std::env::var_os("KAFKA_PYTHON_FOR_TESTS") else {
        println!("skipped: KAFKA_PYTHON_FOR_TESTS is not set (.ci/run installs it and sets it)");
        return;
    };
    // `ready`: librdkafka sends.
    let (cluster, seen, acknowledged) = kafka_client_under_kills(|bootstrap| {
        librdkafka_ready(&python, bootstrap, "chaos", "chaos")
    })
    .await;
    let summary = format!(
        "failed {}, unsent {}, unread {}, commit errors {}, consumer errors {}, fatal {}; \
         members {}",
        seen["failed"],
        seen["unsent"],
        seen["unread"],
        seen["commit_errors"],
        seen["consumer_errors"],
        seen["fatal"],
        seen["members"]
    );
    check_client_run(&cluster, &acknowledged, &seen, &summary).await;
    assert!(seen["fatal"].is_null(), "{summary}");
    assert_eq!(seen["failed"], serde_json::json!({}), "{summary}");
    // Records still held after two minutes are librdkafka's only when it is stuck
    // sending a partition to a broker other than the leader it was told of (its
    // issue 4976; `Delegations` in librdkafka.py).
    let stuck = seen["stuck"].as_array().map_or(0, Vec::len);
    if seen["unsent"] != 0 && stuck > 0 {
        eprintln!(
            "librdkafka kept {} records unsent, stuck sending partitions to brokers \
             that do not lead them though told who does ([partition, sent to, leader]: \
             {}): librdkafka's issue 4976, not the broker's",
            seen["unsent"], seen["stuck"]
        );
    } else {
        assert_eq!(seen["unsent"], 0, "stuck {}; {summary}", seen["stuck"]);
    }
    // librdkafka hands a manual commit's failure to the application rather than
    // retry it: these are the ones a commit meets while its group's coordinator
    // moves or the member's session lapses with its coordinator gone.
    let expected = [
        "NOT_COORDINATOR",
        "COORDINATOR_NOT_AVAILABLE",
        "COORDINATOR_LOAD_IN_PROGRESS",
        "_WAIT_COORD",
        "_TRANSPORT",
        "_TIMED_OUT",
        "UNKNOWN_MEMBER_ID",
        "ILLEGAL_GENERATION",
        "REBALANCE_IN_PROGRESS",
    ];
    assert_commit_errors_among(&seen, &expected, &summary);
}

/// The same faults under KafkaJS (the pure-JavaScript client): six idempotent
/// producers, one a partition, send to `chaos` through the region's Kafka
/// listeners, 8 records a send, one send at a time (acks=all), and a group of
/// two KafkaJS consumers reads it, committing as KafkaJS does by default. Every
/// record of a send KafkaJS answered is in the log once, at the offset it was
/// told, each key's records in order; the group reads all of them, and no
/// consumer stops for good. A send whose retries run out is the application's
/// to handle: it replaces the producer (README "Kafka clients" says why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafkajs_loses_no_acknowledged_record_when_brokers_are_killed() {
    let Some(modules) = std::env::var_os("KAFKAJS_FOR_TESTS") else {
        println!("skipped: KAFKAJS_FOR_TESTS is not set (.ci/run installs kafkajs and sets it)");
        return;
    };
    let mut node = std::process::Command::new("node");
    node.env("NODE_PATH", modules);
    let (cluster, seen, acknowledged) = kafka_client_under_kills(|bootstrap| {
        script_ready(node, "kafkajs.js", &[bootstrap, "chaos", "chaos"])
    })
    .await;
    let summary = format!(
        "failed {}, unread {}, crashes {}, leave errors {}; members {}",
        seen["failed"], seen["unread"], seen["crashes"], seen["leaveErrors"], seen["members"]
    );
    check_client_run(&cluster, &acknowledged, &seen, &summary).await;
    // A consumer may stop on an error and start again (KafkaJS restarts it on
    // retriable ones), but none gives up; a LeaveGroup at the end may miss a
    // coordinator that moved, no other way.
    let crashes = seen["crashes"].as_array().unwrap();
    assert!(crashes.iter().all(|c| c["restart"] == true), "{summary}");
    let leave_errors = seen["leaveErrors"].as_object().unwrap();
    assert!(
        leave_errors
            .keys()
            .all(|why| !why.ends_with("(not retriable)")),
        "{summary}"
    );
}

/// The same faults under kafka-python 3 (pure Python, its producer idempotent by
/// default): a producer (acks=all) and a group of two consumers committing after
/// every poll that read something (`tests/kafka/chaos.py`). Every record
/// kafka-python acknowledged is in the log once, at the offset it was told, each
/// key's records in order; the group reads all of them; kafka-python gives up on
/// no record, and a commit or poll fails only as coordinators moving and brokers
/// killed make it. (A member that stopped at a poll's `KafkaConnectionError`
/// read nothing more: one run in about twenty-five.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_loses_no_acknowledged_record_when_brokers_are_killed() {
    let Some(python) = std::env::var_os("KAFKA_PYTHON_FOR_TESTS") else {
        println!("skipped: KAFKA_PYTHON_FOR_TESTS is not set (.ci/run installs it and sets it)");
        return;
    };
    let python = std::process::Command::new(python);
    let (cluster, seen, acknowledged) = kafka_client_under_kills(|bootstrap| {
        script_ready(python, "chaos.py", &[bootstrap, "chaos"])
    })
    .await;
    let summary = format!(
        "failed {}, unsent {}, unread {}, commit errors {}, poll errors {}; members {}",
        seen["failed"],
        seen["unsent"],
        seen["unread"],
        seen["commit_errors"],
        seen["poll_errors"],
        seen["members"]
    );
    check_client_run(&cluster, &acknowledged, &seen, &summary).await;
    assert_eq!(seen["failed"], serde_json::json!({}), "{summary}");
    assert_eq!(seen["unsent"], 0, "{summary}");
    // kafka-python 3.0.12's poll() raises a failed metadata refresh (a killed
    // broker refusing the connection) that its coordinator lookup met; the
    // script's members poll again, as an application would.
    let poll_errors = seen["poll_errors"].as_object().unwrap();
    assert!(
        poll_errors.keys().all(|e| [
            "KafkaConnectionError",
            "NodeNotReadyError",
            "KafkaTimeoutError"
        ]
        .contains(&e.as_str())),
        "{summary}"
    );
    // kafka-python raises a commit's failure to the application when its
    // coordinator is gone or moving, or the group rebalanced under it.
    let expected = [
        "KafkaConnectionError",
        "NodeNotReadyError",
        "KafkaTimeoutError",
        "RequestTimedOutError",
        "NotCoordinatorError",
        "CoordinatorNotAvailableError",
        "CoordinatorLoadInProgressError",
        "CommitFailedError",
        "UnknownMemberIdError",
        "IllegalGenerationError",
        "RebalanceInProgressError",
    ];
    assert_commit_errors_among(&seen, &expected, &summary);
}

/// A Kafka client's kill run, checked: it had more than a thousand records
/// acknowledged, no member of its group died (`crash`), each record is where it
/// was told ([`check_log_of_chaos`]), and its group read them all
/// ([`assert_group_read_all`]). `summary` says what else the
/// client saw (`seen`).
async fn check_client_run(
    cluster: &TestCluster,
    acknowledged: &[(u32, u32, Option<i64>)],
    seen: &serde_json::Value,
    summary: &str,
) {
    assert!(
        acknowledged.len() > 1_000,
        "{} acknowledged; {summary}",
        acknowledged.len()
    );
    eprintln!("{summary}");
    // A member whose thread died on an error of the client's says so.
    if let Some(crash) = seen["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|m| m["crash"].as_str())
    {
        panic!("a member of the group died: {crash}\n(a member of the group died; {summary})");
    }
    let in_log = check_log_of_chaos(cluster, acknowledged, true).await;
    assert_group_read_all(cluster, seen, summary).await;
    eprintln!(
        "{} acknowledged, {in_log} in the log; {summary}",
        acknowledged.len()
    );
}

/// Fails, with what the group's coordinator says of it, unless the client's
/// group (`chaos-readers`) read every record acknowledged (`seen["unread"]`).
async fn assert_group_read_all(cluster: &TestCluster, seen: &serde_json::Value, summary: &str) {
    if seen["unread"] == 0 {
        return;
    }
    let described = match cluster
        .client(2)
        .await
        .admin()
        .describe_group("chaos-readers")
        .await
    {
        Ok(group) => format!("{group:?}"),
        Err(e) => format!("not described: {e}"),
    };
    // The summary last as well: a reader of the output's end sees it.
    panic!(
        "the group did not read everything: {summary}; its coordinator: {described}; the \
         client's log ends: {}\n(the group did not read everything: {summary})",
        seen["log"].as_str().unwrap_or("")
    );
}

/// Fails unless each kind of commit error the client counted
/// (`seen["commit_errors"]`, kind → count) is one of `expected`.
fn assert_commit_errors_among(seen: &serde_json::Value, expected: &[&str], summary: &str) {
    let commit_errors = seen["commit_errors"].as_object().unwrap();
    assert!(
        commit_errors.keys().all(|e| expected.contains(&e.as_str())),
        "{summary}"
    );
}

/// `tests/kafka/librdkafka.py ACTION PREFIX` against a region's Kafka listeners
/// (`bootstrap`, comma-separated), once it has printed `ready`, and its output
/// from there on.
fn librdkafka_ready(
    python: &std::ffi::OsStr,
    bootstrap: &str,
    action: &str,
    prefix: &str,
) -> (Script, ScriptOutput) {
    let args = [bootstrap, "{}", action, prefix];
    script_ready(std::process::Command::new(python), "librdkafka.py", &args)
}

/// What a client script prints (after its `ready`).
type ScriptOutput = std::io::BufReader<std::process::ChildStdout>;

/// The last `bytes` (about: whole characters) of `text`.
fn tail(text: &str, bytes: usize) -> &str {
    let from = text.len().saturating_sub(bytes);
    let from = (from..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[from..]
}

/// A client script running.
struct Script {
    /// Its stdin is piped: a line on it tells the scripts that wait for one to stop.
    child: std::process::Child,
    /// Its stderr, read as it comes: a pipe nobody reads fills at 64 KiB, and a
    /// client logging into it then stops where it logs (librdkafka's and
    /// kafka-python's warnings of refused connections, in the kill tests, did:
    /// their consumers read nothing more, or the script hung).
    stderr: std::thread::JoinHandle<String>,
}

impl Script {
    /// Waits for the script to end, checks it ended well, and returns what it
    /// printed last (`rest`, its output read to the end), with the end of what
    /// it logged (stderr) as `log`.
    fn answer(self, rest: &str) -> serde_json::Value {
        let mut child = self.child;
        let status = child.wait().unwrap();
        let stderr = self.stderr.join().unwrap();
        // All of it, for a run that needs more than its end: each script's log
        // to a file of its own in `CLIENT_LOGS_FOR_TESTS` (a directory).
        if let Some(dir) = std::env::var_os("CLIENT_LOGS_FOR_TESTS") {
            let file = std::path::Path::new(&dir).join(format!("client-{}.log", child.id()));
            let _ = std::fs::write(file, &stderr);
        }
        assert!(
            status.success(),
            "{rest}{}\n(the client script failed: {status})",
            tail(&stderr, 8_000)
        );
        let mut seen: serde_json::Value = serde_json::from_str(rest.trim()).expect(rest);
        seen["log"] = serde_json::Value::from(tail(&stderr, 8_000));
        seen
    }

    /// Kills the script and returns what it logged.
    fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr.join().unwrap()
    }
}

/// `tests/kafka/SCRIPT ARGS` run by `program` (an interpreter), once it has
/// printed `ready`, and its output from there on.
fn script_ready(
    mut program: std::process::Command,
    script: &str,
    args: &[&str],
) -> (Script, ScriptOutput) {
    use std::io::BufRead;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("kafka")
        .join(script);
    let mut child = program
        .arg(&path)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut all);
        String::from_utf8_lossy(&all).into_owned()
    });
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    let running = Script { child, stderr };
    if ready.trim() != "ready" {
        let log = running.kill();
        panic!(
            "{script} {args:?} printed {ready:?}; its log ends: {}\n({script} did not start)",
            tail(&log, 8_000)
        );
    }
    (running, stdout)
}

/// A Kafka client's kill run: a [`chaos_region`] with a Kafka listener on each
/// broker; `start` starts the client script against the listeners (their
/// comma-separated list) and returns once it has printed `ready`; the brokers
/// are killed and restarted in rounds under it ([`kill_and_restart_in_rounds`]);
/// then it is told to stop (a line on its stdin). Returns the region, what the
/// script printed last, and its `acknowledged` records: (number, partition,
/// offset if known).
async fn kafka_client_under_kills(
    start: impl FnOnce(&str) -> (Script, ScriptOutput),
) -> (TestCluster, serde_json::Value, Vec<(u32, u32, Option<i64>)>) {
    use std::io::Write;
    let mut cluster = chaos_region("kafka_listen = \"{kafka_listen}\"").await;
    let (mut script, mut stdout) = start(&cluster.kafka.join(","));
    kill_and_restart_in_rounds(&mut cluster).await;
    let mut stdin = script.child.stdin.take().unwrap();
    // Gone already if the client failed: its output says why.
    let _ = stdin.write_all(b"stop\n");
    drop(stdin);
    let reading = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        rest
    });
    let Ok(rest) = tokio::time::timeout(Duration::from_secs(300), reading).await else {
        let log = script.kill();
        panic!(
            "the client did not end in 300 s; its log ends: {}\n(the client did not end in 300 s)",
            tail(&log, 8_000)
        );
    };
    let seen = script.answer(&rest.unwrap());
    let acknowledged = serde_json::from_value(seen["acknowledged"].clone()).unwrap();
    (cluster, seen, acknowledged)
}

/// Partitions of the topic `chaos` the kill tests write to.
const CHAOS_PARTITIONS: u32 = 6;

/// Three brokers (each with `settings`) and topic `chaos`: six partitions, RF 3,
/// `min.insync.replicas` 2, every replica in sync.
async fn chaos_region(settings: &str) -> TestCluster {
    let cluster = TestCluster::start(settings);
    let controller = cluster.agreed_controller(3, Duration::from_secs(20)).await;
    cluster
        .client(controller)
        .await
        .admin()
        .create_topic(rf3("chaos", CHAOS_PARTITIONS).config("min.insync.replicas", "2"))
        .await
        .unwrap();
    cluster
        .agreed_topic("chaos", Duration::from_secs(20), all_in_sync)
        .await;
    cluster
}

fn all_in_sync(partitions: &[PartitionView]) -> bool {
    partitions.iter().all(|p| p.isr.len() == 3)
}

/// Kills (kill -9) and restarts the region's brokers ten times, one or two at a
/// time (two: the metadata quorum and acks=all both stall until one is back),
/// then waits until every replica of `chaos` is in sync again.
async fn kill_and_restart_in_rounds(cluster: &mut TestCluster) {
    let rounds: [&[u32]; 10] = [
        &[2],
        &[3],
        &[1, 2],
        &[3],
        &[1],
        &[2, 3],
        &[1],
        &[3],
        &[2],
        &[1, 3],
    ];
    for victims in rounds {
        tokio::time::sleep(Duration::from_millis(700)).await;
        for id in victims {
            cluster.broker(*id).kill9();
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
        for id in victims {
            cluster.broker(*id).restart();
        }
    }
    cluster
        .agreed_topic("chaos", Duration::from_secs(60), all_in_sync)
        .await;
}

/// Reads `chaos` back from broker 2 (killed twice by the rounds) and checks
/// every record acknowledged (number, partition, offset) is there once, where
/// its acknowledgement said, and each key's records are in the order sent.
/// Returns how many records the log holds.
///
/// An acknowledgement without an offset is librdkafka's implicit one: a request
/// whose answer was lost, followed by one of the same partition the broker
/// took, was written too (sequence numbers say so), but where is not known.
/// Such a record must be in its partition, once.
///
/// Once, that is, per producer epoch: with `resent_under_new_epoch`, a record may
/// be there twice if the second copy's batch is the same producer's under a later
/// epoch ([`copies_of`] tells from the segments). librdkafka's idempotent producer
/// bumps its own epoch after some errors (a batch refused as out of sequence
/// because the one before it failed) and then sends again, from sequence 0, the
/// records it still holds, among them those whose answer was lost with a killed
/// broker: to the broker those are new records. Meridian's client never does.
async fn check_log_of_chaos(
    cluster: &TestCluster,
    acknowledged: &[(u32, u32, Option<i64>)],
    resent_under_new_epoch: bool,
) -> usize {
    use std::collections::HashMap;
    let reader = cluster.client(2).await;
    let mut consumer = reader.consumer(ConsumerConfig::default());
    consumer.assign_all("chaos").await.unwrap();
    let mut ends = BTreeMap::new();
    for p in 0..CHAOS_PARTITIONS {
        consumer.seek("chaos", p, Offset::Earliest).await.unwrap();
        let end = reader
            .admin()
            .list_offsets("chaos", p, Offset::Latest)
            .await
            .unwrap();
        ends.insert(p, end);
    }
    // Each record's place: (partition, offset).
    let mut in_log: HashMap<u32, (u32, i64)> = HashMap::new();
    // A record's second copy (number, first place, this place).
    let mut again: Vec<(u32, Place, Place)> = Vec::new();
    let mut by_key: BTreeMap<Vec<u8>, Vec<u32>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ends
        .iter()
        .any(|(p, end)| consumer.position("chaos", *p).unwrap() < *end)
    {
        assert!(Instant::now() < deadline, "reading the log back");
        for r in consumer.poll(Duration::from_secs(1)).await.unwrap() {
            let value = value_of(&r);
            if let Some(first) = in_log.get(&value) {
                again.push((value, *first, (r.partition, r.offset)));
                continue;
            }
            in_log.insert(value, (r.partition, r.offset));
            by_key
                .entry(r.key.unwrap().to_vec())
                .or_default()
                .push(value);
        }
    }
    let copies = copies_of(cluster, &again);
    let unexplained: Vec<&String> = copies
        .iter()
        .filter_map(|(copy, resent)| (!(resent_under_new_epoch && *resent)).then_some(copy))
        .collect();
    for (copy, _) in &copies {
        eprintln!("{copy}");
    }
    if let Some((value, ..)) = again.first() {
        let told: Vec<_> = acknowledged.iter().filter(|a| a.0 == *value).collect();
        assert!(
            unexplained.is_empty(),
            "{} records written twice: {:?}; record {value} acknowledged as {told:?} \
             (number, partition, offset)",
            unexplained.len(),
            &unexplained[..unexplained.len().min(5)]
        );
    }
    // Every record not where its acknowledgement said, and what is there instead.
    let at: HashMap<(u32, i64), u32> = in_log.iter().map(|(i, place)| (*place, *i)).collect();
    let second: HashMap<u32, (u32, i64)> = again.iter().map(|(i, _, place)| (*i, *place)).collect();
    let misplaced: Vec<String> = acknowledged
        .iter()
        .filter(|(i, partition, offset)| {
            let found = [in_log.get(i), second.get(i)];
            match offset {
                Some(offset) => !found.contains(&Some(&(*partition, *offset))),
                None => found[0].map(|(p, _)| p) != Some(partition),
            }
        })
        .map(|(i, partition, offset)| {
            let there = offset.and_then(|o| at.get(&(*partition, o)));
            format!(
                "{i} acknowledged at {partition}/{offset:?}: found at {:?}, {there:?} there",
                in_log.get(i)
            )
        })
        .collect();
    assert!(
        misplaced.is_empty(),
        "{} acknowledged records not where they were acknowledged (log ends {ends:?}): {:?}",
        misplaced.len(),
        &misplaced[..misplaced.len().min(20)]
    );
    for (key, values) in by_key {
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "records of key {} out of order",
            String::from_utf8_lossy(&key)
        );
    }
    in_log.len()
}

/// The log check's verdict on a record found twice: the same producer sending it
/// again under a later epoch (as librdkafka does after bumping its epoch) is told
/// apart from any other second copy, from the batches broker 2 stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_check_tells_a_record_sent_again_under_a_later_epoch() {
    use bytes::Bytes;
    use meridian_wire::batch::{encode_batch, Compression, NewRecord, ProducerIdentity};
    let cluster = chaos_region("").await;
    let views = cluster
        .agreed_topic("chaos", Duration::from_secs(20), all_in_sync)
        .await;
    let client = cluster.client(views[0].leader).await;
    let producer_id = crate::idempotence::producer_id(&client).await;
    let record = |producer: ProducerIdentity| {
        let record = NewRecord {
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from_static(b"k1")),
            value: Some(Bytes::from_static(b"00000001")),
            headers: vec![],
        };
        encode_batch(&[record], Compression::None, producer).unwrap()
    };
    let epoch = |producer_epoch| ProducerIdentity {
        producer_id,
        producer_epoch,
        base_sequence: 0,
    };
    // Offsets 0 and 1: epoch 0, then the same record again under epoch 1; offset
    // 2: once more, from a producer without idempotence.
    for (batch, offset) in [
        (record(epoch(0)), 0),
        (record(epoch(1)), 1),
        (record(ProducerIdentity::NONE), 2),
    ] {
        let sent = crate::idempotence::send(&client, "chaos", batch).await;
        assert_eq!(sent, (ErrorCode::None, offset));
    }
    let copies = copies_of(&cluster, &[(1, (0, 0), (0, 1)), (1, (0, 1), (0, 2))]);
    let verdicts: Vec<bool> = copies.iter().map(|(_, resent)| *resent).collect();
    assert_eq!(verdicts, [true, false], "{copies:?}");
    assert!(
        copies[0]
            .0
            .contains(&format!("\"producer_id\":{producer_id}")),
        "{copies:?}"
    );
}

/// Where a record of `chaos` is: (partition, offset).
type Place = (u32, i64);

/// Each record `check_log_of_chaos` found twice (number, first place, second
/// place), described from the batches of broker 2's segments that hold the two
/// copies (`meridian dump-log`), and whether the second is the same producer's
/// under a later epoch.
fn copies_of(cluster: &TestCluster, again: &[(u32, Place, Place)]) -> Vec<(String, bool)> {
    use std::collections::HashMap;
    let mut batches: HashMap<u32, Vec<serde_json::Value>> = HashMap::new();
    let mut batch_of = |(partition, offset): (u32, i64)| -> serde_json::Value {
        let dumped = batches.entry(partition).or_insert_with(|| {
            let dir = cluster
                .brokers_ref(2)
                .data_dir
                .join(format!("topics/chaos/{partition}"));
            let out = std::process::Command::new(crate::harness::meridian_bin())
                .arg("dump-log")
                .arg("--json")
                .arg(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "dump-log {}: {}{}",
                dir.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect()
        });
        let batch = dumped.iter().find(|b| {
            b["base_offset"].as_i64() <= Some(offset) && Some(offset) <= b["last_offset"].as_i64()
        });
        let mut batch = batch.cloned().unwrap_or_default();
        if let serde_json::Value::Object(fields) = &mut batch {
            let shown = [
                "base_offset",
                "last_offset",
                "partition_leader_epoch",
                "producer_id",
                "producer_epoch",
                "base_sequence",
            ];
            fields.retain(|k, _| shown.contains(&k.as_str()));
        }
        batch
    };
    again
        .iter()
        .map(|(value, first, second)| {
            let (a, b) = (batch_of(*first), batch_of(*second));
            let producer = a["producer_id"].as_i64().filter(|id| *id >= 0);
            let resent = producer.is_some()
                && a["producer_id"] == b["producer_id"]
                && b["producer_epoch"].as_i64() > a["producer_epoch"].as_i64();
            let copy = format!(
                "record {value} written twice: at {first:?} in batch {a} and at {second:?} \
                 in batch {b} (partition, offset){}",
                if resent {
                    ": the same producer sent it again under a later epoch"
                } else {
                    ""
                }
            );
            (copy, resent)
        })
        .collect()
}

/// A record of `chaos`: its value, the number it was sent as.
fn value_of(r: &ConsumerRecord) -> u32 {
    let value = std::str::from_utf8(r.value.as_ref().unwrap()).unwrap();
    value.parse().unwrap()
}
