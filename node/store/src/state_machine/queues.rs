//! Applying the queue commands: `Command::CreateQueue`, `DeleteQueue`, `QueueReceive` and
//! `QueueSettle`. The delivery rules are `raftlog_core::queue`'s (a pure function of a queue's
//! state); this file keeps the queues in memory (the state machine is their only reader at
//! apply), writes the rows a command changed, and appends dead letters to the dead-letter topic
//! in the same write batch as the state change that takes them out of the queue, so a record is
//! never both dead-lettered and still in the queue, nor neither.
//!
//! A dead letter is read back from the stored records at apply. It was appended by an earlier
//! entry (it was delivered before it could be rejected or delivered too often), but maybe in
//! the same apply call: openraft splits entries into apply calls differently on each node. So
//! before a command that may dead-letter, the apply loop writes what the entries before it
//! stored (`StateMachine::apply_entry`), and the record is read from RocksDB directly, not
//! through the view's published offsets: every node reads the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use rocksdb::WriteBatch;

use super::appends::{EntryRows, RecordAppend};
use super::changes::TopicChanges;
use super::StateMachine;
use crate::codec::encode;
use crate::keys;
use raftlog_core::queue::{
    DeadLetter, DeadLetterReason, Queue, QueueCounters, QueueDefinition, RecordFacts, SettleAction,
    Settlement,
};
use raftlog_core::{Command, CommandResponse, Record, Rejection, TopicSettings};

/// Header names of a dead letter: where it came from and why it left its queue.
pub mod dead_letter_header {
    pub const TOPIC: &str = "raftlog-dlq-topic";
    pub const PARTITION: &str = "raftlog-dlq-partition";
    pub const OFFSET: &str = "raftlog-dlq-offset";
    pub const QUEUE: &str = "raftlog-dlq-queue";
    pub const DELIVERIES: &str = "raftlog-dlq-deliveries";
    /// `max-deliveries` or `rejected`.
    pub const REASON: &str = "raftlog-dlq-reason";
    /// The rejecting worker's error text (rejections only).
    pub const ERROR: &str = "raftlog-dlq-error";
    /// The leader's clock when the record left the queue.
    pub const AT_MS: &str = "raftlog-dlq-at-ms";
}

/// A command's view of the records it dead-letters: which queue, and the worker's error text
/// (for rejections).
struct DeadLettering<'a> {
    queue: &'a str,
    letter: DeadLetter,
    error: &'a str,
    now_ms: i64,
}

impl StateMachine {
    /// Applies a queue command.
    pub(super) fn apply_queue_command(
        &mut self,
        command: &Command,
        topics: &mut TopicChanges<'_>,
        batch: &mut WriteBatch,
        rows: &mut EntryRows,
    ) -> CommandResponse {
        match command {
            Command::CreateQueue {
                queue,
                definition,
                queues_max,
                topics_max,
            } => self.create_queue(queue, definition, *queues_max, *topics_max, topics, batch),
            Command::DeleteQueue { queue } => {
                if self.queues.remove(queue).is_none() {
                    return CommandResponse::Rejected(Rejection::UnknownQueue(queue.clone()));
                }
                let (group, cf) = (self.view.group, self.view.cf());
                batch.delete_cf(cf, keys::sm_queue(group, queue));
                batch.delete_range_cf(
                    cf,
                    keys::sm_queue_partition(group, queue, 0),
                    keys::sm_queue_partitions_end(group, queue),
                );
                self.queue_changes.insert(queue.clone());
                CommandResponse::QueueDeleted
            }
            Command::QueueReceive {
                queue,
                worker,
                max,
                now_ms,
            } => self.queue_receive(queue, worker, *max, *now_ms, topics, batch, rows),
            Command::QueueSettle {
                queue,
                settlements,
                now_ms,
            } => self.queue_settle(queue, settlements, *now_ms, topics, batch, rows),
            Command::QueueRedrive {
                queue,
                max_records,
                max_bytes,
                now_ms,
            } => {
                let limits = RedriveLimits {
                    records: u64::from(*max_records),
                    bytes: *max_bytes,
                };
                self.queue_redrive(queue, limits, *now_ms, topics, batch, rows)
            }
            other => unreachable!("not a queue command: {other}"),
        }
    }

