//! The consumer: reads the partitions of one topic from their positions, optionally as a member
//! of a consumer group whose committed offsets it resumes from and commits to.
//!
//! Positions are "next offset to read", the same thing a group commits. A consumer with a group
//! starts each partition at the group's committed offset; partitions the group has never
//! committed start per [`StartFrom`] (unless [`ConsumerConfig::reset_group`] makes the start
//! apply to every partition).
//!
//! With a group and no partitions of its own, the consumer is a member of the coordinated group
//! ([`crate::membership`]): the cluster assigns it partitions, moves them when members come and
//! go, and accepts its commits only for what it owns. Start, stop and scale consumers freely:
//! each partition is read by one of them. With partitions given, it reads exactly those as a
//! "simple" group, which the cluster allows only while the group has no coordinated members.
//!
//! Failover: the consumer reads from one node at a time. When that node fails (connection lost,
//! refused, timed out), it moves on to the next endpoint and reads on from its positions, which
//! only ever advance past records [`Consumer::poll`] has returned: nothing is skipped and nothing
//! is returned twice. Each move is reported by [`Consumer::take_failovers`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tonic::Code;

use crate::membership::{MemberConfig, Membership};
use crate::{pb, Client, Error};

/// Where a partition starts when the group has no committed offset for it (or the consumer has
/// no group, or [`ConsumerConfig::reset_group`] is set). Positions outside the partition's
/// retained range are moved into it, and each move is reported by [`Consumer::adjustments`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest retained record.
    Beginning,
    /// Only records produced from now on.
    End,
    /// This offset in every partition.
    Offset(u64),
    /// The last N records of every partition (`end - N`).
    Last(u64),
    /// N records after the oldest retained one (`start + N`).
    AfterStart(u64),
    /// The first record whose timestamp is at or after this time (ms since the Unix epoch); the
    /// end when there is none.
    Timestamp(i64),
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub topic: String,
    /// Consumer group to resume from and commit to; `None` reads without a group.
    pub group: Option<String>,
    /// Partitions to read; `None` means all of the topic's partitions.
    pub partitions: Option<Vec<u32>>,
    pub start: StartFrom,
    /// With a group: ignore its committed offsets and start every partition per `start`; the
    /// first commit then moves the group there, backwards if need be.
    pub reset_group: bool,
    /// Read only up to the end offsets the partitions had when the consumer was created:
    /// [`Consumer::is_done`] tells when every partition got there.
    pub stop_at_end: bool,
    /// Most records one fetch returns per partition.
    pub max_records: u32,
    /// How long the consumer keeps trying when no node answers before it gives up.
    pub unavailable_timeout: Duration,
    /// With a group and no `partitions`: join the group as a coordinated member (the default).
    /// Off, the consumer reads every partition as a simple group.
    pub coordinate: bool,
    /// Static membership (see [`crate::membership::MemberConfig::instance_id`]).
    pub instance_id: Option<String>,
    /// The group's session timeout, asked for when the group has no members yet (0: the
    /// node's default, 10 s).
    pub session_timeout_ms: u32,
    /// The group's assignor, when it has no members yet: "uniform" (default) or "range".
    pub assignor: String,
}

impl ConsumerConfig {
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            group: None,
            partitions: None,
            start: StartFrom::Beginning,
            reset_group: false,
            stop_at_end: false,
            max_records: 1000,
            unavailable_timeout: Duration::from_secs(30),
            coordinate: true,
            instance_id: None,
            session_timeout_ms: 0,
            assignor: String::new(),
        }
    }

    /// Whether this configuration makes a coordinated group member.
    pub fn is_coordinated(&self) -> bool {
        self.group.is_some() && self.partitions.is_none() && self.coordinate
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

/// A start position that was moved into the partition's retained range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    pub partition: u32,
    /// The position asked for.
    pub requested: u64,
    /// The position used.
    pub actual: u64,
    pub start_offset: u64,
    pub end_offset: u64,
}

