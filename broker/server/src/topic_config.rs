//! Per-topic settings, with Kafka's names (`retention.ms`, `segment.bytes`, …) on the
//! wire and in `topic describe`, and the broker-wide defaults they fall back to.

use std::collections::BTreeMap;

use meridian_log::LogConfig;
use serde::{Deserialize, Serialize};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Broker-wide defaults for topic settings (`[topic_defaults]` in the config file).
/// `-1` means "no limit" where Kafka uses it that way.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TopicDefaults {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub segment_bytes: i64,
    pub segment_ms: i64,
    pub max_message_bytes: i64,
    pub index_interval_bytes: i64,
    pub cleanup_policy: String,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        TopicDefaults {
            retention_ms: 7 * DAY_MS as i64,
            retention_bytes: -1,
            segment_bytes: 1 << 30,
            segment_ms: 7 * DAY_MS as i64,
            max_message_bytes: 1_048_588,
            index_interval_bytes: 4096,
            cleanup_policy: "delete".into(),
        }
    }
}

/// The keys a topic accepts.
pub const TOPIC_CONFIG_KEYS: [&str; 7] = [
    "cleanup.policy",
    "index.interval.bytes",
    "max.message.bytes",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
];

impl TopicDefaults {
    fn value_of(&self, key: &str) -> String {
        match key {
            "retention.ms" => self.retention_ms.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "index.interval.bytes" => self.index_interval_bytes.to_string(),
            "cleanup.policy" => self.cleanup_policy.clone(),
            other => unreachable!("unknown topic config key {other}"),
        }
    }

    pub fn check(&self) -> Result<(), String> {
        for key in TOPIC_CONFIG_KEYS {
            check_value(key, &self.value_of(key)).map_err(|e| format!("topic_defaults: {e}"))?;
        }
        Ok(())
    }
}

/// A topic's explicit settings (only those given at creation; the rest come from the
/// broker defaults, so changing a default changes every topic that did not set it).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicOverrides(pub BTreeMap<String, String>);

fn parse_int(key: &str, value: &str, min: i64) -> Result<i64, String> {
    let v: i64 = value
        .parse()
        .map_err(|_| format!("{key} must be an integer, got `{value}`"))?;
    if v < min {
        return Err(format!("{key} must be at least {min}, got {v}"));
    }
    Ok(v)
}

/// Validates one setting's value.
pub fn check_value(key: &str, value: &str) -> Result<(), String> {
    match key {
        "retention.ms" | "retention.bytes" => parse_int(key, value, -1).map(drop),
        "segment.bytes" => parse_int(key, value, 1024).map(drop),
        "segment.ms" => parse_int(key, value, 1).map(drop),
        "max.message.bytes" => parse_int(key, value, 128).map(drop),
        "index.interval.bytes" => parse_int(key, value, 0).map(drop),
        "cleanup.policy" => match value {
            "delete" => Ok(()),
            "compact" | "compact,delete" | "delete,compact" => {
                Err(format!("cleanup.policy={value} is not supported yet: log compaction is not built; use delete"))
            }
            other => Err(format!("cleanup.policy must be delete, got `{other}`")),
        },
        other => Err(format!("unknown topic config `{other}`; known: {}", TOPIC_CONFIG_KEYS.join(", "))),
    }
}

impl TopicOverrides {
    pub fn parse(
        entries: impl IntoIterator<Item = (String, String)>,
    ) -> Result<TopicOverrides, String> {
        let mut map = BTreeMap::new();
        for (key, value) in entries {
            check_value(&key, &value)?;
            map.insert(key, value);
        }
        Ok(TopicOverrides(map))
    }

    /// Every setting with its effective value and whether it is the broker default.
    pub fn describe(&self, defaults: &TopicDefaults) -> Vec<(String, String, bool)> {
        TOPIC_CONFIG_KEYS
            .iter()
            .map(|key| match self.0.get(*key) {
                Some(v) => (key.to_string(), v.clone(), false),
                None => (key.to_string(), defaults.value_of(key), true),
            })
            .collect()
    }

    fn effective(&self, defaults: &TopicDefaults, key: &str) -> i64 {
        let value = self
            .0
            .get(key)
            .cloned()
            .unwrap_or_else(|| defaults.value_of(key));
        // Values were checked when they were accepted.
        value
            .parse()
            .unwrap_or_else(|_| panic!("checked topic config {key}={value} no longer parses"))
    }

    pub fn log_config(&self, defaults: &TopicDefaults) -> LogConfig {
        let optional = |v: i64| if v < 0 { None } else { Some(v as u64) };
        LogConfig {
            segment_bytes: self.effective(defaults, "segment.bytes") as u64,
            segment_ms: self.effective(defaults, "segment.ms") as u64,
            retention_ms: optional(self.effective(defaults, "retention.ms")),
            retention_bytes: optional(self.effective(defaults, "retention.bytes")),
            max_message_bytes: self
                .effective(defaults, "max.message.bytes")
                .min(u32::MAX as i64) as u32,
            index_interval_bytes: self
                .effective(defaults, "index.interval.bytes")
                .min(u32::MAX as i64) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("retention.ms", "-1", None),
            ("retention.ms", "1000", None),
            ("retention.ms", "-2", Some("at least -1")),
            ("retention.bytes", "x", Some("must be an integer")),
            ("segment.bytes", "10", Some("at least 1024")),
            ("max.message.bytes", "1048588", None),
            ("cleanup.policy", "delete", None),
            ("cleanup.policy", "compact", Some("not supported yet")),
            ("cleanup.policy", "bogus", Some("must be delete")),
            ("retention.hours", "1", Some("unknown topic config")),
        ];
        for (key, value, want) in cases {
            let got = check_value(key, value).err();
            match want {
                None => assert_eq!(got, None, "{key}={value}"),
                Some(want) => assert!(
                    got.as_deref().unwrap_or("").contains(want),
                    "{key}={value}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn overrides_beat_defaults() {
        let overrides =
            TopicOverrides::parse([("retention.ms".to_string(), "-1".to_string())]).unwrap();
        let config = overrides.log_config(&TopicDefaults::default());
        assert_eq!(config.retention_ms, None);
        assert_eq!(config.segment_bytes, 1 << 30);
        let described = overrides.describe(&TopicDefaults::default());
        assert!(described.contains(&("retention.ms".into(), "-1".into(), false)));
        assert!(described.contains(&("cleanup.policy".into(), "delete".into(), true)));
    }
}
