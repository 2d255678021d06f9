//! Applying the coordinated consumer groups' membership commands: `Command::GroupHeartbeat`,
//! `ExpireGroupMember` and `RemoveGroupMember`, and the membership check of
//! `Command::CommitFencedOffsets`. The rules are `raftlog_core::coordination`'s (a pure function
//! of the group's state); this file loads a group's coordination row, applies the rule and writes
//! the row back. A group's row exists while it has members.

use std::collections::BTreeSet;

use rocksdb::WriteBatch;

use super::changes::{GroupChanges, TopicChanges};
use super::StateMachine;
use crate::codec::encode;
use crate::keys;
use raftlog_core::coordination::{Coordination, TopicPartition, Topics};
use raftlog_core::{Command, CommandResponse, Rejection};

impl StateMachine {
    /// Applies `Command::GroupHeartbeat`, `ExpireGroupMember` or `RemoveGroupMember`.
    pub(super) fn apply_membership_command(
        &mut self,
        command: &Command,
        topics: &TopicChanges<'_>,
        groups: &GroupChanges<'_>,
        batch: &mut WriteBatch,
    ) -> CommandResponse {
        match command {
            Command::GroupHeartbeat {
                group,
                heartbeat,
                stamp,
                groups_max,
            } => {
                let mut coordination = self.coordination(group);
                let is_new = coordination.members.is_empty() && !groups.exists(group);
                if is_new && self.group_count(groups) >= *groups_max as usize {
                    return CommandResponse::Rejected(Rejection::TooManyGroups(*groups_max));
                }
                let mut subscribed: BTreeSet<&String> = coordination
                    .members
                    .values()
                    .flat_map(|m| m.subscription.iter())
                    .collect();
                subscribed.extend(heartbeat.subscription.iter().flatten());
                let table = topic_table(topics, subscribed);
                match coordination.heartbeat(heartbeat, stamp, &table) {
                    Ok(answer) => {
                        self.put_coordination(group, coordination, batch);
                        CommandResponse::Member(Box::new(answer))
                    }
                    Err(e) => {
                        CommandResponse::Rejected(Rejection::from_group_error(e, group, &table))
                    }
                }
            }
            Command::ExpireGroupMember {
                group,
                member_id,
                member_epoch,
            } => {
                let mut coordination = self.coordination(group);
                let removed = coordination.expire(member_id, *member_epoch);
                if removed {
                    self.put_coordination(group, coordination, batch);
                }
                CommandResponse::MemberRemoved { removed }
            }
            Command::RemoveGroupMember { group, member_id } => {
                let mut coordination = self.coordination(group);
                let removed = coordination.remove(member_id);
                if removed {
                    self.put_coordination(group, coordination, batch);
                }
                CommandResponse::MemberRemoved { removed }
            }
            other => unreachable!("not a membership command: {other}"),
        }
    }

    /// Whether a commit of `partitions` of `topic_id` by `member` (or by no member) is allowed
    /// in `group` as this apply call sees it.
    pub(super) fn check_fenced_commit(
        &self,
        group: &str,
        member: Option<&(String, i64)>,
        topic: &str,
        topic_id: u64,
        partitions: impl IntoIterator<Item = u32>,
    ) -> Result<(), Rejection> {
        let coordination = self.coordination(group);
        let partitions: Vec<TopicPartition> =
            partitions.into_iter().map(|p| (topic_id, p)).collect();
        let member = member.map(|(id, epoch)| (id.as_str(), *epoch));
        coordination.check_commit(member, partitions).map_err(|e| {
            let table: Topics = [(topic.to_string(), (topic_id, 0))].into_iter().collect();
            Rejection::from_group_error(e, group, &table)
        })
    }

    /// How many coordinated members `group` has, as this apply call has left it (a group with
    /// members cannot be deleted, and exists without offsets), without copying the membership
    /// as [`Self::coordination`] would.
    pub(super) fn members_of(&self, group: &str) -> usize {
        match self.coordination_changes.get(group) {
            Some(changed) => changed.as_ref().map_or(0, |c| c.members.len()),
            None => self
                .view
                .coordinations
                .read()
                .expect("coordination table lock")
                .get(group)
                .map_or(0, |c| c.members.len()),
        }
    }

    /// The group's coordination as this apply call sees it (its own earlier changes included).
    fn coordination(&self, group: &str) -> Coordination {
        match self.coordination_changes.get(group) {
            Some(changed) => changed.clone().unwrap_or_default(),
            None => self
                .view
                .coordinations
                .read()
                .expect("coordination table lock")
                .get(group)
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// Writes the group's row (or deletes it once the group has no members) and keeps the
    /// change to publish after the write batch.
    fn put_coordination(
        &mut self,
        group: &str,
        coordination: Coordination,
        batch: &mut WriteBatch,
    ) {
        let key = keys::sm_group_members(self.view.group, group);
        if coordination.members.is_empty() {
            batch.delete_cf(self.view.cf(), key);
            self.coordination_changes.insert(group.to_string(), None);
        } else {
            batch.put_cf(self.view.cf(), key, encode(&coordination));
            self.coordination_changes
                .insert(group.to_string(), Some(coordination));
        }
    }

    /// Groups in the cluster after this apply call's changes: those with offsets and those with
    /// members only.
    fn group_count(&self, groups: &GroupChanges<'_>) -> usize {
        let live = self
            .view
            .coordinations
            .read()
            .expect("coordination table lock");
        let mut members_only: BTreeSet<&String> = live
            .keys()
            .filter(|name| !self.coordination_changes.contains_key(*name))
            .collect();
        for (name, changed) in &self.coordination_changes {
            if changed.is_some() {
                members_only.insert(name);
            }
        }
        let extra = members_only
            .into_iter()
            .filter(|name| !groups.exists(name))
            .count();
        groups.count() + extra
    }
}

/// The subscribed topics as the rules need them: name → (id, partitions); topics that do not
/// exist are left out.
fn topic_table<'a>(
    topics: &TopicChanges<'_>,
    names: impl IntoIterator<Item = &'a String>,
) -> Topics {
    names
        .into_iter()
        .filter_map(|name| {
            topics
                .get(name)
                .map(|t| (name.clone(), (t.id, t.settings.partitions)))
        })
        .collect()
}
