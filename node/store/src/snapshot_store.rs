//! The snapshot directory of one Raft group: the current snapshot, cheap to build, streamed to a
//! follower only when one needs it.
//!
//! Building a snapshot is a RocksDB checkpoint of the state database: a flush of its memtable and
//! hard links to its SST and blob files, so it costs milliseconds whatever the state's size. Its
//! meta (last applied log id, membership) is read from the checkpoint itself, so meta and data
//! always agree. That is what lets the node snapshot every few megabytes of log and purge the log
//! before RocksDB ever flushes it (docs/decisions.md, "Snapshots are checkpoints").
//!
//! The byte stream a follower installs ([`snapshot_file`]'s format) is written from the
//! checkpoint only when a snapshot has to be sent ([`for_sending`], called by the peer network
//! before it streams), never on the apply path. Until then openraft's snapshot handle is a small
//! pointer file naming the checkpoint; it is valid on this machine only.
//!
//! Files in the directory:
//! - `current.meta`: the meta of the current snapshot (replaced by rename, after its data is
//!   durable);
//! - `ckpt-<id>/` and `ckpt-<id>.ptr`: a built snapshot's checkpoint and its pointer file;
//! - `snap-<id>.snap`: a snapshot's rows as one stream (received from a leader, or written from a
//!   checkpoint to be sent);
//! - `building-*`, `writing-*`, `receiving-*`, `installing-*`, `current.meta.tmp`: unfinished
//!   work, removed when the store opens.
//!
//! openraft (0.10) gives a snapshot no identity of its own, so the id naming its files travels with
//! its data ([`SnapshotData`]) and is stored next to its meta in `current.meta`.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rocksdb::{checkpoint::Checkpoint, Direction, IteratorMode, Options, ReadOptions, DB};

use crate::codec::{decode, encode};
use crate::db::CF_STATE_MACHINE;
use crate::keys::{self, sm_tag};
use crate::snapshot_file;
use raftlog_core::types::{LogId, Snapshot, SnapshotMeta, StoredMembership};
use raftlog_core::{GroupId, SnapshotData};

/// What `current.meta` holds. Laid out as openraft 0.9's `SnapshotMeta` was (which carried the
/// id), so a snapshot directory written before the move to 0.10 still reads.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredMeta {
    last_log_id: Option<LogId>,
    last_membership: StoredMembership,
    snapshot_id: String,
}

/// A fresh id for a snapshot covering `last_log_id`; unique even when two snapshots cover the
/// same log id (one built, one received, say).
pub fn new_snapshot_id(last_log_id: Option<&LogId>) -> String {
    let nonce: u32 = rand::random();
    match last_log_id {
        Some(id) => format!(
            "{}-{}-{}-{nonce:08x}",
            id.leader_id.term, id.leader_id.node_id, id.index
        ),
        None => format!("0-0-0-{nonce:08x}"),
    }
}

const META_FILE: &str = "current.meta";
const META_TMP_FILE: &str = "current.meta.tmp";
const CHECKPOINT_PREFIX: &str = "ckpt-";
const POINTER_SUFFIX: &str = ".ptr";
const DATA_PREFIX: &str = "snap-";
const DATA_SUFFIX: &str = ".snap";
const BUILDING_PREFIX: &str = "building-";
const WRITING_PREFIX: &str = "writing-";
const INSTALLING_PREFIX: &str = "installing-";
const RECEIVING_PREFIX: &str = "receiving-";

/// First bytes of a pointer file; a stream file starts with `snapshot_file`'s own magic.
const POINTER_MAGIC: &[u8; 8] = b"RLCKPT1\n";

/// Checkpoints being read (to write a stream for a follower), by path, with a count of readers.
/// Replacing the current snapshot leaves these in place; the next replacement or open removes
/// them. Process-wide because the readers run on the network side, not in the store.
static CHECKPOINTS_IN_USE: Mutex<BTreeMap<PathBuf, usize>> = Mutex::new(BTreeMap::new());

/// Marks a checkpoint as being read for as long as it lives.
struct CheckpointLease(PathBuf);

impl CheckpointLease {
    fn take(path: PathBuf) -> Self {
        *CHECKPOINTS_IN_USE
            .lock()
            .expect("checkpoint lease lock")
            .entry(path.clone())
            .or_default() += 1;
        Self(path)
    }

    fn is_leased(path: &Path) -> bool {
        CHECKPOINTS_IN_USE
            .lock()
            .expect("checkpoint lease lock")
            .contains_key(path)
    }
}

impl Drop for CheckpointLease {
    fn drop(&mut self) {
        let mut leases = CHECKPOINTS_IN_USE.lock().expect("checkpoint lease lock");
        if let Some(count) = leases.get_mut(&self.0) {
            *count -= 1;
            if *count == 0 {
                leases.remove(&self.0);
            }
        }
    }
}

