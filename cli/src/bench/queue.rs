//! Queue throughput and latency (`raftlog bench queue`), for raftlog's queue groups and, side by
//! side, NATS JetStream's durable pull consumer with explicit acks: a producer appends COUNT
//! records (closed loop, 64 in flight) while WORKERS workers receive up to BATCH records at a
//! time and ack each one. Reports acked records per second (first produce to last ack) and the
//! latency from each record's send to its ack.
//!
//! raftlog's worker acks the records of one receive in one Settle call (each record acked on its
//! own, in one Raft entry); on a stream (`--stream`) it takes the next records while that Settle
//! commits. NATS's acks each message with its default `ack()` (a publish the
//! server does not confirm), as its documentation recommends. Every record's value starts with
//! its send time (ns since the Unix epoch), so the latency is measured where the ack returns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use async_nats::jetstream::consumer;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use hdrhistogram::Histogram;
use raftlog_client::queue::Worker;
use raftlog_client::{pb, Client};
use serde_json::json;

use super::{new_histogram, spawn_progress, Payload, Payloads, System};

#[derive(clap::Args)]
pub struct QueueArgs {
    /// Topic (raftlog) or stream and subject (NATS); the queue or consumer is named after it.
    #[arg(long, default_value = "bench-queue")]
    topic: String,
    /// Records to produce and ack.
    #[arg(long, default_value_t = 50_000)]
    count: u64,
    /// Workers receiving and acking.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Most records one receive (fetch) takes.
    #[arg(long, default_value_t = 10)]
    batch: u32,
    /// Produce requests in flight.
    #[arg(long, default_value_t = 64)]
    producer_concurrency: u64,
    /// Bytes of each record's value (at least 8: it starts with its send time).
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// What record values hold after their send time: `random` (incompressible) or `fill`.
    #[arg(long, value_enum, default_value_t = Payload::Random)]
    payload: Payload,
    /// Workers take records pushed over a stream (raftlog's ReceiveStream, up to 2 x BATCH locked
    /// per worker, BATCH handled while the previous BATCH's ack commits; NATS's `messages()` with
    /// BATCH per pull) instead of one receive (fetch) at a time.
    #[arg(long)]
    stream: bool,
    /// Give records this many distinct keys and make the queue key-ordered (raftlog only).
    #[arg(long, value_name = "N")]
    keys: Option<u64>,
    /// The system under load.
    #[arg(long, value_enum, default_value_t = System::Raftlog)]
    system: System,
    /// Comma-separated NATS servers (with --system nats).
    #[arg(
        long,
        env = "NATS_URL",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
    )]
    nats_url: Vec<String>,
}

/// Records locked (raftlog) or unacked (NATS `max_ack_pending`) at once.
const IN_FLIGHT_MAX: u32 = 1000;

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A record value: its send time, then the payload's bytes.
fn stamped(payloads: &Payloads, len: usize) -> Bytes {
    let body = payloads.next();
    let mut value = BytesMut::with_capacity(len.max(8));
    value.put_u64(unix_ns());
    value.extend_from_slice(&body[..len.saturating_sub(8).min(body.len())]);
    value.freeze()
}

/// Send-to-ack latency in microseconds of a value made by [`stamped`].
fn since_sent_us(value: &[u8], now_ns: u64) -> u64 {
    let sent = value.get(..8).map_or(now_ns, |b| {
        u64::from_be_bytes(b.try_into().expect("8 bytes"))
    });
    now_ns.saturating_sub(sent) / 1000
}

/// What the workers share: acks so far and the latencies.
struct Tally {
    /// Shared with the progress line.
    acked: Arc<AtomicU64>,
    hist: Mutex<Histogram<u64>>,
}

impl Tally {
    fn add(&self, values: impl Iterator<Item = Bytes>) {
        let now = unix_ns();
        let mut n = 0;
        let mut hist = self.hist.lock().expect("latency histogram");
        for value in values {
            hist.record(since_sent_us(&value, now)).ok();
            n += 1;
        }
        self.acked.fetch_add(n, Ordering::Relaxed);
    }
}

