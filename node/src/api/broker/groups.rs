//! Consumer groups: commit and fetch offsets, list, describe and delete groups; the heartbeat of
//! coordinated groups' members and the removal of a member.

use raftlog_proto::v1::broker_client::BrokerClient;
use raftlog_proto::v1::*;
use tonic::{Request, Response, Status};

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::{stopped, unexpected, BrokerService};
use crate::api::convert::{group_to_pb, partitions_from_pb, partitions_to_pb};
use crate::api::error::ApiError;
use crate::api::forward::{is_forwarded, leader_unreachable, Forwarder};
use crate::group::{now_ms, HeartbeatError, WriteError};
use raftlog_core::coordination::{Assignor, Heartbeat, Stamp, LEAVE_EPOCH};
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
    if !req.member_id.is_empty() {
        broker.validate_member_id(&req.member_id)?;
    }
    let member =
        (!req.member_id.is_empty()).then(|| Box::new((req.member_id.clone(), req.member_epoch)));
    let commit = Command::CommitFencedOffsets {
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
        member,
    };
    // Only a commit that may create the group needs its caller's creation caps checked.
    let view = &broker.group().view;
    let command = if view.group_exists(&req.group) {
        commit
    } else {
        crate::auth::on_behalf_of_caller(commit)
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
    request: Request<ListGroupsRequest>,
) -> Result<Response<ListGroupsResponse>, Status> {
    let visible = broker.visible(&request, raftlog_core::auth::ResourceType::Group);
    let view = &broker.group().view;
    let topics = view.topics();
    let mut offsets = view.groups();
    let mut coordinations = view.coordinations();
    let names: BTreeSet<String> = offsets
        .keys()
        .chain(coordinations.keys())
        .filter(|name| visible(name))
        .cloned()
        .collect();
    let groups = names
        .into_iter()
        .map(|name| {
            let o = offsets.remove(&name).unwrap_or_default();
            let c = coordinations.remove(&name);
            group_to_pb(name, &o, c.as_ref(), &topics)
        })
        .collect();
    Ok(Response::new(ListGroupsResponse { groups }))
}

