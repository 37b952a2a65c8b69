//! The connection to the broker: one QUIC connection shared by everything made from a
//! [`Client`], one bidirectional stream per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use meridian_wire::frame::{check_frame_length, decode_response, encode_request, ResponseFrame};
use meridian_wire::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse, Request,
    Response,
};
use meridian_wire::ErrorCode;

use crate::config::ClientConfig;
use crate::error::{Error, Result};

/// QUIC application error code sent when the client closes the connection on purpose.
const CLOSE_CODE_NORMAL: u32 = 0;

/// A connection to a Meridian broker.
///
/// Cheap to clone: clones share one QUIC connection, which producers, consumers and
/// the admin handle made from the client all use. Each request travels on its own
/// QUIC stream, so requests never wait behind each other. If the connection dies, the
/// next request opens a new one (and repeats the ApiVersions handshake).
///
/// The broker is single-node for now: the client sends everything to the bootstrap
/// address. Routing requests to partition leaders comes with replication.
///
/// ```no_run
/// # async fn example() -> meridian_client::Result<()> {
/// use meridian_client::{Client, ClientConfig, Trust};
/// let trust = Trust::parse_fingerprint(&std::env::var("MERIDIAN_FINGERPRINT").unwrap_or_default())?;
/// let client = Client::connect(ClientConfig::new("127.0.0.1:9092", trust)).await?;
/// let topics = client.admin().list_topics().await?;
/// println!("{topics:?}");
/// client.close();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    quic_config: quinn::ClientConfig,
    /// The live connection with what its broker supports. Only held for a moment.
    current: StdMutex<Option<Connected>>,
    /// Held while opening a connection, so concurrent requests after a connection loss
    /// open one new connection, not many.
    reconnect: tokio::sync::Mutex<()>,
    /// Set by [`Client::close`]; no new connection is opened afterwards.
    closed: AtomicBool,
    /// Partition counts by topic, learned from metadata responses.
    partition_counts: StdMutex<HashMap<String, u32>>,
}

#[derive(Clone)]
struct Connected {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    broker: Arc<ApiVersionsResponse>,
}

impl Connected {
    fn close(&self) {
        let code = quinn::VarInt::from_u32(CLOSE_CODE_NORMAL);
        self.connection.close(code, b"client closed");
        self.endpoint.close(code, b"client closed");
    }
}

impl Client {
    /// Connects to `config.bootstrap` and performs the ApiVersions handshake.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        config.validate()?;
        let quic_config = crate::tls::quic_client_config(&config)?;
        let client = Client {
            inner: Arc::new(Inner {
                config,
                quic_config,
                current: StdMutex::new(None),
                reconnect: tokio::sync::Mutex::new(()),
                closed: AtomicBool::new(false),
                partition_counts: StdMutex::new(HashMap::new()),
            }),
        };
        client.connection().await?;
        Ok(client)
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// What the broker said about itself in the last handshake (broker id, cluster id,
    /// supported APIs, frame limit).
    pub async fn broker_info(&self) -> Result<ApiVersionsResponse> {
        Ok(self.connection().await?.broker.as_ref().clone())
    }

    /// Sends one request and waits for its response. A request-level error from the
    /// broker becomes [`Error::Broker`]; per-topic and per-partition error codes inside
    /// the response are left for the caller.
    pub async fn request(&self, request: Request) -> Result<Response> {
        self.request_with_timeout(request, self.inner.config.request_timeout)
            .await
    }

    /// Sends a request that gets no response (a produce with `acks=0`): returns once
    /// the request is written and the stream finished.
    pub async fn send_no_response(&self, request: Request) -> Result<()> {
        let timeout = self.inner.config.request_timeout;
        let api = request.api_key();
        let frame = encode_request(&request);
        tokio::time::timeout(timeout, self.exchange(api, frame, false))
            .await
            .map_err(|_| Error::Timeout)??;
        Ok(())
    }

