//! WebAssembly plugins in the broker: the content-addressed plugin store, topic
//! attachments, and the produce-path chain.
//!
//! On disk, under `<data_dir>/plugins/`:
//! - `modules/<sha256>.wasm`: deployed modules, by content;
//! - `cache/<sha256>.cwasm`: compiled artifacts (meridian-wasm-host's cache);
//! - `plugins.json`: name → (version, sha256) and topic → attachment chain, rewritten
//!   atomically (temp file + rename) on every change.
//!
//! Produce path: when a topic has attachments, each partition's batches are decoded, run
//! through the chain in order (one guest call per batch per plugin), and the surviving
//! records re-encoded with the batch's codec before the usual validation and append.
//! One instance per (topic, partition, plugin) is reused across batches; a redeploy
//! swaps it for the new module at the next batch (hot swap), the old one serving until
//! then. What plugins print goes to the logs topic (`plugins.logs_topic`).
//!
//! Plugin calls block the request's task for at most the attachment's batch deadline,
//! inside `block_in_place`, so a slow plugin does not hold a runtime worker that other
//! connections need.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use meridian_log::{validate_batches, validate_rewritten_batches, ValidatedBatches};
use meridian_metadata::{AttachmentImage, MetadataImage, PluginImage};
use meridian_wasm_host::{
    BatchFailure, BatchOutput, Host, HostConfig, Instance, InstantiateError, Limits, LogStream,
    Plugin, PluginKind,
};
use meridian_wire::batch::{
    decode_records, encode_batch, encode_batch_at, encode_batch_spanning, split_batches,
    split_fetched_batches, BatchError, BatchHeader, Compression, Header, NewRecord,
    ProducerIdentity, Record,
};
use meridian_wire::messages::FetchResponse;
use meridian_wire::plugin_messages::{
    Attachment, FetchFilter, PluginDeployRequest, PluginInfo, PluginInfoResponse,
    PluginListResponse, PluginNameRequest, PluginResult, TopicAttachRequest, TopicDetachRequest,
};
use meridian_wire::ErrorCode;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::cluster::controller::PluginChange;
use crate::cluster::Cluster;

use crate::topics::{Failure, Partition, Topic};
use crate::Shared;

/// `[plugins]` section of the broker configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Largest module accepted by a deploy.
    pub module_size_max_bytes: u64,
    /// Default time one batch call may take, for attachments that set none.
    pub batch_time_max_ms: u64,
    /// Default linear memory cap of an instance, for attachments that set none.
    pub memory_max_bytes: u64,
    /// The most time per batch an attachment may ask for (`--batch-time-max-ms`).
    pub batch_time_max_ms_limit: u64,
    /// The most linear memory an attachment may ask for (`--memory-max-bytes`).
    pub memory_max_bytes_limit: u64,
    /// Granularity of batch deadlines (the epoch ticker's period).
    pub epoch_tick_ms: u64,
    /// Plugin output lines are cut at this many bytes.
    pub log_line_bytes_max: u64,
    /// Output lines kept per instance per second; the rest are counted and dropped.
    pub log_lines_per_sec_max: u32,
    /// Topic that receives plugin output (created on first use, one partition).
    pub logs_topic: String,
    /// In a cluster, writes of plugin output waiting for the broker's own producer
    /// (each one instance's lines of one batch); past it, lines are dropped with a
    /// warning rather than held.
    pub logs_queue_max: usize,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            module_size_max_bytes: 16 << 20,
            batch_time_max_ms: 200,
            memory_max_bytes: 64 << 20,
            batch_time_max_ms_limit: 10_000,
            memory_max_bytes_limit: 1 << 30,
            epoch_tick_ms: 5,
            log_line_bytes_max: 1024,
            log_lines_per_sec_max: 100,
            logs_topic: "__plugin_logs".into(),
            logs_queue_max: 1024,
        }
    }
}

impl PluginsConfig {
    /// Refuses settings no broker could run plugins with: zero caps and deadlines,
    /// defaults above their limits, a logs topic Kafka would not accept as a name.
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("module_size_max_bytes", self.module_size_max_bytes),
            ("batch_time_max_ms", self.batch_time_max_ms),
            ("memory_max_bytes", self.memory_max_bytes),
            ("batch_time_max_ms_limit", self.batch_time_max_ms_limit),
            ("memory_max_bytes_limit", self.memory_max_bytes_limit),
            ("epoch_tick_ms", self.epoch_tick_ms),
            ("log_line_bytes_max", self.log_line_bytes_max),
            ("logs_queue_max", self.logs_queue_max as u64),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("plugins.{key} must be greater than 0"));
        }
        let within = [
            (
                "batch_time_max_ms",
                self.batch_time_max_ms,
                "batch_time_max_ms_limit",
                self.batch_time_max_ms_limit,
            ),
            (
                "memory_max_bytes",
                self.memory_max_bytes,
                "memory_max_bytes_limit",
                self.memory_max_bytes_limit,
            ),
        ];
        for (key, value, limit_key, limit) in within {
            if value > limit {
                return Err(format!(
                    "plugins.{key} ({value}) must not exceed plugins.{limit_key} ({limit})"
                ));
            }
        }
        if self.batch_time_max_ms_limit > u64::from(u32::MAX) {
            return Err(format!(
                "plugins.batch_time_max_ms_limit must be at most {} (what an attachment can carry)",
                u32::MAX
            ));
        }
        meridian_wire::validate_topic_name(&self.logs_topic)
            .map_err(|e| format!("plugins.logs_topic: {e}"))
    }

    /// `limits` of an attachment, held to this broker's ceilings (an attachment made on
    /// a broker with higher ones, or before they were lowered, runs within these).
    fn bounded(&self, limits: Limits) -> Limits {
        Limits {
            batch_time_max_ms: limits.batch_time_max_ms.min(self.batch_time_max_ms_limit),
            memory_max_bytes: limits.memory_max_bytes.min(self.memory_max_bytes_limit),
        }
    }
}

/// What happens to a record a plugin returns an error for, or to the records of a batch
/// the plugin failed on (trap, timeout, memory cap).
#[derive(Clone, Debug, PartialEq, Eq)]
enum FailurePolicy {
    /// The produce of that partition fails with `PluginRejected`.
    Reject,
    /// The records are dropped (and counted in the broker log).
    Skip,
    /// The original records are appended to this topic instead.
    DeadLetter(String),
}

impl FailurePolicy {
    fn parse(s: &str) -> Result<FailurePolicy, String> {
        match s {
            "" | "reject" => Ok(FailurePolicy::Reject),
            "skip" => Ok(FailurePolicy::Skip),
            other => match other.strip_prefix("dead-letter:") {
                Some(topic) if !topic.is_empty() => Ok(FailurePolicy::DeadLetter(topic.into())),
                _ => Err(format!(
                    "on_failure `{other}`: expected reject, skip or dead-letter:TOPIC"
                )),
            },
        }
    }
}

/// Persistent metadata (`plugins.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Metadata {
    plugins: BTreeMap<String, DeployedMeta>,
    attachments: BTreeMap<String, Vec<AttachmentMeta>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct DeployedMeta {
    version: String,
    sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct AttachmentMeta {
    plugin: String,
    params: Vec<(String, String)>,
    batch_time_max_ms: u64,
    memory_max_bytes: u64,
    on_failure: String,
}

struct State {
    meta: Metadata,
    /// Compiled plugins by name (the module of `meta.plugins[name]`).
    loaded: HashMap<String, Plugin>,
}

/// Instance-slot partition of records produced without a partition.
const UNASSIGNED: u32 = meridian_wire::messages::UNASSIGNED_PARTITION;

/// Instance slots kept before fetch-filter slots are dropped (they are remade on use).
const FETCH_SLOTS_MAX: usize = 4096;
const FETCH_SLOT_PREFIX: &str = "fetch:";

/// One instance slot: the module it was made from, and the instance.
type Slot = Arc<Mutex<Option<(String, Instance)>>>;

pub(crate) struct Plugins {
    host: Host,
    dir: PathBuf,
    config: PluginsConfig,
    state: RwLock<State>,
    /// (topic, partition, plugin) → instance. Held only to find a slot; the slot's own
    /// lock is held while a batch runs, so partitions run in parallel.
    slots: Mutex<HashMap<(String, u32, String), Slot>>,
    /// Held while a module compiles: deploys compile one at a time, so a burst of
    /// them takes one core and leaves the rest to serving.
    compiling: Mutex<()>,
}

fn failure(code: ErrorCode, message: impl Into<String>) -> Failure {
    Failure::new(code, message)
}

/// A topic has at most one partitioner: attaching `plugin` (a partitioner when
/// `attaching_partitioner`) to a topic whose chain already names another one is
/// refused. Attaching the same plugin again replaces it in place. The one rule for
/// a single broker's registry ([`Plugins::attach`]) and a cluster's metadata image
/// (`Controller::plugin_change`).
pub(crate) fn one_partitioner<'a>(
    topic: &str,
    plugin: &str,
    attaching_partitioner: bool,
    mut chain: impl Iterator<Item = &'a str>,
    is_partitioner: impl Fn(&str) -> bool,
) -> Result<(), String> {
    if !attaching_partitioner {
        return Ok(());
    }
    match chain.find(|other| *other != plugin && is_partitioner(other)) {
        Some(other) => Err(format!(
            "topic `{topic}` already has partitioner `{other}`; detach it first"
        )),
        None => Ok(()),
    }
}

