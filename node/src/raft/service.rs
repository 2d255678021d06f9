//! Server side of the peer transport.
//!
//! # Protocol safety
//! This service lets its caller append to and overwrite this node's Raft log and install
//! snapshots. It must only be reachable by cluster members. With TLS on (docs/security.md) every
//! call is admitted only from a certificate of the cluster CA that names a node of the group's
//! current membership ([`PeerService::admit`]); without TLS, bind the node to a private network.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use raftlog_proto::raft::v1::raft_server::Raft as RaftService;
use raftlog_proto::raft::v1::RaftEnvelope;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use super::Raft;
use super::{envelope, InOrderTimes};
use raftlog_core::types::*;
use raftlog_core::{GroupId, SnapshotData};
use raftlog_store::{encode, ReceivedEncodings, SnapshotStore};

pub struct PeerService {
    raft: Raft,
    group: GroupId,
    /// Where a snapshot being received is written before openraft installs it.
    snapshots: SnapshotStore,
    /// Turns true when the node starts its graceful stop (see `stream_append`).
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Where received entries' bytes wait for the log's append.
    received: ReceivedEncodings,
    /// Whether callers must prove they are member nodes (TLS is on).
    authenticate: bool,
}

type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<RaftEnvelope, Status>> + Send>>;

impl PeerService {
    pub fn new(
        raft: Raft,
        group: GroupId,
        snapshots: SnapshotStore,
        stopping: tokio::sync::watch::Receiver<bool>,
        received: ReceivedEncodings,
        authenticate: bool,
    ) -> Self {
        Self {
            raft,
            group,
            snapshots,
            stopping,
            received,
            authenticate,
        }
    }

    /// With TLS, refuses a call unless the caller's certificate (already verified against the
    /// cluster CA by the handshake) names one node, `node-<id>`, of the group's current
    /// membership, learners included: UNAUTHENTICATED without a certificate, PERMISSION_DENIED
    /// for any other. A node that has no membership yet (a new node waiting to be added) admits
    /// every node of the CA: the leader adding it is not in a membership it has not received.
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        use openraft::async_runtime::watch::WatchReceiver;
        if !self.authenticate {
            return Ok(());
        }
        let refuse = |reason: &'static str, status: Status| {
            metrics::counter!(crate::metrics::PEER_REFUSALS, "reason" => reason).increment(1);
            tracing::warn!(
                peer = ?request.remote_addr(),
                "Raft request refused: {}",
                status.message()
            );
            Err(status)
        };
        let Some(certs) = request.peer_certs() else {
            return refuse(
                "no_certificate",
                Status::unauthenticated(
                    "the Raft service takes only calls with a node certificate of the cluster CA",
                ),
            );
        };
        let Some(id) = certs.first().and_then(crate::tls::node_id_of) else {
            return refuse(
                "not_a_node",
                Status::permission_denied(
                    "the certificate names no node (one DNS name node-<id>): not a peer",
                ),
            );
        };
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        if membership.get_node(&id).is_some() || membership.nodes().next().is_none() {
            return Ok(());
        }
        refuse(
            "not_a_member",
            Status::permission_denied(format!(
                "node {id} is not a member of Raft group {}",
                self.group
            )),
        )
    }

    /// Checks the envelope's group and decodes its payload.
    fn open<T: DeserializeOwned>(&self, envelope: RaftEnvelope) -> Result<T, Status> {
        open(self.group, envelope)
    }

    fn reply<T: Serialize>(&self, result: &T) -> Response<RaftEnvelope> {
        Response::new(envelope(self.group, encode(result)))
    }

    /// Writes the chunks that follow the header to a new file and reopens it for reading. Not
    /// fsynced: installing makes its own durable copy, and this file is removed afterwards.
    async fn receive_snapshot_data(
        &self,
        chunks: &mut Streaming<RaftEnvelope>,
        path: &std::path::Path,
    ) -> Result<tokio::fs::File, Status> {
        let io_error = |e: std::io::Error| Status::internal(format!("receiving a snapshot: {e}"));
        let mut file = tokio::fs::File::create(path).await.map_err(io_error)?;
        while let Some(chunk) = chunks.message().await? {
            if chunk.group_id != self.group {
                return Err(wrong_group(self.group, chunk.group_id));
            }
            file.write_all(&chunk.payload).await.map_err(io_error)?;
        }
        file.flush().await.map_err(io_error)?;
        drop(file);
        // A sender whose file read failed ends its stream early but cleanly. Installing a
        // truncated file would fail inside openraft's state machine, which stops this node's
        // Raft: check the stream's end marker and row count here and refuse it instead.
        let check = path.to_path_buf();
        tokio::task::spawn_blocking(move || raftlog_store::check_stream(&check))
            .await
            .map_err(|e| Status::internal(format!("checking a received snapshot: {e}")))?
            .map_err(|e| Status::data_loss(format!("received an incomplete snapshot: {e}")))?;
        tokio::fs::File::open(path).await.map_err(io_error)
    }
}

fn wrong_group(hosted: GroupId, asked: GroupId) -> Status {
    Status::not_found(format!(
        "this node does not host Raft group {asked} (it hosts {hosted})"
    ))
}

fn open<T: DeserializeOwned>(group: GroupId, envelope: RaftEnvelope) -> Result<T, Status> {
    if envelope.group_id != group {
        return Err(wrong_group(group, envelope.group_id));
    }
    // Strict: the whole payload must be one message (postcard alone ignores trailing bytes,
    // so a corrupted or foreign payload could otherwise pass as a shorter valid message).
    match postcard::take_from_bytes(&envelope.payload) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(undecodable(format!("{} trailing bytes", rest.len()))),
        Err(e) => Err(undecodable(e.to_string())),
    }
}

