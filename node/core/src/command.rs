//! The replicated commands: what goes into the Raft log and what applying it answers.
//!
//! This is an on-disk and on-wire format (log entries, snapshots): add variants and fields only at
//! the end, never reorder (postcard encodes enum variants by position). A change here must be
//! flagged in the commit message.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::auth::{Acl, CreationCaps, Quota, TokenRecord};
use crate::coordination::{topic_name, Answer, GroupError, Heartbeat, Stamp, Topics};
use crate::queue::{QueueDefinition, QueueError, Received, Settlement};

/// One record as stored: the payload is kept as `Bytes` end to end. Decoded inside
/// [`shared::decoding_from`], its key and value share the message they were decoded from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(deserialize_with = "shared::optional_bytes")]
    pub key: Option<Bytes>,
    #[serde(deserialize_with = "shared::bytes")]
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
    pub timestamp_ms: i64,
}

/// Decoding records without copying their payloads out of a buffer this node keeps anyway.
///
/// A follower keeps each AppendEntries it receives, as the stored bytes of its entries
/// (the store's `ReceivedEncodings`). Decoded the ordinary way, every record's key and
/// value would be copied out of that message into an allocation of its own (serde's `Bytes`
/// cannot borrow from the buffer being decoded): one allocation and copy per record, on every
/// follower. Within [`decoding_from`] they are slices of the message instead. serde gives a
/// visitor only a borrowed `&[u8]`, not the `Bytes` it lies in, so the source is named to the
/// visitor through a thread-local for the duration of the call; bytes from anywhere else are
/// copied, as without it. The encoding is the one `Bytes` has (length-prefixed bytes).
pub mod shared {
    use std::cell::RefCell;
    use std::fmt;

    use bytes::Bytes;
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};

    thread_local! {
        static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
    }

    /// Runs `decode` with `source` as the buffer that decoded record payloads may share.
    pub fn decoding_from<R>(source: &Bytes, decode: impl FnOnce() -> R) -> R {
        /// Clears the source however `decode` ends.
        struct Reset(Option<Bytes>);
        impl Drop for Reset {
            fn drop(&mut self) {
                SOURCE.with(|s| *s.borrow_mut() = self.0.take());
            }
        }
        let previous = SOURCE.with(|s| s.borrow_mut().replace(source.clone()));
        let _reset = Reset(previous);
        decode()
    }

    /// `bytes` as a slice of the current source when it lies inside it, else a copy.
    fn share_or_copy(bytes: &[u8]) -> Bytes {
        SOURCE.with(|source| match &*source.borrow() {
            Some(source)
                if source.as_ptr_range().contains(&bytes.as_ptr())
                    && bytes.as_ptr_range().end <= source.as_ptr_range().end =>
            {
                source.slice_ref(bytes)
            }
            _ => Bytes::copy_from_slice(bytes),
        })
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Bytes;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
            Ok(share_or_copy(v))
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }

        /// Formats that write bytes as a list of numbers.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(byte) = seq.next_element::<u8>()? {
                out.push(byte);
            }
            Ok(Bytes::from(out))
        }
    }

    pub fn bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        deserializer.deserialize_bytes(BytesVisitor)
    }

    struct OptionalBytesVisitor;

    impl<'de> Visitor<'de> for OptionalBytesVisitor {
        type Value = Option<Bytes>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("optional bytes")
        }

        fn visit_none<E: Error>(self) -> Result<Option<Bytes>, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Option<Bytes>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<Bytes>, D::Error> {
            bytes(d).map(Some)
        }
    }

    pub fn optional_bytes<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Bytes>, D::Error> {
        deserializer.deserialize_option(OptionalBytesVisitor)
    }
}

