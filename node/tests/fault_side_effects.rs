//! Faults without side effects: what a fault does to the rest of the cluster besides the fault
//! itself. A follower that is down costs the leader a few log lines, not a flood, and comes back
//! caught up; a write whose deadline passed before it could be proposed is refused, never applied.
//! (Partitions, which need network namespaces, are tested in jepsen-tests/tests/partitions.rs.)

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftlog_client::pb;
use support::*;

/// Lines in node `id`'s log file so far.
fn log_lines(cluster: &TestCluster, id: u64) -> Vec<String> {
    let text = std::fs::read_to_string(cluster.node(id).data_dir.join("node.log")).unwrap();
    text.lines().map(str::to_string).collect()
}

/// Produces to `topic` until `stop`, counting acknowledged and failed requests.
fn start_load(
    client: raftlog_client::Client,
    topic: &'static str,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (a, f) = (acked.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let record = raftlog_client::record(format!("load-{i}").into_bytes());
            match client.produce(topic, 0, vec![record]).await {
                Ok(_) => a.fetch_add(1, Ordering::Relaxed),
                Err(_) => f.fetch_add(1, Ordering::Relaxed),
            };
        }
    });
    (acked, failed, task)
}

/// kill -9 of a follower for 30 s under produce load: the leader says so in a few lines (one when
/// the follower goes, a summary every 10 s, one when it is back), not in a line per retry, and
/// shows the follower unreachable in `raftlog_peer_reachable`; after the restart the follower
/// catches up and every node's state digest is equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_down_for_30_s_costs_the_leader_a_few_log_lines_and_catches_up() {
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let client = cluster.client();
    client.create_topic("load", 1).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (acked, failed, load) = start_load(cluster.client(), "load", stop.clone());
    cluster
        .wait_for("load to run", Duration::from_secs(10), || async {
            (acked.load(Ordering::Relaxed) > 100).then_some(())
        })
        .await;

    let before = log_lines(&cluster, leader).len();
    cluster.kill9(follower);
    let acked_at_kill = acked.load(Ordering::Relaxed);
    let reachable = format!("peer=\"{follower}\"");
    cluster
        .wait_for(
            "the leader to report the follower unreachable",
            Duration::from_secs(10),
            || async {
                let page = cluster.metrics(leader).await;
                (sample(&page, "raftlog_peer_reachable", &reachable) == Some(0.0)).then_some(())
            },
        )
        .await;
    // The fault itself: the follower stays down this long.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during: Vec<String> = log_lines(&cluster, leader)[before..].to_vec();
    assert!(
        acked.load(Ordering::Relaxed) > acked_at_kill + 100,
        "writes went on with one follower down"
    );

    cluster.spawn(follower);
    let restarted = Instant::now();
    cluster
        .wait_for(
            "the leader to report the follower reachable again",
            Duration::from_secs(30),
            || async {
                let page = cluster.metrics(leader).await;
                (sample(&page, "raftlog_peer_reachable", &reachable) == Some(1.0)).then_some(())
            },
        )
        .await;
    let back_after = restarted.elapsed();
    cluster.wait_caught_up(&[follower]).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let digests = cluster.wait_converged(&[1, 2, 3]).await;
    assert_digests_equal(&digests);

    assert!(
        during.len() < 50,
        "the leader wrote {} lines in 30 s with one follower down:\n{}",
        during.len(),
        during.join("\n")
    );
    assert!(
        during.iter().any(|l| l.contains("unreachable")),
        "the leader said nothing of the outage:\n{}",
        during.join("\n")
    );
    assert!(
        !during.iter().any(|l| l.contains('\u{1b}')),
        "ANSI escapes in a log file"
    );
    let after: Vec<String> = log_lines(&cluster, leader)[before + during.len()..].to_vec();
    assert!(
        after.iter().any(|l| l.contains("reachable again")),
        "the leader did not report the follower back:\n{}",
        after.join("\n")
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no write fails while a majority is up"
    );
    eprintln!(
        "follower back (reachable from the leader) {back_after:?} after its process started; \
         {} lines on the leader during the 30 s",
        during.len()
    );
}

