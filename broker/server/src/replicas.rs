//! From metadata image to local partitions: every time the image changes, this
//! broker makes its local state follow it. Partitions whose replicas include this
//! broker get a local log (created through the topic registry); topics deleted from
//! the image lose their local logs; every changed partition state this broker
//! replicates is handed to the replica manager (leader or follower, ISR, epochs).

use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_core::replication::LeaderAndIsr;
use meridian_metadata::{AppliedImage, MetadataImage, PartitionState, TopicImage};
use tokio::sync::watch;

use crate::cluster::ControllerClient;
use crate::replica_manager::{AlterIsrSink, IsrChange, ReplicaManager};
use crate::topic_config::TopicOverrides;
use crate::topics::Topic;
use crate::Shared;
use meridian_wire::messages::AlterPartitionRequest;
use std::net::SocketAddr;

/// One partition's new state, for the replica manager.
#[derive(Clone, Debug)]
pub struct PartitionUpdate {
    pub topic: String,
    pub partition: u32,
    pub state: LeaderAndIsr,
    /// `host:port` of every registered broker, to reach the leader.
    pub brokers: Arc<BTreeMap<u32, String>>,
}

fn leader_and_isr(s: &PartitionState) -> LeaderAndIsr {
    LeaderAndIsr {
        leader: s.leader,
        leader_epoch: s.leader_epoch,
        isr: s.isr.iter().copied().collect(),
        replicas: s.replicas.clone(),
        partition_epoch: s.partition_epoch,
    }
}

/// Follows the image for the broker's lifetime.
pub(crate) async fn follow_images(shared: Arc<Shared>, mut images: watch::Receiver<AppliedImage>) {
    // Start from an empty image: every hosted partition is "changed" once, and no
    // local topic is deleted before the image has been seen to drop it.
    let mut previous = Arc::new(MetadataImage::default());
    let me = shared.config.broker_id;
    let incarnation = shared.cluster.as_ref().map(|c| c.incarnation);
    let mut waiting = false;
    loop {
        let (current, applied_index) = {
            let applied = images.borrow_and_update();
            (applied.image.clone(), applied.applied_index)
        };
        // At start the state machine re-applies the metadata log as this broker left
        // it, in which it may still lead partitions that have since moved on (a new
        // leader, a new epoch). Acting on that would make it a second leader for a
        // moment, taking writes a newer epoch truncates. So nothing is applied until
        // the image holds this process's own registration: the controller wrote it
        // after every decision taken while the broker was away (KRaft brokers
        // likewise wait to catch up with the metadata log).
        let caught_up = incarnation.is_none_or(|incarnation| {
            current
                .brokers
                .get(&me)
                .is_some_and(|b| b.incarnation == incarnation)
        });
        if !caught_up {
            if !waiting {
                tracing::info!(
                    applied_index,
                    "catching up with the metadata log before acting on it"
                );
                waiting = true;
            }
        } else if !Arc::ptr_eq(&current, &previous) {
            if waiting {
                tracing::info!(applied_index, "caught up with the metadata log");
                waiting = false;
            }
            let publisher = shared.clone();
            let (before, after) = (previous.clone(), current.clone());
            // Creating and deleting logs touches the disk.
            let done = tokio::task::spawn_blocking(move || {
                let stopped = publisher.images_stopped.lock();
                if !*stopped {
                    publish(&publisher, &before, &after, applied_index);
                }
            })
            .await;
            if let Err(e) = done {
                tracing::error!(error = %e, "applying the metadata image panicked");
            }
            if let Some(cluster) = &shared.cluster {
                cluster.published(current.clone());
            }
            previous = current;
        }
        if images.changed().await.is_err() {
            return;
        }
    }
}