pub(super) async fn describe(
    broker: &BrokerService,
    request: Request<DescribeGroupRequest>,
) -> Result<Response<GroupInfo>, Status> {
    let name = request.into_inner().group;
    broker.validate_name("group", &name)?;
    let view = &broker.group().view;
    let offsets = view.group_offsets(&name);
    let coordination = view.coordination(&name);
    if offsets.is_none() && coordination.is_none() {
        return Err(ApiError::from(Rejection::UnknownGroup(name)).into());
    }
    Ok(Response::new(group_to_pb(
        name,
        &offsets.unwrap_or_default(),
        coordination.as_ref(),
        &view.topics(),
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

/// A member's heartbeat: answered by the leader (a follower forwards it), through the log when it
/// changes the group (`group::membership`). With `wait_ms`, a heartbeat that tells the member
/// nothing new is held until the group changes (then evaluated again) or the wait is over.
pub(super) async fn heartbeat(
    broker: &BrokerService,
    request: Request<GroupHeartbeatRequest>,
) -> Result<Response<GroupHeartbeatResponse>, Status> {
    let forwarded = is_forwarded(&request);
    let deadline = broker.write_deadline(&request);
    let req = request.into_inner();
    broker.validate_name("group", &req.group)?;
    let group = broker.group();
    if !group.is_leader() {
        return forward_heartbeat(broker, req, forwarded, group.leader(), deadline).await;
    }
    // Subscribed before the heartbeat is evaluated: a change applied after that wakes the hold.
    let mut changes = group.view.coordination_changes();
    let arrived = Instant::now();
    let mut stopping = broker.stopping.clone();
    loop {
        let answer = match answer_heartbeat(broker, &req, forwarded, deadline).await? {
            Answered::Here(answer) => answer,
            Answered::Forwarded(response) => return Ok(response),
        };
        // Held only while the answer tells the member nothing new (its epoch is current), up
        // to the wait it asked for (at most an interval), with time to spare before its deadline.
        let wait = Duration::from_millis(u64::from(req.wait_ms.min(answer.heartbeat_interval_ms)));
        let hold_until = (arrived + wait).min(deadline - Duration::from_millis(200));
        let knows_it = req.member_epoch > 0 && answer.member_epoch as i64 == req.member_epoch;
        if !knows_it || Instant::now() >= hold_until {
            return Ok(Response::new(answer));
        }
        let _held = HeldHeartbeat::start();
        let changed = tokio::select! {
            changed = tokio::time::timeout_at(hold_until.into(), changes.changed()) => {
                matches!(changed, Ok(Ok(())))
            }
            () = stopped(&mut stopping) => false,
        };
        if !changed {
            return Ok(Response::new(answer));
        }
        // The group changed: evaluate again (news for this member is answered at once).
    }
}

/// Counts a held heartbeat in [`crate::metrics::GROUP_HEARTBEATS_HELD`] for as long as it is held
/// (its caller may also cancel it).
struct HeldHeartbeat;

impl HeldHeartbeat {
    fn start() -> Self {
        metrics::gauge!(crate::metrics::GROUP_HEARTBEATS_HELD).increment(1.0);
        HeldHeartbeat
    }
}

impl Drop for HeldHeartbeat {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::GROUP_HEARTBEATS_HELD).decrement(1.0);
    }
}

/// How the leader answered a heartbeat: itself, or (having lost the leadership meanwhile) by
/// forwarding it.
enum Answered {
    Here(GroupHeartbeatResponse),
    Forwarded(Response<GroupHeartbeatResponse>),
}

/// Evaluates one heartbeat on this node, believed the leader.
async fn answer_heartbeat(
    broker: &BrokerService,
    req: &GroupHeartbeatRequest,
    forwarded: bool,
    deadline: Instant,
) -> Result<Answered, Status> {
    let group = broker.group();
    let topics = group.view.topic_table();
    let (heartbeat, stamp) = broker.heartbeat_command(req, &topics)?;
    let groups_max = broker.ctx.config.limits.groups_max;
    match group
        .group_heartbeat(
            &req.group,
            (heartbeat, stamp),
            groups_max,
            crate::auth::current_principal(),
            deadline,
        )
        .await
    {
        Ok(answer) => {
            let session_timeout_ms = group
                .view
                .coordination(&req.group)
                .map_or(0, |c| c.session_timeout_ms);
            Ok(Answered::Here(GroupHeartbeatResponse {
                member_id: answer.member_id,
                member_epoch: answer.member_epoch,
                assigned: partitions_to_pb(&answer.assigned, &topics),
                heartbeat_interval_ms: heartbeat_interval_ms(session_timeout_ms),
                session_timeout_ms,
            }))
        }
        Err(HeartbeatError::Rejected(r)) => Err(ApiError::from(r).into()),
        Err(HeartbeatError::Write(WriteError::NotLeader(leader))) => {
            forward_heartbeat(broker, req.clone(), forwarded, leader, deadline)
                .await
                .map(Answered::Forwarded)
        }
        Err(HeartbeatError::Write(e)) => Err(ApiError::write_failed(broker.ctx.id, e).into()),
    }
}

/// How often a member heartbeats: five times per session, so that a few lost heartbeats or an
/// election (about a second) do not expire it.
fn heartbeat_interval_ms(session_timeout_ms: u32) -> u32 {
    (session_timeout_ms / 5).max(100)
}

async fn forward_heartbeat(
    broker: &BrokerService,
    req: GroupHeartbeatRequest,
    forwarded: bool,
    leader: Option<crate::group::Leader>,
    deadline: std::time::Instant,
) -> Result<Response<GroupHeartbeatResponse>, Status> {
    let (channel, leader) = broker.forwarder.route(forwarded, leader, broker.ctx.id)?;
    BrokerClient::new(channel)
        .group_heartbeat(Forwarder::forwarded_write(req, deadline)?)
        .await
        .map_err(|s| leader_unreachable(s, leader))
}

impl BrokerService {
    /// Checks a heartbeat against the limits and builds what its command carries: the heartbeat
    /// in domain terms and the leader's stamp (its clock, a new member id, the limits).
    fn heartbeat_command(
        &self,
        req: &GroupHeartbeatRequest,
        topics: &raftlog_core::coordination::Topics,
    ) -> Result<(Heartbeat, Stamp), ApiError> {
        let limits = &self.ctx.config.limits;
        if !req.member_id.is_empty() {
            self.validate_member_id(&req.member_id)?;
        }
        if !req.instance_id.is_empty() {
            self.validate_name("instance id", &req.instance_id)?;
        }
        if req.member_epoch < LEAVE_EPOCH {
            return Err(ApiError::InvalidArgument(format!(
                "member_epoch {} is not an epoch: 0 joins, -1 leaves",
                req.member_epoch
            )));
        }
        if req.member_id.is_empty() && req.subscription.is_none() {
            return Err(ApiError::InvalidArgument(
                "a member joins with a subscription (the topics to read)".into(),
            ));
        }
        if let Some(subscription) = &req.subscription {
            let max = limits.group_subscription_topics_max as usize;
            if subscription.topics.is_empty() || subscription.topics.len() > max {
                return Err(ApiError::InvalidArgument(format!(
                    "a subscription names 1 to {max} topics (group_subscription_topics_max); got \
                     {}",
                    subscription.topics.len()
                )));
            }
            for topic in &subscription.topics {
                self.validate_topic_name(topic)?;
            }
        }
        let (session_timeout_ms, assignor) = self.group_settings(req)?;
        let heartbeat = Heartbeat {
            member_id: req.member_id.clone(),
            member_epoch: req.member_epoch,
            instance_id: (!req.instance_id.is_empty()).then(|| req.instance_id.clone()),
            subscription: req.subscription.as_ref().map(|s| s.topics.clone()),
            owned: req
                .owned
                .as_ref()
                .map(|o| partitions_from_pb(&o.topics, topics)),
            client_id: req.client_id.chars().take(256).collect(),
            client_host: req.client_host.chars().take(256).collect(),
        };
        let stamp = Stamp {
            now_ms: now_ms(),
            new_member_id: format!("{:016x}", rand::random::<u64>()),
            members_max: limits.group_members_max,
            subscription_topics_max: limits.group_subscription_topics_max,
            session_timeout_ms,
            assignor,
        };
        Ok((heartbeat, stamp))
    }
    /// The session timeout and assignor a heartbeat asks for (used when it founds the group).
    fn group_settings(&self, req: &GroupHeartbeatRequest) -> Result<(u32, Assignor), ApiError> {
        let limits = &self.ctx.config.limits;
        let session_timeout_ms = match req.session_timeout_ms {
            0 => limits.group_session_timeout_ms_default,
            ms if ms < limits.group_session_timeout_ms_min
                || ms > limits.group_session_timeout_ms_max =>
            {
                return Err(ApiError::InvalidArgument(format!(
                    "session_timeout_ms {ms} is outside {}..={} (group_session_timeout_ms_min, \
                     _max)",
                    limits.group_session_timeout_ms_min, limits.group_session_timeout_ms_max
                )))
            }
            ms => ms,
        };
        let assignor = match req.assignor.as_str() {
            "" | "uniform" => Assignor::Uniform,
            "range" => Assignor::Range,
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(ApiError::InvalidArgument(format!(
                    "unknown assignor '{}'; use uniform or range",
                    shown.escape_debug()
                )));
            }
        };
        Ok((session_timeout_ms, assignor))
    }
}

/// An operator removes a member: its partitions move at once.
pub(super) async fn remove_member(
    broker: &BrokerService,
    request: Request<RemoveGroupMemberRequest>,
) -> Result<Response<RemoveGroupMemberResponse>, Status> {
    let forwarded = is_forwarded(&request);
    let deadline = broker.write_deadline(&request);
    let req = request.into_inner();
    broker.validate_name("group", &req.group)?;
    broker.validate_member_id(&req.member_id)?;
    let command = Command::RemoveGroupMember {
        group: req.group.clone(),
        member_id: req.member_id.clone(),
    };
    let (group, member_id) = (req.group.clone(), req.member_id.clone());
    broker
        .write_or_forward(
            forwarded,
            deadline,
            command,
            |response| match response {
                CommandResponse::MemberRemoved { removed: true } => {
                    Ok(RemoveGroupMemberResponse {})
                }
                CommandResponse::MemberRemoved { removed: false } => Err(ApiError::NotFound(
                    format!("'{member_id}' is not a member of consumer group '{group}'"),
                )),
                other => Err(unexpected(other)),
            },
            |mut client| async move {
                client
                    .remove_group_member(Forwarder::forwarded_write(req, deadline)?)
                    .await
            },
        )
        .await
}
