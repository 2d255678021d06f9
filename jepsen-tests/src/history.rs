//! The history model: every operation a client performed against the cluster, recorded as an
//! invocation and a completion, plus its JSON-lines file format and the [`Recorder`] that
//! concurrent workload tasks share to append to one history.
//!
//! Outcome semantics follow Jepsen: `ok` means the operation definitely happened, `fail` means it
//! definitely did not, `info` means we cannot know (timeout, lost connection). A process whose
//! operation ended in `info` may still have that operation in flight, so it never issues another
//! one; the client carries on under a fresh process number (see [`Recorder::new_process`]).

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Whether an op is the start of an operation or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Invoke,
    /// The operation definitely took effect.
    Ok,
    /// The operation definitely did not take effect.
    Fail,
    /// Unknown outcome: it may or may not have taken effect, now or later.
    Info,
}

/// The operation performed (Jepsen's `:f`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpF {
    /// Append one value to a partition.
    Send,
    /// A consumer's read of the next records of a partition.
    Poll,
    /// After healing, a full read of one partition from one node.
    FinalRead,
    /// Store a consumer group's offset for a partition.
    CommitOffset,
    /// Read back a consumer group's committed offset for a partition.
    FetchCommitted,
    /// Which members of the coordinated group own a partition, as one node's state shows it.
    GroupOwners,
    /// A member of the coordinated group started or stopped reading a partition, as its
    /// consumer told it (the instant it did, which precedes the op's own time).
    Owns,
    /// What a member of the coordinated group read of a partition.
    MemberRead,
    /// A queue worker was handed a record (one op per record a receive returned).
    QueueDelivery,
    /// A queue worker's ack, release, reject or extend of one delivery.
    QueueSettle,
    /// A dead letter of the queue, as the final read of its dead-letter topic found it.
    QueueDeadLetter,
}

impl OpF {
    pub fn name(self) -> &'static str {
        match self {
            OpF::Send => "send",
            OpF::Poll => "poll",
            OpF::FinalRead => "final_read",
            OpF::CommitOffset => "commit_offset",
            OpF::FetchCommitted => "fetch_committed",
            OpF::GroupOwners => "group_owners",
            OpF::Owns => "owns",
            OpF::MemberRead => "member_read",
            OpF::QueueDelivery => "queue_delivery",
            OpF::QueueSettle => "queue_settle",
            OpF::QueueDeadLetter => "queue_dead_letter",
        }
    }
}

impl fmt::Display for OpF {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One record of a partition as a read returned it. Serialized as `[offset, value]` because reads
/// dominate the size of a history file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "(u64, u64)", into = "(u64, u64)")]
pub struct Record {
    pub offset: u64,
    pub value: u64,
}

impl Record {
    pub fn new(offset: u64, value: u64) -> Self {
        Record { offset, value }
    }
}

impl From<(u64, u64)> for Record {
    fn from((offset, value): (u64, u64)) -> Self {
        Record { offset, value }
    }
}

impl From<Record> for (u64, u64) {
    fn from(r: Record) -> Self {
        (r.offset, r.value)
    }
}

/// The arguments of an invocation or the result of a completion; the variant always matches the
/// op's `f`. Fields that only a completion carries are empty/`None` on the invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OpValue {
    Send {
        partition: u32,
        value: u64,
        /// The offset the log assigned; present on `ok` only.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    Poll {
        partition: u32,
        /// Records in the order received; empty on the invocation.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        records: Vec<Record>,
    },
    FinalRead {
        node: u64,
        partition: u32,
        /// The node's whole partition; empty on the invocation.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        records: Vec<Record>,
        /// For each of `records`: when it was stamped by the leader that took it (the leader's
        /// clock when the write reached it, which is before it was proposed), in ms since the
        /// start of the test. Empty when not recorded.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        stamps_ms: Vec<i64>,
    },
    CommitOffset {
        group: String,
        partition: u32,
        offset: u64,
        /// The coordinated group's member committing (fenced commits), if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        member: Option<String>,
    },
    FetchCommitted {
        group: String,
        partition: u32,
        /// On `ok`: the committed offset, `None` if the group has none for this partition.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    GroupOwners {
        node: u64,
        partition: u32,
        /// On `ok`: the members owning the partition (assigned or being released).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        owners: Vec<String>,
    },
    Owns {
        member: String,
        partition: u32,
        /// Started (true) or stopped (false) reading it.
        owned: bool,
        /// When, in ns since the start of the test.
        at_ns: u64,
    },
    MemberRead {
        member: String,
        partition: u32,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        records: Vec<Record>,
    },
    QueueDelivery {
        /// The worker (one name per worker incarnation).
        member: String,
        partition: u32,
        offset: u64,
        /// The record's value.
        value: u64,
        /// The delivery count the queue gave.
        count: u32,
        /// When the receive that returned it was sent, ns since the start of the test.
        at_ns: u64,
        /// The lock's deadline, ms since the start of the test (the leader's clock).
        deadline_ms: i64,
        /// The record's key, in a key-ordered queue.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    QueueSettle {
        member: String,
        partition: u32,
        offset: u64,
        count: u32,
        /// ack, release, reject or extend.
        action: String,
        /// An extend's new lock deadline (ms since the start of the test), on ok.
        #[serde(skip_serializing_if = "Option::is_none")]
        deadline_ms: Option<i64>,
    },
    QueueDeadLetter {
        /// Where the record came from: its partition and offset in the queue's topic.
        partition: u32,
        offset: u64,
        value: u64,
        /// Deliveries before it was dead-lettered.
        count: u32,
        /// max-deliveries or rejected.
        reason: String,
    },
}