/// Makes local partitions follow `image` (the one before was `previous`), the image
/// as of Raft log index `applied_index`.
pub(crate) fn publish(
    shared: &Arc<Shared>,
    previous: &MetadataImage,
    image: &MetadataImage,
    applied_index: u64,
) {
    // Plugins first, so a topic's chain is in place when this broker starts leading
    // it. The first image (after the empty one) is always followed: the local
    // registry may hold what the cluster no longer has.
    let first = previous.brokers.is_empty();
    if first || previous.plugins != image.plugins || previous.attachments != image.attachments {
        shared
            .plugins
            .follow_image(&image.plugins, &image.attachments);
    }
    let me = shared.config.broker_id;
    let brokers: Arc<BTreeMap<u32, String>> = Arc::new(
        image
            .brokers
            .values()
            .map(|b| (b.id, format!("{}:{}", b.host, b.port)))
            .collect(),
    );
    for topic in image.topics.values() {
        // A local copy of another incarnation of the topic.
        if let Some(local) = shared.registry.get(&topic.name) {
            let known = local.created_at != 0 && topic.created_at != 0;
            if known && local.created_at > topic.created_at {
                // This image would be older than the local copy. `follow_images`
                // publishes no image from before this process's registration, so this
                // does not happen; should it, the local copy is left alone.
                continue;
            }
            if known && local.created_at < topic.created_at {
                // Deleted and created again while this broker was away: the local
                // records are the old topic's, and must never be served as the new
                // one's (say, if this broker became a leader of it).
                tracing::warn!(topic = %topic.name, local_incarnation = local.created_at, incarnation = topic.created_at, "deleting the local copy of an earlier topic of the same name");
                drop_local_topic(shared, &topic.name);
            }
        }
        // Settings changed and partitions added since the local copy was made.
        if let Some(local) = shared.registry.get(&topic.name) {
            follow_topic_changes(shared, &local, topic);
        }
        // Changes are relative to the same incarnation in the previous image.
        let same_incarnation = previous
            .topics
            .get(&topic.name)
            .is_some_and(|t| t.created_at == topic.created_at);
        // Partitions a reassignment moved off this broker: seen between two images,
        // or (the topic new to this process, e.g. the first image after a start,
        // which `follow_images` publishes only once it is current) moved while this
        // broker was down. Dropping one that never had a log here costs a look.
        if shared.registry.get(&topic.name).is_some() {
            for (index, state) in topic.partitions.iter().enumerate() {
                let index = index as u32;
                let dropped = !state.replicas.contains(&me)
                    && (!same_incarnation
                        || previous
                            .partition(&topic.name, index)
                            .is_some_and(|p| p.replicas.contains(&me)));
                if dropped {
                    remove_partition_replica(shared, &topic.name, index, state);
                }
            }
        }
        let hosted: Vec<u32> = (0..topic.partitions.len() as u32)
            .filter(|p| topic.partitions[*p as usize].replicas.contains(&me))
            .collect();
        if hosted.is_empty() {
            continue;
        }
        if shared.registry.get(&topic.name).is_none() {
            // The registry keeps whole topics: every partition gets a (possibly
            // empty) log here, but only the hosted ones are replicated.
            match shared.registry.ensure(
                &topic.name,
                topic.partitions.len() as u32,
                topic.replication_factor,
                TopicOverrides(topic.configs.clone()),
                topic.created_at,
            ) {
                Ok(_) => {}
                Err(f) => {
                    tracing::error!(topic = %topic.name, error = %f.message, "could not create the local replica of a topic");
                    continue;
                }
            }
        }
        for partition in hosted {
            let state = &topic.partitions[partition as usize];
            if same_incarnation && previous.partition(&topic.name, partition) == Some(state) {
                continue;
            }
            apply_partition_change(
                shared,
                PartitionUpdate {
                    topic: topic.name.clone(),
                    partition,
                    state: leader_and_isr(state),
                    brokers: brokers.clone(),
                },
            );
            if topic.name == crate::groups::OFFSETS_TOPIC {
                shared.offsets_leadership(partition, state.leader, state.leader_epoch);
            }
        }
    }
    // Group coordinators assign partitions of every topic, hosted here or not.
    for topic in image.topics.values() {
        let before = previous.topics.get(&topic.name);
        // Deleted and created again between two images this broker followed (it
        // follows the latest, skipping those in between): to groups that is a
        // deletion (their commits go) and a new topic.
        let recreated =
            before.is_some_and(|t| t.created_at != 0 && t.created_at != topic.created_at);
        if recreated {
            shared.topic_deleted(&topic.name);
        }
        if recreated || before.map(|t| t.partitions.len()) != Some(topic.partitions.len()) {
            shared
                .groups
                .topic_changed(&topic.name, Some(topic.partitions.len() as u32));
        }
    }
    for name in previous.topics.keys() {
        if image.topics.contains_key(name) {
            continue;
        }
        shared.topic_deleted(name);
        if shared.registry.get(name).is_none() {
            continue;
        }
        drop_local_topic(shared, name);
    }
    // Local copies of topics deleted while this broker was away: the image has
    // applied the record that created each (its incarnation), so one it no longer
    // holds was deleted since. (Copies without an incarnation, from before it was
    // kept, stay.)
    for local in shared.registry.all() {
        if local.created_at != 0
            && local.created_at <= applied_index
            && !image.topics.contains_key(&local.name)
        {
            tracing::info!(topic = %local.name, incarnation = local.created_at, "deleting the local copy of a topic deleted while this broker was away");
            shared.topic_deleted(&local.name);
            drop_local_topic(shared, &local.name);
        }
    }
}

