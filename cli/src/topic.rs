//! `raftlog topic`: create, list, describe, alter, delete.

use std::time::Duration;

use clap::Subcommand;
use raftlog_client::pb;
use serde_json::json;

use crate::diagnose::{guard_call, CliError};
use crate::output::{self, plural, Table};
use crate::{units, Ctx};

#[derive(Subcommand)]
pub enum TopicCmd {
    /// Create a topic.
    #[command(
        after_help = "Example:\n  raftlog topic create orders --partitions 3 --retention 7d --retention-bytes 10GiB"
    )]
    Create {
        /// Topic name: letters, digits, '.', '_' and '-'.
        name: String,
        /// Number of partitions, fixed for the topic's life (1 to the cluster's
        /// partitions_per_topic_max, 1024 by default).
        #[arg(long, short = 'p', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        partitions: u32,
        #[command(flatten)]
        retention: Retention,
        /// Largest record the topic accepts, e.g. 256KiB [default: the cluster's record_bytes_max].
        #[arg(long, value_parser = units::size_u32, value_name = "SIZE")]
        max_record_bytes: Option<u32>,
    },
    /// One line per topic: partitions, records held, retention.
    List,
    /// A topic's configuration and the offsets of each partition.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Change a topic's retention (the partition count is fixed at creation).
    #[command(
        after_help = "Examples:\n  raftlog topic alter orders --retention 30d\n  raftlog topic alter orders --retention 0     # keep forever"
    )]
    Alter {
        /// Topic name.
        name: String,
        #[command(flatten)]
        retention: Retention,
        /// Refused with an explanation: the partition count is fixed at creation.
        #[arg(long, short = 'p', hide = true)]
        partitions: Option<u32>,
    },
    /// Delete a topic, its records and every group's offsets for it.
    Delete {
        /// Topic name.
        name: String,
    },
}

#[derive(clap::Args)]
pub struct Retention {
    /// Delete records older than this, e.g. 7d, 12h; 0 keeps them forever [default: forever].
    #[arg(long, value_parser = units::duration_or_zero, value_name = "DURATION")]
    retention: Option<Duration>,
    /// Same as --retention, in milliseconds (kept for scripts written before --retention).
    #[arg(long, hide = true, conflicts_with = "retention")]
    retention_ms: Option<u64>,
    /// Delete the oldest records while a partition holds more than this, e.g. 10GiB; 0 means
    /// no limit [default: no limit].
    #[arg(long, value_parser = units::size, value_name = "SIZE")]
    retention_bytes: Option<u64>,
}

impl Retention {
    fn ms(&self) -> Option<u64> {
        self.retention
            .map(|d| d.as_millis() as u64)
            .or(self.retention_ms)
    }
}

pub async fn run(ctx: &Ctx, cmd: TopicCmd) -> anyhow::Result<()> {
    let client = &ctx.client;
    match cmd {
        TopicCmd::Create {
            name,
            partitions,
            retention,
            max_record_bytes,
        } => {
            let config = pb::TopicConfig {
                partitions,
                retention_ms: retention.ms().unwrap_or(0),
                retention_bytes: retention.retention_bytes.unwrap_or(0),
                max_record_bytes: max_record_bytes.unwrap_or(0),
            };
            let work = async { anyhow::Ok(client.create_topic_with(&name, config).await?) };
            let info = guard_call(client, ctx.timeout, true, work).await?;
            describe(ctx, &info, Some("created"));
        }
        TopicCmd::Alter {
            name,
            retention,
            partitions,
        } => {
            if partitions.is_some() {
                return Err(CliError::new(
                    "InvalidArgument",
                    "a topic's partition count is fixed at creation; raftlog cannot add partitions",
                )
                .hint(format!(
                    "create a topic with more and copy the records: raftlog topic create {name}-2 \
                     -p N && raftlog consume {name} --json | raftlog produce {name}-2 --from-json"
                ))
                .into());
            }
            let (ms, bytes) = (retention.ms(), retention.retention_bytes);
            if ms.is_none() && bytes.is_none() {
                return Err(CliError::new("InvalidArgument", "nothing to change")
                    .hint("give --retention and/or --retention-bytes (the partition count is fixed at creation)")
                    .into());
            }
            let work = async { anyhow::Ok(client.alter_topic(&name, ms, bytes).await?) };
            let info = guard_call(client, ctx.timeout, true, work).await?;
            describe(ctx, &info, Some("altered"));
        }
        TopicCmd::Delete { name } => {
            let work = async { anyhow::Ok(client.delete_topic(&name).await?) };
            guard_call(client, ctx.timeout, true, work).await?;
            if ctx.json {
                output::json(&json!({"deleted": name}));
            } else {
                output::line(&format!("deleted topic {name}"));
            }
        }
        TopicCmd::List => {
            let work = async { anyhow::Ok(client.list_topics().await?) };
            let topics = guard_call(client, ctx.timeout, false, work).await?;
            list(ctx, &topics);
        }
        TopicCmd::Describe { name } => {
            let work = async { anyhow::Ok(client.describe_topic(&name).await?) };
            let info = guard_call(client, ctx.timeout, false, work).await?;
            describe(ctx, &info, None);
        }
    }
    Ok(())
}

