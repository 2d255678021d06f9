//! `raftlog-jepsen`: runs a cluster of real nodes under a workload and a nemesis, records the
//! history, heals, does final reads, checks the history and writes a report. Exits non-zero when
//! the checker finds an anomaly (or the run could not complete).

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use raftlog_jepsen::cluster::Cluster;
use raftlog_jepsen::history::Recorder;
use raftlog_jepsen::nemesis::{Fault, Nemesis, Schedule};
use raftlog_jepsen::net::Network;
use raftlog_jepsen::queue_workload;
use raftlog_jepsen::secure;
use raftlog_jepsen::workload::{self, Workload};
use raftlog_jepsen::{checker, logs, report};

#[derive(Parser)]
#[command(
    name = "raftlog-jepsen",
    about = "Fault-injection test of a raftlog cluster (the method of Jepsen)"
)]
struct Args {
    /// Cluster size (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Faults: comma-separated groups (kill, pause, partition, combo, all, none) or fault names.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Concurrent producers.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Producer flavour: `plain` (one request per record, unknown outcomes reported as info) or
    /// `idempotent` (the client's idempotent Producer, which resends unknown outcomes: any
    /// duplicate it let through shows up as a `duplicate` anomaly).
    #[arg(long, value_enum, default_value_t = workload::ProducerKind::Plain)]
    workload: workload::ProducerKind,
    /// Concurrent consumers (consumer k reads from node k mod nodes).
    #[arg(long, default_value_t = 3)]
    consumers: usize,
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    /// Members of a coordinated consumer group that consume, leave and die and join again, with
    /// a sampler of each partition's owners on every node (checked as `group-double-owner`).
    #[arg(long, default_value_t = 0)]
    members: usize,
    /// Workers of a queue group on the topic that ack, release, reject, extend, hang past their
    /// locks and crash, drained after healing (checked as `queue-*`).
    #[arg(long, default_value_t = 0)]
    queue_workers: usize,
    /// Makes the queue key-ordered (one record per key out at a time, in offset order; checked
    /// as `queue-key-order`).
    #[arg(long)]
    queue_key_ordered: bool,
    /// Runs the cluster secured: TLS on client and peer ports (certificates made with the
    /// `raftlog` CLI next to the node binary), authentication on, every client with a token.
    #[arg(long)]
    secure: bool,
    /// Seed of the nemesis schedule and the workload's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds a fault lasts: min,max.
    #[arg(long, default_value = "5,15", value_parser = parse_range)]
    fault_secs: (u64, u64),
    /// Seconds of quiet between faults: min,max.
    #[arg(long, default_value = "3,8", value_parser = parse_range)]
    quiet_secs: (u64, u64),
    /// Output directory: history.jsonl, results.json, report.html, node data and logs.
    #[arg(long, default_value = "jepsen-out")]
    out: PathBuf,
    /// The raftlog-node binary [default: next to this binary].
    #[arg(long)]
    node_bin: Option<PathBuf>,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once(',').ok_or("expected min,max")?;
    let (a, b) = (
        a.parse().map_err(|_| "bad min")?,
        b.parse().map_err(|_| "bad max")?,
    );
    if a > b {
        return Err("min > max".into());
    }
    Ok((a, b))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(Args::parse()).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("raftlog-jepsen: run failed: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    anyhow::ensure!(args.nodes >= 3, "--nodes must be at least 3");
    let node_bin = match args.node_bin {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("raftlog-node"),
    };
    anyhow::ensure!(
        node_bin.exists(),
        "node binary {} not found (build it, or pass --node-bin)",
        node_bin.display()
    );
    let mut faults = Fault::parse_list(&args.nemesis)?;
    let net = if faults.iter().any(|f| f.needs_network()) {
        match Network::check_supported() {
            Ok(()) => {
                Network::cleanup_stale();
                Some(Network::create(args.nodes).context("creating network namespaces")?)
            }
            Err(reason) => {
                eprintln!("raftlog-jepsen: SKIPPING partition nemeses: {reason}");
                faults.retain(|f| !f.needs_network());
                None
            }
        }
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&args.out);
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.canonicalize()?;
    tracing::info!(
        nodes = args.nodes, seconds = args.time, seed = args.seed,
        faults = ?faults.iter().map(|f| f.name()).collect::<Vec<_>>(), out = %out.display(), "starting run"
    );

    if args.secure {
        let cli = node_bin.with_file_name("raftlog");
        anyhow::ensure!(
            cli.exists(),
            "--secure needs the CLI at {} (cargo build --release -p raftlog-cli)",
            cli.display()
        );
        secure::enable(&cli, &out.join("pki"))?;
        tracing::info!("secured: TLS on client and peer ports, auth on, clients with a token");
    }
    let mut cluster = Cluster::start(args.nodes, node_bin, out.join("data"), net)?;
    cluster
        .wait_recovered(Duration::from_secs(60))
        .await
        .context("initial cluster")?;
    let endpoints = cluster.endpoints();
    secure::check_refusals(&endpoints).await?;
    workload::create_topic(&endpoints, args.partitions).await?;
    if args.queue_workers > 0 {
        queue_workload::create_queue(&endpoints, args.queue_key_ordered).await?;
    }

    let recorder = Recorder::new();
    let deadline = Instant::now() + Duration::from_secs(args.time);
    let w = Workload {
        endpoints: endpoints.clone(),
        partitions: args.partitions,
        recorder: recorder.clone(),
        deadline,
        queue_key_ordered: args.queue_key_ordered,
    };
    let values = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..args.producers {
        tasks.push(tokio::spawn(workload::produce(
            w.clone(),
            args.workload,
            values.clone(),
            args.seed * 1000 + p as u64,
        )));
    }
    for c in 0..args.consumers {
        tasks.push(tokio::spawn(workload::consume(
            w.clone(),
            c % args.nodes,
            c,
        )));
    }
    for m in 0..args.members {
        tasks.push(tokio::spawn(workload::member(
            w.clone(),
            args.seed * 1000 + 500 + m as u64,
        )));
    }
    if args.members > 0 {
        tasks.push(tokio::spawn(workload::sample_group_owners(w.clone())));
    }
    for q in 0..args.queue_workers {
        tasks.push(tokio::spawn(queue_workload::worker(
            w.clone(),
            q,
            args.seed * 1000 + 700 + q as u64,
        )));
    }
    let schedule = Schedule {
        faults,
        fault_secs: args.fault_secs,
        quiet_secs: args.quiet_secs,
    };
    let mut nemesis = Nemesis::new(args.seed, recorder.clone());
    let nemesis_result = nemesis.run(&mut cluster, &schedule, deadline).await;
    for t in tasks {
        t.await??;
    }
    nemesis_result?;

    tracing::info!("healing and waiting for recovery");
    cluster.heal_all()?;
    cluster
        .wait_recovered(Duration::from_secs(120))
        .await
        .context("recovery after healing")?;
    workload::final_reads(&w).await?;
    if args.members > 0 {
        tracing::info!("members read what is left");
        workload::drain_members(&w, args.members).await?;
    }
    if args.queue_workers > 0 {
        tracing::info!("queue workers drain the queue");
        queue_workload::drain(&w, args.queue_workers).await?;
        queue_workload::read_dead_letters(&w).await?;
    }

    let history = recorder.history();
    history.write(&out.join("history.jsonl"))?;
    let mut result = checker::check(&history);
    result.node_logs = logs::rates(&out.join("data"), args.nodes)?;
    if logs::flooded(&result.node_logs) {
        result.valid = false;
        result.anomaly_types.push(logs::LOG_FLOOD.to_owned());
    }
    report::write_report(&out, &history, &result, &nemesis.intervals)?;
    println!(
        "{}",
        serde_json::json!({
            "valid": result.valid, "anomalies": result.anomaly_types, "ops": history.len(),
            "op_counts": result.op_counts, "faults": nemesis.intervals.len(), "out": out,
        })
    );
    if result.valid {
        eprintln!(
            "raftlog-jepsen: no anomalies in {} ops; report: {}",
            history.len(),
            out.join("report.html").display()
        );
    } else {
        eprintln!(
            "raftlog-jepsen: ANOMALIES {:?}; report: {}",
            result.anomaly_types,
            out.join("report.html").display()
        );
    }
    Ok(result.valid)
}
