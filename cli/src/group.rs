//! `raftlog group`: consumer groups' committed offsets and lag; seek, reset, commit, delete. The
//! moves are explicit resets: their commits may move offsets backwards (`allow_rewind`).

use std::collections::BTreeMap;

use clap::Subcommand;
use raftlog_client::consumer::{resolve_start, StartFrom};
use raftlog_client::pb;
use serde_json::json;

use crate::diagnose::{guard_call, CliError};
use crate::output::{self, Table};
use crate::{units, Ctx};

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Every group with its total lag (records produced but not yet consumed).
    List,
    /// A group's state, members and their partitions, and its committed offset, end offset and
    /// lag for each partition it has committed.
    Describe {
        /// Group name.
        group: String,
    },
    /// Move a group's committed offsets for a topic (backwards too), e.g. to replay.
    #[command(
        after_help = "Positions: start, end, OFFSET, -N, +N, @TIME, @-DURATION (as consume -o).\n\
        Examples:\n  raftlog group seek billing --topic orders --to start\n  raftlog group seek billing --topic orders --to @-1h -p 0,1"
    )]
    Seek {
        /// Group name.
        group: String,
        /// The topic whose offsets move.
        #[arg(long, short)]
        topic: String,
        /// Where to: start, end, OFFSET, -N, +N, @TIME.
        #[arg(long, value_parser = units::offset, allow_hyphen_values = true, value_name = "POS")]
        to: StartFrom,
        /// Only these partitions [default: all of the topic's].
        #[arg(long, short, value_delimiter = ',')]
        partition: Option<Vec<u32>>,
    },
    /// Move a group's offsets for a topic back to the start (seek --to start).
    Reset {
        /// Group name.
        group: String,
        /// The topic whose offsets move.
        #[arg(long, short)]
        topic: String,
        /// Only these partitions [default: all of the topic's].
        #[arg(long, short, value_delimiter = ',')]
        partition: Option<Vec<u32>>,
    },
    /// Set a group's committed offsets by hand: PARTITION=OFFSET (the next offset to read).
    #[command(after_help = "Example:\n  raftlog group commit billing --topic orders 0=42 1=7")]
    Commit {
        /// Group name.
        group: String,
        /// The topic the offsets are for.
        #[arg(long, short)]
        topic: String,
        /// PARTITION=OFFSET pairs.
        #[arg(required = true, value_name = "PARTITION=OFFSET")]
        offsets: Vec<String>,
    },
    /// Remove a member from a coordinated group: its partitions move to the others at once.
    RemoveMember {
        /// Group name.
        group: String,
        /// The member id (`raftlog group describe` lists them).
        member: String,
    },
    /// Forget a group: every committed offset it has.
    Delete {
        /// Group name.
        group: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
}

pub async fn run(ctx: &Ctx, cmd: GroupCmd) -> anyhow::Result<()> {
    let client = &ctx.client;
    match cmd {
        GroupCmd::List => {
            let work = async { anyhow::Ok(client.list_groups().await?) };
            let groups = guard_call(client, ctx.timeout, false, work).await?;
            if ctx.json {
                output::json_pretty(&json!(groups.iter().map(group_json).collect::<Vec<_>>()));
                return Ok(());
            }
            let mut table = Table::new(["group", "topics", "partitions", "lag"]);
            for g in &groups {
                let mut topics: Vec<&str> = g.partitions.iter().map(|p| p.topic.as_str()).collect();
                topics.dedup();
                table.row([
                    g.group.clone(),
                    topics.join(","),
                    g.partitions.len().to_string(),
                    g.total_lag.to_string(),
                ]);
            }
            table.print();
        }
        GroupCmd::Describe { group } => {
            let work = async { anyhow::Ok(client.describe_group(&group).await?) };
            let g = guard_call(client, ctx.timeout, false, work).await?;
            print_group(ctx, &g);
        }
        GroupCmd::Seek {
            group,
            topic,
            to,
            partition,
        } => seek(ctx, &group, &topic, to, partition).await?,
        GroupCmd::Reset {
            group,
            topic,
            partition,
        } => seek(ctx, &group, &topic, StartFrom::Beginning, partition).await?,
        GroupCmd::Commit {
            group,
            topic,
            offsets,
        } => {
            let offsets = offsets
                .iter()
                .map(|o| parse_partition_offset(o))
                .collect::<anyhow::Result<BTreeMap<u32, u64>>>()?;
            commit(ctx, &group, &topic, offsets).await?;
        }
        GroupCmd::Delete { group, yes } => delete(ctx, &group, yes).await?,
        GroupCmd::RemoveMember { group, member } => {
            let work = async { anyhow::Ok(client.remove_group_member(&group, &member).await?) };
            guard_call(client, ctx.timeout, true, work).await?;
            if ctx.json {
                output::json(&json!({"removed": member, "group": group}));
            } else {
                output::line(&format!("removed member {member} from group {group}"));
            }
        }
    }
    Ok(())
}

