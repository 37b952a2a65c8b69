//! Broker configuration: built-in defaults, overlaid by a TOML file, then by
//! `MERIDIAN_<KEY>` environment variables, then by `--set key=value` flags.
//! Unknown keys are refused, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use meridian_kafka::sasl::Mechanism;
use meridian_metadata::RaftTiming;
use serde::{Deserialize, Serialize};

use crate::topic_config::TopicDefaults;

/// The most runtime worker threads `worker_threads` may ask for.
pub const MAX_WORKER_THREADS: u32 = 1024;

/// When appended data is forced to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushPolicy {
    /// Acknowledge once the data is in the page cache; fsync every `flush_interval_ms`
    /// (Kafka's default model: durability comes from replication, not fsync).
    Interval,
    /// Acknowledge only after an fdatasync; concurrent appends share one fsync
    /// (group commit across partitions and producers).
    Always,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// UDP address the QUIC endpoint binds.
    pub listen: SocketAddr,
    /// TCP address of the Prometheus metrics listener (`GET /metrics`); off when
    /// unset.
    pub metrics_listen: Option<SocketAddr>,
    /// A scrape (reading its request, writing the answer) must finish within this;
    /// scrapes are served one at a time, so this bounds how long a stalled client
    /// holds the listener.
    pub metrics_scrape_timeout_ms: u64,
    /// Largest HTTP request head the metrics listener reads (431 beyond).
    pub metrics_max_head_bytes: u32,
    /// The metrics listener speaks HTTPS (TLS 1.2/1.3) with the broker's
    /// certificate (`tls_cert`, `tls_key`; reloaded with them); under
    /// `tls_client_ca`, a scraper must present a certificate it signed.
    pub metrics_tls: bool,
    /// TCP address of the Kafka listener: Kafka clients (their own wire protocol)
    /// produce, consume, commit offsets and manage topics through it; off when
    /// unset. In a cluster each broker registers its own with the controller, so
    /// Kafka clients are sent to every broker's. Plain TCP unless `kafka_tls`; with
    /// `tls_client_ca` only with `kafka_tls`. Its frames obey `max_frame_bytes`, its
    /// connections `max_connections` and `max_inflight_requests`.
    pub kafka_listen: Option<SocketAddr>,
    /// The Kafka listener speaks TLS (Kafka's `SSL` security protocol) with the
    /// broker's certificate (`tls_cert`, `tls_key`; reloaded with them); with
    /// `tls_client_ca`, Kafka clients must present a certificate it signed, which
    /// names them to `acl_file` and the client quotas as on the QUIC endpoint.
    pub kafka_tls: bool,
    /// TOML file of SASL users and their SCRAM credentials (`meridian sasl add`
    /// writes it; no passwords are kept). With it the Kafka listener asks every
    /// client to authenticate with SASL first (Kafka's `SASL_PLAINTEXT`, or
    /// `SASL_SSL` under `kafka_tls`); the user a client authenticates as names it to
    /// `acl_file` and the client quotas. Re-read on SIGHUP. Absent: no SASL.
    pub kafka_sasl_users_file: Option<PathBuf>,
    /// The SASL mechanisms offered, comma-separated: `SCRAM-SHA-256`,
    /// `SCRAM-SHA-512`, `PLAIN` (which sends the password itself, so only under
    /// `kafka_tls`). Absent: both SCRAM ones, and `PLAIN` too under `kafka_tls`.
    pub kafka_sasl_mechanisms: Option<String>,
    /// How long a SASL login lasts (Kafka's `connections.max.reauth.ms`): clients
    /// are told, and must log in again on the same connection before it ends
    /// (KIP-368); a connection whose login ended is closed at its next request, so
    /// a user removed from `kafka_sasl_users_file`, or given a new password, is
    /// shut out within it. 0: a login lasts as long as its connection.
    pub kafka_sasl_session_lifetime_ms: u64,
    /// How long a failed SASL login waits before its answer and the close (Kafka's
    /// `connection.failed.authentication.delay.ms`): a client retrying a wrong
    /// password at once, as some do, costs the broker a login that often, not as
    /// often as it can reconnect. 0: answer at once.
    pub kafka_sasl_failure_delay_ms: u64,
    /// Cooperative group members (`cooperative-sticky`) one Kafka connection
    /// remembers from JoinGroup, where a member says which partitions it owns, to
    /// its SyncGroup, where the coordinator takes them; past it the longest
    /// remembered is forgotten. A client has one member per group it consumes in.
    pub kafka_cooperative_members_max: u32,
    /// How long a Kafka member's SyncGroup may wait for partitions other members
    /// must give up first (as a Kafka coordinator's rebalance barrier holds
    /// JoinGroup), so it gets them in this sync rather than after its next
    /// heartbeat and a second join. At most half the member's session timeout
    /// and half `idle_timeout_ms`.
    /// 0: answer at once with what is free.
    pub kafka_sync_hold_ms: u32,
    /// Host clients are told to connect to (metadata); defaults to the listen IP.
    pub advertised_host: Option<String>,
    pub data_dir: PathBuf,
    pub broker_id: u32,
    /// Rack (or zone) of this broker: replicas of a partition are spread over racks.
    pub rack: Option<String>,
    pub cluster_id: String,
    /// PEM certificate and key; generated (self-signed) on first start when absent.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM file of CA certificates. When set, every client must present a
    /// certificate one of them signed (mutual TLS) or the handshake fails; brokers
    /// present their own (`tls_cert`) to each other, so theirs must be signed by it
    /// too. Absent: clients are not asked for a certificate.
    pub tls_client_ca: Option<PathBuf>,
    /// PEM file of certificate revocation lists (`meridian cert revoke` writes
    /// one): a client certificate they name is refused at the handshake. Needs
    /// `tls_client_ca`; re-read with it on SIGHUP. Absent: nothing is revoked.
    pub tls_client_crl: Option<PathBuf>,
    /// TOML file of authorization rules: which client (by its certificate's common
    /// name) may do what to which topics, groups and the cluster. Needs
    /// `tls_client_ca`. Absent: every admitted client may do everything.
    pub acl_file: Option<PathBuf>,
    /// Bytes per second each client may produce (produce request frames), counted
    /// per client certificate name (per IP address without client certificates);
    /// over it, the broker holds its answers back. 0: no limit.
    pub producer_byte_rate: u64,
    /// Bytes per second of fetch answers each client may receive; 0: no limit.
    pub consumer_byte_rate: u64,
    /// Per-client exceptions to the two rates, by certificate name (or IP address):
    /// `[client_quotas.NAME]` with `producer_byte_rate` / `consumer_byte_rate`
    /// (0: no limit for that client).
    pub client_quotas: std::collections::BTreeMap<String, ClientQuota>,
    /// Create a topic on first produce/fetch/metadata request naming it.
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic.
    pub default_partitions: u32,
    /// Largest request frame accepted, checked before allocating.
    pub max_frame_bytes: u32,
    /// Requests in flight per connection (QUIC concurrent bidirectional streams).
    pub max_inflight_requests: u32,
    pub max_connections: u32,
    /// Partitions named in one produce, fetch or list-offsets request.
    pub max_partitions_per_request: u32,
    /// Partitions one topic may have.
    pub max_partitions_per_topic: u32,
    /// Upper bound on a fetch's `max_wait_ms`.
    pub max_fetch_wait_ms: u32,
    /// Upper bound on a fetch response's size.
    pub max_fetch_bytes: u32,
    /// Memory kept of the buffers of sent fetch responses, to read later fetches
    /// into once the peer has acknowledged them (0: every read gets new memory).
    pub read_buffer_cache_bytes: u64,
    /// Memory kept of handled requests' bodies (those of 64 KiB or more: produce
    /// requests), to receive later requests into once nothing holds them
    /// (0: every request body gets new memory).
    pub request_buffer_cache_bytes: u64,
    pub flush: FlushPolicy,
    /// With `flush = "interval"`: how often dirty partitions are fsynced.
    pub flush_interval_ms: u64,
    pub retention_check_interval_ms: u64,
    /// Background threads compacting `cleanup.policy=compact` topics (Kafka's
    /// `log.cleaner.threads`).
    pub log_cleaner_threads: u32,
    /// Bytes per second all cleaner threads together may read plus write; 0 means
    /// unlimited (Kafka's `log.cleaner.io.max.bytes.per.second`).
    pub log_cleaner_io_max_bytes_per_second: u64,
    /// How long an idle cleaner thread waits before looking for a partition to clean
    /// again (Kafka's `log.cleaner.backoff.ms`).
    pub log_cleaner_backoff_ms: u64,
    /// Memory for the cleaners' key maps, split evenly between the threads (Kafka's
    /// `log.cleaner.dedupe.buffer.size`); a partition with more distinct dirty keys is
    /// cleaned over several passes.
    pub log_cleaner_dedupe_buffer_size: u64,
    /// Close connections idle for this long.
    pub idle_timeout_ms: u64,
    /// UDP socket send and receive buffers (the kernel caps them at
    /// net.core.rmem_max / wmem_max).
    pub udp_buffer_bytes: u32,
    /// Worker threads of the broker's async runtime (requests, replication, the
    /// QUIC endpoint); 0 means one per CPU core. Set by `meridian broker`/`dev`
    /// when they start (`worker_threads_for`).
    pub worker_threads: u32,
    /// Consumer groups: the shortest and longest session a member may ask for.
    pub group_min_session_timeout_ms: u32,
    pub group_max_session_timeout_ms: u32,
    /// Members one group may have.
    pub group_max_size: u32,
    /// How often group members heartbeat; also the longest a heartbeat is held open
    /// waiting for an assignment change.
    pub group_heartbeat_interval_ms: u32,
    /// Longest metadata string stored with a committed offset.
    pub offset_metadata_max_bytes: u32,
    /// Partitions of the internal `__consumer_offsets` topic (fixed once created).
    pub offsets_topic_num_partitions: u32,
    /// An idempotent producer silent this long is forgotten by each partition
    /// (Kafka's `producer.id.expiration.ms`).
    pub producer_id_expiration_ms: u64,
    /// A controller manages this broker's partitions (replication): a partition serves
    /// produce and fetch only once the controller has named its leader and ISR
    /// (`ReplicaManager::apply`). `false` (single node): every partition is its own
    /// leader, its high watermark is its log end and acks=all equals acks=1. Internal
    /// topics (`__` prefix) are served by the broker itself either way. A `[cluster]`
    /// section implies it; set alone, something outside the broker (a test playing
    /// the controller) drives `ReplicaManager::apply`.
    pub cluster_mode: bool,
    /// A follower that has not caught up with the leader's log end for this long
    /// leaves the ISR (Kafka's `replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// How long a follower's fetch waits at the leader for new records (Kafka's
    /// `replica.fetch.wait.max.ms`); also how soon a fetcher notices new partitions.
    pub replica_fetch_wait_max_ms: u32,
    /// Bytes a follower asks for per fetch and per partition (Kafka's
    /// `replica.fetch.max.bytes`); at least one batch comes back regardless.
    pub replica_fetch_max_bytes: u32,
    /// Bytes per second this broker fetches, in all, for follower replicas outside
    /// the ISR: the new replicas of a reassignment, or replicas back after being
    /// away. 0 (the default): no limit. In-sync followers are never held back
    /// (acks=all producers wait on them). Kafka's
    /// `follower.replication.throttled.rate` on every catching-up replica.
    pub replica_catch_up_bytes_per_sec: u64,
    /// How long a fetcher waits after a failed fetch (connection lost, not the leader,
    /// stale epoch) before trying again (Kafka's `replica.fetch.backoff.ms`).
    pub replica_fetch_backoff_ms: u64,
    /// How often high watermarks are written to `replication-offset-checkpoint`
    /// (Kafka's `replica.high.watermark.checkpoint.interval.ms`).
    pub replica_high_watermark_checkpoint_interval_ms: u64,
    /// Defaults for per-topic settings (a topic's own configs override these).
    pub topic_defaults: TopicDefaults,
    /// WebAssembly plugin limits and defaults.
    pub plugins: crate::plugins::PluginsConfig,
    /// Multi-broker cluster (`[cluster]`); absent: a single broker, as before.
    pub cluster: Option<ClusterConfig>,
}