impl Record {
    /// Bytes this record counts against size limits: key, value and headers.
    pub fn size_bytes(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.len())
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// Settings of a topic fixed or changed through the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSettings {
    pub partitions: u32,
    /// Retention by age in milliseconds; 0 keeps records forever.
    pub retention_ms: u64,
    /// Retention by size per partition in bytes; 0 means no size limit.
    pub retention_bytes: u64,
    /// Largest record this topic accepts; never above the cluster's `record_bytes_max`.
    pub max_record_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create a topic; fails deterministically if the name exists or the topic limit is reached.
    CreateTopic {
        name: String,
        settings: TopicSettings,
        /// Topic count limit at the time of the request, so apply stays deterministic even if
        /// nodes run with different configs.
        topics_max: u32,
    },
    /// Append one batch to one partition; the batch gets consecutive offsets from the
    /// partition's end offset.
    Append {
        topic: String,
        partition: u32,
        records: Vec<Record>,
        /// Leader's wall clock when it proposed the batch, used for records with no timestamp,
        /// so every node stamps the same value (apply never reads the clock).
        proposed_at_ms: i64,
        /// Idempotent produce: the producer and the sequence of the batch's first record.
        producer: Option<ProducerSequence>,
        /// Conditional append: the partition's end offset must equal this.
        expected_end_offset: Option<u64>,
    },
    /// Delete a topic, its stored batches and every group's offsets for it.
    DeleteTopic { name: String },
    /// Store a consumer group's committed offsets for partitions of one topic, unconditionally.
    /// No longer proposed (see [`Command::CommitGroupOffsets`]); kept, with its meaning, for the
    /// entries that logs and snapshots written before still hold.
    CommitOffsets {
        group: String,
        topic: String,
        /// (partition, next offset to read), partitions distinct.
        offsets: Vec<(u32, u64)>,
        /// Leader's wall clock when it proposed the commit.
        committed_at_ms: i64,
        /// Group count limit at the time of the request (see `topics_max`).
        groups_max: u32,
    },
    /// Change a topic's retention; `None` keeps the current value.
    AlterTopic {
        name: String,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    },
    /// Grant a new producer id.
    InitProducer { now_ms: i64, producers_max: u32 },
    /// The leader's periodic housekeeping, deterministic from its arguments: delete batches that
    /// fall out of their topic's retention (moving start offsets) and forget producers idle for
    /// longer than `producer_idle_ms` at `now_ms`.
    Maintenance { now_ms: i64, producer_idle_ms: u64 },
    /// Group commit: several commands (appends only) proposed as one entry, applied in order;
    /// each gets its own response, as if it had been its own entry.
    ///
    /// Shared, because an entry is read out of the log's cache once per follower and once more
    /// for the state machine: an `Arc` makes each of those reads one reference count instead of a
    /// copy of dozens of commands (a topic name and a record list each). serde writes an `Arc`
    /// as what it holds, so the encoding is that of a plain list.
    Batch(Arc<[Command]>),
    /// Store a consumer group's committed offsets for partitions of one topic. Each offset must
    /// be at most the partition's end offset when the command applies; unless `allow_rewind`,
    /// none may be below the offset the group has committed (a late or repeated commit must not
    /// move the group back: only an explicit seek or reset does). All or nothing.
    CommitGroupOffsets {
        group: String,
        topic: String,
        /// (partition, next offset to read), partitions distinct.
        offsets: Vec<(u32, u64)>,
        /// Leader's wall clock when it proposed the commit.
        committed_at_ms: i64,
        /// Group count limit at the time of the request (see `topics_max`).
        groups_max: u32,
        allow_rewind: bool,
    },
    /// Forget a consumer group: every offset it committed.
    DeleteGroup { group: String },
    /// A heartbeat of a coordinated group's member that changes the group (a join, a leave, a
    /// new subscription, partitions released), stamped by the leader that proposed it (its
    /// clock, the id a joining member gets, the limits): see [`crate::coordination`].
    GroupHeartbeat {
        group: String,
        /// Boxed, as `stamp`: a command is as large as its largest variant, and appends (the
        /// hot path) are much smaller.
        heartbeat: Box<Heartbeat>,
        stamp: Box<Stamp>,
        /// Group count limit at the time of the request (see `topics_max`).
        groups_max: u32,
    },
    /// The leader heard nothing from a member within its group's session timeout: the member
    /// leaves the group, if it is still the incarnation the leader judged (`member_epoch`).
    ExpireGroupMember {
        group: String,
        member_id: String,
        member_epoch: u64,
    },
    /// An operator removes a member: its partitions are free at once.
    RemoveGroupMember { group: String, member_id: String },
    /// [`Command::CommitGroupOffsets`], fenced by group membership: with a `member` (id, epoch)
    /// refused unless that member owns every partition committed; without one refused while
    /// the group has members (a "simple" group's commit, a seek or a reset).
    CommitFencedOffsets {
        group: String,
        topic: String,
        /// (partition, next offset to read), partitions distinct.
        offsets: Vec<(u32, u64)>,
        committed_at_ms: i64,
        groups_max: u32,
        allow_rewind: bool,
        member: Option<Box<(String, i64)>>,
    },
    /// Create a queue group on a topic (see [`crate::queue`]); with the same topic and settings
    /// as an existing queue of that name, a no-op. Creates the dead-letter topic (with the
    /// origin's partition count) if it does not exist.
    CreateQueue {
        queue: String,
        /// Boxed: a command is as large as its largest variant (see `GroupHeartbeat`).
        definition: Box<QueueDefinition>,
        /// Queue and topic count limits at the time of the request (see `topics_max`).
        queues_max: u32,
        topics_max: u32,
    },
    /// Forget a queue group and its delivery state (its dead-letter topic stays).
    DeleteQueue { queue: String },
    /// A worker takes up to `max` records of the queue, locked until the leader's `now_ms` plus
    /// the queue's lock time. Records delivered too often on the way are dead-lettered.
    QueueReceive {
        queue: String,
        worker: String,
        max: u32,
        now_ms: i64,
    },
    /// Workers' decisions about deliveries of one queue (ack, release, reject, extend), applied
    /// in order, each answered on its own.
    QueueSettle {
        queue: String,
        settlements: Vec<Settlement>,
        now_ms: i64,
    },
    /// Store a bearer token (its salted hash; the leader made the salt and id, so applying
    /// draws no randomness). Refused if the id exists or `tokens_max` tokens exist.
    CreateToken {
        token: Box<TokenRecord>,
        tokens_max: u32,
    },
    /// Forget a token: from the moment a node applies this, it refuses the token.
    RevokeToken { id: String },
    /// Add an ACL entry under the next ACL id; an entry equal to an existing one keeps that one.
    AddAcl { acl: Box<Acl>, acls_max: u32 },
    /// Remove the ACL entry `id`.
    RemoveAcl { id: u64 },
    /// Set a principal's quota; an unlimited one (all rates 0) removes it.
    SetQuota {
        principal: String,
        quota: Quota,
        quotas_max: u32,
    },
    /// Append the queue's dead letters not redriven yet (up to `max_records` and about
    /// `max_bytes`) to its topic again, without their dead-letter headers, and move its redrive
    /// cursor past them: one command, so a dead letter is redriven once.
    QueueRedrive {
        queue: String,
        max_records: u32,
        max_bytes: u64,
        now_ms: i64,
    },
    /// A command that may create a topic, a consumer group or a queue, proposed for the
    /// authenticated `principal`: applied as `command` is, unless what it would create takes the
    /// principal past one of its creation caps (then refused, nothing changed); what it creates
    /// is recorded as the principal's.
    OnBehalfOf {
        principal: String,
        command: Box<Command>,
    },
    /// Set a principal's rates and creation caps together (the successor of `SetQuota`); all of
    /// them 0 removes both.
    SetLimits {
        principal: String,
        quota: Quota,
        caps: CreationCaps,
        quotas_max: u32,
    },
}

