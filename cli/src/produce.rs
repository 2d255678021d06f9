//! `raftlog produce`: values from arguments, or records from stdin sent as they arrive.
//!
//! Stdin is read as bytes, one record per delimiter (a newline by default), on a thread of its
//! own; each record goes to the batching producer at once, which sends a batch per partition
//! when it is full or has lingered a few ms. So `tail -f app.log | raftlog produce logs` sends
//! each line within milliseconds, and a burst of lines still travels in few requests. At a
//! terminal, each record's offset is printed as it is acknowledged.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Read};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use futures::stream::{FuturesOrdered, StreamExt};
use raftlog_client::producer::{Delivery, Producer, ProducerConfig};
use raftlog_client::{pb, Client};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::codec::{self, Encoding, Encodings};
use crate::diagnose::{guard, guard_call, CliError};
use crate::output::{self, plural};
use crate::{units, Ctx};

const EXAMPLES: &str = "\
Examples:
  raftlog produce orders first second            # two records, round-robin partition
  raftlog produce orders -k user-42 clicked       # by key hash
  raftlog produce orders -p 0 -H source=cli hi    # to partition 0, with a header
  printf 'user-1:a\\nuser-2:b\\n' | raftlog produce orders --key-separator :
  tail -f app.log | raftlog produce logs          # each line as it is written
  raftlog produce blobs --delimiter '' < photo.jpg          # the whole input, one record
  raftlog produce copy --from-json < <(raftlog consume orders --json)   # copy a topic
  raftlog produce events -p 0 --expect-offset 7 '{\"deposit\":5}'   # only if the end is 7";

#[derive(clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct ProduceArgs {
    /// Topic to append to.
    topic: String,
    /// Values, one record each; without any, records are read from stdin until it ends.
    values: Vec<OsString>,
    /// Partition to append to [default: by key hash for keyed records, else spread in batches].
    #[arg(long, short)]
    partition: Option<u32>,
    /// Key of every record.
    #[arg(long, short, conflicts_with = "key_separator")]
    key: Option<OsString>,
    /// Split each record at the first SEP into key and value (e.g. "user-1:clicked" with ':').
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// Header KEY=VALUE on every record (repeatable).
    #[arg(long = "header", short = 'H', value_name = "KEY=VALUE")]
    headers: Vec<String>,
    /// Conditional append: write all records as one batch only if the partition's end offset is
    /// N (needs --partition). On a mismatch nothing is written and the actual end is printed.
    #[arg(long, value_name = "N", requires = "partition")]
    expect_offset: Option<u64>,
    /// How keys are written: raw bytes, text with \-escapes, hex or base64.
    #[arg(long, value_enum, default_value_t = Encoding::Raw, value_name = "ENC")]
    key_encoding: Encoding,
    /// How values are written: raw bytes, text with \-escapes, hex or base64.
    #[arg(long, value_enum, default_value_t = Encoding::Raw, value_name = "ENC")]
    value_encoding: Encoding,
    /// What ends a record on stdin: one byte (\n, \0, \t, ',') or '' for all of stdin as one
    /// record. With \n, a \r before it is dropped too (Windows line ends).
    #[arg(long, short = 'd', default_value = "\\n", value_name = "BYTE")]
    delimiter: String,
    /// Each record on stdin is a JSON object as `raftlog consume --json` prints it (value or
    /// value_base64, key, headers, timestamp_ms).
    #[arg(long, conflicts_with_all = ["key", "key_separator"])]
    from_json: bool,
    /// How long a record waits for others to share its request, e.g. 5ms, 0s.
    #[arg(long, value_parser = units::duration, default_value = "5ms", value_name = "DURATION")]
    linger: Duration,
}

/// Turns the input into records: keys, headers, encodings.
struct Parser {
    args: ProduceArgs,
    headers: Vec<pb::Header>,
    key: Option<Vec<u8>>,
    /// Lines that had no key separator, for the warnings.
    keyless: u64,
}

const KEYLESS_WARNINGS_MAX: u64 = 3;