/// `[client_quotas.NAME]`: one client's rates instead of the broker's
/// `producer_byte_rate` / `consumer_byte_rate` (absent: those; 0: no limit).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientQuota {
    pub producer_byte_rate: Option<u64>,
    pub consumer_byte_rate: Option<u64>,
}

/// `[cluster]`: the metadata quorum and broker liveness. Every voter is also a broker
/// (combined mode, like KRaft's); every broker of the cluster lists the same voters.
/// A broker whose id is not among them joins the running cluster as a broker that does
/// not vote (a Raft learner: it receives the metadata log).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The Raft voters as `"<broker_id>@<host>:<port>"`, the broker's own QUIC address
    /// (e.g. `["1@127.0.0.1:9101", "2@127.0.0.1:9102", "3@127.0.0.1:9103"]`).
    pub voters: Vec<String>,
    /// How brokers trust each other's certificate: `sha256:<hex>` (pin) or a PEM file
    /// (CA or certificate). Absent: peers must present this broker's own certificate
    /// (a cluster shares one TLS identity through `tls_cert`/`tls_key`).
    pub peer_trust: Option<String>,
    /// How often each broker heartbeats to the controller.
    pub broker_heartbeat_interval_ms: u64,
    /// A broker silent this long is fenced and loses its leaderships: the bulk of
    /// the time writes to a killed leader's partitions stall. Six heartbeats by
    /// default (1.5 s), so a heartbeat or two lost to a busy machine fences nobody.
    pub broker_session_timeout_ms: u64,
    /// A controller that just took over (the previous one died or stepped down)
    /// never saw the brokers' earlier heartbeats: it fences a broker that does not
    /// heartbeat to it within this long. Shorter than the session timeout, because
    /// the previous controller is usually dead and its partitions wait for this; long
    /// enough for live brokers to find the new controller (a few heartbeats).
    /// Absent: four heartbeat intervals, at most the session timeout (1 s by
    /// default).
    pub broker_session_on_takeover_ms: Option<u64>,
    /// Replication factor of topics created without one (0 in the request).
    /// Absent: min(3, number of voters).
    pub default_replication_factor: Option<u16>,
    /// Replication factor of the internal `__consumer_offsets` topic. The controller
    /// creates the topic once every broker of the region (the voters and the
    /// registered brokers) is live, or once this many have been for
    /// `offsets_topic_create_wait_ms` (until then group requests get
    /// `CoordinatorNotAvailable`). Absent: the default replication factor.
    pub offsets_topic_replication_factor: Option<u16>,
    /// How long the controller waits for brokers still down, once enough are live for
    /// `offsets_topic_replication_factor`, before it creates `__consumer_offsets`
    /// without them: the topic's partitions (and so the group coordinators) stay on
    /// the brokers it was created on until moved.
    pub offsets_topic_create_wait_ms: u64,
    /// How long an offset commit (or group deletion) waits for every in-sync replica
    /// of the group's `__consumer_offsets` partition (Kafka's
    /// `offsets.commit.timeout.ms`).
    pub offsets_commit_timeout_ms: u64,
    /// The metadata quorum's leader (the controller) heartbeats its followers this
    /// often.
    pub raft_heartbeat_interval_ms: u64,
    /// A follower that hears nothing from the quorum's leader for
    /// `raft_election_timeout_max_ms` (the leader's lease) plus a random timeout in
    /// `[min, max)` starts an election: a dead controller is replaced after 0.75–1 s
    /// by default.
    pub raft_election_timeout_min_ms: u64,
    pub raft_election_timeout_max_ms: u64,
    /// The controller moves leadership back to each partition's preferred replica
    /// (the first of its replicas) once that is in sync again, as Kafka's
    /// `auto.leader.rebalance.enable`: without it, leaderships a stopped broker gave
    /// away stay with the others after it returns.
    pub auto_leader_rebalance_enable: bool,
    /// How often the controller checks the leader imbalance (Kafka's
    /// `leader.imbalance.check.interval.seconds`, 300 s).
    pub leader_imbalance_check_interval_ms: u64,
    /// A broker's partitions are given back to it when more than this percentage of
    /// the partitions it is the preferred replica of are led by others (Kafka's
    /// `leader.imbalance.per.broker.percentage`).
    pub leader_imbalance_per_broker_percentage: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            voters: Vec::new(),
            peer_trust: None,
            broker_heartbeat_interval_ms: 250,
            broker_session_timeout_ms: 1_500,
            broker_session_on_takeover_ms: None,
            default_replication_factor: None,
            offsets_topic_replication_factor: None,
            offsets_topic_create_wait_ms: 10_000,
            offsets_commit_timeout_ms: 5_000,
            raft_heartbeat_interval_ms: RaftTiming::default().heartbeat_interval_ms,
            raft_election_timeout_min_ms: RaftTiming::default().election_timeout_min_ms,
            raft_election_timeout_max_ms: RaftTiming::default().election_timeout_max_ms,
            auto_leader_rebalance_enable: true,
            leader_imbalance_check_interval_ms: 300_000,
            leader_imbalance_per_broker_percentage: 10,
        }
    }
}

