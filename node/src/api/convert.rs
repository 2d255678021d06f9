//! Conversions between wire types (raftlog-proto) and domain types, in one place.

use raftlog_proto::v1 as pb;

use std::collections::BTreeSet;

use raftlog_core::coordination::{Assignor, Coordination, Member, TopicPartition, Topics};
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

/// A group's offsets with lag against this node's committed end offsets, and its coordinated
/// members if it has any. Offsets of topics that no longer exist are not listed (deleting a topic
/// deletes them in the same command).
pub fn group_to_pb(
    name: String,
    offsets: &GroupOffsets,
    coordination: Option<&Coordination>,
    topics: &[TopicState],
) -> pb::GroupInfo {
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
    let table: Topics = topics
        .iter()
        .map(|t| (t.name.clone(), (t.id, t.settings.partitions)))
        .collect();
    let mut info = pb::GroupInfo {
        group: name,
        total_lag: partitions.iter().map(|p| p.lag).sum(),
        partitions,
        state: "empty".into(),
        ..Default::default()
    };
    if let Some(c) = coordination.filter(|c| !c.members.is_empty()) {
        let owned: usize = c
            .members
            .values()
            .map(|m| m.assigned.len() + m.revoking.len())
            .sum();
        let subscribed: u32 = c.topics_seen.values().map(|(_, n)| n).sum();
        // Stable: the target is computed for the current epoch and every member owns exactly
        // its target (a member left or expired since is reassigned at the next heartbeat).
        let stable = c.target_epoch == c.epoch
            && c.members
                .iter()
                .all(|(id, m)| m.revoking.is_empty() && c.target.get(id) == Some(&m.assigned));
        info.state = if stable { "stable" } else { "reconciling" }.into();
        info.epoch = c.epoch;
        info.assignor = assignor_name(c.assignor).into();
        info.session_timeout_ms = c.session_timeout_ms;
        info.rebalances = c.rebalances;
        info.partitions_unassigned = subscribed.saturating_sub(owned as u32);
        info.members = c
            .members
            .iter()
            .map(|(id, m)| member_to_pb(id, m, &table))
            .collect();
    }
    info
}

fn member_to_pb(id: &str, m: &Member, topics: &Topics) -> pb::GroupMember {
    pb::GroupMember {
        member_id: id.to_string(),
        instance_id: m.instance_id.clone().unwrap_or_default(),
        client_id: m.client_id.clone(),
        client_host: m.client_host.clone(),
        member_epoch: m.epoch,
        joined_at_ms: m.joined_at_ms,
        last_heartbeat_ms: m.last_heartbeat_ms,
        subscription: m.subscription.iter().cloned().collect(),
        assigned: partitions_to_pb(&m.assigned, topics),
        revoking: partitions_to_pb(&m.revoking, topics),
    }
}

pub fn assignor_name(assignor: Assignor) -> &'static str {
    match assignor {
        Assignor::Uniform => "uniform",
        Assignor::Range => "range",
    }
}

/// Partitions by topic id as the wire names them: by topic name, in name order. Partitions of a
/// topic that is gone are left out.
pub fn partitions_to_pb(
    partitions: &BTreeSet<TopicPartition>,
    topics: &Topics,
) -> Vec<pb::TopicPartitions> {
    topics
        .iter()
        .filter_map(|(name, (id, _))| {
            let of_topic: Vec<u32> = partitions
                .iter()
                .filter(|(topic_id, _)| topic_id == id)
                .map(|(_, p)| *p)
                .collect();
            (!of_topic.is_empty()).then(|| pb::TopicPartitions {
                topic: name.clone(),
                partitions: of_topic,
            })
        })
        .collect()
}

/// Partitions named on the wire, by topic id; partitions of unknown topics are left out (a
/// member may still report a topic deleted since).
pub fn partitions_from_pb(
    partitions: &[pb::TopicPartitions],
    topics: &Topics,
) -> BTreeSet<TopicPartition> {
    partitions
        .iter()
        .filter_map(|tp| topics.get(&tp.topic).map(|(id, _)| (*id, &tp.partitions)))
        .flat_map(|(id, ps)| ps.iter().map(move |p| (id, *p)))
        .collect()
}
