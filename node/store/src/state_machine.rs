//! The replicated state machine on RocksDB: topics, their partitions' offsets, the stored record
//! batches and the consumer groups' committed offsets of one Raft group, plus the snapshots that
//! capture them.
//!
//! Invariants:
//! - Applying is deterministic: no clock, no randomness, no I/O but this node's RocksDB. Every
//!   node that applies the same entries holds byte-identical rows (compare [`StateView::digest`]).
//! - One apply call is one RocksDB write batch that also records the last applied log id, written
//!   without WAL (the Raft log is the WAL; see the `storage` module doc). After a crash the
//!   state machine is at some earlier applied id and openraft re-applies from there.
//! - The in-memory topic and group tables are updated only after the write batch is in RocksDB,
//!   so a reader that sees an end offset finds every batch below it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::RaftSnapshotBuilder;
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::codec::{decode, encode, WRITE_BATCH_ROW_OVERHEAD};
use crate::db::CF_STATE_MACHINE;
use crate::keys::{self, sm_tag};
use crate::snapshot_store::{self, SnapshotStore};
use crate::stored_batch::{self, BatchHeader};
use crate::StateFlushed;
use raftlog_core::limits::{
    PRODUCER_BATCHES_REMEMBERED, READS_PARALLEL, STORED_BATCH_BYTES_TARGET,
};
use raftlog_core::types::{
    Entry, EntryPayload, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership,
};
use raftlog_core::{
    Command, CommandResponse, GroupOffset, GroupOffsets, PartitionState, ProducerSequence,
    ProducerState, Record, Rejection, TopicSettings, TopicState,
};
use raftlog_core::{GroupId, SnapshotData, TypeConfig};

/// Why a read could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("offset {offset} is out of range: {}", held(*start_offset, *end_offset))]
    OffsetOutOfRange {
        offset: u64,
        start_offset: u64,
        end_offset: u64,
    },
    #[error("storage error: {0}")]
    Storage(String),
}

/// What a partition holds, in words: "it holds offsets 3 to 9 (the next is 10)", or "it is
/// empty; the next offset is 10" (after retention, "older records were deleted by retention").
fn held(start_offset: u64, end_offset: u64) -> String {
    let deleted = if start_offset > 0 {
        "; older records were deleted by retention"
    } else {
        ""
    };
    if start_offset == end_offset {
        format!("the partition is empty; the next offset is {end_offset}{deleted}")
    } else {
        format!(
            "the partition holds offsets {start_offset} to {} (the next is {end_offset}){deleted}",
            end_offset - 1
        )
    }
}

/// Records read from one partition.
#[derive(Debug, Default)]
pub struct ReadResult {
    /// (offset, record), in offset order, all below `end_offset`.
    pub records: Vec<(u64, Record)>,
    pub start_offset: u64,
    pub end_offset: u64,
}

/// Read access to the applied state, shared between the state machine (which writes it) and the
/// API (which serves reads from it).
pub struct StateView {
    db: Arc<DB>,
    group: GroupId,
    topics: RwLock<BTreeMap<String, TopicState>>,
    groups: RwLock<BTreeMap<String, GroupOffsets>>,
    applied: watch::Sender<Option<LogId>>,
    /// How far the applied state is on disk; the group's log reads it before a purge.
    flushed: StateFlushed,
    /// Reads running on the blocking pool ([`Self::read_blocking`]), at most [`READS_PARALLEL`].
    read_slots: Arc<tokio::sync::Semaphore>,
}