impl Parser {
    fn new(args: ProduceArgs) -> anyhow::Result<Self> {
        let headers = args
            .headers
            .iter()
            .map(|h| match h.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok(pb::Header {
                    key: k.to_string(),
                    value: v.as_bytes().to_vec().into(),
                }),
                _ => bail!("--header '{h}': give KEY=VALUE with a non-empty KEY"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let key = args
            .key
            .as_ref()
            .map(|k| args.key_encoding.decode(k.as_bytes()))
            .transpose()
            .context("--key")?;
        Ok(Self {
            args,
            headers,
            key,
            keyless: 0,
        })
    }

    fn encodings(&self) -> Encodings {
        Encodings {
            key: self.args.key_encoding,
            value: self.args.value_encoding,
        }
    }

    /// The record of one input line (`n` counts from 1, for messages).
    fn record(&mut self, n: u64, line: &[u8]) -> anyhow::Result<pb::Record> {
        let where_ = || format!("record {n}");
        if self.args.from_json {
            let mut record =
                codec::record_from_json(line, self.encodings()).with_context(where_)?;
            record.headers.extend(self.headers.iter().cloned());
            return Ok(record);
        }
        let separator = self.args.key_separator.clone();
        let (key, value) = match (self.key.clone(), separator) {
            (Some(key), _) => (Some(key), line),
            (None, Some(sep)) => match find(line, sep.as_bytes()) {
                Some(i) => {
                    let key = self.args.key_encoding.decode(&line[..i]);
                    (
                        Some(key.with_context(|| format!("{}: key", where_()))?),
                        &line[i + sep.len()..],
                    )
                }
                None => {
                    self.keyless += 1;
                    if self.keyless <= KEYLESS_WARNINGS_MAX {
                        eprintln!(
                            "warning: record {n} has no '{sep}' (--key-separator): sent without a key"
                        );
                    }
                    (None, line)
                }
            },
            (None, None) => (None, line),
        };
        Ok(pb::Record {
            key: key.map(Into::into),
            value: self
                .args
                .value_encoding
                .decode(value)
                .with_context(|| format!("{}: value", where_()))?
                .into(),
            headers: self.headers.clone(),
            ..Default::default()
        })
    }

    fn finish(&self) {
        if self.keyless > KEYLESS_WARNINGS_MAX {
            eprintln!(
                "warning: {} records in all had no key separator and were sent without a key",
                self.keyless
            );
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub async fn run(ctx: &Ctx, args: ProduceArgs) -> anyhow::Result<()> {
    let delimiter = delimiter(&args.delimiter)?;
    let values: Vec<Vec<u8>> = args.values.iter().map(|v| v.as_bytes().to_vec()).collect();
    let (topic, linger, expect) = (args.topic.clone(), args.linger, args.expect_offset);
    let partition = args.partition;
    let mut parser = Parser::new(args)?;
    if let Some(expected) = expect {
        // One batch: every record, from the arguments or all of stdin.
        let lines = if values.is_empty() {
            read_all_lines(delimiter)?
        } else {
            values
        };
        let records = lines
            .iter()
            .zip(1..)
            .map(|(line, n)| parser.record(n, line))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let partition = partition.expect("clap: --expect-offset requires --partition");
        return produce_conditional(ctx, &topic, partition, expected, records).await;
    }
    let (tx, rx) = mpsc::channel(1024);
    let interactive = values.is_empty() && std::io::stdin().is_terminal();
    if values.is_empty() {
        if interactive && !ctx.json {
            eprintln!("Type one record per line, Enter sends it; Ctrl-D ends.");
        }
        std::thread::spawn(move || read_stdin(delimiter, tx));
    } else {
        tokio::spawn(async move {
            for (line, n) in values.into_iter().zip(1..) {
                if tx.send((n, Ok(line))).await.is_err() {
                    return;
                }
            }
        });
    }
    let config = ProducerConfig {
        linger,
        delivery_timeout: ctx.timeout.max(Duration::from_secs(5)),
        ..ProducerConfig::default()
    };
    let mut stream = Stream {
        producer: Producer::new(ctx.client.clone(), config),
        topic,
        partition,
        interactive,
        written: BTreeMap::new(),
        pending: Arc::default(),
    };
    let pending = stream.pending.clone();
    let stalled = move || pending.lock().expect("pending lock").front().copied();
    let result = guard(
        &ctx.client,
        ctx.timeout,
        true,
        stalled,
        stream.run(rx, &mut parser),
    )
    .await;
    parser.finish();
    stream.print_summary(ctx.json);
    let unacknowledged = stream.pending.lock().expect("pending lock").len();
    if result.is_err() && unacknowledged > 0 {
        eprintln!(
            "note: {} sent but not acknowledged: each may or may not be stored (a cluster that \
             recovers can still commit them)",
            plural(unacknowledged as u64, "record")
        );
    }
    result
}

type Line = (u64, std::io::Result<Vec<u8>>);

/// The byte that ends a record on stdin; `None` reads all of stdin as one record.
fn delimiter(spec: &str) -> anyhow::Result<Option<u8>> {
    let bytes = codec::unescape(spec.as_bytes()).context("--delimiter")?;
    match bytes.as_slice() {
        [] => Ok(None),
        [b] => Ok(Some(*b)),
        _ => bail!("--delimiter must be one byte (\\n, \\0, ',') or '' for the whole input"),
    }
}

/// Reads stdin on this (blocking) thread and hands over each record as soon as its delimiter is
/// read. A record that does not end in the delimiter (the last one, say) is still a record.
fn read_stdin(delimiter: Option<u8>, tx: mpsc::Sender<Line>) {
    let mut stdin = std::io::stdin().lock();
    let Some(delimiter) = delimiter else {
        let mut all = Vec::new();
        let result = stdin.read_to_end(&mut all).map(|_| all);
        let _ = tx.blocking_send((1, result));
        return;
    };
    for n in 1.. {
        let mut line = Vec::new();
        match stdin.read_until(delimiter, &mut line) {
            Ok(0) => return,
            Ok(_) => {
                if line.last() == Some(&delimiter) {
                    line.pop();
                    // A line ended by "\r\n" (a Windows file) does not keep the '\r'.
                    if delimiter == b'\n' && line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                if tx.blocking_send((n, Ok(line))).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send((n, Err(e)));
                return;
            }
        }
    }
}

fn read_all_lines(delimiter: Option<u8>) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut all = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut all)
        .context("reading stdin")?;
    Ok(match delimiter {
        None => vec![all],
        Some(d) => {
            if all.last() == Some(&d) {
                all.pop();
            }
            if all.is_empty() {
                Vec::new()
            } else {
                all.split(|&b| b == d).map(<[u8]>::to_vec).collect()
            }
        }
    })
}

/// The records on their way: sent to the producer as they come, acknowledged in input order.
struct Stream {
    producer: Producer,
    topic: String,
    partition: Option<u32>,
    interactive: bool,
    /// partition -> (first offset, last offset, count)
    written: BTreeMap<u32, (u64, u64, u64)>,
    /// When each record not yet acknowledged was read, oldest first (for the cluster watch).
    pending: Arc<Mutex<VecDeque<Instant>>>,
}

impl Stream {
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Line>,
        parser: &mut Parser,
    ) -> anyhow::Result<()> {
        let mut deliveries = FuturesOrdered::new();
        let mut input_open = true;
        let mut count = 0u64;
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        while input_open || !deliveries.is_empty() {
            tokio::select! {
                line = rx.recv(), if input_open => match line {
                    Some((n, line)) => {
                        let line = line.with_context(|| format!("reading record {n} from stdin"))?;
                        let record = parser.record(n, &line)?;
                        let delivery = match self.partition {
                            Some(p) => self.producer.send_to(&self.topic, p, record).await?,
                            None => self.producer.send(&self.topic, record).await?,
                        };
                        self.pending.lock().expect("pending lock").push_back(Instant::now());
                        deliveries.push_back(async move { (n, delivery.await) });
                        count += 1;
                    }
                    None => input_open = false,
                },
                Some((n, delivered)) = deliveries.next() => {
                    self.pending.lock().expect("pending lock").pop_front();
                    let d = delivered.with_context(|| {
                        format!("record {n} (and any after it) not acknowledged")
                    })?;
                    self.delivered(d);
                }
                _ = &mut interrupted, if input_open => {
                    input_open = false; // Ctrl-C: stop reading, wait for what was sent
                }
            }
        }
        if count == 0 {
            return Err(CliError::new("InvalidArgument", "nothing to produce")
                .hint("give values as arguments, or records on stdin")
                .into());
        }
        Ok(())
    }

    fn delivered(&mut self, d: Delivery) {
        let e = self
            .written
            .entry(d.partition)
            .or_insert((d.offset, d.offset, 0));
        e.0 = e.0.min(d.offset);
        e.1 = e.1.max(d.offset);
        e.2 += 1;
        if self.interactive {
            eprintln!("-> {}/{} offset {}", self.topic, d.partition, d.offset);
        }
    }

    fn print_summary(&self, as_json: bool) {
        for (p, (first, last, count)) in &self.written {
            if as_json {
                output::json(
                    &json!({"topic": self.topic, "partition": p, "first_offset": first,
                                     "last_offset": last, "record_count": count}),
                );
            } else {
                output::line(&format!(
                    "produced {} to {}/{p} at {}",
                    plural(*count, "record"),
                    self.topic,
                    output::offsets(*first, last + 1)
                ));
            }
        }
    }
}

/// One batch, appended only if the partition ends at `expected`.
async fn produce_conditional(
    ctx: &Ctx,
    topic: &str,
    partition: u32,
    expected: u64,
    records: Vec<pb::Record>,
) -> anyhow::Result<()> {
    let request = pb::ProduceRequest {
        topic: topic.to_string(),
        partition: Some(partition),
        records,
        expected_end_offset: Some(expected),
        ..Default::default()
    };
    let client: &Client = &ctx.client;
    let work = async { anyhow::Ok(client.produce_request(request).await) };
    match guard_call(client, ctx.timeout, true, work).await? {
        Ok(ack) => {
            let last = ack.base_offset + u64::from(ack.record_count) - 1;
            if ctx.json {
                output::json(&json!({"topic": topic, "partition": partition,
                    "first_offset": ack.base_offset, "last_offset": last,
                    "record_count": ack.record_count}));
            } else {
                output::line(&format!(
                    "produced {} to {topic}/{partition} at {}",
                    plural(u64::from(ack.record_count), "record"),
                    output::offsets(ack.base_offset, last + 1)
                ));
            }
            Ok(())
        }
        Err(e) => {
            if let Some(actual) = e.end_offset() {
                if ctx.json {
                    output::json(
                        &json!({"error": "end_offset_mismatch", "expected": expected, "actual": actual}),
                    );
                }
                return Err(CliError::new(
                    "FailedPrecondition",
                    format!("{topic}/{partition} ends at offset {actual}, not {expected}: nothing was written"),
                )
                .hint(format!(
                    "read what was appended since, decide again, and retry with --expect-offset {actual}"
                ))
                .into());
            }
            Err(e.into())
        }
    }
}
