//! Framing. Every request travels on its own QUIC bidirectional stream: the client
//! writes one request frame and finishes its side, the server answers with one
//! response frame (none for `acks=0` produce) and finishes. One stream per request
//! gives pipelining without head-of-line blocking, and QUIC's stream limits bound
//! how many requests are in flight per connection.
//!
//! ```text
//! request frame:  u32 length | u16 api_key | u16 api_version | [trace context] | body
//! response frame: u32 length | u16 error_code | string message | body (only when error_code = 0)
//! trace context:  16 bytes trace id | 8 bytes parent span id | u8 trace flags
//! ```
//!
//! `length` counts the bytes after itself and is checked against the receiver's limit
//! before anything is allocated. Bit 15 of `api_version` ([`TRACE_CONTEXT_FLAG`])
//! says a trace context follows: the W3C `traceparent` fields of the client's span,
//! so the broker's span of the request joins the client's trace. Clients set it only
//! for brokers that list version [`TRACE_CONTEXT_API_VERSIONS`] of `ApiVersions`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::ErrorCode;
use crate::messages::{ApiKey, Request, Response};

/// Default largest frame a broker accepts (`max.frame.bytes`). Larger than the default
/// `max.message.bytes` so one produce request can carry several full batches.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 64 * 1024 * 1024;
pub const FRAME_LENGTH_LEN: usize = 4;

/// The ALPN protocol id of this wire protocol.
pub const ALPN: &[u8] = b"meridian/1";

/// Bit of a request's `api_version` saying a [`TraceContext`] follows it.
pub const TRACE_CONTEXT_FLAG: u16 = 0x8000;

/// The `ApiVersions` version from which a broker reads a [`TraceContext`] in
/// request frames (its bodies are those of version 0).
pub const TRACE_CONTEXT_API_VERSIONS: u16 = 1;

/// The W3C trace context (`traceparent`) of the client span a request was sent
/// from, in binary: the broker makes its span of the request a child of it.
///
/// ```
/// use meridian_wire::frame::TraceContext;
/// let context = TraceContext { trace_id: [0x4b; 16], span_id: [0xf0; 8], flags: 1 };
/// assert!(context.is_valid());
/// assert!(!TraceContext { span_id: [0; 8], ..context }.is_valid());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The client's span: the parent of the broker's.
    pub span_id: [u8; 8],
    /// W3C trace flags; bit 0 says the client's span is sampled.
    pub flags: u8,
}

impl TraceContext {
    pub const LEN: usize = 16 + 8 + 1;

    /// All-zero trace or span ids are invalid in W3C trace context: a broker
    /// starts a trace of its own then.
    pub fn is_valid(&self) -> bool {
        self.trace_id != [0; 16] && self.span_id != [0; 8]
    }

    /// The W3C `traceparent` header value: `00-{trace id}-{span id}-{flags}` in
    /// lowercase hex.
    pub fn to_traceparent(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        for b in self.trace_id {
            let _ = write!(out, "{b:02x}");
        }
        out.push('-');
        for b in self.span_id {
            let _ = write!(out, "{b:02x}");
        }
        let _ = write!(out, "-{:02x}", self.flags);
        out
    }

    /// Parses a W3C `traceparent` value of version 00 (or a later version, reading
    /// its first four fields, as the specification asks); `None` when malformed or
    /// invalid (all-zero ids).
    pub fn from_traceparent(value: &[u8]) -> Option<TraceContext> {
        fn hex<const N: usize>(field: &[u8]) -> Option<[u8; N]> {
            if field.len() != 2 * N
                || !field
                    .iter()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            {
                return None;
            }
            let mut out = [0u8; N];
            for (i, pair) in field.chunks(2).enumerate() {
                let digits = std::str::from_utf8(pair).ok()?;
                out[i] = u8::from_str_radix(digits, 16).ok()?;
            }
            Some(out)
        }
        let mut fields = value.split(|&c| c == b'-');
        let version: [u8; 1] = hex(fields.next()?)?;
        let trace_id = hex(fields.next()?)?;
        let span_id = hex(fields.next()?)?;
        let [flags] = hex(fields.next()?)?;
        let rest = fields.next();
        // Version ff is invalid; version 00 has exactly four fields.
        if version[0] == 0xff || (version[0] == 0 && rest.is_some()) {
            return None;
        }
        let context = TraceContext {
            trace_id,
            span_id,
            flags,
        };
        context.is_valid().then_some(context)
    }

