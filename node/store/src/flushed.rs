//! The mark a Raft group's log and state machine share: how far the state machine is on disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How far one Raft group's state machine is known to be on disk: the highest applied log index
/// whose effects are in flushed files of the state database. Shared by the group's state machine,
/// which learns it when it opens, builds a snapshot (a checkpoint flushes the memtable) or installs
/// one, and its log, which must keep every entry above it: the state machine is written without a
/// WAL, so after a crash it is re-applied from the log from there. Knowing it lets a purge skip
/// the memtable flush it would otherwise need (a disk write and fsyncs inside Raft's core task).
/// Only ever underestimates: RocksDB's own flushes are not counted.
#[derive(Clone, Default, Debug)]
pub struct StateFlushed(Arc<AtomicU64>);

impl StateFlushed {
    /// Whether the state machine's effects of entry `index` are known to be on disk.
    pub fn covers(&self, index: u64) -> bool {
        // Holds index + 1 of the highest covered entry; 0 covers nothing.
        self.0.load(Ordering::Acquire) > index
    }

    /// Records that everything applied through `index` is on disk.
    pub fn advance(&self, index: Option<u64>) {
        if let Some(index) = index {
            self.0.fetch_max(index + 1, Ordering::AcqRel);
        }
    }
}
