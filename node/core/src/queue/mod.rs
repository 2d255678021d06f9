//! Queue consumption of a topic, as a pure function of the replicated state: which records of
//! each partition a queue group has finished with (acked or dead-lettered), which are locked by
//! a worker and until when, which wait to be delivered again, and how often each was delivered.
//!
//! Every record of `[floor, next)` of a partition is in exactly one of three places: `done`,
//! `locked` (delivered, its lock running) or `waiting` (released, or its lock ran out; delivered
//! again from `not_before_ms` on). Records from `next` on were never delivered. `floor` moves
//! over the done records at its front, so the state holds only what is between the slowest
//! unfinished record and the newest delivered one.
//!
//! Two kinds of records are set aside ahead of delivery: a record whose producer asked for a
//! later delivery (`delivery_header`) waits, never delivered, until then; and in a key-ordered
//! queue a record whose key has an earlier record locked or waiting is *held* until that one is
//! done, so a key's records go out one at a time in offset order while other keys go on.
//!
//! Acquisitions are replicated (a receive is a command): a lock survives a leader change as it
//! is, and no new leader has to wait out locks it may not know of. Time is the leader's stamp in
//! the command (`now_ms`), never a replica's clock: a lock has run out when a command stamped
//! at or after its deadline is applied.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Header names a producer sets on a record to have queue workers receive it no earlier than a
/// given time (plain readers of the topic see it in offset order as usual). Values are decimal
/// text; a produce with a malformed one is refused.
pub mod delivery_header {
    /// Milliseconds since the Unix epoch (by the leader's clock).
    pub const NOT_BEFORE_MS: &str = "raftlog-not-before-ms";
    /// Milliseconds after the record's timestamp (which the leader stamps when the producer
    /// leaves it 0).
    pub const DELAY_MS: &str = "raftlog-delay-ms";
}

/// What a queue needs to know about a record before it hands it out, read from the stored
/// record at apply (the same bytes on every node).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordFacts {
    /// xxh3-64 of the record's key; `None`: unkeyed. Keys that hash alike share one order,
    /// which costs parallelism, never order.
    pub key: Option<u64>,
    /// Not delivered to a worker before this time (ms since the Unix epoch); 0: at once.
    pub not_before_ms: i64,
}

impl RecordFacts {
    /// The facts of a stored record from its key, headers and timestamp (set when stored).
    pub fn of(key: Option<&[u8]>, headers: &[(String, bytes::Bytes)], timestamp_ms: i64) -> Self {
        let mut not_before_ms = 0;
        for (name, value) in headers {
            let at = match name.as_str() {
                delivery_header::NOT_BEFORE_MS => parse_header_ms(value),
                delivery_header::DELAY_MS => {
                    parse_header_ms(value).map(|delay| timestamp_ms.saturating_add(delay))
                }
                _ => None,
            };
            not_before_ms = not_before_ms.max(at.unwrap_or(0));
        }
        RecordFacts {
            key: key.map(xxhash_rust::xxh3::xxh3_64),
            not_before_ms,
        }
    }
}

/// A delivery header's value: a non-negative decimal number of milliseconds.
pub fn parse_header_ms(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value)
        .ok()?
        .parse::<i64>()
        .ok()
        .filter(|ms| *ms >= 0)
}

/// How a queue group hands out records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettings {
    /// How long a worker holds a record before it is delivered again.
    pub lock_ms: u32,
    /// Deliveries after which a record is dead-lettered instead of delivered again.
    pub max_deliveries: u32,
    /// Delay before the n-th redelivery of a released record without a delay of its own: the
    /// n-th entry (the last one repeats); empty: at once.
    pub backoff_ms: Vec<u32>,
    /// Records locked at once over the whole group; a receive beyond it gets nothing.
    pub in_flight_max: u32,
    /// Records locked at once by one worker (by the name it receives with); 0: no cap of its
    /// own.
    pub worker_in_flight_max: u32,
    /// At most one record per key locked or waiting at a time, a key's records delivered in
    /// offset order (within a partition: the key partitioner keeps a key in one).
    pub key_ordered: bool,
    /// Per partition, how many records the queue sets aside ahead of delivery (delayed, held
    /// behind their key, or waiting to be delivered again) before it stops taking new records
    /// of that partition: bounds the state a stuck key or a far delay can pile up.
    pub lookahead_max: u32,
}

