//! The checker: reads a [`History`] and looks for the anomalies Jepsen's Kafka checker looks for
//! (lost writes, inconsistent offsets, duplicates, non-monotonic sends and polls, skipped
//! offsets, reads of values never or unsuccessfully written, real-time order violations), plus
//! consumer-group offset regressions, and unknown-outcome writes that took effect too late; with
//! the coordinated group's members, the checks of [`crate::group_checks`]. It also tallies outcomes
//! and availability over time.
//!
//! Everything is a hash-map lookup per record or a sort per partition, so a history of a million
//! ops checks in seconds; nothing compares all pairs of operations.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use crate::group_checks::{self, CommitNonOwner, GroupOverlap, Undelivered};
use crate::history::{History, Op, OpF, OpKind, OpValue, Record};
use crate::queue_checks::{self, QueueAnomaly};

/// Examples kept per anomaly kind; the count is always exact.
pub const MAX_EXAMPLES: usize = 1000;
/// Op indexes kept per example, e.g. for an offset read by thousands of polls.
const MAX_OPS: usize = 8;
/// Skipped offsets listed per poll-skip example.
const MAX_SKIPPED: usize = 16;

/// Every anomaly kind that makes a history invalid, in report order.
pub const FATAL_KINDS: [&str; 22] = [
    "lost-write",
    "inconsistent-offsets",
    "duplicate",
    "nonmonotonic-send",
    "nonmonotonic-poll",
    "poll-skip",
    "offset-gap",
    "unexpected-value",
    "g1a",
    "realtime-order",
    "group-offset-regression",
    "late-write",
    "group-double-owner",
    "group-overlap",
    "group-commit-non-owner",
    "group-undelivered",
    "queue-lost",
    "queue-delivered-after-ack",
    "queue-double-lock",
    "queue-delivery-count",
    "queue-dead-letter",
    "queue-key-order",
];

/// How much later than its invocation a write may be stamped by the leader that takes it: the
/// workload's client deadline (no node proposes a write after its deadline, and the stamp comes
/// before the proposal), plus one second for the ms-rounded stamp and the two clocks' reading.
pub const LATE_WRITE_BOUND_MS: i64 = 4_000;

/// Name under which a malformed history shows up in [`CheckResult::anomaly_types`].
pub const MALFORMED_HISTORY: &str = "malformed-history";

/// The exact number of occurrences of one anomaly kind and the first (by partition, offset)
/// [`MAX_EXAMPLES`] of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Examples<T> {
    pub count: usize,
    pub examples: Vec<T>,
}

impl<T> Default for Examples<T> {
    fn default() -> Self {
        Examples {
            count: 0,
            examples: Vec::new(),
        }
    }
}

impl<T> Examples<T> {
    /// Sorted so that results are reproducible despite hash-map iteration order.
    pub(crate) fn sorted_by_key<K: Ord>(mut items: Vec<T>, key: impl FnMut(&T) -> K) -> Self {
        items.sort_by_key(key);
        let count = items.len();
        items.truncate(MAX_EXAMPLES);
        Examples {
            count,
            examples: items,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// An acknowledged send whose value is missing from some node's final read of its partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostWrite {
    pub partition: u32,
    pub value: u64,
    /// The offset the send was acknowledged with.
    pub offset: u64,
    /// The ok completion of the send.
    pub send_op: u64,
    /// Nodes whose final read lacks the value.
    pub nodes: Vec<u64>,
    pub final_read_ops: Vec<u64>,
}

/// Either one offset seen with several values (`offsets` has one element) or one value seen at
/// several offsets (`values` has one element).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InconsistentOffsets {
    pub partition: u32,
    pub offsets: Vec<u64>,
    pub values: Vec<u64>,
    /// Ops that observed the differing facts (send acks or reads), first observer first.
    pub ops: Vec<u64>,
}

/// A value stored at more than one offset, as shown by a single read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duplicate {
    pub partition: u32,
    pub value: u64,
    pub offsets: Vec<u64>,
    /// Reads that contained the value more than once.
    pub ops: Vec<u64>,
}

/// Two successive ok sends of one process to one partition whose offsets did not increase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonmonotonicSend {
    pub process: u64,
    pub partition: u32,
    pub prev_op: u64,
    pub prev_offset: u64,
    pub prev_value: u64,
    pub op: u64,
    pub offset: u64,
    pub value: u64,
}

/// A consumer's reads of a partition went backwards (or repeated an offset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonmonotonicPoll {
    pub process: u64,
    pub partition: u32,
    /// The poll that returned the previous record (may equal `op`).
    pub prev_op: u64,
    pub prev_offset: u64,
    pub op: u64,
    pub offset: u64,
}

/// A consumer's successive records jumped over offsets that exist in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollSkip {
    pub process: u64,
    pub partition: u32,
    pub prev_op: u64,
    pub prev_offset: u64,
    pub op: u64,
    pub offset: u64,
    /// How many existing offsets lie strictly between `prev_offset` and `offset`.
    pub skipped_count: u64,
    /// The first of them.
    pub skipped: Vec<u64>,
}

/// Two consecutive records of a final read whose offsets are not consecutive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetGap {
    pub node: u64,
    pub partition: u32,
    pub op: u64,
    pub prev_offset: u64,
    pub offset: u64,
}

/// A read returned a value that no send to that partition ever tried to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnexpectedValue {
    pub partition: u32,
    pub value: u64,
    pub offset: u64,
    /// The first read that returned it.
    pub op: u64,
}

/// Aborted read: a read returned a value whose send definitely failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct G1a {
    pub partition: u32,
    pub value: u64,
    pub offset: u64,
    /// The first read that returned it.
    pub read_op: u64,
    /// The fail completion of the send.
    pub send_op: u64,
}

/// Send A (by another process) completed before send B was invoked, yet B got the lower offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealtimeOrder {
    pub partition: u32,
    /// Completion of A (the highest offset acknowledged before B began).
    pub earlier_op: u64,
    pub earlier_offset: u64,
    pub earlier_value: u64,
    /// Invocation and completion of B.
    pub later_invoke_op: u64,
    pub later_op: u64,
    pub later_offset: u64,
    pub later_value: u64,
}

/// A fetch of a group's committed offset returned less than a commit or fetch that had completed
/// before the fetch began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOffsetRegression {
    pub group: String,
    pub partition: u32,
    pub prior_f: OpF,
    pub prior_op: u64,
    pub prior_offset: u64,
    /// The ok fetch_committed completion.
    pub op: u64,
    /// What it returned; `None` means it claimed nothing was committed.
    pub offset: Option<u64>,
}

/// A send with an unknown outcome that took effect later than [`LATE_WRITE_BOUND_MS`] after it
/// was invoked: the client had given up on it long before, yet it landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateWrite {
    pub partition: u32,
    pub value: u64,
    pub invoke_op: u64,
    /// ms since the test start.
    pub invoked_ms: i64,
    /// The leader's stamp, ms since the test start.
    pub stamped_ms: i64,
    pub late_by_ms: i64,
}

/// Sends whose outcome was unknown to the client and that the final reads show took effect, with
/// how long after their invocation the leader took them (informational; over the bound is the
/// `late-write` anomaly).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandedUnknowns {
    pub count: u64,
    /// Unknown-outcome sends that the final reads do not hold: they never took effect.
    pub never_landed: u64,
    pub max_late_ms: i64,
    pub bound_ms: i64,
}