impl Plugins {
    pub(crate) fn open(data_dir: &Path, config: &PluginsConfig) -> anyhow::Result<Plugins> {
        let dir = data_dir.join("plugins");
        std::fs::create_dir_all(dir.join("modules"))?;
        let host = Host::new(HostConfig {
            module_size_max_bytes: config.module_size_max_bytes as usize,
            cache_dir: Some(dir.join("cache")),
            epoch_tick_ms: config.epoch_tick_ms,
            log_line_bytes_max: config.log_line_bytes_max as usize,
            log_lines_per_sec_max: config.log_lines_per_sec_max,
            ..HostConfig::default()
        })?;
        let meta: Metadata = match std::fs::read(dir.join("plugins.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Metadata::default(),
            Err(e) => return Err(e.into()),
        };
        let mut loaded = HashMap::new();
        for (name, deployed) in &meta.plugins {
            let path = dir
                .join("modules")
                .join(format!("{}.wasm", deployed.sha256));
            let result = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|wasm| host.load(&wasm).map_err(|e| e.to_string()));
            match result {
                Ok(plugin) => {
                    loaded.insert(name.clone(), plugin);
                }
                // Produces through its attachments fail with PluginNotFound until it is
                // redeployed; the broker itself still starts.
                Err(e) => {
                    tracing::error!(plugin = %name, path = %path.display(), error = %e, "cannot load deployed plugin")
                }
            }
        }
        let plugins = Plugins {
            host,
            dir,
            config: config.clone(),
            state: RwLock::new(State { meta, loaded }),
            slots: Mutex::new(HashMap::new()),
            compiling: Mutex::new(()),
        };
        plugins.prune_files(&plugins.state.read());
        Ok(plugins)
    }

