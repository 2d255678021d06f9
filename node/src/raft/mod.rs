//! Raft glue: openraft's type configuration, the peer transport (client side in [`network`],
//! server side in [`service`]).

pub mod network;
pub mod reachability;
pub mod service;

/// A Raft group's handle: openraft over this node's state machine. Named here, above storage, so
/// that the vocabulary in [`crate::types`] never names a concrete store.
pub type Raft = openraft::Raft<raftlog_core::types::TypeConfig, raftlog_store::StateMachine>;

/// The leader `raft` currently knows of, with its address, if any.
pub fn leader(raft: &Raft) -> Option<(raftlog_core::NodeId, String)> {
    use openraft::async_runtime::watch::WatchReceiver;
    let metrics = raft.metrics().borrow_watched().clone();
    with_addr(
        metrics.membership_config.membership(),
        metrics.current_leader?,
    )
}

/// `node` with its address in `membership`, if it is a member.
pub fn with_addr(
    membership: &raftlog_core::types::Membership,
    node: raftlog_core::NodeId,
) -> Option<(raftlog_core::NodeId, String)> {
    let addr = membership.get_node(&node)?.addr.clone();
    Some((node, addr))
}

/// The last log index the leader knows `voter` to hold (its replication progress), if any.
pub fn replicated_index(
    metrics: &raftlog_core::types::RaftMetrics,
    voter: raftlog_core::NodeId,
) -> Option<u64> {
    metrics
        .replication
        .as_ref()
        .and_then(|r| r.get(&voter).cloned().flatten())
        .map(|l| l.index)
}

/// The peer envelope of one Raft group around `payload` (an encoded message, or a snapshot chunk).
pub(crate) fn envelope(
    group: raftlog_core::GroupId,
    payload: impl Into<bytes::Bytes>,
) -> raftlog_proto::raft::v1::RaftEnvelope {
    raftlog_proto::raft::v1::RaftEnvelope {
        group_id: group,
        payload: payload.into(),
    }
}

/// When each request of one AppendEntries stream started (sent, or arrived), for the stage
/// histograms: answers come back in request order, so the oldest start is the one just answered.
/// Only requests carrying entries are timed; heartbeats would dilute the figure.
#[derive(Clone, Default)]
pub(crate) struct InOrderTimes(
    std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<Option<std::time::Instant>>>>,
);

impl InOrderTimes {
    /// Notes the next request, timed from now if `carries_entries`.
    pub(crate) fn started(&self, carries_entries: bool) {
        let at = carries_entries.then(std::time::Instant::now);
        self.0.lock().expect("request times lock").push_back(at);
    }

    /// The time since the request now answered started, if it was timed.
    pub(crate) fn answered(&self) -> Option<std::time::Duration> {
        let started = self.0.lock().expect("request times lock").pop_front()?;
        started.map(|at| at.elapsed())
    }
}
