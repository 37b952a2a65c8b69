//! The Meridian broker: a QUIC endpoint (quinn + rustls) in front of the topic
//! registry and the partition logs.
//!
//! Every request arrives on its own bidirectional QUIC stream (see
//! `meridian_wire::frame`), so a slow request — a long-polling fetch, a produce
//! waiting for fsync — never blocks another. The number of streams a connection may
//! open at once (`max_inflight_requests`) and QUIC flow control bound what a client
//! can make the broker buffer.

pub mod acl;
mod cleaner;
mod cluster;
mod cluster_writer;
pub mod config;
mod groups;
mod handlers;
mod kafka_listener;
mod metrics;
mod plugins;
mod producer_ids;
mod quotas;
pub mod replica_manager;
pub mod replicas;
pub mod tls;
pub mod topic_config;
pub mod topics;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use meridian_client::frame_io::{read_body, BodyBudget, BodyError};
use meridian_log::GroupCommit;
use meridian_wire::buffers::BufferPool;
use meridian_wire::frame::{
    check_frame_length, decode_request_traced, encode_error_response, encode_response_chunks_at,
    FrameError, TraceContext,
};
use meridian_wire::messages::{Request, Response, CONSUMER_REPLICA_ID};
use meridian_wire::ErrorCode;
use tracing::Instrument;

pub use cluster::{ControllerClient, ControllerError};
pub use config::{BrokerConfig, ClusterConfig, FlushPolicy};
pub use plugins::PluginsConfig;
pub use replica_manager::{AlterIsrSink, IsrChange, ReplicaManager, ReplicaStatus};
use topics::Registry;

/// QUIC application error codes used when the broker closes a stream or connection.
pub mod close_codes {
    pub const SHUTDOWN: u32 = 0;
    pub const FRAME_TOO_LARGE: u32 = 1;
}

/// State shared by every connection and background task.
pub(crate) struct Shared {
    pub(crate) config: BrokerConfig,
    pub(crate) registry: Registry,
    pub(crate) groups: groups::Groups,
    pub(crate) producer_ids: producer_ids::ProducerIds,
    pub(crate) group_commit: GroupCommit,
    /// Buffers of sent fetch responses, read into again once the peer has them.
    /// Fetch reads, kept to read later fetches into.
    pub(crate) read_buffers: BufferPool,
    /// Request bodies of every connection, kept to receive later ones into.
    request_buffers: BufferPool,
    pub(crate) local_addr: SocketAddr,
    pub(crate) plugins: plugins::Plugins,
    pub(crate) replication: replica_manager::ReplicationState,
    /// The cluster control plane; `None` for a single broker (no `[cluster]`).
    pub(crate) cluster: Option<Arc<cluster::Cluster>>,
    /// Writes plugin logs and dead letters to the cluster's topics; `None` for a
    /// single broker, which appends them itself.
    pub(crate) cluster_writer: Option<cluster_writer::ClusterWriter>,
    /// Held while a metadata image is applied to the local logs; `true` once the
    /// broker stops, after which none is (see [`replicas::follow_images`]).
    pub(crate) images_stopped: parking_lot::Mutex<bool>,
    /// Counters for the metrics listener (`metrics_listen`), kept whether or not it
    /// is on.
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// The rules of `acl_file` (replaced on reload); `None` without one: every
    /// admitted client may do everything.
    pub(crate) acl: Option<parking_lot::RwLock<Arc<acl::Acl>>>,
    /// Fingerprints of every certificate this process has loaded as its own: a
    /// client presenting one is a broker of the cluster, which `acl_file` does not
    /// restrict.
    own_fingerprints: parking_lot::RwLock<std::collections::HashSet<String>>,
    /// `producer_byte_rate`, `consumer_byte_rate` and `[client_quotas]`.
    quotas: quotas::Quotas,
    /// The settings DescribeConfigs of this broker lists over Kafka: the
    /// configuration read at start, with the client quotas as last reloaded.
    pub(crate) kafka_settings: parking_lot::RwLock<Arc<[meridian_kafka::BrokerSetting]>>,
    /// The Kafka listener's TLS under `kafka_tls` (replaced on reload).
    kafka_tls: Option<parking_lot::RwLock<Arc<rustls::ServerConfig>>>,
    /// The metrics listener's TLS under `metrics_tls` (replaced on reload).
    pub(crate) metrics_tls: Option<parking_lot::RwLock<Arc<rustls::ServerConfig>>>,
    /// The users of `kafka_sasl_users_file` (replaced on reload) and the mechanisms
    /// offered; `None` without SASL.
    pub(crate) kafka_sasl: Option<KafkaSasl>,
}

