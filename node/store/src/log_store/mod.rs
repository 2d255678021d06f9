//! The Raft log on RocksDB: entries, vote, committed id and last purged id of one Raft group.
//!
//! Every mutation that openraft relies on for safety is durable before openraft learns of it:
//! - Appended entries are written to RocksDB (memtable + WAL file, not yet fsynced) inside
//!   `append`, so the log reader and the replication streams see them at once; the [`LogFlusher`]
//!   thread then fsyncs the WAL and only after that invokes openraft's flushed callbacks, in
//!   append order. openraft counts the leader's own copy towards the commit quorum, and a follower
//!   answers AppendEntries, only on that callback.
//! - Vote and truncation are written with `sync = true` (the write returns after the fsync). A
//!   purge is not: losing one in a crash only keeps entries that are no longer needed.
//!
//! A node therefore never answers a peer or acknowledges a client for a log entry or vote that a
//! power cut could take back. Why the append fsync is on its own thread: it keeps the tokio
//! workers free while the disk works, and every append that arrives during one fsync shares the
//! next one (group commit at the disk, as an OS merges writes). openraft 0.10 submits appends
//! without waiting for their flush, so the leader replicates an entry while its own fsync runs.
//!
//! Where things are: this file holds the [`LogStore`] and its reads of RocksDB; `raft_impl.rs`
//! openraft's log traits (append, truncate, purge, vote, committed id); `fsync.rs` the fsync
//! thread that reports appends flushed; `committed.rs` the committed id that rides with appends;
//! `log_bytes.rs` the byte count that log retention decides by. Two caches spare replication a
//! read or an encoding: `recent.rs`, the entries appended last with their stored encodings (what a
//! leader sends), and `received.rs`, the encodings entries arrived in (what a follower stores).

mod committed;
mod fsync;
mod log_bytes;
mod raft_impl;
mod received;
mod recent;
#[cfg(test)]
mod test_entries;

use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteOptions, DB};

use crate::codec::{decode, encode};
use crate::db::{Databases, CF_RAFT_LOG, CF_RAFT_META};
use crate::keys::{self, MetaKey};
use crate::StateFlushed;
use committed::CommittedMark;
use fsync::LogFlusher;
use raftlog_core::types::{Entry, LogId, StorageError};
use raftlog_core::GroupId;
use recent::RecentEntries;

pub use log_bytes::LogBytes;
pub use received::ReceivedEncodings;
pub use recent::EncodedEntries;

/// The log of one Raft group. Cheap to clone: clones share the database (openraft's log reader is
/// such a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// The state machine's database, flushed before a purge (see
    /// [`RaftLogStorage::purge`](openraft::storage::RaftLogStorage::purge)).
    state_db: Arc<DB>,
    group: GroupId,
    flusher: LogFlusher,
    bytes: LogBytes,
    recent: RecentEntries,
    received: ReceivedEncodings,
    /// How far the state machine is on disk (what a purge may drop without a flush).
    state_flushed: StateFlushed,
    committed: CommittedMark,
}

fn sync_write() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::other(format!("reading the raft log: {e}"))
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::other(format!("writing the raft log: {e}"))
}

impl LogStore {
    /// The log of `group`; `state_flushed` is its state machine's ([`StateMachine::flushed`]);
    /// its fsync thread runs at nice value `fsync_thread_nice` (0: the node's own).
    ///
    /// [`StateMachine::flushed`]: crate::state_machine::StateMachine::flushed
    pub fn new(
        dbs: &Databases,
        group: GroupId,
        state_flushed: StateFlushed,
        fsync_thread_nice: i32,
    ) -> Self {
        let db = dbs.log.clone();
        let committed = CommittedMark::default();
        let flusher = LogFlusher::start(
            db.clone(),
            committed.clone(),
            keys::meta(group, MetaKey::Committed).to_vec(),
            fsync_thread_nice,
        );
        Self {
            db,
            state_db: dbs.state.clone(),
            group,
            flusher,
            bytes: LogBytes::default(),
            recent: RecentEntries::default(),
            received: ReceivedEncodings::default(),
            state_flushed,
            committed,
        }
    }

    /// Where the peer service leaves the encodings of the entries it receives, for this log's
    /// appends to store as they are.
    pub fn received_encodings(&self) -> ReceivedEncodings {
        self.received.clone()
    }

    /// The encodings of the entries appended last, shared with this log.
    pub fn encoded_entries(&self) -> EncodedEntries {
        EncodedEntries(self.recent.clone())
    }

    /// The byte count of this log, shared with its clones.
    pub fn bytes(&self) -> LogBytes {
        self.bytes.clone()
    }

    fn cf_log(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_RAFT_LOG)
            .expect("raft_log column family is created at open")
    }

    fn cf_meta(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_RAFT_META)
            .expect("raft_meta column family is created at open")
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        which: MetaKey,
    ) -> Result<Option<T>, StorageError> {
        match self
            .db
            .get_cf(self.cf_meta(), keys::meta(self.group, which))
            .map_err(read_err)?
        {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode(&bytes).map_err(read_err)?)),
        }
    }

    /// Writes a meta row and fsyncs it before returning.
    fn put_meta_synced<T: serde::Serialize>(
        &self,
        which: MetaKey,
        value: &T,
    ) -> Result<(), StorageError> {
        self.db
            .put_cf_opt(
                self.cf_meta(),
                keys::meta(self.group, which),
                encode(value),
                &sync_write(),
            )
            .map_err(write_err)
    }

    /// The last entry present in the log, if any.
    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let end = keys::log_entry(self.group, u64::MAX);
        let mut iter = self
            .db
            .iterator_cf(self.cf_log(), IteratorMode::From(&end, Direction::Reverse));
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item.map_err(read_err)?;
                if key[..8] != self.group.to_be_bytes() {
                    return Ok(None);
                }
                let entry: Entry = decode(&value).map_err(read_err)?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

impl LogStore {
    /// The entries of `range` in index order, stopping after the first entry that brings the
    /// bytes read to `bytes_max`.
    fn read_entries(
        &self,
        range: impl RangeBounds<u64>,
        bytes_max: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let start_key = keys::log_entry(self.group, start);
        // An upper bound keeps the iterator from reading (and prefetching) past the range.
        let end = match range.end_bound() {
            Bound::Included(i) => i.checked_add(1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if let Some(entries) = self.recent.read(start, end, bytes_max) {
            return Ok(entries);
        }
        let mut opts = ReadOptions::default();
        if let Some(end) = end {
            opts.set_iterate_upper_bound(keys::log_entry(self.group, end).to_vec());
        }
        let iter = self.db.iterator_cf_opt(
            self.cf_log(),
            opts,
            IteratorMode::From(&start_key, Direction::Forward),
        );
        let mut entries = Vec::new();
        let mut bytes = 0;
        for item in iter {
            let (key, value) = item.map_err(read_err)?;
            if key[..8] != self.group.to_be_bytes() {
                break;
            }
            let index = keys::log_index_of(&key);
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = decode(&value).map_err(read_err)?;
            // The index in the key must be the index in the entry: anything else is corruption.
            assert_eq!(
                entry.log_id.index, index,
                "raft_log key and entry disagree on the index"
            );
            entries.push(entry);
            bytes += value.len();
            if bytes >= bytes_max {
                break;
            }
        }
        Ok(entries)
    }
}
