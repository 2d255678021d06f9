//! The checks of the queue group (`--queue-workers`), on what its workers were handed and how
//! their settlements ended, and on the dead letters found after healing:
//!
//! - `queue-lost`: a record of the final log of the topic that no worker acked (or may have acked:
//!   an ack with an unknown outcome) and that is not among the dead letters, after the workers
//!   drained the queue once the faults healed;
//! - `queue-delivered-after-ack`: a record handed out by a receive sent after an ack of it was
//!   answered OK;
//! - `queue-double-lock`: a record handed to a worker while another delivery's lock on it was
//!   valid (not run out, not released, rejected or acked), by the leader's clock;
//! - `queue-delivery-count`: a delivery count over the queue's limit, or not above the count of a
//!   delivery of the same record that was handed out before it;
//! - `queue-dead-letter`: a dead letter of a record that was acked, a record dead-lettered twice,
//!   or delivered with a count above the one its dead letter carries (delivered after it left);
//! - `queue-key-order` (key-ordered queues): a record handed out before the previous record of
//!   its key in its partition was done: answered before an ack or reject of that one was even
//!   sent (or, for one dead-lettered for its deliveries, before its last delivery was asked
//!   for). That covers both two records of a key in flight at once and a key's records out of
//!   offset order.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::checker::Examples;
use crate::history::{Op, OpKind, OpValue, Pair};

/// One anomaly of the queue checks: which record, which kind, and the ops that show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueAnomaly {
    pub partition: u32,
    pub offset: u64,
    pub what: String,
    pub ops: Vec<u64>,
}

/// Every queue anomaly, by kind.
#[derive(Debug, Default)]
pub struct QueueAnomalies {
    pub lost: Examples<QueueAnomaly>,
    pub delivered_after_ack: Examples<QueueAnomaly>,
    pub double_lock: Examples<QueueAnomaly>,
    pub delivery_count: Examples<QueueAnomaly>,
    pub dead_letter: Examples<QueueAnomaly>,
    pub key_order: Examples<QueueAnomaly>,
}

/// One delivery as the history shows it.
struct Delivery {
    op: u64,
    count: u32,
    /// The receive was sent / answered (ns since the start).
    sent_ns: u64,
    answered_ns: u64,
    /// The lock's end as far as it is certain: the deadline (pushed by extends answered OK),
    /// or earlier, when an ack, release or reject of it was sent that was answered OK.
    lock_end_ns: i64,
}

#[derive(Default)]
struct RecordEvents {
    deliveries: Vec<Delivery>,
    /// The record's key, as a delivery of it in a key-ordered queue showed it.
    key: Option<String>,
    /// The earliest moment the record may have been done: an ack or reject of it sent that was
    /// answered OK or not at all (ns since the start).
    settled_from_ns: Option<u64>,
    /// (answered at ns, op) of acks answered OK.
    acked_ok: Vec<(u64, u64)>,
    /// An ack was sent whose outcome is unknown (it may have been applied).
    maybe_acked: bool,
    dead_letters: Vec<(u32, String, u64)>,
}

const MS: i64 = 1_000_000;

/// The queue's `max_deliveries` in the workload.
pub const MAX_DELIVERIES: u32 = 4;

/// Runs the queue checks; nothing is found when the history has no queue deliveries (the queue
/// workload did not run).
pub fn check(ops: &[Op], pairs: &[Pair]) -> QueueAnomalies {
    if !ops
        .iter()
        .any(|op| matches!(op.value, OpValue::QueueDelivery { .. }))
    {
        return QueueAnomalies::default();
    }
    check_with(ops, pairs, MAX_DELIVERIES, &final_log(ops))
}

/// The final log of the topic: every offset below the end of the longest final read of each
/// partition.
fn final_log(ops: &[Op]) -> BTreeMap<u32, BTreeSet<u64>> {
    let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
    for op in ops.iter().filter(|op| op.kind == OpKind::Ok) {
        if let OpValue::FinalRead {
            partition, records, ..
        } = &op.value
        {
            let end = records.last().map_or(0, |r| r.offset + 1);
            let e = ends.entry(*partition).or_default();
            *e = (*e).max(end);
        }
    }
    ends.into_iter()
        .map(|(partition, end)| (partition, (0..end).collect()))
        .collect()
}

