//! Consumer-group coordination, as a pure function of the replicated state: members, their
//! subscriptions, the target assignment an assignor computes, and each member's way to it.
//!
//! Shaped like Kafka's KIP-848: one heartbeat drives membership; the group epoch moves whenever
//! what the assignment depends on changes (members, subscriptions, the subscribed topics'
//! partitions); the target assignment is recomputed for it; each member reconciles towards its
//! target incrementally. A partition leaves a member's `assigned` set first for its `revoking`
//! set, and goes to its new owner only once the member reports it released (or the member is
//! gone). So the owned sets (`assigned ∪ revoking`) of two members never meet: at no moment do
//! two members own one partition, in any state a node holds.
//!
//! Everything here is deterministic: time comes from the leader's stamp in the command, member
//! ids from the leader too, and every collection is ordered.

use crate::test_bug;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A topic by id (never reused) and one of its partitions.
pub type TopicPartition = (u64, u32);

/// Which assignor computes a group's target assignment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Assignor {
    /// Balanced over all members (±1 where subscriptions are alike), moving as few partitions
    /// as possible when members come and go.
    #[default]
    Uniform,
    /// Per topic, contiguous ranges of partitions to the members subscribed to it, in member id
    /// order (Kafka's range assignor).
    Range,
}

/// One member of a coordinated group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Static membership: a member that rejoins under the same instance id takes over the
    /// member it replaces, with its partitions (a rolling restart reshuffles nothing).
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Topic names.
    pub subscription: BTreeSet<String>,
    /// Moves each time the member's assignment changes.
    pub epoch: u64,
    /// Partitions the member has been told it owns.
    pub assigned: BTreeSet<TopicPartition>,
    /// Partitions taken from the member that it has not reported released yet: still its own,
    /// given to nobody else.
    pub revoking: BTreeSet<TopicPartition>,
    pub joined_at_ms: i64,
    /// The last heartbeat the log recorded (the leader keeps the live one in memory).
    pub last_heartbeat_ms: i64,
}

impl Member {
    /// Whether the member owns `partition` (it may be processing it).
    pub fn owns(&self, partition: &TopicPartition) -> bool {
        self.assigned.contains(partition) || self.revoking.contains(partition)
    }
}

/// The coordinated side of a consumer group (its committed offsets are kept apart).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coordination {
    /// Moves whenever what the target assignment depends on changes.
    pub epoch: u64,
    pub assignor: Assignor,
    pub session_timeout_ms: u32,
    pub members: BTreeMap<String, Member>,
    /// What each member should own, computed for `target_epoch`.
    pub target: BTreeMap<String, BTreeSet<TopicPartition>>,
    pub target_epoch: u64,
    /// The subscribed topics as the target saw them: name → (topic id, partitions).
    pub topics_seen: BTreeMap<String, (u64, u32)>,
    /// Target assignments computed so far (a metric).
    pub rebalances: u64,
}

/// The topics of the cluster, as the command's apply sees them: name → (topic id, partitions).
pub type Topics = BTreeMap<String, (u64, u32)>;

/// A member's heartbeat, as a command carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Empty to join.
    pub member_id: String,
    /// 0 to join, [`LEAVE_EPOCH`] to leave, else the member's epoch as it last learned it.
    pub member_epoch: i64,
    pub instance_id: Option<String>,
    /// The topics to read; `None` keeps the current subscription.
    pub subscription: Option<Vec<String>>,
    /// The partitions the member holds now; `None` when it reports nothing new.
    pub owned: Option<BTreeSet<TopicPartition>>,
    pub client_id: String,
    pub client_host: String,
}

/// The epoch a member sends to leave the group.
pub const LEAVE_EPOCH: i64 = -1;

/// What a heartbeat's apply needs besides the heartbeat: stamped by the leader that proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub now_ms: i64,
    /// The id a joining member gets (the leader draws it).
    pub new_member_id: String,
    pub members_max: u32,
    pub subscription_topics_max: u32,
    /// For a group's first member: its session timeout and assignor.
    pub session_timeout_ms: u32,
    pub assignor: Assignor,
}

/// What a member is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub member_id: String,
    pub member_epoch: u64,
    /// The partitions it owns now: it stops reading any other it holds, commits them and
    /// reports them released.
    pub assigned: BTreeSet<TopicPartition>,
}

/// Why a heartbeat (or a commit) is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupError {
    /// The member is not in the group (expired, removed, replaced): it must drop every
    /// partition and join again.
    UnknownMember(String),
    /// The member sent an epoch from the future: a bug or a confusion of members.
    FencedEpoch {
        member: String,
        sent: i64,
        current: u64,
    },
    TooManyMembers(u32),
    TooManyTopics {
        asked: usize,
        max: u32,
    },
    /// A commit for a partition the member does not own.
    NotOwner {
        member: String,
        partition: TopicPartition,
    },
    /// A commit without a member to a group that has members.
    CoordinatedGroup {
        members: usize,
    },
    /// A joining member's new id is already a member's (the leader draws ids at random: this
    /// does not happen, but apply must stay total).
    MemberIdTaken(String),
}