/// Identifies an idempotent batch: the producer and the sequence number of its first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerSequence {
    pub producer_id: u64,
    pub sequence: u64,
}

impl Command {
    /// Roughly what applying this command adds to the state machine's write batch: its records
    /// and a row's worth for each append (a stored batch's framing and the topic row), for sizing
    /// the batch before it is filled. Other commands write a few small rows.
    pub fn stored_bytes_estimate(&self) -> usize {
        /// A record's framing in a stored batch (lengths, timestamp), rounded up.
        const PER_RECORD: usize = 16;
        /// The stored batch's header and key, the topic row and the producer row, rounded up.
        const PER_APPEND: usize = 256;
        match self {
            Command::Append { records, .. } => {
                PER_APPEND
                    + records
                        .iter()
                        .map(|r| r.size_bytes() + PER_RECORD)
                        .sum::<usize>()
            }
            Command::Batch(commands) => commands.iter().map(Self::stored_bytes_estimate).sum(),
            _ => PER_APPEND,
        }
    }
}

impl std::fmt::Display for Command {
    // Long: one short arm per command variant; split, the variants' texts would be scattered.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::CreateTopic { name, settings, .. } => {
                write!(f, "CreateTopic({name}, partitions={})", settings.partitions)
            }
            Command::DeleteTopic { name } => write!(f, "DeleteTopic({name})"),
            Command::CommitOffsets {
                group,
                topic,
                offsets,
                ..
            } => write!(
                f,
                "CommitOffsets({group}, {topic}, {} partitions)",
                offsets.len()
            ),
            Command::CommitGroupOffsets {
                group,
                topic,
                offsets,
                allow_rewind,
                ..
            } => write!(
                f,
                "CommitGroupOffsets({group}, {topic}, {} partitions{})",
                offsets.len(),
                if *allow_rewind {
                    ", rewind allowed"
                } else {
                    ""
                }
            ),
            Command::DeleteGroup { group } => write!(f, "DeleteGroup({group})"),
            Command::GroupHeartbeat {
                group, heartbeat, ..
            } => write!(f, "GroupHeartbeat({group}, {:?})", heartbeat.member_id),
            Command::ExpireGroupMember {
                group, member_id, ..
            } => write!(f, "ExpireGroupMember({group}, {member_id})"),
            Command::RemoveGroupMember { group, member_id } => {
                write!(f, "RemoveGroupMember({group}, {member_id})")
            }
            Command::CommitFencedOffsets {
                group,
                topic,
                offsets,
                member,
                ..
            } => write!(
                f,
                "CommitFencedOffsets({group}, {topic}, {} partitions, member {:?})",
                offsets.len(),
                member.as_deref().map(|(id, _)| id)
            ),
            Command::CreateQueue {
                queue, definition, ..
            } => {
                write!(f, "CreateQueue({queue} on {})", definition.topic)
            }
            Command::DeleteQueue { queue } => write!(f, "DeleteQueue({queue})"),
            Command::QueueReceive {
                queue, worker, max, ..
            } => write!(f, "QueueReceive({queue}, {worker}, {max})"),
            Command::QueueSettle {
                queue, settlements, ..
            } => write!(f, "QueueSettle({queue}, {} settlements)", settlements.len()),
            Command::AlterTopic { name, .. } => write!(f, "AlterTopic({name})"),
            Command::CreateToken { token, .. } => {
                write!(f, "CreateToken({} for {})", token.id, token.principal)
            }
            Command::RevokeToken { id } => write!(f, "RevokeToken({id})"),
            Command::AddAcl { acl, .. } => write!(f, "AddAcl({acl})"),
            Command::RemoveAcl { id } => write!(f, "RemoveAcl({id})"),
            Command::SetQuota { principal, .. } => write!(f, "SetQuota({principal})"),
            Command::SetLimits { principal, .. } => write!(f, "SetLimits({principal})"),
            Command::OnBehalfOf { principal, command } => write!(f, "{command} for {principal}"),
            Command::QueueRedrive { queue, .. } => write!(f, "QueueRedrive({queue})"),
            Command::InitProducer { .. } => write!(f, "InitProducer"),
            Command::Maintenance { now_ms, .. } => write!(f, "Maintenance(at {now_ms})"),
            Command::Batch(commands) => write!(f, "Batch({} commands)", commands.len()),
            Command::Append {
                topic,
                partition,
                records,
                ..
            } => {
                write!(f, "Append({topic}/{partition}, {} records)", records.len())
            }
        }
    }
}

