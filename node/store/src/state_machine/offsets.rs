//! Applying the consumer groups' offset commands: commits (`Command::CommitFencedOffsets`, which
//! is fenced by membership and may refuse a rewind; the older `CommitGroupOffsets`, which may
//! refuse a rewind, and `CommitOffsets`, which overwrote) and `Command::DeleteGroup` (refused while
//! the group has members). A group's offsets exist while it has a committed offset.

use rocksdb::WriteBatch;

use super::changes::{GroupChanges, TopicChanges};
use super::StateMachine;
use crate::codec::encode;
use crate::keys;
use raftlog_core::{Command, CommandResponse, GroupId, GroupOffset, Rejection};

impl StateMachine {
    /// Applies `Command::CommitOffsets`, `CommitGroupOffsets`, `CommitFencedOffsets` or
    /// `DeleteGroup`.
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
            Command::CommitFencedOffsets { .. } => {
                self.commit_fenced_offsets(command, topics, groups, rows)
            }
            Command::DeleteGroup { group } => match self.members_of(group) {
                0 => delete_group(group, groups, rows),
                members => CommandResponse::Rejected(Rejection::GroupHasMembers {
                    group: group.clone(),
                    members,
                }),
            },
            other => unreachable!("not an offset command: {other}"),
        }
    }
}

impl StateMachine {
    /// `Command::CommitFencedOffsets`: refused unless the committing member owns every
    /// partition (or, without a member, the group has none); then as any commit.
    fn commit_fenced_offsets(
        &self,
        command: &Command,
        topics: &TopicChanges<'_>,
        groups: &mut GroupChanges<'_>,
        rows: (&mut WriteBatch, &rocksdb::ColumnFamily, GroupId),
    ) -> CommandResponse {
        let Command::CommitFencedOffsets {
            group,
            topic,
            offsets,
            committed_at_ms,
            groups_max,
            allow_rewind,
            member,
        } = command
        else {
            unreachable!("not a fenced commit: {command}")
        };
        if let Some(state) = topics.get(topic) {
            let partitions = offsets.iter().map(|(p, _)| *p);
            let member = member.as_deref();
            if let Err(refused) =
                self.check_fenced_commit(group, member, topic, state.id, partitions)
            {
                return CommandResponse::Rejected(refused);
            }
        }
        commit_offsets(
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
        )
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