/// SASL on the Kafka listener.
pub(crate) struct KafkaSasl {
    pub(crate) users: parking_lot::RwLock<Arc<meridian_kafka::sasl::Users>>,
    pub(crate) mechanisms: Vec<meridian_kafka::sasl::Mechanism>,
}

/// Reads `kafka_sasl_users_file` (the broker at start and on SIGHUP, and
/// `meridian sasl`).
pub fn load_sasl_users(path: &Path) -> anyhow::Result<meridian_kafka::sasl::Users> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading kafka_sasl_users_file {}", path.display()))?;
    meridian_kafka::sasl::Users::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("kafka_sasl_users_file {}: {e}", path.display()))
}

/// A running broker.
pub struct Broker {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    /// Whose certificate [`Reloader`] replaces.
    peer_tls: tls::PeerTls,
    fingerprint: String,
    cert_path: std::path::PathBuf,
    generated_cert: bool,
    /// Bound in [`Broker::start`] when `metrics_listen` is set; served by
    /// [`Broker::serve`].
    metrics_listener: Option<std::net::TcpListener>,
    /// Bound in [`Broker::start`] when `kafka_listen` is set; served by
    /// [`Broker::serve`].
    kafka_listener: Option<std::net::TcpListener>,
    /// Held for the broker's lifetime: a second broker on the same data dir is refused.
    _dir_lock: std::fs::File,
}

