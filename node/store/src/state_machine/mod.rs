//! The replicated state machine on RocksDB: topics, their partitions' offsets, the stored record
//! batches and the consumer groups' committed offsets of one Raft group, plus the snapshots that
//! capture them.
//!
//! Invariants:
//! - Applying is deterministic: no clock, no randomness, no I/O but this node's RocksDB. Every
//!   node that applies the same entries holds byte-identical rows (compare [`StateView::digest`]).
//! - One apply call is one RocksDB write batch that also records the last applied log id, written
//!   without WAL (the Raft log is the WAL; see the crate doc). After a crash the
//!   state machine is at some earlier applied id and openraft re-applies from there.
//! - The in-memory topic and group tables are updated only after the write batch is in RocksDB,
//!   so a reader that sees an end offset finds every batch below it.
//!
//! Where things are:
//! - this file: the [`StateMachine`], loading it from RocksDB, and the apply loop with its
//!   dispatch ([`StateMachine::apply_command`]);
//! - `view.rs`: the [`StateView`] that readers share (the in-memory tables); `read.rs`: what is
//!   read from RocksDB through it (records, offsets by time, the digest);
//! - `changes.rs`: the working copies of the tables that one apply call changes;
//! - one file per command family, each an `impl StateMachine` block with one entry point that
//!   the dispatch calls: `topics.rs`, `appends.rs` (appends and idempotent producers),
//!   `offsets.rs` (consumer groups' committed offsets), `membership.rs` (coordinated groups'
//!   members), `queues.rs` (queue groups: deliveries, settlements, dead letters),
//!   `maintenance.rs` (producer expiry and retention), `security.rs` (tokens, ACL entries and
//!   quotas), `ownership.rs` (who created what, and the creation caps). A new family is a new file and one arm in the dispatch;
//! - `raft_impl.rs`: openraft's traits (apply, snapshots).

mod appends;
mod changes;
mod maintenance;
mod membership;
mod offsets;
mod ownership;
mod queues;
mod raft_impl;
mod read;
mod security;
#[cfg(test)]
mod tests;
mod topics;
mod view;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use crate::codec::{decode, encode, WRITE_BATCH_ROW_OVERHEAD};
use crate::keys::{self, sm_tag};
use crate::snapshot_store::SnapshotStore;
use crate::StateFlushed;
use appends::EntryRows;
use changes::{GroupChanges, TopicChanges};
use raftlog_core::coordination::Coordination;
use raftlog_core::types::{Entry, EntryPayload, LogId, StorageError, StoredMembership};
use raftlog_core::{
    Command, CommandResponse, GroupId, GroupOffset, GroupOffsets, ProducerState, TopicState,
};

pub use queues::dead_letter_header;
pub use read::{ReadError, ReadResult};
pub use view::StateView;

/// The openraft state machine of one Raft group.
pub struct StateMachine {
    view: Arc<StateView>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    next_topic_id: u64,
    next_producer_id: u64,
    /// Only apply reads and writes this (no API read needs it), so it is not in the view.
    producers: BTreeMap<u64, ProducerState>,
    /// Coordinated groups this apply call changed (`None`: no members left), published to the
    /// view with the call's other changes once its write batch is in RocksDB.
    coordination_changes: BTreeMap<String, Option<Coordination>>,
    /// Queue groups with their delivery state: apply reads and writes them; the view gets a copy
    /// of each queue an apply call changed (`queues.rs`).
    queues: BTreeMap<String, raftlog_core::queue::Queue>,
    /// Queues this apply call changed (or deleted), published after its write batch.
    queue_changes: std::collections::BTreeSet<String>,
    /// The security tables as this apply call changed them (a copy of the view's, taken at the
    /// call's first security command), published with the call's other changes.
    security_changes: Option<raftlog_core::auth::Security>,
    next_acl_id: u64,
    /// Who created each topic, group and queue (`ownership.rs`): only apply reads it.
    owners: ownership::Owners,
    snapshots: SnapshotStore,
}

/// A row of the state database: its key and its value.
type Row = (Box<[u8]>, Box<[u8]>);

fn sm_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::other(format!("state machine: {e}"))
}