/// The snapshot directory of one group.
#[derive(Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    group: GroupId,
}

impl SnapshotStore {
    /// Opens (creating) `dir` and removes what a crash or a failed build left there: without it
    /// a build that failed on a full disk would keep its space, and the restarted node would fail
    /// again for want of it.
    pub fn open(dir: PathBuf, group: GroupId) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        // Absolute, so pointer files name the checkpoint wherever the process runs from.
        let dir = std::fs::canonicalize(&dir)?;
        let store = Self { dir, group };
        store.remove_all_but_current(true)?;
        Ok(store)
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.join(META_FILE)
    }

    fn checkpoint_path(&self, snapshot_id: &str) -> PathBuf {
        checkpoint_path(&self.dir, snapshot_id)
    }

    fn pointer_path(&self, snapshot_id: &str) -> PathBuf {
        self.dir
            .join(format!("{CHECKPOINT_PREFIX}{snapshot_id}{POINTER_SUFFIX}"))
    }

    fn data_path(&self, snapshot_id: &str) -> PathBuf {
        stream_path(&self.dir, snapshot_id)
    }

    /// A new file to write a snapshot being received from a leader into (one per transfer, so
    /// two transfers never share one).
    pub fn receiving_path(&self) -> PathBuf {
        let nonce: u32 = rand::random();
        self.dir
            .join(format!("{RECEIVING_PREFIX}{nonce:08x}{DATA_SUFFIX}"))
    }

    /// Where a received snapshot is copied before it is installed.
    pub fn installing_path(&self, snapshot_id: &str) -> PathBuf {
        self.dir
            .join(format!("{INSTALLING_PREFIX}{snapshot_id}{DATA_SUFFIX}"))
    }

    /// The id and meta of the current snapshot.
    pub fn current_meta(&self) -> io::Result<Option<(String, SnapshotMeta)>> {
        match std::fs::read(self.meta_path()) {
            Ok(bytes) => decode::<StoredMeta>(&bytes)
                .map(|stored| {
                    let meta = SnapshotMeta {
                        last_log_id: stored.last_log_id,
                        last_membership: stored.last_membership,
                    };
                    Some((stored.snapshot_id, meta))
                })
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes every file and directory but the current snapshot's. `unfinished_too` also removes
    /// work in progress (only safe when the store opens: nothing else writes here yet); leased
    /// checkpoints stay until a later call.
    fn remove_all_but_current(&self, unfinished_too: bool) -> io::Result<()> {
        let current = self.current_meta()?.map(|(id, _)| id);
        let keep = |name: &str| {
            current.as_ref().is_some_and(|id| {
                name == format!("{CHECKPOINT_PREFIX}{id}")
                    || name == format!("{CHECKPOINT_PREFIX}{id}{POINTER_SUFFIX}")
                    || name == format!("{DATA_PREFIX}{id}{DATA_SUFFIX}")
            })
        };
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let finished = name.starts_with(CHECKPOINT_PREFIX) || name.starts_with(DATA_PREFIX);
            let unfinished = name.starts_with(BUILDING_PREFIX)
                || name.starts_with(WRITING_PREFIX)
                || name.starts_with(INSTALLING_PREFIX)
                || name.starts_with(RECEIVING_PREFIX)
                || name == META_TMP_FILE;
            let remove = (finished && !keep(&name)) || (unfinished && unfinished_too);
            if !remove || CheckpointLease::is_leased(&path) {
                continue;
            }
            if unfinished_too {
                tracing::info!(path = %path.display(), "removing an unfinished or stale snapshot file");
            }
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Makes `meta` the current snapshot (its data already durable here), then removes the older
    /// ones. A follower may still be streaming an older stream file: its open handle keeps the
    /// bytes readable after the unlink.
    fn publish(&self, snapshot_id: &str, meta: &SnapshotMeta) -> io::Result<()> {
        let tmp = self.dir.join(META_TMP_FILE);
        let stored = StoredMeta {
            last_log_id: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            snapshot_id: snapshot_id.to_string(),
        };
        std::fs::write(&tmp, encode(&stored))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.meta_path())?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        self.remove_all_but_current(false)
    }

    /// Builds a snapshot of `db` (the state database) as a checkpoint and makes it current.
    /// Returns its id and meta.
    pub fn build(&self, db: &DB) -> io::Result<(String, SnapshotMeta)> {
        let nonce: u32 = rand::random();
        let building = self.dir.join(format!("{BUILDING_PREFIX}{nonce:08x}"));
        let result = self.build_into(db, &building);
        if result.is_err() {
            // A failed build (a full disk, say) must not leave its partial checkpoint behind.
            let _ = std::fs::remove_dir_all(&building);
        }
        result
    }

    fn build_into(&self, db: &DB, building: &Path) -> io::Result<(String, SnapshotMeta)> {
        Checkpoint::new(db)
            .and_then(|checkpoint| checkpoint.create_checkpoint(building))
            .map_err(io::Error::other)?;
        let (last_log_id, last_membership) = read_applied_state(building, self.group)?;
        let snapshot_id = new_snapshot_id(last_log_id.as_ref());
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        std::fs::rename(building, self.checkpoint_path(&snapshot_id))?;
        let mut pointer = Vec::with_capacity(16 + self.dir.as_os_str().len());
        pointer.extend_from_slice(POINTER_MAGIC);
        pointer.extend_from_slice(&self.group.to_be_bytes());
        pointer.extend_from_slice(self.dir.as_os_str().as_encoded_bytes());
        let mut file = std::fs::File::create(self.pointer_path(&snapshot_id))?;
        file.write_all(&pointer)?;
        file.sync_all()?;
        self.publish(&snapshot_id, &meta)?;
        Ok((snapshot_id, meta))
    }

    /// Makes a received stream file (fsynced, in this directory) the current snapshot.
    pub fn publish_received(
        &self,
        snapshot_id: &str,
        meta: &SnapshotMeta,
        received: &Path,
    ) -> io::Result<()> {
        std::fs::rename(received, self.data_path(snapshot_id))?;
        self.publish(snapshot_id, meta)
    }

    /// The current snapshot: its stream file if there is one, else its pointer file.
    pub async fn open_current(&self) -> io::Result<Option<Snapshot>> {
        let Some((id, meta)) = self.current_meta()? else {
            return Ok(None);
        };
        let file = match tokio::fs::File::open(self.data_path(&id)).await {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tokio::fs::File::open(self.pointer_path(&id)).await?
            }
            Err(e) => Err(e)?,
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: SnapshotData { id, file },
        }))
    }
}

