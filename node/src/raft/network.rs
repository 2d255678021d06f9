//! Client side of the peer transport: openraft's `RaftNetworkV2` over tonic.
//!
//! One lazily connected HTTP/2 channel per peer address, shared by every replication stream to
//! that peer and re-established by tonic after failures. A peer that is down costs the others only
//! failed connects, spaced by [`super::reachability`]'s backoff: every attempt to open a
//! replication stream (or send a heartbeat) first waits until that peer may be tried again.
//!
//! Replication runs over one `StreamAppend` gRPC stream per follower: openraft feeds it
//! AppendEntries requests without waiting for the previous answer, and the follower answers each
//! in order once it is fsynced, so several appends are in flight to each follower at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use raftlog_proto::raft::v1::raft_client::RaftClient;
use raftlog_proto::raft::v1::RaftEnvelope;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};

use super::reachability::Reachability;
use super::{envelope, InOrderTimes};
use raftlog_core::limits::PEER_MESSAGE_BYTES_MAX;
use raftlog_core::types::*;
use raftlog_core::{GroupId, NodeId, SnapshotData, TypeConfig};
use raftlog_store::EncodedEntries;
use raftlog_store::{decode, encode};

/// Creates one [`PeerClient`] per target node, reusing channels by address.
#[derive(Clone)]
pub struct PeerNetworkFactory {
    group: GroupId,
    connect_timeout: Duration,
    /// Size of one chunk of a snapshot's data file on the wire.
    snapshot_chunk_bytes: usize,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Per peer: whether it answers, and when to try it again if not.
    reachability: Arc<Mutex<HashMap<NodeId, Reachability>>>,
    /// The group's log's recent entries as stored: AppendEntries are built from them.
    stored: EncodedEntries,
    /// With TLS, peers are dialled over TLS and must present their `node-<id>` certificate.
    tls: Option<Arc<crate::tls::Tls>>,
}

impl PeerNetworkFactory {
    pub fn new(
        group: GroupId,
        connect_timeout: Duration,
        snapshot_chunk_bytes: usize,
        stored: EncodedEntries,
        tls: Option<Arc<crate::tls::Tls>>,
    ) -> Self {
        Self {
            group,
            connect_timeout,
            snapshot_chunk_bytes: snapshot_chunk_bytes.max(1),
            channels: Arc::default(),
            reachability: Arc::default(),
            stored,
            tls,
        }
    }

    /// The reachability of `target` at `addr`, shared by all connections to it (a new address
    /// starts afresh).
    fn reachability(&self, target: NodeId, addr: &str) -> Reachability {
        let mut peers = self.reachability.lock().expect("peer reachability lock");
        match peers.get(&target) {
            Some(known) if known.addr() == addr => known.clone(),
            _ => {
                let fresh = Reachability::new(target, addr.to_string());
                peers.insert(target, fresh.clone());
                fresh
            }
        }
    }

    /// The channel to node `target` at `addr` (keyed by both: with TLS the channel checks that
    /// the node it reaches is `target`).
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().expect("peer channel cache lock");
        let key = format!("{target}@{addr}");
        if let Some(channel) = channels.get(&key) {
            return Ok(channel.clone());
        }
        let endpoint = |uri: String| -> Result<Endpoint, tonic::transport::Error> {
            Ok(
                raftlog_proto::http2::node_endpoint(Endpoint::from_shared(uri)?)
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true),
            )
        };
        let channel = crate::tls::node_channel(endpoint, addr, target, self.tls.as_ref())?;
        channels.insert(key, channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        let channel = self.channel(target, &node.addr);
        PeerClient {
            target,
            group: self.group,
            addr: node.addr.clone(),
            reachability: self.reachability(target, &node.addr),
            channel,
            snapshot_chunk_bytes: self.snapshot_chunk_bytes,
            stored: self.stored.clone(),
        }
    }
}

