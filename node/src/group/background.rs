//! The tasks a group runs beside its Raft instance: the replicated housekeeping round while it
//! leads, one log line per leader or membership change, and the watch for a fatal Raft error.

use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;

use super::{Group, WriteError};
use crate::config::Housekeeping;
use crate::raft::Raft;
use raftlog_core::Command;

/// Resolves, with the error, once openraft's core has stopped on a fatal error; pending while
/// Raft runs.
///
/// Waits on the server metrics (vote, role, leader, membership), not on the full `RaftMetrics`:
/// those change with every append, commit and apply, and a task waiting on them is woken
/// thousands of times a second (~4 % of a leader's CPU at 1 KiB, C=64; docs/decisions.md, "Node
/// tasks watch openraft's server metrics"). The core drops its metrics senders when it stops, so
/// the wait ends then.
pub async fn raft_failure(raft: Raft) -> String {
    let mut server = raft.server_metrics();
    loop {
        if let Err(fatal) = &raft.metrics().borrow_watched().running_state {
            return fatal.to_string();
        }
        if server.changed().await.is_err() {
            return match &raft.metrics().borrow_watched().running_state {
                Err(fatal) => fatal.to_string(),
                Ok(()) => "the Raft core is gone".into(),
            };
        }
    }
}

/// An optional id or index as a log field shows it: the number, or `none`.
fn or_none(value: Option<u64>) -> String {
    value.map_or_else(|| "none".to_string(), |v| v.to_string())
}

/// One log line per leader change and per membership change, with the ids that matter. Watches
/// the server metrics only, which change with the vote, role, leader or membership (see
/// [`raft_failure`]).
pub async fn log_raft_changes(group: Group) {
    let mut metrics = group.raft.server_metrics();
    let (mut leader, mut membership) = (None, None);
    loop {
        {
            let m = metrics.borrow_watched();
            if m.current_leader != leader {
                tracing::info!(
                    node_id = group.node_id,
                    term = m.vote.leader_id.term,
                    leader = %or_none(m.current_leader),
                    previous = %or_none(leader),
                    "leader changed"
                );
                leader = m.current_leader;
            }
            let current = m.membership_config.log_id().map(|l| l.index);
            if current != membership {
                let config = m.membership_config.membership();
                tracing::info!(
                    node_id = group.node_id,
                    log_index = %or_none(current),
                    voters = ?config.voter_ids().collect::<Vec<_>>(),
                    learners = ?config.learner_ids().collect::<Vec<_>>(),
                    "membership changed"
                );
                membership = current;
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// While this node leads the group, proposes `Command::Maintenance` every `retention_check_ms`:
/// retention and producer expiry run as replicated, deterministic commands stamped with the
/// leader's clock, so every node deletes exactly the same batches.
pub async fn housekeeping(
    group: Group,
    policy: Housekeeping,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = Duration::from_millis(policy.retention_check_ms.max(10));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if !group.is_leader() {
            continue;
        }
        let command = Command::Maintenance {
            now_ms: super::now_ms(),
            producer_idle_ms: policy.producer_idle_ms,
        };
        // A lost leadership or a failed round is fine: the next leader's next tick catches up.
        let deadline = std::time::Instant::now() + every;
        match group.write(command, deadline).await {
            Ok(_) | Err(WriteError::NotLeader(_)) => {}
            Err(e) => tracing::warn!("housekeeping round failed: {e}"),
        }
    }
}

/// While this node leads the group, expires consumer-group members whose session ran out
/// ([`super::membership`]), four times a second.
pub async fn expire_group_members(group: Group, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let metrics = group.raft.server_metrics().borrow_watched().clone();
        if metrics.current_leader != Some(group.node_id) {
            continue;
        }
        group.expire_members(metrics.vote.leader_id.term).await;
    }
}
