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

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};

use crate::codec::{decode, encode, WRITE_BATCH_ROW_OVERHEAD};
use crate::db::{Databases, CF_RAFT_LOG, CF_RAFT_META, CF_STATE_MACHINE};
use crate::keys::{self, MetaKey};
use crate::StateFlushed;
use raftlog_core::limits::{RECEIVED_ENCODINGS_BYTES_MAX, RECENT_ENTRIES_BYTES_MAX};
use raftlog_core::types::{AppendEntriesRequest, Entry, LogId, StorageError, Vote};
use raftlog_core::{GroupId, TypeConfig};

/// The log of one Raft group. Cheap to clone: clones share the database (openraft's log reader is
/// such a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// The state machine's database, flushed before a purge (see [`RaftLogStorage::purge`]).
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

/// The committed log id openraft last saved, and whether the log database has it yet.
///
/// openraft saves the committed id each time it moves: once per entry on every node. It is not
/// needed for safety (a restarted node learns it again from the leader, and openraft starts from
/// the applied id when that is further), so instead of a RocksDB write of its own inside
/// openraft's core task, the id rides in the next append's write batch (the next entry's, at
/// once under load), or is written when the log closes.
#[derive(Clone, Default)]
struct CommittedMark(Arc<Mutex<Committed>>);

#[derive(Default)]
struct Committed {
    /// What openraft saved last in this process; `None` before it saved anything.
    saved: Option<Option<LogId>>,
    /// Whether `saved` is not in the log database yet.
    unwritten: bool,
}

impl CommittedMark {
    fn save(&self, committed: Option<LogId>) {
        let mut mark = self.0.lock().expect("committed mark lock");
        mark.saved = Some(committed);
        mark.unwritten = true;
    }

    /// What openraft saved last in this process, if it saved anything.
    fn saved(&self) -> Option<Option<LogId>> {
        self.0.lock().expect("committed mark lock").saved
    }

    /// The saved id still to be written, marked written: the caller puts it into a write.
    fn take_unwritten(&self) -> Option<Option<LogId>> {
        let mut mark = self.0.lock().expect("committed mark lock");
        std::mem::take(&mut mark.unwritten)
            .then_some(mark.saved)
            .flatten()
    }
}

/// The entries appended last, each as the entry and as the bytes stored for it, so that
/// replication to each follower neither reads back from RocksDB and decodes what this node has
/// just written (perf had that at ~10 % of a leader's CPU at C=64) nor encodes every entry again
/// for every follower ([`EncodedEntries`]). Holds a contiguous run ending at the last entry, at
/// most [`RECENT_ENTRIES_BYTES_MAX`] of memory.
#[derive(Clone, Default)]
struct RecentEntries(Arc<Mutex<RecentRun>>);

/// One cached entry.
struct Cached {
    entry: Entry,
    /// Its encoding, exactly as written to the log.
    encoded: Bytes,
}

impl Cached {
    /// Memory the entry holds, counted as twice its encoding (the decoded records are about as
    /// large as their encoding).
    fn bytes(&self) -> usize {
        2 * self.encoded.len()
    }
}

#[derive(Default)]
struct RecentRun {
    /// In index order, contiguous.
    entries: VecDeque<Cached>,
    /// [`Cached::bytes`] of `entries`.
    bytes: usize,
}

/// Drops what left the cache: inline for a few entries (an append evicting the oldest), on
/// tokio's blocking pool for more. A purge takes up to [`RECENT_ENTRIES_BYTES_MAX`] of cached
/// entries out at once, thousands of record buffers, and freeing them took 4-11 ms (measured at
/// 1 KiB, C=64): inside openraft's core task, which purges, every append and commit waited that
/// long.
fn free_elsewhere<T: Send + 'static>(garbage: Vec<T>) {
    const FREE_INLINE_MAX: usize = 16;
    if garbage.len() <= FREE_INLINE_MAX {
        return; // dropped here
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(garbage))),
        Err(_) => drop(garbage),
    }
}

impl RecentRun {
    /// Takes the entries at `positions` out of the run.
    fn take(&mut self, positions: impl RangeBounds<usize>) -> Vec<Cached> {
        let taken: Vec<_> = self.entries.drain(positions).collect();
        self.bytes -= taken.iter().map(Cached::bytes).sum::<usize>();
        taken
    }

