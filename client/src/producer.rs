//! The batching producer: records are gathered per partition into batches, the way an OS merges
//! disk writes or TCP fills a packet, and each batch becomes one produce request.
//!
//! - A batch is sent when it reaches `batch_bytes` or `batch_records`, or when its first record
//!   has waited `linger`.
//! - Partitions: an explicit partition is kept; a keyed record goes to
//!   [`raftlog_proto::partition_for_key`] (the node's `PARTITIONER_KEY_HASH`, so the CLI, this
//!   producer and a Python client all agree); an unkeyed record goes to the topic's current
//!   "sticky" partition, which moves on each time a batch is sent, so unkeyed load fills large
//!   batches and still spreads over the partitions.
//! - Order: each partition has one sender task with at most one request in flight, so records of
//!   one partition are acknowledged at offsets in the order they were sent.
//! - Backpressure: at most `buffer_records` records wait in the producer; `send` waits beyond.
//! - Idempotence (on by default): each partition's sender obtains a producer id and numbers its
//!   records; a batch whose outcome is unknown (timeout, lost connection, leader killed) is sent
//!   again with the same sequence until `delivery_timeout`, and the node answers a batch it
//!   already holds with the original offsets. Every record is therefore stored exactly once, in
//!   order. A sender that gives up on a batch starts over with a new producer id, so a batch
//!   that was lost cannot leave a sequence gap. With `idempotent: false`, only what was certainly
//!   not applied is retried and an unknown outcome fails the batch's records.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use tonic::Code;

use crate::{pb, Client, Error};

/// Batching bounds of a [`Producer`].
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Longest time a record waits for its batch to fill.
    pub linger: Duration,
    /// A batch is sent once it holds this many bytes (keys, values and headers). Keep it below
    /// the nodes' `batch_bytes_max`.
    pub batch_bytes: usize,
    /// A batch is sent once it holds this many records. Keep it at most `batch_records_max`.
    pub batch_records: usize,
    /// Records that may wait in the producer before [`Producer::send`] waits too.
    pub buffer_records: usize,
    /// Retry batches with unknown outcome safely (producer id + sequence numbers).
    pub idempotent: bool,
    /// How long an idempotent batch is retried before its records fail.
    pub delivery_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            batch_bytes: 1024 * 1024,
            batch_records: 5_000,
            buffer_records: 100_000,
            idempotent: true,
            delivery_timeout: Duration::from_secs(60),
        }
    }
}

/// Where a record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: u32,
    pub offset: u64,
}

/// Resolves when the record's batch is committed (or failed).
pub struct DeliveryFuture(oneshot::Receiver<Result<Delivery, Error>>);

impl std::future::Future for DeliveryFuture {
    type Output = Result<Delivery, Error>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                Err(Error::Status(tonic::Status::cancelled(
                    "the producer stopped before this record was sent",
                )))
            })
        })
    }
}

type Reply = oneshot::Sender<Result<Delivery, Error>>;

enum Message {
    Record {
        topic: String,
        partitions: u32,
        partition: Option<u32>,
        record: pb::Record,
        reply: Reply,
    },
    /// Send everything buffered and answer once all of it is acknowledged.
    Flush(oneshot::Sender<()>),
}

/// A batching producer over a [`Client`]. Cheap to clone; clones share the batches.
#[derive(Clone)]
pub struct Producer {
    client: Client,
    tx: mpsc::Sender<Message>,
    partition_counts: Arc<Mutex<HashMap<String, u32>>>,
}

impl Producer {
    pub fn new(client: Client, config: ProducerConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.buffer_records.max(1));
        tokio::spawn(Accumulator::new(client.clone(), config).run(rx));
        Self {
            client,
            tx,
            partition_counts: Arc::default(),
        }
    }

    /// Queues `record` for `topic`, partitioned by key (or sticky when it has none).
    pub async fn send(&self, topic: &str, record: pb::Record) -> Result<DeliveryFuture, Error> {
        let partitions = self.partition_count(topic).await?;
        let partition = record
            .key
            .as_deref()
            .map(|key| raftlog_proto::partition_for_key(key, partitions));
        self.enqueue(topic, partitions, partition, record).await
    }

    /// Queues `record` for one explicit partition of `topic`.
    pub async fn send_to(
        &self,
        topic: &str,
        partition: u32,
        record: pb::Record,
    ) -> Result<DeliveryFuture, Error> {
        let partitions = self.partition_count(topic).await?;
        if partition >= partitions {
            return Err(Error::Status(tonic::Status::invalid_argument(format!(
                "topic '{topic}' has {partitions} partitions; partition {partition} does not exist"
            ))));
        }
        self.enqueue(topic, partitions, Some(partition), record)
            .await
    }

    /// Sends every buffered record and waits until all of them are acknowledged or failed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn enqueue(
        &self,
        topic: &str,
        partitions: u32,
        partition: Option<u32>,
        record: pb::Record,
    ) -> Result<DeliveryFuture, Error> {
        let (reply, rx) = oneshot::channel();
        let message = Message::Record {
            topic: topic.to_string(),
            partitions,
            partition,
            record,
            reply,
        };
        self.tx
            .send(message)
            .await
            .map_err(|_| Error::Status(tonic::Status::cancelled("the producer has stopped")))?;
        Ok(DeliveryFuture(rx))
    }

    /// The topic's partition count, asked once and then cached (it never changes).
    async fn partition_count(&self, topic: &str) -> Result<u32, Error> {
        if let Some(&n) = self
            .partition_counts
            .lock()
            .expect("partition count cache lock")
            .get(topic)
        {
            return Ok(n);
        }
        let info = self.client.describe_topic(topic).await?;
        let n = info.partitions.len().max(1) as u32;
        self.partition_counts
            .lock()
            .expect("partition count cache lock")
            .insert(topic.to_string(), n);
        Ok(n)
    }
}