impl StateView {
    fn cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_STATE_MACHINE)
            .expect("state_machine column family is created at open")
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The last applied log id; subscribe to wait for the next apply.
    pub fn applied(&self) -> watch::Receiver<Option<LogId>> {
        self.applied.subscribe()
    }

    pub fn topics(&self) -> Vec<TopicState> {
        self.topics
            .read()
            .expect("topic table lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn topic(&self, name: &str) -> Option<TopicState> {
        self.topics
            .read()
            .expect("topic table lock")
            .get(name)
            .cloned()
    }

    /// A topic's settings: what a produce request is checked against, without copying the
    /// topic's partition table (up to `partitions_per_topic_max` entries) per request.
    pub fn topic_settings(&self, name: &str) -> Option<TopicSettings> {
        self.topics
            .read()
            .expect("topic table lock")
            .get(name)
            .map(|topic| topic.settings.clone())
    }

    pub fn topic_count(&self) -> usize {
        self.topics.read().expect("topic table lock").len()
    }

    /// Every group with its committed offsets, by name.
    pub fn groups(&self) -> BTreeMap<String, GroupOffsets> {
        self.groups.read().expect("group table lock").clone()
    }

    pub fn group_offsets(&self, name: &str) -> Option<GroupOffsets> {
        self.groups
            .read()
            .expect("group table lock")
            .get(name)
            .cloned()
    }

    /// [`Self::read`] on tokio's blocking pool, for request handlers. A read that misses the
    /// memtables waits on the disk (flushed files are written with O_DIRECT, so they are not in
    /// the page cache just because they were written): on an async worker that wait would stall
    /// every other request and Raft's heartbeats on it, for as long as a 16 MiB read takes.
    pub async fn read_blocking(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadResult, ReadError> {
        // The slot goes with the read, not with this future: a caller that goes away (a client
        // that hangs up) leaves the read running, and it still counts until it ends.
        let slot = self
            .read_slots
            .clone()
            .acquire_owned()
            .await
            .expect("the read semaphore is never closed");
        let (view, topic) = (self.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            view.read(&topic, partition, offset, max_records, max_bytes)
        })
        .await
        .unwrap_or_else(|e| Err(ReadError::Storage(format!("read task failed: {e}"))))
    }

    /// Reads committed records of `topic`/`partition` from `offset`, at most `max_records` records
    /// and about `max_bytes` bytes (always at least one record when one is available, so a record
    /// larger than `max_bytes` cannot stall a consumer).
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadResult, ReadError> {
        // Only the one partition's offsets, not a copy of the topic with its whole partition
        // table (up to `partitions_per_topic_max` entries) per read.
        let (topic_id, start_offset, end_offset) = {
            let topics = self.topics.read().expect("topic table lock");
            let state = topics
                .get(topic)
                .ok_or_else(|| Rejection::UnknownTopic(topic.to_string()))?;
            let part = state.partitions.get(partition as usize).ok_or_else(|| {
                Rejection::UnknownPartition {
                    topic: topic.to_string(),
                    partition,
                    partitions: state.settings.partitions,
                }
            })?;
            (state.id, part.start_offset, part.end_offset)
        };
        if offset < start_offset || offset > end_offset {
            return Err(ReadError::OffsetOutOfRange {
                offset,
                start_offset,
                end_offset,
            });
        }
        let mut result = ReadResult {
            records: Vec::new(),
            start_offset,
            end_offset,
        };
        if offset == end_offset || max_records == 0 {
            return Ok(result);
        }
        // Seek to the batch that holds `offset`: the last batch whose base offset is <= offset.
        let seek = keys::sm_batch(self.group, topic_id, partition, offset);
        let first_base = {
            let mut back = self
                .db
                .iterator_cf(self.cf(), IteratorMode::From(&seek, Direction::Reverse));
            match back.next() {
                Some(Ok((key, _))) => match keys::parse_batch(&key) {
                    Some((t, p, base)) if t == topic_id && p == partition => base,
                    _ => offset,
                },
                Some(Err(e)) => return Err(ReadError::Storage(e.to_string())),
                None => offset,
            }
        };
        let from = keys::sm_batch(self.group, topic_id, partition, first_base);
        let mut opts = ReadOptions::default();
        // Stop at the partition's end, and read ahead: a fetch scans consecutive batches.
        opts.set_iterate_upper_bound(keys::sm_batch(self.group, topic_id, partition, end_offset));
        opts.set_readahead_size(2 << 20);
        let mut bytes = 0usize;
        'batches: for item in self.db.iterator_cf_opt(
            self.cf(),
            opts,
            IteratorMode::From(&from, Direction::Forward),
        ) {
            let (key, value) = item.map_err(|e| ReadError::Storage(e.to_string()))?;
            let Some((t, p, base)) = keys::parse_batch(&key) else {
                break;
            };
            if t != topic_id || p != partition || base >= end_offset {
                break;
            }
            let records = stored_batch::records_shared(bytes::Bytes::from(value))
                .map_err(|e| ReadError::Storage(e.to_string()))?;
            for (i, record) in records.into_iter().enumerate() {
                let record_offset = base + i as u64;
                if record_offset < offset {
                    continue;
                }
                if record_offset >= end_offset
                    || result.records.len() >= max_records
                    || (!result.records.is_empty() && bytes + record.size_bytes() > max_bytes)
                {
                    break 'batches;
                }
                bytes += record.size_bytes();
                result.records.push((record_offset, record));
            }
        }
        Ok(result)
    }

    /// [`Self::offset_for_time`] on tokio's blocking pool (it reads from disk), sharing the
    /// read slots with fetches.
    pub async fn offset_for_time_blocking(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
        at_ms: i64,
    ) -> Result<u64, ReadError> {
        let slot = self
            .read_slots
            .clone()
            .acquire_owned()
            .await
            .expect("the read semaphore is never closed");
        let (view, topic) = (self.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            view.offset_for_time(&topic, partition, at_ms)
        })
        .await
        .unwrap_or_else(|e| Err(ReadError::Storage(format!("read task failed: {e}"))))
    }

    /// The first offset of `topic`/`partition` whose batch was appended at or after `at_ms` (the
    /// leader's clock, in each stored batch's header), or the end offset if none was.
    ///
    /// A binary search over the stored batches, one seek per step: append times follow offsets
    /// (each leader stamps its own clock, so a leader change onto a node whose clock is behind
    /// could bend that order by the clocks' difference).
    pub fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        at_ms: i64,
    ) -> Result<u64, ReadError> {
        let (topic_id, start_offset, end_offset) = {
            let topics = self.topics.read().expect("topic table lock");
            let state = topics
                .get(topic)
                .ok_or_else(|| Rejection::UnknownTopic(topic.to_string()))?;
            let part = state.partitions.get(partition as usize).ok_or_else(|| {
                Rejection::UnknownPartition {
                    topic: topic.to_string(),
                    partition,
                    partitions: state.settings.partitions,
                }
            })?;
            (state.id, part.start_offset, part.end_offset)
        };
        // The batch holding `offset`: its base offset and append time.
        let batch_at = |offset: u64| -> Result<Option<(u64, i64)>, ReadError> {
            let seek = keys::sm_batch(self.group, topic_id, partition, offset);
            let mut back = self
                .db
                .iterator_cf(self.cf(), IteratorMode::From(&seek, Direction::Reverse));
            match back.next() {
                Some(Ok((key, value))) => match keys::parse_batch(&key) {
                    Some((t, p, base)) if t == topic_id && p == partition => {
                        let header = stored_batch::header(&value)
                            .map_err(|e| ReadError::Storage(e.to_string()))?;
                        Ok(Some((base, header.appended_at_ms)))
                    }
                    _ => Ok(None),
                },
                Some(Err(e)) => Err(ReadError::Storage(e.to_string())),
                None => Ok(None),
            }
        };
        // Invariant: every offset below `low` was appended before `at_ms`; the answer is at most
        // `high`.
        let (mut low, mut high) = (start_offset, end_offset);
        while low < high {
            let middle = low + (high - low) / 2;
            match batch_at(middle)? {
                // The batch holding `middle` is earlier: the answer lies past it.
                Some((_, appended_at_ms)) if appended_at_ms < at_ms => low = middle + 1,
                // It is not: nor is any offset of it, from its base on.
                Some((base, _)) => high = base.max(low),
                // No stored batch holds it (cannot happen inside start..end): search below.
                None => high = middle,
            }
        }
        Ok(low)
    }

    /// SHA-256 over every row of this group's state machine, read under one RocksDB snapshot,
    /// with the applied index it corresponds to and the row count.
    pub fn digest(&self) -> Result<(u64, String, u64), ReadError> {
        let snapshot = self.db.snapshot();
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(keys::sm_prefix_end(self.group).to_vec());
        let prefix = keys::sm_prefix(self.group);
        let applied_key = keys::sm_singleton(self.group, sm_tag::APPLIED);
        let mut hasher = Sha256::new();
        let mut rows = 0u64;
        let mut applied_index = 0;
        for item in snapshot.iterator_cf_opt(
            self.cf(),
            opts,
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (key, value) = item.map_err(|e| ReadError::Storage(e.to_string()))?;
            if *key == *applied_key {
                let applied: Option<LogId> =
                    decode(&value).map_err(|e| ReadError::Storage(e.to_string()))?;
                applied_index = applied.map_or(0, |id| id.index);
            }
            hasher.update((key.len() as u64).to_be_bytes());
            hasher.update(&key);
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(&value);
            rows += 1;
        }
        Ok((applied_index, hex::encode(hasher.finalize()), rows))
    }
}

/// The openraft state machine of one Raft group.
pub struct StateMachine {
    view: Arc<StateView>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    next_topic_id: u64,
    next_producer_id: u64,
    /// Only apply reads and writes this (no API read needs it), so it is not in the view.
    producers: BTreeMap<u64, ProducerState>,
    snapshots: SnapshotStore,
}

fn sm_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::other(format!("state machine: {e}"))
}

fn snap_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::other(format!("snapshot: {e}"))
}

