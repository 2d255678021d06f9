//! `raftlog bench`: load generators. Each prints one JSON line of results (for scripts/bench*.sh)
//! and, unless `--json`, a summary line for people on stderr.
//!
//! - `produce`: a closed loop. `concurrency` requests are in flight at any time; each waits for
//!   its replicated, committed ack before the next is sent. Against raftlog (raw produce calls),
//!   or against NATS JetStream (`--system nats`: one publish per request, each awaiting its
//!   publish ack), or through the batching [`Producer`](raftlog_client::producer::Producer)
//!   (`--producer`: as many records as the producer will take, throughput of acknowledged
//!   records).
//! - `consume`: catch-up reading of a topic from one node, every partition in parallel.
//! - `e2e`: end-to-end latency, from send to receipt by a consumer (push or pull), at a steady
//!   produce rate.
//! - `group-members`, `rebalance`: what consumer-group heartbeats cost, and how long a
//!   rebalance takes (see [`group`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use raftlog_client::Client;
use serde_json::json;

mod consume;
mod e2e;
mod group;
mod nats;
mod produce;
mod queue;

#[derive(clap::Subcommand)]
pub enum BenchCmd {
    /// Closed-loop produce load: CONCURRENCY requests in flight, each waiting for its ack.
    Produce(ProduceArgs),
    /// Catch-up consumption: read COUNT records of a topic from its start, from one node, every
    /// partition in parallel, as fast as the node serves them.
    Consume(ConsumeArgs),
    /// End-to-end latency: RATE records per second for DURATION through the batching producer,
    /// received as they commit by a consumer on one node (Subscribe push, or long-poll Fetch);
    /// reports send-to-receipt and send-to-ack latencies.
    E2e(E2eArgs),
    /// Many idle members of one coordinated consumer group, heartbeating for a while (what
    /// heartbeats cost: scripts/bench-groups.sh measures the nodes meanwhile).
    GroupMembers(group::GroupMembersArgs),
    /// Rebalance time: members read a topic under steady produce; each round one member stops
    /// (crash or leave) and the time until the others read all of its partitions is reported.
    Rebalance(group::RebalanceArgs),
    /// Queue throughput: a producer appends COUNT records while WORKERS workers receive and ack
    /// each; acked records per second and send-to-ack latency (raftlog or NATS JetStream's pull
    /// consumer).
    Queue(queue::QueueArgs),
}

/// How the end-to-end consumer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsumeMode {
    /// Subscribe: the node pushes records as they commit.
    Push,
    /// Fetch with a long poll, one request in flight per partition.
    Pull,
}

impl ConsumeMode {
    fn name(self) -> &'static str {
        match self {
            ConsumeMode::Push => "push",
            ConsumeMode::Pull => "pull",
        }
    }
}

#[derive(clap::Args)]
pub struct E2eArgs {
    /// Topic to produce to and consume from.
    #[arg(long, default_value = "bench-e2e")]
    topic: String,
    /// Create the topic with this many partitions if it does not exist.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Records per second, kept whatever the latency (open loop).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long to produce, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// At least 8: each value starts with its send time.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// What record values hold: `fill` (one byte repeated) or `random` (incompressible).
    #[arg(long, value_enum, default_value_t = Payload::Random)]
    payload: Payload,
    /// How the consumer reads.
    #[arg(long, value_enum, default_value_t = ConsumeMode::Push)]
    mode: ConsumeMode,
    /// The node the consumer reads from [default: the first of --endpoints].
    #[arg(long)]
    endpoint: Option<String>,
    /// The producer's linger in ms [default: ProducerConfig's, 5].
    #[arg(long)]
    linger_ms: Option<u64>,
}

/// What the records' values hold (see `--payload`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Payload {
    Fill,
    Random,
}

impl Payload {
    fn name(self) -> &'static str {
        match self {
            Payload::Fill => "fill",
            Payload::Random => "random",
        }
    }
}

/// Record values of one load, handed out without copying: `fill` is one shared value; `random`
/// slices a 64 MiB random pool at offsets that never repeat within a compressor's window, so no
/// two nearby records share bytes.
#[derive(Clone)]
pub struct Payloads {
    pool: bytes::Bytes,
    len: usize,
    next: Arc<AtomicU64>,
}

