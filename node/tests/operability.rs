//! Operability on a 3-node cluster of real processes: `/metrics` reports sane values under load,
//! a rolling restart with SIGTERM under continuous produce loses, duplicates and fails nothing,
//! a node refuses produce while its disk is nearly full, and a node whose disk fills stops instead
//! of lingering.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftlog_client::consumer::{Consumer, ConsumerConfig};
use raftlog_client::producer::{Delivery, Producer, ProducerConfig};
use raftlog_client::{pb, record, Client};
use support::{assert_digests_equal, produce_values, read_all, sample, NodeOptions, TestCluster};

/// Sends numbered records round-robin to two partitions until `stop`, then flushes and returns
/// every delivery in send order.
fn keep_producing(client: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Delivery>> {
    let config = ProducerConfig {
        linger: Duration::from_millis(2),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config);
    tokio::spawn(async move {
        let mut pending = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let r = record(i.to_string().into_bytes());
            pending.push(producer.send_to("load", (i % 2) as u32, r).await.unwrap());
            i += 1;
            if i.is_multiple_of(50) {
                // Pace the load so the test machine (2 cores) keeps up with the restarts.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        producer.flush().await;
        let mut delivered = Vec::new();
        for (i, d) in pending.into_iter().enumerate() {
            delivered.push(d.await.unwrap_or_else(|e| panic!("record {i} failed: {e}")));
        }
        delivered
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_under_load_show_one_leader_no_lag_and_growing_counters() {
    let cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("load", 2).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = keep_producing(client.clone(), stop.clone());

    let produced = |page: &str| sample(page, "raftlog_records_in_total", "topic=\"load\"");
    let first = cluster
        .wait_for(
            "records counted on the leader",
            Duration::from_secs(20),
            || async { produced(&cluster.metrics(leader).await).filter(|n| *n > 0.0) },
        )
        .await;
    cluster
        .wait_for(
            "the counter to grow under load",
            Duration::from_secs(20),
            || async { produced(&cluster.metrics(leader).await).filter(|n| *n > first) },
        )
        .await;
    stop.store(true, Ordering::SeqCst);
    let delivered = load.await.unwrap();
    // A produce stream's messages are counted one by one, by outcome, like unary calls.
    client.create_topic("streamed", 1).await.unwrap();
    let stream = client.produce_stream();
    let streamed = |topic: &str| pb::ProduceRequest {
        topic: topic.into(),
        partition: Some(0),
        records: vec![record(b"s".to_vec())],
        ..Default::default()
    };
    for _ in 0..3 {
        stream.send(streamed("streamed")).await.unwrap();
    }
    let missing = stream
        .send(streamed("no-such-topic"))
        .await
        .expect_err("a topic that does not exist");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing}");
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::new("load").group("dash"))
        .await
        .unwrap();
    consumer.poll(Duration::from_secs(1)).await.unwrap();
    consumer.commit().await.unwrap();
    cluster.wait_converged(&[1, 2, 3]).await;

    let pages = [
        cluster.metrics(1).await,
        cluster.metrics(2).await,
        cluster.metrics(3).await,
    ];
    let leaders: f64 = pages
        .iter()
        .enumerate()
        .map(|(i, p)| sample(p, "raftlog_raft_is_leader", &format!("node=\"{}\"", i + 1)).unwrap())
        .sum();
    assert_eq!(leaders, 1.0, "exactly one node reports being leader");
    let leader_page = &pages[(leader - 1) as usize];
    assert_eq!(produced(leader_page), Some(delivered.len() as f64));
    for follower in (1..=3).filter(|id| *id != leader) {
        let lag = sample(
            leader_page,
            "raftlog_raft_replication_lag_entries",
            &format!("node=\"{leader}\",follower=\"{follower}\""),
        );
        assert_eq!(lag, Some(0.0), "follower {follower} caught up");
    }
    for (i, page) in pages.iter().enumerate() {
        let applied = sample(
            page,
            "raftlog_raft_applied_index",
            &format!("node=\"{}\"", i + 1),
        );
        let committed = sample(
            page,
            "raftlog_raft_committed_index",
            &format!("node=\"{}\"", i + 1),
        );
        assert!(
            applied.unwrap() > 0.0 && applied == committed,
            "node {}: {applied:?} {committed:?}",
            i + 1
        );
        assert!(sample(page, "raftlog_log_fsync_duration_seconds_count", "").unwrap() > 0.0);
        // The fsync thread's priority as reported is the one it runs at (-10 where the node may
        // lower it, its own otherwise).
        let pid = cluster.node(i as u64 + 1).child.as_ref().unwrap().id();
        assert_eq!(
            sample(page, "raftlog_log_fsync_thread_nice", ""),
            Some(f64::from(fsync_thread_nice(pid))),
            "node {}",
            i + 1
        );
        let end: f64 = (0..2)
            .map(|p| {
                sample(
                    page,
                    "raftlog_partition_end_offset",
                    &format!("topic=\"load\",partition=\"{p}\""),
                )
                .unwrap()
            })
            .sum();
        assert_eq!(end, delivered.len() as f64);
        // The group consumed some records and committed: its lag is what is left.
        let lag: f64 = (0..2)
            .filter_map(|p| {
                sample(
                    page,
                    "raftlog_group_lag",
                    &format!("group=\"dash\",topic=\"load\",partition=\"{p}\""),
                )
            })
            .sum();
        let positions: u64 = consumer.positions().values().sum();
        assert_eq!(lag, (delivered.len() as u64 - positions) as f64);
    }
    let ok = sample(
        leader_page,
        "raftlog_requests_total",
        "method=\"Produce\",code=\"Ok\"",
    );
    assert!(ok.unwrap() > 0.0);
    assert!(leader_page.contains("raftlog_request_duration_seconds_bucket{method=\"Produce\""));
    let streamed_with = |code: &str| {
        sample(
            leader_page,
            "raftlog_requests_total",
            &format!("method=\"ProduceStream\",code=\"{code}\""),
        )
    };
    assert_eq!(streamed_with("Ok"), Some(3.0));
    assert_eq!(streamed_with("NotFound"), Some(1.0));
    assert_eq!(
        sample(
            leader_page,
            "raftlog_request_duration_seconds_count",
            "method=\"ProduceStream\"",
        ),
        Some(4.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_sigterm_under_load_loses_duplicates_and_fails_nothing() {
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("load", 2).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = keep_producing(client.clone(), stop.clone());

    for id in 1..=3 {
        // Let some load through, then stop the node as an operator would, and start it again.
        let before = cluster
            .status(cluster.wait_for_leader().await)
            .await
            .unwrap()
            .committed_index;
        cluster
            .wait_for(
                "produce to make progress",
                Duration::from_secs(30),
                || async {
                    let leader = cluster.wait_for_leader().await;
                    let now = cluster.status(leader).await?.committed_index;
                    (now > before + 20).then_some(())
                },
            )
            .await;
        let status = cluster.terminate(id);
        assert!(
            status.success(),
            "node {id} exited with {status} on SIGTERM"
        );
        cluster.spawn(id);
        // The restarted node is back before the next one stops. Digests are compared once the
        // load has stopped: while it runs, three nodes are rarely at one applied index at the
        // moments they are asked (on a slow disk, not once in 30 s).
        cluster.wait_caught_up(&[1, 2, 3]).await;
    }
    stop.store(true, Ordering::SeqCst);
    let delivered = load.await.unwrap(); // every record acknowledged: none failed
    cluster.wait_converged(&[1, 2, 3]).await;

    for node in 1..=3 {
        for partition in 0..2u32 {
            let values: Vec<u64> = read_all(&cluster, node, "load", partition)
                .await
                .into_iter()
                .map(|(_, v)| v.parse().unwrap())
                .collect();
            let expected: Vec<u64> = (0..delivered.len() as u64)
                .filter(|i| i % 2 == u64::from(partition))
                .collect();
            assert_eq!(
                values, expected,
                "node {node} partition {partition}: lost, duplicated or reordered"
            );
        }
    }
    for (i, d) in delivered.iter().enumerate() {
        assert_eq!((d.partition, d.offset), ((i % 2) as u32, (i / 2) as u64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_leadership_over_before_it_exits() {
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    let old = cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("handover", 1).await.unwrap();
    let before = produce_values(&client, "handover", 0, "before", 100).await;
    let old_term = cluster.status(old).await.unwrap().term;

    let status = cluster.terminate(old);
    assert!(
        status.success(),
        "node {old} exited with {status} on SIGTERM"
    );

    // The old leader exits only after it has seen its successor lead. Without the handover no
    // survivor could lead yet: they would still be waiting out the old leader's lease.
    let mut leaders = Vec::new();
    for id in (1..=3).filter(|id| *id != old) {
        let s = cluster.status(id).await.unwrap();
        if s.role == pb::Role::Leader as i32 {
            assert!(s.term > old_term, "a new term for the new leader");
            leaders.push(id);
        }
    }
    assert_eq!(
        leaders.len(),
        1,
        "exactly one survivor leads when the old leader has exited"
    );

    // Writes go on at once, and nothing written before is lost.
    let after = produce_values(&client, "handover", 0, "after", 100).await;
    assert_eq!(after.first().map(|(offset, _)| *offset), Some(100));
    cluster.spawn(old);
    cluster.wait_converged(&[1, 2, 3]).await;
    let stored = read_all(&cluster, old, "handover", 0).await;
    assert_eq!(
        stored,
        [before, after].concat(),
        "every acknowledged record, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_from_a_follower_backup_holds_what_the_backup_held() {
    // docs/operations.md, "Backup and restore", step by step.
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let client = cluster.client();
    client.create_topic("ledger", 1).await.unwrap();
    let backed_up = produce_values(&client, "ledger", 0, "kept", 100).await;
    cluster.wait_converged(&[1, 2, 3]).await;

    // Backup: SIGTERM the follower (it flushes), copy its data directory, start it again.
    let status = cluster.terminate(follower);
    assert!(status.success());
    let backup = tempfile::tempdir().unwrap();
    copy_dir(&cluster.node(follower).data_dir, backup.path());
    cluster.spawn(follower);
    produce_values(&client, "ledger", 0, "after-backup", 50).await;

    // The whole cluster is lost; every node gets the backup and starts.
    for id in 1..=3 {
        cluster.kill9(id);
        let dir = cluster.node(id).data_dir.clone();
        std::fs::remove_dir_all(&dir).unwrap();
        copy_dir(backup.path(), &dir);
    }
    for id in 1..=3 {
        cluster.spawn(id);
    }
    let digests = cluster.wait_converged(&[1, 2, 3]).await;
    assert_digests_equal(&digests);
    for id in 1..=3 {
        assert_eq!(
            read_all(&cluster, id, "ledger", 0).await,
            backed_up,
            "node {id} holds exactly what was acknowledged before the backup"
        );
    }
    // And the restored cluster takes writes again.
    let more = produce_values(&cluster.client(), "ledger", 0, "restored", 1).await;
    assert_eq!(more[0].0, 100);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// A tmpfs mounted for the life of a test (root only, as the partition tests of the fault
/// harness), unmounted when dropped, even when the test panics.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: std::path::PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {size} tmpfs at {} failed: this test needs root",
            path.display()
        );
        Self(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(&self.0)
            .status();
    }
}

/// Incompressible 1 KiB values (xorshift), so RocksDB's compression cannot make room.
fn random_value(state: &mut u64) -> Vec<u8> {
    (0..128)
        .flat_map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            state.to_le_bytes()
        })
        .collect()
}

/// A node whose disk fills stops, with a non-zero exit status and the cause in its log, instead of
/// lingering as a member that can neither append nor apply; the two others go on acknowledging
/// every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_exits_and_the_others_keep_serving() {
    // The free-space guard off: this is the last line of defence, for a disk that fills anyway
    // (a follower does not check its disk for entries it replicates).
    let options = NodeOptions {
        args: vec!["--disk-free-bytes-min".into(), "0".into()],
        ..Default::default()
    };
    let mut cluster = TestCluster::start(3, options);
    cluster.wait_for_leader().await;
    // Node 3's Raft log database moves onto a 96 MiB disk (its few MB copied over); its own log
    // file stays on the real disk, so the line naming the failure can still be written.
    cluster.terminate(3);
    let log_db = cluster.node(3).data_dir.join("db");
    let log_db_before = log_db.with_file_name("db-before");
    std::fs::rename(&log_db, &log_db_before).unwrap();
    let _disk = SmallDisk::mount(log_db.clone(), "96m");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(log_db_before.join("."))
        .arg(&log_db)
        .status()
        .expect("run cp");
    assert!(copied.success(), "copying node 3's log database");
    cluster.spawn(3);
    cluster.wait_converged(&[1, 2, 3]).await;

    // 200 MB of incompressible records: more than node 3's disk holds.
    let client = cluster.client();
    client.create_topic("fill", 2).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut pending = Vec::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..200_000u32 {
        let value = random_value(&mut seed);
        pending.push(
            producer
                .send_to("fill", i % 2, record(value))
                .await
                .unwrap(),
        );
    }
    producer.flush().await;
    let mut offsets = [Vec::new(), Vec::new()];
    for (i, delivery) in pending.into_iter().enumerate() {
        let d = delivery
            .await
            .unwrap_or_else(|e| panic!("record {i} failed: {e}"));
        offsets[d.partition as usize].push(d.offset);
    }
    for (partition, mut got) in offsets.into_iter().enumerate() {
        got.sort_unstable();
        assert_eq!(
            got,
            (0..100_000).collect::<Vec<u64>>(),
            "partition {partition}: every record acknowledged once, at offsets 0.."
        );
    }

    // Polled (as `wait_for` polls the API): a process exit is not an event tokio can await on a
    // std child. On timeout the node is killed, so a failing test does not leave it running.
    let mut node3 = cluster.nodes[2].child.take().expect("node 3 was started");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = node3.try_wait().expect("poll node 3") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = node3.kill();
            let _ = node3.wait();
            cluster.dump_logs();
            panic!("node 3 still runs 60 s after its disk filled");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !status.success(),
        "node 3 exited with {status} on a full disk"
    );
    let log = std::fs::read_to_string(cluster.node(3).data_dir.join("node.log")).unwrap();
    assert!(
        log.contains("Raft stopped on a fatal error") && log.contains("No space left on device"),
        "node 3's log names the cause"
    );
    let digests = cluster.wait_converged(&[1, 2]).await;
    assert_digests_equal(&digests);
}

/// Below `disk_free_bytes_min` of free space a node refuses produce with RESOURCE_EXHAUSTED,
/// naming the limit, and appends nothing; other writes and reads go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_is_refused_while_the_disk_is_nearly_full() {
    // More than any test machine's free space: the disk is "nearly full" from the start.
    let options = NodeOptions {
        args: vec!["--disk-free-bytes-min".into(), (u64::MAX / 2).to_string()],
        ..Default::default()
    };
    let cluster = TestCluster::start(3, options);
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("guarded", 1).await.unwrap();
    let refused = client
        .produce("guarded", 0, vec![record(b"x".to_vec())])
        .await
        .expect_err("produce on a nearly full disk");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(
        refused.to_string().contains("disk_free_bytes_min"),
        "the error names the limit: {refused}"
    );
    let stream = client.produce_stream();
    let refused = stream
        .send(pb::ProduceRequest {
            topic: "guarded".into(),
            partition: Some(0),
            records: vec![record(b"y".to_vec())],
            ..Default::default()
        })
        .await
        .expect_err("a streamed produce on a nearly full disk");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    let topic = client.describe_topic("guarded").await.unwrap();
    assert_eq!(topic.partitions[0].end_offset, 0, "nothing was appended");
}

/// `raftlog cluster transfer-leader`: sent to a follower, forwarded to the leader, and answered
/// once the target leads; with 5 voters, which the handover of openraft 0.9's days could not do.
/// Writes go on under the new leader and nothing written before is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_moves_leadership_to_the_named_voter_of_five() {
    let cluster = TestCluster::start(5, NodeOptions::default());
    let old = cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("transfer", 1).await.unwrap();
    let before = produce_values(&client, "transfer", 0, "before", 50).await;
    let target = (1..=5).find(|id| *id != old).unwrap();
    let asked = (1..=5).find(|id| *id != old && *id != target).unwrap();
    let old_term = cluster.status(old).await.unwrap().term;

    let mut admin = cluster
        .client_of(asked)
        .cluster_at(&cluster.node(asked).grpc)
        .unwrap();
    admin
        .transfer_leader(pb::NodeRequest { node_id: target })
        .await
        .expect("the transfer completes");
    let status = cluster.status(target).await.unwrap();
    assert_eq!(status.role, pb::Role::Leader as i32, "node {target} leads");
    assert!(status.term > old_term, "a new term for the new leader");

    // A non-voter is refused as a precondition, not attempted.
    let refused = admin
        .transfer_leader(pb::NodeRequest { node_id: 42 })
        .await
        .expect_err("42 is no voter");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    let after = produce_values(&client, "transfer", 0, "after", 50).await;
    assert_eq!(after.first().map(|(offset, _)| *offset), Some(50));
    cluster.wait_converged(&[1, 2, 3, 4, 5]).await;
    let stored = read_all(&cluster, old, "transfer", 0).await;
    assert_eq!(
        stored,
        [before, after].concat(),
        "every acknowledged record"
    );
}

/// `raftlog cluster transfer-leader` to a voter that is behind (here: down while the others took
/// writes) is refused with UNAVAILABLE, and leadership stays where it was: the leader goes on
/// leading in the same term and takes writes, instead of stepping down for a target that cannot
/// win and leaving the cluster without a leader until an election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_to_a_voter_behind_changes_nothing() {
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("stay", 1).await.unwrap();
    let behind = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill9(behind);
    let before = produce_values(&client, "stay", 0, "before", 20).await;
    let term = cluster.status(leader).await.unwrap().term;

    let mut admin = cluster
        .client_of(leader)
        .cluster_at(&cluster.node(leader).grpc)
        .unwrap();
    let refused = admin
        .transfer_leader(pb::NodeRequest { node_id: behind })
        .await
        .expect_err("a transfer to a node that is down and behind");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    assert!(
        refused.message().contains("did not move"),
        "the answer says leadership stayed: {refused}"
    );

    let status = cluster.status(leader).await.unwrap();
    assert_eq!(
        status.role,
        pb::Role::Leader as i32,
        "node {leader} still leads"
    );
    assert_eq!(status.term, term, "no election happened");
    let after = produce_values(&client, "stay", 0, "after", 20).await;
    let stored = read_all(&cluster, leader, "stay", 0).await;
    assert_eq!(
        stored,
        [before, after].concat(),
        "every acknowledged record"
    );
}

/// The nice value of process `pid`'s `raft-log-fsync` thread (found by name in /proc; on Linux a
/// thread id names one thread to getpriority).
fn fsync_thread_nice(pid: u32) -> i32 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the node's threads") {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if name.trim_end() == "raft-log-fsync" {
            let tid: i32 = task.file_name().unwrap().to_str().unwrap().parse().unwrap();
            let tid = rustix::process::Pid::from_raw(tid).expect("a thread id");
            return rustix::process::getpriority_process(Some(tid)).expect("its nice value");
        }
    }
    panic!("node {pid} has no raft-log-fsync thread");
}

