//! Kafka RecordBatch v2, the one batch format Meridian uses end to end.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! offset  size  field
//!      0     8  base_offset               patched by the broker on append
//!      8     4  batch_length              bytes after this field
//!     12     4  partition_leader_epoch    patched by the broker on append
//!     16     1  magic (= 2)
//!     17     4  crc (CRC-32C of bytes 21..end)
//!     21     2  attributes                bits 0-2 codec, bit 3 timestamp type,
//!                                         bit 4 transactional, bit 5 control
//!     23     4  last_offset_delta
//!     27     8  base_timestamp
//!     35     8  max_timestamp
//!     43     8  producer_id
//!     51     2  producer_epoch
//!     53     4  base_sequence
//!     57     4  records_count
//!     61     -  records (compressed as a whole when the codec is not `none`)
//! ```
//!
//! The CRC deliberately does not cover base offset and leader epoch, so the broker can
//! assign offsets without touching the CRC or the (possibly compressed) records. The
//! broker never decompresses: everything it needs is in the 61-byte header.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{get_varint, get_varlong, put_varint, put_varlong, DecodeError};

/// Size of the fixed batch header, up to and including `records_count`.
pub const BATCH_HEADER_LEN: usize = 61;
/// Bytes before `batch_length`'s payload: base offset + batch length.
pub const BATCH_LOG_OVERHEAD: usize = 12;
/// The only record batch format we accept.
pub const MAGIC_V2: u8 = 2;
const CRC_START: usize = 21;
const MAGIC_OFFSET: usize = 16;

/// Compression codec carried in the low three attribute bits. The producer
/// compresses each batch; the broker stores and serves it as it came.
///
/// All of Kafka's codecs: gzip and snappy mostly for Kafka clients (the Kafka
/// listener stores their batches as they came), lz4 and zstd the faster choices.
///
/// ```
/// use meridian_wire::batch::Compression;
/// let codec: Compression = "zstd".parse().unwrap();
/// assert_eq!((codec.name(), codec.attribute_bits()), ("zstd", 4));
/// assert_eq!("snappy".parse::<Compression>().unwrap().attribute_bits(), 2);
/// assert!("brotli".parse::<Compression>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    pub fn attribute_bits(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    fn from_attributes(attributes: u16) -> Result<Compression, BatchError> {
        let bits = attributes & 0x7;
        Compression::ALL
            .into_iter()
            .find(|c| c.attribute_bits() == bits)
            .ok_or(BatchError::UnsupportedCompression(bits as u8))
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Compression::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                format!("unknown compression `{s}` (expected none, gzip, snappy, lz4 or zstd)")
            })
    }
}

/// Why a batch was refused. Every variant maps to `ErrorCode::CorruptMessage` or
/// `ErrorCode::UnsupportedCompression` on the wire.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum BatchError {
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("unsupported record batch magic {0} (only v2 is accepted)")]
    BadMagic(u8),
    #[error("batch length {0} is invalid")]
    BadLength(i32),
    #[error("batch CRC mismatch: header says {expected:#010x}, computed {actual:#010x}")]
    BadCrc { expected: u32, actual: u32 },
    #[error("unsupported compression codec id {0}")]
    UnsupportedCompression(u8),
    #[error("batch has {records} records but last offset delta {last_offset_delta}")]
    BadOffsetDelta {
        records: i32,
        last_offset_delta: i32,
    },
    #[error("malformed record: {0}")]
    Record(String),
    #[error("decompression failed: {0}")]
    Decompress(String),
}

impl From<DecodeError> for BatchError {
    fn from(e: DecodeError) -> Self {
        BatchError::Record(e.to_string())
    }
}

/// Read-only view of a batch header. Parsing it checks only sizes and magic;
/// [`BatchHeader::validate`] also checks the CRC and field consistency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: u8,
    pub crc: u32,
    pub attributes: u16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

impl BatchHeader {
    /// Parses the fixed header at the start of `bytes`. `bytes` may hold more than one
    /// batch; only the first header is read.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < BATCH_HEADER_LEN {
            return Err(BatchError::Truncated {
                needed: BATCH_HEADER_LEN,
                available: bytes.len(),
            });
        }
        let magic = bytes[MAGIC_OFFSET];
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(magic));
        }
        let batch_length = be_i32(bytes, 8);
        if batch_length < (BATCH_HEADER_LEN - BATCH_LOG_OVERHEAD) as i32 {
            return Err(BatchError::BadLength(batch_length));
        }
        Ok(BatchHeader {
            base_offset: be_i64(bytes, 0),
            batch_length,
            partition_leader_epoch: be_i32(bytes, 12),
            magic,
            crc: be_u32(bytes, 17),
            attributes: be_i16(bytes, 21) as u16,
            last_offset_delta: be_i32(bytes, 23),
            base_timestamp: be_i64(bytes, 27),
            max_timestamp: be_i64(bytes, 35),
            producer_id: be_i64(bytes, 43),
            producer_epoch: be_i16(bytes, 51),
            base_sequence: be_i32(bytes, 53),
            records_count: be_i32(bytes, 57),
        })
    }

    /// Total size of this batch on disk / on the wire.
    pub fn total_len(&self) -> usize {
        BATCH_LOG_OVERHEAD + self.batch_length as usize
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_attributes(self.attributes)
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    /// Checks the CRC and the header's internal consistency against the full batch
    /// bytes (`batch` must be exactly `total_len()` bytes).
    pub fn validate(&self, batch: &[u8]) -> Result<(), BatchError> {
        if batch.len() != self.total_len() {
            return Err(BatchError::Truncated {
                needed: self.total_len(),
                available: batch.len(),
            });
        }
        let actual = crc32c::crc32c(&batch[CRC_START..]);
        if actual != self.crc {
            return Err(BatchError::BadCrc {
                expected: self.crc,
                actual,
            });
        }
        self.compression()?;
        if self.records_count < 0
            || self.last_offset_delta < 0
            || (self.records_count > 0 && self.last_offset_delta < self.records_count - 1)
        {
            return Err(BatchError::BadOffsetDelta {
                records: self.records_count,
                last_offset_delta: self.last_offset_delta,
            });
        }
        Ok(())
    }
}

