//! Sans-IO state machines of the broker. Nothing here reads a clock, touches a file or
//! a socket: inputs come in with an explicit `now_ms`, decisions go out as return
//! values, and the server's drivers do the I/O. That is what lets a seeded simulation
//! run them with faults in one thread (see `tests/` of this crate).

pub mod assignor;
pub mod group;
pub mod replication;
pub mod throttle;

/// A partition of a topic, ordered by topic name then index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}
