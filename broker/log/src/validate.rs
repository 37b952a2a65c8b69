//! Validation of produced batches, done by the server outside the partition lock.

use bytes::{Bytes, BytesMut};
use meridian_wire::batch::{
    for_each_record, set_log_append_time, BatchError, BatchHeader, BATCH_HEADER_LEN,
    LOG_APPEND_TIME,
};

use crate::LogError;

/// Batches that passed validation (magic, length, CRC-32C, codec, offset delta, size
/// limit), ready for [`crate::PartitionLog::append`].
#[derive(Clone, Debug)]
pub struct ValidatedBatches {
    /// All batches back to back, exactly as received.
    pub(crate) bytes: Bytes,
    /// One header per batch, in order. Never empty.
    pub(crate) headers: Vec<BatchHeader>,
}

impl ValidatedBatches {
    /// These batches stamped with the broker's clock, `now_ms` (a LogAppendTime
    /// topic; see `meridian_wire::batch::set_log_append_time`): one copy of the
    /// bytes, each header and its CRC rewritten.
    pub fn with_log_append_time(self, now_ms: i64) -> ValidatedBatches {
        let mut bytes = BytesMut::from(&self.bytes[..]);
        let mut headers = self.headers;
        let mut at = 0;
        for header in &mut headers {
            let batch = &mut bytes[at..at + header.total_len()];
            set_log_append_time(batch, now_ms);
            header.attributes |= LOG_APPEND_TIME;
            header.max_timestamp = now_ms;
            header.crc = u32::from_be_bytes([batch[17], batch[18], batch[19], batch[20]]);
            at += header.total_len();
        }
        ValidatedBatches {
            bytes: bytes.freeze(),
            headers,
        }
    }

    pub fn n_batches(&self) -> usize {
        self.headers.len()
    }

    pub fn n_records(&self) -> u64 {
        self.headers.iter().map(|h| h.records_count as u64).sum()
    }

    pub fn total_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Each batch with its header, in order (no parsing or CRC check again).
    pub fn batches(&self) -> impl Iterator<Item = (BatchHeader, Bytes)> + '_ {
        let mut position = 0;
        self.headers.iter().map(move |header| {
            let end = position + header.total_len();
            let batch = self.bytes.slice(position..end);
            position = end;
            (*header, batch)
        })
    }

    /// Offsets the batches take in the log (each batch takes `last_offset_delta + 1`).
    pub(crate) fn n_offsets(&self) -> i64 {
        self.headers
            .iter()
            .map(|h| h.last_offset_delta as i64 + 1)
            .sum()
    }
}

/// Refuses batches holding a record without a key, as a compacted topic must (the
/// cleaner keeps the latest record per key; a key-less record has none). Decodes
/// (and decompresses) every batch, so the server calls it only for compacted topics,
/// outside the partition lock.
pub fn require_keys(batches: &ValidatedBatches) -> Result<(), LogError> {
    let mut rest = batches.bytes.clone();
    for header in &batches.headers {
        let batch = rest.split_to(header.total_len());
        let mut missing = None;
        for_each_record(header, &batch, |record| {
            if record.key.is_none() && missing.is_none() {
                missing = Some(record.offset - header.base_offset);
            }
        })?;
        if let Some(offset_delta) = missing {
            return Err(LogError::MissingKey { offset_delta });
        }
    }
    Ok(())
}

/// Refuses batches dated too far from `now_ms`: a newest timestamp (the header's
/// `max_timestamp`, what time retention and the time index go by) more than
/// `after_max_ms` ahead, or a first timestamp more than `before_max_ms` behind
/// (Kafka's `message.timestamp.after.max.ms` and `…before.max.ms`). A timestamp of
/// -1 (none) passes. Reads only the headers.
pub fn check_timestamps(
    batches: &ValidatedBatches,
    now_ms: i64,
    before_max_ms: u64,
    after_max_ms: u64,
) -> Result<(), LogError> {
    for header in &batches.headers {
        let bounds = [
            (
                "newest",
                header.max_timestamp,
                header.max_timestamp.saturating_sub(now_ms),
                "ahead of",
                "message.timestamp.after.max.ms",
                after_max_ms,
            ),
            (
                "first",
                header.base_timestamp,
                now_ms.saturating_sub(header.base_timestamp),
                "behind",
                "message.timestamp.before.max.ms",
                before_max_ms,
            ),
        ];
        for (which, timestamp, distance, direction, key, limit_ms) in bounds {
            if timestamp != -1 && distance > 0 && distance as u64 > limit_ms {
                return Err(LogError::InvalidTimestamp {
                    which,
                    timestamp,
                    distance_ms: distance as u64,
                    direction,
                    key,
                    limit_ms,
                });
            }
        }
    }
    Ok(())
}

