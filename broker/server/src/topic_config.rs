//! Per-topic settings, with Kafka's names (`retention.ms`, `segment.bytes`, …) on the
//! wire and in `topic describe`, and the broker-wide defaults they fall back to.

use std::collections::BTreeMap;

use meridian_log::{CleanupPolicy, LogConfig};
use meridian_wire::messages::DescribedConfig;
use serde::{Deserialize, Serialize};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Broker-wide defaults for topic settings (`[topic_defaults]` in the config file).
/// `-1` means "no limit" where Kafka uses it that way.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TopicDefaults {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub segment_bytes: i64,
    pub segment_ms: i64,
    pub max_message_bytes: i64,
    pub index_interval_bytes: i64,
    pub cleanup_policy: String,
    pub delete_retention_ms: i64,
    pub min_cleanable_dirty_ratio: f64,
    pub min_compaction_lag_ms: i64,
    /// acks=all needs at least this many in-sync replicas (Kafka's
    /// `min.insync.replicas`, default 1).
    pub min_insync_replicas: i64,
    /// Allow electing a leader from outside the ISR when no in-sync replica is left
    /// (availability over durability: acknowledged records may be lost).
    pub unclean_leader_election_enable: bool,
    /// A produced batch dated further ahead of the broker's clock is refused with
    /// `InvalidTimestamp` (Kafka's `message.timestamp.after.max.ms`; 1 hour, as
    /// Kafka 4's default).
    pub message_timestamp_after_max_ms: i64,
    /// A produced batch dated further behind is refused (no limit by default).
    pub message_timestamp_before_max_ms: i64,
    /// `CreateTime` (the producer's timestamps, default) or `LogAppendTime` (the
    /// broker stamps each batch with its clock as it appends it).
    pub message_timestamp_type: String,
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
            delete_retention_ms: DAY_MS as i64,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            min_insync_replicas: 1,
            unclean_leader_election_enable: false,
            message_timestamp_after_max_ms: 60 * 60 * 1000,
            message_timestamp_before_max_ms: i64::MAX,
            message_timestamp_type: "CreateTime".into(),
        }
    }
}

