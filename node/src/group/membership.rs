//! Coordinated consumer groups on the leader: the heartbeat path and member sessions.
//!
//! What goes through Raft: a heartbeat that changes the group (a join, a leave, a subscription,
//! partitions released, a partition granted) is proposed as `Command::GroupHeartbeat`, stamped
//! with the leader's clock and the id a joining member gets. A heartbeat that would change
//! nothing (the leader applies it to a copy of the group and compares) is answered from the
//! applied state after a read barrier, and only refreshes the member's liveness, which the
//! leader keeps here in memory: 100 idle members cost 100 small RPCs per heartbeat interval and
//! no log entry (docs/decisions.md, "Consumer-group liveness stays on the leader"). A member
//! that already knows its answer may ask for it to be held (`wait_ms`, the API's long poll)
//! until the state machine publishes a membership change
//! (`StateView::coordination_changes`): members learn of a rebalance when it happens, not at
//! their next heartbeat.
//!
//! Expiry: the leader proposes `Command::ExpireGroupMember` for a member it has not heard from
//! within its group's session timeout. A new leader knows no heartbeat times: it counts every
//! member as heard from when it took over (one session of grace) rather than expiring them all.
//!
//! Why no two members own a partition even across leader changes: a member stops reading every
//! partition once a session timeout (the Rust client: two thirds of one) has passed since it
//! *sent* its last heartbeat that was answered; an answer comes only from a leader confirmed by a quorum (the read barrier, or the
//! commit of the heartbeat's entry), which heard it after it was sent; any later leader took over
//! after that answer and grants one session of grace from then. So every leader's expiry comes
//! after the member has stopped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Group, WriteError};
use raftlog_core::coordination::{Answer, Coordination, Heartbeat, Stamp};
use raftlog_core::{Command, CommandResponse, Rejection};

/// Liveness of the members of every coordinated group of one Raft group, as its leader heard.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<SessionsInner>,
}

#[derive(Default)]
struct SessionsInner {
    /// The term this node last led in, and since when it has led in it.
    leading: Option<(u64, Instant)>,
    /// (group, member id) → when its last heartbeat arrived.
    heard: HashMap<(String, String), Instant>,
}

impl Sessions {
    /// Records that `member` of `group` was heard from at `at`.
    fn heard(&self, group: &str, member: &str, at: Instant) {
        let mut inner = self.inner.lock().expect("sessions lock");
        inner
            .heard
            .insert((group.to_string(), member.to_string()), at);
    }

    /// Called while this node leads in `term`: on a new term, every member's clock restarts
    /// (one session of grace after a leader change).
    fn leading(&self, term: u64, now: Instant) {
        let mut inner = self.inner.lock().expect("sessions lock");
        if inner.leading.map(|(t, _)| t) != Some(term) {
            inner.leading = Some((term, now));
            inner.heard.clear();
        }
    }

    /// When `member` of `group` was last heard from, as far as this leader can tell.
    fn last_heard(&self, group: &str, member: &str) -> Option<Instant> {
        let inner = self.inner.lock().expect("sessions lock");
        let since = inner.leading.map(|(_, since)| since)?;
        let heard = inner
            .heard
            .get(&(group.to_string(), member.to_string()))
            .copied();
        Some(heard.map_or(since, |h| h.max(since)))
    }

    /// Forgets the members no longer in `groups` (left, expired, removed).
    fn retain(&self, live: impl Fn(&str, &str) -> bool) {
        let mut inner = self.inner.lock().expect("sessions lock");
        inner.heard.retain(|(group, member), _| live(group, member));
    }
}

/// Why a heartbeat got no answer from the group.
#[derive(Debug)]
pub enum HeartbeatError {
    /// The group refused it (unknown member, limits): answered to the member as is.
    Rejected(Rejection),
    Write(WriteError),
}

impl From<WriteError> for HeartbeatError {
    fn from(e: WriteError) -> Self {
        HeartbeatError::Write(e)
    }
}

