//! Replication between real brokers: several in-process `meridian_server::Broker`s on
//! 127.0.0.1 with real QUIC between them. The test plays the controller: it creates
//! the topic's replicas, calls `ReplicaManager::apply` with `LeaderAndIsr` records and
//! answers the leaders' ISR proposals.

use std::collections::BTreeSet;
use std::time::Duration;

use meridian_client::Client;
use meridian_core::replication::LeaderAndIsr;
use meridian_wire::batch::split_batches;
use meridian_wire::messages::*;
use meridian_wire::ErrorCode;

use crate::harness::{batch, fetch, produce, Cluster};

const TOPIC: &str = "replicated";
const WAIT: Duration = Duration::from_secs(20);

fn state(leader: u32, leader_epoch: i32, isr: &[u32], partition_epoch: i32) -> LeaderAndIsr {
    LeaderAndIsr {
        leader: Some(leader),
        leader_epoch,
        isr: isr.iter().copied().collect(),
        replicas: vec![1, 2, 3],
        partition_epoch,
    }
}

/// Produces one batch of `value_len` bytes to partition 0; returns (error, base offset).
async fn produce_one(
    client: &Client,
    acks: i8,
    timeout_ms: u32,
    value_len: usize,
) -> (ErrorCode, String, i64) {
    let Request::Produce(mut request) = produce(TOPIC, 0, acks, batch(value_len)) else {
        unreachable!()
    };
    request.timeout_ms = timeout_ms;
    let response = client.request(Request::Produce(request)).await.unwrap();
    let Response::Produce(response) = response else {
        panic!("not a produce response: {response:?}")
    };
    let p = &response.topics[0].partitions[0];
    (p.error, p.message.clone(), p.base_offset)
}

