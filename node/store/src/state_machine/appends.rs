//! Applying appends and what makes them idempotent: `Command::Append` (records onto a partition's
//! end, deduplicated by producer sequence, optionally conditional on the end offset) and
//! `Command::InitProducer` (a new producer id). The records of one entry's appends are collected
//! in [`EntryRows`] and stored as few batches as possible once the entry is applied.

use std::collections::{BTreeMap, BTreeSet};

use rocksdb::WriteBatch;

use super::changes::TopicChanges;
use super::StateMachine;
use crate::codec::encode;
use crate::keys::{self, sm_tag};
use crate::stored_batch::{self, BatchHeader};
use raftlog_core::limits::{PRODUCER_BATCHES_REMEMBERED, STORED_BATCH_BYTES_TARGET};
use raftlog_core::{Command, CommandResponse, ProducerSequence, ProducerState, Record, Rejection};

impl StateMachine {
    /// Applies `Command::Append` or `Command::InitProducer`.
    pub(super) fn apply_append_command(
        &mut self,
        command: &Command,
        topics: &mut TopicChanges<'_>,
        batch: &mut WriteBatch,
        rows: &mut EntryRows,
    ) -> CommandResponse {
        match command {
            Command::Append {
                topic,
                partition,
                records,
                proposed_at_ms,
                producer,
                expected_end_offset,
            } => self.append(
                RecordAppend {
                    topic,
                    partition: *partition,
                    records,
                    proposed_at_ms: *proposed_at_ms,
                    producer: *producer,
                    expected_end_offset: *expected_end_offset,
                },
                topics,
                rows,
            ),
            Command::InitProducer {
                now_ms,
                producers_max,
            } => self.init_producer(*now_ms, *producers_max, batch),
            other => unreachable!("not an append command: {other}"),
        }
    }

    /// Appends the records at the partition's end offset, unless the producer sequence marks
    /// them as a retry (then the offsets they got the first time) or is out of order, or the
    /// end offset is not the expected one. Their rows collect in `rows`.
    pub(super) fn append(
        &mut self,
        append: RecordAppend<'_>,
        topics: &mut TopicChanges<'_>,
        rows: &mut EntryRows,
    ) -> CommandResponse {
        let RecordAppend {
            topic,
            partition,
            records,
            proposed_at_ms,
            producer,
            expected_end_offset,
        } = append;
        let Some(state) = topics.get_mut(topic) else {
            return CommandResponse::Rejected(Rejection::UnknownTopic(topic.to_string()));
        };
        let (topic_id, partitions) = (state.id, state.settings.partitions);
        let Some(part) = state.partitions.get_mut(partition as usize) else {
            return CommandResponse::Rejected(Rejection::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions,
            });
        };
        let record_count = records.len() as u32;
        // Deduplication comes first: a retried conditional append that succeeded must get
        // its original offsets, not a mismatch against the offsets it moved itself.
        if let Some(seq) = producer {
            match check_sequence(&self.producers, seq, (topic_id, partition), record_count) {
                Ok(None) => {}
                Ok(Some(base_offset)) => {
                    return CommandResponse::Appended {
                        base_offset,
                        record_count,
                        duplicate: true,
                    }
                }
                Err(rejection) => return CommandResponse::Rejected(rejection),
            }
        }
        if let Some(expected) = expected_end_offset {
            if expected != part.end_offset {
                return CommandResponse::Rejected(Rejection::EndOffsetMismatch {
                    expected,
                    actual: part.end_offset,
                });
            }
        }
        let base_offset = part.end_offset;
        let bytes: u64 = records.iter().map(|r| r.size_bytes() as u64).sum();
        part.end_offset += records.len() as u64;
        part.bytes += bytes;
        rows.add_batch(topic_id, partition, base_offset, proposed_at_ms, records);
        if !rows.topics.contains(topic) {
            rows.topics.insert(topic.to_string());
        }
        if let Some(seq) = producer {
            let at = (topic_id, partition);
            self.remember_append(seq, at, record_count, base_offset, proposed_at_ms);
            rows.producers.insert(seq.producer_id);
        }
        CommandResponse::Appended {
            base_offset,
            record_count,
            duplicate: false,
        }
    }

    /// Records an idempotent append in its producer's state: the sequence it expects next at
    /// `at` (topic id, partition), and the batch among the last [`PRODUCER_BATCHES_REMEMBERED`]
    /// that a retry is recognised by.
    fn remember_append(
        &mut self,
        seq: ProducerSequence,
        at: (u64, u32),
        record_count: u32,
        base_offset: u64,
        appended_at_ms: i64,
    ) {
        let producer = self
            .producers
            .get_mut(&seq.producer_id)
            .expect("check_sequence found the producer");
        producer.last_seen_ms = appended_at_ms;
        let p = producer.partitions.entry(at).or_default();
        p.next_sequence = seq.sequence + u64::from(record_count);
        p.recent.push((seq.sequence, record_count, base_offset));
        if p.recent.len() > PRODUCER_BATCHES_REMEMBERED {
            p.recent.remove(0);
        }
    }

    /// Grants the next producer id, unless `producers_max` producers exist.
    fn init_producer(
        &mut self,
        now_ms: i64,
        producers_max: u32,
        batch: &mut WriteBatch,
    ) -> CommandResponse {
        let (group, cf) = (self.view.group, self.view.cf());
        if self.producers.len() >= producers_max as usize {
            return CommandResponse::Rejected(Rejection::TooManyProducers(producers_max));
        }
        let producer_id = self.next_producer_id;
        self.next_producer_id += 1;
        batch.put_cf(
            cf,
            keys::sm_singleton(group, sm_tag::NEXT_PRODUCER_ID),
            encode(&self.next_producer_id),
        );
        let producer = ProducerState {
            last_seen_ms: now_ms,
            partitions: BTreeMap::new(),
        };
        batch.put_cf(cf, keys::sm_producer(group, producer_id), encode(&producer));
        self.producers.insert(producer_id, producer);
        CommandResponse::ProducerInitialized { producer_id }
    }

    /// Adds the rows collected while applying one entry to `batch`.
    pub(super) fn write_entry_rows(
        &self,
        rows: EntryRows,
        topics: &TopicChanges<'_>,
        batch: &mut WriteBatch,
    ) {
        let (group, cf) = (self.view.group, self.view.cf());
        for pending in rows.batches {
            batch.put_cf(
                cf,
                keys::sm_batch(
                    group,
                    pending.topic_id,
                    pending.partition,
                    pending.base_offset,
                ),
                stored_batch::encode_batch(pending.header, &pending.records),
            );
        }
        for name in rows.topics {
            let state = topics.get(&name).expect("an appended-to topic exists");
            batch.put_cf(cf, keys::sm_topic(group, &name), encode(state));
        }
        for id in rows.producers {
            let producer = self
                .producers
                .get(&id)
                .expect("an appending producer exists");
            batch.put_cf(cf, keys::sm_producer(group, id), encode(producer));
        }
    }
}