impl Broker {
    /// Opens the data directory (recovering every partition), loads or creates the TLS
    /// identity and binds the QUIC endpoint. Serving starts with [`Broker::serve`].
    pub async fn start(config: BrokerConfig) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let lock_path = config.data_dir.join(".lock");
        let dir_lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        dir_lock.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "data dir {} is in use by another broker",
                config.data_dir.display()
            )
        })?;

        // Each partition keeps a few files open (segment, indexes): lift the soft
        // limit to the hard one so thousands of partitions fit.
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => tracing::debug!(limit, "open-file limit"),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
        }
        let started = std::time::Instant::now();
        let registry = Registry::open(
            &config.data_dir,
            config.topic_defaults.clone(),
            config.max_partitions_per_topic,
        )?;
        if config.cluster.is_none() {
            registry.give_missing_ids()?;
        }
        let plugins = plugins::Plugins::open(&config.data_dir, &config.plugins)?;
        let topics = registry.all();
        let n_partitions: usize = topics.iter().map(|t| t.partitions.len()).sum();
        tracing::info!(
            topics = topics.len(),
            partitions = n_partitions,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "opened data dir {}",
            config.data_dir.display()
        );

        let groups = groups::Groups::open(&config, &registry)?;
        let producer_ids = producer_ids::ProducerIds::open(&config.data_dir, config.broker_id)?;

        let acl = match &config.acl_file {
            Some(path) => {
                let acl = acl::Acl::load(path)?;
                tracing::info!(
                    rules = acl.rule_count(),
                    "authorization rules from {}",
                    path.display()
                );
                Some(parking_lot::RwLock::new(Arc::new(acl)))
            }
            None => None,
        };
        let kafka_sasl = match &config.kafka_sasl_users_file {
            Some(path) => {
                let users = load_sasl_users(path)?;
                let mechanisms = config.sasl_mechanisms()?;
                tracing::info!(
                    users = users.users.len(),
                    mechanisms = %mechanisms.iter().map(|m| m.name()).collect::<Vec<_>>().join(","),
                    "Kafka listener asks for SASL; users from {}",
                    path.display()
                );
                Some(KafkaSasl {
                    users: parking_lot::RwLock::new(Arc::new(users)),
                    mechanisms,
                })
            }
            None => None,
        };
        let cert_path = config.tls_cert_path();
        let identity = tls::load_or_generate(
            &cert_path,
            &config.tls_key_path(),
            &[config.advertised_host()],
        )?;
        let server_config = quic_server_config(&config, &identity)?;
        let kafka_tls =
            tcp_tls_config(config.kafka_tls, &config, &identity)?.map(parking_lot::RwLock::new);
        let metrics_tls =
            tcp_tls_config(config.metrics_tls, &config, &identity)?.map(parking_lot::RwLock::new);
        let peer_tls = tls::PeerTls::new(
            cluster::peer_trust(config.cluster.as_ref(), &identity.fingerprint)?,
            &identity,
        )?;
        let socket = bind_udp(config.listen, config.udp_buffer_bytes as usize)
            .with_context(|| format!("binding UDP {}", config.listen))?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let local_addr = endpoint.local_addr()?;
        let metrics_listener =
            bind_tcp(config.metrics_listen, "metrics listener", "metrics_listen")?;
        let kafka_listener = bind_tcp(config.kafka_listen, "Kafka listener", "kafka_listen")?;
        let replication = replica_manager::ReplicationState::open(
            &config.data_dir,
            peer_tls.clone(),
            config.replica_catch_up_bytes_per_sec,
        )?;
        let cluster = match &config.cluster {
            Some(cluster_config) => {
                Some(cluster::Cluster::start(&config, cluster_config, peer_tls.clone()).await?)
            }
            None => None,
        };
        let cluster_writer = cluster.as_ref().map(|_| {
            let ip = match local_addr.ip() {
                ip if ip.is_unspecified() && ip.is_ipv6() => std::net::Ipv6Addr::LOCALHOST.into(),
                ip if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
                ip => ip,
            };
            cluster_writer::ClusterWriter::new(
                config.broker_id,
                SocketAddr::new(ip, local_addr.port()).to_string(),
                config.advertised_host(),
                peer_tls.clone(),
                config.plugins.logs_queue_max,
            )
        });
        let quotas = quotas::Quotas::new(&config);
        let kafka_settings =
            parking_lot::RwLock::new(kafka_listener::broker_settings(&config).into());
        let shared = Arc::new(Shared {
            read_buffers: BufferPool::new(
                usize::try_from(config.read_buffer_cache_bytes).unwrap_or(usize::MAX),
            ),
            request_buffers: BufferPool::new(
                usize::try_from(config.request_buffer_cache_bytes).unwrap_or(usize::MAX),
            ),
            config,
            registry,
            groups,
            producer_ids,
            group_commit: GroupCommit::start(),
            local_addr,
            plugins,
            replication,
            cluster,
            cluster_writer,
            images_stopped: parking_lot::Mutex::new(false),
            metrics: Arc::default(),
            acl,
            quotas,
            kafka_settings,
            own_fingerprints: parking_lot::RwLock::new([identity.fingerprint.clone()].into()),
            kafka_tls,
            metrics_tls,
            kafka_sasl,
        });
        Ok(Broker {
            shared,
            endpoint,
            peer_tls,
            fingerprint: identity.fingerprint,
            cert_path,
            generated_cert: identity.generated,
            metrics_listener,
            kafka_listener,
            _dir_lock: dir_lock,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// A handle that re-reads the TLS files, `acl_file` and the client quotas while
    /// the broker serves (`meridian broker` does on SIGHUP).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: self.shared.clone(),
            endpoint: self.endpoint.clone(),
            peer_tls: self.peer_tls.clone(),
        }
    }

    /// Where Prometheus metrics are served (`GET /metrics`), when `metrics_listen`
    /// is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Where Kafka clients connect (TCP), when `kafka_listen` is set.
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The control plane's handle on this broker's partition replicas: `apply` leader
    /// and ISR changes, receive ISR proposals.
    pub fn replica_manager(&self) -> ReplicaManager {
        ReplicaManager::new(self.shared.clone())
    }

    /// `sha256:<hex>` of the broker's certificate, for clients to pin.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn cert_path(&self) -> &std::path::Path {
        &self.cert_path
    }

    /// The handle partition leaders use to send ISR changes to the controller;
    /// `None` for a single broker.
    pub fn controller_client(&self) -> Option<ControllerClient> {
        self.shared.cluster.as_ref().map(|c| c.controller.clone())
    }

    /// Whether the certificate was generated by this start.
    pub fn generated_cert(&self) -> bool {
        self.generated_cert
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests
    /// finish briefly, flushes every log and marks it cleanly closed.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut background = vec![
            tokio::spawn(flush_loop(self.shared.clone())),
            tokio::spawn(retention_loop(self.shared.clone())),
            tokio::spawn(groups::tick_loop(self.shared.clone())),
            tokio::spawn(replica_manager::tick_loop(self.shared.clone())),
        ];
        if let Some(listener) = self.metrics_listener {
            let listener = tokio::net::TcpListener::from_std(listener)
                .context("serving the metrics listener")?;
            background.push(tokio::spawn(metrics::serve(self.shared.clone(), listener)));
        }
        let mut kafka = None;
        if let Some(listener) = self.kafka_listener {
            let bound = listener.local_addr()?;
            let listener = tokio::net::TcpListener::from_std(listener)
                .context("serving the Kafka listener")?;
            let advertised = kafka_listener::advertised(&self.shared, bound);
            kafka = Some((advertised.host.clone(), advertised.port));
            let directory = kafka_listener::Directory::new(&self.shared, advertised);
            background.push(tokio::spawn(kafka_listener::serve(
                self.shared.clone(),
                listener,
                directory,
            )));
        }
        if let Some(cluster) = &self.shared.cluster {
            // Leaders' ISR proposals go to the controller; its answers come back as
            // metadata images, applied by `follow_images`.
            ReplicaManager::new(self.shared.clone()).set_alter_isr_sink(Arc::new(
                replicas::ControllerIsrSink::start(self.shared.clone(), cluster.controller.clone()),
            ));
            background.push(tokio::spawn(replicas::follow_images(
                self.shared.clone(),
                cluster.image.clone(),
            )));
            background.push(tokio::spawn(cluster.clone().heartbeat_loop(
                self.shared.config.advertised_host(),
                self.shared.local_addr.port(),
                self.shared.config.rack.clone(),
                kafka,
            )));
        }
        let cleaner = cleaner::Cleaner::start(self.shared.clone())
            .context("starting the log cleaner threads")?;
        let mut accept = tokio::spawn(accept_loop(self.shared.clone(), self.endpoint.clone()));
        tokio::select! {
            _ = &mut accept => {}
            _ = shutdown => tracing::info!("shutting down"),
        }
        if let Some(cluster) = &self.shared.cluster {
            // Leadership moves away while this broker still serves (followers catch
            // up, peers still reach it), then it stops.
            let timeout =
                Duration::from_millis((cluster.session_timeout_ms() * 2).clamp(1_000, 30_000));
            cluster.controlled_shutdown(timeout).await;
        }
        accept.abort();
        for task in background {
            task.abort();
        }
        self.shared.replication.stop();
        if let Some(cluster) = &self.shared.cluster {
            cluster.retire();
        }
        // Peers' requests (Raft's among them) stop before the Raft node does, so none
        // meets a stopped node.
        self.endpoint.close(
            quinn::VarInt::from_u32(close_codes::SHUTDOWN),
            b"broker shutting down",
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        if let Some(cluster) = &self.shared.cluster {
            cluster.shutdown().await;
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            // An image being applied (its task was aborted above, but the blocking
            // part runs on) finishes first, and no later one starts: the logs are
            // closed below.
            *shared.images_stopped.lock() = true;
            cleaner.stop();
            replica_manager::checkpoint_high_watermarks(&shared, Default::default());
            shared.registry.close()
        })
        .await?;
        tracing::info!("stopped cleanly");
        Ok(())
    }
}