    /// Position of the entry at `index`, if the run holds it.
    fn position(&self, index: u64) -> Option<usize> {
        let first = self.entries.front()?.entry.log_id.index;
        let position = usize::try_from(index.checked_sub(first)?).ok()?;
        (position < self.entries.len()).then_some(position)
    }
}

impl RecentEntries {
    fn appended(&self, entries: Vec<Cached>) {
        let mut removed = Vec::new();
        {
            let mut recent = self.0.lock().expect("recent entries lock");
            for cached in entries {
                // Only a contiguous run can stand in for the log.
                if recent
                    .entries
                    .back()
                    .is_some_and(|last| last.entry.log_id.index + 1 != cached.entry.log_id.index)
                {
                    removed.extend(std::mem::take(&mut *recent).entries);
                }
                recent.bytes += cached.bytes();
                recent.entries.push_back(cached);
            }
            while recent.bytes > RECENT_ENTRIES_BYTES_MAX {
                removed.extend(recent.take(..1));
            }
        }
        free_elsewhere(removed);
    }

    fn truncated(&self, from: u64) {
        let removed = {
            let mut recent = self.0.lock().expect("recent entries lock");
            let kept = recent
                .entries
                .partition_point(|c| c.entry.log_id.index < from);
            recent.take(kept..)
        };
        free_elsewhere(removed);
    }

    fn purged(&self, upto: u64) {
        let removed = {
            let mut recent = self.0.lock().expect("recent entries lock");
            let gone = recent
                .entries
                .partition_point(|c| c.entry.log_id.index <= upto);
            recent.take(..gone)
        };
        free_elsewhere(removed);
    }

    /// The entries from `start` below `end`, up to `bytes_max` (at least one), if the run holds
    /// `start`.
    fn read(&self, start: u64, end: Option<u64>, bytes_max: usize) -> Option<Vec<Entry>> {
        let recent = self.0.lock().expect("recent entries lock");
        let first = recent.position(start)?;
        let mut entries = Vec::new();
        let mut bytes = 0;
        for cached in recent.entries.range(first..) {
            if end.is_some_and(|end| cached.entry.log_id.index >= end) {
                break;
            }
            entries.push(cached.entry.clone());
            bytes += cached.encoded.len();
            if bytes >= bytes_max {
                break;
            }
        }
        Some(entries)
    }
}

/// The stored encoding of recently appended entries, for the replication streams: an
/// AppendEntries is the entries' encodings end to end ([`crate::raft::network`]), so an entry is
/// encoded once, when it is appended, instead of once more for every follower. Cheap to clone.
#[derive(Clone)]
pub struct EncodedEntries(RecentEntries);

impl EncodedEntries {
    /// The bytes stored for each of `entries` that is still cached.
    fn get(&self, entries: &[Entry]) -> Vec<Option<Bytes>> {
        let recent = self.0 .0.lock().expect("recent entries lock");
        entries
            .iter()
            .map(|entry| {
                let cached = &recent.entries[recent.position(entry.log_id.index)?];
                // The same index under another leader is another entry (before a truncation
                // lands): a log id names one entry.
                (cached.entry.log_id == entry.log_id).then(|| cached.encoded.clone())
            })
            .collect()
    }

    /// The postcard encoding of `rpc`, byte for byte what [`encode`] makes of it, with each
    /// entry's stored encoding copied in where the cache still holds it. postcard writes a struct
    /// as its fields in order and a `Vec` as its length (a varint) and then its elements, so
    /// AppendEntries (`vote, prev_log_id, entries, leader_commit`) is a head, the entries end to
    /// end, and a tail.
    pub fn encode_append_entries(&self, rpc: &AppendEntriesRequest) -> Vec<u8> {
        // Entries no longer cached are encoded outside the cache's lock.
        let entries: Vec<Bytes> = self
            .get(&rpc.entries)
            .into_iter()
            .zip(&rpc.entries)
            .map(|(stored, entry)| stored.unwrap_or_else(|| Bytes::from(encode(entry))))
            .collect();
        let head = encode(&(&rpc.vote, &rpc.prev_log_id, rpc.entries.len()));
        let tail = encode(&rpc.leader_commit);
        let size = head.len() + entries.iter().map(Bytes::len).sum::<usize>() + tail.len();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&head);
        for entry in &entries {
            out.extend_from_slice(entry);
        }
        out.extend_from_slice(&tail);
        out
    }
}

