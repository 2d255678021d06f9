//! Produce: a unary `Produce`, the pipelined `ProduceStream` and `InitProducer` for idempotent
//! producers. A request is checked against the limits, placed on a partition (explicit, by key
//! hash or round-robin) and turned into a `Command::Append` for the group-commit batcher.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Instant;

use raftlog_proto::v1::broker_client::BrokerClient;
use raftlog_proto::v1::*;
use tonic::{Request, Response, Status};

use super::{unexpected, BrokerService};
use crate::api::convert::records_from_pb;
use crate::api::error::ApiError;
use crate::api::forward::{is_forwarded, leader_unreachable, Forwarder};
use crate::group::{now_ms, WriteError};
use raftlog_core::limits::{PEER_MESSAGE_BYTES_MAX, PRODUCE_STREAM_IN_FLIGHT_MAX};
use raftlog_core::{Command, CommandResponse, ProducerSequence, Rejection};

/// Who a produce stream's messages come from (`None`: auth off), for checking each one.
pub(super) struct StreamCheck {
    caller: Option<crate::auth::Caller>,
    peer: Option<std::net::SocketAddr>,
}

/// A produce request checked and placed on a partition, or one only the leader can place.
enum PreparedProduce {
    Append(PreparedAppend),
    /// The topic is not applied on this node yet (just created?): the leader chooses.
    ToLeader(ProduceRequest),
}

pub(super) struct PreparedAppend {
    pub(super) command: Command,
    /// The request as placed (explicit partition), for forwarding to the leader.
    pub(super) request: ProduceRequest,
    pub(super) outcome: AppendOutcome,
}

/// What is needed to answer an append once it has applied.
pub(super) struct AppendOutcome {
    pub(super) topic: String,
    pub(super) partition: u32,
    pub(super) bytes: u64,
}

impl AppendOutcome {
    pub(super) fn applied(self, response: CommandResponse) -> Result<ProduceResponse, ApiError> {
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
            None => match self.group().view.topic_settings(&req.topic) {
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
        check: StreamCheck,
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
                    let request = message.request.unwrap_or_default();
                    let submitted = match self.check_stream_message(&check, &request) {
                        Ok(()) => self.submit_stream_produce(request).await,
                        Err(denied) => Err(denied),
                    };
                    match submitted {
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

    /// The `PerMessage` rule of ProduceStream (`crate::auth::rules`): each message needs write
    /// on the topic it names, and counts against the caller's quota; a refused one is answered
    /// with PERMISSION_DENIED (or RESOURCE_EXHAUSTED) and the stream goes on.
    fn check_stream_message(
        &self,
        check: &StreamCheck,
        request: &ProduceRequest,
    ) -> Result<(), Status> {
        let Some(caller) = &check.caller else {
            return Ok(());
        };
        let Some(crate::auth::rules::Rule::PerMessage(resource, operation)) =
            crate::auth::rules::rule("/raftlog.v1.Broker/ProduceStream")
        else {
            unreachable!("ProduceStream's rule is PerMessage");
        };
        self.ctx.auth.check(
            caller,
            resource,
            &request.topic,
            operation,
            "Broker/ProduceStream",
            check.peer,
        )?;
        // Each message is a request and its records' bytes are produced, as for Produce.
        use crate::auth::quota::Rate;
        let bytes: usize = request.records.iter().map(raftlog_proto::record_size).sum();
        self.ctx.auth.charge(caller, Rate::Requests, 1)?;
        self.ctx
            .auth
            .charge(caller, Rate::ProduceBytes, bytes as u64)
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
        let node_id = self.ctx.id;
        let refused = move |e: WriteError| -> Status { ApiError::write_failed(node_id, e).into() };
        // A stream's messages carry no deadline of their own: each gets the node's cap from its
        // arrival.
        let max = std::time::Duration::from_millis(self.ctx.config.limits.write_timeout_ms_max);
        let pending = self
            .group()
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
            check_delivery_headers(i, record)?;
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
        let Some(settings) = self.group().view.topic_settings(&req.topic) else {
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

/// A record's queue delivery headers (`raftlog-not-before-ms`, `raftlog-delay-ms`) must be
/// non-negative decimal milliseconds: a queue reads them at apply, and a typo must not turn into
/// a record delivered at once.
fn check_delivery_headers(i: usize, record: &Record) -> Result<(), ApiError> {
    use raftlog_core::queue::{delivery_header, parse_header_ms};
    for header in &record.headers {
        let name = header.key.as_str();
        if (name == delivery_header::NOT_BEFORE_MS || name == delivery_header::DELAY_MS)
            && parse_header_ms(&header.value).is_none()
        {
            return Err(ApiError::InvalidArgument(format!(
                "record {i}: header {name} must be a non-negative number of milliseconds"
            )));
        }
    }
    Ok(())
}

pub(super) async fn produce(
    broker: &BrokerService,
    request: Request<ProduceRequest>,
) -> Result<Response<ProduceResponse>, Status> {
    let forwarded = is_forwarded(&request);
    let deadline = broker.write_deadline(&request);
    let append = match broker.prepare_produce(request.into_inner(), forwarded)? {
        PreparedProduce::Append(append) => append,
        PreparedProduce::ToLeader(req) => {
            let (channel, leader) =
                broker
                    .forwarder
                    .route(forwarded, broker.ctx.leader(), broker.ctx.id)?;
            return BrokerClient::new(channel)
                .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
                .produce(Forwarder::forwarded_write(req, deadline)?)
                .await
                .map_err(|s| leader_unreachable(s, leader));
        }
    };
    #[cfg(feature = "unsafe-test-bugs")]
    if let Some(ack) = broker.unsafe_early_ack(&append).await {
        return Ok(Response::new(ack));
    }
    #[cfg(feature = "unsafe-test-bugs")]
    if let Some(late) = broker.unsafe_late_write(&append).await {
        return late.map(Response::new);
    }
    let PreparedAppend {
        command,
        request,
        outcome,
    } = append;
    broker
        .write_or_forward(
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
}

pub(super) async fn produce_stream(
    broker: &BrokerService,
    request: Request<tonic::Streaming<ProduceStreamRequest>>,
) -> Result<Response<super::ProduceAnswers>, Status> {
    let caller = crate::auth::caller_of(&request).cloned();
    let peer = request.remote_addr();
    let inbound = request.into_inner();
    let (answers, stream) = tokio::sync::mpsc::channel(PRODUCE_STREAM_IN_FLIGHT_MAX);
    let check = StreamCheck { caller, peer };
    tokio::spawn(broker.clone().serve_produce_stream(inbound, answers, check));
    Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
        stream,
    )))
}

pub(super) async fn init_producer(
    broker: &BrokerService,
    request: Request<InitProducerRequest>,
) -> Result<Response<InitProducerResponse>, Status> {
    let forwarded = is_forwarded(&request);
    let deadline = broker.write_deadline(&request);
    let req = request.into_inner();
    let command = Command::InitProducer {
        now_ms: now_ms(),
        producers_max: broker.ctx.config.limits.producers_max,
    };
    broker
        .write_or_forward(
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
