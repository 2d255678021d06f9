//! Conversions between wire types (raftlog-proto) and domain types, in one place.

use raftlog_proto::v1 as pb;

use crate::command::Record;
use crate::storage::state_machine::TopicState;

pub fn record_from_pb(r: pb::Record) -> Record {
    Record {
        key: r.key,
        value: r.value,
        headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
        timestamp_ms: r.timestamp_ms,
    }
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