/// A batch being filled or sent.
struct Batch {
    records: Vec<pb::Record>,
    replies: Vec<Reply>,
    bytes: usize,
    /// When the batch must be sent even if not full.
    deadline: Instant,
}

type PartitionKey = (String, u32);

enum Work {
    Batch(Batch),
    Flush(oneshot::Sender<()>),
}

/// The producer's background task: owns the open batches and one sender per partition.
struct Accumulator {
    client: Client,
    config: ProducerConfig,
    open: HashMap<PartitionKey, Batch>,
    senders: HashMap<PartitionKey, mpsc::Sender<Work>>,
    sticky: HashMap<String, u32>,
}

impl Accumulator {
    fn new(client: Client, config: ProducerConfig) -> Self {
        Self {
            client,
            config,
            open: HashMap::new(),
            senders: HashMap::new(),
            sticky: HashMap::new(),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        loop {
            let next_deadline = self.open.values().map(|b| b.deadline).min();
            let linger_expired = async {
                match next_deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = rx.recv() => match message {
                    Some(Message::Record { topic, partitions, partition, record, reply }) => {
                        self.add(topic, partitions, partition, record, reply).await;
                    }
                    Some(Message::Flush(done)) => self.flush(done).await,
                    None => {
                        // Every handle is gone: send what is left; the senders finish their queues.
                        let keys: Vec<_> = self.open.keys().cloned().collect();
                        for key in keys {
                            self.dispatch(&key).await;
                        }
                        return;
                    }
                },
                _ = linger_expired => {
                    let now = Instant::now();
                    let due: Vec<_> = self
                        .open
                        .iter()
                        .filter(|(_, b)| b.deadline <= now)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in due {
                        self.dispatch(&key).await;
                    }
                }
            }
        }
    }

    async fn add(
        &mut self,
        topic: String,
        partitions: u32,
        partition: Option<u32>,
        record: pb::Record,
        reply: Reply,
    ) {
        let partition = match partition {
            Some(p) => p,
            None => *self
                .sticky
                .entry(topic.clone())
                .or_insert_with(|| rand::random::<u32>() % partitions),
        };
        let key = (topic, partition);
        let size = raftlog_proto::record_size(&record);
        if self
            .open
            .get(&key)
            .is_some_and(|b| b.bytes + size > self.config.batch_bytes)
        {
            self.dispatch(&key).await;
        }
        let linger = self.config.linger;
        let batch = self.open.entry(key.clone()).or_insert_with(|| Batch {
            records: Vec::new(),
            replies: Vec::new(),
            bytes: 0,
            deadline: Instant::now() + linger,
        });
        batch.records.push(record);
        batch.replies.push(reply);
        batch.bytes += size;
        if batch.records.len() >= self.config.batch_records
            || batch.bytes >= self.config.batch_bytes
        {
            self.dispatch(&key).await;
        }
        // Unkeyed records move on to the next partition once their batch has gone.
        if !self.open.contains_key(&key) {
            if let Some(p) = self.sticky.get_mut(&key.0) {
                if *p == key.1 {
                    *p = (*p + 1) % partitions;
                }
            }
        }
    }

    /// Hands the open batch of `key` to its partition's sender (waiting when that sender is
    /// already holding batches: this is the producer's backpressure).
    async fn dispatch(&mut self, key: &PartitionKey) {
        let Some(batch) = self.open.remove(key) else {
            return;
        };
        let sender = self.sender(key);
        if let Err(mpsc::error::SendError(Work::Batch(batch))) =
            sender.send(Work::Batch(batch)).await
        {
            fail_batch(
                batch,
                Error::Status(tonic::Status::internal("partition sender stopped")),
            );
        }
    }

    fn sender(&mut self, key: &PartitionKey) -> mpsc::Sender<Work> {
        self.senders
            .entry(key.clone())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(2);
                let sender = PartitionSender {
                    client: self.client.clone(),
                    topic: key.0.clone(),
                    partition: key.1,
                    idempotent: self.config.idempotent,
                    delivery_timeout: self.config.delivery_timeout,
                    identity: None,
                };
                tokio::spawn(sender.run(rx));
                tx
            })
            .clone()
    }

    async fn flush(&mut self, done: oneshot::Sender<()>) {
        let keys: Vec<_> = self.open.keys().cloned().collect();
        for key in keys {
            self.dispatch(&key).await;
        }
        // Each sender answers after every batch queued before the marker.
        let mut acks = Vec::new();
        for sender in self.senders.values() {
            let (tx, rx) = oneshot::channel();
            if sender.send(Work::Flush(tx)).await.is_ok() {
                acks.push(rx);
            }
        }
        tokio::spawn(async move {
            for ack in acks {
                let _ = ack.await;
            }
            let _ = done.send(());
        });
    }
}

