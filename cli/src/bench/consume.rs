//! Catch-up consumption: a consumer that fell behind (or a new one replaying history) reads a
//! topic from its start as fast as one node serves it. One task per partition, each with one
//! fetch in flight, asking for as much as the node will send per fetch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use raftlog_client::{pb, Client};
use serde_json::json;

use super::ConsumeArgs;

pub async fn consume(client: &Client, args: ConsumeArgs, as_json: bool) -> anyhow::Result<()> {
    let endpoint = match &args.endpoint {
        Some(e) => e.clone(),
        None => client.endpoints()[0].clone(),
    };
    let node = client.for_endpoints([endpoint.clone()])?;
    let role = match node
        .cluster_at(&endpoint)?
        .status(pb::StatusRequest {})
        .await
    {
        Ok(s) => crate::cluster::role_name(s.into_inner().role),
        Err(_) => "?",
    };
    // The topic as this node has it, once it holds `count` records (or the wait is over).
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    let info = loop {
        let info = node
            .describe_topic(&args.topic)
            .await
            .with_context(|| format!("describing topic '{}' on {endpoint}", args.topic))?;
        let available: u64 = info
            .partitions
            .iter()
            .map(|p| p.end_offset - p.start_offset)
            .sum();
        if available >= args.count {
            break info;
        }
        if Instant::now() >= deadline {
            bail!(
                "topic '{}' holds {available} records on {endpoint} ({role}) after waiting {} s; --count is {}",
                args.topic,
                args.wait_secs,
                args.count
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Records claimed so far over all partitions: a partition task stops once `count` are in.
    let claimed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let progress = super::spawn_progress(claimed.clone(), args.count, "records read");
    let mut tasks = Vec::new();
    for p in &info.partitions {
        let (node, endpoint, topic, claimed) = (
            node.clone(),
            endpoint.clone(),
            args.topic.clone(),
            claimed.clone(),
        );
        let (partition, mut offset, end) = (p.partition, p.start_offset, p.end_offset);
        let (count, max_bytes, max_records) = (args.count, args.fetch_bytes, args.fetch_records);
        tasks.push(tokio::spawn(async move {
            let (mut records, mut bytes, mut fetches) = (0u64, 0u64, 0u64);
            while offset < end && claimed.load(Ordering::Relaxed) < count {
                let request = pb::FetchRequest {
                    topic: topic.clone(),
                    partition,
                    offset,
                    max_records,
                    max_bytes,
                    max_wait_ms: 0,
                };
                let response = node
                    .fetch_from(&endpoint, request)
                    .await
                    .with_context(|| format!("fetch of partition {partition} at {offset}"))?;
                fetches += 1;
                let Some(last) = response.records.last() else {
                    bail!("partition {partition}: empty fetch at offset {offset}, below its end offset {end}");
                };
                offset = last.offset + 1;
                let n = response.records.len() as u64;
                let before = claimed.fetch_add(n, Ordering::Relaxed);
                // Only what is still needed counts (the last fetches may overshoot `count`).
                let take = n.min(count.saturating_sub(before)) as usize;
                records += take as u64;
                bytes += response.records[..take]
                    .iter()
                    .map(|r| r.value.len() as u64)
                    .sum::<u64>();
            }
            Ok::<_, anyhow::Error>((records, bytes, fetches))
        }));
    }
    let (mut records, mut bytes, mut fetches) = (0u64, 0u64, 0u64);
    for t in tasks {
        let (r, b, f) = t.await??;
        records += r;
        bytes += b;
        fetches += f;
    }
    progress.abort();
    let secs = start.elapsed().as_secs_f64();
    let result = json!({
        "system": "raftlog", "mode": "consume", "endpoint": endpoint, "node_role": role, "records": records,
        "payload_bytes": bytes, "partitions": info.partitions.len(), "fetches": fetches,
        "seconds": secs, "records_per_s": records as f64 / secs, "mb_per_s": bytes as f64 / secs / 1e6,
    });
    println!("{result}");
    if !as_json {
        eprintln!(
            "read {records} records ({:.1} MB of values) from {endpoint} ({role}) in {secs:.2} s: {:.0} records/s, {:.1} MB/s",
            bytes as f64 / 1e6,
            records as f64 / secs,
            bytes as f64 / secs / 1e6
        );
    }
    Ok(())
}
