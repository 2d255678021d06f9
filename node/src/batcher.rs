//! Group commit: produce requests that arrive together become one Raft entry.
//!
//! Every Raft entry costs a log append, an fsync on each node, an AppendEntries round and an
//! apply call; a broker is fast because it pays that per batch, not per request (as an OS merges
//! disk writes or TCP fills a packet). The batcher keeps at most [`IN_FLIGHT`] entries proposed
//! and not yet applied; requests that arrive meanwhile wait in its queue, and when a slot frees
//! up everything queued (up to the size bounds) is proposed as one `Command::Batch`. Under light
//! load a request goes alone and at once; under heavy load batches grow by themselves. Applying a
//! batch answers each request with its own outcome, exactly as if it had been its own entry.
//!
//! Order: requests are proposed in the order they reach the batcher, so one producer's
//! sequential requests keep their order.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::api::error::ApiError;
use crate::command::{Command, CommandResponse};
use crate::node::{client_write_error, WriteError};
use crate::raft::types::Raft;

/// Entries proposed but not yet applied. 2 lets one batch replicate while the next one fills.
pub const IN_FLIGHT: usize = 2;

struct Pending {
    command: Command,
    bytes: usize,
    /// When the request reached the batcher (for the queue-wait histogram).
    queued_at: Instant,
    reply: oneshot::Sender<Result<CommandResponse, WriteError>>,
}

/// Handle to the batching task of one Raft group. Cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Starts the batching task: at most `commands_max` requests and `bytes_max` record bytes per
    /// batch entry (`commands_max` = 1 turns group commit off, for comparison: each request is
    /// then its own entry, proposed at once with no cap on entries in flight).
    pub fn start(raft: Raft, commands_max: usize, bytes_max: usize) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(raft, rx, commands_max.max(1), bytes_max));
        Self { tx }
    }

    /// Proposes `command` (of `bytes` record bytes) in the next batch and waits for its outcome.
    pub async fn write(
        &self,
        command: Command,
        bytes: usize,
    ) -> Result<CommandResponse, WriteError> {
        self.submit(command, bytes).await.await
    }

    /// Queues `command` for the next batch and returns its outcome to await. Callers that
    /// submit one after another (a produce stream) have their commands proposed in that order.
    pub async fn submit(
        &self,
        command: Command,
        bytes: usize,
    ) -> impl std::future::Future<Output = Result<CommandResponse, WriteError>> + Send + 'static
    {
        let (reply, outcome) = oneshot::channel();
        let pending = Pending {
            command,
            bytes,
            queued_at: Instant::now(),
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
    WriteError::Failed(ApiError::Unavailable {
        message: "the node is shutting down; use another node".into(),
        leader: None,
        not_applied: false,
    })
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>, commands_max: usize, bytes_max: usize) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // A request that did not fit the previous batch opens the next one.
    let mut carry: Option<Pending> = None;
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
        let slot = if commands_max > 1 {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            Some(slot)
        } else {
            None
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < commands_max {
            match rx.try_recv() {
                Ok(next) if bytes + next.bytes <= bytes_max => {
                    bytes += next.bytes;
                    batch.push(next);
                }
                Ok(next) => {
                    carry = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
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

/// Proposes `batch` as one entry (a lone command as itself) and answers each request when it
/// applies. `slot` (if any) is released then.
async fn propose(
    raft: &Raft,
    batch: Vec<Pending>,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let (commands, replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let single = commands.len() == 1;
    let command = if single {
        commands.into_iter().next().expect("one command")
    } else {
        Command::Batch(commands)
    };
    let (responder, receiver) = openraft::impls::ProgressResponder::complete_only();
    let proposed_at = Instant::now();
    match raft.client_write_ff(command, Some(responder)).await {
        Ok(()) => {}
        Err(fatal) => {
            let error = WriteError::Failed(ApiError::Unavailable {
                message: format!("Raft has stopped: {fatal}; use another node"),
                leader: None,
                not_applied: false,
            });
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