    fn create_queue(
        &mut self,
        name: &str,
        definition: &QueueDefinition,
        queues_max: u32,
        topics_max: u32,
        topics: &mut TopicChanges<'_>,
        batch: &mut WriteBatch,
    ) -> CommandResponse {
        let Some(origin) = topics.get(&definition.topic) else {
            return CommandResponse::Rejected(Rejection::UnknownTopic(definition.topic.clone()));
        };
        if origin.id != definition.topic_id {
            return CommandResponse::Rejected(Rejection::UnknownTopic(definition.topic.clone()));
        }
        if let Some(existing) = self.queues.get(name) {
            let same = QueueDefinition {
                created_at_ms: existing.definition.created_at_ms,
                ..definition.clone()
            };
            return if existing.definition == same {
                CommandResponse::QueueCreated { created: false }
            } else {
                CommandResponse::Rejected(Rejection::QueueExists {
                    queue: name.to_string(),
                    topic: existing.definition.topic.clone(),
                })
            };
        }
        if self.queues.len() >= queues_max as usize {
            return CommandResponse::Rejected(Rejection::TooManyQueues(queues_max));
        }
        if let Some(dead_letters) = &definition.dead_letter_topic {
            if *dead_letters == definition.topic {
                return CommandResponse::Rejected(Rejection::DeadLetterIsOrigin(
                    dead_letters.clone(),
                ));
            }
            if !topics.exists(dead_letters) {
                let settings = TopicSettings {
                    partitions: origin.settings.partitions,
                    ..origin.settings.clone()
                };
                let created = self.create_topic(dead_letters, &settings, topics_max, topics, batch);
                if let CommandResponse::Rejected(r) = created {
                    return CommandResponse::Rejected(r);
                }
            }
        }
        let queue = Queue {
            definition: definition.clone(),
            counters: QueueCounters::default(),
            redrive_from: BTreeMap::new(),
            state: Default::default(),
        };
        batch.put_cf(
            self.view.cf(),
            keys::sm_queue(self.view.group, name),
            encode(&queue),
        );
        self.queues.insert(name.to_string(), queue);
        self.queue_changes.insert(name.to_string());
        CommandResponse::QueueCreated { created: true }
    }

    /// The queue `name` taken out of the table for a command to work on (put back with
    /// [`Self::put_queue`]), if it exists and its topic is still the one it was created on.
    fn take_queue(&mut self, name: &str, topics: &TopicChanges<'_>) -> Result<Queue, Rejection> {
        let queue = self
            .queues
            .remove(name)
            .ok_or_else(|| Rejection::UnknownQueue(name.to_string()))?;
        let topic = &queue.definition.topic;
        match topics.get(topic) {
            Some(t) if t.id == queue.definition.topic_id => Ok(queue),
            _ => {
                let gone = Rejection::QueueTopicGone {
                    queue: name.to_string(),
                    topic: topic.clone(),
                };
                self.queues.insert(name.to_string(), queue);
                Err(gone)
            }
        }
    }

    /// `topic` was deleted: queues whose dead letters go there forget how far they redrove, so
    /// a topic recreated under the name is redriven from its start.
    pub(super) fn forget_redrive_cursors(&mut self, topic: &str, batch: &mut WriteBatch) {
        let names: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| {
                q.definition.dead_letter_topic.as_deref() == Some(topic)
                    && !q.redrive_from.is_empty()
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            let mut queue = self.queues.remove(&name).expect("listed above");
            queue.redrive_from.clear();
            self.put_queue(&name, queue, BTreeSet::new(), batch);
        }
    }

    /// Writes the queue's row and the rows of its partitions in `touched`, and puts it back.
    fn put_queue(
        &mut self,
        name: &str,
        queue: Queue,
        touched: BTreeSet<u32>,
        batch: &mut WriteBatch,
    ) {
        let (group, cf) = (self.view.group, self.view.cf());
        batch.put_cf(cf, keys::sm_queue(group, name), encode(&queue));
        for partition in touched {
            if let Some(state) = queue.state.partitions.get(&partition) {
                batch.put_cf(
                    cf,
                    keys::sm_queue_partition(group, name, partition),
                    encode(state),
                );
            }
        }
        self.queues.insert(name.to_string(), queue);
        self.queue_changes.insert(name.to_string());
    }