    /// Deletes stored modules and compiled artifacts no deployed plugin uses (a
    /// replaced version, a removed plugin, a module a deploy refused) and leftover
    /// temporary files. Called with the state lock held, under which modules are
    /// stored, so a module being deployed is never taken for an orphan.
    fn prune_files(&self, state: &State) {
        let used = |sha: &str| state.meta.plugins.values().any(|d| d.sha256 == sha);
        for (dir, extension) in [("modules", ".wasm"), ("cache", ".cwasm")] {
            let Ok(entries) = std::fs::read_dir(self.dir.join(dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let orphan = match name.strip_suffix(extension) {
                    Some(sha) => !used(sha),
                    None => name.ends_with(".tmp"),
                };
                if orphan {
                    if let Err(e) = std::fs::remove_file(entry.path()) {
                        tracing::warn!(path = %entry.path().display(), error = %e, "cannot delete an unused plugin file");
                    }
                }
            }
        }
    }

    fn save(&self, meta: &Metadata) -> Result<(), Failure> {
        let tmp = self.dir.join("plugins.json.tmp");
        let bytes = serde_json::to_vec_pretty(meta)
            .map_err(|e| failure(ErrorCode::Unknown, e.to_string()))?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, self.dir.join("plugins.json")))
            .map_err(|e| {
                failure(
                    ErrorCode::StorageError,
                    format!("writing plugin metadata: {e}"),
                )
            })
    }

    fn info(state: &State, name: &str) -> Option<PluginInfo> {
        let deployed = state.meta.plugins.get(name)?;
        let plugin = state.loaded.get(name);
        Some(PluginInfo {
            name: name.to_string(),
            version: deployed.version.clone(),
            sha256: deployed.sha256.clone(),
            kind: plugin.map_or("unloadable", |p| p.kind().name()).to_string(),
            size_bytes: plugin.map_or(0, |p| p.size_bytes() as u64),
            attached_to: state
                .meta
                .attachments
                .iter()
                .filter(|(_, chain)| chain.iter().any(|a| a.plugin == name))
                .map(|(topic, _)| topic.clone())
                .collect(),
        })
    }

    /// Validates, stores and (re)places a plugin; attachments pick it up at their next
    /// batch.
    pub(crate) fn deploy(
        &self,
        name: &str,
        version: &str,
        wasm: &[u8],
    ) -> Result<PluginInfo, Failure> {
        let plugin = self.load_checked(name, wasm)?;
        let sha256 = plugin.sha256().to_string();
        let mut state = self.state.write();
        if let Some(old) = state.loaded.get(name) {
            let attached = state
                .meta
                .attachments
                .values()
                .flatten()
                .any(|a| a.plugin == name);
            if attached && old.kind() != plugin.kind() {
                return Err(failure(
                    ErrorCode::InvalidPlugin,
                    format!(
                        "`{name}` is attached as a {}; a {} cannot replace it",
                        old.kind(),
                        plugin.kind()
                    ),
                ));
            }
        }
        let path = self.dir.join("modules").join(format!("{sha256}.wasm"));
        if !path.exists() {
            let tmp = path.with_extension("wasm.tmp");
            std::fs::write(&tmp, wasm)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| failure(ErrorCode::StorageError, format!("storing module: {e}")))?;
        }
        let mut meta = state.meta.clone();
        meta.plugins.insert(
            name.to_string(),
            DeployedMeta {
                version: version.to_string(),
                sha256,
            },
        );
        self.save(&meta)?;
        state.meta = meta;
        state.loaded.insert(name.to_string(), plugin);
        self.prune_files(&state);
        tracing::info!(plugin = %name, %version, "plugin deployed");
        Ok(Self::info(&state, name).expect("just inserted"))
    }

    pub(crate) fn list(&self) -> Vec<PluginInfo> {
        let state = self.state.read();
        state
            .meta
            .plugins
            .keys()
            .filter_map(|name| Self::info(&state, name))
            .collect()
    }

    /// A topic's produce chain in the order it runs (`DescribeTopics`), with the
    /// limits in effect (broker defaults filled in, held to the broker's limits) and
    /// the failure policy spelled out. In a cluster, this broker's copy of the
    /// metadata's chain.
    pub(crate) fn described_chain(&self, topic: &str) -> Vec<Attachment> {
        let state = self.state.read();
        let chain = state.meta.attachments.get(topic).map(Vec::as_slice);
        chain
            .unwrap_or_default()
            .iter()
            .map(|a| (a, self.config.bounded(limits(a))))
            .map(|(a, limits)| Attachment {
                plugin: a.plugin.clone(),
                params: a.params.clone(),
                batch_time_max_ms: u32::try_from(limits.batch_time_max_ms).unwrap_or(u32::MAX),
                memory_max_bytes: limits.memory_max_bytes,
                on_failure: match a.on_failure.as_str() {
                    "" => "reject".to_string(),
                    policy => policy.to_string(),
                },
            })
            .collect()
    }

    pub(crate) fn describe(&self, name: &str) -> Result<PluginInfo, Failure> {
        Self::info(&self.state.read(), name).ok_or_else(|| not_found(name))
    }

    /// Removes a plugin that no topic uses. Its module file stays if another name
    /// shares the same content.
    pub(crate) fn remove(&self, name: &str) -> Result<(), Failure> {
        let mut state = self.state.write();
        let info = Self::info(&state, name).ok_or_else(|| not_found(name))?;
        if !info.attached_to.is_empty() {
            return Err(failure(
                ErrorCode::PluginInUse,
                format!(
                    "plugin `{name}` is attached to {}; detach it first",
                    info.attached_to.join(", ")
                ),
            ));
        }
        let mut meta = state.meta.clone();
        meta.plugins.remove(name);
        self.save(&meta)?;
        state.meta = meta;
        state.loaded.remove(name);
        self.prune_files(&state);
        Ok(())
    }

    /// A valid plugin name, and a module the host loads. Compiling a large module
    /// takes seconds: it happens off the runtime's workers, one module at a time.
    fn load_checked(&self, name: &str, wasm: &[u8]) -> Result<Plugin, Failure> {
        meridian_wire::validate_topic_name(name)
            .map_err(|m| failure(ErrorCode::InvalidPlugin, format!("plugin name: {m}")))?;
        blocking(|| {
            let _one_at_a_time = self.compiling.lock();
            self.host.load(wasm)
        })
        .map_err(|e| failure(ErrorCode::InvalidPlugin, e.to_string()))
    }

    /// Checks a module as [`Plugins::deploy`] does, without storing it: the name, and
    /// that the host loads it. Returns its kind and SHA-256.
    pub(crate) fn check_module(
        &self,
        name: &str,
        wasm: &[u8],
    ) -> Result<(String, String), Failure> {
        let plugin = self.load_checked(name, wasm)?;
        Ok((
            plugin.kind().name().to_string(),
            plugin.sha256().to_string(),
        ))
    }

    /// Checks an attachment to `topic` without making it: not an internal topic, a
    /// valid failure policy, a deployed plugin, and parameters the plugin accepts
    /// (it is instantiated once with them). The partitioner rule ([`Plugins::attach`])
    /// is left to the caller.
    pub(crate) fn check_attachment(
        &self,
        topic: &str,
        attachment: &Attachment,
    ) -> Result<(), Failure> {
        self.checked(topic, attachment.clone()).map(drop)
    }

    /// What [`Plugins::check_attachment`] checks; returns the attachment as stored,
    /// with the plugin.
    fn checked(
        &self,
        topic: &str,
        attachment: Attachment,
    ) -> Result<(AttachmentMeta, Plugin), Failure> {
        let policy = FailurePolicy::parse(&attachment.on_failure);
        if matches!(&policy, Ok(FailurePolicy::DeadLetter(dlq)) if dlq == topic) {
            return Err(failure(
                ErrorCode::InvalidConfig,
                "a topic cannot be its own dead-letter topic",
            ));
        }
        if topic.starts_with("__") {
            return Err(failure(
                ErrorCode::PolicyViolation,
                format!("internal topic `{topic}` takes no plugins"),
            ));
        }
        policy.map_err(|m| failure(ErrorCode::InvalidConfig, m))?;
        let asked = [
            (
                "--batch-time-max-ms",
                u64::from(attachment.batch_time_max_ms),
                "plugins.batch_time_max_ms_limit",
                self.config.batch_time_max_ms_limit,
            ),
            (
                "--memory-max-bytes",
                attachment.memory_max_bytes,
                "plugins.memory_max_bytes_limit",
                self.config.memory_max_bytes_limit,
            ),
        ];
        for (flag, value, key, limit) in asked {
            if value > limit {
                return Err(failure(
                    ErrorCode::InvalidConfig,
                    format!("{flag} {value} is above this broker's limit of {limit} ({key})"),
                ));
            }
        }
        let meta = self.stored_attachment(attachment);
        let plugin = self
            .state
            .read()
            .loaded
            .get(&meta.plugin)
            .ok_or_else(|| not_found(&meta.plugin))?
            .clone();
        plugin
            .instantiate(&meta.params, self.config.bounded(limits(&meta)))
            .map_err(|e| match e {
                InstantiateError::Params(m) => failure(
                    ErrorCode::InvalidPlugin,
                    format!("plugin `{}` refused its parameters: {m}", meta.plugin),
                ),
                InstantiateError::Failed(f) => failure(
                    ErrorCode::InvalidPlugin,
                    format!("plugin `{}` failed to start: {f}", meta.plugin),
                ),
            })?;
        Ok((meta, plugin))
    }

    /// An attachment as stored: limits of 0 become the broker's defaults.
    fn stored_attachment(&self, attachment: Attachment) -> AttachmentMeta {
        AttachmentMeta {
            plugin: attachment.plugin,
            params: attachment.params,
            batch_time_max_ms: match attachment.batch_time_max_ms {
                0 => self.config.batch_time_max_ms,
                ms => u64::from(ms),
            },
            memory_max_bytes: match attachment.memory_max_bytes {
                0 => self.config.memory_max_bytes,
                b => b,
            },
            on_failure: attachment.on_failure,
        }
    }

    /// Appends `attachment` to the topic's produce chain, replacing an attachment of
    /// the same plugin in place. The plugin is instantiated once with the parameters
    /// first, so bad parameters are refused here rather than at the first produce.
    pub(crate) fn attach(&self, topic: &Topic, attachment: Attachment) -> Result<(), Failure> {
        let (meta, plugin) = self.checked(&topic.name, attachment)?;
        let mut state = self.state.write();
        let chain = state
            .meta
            .attachments
            .get(&topic.name)
            .into_iter()
            .flatten();
        one_partitioner(
            &topic.name,
            &meta.plugin,
            plugin.kind() == PluginKind::Partitioner,
            chain.map(|a| a.plugin.as_str()),
            |name| {
                state
                    .loaded
                    .get(name)
                    .is_some_and(|p| p.kind() == PluginKind::Partitioner)
            },
        )
        .map_err(|message| failure(ErrorCode::InvalidConfig, message))?;
        let mut all = state.meta.clone();
        let chain = all.attachments.entry(topic.name.clone()).or_default();
        match chain.iter_mut().find(|a| a.plugin == meta.plugin) {
            Some(existing) => *existing = meta.clone(),
            None => chain.push(meta.clone()),
        }
        self.save(&all)?;
        state.meta = all;
        drop(state);
        // Instances made with the old parameters go; the next batch makes new ones.
        self.drop_slots(&topic.name, Some(&meta.plugin));
        Ok(())
    }

    /// Makes this broker's plugins those of the cluster's metadata image: each
    /// topic's chain becomes the image's, modules it lacks (or holds another version
    /// of) are stored and compiled, and plugins the image no longer has go. The
    /// controller and the broker that took each change checked it; what fails here
    /// (a module this broker cannot compile, a full disk) is logged, and produce
    /// through an attachment of a plugin missing here fails with `PluginNotFound`.
    pub(crate) fn follow_image(
        &self,
        plugins: &BTreeMap<String, PluginImage>,
        attachments: &BTreeMap<String, Vec<AttachmentImage>>,
    ) {
        let wanted: BTreeMap<String, Vec<AttachmentMeta>> = attachments
            .iter()
            .map(|(topic, chain)| {
                let chain = chain
                    .iter()
                    .map(|a| self.stored_attachment(wire_attachment(a.clone())))
                    .collect();
                (topic.clone(), chain)
            })
            .collect();
        let changed_topics: Vec<String> = {
            let mut state = self.state.write();
            let current = &state.meta.attachments;
            let changed: Vec<String> = current
                .keys()
                .chain(wanted.keys())
                .filter(|t| current.get(*t) != wanted.get(*t))
                .cloned()
                .collect();
            if !changed.is_empty() {
                let mut all = state.meta.clone();
                all.attachments = wanted;
                match self.save(&all) {
                    Ok(()) => state.meta = all,
                    Err(f) => {
                        tracing::error!(error = %f.message, "cannot store the cluster's plugin attachments")
                    }
                }
            }
            changed
        };
        for topic in &changed_topics {
            tracing::info!(topic = %topic, "plugin chain follows the cluster metadata");
            self.drop_slots(topic, None);
        }
        for (name, image) in plugins {
            let current = self.state.read().meta.plugins.get(name).cloned();
            let loaded = self.state.read().loaded.contains_key(name);
            if current.is_some_and(|c| c.sha256 == image.sha256 && c.version == image.version)
                && loaded
            {
                continue;
            }
            match self.deploy(name, &image.version, &image.module) {
                Ok(_) => {
                    tracing::info!(plugin = %name, version = %image.version, "plugin follows the cluster metadata")
                }
                Err(f) => {
                    tracing::error!(plugin = %name, error = %f.message, "cannot deploy a plugin of the cluster metadata here")
                }
            }
        }
        let gone: Vec<String> = self
            .state
            .read()
            .meta
            .plugins
            .keys()
            .filter(|name| !plugins.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            tracing::warn!(plugin = %name, "removing a plugin the cluster metadata does not have (deploy it to the cluster again if it is wanted)");
            if let Err(f) = self.remove(&name) {
                tracing::error!(plugin = %name, error = %f.message, "cannot remove a plugin the cluster metadata does not have");
            }
        }
    }

    pub(crate) fn detach(&self, topic: &str, plugin: &str) -> Result<(), Failure> {
        let mut state = self.state.write();
        let mut all = state.meta.clone();
        let chain = all.attachments.entry(topic.to_string()).or_default();
        let before = chain.len();
        chain.retain(|a| a.plugin != plugin);
        if chain.len() == before {
            return Err(failure(
                ErrorCode::PluginNotFound,
                format!("plugin `{plugin}` is not attached to topic `{topic}`"),
            ));
        }
        if chain.is_empty() {
            all.attachments.remove(topic);
        }
        self.save(&all)?;
        state.meta = all;
        drop(state);
        self.drop_slots(topic, Some(plugin));
        Ok(())
    }

    /// Drops a deleted topic's attachments and instances. Failing to persist that is
    /// logged: the topic is gone either way, and the next change rewrites the file.
    pub(crate) fn forget_topic(&self, topic: &str) {
        let mut state = self.state.write();
        if !state.meta.attachments.contains_key(topic) {
            return;
        }
        let mut all = state.meta.clone();
        all.attachments.remove(topic);
        if let Err(f) = self.save(&all) {
            tracing::error!(topic, message = %f.message, "cannot persist plugin detachment of a deleted topic");
        }
        state.meta = all;
        drop(state);
        self.drop_slots(topic, None);
    }

    fn drop_slots(&self, topic: &str, plugin: Option<&str>) {
        self.slots
            .lock()
            .retain(|(t, _, p), _| !(t == topic && plugin.is_none_or(|name| name == p)));
    }

    fn has_attachments(&self, topic: &str) -> bool {
        self.state.read().meta.attachments.contains_key(topic)
    }

    /// The chain attached to a topic (cloned, so no lock is held while it runs).
    fn chain(&self, topic: &str) -> Option<Vec<(AttachmentMeta, Option<Plugin>)>> {
        let state = self.state.read();
        let chain = state.meta.attachments.get(topic)?;
        Some(
            chain
                .iter()
                .map(|a| (a.clone(), state.loaded.get(&a.plugin).cloned()))
                .collect(),
        )
    }

    fn slot(&self, topic: &str, partition: u32, plugin: &str) -> Slot {
        let mut slots = self.slots.lock();
        // Fetch filters get a slot per (partition, plugin, params): consumers choose the
        // params, so their slots are bounded by dropping them all when there are too many.
        if slots.len() >= FETCH_SLOTS_MAX {
            slots.retain(|(_, _, key), _| !key.starts_with(FETCH_SLOT_PREFIX));
        }
        slots
            .entry((topic.to_string(), partition, plugin.to_string()))
            .or_default()
            .clone()
    }
}

