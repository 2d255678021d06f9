//! Membership of a coordinated consumer group: a task that heartbeats the group on the leader
//! and keeps what the member was told. A member with nothing to report long-polls (the leader
//! holds its heartbeat until the group changes or an interval passes), so a rebalance reaches
//! it at once.
//!
//! The member owns the partitions the last answer assigned it plus those it still holds that
//! were taken from it (until it reports them released). Its reader ([`crate::consumer::Consumer`])
//! looks at [`Membership::assignment`] before each read: it stops reading a partition that is no
//! longer assigned, commits it and reports it released ([`Membership::set_held`]); it starts
//! reading a newly assigned one from the group's committed offset.
//!
//! Self-fencing: once two thirds of a session timeout have passed since the member *sent* its
//! last heartbeat that was answered, it stops reading every partition (the leader may soon expire
//! it and give them away) and joins again. An answer refused as fenced (the member is no longer in the group)
//! does the same at once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{pb, Client, Error};

/// Who the member is and how it joins.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub group: String,
    pub topic: String,
    /// Static membership: a member that comes back under the same instance id takes over its
    /// predecessor's partitions.
    pub instance_id: Option<String>,
    /// Asked for when the group has no members yet; 0: the node's default (10 s).
    pub session_timeout_ms: u32,
    /// "uniform" (the default) or "range", when the group has no members yet.
    pub assignor: String,
    pub client_id: String,
}

/// What the member was last told, as its reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub member_id: String,
    pub member_epoch: u64,
    /// Partitions of the topic the member may read.
    pub partitions: BTreeSet<u32>,
    /// Moves each time the member lost everything (fenced, or its session ran out locally): the
    /// reader must drop every partition without committing.
    pub fences: u64,
    /// When the member last lost everything: the local fence deadline, or when the answer saying
    /// it was fenced arrived.
    pub fenced_at: Option<std::time::Instant>,
}

#[derive(Debug)]
struct State {
    member_id: String,
    /// 0 until joined.
    epoch: u64,
    assigned: BTreeSet<u32>,
    /// What the reader holds (set by it); reported as `owned` when it differs from `reported`.
    held: BTreeSet<u32>,
    reported: Option<BTreeSet<u32>>,
    last_answered_sent: Option<Instant>,
    session_timeout: Duration,
    interval: Duration,
    fences: u64,
    fenced_at: Option<Instant>,
    /// A refusal the member cannot act on (an unknown topic, a limit): reported to the reader.
    failure: Option<Error>,
    leaving: bool,
}

/// A running membership. Dropping it stops the heartbeats without leaving (the session expires);
/// [`Membership::leave`] leaves at once.
pub struct Membership {
    client: Client,
    config: MemberConfig,
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Joins the group and waits for the first answer.
    pub async fn join(client: Client, config: MemberConfig) -> Result<Self, Error> {
        let state = Arc::new(Mutex::new(State {
            member_id: String::new(),
            epoch: 0,
            assigned: BTreeSet::new(),
            held: BTreeSet::new(),
            reported: None,
            last_answered_sent: None,
            session_timeout: Duration::from_secs(10),
            interval: Duration::from_secs(2),
            fences: 0,
            fenced_at: None,
            failure: None,
            leaving: false,
        }));
        // The first heartbeat in the caller's task, so that a refusal (unknown topic, limits)
        // is the caller's error.
        heartbeat_once(&client, &config, &state, Duration::ZERO).await?;
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(run(
            client.clone(),
            config.clone(),
            state.clone(),
            wake.clone(),
        ));
        Ok(Self {
            client,
            config,
            state,
            wake,
            task,
        })
    }

    /// What the member owns now; an error when the group refused it for good.
    pub fn assignment(&self) -> Result<Assignment, Error> {
        let mut state = self.state.lock().expect("membership lock");
        expire_locally(&mut state);
        if let Some(e) = state.failure.take() {
            return Err(e);
        }
        Ok(Assignment {
            member_id: state.member_id.clone(),
            member_epoch: state.epoch,
            partitions: state.assigned.clone(),
            fences: state.fences,
            fenced_at: state.fenced_at.map(Instant::into_std),
        })
    }

    /// The member's id and epoch, for fenced commits.
    pub fn member(&self) -> (String, i64) {
        let state = self.state.lock().expect("membership lock");
        (state.member_id.clone(), state.epoch as i64)
    }

    /// The partitions the reader holds now; released ones are reported at once.
    pub fn set_held(&self, held: BTreeSet<u32>) {
        let mut state = self.state.lock().expect("membership lock");
        if state.held != held {
            state.held = held;
            self.wake.notify_one();
        }
    }

