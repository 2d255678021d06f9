//! The committed log id openraft saves: kept in memory and written with the next append instead
//! of on its own ([`CommittedMark`]).

use std::sync::{Arc, Mutex};

use raftlog_core::types::LogId;

/// The committed log id openraft last saved, and whether the log database has it yet.
///
/// openraft saves the committed id each time it moves: once per entry on every node. It is not
/// needed for safety (a restarted node learns it again from the leader, and openraft starts from
/// the applied id when that is further), so instead of a RocksDB write of its own inside
/// openraft's core task, the id rides in the next append's write batch (the next entry's, at
/// once under load), or is written when the log closes.
#[derive(Clone, Default)]
pub(super) struct CommittedMark(Arc<Mutex<Committed>>);

#[derive(Default)]
struct Committed {
    /// What openraft saved last in this process; `None` before it saved anything.
    saved: Option<Option<LogId>>,
    /// Whether `saved` is not in the log database yet.
    unwritten: bool,
}

impl CommittedMark {
    pub(super) fn save(&self, committed: Option<LogId>) {
        let mut mark = self.0.lock().expect("committed mark lock");
        mark.saved = Some(committed);
        mark.unwritten = true;
    }

    /// What openraft saved last in this process, if it saved anything.
    pub(super) fn saved(&self) -> Option<Option<LogId>> {
        self.0.lock().expect("committed mark lock").saved
    }

    /// The saved id still to be written, marked written: the caller puts it into a write.
    pub(super) fn take_unwritten(&self) -> Option<Option<LogId>> {
        let mut mark = self.0.lock().expect("committed mark lock");
        std::mem::take(&mut mark.unwritten)
            .then_some(mark.saved)
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use openraft::storage::{IOFlushed, RaftLogStorage};

    use crate::keys::MetaKey;
    use crate::log_store::test_entries::entry;
    use crate::test_support::{log_id, open_databases};
    use crate::LogStore;
    use crate::StateFlushed;
    use raftlog_core::types::LogId;
    use raftlog_core::TypeConfig;

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
}
