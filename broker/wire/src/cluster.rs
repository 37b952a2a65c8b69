//! Inter-broker requests of the cluster control plane (API keys 40..=43): the Raft
//! metadata quorum's RPCs, broker heartbeats to the controller, ISR changes from
//! partition leaders, and controlled shutdown.
//!
//! Raft payloads are opaque here: the quorum's library serializes its own messages
//! (JSON), and this codec only frames them.

use bytes::Bytes;

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::ErrorCode;
use crate::group::TopicPartitions;

/// Leader, broker or controller id meaning "none" (no leader elected, no controller
/// known), in metadata and cluster responses.
pub const NO_BROKER: u32 = u32::MAX;

/// Which Raft RPC a [`RaftRequest`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RaftRpc {
    AppendEntries = 0,
    Vote = 1,
    InstallSnapshot = 2,
}

impl RaftRpc {
    fn from_u8(v: u8) -> Result<RaftRpc, DecodeError> {
        Ok(match v {
            0 => RaftRpc::AppendEntries,
            1 => RaftRpc::Vote,
            2 => RaftRpc::InstallSnapshot,
            other => {
                return Err(DecodeError::UnknownValue {
                    what: "raft rpc",
                    value: other as i64,
                })
            }
        })
    }
}

/// One Raft RPC from a voter to another (ApiKey 40).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftRequest {
    pub rpc: RaftRpc,
    /// The sender's broker id (for logs; Raft messages carry their own ids too).
    pub from: u32,
    pub payload: Bytes,
}

/// The Raft RPC's answer: the receiver's result, serialized like the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftResponse {
    pub payload: Bytes,
}

/// A broker's heartbeat to the controller (ApiKey 41). The first one registers the
/// broker; a new `incarnation` tells the controller the broker restarted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerHeartbeatRequest {
    pub broker_id: u32,
    /// Unique per process start.
    pub incarnation: u64,
    /// Where clients and peers reach this broker.
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// Set during controlled shutdown: the broker is leaving.
    pub wants_shutdown: bool,
    /// Where Kafka clients reach this broker (host, port), if it has a Kafka listener
    /// (version 1; a controller at version 0 does not learn it).
    pub kafka: Option<(String, u16)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerHeartbeatResponse {
    /// `NotController` when sent to another broker (see `controller_id`).
    pub error: ErrorCode,
    pub message: String,
    /// The controller as the answering broker knows it ([`NO_BROKER`] if none).
    pub controller_id: u32,
    /// The broker is fenced: it leads nothing until it is unfenced.
    pub fenced: bool,
    /// In controlled shutdown: the broker leads nothing any more and may stop.
    pub shutdown_ready: bool,
}

/// An ISR change from a partition's leader (ApiKey 42).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterPartitionRequest {
    /// The leader asking.
    pub broker_id: u32,
    pub topic: String,
    pub partition: u32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<u32>,
}

/// Accepted (`error == None`) or refused; either way the partition's current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterPartitionResponse {
    pub error: ErrorCode,
    pub message: String,
    /// [`NO_BROKER`] when the partition has no leader.
    pub leader: u32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<u32>,
    pub replicas: Vec<u32>,
}

/// A broker about to stop asks the controller to move its leaderships away (ApiKey 43).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlledShutdownRequest {
    pub broker_id: u32,
    pub incarnation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlledShutdownResponse {
    pub error: ErrorCode,
    pub message: String,
    /// Partitions the broker still leads (no other in-sync replica could take them).
    pub remaining: Vec<TopicPartitions>,
}

fn put_u32s(w: &mut Writer<'_>, values: &[u32]) {
    w.array(values, |w, v| w.u32(*v));
}

fn get_u32s(r: &mut Reader) -> Result<Vec<u32>, DecodeError> {
    r.array(4, |r| r.u32())
}

fn get_error(r: &mut Reader) -> Result<ErrorCode, DecodeError> {
    Ok(ErrorCode::from_u16(r.u16()?))
}

impl RaftRequest {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u8(self.rpc as u8);
        w.u32(self.from);
        w.bytes(&self.payload);
    }
    pub fn decode(r: &mut Reader) -> Result<RaftRequest, DecodeError> {
        Ok(RaftRequest {
            rpc: RaftRpc::from_u8(r.u8()?)?,
            from: r.u32()?,
            payload: r.bytes()?,
        })
    }
}

