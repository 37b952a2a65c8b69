//! Meridian's wire format, shared by the broker, the SDK and (later) cluster links.
//!
//! Sans-IO: this crate turns bytes into typed values and back, checks limits, and
//! knows nothing about sockets, files, clocks or async runtimes.
//!
//! - [`batch`]: Kafka RecordBatch v2, the one record format used end to end.
//! - [`frame`]: length-prefixed request/response frames and their limits.
//! - [`messages`]: the typed requests and responses ([`group`]: consumer groups;
//!   [`topic_changes`]: settings and partitions of existing topics; [`reassign`];
//!   [`leader_epochs`]: where a leader epoch ends).
//! - [`error`]: error codes carried in responses.
//! - [`cluster`]: broker-to-broker control plane (Raft, heartbeats, ISR changes).
//! - [`describe_cluster`]: the brokers and the metadata quorum, for operators.
//! - [`buffers`]: a pool of large buffers, used again once nothing holds them.
//! - [`topic_id`]: the IDs that tell a topic from an earlier one of its name.

pub mod batch;
pub mod buffers;
pub mod cluster;
pub mod codec;
pub mod describe_cluster;
pub mod error;
pub mod frame;
pub mod group;
pub mod idempotence;
pub mod leader_epochs;
pub mod messages;
pub mod plugin_messages;
pub mod reassign;
pub mod topic_changes;
pub mod topic_id;

pub use error::ErrorCode;
pub use topic_id::TopicId;

/// Longest topic name accepted (as in Kafka).
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Checks a topic name: 1 to 249 characters from `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(format!(
            "topic name is {} characters, the limit is {MAX_TOPIC_NAME_LEN}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("topic name `{name}` is reserved"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("topic name `{name}` contains `{bad}`; allowed are ASCII letters, digits, `.`, `_` and `-`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for ok in ["a", "orders.v1", "a_b-C9", &"x".repeat(249)] {
            assert!(validate_topic_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "ü", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }
}