/// Where one delivered record stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub worker: String,
    /// Deliveries so far, this one included.
    pub count: u32,
    pub deadline_ms: i64,
    /// The record's key hash, in a key-ordered queue (the key it keeps busy).
    pub key: Option<u64>,
}

/// A record to deliver again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// Deliveries so far: 0 for a record never delivered (delayed by its producer, or next of
    /// its key after a held time).
    pub count: u32,
    pub not_before_ms: i64,
    /// The record's key hash, in a key-ordered queue (the key it keeps busy).
    pub key: Option<u64>,
}

/// One partition of the topic, for one queue group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionQueue {
    /// Every offset below is done.
    pub floor: u64,
    /// The first offset never delivered.
    pub next: u64,
    /// Done offsets at or above `floor`.
    pub done: BTreeSet<u64>,
    pub locked: BTreeMap<u64, Lock>,
    pub waiting: BTreeMap<u64, Waiting>,
    /// Key-ordered queues: the offset of each busy key's record (locked or waiting); the key's
    /// later records are held until it is done.
    pub owners: BTreeMap<u64, u64>,
    /// Key-ordered queues: records never delivered because an earlier record of their key is
    /// not done, by (key, offset), with the producer's not-before time.
    pub held: BTreeMap<(u64, u64), i64>,
    /// The latest [`DEAD_LETTERS_REMEMBERED`] records dead-lettered, also below `floor`: a late
    /// ack of one is refused (it was not acked), not mistaken for a repeated ack.
    pub dead_letters: BTreeSet<u64>,
}

/// Dead-lettered offsets a partition's queue state remembers (see
/// [`PartitionQueue::dead_letters`]); an ack of an older dead letter answers OK as for any done
/// record. Bounded because the state is one row rewritten at each settlement.
pub const DEAD_LETTERS_REMEMBERED: usize = 256;

/// A delivery of one record: which, and the how-many-th (acks name it, so that an ack from a
/// delivery that has since been superseded is told apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Delivery {
    pub partition: u32,
    pub offset: u64,
    pub count: u32,
}

impl Delivery {
    /// The id a worker gets: `partition.offset.count`.
    pub fn id(&self) -> String {
        format!("{}.{}.{}", self.partition, self.offset, self.count)
    }

    /// Parses [`Delivery::id`].
    pub fn parse(id: &str) -> Option<Self> {
        let mut parts = id.split('.');
        let delivery = Delivery {
            partition: parts.next()?.parse().ok()?,
            offset: parts.next()?.parse().ok()?,
            count: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(delivery)
    }
}

/// Why a record leaves the queue without an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadLetterReason {
    /// Delivered `max_deliveries` times without an ack.
    MaxDeliveries,
    /// A worker rejected it.
    Rejected,
}

/// A record to append to the dead-letter topic as it leaves the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub partition: u32,
    pub offset: u64,
    pub deliveries: u32,
    pub reason: DeadLetterReason,
}

/// What a receive hands out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// Locked for the worker until `deadline_ms`.
    pub delivered: Vec<Delivery>,
    pub deadline_ms: i64,
    /// Taken out of the queue on the way (delivered too often).
    pub dead_lettered: Vec<DeadLetter>,
    /// Every partition whose state this receive changed (delivered, dead-lettered, or set
    /// records aside): the rows to write.
    pub changed: BTreeSet<u32>,
}

/// Why an ack, release, reject or extend was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueError {
    /// No such delivery was ever made.
    UnknownDelivery(Delivery),
    /// The record was delivered again since (its lock ran out): the newer delivery decides.
    Superseded { delivery: Delivery, current: u32 },
    /// The record is done (acked or dead-lettered): only an ack of an acked one is accepted
    /// again.
    AlreadyDone(Delivery),
    /// Extend of a record whose lock ran out (it may be delivered again any moment).
    LockExpired(Delivery),
}

/// A queue group's delivery state over the partitions of its topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    pub partitions: BTreeMap<u32, PartitionQueue>,
}

/// A record about to be locked: where it is, and its key in a key-ordered queue.
struct At {
    partition: u32,
    offset: u64,
    key: Option<u64>,
}