/// The keys a topic accepts.
pub const TOPIC_CONFIG_KEYS: [&str; 15] = [
    "cleanup.policy",
    "delete.retention.ms",
    "index.interval.bytes",
    "max.message.bytes",
    "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
    "unclean.leader.election.enable",
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
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "min.cleanable.dirty.ratio" => self.min_cleanable_dirty_ratio.to_string(),
            "min.compaction.lag.ms" => self.min_compaction_lag_ms.to_string(),
            "min.insync.replicas" => self.min_insync_replicas.to_string(),
            "unclean.leader.election.enable" => self.unclean_leader_election_enable.to_string(),
            "message.timestamp.after.max.ms" => self.message_timestamp_after_max_ms.to_string(),
            "message.timestamp.before.max.ms" => self.message_timestamp_before_max_ms.to_string(),
            "message.timestamp.type" => self.message_timestamp_type.clone(),
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
        "cleanup.policy" => value.parse::<CleanupPolicy>().map(drop),
        "delete.retention.ms" | "min.compaction.lag.ms" => parse_int(key, value, 0).map(drop),
        "min.insync.replicas" => parse_int(key, value, 1).map(drop),
        "message.timestamp.after.max.ms" | "message.timestamp.before.max.ms" => {
            parse_int(key, value, 0).map(drop)
        }
        "message.timestamp.type" => match value {
            "CreateTime" | "LogAppendTime" => Ok(()),
            _ => Err(format!(
                "{key} must be CreateTime or LogAppendTime, got `{value}`"
            )),
        },
        "unclean.leader.election.enable" => match value {
            "true" | "false" => Ok(()),
            _ => Err(format!("{key} must be true or false, got `{value}`")),
        },
        "min.cleanable.dirty.ratio" => match value.parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(()),
            _ => Err(format!(
                "{key} must be a number between 0 and 1, got `{value}`"
            )),
        },
        other => Err(format!(
            "unknown topic config `{other}`; known: {}",
            TOPIC_CONFIG_KEYS.join(", ")
        )),
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

    /// These settings with `changes` applied in order: `Some(value)` sets a key,
    /// `None` removes the topic's own value (the broker default applies again). Every
    /// key and value is checked; one bad change refuses them all.
    pub fn with_changes(
        &self,
        changes: impl IntoIterator<Item = (String, Option<String>)>,
    ) -> Result<TopicOverrides, String> {
        let mut map = self.0.clone();
        for (key, value) in changes {
            match value {
                Some(value) => {
                    check_value(&key, &value)?;
                    map.insert(key, value);
                }
                None if TOPIC_CONFIG_KEYS.contains(&key.as_str()) => {
                    map.remove(&key);
                }
                None => {
                    return Err(format!(
                        "unknown topic config `{key}`; known: {}",
                        TOPIC_CONFIG_KEYS.join(", ")
                    ))
                }
            }
        }
        Ok(TopicOverrides(map))
    }

    /// Every setting with its effective value and whether it is the broker default.
    pub fn describe(&self, defaults: &TopicDefaults) -> Vec<DescribedConfig> {
        TOPIC_CONFIG_KEYS
            .iter()
            .map(|key| {
                let (value, is_default) = match self.0.get(*key) {
                    Some(v) => (v.clone(), false),
                    None => (defaults.value_of(key), true),
                };
                DescribedConfig {
                    key: key.to_string(),
                    value,
                    is_default,
                }
            })
            .collect()
    }

    fn effective<T: std::str::FromStr>(&self, defaults: &TopicDefaults, key: &str) -> T {
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

    /// `min.insync.replicas`: acks=all is refused with fewer in-sync replicas.
    pub fn min_insync_replicas(&self, defaults: &TopicDefaults) -> usize {
        self.effective::<i64>(defaults, "min.insync.replicas")
            .max(1) as usize
    }

    /// `unclean.leader.election.enable`, explicit or the broker default.
    pub fn unclean_leader_election(&self, defaults: &TopicDefaults) -> bool {
        self.effective(defaults, "unclean.leader.election.enable")
    }

    pub fn log_config(&self, defaults: &TopicDefaults) -> LogConfig {
        let optional = |v: i64| if v < 0 { None } else { Some(v as u64) };
        let int = |key| self.effective::<i64>(defaults, key);
        LogConfig {
            segment_bytes: int("segment.bytes") as u64,
            segment_ms: int("segment.ms") as u64,
            retention_ms: optional(int("retention.ms")),
            retention_bytes: optional(int("retention.bytes")),
            max_message_bytes: int("max.message.bytes").min(u32::MAX as i64) as u32,
            index_interval_bytes: int("index.interval.bytes").min(u32::MAX as i64) as u32,
            cleanup_policy: self.effective(defaults, "cleanup.policy"),
            delete_retention_ms: int("delete.retention.ms") as u64,
            min_cleanable_dirty_ratio: self.effective(defaults, "min.cleanable.dirty.ratio"),
            min_compaction_lag_ms: int("min.compaction.lag.ms") as u64,
            message_timestamp_after_max_ms: int("message.timestamp.after.max.ms") as u64,
            message_timestamp_before_max_ms: int("message.timestamp.before.max.ms") as u64,
            log_append_time: self.effective::<String>(defaults, "message.timestamp.type")
                == "LogAppendTime",
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
            ("cleanup.policy", "compact", None),
            ("cleanup.policy", "compact,delete", None),
            ("cleanup.policy", "delete,compact", None),
            (
                "cleanup.policy",
                "compact,compact",
                Some("expected delete, compact"),
            ),
            ("cleanup.policy", "bogus", Some("expected delete, compact")),
            ("delete.retention.ms", "0", None),
            ("delete.retention.ms", "-1", Some("at least 0")),
            ("min.compaction.lag.ms", "-5", Some("at least 0")),
            ("min.insync.replicas", "2", None),
            ("min.insync.replicas", "0", Some("at least 1")),
            ("min.cleanable.dirty.ratio", "0.25", None),
            ("min.cleanable.dirty.ratio", "1.5", Some("between 0 and 1")),
            ("min.cleanable.dirty.ratio", "x", Some("between 0 and 1")),
            ("message.timestamp.after.max.ms", "0", None),
            ("message.timestamp.before.max.ms", "-1", Some("at least 0")),
            ("message.timestamp.type", "LogAppendTime", None),
            ("message.timestamp.type", "CreateTime", None),
            (
                "message.timestamp.type",
                "logappendtime",
                Some("CreateTime or LogAppendTime"),
            ),
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
    fn changes_set_and_revert_settings_or_refuse_them_all() {
        let before = TopicOverrides::parse([
            ("retention.ms".to_string(), "1000".to_string()),
            ("segment.bytes".to_string(), "2048".to_string()),
        ])
        .unwrap();
        let set = |k: &str, v: &str| (k.to_string(), Some(v.to_string()));
        let revert = |k: &str| (k.to_string(), None);
        let after = before
            .with_changes([set("retention.ms", "5000"), revert("segment.bytes")])
            .unwrap();
        assert_eq!(
            after.0.get("retention.ms").map(String::as_str),
            Some("5000")
        );
        assert!(!after.0.contains_key("segment.bytes"));
        // Reverting a setting the topic never had is fine; the last change wins.
        let after = before
            .with_changes([
                revert("max.message.bytes"),
                set("retention.ms", "1"),
                set("retention.ms", "2"),
            ])
            .unwrap();
        assert_eq!(after.0.get("retention.ms").map(String::as_str), Some("2"));
        for bad in [
            vec![set("retention.ms", "7"), set("segment.bytes", "10")],
            vec![set("retention.hours", "1")],
            vec![revert("retention.hours")],
        ] {
            let e = before.with_changes(bad.clone()).unwrap_err();
            assert!(
                e.contains("at least 1024") || e.contains("unknown topic config"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn overrides_beat_defaults() {
        let overrides =
            TopicOverrides::parse([("retention.ms".to_string(), "-1".to_string())]).unwrap();
        let config = overrides.log_config(&TopicDefaults::default());
        assert_eq!(config.retention_ms, None);
        assert_eq!(config.segment_bytes, 1 << 30);
        let described: Vec<(String, String, bool)> = overrides
            .describe(&TopicDefaults::default())
            .into_iter()
            .map(|c| (c.key, c.value, c.is_default))
            .collect();
        assert!(described.contains(&("retention.ms".into(), "-1".into(), false)));
        assert!(described.contains(&("cleanup.policy".into(), "delete".into(), true)));
        assert!(described.contains(&("min.cleanable.dirty.ratio".into(), "0.5".into(), true)));
        assert!(described.contains(&("delete.retention.ms".into(), "86400000".into(), true)));
        assert!(described.contains(&("min.insync.replicas".into(), "1".into(), true)));
        assert_eq!(overrides.min_insync_replicas(&TopicDefaults::default()), 1);
        let two =
            TopicOverrides::parse([("min.insync.replicas".to_string(), "2".to_string())]).unwrap();
        assert_eq!(two.min_insync_replicas(&TopicDefaults::default()), 2);
    }

    #[test]
    fn compaction_settings_reach_the_log_config() {
        let overrides = TopicOverrides::parse(
            [
                ("cleanup.policy", "compact,delete"),
                ("delete.retention.ms", "1000"),
                ("min.cleanable.dirty.ratio", "0.1"),
                ("min.compaction.lag.ms", "20"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap();
        let config = overrides.log_config(&TopicDefaults::default());
        assert_eq!(config.cleanup_policy, CleanupPolicy::COMPACT_DELETE);
        assert_eq!(config.delete_retention_ms, 1000);
        assert_eq!(config.min_cleanable_dirty_ratio, 0.1);
        assert_eq!(config.min_compaction_lag_ms, 20);
        let defaults = TopicOverrides::default().log_config(&TopicDefaults::default());
        assert_eq!(defaults.cleanup_policy, CleanupPolicy::DELETE);
        assert_eq!(defaults.delete_retention_ms, 86_400_000);
    }
}
