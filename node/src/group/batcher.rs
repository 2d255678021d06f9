//! Group commit: produce requests that arrive together become one Raft entry.
//!
//! Every Raft entry costs a log append, an fsync on each node, an AppendEntries round and an
//! apply call; a broker is fast because it pays that per batch, not per request (as an OS merges
//! disk writes or TCP fills a packet). The batcher keeps at most [`GROUP_COMMIT_ENTRIES_IN_FLIGHT`] entries proposed
//! and not yet applied; requests that arrive meanwhile wait in its queue, and when a slot frees
//! up everything queued (up to the size bounds) is proposed as one `Command::Batch`. Under light
//! load a request goes alone and at once; under heavy load batches grow by themselves. Applying a
//! batch answers each request with its own outcome, exactly as if it had been its own entry.
//!
//! Linger: a batch smaller than the entry before it waits, up to `group_commit_linger_ms`, for
//! more requests until it is as large (see [`gather`]). Clients in a closed loop (each sends its
//! next write when the previous is acknowledged, as a producer with a bounded window does) get
//! their acks together when an entry applies and come back together; without the wait, the first
//! of them would take the free slot alone and the rest the next entry, so entries would hold
//! half of them each, and every entry costs a Raft round and an fsync on each node (1 KiB records,
//! 64 clients: 29 requests per entry without the wait, 64 with it, +15 % throughput and -22 %
//! CPU per request; docs/decisions.md, "Group commit waits for as many requests as the previous
//! entry held"). Under light load entries hold one request, so a lone request never waits; when the load falls, one batch waits the whole linger and the
//! next one's target follows it down. The wait counts in `raftlog_group_commit_queue_seconds`.
//!
//! Order: requests are proposed in the order they reach the batcher, so one producer's
//! sequential requests keep their order.
//!
//! Deadlines: a request whose deadline has passed, or whose caller has gone, by the time its batch
//! is proposed is left out and answered DEADLINE_EXCEEDED (not applied). A write that waited here
//! behind a stalled Raft never lands long after its caller gave up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::write::{client_write_error, WriteError};
use crate::raft::Raft;
use raftlog_core::limits::{GROUP_COMMIT_ENTRIES_IN_FLIGHT, GROUP_COMMIT_QUEUE_MAX};
use raftlog_core::{Command, CommandResponse};

struct Pending {
    command: Command,
    bytes: usize,
    /// When the request reached the batcher (for the queue-wait histogram).
    queued_at: Instant,
    /// Not proposed after this.
    deadline: Instant,
    reply: oneshot::Sender<Result<CommandResponse, WriteError>>,
}

impl Pending {
    /// Whether proposing it now would be too late: its deadline passed, or nobody waits for it.
    fn expired(&self, now: Instant) -> bool {
        now >= self.deadline || self.reply.is_closed()
    }
}

/// Handle to the batching task of one Raft group. Cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Starts the batching task: at most `commands_max` requests and `bytes_max` record bytes per
    /// batch entry (`commands_max` = 1 turns group commit off, for comparison: each request is
    /// then its own entry, proposed at once with no cap on entries in flight). A batch smaller
    /// than the previous entry waits up to `linger` for more (zero: never).
    pub fn start(raft: Raft, commands_max: usize, bytes_max: usize, linger: Duration) -> Self {
        let (tx, rx) = mpsc::channel(GROUP_COMMIT_QUEUE_MAX);
        let bounds = Bounds {
            commands_max: commands_max.max(1),
            bytes_max,
            linger,
        };
        tokio::spawn(run(raft, rx, bounds));
        Self { tx }
    }

    /// Proposes `command` (of `bytes` record bytes) in the next batch, unless `deadline` passes
    /// first, and waits for its outcome.
    pub async fn write(
        &self,
        command: Command,
        bytes: usize,
        deadline: Instant,
    ) -> Result<CommandResponse, WriteError> {
        self.submit(command, bytes, deadline).await.await
    }

    /// Queues `command` for the next batch and returns its outcome to await. Callers that
    /// submit one after another (a produce stream) have their commands proposed in that order.
    pub async fn submit(
        &self,
        command: Command,
        bytes: usize,
        deadline: Instant,
    ) -> impl std::future::Future<Output = Result<CommandResponse, WriteError>> + Send + 'static
    {
        let (reply, outcome) = oneshot::channel();
        let pending = Pending {
            command,
            bytes,
            queued_at: Instant::now(),
            deadline,
            reply,
        };
        let queued = self.tx.send(pending).await.is_ok();
        async move {
            if !queued {
                return Err(stopped());
            }
            outcome.await.unwrap_or_else(|_| Err(stopped()))
        }
    }
}

