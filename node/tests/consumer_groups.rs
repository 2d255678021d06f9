//! Coordinated consumer groups on a 3-node cluster of real processes: members join, are assigned
//! partitions, rebalance as members come, go and die, and together read every record; commits
//! are fenced by ownership; the group survives a leader kill and a full restart.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftlog_client::consumer::{Consumer, ConsumerConfig, StartFrom};
use raftlog_client::{pb, record, Client};
use support::{sample, NodeOptions, TestCluster};
use tokio::task::JoinHandle;
use tonic::Code;

const TOPIC: &str = "jobs";
const GROUP: &str = "workers";
const PARTITIONS: u32 = 12;
/// Short, so that a dead member's partitions move within the test's patience.
const SESSION_MS: u32 = 3000;

/// What every member read, by partition: the offsets (repeats allowed).
type Consumed = Arc<Mutex<BTreeMap<u32, Vec<u64>>>>;

/// A member running in its own task: polls, records what it read, commits after each poll.
struct Member {
    task: JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

fn member_config() -> ConsumerConfig {
    let mut config = ConsumerConfig::new(TOPIC)
        .group(GROUP)
        .start(StartFrom::Beginning);
    config.session_timeout_ms = SESSION_MS;
    config
}

async fn start_member(client: Client, consumed: Consumed) -> Member {
    let mut consumer = Consumer::new(client, member_config()).await.unwrap();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            if *stopped.borrow() {
                // A graceful stop: commit and leave.
                consumer.close().await.unwrap();
                return;
            }
            let records = tokio::select! {
                r = consumer.poll(Duration::from_millis(300)) => r,
                _ = stopped.changed() => continue,
            };
            let Ok(records) = records else { continue };
            {
                let mut consumed = consumed.lock().unwrap();
                for r in &records {
                    consumed
                        .entry(r.partition)
                        .or_default()
                        .push(r.record.offset);
                }
            }
            if !records.is_empty() {
                let _ = consumer.commit().await;
            }
        }
    });
    Member { task, stop }
}

impl Member {
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
    }

    /// Dies without a word (as kill -9 would): its session has to expire.
    fn crash(self) {
        self.task.abort();
    }
}

