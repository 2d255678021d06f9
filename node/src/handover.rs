//! Leadership handover when a leader shuts down (SIGTERM, rolling restarts).
//!
//! Without it, the followers elect a successor only once the stopped leader's lease has expired
//! (election_timeout_max plus an election timeout, ~2.5 s with the defaults), and every write waits
//! that long. openraft 0.9 has no leader-transfer message, but its vote rules allow a handover:
//! the leader stops taking writes, waits until its most caught-up voter holds its whole log, and
//! asks that voter to start an election. The followers refuse the vote while they still see the
//! leader's lease, but the leader itself grants it (its own vote dates from its election, so its
//! lease for votes has long run out, and the candidate's log is as long as its own) and steps down
//! on seeing the higher term. In a 3-voter cluster the candidate's vote and the old leader's are a
//! majority, so leadership moves within a round trip. With 5 voters two votes are not enough, so
//! no handover is attempted (a lost attempt would depose the leader without a successor).
//!
//! The leader's own lease runs from its election: a leader elected less than
//! `election_timeout_ms_max` ago would refuse the vote (and the candidate's higher term would
//! still depose it), so the handover first waits that lease out.
//!
//! Writes that arrive during the handover are refused as not applied, so clients retry them
//! (against the new leader) without any risk of duplicates.

use openraft::async_runtime::watch::WatchReceiver;
use std::time::{Duration, Instant};

use raftlog_proto::v1::cluster_client::ClusterClient;
use raftlog_proto::v1::NodeRequest;

use crate::api::forward::Forwarder;
use crate::node::NodeContext;
use crate::raft::types::NodeId;

/// How long the successor may take to catch up with the leader's log.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);
/// How long the election may take before we give up and shut down anyway.
const ELECTION_WAIT: Duration = Duration::from_secs(2);
/// Clock slack on top of the lease (timers and the observation of the election are not exact).
const LEASE_MARGIN: Duration = Duration::from_millis(50);

/// If this node leads, hands leadership to the most caught-up voter. Returns the new leader, or
/// `None` if this node was not leading or the handover did not complete (both are logged).
pub async fn hand_over_leadership(ctx: &NodeContext) -> Option<NodeId> {
    let started = Instant::now();
    let metrics = ctx.raft.metrics().borrow_watched().clone();
    if metrics.current_leader != Some(ctx.id) {
        return None;
    }
    let membership = metrics.membership_config.membership().clone();
    let replication = metrics.replication.clone().unwrap_or_default();
    // The voter whose log is longest: the one that catches up soonest.
    let successor = membership
        .voter_ids()
        .filter(|id| *id != ctx.id)
        .max_by_key(|id| replication.get(id).cloned().flatten().map(|l| l.index));
    let Some(successor) = successor else {
        tracing::info!(node_id = ctx.id, "no other voter to hand leadership to");
        return None;
    };
    let addr = membership.get_node(&successor).map(|n| n.addr.clone())?;
    let voters = membership.voter_ids().count();
    if voters > 3 {
        tracing::info!(
            node_id = ctx.id,
            voters,
            "no handover with more than 3 voters (openraft 0.9 has no transfer message)"
        );
        return None;
    }

    // From here on no new write is proposed by this node, so its log stops growing and the
    // successor can hold all of it (a vote needs the candidate's log to be at least as long).
    ctx.stop_taking_writes();
    let caught_up = ctx
        .raft
        .wait(Some(CATCH_UP_WAIT))
        .metrics(
            |m| {
                let last = m.last_log_index;
                m.last_applied.map(|l| l.index) == last
                    && m.replication
                        .as_ref()
                        .and_then(|r| r.get(&successor).cloned().flatten())
                        .map(|l| l.index)
                        == last
            },
            "successor holds the whole log",
        )
        .await;
    if let Err(e) = caught_up {
        tracing::warn!(node_id = ctx.id, successor, "no handover: {e}");
        return None;
    }
    let leading_since = *ctx.leading_since.lock().expect("leading_since lock");
    if let Some(since) = leading_since {
        // Waiting out a protocol timer (the lease), not synchronising with an event.
        let lease = Duration::from_millis(ctx.config.raft.election_timeout_ms_max);
        tokio::time::sleep_until((since + lease + LEASE_MARGIN).into()).await;
    }

    let request = Forwarder::forwarded(NodeRequest { node_id: successor }, Some(ELECTION_WAIT));
    let elect = async {
        let channel = ctx.forwarder.channel(&addr).map_err(|e| e.to_string())?;
        ClusterClient::new(channel)
            .transfer_leader(request)
            .await
            .map_err(|s| s.message().to_string())
    };
    if let Err(e) = elect.await {
        tracing::warn!(node_id = ctx.id, successor, "no handover: {e}");
        return None;
    }
    let elected = ctx
        .raft
        .wait(Some(ELECTION_WAIT))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != ctx.id),
            "another node leads",
        )
        .await;
    match elected {
        Ok(m) => {
            tracing::info!(
                node_id = ctx.id,
                new_leader = ?m.current_leader,
                term = m.current_term,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "handed leadership over"
            );
            m.current_leader
        }
        Err(e) => {
            tracing::warn!(
                node_id = ctx.id,
                successor,
                "handover did not complete: {e}"
            );
            None
        }
    }
}
