//! The one error type of the client.

use meridian_wire::ErrorCode;

/// Everything that can go wrong talking to a broker.
///
/// Cheap to clone, because one failure (a lost connection, a broker error for a
/// partition) is reported to every record of the batches it hit.
///
/// ```no_run
/// # async fn example(client: meridian_client::Client) {
/// use meridian_client::{Error, ErrorCode};
/// match client.admin().delete_topic("orders").await {
///     Ok(()) => println!("deleted"),
///     Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => println!("nothing to delete"),
///     Err(e) => eprintln!("{e}"),
/// }
/// # }
/// ```
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The broker answered with an error code (per-partition, per-topic or request-level).
    #[error("{code}: {message}")]
    Broker { code: ErrorCode, message: String },
    /// The connection to the broker could not be established.
    #[error("cannot connect to the broker: {0}")]
    Connect(String),
    /// The connection or a stream failed while a request was under way.
    #[error("transport error: {0}")]
    Transport(String),
    /// The broker sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The request got no answer within the configured timeout.
    #[error("request timed out")]
    Timeout,
    /// TLS set-up failed (bad CA file, certificate not trusted, ...).
    #[error("TLS error: {0}")]
    Tls(String),
    /// A configuration value or argument is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The client, producer or consumer was closed.
    #[error("the client is closed")]
    Closed,
    /// The partition's leader no longer holds records the consumer already returned:
    /// a leader change to a replica that was behind (an unclean election, a
    /// failover) cut the log at `truncated_to`, below the consumer's `position`.
    /// Returned by `Consumer::poll` when `auto_offset_reset` is `None`, with the
    /// partition paused at `position` until a seek; otherwise the consumer reads on
    /// from `truncated_to` and logs a warning.
    #[error(
        "{topic}/{partition}: the leader's log ends at offset {truncated_to} for what this consumer read, below its position {position}: records were lost in a leader change"
    )]
    LogTruncated {
        topic: String,
        partition: u32,
        position: i64,
        truncated_to: i64,
    },
}

impl Error {
    /// The broker's error code, when the broker is the one that refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether sending the same request again may succeed: retriable broker codes, a
    /// connection that could not be made or was lost, and timeouts. The client
    /// treats them so itself: a consumer keeps fetching after reporting one from
    /// `poll`, and a group member keeps trying to join.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Broker { code, .. } => code.is_retriable(),
            Error::Connect(_) | Error::Transport(_) | Error::Timeout => true,
            Error::Protocol(_)
            | Error::Tls(_)
            | Error::Config(_)
            | Error::Closed
            | Error::LogTruncated { .. } => false,
        }
    }

    /// A broker error with the code's description as message when the broker gave none.
    pub(crate) fn broker(code: ErrorCode, message: impl Into<String>) -> Error {
        let message = message.into();
        let message = if message.is_empty() {
            code.description().to_string()
        } else {
            message
        };
        Error::Broker { code, message }
    }
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_errors_carry_their_code() {
        let e = Error::broker(ErrorCode::UnknownTopic, "topic `x` does not exist");
        assert_eq!(e.code(), Some(ErrorCode::UnknownTopic));
        assert!(!e.is_retriable());
        assert!(e.to_string().contains("topic `x` does not exist"));
        assert!(e.to_string().starts_with("UnknownTopic"));
        let e = Error::broker(ErrorCode::StorageError, "");
        assert!(e.is_retriable());
        assert!(e.to_string().contains("could not write to disk"));
        assert_eq!(Error::Timeout.code(), None);
        assert!(Error::Transport("reset".into()).is_retriable());
        // A broker down (say, a partition's leader killed) is a connect failure
        // until the partition has a new leader.
        assert!(Error::Connect("127.0.0.1:9092: timed out".into()).is_retriable());
        assert!(!Error::Closed.is_retriable());
    }
}
