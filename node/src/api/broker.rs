//! `raftlog.v1.Broker`: topics, produce, fetch, subscribe and consumer groups.
//!
//! Reads are served from this node's applied state. Writes become [`Command`]s proposed through
//! Raft here when this node leads, or are forwarded once to the leader ([`super::forward`]).

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use raftlog_proto::v1::broker_client::BrokerClient;
use raftlog_proto::v1::broker_server::Broker;
use raftlog_proto::v1::*;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::convert::{group_to_pb, record_to_pb, records_from_pb, topic_to_pb};
use super::error::ApiError;
use super::forward::{is_forwarded, leader_unreachable, write_deadline, Forwarder};
use crate::node::NodeContext;
use crate::write::{now_ms, WriteError};
use raftlog_core::limits::{
    FORWARDED_RESPONSE_BYTES_MAX, PEER_MESSAGE_BYTES_MAX, PRODUCE_STREAM_IN_FLIGHT_MAX,
};
use raftlog_core::{Command, CommandResponse, ProducerSequence, Rejection, TopicSettings};

#[derive(Clone)]
pub struct BrokerService {
    ctx: NodeContext,
    /// Connections to the leader, for the writes this node forwards.
    forwarder: Forwarder,
    /// Turns true when the node starts to stop: Subscribe streams and long polls end then, so
    /// the graceful stop does not wait out its drain on them (the client goes on elsewhere).
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Next partition for round-robin produce; per node, so not a global rotation, but each node
    /// spreads its own traffic evenly.
    round_robin: Arc<AtomicU32>,
}

/// A produce request checked and placed on a partition, or one only the leader can place.
enum PreparedProduce {
    Append(PreparedAppend),
    /// The topic is not applied on this node yet (just created?): the leader chooses.
    ToLeader(ProduceRequest),
}

struct PreparedAppend {
    command: Command,
    /// The request as placed (explicit partition), for forwarding to the leader.
    request: ProduceRequest,
    outcome: AppendOutcome,
}

/// What is needed to answer an append once it has applied.
struct AppendOutcome {
    topic: String,
    partition: u32,
    bytes: u64,
}

impl AppendOutcome {
    fn applied(self, response: CommandResponse) -> Result<ProduceResponse, ApiError> {
        match response {
            CommandResponse::Appended {
                base_offset,
                record_count,
                duplicate,
            } => {
                // Counted where the batch is appended (the leader), once.
                if !duplicate {
                    crate::metrics::count_appended(
                        &self.topic,
                        u64::from(record_count),
                        self.bytes,
                    );
                }
                Ok(ProduceResponse {
                    partition: self.partition,
                    base_offset,
                    record_count,
                    duplicate,
                })
            }
            CommandResponse::Rejected(r) => Err(r.into()),
            other => Err(unexpected(other)),
        }
    }
}

