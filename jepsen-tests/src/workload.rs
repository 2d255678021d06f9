//! The workload: producers append unique values to the partitions of one topic and record what
//! was acknowledged; consumers, each bound to one node, read every partition forward and record
//! what they saw, and every few rounds commit their position to their own consumer group and read
//! the committed offset back. With `--members`, members of one coordinated group consume and
//! come and go (leaving or dying), while a sampler records who owns each partition on each node.
//! All of it is recorded into one history.
//!
//! Outcomes: a produce error the client knows had no effect ([`raftlog_client::Error::is_definite`])
//! is `fail`; any other error is `info` (unknown), after which the producer continues as a new
//! process, as in Jepsen. Reads have no effect, so a failed read is `fail`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftlog_client::consumer::{ConsumedRecord, Consumer, ConsumerConfig, StartFrom};
use raftlog_client::producer::{Producer, ProducerConfig};
use raftlog_client::{pb, Client, RetryPolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{OpKind, OpValue, Recorder};

pub const TOPIC: &str = "jepsen";

#[derive(Clone)]
pub struct Workload {
    pub endpoints: Vec<String>,
    pub partitions: u32,
    pub recorder: Recorder,
    pub deadline: Instant,
    /// The queue workload's queue is key-ordered (`--queue-key-ordered`).
    pub queue_key_ordered: bool,
}

/// Records carry one of this many keys (`k<value mod RECORD_KEYS>`): the key-ordered queue
/// checks order per key. Producers name the partition, so keys do not pick it.
pub const RECORD_KEYS: u64 = 16;

/// How long a client operation may take, retries included; an op that outlives it is `info`.
/// The nodes are started with the same `write_timeout_ms_max`, so no write of the workload is
/// proposed later than this after it was sent (checked as `late-write`).
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(3);

pub(crate) fn client(endpoints: &[String]) -> anyhow::Result<Client> {
    // Short deadlines keep operations flowing through faults.
    crate::secure::secured(Client::new(endpoints.to_vec())?.with_retry(RetryPolicy {
        deadline: CLIENT_DEADLINE,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        request_timeout: Duration::from_secs(2),
    }))
}

/// Creates the topic, retrying until the cluster accepts it.
pub async fn create_topic(endpoints: &[String], partitions: u32) -> anyhow::Result<()> {
    let client = client(endpoints)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.create_topic(TOPIC, partitions).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == tonic::Code::AlreadyExists => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// How producers write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProducerKind {
    /// One produce request per record; an unknown outcome is recorded as `info`.
    Plain,
    /// The client's idempotent batching `Producer`: it resends batches whose outcome is unknown,
    /// relying on the node's deduplication.
    Idempotent,
    /// One request per record on a `ProduceStream` (each producer its own stream); outcomes as
    /// for `plain`: a broken stream leaves its request unknown (`info`).
    Stream,
}

/// One producer: sends unique values until the deadline, one at a time (closed loop).
pub async fn produce(
    w: Workload,
    kind: ProducerKind,
    values: Arc<AtomicU64>,
    seed: u64,
) -> anyhow::Result<()> {
    let client = client(&w.endpoints)?;
    let producer = (kind == ProducerKind::Idempotent).then(|| {
        let config = ProducerConfig {
            linger: Duration::ZERO,
            // Long enough to ride out an election, short enough to keep ops flowing.
            delivery_timeout: Duration::from_secs(10),
            ..ProducerConfig::default()
        };
        Producer::new(client.clone(), config)
    });
    let stream = (kind == ProducerKind::Stream).then(|| client.produce_stream());
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = w.recorder.new_process();
    while Instant::now() < w.deadline {
        let partition = rng.random_range(0..w.partitions);
        let value = values.fetch_add(1, Ordering::Relaxed);
        w.recorder.invoke(process, OpValue::send(partition, value));
        let mut record = raftlog_client::record(value.to_string().into_bytes());
        record.key = Some(format!("k{}", value % RECORD_KEYS).into_bytes().into());
        let result = match (&producer, &stream) {
            (Some(producer), _) => match producer.send_to(TOPIC, partition, record).await {
                Ok(delivery) => delivery.await.map(|d| d.offset),
                Err(e) => Err(e),
            },
            (None, Some(stream)) => stream
                .send(pb::ProduceRequest {
                    topic: TOPIC.into(),
                    partition: Some(partition),
                    records: vec![record],
                    ..Default::default()
                })
                .await
                .map(|ack| ack.base_offset),
            (None, None) => client
                .produce(TOPIC, partition, vec![record])
                .await
                .map(|ack| ack.base_offset),
        };
        match result {
            Ok(offset) => {
                w.recorder.complete(
                    process,
                    OpKind::Ok,
                    OpValue::send_ok(partition, value, offset),
                );
            }
            Err(e) if e.is_definite() => {
                w.recorder
                    .complete(process, OpKind::Fail, OpValue::send(partition, value));
            }
            Err(_) => {
                w.recorder
                    .complete(process, OpKind::Info, OpValue::send(partition, value));
                process = w.recorder.new_process();
            }
        }
    }
    Ok(())
}

fn parse_records(records: &[pb::Record]) -> Vec<(u64, u64)> {
    records.iter().map(parse_record).collect()
}

/// A record as `(offset, value)`. A value that is not one of ours shows up as u64::MAX: the
/// checker reports it as unexpected.
fn parse_record(r: &pb::Record) -> (u64, u64) {
    let v = std::str::from_utf8(&r.value)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX);
    (r.offset, v)
}

