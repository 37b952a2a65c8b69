//! The Kafka listener (`kafka_listen`): Kafka clients over TCP. Each request frame is
//! translated by `meridian-kafka` into a Meridian request, served like one from the
//! QUIC endpoint ([`Shared::serve_request`]: the same handlers, metrics and quotas),
//! and its answer translated back.
//!
//! A connection pipelines: requests are read and served while earlier ones are
//! still in flight (up to `max_inflight_requests`), and responses go out in request
//! order, as Kafka clients expect.
//!
//! Order: a Kafka broker serves a connection's requests one at a time, and an
//! idempotent producer (up to five requests in flight per connection) counts on
//! its batches being appended in the order it sent them; pipelined here, a later
//! request could reach the log first and be refused as out of sequence, which
//! librdkafka takes as the broker losing its state (a fatal error). So a produce
//! request appends only once the connection's previous produce request has
//! appended (or failed before it could): appends go in request order, while the
//! waits after them (acks=all, fsync) still overlap.
//!
//! Start: in a cluster, connections are taken only once the broker has caught up
//! with the metadata log (see [`serve`]), as a Kafka broker opens its listeners
//! only then.
//!
//! A frame over `max_frame_bytes`, an API or version not served, or a malformed
//! request closes the connection, as a Kafka broker does; nothing else is affected.
//!
//! Under `kafka_sasl_users_file` a connection serves only ApiVersions and the SASL
//! requests until its client authenticates (`meridian_kafka::sasl`); any other
//! request, or a failed authentication (after its answer), closes it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use meridian_kafka::sasl::{self, Authenticator, Outcome};
use meridian_kafka::{
    config_type, topic_default_key, BrokerSetting, KafkaBroker, Listener, Pending, SaslRequest,
    Step,
};
use meridian_metadata::MetadataImage;
use meridian_wire::messages::{Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::acl::Principal;
use crate::config::BrokerConfig;
use crate::metrics::Protocol;
use crate::{Caller, KafkaSasl, Shared};

/// What Kafka clients are told to connect to for this broker: `advertised_host`
/// (else the address the listener is bound to) and the listener's port.
pub(crate) fn advertised(shared: &Shared, bound: SocketAddr) -> KafkaBroker {
    let config = &shared.config;
    KafkaBroker {
        id: config.broker_id,
        host: config
            .advertised_host
            .clone()
            .unwrap_or_else(|| bound.ip().to_string()),
        port: bound.port(),
        rack: config.rack.clone(),
    }
}

/// Where Kafka clients reach the brokers: this one, and in a cluster every other
/// broker that registered a Kafka listener (from the metadata image, rebuilt when
/// the image changes and a response names brokers).
pub(crate) struct Directory {
    /// This broker alone, with its settings as at start (a response that lists them
    /// reads them afresh: a reload may have changed them).
    own: Arc<Listener>,
    /// In a cluster: the image the listener was last built from, and that listener.
    cached: parking_lot::Mutex<Option<(Arc<MetadataImage>, Arc<Listener>)>>,
}

impl Directory {
    pub(crate) fn new(shared: &Shared, own: KafkaBroker) -> Directory {
        Directory {
            own: Arc::new(Listener {
                broker_id: own.id,
                cluster_id: shared.config.cluster_id.clone(),
                brokers: vec![own],
                settings: shared.kafka_settings.read().clone(),
            }),
            cached: parking_lot::Mutex::new(None),
        }
    }

    /// The listener a response to `pending` needs.
    fn for_response(&self, shared: &Shared, pending: &Pending) -> Arc<Listener> {
        if pending.reads_settings() {
            return Arc::new(Listener {
                settings: shared.kafka_settings.read().clone(),
                ..(*self.own).clone()
            });
        }
        let Some(cluster) = shared.cluster.as_ref().filter(|_| pending.names_brokers()) else {
            return self.own.clone();
        };
        let image = cluster.image();
        let mut cached = self.cached.lock();
        if let Some((built_from, listener)) = cached.as_ref() {
            if Arc::ptr_eq(built_from, &image) {
                return listener.clone();
            }
        }
        let mut brokers = self.own.brokers.clone();
        brokers.extend(
            image
                .brokers
                .values()
                .filter(|b| b.id != self.own.broker_id)
                .filter_map(|b| {
                    b.kafka.as_ref().map(|kafka| KafkaBroker {
                        id: b.id,
                        host: kafka.host.clone(),
                        port: kafka.port,
                        rack: b.rack.clone(),
                    })
                }),
        );
        let listener = Arc::new(Listener {
            brokers,
            ..(*self.own).clone()
        });
        *cached = Some((image, listener.clone()));
        listener
    }
}

/// Kafka's names for the broker settings Meridian has under its own (Kafka's name,
/// Meridian's key as [`flatten`] spells it), besides the topic defaults, whose
/// Kafka names are those of [`meridian_kafka::TOPIC_SETTINGS`].
const KAFKA_NAMES: [(&str, &str); 23] = [
    ("broker.id", "broker_id"),
    ("broker.rack", "rack"),
    ("log.dirs", "data_dir"),
    ("num.partitions", "default_partitions"),
    ("auto.create.topics.enable", "auto_create_topics"),
    ("log.cleaner.threads", "log_cleaner_threads"),
    (
        "log.cleaner.dedupe.buffer.size",
        "log_cleaner_dedupe_buffer_size",
    ),
    ("log.cleaner.backoff.ms", "log_cleaner_backoff_ms"),
    ("log.flush.interval.ms", "flush_interval_ms"),
    (
        "log.retention.check.interval.ms",
        "retention_check_interval_ms",
    ),
    ("connections.max.idle.ms", "idle_timeout_ms"),
    ("socket.request.max.bytes", "max_frame_bytes"),
    ("max.connections", "max_connections"),
    (
        "group.min.session.timeout.ms",
        "group_min_session_timeout_ms",
    ),
    (
        "group.max.session.timeout.ms",
        "group_max_session_timeout_ms",
    ),
    ("group.max.size", "group_max_size"),
    ("offset.metadata.max.bytes", "offset_metadata_max_bytes"),
    (
        "offsets.topic.num.partitions",
        "offsets_topic_num_partitions",
    ),
    ("producer.id.expiration.ms", "producer_id_expiration_ms"),
    ("replica.lag.time.max.ms", "replica_lag_time_max_ms"),
    ("replica.fetch.wait.max.ms", "replica_fetch_wait_max_ms"),
    ("replica.fetch.max.bytes", "replica_fetch_max_bytes"),
    ("replica.fetch.backoff.ms", "replica_fetch_backoff_ms"),
];

/// The broker's settings as Kafka's DescribeConfigs of its broker resource lists
/// them: every key of its configuration as Meridian names it (nested ones dotted,
/// `topic_defaults.retention_ms`; lists comma-separated; unset ones left out), and
/// the same values under Kafka's names where Kafka has one (`log.retention.ms`),
/// sorted by name. A value equal to the built-in default is a default.
pub(crate) fn broker_settings(config: &BrokerConfig) -> Vec<BrokerSetting> {
    let flat = |config: &BrokerConfig| {
        let mut out = BTreeMap::new();
        // A struct of plain fields always serializes.
        if let Ok(value) = serde_json::to_value(config) {
            flatten(String::new(), value, &mut out);
        }
        out
    };
    let (ours, defaults) = (flat(config), flat(&BrokerConfig::default()));
    let mut settings: BTreeMap<String, (String, bool, i8)> = ours
        .iter()
        .map(|(key, (value, kind))| {
            let is_default = defaults.get(key).is_some_and(|(d, _)| d == value);
            (key.clone(), (value.clone(), is_default, *kind))
        })
        .collect();
    let topic_defaults = meridian_kafka::TOPIC_SETTINGS
        .iter()
        .map(|info| (info.broker, topic_default_key(info.key)));
    let kafka_names = KAFKA_NAMES
        .iter()
        .map(|&(kafka, key)| (kafka, key.to_owned()))
        .chain(topic_defaults);
    for (kafka, key) in kafka_names {
        if let Some(setting) = settings.get(&key).cloned() {
            settings.insert(kafka.to_owned(), setting);
        }
    }
    let replication = config.cluster.as_ref();
    settings.insert(
        "default.replication.factor".into(),
        (
            replication
                .map_or(1, |c| c.default_replication_factor())
                .to_string(),
            replication.is_none_or(|c| c.default_replication_factor.is_none()),
            config_type::SHORT,
        ),
    );
    settings
        .into_iter()
        .map(|(name, (value, is_default, config_type))| BrokerSetting {
            name,
            value,
            is_default,
            config_type,
        })
        .collect()
}

/// `value` as dotted keys under `prefix`, each with Kafka's config type of its
/// JSON value (a whole number `LONG`, a list `LIST`).
fn flatten(prefix: String, value: serde_json::Value, out: &mut BTreeMap<String, (String, i8)>) {
    use serde_json::Value;
    let kind = match &value {
        Value::Bool(_) => config_type::BOOLEAN,
        Value::Number(n) if n.is_f64() => config_type::DOUBLE,
        Value::Number(_) => config_type::LONG,
        Value::Array(_) => config_type::LIST,
        _ => config_type::STRING,
    };
    let text = match value {
        Value::Null => return,
        Value::Object(fields) => {
            for (key, value) in fields {
                let key = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(key, value, out);
            }
            return;
        }
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::String(s) => s,
        other => other.to_string(),
    };
    out.insert(prefix, (text, kind));
}

/// Accepts Kafka connections until the task is aborted; at most `max_connections`
/// at once (beyond, a new connection is closed at once).
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, directory: Directory) {
    if let Some(why) = meridian_kafka::alloc::lazy_blocks_refused() {
        tracing::warn!(
            "a Kafka request whose array claims billions of elements can abort this \
             broker: {why} (see meridian_kafka::alloc)"
        );
    }
    if let Some(cluster) = &shared.cluster {
        // As a Kafka broker: clients are served once this broker knows the cluster.
        // A Metadata answer from the empty image a start begins with would name
        // this broker alone, and a client told so forgets every other broker, its
        // group's coordinator among them (librdkafka then never finds one again).
        // Until then connections wait in the listen backlog, and clients time out
        // to other brokers if it takes long (the quorum out of reach).
        if !cluster.caught_up() {
            tracing::info!("Kafka listener: serving once the metadata log is caught up");
            cluster.until_caught_up().await;
        }
    }
    let directory = Arc::new(directory);
    let limit = shared.config.max_connections as usize;
    let slots = Arc::new(Semaphore::new(limit));
    let mut id = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(error = %e, "accepting a Kafka connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit, "Kafka connection closed: max_connections reached");
            shared.metrics.connection_refused(Protocol::Kafka);
            continue;
        };
        let _ = stream.set_nodelay(true);
        id += 1;
        let span = tracing::debug_span!(
            "kafka_connection",
            id,
            %peer,
            client = tracing::field::Empty
        );
        let (shared, directory) = (shared.clone(), directory.clone());
        tokio::spawn(
            async move {
                let Some(tls) = shared.kafka_tls.as_ref().map(|c| c.read().clone()) else {
                    let (reader, writer) = stream.into_split();
                    return connection(shared, directory, (reader, writer), peer, None, slot).await;
                };
                let Some((stream, client)) = handshake(&shared, tls, stream).await else {
                    return;
                };
                let (reader, writer) = tokio::io::split(stream);
                connection(shared, directory, (reader, writer), peer, client, slot).await
            }
            .instrument(span),
        );
    }
}

