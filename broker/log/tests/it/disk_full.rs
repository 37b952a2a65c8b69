//! A full disk: appends fail with a storage error, nothing else breaks.
//!
//! The disk is a small tmpfs: mounted here as root, else in a user namespace of the
//! test's own ([`meridian_tests::mounts_here`]); where neither can be had, the
//! test says so and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use meridian_log::{validate_batches, LogConfig, LogError, PartitionLog};
use meridian_tests::{mounts_here, SKIP};
use meridian_wire::ErrorCode;

use crate::support::*;

/// Unmounts the tmpfs when dropped, whatever happened in the test.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(&self.0).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "warning: could not unmount {}: {status:?}",
                self.0.display()
            );
        }
    }
}

fn mount_tiny_tmpfs(at: &Path) -> Option<Mount> {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(at)
        .status()
        .ok()?;
    status.success().then(|| Mount(at.to_path_buf()))
}

#[test]
fn a_full_disk_fails_appends_cleanly() {
    let name = "a_full_disk_fails_appends_cleanly";
    if !mounts_here(module_path!(), name) {
        return;
    }
    let mount_point = tempfile::tempdir().unwrap();
    let Some(_mount) = mount_tiny_tmpfs(mount_point.path()) else {
        eprintln!("{SKIP} {name}: cannot mount a tmpfs here");
        return;
    };
    let dir = mount_point.path().join("partition");
    let config = LogConfig {
        index_interval_bytes: 512,
        ..LogConfig::default()
    };
    let filler = mount_point.path().join("filler");
    std::fs::write(&filler, vec![0u8; 64 * 1024]).unwrap();

    let mut log = PartitionLog::open(&dir, config.clone(), 0).unwrap();
    let mut stored = Vec::new();
    let error = loop {
        let batch = batch(3, 1000, stored.len() as i64);
        let validated = validate_batches(&batch, config.max_message_bytes).unwrap();
        match log.append(validated, EPOCH, 0) {
            Ok(info) => stored.push(as_stored(&batch, info.base_offset)),
            Err(error) => break error,
        }
        assert!(stored.len() < 1000, "the disk never filled up");
    };
    eprintln!("disk full after {} batches: {error}", stored.len());
    assert!(matches!(error, LogError::Io(_)), "{error}");
    assert_eq!(error.code(), ErrorCode::StorageError);
    assert!(!stored.is_empty());
    let end = log.log_end_offset();
    let size = log.size_bytes();

    // Reads still work, and a second failing append changes nothing.
    let read_back = |log: &PartitionLog| {
        read_all(log)
            .into_iter()
            .map(|(_, b)| b)
            .collect::<Vec<_>>()
    };
    assert_eq!(read_back(&log), stored);
    let validated = validate_batches(&batch(3, 1000, 0), config.max_message_bytes).unwrap();
    assert!(log.append(validated, EPOCH, 0).is_err());
    assert_eq!((log.log_end_offset(), log.size_bytes()), (end, size));
    let on_disk = std::fs::metadata(segment_files(&dir, "log").pop().unwrap())
        .unwrap()
        .len();
    assert_eq!(on_disk, size, "the failed write was cut back");

    // The log reopens intact after a crash at this point.
    drop(log);
    let mut log = PartitionLog::open(&dir, config.clone(), 0).unwrap();
    assert_eq!(read_back(&log), stored);

    // With space again, appends continue at the right offset.
    std::fs::remove_file(&filler).unwrap();
    let batch = batch(1, 10, 0);
    let info = append(&mut log, &batch, 0);
    assert_eq!(info.base_offset, end);
    stored.push(as_stored(&batch, end));
    log.close().unwrap();
    let log = PartitionLog::open(&dir, config, 0).unwrap();
    assert_eq!(read_back(&log), stored);
}
