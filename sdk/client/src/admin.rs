//! Topic administration and offset look-ups.

use meridian_wire::messages::ApiKey;
use meridian_wire::messages::{
    AlterPartitionReassignmentsRequest, AlterTopicConfigsRequest, ConfigChange, ConfigEntry,
    CreatePartitionsRequest, CreateTopic, CreateTopicsRequest, CreatedTopic,
    DeleteRecordsPartition, DeleteRecordsRequest, DeleteRecordsTopic, DeleteTopicsRequest,
    DescribeClusterResponse, DescribeLogsRequest, DescribeLogsResponse, DescribeTopicsRequest,
    ElectLeadersRequest, ElectionResult, ListOffsetsPartition, ListOffsetsRequest,
    ListOffsetsTopic, ListPartitionReassignmentsRequest, LocalLog, MetadataResponse,
    OngoingReassignment, PartitionReassignment, PartitionsIncrease, Request, Response,
    TopicConfigChanges as WireConfigChanges, TopicDescription, TopicPartitions, TopicResult,
    UnregisterBrokerRequest, DELETE_TO_END, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, NO_BROKER,
    NO_LEADER_EPOCH,
};
use meridian_wire::{ErrorCode, TopicId};

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::client::{says_unknown, unexpected, Client};
use crate::error::{Error, Result};
use crate::group::Position;
use crate::metadata::{route, OnError};

/// A position in a partition's log, as a consumer or [`Admin::list_offsets`] names it.
///
/// ```no_run
/// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
/// use meridian_client::{ConsumerConfig, Offset};
/// let admin = client.admin();
/// let start = admin.list_offsets("orders", 0, Offset::Earliest).await?;
/// let end = admin.list_offsets("orders", 0, Offset::Latest).await?;
/// println!("partition 0 holds {} records", end - start);
/// // A consumer starts where the records of the last hour begin.
/// let an_hour_ago = std::time::SystemTime::now()
///     .duration_since(std::time::UNIX_EPOCH)
///     .unwrap()
///     .as_millis() as i64
///     - 3_600_000;
/// let mut consumer = client.consumer(ConsumerConfig::default());
/// consumer.assign("orders", &[0]).await?;
/// consumer.seek("orders", 0, Offset::Timestamp(an_hour_ago)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offset {
    /// The first offset still in the log (the log start offset).
    Earliest,
    /// The next offset to be written (the log end offset): only new records.
    Latest,
    /// This exact offset.
    At(i64),
    /// The first offset whose timestamp is at or after this many ms since the epoch
    /// (the log end offset if there is none).
    Timestamp(i64),
}

/// What [`Admin::await_everywhere`] waits for a broker's metadata to say about a
/// topic.
#[derive(Clone, Copy, Debug)]
enum TopicSeen {
    /// Known, with at least this many partitions, each with a leader.
    Served { partitions: usize },
    /// Known, with or without leaders.
    Known,
    /// Unknown.
    Gone,
}

impl TopicSeen {
    fn holds(&self, metadata: &MetadataResponse, topic: &str) -> bool {
        match self {
            TopicSeen::Served { partitions } => metadata.topics.iter().any(|t| {
                t.name == topic
                    && t.error.is_ok()
                    && !t.partitions.is_empty()
                    && t.partitions.len() >= *partitions
                    && t.partitions.iter().all(|p| p.error.is_ok())
            }),
            TopicSeen::Known => !says_unknown(metadata, topic),
            TopicSeen::Gone => says_unknown(metadata, topic),
        }
    }
}

/// Whether `topic` is described with `settings`: `Some(value)` its own value,
/// `None` the broker default.
fn described(settings: &[(String, Option<String>)], topic: &TopicDescription) -> bool {
    topic.error.is_ok()
        && settings.iter().all(|(key, want)| {
            topic.configs.iter().any(|c| {
                c.key == *key
                    && match want {
                        Some(value) => !c.is_default && c.value == *value,
                        None => c.is_default,
                    }
            })
        })
}

/// Changes to a topic's settings, for [`Admin::alter_topic_configs`]: applied in
/// order, all or none.
///
/// ```no_run
/// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
/// use meridian_client::TopicConfigChanges;
/// client
///     .admin()
///     .alter_topic_configs(
///         "orders",
///         TopicConfigChanges::new()
///             .set("retention.ms", "3600000")
///             .reset("max.message.bytes"),
///     )
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicConfigChanges {
    /// `(key, Some(value))` sets a setting, `(key, None)` reverts it to the default.
    pub changes: Vec<(String, Option<String>)>,
}

impl TopicConfigChanges {
    pub fn new() -> TopicConfigChanges {
        TopicConfigChanges::default()
    }

    /// Gives the topic its own value for `key`.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.changes.push((key.into(), Some(value.into())));
        self
    }

    /// Removes the topic's own value for `key`: the broker default applies again.
    pub fn reset(mut self, key: impl Into<String>) -> Self {
        self.changes.push((key.into(), None));
        self
    }
}

/// A broker's log directory, what [`Admin::log_dir`] returns.
///
/// ```
/// # fn example(dir: meridian_client::LogDir) {
/// if let (Some(total), Some(usable)) = (dir.total_bytes, dir.usable_bytes) {
///     println!("broker {}: {} of {} bytes free in {}", dir.broker_id, usable, total, dir.path);
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogDir {
    pub broker_id: u32,
    /// The directory on the broker's machine.
    pub path: String,
    /// The size of the file system holding it, and the bytes on it the broker may
    /// still write (`df`'s size and available).
    pub total_bytes: Option<u64>,
    pub usable_bytes: Option<u64>,
    /// Every partition log the broker is a replica of.
    pub logs: Vec<LocalLog>,
}