/// The checkpoint of snapshot `snapshot_id` in the snapshot directory `dir`.
fn checkpoint_path(dir: &Path, snapshot_id: &str) -> PathBuf {
    dir.join(format!("{CHECKPOINT_PREFIX}{snapshot_id}"))
}

/// The stream file of snapshot `snapshot_id` in the snapshot directory `dir`.
fn stream_path(dir: &Path, snapshot_id: &str) -> PathBuf {
    dir.join(format!("{DATA_PREFIX}{snapshot_id}{DATA_SUFFIX}"))
}

/// Opens a checkpoint of the state database, read-only.
fn open_checkpoint(path: &Path) -> io::Result<DB> {
    // Opened after every build (every 16 MiB of log by default) to read two keys: without these,
    // RocksDB starts 16 threads to open every table file in parallel and reads each file's
    // properties for statistics, on each open.
    let mut opts = Options::default();
    opts.set_max_file_opening_threads(1);
    opts.set_skip_stats_update_on_db_open(true);
    DB::open_cf_for_read_only(&opts, path, [CF_STATE_MACHINE], false).map_err(io::Error::other)
}

/// The last applied log id and the membership stored in a checkpoint.
fn read_applied_state(
    checkpoint: &Path,
    group: GroupId,
) -> io::Result<(Option<LogId>, StoredMembership)> {
    let db = open_checkpoint(checkpoint)?;
    let cf = db
        .cf_handle(CF_STATE_MACHINE)
        .expect("opened with the state machine column family");
    let read = |tag| -> io::Result<Option<Vec<u8>>> {
        db.get_cf(cf, keys::sm_singleton(group, tag))
            .map_err(io::Error::other)
    };
    let invalid = |e: postcard::Error| io::Error::new(io::ErrorKind::InvalidData, e);
    let applied: Option<LogId> = match read(sm_tag::APPLIED)? {
        Some(bytes) => decode(&bytes).map_err(invalid)?,
        None => None,
    };
    let membership = match read(sm_tag::MEMBERSHIP)? {
        Some(bytes) => decode(&bytes).map_err(invalid)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// Every row of `group` in an opened checkpoint, as (key without the group prefix, value), in
/// key order, read one at a time (never the whole state in memory).
fn checkpoint_rows(
    db: &DB,
    group: GroupId,
) -> impl Iterator<Item = io::Result<snapshot_file::Row>> + '_ {
    let cf = db
        .cf_handle(CF_STATE_MACHINE)
        .expect("opened with the state machine column family");
    let prefix = keys::sm_prefix(group);
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(keys::sm_prefix_end(group).to_vec());
    opts.set_readahead_size(2 << 20);
    db.iterator_cf_opt(cf, opts, IteratorMode::From(&prefix, Direction::Forward))
        .map(move |item| {
            item.map(|(k, v)| (k[prefix.len()..].to_vec().into_boxed_slice(), v))
                .map_err(io::Error::other)
        })
}

/// What a snapshot data file is.
enum DataFile {
    /// Rows as one stream ([`snapshot_file`]).
    Stream,
    /// A pointer to a checkpoint of `group` in the snapshot directory `dir`.
    Pointer { group: GroupId, dir: PathBuf },
}

/// Reads the head of a snapshot data file (leaving it positioned at the start).
fn classify(file: &mut std::fs::File) -> io::Result<DataFile> {
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(0))?;
    let mut head = Vec::new();
    (&mut *file).take(64 * 1024).read_to_end(&mut head)?;
    file.seek(SeekFrom::Start(0))?;
    if !head.starts_with(POINTER_MAGIC) {
        return Ok(DataFile::Stream);
    }
    let rest = &head[POINTER_MAGIC.len()..];
    let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    if rest.len() < 8 {
        return Err(invalid("truncated snapshot pointer"));
    }
    let group = GroupId::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
    let dir = std::str::from_utf8(&rest[8..])
        .map_err(|_| invalid("snapshot pointer names a non-UTF-8 directory"))?;
    Ok(DataFile::Pointer {
        group,
        dir: PathBuf::from(dir),
    })
}

