//! The one place that names openraft's generics. The store and the node use these aliases, so a
//! change of openraft version or of a type parameter touches only this file (and the `Raft`
//! alias in the node's `raft` module, which names the concrete state machine).

use crate::command::{Command, CommandResponse};
use crate::ids::NodeId;

openraft::declare_raft_types!(
    /// raftlog's Raft type configuration. Leader ids are openraft's default `leader_id_adv` with a
    /// `u64` term, the on-disk shape 0.9 wrote too.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A snapshot's data as openraft carries it: a file (a stream, or a pointer to a checkpoint) and
/// the id that names the snapshot's files in the snapshot directory. Snapshots are files on disk,
/// streamed in chunks: they never have to fit in memory.
#[derive(Debug)]
pub struct SnapshotData {
    pub id: String,
    pub file: tokio::fs::File,
}

pub type Node = openraft::BasicNode;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type EntryPayload = openraft::alias::EntryPayloadOf<TypeConfig>;
pub type CommittedLeaderId = openraft::alias::CommittedLeaderIdOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, Node>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
/// openraft's storage traits report plain I/O errors.
pub type StorageError = std::io::Error;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<TypeConfig, E>;
pub type RpcError<E = openraft::error::Infallible> = openraft::error::RPCError<TypeConfig, E>;
pub type Fatal = openraft::error::Fatal<TypeConfig>;
pub type ClientWriteError = openraft::error::ClientWriteError<TypeConfig>;
pub type ClientWriteResponse = openraft::raft::ClientWriteResponse<TypeConfig>;
pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<TypeConfig>;
pub type StreamAppendResult = openraft::raft::StreamAppendResult<TypeConfig>;
pub type VoteRequest = openraft::raft::VoteRequest<TypeConfig>;
pub type VoteResponse = openraft::raft::VoteResponse<TypeConfig>;
pub type SnapshotResponse = openraft::raft::SnapshotResponse<TypeConfig>;
pub type TransferLeaderRequest = openraft::raft::TransferLeaderRequest<TypeConfig>;
pub type TransferLeaderResponse = openraft::raft::TransferLeaderResponse<TypeConfig>;