/// A topic to create.
///
/// ```no_run
/// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
/// use meridian_client::NewTopic;
/// client
///     .admin()
///     .create_topic(NewTopic::new("orders", 12).config("retention.ms", "86400000"))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    /// 0 takes the broker's `default_partitions`.
    pub partitions: u32,
    /// Copies of each partition, on as many brokers. 0 (what [`NewTopic::new`]
    /// sets) takes the cluster's `cluster.default_replication_factor`, which is
    /// 1 on a single broker, as Kafka's `default.replication.factor` does.
    pub replication_factor: u16,
    /// Topic configuration overrides, e.g. `("retention.ms", "86400000")`.
    pub configs: Vec<(String, String)>,
}

impl NewTopic {
    /// A topic with `partitions` partitions, the cluster's default replication
    /// factor and default configs.
    pub fn new(name: impl Into<String>, partitions: u32) -> NewTopic {
        NewTopic {
            name: name.into(),
            partitions,
            replication_factor: 0,
            configs: Vec::new(),
        }
    }

    /// Sets the replication factor.
    pub fn replication_factor(mut self, replication_factor: u16) -> Self {
        self.replication_factor = replication_factor;
        self
    }

    /// Adds a configuration override.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.push((key.into(), value.into()));
        self
    }
}

/// Creates, changes, deletes and describes topics and looks up offsets. Made by
/// [`Client::admin`]; cheap to clone.
///
/// ```no_run
/// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
/// use meridian_client::{NewTopic, Offset};
/// let admin = client.admin();
/// admin.create_topic(NewTopic::new("clicks", 3)).await?;
/// for name in admin.list_topics().await? {
///     println!("{name}");
/// }
/// let end = admin.list_offsets("clicks", 0, Offset::Latest).await?;
/// println!("partition 0 ends at {end}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Admin {
    pub(crate) client: Client,
}

impl Admin {
    pub(crate) fn new(client: Client) -> Admin {
        Admin { client }
    }

    /// Creates a topic. An existing topic is [`ErrorCode::TopicAlreadyExists`].
    ///
    /// In a cluster the controller answers once the topic is committed to the
    /// metadata quorum; the other brokers apply it a moment later. This returns only
    /// once every reachable broker serves the topic with a leader for each partition
    /// (or the client's request timeout passes), so records sent right after are not
    /// refused as `UnknownTopic` by a leader that has not caught up. Before returning
    /// `TopicAlreadyExists` it waits, the same way, until every broker knows the
    /// topic (leaders or not: an existing topic may be offline): it may have been
    /// committed a moment ago, by another client or by an earlier attempt whose
    /// answer was lost, so "create unless it exists, then use it" does not race the
    /// brokers either. A client that a broker's `acl_file` lets create topics but
    /// not describe them cannot see the topic, and does not wait.
    pub async fn create_topic(&self, topic: NewTopic) -> Result<()> {
        let name = topic.name.clone();
        let results = self
            .topic_change(create_topic_request(topic, false))
            .await?;
        self.client.invalidate_partition_count(&name);
        let result = topic_result(&results, &name);
        match &result {
            Ok(()) => {
                self.await_everywhere(&name, TopicSeen::Served { partitions: 1 })
                    .await
            }
            Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {
                self.await_everywhere(&name, TopicSeen::Known).await
            }
            Err(_) => {}
        }
        result
    }

