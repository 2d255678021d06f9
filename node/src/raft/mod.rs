//! Raft glue: openraft's type configuration, the peer transport (client side in [`network`],
//! server side in [`service`]).

pub mod network;
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
