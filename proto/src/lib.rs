//! Generated gRPC code for raftlog's protocols, plus the one piece of behaviour that is part of
//! the wire contract: the key partitioner, which the node and every client must compute alike.
//! Conversions to domain types live at the boundaries in `node` and `client`.
//!
//! - [`v1`]: the client API (`Broker`, `Queues`) and the operator APIs (`Cluster`; `Auth`: tokens,
//!   ACLs).
//! - [`raft::v1`]: the peer-only Raft transport.
//! - [`http2`]: the HTTP/2 framing and flow-control settings every raftlog endpoint uses.
//! - `PARTITIONER_KEY_HASH` is [`partition_for_key`]; [`record_size`] is how limits count a record.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("raftlog.v1");
}

pub mod http2;

#[allow(clippy::all, missing_docs)]
pub mod raft {
    pub mod v1 {
        tonic::include_proto!("raftlog.raft.v1");
    }
}

/// The partition `PARTITIONER_KEY_HASH` assigns to `key` in a topic of `partitions` partitions:
/// xxh3-64 with seed 0 over the key bytes, modulo the partition count. Stable across versions and
/// platforms (it is documented in broker.proto); changing it would move keys between partitions.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(partitions)) as u32
}

/// Encoded `FileDescriptorSet` of all raftlog protos, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/raftlog_descriptor.bin"));

/// Bytes a record counts against size limits and batch bounds: key, value, and header keys and
/// values. The node enforces its limits with this count; clients size their batches with it.
pub fn record_size(r: &v1::Record) -> usize {
    r.key.as_ref().map_or(0, |k| k.len())
        + r.value.len()
        + r.headers
            .iter()
            .map(|h| h.key.len() + h.value.len())
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::partition_for_key;

    #[test]
    fn key_hash_is_stable() {
        // Pinned values (Python's `xxhash.xxh3_64_intdigest(b"user-42")` agrees): if these
        // change, keys move between partitions for every user.
        assert_eq!(
            xxhash_rust::xxh3::xxh3_64(b"user-42"),
            0x50fe_4b21_cf7b_09cd
        );
        assert_eq!(partition_for_key(b"user-42", 8), 5);
        assert_eq!(partition_for_key(b"anything", 1), 0);
    }
}