/// Reads the rows of a snapshot data file, a stream or a pointer to a checkpoint on this machine,
/// handing each to `visit` as (key without the group prefix, value).
pub fn read_rows(
    path: &Path,
    snapshot_id: &str,
    mut visit: impl FnMut(Vec<u8>, Vec<u8>),
) -> io::Result<u64> {
    match classify(&mut std::fs::File::open(path)?)? {
        DataFile::Stream => snapshot_file::read(path, visit),
        DataFile::Pointer { group, dir } => {
            let checkpoint = checkpoint_path(&dir, snapshot_id);
            let _lease = CheckpointLease::take(checkpoint.clone());
            let db = open_checkpoint(&checkpoint)?;
            let mut count = 0;
            for row in checkpoint_rows(&db, group) {
                let (key, value) = row?;
                visit(key.into_vec(), value.into_vec());
                count += 1;
            }
            Ok(count)
        }
    }
}

/// Checks that the file at `path` is a whole snapshot stream (its end marker and row count), as a
/// received snapshot must be before openraft installs it: installing a truncated one would fail
/// inside the state machine and stop this node's Raft. Returns the row count.
pub fn check_stream(path: &Path) -> io::Result<u64> {
    snapshot_file::read(path, |_, _| {})
}

/// The snapshot as a stream a peer can install: `snapshot` itself when its data is a stream,
/// else a stream file written now from the checkpoint its pointer names (once per snapshot; it
/// stays next to the checkpoint for the next follower). The writing runs on a blocking thread.
pub async fn for_sending(snapshot: Snapshot) -> io::Result<Snapshot> {
    let Snapshot { meta, snapshot } = snapshot;
    let SnapshotData { id, file } = snapshot;
    let mut file = file.into_std().await;
    let snapshot_id = id.clone();
    let stream = tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
        match classify(&mut file)? {
            DataFile::Stream => Ok(file),
            DataFile::Pointer { group, dir } => write_stream(&dir, group, &snapshot_id),
        }
    })
    .await
    .map_err(io::Error::other)??;
    Ok(Snapshot {
        meta,
        snapshot: SnapshotData {
            id,
            file: tokio::fs::File::from_std(stream),
        },
    })
}

/// Writes (unless already there) the stream file of the checkpoint `snapshot_id` in `dir`, and
/// opens it.
fn write_stream(dir: &Path, group: GroupId, snapshot_id: &str) -> io::Result<std::fs::File> {
    let target = stream_path(dir, snapshot_id);
    if let Ok(file) = std::fs::File::open(&target) {
        return Ok(file);
    }
    let checkpoint = checkpoint_path(dir, snapshot_id);
    let _lease = CheckpointLease::take(checkpoint.clone());
    if !checkpoint.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("snapshot {snapshot_id} was replaced before it could be sent"),
        ));
    }
    let nonce: u32 = rand::random();
    let writing = dir.join(format!("{WRITING_PREFIX}{nonce:08x}{DATA_SUFFIX}"));
    let started = std::time::Instant::now();
    let result = open_checkpoint(&checkpoint).and_then(|db| {
        let rows = snapshot_file::write(&writing, checkpoint_rows(&db, group))?;
        // Opened before the rename: a snapshot replacing this one may remove the name at once.
        let file = std::fs::File::open(&writing)?;
        std::fs::rename(&writing, &target)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok((rows, file))
    });
    match result {
        Ok((rows, file)) => {
            tracing::info!(
                snapshot_id,
                rows,
                seconds = started.elapsed().as_secs_f64(),
                "wrote a snapshot stream from its checkpoint, to send it"
            );
            Ok(file)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&writing);
            Err(e)
        }
    }
}
