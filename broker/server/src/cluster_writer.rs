//! How a broker in a cluster writes records it makes itself — plugin logs and dead
//! letters — to the cluster's topics.
//!
//! A single broker appends them to its own partitions (`Shared::append_internal`). In
//! a cluster that would not do: the topic is the cluster's (created through the
//! controller, replicated, listed in its metadata), and partition 0's leader may be
//! another broker. So the broker produces them the way any client does, through a
//! `meridian_client` producer of its own (idempotent, `acks=all`), connected to its
//! own endpoint and routed by the cluster's metadata to each partition's leader. A
//! topic missing on first use is created through the controller with one partition
//! and the cluster's default replication factor.

use std::sync::Arc;

use bytes::Bytes;
use meridian_client::{Acks, Client, NewTopic, Producer, ProducerConfig, ProducerRecord};
use meridian_wire::batch::NewRecord;
use meridian_wire::ErrorCode;
use tokio::sync::mpsc;

use crate::topics::Failure;

/// Cheap to clone; connects on first use.
#[derive(Clone)]
pub(crate) struct ClusterWriter {
    inner: Arc<Inner>,
}

struct Inner {
    /// This broker's own endpoint.
    address: String,
    /// Trust and certificate as towards a peer (current at each connect).
    tls: crate::tls::PeerTls,
    server_name: String,
    client_software: String,
    /// Made on first use.
    connection: tokio::sync::Mutex<Option<(Client, Producer)>>,
    /// Writes queued by [`ClusterWriter::write_later`], in order, for one task.
    queue: std::sync::OnceLock<mpsc::Sender<Queued>>,
    /// How many writes that queue holds (`plugins.logs_queue_max`).
    queue_max: usize,
}

/// A write [`ClusterWriter::write_later`] queued: topic, records, whether it exists.
type Queued = (String, Vec<NewRecord>, bool);

impl ClusterWriter {
    /// A writer that connects to `address` (this broker's endpoint) trusting what the
    /// cluster's brokers trust of each other.
    pub(crate) fn new(
        broker_id: u32,
        address: String,
        server_name: String,
        tls: crate::tls::PeerTls,
        queue_max: usize,
    ) -> Self {
        ClusterWriter {
            inner: Arc::new(Inner {
                address,
                tls,
                server_name,
                client_software: format!("meridian-broker/{broker_id}/internal"),
                connection: tokio::sync::Mutex::new(None),
                queue: std::sync::OnceLock::new(),
                queue_max: queue_max.max(1),
            }),
        }
    }

    async fn connection(&self) -> Result<(Client, Producer), Failure> {
        let mut connection = self.inner.connection.lock().await;
        if let Some(connection) = &*connection {
            return Ok(connection.clone());
        }
        let mut config = self.inner.tls.client_config(&self.inner.address);
        config.server_name = self.inner.server_name.clone();
        config.client_software = self.inner.client_software.clone();
        let client = Client::connect(config)
            .await
            .map_err(|e| failed("connecting to this broker", e))?;
        let producer = client.producer(ProducerConfig {
            acks: Acks::All,
            ..ProducerConfig::default()
        });
        Ok(connection.insert((client, producer)).clone())
    }

    /// Produces `records` to `partition` of `topic` (created with one partition if
    /// missing) and waits until every one is acknowledged by the partition's in-sync
    /// replicas. `exists`: the cluster's metadata already lists the topic.
    pub(crate) async fn write(
        &self,
        topic: String,
        partition: u32,
        records: Vec<NewRecord>,
        exists: bool,
    ) -> Result<(), Failure> {
        if records.is_empty() {
            return Ok(());
        }
        let (client, producer) = self.connection().await?;
        if !exists {
            // Returns once every broker serves it, this one included, so the next
            // write finds it in the metadata.
            let admin = client.admin();
            match admin.create_topic(NewTopic::new(topic.clone(), 1)).await {
                Ok(()) => {}
                Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {}
                Err(e) => return Err(failed(&format!("creating topic `{topic}`"), e)),
            }
        }
        let mut deliveries = Vec::with_capacity(records.len());
        for record in records {
            let mut out = match (record.value, &record.key) {
                (None, Some(key)) => ProducerRecord::tombstone(topic.clone(), key.clone()),
                (value, _) => ProducerRecord::new(topic.clone(), value.unwrap_or_default()),
            }
            .partition(partition)
            .timestamp(record.timestamp);
            if let Some(key) = record.key {
                out = out.key(key);
            }
            // A header without a value (rare) goes with an empty one.
            for header in record.headers {
                out = out.header(header.key, header.value.unwrap_or_else(Bytes::new));
            }
            let delivery = producer
                .send(out)
                .await
                .map_err(|e| failed(&format!("producing to `{topic}`"), e))?;
            deliveries.push(delivery);
        }
        for delivery in deliveries {
            delivery
                .await
                .map_err(|e| failed(&format!("producing to `{topic}`"), e))?;
        }
        Ok(())
    }

    /// [`ClusterWriter::write`] in the background, in the order of the calls; for
    /// records nothing waits on (plugin logs). A failure is logged. Needs a tokio
    /// runtime (the broker's). When `queue_max` writes are waiting already, the
    /// records are dropped with a warning and this returns `false`.
    pub(crate) fn write_later(&self, topic: &str, records: Vec<NewRecord>, exists: bool) -> bool {
        let queue = self.inner.queue.get_or_init(|| {
            let (tx, mut rx) = mpsc::channel::<Queued>(self.inner.queue_max);
            let writer = self.clone();
            tokio::spawn(async move {
                while let Some((topic, records, exists)) = rx.recv().await {
                    if let Err(f) = writer.write(topic.clone(), 0, records, exists).await {
                        tracing::warn!(topic, code = ?f.code, message = %f.message, "cannot write to an internal topic");
                    }
                }
            });
            tx
        });
        match queue.try_send((topic.to_string(), records, exists)) {
            Ok(()) => true,
            Err(e) => {
                let (topic, records, _) = e.into_inner();
                tracing::warn!(
                    topic,
                    n_records = records.len(),
                    "records dropped: plugins.logs_queue_max writes are waiting already"
                );
                false
            }
        }
    }
}

fn failed(what: &str, e: meridian_client::Error) -> Failure {
    Failure::new(
        e.code().unwrap_or(ErrorCode::Unknown),
        format!("{what}: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Vec<NewRecord> {
        vec![NewRecord {
            timestamp: 1,
            key: None,
            value: Some(Bytes::from_static(b"line")),
            headers: vec![],
        }]
    }

    /// Writes that cannot go anywhere (nothing answers at the address, so the first
    /// one waits for its connection) fill the queue, and the rest are dropped rather
    /// than held.
    #[tokio::test]
    async fn a_full_queue_drops_writes() {
        let unanswered = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = unanswered.local_addr().unwrap().to_string();
        let trust = meridian_client::Trust::CaPem(Vec::new());
        let (_dir, identity) = crate::tls::generated_identity();
        let tls = crate::tls::PeerTls::new(trust, &identity).unwrap();
        let writer = ClusterWriter::new(1, address, "localhost".into(), tls, 3);
        // One may be taken off the queue by the writing task, three wait in it.
        let queued: Vec<bool> = (0..6)
            .map(|_| writer.write_later("t", line(), true))
            .collect();
        assert!(queued[..3].iter().all(|&q| q), "{queued:?}");
        assert!(!queued[5], "{queued:?}");
    }
}
