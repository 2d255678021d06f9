//! Queue groups: many workers share a topic's records one by one (docs/api.md, "Queues").
//!
//! - [`Client::create_queue`], [`Client::describe_queue`], ...: one call per RPC of
//!   `raftlog.v1.Queues`.
//! - [`Worker`]: receive → handle → ack / release / reject, and [`Worker::run`], which handles
//!   one job at a time and keeps its lock extended while the handler runs.
//! - [`JobStream`] ([`Worker::stream`]): jobs pushed by the leader as they become available, up
//!   to an in-flight cap, over one stream that follows the leader.
//!
//! - [`deliver_after`], [`deliver_at`]: a record queue workers receive no earlier than a time
//!   (plain readers of the topic see it at once, in offset order).
//!
//! Delivery is at least once: a job whose worker dies, hangs past its lock or loses the answer
//! to an ack is delivered again (with a higher [`Job::delivery_count`]), so handlers should be
//! idempotent or check [`Job::delivery_count`]. An ack that returned `Ok` is final.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use raftlog_proto::v1::queues_client::QueuesClient;
use tonic::{Code, Status};

use crate::{pb, to_status, Client, Connection, Error, MESSAGE_BYTES_MAX};

/// The header that delays a record's delivery to queue workers by this many milliseconds after
/// its timestamp (which the leader stamps when the producer leaves it 0).
pub const DELAY_HEADER: &str = "raftlog-delay-ms";
/// The header that holds a record's delivery to queue workers until this time (ms since the
/// Unix epoch, the leader's clock).
pub const NOT_BEFORE_HEADER: &str = "raftlog-not-before-ms";

/// Queue workers receive `record` no sooner than `delay` after its timestamp.
pub fn deliver_after(record: &mut pb::Record, delay: Duration) {
    let ms = delay.as_millis().min(i64::MAX as u128);
    set_header(record, DELAY_HEADER, ms.to_string());
}

/// Queue workers receive `record` no sooner than `unix_ms` (ms since the Unix epoch).
pub fn deliver_at(record: &mut pb::Record, unix_ms: i64) {
    set_header(record, NOT_BEFORE_HEADER, unix_ms.max(0).to_string());
}

/// The time before which queue workers do not receive `record` (as stored: its timestamp set),
/// from its delivery headers; 0 when it has none.
pub fn not_before_ms(record: &pb::Record) -> i64 {
    let number = |name: &str| {
        record
            .headers
            .iter()
            .filter(|h| h.key == name)
            .filter_map(|h| std::str::from_utf8(&h.value).ok()?.parse::<i64>().ok())
            .max()
    };
    let delayed = number(DELAY_HEADER).map(|d| record.timestamp_ms.saturating_add(d));
    delayed.max(number(NOT_BEFORE_HEADER)).unwrap_or(0)
}

fn set_header(record: &mut pb::Record, name: &str, value: String) {
    record.headers.retain(|h| h.key != name);
    record.headers.push(pb::Header {
        key: name.to_string(),
        value: value.into_bytes().into(),
    });
}

/// One delivery of a record to a worker.
#[derive(Debug, Clone)]
pub struct Job {
    /// Names this delivery in a settlement.
    pub delivery_id: String,
    pub partition: u32,
    pub offset: u64,
    /// How many times the record was delivered, this time included.
    pub delivery_count: u32,
    /// The lock runs until then (the leader's clock, ms since the Unix epoch).
    pub lock_deadline_ms: i64,
    pub record: pb::Record,
}

impl From<pb::QueueRecord> for Job {
    fn from(r: pb::QueueRecord) -> Self {
        Job {
            delivery_id: r.delivery_id,
            partition: r.partition,
            offset: r.offset,
            delivery_count: r.delivery_count,
            lock_deadline_ms: r.lock_deadline_ms,
            record: r.record.unwrap_or_default(),
        }
    }
}

/// A settlement the queue refused (the record was delivered again since, it is done, or the
/// lock ran out before an extend).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{delivery_id}: {code}: {message}")]
pub struct Refused {
    pub delivery_id: String,
    pub code: String,
    pub message: String,
}

