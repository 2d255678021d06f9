//! openraft's log traits on [`LogStore`]: reading entries and the vote (`RaftLogReader`), and
//! appending, truncating, purging, saving the vote and the committed id (`RaftLogStorage`), with
//! the durability each needs (see the module doc of `log_store`).

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::mpsc;
use std::time::Instant;

use bytes::Bytes;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use rocksdb::WriteBatch;

use super::recent::Cached;
use super::{sync_write, write_err, LogStore};
use crate::codec::{encode, WRITE_BATCH_ROW_OVERHEAD};
use crate::db::CF_STATE_MACHINE;
use crate::keys::{self, MetaKey};
use raftlog_core::types::{Entry, LogId, StorageError, Vote};
use raftlog_core::TypeConfig;

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(range, usize::MAX)
    }

    /// What replication sends in one AppendEntries: openraft accepts fewer entries than asked
    /// for, so this is where a request's size is bounded
    /// ([`raftlog_core::limits::APPEND_ENTRIES_BYTES_TARGET`]).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(
            start..end,
            raftlog_core::limits::APPEND_ENTRIES_BYTES_TARGET,
        )
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(MetaKey::Vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(MetaKey::LastPurged)?;
        let last = self.last_entry_log_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // fsynced: a vote granted and then forgotten lets two leaders share a term.
        self.put_meta_synced(MetaKey::Vote, vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not needed for safety (it is re-learned from the leader); it lets a restarted node
        // re-apply its committed tail without waiting for a leader. Written with the next append
        // ([`CommittedMark`]), never fsynced on its own.
        self.committed.save(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        if let Some(saved) = self.committed.saved() {
            return Ok(saved);
        }
        Ok(self
            .get_meta::<Option<LogId>>(MetaKey::Committed)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // Cached as they are: their records own their bytes (copied out of the clients'
        // requests by `batcher::own_record_bytes`) or share the peer's message that their stored
        // bytes keep alive anyway (`ReceivedEncodings`), so the cache's byte bound is what they
        // keep alive.
        let appended: Vec<Cached> = entries
            .into_iter()
            .map(|entry| {
                let encoded = self
                    .received
                    .take(&entry.log_id)
                    .unwrap_or_else(|| Bytes::from(encode(&entry)));
                Cached { entry, encoded }
            })
            .collect();
        // One write batch for the whole run of entries, visible to readers when `write` returns;
        // durable (and reported flushed) once the flusher's next fsync covers it. Sized up front:
        // grown as it fills, the batch copied everything in it at each doubling (2 % of a
        // follower's CPU at 1 KiB, C=64).
        let mut batch = WriteBatch::with_capacity_bytes(
            appended
                .iter()
                .map(|cached| cached.encoded.len() + WRITE_BATCH_ROW_OVERHEAD)
                .sum::<usize>()
                + WRITE_BATCH_ROW_OVERHEAD,
        );
        for cached in &appended {
            let index = cached.entry.log_id.index;
            self.bytes.appended(index, cached.encoded.len() as u64);
            batch.put_cf(
                self.cf_log(),
                keys::log_entry(self.group, index),
                &cached.encoded,
            );
        }
        if let Some(committed) = self.committed.take_unwritten() {
            batch.put_cf(
                self.cf_meta(),
                keys::meta(self.group, MetaKey::Committed),
                encode(&committed),
            );
        }
        if let Err(e) = self.db.write(batch) {
            callback.io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(write_err(e));
        }
        self.recent.appended(appended);
        if let Err(mpsc::SendError((_, callback))) =
            self.flusher.pending.send((Instant::now(), callback))
        {
            // The flusher thread only ends with the last LogStore; reaching this is a bug, and the
            // safe answer is an I/O error (openraft stops) rather than a flush never reported.
            callback.io_completed(Err(std::io::Error::other("raft-log-fsync thread is gone")));
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_kept: Option<LogId>) -> Result<(), StorageError> {
        let first_removed = last_kept.map_or(0, |log_id| log_id.index + 1);
        // First out of the cache: a reader meanwhile finds the entries in RocksDB until they go.
        self.recent.truncated(first_removed);
        let from = keys::log_entry(self.group, first_removed);
        let to = keys::log_entry(self.group, u64::MAX);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf_log(), from, to);
        batch.delete_cf(self.cf_log(), to);
        self.db.write_opt(batch, &sync_write()).map_err(write_err)?;
        self.bytes.truncated(first_removed);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let started = Instant::now();
        // The state machine is written without WAL. Before dropping log entries it could need to
        // re-apply after a crash, make sure what it applied through `log_id` is on disk. That is
        // known without a flush in the usual case: the log-retention task purges up to a snapshot
        // it has just built, and building one (a checkpoint) flushed the memtable. This runs in
        // openraft's core task, so a flush here would hold up every append and commit meanwhile.
        if !self.state_flushed.covers(log_id.index) {
            let cf_sm = self
                .state_db
                .cf_handle(CF_STATE_MACHINE)
                .expect("state_machine column family");
            self.state_db.flush_cf(cf_sm).map_err(write_err)?;
            // openraft purges only applied entries, and the flush covered all of them.
            self.state_flushed.advance(Some(log_id.index));
        }

        self.recent.purged(log_id.index);
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf_meta(),
            keys::meta(self.group, MetaKey::LastPurged),
            encode(&log_id),
        );
        batch.delete_range_cf(
            self.cf_log(),
            keys::log_entry(self.group, 0),
            keys::log_entry(self.group, log_id.index + 1),
        );
        // Not fsynced: one write batch, so a crash either keeps it whole or loses it whole, and
        // losing it leaves entries the state machine no longer needs (openraft asks no durability
        // of a purge). The next append's fsync covers it; a sync write here would be one more
        // fsync in the core task, beside the flusher's.
        self.db.write(batch).map_err(write_err)?;
        self.bytes.purged(log_id.index);
        metrics::histogram!(crate::metrics::LOG_PURGE_SECONDS)
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }
}