/// The new records a receive may take: each partition's end, the leader's time, and how to
/// learn a record's key and not-before time.
struct NewRecords<'a> {
    ends: &'a BTreeMap<u32, u64>,
    now_ms: i64,
    facts: &'a mut dyn FnMut(u32, u64) -> RecordFacts,
}

/// Where a delivery's record is in its partition.
enum Place {
    Done,
    Locked(u32),
    Waiting(u32),
    Never,
}

impl PartitionQueue {
    fn place(&self, offset: u64) -> Place {
        if offset < self.floor || self.done.contains(&offset) {
            Place::Done
        } else if let Some(lock) = self.locked.get(&offset) {
            Place::Locked(lock.count)
        } else if let Some(waiting) = self.waiting.get(&offset) {
            Place::Waiting(waiting.count)
        } else {
            Place::Never
        }
    }

    /// Marks `offset` done, moves the floor over the done records at the front, and hands its
    /// key on to the key's next held record.
    fn finish(&mut self, offset: u64) {
        let key = self.forget(offset);
        self.done.insert(offset);
        while self.done.remove(&self.floor) {
            self.floor += 1;
        }
        if let Some(key) = key {
            self.free_key(key, offset);
        }
    }

    /// Finishes `offset` as a dead letter, remembering it as one.
    fn dead_letter(&mut self, offset: u64) {
        self.finish(offset);
        self.dead_letters.insert(offset);
        while self.dead_letters.len() > DEAD_LETTERS_REMEMBERED {
            self.dead_letters.pop_first();
        }
    }

    /// Takes `offset` out of the locked and waiting records; returns its key.
    fn forget(&mut self, offset: u64) -> Option<u64> {
        let locked = self.locked.remove(&offset).and_then(|lock| lock.key);
        let waiting = self.waiting.remove(&offset).and_then(|w| w.key);
        locked.or(waiting)
    }

    /// The record at `offset` no longer keeps `key` busy: the key's next held record (lowest
    /// offset) becomes ready from its own not-before time on, and keeps the key busy.
    fn free_key(&mut self, key: u64, offset: u64) {
        if self.owners.get(&key) != Some(&offset) {
            return;
        }
        self.owners.remove(&key);
        let next = self.held.range((key, 0)..=(key, u64::MAX)).next();
        if let Some((&(key, offset), &not_before_ms)) = next {
            self.held.remove(&(key, offset));
            self.owners.insert(key, offset);
            self.waiting.insert(
                offset,
                Waiting {
                    count: 0,
                    not_before_ms,
                    key: Some(key),
                },
            );
        }
    }

    /// Records set aside ahead of delivery: held, delayed or waiting to be delivered again.
    fn set_aside(&self) -> usize {
        self.held.len() + self.waiting.len()
    }

    /// Whether new records of this partition may be taken (the lookahead is not full).
    fn takes_new(&self, settings: &QueueSettings) -> bool {
        self.set_aside() < settings.lookahead_max.max(1) as usize
    }

    /// Locks whose deadline has passed at `now_ms` go back to waiting, ready at once.
    fn expire(&mut self, now_ms: i64) {
        let expired: Vec<u64> = self
            .locked
            .iter()
            // The planted bug takes every lock back, valid or not.
            .filter(|(_, lock)| lock.deadline_ms <= now_ms || crate::test_bug("queue-ignore-locks"))
            .map(|(&offset, _)| offset)
            .collect();
        for offset in expired {
            let lock = self.locked.remove(&offset).expect("expired lock");
            self.waiting.insert(
                offset,
                Waiting {
                    count: lock.count,
                    not_before_ms: lock.deadline_ms.min(now_ms),
                    key: lock.key,
                },
            );
        }
    }
}

