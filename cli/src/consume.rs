//! `raftlog consume`: read records from any position, print them as text, a template or JSON, and
//! follow new ones through node failures.

use std::time::Duration;

use raftlog_client::consumer::{Consumer, ConsumerConfig, StartFrom};

use crate::codec::{self, Encoding, Encodings};
use crate::diagnose::{guard_call, CliError};
use crate::format::{self, Template};
use crate::{cluster, output, units, Ctx};

const EXAMPLES: &str = "\
Offsets (-o), per partition:
  start | end          the oldest retained record | only records produced from now on
  42                   offset 42 (moved into the partition's range if outside it)
  -10 | +10            the last 10 records | 10 after the oldest
  @-1h | @1733565600000 | @2026-12-07T10:00:00Z   the first record appended at or after then

Examples:
  raftlog consume orders                          # everything, then exit
  raftlog consume orders -o -5 -f                 # the last 5 of each partition, then follow
  raftlog consume orders -g billing -f            # resume the group, commit as it goes
  raftlog consume orders -p 1 -o @-10m --json     # lossless JSON lines
  raftlog consume orders --format '%o %k %v{hex}\\n'
  raftlog consume blobs -n 1 --format '%v{raw}' > photo.jpg

Failover: when the node being read from fails, reading goes on from the next of --endpoints
exactly after the last record printed, with a note on stderr.
Groups: with -g and no -p, the consumer joins the group and the cluster assigns it partitions;
start more consumers of the group and the partitions are split between them (each change noted
on stderr); a consumer that stops or dies hands its partitions on. With -p, it reads exactly
those partitions, which the cluster allows only while the group has no joined members.";

#[derive(clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct ConsumeArgs {
    /// Topic to read.
    topic: String,
    /// Read only these partitions, e.g. -p 0 or -p 0,2 [default: all].
    #[arg(long, short, value_delimiter = ',')]
    partition: Option<Vec<u32>>,
    /// Where to start: start, end, OFFSET, -N, +N, @TIME (see below) [default: start, or the
    /// group's committed offsets].
    #[arg(long, short, value_parser = units::offset, allow_hyphen_values = true, value_name = "POS")]
    offset: Option<StartFrom>,
    /// Same as -o end (kept for scripts written before -o end).
    #[arg(long, hide = true, conflicts_with = "offset")]
    from_end: bool,
    /// Consumer group: join it and read the partitions it assigns (without -p), from its
    /// committed offsets (or from -o, which moves the group), and commit what was printed.
    #[arg(long, short)]
    group: Option<String>,
    /// Static group membership: a consumer restarted with the same id takes its partitions
    /// back at once instead of a rebalance.
    #[arg(long, requires = "group", value_name = "ID")]
    instance_id: Option<String>,
    /// Stop after this many records.
    #[arg(long, short = 'n', value_name = "N")]
    max: Option<u64>,
    /// Keep waiting for new records (until Ctrl-C) instead of stopping at the end.
    #[arg(long, short)]
    follow: bool,
    /// Read from this node only (a node id, or HOST:PORT) [default: any, failing over].
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    /// How keys are printed: text (escaped), raw bytes, hex or base64.
    #[arg(long, value_enum, default_value_t = Encoding::Text, value_name = "ENC")]
    key_encoding: Encoding,
    /// How values (and header values) are printed: text (escaped), raw bytes, hex or base64.
    #[arg(long, value_enum, default_value_t = Encoding::Text, value_name = "ENC")]
    value_encoding: Encoding,
    /// Print each record through a template: %t %p %o %d %k %v %h %K %V %H, encodings as
    /// %v{hex}, escapes \n \t [default: '%p\t%o\t%k\t%v\n'].
    #[arg(long, conflicts_with = "json", value_name = "TEMPLATE")]
    format: Option<String>,
}

