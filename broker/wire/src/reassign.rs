//! `AlterPartitionReassignments` (API key 44): move a partition's replicas to another
//! set of brokers. The controller first adds the new replicas (they copy the log from
//! the leader in the background), and drops the old ones only once every new replica
//! is in sync; leadership moves to the new set if the leader is leaving it.

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::ErrorCode;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionReassignment {
    pub topic: String,
    pub partition: u32,
    /// The replicas the partition ends with (the first is the preferred leader);
    /// `None` cancels a reassignment under way.
    pub replicas: Option<Vec<u32>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterPartitionReassignmentsRequest {
    pub reassignments: Vec<PartitionReassignment>,
}

impl AlterPartitionReassignmentsRequest {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.array(&self.reassignments, |w, r| {
            w.string(&r.topic);
            w.u32(r.partition);
            w.option(r.replicas.as_ref(), |w, rs| w.array(rs, |w, b| w.u32(*b)));
        });
    }

    pub fn decode(r: &mut Reader) -> Result<AlterPartitionReassignmentsRequest, DecodeError> {
        Ok(AlterPartitionReassignmentsRequest {
            reassignments: r.array(7, |r| {
                Ok(PartitionReassignment {
                    topic: r.string()?,
                    partition: r.u32()?,
                    replicas: r.option(|r| r.array(4, |r| r.u32()))?,
                })
            })?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReassignmentResult {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterPartitionReassignmentsResponse {
    pub results: Vec<ReassignmentResult>,
}

impl AlterPartitionReassignmentsResponse {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.array(&self.results, |w, r| {
            w.string(&r.topic);
            w.u32(r.partition);
            w.u16(r.error as u16);
            w.string(&r.message);
        });
    }

    pub fn decode(r: &mut Reader) -> Result<AlterPartitionReassignmentsResponse, DecodeError> {
        Ok(AlterPartitionReassignmentsResponse {
            results: r.array(10, |r| {
                Ok(ReassignmentResult {
                    topic: r.string()?,
                    partition: r.u32()?,
                    error: ErrorCode::from_u16(r.u16()?),
                    message: r.string()?,
                })
            })?,
        })
    }
}
