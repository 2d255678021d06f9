//! `raftlog.v1.Broker`: topics, produce and fetch.

use std::time::{SystemTime, UNIX_EPOCH};

use raftlog_proto::v1::broker_client::BrokerClient;
use raftlog_proto::v1::broker_server::Broker;
use raftlog_proto::v1::*;
use tonic::{Request, Response, Status};

use super::convert::{record_from_pb, record_to_pb, topic_to_pb};
use super::error::ApiError;
use super::forward::{is_forwarded, leader_unreachable, Forwarder};
use crate::command::{Command, CommandResponse, TopicSettings};
use crate::node::{NodeContext, WriteError};

pub struct BrokerService {
    ctx: NodeContext,
}

impl BrokerService {
    pub fn new(ctx: NodeContext) -> Self {
        Self { ctx }
    }

    fn leader_id(&self) -> u64 {
        self.ctx.leader().map_or(0, |(id, _)| id)
    }

    fn validate_topic_name(&self, name: &str) -> Result<(), ApiError> {
        let max = self.ctx.config.limits.topic_name_bytes_max;
        if name.is_empty() || name.len() > max {
            return Err(ApiError::InvalidArgument(format!(
                "topic name must be 1 to {max} bytes long (got {} bytes)",
                name.len()
            )));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        {
            return Err(ApiError::InvalidArgument(format!(
                "topic name '{}' may contain only ASCII letters, digits, '.', '_' and '-'",
                name.escape_debug()
            )));
        }
        Ok(())
    }

    fn produce_command(&self, req: &ProduceRequest) -> Result<Command, ApiError> {
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
        let records: Vec<_> = req.records.iter().cloned().map(record_from_pb).collect();
        let mut batch_bytes = 0;
        for (i, record) in records.iter().enumerate() {
            let size = record.size_bytes();
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
        let proposed_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Ok(Command::Append {
            topic: req.topic.clone(),
            partition: req.partition,
            records,
            proposed_at_ms,
        })
    }
}

#[cfg(feature = "unsafe-early-ack")]
impl BrokerService {
    /// TEST-ONLY SAFETY BUG, compiled only with the `unsafe-early-ack` feature, to prove the
    /// fault-injection harness catches it: the leader proposes the batch without waiting for it
    /// to commit and acknowledges at the offset it guesses from its applied state. Acks can then
    /// name offsets that other batches take, or records a crash loses.
    async fn unsafe_early_ack(
        &self,
        req: &ProduceRequest,
        command: &Command,
    ) -> Option<ProduceResponse> {
        if self.ctx.raft.current_leader().await != Some(self.ctx.id) {
            return None;
        }
        let topic = self.ctx.view.topic(&req.topic)?;
        let end_offset = topic.partitions.get(req.partition as usize)?.end_offset;
        self.ctx.raft.client_write_ff(command.clone()).await.ok()?;
        Some(ProduceResponse {
            partition: req.partition,
            base_offset: end_offset,
            record_count: req.records.len() as u32,
        })
    }
}

fn unexpected(response: CommandResponse) -> Status {
    ApiError::Internal(format!("unexpected state machine response {response:?}")).into()
}

#[tonic::async_trait]
impl Broker for BrokerService {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        self.validate_topic_name(&req.name)?;
        let limits = &self.ctx.config.limits;
        let partitions = match req.config.as_ref().map_or(0, |c| c.partitions) {
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
        let command = Command::CreateTopic {
            name: req.name.clone(),
            settings: TopicSettings { partitions },
            topics_max: limits.topics_max,
        };
        match self.ctx.write(command).await {
            Ok(CommandResponse::TopicCreated { .. }) => {
                let topic = self
                    .ctx
                    .view
                    .topic(&req.name)
                    .ok_or_else(|| ApiError::Internal("created topic not applied".into()))?;
                Ok(Response::new(topic_to_pb(topic, self.ctx.id)))
            }
            Ok(CommandResponse::Rejected(r)) => Err(ApiError::from(r).into()),
            Ok(other) => Err(unexpected(other)),
            Err(WriteError::NotLeader(leader)) => {
                let (channel, leader) = self.ctx.forwarder.route(forwarded, leader, self.ctx.id)?;
                BrokerClient::new(channel)
                    .create_topic(Forwarder::forwarded(req, None))
                    .await
                    .map_err(|s| leader_unreachable(s, leader))
            }
            Err(WriteError::Failed(e)) => Err(e.into()),
        }
    }

    async fn list_topics(
        &self,
        _: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let leader = self.leader_id();
        let topics = self
            .ctx
            .view
            .topics()
            .into_iter()
            .map(|t| topic_to_pb(t, leader))
            .collect();
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        let name = request.into_inner().name;
        let topic = self
            .ctx
            .view
            .topic(&name)
            .ok_or_else(|| ApiError::from(crate::command::Rejection::UnknownTopic(name)))?;
        Ok(Response::new(topic_to_pb(topic, self.leader_id())))
    }

    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let command = self.produce_command(&req)?;
        #[cfg(feature = "unsafe-early-ack")]
        if let Some(ack) = self.unsafe_early_ack(&req, &command).await {
            return Ok(Response::new(ack));
        }
        match self.ctx.write(command).await {
            Ok(CommandResponse::Appended {
                base_offset,
                record_count,
            }) => Ok(Response::new(ProduceResponse {
                partition: req.partition,
                base_offset,
                record_count,
            })),
            Ok(CommandResponse::Rejected(r)) => Err(ApiError::from(r).into()),
            Ok(other) => Err(unexpected(other)),
            Err(WriteError::NotLeader(leader)) => {
                let (channel, leader) = self.ctx.forwarder.route(forwarded, leader, self.ctx.id)?;
                BrokerClient::new(channel)
                    .max_decoding_message_size(64 * 1024 * 1024)
                    .max_encoding_message_size(crate::raft::network::PEER_MESSAGE_BYTES_MAX)
                    .produce(Forwarder::forwarded(req, None))
                    .await
                    .map_err(|s| leader_unreachable(s, leader))
            }
            Err(WriteError::Failed(e)) => Err(e.into()),
        }
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
        tokio::spawn(async move {
            let mut applied = view.applied();
            let mut offset = req.offset;
            loop {
                match view.read(&req.topic, req.partition, offset, max_records, max_bytes) {
                    Ok(result) if !result.records.is_empty() => {
                        offset = result.records.last().map_or(offset, |(o, _)| o + 1);
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
                        // Caught up: sleep until the next apply, or until the client goes away.
                        tokio::select! {
                            changed = applied.changed() => if changed.is_err() { return },
                            _ = tx.closed() => return,
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
                .read(
                    &req.topic,
                    req.partition,
                    req.offset,
                    max_records,
                    max_bytes,
                )
                .map_err(ApiError::from)?;
            if !result.records.is_empty() || wait.is_zero() {
                break result;
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => continue,
                _ => break result,
            }
        };
        Ok(Response::new(FetchResponse {
            records: result
                .records
                .into_iter()
                .map(|(offset, r)| record_to_pb(offset, r))
                .collect(),
            end_offset: result.end_offset,
            start_offset: result.start_offset,
        }))
    }
}