/// The TLS handshake of a Kafka connection under `kafka_tls`, within
/// `idle_timeout_ms`; the stream and, under `tls_client_ca`, the client its
/// certificate names. `None` (logged, and counted when the client's certificate was
/// refused) when it fails.
async fn handshake(
    shared: &Shared,
    tls: Arc<rustls::ServerConfig>,
    stream: TcpStream,
) -> Option<(
    tokio_rustls::server::TlsStream<TcpStream>,
    Option<Principal>,
)> {
    let idle = Duration::from_millis(shared.config.idle_timeout_ms);
    let accepted = tokio::time::timeout(idle, tokio_rustls::TlsAcceptor::from(tls).accept(stream));
    let stream = match accepted.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            if crate::tls::is_certificate_refusal(&e) {
                shared.metrics.client_certificate_refused();
                tracing::info!(error = %e, "refused a Kafka client's certificate");
            } else {
                tracing::debug!(error = %e, "Kafka TLS handshake failed");
            }
            return None;
        }
        Err(_) => {
            tracing::debug!("Kafka TLS handshake did not finish within idle_timeout_ms");
            return None;
        }
    };
    let client = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| shared.principal_of(leaf));
    Some((stream, client))
}

/// A response owed, in request order.
type Owed = JoinHandle<Result<Option<Bytes>, String>>;