/// The name of topic `id` in `topics`, or a description of the id if it is gone.
pub fn topic_name(topics: &Topics, id: u64) -> String {
    topics
        .iter()
        .find(|(_, (topic_id, _))| *topic_id == id)
        .map_or_else(|| format!("topic id {id}"), |(name, _)| name.clone())
}

impl Coordination {
    /// Applies one heartbeat.
    pub fn heartbeat(
        &mut self,
        hb: &Heartbeat,
        stamp: &Stamp,
        topics: &Topics,
    ) -> Result<Answer, GroupError> {
        if self.members.is_empty() {
            self.session_timeout_ms = stamp.session_timeout_ms;
            self.assignor = stamp.assignor;
        }
        if let Some(subscription) = &hb.subscription {
            if subscription.len() > stamp.subscription_topics_max as usize {
                return Err(GroupError::TooManyTopics {
                    asked: subscription.len(),
                    max: stamp.subscription_topics_max,
                });
            }
        }
        let member_id = if hb.member_id.is_empty() {
            self.join(hb, stamp)?
        } else {
            let member = self
                .members
                .get(&hb.member_id)
                .ok_or_else(|| GroupError::UnknownMember(hb.member_id.clone()))?;
            if hb.member_epoch == LEAVE_EPOCH {
                self.remove(&hb.member_id);
                return Ok(Answer {
                    member_id: hb.member_id.clone(),
                    member_epoch: 0,
                    assigned: BTreeSet::new(),
                });
            }
            if hb.member_epoch > member.epoch as i64 {
                return Err(GroupError::FencedEpoch {
                    member: hb.member_id.clone(),
                    sent: hb.member_epoch,
                    current: member.epoch,
                });
            }
            hb.member_id.clone()
        };
        let member = self
            .members
            .get_mut(&member_id)
            .expect("joined or found above");
        member.last_heartbeat_ms = stamp.now_ms;
        if let Some(subscription) = &hb.subscription {
            let subscription: BTreeSet<String> = subscription.iter().cloned().collect();
            if subscription != member.subscription {
                member.subscription = subscription;
                self.epoch += 1;
            }
        }
        if let Some(owned) = &hb.owned {
            // Partitions it gave up are free now; the ones it still holds stay its own.
            member.revoking.retain(|p| owned.contains(p));
        }
        self.refresh_target(topics);
        self.reconcile(&member_id);
        let member = &self.members[&member_id];
        Ok(Answer {
            member_id,
            member_epoch: member.epoch,
            assigned: member.assigned.clone(),
        })
    }

    /// A new member, or a static member's new incarnation.
    fn join(&mut self, hb: &Heartbeat, stamp: &Stamp) -> Result<String, GroupError> {
        if self.members.contains_key(&stamp.new_member_id) {
            return Err(GroupError::MemberIdTaken(stamp.new_member_id.clone()));
        }
        let replaced = hb.instance_id.as_ref().and_then(|instance| {
            self.members
                .iter()
                .find(|(_, m)| m.instance_id.as_ref() == Some(instance))
                .map(|(id, _)| id.clone())
        });
        let mut member = Member {
            instance_id: hb.instance_id.clone(),
            client_id: hb.client_id.clone(),
            client_host: hb.client_host.clone(),
            subscription: BTreeSet::new(),
            epoch: 1,
            assigned: BTreeSet::new(),
            revoking: BTreeSet::new(),
            joined_at_ms: stamp.now_ms,
            last_heartbeat_ms: stamp.now_ms,
        };
        match replaced {
            // The new incarnation takes the old one's place: its partitions and target, no
            // change of group epoch, so nothing moves.
            Some(old_id) => {
                let old = self.members.remove(&old_id).expect("found above");
                member.subscription = old.subscription;
                member.assigned = old.assigned;
                member.revoking = old.revoking;
                member.epoch = old.epoch + 1;
                if let Some(target) = self.target.remove(&old_id) {
                    self.target.insert(stamp.new_member_id.clone(), target);
                }
            }
            None => {
                if self.members.len() >= stamp.members_max as usize {
                    return Err(GroupError::TooManyMembers(stamp.members_max));
                }
                self.epoch += 1;
            }
        }
        self.members.insert(stamp.new_member_id.clone(), member);
        Ok(stamp.new_member_id.clone())
    }

