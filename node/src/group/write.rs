//! The outcome of a write, in the write path's own terms: why a write (or a read barrier) did not
//! produce a replicated outcome on this node. Nothing here knows gRPC: the API layer maps a
//! [`WriteError`] to a status with its retry advice (`api::error`).

use raftlog_core::types::ClientWriteError;
use raftlog_core::NodeId;

/// This node's wall clock in ms since the Unix epoch: the leader stamps it into commands (apply
/// never reads a clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A leader as this node knows it: its node id and its gRPC address.
pub type Leader = (NodeId, String);

/// Why a write did not produce a replicated outcome on this node. Each variant says whether the
/// write may have been applied, which is what decides whether a client may retry it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// This node does not lead: the write was not applied; it goes to this leader (if known).
    #[error("this node does not lead (leader: {0:?})")]
    NotLeader(Option<Leader>),
    /// Its deadline passed before it was proposed: not applied, and never will be.
    #[error("the deadline passed before the write was proposed")]
    DeadlinePassed,
    /// Refused before it had any effect (the node shuts down, the leader cannot reach a quorum):
    /// retrying it, here later or on another node, cannot duplicate it. The message says why.
    #[error("{0}")]
    NotApplied(String),
    /// It may have been applied or not (leadership changed after it was appended, Raft stopped
    /// with it in flight): only an idempotent retry is safe.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// Raft refused it in its current state (a membership change that conflicts).
    #[error("{0}")]
    Refused(String),
}

/// Maps openraft's refusal of a write.
pub fn client_write_error(e: ClientWriteError) -> WriteError {
    match e {
        ClientWriteError::ForwardToLeader(f) => {
            let leader = match (f.leader_id, f.leader_node) {
                (Some(id), Some(node)) => Some((id, node.addr)),
                _ => None,
            };
            WriteError::NotLeader(leader)
        }
        // Appended here, then replaced by another leader's log: it may have committed or not.
        ClientWriteError::LogEntryDiscarded(f) => WriteError::OutcomeUnknown(format!(
            "leadership changed before the write was acknowledged (leader now {:?}); its outcome \
             is unknown, retry idempotently",
            f.leader_id
        )),
        ClientWriteError::ChangeMembershipError(e) => WriteError::Refused(e.to_string()),
        // raftlog proposes nothing with a precondition.
        ClientWriteError::PreconditionFailed(e) => WriteError::Refused(e.to_string()),
    }
}
