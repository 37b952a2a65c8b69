//! `DescribeCluster` (API key 46): the brokers of a cluster, whether each is serving,
//! fenced or shutting down, and the metadata quorum's state (Kafka's
//! `kafka-metadata-quorum describe` and `kafka-cluster` in one answer). Any broker
//! answers from its metadata image; only the controller also knows how far each
//! broker has copied the metadata log ([`BrokerStatus::matched_index`]).

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::ErrorCode;

/// A broker as the cluster's metadata has it.
///
/// ```
/// use meridian_wire::describe_cluster::BrokerState;
/// # fn example(cluster: meridian_wire::describe_cluster::DescribeClusterResponse) {
/// let down: Vec<u32> = cluster
///     .brokers
///     .iter()
///     .filter(|b| b.state != BrokerState::Running)
///     .map(|b| b.broker_id)
///     .collect();
/// println!("not serving: {down:?}");
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BrokerState {
    /// Registered and unfenced: it leads partitions and serves clients.
    Running = 0,
    /// The controller stopped hearing from it (or it has just registered): it leads
    /// nothing and is in no ISR the controller grows.
    Fenced = 1,
    /// In controlled shutdown: fenced until it starts again.
    ShuttingDown = 2,
    /// A voter of the metadata quorum that has never registered (not started yet).
    Unregistered = 3,
}

impl BrokerState {
    pub fn name(self) -> &'static str {
        match self {
            BrokerState::Running => "running",
            BrokerState::Fenced => "fenced",
            BrokerState::ShuttingDown => "shutting down",
            BrokerState::Unregistered => "not registered",
        }
    }

    fn from_u8(value: u8) -> Result<BrokerState, DecodeError> {
        Ok(match value {
            0 => BrokerState::Running,
            1 => BrokerState::Fenced,
            2 => BrokerState::ShuttingDown,
            3 => BrokerState::Unregistered,
            _ => {
                return Err(DecodeError::UnknownValue {
                    what: "broker state",
                    value: value.into(),
                })
            }
        })
    }
}

/// A broker's part in the metadata quorum.
///
/// ```
/// use meridian_wire::describe_cluster::QuorumRole;
/// # fn example(cluster: meridian_wire::describe_cluster::DescribeClusterResponse) {
/// let voters = cluster.brokers.iter().filter(|b| b.role == QuorumRole::Voter).count();
/// println!("{voters} voters");
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum QuorumRole {
    /// Votes in elections and counts towards a commit.
    Voter = 0,
    /// Copies the metadata log without voting (a broker added to a running cluster).
    Observer = 1,
    /// Not in the quorum's membership (yet).
    None = 2,
}

impl QuorumRole {
    pub fn name(self) -> &'static str {
        match self {
            QuorumRole::Voter => "voter",
            QuorumRole::Observer => "observer",
            QuorumRole::None => "-",
        }
    }

    fn from_u8(value: u8) -> Result<QuorumRole, DecodeError> {
        Ok(match value {
            0 => QuorumRole::Voter,
            1 => QuorumRole::Observer,
            2 => QuorumRole::None,
            _ => {
                return Err(DecodeError::UnknownValue {
                    what: "quorum role",
                    value: value.into(),
                })
            }
        })
    }
}

/// One broker of [`DescribeClusterResponse::brokers`].
///
/// ```
/// # fn example(cluster: meridian_wire::describe_cluster::DescribeClusterResponse) {
/// for b in &cluster.brokers {
///     println!(
///         "{} {}:{} {} ({}), leads {} of its {} replicas",
///         b.broker_id, b.host, b.port, b.state.name(), b.role.name(), b.leaders, b.replicas
///     );
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerStatus {
    pub broker_id: u32,
    /// Where clients reach it (empty for [`BrokerState::Unregistered`]).
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    pub state: BrokerState,
    pub role: QuorumRole,
    /// Partitions it leads.
    pub leaders: u32,
    /// Partition replicas it holds (led ones included).
    pub replicas: u32,
    /// The controller's view: the last metadata log index known to be on this broker;
    /// -1 when not known (the answer is not the controller's, or nothing matched yet).
    pub matched_index: i64,
}

/// The metadata quorum as the answering broker sees it.
///
/// ```
/// # fn example(cluster: meridian_wire::describe_cluster::DescribeClusterResponse) {
/// match &cluster.quorum {
///     Some(q) => println!("term {}, applied {} of {}", q.term, q.applied_index, q.last_log_index),
///     None => println!("a single broker: no quorum"),
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumStatus {
    /// The Raft term.
    pub term: u64,
    /// The answering broker's last metadata log index, and the last it applied to
    /// its image (-1: none).
    pub last_log_index: i64,
    pub applied_index: i64,
    /// Whether the answer is the controller's: only then do the brokers'
    /// [`BrokerStatus::matched_index`] say anything.
    pub from_controller: bool,
    /// On the controller: milliseconds since a majority of the voters last
    /// acknowledged it (-1: not known).
    pub millis_since_quorum_ack: i64,
}