/// An append of records to one partition, as `Command::Append` carries it.
pub(super) struct RecordAppend<'c> {
    pub(super) topic: &'c str,
    pub(super) partition: u32,
    pub(super) records: &'c [Record],
    pub(super) proposed_at_ms: i64,
    pub(super) producer: Option<ProducerSequence>,
    pub(super) expected_end_offset: Option<u64>,
}

/// Judges an idempotent batch against what its producer already appended to `at` (topic id,
/// partition): `Ok(None)` to append it, `Ok(Some(base_offset))` when it is a retry of a remembered
/// batch, or the rejection.
fn check_sequence(
    producers: &BTreeMap<u64, ProducerState>,
    seq: ProducerSequence,
    at: (u64, u32),
    record_count: u32,
) -> Result<Option<u64>, Rejection> {
    let producer = producers
        .get(&seq.producer_id)
        .ok_or(Rejection::UnknownProducer(seq.producer_id))?;
    let partition = producer.partitions.get(&at);
    let expected = partition.map_or(0, |p| p.next_sequence);
    if seq.sequence == expected {
        return Ok(None);
    }
    let remembered =
        partition.and_then(|p| p.recent.iter().find(|(first, ..)| *first == seq.sequence));
    if let Some(&(_, count, base_offset)) = remembered {
        if count == record_count {
            return Ok(Some(base_offset));
        }
    }
    let (producer_id, got) = (seq.producer_id, seq.sequence);
    Err(if got > expected {
        Rejection::SequenceGap {
            producer_id,
            expected,
            got,
        }
    } else {
        Rejection::SequenceStale {
            producer_id,
            expected,
            got,
        }
    })
}

/// The rows that the appends of one entry change, written once when the entry is done instead
/// of once per append.
///
/// A group-commit entry (`Command::Batch`) holds dozens of produce requests, at C=64 mostly
/// single-record appends to the same partition. Their records become one stored batch per
/// partition, cut at [`STORED_BATCH_BYTES_TARGET`] (the unit a fetch reads and retention
/// deletes; offsets inside it are consecutive), and each touched topic and producer row is
/// written once. Before, every append wrote its own
/// row, its topic row and its producer row: three memtable inserts per request on every node,
/// and rows below the blob threshold that compactions kept rewriting. Merging stops at the
/// entry's end, so the rows do not depend on how openraft splits entries into apply calls.
#[derive(Default)]
pub(super) struct EntryRows {
    /// Stored batches being built, in the order their first append came.
    batches: Vec<PendingBatch>,
    /// Names of the topics whose row (end offsets) changed.
    topics: BTreeSet<String>,
    /// Producers whose state changed.
    producers: BTreeSet<u64>,
}

struct PendingBatch {
    topic_id: u64,
    partition: u32,
    base_offset: u64,
    header: BatchHeader,
    records: Vec<Record>,
}

impl EntryRows {
    /// Adds an append's records: to the partition's pending batch when they follow it (always,
    /// within one entry: nothing else moves a partition's end offset) and it has room, else as
    /// new batches of at most [`STORED_BATCH_BYTES_TARGET`] (a larger record alone).
    fn add_batch(
        &mut self,
        topic_id: u64,
        partition: u32,
        base_offset: u64,
        appended_at_ms: i64,
        records: &[Record],
    ) {
        for (i, record) in records.iter().enumerate() {
            let offset = base_offset + i as u64;
            let size = record.size_bytes() as u64;
            let follows = |b: &&mut PendingBatch| {
                b.topic_id == topic_id
                    && b.partition == partition
                    && b.base_offset + b.records.len() as u64 == offset
            };
            // A clone of a record is reference counts (its buffers are `Bytes`); one with no
            // timestamp of its own gets the time it was proposed at.
            let mut record = record.clone();
            if record.timestamp_ms == 0 {
                record.timestamp_ms = appended_at_ms;
            }
            match self.batches.iter_mut().rev().find(follows) {
                Some(pending) if pending.header.bytes + size <= STORED_BATCH_BYTES_TARGET => {
                    pending.records.push(record);
                    pending.header.bytes += size;
                    // Time-based retention judges a batch by its newest append.
                    pending.header.appended_at_ms =
                        pending.header.appended_at_ms.max(appended_at_ms);
                }
                _ => self.batches.push(PendingBatch {
                    topic_id,
                    partition,
                    base_offset: offset,
                    header: BatchHeader {
                        appended_at_ms,
                        bytes: size,
                    },
                    records: vec![record],
                }),
            }
        }
    }
}
