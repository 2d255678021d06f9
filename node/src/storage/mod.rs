//! Durable storage of one node: a single RocksDB database holding the Raft log ([`log_store`])
//! and the state machine ([`state_machine`]) in separate column families, plus snapshot files.
//!
//! Durability contract (what the rest of the node relies on):
//! - Log entries and votes are written with `sync = true`: they are fsynced before openraft is told
//!   they are flushed, and so before this node answers a peer or acknowledges a client.
//! - The state machine is written without RocksDB's WAL: the Raft log is its WAL. Everything the
//!   state machine holds lives in ONE column family, so that whatever survives a crash is a prefix
//!   of its write batches (memtables of one column family flush in order), and the last-applied id
//!   stored with the data says where openraft must resume re-applying.
//! - The log is never purged past what the state machine has durably flushed (see
//!   [`log_store::LogStore::purge`]).

pub mod keys;
pub mod log_store;
pub mod snapshot_file;
pub mod state_machine;
pub mod stored_batch;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

pub const CF_RAFT_LOG: &str = "raft_log";
pub const CF_RAFT_META: &str = "raft_meta";
pub const CF_STATE_MACHINE: &str = "state_machine";

/// Opens (creating if needed) the node's database under `dir`.
pub fn open_db(dir: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Background flushes and compactions on both cores of a small machine.
    opts.increase_parallelism(2);
    let cfs = [CF_RAFT_LOG, CF_RAFT_META, CF_STATE_MACHINE]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    Ok(Arc::new(DB::open_cf_descriptors(&opts, dir, cfs)?))
}

/// Encodes a value stored in RocksDB (log entries, votes, state-machine rows).
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain data types into a Vec cannot fail.
    postcard::to_allocvec(value).expect("postcard encoding of a storage value")
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
