//! Shared helpers: building batches, appending them, reading everything back.

use bytes::Bytes;
use meridian_log::{validate_batches, AppendInfo, LogConfig, PartitionLog};
use meridian_wire::batch::{
    encode_batch, patch_batch, split_batches, BatchHeader, Compression, NewRecord, ProducerIdentity,
};

pub const EPOCH: i32 = 7;

/// A batch of records with the given timestamps and `value_len`-byte values.
pub fn batch_with_timestamps(timestamps: &[i64], value_len: usize) -> Bytes {
    let records: Vec<NewRecord> = timestamps
        .iter()
        .enumerate()
        .map(|(i, &timestamp)| NewRecord {
            timestamp,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(vec![b'a' + (i % 26) as u8; value_len])),
            headers: vec![],
        })
        .collect();
    encode_batch(&records, Compression::None, ProducerIdentity::NONE).unwrap()
}

pub fn batch(n_records: usize, value_len: usize, timestamp: i64) -> Bytes {
    batch_with_timestamps(&vec![timestamp; n_records], value_len)
}

/// Small segments and a small index interval, so tests cross many of both.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        retention_ms: None,
        ..LogConfig::default()
    }
}

pub fn append(log: &mut PartitionLog, batch: &Bytes, now_ms: i64) -> AppendInfo {
    let validated = validate_batches(batch, log.config().max_message_bytes).unwrap();
    log.append(validated, EPOCH, now_ms).unwrap()
}

/// What a batch looks like on disk once appended at `base_offset`.
pub fn as_stored(batch: &Bytes, base_offset: i64) -> Bytes {
    let mut bytes = batch.to_vec();
    patch_batch(&mut bytes, base_offset, EPOCH);
    Bytes::from(bytes)
}

/// Reads the whole log from its start, batch by batch, following `read`.
pub fn read_all(log: &PartitionLog) -> Vec<(BatchHeader, Bytes)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while let Some(slice) = log.read(offset, 1000).unwrap() {
        let bytes = slice.read().unwrap();
        assert_eq!(bytes.len(), slice.len());
        for result in split_batches(bytes) {
            let (header, batch) = result.unwrap();
            // Dense, except where compaction removed a batch.
            assert!(header.base_offset >= offset, "batches go forwards");
            offset = header.last_offset() + 1;
            out.push((header, batch));
        }
    }
    assert_eq!(offset, log.log_end_offset());
    out
}

/// Base offsets of the batches in one planned read.
pub fn read_bases(log: &PartitionLog, offset: i64, max_bytes: u32) -> Vec<i64> {
    let Some(slice) = log.read(offset, max_bytes).unwrap() else {
        return vec![];
    };
    split_batches(slice.read().unwrap())
        .map(|r| r.unwrap().0.base_offset)
        .collect()
}

pub fn segment_files(dir: &std::path::Path, extension: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}
