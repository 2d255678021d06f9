//! `raftlog.v1.Queues`: queue groups on topics (create, describe, list, delete), and the workers'
//! Receive (a long poll), ReceiveStream (records pushed up to a worker's in-flight cap) and
//! Settle (ack, release, reject, extend).
//!
//! Receives and settlements are replicated commands proposed by the leader (a follower forwards
//! the call once), stamped with the leader's clock: locks and delivery counts survive a leader
//! change as they are. A receive is proposed only when the leader's applied state says it can
//! hand something out, so idle workers waiting in a long poll cost no log entries; they wake on
//! every apply (a new record, a settlement) and at the moment a delay ends or a lock runs out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raftlog_proto::v1::queues_client::QueuesClient;
use raftlog_proto::v1::queues_server::Queues;
use raftlog_proto::v1::*;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::{stopped, unexpected, BrokerService};
use crate::api::convert::record_to_pb;
use crate::api::error::ApiError;
use crate::api::forward::{is_forwarded, leader_unreachable, Forwarder};
use crate::group::{now_ms, WriteError};
use raftlog_core::limits::{FORWARDED_RESPONSE_BYTES_MAX, PEER_MESSAGE_BYTES_MAX};
use raftlog_core::queue::{
    Delivery, Queue, QueueDefinition, QueueError, QueueSettings, Received, SettleAction, Settlement,
};
use raftlog_core::{Command, CommandResponse, Rejection};

/// Defaults of a queue's settings (a request's 0 or empty).
const LOCK_MS_DEFAULT: u32 = 30_000;
const MAX_DELIVERIES_DEFAULT: u32 = 5;
const IN_FLIGHT_MAX_DEFAULT: u32 = 1000;
const LOOKAHEAD_MAX_DEFAULT: u32 = 1000;
/// Dead letters one Redrive moves when the request does not say.
const REDRIVE_RECORDS_DEFAULT: u32 = 1000;
/// A partition's queue state is one row, rewritten at each settlement of it: the lookahead
/// bounds its size.
const LOOKAHEAD_MAX_BOUND: u32 = 100_000;
/// Bounds of a queue's settings.
const LOCK_MS_MIN: u32 = 100;
const LOCK_MS_MAX: u32 = 12 * 3600 * 1000;
const MAX_DELIVERIES_MAX: u32 = 1000;
const BACKOFF_STEPS_MAX: usize = 32;
const DELAY_MS_MAX: u32 = 7 * 24 * 3600 * 1000;
/// Longest error text a reject carries into the dead letter's header.
const REJECT_ERROR_BYTES_MAX: usize = 4096;
/// Longest worker name.
const WORKER_NAME_BYTES_MAX: usize = 256;
/// A long poll answers this long before the request's deadline, so the answer arrives in time.
const DEADLINE_MARGIN: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct QueuesService {
    broker: BrokerService,
}

