//! Connections to the other brokers of the cluster, and the Raft network over them.
//!
//! Every inter-broker request (Raft RPCs, heartbeats, forwarded admin requests, ISR
//! changes) goes through one `meridian_client::Client` per peer: the same QUIC
//! protocol clients speak, to the peer's ordinary endpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use meridian_client::Client;
use meridian_metadata::openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use meridian_metadata::openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use meridian_metadata::openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use meridian_metadata::openraft::BasicNode;
use meridian_metadata::{NodeId, TypeConfig};
use meridian_wire::messages::{RaftRequest, RaftRpc, Request, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Clients for the other brokers of the quorum (voters and learners), made on first
/// use and kept.
pub(crate) struct Peers {
    self_id: u32,
    /// The voters from the configuration, then learners as Raft names them.
    addresses: parking_lot::Mutex<BTreeMap<u32, String>>,
    tls: crate::tls::PeerTls,
    clients: tokio::sync::Mutex<HashMap<u32, Client>>,
    reachability: parking_lot::Mutex<Reachability>,
}

/// Which peers answered their last request, so that losing and regaining one is
/// logged once each rather than at every retry (Raft retries an unreachable voter
/// every half second; openraft's own log of each attempt is off by default, see
/// `broker/cli/src/main.rs`).
#[derive(Debug, Default)]
struct Reachability {
    /// Peers that have answered since this broker started.
    reached: BTreeSet<u32>,
    /// Failed requests in a row, by peer.
    unreachable: BTreeMap<u32, usize>,
}

/// Failed requests in a row before a peer that has never answered is reported:
/// while a cluster starts, its brokers come up one after the other.
const NEVER_REACHED_REPORTED_AFTER: usize = 20;

#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// A peer that answered before does not now.
    Lost,
    /// A peer has not answered any request since this broker started.
    NeverReached,
    /// Back, after this many failed requests.
    Regained(usize),
}

impl Reachability {
    fn record(&mut self, id: u32, answered: bool) -> Option<Change> {
        if answered {
            let first = self.reached.insert(id);
            let failures = self.unreachable.remove(&id)?;
            return (!first || failures >= NEVER_REACHED_REPORTED_AFTER)
                .then_some(Change::Regained(failures));
        }
        let failures = self.unreachable.entry(id).or_default();
        *failures += 1;
        match (self.reached.contains(&id), *failures) {
            (true, 1) => Some(Change::Lost),
            (false, NEVER_REACHED_REPORTED_AFTER) => Some(Change::NeverReached),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("broker {0} is not a member of this cluster's metadata quorum")]
    Unknown(u32),
    #[error("broker {id} ({address}): {source}")]
    Client {
        id: u32,
        address: String,
        source: meridian_client::Error,
    },
    #[error("broker {0} did not answer in time")]
    Timeout(u32),
}

impl Peers {
    pub(crate) fn new(
        self_id: u32,
        addresses: BTreeMap<u32, String>,
        tls: crate::tls::PeerTls,
    ) -> Peers {
        Peers {
            self_id,
            addresses: parking_lot::Mutex::new(addresses),
            tls,
            clients: tokio::sync::Mutex::new(HashMap::new()),
            reachability: parking_lot::Mutex::new(Reachability::default()),
        }
    }

    fn address(&self, id: u32) -> Result<String, PeerError> {
        self.addresses
            .lock()
            .get(&id)
            .cloned()
            .ok_or(PeerError::Unknown(id))
    }

    /// Records where broker `id` is (a learner the leader replicates to, as its
    /// membership names it). A new address replaces the old connection.
    async fn learn(&self, id: u32, address: &str) {
        let replaced = {
            let mut addresses = self.addresses.lock();
            let old = addresses.insert(id, address.to_string());
            old.is_some_and(|old| old != address)
        };
        if replaced {
            if let Some(client) = self.clients.lock().await.remove(&id) {
                client.close();
            }
        }
    }

    async fn client(&self, id: u32) -> Result<Client, PeerError> {
        let address = &self.address(id)?;
        if let Some(client) = self.clients.lock().await.get(&id) {
            return Ok(client.clone());
        }
        let mut config = self.tls.client_config(address);
        if let Some((host, _)) = address.rsplit_once(':') {
            config.server_name = host.trim_matches(|c| c == '[' || c == ']').to_string();
        }
        config.request_timeout = Duration::from_secs(2);
        config.client_software = format!("meridian-broker/{}", self.self_id);
        let client = Client::connect(config)
            .await
            .map_err(|source| PeerError::Client {
                id,
                address: address.clone(),
                source,
            })?;
        let mut clients = self.clients.lock().await;
        Ok(clients.entry(id).or_insert(client).clone())
    }

