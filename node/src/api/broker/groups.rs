//! Consumer groups: commit and fetch offsets, list, describe and delete groups.

use raftlog_proto::v1::broker_client::BrokerClient;
use raftlog_proto::v1::*;
use tonic::{Request, Response, Status};

use super::{unexpected, BrokerService};
use crate::api::convert::group_to_pb;
use crate::api::error::ApiError;
use crate::api::forward::{is_forwarded, leader_unreachable, Forwarder};
use crate::group::{now_ms, WriteError};
use raftlog_core::{Command, CommandResponse, Rejection};

pub(super) async fn commit_offsets(
    broker: &BrokerService,
    request: Request<CommitOffsetsRequest>,
) -> Result<Response<CommitOffsetsResponse>, Status> {
    let forwarded = is_forwarded(&request);
    let deadline = broker.write_deadline(&request);
    let req = request.into_inner();
    broker.validate_name("group", &req.group)?;
    broker.validate_topic_name(&req.topic)?;
    if req.offsets.is_empty() {
        return Err(ApiError::InvalidArgument(
            "a commit needs at least one partition offset".into(),
        )
        .into());
    }
    let partitions_max = broker.ctx.config.limits.partitions_per_topic_max as usize;
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
        groups_max: broker.ctx.config.limits.groups_max,
        allow_rewind: req.allow_rewind,
    };
    broker
        .write_or_forward(
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
}

/// Linearizable: served by the leader after a read barrier, so a consumer that resumes right
/// after a commit (on any node) sees that commit, and committed offsets never appear to go
/// backwards.
pub(super) async fn fetch_offsets(
    broker: &BrokerService,
    request: Request<FetchOffsetsRequest>,
) -> Result<Response<FetchOffsetsResponse>, Status> {
    let forwarded = is_forwarded(&request);
    let req = request.into_inner();
    broker.validate_name("group", &req.group)?;
    broker.validate_topic_name(&req.topic)?;
    match broker.group().read_barrier().await {
        Ok(()) => {}
        Err(WriteError::NotLeader(leader)) => {
            let (channel, leader) = broker.forwarder.route(forwarded, leader, broker.ctx.id)?;
            return BrokerClient::new(channel)
                .fetch_offsets(Forwarder::forwarded(req))
                .await
                .map_err(|s| leader_unreachable(s, leader));
        }
        Err(e) => return Err(ApiError::write_failed(broker.ctx.id, e).into()),
    }
    let topic = broker
        .group()
        .view
        .topic(&req.topic)
        .ok_or_else(|| ApiError::from(Rejection::UnknownTopic(req.topic.clone())))?;
    // A group with no commit yet is not an error here: a new consumer asks exactly this.
    let offsets = broker
        .group()
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
}

pub(super) async fn list(
    broker: &BrokerService,
    _: Request<ListGroupsRequest>,
) -> Result<Response<ListGroupsResponse>, Status> {
    let topics = broker.group().view.topics();
    let groups = broker
        .group()
        .view
        .groups()
        .into_iter()
        .map(|(name, offsets)| group_to_pb(name, &offsets, &topics))
        .collect();
    Ok(Response::new(ListGroupsResponse { groups }))
}

pub(super) async fn describe(
    broker: &BrokerService,
    request: Request<DescribeGroupRequest>,
) -> Result<Response<GroupInfo>, Status> {
    let name = request.into_inner().group;
    broker.validate_name("group", &name)?;
    let offsets = broker
        .group()
        .view
        .group_offsets(&name)
        .ok_or_else(|| ApiError::from(Rejection::UnknownGroup(name.clone())))?;
    Ok(Response::new(group_to_pb(
        name,
        &offsets,
        &broker.group().view.topics(),
    )))
}

pub(super) async fn delete(
    broker: &BrokerService,
    request: Request<DeleteGroupRequest>,
) -> Result<Response<DeleteGroupResponse>, Status> {
    let forwarded = is_forwarded(&request);
    let deadline = broker.write_deadline(&request);
    let req = request.into_inner();
    broker.validate_name("group", &req.group)?;
    let command = Command::DeleteGroup {
        group: req.group.clone(),
    };
    broker
        .write_or_forward(
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
}