    /// Removes a member (it left, expired, or an admin removed it): its partitions, revoking
    /// ones included, are free at once.
    pub fn remove(&mut self, member_id: &str) -> bool {
        if self.members.remove(member_id).is_none() {
            return false;
        }
        self.target.remove(member_id);
        self.epoch += 1;
        true
    }

    /// Expires a member the leader has not heard from within the session timeout, if it is
    /// still the incarnation the leader saw (`epoch`).
    pub fn expire(&mut self, member_id: &str, epoch: u64) -> bool {
        match self.members.get(member_id) {
            Some(member) if member.epoch == epoch => self.remove(member_id),
            _ => false,
        }
    }

    /// Recomputes the target assignment when the epoch moved or the subscribed topics changed.
    fn refresh_target(&mut self, topics: &Topics) {
        let subscribed: BTreeSet<&String> = self
            .members
            .values()
            .flat_map(|m| m.subscription.iter())
            .collect();
        let seen: BTreeMap<String, (u64, u32)> = subscribed
            .into_iter()
            .filter_map(|name| topics.get(name).map(|t| (name.clone(), *t)))
            .collect();
        if seen != self.topics_seen {
            self.topics_seen = seen;
            self.epoch += 1;
        }
        // Partitions of topics gone (deleted) are owned by nobody any more.
        let live: BTreeSet<u64> = self.topics_seen.values().map(|(id, _)| *id).collect();
        for member in self.members.values_mut() {
            member.assigned.retain(|(t, _)| live.contains(t));
            member.revoking.retain(|(t, _)| live.contains(t));
        }
        if self.target_epoch == self.epoch {
            return;
        }
        self.target = match self.assignor {
            Assignor::Range => assign_range(&self.members, &self.topics_seen),
            Assignor::Uniform => assign_uniform(&self.members, &self.topics_seen),
        };
        self.target_epoch = self.epoch;
        self.rebalances += 1;
    }

    /// Moves one member towards its target: what it should no longer own goes to `revoking`;
    /// what it should own and nobody else owns is added. Its epoch moves if anything changed.
    fn reconcile(&mut self, member_id: &str) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let taken: BTreeSet<TopicPartition> = self
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != member_id)
            .flat_map(|(_, m)| m.assigned.iter().chain(m.revoking.iter()).copied())
            .collect();
        let member = self.members.get_mut(member_id).expect("a member");
        let mut changed = false;
        let revoke: Vec<TopicPartition> = member.assigned.difference(&target).copied().collect();
        for p in revoke {
            member.assigned.remove(&p);
            member.revoking.insert(p);
            changed = true;
        }
        for p in &target {
            if member.assigned.contains(p) {
                continue;
            }
            // Its own again before it let go: no need to wait for itself.
            if member.revoking.remove(p) || !taken.contains(p) || test_bug("group-double-owner") {
                member.assigned.insert(*p);
                changed = true;
            }
        }
        if changed {
            member.epoch += 1;
        }
    }

    /// What applying `hb` would answer, if it changes nothing but the member's liveness (or is
    /// refused): the leader answers such a heartbeat from the state as it is, without the log.
    /// `None` when it changes the group and must go through the log.
    pub fn answer_unchanged(
        &self,
        hb: &Heartbeat,
        stamp: &Stamp,
        topics: &Topics,
    ) -> Option<Result<Answer, GroupError>> {
        let mut after = self.clone();
        let before = after
            .members
            .get(&hb.member_id)
            .map(|m| m.last_heartbeat_ms);
        let answer = match after.heartbeat(hb, stamp, topics) {
            Ok(answer) => answer,
            Err(refused) => return Some(Err(refused)),
        };
        if let (Some(before), Some(member)) = (before, after.members.get_mut(&hb.member_id)) {
            member.last_heartbeat_ms = before; // liveness alone is kept in memory
        }
        (after == *self).then_some(Ok(answer))
    }

    /// Whether applying `hb` would change the group (see [`Self::answer_unchanged`]).
    pub fn heartbeat_changes(&self, hb: &Heartbeat, stamp: &Stamp, topics: &Topics) -> bool {
        self.answer_unchanged(hb, stamp, topics).is_none()
    }

    /// Checks a commit of `partitions` by `member` (id, epoch), or by no member.
    pub fn check_commit(
        &self,
        member: Option<(&str, i64)>,
        partitions: impl IntoIterator<Item = TopicPartition>,
    ) -> Result<(), GroupError> {
        if test_bug("group-commit-any-member") {
            return Ok(());
        }
        let Some((member_id, epoch)) = member else {
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(GroupError::CoordinatedGroup {
                    members: self.members.len(),
                })
            };
        };
        let current = self
            .members
            .get(member_id)
            .ok_or_else(|| GroupError::UnknownMember(member_id.to_string()))?;
        if epoch > current.epoch as i64 {
            return Err(GroupError::FencedEpoch {
                member: member_id.to_string(),
                sent: epoch,
                current: current.epoch,
            });
        }
        for partition in partitions {
            if !current.owns(&partition) {
                return Err(GroupError::NotOwner {
                    member: member_id.to_string(),
                    partition,
                });
            }
        }
        Ok(())
    }
}