/// An acknowledged send that no consumer's poll ever returned (informational).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unseen {
    pub partition: u32,
    pub value: u64,
    pub offset: u64,
    pub send_op: u64,
}

/// Two members of the coordinated group owned one partition at once in one node's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDoubleOwner {
    pub node: u64,
    pub partition: u32,
    pub owners: Vec<String>,
    pub op: u64,
}

/// Every sample of a partition's owners that names more than one member.
fn double_owners(ops: &[Op]) -> Examples<GroupDoubleOwner> {
    let found: Vec<GroupDoubleOwner> = ops
        .iter()
        .filter(|op| op.kind == OpKind::Ok)
        .filter_map(|op| match &op.value {
            OpValue::GroupOwners {
                node,
                partition,
                owners,
            } if owners.len() > 1 => Some(GroupDoubleOwner {
                node: *node,
                partition: *partition,
                owners: owners.clone(),
                op: op.index,
            }),
            _ => None,
        })
        .collect();
    Examples::sorted_by_key(found, |x| (x.partition, x.op))
}

/// The fatal anomalies, one list per kind; serialized under the kinds' Jepsen names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Anomalies {
    pub lost_write: Examples<LostWrite>,
    pub inconsistent_offsets: Examples<InconsistentOffsets>,
    pub duplicate: Examples<Duplicate>,
    pub nonmonotonic_send: Examples<NonmonotonicSend>,
    pub nonmonotonic_poll: Examples<NonmonotonicPoll>,
    pub poll_skip: Examples<PollSkip>,
    pub offset_gap: Examples<OffsetGap>,
    pub unexpected_value: Examples<UnexpectedValue>,
    pub g1a: Examples<G1a>,
    pub realtime_order: Examples<RealtimeOrder>,
    pub group_offset_regression: Examples<GroupOffsetRegression>,
    pub late_write: Examples<LateWrite>,
    pub group_double_owner: Examples<GroupDoubleOwner>,
    pub group_overlap: Examples<GroupOverlap>,
    pub group_commit_non_owner: Examples<CommitNonOwner>,
    pub group_undelivered: Examples<Undelivered>,
    pub queue_lost: Examples<QueueAnomaly>,
    pub queue_delivered_after_ack: Examples<QueueAnomaly>,
    pub queue_double_lock: Examples<QueueAnomaly>,
    pub queue_delivery_count: Examples<QueueAnomaly>,
    pub queue_dead_letter: Examples<QueueAnomaly>,
    pub queue_key_order: Examples<QueueAnomaly>,
}

impl Anomalies {
    /// `(kind, count)` for every kind, in [`FATAL_KINDS`] order.
    pub fn counts(&self) -> [(&'static str, usize); 22] {
        let c = [
            self.lost_write.count,
            self.inconsistent_offsets.count,
            self.duplicate.count,
            self.nonmonotonic_send.count,
            self.nonmonotonic_poll.count,
            self.poll_skip.count,
            self.offset_gap.count,
            self.unexpected_value.count,
            self.g1a.count,
            self.realtime_order.count,
            self.group_offset_regression.count,
            self.late_write.count,
            self.group_double_owner.count,
            self.group_overlap.count,
            self.group_commit_non_owner.count,
            self.group_undelivered.count,
            self.queue_lost.count,
            self.queue_delivered_after_ack.count,
            self.queue_double_lock.count,
            self.queue_delivery_count.count,
            self.queue_dead_letter.count,
            self.queue_key_order.count,
        ];
        std::array::from_fn(|i| (FATAL_KINDS[i], c[i]))
    }
}

/// Outcomes of one `f`; an invocation still pending when the history ends counts as info.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

/// Completions of all kinds of op within one second of test time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvailabilityBucket {
    /// Whole seconds since the start of the test (`time_ns / 1e9`).
    pub second: u64,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// No fatal anomaly and a well-formed history.
    pub valid: bool,
    /// The fatal kinds found (names as in [`FATAL_KINDS`], plus [`MALFORMED_HISTORY`]).
    pub anomaly_types: Vec<String>,
    /// Breaks of the history's own rules (see [`History::validate`]): a harness bug, which makes
    /// every other verdict unreliable.
    pub history_errors: Vec<String>,
    pub anomalies: Anomalies,
    /// Acknowledged values no poll returned. Not fatal: consumers may simply not have caught up;
    /// a value truly gone shows up as a lost write against the final reads.
    pub unseen: Examples<Unseen>,
    #[serde(default)]
    pub landed_unknowns: LandedUnknowns,
    /// Lines each node logged, and its busiest second (set by the run from the nodes' log files;
    /// a node over `logs::LINES_PER_SECOND_MAX` makes the run invalid as `log-flood`).
    #[serde(default)]
    pub node_logs: Vec<crate::logs::LogRate>,
    pub op_counts: BTreeMap<OpF, OutcomeCounts>,
    /// One bucket per second from the first completion to the last, empty seconds included
    /// (a second with no completions at all is the starkest unavailability).
    pub availability: Vec<AvailabilityBucket>,
}

/// A fast hasher for integer keys: SipHash's DoS resistance buys nothing for our own data and
/// costs a noticeable share of the time on large histories.
#[derive(Default, Clone, Copy)]
struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        // The multiply leaves the low bits weak; fold high into low.
        let h = self.0;
        h ^ (h >> 31) ^ (h >> 47)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;
type FastSet<K> = HashSet<K, BuildHasherDefault<IntHasher>>;

/// What is known of the one send of a (partition, value).
struct SendInfo {
    outcome: OpKind,
    /// The completion op, if any.
    completion_op: Option<u64>,
    invoke_op: u64,
    invoke_ns: u64,
}

struct OkSend {
    process: u64,
    partition: u32,
    value: u64,
    offset: u64,
    invoke_pos: usize,
    complete_pos: usize,
    invoke_op: u64,
    op: u64,
}

struct Read<'a> {
    op: u64,
    process: u64,
    partition: u32,
    /// `Some` for a final read.
    node: Option<u64>,
    records: &'a [Record],
}

/// The first thing observed under a key, and any different things observed later.
struct Slot {
    first: u64,
    op: u64,
    others: Vec<(u64, u64)>,
}

fn observe(map: &mut FastMap<(u32, u64), Slot>, key: (u32, u64), x: u64, op: u64) {
    let slot = map.entry(key).or_insert(Slot {
        first: x,
        op,
        others: Vec::new(),
    });
    if slot.first != x && !slot.others.iter().any(|&(y, _)| y == x) {
        slot.others.push((x, op));
    }
}

#[derive(Default)]
struct DupAgg {
    offsets: BTreeSet<u64>,
    ops: Vec<u64>,
}

struct GroupBound {
    complete_pos: usize,
    offset: u64,
    op: u64,
    f: OpF,
}

/// What is known of one (group, partition): facts that bound its committed offset from below,
/// and the fetches to hold to them.
#[derive(Default)]
struct GroupEvents {
    bounds: Vec<GroupBound>,
    fetches: Vec<GroupFetch>,
}

struct GroupFetch {
    invoke_pos: usize,
    offset: Option<u64>,
    op: u64,
}

fn push_capped(v: &mut Vec<u64>, x: u64) {
    if v.len() < MAX_OPS && v.last() != Some(&x) {
        v.push(x);
    }
}