/// The entries a follower received, as the bytes they came in, from the moment the peer service
/// decodes an AppendEntries until openraft appends them: the append stores those bytes instead of
/// encoding each entry again (a second pass over every record on every follower). The bytes are
/// the leader's stored encoding ([`EncodedEntries`]); whatever their origin they are exactly what
/// the entry was decoded from, so reading the log back yields the entry openraft appended. Cheap
/// to clone.
#[derive(Clone, Default)]
pub struct ReceivedEncodings(Arc<Mutex<ReceivedRun>>);

#[derive(Default)]
struct ReceivedRun {
    /// In the order received.
    entries: VecDeque<(LogId, Bytes)>,
    /// Sum of the encodings' lengths.
    bytes: usize,
}

impl ReceivedEncodings {
    /// Decodes an AppendEntries (the postcard encoding of [`AppendEntriesRequest`]: a head, the
    /// entries end to end, a tail; see [`EncodedEntries::encode_append_entries`]) and keeps each
    /// entry's bytes, slices of `payload`, for its append. Strict: the message must end where
    /// `payload` does. An error says what is wrong with the message.
    pub fn decode_append_entries(&self, payload: &Bytes) -> Result<AppendEntriesRequest, String> {
        let offset = |rest: &[u8]| payload.len() - rest.len();
        let undecodable = |part: &str, e: postcard::Error| format!("{part}: {e}");
        let ((vote, prev_log_id, count), mut rest): ((Vote, Option<LogId>, usize), _) =
            postcard::take_from_bytes(payload).map_err(|e| undecodable("head", e))?;
        // The count is the peer's word: an entry takes at least a byte, so more than the bytes
        // left is garbage (and must not size an allocation).
        if count > rest.len() {
            return Err(format!("{count} entries announced in {} bytes", rest.len()));
        }
        let mut entries = Vec::with_capacity(count);
        let mut encodings = Vec::with_capacity(count);
        for _ in 0..count {
            let start = offset(rest);
            // Records share the message, which the entry's bytes keep alive anyway.
            let (entry, after): (Entry, _) =
                raftlog_core::shared::decoding_from(payload, || postcard::take_from_bytes(rest))
                    .map_err(|e| undecodable("entry", e))?;
            rest = after;
            encodings.push((entry.log_id, payload.slice(start..offset(rest))));
            entries.push(entry);
        }
        let (leader_commit, rest) =
            postcard::take_from_bytes(rest).map_err(|e| undecodable("tail", e))?;
        if !rest.is_empty() {
            return Err(format!("{} trailing bytes", rest.len()));
        }
        self.received(encodings);
        Ok(AppendEntriesRequest {
            vote,
            prev_log_id,
            entries,
            leader_commit,
        })
    }

    fn received(&self, encodings: Vec<(LogId, Bytes)>) {
        if encodings.is_empty() {
            return;
        }
        let removed = {
            let mut run = self.0.lock().expect("received encodings lock");
            for (log_id, bytes) in encodings {
                run.bytes += bytes.len();
                run.entries.push_back((log_id, bytes));
            }
            let mut removed = Vec::new();
            while run.bytes > RECEIVED_ENCODINGS_BYTES_MAX && run.entries.len() > 1 {
                let (_, bytes) = run.entries.pop_front().expect("more than one");
                run.bytes -= bytes.len();
                removed.push(bytes);
            }
            removed
        };
        drop(removed); // outside the lock
    }