impl Payloads {
    pub fn new(kind: Payload, len: usize) -> Self {
        let pool = match kind {
            Payload::Fill => vec![b'x'; len],
            Payload::Random => {
                let mut pool = vec![0u8; (64 << 20).max(4 * len)];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut pool);
                pool
            }
        };
        Self {
            pool: pool.into(),
            len,
            next: Arc::default(),
        }
    }

    pub fn next(&self) -> bytes::Bytes {
        let room = self.pool.len() - self.len;
        if room == 0 {
            return self.pool.clone();
        }
        // An odd stride: consecutive values start at different offsets modulo any block size.
        let step = self.len as u64 + 7;
        let offset = (self.next.fetch_add(step, Ordering::Relaxed) % room as u64) as usize;
        self.pool.slice(offset..offset + self.len)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    Raftlog,
    Nats,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Raftlog => "raftlog",
            System::Nats => "nats",
        }
    }
}

#[derive(clap::Args)]
pub struct ProduceArgs {
    /// Topic (raftlog), or stream name and subject (NATS).
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Create the topic with this many partitions if it does not exist (raftlog only).
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Records to produce (rounded up to whole requests).
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Requests in flight at any time.
    #[arg(long, short, default_value_t = 64)]
    concurrency: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// What record values hold: `fill` is b'x' repeated (RocksDB's LZ4 shrinks it ~250x, which
    /// flatters raftlog's disk writes); `random` gives every record distinct incompressible bytes.
    #[arg(long, value_enum, default_value_t = Payload::Fill)]
    payload: Payload,
    /// Records in each produce request.
    #[arg(long, default_value_t = 1)]
    records_per_request: usize,
    /// The system under load.
    #[arg(long, value_enum, default_value_t = System::Raftlog)]
    system: System,
    /// Comma-separated NATS servers (with --system nats).
    #[arg(
        long,
        env = "NATS_URL",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
    )]
    nats_url: Vec<String>,
    /// Replicas of the JetStream stream, when this creates it (with --system nats).
    #[arg(long, default_value_t = 3)]
    nats_replicas: usize,
    /// Send every request as its own unary Produce call instead of on one pipelined
    /// ProduceStream (raftlog only; the same closed loop either way).
    #[arg(long)]
    unary: bool,
    /// With --unary: call Produce through the plain stub tonic generates from proto/, on one
    /// channel to the leader with tonic's default settings (no raftlog client library: no
    /// retries, timeouts, leader following or raftlog HTTP/2 settings), as a program that only
    /// has the proto does. Plaintext and without a token.
    #[arg(long, requires = "unary")]
    generated_client: bool,
    /// Send every record through the batching idempotent producer (raftlog only) instead of
    /// raw produce requests: --concurrency and --records-per-request do not apply; the producer
    /// batches and pipelines on its own.
    #[arg(long, conflicts_with_all = ["concurrency", "records_per_request"])]
    producer: bool,
    /// With --producer: the producer's batch_bytes [default: ProducerConfig's, 1 MiB].
    #[arg(long, requires = "producer")]
    batch_bytes: Option<usize>,
    /// With --producer: the producer's linger in ms [default: ProducerConfig's, 5].
    #[arg(long, requires = "producer")]
    linger_ms: Option<u64>,
}

#[derive(clap::Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Records to read (the topic must hold at least this many).
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// The one node to read from [default: the first of --endpoints].
    #[arg(long)]
    endpoint: Option<String>,
    /// max_bytes of each fetch (the node caps it at its fetch_bytes_max, 16 MiB by default).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    fetch_bytes: u32,
    /// max_records of each fetch (0: the node's fetch_records_max, 10,000 by default).
    #[arg(long, default_value_t = 0)]
    fetch_records: u32,
    /// Wait up to this long for the node to hold COUNT records (a follower may still be applying
    /// what was just produced) before the clock starts.
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
}

