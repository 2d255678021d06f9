//! Client side of the peer transport: openraft's `RaftNetwork` over tonic.
//!
//! One lazily connected HTTP/2 channel per peer address, shared by every replication stream to
//! that peer and re-established by tonic after failures. A peer that is down costs the others only
//! failed connects: connection errors are reported to openraft as `Unreachable`, which makes it
//! back off before retrying that peer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::snapshot_transport::{Chunked, SnapshotTransport};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::SnapshotResponse;
use raftlog_proto::raft::v1::raft_client::RaftClient;
use raftlog_proto::raft::v1::RaftEnvelope;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::types::*;
use crate::storage::{decode, encode};

/// Largest peer message accepted or sent (AppendEntries batches, snapshot chunks).
pub const PEER_MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Most bytes of entries one AppendEntries carries (unless a single entry is larger).
///
/// openraft 0.9 gives every AppendEntries `heartbeat_interval` (150 ms) to complete, send,
/// follower fsync and answer included, and sends up to 300 entries at once. A follower behind by
/// 300 entries of ~1 MiB (the batching producer's batches) would get 300 MiB per attempt, time
/// out every time and never catch up (seen with `raftlog bench produce --producer`). Above this
/// size the request is not sent: openraft is told `PayloadTooLarge` with a smaller entry count,
/// and retries at once with that many.
pub const APPEND_ENTRIES_BYTES_TARGET: usize = 1024 * 1024;

/// Creates one [`PeerClient`] per target node, reusing channels by address.
#[derive(Clone)]
pub struct PeerNetworkFactory {
    group: GroupId,
    connect_timeout: Duration,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl PeerNetworkFactory {
    pub fn new(group: GroupId, connect_timeout: Duration) -> Self {
        Self {
            group,
            connect_timeout,
            channels: Arc::default(),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().expect("peer channel cache lock");
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel =
            raftlog_proto::http2::client_endpoint(Endpoint::from_shared(format!("http://{addr}"))?)
                .connect_timeout(self.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        let channel = self.channel(&node.addr);
        PeerClient {
            target,
            group: self.group,
            addr: node.addr.clone(),
            channel,
        }
    }
}

/// The connection to one peer.
pub struct PeerClient {
    target: NodeId,
    group: GroupId,
    addr: String,
    channel: Result<Channel, tonic::transport::Error>,
}

#[derive(Debug, thiserror::Error)]
#[error("peer {target} at {addr}: {message}")]
struct PeerError {
    target: NodeId,
    addr: String,
    message: String,
}

enum Rpc {
    Vote,
    AppendEntries,
    InstallSnapshot,
}

impl PeerClient {
    fn error(&self, message: impl std::fmt::Display) -> PeerError {
        PeerError {
            target: self.target,
            addr: self.addr.clone(),
            message: message.to_string(),
        }
    }

    /// Sends one request and decodes the peer's `Result<Resp, RaftError<E>>`.
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        request: &Req,
        ttl: Duration,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        self.call_encoded(rpc, encode(request), ttl).await
    }

    /// [`Self::call`] with the request already encoded.
    async fn call_encoded<Resp, E>(
        &mut self,
        rpc: Rpc,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<Resp, RpcError<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = match &self.channel {
            Ok(channel) => channel.clone(),
            Err(e) => return Err(RpcError::Unreachable(Unreachable::new(&self.error(e)))),
        };
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
        let mut req = tonic::Request::new(RaftEnvelope {
            group_id: self.group,
            payload: payload.into(),
        });
        req.set_timeout(ttl);
        let reply = match rpc {
            Rpc::Vote => client.vote(req).await,
            Rpc::AppendEntries => client.append_entries(req).await,
            Rpc::InstallSnapshot => client.install_snapshot(req).await,
        };
        let reply = match reply {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                let err = self.error(format!("{}: {}", status.code(), status.message()));
                return Err(match status.code() {
                    // Nothing reached the peer's Raft: back off before retrying this peer.
                    tonic::Code::Unavailable | tonic::Code::Unknown => {
                        RpcError::Unreachable(Unreachable::new(&err))
                    }
                    _ => RpcError::Network(NetworkError::new(&err)),
                });
            }
        };
        let result: Result<Resp, RaftError<E>> = decode(&reply.payload)
            .map_err(|e| RpcError::Network(NetworkError::new(&self.error(e))))?;
        result.map_err(|e| RpcError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse, RpcError> {
        let payload = encode(&rpc);
        let entries = rpc.entries.len();
        if payload.len() > APPEND_ENTRIES_BYTES_TARGET && entries > 1 {
            let fit = entries * APPEND_ENTRIES_BYTES_TARGET / payload.len();
            return Err(RpcError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit.clamp(1, entries - 1) as u64),
            ));
        }
        self.call_encoded(Rpc::AppendEntries, payload, option.hard_ttl())
            .await
    }

    /// A built snapshot is a checkpoint; the stream a follower installs is written from it here,
    /// off the apply path, the first time one is needed (`snapshot_store::for_sending`). Failing
    /// that (the snapshot was replaced meanwhile, say) is a network-level error: openraft backs off
    /// and retries with the current snapshot.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let snapshot = crate::storage::snapshot_store::for_sending(snapshot)
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&self.error(e))))?;
        Chunked::send_snapshot(self, vote, snapshot, cancel, option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse, RpcError<InstallSnapshotError>> {
        self.call(Rpc::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RpcError> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> Backoff {
        // After a failure, retry an unreachable peer every 200 ms rather than spin.
        Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
