//! `OffsetForLeaderEpoch` (API key 23): where a leader epoch ends in a partition's
//! log, asked of its leader, as Kafka's request of the same name. A consumer that
//! read records of an epoch asks it after the partition's leader changed: an end
//! offset below its position means the new leader's log no longer holds all it read
//! (an unclean election cut it), and where to read on from.

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::ErrorCode;

/// `leader_epoch` of an answer whose epoch the log cannot place (as Kafka's
/// `UNDEFINED_EPOCH`); its `end_offset` is [`UNDEFINED_EPOCH_OFFSET`].
pub const UNDEFINED_EPOCH: i32 = -1;
/// `end_offset` of an answer without one (as Kafka's `UNDEFINED_EPOCH_OFFSET`).
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochQuery {
    pub partition: u32,
    /// The leader epoch the client knows ([`NO_LEADER_EPOCH`](crate::messages::NO_LEADER_EPOCH)
    /// skips the check): an older one is refused with `FencedLeaderEpoch`, a newer
    /// one with `UnknownLeaderEpoch`.
    pub current_leader_epoch: i32,
    /// The epoch whose end is asked for.
    pub leader_epoch: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochQueryTopic {
    pub name: String,
    pub partitions: Vec<EpochQuery>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetForLeaderEpochRequest {
    pub topics: Vec<EpochQueryTopic>,
}

/// One partition's answer: the largest epoch of the log at or below the one asked
/// for and the offset it ends at (where the next epoch starts, or the log end for
/// the latest); an epoch older than every one the log holds answers itself and the
/// start of the oldest, one newer than every one [`UNDEFINED_EPOCH`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochEnd {
    pub partition: u32,
    pub error: ErrorCode,
    pub message: String,
    pub leader_epoch: i32,
    pub end_offset: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochEndTopic {
    pub name: String,
    pub partitions: Vec<EpochEnd>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetForLeaderEpochResponse {
    pub topics: Vec<EpochEndTopic>,
}

impl OffsetForLeaderEpochRequest {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.array(&self.topics, |w, t| {
            w.string(&t.name);
            w.array(&t.partitions, |w, p| {
                w.u32(p.partition);
                w.i32(p.current_leader_epoch);
                w.i32(p.leader_epoch);
            });
        });
    }

    pub fn decode(r: &mut Reader) -> Result<OffsetForLeaderEpochRequest, DecodeError> {
        Ok(OffsetForLeaderEpochRequest {
            topics: r.array(6, |r| {
                Ok(EpochQueryTopic {
                    name: r.string()?,
                    partitions: r.array(12, |r| {
                        Ok(EpochQuery {
                            partition: r.u32()?,
                            current_leader_epoch: r.i32()?,
                            leader_epoch: r.i32()?,
                        })
                    })?,
                })
            })?,
        })
    }
}

impl OffsetForLeaderEpochResponse {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.array(&self.topics, |w, t| {
            w.string(&t.name);
            w.array(&t.partitions, |w, p| {
                w.u32(p.partition);
                w.u16(p.error as u16);
                w.string(&p.message);
                w.i32(p.leader_epoch);
                w.i64(p.end_offset);
            });
        });
    }

    pub fn decode(r: &mut Reader) -> Result<OffsetForLeaderEpochResponse, DecodeError> {
        Ok(OffsetForLeaderEpochResponse {
            topics: r.array(6, |r| {
                Ok(EpochEndTopic {
                    name: r.string()?,
                    partitions: r.array(20, |r| {
                        Ok(EpochEnd {
                            partition: r.u32()?,
                            error: ErrorCode::from_u16(r.u16()?),
                            message: r.string()?,
                            leader_epoch: r.i32()?,
                            end_offset: r.i64()?,
                        })
                    })?,
                })
            })?,
        })
    }
}