/// What a handler decides about a job ([`Worker::run`]).
#[derive(Debug, Clone)]
pub enum Outcome {
    Ack,
    /// Deliver again after this delay (zero: the queue's backoff).
    Release(Duration),
    /// Dead-letter it, with this error text.
    Reject(String),
}

impl Client {
    /// Queues stub for one node.
    pub fn queues_at(&self, addr: &str) -> Result<QueuesClient<Connection>, Error> {
        Ok(QueuesClient::new(self.connection(addr)?)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX))
    }

    /// Creates a queue group on `topic` (or confirms it exists with these settings).
    pub async fn create_queue(
        &self,
        queue: &str,
        topic: &str,
        settings: pb::QueueSettings,
    ) -> Result<pb::CreateQueueResponse, Error> {
        self.with_leader(|addr| {
            let request = pb::CreateQueueRequest {
                queue: queue.to_string(),
                topic: topic.to_string(),
                settings: Some(settings.clone()),
            };
            async move {
                self.queues_at(&addr)
                    .map_err(to_status)?
                    .create_queue(self.deadlined(request))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    pub async fn delete_queue(&self, queue: &str) -> Result<(), Error> {
        self.with_leader(|addr| async move {
            let request = pb::DeleteQueueRequest {
                queue: queue.to_string(),
            };
            self.queues_at(&addr)
                .map_err(to_status)?
                .delete_queue(self.deadlined(request))
                .await
                .map(|_| ())
        })
        .await
    }

    /// Appends up to `max_records` of the queue's dead letters to its topic again (0: the
    /// node's default); the answer says how many went and how many are left. Each dead letter
    /// goes back once, also when a call is retried.
    pub async fn redrive(
        &self,
        queue: &str,
        max_records: u32,
    ) -> Result<pb::RedriveResponse, Error> {
        self.with_leader(|addr| async move {
            let request = pb::RedriveRequest {
                queue: queue.to_string(),
                max_records,
            };
            self.queues_at(&addr)
                .map_err(to_status)?
                .redrive(self.deadlined(request))
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// A queue as the leader's applied state has it (counts judged by the leader's clock).
    pub async fn describe_queue(&self, queue: &str) -> Result<pb::QueueInfo, Error> {
        self.with_leader(|addr| async move {
            let request = pb::DescribeQueueRequest {
                queue: queue.to_string(),
            };
            self.queues_at(&addr)
                .map_err(to_status)?
                .describe_queue(request)
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    pub async fn list_queues(&self) -> Result<Vec<pb::QueueInfo>, Error> {
        self.with_leader(|addr| async move {
            self.queues_at(&addr)
                .map_err(to_status)?
                .list_queues(pb::ListQueuesRequest {})
                .await
                .map(|r| r.into_inner().queues)
        })
        .await
    }

    /// Locks up to `max` records of `queue` for `worker`, waiting up to `wait` for one.
    pub async fn receive(
        &self,
        queue: &str,
        worker: &str,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<Job>, Error> {
        self.with_leader(|addr| {
            let request = pb::ReceiveRequest {
                queue: queue.to_string(),
                worker: worker.to_string(),
                max_records: max,
                wait_ms: wait.as_millis().min(u128::from(u32::MAX)) as u32,
            };
            async move {
                self.queues_at(&addr)
                    .map_err(to_status)?
                    .receive(self.deadlined(request))
                    .await
                    .map(|r| r.into_inner().records)
            }
        })
        .await
        .map(|records| records.into_iter().map(Job::from).collect())
    }

    /// Sends decisions about deliveries; one outcome per settlement, in order.
    pub async fn settle(
        &self,
        queue: &str,
        settlements: Vec<pb::Settlement>,
    ) -> Result<Vec<pb::SettleOutcome>, Error> {
        self.with_leader(|addr| {
            let request = pb::SettleRequest {
                queue: queue.to_string(),
                settlements: settlements.clone(),
            };
            async move {
                self.queues_at(&addr)
                    .map_err(to_status)?
                    .settle(self.deadlined(request))
                    .await
                    .map(|r| r.into_inner().outcomes)
            }
        })
        .await
    }
}

/// A worker of one queue: receives jobs and settles them.
#[derive(Clone)]
pub struct Worker {
    client: Client,
    queue: String,
    name: String,
    /// Longest wait of one receive (a long poll).
    pub wait: Duration,
}

impl Worker {
    pub fn new(client: Client, queue: impl Into<String>, name: impl Into<String>) -> Self {
        Worker {
            client,
            queue: queue.into(),
            name: name.into(),
            wait: Duration::from_secs(5),
        }
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Up to `max` jobs, waiting up to [`Self::wait`] for the first.
    pub async fn receive(&self, max: u32) -> Result<Vec<Job>, Error> {
        self.client
            .receive(&self.queue, &self.name, max, self.wait)
            .await
    }

    pub async fn ack(&self, job: &Job) -> Result<(), Error> {
        self.settle_one(job, pb::SettleAction::Ack, 0, String::new())
            .await
            .map(|_| ())
    }

    /// Gives the job back: delivered again after `delay` (zero: the queue's backoff).
    pub async fn release(&self, job: &Job, delay: Duration) -> Result<(), Error> {
        let delay_ms = delay.as_millis().min(u128::from(u32::MAX)) as u32;
        self.settle_one(job, pb::SettleAction::Release, delay_ms, String::new())
            .await
            .map(|_| ())
    }

    /// Dead-letters the job now, with `error` as the reason.
    pub async fn reject(&self, job: &Job, error: impl Into<String>) -> Result<(), Error> {
        self.settle_one(job, pb::SettleAction::Reject, 0, error.into())
            .await
            .map(|_| ())
    }

    /// Keeps the job's lock for another lock time; returns the new deadline.
    pub async fn extend(&self, job: &Job) -> Result<i64, Error> {
        self.settle_one(job, pb::SettleAction::Extend, 0, String::new())
            .await
    }

    /// Jobs pushed by the leader as they become available, at most `max_in_flight` of them
    /// locked by this worker at once (a job counts until it is settled or its lock runs out).
    /// The worker's name should be unique to the stream: the cap counts locks by name.
    pub fn stream(&self, max_in_flight: u32) -> JobStream {
        JobStream {
            worker: self.clone(),
            max_in_flight,
            stream: None,
            ready: VecDeque::new(),
            broke: false,
        }
    }

    /// Acks many jobs in one call (one Raft entry); the refused ones are returned.
    pub async fn ack_all(&self, jobs: &[Job]) -> Result<Vec<Refused>, Error> {
        let settlements = jobs
            .iter()
            .map(|job| pb::Settlement {
                delivery_id: job.delivery_id.clone(),
                action: pb::SettleAction::Ack as i32,
                ..Default::default()
            })
            .collect();
        let outcomes = self.client.settle(&self.queue, settlements).await?;
        Ok(outcomes
            .into_iter()
            .filter(|o| !o.ok)
            .map(|o| Refused {
                delivery_id: o.delivery_id,
                code: o.error_code,
                message: o.message,
            })
            .collect())
    }

    async fn settle_one(
        &self,
        job: &Job,
        action: pb::SettleAction,
        delay_ms: u32,
        error: String,
    ) -> Result<i64, Error> {
        let settlement = pb::Settlement {
            delivery_id: job.delivery_id.clone(),
            action: action as i32,
            delay_ms,
            error,
        };
        let outcome = self
            .client
            .settle(&self.queue, vec![settlement])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Status(Status::internal("a settle answered no outcome")))?;
        if outcome.ok {
            return Ok(outcome.lock_deadline_ms);
        }
        Err(Error::Status(Status::new(
            Code::FailedPrecondition,
            format!(
                "{}: {}: {}",
                outcome.delivery_id, outcome.error_code, outcome.message
            ),
        )))
    }

    /// Handles jobs one at a time until `handle` is cancelled with the future (or a receive
    /// fails): each job's lock is extended at half its lock time while `handle` runs, then the
    /// job is settled as `handle` decides. A settlement the queue refuses (the job was delivered
    /// again meanwhile) is skipped: the newer delivery decides.
    pub async fn run<F, Fut>(&self, lock: Duration, mut handle: F) -> Result<(), Error>
    where
        F: FnMut(Job) -> Fut,
        Fut: Future<Output = Outcome>,
    {
        loop {
            for job in self.receive(1).await? {
                let outcome = {
                    let work = handle(job.clone());
                    tokio::pin!(work);
                    let mut ticks = tokio::time::interval(lock / 2);
                    ticks.tick().await;
                    loop {
                        tokio::select! {
                            outcome = &mut work => break outcome,
                            _ = ticks.tick() => {
                                // A lost extend is not fatal: the ack is accepted until the
                                // record is delivered again.
                                let _ = self.extend(&job).await;
                            }
                        }
                    }
                };
                let settled = match outcome {
                    Outcome::Ack => self.ack(&job).await,
                    Outcome::Release(delay) => self.release(&job, delay).await,
                    Outcome::Reject(error) => self.reject(&job, error).await,
                };
                match settled {
                    Err(e) if e.code() == Code::FailedPrecondition => {}
                    other => other?,
                }
            }
        }
    }
}

/// Jobs pushed by the leader over a `ReceiveStream` ([`Worker::stream`]). The stream is opened
/// on first use and opened again (on the leader, following its hint) when it breaks: a leader
/// change, a node stopping, a lost connection. Locks held when it breaks stay held; settle them
/// as usual.
pub struct JobStream {
    worker: Worker,
    max_in_flight: u32,
    stream: Option<tonic::Streaming<pb::ReceiveResponse>>,
    ready: VecDeque<Job>,
    /// The last stream broke: wait a moment before opening the next, so a node that keeps
    /// ending streams is not hammered.
    broke: bool,
}

/// Pause before opening a receive stream again after one broke.
const STREAM_REOPEN_PAUSE: Duration = Duration::from_millis(100);

impl JobStream {
    /// The next job, waiting as long as it takes. Fails when no node serves the stream within
    /// the client's retry deadline, or for a refusal that retrying cannot change (an unknown
    /// queue, a missing permission).
    pub async fn next(&mut self) -> Result<Job, Error> {
        loop {
            if let Some(job) = self.ready.pop_front() {
                return Ok(job);
            }
            let Some(stream) = self.stream.as_mut() else {
                if std::mem::take(&mut self.broke) {
                    tokio::time::sleep(STREAM_REOPEN_PAUSE).await;
                }
                self.stream = Some(self.open().await?);
                continue;
            };
            match stream.message().await {
                Ok(Some(response)) => self
                    .ready
                    .extend(response.records.into_iter().map(Job::from)),
                Ok(None) => {
                    self.stream = None;
                    self.broke = true;
                }
                Err(status) if stream_broke(&status) => {
                    self.worker.client.follow_leader_hint(&status);
                    self.stream = None;
                    self.broke = true;
                }
                Err(status) => return Err(Error::Status(status)),
            }
        }
    }

    /// The next jobs: waits for one, then takes up to `max` in all of those already here.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Job>, Error> {
        let first = self.next().await?;
        let more = self.ready.len().min(max.saturating_sub(1));
        Ok(std::iter::once(first)
            .chain(self.ready.drain(..more))
            .collect())
    }

    async fn open(&self) -> Result<tonic::Streaming<pb::ReceiveResponse>, Error> {
        let client = &self.worker.client;
        client
            .with_leader(|addr| {
                let request = pb::ReceiveStreamRequest {
                    queue: self.worker.queue.clone(),
                    worker: self.worker.name.clone(),
                    max_in_flight: self.max_in_flight,
                };
                async move {
                    let connection = client.stream_connection(&addr).map_err(to_status)?;
                    QueuesClient::new(connection)
                        .max_decoding_message_size(MESSAGE_BYTES_MAX)
                        .receive_stream(request)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await
    }
}

/// Whether a receive stream ended for a reason that opening it again can cure.
fn stream_broke(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted | Code::Internal
    )
}