    pub(crate) async fn request_with_timeout(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response> {
        let api = request.api_key();
        let frame = encode_request(&request);
        let response = tokio::time::timeout(timeout, self.exchange(api, frame, true))
            .await
            .map_err(|_| Error::Timeout)??;
        response.ok_or_else(|| Error::Protocol(format!("no response to {api:?}")))
    }

    /// Asks for metadata of `topics` (`None`: every topic) and refreshes the cached
    /// partition counts from the answer.
    pub async fn metadata(&self, topics: Option<Vec<String>>) -> Result<MetadataResponse> {
        let response = self
            .request(Request::Metadata(MetadataRequest { topics }))
            .await?;
        let Response::Metadata(metadata) = response else {
            return Err(unexpected(ApiKey::Metadata, &response));
        };
        if let Ok(mut counts) = self.inner.partition_counts.lock() {
            for topic in &metadata.topics {
                if topic.error.is_ok() {
                    counts.insert(topic.name.clone(), topic.partitions.len() as u32);
                } else {
                    counts.remove(&topic.name);
                }
            }
        }
        Ok(metadata)
    }

    /// The number of partitions of `topic`, from a cache filled by metadata requests.
    /// An unknown topic is [`Error::Broker`] with [`ErrorCode::UnknownTopic`].
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        if let Some(n) = self.cached_partition_count(topic) {
            return Ok(n);
        }
        let metadata = self.metadata(Some(vec![topic.to_string()])).await?;
        let Some(found) = metadata.topics.iter().find(|t| t.name == topic) else {
            return Err(Error::broker(
                ErrorCode::UnknownTopic,
                format!("topic `{topic}` does not exist"),
            ));
        };
        if !found.error.is_ok() {
            return Err(Error::broker(
                found.error,
                format!("topic `{topic}`: {}", found.error.description()),
            ));
        }
        if found.partitions.is_empty() {
            return Err(Error::Protocol(format!(
                "metadata lists topic `{topic}` without partitions"
            )));
        }
        Ok(found.partitions.len() as u32)
    }

    fn cached_partition_count(&self, topic: &str) -> Option<u32> {
        self.inner
            .partition_counts
            .lock()
            .ok()
            .and_then(|counts| counts.get(topic).copied())
    }

    /// Forgets the cached partition count of `topic`, so the next use asks the broker.
    /// Called after errors that suggest the topic changed.
    pub(crate) fn invalidate_partition_count(&self, topic: &str) {
        if let Ok(mut counts) = self.inner.partition_counts.lock() {
            counts.remove(topic);
        }
    }

    /// An admin handle (topics, offsets).
    pub fn admin(&self) -> crate::admin::Admin {
        crate::admin::Admin::new(self.clone())
    }

    /// A producer sharing this client's connection.
    pub fn producer(&self, config: crate::producer::ProducerConfig) -> crate::producer::Producer {
        crate::producer::Producer::new(self.clone(), config)
    }

    /// A consumer sharing this client's connection.
    pub fn consumer(&self, config: crate::consumer::ConsumerConfig) -> crate::consumer::Consumer {
        crate::consumer::Consumer::new(self.clone(), config)
    }