    /// The bytes `log_id`'s entry was received as, if they are still kept. Entries received
    /// before it are dropped: appends come in the order entries arrive. When it is not kept,
    /// entries at or below its index are dropped: openraft passed them over (they would come
    /// again in a message of their own), and a node that has become leader receives no more
    /// entries to push them out.
    fn take(&self, log_id: &LogId) -> Option<Bytes> {
        let mut run = self.0.lock().expect("received encodings lock");
        let Some(position) = run.entries.iter().position(|(id, _)| id == log_id) else {
            if !run.entries.is_empty() {
                let run = &mut *run;
                run.entries.retain(|(id, _)| id.index > log_id.index);
                run.bytes = run.entries.iter().map(|(_, bytes)| bytes.len()).sum();
            }
            return None;
        };
        let mut taken = None;
        for _ in 0..=position {
            let (_, bytes) = run.entries.pop_front().expect("within the run");
            run.bytes -= bytes.len();
            taken = Some(bytes);
        }
        taken
    }
}

/// How many bytes the log holds after a given index, for the entries appended since the process
/// started (what [`crate::log_retention`] decides snapshots and purges by). Entries found in the
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
    fn appended(&self, index: u64, bytes: u64) {
        // openraft truncates a conflicting suffix before it appends over it; should an index
        // come again anyway, the entry it replaces no longer counts.
        self.truncated(index);
        let mut inner = self.0.lock().expect("log bytes lock");
        let before = inner.total;
        inner.entries.push_back((index, before));
        inner.total += bytes;
    }

    fn truncated(&self, from: u64) {
        let mut inner = self.0.lock().expect("log bytes lock");
        while let Some(&(i, before)) = inner.entries.back() {
            if i < from {
                break;
            }
            inner.entries.pop_back();
            inner.total = before;
        }
    }

    fn purged(&self, upto: u64) {
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

/// Fsyncs RocksDB's WAL on a dedicated thread and then completes the appends it covers.
///
/// Each append sends its callback after its (unsynced) write returned; the thread takes every
/// callback queued so far, fsyncs the WAL once (which covers all those writes, since RocksDB syncs
/// every WAL byte written before the call) and completes them in order. The thread ends when the
/// last `LogStore` clone is dropped.
#[derive(Clone)]
struct LogFlusher {
    /// Each append's flushed callback, with when its write returned.
    pending: mpsc::Sender<(Instant, IOFlushed<TypeConfig>)>,
    /// The thread's id (for the test of its priority).
    #[cfg_attr(not(test), allow(dead_code))]
    thread_id: rustix::thread::Pid,
}

impl LogFlusher {
    /// Starts the thread at nice value `nice` (0: the node's own); when it ends (the last
    /// `LogStore` is gone) it writes the committed id that no append carried, under the key
    /// `committed_key`.
    fn start(db: Arc<DB>, committed: CommittedMark, committed_key: Vec<u8>, nice: i32) -> Self {
        let (pending, queue) = mpsc::channel::<(Instant, IOFlushed<TypeConfig>)>();
        let (started, thread_started) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("raft-log-fsync".into())
            .spawn(move || {
                let _write_committed_at_end = WriteCommittedAtEnd {
                    db: db.clone(),
                    committed,
                    key: committed_key,
                };
                let priority = set_own_nice(nice);
                // What the thread runs at in the end: `nice`, or the node's own if refused.
                let running_at = rustix::process::getpriority_process(None).unwrap_or(0);
                let _ = started.send((rustix::thread::gettid(), priority, running_at));
                let mut slow = SlowFsyncLog::default();
                while let Ok(first) = queue.recv() {
                    let mut covered = vec![first];
                    covered.extend(queue.try_iter());
                    let fsync_started = Instant::now();
                    // How long each append waited for this fsync to start: the rest of the
                    // previous one, which its write just missed.
                    let wait = metrics::histogram!(crate::metrics::FSYNC_WAIT_SECONDS);
                    for (written_at, _) in &covered {
                        wait.record((fsync_started - *written_at).as_secs_f64());
                    }
                    let result = db.flush_wal(true);
                    let now = Instant::now();
                    let took = now - fsync_started;
                    metrics::histogram!(crate::metrics::FSYNC_SECONDS).record(took.as_secs_f64());
                    if let Some(report) = slow.observe(took, now) {
                        tracing::warn!(
                            took_ms = report.took.as_millis() as u64,
                            appends = covered.len(),
                            slow_fsyncs = report.slow_fsyncs,
                            slowest_ms = report.slowest.as_millis() as u64,
                            "slow fsync of the raft log: acknowledgements waited on the disk \
                             (slow_fsyncs: fsyncs over {} ms since the last warning)",
                            SLOW_FSYNC.as_millis()
                        );
                    }
                    metrics::histogram!(crate::metrics::APPENDS_PER_FSYNC)
                        .record(covered.len() as f64);
                    for (_, callback) in covered {
                        callback.io_completed(
                            result
                                .as_ref()
                                .map(|_| ())
                                .map_err(|e| std::io::Error::other(e.to_string())),
                        );
                    }
                }
            })
            .expect("spawn the raft-log-fsync thread");
        let (thread_id, priority, running_at) = thread_started
            .recv()
            .expect("the raft-log-fsync thread starts");
        metrics::gauge!(crate::metrics::FSYNC_THREAD_NICE).set(f64::from(running_at));
        match priority {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::ACCESS || e == rustix::io::Errno::PERM => {
                tracing::info!(
                    "the raft-log-fsync thread keeps the node's priority: fsync_thread_nice \
                     {nice} needs CAP_SYS_NICE ({e}); acknowledgements may then wait longer for \
                     an fsync to start on a busy machine (fsync_thread_nice = 0 leaves it as is)"
                );
            }
            Err(e) => {
                tracing::warn!("setting the raft-log-fsync thread's nice value to {nice}: {e}")
            }
        }
        Self { pending, thread_id }
    }
}

/// Sets the calling thread's nice value (0 leaves it as it is).
///
/// Why the fsync thread gets its own: it is woken once per append and then sleeps in `fdatasync`,
/// so it needs almost no CPU, but every acknowledgement waits for it to start, and on a machine
/// whose cores are busy (the node's own workers, RocksDB's flushes, other processes) a woken
/// thread of ordinary priority waits its turn. A lower nice value lets it run when it wakes
/// (docs/decisions.md, "The fsync thread runs ahead of the rest").
fn set_own_nice(nice: i32) -> rustix::io::Result<()> {
    if nice == 0 {
        return Ok(());
    }
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)
}

