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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftlog_client::consumer::{Consumer, ConsumerConfig, StartFrom};
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
}

/// How long a client operation may take, retries included; an op that outlives it is `info`.
/// The nodes are started with the same `write_timeout_ms_max`, so no write of the workload is
/// proposed later than this after it was sent (checked as `late-write`).
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(3);

fn client(endpoints: &[String]) -> anyhow::Result<Client> {
    // Short deadlines keep operations flowing through faults.
    Ok(Client::new(endpoints.to_vec())?.with_retry(RetryPolicy {
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
        let record = raftlog_client::record(value.to_string().into_bytes());
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
    records
        .iter()
        .map(|r| {
            // A value that is not one of ours shows up as u64::MAX: the checker reports it as
            // unexpected.
            let v = std::str::from_utf8(&r.value)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX);
            (r.offset, v)
        })
        .collect()
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

/// One member of [`MEMBER_GROUP`]: the client's coordinated `Consumer`, committing what it read;
/// every few seconds it leaves, half the time gracefully and half the time by dying without a
/// word (its session has to expire), and joins again.
pub async fn member(w: Workload, seed: u64) -> anyhow::Result<()> {
    let client = client(&w.endpoints)?;
    let mut rng = StdRng::seed_from_u64(seed);
    while Instant::now() < w.deadline {
        let mut config = ConsumerConfig::new(TOPIC)
            .group(MEMBER_GROUP)
            .start(StartFrom::Beginning);
        config.session_timeout_ms = 3000;
        config.unavailable_timeout = Duration::from_secs(5);
        let Ok(mut consumer) = Consumer::new(client.clone(), config).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let stay = Instant::now() + Duration::from_millis(rng.random_range(2_000..8_000));
        while Instant::now() < stay.min(w.deadline) {
            match consumer.poll(Duration::from_millis(300)).await {
                Ok(records) if !records.is_empty() => {
                    let _ = consumer.commit().await;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if rng.random_bool(0.5) {
            let _ = consumer.close().await;
        } else {
            drop(consumer); // a crash: no leave, no commit
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1_000))).await;
    }
    Ok(())
}

/// Five times a second, which members own each partition of [`MEMBER_GROUP`] in each node's
/// state (the checker's `group-double-owner`). A node that does not answer within a second is
/// skipped for that round.
pub async fn sample_group_owners(w: Workload) -> anyhow::Result<()> {
    let nodes: Vec<Client> = w
        .endpoints
        .iter()
        .map(|e| client(std::slice::from_ref(e)))
        .collect::<anyhow::Result<_>>()?;
    let process = w.recorder.new_process();
    while Instant::now() < w.deadline {
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