/// Serves one Kafka connection, plain or TLS, read through `reader` and answered
/// through `writer`; `client` is who its certificate names, if it presented one.
async fn connection(
    shared: Arc<Shared>,
    directory: Arc<Directory>,
    (mut reader, mut writer): (
        impl AsyncRead + Unpin + Send + 'static,
        impl AsyncWrite + Unpin + Send + 'static,
    ),
    peer: SocketAddr,
    client: Option<Principal>,
    _slot: OwnedSemaphorePermit,
) {
    tracing::debug!("Kafka client connected");
    let _open = shared.metrics.connection_opened(Protocol::Kafka);
    let (owed, mut due) = mpsc::channel::<Owed>(shared.config.max_inflight_requests as usize);
    let write = async move {
        while let Some(response) = due.recv().await {
            let frame = match response.await {
                Ok(Ok(Some(frame))) => frame,
                // acks=0: nothing to send.
                Ok(Ok(None)) => continue,
                Ok(Err(reason)) => {
                    tracing::warn!(%reason, "closing the Kafka connection");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "a Kafka request's task failed; closing the connection");
                    return;
                }
            };
            if let Err(e) = send(&mut writer, &frame).await {
                tracing::debug!(error = %e, "Kafka client went away");
                return;
            }
        }
    };
    let read = async move {
        let limit = shared.config.max_frame_bytes;
        let idle = Duration::from_millis(shared.config.idle_timeout_ms);
        let mut client = client;
        let mut sasl = SaslSession::new(&shared);
        let mut session =
            meridian_kafka::Session::new(shared.config.kafka_cooperative_members_max as usize);
        // Told when the connection's last produce request has appended ("Order").
        let mut last_produce: Option<oneshot::Receiver<()>> = None;
        loop {
            let frame = match read_frame(&mut reader, limit, idle).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(fault) => {
                    if !matches!(fault, Fault::Idle) {
                        shared.metrics.frame_error();
                    }
                    tracing::debug!(%fault, "closing the Kafka connection");
                    break;
                }
            };
            let frame_bytes = frame.len() + 4;
            let ready = |frame: Bytes| -> Owed { tokio::spawn(async move { Ok(Some(frame)) }) };
            let step = meridian_kafka::decode_in(frame, &mut session);
            if matches!(step, Ok(Step::Serve(..) | Step::Refused { .. })) {
                if let Some(why) = sasl.as_ref().and_then(|s| s.refuses(Instant::now())) {
                    tracing::info!(%peer, "{why}; closing the connection");
                    break;
                }
            }
            let response: Owed = match step {
                Ok(Step::Reply(frame)) => ready(frame),
                Ok(Step::Refused { reply, reason }) => {
                    tracing::info!(%peer, %reason, "Kafka request refused");
                    ready(reply)
                }
                Ok(Step::Sasl(request)) => {
                    let lifetime = sasl.as_mut().map_or(0, |s| s.prepare(&shared, &request));
                    let exchange = sasl.as_mut().and_then(|s| s.exchange.as_mut());
                    match request.answer(exchange, lifetime) {
                        Ok((frame, Outcome::Continue)) => ready(frame),
                        Ok((frame, Outcome::Authenticated(user))) => {
                            let session = sasl.as_mut().expect("a login comes from an exchange");
                            session.logged_in(&user);
                            tracing::Span::current().record("client", user.as_str());
                            tracing::debug!(%peer, "Kafka client authenticated with SASL");
                            shared.metrics.sasl_authentication(true);
                            client = Some(Principal {
                                name: Arc::from(user),
                                broker: false,
                            });
                            ready(frame)
                        }
                        Ok((frame, Outcome::Failed(reason))) => {
                            tracing::info!(%peer, %reason, "Kafka client refused by SASL; closing the connection");
                            shared.metrics.sasl_authentication(false);
                            let delay = shared.config.kafka_sasl_failure_delay_ms;
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                            // The answer says it failed; then the connection closes.
                            let _ = owed.send(ready(frame)).await;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "answering a SASL request; closing the connection");
                            break;
                        }
                    }
                }
                Ok(Step::Serve(request, pending)) => {
                    let turn = matches!(*request, Request::Produce(_)).then(|| {
                        let (appends_done, next) = oneshot::channel();
                        (last_produce.replace(next), appends_done)
                    });
                    tokio::spawn(serve_one(
                        shared.clone(),
                        directory.clone(),
                        (*request, pending),
                        (peer, client.clone()),
                        (frame_bytes, turn),
                    ))
                }
                Err(e) => {
                    shared.metrics.frame_error();
                    tracing::info!(%peer, error = %e, "Kafka request refused; closing the connection");
                    break;
                }
            };
            if owed.send(response).await.is_err() {
                break;
            }
        }
        // Dropping `owed` lets the writer finish the responses still owed, then stop.
    };
    tokio::join!(read, write);
    tracing::debug!("Kafka client disconnected");
}

