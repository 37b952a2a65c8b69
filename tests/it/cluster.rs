//! Three real brokers (`meridian broker` processes) forming a cluster on 127.0.0.1:
//! the Raft metadata quorum, the controller, fencing and leader election, checked
//! through what every broker answers to `Metadata`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use meridian_client::{Acks, Client, NewTopic, Offset, ProducerConfig, ProducerRecord};
use meridian_wire::messages::{MetadataRequest, MetadataResponse, Request, Response, NO_BROKER};
use meridian_wire::ErrorCode;

use crate::harness::TestBroker;

struct TestCluster {
    /// `brokers[i]` has broker id `i + 1`.
    brokers: Vec<TestBroker>,
    _temp: tempfile::TempDir,
}

/// Distinct free UDP ports on 127.0.0.1 (held together while choosing, so distinct).
fn free_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect()
}

impl TestCluster {
    /// Three brokers sharing one TLS identity; `extra` is appended to each config.
    fn start(extra: &str) -> TestCluster {
        let temp = tempfile::tempdir().unwrap();
        let ports = free_ports(3);
        let voters: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("\"{}@127.0.0.1:{port}\"", i + 1))
            .collect();
        let cert = temp.path().join("cert.pem");
        let key = temp.path().join("key.pem");
        let mut brokers = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let id = i + 1;
            let file = temp.path().join(format!("broker-{id}.toml"));
            std::fs::write(
                &file,
                format!(
                    "broker_id = {id}\ntls_cert = {cert:?}\ntls_key = {key:?}\n{extra}\n[cluster]\nvoters = [{}]\n",
                    voters.join(", ")
                ),
            )
            .unwrap();
            let data_dir: PathBuf = temp.path().join(format!("data-{id}"));
            // One at a time: the first generates the shared certificate.
            brokers.push(TestBroker::start_configured(
                &data_dir,
                &file,
                &format!("127.0.0.1:{port}"),
                &[],
            ));
        }
        TestCluster {
            brokers,
            _temp: temp,
        }
    }

    fn broker(&mut self, id: u32) -> &mut TestBroker {
        &mut self.brokers[id as usize - 1]
    }

    fn running(&self) -> Vec<u32> {
        (1..=self.brokers.len() as u32)
            .filter(|id| self.brokers[*id as usize - 1].is_running())
            .collect()
    }

    async fn client(&self, id: u32) -> Client {
        self.brokers[id as usize - 1]
            .client_with(|c| c.request_timeout = Duration::from_secs(3))
            .await
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

    // SIGKILL the controller: the survivors elect a new one and keep serving.
    cluster.broker(controller).kill9();
    let next = cluster.agreed_controller(2, Duration::from_secs(15)).await;
    assert_ne!(next, controller);
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

#[tokio::test]
#[ignore = "since the data plane merged, the ISR of `clean` does not settle on [1] within the \
            wait after its leader (broker 3) is killed; under investigation (issue 4 note)"]
async fn unclean_election_happens_only_where_the_topic_allows_it() {
    let mut cluster = TestCluster::start("replica_lag_time_max_ms = 3000\n");
    cluster.agreed_controller(3, Duration::from_secs(20)).await;
    let admin = cluster.client(1).await.admin();
    admin.create_topic(rf3("clean", 1)).await.unwrap();
    admin
        .create_topic(rf3("unclean", 1).config("unclean.leader.election.enable", "true"))
        .await
        .unwrap();
    // Brokers 2 and 3 die one after the other: each leaves the ISR, so broker 1 is
    // the only in-sync replica.
    for id in [2, 3] {
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
        assert_eq!((v[0].leader, v[0].isr.clone()), (1, vec![1]), "{topic}");
    }
    // Then broker 1 dies too, and 2 and 3 (out of sync) come back: they are a quorum
    // again, and only the topic that allows it gets an out-of-sync leader.
    cluster.broker(1).kill9();
    cluster.broker(2).restart();
    cluster.broker(3).restart();
    cluster.agreed_controller(2, Duration::from_secs(20)).await;
    let unclean = cluster
        .agreed_topic("unclean", Duration::from_secs(15), |v| v[0].leader != 1)
        .await;
    assert!([2, 3].contains(&unclean[0].leader), "{unclean:?}");
    assert_eq!(unclean[0].isr, vec![unclean[0].leader]);
    let clean = cluster
        .agreed_topic("clean", Duration::from_secs(5), |_| true)
        .await;
    assert_eq!(clean[0].leader, NO_BROKER, "no unclean election: {clean:?}");
    assert_eq!(clean[0].error, ErrorCode::LeaderNotAvailable);
    assert_eq!(
        clean[0].isr,
        vec![1],
        "the ISR keeps the replica with the data"
    );
    // The in-sync replica comes back and leads again.
    cluster.broker(1).restart();
    cluster
        .agreed_topic("clean", Duration::from_secs(15), |v| v[0].leader == 1)
        .await;
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
    for id in 1..=3 {
        assert!(cluster.broker(id).data_dir.join("topics/kept/0").is_dir());
    }

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
        .create_topic(NewTopic::new("single", 1))
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
    let via = if controller == 1 { 2 } else { 1 };
    let client = cluster.client(via).await;
    client
        .admin()
        .create_topic(rf3("unpaced", 8))
        .await
        .unwrap();
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