impl BrokerService {
    pub fn new(
        ctx: NodeContext,
        forwarder: Forwarder,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            ctx,
            forwarder,
            stopping,
            round_robin: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Validates a produce request, places it on a partition and builds its command.
    fn prepare_produce(
        &self,
        mut req: ProduceRequest,
        forwarded: bool,
    ) -> Result<PreparedProduce, ApiError> {
        self.check_disk_space()?;
        self.validate_produce(&req)?;
        self.check_topic_record_limit(&req)?;
        let partition = match req.partition {
            Some(p) => {
                if req.partitioner != Partitioner::Default as i32 {
                    return Err(ApiError::InvalidArgument(
                        "give either an explicit partition or a partitioner, not both".into(),
                    ));
                }
                p
            }
            None if req.producer_id != 0 || req.expected_end_offset.is_some() => {
                return Err(ApiError::InvalidArgument(
                    "idempotent and conditional produce need an explicit partition".into(),
                ))
            }
            None => match self.ctx.view.topic_settings(&req.topic) {
                Some(settings) => self.choose_partition(&req, settings.partitions)?,
                None if !forwarded
                    && self.ctx.leader().is_some_and(|(id, _)| id != self.ctx.id) =>
                {
                    return Ok(PreparedProduce::ToLeader(req));
                }
                None => return Err(Rejection::UnknownTopic(req.topic).into()),
            },
        };
        req.partition = Some(partition);
        req.partitioner = Partitioner::Default as i32;
        let producer = (req.producer_id != 0).then_some(ProducerSequence {
            producer_id: req.producer_id,
            sequence: req.sequence,
        });
        let command = Command::Append {
            topic: req.topic.clone(),
            partition,
            records: records_from_pb(&req.records),
            proposed_at_ms: now_ms(),
            producer,
            expected_end_offset: req.expected_end_offset,
        };
        let outcome = AppendOutcome {
            topic: req.topic.clone(),
            partition,
            bytes: req
                .records
                .iter()
                .map(raftlog_proto::record_size)
                .sum::<usize>() as u64,
        };
        Ok(PreparedProduce::Append(PreparedAppend {
            command,
            request: req,
            outcome,
        }))
    }

    /// Serves one produce stream: reads requests in order, proposes each as it arrives (so a
    /// partition's batches keep the stream's order) and answers each when it applies.
    async fn serve_produce_stream(
        self,
        mut inbound: tonic::Streaming<ProduceStreamRequest>,
        answers: tokio::sync::mpsc::Sender<Result<ProduceStreamResponse, Status>>,
    ) {
        use futures::future::Either;
        use futures::stream::{FuturesUnordered, StreamExt};
        let metrics = crate::metrics::MessageMetrics::new("ProduceStream");
        let mut in_flight = FuturesUnordered::new();
        let mut reading = true;
        // Why reading stopped, if not the client's end of stream (an undecodable message).
        let mut broken: Option<Status> = None;
        while reading || !in_flight.is_empty() {
            tokio::select! {
                next = inbound.next(), if reading && in_flight.len() < PRODUCE_STREAM_IN_FLIGHT_MAX => {
                    let message = match next {
                        Some(Ok(message)) => message,
                        // Client done, gone or sending garbage: answer what is in flight, then end.
                        Some(Err(status)) => {
                            broken = Some(status);
                            reading = false;
                            continue;
                        }
                        None => {
                            reading = false;
                            continue;
                        }
                    };
                    let request_id = message.request_id;
                    let started = std::time::Instant::now();
                    match self.submit_stream_produce(message.request.unwrap_or_default()).await {
                        Ok(pending) => in_flight.push(Either::Left(async move {
                            (request_id, started, pending.await)
                        })),
                        Err(status) => in_flight.push(Either::Right(std::future::ready(
                            (request_id, started, Err(status)),
                        ))),
                    }
                }
                Some((request_id, started, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                    metrics.observed(
                        outcome.as_ref().err().map_or(tonic::Code::Ok, Status::code),
                        started,
                    );
                    let answer = ProduceStreamResponse {
                        request_id,
                        outcome: Some(match outcome {
                            Ok(ok) => produce_stream_response::Outcome::Ok(ok),
                            Err(status) => produce_stream_response::Outcome::Error(stream_error(&status)),
                        }),
                    };
                    if answers.send(Ok(answer)).await.is_err() {
                        return; // the client went away; its requests still complete
                    }
                }
            }
        }
        if let Some(status) = broken {
            let _ = answers.send(Err(status)).await;
        }
    }

    /// Proposes one request of a produce stream; the returned future answers it.
    async fn submit_stream_produce(
        &self,
        request: ProduceRequest,
    ) -> Result<impl Future<Output = Result<ProduceResponse, Status>> + Send + 'static, Status>
    {
        let append = match self.prepare_produce(request, true)? {
            PreparedProduce::Append(append) => append,
            PreparedProduce::ToLeader(_) => unreachable!("forwarded requests are placed here"),
        };
        // A stream is served by the leader only: a write this node cannot make names the leader
        // and is never forwarded.
        let ctx = self.ctx.clone();
        let refused = move |e: WriteError| -> Status { ApiError::write_failed(ctx.id, e).into() };
        // A stream's messages carry no deadline of their own: each gets the node's cap from its
        // arrival.
        let max = std::time::Duration::from_millis(self.ctx.config.limits.write_timeout_ms_max);
        let pending = self
            .ctx
            .submit_append(append.command, Instant::now() + max)
            .await
            .map_err(&refused)?;
        let outcome = append.outcome;
        Ok(async move {
            match pending.await {
                Ok(response) => outcome.applied(response).map_err(Status::from),
                Err(e) => Err(refused(e)),
            }
        })
    }

    /// By when a write arriving with `request` must be proposed ([`super::forward::write_deadline`]).
    fn write_deadline<T>(&self, request: &Request<T>) -> Instant {
        let max = std::time::Duration::from_millis(self.ctx.config.limits.write_timeout_ms_max);
        write_deadline(request.metadata(), max)
    }

    /// Proposes `command` through Raft, unless `deadline` passes first, when this node leads and
    /// maps the applied outcome with `applied`; otherwise sends the request on to the leader with
    /// `forward`, once (it attaches what is left of the deadline).
    async fn write_or_forward<T, Fut>(
        &self,
        forwarded: bool,
        deadline: Instant,
        command: Command,
        applied: impl FnOnce(CommandResponse) -> Result<T, ApiError>,
        forward: impl FnOnce(BrokerClient<Channel>) -> Fut,
    ) -> Result<Response<T>, Status>
    where
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        match self.ctx.write(command, deadline).await {
            Ok(CommandResponse::Rejected(r)) => Err(ApiError::from(r).into()),
            Ok(response) => Ok(Response::new(applied(response)?)),
            Err(WriteError::NotLeader(leader)) => {
                let (channel, leader) = self.forwarder.route(forwarded, leader, self.ctx.id)?;
                let client = BrokerClient::new(channel)
                    .max_decoding_message_size(FORWARDED_RESPONSE_BYTES_MAX)
                    .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
                forward(client)
                    .await
                    .map_err(|s| leader_unreachable(s, leader))
            }
            Err(e) => Err(ApiError::write_failed(self.ctx.id, e).into()),
        }
    }

    /// The partition a produce request without an explicit one goes to (see `Partitioner` in
    /// broker.proto).
    fn choose_partition(&self, req: &ProduceRequest, partitions: u32) -> Result<u32, ApiError> {
        let by_key = |key: &[u8]| raftlog_proto::partition_for_key(key, partitions);
        let first_key = req.records.first().and_then(|r| r.key.as_deref());
        let partitioner = Partitioner::try_from(req.partitioner).map_err(|_| {
            ApiError::InvalidArgument(format!(
                "unknown partitioner {}; use DEFAULT, KEY_HASH or ROUND_ROBIN",
                req.partitioner
            ))
        })?;
        let use_key = match partitioner {
            Partitioner::KeyHash => true,
            Partitioner::RoundRobin => false,
            Partitioner::Default => first_key.is_some(),
        };
        if !use_key {
            return Ok(self.round_robin.fetch_add(1, Ordering::Relaxed) % partitions);
        }
        let Some(first_key) = first_key else {
            return Err(ApiError::InvalidArgument(
                "PARTITIONER_KEY_HASH needs a key on every record".into(),
            ));
        };
        let partition = by_key(first_key);
        for (i, record) in req.records.iter().enumerate() {
            match record.key.as_deref() {
                Some(key) if by_key(key) == partition => {}
                Some(_) => {
                    return Err(ApiError::InvalidArgument(format!(
                        "record {i}'s key maps to another partition than record 0's; send one \
                         batch per partition (the client library's producer does this)"
                    )))
                }
                None if partitioner == Partitioner::KeyHash => {
                    return Err(ApiError::InvalidArgument(format!(
                        "record {i} has no key; PARTITIONER_KEY_HASH needs a key on every record"
                    )))
                }
                None => {
                    return Err(ApiError::InvalidArgument(format!(
                        "record {i} has no key but record 0 has one; keyed and unkeyed records \
                         go in separate batches"
                    )))
                }
            }
        }
        Ok(partition)
    }

    fn leader_id(&self) -> u64 {
        self.ctx.leader().map_or(0, |(id, _)| id)
    }

    fn validate_topic_name(&self, name: &str) -> Result<(), ApiError> {
        self.validate_name("topic", name)
    }

    /// Topic and group names: 1 to `topic_name_bytes_max` bytes of `[A-Za-z0-9._-]`.
    fn validate_name(&self, what: &str, name: &str) -> Result<(), ApiError> {
        if name == "." || name == ".." {
            // As in Kafka: names end up in paths and URLs of tools, where these mean something else.
            return Err(ApiError::InvalidArgument(format!(
                "'{name}' is not a valid {what} name"
            )));
        }
        let max = self.ctx.config.limits.topic_name_bytes_max;
        if name.is_empty() || name.len() > max {
            return Err(ApiError::InvalidArgument(format!(
                "{what} name must be 1 to {max} bytes long (got {} bytes)",
                name.len()
            )));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        {
            return Err(ApiError::InvalidArgument(format!(
                "{what} name '{}' may contain only ASCII letters, digits, '.', '_' and '-'",
                name.escape_debug()
            )));
        }
        Ok(())
    }

    /// Refuses writes while this node's disk is nearly full (`disk_free_bytes_min`).
    fn check_disk_space(&self) -> Result<(), ApiError> {
        let min = self.ctx.config.limits.disk_free_bytes_min;
        let available = self.ctx.disk.available();
        if min > 0 && available < min {
            return Err(ApiError::ResourceExhausted(format!(
                "node {} has {available} bytes free on its data dir, below disk_free_bytes_min \
                 ({min}); retry later, or free space (retention, deleting topics)",
                self.ctx.id
            )));
        }
        Ok(())
    }

    /// Checks a produce request against the limits that need no state: name, batch shape.
    fn validate_produce(&self, req: &ProduceRequest) -> Result<(), ApiError> {
        let limits = &self.ctx.config.limits;
        self.validate_topic_name(&req.topic)?;
        if req.records.is_empty() {
            return Err(ApiError::InvalidArgument(
                "a produce request needs at least one record".into(),
            ));
        }
        if req.records.len() > limits.batch_records_max {
            return Err(ApiError::InvalidArgument(format!(
                "batch of {} records exceeds batch_records_max ({}); split it",
                req.records.len(),
                limits.batch_records_max
            )));
        }
        let mut batch_bytes = 0;
        for (i, record) in req.records.iter().enumerate() {
            let size = raftlog_proto::record_size(record);
            if size > limits.record_bytes_max {
                return Err(ApiError::InvalidArgument(format!(
                    "record {i} is {size} bytes, over record_bytes_max ({})",
                    limits.record_bytes_max
                )));
            }
            batch_bytes += size;
        }
        if batch_bytes > limits.batch_bytes_max {
            return Err(ApiError::InvalidArgument(format!(
                "batch is {batch_bytes} bytes, over batch_bytes_max ({}); split it",
                limits.batch_bytes_max
            )));
        }
        Ok(())
    }

    /// The topic's own record size limit, when this node knows the topic. (The leader's apply does
    /// not re-check it: a topic's limit never changes after creation in this version.)
    fn check_topic_record_limit(&self, req: &ProduceRequest) -> Result<(), ApiError> {
        let Some(settings) = self.ctx.view.topic_settings(&req.topic) else {
            return Ok(());
        };
        let max = settings.max_record_bytes as usize;
        if max == 0 {
            return Ok(());
        }
        for (i, record) in req.records.iter().enumerate() {
            let size = raftlog_proto::record_size(record);
            if size > max {
                return Err(ApiError::InvalidArgument(format!(
                    "record {i} is {size} bytes, over topic '{}''s max_record_bytes ({max})",
                    req.topic
                )));
            }
        }
        Ok(())
    }
}

/// Records and bytes served to consumers (Fetch and Subscribe), per topic.
fn count_out(topic: &str, records: &[(u64, raftlog_core::Record)]) {
    if records.is_empty() {
        return;
    }
    let bytes: usize = records.iter().map(|(_, r)| r.size_bytes()).sum();
    metrics::counter!(crate::metrics::RECORDS_OUT, "topic" => topic.to_string())
        .increment(records.len() as u64);
    metrics::counter!(crate::metrics::BYTES_OUT, "topic" => topic.to_string())
        .increment(bytes as u64);
}

/// Which test-only bug a node built with the `unsafe-test-bugs` feature plants, from the
/// `RAFTLOG_UNSAFE_BUG` environment variable: `early-ack` or `late-write`.
#[cfg(feature = "unsafe-test-bugs")]
fn unsafe_bug() -> Option<String> {
    std::env::var("RAFTLOG_UNSAFE_BUG").ok()
}

#[cfg(feature = "unsafe-test-bugs")]
impl BrokerService {
    /// TEST-ONLY SAFETY BUG (`early-ack`), to prove the fault-injection harness catches it: the
    /// leader proposes the batch without waiting for it to commit and acknowledges at the offset
    /// it guesses from its applied state. Acks can then name offsets that other batches take, or
    /// records a crash loses.
    async fn unsafe_early_ack(&self, append: &PreparedAppend) -> Option<ProduceResponse> {
        if unsafe_bug().as_deref() != Some("early-ack")
            || self.ctx.raft.current_leader().await != Some(self.ctx.id)
        {
            return None;
        }
        let partition = append.outcome.partition;
        let topic = self.ctx.view.topic(&append.request.topic)?;
        let end_offset = topic.partitions.get(partition as usize)?.end_offset;
        self.ctx
            .raft
            .client_write_ff(append.command.clone(), None)
            .await
            .ok()?;
        Some(ProduceResponse {
            partition,
            base_offset: end_offset,
            record_count: append.request.records.len() as u32,
            duplicate: false,
        })
    }

    /// TEST-ONLY BUG (`late-write`): one produce in 20 is held for 5 s, as a request stuck on its
    /// way would be, then stamped and proposed with its deadline ignored, whether or not its
    /// caller still waits. The harness must report it as a `late-write`.
    async fn unsafe_late_write(
        &self,
        append: &PreparedAppend,
    ) -> Option<Result<ProduceResponse, Status>> {
        use rand::Rng;
        if unsafe_bug().as_deref() != Some("late-write") || !rand::rng().random_ratio(1, 20) {
            return None;
        }
        let (ctx, mut command) = (self.ctx.clone(), append.command.clone());
        let outcome = AppendOutcome {
            topic: append.outcome.topic.clone(),
            ..append.outcome
        };
        // A task of its own: it goes on when the caller gives up and this handler is dropped.
        let late = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            if let Command::Append { proposed_at_ms, .. } = &mut command {
                *proposed_at_ms = now_ms();
            }
            let far = Instant::now() + std::time::Duration::from_secs(60);
            match ctx.write(command, far).await {
                Ok(response) => outcome.applied(response).map_err(Status::from),
                Err(e) => Err(ApiError::write_failed(ctx.id, e).into()),
            }
        });
        Some(
            late.await
                .unwrap_or_else(|e| Err(Status::internal(e.to_string()))),
        )
    }
}

