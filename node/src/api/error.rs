//! The one mapping from node errors to gRPC statuses. Every message says what the caller can do.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::command::Rejection;
use crate::storage::state_machine::ReadError;

/// Metadata key carrying the current leader's gRPC address on UNAVAILABLE answers.
pub const LEADER_ADDR_HEADER: &str = "raftlog-leader";
/// Metadata key carrying the current leader's node id on UNAVAILABLE answers.
pub const LEADER_ID_HEADER: &str = "raftlog-leader-id";
/// Metadata key set on UNAVAILABLE answers when the request was certainly not applied, so the
/// client may retry it elsewhere without risking a duplicate.
pub const NOT_APPLIED_HEADER: &str = "raftlog-not-applied";

#[derive(Debug, thiserror::Error)]
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
    /// Retryable: no leader, no quorum, or this node cannot reach the leader. `not_applied` says
    /// the request certainly had no effect (else its outcome is unknown).
    #[error("{message}")]
    Unavailable {
        message: String,
        leader: Option<(u64, String)>,
        not_applied: bool,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn no_leader() -> Self {
        ApiError::Unavailable {
            message:
                "no Raft leader is known yet (election in progress or no quorum); retry shortly"
                    .into(),
            leader: None,
            not_applied: true,
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
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Rejected(r) => r.into(),
            ReadError::OffsetOutOfRange { .. } => {
                ApiError::OutOfRange(format!("{e}; fetch from an offset in that range"))
            }
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