/// Binds a UDP socket with kernel buffers of `buffer_bytes` (capped by the kernel's
/// `net.core.rmem_max`/`wmem_max`). The defaults (about 200 KiB) overflow under bursts,
/// and every dropped datagram costs QUIC a loss-recovery round: tail latency.
pub fn bind_udp(addr: SocketAddr, buffer_bytes: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a smaller buffer than asked is still a working socket.
    let _ = socket.set_recv_buffer_size(buffer_bytes);
    let _ = socket.set_send_buffer_size(buffer_bytes);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Bytes a client may send on one connection before the broker has taken them in;
/// also the most the broker sets aside for request bodies still arriving on it
/// ([`BodyBudget`]).
const CONNECTION_RECEIVE_WINDOW: u32 = 64 * 1024 * 1024;

/// QUIC transport settings shared by the broker and `bench transport`.
pub fn transport_config(config: &BrokerConfig) -> anyhow::Result<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(config.max_inflight_requests));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    // Windows sized for bulk produce on a fast link; memory per connection is bounded
    // by the connection window, not by what clients send.
    transport.stream_receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024));
    transport.receive_window(quinn::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    transport.send_window(64 * 1024 * 1024);
    transport.max_idle_timeout(Some(
        Duration::from_millis(config.idle_timeout_ms).try_into()?,
    ));
    Ok(transport)
}

async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);
    while let Some(incoming) = endpoint.accept().await {
        if endpoint.open_connections() >= shared.config.max_connections as usize {
            tracing::warn!(remote = %incoming.remote_address(), limit = shared.config.max_connections, "refusing connection: max_connections reached");
            shared.metrics.connection_refused(metrics::Protocol::Quic);
            incoming.refuse();
            continue;
        }
        let shared = shared.clone();
        let id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let span =
                tracing::info_span!("connection", id, %remote, client = tracing::field::Empty);
            async move {
                match incoming.await {
                    Ok(connection) => {
                        // Under `tls_client_ca`, who the client proved to be: every
                        // line logged for its requests says so.
                        let client =
                            client_certificate(&connection).map(|leaf| shared.principal_of(&leaf));
                        tracing::debug!("connected");
                        let _open = shared.metrics.connection_opened(metrics::Protocol::Quic);
                        serve_connection(shared, connection, (id, client)).await;
                    }
                    // A client without an acceptable certificate (`tls_client_ca`)
                    // is worth an operator's notice; other failed handshakes (a
                    // client that gave up, a port scan) are not.
                    Err(e) if is_certificate_alert(&e) => {
                        shared.metrics.client_certificate_refused();
                        tracing::info!(error = %e, "refused a client's certificate")
                    }
                    Err(e) => tracing::debug!(error = %e, "handshake failed"),
                }
            }
            .instrument(span)
            .await
        });
    }
}

