//! `raftlog bench`: a closed-loop load generator. `concurrency` requests are in flight at any
//! time; each waits for its replicated, committed ack before the next is sent. Prints one JSON
//! line of results (for scripts/bench*.sh) and, unless `--json`, a summary line for people.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use raftlog_client::{pb, Client};
use serde_json::json;

pub struct ProduceBench {
    pub topic: String,
    pub partitions: u32,
    pub count: u64,
    pub concurrency: u64,
    pub record_bytes: usize,
    pub records_per_request: usize,
}

pub async fn produce(client: &Client, bench: ProduceBench, as_json: bool) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let value = bytes::Bytes::from(vec![b'x'; bench.record_bytes]);
    let requests = bench.count.div_ceil(bench.records_per_request as u64);
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let n = done.load(Ordering::Relaxed);
                eprintln!(
                    "bench: {n}/{requests} requests acknowledged ({:.0}/s)",
                    n as f64 / start.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut workers = Vec::new();
    for _ in 0..bench.concurrency {
        let (client, next, done, value, topic) = (
            client.clone(),
            next.clone(),
            done.clone(),
            value.clone(),
            bench.topic.clone(),
        );
        let (partitions, per_request) = (bench.partitions.max(1), bench.records_per_request);
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return Ok::<_, anyhow::Error>(hist);
                }
                let records = vec![
                    pb::Record {
                        value: value.clone(),
                        ..Default::default()
                    };
                    per_request
                ];
                let t = Instant::now();
                client
                    .produce(&topic, (i % partitions as u64) as u32, records)
                    .await?;
                hist.record(t.elapsed().as_micros() as u64).ok();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for w in workers {
        hist.add(w.await??).ok();
    }
    progress.abort();
    let secs = start.elapsed().as_secs_f64();
    let records = requests * bench.records_per_request as u64;
    let result = json!({
        "mode": "produce", "requests": requests, "records": records, "record_bytes": bench.record_bytes,
        "concurrency": bench.concurrency, "partitions": bench.partitions, "seconds": secs,
        "requests_per_s": requests as f64 / secs, "records_per_s": records as f64 / secs,
        "mb_per_s": (records as f64 * bench.record_bytes as f64) / secs / 1e6,
        "latency_us": {"p50": hist.value_at_quantile(0.5), "p99": hist.value_at_quantile(0.99),
                        "p999": hist.value_at_quantile(0.999), "max": hist.max()},
    });
    println!("{result}");
    if !as_json {
        eprintln!(
            "{records} records in {secs:.1} s: {:.0} req/s, p50 {} us, p99 {} us",
            requests as f64 / secs,
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99)
        );
    }
    Ok(())
}