/// The outcome of applying one command. Rejections are part of the replicated outcome: every
/// node reaches the same verdict from the same state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Membership changes and blank entries answer this.
    None,
    TopicCreated {
        topic_id: u64,
    },
    Appended {
        base_offset: u64,
        record_count: u32,
        /// The batch had been appended before (an idempotent retry); these are its offsets.
        duplicate: bool,
    },
    Rejected(Rejection),
    TopicDeleted,
    OffsetsCommitted,
    TopicAltered,
    ProducerInitialized {
        producer_id: u64,
    },
    MaintenanceDone,
    /// One response per command of a `Command::Batch`, in order.
    Batch(Vec<CommandResponse>),
    GroupDeleted,
    /// What a heartbeat's member is told: its id, epoch and the partitions it owns now.
    Member(Box<Answer>),
    /// Whether an expiry or a removal took a member out of its group.
    MemberRemoved {
        removed: bool,
    },
    /// A queue was created (`false`: it existed with the same topic and settings).
    QueueCreated {
        created: bool,
    },
    QueueDeleted,
    /// What a receive handed out (boxed: see `Command::CreateQueue`).
    QueueReceived(Box<Received>),
    /// One outcome per settlement, in order: for an extend the new lock deadline, else 0.
    QueueSettled(Vec<Result<i64, QueueError>>),
    TokenCreated,
    /// Whether the token existed (and is gone now).
    TokenRevoked {
        revoked: bool,
    },
    /// The entry's id; `existed`: an equal entry was there already.
    AclAdded {
        id: u64,
        existed: bool,
    },
    AclRemoved {
        removed: bool,
    },
    QuotaSet,
    /// Dead letters appended to the queue's topic again, and those left to redrive.
    QueueRedriven {
        records: u64,
        remaining: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    #[error("topic '{topic}' has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    #[error("the cluster already holds {0} topics, the configured maximum (topics_max)")]
    TooManyTopics(u32),
    #[error("the cluster already holds {0} consumer groups, the configured maximum (groups_max)")]
    TooManyGroups(u32),
    #[error("consumer group '{0}' does not exist (it has committed no offsets)")]
    UnknownGroup(String),
    #[error(
        "cannot commit offset {offset} for {topic}/{partition}: the partition ends at {end_offset}"
    )]
    CommitBeyondEnd {
        topic: String,
        partition: u32,
        offset: u64,
        end_offset: u64,
    },
    #[error("the cluster already tracks {0} producers, the configured maximum (producers_max)")]
    TooManyProducers(u32),
    #[error("producer id {0} is unknown or has expired (idle longer than producer_idle_ms)")]
    UnknownProducer(u64),
    #[error("sequence gap for producer {producer_id}: expected sequence {expected}, got {got}")]
    SequenceGap {
        producer_id: u64,
        expected: u64,
        got: u64,
    },
    #[error(
        "producer {producer_id} sent sequence {got} again, but it is older than the batches \
         remembered for deduplication (next expected: {expected}) or its record count differs"
    )]
    SequenceStale {
        producer_id: u64,
        expected: u64,
        got: u64,
    },
    #[error("expected end offset {expected} but the partition ends at {actual}")]
    EndOffsetMismatch { expected: u64, actual: u64 },
    #[error(
        "consumer group '{group}' has committed offset {committed} for {topic}/{partition}; \
         committing {requested} would move it back"
    )]
    CommitRewind {
        group: String,
        topic: String,
        partition: u32,
        committed: u64,
        requested: u64,
    },
    #[error(
        "member '{member_id}' is not in consumer group '{group}' (its session expired, it left \
         or it was removed): stop reading its partitions and join again"
    )]
    UnknownMember { group: String, member_id: String },
    #[error(
        "member '{member_id}' of consumer group '{group}' sent epoch {sent}, but its epoch is \
         {current}: rejoin"
    )]
    MemberEpochAhead {
        group: String,
        member_id: String,
        sent: i64,
        current: u64,
    },
    #[error("consumer group '{group}' already has {max} members (group_members_max)")]
    TooManyMembers { group: String, max: u32 },
    #[error("a subscription of {asked} topics is over group_subscription_topics_max ({max})")]
    TooManySubscribedTopics { asked: usize, max: u32 },
    #[error(
        "member '{member_id}' of consumer group '{group}' does not own {topic}/{partition} \
         (it was reassigned): do not commit it; heartbeat to learn the current assignment"
    )]
    NotPartitionOwner {
        group: String,
        member_id: String,
        topic: String,
        partition: u32,
    },
    #[error(
        "consumer group '{group}' has {members} coordinated members: commits without a member, \
         seeks and resets are refused until they have left (or remove them first)"
    )]
    GroupHasMembers { group: String, members: usize },
    #[error("queue '{0}' does not exist")]
    UnknownQueue(String),
    #[error(
        "queue '{queue}' exists with other settings (on topic '{topic}'): delete it first or \
         use another name"
    )]
    QueueExists { queue: String, topic: String },
    #[error("the cluster already holds {0} queues, the configured maximum (queues_max)")]
    TooManyQueues(u32),
    #[error(
        "topic '{topic}' of queue '{queue}' was deleted (or deleted and created again): delete \
         the queue and create it anew"
    )]
    QueueTopicGone { queue: String, topic: String },
    #[error("a dead-letter topic cannot be the queue's own topic '{0}'")]
    DeadLetterIsOrigin(String),
    #[error("the cluster already holds {0} tokens, the maximum (revoke some first)")]
    TooManyTokens(u32),
    #[error("a token with id {0} exists already")]
    TokenExists(String),
    #[error("the cluster already holds {0} ACL entries, the maximum (remove some first)")]
    TooManyAcls(u32),
    #[error("the cluster already holds {0} quotas, the maximum (remove some first)")]
    TooManyQuotas(u32),
    #[error(
        "queue '{0}' keeps no dead letters (it was created without dead_letters): nothing to \
         redrive; to keep them, delete the queue and create it with dead_letters"
    )]
    NoDeadLetters(String),
    #[error(
        "{principal} may own at most {cap} {what} (its creation cap): delete some of its own \
         first, or have an admin raise the cap (raftlog quota set)"
    )]
    CreationCapReached {
        principal: String,
        what: String,
        cap: u32,
    },
}

