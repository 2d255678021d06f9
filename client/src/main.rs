//! `raftlog`: the command-line tool. Tables for people, `--json` for programs.

use std::io::BufRead;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use comfy_table::Table;
use raftlog_client::{pb, Client};
use serde_json::json;

mod bench;

#[derive(Parser)]
#[command(name = "raftlog", version, about = "raftlog command-line client")]
struct Cli {
    /// Comma-separated gRPC endpoints of the cluster's nodes.
    #[arg(
        long,
        global = true,
        env = "RAFTLOG_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053"
    )]
    endpoints: Vec<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Cluster membership and state.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Topics.
    #[command(subcommand)]
    Topic(TopicCmd),
    /// Append records: values from arguments, or one per line from stdin.
    Produce {
        topic: String,
        values: Vec<String>,
        #[arg(long, short, default_value_t = 0)]
        partition: u32,
        /// Key for every record.
        #[arg(long, short)]
        key: Option<String>,
        /// Header key=value for every record (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
    },
    /// Load generators; print one JSON line of results.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Read records of one partition.
    Consume {
        topic: String,
        #[arg(long, short, default_value_t = 0)]
        partition: u32,
        /// Start offset [default: the beginning].
        #[arg(long, short)]
        offset: Option<u64>,
        /// Start at the end (only new records; useful with --follow).
        #[arg(long, conflicts_with = "offset")]
        from_end: bool,
        /// Stop after this many records.
        #[arg(long, short = 'n')]
        max: Option<u64>,
        /// Keep waiting for new records.
        #[arg(long, short)]
        follow: bool,
        /// Read from this node only (default: the first that answers).
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Closed-loop produce load: CONCURRENCY requests in flight, each waiting for its ack.
    Produce {
        #[arg(long, default_value = "bench")]
        topic: String,
        /// Create the topic with this many partitions if it does not exist.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long, short, default_value_t = 64)]
        concurrency: u64,
        #[arg(long, default_value_t = 1024)]
        record_bytes: usize,
        #[arg(long, default_value_t = 1)]
        records_per_request: usize,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Each node's role, term, indices and membership.
    Status,
    /// Bootstrap a new cluster: --member 1=127.0.0.1:50051 --member 2=... (sent to the first member).
    Init {
        #[arg(long = "member", required = true)]
        members: Vec<String>,
    },
    /// Add a node as a learner.
    AddLearner { node_id: u64, addr: String },
    /// Make a learner a voter.
    Promote { node_id: u64 },
    /// Remove a node from the cluster.
    Remove { node_id: u64 },
    /// Make NODE_ID the leader.
    TransferLeader { node_id: u64 },
    /// Build a snapshot on one node now.
    Snapshot {
        #[arg(long)]
        node: String,
    },
    /// State-machine digest of every node (equal digests at equal applied index = identical replicas).
    Digest,
}

#[derive(Subcommand)]
enum TopicCmd {
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
    },
    List,
    Describe {
        name: String,
    },
}

fn role_name(role: i32) -> &'static str {
    match pb::Role::try_from(role).unwrap_or(pb::Role::Unspecified) {
        pb::Role::Leader => "leader",
        pb::Role::Follower => "follower",
        pb::Role::Candidate => "candidate",
        pb::Role::Learner => "learner",
        pb::Role::Shutdown => "shutdown",
        pb::Role::Unspecified => "?",
    }
}

