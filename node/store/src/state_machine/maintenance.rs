//! Applying `Command::Maintenance`, the leader's periodic housekeeping: forgets producers idle
//! for too long, deletes the stored batches that fall out of their topic's retention and drops
//! the owner rows of deleted resources (`ownership.rs`). Unlike
//! the other commands it reads RocksDB (the batch headers), so it runs against written rows:
//! `StateMachine::apply_entries` writes the entries before it first.

use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::changes::{GroupChanges, TopicChanges};
use super::{sm_err, StateMachine};
use crate::codec::encode;
use crate::keys;
use crate::stored_batch;
use raftlog_core::types::StorageError;
use raftlog_core::{CommandResponse, PartitionState, TopicSettings, TopicState};

impl StateMachine {
    /// `Command::Maintenance`: expires idle producers, applies retention, forgets owners of what
    /// is gone. Reads batch headers
    /// from RocksDB, so the caller must have written every earlier entry's rows first.
    pub(super) fn maintain(
        &mut self,
        now_ms: i64,
        producer_idle_ms: u64,
        topics: &mut TopicChanges<'_>,
        groups: &GroupChanges<'_>,
        batch: &mut WriteBatch,
    ) -> Result<CommandResponse, StorageError> {
        self.expire_producers(now_ms, producer_idle_ms, batch);
        self.forget_gone_owners(topics, groups, batch);
        for name in topics.names_with_retention() {
            // Retention changes few topics per pass: work on a copy, stored only if it changed.
            let mut state = topics.get(&name).expect("a listed topic exists").clone();
            if self.apply_retention(&mut state, now_ms, batch)? {
                batch.put_cf(
                    self.view.cf(),
                    keys::sm_topic(self.view.group, &state.name),
                    encode(&state),
                );
                topics.insert(name, state);
            }
        }
        Ok(CommandResponse::MaintenanceDone)
    }

    /// Forgets the producers not seen for longer than `producer_idle_ms` at `now_ms`.
    fn expire_producers(&mut self, now_ms: i64, producer_idle_ms: u64, batch: &mut WriteBatch) {
        let (group, cf) = (self.view.group, self.view.cf());
        let idle = i64::try_from(producer_idle_ms).unwrap_or(i64::MAX);
        let expired: Vec<u64> = self
            .producers
            .iter()
            .filter(|(_, p)| p.last_seen_ms.saturating_add(idle) < now_ms)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.producers.remove(&id);
            batch.delete_cf(cf, keys::sm_producer(group, id));
        }
    }

    /// Deletes the stored batches of `state`'s partitions that fall out of its retention at
    /// `now_ms` and moves their start offsets; whether any moved.
    fn apply_retention(
        &self,
        state: &mut TopicState,
        now_ms: i64,
        batch: &mut WriteBatch,
    ) -> Result<bool, StorageError> {
        let mut changed = false;
        for (partition, part) in state.partitions.iter_mut().enumerate() {
            let partition = partition as u32;
            let (new_start, bytes) =
                self.retained_from(state.id, partition, part, &state.settings, now_ms)?;
            if new_start != part.start_offset {
                let group = self.view.group;
                batch.delete_range_cf(
                    self.view.cf(),
                    keys::sm_batch(group, state.id, partition, part.start_offset),
                    keys::sm_batch(group, state.id, partition, new_start),
                );
                part.start_offset = new_start;
                part.bytes = bytes;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Where a partition starts once retention has dropped its oldest batches, and the bytes it
    /// then holds: the first batch neither too old nor beyond the size limit (counted from the
    /// oldest), else the end offset.
    fn retained_from(
        &self,
        topic_id: u64,
        partition: u32,
        part: &PartitionState,
        settings: &TopicSettings,
        now_ms: i64,
    ) -> Result<(u64, u64), StorageError> {
        let (retention_ms, retention_bytes) = (settings.retention_ms, settings.retention_bytes);
        let max_age = i64::try_from(retention_ms).unwrap_or(i64::MAX);
        let from = keys::sm_batch(self.view.group, topic_id, partition, part.start_offset);
        let mut new_start = part.start_offset;
        let mut bytes = part.bytes;
        for item in self.view.db.iterator_cf(
            self.view.cf(),
            IteratorMode::From(&from, Direction::Forward),
        ) {
            let (key, value) = item.map_err(sm_err)?;
            let Some((t, p, base)) = keys::parse_batch(&key) else {
                break;
            };
            if t != topic_id || p != partition || base >= part.end_offset {
                break;
            }
            let header = stored_batch::header(&value).map_err(sm_err)?;
            let too_old =
                retention_ms > 0 && header.appended_at_ms.saturating_add(max_age) < now_ms;
            let too_big = retention_bytes > 0 && bytes > retention_bytes;
            if !(too_old || too_big) {
                new_start = base;
                break;
            }
            bytes -= header.bytes.min(bytes);
            // Until a batch that stays is found, everything up to the end goes.
            new_start = part.end_offset;
        }
        Ok((new_start, bytes))
    }
}