    fn put(&self, w: &mut Writer<'_>) {
        w.fixed(&self.trace_id);
        w.fixed(&self.span_id);
        w.u8(self.flags);
    }

    fn read(r: &mut Reader) -> Result<TraceContext, DecodeError> {
        Ok(TraceContext {
            trace_id: r.array_of()?,
            span_id: r.array_of()?,
            flags: r.u8()?,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum FrameError {
    #[error("frame of {length} bytes exceeds the limit of {limit} bytes")]
    TooLarge { length: u32, limit: u32 },
    #[error("stream ended inside a frame: expected {expected} bytes, got {got}")]
    Truncated { expected: usize, got: usize },
    #[error("unsupported API key {api_key}")]
    UnknownApi { api_key: u16 },
    #[error("unsupported version {version} of API {api:?} (supported {min}..={max})")]
    UnsupportedVersion {
        api: ApiKey,
        version: u16,
        min: u16,
        max: u16,
    },
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
}

impl FrameError {
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::UnknownApi { .. } | FrameError::UnsupportedVersion { .. } => {
                ErrorCode::UnsupportedVersion
            }
            FrameError::Truncated { .. } | FrameError::Decode(_) => ErrorCode::InvalidRequest,
        }
    }
}

/// Reads the length prefix and checks it against `limit` before the caller allocates.
pub fn check_frame_length(prefix: [u8; 4], limit: u32) -> Result<usize, FrameError> {
    let length = u32::from_be_bytes(prefix);
    if length > limit {
        return Err(FrameError::TooLarge { length, limit });
    }
    Ok(length as usize)
}

/// Incremental frame decoder for byte streams that arrive in pieces.
#[derive(Debug)]
pub struct FrameDecoder {
    limit: u32,
    buf: BytesMut,
}

impl FrameDecoder {
    pub fn new(limit: u32) -> FrameDecoder {
        FrameDecoder {
            limit,
            buf: BytesMut::new(),
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Returns the next complete frame body, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < FRAME_LENGTH_LEN {
            return Ok(None);
        }
        let prefix: [u8; 4] = self.buf[..4].try_into().expect("4 bytes");
        let length = check_frame_length(prefix, self.limit)?;
        if self.buf.len() < FRAME_LENGTH_LEN + length {
            self.buf.reserve(FRAME_LENGTH_LEN + length - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(FRAME_LENGTH_LEN);
        Ok(Some(self.buf.split_to(length).freeze()))
    }

    /// Call at end of stream: leftover bytes mean the peer stopped inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            let expected = if self.buf.len() >= 4 {
                u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize + 4
            } else {
                4
            };
            Err(FrameError::Truncated {
                expected,
                got: self.buf.len(),
            })
        }
    }
}

fn with_length_prefix(body: impl FnOnce(&mut Writer<'_>)) -> Bytes {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_u32(0);
    body(&mut Writer::new(&mut buf));
    let length = (buf.len() - FRAME_LENGTH_LEN) as u32;
    buf[..4].copy_from_slice(&length.to_be_bytes());
    buf.freeze()
}

/// Encodes a request into a complete frame (length prefix included), at its API's
/// newest version.
pub fn encode_request(request: &Request) -> Bytes {
    let version = request.api_key().max_version();
    with_length_prefix(|w| put_request(w, request, version, None))
}

fn put_request(w: &mut Writer<'_>, request: &Request, version: u16, trace: Option<&TraceContext>) {
    let api = request.api_key();
    assert!(
        (api.min_version()..=api.max_version()).contains(&version),
        "{api:?} has no version {version}"
    );
    w.u16(api as u16);
    match trace {
        Some(trace) => {
            w.u16(version | TRACE_CONTEXT_FLAG);
            trace.put(w);
        }
        None => w.u16(version),
    }
    request.encode_body(w, version);
}

/// Decodes a request frame body (without the length prefix).
pub fn decode_request(frame: Bytes) -> Result<Request, FrameError> {
    decode_request_versioned(frame).map(|(request, _)| request)
}

/// [`decode_request`], with the version the request came in: the response goes back
/// at the same version ([`encode_response_chunks_at`]).
pub fn decode_request_versioned(frame: Bytes) -> Result<(Request, u16), FrameError> {
    decode_request_traced(frame).map(|(request, version, _)| (request, version))
}

/// [`decode_request_versioned`], with the client's trace context when the frame
/// carries one.
pub fn decode_request_traced(
    frame: Bytes,
) -> Result<(Request, u16, Option<TraceContext>), FrameError> {
    let mut reader = Reader::new(frame);
    let api_key = reader.u16()?;
    let flagged = reader.u16()?;
    let version = flagged & !TRACE_CONTEXT_FLAG;
    let api = ApiKey::from_u16(api_key).ok_or(FrameError::UnknownApi { api_key })?;
    if version < api.min_version() || version > api.max_version() {
        return Err(FrameError::UnsupportedVersion {
            api,
            version,
            min: api.min_version(),
            max: api.max_version(),
        });
    }
    let trace = if flagged & TRACE_CONTEXT_FLAG != 0 {
        Some(TraceContext::read(&mut reader)?)
    } else {
        None
    };
    let request = Request::decode_body(api, version, &mut reader)?;
    reader.finish()?;
    Ok((request, version, trace))
}

/// Encodes a successful response into a complete frame, at its API's newest version.
pub fn encode_response(response: &Response) -> Bytes {
    let version = response.api_key().max_version();
    with_length_prefix(|w| put_response(w, response, version))
}

fn put_response(w: &mut Writer<'_>, response: &Response, version: u16) {
    w.u16(ErrorCode::None as u16);
    w.string("");
    response.encode_body(w, version);
}

/// Encodes a frame as chunks to write back to back: record batches stay in their own
/// buffers instead of being copied into the frame (see [`Writer::chunked`]).
fn chunks_with_length_prefix(body: impl FnOnce(&mut Writer<'_>)) -> Vec<Bytes> {
    let mut buf = BytesMut::with_capacity(256);
    let mut chunks = Vec::new();
    body(&mut Writer::chunked(&mut buf, &mut chunks));
    if !buf.is_empty() {
        chunks.push(buf.freeze());
    }
    let length: usize = chunks.iter().map(Bytes::len).sum();
    let prefix = Bytes::copy_from_slice(&(length as u32).to_be_bytes());
    chunks.insert(0, prefix);
    chunks
}

/// [`encode_request`] as chunks (for `write_all_chunks`): produced batches are not copied.
pub fn encode_request_chunks(request: &Request) -> Vec<Bytes> {
    encode_request_chunks_at(request, request.api_key().max_version())
}

/// [`encode_request_chunks`] at `version` (one the broker has: see the ApiVersions
/// handshake). Panics on a version the API does not have.
pub fn encode_request_chunks_at(request: &Request, version: u16) -> Vec<Bytes> {
    encode_request_chunks_traced(request, version, None)
}

/// [`encode_request_chunks_at`], carrying `trace` (only to a broker that reads it:
/// see [`TRACE_CONTEXT_API_VERSIONS`]).
pub fn encode_request_chunks_traced(
    request: &Request,
    version: u16,
    trace: Option<&TraceContext>,
) -> Vec<Bytes> {
    chunks_with_length_prefix(|w| put_request(w, request, version, trace))
}

/// [`encode_response`] as chunks (for `write_all_chunks`): fetched batches are not copied.
pub fn encode_response_chunks(response: &Response) -> Vec<Bytes> {
    encode_response_chunks_at(response, response.api_key().max_version())
}

/// [`encode_response_chunks`] at `version`, the version of the request answered.
pub fn encode_response_chunks_at(response: &Response, version: u16) -> Vec<Bytes> {
    chunks_with_length_prefix(|w| put_response(w, response, version))
}

/// Encodes a request-level error (the request could not be understood at all).
pub fn encode_error_response(code: ErrorCode, message: &str) -> Bytes {
    assert!(code != ErrorCode::None);
    with_length_prefix(|w| {
        w.u16(code as u16);
        w.string(message);
    })
}

/// A response frame: either a typed body or a request-level error.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFrame {
    Ok(Response),
    Error { code: ErrorCode, message: String },
}

/// Decodes a response frame body; the caller says which API it asked.
pub fn decode_response(api: ApiKey, frame: Bytes) -> Result<ResponseFrame, FrameError> {
    decode_response_at(api, api.max_version(), frame)
}

/// [`decode_response`] of a request sent at `version`.
pub fn decode_response_at(
    api: ApiKey,
    version: u16,
    frame: Bytes,
) -> Result<ResponseFrame, FrameError> {
    let mut reader = Reader::new(frame);
    let code = ErrorCode::from_u16(reader.u16()?);
    let message = reader.string()?;
    if code != ErrorCode::None {
        return Ok(ResponseFrame::Error { code, message });
    }
    let response = Response::decode_body(api, version, &mut reader)?;
    reader.finish()?;
    Ok(ResponseFrame::Ok(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&(1025u32).to_be_bytes());
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge {
                length: 1025,
                limit: 1024
            })
        );
    }

    #[test]
    fn frames_arrive_in_pieces() {
        let frame = encode_request(&Request::ApiVersions(crate::messages::ApiVersionsRequest {
            client_software: "test".into(),
        }));
        let mut decoder = FrameDecoder::new(1024);
        for byte in frame.iter() {
            assert!(decoder.next_frame().unwrap().is_none());
            decoder.push(&[*byte]);
        }
        let body = decoder.next_frame().unwrap().unwrap();
        decoder.finish().unwrap();
        assert!(matches!(
            decode_request(body).unwrap(),
            Request::ApiVersions(_)
        ));
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&[0, 0, 0, 10, 1, 2]);
        assert!(decoder.next_frame().unwrap().is_none());
        assert_eq!(
            decoder.finish(),
            Err(FrameError::Truncated {
                expected: 14,
                got: 6
            })
        );
    }

