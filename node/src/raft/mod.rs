//! Raft glue: openraft's type configuration, the peer transport (client side in [`network`],
//! server side in [`service`]).

pub mod network;
pub mod reachability;
pub mod service;
pub mod types;

/// The peer envelope of one Raft group around `payload` (an encoded message, or a snapshot chunk).
pub(crate) fn envelope(
    group: types::GroupId,
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