/// A connection's SASL state under `kafka_sasl_users_file`.
struct SaslSession {
    /// The exchange under way: the first login, or a re-authentication.
    exchange: Option<Authenticator>,
    /// The user logged in, and until when (`kafka_sasl_session_lifetime_ms`).
    user: Option<(String, Option<Instant>)>,
    /// `kafka_sasl_session_lifetime_ms`.
    lifetime: Duration,
}

impl SaslSession {
    /// A new connection's, under `kafka_sasl_users_file`: a login under way.
    fn new(shared: &Shared) -> Option<SaslSession> {
        let sasl = shared.kafka_sasl.as_ref()?;
        Some(SaslSession {
            exchange: Some(Self::exchange(sasl)),
            user: None,
            lifetime: Duration::from_millis(shared.config.kafka_sasl_session_lifetime_ms),
        })
    }

    fn exchange(sasl: &KafkaSasl) -> Authenticator {
        let users = sasl.users.read().clone();
        Authenticator::new(users, sasl.mechanisms.clone(), &sasl::random_bytes::<18>())
    }

    /// Why a request other than SASL's may not be served at `now`: no login yet,
    /// or the login's lifetime is over.
    fn refuses(&self, now: Instant) -> Option<&'static str> {
        match &self.user {
            None => Some("Kafka request before SASL authentication"),
            Some((_, Some(until))) if now >= *until => {
                Some("Kafka request after its SASL login expired (kafka_sasl_session_lifetime_ms)")
            }
            Some(_) => None,
        }
    }

    /// Before `request` is answered: a handshake on a connection logged in with a
    /// lifetime starts a re-authentication (KIP-368), checked against the users
    /// as they are now. Returns the lifetime a login gets, in milliseconds.
    fn prepare(&mut self, shared: &Shared, request: &SaslRequest) -> i64 {
        if self.exchange.is_none() && !self.lifetime.is_zero() && request.is_handshake() {
            if let (Some(sasl), Some((user, _))) = (&shared.kafka_sasl, &self.user) {
                self.exchange = Some(Self::exchange(sasl).reauthenticating(user));
            }
        }
        // The configuration holds it to i64::MAX milliseconds.
        i64::try_from(self.lifetime.as_millis()).unwrap_or(i64::MAX)
    }

    /// `user` logged in: the first login, or a re-authentication (which the
    /// authenticator held to the same user).
    fn logged_in(&mut self, user: &str) {
        self.exchange = None;
        let until = (!self.lifetime.is_zero()).then(|| Instant::now() + self.lifetime);
        self.user = Some((user.to_string(), until));
    }
}

