//! Topic IDs: what tells a topic from an earlier one of the same name.
//!
//! A topic deleted and created again under its old name is a new topic; a client
//! that remembers the old one's ID sees the change (Kafka's KIP-516, whose IDs these
//! are: 16 bytes, written as 22 characters of URL-safe base64 without padding).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;

/// A topic's ID, given when the topic is created and never reused.
///
/// ```
/// use meridian_wire::TopicId;
///
/// let id: TopicId = "YjNvDj3TRiWGbXDb6QqDbA".parse().unwrap();
/// assert_eq!(id.to_string(), "YjNvDj3TRiWGbXDb6QqDbA");
/// assert!(!id.is_none());
/// assert!(TopicId::NONE.is_none());
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicId(pub [u8; 16]);

impl TopicId {
    /// No ID: a topic from a broker that gives none, or one that does not exist.
    /// Kafka's zero UUID.
    pub const NONE: TopicId = TopicId([0; 16]);

    pub fn is_none(&self) -> bool {
        *self == TopicId::NONE
    }

    /// A new ID from 16 random bytes, as a version 4 UUID (whose version bits keep
    /// it clear of Kafka's reserved zero and one); `None` for those whose text
    /// would start with `-`, which reads as a command-line flag (Kafka keeps them
    /// out too): draw again.
    pub fn from_random(mut bytes: [u8; 16]) -> Option<TopicId> {
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        // `-` is the URL-safe alphabet's character 62: the first byte's top six bits.
        (bytes[0] >> 2 != 62).then_some(TopicId(bytes))
    }
}

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicId({self})")
    }
}

/// Text that is not a topic ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a topic ID (22 characters of URL-safe base64, such as `YjNvDj3TRiWGbXDb6QqDbA`)"
)]
pub struct ParseTopicIdError(String);

impl FromStr for TopicId {
    type Err = ParseTopicIdError;

    fn from_str(s: &str) -> Result<TopicId, ParseTopicIdError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .ok_or_else(|| ParseTopicIdError(s.to_string()))?;
        Ok(TopicId(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_bad_text_is_refused() {
        let id = TopicId::from_random([7; 16]).unwrap();
        assert_eq!(id.to_string().len(), 22);
        assert_eq!(id.to_string().parse::<TopicId>(), Ok(id));
        assert_eq!(TopicId::NONE.to_string(), "AAAAAAAAAAAAAAAAAAAAAA");
        for bad in [
            "",
            "orders",
            "AAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAA+A",
        ] {
            assert!(bad.parse::<TopicId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn random_ids_are_version_4_and_kafkas_reserved_ones_are_drawn_again() {
        let id = TopicId::from_random([0xff; 16]).unwrap();
        assert_eq!(id.0[6] >> 4, 4);
        assert_eq!(id.0[8] >> 6, 0b10);
        let mut dash = [0u8; 16];
        dash[0] = 62 << 2;
        assert_eq!(TopicId::from_random(dash), None);
        dash[0] = 61 << 2;
        assert!(TopicId::from_random(dash).is_some());
        let zero = TopicId::from_random([0; 16]).unwrap();
        assert!(u128::from_be_bytes(zero.0) > 1);
    }
}