/// Runs plugin work (which may take up to a batch deadline) without stalling the
/// runtime: on the multi-threaded runtime the worker hands its other tasks over first.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The share of a produce request's timeout its plugin chain may wait for what it
/// writes elsewhere in a cluster (dead letters, records passed on to other leaders):
/// the rest stays for the answer, so the producer hears why before it gives up.
pub(crate) const PLUGIN_WAIT_PERCENT: u32 = 80;

/// Waits at most `within` ([`PLUGIN_WAIT_PERCENT`] of the produce request's timeout)
/// for `future`, from code that runs on a runtime worker inside [`blocking`] (a plugin
/// chain), as a cluster's dead letters and forwarded records do for the broker's own
/// producer. On time out the records may still be written later (dead letters are at
/// least once).
fn block_on_within<T>(
    within: Duration,
    what: &str,
    future: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    let bounded = async {
        tokio::time::timeout(within, future)
            .await
            .unwrap_or_else(|_| {
                Err(failure(
                    ErrorCode::RequestTimedOut,
                    format!(
                        "{what} did not finish within {} ms ({PLUGIN_WAIT_PERCENT} % of the produce request's timeout)",
                        within.as_millis()
                    ),
                ))
            })
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| handle.block_on(bounded))
        }
        _ => Err(failure(
            ErrorCode::Unknown,
            "writing to the cluster needs the broker's multi-threaded runtime",
        )),
    }
}

fn not_found(name: &str) -> Failure {
    failure(
        ErrorCode::PluginNotFound,
        format!("no plugin named `{name}` is deployed"),
    )
}

fn limits(a: &AttachmentMeta) -> Limits {
    Limits {
        batch_time_max_ms: a.batch_time_max_ms,
        memory_max_bytes: a.memory_max_bytes,
    }
}

/// Records bound for a dead-letter topic, in order.
type DeadLetters = Vec<(String, NewRecord)>;

fn to_new(r: &Record) -> NewRecord {
    NewRecord {
        timestamp: r.timestamp,
        key: r.key.clone(),
        value: r.value.clone(),
        headers: r.headers.clone(),
    }
}

/// One produced batch, decoded for a plugin chain.
struct ProducedBatch {
    bytes: Bytes,
    header: BatchHeader,
    compression: Compression,
    /// The position of its first record within the request.
    first: i64,
    records: Vec<Record>,
}

/// Decodes the batches of one produce partition (split and CRC-checked by `batches`:
/// [`split_batches`], or a validation's [`ValidatedBatches::batches`]). Record offsets
/// are positions within the request (batches base offset 0 as the producer sent
/// them), used by plugins and in error messages.
fn decode_produced(
    batches: impl Iterator<Item = Result<(BatchHeader, Bytes), BatchError>>,
) -> Result<Vec<ProducedBatch>, Failure> {
    let corrupt = |e: BatchError| failure(ErrorCode::CorruptMessage, format!("record batch: {e}"));
    let mut out = Vec::new();
    let mut first = 0i64;
    for batch in batches {
        let (header, bytes) = batch.map_err(corrupt)?;
        let compression = header.compression().map_err(corrupt)?;
        let mut decoded = decode_records(&header, &bytes).map_err(corrupt)?;
        for r in &mut decoded {
            r.offset += first;
        }
        let span = i64::from(header.last_offset_delta) + 1;
        out.push(ProducedBatch {
            bytes,
            header,
            compression,
            first,
            records: decoded,
        });
        first += span;
    }
    Ok(out)
}

/// Re-encodes a produced batch that a plugin chain changed into `out`, keeping what
/// the producer can count on:
/// - the batch still spans its offsets: a kept record stays at the offset the
///   producer was told (base offset + its index), and a dropped one leaves a gap (as
///   compaction does), down to a batch with no record at all;
/// - an idempotent producer's identity and sequence numbers: the batch still counts
///   one sequence number per record sent, so the producer's next batch follows on and
///   a retry of this one is recognised as a duplicate.
///
/// A transform may output several records for one; they take the offsets after their
/// input's, as far as free ones last. When the output holds more records than the
/// batch spans, the batch grows; an idempotent producer's batch instead takes the
/// first records and a producer-less batch after it the rest, so its sequence span
/// stays the producer's.
fn rewrite_batch(
    batch: &ProducedBatch,
    records: &[Record],
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let encoding_failed = |e: meridian_wire::batch::BatchError| {
        failure(ErrorCode::Unknown, format!("re-encoding batch: {e}"))
    };
    let span = batch.header.last_offset_delta + 1;
    let producer = ProducerIdentity {
        producer_id: batch.header.producer_id,
        producer_epoch: batch.header.producer_epoch,
        base_sequence: batch.header.base_sequence,
    };
    let new: Vec<NewRecord> = records.iter().map(to_new).collect();
    // An empty batch compresses to nothing worth a codec.
    let compression = if new.is_empty() {
        Compression::None
    } else {
        batch.compression
    };
    if new.len() > span as usize {
        let (own, extra) = if producer.producer_id >= 0 {
            new.split_at(span as usize)
        } else {
            (&new[..], &[][..])
        };
        out.extend_from_slice(&encode_batch(own, compression, producer).map_err(encoding_failed)?);
        if !extra.is_empty() {
            let extra = encode_batch(extra, compression, ProducerIdentity::NONE)
                .map_err(encoding_failed)?;
            out.extend_from_slice(&extra);
        }
        return Ok(());
    }
    let deltas = spread_deltas(records.iter().map(|r| r.offset - batch.first), span);
    let encoded = encode_batch_spanning(&new, &deltas, span - 1, compression, producer)
        .map_err(encoding_failed)?;
    out.extend_from_slice(&encoded);
    Ok(())
}