impl OpValue {
    pub fn f(&self) -> OpF {
        match self {
            OpValue::Send { .. } => OpF::Send,
            OpValue::Poll { .. } => OpF::Poll,
            OpValue::FinalRead { .. } => OpF::FinalRead,
            OpValue::CommitOffset { .. } => OpF::CommitOffset,
            OpValue::FetchCommitted { .. } => OpF::FetchCommitted,
            OpValue::GroupOwners { .. } => OpF::GroupOwners,
            OpValue::Owns { .. } => OpF::Owns,
            OpValue::MemberRead { .. } => OpF::MemberRead,
            OpValue::QueueDelivery { .. } => OpF::QueueDelivery,
            OpValue::QueueSettle { .. } => OpF::QueueSettle,
            OpValue::QueueDeadLetter { .. } => OpF::QueueDeadLetter,
        }
    }

    pub fn partition(&self) -> u32 {
        match self {
            OpValue::Send { partition, .. }
            | OpValue::Poll { partition, .. }
            | OpValue::FinalRead { partition, .. }
            | OpValue::CommitOffset { partition, .. }
            | OpValue::FetchCommitted { partition, .. }
            | OpValue::GroupOwners { partition, .. }
            | OpValue::Owns { partition, .. }
            | OpValue::MemberRead { partition, .. }
            | OpValue::QueueDelivery { partition, .. }
            | OpValue::QueueSettle { partition, .. }
            | OpValue::QueueDeadLetter { partition, .. } => *partition,
        }
    }

    /// Invocation of a send.
    pub fn send(partition: u32, value: u64) -> Self {
        OpValue::Send {
            partition,
            value,
            offset: None,
        }
    }

    /// Ok completion of a send.
    pub fn send_ok(partition: u32, value: u64, offset: u64) -> Self {
        OpValue::Send {
            partition,
            value,
            offset: Some(offset),
        }
    }

    /// Invocation of a poll (also its fail/info completion).
    pub fn poll(partition: u32) -> Self {
        OpValue::Poll {
            partition,
            records: Vec::new(),
        }
    }

    /// Ok completion of a poll: `(offset, value)` pairs in the order received.
    pub fn poll_ok(partition: u32, records: impl IntoIterator<Item = (u64, u64)>) -> Self {
        OpValue::Poll {
            partition,
            records: records.into_iter().map(Record::from).collect(),
        }
    }

    /// Invocation of a final read (also its fail/info completion).
    pub fn final_read(node: u64, partition: u32) -> Self {
        OpValue::FinalRead {
            node,
            partition,
            records: Vec::new(),
            stamps_ms: Vec::new(),
        }
    }