fn stopped() -> WriteError {
    WriteError::OutcomeUnknown("the node is shutting down; use another node".into())
}

/// What one batch entry may hold, and how long it waits to fill.
#[derive(Clone, Copy)]
struct Bounds {
    commands_max: usize,
    bytes_max: usize,
    linger: Duration,
}

/// A batch being filled: its requests and their record bytes.
struct Gathering {
    batch: Vec<Pending>,
    bytes: usize,
}

impl Gathering {
    fn new(first: Pending) -> Self {
        Self {
            bytes: first.bytes,
            batch: vec![first],
        }
    }

    /// Adds `next` if it fits in `bounds`' bytes; hands it back (to open the next batch) if not.
    fn admit(&mut self, next: Pending, bounds: &Bounds) -> Option<Pending> {
        if self.bytes + next.bytes > bounds.bytes_max {
            return Some(next);
        }
        self.bytes += next.bytes;
        self.batch.push(next);
        None
    }
}

/// Fills `gathering` from `rx`: with everything queued, then, while it holds fewer than `target`
/// requests, with what arrives until `bounds.linger` has passed. Stops at the bounds; returns the
/// request that did not fit, if one came.
async fn gather(
    rx: &mut mpsc::Receiver<Pending>,
    gathering: &mut Gathering,
    target: usize,
    bounds: &Bounds,
) -> Option<Pending> {
    while gathering.batch.len() < bounds.commands_max {
        let Ok(next) = rx.try_recv() else { break };
        if let Some(carry) = gathering.admit(next, bounds) {
            return Some(carry);
        }
    }
    let target = target.min(bounds.commands_max);
    if gathering.batch.len() >= target || bounds.linger.is_zero() {
        return None;
    }
    let deadline = tokio::time::Instant::now() + bounds.linger;
    while gathering.batch.len() < target {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(next)) => {
                if let Some(carry) = gathering.admit(next, bounds) {
                    return Some(carry);
                }
            }
            // The linger is over, or every sender is gone.
            Ok(None) | Err(_) => break,
        }
    }
    None
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>, bounds: Bounds) {
    let slots = Arc::new(Semaphore::new(GROUP_COMMIT_ENTRIES_IN_FLIGHT));
    // A request that did not fit the previous batch opens the next one.
    let mut carry: Option<Pending> = None;
    // How many requests the previous entry held: what a smaller batch lingers for.
    let mut previous_len = 1;
    loop {
        let first = match carry.take() {
            Some(pending) => pending,
            None => match rx.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        // Waiting for a free slot is what lets a batch grow: requests queue up meanwhile. With
        // group commit off every request is its own entry, proposed at once (no slot).
        let slot = if bounds.commands_max > 1 {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            Some(slot)
        } else {
            None
        };
        let mut gathering = Gathering::new(first);
        carry = gather(&mut rx, &mut gathering, previous_len, &bounds).await;
        let batch = drop_expired(gathering.batch, Instant::now());
        if batch.is_empty() {
            continue;
        }
        previous_len = batch.len();
        let proposed_at = Instant::now();
        let queue_wait = metrics::histogram!(crate::metrics::GROUP_COMMIT_QUEUE_SECONDS);
        for pending in &batch {
            queue_wait.record((proposed_at - pending.queued_at).as_secs_f64());
        }
        metrics::histogram!(crate::metrics::GROUP_COMMIT_REQUESTS_PER_ENTRY)
            .record(batch.len() as f64);
        propose(&raft, batch, slot).await;
    }
}

/// Answers the requests of `batch` that are [`Pending::expired`] (not applied) and returns the
/// others, in order.
fn drop_expired(batch: Vec<Pending>, now: Instant) -> Vec<Pending> {
    if !batch.iter().any(|p| p.expired(now)) {
        return batch;
    }
    let (expired, live): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.expired(now));
    metrics::counter!(crate::metrics::WRITES_EXPIRED).increment(expired.len() as u64);
    for pending in expired {
        let _ = pending.reply.send(Err(WriteError::DeadlinePassed));
    }
    live
}

