//! Conversions between wire types (raftlog-proto) and domain types, in one place.

use raftlog_proto::v1 as pb;

use raftlog_core::Record;
use raftlog_core::{group_lag, GroupOffsets, TopicState};

/// The records of one produce request as stored. Their bytes are still slices of the gRPC
/// receive buffer: the batcher copies an entry's records into one allocation of their own when it
/// proposes them (`batcher::own_record_bytes`), before anything holds on to them.
pub fn records_from_pb(records: &[pb::Record]) -> Vec<Record> {
    records
        .iter()
        .map(|r| Record {
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect(),
            timestamp_ms: r.timestamp_ms,
        })
        .collect()
}

pub fn record_to_pb(offset: u64, r: Record) -> pb::Record {
    pb::Record {
        key: r.key,
        value: r.value,
        headers: r
            .headers
            .into_iter()
            .map(|(key, value)| pb::Header { key, value })
            .collect(),
        timestamp_ms: r.timestamp_ms,
        offset,
    }
}

pub fn topic_to_pb(topic: TopicState, leader_id: u64) -> pb::TopicInfo {
    pb::TopicInfo {
        name: topic.name,
        topic_id: topic.id,
        config: Some(pb::TopicConfig {
            partitions: topic.settings.partitions,
            retention_ms: topic.settings.retention_ms,
            retention_bytes: topic.settings.retention_bytes,
            max_record_bytes: topic.settings.max_record_bytes,
        }),
        partitions: topic
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| pb::PartitionInfo {
                partition: i as u32,
                start_offset: p.start_offset,
                end_offset: p.end_offset,
                leader_id,
            })
            .collect(),
    }
}

/// A group's offsets with lag against this node's committed end offsets. Offsets of topics that
/// no longer exist are not listed (deleting a topic deletes them in the same command).
pub fn group_to_pb(name: String, offsets: &GroupOffsets, topics: &[TopicState]) -> pb::GroupInfo {
    let partitions: Vec<pb::GroupPartition> = group_lag(offsets, topics)
        .into_iter()
        .map(|p| pb::GroupPartition {
            topic: p.topic,
            partition: p.partition,
            committed_offset: p.committed_offset,
            end_offset: p.end_offset,
            lag: p.lag,
            committed_at_ms: p.committed_at_ms,
        })
        .collect();
    pb::GroupInfo {
        group: name,
        total_lag: partitions.iter().map(|p| p.lag).sum(),
        partitions,
    }
}