impl QueuesService {
    pub fn new(
        ctx: crate::node::NodeContext,
        forwarder: Forwarder,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            broker: BrokerService::new(ctx, forwarder, stopping),
        }
    }

    fn leader_client(&self, channel: Channel) -> QueuesClient<Channel> {
        QueuesClient::new(channel)
            .max_decoding_message_size(FORWARDED_RESPONSE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
    }

    /// Where a call this node cannot answer goes: the leader, once.
    fn route(
        &self,
        forwarded: bool,
        leader: Option<crate::group::Leader>,
    ) -> Result<(QueuesClient<Channel>, crate::group::Leader), Status> {
        let (channel, leader) =
            self.broker
                .forwarder
                .route(forwarded, leader, self.broker.ctx.id)?;
        Ok((self.leader_client(channel), leader))
    }

    /// The settings a create request asks for, defaults filled in, checked against the bounds.
    fn settings(&self, asked: Option<&QueueSettings_>) -> Result<QueueSettings, ApiError> {
        let asked = asked.cloned().unwrap_or_default();
        let pick = |v: u32, default: u32| if v == 0 { default } else { v };
        let settings = QueueSettings {
            lock_ms: pick(asked.lock_ms, LOCK_MS_DEFAULT),
            max_deliveries: pick(asked.max_deliveries, MAX_DELIVERIES_DEFAULT),
            backoff_ms: asked.backoff_ms,
            in_flight_max: pick(asked.in_flight_max, IN_FLIGHT_MAX_DEFAULT),
            worker_in_flight_max: asked.worker_in_flight_max,
            key_ordered: asked.key_ordered,
            lookahead_max: pick(asked.lookahead_max, LOOKAHEAD_MAX_DEFAULT),
        };
        let in_flight_bound = self.broker.ctx.config.limits.queue_in_flight_max;
        let invalid = |m: String| Err(ApiError::InvalidArgument(m));
        if !(LOCK_MS_MIN..=LOCK_MS_MAX).contains(&settings.lock_ms) {
            return invalid(format!(
                "lock_ms must be {LOCK_MS_MIN} to {LOCK_MS_MAX} (got {})",
                settings.lock_ms
            ));
        }
        if settings.max_deliveries > MAX_DELIVERIES_MAX {
            return invalid(format!(
                "max_deliveries must be 1 to {MAX_DELIVERIES_MAX} (got {})",
                settings.max_deliveries
            ));
        }
        if settings.backoff_ms.len() > BACKOFF_STEPS_MAX
            || settings.backoff_ms.iter().any(|&ms| ms > DELAY_MS_MAX)
        {
            return invalid(format!(
                "backoff_ms has at most {BACKOFF_STEPS_MAX} steps of at most {DELAY_MS_MAX} ms"
            ));
        }
        if settings.in_flight_max > in_flight_bound {
            return invalid(format!(
                "in_flight_max must be at most {in_flight_bound} (queue_in_flight_max; got {})",
                settings.in_flight_max
            ));
        }
        if settings.worker_in_flight_max > settings.in_flight_max {
            return invalid(format!(
                "worker_in_flight_max must be at most in_flight_max ({}; got {})",
                settings.in_flight_max, settings.worker_in_flight_max
            ));
        }
        if settings.lookahead_max > LOOKAHEAD_MAX_BOUND {
            return invalid(format!(
                "lookahead_max must be at most {LOOKAHEAD_MAX_BOUND} (got {})",
                settings.lookahead_max
            ));
        }
        Ok(settings)
    }
}

/// The generated settings message (the domain type has the same name).
type QueueSettings_ = raftlog_proto::v1::QueueSettings;

#[tonic::async_trait]
impl Queues for QueuesService {
    async fn create_queue(
        &self,
        request: Request<CreateQueueRequest>,
    ) -> Result<Response<CreateQueueResponse>, Status> {
        let broker = &self.broker;
        let forwarded = is_forwarded(&request);
        let deadline = broker.write_deadline(&request);
        let req = request.into_inner();
        broker.validate_name("queue", &req.queue)?;
        broker.validate_topic_name(&req.topic)?;
        let settings = self.settings(req.settings.as_ref())?;
        let asked = req.settings.clone().unwrap_or_default();
        let dead_letter_topic = match (asked.dead_letters, asked.dead_letter_topic.as_str()) {
            (false, "") => None,
            (false, _) => {
                return Err(ApiError::InvalidArgument(
                    "dead_letter_topic is set but dead_letters is off".into(),
                )
                .into())
            }
            (true, "") => Some(format!("{}.{}.dlq", req.topic, req.queue)),
            (true, name) => Some(name.to_string()),
        };
        if let Some(name) = &dead_letter_topic {
            broker.validate_name("dead-letter topic", name)?;
        }
        let topic = broker
            .group()
            .view
            .topic(&req.topic)
            .ok_or_else(|| ApiError::from(Rejection::UnknownTopic(req.topic.clone())))?;
        let limits = &broker.ctx.config.limits;
        let command = crate::auth::on_behalf_of_caller(Command::CreateQueue {
            queue: req.queue.clone(),
            definition: Box::new(QueueDefinition {
                topic: req.topic.clone(),
                topic_id: topic.id,
                settings,
                dead_letter_topic,
                created_at_ms: now_ms(),
            }),
            queues_max: limits.queues_max,
            topics_max: limits.topics_max,
        });
        let view = broker.group().view.clone();
        let name = req.queue.clone();
        broker
            .write_or_forward_on(
                forwarded,
                deadline,
                command,
                |response| match response {
                    CommandResponse::QueueCreated { created } => Ok(CreateQueueResponse {
                        created,
                        queue: view.queue(&name).map(|q| queue_info(&name, &q, &view)),
                    }),
                    other => Err(unexpected(other)),
                },
                |channel| async move {
                    self.leader_client(channel)
                        .create_queue(Forwarder::forwarded_write(req, deadline)?)
                        .await
                },
            )
            .await
    }

