//! Connections to the cluster: one QUIC connection per broker, opened lazily and
//! shared by everything made from a [`Client`], one bidirectional stream per request;
//! the metadata cache that says which broker leads which partition; and the group
//! coordinator look-up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_wire::buffers::BufferPool;
use meridian_wire::frame::{
    check_frame_length, decode_response_at, encode_request_chunks_at, encode_request_chunks_traced,
    ResponseFrame, TraceContext, TRACE_CONTEXT_API_VERSIONS,
};
use meridian_wire::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, FindCoordinatorRequest, MetadataRequest,
    MetadataResponse, Request, Response,
};
use meridian_wire::ErrorCode;
use tracing::Instrument;

use crate::config::{client_certificate_alert, ClientConfig};
use crate::error::{Error, Result};
use crate::frame_io::{BodyBudget, BodyError};
use crate::metadata::{on_error, BrokerId, LeaderLookup, MetadataCache, OnError};

/// QUIC application error code sent when the client closes the connection on purpose.
const CLOSE_CODE_NORMAL: u32 = 0;

/// A connection to a Meridian cluster (or a single broker).
///
/// Cheap to clone: clones share the connections, which producers, consumers and the
/// admin handle made from the client all use. The client starts from the first
/// reachable of [`ClientConfig::bootstrap_servers`], learns from metadata which broker
/// leads each partition, and opens one QUIC connection per broker it needs, lazily:
/// produce, fetch and offset look-ups go to the partition's leader, group requests to
/// the group's coordinator, everything else to any live broker. When a leader moves
/// (a broker answers `NotLeaderOrFollower`, or its connection dies) the client
/// refreshes metadata and retries. Each request travels on its own QUIC stream, so
/// requests never wait behind each other. If a connection dies, the next request
/// to that broker opens a new one (and repeats the ApiVersions handshake).
///
/// Against a single broker, which leads everything, all of this is one connection.
///
/// ```no_run
/// # async fn example() -> meridian_client::Result<()> {
/// use meridian_client::{Client, ClientConfig, Trust};
/// let trust = Trust::parse_fingerprint(&std::env::var("MERIDIAN_FINGERPRINT").unwrap_or_default())?;
/// let client = Client::connect(ClientConfig::new("127.0.0.1:9092,127.0.0.1:9093", trust)).await?;
/// let topics = client.admin().list_topics().await?;
/// println!("{topics:?}");
/// client.close();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Shared state. Every `StdMutex` here is held only for a moment and never across an
/// await; the tokio mutexes serialise slow work (connecting, refreshing metadata) so
/// that concurrent requests wait for one attempt instead of starting many.
struct Inner {
    config: ClientConfig,
    quic_config: quinn::ClientConfig,
    /// One UDP endpoint per address family, made on first use and shared by every
    /// connection of that family.
    endpoints: StdMutex<Endpoints>,
    /// The live (or last) connection to each broker.
    connections: StdMutex<HashMap<BrokerId, Connected>>,
    /// Held while connecting to a broker, one lock per broker: a dead broker's
    /// connect timeout never delays connecting to the others.
    connecting: StdMutex<HashMap<BrokerId, Arc<tokio::sync::Mutex<()>>>>,
    /// Held while looking for any reachable broker (bootstrap and re-bootstrap).
    bootstrapping: tokio::sync::Mutex<()>,
    /// The broker that answers requests any broker can answer, while it is reachable.
    home: StdMutex<Option<BrokerId>>,
    /// Addresses known to lead to a broker besides the one metadata advertises:
    /// bootstrap addresses that answered as it, coordinator answers.
    addresses: StdMutex<HashMap<BrokerId, Vec<String>>>,
    metadata: StdMutex<MetadataCache>,
    /// Held while a metadata request is in flight: one at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// The coordinator of each group, from FindCoordinator.
    coordinators: StdMutex<HashMap<String, BrokerId>>,
    /// Set by [`Client::close`]; no new connection is opened afterwards.
    closed: AtomicBool,
    /// Response bodies of every connection, kept to receive later ones into.
    response_buffers: BufferPool,
}

#[derive(Default)]
struct Endpoints {
    v4: Option<quinn::Endpoint>,
    v6: Option<quinn::Endpoint>,
}

#[derive(Clone)]
struct Connected {
    connection: quinn::Connection,
    /// For response bodies being received on `connection`.
    budget: BodyBudget,
    broker: Arc<ApiVersionsResponse>,
}

impl Connected {
    fn is_live(&self) -> bool {
        self.connection.close_reason().is_none()
    }

    fn close(&self) {
        let code = quinn::VarInt::from_u32(CLOSE_CODE_NORMAL);
        self.connection.close(code, b"client closed");
    }
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// Any live broker (admin, metadata, producer ids).
    Any,
    /// This broker (a partition leader, a group coordinator).
    Broker(BrokerId),
}

