//! What the API reads from the stored state through a [`StateView`]: records from an offset (a
//! fetch), the first offset at a time, and the digest that compares replicas. Reads never write
//! and never wait for apply; they see what the last apply call published.

use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, ReadOptions};
use sha2::{Digest, Sha256};

use super::view::StateView;
use crate::codec::decode;
use crate::keys::{self, sm_tag};
use crate::stored_batch;
use raftlog_core::types::LogId;
use raftlog_core::{Record, Rejection};

/// Why a read could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("offset {offset} is out of range: {}", held(*start_offset, *end_offset))]
    OffsetOutOfRange {
        offset: u64,
        start_offset: u64,
        end_offset: u64,
    },
    #[error("storage error: {0}")]
    Storage(String),
}

/// What a partition holds, in words: "it holds offsets 3 to 9 (the next is 10)", or "it is
/// empty; the next offset is 10" (after retention, "older records were deleted by retention").
fn held(start_offset: u64, end_offset: u64) -> String {
    let deleted = if start_offset > 0 {
        "; older records were deleted by retention"
    } else {
        ""
    };
    if start_offset == end_offset {
        format!("the partition is empty; the next offset is {end_offset}{deleted}")
    } else {
        format!(
            "the partition holds offsets {start_offset} to {} (the next is {end_offset}){deleted}",
            end_offset - 1
        )
    }
}

/// A stored batch as read: its base offset and its stored bytes.
type StoredBatch = (u64, Box<[u8]>);

/// Records read from one partition.
#[derive(Debug, Default)]
pub struct ReadResult {
    /// (offset, record), in offset order, all below `end_offset`.
    pub records: Vec<(u64, Record)>,
    pub start_offset: u64,
    pub end_offset: u64,
}