    async fn describe_queue(
        &self,
        request: Request<DescribeQueueRequest>,
    ) -> Result<Response<QueueInfo>, Status> {
        let name = request.into_inner().queue;
        self.broker.validate_name("queue", &name)?;
        let view = &self.broker.group().view;
        let queue = view
            .queue(&name)
            .ok_or_else(|| ApiError::from(Rejection::UnknownQueue(name.clone())))?;
        Ok(Response::new(queue_info(&name, &queue, view)))
    }

    async fn list_queues(
        &self,
        request: Request<ListQueuesRequest>,
    ) -> Result<Response<ListQueuesResponse>, Status> {
        let visible = self
            .broker
            .visible(&request, raftlog_core::auth::ResourceType::Queue);
        let view = &self.broker.group().view;
        let queues = view
            .queues()
            .iter()
            .filter(|(name, _)| visible(name))
            .map(|(name, queue)| queue_info(name, queue, view))
            .collect();
        Ok(Response::new(ListQueuesResponse { queues }))
    }

    async fn delete_queue(
        &self,
        request: Request<DeleteQueueRequest>,
    ) -> Result<Response<DeleteQueueResponse>, Status> {
        let broker = &self.broker;
        let forwarded = is_forwarded(&request);
        let deadline = broker.write_deadline(&request);
        let req = request.into_inner();
        broker.validate_name("queue", &req.queue)?;
        let command = Command::DeleteQueue {
            queue: req.queue.clone(),
        };
        broker
            .write_or_forward_on(
                forwarded,
                deadline,
                command,
                |response| match response {
                    CommandResponse::QueueDeleted => Ok(DeleteQueueResponse {}),
                    other => Err(unexpected(other)),
                },
                |channel| async move {
                    self.leader_client(channel)
                        .delete_queue(Forwarder::forwarded_write(req, deadline)?)
                        .await
                },
            )
            .await
    }

    async fn receive(
        &self,
        request: Request<ReceiveRequest>,
    ) -> Result<Response<ReceiveResponse>, Status> {
        let broker = &self.broker;
        let forwarded = is_forwarded(&request);
        let deadline = broker.write_deadline(&request);
        let req = request.into_inner();
        broker.validate_name("queue", &req.queue)?;
        check_worker_name(&req.worker)?;
        let group = broker.group();
        if !group.is_leader() {
            let (mut client, leader) = self.route(forwarded, group.leader())?;
            return client
                .receive(Forwarder::forwarded_write(req, deadline)?)
                .await
                .map_err(|s| leader_unreachable(s, leader));
        }
        match self.receive_here(&req, deadline).await {
            Err(ReceiveError::Write(WriteError::NotLeader(leader))) => {
                let (mut client, leader) = self.route(forwarded, leader)?;
                client
                    .receive(Forwarder::forwarded_write(req, deadline)?)
                    .await
                    .map_err(|s| leader_unreachable(s, leader))
            }
            Err(ReceiveError::Write(e)) => Err(ApiError::write_failed(broker.ctx.id, e).into()),
            Err(ReceiveError::Api(e)) => Err(e.into()),
            Ok(records) => Ok(Response::new(ReceiveResponse { records })),
        }
    }

    type ReceiveStreamStream = ReceivePushes;

