//! The replicated commands: what goes into the Raft log and what applying it answers.
//!
//! This is an on-disk and on-wire format (log entries, snapshots): add variants and fields only at
//! the end, never reorder (postcard encodes enum variants by position). A change here must be
//! flagged in the commit message.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One record as stored: the payload is kept as `Bytes` end to end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
    pub timestamp_ms: i64,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSettings {
    pub partitions: u32,
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
    },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::CreateTopic { name, settings, .. } => {
                write!(f, "CreateTopic({name}, partitions={})", settings.partitions)
            }
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
    },
    Rejected(Rejection),
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
}