/// One consumer bound to `node`: polls every partition forward until the deadline, committing
/// its positions to group `consumer-<index>` (each group has one committer, so its committed
/// offsets only ever grow) and fetching them back.
pub async fn consume(w: Workload, node: usize, index: usize) -> anyhow::Result<()> {
    let client = client(&w.endpoints)?;
    let addr = w.endpoints[node].clone();
    let mut process = w.recorder.new_process();
    let mut next = vec![0u64; w.partitions as usize];
    let group = format!("consumer-{index}");
    let mut round = 0u64;
    while Instant::now() < w.deadline {
        round += 1;
        if round.is_multiple_of(10) {
            let partition = (round / 10 % w.partitions as u64) as u32;
            process = commit_and_fetch(
                &w,
                &client,
                process,
                &group,
                partition,
                next[partition as usize],
            )
            .await;
        }
        let mut got_any = false;
        for partition in 0..w.partitions {
            w.recorder.invoke(process, OpValue::poll(partition));
            let mut request = tonic::Request::new(pb::FetchRequest {
                topic: TOPIC.into(),
                partition,
                offset: next[partition as usize],
                max_records: 200,
                max_bytes: 0,
                max_wait_ms: 0,
            });
            request.set_timeout(Duration::from_secs(1));
            let result = match client.broker_at(&addr) {
                Ok(mut broker) => broker.fetch(request).await.map(|r| r.into_inner()),
                Err(e) => Err(tonic::Status::internal(e.to_string())),
            };
            match result {
                Ok(response) => {
                    let records = parse_records(&response.records);
                    if let Some((last, _)) = records.last() {
                        next[partition as usize] = last + 1;
                        got_any = true;
                    }
                    w.recorder
                        .complete(process, OpKind::Ok, OpValue::poll_ok(partition, records));
                }
                Err(_) => {
                    w.recorder
                        .complete(process, OpKind::Fail, OpValue::poll(partition));
                }
            }
        }
        if !got_any {
            // Nothing new anywhere: pace the loop rather than spin on a 2-core machine.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Commits `offset` for `group`/`partition`, then reads the committed offset back. Returns the
/// process to continue as (a new one after an `info`).
async fn commit_and_fetch(
    w: &Workload,
    client: &Client,
    mut process: u64,
    group: &str,
    partition: u32,
    offset: u64,
) -> u64 {
    let commit = OpValue::commit_offset(group, partition, offset);
    w.recorder.invoke(process, commit.clone());
    match client
        .commit_offsets(group, TOPIC, [(partition, offset)])
        .await
    {
        Ok(()) => {
            w.recorder.complete(process, OpKind::Ok, commit);
        }
        Err(e) if e.is_definite() => {
            w.recorder.complete(process, OpKind::Fail, commit);
        }
        Err(_) => {
            w.recorder.complete(process, OpKind::Info, commit);
            process = w.recorder.new_process();
        }
    }
    w.recorder
        .invoke(process, OpValue::fetch_committed(group, partition));
    match client.fetch_offsets(group, TOPIC).await {
        Ok(offsets) => w.recorder.complete(
            process,
            OpKind::Ok,
            OpValue::fetch_committed_ok(group, partition, offsets.get(&partition).copied()),
        ),
        // A read has no effect: a failed one is `fail` whatever the error.
        Err(_) => w.recorder.complete(
            process,
            OpKind::Fail,
            OpValue::fetch_committed(group, partition),
        ),
    };
    process
}

/// After healing: every partition, read in full from every node.
pub async fn final_reads(w: &Workload) -> anyhow::Result<()> {
    let client = client(&w.endpoints)?;
    for (node, addr) in w.endpoints.iter().enumerate() {
        for partition in 0..w.partitions {
            let process = w.recorder.new_process();
            w.recorder
                .invoke(process, OpValue::final_read(node as u64 + 1, partition));
            let mut records = Vec::new();
            let mut stamps_ms = Vec::new();
            let mut offset = 0;
            let outcome = loop {
                let request = pb::FetchRequest {
                    topic: TOPIC.into(),
                    partition,
                    offset,
                    max_records: 5000,
                    max_bytes: 0,
                    max_wait_ms: 0,
                };
                match client.fetch_from(addr, request).await {
                    Ok(r) if r.records.is_empty() => break Ok(()),
                    Ok(r) => {
                        let batch = parse_records(&r.records);
                        offset = batch.last().map_or(offset, |(o, _)| o + 1);
                        records.extend(batch);
                        // The workload sends records without a timestamp: the leader stamps them.
                        stamps_ms.extend(
                            r.records
                                .iter()
                                .map(|r| w.recorder.since_start_ms(r.timestamp_ms)),
                        );
                    }
                    Err(e) => break Err(e),
                }
            };
            match outcome {
                Ok(()) => w.recorder.complete(
                    process,
                    OpKind::Ok,
                    OpValue::final_read_stamped(node as u64 + 1, partition, records, stamps_ms),
                ),
                Err(e) => {
                    w.recorder.complete(
                        process,
                        OpKind::Fail,
                        OpValue::final_read(node as u64 + 1, partition),
                    );
                    anyhow::bail!(
                        "final read of partition {partition} from node {} failed: {e}",
                        node + 1
                    );
                }
            };
        }
    }
    Ok(())
}

/// The coordinated consumer group the `--members` workload joins.
pub const MEMBER_GROUP: &str = "jepsen-members";

fn member_config() -> ConsumerConfig {
    let mut config = ConsumerConfig::new(TOPIC)
        .group(MEMBER_GROUP)
        .start(StartFrom::Beginning);
    config.session_timeout_ms = 3000;
    config.unavailable_timeout = Duration::from_secs(5);
    config
}

/// What one incarnation of a member reads and commits, recorded into the history: when it
/// started and stopped reading each partition (as its consumer says), what it read, and its
/// commits.
struct MemberLog {
    w: Workload,
    client: Client,
    /// For `owns` and `member_read` ops (always `ok`).
    process: u64,
    /// For commits (a new one after an `info`).
    commit_process: u64,
    /// Partition -> the member id that started reading it, and the first offset it read there.
    reading: BTreeMap<u32, (String, Option<u64>)>,
}

impl MemberLog {
    fn new(w: &Workload, client: &Client) -> Self {
        MemberLog {
            w: w.clone(),
            client: client.clone(),
            process: w.recorder.new_process(),
            commit_process: w.recorder.new_process(),
            reading: BTreeMap::new(),
        }
    }

    fn at_ns(&self, at: std::time::Instant) -> u64 {
        u64::try_from(
            at.saturating_duration_since(self.w.recorder.start())
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }

    fn owns(&self, member: &str, partition: u32, owned: bool, at: std::time::Instant) {
        let value = OpValue::owns(member, partition, owned, self.at_ns(at));
        self.w.recorder.invoke(self.process, value.clone());
        self.w.recorder.complete(self.process, OpKind::Ok, value);
    }

    /// Records what the consumer says it started and stopped reading.
    fn follow(&mut self, consumer: &mut Consumer) {
        for change in consumer.take_assignment_changes() {
            for p in &change.removed {
                if let Some((member, _)) = self.reading.remove(p) {
                    self.owns(&member, *p, false, change.at);
                }
            }
            for p in &change.added {
                self.owns(&change.member_id, *p, true, change.at);
                self.reading.insert(*p, (change.member_id.clone(), None));
            }
        }
    }

    /// The member stops reading everything (it leaves or dies now).
    fn stop_all(&mut self) {
        let now = std::time::Instant::now();
        for (p, (member, _)) in std::mem::take(&mut self.reading) {
            self.owns(&member, p, false, now);
        }
    }

    /// Records a poll's records per partition, then commits each partition's position as the
    /// member.
    async fn read_and_commit(&mut self, consumer: &Consumer, records: &[ConsumedRecord]) {
        let mut by_partition: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        for r in records {
            by_partition
                .entry(r.partition)
                .or_default()
                .push(parse_record(&r.record));
        }
        let Some((member_id, epoch)) = consumer.member() else {
            return;
        };
        for (partition, read) in by_partition {
            let label = match self.reading.get_mut(&partition) {
                Some((label, first)) => {
                    first.get_or_insert(read[0].0);
                    label.clone()
                }
                None => member_id.clone(),
            };
            self.w.recorder.invoke(
                self.process,
                OpValue::member_read(label.as_str(), partition, []),
            );
            self.w.recorder.complete(
                self.process,
                OpKind::Ok,
                OpValue::member_read(label, partition, read),
            );
            let Some(&position) = consumer.positions().get(&partition) else {
                continue;
            };
            self.commit_process = commit_as_member(
                &self.w,
                &self.client,
                self.commit_process,
                (&member_id, epoch),
                (partition, position),
                false,
            )
            .await;
        }
    }
}

/// Commits `offset` for `partition` to [`MEMBER_GROUP`] as `member` and records it; returns the
/// process to continue as (a new one after an `info`).
async fn commit_as_member(
    w: &Workload,
    client: &Client,
    process: u64,
    (member_id, epoch): (&str, i64),
    (partition, offset): (u32, u64),
    allow_rewind: bool,
) -> u64 {
    let commit = OpValue::member_commit(MEMBER_GROUP, member_id, partition, offset);
    w.recorder.invoke(process, commit.clone());
    let result = client
        .commit_offsets_as(
            MEMBER_GROUP,
            TOPIC,
            [(partition, offset)],
            allow_rewind,
            Some((member_id, epoch)),
        )
        .await;
    match result {
        Ok(()) => {
            w.recorder.complete(process, OpKind::Ok, commit);
            process
        }
        Err(e) if e.is_definite() => {
            w.recorder.complete(process, OpKind::Fail, commit);
            process
        }
        Err(_) => {
            w.recorder.complete(process, OpKind::Info, commit);
            w.recorder.new_process()
        }
    }
}

/// One member of [`MEMBER_GROUP`]: the client's coordinated `Consumer`, committing each
/// partition's position as it reads; every few seconds it leaves, half the time gracefully and
/// half the time by dying without a word (its session has to expire); a dead one comes back as
/// a zombie (see [`zombie_commit`]). Then it joins again.
pub async fn member(w: Workload, seed: u64) -> anyhow::Result<()> {
    let client = client(&w.endpoints)?;
    let mut rng = StdRng::seed_from_u64(seed);
    while Instant::now() < w.deadline {
        let Ok(mut consumer) = Consumer::new(client.clone(), member_config()).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut log = MemberLog::new(&w, &client);
        let stay = Instant::now() + Duration::from_millis(rng.random_range(2_000..8_000));
        while Instant::now() < stay.min(w.deadline) {
            let polled = consumer.poll(Duration::from_millis(300)).await;
            log.follow(&mut consumer);
            match polled {
                Ok(records) => log.read_and_commit(&consumer, &records).await,
                Err(_) => break,
            }
        }
        log.follow(&mut consumer);
        if rng.random_bool(0.5) {
            log.stop_all();
            let _ = consumer.close().await;
        } else {
            let member = consumer.member();
            let zombie = log
                .reading
                .iter()
                .find_map(|(&p, (_, first))| Some((p, (*first)?)))
                .and_then(|(p, first)| Some((p, first, *consumer.positions().get(&p)?)));
            log.stop_all();
            drop(consumer); // a crash: no leave, no commit
            if let (Some(member), Some(zombie)) = (member, zombie) {
                tokio::spawn(zombie_commit(w.clone(), client.clone(), member, zombie));
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1_000))).await;
    }
    Ok(())
}

/// A member that died comes back as a zombie: once another member has committed `partition`
/// past where the dead one stopped reading (so the partition has surely moved on), it commits
/// the offset it had started that partition from, allowed to rewind, under its old member id and
/// epoch. The cluster must refuse it (the member is gone); accepted, it moves the group's offset
/// backwards (`group-offset-regression`) while another member owns the partition
/// (`group-commit-non-owner`).
async fn zombie_commit(
    w: Workload,
    client: Client,
    (member_id, epoch): (String, i64),
    (partition, first, stopped_at): (u32, u64, u64),
) {
    let give_up = (Instant::now() + Duration::from_secs(20)).min(w.deadline);
    loop {
        if Instant::now() >= give_up {
            return;
        }
        let moved_on = client
            .fetch_offsets(MEMBER_GROUP, TOPIC)
            .await
            .is_ok_and(|offsets| offsets.get(&partition).is_some_and(|&c| c > stopped_at));
        if moved_on {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let process = w.recorder.new_process();
    commit_as_member(
        &w,
        &client,
        process,
        (&member_id, epoch),
        (partition, first),
        true,
    )
    .await;
}

/// After healing: members join the group and read until it has committed every partition's
/// end, then leave (the checker's `group-undelivered` holds the final log to what members read).
/// Gives up after a minute, leaving the checker to report what was never read.
pub async fn drain_members(w: &Workload, members: usize) -> anyhow::Result<()> {
    let client = client(&w.endpoints)?;
    let ends: BTreeMap<u32, u64> = client
        .list_offsets(TOPIC, &[], None)
        .await?
        .into_iter()
        .map(|p| (p.partition, p.end_offset))
        .collect();
    let give_up = Instant::now() + Duration::from_secs(60);
    let drain = Workload {
        deadline: give_up,
        ..w.clone()
    };
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..members {
        let (w, client, done) = (drain.clone(), client.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut consumer = loop {
                if done.load(Ordering::Relaxed) || Instant::now() >= w.deadline {
                    return;
                }
                match Consumer::new(client.clone(), member_config()).await {
                    Ok(consumer) => break consumer,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            let mut log = MemberLog::new(&w, &client);
            while !done.load(Ordering::Relaxed) && Instant::now() < w.deadline {
                let polled = consumer.poll(Duration::from_millis(300)).await;
                log.follow(&mut consumer);
                if let Ok(records) = polled {
                    log.read_and_commit(&consumer, &records).await;
                }
            }
            log.follow(&mut consumer);
            log.stop_all();
            let _ = consumer.close().await;
        }));
    }
    loop {
        let committed = client.fetch_offsets(MEMBER_GROUP, TOPIC).await;
        let all_read = committed.is_ok_and(|c| {
            ends.iter()
                .all(|(p, &end)| c.get(p).copied().unwrap_or(0) >= end)
        });
        if all_read {
            break;
        }
        if Instant::now() >= give_up {
            tracing::warn!("the group's members did not read every record within a minute");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    done.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// Five times a second, which members own each partition of [`MEMBER_GROUP`] in each node's
/// state (the checker's `group-double-owner`), and the group's committed offsets (read from the
/// leader, for `group-offset-regression`). A node that does not answer within a second is
/// skipped for that round.
pub async fn sample_group_owners(w: Workload) -> anyhow::Result<()> {
    let nodes: Vec<Client> = w
        .endpoints
        .iter()
        .map(|e| client(std::slice::from_ref(e)))
        .collect::<anyhow::Result<_>>()?;
    let process = w.recorder.new_process();
    let leader = client(&w.endpoints)?;
    // One process per partition: a single fetch answers for all of them.
    let fetchers: Vec<u64> = (0..w.partitions)
        .map(|_| w.recorder.new_process())
        .collect();
    while Instant::now() < w.deadline {
        for (partition, &p) in fetchers.iter().enumerate() {
            w.recorder
                .invoke(p, OpValue::fetch_committed(MEMBER_GROUP, partition as u32));
        }
        let committed = leader.fetch_offsets(MEMBER_GROUP, TOPIC).await;
        for (partition, &p) in fetchers.iter().enumerate() {
            let partition = partition as u32;
            match &committed {
                Ok(offsets) => w.recorder.complete(
                    p,
                    OpKind::Ok,
                    OpValue::fetch_committed_ok(
                        MEMBER_GROUP,
                        partition,
                        offsets.get(&partition).copied(),
                    ),
                ),
                Err(_) => w.recorder.complete(
                    p,
                    OpKind::Fail,
                    OpValue::fetch_committed(MEMBER_GROUP, partition),
                ),
            };
        }
        for (i, node) in nodes.iter().enumerate() {
            let described =
                tokio::time::timeout(Duration::from_secs(1), node.describe_group(MEMBER_GROUP));
            let Ok(Ok(info)) = described.await else {
                continue;
            };
            for partition in 0..w.partitions {
                let owners: Vec<String> = info
                    .members
                    .iter()
                    .filter(|m| {
                        m.assigned
                            .iter()
                            .chain(&m.revoking)
                            .any(|tp| tp.topic == TOPIC && tp.partitions.contains(&partition))
                    })
                    .map(|m| m.member_id.clone())
                    .collect();
                let id = i as u64 + 1;
                w.recorder
                    .invoke(process, OpValue::group_owners(id, partition, Vec::new()));
                w.recorder.complete(
                    process,
                    OpKind::Ok,
                    OpValue::group_owners(id, partition, owners),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