impl RaftResponse {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.bytes(&self.payload);
    }
    pub fn decode(r: &mut Reader) -> Result<RaftResponse, DecodeError> {
        Ok(RaftResponse {
            payload: r.bytes()?,
        })
    }
}

impl BrokerHeartbeatRequest {
    pub fn encode(&self, w: &mut Writer<'_>, version: u16) {
        w.u32(self.broker_id);
        w.u64(self.incarnation);
        w.string(&self.host);
        w.u16(self.port);
        w.option(self.rack.as_ref(), |w, s| w.string(s));
        w.bool(self.wants_shutdown);
        if version >= 1 {
            w.option(self.kafka.as_ref(), |w, (host, port)| {
                w.string(host);
                w.u16(*port);
            });
        }
    }
    pub fn decode(r: &mut Reader, version: u16) -> Result<BrokerHeartbeatRequest, DecodeError> {
        Ok(BrokerHeartbeatRequest {
            broker_id: r.u32()?,
            incarnation: r.u64()?,
            host: r.string()?,
            port: r.u16()?,
            rack: r.option(|r| r.string())?,
            wants_shutdown: r.bool()?,
            kafka: if version >= 1 {
                r.option(|r| Ok((r.string()?, r.u16()?)))?
            } else {
                None
            },
        })
    }
}

impl BrokerHeartbeatResponse {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u16(self.error as u16);
        w.string(&self.message);
        w.u32(self.controller_id);
        w.bool(self.fenced);
        w.bool(self.shutdown_ready);
    }
    pub fn decode(r: &mut Reader) -> Result<BrokerHeartbeatResponse, DecodeError> {
        Ok(BrokerHeartbeatResponse {
            error: get_error(r)?,
            message: r.string()?,
            controller_id: r.u32()?,
            fenced: r.bool()?,
            shutdown_ready: r.bool()?,
        })
    }
}

impl AlterPartitionRequest {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u32(self.broker_id);
        w.string(&self.topic);
        w.u32(self.partition);
        w.i32(self.leader_epoch);
        w.i32(self.partition_epoch);
        put_u32s(w, &self.isr);
    }
    pub fn decode(r: &mut Reader) -> Result<AlterPartitionRequest, DecodeError> {
        Ok(AlterPartitionRequest {
            broker_id: r.u32()?,
            topic: r.string()?,
            partition: r.u32()?,
            leader_epoch: r.i32()?,
            partition_epoch: r.i32()?,
            isr: get_u32s(r)?,
        })
    }
}

impl AlterPartitionResponse {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u16(self.error as u16);
        w.string(&self.message);
        w.u32(self.leader);
        w.i32(self.leader_epoch);
        w.i32(self.partition_epoch);
        put_u32s(w, &self.isr);
        put_u32s(w, &self.replicas);
    }
    pub fn decode(r: &mut Reader) -> Result<AlterPartitionResponse, DecodeError> {
        Ok(AlterPartitionResponse {
            error: get_error(r)?,
            message: r.string()?,
            leader: r.u32()?,
            leader_epoch: r.i32()?,
            partition_epoch: r.i32()?,
            isr: get_u32s(r)?,
            replicas: get_u32s(r)?,
        })
    }
}

impl ControlledShutdownRequest {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u32(self.broker_id);
        w.u64(self.incarnation);
    }
    pub fn decode(r: &mut Reader) -> Result<ControlledShutdownRequest, DecodeError> {
        Ok(ControlledShutdownRequest {
            broker_id: r.u32()?,
            incarnation: r.u64()?,
        })
    }
}

impl ControlledShutdownResponse {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u16(self.error as u16);
        w.string(&self.message);
        w.array(&self.remaining, |w, t| {
            w.string(&t.topic);
            put_u32s(w, &t.partitions);
        });
    }
    pub fn decode(r: &mut Reader) -> Result<ControlledShutdownResponse, DecodeError> {
        Ok(ControlledShutdownResponse {
            error: get_error(r)?,
            message: r.string()?,
            remaining: r.array(6, |r| {
                Ok(TopicPartitions {
                    topic: r.string()?,
                    partitions: get_u32s(r)?,
                })
            })?,
        })
    }
}