    #[allow(clippy::too_many_arguments)]
    fn queue_receive(
        &mut self,
        name: &str,
        worker: &str,
        max: u32,
        now_ms: i64,
        topics: &mut TopicChanges<'_>,
        batch: &mut WriteBatch,
        rows: &mut EntryRows,
    ) -> CommandResponse {
        let mut queue = match self.take_queue(name, topics) {
            Ok(queue) => queue,
            Err(rejection) => return CommandResponse::Rejected(rejection),
        };
        let topic = topics
            .get(&queue.definition.topic)
            .expect("take_queue checked the topic");
        let mut touched = BTreeSet::new();
        let mut ends = BTreeMap::new();
        for (partition, bounds) in (0u32..).zip(&topic.partitions) {
            let state = queue.state.partitions.entry(partition).or_default();
            let floor = state.floor;
            let gone = state.drop_below(bounds.start_offset);
            let timed_out = state
                .locked
                .values()
                .filter(|lock| lock.deadline_ms <= now_ms)
                .count() as u64;
            if gone > 0 || timed_out > 0 || state.floor != floor {
                touched.insert(partition);
            }
            queue.counters.expired += gone;
            queue.counters.lock_timeouts += timed_out;
            ends.insert(partition, bounds.end_offset);
        }
        let settings = queue.definition.settings.clone();
        let mut reader = FactsReader {
            view: &self.view,
            topic_id: queue.definition.topic_id,
            batch: None,
        };
        let mut facts = |partition, offset| reader.facts(partition, offset);
        let received = queue
            .state
            .receive(&settings, worker, max, now_ms, &ends, &mut facts);
        // Every partition whose state changed is written, also one that only set records aside
        // (held or delayed): a row left stale comes back at the next restart or snapshot.
        touched.extend(&received.changed);
        for delivery in &received.delivered {
            touched.insert(delivery.partition);
            queue.counters.delivered += 1;
            if delivery.count > 1 {
                queue.counters.redelivered += 1;
            }
        }
        for letter in &received.dead_lettered {
            touched.insert(letter.partition);
            let dead = DeadLettering {
                queue: name,
                letter: *letter,
                error: "",
                now_ms,
            };
            self.dead_letter(&mut queue, dead, topics, rows);
        }
        self.put_queue(name, queue, touched, batch);
        CommandResponse::QueueReceived(Box::new(received))
    }

    fn queue_settle(
        &mut self,
        name: &str,
        settlements: &[Settlement],
        now_ms: i64,
        topics: &mut TopicChanges<'_>,
        batch: &mut WriteBatch,
        rows: &mut EntryRows,
    ) -> CommandResponse {
        let mut queue = match self.take_queue(name, topics) {
            Ok(queue) => queue,
            Err(rejection) => return CommandResponse::Rejected(rejection),
        };
        let settings = queue.definition.settings.clone();
        let mut touched = BTreeSet::new();
        let mut outcomes = Vec::with_capacity(settlements.len());
        for Settlement { delivery, action } in settlements {
            let delivery = *delivery;
            let outcome = match action {
                SettleAction::Ack => queue.state.ack(delivery).map(|finished| {
                    queue.counters.acked += u64::from(finished);
                    0
                }),
                SettleAction::Release { delay_ms } => queue
                    .state
                    .release(&settings, delivery, *delay_ms, now_ms)
                    .map(|()| {
                        queue.counters.released += 1;
                        0
                    }),
                SettleAction::Extend => queue.state.extend(&settings, delivery, now_ms),
                SettleAction::Reject { error } => match queue.state.reject(delivery) {
                    Ok(letter) => {
                        let dead = DeadLettering {
                            queue: name,
                            letter,
                            error,
                            now_ms,
                        };
                        self.dead_letter(&mut queue, dead, topics, rows);
                        Ok(0)
                    }
                    Err(e) => Err(e),
                },
            };
            if outcome.is_ok() {
                touched.insert(delivery.partition);
            }
            outcomes.push(outcome);
        }
        self.put_queue(name, queue, touched, batch);
        CommandResponse::QueueSettled(outcomes)
    }

    /// Appends dead letters of the queue not redriven yet to its topic again (each to the
    /// partition it came from, without the dead-letter headers, with its own key, value,
    /// timestamp and other headers), and moves the queue's redrive cursor past them.
    fn queue_redrive(
        &mut self,
        name: &str,
        limits: RedriveLimits,
        now_ms: i64,
        topics: &mut TopicChanges<'_>,
        batch: &mut WriteBatch,
        rows: &mut EntryRows,
    ) -> CommandResponse {
        let mut queue = match self.take_queue(name, topics) {
            Ok(queue) => queue,
            Err(rejection) => return CommandResponse::Rejected(rejection),
        };
        let origin = queue.definition.topic.clone();
        let letters = queue.definition.dead_letter_topic.clone();
        let source = letters.as_ref().and_then(|t| {
            let state = topics.get(t)?;
            let bounds: Vec<(u64, u64)> = state
                .partitions
                .iter()
                .map(|p| (p.start_offset, p.end_offset))
                .collect();
            Some((state.id, bounds))
        });
        let Some((letters_id, bounds)) = source else {
            let rejection = match letters {
                None => Rejection::NoDeadLetters(name.to_string()),
                Some(topic) => Rejection::UnknownTopic(topic),
            };
            self.queues.insert(name.to_string(), queue);
            return CommandResponse::Rejected(rejection);
        };
        let partitions = topics
            .get(&origin)
            .map_or(1, |t| t.settings.partitions.max(1));
        let picked = self.pick_dead_letters(&mut queue, letters_id, &bounds, partitions, &limits);
        queue.counters.redriven += picked.records;
        for (partition, records) in &picked.by_partition {
            self.append(
                RecordAppend {
                    topic: &origin,
                    partition: *partition,
                    records,
                    proposed_at_ms: now_ms,
                    producer: None,
                    expected_end_offset: None,
                },
                topics,
                rows,
            );
        }
        self.put_queue(name, queue, BTreeSet::new(), batch);
        CommandResponse::QueueRedriven {
            records: picked.records,
            remaining: picked.remaining,
        }
    }