/// Patches base offset and partition leader epoch in place. Neither is covered by the
/// CRC, so the batch stays valid.
pub fn patch_batch(batch: &mut [u8], base_offset: i64, partition_leader_epoch: i32) {
    assert!(
        batch.len() >= BATCH_HEADER_LEN,
        "patch_batch on a short buffer"
    );
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[12..16].copy_from_slice(&partition_leader_epoch.to_be_bytes());
}

/// The attributes bit saying a batch's timestamps are the broker's (LogAppendTime).
pub const LOG_APPEND_TIME: u16 = 0x08;

/// Stamps a whole batch with the broker's clock (a topic with Kafka's
/// `message.timestamp.type=LogAppendTime`): sets the [`LOG_APPEND_TIME`] attribute
/// and the max timestamp to `now_ms`, then recomputes the CRC. The records keep
/// their own timestamps; readers take the max timestamp for every record of such a
/// batch, as Kafka's do.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    assert!(
        batch.len() >= BATCH_HEADER_LEN,
        "set_log_append_time on a short buffer"
    );
    let attributes = u16::from_be_bytes([batch[21], batch[22]]) | LOG_APPEND_TIME;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[35..43].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Splits a buffer holding consecutive batches into `(header, bytes)` pairs, checking
/// each batch's CRC. Used by the broker on produce (one request may carry several
/// batches for one partition) and by clients on fetch.
pub fn split_batches(
    mut bytes: Bytes,
) -> impl Iterator<Item = Result<(BatchHeader, Bytes), BatchError>> {
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || bytes.is_empty() {
            return None;
        }
        let result = BatchHeader::parse(&bytes).and_then(|header| {
            let total = header.total_len();
            if bytes.len() < total {
                return Err(BatchError::Truncated {
                    needed: total,
                    available: bytes.len(),
                });
            }
            let batch = bytes.split_to(total);
            header.validate(&batch)?;
            Ok((header, batch))
        });
        failed = result.is_err();
        Some(result)
    })
}

/// Like [`split_batches`] but stops silently at a truncated trailing batch, which is
/// what a fetch response may end with when it was cut at `max_bytes`.
pub fn split_fetched_batches(
    bytes: Bytes,
) -> impl Iterator<Item = Result<(BatchHeader, Bytes), BatchError>> {
    split_batches(bytes).filter(|r| !matches!(r, Err(BatchError::Truncated { .. })))
}

/// One record header (key/value pair attached to a record). A record may carry
/// several with the same key; their order is kept.
///
/// ```
/// use bytes::Bytes;
/// use meridian_wire::batch::Header;
/// let header = Header {
///     key: "trace-id".into(),
///     value: Some(Bytes::from_static(b"abc123")),
/// };
/// assert_eq!(header.value.as_deref(), Some(&b"abc123"[..]));
/// let flag = Header { key: "replayed".into(), value: None };
/// assert!(flag.value.is_none());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

/// One decoded record, with its absolute offset and timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    /// The record's timestamp, or the batch's max timestamp under LogAppendTime.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// A record to be encoded into a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewRecord {
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

impl NewRecord {
    /// Upper bound of the encoded size; used by producers to decide when a batch is full.
    pub fn estimated_size(&self) -> usize {
        let key = self.key.as_ref().map_or(0, |k| k.len());
        let value = self.value.as_ref().map_or(0, |v| v.len());
        let headers: usize = self
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()) + 10)
            .sum();
        key + value + headers + 5 * 5 + 10
    }
}

/// Producer identity carried in the batch header. `NONE` for non-idempotent producers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerIdentity {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl ProducerIdentity {
    pub const NONE: ProducerIdentity = ProducerIdentity {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
}

/// Encodes records into one v2 batch with base offset 0 (the broker assigns offsets).
///
/// Uncompressed batches are written in one pass straight into the output buffer (record
/// sizes are computed up front, so no per-record allocation); compressed ones encode
/// the records once and compress them into the output.
pub fn encode_batch(
    records: &[NewRecord],
    compression: Compression,
    producer: ProducerIdentity,
) -> Result<Bytes, BatchError> {
    encode_batch_in(BytesMut::new(), records, compression, producer)
}

/// [`encode_batch`] into `buffer`, cleared first and grown if it is too small: a
/// producer hands back the buffers of batches it has finished with, so a steady
/// stream of batches does not fault a fresh megabyte of memory in for each.
pub fn encode_batch_in(
    buffer: BytesMut,
    records: &[NewRecord],
    compression: Compression,
    producer: ProducerIdentity,
) -> Result<Bytes, BatchError> {
    assert!(!records.is_empty(), "a batch holds at least one record");
    encode_batch_inner(
        buffer,
        records,
        None,
        records.len() as i32 - 1,
        compression,
        producer,
    )
}

