//! The checks of the coordinated consumer group (`--members`), on what its members were told
//! and did rather than on any node's state:
//!
//! - `group-overlap`: two members read one partition at once, by the instants their consumers
//!   started and stopped reading it (real time, one clock: the harness's);
//! - `group-commit-non-owner`: a commit by a member was accepted although another member had been
//!   reading that partition since before the commit was sent until after it was answered;
//! - `group-undelivered`: a record of the final log that no member ever read (the members keep
//!   reading after the faults heal until the group has committed every partition's end).
//!
//! A committed offset going backwards is `group-offset-regression`, found by the main checker
//! from the members' commits and the sampled committed offsets.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::checker::Examples;
use crate::history::{Op, OpKind, OpValue, Pair};

/// Two members read one partition at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOverlap {
    pub partition: u32,
    pub member: String,
    /// ms since the start of the test; `to_ms` absent: it never stopped.
    pub from_ms: u64,
    pub to_ms: Option<u64>,
    pub other_member: String,
    pub other_from_ms: u64,
    pub other_to_ms: Option<u64>,
    /// The op that recorded the later of the two starts.
    pub op: u64,
}

/// A member's commit that was accepted while another member owned the partition throughout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitNonOwner {
    pub partition: u32,
    pub member: String,
    pub offset: u64,
    /// The commit's completion.
    pub op: u64,
    /// The member reading the partition since before the commit was sent.
    pub owner: String,
    pub owner_since_ms: u64,
}

/// Records of the final log that no member of the group read, as offset ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undelivered {
    pub partition: u32,
    /// First offset of the range, and one past its last.
    pub from: u64,
    pub to: u64,
}

/// One member's reading of one partition, in ns since the start of the test.
#[derive(Debug, Clone)]
struct Interval {
    member: String,
    from: u64,
    /// `u64::MAX`: never stopped.
    to: u64,
    op: u64,
}

const OPEN: u64 = u64::MAX;

fn ms(ns: u64) -> Option<u64> {
    (ns != OPEN).then_some(ns / 1_000_000)
}

/// Every member's reading intervals, per partition, from the `owns` ops.
fn intervals(ops: &[Op]) -> BTreeMap<u32, Vec<Interval>> {
    let mut events: Vec<(u64, u64, &str, u32, bool)> = ops
        .iter()
        .filter(|op| op.kind == OpKind::Ok)
        .filter_map(|op| match &op.value {
            OpValue::Owns {
                member,
                partition,
                owned,
                at_ns,
            } => Some((*at_ns, op.index, member.as_str(), *partition, *owned)),
            _ => None,
        })
        .collect();
    events.sort();
    let mut open: BTreeMap<(&str, u32), (u64, u64)> = BTreeMap::new();
    let mut out: BTreeMap<u32, Vec<Interval>> = BTreeMap::new();
    for (at, op, member, partition, owned) in events {
        if owned {
            open.entry((member, partition)).or_insert((at, op));
        } else if let Some((from, op)) = open.remove(&(member, partition)) {
            out.entry(partition).or_default().push(Interval {
                member: member.to_owned(),
                from,
                to: at,
                op,
            });
        }
    }
    for ((member, partition), (from, op)) in open {
        out.entry(partition).or_default().push(Interval {
            member: member.to_owned(),
            from,
            to: OPEN,
            op,
        });
    }
    for list in out.values_mut() {
        list.sort_by_key(|i| (i.from, i.op));
    }
    out
}

/// `group-overlap`: intervals of different members of one partition that intersect.
pub fn overlaps(ops: &[Op]) -> Examples<GroupOverlap> {
    let mut found = Vec::new();
    for (partition, list) in intervals(ops) {
        // A sweep by start: only the intervals still open at a start can intersect it.
        let mut open: Vec<&Interval> = Vec::new();
        for later in &list {
            open.retain(|earlier| earlier.to > later.from);
            for earlier in &open {
                if earlier.member != later.member {
                    found.push(GroupOverlap {
                        partition,
                        member: earlier.member.clone(),
                        from_ms: earlier.from / 1_000_000,
                        to_ms: ms(earlier.to),
                        other_member: later.member.clone(),
                        other_from_ms: later.from / 1_000_000,
                        other_to_ms: ms(later.to),
                        op: later.op,
                    });
                }
            }
            open.push(later);
        }
    }
    Examples::sorted_by_key(found, |x| (x.partition, x.op))
}