    #[test]
    fn chunked_frames_equal_flat_frames() {
        use crate::messages::*;
        let big = Bytes::from(vec![7u8; 3 * crate::codec::SHARED_CHUNK_MIN]);
        let small = Bytes::from_static(b"tiny");
        let request = Request::Produce(ProduceRequest {
            acks: 1,
            timeout_ms: 1,
            topics: vec![ProduceTopic {
                name: "t".into(),
                partitions: vec![
                    ProducePartition {
                        partition: 0,
                        records: big.clone(),
                    },
                    ProducePartition {
                        partition: 1,
                        records: small.clone(),
                    },
                ],
            }],
        });
        let flat = encode_request(&request);
        let chunks = encode_request_chunks(&request);
        assert!(chunks.len() > 2, "the large batch travels as its own chunk");
        assert_eq!(chunks.concat(), flat.to_vec());
        let response = Response::Fetch(FetchResponse {
            topics: vec![FetchTopicResponse {
                name: "t".into(),
                id: crate::TopicId::NONE,
                partitions: vec![FetchPartitionResponse {
                    partition: 0,
                    error: ErrorCode::None,
                    message: String::new(),
                    high_watermark: 1,
                    log_start_offset: 0,
                    records: big,
                    diverging_epoch: None,
                }],
            }],
        });
        assert_eq!(
            encode_response_chunks(&response).concat(),
            encode_response(&response).to_vec()
        );
    }