    /// Ok completion of a final read.
    pub fn final_read_ok(
        node: u64,
        partition: u32,
        records: impl IntoIterator<Item = (u64, u64)>,
    ) -> Self {
        Self::final_read_stamped(node, partition, records, Vec::new())
    }

    /// Ok completion of a final read with each record's leader stamp (ms since the test start).
    pub fn final_read_stamped(
        node: u64,
        partition: u32,
        records: impl IntoIterator<Item = (u64, u64)>,
        stamps_ms: Vec<i64>,
    ) -> Self {
        OpValue::FinalRead {
            node,
            partition,
            records: records.into_iter().map(Record::from).collect(),
            stamps_ms,
        }
    }

    /// Invocation and completion of an offset commit.
    pub fn commit_offset(group: impl Into<String>, partition: u32, offset: u64) -> Self {
        OpValue::CommitOffset {
            group: group.into(),
            partition,
            offset,
            member: None,
        }
    }

    /// Invocation and completion of a fenced commit by a coordinated group's member.
    pub fn member_commit(
        group: impl Into<String>,
        member: impl Into<String>,
        partition: u32,
        offset: u64,
    ) -> Self {
        OpValue::CommitOffset {
            group: group.into(),
            partition,
            offset,
            member: Some(member.into()),
        }
    }

    /// A member started (`owned`) or stopped reading a partition at `at_ns`.
    pub fn owns(member: impl Into<String>, partition: u32, owned: bool, at_ns: u64) -> Self {
        OpValue::Owns {
            member: member.into(),
            partition,
            owned,
            at_ns,
        }
    }

    /// Invocation (no records) and completion of a member's read.
    pub fn member_read(
        member: impl Into<String>,
        partition: u32,
        records: impl IntoIterator<Item = (u64, u64)>,
    ) -> Self {
        OpValue::MemberRead {
            member: member.into(),
            partition,
            records: records.into_iter().map(Record::from).collect(),
        }
    }

    /// Invocation of a committed-offset fetch (also its fail/info completion).
    pub fn fetch_committed(group: impl Into<String>, partition: u32) -> Self {
        OpValue::FetchCommitted {
            group: group.into(),
            partition,
            offset: None,
        }
    }

    /// Ok completion of a committed-offset fetch; `None` means nothing committed yet.
    pub fn fetch_committed_ok(
        group: impl Into<String>,
        partition: u32,
        offset: Option<u64>,
    ) -> Self {
        OpValue::FetchCommitted {
            group: group.into(),
            partition,
            offset,
        }
    }

    /// A sample of a partition's owners in the coordinated group on `node` (empty: the
    /// invocation, or nobody owns it).
    pub fn group_owners(node: u64, partition: u32, owners: Vec<String>) -> Self {
        OpValue::GroupOwners {
            node,
            partition,
            owners,
        }
    }

    /// The records a read returned (empty for anything that is not a read).
    pub fn records(&self) -> &[Record] {
        match self {
            OpValue::Poll { records, .. }
            | OpValue::FinalRead { records, .. }
            | OpValue::MemberRead { records, .. } => records,
            _ => &[],
        }
    }
}

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawOp")]
pub struct Op {
    /// Position in the history; histories are kept in real-time order, so a lower index
    /// happened earlier.
    pub index: u64,
    /// Nanoseconds since the start of the test (the same clock as nemesis intervals).
    pub time_ns: u64,
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: OpKind,
    pub f: OpF,
    pub value: OpValue,
}

impl Op {
    pub fn is_invoke(&self) -> bool {
        self.kind == OpKind::Invoke
    }
}

/// What a JSON line looks like before its `value` is interpreted according to `f`: every
/// variant's fields, all optional. Cheaper than going through `serde_json::Value` and gives a
/// precise error for a missing field.
#[derive(Deserialize)]
struct RawOp {
    index: u64,
    time_ns: u64,
    process: u64,
    #[serde(rename = "type")]
    kind: OpKind,
    f: OpF,
    value: RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValue {
    partition: Option<u32>,
    value: Option<u64>,
    offset: Option<u64>,
    #[serde(default)]
    records: Vec<Record>,
    #[serde(default)]
    stamps_ms: Vec<i64>,
    node: Option<u64>,
    group: Option<String>,
    #[serde(default)]
    owners: Vec<String>,
    member: Option<String>,
    owned: Option<bool>,
    at_ns: Option<u64>,
    count: Option<u32>,
    deadline_ms: Option<i64>,
    action: Option<String>,
    reason: Option<String>,
    key: Option<String>,
}

impl TryFrom<RawOp> for Op {
    type Error = String;

