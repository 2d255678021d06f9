//! The replicated core under real conditions: real `raftlog-node` processes on loopback sockets,
//! each on its own RocksDB, crashed with kill -9. Each test builds its own cluster, drives it
//! through the public gRPC API and checks what a user relies on: acknowledged records are on every
//! node at the offsets their acks named, and replicas end byte-identical (state digest).

mod support;

use std::time::Duration;

use support::{assert_digests_equal, produce_values, read_all, NodeOptions, TestCluster};

/// Snapshot often and keep a short log tail, even for a follower that is down, so tests exercise
/// purging and snapshot transfer.
fn snapshot_often() -> NodeOptions {
    NodeOptions {
        args: [
            "--snapshot-logs-since-last-max",
            "100",
            "--snapshot-logs-kept",
            "10",
            "--log-bytes-kept-for-followers-max",
            "0",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        ..Default::default()
    }
}

async fn assert_all_nodes_hold(
    cluster: &TestCluster,
    ids: &[u64],
    topic: &str,
    acked: &[(u64, String)],
) {
    for &id in ids {
        let log = read_all(cluster, id, topic, 0).await;
        for (offset, value) in acked {
            assert_eq!(
                log.get(*offset as usize).map(|(_, v)| v),
                Some(value),
                "node {id}: acknowledged {value} at offset {offset} is missing or moved"
            );
        }
        // Offsets are dense from 0.
        assert!(
            log.iter().enumerate().all(|(i, (o, _))| *o == i as u64),
            "node {id}: offsets not dense"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_is_elected_and_writes_reach_every_node() {
    let cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    assert!((1..=3).contains(&leader));

    // Writes sent to a follower are forwarded to the leader.
    let follower = if leader == 1 { 2 } else { 1 };
    let client = cluster.client_of(follower);
    client.create_topic("events", 1).await.unwrap();
    let acked = produce_values(&client, "events", 0, "v", 200).await;
    assert_eq!(
        acked.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        (0..200).collect::<Vec<_>>()
    );

    let digests = cluster.wait_converged(&[1, 2, 3]).await;
    assert_digests_equal(&digests);
    assert_all_nodes_hold(&cluster, &[1, 2, 3], "events", &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_another_and_the_old_one_catches_up() {
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    let old_leader = cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("orders", 1).await.unwrap();
    let mut acked = produce_values(&client, "orders", 0, "before", 100).await;

    cluster.kill9(old_leader);
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, old_leader, "a killed node cannot stay leader");

    // The same client keeps writing: it follows the new leader.
    acked.extend(produce_values(&client, "orders", 0, "during", 100).await);

    cluster.spawn(old_leader);
    let digests = cluster.wait_converged(&[1, 2, 3]).await;
    assert_digests_equal(&digests);
    assert_all_nodes_hold(&cluster, &[1, 2, 3], "orders", &acked).await;

    // A whole-cluster crash loses nothing that was acknowledged.
    for id in 1..=3 {
        cluster.kill9(id);
    }
    for id in 1..=3 {
        cluster.spawn(id);
    }
    let digests = cluster.wait_converged(&[1, 2, 3]).await;
    assert_digests_equal(&digests);
    assert_all_nodes_hold(&cluster, &[1, 2, 3], "orders", &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_the_purged_log_catches_up_through_a_snapshot() {
    let mut cluster = TestCluster::start(3, snapshot_often());
    let leader = cluster.wait_for_leader().await;
    let lagging = if leader == 3 { 2 } else { 3 };
    let client = cluster.client();
    client.create_topic("ledger", 1).await.unwrap();
    let mut acked = produce_values(&client, "ledger", 0, "a", 20).await;

    cluster.kill9(lagging);
    acked.extend(produce_values(&client, "ledger", 0, "b", 400).await);
    let lagging_last = 20 + 5; // at most what it had; the leader purges far past it
    let purged = cluster
        .wait_for(
            "the leader to purge its log",
            Duration::from_secs(30),
            || async {
                let s = cluster.status(leader).await?;
                (s.purged_index > lagging_last + 100).then_some(s.purged_index)
            },
        )
        .await;
    assert!(purged > 0);

    cluster.spawn(lagging);
    let digests = cluster.wait_converged(&[1, 2, 3]).await;
    assert_digests_equal(&digests);
    let status = cluster.status(lagging).await.unwrap();
    assert!(
        status.snapshot_index >= purged,
        "node {lagging} should hold a snapshot covering the purged log ({} < {purged})",
        status.snapshot_index
    );
    assert_all_nodes_hold(&cluster, &[1, 2, 3], "ledger", &acked).await;

    // Restart from snapshot plus log tail.
    cluster.kill9(lagging);
    cluster.spawn(lagging);
    let digests = cluster.wait_converged(&[1, 2, 3]).await;
    assert_digests_equal(&digests);
}

/// A follower that was down catches up from the leader's log, not by a snapshot of everything,
/// while what it missed is within `log_bytes_kept_for_followers_max`: the leader snapshots as
/// usual but keeps the log from where that follower stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_was_down_catches_up_from_the_log_the_leader_kept_for_it() {
    let options = NodeOptions {
        args: ["--snapshot-logs-since-last-max", "100"]
            .into_iter()
            .map(String::from)
            .collect(),
        ..Default::default()
    };
    let mut cluster = TestCluster::start(3, options);
    let leader = cluster.wait_for_leader().await;
    let lagging = if leader == 3 { 2 } else { 3 };
    let client = cluster.client();
    client.create_topic("ledger", 1).await.unwrap();
    let mut acked = produce_values(&client, "ledger", 0, "a", 20).await;
    let before = cluster.status(leader).await.unwrap().committed_index;

    cluster.kill9(lagging);
    acked.extend(produce_values(&client, "ledger", 0, "b", 400).await);
    let snapshot = cluster
        .wait_for(
            "the leader to snapshot past the stopped follower",
            Duration::from_secs(30),
            || async {
                let s = cluster.status(leader).await?;
                (s.snapshot_index > before + 100).then_some(s.snapshot_index)
            },
        )
        .await;
    let status = cluster.status(leader).await.unwrap();
    assert!(
        status.purged_index <= before,
        "the leader purged past what node {lagging} holds ({} > {before}; snapshot {snapshot})",
        status.purged_index
    );

    cluster.spawn(lagging);
    let digests = cluster.wait_converged(&[1, 2, 3]).await;
    assert_digests_equal(&digests);
    assert_all_nodes_hold(&cluster, &[1, 2, 3], "ledger", &acked).await;
    let metrics = cluster.metrics(lagging).await;
    let installed = metrics
        .lines()
        .find(|l| l.starts_with("raftlog_snapshots_installed_total"))
        .and_then(|l| l.split_whitespace().last())
        .map_or(0.0, |v| v.parse::<f64>().unwrap());
    assert_eq!(
        installed, 0.0,
        "node {lagging} installed a snapshot:\n{metrics}"
    );
    // Once every follower has the entries, the leader purges up to its snapshot again.
    cluster
        .wait_for(
            "the leader to purge once every follower caught up",
            Duration::from_secs(30),
            || async {
                let s = cluster.status(leader).await?;
                (s.purged_index > before).then_some(())
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_as_learner_becomes_voter_and_is_removed() {
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("members", 1).await.unwrap();
    let mut acked = produce_values(&client, "members", 0, "x", 50).await;

    let new_id = cluster.add_node_process();
    let addr = cluster.node(new_id).grpc.clone();
    let membership = client.add_learner(new_id, &addr, true).await.unwrap();
    assert!(
        membership.learners.iter().any(|m| m.node_id == new_id),
        "{membership:?}"
    );

    let promoted = client.promote_voter(new_id).await.unwrap();
    assert_eq!(
        promoted
            .voters
            .iter()
            .map(|m| m.node_id)
            .collect::<Vec<_>>(),
        vec![1, 2, 3, new_id]
    );
    acked.extend(produce_values(&client, "members", 0, "y", 50).await);
    let digests = cluster.wait_converged(&[1, 2, 3, new_id]).await;
    assert_digests_equal(&digests);
    assert_all_nodes_hold(&cluster, &[1, 2, 3, new_id], "members", &acked).await;

    let removed = client.remove_node(new_id).await.unwrap();
    assert_eq!(
        removed.voters.iter().map(|m| m.node_id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(removed.learners.is_empty());
    cluster.kill9(new_id);
    acked.extend(produce_values(&client, "members", 0, "z", 20).await);
    let digests = cluster.wait_converged(&[1, 2, 3]).await;
    assert_digests_equal(&digests);
    assert_all_nodes_hold(&cluster, &[1, 2, 3], "members", &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_on_large_entries_catches_up() {
    // openraft gives each AppendEntries one heartbeat interval (150 ms) and sends up to 300
    // entries at once: a follower 300 entries of ~1 MiB behind would never catch up, so the node
    // caps each AppendEntries near 1 MiB (docs/decisions.md, "AppendEntries carry about 1 MiB at
    // most").
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let client = cluster.client();
    client.create_topic("large", 1).await.unwrap();
    cluster.kill9(follower);

    // 120 batches of 1,000 records of 1 KiB (~1 MiB each) while the follower is down.
    let value = bytes::Bytes::from(vec![b'v'; 1024]);
    for _ in 0..120 {
        let records = (0..1000)
            .map(|_| raftlog_client::record(value.clone()))
            .collect();
        client.produce("large", 0, records).await.unwrap();
    }
    cluster.spawn(follower);
    let digests = cluster.wait_converged(&[1, 2, 3]).await;
    assert_digests_equal(&digests);
    let end = cluster.status(follower).await.unwrap().applied_index;
    assert!(end >= 120, "the follower applied the large entries");
}