    /// Deletes a topic and all its data. Like [`Admin::create_topic`], returns once
    /// every reachable broker has stopped serving it.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let request = Request::DeleteTopics(DeleteTopicsRequest {
            names: vec![name.to_string()],
            ids: Vec::new(),
        });
        let results = self.topic_change(request).await?;
        self.client.invalidate_partition_count(name);
        topic_result(&results, name)?;
        self.await_everywhere(name, TopicSeen::Gone).await;
        Ok(())
    }

    /// Deletes the topic with ID `id` (its [`TopicDescription::id`]) and all its
    /// data, and returns its name: that topic, never one created since under its
    /// name, which is refused as [`ErrorCode::UnknownTopicId`] as an ID no topic has
    /// is. Returns once every reachable broker has stopped serving it. Needs a
    /// broker that deletes by ID (`UnsupportedVersion` from an older one).
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
    /// let admin = client.admin();
    /// let looked_at = admin.describe_topic("orders").await?;
    /// // ... later: delete what was looked at, not whatever is called `orders` now.
    /// admin.delete_topic_by_id(looked_at.id).await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_topic_by_id(&self, id: TopicId) -> Result<String> {
        let request = Request::DeleteTopics(DeleteTopicsRequest {
            names: Vec::new(),
            ids: vec![id],
        });
        let deleted = match self.client.request(request).await? {
            Response::DeleteTopics(r) => r.by_id.into_iter().find(|d| d.id == id),
            other => return Err(unexpected(ApiKey::DeleteTopics, &other)),
        };
        let Some(deleted) = deleted else {
            return Err(Error::Protocol(format!(
                "the broker did not answer for topic ID {id}"
            )));
        };
        if !deleted.error.is_ok() {
            return Err(Error::broker(deleted.error, deleted.message));
        }
        self.client.invalidate_partition_count(&deleted.name);
        self.await_everywhere(&deleted.name, TopicSeen::Gone).await;
        Ok(deleted.name)
    }

    /// Checks a topic as [`Admin::create_topic`] would create it, and creates
    /// nothing (Kafka's `validateOnly`): when the creation would succeed now, the
    /// topic it would make, with the defaults it leaves to the cluster filled in
    /// (partitions, replication factor, settings; `None` from a broker from before
    /// it described them); otherwise the error it would meet (a bad name,
    /// partition count, replication factor or setting, an existing topic, too few
    /// live brokers).
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
    /// use meridian_client::NewTopic;
    /// let topic = NewTopic::new("clicks", 3).config("retention.ms", "3600000");
    /// if let Some(t) = client.admin().validate_create_topic(topic.clone()).await? {
    ///     println!("replication factor {}", t.replication_factor);
    /// }
    /// client.admin().create_topic(topic).await?;
    /// # Ok(()) }
    /// ```
    pub async fn validate_create_topic(&self, topic: NewTopic) -> Result<Option<CreatedTopic>> {
        let name = topic.name.clone();
        let response = match self
            .client
            .request(create_topic_request(topic, true))
            .await?
        {
            Response::CreateTopics(r) => r,
            other => return Err(unexpected(ApiKey::CreateTopics, &other)),
        };
        topic_result(&response.results, &name)?;
        Ok(response.created.into_iter().find(|t| t.name == name))
    }

    /// Changes a topic's settings (Kafka's IncrementalAlterConfigs): each change sets a
    /// setting or reverts it to the broker default. The changes are checked together
    /// and applied all or none: an unknown key or a bad value is
    /// [`ErrorCode::InvalidConfig`], an unknown topic [`ErrorCode::UnknownTopic`].
    /// They take effect on the topic's existing data too: a shorter `retention.ms`
    /// deletes old segments at the next retention check. Returns once every
    /// reachable broker describes the topic with the new settings.
    pub async fn alter_topic_configs(
        &self,
        topic: &str,
        changes: TopicConfigChanges,
    ) -> Result<()> {
        let request = alter_configs_request(topic, &changes, false);
        topic_result(&self.topic_change(request).await?, topic)?;
        // The last change of each key is the one that holds.
        let mut last: Vec<(String, Option<String>)> = Vec::new();
        for (key, value) in changes.changes.into_iter().rev() {
            if !last.iter().any(|(k, _)| *k == key) {
                last.push((key, value));
            }
        }
        let what = format!("topic {topic}: settings {last:?}");
        let last = &last;
        self.await_brokers(&what, |broker, timeout| {
            self.described_by(broker, topic, last, timeout)
        })
        .await;
        Ok(())
    }

    /// Checks `changes` as [`Admin::alter_topic_configs`] would apply them, and
    /// changes nothing: `Ok` when they would be accepted now, otherwise the error
    /// they would meet. Against a broker older than this check the call fails with
    /// [`ErrorCode::UnsupportedVersion`], unsent, rather than apply the changes.
    pub async fn validate_topic_configs(
        &self,
        topic: &str,
        changes: TopicConfigChanges,
    ) -> Result<()> {
        let request = alter_configs_request(topic, &changes, true);
        topic_result(&self.topic_change(request).await?, topic)
    }

    /// Raises a topic's partition count to `count` (Kafka's CreatePartitions). The
    /// new partitions start empty; the existing ones keep their records. Records
    /// with a key may go to another partition than before, since keys are hashed
    /// over the new count. Producers pick the new partitions up when they next
    /// refresh metadata ([`ClientConfig::metadata_max_age`](crate::ClientConfig)),
    /// and consumer groups subscribed to the topic rebalance over them.
    ///
    /// A count at or below the current one, or above the brokers'
    /// `max_partitions_per_topic`, is [`ErrorCode::InvalidPartitions`]. Returns once
    /// every reachable broker serves the new partitions with a leader.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
    /// client.admin().create_partitions("orders", 24).await?;
    /// # Ok(()) }
    /// ```
    pub async fn create_partitions(&self, topic: &str, count: u32) -> Result<()> {
        let request = create_partitions_request(topic, count, false);
        let results = self.topic_change(request).await?;
        self.client.invalidate_partition_count(topic);
        topic_result(&results, topic)?;
        let partitions = count as usize;
        self.await_everywhere(topic, TopicSeen::Served { partitions })
            .await;
        Ok(())
    }

    /// Checks a new partition count as [`Admin::create_partitions`] would, and adds
    /// no partitions: `Ok` when the change would be accepted now, otherwise the
    /// error it would meet. Against a broker older than this check the call fails
    /// with [`ErrorCode::UnsupportedVersion`], unsent, rather than add the
    /// partitions.
    pub async fn validate_create_partitions(&self, topic: &str, count: u32) -> Result<()> {
        let request = create_partitions_request(topic, count, true);
        topic_result(&self.topic_change(request).await?, topic)
    }

    /// Sends a request that creates, deletes or changes topics, and returns its
    /// answer per topic (`Err` only when there is no answer of that kind).
    async fn topic_change(&self, request: Request) -> Result<Vec<TopicResult>> {
        let api = request.api_key();
        match self.client.request(request).await? {
            Response::CreateTopics(r) if api == ApiKey::CreateTopics => Ok(r.results),
            Response::DeleteTopics(r) if api == ApiKey::DeleteTopics => Ok(r.results),
            Response::AlterTopicConfigs(r) if api == ApiKey::AlterTopicConfigs => Ok(r.results),
            Response::CreatePartitions(r) if api == ApiKey::CreatePartitions => Ok(r.results),
            other => Err(unexpected(api, &other)),
        }
    }

    /// Waits until every broker the cluster's metadata names sees `topic` as `want`
    /// says (see [`Admin::await_brokers`]).
    async fn await_everywhere(&self, topic: &str, want: TopicSeen) {
        let what = format!("topic {topic}: {want:?}");
        self.await_brokers(&what, |broker, timeout| {
            self.seen_by(broker, topic, want, timeout)
        })
        .await
    }

    /// Waits until `seen` holds for every broker the cluster's metadata names,
    /// asking each again every 10 ms, for at most the request timeout. A broker that
    /// does not answer within a second is not waited for (it may be down; it catches
    /// up when it returns). Running out of time is not an error: the change is
    /// committed, only not yet visible everywhere.
    ///
    /// `seen` is a closure returning a future rather than an async closure: the
    /// compiler cannot yet prove an async closure's future `Send`, and the futures of
    /// the admin calls must be (a caller may `tokio::spawn` them).
    pub(crate) async fn await_brokers<F>(&self, what: &str, seen: impl Fn(u32, Duration) -> F)
    where
        F: std::future::Future<Output = Result<bool>>,
    {
        let deadline = tokio::time::Instant::now() + self.client.config().request_timeout;
        let Ok(metadata) = self.client.metadata(Some(Vec::new())).await else {
            return;
        };
        let mut waiting: Vec<u32> = metadata.brokers.iter().map(|b| b.broker_id).collect();
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for broker in waiting {
                // A broker that is down costs at most a second.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match seen(broker, left.min(Duration::from_secs(1))).await {
                    Ok(false) => still.push(broker),
                    Ok(true) => {}
                    Err(e) => {
                        tracing::debug!(broker, error = %e, "not waiting for a broker that does not answer");
                    }
                }
            }
            waiting = still;
            if waiting.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if waiting.is_empty() {
            tracing::debug!(
                what,
                brokers = metadata.brokers.len(),
                "every broker has applied the change"
            );
        } else {
            tracing::debug!(what, brokers = ?waiting, "brokers have not applied the change yet");
        }
    }

    /// Whether `broker` sees `topic` as `want` says.
    async fn seen_by(
        &self,
        broker: u32,
        topic: &str,
        want: TopicSeen,
        timeout: Duration,
    ) -> Result<bool> {
        let metadata = self
            .client
            .topic_metadata_from(broker, topic, timeout)
            .await?;
        // A client the broker's `acl_file` lets create a topic but not describe it
        // cannot watch the change spread; it does not wait.
        let hidden = metadata
            .topics
            .iter()
            .any(|t| t.name == topic && t.error == ErrorCode::TopicAuthorizationFailed);
        if hidden {
            tracing::debug!(
                broker,
                topic,
                "this client may not describe the topic: not waiting for it"
            );
            return Ok(true);
        }
        Ok(want.holds(&metadata, topic))
    }

    /// Whether `broker` describes `topic` with `settings` (see [`described`]).
    async fn described_by(
        &self,
        broker: u32,
        topic: &str,
        settings: &[(String, Option<String>)],
        timeout: Duration,
    ) -> Result<bool> {
        let request = Request::DescribeTopics(DescribeTopicsRequest {
            names: vec![topic.to_string()],
        });
        match self
            .client
            .request_to_with_timeout(broker, request, timeout)
            .await?
        {
            Response::DescribeTopics(r) => Ok(r
                .topics
                .iter()
                .any(|t| t.name == topic && described(settings, t))),
            other => Err(unexpected(ApiKey::DescribeTopics, &other)),
        }
    }

    /// Names of all topics, sorted, without internal ones (`__consumer_offsets`), as
    /// Kafka's admin client lists them.
    pub async fn list_topics(&self) -> Result<Vec<String>> {
        let mut names = self.list_all_topics().await?;
        names.retain(|name| !name.starts_with("__"));
        Ok(names)
    }

    /// Names of all topics including internal ones, sorted.
    pub async fn list_all_topics(&self) -> Result<Vec<String>> {
        let metadata = self.client.metadata(None).await?;
        let mut names: Vec<String> = metadata.topics.into_iter().map(|t| t.name).collect();
        names.sort();
        Ok(names)
    }

    /// Configuration and per-partition offsets and sizes of one topic.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let response = self
            .client
            .request(Request::DescribeTopics(DescribeTopicsRequest {
                names: vec![name.to_string()],
            }))
            .await?;
        let Response::DescribeTopics(response) = response else {
            return Err(unexpected(ApiKey::DescribeTopics, &response));
        };
        let topic = response
            .topics
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::Protocol(format!("no description of topic `{name}`")))?;
        if !topic.error.is_ok() {
            return Err(Error::broker(topic.error, topic.message));
        }
        Ok(topic)
    }

    /// Resolves `at` to an offset of one partition: `Earliest` is the log start offset,
    /// `Latest` the log end offset, `Timestamp(ms)` the first offset at or after that
    /// time, and `At(x)` is `x` without asking the broker.
    pub async fn list_offsets(&self, topic: &str, partition: u32, at: Offset) -> Result<i64> {
        Ok(self.position_of(topic, partition, at).await?.offset)
    }

    /// [`list_offsets`](Self::list_offsets), with the leader epoch the leader gives
    /// the offset found (`NO_LEADER_EPOCH` for `At(x)`, and from a broker that does
    /// not say), which a consumer placed there names in its first fetch.
    pub(crate) async fn position_of(
        &self,
        topic: &str,
        partition: u32,
        at: Offset,
    ) -> Result<Position> {
        let timestamp = match at {
            Offset::At(offset) => {
                return Ok(Position {
                    offset,
                    epoch: NO_LEADER_EPOCH,
                })
            }
            Offset::Earliest => EARLIEST_TIMESTAMP,
            Offset::Latest => LATEST_TIMESTAMP,
            Offset::Timestamp(ms) if ms < 0 => {
                return Err(Error::Config(format!("timestamp {ms} is negative")))
            }
            Offset::Timestamp(ms) => ms,
        };
        let offsets = self
            .list_offsets_many(topic, &[(partition, timestamp)])
            .await?;
        offsets
            .into_iter()
            .next()
            .ok_or_else(|| Error::Protocol(format!("no offset for {topic}/{partition}")))?
            .1
    }

    /// Deletes the records below `before` in each given partition of `topic` (Kafka's
    /// DeleteRecords): `before` becomes the log start offset, reads below it fail with
    /// [`ErrorCode::OffsetOutOfRange`], and `Offset::Latest` deletes everything
    /// committed so far. Sent to each partition's leader; its followers follow its new
    /// log start. Returns each partition's new log start offset, in the order asked; a
    /// partition that failed (unknown, or `before` past its high watermark) is an
    /// `Err` there.
    pub async fn delete_records(
        &self,
        topic: &str,
        before: &[(u32, Offset)],
    ) -> Result<Vec<(u32, Result<i64>)>> {
        let mut partitions = Vec::with_capacity(before.len());
        for &(partition, at) in before {
            let offset = match at {
                Offset::At(offset) if offset >= 0 => offset,
                Offset::Latest => DELETE_TO_END,
                other => {
                    return Err(Error::Config(format!(
                        "delete_records takes an offset or Latest, not {other:?}"
                    )))
                }
            };
            partitions.push(DeleteRecordsPartition { partition, offset });
        }
        let topic_name = topic.to_string();
        let answers = self
            .to_leaders(
                topic,
                partitions,
                |p| p.partition,
                |group| {
                    Request::DeleteRecords(DeleteRecordsRequest {
                        topics: vec![DeleteRecordsTopic {
                            name: topic_name.clone(),
                            partitions: group.to_vec(),
                        }],
                    })
                },
                |response| {
                    let Response::DeleteRecords(response) = response else {
                        return Err(unexpected(ApiKey::DeleteRecords, &response));
                    };
                    Ok(response
                        .topics
                        .into_iter()
                        .filter(|t| t.name == topic)
                        .flat_map(|t| t.partitions)
                        .map(|p| {
                            let result = partition_result(
                                topic,
                                p.partition,
                                p.error,
                                &p.message,
                                p.low_watermark,
                            );
                            (p.partition, result)
                        })
                        .collect())
                },
            )
            .await?;
        Ok(in_asked_order(
            ApiKey::DeleteRecords,
            topic,
            before.iter().map(|&(partition, _)| partition),
            answers,
        ))
    }

    /// Moves partitions' replicas to other brokers: `(partition, Some(replicas))`
    /// starts a reassignment (the first replica is the preferred leader), `(partition,
    /// None)` cancels one under way. The data is copied in the background; watch
    /// [`Client::metadata`](crate::Client::metadata) until the replicas and ISR match.
    /// One result per asked partition, in the order asked.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
    /// let results = client.admin().reassign_partitions("orders", &[(0, Some(vec![2, 3, 4]))]).await?;
    /// for (partition, result) in results {
    ///     result?;
    ///     println!("partition {partition} is moving");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn reassign_partitions(
        &self,
        topic: &str,
        moves: &[(u32, Option<Vec<u32>>)],
    ) -> Result<Vec<(u32, Result<()>)>> {
        let request = Request::AlterPartitionReassignments(AlterPartitionReassignmentsRequest {
            reassignments: moves
                .iter()
                .map(|(partition, replicas)| PartitionReassignment {
                    topic: topic.to_string(),
                    partition: *partition,
                    replicas: replicas.clone(),
                })
                .collect(),
        });
        let response = self.client.request(request).await?;
        let Response::AlterPartitionReassignments(response) = response else {
            return Err(unexpected(ApiKey::AlterPartitionReassignments, &response));
        };
        let answers: HashMap<u32, Result<()>> = response
            .results
            .into_iter()
            .filter(|r| r.topic == topic)
            .map(|r| {
                let result = partition_result(topic, r.partition, r.error, &r.message, ());
                (r.partition, result)
            })
            .collect();
        Ok(in_asked_order(
            ApiKey::AlterPartitionReassignments,
            topic,
            moves.iter().map(|(partition, _)| *partition),
            answers,
        ))
    }

    /// The reassignments under way (of `topic`, or of every topic): the replicas
    /// being added and removed, and the ISR, so progress shows as the added replicas
    /// join the ISR. A partition drops out of the list once its move completes.
    pub async fn list_reassignments(
        &self,
        topic: Option<&str>,
    ) -> Result<Vec<OngoingReassignment>> {
        let request = Request::ListPartitionReassignments(ListPartitionReassignmentsRequest {
            topics: topic.map(|t| vec![t.to_string()]),
        });
        let response = self.client.request(request).await?;
        let Response::ListPartitionReassignments(response) = response else {
            return Err(unexpected(ApiKey::ListPartitionReassignments, &response));
        };
        if !response.error.is_ok() {
            return Err(Error::Broker {
                code: response.error,
                message: response.message,
            });
        }
        Ok(response.reassignments)
    }

    /// The partition logs `broker` holds, as that broker reads them: log start and end
    /// offsets and bytes on disk, of `partitions` as `(topic, partition)` (in that
    /// order, replica or not; `error` is `UnknownTopic` or `InvalidPartition` where
    /// the broker has no such partition) or, with `None`, of every partition it is a
    /// replica of. Set against the leader's, a new replica's figures say how far it
    /// has copied the log (`meridian partition list` shows it for moves under way).
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
    /// let admin = client.admin();
    /// let leader = &admin.describe_logs(1, Some(&[("orders", 0)])).await?[0];
    /// let copy = &admin.describe_logs(4, Some(&[("orders", 0)])).await?[0];
    /// println!("broker 4 holds {} of the leader's {} bytes", copy.size_bytes, leader.size_bytes);
    /// # Ok(()) }
    /// ```
    pub async fn describe_logs(
        &self,
        broker: u32,
        partitions: Option<&[(&str, u32)]>,
    ) -> Result<Vec<LocalLog>> {
        let mut logs = self.logs_of(broker, partitions).await?.logs;
        if let Some(asked) = partitions {
            // The request groups partitions by topic; answer in the order asked.
            let position = |l: &LocalLog| {
                asked
                    .iter()
                    .position(|(t, p)| *t == l.topic && *p == l.partition)
                    .unwrap_or(usize::MAX)
            };
            logs.sort_by_key(position);
        }
        Ok(logs)
    }

    /// `broker`'s log directory: where it is, the partition logs in it (those
    /// [`Admin::describe_logs`] lists with `None`) and the space of its file system
    /// (`None` from a broker that does not report it).
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
    /// let dir = client.admin().log_dir(1).await?;
    /// let logs: u64 = dir.logs.iter().map(|l| l.size_bytes).sum();
    /// println!("{}: {logs} bytes of logs, {:?} bytes free", dir.path, dir.usable_bytes);
    /// # Ok(()) }
    /// ```
    pub async fn log_dir(&self, broker: u32) -> Result<LogDir> {
        let response = self.logs_of(broker, None).await?;
        let known = |b: i64| u64::try_from(b).ok();
        Ok(LogDir {
            broker_id: response.broker_id,
            path: response.log_dir,
            total_bytes: known(response.total_bytes),
            usable_bytes: known(response.usable_bytes),
            logs: response.logs,
        })
    }

    async fn logs_of(
        &self,
        broker: u32,
        partitions: Option<&[(&str, u32)]>,
    ) -> Result<DescribeLogsResponse> {
        let request = Request::DescribeLogs(DescribeLogsRequest {
            partitions: partitions.map(|ps| TopicPartitions::group(ps.iter().copied())),
        });
        let response = self.client.request_to(broker, request).await?;
        let Response::DescribeLogs(response) = response else {
            return Err(unexpected(ApiKey::DescribeLogs, &response));
        };
        if !response.error.is_ok() {
            return Err(Error::Broker {
                code: response.error,
                message: response.message,
            });
        }
        Ok(response)
    }

    /// Moves leadership back to partitions' preferred replicas (the first of each
    /// partition's replicas), Kafka's preferred leader election: after a broker was
    /// stopped or restarted, the partitions it gave away go back to it. `partitions`
    /// as `(topic, partition)`, or `None` for every partition. The controller elects
    /// a preferred replica only while it is alive and in the ISR. One result per
    /// partition, in the order asked: `error` is `None` (elected), `ElectionNotNeeded` (it leads
    /// already), `PreferredLeaderNotAvailable` (it cannot lead now, `message` says
    /// why), `UnknownTopic` or `InvalidPartition`; `leader` is the leader after the
    /// request. The controller also does this on its own
    /// (`cluster.auto_leader_rebalance_enable`).
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
    /// use meridian_client::ErrorCode;
    /// for r in client.admin().elect_preferred_leaders(Some(&[("orders", 0)])).await? {
    ///     match r.error {
    ///         ErrorCode::None => println!("{}/{} now led by {}", r.topic, r.partition, r.leader),
    ///         ErrorCode::ElectionNotNeeded => {}
    ///         other => eprintln!("{}/{}: {other}: {}", r.topic, r.partition, r.message),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn elect_preferred_leaders(
        &self,
        partitions: Option<&[(&str, u32)]>,
    ) -> Result<Vec<ElectionResult>> {
        self.elect_leaders(partitions, false).await
    }

    /// Gives partitions without a leader one, Kafka's unclean leader election: where
    /// every in-sync replica is down and another replica is alive, that replica
    /// leads, its log the truth from then on, so records only the lost replicas held
    /// are given up (the controller logs each such election). It is how an offline
    /// partition comes back when its in-sync replicas cannot, whatever the topic's
    /// `unclean.leader.election.enable` (which makes the controller do it on its
    /// own). A live in-sync replica is preferred when there is one. `partitions` as
    /// `(topic, partition)`, or `None` for every partition. One result per partition,
    /// in the order asked: `error` is `None` (elected), `ElectionNotNeeded` (it has
    /// a leader), `EligibleLeadersNotAvailable` (no replica of it is alive),
    /// `UnknownTopic` or `InvalidPartition`; `leader` is the leader after the
    /// request. A broker from before unclean elections refuses the request with
    /// `UnsupportedVersion` rather than elect preferred leaders instead.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
    /// for r in client.admin().elect_unclean_leaders(Some(&[("orders", 0)])).await? {
    ///     println!("{}/{}: {:?}, led by {}", r.topic, r.partition, r.error, r.leader);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn elect_unclean_leaders(
        &self,
        partitions: Option<&[(&str, u32)]>,
    ) -> Result<Vec<ElectionResult>> {
        self.elect_leaders(partitions, true).await
    }

    async fn elect_leaders(
        &self,
        partitions: Option<&[(&str, u32)]>,
        unclean: bool,
    ) -> Result<Vec<ElectionResult>> {
        let request = Request::ElectLeaders(ElectLeadersRequest {
            partitions: partitions.map(|list| TopicPartitions::group(list.iter().copied())),
            unclean,
        });
        let response = self.client.request(request).await?;
        let Response::ElectLeaders(response) = response else {
            return Err(unexpected(ApiKey::ElectLeaders, &response));
        };
        if !response.error.is_ok() {
            return Err(Error::broker(response.error, response.message));
        }
        let mut results = response.results;
        if let Some(asked) = partitions {
            // The request groups partitions by topic; answer in the order asked.
            let position = |r: &ElectionResult| {
                asked
                    .iter()
                    .position(|(t, p)| *t == r.topic && *p == r.partition)
            };
            results.sort_by_key(|r| position(r).unwrap_or(usize::MAX));
        }
        Ok(results)
    }

    /// Forgets a broker that is gone for good, so it no longer shows in
    /// [`describe_cluster`](Self::describe_cluster) and the metadata (Kafka's
    /// `kafka-cluster unregister`). The controller refuses, with `InvalidRequest` and a
    /// message saying why, a broker that is running, that is a voter of the metadata
    /// quorum, or that still holds replicas (move them first,
    /// [`reassign_partitions`](Self::reassign_partitions));
    /// `BrokerIdNotRegistered` when there is no such broker. A broker that comes back
    /// registers again.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
    /// client.admin().unregister_broker(4).await?;
    /// # Ok(()) }
    /// ```
    pub async fn unregister_broker(&self, broker_id: u32) -> Result<()> {
        let request = Request::UnregisterBroker(UnregisterBrokerRequest { broker_id });
        let response = self.client.request(request).await?;
        let Response::UnregisterBroker(response) = response else {
            return Err(unexpected(ApiKey::UnregisterBroker, &response));
        };
        if !response.error.is_ok() {
            return Err(Error::broker(response.error, response.message));
        }
        Ok(())
    }

    /// The cluster's brokers (running, fenced, shutting down, or a voter not started
    /// yet), the partitions each leads and holds, and the metadata quorum: the Raft
    /// term and, from the controller, how far each broker has copied the metadata
    /// log. Asked of any broker; when that is not the controller, the controller is
    /// asked as well for that progress, and if it does not answer the first answer
    /// is returned (its [`QuorumStatus::from_controller`] is then `false`). A single
    /// broker describes itself, with no quorum.
    ///
    /// [`QuorumStatus::from_controller`]: crate::QuorumStatus::from_controller
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
    /// let cluster = client.admin().describe_cluster().await?;
    /// for broker in &cluster.brokers {
    ///     println!("broker {} {}:{} {}", broker.broker_id, broker.host, broker.port, broker.state.name());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn describe_cluster(&self) -> Result<DescribeClusterResponse> {
        let first = self.describe_cluster_from(None).await?;
        let controller = first.controller_id;
        let asked_controller = first.quorum.as_ref().is_some_and(|q| q.from_controller);
        if asked_controller || controller == NO_BROKER || controller == first.broker_id {
            return Ok(first);
        }
        match self.describe_cluster_from(Some(controller)).await {
            Ok(answer) if answer.quorum.as_ref().is_some_and(|q| q.from_controller) => Ok(answer),
            Ok(_) => Ok(first),
            Err(e) => {
                tracing::debug!(controller, error = %e, "the controller did not describe the cluster");
                Ok(first)
            }
        }
    }

    /// `DescribeCluster` from `broker`, or from any broker.
    async fn describe_cluster_from(&self, broker: Option<u32>) -> Result<DescribeClusterResponse> {
        let response = match broker {
            Some(id) => self.client.request_to(id, Request::DescribeCluster).await?,
            None => {
                self.client
                    .request_once_ready(Request::DescribeCluster)
                    .await?
            }
        };
        let Response::DescribeCluster(response) = response else {
            return Err(unexpected(ApiKey::DescribeCluster, &response));
        };
        if !response.error.is_ok() {
            return Err(Error::broker(response.error, response.message));
        }
        Ok(response)
    }

    /// Looks up several partitions of one topic in one request; one result per asked
    /// partition (the offset and its leader epoch), in the order asked.
    pub(crate) async fn list_offsets_many(
        &self,
        topic: &str,
        asks: &[(u32, i64)],
    ) -> Result<Vec<(u32, Result<Position>)>> {
        let asks: Vec<ListOffsetsPartition> = asks
            .iter()
            .map(|&(partition, timestamp)| ListOffsetsPartition {
                partition,
                timestamp,
            })
            .collect();
        let topic_name = topic.to_string();
        let answers = self
            .to_leaders(
                topic,
                asks.clone(),
                |p| p.partition,
                |group| {
                    Request::ListOffsets(ListOffsetsRequest {
                        topics: vec![ListOffsetsTopic {
                            name: topic_name.clone(),
                            partitions: group.to_vec(),
                        }],
                    })
                },
                |response| {
                    let Response::ListOffsets(response) = response else {
                        return Err(unexpected(ApiKey::ListOffsets, &response));
                    };
                    Ok(response
                        .topics
                        .into_iter()
                        .filter(|t| t.name == topic)
                        .flat_map(|t| t.partitions)
                        .map(|p| {
                            let position = Position {
                                offset: p.offset,
                                epoch: p.leader_epoch,
                            };
                            let result = partition_result(
                                topic,
                                p.partition,
                                p.error,
                                p.error.description(),
                                position,
                            );
                            (p.partition, result)
                        })
                        .collect())
                },
            )
            .await?;
        Ok(in_asked_order(
            ApiKey::ListOffsets,
            topic,
            asks.iter().map(|p| p.partition),
            answers,
        ))
    }

    /// Sends a per-partition request about `topic` to each partition's leader (one
    /// request per leader) and gathers one result per partition. Partitions whose
    /// leader moved, has none right now, or could not be reached are asked again
    /// after a backoff, with fresh metadata, until the request timeout; then their
    /// last error is their result. A request-level error that retrying cannot fix
    /// fails the whole call, as one request did before routing.
    async fn to_leaders<A: Clone, T: Clone>(
        &self,
        topic: &str,
        asks: Vec<A>,
        partition_of: impl Fn(&A) -> u32,
        request_for: impl Fn(&[A]) -> Request,
        answers_of: impl Fn(Response) -> Result<Vec<(u32, Result<T>)>>,
    ) -> Result<HashMap<u32, Result<T>>> {
        let client = &self.client;
        let topics = [topic.to_string()];
        let started = Instant::now();
        let timeout = client.config().request_timeout;
        let mut results: HashMap<u32, Result<T>> = HashMap::new();
        let mut pending = asks;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            client.ensure_metadata(&topics).await?;
            let (routed, refused) = {
                let cache = client.metadata_cache();
                let routed = route(pending, |ask| cache.leader(topic, partition_of(ask)));
                let refused: Vec<(u32, Error)> = routed
                    .missing
                    .iter()
                    .map(|(ask, code)| {
                        let partition = partition_of(ask);
                        let why = cache.missing_reason(topic, *code);
                        (
                            partition,
                            Error::broker(*code, format!("{topic}/{partition}: {why}")),
                        )
                    })
                    .collect();
                (routed, refused)
            };
            for (partition, error) in refused {
                client.invalidate_partition_count(topic);
                results.insert(partition, Err(error));
            }
            let mut again: Vec<(A, Error)> = routed
                .unroutable
                .into_iter()
                .map(|ask| {
                    let error = Error::broker(
                        ErrorCode::LeaderNotAvailable,
                        format!("{topic}/{} has no leader right now", partition_of(&ask)),
                    );
                    (ask, error)
                })
                .collect();
            for (broker, group) in routed.by_broker {
                let answers = match client.request_to(broker, request_for(&group)).await {
                    Ok(response) => answers_of(response)?,
                    Err(e) => {
                        if client.broker_failed(broker, &e) == OnError::Fail {
                            return Err(e);
                        }
                        again.extend(group.into_iter().map(|ask| (ask, e.clone())));
                        continue;
                    }
                };
                for ask in group {
                    let partition = partition_of(&ask);
                    match answers.iter().find(|(p, _)| *p == partition) {
                        None => {}
                        Some((_, Err(e)))
                            if client.partition_failed(topic, partition, e) != OnError::Fail =>
                        {
                            again.push((ask, e.clone()));
                        }
                        Some((_, result)) => {
                            results.insert(partition, result.clone());
                        }
                    }
                }
            }
            if again.is_empty() {
                return Ok(results);
            }
            let backoff = client.config().backoff(attempt);
            if started.elapsed() + backoff >= timeout || client.is_closed() {
                for (ask, error) in again {
                    results.insert(partition_of(&ask), Err(error));
                }
                return Ok(results);
            }
            tracing::debug!(
                topic,
                attempt,
                ?backoff,
                "partition leaders moved or unreachable; retrying"
            );
            tokio::time::sleep(backoff).await;
            pending = again.into_iter().map(|(ask, _)| ask).collect();
        }
    }
}