impl StateMachine {
    /// Opens the state machine of `group`, loading its applied state and topic table.
    pub fn open(
        dbs: &crate::Databases,
        group: GroupId,
        snapshot_dir: PathBuf,
    ) -> Result<Self, StorageError> {
        let db = dbs.state.clone();
        let snapshots = SnapshotStore::open(snapshot_dir, group).map_err(snap_err)?;
        let (applied_tx, _) = watch::channel(None);
        let view = Arc::new(StateView {
            db,
            group,
            topics: RwLock::new(BTreeMap::new()),
            groups: RwLock::new(BTreeMap::new()),
            applied: applied_tx,
            flushed: StateFlushed::default(),
            read_slots: Arc::new(tokio::sync::Semaphore::new(READS_PARALLEL)),
        });
        let mut sm = Self {
            view,
            last_applied: None,
            membership: StoredMembership::default(),
            next_topic_id: 1,
            next_producer_id: 1,
            producers: BTreeMap::new(),
            snapshots,
        };
        sm.load()?;
        Ok(sm)
    }

    pub fn view(&self) -> Arc<StateView> {
        self.view.clone()
    }

    /// How far this state machine is known to be on disk, for its log ([`LogStore::new`]).
    ///
    /// [`LogStore::new`]: super::log_store::LogStore::new
    pub fn flushed(&self) -> StateFlushed {
        self.view.flushed.clone()
    }

    /// The snapshot directory (the peer service writes snapshots it receives there).
    pub fn snapshot_store(&self) -> SnapshotStore {
        self.snapshots.clone()
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let read_err = |e: String| StorageError::other(format!("reading the state machine: {e}"));
        match self
            .view
            .db
            .get_cf(self.view.cf(), key)
            .map_err(|e| read_err(e.to_string()))?
        {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode(&bytes).map_err(|e| read_err(e.to_string()))?)),
        }
    }

    /// (Re)loads everything cached in memory from RocksDB: at open and after installing a snapshot.
    fn load(&mut self) -> Result<(), StorageError> {
        let group = self.view.group;
        self.last_applied = self
            .get::<Option<LogId>>(&keys::sm_singleton(group, sm_tag::APPLIED))?
            .flatten();
        self.membership = self
            .get(&keys::sm_singleton(group, sm_tag::MEMBERSHIP))?
            .unwrap_or_default();
        self.next_topic_id = self
            .get(&keys::sm_singleton(group, sm_tag::NEXT_TOPIC_ID))?
            .unwrap_or(1);
        let prefix = keys::sm_topic_prefix(group);
        let mut topics = BTreeMap::new();
        for item in self.view.db.iterator_cf(
            self.view.cf(),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (key, value) = item.map_err(sm_err)?;
            if !key.starts_with(&prefix) {
                break;
            }
            let topic: TopicState = decode(&value).map_err(sm_err)?;
            topics.insert(topic.name.clone(), topic);
        }
        self.next_producer_id = self
            .get(&keys::sm_singleton(group, sm_tag::NEXT_PRODUCER_ID))?
            .unwrap_or(1);
        let prefix = keys::sm_singleton(group, sm_tag::PRODUCER);
        self.producers.clear();
        for item in self.view.db.iterator_cf(
            self.view.cf(),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (key, value) = item.map_err(sm_err)?;
            if !key.starts_with(&prefix) {
                break;
            }
            let id = keys::parse_producer(&key).ok_or_else(|| {
                sm_err(std::io::Error::other(
                    "malformed producer key in state machine",
                ))
            })?;
            self.producers.insert(id, decode(&value).map_err(sm_err)?);
        }
        let prefix = keys::sm_group_offset_prefix(group);
        let mut groups: BTreeMap<String, GroupOffsets> = BTreeMap::new();
        for item in self.view.db.iterator_cf(
            self.view.cf(),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (key, value) = item.map_err(sm_err)?;
            if !key.starts_with(&prefix) {
                break;
            }
            let (name, topic_id, partition) = keys::parse_group_offset(&key).ok_or_else(|| {
                sm_err(std::io::Error::other(
                    "malformed group offset key in state machine",
                ))
            })?;
            let offset: GroupOffset = decode(&value).map_err(sm_err)?;
            groups
                .entry(name)
                .or_default()
                .insert((topic_id, partition), offset);
        }
        *self.view.topics.write().expect("topic table lock") = topics;
        *self.view.groups.write().expect("group table lock") = groups;
        self.view.applied.send_replace(self.last_applied);
        // What was just read is on disk: at open the memtable is empty (no WAL to replay), and
        // an installed snapshot is flushed before it is loaded.
        self.view
            .flushed
            .advance(self.last_applied.map(|id| id.index));
        Ok(())
    }

    /// Applies one command to the working copies of the topic and group tables, adding its rows
    /// to `batch`, except the rows of appends, which collect in `rows` until the entry is done.
    ///
    /// By reference: the entry is shared with the log's cache (`Command::Batch` is an `Arc`), and
    /// what apply keeps of a record is its `Bytes`, so nothing here copies a payload.
    fn apply_command(
        &mut self,
        command: &Command,
        topics: &mut TopicChanges<'_>,
        groups: &mut GroupChanges<'_>,
        batch: &mut WriteBatch,
        rows: &mut EntryRows,
    ) -> CommandResponse {
        let group = self.view.group;
        let cf = self.view.cf();
        match command {
            Command::CreateTopic {
                name,
                settings,
                topics_max,
            } => {
                if topics.exists(name) {
                    return CommandResponse::Rejected(Rejection::TopicExists(name.clone()));
                }
                if topics.count() >= *topics_max as usize {
                    return CommandResponse::Rejected(Rejection::TooManyTopics(*topics_max));
                }
                let id = self.next_topic_id;
                self.next_topic_id += 1;
                batch.put_cf(
                    cf,
                    keys::sm_singleton(group, sm_tag::NEXT_TOPIC_ID),
                    encode(&self.next_topic_id),
                );
                let partitions = vec![PartitionState::default(); settings.partitions as usize];
                let topic = TopicState {
                    id,
                    name: name.clone(),
                    settings: settings.clone(),
                    partitions,
                };
                batch.put_cf(cf, keys::sm_topic(group, name), encode(&topic));
                topics.insert(name.clone(), topic);
                CommandResponse::TopicCreated { topic_id: id }
            }
            Command::Append {
                topic,
                partition,
                records,
                proposed_at_ms,
                producer,
                expected_end_offset,
            } => {
                let (partition, proposed_at_ms) = (*partition, *proposed_at_ms);
                let Some(state) = topics.get_mut(topic) else {
                    return CommandResponse::Rejected(Rejection::UnknownTopic(topic.clone()));
                };
                let (topic_id, partitions) = (state.id, state.settings.partitions);
                let Some(part) = state.partitions.get_mut(partition as usize) else {
                    return CommandResponse::Rejected(Rejection::UnknownPartition {
                        topic: topic.clone(),
                        partition,
                        partitions,
                    });
                };
                let record_count = records.len() as u32;
                // Deduplication comes first: a retried conditional append that succeeded must get
                // its original offsets, not a mismatch against the offsets it moved itself.
                if let Some(seq) = *producer {
                    match check_sequence(&self.producers, seq, (topic_id, partition), record_count)
                    {
                        Ok(None) => {}
                        Ok(Some(base_offset)) => {
                            return CommandResponse::Appended {
                                base_offset,
                                record_count,
                                duplicate: true,
                            }
                        }
                        Err(rejection) => return CommandResponse::Rejected(rejection),
                    }
                }
                if let Some(expected) = *expected_end_offset {
                    if expected != part.end_offset {
                        return CommandResponse::Rejected(Rejection::EndOffsetMismatch {
                            expected,
                            actual: part.end_offset,
                        });
                    }
                }
                let base_offset = part.end_offset;
                let bytes: u64 = records.iter().map(|r| r.size_bytes() as u64).sum();
                part.end_offset += records.len() as u64;
                part.bytes += bytes;
                rows.add_batch(topic_id, partition, base_offset, proposed_at_ms, records);
                if !rows.topics.contains(topic) {
                    rows.topics.insert(topic.clone());
                }
                if let Some(seq) = *producer {
                    let producer = self
                        .producers
                        .get_mut(&seq.producer_id)
                        .expect("check_sequence found the producer");
                    producer.last_seen_ms = proposed_at_ms;
                    let p = producer
                        .partitions
                        .entry((topic_id, partition))
                        .or_default();
                    p.next_sequence = seq.sequence + u64::from(record_count);
                    p.recent.push((seq.sequence, record_count, base_offset));
                    if p.recent.len() > PRODUCER_BATCHES_REMEMBERED {
                        p.recent.remove(0);
                    }
                    rows.producers.insert(seq.producer_id);
                }
                CommandResponse::Appended {
                    base_offset,
                    record_count,
                    duplicate: false,
                }
            }
            Command::AlterTopic {
                name,
                retention_ms,
                retention_bytes,
            } => {
                let Some(state) = topics.get_mut(name) else {
                    return CommandResponse::Rejected(Rejection::UnknownTopic(name.clone()));
                };
                if let Some(ms) = *retention_ms {
                    state.settings.retention_ms = ms;
                }
                if let Some(bytes) = *retention_bytes {
                    state.settings.retention_bytes = bytes;
                }
                batch.put_cf(cf, keys::sm_topic(group, name), encode(&*state));
                CommandResponse::TopicAltered
            }
            Command::InitProducer {
                now_ms,
                producers_max,
            } => {
                if self.producers.len() >= *producers_max as usize {
                    return CommandResponse::Rejected(Rejection::TooManyProducers(*producers_max));
                }
                let producer_id = self.next_producer_id;
                self.next_producer_id += 1;
                batch.put_cf(
                    cf,
                    keys::sm_singleton(group, sm_tag::NEXT_PRODUCER_ID),
                    encode(&self.next_producer_id),
                );
                let producer = ProducerState {
                    last_seen_ms: *now_ms,
                    partitions: BTreeMap::new(),
                };
                batch.put_cf(cf, keys::sm_producer(group, producer_id), encode(&producer));
                self.producers.insert(producer_id, producer);
                CommandResponse::ProducerInitialized { producer_id }
            }
            Command::Maintenance { .. } => {
                unreachable!("apply() runs Maintenance itself, against flushed state")
            }
            Command::Batch(commands) => CommandResponse::Batch(
                commands
                    .iter()
                    .map(|command| {
                        assert!(
                            !matches!(command, Command::Maintenance { .. } | Command::Batch(_)),
                            "only appends are batched"
                        );
                        self.apply_command(command, topics, groups, batch, rows)
                    })
                    .collect(),
            ),
            Command::DeleteTopic { name } => {
                let Some(state) = topics.remove(name) else {
                    return CommandResponse::Rejected(Rejection::UnknownTopic(name.clone()));
                };
                batch.delete_cf(cf, keys::sm_topic(group, name));
                batch.delete_range_cf(
                    cf,
                    keys::sm_batch(group, state.id, 0, 0),
                    keys::sm_topic_batches_end(group, state.id),
                );
                for (group_name, offsets) in groups.touch_all() {
                    offsets.retain(|&(topic_id, partition), _| {
                        if topic_id == state.id {
                            batch.delete_cf(
                                cf,
                                keys::sm_group_offset(group, group_name, topic_id, partition),
                            );
                        }
                        topic_id != state.id
                    });
                }
                CommandResponse::TopicDeleted
            }
            Command::CommitOffsets {
                group: group_name,
                topic,
                offsets,
                committed_at_ms,
                groups_max,
            } => commit_offsets(
                OffsetCommit {
                    group: group_name,
                    topic,
                    offsets,
                    committed_at_ms: *committed_at_ms,
                    groups_max: *groups_max,
                    allow_rewind: true,
                },
                topics,
                groups,
                (batch, cf, group),
            ),
            Command::CommitGroupOffsets {
                group: group_name,
                topic,
                offsets,
                committed_at_ms,
                groups_max,
                allow_rewind,
            } => commit_offsets(
                OffsetCommit {
                    group: group_name,
                    topic,
                    offsets,
                    committed_at_ms: *committed_at_ms,
                    groups_max: *groups_max,
                    allow_rewind: *allow_rewind,
                },
                topics,
                groups,
                (batch, cf, group),
            ),
            Command::DeleteGroup { group: group_name } => {
                if !groups.exists(group_name) {
                    return CommandResponse::Rejected(Rejection::UnknownGroup(group_name.clone()));
                }
                let offsets = groups.touch(group_name);
                for &(topic_id, partition) in offsets.keys() {
                    batch.delete_cf(
                        cf,
                        keys::sm_group_offset(group, group_name, topic_id, partition),
                    );
                }
                offsets.clear();
                CommandResponse::GroupDeleted
            }
        }
    }
}