    fn try_from(raw: RawOp) -> Result<Self, Self::Error> {
        let v = raw.value;
        let f = raw.f;
        let missing = |field: &str| format!("op {}: {f} value lacks `{field}`", raw.index);
        let partition = v.partition.ok_or_else(|| missing("partition"))?;
        let value = match f {
            OpF::Send => OpValue::Send {
                partition,
                value: v.value.ok_or_else(|| missing("value"))?,
                offset: v.offset,
            },
            OpF::Poll => OpValue::Poll {
                partition,
                records: v.records,
            },
            OpF::FinalRead => OpValue::FinalRead {
                node: v.node.ok_or_else(|| missing("node"))?,
                partition,
                records: v.records,
                stamps_ms: v.stamps_ms,
            },
            OpF::GroupOwners => OpValue::GroupOwners {
                node: v.node.ok_or_else(|| missing("node"))?,
                partition,
                owners: v.owners,
            },
            OpF::CommitOffset => OpValue::CommitOffset {
                group: v.group.ok_or_else(|| missing("group"))?,
                partition,
                offset: v.offset.ok_or_else(|| missing("offset"))?,
                member: v.member,
            },
            OpF::Owns => OpValue::Owns {
                member: v.member.ok_or_else(|| missing("member"))?,
                partition,
                owned: v.owned.ok_or_else(|| missing("owned"))?,
                at_ns: v.at_ns.ok_or_else(|| missing("at_ns"))?,
            },
            OpF::MemberRead => OpValue::MemberRead {
                member: v.member.ok_or_else(|| missing("member"))?,
                partition,
                records: v.records,
            },
            OpF::FetchCommitted => OpValue::FetchCommitted {
                group: v.group.ok_or_else(|| missing("group"))?,
                partition,
                offset: v.offset,
            },
            OpF::QueueDelivery => OpValue::QueueDelivery {
                member: v.member.ok_or_else(|| missing("member"))?,
                partition,
                offset: v.offset.ok_or_else(|| missing("offset"))?,
                value: v.value.ok_or_else(|| missing("value"))?,
                count: v.count.ok_or_else(|| missing("count"))?,
                at_ns: v.at_ns.ok_or_else(|| missing("at_ns"))?,
                deadline_ms: v.deadline_ms.ok_or_else(|| missing("deadline_ms"))?,
                key: v.key,
            },
            OpF::QueueSettle => OpValue::QueueSettle {
                member: v.member.ok_or_else(|| missing("member"))?,
                partition,
                offset: v.offset.ok_or_else(|| missing("offset"))?,
                count: v.count.ok_or_else(|| missing("count"))?,
                action: v.action.ok_or_else(|| missing("action"))?,
                deadline_ms: v.deadline_ms,
            },
            OpF::QueueDeadLetter => OpValue::QueueDeadLetter {
                partition,
                offset: v.offset.ok_or_else(|| missing("offset"))?,
                value: v.value.ok_or_else(|| missing("value"))?,
                count: v.count.ok_or_else(|| missing("count"))?,
                reason: v.reason.ok_or_else(|| missing("reason"))?,
            },
        };
        Ok(Op {
            index: raw.index,
            time_ns: raw.time_ns,
            process: raw.process,
            kind: raw.kind,
            f,
            value,
        })
    }
}

/// An invocation and its completion, as positions in [`History::ops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    pub invoke: usize,
    /// `None` when the history ended with the operation still pending: its outcome is unknown,
    /// exactly as if it had completed with `info`.
    pub completion: Option<usize>,
}

/// An ordered list of ops, in real-time order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Op>,
}

impl History {
    pub fn new() -> Self {
        History::default()
    }

