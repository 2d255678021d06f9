//! The queue workload (`--queue-workers`): workers of one queue group on the topic take records
//! and ack most of them, release some (with a delay), reject a few, extend some locks, let some
//! locks run out (hang), and sometimes crash (drop what they hold and start over as a new
//! worker). Each record handed out is a `queue_delivery` op, each settlement a `queue_settle`
//! op. After healing, workers drain the queue (receive and ack until the leader says nothing is
//! left, or nothing was handed out for a minute), and the dead-letter topic is read back as `queue_dead_letter` ops; `queue_checks`
//! judges it all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftlog_client::queue::Job;
use raftlog_client::{pb, Client};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{OpKind, OpValue};
use crate::queue_checks::MAX_DELIVERIES;
use crate::workload::{client, Workload, TOPIC};

pub const QUEUE: &str = "jepsen-q";
/// Where the queue's dead letters go.
pub const DEAD_LETTERS: &str = "jepsen-q-dlq";
/// Short, so that hung workers' records come back within a run.
const LOCK_MS: u32 = 1500;
/// The drain stops after this long without a delivery...
const DRAIN_IDLE_MAX: Duration = Duration::from_secs(60);
/// ...or after this long in all.
const DRAIN_CAP: Duration = Duration::from_secs(300);

/// Creates the queue (with dead letters), retrying until the cluster accepts it.
pub async fn create_queue(endpoints: &[String], key_ordered: bool) -> anyhow::Result<()> {
    let client = client(endpoints)?;
    let settings = pb::QueueSettings {
        lock_ms: LOCK_MS,
        max_deliveries: MAX_DELIVERIES,
        backoff_ms: vec![100, 300],
        in_flight_max: 200,
        dead_letters: true,
        dead_letter_topic: DEAD_LETTERS.into(),
        key_ordered,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.create_queue(QUEUE, TOPIC, settings.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Records a job handed to `worker` by a receive sent at `sent_ns`.
fn record_delivery(w: &Workload, worker: &str, job: &Job, sent_ns: u64) {
    let value = std::str::from_utf8(&job.record.value)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    let op = OpValue::QueueDelivery {
        member: worker.to_string(),
        partition: job.partition,
        offset: job.offset,
        value,
        count: job.delivery_count,
        at_ns: sent_ns,
        deadline_ms: w.recorder.since_start_ms(job.lock_deadline_ms),
        key: job
            .record
            .key
            .as_ref()
            .filter(|_| w.queue_key_ordered)
            .map(|k| String::from_utf8_lossy(k).into_owned()),
    };
    let process = w.recorder.new_process();
    w.recorder.invoke(process, op.clone());
    w.recorder.complete(process, OpKind::Ok, op);
}

/// Sends one settlement of `job` and records it; returns whether it was answered OK.
async fn settle(
    w: &Workload,
    client: &Client,
    worker: &str,
    job: &Job,
    action: pb::SettleAction,
    delay_ms: u32,
) -> bool {
    let name = match action {
        pb::SettleAction::Ack => "ack",
        pb::SettleAction::Release => "release",
        pb::SettleAction::Reject => "reject",
        _ => "extend",
    };
    let op = |deadline_ms| OpValue::QueueSettle {
        member: worker.to_string(),
        partition: job.partition,
        offset: job.offset,
        count: job.delivery_count,
        action: name.to_string(),
        deadline_ms,
    };
    let process = w.recorder.new_process();
    w.recorder.invoke(process, op(None));
    let settlement = pb::Settlement {
        delivery_id: job.delivery_id.clone(),
        action: action as i32,
        delay_ms,
        error: "jepsen".into(),
    };
    match client.settle(QUEUE, vec![settlement]).await {
        Ok(outcomes) if outcomes.first().is_some_and(|o| o.ok) => {
            let deadline = (action == pb::SettleAction::Extend)
                .then(|| w.recorder.since_start_ms(outcomes[0].lock_deadline_ms));
            w.recorder.complete(process, OpKind::Ok, op(deadline));
            true
        }
        // Refused (superseded, done, lock expired): it changed nothing.
        Ok(_) => {
            w.recorder.complete(process, OpKind::Fail, op(None));
            false
        }
        Err(e) if e.is_definite() => {
            w.recorder.complete(process, OpKind::Fail, op(None));
            false
        }
        Err(_) => {
            w.recorder.complete(process, OpKind::Info, op(None));
            false
        }
    }
}

/// One worker until the deadline; a crash starts a new incarnation under a new name.
pub async fn worker(w: Workload, index: usize, seed: u64) -> anyhow::Result<()> {
    let client = client(&w.endpoints)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut incarnation = 0;
    while Instant::now() < w.deadline {
        incarnation += 1;
        let name = format!("w{index}.{incarnation}");
        let life = Instant::now() + Duration::from_millis(rng.random_range(3_000..10_000));
        while Instant::now() < life.min(w.deadline) {
            let sent_ns = w.recorder.elapsed_ns();
            let jobs = match client
                .receive(
                    QUEUE,
                    &name,
                    rng.random_range(1..=4),
                    Duration::from_millis(500),
                )
                .await
            {
                Ok(jobs) => jobs,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            for job in &jobs {
                record_delivery(&w, &name, job, sent_ns);
            }
            for job in &jobs {
                handle(&w, &client, &name, job, &mut rng).await;
            }
        }
        // A crash: whatever it was handed and not yet settled comes back when its lock runs out.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
    }
    Ok(())
}

/// What a worker does with one job: mostly ack; sometimes release, reject, extend first, or
/// hang (never settle it).
async fn handle(w: &Workload, client: &Client, name: &str, job: &Job, rng: &mut StdRng) {
    let roll = rng.random_range(0..100);
    match roll {
        0..=79 => {
            settle(w, client, name, job, pb::SettleAction::Ack, 0).await;
        }
        80..=89 => {
            let delay = rng.random_range(0..400);
            settle(w, client, name, job, pb::SettleAction::Release, delay).await;
        }
        90..=93 => {
            settle(w, client, name, job, pb::SettleAction::Reject, 0).await;
        }
        94..=96 => {
            // Work that takes longer than a lock, kept alive by an extend.
            tokio::time::sleep(Duration::from_millis(u64::from(LOCK_MS) * 2 / 3)).await;
            if settle(w, client, name, job, pb::SettleAction::Extend, 0).await {
                tokio::time::sleep(Duration::from_millis(u64::from(LOCK_MS) / 2)).await;
            }
            settle(w, client, name, job, pb::SettleAction::Ack, 0).await;
        }
        _ => {} // hangs: the lock runs out
    }
}

/// After healing: workers receive and ack until the queue has nothing left (no backlog), or give
/// up after a minute (the checker then reports what was never finished).
pub async fn drain(w: &Workload, workers: usize) -> anyhow::Result<()> {
    let client = client(&w.endpoints)?;
    // A drain after a long faulted run may have thousands of records to hand out (redeliveries
    // wait out their backoff), so it goes on while deliveries keep coming and stops only after a
    // minute without one, or at the hard cap. A record it leaves is reported as queue-lost.
    let started = Instant::now();
    let hard_cap = started + DRAIN_CAP;
    let last_delivery_ms = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for index in 0..workers.max(1) {
        let (w, client, last_delivery_ms) = (w.clone(), client.clone(), last_delivery_ms.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("drain{index}");
            let stalled = || {
                let idle_since = Duration::from_millis(last_delivery_ms.load(Ordering::Relaxed));
                started.elapsed().saturating_sub(idle_since) > DRAIN_IDLE_MAX
            };
            while Instant::now() < hard_cap && !stalled() {
                let sent_ns = w.recorder.elapsed_ns();
                let Ok(jobs) = client
                    .receive(QUEUE, &name, 50, Duration::from_millis(500))
                    .await
                else {
                    continue;
                };
                if jobs.is_empty() {
                    let done = client
                        .describe_queue(QUEUE)
                        .await
                        .is_ok_and(|q| q.backlog == 0);
                    if done {
                        return;
                    }
                    continue;
                }
                let now_ms = started.elapsed().as_millis() as u64;
                last_delivery_ms.fetch_max(now_ms, Ordering::Relaxed);
                for job in &jobs {
                    record_delivery(&w, &name, job, sent_ns);
                    settle(&w, &client, &name, job, pb::SettleAction::Ack, 0).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// Reads the dead-letter topic from the leader side of the cluster and records each dead letter
/// with the origin its headers name.
pub async fn read_dead_letters(w: &Workload) -> anyhow::Result<()> {
    let client = client(&w.endpoints)?;
    let topic = client.describe_topic(DEAD_LETTERS).await?;
    let partitions = topic.config.map_or(0, |c| c.partitions);
    for partition in 0..partitions {
        let mut offset = 0;
        loop {
            let request = pb::FetchRequest {
                topic: DEAD_LETTERS.into(),
                partition,
                offset,
                max_records: 5000,
                max_bytes: 0,
                max_wait_ms: 0,
            };
            let response = client.fetch(request).await?;
            if response.records.is_empty() {
                break;
            }
            for r in &response.records {
                offset = r.offset + 1;
                record_dead_letter(w, r);
            }
        }
    }
    Ok(())
}

fn record_dead_letter(w: &Workload, r: &pb::Record) {
    let header = |key: &str| {
        r.headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| std::str::from_utf8(&h.value).ok())
            .map(str::to_string)
    };
    let number = |key: &str| header(key).and_then(|v| v.parse::<u64>().ok());
    let op = OpValue::QueueDeadLetter {
        partition: number("raftlog-dlq-partition").unwrap_or(u64::MAX) as u32,
        offset: number("raftlog-dlq-offset").unwrap_or(u64::MAX),
        value: std::str::from_utf8(&r.value)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX),
        count: number("raftlog-dlq-deliveries").unwrap_or(0) as u32,
        reason: header("raftlog-dlq-reason").unwrap_or_default(),
    };
    let process = w.recorder.new_process();
    w.recorder.invoke(process, op.clone());
    w.recorder.complete(process, OpKind::Ok, op);
}