pub async fn queue(client: &Client, args: QueueArgs, as_json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(args.record_bytes >= 8, "--record-bytes must be at least 8");
    anyhow::ensure!(
        args.system == System::Raftlog || args.keys.is_none(),
        "--keys (key-ordered) is raftlog's; NATS has no per-key order"
    );
    let tally = Arc::new(Tally {
        acked: Arc::new(AtomicU64::new(0)),
        hist: Mutex::new(new_histogram()),
    });
    let progress = spawn_progress(tally.acked.clone(), args.count, "records");
    let start = Instant::now();
    let (produced_secs, extra) = match args.system {
        System::Raftlog => raftlog_run(client, &args, tally.clone()).await?,
        System::Nats => nats_run(&args, tally.clone()).await?,
    };
    let secs = start.elapsed().as_secs_f64();
    progress.abort();
    let hist = tally.hist.lock().expect("latency histogram");
    let acked = tally.acked.load(Ordering::Relaxed);
    let mut result = json!({
        "system": args.system.name(), "mode": "queue", "records": acked,
        "record_bytes": args.record_bytes, "payload": args.payload.name(),
        "workers": args.workers, "batch": args.batch, "keys": args.keys,
        "transport": if args.stream { "stream" } else { "receive" },
        "seconds": secs, "acked_per_s": acked as f64 / secs,
        // For the benchmark tables, which rank loads by requests per second.
        "requests_per_s": acked as f64 / secs,
        "produced_per_s": args.count as f64 / produced_secs,
        "latency_us": super::latency_json(&hist),
    });
    if let (Some(out), Some(extra)) = (result.as_object_mut(), extra.as_object()) {
        out.extend(extra.clone());
    }
    println!("{result}");
    if !as_json {
        eprintln!(
            "{}: {acked} records acked in {secs:.1} s: {:.0}/s, send to ack p50 {} us, p99 {} us",
            args.system.name(),
            acked as f64 / secs,
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99)
        );
    }
    Ok(())
}

/// raftlog: topic and queue, the producer on one ProduceStream, the workers through
/// [`Worker`]. Returns the producer's seconds.
async fn raftlog_run(
    client: &Client,
    args: &QueueArgs,
    tally: Arc<Tally>,
) -> anyhow::Result<(f64, serde_json::Value)> {
    match client.create_topic(&args.topic, 1).await {
        Ok(_) => {}
        Err(e) if e.code() == tonic::Code::AlreadyExists => {}
        Err(e) => return Err(e).context("creating the topic"),
    }
    let queue = format!("{}-q", args.topic);
    let settings = pb::QueueSettings {
        in_flight_max: IN_FLIGHT_MAX,
        key_ordered: args.keys.is_some(),
        ..Default::default()
    };
    client
        .create_queue(&queue, &args.topic, settings)
        .await
        .context("creating the queue")?;
    let mut workers = Vec::new();
    for i in 0..args.workers {
        let mut worker = Worker::new(client.clone(), queue.clone(), format!("bench-{i}"));
        worker.wait = Duration::from_millis(500);
        let (tally, count, batch) = (tally.clone(), args.count, args.batch);
        if args.stream {
            workers.push(tokio::spawn(raftlog_stream_worker(
                worker, batch, count, tally,
            )));
            continue;
        }
        workers.push(tokio::spawn(async move {
            while tally.acked.load(Ordering::Relaxed) < count {
                let jobs = worker.receive(batch).await?;
                if jobs.is_empty() {
                    continue;
                }
                let refused = worker.ack_all(&jobs).await?;
                anyhow::ensure!(refused.is_empty(), "acks refused: {refused:?}");
                tally.add(jobs.into_iter().map(|j| j.record.value));
            }
            anyhow::Ok(())
        }));
    }
    let stream = client.produce_stream();
    let payloads = Payloads::new(args.payload, args.record_bytes);
    let (topic, keys, len) = (args.topic.clone(), args.keys, args.record_bytes);
    let op = move |i: u64| {
        let (stream, payloads, topic) = (stream.clone(), payloads.clone(), topic.clone());
        async move {
            let mut record = raftlog_client::record(stamped(&payloads, len));
            record.key = keys.map(|k| Bytes::from(format!("k{}", i % k)));
            let request = pb::ProduceRequest {
                topic,
                partition: Some(0),
                records: vec![record],
                ..Default::default()
            };
            stream.send(request).await?;
            Ok(())
        }
    };
    let (_, produced_secs) = super::closed_loop(args.count, args.producer_concurrency, op).await?;
    for w in workers {
        w.await??;
    }
    Ok((produced_secs, json!({"queue": queue})))
}

