//! Produce load against raftlog: raw produce requests in a closed loop, or the batching producer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use raftlog_client::producer::{DeliveryFuture, Producer, ProducerConfig};
use raftlog_client::{pb, Client};
use serde_json::json;
use tokio::sync::mpsc;

use super::{ClosedLoopResult, ProduceArgs, System};

/// Creates the topic with `partitions` partitions unless it exists.
pub(super) async fn ensure_topic(
    client: &Client,
    topic: &str,
    partitions: u32,
) -> anyhow::Result<()> {
    match client.create_topic(topic, partitions).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Closed loop of raw produce requests, `records_per_request` records each, partitions in turn.
pub async fn produce(client: &Client, args: ProduceArgs, as_json: bool) -> anyhow::Result<()> {
    ensure_topic(client, &args.topic, args.partitions).await?;
    let payloads = super::Payloads::new(args.payload, args.record_bytes);
    let requests = args.count.div_ceil(args.records_per_request as u64);
    let (partitions, per_request) = (u64::from(args.partitions.max(1)), args.records_per_request);
    let topic = Arc::new(args.topic.clone());
    let transport = if !args.unary {
        // One stream shared by every worker (as one Kafka connection carries a producer's
        // requests).
        Transport::Stream(client.produce_stream())
    } else if args.generated_client {
        Transport::Generated(generated_stub(client).await?)
    } else {
        Transport::Unary(client.clone())
    };
    let label = transport.label();
    let op = move |i: u64| {
        let (transport, topic, payloads) = (transport.clone(), topic.clone(), payloads.clone());
        async move {
            let request = pb::ProduceRequest {
                topic: topic.to_string(),
                partition: Some((i % partitions) as u32),
                records: (0..per_request)
                    .map(|_| pb::Record {
                        value: payloads.next(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            match transport {
                Transport::Stream(stream) => {
                    stream.send(request).await?;
                }
                Transport::Unary(client) => {
                    client.produce_request(request).await?;
                }
                Transport::Generated(mut stub) => {
                    stub.produce(request).await?;
                }
            }
            Ok(())
        }
    };
    let (hist, secs) = super::closed_loop(requests, args.concurrency, op).await?;
    ClosedLoopResult {
        system: System::Raftlog,
        args: &args,
        requests,
        hist,
        secs,
        extra: json!({"transport": label}),
    }
    .print(as_json);
    Ok(())
}

/// How the closed loop sends its requests.
#[derive(Clone)]
enum Transport {
    /// One ProduceStream of the raftlog client, shared by every request in flight.
    Stream(raftlog_client::produce_stream::ProduceStream),
    /// One unary Produce call per request through the raftlog client.
    Unary(Client),
    /// One unary Produce call per request through tonic's generated stub.
    Generated(pb::broker_client::BrokerClient<tonic::transport::Channel>),
}

impl Transport {
    /// The name the JSON result gives it.
    fn label(&self) -> &'static str {
        match self {
            Transport::Stream(_) => "stream",
            Transport::Unary(_) => "unary",
            Transport::Generated(_) => "unary, generated client",
        }
    }
}

/// The stub a program generated from proto/ would use: one channel to the leader (found once,
/// from the nodes' status), with tonic's defaults.
async fn generated_stub(
    client: &Client,
) -> anyhow::Result<pb::broker_client::BrokerClient<tonic::transport::Channel>> {
    let leader = client
        .cluster_status()
        .await
        .into_iter()
        .filter_map(|(_, status)| status.ok())
        .find(|status| status.has_leader && !status.leader_addr.is_empty())
        .map(|status| status.leader_addr)
        .context("no node of --endpoints knows a leader: `raftlog cluster status` shows why")?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{leader}"))?
        .connect()
        .await
        .with_context(|| {
            format!(
                "connecting to the leader at {leader} in plaintext: --generated-client uses \
                 tonic's stub without TLS or a token, so run it against a cluster without them"
            )
        })?;
    Ok(pb::broker_client::BrokerClient::new(channel))
}

/// `count` unkeyed records through the batching idempotent producer, as fast as it takes them;
/// measures acknowledged records per second (latency: from `send` to the record's ack, which
/// includes the wait in the producer's buffer).
pub async fn produce_batching(
    client: &Client,
    args: ProduceArgs,
    as_json: bool,
) -> anyhow::Result<()> {
    ensure_topic(client, &args.topic, args.partitions).await?;
    let mut config = ProducerConfig::default();
    if let Some(bytes) = args.batch_bytes {
        config.batch_bytes = bytes;
    }
    if let Some(ms) = args.linger_ms {
        config.linger = std::time::Duration::from_millis(ms);
    }
    let producer = Producer::new(client.clone(), config.clone());
    let payloads = super::Payloads::new(args.payload, args.record_bytes);
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let progress = super::spawn_progress(acked.clone(), args.count, "records");
    // Deliveries are awaited by another task, in send order, while this one keeps sending: the
    // producer's own buffer (`buffer_records`) is what holds the sender back.
    let (tx, mut rx) = mpsc::channel::<(Instant, DeliveryFuture)>(config.buffer_records);
    let waiter = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut hist = super::new_histogram();
            while let Some((sent, delivery)) = rx.recv().await {
                delivery.await.context("a record failed")?;
                hist.record(sent.elapsed().as_micros() as u64).ok();
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(hist)
        })
    };
    for _ in 0..args.count {
        let sent = Instant::now();
        let record = pb::Record {
            value: payloads.next(),
            ..Default::default()
        };
        let delivery = producer.send(&args.topic, record).await?;
        if tx.send((sent, delivery)).await.is_err() {
            break; // the waiter stopped at a failed record: its error is reported below
        }
    }
    drop(tx);
    producer.flush().await;
    let hist = waiter.await??;
    progress.abort();
    let secs = start.elapsed().as_secs_f64();
    let records = acked.load(Ordering::Relaxed);
    let result = json!({
        "system": "raftlog", "mode": "producer", "records": records, "record_bytes": args.record_bytes,
        "partitions": args.partitions, "seconds": secs, "records_per_s": records as f64 / secs,
        "mb_per_s": (records as f64 * args.record_bytes as f64) / secs / 1e6,
        "latency_us": super::latency_json(&hist),
        "producer": {"linger_ms": config.linger.as_millis() as u64, "batch_bytes": config.batch_bytes,
                     "batch_records": config.batch_records, "idempotent": config.idempotent},
    });
    println!("{result}");
    if !as_json {
        eprintln!(
            "raftlog producer: {records} records in {secs:.1} s: {:.0} records/s, {:.1} MB/s",
            records as f64 / secs,
            (records as f64 * args.record_bytes as f64) / secs / 1e6
        );
    }
    Ok(())
}