fn parse_partition_offset(s: &str) -> anyhow::Result<(u32, u64)> {
    let parsed = s
        .split_once('=')
        .and_then(|(p, o)| Some((p.trim().parse().ok()?, o.trim().parse().ok()?)));
    parsed.ok_or_else(|| {
        CliError::new(
            "InvalidArgument",
            format!("'{s}': give PARTITION=OFFSET, e.g. 0=42"),
        )
        .into()
    })
}

/// Moves the group's offsets for `topic` to `to`, each partition on its own.
async fn seek(
    ctx: &Ctx,
    group: &str,
    topic: &str,
    to: StartFrom,
    partitions: Option<Vec<u32>>,
) -> anyhow::Result<()> {
    let client = &ctx.client;
    let work = async { anyhow::Ok(resolve_start(client, topic, partitions.as_deref(), to).await?) };
    let resolved = guard_call(client, ctx.timeout, false, work).await?;
    for a in &resolved.adjustments {
        eprintln!(
            "note: {topic}/{}: offset {} is outside the retained {}; using {}",
            a.partition,
            a.requested,
            output::offsets(a.start_offset, a.end_offset),
            a.actual
        );
    }
    commit(ctx, group, topic, resolved.positions).await
}

/// Commits `offsets` as given (an explicit reset: backwards too), then shows the group.
async fn commit(
    ctx: &Ctx,
    group: &str,
    topic: &str,
    offsets: BTreeMap<u32, u64>,
) -> anyhow::Result<()> {
    let client = &ctx.client;
    let work = async {
        let offsets = offsets.iter().map(|(&p, &o)| (p, o));
        anyhow::Ok(
            client
                .commit_offsets_with(group, topic, offsets, true)
                .await?,
        )
    };
    guard_call(client, ctx.timeout, true, work).await?;
    // FetchOffsets is linearizable: it shows this commit whichever node answers.
    let work = async { anyhow::Ok(client.fetch_offsets(group, topic).await?) };
    let committed = guard_call(client, ctx.timeout, true, work).await?;
    if ctx.json {
        let offsets: Vec<_> = committed
            .iter()
            .map(|(p, o)| json!({"partition": p, "committed_offset": o}))
            .collect();
        output::json(&json!({"group": group, "topic": topic, "offsets": offsets}));
        return Ok(());
    }
    output::line(&format!("group {group} now reads {topic} from:"));
    let mut table = Table::new(["partition", "offset"]);
    for (p, o) in &committed {
        table.row([u64::from(*p), *o]);
    }
    table.print();
    Ok(())
}