/// A consumer's fetch of partition 0 from `offset`: (error, high watermark, base
/// offsets of the batches returned).
async fn consume(client: &Client, offset: i64, max_wait_ms: u32) -> (ErrorCode, i64, Vec<i64>) {
    let response = client
        .request(fetch(TOPIC, offset, max_wait_ms, 1, 1 << 20))
        .await
        .unwrap();
    let Response::Fetch(response) = response else {
        panic!("not a fetch response")
    };
    let p = &response.topics[0].partitions[0];
    let bases = split_batches(p.records.clone())
        .map(|r| r.unwrap().0.base_offset)
        .collect();
    (p.error, p.high_watermark, bases)
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rf3_copies_batches_byte_for_byte_and_consumers_stop_at_the_high_watermark() {
    let mut cluster = Cluster::start(3, &["replica_fetch_wait_max_ms=200"]).await;
    cluster.create_topic(TOPIC, 1, &[("min.insync.replicas", "2")]);
    cluster.apply(TOPIC, 0, &state(1, 0, &[1, 2, 3], 0));
    let leader = cluster.broker(1).client().await;

    // acks=all: answered only once every in-sync replica has the batch.
    for i in 0..10 {
        let (error, message, base) = produce_one(&leader, -1, 10_000, 100 + i).await;
        assert_eq!(error, ErrorCode::None, "{message}");
        assert_eq!(base, i as i64);
        for id in [2, 3] {
            let status = cluster.broker(id).manager.status(TOPIC, 0).unwrap();
            assert!(
                status.log_end_offset > i as i64,
                "follower {id} has offset {i} when acked"
            );
        }
    }
    // The followers' segments are the leader's bytes, offsets and epochs included.
    let leader_bytes = cluster.broker(1).segment_bytes(TOPIC, 0);
    assert!(!leader_bytes.is_empty());
    for id in [2, 3] {
        assert_eq!(
            cluster.broker(id).segment_bytes(TOPIC, 0),
            leader_bytes,
            "broker {id}"
        );
    }
    let status = cluster.broker(1).manager.status(TOPIC, 0).unwrap();
    assert_eq!((status.high_watermark, status.log_end_offset), (10, 10));

    // Followers do not serve consumers.
    let follower = cluster.broker(2).client().await;
    assert_eq!(
        consume(&follower, 0, 0).await.0,
        ErrorCode::NotLeaderOrFollower
    );
    let (error, _, _) = produce_one(&follower, 1, 1_000, 10).await;
    assert_eq!(error, ErrorCode::NotLeaderOrFollower);

    // With both followers stopped, acks=1 still appends at the leader, but the high
    // watermark stays: consumers never see those records, a long poll returns
    // nothing, and ListOffsets latest is the high watermark.
    cluster.broker(2).stop().await;
    cluster.broker(3).stop().await;
    let (error, _, base) = produce_one(&leader, 1, 1_000, 10).await;
    assert_eq!((error, base), (ErrorCode::None, 10));
    let (error, hw, bases) = consume(&leader, 0, 0).await;
    assert_eq!((error, hw), (ErrorCode::None, 10));
    assert_eq!(bases.last(), Some(&9), "{bases:?}");
    assert_eq!(
        consume(&leader, 10, 300).await,
        (ErrorCode::None, 10, vec![])
    );
    let latest = leader
        .admin()
        .list_offsets(TOPIC, 0, meridian_client::Offset::Latest)
        .await
        .unwrap();
    assert_eq!(latest, 10);
    // acks=all cannot complete: the ISR still names the stopped followers.
    let (error, message, _) = produce_one(&leader, -1, 500, 10).await;
    assert_eq!(error, ErrorCode::RequestTimedOut, "{message}");

    // A follower coming back catches up; the high watermark moves and a consumer
    // waiting in a long poll gets the records.
    let waiting = {
        let leader = leader.clone();
        tokio::spawn(async move { consume(&leader, 10, 10_000).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.restart(2).await;
    cluster.restart(3).await;
    cluster.apply(TOPIC, 0, &state(1, 0, &[1, 2, 3], 0));
    let (error, hw, bases) = waiting.await.unwrap();
    assert_eq!(error, ErrorCode::None);
    assert!(hw >= 11 && bases.first() == Some(&10), "hw {hw}, {bases:?}");
    wait_until("the followers caught up", || {
        [2, 3].iter().all(|id| {
            cluster.brokers[*id as usize - 1]
                .manager
                .status(TOPIC, 0)
                .is_some_and(|s| s.log_end_offset == 12)
        })
    })
    .await;
    let leader_bytes = cluster.broker(1).segment_bytes(TOPIC, 0);
    for id in [2, 3] {
        assert_eq!(
            cluster.broker(id).segment_bytes(TOPIC, 0),
            leader_bytes,
            "broker {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_is_refused_below_min_insync_replicas() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.create_topic(TOPIC, 1, &[("min.insync.replicas", "3")]);
    // The controller has only two brokers in sync.
    cluster.apply(TOPIC, 0, &state(1, 0, &[1, 2], 0));
    let leader = cluster.broker(1).client().await;
    let (error, message, base) = produce_one(&leader, -1, 5_000, 10).await;
    assert_eq!(error, ErrorCode::NotEnoughReplicas);
    assert!(
        message.contains("min.insync.replicas") && message.contains('3'),
        "{message}"
    );
    assert_eq!(base, -1);
    assert_eq!(
        cluster
            .broker(1)
            .manager
            .status(TOPIC, 0)
            .unwrap()
            .log_end_offset,
        0,
        "nothing written"
    );
    // acks=1 does not need the ISR.
    let (error, _, base) = produce_one(&leader, 1, 5_000, 10).await;
    assert_eq!((error, base), (ErrorCode::None, 0));
    // The topic describes its setting.
    let described = leader.admin().describe_topic(TOPIC).await.unwrap();
    assert!(described
        .configs
        .iter()
        .any(|c| c.key == "min.insync.replicas" && c.value == "3" && !c.is_default));
    // The SDK's producer retries the refusal (it is retriable), then fails the record
    // with it, and counts both.
    let producer = leader.producer(meridian_client::ProducerConfig {
        retries: 2,
        linger: Duration::ZERO,
        ..meridian_client::ProducerConfig::default()
    });
    let delivery = producer
        .send(meridian_client::ProducerRecord::new(TOPIC, "refused"))
        .await
        .unwrap();
    let e = delivery.await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotEnoughReplicas), "{e}");
    let metrics = producer.metrics();
    assert_eq!(metrics.retries, 2, "{metrics:?}");
    assert_eq!(metrics.requests, 3, "{metrics:?}");
    assert_eq!(
        (metrics.records_failed, metrics.records_delivered),
        (1, 0),
        "{metrics:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_follower_leaves_the_isr_and_rejoins_when_caught_up() {
    let mut cluster = Cluster::start(
        3,
        &[
            "replica_lag_time_max_ms=1500",
            "replica_fetch_wait_max_ms=200",
            "replica_fetch_backoff_ms=100",
        ],
    )
    .await;
    cluster.create_topic(TOPIC, 1, &[("min.insync.replicas", "2")]);
    cluster.apply(TOPIC, 0, &state(1, 0, &[1, 2, 3], 0));
    let leader = cluster.broker(1).client().await;
    assert_eq!(
        produce_one(&leader, -1, 10_000, 10).await.0,
        ErrorCode::None
    );

    cluster.broker(3).stop().await;
    // A produce waiting for broker 3 completes once the controller drops it.
    let waiting = {
        let leader = leader.clone();
        tokio::spawn(async move { produce_one(&leader, -1, 15_000, 10).await })
    };
    let change = cluster.next_isr_change(WAIT).await;
    assert_eq!((change.topic.as_str(), change.partition), (TOPIC, 0));
    assert_eq!(change.request.leader, 1);
    assert_eq!(change.request.isr, BTreeSet::from([1, 2]));
    assert_eq!(change.request.partition_epoch, 0);
    cluster.apply(TOPIC, 0, &state(1, 0, &[1, 2], 1));
    let (error, message, base) = waiting.await.unwrap();
    assert_eq!((error, base), (ErrorCode::None, 1), "{message}");
    assert_eq!(
        produce_one(&leader, -1, 10_000, 10).await.0,
        ErrorCode::None
    );

    // Back, it catches up and the leader asks to add it again.
    cluster.restart(3).await;
    cluster.apply(TOPIC, 0, &state(1, 0, &[1, 2], 1));
    let change = cluster.next_isr_change(WAIT).await;
    assert_eq!(change.request.isr, BTreeSet::from([1, 2, 3]));
    assert_eq!(change.request.partition_epoch, 1);
    cluster.apply(TOPIC, 0, &state(1, 0, &[1, 2, 3], 2));
    let status = cluster.broker(1).manager.status(TOPIC, 0).unwrap();
    assert_eq!(status.isr, vec![1, 2, 3]);
    assert_eq!(
        cluster
            .broker(3)
            .manager
            .status(TOPIC, 0)
            .unwrap()
            .log_end_offset,
        3
    );
    assert_eq!(
        cluster.broker(3).segment_bytes(TOPIC, 0),
        cluster.broker(1).segment_bytes(TOPIC, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_truncates_the_old_leaders_divergent_tail_by_epoch() {
    let mut cluster = Cluster::start(
        3,
        &[
            "replica_fetch_wait_max_ms=200",
            "replica_fetch_backoff_ms=100",
        ],
    )
    .await;
    cluster.create_topic(TOPIC, 1, &[]);
    cluster.apply(TOPIC, 0, &state(1, 0, &[1, 2, 3], 0));
    let client = cluster.broker(1).client().await;
    for _ in 0..3 {
        assert_eq!(
            produce_one(&client, -1, 10_000, 50).await.0,
            ErrorCode::None
        );
    }
    // The followers stop; the leader takes two more batches only it has (acks=1),
    // then fails.
    cluster.broker(2).stop().await;
    cluster.broker(3).stop().await;
    for _ in 0..2 {
        assert_eq!(produce_one(&client, 1, 10_000, 70).await.0, ErrorCode::None);
    }
    assert_eq!(
        cluster
            .broker(1)
            .manager
            .status(TOPIC, 0)
            .unwrap()
            .log_end_offset,
        5
    );
    client.close();
    cluster.broker(1).stop().await;

    // Broker 2 is elected at epoch 1 and takes new writes, replicated to broker 3.
    cluster.restart(2).await;
    cluster.restart(3).await;
    cluster.apply(TOPIC, 0, &state(2, 1, &[2, 3], 1));
    let client = cluster.broker(2).client().await;
    for _ in 0..4 {
        let (error, message, _) = produce_one(&client, -1, 10_000, 30).await;
        assert_eq!(error, ErrorCode::None, "{message}");
    }
    let leader_status = cluster.broker(2).manager.status(TOPIC, 0).unwrap();
    assert_eq!(leader_status.leader_epochs, vec![(0, 0), (1, 3)]);
    assert_eq!(leader_status.log_end_offset, 7);

    // The old leader comes back as a follower: its offsets 3 and 4 (epoch 0) are not
    // the leader's, so it truncates to 3 and then copies epoch 1.
    cluster.restart(1).await;
    cluster.apply(TOPIC, 0, &state(2, 1, &[2, 3], 1));
    wait_until("the old leader converged", || {
        cluster.brokers[0]
            .manager
            .status(TOPIC, 0)
            .is_some_and(|s| s.log_end_offset == 7)
    })
    .await;
    let status = cluster.broker(1).manager.status(TOPIC, 0).unwrap();
    assert_eq!(status.leader_epochs, vec![(0, 0), (1, 3)]);
    let leader_bytes = cluster.broker(2).segment_bytes(TOPIC, 0);
    for id in [1, 3] {
        assert_eq!(
            cluster.broker(id).segment_bytes(TOPIC, 0),
            leader_bytes,
            "broker {id}"
        );
    }
    // A stale epoch is fenced: the old leader's epoch 0 cannot produce anywhere.
    let old = cluster.broker(1).client().await;
    assert_eq!(
        produce_one(&old, 1, 1_000, 5).await.0,
        ErrorCode::NotLeaderOrFollower
    );
    let response = client
        .request(Request::Fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                name: TOPIC.into(),
                id: meridian_wire::TopicId::NONE,
                partitions: vec![FetchPartition {
                    current_leader_epoch: 0,
                    ..FetchPartition::new(0, 0, 1 << 20)
                }],
            }],
            filter: None,
            replica_id: CONSUMER_REPLICA_ID,
        }))
        .await
        .unwrap();
    let Response::Fetch(response) = response else {
        panic!()
    };
    assert_eq!(
        response.topics[0].partitions[0].error,
        ErrorCode::FencedLeaderEpoch
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_exposes_only_the_checkpointed_high_watermark() {
    let mut cluster = Cluster::start(
        3,
        &[
            "replica_high_watermark_checkpoint_interval_ms=100",
            "replica_fetch_wait_max_ms=200",
        ],
    )
    .await;
    cluster.create_topic(TOPIC, 1, &[]);
    cluster.apply(TOPIC, 0, &state(1, 0, &[1, 2, 3], 0));
    let client = cluster.broker(1).client().await;
    for _ in 0..4 {
        assert_eq!(
            produce_one(&client, -1, 10_000, 20).await.0,
            ErrorCode::None
        );
    }
    // The periodic checkpoint has the high watermark.
    let checkpoint = cluster
        .broker(1)
        .data_dir
        .join("replication-offset-checkpoint");
    wait_until("the high watermark is checkpointed", || {
        std::fs::read_to_string(&checkpoint)
            .is_ok_and(|text| text.contains(&format!("{TOPIC} 0 4")))
    })
    .await;
    // Uncommitted records at the leader, then a restart with the followers still down.
    cluster.broker(2).stop().await;
    cluster.broker(3).stop().await;
    assert_eq!(produce_one(&client, 1, 10_000, 20).await.0, ErrorCode::None);
    client.close();
    cluster.broker(1).stop().await;
    cluster.restart(1).await;
    cluster.apply(TOPIC, 0, &state(1, 1, &[1, 2, 3], 1));
    let client = cluster.broker(1).client().await;
    let (error, hw, bases) = consume(&client, 0, 0).await;
    assert_eq!((error, hw), (ErrorCode::None, 4));
    assert_eq!(bases, vec![0, 1, 2, 3]);
    let status = cluster.broker(1).manager.status(TOPIC, 0).unwrap();
    assert_eq!((status.log_end_offset, status.high_watermark), (5, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_fails_after_append_when_the_isr_shrinks_below_the_minimum() {
    let mut cluster = Cluster::start(
        3,
        &[
            "replica_lag_time_max_ms=1000",
            "replica_fetch_wait_max_ms=200",
        ],
    )
    .await;
    cluster.create_topic(TOPIC, 1, &[("min.insync.replicas", "3")]);
    cluster.apply(TOPIC, 0, &state(1, 0, &[1, 2, 3], 0));
    let leader = cluster.broker(1).client().await;
    assert_eq!(
        produce_one(&leader, -1, 10_000, 10).await.0,
        ErrorCode::None
    );
    cluster.broker(3).stop().await;
    // Accepted (the ISR still has three members), then waiting for broker 3 ...
    let waiting = {
        let leader = leader.clone();
        tokio::spawn(async move { produce_one(&leader, -1, 15_000, 10).await })
    };
    // ... until the controller drops it: the records are committed by the two left,
    // but that is fewer than min.insync.replicas.
    let change = cluster.next_isr_change(WAIT).await;
    assert_eq!(change.request.isr, BTreeSet::from([1, 2]));
    cluster.apply(TOPIC, 0, &state(1, 0, &[1, 2], 1));
    let (error, message, _) = waiting.await.unwrap();
    assert_eq!(error, ErrorCode::NotEnoughReplicasAfterAppend, "{message}");
    // Now acks=all is refused up front.
    assert_eq!(
        produce_one(&leader, -1, 1_000, 10).await.0,
        ErrorCode::NotEnoughReplicas
    );
}