/// Encodes records at given offset deltas into one batch with base offset 0 spanning
/// `0 ..= last_offset_delta`, gaps allowed, possibly with no record at all, carrying
/// `producer`. The broker uses it for a produced batch its plugin chain changed: the
/// kept records keep their places and the batch still spans (and, for an idempotent
/// producer, still counts the sequence numbers of) the records dropped.
pub fn encode_batch_spanning(
    records: &[NewRecord],
    offset_deltas: &[i32],
    last_offset_delta: i32,
    compression: Compression,
    producer: ProducerIdentity,
) -> Result<Bytes, BatchError> {
    assert_eq!(records.len(), offset_deltas.len());
    assert!(
        offset_deltas.windows(2).all(|w| w[0] < w[1]),
        "deltas increase"
    );
    assert!(offset_deltas
        .iter()
        .all(|&d| (0..=last_offset_delta).contains(&d)));
    encode_batch_inner(
        BytesMut::new(),
        records,
        Some(offset_deltas),
        last_offset_delta,
        compression,
        producer,
    )
}

/// [`encode_batch_spanning`] at `base_offset`, without a producer. The broker uses it
/// to answer a fetch filtered by a plugin: the kept records keep their offsets, and
/// the batch still spans the records dropped, so the consumer's position moves past
/// them.
pub fn encode_batch_at(
    records: &[NewRecord],
    offset_deltas: &[i32],
    base_offset: i64,
    last_offset_delta: i32,
    compression: Compression,
) -> Result<Bytes, BatchError> {
    let batch = encode_batch_spanning(
        records,
        offset_deltas,
        last_offset_delta,
        compression,
        ProducerIdentity::NONE,
    )?;
    let mut bytes = BytesMut::from(&batch[..]);
    patch_batch(&mut bytes, base_offset, -1);
    Ok(bytes.freeze())
}

fn encode_batch_inner(
    mut out: BytesMut,
    records: &[NewRecord],
    offset_deltas: Option<&[i32]>,
    last_offset_delta: i32,
    compression: Compression,
    producer: ProducerIdentity,
) -> Result<Bytes, BatchError> {
    let delta = |i: usize| offset_deltas.map_or(i as i32, |d| d[i]);
    let base_timestamp = records.iter().map(|r| r.timestamp).min().unwrap_or(0);
    let max_timestamp = records.iter().map(|r| r.timestamp).max().unwrap_or(0);
    let records_len: usize = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let body = record_body_len(r, delta(i), r.timestamp - base_timestamp);
            varint_len(body as i32) + body
        })
        .sum();
    out.clear();
    out.reserve(BATCH_HEADER_LEN + records_len);
    out.put_i64(0);
    out.put_i32(0); // batch length, filled below.
    out.put_i32(-1);
    out.put_u8(MAGIC_V2);
    out.put_u32(0); // CRC, filled below.
    out.put_u16(compression.attribute_bits());
    out.put_i32(last_offset_delta);
    out.put_i64(base_timestamp);
    out.put_i64(max_timestamp);
    out.put_i64(producer.producer_id);
    out.put_i16(producer.producer_epoch);
    out.put_i32(producer.base_sequence);
    out.put_i32(records.len() as i32);
    match compression {
        Compression::None => encode_records(&mut out, records, &delta, base_timestamp),
        _ => {
            let mut raw = BytesMut::with_capacity(records_len);
            encode_records(&mut raw, records, &delta, base_timestamp);
            out.put_slice(&compress(compression, &raw)?);
        }
    }
    let batch_length = (out.len() - BATCH_LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(out.freeze())
}

/// Compresses encoded records with `compression` (not `None`), as the producer does.
fn compress(compression: Compression, raw: &[u8]) -> Result<Vec<u8>, BatchError> {
    let failed = |e: std::io::Error| BatchError::Decompress(e.to_string());
    match compression {
        Compression::None => Ok(raw.to_vec()),
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(raw.len() / 2),
                flate2::Compression::default(),
            );
            std::io::Write::write_all(&mut encoder, raw).map_err(failed)?;
            encoder.finish().map_err(failed)
        }
        Compression::Snappy => xerial_snappy(raw),
        Compression::Zstd => zstd::bulk::compress(raw, 3).map_err(failed),
        Compression::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(raw.len() / 2));
            std::io::Write::write_all(&mut encoder, raw).map_err(failed)?;
            encoder
                .finish()
                .map_err(|e| BatchError::Decompress(e.to_string()))
        }
    }
}

/// The header of snappy-java's stream format (its magic, version 1, compatible with 1),
/// which Kafka's Java client writes and every Kafka client reads.
const XERIAL_HEADER: [u8; 16] = [
    0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1,
];

/// Uncompressed bytes per block of the snappy-java stream format (its default).
const XERIAL_BLOCK: usize = 32 * 1024;

/// Snappy in snappy-java's stream format, as Kafka's Java client writes it: the
/// header, then per 32 KiB of input a big-endian length and a raw snappy block.
fn xerial_snappy(raw: &[u8]) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::with_capacity(XERIAL_HEADER.len() + raw.len() / 2);
    out.extend_from_slice(&XERIAL_HEADER);
    let mut encoder = snap::raw::Encoder::new();
    let mut block = vec![0; snap::raw::max_compress_len(XERIAL_BLOCK)];
    for chunk in raw.chunks(XERIAL_BLOCK) {
        let n = encoder
            .compress(chunk, &mut block)
            .map_err(|e| BatchError::Decompress(e.to_string()))?;
        out.extend_from_slice(&(n as u32).to_be_bytes());
        out.extend_from_slice(&block[..n]);
    }
    Ok(out)
}