/// The rows that the appends of one entry change, written once when the entry is done instead
/// of once per append.
///
/// A group-commit entry (`Command::Batch`) holds dozens of produce requests, at C=64 mostly
/// single-record appends to the same partition. Their records become one stored batch per
/// partition, cut at [`STORED_BATCH_BYTES_TARGET`] (the unit a fetch reads and retention
/// deletes; offsets inside it are consecutive), and each touched topic and producer row is
/// written once. Before, every append wrote its own
/// row, its topic row and its producer row: three memtable inserts per request on every node,
/// and rows below the blob threshold that compactions kept rewriting. Merging stops at the
/// entry's end, so the rows do not depend on how openraft splits entries into apply calls.
#[derive(Default)]
struct EntryRows {
    /// Stored batches being built, in the order their first append came.
    batches: Vec<PendingBatch>,
    /// Names of the topics whose row (end offsets) changed.
    topics: BTreeSet<String>,
    /// Producers whose state changed.
    producers: BTreeSet<u64>,
}

struct PendingBatch {
    topic_id: u64,
    partition: u32,
    base_offset: u64,
    header: BatchHeader,
    records: Vec<Record>,
}

impl EntryRows {
    /// Adds an append's records: to the partition's pending batch when they follow it (always,
    /// within one entry: nothing else moves a partition's end offset) and it has room, else as
    /// new batches of at most [`STORED_BATCH_BYTES_TARGET`] (a larger record alone).
    fn add_batch(
        &mut self,
        topic_id: u64,
        partition: u32,
        base_offset: u64,
        appended_at_ms: i64,
        records: &[Record],
    ) {
        for (i, record) in records.iter().enumerate() {
            let offset = base_offset + i as u64;
            let size = record.size_bytes() as u64;
            let follows = |b: &&mut PendingBatch| {
                b.topic_id == topic_id
                    && b.partition == partition
                    && b.base_offset + b.records.len() as u64 == offset
            };
            // A clone of a record is reference counts (its buffers are `Bytes`); one with no
            // timestamp of its own gets the time it was proposed at.
            let mut record = record.clone();
            if record.timestamp_ms == 0 {
                record.timestamp_ms = appended_at_ms;
            }
            match self.batches.iter_mut().rev().find(follows) {
                Some(pending) if pending.header.bytes + size <= STORED_BATCH_BYTES_TARGET => {
                    pending.records.push(record);
                    pending.header.bytes += size;
                    // Time-based retention judges a batch by its newest append.
                    pending.header.appended_at_ms =
                        pending.header.appended_at_ms.max(appended_at_ms);
                }
                _ => self.batches.push(PendingBatch {
                    topic_id,
                    partition,
                    base_offset: offset,
                    header: BatchHeader {
                        appended_at_ms,
                        bytes: size,
                    },
                    records: vec![record],
                }),
            }
        }
    }
}