    /// Reads the queue's dead letters from its redrive cursor on, within `limits`, for the
    /// topic's `partitions`, and moves the cursor past them.
    fn pick_dead_letters(
        &self,
        queue: &mut Queue,
        letters_id: u64,
        bounds: &[(u64, u64)],
        partitions: u32,
        limits: &RedriveLimits,
    ) -> Picked {
        let mut picked = Picked::default();
        for (partition, &(start, end)) in (0u32..).zip(bounds) {
            let from = queue.redrive_from.get(&partition).copied().unwrap_or(0);
            let mut offset = from.max(start);
            while offset < end && picked.within(limits) {
                let Ok(Some((base, records))) =
                    self.view.stored_records_from(letters_id, partition, offset)
                else {
                    break;
                };
                let before = offset;
                for record in records.into_iter().skip((offset - base) as usize) {
                    if offset >= end || !picked.within(limits) {
                        break;
                    }
                    picked.add(redriven_record(record, partition, partitions));
                    offset += 1;
                }
                if offset == before {
                    break; // no stored record at `offset`: nothing more to read here
                }
            }
            queue.redrive_from.insert(partition, offset);
            picked.remaining += end.saturating_sub(offset);
        }
        picked
    }

    /// Appends the dead letter to the queue's dead-letter topic (if it has one and it exists),
    /// with headers naming its origin, and counts it.
    fn dead_letter(
        &mut self,
        queue: &mut Queue,
        dead: DeadLettering<'_>,
        topics: &mut TopicChanges<'_>,
        rows: &mut EntryRows,
    ) {
        queue.counters.dead_lettered += 1;
        let definition = &queue.definition;
        let Some(target) = &definition.dead_letter_topic else {
            return;
        };
        let Some(partitions) = topics.get(target).map(|t| t.settings.partitions) else {
            return;
        };
        let letter = dead.letter;
        // The record is stored: everything the entries before this one wrote is in RocksDB
        // (see the module doc). Retention may have deleted it meanwhile; then there is nothing
        // to keep.
        let stored = self
            .view
            .stored_record(definition.topic_id, letter.partition, letter.offset);
        let Ok(Some(record)) = stored else {
            return;
        };
        let record = dead_letter_record(record, &definition.topic, &dead);
        let records = [record];
        self.append(
            RecordAppend {
                topic: target,
                partition: letter.partition % partitions.max(1),
                records: &records,
                proposed_at_ms: dead.now_ms,
                producer: None,
                expected_end_offset: None,
            },
            topics,
            rows,
        );
    }

    /// Publishes the queues this apply call changed to the view.
    pub(super) fn publish_queues(&mut self) {
        let changes = std::mem::take(&mut self.queue_changes);
        if changes.is_empty() {
            return;
        }
        let mut live = self.view.queues.write().expect("queue table lock");
        for name in changes {
            match self.queues.get(&name) {
                Some(queue) => live.insert(name, Arc::new(queue.clone())),
                None => live.remove(&name),
            };
        }
    }

    /// Every queue with its partitions' delivery state, from RocksDB.
    pub(super) fn load_queues(
        &self,
    ) -> Result<BTreeMap<String, Queue>, raftlog_core::types::StorageError> {
        let group = self.view.group;
        let mut queues = BTreeMap::new();
        let prefix = keys::sm_singleton(group, keys::sm_tag::QUEUE);
        for item in self.rows_under(&prefix) {
            let (key, value) = item?;
            let name = String::from_utf8(key[prefix.len()..].to_vec()).map_err(super::sm_err)?;
            let queue: Queue = crate::codec::decode(&value).map_err(super::sm_err)?;
            queues.insert(name, queue);
        }
        let prefix = keys::sm_singleton(group, keys::sm_tag::QUEUE_PARTITION);
        for item in self.rows_under(&prefix) {
            let (key, value) = item?;
            let (name, partition) = keys::parse_queue_partition(&key)
                .ok_or_else(|| super::sm_err("malformed queue partition key in state machine"))?;
            if let Some(queue) = queues.get_mut(&name) {
                let state = crate::codec::decode(&value).map_err(super::sm_err)?;
                queue.state.partitions.insert(partition, state);
            }
        }
        Ok(queues)
    }
}

