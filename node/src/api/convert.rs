//! Conversions between wire types (raftlog-proto) and domain types, in one place.

use raftlog_proto::v1 as pb;

use crate::command::Record;
use crate::storage::state_machine::{GroupOffsets, TopicState};

/// The records of one produce request as stored, their bytes copied into one allocation of
/// their own.
///
/// Decoded wire records are slices of the gRPC receive buffer, which can be far larger than they
/// are (one buffer serves every message of a stream, and grows to the largest). Held on to by the
/// log's cache of recent entries or a pending apply, such slices would keep that whole buffer
/// alive; one copy per request here bounds what a record keeps to its own bytes, so everything
/// downstream may hold records as they are.
pub fn records_from_pb(records: &[pb::Record]) -> Vec<Record> {
    let bytes = records.iter().map(raftlog_proto::record_size).sum();
    let mut owned = bytes::BytesMut::with_capacity(bytes);
    let mut copy = |b: &bytes::Bytes| {
        owned.extend_from_slice(b);
        owned.split().freeze()
    };
    records
        .iter()
        .map(|r| Record {
            key: r.key.as_ref().map(&mut copy),
            value: copy(&r.value),
            headers: r
                .headers
                .iter()
                .map(|h| (h.key.clone(), copy(&h.value)))
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
    let by_id: std::collections::HashMap<u64, &TopicState> =
        topics.iter().map(|t| (t.id, t)).collect();
    let partitions: Vec<pb::GroupPartition> = offsets
        .iter()
        .filter_map(|(&(topic_id, partition), committed)| {
            let topic = by_id.get(&topic_id)?;
            let end_offset = topic.partitions.get(partition as usize)?.end_offset;
            Some(pb::GroupPartition {
                topic: topic.name.clone(),
                partition,
                committed_offset: committed.offset,
                end_offset,
                lag: end_offset.saturating_sub(committed.offset),
                committed_at_ms: committed.committed_at_ms,
            })
        })
        .collect();
    pb::GroupInfo {
        group: name,
        total_lag: partitions.iter().map(|p| p.lag).sum(),
        partitions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// The stored records equal the request's, and their bytes live in one allocation of
    /// their own (end to end, outside the buffer the request was decoded from).
    #[test]
    fn records_from_a_request_own_one_copy_of_their_bytes() {
        let received = Bytes::from(vec![7u8; 4096]);
        let wire =
            |key: Option<std::ops::Range<usize>>, value: std::ops::Range<usize>| pb::Record {
                key: key.map(|k| received.slice(k)),
                value: received.slice(value),
                headers: vec![pb::Header {
                    key: "h".into(),
                    value: received.slice(0..3),
                }],
                timestamp_ms: 5,
                ..Default::default()
            };
        let request = vec![wire(Some(0..10), 10..1034), wire(None, 1034..1040)];
        let records = records_from_pb(&request);

        for (stored, sent) in records.iter().zip(&request) {
            assert_eq!(stored.key, sent.key);
            assert_eq!(stored.value, sent.value);
            assert_eq!(
                stored.headers,
                vec![("h".to_string(), sent.headers[0].value.clone())]
            );
            assert_eq!(stored.timestamp_ms, 5);
        }
        let pieces = [
            records[0].key.clone().unwrap(),
            records[0].value.clone(),
            records[0].headers[0].1.clone(),
            records[1].value.clone(),
            records[1].headers[0].1.clone(),
        ];
        let within_received = |b: &Bytes| {
            let start = received.as_ptr() as usize;
            (start..start + received.len()).contains(&(b.as_ptr() as usize))
        };
        for pair in pieces.windows(2) {
            assert_eq!(
                pair[0].as_ptr() as usize + pair[0].len(),
                pair[1].as_ptr() as usize,
                "one allocation, end to end"
            );
        }
        assert!(!pieces.iter().any(within_received));
    }
}