/// The consumer left a node that failed and reads on from another (reported once the other
/// answered).
#[derive(Debug, Clone)]
pub struct Failover {
    pub from: String,
    pub to: String,
    pub error: Error,
}

pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    /// Next offset to read, per partition.
    positions: BTreeMap<u32, u64>,
    /// Positions as of the last commit, to skip committing what did not move.
    committed: BTreeMap<u32, u64>,
    /// Partitions whose next commit may move the group's offset backwards (an explicit reset).
    rewinding: BTreeSet<u32>,
    /// With `stop_at_end`: where each partition stops.
    stop_at: BTreeMap<u32, u64>,
    adjustments: Vec<Adjustment>,
    /// Index into the client's endpoints of the node being read from.
    node: usize,
    /// The node that failed and why, until another one answers (then it becomes a
    /// [`Failover`]): one report per failover, however many endpoints were tried on the way.
    failed_from: Option<(String, Error)>,
    failovers: Vec<Failover>,
    /// As a coordinated group member: the membership and what the reader last acted on.
    membership: Option<Membership>,
    fences_seen: u64,
    /// The member id and epoch of the last assignment acted on.
    last_member: (String, u64),
    /// Assignment changes since the last call (for a program to print them).
    assignments: Vec<AssignmentChange>,
}

/// The partitions a coordinated member reads changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentChange {
    pub member_id: String,
    pub member_epoch: u64,
    /// The partitions it reads now.
    pub partitions: BTreeSet<u32>,
    pub added: BTreeSet<u32>,
    pub removed: BTreeSet<u32>,
    /// It lost every partition at once (fenced, or its session ran out); the partitions it is
    /// given after joining again come as the next change.
    pub fenced: bool,
    /// When the change took effect: the reader stopped reading what it lost (for a fence, when
    /// the member was fenced) and started on what it gained no later than this.
    pub at: std::time::Instant,
}

impl Consumer {
    /// Looks up the topic and the group's committed offsets and sets the starting positions; as
    /// a coordinated member, joins the group first and starts on the partitions it is given.
    pub async fn new(client: Client, config: ConsumerConfig) -> Result<Self, Error> {
        let membership = match (&config.group, config.is_coordinated()) {
            (Some(group), true) => Some(
                Membership::join(
                    client.clone(),
                    MemberConfig {
                        group: group.clone(),
                        topic: config.topic.clone(),
                        instance_id: config.instance_id.clone(),
                        session_timeout_ms: config.session_timeout_ms,
                        assignor: config.assignor.clone(),
                        client_id: format!("raftlog-client/{}", env!("CARGO_PKG_VERSION")),
                    },
                )
                .await?,
            ),
            _ => None,
        };
        // A member starts with nothing: its partitions are taken up by the first poll.
        let partitions = match &membership {
            Some(_) => Some(Vec::new()),
            None => config.partitions.clone(),
        };
        let resolved =
            resolve_start(&client, &config.topic, partitions.as_deref(), config.start).await?;
        let group_offsets = match &config.group {
            Some(group) if !config.reset_group => {
                client.fetch_offsets(group, &config.topic).await?
            }
            _ => BTreeMap::new(),
        };
        let ranges = resolved.ranges;
        let mut positions = resolved.positions;
        let mut adjustments = resolved.adjustments;
        for (partition, &offset) in &group_offsets {
            if let Some(position) = positions.get_mut(partition) {
                *position = offset;
                adjustments.retain(|a| a.partition != *partition);
            }
        }
        let committed = group_offsets
            .into_iter()
            .filter(|(p, _)| positions.contains_key(p))
            .collect();
        let rewinding = if config.reset_group {
            positions.keys().copied().collect()
        } else {
            BTreeSet::new()
        };
        let stop_at = if config.stop_at_end {
            ranges.iter().map(|(&p, &(_, end))| (p, end)).collect()
        } else {
            BTreeMap::new()
        };
        Ok(Self {
            client,
            config,
            positions,
            committed,
            rewinding,
            stop_at,
            adjustments,
            node: 0,
            failed_from: None,
            failovers: Vec::new(),
            membership,
            fences_seen: 0,
            last_member: (String::new(), 0),
            assignments: Vec::new(),
        })
    }

