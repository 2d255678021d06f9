//! `raftlog.v1.Cluster`: bootstrap, membership changes, leadership transfer and inspection.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, ServerState};
use raftlog_proto::v1::cluster_client::ClusterClient;
use raftlog_proto::v1::cluster_server::Cluster;
use raftlog_proto::v1::*;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::forward::{is_forwarded, leader_unreachable, Forwarder};
use crate::node::NodeContext;
use crate::raft::{replicated_index, with_addr};
use raftlog_core::types::{ClientWriteResponse, Membership, Node, RaftMetrics};
use raftlog_core::NodeId;

/// How long a leader transfer may take before TransferLeader answers UNAVAILABLE.
const TRANSFER_WAIT: Duration = Duration::from_secs(5);
/// How long a leader transfer waits for a lagging target to hold the leader's log before it is
/// refused (and leadership stays where it is).
const TRANSFER_CATCH_UP_WAIT: Duration = Duration::from_secs(3);

pub struct ClusterService {
    ctx: NodeContext,
    /// Connections to the leader, for the changes this node forwards.
    forwarder: Forwarder,
}

/// The voters and learners of `membership`, with their addresses.
fn members(membership: &Membership) -> (Vec<Member>, Vec<Member>) {
    let member = |id: NodeId| Member {
        node_id: id,
        addr: membership
            .get_node(&id)
            .map(|n| n.addr.clone())
            .unwrap_or_default(),
    };
    (
        membership.voter_ids().map(member).collect(),
        membership.learner_ids().map(member).collect(),
    )
}

/// What [`Cluster::status`] reads from the Raft engine in one go.
struct LiveState {
    state: ServerState,
    term: u64,
    leader: Option<NodeId>,
    committed: Option<u64>,
    membership: Membership,
}

/// How a membership change ended on this node.
enum ChangeOutcome {
    Done(ClientWriteResponse),
    NotLeader(Option<(NodeId, String)>),
}

/// This node's view of the cluster. Role, term, leader, commit index and membership come from
/// one read of the Raft engine's own state, not from its metrics: openraft publishes metrics only
/// between rounds of its event loop, so right after an election (a leader transfer, say) they can
/// still show a candidate that has already won, and a status asked for once the transfer has been
/// answered would contradict it.
pub async fn node_status(ctx: &NodeContext) -> NodeStatus {
    let live = ctx
        .metadata()
        .raft
        .with_raft_state(|s| {
            let vote = s.vote_ref();
            LiveState {
                state: s.server_state,
                term: vote.leader_id.term,
                leader: vote.committed.then_some(vote.leader_id.node_id),
                committed: s.local_committed().map(|l| l.index),
                membership: s.membership_state.effective().membership().clone(),
            }
        })
        .await
        .ok();
    let metrics = ctx.metadata().raft.metrics().borrow_watched().clone();
    let live = live.unwrap_or(LiveState {
        state: metrics.state,
        term: metrics.current_term,
        leader: metrics.current_leader,
        committed: None,
        membership: metrics.membership_config.membership().clone(),
    });
    let (voters, learners) = members(&live.membership);
    let role = match live.state {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    };
    let leader = live.leader.and_then(|id| with_addr(&live.membership, id));
    let replication = metrics
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .map(|(id, log)| (*id, log.map_or(0, |l| l.index)))
                .collect()
        })
        .unwrap_or_default();
    NodeStatus {
        node_id: ctx.id,
        addr: ctx.config.advertise_addr.clone(),
        role: role as i32,
        term: live.term,
        leader_id: leader.as_ref().map_or(0, |l| l.0),
        has_leader: leader.is_some(),
        leader_addr: leader.map(|l| l.1).unwrap_or_default(),
        last_log_index: metrics.last_log_index.unwrap_or(0),
        committed_index: live.committed.unwrap_or(0),
        applied_index: metrics.last_applied.map_or(0, |l| l.index),
        snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
        purged_index: metrics.purged.map_or(0, |l| l.index),
        voters,
        learners,
        group_id: ctx.metadata().view.group(),
        replication,
    }
}

impl ClusterService {
    pub fn new(ctx: NodeContext, forwarder: Forwarder) -> Self {
        Self { ctx, forwarder }
    }

    /// The membership a finished change wrote. Taken from openraft's answer, not its metrics:
    /// those are published between rounds of its event loop, so right after the change they can
    /// still show the membership before it (a removed node still a voter).
    fn membership_response(&self, written: &ClientWriteResponse) -> MembershipResponse {
        let (voters, learners) = match &written.membership {
            Some(membership) => members(membership),
            // A change that changed nothing writes no membership entry.
            None => {
                let metrics = self.ctx.metadata().raft.metrics().borrow_watched().clone();
                members(metrics.membership_config.membership())
            }
        };
        MembershipResponse {
            log_index: written.log_id.index,
            voters,
            learners,
        }
    }

