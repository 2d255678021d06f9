//! The state machine as openraft drives it: `RaftStateMachine` (apply a stream of committed
//! entries, report the applied state, install a received snapshot, hand out the current one) and
//! the [`SnapshotBuilder`] that checkpoints the state database off the apply path.

use std::sync::Arc;

use futures::StreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::RaftSnapshotBuilder;
use rocksdb::{WriteBatch, WriteOptions};

use super::view::StateView;
use super::{sm_err, snap_err, StateMachine};
use crate::keys;
use crate::snapshot_store::{self, SnapshotStore};
use raftlog_core::types::{LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership};
use raftlog_core::{SnapshotData, TypeConfig};

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), StorageError>
    where
        S: futures::Stream<Item = Result<EntryResponder<TypeConfig>, StorageError>> + Unpin + Send,
    {
        // openraft hands over the committed entries it has read; applying them as one call keeps
        // one RocksDB write batch per call. Clients are answered only once that batch is in
        // RocksDB: an acknowledged write must be readable at once (a fetch right after the ack
        // finds its records).
        let mut applied = Vec::new();
        let mut responders = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            applied.push(entry);
            responders.push(responder);
        }
        let started = std::time::Instant::now();
        let responses = self.apply_entries(applied)?;
        metrics::histogram!(crate::metrics::APPLY_SECONDS).record(started.elapsed().as_secs_f64());
        for (responder, response) in responders.into_iter().zip(responses) {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            view: self.view.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), StorageError> {
        // Read from the handle we are given (openraft may hand us any snapshot file), after every
        // write to it has completed; keep our own fsynced copy as the new current snapshot.
        let snapshot_id = snapshot.id;
        let mut source = snapshot.file.into_std().await;
        let received = self.snapshots.installing_path(&snapshot_id);
        {
            use std::io::{Seek, SeekFrom};
            source.seek(SeekFrom::Start(0)).map_err(snap_err)?;
            let mut copy = std::fs::File::create(&received).map_err(snap_err)?;
            std::io::copy(&mut source, &mut copy).map_err(snap_err)?;
            copy.sync_all().map_err(snap_err)?;
        }
        let group = self.view.group;
        // Replace this group's rows wholesale in one write batch: a crash before the flush below
        // leaves the previous state intact (the batch is not in the WAL), never a mix.
        let mut batch = WriteBatch::default();
        let cf = self.view.cf();
        batch.delete_range_cf(cf, keys::sm_prefix(group), keys::sm_prefix_end(group));
        snapshot_store::read_rows(&received, &snapshot_id, |suffix, value| {
            let mut key = keys::sm_prefix(group).to_vec();
            key.extend_from_slice(&suffix);
            batch.put_cf(cf, key, value);
        })
        .map_err(snap_err)?;
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        self.view.db.write_opt(batch, &opts).map_err(sm_err)?;
        self.view.db.flush_cf(cf).map_err(sm_err)?;
        self.load()?;
        assert_eq!(
            self.last_applied, meta.last_log_id,
            "installed snapshot's rows disagree with its meta on the last applied log id"
        );
        self.snapshots
            .publish_received(&snapshot_id, meta, &received)
            .map_err(snap_err)?;
        metrics::counter!(crate::metrics::SNAPSHOTS_INSTALLED).increment(1);
        tracing::info!(
            snapshot_id,
            last_log_index = meta.last_log_id.as_ref().map_or(0, |l| l.index),
            "installed snapshot"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.snapshots.open_current().await.map_err(snap_err)
    }
}

/// Builds a snapshot as a checkpoint of the state database ([`snapshot_store`]), off the apply
/// path.
pub struct SnapshotBuilder {
    view: Arc<StateView>,
    snapshots: SnapshotStore,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let view = self.view.clone();
        let snapshots = self.snapshots.clone();
        let started = std::time::Instant::now();
        let (snapshot_id, meta) = tokio::task::spawn_blocking(move || snapshots.build(&view.db))
            .await
            .map_err(snap_err)?
            .map_err(snap_err)?;
        tracing::info!(
            snapshot_id,
            last_log_index = meta.last_log_id.as_ref().map_or(0, |l| l.index),
            "built snapshot"
        );
        // The checkpoint flushed the memtable, and its meta was read from the flushed files.
        self.view
            .flushed
            .advance(meta.last_log_id.map(|id| id.index));
        metrics::counter!(crate::metrics::SNAPSHOTS_BUILT).increment(1);
        metrics::histogram!(crate::metrics::SNAPSHOT_SECONDS)
            .record(started.elapsed().as_secs_f64());
        // The current snapshot is the one just built, unless a snapshot installed meanwhile
        // replaced it; that one is newer and just as valid to report.
        self.snapshots
            .open_current()
            .await
            .map_err(snap_err)?
            .ok_or_else(|| snap_err(std::io::Error::other("the snapshot just built is gone")))
    }
}