/// Locks ignoring poison: every critical section here leaves its data consistent
/// (single inserts, removes and reads), so a panic elsewhere cannot leave it torn.
fn lock<T>(mutex: &StdMutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Client {
    /// Connects to the first reachable of `config.bootstrap_servers` and performs the
    /// ApiVersions handshake.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        config.validate()?;
        let quic_config = crate::tls::quic_client_config(&config)?;
        let response_buffers = BufferPool::new(config.response_buffer_cache_bytes);
        let client = Client {
            inner: Arc::new(Inner {
                config,
                quic_config,
                endpoints: StdMutex::new(Endpoints::default()),
                connections: StdMutex::new(HashMap::new()),
                connecting: StdMutex::new(HashMap::new()),
                bootstrapping: tokio::sync::Mutex::new(()),
                home: StdMutex::new(None),
                addresses: StdMutex::new(HashMap::new()),
                metadata: StdMutex::new(MetadataCache::new()),
                refreshing: tokio::sync::Mutex::new(()),
                coordinators: StdMutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
                response_buffers,
            }),
        };
        client.any_connection().await?;
        Ok(client)
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// What the broker answering general requests said about itself in its handshake
    /// (broker id, cluster id, supported APIs, frame limit).
    pub async fn broker_info(&self) -> Result<ApiVersionsResponse> {
        Ok(self.any_connection().await?.broker.as_ref().clone())
    }

    /// Sends one request to any live broker and waits for its response. A
    /// request-level error from the broker becomes [`Error::Broker`]; per-topic and
    /// per-partition error codes inside the response are left for the caller.
    ///
    /// Produce, fetch and list-offsets requests sent this way are not routed to
    /// partition leaders (use [`Client::request_to`] with [`Client::leader`]); the
    /// producer, consumer and admin handle route their own.
    pub async fn request(&self, request: Request) -> Result<Response> {
        self.request_with_timeout(request, self.inner.config.request_timeout)
            .await
    }

    /// Sends `request` to any broker, asking again (with the retry backoff, within the
    /// request timeout) while the broker answers `MetadataNotReady`: a broker that
    /// has just started has not caught up with the cluster's metadata yet.
    pub(crate) async fn request_once_ready(&self, request: Request) -> Result<Response> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        let mut attempt = 0;
        loop {
            match self.request(request.clone()).await {
                Err(e)
                    if e.code() == Some(ErrorCode::MetadataNotReady)
                        && Instant::now() < deadline =>
                {
                    attempt += 1;
                    tokio::time::sleep(self.inner.config.backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// Sends one request to the broker with id `broker_id` (as metadata names it).
    pub async fn request_to(&self, broker_id: u32, request: Request) -> Result<Response> {
        self.request_to_with_timeout(broker_id, request, self.inner.config.request_timeout)
            .await
    }

    /// Sends a request that gets no response (a produce with `acks=0`) to any broker:
    /// returns once the request is written and the stream finished.
    pub async fn send_no_response(&self, request: Request) -> Result<()> {
        self.send_no_response_to_target(Target::Any, request).await
    }

    pub(crate) async fn send_no_response_to(
        &self,
        broker: BrokerId,
        request: Request,
    ) -> Result<()> {
        self.send_no_response_to_target(Target::Broker(broker), request)
            .await
    }

    async fn send_no_response_to_target(&self, target: Target, request: Request) -> Result<()> {
        let timeout = self.inner.config.request_timeout;
        tokio::time::timeout(timeout, self.exchange(target, &request, false))
            .await
            .map_err(|_| Error::Timeout)??;
        Ok(())
    }

    pub(crate) async fn request_with_timeout(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response> {
        self.request_target(Target::Any, request, timeout).await
    }

    pub(crate) async fn request_to_with_timeout(
        &self,
        broker: BrokerId,
        request: Request,
        timeout: Duration,
    ) -> Result<Response> {
        self.request_target(Target::Broker(broker), request, timeout)
            .await
    }

    async fn request_target(
        &self,
        target: Target,
        request: Request,
        timeout: Duration,
    ) -> Result<Response> {
        let api = request.api_key();
        let response = tokio::time::timeout(timeout, self.exchange(target, &request, true))
            .await
            .map_err(|_| Error::Timeout)??;
        response.ok_or_else(|| Error::Protocol(format!("no response to {api:?}")))
    }

    /// Asks any broker for metadata of `topics` (`None`: every topic) and refreshes the
    /// cached leaders, broker addresses and partition counts from the answer. A broker
    /// that has just started and not yet caught up with the cluster's metadata says
    /// so (`MetadataNotReady`); it is asked again after a backoff, within the request
    /// timeout.
    pub async fn metadata(&self, topics: Option<Vec<String>>) -> Result<MetadataResponse> {
        let request = Request::Metadata(MetadataRequest {
            topics: topics.clone(),
        });
        let response = self.request_once_ready(request).await?;
        let Response::Metadata(metadata) = response else {
            return Err(unexpected(ApiKey::Metadata, &response));
        };
        lock(&self.inner.metadata).apply(&metadata, topics.as_deref(), Instant::now());
        Ok(metadata)
    }

    /// Refreshes metadata for every cached topic and `wanted`, unless another refresh
    /// finished while this one waited its turn and left nothing to do. One metadata
    /// request is in flight at a time.
    pub(crate) async fn refresh_metadata(&self, wanted: &[String]) -> Result<()> {
        let seen = lock(&self.inner.metadata).version();
        let _refreshing = self.inner.refreshing.lock().await;
        let topics = {
            let cache = lock(&self.inner.metadata);
            let answered =
                |t: &String| cache.partition_count(t).is_some() || cache.missing_topic(t).is_some();
            let fresh = !cache.needs_refresh(Instant::now(), self.inner.config.metadata_max_age);
            if cache.version() != seen && fresh && wanted.iter().all(answered) {
                return Ok(());
            }
            let mut topics = cache.topics();
            topics.extend(wanted.iter().cloned());
            topics.sort();
            topics.dedup();
            topics
        };
        self.metadata(Some(topics)).await.map(drop)
    }

    /// Refreshes metadata from a broker other than `avoid`, each broker asked within
    /// `timeout`, those with a live connection first. For when requests to `avoid`
    /// go unanswered: it may be dead, and a broker killed outright is noticed only
    /// at the connection's idle timeout, so asking it (or waiting for a refresh that
    /// asks it) would wait that long. The broker that answers becomes the one general
    /// requests go to if `avoid` was. Returns whether an answer was applied.
    pub(crate) async fn refresh_metadata_avoiding(
        &self,
        avoid: BrokerId,
        timeout: Duration,
    ) -> bool {
        let (topics, mut candidates) = {
            let cache = lock(&self.inner.metadata);
            let brokers: Vec<BrokerId> = cache
                .brokers()
                .into_iter()
                .map(|(id, _)| id)
                .filter(|id| *id != avoid)
                .collect();
            (cache.topics(), brokers)
        };
        // Stable: among the connected (and then the others) metadata's order stays.
        candidates.sort_by_key(|id| !matches!(self.live(*id), Ok(Some(_))));
        for broker in candidates {
            let request = Request::Metadata(MetadataRequest {
                topics: Some(topics.clone()),
            });
            match self.request_to_with_timeout(broker, request, timeout).await {
                Ok(Response::Metadata(metadata)) => {
                    lock(&self.inner.metadata).apply(&metadata, Some(&topics), Instant::now());
                    let mut home = lock(&self.inner.home);
                    if *home == Some(avoid) {
                        *home = Some(broker);
                    }
                    return true;
                }
                Ok(other) => {
                    tracing::debug!(broker, error = %unexpected(ApiKey::Metadata, &other), "metadata refresh");
                }
                Err(Error::Closed) => return false,
                Err(e) => tracing::debug!(broker, error = %e, "metadata refresh failed"),
            }
        }
        false
    }

    /// Refreshes metadata if it is stale, old, or lacks one of `topics`.
    pub(crate) async fn ensure_metadata(&self, topics: &[String]) -> Result<()> {
        let needed = {
            let cache = lock(&self.inner.metadata);
            cache.needs_refresh(Instant::now(), self.inner.config.metadata_max_age)
                || topics
                    .iter()
                    .any(|t| cache.partition_count(t).is_none() && cache.missing_topic(t).is_none())
        };
        if needed {
            self.refresh_metadata(topics).await?;
        }
        Ok(())
    }

    /// The metadata cache, for routing decisions. Held only for a moment.
    pub(crate) fn metadata_cache(&self) -> MutexGuard<'_, MetadataCache> {
        lock(&self.inner.metadata)
    }

    /// A request for a partition failed: when the error says its leader may have
    /// moved, stop routing there until metadata is refreshed. Returns what to do.
    pub(crate) fn partition_failed(&self, topic: &str, partition: u32, error: &Error) -> OnError {
        let action = on_error(error);
        if action == OnError::RefreshAndRetry {
            lock(&self.inner.metadata).leader_failed(topic, partition);
        }
        if matches!(
            error.code(),
            Some(ErrorCode::UnknownTopic | ErrorCode::InvalidPartition)
        ) {
            lock(&self.inner.metadata).forget_topic(topic);
        }
        action
    }

    /// A request to `broker` failed as a whole (no connection, no answer): every
    /// partition it leads waits for fresh metadata.
    pub(crate) fn broker_failed(&self, broker: BrokerId, error: &Error) -> OnError {
        let action = on_error(error);
        if action == OnError::RefreshAndRetry {
            lock(&self.inner.metadata).broker_failed(broker);
        }
        action
    }

    /// The broker leading `topic`/`partition` now, refreshing metadata when it is not
    /// known. A partition without a leader (an election under way) is
    /// [`ErrorCode::LeaderNotAvailable`], which is worth retrying.
    pub async fn leader(&self, topic: &str, partition: u32) -> Result<u32> {
        let wanted = [topic.to_string()];
        self.ensure_metadata(&wanted).await?;
        for refreshed in [false, true] {
            let lookup = lock(&self.inner.metadata).leader(topic, partition);
            match lookup {
                LeaderLookup::Known { broker, .. } => return Ok(broker),
                LeaderLookup::Missing(code) => {
                    let why = lock(&self.inner.metadata).missing_reason(topic, code);
                    return Err(Error::broker(code, format!("{topic}/{partition}: {why}")));
                }
                LeaderLookup::Unknown if !refreshed => self.refresh_metadata(&wanted).await?,
                LeaderLookup::Unknown => {}
            }
        }
        Err(Error::broker(
            ErrorCode::LeaderNotAvailable,
            format!("{topic}/{partition} has no leader right now"),
        ))
    }

    /// The number of partitions of `topic`, from the metadata cache (asking a broker
    /// when the topic is not cached). An unknown topic is [`Error::Broker`] with
    /// [`ErrorCode::UnknownTopic`].
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        if let Some(n) = self.cached_partition_count(topic) {
            return Ok(n);
        }
        let mut metadata = self.metadata(Some(vec![topic.to_string()])).await?;
        if says_unknown(&metadata, topic) {
            if let Some(other) = self.metadata_from_one_that_knows(topic, &metadata).await {
                metadata = other;
            }
        }
        let Some(found) = metadata.topics.iter().find(|t| t.name == topic) else {
            return Err(Error::broker(
                ErrorCode::UnknownTopic,
                format!("topic `{topic}` does not exist"),
            ));
        };
        if !found.error.is_ok() {
            // A broker's message (metadata version 1) names the topic itself.
            let message = if found.message.contains(&format!("`{topic}`")) {
                found.message.clone()
            } else if found.message.is_empty() {
                format!("topic `{topic}`: {}", found.error.description())
            } else {
                format!("topic `{topic}`: {}", found.message)
            };
            return Err(Error::broker(found.error, message));
        }
        if found.partitions.is_empty() {
            return Err(Error::Protocol(format!(
                "metadata lists topic `{topic}` without partitions"
            )));
        }
        Ok(found.partitions.len() as u32)
    }

    /// The partition count of `topic` if the metadata cache has it.
    pub(crate) fn cached_partition_count(&self, topic: &str) -> Option<u32> {
        lock(&self.inner.metadata).partition_count(topic)
    }

    /// Asks the brokers `answer` lists, one at a time (each within a second, so one
    /// that is down costs little), for `topic`, and returns and caches the first
    /// answer that knows it. For when one broker said the topic does not exist: a
    /// broker that has not applied a just-created topic yet says so too, and the
    /// topic is missing only if none of them knows it.
    async fn metadata_from_one_that_knows(
        &self,
        topic: &str,
        answer: &MetadataResponse,
    ) -> Option<MetadataResponse> {
        for broker in answer.brokers.iter().map(|b| b.broker_id) {
            let Ok(other) = self
                .topic_metadata_from(broker, topic, Duration::from_secs(1))
                .await
            else {
                continue;
            };
            if !says_unknown(&other, topic) {
                lock(&self.inner.metadata).apply(
                    &other,
                    Some(&[topic.to_string()]),
                    Instant::now(),
                );
                return Some(other);
            }
        }
        None
    }

    /// What `broker` alone says about `topic`, within `timeout`.
    pub(crate) async fn topic_metadata_from(
        &self,
        broker: BrokerId,
        topic: &str,
        timeout: Duration,
    ) -> Result<MetadataResponse> {
        let request = Request::Metadata(MetadataRequest {
            topics: Some(vec![topic.to_string()]),
        });
        match self
            .request_to_with_timeout(broker, request, timeout)
            .await?
        {
            Response::Metadata(metadata) => Ok(metadata),
            other => Err(unexpected(ApiKey::Metadata, &other)),
        }
    }

    /// Forgets what is cached about `topic`, so the next use asks a broker. Called
    /// after errors that suggest the topic changed.
    pub(crate) fn invalidate_partition_count(&self, topic: &str) {
        lock(&self.inner.metadata).forget_topic(topic);
    }

    /// Sends a group request to the group's coordinator (found with FindCoordinator,
    /// cached). When the coordinator says it is not (or not yet) the coordinator, or
    /// cannot be reached, the cached answer is dropped, and the request is tried again
    /// after a backoff as long as nothing can have reached the group (those errors
    /// and connection failures), within the request timeout. Other failures are
    /// returned as they are.
    pub(crate) async fn coordinator_request(
        &self,
        group_id: &str,
        request: Request,
    ) -> Result<Response> {
        let started = Instant::now();
        let timeout = self.inner.config.request_timeout;
        // Requests that do the same done twice: sent again after a lost answer too
        // (a commit cut off by the coordinator's failure is retried at the next one,
        // as Kafka's `commitSync` does), where the others are retried only when
        // the broker surely did not act on them.
        let repeatable = matches!(
            request,
            Request::OffsetCommit(_) | Request::OffsetFetch(_) | Request::DescribeGroups(_)
        );
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = match self.coordinator(group_id).await {
                Ok(coordinator) => self.request_to(coordinator, request.clone()).await,
                Err(e) => Err(e),
            };
            let failure = match &result {
                Ok(response) => group_error(response)
                    .filter(|code| {
                        matches!(
                            code,
                            ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable
                        )
                    })
                    .map(|code| Error::broker(code, "")),
                Err(e) => Some(e.clone()),
            };
            let Some(failure) = failure else {
                return result;
            };
            if on_error(&failure) == OnError::RefreshAndRetry {
                lock(&self.inner.coordinators).remove(group_id);
            }
            let safe_to_repeat =
                repeatable || matches!(failure, Error::Broker { .. } | Error::Connect(_));
            let backoff = self.inner.config.backoff(attempt);
            if !safe_to_repeat
                || on_error(&failure) != OnError::RefreshAndRetry
                || started.elapsed() + backoff >= timeout
                || self.is_closed()
            {
                return result;
            }
            tracing::debug!(group = group_id, error = %failure, "coordinator moved or unreachable; retrying");
            tokio::time::sleep(backoff).await;
        }
    }

    /// The coordinator of `group_id`, cached.
    async fn coordinator(&self, group_id: &str) -> Result<BrokerId> {
        if let Some(known) = lock(&self.inner.coordinators).get(group_id).copied() {
            return Ok(known);
        }
        let response = self
            .request(Request::FindCoordinator(FindCoordinatorRequest {
                group_id: group_id.to_string(),
            }))
            .await?;
        let Response::FindCoordinator(found) = response else {
            return Err(unexpected(ApiKey::FindCoordinator, &response));
        };
        if !found.error.is_ok() {
            return Err(Error::broker(found.error, found.message));
        }
        let port = u16::try_from(found.port).map_err(|_| {
            Error::Protocol(format!("coordinator port {} is out of range", found.port))
        })?;
        let address = if found.host.contains(':') && !found.host.starts_with('[') {
            format!("[{}]:{port}", found.host)
        } else {
            format!("{}:{port}", found.host)
        };
        self.remember_address(found.broker_id, &address);
        lock(&self.inner.coordinators).insert(group_id.to_string(), found.broker_id);
        Ok(found.broker_id)
    }

    /// An admin handle (topics, offsets).
    pub fn admin(&self) -> crate::admin::Admin {
        crate::admin::Admin::new(self.clone())
    }

    /// A producer sharing this client's connections.
    pub fn producer(&self, config: crate::producer::ProducerConfig) -> crate::producer::Producer {
        crate::producer::Producer::new(self.clone(), config)
    }

    /// A consumer sharing this client's connections.
    pub fn consumer(&self, config: crate::consumer::ConsumerConfig) -> crate::consumer::Consumer {
        crate::consumer::Consumer::new(self.clone(), config)
    }

    /// Closes every connection gracefully. Requests under way fail, later ones return
    /// [`Error::Closed`]. Call [`Producer::flush`](crate::Producer::flush) first to
    /// deliver buffered records.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let taken: Vec<Connected> = lock(&self.inner.connections)
            .drain()
            .map(|(_, c)| c)
            .collect();
        for connected in taken {
            connected.close();
        }
        let endpoints = std::mem::take(&mut *lock(&self.inner.endpoints));
        let code = quinn::VarInt::from_u32(CLOSE_CODE_NORMAL);
        for endpoint in [endpoints.v4, endpoints.v6].into_iter().flatten() {
            endpoint.close(code, b"client closed");
        }
    }

    /// Whether [`Client::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    fn live(&self, broker: BrokerId) -> Result<Option<Connected>> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let connections = lock(&self.inner.connections);
        match connections.get(&broker) {
            Some(connected) if connected.is_live() => Ok(Some(connected.clone())),
            Some(connected) => {
                tracing::debug!(
                    broker,
                    reason = ?connected.connection.close_reason(),
                    "connection to the broker was lost; reconnecting"
                );
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Keeps a new connection, unless the client was closed meanwhile.
    fn store(&self, connected: &Connected) -> Result<()> {
        let mut connections = lock(&self.inner.connections);
        // Checked under the lock `close` takes, so a close racing with this connect
        // either sees the new connection or this code sees `closed`.
        if self.is_closed() {
            connected.close();
            return Err(Error::Closed);
        }
        connections.insert(connected.broker.broker_id, connected.clone());
        Ok(())
    }

    fn remember_address(&self, broker: BrokerId, address: &str) {
        let mut addresses = lock(&self.inner.addresses);
        let known = addresses.entry(broker).or_default();
        if !known.iter().any(|a| a == address) {
            known.push(address.to_string());
        }
    }

    /// Addresses to try for `broker`: those proven to lead there first (a bootstrap
    /// address that answered as it), then the one metadata advertises.
    fn addresses_of(&self, broker: BrokerId) -> Vec<String> {
        let mut addresses = lock(&self.inner.addresses)
            .get(&broker)
            .cloned()
            .unwrap_or_default();
        if let Some(advertised) = lock(&self.inner.metadata).broker_address(broker) {
            if !addresses.iter().any(|a| a == advertised) {
                addresses.push(advertised.to_string());
            }
        }
        addresses
    }

    /// The connection to `broker`, opening one if there is none or it died.
    async fn connection_to(&self, broker: BrokerId) -> Result<Connected> {
        if let Some(connected) = self.live(broker)? {
            return Ok(connected);
        }
        let connect_lock = lock(&self.inner.connecting)
            .entry(broker)
            .or_default()
            .clone();
        let _connecting = connect_lock.lock().await;
        // Another request may have connected while this one waited for the lock.
        if let Some(connected) = self.live(broker)? {
            return Ok(connected);
        }
        let mut addresses = self.addresses_of(broker);
        if addresses.is_empty() {
            // A broker named by an answer (a controller, a coordinator, a leader)
            // that this client has not heard of yet, or that joined since: the
            // metadata has its address.
            // (Boxed: the refresh's own request may come back here.)
            Box::pin(self.refresh_metadata(&[])).await?;
            addresses = self.addresses_of(broker);
        }
        if addresses.is_empty() {
            lock(&self.inner.metadata).mark_stale();
            return Err(Error::Connect(format!(
                "broker {broker} is not in the cluster metadata"
            )));
        }
        let mut last_error = None;
        for address in addresses {
            match self.open(&address).await {
                Ok(connected) if connected.broker.broker_id == broker => {
                    self.store(&connected)?;
                    return Ok(connected);
                }
                Ok(connected) => {
                    // Another broker listens there now: keep it, and the metadata
                    // that sent us here is out of date.
                    let other = connected.broker.broker_id;
                    if self.live(other)?.is_none() {
                        self.store(&connected)?;
                    }
                    lock(&self.inner.metadata).mark_stale();
                    last_error = Some(Error::Connect(format!(
                        "{address} is broker {other}, not broker {broker}"
                    )));
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Connect(format!("broker {broker} unreachable"))))
    }

    /// A connection for requests any broker can answer: the current one while it
    /// lives, else any live one, else the first reachable of the brokers metadata
    /// lists and then of the bootstrap addresses, in order.
    async fn any_connection(&self) -> Result<Connected> {
        if let Some(connected) = self.live_home()? {
            return Ok(connected);
        }
        let _bootstrapping = self.inner.bootstrapping.lock().await;
        if let Some(connected) = self.live_home()? {
            return Ok(connected);
        }
        let live = lock(&self.inner.connections)
            .values()
            .find(|c| c.is_live())
            .cloned();
        if let Some(connected) = live {
            *lock(&self.inner.home) = Some(connected.broker.broker_id);
            return Ok(connected);
        }
        let mut failures = Vec::new();
        let known: Vec<BrokerId> = lock(&self.inner.metadata)
            .brokers()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        for broker in known {
            match self.connection_to(broker).await {
                Ok(connected) => {
                    *lock(&self.inner.home) = Some(broker);
                    return Ok(connected);
                }
                Err(Error::Closed) => return Err(Error::Closed),
                Err(e) => failures.push(format!("broker {broker}: {e}")),
            }
        }
        let mut only_error = None;
        for address in &self.inner.config.bootstrap_servers {
            match self.open(address).await {
                Ok(connected) => {
                    let broker = connected.broker.broker_id;
                    self.remember_address(broker, address);
                    let connected = match self.live(broker)? {
                        // Raced with a connect to the same broker: use that one.
                        Some(existing) => {
                            connected.close();
                            existing
                        }
                        None => {
                            self.store(&connected)?;
                            connected
                        }
                    };
                    *lock(&self.inner.home) = Some(broker);
                    return Ok(connected);
                }
                Err(e) => {
                    tracing::debug!(%address, error = %e, "bootstrap address unreachable");
                    failures.push(format!("{address}: {e}"));
                    only_error = Some(e);
                }
            }
        }
        match (failures.len(), only_error) {
            // One address, as before clusters: its own error (TLS errors stay TLS).
            (1, Some(e)) => Err(e),
            _ => Err(Error::Connect(format!(
                "no broker reachable ({})",
                failures.join("; ")
            ))),
        }
    }

    fn live_home(&self) -> Result<Option<Connected>> {
        let home = *lock(&self.inner.home);
        match home {
            Some(broker) => self.live(broker),
            None if self.is_closed() => Err(Error::Closed),
            None => Ok(None),
        }
    }

    /// The endpoint for `address`'s family, made on first use.
    fn endpoint_for(&self, address: SocketAddr) -> Result<quinn::Endpoint> {
        let mut endpoints = lock(&self.inner.endpoints);
        let slot = if address.is_ipv4() {
            &mut endpoints.v4
        } else {
            &mut endpoints.v6
        };
        if let Some(endpoint) = slot {
            return Ok(endpoint.clone());
        }
        let bind: SocketAddr = if address.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let socket = udp_socket(bind, self.inner.config.udp_buffer_bytes)
            .map_err(|e| Error::Connect(format!("cannot open a UDP socket on {bind}: {e}")))?;
        let runtime = quinn::default_runtime().ok_or_else(|| {
            Error::Config("no async runtime for QUIC (call from within tokio)".into())
        })?;
        let mut endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
                .map_err(|e| Error::Connect(format!("cannot open a UDP socket on {bind}: {e}")))?;
        endpoint.set_default_client_config(self.inner.quic_config.clone());
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// Opens a connection to `address` and performs the handshake, within
    /// `connect_timeout`.
    async fn open(&self, address: &str) -> Result<Connected> {
        let timeout = self.inner.config.connect_timeout;
        tokio::time::timeout(timeout, self.open_unbounded(address))
            .await
            .map_err(|_| Error::Connect(format!("no connection to {address} within {timeout:?}")))?
    }

    async fn open_unbounded(&self, address_text: &str) -> Result<Connected> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let config = &self.inner.config;
        let address = resolve(address_text).await?;
        let endpoint = self.endpoint_for(address)?;
        let connecting = endpoint
            .connect(address, &config.server_name)
            .map_err(|e| Error::Connect(format!("{address_text}: {e}")))?;
        let connection = connecting
            .await
            .map_err(|e| connect_error(address_text, e, config.identity.is_some()))?;
        tracing::debug!(%address, "connected to a broker");
        let request = Request::ApiVersions(ApiVersionsRequest {
            client_software: config.client_software.clone(),
        });
        let budget = BodyBudget::new(
            crate::tls::CONNECTION_RECEIVE_WINDOW,
            self.inner.response_buffers.clone(),
        );
        let response = match round_trip(
            &connection,
            &budget,
            (ApiKey::ApiVersions, 0),
            encode_request_chunks_at(&request, 0),
            true,
            config.max_response_bytes,
        )
        .await
        {
            Ok(response) => response,
            // A broker that refuses the client's certificate (or wants one) lets the
            // handshake finish on this side and closes the connection with a TLS
            // alert right after: say so rather than "connection lost".
            Err(e) => {
                return Err(connection
                    .close_reason()
                    .and_then(|reason| {
                        certificate_refused(address_text, &reason, config.identity.is_some())
                    })
                    .unwrap_or_else(|| e.into()))
            }
        };
        let broker = match response {
            Some(Response::ApiVersions(broker)) => broker,
            Some(other) => return Err(unexpected(ApiKey::ApiVersions, &other)),
            None => return Err(Error::Protocol("no ApiVersions response".into())),
        };
        for required in [ApiKey::ApiVersions, ApiKey::Metadata] {
            negotiate(&broker, required, 0)?;
        }
        Ok(Connected {
            connection,
            budget,
            broker: Arc::new(broker),
        })
    }

    /// One request/response on a fresh stream to `target`. If the connection turns out
    /// to be dead before the request was written, reconnects once and tries again:
    /// nothing reached the broker, so this is safe for every request.
    ///
    /// Runs in a `request` span at DEBUG level (fields `api`, `version`, `broker`,
    /// `peer`, and `error` when it fails; `otel.name` and `otel.kind = "client"` for
    /// OpenTelemetry), the client's side of the broker's `request` span.
    async fn exchange(
        &self,
        target: Target,
        request: &Request,
        expect_response: bool,
    ) -> Result<Option<Response>> {
        let api = request.api_key();
        let span = tracing::debug_span!(
            "request",
            ?api,
            version = tracing::field::Empty,
            broker = tracing::field::Empty,
            peer = tracing::field::Empty,
            error = tracing::field::Empty,
            "otel.name" = ?api,
            "otel.kind" = "client",
            "otel.status_code" = tracing::field::Empty,
        );
        let result = self
            .exchange_unspanned(target, request, expect_response, &span)
            .instrument(span.clone())
            .await;
        if let Err(e) = &result {
            span.record("error", tracing::field::display(e));
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    async fn exchange_unspanned(
        &self,
        target: Target,
        request: &Request,
        expect_response: bool,
        span: &tracing::Span,
    ) -> Result<Option<Response>> {
        let api = request.api_key();
        let mut reconnected = false;
        let trace = trace_context(span);
        loop {
            let connected = match target {
                Target::Any => self.any_connection().await?,
                Target::Broker(broker) => self.connection_to(broker).await?,
            };
            // Encoded per connection: brokers of a cluster being upgraded one by
            // one may have different versions.
            let version = negotiate(&connected.broker, api, request.lowest_version())?;
            if !span.is_disabled() {
                span.record("version", version);
                span.record("broker", connected.broker.broker_id);
                // Asking quinn for the address takes the connection's lock: only
                // when someone listens.
                span.record(
                    "peer",
                    tracing::field::display(connected.connection.remote_address()),
                );
            }
            let trace = trace
                .as_ref()
                .filter(|_| reads_trace_context(&connected.broker));
            let frame = encode_request_chunks_traced(request, version, trace);
            let body_len = frame
                .iter()
                .map(Bytes::len)
                .sum::<usize>()
                .saturating_sub(4);
            if body_len > connected.broker.max_frame_bytes as usize {
                return Err(Error::broker(
                    ErrorCode::FrameTooLarge,
                    format!(
                        "{api:?} request of {body_len} bytes exceeds the broker's frame limit of {} bytes",
                        connected.broker.max_frame_bytes
                    ),
                ));
            }
            match round_trip(
                &connected.connection,
                &connected.budget,
                (api, version),
                frame,
                expect_response,
                self.inner.config.max_response_bytes,
            )
            .await
            {
                Err(RoundTripError::NotSent(e)) if !reconnected && !self.is_closed() => {
                    tracing::debug!(error = %e, "stream could not be opened; reconnecting");
                    reconnected = true;
                }
                Err(RoundTripError::NotSent(e) | RoundTripError::Failed(e)) => {
                    return Err(if self.is_closed() { Error::Closed } else { e })
                }
                Ok(response) => return Ok(response),
            }
        }
    }
}

/// The error code of a group response (the first group's, for the multi-group ones).
fn group_error(response: &Response) -> Option<ErrorCode> {
    match response {
        Response::JoinGroup(r) => Some(r.error),
        Response::SyncGroup(r) => Some(r.error),
        Response::Heartbeat(r) => Some(r.error),
        Response::LeaveGroup(r) => Some(r.error),
        Response::OffsetCommit(r) => Some(r.error),
        Response::OffsetFetch(r) => Some(r.error),
        Response::DescribeGroups(r) => r.groups.first().map(|g| g.error),
        Response::DeleteGroups(r) => r.results.first().map(|g| g.error),
        Response::OffsetDelete(r) => Some(r.error),
        _ => None,
    }
}

/// Whether `broker` reads a trace context in request frames.
fn reads_trace_context(broker: &ApiVersionsResponse) -> bool {
    broker.apis.iter().any(|range| {
        range.api_key == ApiKey::ApiVersions as u16
            && range.max_version >= TRACE_CONTEXT_API_VERSIONS
    })
}

/// The OpenTelemetry context of `span` (a request's, or the one a record is sent
/// in), to send with it: with the `otel` feature, when the application exports the
/// span through a `tracing-opentelemetry` layer (else there is no trace to join).
#[cfg(feature = "otel")]
pub(crate) fn trace_context(span: &tracing::Span) -> Option<TraceContext> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| TraceContext {
        trace_id: span_context.trace_id().to_bytes(),
        span_id: span_context.span_id().to_bytes(),
        flags: span_context.trace_flags().to_u8(),
    })
}

#[cfg(not(feature = "otel"))]
pub(crate) fn trace_context(_span: &tracing::Span) -> Option<TraceContext> {
    None
}

/// The version of `api` to speak with `broker`: the newest both have (from its
/// ApiVersions answer), or `UnsupportedVersion` when they share none at or above
/// `lowest` (the oldest version that can carry the request, see
/// [`Request::lowest_version`]).
fn negotiate(broker: &ApiVersionsResponse, api: ApiKey, lowest: u16) -> Result<u16> {
    let (min, max) = (api.min_version(), api.max_version());
    let Some(range) = broker.apis.iter().find(|range| range.api_key == api as u16) else {
        return Err(Error::broker(
            ErrorCode::UnsupportedVersion,
            format!("the broker does not serve {api:?}"),
        ));
    };
    let version = range.max_version.min(max);
    if version < min.max(range.min_version) {
        return Err(Error::broker(
            ErrorCode::UnsupportedVersion,
            format!(
                "the broker and this client share no version of {api:?} (the broker has {}..={}, this client {min}..={max})",
                range.min_version, range.max_version
            ),
        ));
    }
    if version < lowest {
        return Err(Error::broker(
            ErrorCode::UnsupportedVersion,
            format!(
                "this request needs {api:?} version {lowest} or newer; the broker has {}..={} (older versions cannot carry all it says)",
                range.min_version, range.max_version
            ),
        ));
    }
    Ok(version)
}

/// Whether a metadata answer says `topic` does not exist.
/// Whether `metadata` says `topic` does not exist (it is missing or `UnknownTopic`).
pub(crate) fn says_unknown(metadata: &MetadataResponse, topic: &str) -> bool {
    metadata
        .topics
        .iter()
        .find(|t| t.name == topic)
        .is_none_or(|t| t.error == ErrorCode::UnknownTopic)
}

pub(crate) fn unexpected(api: ApiKey, response: &Response) -> Error {
    Error::Protocol(format!(
        "asked {api:?}, got a {:?} response",
        response.api_key()
    ))
}

async fn resolve(bootstrap: &str) -> Result<SocketAddr> {
    let mut addresses = tokio::net::lookup_host(bootstrap).await.map_err(|e| {
        Error::Connect(format!(
            "cannot resolve `{bootstrap}` (expected host:port): {e}"
        ))
    })?;
    addresses
        .next()
        .ok_or_else(|| Error::Connect(format!("`{bootstrap}` resolves to no address")))
}

/// The TLS alert a broker closed the connection with, when it is about the client's
/// certificate: missing, not signed by a CA the broker trusts, expired or revoked.
fn certificate_refused(
    address: &str,
    reason: &quinn::ConnectionError,
    presented: bool,
) -> Option<Error> {
    let quinn::ConnectionError::ConnectionClosed(close) = reason else {
        return None;
    };
    let code = u64::from(close.error_code);
    let alert = client_certificate_alert(code)?;
    let why = if code == 0x100 + 116 {
        // certificate_required
        "requires a client certificate and this client presented none (`ClientConfig::identity`; `--cert` and `--key` on the command line)".to_string()
    } else {
        let said = if close.reason.is_empty() {
            format!("TLS alert {} ({alert})", code - 0x100)
        } else {
            String::from_utf8_lossy(&close.reason).into_owned()
        };
        format!(
            "refused the client certificate{}: {said}",
            if presented {
                ""
            } else {
                " (none was presented)"
            },
        )
    };
    Some(Error::Tls(format!("{address} {why}")))
}

fn connect_error(bootstrap: &str, error: quinn::ConnectionError, presented: bool) -> Error {
    if let Some(refused) = certificate_refused(bootstrap, &error, presented) {
        return refused;
    }
    match error {
        quinn::ConnectionError::TransportError(ref e)
            if e.code.to_string().contains("crypto") || e.reason.contains("certificate") =>
        {
            Error::Tls(format!("handshake with {bootstrap} failed: {error}"))
        }
        quinn::ConnectionError::ConnectionClosed(ref close)
            if close
                .reason
                .starts_with(b"peer doesn't support any known protocol") =>
        {
            Error::Tls(format!("{bootstrap} does not speak meridian/1: {error}"))
        }
        other => Error::Connect(format!("{bootstrap}: {other}")),
    }
}

/// Why a round trip failed: before anything was sent (safe to retry on a new
/// connection), or after.
enum RoundTripError {
    NotSent(Error),
    Failed(Error),
}

impl From<RoundTripError> for Error {
    fn from(e: RoundTripError) -> Error {
        match e {
            RoundTripError::NotSent(e) | RoundTripError::Failed(e) => e,
        }
    }
}

async fn round_trip(
    connection: &quinn::Connection,
    budget: &BodyBudget,
    (api, version): (ApiKey, u16),
    mut frame: Vec<Bytes>,
    expect_response: bool,
    max_response_bytes: u32,
) -> Result<Option<Response>, RoundTripError> {
    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .map_err(|e| RoundTripError::NotSent(Error::Transport(e.to_string())))?;
    let failed = |e: String| RoundTripError::Failed(Error::Transport(e));
    // Chunks: the batches of a produce go out from their own buffers, uncopied.
    send.write_all_chunks(&mut frame)
        .await
        .map_err(|e| failed(e.to_string()))?;
    send.finish().map_err(|e| failed(e.to_string()))?;
    if !expect_response {
        // The broker sends nothing back (acks=0); tell it not to bother.
        let _ = recv.stop(quinn::VarInt::from_u32(0));
        return Ok(None);
    }
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| read_error(api, e))?;
    let length = check_frame_length(prefix, max_response_bytes)
        .map_err(|e| RoundTripError::Failed(Error::Protocol(format!("{api:?} response: {e}"))))?;
    let body = crate::frame_io::read_body(&mut recv, length, budget)
        .await
        .map_err(|e| {
            read_error(
                api,
                match e {
                    BodyError::FinishedEarly(got) => quinn::ReadExactError::FinishedEarly(got),
                    BodyError::Read(e) => quinn::ReadExactError::ReadError(e),
                },
            )
        })?;
    match decode_response_at(api, version, body) {
        Ok(ResponseFrame::Ok(response)) => Ok(Some(response)),
        Ok(ResponseFrame::Error { code, message }) => {
            Err(RoundTripError::Failed(Error::broker(code, message)))
        }
        Err(e) => Err(RoundTripError::Failed(Error::Protocol(format!(
            "malformed {api:?} response: {e}"
        )))),
    }
}

fn read_error(api: ApiKey, error: quinn::ReadExactError) -> RoundTripError {
    RoundTripError::Failed(match error {
        quinn::ReadExactError::FinishedEarly(got) => Error::Protocol(format!(
            "the broker ended the {api:?} response stream after {got} bytes"
        )),
        quinn::ReadExactError::ReadError(e) => Error::Transport(e.to_string()),
    })
}

/// A UDP socket with kernel buffers of `buffer_bytes` (capped by the kernel's
/// `net.core.rmem_max`/`wmem_max`). The defaults (about 200 KiB) overflow under bursts,
/// and every dropped datagram costs QUIC a loss-recovery round: tail latency.
fn udp_socket(bind: SocketAddr, buffer_bytes: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a smaller buffer than asked is still a working socket.
    let _ = socket.set_recv_buffer_size(buffer_bytes);
    let _ = socket.set_send_buffer_size(buffer_bytes);
    socket.bind(&bind.into())?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_wire::messages::ApiVersionRange;

    fn broker(ranges: &[(ApiKey, u16, u16)]) -> ApiVersionsResponse {
        ApiVersionsResponse {
            apis: ranges
                .iter()
                .map(|&(api, min_version, max_version)| ApiVersionRange {
                    api_key: api as u16,
                    min_version,
                    max_version,
                })
                .collect(),
            broker_id: 1,
            cluster_id: String::new(),
            max_frame_bytes: 1 << 20,
        }
    }

    #[test]
    fn trace_contexts_go_only_to_brokers_that_read_them() {
        let versions = ApiKey::ApiVersions;
        assert!(reads_trace_context(&broker(&[(versions, 0, 1)])));
        assert!(reads_trace_context(&broker(&[(versions, 0, 2)])));
        // A broker from before trace contexts would refuse the flagged version.
        assert!(!reads_trace_context(&broker(&[(versions, 0, 0)])));
        assert!(!reads_trace_context(&broker(&[(ApiKey::Metadata, 0, 1)])));
    }

    #[test]
    fn the_newest_version_both_sides_have_is_spoken() {
        let commit = ApiKey::OffsetCommit;
        assert_eq!(ApiKey::OffsetCommit.max_version(), 1);
        // A broker like this client, one from before leader epochs in commits, and
        // a newer one.
        assert_eq!(negotiate(&broker(&[(commit, 0, 1)]), commit, 0).unwrap(), 1);
        assert_eq!(negotiate(&broker(&[(commit, 0, 0)]), commit, 0).unwrap(), 0);
        assert_eq!(negotiate(&broker(&[(commit, 0, 5)]), commit, 0).unwrap(), 1);
        // Nothing in common, or the API unknown to the broker.
        for ranges in [&[(commit, 2, 5)][..], &[(ApiKey::Produce, 0, 0)][..]] {
            let error = negotiate(&broker(ranges), commit, 0).unwrap_err();
            assert_eq!(error.code(), Some(ErrorCode::UnsupportedVersion), "{error}");
        }
        // A request that needs a version the broker lacks (validate only, sent to a
        // broker that would apply it) is refused here, not sent.
        let alter = ApiKey::AlterTopicConfigs;
        assert_eq!(negotiate(&broker(&[(alter, 0, 1)]), alter, 1).unwrap(), 1);
        let error = negotiate(&broker(&[(alter, 0, 0)]), alter, 1).unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::UnsupportedVersion), "{error}");
        assert!(error.to_string().contains("version 1 or newer"), "{error}");
    }
}