    /// Closes the connection gracefully. Requests under way fail, later ones return
    /// [`Error::Closed`]. Call [`Producer::flush`](crate::Producer::flush) first to
    /// deliver buffered records.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let taken = match self.inner.current.lock() {
            Ok(mut current) => current.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(connected) = taken {
            connected.close();
        }
    }

    /// Whether [`Client::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// The live connection, opening a new one if there is none or it died.
    async fn connection(&self) -> Result<Connected> {
        if let Some(connected) = self.live_connection()? {
            return Ok(connected);
        }
        let _reconnecting = self.inner.reconnect.lock().await;
        // Another request may have reconnected while this one waited for the lock.
        if let Some(connected) = self.live_connection()? {
            return Ok(connected);
        }
        let connected = tokio::time::timeout(self.inner.config.request_timeout, self.open())
            .await
            .map_err(|_| {
                Error::Connect(format!(
                    "no connection to {} within {:?}",
                    self.inner.config.bootstrap, self.inner.config.request_timeout
                ))
            })??;
        let mut current = self
            .inner
            .current
            .lock()
            .map_err(|_| Error::Protocol("connection state poisoned".into()))?;
        // Checked under the lock `close` takes, so a close racing with this reconnect
        // either sees the new connection or this code sees `closed`.
        if self.is_closed() {
            connected.close();
            return Err(Error::Closed);
        }
        *current = Some(connected.clone());
        Ok(connected)
    }

    fn live_connection(&self) -> Result<Option<Connected>> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let current = self
            .inner
            .current
            .lock()
            .map_err(|_| Error::Protocol("connection state poisoned".into()))?;
        match current.as_ref() {
            Some(connected) if connected.connection.close_reason().is_none() => {
                Ok(Some(connected.clone()))
            }
            Some(connected) => {
                tracing::debug!(
                    reason = ?connected.connection.close_reason(),
                    "connection to the broker was lost; reconnecting"
                );
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn open(&self) -> Result<Connected> {
        let config = &self.inner.config;
        let address = resolve(&config.bootstrap).await?;
        let bind: SocketAddr = if address.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let socket = udp_socket(bind, config.udp_buffer_bytes)
            .map_err(|e| Error::Connect(format!("cannot open a UDP socket on {bind}: {e}")))?;
        let runtime = quinn::default_runtime().ok_or_else(|| {
            Error::Connect("no async runtime for QUIC (call from within tokio)".into())
        })?;
        let mut endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
                .map_err(|e| Error::Connect(format!("cannot open a UDP socket on {bind}: {e}")))?;
        endpoint.set_default_client_config(self.inner.quic_config.clone());
        let connecting = endpoint
            .connect(address, &config.server_name)
            .map_err(|e| Error::Connect(format!("{}: {e}", config.bootstrap)))?;
        let connection = connecting
            .await
            .map_err(|e| connect_error(&config.bootstrap, e))?;
        tracing::debug!(%address, "connected to the broker");
        let request = Request::ApiVersions(ApiVersionsRequest {
            client_software: config.client_software.clone(),
        });
        let response = round_trip(
            &connection,
            ApiKey::ApiVersions,
            encode_request(&request),
            true,
            config.max_response_bytes,
        )
        .await?;
        let broker = match response {
            Some(Response::ApiVersions(broker)) => broker,
            Some(other) => return Err(unexpected(ApiKey::ApiVersions, &other)),
            None => return Err(Error::Protocol("no ApiVersions response".into())),
        };
        for required in [ApiKey::ApiVersions, ApiKey::Metadata] {
            check_supported(&broker, required)?;
        }
        Ok(Connected {
            endpoint,
            connection,
            broker: Arc::new(broker),
        })
    }

    /// One request/response on a fresh stream. If the connection turns out to be dead
    /// before the request was written, reconnects once and tries again: nothing reached
    /// the broker, so this is safe for every request.
    async fn exchange(
        &self,
        api: ApiKey,
        frame: Bytes,
        expect_response: bool,
    ) -> Result<Option<Response>> {
        let mut reconnected = false;
        loop {
            let connected = self.connection().await?;
            check_supported(&connected.broker, api)?;
            let body_len = frame.len().saturating_sub(4);
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
                api,
                frame.clone(),
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

fn check_supported(broker: &ApiVersionsResponse, api: ApiKey) -> Result<()> {
    let version = api.max_version();
    let supported = broker.apis.iter().any(|range| {
        range.api_key == api as u16 && range.min_version <= version && version <= range.max_version
    });
    if supported {
        Ok(())
    } else {
        Err(Error::broker(
            ErrorCode::UnsupportedVersion,
            format!("the broker does not support {api:?} version {version}"),
        ))
    }
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

fn connect_error(bootstrap: &str, error: quinn::ConnectionError) -> Error {
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
    api: ApiKey,
    frame: Bytes,
    expect_response: bool,
    max_response_bytes: u32,
) -> Result<Option<Response>, RoundTripError> {
    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .map_err(|e| RoundTripError::NotSent(Error::Transport(e.to_string())))?;
    let failed = |e: String| RoundTripError::Failed(Error::Transport(e));
    send.write_chunk(frame)
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
    let mut body = BytesMut::zeroed(length);
    recv.read_exact(&mut body)
        .await
        .map_err(|e| read_error(api, e))?;
    match decode_response(api, body.freeze()) {
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