impl StateView {
    /// [`Self::read`] on tokio's blocking pool, for request handlers. A read that misses the
    /// memtables waits on the disk (flushed files are written with O_DIRECT, so they are not in
    /// the page cache just because they were written): on an async worker that wait would stall
    /// every other request and Raft's heartbeats on it, for as long as a 16 MiB read takes.
    pub async fn read_blocking(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadResult, ReadError> {
        let topic = topic.to_string();
        self.on_read_slot(move |view| view.read(&topic, partition, offset, max_records, max_bytes))
            .await
    }

    /// [`Self::offset_for_time`] on tokio's blocking pool (it reads from disk), sharing the
    /// read slots with fetches.
    pub async fn offset_for_time_blocking(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
        at_ms: i64,
    ) -> Result<u64, ReadError> {
        let topic = topic.to_string();
        self.on_read_slot(move |view| view.offset_for_time(&topic, partition, at_ms))
            .await
    }

    /// Runs `read` on tokio's blocking pool once one of the [`READS_PARALLEL`] read slots is
    /// free.
    ///
    /// [`READS_PARALLEL`]: raftlog_core::limits::READS_PARALLEL
    async fn on_read_slot<T: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&StateView) -> Result<T, ReadError> + Send + 'static,
    ) -> Result<T, ReadError> {
        // The slot goes with the read, not with this future: a caller that goes away (a client
        // that hangs up) leaves the read running, and it still counts until it ends.
        let slot = self
            .read_slots
            .clone()
            .acquire_owned()
            .await
            .expect("the read semaphore is never closed");
        let view = self.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            read(&view)
        })
        .await
        .unwrap_or_else(|e| Err(ReadError::Storage(format!("read task failed: {e}"))))
    }

    /// Reads committed records of `topic`/`partition` from `offset`, at most `max_records` records
    /// and about `max_bytes` bytes (always at least one record when one is available, so a record
    /// larger than `max_bytes` cannot stall a consumer).
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadResult, ReadError> {
        let (topic_id, start_offset, end_offset) = self.partition_bounds(topic, partition)?;
        if offset < start_offset || offset > end_offset {
            return Err(ReadError::OffsetOutOfRange {
                offset,
                start_offset,
                end_offset,
            });
        }
        let mut result = ReadResult {
            records: Vec::new(),
            start_offset,
            end_offset,
        };
        if offset == end_offset || max_records == 0 {
            return Ok(result);
        }
        let first_base = self
            .batch_holding(topic_id, partition, offset)?
            .map_or(offset, |(base, _)| base);
        let from = keys::sm_batch(self.group, topic_id, partition, first_base);
        let mut opts = ReadOptions::default();
        // Stop at the partition's end, and read ahead: a fetch scans consecutive batches.
        opts.set_iterate_upper_bound(keys::sm_batch(self.group, topic_id, partition, end_offset));
        opts.set_readahead_size(2 << 20);
        let mut bytes = 0usize;
        'batches: for item in self.db.iterator_cf_opt(
            self.cf(),
            opts,
            IteratorMode::From(&from, Direction::Forward),
        ) {
            let (key, value) = item.map_err(|e| ReadError::Storage(e.to_string()))?;
            let Some((t, p, base)) = keys::parse_batch(&key) else {
                break;
            };
            if t != topic_id || p != partition || base >= end_offset {
                break;
            }
            let records = stored_batch::records_shared(bytes::Bytes::from(value))
                .map_err(|e| ReadError::Storage(e.to_string()))?;
            for (i, record) in records.into_iter().enumerate() {
                let record_offset = base + i as u64;
                if record_offset < offset {
                    continue;
                }
                if record_offset >= end_offset
                    || result.records.len() >= max_records
                    || (!result.records.is_empty() && bytes + record.size_bytes() > max_bytes)
                {
                    break 'batches;
                }
                bytes += record.size_bytes();
                result.records.push((record_offset, record));
            }
        }
        Ok(result)
    }

    /// The first offset of `topic`/`partition` whose batch was appended at or after `at_ms` (the
    /// leader's clock, in each stored batch's header), or the end offset if none was.
    ///
    /// A binary search over the stored batches, one seek per step: append times follow offsets
    /// (each leader stamps its own clock, so a leader change onto a node whose clock is behind
    /// could bend that order by the clocks' difference).
    pub fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        at_ms: i64,
    ) -> Result<u64, ReadError> {
        let (topic_id, start_offset, end_offset) = self.partition_bounds(topic, partition)?;
        // The batch holding `offset`: its base offset and append time.
        let batch_at = |offset: u64| -> Result<Option<(u64, i64)>, ReadError> {
            let Some((base, value)) = self.batch_holding(topic_id, partition, offset)? else {
                return Ok(None);
            };
            let header =
                stored_batch::header(&value).map_err(|e| ReadError::Storage(e.to_string()))?;
            Ok(Some((base, header.appended_at_ms)))
        };
        // Invariant: every offset below `low` was appended before `at_ms`; the answer is at most
        // `high`.
        let (mut low, mut high) = (start_offset, end_offset);
        while low < high {
            let middle = low + (high - low) / 2;
            match batch_at(middle)? {
                // The batch holding `middle` is earlier: the answer lies past it.
                Some((_, appended_at_ms)) if appended_at_ms < at_ms => low = middle + 1,
                // It is not: nor is any offset of it, from its base on.
                Some((base, _)) => high = base.max(low),
                // No stored batch holds it (cannot happen inside start..end): search below.
                None => high = middle,
            }
        }
        Ok(low)
    }

    /// The id of `topic` and the start and end offsets of its `partition`: only the one
    /// partition's offsets, not a copy of the topic with its whole partition table (up to
    /// `partitions_per_topic_max` entries) per read.
    fn partition_bounds(&self, topic: &str, partition: u32) -> Result<(u64, u64, u64), ReadError> {
        let topics = self.topics.read().expect("topic table lock");
        let state = topics
            .get(topic)
            .ok_or_else(|| Rejection::UnknownTopic(topic.to_string()))?;
        let part = state.partitions.get(partition as usize).ok_or_else(|| {
            Rejection::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions: state.settings.partitions,
            }
        })?;
        Ok((state.id, part.start_offset, part.end_offset))
    }

    /// The record at `offset` of a partition as stored now, whether or not the view has
    /// published it yet: for apply, which writes what the entries before the current one
    /// stored before it reads (`StateMachine::apply_entry`), so that every node reads the same
    /// however openraft splits entries into apply calls.
    pub(super) fn stored_record(
        &self,
        topic_id: u64,
        partition: u32,
        offset: u64,
    ) -> Result<Option<Record>, ReadError> {
        let Some((base, records)) = self.stored_records_from(topic_id, partition, offset)? else {
            return Ok(None);
        };
        Ok(usize::try_from(offset - base)
            .ok()
            .and_then(|i| records.into_iter().nth(i)))
    }

    /// The records of the stored batch holding `offset` (as [`Self::stored_record`] reads it),
    /// with the batch's base offset: for a reader of consecutive offsets, one decode per batch.
    pub(super) fn stored_records_from(
        &self,
        topic_id: u64,
        partition: u32,
        offset: u64,
    ) -> Result<Option<(u64, Vec<Record>)>, ReadError> {
        let Some((base, value)) = self.batch_holding(topic_id, partition, offset)? else {
            return Ok(None);
        };
        let records = stored_batch::records_shared(bytes::Bytes::from(value))
            .map_err(|e| ReadError::Storage(e.to_string()))?;
        Ok(Some((base, records)))
    }

    /// The stored batch of `topic_id`/`partition` that holds `offset`, if one is stored: the last
    /// batch whose base offset is at most `offset`, as its base offset and its stored bytes.
    fn batch_holding(
        &self,
        topic_id: u64,
        partition: u32,
        offset: u64,
    ) -> Result<Option<StoredBatch>, ReadError> {
        let seek = keys::sm_batch(self.group, topic_id, partition, offset);
        let mut back = self
            .db
            .iterator_cf(self.cf(), IteratorMode::From(&seek, Direction::Reverse));
        match back.next() {
            Some(Ok((key, value))) => Ok(match keys::parse_batch(&key) {
                Some((t, p, base)) if t == topic_id && p == partition => Some((base, value)),
                _ => None,
            }),
            Some(Err(e)) => Err(ReadError::Storage(e.to_string())),
            None => Ok(None),
        }
    }

    /// SHA-256 over every row of this group's state machine, read under one RocksDB snapshot,
    /// with the applied index it corresponds to and the row count.
    pub fn digest(&self) -> Result<(u64, String, u64), ReadError> {
        let snapshot = self.db.snapshot();
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(keys::sm_prefix_end(self.group).to_vec());
        let prefix = keys::sm_prefix(self.group);
        let applied_key = keys::sm_singleton(self.group, sm_tag::APPLIED);
        let mut hasher = Sha256::new();
        let mut rows = 0u64;
        let mut applied_index = 0;
        for item in snapshot.iterator_cf_opt(
            self.cf(),
            opts,
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (key, value) = item.map_err(|e| ReadError::Storage(e.to_string()))?;
            if *key == *applied_key {
                let applied: Option<LogId> =
                    decode(&value).map_err(|e| ReadError::Storage(e.to_string()))?;
                applied_index = applied.map_or(0, |id| id.index);
            }
            hasher.update((key.len() as u64).to_be_bytes());
            hasher.update(&key);
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(&value);
            rows += 1;
        }
        Ok((applied_index, hex::encode(hasher.finalize()), rows))
    }
}