/// A raftlog worker on a receive stream: it takes what the stream has pushed (up to `batch`) and
/// acks it in one Settle without waiting for the answer before taking more, as NATS's `ack()`
/// does not wait either (here a record counts as acked only once its Settle returned, that is
/// once the ack is durable). The stream's cap, twice `batch`, leaves room for the next records
/// while an ack commits. At most two Settle calls of a worker are outstanding.
async fn raftlog_stream_worker(
    worker: Worker,
    batch: u32,
    count: u64,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    let mut stream = worker.stream(batch * 2);
    let mut acks = tokio::task::JoinSet::new();
    while tally.acked.load(Ordering::Relaxed) < count {
        while let Some(done) = acks.try_join_next() {
            done??;
        }
        if acks.len() >= 2 {
            acks.join_next().await.expect("a pending ack")??;
        }
        // Bounded, so the worker sees the end of the run.
        let Ok(jobs) = tokio::time::timeout(
            Duration::from_millis(500),
            stream.next_batch(batch as usize),
        )
        .await
        else {
            continue;
        };
        let jobs = jobs?;
        if jobs.is_empty() {
            continue;
        }
        let (worker, tally) = (worker.clone(), tally.clone());
        acks.spawn(async move {
            let refused = worker.ack_all(&jobs).await?;
            anyhow::ensure!(refused.is_empty(), "acks refused: {refused:?}");
            tally.add(jobs.into_iter().map(|j| j.record.value));
            anyhow::Ok(())
        });
    }
    while let Some(done) = acks.join_next().await {
        done??;
    }
    Ok(())
}

/// NATS: an R3 file stream, a durable pull consumer with explicit acks, the producer publishing
/// to the stream's leader, the workers fetching from their own connections. Returns the
/// producer's seconds.
async fn nats_run(args: &QueueArgs, tally: Arc<Tally>) -> anyhow::Result<(f64, serde_json::Value)> {
    let (js, _, server_version, replicas) =
        super::nats::leader_stream(&args.nats_url, &args.topic, 3).await?;
    let stream = js
        .get_stream(&args.topic)
        .await
        .context("the benchmark stream")?;
    let config = consumer::pull::Config {
        durable_name: Some(format!("{}-q", args.topic)),
        ack_policy: consumer::AckPolicy::Explicit,
        max_ack_pending: i64::from(IN_FLIGHT_MAX),
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(&format!("{}-q", args.topic), config)
        .await
        .context("creating the pull consumer")?;
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        let (tally, count, batch, consumer) =
            (tally.clone(), args.count, args.batch, consumer.clone());
        if args.stream {
            workers.push(tokio::spawn(nats_stream_worker(
                consumer, batch, count, tally,
            )));
            continue;
        }
        workers.push(tokio::spawn(async move {
            while tally.acked.load(Ordering::Relaxed) < count {
                let mut messages = consumer
                    .fetch()
                    .max_messages(batch as usize)
                    .expires(Duration::from_millis(500))
                    .messages()
                    .await
                    .map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
                let mut values = Vec::new();
                while let Some(message) = messages.next().await {
                    let message = message.map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
                    message
                        .ack()
                        .await
                        .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                    values.push(message.payload.clone());
                }
                tally.add(values.into_iter());
            }
            anyhow::Ok(())
        }));
    }
    let payloads = Payloads::new(args.payload, args.record_bytes);
    let (subject, len) = (Arc::new(args.topic.clone()), args.record_bytes);
    let op = move |_: u64| {
        let (js, subject, payloads) = (js.clone(), subject.clone(), payloads.clone());
        async move {
            js.publish(subject.as_str().to_string(), stamped(&payloads, len))
                .await?
                .await?;
            Ok(())
        }
    };
    let (_, produced_secs) = super::closed_loop(args.count, args.producer_concurrency, op).await?;
    for w in workers {
        w.await??;
    }
    let about = json!({"server_version": server_version, "stream_replicas": replicas,
                       "storage": "file", "consumer": "durable pull, explicit ack"});
    Ok((produced_secs, json!({ "nats": about })))
}

/// A NATS worker on the consumer's `messages()` stream (pulls of `batch` kept going by the
/// client), acking each message, until `count` records are acked in all.
async fn nats_stream_worker(
    consumer: consumer::Consumer<consumer::pull::Config>,
    batch: u32,
    count: u64,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch as usize)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("messages: {e}"))?;
    while tally.acked.load(Ordering::Relaxed) < count {
        // Bounded, so the worker sees the end of the run.
        let Ok(next) = tokio::time::timeout(Duration::from_millis(500), messages.next()).await
        else {
            continue;
        };
        let Some(message) = next else { break };
        let message = message.map_err(|e| anyhow::anyhow!("messages: {e}"))?;
        message
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        tally.add(std::iter::once(message.payload.clone()));
    }
    Ok(())
}