    #[test]
    fn unknown_api_and_version_are_typed_errors() {
        let err = decode_request(Bytes::from_static(&[0, 99, 0, 0])).unwrap_err();
        assert_eq!(err, FrameError::UnknownApi { api_key: 99 });
        assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
        let err = decode_request(Bytes::from_static(&[0, 0, 0, 9])).unwrap_err();
        assert!(matches!(
            err,
            FrameError::UnsupportedVersion { version: 9, .. }
        ));
    }

    #[test]
    fn a_heartbeat_names_its_kafka_listener_at_version_1_only() {
        use crate::cluster::BrokerHeartbeatRequest;
        let heartbeat = |kafka| {
            Request::BrokerHeartbeat(BrokerHeartbeatRequest {
                broker_id: 2,
                incarnation: 9,
                host: "127.0.0.1".into(),
                port: 9102,
                rack: None,
                wants_shutdown: false,
                kafka,
            })
        };
        let with = heartbeat(Some(("127.0.0.1".into(), 9192)));
        let body = |chunks: Vec<Bytes>| Bytes::from(chunks.concat()).slice(4..);
        let v1 = body(encode_request_chunks_at(&with, 1));
        assert_eq!(decode_request_versioned(v1).unwrap(), (with.clone(), 1));
        // A controller from before Kafka listeners reads version 0: the same
        // heartbeat, without the listener.
        let v0 = body(encode_request_chunks_at(&with, 0));
        assert_eq!(decode_request_versioned(v0).unwrap(), (heartbeat(None), 0));
    }

