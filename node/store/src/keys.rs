//! RocksDB key layout. Every key starts with the Raft group id (u64 big-endian) and all integers
//! are big-endian, so RocksDB's byte order is numeric order: a seek finds the first entry at or
//! after an index or offset.
//!
//! On-disk format: changing anything here needs a migration and a flagged commit.

use raftlog_core::GroupId;

/// `raft_log` column family: group · log index.
pub fn log_entry(group: GroupId, index: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The log index of a `raft_log` key. Panics on a key of another shape: that is corruption.
pub fn log_index_of(key: &[u8]) -> u64 {
    assert_eq!(
        key.len(),
        16,
        "raft_log key of unexpected length {}",
        key.len()
    );
    u64::from_be_bytes(key[8..].try_into().expect("8 bytes"))
}

/// `raft_meta` column family rows.
#[derive(Clone, Copy)]
#[repr(u8)]
pub enum MetaKey {
    Vote = 1,
    Committed = 2,
    LastPurged = 3,
}

pub fn meta(group: GroupId, which: MetaKey) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8] = which as u8;
    key
}

/// Tags of the `state_machine` column family, after the group id.
pub mod sm_tag {
    pub const APPLIED: u8 = 0x01;
    pub const MEMBERSHIP: u8 = 0x02;
    pub const NEXT_TOPIC_ID: u8 = 0x03;
    pub const NEXT_PRODUCER_ID: u8 = 0x04;
    /// tag · topic name → topic row.
    pub const TOPIC: u8 = 0x10;
    /// tag · topic id · partition · base offset → a stored batch.
    pub const BATCH: u8 = 0x20;
    /// tag · group name · 0x00 · topic id · partition → a committed group offset.
    pub const GROUP_OFFSET: u8 = 0x30;
    /// tag · group name → a coordinated group's membership (`coordination::Coordination`).
    pub const GROUP_MEMBERS: u8 = 0x31;
    /// tag · producer id → the producer's idempotence state.
    pub const PRODUCER: u8 = 0x40;
    /// tag · queue name → a queue group's definition and counters.
    pub const QUEUE: u8 = 0x50;
    /// tag · queue name · 0x00 · partition → the queue's delivery state of that partition.
    pub const QUEUE_PARTITION: u8 = 0x51;
    /// The id the next ACL entry gets.
    pub const NEXT_ACL_ID: u8 = 0x0A;
    /// tag · token id → a bearer token's hash (`auth::TokenRecord`).
    pub const TOKEN: u8 = 0x70;
    /// tag · ACL id (u64) → an ACL entry (`auth::Acl`).
    pub const ACL: u8 = 0x71;
    /// tag · principal → its quota (`auth::Quota`).
    pub const QUOTA: u8 = 0x72;
    /// tag · principal → its creation caps (`auth::CreationCaps`).
    pub const CAPS: u8 = 0x73;
    /// tag · resource kind (a byte, see `sm_owner`) · name → the principal that created the
    /// topic, consumer group or queue.
    pub const OWNER: u8 = 0x74;
}

pub fn sm_prefix(group: GroupId) -> [u8; 8] {
    group.to_be_bytes()
}

/// The smallest key after every key of `group` in the state machine.
pub fn sm_prefix_end(group: GroupId) -> [u8; 8] {
    (group + 1).to_be_bytes()
}

pub fn sm_singleton(group: GroupId, tag: u8) -> Vec<u8> {
    let mut key = group.to_be_bytes().to_vec();
    key.push(tag);
    key
}

pub fn sm_topic(group: GroupId, name: &str) -> Vec<u8> {
    let mut key = sm_singleton(group, sm_tag::TOPIC);
    key.extend_from_slice(name.as_bytes());
    key
}

pub fn sm_topic_prefix(group: GroupId) -> Vec<u8> {
    sm_singleton(group, sm_tag::TOPIC)
}