/// The connection to one peer.
pub struct PeerClient {
    target: NodeId,
    group: GroupId,
    addr: String,
    reachability: Reachability,
    channel: Result<Channel, tonic::transport::Error>,
    snapshot_chunk_bytes: usize,
    stored: EncodedEntries,
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
    PreVote,
    AppendEntries,
    TransferLeader,
}

impl PeerClient {
    fn error(&self, message: impl std::fmt::Display) -> PeerError {
        PeerError {
            target: self.target,
            addr: self.addr.clone(),
            message: message.to_string(),
        }
    }

    fn client(&self) -> Result<RaftClient<Channel>, RpcError> {
        match &self.channel {
            Ok(channel) => Ok(RaftClient::new(channel.clone())
                .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)),
            Err(e) => Err(RpcError::Unreachable(Unreachable::new(&self.error(e)))),
        }
    }

    /// How a failed gRPC call is reported to openraft; a call that did not reach the peer
    /// counts against its reachability.
    fn status_error(&self, status: tonic::Status) -> RpcError {
        let err = self.error(format!("{}: {}", status.code(), status.message()));
        match status.code() {
            // Nothing reached the peer's Raft: back off before retrying this peer.
            tonic::Code::Unavailable | tonic::Code::Unknown => {
                self.reachability.failed(&status.message());
                RpcError::Unreachable(Unreachable::new(&err))
            }
            tonic::Code::DeadlineExceeded => {
                self.reachability.failed(&status.message());
                RpcError::Network(NetworkError::new(&err))
            }
            _ => RpcError::Network(NetworkError::new(&err)),
        }
    }

    /// Decodes the peer's `Result<Resp, Fatal>`. A peer whose Raft has stopped cannot take part,
    /// which openraft handles as an unreachable peer.
    fn open_reply<Resp: DeserializeOwned>(&self, payload: &[u8]) -> Result<Resp, RpcError> {
        let result: Result<Resp, Fatal> =
            decode(payload).map_err(|e| RpcError::Network(NetworkError::new(&self.error(e))))?;
        result.map_err(|fatal| RpcError::Unreachable(Unreachable::new(&self.error(fatal))))
    }

    /// Sends one unary request and decodes the peer's answer.
    async fn call<Req, Resp>(
        &self,
        rpc: Rpc,
        request: &Req,
        ttl: Duration,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let mut client = self.client()?;
        let mut req = tonic::Request::new(envelope(self.group, encode(request)));
        req.set_timeout(ttl);
        let reply = match rpc {
            Rpc::Vote => client.vote(req).await,
            Rpc::PreVote => client.pre_vote(req).await,
            Rpc::AppendEntries => client.append_entries(req).await,
            Rpc::TransferLeader => client.transfer_leader(req).await,
        };
        match reply {
            Ok(reply) => {
                self.reachability.succeeded();
                self.open_reply(&reply.into_inner().payload)
            }
            Err(status) => Err(self.status_error(status)),
        }
    }

    /// Streams the snapshot: (vote, meta) first, then its data file in chunks.
    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot,
        option: &RPCOption,
    ) -> Result<SnapshotResponse, StreamingError<TypeConfig>> {
        let network =
            |e: &dyn std::fmt::Display| StreamingError::Network(NetworkError::new(&self.error(e)));
        let snapshot = raftlog_store::for_sending(snapshot)
            .await
            .map_err(|e| network(&e))?;
        let mut client = self.client().map_err(|e| network(&e))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<RaftEnvelope>(4);
        let header = envelope(self.group, encode(&(vote, &snapshot.meta)));
        let group = self.group;
        let chunk_bytes = self.snapshot_chunk_bytes;
        let mut file = snapshot.snapshot.file;
        // The file is read in its own task so that sending overlaps reading; it stops when the
        // call ends (the receiver is dropped).
        let reader = tokio::spawn(async move {
            if tx.send(header).await.is_err() {
                return Ok(());
            }
            loop {
                let mut chunk = Vec::with_capacity(chunk_bytes);
                (&mut file)
                    .take(chunk_bytes as u64)
                    .read_to_end(&mut chunk)
                    .await?;
                if chunk.is_empty() {
                    return Ok::<(), std::io::Error>(());
                }
                if tx.send(envelope(group, chunk)).await.is_err() {
                    return Ok(());
                }
            }
        });
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.set_timeout(option.hard_ttl());
        let reply = client.install_snapshot(req).await;
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(network(&e)),
            Err(e) => return Err(network(&e)),
        }
        match reply {
            Ok(reply) => self
                .open_reply(&reply.into_inner().payload)
                .map_err(streaming_error),
            Err(status) => Err(streaming_error(self.status_error(status))),
        }
    }
}