/// A produce request's place in its connection's order ("Order" above): told when
/// the previous produce request has appended (none for the first), and what to tell
/// the next one.
type ProduceTurn = (Option<oneshot::Receiver<()>>, oneshot::Sender<()>);

async fn serve_one(
    shared: Arc<Shared>,
    directory: Arc<Directory>,
    (request, pending): (Request, Pending),
    (peer, client): (SocketAddr, Option<Principal>),
    (frame_bytes, turn): (usize, Option<ProduceTurn>),
) -> Result<Option<Bytes>, String> {
    let appends_done = match turn {
        Some((previous, appends_done)) => {
            if let Some(previous) = previous {
                // Sent or dropped: either way the previous request is past its appends.
                let _ = previous.await;
            }
            Some(appends_done)
        }
        None => None,
    };
    let api = pending.api();
    let listener = directory.for_response(&shared, &pending);
    let span = tracing::debug_span!(
        parent: None,
        "request",
        api = ?request.api_key(),
        kafka_api = ?api,
        version = pending.version(),
        %peer,
        client_id = pending.client_id().unwrap_or(""),
        "otel.name" = ?api,
        "otel.kind" = "server",
    );
    let caller = Caller {
        // Without a certificate (plain TCP, or TLS without `tls_client_ca`) quotas
        // count a Kafka client by its IP address.
        client: client.as_ref(),
        peer,
        frame_bytes,
        appends_done,
    };
    if let Request::SyncGroup(sync) = &request {
        let sync = sync.clone();
        let answer = shared
            .serve_request(request, caller, span, |answer| (answer, 0))
            .await;
        let answer = match answer {
            Ok(Some(Response::SyncGroup(given))) if given.error.is_ok() => {
                let given = shared.hold_kafka_sync(&sync, given).await;
                if given.error.is_ok() {
                    Some(Response::SyncGroup(
                        shared.confirm_kafka_sync(&sync, given).await,
                    ))
                } else {
                    Some(Response::SyncGroup(given))
                }
            }
            Ok(other) => other,
            Err(refusal) => return refused(*refusal, pending, &listener),
        };
        return pending
            .respond(answer, &listener)
            .map_err(|e| e.to_string());
    }
    // Where partitions are led now, for a Produce or Fetch answer's refusals as
    // not the leader (KIP-951): read when the answer is made, not when the request
    // came.
    let leader_of = |topic: &str, partition: u32| {
        let image = shared.cluster.as_ref()?.image();
        let p = image
            .topics
            .get(topic)?
            .partitions
            .get(partition as usize)?;
        Some((p.leader?, p.leader_epoch))
    };
    shared
        .serve_request(request, caller, span, |answer| {
            let reply = match answer {
                Ok(answer) => pending
                    .respond_with_leaders(answer, &listener, &leader_of)
                    .map_err(|e| e.to_string()),
                Err(refusal) => refused(*refusal, pending, &listener),
            };
            let bytes = reply
                .as_ref()
                .map_or(0, |f| f.as_ref().map_or(0, Bytes::len));
            (reply, bytes)
        })
        .await
}