/// Offset deltas for records that came from the given deltas (non-decreasing; a
/// transform's outputs share their input's), in a batch spanning `span` offsets with
/// at least as many: each takes its own delta, or the next free one, but never so far
/// that the records after it no longer fit.
fn spread_deltas(wanted: impl ExactSizeIterator<Item = i64>, span: i32) -> Vec<i32> {
    let n = wanted.len() as i32;
    assert!(n <= span, "{n} records cannot fit in {span} offsets");
    let mut deltas = Vec::with_capacity(n as usize);
    let mut previous = -1;
    for (i, want) in wanted.enumerate() {
        let latest = span - (n - i as i32);
        let delta = (want.clamp(0, i64::from(span)) as i32)
            .max(previous + 1)
            .min(latest);
        deltas.push(delta);
        previous = delta;
    }
    deltas
}

/// What a routed produce appended on this broker.
pub(crate) struct Routed {
    /// The log start offset of the last partition appended to (-1 if none).
    pub(crate) log_start: i64,
    /// One per partition appended to, for `flush=always`.
    pub(crate) syncs: Vec<meridian_log::SyncHandle>,
    /// The partitions appended to, for `acks=all` (records forwarded to other
    /// leaders were acknowledged by all their in-sync replicas already).
    pub(crate) appended: Vec<Arc<Partition>>,
}

/// What the chain did to one partition's records.
struct ChainOutcome {
    records: Vec<Record>,
    /// No record was dropped or transformed: the original batch can be appended as is.
    unchanged: bool,
    dead_letters: DeadLetters,
    n_skipped: u64,
}