impl QueueState {
    /// Records locked now, over every partition.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.locked.len()).sum()
    }

    /// Records locked now by `worker`.
    pub fn in_flight_of(&self, worker: &str) -> usize {
        self.partitions
            .values()
            .map(|p| p.locked.values().filter(|l| l.worker == worker).count())
            .sum()
    }

    /// The lock deadlines of the records `worker` holds, locks that ran out and are not yet
    /// taken back included.
    pub fn lock_deadlines_of<'a>(&'a self, worker: &'a str) -> impl Iterator<Item = i64> + 'a {
        self.partitions
            .values()
            .flat_map(|p| p.locked.values())
            .filter(move |l| l.worker == worker)
            .map(|l| l.deadline_ms)
    }

    /// Records held behind an earlier record of their key (key-ordered queues).
    pub fn held(&self) -> usize {
        self.partitions.values().map(|p| p.held.len()).sum()
    }

    /// How many more records `worker` may lock now: the queue's room and the worker's own.
    fn room(&self, settings: &QueueSettings, worker: &str) -> usize {
        let queue = (settings.in_flight_max as usize).saturating_sub(self.in_flight());
        if settings.worker_in_flight_max == 0 {
            return queue;
        }
        let own =
            (settings.worker_in_flight_max as usize).saturating_sub(self.in_flight_of(worker));
        queue.min(own)
    }

    /// Hands `worker` up to `max` records: first those waiting to be delivered (again) whose
    /// time has come (oldest offset first), then records never looked at, partition by
    /// partition in turn, up to each partition's `ends` (its end offset). `facts` tells a new
    /// record's key and not-before time: a record whose time has not come waits, and in a
    /// key-ordered queue one whose key is busy is held. A record already delivered
    /// `max_deliveries` times is dead-lettered instead. Locks that ran out at `now_ms` are
    /// released first.
    pub fn receive(
        &mut self,
        settings: &QueueSettings,
        worker: &str,
        max: u32,
        now_ms: i64,
        ends: &BTreeMap<u32, u64>,
        facts: &mut dyn FnMut(u32, u64) -> RecordFacts,
    ) -> Received {
        let deadline_ms = now_ms + i64::from(settings.lock_ms);
        let mut out = Received {
            deadline_ms,
            ..Received::default()
        };
        for &partition in ends.keys() {
            self.partitions.entry(partition).or_default().expire(now_ms);
        }
        let mut budget = (max as usize).min(self.room(settings, worker));
        self.redeliver_ready(settings, worker, now_ms, &mut budget, &mut out);
        let new = NewRecords {
            ends,
            now_ms,
            facts,
        };
        self.deliver_new(settings, worker, new, &mut budget, &mut out);
        out
    }

    /// Delivers the waiting records whose time has come, oldest offset first, while `budget`
    /// lasts; those already delivered `max_deliveries` times are dead-lettered instead.
    fn redeliver_ready(
        &mut self,
        settings: &QueueSettings,
        worker: &str,
        now_ms: i64,
        budget: &mut usize,
        out: &mut Received,
    ) {
        let mut ready: Vec<(u32, u64)> = self
            .partitions
            .iter()
            .flat_map(|(&p, q)| {
                q.waiting
                    .iter()
                    .filter(|(_, w)| w.not_before_ms <= now_ms)
                    .map(move |(&offset, _)| (p, offset))
            })
            .collect();
        ready.sort_by_key(|&(p, offset)| (offset, p));
        for (partition, offset) in ready {
            if *budget == 0 {
                break;
            }
            let queue = self.partitions.get_mut(&partition).expect("partition");
            let Waiting { count, key, .. } = queue.waiting[&offset];
            out.changed.insert(partition);
            if count >= settings.max_deliveries {
                queue.dead_letter(offset);
                out.dead_lettered.push(DeadLetter {
                    partition,
                    offset,
                    deliveries: count,
                    reason: DeadLetterReason::MaxDeliveries,
                });
                continue;
            }
            let at = At {
                partition,
                offset,
                key,
            };
            queue.waiting.remove(&offset);
            Self::lock(queue, at, count + 1, worker, out);
            *budget -= 1;
        }
    }

    /// Takes records never looked at, one partition after another in turn, up to each
    /// partition's end, while `budget` lasts (and the partition's lookahead has room): delivers
    /// each, or sets it aside (delayed, or held behind its key).
    fn deliver_new(
        &mut self,
        settings: &QueueSettings,
        worker: &str,
        new: NewRecords<'_>,
        budget: &mut usize,
        out: &mut Received,
    ) {
        let NewRecords {
            ends,
            now_ms,
            facts,
        } = new;
        let mut progressed = true;
        while *budget > 0 && progressed {
            progressed = false;
            for (&partition, &end) in ends {
                if *budget == 0 {
                    break;
                }
                let queue = self.partitions.entry(partition).or_default();
                if queue.next >= end || !queue.takes_new(settings) {
                    continue;
                }
                let offset = queue.next;
                queue.next += 1;
                progressed = true;
                out.changed.insert(partition);
                if settings.max_deliveries == 0 {
                    queue.dead_letter(offset);
                    out.dead_lettered.push(DeadLetter {
                        partition,
                        offset,
                        deliveries: 0,
                        reason: DeadLetterReason::MaxDeliveries,
                    });
                    continue;
                }
                let RecordFacts { key, not_before_ms } = facts(partition, offset);
                // The planted bug forgets the queue is key-ordered.
                let key =
                    key.filter(|_| settings.key_ordered && !crate::test_bug("queue-ignore-keys"));
                if let Some(key) = key {
                    if queue.owners.contains_key(&key) {
                        queue.held.insert((key, offset), not_before_ms);
                        continue;
                    }
                    queue.owners.insert(key, offset);
                }
                if not_before_ms > now_ms {
                    let waiting = Waiting {
                        count: 0,
                        not_before_ms,
                        key,
                    };
                    queue.waiting.insert(offset, waiting);
                    continue;
                }
                let at = At {
                    partition,
                    offset,
                    key,
                };
                Self::lock(queue, at, 1, worker, out);
                *budget -= 1;
            }
        }
    }

    fn lock(queue: &mut PartitionQueue, at: At, count: u32, worker: &str, out: &mut Received) {
        queue.locked.insert(
            at.offset,
            Lock {
                worker: worker.to_string(),
                count,
                deadline_ms: out.deadline_ms,
                key: at.key,
            },
        );
        out.delivered.push(Delivery {
            partition: at.partition,
            offset: at.offset,
            count,
        });
    }

    /// The record of `delivery` is done. Accepted while it is that delivery's record to decide
    /// on: locked by it, or waiting after its lock ran out (not delivered again yet), or acked
    /// already (an ack repeated after an unknown outcome). Refused for a record dead-lettered
    /// meanwhile (one of the partition's latest [`DEAD_LETTERS_REMEMBERED`]). True when this
    /// ack finished it.
    pub fn ack(&mut self, delivery: Delivery) -> Result<bool, QueueError> {
        if delivery.count == 0 {
            // Never handed out: a record set aside before its first delivery has count 0.
            return Err(QueueError::UnknownDelivery(delivery));
        }
        let queue = self
            .partitions
            .get_mut(&delivery.partition)
            .ok_or(QueueError::UnknownDelivery(delivery))?;
        match queue.place(delivery.offset) {
            Place::Done if queue.dead_letters.contains(&delivery.offset) => {
                Err(QueueError::AlreadyDone(delivery))
            }
            Place::Done => Ok(false),
            Place::Locked(count) | Place::Waiting(count) if count == delivery.count => {
                queue.finish(delivery.offset);
                Ok(true)
            }
            Place::Locked(count) | Place::Waiting(count) if count > delivery.count => {
                Err(QueueError::Superseded {
                    delivery,
                    current: count,
                })
            }
            _ => Err(QueueError::UnknownDelivery(delivery)),
        }
    }

    /// The worker gives the record back: delivered again after `delay_ms` (0: the settings'
    /// backoff for its delivery count).
    pub fn release(
        &mut self,
        settings: &QueueSettings,
        delivery: Delivery,
        delay_ms: u32,
        now_ms: i64,
    ) -> Result<(), QueueError> {
        let queue = self.current(delivery)?;
        let delay = if delay_ms > 0 {
            delay_ms
        } else {
            let n = delivery.count as usize;
            settings
                .backoff_ms
                .get(n.saturating_sub(1))
                .or(settings.backoff_ms.last())
                .copied()
                .unwrap_or(0)
        };
        let key = queue.forget(delivery.offset);
        queue.waiting.insert(
            delivery.offset,
            Waiting {
                count: delivery.count,
                not_before_ms: now_ms + i64::from(delay),
                key,
            },
        );
        Ok(())
    }

    /// The worker rejects the record: it leaves the queue for the dead letters now.
    pub fn reject(&mut self, delivery: Delivery) -> Result<DeadLetter, QueueError> {
        let queue = self.current(delivery)?;
        queue.dead_letter(delivery.offset);
        Ok(DeadLetter {
            partition: delivery.partition,
            offset: delivery.offset,
            deliveries: delivery.count,
            reason: DeadLetterReason::Rejected,
        })
    }

    /// The worker is still at it: its lock runs for another `lock_ms` from `now_ms`. Refused
    /// once the lock has run out.
    pub fn extend(
        &mut self,
        settings: &QueueSettings,
        delivery: Delivery,
        now_ms: i64,
    ) -> Result<i64, QueueError> {
        let queue = self.current(delivery)?;
        let lock = queue
            .locked
            .get_mut(&delivery.offset)
            .filter(|lock| lock.deadline_ms > now_ms)
            .ok_or(QueueError::LockExpired(delivery))?;
        lock.deadline_ms = now_ms + i64::from(settings.lock_ms);
        Ok(lock.deadline_ms)
    }

    /// The partition of `delivery` when the delivery is the record's current one and not done.
    fn current(&mut self, delivery: Delivery) -> Result<&mut PartitionQueue, QueueError> {
        if delivery.count == 0 {
            return Err(QueueError::UnknownDelivery(delivery));
        }
        let queue = self
            .partitions
            .get_mut(&delivery.partition)
            .ok_or(QueueError::UnknownDelivery(delivery))?;
        match queue.place(delivery.offset) {
            Place::Done => Err(QueueError::AlreadyDone(delivery)),
            Place::Locked(count) | Place::Waiting(count) if count == delivery.count => Ok(queue),
            Place::Locked(count) | Place::Waiting(count) if count > delivery.count => {
                Err(QueueError::Superseded {
                    delivery,
                    current: count,
                })
            }
            _ => Err(QueueError::UnknownDelivery(delivery)),
        }
    }
}