    async fn receive_stream(
        &self,
        request: Request<ReceiveStreamRequest>,
    ) -> Result<Response<Self::ReceiveStreamStream>, Status> {
        let broker = &self.broker;
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        broker.validate_name("queue", &req.queue)?;
        check_worker_name(&req.worker)?;
        let group = broker.group();
        if !group.is_leader() {
            let (mut client, leader) = self.route(forwarded, group.leader())?;
            let pushes = client
                .receive_stream(Forwarder::forwarded(req))
                .await
                .map_err(|s| leader_unreachable(s, leader))?
                .into_inner();
            return Ok(Response::new(Box::pin(pushes)));
        }
        if group.view.queue(&req.queue).is_none() {
            return Err(ApiError::from(Rejection::UnknownQueue(req.queue)).into());
        }
        let (pushes, stream) = tokio::sync::mpsc::channel(RECEIVE_STREAM_BUFFER);
        tokio::spawn(self.clone().serve_receive_stream(req, pushes));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(stream),
        )))
    }

    async fn settle(
        &self,
        request: Request<SettleRequest>,
    ) -> Result<Response<SettleResponse>, Status> {
        let broker = &self.broker;
        let forwarded = is_forwarded(&request);
        let deadline = broker.write_deadline(&request);
        let req = request.into_inner();
        broker.validate_name("queue", &req.queue)?;
        let settlements = self.settlements(&req)?;
        let ids: Vec<String> = req
            .settlements
            .iter()
            .map(|s| s.delivery_id.clone())
            .collect();
        let command = Command::QueueSettle {
            queue: req.queue.clone(),
            settlements,
            now_ms: now_ms(),
        };
        broker
            .write_or_forward_on(
                forwarded,
                deadline,
                command,
                |response| match response {
                    CommandResponse::QueueSettled(outcomes) => Ok(SettleResponse {
                        outcomes: ids
                            .into_iter()
                            .zip(outcomes)
                            .map(|(id, outcome)| settle_outcome(id, outcome))
                            .collect(),
                    }),
                    other => Err(unexpected(other)),
                },
                |channel| async move {
                    self.leader_client(channel)
                        .settle(Forwarder::forwarded_write(req, deadline)?)
                        .await
                },
            )
            .await
    }

    async fn redrive(
        &self,
        request: Request<RedriveRequest>,
    ) -> Result<Response<RedriveResponse>, Status> {
        let broker = &self.broker;
        let forwarded = is_forwarded(&request);
        let deadline = broker.write_deadline(&request);
        let req = request.into_inner();
        broker.validate_name("queue", &req.queue)?;
        let limits = &broker.ctx.config.limits;
        let max_records = match req.max_records {
            0 => REDRIVE_RECORDS_DEFAULT,
            n => n,
        }
        .min(u32::try_from(limits.batch_records_max).unwrap_or(u32::MAX));
        let command = Command::QueueRedrive {
            queue: req.queue.clone(),
            max_records,
            max_bytes: limits.batch_bytes_max as u64,
            now_ms: now_ms(),
        };
        broker
            .write_or_forward_on(
                forwarded,
                deadline,
                command,
                |response| match response {
                    CommandResponse::QueueRedriven { records, remaining } => {
                        Ok(RedriveResponse { records, remaining })
                    }
                    other => Err(unexpected(other)),
                },
                |channel| async move {
                    self.leader_client(channel)
                        .redrive(Forwarder::forwarded_write(req, deadline)?)
                        .await
                },
            )
            .await
    }
}

/// A receive stream's messages, from this node or from the leader it forwards to.
type ReceivePushes =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<ReceiveResponse, Status>> + Send>>;
type ReceivePushSender = tokio::sync::mpsc::Sender<Result<ReceiveResponse, Status>>;

/// Messages of a receive stream queued for the worker: the stream's records are locked when
/// proposed, so little is kept ahead of a slow reader.
const RECEIVE_STREAM_BUFFER: usize = 2;
/// How long a receive stream whose worker holds records waits for enough records to fill half
/// its cap before it takes fewer.
const RECEIVE_STREAM_GATHER: Duration = Duration::from_millis(10);
/// The longest long poll of a receive stream before it looks at the worker's room again.
const RECEIVE_STREAM_POLL: Duration = Duration::from_secs(10);