/// The endpoint's QUIC and TLS configuration: the identity, `tls_client_ca` and the
/// transport settings.
fn quic_server_config(
    config: &BrokerConfig,
    identity: &tls::Identity,
) -> anyhow::Result<quinn::ServerConfig> {
    let mut server_config =
        quinn::ServerConfig::with_crypto(tls::server_crypto(identity, client_check(config))?);
    server_config.transport_config(Arc::new(transport_config(config)?));
    Ok(server_config)
}

/// The TLS of a TCP listener (Kafka's, the metrics one) when it is `on`.
fn tcp_tls_config(
    on: bool,
    config: &BrokerConfig,
    identity: &tls::Identity,
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    if !on {
        return Ok(None);
    }
    tls::tcp_server_config(identity, client_check(config)).map(Some)
}

/// `tls_client_ca` and `tls_client_crl`, when clients must present a certificate.
fn client_check(config: &BrokerConfig) -> Option<tls::ClientCheck<'_>> {
    config.tls_client_ca.as_deref().map(|ca| tls::ClientCheck {
        ca,
        crl: config.tls_client_crl.as_deref(),
    })
}

/// Takes new settings while the broker serves (`meridian broker` does on SIGHUP):
/// [`Reloader::reload_tls`] re-reads `tls_cert`, `tls_key` and `tls_client_ca`,
/// [`Reloader::reload_acl`] `acl_file`, [`Reloader::reload_sasl_users`]
/// `kafka_sasl_users_file`, [`Reloader::reload_quotas`] the client quotas of a
/// configuration read again.
///
/// TLS: certificates rotate and the client CA changes without a restart: new
/// connections (QUIC, and Kafka ones under `kafka_tls`) get the new certificate and are checked against the new CAs, and
/// connections to peers made from then on present the new certificate. Connections
/// already open carry on. A reload that fails (a missing or unparsable file, a key
/// that is not the certificate's) changes nothing.
///
/// How peers are trusted does not change: with the default `cluster.peer_trust`
/// (the certificate the cluster's brokers share, pinned at start), a new shared
/// certificate needs the brokers restarted; trust a CA instead to rotate by reload.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    peer_tls: tls::PeerTls,
}

impl Reloader {
    /// Reloads the TLS files; returns the new certificate's fingerprint.
    pub fn reload_tls(&self) -> anyhow::Result<String> {
        let config = &self.shared.config;
        let (cert, key) = (config.tls_cert_path(), config.tls_key_path());
        let identity = tls::load_or_generate(&cert, &key, &[config.advertised_host()])?;
        let server_config = quic_server_config(config, &identity)?;
        let kafka_tls = tcp_tls_config(config.kafka_tls, config, &identity)?;
        let metrics_tls = tcp_tls_config(config.metrics_tls, config, &identity)?;
        self.peer_tls.replace_identity(&identity)?;
        self.endpoint.set_server_config(Some(server_config));
        if let (Some(current), Some(new)) = (&self.shared.kafka_tls, kafka_tls) {
            *current.write() = new;
        }
        if let (Some(current), Some(new)) = (&self.shared.metrics_tls, metrics_tls) {
            *current.write() = new;
        }
        self.shared
            .own_fingerprints
            .write()
            .insert(identity.fingerprint.clone());
        Ok(identity.fingerprint)
    }

    /// Takes the client quotas (`producer_byte_rate`, `consumer_byte_rate`,
    /// `[client_quotas]`) of `config`, the broker's configuration read again; the
    /// rest of it is read at start only. Kafka's DescribeConfigs of this broker
    /// lists the new quotas from then on.
    pub fn reload_quotas(&self, config: &BrokerConfig) {
        self.shared.quotas.replace(config);
        let now = BrokerConfig {
            producer_byte_rate: config.producer_byte_rate,
            consumer_byte_rate: config.consumer_byte_rate,
            client_quotas: config.client_quotas.clone(),
            ..self.shared.config.clone()
        };
        *self.shared.kafka_settings.write() = kafka_listener::broker_settings(&now).into();
    }

