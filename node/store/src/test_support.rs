//! Helpers the store's unit tests share.

use raftlog_core::types::{CommittedLeaderId, LogId};

/// The log id of `index` under leader 1 of `term`.
pub fn log_id_in(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId { term, node_id: 1 }, index)
}

/// The log id of `index` under leader 1 of term 1.
pub fn log_id(index: u64) -> LogId {
    log_id_in(1, index)
}

/// Both databases of a data dir at `dir`, with default options.
pub fn open_databases(dir: &std::path::Path) -> crate::Databases {
    crate::open(dir, &crate::StorageOptions::default()).expect("open RocksDB")
}