fn check_worker_name(worker: &str) -> Result<(), ApiError> {
    if worker.len() > WORKER_NAME_BYTES_MAX {
        return Err(ApiError::InvalidArgument(format!(
            "worker names are at most {WORKER_NAME_BYTES_MAX} bytes (got {})",
            worker.len()
        )));
    }
    Ok(())
}

fn worker_or_anonymous(worker: &str) -> String {
    if worker.is_empty() {
        "anonymous".to_string()
    } else {
        worker.to_string()
    }
}

/// Why a receive on the leader did not answer with records.
enum ReceiveError {
    Write(WriteError),
    Api(ApiError),
}

impl From<ApiError> for ReceiveError {
    fn from(e: ApiError) -> Self {
        ReceiveError::Api(e)
    }
}

impl QueuesService {
    /// Serves one receive stream on the leader: whenever the worker holds fewer than its
    /// `max_in_flight` locks, a long poll for the difference; at the cap, a wait for an apply
    /// (a settlement) or the moment the worker's earliest lock runs out. Ends when the worker
    /// goes away or the node stops, and with an error when this node stops leading (naming the
    /// new leader) or the queue is deleted.
    async fn serve_receive_stream(self, req: ReceiveStreamRequest, pushes: ReceivePushSender) {
        let group = self.broker.group();
        let worker = worker_or_anonymous(&req.worker);
        let max_in_flight = req.max_in_flight.max(1);
        let mut applied = group.view.applied();
        let mut stopping = self.broker.stopping.clone();
        let fail = |status: Status| async { pushes.send(Err(status)).await.ok() };
        loop {
            if !group.is_leader() {
                let not_leader = ApiError::not_leader(self.broker.ctx.id, group.leader());
                fail(not_leader.into()).await;
                return;
            }
            let Some(queue) = group.view.queue(&req.queue) else {
                fail(ApiError::from(Rejection::UnknownQueue(req.queue.clone())).into()).await;
                return;
            };
            let now = now_ms();
            let held = queue
                .state
                .lock_deadlines_of(&worker)
                .filter(|&d| d > now)
                .count();
            let held = u32::try_from(held).unwrap_or(u32::MAX);
            let room = max_in_flight.saturating_sub(held);
            if room == 0 {
                // The earliest of the locks that still run (one that ran out is not counted
                // in `held`; waking for it would spin until some receive takes it back).
                let earliest = queue
                    .state
                    .lock_deadlines_of(&worker)
                    .filter(|&d| d > now)
                    .min()
                    .unwrap_or(now);
                let wake = Instant::now() + Duration::from_millis((earliest - now).max(0) as u64);
                tokio::select! {
                    _ = tokio::time::timeout_at(wake.into(), applied.changed()) => {}
                    () = stopped(&mut stopping) => return,
                    () = pushes.closed() => return,
                }
                continue;
            }
            // A worker that holds records is busy: wait a moment for enough records to fill
            // half its cap, so that one receive (one Raft entry) hands out several rather than
            // one per settled record. An idle worker gets the first record at once.
            let want = room.min(max_in_flight.div_ceil(2)) as usize;
            if held > 0 && !self.gather(&req.queue, want, &mut applied, &pushes).await {
                return;
            }
            let poll = ReceiveRequest {
                queue: req.queue.clone(),
                worker: worker.clone(),
                max_records: room,
                wait_ms: RECEIVE_STREAM_POLL.as_millis() as u32,
            };
            let deadline = Instant::now() + RECEIVE_STREAM_POLL + DEADLINE_MARGIN * 2;
            let received = tokio::select! {
                received = self.receive_here(&poll, deadline) => received,
                () = pushes.closed() => return,
            };
            match received {
                Ok(records) if records.is_empty() => {
                    if *stopping.borrow() {
                        return;
                    }
                }
                Ok(records) => {
                    if pushes.send(Ok(ReceiveResponse { records })).await.is_err() {
                        return;
                    }
                }
                Err(ReceiveError::Write(e)) => {
                    fail(ApiError::write_failed(self.broker.ctx.id, e).into()).await;
                    return;
                }
                Err(ReceiveError::Api(e)) => {
                    fail(e.into()).await;
                    return;
                }
            }
        }
    }