/// Waits until the group is stable with `members` members, then checks: every partition has
/// exactly one owner, and the members' shares differ by at most one.
async fn wait_balanced(client: &Client, members: usize) -> pb::GroupInfo {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info = client.describe_group(GROUP).await.unwrap();
        let stable = info.state == "stable" && info.members.len() == members;
        if stable {
            let mut owners: BTreeMap<u32, usize> = BTreeMap::new();
            for m in &info.members {
                for tp in m.assigned.iter().chain(&m.revoking) {
                    for p in &tp.partitions {
                        *owners.entry(*p).or_default() += 1;
                    }
                }
            }
            assert_eq!(
                owners.len(),
                PARTITIONS as usize,
                "every partition owned: {info:?}"
            );
            assert!(owners.values().all(|n| *n == 1), "one owner each: {info:?}");
            let shares: Vec<usize> = info
                .members
                .iter()
                .map(|m| m.assigned.iter().map(|tp| tp.partitions.len()).sum())
                .collect();
            let (min, max) = (shares.iter().min(), shares.iter().max());
            assert!(max.unwrap() - min.unwrap() <= 1, "balanced: {shares:?}");
            assert_eq!(info.partitions_unassigned, 0);
            return info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group not stable with {members} members: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Produces one record to every partition, round after round, until stopped.
fn keep_producing(client: Client) -> (tokio::sync::watch::Sender<bool>, JoinHandle<()>) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut rounds = 0;
        while !*stopped.borrow() {
            for p in 0..PARTITIONS {
                let value = format!("{p}-{rounds}");
                // Through the leader's kill: retried (a record may then be stored twice, which
                // the check below does not mind).
                while client
                    .produce(TOPIC, p, vec![record(value.clone().into_bytes())])
                    .await
                    .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (stop, task)
}

/// Every offset of every partition below its end offset was read by some member.
fn assert_everything_read(consumed: &Consumed, ends: &BTreeMap<u32, u64>) {
    let consumed = consumed.lock().unwrap();
    for p in 0..PARTITIONS {
        let end = ends[&p];
        assert!(end > 0, "partition {p} got records");
        let read: BTreeSet<u64> = consumed.get(&p).into_iter().flatten().copied().collect();
        let missing: Vec<u64> = (0..end).filter(|o| !read.contains(o)).collect();
        assert!(
            missing.is_empty(),
            "partition {p}: offsets never read: {missing:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_partitions_one_owner_each_through_joins_leaves_and_crashes() {
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic(TOPIC, PARTITIONS).await.unwrap();
    let consumed: Consumed = Default::default();
    let (stop_producing, producer) = keep_producing(client.clone());

    // One member reads everything.
    let mut members = vec![start_member(client.clone(), consumed.clone()).await];
    let info = wait_balanced(&client, 1).await;
    assert_eq!(info.assignor, "uniform");

    // Four: each gets three partitions; a partition moved only after its owner released it.
    for _ in 0..3 {
        members.push(start_member(client.clone(), consumed.clone()).await);
    }
    wait_balanced(&client, 4).await;
    // The group in the metrics, on every node.
    for id in 1..=3 {
        let page = cluster.metrics(id).await;
        let group = "group=\"workers\"";
        assert_eq!(sample(&page, "raftlog_group_members", group), Some(4.0));
        assert_eq!(
            sample(&page, "raftlog_group_partitions_unassigned", group),
            Some(0.0)
        );
    }

    // One leaves gracefully, one dies (its session expires), during which the leader is
    // killed: two remain with six partitions each.
    members.pop().unwrap().stop().await;
    members.pop().unwrap().crash();
    cluster.kill9(leader);
    cluster.spawn(leader);
    cluster.wait_for_leader().await;
    let info = wait_balanced(&client, 2).await;
    assert!(info.rebalances >= 3, "{info:?}");

    // Stop producing; the remaining members catch up on everything ever produced.
    let _ = stop_producing.send(true);
    producer.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let ends = loop {
        let info = client.describe_group(GROUP).await.unwrap();
        if info.total_lag == 0 && info.partitions.len() == PARTITIONS as usize {
            break info
                .partitions
                .iter()
                .map(|p| (p.partition, p.end_offset))
                .collect::<BTreeMap<u32, u64>>();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag stays: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_everything_read(&consumed, &ends);
    for member in members {
        member.stop().await;
    }
    // The last member's leave empties the group: its offsets stay.
    let info = client.describe_group(GROUP).await.unwrap();
    assert_eq!(info.state, "empty");
    assert!(info.members.is_empty());
    assert_eq!(info.total_lag, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_member_cannot_commit_and_the_group_survives_a_full_restart() {
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic(TOPIC, PARTITIONS).await.unwrap();
    for p in 0..PARTITIONS {
        client
            .produce(TOPIC, p, vec![record("x"), record("y")])
            .await
            .unwrap();
    }
    let join = |member_id: &str, epoch: i64| pb::GroupHeartbeatRequest {
        group: GROUP.into(),
        member_id: member_id.into(),
        member_epoch: epoch,
        subscription: Some(pb::Subscription {
            topics: vec![TOPIC.into()],
        }),
        session_timeout_ms: 60_000,
        ..Default::default()
    };
    let a = client.group_heartbeat(join("", 0)).await.unwrap();
    let owned: usize = a.assigned.iter().map(|tp| tp.partitions.len()).sum();
    assert_eq!(owned, PARTITIONS as usize);

    // A commit without a member, and a commit by a stranger, are refused and change nothing.
    let anonymous = client
        .commit_offsets(GROUP, TOPIC, [(0, 1)])
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::FailedPrecondition, "{anonymous}");
    let stranger = client
        .commit_offsets_as(GROUP, TOPIC, [(0, 1)], false, Some(("nobody", 1)))
        .await
        .unwrap_err();
    assert!(stranger.is_member_fenced(), "{stranger}");
    assert!(client.fetch_offsets(GROUP, TOPIC).await.unwrap().is_empty());

    // The owner commits; a second member joins and takes half, once the first released it.
    client
        .commit_offsets_as(
            GROUP,
            TOPIC,
            [(0, 1)],
            false,
            Some((&a.member_id, a.member_epoch as i64)),
        )
        .await
        .unwrap();
    let b = client.group_heartbeat(join("", 0)).await.unwrap();
    assert!(
        b.assigned.is_empty(),
        "nothing is free before the first releases: {b:?}"
    );
    let a2 = client
        .group_heartbeat(pb::GroupHeartbeatRequest {
            subscription: None,
            ..join(&a.member_id, a.member_epoch as i64)
        })
        .await
        .unwrap();
    let kept: Vec<u32> = a2.assigned[0].partitions.clone();
    assert_eq!(kept.len(), 6);
    let released = client
        .group_heartbeat(pb::GroupHeartbeatRequest {
            subscription: None,
            owned: Some(pb::OwnedPartitions {
                topics: vec![pb::TopicPartitions {
                    topic: TOPIC.into(),
                    partitions: kept.clone(),
                }],
            }),
            ..join(&a.member_id, a2.member_epoch as i64)
        })
        .await
        .unwrap();
    assert_eq!(released.assigned[0].partitions, kept);
    let b2 = client
        .group_heartbeat(pb::GroupHeartbeatRequest {
            subscription: None,
            ..join(&b.member_id, b.member_epoch as i64)
        })
        .await
        .unwrap();
    let taken: BTreeSet<u32> = b2.assigned[0].partitions.iter().copied().collect();
    assert_eq!(taken.len(), 6);
    assert!(taken.iter().all(|p| !kept.contains(p)));

    // The first member commits a partition it gave away: refused, nothing changes.
    let given_away = *taken.iter().next().unwrap();
    let refused = client
        .commit_offsets_as(
            GROUP,
            TOPIC,
            [(given_away, 2)],
            false,
            Some((&a.member_id, released.member_epoch as i64)),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    assert!(!client
        .fetch_offsets(GROUP, TOPIC)
        .await
        .unwrap()
        .contains_key(&given_away));

    // An operator removes the first member: it is fenced, its partitions go to the second.
    client
        .remove_group_member(GROUP, &a.member_id)
        .await
        .unwrap();
    let fenced = client
        .group_heartbeat(pb::GroupHeartbeatRequest {
            subscription: None,
            ..join(&a.member_id, released.member_epoch as i64)
        })
        .await
        .unwrap_err();
    assert!(fenced.is_member_fenced(), "{fenced}");
    // Describe is served from the answering node's applied state: let every node apply first.
    cluster.wait_converged(&[1, 2, 3]).await;
    let before = client.describe_group(GROUP).await.unwrap();

    // Every node restarts: the group keeps its epoch, members and assignment.
    for id in 1..=3 {
        cluster.kill9(id);
    }
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.wait_for_leader().await;
    // Each node re-applies its log once the new leader commits it: the group comes back as it
    // was, on every node.
    for id in 1..=3 {
        let node = cluster.client_of(id);
        let (before, node) = (&before, &node);
        cluster
            .wait_for(
                "the group as before the restart",
                Duration::from_secs(30),
                || async move {
                    let after = node.describe_group(GROUP).await.ok()?;
                    (after.epoch == before.epoch && after.members == before.members).then_some(())
                },
            )
            .await;
    }
    let digests = cluster.wait_converged(&[1, 2, 3]).await;
    assert!(digests.iter().all(|d| d.sha256 == digests[0].sha256));
}

/// A member that knows its assignment may have its heartbeat held by the leader (`wait_ms`):
/// a member leaving wakes it with the freed partitions at once; with nothing happening it is
/// answered when the wait is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_heartbeat_brings_news_of_a_leave() {
    let cluster = TestCluster::start(3, NodeOptions::default());
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic(TOPIC, PARTITIONS).await.unwrap();
    let beat = |member_id: &str, epoch: i64| pb::GroupHeartbeatRequest {
        group: GROUP.into(),
        member_id: member_id.into(),
        member_epoch: epoch,
        subscription: (epoch == 0).then(|| pb::Subscription {
            topics: vec![TOPIC.into()],
        }),
        // An interval of 12 s: longer than the client's request timeout (10 s), so an answer
        // that waited out its hold cannot pass for one woken by the leave.
        session_timeout_ms: 60_000,
        ..Default::default()
    };
    let count = |r: &pb::GroupHeartbeatResponse| -> usize {
        r.assigned.iter().map(|tp| tp.partitions.len()).sum()
    };
    // a takes everything; b joins, a releases half, b takes it.
    let a = client.group_heartbeat(beat("", 0)).await.unwrap();
    let b = client.group_heartbeat(beat("", 0)).await.unwrap();
    let a = client
        .group_heartbeat(beat(&a.member_id, a.member_epoch as i64))
        .await
        .unwrap();
    let kept = a.assigned[0].partitions.clone();
    let a = client
        .group_heartbeat(pb::GroupHeartbeatRequest {
            owned: Some(pb::OwnedPartitions {
                topics: vec![pb::TopicPartitions {
                    topic: TOPIC.into(),
                    partitions: kept,
                }],
            }),
            ..beat(&a.member_id, a.member_epoch as i64)
        })
        .await
        .unwrap();
    let b = client
        .group_heartbeat(beat(&b.member_id, b.member_epoch as i64))
        .await
        .unwrap();
    assert_eq!((count(&a), count(&b)), (6, 6));

    // Nothing happens: a held heartbeat is answered, unchanged, once its wait is over.
    let held_from = std::time::Instant::now();
    let same = client
        .group_heartbeat(pb::GroupHeartbeatRequest {
            wait_ms: 300,
            ..beat(&b.member_id, b.member_epoch as i64)
        })
        .await
        .unwrap();
    assert!(held_from.elapsed() >= Duration::from_millis(300));
    assert_eq!((same.member_epoch, count(&same)), (b.member_epoch, 6));

    // b waits; a leaves; b's held heartbeat comes back with all twelve partitions.
    let waiting = {
        let client = client.clone();
        let request = pb::GroupHeartbeatRequest {
            wait_ms: 60_000,
            ..beat(&b.member_id, b.member_epoch as i64)
        };
        tokio::spawn(async move { client.group_heartbeat(request).await })
    };
    // The leave must come after b's heartbeat is held: wait until the leader holds one.
    let leader = cluster.wait_for_leader().await;
    let cluster = &cluster;
    cluster
        .wait_for(
            "b's heartbeat held",
            Duration::from_secs(10),
            || async move {
                let page = cluster.metrics(leader).await;
                (sample(&page, "raftlog_group_heartbeats_held", "") >= Some(1.0)).then_some(())
            },
        )
        .await;
    client
        .group_heartbeat(pb::GroupHeartbeatRequest {
            member_epoch: -1,
            ..beat(&a.member_id, 0)
        })
        .await
        .unwrap();
    let news = waiting.await.unwrap().unwrap();
    assert_eq!(count(&news), PARTITIONS as usize, "{news:?}");
    assert!(news.member_epoch > b.member_epoch);
}
