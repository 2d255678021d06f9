//! Server side of the peer transport.
//!
//! # Protocol safety
//! This service lets its caller append to and overwrite this node's Raft log and install
//! snapshots. It must only be reachable by cluster members (bind the node to a private network).

use raftlog_proto::raft::v1::raft_server::Raft as RaftService;
use raftlog_proto::raft::v1::RaftEnvelope;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::types::*;
use crate::storage::encode;

pub struct PeerService {
    raft: Raft,
    group: GroupId,
}

impl PeerService {
    pub fn new(raft: Raft, group: GroupId) -> Self {
        Self { raft, group }
    }

    fn open<T: DeserializeOwned>(&self, request: Request<RaftEnvelope>) -> Result<T, Status> {
        let envelope = request.into_inner();
        if envelope.group_id != self.group {
            return Err(Status::not_found(format!(
                "this node does not host Raft group {} (it hosts {})",
                envelope.group_id, self.group
            )));
        }
        // Strict: the whole payload must be one message (postcard alone ignores trailing bytes,
        // so a corrupted or foreign payload could otherwise pass as a shorter valid message).
        let undecodable = |e: String| {
            Status::invalid_argument(format!(
                "undecodable Raft message (peer of another version?): {e}"
            ))
        };
        match postcard::take_from_bytes(&envelope.payload) {
            Ok((message, [])) => Ok(message),
            Ok((_, rest)) => Err(undecodable(format!("{} trailing bytes", rest.len()))),
            Err(e) => Err(undecodable(e.to_string())),
        }
    }

    fn reply<T: Serialize>(&self, result: &T) -> Response<RaftEnvelope> {
        Response::new(RaftEnvelope {
            group_id: self.group,
            payload: encode(result).into(),
        })
    }
}

#[tonic::async_trait]
impl RaftService for PeerService {
    async fn vote(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftEnvelope>, Status> {
        let rpc: VoteRequest = self.open(request)?;
        Ok(self.reply(&self.raft.vote(rpc).await))
    }

    async fn append_entries(
        &self,
        request: Request<RaftEnvelope>,
    ) -> Result<Response<RaftEnvelope>, Status> {
        let rpc: AppendEntriesRequest = self.open(request)?;
        Ok(self.reply(&self.raft.append_entries(rpc).await))
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftEnvelope>,
    ) -> Result<Response<RaftEnvelope>, Status> {
        let rpc: InstallSnapshotRequest = self.open(request)?;
        Ok(self.reply(&self.raft.install_snapshot(rpc).await))
    }
}