/// Validates one or more back-to-back v2 batches (as in a produce request).
/// All-or-nothing: any bad batch is an error. Empty input is a `Truncated` error.
///
/// Besides what [`BatchHeader::validate`] checks, a produced batch must hold at least
/// one record and its last offset delta must be `records_count - 1` (producers never
/// send compacted batches), so a batch takes exactly one offset per record; and a
/// batch from an idempotent producer must come alone (as Kafka requires).
pub fn validate_batches(
    records: &Bytes,
    max_message_bytes: u32,
) -> Result<ValidatedBatches, LogError> {
    let batches = validate(records, max_message_bytes, |header| {
        if header.records_count < 1 || header.last_offset_delta != header.records_count - 1 {
            return Err(BatchError::BadOffsetDelta {
                records: header.records_count,
                last_offset_delta: header.last_offset_delta,
            }
            .into());
        }
        Ok(())
    })?;
    if batches.headers.len() > 1 && batches.headers.iter().any(|h| h.producer_id >= 0) {
        return Err(LogError::IdempotentBatchNotAlone);
    }
    Ok(batches)
}

/// Validates batches the broker rewrote from a produce (a plugin chain dropped,
/// changed or added records): like [`validate_batches`], except that a batch may
/// span offsets it holds no record for, down to none at all (the records a filter
/// dropped keep their offsets and sequence numbers), and an idempotent producer's
/// batch may be followed by producer-less ones (records a transform added beyond
/// what the producer's batch spans).
pub fn validate_rewritten_batches(
    records: &Bytes,
    max_message_bytes: u32,
) -> Result<ValidatedBatches, LogError> {
    validate(records, max_message_bytes, |_| Ok(()))
}