/// Checks a history; see the crate README for what each anomaly means.
pub fn check(history: &History) -> CheckResult {
    let ops = history.ops();
    let (pairs, mut history_errors) = history.pairs_and_errors();

    let mut op_counts: BTreeMap<OpF, OutcomeCounts> = BTreeMap::new();
    let mut sends: FastMap<(u32, u64), SendInfo> = FastMap::default();
    let mut ok_sends: Vec<OkSend> = Vec::new();
    let mut reads: Vec<Read<'_>> = Vec::new();
    let mut groups: BTreeMap<(&str, u32), GroupEvents> = BTreeMap::new();
    // (partition, value) -> the leader's stamp, from final reads that carry stamps.
    let mut stamped: FastMap<(u32, u64), i64> = FastMap::default();

    for pair in &pairs {
        let inv = &ops[pair.invoke];
        let comp: Option<&Op> = pair.completion.map(|c| &ops[c]);
        let kind = comp.map_or(OpKind::Info, |c| c.kind);
        let counts = op_counts.entry(inv.value.f()).or_default();
        match kind {
            OpKind::Ok => counts.ok += 1,
            OpKind::Fail => counts.fail += 1,
            _ => counts.info += 1,
        }
        // A completion whose value is of another kind was reported by validate(); skip it rather
        // than guess.
        let comp = comp.filter(|c| c.value.f() == inv.value.f());
        match &inv.value {
            OpValue::Send {
                partition, value, ..
            } => {
                let key = (*partition, *value);
                if sends.contains_key(&key) {
                    history_errors.push(format!(
                        "op {}: value {value} sent to partition {partition} a second time \
                         (values must be unique)",
                        inv.index
                    ));
                    continue;
                }
                sends.insert(
                    key,
                    SendInfo {
                        outcome: kind,
                        completion_op: comp.map(|c| c.index),
                        invoke_op: inv.index,
                        invoke_ns: inv.time_ns,
                    },
                );
                if let Some(c) = comp.filter(|c| c.kind == OpKind::Ok) {
                    if let OpValue::Send {
                        offset: Some(offset),
                        ..
                    } = c.value
                    {
                        ok_sends.push(OkSend {
                            process: inv.process,
                            partition: *partition,
                            value: *value,
                            offset,
                            invoke_pos: pair.invoke,
                            complete_pos: pair.completion.unwrap_or(pair.invoke),
                            invoke_op: inv.index,
                            op: c.index,
                        });
                    }
                }
            }
            OpValue::Poll { .. } | OpValue::FinalRead { .. } => {
                if let Some(c) = comp.filter(|c| c.kind == OpKind::Ok) {
                    let node = match &c.value {
                        OpValue::FinalRead {
                            node,
                            records,
                            stamps_ms,
                            partition,
                        } => {
                            for (record, stamp) in records.iter().zip(stamps_ms) {
                                stamped.insert((*partition, record.value), *stamp);
                            }
                            Some(*node)
                        }
                        _ => None,
                    };
                    reads.push(Read {
                        op: c.index,
                        process: c.process,
                        partition: c.value.partition(),
                        node,
                        records: c.value.records(),
                    });
                }
            }
            OpValue::CommitOffset {
                group,
                partition,
                offset,
                ..
            } => {
                if let Some(c) = comp.filter(|c| c.kind == OpKind::Ok) {
                    groups
                        .entry((group.as_str(), *partition))
                        .or_default()
                        .bounds
                        .push(GroupBound {
                            complete_pos: pair.completion.unwrap_or(pair.invoke),
                            offset: *offset,
                            op: c.index,
                            f: OpF::CommitOffset,
                        });
                }
            }
            OpValue::FetchCommitted {
                group, partition, ..
            } => {
                if let Some(c) = comp.filter(|c| c.kind == OpKind::Ok) {
                    let OpValue::FetchCommitted { offset, .. } = c.value else {
                        continue;
                    };
                    let entry = groups.entry((group.as_str(), *partition)).or_default();
                    entry.fetches.push(GroupFetch {
                        invoke_pos: pair.invoke,
                        offset,
                        op: c.index,
                    });
                    if let Some(offset) = offset {
                        entry.bounds.push(GroupBound {
                            complete_pos: pair.completion.unwrap_or(pair.invoke),
                            offset,
                            op: c.index,
                            f: OpF::FetchCommitted,
                        });
                    }
                }
            }
            // Checked on their own (`double_owners`, `group_checks`).
            OpValue::GroupOwners { .. } | OpValue::Owns { .. } | OpValue::MemberRead { .. } => {}
            // Checked on their own (`queue_checks`).
            OpValue::QueueDelivery { .. }
            | OpValue::QueueSettle { .. }
            | OpValue::QueueDeadLetter { .. } => {}
        }
    }

    let mut anomalies = Anomalies::default();

    // --- Everything observed about (partition, offset) <-> value, from acks and reads. ---
    let mut by_offset: FastMap<(u32, u64), Slot> = FastMap::default();
    let mut by_value: FastMap<(u32, u64), Slot> = FastMap::default();
    for s in &ok_sends {
        observe(&mut by_offset, (s.partition, s.offset), s.value, s.op);
        observe(&mut by_value, (s.partition, s.value), s.offset, s.op);
    }
    let mut dups: FastMap<(u32, u64), DupAgg> = FastMap::default();
    let mut unexpected: FastMap<(u32, u64), UnexpectedValue> = FastMap::default();
    let mut g1a: FastMap<(u32, u64), G1a> = FastMap::default();
    let mut polled: FastSet<(u32, u64)> = FastSet::default();
    let mut in_this_read: FastMap<u64, u64> = FastMap::default();
    for r in &reads {
        let p = r.partition;
        in_this_read.clear();
        for rec in r.records {
            let key = (p, rec.value);
            observe(&mut by_offset, (p, rec.offset), rec.value, r.op);
            observe(&mut by_value, key, rec.offset, r.op);
            match in_this_read.insert(rec.value, rec.offset) {
                Some(prev) if prev != rec.offset => {
                    let d = dups.entry(key).or_default();
                    d.offsets.insert(prev);
                    d.offsets.insert(rec.offset);
                    push_capped(&mut d.ops, r.op);
                }
                _ => {}
            }
            match sends.get(&key) {
                None => {
                    unexpected.entry(key).or_insert(UnexpectedValue {
                        partition: p,
                        value: rec.value,
                        offset: rec.offset,
                        op: r.op,
                    });
                }
                Some(s) if s.outcome == OpKind::Fail => {
                    g1a.entry(key).or_insert(G1a {
                        partition: p,
                        value: rec.value,
                        offset: rec.offset,
                        read_op: r.op,
                        send_op: s.completion_op.unwrap_or(0),
                    });
                }
                Some(_) => {}
            }
            if r.node.is_none() {
                polled.insert(key);
            }
        }
    }

    let mut inconsistent = Vec::new();
    for (&(p, offset), slot) in &by_offset {
        if slot.others.is_empty() {
            continue;
        }
        let mut ops = vec![slot.op];
        ops.extend(slot.others.iter().map(|&(_, op)| op));
        ops.truncate(MAX_OPS);
        let mut values = vec![slot.first];
        values.extend(slot.others.iter().map(|&(v, _)| v));
        inconsistent.push(InconsistentOffsets {
            partition: p,
            offsets: vec![offset],
            values,
            ops,
        });
    }
    for (&(p, value), slot) in &by_value {
        if slot.others.is_empty() {
            continue;
        }
        // A value a single read showed at several offsets is a duplicate; report it only there,
        // unless it was also seen at an offset that read did not show.
        if let Some(d) = dups.get(&(p, value)) {
            let all_in_dup = d.offsets.contains(&slot.first)
                && slot.others.iter().all(|(o, _)| d.offsets.contains(o));
            if all_in_dup {
                continue;
            }
        }
        let mut ops = vec![slot.op];
        ops.extend(slot.others.iter().map(|&(_, op)| op));
        ops.truncate(MAX_OPS);
        let mut offsets = vec![slot.first];
        offsets.extend(slot.others.iter().map(|&(o, _)| o));
        inconsistent.push(InconsistentOffsets {
            partition: p,
            offsets,
            values: vec![value],
            ops,
        });
    }
    anomalies.inconsistent_offsets = Examples::sorted_by_key(inconsistent, |x| {
        (
            x.partition,
            x.offsets.first().copied(),
            x.values.first().copied(),
            x.offsets.len(),
        )
    });

    anomalies.duplicate = Examples::sorted_by_key(
        dups.into_iter()
            .map(|((partition, value), d)| Duplicate {
                partition,
                value,
                offsets: d.offsets.into_iter().collect(),
                ops: d.ops,
            })
            .collect(),
        |x| (x.partition, x.offsets.first().copied(), x.value),
    );
    anomalies.unexpected_value = Examples::sorted_by_key(unexpected.into_values().collect(), |x| {
        (x.partition, x.offset, x.value)
    });
    anomalies.g1a = Examples::sorted_by_key(g1a.into_values().collect(), |x| {
        (x.partition, x.offset, x.value)
    });

    // --- Final reads: gaps, and which acknowledged values they lack. ---
    let mut ok_by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, s) in ok_sends.iter().enumerate() {
        ok_by_partition.entry(s.partition).or_default().push(i);
    }
    let mut gaps = Vec::new();
    let mut lost: FastMap<(u32, u64), LostWrite> = FastMap::default();
    let mut final_offsets: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut values_here: FastSet<u64> = FastSet::default();
    for r in reads.iter() {
        let Some(node) = r.node else { continue };
        let p = r.partition;
        // Retention may have trimmed the front of the log, so only gaps between records count.
        for w in r.records.windows(2) {
            if w[1].offset != w[0].offset.wrapping_add(1) {
                gaps.push(OffsetGap {
                    node,
                    partition: p,
                    op: r.op,
                    prev_offset: w[0].offset,
                    offset: w[1].offset,
                });
            }
        }
        final_offsets
            .entry(p)
            .or_default()
            .extend(r.records.iter().map(|rec| rec.offset));
        values_here.clear();
        values_here.extend(r.records.iter().map(|rec| rec.value));
        for &i in ok_by_partition.get(&p).map_or(&[][..], |v| &v[..]) {
            let s = &ok_sends[i];
            if values_here.contains(&s.value) {
                continue;
            }
            let l = lost.entry((p, s.value)).or_insert_with(|| LostWrite {
                partition: p,
                value: s.value,
                offset: s.offset,
                send_op: s.op,
                nodes: Vec::new(),
                final_read_ops: Vec::new(),
            });
            if !l.nodes.contains(&node) {
                l.nodes.push(node);
            }
            push_capped(&mut l.final_read_ops, r.op);
        }
    }
    anomalies.offset_gap =
        Examples::sorted_by_key(gaps, |x| (x.partition, x.prev_offset, x.node, x.op));
    anomalies.lost_write = Examples::sorted_by_key(
        lost.into_values()
            .map(|mut l| {
                l.nodes.sort_unstable();
                l
            })
            .collect(),
        |x| (x.partition, x.offset, x.value),
    );

    // --- Consumers: per process and partition, reads must move forward without skipping. ---
    // Offsets known to exist: the final log where there is one, else everything observed.
    let final_partitions: BTreeSet<u32> = final_offsets.keys().copied().collect();
    let mut known = final_offsets;
    for &(p, offset) in by_offset.keys() {
        if !final_partitions.contains(&p) {
            known.entry(p).or_default().push(offset);
        }
    }
    for v in known.values_mut() {
        v.sort_unstable();
        v.dedup();
    }
    let mut nonmono_polls = Vec::new();
    let mut skips = Vec::new();
    let mut position: FastMap<(u64, u32), (u64, u64)> = FastMap::default();
    for r in reads.iter().filter(|r| r.node.is_none()) {
        let p = r.partition;
        for rec in r.records {
            let key = (r.process, p);
            if let Some(&(prev_offset, prev_op)) = position.get(&key) {
                if rec.offset <= prev_offset {
                    nonmono_polls.push(NonmonotonicPoll {
                        process: r.process,
                        partition: p,
                        prev_op,
                        prev_offset,
                        op: r.op,
                        offset: rec.offset,
                    });
                } else if rec.offset > prev_offset + 1 {
                    let k = known.get(&p).map_or(&[][..], |v| &v[..]);
                    let lo = k.partition_point(|&o| o <= prev_offset);
                    let hi = k.partition_point(|&o| o < rec.offset);
                    if hi > lo {
                        skips.push(PollSkip {
                            process: r.process,
                            partition: p,
                            prev_op,
                            prev_offset,
                            op: r.op,
                            offset: rec.offset,
                            skipped_count: (hi - lo) as u64,
                            skipped: k[lo..hi.min(lo + MAX_SKIPPED)].to_vec(),
                        });
                    }
                }
            }
            position.insert(key, (rec.offset, r.op));
        }
    }
    anomalies.nonmonotonic_poll =
        Examples::sorted_by_key(nonmono_polls, |x| (x.partition, x.process, x.op, x.offset));
    anomalies.poll_skip =
        Examples::sorted_by_key(skips, |x| (x.partition, x.process, x.op, x.offset));

    // --- Producers: one process's offsets increase; real-time order across processes. ---
    // A process is sequential, so invocation order is its completion order.
    let mut last_send: FastMap<(u64, u32), usize> = FastMap::default();
    let mut nonmono_sends = Vec::new();
    for (i, s) in ok_sends.iter().enumerate() {
        if let Some(prev) = last_send.insert((s.process, s.partition), i) {
            let prev = &ok_sends[prev];
            if s.offset <= prev.offset {
                nonmono_sends.push(NonmonotonicSend {
                    process: s.process,
                    partition: s.partition,
                    prev_op: prev.op,
                    prev_offset: prev.offset,
                    prev_value: prev.value,
                    op: s.op,
                    offset: s.offset,
                    value: s.value,
                });
            }
        }
    }
    anomalies.nonmonotonic_send =
        Examples::sorted_by_key(nonmono_sends, |x| (x.partition, x.process, x.op));

    let mut realtime = Vec::new();
    for idxs in ok_by_partition.values() {
        let mut by_completion = idxs.clone();
        by_completion.sort_by_key(|&i| ok_sends[i].complete_pos);
        let mut by_invocation = idxs.clone();
        by_invocation.sort_by_key(|&i| ok_sends[i].invoke_pos);
        // The highest offset acknowledged so far, and the highest from any other process, so
        // that a send is compared with the best witness not of its own process (same-process
        // regressions are nonmonotonic-send).
        let mut best: Option<usize> = None;
        let mut runner_up: Option<usize> = None;
        let mut j = 0;
        for &b in &by_invocation {
            let sb = &ok_sends[b];
            while j < by_completion.len() && ok_sends[by_completion[j]].complete_pos < sb.invoke_pos
            {
                let c = by_completion[j];
                j += 1;
                let sc = &ok_sends[c];
                match best {
                    Some(x) if ok_sends[x].offset >= sc.offset => {
                        if ok_sends[x].process != sc.process
                            && runner_up.is_none_or(|y| ok_sends[y].offset < sc.offset)
                        {
                            runner_up = Some(c);
                        }
                    }
                    Some(x) => {
                        if ok_sends[x].process != sc.process {
                            runner_up = Some(x);
                        }
                        best = Some(c);
                    }
                    None => best = Some(c),
                }
            }
            let witness = match best {
                Some(x) if ok_sends[x].process != sb.process => Some(x),
                _ => runner_up,
            };
            if let Some(a) = witness {
                let sa = &ok_sends[a];
                if sb.offset < sa.offset {
                    realtime.push(RealtimeOrder {
                        partition: sb.partition,
                        earlier_op: sa.op,
                        earlier_offset: sa.offset,
                        earlier_value: sa.value,
                        later_invoke_op: sb.invoke_op,
                        later_op: sb.op,
                        later_offset: sb.offset,
                        later_value: sb.value,
                    });
                }
            }
        }
    }
    anomalies.realtime_order =
        Examples::sorted_by_key(realtime, |x| (x.partition, x.later_op, x.earlier_op));

    // --- Consumer groups: a committed offset, once known, never goes back. ---
    let mut regressions = Vec::new();
    for (
        (group, partition),
        GroupEvents {
            mut bounds,
            mut fetches,
        },
    ) in groups
    {
        bounds.sort_by_key(|b| b.complete_pos);
        fetches.sort_by_key(|f| f.invoke_pos);
        let mut best: Option<&GroupBound> = None;
        let mut j = 0;
        for f in &fetches {
            while j < bounds.len() && bounds[j].complete_pos < f.invoke_pos {
                if best.is_none_or(|b| b.offset < bounds[j].offset) {
                    best = Some(&bounds[j]);
                }
                j += 1;
            }
            if let Some(b) = best {
                if f.offset.is_none_or(|o| o < b.offset) {
                    regressions.push(GroupOffsetRegression {
                        group: group.to_owned(),
                        partition,
                        prior_f: b.f,
                        prior_op: b.op,
                        prior_offset: b.offset,
                        op: f.op,
                        offset: f.offset,
                    });
                }
            }
        }
    }
    anomalies.group_offset_regression =
        Examples::sorted_by_key(regressions, |x| (x.group.clone(), x.partition, x.op));

    // --- Informational: acknowledged values no consumer saw. ---
    let unseen = Examples::sorted_by_key(
        ok_sends
            .iter()
            .filter(|s| !polled.contains(&(s.partition, s.value)))
            .map(|s| Unseen {
                partition: s.partition,
                value: s.value,
                offset: s.offset,
                send_op: s.op,
            })
            .collect(),
        |x| (x.partition, x.offset, x.value),
    );

    // --- Unknown outcomes that took effect: never later than the bound after their invocation. ---
    let mut landed_unknowns = LandedUnknowns {
        bound_ms: LATE_WRITE_BOUND_MS,
        ..Default::default()
    };
    let mut late = Vec::new();
    if !stamped.is_empty() {
        for (&(partition, value), send) in &sends {
            if send.outcome != OpKind::Info {
                continue;
            }
            let Some(&stamped_ms) = stamped.get(&(partition, value)) else {
                landed_unknowns.never_landed += 1;
                continue;
            };
            let invoked_ms = (send.invoke_ns / 1_000_000) as i64;
            let late_by_ms = stamped_ms - invoked_ms;
            landed_unknowns.count += 1;
            landed_unknowns.max_late_ms = landed_unknowns.max_late_ms.max(late_by_ms);
            if late_by_ms > LATE_WRITE_BOUND_MS {
                late.push(LateWrite {
                    partition,
                    value,
                    invoke_op: send.invoke_op,
                    invoked_ms,
                    stamped_ms,
                    late_by_ms,
                });
            }
        }
    }
    anomalies.late_write = Examples::sorted_by_key(late, |x| (x.partition, x.invoke_op));
    anomalies.group_double_owner = double_owners(ops);
    anomalies.group_overlap = group_checks::overlaps(ops);
    anomalies.group_commit_non_owner = group_checks::commits_by_non_owners(ops, &pairs);
    anomalies.group_undelivered = group_checks::undelivered(ops);
    let queue = queue_checks::check(ops, &pairs);
    anomalies.queue_lost = queue.lost;
    anomalies.queue_delivered_after_ack = queue.delivered_after_ack;
    anomalies.queue_double_lock = queue.double_lock;
    anomalies.queue_delivery_count = queue.delivery_count;
    anomalies.queue_dead_letter = queue.dead_letter;
    anomalies.queue_key_order = queue.key_order;

    let availability = availability(ops);

    let mut anomaly_types: Vec<String> = anomalies
        .counts()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, _)| (*k).to_owned())
        .collect();
    if !history_errors.is_empty() {
        anomaly_types.push(MALFORMED_HISTORY.to_owned());
        let n = history_errors.len();
        if n > MAX_EXAMPLES {
            history_errors.truncate(MAX_EXAMPLES);
            history_errors.push(format!("... and {} more", n - MAX_EXAMPLES));
        }
    }
    CheckResult {
        valid: anomaly_types.is_empty(),
        anomaly_types,
        history_errors,
        anomalies,
        unseen,
        landed_unknowns,
        node_logs: Vec::new(),
        op_counts,
        availability,
    }
}