/// Writes the committed id no append carried when the flusher thread ends (best effort: the id is
/// not needed for safety, see [`CommittedMark`]).
struct WriteCommittedAtEnd {
    db: Arc<DB>,
    committed: CommittedMark,
    key: Vec<u8>,
}

impl Drop for WriteCommittedAtEnd {
    fn drop(&mut self) {
        let Some(committed) = self.committed.take_unwritten() else {
            return;
        };
        if let Some(cf) = self.db.cf_handle(CF_RAFT_META) {
            if let Err(e) = self.db.put_cf(cf, &self.key, encode(&committed)) {
                tracing::warn!("writing the committed log id at close: {e}");
            }
        }
    }
}

/// An fsync slower than this is logged: every write acknowledged meanwhile waited on it.
const SLOW_FSYNC: Duration = Duration::from_millis(100);

/// At most one slow-fsync warning per this long; the ones in between are counted in the next.
const SLOW_FSYNC_LOG_EVERY: Duration = Duration::from_secs(10);

/// Decides when a slow fsync of the log is worth a warning. A produce's p99 is bounded below by
/// these stalls, and the warning names the cause an operator should look at (a shared or
/// throttled disk, a noisy neighbour, other writes on the same device), as etcd's "slow
/// fdatasync" does. Rate-limited: a failing disk would otherwise fill the node's log.
#[derive(Default)]
struct SlowFsyncLog {
    last_warned: Option<Instant>,
    /// Slow fsyncs since the last warning, and the slowest of them.
    unreported: u64,
    slowest: Duration,
}

/// What one slow-fsync warning says.
#[derive(Debug, PartialEq, Eq)]
struct SlowFsyncReport {
    took: Duration,
    /// Slow fsyncs since the previous warning, this one included.
    slow_fsyncs: u64,
    slowest: Duration,
}