/// SIGTERM of a node with an open Subscribe stream and a pending long poll: both end at once with
/// the node's stop (the subscriber is told where to resume), so the graceful stop does not wait out
/// its 5 s drain on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_subscriptions_and_long_polls_end_when_their_node_stops() {
    use tokio_stream::StreamExt;
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let node = (1..=3).find(|id| *id != leader).unwrap();
    let client = cluster.client();
    client.create_topic("tail", 1).await.unwrap();
    produce_values(&client, "tail", 0, "v", 3).await;
    cluster.wait_caught_up(&[node]).await;

    let mut broker = client.broker_at(&cluster.node(node).grpc).unwrap();
    let mut stream = broker
        .subscribe(pb::SubscribeRequest {
            topic: "tail".into(),
            partition: 0,
            offset: 0,
            max_records: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.records.len(), 3);
    let long_poll = tokio::spawn({
        let mut broker = broker.clone();
        async move {
            broker
                .fetch(pb::FetchRequest {
                    topic: "tail".into(),
                    partition: 0,
                    offset: 3,
                    max_wait_ms: 30_000,
                    ..Default::default()
                })
                .await
        }
    });

    assert!(cluster.terminate(node).success());
    let ended = stream.next().await.expect("the stream says why it ends");
    let status = ended.expect_err("an error, not a record");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("offset 3"), "{status:?}");
    let polled = long_poll.await.unwrap().expect("the long poll answers");
    assert!(polled.into_inner().records.is_empty());
    let log = std::fs::read_to_string(cluster.node(node).data_dir.join("node.log")).unwrap();
    assert!(
        !log.contains("requests still open"),
        "the stop waited out its drain:\n{log}"
    );
}

/// Configuration mistakes are refused at start with one line that names what the operator set:
/// the `RAFTLOG_*` variable when the bad value came from the environment, the level that is not
/// one, every place a missing node id can come from.
#[test]
fn configuration_errors_name_what_was_set() {
    let node = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(support::node_binary());
        command.args(args).env_remove("RUST_LOG");
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().expect("run raftlog-node");
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let err = node(&["--node-id", "1"], &[("RAFTLOG_BATCH_BYTES_MAX", "lots")]);
    assert!(err.contains("RAFTLOG_BATCH_BYTES_MAX"), "{err}");
    let err = node(&["--node-id", "1", "--log-level", "verbose"], &[]);
    assert!(
        err.contains("'verbose'") && err.contains("not a level"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let err = node(&[], &[]);
    assert!(
        err.contains("--node-id") && err.contains("RAFTLOG_NODE_ID"),
        "{err}"
    );
}