    /// Wraps ops as they are; [`History::validate`] reports any whose `index` is not its
    /// position.
    pub fn from_ops(ops: Vec<Op>) -> Self {
        History { ops }
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends an op, numbering it with its position; returns that index.
    pub fn push(&mut self, time_ns: u64, process: u64, kind: OpKind, value: OpValue) -> u64 {
        let index = self.ops.len() as u64;
        self.ops.push(Op {
            index,
            time_ns,
            process,
            kind,
            f: value.f(),
            value,
        });
        index
    }

    pub fn invoke(&mut self, time_ns: u64, process: u64, value: OpValue) -> u64 {
        self.push(time_ns, process, OpKind::Invoke, value)
    }

    pub fn complete(&mut self, time_ns: u64, process: u64, kind: OpKind, value: OpValue) -> u64 {
        assert_ne!(kind, OpKind::Invoke, "a completion cannot be an invocation");
        self.push(time_ns, process, kind, value)
    }

    /// Reads a JSON-lines history; blank lines are skipped.
    pub fn read_from(reader: impl BufRead) -> anyhow::Result<Self> {
        let mut ops = Vec::new();
        for (n, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("reading history line {}", n + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let op: Op = serde_json::from_str(&line)
                .with_context(|| format!("parsing history line {}", n + 1))?;
            ops.push(op);
        }
        Ok(History { ops })
    }

    pub fn write_to(&self, writer: impl Write) -> anyhow::Result<()> {
        let mut w = BufWriter::new(writer);
        for op in &self.ops {
            serde_json::to_writer(&mut w, op)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        Ok(())
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Self::read_from(BufReader::new(file)).with_context(|| format!("loading {}", path.display()))
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        self.write_to(file)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Every invocation with its completion (the next op of the same process), in invocation
    /// order.
    pub fn pairs(&self) -> Vec<Pair> {
        self.pairs_and_errors().0
    }

    /// Ways in which the history breaks its own rules (it would mean the harness, not the
    /// cluster, is wrong, and makes the checker's verdict unreliable). Empty when well-formed.
    pub fn validate(&self) -> Vec<String> {
        self.pairs_and_errors().1
    }

    /// [`History::pairs`] and [`History::validate`] in one pass.
    pub fn pairs_and_errors(&self) -> (Vec<Pair>, Vec<String>) {
        let mut pairs: Vec<Pair> = Vec::new();
        let mut errors = Vec::new();
        // process -> index into `pairs` of its pending invocation
        let mut pending: HashMap<u64, usize> = HashMap::new();
        // processes whose last op was info: they must stay silent
        let mut crashed: HashMap<u64, u64> = HashMap::new();
        for (pos, op) in self.ops.iter().enumerate() {
            if op.index != pos as u64 {
                errors.push(format!("op at position {pos} has index {}", op.index));
            }
            if op.f != op.value.f() {
                errors.push(format!(
                    "op {}: f is {} but value is a {}",
                    op.index,
                    op.f,
                    op.value.f()
                ));
            }
            // Reported once: everything after the first offending op would repeat it.
            if let Some(info_op) = crashed.remove(&op.process) {
                errors.push(format!(
                    "op {}: process {} acts after its op {} ended in info",
                    op.index, op.process, info_op
                ));
            }
            if op.kind == OpKind::Invoke {
                if let Some(&prev) = pending.get(&op.process) {
                    let prev_op = &self.ops[pairs[prev].invoke];
                    errors.push(format!(
                        "op {}: process {} invokes while op {} is pending",
                        op.index, op.process, prev_op.index
                    ));
                }
                pending.insert(op.process, pairs.len());
                pairs.push(Pair {
                    invoke: pos,
                    completion: None,
                });
                continue;
            }
            let Some(p) = pending.remove(&op.process) else {
                errors.push(format!(
                    "op {}: completion by process {} with nothing pending",
                    op.index, op.process
                ));
                continue;
            };
            pairs[p].completion = Some(pos);
            let inv = &self.ops[pairs[p].invoke];
            if inv.value.f() != op.value.f() || inv.value.partition() != op.value.partition() {
                errors.push(format!(
                    "op {}: completion ({} partition {}) does not match invocation {} ({} \
                     partition {})",
                    op.index,
                    op.value.f(),
                    op.value.partition(),
                    inv.index,
                    inv.value.f(),
                    inv.value.partition()
                ));
            }
            if op.kind == OpKind::Ok {
                if let OpValue::Send { offset: None, .. } = op.value {
                    errors.push(format!("op {}: ok send without an offset", op.index));
                }
            }
            if op.kind == OpKind::Info {
                crashed.insert(op.process, op.index);
            }
        }
        (pairs, errors)
    }
}

/// Shared, thread-safe history under construction: workload tasks clone it and record each
/// operation's invocation and completion. Timestamps are taken under the lock, so history order
/// and time order agree.
#[derive(Debug, Clone)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

#[derive(Debug)]
struct RecorderInner {
    start: Instant,
    /// The wall clock at `start`, ms since the Unix epoch: converts the nodes' timestamps.
    start_wall_ms: i64,
    history: Mutex<History>,
    next_process: AtomicU64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// Starts the test clock now.
    pub fn new() -> Self {
        Self::starting_at(Instant::now())
    }

    /// Uses `start` as time zero, e.g. to share a clock with the nemesis schedule.
    pub fn starting_at(start: Instant) -> Self {
        Recorder {
            inner: Arc::new(RecorderInner {
                start,
                start_wall_ms: wall_ms() - start.elapsed().as_millis() as i64,
                history: Mutex::new(History::new()),
                next_process: AtomicU64::new(0),
            }),
        }
    }

    pub fn start(&self) -> Instant {
        self.inner.start
    }

    /// A wall-clock time (ms since the Unix epoch, as nodes stamp records) in ms since time zero.
    pub fn since_start_ms(&self, wall_ms: i64) -> i64 {
        wall_ms - self.inner.start_wall_ms
    }

    /// Nanoseconds since time zero, for nemesis intervals.
    pub fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.inner.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A process number never handed out before: for each new client, and for a client whose
    /// last op ended in info.
    pub fn new_process(&self) -> u64 {
        self.inner.next_process.fetch_add(1, Ordering::Relaxed)
    }

    /// Records an invocation; returns its index.
    pub fn invoke(&self, process: u64, value: OpValue) -> u64 {
        self.record(process, OpKind::Invoke, value)
    }

    /// Records a completion (`Ok`, `Fail` or `Info`); returns its index.
    pub fn complete(&self, process: u64, kind: OpKind, value: OpValue) -> u64 {
        assert_ne!(kind, OpKind::Invoke, "a completion cannot be an invocation");
        self.record(process, kind, value)
    }

    fn record(&self, process: u64, kind: OpKind, value: OpValue) -> u64 {
        let mut h = self.inner.history.lock().unwrap_or_else(|e| e.into_inner());
        let t = self.elapsed_ns();
        h.push(t, process, kind, value)
    }

    /// A copy of the history so far.
    pub fn history(&self) -> History {
        self.inner
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Writes the history so far to a JSON-lines file.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        self.history().write(path)
    }
}

/// This machine's wall clock, ms since the Unix epoch.
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Parses a history and fails on the first malformed line or rule violation; handy in tools that
/// refuse to check a broken history.
pub fn load_valid(path: &Path) -> anyhow::Result<History> {
    let h = History::load(path)?;
    let errors = h.validate();
    if let Some(first) = errors.first() {
        bail!(
            "{}: {} history errors, first: {first}",
            path.display(),
            errors.len()
        );
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn sample() -> History {
        let mut h = History::new();
        h.invoke(10, 0, OpValue::send(0, 7));
        h.invoke(11, 1, OpValue::poll(0));
        h.complete(20, 0, OpKind::Ok, OpValue::send_ok(0, 7, 0));
        h.complete(21, 1, OpKind::Ok, OpValue::poll_ok(0, [(0, 7)]));
        h.invoke(30, 0, OpValue::send(1, 8));
        h.complete(40, 0, OpKind::Info, OpValue::send(1, 8));
        h.invoke(50, 2, OpValue::commit_offset("g", 0, 1));
        h.complete(51, 2, OpKind::Ok, OpValue::commit_offset("g", 0, 1));
        h.invoke(52, 2, OpValue::fetch_committed("g", 0));
        h.complete(
            53,
            2,
            OpKind::Ok,
            OpValue::fetch_committed_ok("g", 0, Some(1)),
        );
        h.invoke(54, 2, OpValue::fetch_committed("g", 1));
        h.complete(55, 2, OpKind::Ok, OpValue::fetch_committed_ok("g", 1, None));
        h.invoke(60, 3, OpValue::final_read(1, 0));
        h.complete(70, 3, OpKind::Ok, OpValue::final_read_ok(1, 0, [(0, 7)]));
        h.invoke(80, 3, OpValue::final_read(2, 0));
        h.complete(90, 3, OpKind::Fail, OpValue::final_read(2, 0));
        h
    }

    #[test]
    fn json_lines_round_trip() {
        let h = sample();
        let mut buf = Vec::new();
        h.write_to(&mut buf).unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        assert_eq!(text.lines().count(), h.len());
        assert!(text
            .lines()
            .next()
            .unwrap()
            .contains(r#""type":"invoke","f":"send""#));
        assert!(text.contains(r#""records":[[0,7]]"#), "{text}");
        let back = History::read_from(&buf[..]).unwrap();
        assert_eq!(back, h);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        h.write(&path).unwrap();
        assert_eq!(History::load(&path).unwrap(), h);
        assert_eq!(load_valid(&path).unwrap(), h);
    }

    #[test]
    fn parses_hand_written_lines() {
        let text = r#"
{"index":0,"time_ns":1,"process":4,"type":"invoke","f":"send","value":{"partition":2,"value":9}}
{"index":1,"time_ns":2,"process":4,"type":"ok","f":"send","value":{"partition":2,"value":9,"offset":5}}
"#;
        let h = History::read_from(text.as_bytes()).unwrap();
        assert_eq!(h.ops()[1].value, OpValue::send_ok(2, 9, 5));
        assert!(h.validate().is_empty());

        let bad = r#"{"index":0,"time_ns":1,"process":4,"type":"invoke","f":"send","value":{"partition":2}}"#;
        let err = format!("{:#}", History::read_from(bad.as_bytes()).unwrap_err());
        assert!(err.contains("lacks `value`"), "{err}");
    }

    /// The README's example lines must stay parseable and well-formed.
    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../README.md");
        let lines: String = readme
            .lines()
            .filter(|l| l.starts_with(r#"{"index""#))
            .map(|l| format!("{l}\n"))
            .collect();
        let h = History::read_from(lines.as_bytes()).unwrap();
        assert_eq!(h.len(), 10);
        assert!(h.validate().is_empty(), "{:?}", h.validate());
        let fs: HashSet<OpF> = h.ops().iter().map(|o| o.f).collect();
        assert_eq!(fs.len(), 5);
    }

    #[test]
    fn pairs_by_process() {
        let h = sample();
        let pairs = h.pairs();
        assert_eq!(pairs.len(), 8);
        assert_eq!(
            pairs[0],
            Pair {
                invoke: 0,
                completion: Some(2)
            }
        );
        assert_eq!(
            pairs[1],
            Pair {
                invoke: 1,
                completion: Some(3)
            }
        );
        assert!(h.validate().is_empty(), "{:?}", h.validate());
    }

    #[test]
    fn validate_catches_rule_breaks() {
        let mut h = History::new();
        h.invoke(1, 0, OpValue::send(0, 1));
        h.complete(2, 0, OpKind::Info, OpValue::send(0, 1));
        h.invoke(3, 0, OpValue::send(0, 2)); // acts after info
        h.complete(4, 5, OpKind::Ok, OpValue::poll(0)); // nothing pending
        h.invoke(5, 6, OpValue::poll(0));
        h.complete(6, 6, OpKind::Ok, OpValue::poll(1)); // partition mismatch
        let errors = h.validate();
        assert_eq!(errors.len(), 3, "{errors:?}");
    }

    #[test]
    fn recorder_numbers_and_orders_ops() {
        let r = Recorder::new();
        let p = r.new_process();
        let q = r.new_process();
        assert_ne!(p, q);
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    let p = r.new_process();
                    for i in 0..100 {
                        r.invoke(p, OpValue::send(0, t * 1000 + i));
                        r.complete(p, OpKind::Fail, OpValue::send(0, t * 1000 + i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let h = r.history();
        assert_eq!(h.len(), 800);
        assert!(h.validate().is_empty());
        assert!(h.ops().windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
    }
}
