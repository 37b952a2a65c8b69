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

/// `ListPartitionReassignments` (API key 45): the reassignments under way, with how
/// far each has got. Any broker answers from its metadata image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPartitionReassignmentsRequest {
    /// `None`: every topic.
    pub topics: Option<Vec<String>>,
}

impl ListPartitionReassignmentsRequest {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.option(self.topics.as_ref(), |w, ts| {
            w.array(ts, |w, t| w.string(t))
        });
    }

    pub fn decode(r: &mut Reader) -> Result<ListPartitionReassignmentsRequest, DecodeError> {
        Ok(ListPartitionReassignmentsRequest {
            topics: r.option(|r| r.array(2, |r| r.string()))?,
        })
    }
}

/// One partition being reassigned (`Admin::list_reassignments` in the SDK).
///
/// ```
/// # fn example(moves: Vec<meridian_wire::reassign::OngoingReassignment>) {
/// for m in &moves {
///     let caught_up = m.adding.iter().filter(|r| m.isr.contains(r)).count();
///     println!(
///         "{}/{}: {:?} -> {:?}, {caught_up} of {} new replicas in sync",
///         m.topic, m.partition, m.replicas, m.target, m.adding.len()
///     );
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OngoingReassignment {
    pub topic: String,
    pub partition: u32,
    /// Every replica for now: the original ones and the ones being added.
    pub replicas: Vec<u32>,
    /// The replicas the partition ends with, in order (the first is preferred).
    pub target: Vec<u32>,
    /// Copying the log; they join the ISR once caught up.
    pub adding: Vec<u32>,
    /// Dropped (and their logs deleted) once every target replica is in sync.
    pub removing: Vec<u32>,
    pub isr: Vec<u32>,
    pub leader: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPartitionReassignmentsResponse {
    pub error: ErrorCode,
    pub message: String,
    pub reassignments: Vec<OngoingReassignment>,
}

fn put_ids(w: &mut Writer<'_>, ids: &[u32]) {
    w.array(ids, |w, b| w.u32(*b));
}

fn get_ids(r: &mut Reader) -> Result<Vec<u32>, DecodeError> {
    r.array(4, |r| r.u32())
}

impl ListPartitionReassignmentsResponse {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u16(self.error as u16);
        w.string(&self.message);
        w.array(&self.reassignments, |w, r| {
            w.string(&r.topic);
            w.u32(r.partition);
            put_ids(w, &r.replicas);
            put_ids(w, &r.target);
            put_ids(w, &r.adding);
            put_ids(w, &r.removing);
            put_ids(w, &r.isr);
            w.u32(r.leader);
        });
    }

    pub fn decode(r: &mut Reader) -> Result<ListPartitionReassignmentsResponse, DecodeError> {
        Ok(ListPartitionReassignmentsResponse {
            error: ErrorCode::from_u16(r.u16()?),
            message: r.string()?,
            reassignments: r.array(30, |r| {
                Ok(OngoingReassignment {
                    topic: r.string()?,
                    partition: r.u32()?,
                    replicas: get_ids(r)?,
                    target: get_ids(r)?,
                    adding: get_ids(r)?,
                    removing: get_ids(r)?,
                    isr: get_ids(r)?,
                    leader: r.u32()?,
                })
            })?,
        })
    }
}

/// `ElectLeaders` (API key 47): move partitions' leadership back to their preferred
/// replica (the first of their replicas), as Kafka's preferred leader election. The
/// controller elects a preferred replica only while it is alive and in the ISR.
/// Unclean (version 1), as Kafka's unclean election: each partition without a
/// leader gets one, a live replica from outside the ISR when no in-sync one is
/// left, which gives up the records only the lost replicas held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectLeadersRequest {
    /// `None`: every partition of every topic.
    pub partitions: Option<Vec<crate::group::TopicPartitions>>,
    /// An unclean election rather than a preferred one (version 1; a request
    /// asking for one is never sent at version 0, which would elect preferred
    /// leaders instead).
    pub unclean: bool,
}

impl ElectLeadersRequest {
    pub fn encode(&self, w: &mut Writer<'_>, version: u16) {
        w.option(self.partitions.as_ref(), |w, tps| {
            crate::group::put_tps(w, tps)
        });
        if version >= 1 {
            w.bool(self.unclean);
        }
    }

    pub fn decode(r: &mut Reader, version: u16) -> Result<ElectLeadersRequest, DecodeError> {
        Ok(ElectLeadersRequest {
            partitions: r.option(crate::group::get_tps)?,
            unclean: version >= 1 && r.bool()?,
        })
    }
}