fn decode_err(e: impl std::fmt::Display) -> StorageError {
    sm_err(e)
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
        let view = Arc::new(StateView::new(db, group));
        let mut sm = Self {
            view,
            last_applied: None,
            membership: StoredMembership::default(),
            next_topic_id: 1,
            next_producer_id: 1,
            producers: BTreeMap::new(),
            coordination_changes: BTreeMap::new(),
            queues: BTreeMap::new(),
            queue_changes: Default::default(),
            security_changes: None,
            next_acl_id: 1,
            owners: Default::default(),
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
    /// [`LogStore::new`]: crate::log_store::LogStore::new
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
        let topics = self.load_topics()?;
        self.next_producer_id = self
            .get(&keys::sm_singleton(group, sm_tag::NEXT_PRODUCER_ID))?
            .unwrap_or(1);
        self.producers = self.load_producers()?;
        let groups = self.load_groups()?;
        let coordinations = self.load_coordinations()?;
        self.queues = self.load_queues()?;
        self.queue_changes.clear();
        *self.view.queues.write().expect("queue table lock") = self
            .queues
            .iter()
            .map(|(name, queue)| (name.clone(), Arc::new(queue.clone())))
            .collect();
        self.next_acl_id = self
            .get(&keys::sm_singleton(group, sm_tag::NEXT_ACL_ID))?
            .unwrap_or(1);
        let security = self.load_security()?;
        self.security_changes = None;
        self.owners = self.load_owners()?;
        *self.view.security.write().expect("security table lock") = Arc::new(security);
        *self.view.topics.write().expect("topic table lock") = topics;
        *self.view.groups.write().expect("group table lock") = groups;
        *self
            .view
            .coordinations
            .write()
            .expect("coordination table lock") = coordinations;
        self.view.coordination_changed.send_modify(|n| *n += 1);
        self.view.applied.send_replace(self.last_applied);
        // What was just read is on disk: at open the memtable is empty (no WAL to replay), and
        // an installed snapshot is flushed before it is loaded.
        self.view
            .flushed
            .advance(self.last_applied.map(|id| id.index));
        Ok(())
    }

    /// Every row whose key starts with `prefix`, in key order.
    fn rows_under<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = Result<Row, StorageError>> + 'a {
        self.view
            .db
            .iterator_cf(
                self.view.cf(),
                IteratorMode::From(prefix, Direction::Forward),
            )
            .map(|item| item.map_err(sm_err))
            .take_while(move |item| {
                item.as_ref()
                    .map_or(true, |(key, _)| key.starts_with(prefix))
            })
    }

    fn load_topics(&self) -> Result<BTreeMap<String, TopicState>, StorageError> {
        let prefix = keys::sm_topic_prefix(self.view.group);
        let mut topics = BTreeMap::new();
        for item in self.rows_under(&prefix) {
            let (_, value) = item?;
            let topic: TopicState = decode(&value).map_err(sm_err)?;
            topics.insert(topic.name.clone(), topic);
        }
        Ok(topics)
    }

    fn load_producers(&self) -> Result<BTreeMap<u64, ProducerState>, StorageError> {
        let prefix = keys::sm_singleton(self.view.group, sm_tag::PRODUCER);
        let mut producers = BTreeMap::new();
        for item in self.rows_under(&prefix) {
            let (key, value) = item?;
            let id = keys::parse_producer(&key).ok_or_else(|| {
                sm_err(std::io::Error::other(
                    "malformed producer key in state machine",
                ))
            })?;
            producers.insert(id, decode(&value).map_err(sm_err)?);
        }
        Ok(producers)
    }

    fn load_coordinations(&self) -> Result<BTreeMap<String, Coordination>, StorageError> {
        let prefix = keys::sm_group_members_prefix(self.view.group);
        let mut coordinations = BTreeMap::new();
        for item in self.rows_under(&prefix) {
            let (key, value) = item?;
            let name = String::from_utf8(key[prefix.len()..].to_vec()).map_err(sm_err)?;
            coordinations.insert(name, decode(&value).map_err(sm_err)?);
        }
        Ok(coordinations)
    }

    fn load_groups(&self) -> Result<BTreeMap<String, GroupOffsets>, StorageError> {
        let prefix = keys::sm_group_offset_prefix(self.view.group);
        let mut groups: BTreeMap<String, GroupOffsets> = BTreeMap::new();
        for item in self.rows_under(&prefix) {
            let (key, value) = item?;
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
        Ok(groups)
    }

    /// Applies `entries` in one RocksDB write batch and returns one response per entry.
    pub fn apply_entries(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<Vec<CommandResponse>, StorageError> {
        let view = self.view.clone();
        let live_topics = view.topics.read().expect("topic table lock");
        let mut topics = TopicChanges::new(&live_topics);
        let live_groups = view.groups.read().expect("group table lock");
        let mut groups = GroupChanges::new(&live_groups);
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut batch = WriteBatch::with_capacity_bytes(write_batch_capacity(&entries));
        let mut responses = Vec::new();
        for entry in entries {
            responses.push(self.apply_entry(entry, &mut topics, &mut groups, &mut batch)?);
        }
        self.write_applied(batch, self.last_applied)?;
        let (changed_topics, changed_groups) = (topics.touched, groups.touched);
        drop((live_topics, live_groups));
        self.publish(changed_topics, changed_groups);
        self.publish_coordinations();
        self.publish_queues();
        self.publish_security();
        self.view.applied.send_replace(self.last_applied);
        Ok(responses)
    }

    /// Applies one entry: its rows go into `batch`, its changes to the tables into `topics` and
    /// `groups`.
    fn apply_entry(
        &mut self,
        entry: Entry,
        topics: &mut TopicChanges<'_>,
        groups: &mut GroupChanges<'_>,
        batch: &mut WriteBatch,
    ) -> Result<CommandResponse, StorageError> {
        let previous = self.last_applied;
        self.last_applied = Some(entry.log_id);
        Ok(match entry.payload {
            EntryPayload::Blank => CommandResponse::None,
            EntryPayload::Normal(Command::Maintenance {
                now_ms,
                producer_idle_ms,
            }) => {
                // Maintenance reads RocksDB: first write what the entries before it changed,
                // as the state after `previous`, so that every node sees the same rows
                // however openraft splits entries into apply calls.
                if !batch.is_empty() {
                    self.write_applied(std::mem::take(batch), previous)?;
                }
                self.maintain(now_ms, producer_idle_ms, topics, groups, batch)?
            }
            EntryPayload::Normal(command) => {
                // A queue command may dead-letter a record appended earlier in this apply call:
                // it reads it from RocksDB, so first write what the entries before it stored
                // (as Maintenance does; see queues.rs).
                let reads_records = matches!(
                    command,
                    Command::QueueReceive { .. }
                        | Command::QueueSettle { .. }
                        | Command::QueueRedrive { .. }
                );
                if reads_records && !batch.is_empty() {
                    self.write_applied(std::mem::take(batch), previous)?;
                }
                let mut rows = EntryRows::default();
                let response = self.apply_command(&command, topics, groups, batch, &mut rows);
                self.write_entry_rows(rows, topics, batch);
                response
            }
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(entry.log_id), membership);
                batch.put_cf(
                    self.view.cf(),
                    keys::sm_singleton(self.view.group, sm_tag::MEMBERSHIP),
                    encode(&self.membership),
                );
                CommandResponse::None
            }
        })
    }

    /// Applies one command to the working copies of the topic and group tables, adding its rows
    /// to `batch`, except the rows of appends, which collect in `rows` until the entry is done.
    /// Each command family applies its own commands (see the module doc).
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
        match command {
            Command::CreateTopic { .. }
            | Command::AlterTopic { .. }
            | Command::DeleteTopic { .. } => {
                self.apply_topic_command(command, topics, groups, batch)
            }
            Command::Append { .. } | Command::InitProducer { .. } => {
                self.apply_append_command(command, topics, batch, rows)
            }
            Command::CommitOffsets { .. }
            | Command::CommitGroupOffsets { .. }
            | Command::CommitFencedOffsets { .. }
            | Command::DeleteGroup { .. } => {
                self.apply_offset_command(command, topics, groups, batch)
            }
            Command::GroupHeartbeat { .. }
            | Command::ExpireGroupMember { .. }
            | Command::RemoveGroupMember { .. } => {
                self.apply_membership_command(command, topics, groups, batch)
            }
            Command::CreateQueue { .. }
            | Command::DeleteQueue { .. }
            | Command::QueueReceive { .. }
            | Command::QueueSettle { .. }
            | Command::QueueRedrive { .. } => {
                self.apply_queue_command(command, topics, batch, rows)
            }
            Command::CreateToken { .. }
            | Command::RevokeToken { .. }
            | Command::AddAcl { .. }
            | Command::RemoveAcl { .. }
            | Command::SetQuota { .. }
            | Command::SetLimits { .. } => self.apply_security_command(command, batch),
            Command::OnBehalfOf { principal, command } => {
                self.apply_on_behalf_of(principal, command, topics, groups, batch, rows)
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

    /// Publishes the coordinated groups this apply call changed (see [`Self::publish`]).
    fn publish_coordinations(&mut self) {
        let changes = std::mem::take(&mut self.coordination_changes);
        if changes.is_empty() {
            return;
        }
        let mut live = self
            .view
            .coordinations
            .write()
            .expect("coordination table lock");
        for (name, coordination) in changes {
            match coordination {
                Some(c) => live.insert(name, c),
                None => live.remove(&name),
            };
        }
        drop(live);
        self.view.coordination_changed.send_modify(|n| *n += 1);
    }

    /// Publishes what an apply call changed to the view's tables, once its write batch is in
    /// RocksDB (`None` for a deleted topic; a group left without offsets is gone).
    fn publish(
        &self,
        topics: BTreeMap<String, Option<TopicState>>,
        groups: BTreeMap<String, GroupOffsets>,
    ) {
        let mut live_groups = self.view.groups.write().expect("group table lock");
        for (name, offsets) in groups {
            if offsets.is_empty() {
                live_groups.remove(&name);
            } else {
                live_groups.insert(name, offsets);
            }
        }
        drop(live_groups);
        let mut live_topics = self.view.topics.write().expect("topic table lock");
        for (name, state) in topics {
            match state {
                Some(state) => live_topics.insert(name, state),
                None => live_topics.remove(&name),
            };
        }
    }
}

/// What to size an apply call's write batch for, up front: grown as it fills, the batch copied
/// everything in it at each doubling.
fn write_batch_capacity(entries: &[Entry]) -> usize {
    entries
        .iter()
        .map(|entry| match &entry.payload {
            EntryPayload::Normal(command) => command.stored_bytes_estimate(),
            _ => 0,
        })
        .sum::<usize>()
        + WRITE_BATCH_ROW_OVERHEAD
}
