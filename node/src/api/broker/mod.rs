//! `raftlog.v1.Broker`: topics, produce, fetch, subscribe and consumer groups, one file per
//! area ([`topics`], [`produce`], [`fetch`], [`groups`]); this file holds what they share (the
//! service, the write-or-forward path, name checks) and the trait impl that routes each RPC.
//! `raftlog.v1.Queues` ([`queues`]) is a service of its own on the same parts.
//!
//! Reads are served from this node's applied state. Writes become [`Command`]s proposed through
//! Raft here when this node leads, or are forwarded once to the leader ([`super::forward`]).
//! Request metrics are recorded around every unary call by `api::request_metrics`.

mod fetch;
mod groups;
mod produce;
pub mod queues;
#[cfg(feature = "unsafe-test-bugs")]
mod test_bugs;
mod topics;

use std::future::Future;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Instant;

use raftlog_proto::v1::broker_client::BrokerClient;
use raftlog_proto::v1::broker_server::Broker;
use raftlog_proto::v1::*;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::forward::{leader_unreachable, write_deadline, Forwarder};
use crate::group::{Group, WriteError};
use crate::node::NodeContext;
use raftlog_core::limits::{FORWARDED_RESPONSE_BYTES_MAX, PEER_MESSAGE_BYTES_MAX};
use raftlog_core::{Command, CommandResponse};

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

    /// By when a write arriving with `request` must be proposed ([`super::forward::write_deadline`]).
    pub(super) fn write_deadline<T>(&self, request: &Request<T>) -> Instant {
        let max = std::time::Duration::from_millis(self.ctx.config.limits.write_timeout_ms_max);
        write_deadline(request.metadata(), max)
    }

    /// Proposes `command` through Raft, unless `deadline` passes first, when this node leads and
    /// maps the applied outcome with `applied`; otherwise sends the request on to the leader with
    /// `forward`, once (it attaches what is left of the deadline).
    pub(super) async fn write_or_forward<T, Fut>(
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
        self.write_or_forward_on(forwarded, deadline, command, applied, |channel| {
            forward(
                BrokerClient::new(channel)
                    .max_decoding_message_size(FORWARDED_RESPONSE_BYTES_MAX)
                    .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX),
            )
        })
        .await
    }

    /// [`Self::write_or_forward`] for any service: `forward` gets the channel to the leader.
    pub(super) async fn write_or_forward_on<T, Fut>(
        &self,
        forwarded: bool,
        deadline: Instant,
        command: Command,
        applied: impl FnOnce(CommandResponse) -> Result<T, ApiError>,
        forward: impl FnOnce(Channel) -> Fut,
    ) -> Result<Response<T>, Status>
    where
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        match self.group().write(command, deadline).await {
            Ok(CommandResponse::Rejected(r)) => Err(ApiError::from(r).into()),
            Ok(response) => Ok(Response::new(applied(response)?)),
            Err(WriteError::NotLeader(leader)) => {
                let (channel, leader) = self.forwarder.route(forwarded, leader, self.ctx.id)?;
                forward(channel)
                    .await
                    .map_err(|s| leader_unreachable(s, leader))
            }
            Err(e) => Err(ApiError::write_failed(self.ctx.id, e).into()),
        }
    }

    pub(super) fn leader_id(&self) -> u64 {
        self.ctx.leader().map_or(0, |(id, _)| id)
    }

    pub(super) fn validate_topic_name(&self, name: &str) -> Result<(), ApiError> {
        self.validate_name("topic", name)
    }

    /// A group member id as the leader hands them out (16 hex digits), or at least something of
    /// the same shape: 1 to 64 bytes of `[A-Za-z0-9._-]` (so that no error echoes more).
    pub(super) fn validate_member_id(&self, member_id: &str) -> Result<(), ApiError> {
        let shape_ok = (1..=64).contains(&member_id.len()) && is_name_bytes(member_id);
        if shape_ok {
            return Ok(());
        }
        Err(ApiError::InvalidArgument(format!(
            "member_id must be 1 to 64 bytes of [A-Za-z0-9._-] (got {} bytes): use the id the \
             group's heartbeat answered",
            member_id.len()
        )))
    }

    /// Topic and group names: 1 to `topic_name_bytes_max` bytes of `[A-Za-z0-9._-]`.
    pub(super) fn validate_name(&self, what: &str, name: &str) -> Result<(), ApiError> {
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
        if !is_name_bytes(name) {
            return Err(ApiError::InvalidArgument(format!(
                "{what} name '{}' may contain only ASCII letters, digits, '.', '_' and '-'",
                name.escape_debug()
            )));
        }
        Ok(())
    }

    /// Which resources of type `resource` the caller of `request` may see in a list (those it
    /// may describe; all of them when auth is off): the `Filtered` rules of `crate::auth::rules`.
    pub(super) fn visible<T>(
        &self,
        request: &Request<T>,
        resource: raftlog_core::auth::ResourceType,
    ) -> impl Fn(&str) -> bool {
        let caller = crate::auth::caller_of(request).cloned();
        let auth = self.ctx.auth.clone();
        move |name| {
            caller.as_ref().is_none_or(|caller| {
                auth.allows(
                    caller,
                    resource,
                    name,
                    raftlog_core::auth::Operation::Describe,
                )
            })
        }
    }

    /// The Raft group that serves a request: today the one group of the node.
    pub(super) fn group(&self) -> &Group {
        self.ctx.metadata()
    }
}