/// [`check`] with the queue's setting and the final log given.
pub fn check_with(
    ops: &[Op],
    pairs: &[Pair],
    max_deliveries: u32,
    final_log: &BTreeMap<u32, BTreeSet<u64>>,
) -> QueueAnomalies {
    let mut records: BTreeMap<(u32, u64), RecordEvents> = BTreeMap::new();
    let mut settles: Vec<(&Op, Option<&Op>)> = Vec::new();
    for pair in pairs {
        let inv = &ops[pair.invoke];
        let comp = pair.completion.map(|c| &ops[c]);
        match &inv.value {
            OpValue::QueueDelivery {
                partition,
                offset,
                count,
                at_ns,
                deadline_ms,
                key,
                ..
            } => {
                let events = records.entry((*partition, *offset)).or_default();
                events.key = events.key.take().or_else(|| key.clone());
                events.deliveries.push(Delivery {
                    op: inv.index,
                    count: *count,
                    sent_ns: *at_ns,
                    answered_ns: inv.time_ns,
                    lock_end_ns: deadline_ms * MS,
                });
            }
            OpValue::QueueSettle { .. } => settles.push((inv, comp)),
            OpValue::QueueDeadLetter {
                partition,
                offset,
                count,
                reason,
                ..
            } => records
                .entry((*partition, *offset))
                .or_default()
                .dead_letters
                .push((*count, reason.clone(), inv.index)),
            _ => {}
        }
    }
    for (inv, comp) in settles {
        let OpValue::QueueSettle {
            partition,
            offset,
            count,
            action,
            ..
        } = &inv.value
        else {
            continue;
        };
        let events = records.entry((*partition, *offset)).or_default();
        let kind = comp.map_or(OpKind::Info, |c| c.kind);
        if (action == "ack" || action == "reject") && kind != OpKind::Fail {
            let at = events.settled_from_ns.get_or_insert(inv.time_ns);
            *at = (*at).min(inv.time_ns);
        }
        if action == "ack" {
            match (kind, comp) {
                (OpKind::Ok, Some(c)) => events.acked_ok.push((c.time_ns, c.index)),
                (OpKind::Info, _) => events.maybe_acked = true,
                _ => {}
            }
        }
        if kind != OpKind::Ok {
            continue;
        }
        let Some(delivery) = events.deliveries.iter_mut().find(|d| d.count == *count) else {
            continue;
        };
        match (action.as_str(), comp.map(|c| &c.value)) {
            (
                "extend",
                Some(OpValue::QueueSettle {
                    deadline_ms: Some(at),
                    ..
                }),
            ) => delivery.lock_end_ns = delivery.lock_end_ns.max(at * MS),
            ("extend", _) => {}
            // Settled: the lock ended when the settlement applied, after it was sent.
            _ => delivery.lock_end_ns = delivery.lock_end_ns.min(inv.time_ns as i64),
        }
    }
    let mut found = judge(&records, max_deliveries, final_log);
    found.key_order = key_order(&records);
    found
}

/// The `queue-key-order` check: per partition and key, each record's deliveries against the
/// moment the previous record of the key may first have been done.
fn key_order(records: &BTreeMap<(u32, u64), RecordEvents>) -> Examples<QueueAnomaly> {
    let mut by_key: BTreeMap<(u32, &str), Vec<(u64, &RecordEvents)>> = BTreeMap::new();
    for (&(partition, offset), events) in records {
        if let Some(key) = &events.key {
            by_key
                .entry((partition, key))
                .or_default()
                .push((offset, events));
        }
    }
    let mut found = Vec::new();
    for ((partition, key), in_order) in by_key {
        for pair in in_order.windows(2) {
            let ((before, earlier), (offset, later)) = (pair[0], pair[1]);
            // Dead-lettered for its deliveries: at a receive after its last delivery.
            let last_delivery = earlier
                .dead_letters
                .iter()
                .any(|(_, reason, _)| reason == "max-deliveries")
                .then(|| earlier.deliveries.iter().map(|d| d.sent_ns).max())
                .flatten();
            let done_from = [earlier.settled_from_ns, last_delivery]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(u64::MAX);
            for d in later
                .deliveries
                .iter()
                .filter(|d| d.answered_ns < done_from)
            {
                let what = format!(
                    "key {key}: delivered (count {}) before offset {before} of the key was done",
                    d.count
                );
                let mut ops: Vec<u64> = earlier.deliveries.iter().map(|d| d.op).collect();
                ops.push(d.op);
                found.push(QueueAnomaly {
                    partition,
                    offset,
                    what,
                    ops,
                });
            }
        }
    }
    Examples::sorted_by_key(found, |a: &QueueAnomaly| (a.partition, a.offset))
}

