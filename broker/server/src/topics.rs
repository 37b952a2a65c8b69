//! The topic registry: topics, their settings and their partitions' logs.
//!
//! On disk: `<data_dir>/topics/<name>/topic.json` (partition count and explicit
//! settings) and `<data_dir>/topics/<name>/<partition>/` (the partition log).
//! A topic is created in a hidden staging directory and renamed into place, and
//! deleted by renaming it aside first, so a crash never leaves half a topic visible.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use meridian_log::{LogError, PartitionLog};
use meridian_wire::{ErrorCode, TopicId};
use parking_lot::{Mutex, MutexGuard, RwLock};
use serde::{Deserialize, Serialize};

use crate::topic_config::{TopicDefaults, TopicOverrides};

/// A typed failure that becomes an error code plus a message in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<LogError> for Failure {
    fn from(e: LogError) -> Failure {
        Failure {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// One partition of a topic. The log sits behind a mutex held only for appends and
/// read planning; the bulk of a read happens outside it (see `ReadSlice`).
pub struct Partition {
    pub index: u32,
    log: Result<Mutex<PartitionLog>, Failure>,
    /// Woken after every append and whenever the high watermark, leader or ISR
    /// changes, for long-polling fetches and acks=all produces.
    pub appended: tokio::sync::Notify,
    /// The replication state machine, once the control plane configured this
    /// partition (`ReplicaManager::apply`); `None` for a standalone partition (single
    /// node). Lock order: the log first, then this.
    pub(crate) replication: Mutex<Option<crate::replica_manager::PartitionReplica>>,
    /// Set by appends, cleared by the periodic flusher.
    pub dirty: AtomicBool,
}

impl Partition {
    /// The log, or the reason this partition is offline (e.g. a corrupted segment).
    pub fn log(&self) -> Result<MutexGuard<'_, PartitionLog>, Failure> {
        match &self.log {
            Ok(log) => Ok(log.lock()),
            Err(failure) => Err(failure.clone()),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct TopicFile {
    partitions: u32,
    replication_factor: u16,
    configs: TopicOverrides,
    /// The cluster's incarnation of the topic (`TopicImage::created_at`); 0 for a
    /// single broker's topics and for files from before it was kept.
    #[serde(default)]
    created_at: u64,
    /// A single broker's topic's ID ([`TopicId::NONE`] in a region, where the
    /// controller's image holds it, and in files from before topics had IDs).
    #[serde(
        default,
        with = "meridian_metadata::image::topic_id_text",
        skip_serializing_if = "TopicId::is_none"
    )]
    id: TopicId,
}

pub struct Topic {
    pub name: String,
    pub overrides: TopicOverrides,
    /// The effective log settings (overrides over broker defaults), computed once.
    pub log_config: meridian_log::LogConfig,
    pub replication_factor: u16,
    /// `min.insync.replicas` (overrides over broker defaults).
    pub min_insync_replicas: usize,
    pub partitions: Vec<Arc<Partition>>,
    /// The cluster's incarnation this local copy belongs to (`TopicImage::created_at`),
    /// 0 when unknown (a single broker's topic).
    pub created_at: u64,
    /// A single broker's topic's ID, given when it was created (or, for one from
    /// before topics had IDs, when the broker first started with IDs:
    /// [`Registry::give_missing_ids`]). [`TopicId::NONE`] in a region, whose topics
    /// have theirs in the controller's image.
    pub id: TopicId,
    dir: PathBuf,
}

impl Topic {
    pub fn partition(&self, index: u32) -> Result<&Arc<Partition>, Failure> {
        self.partitions.get(index as usize).ok_or_else(|| {
            Failure::new(
                ErrorCode::InvalidPartition,
                format!(
                    "topic `{}` has {} partitions; partition {index} does not exist",
                    self.name,
                    self.partitions.len()
                ),
            )
        })
    }
}

pub struct Registry {
    topics_dir: PathBuf,
    pub defaults: TopicDefaults,
    max_partitions_per_topic: u32,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serializes create/delete so two creates of one name cannot race on disk.
    admin: Mutex<()>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Registry {
    /// Loads every topic under `<data_dir>/topics`, recovering each partition's log.
    /// A partition whose log is corrupted stays offline (reported loudly); the rest serve.
    pub fn open(
        data_dir: &Path,
        defaults: TopicDefaults,
        max_partitions_per_topic: u32,
    ) -> anyhow::Result<Registry> {
        let topics_dir = data_dir.join("topics");
        std::fs::create_dir_all(&topics_dir)?;
        let mut topics = HashMap::new();
        for entry in std::fs::read_dir(&topics_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // Leftovers of an interrupted create or delete.
                tracing::info!(dir = %entry.path().display(), "removing leftover topic staging directory");
                std::fs::remove_dir_all(entry.path())?;
                continue;
            }
            let topic = load_topic(&entry.path(), &name, &defaults)?;
            topics.insert(name, Arc::new(topic));
        }
        Ok(Registry {
            topics_dir,
            defaults,
            max_partitions_per_topic,
            topics: RwLock::new(topics),
            admin: Mutex::new(()),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Topic>> {
        let mut topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    /// Checks a create request without doing it.
    pub fn validate_create(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        configs: Vec<(String, String)>,
    ) -> Result<TopicOverrides, Failure> {
        if replication_factor != 1 {
            return Err(Failure::new(
                ErrorCode::InvalidReplicationFactor,
                format!("replication factor {replication_factor} needs {replication_factor} brokers; this is a single-broker cluster"),
            ));
        }
        self.validate_replicated_create(name, partitions, replication_factor, configs)
    }

    /// Checks a create whose replicas the control plane placed (any replication
    /// factor from 1).
    fn validate_replicated_create(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        configs: Vec<(String, String)>,
    ) -> Result<TopicOverrides, Failure> {
        meridian_wire::validate_topic_name(name)
            .map_err(|m| Failure::new(ErrorCode::InvalidTopic, m))?;
        if partitions == 0 || partitions > self.max_partitions_per_topic {
            return Err(Failure::new(
                ErrorCode::InvalidPartitions,
                format!("partitions must be between 1 and {} (max_partitions_per_topic), got {partitions}", self.max_partitions_per_topic),
            ));
        }
        if replication_factor == 0 {
            return Err(Failure::new(
                ErrorCode::InvalidReplicationFactor,
                "replication factor must be at least 1",
            ));
        }
        let overrides = TopicOverrides::parse(configs)
            .map_err(|m| Failure::new(ErrorCode::InvalidConfig, m))?;
        if self.topics.read().contains_key(name) {
            return Err(Failure::new(
                ErrorCode::TopicAlreadyExists,
                format!("topic `{name}` already exists"),
            ));
        }
        Ok(overrides)
    }

    pub fn create(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        configs: Vec<(String, String)>,
    ) -> Result<Arc<Topic>, Failure> {
        let _admin = self.admin.lock();
        let overrides = self.validate_create(name, partitions, replication_factor, configs)?;
        self.create_locked(
            name,
            partitions,
            replication_factor,
            overrides,
            0,
            new_topic_id(),
        )
    }

    /// Creates this broker's replicas of a topic the control plane placed here (any
    /// replication factor). Its partitions serve nothing in cluster mode until the
    /// control plane names their leaders (`ReplicaManager::apply`).
    pub fn create_replicated(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        configs: Vec<(String, String)>,
    ) -> Result<Arc<Topic>, Failure> {
        let _admin = self.admin.lock();
        let overrides =
            self.validate_replicated_create(name, partitions, replication_factor, configs)?;
        self.create_locked(
            name,
            partitions,
            replication_factor,
            overrides,
            0,
            TopicId::NONE,
        )
    }

    /// Makes sure a topic the cluster's controller created exists here (this broker
    /// holds some of its replicas): creates it with the controller's settings when it
    /// is absent, returns it when it is there. Validation was the controller's job.
    pub fn ensure(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        overrides: TopicOverrides,
        created_at: u64,
    ) -> Result<Arc<Topic>, Failure> {
        let _admin = self.admin.lock();
        if let Some(topic) = self.get(name) {
            return Ok(topic);
        }
        self.create_locked(
            name,
            partitions,
            replication_factor,
            overrides,
            created_at,
            TopicId::NONE,
        )
    }

    /// Creates the topic on disk; the caller holds `admin` and checked the request.
    fn create_locked(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        overrides: TopicOverrides,
        created_at: u64,
        id: TopicId,
    ) -> Result<Arc<Topic>, Failure> {
        let storage = |e: std::io::Error| {
            Failure::new(
                ErrorCode::StorageError,
                format!("creating topic `{name}`: {e}"),
            )
        };
        let staging = self.topics_dir.join(format!(".creating-{name}"));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(storage)?;
        }
        std::fs::create_dir_all(&staging).map_err(storage)?;
        let file = TopicFile {
            partitions,
            replication_factor,
            configs: overrides,
            created_at,
            id,
        };
        let json = serde_json::to_vec_pretty(&file).expect("topic file serializes");
        std::fs::write(staging.join("topic.json"), json).map_err(storage)?;
        for index in 0..partitions {
            std::fs::create_dir(staging.join(index.to_string())).map_err(storage)?;
        }
        let dir = self.topics_dir.join(name);
        std::fs::rename(&staging, &dir).map_err(storage)?;
        let topic = load_topic(&dir, name, &self.defaults)
            .map_err(|e| storage(std::io::Error::other(e.to_string())))?;
        let topic = Arc::new(topic);
        self.topics.write().insert(name.to_owned(), topic.clone());
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    pub fn delete(&self, name: &str) -> Result<(), Failure> {
        let _admin = self.admin.lock();
        self.delete_locked(name)
    }

    /// The name of the topic with ID `id` (single broker), if one has it.
    pub fn name_of(&self, id: TopicId) -> Option<String> {
        let topics = self.topics.read();
        let topic = topics.values().find(|t| t.id == id && !id.is_none())?;
        Some(topic.name.clone())
    }

    /// Deletes the topic with ID `id` (single broker), never one created since under
    /// its name; returns its name.
    pub fn delete_id(&self, id: TopicId) -> Result<String, Failure> {
        let _admin = self.admin.lock();
        let name = self.name_of(id).ok_or_else(|| unknown_topic_id(id))?;
        self.delete_locked(&name)?;
        Ok(name)
    }

    /// Deletes the topic on disk; the caller holds `admin`.
    fn delete_locked(&self, name: &str) -> Result<(), Failure> {
        let Some(topic) = self.topics.write().remove(name) else {
            return Err(Failure::new(
                ErrorCode::UnknownTopic,
                format!("topic `{name}` does not exist"),
            ));
        };
        let aside = self
            .topics_dir
            .join(format!(".deleted-{name}-{}", now_ms()));
        std::fs::rename(&topic.dir, &aside).map_err(|e| {
            Failure::new(
                ErrorCode::StorageError,
                format!("deleting topic `{name}`: {e}"),
            )
        })?;
        // Fetches still holding the topic keep working on open files; the files go now.
        if let Err(e) = std::fs::remove_dir_all(&aside) {
            tracing::warn!(topic = name, error = %e, "could not remove deleted topic's files; they go at next start");
        }
        for partition in &topic.partitions {
            partition.appended.notify_waiters();
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Changes a topic's settings (single broker): `Some(value)` sets a key, `None`
    /// reverts it to the broker default; with `replace`, every key `changes` does not
    /// set reverts too. Checked as a whole; nothing changes on a refusal.
    pub fn alter_configs(
        &self,
        name: &str,
        changes: Vec<(String, Option<String>)>,
        replace: bool,
    ) -> Result<Arc<Topic>, Failure> {
        let _admin = self.admin.lock();
        let (topic, overrides) = self.changed_overrides(name, changes, replace)?;
        self.replace_locked(&topic, overrides, topic.partitions.len() as u32)
    }

    /// Checks changes as [`Registry::alter_configs`] does, changing nothing.
    pub fn validate_alter_configs(
        &self,
        name: &str,
        changes: Vec<(String, Option<String>)>,
        replace: bool,
    ) -> Result<(), Failure> {
        let _admin = self.admin.lock();
        self.changed_overrides(name, changes, replace).map(drop)
    }

    /// Topic `name` and the settings `changes` give it. The caller holds `admin`.
    fn changed_overrides(
        &self,
        name: &str,
        changes: Vec<(String, Option<String>)>,
        replace: bool,
    ) -> Result<(Arc<Topic>, TopicOverrides), Failure> {
        let topic = self.existing(name)?;
        let current = if replace {
            &TopicOverrides::default()
        } else {
            &topic.overrides
        };
        let overrides = current
            .with_changes(changes)
            .map_err(|m| Failure::new(ErrorCode::InvalidConfig, m))?;
        Ok((topic, overrides))
    }

    /// Gives a topic the settings the cluster's controller decided (already checked
    /// there).
    pub fn set_overrides(
        &self,
        name: &str,
        overrides: TopicOverrides,
    ) -> Result<Arc<Topic>, Failure> {
        let _admin = self.admin.lock();
        let topic = self.existing(name)?;
        if topic.overrides == overrides {
            return Ok(topic);
        }
        self.replace_locked(&topic, overrides, topic.partitions.len() as u32)
    }

    /// Raises a topic's partition count to `count` (single broker): a count at or
    /// below the current one, or above `max_partitions_per_topic`, is refused.
    pub fn add_partitions(&self, name: &str, count: u32) -> Result<Arc<Topic>, Failure> {
        let _admin = self.admin.lock();
        let topic = self.existing(name)?;
        self.check_partition_count(&topic, count)?;
        self.replace_locked(&topic, topic.overrides.clone(), count)
    }

    /// Checks a count as [`Registry::add_partitions`] does, adding nothing.
    pub fn validate_add_partitions(&self, name: &str, count: u32) -> Result<(), Failure> {
        let _admin = self.admin.lock();
        let topic = self.existing(name)?;
        self.check_partition_count(&topic, count)
    }

    fn check_partition_count(&self, topic: &Topic, count: u32) -> Result<(), Failure> {
        let current = topic.partitions.len() as u32;
        check_new_partition_count(&topic.name, current, count, self.max_partitions_per_topic)
    }

    /// Gives a topic the partition count the cluster's controller decided; a count
    /// at or below the local one changes nothing.
    pub fn ensure_partitions(&self, name: &str, count: u32) -> Result<Arc<Topic>, Failure> {
        let _admin = self.admin.lock();
        let topic = self.existing(name)?;
        if count <= topic.partitions.len() as u32 {
            return Ok(topic);
        }
        self.replace_locked(&topic, topic.overrides.clone(), count)
    }

    fn existing(&self, name: &str) -> Result<Arc<Topic>, Failure> {
        self.get(name).ok_or_else(|| {
            Failure::new(
                ErrorCode::UnknownTopic,
                format!("topic `{name}` does not exist"),
            )
        })
    }

    /// Replaces `topic` with one of these settings and `partitions` partitions (at
    /// least as many as it has: new ones get empty logs). The caller holds `admin`.
    ///
    /// New partitions' directories come first and `topic.json` last, replaced by a
    /// rename: a crash in between leaves the old topic, plus directories that no
    /// `topic.json` counts (removed when the partitions are added again). The
    /// partitions already there are shared with the old `Topic`, so requests holding
    /// it keep working, and their logs take the new settings in place.
    fn replace_locked(
        &self,
        topic: &Arc<Topic>,
        overrides: TopicOverrides,
        partitions: u32,
    ) -> Result<Arc<Topic>, Failure> {
        let name = &topic.name;
        let storage = |e: std::io::Error| {
            Failure::new(
                ErrorCode::StorageError,
                format!("changing topic `{name}`: {e}"),
            )
        };
        let log_config = overrides.log_config(&self.defaults);
        let mut all = topic.partitions.clone();
        let now = now_ms();
        for index in topic.partitions.len() as u32..partitions {
            let dir = topic.dir.join(index.to_string());
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(storage)?;
            }
            std::fs::create_dir(&dir).map_err(storage)?;
            all.push(open_partition(&topic.dir, name, index, &log_config, now));
        }
        let file = TopicFile {
            partitions,
            replication_factor: topic.replication_factor,
            configs: overrides.clone(),
            created_at: topic.created_at,
            id: topic.id,
        };
        write_topic_file(&topic.dir, &file).map_err(storage)?;
        if log_config != topic.log_config {
            for partition in &topic.partitions {
                if let Ok(mut log) = partition.log() {
                    log.set_config(log_config.clone());
                }
            }
        }
        let replaced = Arc::new(Topic {
            name: name.clone(),
            min_insync_replicas: overrides.min_insync_replicas(&self.defaults),
            overrides,
            log_config,
            replication_factor: topic.replication_factor,
            partitions: all,
            created_at: topic.created_at,
            id: topic.id,
            dir: topic.dir.clone(),
        });
        self.topics.write().insert(name.clone(), replaced.clone());
        if partitions as usize > topic.partitions.len() {
            tracing::info!(topic = %name, from = topic.partitions.len(), to = partitions, "added partitions");
        } else {
            tracing::info!(topic = %name, configs = ?replaced.overrides.0, "changed topic settings");
        }
        Ok(replaced)
    }

    /// Gives each topic from before topics had IDs one (a single broker's: in a
    /// region the controller's image holds them), written to its `topic.json`.
    pub fn give_missing_ids(&self) -> anyhow::Result<()> {
        let _admin = self.admin.lock();
        let mut topics = self.topics.write();
        for topic in topics.values_mut().filter(|t| t.id.is_none()) {
            let id = new_topic_id();
            let file = TopicFile {
                partitions: topic.partitions.len() as u32,
                replication_factor: topic.replication_factor,
                configs: topic.overrides.clone(),
                created_at: topic.created_at,
                id,
            };
            write_topic_file(&topic.dir, &file)?;
            tracing::info!(topic = %topic.name, %id, "gave a topic from before topic IDs its ID");
            *topic = Arc::new(Topic {
                name: topic.name.clone(),
                overrides: topic.overrides.clone(),
                log_config: topic.log_config.clone(),
                replication_factor: topic.replication_factor,
                min_insync_replicas: topic.min_insync_replicas,
                partitions: topic.partitions.clone(),
                created_at: topic.created_at,
                id,
                dir: topic.dir.clone(),
            });
        }
        Ok(())
    }

    /// Flushes and marks every log cleanly closed.
    pub fn close(&self) {
        let topics: Vec<Arc<Topic>> = self.topics.write().drain().map(|(_, t)| t).collect();
        for topic in topics {
            for partition in &topic.partitions {
                if let Ok(mut log) = partition.log() {
                    if let Err(e) = log.mark_clean_shutdown() {
                        tracing::error!(topic = %topic.name, partition = partition.index, error = %e, "flush at shutdown failed");
                    }
                }
            }
        }
    }
}

fn load_topic(dir: &Path, name: &str, defaults: &TopicDefaults) -> anyhow::Result<Topic> {
    let json = std::fs::read(dir.join("topic.json"))?;
    let file: TopicFile = serde_json::from_slice(&json)?;
    let log_config = file.configs.log_config(defaults);
    let now = now_ms();
    let partitions = (0..file.partitions)
        .map(|index| open_partition(dir, name, index, &log_config, now))
        .collect();
    Ok(Topic {
        min_insync_replicas: file.configs.min_insync_replicas(defaults),
        name: name.to_owned(),
        overrides: file.configs,
        log_config,
        replication_factor: file.replication_factor,
        partitions,
        created_at: file.created_at,
        id: file.id,
        dir: dir.to_owned(),
    })
}

/// Opens partition `index` of the topic in `dir`; a log that cannot be opened leaves
/// the partition offline (reported loudly), the rest of the topic serves.
fn open_partition(
    dir: &Path,
    name: &str,
    index: u32,
    log_config: &meridian_log::LogConfig,
    now: i64,
) -> Arc<Partition> {
    let log = match PartitionLog::open(&dir.join(index.to_string()), log_config.clone(), now) {
        Ok(log) => Ok(Mutex::new(log)),
        Err(e) => {
            tracing::error!(topic = name, partition = index, error = %e, "PARTITION OFFLINE: its log could not be opened");
            Err(Failure::new(
                ErrorCode::CorruptLog,
                format!("partition {name}/{index} is offline: {e}"),
            ))
        }
    };
    Arc::new(Partition {
        index,
        log,
        appended: tokio::sync::Notify::new(),
        replication: Mutex::new(None),
        dirty: AtomicBool::new(false),
    })
}

/// The refusal of an ID no topic has.
pub fn unknown_topic_id(id: TopicId) -> Failure {
    Failure::new(
        ErrorCode::UnknownTopicId,
        format!("no topic has ID {id}: it was deleted (perhaps created again under its name, with a new ID), or never existed"),
    )
}

/// A new topic ID: random, as Kafka's are.
pub fn new_topic_id() -> TopicId {
    loop {
        if let Some(id) = TopicId::from_random(rand::random()) {
            return id;
        }
    }
}

/// Replaces `topic.json` in `dir` by writing a new file, syncing it and renaming it
/// over the old one, so a crash leaves one or the other whole.
fn write_topic_file(dir: &Path, file: &TopicFile) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(file).expect("topic file serializes");
    let staging = dir.join("topic.json.new");
    {
        let mut f = std::fs::File::create(&staging)?;
        std::io::Write::write_all(&mut f, &json)?;
        f.sync_all()?;
    }
    std::fs::rename(&staging, dir.join("topic.json"))?;
    std::fs::File::open(dir)?.sync_all()
}

impl Partition {
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }
}

/// The rule for raising topic `name`'s partition count from `current` to `count`,
/// for a single broker's registry and a cluster's controller alike: higher than now,
/// and at most `max` (`max_partitions_per_topic`).
pub(crate) fn check_new_partition_count(
    name: &str,
    current: u32,
    count: u32,
    max: u32,
) -> Result<(), Failure> {
    if count <= current {
        return Err(Failure::new(
            ErrorCode::InvalidPartitions,
            format!("topic `{name}` has {current} partitions; the new count must be higher, got {count} (partitions cannot be removed)"),
        ));
    }
    if count > max {
        return Err(Failure::new(
            ErrorCode::InvalidPartitions,
            format!("partitions must be at most {max} (max_partitions_per_topic), got {count}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(dir: &Path) -> Registry {
        Registry::open(dir, TopicDefaults::default(), 16).unwrap()
    }

    /// A crash after a new partition's directory was made but before `topic.json`
    /// counted it leaves a directory no topic file counts: the topic loads without
    /// it, and adding the partition again starts it empty.
    #[test]
    fn a_partition_directory_left_by_a_crash_is_not_served_and_is_replaced() {
        let temp = tempfile::tempdir().unwrap();
        let topics = registry(temp.path());
        topics.create("t", 1, 1, Vec::new()).unwrap();
        topics.close();
        let stray = temp.path().join("topics/t/1");
        std::fs::create_dir(&stray).unwrap();
        std::fs::write(stray.join("00000000000000000000.log"), b"not a log").unwrap();

        let topics = registry(temp.path());
        assert_eq!(topics.get("t").unwrap().partitions.len(), 1);
        let grown = topics.add_partitions("t", 2).unwrap();
        let log = grown.partitions[1].log().unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
        assert!(!std::fs::read(stray.join("00000000000000000000.log"))
            .unwrap_or_default()
            .starts_with(b"not a log"));
        drop(log);
        topics.close();
        assert_eq!(registry(temp.path()).get("t").unwrap().partitions.len(), 2);
    }

    /// Settings changed on a topic reach its open logs and its file; a refused
    /// change leaves both as they were.
    #[test]
    fn changed_settings_reach_the_logs_and_the_file() {
        let temp = tempfile::tempdir().unwrap();
        let topics = registry(temp.path());
        let before = topics.create("t", 2, 1, Vec::new()).unwrap();
        let changed = topics
            .alter_configs(
                "t",
                vec![("retention.bytes".into(), Some("4096".into()))],
                false,
            )
            .unwrap();
        for partition in &before.partitions {
            assert_eq!(
                partition.log().unwrap().config().retention_bytes,
                Some(4096)
            );
        }
        assert!(Arc::ptr_eq(&before.partitions[0], &changed.partitions[0]));
        let refused = topics.alter_configs(
            "t",
            vec![("retention.bytes".into(), Some("x".into()))],
            false,
        );
        assert_eq!(
            refused.err().map(|f| f.code),
            Some(ErrorCode::InvalidConfig)
        );
        assert_eq!(
            topics.get("t").unwrap().overrides.0.get("retention.bytes"),
            Some(&"4096".to_string())
        );
        // Settings given to replace the others: what they leave out reverts.
        let set = |key: &str, value: &str| (key.to_string(), Some(value.to_string()));
        topics
            .validate_alter_configs("t", vec![set("segment.ms", "60000")], true)
            .unwrap();
        assert_eq!(topics.get("t").unwrap().overrides.0.len(), 1);
        topics
            .alter_configs("t", vec![set("segment.ms", "60000")], true)
            .unwrap();
        let replaced = topics.get("t").unwrap();
        assert_eq!(
            replaced.overrides.0.keys().collect::<Vec<_>>(),
            ["segment.ms"]
        );
        assert_eq!(
            before.partitions[1].log().unwrap().config().retention_bytes,
            None
        );
        topics
            .alter_configs("t", vec![set("retention.bytes", "4096")], true)
            .unwrap();
        topics.close();
        let reopened = registry(temp.path()).get("t").unwrap();
        assert_eq!(reopened.log_config.retention_bytes, Some(4096));
        assert_eq!(
            reopened.overrides.0.keys().collect::<Vec<_>>(),
            ["retention.bytes"]
        );
        assert!(!temp.path().join("topics/t/topic.json.new").exists());
    }
}