/// [`open`] for an AppendEntries: the entries' bytes are kept for the log's append
/// ([`ReceivedEncodings`]).
fn open_append_entries(
    group: GroupId,
    envelope: RaftEnvelope,
    received: &ReceivedEncodings,
) -> Result<AppendEntriesRequest, Status> {
    if envelope.group_id != group {
        return Err(wrong_group(group, envelope.group_id));
    }
    received
        .decode_append_entries(&envelope.payload)
        .map_err(undecodable)
}

fn undecodable(why: String) -> Status {
    Status::invalid_argument(format!(
        "undecodable Raft message (peer of another version?): {why}"
    ))
}

#[tonic::async_trait]
impl RaftService for PeerService {
    async fn vote(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftEnvelope>, Status> {
        self.admit(&request)?;
        let rpc: VoteRequest = self.open(request.into_inner())?;
        let result = self.raft.vote(rpc).await.map_err(RaftError::unwrap_fatal);
        Ok(self.reply(&result))
    }

    async fn pre_vote(
        &self,
        request: Request<RaftEnvelope>,
    ) -> Result<Response<RaftEnvelope>, Status> {
        self.admit(&request)?;
        let rpc: VoteRequest = self.open(request.into_inner())?;
        let result = self
            .raft
            .pre_vote(rpc)
            .await
            .map_err(RaftError::unwrap_fatal);
        Ok(self.reply(&result))
    }

    async fn append_entries(
        &self,
        request: Request<RaftEnvelope>,
    ) -> Result<Response<RaftEnvelope>, Status> {
        self.admit(&request)?;
        let rpc = open_append_entries(self.group, request.into_inner(), &self.received)?;
        let result = self
            .raft
            .append_entries(rpc)
            .await
            .map_err(RaftError::unwrap_fatal);
        Ok(self.reply(&result))
    }

    type StreamAppendStream = EnvelopeStream;

    /// Hands the requests to openraft as they arrive (it appends the next while the previous is
    /// being fsynced) and answers each, in order, once it is flushed. An envelope that does not
    /// decode ends the stream with its error after the answers to the requests before it.
    async fn stream_append(
        &self,
        request: Request<Streaming<RaftEnvelope>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        self.admit(&request)?;
        let (group, received) = (self.group, self.received.clone());
        let (bad_tx, bad_rx) = tokio::sync::oneshot::channel::<Status>();
        let arrived = InOrderTimes::default();
        let arriving = arrived.clone();
        let requests = request
            .into_inner()
            .scan(Some(bad_tx), move |bad_tx, envelope| {
                let opened =
                    envelope.and_then(|envelope| open_append_entries(group, envelope, &received));
                futures::future::ready(match opened {
                    Ok(rpc) => {
                        arriving.started(!rpc.entries.is_empty());
                        Some(rpc)
                    }
                    Err(status) => {
                        if let Some(tx) = bad_tx.take() {
                            let _ = tx.send(status);
                        }
                        None
                    }
                })
            });
        let append_time = metrics::histogram!(crate::metrics::FOLLOWER_APPEND_SECONDS);
        let answers = self.raft.stream_append(requests).map(move |result| {
            if let Some(took) = arrived.answered() {
                append_time.record(took.as_secs_f64());
            }
            Ok(envelope(group, encode(&result)))
        });
        // After the last answer: the decoding error that ended the requests, if one did.
        let ending =
            futures::stream::once(bad_rx).filter_map(|bad| async move { bad.ok().map(Err) });
        // The leader keeps this stream open for as long as it leads, so a graceful stop (which
        // waits for open calls) would wait its whole 5 s drain on it. Stopping ends the stream
        // with UNAVAILABLE instead: the leader counts this node unreachable and backs off,
        // exactly as when the node is gone, and any append not answered yet is sent again.
        let (mut until_stop, after_stop) = (self.stopping.clone(), self.stopping.clone());
        let stopped = async move {
            let _ = until_stop.wait_for(|stopping| *stopping).await;
        };
        let shutting_down = futures::stream::once(async move {
            (*after_stop.borrow()).then(|| {
                Err(Status::unavailable(
                    "this node is shutting down; the leader retries",
                ))
            })
        })
        .filter_map(futures::future::ready);
        let answers = answers
            .chain(ending)
            .take_until(stopped)
            .chain(shutting_down);
        Ok(Response::new(Box::pin(answers)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<RaftEnvelope>>,
    ) -> Result<Response<RaftEnvelope>, Status> {
        self.admit(&request)?;
        let mut chunks = request.into_inner();
        let Some(header) = chunks.message().await? else {
            return Err(Status::invalid_argument(
                "a snapshot stream without its header",
            ));
        };
        let (vote, meta): (Vote, SnapshotMeta) = self.open(header)?;
        let path = self.snapshots.receiving_path();
        let received = self.receive_snapshot_data(&mut chunks, &path).await;
        let result = match received {
            Ok(file) => {
                let id = raftlog_store::new_snapshot_id(meta.last_log_id.as_ref());
                let snapshot = Snapshot {
                    meta,
                    snapshot: SnapshotData { id, file },
                };
                Ok(self.raft.install_full_snapshot(vote, snapshot).await)
            }
            Err(status) => Err(status),
        };
        // Installing copied what it kept; an older snapshot is not installed at all.
        let _ = tokio::fs::remove_file(&path).await;
        Ok(self.reply(&result?))
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftEnvelope>,
    ) -> Result<Response<RaftEnvelope>, Status> {
        self.admit(&request)?;
        let req: TransferLeaderRequest = self.open(request.into_inner())?;
        Ok(self.reply(&self.raft.handle_transfer_leader(req).await))
    }
}
