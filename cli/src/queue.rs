//! `raftlog queue`: queue groups on topics: create, list, describe, delete; receive records
//! (locked to this caller) and ack, release or reject them by delivery id.

use std::time::Duration;

use clap::{Args, Subcommand};
use raftlog_client::pb;
use raftlog_client::queue::Job;
use serde_json::json;

use crate::codec::{self, Encoding, Encodings};
use crate::diagnose::guard_call;
use crate::output::{self, Table};
use crate::{units, Ctx};

#[derive(Subcommand)]
pub enum QueueCmd {
    /// Create a queue group on a topic (no-op if it exists with the same settings).
    #[command(
        after_help = "Example:\n  raftlog queue create jobs --topic requests --lock 30s --max-deliveries 5 --dead-letters"
    )]
    Create(CreateArgs),
    /// Every queue with its backlog and records in flight.
    List,
    /// A queue's settings, backlog, in-flight and waiting records, and what it has done.
    Describe {
        /// Queue name.
        queue: String,
    },
    /// Forget a queue and its delivery state (its dead-letter topic stays).
    Delete {
        /// Queue name.
        queue: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Take records: each is locked to this caller until its deadline; settle them by delivery
    /// id with ack, release or reject (or they are delivered again when the lock runs out).
    Receive {
        /// Queue name.
        queue: String,
        /// Most records to take (with --follow: most held at once, not yet settled).
        #[arg(long, short = 'n', default_value_t = 1)]
        max: u32,
        /// How long to wait for a record.
        #[arg(long, value_parser = units::duration_or_zero, default_value = "5s", value_name = "DURATION", conflicts_with = "follow")]
        wait: Duration,
        /// The worker name shown by describe.
        #[arg(long, default_value = "cli")]
        worker: String,
        /// Ack every record received at once (take records off the queue).
        #[arg(long)]
        ack: bool,
        /// Keep receiving (until Ctrl-C): records are pushed as they come, one line each, over
        /// a stream that follows the leader.
        #[arg(long, short)]
        follow: bool,
    },
    /// Done with these deliveries: never delivered to this queue again.
    Ack {
        /// Queue name.
        queue: String,
        /// Delivery ids, as receive printed them.
        #[arg(required = true)]
        delivery: Vec<String>,
    },
    /// Give deliveries back: delivered again after --delay (or the queue's backoff).
    Release {
        /// Queue name.
        queue: String,
        /// Delivery ids, as receive printed them.
        #[arg(required = true)]
        delivery: Vec<String>,
        /// Deliver again after this long [default: the queue's backoff].
        #[arg(long, value_parser = units::duration_or_zero, value_name = "DURATION")]
        delay: Option<Duration>,
    },
    /// Put the queue's dead letters back on its topic (each once), to be handed out again.
    #[command(after_help = "Example:\n  raftlog queue redrive jobs")]
    Redrive {
        /// Queue name.
        queue: String,
        /// Redrive at most this many [default: all there are].
        #[arg(long, value_name = "N")]
        max: Option<u64>,
    },
    /// Dead-letter deliveries now.
    Reject {
        /// Queue name.
        queue: String,
        /// Delivery ids, as receive printed them.
        #[arg(required = true)]
        delivery: Vec<String>,
        /// Why (kept in the dead letter's raftlog-dlq-error header).
        #[arg(long, default_value = "")]
        error: String,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    /// Queue name.
    queue: String,
    /// The topic whose records the queue hands out.
    #[arg(long, short)]
    topic: String,
    /// How long a worker holds a record before it is delivered again.
    #[arg(long, value_parser = units::duration, default_value = "30s", value_name = "DURATION")]
    lock: Duration,
    /// Deliveries after which a record is dead-lettered.
    #[arg(long, default_value_t = 5)]
    max_deliveries: u32,
    /// Delays before redeliveries of released records, e.g. 1s,10s,1m (the last repeats).
    #[arg(long, value_delimiter = ',', value_parser = units::duration, value_name = "DURATIONS")]
    backoff: Vec<Duration>,
    /// Records locked at once over the whole queue.
    #[arg(long, default_value_t = 1000)]
    in_flight_max: u32,
    /// Records locked at once by one worker [default: no cap of its own].
    #[arg(long, value_name = "N")]
    worker_in_flight_max: Option<u32>,
    /// One record per key out at a time, each key's records in offset order.
    #[arg(long)]
    key_ordered: bool,
    /// Records set aside per partition (delayed, held behind their key) before the queue stops
    /// looking further into it.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    lookahead_max: u32,
    /// Append dead letters to a topic (default name <topic>.<queue>.dlq).
    #[arg(long)]
    dead_letters: bool,
    /// The dead-letter topic's name (implies --dead-letters).
    #[arg(long, value_name = "TOPIC")]
    dead_letter_topic: Option<String>,
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

pub async fn run(ctx: &Ctx, cmd: QueueCmd) -> anyhow::Result<()> {
    let client = &ctx.client;
    match cmd {
        QueueCmd::Create(args) => {
            let settings = pb::QueueSettings {
                lock_ms: millis(args.lock),
                max_deliveries: args.max_deliveries,
                backoff_ms: args.backoff.iter().map(|d| millis(*d)).collect(),
                in_flight_max: args.in_flight_max,
                dead_letters: args.dead_letters || args.dead_letter_topic.is_some(),
                dead_letter_topic: args.dead_letter_topic.unwrap_or_default(),
                worker_in_flight_max: args.worker_in_flight_max.unwrap_or(0),
                key_ordered: args.key_ordered,
                lookahead_max: args.lookahead_max,
            };
            let work = async {
                anyhow::Ok(
                    client
                        .create_queue(&args.queue, &args.topic, settings)
                        .await?,
                )
            };
            let created = guard_call(client, ctx.timeout, true, work).await?;
            let info = created.queue.unwrap_or_default();
            if ctx.json {
                output::json_pretty(
                    &json!({"created": created.created, "queue": info_json(&info)}),
                );
            } else if created.created {
                output::line(&format!(
                    "created queue {} on topic {}",
                    args.queue, args.topic
                ));
            } else {
                output::line(&format!("queue {} exists with these settings", args.queue));
            }
        }
        QueueCmd::List => {
            let work = async { anyhow::Ok(client.list_queues().await?) };
            let queues = guard_call(client, ctx.timeout, false, work).await?;
            if ctx.json {
                output::json_pretty(&json!(queues.iter().map(info_json).collect::<Vec<_>>()));
                return Ok(());
            }
            let mut table = Table::new([
                "queue",
                "topic",
                "backlog",
                "ready",
                "in flight",
                "waiting",
                "acked",
                "dead-lettered",
            ]);
            for q in &queues {
                table.row([
                    q.queue.clone(),
                    q.topic.clone(),
                    q.backlog.to_string(),
                    q.ready.to_string(),
                    q.in_flight.to_string(),
                    q.waiting.to_string(),
                    q.acked.to_string(),
                    q.dead_lettered.to_string(),
                ]);
            }
            table.print();
        }
        QueueCmd::Describe { queue } => {
            let work = async { anyhow::Ok(client.describe_queue(&queue).await?) };
            let info = guard_call(client, ctx.timeout, false, work).await?;
            print_info(ctx, &info);
        }
        QueueCmd::Delete { queue, yes } => {
            crate::cluster::confirm(
                yes,
                &format!("delete queue {queue} and its delivery state?"),
            )?;
            let work = async { anyhow::Ok(client.delete_queue(&queue).await?) };
            guard_call(client, ctx.timeout, true, work).await?;
            if ctx.json {
                output::json(&json!({"deleted": queue}));
            } else {
                output::line(&format!("deleted queue {queue}"));
            }
        }
        QueueCmd::Receive {
            queue,
            max,
            wait: _,
            worker,
            ack,
            follow: true,
        } => {
            tokio::select! {
                result = follow(ctx, &queue, max, &worker, ack) => result?,
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        QueueCmd::Receive {
            queue,
            max,
            wait,
            worker,
            ack,
            follow: false,
        } => receive(ctx, &queue, max, wait, &worker, ack).await?,
        QueueCmd::Redrive { queue, max } => redrive(ctx, &queue, max).await?,
        QueueCmd::Ack { queue, delivery } => {
            settle(ctx, &queue, delivery, pb::SettleAction::Ack, 0, "").await?
        }
        QueueCmd::Release {
            queue,
            delivery,
            delay,
        } => {
            let delay_ms = delay.map_or(0, millis);
            settle(
                ctx,
                &queue,
                delivery,
                pb::SettleAction::Release,
                delay_ms,
                "",
            )
            .await?
        }
        QueueCmd::Reject {
            queue,
            delivery,
            error,
        } => settle(ctx, &queue, delivery, pb::SettleAction::Reject, 0, &error).await?,
    }
    Ok(())
}

async fn receive(
    ctx: &Ctx,
    queue: &str,
    max: u32,
    wait: Duration,
    worker: &str,
    ack: bool,
) -> anyhow::Result<()> {
    let client = &ctx.client;
    let work = async { anyhow::Ok(client.receive(queue, worker, max, wait).await?) };
    let jobs = guard_call(client, ctx.timeout + wait, true, work).await?;
    if ack && !jobs.is_empty() {
        let worker = raftlog_client::queue::Worker::new(client.clone(), queue, worker);
        let refused = worker.ack_all(&jobs).await?;
        if let Some(r) = refused.first() {
            anyhow::bail!("ack refused: {r}");
        }
    }
    if ctx.json {
        for job in &jobs {
            output::json(&job_json(job, ack));
        }
        return Ok(());
    }
    if jobs.is_empty() {
        eprintln!("no record within {wait:?}");
        return Ok(());
    }
    let mut table = Table::new(["delivery", "partition", "offset", "count", "key", "value"]);
    for job in &jobs {
        table.row([
            job.delivery_id.clone(),
            job.partition.to_string(),
            job.offset.to_string(),
            job.delivery_count.to_string(),
            job.record
                .key
                .as_ref()
                .map_or_else(String::new, |k| codec::escape(k)),
            codec::escape(&job.record.value),
        ]);
    }
    table.print();
    Ok(())
}

/// One delivery as a JSON object: the record's fields (text encodings) and the delivery's.
fn job_json(job: &Job, acked: bool) -> serde_json::Value {
    let text = Encodings {
        key: Encoding::Text,
        value: Encoding::Text,
    };
    let mut record = codec::record_json("", job.partition, &job.record, text);
    let fields = record.as_object_mut().expect("a record is an object");
    fields.remove("topic");
    fields.insert("delivery_id".into(), json!(job.delivery_id));
    fields.insert("delivery_count".into(), json!(job.delivery_count));
    fields.insert("lock_deadline_ms".into(), json!(job.lock_deadline_ms));
    fields.insert("acked".into(), json!(acked));
    record
}

/// `receive --follow`: records pushed over a receive stream, printed one line each as they
/// come (a JSON object with --json; otherwise delivery, partition, offset, count, key and value
/// separated by tabs), each acked first with --ack.
async fn follow(ctx: &Ctx, queue: &str, max: u32, worker: &str, ack: bool) -> anyhow::Result<()> {
    let worker = raftlog_client::queue::Worker::new(ctx.client.clone(), queue, worker);
    let mut jobs = worker.stream(max.max(1));
    loop {
        let job = jobs.next().await?;
        if ack {
            worker.ack(&job).await?;
        }
        if ctx.json {
            output::json(&job_json(&job, ack));
            continue;
        }
        let key = job
            .record
            .key
            .as_ref()
            .map_or_else(String::new, |k| codec::escape(k));
        output::line(&format!(
            "{}\t{}\t{}\t{}\t{key}\t{}",
            job.delivery_id,
            job.partition,
            job.offset,
            job.delivery_count,
            codec::escape(&job.record.value)
        ));
    }
}

async fn settle(
    ctx: &Ctx,
    queue: &str,
    deliveries: Vec<String>,
    action: pb::SettleAction,
    delay_ms: u32,
    error: &str,
) -> anyhow::Result<()> {
    let client = &ctx.client;
    let settlements = deliveries
        .iter()
        .map(|id| pb::Settlement {
            delivery_id: id.clone(),
            action: action as i32,
            delay_ms,
            error: error.to_string(),
        })
        .collect();
    let work = async { anyhow::Ok(client.settle(queue, settlements).await?) };
    let outcomes = guard_call(client, ctx.timeout, true, work).await?;
    let refused: Vec<&pb::SettleOutcome> = outcomes.iter().filter(|o| !o.ok).collect();
    if ctx.json {
        let all: Vec<_> = outcomes
            .iter()
            .map(|o| json!({"delivery_id": o.delivery_id, "ok": o.ok, "error_code": o.error_code, "message": o.message}))
            .collect();
        output::json_pretty(&json!(all));
    } else {
        let done = outcomes.len() - refused.len();
        let verb = match action {
            pb::SettleAction::Ack => "acked",
            pb::SettleAction::Release => "released",
            pb::SettleAction::Reject => "rejected",
            _ => "settled",
        };
        output::line(&format!("{verb} {done} of {}", outcomes.len()));
        for r in &refused {
            eprintln!("{}: {}: {}", r.delivery_id, r.error_code, r.message);
        }
    }
    if !refused.is_empty() {
        anyhow::bail!("{} of {} refused", refused.len(), outcomes.len());
    }
    Ok(())
}

/// Redrives in calls of up to 1000 dead letters until none is left (or `max` went), showing
/// progress on stderr.
async fn redrive(ctx: &Ctx, queue: &str, max: Option<u64>) -> anyhow::Result<()> {
    let client = &ctx.client;
    let mut moved = 0u64;
    let mut remaining = 0;
    loop {
        let room = max.map_or(1000, |m| m.saturating_sub(moved).min(1000)) as u32;
        if room == 0 {
            break;
        }
        let work = async { anyhow::Ok(client.redrive(queue, room).await?) };
        let answer = guard_call(client, ctx.timeout, true, work).await?;
        moved += answer.records;
        remaining = answer.remaining;
        if !ctx.json && remaining > 0 {
            eprintln!("redrove {moved}, {remaining} left");
        }
        if remaining == 0 || answer.records == 0 {
            break;
        }
    }
    if ctx.json {
        output::json(&json!({"queue": queue, "redriven": moved, "remaining": remaining}));
    } else {
        output::line(&format!(
            "redrove {moved} dead letters of queue {queue} to its topic"
        ));
    }
    Ok(())
}

fn info_json(q: &pb::QueueInfo) -> serde_json::Value {
    let s = q.settings.clone().unwrap_or_default();
    json!({
        "queue": q.queue,
        "topic": q.topic,
        "settings": {
            "lock_ms": s.lock_ms,
            "max_deliveries": s.max_deliveries,
            "backoff_ms": s.backoff_ms,
            "in_flight_max": s.in_flight_max,
            "worker_in_flight_max": s.worker_in_flight_max,
            "key_ordered": s.key_ordered,
            "lookahead_max": s.lookahead_max,
            "dead_letter_topic": if s.dead_letters { json!(s.dead_letter_topic) } else { json!(null) },
        },
        "backlog": q.backlog,
        "ready": q.ready,
        "in_flight": q.in_flight,
        "waiting": q.waiting,
        "delayed": q.delayed,
        "held": q.held,
        "full": q.full,
        "oldest_lock_age_ms": q.oldest_unacked_age_ms,
        "delivered": q.delivered,
        "redelivered": q.redelivered,
        "acked": q.acked,
        "released": q.released,
        "dead_lettered": q.dead_lettered,
        "lock_timeouts": q.lock_timeouts,
        "expired": q.expired,
        "redriven": q.redriven,
        "created_at_ms": q.created_at_ms,
    })
}

fn print_info(ctx: &Ctx, q: &pb::QueueInfo) {
    if ctx.json {
        output::json_pretty(&info_json(q));
        return;
    }
    let s = q.settings.clone().unwrap_or_default();
    let backoff: Vec<String> = s.backoff_ms.iter().map(|ms| format!("{ms}ms")).collect();
    let mut table = Table::new(["", ""]);
    let rows: Vec<(&str, String)> = vec![
        ("queue", q.queue.clone()),
        ("topic", q.topic.clone()),
        ("lock", format!("{} ms", s.lock_ms)),
        ("max deliveries", s.max_deliveries.to_string()),
        (
            "backoff",
            if backoff.is_empty() {
                "none".into()
            } else {
                backoff.join(",")
            },
        ),
        ("in flight max", s.in_flight_max.to_string()),
        (
            "per worker",
            match s.worker_in_flight_max {
                0 => "no cap of its own".into(),
                n => n.to_string(),
            },
        ),
        (
            "order",
            if s.key_ordered {
                "by key".into()
            } else {
                "none".into()
            },
        ),
        ("lookahead", format!("{} per partition", s.lookahead_max)),
        (
            "dead letters",
            if s.dead_letters {
                s.dead_letter_topic.clone()
            } else {
                "off (dropped)".into()
            },
        ),
        ("backlog", q.backlog.to_string()),
        ("ready", q.ready.to_string()),
        (
            "in flight",
            format!(
                "{}{}",
                q.in_flight,
                if q.full { " (full: receive waits)" } else { "" }
            ),
        ),
        ("waiting", format!("{} ({} delayed)", q.waiting, q.delayed)),
        ("held behind their key", q.held.to_string()),
        ("oldest lock age", format!("{} ms", q.oldest_unacked_age_ms)),
        ("delivered", q.delivered.to_string()),
        ("redelivered", q.redelivered.to_string()),
        ("acked", q.acked.to_string()),
        ("released", q.released.to_string()),
        ("dead-lettered", q.dead_lettered.to_string()),
        ("lock timeouts", q.lock_timeouts.to_string()),
        ("expired (retention)", q.expired.to_string()),
        ("redriven", q.redriven.to_string()),
    ];
    for (k, v) in rows {
        table.row([k.to_string(), v]);
    }
    table.print();
}
