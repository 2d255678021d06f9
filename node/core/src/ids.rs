//! The ids that name things across the cluster. Plain integers, so that keys, log entries and
//! peer messages encode them as they always have.

/// Node ids are chosen by the operator (`--node-id`), never 0.
pub type NodeId = u64;

/// Identifies a Raft group. Today a node runs only [`METADATA_GROUP`]; every storage key and peer
/// RPC carries the group id, so that more groups need no change of protocol or on-disk format.
pub type GroupId = u64;

/// The group that holds the cluster's metadata (and, until there are data groups, everything).
pub const METADATA_GROUP: GroupId = 0;

/// A topic's id, assigned by the state machine when the topic is created and never reused: a
/// topic created again under the same name gets a new id, so it never sees the old records.
pub type TopicId = u64;