/// Snappy as Kafka clients write it: snappy-java's stream format (Java, kafka-python)
/// or one raw snappy block (librdkafka's default). Each block's decompressed length is
/// read from its header and checked before anything is allocated for it.
fn unsnappy(body: &[u8]) -> Result<Bytes, BatchError> {
    let failed = |e: snap::Error| BatchError::Decompress(format!("snappy: {e}"));
    let mut blocks = Vec::new();
    if body.len() >= XERIAL_HEADER.len() && body[..8] == XERIAL_HEADER[..8] {
        let mut rest = &body[XERIAL_HEADER.len()..];
        while !rest.is_empty() {
            let Some((length, after)) = rest.split_first_chunk::<4>() else {
                return Err(BatchError::Decompress(
                    "snappy: truncated block length".into(),
                ));
            };
            let length = u32::from_be_bytes(*length) as usize;
            if length > after.len() {
                return Err(BatchError::Decompress(format!(
                    "snappy: block of {length} bytes, {} left",
                    after.len()
                )));
            }
            let (block, next) = after.split_at(length);
            blocks.push(block);
            rest = next;
        }
    } else {
        blocks.push(body);
    }
    let mut total = 0usize;
    for block in &blocks {
        total = total.saturating_add(snap::raw::decompress_len(block).map_err(failed)?);
    }
    if total > MAX_DECOMPRESSED_BATCH_BYTES {
        return Err(too_large());
    }
    let mut out = vec![0; total];
    let mut decoder = snap::raw::Decoder::new();
    let mut at = 0;
    for block in blocks {
        at += decoder.decompress(block, &mut out[at..]).map_err(failed)?;
    }
    out.truncate(at);
    Ok(Bytes::from(out))
}

fn encode_records(
    out: &mut BytesMut,
    records: &[NewRecord],
    delta: &impl Fn(usize) -> i32,
    base_timestamp: i64,
) {
    for (i, record) in records.iter().enumerate() {
        let offset_delta = delta(i);
        let timestamp_delta = record.timestamp - base_timestamp;
        let body_len = record_body_len(record, offset_delta, timestamp_delta);
        let before = out.len();
        put_varint(out, body_len as i32);
        let body_start = out.len();
        out.put_u8(0); // record attributes, unused
        put_varlong(out, timestamp_delta);
        put_varint(out, offset_delta);
        put_nullable_bytes(out, record.key.as_deref());
        put_nullable_bytes(out, record.value.as_deref());
        put_varint(out, record.headers.len() as i32);
        for header in &record.headers {
            put_varint(out, header.key.len() as i32);
            out.put_slice(header.key.as_bytes());
            put_nullable_bytes(out, header.value.as_deref());
        }
        debug_assert_eq!(
            out.len() - body_start,
            body_len,
            "record size computed wrongly"
        );
        debug_assert!(out.len() > before);
    }
}

fn varint_len(v: i32) -> usize {
    varlong_len(v as i64)
}

fn varlong_len(v: i64) -> usize {
    let mut raw = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 1;
    while raw >= 0x80 {
        raw >>= 7;
        n += 1;
    }
    n
}

fn nullable_len(value: Option<&[u8]>) -> usize {
    match value {
        None => varint_len(-1),
        Some(v) => varint_len(v.len() as i32) + v.len(),
    }
}

/// Encoded size of a record after its length prefix.
fn record_body_len(record: &NewRecord, offset_delta: i32, timestamp_delta: i64) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|h| varint_len(h.key.len() as i32) + h.key.len() + nullable_len(h.value.as_deref()))
        .sum();
    1 + varlong_len(timestamp_delta)
        + varint_len(offset_delta)
        + nullable_len(record.key.as_deref())
        + nullable_len(record.value.as_deref())
        + varint_len(record.headers.len() as i32)
        + headers
}

fn put_nullable_bytes(out: &mut BytesMut, value: Option<&[u8]>) {
    match value {
        None => put_varint(out, -1),
        Some(v) => {
            put_varint(out, v.len() as i32);
            out.put_slice(v);
        }
    }
}

/// Upper bound on the decompressed size of one batch's records, to stop a small
/// compressed batch from expanding without limit in a client.
pub const MAX_DECOMPRESSED_BATCH_BYTES: usize = 256 * 1024 * 1024;

/// Decodes all records of one validated batch (decompressing if needed).
pub fn decode_records(header: &BatchHeader, batch: &Bytes) -> Result<Vec<Record>, BatchError> {
    let raw = raw_records(header, batch)?;
    let count = header.records_count.max(0) as usize;
    // Each record takes at least 7 bytes, so this cannot over-allocate on a lying count.
    let mut records = Vec::with_capacity(count.min(raw.len() / 7 + 1));
    let mut cursor = raw;
    for _ in 0..count {
        records.push(decode_record(&mut cursor, header)?);
    }
    Ok(records)
}

/// The records section of a batch, decompressed when needed.
fn raw_records(header: &BatchHeader, batch: &Bytes) -> Result<Bytes, BatchError> {
    let body = batch.slice(BATCH_HEADER_LEN..);
    Ok(match header.compression()? {
        Compression::None => body,
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::new(&body[..])
                .map_err(|e| BatchError::Decompress(e.to_string()))?;
            read_bounded(&mut decoder)?
        }
        Compression::Lz4 => {
            let mut decoder = lz4_flex::frame::FrameDecoder::new(&body[..]);
            read_bounded(&mut decoder)?
        }
        // A gzip stream may hold several members, as Java's GZIPInputStream reads.
        Compression::Gzip => read_bounded(&mut flate2::read::MultiGzDecoder::new(&body[..]))?,
        Compression::Snappy => unsnappy(&body)?,
    })
}