/// One voter of `cluster.voters`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voter {
    pub id: u32,
    /// `host:port`.
    pub address: String,
}

impl ClusterConfig {
    /// The voters, parsed from `"<id>@<host>:<port>"`.
    pub fn parsed_voters(&self) -> Result<Vec<Voter>, ConfigError> {
        let mut voters: Vec<Voter> = Vec::new();
        for entry in &self.voters {
            let bad = || {
                ConfigError::Invalid(format!(
                    "cluster.voters: `{entry}` is not `<broker_id>@<host>:<port>`"
                ))
            };
            let (id, address) = entry.split_once('@').ok_or_else(bad)?;
            let id: u32 = id.trim().parse().map_err(|_| bad())?;
            let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad());
            }
            if voters.iter().any(|v| v.id == id) {
                return Err(ConfigError::Invalid(format!(
                    "cluster.voters: broker id {id} appears twice"
                )));
            }
            voters.push(Voter {
                id,
                address: address.to_string(),
            });
        }
        Ok(voters)
    }

    pub fn raft_timing(&self) -> RaftTiming {
        RaftTiming {
            heartbeat_interval_ms: self.raft_heartbeat_interval_ms,
            election_timeout_min_ms: self.raft_election_timeout_min_ms,
            election_timeout_max_ms: self.raft_election_timeout_max_ms,
        }
    }

    /// `broker_session_on_takeover_ms`, or its default.
    pub fn broker_session_on_takeover_ms(&self) -> u64 {
        self.broker_session_on_takeover_ms.unwrap_or_else(|| {
            (4 * self.broker_heartbeat_interval_ms).min(self.broker_session_timeout_ms)
        })
    }

    pub fn default_replication_factor(&self) -> u16 {
        self.default_replication_factor
            .unwrap_or_else(|| self.voters.len().min(3) as u16)
    }

    pub fn offsets_topic_replication_factor(&self) -> u16 {
        self.offsets_topic_replication_factor
            .unwrap_or_else(|| self.default_replication_factor())
    }

    fn check(&self) -> Result<(), ConfigError> {
        let voters = self.parsed_voters()?;
        if voters.is_empty() {
            return Err(ConfigError::Invalid(
                "cluster.voters must name at least one voter".into(),
            ));
        }
        // A broker not among the voters is fine: it joins the running cluster as a
        // broker only (a Raft learner, see `cluster::Cluster::start`).
        if self.broker_heartbeat_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "cluster.broker_heartbeat_interval_ms must be greater than 0".into(),
            ));
        }
        if self.broker_session_timeout_ms <= self.broker_heartbeat_interval_ms {
            return Err(ConfigError::Invalid(
                "cluster.broker_session_timeout_ms must exceed cluster.broker_heartbeat_interval_ms"
                    .into(),
            ));
        }
        if self.offsets_topic_replication_factor == Some(0) {
            return Err(ConfigError::Invalid(
                "cluster.offsets_topic_replication_factor must be at least 1".into(),
            ));
        }
        if self.offsets_commit_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "cluster.offsets_commit_timeout_ms must be greater than 0".into(),
            ));
        }
        if self.leader_imbalance_check_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "cluster.leader_imbalance_check_interval_ms must be greater than 0".into(),
            ));
        }
        if self.leader_imbalance_per_broker_percentage > 100 {
            return Err(ConfigError::Invalid(format!(
                "cluster.leader_imbalance_per_broker_percentage is {}; it must be at most 100",
                self.leader_imbalance_per_broker_percentage
            )));
        }
        if self.raft_heartbeat_interval_ms == 0
            || self.raft_heartbeat_interval_ms >= self.raft_election_timeout_min_ms
            || self.raft_election_timeout_min_ms >= self.raft_election_timeout_max_ms
        {
            return Err(ConfigError::Invalid(format!(
                "cluster: need 0 < raft_heartbeat_interval_ms ({}) < raft_election_timeout_min_ms ({}) < raft_election_timeout_max_ms ({})",
                self.raft_heartbeat_interval_ms,
                self.raft_election_timeout_min_ms,
                self.raft_election_timeout_max_ms
            )));
        }
        if let Some(takeover) = self.broker_session_on_takeover_ms {
            if takeover < 2 * self.broker_heartbeat_interval_ms
                || takeover > self.broker_session_timeout_ms
            {
                return Err(ConfigError::Invalid(format!(
                    "cluster.broker_session_on_takeover_ms must be at least twice cluster.broker_heartbeat_interval_ms ({}) and at most cluster.broker_session_timeout_ms ({}), got {takeover}",
                    2 * self.broker_heartbeat_interval_ms,
                    self.broker_session_timeout_ms,
                )));
            }
        }
        let rf = self.default_replication_factor();
        if rf == 0 || rf as usize > voters.len() {
            return Err(ConfigError::Invalid(format!(
                "cluster.default_replication_factor must be between 1 and the number of voters ({}), got {rf}",
                voters.len()
            )));
        }
        Ok(())
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: "127.0.0.1:9092".parse().expect("valid literal address"),
            metrics_listen: None,
            metrics_scrape_timeout_ms: 5_000,
            metrics_max_head_bytes: 8 * 1024,
            metrics_tls: false,
            kafka_listen: None,
            kafka_tls: false,
            kafka_sasl_users_file: None,
            kafka_sasl_mechanisms: None,
            kafka_sasl_session_lifetime_ms: 0,
            kafka_sasl_failure_delay_ms: 100,
            kafka_cooperative_members_max: 64,
            kafka_sync_hold_ms: 5_000,
            advertised_host: None,
            data_dir: PathBuf::from("meridian-data"),
            broker_id: 1,
            rack: None,
            cluster_id: "meridian-local".into(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_client_crl: None,
            acl_file: None,
            producer_byte_rate: 0,
            consumer_byte_rate: 0,
            client_quotas: Default::default(),
            auto_create_topics: false,
            default_partitions: 1,
            max_frame_bytes: meridian_wire::frame::DEFAULT_MAX_FRAME_BYTES,
            max_inflight_requests: 256,
            max_connections: 1024,
            max_partitions_per_request: 2000,
            max_partitions_per_topic: 10_000,
            max_fetch_wait_ms: 30_000,
            max_fetch_bytes: 64 * 1024 * 1024,
            read_buffer_cache_bytes: 64 * 1024 * 1024,
            request_buffer_cache_bytes: 64 * 1024 * 1024,
            flush: FlushPolicy::Interval,
            flush_interval_ms: 60_000,
            retention_check_interval_ms: 60_000,
            log_cleaner_threads: 1,
            log_cleaner_io_max_bytes_per_second: 0,
            log_cleaner_backoff_ms: 15_000,
            log_cleaner_dedupe_buffer_size: 128 * 1024 * 1024,
            idle_timeout_ms: 60_000,
            udp_buffer_bytes: 4 * 1024 * 1024,
            worker_threads: 0,
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
            group_max_size: 1_000,
            group_heartbeat_interval_ms: 3_000,
            offset_metadata_max_bytes: 4_096,
            offsets_topic_num_partitions: 50,
            producer_id_expiration_ms: 86_400_000,
            cluster_mode: false,
            replica_lag_time_max_ms: 30_000,
            replica_fetch_wait_max_ms: 500,
            replica_fetch_max_bytes: 1024 * 1024,
            replica_catch_up_bytes_per_sec: 0,
            replica_fetch_backoff_ms: 1_000,
            replica_high_watermark_checkpoint_interval_ms: 5_000,
            topic_defaults: TopicDefaults::default(),
            plugins: crate::plugins::PluginsConfig::default(),
            cluster: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl BrokerConfig {
    /// Builds the configuration from defaults, an optional TOML file, environment
    /// variables (`MERIDIAN_MAX_FRAME_BYTES=…`, `MERIDIAN_TOPIC_DEFAULTS__RETENTION_MS=…`)
    /// and `key=value` overrides (`topic_defaults.retention_ms=…`), in that order.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<BrokerConfig, ConfigError> {
        let mut table = toml::Table::try_from(BrokerConfig::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let from_file: toml::Table = text
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?;
            merge(&mut table, from_file);
        }
        for (name, value) in env {
            let Some(key) = name.strip_prefix("MERIDIAN_") else {
                continue;
            };
            // Variables the CLI reads for itself are not broker settings.
            if matches!(
                key,
                "BROKER"
                    | "BOOTSTRAP"
                    | "CA"
                    | "FINGERPRINT"
                    | "CERT"
                    | "KEY"
                    | "CONFIG"
                    | "LOG"
                    | "BIN"
                    | "TEST_BROKER_LOG"
                    | "BENCH_BROKER_LOG"
            ) {
                continue;
            }
            let key = key.to_ascii_lowercase().replace("__", ".");
            set_key(&mut table, &key, &value)?;
        }
        for item in overrides {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| ConfigError::Invalid(format!("`{item}` is not key=value")))?;
            set_key(&mut table, key.trim(), value.trim())?;
        }
        let config: BrokerConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.kafka_listen.is_some() && self.tls_client_ca.is_some() && !self.kafka_tls {
            return Err(ConfigError::Invalid(
                "kafka_listen with tls_client_ca needs kafka_tls = true: over plain TCP \
                 Kafka clients present no certificate, so they would bypass mutual TLS"
                    .into(),
            ));
        }
        if self.kafka_tls && self.kafka_listen.is_none() {
            return Err(ConfigError::Invalid(
                "kafka_tls needs kafka_listen: it is the Kafka listener that speaks TLS".into(),
            ));
        }
        if self.metrics_tls && self.metrics_listen.is_none() {
            return Err(ConfigError::Invalid(
                "metrics_tls needs metrics_listen: it is the metrics listener that speaks TLS"
                    .into(),
            ));
        }
        if self.tls_client_crl.is_some() && self.tls_client_ca.is_none() {
            return Err(ConfigError::Invalid(
                "tls_client_crl needs tls_client_ca: it revokes client certificates, which \
                 only tls_client_ca asks for"
                    .into(),
            ));
        }
        if self.acl_file.is_some()
            && self.tls_client_ca.is_none()
            && self.kafka_sasl_users_file.is_none()
        {
            return Err(ConfigError::Invalid(
                "acl_file needs tls_client_ca or kafka_sasl_users_file: rules name clients \
                 by their certificates or the SASL users they authenticate as"
                    .into(),
            ));
        }
        if self.kafka_sasl_users_file.is_some() && self.kafka_listen.is_none() {
            return Err(ConfigError::Invalid(
                "kafka_sasl_users_file needs kafka_listen: it is the Kafka listener that \
                 asks for SASL"
                    .into(),
            ));
        }
        if self.kafka_sasl_mechanisms.is_some() && self.kafka_sasl_users_file.is_none() {
            return Err(ConfigError::Invalid(
                "kafka_sasl_mechanisms needs kafka_sasl_users_file: the users the \
                 mechanisms check"
                    .into(),
            ));
        }
        self.sasl_mechanisms()?;
        if self.kafka_sasl_session_lifetime_ms > 0 && self.kafka_sasl_users_file.is_none() {
            return Err(ConfigError::Invalid(
                "kafka_sasl_session_lifetime_ms needs kafka_sasl_users_file: it is how \
                 long a SASL login lasts"
                    .into(),
            ));
        }
        if self.kafka_sasl_session_lifetime_ms > i64::MAX as u64 {
            return Err(ConfigError::Invalid(
                "kafka_sasl_session_lifetime_ms is too large".into(),
            ));
        }
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("max_inflight_requests", self.max_inflight_requests as u64),
            (
                "kafka_cooperative_members_max",
                self.kafka_cooperative_members_max as u64,
            ),
            ("max_connections", self.max_connections as u64),
            (
                "max_partitions_per_request",
                self.max_partitions_per_request as u64,
            ),
            (
                "max_partitions_per_topic",
                self.max_partitions_per_topic as u64,
            ),
            ("default_partitions", self.default_partitions as u64),
            ("max_fetch_bytes", self.max_fetch_bytes as u64),
            ("flush_interval_ms", self.flush_interval_ms),
            (
                "retention_check_interval_ms",
                self.retention_check_interval_ms,
            ),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("metrics_scrape_timeout_ms", self.metrics_scrape_timeout_ms),
            ("metrics_max_head_bytes", self.metrics_max_head_bytes as u64),
            ("log_cleaner_threads", self.log_cleaner_threads as u64),
            ("log_cleaner_backoff_ms", self.log_cleaner_backoff_ms),
            (
                "log_cleaner_dedupe_buffer_size",
                self.log_cleaner_dedupe_buffer_size,
            ),
            ("udp_buffer_bytes", self.udp_buffer_bytes as u64),
            (
                "group_min_session_timeout_ms",
                self.group_min_session_timeout_ms as u64,
            ),
            ("group_max_size", self.group_max_size as u64),
            (
                "group_heartbeat_interval_ms",
                self.group_heartbeat_interval_ms as u64,
            ),
            (
                "offsets_topic_num_partitions",
                self.offsets_topic_num_partitions as u64,
            ),
            ("producer_id_expiration_ms", self.producer_id_expiration_ms),
            ("replica_lag_time_max_ms", self.replica_lag_time_max_ms),
            (
                "replica_fetch_max_bytes",
                self.replica_fetch_max_bytes as u64,
            ),
            ("replica_fetch_backoff_ms", self.replica_fetch_backoff_ms),
            (
                "replica_high_watermark_checkpoint_interval_ms",
                self.replica_high_watermark_checkpoint_interval_ms,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be greater than 0"
                )));
            }
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(ConfigError::Invalid(format!(
                "worker_threads must be at most {MAX_WORKER_THREADS} (0: one per CPU core)"
            )));
        }
        if self.max_frame_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "max_frame_bytes must be at least 1024".into(),
            ));
        }
        if self.group_min_session_timeout_ms > self.group_max_session_timeout_ms {
            return Err(ConfigError::Invalid(
                "group_min_session_timeout_ms must not exceed group_max_session_timeout_ms".into(),
            ));
        }
        if self.offsets_topic_num_partitions > self.max_partitions_per_topic {
            return Err(ConfigError::Invalid(
                "offsets_topic_num_partitions must not exceed max_partitions_per_topic".into(),
            ));
        }
        if self.replica_fetch_wait_max_ms as u64 >= self.replica_lag_time_max_ms {
            return Err(ConfigError::Invalid(
                "replica_fetch_wait_max_ms must be below replica_lag_time_max_ms (a caught-up follower waiting at the leader would leave the ISR)".into(),
            ));
        }
        if let Some(cluster) = &self.cluster {
            cluster.check()?;
        }
        self.plugins.check().map_err(ConfigError::Invalid)?;
        self.topic_defaults.check().map_err(ConfigError::Invalid)
    }

    /// The runtime's worker threads: `worker_threads`, or one per CPU core.
    pub fn worker_threads_for(&self, cores: usize) -> usize {
        match self.worker_threads {
            0 => cores.max(1),
            n => n as usize,
        }
    }

    pub fn coordinator_config(&self) -> meridian_core::group::CoordinatorConfig {
        meridian_core::group::CoordinatorConfig {
            min_session_timeout_ms: self.group_min_session_timeout_ms,
            max_session_timeout_ms: self.group_max_session_timeout_ms,
            max_group_size: self.group_max_size,
            heartbeat_interval_ms: self.group_heartbeat_interval_ms,
            offset_metadata_max_bytes: self.offset_metadata_max_bytes,
        }
    }

    pub fn advertised_host(&self) -> String {
        self.advertised_host
            .clone()
            .unwrap_or_else(|| self.listen.ip().to_string())
    }

    pub fn tls_cert_path(&self) -> PathBuf {
        self.tls_cert
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls").join("cert.pem"))
    }

    pub fn tls_key_path(&self) -> PathBuf {
        self.tls_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls").join("key.pem"))
    }
}