impl Shared {
    /// Runs the topic's produce chain over one partition's batches. `None`: no chain,
    /// append as is. `Some(bytes)`: append these instead (possibly empty).
    fn apply_produce_plugins(
        &self,
        topic: &Topic,
        partition: u32,
        sent: &ValidatedBatches,
        within: Duration,
    ) -> Result<Option<Bytes>, Failure> {
        let Some(chain) = self.plugins.chain(&topic.name) else {
            return Ok(None);
        };
        let routes_only = chain.iter().all(|(_, p)| {
            p.as_ref()
                .is_some_and(|p| p.kind() == PluginKind::Partitioner)
        });
        if routes_only {
            // A record with an explicit partition is not routed.
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut dead_letters = Vec::new();
        let mut n_skipped = 0;
        let batches = sent.batches().map(Ok);
        for mut batch in decode_produced(batches)? {
            let decoded = std::mem::take(&mut batch.records);
            let outcome = self.run_chain(topic, partition, &chain, decoded)?;
            dead_letters.extend(outcome.dead_letters);
            n_skipped += outcome.n_skipped;
            if outcome.unchanged {
                // Filters kept every record: the producer's batch goes in byte for byte.
                out.extend_from_slice(&batch.bytes);
            } else {
                rewrite_batch(&batch, &outcome.records, &mut out)?;
            }
        }
        if n_skipped > 0 {
            tracing::warn!(topic = %topic.name, partition, n_skipped, "plugin failure policy skipped records");
        }
        self.write_dead_letters(dead_letters, within)?;
        Ok(Some(Bytes::from(out)))
    }

    fn run_chain(
        &self,
        topic: &Topic,
        partition: u32,
        chain: &[(AttachmentMeta, Option<Plugin>)],
        mut records: Vec<Record>,
    ) -> Result<ChainOutcome, Failure> {
        let mut dead_letters = Vec::new();
        let mut n_skipped = 0u64;
        let n_in = records.len();
        let mut transformed = false;
        for (attachment, plugin) in chain {
            if records.is_empty() {
                break;
            }
            let name = &attachment.plugin;
            let plugin = plugin.as_ref().ok_or_else(|| not_found(name))?;
            if plugin.kind() == PluginKind::Partitioner {
                // Routes only records produced without a partition (append_routed).
                continue;
            }
            let policy = FailurePolicy::parse(&attachment.on_failure)
                .map_err(|m| failure(ErrorCode::InvalidConfig, m))?;
            let result = self.run_one(topic, partition, attachment, plugin, &records);
            let output = match result {
                Ok(output) => output,
                Err(f) => {
                    match &policy {
                        FailurePolicy::Reject => {
                            return Err(failure(
                                ErrorCode::PluginRejected,
                                format!(
                                "plugin `{name}` failed on the batch starting at offset {}: {f}",
                                records[0].offset
                            ),
                            ))
                        }
                        FailurePolicy::Skip => n_skipped += records.len() as u64,
                        FailurePolicy::DeadLetter(dlq) => {
                            dead_letters.extend(records.iter().map(|r| (dlq.clone(), to_new(r))))
                        }
                    }
                    records.clear();
                    continue;
                }
            };
            let mut next = Vec::with_capacity(records.len());
            let mut on_error = |r: &Record, reason: String| -> Result<(), Failure> {
                match &policy {
                    FailurePolicy::Reject => Err(failure(
                        ErrorCode::PluginRejected,
                        format!(
                            "plugin `{name}` rejected the record at offset {}: {reason}",
                            r.offset
                        ),
                    )),
                    FailurePolicy::Skip => {
                        n_skipped += 1;
                        Ok(())
                    }
                    FailurePolicy::DeadLetter(dlq) => {
                        dead_letters.push((dlq.clone(), to_new(r)));
                        Ok(())
                    }
                }
            };
            match output {
                BatchOutput::Filter(keep) => {
                    for (r, k) in records.into_iter().zip(keep) {
                        match k {
                            Ok(true) => next.push(r),
                            Ok(false) => {}
                            Err(reason) => on_error(&r, reason)?,
                        }
                    }
                }
                BatchOutput::Transform(outs) => {
                    transformed = true;
                    for (r, o) in records.into_iter().zip(outs) {
                        match o {
                            Ok(new_records) => {
                                next.extend(new_records.into_iter().map(|n| Record {
                                    offset: r.offset,
                                    timestamp: n.timestamp,
                                    key: n.key,
                                    value: n.value,
                                    headers: n.headers,
                                }))
                            }
                            Err(reason) => on_error(&r, reason)?,
                        }
                    }
                }
                BatchOutput::Partition(_) => {
                    return Err(failure(
                        ErrorCode::InvalidPlugin,
                        format!(
                            "plugin `{name}` is a partitioner, which cannot run in a produce chain"
                        ),
                    ))
                }
            }
            records = next;
        }
        Ok(ChainOutcome {
            unchanged: !transformed && records.len() == n_in,
            records,
            dead_letters,
            n_skipped,
        })
    }

    /// One plugin over one batch, on the (topic, partition, plugin) instance: made on
    /// first use, remade when the plugin was redeployed (hot swap) or failed.
    fn run_one(
        &self,
        topic: &Topic,
        partition: u32,
        attachment: &AttachmentMeta,
        plugin: &Plugin,
        records: &[Record],
    ) -> Result<BatchOutput, BatchFailure> {
        let slot = self
            .plugins
            .slot(&topic.name, partition, &attachment.plugin);
        let mut slot = slot.lock();
        if slot.as_ref().is_none_or(|(sha, _)| sha != plugin.sha256()) {
            if let Some((_, mut old)) = slot.take() {
                self.write_plugin_logs(&attachment.plugin, &topic.name, partition, &mut old);
            }
            let instance = plugin
                .instantiate(
                    &attachment.params,
                    self.plugins.config.bounded(limits(attachment)),
                )
                .map_err(|e| match e {
                    InstantiateError::Failed(f) => f,
                    InstantiateError::Params(message) => BatchFailure {
                        kind: meridian_wasm_host::FailureKind::BadOutput,
                        message: format!("refused its parameters: {message}"),
                    },
                })?;
            *slot = Some((plugin.sha256().to_string(), instance));
        }
        let (_, instance) = slot.as_mut().expect("filled above");
        let n_partitions = topic.partitions.len() as u32;
        let result = instance.run(records, n_partitions);
        self.write_plugin_logs(&attachment.plugin, &topic.name, partition, instance);
        result
    }

    /// Appends what the instance printed to the logs topic (created on first use). A
    /// failure to do so is logged, never fails the produce.
    fn write_plugin_logs(
        &self,
        plugin: &str,
        topic: &str,
        partition: u32,
        instance: &mut Instance,
    ) {
        let (lines, dropped) = instance.take_logs();
        if lines.is_empty() && dropped == 0 {
            return;
        }
        let now = crate::handlers::now_ms();
        let header = |k: &str, v: String| Header {
            key: k.to_string(),
            value: Some(Bytes::from(v)),
        };
        let mut records: Vec<NewRecord> = lines
            .into_iter()
            .map(|line| NewRecord {
                timestamp: now,
                key: Some(Bytes::from(plugin.to_string())),
                value: Some(Bytes::from(line.text)),
                headers: vec![
                    header("topic", topic.to_string()),
                    header("partition", partition.to_string()),
                    header(
                        "stream",
                        match line.stream {
                            LogStream::Stdout => "stdout",
                            LogStream::Stderr => "stderr",
                        }
                        .to_string(),
                    ),
                ],
            })
            .collect();
        if dropped > 0 {
            records.push(NewRecord {
                timestamp: now,
                key: Some(Bytes::from(plugin.to_string())),
                value: Some(Bytes::from(format!(
                    "{dropped} lines dropped (plugins.log_lines_per_sec_max)"
                ))),
                headers: vec![header("topic", topic.to_string())],
            });
        }
        let logs_topic = &self.plugins.config.logs_topic;
        if let Some(writer) = &self.cluster_writer {
            writer.write_later(logs_topic, records, self.cluster_has_topic(logs_topic));
            return;
        }
        if let Err(f) = self.append_internal(logs_topic, records) {
            tracing::warn!(plugin, code = ?f.code, message = %f.message, "cannot write plugin logs");
        }
    }

    fn cluster_has_topic(&self, topic: &str) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.image().topics.contains_key(topic))
    }

    /// Writes dead letters; in a cluster, waiting at most `within` for them.
    fn write_dead_letters(
        &self,
        dead_letters: DeadLetters,
        within: Duration,
    ) -> Result<(), Failure> {
        let mut by_topic: BTreeMap<String, Vec<NewRecord>> = BTreeMap::new();
        for (topic, record) in dead_letters {
            by_topic.entry(topic).or_default().push(record);
        }
        for (topic, records) in by_topic {
            let written = match &self.cluster_writer {
                Some(writer) => {
                    let exists = self.cluster_has_topic(&topic);
                    let write = writer.write(topic.clone(), 0, records, exists);
                    block_on_within(within, "writing dead letters", write)
                }
                None => self.append_internal(&topic, records),
            };
            written.map_err(|f| {
                failure(
                    ErrorCode::PluginRejected,
                    format!("dead-letter topic `{topic}`: {}", f.message),
                )
            })?;
        }
        Ok(())
    }

    /// Appends records the broker makes itself (logs, dead letters) to partition 0 of
    /// a topic, creating the topic with one partition when missing.
    fn append_internal(&self, topic_name: &str, records: Vec<NewRecord>) -> Result<(), Failure> {
        if records.is_empty() {
            return Ok(());
        }
        let topic = match self.registry.get(topic_name) {
            Some(topic) => topic,
            None => match self.registry.create(topic_name, 1, 1, Vec::new()) {
                Ok(topic) => topic,
                Err(f) if f.code == ErrorCode::TopicAlreadyExists => self
                    .registry
                    .get(topic_name)
                    .ok_or_else(|| failure(ErrorCode::UnknownTopic, "topic vanished"))?,
                Err(f) => return Err(f),
            },
        };
        let batch = encode_batch(&records, Compression::None, ProducerIdentity::NONE)
            .map_err(|e| failure(ErrorCode::Unknown, e.to_string()))?;
        let partition = topic.partition(0)?;
        self.append(&topic, partition, &batch).map(|_| ())
    }

    /// The produce path's append: runs the topic's plugin chain (if any) over the
    /// partition's batches, then appends what is left (see [`rewrite_batch`]).
    ///
    /// `within`: the longest a cluster's dead letters are waited for
    /// ([`PLUGIN_WAIT_PERCENT`] of the produce request's timeout).
    pub(crate) fn append_produced(
        &self,
        topic: &Topic,
        partition: &Partition,
        records: &Bytes,
        within: Duration,
    ) -> Result<crate::handlers::Appended, Failure> {
        if !self.plugins.has_attachments(&topic.name) {
            return self.append(topic, partition, records);
        }
        // What the producer sent must be valid as sent, whatever the chain makes of it.
        let sent = Self::validated(topic, records, validate_batches)?;
        Self::require_timestamps_in_range(topic, &sent)?;
        match blocking(|| self.apply_produce_plugins(topic, partition.index, &sent, within))? {
            None => {
                Self::require_keys_if_compacted(topic, &sent)?;
                self.append_validated(topic, partition, sent)
            }
            Some(out) => self.append_checked(topic, partition, &out, validate_rewritten_batches),
        }
    }

    /// Runs a consumer's fetch filter over every partition of a fetch response. Records
    /// keep their offsets; each batch still spans the records dropped, so the consumer
    /// moves past them. A record the filter errors on is dropped; a failed batch fails
    /// that partition with `PluginRejected`.
    pub(crate) fn filter_fetch(
        &self,
        filter: Option<&FetchFilter>,
        mut response: FetchResponse,
    ) -> FetchResponse {
        let Some(filter) = filter else {
            return response;
        };
        let plugin = self
            .plugins
            .state
            .read()
            .loaded
            .get(&filter.plugin)
            .cloned();
        for topic in &mut response.topics {
            for p in &mut topic.partitions {
                if !p.error.is_ok() || p.records.is_empty() {
                    continue;
                }
                let outcome = match &plugin {
                    None => Err(not_found(&filter.plugin)),
                    Some(plugin) if plugin.kind() != PluginKind::Filter => Err(failure(
                        ErrorCode::InvalidPlugin,
                        format!(
                            "plugin `{}` is a {}; fetch takes filters",
                            filter.plugin,
                            plugin.kind()
                        ),
                    )),
                    Some(plugin) => blocking(|| {
                        self.filter_partition(&topic.name, p.partition, plugin, filter, &p.records)
                    }),
                };
                match outcome {
                    Ok(records) => p.records = records,
                    Err(f) => {
                        p.error = f.code;
                        p.message = f.message;
                        p.records = Bytes::new();
                    }
                }
            }
        }
        response
    }

    fn filter_partition(
        &self,
        topic_name: &str,
        partition: u32,
        plugin: &Plugin,
        filter: &FetchFilter,
        records: &Bytes,
    ) -> Result<Bytes, Failure> {
        let topic = self.registry.get(topic_name).ok_or_else(|| {
            failure(
                ErrorCode::UnknownTopic,
                format!("topic `{topic_name}` vanished"),
            )
        })?;
        let attachment = AttachmentMeta {
            plugin: format!("{FETCH_SLOT_PREFIX}{}:{:?}", filter.plugin, filter.params),
            params: filter.params.clone(),
            batch_time_max_ms: self.plugins.config.batch_time_max_ms,
            memory_max_bytes: self.plugins.config.memory_max_bytes,
            on_failure: "skip".into(),
        };
        let mut out = Vec::with_capacity(records.len() / 4);
        for batch in split_fetched_batches(records.clone()) {
            let (header, batch) =
                batch.map_err(|e| failure(ErrorCode::CorruptLog, format!("stored batch: {e}")))?;
            if header.is_control() {
                out.extend_from_slice(&batch);
                continue;
            }
            let corrupt =
                |e: meridian_wire::batch::BatchError| failure(ErrorCode::CorruptLog, e.to_string());
            let compression = header.compression().map_err(corrupt)?;
            let decoded = decode_records(&header, &batch).map_err(corrupt)?;
            let output = self
                .run_one(&topic, partition, &attachment, plugin, &decoded)
                .map_err(|f| {
                    failure(
                        ErrorCode::PluginRejected,
                        format!(
                            "fetch filter `{}` failed on the batch at offset {}: {f}",
                            filter.plugin, header.base_offset
                        ),
                    )
                })?;
            let BatchOutput::Filter(keep) = output else {
                return Err(failure(
                    ErrorCode::InvalidPlugin,
                    "fetch filter returned no filter output",
                ));
            };
            let (kept, deltas): (Vec<NewRecord>, Vec<i32>) = decoded
                .iter()
                .zip(keep)
                .filter(|(_, k)| matches!(k, Ok(true)))
                .map(|(r, _)| (to_new(r), (r.offset - header.base_offset) as i32))
                .unzip();
            let encoded = encode_batch_at(
                &kept,
                &deltas,
                header.base_offset,
                header.last_offset_delta,
                compression,
            )
            .map_err(|e| failure(ErrorCode::Unknown, format!("re-encoding batch: {e}")))?;
            out.extend_from_slice(&encoded);
        }
        Ok(Bytes::from(out))
    }

    /// The produce path for records sent without a partition: the topic's partitioner
    /// plugin picks each record's partition (its failure policy applies to records it
    /// fails on), and each partition's records go through that partition's produce
    /// path as one batch — the topic's filters and transforms run there, on the
    /// partition's instances, as for records sent with that partition. A partition led
    /// by another broker of the cluster gets its records through `ClusterWriter`
    /// (`acks=all`); its leader runs the chain. The base offset reported is -1
    /// (records land on several partitions). Not atomic across partitions: an error
    /// on one leaves what went to the others.
    pub(crate) fn append_routed(
        &self,
        topic: &Topic,
        records: &Bytes,
        acks_all: bool,
        within: Duration,
    ) -> Result<Routed, Failure> {
        blocking(|| self.route_and_append(topic, records, acks_all, within))
    }

    fn route_and_append(
        &self,
        topic: &Topic,
        records: &Bytes,
        acks_all: bool,
        within: Duration,
    ) -> Result<Routed, Failure> {
        let chain = self.plugins.chain(&topic.name).unwrap_or_default();
        let Some((router, Some(router_plugin))) = chain
            .iter()
            .find(|(_, p)| {
                p.as_ref()
                    .is_some_and(|p| p.kind() == PluginKind::Partitioner)
            })
            .cloned()
        else {
            return Err(failure(
                ErrorCode::InvalidPartition,
                format!(
                    "topic `{}` has no partitioner plugin attached: name a partition",
                    topic.name
                ),
            ));
        };
        let policy = FailurePolicy::parse(&router.on_failure)
            .map_err(|m| failure(ErrorCode::InvalidConfig, m))?;
        let n_partitions = topic.partitions.len();
        let mut buckets: Vec<Vec<NewRecord>> = vec![Vec::new(); n_partitions];
        let mut compression = Compression::None;
        let mut dead_letters = Vec::new();
        let mut n_skipped = 0u64;
        for batch in decode_produced(split_batches(records.clone()))? {
            compression = batch.compression;
            let records = batch.records;
            let name = &router.plugin;
            let choices = match self.run_one(topic, UNASSIGNED, &router, &router_plugin, &records) {
                Ok(BatchOutput::Partition(choices)) => choices,
                Ok(_) => {
                    return Err(failure(
                        ErrorCode::InvalidPlugin,
                        "partitioner returned no partitions",
                    ))
                }
                Err(f) => match &policy {
                    FailurePolicy::Reject => {
                        return Err(failure(
                            ErrorCode::PluginRejected,
                            format!(
                            "partitioner `{name}` failed on the batch starting at offset {}: {f}",
                            records[0].offset
                        ),
                        ))
                    }
                    FailurePolicy::Skip => {
                        n_skipped += records.len() as u64;
                        continue;
                    }
                    FailurePolicy::DeadLetter(dlq) => {
                        dead_letters.extend(records.iter().map(|r| (dlq.clone(), to_new(r))));
                        continue;
                    }
                },
            };
            for (r, choice) in records.iter().zip(choices) {
                match (choice, &policy) {
                    (Ok(p), _) => buckets[p as usize].push(to_new(r)),
                    (Err(reason), FailurePolicy::Reject) => {
                        return Err(failure(
                            ErrorCode::PluginRejected,
                            format!(
                                "partitioner `{name}` rejected the record at offset {}: {reason}",
                                r.offset
                            ),
                        ))
                    }
                    (Err(_), FailurePolicy::Skip) => n_skipped += 1,
                    (Err(_), FailurePolicy::DeadLetter(dlq)) => {
                        dead_letters.push((dlq.clone(), to_new(r)))
                    }
                }
            }
        }
        if n_skipped > 0 {
            tracing::warn!(topic = %topic.name, n_skipped, "plugin failure policy skipped records");
        }
        self.write_dead_letters(dead_letters, within)?;
        let mut routed = Routed {
            log_start: -1,
            syncs: Vec::new(),
            appended: Vec::new(),
        };
        for (index, bucket) in buckets.into_iter().enumerate() {
            if bucket.is_empty() {
                continue;
            }
            let partition = topic.partition(index as u32)?;
            match (
                self.check_produce(topic, partition, acks_all),
                &self.cluster_writer,
            ) {
                (Err(f), Some(writer)) if f.code == ErrorCode::NotLeaderOrFollower => {
                    let write = writer.write(topic.name.clone(), index as u32, bucket, true);
                    block_on_within(within, "passing records on to their leader", write)?;
                }
                (Err(f), _) => return Err(f),
                (Ok(()), _) => {
                    let batch = encode_batch(&bucket, compression, ProducerIdentity::NONE)
                        .map_err(|e| failure(ErrorCode::Unknown, format!("encoding batch: {e}")))?;
                    let appended = self.append_produced(topic, partition, &batch, within)?;
                    routed.log_start = appended.log_start;
                    routed.syncs.push(appended.sync);
                    routed.appended.push(partition.clone());
                }
            }
        }
        Ok(routed)
    }

    pub(crate) fn attach_plugin(
        &self,
        topic_name: &str,
        attachment: Attachment,
    ) -> Result<(), Failure> {
        let topic = self.topic(topic_name)?;
        self.plugins.attach(&topic, attachment)
    }
}