/// The partitions each member may be given: those of the topics it subscribes to.
fn eligible(
    members: &BTreeMap<String, Member>,
    topics: &BTreeMap<String, (u64, u32)>,
) -> BTreeMap<TopicPartition, Vec<String>> {
    let mut out: BTreeMap<TopicPartition, Vec<String>> = BTreeMap::new();
    for (name, (topic_id, partitions)) in topics {
        let subscribers: Vec<String> = members
            .iter()
            .filter(|(_, m)| m.subscription.contains(name))
            .map(|(id, _)| id.clone())
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        for p in 0..*partitions {
            out.insert((*topic_id, p), subscribers.clone());
        }
    }
    out
}

/// Kafka's range assignor: per topic, partitions in order split into contiguous ranges over the
/// subscribed members in id order, the first ones one larger.
fn assign_range(
    members: &BTreeMap<String, Member>,
    topics: &BTreeMap<String, (u64, u32)>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut target: BTreeMap<String, BTreeSet<TopicPartition>> = members
        .keys()
        .map(|id| (id.clone(), BTreeSet::new()))
        .collect();
    for (name, (topic_id, partitions)) in topics {
        let subscribers: Vec<&String> = members
            .iter()
            .filter(|(_, m)| m.subscription.contains(name))
            .map(|(id, _)| id)
            .collect();
        let n = subscribers.len() as u32;
        if n == 0 {
            continue;
        }
        let (base, extra) = (partitions / n, partitions % n);
        let mut next = 0;
        for (i, id) in subscribers.into_iter().enumerate() {
            let count = base + u32::from((i as u32) < extra);
            let set = target.get_mut(id).expect("every member has an entry");
            set.extend((next..next + count).map(|p| (*topic_id, p)));
            next += count;
        }
    }
    target
}

/// The uniform assignor: every partition to an eligible member, each member's count within one
/// of every other's where subscriptions allow, keeping partitions where they are whenever that
/// keeps the balance (a member joining takes only what it needs).
fn assign_uniform(
    members: &BTreeMap<String, Member>,
    topics: &BTreeMap<String, (u64, u32)>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let eligible = eligible(members, topics);
    let mut target: BTreeMap<String, BTreeSet<TopicPartition>> = members
        .keys()
        .map(|id| (id.clone(), BTreeSet::new()))
        .collect();
    // Sticky: a partition stays with the member that owns it, if that member may have it.
    let mut unplaced = Vec::new();
    for (partition, candidates) in &eligible {
        let owner = members
            .iter()
            .find(|(id, m)| m.owns(partition) && candidates.contains(id))
            .map(|(id, _)| id.clone());
        match owner {
            Some(id) => {
                target.get_mut(&id).expect("a member").insert(*partition);
            }
            None => unplaced.push(*partition),
        }
    }
    let load = |target: &BTreeMap<String, BTreeSet<TopicPartition>>, id: &String| target[id].len();
    // New or orphaned partitions to the least loaded eligible member (ties: lowest id).
    for partition in unplaced {
        let to = eligible[&partition]
            .iter()
            .min_by_key(|id| (load(&target, id), (*id).clone()))
            .expect("eligible partitions have candidates")
            .clone();
        target.get_mut(&to).expect("a member").insert(partition);
    }
    // Balance: move a partition from the most loaded member to an eligible member with at
    // least two fewer, until no such move exists. Each move lowers the sum of squared loads,
    // so this ends; the order of candidates is fixed, so every node computes the same.
    loop {
        let mut moved = false;
        let mut by_load: Vec<String> = target.keys().cloned().collect();
        by_load.sort_by_key(|id| (std::cmp::Reverse(load(&target, id)), id.clone()));
        'from: for from in &by_load {
            let from_load = load(&target, from);
            let partitions: Vec<TopicPartition> = target[from].iter().rev().copied().collect();
            for partition in partitions {
                let to = eligible[&partition]
                    .iter()
                    .filter(|id| *id != from && load(&target, id) + 2 <= from_load)
                    .min_by_key(|id| (load(&target, id), (*id).clone()));
                if let Some(to) = to.cloned() {
                    target.get_mut(from).expect("a member").remove(&partition);
                    target.get_mut(&to).expect("a member").insert(partition);
                    moved = true;
                    break 'from;
                }
            }
        }
        if !moved {
            return target;
        }
    }
}

#[cfg(test)]
mod tests;