fn members(m: &[pb::Member]) -> String {
    m.iter()
        .map(|m| format!("{}@{}", m.node_id, m.addr))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_member(s: &str) -> anyhow::Result<pb::Member> {
    let (id, addr) = s.split_once('=').context("member must be id=host:port")?;
    Ok(pb::Member {
        node_id: id.parse().context("member id must be a number")?,
        addr: addr.to_string(),
    })
}

fn topic_json(t: &pb::TopicInfo) -> serde_json::Value {
    json!({
        "name": t.name, "topic_id": t.topic_id,
        "partitions": t.partitions.iter().map(|p| json!({
            "partition": p.partition, "start_offset": p.start_offset, "end_offset": p.end_offset, "leader_id": p.leader_id,
        })).collect::<Vec<_>>(),
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Errors are for people: one line with the gRPC code and the node's advice, no backtrace.
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::new(cli.endpoints.clone())?;
    match cli.command {
        Command::Cluster(cmd) => cluster(&client, cmd, cli.json).await,
        Command::Topic(cmd) => topic(&client, cmd, cli.json).await,
        Command::Bench(BenchCmd::Produce {
            topic,
            partitions,
            count,
            concurrency,
            record_bytes,
            records_per_request,
        }) => {
            match client.create_topic(&topic, partitions).await {
                Ok(_) => {}
                Err(e) if e.code() == tonic::Code::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            }
            let spec = bench::ProduceBench {
                topic,
                partitions,
                count,
                concurrency,
                record_bytes,
                records_per_request,
            };
            bench::produce(&client, spec, cli.json).await
        }
        Command::Produce {
            topic,
            values,
            partition,
            key,
            headers,
        } => {
            let headers = headers
                .iter()
                .map(|h| {
                    let (k, v) = h.split_once('=').context("header must be key=value")?;
                    Ok(pb::Header {
                        key: k.to_string(),
                        value: v.as_bytes().to_vec().into(),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let values = if values.is_empty() {
                std::io::stdin()
                    .lock()
                    .lines()
                    .collect::<Result<Vec<_>, _>>()?
            } else {
                values
            };
            if values.is_empty() {
                bail!("nothing to produce: give values as arguments or lines on stdin");
            }
            let records = values
                .into_iter()
                .map(|v| pb::Record {
                    key: key.as_ref().map(|k| k.as_bytes().to_vec().into()),
                    value: v.into_bytes().into(),
                    headers: headers.clone(),
                    ..Default::default()
                })
                .collect();
            let ack = client.produce(&topic, partition, records).await?;
            if cli.json {
                println!(
                    "{}",
                    json!({"partition": ack.partition, "base_offset": ack.base_offset, "record_count": ack.record_count})
                );
            } else {
                println!(
                    "produced {} record(s) to {topic}/{} at offsets {}..{}",
                    ack.record_count,
                    ack.partition,
                    ack.base_offset,
                    ack.base_offset + ack.record_count as u64
                );
            }
            Ok(())
        }
        Command::Consume {
            topic,
            partition,
            offset,
            from_end,
            max,
            follow,
            node,
        } => {
            let mut next = match (offset, from_end) {
                (Some(o), _) => o,
                (None, true) => {
                    let info = client.describe_topic(&topic).await?;
                    info.partitions
                        .get(partition as usize)
                        .map_or(0, |p| p.end_offset)
                }
                (None, false) => 0,
            };
            let mut seen = 0u64;
            loop {
                let want = max.map_or(1000, |m| (m - seen).min(1000)) as u32;
                let request = pb::FetchRequest {
                    topic: topic.clone(),
                    partition,
                    offset: next,
                    max_records: want,
                    max_bytes: 0,
                    // Following: long-poll, so new records arrive as soon as they commit.
                    max_wait_ms: if follow { 5_000 } else { 0 },
                };
                let response = match &node {
                    Some(addr) => client.fetch_from(addr, request).await?,
                    None => client.fetch(request).await?,
                };
                for r in &response.records {
                    let value = String::from_utf8_lossy(&r.value);
                    if cli.json {
                        println!(
                            "{}",
                            json!({"offset": r.offset, "key": r.key.as_ref().map(|k| String::from_utf8_lossy(k).to_string()),
                                   "value": value, "timestamp_ms": r.timestamp_ms})
                        );
                    } else {
                        println!("{}\t{}", r.offset, value);
                    }
                    next = r.offset + 1;
                    seen += 1;
                }
                if max.is_some_and(|m| seen >= m) {
                    break;
                }
                if response.records.is_empty() && !follow {
                    break;
                }
            }
            Ok(())
        }
    }
}

async fn cluster(client: &Client, cmd: ClusterCmd, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Status => {
            let statuses = client.cluster_status().await;
            if as_json {
                let nodes: Vec<_> = statuses
                    .iter()
                    .map(|(addr, s)| match s {
                        Ok(s) => json!({
                            "endpoint": addr, "node_id": s.node_id, "role": role_name(s.role), "term": s.term,
                            "leader_id": if s.has_leader { Some(s.leader_id) } else { None },
                            "last_log_index": s.last_log_index, "committed_index": s.committed_index,
                            "applied_index": s.applied_index, "snapshot_index": s.snapshot_index, "purged_index": s.purged_index,
                            "voters": s.voters.iter().map(|m| m.node_id).collect::<Vec<_>>(),
                            "learners": s.learners.iter().map(|m| m.node_id).collect::<Vec<_>>(),
                        }),
                        Err(e) => json!({"endpoint": addr, "error": e.to_string()}),
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                let mut table = Table::new();
                table.set_header([
                    "endpoint",
                    "node",
                    "role",
                    "term",
                    "leader",
                    "last log",
                    "committed",
                    "applied",
                    "snapshot",
                    "voters",
                    "learners",
                ]);
                for (addr, s) in &statuses {
                    match s {
                        Ok(s) => table.add_row([
                            addr.clone(),
                            s.node_id.to_string(),
                            role_name(s.role).to_string(),
                            s.term.to_string(),
                            if s.has_leader {
                                s.leader_id.to_string()
                            } else {
                                "-".into()
                            },
                            s.last_log_index.to_string(),
                            s.committed_index.to_string(),
                            s.applied_index.to_string(),
                            s.snapshot_index.to_string(),
                            members(&s.voters),
                            members(&s.learners),
                        ]),
                        Err(e) => table.add_row([
                            addr.clone(),
                            "-".into(),
                            format!("unreachable: {}", e.code()),
                        ]),
                    };
                }
                println!("{table}");
            }
            Ok(())
        }
        ClusterCmd::Init { members } => {
            let members = members
                .iter()
                .map(|m| parse_member(m))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let first = members[0].addr.clone();
            client
                .cluster_at(&first)?
                .initialize(pb::InitializeRequest { members })
                .await?;
            println!(
                "{}",
                if as_json {
                    json!({"initialized": true}).to_string()
                } else {
                    "cluster initialized".into()
                }
            );
            Ok(())
        }
        ClusterCmd::AddLearner { node_id, addr } => {
            print_membership(&client.add_learner(node_id, &addr, true).await?, as_json);
            Ok(())
        }
        ClusterCmd::Promote { node_id } => {
            print_membership(&client.promote_voter(node_id).await?, as_json);
            Ok(())
        }
        ClusterCmd::Remove { node_id } => {
            print_membership(&client.remove_node(node_id).await?, as_json);
            Ok(())
        }
        ClusterCmd::TransferLeader { node_id } => {
            let mut cluster = client.cluster_at(&client.endpoints()[0])?;
            cluster.transfer_leader(pb::NodeRequest { node_id }).await?;
            println!(
                "{}",
                if as_json {
                    json!({"requested": node_id}).to_string()
                } else {
                    format!("node {node_id} is taking over leadership")
                }
            );
            Ok(())
        }
        ClusterCmd::Snapshot { node } => {
            let r = client
                .cluster_at(&node)?
                .trigger_snapshot(pb::TriggerSnapshotRequest {})
                .await?
                .into_inner();
            println!(
                "{}",
                if as_json {
                    json!({"snapshot_index": r.snapshot_index}).to_string()
                } else {
                    format!("snapshot at index {}", r.snapshot_index)
                }
            );
            Ok(())
        }
        ClusterCmd::Digest => {
            let mut rows = Vec::new();
            for addr in client.endpoints() {
                let d = client
                    .cluster_at(addr)?
                    .state_digest(pb::StateDigestRequest {})
                    .await
                    .map(|r| r.into_inner());
                rows.push((addr.clone(), d));
            }
            if as_json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(a, d)| match d {
                        Ok(d) => json!({"endpoint": a, "applied_index": d.applied_index, "sha256": d.sha256, "keys": d.keys}),
                        Err(e) => json!({"endpoint": a, "error": e.message()}),
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let mut table = Table::new();
                table.set_header(["endpoint", "applied", "keys", "sha256"]);
                for (a, d) in rows {
                    match d {
                        Ok(d) => table.add_row([
                            a,
                            d.applied_index.to_string(),
                            d.keys.to_string(),
                            d.sha256,
                        ]),
                        Err(e) => table.add_row([
                            a,
                            "-".into(),
                            "-".into(),
                            format!("error: {}", e.message()),
                        ]),
                    };
                }
                println!("{table}");
            }
            Ok(())
        }
    }
}

fn print_membership(r: &pb::MembershipResponse, as_json: bool) {
    if as_json {
        println!(
            "{}",
            json!({"log_index": r.log_index, "voters": r.voters.iter().map(|m| m.node_id).collect::<Vec<_>>(),
                   "learners": r.learners.iter().map(|m| m.node_id).collect::<Vec<_>>()})
        );
    } else {
        println!(
            "membership at log index {}: voters [{}] learners [{}]",
            r.log_index,
            members(&r.voters),
            members(&r.learners)
        );
    }
}

async fn topic(client: &Client, cmd: TopicCmd, as_json: bool) -> anyhow::Result<()> {
    let topics = match cmd {
        TopicCmd::Create { name, partitions } => {
            vec![client.create_topic(&name, partitions).await?]
        }
        TopicCmd::List => client.list_topics().await?,
        TopicCmd::Describe { name } => vec![client.describe_topic(&name).await?],
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&topics.iter().map(topic_json).collect::<Vec<_>>())?
        );
    } else {
        let mut table = Table::new();
        table.set_header(["topic", "partition", "start offset", "end offset", "leader"]);
        for t in &topics {
            for p in &t.partitions {
                table.add_row([
                    t.name.clone(),
                    p.partition.to_string(),
                    p.start_offset.to_string(),
                    p.end_offset.to_string(),
                    p.leader_id.to_string(),
                ]);
            }
        }
        println!("{table}");
    }
    Ok(())
}