/// What compaction needs to know about one record, borrowed from the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordSummary<'a> {
    pub offset: i64,
    /// The record's timestamp, or the batch's max timestamp under LogAppendTime.
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    /// A null value: a tombstone in a compacted topic.
    pub is_tombstone: bool,
}

/// What [`retain_records`] made of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retained {
    /// Every record was kept: the batch is unchanged.
    All,
    /// No record was kept: the batch goes.
    Nothing,
    /// A rewritten batch holding only the kept records.
    Some(Bytes),
}

/// Calls `f` for every record of a validated batch, in order, without allocating per
/// record (compressed batches are decompressed once).
pub fn for_each_record(
    header: &BatchHeader,
    batch: &Bytes,
    mut f: impl FnMut(&RecordSummary<'_>),
) -> Result<(), BatchError> {
    let raw = raw_records(header, batch)?;
    walk_records(header, &raw, |_, summary| f(summary))
}

/// Keeps the records of a validated batch for which `keep` says yes.
///
/// A rewritten batch keeps everything that makes offsets and timestamps stable: base
/// offset, last offset delta (so the batch still ends where it did and a consumer
/// moves past it), base timestamp, producer fields and every kept record's bytes
/// (their offset and timestamp deltas are relative to the unchanged base). Records
/// count, batch length and max timestamp are updated, a compressed batch is
/// re-compressed with the same codec, and the CRC is recomputed.
pub fn retain_records(
    header: &BatchHeader,
    batch: &Bytes,
    mut keep: impl FnMut(&RecordSummary<'_>) -> bool,
) -> Result<Retained, BatchError> {
    let raw = raw_records(header, batch)?;
    let mut kept = Vec::new();
    let mut n_kept = 0i32;
    let mut all = true;
    let mut max_timestamp = i64::MIN;
    walk_records(header, &raw, |record_bytes, summary| {
        if keep(summary) {
            n_kept += 1;
            max_timestamp = max_timestamp.max(summary.timestamp);
            kept.extend_from_slice(record_bytes);
        } else {
            all = false;
        }
    })?;
    if all {
        return Ok(Retained::All);
    }
    if n_kept == 0 {
        return Ok(Retained::Nothing);
    }
    let compression = header.compression()?;
    let records = match compression {
        Compression::None => kept,
        _ => compress(compression, &kept)?,
    };
    let mut out = BytesMut::with_capacity(BATCH_HEADER_LEN + records.len());
    out.put_slice(&batch[..BATCH_HEADER_LEN]);
    out.put_slice(&records);
    let batch_length = (out.len() - BATCH_LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    out[35..43].copy_from_slice(&max_timestamp.to_be_bytes());
    out[57..61].copy_from_slice(&n_kept.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(Retained::Some(out.freeze()))
}

/// Reads a zigzag varint from the front of `buf`, advancing it.
fn take_varlong(buf: &mut &[u8]) -> Result<i64, BatchError> {
    let mut raw = 0u64;
    for i in 0..10 {
        let Some((&byte, rest)) = buf.split_first() else {
            return Err(BatchError::Record("truncated varint".into()));
        };
        *buf = rest;
        raw |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
    }
    Err(BatchError::Record("varint longer than 10 bytes".into()))
}

/// Walks the records of a batch's (decompressed) records section, giving each
/// record's full bytes (length prefix included) and its summary.
fn walk_records(
    header: &BatchHeader,
    raw: &[u8],
    mut f: impl FnMut(&[u8], &RecordSummary<'_>),
) -> Result<(), BatchError> {
    let log_append_time = header.attributes & LOG_APPEND_TIME != 0;
    let mut cursor = raw;
    for _ in 0..header.records_count.max(0) {
        let record_start = cursor;
        let length = take_varlong(&mut cursor)?;
        if length < 1 || length as usize > cursor.len() {
            return Err(BatchError::Record(format!(
                "record length {length} exceeds batch"
            )));
        }
        let prefix_len = record_start.len() - cursor.len();
        let record_bytes = &record_start[..prefix_len + length as usize];
        let mut body = &cursor[1..length as usize];
        cursor = &cursor[length as usize..];
        let timestamp_delta = take_varlong(&mut body)?;
        let offset_delta = take_varlong(&mut body)?;
        if !(0..=header.last_offset_delta as i64).contains(&offset_delta) {
            return Err(BatchError::Record(format!(
                "offset delta {offset_delta} outside the batch"
            )));
        }
        let key_len = take_varlong(&mut body)?;
        let key = if key_len < 0 {
            None
        } else if key_len as usize > body.len() {
            return Err(BatchError::Record(format!(
                "key of {key_len} bytes exceeds record"
            )));
        } else {
            let (key, rest) = body.split_at(key_len as usize);
            body = rest;
            Some(key)
        };
        let value_len = take_varlong(&mut body)?;
        let summary = RecordSummary {
            offset: header.base_offset + offset_delta,
            timestamp: if log_append_time {
                header.max_timestamp
            } else {
                header.base_timestamp.saturating_add(timestamp_delta)
            },
            key,
            is_tombstone: value_len < 0,
        };
        f(record_bytes, &summary);
    }
    Ok(())
}

fn read_bounded(reader: &mut impl std::io::Read) -> Result<Bytes, BatchError> {
    let mut out = Vec::new();
    let mut limited = std::io::Read::take(reader, MAX_DECOMPRESSED_BATCH_BYTES as u64 + 1);
    std::io::Read::read_to_end(&mut limited, &mut out)
        .map_err(|e| BatchError::Decompress(e.to_string()))?;
    if out.len() > MAX_DECOMPRESSED_BATCH_BYTES {
        return Err(too_large());
    }
    Ok(Bytes::from(out))
}

fn too_large() -> BatchError {
    BatchError::Decompress(format!(
        "decompressed batch exceeds {MAX_DECOMPRESSED_BATCH_BYTES} bytes"
    ))
}

fn decode_record(cursor: &mut Bytes, header: &BatchHeader) -> Result<Record, BatchError> {
    let length = get_varint(cursor)?;
    if length < 0 || length as usize > cursor.len() {
        return Err(BatchError::Record(format!(
            "record length {length} exceeds batch"
        )));
    }
    let mut body = cursor.split_to(length as usize);
    if body.is_empty() {
        return Err(BatchError::Record("empty record".into()));
    }
    let _attributes = body.split_to(1);
    let timestamp_delta = get_varlong(&mut body)?;
    let offset_delta = get_varint(&mut body)?;
    let key = get_nullable_bytes(&mut body)?;
    let value = get_nullable_bytes(&mut body)?;
    let n_headers = get_varint(&mut body)?;
    if n_headers < 0 || n_headers as usize > body.len() {
        return Err(BatchError::Record(format!("bad header count {n_headers}")));
    }
    let mut headers = Vec::with_capacity(n_headers as usize);
    for _ in 0..n_headers {
        let key = get_nullable_bytes(&mut body)?
            .ok_or_else(|| BatchError::Record("null header key".into()))?;
        let key = String::from_utf8(key.to_vec())
            .map_err(|_| BatchError::Record("header key not UTF-8".into()))?;
        let value = get_nullable_bytes(&mut body)?;
        headers.push(Header { key, value });
    }
    Ok(Record {
        offset: header.base_offset.saturating_add(offset_delta as i64),
        // As Kafka's readers: a LogAppendTime batch's records all carry the time the
        // broker appended it.
        timestamp: if header.attributes & LOG_APPEND_TIME != 0 {
            header.max_timestamp
        } else {
            header.base_timestamp.saturating_add(timestamp_delta)
        },
        key,
        value,
        headers,
    })
}

fn get_nullable_bytes(cursor: &mut Bytes) -> Result<Option<Bytes>, BatchError> {
    let len = get_varint(cursor)?;
    if len < 0 {
        return Ok(None);
    }
    let len = len as usize;
    if len > cursor.len() {
        return Err(BatchError::Record(format!(
            "field of {len} bytes exceeds record"
        )));
    }
    Ok(Some(cursor.split_to(len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(key: Option<&str>, value: &str, timestamp: i64) -> NewRecord {
        NewRecord {
            timestamp,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: vec![Header {
                key: "h".into(),
                value: Some(Bytes::from_static(b"v")),
            }],
        }
    }

    #[test]
    fn a_batch_buffer_handed_back_is_encoded_into_again() {
        let big: Vec<NewRecord> = (0..100)
            .map(|i| record(None, &"x".repeat(500), i))
            .collect();
        let first = encode_batch(&big, Compression::None, ProducerIdentity::NONE).unwrap();
        let at = first.as_ptr();
        let buffer = first.try_into_mut().expect("nothing else holds it");
        assert!(buffer.capacity() >= 50_000);
        let small = [record(Some("k"), "v", 7)];
        for compression in [Compression::None, Compression::Zstd] {
            let again =
                encode_batch_in(buffer.clone(), &small, compression, ProducerIdentity::NONE)
                    .unwrap();
            let fresh = encode_batch(&small, compression, ProducerIdentity::NONE).unwrap();
            assert_eq!(again, fresh, "{compression:?}");
        }
        let reused =
            encode_batch_in(buffer, &small, Compression::None, ProducerIdentity::NONE).unwrap();
        assert_eq!(reused.as_ptr(), at, "the same memory, not a new allocation");
    }

    #[test]
    fn retain_records_keeps_offsets_and_codec() {
        for compression in Compression::ALL {
            let records: Vec<NewRecord> = (0..5)
                .map(|i| {
                    let mut r = record(Some(&format!("k{}", i % 2)), &format!("v{i}"), 100 + i);
                    if i == 3 {
                        r.value = None;
                    }
                    r
                })
                .collect();
            let mut bytes = encode_batch(&records, compression, ProducerIdentity::NONE)
                .unwrap()
                .to_vec();
            patch_batch(&mut bytes, 40, 0);
            let batch = Bytes::from(bytes);
            let header = BatchHeader::parse(&batch).unwrap();
            let mut seen = Vec::new();
            for_each_record(&header, &batch, |r| {
                seen.push((
                    r.offset,
                    r.timestamp,
                    r.key.unwrap().to_vec(),
                    r.is_tombstone,
                ))
            })
            .unwrap();
            assert_eq!(seen.len(), 5);
            assert_eq!(seen[3], (43, 103, b"k1".to_vec(), true));
            assert_eq!(
                retain_records(&header, &batch, |_| true).unwrap(),
                Retained::All
            );
            assert_eq!(
                retain_records(&header, &batch, |_| false).unwrap(),
                Retained::Nothing
            );
            let Retained::Some(rewritten) =
                retain_records(&header, &batch, |r| r.offset == 41 || r.offset == 43).unwrap()
            else {
                panic!("expected a rewritten batch");
            };
            let new_header = BatchHeader::parse(&rewritten).unwrap();
            new_header.validate(&rewritten).unwrap();
            assert_eq!(new_header.compression().unwrap(), compression);
            assert_eq!(new_header.base_offset, 40);
            assert_eq!(
                new_header.last_offset(),
                44,
                "the batch still ends where it did"
            );
            assert_eq!(new_header.records_count, 2);
            assert_eq!(new_header.base_timestamp, 100);
            assert_eq!(new_header.max_timestamp, 103);
            let decoded = decode_records(&new_header, &rewritten).unwrap();
            let got: Vec<_> = decoded
                .iter()
                .map(|r| (r.offset, r.timestamp, r.value.clone()))
                .collect();
            assert_eq!(
                got,
                vec![(41, 101, Some(Bytes::from_static(b"v1"))), (43, 103, None)]
            );
        }
    }

    #[test]
    fn patching_keeps_the_crc_valid() {
        let batch = encode_batch(
            &[record(Some("k"), "v", 10)],
            Compression::None,
            ProducerIdentity::NONE,
        )
        .unwrap();
        let mut bytes = batch.to_vec();
        patch_batch(&mut bytes, 4242, 7);
        let header = BatchHeader::parse(&bytes).unwrap();
        header.validate(&bytes).unwrap();
        assert_eq!(header.base_offset, 4242);
        assert_eq!(header.partition_leader_epoch, 7);
    }

    #[test]
    fn a_flipped_bit_is_caught_by_the_crc() {
        let batch = encode_batch(
            &[record(None, "hello", 1)],
            Compression::None,
            ProducerIdentity::NONE,
        )
        .unwrap();
        let mut bytes = batch.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let header = BatchHeader::parse(&bytes).unwrap();
        assert!(matches!(
            header.validate(&bytes),
            Err(BatchError::BadCrc { .. })
        ));
    }

    #[test]
    fn header_parse_rejects_short_and_bad_magic() {
        assert!(matches!(
            BatchHeader::parse(&[0; 10]),
            Err(BatchError::Truncated { .. })
        ));
        let mut bytes = encode_batch(
            &[record(None, "x", 1)],
            Compression::None,
            ProducerIdentity::NONE,
        )
        .unwrap()
        .to_vec();
        bytes[MAGIC_OFFSET] = 1;
        assert_eq!(BatchHeader::parse(&bytes), Err(BatchError::BadMagic(1)));
    }

    #[test]
    fn split_stops_at_first_bad_batch() {
        let a = encode_batch(
            &[record(None, "a", 1)],
            Compression::None,
            ProducerIdentity::NONE,
        )
        .unwrap();
        let b = encode_batch(
            &[record(None, "b", 1)],
            Compression::None,
            ProducerIdentity::NONE,
        )
        .unwrap();
        let mut joined = BytesMut::new();
        joined.put_slice(&a);
        joined.put_slice(&b[..b.len() - 3]);
        let results: Vec<_> = split_batches(joined.clone().freeze()).collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(BatchError::Truncated { .. })));
        let fetched: Vec<_> = split_fetched_batches(joined.freeze()).collect();
        assert_eq!(fetched.len(), 1);
    }

    fn arb_record() -> impl Strategy<Value = NewRecord> {
        (
            0i64..1_000_000_000,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            proptest::collection::vec(
                (
                    "[a-z]{0,8}",
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
                ),
                0..3,
            ),
        )
            .prop_map(|(timestamp, key, value, headers)| NewRecord {
                timestamp,
                key: key.map(Bytes::from),
                value: value.map(Bytes::from),
                headers: headers
                    .into_iter()
                    .map(|(key, value)| Header {
                        key,
                        value: value.map(Bytes::from),
                    })
                    .collect(),
            })
    }

    /// A batch whose records section is `body`, compressed with `codec` by hand.
    fn batch_with_body(codec: Compression, records: i32, body: &[u8]) -> Bytes {
        let plain = encode_batch(
            &[record(None, "x", 1)],
            Compression::None,
            ProducerIdentity::NONE,
        )
        .unwrap();
        let mut bytes = plain[..BATCH_HEADER_LEN].to_vec();
        bytes.extend_from_slice(body);
        let attributes =
            (u16::from_be_bytes([bytes[21], bytes[22]]) & !0x7) | codec.attribute_bits();
        bytes[21..23].copy_from_slice(&attributes.to_be_bytes());
        bytes[23..27].copy_from_slice(&(records - 1).to_be_bytes());
        bytes[57..61].copy_from_slice(&records.to_be_bytes());
        let length = (bytes.len() - BATCH_LOG_OVERHEAD) as i32;
        bytes[8..12].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[CRC_START..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(bytes)
    }

    fn values(batch: &Bytes) -> Result<Vec<Bytes>, BatchError> {
        let header = BatchHeader::parse(batch).unwrap();
        header.validate(batch).unwrap();
        Ok(decode_records(&header, batch)?
            .into_iter()
            .map(|r| r.value.unwrap())
            .collect())
    }

    #[test]
    fn snappy_reads_snappy_java_streams_and_raw_blocks() {
        // Records over several 32 KiB blocks, so the stream format has more than one.
        let records: Vec<NewRecord> = (0..40)
            .map(|i| record(None, &format!("{i:0>2}").repeat(1000), i))
            .collect();
        let written = encode_batch(&records, Compression::Snappy, ProducerIdentity::NONE).unwrap();
        let body = &written[BATCH_HEADER_LEN..];
        assert_eq!(
            &body[..16],
            &XERIAL_HEADER,
            "snappy-java's stream format, as Java writes"
        );
        let want: Vec<Bytes> = records.iter().map(|r| r.value.clone().unwrap()).collect();
        assert_eq!(values(&written).unwrap(), want);

        // librdkafka's default: the records section as one raw snappy block.
        let raw = raw_records(&BatchHeader::parse(&written).unwrap(), &written).unwrap();
        let block = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
        assert_eq!(
            values(&batch_with_body(Compression::Snappy, 40, &block)).unwrap(),
            want
        );

        // A block length past the end, and a block that is not snappy: typed errors.
        let mut cut = XERIAL_HEADER.to_vec();
        cut.extend_from_slice(&1000u32.to_be_bytes());
        cut.extend_from_slice(b"short");
        let err = values(&batch_with_body(Compression::Snappy, 1, &cut)).unwrap_err();
        assert!(
            matches!(&err, BatchError::Decompress(m) if m.contains("block of 1000 bytes")),
            "{err}"
        );
        let err = values(&batch_with_body(
            Compression::Snappy,
            1,
            b"\xff\xff\xff\xff\x0fjunk",
        ))
        .unwrap_err();
        assert!(matches!(err, BatchError::Decompress(_)), "{err}");
    }

    #[test]
    fn snappy_and_gzip_refuse_to_inflate_past_the_limit_before_allocating() {
        // A raw snappy block whose header claims more than the limit allows.
        let mut claim = Vec::new();
        let mut n = (MAX_DECOMPRESSED_BATCH_BYTES + 1) as u64;
        while n >= 0x80 {
            claim.push((n as u8) | 0x80);
            n >>= 7;
        }
        claim.push(n as u8);
        let err = values(&batch_with_body(Compression::Snappy, 1, &claim)).unwrap_err();
        assert_eq!(err, too_large());

        // Gzip of more zeros than the limit: read up to it and no further.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..=MAX_DECOMPRESSED_BATCH_BYTES >> 20 {
            std::io::Write::write_all(&mut encoder, &zeros).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        assert!(
            bomb.len() * 100 < MAX_DECOMPRESSED_BATCH_BYTES,
            "{}",
            bomb.len()
        );
        let err = values(&batch_with_body(Compression::Gzip, 1, &bomb)).unwrap_err();
        assert_eq!(err, too_large());
    }

    #[test]
    fn gzip_reads_every_member_of_a_stream() {
        let records: Vec<NewRecord> = (0..6).map(|i| record(None, &format!("v{i}"), i)).collect();
        let plain = encode_batch(&records, Compression::None, ProducerIdentity::NONE).unwrap();
        let raw = &plain[BATCH_HEADER_LEN..];
        // Two gzip members, as a writer that restarts its stream may leave.
        let (first, second) = raw.split_at(raw.len() / 2);
        let mut body = Vec::new();
        for part in [first, second] {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut encoder, part).unwrap();
            body.extend(encoder.finish().unwrap());
        }
        let got = values(&batch_with_body(Compression::Gzip, 6, &body)).unwrap();
        let want: Vec<Bytes> = records.iter().map(|r| r.value.clone().unwrap()).collect();
        assert_eq!(got, want);
    }

    proptest! {
        #[test]
        fn records_round_trip_through_every_codec(
            records in proptest::collection::vec(arb_record(), 1..30),
            codec in proptest::sample::select(Compression::ALL.to_vec()),
            base_offset in 0i64..1 << 40,
        ) {
            let batch = encode_batch(&records, codec, ProducerIdentity::NONE).unwrap();
            let mut bytes = batch.to_vec();
            patch_batch(&mut bytes, base_offset, 3);
            let bytes = Bytes::from(bytes);
            let header = BatchHeader::parse(&bytes).unwrap();
            header.validate(&bytes).unwrap();
            prop_assert_eq!(header.compression().unwrap(), codec);
            let decoded = decode_records(&header, &bytes).unwrap();
            prop_assert_eq!(decoded.len(), records.len());
            for (i, (got, want)) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(got.offset, base_offset + i as i64);
                prop_assert_eq!(got.timestamp, want.timestamp);
                prop_assert_eq!(&got.key, &want.key);
                prop_assert_eq!(&got.value, &want.value);
                prop_assert_eq!(&got.headers, &want.headers);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_parser(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let bytes = Bytes::from(bytes);
            for (header, batch) in split_batches(bytes).flatten() {
                let _ = decode_records(&header, &batch);
            }
        }
    }

    #[test]
    fn batch_at_offsets_keeps_gaps_and_spans_dropped_records() {
        let record = |v: &'static str| NewRecord {
            timestamp: 5,
            key: None,
            value: Some(Bytes::from_static(v.as_bytes())),
            headers: vec![],
        };
        for compression in Compression::ALL {
            let batch =
                encode_batch_at(&[record("a"), record("b")], &[1, 3], 100, 4, compression).unwrap();
            let header = BatchHeader::parse(&batch).unwrap();
            header.validate(&batch).unwrap();
            assert_eq!((header.base_offset, header.last_offset()), (100, 104));
            let offsets: Vec<i64> = decode_records(&header, &batch)
                .unwrap()
                .iter()
                .map(|r| r.offset)
                .collect();
            assert_eq!(offsets, [101, 103]);
        }
        let empty = encode_batch_at(&[], &[], 7, 2, Compression::None).unwrap();
        let header = BatchHeader::parse(&empty).unwrap();
        header.validate(&empty).unwrap();
        assert_eq!(header.last_offset(), 9);
        assert!(decode_records(&header, &empty).unwrap().is_empty());
    }
}