// Long: one pass over every record, each check a few lines; split, they would share all of it.
fn judge(
    records: &BTreeMap<(u32, u64), RecordEvents>,
    max_deliveries: u32,
    final_log: &BTreeMap<u32, BTreeSet<u64>>,
) -> QueueAnomalies {
    let mut lost = Vec::new();
    let mut after_ack = Vec::new();
    let mut double_lock = Vec::new();
    let mut counts = Vec::new();
    let mut dead = Vec::new();
    let anomaly = |&(partition, offset): &(u32, u64), what: String, ops: Vec<u64>| QueueAnomaly {
        partition,
        offset,
        what,
        ops,
    };
    let empty = RecordEvents::default();
    let all_keys: BTreeSet<(u32, u64)> = records
        .keys()
        .copied()
        .chain(
            final_log
                .iter()
                .flat_map(|(&p, offsets)| offsets.iter().map(move |&o| (p, o))),
        )
        .collect();
    for key in &all_keys {
        let events = records.get(key).unwrap_or(&empty);
        let in_log = final_log.get(&key.0).is_some_and(|o| o.contains(&key.1));
        if in_log
            && events.acked_ok.is_empty()
            && !events.maybe_acked
            && events.dead_letters.is_empty()
        {
            let ops = events.deliveries.iter().map(|d| d.op).collect();
            lost.push(anomaly(key, "neither acked nor dead-lettered".into(), ops));
        }
        if let Some(&(acked_ns, ack_op)) = events.acked_ok.iter().min() {
            for d in events.deliveries.iter().filter(|d| d.sent_ns > acked_ns) {
                let what = format!("delivered (count {}) after an ack answered OK", d.count);
                after_ack.push(anomaly(key, what, vec![ack_op, d.op]));
            }
        }
        for d in &events.deliveries {
            if d.count > max_deliveries || d.count == 0 {
                let what = format!("delivery count {} (max {max_deliveries})", d.count);
                counts.push(anomaly(key, what, vec![d.op]));
            }
        }
        for a in &events.deliveries {
            for b in &events.deliveries {
                if a.op == b.op {
                    continue;
                }
                // b handed out after a's receive was answered: b's count must be higher.
                if b.sent_ns > a.answered_ns && b.count <= a.count {
                    let what = format!("count {} after count {}", b.count, a.count);
                    counts.push(anomaly(key, what, vec![a.op, b.op]));
                }
                // b's receive was answered before a's lock certainly ended, and b came after a.
                if b.count > a.count && (b.answered_ns as i64) + 2 * MS < a.lock_end_ns {
                    let what = format!(
                        "delivery {} handed out {} ms before delivery {}'s lock ended",
                        b.count,
                        (a.lock_end_ns - b.answered_ns as i64) / MS,
                        a.count
                    );
                    double_lock.push(anomaly(key, what, vec![a.op, b.op]));
                }
            }
        }
        if events.dead_letters.len() > 1 {
            let ops = events.dead_letters.iter().map(|d| d.2).collect();
            dead.push(anomaly(key, "dead-lettered twice".into(), ops));
        }
        if let Some((count, reason, op)) = events.dead_letters.first() {
            if let Some(&(_, ack_op)) = events.acked_ok.first() {
                let what = format!("dead-lettered ({reason}) and acked");
                dead.push(anomaly(key, what, vec![ack_op, *op]));
            }
            for d in events.deliveries.iter().filter(|d| d.count > *count) {
                let what = format!(
                    "delivered (count {}) after dead-lettered at {count}",
                    d.count
                );
                dead.push(anomaly(key, what, vec![*op, d.op]));
            }
        }
    }
    let by_record = |a: &QueueAnomaly| (a.partition, a.offset);
    QueueAnomalies {
        lost: Examples::sorted_by_key(lost, by_record),
        delivered_after_ack: Examples::sorted_by_key(after_ack, by_record),
        double_lock: Examples::sorted_by_key(double_lock, by_record),
        delivery_count: Examples::sorted_by_key(counts, by_record),
        dead_letter: Examples::sorted_by_key(dead, by_record),
        key_order: Examples::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::History;

    const MS: u64 = 1_000_000;

    /// A delivery of (0, offset) with `count`, its receive sent at `sent_ms`, answered 1 ms
    /// later, locked until `deadline_ms`.
    fn delivery(h: &mut History, p: u64, offset: u64, count: u32, sent_ms: u64, deadline_ms: i64) {
        keyed_delivery(h, p, offset, count, sent_ms, deadline_ms, None);
    }

    fn keyed_delivery(
        h: &mut History,
        p: u64,
        offset: u64,
        count: u32,
        sent_ms: u64,
        deadline_ms: i64,
        key: Option<&str>,
    ) {
        let v = OpValue::QueueDelivery {
            member: format!("w{p}"),
            partition: 0,
            offset,
            value: offset,
            count,
            at_ns: sent_ms * MS,
            deadline_ms,
            key: key.map(str::to_string),
        };
        h.invoke((sent_ms + 1) * MS, p, v.clone());
        h.complete((sent_ms + 1) * MS + 1, p, OpKind::Ok, v);
    }

    fn settle(h: &mut History, p: u64, offset: u64, count: u32, action: &str, at_ms: u64) {
        let v = OpValue::QueueSettle {
            member: format!("w{p}"),
            partition: 0,
            offset,
            count,
            action: action.into(),
            deadline_ms: None,
        };
        h.invoke(at_ms * MS, p, v.clone());
        h.complete((at_ms + 1) * MS, p, OpKind::Ok, v);
    }

    fn log(offsets: u64) -> BTreeMap<u32, BTreeSet<u64>> {
        [(0, (0..offsets).collect())].into_iter().collect()
    }

    #[test]
    fn a_clean_history_has_no_anomaly() {
        let mut h = History::new();
        // 0: delivered, lock ran out at 100, delivered again at 150, acked.
        delivery(&mut h, 1, 0, 1, 0, 100);
        delivery(&mut h, 2, 0, 2, 150, 250);
        settle(&mut h, 2, 0, 2, "ack", 160);
        // 1: delivered, released at 20, delivered again at 30 (before the old deadline: fine).
        delivery(&mut h, 1, 1, 1, 0, 100);
        settle(&mut h, 1, 1, 1, "release", 20);
        delivery(&mut h, 3, 1, 2, 30, 130);
        settle(&mut h, 3, 1, 2, "reject", 40);
        let dlq = OpValue::QueueDeadLetter {
            partition: 0,
            offset: 1,
            value: 1,
            count: 2,
            reason: "rejected".into(),
        };
        h.invoke(500 * MS, 9, dlq.clone());
        h.complete(500 * MS + 1, 9, OpKind::Ok, dlq);
        let found = check_with(h.ops(), &h.pairs(), 4, &log(2));
        assert_eq!(
            [
                found.lost.count,
                found.delivered_after_ack.count,
                found.double_lock.count,
                found.delivery_count.count,
                found.dead_letter.count
            ],
            [0; 5]
        );
    }

    #[test]
    fn each_kind_is_found() {
        let mut h = History::new();
        // 0: delivered again while its lock ran (double lock), then after an ack.
        delivery(&mut h, 1, 0, 1, 0, 100);
        delivery(&mut h, 2, 0, 2, 50, 150);
        settle(&mut h, 2, 0, 2, "ack", 60);
        delivery(&mut h, 3, 0, 3, 200, 300);
        // 1: never acked nor dead-lettered (lost); count over the limit.
        delivery(&mut h, 1, 1, 9, 0, 100);
        let found = check_with(h.ops(), &h.pairs(), 4, &log(2));
        assert_eq!(found.double_lock.count, 1, "{:?}", found.double_lock);
        assert_eq!(found.delivered_after_ack.count, 1);
        assert_eq!(found.lost.count, 1);
        assert_eq!(found.lost.examples[0].offset, 1);
        assert_eq!(found.delivery_count.count, 1);
    }

    #[test]
    fn a_key_delivered_out_of_turn_is_found_and_in_turn_is_not() {
        let mut h = History::new();
        // Key a: 0 acked at 50, then 2 handed out at 60 (in turn); 3 handed out at 10, while 2
        // was not even delivered (out of turn). Key b: 1 alone.
        keyed_delivery(&mut h, 1, 0, 1, 0, 100, Some("a"));
        keyed_delivery(&mut h, 2, 1, 1, 0, 100, Some("b"));
        keyed_delivery(&mut h, 3, 3, 1, 10, 110, Some("a"));
        settle(&mut h, 1, 0, 1, "ack", 50);
        keyed_delivery(&mut h, 1, 2, 1, 60, 160, Some("a"));
        settle(&mut h, 1, 2, 1, "ack", 70);
        settle(&mut h, 2, 1, 1, "ack", 70);
        settle(&mut h, 3, 3, 1, "ack", 70);
        let found = check_with(h.ops(), &h.pairs(), 4, &log(4));
        assert_eq!(found.key_order.count, 1, "{:?}", found.key_order);
        assert_eq!(found.key_order.examples[0].offset, 3);
    }
}
