//! `raftlog`: the command-line tool. Tables for people, `--json` for programs.

use std::io::BufRead;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use comfy_table::Table;
use raftlog_client::consumer::{Consumer, ConsumerConfig, StartFrom};
use raftlog_client::producer::{Producer, ProducerConfig};
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
        default_value = "127.0.0.1:8051,127.0.0.1:8052,127.0.0.1:8053"
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
    /// Append records: values from arguments, or one per line from stdin. Without --partition,
    /// keyed records go to the partition of their key's hash, unkeyed ones are spread in batches.
    Produce {
        topic: String,
        values: Vec<String>,
        #[arg(long, short)]
        partition: Option<u32>,
        /// Key for every record.
        #[arg(long, short, conflicts_with = "key_separator")]
        key: Option<String>,
        /// Split each value at the first SEP into key and value (e.g. "user-1:clicked" with ':').
        #[arg(long, value_name = "SEP")]
        key_separator: Option<String>,
        /// Header key=value for every record (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// Conditional append: write all values as one batch only if the partition's end offset
        /// is N (needs --partition). On a mismatch, fails and prints the actual end offset.
        #[arg(long, value_name = "N", requires = "partition")]
        expect_offset: Option<u64>,
    },
    /// Consumer groups: committed offsets and lag.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Load generators; print one JSON line of results.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Read records, in offset order per partition, from every partition or one.
    Consume {
        topic: String,
        /// Read only this partition [default: all].
        #[arg(long, short)]
        partition: Option<u32>,
        /// Start offset in every partition read [default: the beginning, or the group's offsets].
        #[arg(long, short)]
        offset: Option<u64>,
        /// Start at the end (only new records; useful with --follow).
        #[arg(long, conflicts_with = "offset")]
        from_end: bool,
        /// Consumer group: start from its committed offsets and commit what was printed.
        #[arg(long, short)]
        group: Option<String>,
        /// Stop after this many records.
        #[arg(long, short = 'n')]
        max: Option<u64>,
        /// Keep waiting for new records.
        #[arg(long, short)]
        follow: bool,
        /// Read from this node only (default: the first that answers).
        #[arg(long, conflicts_with = "group")]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Every group with its total lag.
    List,
    /// Committed offset, end offset and lag of each partition the group has committed.
    Describe { group: String },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Each node's role, term, indices and membership.
    Status,
    /// Bootstrap a new cluster: --member 1=127.0.0.1:8051 --member 2=... (sent to the first member).
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
        /// Keep records at least this long, in ms [default: forever].
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Keep at most about this many bytes per partition [default: unlimited].
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Largest record the topic accepts [default: the cluster's record_bytes_max].
        #[arg(long)]
        max_record_bytes: Option<u32>,
    },
    List,
    Describe {
        name: String,
    },
    /// Delete a topic, its records and the groups' offsets for it.
    Delete {
        name: String,
    },
    /// Change a topic's retention (0 removes a limit).
    Alter {
        name: String,
        #[arg(long)]
        retention_ms: Option<u64>,
        #[arg(long)]
        retention_bytes: Option<u64>,
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
    let config = t.config.unwrap_or_default();
    json!({
        "name": t.name, "topic_id": t.topic_id,
        "config": {"partitions": config.partitions, "retention_ms": config.retention_ms,
                   "retention_bytes": config.retention_bytes, "max_record_bytes": config.max_record_bytes},
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
        Command::Bench(cmd) => bench::run(&client, cmd, cli.json).await,
        Command::Produce {
            topic,
            values,
            partition,
            key,
            key_separator,
            headers,
            expect_offset,
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
            let records = values.into_iter().map(|line| {
                let (k, v) = match (&key, &key_separator) {
                    (Some(k), _) => (Some(k.clone()), line),
                    (None, Some(sep)) => match line.split_once(sep.as_str()) {
                        Some((k, v)) => (Some(k.to_string()), v.to_string()),
                        None => (None, line),
                    },
                    (None, None) => (None, line),
                };
                pb::Record {
                    key: k.map(|k| k.into_bytes().into()),
                    value: v.into_bytes().into(),
                    headers: headers.clone(),
                    ..Default::default()
                }
            });
            match (expect_offset, partition) {
                (Some(expected), Some(partition)) => {
                    produce_conditional(&client, &topic, partition, expected, records, cli.json)
                        .await
                }
                _ => produce(&client, &topic, partition, records, cli.json).await,
            }
        }
        Command::Group(cmd) => group(&client, cmd, cli.json).await,
        Command::Consume {
            topic,
            partition,
            offset,
            from_end,
            group,
            max,
            follow,
            node,
        } => {
            let client = match node {
                Some(addr) => Client::new([addr])?,
                None => client,
            };
            let start = match (offset, from_end) {
                (Some(o), _) => StartFrom::Offset(o),
                (None, true) => StartFrom::End,
                (None, false) => StartFrom::Beginning,
            };
            let mut config = ConsumerConfig::new(&topic).start(start);
            config.group = group.clone();
            config.partitions = partition.map(|p| vec![p]);
            if let Some(m) = max {
                config.max_records = m.min(1000) as u32;
            }
            let mut consumer = Consumer::new(client, config).await?;
            let mut seen = 0u64;
            'poll: loop {
                let wait = if follow {
                    Duration::from_secs(5)
                } else {
                    Duration::ZERO
                };
                let records = consumer.poll(wait).await?;
                if records.is_empty() && !follow {
                    break;
                }
                let mut rewound = std::collections::HashSet::new();
                for r in &records {
                    if max.is_some_and(|m| seen >= m) {
                        // Not printed: rewind to the first such record of each partition, so a
                        // commit never covers records nobody saw.
                        if rewound.insert(r.partition) {
                            consumer.seek(r.partition, r.record.offset);
                        }
                        continue;
                    }
                    print_record(r.partition, &r.record, cli.json);
                    seen += 1;
                }
                if group.is_some() {
                    consumer.commit().await?;
                }
                if max.is_some_and(|m| seen >= m) {
                    break 'poll;
                }
            }
            Ok(())
        }
    }
}

fn print_record(partition: u32, r: &pb::Record, as_json: bool) {
    let value = String::from_utf8_lossy(&r.value);
    let key = r
        .key
        .as_ref()
        .map(|k| String::from_utf8_lossy(k).to_string());
    if as_json {
        let headers: serde_json::Map<_, _> = r
            .headers
            .iter()
            .map(|h| (h.key.clone(), json!(String::from_utf8_lossy(&h.value))))
            .collect();
        println!(
            "{}",
            json!({"partition": partition, "offset": r.offset, "key": key,
                   "value": value, "headers": headers, "timestamp_ms": r.timestamp_ms})
        );
    } else {
        match key {
            Some(k) => println!("{partition}\t{}\t{k}\t{value}", r.offset),
            None => println!("{partition}\t{}\t\t{value}", r.offset),
        }
    }
}

/// One batch, appended only if the partition ends at `expected`.
async fn produce_conditional(
    client: &Client,
    topic: &str,
    partition: u32,
    expected: u64,
    records: impl Iterator<Item = pb::Record>,
    as_json: bool,
) -> anyhow::Result<()> {
    let request = pb::ProduceRequest {
        topic: topic.to_string(),
        partition: Some(partition),
        records: records.collect(),
        expected_end_offset: Some(expected),
        ..Default::default()
    };
    match client.produce_request(request).await {
        Ok(ack) => {
            let last = ack.base_offset + u64::from(ack.record_count) - 1;
            if as_json {
                println!(
                    "{}",
                    json!({"topic": topic, "partition": partition, "first_offset": ack.base_offset,
                           "last_offset": last, "record_count": ack.record_count})
                );
            } else {
                println!(
                    "produced {} record(s) to {topic}/{partition} at offsets {}..={last}",
                    ack.record_count, ack.base_offset
                );
            }
            Ok(())
        }
        Err(e) => {
            if let (true, Some(actual)) = (as_json, e.end_offset()) {
                println!(
                    "{}",
                    json!({"error": "end_offset_mismatch", "expected": expected, "actual": actual})
                );
            }
            Err(e.into())
        }
    }
}

/// Produces through the batching producer: one request per partition for small inputs, batches
/// of many records for stdin streams. Prints one line per partition written.
async fn produce(
    client: &Client,
    topic: &str,
    partition: Option<u32>,
    records: impl Iterator<Item = pb::Record>,
    as_json: bool,
) -> anyhow::Result<()> {
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut deliveries = Vec::new();
    for record in records {
        deliveries.push(match partition {
            Some(p) => producer.send_to(topic, p, record).await?,
            None => producer.send(topic, record).await?,
        });
    }
    producer.flush().await;
    // partition -> (first offset, last offset, count)
    let mut written: std::collections::BTreeMap<u32, (u64, u64, u64)> = Default::default();
    let mut failed = None;
    for delivery in deliveries {
        match delivery.await {
            Ok(d) => {
                let e = written
                    .entry(d.partition)
                    .or_insert((d.offset, d.offset, 0));
                e.0 = e.0.min(d.offset);
                e.1 = e.1.max(d.offset);
                e.2 += 1;
            }
            Err(e) => failed = Some(e),
        }
    }
    for (p, (first, last, count)) in &written {
        if as_json {
            println!(
                "{}",
                json!({"topic": topic, "partition": p, "first_offset": first, "last_offset": last, "record_count": count})
            );
        } else {
            println!("produced {count} record(s) to {topic}/{p} at offsets {first}..={last}");
        }
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

async fn group(client: &Client, cmd: GroupCmd, as_json: bool) -> anyhow::Result<()> {
    let groups = match cmd {
        GroupCmd::List => client.list_groups().await?,
        GroupCmd::Describe { group } => vec![client.describe_group(&group).await?],
    };
    if as_json {
        let v: Vec<_> = groups
            .iter()
            .map(|g| {
                json!({"group": g.group, "total_lag": g.total_lag,
                       "partitions": g.partitions.iter().map(|p| json!({
                           "topic": p.topic, "partition": p.partition, "committed_offset": p.committed_offset,
                           "end_offset": p.end_offset, "lag": p.lag, "committed_at_ms": p.committed_at_ms,
                       })).collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.set_header(["group", "topic", "partition", "committed", "end", "lag"]);
    for g in &groups {
        for p in &g.partitions {
            table.add_row([
                g.group.clone(),
                p.topic.clone(),
                p.partition.to_string(),
                p.committed_offset.to_string(),
                p.end_offset.to_string(),
                p.lag.to_string(),
            ]);
        }
        table.add_row([
            g.group.clone(),
            "(total)".into(),
            String::new(),
            String::new(),
            String::new(),
            g.total_lag.to_string(),
        ]);
    }
    println!("{table}");
    Ok(())
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
        TopicCmd::Create {
            name,
            partitions,
            retention_ms,
            retention_bytes,
            max_record_bytes,
        } => {
            let config = pb::TopicConfig {
                partitions,
                retention_ms: retention_ms.unwrap_or(0),
                retention_bytes: retention_bytes.unwrap_or(0),
                max_record_bytes: max_record_bytes.unwrap_or(0),
            };
            vec![client.create_topic_with(&name, config).await?]
        }
        TopicCmd::Alter {
            name,
            retention_ms,
            retention_bytes,
        } => vec![
            client
                .alter_topic(&name, retention_ms, retention_bytes)
                .await?,
        ],
        TopicCmd::Delete { name } => {
            client.delete_topic(&name).await?;
            if as_json {
                println!("{}", json!({"deleted": name}));
            } else {
                println!("deleted topic {name}");
            }
            return Ok(());
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