/// One partition of [`ElectLeadersResponse`]: `ElectionNotNeeded` where the preferred
/// replica leads already, `PreferredLeaderNotAvailable` where it cannot lead now.
///
/// ```
/// use meridian_wire::ErrorCode;
/// # fn example(results: Vec<meridian_wire::reassign::ElectionResult>) {
/// for r in results.iter().filter(|r| r.error != ErrorCode::None) {
///     println!("{}/{}: {:?} {} (leader {})", r.topic, r.partition, r.error, r.message, r.leader);
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionResult {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
    pub message: String,
    /// The partition's leader after the request ([`NO_BROKER`](crate::messages::NO_BROKER)
    /// if none or unknown).
    pub leader: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectLeadersResponse {
    /// A failure of the whole request (say, no controller); otherwise `None` and one
    /// result per partition.
    pub error: ErrorCode,
    pub message: String,
    pub results: Vec<ElectionResult>,
}

impl ElectLeadersResponse {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u16(self.error as u16);
        w.string(&self.message);
        w.array(&self.results, |w, r| {
            w.string(&r.topic);
            w.u32(r.partition);
            w.u16(r.error as u16);
            w.string(&r.message);
            w.u32(r.leader);
        });
    }

    pub fn decode(r: &mut Reader) -> Result<ElectLeadersResponse, DecodeError> {
        Ok(ElectLeadersResponse {
            error: ErrorCode::from_u16(r.u16()?),
            message: r.string()?,
            results: r.array(14, |r| {
                Ok(ElectionResult {
                    topic: r.string()?,
                    partition: r.u32()?,
                    error: ErrorCode::from_u16(r.u16()?),
                    message: r.string()?,
                    leader: r.u32()?,
                })
            })?,
        })
    }
}

/// `DescribeLogs` (API key 48): the partition logs this broker holds, with their
/// offsets and size on disk, as Kafka's `DescribeLogDirs`. Each broker answers for
/// itself, so the size of a log being copied to a new replica, set against the
/// leader's, tells how far the copy has got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribeLogsRequest {
    /// `None`: every partition this broker is a replica of.
    pub partitions: Option<Vec<crate::group::TopicPartitions>>,
}

impl DescribeLogsRequest {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.option(self.partitions.as_ref(), |w, tps| {
            crate::group::put_tps(w, tps)
        });
    }

    pub fn decode(r: &mut Reader) -> Result<DescribeLogsRequest, DecodeError> {
        Ok(DescribeLogsRequest {
            partitions: r.option(crate::group::get_tps)?,
        })
    }
}

/// One partition's log on the broker that answered (`Admin::describe_logs` in the
/// SDK).
///
/// ```
/// # fn example(leader: meridian_wire::reassign::LocalLog, copy: meridian_wire::reassign::LocalLog) {
/// let percent = 100 * copy.size_bytes / leader.size_bytes.max(1);
/// println!("{}/{}: copied {percent} % of the leader's log", copy.topic, copy.partition);
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalLog {
    pub topic: String,
    pub partition: u32,
    /// `UnknownTopic` or `InvalidPartition` where the cluster has no such topic or
    /// partition (a broker holding no copy of one it has answers with zeros).
    pub error: ErrorCode,
    /// Whether the broker's metadata makes it a replica of the partition (a broker
    /// that is not keeps an empty log, or one it is about to delete).
    pub replica: bool,
    pub log_start_offset: i64,
    /// The next offset the local log will hold (a follower's may trail the leader's).
    pub log_end_offset: i64,
    /// Bytes of the log's segments on disk.
    pub size_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribeLogsResponse {
    pub error: ErrorCode,
    pub message: String,
    /// The broker that answered.
    pub broker_id: u32,
    /// The directory holding its partition logs (Kafka's `log_dir`).
    pub log_dir: String,
    /// The size of the file system holding `log_dir`, and the bytes on it free for
    /// the broker to write (Kafka's `TotalBytes`/`UsableBytes`); version 1, -1 in a
    /// version 0 answer or when the broker could not tell.
    pub total_bytes: i64,
    pub usable_bytes: i64,
    pub logs: Vec<LocalLog>,
}

impl DescribeLogsResponse {
    pub fn encode(&self, w: &mut Writer<'_>, version: u16) {
        w.u16(self.error as u16);
        w.string(&self.message);
        w.u32(self.broker_id);
        w.string(&self.log_dir);
        if version >= 1 {
            w.i64(self.total_bytes);
            w.i64(self.usable_bytes);
        }
        w.array(&self.logs, |w, l| {
            w.string(&l.topic);
            w.u32(l.partition);
            w.u16(l.error as u16);
            w.bool(l.replica);
            w.i64(l.log_start_offset);
            w.i64(l.log_end_offset);
            w.u64(l.size_bytes);
        });
    }

    pub fn decode(r: &mut Reader, version: u16) -> Result<DescribeLogsResponse, DecodeError> {
        let (error, message, broker_id, log_dir) = (
            ErrorCode::from_u16(r.u16()?),
            r.string()?,
            r.u32()?,
            r.string()?,
        );
        let (total_bytes, usable_bytes) = if version >= 1 {
            (r.i64()?, r.i64()?)
        } else {
            (-1, -1)
        };
        Ok(DescribeLogsResponse {
            error,
            message,
            broker_id,
            log_dir,
            total_bytes,
            usable_bytes,
            logs: r.array(33, |r| {
                Ok(LocalLog {
                    topic: r.string()?,
                    partition: r.u32()?,
                    error: ErrorCode::from_u16(r.u16()?),
                    replica: r.bool()?,
                    log_start_offset: r.i64()?,
                    log_end_offset: r.i64()?,
                    size_bytes: r.u64()?,
                })
            })?,
        })
    }
}
