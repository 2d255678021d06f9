//! Asynchronous task processing on raftlog: a front end appends requests to a topic and answers
//! "accepted"; a pool of workers shares them through a queue group, one record at a time.
//!
//! - Each worker runs [`Worker::run`]: receive a job, handle it (its lock is extended while the
//!   handler runs), then ack, release (try again later) or reject (dead-letter) it.
//! - Some jobs fail now and then (released with a delay, redelivered), some always fail (after
//!   `max_deliveries` they are dead-lettered, with their origin and the last error in headers),
//!   and one worker in four crashes mid-job: its job's lock runs out and another worker gets it.
//! - The run ends when the queue has no backlog; it prints what was acked, redelivered and
//!   dead-lettered, and checks that every request was either done or dead-lettered.
//!
//! Run against a cluster (`scripts/cluster.sh up`):
//!   CARGO_TARGET_DIR=~/.cache/raftlog/target cargo run --release -p raftlog-client \
//!     --example worker_pool -- 127.0.0.1:8051,127.0.0.1:8052,127.0.0.1:8053

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftlog_client::queue::{Outcome, Worker};
use raftlog_client::{pb, record, Client};

const REQUESTS: u64 = 200;
const WORKERS: usize = 8;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8051,127.0.0.1:8052,127.0.0.1:8053".into());
    let client = Client::new(endpoints.split(',').map(str::to_string))?;
    // A topic and queue of their own per run, so runs do not see each other's requests.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let (topic, queue) = (format!("requests-{run}"), format!("workers-{run}"));
    client.create_topic(topic.as_str(), 4).await?;
    let settings = pb::QueueSettings {
        lock_ms: 2000,
        max_deliveries: 3,
        backoff_ms: vec![200, 1000],
        dead_letters: true,
        ..Default::default()
    };
    client
        .create_queue(queue.as_str(), topic.as_str(), settings)
        .await?;

    // The front end: append the requests (here all at once).
    for i in 0..REQUESTS {
        client
            .produce(
                topic.as_str(),
                (i % 4) as u32,
                vec![record(format!("request-{i}"))],
            )
            .await?;
    }

    let done: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut pool = Vec::new();
    for w in 0..WORKERS {
        let worker = Worker::new(client.clone(), queue.as_str(), format!("worker-{w}"));
        let done = done.clone();
        pool.push(tokio::spawn(async move {
            let handled = worker.run(Duration::from_millis(2000), |job| {
                let done = done.clone();
                async move {
                    let request = String::from_utf8_lossy(&job.record.value).to_string();
                    let n: u64 = request.trim_start_matches("request-").parse().unwrap_or(0);
                    if n % 50 == 7 {
                        return Outcome::Release(Duration::ZERO); // always fails: dead-lettered
                    }
                    if n % 10 == 3 && job.delivery_count == 1 {
                        return Outcome::Release(Duration::from_millis(300)); // fails once
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    done.lock().unwrap().insert(request);
                    Outcome::Ack
                }
            });
            if w % 4 == 0 {
                // This worker crashes after a while, holding whatever job it has.
                let _ = tokio::time::timeout(Duration::from_millis(300), handled).await;
            } else {
                let _ = handled.await;
            }
        }));
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let info = client.describe_queue(queue.as_str()).await?;
        println!(
            "backlog {} in flight {} acked {} redelivered {} dead-lettered {}",
            info.backlog, info.in_flight, info.acked, info.redelivered, info.dead_lettered
        );
        if info.backlog == 0 {
            let done = done.lock().unwrap().len() as u64;
            assert_eq!(
                done + info.dead_lettered,
                REQUESTS,
                "every request done or dead-lettered"
            );
            println!(
                "all {REQUESTS} requests handled: {done} done, {} dead-lettered (see topic {})",
                info.dead_lettered,
                info.settings
                    .map(|s| s.dead_letter_topic)
                    .unwrap_or_default()
            );
            break;
        }
    }
    for task in pool {
        task.abort();
    }
    Ok(())
}
