//! End-to-end latency: records produced at a steady rate (open loop, through the batching
//! producer) and consumed from one node as they commit, by Subscribe (push) or long-poll Fetch
//! (pull). Each record carries its send time; the consumer records the time from send to
//! receipt, which is what an application waiting on the broker sees.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{BufMut, BytesMut};
use futures::StreamExt;
use hdrhistogram::Histogram;
use raftlog_client::producer::{Producer, ProducerConfig};
use raftlog_client::{pb, Client};
use serde_json::json;

use super::{ConsumeMode, E2eArgs};

/// Bytes at the start of each value: the send time, in ns since the run's start.
const STAMP_BYTES: usize = 8;

pub async fn e2e(client: &Client, args: E2eArgs, as_json: bool) -> anyhow::Result<()> {
    if args.rate == 0 || args.duration_secs == 0 || args.record_bytes < STAMP_BYTES {
        bail!(
            "--rate and --duration-secs must be at least 1, --record-bytes at least {STAMP_BYTES}"
        );
    }
    super::produce::ensure_topic(client, &args.topic, args.partitions).await?;
    let endpoint = args
        .endpoint
        .clone()
        .unwrap_or_else(|| client.endpoints()[0].clone());
    let node = client.for_endpoints([endpoint.clone()])?;
    // Consumers start at each partition's end as this node has it: only this run's records count.
    let info = node
        .describe_topic(&args.topic)
        .await
        .with_context(|| format!("describing topic '{}' on {endpoint}", args.topic))?;
    let total = args.rate * args.duration_secs;
    let base = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    // Set by the consumer that receives the last record: the others stop waiting for more.
    let (all_received, _) = tokio::sync::watch::channel(false);
    let all_received = Arc::new(all_received);
    let mut consumers = Vec::new();
    for p in &info.partitions {
        let (node, endpoint, topic, received, all_received) = (
            node.clone(),
            endpoint.clone(),
            args.topic.clone(),
            received.clone(),
            all_received.clone(),
        );
        let (partition, from, mode) = (p.partition, p.end_offset, args.mode);
        consumers.push(tokio::spawn(async move {
            consume_partition(
                &node,
                &endpoint,
                &topic,
                partition,
                from,
                mode,
                base,
                received,
                total,
                all_received,
            )
            .await
        }));
    }

    let mut config = ProducerConfig::default();
    if let Some(ms) = args.linger_ms {
        config.linger = Duration::from_millis(ms);
    }
    let producer = Producer::new(client.clone(), config.clone());
    let payloads = super::Payloads::new(args.payload, args.record_bytes);
    let progress = super::spawn_progress(received.clone(), total, "records received");
    // Open loop: the sender keeps to the schedule (rate records per second) whatever the latency,
    // in 1 ms steps (tokio's timer resolution), so slow acks show up as latency, not as a lower
    // rate. Acks are awaited on another task.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let acks = tokio::spawn(async move {
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut hist = super::new_histogram();
        loop {
            tokio::select! {
                next = rx.recv() => match next {
                    Some((sent, delivery)) => pending.push(async move {
                        let outcome: Result<_, raftlog_client::Error> = delivery.await;
                        (sent, outcome)
                    }),
                    None => break,
                },
                Some((sent, outcome)) = pending.next(), if !pending.is_empty() => {
                    outcome.context("a record failed")?;
                    hist.record(Instant::elapsed(&sent).as_micros() as u64).ok();
                }
            }
        }
        while let Some((sent, outcome)) = pending.next().await {
            outcome.context("a record failed")?;
            hist.record(Instant::elapsed(&sent).as_micros() as u64).ok();
        }
        Ok::<_, anyhow::Error>(hist)
    });
    let mut sent = 0u64;
    let started = Instant::now();
    while sent < total {
        let due = ((started.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        while sent < due {
            // Stamped with the time the schedule says this record is sent, not when the loop got
            // to it: a stall in the sender counts as latency (no coordinated omission).
            let now = started + Duration::from_nanos(sent * 1_000_000_000 / args.rate);
            let mut value = BytesMut::with_capacity(args.record_bytes);
            value.put_u64_le(now.duration_since(base).as_nanos() as u64);
            value.put_slice(&payloads.next()[STAMP_BYTES..]);
            let record = pb::Record {
                value: value.freeze(),
                ..Default::default()
            };
            let delivery = producer.send(&args.topic, record).await?;
            let _ = tx.send((now, delivery));
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let send_secs = started.elapsed().as_secs_f64();
    drop(tx);
    producer.flush().await;
    let ack_hist = acks.await??;
    let mut e2e_hist = super::new_histogram();
    for consumer in consumers {
        let hist = tokio::time::timeout(Duration::from_secs(30), consumer)
            .await
            .context("consumers did not receive every record within 30 s of the last ack")???;
        e2e_hist.add(hist).ok();
    }
    progress.abort();
    let result = json!({
        "system": "raftlog", "mode": "e2e", "consume": args.mode.name(), "endpoint": endpoint,
        "records": total, "rate": args.rate, "sent_per_s": total as f64 / send_secs,
        "record_bytes": args.record_bytes, "payload": args.payload.name(),
        "partitions": info.partitions.len(), "seconds": send_secs,
        "producer": {"linger_ms": config.linger.as_millis() as u64},
        "e2e_latency_us": super::latency_json(&e2e_hist),
        "ack_latency_us": super::latency_json(&ack_hist),
    });
    println!("{result}");
    if !as_json {
        eprintln!(
            "raftlog e2e ({}): {total} records at {} /s: send to receipt p50 {} us, p99 {} us; send to ack p50 {} us, p99 {} us",
            args.mode.name(),
            args.rate,
            e2e_hist.value_at_quantile(0.5),
            e2e_hist.value_at_quantile(0.99),
            ack_hist.value_at_quantile(0.5),
            ack_hist.value_at_quantile(0.99)
        );
    }
    Ok(())
}

/// Reads one partition from `from` until every partition together has received `total` records;
/// returns the send-to-receipt latencies (µs) of this partition's records.
#[allow(clippy::too_many_arguments)]
async fn consume_partition(
    node: &Client,
    endpoint: &str,
    topic: &str,
    partition: u32,
    from: u64,
    mode: ConsumeMode,
    base: Instant,
    received: Arc<AtomicU64>,
    total: u64,
    all_received: Arc<tokio::sync::watch::Sender<bool>>,
) -> anyhow::Result<Histogram<u64>> {
    let mut hist = super::new_histogram();
    let mut record_latency = |record: &pb::Record| {
        let now = base.elapsed().as_nanos() as u64;
        let stamp: [u8; STAMP_BYTES] = record.value[..STAMP_BYTES]
            .try_into()
            .expect("records of this run start with their send time");
        hist.record(now.saturating_sub(u64::from_le_bytes(stamp)) / 1000)
            .ok();
        let last = received.fetch_add(1, Ordering::Relaxed) + 1 >= total;
        if last {
            all_received.send_replace(true);
        }
        last
    };
    match mode {
        ConsumeMode::Push => {
            let mut stream = node.subscribe(endpoint, topic, partition, from).await?;
            let mut done = all_received.subscribe();
            loop {
                // A subscription sends nothing while there is nothing new: without the signal,
                // partitions that did not receive the last record would wait forever.
                let message = tokio::select! {
                    message = stream.next() => message,
                    _ = done.wait_for(|all| *all) => break,
                };
                let Some(message) = message else {
                    bail!("the subscription to partition {partition} ended");
                };
                for record in &message?.records {
                    if record_latency(record) {
                        break;
                    }
                }
            }
            Ok(hist)
        }
        ConsumeMode::Pull => {
            let mut offset = from;
            // Other partitions' consumers may finish the run: wait at most 100 ms per fetch.
            while received.load(Ordering::Relaxed) < total {
                let response = node
                    .fetch_from(
                        endpoint,
                        pb::FetchRequest {
                            topic: topic.to_string(),
                            partition,
                            offset,
                            max_wait_ms: 100,
                            ..Default::default()
                        },
                    )
                    .await?;
                for record in &response.records {
                    offset += 1;
                    if record_latency(record) {
                        return Ok(hist);
                    }
                }
            }
            Ok(hist)
        }
    }
}