/// Reads what a receive needs to know about new records (key, not-before time) from the stored
/// batches, decoding a batch once for the consecutive offsets it holds.
struct FactsReader<'a> {
    view: &'a super::StateView,
    topic_id: u64,
    /// The last batch decoded: its partition, base offset and records.
    batch: Option<(u32, u64, Vec<Record>)>,
}

impl FactsReader<'_> {
    fn facts(&mut self, partition: u32, offset: u64) -> RecordFacts {
        let cached = |batch: &Option<(u32, u64, Vec<Record>)>| {
            batch.as_ref().and_then(|(p, base, records)| {
                let index = offset.checked_sub(*base)?;
                (*p == partition)
                    .then(|| records.get(index as usize))
                    .flatten()
                    .map(|r| RecordFacts::of(r.key.as_deref(), &r.headers, r.timestamp_ms))
            })
        };
        if let Some(facts) = cached(&self.batch) {
            return facts;
        }
        // A record retention deleted meanwhile counts as plain: the queue drops deleted records
        // anyway. A read error is taken alike, as the dead-letter read takes it.
        self.batch = self
            .view
            .stored_records_from(self.topic_id, partition, offset)
            .ok()
            .flatten()
            .map(|(base, records)| (partition, base, records));
        cached(&self.batch).unwrap_or_default()
    }
}

/// How much one redrive command moves.
struct RedriveLimits {
    records: u64,
    bytes: u64,
}

/// The dead letters a redrive picked, by the partition of the topic they go back to.
#[derive(Default)]
struct Picked {
    by_partition: BTreeMap<u32, Vec<Record>>,
    records: u64,
    bytes: u64,
    remaining: u64,
}

impl Picked {
    fn within(&self, limits: &RedriveLimits) -> bool {
        self.records < limits.records && self.bytes < limits.bytes
    }

    fn add(&mut self, (partition, record): (u32, Record)) {
        self.records += 1;
        self.bytes += record.size_bytes() as u64;
        self.by_partition.entry(partition).or_default().push(record);
    }
}

/// A dead letter as it goes back to its topic: without the dead-letter headers, to the
/// partition its `raftlog-dlq-partition` header names (when the topic has it), else to the
/// dead letter's own partition number modulo the topic's partition count.
fn redriven_record(mut record: Record, partition: u32, partitions: u32) -> (u32, Record) {
    let origin = record
        .headers
        .iter()
        .find(|(name, _)| name == dead_letter_header::PARTITION)
        .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse::<u32>().ok())
        .filter(|&p| p < partitions)
        .unwrap_or(partition % partitions);
    record
        .headers
        .retain(|(name, _)| !name.starts_with(DEAD_LETTER_HEADER_PREFIX));
    (origin, record)
}

/// What every dead-letter header's name starts with.
const DEAD_LETTER_HEADER_PREFIX: &str = "raftlog-dlq-";

/// The record as its dead letter: the same key, value and timestamp, its headers and the
/// dead-letter headers.
fn dead_letter_record(mut record: Record, topic: &str, dead: &DeadLettering<'_>) -> Record {
    use dead_letter_header as h;
    let letter = &dead.letter;
    let reason = match letter.reason {
        DeadLetterReason::MaxDeliveries => "max-deliveries",
        DeadLetterReason::Rejected => "rejected",
    };
    let text = |s: String| Bytes::from(s.into_bytes());
    record.headers.extend([
        (h::TOPIC.to_string(), text(topic.to_string())),
        (h::PARTITION.to_string(), text(letter.partition.to_string())),
        (h::OFFSET.to_string(), text(letter.offset.to_string())),
        (h::QUEUE.to_string(), text(dead.queue.to_string())),
        (
            h::DELIVERIES.to_string(),
            text(letter.deliveries.to_string()),
        ),
        (h::REASON.to_string(), text(reason.to_string())),
        (h::AT_MS.to_string(), text(dead.now_ms.to_string())),
    ]);
    if !dead.error.is_empty() {
        record
            .headers
            .push((h::ERROR.to_string(), text(dead.error.to_string())));
    }
    record
}