impl StateMachine {
    /// Applies `entries` in one RocksDB write batch and returns one response per entry.
    pub fn apply_entries(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<Vec<CommandResponse>, StorageError> {
        let group = self.view.group;
        let view = self.view.clone();
        let live_topics = view.topics.read().expect("topic table lock");
        let mut topics = TopicChanges::new(&live_topics);
        let live_groups = view.groups.read().expect("group table lock");
        let mut groups = GroupChanges::new(&live_groups);
        let entries: Vec<Entry> = entries.into_iter().collect();
        // Sized for the records up front: grown as it fills, the batch copied everything in it at
        // each doubling.
        let mut batch = WriteBatch::with_capacity_bytes(
            entries
                .iter()
                .map(|entry| match &entry.payload {
                    EntryPayload::Normal(command) => command.stored_bytes_estimate(),
                    _ => 0,
                })
                .sum::<usize>()
                + WRITE_BATCH_ROW_OVERHEAD,
        );
        let mut responses = Vec::new();
        for entry in entries {
            let previous = self.last_applied;
            self.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => CommandResponse::None,
                EntryPayload::Normal(Command::Maintenance {
                    now_ms,
                    producer_idle_ms,
                }) => {
                    // Maintenance reads RocksDB: first write what the entries before it changed,
                    // as the state after `previous`, so that every node sees the same rows
                    // however openraft splits entries into apply calls.
                    if !batch.is_empty() {
                        self.write_applied(std::mem::take(&mut batch), previous)?;
                    }
                    self.maintain(now_ms, producer_idle_ms, &mut topics, &mut batch)?
                }
                EntryPayload::Normal(command) => {
                    let mut rows = EntryRows::default();
                    let response = self.apply_command(
                        &command,
                        &mut topics,
                        &mut groups,
                        &mut batch,
                        &mut rows,
                    );
                    self.write_entry_rows(rows, &topics, &mut batch);
                    response
                }
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    batch.put_cf(
                        self.view.cf(),
                        keys::sm_singleton(group, sm_tag::MEMBERSHIP),
                        encode(&self.membership),
                    );
                    CommandResponse::None
                }
            };
            responses.push(response);
        }
        self.write_applied(batch, self.last_applied)?;
        let (changed_topics, changed_groups) = (topics.touched, groups.touched);
        drop((live_topics, live_groups));
        let mut live_groups = self.view.groups.write().expect("group table lock");
        for (name, offsets) in changed_groups {
            if offsets.is_empty() {
                live_groups.remove(&name);
            } else {
                live_groups.insert(name, offsets);
            }
        }
        drop(live_groups);
        let mut live_topics = self.view.topics.write().expect("topic table lock");
        for (name, state) in changed_topics {
            match state {
                Some(state) => live_topics.insert(name, state),
                None => live_topics.remove(&name),
            };
        }
        drop(live_topics);
        self.view.applied.send_replace(self.last_applied);
        Ok(responses)
    }

    /// Adds the rows collected while applying one entry to `batch`.
    fn write_entry_rows(&self, rows: EntryRows, topics: &TopicChanges<'_>, batch: &mut WriteBatch) {
        let (group, cf) = (self.view.group, self.view.cf());
        for pending in rows.batches {
            batch.put_cf(
                cf,
                keys::sm_batch(
                    group,
                    pending.topic_id,
                    pending.partition,
                    pending.base_offset,
                ),
                stored_batch::encode_batch(pending.header, &pending.records),
            );
        }
        for name in rows.topics {
            let state = topics.get(&name).expect("an appended-to topic exists");
            batch.put_cf(cf, keys::sm_topic(group, &name), encode(state));
        }
        for id in rows.producers {
            let producer = self
                .producers
                .get(&id)
                .expect("an appending producer exists");
            batch.put_cf(cf, keys::sm_producer(group, id), encode(producer));
        }
    }

    /// Writes `batch` with `applied` as the last applied log id (no WAL; see the module doc).
    fn write_applied(
        &self,
        mut batch: WriteBatch,
        applied: Option<LogId>,
    ) -> Result<(), StorageError> {
        batch.put_cf(
            self.view.cf(),
            keys::sm_singleton(self.view.group, sm_tag::APPLIED),
            encode(&applied),
        );
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        self.view.db.write_opt(batch, &opts).map_err(sm_err)
    }

    /// `Command::Maintenance`: expires idle producers and applies retention. Reads batch headers
    /// from RocksDB, so the caller must have written every earlier entry's rows first.
    fn maintain(
        &mut self,
        now_ms: i64,
        producer_idle_ms: u64,
        topics: &mut TopicChanges<'_>,
        batch: &mut WriteBatch,
    ) -> Result<CommandResponse, StorageError> {
        let group = self.view.group;
        let cf = self.view.cf();
        let idle = i64::try_from(producer_idle_ms).unwrap_or(i64::MAX);
        let expired: Vec<u64> = self
            .producers
            .iter()
            .filter(|(_, p)| p.last_seen_ms.saturating_add(idle) < now_ms)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.producers.remove(&id);
            batch.delete_cf(cf, keys::sm_producer(group, id));
        }
        for name in topics.names_with_retention() {
            // Retention changes few topics per pass: work on a copy, stored only if it changed.
            let mut state = topics.get(&name).expect("a listed topic exists").clone();
            let (retention_ms, retention_bytes) =
                (state.settings.retention_ms, state.settings.retention_bytes);
            let max_age = i64::try_from(retention_ms).unwrap_or(i64::MAX);
            let mut changed = false;
            for (partition, part) in state.partitions.iter_mut().enumerate() {
                let partition = partition as u32;
                let from = keys::sm_batch(group, state.id, partition, part.start_offset);
                let mut new_start = part.start_offset;
                let mut bytes = part.bytes;
                for item in self
                    .view
                    .db
                    .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
                {
                    let (key, value) = item.map_err(sm_err)?;
                    let Some((t, p, base)) = keys::parse_batch(&key) else {
                        break;
                    };
                    if t != state.id || p != partition || base >= part.end_offset {
                        break;
                    }
                    let header = stored_batch::header(&value).map_err(sm_err)?;
                    let too_old =
                        retention_ms > 0 && header.appended_at_ms.saturating_add(max_age) < now_ms;
                    let too_big = retention_bytes > 0 && bytes > retention_bytes;
                    if !(too_old || too_big) {
                        new_start = base;
                        break;
                    }
                    bytes -= header.bytes.min(bytes);
                    // Until a batch that stays is found, everything up to the end goes.
                    new_start = part.end_offset;
                }
                if new_start != part.start_offset {
                    batch.delete_range_cf(
                        cf,
                        from,
                        keys::sm_batch(group, state.id, partition, new_start),
                    );
                    part.start_offset = new_start;
                    part.bytes = bytes;
                    changed = true;
                }
            }
            if changed {
                batch.put_cf(cf, keys::sm_topic(group, &state.name), encode(&state));
                topics.insert(name, state);
            }
        }
        Ok(CommandResponse::MaintenanceDone)
    }
}

