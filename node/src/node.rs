//! One running node as its request handlers see it: its id, configuration, TLS material, auth
//! checker and disk-space guard (what the node has once) and the registry of the Raft groups it runs.

use std::sync::Arc;

use crate::config::NodeConfig;
use crate::group::{Group, Groups, Leader};
use raftlog_core::NodeId;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct NodeContext {
    pub id: NodeId,
    pub config: Arc<NodeConfig>,
    /// Free space of the data dir, for the produce guard (`limits.disk_free_bytes_min`).
    pub disk: crate::disk::DiskSpace,
    pub groups: Arc<Groups>,
    /// The node's certificates when it serves TLS (its own connections to the leader use them).
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Authentication and authorization of client requests (off unless `auth_enabled`).
    pub auth: Arc<crate::auth::Auth>,
}

impl NodeContext {
    /// The group that holds topics, consumer groups and (for now) every partition.
    pub fn metadata(&self) -> &Group {
        self.groups.metadata()
    }

    /// The metadata group's leader as this node currently sees it.
    pub fn leader(&self) -> Option<Leader> {
        self.metadata().leader()
    }
}