    /// The assignment changes since the last call, oldest first (coordinated members only).
    pub fn take_assignment_changes(&mut self) -> Vec<AssignmentChange> {
        std::mem::take(&mut self.assignments)
    }

    /// The member id and epoch, as a coordinated member.
    pub fn member(&self) -> Option<(String, i64)> {
        self.membership.as_ref().map(Membership::member)
    }

    /// Acts on what the group told the member since the last read: drops (after committing
    /// them) the partitions taken from it and reports them released; starts the ones given to
    /// it at the group's committed offsets. After a fence it drops everything without
    /// committing (another member may own those partitions now).
    async fn follow_assignment(&mut self) -> Result<(), Error> {
        let Some(membership) = &self.membership else {
            return Ok(());
        };
        let assignment = membership.assignment()?;
        let held: BTreeSet<u32> = self.positions.keys().copied().collect();
        let fenced = assignment.fences != self.fences_seen;
        if fenced {
            self.fences_seen = assignment.fences;
            self.positions.clear();
            self.committed.clear();
            self.rewinding.clear();
        } else {
            let removed: Vec<u32> = held.difference(&assignment.partitions).copied().collect();
            if !removed.is_empty() {
                // Commit before letting go: the next owner starts where this one stopped.
                if let Err(e) = self.commit().await {
                    tracing::warn!(error = %e, "commit before releasing partitions failed");
                }
                for p in &removed {
                    self.positions.remove(p);
                    self.committed.remove(p);
                    self.rewinding.remove(p);
                }
            }
        }
        let added: Vec<u32> = assignment
            .partitions
            .iter()
            .filter(|p| !self.positions.contains_key(p))
            .copied()
            .collect();
        if !added.is_empty() {
            self.take_up(&added).await?;
        }
        let now: BTreeSet<u32> = self.positions.keys().copied().collect();
        // Taken before the release is reported: the next owner starts after this.
        let at = std::time::Instant::now();
        if let Some(membership) = &self.membership {
            membership.set_held(now.clone());
        }
        let (last_id, last_epoch) = std::mem::take(&mut self.last_member);
        if fenced {
            // The fence and what came after it are two changes: the partitions were lost when
            // the member was fenced, and the new ones given only after it joined again.
            self.assignments.push(AssignmentChange {
                member_id: last_id,
                member_epoch: last_epoch,
                partitions: BTreeSet::new(),
                added: BTreeSet::new(),
                removed: held.clone(),
                fenced: true,
                at: assignment.fenced_at.unwrap_or(at),
            });
        }
        let before = if fenced { BTreeSet::new() } else { held };
        if now != before {
            self.assignments.push(AssignmentChange {
                member_id: assignment.member_id.clone(),
                member_epoch: assignment.member_epoch,
                added: now.difference(&before).copied().collect(),
                removed: before.difference(&now).copied().collect(),
                partitions: now,
                fenced: false,
                at,
            });
        }
        self.last_member = (assignment.member_id, assignment.member_epoch);
        Ok(())
    }

    /// Starts reading `partitions` at the group's committed offsets (per `start` where the
    /// group has none).
    async fn take_up(&mut self, partitions: &[u32]) -> Result<(), Error> {
        let resolved = resolve_start(
            &self.client,
            &self.config.topic,
            Some(partitions),
            self.config.start,
        )
        .await?;
        let group = self.config.group.as_deref().unwrap_or_default();
        let committed = self.client.fetch_offsets(group, &self.config.topic).await?;
        if self.config.stop_at_end {
            for (&partition, &(_, end)) in &resolved.ranges {
                self.stop_at.insert(partition, end);
            }
        }
        for (partition, mut position) in resolved.positions {
            if self.config.reset_group {
                // A reset moves the group back where `start` says, committed or not.
                self.rewinding.insert(partition);
            } else if let Some(&offset) = committed.get(&partition) {
                position = offset;
                self.committed.insert(partition, offset);
            }
            self.positions.insert(partition, position);
        }
        Ok(())
    }

