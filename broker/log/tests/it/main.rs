//! Integration tests of `meridian-log` on real files in temporary directories.

mod compaction;
mod disk_full;
mod group_commit;
mod log;
mod recovery;
mod replication;
mod support;