/// Gives the local copy of a topic the image's settings and partition count.
fn follow_topic_changes(shared: &Arc<Shared>, local: &Topic, topic: &TopicImage) {
    if local.overrides.0 != topic.configs {
        match shared
            .registry
            .set_overrides(&topic.name, TopicOverrides(topic.configs.clone()))
        {
            Ok(changed) => ReplicaManager::new(shared.clone()).topic_settings_changed(&changed),
            Err(f) => {
                tracing::error!(topic = %topic.name, error = %f.message, "could not change the local copy's settings")
            }
        }
    }
    if topic.partitions.len() > local.partitions.len() {
        if let Err(f) = shared
            .registry
            .ensure_partitions(&topic.name, topic.partitions.len() as u32)
        {
            tracing::error!(topic = %topic.name, error = %f.message, "could not add the new partitions here");
        }
    }
}

/// Stops replicating a topic here and deletes its local copy.
fn drop_local_topic(shared: &Arc<Shared>, name: &str) {
    shared.replication.forget_topic(name);
    match shared.registry.delete(name) {
        Ok(()) => {
            shared.plugins.forget_topic(name);
        }
        Err(f) => {
            tracing::error!(topic = %name, error = %f.message, "could not delete the local copy of a topic")
        }
    }
}

/// THE call site for the replica manager: a partition this broker replicates changed
/// (new leader, leader epoch, ISR or replicas). Called in image order, once per change,
/// from a blocking context (the image follower's `spawn_blocking`).
fn apply_partition_change(shared: &Arc<Shared>, update: PartitionUpdate) {
    tracing::debug!(
        topic = %update.topic,
        partition = update.partition,
        leader = ?update.state.leader,
        leader_epoch = update.state.leader_epoch,
        isr = ?update.state.isr,
        "partition state changed"
    );
    let brokers: BTreeMap<u32, SocketAddr> = update
        .brokers
        .iter()
        .filter_map(|(id, addr)| match resolve(addr) {
            Some(resolved) => Some((*id, resolved)),
            None => {
                tracing::warn!(broker = id, %addr, "cannot resolve a broker's advertised address");
                None
            }
        })
        .collect();
    let manager = ReplicaManager::new(shared.clone());
    if let Err(f) = manager.apply(&update.topic, update.partition, update.state, &brokers) {
        tracing::error!(
            topic = %update.topic,
            partition = update.partition,
            error = %f.message,
            "could not apply a partition's new state"
        );
    }
}

/// A reassignment moved the partition off this broker: stop replicating it and
/// delete the local copy.
fn remove_partition_replica(
    shared: &Arc<Shared>,
    topic: &str,
    partition: u32,
    state: &PartitionState,
) {
    let manager = ReplicaManager::new(shared.clone());
    if let Err(f) = manager.remove_replica(topic, partition, leader_and_isr(state)) {
        tracing::error!(topic, partition, error = %f.message, "could not drop the local replica of a partition moved away");
    }
}

fn resolve(addr: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.parse()
        .ok()
        .or_else(|| addr.to_socket_addrs().ok()?.next())
}

/// Sends a leader's ISR proposals to the controller, one at a time per partition in
/// the order made; a refused proposal is reported back to the replica, which then
/// waits for the controller's state (an accepted one arrives through the image).
pub(crate) struct ControllerIsrSink {
    changes: tokio::sync::mpsc::UnboundedSender<IsrChange>,
}

impl ControllerIsrSink {
    pub(crate) fn start(shared: Arc<Shared>, controller: ControllerClient) -> ControllerIsrSink {
        let (changes, mut rx) = tokio::sync::mpsc::unbounded_channel::<IsrChange>();
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                let request = AlterPartitionRequest {
                    broker_id: shared.config.broker_id,
                    topic: change.topic.clone(),
                    partition: change.partition,
                    leader_epoch: change.request.leader_epoch,
                    partition_epoch: change.request.partition_epoch,
                    isr: change.request.isr.iter().copied().collect(),
                };
                match controller.alter_partition(request).await {
                    Ok(response) if response.error.is_ok() => {}
                    Ok(response) => {
                        tracing::info!(
                            topic = %change.topic,
                            partition = change.partition,
                            error = ?response.error,
                            "the controller refused an ISR change"
                        );
                        ReplicaManager::new(shared.clone())
                            .alter_isr_refused(&change.topic, change.partition);
                    }
                    // Unanswered: the replica proposes again after its retry time.
                    Err(e) => tracing::warn!(
                        topic = %change.topic,
                        partition = change.partition,
                        error = %e,
                        "could not reach the controller with an ISR change"
                    ),
                }
            }
        });
        ControllerIsrSink { changes }
    }
}

impl AlterIsrSink for ControllerIsrSink {
    fn alter_isr(&self, change: IsrChange) {
        let _ = self.changes.send(change);
    }
}