    /// Next offset to read, per partition.
    pub fn positions(&self) -> &BTreeMap<u32, u64> {
        &self.positions
    }

    /// Start positions that were moved into their partition's retained range.
    pub fn adjustments(&self) -> &[Adjustment] {
        &self.adjustments
    }

    /// The node being read from.
    pub fn node(&self) -> &str {
        &self.client.endpoints()[self.node]
    }

    /// The failovers since the last call, oldest first.
    pub fn take_failovers(&mut self) -> Vec<Failover> {
        std::mem::take(&mut self.failovers)
    }

    /// With `stop_at_end`: every partition has reached the end offset it had at the start.
    pub fn is_done(&self) -> bool {
        // A member that holds nothing yet has not started (its partitions may come).
        let started = self.membership.is_none() || !self.positions.is_empty();
        self.config.stop_at_end
            && started
            && self
                .positions
                .iter()
                .all(|(p, pos)| self.stop_at.get(p).is_some_and(|end| pos >= end))
    }

    /// Moves a partition's position. A later commit stores it even when that moves the group's
    /// offset backwards.
    pub fn seek(&mut self, partition: u32, offset: u64) {
        self.positions.insert(partition, offset);
        if self.committed.get(&partition).is_some_and(|&c| offset < c) {
            self.rewinding.insert(partition);
        }
    }

