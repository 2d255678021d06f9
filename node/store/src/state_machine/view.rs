//! The applied state as readers see it: [`StateView`], shared between the state machine (its only
//! writer) and the API. It owns the in-memory topic, group and security tables and the last
//! applied id; what is read from RocksDB through it (records, offsets by time, the digest) is in
//! `read.rs`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use rocksdb::DB;
use tokio::sync::watch;

use crate::db::CF_STATE_MACHINE;
use crate::StateFlushed;
use raftlog_core::auth::Security;
use raftlog_core::coordination::{Coordination, Topics};
use raftlog_core::limits::READS_PARALLEL;
use raftlog_core::queue::Queue;
use raftlog_core::types::LogId;
use raftlog_core::{GroupId, GroupOffsets, TopicSettings, TopicState};

/// Read access to the applied state, shared between the state machine (which writes it) and the
/// API (which serves reads from it).
pub struct StateView {
    pub(super) db: Arc<DB>,
    pub(super) group: GroupId,
    pub(super) topics: RwLock<BTreeMap<String, TopicState>>,
    pub(super) groups: RwLock<BTreeMap<String, GroupOffsets>>,
    /// Coordinated groups' membership, by group name (groups with members only).
    pub(super) coordinations: RwLock<BTreeMap<String, Coordination>>,
    /// Queue groups as the last apply call that changed them left them.
    pub(super) queues: RwLock<BTreeMap<String, Arc<Queue>>>,
    /// Tokens and ACL entries, swapped whole when an apply call changed them, so a request's
    /// check holds one `Arc` instead of a lock.
    pub(super) security: RwLock<Arc<Security>>,
    pub(super) applied: watch::Sender<Option<LogId>>,
    /// Counts the apply calls that changed some coordinated group's membership (held member
    /// heartbeats wait on it).
    pub(super) coordination_changed: watch::Sender<u64>,
    /// How far the applied state is on disk; the group's log reads it before a purge.
    pub(super) flushed: StateFlushed,
    /// Reads running on the blocking pool ([`Self::read_blocking`]), at most [`READS_PARALLEL`].
    pub(super) read_slots: Arc<tokio::sync::Semaphore>,
}

impl StateView {
    /// An empty view of `group`'s state in `db`, for the state machine to load.
    pub(super) fn new(db: Arc<DB>, group: GroupId) -> Self {
        let (applied_tx, _) = watch::channel(None);
        Self {
            db,
            group,
            topics: RwLock::new(BTreeMap::new()),
            groups: RwLock::new(BTreeMap::new()),
            coordinations: RwLock::new(BTreeMap::new()),
            queues: RwLock::new(BTreeMap::new()),
            security: RwLock::new(Arc::default()),
            applied: applied_tx,
            coordination_changed: watch::channel(0).0,
            flushed: StateFlushed::default(),
            read_slots: Arc::new(tokio::sync::Semaphore::new(READS_PARALLEL)),
        }
    }

    pub(super) fn cf(&self) -> &rocksdb::ColumnFamily {
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

    /// Moves whenever some coordinated group's membership changed; subscribe to wait for it.
    pub fn coordination_changes(&self) -> watch::Receiver<u64> {
        self.coordination_changed.subscribe()
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

    /// Whether a consumer group exists: it has committed offsets or coordinated members.
    pub fn group_exists(&self, name: &str) -> bool {
        self.groups
            .read()
            .expect("group table lock")
            .contains_key(name)
            || self
                .coordinations
                .read()
                .expect("coordination table lock")
                .contains_key(name)
    }

    pub fn group_offsets(&self, name: &str) -> Option<GroupOffsets> {
        self.groups
            .read()
            .expect("group table lock")
            .get(name)
            .cloned()
    }

    /// A coordinated group's membership, if it has members.
    pub fn coordination(&self, name: &str) -> Option<Coordination> {
        self.coordinations
            .read()
            .expect("coordination table lock")
            .get(name)
            .cloned()
    }

    /// Every coordinated group's membership, by group name.
    pub fn coordinations(&self) -> BTreeMap<String, Coordination> {
        self.coordinations
            .read()
            .expect("coordination table lock")
            .clone()
    }

    /// The tokens and ACL entries as of the last apply call.
    pub fn security(&self) -> Arc<Security> {
        self.security.read().expect("security table lock").clone()
    }

    /// Every topic as the coordination rules see it: name → (topic id, partitions).
    pub fn topic_table(&self) -> Topics {
        self.topics
            .read()
            .expect("topic table lock")
            .values()
            .map(|t| (t.name.clone(), (t.id, t.settings.partitions)))
            .collect()
    }

    /// A queue group as last applied.
    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues
            .read()
            .expect("queue table lock")
            .get(name)
            .cloned()
    }

    /// Every queue group, by name.
    pub fn queues(&self) -> BTreeMap<String, Arc<Queue>> {
        self.queues.read().expect("queue table lock").clone()
    }
}