pub async fn run(client: &Client, cmd: BenchCmd, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Produce(args) => {
            if args.count == 0 || args.concurrency == 0 || args.records_per_request == 0 {
                bail!("--count, --concurrency and --records-per-request must be at least 1");
            }
            match (args.system, args.producer) {
                (System::Nats, true) => {
                    bail!("--producer is raftlog's batching producer; it has no NATS mode")
                }
                (System::Nats, false) => nats::produce(args, as_json).await,
                (System::Raftlog, true) => produce::produce_batching(client, args, as_json).await,
                (System::Raftlog, false) => produce::produce(client, args, as_json).await,
            }
        }
        BenchCmd::Consume(args) => consume::consume(client, args, as_json).await,
        BenchCmd::E2e(args) => e2e::e2e(client, args, as_json).await,
        BenchCmd::GroupMembers(args) => group::group_members(client, args, as_json).await,
        BenchCmd::Rebalance(args) => group::rebalance(client, args, as_json).await,
        BenchCmd::Queue(args) => queue::queue(client, args, as_json).await,
    }
}

/// Runs `op(0)` .. `op(requests - 1)` with `concurrency` calls in flight, each started when
/// another finishes; returns the latency histogram (microseconds) and the elapsed seconds. Stops
/// at the first error.
async fn closed_loop<F, Fut>(
    requests: u64,
    concurrency: u64,
    op: F,
) -> anyhow::Result<(Histogram<u64>, f64)>
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let progress = spawn_progress(done.clone(), requests, "requests");
    let mut workers = Vec::new();
    for _ in 0..concurrency.min(requests) {
        let (op, next, done) = (op.clone(), next.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return Ok::<_, anyhow::Error>(hist);
                }
                let t = Instant::now();
                if let Err(e) = op(i).await {
                    // Let the other workers stop at their next request.
                    next.store(requests, Ordering::Relaxed);
                    return Err(e);
                }
                hist.record(t.elapsed().as_micros() as u64).ok();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut hist = new_histogram();
    let mut failed = None;
    for w in workers {
        match w.await? {
            Ok(h) => {
                hist.add(h).ok();
            }
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    progress.abort();
    match failed {
        Some(e) => Err(e),
        None => Ok((hist, start.elapsed().as_secs_f64())),
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new(3).expect("histogram with 3 significant digits")
}

/// Prints `done`/`total` on stderr every 5 s until aborted.
fn spawn_progress(
    done: Arc<AtomicU64>,
    total: u64,
    what: &'static str,
) -> tokio::task::JoinHandle<()> {
    let start = Instant::now();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let n = done.load(Ordering::Relaxed);
            eprintln!(
                "bench: {n}/{total} {what} acknowledged ({:.0}/s)",
                n as f64 / start.elapsed().as_secs_f64()
            );
        }
    })
}

fn latency_json(hist: &Histogram<u64>) -> serde_json::Value {
    json!({"p50": hist.value_at_quantile(0.5), "p99": hist.value_at_quantile(0.99),
           "p999": hist.value_at_quantile(0.999), "max": hist.max()})
}

/// The result line of a closed-loop produce run (both systems).
struct ClosedLoopResult<'a> {
    system: System,
    args: &'a ProduceArgs,
    requests: u64,
    hist: Histogram<u64>,
    secs: f64,
    /// System-specific details (e.g. the NATS server version and stream replicas).
    extra: serde_json::Value,
}

impl ClosedLoopResult<'_> {
    fn print(&self, as_json: bool) {
        let (requests, secs, hist) = (self.requests, self.secs, &self.hist);
        let records = requests * self.args.records_per_request as u64;
        let mut result = json!({
            "system": self.system.name(), "mode": "produce", "requests": requests, "records": records,
            "record_bytes": self.args.record_bytes, "payload": self.args.payload.name(),
            "concurrency": self.args.concurrency,
            "partitions": self.args.partitions, "seconds": secs,
            "requests_per_s": requests as f64 / secs, "records_per_s": records as f64 / secs,
            "mb_per_s": (records as f64 * self.args.record_bytes as f64) / secs / 1e6,
            "latency_us": latency_json(hist),
        });
        if let (Some(out), Some(extra)) = (result.as_object_mut(), self.extra.as_object()) {
            out.extend(extra.clone());
        }
        println!("{result}");
        if !as_json {
            eprintln!(
                "{}: {records} records in {secs:.1} s: {:.0} req/s, p50 {} us, p99 {} us",
                self.system.name(),
                requests as f64 / secs,
                hist.value_at_quantile(0.5),
                hist.value_at_quantile(0.99)
            );
        }
    }
}