fn fail_batch(batch: Batch, error: Error) {
    for reply in batch.replies {
        let _ = reply.send(Err(error.clone()));
    }
}

/// Sends one partition's batches, one request at a time, in order.
struct PartitionSender {
    client: Client,
    topic: String,
    partition: u32,
    idempotent: bool,
    delivery_timeout: Duration,
    /// (producer id, next sequence) once obtained.
    identity: Option<(u64, u64)>,
}

/// The error a batch fails with when it may or may not have been stored.
fn unknown_outcome(last: Error) -> Error {
    Error::Status(tonic::Status::unknown(format!(
        "outcome unknown: an attempt of this batch may have been stored; last error: {last}"
    )))
}

/// Errors after which an idempotent batch may have been appended or not: safe to resend. This
/// includes INTERNAL: tonic reports a connection torn down mid-request (e.g. "h2 protocol error"
/// while a node shuts down) with that code, and resending an idempotent batch is harmless even
/// when the cause was something else.
fn outcome_unknown(e: &Error) -> bool {
    matches!(
        e.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::Internal
    )
}

impl PartitionSender {
    async fn run(mut self, mut rx: mpsc::Receiver<Work>) {
        while let Some(work) = rx.recv().await {
            let batch = match work {
                Work::Batch(batch) => batch,
                Work::Flush(done) => {
                    let _ = done.send(());
                    continue;
                }
            };
            let result = if self.idempotent {
                self.send_idempotent(batch.records).await
            } else {
                self.client
                    .produce(&self.topic, self.partition, batch.records)
                    .await
            };
            match result {
                Ok(ack) => {
                    for (i, reply) in batch.replies.into_iter().enumerate() {
                        let _ = reply.send(Ok(Delivery {
                            partition: ack.partition,
                            offset: ack.base_offset + i as u64,
                        }));
                    }
                }
                Err(e) => {
                    for reply in batch.replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    async fn send_idempotent(
        &mut self,
        records: Vec<pb::Record>,
    ) -> Result<pb::ProduceResponse, Error> {
        let deadline = Instant::now() + self.delivery_timeout;
        // Set once an attempt ended with an unknown outcome: from then on this batch may be in
        // the log even if a later attempt is refused.
        let mut uncertain = false;
        let mut backoff = Duration::from_millis(50);
        let count = records.len() as u64;
        loop {
            let result = match self.identity {
                None => self.client.init_producer().await.map(|id| {
                    self.identity = Some((id, 0));
                    None
                }),
                Some((producer_id, sequence)) => {
                    let request = pb::ProduceRequest {
                        topic: self.topic.clone(),
                        partition: Some(self.partition),
                        records: records.clone(),
                        producer_id,
                        sequence,
                        ..Default::default()
                    };
                    self.client.produce_request(request).await.map(Some)
                }
            };
            match result {
                Ok(None) => continue, // got a producer id: send the batch
                Ok(Some(ack)) => {
                    if let Some((id, sequence)) = self.identity {
                        self.identity = Some((id, sequence + count));
                    }
                    return Ok(ack);
                }
                Err(e)
                    if e.code() == Code::FailedPrecondition
                        && e.status()
                            .is_some_and(|s| s.message().contains("unknown or has expired")) =>
                {
                    // The id expired (idle too long): this batch was not appended under it now,
                    // but an earlier attempt may have been, so only an untried batch is resent.
                    self.identity = None;
                    if uncertain {
                        return Err(unknown_outcome(e));
                    }
                }
                Err(e) if outcome_unknown(&e) && Instant::now() < deadline => {
                    uncertain = true;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    if uncertain || !e.is_definite() {
                        // Some attempt may have been stored (perhaps later, after this error):
                        // the batch's fate is unknown, and its sequence must never be reused —
                        // a later batch sent with it would be answered as this one's duplicate.
                        self.identity = None;
                        return Err(unknown_outcome(e));
                    }
                    if e.code() == Code::FailedPrecondition {
                        // A sequence the node does not accept: start over under a new id.
                        self.identity = None;
                    }
                    return Err(e);
                }
            }
        }
    }
}