/// A write that arrives with its deadline already passed (a forwarded request held up in a
/// stuck connection, as a partition leaves it) is refused as not applied and never appears; one
/// with time left is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_deadline_passed_on_its_way_is_refused_and_never_applied() {
    let cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("late", 1).await.unwrap();
    let mut broker = client.broker_at(&cluster.node(leader).grpc).unwrap();

    let produce = |value: &str, deadline_ms: i64| {
        let mut request = tonic::Request::new(pb::ProduceRequest {
            topic: "late".into(),
            partition: Some(0),
            records: vec![raftlog_client::record(value.as_bytes().to_vec())],
            ..Default::default()
        });
        // As a follower forwards it: marked forwarded, a fresh relative timeout, and the
        // caller's absolute deadline.
        let metadata = request.metadata_mut();
        metadata.insert("raftlog-forwarded", "1".parse().unwrap());
        metadata.insert(
            "raftlog-deadline-ms",
            deadline_ms.to_string().parse().unwrap(),
        );
        request.set_timeout(Duration::from_secs(3));
        request
    };
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };

    let status = broker
        .produce(produce("forty-seconds-late", now_ms() - 40_000))
        .await
        .expect_err("a write past its deadline is refused");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.metadata().contains_key("raftlog-not-applied"),
        "the client may retry it safely: {status:?}"
    );

    broker
        .produce(produce("in-time", now_ms() + 5_000))
        .await
        .expect("a write with time left is applied");
    let records = read_all(&cluster, leader, "late", 0).await;
    let values: Vec<&str> = records.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, ["in-time"]);
    let page = cluster.metrics(leader).await;
    assert!(
        page.contains("raftlog_requests_total{method=\"Produce\",code=\"DeadlineExceeded\"} 1"),
        "counted as DEADLINE_EXCEEDED"
    );
}

/// A commit that would move a group's position back (a late or repeated commit) is refused and
/// changes nothing; an explicit rewind moves it; a deleted group is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_cannot_rewind_a_group_but_an_explicit_seek_can() {
    let cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("g", 2).await.unwrap();
    produce_values(&client, "g", 0, "v", 20).await;
    produce_values(&client, "g", 1, "w", 5).await;
    let broker = client.broker_at(&cluster.node(leader).grpc).unwrap();

    let commit = |offsets: Vec<(u32, u64)>, allow_rewind: bool| {
        let mut broker = broker.clone();
        async move {
            broker
                .commit_offsets(pb::CommitOffsetsRequest {
                    group: "workers".into(),
                    topic: "g".into(),
                    offsets: offsets
                        .into_iter()
                        .map(|(partition, offset)| pb::PartitionOffset { partition, offset })
                        .collect(),
                    allow_rewind,
                    ..Default::default()
                })
                .await
        }
    };
    let committed = || {
        let mut broker = broker.clone();
        async move {
            let mut offsets: Vec<(u32, u64)> = broker
                .fetch_offsets(pb::FetchOffsetsRequest {
                    group: "workers".into(),
                    topic: "g".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .offsets
                .into_iter()
                .map(|o| (o.partition, o.offset))
                .collect();
            offsets.sort();
            offsets
        }
    };
    let delete = || {
        let mut broker = broker.clone();
        async move {
            broker
                .delete_group(pb::DeleteGroupRequest {
                    group: "workers".into(),
                })
                .await
        }
    };

    commit(vec![(0, 15), (1, 3)], false).await.unwrap();
    // Partition 1 moves forward, partition 0 would move back: all or nothing.
    let err = commit(vec![(0, 10), (1, 5)], false).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("allow_rewind"), "{err:?}");
    assert_eq!(committed().await, [(0, 15), (1, 3)]);
    // The same offset again is not a rewind.
    commit(vec![(0, 15)], false).await.unwrap();
    // An explicit seek moves it back.
    commit(vec![(0, 10)], true).await.unwrap();
    assert_eq!(committed().await, [(0, 10), (1, 3)]);

    delete().await.unwrap();
    assert!(committed().await.is_empty());
    let err = delete().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let digests = cluster.wait_converged(&[1, 2, 3]).await;
    assert_digests_equal(&digests);
}
