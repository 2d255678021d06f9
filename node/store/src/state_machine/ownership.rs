//! Creation caps: who created each topic, consumer group and queue, and `Command::OnBehalfOf`,
//! which refuses a creation that would take its principal past one of its caps
//! (`raftlog_core::auth::CreationCaps`, set with `Command::SetLimits`).
//!
//! An owner row (`keys::sm_owner`) names the principal that created a resource. A principal
//! owns the resources whose row names it and that exist: a resource deleted (or a group whose
//! offsets and members are gone) stops counting at once, and its row is dropped by the next
//! `Command::Maintenance`. A resource created again is owned by whoever created it last;
//! resources created while auth was off (no principal) belong to no one. The count is taken at
//! apply, against the state as it is, so creations racing each other cannot pass a cap together.

use std::collections::BTreeMap;

use rocksdb::WriteBatch;

use super::appends::EntryRows;
use super::changes::{GroupChanges, TopicChanges};
use super::{decode_err, StateMachine};
use crate::keys::{self, sm_tag};
use raftlog_core::auth::Owned;
use raftlog_core::types::StorageError;
use raftlog_core::{Command, CommandResponse, Rejection};

/// What an owner row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum OwnedKind {
    Topic,
    Group,
    Queue,
}

impl OwnedKind {
    fn key_byte(self) -> u8 {
        match self {
            OwnedKind::Topic => b't',
            OwnedKind::Group => b'g',
            OwnedKind::Queue => b'q',
        }
    }

    fn from_key_byte(byte: u8) -> Option<Self> {
        match byte {
            b't' => Some(OwnedKind::Topic),
            b'g' => Some(OwnedKind::Group),
            b'q' => Some(OwnedKind::Queue),
            _ => None,
        }
    }
}

/// The owner rows in memory: (kind, name) → principal.
pub(super) type Owners = BTreeMap<(OwnedKind, String), String>;

/// What one command would create if it applied now.
#[derive(Default)]
struct Creations {
    /// Topics with their partition counts.
    topics: Vec<(String, u32)>,
    groups: Vec<(OwnedKind, String)>,
}

impl Creations {
    fn size(&self) -> Owned {
        Owned {
            topics: self.topics.len() as u32,
            partitions: self.topics.iter().map(|(_, p)| *p).sum(),
            groups: self.groups.len() as u32,
        }
    }

    fn is_empty(&self) -> bool {
        self.topics.is_empty() && self.groups.is_empty()
    }
}

impl StateMachine {
    /// Applies `Command::OnBehalfOf`: `command`, unless what it would create passes one of
    /// `principal`'s caps; then records what it created as `principal`'s.
    pub(super) fn apply_on_behalf_of(
        &mut self,
        principal: &str,
        command: &Command,
        topics: &mut TopicChanges<'_>,
        groups: &mut GroupChanges<'_>,
        batch: &mut WriteBatch,
        rows: &mut EntryRows,
    ) -> CommandResponse {
        assert!(
            !matches!(
                command,
                Command::OnBehalfOf { .. } | Command::Batch(_) | Command::Maintenance { .. }
            ),
            "OnBehalfOf wraps one plain command"
        );
        let creations = self.creations(command, topics, groups);
        if creations.is_empty() {
            return self.apply_command(command, topics, groups, batch, rows);
        }
        let caps = self.security_changes.as_ref().map_or_else(
            || self.view.security().caps.get(principal).copied(),
            |s| s.caps.get(principal).copied(),
        );
        if let Some(caps) = caps {
            let owned = self.owned_by(principal, topics, groups);
            if let Some((what, cap)) = caps.passed_by(owned, creations.size()) {
                return CommandResponse::Rejected(Rejection::CreationCapReached {
                    principal: principal.to_string(),
                    what: what.to_string(),
                    cap,
                });
            }
        }
        let response = self.apply_command(command, topics, groups, batch, rows);
        if matches!(response, CommandResponse::Rejected(_)) {
            return response;
        }
        let created = creations
            .topics
            .into_iter()
            .map(|(name, _)| (OwnedKind::Topic, name))
            .chain(creations.groups);
        for (kind, name) in created {
            if self.resource_exists(kind, &name, topics, groups) {
                batch.put_cf(
                    self.view.cf(),
                    keys::sm_owner(self.view.group, kind.key_byte(), &name),
                    principal.as_bytes(),
                );
                self.owners.insert((kind, name), principal.to_string());
            }
        }
        response
    }