pub fn sm_batch(group: GroupId, topic_id: u64, partition: u32, base_offset: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + 1 + 8 + 4 + 8);
    key.extend_from_slice(&group.to_be_bytes());
    key.push(sm_tag::BATCH);
    key.extend_from_slice(&topic_id.to_be_bytes());
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(&base_offset.to_be_bytes());
    key
}

/// The first key after every batch of `topic_id`: deleting `[sm_batch(.., topic_id, 0, 0),
/// sm_topic_batches_end(..))` deletes the topic's records.
pub fn sm_topic_batches_end(group: GroupId, topic_id: u64) -> Vec<u8> {
    let mut key = sm_singleton(group, sm_tag::BATCH);
    key.extend_from_slice(&(topic_id + 1).to_be_bytes());
    key
}

/// Group names never contain 0x00 (they follow the topic name rules), so the terminator keeps
/// one group's keys apart from a longer name's.
pub fn sm_group_offset(group: GroupId, name: &str, topic_id: u64, partition: u32) -> Vec<u8> {
    let mut key = sm_singleton(group, sm_tag::GROUP_OFFSET);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key.extend_from_slice(&topic_id.to_be_bytes());
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// A coordinated group's membership row.
pub fn sm_group_members(group: GroupId, name: &str) -> Vec<u8> {
    let mut key = sm_singleton(group, sm_tag::GROUP_MEMBERS);
    key.extend_from_slice(name.as_bytes());
    key
}

pub fn sm_group_members_prefix(group: GroupId) -> Vec<u8> {
    sm_singleton(group, sm_tag::GROUP_MEMBERS)
}

pub fn sm_group_offset_prefix(group: GroupId) -> Vec<u8> {
    sm_singleton(group, sm_tag::GROUP_OFFSET)
}

/// Splits a group offset key into (group name, topic id, partition).
pub fn parse_group_offset(key: &[u8]) -> Option<(String, u64, u32)> {
    if key.len() < 9 + 1 + 12 || key[8] != sm_tag::GROUP_OFFSET {
        return None;
    }
    let rest = &key[9..];
    let (name, ids) = rest.split_at(rest.len() - 13);
    if ids[0] != 0 {
        return None;
    }
    Some((
        String::from_utf8(name.to_vec()).ok()?,
        u64::from_be_bytes(ids[1..9].try_into().ok()?),
        u32::from_be_bytes(ids[9..13].try_into().ok()?),
    ))
}

/// A queue group's row.
pub fn sm_queue(group: GroupId, name: &str) -> Vec<u8> {
    let mut key = sm_singleton(group, sm_tag::QUEUE);
    key.extend_from_slice(name.as_bytes());
    key
}

/// Queue names never contain 0x00 (they follow the topic name rules): see [`sm_group_offset`].
pub fn sm_queue_partition(group: GroupId, name: &str, partition: u32) -> Vec<u8> {
    let mut key = sm_singleton(group, sm_tag::QUEUE_PARTITION);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// The first key after every partition row of queue `name`.
pub fn sm_queue_partitions_end(group: GroupId, name: &str) -> Vec<u8> {
    let mut key = sm_singleton(group, sm_tag::QUEUE_PARTITION);
    key.extend_from_slice(name.as_bytes());
    key.push(1);
    key
}

/// Splits a queue partition key into (queue name, partition).
pub fn parse_queue_partition(key: &[u8]) -> Option<(String, u32)> {
    if key.len() < 9 + 1 + 5 || key[8] != sm_tag::QUEUE_PARTITION {
        return None;
    }
    let rest = &key[9..];
    let (name, ids) = rest.split_at(rest.len() - 5);
    if ids[0] != 0 {
        return None;
    }
    Some((
        String::from_utf8(name.to_vec()).ok()?,
        u32::from_be_bytes(ids[1..5].try_into().ok()?),
    ))
}

pub fn sm_producer(group: GroupId, producer_id: u64) -> Vec<u8> {
    let mut key = sm_singleton(group, sm_tag::PRODUCER);
    key.extend_from_slice(&producer_id.to_be_bytes());
    key
}

pub fn sm_token(group: GroupId, id: &str) -> Vec<u8> {
    let mut key = sm_singleton(group, sm_tag::TOKEN);
    key.extend_from_slice(id.as_bytes());
    key
}

pub fn sm_quota(group: GroupId, principal: &str) -> Vec<u8> {
    let mut key = sm_singleton(group, sm_tag::QUOTA);
    key.extend_from_slice(principal.as_bytes());
    key
}

pub fn sm_caps(group: GroupId, principal: &str) -> Vec<u8> {
    let mut key = sm_singleton(group, sm_tag::CAPS);
    key.extend_from_slice(principal.as_bytes());
    key
}

/// The owner row of a resource; `kind` is `b't'` (topic), `b'g'` (consumer group) or `b'q'`
/// (queue).
pub fn sm_owner(group: GroupId, kind: u8, name: &str) -> Vec<u8> {
    let mut key = sm_singleton(group, sm_tag::OWNER);
    key.push(kind);
    key.extend_from_slice(name.as_bytes());
    key
}

pub fn sm_acl(group: GroupId, id: u64) -> Vec<u8> {
    let mut key = sm_singleton(group, sm_tag::ACL);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub fn parse_producer(key: &[u8]) -> Option<u64> {
    if key.len() != 17 || key[8] != sm_tag::PRODUCER {
        return None;
    }
    Some(u64::from_be_bytes(key[9..17].try_into().ok()?))
}

/// Splits a batch key into (topic id, partition, base offset).
pub fn parse_batch(key: &[u8]) -> Option<(u64, u32, u64)> {
    if key.len() != 29 || key[8] != sm_tag::BATCH {
        return None;
    }
    Some((
        u64::from_be_bytes(key[9..17].try_into().ok()?),
        u32::from_be_bytes(key[17..21].try_into().ok()?),
        u64::from_be_bytes(key[21..29].try_into().ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_endian_keys_sort_numerically() {
        assert!(log_entry(0, 255) < log_entry(0, 256));
        assert!(log_entry(0, u64::MAX) < log_entry(1, 0));
        assert!(sm_batch(0, 1, 0, 9) < sm_batch(0, 1, 0, 10));
        assert!(sm_batch(0, 1, 0, u64::MAX) < sm_batch(0, 1, 1, 0));
    }

    #[test]
    fn batch_key_round_trips() {
        let key = sm_batch(7, 3, 2, 1_000_000);
        assert_eq!(parse_batch(&key), Some((3, 2, 1_000_000)));
        assert_eq!(log_index_of(&log_entry(7, 42)), 42);
    }

    #[test]
    fn group_offset_key_round_trips_and_keeps_topics_apart() {
        let key = sm_group_offset(7, "billing", 3, 2);
        assert_eq!(parse_group_offset(&key), Some(("billing".into(), 3, 2)));
        assert!(sm_batch(7, 3, u32::MAX, u64::MAX) < sm_topic_batches_end(7, 3));
        assert!(sm_topic_batches_end(7, 3) <= sm_batch(7, 4, 0, 0));
        // "a" sorts before "a-b": the 0x00 terminator is below every allowed name byte.
        assert!(sm_group_offset(7, "a", u64::MAX, u32::MAX) < sm_group_offset(7, "a-b", 0, 0));
    }

    #[test]
    fn queue_partition_key_round_trips_and_keeps_queues_apart() {
        let key = sm_queue_partition(7, "jobs", 5);
        assert_eq!(parse_queue_partition(&key), Some(("jobs".into(), 5)));
        assert!(sm_queue_partition(7, "a", u32::MAX) < sm_queue_partitions_end(7, "a"));
        assert!(sm_queue_partitions_end(7, "a") <= sm_queue_partition(7, "a-b", 0));
    }
}