/// The answer to a request `acl_file` refused whole: its own response carrying the
/// authorization error, as from a Kafka broker (`meridian_kafka::refusal`), or the
/// connection closed with the reason for a request `refusal` has no answer for.
fn refused(
    (denied, request): (crate::acl::Denied, Request),
    pending: Pending,
    listener: &Listener,
) -> Result<Option<Bytes>, String> {
    match meridian_kafka::refusal(&request, denied.code, &denied.message) {
        Some(answer) => pending
            .respond(Some(answer), listener)
            .map_err(|e| e.to_string()),
        None => Err(denied.message),
    }
}

#[derive(Debug, thiserror::Error)]
enum Fault {
    #[error("request frame of {size} bytes is over max_frame_bytes ({limit})")]
    TooLarge { size: i64, limit: u32 },
    #[error("idle for idle_timeout_ms")]
    Idle,
    #[error("reading a request: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes one response frame out, all of it: over TLS, `write_all` may leave the
/// end of it encrypted in the TLS session's buffer when the socket is full, and a
/// client waiting for that end sends nothing that would push it out. The flush
/// does (over plain TCP it does nothing).
async fn send(writer: &mut (impl AsyncWrite + Unpin), frame: &[u8]) -> std::io::Result<()> {
    writer.write_all(frame).await?;
    writer.flush().await
}

/// Reads one size-prefixed request frame; `None` when the client closed the
/// connection between frames. The size is checked before anything is allocated.
async fn read_frame(
    reader: &mut (impl AsyncRead + Unpin),
    limit: u32,
    idle: Duration,
) -> Result<Option<Bytes>, Fault> {
    let mut size = [0u8; 4];
    match tokio::time::timeout(idle, reader.read_exact(&mut size)).await {
        Err(_) => return Err(Fault::Idle),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(_)) => {}
    }
    let size = i32::from_be_bytes(size);
    if size < 0 || size as u32 > limit {
        return Err(Fault::TooLarge {
            size: size.into(),
            limit,
        });
    }
    let mut frame = BytesMut::zeroed(size as usize);
    // A client stalled in the middle of a frame is as idle as one between frames.
    tokio::time::timeout(idle, reader.read_exact(&mut frame))
        .await
        .map_err(|_| Fault::Idle)??;
    Ok(Some(frame.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each topic setting has its synonym, the broker setting the Kafka listener
    /// names behind it, and the broker lists it under that name, with the value of
    /// its `topic_defaults` key: a topic's default and its source come from it.
    #[test]
    fn every_topic_setting_has_its_broker_synonym_listed() {
        let settings = broker_settings(&BrokerConfig::default());
        let value = |name: &str| {
            let found = settings.iter().find(|s| s.name == name);
            found.map(|s| (s.value.clone(), s.is_default))
        };
        let keys = crate::topic_config::TOPIC_CONFIG_KEYS;
        assert_eq!(meridian_kafka::TOPIC_SETTINGS.len(), keys.len());
        for key in keys {
            let kafka = meridian_kafka::TOPIC_SETTINGS
                .iter()
                .find(|info| info.key == key)
                .unwrap_or_else(|| panic!("{key} has no synonym"))
                .broker;
            let ours = topic_default_key(key);
            assert!(value(&ours).is_some(), "{ours}");
            assert_eq!(value(kafka), value(&ours), "{key}: {kafka} is not {ours}");
        }
    }

    /// A broker's settings under Meridian's keys and Kafka's names, each default
    /// or not as its configuration says; unset ones are left out.
    #[test]
    fn broker_settings_carry_meridians_keys_and_kafkas_names() {
        let set = [
            "topic_defaults.retention_ms=3600000".to_string(),
            "default_partitions=3".to_string(),
        ];
        let config = BrokerConfig::load(None, std::iter::empty(), &set).unwrap();
        let settings = broker_settings(&config);
        let find = |name: &str| {
            settings
                .iter()
                .find(|s| s.name == name)
                .map(|s| (s.value.as_str(), s.is_default))
        };
        assert_eq!(find("log.retention.ms"), Some(("3600000", false)));
        assert_eq!(
            find("topic_defaults.retention_ms"),
            Some(("3600000", false))
        );
        assert_eq!(find("num.partitions"), Some(("3", false)));
        assert_eq!(find("log.segment.bytes"), Some(("1073741824", true)));
        assert_eq!(find("log.cleanup.policy"), Some(("delete", true)));
        assert_eq!(find("default.replication.factor"), Some(("1", true)));
        assert_eq!(find("max_inflight_requests"), Some(("256", true)));
        // Each of its type in the configuration (Kafka's config_type).
        let kind = |name: &str| {
            let setting = settings.iter().find(|s| s.name == name);
            setting.map(|s| s.config_type)
        };
        assert_eq!(kind("max_inflight_requests"), Some(config_type::LONG));
        assert_eq!(kind("auto_create_topics"), Some(config_type::BOOLEAN));
        assert_eq!(kind("data_dir"), Some(config_type::STRING));
        assert_eq!(kind("default.replication.factor"), Some(config_type::SHORT));
        assert_eq!(find("broker.rack"), None);
        let names: Vec<&str> = settings.iter().map(|s| s.name.as_str()).collect();
        assert!(names.is_sorted(), "{names:?}");
        // Every Kafka name stands for a key the configuration has.
        let everything =
            BrokerConfig::load(None, std::iter::empty(), &["rack=\"r1\"".to_string()]).unwrap();
        let all = broker_settings(&everything);
        for (kafka, key) in KAFKA_NAMES {
            assert!(all.iter().any(|s| s.name == kafka), "{kafka} ({key})");
        }
    }

    /// A response larger than what the connection buffers reaches a TLS client
    /// whole, though the client sends nothing more until it has it.
    #[tokio::test]
    async fn a_large_response_reaches_a_tls_client_whole() {
        let (_dir, identity) = crate::tls::generated_identity();
        let server = crate::tls::tcp_server_config(&identity, None).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(identity.certs[0].clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        // A pipe that holds 4 KiB: the socket of a client slower than the broker.
        let (near, far) = tokio::io::duplex(4096);
        let accept = tokio_rustls::TlsAcceptor::from(server).accept(near);
        let connect = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect("localhost".try_into().unwrap(), far);
        let (broker, mut client) = tokio::join!(accept, connect);
        let (mut broker, client) = (broker.unwrap(), client.as_mut().unwrap());
        let frame: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let written = tokio::spawn(async move { send(&mut broker, &frame).await.map(|()| broker) });
        let mut read = vec![0u8; 1_000_000];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut read))
            .await
            .expect("the whole response arrives")
            .unwrap();
        assert!(read.iter().enumerate().all(|(i, b)| *b == i as u8));
        let _broker = written.await.unwrap().unwrap();
    }
}