    fn outcome(
        result: Result<
            ClientWriteResponse,
            RaftError<
                raftlog_core::types::TypeConfig,
                ClientWriteError<raftlog_core::types::TypeConfig>,
            >,
        >,
    ) -> Result<ChangeOutcome, ApiError> {
        match result {
            Ok(response) => Ok(ChangeOutcome::Done(response)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Ok(
                ChangeOutcome::NotLeader(match (f.leader_id, f.leader_node) {
                    (Some(id), Some(node)) => Some((id, node.addr)),
                    _ => None,
                }),
            ),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => Err(
                ApiError::FailedPrecondition(format!("{e}; check `raftlog cluster status`")),
            ),
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => {
                Err(ApiError::Unavailable {
                    message: format!(
                        "leadership moved to {:?} before the change committed; check `raftlog \
                         cluster status` before retrying",
                        f.leader_id
                    ),
                    leader: None,
                    not_applied: false,
                })
            }
            Err(RaftError::APIError(ClientWriteError::PreconditionFailed(e))) => {
                Err(ApiError::FailedPrecondition(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(ApiError::Unavailable {
                message: e.to_string(),
                leader: None,
                not_applied: false,
            }),
        }
    }

    fn client(
        &self,
        forwarded: bool,
        leader: Option<(NodeId, String)>,
    ) -> Result<(ClusterClient<tonic::transport::Channel>, (NodeId, String)), Status> {
        let (channel, leader) = self.forwarder.route(forwarded, leader, self.ctx.id)?;
        Ok((ClusterClient::new(channel), leader))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn initialize(
        &self,
        request: Request<InitializeRequest>,
    ) -> Result<Response<InitializeResponse>, Status> {
        let req = request.into_inner();
        if req.members.is_empty() {
            return Err(
                ApiError::InvalidArgument("initialize needs at least one member".into()).into(),
            );
        }
        let mut nodes = BTreeMap::new();
        for m in req.members {
            if m.node_id == 0 || m.addr.is_empty() {
                return Err(ApiError::InvalidArgument(
                    "every member needs a positive node_id and an addr".into(),
                )
                .into());
            }
            nodes.insert(m.node_id, Node { addr: m.addr });
        }
        if !nodes.contains_key(&self.ctx.id) {
            return Err(ApiError::InvalidArgument(format!(
                "initialize must be sent to one of the members; this is node {}",
                self.ctx.id
            ))
            .into());
        }
        match self.ctx.metadata().raft.initialize(nodes).await {
            Ok(()) => Ok(Response::new(InitializeResponse {})),
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => Err(
                ApiError::AlreadyExists(format!("the cluster is already initialized ({e})")).into(),
            ),
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                Err(ApiError::InvalidArgument(e.to_string()).into())
            }
            Err(RaftError::Fatal(e)) => Err(ApiError::Unavailable {
                message: e.to_string(),
                leader: None,
                not_applied: false,
            }
            .into()),
        }
    }

    async fn add_learner(
        &self,
        request: Request<AddLearnerRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let member = req
            .member
            .clone()
            .ok_or_else(|| ApiError::InvalidArgument("member is required".into()))?;
        if member.node_id == 0 || member.addr.is_empty() {
            return Err(ApiError::InvalidArgument(
                "member needs a positive node_id and an addr".into(),
            )
            .into());
        }
        let result = self
            .ctx
            .metadata()
            .raft
            .add_learner(member.node_id, Node { addr: member.addr }, req.blocking)
            .await;
        match Self::outcome(result)? {
            ChangeOutcome::Done(r) => Ok(Response::new(self.membership_response(&r))),
            ChangeOutcome::NotLeader(leader) => {
                let (mut client, leader) = self.client(forwarded, leader)?;
                client
                    .add_learner(Forwarder::forwarded(req))
                    .await
                    .map_err(|s| leader_unreachable(s, leader))
            }
        }
    }

    async fn promote_voter(
        &self,
        request: Request<NodeRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([req.node_id]));
        match Self::outcome(
            self.ctx
                .metadata()
                .raft
                .change_membership(change, false)
                .await,
        )? {
            ChangeOutcome::Done(r) => Ok(Response::new(self.membership_response(&r))),
            ChangeOutcome::NotLeader(leader) => {
                let (mut client, leader) = self.client(forwarded, leader)?;
                client
                    .promote_voter(Forwarder::forwarded(req))
                    .await
                    .map_err(|s| leader_unreachable(s, leader))
            }
        }
    }

    async fn remove_node(
        &self,
        request: Request<NodeRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let metrics = self.ctx.metadata().raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let is_voter = membership.voter_ids().any(|id| id == req.node_id);
        let change = if is_voter {
            // Remove the voter and do not keep it as a learner.
            ChangeMembers::RemoveVoters(BTreeSet::from([req.node_id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([req.node_id]))
        };
        match Self::outcome(
            self.ctx
                .metadata()
                .raft
                .change_membership(change, false)
                .await,
        )? {
            ChangeOutcome::Done(r) => Ok(Response::new(self.membership_response(&r))),
            ChangeOutcome::NotLeader(leader) => {
                let (mut client, leader) = self.client(forwarded, leader)?;
                client
                    .remove_node(Forwarder::forwarded(req))
                    .await
                    .map_err(|s| leader_unreachable(s, leader))
            }
        }
    }

    /// openraft's leader transfer: the leader stops proposing and tells every node, and the
    /// target, once it holds the leader's whole log, starts an election at once and wins it.
    /// Sent to any node; followers forward it to the leader. Answers once the target leads.
    async fn transfer_leader(
        &self,
        request: Request<NodeRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let target = req.node_id;
        let metrics = self.ctx.metadata().raft.metrics().borrow_watched().clone();
        if !metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == target)
        {
            return Err(ApiError::FailedPrecondition(format!(
                "node {target} is not a voter; only voters can lead"
            ))
            .into());
        }
        if metrics.current_leader == Some(target) {
            return Ok(Response::new(TransferLeaderResponse {}));
        }
        if metrics.current_leader != Some(self.ctx.id) {
            let (mut client, leader) = self.client(forwarded, self.ctx.leader())?;
            return client
                // Longer than the leader waits, so its answer (and its reason) comes through.
                .transfer_leader({
                    let mut request = Forwarder::forwarded(req);
                    request.set_timeout(
                        TRANSFER_CATCH_UP_WAIT + TRANSFER_WAIT + Duration::from_secs(1),
                    );
                    request
                })
                .await
                .map_err(|s| leader_unreachable(s, leader));
        }
        let unavailable = |message: String| ApiError::Unavailable {
            message,
            leader: None,
            not_applied: false,
        };
        // openraft's target starts its election only if its log holds the leader's last entry
        // within election_timeout_min of the request; otherwise it ignores the transfer, and the
        // voters (no longer hearing from this node) elect whoever times out first, which is often
        // not the target. So a target that is behind is waited for first, while this node still
        // leads and takes writes; one that does not catch up is refused with nothing changed.
        let last_index = metrics.last_log_index.unwrap_or(0);
        let matched = |m: &RaftMetrics| replicated_index(m, target).unwrap_or(0);
        self.ctx
            .metadata()
            .raft
            .wait(Some(TRANSFER_CATCH_UP_WAIT))
            .metrics(
                |m| matched(m) >= last_index,
                "the target holds the leader's log",
            )
            .await
            .map_err(|_| {
                let now = self.ctx.metadata().raft.metrics().borrow_watched().clone();
                unavailable(format!(
                    "node {target} holds the log up to index {} of {last_index} after {} s; it \
                     may be down or slow. Leadership did not move; check `raftlog cluster \
                     status` and retry once node {target} has caught up",
                    matched(&now),
                    TRANSFER_CATCH_UP_WAIT.as_secs()
                ))
            })?;
        self.ctx
            .metadata()
            .raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        self.ctx
            .metadata()
            .raft
            .wait(Some(TRANSFER_WAIT))
            .metrics(|m| m.current_leader == Some(target), "the target leads")
            .await
            .map_err(|e| {
                unavailable(format!(
                    "node {target} did not take over ({e}); it may be behind or down. This node \
                     stopped leading for the transfer, so the voters elect a leader on their \
                     own: check `raftlog cluster status`"
                ))
            })?;
        Ok(Response::new(TransferLeaderResponse {}))
    }

    /// This node's view of the cluster ([`node_status`]).
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<NodeStatus>, Status> {
        Ok(Response::new(node_status(&self.ctx).await))
    }

    async fn trigger_snapshot(
        &self,
        _: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotResponse>, Status> {
        let applied = self
            .ctx
            .metadata()
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map_or(0, |l| l.index);
        self.ctx
            .metadata()
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| ApiError::Unavailable {
                message: e.to_string(),
                leader: None,
                not_applied: false,
            })?;
        let metrics = self
            .ctx
            .metadata()
            .raft
            .wait(Some(Duration::from_secs(60)))
            .metrics(
                |m| m.snapshot.map_or(0, |s| s.index) >= applied,
                "snapshot built",
            )
            .await
            .map_err(|e| ApiError::Internal(format!("snapshot not built in time: {e}")))?;
        Ok(Response::new(TriggerSnapshotResponse {
            snapshot_index: metrics.snapshot.map_or(0, |s| s.index),
        }))
    }

    async fn state_digest(
        &self,
        _: Request<StateDigestRequest>,
    ) -> Result<Response<StateDigestResponse>, Status> {
        let (applied_index, sha256, keys) =
            self.ctx.metadata().view.digest().map_err(ApiError::from)?;
        Ok(Response::new(StateDigestResponse {
            applied_index,
            sha256,
            keys,
        }))
    }
}