    /// Returns the next records of any partition, in offset order within each partition. When
    /// none is available, waits up to `max_wait` for one (long poll on every partition at once).
    /// An empty result means nothing arrived in time. A node that fails is left for the next
    /// endpoint; the error is returned only when no node has answered for
    /// `unavailable_timeout`.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<ConsumedRecord>, Error> {
        // A member looks at its assignment at least this often while it waits for records.
        const ASSIGNMENT_CHECK: Duration = Duration::from_millis(500);
        let max_wait = match &self.membership {
            Some(_) => {
                self.follow_assignment().await?;
                if self.positions.is_empty() {
                    tokio::time::sleep(max_wait.min(ASSIGNMENT_CHECK)).await;
                    return Ok(Vec::new());
                }
                max_wait.min(ASSIGNMENT_CHECK)
            }
            None => max_wait,
        };
        let records = self.fetch_all_failing_over(Duration::ZERO).await?;
        if !records.is_empty() || max_wait.is_zero() || self.is_done() {
            return self.unless_fenced(records).await;
        }
        let records = self.fetch_all_failing_over(max_wait).await?;
        self.unless_fenced(records).await
    }

    /// As a member: records fetched while the member was fenced (its session ran out locally
    /// during the fetch) are not handed out, since their partitions may have another owner by
    /// now; the member drops everything instead, as at the next poll.
    async fn unless_fenced(
        &mut self,
        records: Vec<ConsumedRecord>,
    ) -> Result<Vec<ConsumedRecord>, Error> {
        let Some(membership) = &self.membership else {
            return Ok(records);
        };
        if membership.assignment()?.fences == self.fences_seen {
            return Ok(records);
        }
        self.follow_assignment().await?;
        Ok(Vec::new())
    }

    async fn fetch_all_failing_over(
        &mut self,
        wait: Duration,
    ) -> Result<Vec<ConsumedRecord>, Error> {
        let give_up = Instant::now() + self.config.unavailable_timeout;
        let mut backoff = Duration::from_millis(50);
        let mut failed_in_a_row = 0;
        loop {
            let (records, failure) = self.fetch_all(wait).await?;
            let Some(error) = failure else {
                // A node answered: the failover that led here, if any, is complete.
                if let Some((from, error)) = self.failed_from.take() {
                    let to = self.node().to_string();
                    self.failovers.push(Failover { from, to, error });
                }
                return Ok(records);
            };
            let from = self.node().to_string();
            self.node = (self.node + 1) % self.client.endpoints().len();
            failed_in_a_row += 1;
            tracing::warn!(%from, to = %self.node(), %error, "node failed; reading from the next endpoint");
            self.failed_from.get_or_insert((from, error.clone()));
            if !records.is_empty() {
                return Ok(records);
            }
            if Instant::now() >= give_up {
                return Err(error);
            }
            // Once every endpoint failed in turn, wait before the next round.
            if failed_in_a_row >= self.client.endpoints().len() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }

    /// Fetches every unfinished partition concurrently from the current node; with a wait,
    /// returns as soon as one has records. Returns the records and, when the node failed, the
    /// failure (the positions of the partitions it failed for did not move).
    async fn fetch_all(
        &mut self,
        wait: Duration,
    ) -> Result<(Vec<ConsumedRecord>, Option<Error>), Error> {
        let node = self.node().to_string();
        let mut fetches: FuturesUnordered<_> = self
            .positions
            .iter()
            .filter(|(p, pos)| self.stop_at.get(*p).is_none_or(|end| *pos < end))
            .map(|(&partition, &offset)| {
                let max_records = match self.stop_at.get(&partition) {
                    Some(end) => (end - offset).min(u64::from(self.config.max_records)) as u32,
                    None => self.config.max_records,
                };
                let request = pb::FetchRequest {
                    topic: self.config.topic.clone(),
                    partition,
                    offset,
                    max_records,
                    max_bytes: 0,
                    max_wait_ms: wait.as_millis().min(u32::MAX as u128) as u32,
                };
                let (client, node) = (self.client.clone(), node.clone());
                async move { (partition, offset, client.fetch_from(&node, request).await) }
            })
            .collect();
        let mut out = Vec::new();
        let mut failure = None;
        while let Some((partition, offset, result)) = fetches.next().await {
            match result {
                Ok(response) => {
                    let end = self.stop_at.get(&partition).copied();
                    let records = response
                        .records
                        .into_iter()
                        .take_while(|r| end.is_none_or(|end| r.offset < end));
                    for record in records {
                        self.positions.insert(partition, record.offset + 1);
                        out.push(ConsumedRecord { partition, record });
                    }
                }
                Err(e) if e.code() == Code::OutOfRange => {
                    self.recover_out_of_range(partition, offset, &e).await;
                }
                Err(e) if is_node_failure(&e) => {
                    failure = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
            if !wait.is_zero() && !out.is_empty() {
                break; // the other long polls are dropped (cancelled)
            }
        }
        Ok((out, failure))
    }

    /// A position below the partition's start (records deleted by retention) moves to the start,
    /// as Kafka's `auto.offset.reset=earliest` does. A position above a node's end means that node
    /// has not applied those records yet (a follower we failed over to, say): read again shortly.
    async fn recover_out_of_range(&mut self, partition: u32, offset: u64, error: &Error) {
        if let Some(start) = error.start_offset().filter(|&start| offset < start) {
            tracing::warn!(
                topic = %self.config.topic, partition, offset, start_offset = start,
                "position below the partition's start offset; skipping to the start"
            );
            self.positions.insert(partition, start);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Commits the current positions to the group (only partitions whose position moved). A
    /// commit whose outcome is unknown (the leader failed) is repeated: storing the same offsets
    /// again is harmless.
    pub async fn commit(&mut self) -> Result<(), Error> {
        let Some(group) = self.config.group.clone() else {
            return Err(Error::Status(tonic::Status::failed_precondition(
                "this consumer has no group to commit to",
            )));
        };
        let moved: Vec<(u32, u64)> = self
            .positions
            .iter()
            .filter(|(p, o)| self.committed.get(p) != Some(o) || self.rewinding.contains(p))
            .map(|(&p, &o)| (p, o))
            .collect();
        if moved.is_empty() {
            return Ok(());
        }
        let rewind = moved.iter().any(|(p, _)| self.rewinding.contains(p));
        let give_up = Instant::now() + self.config.unavailable_timeout;
        let member = self.membership.as_ref().map(Membership::member);
        loop {
            let result = self
                .client
                .commit_offsets_as(
                    &group,
                    &self.config.topic,
                    moved.iter().copied(),
                    rewind,
                    member.as_ref().map(|(id, epoch)| (id.as_str(), *epoch)),
                )
                .await;
            match result {
                Ok(()) => break,
                Err(e) if is_node_failure(&e) && Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
        for (p, _) in &moved {
            self.rewinding.remove(p);
        }
        self.committed.extend(moved);
        Ok(())
    }
}

impl Consumer {
    /// Commits what was read and, as a coordinated member, leaves the group: its partitions
    /// move to the other members at once.
    pub async fn close(mut self) -> Result<(), Error> {
        if self.config.group.is_some() {
            self.commit().await?;
        }
        match self.membership.take() {
            Some(membership) => membership.leave().await,
            None => Ok(()),
        }
    }
}

/// Where `start` puts each partition of `topic` (`partitions`: all when `None`).
#[derive(Debug, Clone)]
pub struct StartPositions {
    /// Each partition's (start offset, end offset) when they were resolved.
    pub ranges: BTreeMap<u32, (u64, u64)>,
    pub positions: BTreeMap<u32, u64>,
    /// Positions moved into their partition's retained range.
    pub adjustments: Vec<Adjustment>,
}

/// Resolves a [`StartFrom`] to an offset in each partition, each partition on its own: a
/// position outside a partition's retained range is moved into it (and reported), never an
/// error.
pub async fn resolve_start(
    client: &Client,
    topic: &str,
    partitions: Option<&[u32]>,
    start: StartFrom,
) -> Result<StartPositions, Error> {
    let info = client.describe_topic(topic).await?;
    let partitions: Vec<u32> = match partitions {
        Some(p) => p.to_vec(),
        None => info.partitions.iter().map(|p| p.partition).collect(),
    };
    let mut ranges = BTreeMap::new();
    for &partition in &partitions {
        let Some(p) = info.partitions.iter().find(|p| p.partition == partition) else {
            return Err(Error::Status(tonic::Status::invalid_argument(format!(
                "topic '{topic}' has {} partition(s), 0 to {}; partition {partition} does not exist",
                info.partitions.len(),
                info.partitions.len().saturating_sub(1)
            ))));
        };
        ranges.insert(partition, (p.start_offset, p.end_offset));
    }
    let by_time = match start {
        StartFrom::Timestamp(ms) => client
            .list_offsets(topic, &partitions, Some(ms))
            .await?
            .into_iter()
            .map(|p| (p.partition, p.timestamp_offset.unwrap_or(p.end_offset)))
            .collect(),
        _ => BTreeMap::new(),
    };
    let mut positions = BTreeMap::new();
    let mut adjustments = Vec::new();
    for (&partition, &(first, end)) in &ranges {
        let requested = match start {
            StartFrom::Beginning => first,
            StartFrom::End => end,
            StartFrom::Offset(offset) => offset,
            StartFrom::Last(n) => end.saturating_sub(n),
            StartFrom::AfterStart(n) => first.saturating_add(n),
            StartFrom::Timestamp(_) => by_time.get(&partition).copied().unwrap_or(end),
        };
        let actual = requested.clamp(first, end);
        // `Last(n)` beyond the start is no surprise worth reporting: it means "all of it".
        if actual != requested && !matches!(start, StartFrom::Last(_)) {
            adjustments.push(Adjustment {
                partition,
                requested,
                actual,
                start_offset: first,
                end_offset: end,
            });
        }
        positions.insert(partition, actual);
    }
    Ok(StartPositions {
        ranges,
        positions,
        adjustments,
    })
}

/// Errors that say the node (or the way to it) failed, not the request: another node may serve
/// the same read.
pub fn is_node_failure(e: &Error) -> bool {
    matches!(
        e.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
    )
}
