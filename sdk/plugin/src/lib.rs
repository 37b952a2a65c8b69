//! Guest SDK for Meridian plugins: write a filter, transform or partitioner in plain
//! Rust, compile it to `wasm32-wasip1`, deploy it to a broker.
//!
//! A plugin is either a function (stateless, parameters passed on every call):
//!
//! ```
//! use meridian_plugin::{filter, Error, Params, Record};
//!
//! #[filter]
//! fn non_empty(record: &Record<'_>, _params: &Params) -> Result<bool, Error> {
//!     Ok(record.value.is_some_and(|v| !v.is_empty()))
//! }
//! ```
//!
//! or a type implementing [`Filter`], [`Transform`] or [`Partitioner`], built once per
//! instance from its parameters and kept between batches (state is lost when the broker
//! restarts or the instance fails):
//!
//! ```
//! use meridian_plugin::{filter, Error, Filter, Params, Record};
//!
//! struct EveryNth { n: u64, seen: u64 }
//!
//! #[filter]
//! impl Filter for EveryNth {
//!     fn new(params: &Params) -> Result<Self, Error> {
//!         Ok(EveryNth { n: params.parse_or("n", 10)?, seen: 0 })
//!     }
//!     fn filter(&mut self, _record: &Record<'_>) -> Result<bool, Error> {
//!         self.seen += 1;
//!         Ok(self.seen % self.n == 0)
//!     }
//! }
//! ```
//!
//! Returning `Err` for a record hands it to the attachment's failure policy (reject the
//! produce, skip the record, or send it to a dead-letter topic). A panic fails the whole
//! batch and the broker starts a fresh instance.
//!
//! The same code builds natively, so plugins are unit-tested with `cargo test`; the
//! [`testing`] module runs a plugin through the exact byte-level ABI the broker uses.
//! Anything printed to stdout or stderr goes to the broker's plugin logs topic.

#[doc(hidden)]
pub mod __abi;
pub mod testing;

use std::collections::BTreeMap;

pub use meridian_plugin_macros::{filter, partitioner, transform};

/// The error type plugins return: anything that converts into a boxed error, so `?` works
/// on std errors and `Err("message".into())` on strings.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// One record header as the plugin sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub key: &'a str,
    pub value: Option<&'a [u8]>,
}

/// One input record, borrowed in place from the batch the broker wrote into the
/// plugin's memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<Header<'a>>,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// The record's offset; on the produce path, its position within the batch.
    pub offset: i64,
}

impl<'a> Record<'a> {
    /// A record with only a value, for tests.
    pub fn with_value(value: &'a [u8]) -> Record<'a> {
        Record {
            value: Some(value),
            ..Record::default()
        }
    }

    /// The value as UTF-8, if it is present and valid.
    pub fn value_str(&self) -> Option<&'a str> {
        self.value.and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first header with this key.
    pub fn header(&self, key: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
    }
}

/// A record a transform emits. `timestamp` 0 keeps nothing special: the broker writes
/// what the transform gives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: i64,
}

impl OutputRecord {
    /// A copy of an input record, to modify.
    pub fn from_record(record: &Record<'_>) -> OutputRecord {
        OutputRecord {
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            headers: record
                .headers
                .iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect(),
            timestamp: record.timestamp,
        }
    }
}

/// Key/value parameters given when the plugin is attached (`--param key=value`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    map: BTreeMap<String, String>,
}

impl Params {
    pub fn new<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Params {
        Params {
            map: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// The parameter, or an error naming it.
    pub fn require(&self, key: &str) -> Result<&str, Error> {
        self.get(key)
            .ok_or_else(|| format!("missing parameter `{key}`").into())
    }

    /// The parameter parsed, `default` when absent, an error naming it when unparsable.
    pub fn parse_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, Error>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(s) => s
                .parse()
                .map_err(|e| format!("parameter `{key}`=`{s}`: {e}").into()),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Keeps or drops each record.
pub trait Filter: Sized {
    fn new(params: &Params) -> Result<Self, Error>;
    fn filter(&mut self, record: &Record<'_>) -> Result<bool, Error>;
}

/// Maps each record to zero or more records (map, filter-map and flat-map in one).
pub trait Transform: Sized {
    fn new(params: &Params) -> Result<Self, Error>;
    fn transform(&mut self, record: &Record<'_>) -> Result<Vec<OutputRecord>, Error>;
}

/// Chooses the partition, in `0..n_partitions`, of a record produced without one.
pub trait Partitioner: Sized {
    fn new(params: &Params) -> Result<Self, Error>;
    fn partition(&mut self, record: &Record<'_>, n_partitions: u32) -> Result<u32, Error>;
}

/// Kafka's default partition for a key (murmur2, positive, modulo the partition count):
/// the same choice the Meridian client makes, so a partitioner can fall back to it and
/// keep per-key order compatible with clients that pick partitions themselves.
pub fn default_partition(key: &[u8], n_partitions: u32) -> u32 {
    ((murmur2(key) & 0x7fff_ffff) as u32) % n_partitions.max(1)
}

/// Kafka's murmur2 hash. Kept identical to `meridian_client::murmur2`, which this guest
/// crate must not depend on (it would pull the client's network stack into plugins).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        h = h.wrapping_mul(M) ^ k.wrapping_mul(M);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    #[test]
    fn murmur2_matches_kafka_test_vectors() {
        // From Kafka's UtilsTest.testMurmur2, as in meridian-client.
        for (input, expected) in [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            ("abc", 479470107),
        ] {
            assert_eq!(super::murmur2(input.as_bytes()), expected, "{input}");
        }
    }
}