/// What a worker decides about one delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettleAction {
    /// Done: the record leaves the queue.
    Ack,
    /// Try again later: delivered again after `delay_ms` (0: the queue's backoff).
    Release { delay_ms: u32 },
    /// Give up: dead-letter it now, with the worker's error text.
    Reject { error: String },
    /// Still working: the lock runs another `lock_ms`.
    Extend,
}

/// One decision of a settle command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    pub delivery: Delivery,
    pub action: SettleAction,
}

/// A queue group as created: its topic (by name and id, so that a queue outlives neither a
/// deleted topic nor a topic recreated under its name), settings and dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDefinition {
    pub topic: String,
    pub topic_id: u64,
    pub settings: QueueSettings,
    /// Where dead letters go; `None`: they are dropped (and counted).
    pub dead_letter_topic: Option<String>,
    pub created_at_ms: i64,
}

/// A queue group: what it is, what it has done, and where its deliveries stand. Its row holds
/// the definition and the counters; each partition's state has a row of its own (an ack
/// rewrites one small row, not the whole queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queue {
    pub definition: QueueDefinition,
    pub counters: QueueCounters,
    /// Per partition of the dead-letter topic, the first dead letter not redriven yet.
    pub redrive_from: BTreeMap<u32, u64>,
    #[serde(skip)]
    pub state: QueueState,
}