impl SlowFsyncLog {
    /// Records one fsync that took `took` at `now`; returns the warning to log, if one is due.
    fn observe(&mut self, took: Duration, now: Instant) -> Option<SlowFsyncReport> {
        if took < SLOW_FSYNC {
            return None;
        }
        self.unreported += 1;
        self.slowest = self.slowest.max(took);
        if self
            .last_warned
            .is_some_and(|at| now.duration_since(at) < SLOW_FSYNC_LOG_EVERY)
        {
            return None;
        }
        self.last_warned = Some(now);
        Some(SlowFsyncReport {
            took,
            slow_fsyncs: std::mem::take(&mut self.unreported),
            slowest: std::mem::take(&mut self.slowest),
        })
    }
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
    /// [`StateMachine::flushed`]: super::state_machine::StateMachine::flushed
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{log_id, log_id_in, open_databases};
    use raftlog_core::types::EntryPayload;

    /// An entry that counts 1 MiB against the cache's bound.
    fn entry(index: u64) -> Cached {
        let entry = Entry {
            log_id: log_id(index),
            payload: EntryPayload::Blank,
        };
        Cached {
            entry,
            encoded: Bytes::from(vec![0; 512 * 1024]),
        }
    }

    /// An append of one record of `300 * index` bytes at `index` of term 2.
    fn append_in_term_2(index: u64) -> Entry {
        use raftlog_core::{Command, Record};
        Entry {
            log_id: log_id_in(2, index),
            payload: EntryPayload::Normal(Command::Append {
                topic: format!("t{index}"),
                partition: 0,
                records: vec![Record {
                    key: None,
                    value: vec![index as u8; 300 * index as usize].into(),
                    headers: vec![("h".into(), bytes::Bytes::from_static(b"v"))],
                    timestamp_ms: 7,
                }],
                proposed_at_ms: 1,
                producer: None,
                expected_end_offset: None,
            }),
        }
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|e| e.iter().map(|e| e.log_id.index).collect())
    }

    /// The fsync thread runs at the nice value it was given; 0 leaves the creating thread's.
    /// (+5 is allowed without privilege, so this holds wherever the tests run.)
    #[test]
    fn the_fsync_thread_runs_at_the_configured_nice_value() {
        // On Linux a thread id names one thread to getpriority.
        let nice_of =
            |tid| rustix::process::getpriority_process(Some(tid)).expect("the thread's nice value");
        let dir = tempfile::tempdir().expect("temporary directory");
        let dbs = open_databases(dir.path());
        let group = raftlog_core::METADATA_GROUP;
        let own = rustix::process::getpriority_process(None).expect("own nice value");
        let lowered = LogStore::new(&dbs, group, StateFlushed::default(), 5);
        assert_eq!(nice_of(lowered.flusher.thread_id), 5);
        let unchanged = LogStore::new(&dbs, group, StateFlushed::default(), 0);
        assert_eq!(nice_of(unchanged.flusher.thread_id), own);
    }

    /// openraft's committed id costs no write of its own: it is readable at once, rides in the
    /// next append's write batch, and the one no append carried is written when the log closes.
    #[tokio::test]
    async fn the_committed_id_rides_with_the_next_append_and_is_written_at_close() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let dbs = open_databases(dir.path());
        let group = raftlog_core::METADATA_GROUP;
        let stored = |log: &LogStore| {
            log.get_meta::<Option<LogId>>(MetaKey::Committed)
                .expect("read the committed id")
                .flatten()
        };
        let mut log = LogStore::new(&dbs, group, StateFlushed::default(), 0);
        log.save_committed(Some(log_id(1))).await.expect("save");
        assert_eq!(log.read_committed().await.expect("read"), Some(log_id(1)));
        assert_eq!(stored(&log), None, "no write of its own");

        let (flushed_tx, flushed) = {
            use openraft::type_config::TypeConfigExt;
            TypeConfig::oneshot()
        };
        log.append([entry(2).entry], IOFlushed::signal(flushed_tx))
            .await
            .expect("append");
        flushed.await.expect("flush reported").expect("flushed");
        assert_eq!(stored(&log), Some(log_id(1)), "carried by the append");

        log.save_committed(Some(log_id(2))).await.expect("save");
        drop(log);
        // The flusher thread writes it as it ends, once the last clone of the log is gone.
        let reopened = LogStore::new(&dbs, group, StateFlushed::default(), 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while stored(&reopened) != Some(log_id(2)) {
            assert!(
                Instant::now() < deadline,
                "the committed id was not written at close"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Received encodings wait in arrival order: an append takes its own and drops those
    /// received before it; an append of an entry not kept (another leader's at that index)
    /// drops those at or below its index and keeps the later ones.
    #[test]
    fn received_encodings_are_taken_in_order_and_passed_over_ones_leave() {
        let received = ReceivedEncodings::default();
        let bytes = |i: u64| Bytes::from(vec![i as u8; 10]);
        let kept = |received: &ReceivedEncodings| {
            let run = received.0.lock().expect("lock");
            let indexes: Vec<u64> = run.entries.iter().map(|(id, _)| id.index).collect();
            (indexes, run.bytes)
        };
        received.received((1..=4).map(|i| (log_id(i), bytes(i))).collect());
        assert_eq!(received.take(&log_id(2)), Some(bytes(2)));
        assert_eq!(kept(&received), (vec![3, 4], 20));
        assert_eq!(received.take(&log_id_in(2, 3)), None);
        assert_eq!(kept(&received), (vec![4], 10));
        assert_eq!(received.take(&log_id(4)), Some(bytes(4)));
        assert_eq!(kept(&received), (vec![], 0));
    }

    /// A follower decodes an AppendEntries exactly as postcard would, and its append stores
    /// each entry as the bytes it came in (slices of the message, not a new encoding), which
    /// read back as the entry; an entry openraft did not append is passed over; a message with
    /// bytes missing, left over or a count it cannot hold is refused and keeps nothing.
    #[tokio::test]
    async fn a_follower_stores_entries_as_they_were_received() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let dbs = open_databases(dir.path());
        let group = raftlog_core::METADATA_GROUP;
        let mut log = LogStore::new(&dbs, group, StateFlushed::default(), 0);
        let received = log.received_encodings();
        let rpc = AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id_in(2, 0)),
            entries: (1..=3).map(append_in_term_2).collect(),
            leader_commit: Some(log_id_in(2, 1)),
        };
        let message = Bytes::from(encode(&rpc));

        let mut garbage = vec![message[..message.len() - 1].to_vec(), message.to_vec()];
        garbage[1].push(0);
        let mut huge_count = encode(&(&rpc.vote, &rpc.prev_log_id, usize::MAX));
        huge_count.extend_from_slice(&message[message.len() - 8..]);
        garbage.push(huge_count);
        for bad in garbage {
            assert!(received.decode_append_entries(&Bytes::from(bad)).is_err());
        }
        assert!(received.0.lock().expect("lock").entries.is_empty());

        let decoded = received
            .decode_append_entries(&message)
            .expect("a leader's message decodes");
        assert_eq!(encode(&decoded), encode(&rpc));
        let message_bytes = message.as_ptr_range();
        for entry in &decoded.entries {
            let EntryPayload::Normal(raftlog_core::Command::Append { records, .. }) =
                &entry.payload
            else {
                panic!("an append: {entry:?}");
            };
            assert!(
                message_bytes.contains(&records[0].value.as_ptr()),
                "a record's value shares the message"
            );
        }
        // openraft had entry 1 already: it appends 2 and 3.
        let (flushed_tx, flushed) = {
            use openraft::type_config::TypeConfigExt;
            TypeConfig::oneshot()
        };
        log.append(
            decoded.entries.into_iter().skip(1),
            IOFlushed::signal(flushed_tx),
        )
        .await
        .expect("append");
        flushed.await.expect("flush reported").expect("flushed");
        assert!(received.0.lock().expect("lock").entries.is_empty());
        let appended = &rpc.entries[1..];
        for (stored, entry) in log.encoded_entries().get(appended).iter().zip(appended) {
            let stored = stored.as_ref().expect("cached");
            assert_eq!(stored[..], encode(entry)[..]);
            assert!(
                message_bytes.contains(&stored.as_ptr()),
                "the bytes received, not a new encoding"
            );
        }
        drop(log);
        // A log opened afresh has nothing cached: it reads RocksDB.
        let mut reopened = LogStore::new(&dbs, group, StateFlushed::default(), 0);
        let read = reopened.try_get_log_entries(2..4).await.expect("read");
        assert_eq!(encode(&read), encode(&appended));
    }

    /// The cache answers only for a contiguous run it holds, follows truncation and purging,
    /// and keeps at most its byte bound (the oldest entries go first).
    #[test]
    fn recent_entries_stand_in_for_the_log_tail_only() {
        let recent = RecentEntries::default();
        recent.appended((1..=5).map(entry).collect());
        assert_eq!(
            indexes(recent.read(2, Some(4), usize::MAX)),
            Some(vec![2, 3])
        );
        assert_eq!(indexes(recent.read(3, None, 1 << 20)), Some(vec![3, 4]));
        assert_eq!(indexes(recent.read(6, None, usize::MAX)), None);

        recent.truncated(4);
        assert_eq!(
            indexes(recent.read(1, None, usize::MAX)),
            Some(vec![1, 2, 3])
        );
        recent.appended(vec![entry(4)]);
        recent.purged(2);
        assert_eq!(indexes(recent.read(1, None, usize::MAX)), None);
        assert_eq!(indexes(recent.read(3, None, usize::MAX)), Some(vec![3, 4]));

        // A gap: the run starts over.
        recent.appended(vec![entry(9)]);
        assert_eq!(indexes(recent.read(3, None, usize::MAX)), None);
        assert_eq!(indexes(recent.read(9, None, usize::MAX)), Some(vec![9]));

        // The byte bound: 1 MiB entries, so only the newest RECENT_ENTRIES_BYTES_MAX MiB stay.
        let kept = (RECENT_ENTRIES_BYTES_MAX >> 20) as u64;
        recent.appended((10..10 + kept + 5).map(entry).collect());
        assert_eq!(indexes(recent.read(14, Some(15), usize::MAX)), None);
        assert_eq!(
            indexes(recent.read(15, Some(16), usize::MAX)),
            Some(vec![15])
        );
    }

    /// An AppendEntries put together from stored encodings is the one `encode` makes, whether
    /// the cache holds all, some or none of its entries, and an entry cached under another
    /// leader's log id at the same index is encoded afresh.
    #[test]
    fn append_entries_from_stored_encodings_match_encoding_them() {
        let append = append_in_term_2;
        let cached = |entry: Entry| Cached {
            encoded: Bytes::from(encode(&entry)),
            entry,
        };
        let recent = RecentEntries::default();
        // Cached: 1 under term 1 (so index 1 of term 2 is not it), 2 and 3 under term 2.
        let mut stale = append(1);
        stale.log_id = log_id_in(1, 1);
        recent.appended(vec![cached(stale), cached(append(2)), cached(append(3))]);
        let stored = EncodedEntries(recent);
        for entries in [
            vec![],
            vec![append(2), append(3)],
            (1..=200).map(append).collect(),
        ] {
            let rpc = AppendEntriesRequest {
                vote: Vote::new_committed(2, 1),
                prev_log_id: Some(log_id_in(2, 0)),
                entries,
                leader_commit: Some(log_id_in(2, 1)),
            };
            assert_eq!(stored.encode_append_entries(&rpc), encode(&rpc));
        }
    }

    #[test]
    fn slow_fsyncs_are_reported_at_most_once_per_interval_with_a_count() {
        let mut log = SlowFsyncLog::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(
            log.observe(ms(2), t0),
            None,
            "a normal fsync is not reported"
        );
        assert_eq!(
            log.observe(ms(150), t0),
            Some(SlowFsyncReport {
                took: ms(150),
                slow_fsyncs: 1,
                slowest: ms(150)
            })
        );
        // Within the interval: counted, not reported.
        assert_eq!(log.observe(ms(400), t0 + ms(10)), None);
        assert_eq!(log.observe(ms(120), t0 + Duration::from_secs(5)), None);
        assert_eq!(
            log.observe(ms(110), t0 + SLOW_FSYNC_LOG_EVERY),
            Some(SlowFsyncReport {
                took: ms(110),
                slow_fsyncs: 3,
                slowest: ms(400)
            }),
            "the next warning counts the slow fsyncs in between and names the slowest"
        );
        assert_eq!(log.observe(ms(99), t0 + 3 * SLOW_FSYNC_LOG_EVERY), None);
    }
}