    #[test]
    fn offset_commits_and_fetches_are_served_at_both_versions() {
        use crate::group::{
            OffsetCommitRequest, OffsetFetchResponse, PartitionOffset, TopicOffsets,
        };
        use crate::messages::NO_LEADER_EPOCH;
        let offsets = |leader_epoch| {
            vec![TopicOffsets {
                topic: "t".into(),
                partitions: vec![PartitionOffset {
                    partition: 1,
                    offset: 42,
                    leader_epoch,
                    metadata: "m".into(),
                    commit_timestamp_ms: 7,
                }],
            }]
        };
        let commit = Request::OffsetCommit(OffsetCommitRequest {
            group_id: "g".into(),
            member_id: String::new(),
            member_epoch: -1,
            topics: offsets(3),
        });
        let body = |chunks: Vec<Bytes>| Bytes::from(chunks.concat()).slice(4..);
        // Version 1 keeps the epoch; version 0 (a client from before epochs) has
        // none, and is read as such rather than misread by four bytes.
        let v1 = body(encode_request_chunks_at(&commit, 1));
        assert_eq!(
            decode_request_versioned(v1.clone()).unwrap(),
            (commit.clone(), 1)
        );
        let v0 = body(encode_request_chunks_at(&commit, 0));
        let Ok((Request::OffsetCommit(read), 0)) = decode_request_versioned(v0.clone()) else {
            panic!("not a version 0 commit");
        };
        assert_eq!(read.topics, offsets(NO_LEADER_EPOCH));
        assert_eq!(v1.len(), v0.len() + 4);
        // The answer to an OffsetFetch goes back at the request's version.
        let fetched = Response::OffsetFetch(OffsetFetchResponse {
            error: ErrorCode::None,
            message: String::new(),
            topics: offsets(3),
        });
        for version in [0, 1] {
            let frame = body(encode_response_chunks_at(&fetched, version));
            let Ok(ResponseFrame::Ok(Response::OffsetFetch(read))) =
                decode_response_at(ApiKey::OffsetFetch, version, frame)
            else {
                panic!("no OffsetFetch response at version {version}");
            };
            let epoch = if version == 0 { NO_LEADER_EPOCH } else { 3 };
            assert_eq!(read.topics, offsets(epoch));
        }
        // A version newer than the broker knows is refused with a typed error.
        let mut v2 = (ApiKey::OffsetCommit as u16).to_be_bytes().to_vec();
        v2.extend_from_slice(&2u16.to_be_bytes());
        assert_eq!(
            decode_request(Bytes::from(v2)).unwrap_err(),
            FrameError::UnsupportedVersion {
                api: ApiKey::OffsetCommit,
                version: 2,
                min: 0,
                max: 1
            }
        );
    }