impl BrokerConfig {
    /// The SASL mechanisms the Kafka listener offers (`kafka_sasl_mechanisms`, or
    /// its default).
    pub fn sasl_mechanisms(&self) -> Result<Vec<Mechanism>, ConfigError> {
        let Some(listed) = &self.kafka_sasl_mechanisms else {
            let mut default = Mechanism::SCRAM.to_vec();
            if self.kafka_tls {
                default.push(Mechanism::Plain);
            }
            return Ok(default);
        };
        let mut mechanisms = Vec::new();
        for name in listed.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let mechanism = Mechanism::from_name(name).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "kafka_sasl_mechanisms: `{name}` is not one of {}",
                    Mechanism::ALL.map(Mechanism::name).join(", ")
                ))
            })?;
            if mechanism == Mechanism::Plain && !self.kafka_tls {
                return Err(ConfigError::Invalid(
                    "kafka_sasl_mechanisms: PLAIN needs kafka_tls = true, as it sends the \
                     password itself"
                        .into(),
                ));
            }
            if !mechanisms.contains(&mechanism) {
                mechanisms.push(mechanism);
            }
        }
        if mechanisms.is_empty() {
            return Err(ConfigError::Invalid(
                "kafka_sasl_mechanisms names no mechanism".into(),
            ));
        }
        Ok(mechanisms)
    }
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(overlay_table)) => {
                merge(base_table, overlay_table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Sets a dotted key from a string, typed like the value it replaces.
fn set_key(table: &mut toml::Table, key: &str, raw: &str) -> Result<(), ConfigError> {
    let (head, rest) = match key.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (key, None),
    };
    let Some(existing) = table.get_mut(head) else {
        // Optional keys (and keys of optional sections such as `[cluster]`) are
        // absent from the serialized defaults: numbers and booleans are taken as
        // such, anything else as a string.
        if rest.is_none() {
            let value = if let Ok(n) = raw.parse::<i64>() {
                toml::Value::Integer(n)
            } else if let Ok(b) = raw.parse::<bool>() {
                toml::Value::Boolean(b)
            } else {
                toml::Value::String(raw.to_owned())
            };
            table.insert(head.to_owned(), value);
            return Ok(());
        }
        // A section absent from the defaults (`[cluster]`, `[client_quotas.NAME]`):
        // made here, and checked field by field when the whole is read.
        let mut section = toml::Table::new();
        set_key(&mut section, rest.unwrap_or_default(), raw)?;
        table.insert(head.to_owned(), toml::Value::Table(section));
        return Ok(());
    };
    match (existing, rest) {
        (toml::Value::Table(inner), Some(rest)) => set_key(inner, rest, raw),
        (toml::Value::Table(_), None) => Err(ConfigError::Invalid(format!(
            "`{key}` is a section, not a value"
        ))),
        (_, Some(_)) => Err(ConfigError::Invalid(format!("unknown config key `{key}`"))),
        (slot, None) => {
            let value = match slot {
                toml::Value::Integer(_) => toml::Value::Integer(raw.parse().map_err(|_| {
                    ConfigError::Invalid(format!("`{key}` wants an integer, got `{raw}`"))
                })?),
                toml::Value::Boolean(_) => toml::Value::Boolean(raw.parse().map_err(|_| {
                    ConfigError::Invalid(format!("`{key}` wants true or false, got `{raw}`"))
                })?),
                toml::Value::Float(_) => toml::Value::Float(raw.parse().map_err(|_| {
                    ConfigError::Invalid(format!("`{key}` wants a number, got `{raw}`"))
                })?),
                _ => toml::Value::String(raw.to_owned()),
            };
            *slot = value;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broker.toml");
        std::fs::write(
            &file,
            "max_frame_bytes = 2048\nflush = \"always\"\n[topic_defaults]\nretention_ms = 5\n",
        )
        .unwrap();
        let env = vec![
            ("MERIDIAN_MAX_FRAME_BYTES".to_string(), "4096".to_string()),
            ("MERIDIAN_BROKER".to_string(), "ignored:1".to_string()),
            // The CLI's client certificate, not a broker setting.
            ("MERIDIAN_CERT".to_string(), "alice.pem".to_string()),
            ("MERIDIAN_KEY".to_string(), "alice.key".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let config = BrokerConfig::load(
            Some(&file),
            env,
            &["topic_defaults.retention_ms=7".into(), "broker_id=3".into()],
        )
        .unwrap();
        assert_eq!(config.max_frame_bytes, 4096);
        assert_eq!(config.flush, FlushPolicy::Always);
        assert_eq!(config.topic_defaults.retention_ms, 7);
        assert_eq!(config.broker_id, 3);
    }

    #[test]
    fn replication_settings_have_kafkas_defaults_and_can_be_set() {
        let config = BrokerConfig::default();
        assert!(!config.cluster_mode);
        assert_eq!(config.replica_lag_time_max_ms, 30_000);
        assert_eq!(config.replica_fetch_wait_max_ms, 500);
        assert_eq!(config.replica_fetch_max_bytes, 1_048_576);
        assert_eq!(config.replica_catch_up_bytes_per_sec, 0);
        assert_eq!(config.replica_fetch_backoff_ms, 1_000);
        assert_eq!(config.replica_high_watermark_checkpoint_interval_ms, 5_000);
        assert_eq!(config.topic_defaults.min_insync_replicas, 1);
        let config = BrokerConfig::load(
            None,
            vec![("MERIDIAN_REPLICA_LAG_TIME_MAX_MS".into(), "2000".into())],
            &[
                "cluster_mode=true".into(),
                "replica_fetch_wait_max_ms=100".into(),
                "replica_fetch_max_bytes=4096".into(),
                "replica_catch_up_bytes_per_sec=1000000".into(),
                "replica_fetch_backoff_ms=50".into(),
                "topic_defaults.min_insync_replicas=2".into(),
            ],
        )
        .unwrap();
        assert!(config.cluster_mode);
        assert_eq!(config.replica_lag_time_max_ms, 2_000);
        assert_eq!(config.replica_fetch_wait_max_ms, 100);
        assert_eq!(config.replica_fetch_max_bytes, 4096);
        assert_eq!(config.replica_catch_up_bytes_per_sec, 1_000_000);
        assert_eq!(config.replica_fetch_backoff_ms, 50);
        assert_eq!(config.topic_defaults.min_insync_replicas, 2);
    }

    #[test]
    fn cluster_section_defaults_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broker.toml");
        let write = |text: &str| std::fs::write(&file, text).unwrap();
        // Absent: a single broker.
        write("broker_id = 2\n");
        let config = BrokerConfig::load(Some(&file), vec![], &[]).unwrap();
        assert_eq!((config.cluster, config.rack), (None, None));

        write(
            "broker_id = 2\nrack = \"a\"\n[cluster]\nvoters = [\"1@127.0.0.1:9101\", \"2@127.0.0.1:9102\", \"3@127.0.0.1:9103\"]\n",
        );
        let config = BrokerConfig::load(Some(&file), vec![], &[]).unwrap();
        assert_eq!(config.rack.as_deref(), Some("a"));
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.broker_heartbeat_interval_ms, 250);
        assert_eq!(cluster.broker_session_timeout_ms, 1_500);
        assert_eq!(cluster.broker_session_on_takeover_ms(), 1_000);
        assert_eq!(
            (
                cluster.raft_heartbeat_interval_ms,
                cluster.raft_election_timeout_min_ms,
                cluster.raft_election_timeout_max_ms
            ),
            (50, 250, 500)
        );
        assert_eq!(cluster.peer_trust, None);
        assert_eq!(cluster.default_replication_factor(), 3);
        assert_eq!(
            cluster.parsed_voters().unwrap()[1],
            Voter {
                id: 2,
                address: "127.0.0.1:9102".into()
            }
        );
        // Flags override keys of the section.
        let config = BrokerConfig::load(
            Some(&file),
            vec![],
            &["cluster.broker_session_timeout_ms=5000".into()],
        )
        .unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.broker_session_timeout_ms, 5_000);
        write("[cluster]\nvoters = [\"1@a:1\", \"2@b:2\"]\ndefault_replication_factor = 1\npeer_trust = \"ca.pem\"\n");
        let cluster = BrokerConfig::load(Some(&file), vec![], &[])
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(cluster.default_replication_factor(), 1);
        assert_eq!(cluster.peer_trust.as_deref(), Some("ca.pem"));
        write("[cluster]\nvoters = [\"1@a:1\", \"2@b:2\"]\n");
        let cluster = BrokerConfig::load(Some(&file), vec![], &[])
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(cluster.default_replication_factor(), 2, "min(3, voters)");
        assert_eq!(
            cluster.offsets_topic_replication_factor(),
            2,
            "the default RF"
        );
        assert_eq!(cluster.offsets_commit_timeout_ms, 5_000);
        assert_eq!(cluster.offsets_topic_create_wait_ms, 10_000);
        assert!(cluster.auto_leader_rebalance_enable);
        assert_eq!(cluster.leader_imbalance_check_interval_ms, 300_000);
        assert_eq!(cluster.leader_imbalance_per_broker_percentage, 10);
        write("[cluster]\nvoters = [\"1@a:1\", \"2@b:2\"]\noffsets_topic_replication_factor = 1\n");
        let cluster = BrokerConfig::load(Some(&file), vec![], &[])
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(cluster.offsets_topic_replication_factor(), 1);

        let check = |text: &str, want: &str| {
            write(text);
            let err = BrokerConfig::load(Some(&file), vec![], &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text}: got `{err}`, want `{want}`");
        };
        check(
            "[cluster]\nvoters = [\"1@127.0.0.1:9101\"]\nvoterz = []\n",
            "unknown field `voterz`",
        );
        check("[cluster]\nvoters = []\n", "at least one voter");
        check(
            "[cluster]\nvoters = [\"127.0.0.1:9101\"]\n",
            "is not `<broker_id>@<host>:<port>`",
        );
        check(
            "[cluster]\nvoters = [\"1@127.0.0.1\"]\n",
            "is not `<broker_id>@<host>:<port>`",
        );
        check(
            "[cluster]\nvoters = [\"1@a:1\", \"1@b:2\"]\n",
            "broker id 1 appears twice",
        );
        check(
            "[cluster]\nvoters = [\"1@a:1\"]\nbroker_heartbeat_interval_ms = 0\n",
            "broker_heartbeat_interval_ms must be greater than 0",
        );
        check(
            "[cluster]\nvoters = [\"1@a:1\"]\nbroker_session_timeout_ms = 100\nbroker_heartbeat_interval_ms = 100\n",
            "must exceed",
        );
        check(
            "[cluster]\nvoters = [\"1@a:1\"]\noffsets_topic_replication_factor = 0\n",
            "offsets_topic_replication_factor must be at least 1",
        );
        check(
            "[cluster]\nvoters = [\"1@a:1\"]\noffsets_commit_timeout_ms = 0\n",
            "offsets_commit_timeout_ms must be greater than 0",
        );
        check(
            "kafka_listen = \"127.0.0.1:9092\"\ntls_client_ca = \"ca.pem\"\n",
            "kafka_listen with tls_client_ca needs kafka_tls = true",
        );
        check("kafka_tls = true\n", "kafka_tls needs kafka_listen");
        check("metrics_tls = true\n", "metrics_tls needs metrics_listen");
        check(
            "kafka_sasl_users_file = \"users.toml\"\n",
            "kafka_sasl_users_file needs kafka_listen",
        );
        let sasl = "kafka_listen = \"127.0.0.1:9092\"\nkafka_sasl_users_file = \"u.toml\"\n";
        check(
            &format!("{sasl}kafka_sasl_mechanisms = \"PLAIN\"\n"),
            "PLAIN needs kafka_tls = true",
        );
        check(
            &format!("{sasl}kafka_sasl_mechanisms = \"SCRAM-SHA-1\"\n"),
            "`SCRAM-SHA-1` is not one of SCRAM-SHA-256, SCRAM-SHA-512, PLAIN",
        );
        check(
            &format!("{sasl}kafka_sasl_mechanisms = \" , \"\n"),
            "names no mechanism",
        );
        check(
            "kafka_sasl_mechanisms = \"PLAIN\"\n",
            "kafka_sasl_mechanisms needs kafka_sasl_users_file",
        );
        check(
            "kafka_sasl_session_lifetime_ms = 1000\n",
            "kafka_sasl_session_lifetime_ms needs kafka_sasl_users_file",
        );
        check(
            "[cluster]\nvoters = [\"1@a:1\"]\nleader_imbalance_check_interval_ms = 0\n",
            "leader_imbalance_check_interval_ms must be greater than 0",
        );
        check(
            "[cluster]\nvoters = [\"1@a:1\"]\nleader_imbalance_per_broker_percentage = 101\n",
            "leader_imbalance_per_broker_percentage is 101; it must be at most 100",
        );
        check(
            "[cluster]\nvoters = [\"1@a:1\"]\nbroker_session_on_takeover_ms = 400\n",
            "broker_session_on_takeover_ms must be at least twice",
        );
        check(
            "[cluster]\nvoters = [\"1@a:1\"]\nbroker_session_on_takeover_ms = 1600\n",
            "at most cluster.broker_session_timeout_ms (1500)",
        );
        check(
            "[cluster]\nvoters = [\"1@a:1\"]\nraft_election_timeout_min_ms = 600\n",
            "raft_election_timeout_min_ms (600) < raft_election_timeout_max_ms (500)",
        );
        check(
            "[cluster]\nvoters = [\"1@a:1\"]\ndefault_replication_factor = 2\n",
            "between 1 and the number of voters (1), got 2",
        );
    }

    #[test]
    fn sasl_mechanisms_default_to_scram_and_plain_only_over_tls() {
        let load = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            BrokerConfig::load(None, std::iter::empty(), &sets).unwrap()
        };
        let base = [
            "kafka_listen=127.0.0.1:9092",
            "kafka_sasl_users_file=u.toml",
        ];
        let plain = load(&base);
        assert_eq!(plain.sasl_mechanisms().unwrap(), Mechanism::SCRAM.to_vec());
        let tls = load(&[base[0], base[1], "kafka_tls=true"]);
        assert_eq!(tls.sasl_mechanisms().unwrap(), Mechanism::ALL.to_vec());
        let listed = load(&[
            base[0],
            base[1],
            "kafka_tls=true",
            "kafka_sasl_mechanisms=PLAIN, SCRAM-SHA-512,PLAIN",
        ]);
        assert_eq!(
            listed.sasl_mechanisms().unwrap(),
            vec![Mechanism::Plain, Mechanism::ScramSha512]
        );
        // acl_file names SASL users without tls_client_ca.
        load(&[base[0], base[1], "acl_file=acl.toml"]);
    }

    #[test]
    fn worker_threads_default_to_one_per_core() {
        let config = BrokerConfig::load(None, std::iter::empty(), &[]).unwrap();
        assert_eq!(config.worker_threads, 0);
        assert_eq!(config.worker_threads_for(2), 2);
        assert_eq!(config.worker_threads_for(0), 1);
        let config =
            BrokerConfig::load(None, std::iter::empty(), &["worker_threads=1".into()]).unwrap();
        assert_eq!(config.worker_threads_for(8), 1);
    }

    #[test]
    fn mistakes_are_refused_with_the_key_named() {
        let cases: &[(&str, &str)] = &[
            ("max_frame_bytez=1", "unknown field `max_frame_bytez`"),
            ("max_frame_bytes=lots", "`max_frame_bytes` wants an integer"),
            (
                "max_frame_bytes=0",
                "max_frame_bytes must be greater than 0",
            ),
            ("topic_defaults.nope=1", "unknown field `nope`"),
            (
                "log_cleaner_threads=0",
                "log_cleaner_threads must be greater than 0",
            ),
            (
                "kafka_cooperative_members_max=0",
                "kafka_cooperative_members_max must be greater than 0",
            ),
            ("worker_threads=1025", "worker_threads must be at most 1024"),
            ("acl_file=acl.toml", "acl_file needs tls_client_ca"),
            (
                "tls_client_crl=crl.pem",
                "tls_client_crl needs tls_client_ca",
            ),
            (
                "client_quota.a.producer_byte_rate=1",
                "unknown field `client_quota`",
            ),
            (
                "client_quotas.a.producer_rate=1",
                "unknown field `producer_rate`",
            ),
            (
                "log_cleaner_backoff_ms=0",
                "log_cleaner_backoff_ms must be greater than 0",
            ),
            (
                "log_cleaner_dedupe_buffer_size=0",
                "log_cleaner_dedupe_buffer_size must be greater than 0",
            ),
            (
                "topic_defaults.cleanup_policy=compacted",
                "expected delete, compact or compact,delete",
            ),
            (
                "topic_defaults.min_cleanable_dirty_ratio=2.0",
                "between 0 and 1",
            ),
            ("flush=sometimes", "unknown variant `sometimes`"),
            (
                "replica_lag_time_max_ms=0",
                "replica_lag_time_max_ms must be greater than 0",
            ),
            (
                "replica_fetch_max_bytes=0",
                "replica_fetch_max_bytes must be greater than 0",
            ),
            (
                "replica_fetch_backoff_ms=0",
                "replica_fetch_backoff_ms must be greater than 0",
            ),
            (
                "replica_high_watermark_checkpoint_interval_ms=0",
                "replica_high_watermark_checkpoint_interval_ms must be greater than 0",
            ),
            (
                "replica_fetch_wait_max_ms=30000",
                "replica_fetch_wait_max_ms must be below replica_lag_time_max_ms",
            ),
            ("topic_defaults.min_insync_replicas=0", "at least 1"),
            (
                "plugins.memory_max_bytes=0",
                "plugins.memory_max_bytes must be greater than 0",
            ),
            (
                "plugins.batch_time_max_ms=0",
                "plugins.batch_time_max_ms must be greater than 0",
            ),
            (
                "plugins.module_size_max_bytes=0",
                "plugins.module_size_max_bytes must be greater than 0",
            ),
            (
                "plugins.epoch_tick_ms=0",
                "plugins.epoch_tick_ms must be greater than 0",
            ),
            (
                "plugins.logs_queue_max=0",
                "plugins.logs_queue_max must be greater than 0",
            ),
            (
                "plugins.batch_time_max_ms=20000",
                "plugins.batch_time_max_ms (20000) must not exceed plugins.batch_time_max_ms_limit (10000)",
            ),
            (
                "plugins.memory_max_bytes_limit=1048576",
                "plugins.memory_max_bytes (67108864) must not exceed plugins.memory_max_bytes_limit (1048576)",
            ),
            (
                "plugins.batch_time_max_ms_limit=4294967296",
                "plugins.batch_time_max_ms_limit must be at most 4294967295",
            ),
            ("plugins.logs_topic=plugin/logs", "plugins.logs_topic: topic name"),
            ("no_equals_sign", "is not key=value"),
        ];
        for (input, want) in cases {
            let err = BrokerConfig::load(None, vec![], &[input.to_string()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{input}: got `{err}`, want `{want}`");
        }
    }
}