/// Dense only while that stays small: a bogus timestamp must not allocate a year of buckets.
const MAX_DENSE_BUCKETS: u64 = 1_000_000;

fn availability(ops: &[Op]) -> Vec<AvailabilityBucket> {
    let mut buckets: BTreeMap<u64, AvailabilityBucket> = BTreeMap::new();
    for op in ops.iter().filter(|op| !op.is_invoke()) {
        let second = op.time_ns / 1_000_000_000;
        let b = buckets.entry(second).or_insert(AvailabilityBucket {
            second,
            ..Default::default()
        });
        match op.kind {
            OpKind::Ok => b.ok += 1,
            OpKind::Fail => b.fail += 1,
            _ => b.info += 1,
        }
    }
    let (Some(&first), Some(&last)) = (buckets.keys().next(), buckets.keys().next_back()) else {
        return Vec::new();
    };
    if last - first >= MAX_DENSE_BUCKETS {
        return buckets.into_values().collect();
    }
    (first..=last)
        .map(|second| {
            buckets.get(&second).copied().unwrap_or(AvailabilityBucket {
                second,
                ..Default::default()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds histories with one millisecond between ops.
    #[derive(Default)]
    struct B {
        h: History,
        t: u64,
    }

    impl B {
        fn tick(&mut self) -> u64 {
            self.t += 1_000_000;
            self.t
        }
        fn inv(&mut self, process: u64, v: OpValue) -> &mut Self {
            let t = self.tick();
            self.h.invoke(t, process, v);
            self
        }
        fn done(&mut self, process: u64, kind: OpKind, v: OpValue) -> &mut Self {
            let t = self.tick();
            self.h.complete(t, process, kind, v);
            self
        }
        fn send_ok(&mut self, process: u64, partition: u32, value: u64, offset: u64) -> &mut Self {
            self.inv(process, OpValue::send(partition, value)).done(
                process,
                OpKind::Ok,
                OpValue::send_ok(partition, value, offset),
            )
        }
        fn send_fail(&mut self, process: u64, partition: u32, value: u64) -> &mut Self {
            self.inv(process, OpValue::send(partition, value)).done(
                process,
                OpKind::Fail,
                OpValue::send(partition, value),
            )
        }
        fn send_info(&mut self, process: u64, partition: u32, value: u64) -> &mut Self {
            self.inv(process, OpValue::send(partition, value)).done(
                process,
                OpKind::Info,
                OpValue::send(partition, value),
            )
        }
        fn poll(&mut self, process: u64, partition: u32, recs: &[(u64, u64)]) -> &mut Self {
            self.inv(process, OpValue::poll(partition)).done(
                process,
                OpKind::Ok,
                OpValue::poll_ok(partition, recs.iter().copied()),
            )
        }
        fn final_read(
            &mut self,
            process: u64,
            node: u64,
            partition: u32,
            recs: &[(u64, u64)],
        ) -> &mut Self {
            self.inv(process, OpValue::final_read(node, partition))
                .done(
                    process,
                    OpKind::Ok,
                    OpValue::final_read_ok(node, partition, recs.iter().copied()),
                )
        }
        fn check(&self) -> CheckResult {
            check(&self.h)
        }
    }

    fn assert_only(r: &CheckResult, kind: &str) {
        assert!(!r.valid, "{kind}: expected invalid: {r:#?}");
        assert_eq!(r.anomaly_types, vec![kind.to_owned()], "{r:#?}");
    }

    #[test]
    fn group_double_owner() {
        // One member per partition is fine, and so is none; two at once on one node is not.
        let mut b = B::default();
        let owners = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        b.inv(7, OpValue::group_owners(1, 0, vec![])).done(
            7,
            OpKind::Ok,
            OpValue::group_owners(1, 0, owners(&["a"])),
        );
        b.inv(7, OpValue::group_owners(2, 1, vec![])).done(
            7,
            OpKind::Ok,
            OpValue::group_owners(2, 1, vec![]),
        );
        assert!(b.check().valid);
        b.inv(7, OpValue::group_owners(3, 0, vec![])).done(
            7,
            OpKind::Ok,
            OpValue::group_owners(3, 0, owners(&["a", "b"])),
        );
        let r = b.check();
        assert_only(&r, "group-double-owner");
        let x = &r.anomalies.group_double_owner.examples[0];
        assert_eq!((x.node, x.partition, x.owners.len()), (3, 0, 2));
    }

    #[test]
    fn lost_write() {
        // Acked at offsets 0..2; one node lost the last, another has all.
        let mut b = B::default();
        b.send_ok(0, 0, 10, 0)
            .send_ok(0, 0, 11, 1)
            .send_ok(0, 0, 12, 2);
        b.final_read(100, 1, 0, &[(0, 10), (1, 11), (2, 12)]);
        b.final_read(100, 2, 0, &[(0, 10), (1, 11)]);
        let r = b.check();
        assert_only(&r, "lost-write");
        let l = &r.anomalies.lost_write.examples;
        assert_eq!(l.len(), 1);
        assert_eq!(
            (l[0].partition, l[0].value, l[0].offset, l[0].send_op),
            (0, 12, 2, 5)
        );
        assert_eq!(l[0].nodes, vec![2]);
        assert_eq!(l[0].final_read_ops, vec![9]);
    }

    #[test]
    fn lost_write_in_other_partition_is_not_checked_without_its_final_read() {
        let mut b = B::default();
        b.send_ok(0, 0, 10, 0).send_ok(0, 1, 11, 0);
        b.final_read(100, 1, 0, &[(0, 10)]);
        let r = b.check();
        assert!(r.valid, "{r:#?}");
    }

    #[test]
    fn inconsistent_offsets_same_offset_two_values() {
        // Offset 0 acknowledged for 10, but a poll saw 11 there (11's send is unknown).
        let mut b = B::default();
        b.send_ok(0, 0, 10, 0).send_info(1, 0, 11);
        b.poll(2, 0, &[(0, 11)]);
        let r = b.check();
        assert_only(&r, "inconsistent-offsets");
        let x = &r.anomalies.inconsistent_offsets.examples[0];
        assert_eq!(
            (x.partition, x.offsets.clone(), x.values.clone()),
            (0, vec![0], vec![10, 11])
        );
        assert_eq!(x.ops, vec![1, 5]);
    }

    #[test]
    fn inconsistent_offsets_same_value_two_offsets() {
        // 10 acknowledged at offset 0, but the final log has it at offset 1.
        let mut b = B::default();
        b.send_ok(0, 0, 10, 0).send_info(1, 0, 11);
        b.final_read(100, 1, 0, &[(0, 11), (1, 10)]);
        let r = b.check();
        assert_only(&r, "inconsistent-offsets");
        let ex = &r.anomalies.inconsistent_offsets.examples;
        // offset 0 -> {10, 11}, offset 1 -> 10 only, value 10 -> {0, 1}
        assert_eq!(r.anomalies.inconsistent_offsets.count, 2, "{ex:?}");
        assert!(ex
            .iter()
            .any(|x| x.values == vec![10] && x.offsets == vec![0, 1]));
    }

    #[test]
    fn duplicate_value_at_two_offsets() {
        let mut b = B::default();
        b.send_ok(0, 0, 10, 0).send_ok(0, 0, 11, 1);
        b.final_read(100, 1, 0, &[(0, 10), (1, 11), (2, 10)]);
        let r = b.check();
        assert_only(&r, "duplicate");
        let d = &r.anomalies.duplicate.examples[0];
        assert_eq!(
            (d.partition, d.value, d.offsets.clone(), d.ops.clone()),
            (0, 10, vec![0, 2], vec![5])
        );
    }

    #[test]
    fn poll_skip() {
        // 0..=3 exist; the consumer reads 0, 1 and then 3.
        let mut b = B::default();
        b.send_ok(0, 0, 10, 0)
            .send_ok(0, 0, 11, 1)
            .send_ok(0, 0, 12, 2)
            .send_ok(0, 0, 13, 3);
        b.poll(5, 0, &[(0, 10), (1, 11)]);
        b.poll(5, 0, &[(3, 13)]);
        b.poll(6, 0, &[(0, 10), (1, 11), (2, 12), (3, 13)]);
        b.final_read(100, 1, 0, &[(0, 10), (1, 11), (2, 12), (3, 13)]);
        let r = b.check();
        assert_only(&r, "poll-skip");
        let s = &r.anomalies.poll_skip.examples[0];
        assert_eq!(
            (s.process, s.prev_offset, s.offset, s.skipped.clone()),
            (5, 1, 3, vec![2])
        );
        assert_eq!((s.prev_op, s.op, s.skipped_count), (9, 11, 1));
    }

    #[test]
    fn poll_skip_within_one_poll_without_final_read() {
        let mut b = B::default();
        b.send_ok(0, 0, 10, 0)
            .send_ok(0, 0, 11, 1)
            .send_ok(0, 0, 12, 2);
        b.poll(5, 0, &[(0, 10), (2, 12)]);
        b.poll(6, 0, &[(0, 10), (1, 11), (2, 12)]);
        let r = b.check();
        assert_only(&r, "poll-skip");
    }

    #[test]
    fn nonmonotonic_poll() {
        let mut b = B::default();
        b.send_ok(0, 0, 10, 0)
            .send_ok(0, 0, 11, 1)
            .send_ok(0, 0, 12, 2);
        b.poll(5, 0, &[(0, 10), (1, 11)]);
        b.poll(5, 0, &[(1, 11), (2, 12)]);
        b.final_read(100, 1, 0, &[(0, 10), (1, 11), (2, 12)]);
        let r = b.check();
        assert_only(&r, "nonmonotonic-poll");
        let x = &r.anomalies.nonmonotonic_poll.examples[0];
        assert_eq!(
            (x.process, x.prev_offset, x.offset, x.prev_op, x.op),
            (5, 1, 1, 7, 9)
        );
    }

    #[test]
    fn nonmonotonic_send() {
        // One process's sends acknowledged with decreasing offsets.
        let mut b = B::default();
        b.send_ok(0, 0, 10, 1).send_ok(0, 0, 11, 0);
        let r = b.check();
        assert_only(&r, "nonmonotonic-send");
        let x = &r.anomalies.nonmonotonic_send.examples[0];
        assert_eq!(
            (x.process, x.prev_offset, x.offset, x.prev_value, x.value),
            (0, 1, 0, 10, 11)
        );
    }

    #[test]
    fn realtime_order() {
        // Process 0's send finished at offset 5 before process 1's began, which got offset 3.
        let mut b = B::default();
        b.send_info(2, 0, 9); // fill-in writers, unknown outcome
        b.send_ok(0, 0, 10, 5).send_ok(1, 0, 11, 3);
        let r = b.check();
        assert_only(&r, "realtime-order");
        let x = &r.anomalies.realtime_order.examples[0];
        assert_eq!(
            (
                x.earlier_offset,
                x.earlier_value,
                x.later_offset,
                x.later_value
            ),
            (5, 10, 3, 11)
        );
        assert_eq!((x.earlier_op, x.later_invoke_op, x.later_op), (3, 4, 5));
    }

    #[test]
    fn concurrent_sends_may_commit_in_any_order() {
        let mut b = B::default();
        b.inv(0, OpValue::send(0, 10)).inv(1, OpValue::send(0, 11));
        b.done(0, OpKind::Ok, OpValue::send_ok(0, 10, 1));
        b.done(1, OpKind::Ok, OpValue::send_ok(0, 11, 0));
        assert!(b.check().valid);
    }

    #[test]
    fn g1a_read_of_failed_send() {
        let mut b = B::default();
        b.send_ok(0, 0, 10, 0).send_fail(0, 0, 11);
        b.poll(5, 0, &[(0, 10), (1, 11)]);
        let r = b.check();
        assert_only(&r, "g1a");
        let x = &r.anomalies.g1a.examples[0];
        assert_eq!((x.value, x.offset, x.read_op, x.send_op), (11, 1, 5, 3));
    }

    #[test]
    fn unexpected_value() {
        let mut b = B::default();
        b.send_ok(0, 0, 10, 0);
        b.poll(5, 0, &[(0, 10), (1, 99)]);
        let r = b.check();
        assert_only(&r, "unexpected-value");
        let x = &r.anomalies.unexpected_value.examples[0];
        assert_eq!((x.value, x.offset, x.op), (99, 1, 3));
    }

    #[test]
    fn value_read_from_wrong_partition_is_unexpected() {
        let mut b = B::default();
        b.send_ok(0, 0, 10, 0);
        b.poll(5, 1, &[(0, 10)]);
        assert_only(&b.check(), "unexpected-value");
    }

    #[test]
    fn offset_gap_in_final_read() {
        let mut b = B::default();
        b.send_ok(0, 0, 10, 0).send_ok(0, 0, 11, 2);
        b.final_read(100, 1, 0, &[(0, 10), (2, 11)]);
        let r = b.check();
        assert_only(&r, "offset-gap");
        let x = &r.anomalies.offset_gap.examples[0];
        assert_eq!((x.node, x.prev_offset, x.offset), (1, 0, 2));
    }

    /// Ticks are 1 ms apart: the info send of value 11 is invoked at 3 ms.
    #[test]
    fn late_write_of_an_unknown_outcome() {
        let stamped = |stamp_11: i64| {
            let mut b = B::default();
            b.send_ok(0, 0, 10, 0).send_info(1, 0, 11);
            b.inv(100, OpValue::final_read(1, 0)).done(
                100,
                OpKind::Ok,
                OpValue::final_read_stamped(1, 0, [(0, 10), (1, 11)], vec![1, stamp_11]),
            );
            b.check()
        };
        let in_time = stamped(3 + LATE_WRITE_BOUND_MS);
        assert!(in_time.valid, "{in_time:#?}");
        assert_eq!(in_time.landed_unknowns.count, 1);
        assert_eq!(in_time.landed_unknowns.max_late_ms, LATE_WRITE_BOUND_MS);

        let r = stamped(40_003);
        assert_only(&r, "late-write");
        let x = &r.anomalies.late_write.examples[0];
        assert_eq!((x.partition, x.value, x.invoke_op), (0, 11, 2));
        assert_eq!(
            (x.invoked_ms, x.stamped_ms, x.late_by_ms),
            (3, 40_003, 40_000)
        );
    }

    #[test]
    fn an_unknown_outcome_that_never_landed_is_not_late() {
        let mut b = B::default();
        b.send_ok(0, 0, 10, 0).send_info(1, 0, 11);
        b.inv(100, OpValue::final_read(1, 0)).done(
            100,
            OpKind::Ok,
            OpValue::final_read_stamped(1, 0, [(0, 10)], vec![1]),
        );
        let r = b.check();
        assert!(r.valid, "{r:#?}");
        assert_eq!(r.landed_unknowns.never_landed, 1);
    }

    #[test]
    fn group_offset_regression_after_commit() {
        let mut b = B::default();
        b.inv(0, OpValue::commit_offset("g", 0, 5)).done(
            0,
            OpKind::Ok,
            OpValue::commit_offset("g", 0, 5),
        );
        b.inv(1, OpValue::fetch_committed("g", 0)).done(
            1,
            OpKind::Ok,
            OpValue::fetch_committed_ok("g", 0, Some(3)),
        );
        let r = b.check();
        assert_only(&r, "group-offset-regression");
        let x = &r.anomalies.group_offset_regression.examples[0];
        assert_eq!(
            (x.prior_f, x.prior_offset, x.offset, x.prior_op, x.op),
            (OpF::CommitOffset, 5, Some(3), 1, 3)
        );
    }

    #[test]
    fn group_offset_regression_between_fetches() {
        let mut b = B::default();
        b.inv(1, OpValue::fetch_committed("g", 0)).done(
            1,
            OpKind::Ok,
            OpValue::fetch_committed_ok("g", 0, Some(7)),
        );
        // A different group's offsets are independent.
        b.inv(1, OpValue::fetch_committed("h", 0)).done(
            1,
            OpKind::Ok,
            OpValue::fetch_committed_ok("h", 0, None),
        );
        b.inv(2, OpValue::fetch_committed("g", 0)).done(
            2,
            OpKind::Ok,
            OpValue::fetch_committed_ok("g", 0, None),
        );
        let r = b.check();
        assert_only(&r, "group-offset-regression");
        assert_eq!(r.anomalies.group_offset_regression.count, 1);
        assert_eq!(
            r.anomalies.group_offset_regression.examples[0].prior_f,
            OpF::FetchCommitted
        );
    }

    #[test]
    fn malformed_history_is_invalid() {
        let mut b = B::default();
        b.send_info(0, 0, 10).send_ok(0, 0, 11, 0);
        let r = b.check();
        assert_only(&r, MALFORMED_HISTORY);
        assert_eq!(r.history_errors.len(), 1);
    }

    /// Two producers racing, a producer that times out and carries on as a new process, a failed
    /// send never read, a consumer reading forward, a committing group, three identical final
    /// reads: all fine.
    #[test]
    fn clean_concurrent_history_is_valid() {
        let mut b = B::default();
        b.inv(0, OpValue::send(0, 10)).inv(1, OpValue::send(0, 11));
        b.inv(2, OpValue::send(0, 12));
        b.done(1, OpKind::Ok, OpValue::send_ok(0, 11, 0));
        b.inv(5, OpValue::poll(0));
        b.done(0, OpKind::Ok, OpValue::send_ok(0, 10, 1));
        b.done(5, OpKind::Ok, OpValue::poll_ok(0, [(0, 11)]));
        b.done(2, OpKind::Info, OpValue::send(0, 12)); // it did land, at offset 2
        b.send_fail(1, 0, 13); // never read
        b.send_ok(3, 0, 14, 3); // process 2 continues as 3
        b.inv(0, OpValue::send(0, 15)); // still pending when the history ends
        b.poll(5, 0, &[(1, 10), (2, 12), (3, 14)]);
        b.inv(5, OpValue::commit_offset("g", 0, 4)).done(
            5,
            OpKind::Ok,
            OpValue::commit_offset("g", 0, 4),
        );
        b.inv(6, OpValue::fetch_committed("g", 0)).done(
            6,
            OpKind::Ok,
            OpValue::fetch_committed_ok("g", 0, Some(4)),
        );
        b.send_ok(1, 1, 20, 0); // another partition, consumed by nobody
        b.poll(7, 0, &[]);
        for node in 1..=3 {
            b.final_read(100, node, 0, &[(0, 11), (1, 10), (2, 12), (3, 14)]);
            b.final_read(100, node, 1, &[(0, 20)]);
        }
        b.inv(101, OpValue::final_read(4, 0))
            .done(101, OpKind::Fail, OpValue::final_read(4, 0));
        let r = b.check();
        assert!(r.valid, "{r:#?}");
        assert!(r.anomaly_types.is_empty());
        assert!(r.history_errors.is_empty());
        assert_eq!(r.unseen.count, 1);
        assert_eq!(r.unseen.examples[0].value, 20);
        let sends = r.op_counts[&OpF::Send];
        assert_eq!((sends.ok, sends.fail, sends.info), (4, 1, 2));
        assert_eq!(
            r.op_counts[&OpF::FinalRead],
            OutcomeCounts {
                ok: 6,
                fail: 1,
                info: 0
            }
        );
        let total: u64 = r.availability.iter().map(|b| b.ok + b.fail + b.info).sum();
        assert_eq!(
            total,
            r.op_counts.values().map(|c| c.ok + c.fail).sum::<u64>() + 1
        );
    }

    #[test]
    fn availability_buckets_are_dense() {
        let mut h = History::new();
        h.invoke(0, 0, OpValue::send(0, 1));
        h.complete(500_000_000, 0, OpKind::Ok, OpValue::send_ok(0, 1, 0));
        h.invoke(600_000_000, 0, OpValue::send(0, 2));
        h.complete(3_200_000_000, 0, OpKind::Fail, OpValue::send(0, 2));
        let r = check(&h);
        let b: Vec<_> = r
            .availability
            .iter()
            .map(|b| (b.second, b.ok, b.fail))
            .collect();
        assert_eq!(b, vec![(0, 1, 0), (1, 0, 0), (2, 0, 0), (3, 0, 1)]);
    }

    #[test]
    fn result_serializes_with_jepsen_names() {
        let mut b = B::default();
        b.send_ok(0, 0, 10, 1).send_ok(0, 0, 11, 0);
        let json = serde_json::to_value(b.check()).unwrap();
        assert_eq!(json["anomalies"]["nonmonotonic-send"]["count"], 1);
        assert_eq!(json["anomaly_types"][0], "nonmonotonic-send");
        assert_eq!(json["op_counts"]["send"]["ok"], 2);
        let back: CheckResult = serde_json::from_value(json).unwrap();
        assert_eq!(back, b.check());
    }

    /// A million-op history: producers, consumers and final reads over 4 partitions. Guards
    /// against accidentally quadratic checks.
    #[test]
    fn large_history_checks_quickly() {
        let mut h = History::new();
        let partitions = 4u32;
        let mut next_offset = vec![0u64; partitions as usize];
        let mut log: Vec<Vec<(u64, u64)>> = vec![Vec::new(); partitions as usize];
        let mut t = 0;
        let mut value = 0u64;
        let mut read_pos = vec![0usize; partitions as usize];
        while h.len() < 1_000_000 {
            for p in 0..partitions {
                for proc in 0..8u64 {
                    value += 1;
                    t += 1000;
                    h.invoke(t, proc * 10 + u64::from(p), OpValue::send(p, value));
                }
                for proc in 0..8u64 {
                    let v = value - 7 + proc;
                    let o = next_offset[p as usize];
                    next_offset[p as usize] += 1;
                    log[p as usize].push((o, v));
                    t += 1000;
                    h.complete(
                        t,
                        proc * 10 + u64::from(p),
                        OpKind::Ok,
                        OpValue::send_ok(p, v, o),
                    );
                }
                let consumer = 1000 + u64::from(p);
                let from = read_pos[p as usize];
                let recs = log[p as usize][from..].to_vec();
                read_pos[p as usize] = log[p as usize].len();
                h.invoke(t, consumer, OpValue::poll(p));
                t += 1000;
                h.complete(t, consumer, OpKind::Ok, OpValue::poll_ok(p, recs));
            }
        }
        for node in 1..=3 {
            for p in 0..partitions {
                t += 1000;
                h.invoke(t, 5000, OpValue::final_read(node, p));
                h.complete(
                    t,
                    5000,
                    OpKind::Ok,
                    OpValue::final_read_ok(node, p, log[p as usize].clone()),
                );
            }
        }
        let start = std::time::Instant::now();
        let r = check(&h);
        let took = start.elapsed();
        assert!(
            r.valid,
            "{:?} {:?}",
            r.anomaly_types,
            r.history_errors.first()
        );
        assert_eq!(r.unseen.count, 0);
        eprintln!("checked {} ops in {took:?}", h.len());
        assert!(took.as_secs() < 30, "check took {took:?}");
    }
}
