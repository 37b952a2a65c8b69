//! Changing a topic after its creation: `AlterTopicConfigs` (API key 21) sets
//! settings or reverts them to the broker defaults, as Kafka's
//! IncrementalAlterConfigs does for topics; `CreatePartitions` (API key 22) raises a
//! topic's partition count. Both answer per topic with a [`TopicResult`].
//!
//! Version 1 of each request adds `validate_only`: the broker checks the changes as
//! it would apply them and answers the same way, but changes nothing (Kafka's
//! `validateOnly`). A version 0 request never validates only. Version 2 of
//! `AlterTopicConfigs` adds `replace` per topic: the changes are the topic's whole
//! settings, and every setting they do not name reverts to the broker default
//! (Kafka's legacy AlterConfigs).

use crate::codec::{DecodeError, Reader, Writer};
use crate::messages::{get_topic_result, put_topic_result, TopicResult};

/// One setting to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigChange {
    /// A topic setting's name (`retention.ms`, `max.message.bytes`, …).
    pub key: String,
    /// The new value; `None` removes the topic's own value, so the broker default
    /// applies again.
    pub value: Option<String>,
}

/// The changes to one topic's settings, applied together or not at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfigChanges {
    pub name: String,
    pub changes: Vec<ConfigChange>,
    /// Drop the topic's own values before applying `changes`, so that only what
    /// `changes` sets differs from the broker defaults (version 2).
    pub replace: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterTopicConfigsRequest {
    pub topics: Vec<TopicConfigChanges>,
    /// Check the changes, apply none (version 1).
    pub validate_only: bool,
}

impl AlterTopicConfigsRequest {
    pub fn encode(&self, w: &mut Writer<'_>, version: u16) {
        w.array(&self.topics, |w, t| {
            w.string(&t.name);
            w.array(&t.changes, |w, c| {
                w.string(&c.key);
                w.option(c.value.as_ref(), |w, v| w.string(v));
            });
            if version >= 2 {
                w.bool(t.replace);
            }
        });
        if version >= 1 {
            w.bool(self.validate_only);
        }
    }

    pub fn decode(r: &mut Reader, version: u16) -> Result<AlterTopicConfigsRequest, DecodeError> {
        Ok(AlterTopicConfigsRequest {
            topics: r.array(6, |r| {
                Ok(TopicConfigChanges {
                    name: r.string()?,
                    changes: r.array(3, |r| {
                        Ok(ConfigChange {
                            key: r.string()?,
                            value: r.option(|r| r.string())?,
                        })
                    })?,
                    replace: version >= 2 && r.bool()?,
                })
            })?,
            validate_only: version >= 1 && r.bool()?,
        })
    }
}

/// Per topic: `None`, or why nothing of that topic's changes was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterTopicConfigsResponse {
    pub results: Vec<TopicResult>,
}

impl AlterTopicConfigsResponse {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.array(&self.results, put_topic_result);
    }

    pub fn decode(r: &mut Reader) -> Result<AlterTopicConfigsResponse, DecodeError> {
        Ok(AlterTopicConfigsResponse {
            results: r.array(6, get_topic_result)?,
        })
    }
}

/// Raise a topic's partition count to `count` (Kafka's CreatePartitions). Existing
/// partitions keep their records; keys hashed over the old count may map to another
/// partition from now on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionsIncrease {
    pub name: String,
    /// The new total, above the current one.
    pub count: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatePartitionsRequest {
    pub topics: Vec<PartitionsIncrease>,
    /// Check the new counts, add no partitions (version 1).
    pub validate_only: bool,
}

impl CreatePartitionsRequest {
    pub fn encode(&self, w: &mut Writer<'_>, version: u16) {
        w.array(&self.topics, |w, t| {
            w.string(&t.name);
            w.u32(t.count);
        });
        if version >= 1 {
            w.bool(self.validate_only);
        }
    }

    pub fn decode(r: &mut Reader, version: u16) -> Result<CreatePartitionsRequest, DecodeError> {
        Ok(CreatePartitionsRequest {
            topics: r.array(6, |r| {
                Ok(PartitionsIncrease {
                    name: r.string()?,
                    count: r.u32()?,
                })
            })?,
            validate_only: version >= 1 && r.bool()?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatePartitionsResponse {
    pub results: Vec<TopicResult>,
}

impl CreatePartitionsResponse {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.array(&self.results, put_topic_result);
    }

    pub fn decode(r: &mut Reader) -> Result<CreatePartitionsResponse, DecodeError> {
        Ok(CreatePartitionsResponse {
            results: r.array(6, get_topic_result)?,
        })
    }
}