fn info_response(outcome: Result<PluginInfo, Failure>) -> PluginInfoResponse {
    match outcome {
        Ok(plugin) => PluginInfoResponse {
            error: ErrorCode::None,
            message: String::new(),
            plugin: Some(plugin),
        },
        Err(f) => PluginInfoResponse {
            error: f.code,
            message: f.message,
            plugin: None,
        },
    }
}

fn result(outcome: Result<(), Failure>) -> PluginResult {
    match outcome {
        Ok(()) => PluginResult {
            error: ErrorCode::None,
            message: String::new(),
        },
        Err(f) => PluginResult {
            error: f.code,
            message: f.message,
        },
    }
}

/// Request handlers of the plugin APIs (dispatched from handlers.rs).
impl Shared {
    pub(crate) fn plugin_deploy(&self, r: PluginDeployRequest) -> PluginInfoResponse {
        info_response(self.plugins.deploy(&r.name, &r.version, &r.module))
    }

    pub(crate) fn plugin_list(&self) -> PluginListResponse {
        PluginListResponse {
            plugins: self.plugins.list(),
        }
    }

    pub(crate) fn plugin_describe(&self, r: PluginNameRequest) -> PluginInfoResponse {
        info_response(self.plugins.describe(&r.name))
    }

    pub(crate) fn plugin_remove(&self, r: PluginNameRequest) -> PluginResult {
        result(self.plugins.remove(&r.name))
    }

    pub(crate) fn topic_attach(&self, r: TopicAttachRequest) -> PluginResult {
        result(self.attach_plugin(&r.topic, r.attachment))
    }

    pub(crate) fn topic_detach(&self, r: TopicDetachRequest) -> PluginResult {
        result(self.plugins.detach(&r.topic, &r.plugin))
    }
}

/// The plugin APIs in a cluster: plugins are cluster metadata. This broker checks
/// what needs a wasm host, the controller checks the rest against the image and
/// writes it, and every broker follows the image (`Plugins::follow_image`). Each
/// answers once this broker's own state has the change, so a request that follows
/// (an attach after a deploy) finds it here.
impl Shared {
    pub(crate) async fn cluster_plugin_deploy(
        &self,
        cluster: &Cluster,
        r: PluginDeployRequest,
    ) -> PluginInfoResponse {
        let (kind, sha256) = match self.plugins.check_module(&r.name, &r.module) {
            Ok(checked) => checked,
            Err(f) => return info_response(Err(f)),
        };
        let (name, version) = (r.name.clone(), r.version.clone());
        let change = PluginChange::Deploy {
            name: r.name,
            plugin: PluginImage {
                version: r.version,
                kind,
                sha256: sha256.clone(),
                module: Arc::new(r.module.to_vec()),
            },
        };
        let applied = |image: &MetadataImage| {
            image
                .plugins
                .get(&name)
                .is_some_and(|p| p.sha256 == sha256 && p.version == version)
        };
        match plugin_change(cluster, change, applied).await {
            Ok(()) => info_response(self.plugins.describe(&name)),
            Err(f) => info_response(Err(f)),
        }
    }