    /// Waits, up to [`RECEIVE_STREAM_GATHER`], until the queue has about `want` records to hand
    /// out; false when the stream's worker went away meanwhile.
    async fn gather(
        &self,
        queue: &str,
        want: usize,
        applied: &mut tokio::sync::watch::Receiver<Option<raftlog_core::types::LogId>>,
        pushes: &ReceivePushSender,
    ) -> bool {
        let view = &self.broker.group().view;
        let until = Instant::now() + RECEIVE_STREAM_GATHER;
        loop {
            // A queue gone or a topic deleted: the receive says so.
            let Some(q) = view.queue(queue) else {
                return true;
            };
            let Ok(ends) = partition_ends(&q, view) else {
                return true;
            };
            let settings = &q.definition.settings;
            if Instant::now() >= until || q.state.available(settings, now_ms(), &ends, want) >= want
            {
                return true;
            }
            tokio::select! {
                _ = tokio::time::timeout_at(until.into(), applied.changed()) => {}
                () = pushes.closed() => return false,
            }
        }
    }

    /// The long poll on the leader: proposes a receive whenever the applied state says one can
    /// hand something out, until one does or the wait is over.
    async fn receive_here(
        &self,
        req: &ReceiveRequest,
        deadline: Instant,
    ) -> Result<Vec<QueueRecord>, ReceiveError> {
        let broker = &self.broker;
        let group = broker.group();
        let max = match req.max_records {
            0 => 1,
            n => n.min(broker.ctx.config.limits.queue_receive_records_max),
        };
        let wait_until = (Instant::now() + Duration::from_millis(u64::from(req.wait_ms)))
            .min(deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(deadline));
        // Subscribed before the state is judged: an apply after that wakes the wait.
        let mut applied = group.view.applied();
        let mut stopping = broker.stopping.clone();
        loop {
            let queue = group
                .view
                .queue(&req.queue)
                .ok_or_else(|| ApiError::from(Rejection::UnknownQueue(req.queue.clone())))?;
            let ends = partition_ends(&queue, &group.view)?;
            let now = now_ms();
            let settings = &queue.definition.settings;
            if queue.state.ready(settings, &req.worker, now, &ends) {
                let received = self.propose_receive(req, max, deadline).await?;
                if !received.delivered.is_empty() {
                    return Ok(self.read_delivered(&queue, received).await);
                }
            }
            let wake = queue
                .state
                .next_ready_ms(now)
                .map(|at| Instant::now() + Duration::from_millis((at - now).max(0) as u64))
                .map_or(wait_until, |at| at.min(wait_until));
            if Instant::now() >= wait_until {
                return Ok(Vec::new());
            }
            tokio::select! {
                _ = tokio::time::timeout_at(wake.into(), applied.changed()) => {}
                () = stopped(&mut stopping) => return Ok(Vec::new()),
            }
        }
    }

    async fn propose_receive(
        &self,
        req: &ReceiveRequest,
        max: u32,
        deadline: Instant,
    ) -> Result<Received, ReceiveError> {
        let command = Command::QueueReceive {
            queue: req.queue.clone(),
            worker: worker_or_anonymous(&req.worker),
            max,
            now_ms: now_ms(),
        };
        match self.broker.group().write(command, deadline).await {
            Ok(CommandResponse::QueueReceived(received)) => Ok(*received),
            Ok(CommandResponse::Rejected(r)) => Err(ApiError::from(r).into()),
            Ok(other) => Err(unexpected(other).into()),
            Err(e) => Err(ReceiveError::Write(e)),
        }
    }