/// One result per asked partition, in the order asked; a partition the answers lack
/// is a protocol error.
/// `value` if the broker's answer for `topic/partition` is a success, else its error
/// with the partition named in the message.
fn partition_result<T>(
    topic: &str,
    partition: u32,
    error: ErrorCode,
    message: &str,
    value: T,
) -> Result<T> {
    if error.is_ok() {
        Ok(value)
    } else {
        Err(Error::broker(
            error,
            format!("{topic}/{partition}: {message}"),
        ))
    }
}

fn in_asked_order<T>(
    api: ApiKey,
    topic: &str,
    asked: impl Iterator<Item = u32>,
    mut answers: HashMap<u32, Result<T>>,
) -> Vec<(u32, Result<T>)> {
    asked
        .map(|partition| {
            let result = answers.remove(&partition).unwrap_or_else(|| {
                Err(Error::Protocol(format!(
                    "{api:?} response lacks {topic}/{partition}"
                )))
            });
            (partition, result)
        })
        .collect()
}

fn create_topic_request(topic: NewTopic, validate_only: bool) -> Request {
    Request::CreateTopics(CreateTopicsRequest {
        topics: vec![CreateTopic {
            name: topic.name,
            partitions: topic.partitions,
            replication_factor: topic.replication_factor,
            configs: topic
                .configs
                .into_iter()
                .map(|(key, value)| ConfigEntry { key, value })
                .collect(),
        }],
        validate_only,
    })
}