/// Judges an idempotent batch against what its producer already appended to `at` (topic id,
/// partition): `Ok(None)` to append it, `Ok(Some(base_offset))` when it is a retry of a remembered
/// batch, or the rejection.
fn check_sequence(
    producers: &BTreeMap<u64, ProducerState>,
    seq: ProducerSequence,
    at: (u64, u32),
    record_count: u32,
) -> Result<Option<u64>, Rejection> {
    let producer = producers
        .get(&seq.producer_id)
        .ok_or(Rejection::UnknownProducer(seq.producer_id))?;
    let partition = producer.partitions.get(&at);
    let expected = partition.map_or(0, |p| p.next_sequence);
    if seq.sequence == expected {
        return Ok(None);
    }
    let remembered =
        partition.and_then(|p| p.recent.iter().find(|(first, ..)| *first == seq.sequence));
    if let Some(&(_, count, base_offset)) = remembered {
        if count == record_count {
            return Ok(Some(base_offset));
        }
    }
    let (producer_id, got) = (seq.producer_id, seq.sequence);
    Err(if got > expected {
        Rejection::SequenceGap {
            producer_id,
            expected,
            got,
        }
    } else {
        Rejection::SequenceStale {
            producer_id,
            expected,
            got,
        }
    })
}

/// How many names a shared table holds once an apply call's changes are published: `touched`
/// gives each changed name and whether it exists afterwards.
fn count_after_changes<'a, V>(
    live: &BTreeMap<String, V>,
    touched: impl Iterator<Item = (&'a String, bool)>,
) -> usize {
    let mut count = live.len();
    for (name, exists) in touched {
        match (live.contains_key(name), exists) {
            (false, true) => count += 1,
            (true, false) => count -= 1,
            _ => {}
        }
    }
    count
}

/// The topics one apply call changes: copies of the touched topics, published to the shared
/// table only after the write batch is in RocksDB (`None`: deleted). Applying used to copy the
/// whole table per call, which made every entry cost O(topics): 2,000 topics of 4 partitions
/// halved 1 KiB C=64 throughput (benchmarks.md, session 14), and a node may hold 10,000.
struct TopicChanges<'a> {
    live: &'a BTreeMap<String, TopicState>,
    touched: BTreeMap<String, Option<TopicState>>,
}

impl<'a> TopicChanges<'a> {
    fn new(live: &'a BTreeMap<String, TopicState>) -> Self {
        Self {
            live,
            touched: BTreeMap::new(),
        }
    }

    fn get(&self, name: &str) -> Option<&TopicState> {
        match self.touched.get(name) {
            Some(state) => state.as_ref(),
            None => self.live.get(name),
        }
    }

    fn exists(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn count(&self) -> usize {
        count_after_changes(
            self.live,
            self.touched
                .iter()
                .map(|(name, state)| (name, state.is_some())),
        )
    }

    /// The topic to change, copied out of the shared table the first time.
    fn get_mut(&mut self, name: &str) -> Option<&mut TopicState> {
        if !self.touched.contains_key(name) {
            let copy = self.live.get(name)?.clone();
            self.touched.insert(name.to_string(), Some(copy));
        }
        self.touched.get_mut(name).and_then(Option::as_mut)
    }

    fn insert(&mut self, name: String, state: TopicState) {
        self.touched.insert(name, Some(state));
    }

    fn remove(&mut self, name: &str) -> Option<TopicState> {
        let state = self.get(name)?.clone();
        self.touched.insert(name.to_string(), None);
        Some(state)
    }

    /// Names of the existing topics with a time or size retention, in name order.
    fn names_with_retention(&self) -> Vec<String> {
        let live = self
            .live
            .iter()
            .filter(|(name, _)| !self.touched.contains_key(*name));
        let touched = self
            .touched
            .iter()
            .filter_map(|(name, state)| state.as_ref().map(|state| (name, state)));
        let mut names: Vec<String> = live
            .chain(touched)
            .filter(|(_, state)| {
                state.settings.retention_ms > 0 || state.settings.retention_bytes > 0
            })
            .map(|(name, _)| name.clone())
            .collect();
        names.sort_unstable();
        names
    }
}

/// A commit of a group's offsets for partitions of one topic, as a command carries it.
struct OffsetCommit<'c> {
    group: &'c str,
    topic: &'c str,
    offsets: &'c [(u32, u64)],
    committed_at_ms: i64,
    groups_max: u32,
    allow_rewind: bool,
}