    #[test]
    fn topic_changes_validate_only_from_version_1() {
        use crate::topic_changes::{
            AlterTopicConfigsRequest, ConfigChange, CreatePartitionsRequest, PartitionsIncrease,
            TopicConfigChanges,
        };
        let alter = |validate_only| {
            Request::AlterTopicConfigs(AlterTopicConfigsRequest {
                topics: vec![TopicConfigChanges {
                    name: "t".into(),
                    changes: vec![ConfigChange {
                        key: "retention.ms".into(),
                        value: Some("1000".into()),
                    }],
                    replace: false,
                }],
                validate_only,
            })
        };
        let grow = |validate_only| {
            Request::CreatePartitions(CreatePartitionsRequest {
                topics: vec![PartitionsIncrease {
                    name: "t".into(),
                    count: 4,
                }],
                validate_only,
            })
        };
        let body = |chunks: Vec<Bytes>| Bytes::from(chunks.concat()).slice(4..);
        for request in [alter(true), grow(true)] {
            assert_eq!(request.lowest_version(), 1);
            let v1 = body(encode_request_chunks_at(&request, 1));
            assert_eq!(decode_request_versioned(v1.clone()).unwrap(), (request, 1));
        }
        // Version 0 has no flag: such a request applies its changes, so a client
        // must not send one that validates only at version 0 (lowest_version says so).
        for (applying, validating) in [(alter(false), alter(true)), (grow(false), grow(true))] {
            assert_eq!(applying.lowest_version(), 0);
            let v0 = body(encode_request_chunks_at(&validating, 0));
            assert_eq!(decode_request_versioned(v0).unwrap(), (applying.clone(), 0));
            let v1 = body(encode_request_chunks_at(&applying, 1));
            assert_eq!(decode_request_versioned(v1).unwrap(), (applying, 1));
        }
    }

    /// An unclean election is asked for from version 1; at version 0 the request
    /// would be a preferred election, so a client never sends one there.
    #[test]
    fn unclean_elections_from_version_1() {
        use crate::group::TopicPartitions;
        use crate::reassign::ElectLeadersRequest;
        let elect = |unclean| {
            Request::ElectLeaders(ElectLeadersRequest {
                partitions: Some(vec![TopicPartitions {
                    topic: "t".into(),
                    partitions: vec![0],
                }]),
                unclean,
            })
        };
        let body = |chunks: Vec<Bytes>| Bytes::from(chunks.concat()).slice(4..);
        assert_eq!(elect(true).lowest_version(), 1);
        assert_eq!(elect(false).lowest_version(), 0);
        let v1 = body(encode_request_chunks_at(&elect(true), 1));
        assert_eq!(decode_request_versioned(v1).unwrap(), (elect(true), 1));
        let v0 = body(encode_request_chunks_at(&elect(true), 0));
        assert_eq!(decode_request_versioned(v0).unwrap(), (elect(false), 0));
    }

    #[test]
    fn topic_configs_replace_from_version_2() {
        use crate::topic_changes::{AlterTopicConfigsRequest, ConfigChange, TopicConfigChanges};
        let alter = |replace, validate_only| {
            Request::AlterTopicConfigs(AlterTopicConfigsRequest {
                topics: vec![
                    TopicConfigChanges {
                        name: "kept".into(),
                        changes: vec![ConfigChange {
                            key: "retention.ms".into(),
                            value: Some("1000".into()),
                        }],
                        replace: false,
                    },
                    TopicConfigChanges {
                        name: "replaced".into(),
                        changes: Vec::new(),
                        replace,
                    },
                ],
                validate_only,
            })
        };
        let body = |chunks: Vec<Bytes>| Bytes::from(chunks.concat()).slice(4..);
        for validate_only in [false, true] {
            let replacing = alter(true, validate_only);
            assert_eq!(replacing.lowest_version(), 2);
            let v2 = body(encode_request_chunks_at(&replacing, 2));
            assert_eq!(
                decode_request_versioned(v2).unwrap(),
                (replacing.clone(), 2)
            );
            // Below version 2 the flag is not carried (lowest_version keeps a client
            // from sending it there).
            let v1 = body(encode_request_chunks_at(&replacing, 1));
            assert_eq!(
                decode_request_versioned(v1).unwrap(),
                (alter(false, validate_only), 1)
            );
        }
    }

