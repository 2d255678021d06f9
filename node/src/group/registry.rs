//! The Raft groups a node runs, by id.

use std::collections::BTreeMap;

use super::Group;
use raftlog_core::{GroupId, METADATA_GROUP};

/// The groups of one node. Built once at start; a node runs exactly one group today
/// ([`METADATA_GROUP`], holding every topic and consumer group).
pub struct Groups {
    by_id: BTreeMap<GroupId, Group>,
}

impl Groups {
    /// The registry of `groups`, which must include the metadata group.
    pub fn new(groups: impl IntoIterator<Item = Group>) -> Self {
        let by_id: BTreeMap<_, _> = groups.into_iter().map(|g| (g.id, g)).collect();
        assert!(
            by_id.contains_key(&METADATA_GROUP),
            "a node always runs the metadata group"
        );
        Self { by_id }
    }

    /// The group that holds the cluster's topics and consumer groups (and, for now, every
    /// partition's records).
    pub fn metadata(&self) -> &Group {
        &self.by_id[&METADATA_GROUP]
    }
}
