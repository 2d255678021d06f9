//! One Raft group: its Raft instance, the applied state it serves reads from, its group-commit
//! batcher and its write path, plus the tasks it runs beside them (log retention, housekeeping,
//! leadership handover). A node holds its groups in a [`Groups`] registry.
//!
//! Today a node runs exactly one group ([`raftlog_core::METADATA_GROUP`]), which holds every topic
//! and consumer group; this is where more groups (partitions spread over several Raft groups)
//! plug in. What a node has once whatever its number of groups (the configuration, the disk-space
//! guard, the RocksDB databases, the listeners) stays with the node ([`crate::node`]).
//!
//! **Architecture invariant**: nothing here knows gRPC. A write that does not produce a replicated
//! outcome ends in a [`WriteError`], which the API layer maps to a status (`api::error`).

mod background;
mod batcher;
mod handover;
mod log_retention;
mod membership;
mod registry;
mod write;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::error::LinearizableReadError;

use crate::config::NodeConfig;
use crate::raft::network::PeerNetworkFactory;
use crate::raft::Raft;
use raftlog_core::limits::APPEND_ENTRIES_BYTES_TARGET;
use raftlog_core::types::RaftError;
use raftlog_core::{Command, CommandResponse, GroupId, NodeId};
use raftlog_store::{
    Databases, LogStore, ReceivedEncodings, SnapshotStore, StateMachine, StateView,
};

pub use background::{expire_group_members, housekeeping, log_raft_changes, raft_failure};
pub use batcher::Batcher;
pub use handover::hand_over_leadership;
pub use membership::HeartbeatError;
pub use registry::Groups;
pub use write::{now_ms, Leader, WriteError};

/// One Raft group of this node. Cheap to clone (handles only).
#[derive(Clone)]
pub struct Group {
    pub id: GroupId,
    /// This node's id (the group's member on this node).
    pub node_id: NodeId,
    pub raft: Raft,
    /// The group's state as applied on this node.
    pub view: Arc<StateView>,
    batcher: Batcher,
    /// Liveness of consumer-group members, kept while this node leads ([`membership`]).
    sessions: Arc<membership::Sessions>,
    /// Set while the node shuts down: the group proposes nothing more (see [`handover`]).
    writes_stopped: Arc<AtomicBool>,
}

/// What the node's peer service needs of a group to serve its Raft RPCs.
pub struct PeerParts {
    pub snapshots: SnapshotStore,
    pub received_encodings: ReceivedEncodings,
}

impl Group {
    /// Opens the group's storage in `dbs`, starts its Raft instance, its batcher and its log
    /// retention task.
    pub async fn start(
        id: GroupId,
        dbs: &Databases,
        config: &NodeConfig,
        tls: Option<Arc<crate::tls::Tls>>,
    ) -> anyhow::Result<(Self, PeerParts)> {
        let state_machine = StateMachine::open(dbs, id, config.data_dir.join("snapshots"))?;
        let log_store = LogStore::new(dbs, id, state_machine.flushed(), config.fsync_thread_nice);
        let log_bytes = log_store.bytes();
        let peer_parts = PeerParts {
            snapshots: state_machine.snapshot_store(),
            received_encodings: log_store.received_encodings(),
        };
        let view = state_machine.view();
        let network = PeerNetworkFactory::new(
            id,
            Duration::from_millis(config.raft.peer_connect_timeout_ms),
            config.snapshot.chunk_bytes_max as usize,
            log_store.encoded_entries(),
            tls,
        );
        let raft_config = Arc::new(
            config
                .openraft_config()
                .validate()
                .context("raft configuration")?,
        );
        let raft = Raft::new(
            config.node_id,
            raft_config,
            network,
            log_store,
            state_machine,
        )
        .await
        .context("starting Raft")?;
        // An entry bigger than what one AppendEntries carries could not be replicated in time
        // (see APPEND_ENTRIES_BYTES_TARGET): group commit stops adding requests there.
        let limits = &config.limits;
        let batcher = Batcher::start(
            raft.clone(),
            limits.group_commit_max,
            limits.batch_bytes_max.min(APPEND_ENTRIES_BYTES_TARGET),
            Duration::from_millis(limits.group_commit_linger_ms),
        );
        tokio::spawn(log_retention::run(
            raft.clone(),
            log_bytes,
            config.snapshot.clone(),
        ));
        let group = Self {
            id,
            node_id: config.node_id,
            raft,
            view,
            batcher,
            sessions: Default::default(),
            writes_stopped: Default::default(),
        };
        Ok((group, peer_parts))
    }

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
            Err(RaftError::APIError(e)) => Err(write::client_write_error(e)),
            Err(RaftError::Fatal(e)) => Err(WriteError::OutcomeUnknown(format!(
                "node {} cannot serve writes: {e}; use another node",
                self.node_id
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
        if let Some(leader) = self.leader().filter(|(id, _)| *id != self.node_id) {
            return Err(WriteError::NotLeader(Some(leader)));
        }
        Err(WriteError::NotApplied(format!(
            "node {} is shutting down; retry on another node",
            self.node_id
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
                    self.node_id
                )))
            }
            Err(RaftError::Fatal(e)) => Err(WriteError::NotApplied(format!(
                "node {} cannot serve reads: {e}; use another node",
                self.node_id
            ))),
        }
    }

    /// From now on every write is refused as not applied (the node is shutting down).
    pub fn stop_taking_writes(&self) {
        self.writes_stopped.store(true, Ordering::Release);
    }

    /// The group's leader as this node currently sees it.
    pub fn leader(&self) -> Option<Leader> {
        crate::raft::leader(&self.raft)
    }

    /// Whether this node leads the group.
    pub fn is_leader(&self) -> bool {
        self.leader().is_some_and(|(id, _)| id == self.node_id)
    }
}