    /// Re-reads `kafka_sasl_users_file`; returns how many users it holds, or `None`
    /// when the broker has none. A file that fails to parse changes nothing.
    /// Connections already logged in carry on until `kafka_sasl_session_lifetime_ms`
    /// ends their login (if set), when they log in again against the new users.
    pub fn reload_sasl_users(&self) -> anyhow::Result<Option<usize>> {
        let (Some(path), Some(current)) = (
            &self.shared.config.kafka_sasl_users_file,
            &self.shared.kafka_sasl,
        ) else {
            return Ok(None);
        };
        let users = load_sasl_users(path)?;
        let count = users.users.len();
        *current.users.write() = Arc::new(users);
        Ok(Some(count))
    }

    /// Re-reads `acl_file`; returns how many rules it holds, or `None` when the
    /// broker has no `acl_file`. A file that fails to parse changes nothing.
    pub fn reload_acl(&self) -> anyhow::Result<Option<usize>> {
        let (Some(path), Some(current)) = (&self.shared.config.acl_file, &self.shared.acl) else {
            return Ok(None);
        };
        let acl = acl::Acl::load(path)?;
        let rules = acl.rule_count();
        *current.write() = Arc::new(acl);
        Ok(Some(rules))
    }
}

/// Whether this broker ended a handshake with a TLS alert about the client's
/// certificate (missing, unknown CA, expired, ...).
fn is_certificate_alert(error: &quinn::ConnectionError) -> bool {
    let quinn::ConnectionError::TransportError(e) = error else {
        return false;
    };
    meridian_client::client_certificate_alert(u64::from(e.code)).is_some()
}

/// The certificate the client presented, if any.
fn client_certificate(
    connection: &quinn::Connection,
) -> Option<rustls::pki_types::CertificateDer<'static>> {
    let chain = connection
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    chain.first().cloned()
}

/// Serves connection `id`'s requests; `client` is the name its certificate gave.
async fn serve_connection(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    (id, client): (u64, Option<acl::Principal>),
) {
    let budget = BodyBudget::new(CONNECTION_RECEIVE_WINDOW, shared.request_buffers.clone());
    loop {
        let (send, recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                tracing::debug!(reason = %e, "connection closed");
                return;
            }
        };
        let shared = shared.clone();
        let peer = connection.remote_address();
        tokio::spawn(
            serve_stream(
                shared,
                send,
                recv,
                (id, peer, client.clone()),
                budget.clone(),
            )
            .in_current_span(),
        );
    }
}

/// Reads one request frame, answers it, finishes the stream. Errors caused by the
/// peer end this stream only.
async fn serve_stream(
    shared: Arc<Shared>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    (connection, peer, client): (u64, SocketAddr, Option<acl::Principal>),
    budget: BodyBudget,
) {
    let limit = shared.config.max_frame_bytes;
    let frame = match read_frame(&mut recv, limit, &budget).await {
        Ok(frame) => frame,
        Err(StreamError::Gone) => return,
        Err(StreamError::Frame(e)) => {
            tracing::debug!(error = %e, "bad request frame");
            shared.metrics.frame_error();
            if matches!(e, FrameError::TooLarge { .. }) {
                // Do not read the rest: tell the peer to stop sending.
                let _ = recv.stop(quinn::VarInt::from_u32(close_codes::FRAME_TOO_LARGE));
            }
            let _ = send
                .write_all(&encode_error_response(e.code(), &e.to_string()))
                .await;
            let _ = send.finish();
            return;
        }
    };
    let frame_bytes = frame.len() + 4;
    let mut reply = match decode_request_traced(frame) {
        Ok((request, _, _)) if shared.not_ready_for(&request) => {
            let code = ErrorCode::MetadataNotReady;
            vec![encode_error_response(code, code.description())]
        }
        Ok((request, version, trace)) => {
            let api = request.api_key();
            // A root of its own (exported traces get one per request, not one per
            // connection), so it names its connection (and its client's
            // certificate) itself; `otel.*` name and kind it for OpenTelemetry.
            let span = tracing::debug_span!(
                parent: None,
                "request",
                ?api,
                version,
                connection,
                %peer,
                client = tracing::field::Empty,
                "otel.name" = ?api,
                "otel.kind" = "server",
            );
            if let Some(client) = &client {
                span.record("client", &*client.name);
            }
            if let Some(trace) = trace {
                join_client_trace(&span, &trace);
            }
            let caller = Caller {
                client: client.as_ref(),
                peer,
                frame_bytes,
                // The SDK's idempotent producer has one request in flight per
                // partition: its requests need no order between them here.
                appends_done: None,
            };
            shared
                .serve_request(request, caller, span, |answer| {
                    let reply = match answer {
                        Err(refused) => {
                            let (denied, _) = &*refused;
                            vec![encode_error_response(denied.code, &denied.message)]
                        }
                        // Chunks: fetched batches go out from the buffers they were
                        // read into, not copied into the frame. The answer has the
                        // request's version.
                        Ok(Some(response)) => encode_response_chunks_at(&response, version),
                        Ok(None) => Vec::new(),
                    };
                    let bytes = reply.iter().map(Bytes::len).sum();
                    (reply, bytes)
                })
                .await
        }
        Err(e) => {
            tracing::debug!(error = %e, "malformed request");
            shared.metrics.frame_error();
            vec![encode_error_response(e.code(), &e.to_string())]
        }
    };
    if !reply.is_empty() {
        if let Err(e) = send.write_all_chunks(&mut reply).await {
            tracing::debug!(error = %e, "client went away before the response was sent");
            return;
        }
    }
    let _ = send.finish();
}

