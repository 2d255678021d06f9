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
//! Acquisitions are replicated (a receive is a command): a lock survives a leader change as it
//! is, and no new leader has to wait out locks it may not know of. Time is the leader's stamp in
//! the command (`now_ms`), never a replica's clock: a lock has run out when a command stamped
//! at or after its deadline is applied.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

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
}

/// Where one delivered record stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub worker: String,
    /// Deliveries so far, this one included.
    pub count: u32,
    pub deadline_ms: i64,
}

/// A record to deliver again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// Deliveries so far.
    pub count: u32,
    pub not_before_ms: i64,
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
}

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
}

/// Why an ack, release, reject or extend was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueError {
    /// No such delivery was ever made.
    UnknownDelivery(Delivery),
    /// The record was delivered again since (its lock ran out): the newer delivery decides.
    Superseded { delivery: Delivery, current: u32 },
    /// The record is done (acked or dead-lettered): only an ack of it is accepted again.
    AlreadyDone(Delivery),
    /// Extend of a record whose lock ran out (it may be delivered again any moment).
    LockExpired(Delivery),
}

/// A queue group's delivery state over the partitions of its topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    pub partitions: BTreeMap<u32, PartitionQueue>,
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

    /// Marks `offset` done and moves the floor over the done records at the front.
    fn finish(&mut self, offset: u64) {
        self.locked.remove(&offset);
        self.waiting.remove(&offset);
        self.done.insert(offset);
        while self.done.remove(&self.floor) {
            self.floor += 1;
        }
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

    /// Hands `worker` up to `max` records: first those waiting to be delivered again whose time
    /// has come (oldest offset first), then records never delivered, partition by partition in
    /// turn, up to each partition's `ends` (its end offset). A record already delivered
    /// `max_deliveries` times is dead-lettered instead. Locks that ran out at `now_ms` are
    /// released first.
    pub fn receive(
        &mut self,
        settings: &QueueSettings,
        worker: &str,
        max: u32,
        now_ms: i64,
        ends: &BTreeMap<u32, u64>,
    ) -> Received {
        let deadline_ms = now_ms + i64::from(settings.lock_ms);
        let mut out = Received {
            deadline_ms,
            ..Received::default()
        };
        for &partition in ends.keys() {
            self.partitions.entry(partition).or_default().expire(now_ms);
        }
        let room = (settings.in_flight_max as usize).saturating_sub(self.in_flight());
        let mut budget = (max as usize).min(room);
        self.redeliver_ready(settings, worker, now_ms, &mut budget, &mut out);
        self.deliver_new(settings, worker, ends, &mut budget, &mut out);
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
            let count = queue.waiting.remove(&offset).expect("waiting").count;
            if count >= settings.max_deliveries {
                queue.finish(offset);
                out.dead_lettered.push(DeadLetter {
                    partition,
                    offset,
                    deliveries: count,
                    reason: DeadLetterReason::MaxDeliveries,
                });
                continue;
            }
            Self::lock(queue, partition, offset, count + 1, worker, out);
            *budget -= 1;
        }
    }

    /// Delivers records never delivered, one partition after another in turn, up to each
    /// partition's end, while `budget` lasts.
    fn deliver_new(
        &mut self,
        settings: &QueueSettings,
        worker: &str,
        ends: &BTreeMap<u32, u64>,
        budget: &mut usize,
        out: &mut Received,
    ) {
        let mut progressed = true;
        while *budget > 0 && progressed {
            progressed = false;
            for (&partition, &end) in ends {
                if *budget == 0 {
                    break;
                }
                let queue = self.partitions.entry(partition).or_default();
                if queue.next >= end {
                    continue;
                }
                let offset = queue.next;
                queue.next += 1;
                progressed = true;
                if settings.max_deliveries == 0 {
                    queue.finish(offset);
                    out.dead_lettered.push(DeadLetter {
                        partition,
                        offset,
                        deliveries: 0,
                        reason: DeadLetterReason::MaxDeliveries,
                    });
                } else {
                    Self::lock(queue, partition, offset, 1, worker, out);
                    *budget -= 1;
                }
            }
        }
    }

    fn lock(
        queue: &mut PartitionQueue,
        partition: u32,
        offset: u64,
        count: u32,
        worker: &str,
        out: &mut Received,
    ) {
        queue.locked.insert(
            offset,
            Lock {
                worker: worker.to_string(),
                count,
                deadline_ms: out.deadline_ms,
            },
        );
        out.delivered.push(Delivery {
            partition,
            offset,
            count,
        });
    }

    /// The record of `delivery` is done. Accepted while it is that delivery's record to decide
    /// on: locked by it, or waiting after its lock ran out (not delivered again yet), or done
    /// already (an ack repeated after an unknown outcome). True when this ack finished it.
    pub fn ack(&mut self, delivery: Delivery) -> Result<bool, QueueError> {
        let queue = self
            .partitions
            .get_mut(&delivery.partition)
            .ok_or(QueueError::UnknownDelivery(delivery))?;
        match queue.place(delivery.offset) {
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
        queue.locked.remove(&delivery.offset);
        queue.waiting.insert(
            delivery.offset,
            Waiting {
                count: delivery.count,
                not_before_ms: now_ms + i64::from(delay),
            },
        );
        Ok(())
    }

    /// The worker rejects the record: it leaves the queue for the dead letters now.
    pub fn reject(&mut self, delivery: Delivery) -> Result<DeadLetter, QueueError> {
        let queue = self.current(delivery)?;
        queue.finish(delivery.offset);
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
        for offset in self.floor..start.min(self.next) {
            if self.locked.remove(&offset).is_some() || self.waiting.remove(&offset).is_some() {
                gone += 1;
            }
            self.done.remove(&offset);
        }
        gone += start.saturating_sub(self.next);
        self.next = self.next.max(start);
        self.floor = start;
        while self.done.remove(&self.floor) {
            self.floor += 1;
        }
        gone
    }
}

impl QueueState {
    /// Whether a receive at `now_ms` could hand something out: room under the in-flight cap and
    /// a record never delivered below its partition's end, or one waiting whose time has come,
    /// or a lock that has run out.
    pub fn ready(&self, settings: &QueueSettings, now_ms: i64, ends: &BTreeMap<u32, u64>) -> bool {
        let has_room = self.in_flight() < settings.in_flight_max as usize;
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
                .map_or(end > 0, |p| p.next < end)
        });
        new_records
            || expired_lock()
            || self
                .partitions
                .values()
                .any(|p| p.waiting.values().any(|w| w.not_before_ms <= now_ms))
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

    /// Records waiting to be delivered again (released or lock ran out), and of those the ones
    /// whose delay has not ended at `now_ms`.
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
