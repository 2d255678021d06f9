//! raftlog-core: the vocabulary every other part of a node speaks, and nothing else.
//!
//! - [`ids`](NodeId): node, Raft group and topic ids;
//! - [`Command`] / [`CommandResponse`] / [`Rejection`] / [`Record`]: what goes into the Raft log
//!   and what applying it answers (an on-disk and on-wire format);
//! - the model ([`TopicState`], [`PartitionState`], [`GroupOffsets`], [`ProducerState`]): the
//!   replicated state's rows (an on-disk format);
//! - [`coordination`]: consumer-group membership and assignment, a pure function of the
//!   replicated state;
//! - [`auth`]: tokens, ACL entries and the authorization rule over them (pure);
//! - [`queue`]: queue consumption (per-record locks, redelivery, dead letters), a pure function
//!   of the replicated state;
//! - [`types`]: openraft's type configuration and the aliases of its generics, the one place that
//!   names them;
//! - [`limits`]: every sizing constant, with the relationships between them asserted at compile
//!   time.
//!
//! **Architecture invariant**: this crate knows no storage engine (RocksDB), no gRPC (tonic,
//! prost, the wire types) and no networking. `scripts/check-layers.py` holds it.

pub mod auth;
mod command;
pub mod coordination;
mod ids;
pub mod limits;
mod model;
pub mod queue;
pub mod types;

pub use command::{
    shared, Command, CommandResponse, ProducerSequence, Record, Rejection, TopicSettings,
};
pub use ids::{GroupId, NodeId, TopicId, METADATA_GROUP};
pub use model::{
    group_lag, GroupOffset, GroupOffsets, PartitionLag, PartitionState, ProducerPartition,
    ProducerState, TopicState,
};
pub use types::{SnapshotData, TypeConfig};

/// TEST-ONLY BUGS (feature `unsafe-test-bugs`, chosen by `RAFTLOG_UNSAFE_BUG`), for the fault
/// harness to prove it catches them (scripts/jepsen-teeth.sh): `group-double-owner` grants a
/// partition while another member still owns it; `group-commit-any-member` accepts a commit
/// from any member, owner or not; `queue-ignore-locks` lets every lock of a queue run out at
/// the next receive; `queue-ignore-keys` hands out a key-ordered queue's records as if it were
/// not key-ordered.
#[cfg(feature = "unsafe-test-bugs")]
pub(crate) fn test_bug(name: &str) -> bool {
    std::env::var("RAFTLOG_UNSAFE_BUG").is_ok_and(|bug| bug == name)
}

#[cfg(not(feature = "unsafe-test-bugs"))]
pub(crate) fn test_bug(_name: &str) -> bool {
    false
}
