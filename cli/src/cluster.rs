//! `raftlog cluster`: health and status, membership changes (checked against the membership
//! first, confirmed before they take effect), snapshots and state digests.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::Subcommand;
use raftlog_client::pb;
use serde_json::json;

use crate::diagnose::{self, guard_call, CliError, Health};
use crate::output::{self, Table};
use crate::{units, Ctx};

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Each node's role, term and progress, and a health verdict (exit status 1 when unhealthy).
    #[command(
        after_help = "Healthy: every voter answers, and they agree on one leader.\n\
        Example: raftlog cluster status || alert 'raftlog cluster unhealthy'"
    )]
    Status,
    /// Bootstrap a new cluster (sent to the first member).
    #[command(
        after_help = "Example:\n  raftlog cluster init --member 1=10.0.0.1:8051 --member 2=10.0.0.2:8051 --member 3=10.0.0.3:8051"
    )]
    Init {
        /// A voter of the new cluster as ID=HOST:PORT (repeat for each).
        #[arg(long = "member", required = true, value_name = "ID=HOST:PORT")]
        members: Vec<String>,
    },
    /// Add a running node as a learner (it copies the log; it does not vote).
    AddLearner {
        /// The new node's id (its node_id setting).
        node_id: u64,
        /// The new node's gRPC address, as the other nodes reach it.
        #[arg(value_name = "HOST:PORT")]
        addr: String,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's node id.
        node_id: u64,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Remove a node, voter or learner, from the cluster.
    Remove {
        /// The node's id.
        node_id: u64,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Make a voter the leader.
    TransferLeader {
        /// The voter's node id.
        node_id: u64,
    },
    /// Build a snapshot on one node now.
    Snapshot {
        /// The node: an id, or HOST:PORT.
        #[arg(long, value_name = "NODE")]
        node: String,
    },
    /// State-machine digest of every node (equal digests at equal applied index: identical
    /// replicas).
    Digest,
}

pub async fn run(ctx: &Ctx, cmd: ClusterCmd) -> anyhow::Result<ExitCode> {
    let client = &ctx.client;
    match cmd {
        ClusterCmd::Status => return Ok(status(ctx).await),
        ClusterCmd::Init { members } => init(ctx, members).await?,
        ClusterCmd::AddLearner { node_id, addr } => {
            let health = diagnose::probe(client).await;
            if let Some(m) = member(&health, node_id) {
                return Err(CliError::new(
                    "FailedPrecondition",
                    format!("node {node_id} is already a {} at {}", m.1, m.0.addr),
                )
                .into());
            }
            let addr = units::endpoint(&addr)?;
            let work = async { anyhow::Ok(client.add_learner(node_id, &addr, true).await?) };
            print_membership(ctx, &guard_call(client, ctx.timeout, true, work).await?);
        }
        ClusterCmd::Promote { node_id, yes } => promote(ctx, node_id, yes).await?,
        ClusterCmd::Remove { node_id, yes } => remove(ctx, node_id, yes).await?,
        ClusterCmd::TransferLeader { node_id } => transfer_leader(ctx, node_id).await?,
        ClusterCmd::Snapshot { node } => {
            let addr = resolve_node(ctx, &node).await?;
            let work = async {
                let mut cluster = client.cluster_at(&addr)?;
                let r = cluster
                    .trigger_snapshot(pb::TriggerSnapshotRequest {})
                    .await;
                anyhow::Ok(r.map_err(raftlog_client::Error::Status)?.into_inner())
            };
            let r = guard_call(client, ctx.timeout, false, work).await?;
            if ctx.json {
                output::json(&json!({"snapshot_index": r.snapshot_index}));
            } else {
                output::line(&format!("snapshot at index {} on {addr}", r.snapshot_index));
            }
        }
        ClusterCmd::Digest => digest(ctx).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Makes a learner a voter, after checking it is one and asking.
async fn promote(ctx: &Ctx, node_id: u64, yes: bool) -> anyhow::Result<()> {
    let client = &ctx.client;
    let health = diagnose::probe(client).await;
    match member(&health, node_id) {
        Some((_, "learner")) => {}
        Some((_, _)) => {
            return Err(CliError::new(
                "FailedPrecondition",
                format!("node {node_id} is already a voter"),
            )
            .into())
        }
        None => return Err(not_a_member(&health, node_id).into()),
    }
    let voters = health.voters().len();
    confirm(
        yes,
        &format!(
            "Promote node {node_id} to voter ({voters} voters become {})?",
            voters + 1
        ),
    )?;
    let work = async { anyhow::Ok(client.promote_voter(node_id).await?) };
    print_membership(ctx, &guard_call(client, ctx.timeout, true, work).await?);
    Ok(())
}

/// Removes a member, after checking it is one and asking.
async fn remove(ctx: &Ctx, node_id: u64, yes: bool) -> anyhow::Result<()> {
    let client = &ctx.client;
    let health = diagnose::probe(client).await;
    let Some((m, kind)) = member(&health, node_id) else {
        return Err(not_a_member(&health, node_id).into());
    };
    let voters = health.voters().len();
    let question = if kind == "voter" {
        format!(
            "Remove voter {node_id} ({})? {voters} voters become {}.",
            m.addr,
            voters - 1
        )
    } else {
        format!("Remove learner {node_id} ({})?", m.addr)
    };
    confirm(yes, &question)?;
    let work = async { anyhow::Ok(client.remove_node(node_id).await?) };
    print_membership(ctx, &guard_call(client, ctx.timeout, true, work).await?);
    Ok(())
}

/// The member with this id and whether it is a "voter" or a "learner".
fn member(health: &Health, node_id: u64) -> Option<(pb::Member, &'static str)> {
    let newest = health
        .reachable()
        .max_by_key(|s| (s.term, s.applied_index))?;
    let voter = newest.voters.iter().find(|m| m.node_id == node_id);
    let learner = newest.learners.iter().find(|m| m.node_id == node_id);
    voter
        .map(|m| (m.clone(), "voter"))
        .or(learner.map(|m| (m.clone(), "learner")))
}

fn ids(members: &[pb::Member]) -> String {
    if members.is_empty() {
        return "none".into();
    }
    let ids: Vec<String> = members.iter().map(|m| m.node_id.to_string()).collect();
    ids.join(", ")
}

fn not_a_member(health: &Health, node_id: u64) -> CliError {
    if let Some(e) = health.blocking_error(false) {
        return e;
    }
    let newest = health.reachable().max_by_key(|s| (s.term, s.applied_index));
    let learners = newest.map(|s| s.learners.clone()).unwrap_or_default();
    CliError::new(
        "NotFound",
        format!(
            "node {node_id} is not a member: voters {}, learners {}",
            ids(&health.voters()),
            ids(&learners)
        ),
    )
    .hint("see `raftlog cluster status`")
}

/// Asks on the terminal unless `--yes`; refuses without a terminal to ask on.
pub fn confirm(yes: bool, question: &str) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(
            CliError::new("Unconfirmed", format!("{question} Not confirmed."))
                .hint("add --yes to confirm without a terminal")
                .into(),
        );
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(CliError::new("Unconfirmed", "not confirmed: nothing changed").into())
    }
}

/// A node given as an id (looked up in the membership) or as HOST:PORT.
pub async fn resolve_node(ctx: &Ctx, node: &str) -> anyhow::Result<String> {
    let Ok(id) = node.trim().parse::<u64>() else {
        return units::endpoint(node);
    };
    let health = diagnose::probe(&ctx.client).await;
    match member(&health, id) {
        Some((m, _)) => Ok(m.addr),
        None => Err(not_a_member(&health, id).into()),
    }
}

async fn init(ctx: &Ctx, members: Vec<String>) -> anyhow::Result<()> {
    let members = members
        .iter()
        .map(|m| {
            let (id, addr) = m.split_once('=').ok_or_else(|| {
                CliError::new(
                    "InvalidArgument",
                    format!("--member '{m}': give ID=HOST:PORT"),
                )
            })?;
            Ok(pb::Member {
                node_id: id.trim().parse().map_err(|_| {
                    CliError::new(
                        "InvalidArgument",
                        format!("--member '{m}': the id must be a number"),
                    )
                })?,
                addr: units::endpoint(addr)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let first = members[0].addr.clone();
    let work = async {
        let mut cluster = ctx.client.cluster_at(&first)?;
        let r = cluster.initialize(pb::InitializeRequest { members }).await;
        anyhow::Ok(r.map_err(raftlog_client::Error::Status)?)
    };
    guard_call(&ctx.client, ctx.timeout, false, work).await?;
    if ctx.json {
        output::json(&json!({"initialized": true}));
    } else {
        output::line("cluster initialized");
    }
    Ok(())
}

async fn transfer_leader(ctx: &Ctx, node_id: u64) -> anyhow::Result<()> {
    let health = diagnose::probe(&ctx.client).await;
    match member(&health, node_id) {
        Some((_, "voter")) => {}
        Some(_) => {
            return Err(CliError::new(
                "FailedPrecondition",
                format!("node {node_id} is a learner; only a voter can lead"),
            )
            .hint(format!(
                "promote it first: raftlog cluster promote {node_id}"
            ))
            .into())
        }
        None => return Err(not_a_member(&health, node_id).into()),
    }
    let client = &ctx.client;
    let work = async {
        client
            .with_leader(|addr| async move {
                let mut cluster = client
                    .cluster_at(&addr)
                    .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
                cluster.transfer_leader(pb::NodeRequest { node_id }).await
            })
            .await?;
        anyhow::Ok(())
    };
    guard_call(client, ctx.timeout, true, work).await?;
    if ctx.json {
        output::json(&json!({"requested": node_id}));
    } else {
        output::line(&format!("node {node_id} is taking over leadership"));
    }
    Ok(())
}

fn print_membership(ctx: &Ctx, r: &pb::MembershipResponse) {
    if ctx.json {
        output::json(&json!({"log_index": r.log_index,
            "voters": r.voters.iter().map(|m| m.node_id).collect::<Vec<_>>(),
            "learners": r.learners.iter().map(|m| m.node_id).collect::<Vec<_>>()}));
    } else {
        output::line(&format!(
            "membership at log index {}: voters {}; learners {}",
            r.log_index,
            ids(&r.voters),
            ids(&r.learners)
        ));
    }
}

pub fn role_name(role: i32) -> &'static str {
    match pb::Role::try_from(role).unwrap_or(pb::Role::Unspecified) {
        pb::Role::Leader => "leader",
        pb::Role::Follower => "follower",
        pb::Role::Candidate => "candidate",
        pb::Role::Learner => "learner",
        pb::Role::Shutdown => "shutdown",
        pb::Role::Unspecified => "?",
    }
}

/// What is wrong with the cluster, in a few words each; empty when it is healthy.
fn problems(health: &Health) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(e) = health.blocking_error(true) {
        problems.push(e.message);
        return problems;
    }
    for (m, why) in health.unreachable_voters() {
        problems.push(format!(
            "voter {} ({}) unreachable: {why}",
            m.node_id, m.addr
        ));
    }
    let leaders: std::collections::BTreeSet<u64> = health
        .reachable()
        .filter(|s| s.voters.iter().any(|v| v.node_id == s.node_id))
        .map(|s| if s.has_leader { s.leader_id } else { 0 })
        .collect();
    match (health.leader(), leaders.len()) {
        (None, _) => problems.push("no leader".into()),
        (Some(_), 1) if !leaders.contains(&0) => {}
        _ => problems.push("the voters do not agree on a leader yet".into()),
    }
    problems
}

async fn status(ctx: &Ctx) -> ExitCode {
    let health = diagnose::probe(&ctx.client).await;
    let problems = problems(&health);
    let voters = health.voters();
    let learners = health
        .reachable()
        .max_by_key(|s| (s.term, s.applied_index))
        .map(|s| s.learners.clone())
        .unwrap_or_default();
    let committed = health
        .reachable()
        .map(|s| s.committed_index)
        .max()
        .unwrap_or(0);
    if ctx.json {
        status_json(&health, &problems, &voters, &learners);
    } else {
        status_table(&health, &problems, &voters, &learners, committed);
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn status_json(
    health: &Health,
    problems: &[String],
    voters: &[pb::Member],
    learners: &[pb::Member],
) {
    let nodes: Vec<_> = health
        .nodes
        .iter()
        .map(|(addr, s)| match s {
            Ok(s) => json!({
                "endpoint": addr, "node_id": s.node_id, "role": role_name(s.role), "term": s.term,
                "leader_id": if s.has_leader { Some(s.leader_id) } else { None },
                "last_log_index": s.last_log_index, "committed_index": s.committed_index,
                "applied_index": s.applied_index, "snapshot_index": s.snapshot_index,
                "purged_index": s.purged_index,
                "voters": s.voters.iter().map(|m| m.node_id).collect::<Vec<_>>(),
                "learners": s.learners.iter().map(|m| m.node_id).collect::<Vec<_>>(),
            }),
            Err(e) => json!({"endpoint": addr, "error": e.to_string()}),
        })
        .collect();
    output::json_pretty(&json!({
        "healthy": problems.is_empty(), "problems": problems, "leader_id": health.leader(),
        "voters": voters.iter().map(|m| m.node_id).collect::<Vec<_>>(),
        "learners": learners.iter().map(|m| m.node_id).collect::<Vec<_>>(),
        "nodes": nodes,
    }));
}

fn status_table(
    health: &Health,
    problems: &[String],
    voters: &[pb::Member],
    learners: &[pb::Member],
    committed: u64,
) {
    let mut table = Table::new([
        "node", "endpoint", "role", "term", "leader", "applied", "behind",
    ]);
    for (addr, s) in &health.nodes {
        match s {
            Ok(s) => table.row([
                s.node_id.to_string(),
                addr.clone(),
                role_name(s.role).to_string(),
                s.term.to_string(),
                if s.has_leader {
                    s.leader_id.to_string()
                } else {
                    "-".into()
                },
                s.applied_index.to_string(),
                committed.saturating_sub(s.applied_index).to_string(),
            ]),
            Err(_) => {
                let id = voters.iter().find(|m| m.addr == *addr);
                let id = id.map_or("-".into(), |m| m.node_id.to_string());
                let dash = || "-".to_string();
                table.row([
                    id,
                    addr.clone(),
                    "down".into(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                ]);
            }
        }
    }
    table.print();
    output::line(&format!(
        "voters: {}; learners: {}",
        ids(voters),
        ids(learners)
    ));
    if problems.is_empty() {
        output::line(&format!(
            "healthy: yes (leader {}, {} of {} voters up)",
            health.leader().unwrap_or(0),
            voters.len(),
            voters.len()
        ));
    } else {
        output::line(&format!("healthy: no: {}", problems.join("; ")));
    }
}

async fn digest(ctx: &Ctx) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for addr in ctx.client.endpoints() {
        let d = match ctx.client.cluster_at(addr) {
            Ok(mut c) => c
                .state_digest(pb::StateDigestRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string()),
            Err(e) => Err(e.to_string()),
        };
        rows.push((addr.clone(), d));
    }
    if ctx.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(a, d)| match d {
                Ok(d) => json!({"endpoint": a, "applied_index": d.applied_index, "sha256": d.sha256, "keys": d.keys}),
                Err(e) => json!({"endpoint": a, "error": e}),
            })
            .collect();
        output::json_pretty(&json!(v));
        return Ok(());
    }
    let mut table = Table::new(["endpoint", "applied", "keys", "sha256"]);
    for (a, d) in rows {
        match d {
            Ok(d) => table.row([a, d.applied_index.to_string(), d.keys.to_string(), d.sha256]),
            Err(e) => table.row([a, "-".into(), "-".into(), format!("error: {e}")]),
        }
    }
    table.print();
    Ok(())
}