pub fn topic_json(t: &pb::TopicInfo) -> serde_json::Value {
    let config = t.config.unwrap_or_default();
    json!({
        "name": t.name, "topic_id": t.topic_id,
        "config": {"partitions": config.partitions, "retention_ms": config.retention_ms,
                   "retention_bytes": config.retention_bytes, "max_record_bytes": config.max_record_bytes},
        "partitions": t.partitions.iter().map(|p| json!({
            "partition": p.partition, "start_offset": p.start_offset, "end_offset": p.end_offset,
            "records": p.end_offset - p.start_offset,
        })).collect::<Vec<_>>(),
    })
}

fn records(t: &pb::TopicInfo) -> u64 {
    t.partitions
        .iter()
        .map(|p| p.end_offset - p.start_offset)
        .sum()
}

fn retention_words(config: &pb::TopicConfig) -> (String, String) {
    let time = match config.retention_ms {
        0 => "forever".to_string(),
        ms => humantime::format_duration(Duration::from_millis(ms)).to_string(),
    };
    let size = match config.retention_bytes {
        0 => "no limit".to_string(),
        b => bytes_words(b),
    };
    (time, size)
}

/// A byte count in the largest binary unit that keeps it exact to one decimal.
fn bytes_words(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = b as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{value:.1} {}", UNITS[unit]).replace(".0 ", " ")
    }
}

fn list(ctx: &Ctx, topics: &[pb::TopicInfo]) {
    if ctx.json {
        output::json_pretty(&json!(topics.iter().map(topic_json).collect::<Vec<_>>()));
        return;
    }
    let mut table = Table::new([
        "name",
        "partitions",
        "records",
        "retention",
        "retention bytes",
    ]);
    for t in topics {
        let (time, size) = retention_words(&t.config.unwrap_or_default());
        table.row([
            t.name.clone(),
            t.partitions.len().to_string(),
            records(t).to_string(),
            time,
            size,
        ]);
    }
    table.print();
}

fn describe(ctx: &Ctx, t: &pb::TopicInfo, done: Option<&str>) {
    if ctx.json {
        output::json_pretty(&topic_json(t));
        return;
    }
    if let Some(done) = done {
        output::line(&format!(
            "{done} topic {} ({})",
            t.name,
            plural(t.partitions.len() as u64, "partition")
        ));
    }
    let config = t.config.unwrap_or_default();
    let (time, size) = retention_words(&config);
    let max_record = match config.max_record_bytes {
        0 => "the cluster's record_bytes_max".to_string(),
        b => bytes_words(u64::from(b)),
    };
    let mut summary = Table::new([
        "name",
        "partitions",
        "retention",
        "retention bytes",
        "max record",
    ]);
    summary.row([
        t.name.clone(),
        t.partitions.len().to_string(),
        time,
        size,
        max_record,
    ]);
    summary.print();
    if done.is_some() || t.partitions.len() > 64 {
        if t.partitions.len() > 64 {
            output::line(&format!(
                "({} partitions, {} records: `--json` lists each)",
                t.partitions.len(),
                records(t)
            ));
        }
        return;
    }
    output::line("");
    let mut table = Table::new(["partition", "start offset", "end offset", "records"]);
    for p in &t.partitions {
        table.row([
            u64::from(p.partition),
            p.start_offset,
            p.end_offset,
            p.end_offset - p.start_offset,
        ]);
    }
    table.print();
}