    pub(crate) async fn cluster_plugin_remove(
        &self,
        cluster: &Cluster,
        r: PluginNameRequest,
    ) -> PluginResult {
        let name = r.name.clone();
        let change = PluginChange::Remove { name: r.name };
        result(plugin_change(cluster, change, |image| !image.plugins.contains_key(&name)).await)
    }

    pub(crate) async fn cluster_topic_attach(
        &self,
        cluster: &Cluster,
        r: TopicAttachRequest,
    ) -> PluginResult {
        if let Err(f) = self.plugins.check_attachment(&r.topic, &r.attachment) {
            return result(Err(f));
        }
        let attachment = image_attachment(r.attachment);
        let (topic, sent) = (r.topic.clone(), attachment.clone());
        let change = PluginChange::Attach {
            topic: r.topic,
            attachment,
        };
        let applied = |image: &MetadataImage| {
            image
                .attachments
                .get(&topic)
                .is_some_and(|chain| chain.contains(&sent))
        };
        result(plugin_change(cluster, change, applied).await)
    }

    pub(crate) async fn cluster_topic_detach(
        &self,
        cluster: &Cluster,
        r: TopicDetachRequest,
    ) -> PluginResult {
        let (topic, plugin) = (r.topic.clone(), r.plugin.clone());
        let change = PluginChange::Detach {
            topic: r.topic,
            plugin: r.plugin,
        };
        let applied = |image: &MetadataImage| {
            !image
                .attachments
                .get(&topic)
                .is_some_and(|chain| chain.iter().any(|a| a.plugin == plugin))
        };
        result(plugin_change(cluster, change, applied).await)
    }
}

/// An attachment as the cluster metadata holds it, from the wire's.
fn image_attachment(a: Attachment) -> AttachmentImage {
    AttachmentImage {
        plugin: a.plugin,
        params: a.params,
        batch_time_max_ms: a.batch_time_max_ms,
        memory_max_bytes: a.memory_max_bytes,
        on_failure: a.on_failure,
    }
}

/// An attachment of the cluster metadata, as the wire (and the local registry) takes it.
pub(crate) fn wire_attachment(a: AttachmentImage) -> Attachment {
    Attachment {
        plugin: a.plugin,
        params: a.params,
        batch_time_max_ms: a.batch_time_max_ms,
        memory_max_bytes: a.memory_max_bytes,
        on_failure: a.on_failure,
    }
}

/// How long a plugin change may take to reach this broker once the controller has
/// written it (compiling a large module is most of it).
const PLUGIN_CHANGE_APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Has the controller write `change`, then waits until this broker's published image
/// is `applied`.
async fn plugin_change(
    cluster: &Cluster,
    change: PluginChange,
    applied: impl Fn(&MetadataImage) -> bool,
) -> Result<(), Failure> {
    match cluster.controller.plugin_change(change).await {
        Ok(r) if r.error.is_ok() => {}
        Ok(r) => return Err(failure(r.error, r.message)),
        Err(e) => return Err(failure(ErrorCode::NotController, e.to_string())),
    }
    tokio::time::timeout(
        PLUGIN_CHANGE_APPLY_TIMEOUT,
        cluster.published_where(applied),
    )
    .await
    .map_err(|_| {
        failure(
            ErrorCode::RequestTimedOut,
            "the cluster took the plugin change, but this broker has not applied it yet",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_takes_one_partitioner() {
        let partitioners = ["router", "other-router"];
        let check = |plugin: &str, attaching_partitioner, chain: &[&'static str]| {
            one_partitioner(
                "t",
                plugin,
                attaching_partitioner,
                chain.iter().copied(),
                |p| partitioners.contains(&p),
            )
        };
        assert_eq!(
            check("other-router", true, &["filter", "router"]),
            Err("topic `t` already has partitioner `router`; detach it first".into())
        );
        // Attached again (new parameters): replaced in place.
        assert_eq!(check("router", true, &["filter", "router"]), Ok(()));
        assert_eq!(check("router", true, &["filter"]), Ok(()));
        // Filters and transforms join any chain.
        assert_eq!(check("filter2", false, &["router"]), Ok(()));
    }

    #[test]
    fn spread_deltas_keep_places_and_fit_added_records() {
        let spread = |wanted: &[i64], span| spread_deltas(wanted.iter().copied(), span);
        // Filters: every kept record keeps its delta.
        assert_eq!(spread(&[1, 3], 4), [1, 3]);
        assert_eq!(spread(&[], 2), Vec::<i32>::new());
        // A transform's outputs share their input's delta: they take the next free
        // ones, and give way when the records after them would not fit.
        assert_eq!(spread(&[0, 0, 2], 4), [0, 1, 2]);
        assert_eq!(spread(&[1, 1, 1], 4), [1, 2, 3]);
        assert_eq!(spread(&[2, 2, 2], 4), [1, 2, 3]);
        assert_eq!(spread(&[3, 3, 3, 3], 4), [0, 1, 2, 3]);
    }

    fn produced(values: &[&str], producer: ProducerIdentity) -> ProducedBatch {
        let records: Vec<NewRecord> = values
            .iter()
            .map(|v| NewRecord {
                timestamp: 9,
                key: None,
                value: Some(Bytes::from(v.to_string())),
                headers: vec![],
            })
            .collect();
        let bytes = encode_batch(&records, Compression::Lz4, producer).unwrap();
        let mut batches = decode_produced(split_batches(bytes)).unwrap();
        assert_eq!(batches.len(), 1);
        batches.pop().unwrap()
    }

    /// (producer id, base sequence, last offset delta, [(offset, value)]) per batch.
    type Summary = Vec<(i64, i32, i32, Vec<(i64, String)>)>;

    fn rewritten(batch: &ProducedBatch, out: &[(i64, &str)]) -> Summary {
        let records: Vec<Record> = out
            .iter()
            .map(|&(offset, v)| Record {
                offset,
                timestamp: 9,
                key: None,
                value: Some(Bytes::from(v.to_string())),
                headers: vec![],
            })
            .collect();
        let mut bytes = Vec::new();
        rewrite_batch(batch, &records, &mut bytes).unwrap();
        split_batches(Bytes::from(bytes))
            .map(|b| {
                let (header, bytes) = b.unwrap();
                let records = decode_records(&header, &bytes)
                    .unwrap()
                    .into_iter()
                    .map(|r| {
                        (
                            r.offset,
                            String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                        )
                    })
                    .collect();
                (
                    header.producer_id,
                    header.base_sequence,
                    header.last_offset_delta,
                    records,
                )
            })
            .collect()
    }

    /// [`Summary`] as written in a test.
    type Expected<'a> = (i64, i32, i32, &'a [(i64, &'a str)]);

    fn summary(batches: &[Expected<'_>]) -> Summary {
        batches
            .iter()
            .map(|&(id, seq, last, records)| {
                let records = records.iter().map(|&(o, v)| (o, v.to_string())).collect();
                (id, seq, last, records)
            })
            .collect()
    }

    #[test]
    fn rewritten_batches_keep_the_producers_span_and_sequence() {
        let identity = ProducerIdentity {
            producer_id: 3,
            producer_epoch: 1,
            base_sequence: 10,
        };
        let batch = produced(&["a", "b", "c"], identity);
        // Filtered.
        assert_eq!(
            rewritten(&batch, &[(0, "a"), (2, "c")]),
            summary(&[(3, 10, 2, &[(0, "a"), (2, "c")])])
        );
        // Emptied.
        assert_eq!(rewritten(&batch, &[]), summary(&[(3, 10, 2, &[])]));
        // Grown past its span: the producer's batch keeps three, the rest follow.
        assert_eq!(
            rewritten(
                &batch,
                &[(0, "a1"), (0, "a2"), (1, "b"), (2, "c1"), (2, "c2")]
            ),
            summary(&[
                (3, 10, 2, &[(0, "a1"), (1, "a2"), (2, "b")]),
                (-1, -1, 1, &[(0, "c1"), (1, "c2")]),
            ])
        );
        // Without a producer, a grown batch stays one.
        let batch = produced(&["a"], ProducerIdentity::NONE);
        assert_eq!(
            rewritten(&batch, &[(0, "a1"), (0, "a2")]),
            summary(&[(-1, -1, 1, &[(0, "a1"), (1, "a2")])])
        );
    }
}
