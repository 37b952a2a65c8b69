//! Workspace integration tests: the real `meridian` binary, real QUIC on 127.0.0.1,
//! real files. One test binary (this one) keeps link time down.

mod acl;
mod bad_input;
mod cli;
mod cluster;
mod compaction;
mod crash;
mod examples;
mod frame_io;
mod groups;
mod harness;
mod idempotence;
mod kafka;
mod kafka_js;
mod kafka_rdkafka;
mod kafka_sasl;
mod lifecycle;
mod limits;
mod metrics;
mod otel;
mod plugins;
mod produce_consume;
mod quotas;
mod readme;
mod region;
mod replication;
mod routing;
mod tls;
mod topic_changes;