    /// Sends one request to broker `id` and waits at most `timeout` for the answer.
    pub(crate) async fn request(
        &self,
        id: u32,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, PeerError> {
        let attempt = async {
            let client = self.client(id).await?;
            client
                .request(request)
                .await
                .map_err(|source| PeerError::Client {
                    id,
                    address: self.address(id).unwrap_or_default(),
                    source,
                })
        };
        let result = tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| PeerError::Timeout(id))
            .and_then(|r| r);
        if result.is_err() {
            // A peer killed and restarted on the same address does not recognize our
            // connection (and we cannot verify its stateless reset), so the old
            // connection would hang until the idle timeout: start over next time.
            if let Some(client) = self.clients.lock().await.remove(&id) {
                client.close();
            }
        }
        // A refusal with an error code is an answer; anything else (no connection,
        // no answer in time) counts as unreachable.
        let answered = match &result {
            Ok(_) => true,
            Err(PeerError::Client { source, .. }) => source.code().is_some(),
            Err(PeerError::Timeout(_) | PeerError::Unknown(_)) => false,
        };
        let change = self.reachability.lock().record(id, answered);
        match (change, &result) {
            (Some(Change::Lost), Err(e)) => {
                tracing::warn!(peer = id, error = %e, "cannot reach a broker of the cluster; retrying in the background")
            }
            (Some(Change::NeverReached), Err(e)) => {
                tracing::warn!(peer = id, failures = NEVER_REACHED_REPORTED_AFTER, error = %e, "a broker of the cluster has not answered since this one started; retrying in the background")
            }
            (Some(Change::Regained(failures)), _) => {
                tracing::info!(peer = id, failures, "reached a broker of the cluster again")
            }
            _ => {}
        }
        result
    }
}

/// openraft's network: a [`PeerNetwork`] per target voter.
#[derive(Clone)]
pub(crate) struct Network {
    pub(crate) peers: std::sync::Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerNetwork {
        self.peers.learn(target as u32, &node.addr).await;
        PeerNetwork {
            peers: self.peers.clone(),
            target,
        }
    }
}

pub(crate) struct PeerNetwork {
    peers: std::sync::Arc<Peers>,
    target: NodeId,
}

impl PeerNetwork {
    async fn call<Req, Resp, E>(
        &self,
        rpc: RaftRpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let request = Request::Raft(RaftRequest {
            rpc,
            from: self.peers.self_id,
            payload: payload.into(),
        });
        let response = self
            .peers
            .request(self.target as u32, request, option.hard_ttl())
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let Response::Raft(response) = response else {
            let e = std::io::Error::other(format!(
                "asked a Raft RPC, got a {:?} response",
                response.api_key()
            ));
            return Err(RPCError::Network(NetworkError::new(&e)));
        };
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&response.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftRpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RaftRpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftRpc::Vote, &rpc, &option).await
    }
}

/// Serves a Raft RPC from a peer: decode, hand to the local Raft node, encode its result.
pub(crate) async fn serve_raft(
    raft: &meridian_metadata::Raft,
    request: RaftRequest,
) -> Result<Vec<u8>, serde_json::Error> {
    match request.rpc {
        RaftRpc::AppendEntries => {
            let rpc: AppendEntriesRequest<TypeConfig> = serde_json::from_slice(&request.payload)?;
            serde_json::to_vec(&raft.append_entries(rpc).await)
        }
        RaftRpc::Vote => {
            let rpc: VoteRequest<NodeId> = serde_json::from_slice(&request.payload)?;
            serde_json::to_vec(&raft.vote(rpc).await)
        }
        RaftRpc::InstallSnapshot => {
            let rpc: InstallSnapshotRequest<TypeConfig> = serde_json::from_slice(&request.payload)?;
            serde_json::to_vec(&raft.install_snapshot(rpc).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losing_and_regaining_a_peer_are_reported_once_each() {
        let mut reachability = Reachability::default();
        // Starting: a peer not up yet is reported only if it stays away.
        assert_eq!(reachability.record(2, false), None);
        assert_eq!(reachability.record(2, true), None);
        for _ in 1..NEVER_REACHED_REPORTED_AFTER {
            assert_eq!(reachability.record(4, false), None);
        }
        assert_eq!(reachability.record(4, false), Some(Change::NeverReached));
        assert_eq!(reachability.record(4, false), None);
        assert_eq!(
            reachability.record(4, true),
            Some(Change::Regained(NEVER_REACHED_REPORTED_AFTER + 1))
        );
        // Up and running: losing it and getting it back.
        assert_eq!(reachability.record(2, false), Some(Change::Lost));
        for _ in 0..10 {
            assert_eq!(reachability.record(2, false), None);
        }
        // Another peer is tracked on its own.
        assert_eq!(reachability.record(4, false), Some(Change::Lost));
        assert_eq!(reachability.record(2, true), Some(Change::Regained(11)));
        assert_eq!(reachability.record(2, true), None);
        assert_eq!(reachability.record(2, false), Some(Change::Lost));
    }
}