    /// The records of the deliveries, read from the applied state: runs of consecutive offsets
    /// of one partition in one read each.
    async fn read_delivered(&self, queue: &Queue, received: Received) -> Vec<QueueRecord> {
        let view = &self.broker.group().view;
        let topic = &queue.definition.topic;
        let mut deliveries = received.delivered;
        deliveries.sort();
        let mut out = Vec::with_capacity(deliveries.len());
        let mut runs: Vec<Vec<Delivery>> = Vec::new();
        for d in deliveries {
            match runs.last_mut() {
                Some(run)
                    if run.last().is_some_and(|last| {
                        last.partition == d.partition && last.offset + 1 == d.offset
                    }) =>
                {
                    run.push(d)
                }
                _ => runs.push(vec![d]),
            }
        }
        let bytes_max = self.broker.ctx.config.limits.fetch_bytes_max;
        for run in runs {
            let first = run[0];
            let read = view
                .read_blocking(topic, first.partition, first.offset, run.len(), bytes_max)
                .await;
            // A record retention deleted meanwhile is left out; its lock runs out and the next
            // receive takes it out of the queue.
            let Ok(read) = read else { continue };
            let mut by_offset: BTreeMap<u64, _> = read.records.into_iter().collect();
            for d in run {
                if let Some(record) = by_offset.remove(&d.offset) {
                    out.push(QueueRecord {
                        delivery_id: d.id(),
                        partition: d.partition,
                        offset: d.offset,
                        delivery_count: d.count,
                        lock_deadline_ms: received.deadline_ms,
                        record: Some(record_to_pb(d.offset, record)),
                    });
                }
            }
        }
        out
    }

    /// A settle request's decisions in domain terms, each checked.
    fn settlements(&self, req: &SettleRequest) -> Result<Vec<Settlement>, ApiError> {
        let max = self.broker.ctx.config.limits.batch_records_max;
        if req.settlements.is_empty() || req.settlements.len() > max {
            return Err(ApiError::InvalidArgument(format!(
                "a settle request carries 1 to {max} settlements (batch_records_max; got {})",
                req.settlements.len()
            )));
        }
        req.settlements
            .iter()
            .map(|s| {
                let delivery =
                    Delivery::parse(&s.delivery_id).ok_or_else(|| {
                        ApiError::InvalidArgument(format!(
                        "'{}' is not a delivery id (partition.offset.count, as Receive gave it)",
                        s.delivery_id.chars().take(64).collect::<String>().escape_debug()
                    ))
                    })?;
                if s.delay_ms > DELAY_MS_MAX {
                    return Err(ApiError::InvalidArgument(format!(
                        "delay_ms is at most {DELAY_MS_MAX} (got {})",
                        s.delay_ms
                    )));
                }
                if s.error.len() > REJECT_ERROR_BYTES_MAX {
                    return Err(ApiError::InvalidArgument(format!(
                        "a reject's error text is at most {REJECT_ERROR_BYTES_MAX} bytes (got {})",
                        s.error.len()
                    )));
                }
                let action = match SettleAction_::try_from(s.action) {
                    Ok(SettleAction_::Ack) => SettleAction::Ack,
                    Ok(SettleAction_::Release) => SettleAction::Release {
                        delay_ms: s.delay_ms,
                    },
                    Ok(SettleAction_::Reject) => SettleAction::Reject {
                        error: s.error.clone(),
                    },
                    Ok(SettleAction_::Extend) => SettleAction::Extend,
                    _ => {
                        return Err(ApiError::InvalidArgument(format!(
                            "settlement of {}: action must be ACK, RELEASE, REJECT or EXTEND (got \
                             {})",
                            s.delivery_id, s.action
                        )))
                    }
                };
                Ok(Settlement { delivery, action })
            })
            .collect()
    }
}

/// The generated action enum (the domain type has the same name).
type SettleAction_ = raftlog_proto::v1::SettleAction;

