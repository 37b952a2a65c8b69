//! Topic administration and offset look-ups.

use meridian_wire::messages::ApiKey;
use meridian_wire::messages::{
    AlterPartitionReassignmentsRequest, ConfigEntry, CreateTopic, CreateTopicsRequest,
    DeleteRecordsPartition, DeleteRecordsRequest, DeleteRecordsTopic, DeleteTopicsRequest,
    DescribeTopicsRequest, ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
    PartitionReassignment, Request, Response, TopicDescription, TopicResult, DELETE_TO_END,
    EARLIEST_TIMESTAMP, LATEST_TIMESTAMP,
};
use meridian_wire::ErrorCode;

use crate::client::{unexpected, Client};
use crate::error::{Error, Result};

/// A position in a partition's log, as a consumer or [`Admin::list_offsets`] names it.
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
    pub partitions: u32,
    /// 1 until replication lands.
    pub replication_factor: u16,
    /// Topic configuration overrides, e.g. `("retention.ms", "86400000")`.
    pub configs: Vec<(String, String)>,
}

impl NewTopic {
    /// A topic with `partitions` partitions, replication factor 1 and default configs.
    pub fn new(name: impl Into<String>, partitions: u32) -> NewTopic {
        NewTopic {
            name: name.into(),
            partitions,
            replication_factor: 1,
            configs: Vec::new(),
        }
    }

    /// Adds a configuration override.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.push((key.into(), value.into()));
        self
    }
}

/// Creates, deletes and describes topics and looks up offsets. Made by
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
    pub async fn create_topic(&self, topic: NewTopic) -> Result<()> {
        let name = topic.name.clone();
        let request = Request::CreateTopics(CreateTopicsRequest {
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
            validate_only: false,
        });
        let response = self.client.request(request).await?;
        self.client.invalidate_partition_count(&name);
        let Response::CreateTopics(response) = response else {
            return Err(unexpected(ApiKey::CreateTopics, &response));
        };
        topic_result(&response.results, &name)
    }

    /// Deletes a topic and all its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let response = self
            .client
            .request(Request::DeleteTopics(DeleteTopicsRequest {
                names: vec![name.to_string()],
            }))
            .await?;
        self.client.invalidate_partition_count(name);
        let Response::DeleteTopics(response) = response else {
            return Err(unexpected(ApiKey::DeleteTopics, &response));
        };
        topic_result(&response.results, name)
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
        let timestamp = match at {
            Offset::At(offset) => return Ok(offset),
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
    /// [`ErrorCode::OffsetOutOfRange`], and `Offset::Latest` deletes everything written
    /// so far. Returns each partition's new log start offset, in the order asked; a
    /// partition that failed (unknown, or `before` past its end) is an `Err` there.
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
        let request = Request::DeleteRecords(DeleteRecordsRequest {
            topics: vec![DeleteRecordsTopic {
                name: topic.to_string(),
                partitions,
            }],
        });
        let response = self.client.request(request).await?;
        let Response::DeleteRecords(response) = response else {
            return Err(unexpected(ApiKey::DeleteRecords, &response));
        };
        let answers = response.topics.iter().find(|t| t.name == topic);
        Ok(per_partition(
            ApiKey::DeleteRecords,
            topic,
            before.iter().map(|&(partition, _)| partition),
            answers.map_or(&[], |t| &t.partitions[..]),
            |p| p.partition,
            |p| {
                if p.error.is_ok() {
                    Ok(p.low_watermark)
                } else {
                    Err(Error::broker(
                        p.error,
                        format!("{topic}/{}: {}", p.partition, p.message),
                    ))
                }
            },
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
        let answers: Vec<_> = response
            .results
            .into_iter()
            .filter(|r| r.topic == topic)
            .collect();
        Ok(per_partition(
            ApiKey::AlterPartitionReassignments,
            topic,
            moves.iter().map(|(partition, _)| *partition),
            &answers,
            |r| r.partition,
            |r| {
                if r.error.is_ok() {
                    Ok(())
                } else {
                    Err(Error::broker(
                        r.error,
                        format!("{topic}/{}: {}", r.partition, r.message),
                    ))
                }
            },
        ))
    }

    /// Looks up several partitions of one topic in one request; one result per asked
    /// partition, in the order asked.
    pub(crate) async fn list_offsets_many(
        &self,
        topic: &str,
        asks: &[(u32, i64)],
    ) -> Result<Vec<(u32, Result<i64>)>> {
        let request = Request::ListOffsets(ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: topic.to_string(),
                partitions: asks
                    .iter()
                    .map(|&(partition, timestamp)| ListOffsetsPartition {
                        partition,
                        timestamp,
                    })
                    .collect(),
            }],
        });
        let response = self.client.request(request).await?;
        let Response::ListOffsets(response) = response else {
            return Err(unexpected(ApiKey::ListOffsets, &response));
        };
        let answers = response.topics.iter().find(|t| t.name == topic);
        Ok(per_partition(
            ApiKey::ListOffsets,
            topic,
            asks.iter().map(|&(partition, _)| partition),
            answers.map_or(&[], |t| &t.partitions[..]),
            |p| p.partition,
            |p| {
                if p.error.is_ok() {
                    return Ok(p.offset);
                }
                if matches!(
                    p.error,
                    ErrorCode::UnknownTopic | ErrorCode::InvalidPartition
                ) {
                    self.client.invalidate_partition_count(topic);
                }
                Err(Error::broker(
                    p.error,
                    format!("{topic}/{}: {}", p.partition, p.error.description()),
                ))
            },
        ))
    }
}

/// One result per asked partition, in the order asked: `answer` turns a partition's
/// entry of the response into its result; a partition the response lacks is a
/// protocol error.
fn per_partition<P, T>(
    api: ApiKey,
    topic: &str,
    asked: impl Iterator<Item = u32>,
    answers: &[P],
    partition_of: impl Fn(&P) -> u32,
    answer: impl Fn(&P) -> Result<T>,
) -> Vec<(u32, Result<T>)> {
    asked
        .map(|partition| {
            let result = match answers.iter().find(|p| partition_of(p) == partition) {
                None => Err(Error::Protocol(format!(
                    "{api:?} response lacks {topic}/{partition}"
                ))),
                Some(p) => answer(p),
            };
            (partition, result)
        })
        .collect()
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
        assert_eq!(topic.replication_factor, 1);
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