fn streaming_error(e: RpcError) -> StreamingError<TypeConfig> {
    match e {
        RpcError::Timeout(e) => StreamingError::Timeout(e),
        RpcError::Unreachable(e) => StreamingError::Unreachable(e),
        RpcError::Network(e) => StreamingError::Network(e),
        RpcError::RemoteError(e) => StreamingError::Network(NetworkError::new(&e)),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse, RpcError> {
        self.reachability.until_attempt_allowed().await;
        self.call(Rpc::AppendEntries, &rpc, option.soft_ttl()).await
    }

    /// One bidirectional gRPC stream: every request openraft produces is sent as it comes, and
    /// the follower's answers come back in order. The stream's lifetime is not bounded by the
    /// per-request timeout; a broken connection ends it with an error and openraft opens a new one
    /// (after the peer's backoff, if it is failing: openraft would retry at once).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult, RpcError>>, RpcError>>
    where
        S: Stream<Item = AppendEntriesRequest> + Send + Unpin + 'static,
    {
        let group = self.group;
        Box::pin(async move {
            self.reachability.until_attempt_allowed().await;
            let mut client = self.client()?;
            let sent = InOrderTimes::default();
            let sending = sent.clone();
            let stored = self.stored.clone();
            let requests = input.map(move |rpc| {
                sending.started(!rpc.entries.is_empty());
                envelope(group, stored.encode_append_entries(&rpc))
            });
            let answers = match client.stream_append(requests).await {
                Ok(answers) => answers.into_inner(),
                Err(status) => return Err(self.status_error(status)),
            };
            self.reachability.succeeded();
            let round_trip = metrics::histogram!(
                crate::metrics::REPLICATION_ROUND_TRIP_SECONDS,
                "follower" => self.target.to_string()
            );
            let this: &'s PeerClient = self;
            let answers = answers.map(move |answer| {
                if let Some(took) = sent.answered() {
                    round_trip.record(took.as_secs_f64());
                }
                match answer {
                    Ok(envelope) => this.open_reply::<StreamAppendResult>(&envelope.payload),
                    Err(status) => Err(this.status_error(status)),
                }
            });
            Ok(Box::pin(answers) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RpcError> {
        self.call(Rpc::Vote, &rpc, option.soft_ttl()).await
    }

    /// Carried to the peer for real: openraft's default grants every pre-vote, which would let a
    /// returning node raise its term and depose a healthy leader anyway.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RpcError> {
        self.call(Rpc::PreVote, &rpc, option.soft_ttl()).await
    }

    /// A built snapshot is a checkpoint; the stream a follower installs is written from it here,
    /// off the apply path, the first time one is needed (`raftlog_store::for_sending`). Failing
    /// that (the snapshot was replaced meanwhile, say) is a network-level error: openraft backs off
    /// and retries with the current snapshot.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse, StreamingError<TypeConfig>> {
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = self.send_snapshot(vote, snapshot, &option) => sent,
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse, RpcError> {
        self.call(Rpc::TransferLeader, &req, option.soft_ttl())
            .await
    }

    /// Between the requests of an open stream, after errors it answered: the peer is reachable
    /// then, so a short constant pause. Attempts to reach a failing peer wait in
    /// [`Reachability::until_attempt_allowed`] instead.
    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(std::iter::repeat(Duration::from_millis(200))))
    }
}