/// Proposes `batch` as one entry (a lone command as itself) and answers each request when it
/// applies. `slot` (if any) is released then.
async fn propose(
    raft: &Raft,
    batch: Vec<Pending>,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let (mut commands, replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    own_record_bytes(&mut commands);
    let single = commands.len() == 1;
    let command = if single {
        commands.into_iter().next().expect("one command")
    } else {
        Command::Batch(commands.into())
    };
    let (responder, receiver) = openraft::impls::ProgressResponder::complete_only();
    let proposed_at = Instant::now();
    match raft.client_write_ff(command, Some(responder)).await {
        Ok(()) => {}
        Err(fatal) => {
            let error =
                WriteError::OutcomeUnknown(format!("Raft has stopped: {fatal}; use another node"));
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
            return;
        }
    }
    tokio::spawn(async move {
        let _slot = slot;
        let applied = receiver.await;
        metrics::histogram!(crate::metrics::GROUP_COMMIT_ENTRY_SECONDS)
            .record(proposed_at.elapsed().as_secs_f64());
        let outcome = match applied {
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(e)) => Err(client_write_error(e)),
            Err(_) => Err(stopped()),
        };
        match outcome {
            Ok(CommandResponse::Batch(responses)) if !single => {
                for (reply, response) in replies.into_iter().zip(responses) {
                    let _ = reply.send(Ok(response));
                }
            }
            Ok(response) => {
                for reply in replies {
                    let _ = reply.send(Ok(response.clone()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    });
}

/// Copies the records of an entry's appends into one allocation of their own, end to end.
///
/// Records decoded from a request are slices of the gRPC receive buffer, which can be far larger
/// than they are (one buffer serves every message of a stream, and grows to the largest). Held on
/// to by the log's cache of recent entries or a pending apply, such slices would keep that whole
/// buffer alive (peak RSS doubled in scripts/bench.sh; docs/decisions.md, "The log keeps its
/// newest entries, decoded and as stored"); one copy here bounds what an entry
/// keeps to its own bytes, so everything downstream may hold records as they are. One allocation
/// per entry rather than per request: at C=64 that is 2 instead of 128.
fn own_record_bytes(commands: &mut [Command]) {
    let records = || {
        commands.iter().flat_map(|command| match command {
            Command::Append { records, .. } => records.as_slice(),
            _ => &[],
        })
    };
    let bytes = records().map(|r| r.size_bytes()).sum();
    let mut owned = bytes::BytesMut::with_capacity(bytes);
    let mut copy = |b: &mut bytes::Bytes| {
        owned.extend_from_slice(b);
        *b = owned.split().freeze();
    };
    for command in commands.iter_mut() {
        let Command::Append { records, .. } = command else {
            continue;
        };
        for record in records {
            if let Some(key) = &mut record.key {
                copy(key);
            }
            copy(&mut record.value);
            for (_, value) in &mut record.headers {
                copy(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry's records keep their contents and live in one allocation of their own, end to
    /// end, outside the buffer their requests were decoded from.
    #[test]
    fn an_entrys_records_own_one_copy_of_their_bytes() {
        use bytes::Bytes;
        use raftlog_core::Record;
        let received = Bytes::from((0..4096).map(|i| i as u8).collect::<Vec<_>>());
        let record = |key: Option<std::ops::Range<usize>>, value: std::ops::Range<usize>| Record {
            key: key.map(|k| received.slice(k)),
            value: received.slice(value),
            headers: vec![("h".into(), received.slice(0..3))],
            timestamp_ms: 5,
        };
        let append = |records| Command::Append {
            topic: "t".into(),
            partition: 0,
            records,
            proposed_at_ms: 1,
            producer: None,
            expected_end_offset: None,
        };
        let sent = vec![
            append(vec![
                record(Some(0..10), 10..1034),
                record(None, 1034..1040),
            ]),
            Command::DeleteTopic { name: "u".into() },
            append(vec![record(None, 2000..3000)]),
        ];
        let mut commands = sent.clone();
        own_record_bytes(&mut commands);
        assert_eq!(commands, sent);

        let mut pieces = Vec::new();
        for command in &commands {
            if let Command::Append { records, .. } = command {
                for r in records {
                    pieces.extend(r.key.clone());
                    pieces.push(r.value.clone());
                    pieces.extend(r.headers.iter().map(|(_, v)| v.clone()));
                }
            }
        }
        for pair in pieces.windows(2) {
            assert_eq!(
                pair[0].as_ptr() as usize + pair[0].len(),
                pair[1].as_ptr() as usize,
                "one allocation, end to end"
            );
        }
        let received_range = received.as_ptr_range();
        assert!(!pieces.iter().any(|b| received_range.contains(&b.as_ptr())));
    }

    fn pending(bytes: usize) -> Pending {
        Pending {
            command: Command::Batch(Vec::new().into()),
            bytes,
            queued_at: Instant::now(),
            deadline: Instant::now() + Duration::from_secs(60),
            reply: oneshot::channel().0,
        }
    }

    /// Requests whose deadline passed, or whose caller is gone, are answered DEADLINE_EXCEEDED
    /// (not applied) and left out of the entry; the others keep their order.
    #[test]
    fn expired_requests_are_answered_and_left_out_of_the_batch() {
        let now = Instant::now();
        let with = |deadline: Instant| {
            let (reply, outcome) = oneshot::channel();
            let pending = Pending {
                command: Command::DeleteTopic {
                    name: format!("{:?}", deadline - now),
                },
                bytes: 1,
                queued_at: now,
                deadline,
                reply,
            };
            (pending, outcome)
        };
        let (live_1, _keep_1) = with(now + Duration::from_secs(5));
        let (late, mut late_outcome) = with(now - Duration::from_millis(1));
        let (gone, gone_outcome) = with(now + Duration::from_secs(5));
        drop(gone_outcome);
        let (live_2, _keep_2) = with(now + Duration::from_secs(6));
        let kept = drop_expired(vec![live_1, late, gone, live_2], now);
        let names: Vec<_> = kept
            .iter()
            .map(|p| match &p.command {
                Command::DeleteTopic { name } => name.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(names, ["5s", "6s"]);
        match late_outcome.try_recv() {
            Ok(Err(WriteError::DeadlinePassed)) => {}
            other => panic!("expected DEADLINE_EXCEEDED, got {other:?}"),
        }
    }

    const BOUNDS: Bounds = Bounds {
        commands_max: 8,
        bytes_max: 100,
        linger: Duration::from_millis(200),
    };

    /// Requests that arrive while a batch lingers join it, up to the previous entry's size; it
    /// does not wait for more than that, nor longer than the linger.
    #[tokio::test]
    async fn a_smaller_batch_waits_for_the_previous_entrys_size_within_the_linger() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.send(pending(1)).await.unwrap();
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                tx.send(pending(1)).await.unwrap();
            }
            tx // kept open: a closed channel would end the linger early
        });

        // Previous entry of 3: the queued one plus two that arrive within the linger, and no
        // waiting for the rest.
        let long = Bounds {
            linger: Duration::from_secs(30),
            ..BOUNDS
        };
        let started = Instant::now();
        let mut gathering = Gathering::new(pending(1));
        assert!(gather(&mut rx, &mut gathering, 3, &long).await.is_none());
        assert_eq!(gathering.batch.len(), 3);
        assert!(started.elapsed() < long.linger, "returned at the third");

        // Previous entry of 8: only the four left arrive before the linger ends.
        let started = Instant::now();
        let mut gathering = Gathering::new(pending(1));
        assert!(gather(&mut rx, &mut gathering, 8, &BOUNDS).await.is_none());
        assert_eq!(gathering.batch.len(), 5);
        assert!(
            started.elapsed() >= BOUNDS.linger,
            "waited the whole linger"
        );
        drop(feeder.await.unwrap());
    }

    /// A batch that is as large as the previous entry, or has no linger, takes what is queued
    /// and goes at once; a request past the byte bound opens the next batch.
    #[tokio::test]
    async fn a_batch_as_large_as_the_previous_entry_goes_at_once_and_stops_at_the_bounds() {
        let (tx, mut rx) = mpsc::channel(16);
        for bytes in [10, 10, 85, 1] {
            tx.send(pending(bytes)).await.unwrap();
        }
        let started = Instant::now();
        let mut gathering = Gathering::new(pending(1));
        let carry = gather(&mut rx, &mut gathering, 8, &BOUNDS).await;
        assert_eq!(
            carry.map(|p| p.bytes),
            Some(85),
            "past the byte bound: the next batch"
        );
        assert_eq!(gathering.batch.len(), 3);

        let mut gathering = Gathering::new(pending(1));
        assert!(gather(&mut rx, &mut gathering, 2, &BOUNDS).await.is_none());
        assert_eq!(gathering.batch.len(), 2, "as large as the previous entry");

        let no_linger = Bounds {
            linger: Duration::ZERO,
            ..BOUNDS
        };
        let mut gathering = Gathering::new(pending(1));
        assert!(gather(&mut rx, &mut gathering, 8, &no_linger)
            .await
            .is_none());
        assert_eq!(gathering.batch.len(), 1);
        assert!(started.elapsed() < BOUNDS.linger, "none of them waited");
    }
}
