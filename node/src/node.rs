//! One running node: the Raft instance, the applied state it serves reads from, and the write
//! entry point shared by the API services.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use openraft::error::LinearizableReadError;

use crate::config::NodeConfig;
use crate::raft::Raft;
use crate::write::{client_write_error, Leader, WriteError};
use raftlog_core::types::RaftError;
use raftlog_core::NodeId;
use raftlog_core::{Command, CommandResponse};
use raftlog_store::StateView;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct NodeContext {
    pub id: NodeId,
    pub raft: Raft,
    pub view: Arc<StateView>,
    pub config: Arc<NodeConfig>,
    pub batcher: crate::batcher::Batcher,
    /// Set while the node shuts down: it proposes nothing more (see [`crate::handover`]).
    pub writes_stopped: Arc<AtomicBool>,
    /// Free space of the data dir, for the produce guard (`limits.disk_free_bytes_min`).
    pub disk: crate::disk::DiskSpace,
}

impl NodeContext {
    /// Proposes `command` through Raft, unless `deadline` passes first, and waits until it is
    /// committed (fsynced on a majority) and applied here; returns what applying it answered.
    /// A write not proposed by its deadline is answered DEADLINE_EXCEEDED and never applied.
    pub async fn write(
        &self,
        command: Command,
        deadline: Instant,
    ) -> Result<CommandResponse, WriteError> {
        self.refuse_if_stopped()?;
        // Appends go through the batcher (group commit, or with group_commit_max = 1 each
        // request proposed at once as its own entry); rarer commands (topics, groups, producers,
        // housekeeping) are proposed on their own.
        if let Command::Append { records, .. } = &command {
            let bytes = records.iter().map(|r| r.size_bytes()).sum();
            return self.batcher.write(command, bytes, deadline).await;
        }
        if Instant::now() >= deadline {
            return Err(WriteError::DeadlinePassed);
        }
        match self.raft.client_write(command).await {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(e)) => Err(client_write_error(e)),
            Err(RaftError::Fatal(e)) => Err(WriteError::OutcomeUnknown(format!(
                "node {} cannot serve writes: {e}; use another node",
                self.id
            ))),
        }
    }

    /// Queues an append for group commit and returns its outcome to await: appends submitted one
    /// after another are proposed in that order (what a produce stream relies on).
    pub async fn submit_append(
        &self,
        command: Command,
        deadline: Instant,
    ) -> Result<
        impl Future<Output = Result<CommandResponse, WriteError>> + Send + 'static,
        WriteError,
    > {
        self.refuse_if_stopped()?;
        let bytes = match &command {
            Command::Append { records, .. } => records.iter().map(|r| r.size_bytes()).sum(),
            _ => 0,
        };
        Ok(self.batcher.submit(command, bytes, deadline).await)
    }

    /// While the node shuts down it proposes nothing: a write goes to the successor once one
    /// leads, else the client retries it.
    fn refuse_if_stopped(&self) -> Result<(), WriteError> {
        if !self.writes_stopped.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(leader) = self.leader().filter(|(id, _)| *id != self.id) {
            return Err(WriteError::NotLeader(Some(leader)));
        }
        Err(WriteError::NotApplied(format!(
            "node {} is shutting down; retry on another node",
            self.id
        )))
    }

    /// Waits until this node may serve a linearizable read: it confirms with a quorum that it is
    /// still the leader and applies everything committed before the call. A read served after
    /// this sees every write acknowledged before the read began.
    pub async fn read_barrier(&self) -> Result<(), WriteError> {
        match self
            .raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
        {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                let leader = match (f.leader_id, f.leader_node) {
                    (Some(id), Some(node)) => Some((id, node.addr)),
                    _ => None,
                };
                Err(WriteError::NotLeader(leader))
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(e))) => {
                Err(WriteError::NotApplied(format!(
                    "leader {} cannot reach a quorum ({e}); retry",
                    self.id
                )))
            }
            Err(RaftError::Fatal(e)) => Err(WriteError::NotApplied(format!(
                "node {} cannot serve reads: {e}; use another node",
                self.id
            ))),
        }
    }

    /// From now on every write is refused as not applied (the node is shutting down).
    pub fn stop_taking_writes(&self) {
        self.writes_stopped.store(true, Ordering::Release);
    }

    /// The leader as this node currently sees it.
    pub fn leader(&self) -> Option<Leader> {
        crate::raft::leader(&self.raft)
    }
}