    /// What `command` would create if it applied now.
    fn creations(
        &self,
        command: &Command,
        topics: &TopicChanges<'_>,
        groups: &GroupChanges<'_>,
    ) -> Creations {
        let mut creations = Creations::default();
        match command {
            Command::CreateTopic { name, settings, .. } if !topics.exists(name) => {
                creations.topics.push((name.clone(), settings.partitions));
            }
            Command::CreateQueue {
                queue, definition, ..
            } if !self.queues.contains_key(queue) => {
                creations.groups.push((OwnedKind::Queue, queue.clone()));
                let origin = topics.get(&definition.topic).map(|t| t.settings.partitions);
                if let (Some(dead_letters), Some(partitions)) =
                    (&definition.dead_letter_topic, origin)
                {
                    if !topics.exists(dead_letters) {
                        creations.topics.push((dead_letters.clone(), partitions));
                    }
                }
            }
            Command::CommitGroupOffsets { group, .. }
            | Command::CommitFencedOffsets { group, .. }
            | Command::GroupHeartbeat { group, .. }
                if !self.group_exists(group, groups) =>
            {
                creations.groups.push((OwnedKind::Group, group.clone()));
            }
            _ => {}
        }
        creations
    }

    /// What `principal` owns now.
    fn owned_by(
        &self,
        principal: &str,
        topics: &TopicChanges<'_>,
        groups: &GroupChanges<'_>,
    ) -> Owned {
        let mut owned = Owned::default();
        for ((kind, name), owner) in &self.owners {
            if owner != principal {
                continue;
            }
            match kind {
                OwnedKind::Topic => {
                    if let Some(topic) = topics.get(name) {
                        owned.topics += 1;
                        owned.partitions += topic.settings.partitions;
                    }
                }
                OwnedKind::Group | OwnedKind::Queue => {
                    if self.resource_exists(*kind, name, topics, groups) {
                        owned.groups += 1;
                    }
                }
            }
        }
        owned
    }

    fn resource_exists(
        &self,
        kind: OwnedKind,
        name: &str,
        topics: &TopicChanges<'_>,
        groups: &GroupChanges<'_>,
    ) -> bool {
        match kind {
            OwnedKind::Topic => topics.exists(name),
            OwnedKind::Group => self.group_exists(name, groups),
            OwnedKind::Queue => self.queues.contains_key(name),
        }
    }

    /// A consumer group exists while it has committed offsets or coordinated members.
    fn group_exists(&self, name: &str, groups: &GroupChanges<'_>) -> bool {
        groups.exists(name) || self.members_of(name) > 0
    }

    /// Drops the owner rows of resources that no longer exist (from `Command::Maintenance`).
    pub(super) fn forget_gone_owners(
        &mut self,
        topics: &TopicChanges<'_>,
        groups: &GroupChanges<'_>,
        batch: &mut WriteBatch,
    ) {
        let gone: Vec<(OwnedKind, String)> = self
            .owners
            .keys()
            .filter(|(kind, name)| !self.resource_exists(*kind, name, topics, groups))
            .cloned()
            .collect();
        for (kind, name) in gone {
            batch.delete_cf(
                self.view.cf(),
                keys::sm_owner(self.view.group, kind.key_byte(), &name),
            );
            self.owners.remove(&(kind, name));
        }
    }

    /// Reads the owner rows (at open and after a snapshot is installed).
    pub(super) fn load_owners(&self) -> Result<Owners, StorageError> {
        let prefix = keys::sm_singleton(self.view.group, sm_tag::OWNER);
        let mut owners = Owners::new();
        for item in self.rows_under(&prefix) {
            let (key, value) = item?;
            let rest = &key[prefix.len()..];
            let kind = rest
                .first()
                .copied()
                .and_then(OwnedKind::from_key_byte)
                .ok_or_else(|| decode_err("malformed owner key in state machine"))?;
            let name = String::from_utf8(rest[1..].to_vec()).map_err(decode_err)?;
            let principal = String::from_utf8(value.to_vec()).map_err(decode_err)?;
            owners.insert((kind, name), principal);
        }
        Ok(owners)
    }
}
