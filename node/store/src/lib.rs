//! raftlog-store: durable storage of one node on RocksDB. Two databases — one for the Raft log
//! ([`LogStore`]), one for the state machine ([`StateMachine`]); see [`Databases`] for why two —
//! plus the snapshot files of each Raft group ([`SnapshotStore`]).
//!
//! Durability contract (what the rest of the node relies on):
//! - Log entries are fsynced before openraft is told they are flushed (by the fsync thread), and
//!   votes and truncations are written with `sync = true`: so before this node answers a peer or
//!   acknowledges a client.
//! - The state machine is written without RocksDB's WAL: the Raft log is its WAL. Everything the
//!   state machine holds lives in ONE column family, so that whatever survives a crash is a prefix
//!   of its write batches (memtables of one column family flush in order), and the last-applied id
//!   stored with the data says where openraft must resume re-applying.
//! - The log is never purged past what the state machine has durably flushed ([`StateFlushed`]).
//!
//! Memory: both databases share one write-buffer budget and one block cache ([`MemoryBudget`]),
//! so what RocksDB holds is bounded by configuration, not by the data or the number of column
//! families.
//!
//! Disk I/O: flushes and compactions write with O_DIRECT, and the state machine's record batches
//! are read with O_DIRECT, where the file system allows it ([`StorageOptions::direct_io`]); the
//! log's WAL goes through the page cache.
//!
//! **Architecture invariant**: this crate knows no gRPC (no tonic, prost or wire types); it
//! depends on raftlog-core only. `scripts/check-layers.py` holds it.

mod codec;
mod db;
mod flushed;
mod keys;
mod log_store;
pub mod metrics;
mod snapshot_file;
mod snapshot_store;
mod state_machine;
pub mod stored_batch;
#[cfg(test)]
mod test_support;

pub use codec::{decode, encode};
pub use db::{open, Compression, Databases, MemoryBudget, StorageOptions};
pub use flushed::StateFlushed;
pub use log_store::{EncodedEntries, LogBytes, LogStore, ReceivedEncodings};
pub use snapshot_store::{check_stream, for_sending, new_snapshot_id, SnapshotStore};
pub use state_machine::{dead_letter_header, ReadError, ReadResult, StateMachine, StateView};