#[tonic::async_trait]
impl Broker for BrokerService {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        crate::metrics::observe("CreateTopic", async move {
            let forwarded = is_forwarded(&request);
            let deadline = self.write_deadline(&request);
            let req = request.into_inner();
            self.validate_topic_name(&req.name)?;
            let limits = &self.ctx.config.limits;
            let config = req.config.unwrap_or_default();
            let partitions = match config.partitions {
                0 => 1,
                n if n > limits.partitions_per_topic_max => {
                    return Err(ApiError::InvalidArgument(format!(
                        "{n} partitions exceeds partitions_per_topic_max ({})",
                        limits.partitions_per_topic_max
                    ))
                    .into())
                }
                n => n,
            };
            let record_limit = limits.record_bytes_max.min(u32::MAX as usize) as u32;
            let max_record_bytes = match config.max_record_bytes {
                0 => record_limit,
                n => n.min(record_limit),
            };
            let command = Command::CreateTopic {
                name: req.name.clone(),
                settings: TopicSettings {
                    partitions,
                    retention_ms: config.retention_ms,
                    retention_bytes: config.retention_bytes,
                    max_record_bytes,
                },
                topics_max: limits.topics_max,
            };
            let (view, leader) = (self.ctx.view.clone(), self.ctx.id);
            let name = req.name.clone();
            self.write_or_forward(
                forwarded,
                deadline,
                command,
                |response| match response {
                    CommandResponse::TopicCreated { .. } => view
                        .topic(&name)
                        .map(|t| topic_to_pb(t, leader))
                        .ok_or_else(|| ApiError::Internal("created topic not applied".into())),
                    other => Err(unexpected(other)),
                },
                |mut client| async move {
                    client
                        .create_topic(Forwarder::forwarded_write(req, deadline)?)
                        .await
                },
            )
            .await
        })
        .await
    }

    async fn list_topics(
        &self,
        _: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        crate::metrics::observe("ListTopics", async move {
            let leader = self.leader_id();
            let topics = self
                .ctx
                .view
                .topics()
                .into_iter()
                .map(|t| topic_to_pb(t, leader))
                .collect();
            Ok(Response::new(ListTopicsResponse { topics }))
        })
        .await
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        crate::metrics::observe("DescribeTopic", async move {
            let name = request.into_inner().name;
            self.validate_topic_name(&name)?;
            let topic = self
                .ctx
                .view
                .topic(&name)
                .ok_or_else(|| ApiError::from(Rejection::UnknownTopic(name)))?;
            Ok(Response::new(topic_to_pb(topic, self.leader_id())))
        })
        .await
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        crate::metrics::observe("DeleteTopic", async move {
            let forwarded = is_forwarded(&request);
            let deadline = self.write_deadline(&request);
            let req = request.into_inner();
            self.validate_topic_name(&req.name)?;
            let command = Command::DeleteTopic {
                name: req.name.clone(),
            };
            self.write_or_forward(
                forwarded,
                deadline,
                command,
                |response| match response {
                    CommandResponse::TopicDeleted => Ok(DeleteTopicResponse {}),
                    other => Err(unexpected(other)),
                },
                |mut client| async move {
                    client
                        .delete_topic(Forwarder::forwarded_write(req, deadline)?)
                        .await
                },
            )
            .await
        })
        .await
    }

    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        crate::metrics::observe("Produce", async move {
            let forwarded = is_forwarded(&request);
            let deadline = self.write_deadline(&request);
            let append = match self.prepare_produce(request.into_inner(), forwarded)? {
                PreparedProduce::Append(append) => append,
                PreparedProduce::ToLeader(req) => {
                    let (channel, leader) =
                        self.forwarder
                            .route(forwarded, self.ctx.leader(), self.ctx.id)?;
                    return BrokerClient::new(channel)
                        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
                        .produce(Forwarder::forwarded_write(req, deadline)?)
                        .await
                        .map_err(|s| leader_unreachable(s, leader));
                }
            };
            #[cfg(feature = "unsafe-test-bugs")]
            if let Some(ack) = self.unsafe_early_ack(&append).await {
                return Ok(Response::new(ack));
            }
            #[cfg(feature = "unsafe-test-bugs")]
            if let Some(late) = self.unsafe_late_write(&append).await {
                return late.map(Response::new);
            }
            let PreparedAppend {
                command,
                request,
                outcome,
            } = append;
            self.write_or_forward(
                forwarded,
                deadline,
                command,
                |response| outcome.applied(response),
                |mut client| async move {
                    client
                        .produce(Forwarder::forwarded_write(request, deadline)?)
                        .await
                },
            )
            .await
        })
        .await
    }

    type ProduceStreamStream =
        tokio_stream::wrappers::ReceiverStream<Result<ProduceStreamResponse, Status>>;

    async fn produce_stream(
        &self,
        request: Request<tonic::Streaming<ProduceStreamRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let inbound = request.into_inner();
        let (answers, stream) = tokio::sync::mpsc::channel(PRODUCE_STREAM_IN_FLIGHT_MAX);
        tokio::spawn(self.clone().serve_produce_stream(inbound, answers));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            stream,
        )))
    }

    async fn alter_topic(
        &self,
        request: Request<AlterTopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        crate::metrics::observe("AlterTopic", async move {
            let forwarded = is_forwarded(&request);
            let deadline = self.write_deadline(&request);
            let req = request.into_inner();
            self.validate_topic_name(&req.name)?;
            if req.retention_ms.is_none() && req.retention_bytes.is_none() {
                return Err(ApiError::InvalidArgument(
                    "nothing to change: set retention_ms and/or retention_bytes".into(),
                )
                .into());
            }
            let command = Command::AlterTopic {
                name: req.name.clone(),
                retention_ms: req.retention_ms,
                retention_bytes: req.retention_bytes,
            };
            let (view, leader, name) = (self.ctx.view.clone(), self.ctx.id, req.name.clone());
            self.write_or_forward(
                forwarded,
                deadline,
                command,
                |response| match response {
                    CommandResponse::TopicAltered => view
                        .topic(&name)
                        .map(|t| topic_to_pb(t, leader))
                        .ok_or_else(|| ApiError::Internal("altered topic not applied".into())),
                    other => Err(unexpected(other)),
                },
                |mut client| async move {
                    client
                        .alter_topic(Forwarder::forwarded_write(req, deadline)?)
                        .await
                },
            )
            .await
        })
        .await
    }

    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        crate::metrics::observe("InitProducer", async move {
            let forwarded = is_forwarded(&request);
            let deadline = self.write_deadline(&request);
            let req = request.into_inner();
            let command = Command::InitProducer {
                now_ms: now_ms(),
                producers_max: self.ctx.config.limits.producers_max,
            };
            self.write_or_forward(
                forwarded,
                deadline,
                command,
                |response| match response {
                    CommandResponse::ProducerInitialized { producer_id } => {
                        Ok(InitProducerResponse { producer_id })
                    }
                    other => Err(unexpected(other)),
                },
                |mut client| async move {
                    client
                        .init_producer(Forwarder::forwarded_write(req, deadline)?)
                        .await
                },
            )
            .await
        })
        .await
    }

    type SubscribeStream =
        tokio_stream::wrappers::ReceiverStream<Result<SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let req = request.into_inner();
        self.validate_topic_name(&req.topic)?;
        let limits = &self.ctx.config.limits;
        let max_records = match req.max_records as usize {
            0 => 1000,
            n => n.min(limits.fetch_records_max),
        };
        let (max_bytes, view) = (limits.fetch_bytes_max, self.ctx.view.clone());
        // Fail fast on a bad topic, partition or offset, before the stream starts.
        view.read(&req.topic, req.partition, req.offset, 0, max_bytes)
            .map_err(ApiError::from)?;
        // The bounded channel is the flow control: when the client reads slowly, `send` waits and
        // this task stops reading the log; at most `subscribe_buffer_messages` are held.
        let (tx, rx) = tokio::sync::mpsc::channel(limits.subscribe_buffer_messages.max(1));
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut applied = view.applied();
            let mut offset = req.offset;
            loop {
                match view
                    .read_blocking(&req.topic, req.partition, offset, max_records, max_bytes)
                    .await
                {
                    Ok(result) if !result.records.is_empty() => {
                        offset = result.records.last().map_or(offset, |(o, _)| o + 1);
                        count_out(&req.topic, &result.records);
                        let records = result
                            .records
                            .into_iter()
                            .map(|(o, r)| record_to_pb(o, r))
                            .collect();
                        let message = SubscribeResponse {
                            records,
                            end_offset: result.end_offset,
                        };
                        if tx.send(Ok(message)).await.is_err() {
                            return; // the client went away
                        }
                    }
                    Ok(_) => {
                        // Caught up: sleep until the next apply, until the client goes away, or
                        // until this node stops (the client resubscribes elsewhere).
                        tokio::select! {
                            changed = applied.changed() => if changed.is_err() { return },
                            _ = tx.closed() => return,
                            _ = stopped(&mut stopping) => {
                                let status = Status::unavailable(format!(
                                    "node shutting down; subscribe on another node from offset \
                                     {offset}"
                                ));
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(ApiError::from(e).into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        crate::metrics::observe("Fetch", async move {
            let req = request.into_inner();
            self.validate_topic_name(&req.topic)?;
            let limits = &self.ctx.config.limits;
            let max_records = match req.max_records as usize {
                0 => limits.fetch_records_max,
                n => n.min(limits.fetch_records_max),
            };
            let max_bytes = match req.max_bytes as usize {
                0 => limits.fetch_bytes_max,
                n => n.min(limits.fetch_bytes_max),
            };
            let wait = std::time::Duration::from_millis(
                (req.max_wait_ms as u64).min(limits.fetch_wait_ms_max),
            );
            let deadline = tokio::time::Instant::now() + wait;
            // Subscribe before reading, so an apply between the read and the wait is not missed.
            let mut applied = self.ctx.view.applied();
            let result = loop {
                let result = self
                    .ctx
                    .view
                    .read_blocking(
                        &req.topic,
                        req.partition,
                        req.offset,
                        max_records,
                        max_bytes,
                    )
                    .await
                    .map_err(ApiError::from)?;
                if !result.records.is_empty() || wait.is_zero() {
                    break result;
                }
                // A long poll ends early, empty, when the node starts to stop.
                let mut stopping = self.stopping.clone();
                tokio::select! {
                    changed = tokio::time::timeout_at(deadline, applied.changed()) => match changed {
                        Ok(Ok(())) => continue,
                        _ => break result,
                    },
                    _ = stopped(&mut stopping) => break result,
                }
            };
            count_out(&req.topic, &result.records);
            Ok(Response::new(FetchResponse {
                records: result
                    .records
                    .into_iter()
                    .map(|(offset, r)| record_to_pb(offset, r))
                    .collect(),
                end_offset: result.end_offset,
                start_offset: result.start_offset,
            }))
        })
        .await
    }

    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        crate::metrics::observe("CommitOffsets", async move {
            let forwarded = is_forwarded(&request);
            let deadline = self.write_deadline(&request);
            let req = request.into_inner();
            self.validate_name("group", &req.group)?;
            self.validate_topic_name(&req.topic)?;
            if req.offsets.is_empty() {
                return Err(ApiError::InvalidArgument(
                    "a commit needs at least one partition offset".into(),
                )
                .into());
            }
            let partitions_max = self.ctx.config.limits.partitions_per_topic_max as usize;
            if req.offsets.len() > partitions_max {
                return Err(ApiError::InvalidArgument(format!(
                    "{} offsets in one commit; a topic has at most {partitions_max} partitions",
                    req.offsets.len()
                ))
                .into());
            }
            let mut seen = std::collections::HashSet::new();
            for o in &req.offsets {
                if !seen.insert(o.partition) {
                    return Err(ApiError::InvalidArgument(format!(
                        "partition {} appears twice in one commit",
                        o.partition
                    ))
                    .into());
                }
            }
            let command = Command::CommitGroupOffsets {
                group: req.group.clone(),
                topic: req.topic.clone(),
                offsets: req
                    .offsets
                    .iter()
                    .map(|o| (o.partition, o.offset))
                    .collect(),
                committed_at_ms: now_ms(),
                groups_max: self.ctx.config.limits.groups_max,
                allow_rewind: req.allow_rewind,
            };
            self.write_or_forward(
                forwarded,
                deadline,
                command,
                |response| match response {
                    CommandResponse::OffsetsCommitted => Ok(CommitOffsetsResponse {}),
                    other => Err(unexpected(other)),
                },
                |mut client| async move {
                    client
                        .commit_offsets(Forwarder::forwarded_write(req, deadline)?)
                        .await
                },
            )
            .await
        })
        .await
    }

    /// Linearizable: served by the leader after a read barrier, so a consumer that resumes right
    /// after a commit (on any node) sees that commit, and committed offsets never appear to go
    /// backwards.
    async fn fetch_offsets(
        &self,
        request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        crate::metrics::observe("FetchOffsets", async move {
            let forwarded = is_forwarded(&request);
            let req = request.into_inner();
            self.validate_name("group", &req.group)?;
            self.validate_topic_name(&req.topic)?;
            match self.ctx.read_barrier().await {
                Ok(()) => {}
                Err(WriteError::NotLeader(leader)) => {
                    let (channel, leader) = self.forwarder.route(forwarded, leader, self.ctx.id)?;
                    return BrokerClient::new(channel)
                        .fetch_offsets(Forwarder::forwarded(req))
                        .await
                        .map_err(|s| leader_unreachable(s, leader));
                }
                Err(e) => return Err(ApiError::write_failed(self.ctx.id, e).into()),
            }
            let topic = self
                .ctx
                .view
                .topic(&req.topic)
                .ok_or_else(|| ApiError::from(Rejection::UnknownTopic(req.topic.clone())))?;
            // A group with no commit yet is not an error here: a new consumer asks exactly this.
            let offsets = self
                .ctx
                .view
                .group_offsets(&req.group)
                .unwrap_or_default()
                .into_iter()
                .filter(|((topic_id, _), _)| *topic_id == topic.id)
                .map(|((_, partition), o)| PartitionOffset {
                    partition,
                    offset: o.offset,
                })
                .collect();
            Ok(Response::new(FetchOffsetsResponse { offsets }))
        })
        .await
    }

    async fn list_groups(
        &self,
        _: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        crate::metrics::observe("ListGroups", async move {
            let topics = self.ctx.view.topics();
            let groups = self
                .ctx
                .view
                .groups()
                .into_iter()
                .map(|(name, offsets)| group_to_pb(name, &offsets, &topics))
                .collect();
            Ok(Response::new(ListGroupsResponse { groups }))
        })
        .await
    }

    async fn describe_group(
        &self,
        request: Request<DescribeGroupRequest>,
    ) -> Result<Response<GroupInfo>, Status> {
        crate::metrics::observe("DescribeGroup", async move {
            let name = request.into_inner().group;
            self.validate_name("group", &name)?;
            let offsets = self
                .ctx
                .view
                .group_offsets(&name)
                .ok_or_else(|| ApiError::from(Rejection::UnknownGroup(name.clone())))?;
            Ok(Response::new(group_to_pb(
                name,
                &offsets,
                &self.ctx.view.topics(),
            )))
        })
        .await
    }

    async fn delete_group(
        &self,
        request: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        crate::metrics::observe("DeleteGroup", async move {
            let forwarded = is_forwarded(&request);
            let deadline = self.write_deadline(&request);
            let req = request.into_inner();
            self.validate_name("group", &req.group)?;
            let command = Command::DeleteGroup {
                group: req.group.clone(),
            };
            self.write_or_forward(
                forwarded,
                deadline,
                command,
                |response| match response {
                    CommandResponse::GroupDeleted => Ok(DeleteGroupResponse {}),
                    other => Err(unexpected(other)),
                },
                |mut client| async move {
                    client
                        .delete_group(Forwarder::forwarded_write(req, deadline)?)
                        .await
                },
            )
            .await
        })
        .await
    }

    /// Served from this node's applied state, as fetches are: a follower may be a moment behind.
    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        crate::metrics::observe("ListOffsets", async move {
            let req = request.into_inner();
            self.validate_topic_name(&req.topic)?;
            let topic = self
                .ctx
                .view
                .topic(&req.topic)
                .ok_or_else(|| ApiError::from(Rejection::UnknownTopic(req.topic.clone())))?;
            let partitions_max = self.ctx.config.limits.partitions_per_topic_max as usize;
            if req.partitions.len() > partitions_max {
                return Err(ApiError::InvalidArgument(format!(
                    "{} partitions asked; a topic has at most {partitions_max}",
                    req.partitions.len()
                ))
                .into());
            }
            let partitions: Vec<u32> = if req.partitions.is_empty() {
                (0..topic.settings.partitions).collect()
            } else {
                req.partitions.clone()
            };
            let mut answer = Vec::with_capacity(partitions.len());
            for partition in partitions {
                let state = topic.partitions.get(partition as usize).ok_or_else(|| {
                    ApiError::from(Rejection::UnknownPartition {
                        topic: req.topic.clone(),
                        partition,
                        partitions: topic.settings.partitions,
                    })
                })?;
                let timestamp_offset = match req.timestamp_ms {
                    None => None,
                    Some(at_ms) => Some(
                        self.ctx
                            .view
                            .offset_for_time_blocking(&req.topic, partition, at_ms)
                            .await
                            .map_err(ApiError::from)?,
                    ),
                };
                answer.push(PartitionOffsets {
                    partition,
                    start_offset: state.start_offset,
                    end_offset: state.end_offset,
                    timestamp_offset,
                });
            }
            Ok(Response::new(ListOffsetsResponse { partitions: answer }))
        })
        .await
    }
}

/// Resolves once the node has started to stop (at once if it has).
async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// A produce stream's form of the status Produce would have answered.
fn stream_error(status: &Status) -> StreamError {
    StreamError {
        code: status.code() as i32,
        message: status.message().to_string(),
        metadata: status
            .metadata()
            .iter()
            .filter_map(|entry| match entry {
                tonic::metadata::KeyAndValueRef::Ascii(key, value) => {
                    Some((key.to_string(), value.to_str().ok()?.to_string()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect(),
    }
}

fn unexpected(response: CommandResponse) -> ApiError {
    ApiError::Internal(format!("unexpected state machine response {response:?}"))
}