/// What a queue group has done since it was created (deliveries, outcomes), for its metrics and
/// `describe`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounters {
    pub delivered: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub released: u64,
    pub dead_lettered: u64,
    /// Records that left the queue undelivered or unfinished because retention deleted them.
    pub expired: u64,
    /// Dead letters appended to the topic again (`raftlog queue redrive`).
    pub redriven: u64,
    /// Locks that ran out (the record was not settled in time).
    pub lock_timeouts: u64,
}

impl PartitionQueue {
    /// Records below `start` (deleted by retention) leave the queue; returns how many were
    /// waiting or locked (delivered but unfinished) or never delivered.
    pub fn drop_below(&mut self, start: u64) -> u64 {
        if start <= self.floor {
            return 0;
        }
        let mut gone = 0;
        let mut freed = Vec::new();
        for offset in self.floor..start.min(self.next) {
            let unfinished =
                self.locked.contains_key(&offset) || self.waiting.contains_key(&offset);
            if let Some(key) = self.forget(offset) {
                freed.push((key, offset));
            }
            gone += u64::from(unfinished);
            self.done.remove(&offset);
        }
        self.dead_letters.retain(|&offset| offset >= start);
        let before = self.held.len();
        self.held.retain(|&(_, offset), _| offset >= start);
        gone += (before - self.held.len()) as u64;
        gone += start.saturating_sub(self.next);
        self.next = self.next.max(start);
        self.floor = start;
        while self.done.remove(&self.floor) {
            self.floor += 1;
        }
        for (key, offset) in freed {
            self.free_key(key, offset);
        }
        gone
    }
}

