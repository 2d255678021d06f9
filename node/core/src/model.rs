//! The replicated state's rows, as stored and as cached in memory: topics with their partitions'
//! offsets, idempotent producers, consumer groups' committed offsets.
//!
//! On-disk format: every `Serialize` type here is a state-machine row (and part of snapshots).
//! Add fields only at the end, never reorder; a change must be flagged in the commit message.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::TopicSettings;
use crate::ids::TopicId;

/// A partition's offsets. `end_offset` is the next offset to be written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    pub start_offset: u64,
    pub end_offset: u64,
    /// Record bytes held in `start_offset..end_offset` (what size-based retention bounds).
    pub bytes: u64,
}

/// Idempotence state of one producer id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    /// Leader time of its grant or latest append; it expires `producer_idle_ms` after this.
    pub last_seen_ms: i64,
    /// Per (topic id, partition).
    pub partitions: BTreeMap<(TopicId, u32), ProducerPartition>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerPartition {
    /// Sequence the next batch must start at.
    pub next_sequence: u64,
    /// (first sequence, record count, base offset) of the latest batches, oldest first.
    pub recent: Vec<(u64, u32, u64)>,
}

/// A topic row, as stored and as cached in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicState {
    pub id: TopicId,
    pub name: String,
    pub settings: TopicSettings,
    pub partitions: Vec<PartitionState>,
}

/// One committed offset of a consumer group, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOffset {
    /// The next offset the group reads.
    pub offset: u64,
    pub committed_at_ms: i64,
}

/// A group's committed offsets by (topic id, partition).
pub type GroupOffsets = BTreeMap<(TopicId, u32), GroupOffset>;

/// Where a consumer group stands on one partition: what it committed, against the end offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: u32,
    pub committed_offset: u64,
    pub committed_at_ms: i64,
    pub end_offset: u64,
    /// Records committed to the partition and not yet consumed by the group.
    pub lag: u64,
}

/// A group's lag per partition against the end offsets of `topics`, in (topic id, partition)
/// order. Offsets of topics that no longer exist are left out (deleting a topic deletes them in
/// the same command).
pub fn group_lag(offsets: &GroupOffsets, topics: &[TopicState]) -> Vec<PartitionLag> {
    let by_id: std::collections::HashMap<TopicId, &TopicState> =
        topics.iter().map(|t| (t.id, t)).collect();
    offsets
        .iter()
        .filter_map(|(&(topic_id, partition), committed)| {
            let topic = by_id.get(&topic_id)?;
            let end_offset = topic.partitions.get(partition as usize)?.end_offset;
            Some(PartitionLag {
                topic: topic.name.clone(),
                partition,
                committed_offset: committed.offset,
                committed_at_ms: committed.committed_at_ms,
                end_offset,
                lag: end_offset.saturating_sub(committed.offset),
            })
        })
        .collect()
}