fn validate(
    records: &Bytes,
    max_message_bytes: u32,
    check: impl Fn(&BatchHeader) -> Result<(), LogError>,
) -> Result<ValidatedBatches, LogError> {
    if records.is_empty() {
        return Err(BatchError::Truncated {
            needed: BATCH_HEADER_LEN,
            available: 0,
        }
        .into());
    }
    let mut rest = records.clone();
    let mut headers = Vec::new();
    while !rest.is_empty() {
        let header = BatchHeader::parse(&rest)?;
        let total = header.total_len();
        // Size first: no point computing the CRC of something we refuse anyway.
        if total > max_message_bytes as usize {
            return Err(LogError::MessageTooLarge {
                size: total,
                limit: max_message_bytes,
            });
        }
        if rest.len() < total {
            return Err(BatchError::Truncated {
                needed: total,
                available: rest.len(),
            }
            .into());
        }
        let batch = rest.split_to(total);
        header.validate(&batch)?;
        check(&header)?;
        headers.push(header);
    }
    Ok(ValidatedBatches {
        bytes: records.clone(),
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_wire::batch::{encode_batch, Compression, NewRecord, ProducerIdentity};

    fn batch(n: usize, value_len: usize) -> Bytes {
        let records: Vec<NewRecord> = (0..n)
            .map(|i| NewRecord {
                timestamp: i as i64,
                key: None,
                value: Some(Bytes::from(vec![b'x'; value_len])),
                headers: vec![],
            })
            .collect();
        encode_batch(&records, Compression::None, ProducerIdentity::NONE).unwrap()
    }

    fn join(parts: &[Bytes]) -> Bytes {
        Bytes::from(parts.concat())
    }

    /// Stamped batches: the attribute set, the max timestamp the clock's, the CRC
    /// right (they validate again), the records' bytes unchanged, and every record
    /// read with the stamped time.
    #[test]
    fn log_append_time_stamps_every_batch() {
        let (a, b) = (batch(3, 10), batch(2, 20));
        let both = join(&[a.clone(), b.clone()]);
        let stamped = validate_batches(&both, 1 << 20)
            .unwrap()
            .with_log_append_time(1_234);
        let again = validate_batches(&stamped.bytes, 1 << 20).unwrap();
        assert_eq!(again.headers, stamped.headers);
        for header in &again.headers {
            assert_eq!(header.attributes & LOG_APPEND_TIME, LOG_APPEND_TIME);
            assert_eq!(header.max_timestamp, 1_234);
            assert_eq!(header.base_timestamp, 0);
        }
        assert_eq!(
            stamped.bytes[a.len() + BATCH_HEADER_LEN..],
            b[BATCH_HEADER_LEN..]
        );
        let mut times = Vec::new();
        for_each_record(&again.headers[0], &stamped.bytes.slice(..a.len()), |r| {
            times.push(r.timestamp)
        })
        .unwrap();
        assert_eq!(times, [1_234; 3]);
        let records = meridian_wire::batch::decode_records(
            &again.headers[1],
            &stamped.bytes.slice(a.len()..),
        )
        .unwrap();
        let times: Vec<i64> = records.iter().map(|r| r.timestamp).collect();
        assert_eq!(times, [1_234; 2]);
    }

    /// Timestamps 0, 1, 2: the newest 2, the first 0.
    #[test]
    fn timestamps_far_from_the_clock_are_refused() {
        let v = validate_batches(&batch(3, 10), 1 << 20).unwrap();
        let outcome =
            |now: i64, before: u64, after: u64| match check_timestamps(&v, now, before, after) {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("{:?} {e}", e.code()),
            };
        assert_eq!(outcome(1, u64::MAX, 1), "ok");
        assert_eq!(
            outcome(1, u64::MAX, 0),
            "InvalidTimestamp a batch's newest timestamp 2 is 1 ms ahead of the broker's clock; message.timestamp.after.max.ms allows 0 ms"
        );
        assert_eq!(outcome(1_000, 1_000, 0), "ok");
        assert_eq!(
            outcome(1_000, 999, 0),
            "InvalidTimestamp a batch's first timestamp 0 is 1000 ms behind the broker's clock; message.timestamp.before.max.ms allows 999 ms"
        );
        // No timestamp (-1) passes either bound.
        let none: Vec<NewRecord> = vec![NewRecord {
            timestamp: -1,
            key: None,
            value: Some(Bytes::from_static(b"x")),
            headers: vec![],
        }];
        let none = encode_batch(&none, Compression::None, ProducerIdentity::NONE).unwrap();
        let v = validate_batches(&none, 1 << 20).unwrap();
        assert!(check_timestamps(&v, 1_000, 0, 0).is_ok());
    }

    #[test]
    fn validation_cases() {
        let a = batch(3, 10);
        let b = batch(1, 100);
        let mut flipped = a.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        let mut zero_records = a.to_vec();
        zero_records[57..61].copy_from_slice(&0i32.to_be_bytes());
        let mut bad_codec = a.to_vec();
        bad_codec[22] = 5; // no codec of Kafka's; the CRC recomputed so the codec check is reached
        let crc = crc32c::crc32c(&bad_codec[21..]);
        bad_codec[17..21].copy_from_slice(&crc.to_be_bytes());

        let check = |input: Bytes, limit: u32, expected: &str| {
            let got = match validate_batches(&input, limit) {
                Ok(v) => format!(
                    "ok {} batches {} records {} bytes",
                    v.n_batches(),
                    v.n_records(),
                    v.total_bytes()
                ),
                Err(e) => format!("{:?}", e.code()),
            };
            assert_eq!(got, expected);
        };
        check(
            a.clone(),
            1 << 20,
            &format!("ok 1 batches 3 records {} bytes", a.len()),
        );
        check(
            join(&[a.clone(), b.clone()]),
            1 << 20,
            &format!("ok 2 batches 4 records {} bytes", a.len() + b.len()),
        );
        check(Bytes::new(), 1 << 20, "CorruptMessage");
        check(
            join(&[a.clone(), b.slice(..b.len() - 1)]),
            1 << 20,
            "CorruptMessage",
        );
        check(Bytes::from(flipped), 1 << 20, "CorruptMessage");
        check(Bytes::from(zero_records), 1 << 20, "CorruptMessage");
        check(Bytes::from(bad_codec), 1 << 20, "UnsupportedCompression");
        check(
            join(&[a.clone(), b.clone()]),
            b.len() as u32 - 1,
            "MessageTooLarge",
        );
        check(
            b.clone(),
            b.len() as u32,
            &format!("ok 1 batches 1 records {} bytes", b.len()),
        );
    }
}
