//! When to build a snapshot and how far to purge the Raft log.
//!
//! Records are in the log (fsynced, for replication) and in the state machine (for reads). The
//! log's copy is only needed until the state machine's is on disk and every follower has the
//! entry, so this task keeps the log short: it asks for a snapshot (a cheap checkpoint,
//! [`raftlog_store::snapshot_store`]) every `log_bytes_since_last_max` bytes of entries and then
//! purges up to it, while the entries are still in RocksDB's memtable: they are never flushed to
//! an SST file, and a record is written to disk once per node besides the WAL, not twice.
//!
//! A leader does not purge what a follower still needs: the log is kept from the lowest entry a
//! follower has yet to receive, up to `log_bytes_kept_for_followers_max` bytes; a follower
//! further behind (down for long, or new) gets a snapshot instead, as openraft does whenever the
//! entries it needs are gone. A follower purges up to its own snapshots (it feeds nobody).
//! openraft's own count-based purging is off (`max_in_snapshot_log_to_keep`), so this is the
//! only place that decides.

use openraft::async_runtime::watch::WatchReceiver;
use std::time::Duration;

use crate::config::SnapshotPolicy;
use crate::raft::Raft;
use raftlog_store::LogBytes;

/// How often the log's size is looked at: at 100 MB/s, 2 MB of entries between two looks.
const CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// A snapshot asked for and not yet reported built is asked for again after this long (openraft
/// ignores a request while it builds one).
const SNAPSHOT_RETRY: Duration = Duration::from_secs(1);

/// Runs until Raft shuts down.
pub async fn run(raft: Raft, log_bytes: LogBytes, policy: SnapshotPolicy) {
    let metrics = raft.metrics();
    let mut ticker = tokio::time::interval(CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (snapshot index when we asked, when)
    let mut asked: Option<(Option<u64>, tokio::time::Instant)> = None;
    loop {
        ticker.tick().await;
        let m = metrics.borrow_watched().clone();
        if m.running_state.is_err() {
            return; // Raft has stopped
        }
        let snapshot = m.snapshot.map(|id| id.index);

        let unsnapshotted = log_bytes.after(snapshot);
        let waiting =
            asked.is_some_and(|(at, when)| at == snapshot && when.elapsed() < SNAPSHOT_RETRY);
        if unsnapshotted >= policy.log_bytes_since_last_max && !waiting {
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            asked = Some((snapshot, tokio::time::Instant::now()));
        }

        let Some(snapshot) = snapshot else { continue };
        // Purge up to and including `upto`.
        let mut upto = snapshot.checked_sub(policy.logs_kept_after_snapshot);
        if let Some(replication) = &m.replication {
            for matched in replication.values() {
                let matched = matched.map(|id| id.index);
                // What this follower still needs, unless it is more than the log may keep.
                if log_bytes.after(matched) <= policy.log_bytes_kept_for_followers_max {
                    upto = upto.min(matched);
                }
            }
        }
        let purged = m.purged.map(|id| id.index);
        if let Some(upto) = upto.filter(|&upto| Some(upto) > purged) {
            if raft.trigger().purge_log(upto).await.is_err() {
                return;
            }
        }
    }
}
