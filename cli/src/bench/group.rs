//! Consumer-group benchmarks:
//!
//! - `group-members`: holds many idle members of one coordinated group for a while (each
//!   heartbeating, reading nothing), for scripts/bench-groups.sh to measure what heartbeats cost
//!   the nodes (CPU, Raft entries).
//! - `rebalance`: members read a topic under a steady produce; round after round one member
//!   stops (crashes without a word, or leaves) and the time until every partition it read is
//!   read again by the others is measured.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use raftlog_client::consumer::{Consumer, ConsumerConfig, StartFrom};
use raftlog_client::membership::{MemberConfig, Membership};
use raftlog_client::Client;

use super::produce::ensure_topic;
use serde_json::json;

#[derive(clap::Args)]
pub struct GroupMembersArgs {
    /// Topic the members subscribe to (created with --partitions if missing).
    #[arg(long, default_value = "bench-group")]
    topic: String,
    /// Partitions of the topic, when it is created.
    #[arg(long, default_value_t = 12)]
    partitions: u32,
    /// The group the members join.
    #[arg(long, default_value = "bench-idle")]
    group: String,
    /// How many members join.
    #[arg(long, default_value_t = 100)]
    members: u32,
    /// How long to hold the members once all have joined, in seconds.
    #[arg(long, default_value_t = 40)]
    hold_secs: u64,
}

/// How the member of a `rebalance` round stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stop {
    /// It stops heartbeating without leaving, as a process killed with -9 does: its session
    /// has to expire.
    Crash,
    /// It leaves the group (Close).
    Leave,
}

#[derive(clap::Args)]
pub struct RebalanceArgs {
    /// Topic the members read (created with --partitions if missing).
    #[arg(long, default_value = "bench-rebalance")]
    topic: String,
    /// Partitions of the topic, when it is created.
    #[arg(long, default_value_t = 12)]
    partitions: u32,
    /// Members reading at any time (a new one replaces each that stops).
    #[arg(long, default_value_t = 4)]
    members: usize,
    /// Rounds: each stops one member and times the takeover.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// How the member stops.
    #[arg(long, value_enum, default_value_t = Stop::Crash)]
    stop: Stop,
    /// The group's session timeout in ms (0: the node's default, 10 s).
    #[arg(long, default_value_t = 0)]
    session_timeout_ms: u32,
    /// Records per second produced to every partition together.
    #[arg(long, default_value_t = 600)]
    rate: u64,
}

pub async fn group_members(
    client: &Client,
    args: GroupMembersArgs,
    as_json: bool,
) -> anyhow::Result<()> {
    ensure_topic(client, &args.topic, args.partitions).await?;
    let start = Instant::now();
    let mut members = Vec::new();
    for i in 0..args.members {
        let config = MemberConfig {
            group: args.group.clone(),
            topic: args.topic.clone(),
            instance_id: None,
            session_timeout_ms: 0,
            assignor: String::new(),
            client_id: format!("bench-member-{i}"),
        };
        members.push(
            Membership::join(client.clone(), config)
                .await
                .with_context(|| format!("member {i} joining"))?,
        );
    }
    let joined_ms = start.elapsed().as_millis();
    // The line scripts wait for before they measure.
    println!(
        "{}",
        json!({"event": "joined", "members": args.members, "joined_ms": joined_ms})
    );
    if !as_json {
        eprintln!(
            "{} members of group '{}' joined in {joined_ms} ms; holding them {} s",
            args.members, args.group, args.hold_secs
        );
    }
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let members_left = members.len();
    for m in members {
        m.leave().await.context("leaving")?;
    }
    println!(
        "{}",
        json!({"event": "left", "members": members_left, "held_s": args.hold_secs})
    );
    Ok(())
}

/// Per partition: the member (index) that last read a record of it, and when.
type LastRead = Arc<Mutex<BTreeMap<u32, (usize, Instant)>>>;

/// A running member of the `rebalance` bench.
struct Running {
    index: usize,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<Consumer>>,
}