pub async fn run(ctx: &Ctx, args: ConsumeArgs) -> anyhow::Result<()> {
    let template = Template::parse(args.format.as_deref().unwrap_or(format::DEFAULT))?;
    let reader = match &args.node {
        Some(node) => {
            let addr = cluster::resolve_node(ctx, node).await?;
            ctx.client.for_endpoints([addr])?
        }
        None => ctx.client.clone(),
    };
    let start = match (args.offset, args.from_end) {
        (Some(start), _) => start,
        (None, true) => StartFrom::End,
        (None, false) => StartFrom::Beginning,
    };
    let mut config = ConsumerConfig::new(&args.topic).start(start);
    config.group = args.group.clone();
    config.partitions = args.partition.clone();
    config.reset_group = args.group.is_some() && (args.offset.is_some() || args.from_end);
    config.stop_at_end = !args.follow;
    config.instance_id = args.instance_id.clone();
    config.unavailable_timeout = ctx.timeout;
    if let Some(n) = args.max {
        config.max_records = n.clamp(1, 1000) as u32;
    }
    let work = async { anyhow::Ok(Consumer::new(reader, config).await?) };
    let needs_quorum = args.group.is_some();
    let mut consumer = guard_call(&ctx.client, ctx.timeout, needs_quorum, work).await?;
    for a in consumer.adjustments() {
        eprintln!(
            "note: {}/{}: offset {} is outside the retained {}; starting at {}",
            args.topic,
            a.partition,
            a.requested,
            output::offsets(a.start_offset, a.end_offset),
            a.actual
        );
    }
    if let (Some(group), true) = (&args.group, args.offset.is_some() || args.from_end) {
        eprintln!(
            "note: group {group} starts at -o, not at its committed offsets, and moves there"
        );
    }
    if args.group.is_some() {
        // The start positions are the group's from now on (a new group exists at once, with its
        // lag; -o moves it now), even if nothing is read.
        let work = async { anyhow::Ok(consumer.commit().await.map_err(commit_refused)?) };
        guard_call(&ctx.client, ctx.timeout, true, work).await?;
    }
    let printer = Printer {
        topic: args.topic.clone(),
        template,
        json: ctx.json,
        encodings: Encodings {
            key: args.key_encoding,
            value: args.value_encoding,
        },
    };
    let result = tokio::select! {
        result = read(&mut consumer, &printer, args.max, args.follow, args.group.is_some()) => result,
        // Ctrl-C: leave the group at once (below) rather than after the session timeout.
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    if args.group.is_some() {
        let work = async { anyhow::Ok(consumer.close().await.map_err(commit_refused)?) };
        guard_call(&ctx.client, ctx.timeout, true, work).await?;
    }
    result
}

async fn read(
    consumer: &mut Consumer,
    printer: &Printer,
    max: Option<u64>,
    follow: bool,
    commit: bool,
) -> anyhow::Result<()> {
    let mut printed = 0u64;
    let wait = if follow {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(1)
    };
    while !consumer.is_done() && max.is_none_or(|m| printed < m) {
        let mut records = consumer.poll(wait).await?;
        for change in consumer.take_assignment_changes() {
            eprintln!("note: {}", assignment_words(&printer.topic, &change));
        }
        // Partition by partition (a stable sort keeps each partition's offset order).
        records.sort_by_key(|r| r.partition);
        for f in consumer.take_failovers() {
            // Where reading went on: the first record of this batch, or the position.
            let mut resumed = consumer.positions().clone();
            for r in &records {
                resumed
                    .entry(r.partition)
                    .and_modify(|o| *o = (*o).min(r.record.offset));
            }
            let at: Vec<String> = resumed
                .iter()
                .map(|(p, o)| format!("{}/{p} offset {o}", printer.topic))
                .collect();
            eprintln!(
                "note: node {} failed ({}); reading on from {} at {}",
                f.from,
                failure_words(&f.error),
                f.to,
                at.join(", ")
            );
        }
        let mut out = Vec::new();
        let mut rewound = std::collections::HashSet::new();
        for r in &records {
            if max.is_some_and(|m| printed >= m) {
                // Not printed: rewind to the first such record of each partition, so a commit
                // never covers records nobody saw.
                if rewound.insert(r.partition) {
                    consumer.seek(r.partition, r.record.offset);
                }
                continue;
            }
            printer.write(&mut out, r.partition, &r.record);
            printed += 1;
        }
        output::bytes(&out);
        if commit && !records.is_empty() {
            consumer.commit().await.map_err(commit_refused)?;
        }
    }
    Ok(())
}

/// A commit the group refused because its offset is already further: someone else moved it.
fn commit_refused(e: raftlog_client::Error) -> anyhow::Error {
    if e.code() != tonic::Code::FailedPrecondition {
        return e.into();
    }
    let message = e
        .status()
        .map_or(e.to_string(), |s| s.message().to_string());
    CliError::new(
        "FailedPrecondition",
        format!("the group refused this consumer's commit: {message}"),
    )
    .hint(
        "another consumer of the group committed further, the partition was assigned to another \
         member, or the group was moved with `raftlog group seek`",
    )
    .into()
}

/// "member 3f2a… (epoch 4) reads orders/0,1 (+1: 1; -1: 2)".
fn assignment_words(topic: &str, c: &raftlog_client::consumer::AssignmentChange) -> String {
    let list = |set: &std::collections::BTreeSet<u32>| {
        set.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    };
    if c.fenced {
        let lost = if c.removed.is_empty() {
            String::new()
        } else {
            format!(" and stopped reading {topic}/{}", list(&c.removed))
        };
        return format!(
            "member {} (epoch {}) lost its membership{lost}; joining again",
            c.member_id, c.member_epoch
        );
    }
    let reads = if c.partitions.is_empty() {
        "reads no partition (the others' members have them all)".to_string()
    } else {
        format!("reads {topic}/{}", list(&c.partitions))
    };
    let mut changes = Vec::new();
    if !c.added.is_empty() {
        changes.push(format!("+{}", list(&c.added)));
    }
    if !c.removed.is_empty() {
        changes.push(format!("-{}", list(&c.removed)));
    }
    format!(
        "member {} (epoch {}) {reads} ({})",
        c.member_id,
        c.member_epoch,
        changes.join(" ")
    )
}

fn failure_words(e: &raftlog_client::Error) -> String {
    let message = e
        .status()
        .map_or(e.to_string(), |s| s.message().to_string());
    if message.contains("tcp connect error") {
        "cannot connect".into()
    } else {
        message
    }
}

struct Printer {
    topic: String,
    template: Template,
    json: bool,
    encodings: Encodings,
}

impl Printer {
    fn write(&self, out: &mut Vec<u8>, partition: u32, r: &raftlog_client::pb::Record) {
        if self.json {
            let v = codec::record_json(&self.topic, partition, r, self.encodings);
            out.extend_from_slice(v.to_string().as_bytes());
            out.push(b'\n');
        } else {
            out.extend(
                self.template
                    .render(&self.topic, partition, r, self.encodings),
            );
        }
    }
}
