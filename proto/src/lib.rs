//! Generated gRPC code for raftlog's protocols, and nothing else: conversions to domain types live
//! at the boundaries in `node` and `client`.
//!
//! - [`v1`]: the client API (`Broker`) and the operator API (`Cluster`).
//! - [`raft::v1`]: the peer-only Raft transport.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("raftlog.v1");
}

pub mod raft {
    pub mod v1 {
        tonic::include_proto!("raftlog.raft.v1");
    }
}

/// Encoded `FileDescriptorSet` of all raftlog protos, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/raftlog_descriptor.bin"));