    #[test]
    fn error_responses_round_trip() {
        let frame = encode_error_response(ErrorCode::FrameTooLarge, "too big");
        let decoded = decode_response(ApiKey::Produce, frame.slice(4..)).unwrap();
        assert_eq!(
            decoded,
            ResponseFrame::Error {
                code: ErrorCode::FrameTooLarge,
                message: "too big".into()
            }
        );
    }

    fn metadata_request() -> Request {
        Request::Metadata(crate::messages::MetadataRequest {
            topics: Some(vec!["orders".into()]),
        })
    }

    fn frame_body(chunks: Vec<Bytes>) -> Bytes {
        Bytes::from(chunks.concat()).slice(FRAME_LENGTH_LEN..)
    }

    #[test]
    fn a_trace_context_travels_between_the_version_and_the_body() {
        let trace = TraceContext {
            trace_id: *b"0123456789abcdef",
            span_id: *b"span-id!",
            flags: 1,
        };
        let request = metadata_request();
        let traced = frame_body(encode_request_chunks_traced(&request, 0, Some(&trace)));
        let plain = frame_body(encode_request_chunks_at(&request, 0));
        assert_eq!(traced.len(), plain.len() + TraceContext::LEN);
        assert_eq!(&traced[2..4], &TRACE_CONTEXT_FLAG.to_be_bytes());
        assert_eq!(
            decode_request_traced(traced.clone()).unwrap(),
            (request.clone(), 0, Some(trace))
        );
        assert_eq!(
            decode_request_traced(plain).unwrap(),
            (request.clone(), 0, None)
        );
        // Readers that do not ask for it still get the request and its version.
        assert_eq!(decode_request_versioned(traced).unwrap(), (request, 0));
    }

    #[test]
    fn the_flag_is_not_part_of_the_version_checked() {
        let mut body = BytesMut::new();
        let unknown = ApiKey::Metadata.max_version() + 1;
        body.put_u16(ApiKey::Metadata as u16);
        body.put_u16(unknown | TRACE_CONTEXT_FLAG);
        body.put_slice(&[7; TraceContext::LEN]);
        assert!(matches!(
            decode_request_traced(body.freeze()),
            Err(FrameError::UnsupportedVersion { version, .. }) if version == unknown
        ));
    }

    #[test]
    fn a_cut_trace_context_is_a_malformed_frame() {
        let frame = frame_body(encode_request_chunks_traced(
            &metadata_request(),
            0,
            Some(&TraceContext {
                trace_id: [1; 16],
                span_id: [2; 8],
                flags: 0,
            }),
        ));
        let cut = frame.slice(..4 + 10);
        assert!(matches!(
            decode_request_traced(cut),
            Err(FrameError::Decode(DecodeError::Truncated { .. }))
        ));
    }

    #[test]
    fn traceparent_headers_round_trip_and_bad_ones_are_none() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::from_traceparent(value.as_bytes()).unwrap();
        assert_eq!(
            context.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(context.flags, 1);
        assert_eq!(context.to_traceparent(), value);
        // A later version may add fields; its first four are read.
        assert!(
            TraceContext::from_traceparent(format!("01{}-x", &value[2..]).as_bytes()).is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47g6-00f067aa0ba902b7-01",
        ] {
            assert_eq!(
                TraceContext::from_traceparent(bad.as_bytes()),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn all_zero_ids_are_no_trace_context() {
        let mut trace = TraceContext {
            trace_id: [0; 16],
            span_id: [9; 8],
            flags: 1,
        };
        assert!(!trace.is_valid());
        trace.trace_id[15] = 1;
        assert!(trace.is_valid());
        trace.span_id = [0; 8];
        assert!(!trace.is_valid());
    }
}