impl QueueState {
    /// Whether a receive by `worker` at `now_ms` could hand something out (or set something
    /// aside): room under the in-flight caps and a record never looked at below its
    /// partition's end (with room in the partition's lookahead), or one waiting whose time has
    /// come, or a lock that has run out.
    pub fn ready(
        &self,
        settings: &QueueSettings,
        worker: &str,
        now_ms: i64,
        ends: &BTreeMap<u32, u64>,
    ) -> bool {
        let has_room = self.room(settings, worker) > 0;
        let expired_lock = || {
            self.partitions
                .values()
                .any(|p| p.locked.values().any(|l| l.deadline_ms <= now_ms))
        };
        if !has_room {
            // A lock that ran out frees its room at the receive that finds it.
            return expired_lock();
        }
        let new_records = ends.iter().any(|(partition, &end)| {
            self.partitions
                .get(partition)
                .map_or(end > 0, |p| p.next < end && p.takes_new(settings))
        });
        new_records
            || expired_lock()
            || self
                .partitions
                .values()
                .any(|p| p.waiting.values().any(|w| w.not_before_ms <= now_ms))
    }

    /// About how many records a receive at `now_ms` could hand out, counted up to `limit`:
    /// records never looked at below their partition's end (where the partition takes new
    /// ones), waiting records whose time has come, and locks that ran out. Not the caps, and
    /// not key order (a new record may turn out to be held behind its key).
    pub fn available(
        &self,
        settings: &QueueSettings,
        now_ms: i64,
        ends: &BTreeMap<u32, u64>,
        limit: usize,
    ) -> usize {
        let mut count = 0usize;
        for (partition, &end) in ends {
            count += match self.partitions.get(partition) {
                None => end as usize,
                Some(p) if p.takes_new(settings) => end.saturating_sub(p.next) as usize,
                Some(_) => 0,
            };
            if count >= limit {
                return limit;
            }
        }
        for p in self.partitions.values() {
            count += p
                .waiting
                .values()
                .filter(|w| w.not_before_ms <= now_ms)
                .count();
            count += p
                .locked
                .values()
                .filter(|l| l.deadline_ms <= now_ms)
                .count();
            if count >= limit {
                return limit;
            }
        }
        count
    }

    /// The earliest moment after `now_ms` at which a record becomes ready without anything
    /// else happening: a delay that ends or a lock that runs out.
    pub fn next_ready_ms(&self, now_ms: i64) -> Option<i64> {
        self.partitions
            .values()
            .flat_map(|p| {
                p.waiting
                    .values()
                    .map(|w| w.not_before_ms)
                    .chain(p.locked.values().map(|l| l.deadline_ms))
            })
            .filter(|&at| at > now_ms)
            .min()
    }

    /// Records waiting to be delivered (again: released, or their lock ran out; or for the
    /// first time: delayed by their producer, or next of their key), and of those the ones
    /// whose time has not come at `now_ms`.
    pub fn waiting(&self, now_ms: i64) -> (usize, usize) {
        let mut waiting = 0;
        let mut delayed = 0;
        for w in self.partitions.values().flat_map(|p| p.waiting.values()) {
            waiting += 1;
            if w.not_before_ms > now_ms {
                delayed += 1;
            }
        }
        (waiting, delayed)
    }

    /// Records not finished in each partition's `(start, end)`: never delivered, waiting or
    /// locked.
    pub fn backlog(&self, bounds: &BTreeMap<u32, (u64, u64)>) -> u64 {
        bounds
            .iter()
            .map(
                |(partition, &(start, end))| match self.partitions.get(partition) {
                    None => end.saturating_sub(start),
                    Some(p) => {
                        let from = p.floor.max(start);
                        let done_above = p.done.range(from..).count() as u64;
                        end.saturating_sub(from).saturating_sub(done_above)
                    }
                },
            )
            .sum()
    }
}

#[cfg(test)]
mod tests;