/// Starts member `index`: it reads and commits until told to stop, then hands back its consumer
/// (to crash or close it).
fn start_member(
    client: &Client,
    config: &ConsumerConfig,
    index: usize,
    last_read: &LastRead,
) -> Running {
    let (client, config, last_read) = (client.clone(), config.clone(), last_read.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let task = tokio::spawn(async move {
        let mut consumer = Consumer::new(client, config).await?;
        while !stopping.load(Ordering::Relaxed) {
            let records = consumer.poll(Duration::from_millis(200)).await?;
            {
                let now = Instant::now();
                let mut last = last_read.lock().expect("last-read lock");
                for r in &records {
                    last.insert(r.partition, (index, now));
                }
            }
            if !records.is_empty() {
                consumer.commit().await?;
            }
        }
        Ok(consumer)
    });
    Running { index, stop, task }
}

pub async fn rebalance(client: &Client, args: RebalanceArgs, as_json: bool) -> anyhow::Result<()> {
    if args.members < 2 {
        bail!("--members must be at least 2 (one stops, the others take over)");
    }
    ensure_topic(client, &args.topic, args.partitions).await?;
    let group = format!("bench-rebalance-{}", std::process::id());
    let mut config = ConsumerConfig::new(&args.topic)
        .group(&group)
        .start(StartFrom::End);
    config.session_timeout_ms = args.session_timeout_ms;

    // A steady produce to every partition, round-robin.
    let producing = {
        let (client, topic, partitions) = (client.clone(), args.topic.clone(), args.partitions);
        let period = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            for i in 0u64.. {
                tick.tick().await;
                let partition = (i % u64::from(partitions)) as u32;
                let record = raftlog_client::record(i.to_le_bytes().to_vec());
                // A failed produce only thins the stream for a moment.
                let _ = client.produce(&topic, partition, vec![record]).await;
            }
        })
    };

    let last_read: LastRead = Arc::default();
    let mut members: Vec<Running> = (0..args.members)
        .map(|i| start_member(client, &config, i, &last_read))
        .collect();
    let mut results = Vec::new();
    // Each round's replacement member gets the next index.
    for (round, next_index) in (1..=args.rounds).zip(args.members..) {
        // Settled: every partition read within the last 500 ms by a member still running.
        let running: BTreeSet<usize> = members.iter().map(|m| m.index).collect();
        let settle_by = Instant::now() + Duration::from_secs(60);
        loop {
            let now = Instant::now();
            let settled = {
                let last = last_read.lock().expect("last-read lock");
                (0..args.partitions).all(|p| {
                    last.get(&p).is_some_and(|(m, t)| {
                        running.contains(m) && now - *t < Duration::from_millis(500)
                    })
                })
            };
            if settled {
                break;
            }
            if now > settle_by {
                bail!("round {round}: the group did not settle within 60 s (every partition read by a running member)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The victim: the oldest member; what it reads now moves.
        let victim = members.remove(0);
        let moved: BTreeSet<u32> = last_read
            .lock()
            .expect("last-read lock")
            .iter()
            .filter(|(_, (m, _))| *m == victim.index)
            .map(|(p, _)| *p)
            .collect();
        victim.stop.store(true, Ordering::Relaxed);
        let consumer = victim.task.await??;
        let stopped = Instant::now();
        match args.stop {
            Stop::Crash => drop(consumer),
            Stop::Leave => consumer.close().await?,
        }
        // Taken over: every moved partition read again by another member.
        let deadline = stopped + Duration::from_secs(120);
        let taken: BTreeMap<u32, Duration> = loop {
            let last = last_read.lock().expect("last-read lock").clone();
            let taken: BTreeMap<u32, Duration> = moved
                .iter()
                .filter_map(|p| {
                    let (m, t) = last.get(p)?;
                    (*m != victim.index && *t > stopped).then(|| (*p, *t - stopped))
                })
                .collect();
            if taken.len() == moved.len() {
                break taken;
            }
            if Instant::now() > deadline {
                bail!("round {round}: partitions {moved:?} not read again within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let slowest = taken.values().max().copied().unwrap_or_default();
        let first = taken.values().min().copied().unwrap_or_default();
        let line = json!({
            "bench": "rebalance", "round": round, "stop": format!("{:?}", args.stop).to_lowercase(),
            "members": args.members, "partitions": args.partitions,
            "moved_partitions": moved.len(),
            "first_taken_ms": first.as_millis(), "all_taken_ms": slowest.as_millis(),
            "session_timeout_ms": args.session_timeout_ms,
        });
        println!("{line}");
        if !as_json {
            eprintln!(
                "round {round}: member stopped ({:?}); its {} partitions read again by the others after {} ms (first after {} ms)",
                args.stop,
                moved.len(),
                slowest.as_millis(),
                first.as_millis()
            );
        }
        results.push(slowest);
        members.push(start_member(client, &config, next_index, &last_read));
    }
    producing.abort();
    for member in members {
        member.stop.store(true, Ordering::Relaxed);
        if let Ok(Ok(consumer)) = member.task.await {
            let _ = consumer.close().await;
        }
    }
    results.sort();
    let ms: Vec<u128> = results.iter().map(Duration::as_millis).collect();
    println!(
        "{}",
        json!({"bench": "rebalance", "summary": true, "stop": format!("{:?}", args.stop).to_lowercase(), "all_taken_ms": ms})
    );
    Ok(())
}