/// A cluster as one of its brokers describes it (`Admin::describe_cluster` in the
/// SDK, `meridian cluster describe` on the command line).
///
/// ```
/// # fn example(cluster: meridian_wire::describe_cluster::DescribeClusterResponse) {
/// println!(
///     "cluster {}: {} brokers, controller {}",
///     cluster.cluster_id,
///     cluster.brokers.len(),
///     cluster.controller_id
/// );
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribeClusterResponse {
    pub error: ErrorCode,
    pub message: String,
    pub cluster_id: String,
    /// The broker that answered.
    pub broker_id: u32,
    /// The controller as the answering broker knows it ([`NO_BROKER`](crate::messages::NO_BROKER)
    /// while none is known). A single broker is its own controller.
    pub controller_id: u32,
    /// `None` on a single broker: it has no quorum.
    pub quorum: Option<QuorumStatus>,
    /// Every broker registered or named as a voter, by id.
    pub brokers: Vec<BrokerStatus>,
}

impl DescribeClusterResponse {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u16(self.error as u16);
        w.string(&self.message);
        w.string(&self.cluster_id);
        w.u32(self.broker_id);
        w.u32(self.controller_id);
        w.option(self.quorum.as_ref(), |w, q| {
            w.u64(q.term);
            w.i64(q.last_log_index);
            w.i64(q.applied_index);
            w.bool(q.from_controller);
            w.i64(q.millis_since_quorum_ack);
        });
        w.array(&self.brokers, |w, b| {
            w.u32(b.broker_id);
            w.string(&b.host);
            w.u16(b.port);
            w.option(b.rack.as_ref(), |w, rack| w.string(rack));
            w.u8(b.state as u8);
            w.u8(b.role as u8);
            w.u32(b.leaders);
            w.u32(b.replicas);
            w.i64(b.matched_index);
        });
    }

    pub fn decode(r: &mut Reader) -> Result<DescribeClusterResponse, DecodeError> {
        Ok(DescribeClusterResponse {
            error: ErrorCode::from_u16(r.u16()?),
            message: r.string()?,
            cluster_id: r.string()?,
            broker_id: r.u32()?,
            controller_id: r.u32()?,
            quorum: r.option(|r| {
                Ok(QuorumStatus {
                    term: r.u64()?,
                    last_log_index: r.i64()?,
                    applied_index: r.i64()?,
                    from_controller: r.bool()?,
                    millis_since_quorum_ack: r.i64()?,
                })
            })?,
            // id, host length, port, rack flag, state, role, two counts, index.
            brokers: r.array(4 + 2 + 2 + 1 + 1 + 1 + 4 + 4 + 8, |r| {
                Ok(BrokerStatus {
                    broker_id: r.u32()?,
                    host: r.string()?,
                    port: r.u16()?,
                    rack: r.option(|r| r.string())?,
                    state: BrokerState::from_u8(r.u8()?)?,
                    role: QuorumRole::from_u8(r.u8()?)?,
                    leaders: r.u32()?,
                    replicas: r.u32()?,
                    matched_index: r.i64()?,
                })
            })?,
        })
    }
}

/// `UnregisterBroker` (API key 49): forget a broker that is gone for good (Kafka's
/// `kafka-cluster unregister`). The controller refuses a broker that is running, a
/// voter of the metadata quorum, or one that still holds replicas. A broker that
/// comes back registers again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnregisterBrokerRequest {
    pub broker_id: u32,
}

impl UnregisterBrokerRequest {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u32(self.broker_id);
    }

    pub fn decode(r: &mut Reader) -> Result<UnregisterBrokerRequest, DecodeError> {
        Ok(UnregisterBrokerRequest {
            broker_id: r.u32()?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnregisterBrokerResponse {
    pub error: ErrorCode,
    pub message: String,
}

impl UnregisterBrokerResponse {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u16(self.error as u16);
        w.string(&self.message);
    }

    pub fn decode(r: &mut Reader) -> Result<UnregisterBrokerResponse, DecodeError> {
        Ok(UnregisterBrokerResponse {
            error: ErrorCode::from_u16(r.u16()?),
            message: r.string()?,
        })
    }
}