impl Group {
    /// Serves one heartbeat of `group`'s member on the leader: through the log when it changes
    /// the group, from the applied state otherwise (see the module doc).
    /// `principal`: the caller's, when auth is on: a heartbeat that creates the group is
    /// proposed on its behalf (`Command::OnBehalfOf`: its creation caps, the group's owner).
    pub async fn group_heartbeat(
        &self,
        group: &str,
        (heartbeat, stamp): (Heartbeat, Stamp),
        groups_max: u32,
        principal: Option<String>,
        deadline: Instant,
    ) -> Result<Answer, HeartbeatError> {
        let arrived = Instant::now();
        // Answer only as a leader a quorum still follows, with everything committed applied;
        // then a heartbeat that changes nothing (the common, idle one) needs no log entry.
        self.read_barrier().await?;
        let current = self.view.coordination(group).unwrap_or_default();
        let topics = self.view.topic_table();
        if let Some(unchanged) = current.answer_unchanged(&heartbeat, &stamp, &topics) {
            let answer = unchanged.map_err(|e| {
                HeartbeatError::Rejected(Rejection::from_group_error(e, group, &topics))
            })?;
            self.sessions.heard(group, &answer.member_id, arrived);
            return Ok(answer);
        }
        let mut command = Command::GroupHeartbeat {
            group: group.to_string(),
            heartbeat: Box::new(heartbeat),
            stamp: Box::new(stamp),
            groups_max,
        };
        let new_group = !self.view.group_exists(group);
        if let Some(principal) = principal.filter(|_| new_group) {
            command = Command::OnBehalfOf {
                principal,
                command: Box::new(command),
            };
        }
        match self.write(command, deadline).await? {
            CommandResponse::Member(answer) => {
                self.sessions.heard(group, &answer.member_id, arrived);
                Ok(*answer)
            }
            CommandResponse::Rejected(r) => Err(HeartbeatError::Rejected(r)),
            other => Err(HeartbeatError::Write(WriteError::OutcomeUnknown(format!(
                "unexpected answer to a heartbeat: {other:?}"
            )))),
        }
    }

    /// One round of session expiry, while this node leads: proposes the expiry of every member
    /// not heard from within its group's session timeout.
    pub(super) async fn expire_members(&self, term: u64) {
        let now = Instant::now();
        self.sessions.leading(term, now);
        let groups = self.view.coordinations();
        self.sessions.retain(|group, member| {
            groups
                .get(group)
                .is_some_and(|c| c.members.contains_key(member))
        });
        for (group, coordination) in groups {
            for (member_id, epoch) in expired(&self.sessions, &group, &coordination, now) {
                let command = Command::ExpireGroupMember {
                    group: group.clone(),
                    member_id: member_id.clone(),
                    member_epoch: epoch,
                };
                let deadline = Instant::now() + Duration::from_secs(5);
                match self.write(command, deadline).await {
                    Ok(CommandResponse::MemberRemoved { removed: true }) => {
                        metrics::counter!(crate::metrics::GROUP_MEMBERS_EXPIRED).increment(1);
                        tracing::info!(group, member_id, "group member's session expired");
                    }
                    // Its epoch moved meanwhile (it heartbeated): the next round judges again.
                    Ok(_) | Err(WriteError::NotLeader(_)) => {}
                    Err(e) => tracing::warn!(group, member_id, "expiring a member failed: {e}"),
                }
            }
        }
    }
}

/// The members of `group` whose session has run out, with the epoch the leader judged.
fn expired(
    sessions: &Sessions,
    group: &str,
    coordination: &Coordination,
    now: Instant,
) -> Vec<(String, u64)> {
    let timeout = Duration::from_millis(u64::from(coordination.session_timeout_ms));
    coordination
        .members
        .iter()
        .filter(|(id, _)| {
            sessions
                .last_heard(group, id)
                .is_some_and(|heard| now.saturating_duration_since(heard) > timeout)
        })
        .map(|(id, member)| (id.clone(), member.epoch))
        .collect()
}
