//! Leadership handover when a leader shuts down (SIGTERM, rolling restarts).
//!
//! Without it, the followers elect a successor only once the stopped leader's lease has expired
//! (election_timeout_max plus an election timeout, ~2.5 s with the defaults), and every write waits
//! that long. With it: the leader stops taking writes, waits until its most caught-up voter holds
//! its whole log, and asks openraft to transfer leadership there (0.10's `transfer_leader`: the
//! leader stops proposing and tells every node; they drop the leader's lease, and the successor,
//! holding the whole log, starts an election at once and wins it). Leadership moves within a round
//! trip, with any number of voters.
//!
//! Writes that arrive during the handover are refused as not applied, so clients retry them
//! (against the new leader) without any risk of duplicates.

use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;

use super::Group;
use crate::raft::replicated_index;
use raftlog_core::NodeId;

/// How long the successor may take to catch up with the leader's log.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);
/// How long the election may take before we give up and shut down anyway.
const ELECTION_WAIT: Duration = Duration::from_secs(2);

/// If this node leads, hands leadership to the most caught-up voter. Returns the new leader, or
/// `None` if this node was not leading or the handover did not complete (both are logged).
pub async fn hand_over_leadership(group: &Group) -> Option<NodeId> {
    let started = Instant::now();
    let metrics = group.raft.metrics().borrow_watched().clone();
    if metrics.current_leader != Some(group.node_id) {
        return None;
    }
    let membership = metrics.membership_config.membership().clone();
    // The voter whose log is longest: the one that catches up soonest.
    let successor = membership
        .voter_ids()
        .filter(|id| *id != group.node_id)
        .max_by_key(|id| replicated_index(&metrics, *id));
    let Some(successor) = successor else {
        tracing::info!(
            node_id = group.node_id,
            "no other voter to hand leadership to"
        );
        return None;
    };
    // From here on no new write is proposed by this node, so its log stops growing and the
    // successor can hold all of it (a vote needs the candidate's log to be at least as long).
    group.stop_taking_writes();
    let caught_up = group
        .raft
        .wait(Some(CATCH_UP_WAIT))
        .metrics(
            |m| {
                let last = m.last_log_index;
                m.last_applied.map(|l| l.index) == last && replicated_index(m, successor) == last
            },
            "successor holds the whole log",
        )
        .await;
    if let Err(e) = caught_up {
        tracing::warn!(node_id = group.node_id, successor, "no handover: {e}");
        return None;
    }
    if let Err(e) = group.raft.trigger().transfer_leader(successor).await {
        tracing::warn!(node_id = group.node_id, successor, "no handover: {e}");
        return None;
    }
    let elected = group
        .raft
        .wait(Some(ELECTION_WAIT))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != group.node_id),
            "another node leads",
        )
        .await;
    match elected {
        Ok(m) => {
            tracing::info!(
                node_id = group.node_id,
                new_leader = ?m.current_leader,
                term = m.current_term,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "handed leadership over"
            );
            m.current_leader
        }
        Err(e) => {
            tracing::warn!(
                node_id = group.node_id,
                successor,
                "handover did not complete: {e}"
            );
            None
        }
    }
}