/// Applies an offset commit, all or nothing: every offset at most its partition's end, and
/// (unless `allow_rewind`) none below what the group has committed for that partition.
fn commit_offsets(
    commit: OffsetCommit<'_>,
    topics: &TopicChanges<'_>,
    groups: &mut GroupChanges<'_>,
    (batch, cf, group): (&mut WriteBatch, &rocksdb::ColumnFamily, GroupId),
) -> CommandResponse {
    let Some(state) = topics.get(commit.topic) else {
        return CommandResponse::Rejected(Rejection::UnknownTopic(commit.topic.to_string()));
    };
    for &(partition, offset) in commit.offsets {
        let Some(part) = state.partitions.get(partition as usize) else {
            return CommandResponse::Rejected(Rejection::UnknownPartition {
                topic: commit.topic.to_string(),
                partition,
                partitions: state.settings.partitions,
            });
        };
        if offset > part.end_offset {
            return CommandResponse::Rejected(Rejection::CommitBeyondEnd {
                topic: commit.topic.to_string(),
                partition,
                offset,
                end_offset: part.end_offset,
            });
        }
        if commit.allow_rewind {
            continue;
        }
        if let Some(committed) = groups.offset(commit.group, state.id, partition) {
            if offset < committed {
                return CommandResponse::Rejected(Rejection::CommitRewind {
                    group: commit.group.to_string(),
                    topic: commit.topic.to_string(),
                    partition,
                    committed,
                    requested: offset,
                });
            }
        }
    }
    if !groups.exists(commit.group) && groups.count() >= commit.groups_max as usize {
        return CommandResponse::Rejected(Rejection::TooManyGroups(commit.groups_max));
    }
    let entry = groups.touch(commit.group);
    for &(partition, offset) in commit.offsets {
        let value = GroupOffset {
            offset,
            committed_at_ms: commit.committed_at_ms,
        };
        batch.put_cf(
            cf,
            keys::sm_group_offset(group, commit.group, state.id, partition),
            encode(&value),
        );
        entry.insert((state.id, partition), value);
    }
    CommandResponse::OffsetsCommitted
}

/// The groups one apply call changes: copies of the touched groups' offsets, published to the
/// shared table only after the write batch is in RocksDB. A group whose copy ends up empty is
/// gone. Counting is exact (not an estimate), so limits apply identically on every node however
/// openraft splits entries into apply calls.
struct GroupChanges<'a> {
    live: &'a BTreeMap<String, GroupOffsets>,
    touched: BTreeMap<String, GroupOffsets>,
}

impl<'a> GroupChanges<'a> {
    fn new(live: &'a BTreeMap<String, GroupOffsets>) -> Self {
        Self {
            live,
            touched: BTreeMap::new(),
        }
    }

    fn exists(&self, name: &str) -> bool {
        match self.touched.get(name) {
            Some(offsets) => !offsets.is_empty(),
            None => self.live.contains_key(name),
        }
    }

    fn count(&self) -> usize {
        count_after_changes(
            self.live,
            self.touched
                .iter()
                .map(|(name, offsets)| (name, !offsets.is_empty())),
        )
    }

    /// The offset `name` has committed for a partition, as this apply call has left it.
    fn offset(&self, name: &str, topic_id: u64, partition: u32) -> Option<u64> {
        let offsets = self.touched.get(name).or_else(|| self.live.get(name))?;
        offsets.get(&(topic_id, partition)).map(|o| o.offset)
    }

    fn touch(&mut self, name: &str) -> &mut GroupOffsets {
        if !self.touched.contains_key(name) {
            let copy = self.live.get(name).cloned().unwrap_or_default();
            self.touched.insert(name.to_string(), copy);
        }
        self.touched.get_mut(name).expect("inserted above")
    }

    /// Every existing group, touched.
    fn touch_all(&mut self) -> impl Iterator<Item = (&String, &mut GroupOffsets)> {
        for (name, offsets) in self.live {
            if !self.touched.contains_key(name) {
                self.touched.insert(name.clone(), offsets.clone());
            }
        }
        self.touched.iter_mut()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{log_id, open_databases};
    use raftlog_core::TopicSettings;

    fn entry(index: u64, command: Command) -> Entry {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(command),
        }
    }

    /// The databases under `dir` and the metadata group's state machine on them.
    fn open_state_machine(dir: &std::path::Path) -> (crate::Databases, StateMachine) {
        let dbs = open_databases(dir);
        let sm = StateMachine::open(&dbs, raftlog_core::METADATA_GROUP, dir.join("snapshots"))
            .expect("open the state machine");
        (dbs, sm)
    }

    fn create_topic(
        name: &str,
        partitions: u32,
        max_record_bytes: u32,
        topics_max: u32,
    ) -> Command {
        Command::CreateTopic {
            name: name.into(),
            settings: TopicSettings {
                partitions,
                retention_ms: 0,
                retention_bytes: 0,
                max_record_bytes,
            },
            topics_max,
        }
    }

    fn record(value: impl Into<bytes::Bytes>) -> Record {
        Record {
            key: None,
            value: value.into(),
            headers: Vec::new(),
            timestamp_ms: 0,
        }
    }

    fn append_to(
        topic: &str,
        partition: u32,
        records: Vec<Record>,
        expected_end_offset: Option<u64>,
    ) -> Command {
        Command::Append {
            topic: topic.into(),
            partition,
            records,
            proposed_at_ms: 1,
            producer: None,
            expected_end_offset,
        }
    }

    fn append(partition: u32, value: &str, expected_end_offset: Option<u64>) -> Command {
        append_to(
            "t",
            partition,
            vec![record(value.to_string())],
            expected_end_offset,
        )
    }

    /// A group-commit entry's appends to one partition become one stored batch, and every
    /// request still gets its own offsets and reads back from any offset, the middle of that
    /// batch included; a rejected append in between takes no offset.
    #[test]
    fn appends_of_one_entry_share_a_stored_batch_and_keep_their_offsets() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (_dbs, mut sm) = open_state_machine(dir.path());
        let create = create_topic("t", 2, 1024, 10);
        let batch = Command::Batch(
            vec![
                append(0, "a", None),
                append(1, "x", None),
                append(0, "b", None),
                append(0, "rejected", Some(7)),
                append(0, "c", Some(2)),
            ]
            .into(),
        );
        let responses = sm
            .apply_entries([entry(1, create), entry(2, batch)])
            .expect("apply");
        let CommandResponse::Batch(answers) = &responses[1] else {
            panic!("a batch answers a batch: {responses:?}");
        };
        let offsets: Vec<_> = answers
            .iter()
            .map(|a| match a {
                CommandResponse::Appended { base_offset, .. } => Some(*base_offset),
                _ => None,
            })
            .collect();
        assert_eq!(offsets, [Some(0), Some(0), Some(1), None, Some(2)]);

        let view = sm.view();
        let values = |partition, from| -> Vec<(u64, String)> {
            let read = view.read("t", partition, from, 100, 1 << 20).expect("read");
            read.records
                .into_iter()
                .map(|(o, r)| (o, String::from_utf8(r.value.to_vec()).unwrap()))
                .collect()
        };
        let abc = |o: u64, v: &str| (o, v.to_string());
        assert_eq!(values(0, 0), [abc(0, "a"), abc(1, "b"), abc(2, "c")]);
        assert_eq!(values(0, 1), [abc(1, "b"), abc(2, "c")]);
        assert_eq!(values(1, 0), [abc(0, "x")]);