fn alter_configs_request(
    topic: &str,
    changes: &TopicConfigChanges,
    validate_only: bool,
) -> Request {
    Request::AlterTopicConfigs(AlterTopicConfigsRequest {
        topics: vec![WireConfigChanges {
            name: topic.to_string(),
            changes: changes
                .changes
                .iter()
                .map(|(key, value)| ConfigChange {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            replace: false,
        }],
        validate_only,
    })
}

fn create_partitions_request(topic: &str, count: u32, validate_only: bool) -> Request {
    Request::CreatePartitions(CreatePartitionsRequest {
        topics: vec![PartitionsIncrease {
            name: topic.to_string(),
            count,
        }],
        validate_only,
    })
}

fn topic_result(results: &[TopicResult], name: &str) -> Result<()> {
    let result = results
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| Error::Protocol(format!("the broker sent no result for topic `{name}`")))?;
    if result.error.is_ok() {
        Ok(())
    } else {
        Err(Error::broker(result.error, result.message.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_topic_builder() {
        let topic = NewTopic::new("orders", 4)
            .config("retention.ms", "1000")
            .config("cleanup.policy", "compact");
        assert_eq!(topic.name, "orders");
        assert_eq!(topic.partitions, 4);
        assert_eq!(topic.replication_factor, 0, "the cluster's default");
        assert_eq!(topic.clone().replication_factor(3).replication_factor, 3);
        assert_eq!(topic.configs.len(), 2);
        assert_eq!(
            topic.configs[1],
            ("cleanup.policy".into(), "compact".into())
        );
    }

    #[test]
    fn topic_results_map_to_errors() {
        let results = vec![TopicResult {
            name: "a".into(),
            error: ErrorCode::TopicAlreadyExists,
            message: "topic `a` already exists".into(),
        }];
        let err = topic_result(&results, "a").unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::TopicAlreadyExists));
        assert!(matches!(
            topic_result(&results, "b"),
            Err(Error::Protocol(_))
        ));
    }
}