    /// Leaves the group: its partitions move to the other members at once.
    pub async fn leave(self) -> Result<(), Error> {
        self.task.abort();
        let (member_id, joined) = {
            let mut state = self.state.lock().expect("membership lock");
            state.leaving = true;
            (state.member_id.clone(), state.epoch > 0)
        };
        if !joined {
            return Ok(());
        }
        let request = pb::GroupHeartbeatRequest {
            group: self.config.group.clone(),
            member_id,
            member_epoch: -1,
            ..Default::default()
        };
        match self.client.group_heartbeat(request).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_member_fenced() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// When the member must have stopped reading if no heartbeat is answered before: two thirds of
/// a session timeout after it sent its last answered one. The leader expires it a whole session
/// after it heard that heartbeat (later than it was sent); the third left over covers a reader
/// busy with its last records, and a machine slow to run this task.
fn fence_deadline(state: &State) -> Option<Instant> {
    let sent = state.last_answered_sent?;
    Some(sent + state.session_timeout * 2 / 3)
}

/// Past the fence deadline the member may be about to be expired: it drops everything and joins
/// again.
fn expire_locally(state: &mut State) {
    let Some(deadline) = fence_deadline(state) else {
        return;
    };
    if Instant::now() >= deadline {
        tracing::warn!(
            member_id = %state.member_id,
            "no heartbeat answered within two thirds of the session timeout; dropping every partition and rejoining"
        );
        fence(state, deadline);
    }
}

/// Drops everything the member was given; `at`: when it stopped owning it.
fn fence(state: &mut State, at: Instant) {
    state.member_id.clear();
    state.epoch = 0;
    state.assigned.clear();
    state.reported = None;
    state.last_answered_sent = None;
    state.fences += 1;
    state.fenced_at = Some(at);
}

/// Heartbeats for as long as the membership runs. A member with nothing to report long-polls:
/// its heartbeat asks the leader to hold the answer until the group changes or an interval
/// passes, so it learns of a rebalance at once; a release to report (the reader woke it) or the
/// fence deadline cuts the wait short. Joining and reporting released partitions go at once.
async fn run(client: Client, config: MemberConfig, state: Arc<Mutex<State>>, wake: Arc<Notify>) {
    loop {
        let (steady, interval, until_fence) = {
            let mut s = state.lock().expect("membership lock");
            expire_locally(&mut s);
            if s.leaving {
                return;
            }
            let steady = s.epoch > 0 && s.reported.as_ref() == Some(&s.held);
            // Wake up at the fence deadline too, so that the member fences on time.
            let until_fence = fence_deadline(&s)
                .map(|d| d.saturating_duration_since(Instant::now()) + Duration::from_millis(1));
            (steady, s.interval, until_fence)
        };
        let fence_wait = until_fence.unwrap_or(interval);
        let sent = Instant::now();
        // Joining or reporting goes at once; only a steady member's heartbeat waits (and may be
        // cut short: it changes nothing).
        let wait = if steady { interval } else { Duration::ZERO };
        let pause = tokio::select! {
            answered = heartbeat_once(&client, &config, &state, wait) => match answered {
                Ok(false) if steady => {
                    // Nothing new before the wait was over: a node that does not hold
                    // heartbeats. Keep to one per interval.
                    Some((sent + interval).saturating_duration_since(Instant::now()))
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(group = %config.group, error = %e, "heartbeat failed");
                    // Not in a tight loop when the cluster refuses at once.
                    Some(Duration::from_millis(200))
                }
            },
            () = wake.notified(), if steady => None,
            () = tokio::time::sleep(fence_wait), if until_fence.is_some() => None,
        };
        if let Some(pause) = pause.filter(|p| !p.is_zero()) {
            let _ = tokio::time::timeout(pause.min(fence_wait), wake.notified()).await;
        }
    }
}

/// Sends one heartbeat and takes in its answer; true when the answer changed what the member
/// owns or who it is (news), or it was fenced.
async fn heartbeat_once(
    client: &Client,
    config: &MemberConfig,
    state: &Mutex<State>,
    wait: Duration,
) -> Result<bool, Error> {
    let (request, owned) = {
        let s = state.lock().expect("membership lock");
        let joining = s.epoch == 0;
        let owned = (s.reported.as_ref() != Some(&s.held)).then(|| s.held.clone());
        let request = pb::GroupHeartbeatRequest {
            group: config.group.clone(),
            member_id: s.member_id.clone(),
            member_epoch: s.epoch as i64,
            instance_id: config.instance_id.clone().unwrap_or_default(),
            subscription: joining.then(|| pb::Subscription {
                topics: vec![config.topic.clone()],
            }),
            owned: owned.as_ref().map(|held| pb::OwnedPartitions {
                topics: vec![pb::TopicPartitions {
                    topic: config.topic.clone(),
                    partitions: held.iter().copied().collect(),
                }],
            }),
            client_id: config.client_id.clone(),
            client_host: hostname(),
            session_timeout_ms: config.session_timeout_ms,
            assignor: config.assignor.clone(),
            wait_ms: wait.as_millis().min(u128::from(u32::MAX)) as u32,
        };
        (request, owned)
    };
    let sent = Instant::now();
    match client.group_heartbeat(request).await {
        Ok(answer) => {
            let mut s = state.lock().expect("membership lock");
            let assigned: BTreeSet<u32> = answer
                .assigned
                .iter()
                .filter(|tp| tp.topic == config.topic)
                .flat_map(|tp| tp.partitions.iter().copied())
                .collect();
            let news = s.member_id != answer.member_id
                || s.epoch != answer.member_epoch
                || s.assigned != assigned;
            s.member_id = answer.member_id;
            s.epoch = answer.member_epoch;
            s.assigned = assigned;
            if owned.is_some() {
                s.reported = owned;
            }
            s.last_answered_sent = Some(sent);
            s.session_timeout = Duration::from_millis(u64::from(answer.session_timeout_ms.max(1)));
            s.interval = Duration::from_millis(u64::from(answer.heartbeat_interval_ms.max(50)));
            Ok(news)
        }
        Err(e) if e.is_member_fenced() => {
            let mut s = state.lock().expect("membership lock");
            tracing::warn!(member_id = %s.member_id, error = %e, "fenced; dropping every partition and rejoining");
            fence(&mut s, Instant::now());
            Ok(true)
        }
        Err(e) => {
            if e.is_definite() && !crate::consumer::is_node_failure(&e) {
                state.lock().expect("membership lock").failure = Some(e.clone());
            }
            Err(e)
        }
    }
}

/// This machine's name, for `group describe`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