async fn delete(ctx: &Ctx, group: &str, yes: bool) -> anyhow::Result<()> {
    crate::cluster::confirm(
        yes,
        &format!("Delete group {group} and all its committed offsets?"),
    )?;
    let client = &ctx.client;
    let work = async { anyhow::Ok(client.delete_group(group).await?) };
    guard_call(client, ctx.timeout, true, work).await?;
    if ctx.json {
        output::json(&json!({"deleted": group}));
    } else {
        output::line(&format!("deleted group {group}"));
    }
    Ok(())
}

pub fn group_json(g: &pb::GroupInfo) -> serde_json::Value {
    let partitions = |tps: &[pb::TopicPartitions]| {
        tps.iter()
            .map(|tp| json!({"topic": tp.topic, "partitions": tp.partitions}))
            .collect::<Vec<_>>()
    };
    json!({"group": g.group, "total_lag": g.total_lag, "state": g.state, "epoch": g.epoch,
           "assignor": g.assignor, "session_timeout_ms": g.session_timeout_ms,
           "rebalances": g.rebalances, "partitions_unassigned": g.partitions_unassigned,
           "members": g.members.iter().map(|m| json!({
               "member_id": m.member_id, "instance_id": m.instance_id, "client_id": m.client_id,
               "client_host": m.client_host, "member_epoch": m.member_epoch,
               "joined_at_ms": m.joined_at_ms, "last_heartbeat_ms": m.last_heartbeat_ms,
               "subscription": m.subscription, "assigned": partitions(&m.assigned),
               "revoking": partitions(&m.revoking),
           })).collect::<Vec<_>>(),
           "partitions": g.partitions.iter().map(|p| json!({
               "topic": p.topic, "partition": p.partition, "committed_offset": p.committed_offset,
               "end_offset": p.end_offset, "lag": p.lag, "committed_at_ms": p.committed_at_ms,
           })).collect::<Vec<_>>()})
}

/// "orders/0,1 billing/3".
fn partitions_words(tps: &[pb::TopicPartitions]) -> String {
    let words: Vec<String> = tps
        .iter()
        .map(|tp| {
            let ps: Vec<String> = tp.partitions.iter().map(u32::to_string).collect();
            format!("{}/{}", tp.topic, ps.join(","))
        })
        .collect();
    if words.is_empty() {
        "-".into()
    } else {
        words.join(" ")
    }
}

/// Milliseconds since the Unix epoch as a UTC time of day with the date.
fn time_words(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

pub fn print_group(ctx: &Ctx, g: &pb::GroupInfo) {
    if ctx.json {
        output::json_pretty(&group_json(g));
        return;
    }
    let mut table = Table::new(["topic", "partition", "committed", "end", "lag"]);
    for p in &g.partitions {
        table.row([
            p.topic.clone(),
            p.partition.to_string(),
            p.committed_offset.to_string(),
            p.end_offset.to_string(),
            p.lag.to_string(),
        ]);
    }
    if g.members.is_empty() {
        output::line(&format!(
            "group {}: {}, total lag {}",
            g.group, g.state, g.total_lag
        ));
    } else {
        output::line(&format!(
            "group {}: {}, epoch {}, assignor {}, session timeout {} ms, {} member(s), {} \
             partition(s) unassigned, {} rebalance(s), total lag {}",
            g.group,
            g.state,
            g.epoch,
            g.assignor,
            g.session_timeout_ms,
            g.members.len(),
            g.partitions_unassigned,
            g.rebalances,
            g.total_lag
        ));
        let mut members = Table::new([
            "member",
            "client",
            "host",
            "joined",
            "last heartbeat",
            "assigned",
            "revoking",
        ]);
        for m in &g.members {
            let id = match m.instance_id.as_str() {
                "" => m.member_id.clone(),
                instance => format!("{} ({instance})", m.member_id),
            };
            members.row([
                id,
                m.client_id.clone(),
                m.client_host.clone(),
                time_words(m.joined_at_ms),
                time_words(m.last_heartbeat_ms),
                partitions_words(&m.assigned),
                partitions_words(&m.revoking),
            ]);
        }
        members.print();
    }
    table.print();
}
