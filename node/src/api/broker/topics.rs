//! Topics: create, list, describe, delete and alter. Changes are replicated commands; lists and
//! descriptions are this node's applied state.

use raftlog_proto::v1::*;
use tonic::{Request, Response, Status};

use super::{unexpected, BrokerService};
use crate::api::convert::topic_to_pb;
use crate::api::error::ApiError;
use crate::api::forward::{is_forwarded, Forwarder};
use raftlog_core::auth::ResourceType;
use raftlog_core::{Command, CommandResponse, Rejection, TopicSettings};

pub(super) async fn create(
    broker: &BrokerService,
    request: Request<CreateTopicRequest>,
) -> Result<Response<TopicInfo>, Status> {
    let forwarded = is_forwarded(&request);
    let deadline = broker.write_deadline(&request);
    let req = request.into_inner();
    broker.validate_topic_name(&req.name)?;
    let limits = &broker.ctx.config.limits;
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
    let command = crate::auth::on_behalf_of_caller(Command::CreateTopic {
        name: req.name.clone(),
        settings: TopicSettings {
            partitions,
            retention_ms: config.retention_ms,
            retention_bytes: config.retention_bytes,
            max_record_bytes,
        },
        topics_max: limits.topics_max,
    });
    let (view, leader) = (broker.group().view.clone(), broker.ctx.id);
    let name = req.name.clone();
    broker
        .write_or_forward(
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
}

pub(super) async fn list(
    broker: &BrokerService,
    request: Request<ListTopicsRequest>,
) -> Result<Response<ListTopicsResponse>, Status> {
    let leader = broker.leader_id();
    let visible = broker.visible(&request, ResourceType::Topic);
    let topics = broker
        .group()
        .view
        .topics()
        .into_iter()
        .filter(|t| visible(&t.name))
        .map(|t| topic_to_pb(t, leader))
        .collect();
    Ok(Response::new(ListTopicsResponse { topics }))
}

pub(super) async fn describe(
    broker: &BrokerService,
    request: Request<DescribeTopicRequest>,
) -> Result<Response<TopicInfo>, Status> {
    let name = request.into_inner().name;
    broker.validate_topic_name(&name)?;
    let topic = broker
        .group()
        .view
        .topic(&name)
        .ok_or_else(|| ApiError::from(Rejection::UnknownTopic(name)))?;
    Ok(Response::new(topic_to_pb(topic, broker.leader_id())))
}

pub(super) async fn delete(
    broker: &BrokerService,
    request: Request<DeleteTopicRequest>,
) -> Result<Response<DeleteTopicResponse>, Status> {
    let forwarded = is_forwarded(&request);
    let deadline = broker.write_deadline(&request);
    let req = request.into_inner();
    broker.validate_topic_name(&req.name)?;
    let command = Command::DeleteTopic {
        name: req.name.clone(),
    };
    broker
        .write_or_forward(
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
}

pub(super) async fn alter(
    broker: &BrokerService,
    request: Request<AlterTopicRequest>,
) -> Result<Response<TopicInfo>, Status> {
    let forwarded = is_forwarded(&request);
    let deadline = broker.write_deadline(&request);
    let req = request.into_inner();
    broker.validate_topic_name(&req.name)?;
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
    let (view, leader, name) = (broker.group().view.clone(), broker.ctx.id, req.name.clone());
    broker
        .write_or_forward(
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
}