/// Binds a TCP listener (`what`, configured by `key`) when its address is set,
/// non-blocking for tokio's `TcpListener::from_std` in [`Broker::serve`].
fn bind_tcp(
    addr: Option<SocketAddr>,
    what: &str,
    key: &str,
) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the {what} {addr} ({key})"))?;
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}

/// Who sent a request, for [`Shared::serve_request`].
pub(crate) struct Caller<'a> {
    /// The client's certificate, when it presented one.
    pub(crate) client: Option<&'a acl::Principal>,
    pub(crate) peer: SocketAddr,
    /// Size of the request as received, counted against the client's produce quota.
    pub(crate) frame_bytes: usize,
    /// A produce request of a Kafka connection: told once the request's appends are
    /// done, so the connection's next produce request may append (see
    /// `kafka_listener`, "Order").
    pub(crate) appends_done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Shared {
    /// The client a certificate accepted under `tls_client_ca` names, noted in the
    /// current span (its connection's): every line logged for its requests says so.
    pub(crate) fn principal_of(
        &self,
        leaf: &rustls::pki_types::CertificateDer<'_>,
    ) -> acl::Principal {
        let (name, fingerprint) = tls::client_name(leaf);
        tracing::Span::current().record("client", name.as_str());
        tracing::debug!(%fingerprint, "client certificate accepted");
        acl::Principal {
            name: Arc::<str>::from(name),
            broker: self.own_fingerprints.read().contains(&fingerprint),
        }
    }

    /// Serves one decoded request as every listener does: authorizes it, hands it to
    /// [`Shared::handle`] inside `span`, lets `encode` make the reply (and say its
    /// size), counts it, and holds the reply while the client is over its quota.
    pub(crate) async fn serve_request<R>(
        self: &Arc<Self>,
        request: Request,
        caller: Caller<'_>,
        span: tracing::Span,
        encode: impl FnOnce(Result<Option<Response>, Box<(acl::Denied, Request)>>) -> (R, usize),
    ) -> R {
        let api = request.api_key();
        let started = std::time::Instant::now();
        let client = caller.client;
        let flow = self.quota_flow(client, &request);
        let answer = match self.authorize(client, request, &span) {
            Err(refused) => Err(refused),
            Ok((request, after)) => Ok(self
                .handle(request, caller.peer, caller.appends_done)
                .instrument(span)
                .await
                .map(|response| after.finish(response))),
        };
        let (reply, reply_bytes) = encode(answer);
        self.metrics
            .request(api, caller.frame_bytes, reply_bytes, started.elapsed());
        if let Some(flow) = flow {
            let bytes = match flow {
                quotas::Flow::Produce => caller.frame_bytes,
                quotas::Flow::Fetch => reply_bytes,
            };
            self.throttle(flow, client, caller.peer, bytes).await;
        }
        reply
    }

    /// The quota `request` counts against, if any: produce requests and consumers'
    /// fetches of clients other than the cluster's brokers, when some client has a
    /// quota for them.
    fn quota_flow(
        &self,
        client: Option<&acl::Principal>,
        request: &Request,
    ) -> Option<quotas::Flow> {
        let flow = match request {
            Request::Produce(_) => quotas::Flow::Produce,
            Request::Fetch(f) if f.replica_id == CONSUMER_REPLICA_ID => quotas::Flow::Fetch,
            _ => return None,
        };
        let broker = client.is_some_and(|c| c.broker);
        (!broker && self.quotas.active(flow)).then_some(flow)
    }

    /// Charges `bytes` to the client (its certificate's name, else its IP address)
    /// and holds the answer while it is over its quota.
    async fn throttle(
        &self,
        flow: quotas::Flow,
        client: Option<&acl::Principal>,
        peer: SocketAddr,
        bytes: usize,
    ) {
        let key = match client {
            Some(client) => client.name.to_string(),
            None => peer.ip().to_string(),
        };
        let delay = self
            .quotas
            .charge(flow, &key, bytes as u64, std::time::Instant::now());
        if !delay.is_zero() {
            self.metrics.throttled(flow, delay);
            tracing::debug!(client = %key, flow = flow.name(), delay_ms = delay.as_millis() as u64, "over its quota: answer held");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Makes `span` (not entered yet) a child of the client's span that sent the
/// request, when traces are exported (else there is nothing to join, and nothing
/// is done). An invalid context (all-zero ids) leaves the span a root.
fn join_client_trace(span: &tracing::Span, trace: &TraceContext) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if span.is_disabled() || !trace.is_valid() {
        return;
    }
    let parent = SpanContext::new(
        TraceId::from_bytes(trace.trace_id),
        SpanId::from_bytes(trace.span_id),
        TraceFlags::new(trace.flags),
        true,
        TraceState::default(),
    );
    // Fails only without an OpenTelemetry layer: the span is then not exported.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
}

enum StreamError {
    /// The peer reset the stream or the connection dropped: nobody to answer.
    Gone,
    Frame(FrameError),
}

async fn read_frame(
    recv: &mut quinn::RecvStream,
    limit: u32,
    budget: &BodyBudget,
) -> Result<Bytes, StreamError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(got) => {
            StreamError::Frame(FrameError::Truncated { expected: 4, got })
        }
        quinn::ReadExactError::ReadError(_) => StreamError::Gone,
    })?;
    let length = check_frame_length(prefix, limit).map_err(StreamError::Frame)?;
    // Nothing is allocated before the bytes arrive: a peer announcing large frames
    // without sending them costs nothing.
    read_body(recv, length, budget).await.map_err(|e| match e {
        BodyError::FinishedEarly(got) => StreamError::Frame(FrameError::Truncated {
            expected: length + 4,
            got: got + 4,
        }),
        BodyError::Read(_) => StreamError::Gone,
    })
}

