//! The one mapping from node errors to gRPC statuses. Every message says what the caller can do.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::group::WriteError;
use raftlog_core::NodeId;
use raftlog_core::Rejection;
use raftlog_store::ReadError;

/// Metadata key carrying the current leader's gRPC address on UNAVAILABLE answers.
pub const LEADER_ADDR_HEADER: &str = "raftlog-leader";
/// Metadata key carrying the current leader's node id on UNAVAILABLE answers.
pub const LEADER_ID_HEADER: &str = "raftlog-leader-id";
/// Metadata key set on UNAVAILABLE answers when the request was certainly not applied, so the
/// client may retry it elsewhere without risking a duplicate.
pub const NOT_APPLIED_HEADER: &str = "raftlog-not-applied";
/// Metadata key with the partition's actual end offset, on a conditional append's
/// FAILED_PRECONDITION and on OUT_OF_RANGE fetches.
pub const END_OFFSET_HEADER: &str = "raftlog-end-offset";
/// Metadata key with the partition's start offset on OUT_OF_RANGE fetches.
pub const START_OFFSET_HEADER: &str = "raftlog-start-offset";
/// Metadata key set on the FAILED_PRECONDITION answer to a consumer-group member that is no
/// longer in its group: it must stop reading every partition and join again.
pub const MEMBER_FENCED_HEADER: &str = "raftlog-member-fenced";

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    OutOfRange(String),
    /// FAILED_PRECONDITION / OUT_OF_RANGE with the partition's offsets attached as metadata, so
    /// a program can act on them without parsing the message.
    #[error("{message}")]
    WithOffsets {
        code: Code,
        message: String,
        start_offset: Option<u64>,
        end_offset: Option<u64>,
    },
    /// Retryable: no leader, no quorum, or this node cannot reach the leader. `not_applied` says
    /// the request certainly had no effect (else its outcome is unknown).
    #[error("{message}")]
    Unavailable {
        message: String,
        leader: Option<(u64, String)>,
        not_applied: bool,
    },
    /// The request's deadline passed before this node proposed it: it was not applied, and
    /// never will be.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// FAILED_PRECONDITION to a consumer-group member that is no longer in its group (or
    /// confused its epoch): marked so the client drops its partitions and rejoins.
    #[error("{0}")]
    MemberFenced(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A write whose deadline passed before it was proposed.
    pub fn write_deadline_passed() -> Self {
        ApiError::DeadlineExceeded(
            "the request's deadline passed before the leader could propose it; it was not \
             applied and never will be: retry with a longer deadline (grpc-timeout, at most \
             write_timeout_ms_max)"
                .into(),
        )
    }

    pub fn no_leader() -> Self {
        ApiError::Unavailable {
            message:
                "no Raft leader is known yet (election in progress or no quorum); retry shortly"
                    .into(),
            leader: None,
            not_applied: true,
        }
    }

    /// How a write that node `self_id` could not make is answered: where it should go when this
    /// node does not lead, else whether it may have been applied.
    pub fn write_failed(self_id: NodeId, e: WriteError) -> Self {
        let unavailable = |message, not_applied| ApiError::Unavailable {
            message,
            leader: None,
            not_applied,
        };
        match e {
            WriteError::NotLeader(leader) => Self::not_leader(self_id, leader),
            WriteError::DeadlinePassed => Self::write_deadline_passed(),
            WriteError::NotApplied(message) => unavailable(message, true),
            WriteError::OutcomeUnknown(message) => unavailable(message, false),
            WriteError::Refused(message) => ApiError::FailedPrecondition(message),
        }
    }

    /// This node does not lead: the write was not applied; send it to `leader` (if known).
    pub fn not_leader(self_id: NodeId, leader: Option<(NodeId, String)>) -> Self {
        match leader {
            None => Self::no_leader(),
            Some((leader_id, addr)) => ApiError::Unavailable {
                message: format!(
                    "node {self_id} is not the leader; send writes to node {leader_id} at {addr}"
                ),
                leader: Some((leader_id, addr)),
                not_applied: true,
            },
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        let message = rejection.to_string();
        match rejection {
            Rejection::TopicExists(_) => {
                ApiError::AlreadyExists(format!("{message}; choose another name or use it"))
            }
            Rejection::UnknownTopic(_) => {
                ApiError::NotFound(format!("{message}; create it first (raftlog topic create)"))
            }
            Rejection::UnknownPartition { .. } => ApiError::InvalidArgument(message),
            Rejection::TooManyTopics(_) => {
                ApiError::ResourceExhausted(format!("{message}; delete topics or raise the limit"))
            }
            Rejection::TooManyGroups(_) => ApiError::ResourceExhausted(format!(
                "{message}; reuse an existing group, delete topics, or raise the limit"
            )),
            Rejection::UnknownGroup(_) => ApiError::NotFound(format!(
                "{message}; commit an offset first (raftlog group list shows existing groups)"
            )),
            Rejection::CommitBeyondEnd { .. } => ApiError::OutOfRange(format!(
                "{message}; commit at most the end offset (the next offset to read)"
            )),
            Rejection::TooManyProducers(_) => ApiError::ResourceExhausted(format!(
                "{message}; reuse producer ids, lower producer_idle_ms or raise the limit"
            )),
            Rejection::UnknownProducer(_) => ApiError::FailedPrecondition(format!(
                "{message}; obtain a new one with InitProducer and restart sequences at 0"
            )),
            Rejection::SequenceGap { .. } => ApiError::FailedPrecondition(format!(
                "{message}; batches in between were lost: resend them in order, or start over \
                 with a new producer id"
            )),
            Rejection::SequenceStale { .. } => ApiError::FailedPrecondition(format!(
                "{message}; the outcome of that batch cannot be told any more: read the partition \
                 to find out, and continue with a new producer id"
            )),
            Rejection::CommitRewind { .. } => ApiError::FailedPrecondition(format!(
                "{message}; nothing was committed. A consumer that resumed elsewhere may have \
                 committed further: re-read the committed offsets. To move the group back on \
                 purpose, commit with allow_rewind (CLI: raftlog group seek)"
            )),
            Rejection::UnknownMember { .. } | Rejection::MemberEpochAhead { .. } => {
                ApiError::MemberFenced(message)
            }
            Rejection::NotPartitionOwner { .. } => {
                ApiError::FailedPrecondition(format!("{message}; nothing was committed"))
            }
            Rejection::GroupHasMembers { .. } => ApiError::FailedPrecondition(format!(
                "{message}; raftlog group describe lists them, raftlog group remove-member \
                 removes one"
            )),
            Rejection::TooManyMembers { .. } => ApiError::ResourceExhausted(format!(
                "{message}; use fewer members (each partition is read by one) or raise the limit"
            )),
            Rejection::TooManySubscribedTopics { .. } => ApiError::InvalidArgument(message),
            Rejection::UnknownQueue(_) => {
                ApiError::NotFound(format!("{message}; create it first (raftlog queue create)"))
            }
            Rejection::QueueExists { .. } => ApiError::AlreadyExists(message),
            Rejection::TooManyQueues(_) => {
                ApiError::ResourceExhausted(format!("{message}; delete queues or raise the limit"))
            }
            Rejection::QueueTopicGone { .. } => ApiError::FailedPrecondition(message),
            Rejection::DeadLetterIsOrigin(_) => ApiError::InvalidArgument(message),
            Rejection::NoDeadLetters(_) => ApiError::FailedPrecondition(message),
            Rejection::CreationCapReached { .. } => ApiError::ResourceExhausted(message),
            Rejection::TooManyTokens(_)
            | Rejection::TooManyAcls(_)
            | Rejection::TooManyQuotas(_) => ApiError::ResourceExhausted(message),
            Rejection::TokenExists(_) => {
                ApiError::AlreadyExists(format!("{message}; create the token again"))
            }
            Rejection::EndOffsetMismatch { actual, .. } => ApiError::WithOffsets {
                code: Code::FailedPrecondition,
                message: format!(
                    "{message}; someone else appended first: read from your last offset, \
                     re-validate, and retry with expected_end_offset = {actual}"
                ),
                start_offset: None,
                end_offset: Some(actual),
            },
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Rejected(r) => r.into(),
            ReadError::OffsetOutOfRange {
                start_offset,
                end_offset,
                ..
            } => ApiError::WithOffsets {
                code: Code::OutOfRange,
                message: format!("{e}; fetch from an offset in that range"),
                start_offset: Some(start_offset),
                end_offset: Some(end_offset),
            },
            ReadError::Storage(m) => ApiError::Internal(m),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let message = e.to_string();
        match e {
            ApiError::InvalidArgument(_) => Status::new(Code::InvalidArgument, message),
            ApiError::NotFound(_) => Status::new(Code::NotFound, message),
            ApiError::AlreadyExists(_) => Status::new(Code::AlreadyExists, message),
            ApiError::FailedPrecondition(_) => Status::new(Code::FailedPrecondition, message),
            ApiError::ResourceExhausted(_) => Status::new(Code::ResourceExhausted, message),
            ApiError::OutOfRange(_) => Status::new(Code::OutOfRange, message),
            ApiError::Internal(_) => Status::new(Code::Internal, message),
            ApiError::MemberFenced(_) => {
                let mut status = Status::new(Code::FailedPrecondition, message);
                status
                    .metadata_mut()
                    .insert(MEMBER_FENCED_HEADER, MetadataValue::from_static("1"));
                status
            }
            ApiError::DeadlineExceeded(_) => {
                let mut status = Status::new(Code::DeadlineExceeded, message);
                status
                    .metadata_mut()
                    .insert(NOT_APPLIED_HEADER, MetadataValue::from_static("1"));
                status
            }
            ApiError::WithOffsets {
                code,
                start_offset,
                end_offset,
                ..
            } => {
                let mut status = Status::new(code, message);
                if let Some(offset) = start_offset {
                    status
                        .metadata_mut()
                        .insert(START_OFFSET_HEADER, MetadataValue::from(offset));
                }
                if let Some(offset) = end_offset {
                    status
                        .metadata_mut()
                        .insert(END_OFFSET_HEADER, MetadataValue::from(offset));
                }
                status
            }
            ApiError::Unavailable {
                leader,
                not_applied,
                ..
            } => {
                let mut status = Status::new(Code::Unavailable, message);
                if not_applied {
                    status
                        .metadata_mut()
                        .insert(NOT_APPLIED_HEADER, MetadataValue::from_static("1"));
                }
                if let Some((id, addr)) = leader {
                    if let Ok(v) = MetadataValue::try_from(addr.as_str()) {
                        status.metadata_mut().insert(LEADER_ADDR_HEADER, v);
                    }
                    status
                        .metadata_mut()
                        .insert(LEADER_ID_HEADER, MetadataValue::from(id));
                }
                status
            }
        }
    }
}