/// The answers of a produce stream, in the order their requests apply.
type ProduceAnswers = tokio_stream::wrappers::ReceiverStream<Result<ProduceStreamResponse, Status>>;
/// The messages of a Subscribe stream.
type SubscribeMessages = tokio_stream::wrappers::ReceiverStream<Result<SubscribeResponse, Status>>;

#[tonic::async_trait]
impl Broker for BrokerService {
    type ProduceStreamStream = ProduceAnswers;
    type SubscribeStream = SubscribeMessages;

    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        topics::create(self, request).await
    }

    async fn list_topics(
        &self,
        request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        topics::list(self, request).await
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        topics::describe(self, request).await
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        topics::delete(self, request).await
    }

    async fn alter_topic(
        &self,
        request: Request<AlterTopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        topics::alter(self, request).await
    }

    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        produce::produce(self, request).await
    }

    async fn produce_stream(
        &self,
        request: Request<tonic::Streaming<ProduceStreamRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        produce::produce_stream(self, request).await
    }

    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        produce::init_producer(self, request).await
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        fetch::fetch(self, request).await
    }

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        fetch::subscribe(self, request).await
    }

    async fn group_heartbeat(
        &self,
        request: Request<GroupHeartbeatRequest>,
    ) -> Result<Response<GroupHeartbeatResponse>, Status> {
        groups::heartbeat(self, request).await
    }

    async fn remove_group_member(
        &self,
        request: Request<RemoveGroupMemberRequest>,
    ) -> Result<Response<RemoveGroupMemberResponse>, Status> {
        groups::remove_member(self, request).await
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        fetch::list_offsets(self, request).await
    }

    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        groups::commit_offsets(self, request).await
    }

    async fn fetch_offsets(
        &self,
        request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        groups::fetch_offsets(self, request).await
    }

    async fn list_groups(
        &self,
        request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        groups::list(self, request).await
    }

    async fn describe_group(
        &self,
        request: Request<DescribeGroupRequest>,
    ) -> Result<Response<GroupInfo>, Status> {
        groups::describe(self, request).await
    }

    async fn delete_group(
        &self,
        request: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        groups::delete(self, request).await
    }
}

/// Whether `s` is made of the bytes names may hold: `[A-Za-z0-9._-]`.
fn is_name_bytes(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Resolves once the node has started to stop (at once if it has).
async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

fn unexpected(response: CommandResponse) -> ApiError {
    ApiError::Internal(format!("unexpected state machine response {response:?}"))
}