fn settle_outcome(delivery_id: String, outcome: Result<i64, QueueError>) -> SettleOutcome {
    match outcome {
        Ok(lock_deadline_ms) => SettleOutcome {
            delivery_id,
            ok: true,
            lock_deadline_ms,
            ..Default::default()
        },
        Err(e) => {
            let (code, message) = match e {
                QueueError::UnknownDelivery(_) => (
                    "UNKNOWN_DELIVERY",
                    "no such delivery was made by this queue".to_string(),
                ),
                QueueError::Superseded { current, .. } => (
                    "SUPERSEDED",
                    format!(
                        "the record was delivered again since (delivery {current}): that \
                         delivery decides; nothing changed"
                    ),
                ),
                QueueError::AlreadyDone(_) => (
                    "ALREADY_DONE",
                    "the record is done (acked or dead-lettered); only an ack is accepted again"
                        .to_string(),
                ),
                QueueError::LockExpired(_) => (
                    "LOCK_EXPIRED",
                    "the lock ran out before the extend; the record may be delivered again: ack \
                     it if done (accepted until then), else let it go"
                        .to_string(),
                ),
            };
            SettleOutcome {
                delivery_id,
                ok: false,
                error_code: code.to_string(),
                message,
                lock_deadline_ms: 0,
            }
        }
    }
}

/// The end offset of each partition of the queue's topic, as last applied.
fn partition_ends(
    queue: &Queue,
    view: &raftlog_store::StateView,
) -> Result<BTreeMap<u32, u64>, ApiError> {
    let topic = view
        .topic(&queue.definition.topic)
        .filter(|t| t.id == queue.definition.topic_id)
        .ok_or_else(|| {
            ApiError::FailedPrecondition(format!(
                "topic '{}' of this queue was deleted (or deleted and created again): delete the \
             queue and create it anew",
                queue.definition.topic
            ))
        })?;
    Ok((0u32..)
        .zip(&topic.partitions)
        .map(|(p, state)| (p, state.end_offset))
        .collect())
}

/// A queue as `describe` shows it, judged by this node's clock.
pub fn queue_info(name: &str, queue: &Queue, view: &raftlog_store::StateView) -> QueueInfo {
    let definition = &queue.definition;
    let settings = &definition.settings;
    let counters = &queue.counters;
    let now = now_ms();
    let bounds: BTreeMap<u32, (u64, u64)> = view
        .topic(&definition.topic)
        .filter(|t| t.id == definition.topic_id)
        .map(|t| {
            (0u32..)
                .zip(&t.partitions)
                .map(|(p, s)| (p, (s.start_offset, s.end_offset)))
                .collect()
        })
        .unwrap_or_default();
    let (waiting, delayed) = queue.state.waiting(now);
    let in_flight = queue.state.in_flight();
    let backlog = queue.state.backlog(&bounds);
    let held = queue.state.held();
    let oldest_lock = queue
        .state
        .partitions
        .values()
        .flat_map(|p| p.locked.values())
        .map(|l| l.deadline_ms - i64::from(settings.lock_ms))
        .min();
    QueueInfo {
        queue: name.to_string(),
        topic: definition.topic.clone(),
        settings: Some(QueueSettings_ {
            lock_ms: settings.lock_ms,
            max_deliveries: settings.max_deliveries,
            backoff_ms: settings.backoff_ms.clone(),
            in_flight_max: settings.in_flight_max,
            dead_letters: definition.dead_letter_topic.is_some(),
            dead_letter_topic: definition.dead_letter_topic.clone().unwrap_or_default(),
            worker_in_flight_max: settings.worker_in_flight_max,
            key_ordered: settings.key_ordered,
            lookahead_max: settings.lookahead_max,
        }),
        backlog,
        ready: backlog.saturating_sub((in_flight + delayed + held) as u64),
        in_flight: in_flight as u64,
        waiting: waiting as u64,
        delayed: delayed as u64,
        oldest_unacked_age_ms: oldest_lock.map_or(0, |at| (now - at).max(0) as u64),
        delivered: counters.delivered,
        redelivered: counters.redelivered,
        acked: counters.acked,
        released: counters.released,
        dead_lettered: counters.dead_lettered,
        lock_timeouts: counters.lock_timeouts,
        expired: counters.expired,
        full: in_flight >= settings.in_flight_max as usize,
        created_at_ms: definition.created_at_ms,
        held: held as u64,
        redriven: counters.redriven,
    }
}