/// `group-commit-non-owner`: an accepted member commit inside another member's interval.
pub fn commits_by_non_owners(ops: &[Op], pairs: &[Pair]) -> Examples<CommitNonOwner> {
    let by_partition = intervals(ops);
    let mut found = Vec::new();
    for pair in pairs {
        let Some(completion) = pair.completion.map(|c| &ops[c]) else {
            continue;
        };
        if completion.kind != OpKind::Ok {
            continue;
        }
        let invoke = &ops[pair.invoke];
        let OpValue::CommitOffset {
            partition,
            offset,
            member: Some(member),
            ..
        } = &invoke.value
        else {
            continue;
        };
        let Some(list) = by_partition.get(partition) else {
            continue;
        };
        let owner = list
            .iter()
            .find(|i| i.member != *member && i.from < invoke.time_ns && i.to > completion.time_ns);
        if let Some(owner) = owner {
            found.push(CommitNonOwner {
                partition: *partition,
                member: member.clone(),
                offset: *offset,
                op: completion.index,
                owner: owner.member.clone(),
                owner_since_ms: owner.from / 1_000_000,
            });
        }
    }
    Examples::sorted_by_key(found, |x| (x.partition, x.op))
}

/// `group-undelivered`: offsets of the final log (the longest final read of each partition) that
/// no member read. Empty when no member read anything (the workload had no members).
pub fn undelivered(ops: &[Op]) -> Examples<Undelivered> {
    let mut read: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
    let mut members = false;
    for op in ops.iter().filter(|op| op.kind == OpKind::Ok) {
        match &op.value {
            OpValue::MemberRead {
                partition, records, ..
            } => {
                members = true;
                read.entry(*partition)
                    .or_default()
                    .extend(records.iter().map(|r| r.offset));
            }
            OpValue::FinalRead {
                partition, records, ..
            } => {
                let end = records.last().map_or(0, |r| r.offset + 1);
                let e = ends.entry(*partition).or_default();
                *e = (*e).max(end);
            }
            _ => {}
        }
    }
    if !members {
        return Examples::default();
    }
    let mut found = Vec::new();
    let empty = BTreeSet::new();
    for (&partition, &end) in &ends {
        let seen = read.get(&partition).unwrap_or(&empty);
        let mut gap: Option<u64> = None;
        for offset in 0..=end {
            let missing = offset < end && !seen.contains(&offset);
            match (missing, gap) {
                (true, None) => gap = Some(offset),
                (false, Some(from)) => {
                    found.push(Undelivered {
                        partition,
                        from,
                        to: offset,
                    });
                    gap = None;
                }
                _ => {}
            }
        }
    }
    Examples::sorted_by_key(found, |x| (x.partition, x.from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::History;

    const MS: u64 = 1_000_000;

    fn owns(h: &mut History, p: u64, member: &str, partition: u32, owned: bool, at_ms: u64) {
        let v = OpValue::owns(member, partition, owned, at_ms * MS);
        h.invoke(at_ms * MS + 1, p, v.clone());
        h.complete(at_ms * MS + 2, p, OpKind::Ok, v);
    }

    #[test]
    fn overlap_is_two_members_reading_at_once() {
        let mut h = History::new();
        // a reads 0 from 10 to 20 ms; b from 20 (fine: a stopped first); c from 25 while b
        // never stopped: an overlap.
        owns(&mut h, 1, "a", 0, true, 10);
        owns(&mut h, 1, "a", 0, false, 20);
        owns(&mut h, 2, "b", 0, true, 20);
        owns(&mut h, 3, "c", 0, true, 25);
        // A member reading two partitions, and reading one again, is not an overlap.
        owns(&mut h, 1, "a", 1, true, 30);
        owns(&mut h, 1, "a", 1, false, 31);
        owns(&mut h, 1, "a", 1, true, 32);
        let found = overlaps(h.ops());
        assert_eq!(found.count, 1, "{found:?}");
        let x = &found.examples[0];
        assert_eq!((x.member.as_str(), x.other_member.as_str()), ("b", "c"));
        assert_eq!((x.to_ms, x.other_from_ms), (None, 25));
    }

    #[test]
    fn a_commit_inside_another_members_interval_is_caught() {
        let mut h = History::new();
        owns(&mut h, 1, "a", 0, true, 10);
        owns(&mut h, 1, "a", 0, false, 20);
        owns(&mut h, 2, "b", 0, true, 30);
        // a commits at 40-41 ms while b reads partition 0: accepted is an anomaly...
        let c = OpValue::member_commit("g", "a", 0, 5);
        h.invoke(40 * MS, 5, c.clone());
        h.complete(41 * MS, 5, OpKind::Ok, c.clone());
        // ...refused is right.
        h.invoke(42 * MS, 5, c.clone());
        h.complete(43 * MS, 5, OpKind::Fail, c);
        // b's own commit is fine, and so is a's from its own interval.
        let own = OpValue::member_commit("g", "b", 0, 6);
        h.invoke(44 * MS, 6, own.clone());
        h.complete(45 * MS, 6, OpKind::Ok, own);
        let early = OpValue::member_commit("g", "a", 0, 3);
        h.invoke(15 * MS, 7, early.clone());
        h.complete(16 * MS, 7, OpKind::Ok, early);
        let found = commits_by_non_owners(h.ops(), &h.pairs());
        assert_eq!(found.count, 1, "{found:?}");
        let x = &found.examples[0];
        assert_eq!(
            (x.member.as_str(), x.owner.as_str(), x.offset),
            ("a", "b", 5)
        );
    }

    #[test]
    fn a_commit_racing_a_handover_is_not_blamed() {
        // b starts reading while a's commit is in flight: the commit may have been applied before
        // the handover.
        let mut h = History::new();
        let c = OpValue::member_commit("g", "a", 0, 5);
        h.invoke(10 * MS, 5, c.clone());
        owns(&mut h, 2, "b", 0, true, 11);
        h.complete(12 * MS, 5, OpKind::Ok, c);
        assert_eq!(commits_by_non_owners(h.ops(), &h.pairs()).count, 0);
    }

    #[test]
    fn undelivered_ranges_of_the_final_log() {
        let mut h = History::new();
        let fr = OpValue::final_read_ok(1, 0, (0..6).map(|o| (o, o + 100)));
        h.invoke(1, 9, OpValue::final_read(1, 0));
        h.complete(2, 9, OpKind::Ok, fr);
        // Members read 0-1 and 4, 1 twice: 2-3 and 5 never.
        for (member, records) in [("a", vec![0, 1]), ("b", vec![1]), ("a", vec![4])] {
            let v = OpValue::member_read(member, 0, records.iter().map(|&o| (o, o + 100)));
            h.invoke(3, 8, OpValue::member_read(member, 0, []));
            h.complete(4, 8, OpKind::Ok, v);
        }
        let found = undelivered(h.ops());
        let ranges: Vec<(u64, u64)> = found.examples.iter().map(|x| (x.from, x.to)).collect();
        assert_eq!(ranges, vec![(2, 4), (5, 6)]);
        // Without members, nothing to check.
        let mut h = History::new();
        h.invoke(1, 9, OpValue::final_read(1, 0));
        h.complete(2, 9, OpKind::Ok, OpValue::final_read_ok(1, 0, [(0, 1)]));
        assert_eq!(undelivered(h.ops()).count, 0);
    }
}