        // One row per partition: the three appends to partition 0 were stored together.
        let cf = view.cf();
        let rows = view
            .db
            .iterator_cf(cf, IteratorMode::Start)
            .filter_map(|item| keys::parse_batch(&item.expect("row").0))
            .count();
        assert_eq!(rows, 2);
    }

    /// An entry's appends to a partition are cut into stored batches of at most
    /// `STORED_BATCH_BYTES_TARGET` record bytes (a larger record alone), each with its own byte
    /// count, and every offset still reads back.
    #[test]
    fn stored_batches_are_cut_at_the_byte_target() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (_dbs, mut sm) = open_state_machine(dir.path());
        let create = create_topic("t", 1, 1 << 20, 10);
        let filled = |fill: u8, len: usize| record(vec![fill; len]);
        let append_records = |records: Vec<Record>| append_to("t", 0, records, None);
        // Records of a fifth of the target: five fit one batch (the second append joins the
        // first one's), a sixth starts the next; a record above the target stands alone.
        let (fifth, kib) = (STORED_BATCH_BYTES_TARGET as usize / 5, 1024);
        let large = STORED_BATCH_BYTES_TARGET as usize + kib;
        let batch = Command::Batch(
            vec![
                append_records((0..4).map(|i| filled(i, fifth)).collect()),
                append_records((4..6).map(|i| filled(i, fifth)).collect()),
                append_records(vec![filled(6, large)]),
                append_records(vec![filled(7, kib)]),
            ]
            .into(),
        );
        sm.apply_entries([entry(1, create), entry(2, batch)])
            .expect("apply");

        let view = sm.view();
        let cf = view.cf();
        let batches: Vec<(u64, usize, u64)> = view
            .db
            .iterator_cf(cf, IteratorMode::Start)
            .map(|item| item.expect("row"))
            .filter_map(|(key, value)| {
                let (_, _, base) = keys::parse_batch(&key)?;
                let header = stored_batch::header(&value).expect("header");
                let records = stored_batch::records_shared(bytes::Bytes::from(value.to_vec()))
                    .expect("records");
                Some((base, records.len(), header.bytes))
            })
            .collect();
        let (fifth, large, kib) = (fifth as u64, large as u64, kib as u64);
        assert_eq!(
            batches,
            [(0, 5, 5 * fifth), (5, 1, fifth), (6, 1, large), (7, 1, kib)]
        );
        for offset in 0..8u64 {
            let read = view.read("t", 0, offset, 1, 1 << 20).expect("read");
            assert_eq!(read.records.len(), 1, "offset {offset}");
            assert_eq!(read.records[0].0, offset);
            assert_eq!(read.records[0].1.value[0], offset as u8);
        }
    }

    /// Topics created, deleted and appended to within one apply call see each other (the topic
    /// limit counts exactly), reach the shared view only as the call's end result, and are what
    /// a state machine reopened on the same rows loads.
    #[test]
    fn topic_changes_of_one_apply_call_see_each_other_and_are_published_together() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (dbs, mut sm) = open_state_machine(dir.path());
        let create = |name: &str| create_topic(name, 1, 1024, 2);
        let append_v = |topic: &str| append_to(topic, 0, vec![record("v")], None);
        let responses = sm
            .apply_entries([
                entry(1, create("a")),
                entry(2, create("b")),
                entry(3, create("c")),
                entry(4, Command::DeleteTopic { name: "a".into() }),
                entry(5, create("c")),
                entry(6, append_v("c")),
                entry(7, append_v("a")),
            ])
            .expect("apply");
        assert!(matches!(
            responses[2],
            CommandResponse::Rejected(Rejection::TooManyTopics(2))
        ));
        assert!(matches!(responses[4], CommandResponse::TopicCreated { .. }));
        assert!(matches!(
            responses[5],
            CommandResponse::Appended { base_offset: 0, .. }
        ));
        assert!(matches!(
            &responses[6],
            CommandResponse::Rejected(Rejection::UnknownTopic(name)) if name == "a"
        ));
        // A later call starts from the published table.
        sm.apply_entries([entry(8, append_v("c")), entry(9, append_v("b"))])
            .expect("apply");
        let end_offsets = |topics: Vec<TopicState>| -> Vec<(String, u64)> {
            topics
                .into_iter()
                .map(|t| (t.name, t.partitions[0].end_offset))
                .collect()
        };
        let expected = vec![("b".to_string(), 1), ("c".to_string(), 2)];
        assert_eq!(end_offsets(sm.view().topics()), expected);
        let reopened = StateMachine::open(
            &dbs,
            raftlog_core::METADATA_GROUP,
            dir.path().join("snapshots"),
        )
        .expect("reopen the state machine");
        assert_eq!(end_offsets(reopened.view().topics()), expected);
    }

    /// What a crash or a failed build leaves in the snapshot dir is gone once the state machine
    /// opens: a partial build on a full disk would otherwise keep its space for good.
    #[test]
    fn opening_removes_unfinished_snapshot_files() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let dbs = open_databases(dir.path());
        let snapshots = dir.path().join("snapshots");
        std::fs::create_dir_all(&snapshots).unwrap();
        for name in [
            "building-1-1-5-0000abcd.snap",
            "receiving-0000abcd.snap",
            "current.meta.tmp",
            "snap-orphan.snap",
        ] {
            std::fs::write(snapshots.join(name), b"partial").unwrap();
        }
        StateMachine::open(&dbs, raftlog_core::METADATA_GROUP, snapshots.clone())
            .expect("open the state machine");
        let left: Vec<_> = std::fs::read_dir(&snapshots)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    /// The state machine is written without a WAL, so a purge must never drop a log entry whose
    /// effects are only in its memtable (after a crash the log is what rebuilds them). Up to a
    /// snapshot the checkpoint has already flushed them and the purge writes nothing more to the
    /// state database; past it, the purge flushes first.
    #[tokio::test]
    async fn a_purge_flushes_the_state_machine_only_past_what_a_snapshot_flushed() {
        use openraft::storage::{RaftLogStorage, RaftSnapshotBuilder};

        let dir = tempfile::tempdir().expect("temporary directory");
        let (dbs, mut sm) = open_state_machine(dir.path());
        let group = raftlog_core::METADATA_GROUP;
        let mut log = crate::LogStore::new(&dbs, group, sm.flushed(), 0);
        let create = create_topic("t", 1, 1024, 10);
        sm.apply_entries([entry(1, create), entry(2, append(0, "a", None))])
            .expect("apply");
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build a snapshot");
        sm.apply_entries([entry(3, append(0, "b", None))])
            .expect("apply");
        let view = sm.view();
        let in_memtable = || {
            view.db
                .property_int_value_cf(view.cf(), "rocksdb.num-entries-active-mem-table")
                .expect("memtable property")
                .expect("memtable property")
        };
        assert!(in_memtable() > 0, "entry 3 is applied, not flushed");

        log.purge(log_id(2))
            .await
            .expect("purge up to the snapshot");
        assert!(in_memtable() > 0, "covered by the snapshot: no flush");

        log.purge(log_id(3)).await.expect("purge past the snapshot");
        assert_eq!(in_memtable(), 0, "entry 3 flushed before its purge");
    }
}