/// With `flush = "interval"`, fsyncs partitions written since the last round.
async fn flush_loop(shared: Arc<Shared>) {
    if shared.config.flush == FlushPolicy::Always {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(shared.config.flush_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut waiters = Vec::new();
        for topic in shared.registry.all() {
            for partition in &topic.partitions {
                if !partition.take_dirty() {
                    continue;
                }
                let Ok(log) = partition.log() else { continue };
                let handle = log.sync_handle();
                drop(log);
                let (tx, rx) = tokio::sync::oneshot::channel();
                shared
                    .group_commit
                    .sync(handle, Box::new(move |r| drop(tx.send(r))));
                waiters.push((topic.name.clone(), partition.index, rx));
            }
        }
        for (topic, partition, rx) in waiters {
            if let Ok(Err(e)) = rx.await {
                tracing::error!(topic, partition, error = %e, "periodic flush failed");
            }
        }
    }
}

/// Deletes old segments by `retention.ms` / `retention.bytes`.
async fn retention_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(
        shared.config.retention_check_interval_ms,
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let shared = shared.clone();
        let pass = tokio::task::spawn_blocking(move || {
            let now = handlers::now_ms();
            for topic in shared.registry.all() {
                for partition in &topic.partitions {
                    let Ok(mut log) = partition.log() else {
                        continue;
                    };
                    let expiration_ms =
                        shared.config.producer_id_expiration_ms.min(i64::MAX as u64) as i64;
                    let expired = log.expire_producers(now, expiration_ms);
                    if expired > 0 {
                        tracing::debug!(topic = %topic.name, partition = partition.index, expired, "forgot idle idempotent producers");
                    }
                    match log.apply_retention(now) {
                        Ok(outcome) if outcome.deleted_segments > 0 => tracing::info!(
                            topic = %topic.name,
                            partition = partition.index,
                            segments = outcome.deleted_segments,
                            bytes = outcome.deleted_bytes,
                            log_start_offset = outcome.log_start_offset,
                            "retention deleted segments"
                        ),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(topic = %topic.name, partition = partition.index, error = %e, "retention failed")
                        }
                    }
                }
            }
        });
        if let Err(e) = pass.await {
            tracing::error!(error = %e, "retention pass panicked");
        }
    }
}
