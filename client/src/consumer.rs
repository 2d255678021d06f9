//! The consumer: reads the partitions of one topic from their positions, optionally as a member
//! of a consumer group whose committed offsets it resumes from and commits to.
//!
//! Positions are "next offset to read", the same thing a group commits. A consumer with a group
//! starts each partition at the group's committed offset; partitions the group has never
//! committed start per [`StartFrom`]. There is no group membership protocol: a consumer reads the
//! partitions it is given (all of them by default), so run one consumer per group and topic, or
//! give each consumer its own partitions.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tonic::Code;

use crate::{pb, Client, Error};

/// Where a partition with no committed group offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest retained record.
    Beginning,
    /// Only records produced from now on.
    End,
    /// This offset in every partition.
    Offset(u64),
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub topic: String,
    /// Consumer group to resume from and commit to; `None` reads without a group.
    pub group: Option<String>,
    /// Partitions to read; `None` means all of the topic's partitions.
    pub partitions: Option<Vec<u32>>,
    pub start: StartFrom,
    /// Most records one fetch returns per partition.
    pub max_records: u32,
}

impl ConsumerConfig {
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            group: None,
            partitions: None,
            start: StartFrom::Beginning,
            max_records: 1000,
        }
    }

    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    pub fn start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    pub fn partitions(mut self, partitions: Vec<u32>) -> Self {
        self.partitions = Some(partitions);
        self
    }
}

/// One record as consumed.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    pub partition: u32,
    pub record: pb::Record,
}

pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    /// Next offset to read, per partition.
    positions: BTreeMap<u32, u64>,
    /// Positions as of the last commit, to skip committing what did not move.
    committed: BTreeMap<u32, u64>,
}

impl Consumer {
    /// Looks up the topic and the group's committed offsets and sets the starting positions.
    pub async fn new(client: Client, config: ConsumerConfig) -> Result<Self, Error> {
        let info = client.describe_topic(&config.topic).await?;
        let partitions = match &config.partitions {
            Some(p) => p.clone(),
            None => info.partitions.iter().map(|p| p.partition).collect(),
        };
        let committed = match &config.group {
            Some(group) => client.fetch_offsets(group, &config.topic).await?,
            None => BTreeMap::new(),
        };
        let mut positions = BTreeMap::new();
        for partition in partitions {
            let Some(p) = info.partitions.iter().find(|p| p.partition == partition) else {
                return Err(Error::Status(tonic::Status::invalid_argument(format!(
                    "topic '{}' has no partition {partition}",
                    config.topic
                ))));
            };
            let start = match (committed.get(&partition), config.start) {
                (Some(&offset), _) => offset,
                (None, StartFrom::Beginning) => p.start_offset,
                (None, StartFrom::End) => p.end_offset,
                (None, StartFrom::Offset(offset)) => {
                    if offset < p.start_offset || offset > p.end_offset {
                        return Err(Error::Status(tonic::Status::out_of_range(format!(
                            "offset {offset} is out of range: {}/{partition} holds offsets {}..{}",
                            config.topic, p.start_offset, p.end_offset
                        ))));
                    }
                    offset
                }
            };
            positions.insert(partition, start);
        }
        let committed = committed
            .into_iter()
            .filter(|(p, _)| positions.contains_key(p))
            .collect();
        Ok(Self {
            client,
            config,
            positions,
            committed,
        })
    }

    /// Next offset to read, per partition.
    pub fn positions(&self) -> &BTreeMap<u32, u64> {
        &self.positions
    }

    pub fn seek(&mut self, partition: u32, offset: u64) {
        self.positions.insert(partition, offset);
    }

    /// Returns the next records of any partition, in offset order within each partition. When
    /// none is available, waits up to `max_wait` for one (long poll on every partition at once).
    /// An empty result means nothing arrived in time.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<ConsumedRecord>, Error> {
        let records = self.fetch_all(Duration::ZERO).await?;
        if !records.is_empty() || max_wait.is_zero() {
            return Ok(records);
        }
        self.fetch_all(max_wait).await
    }

    /// Fetches every partition concurrently; with a wait, returns as soon as one has records.
    async fn fetch_all(&mut self, wait: Duration) -> Result<Vec<ConsumedRecord>, Error> {
        let mut fetches: FuturesUnordered<_> = self
            .positions
            .iter()
            .map(|(&partition, &offset)| {
                let request = pb::FetchRequest {
                    topic: self.config.topic.clone(),
                    partition,
                    offset,
                    max_records: self.config.max_records,
                    max_bytes: 0,
                    max_wait_ms: wait.as_millis().min(u32::MAX as u128) as u32,
                };
                let client = self.client.clone();
                async move { (partition, offset, client.fetch(request).await) }
            })
            .collect();
        let mut out = Vec::new();
        while let Some((partition, offset, result)) = fetches.next().await {
            match result {
                Ok(response) => {
                    if let Some(last) = response.records.last() {
                        self.positions.insert(partition, last.offset + 1);
                    }
                    out.extend(
                        response
                            .records
                            .into_iter()
                            .map(|record| ConsumedRecord { partition, record }),
                    );
                }
                Err(e) if e.code() == Code::OutOfRange => {
                    self.recover_out_of_range(partition, offset).await?;
                }
                Err(e) => return Err(e),
            }
            if !wait.is_zero() && !out.is_empty() {
                break; // the other long polls are dropped (cancelled)
            }
        }
        Ok(out)
    }

    /// A position below the partition's start (records deleted by retention) moves to the start,
    /// as Kafka's `auto.offset.reset=earliest` does. A position above a node's end means that node
    /// has not applied those records yet: read again shortly.
    async fn recover_out_of_range(&mut self, partition: u32, offset: u64) -> Result<(), Error> {
        let info = self.client.describe_topic(&self.config.topic).await?;
        if let Some(p) = info.partitions.iter().find(|p| p.partition == partition) {
            if offset < p.start_offset {
                tracing::warn!(
                    topic = %self.config.topic, partition, offset, start_offset = p.start_offset,
                    "position below the partition's start offset; skipping to the start"
                );
                self.positions.insert(partition, p.start_offset);
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    }

    /// Commits the current positions to the group (only partitions whose position moved).
    pub async fn commit(&mut self) -> Result<(), Error> {
        let Some(group) = self.config.group.clone() else {
            return Err(Error::Status(tonic::Status::failed_precondition(
                "this consumer has no group to commit to",
            )));
        };
        let moved: Vec<(u32, u64)> = self
            .positions
            .iter()
            .filter(|(p, o)| self.committed.get(p) != Some(o))
            .map(|(&p, &o)| (p, o))
            .collect();
        if moved.is_empty() {
            return Ok(());
        }
        self.client
            .commit_offsets(&group, &self.config.topic, moved.iter().copied())
            .await?;
        self.committed.extend(moved);
        Ok(())
    }
}