impl Rejection {
    /// A group's refusal of a heartbeat or commit as the replicated outcome states it (with
    /// names instead of topic ids).
    pub fn from_group_error(error: GroupError, group: &str, topics: &Topics) -> Rejection {
        use GroupError as E;
        let group = group.to_string();
        match error {
            E::UnknownMember(member_id) | E::MemberIdTaken(member_id) => {
                Rejection::UnknownMember { group, member_id }
            }
            E::FencedEpoch {
                member,
                sent,
                current,
            } => Rejection::MemberEpochAhead {
                group,
                member_id: member,
                sent,
                current,
            },
            E::TooManyMembers(max) => Rejection::TooManyMembers { group, max },
            E::TooManyTopics { asked, max } => Rejection::TooManySubscribedTopics { asked, max },
            E::NotOwner { member, partition } => Rejection::NotPartitionOwner {
                group,
                member_id: member,
                topic: topic_name(topics, partition.0),
                partition: partition.1,
            },
            E::CoordinatedGroup { members } => Rejection::GroupHasMembers { group, members },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inside `decoding_from` a record's key and value are slices of the message; outside it, or
    /// decoded from other bytes, they are copies. Either way the record is the one encoded.
    #[test]
    fn records_decoded_from_a_kept_message_share_it() {
        let record = Record {
            key: Some(Bytes::from_static(b"key")),
            value: Bytes::from(vec![7; 100]),
            headers: vec![("h".into(), Bytes::from_static(b"v"))],
            timestamp_ms: 3,
        };
        let message = Bytes::from(postcard::to_allocvec(&record).expect("encode"));
        let inside = |b: &Bytes| message.as_ptr_range().contains(&b.as_ptr());

        let shared: Record =
            shared::decoding_from(&message, || postcard::from_bytes(&message)).expect("decode");
        assert_eq!(shared, record);
        assert!(inside(&shared.value) && inside(shared.key.as_ref().expect("key")));

        let copied: Record = postcard::from_bytes(&message).expect("decode");
        assert_eq!(copied, record);
        assert!(!inside(&copied.value));

        let elsewhere = message.to_vec();
        let copied: Record =
            shared::decoding_from(&message, || postcard::from_bytes(&elsewhere)).expect("decode");
        assert_eq!(copied, record);
        assert!(!inside(&copied.value));
    }

    /// Entries written before `Command::Batch` became an `Arc` must read back, and the other way
    /// round: its encoding is the variant's position and then the commands as a plain list.
    #[test]
    fn a_batch_encodes_as_the_plain_list_of_its_commands() {
        let commands = vec![
            Command::Append {
                topic: "t".into(),
                partition: 3,
                records: vec![Record {
                    key: Some(Bytes::from_static(b"k")),
                    value: Bytes::from_static(b"value"),
                    headers: vec![("h".into(), Bytes::from_static(b"v"))],
                    timestamp_ms: 7,
                }],
                proposed_at_ms: 11,
                producer: Some(ProducerSequence {
                    producer_id: 1,
                    sequence: 2,
                }),
                expected_end_offset: None,
            },
            Command::DeleteTopic { name: "u".into() },
        ];
        const BATCH_POSITION: u8 = 7;
        let mut expected = vec![BATCH_POSITION];
        expected.extend(postcard::to_allocvec(&commands).expect("encode"));
        let batch = Command::Batch(commands.into());
        let encoded = postcard::to_allocvec(&batch).expect("encode");
        assert_eq!(encoded, expected);
        assert_eq!(
            postcard::from_bytes::<Command>(&encoded).expect("decode"),
            batch
        );
    }
}
