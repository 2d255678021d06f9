//! Applying the consumer groups' offset commands: commits (`Command::CommitGroupOffsets`, which
//! may refuse a rewind, and the older unconditional `Command::CommitOffsets`) and
//! `Command::DeleteGroup`. A group exists while it has a committed offset.

use rocksdb::WriteBatch;

use super::changes::{GroupChanges, TopicChanges};
use super::StateMachine;
use crate::codec::encode;
use crate::keys;
use raftlog_core::{Command, CommandResponse, GroupId, GroupOffset, Rejection};

impl StateMachine {
    /// Applies `Command::CommitOffsets`, `CommitGroupOffsets` or `DeleteGroup`.
    pub(super) fn apply_offset_command(
        &self,
        command: &Command,
        topics: &TopicChanges<'_>,
        groups: &mut GroupChanges<'_>,
        batch: &mut WriteBatch,
    ) -> CommandResponse {
        let rows = (batch, self.view.cf(), self.view.group);
        match command {
            Command::CommitOffsets {
                group,
                topic,
                offsets,
                committed_at_ms,
                groups_max,
            } => commit_offsets(
                OffsetCommit {
                    group,
                    topic,
                    offsets,
                    committed_at_ms: *committed_at_ms,
                    groups_max: *groups_max,
                    allow_rewind: true,
                },
                topics,
                groups,
                rows,
            ),
            Command::CommitGroupOffsets {
                group,
                topic,
                offsets,
                committed_at_ms,
                groups_max,
                allow_rewind,
            } => commit_offsets(
                OffsetCommit {
                    group,
                    topic,
                    offsets,
                    committed_at_ms: *committed_at_ms,
                    groups_max: *groups_max,
                    allow_rewind: *allow_rewind,
                },
                topics,
                groups,
                rows,
            ),
            Command::DeleteGroup { group } => delete_group(group, groups, rows),
            other => unreachable!("not an offset command: {other}"),
        }
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

/// Forgets every offset `group_name` committed (which is the group).
fn delete_group(
    group_name: &str,
    groups: &mut GroupChanges<'_>,
    (batch, cf, group): (&mut WriteBatch, &rocksdb::ColumnFamily, GroupId),
) -> CommandResponse {
    if !groups.exists(group_name) {
        return CommandResponse::Rejected(Rejection::UnknownGroup(group_name.to_string()));
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
