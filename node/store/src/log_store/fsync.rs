//! The fsync path of the log: a thread per log that fsyncs RocksDB's WAL and only then tells
//! openraft the appends it covers are flushed ([`LogFlusher`]), at its own nice value, warning
//! when an fsync is slow; and, as it ends, writes the committed id no append carried.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use openraft::storage::IOFlushed;
use rocksdb::DB;

use super::committed::CommittedMark;
use crate::codec::encode;
use crate::db::CF_RAFT_META;
use raftlog_core::TypeConfig;

/// An append's flushed callback, with when its write returned.
type Pending = (Instant, IOFlushed<TypeConfig>);

/// Fsyncs RocksDB's WAL on a dedicated thread and then completes the appends it covers.
///
/// Each append sends its callback after its (unsynced) write returned; the thread takes every
/// callback queued so far, fsyncs the WAL once (which covers all those writes, since RocksDB syncs
/// every WAL byte written before the call) and completes them in order. The thread ends when the
/// last `LogStore` clone is dropped.
#[derive(Clone)]
pub(super) struct LogFlusher {
    /// Each append's flushed callback, with when its write returned.
    pub(super) pending: mpsc::Sender<Pending>,
    /// The thread's id (for the test of its priority).
    #[cfg_attr(not(test), allow(dead_code))]
    thread_id: rustix::thread::Pid,
}

impl LogFlusher {
    /// Starts the thread at nice value `nice` (0: the node's own); when it ends (the last
    /// `LogStore` is gone) it writes the committed id that no append carried, under the key
    /// `committed_key`.
    pub(super) fn start(
        db: Arc<DB>,
        committed: CommittedMark,
        committed_key: Vec<u8>,
        nice: i32,
    ) -> Self {
        let (pending, queue) = mpsc::channel::<Pending>();
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
                fsync_until_closed(&db, &queue);
            })
            .expect("spawn the raft-log-fsync thread");
        let (thread_id, priority, running_at) = thread_started
            .recv()
            .expect("the raft-log-fsync thread starts");
        report_priority(nice, priority, running_at);
        Self { pending, thread_id }
    }
}

/// The fsync thread's loop, until the last sender (the last `LogStore`) is gone: takes every
/// append queued so far, fsyncs the WAL once for all of them and completes them in order.
fn fsync_until_closed(db: &DB, queue: &mpsc::Receiver<Pending>) {
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
        metrics::histogram!(crate::metrics::APPENDS_PER_FSYNC).record(covered.len() as f64);
        for (_, callback) in covered {
            callback.io_completed(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::other(e.to_string())),
            );
        }
    }
}

/// Publishes the nice value the fsync thread runs at, and says why when it is not `nice`.
fn report_priority(nice: i32, priority: rustix::io::Result<()>, running_at: i32) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::open_databases;
    use crate::LogStore;
    use crate::StateFlushed;

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
