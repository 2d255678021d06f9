//! How many bytes the log holds after an index ([`LogBytes`]), kept as entries are appended,
//! truncated and purged.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// How many bytes the log holds after a given index, for the entries appended since the process
/// started (what raftlog-node's `log_retention` decides snapshots and purges by). Entries found in the
/// log at start are not counted: they are purged with the first snapshot.
#[derive(Clone, Default)]
pub struct LogBytes(Arc<Mutex<LogBytesInner>>);

#[derive(Default)]
struct LogBytesInner {
    /// Bytes of every entry ever appended.
    total: u64,
    /// (index, `total` before it) of the entries in the log, in index order.
    entries: VecDeque<(u64, u64)>,
}

impl LogBytes {
    pub(super) fn appended(&self, index: u64, bytes: u64) {
        // openraft truncates a conflicting suffix before it appends over it; should an index
        // come again anyway, the entry it replaces no longer counts.
        self.truncated(index);
        let mut inner = self.0.lock().expect("log bytes lock");
        let before = inner.total;
        inner.entries.push_back((index, before));
        inner.total += bytes;
    }

    pub(super) fn truncated(&self, from: u64) {
        let mut inner = self.0.lock().expect("log bytes lock");
        while let Some(&(i, before)) = inner.entries.back() {
            if i < from {
                break;
            }
            inner.entries.pop_back();
            inner.total = before;
        }
    }

    pub(super) fn purged(&self, upto: u64) {
        let mut inner = self.0.lock().expect("log bytes lock");
        while inner.entries.front().is_some_and(|&(i, _)| i <= upto) {
            inner.entries.pop_front();
        }
    }

    /// Bytes of the counted entries with an index above `index` (all of them for `None`).
    pub fn after(&self, index: Option<u64>) -> u64 {
        let inner = self.0.lock().expect("log bytes lock");
        let first_after = match index {
            None => 0,
            Some(index) => inner.entries.partition_point(|&(i, _)| i <= index),
        };
        match inner.entries.get(first_after) {
            Some(&(_, before)) => inner.total - before,
            None => 0,
        }
    }
}
