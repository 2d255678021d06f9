//! Partition side effects, with real node processes in network namespaces and iptables DROP rules
//! (the harness's `net`): a follower cut off and healed under load does not depose the leader, and
//! a write sent through a follower whose route to the leader is cut never appears after its
//! deadline. Needs root, as CI runs it; without root these tests fail, saying why, rather than
//! pass without testing anything.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftlog_client::{pb, Client};
use raftlog_jepsen::cluster::Cluster;
use raftlog_jepsen::net::{isolate, Network};

/// A 3-node cluster in network namespaces, recovered (one leader, everyone applied).
async fn cluster(dir: &std::path::Path) -> Cluster {
    if let Err(why) = Network::check_supported() {
        panic!("partition tests need network namespaces and iptables: {why}");
    }
    Network::cleanup_stale();
    let net = Network::create(3).expect("network namespaces");
    let node_bin = raftlog_testkit::node_binary();
    let cluster = Cluster::start(3, node_bin, dir.to_path_buf(), Some(net)).unwrap();
    cluster
        .wait_recovered(Duration::from_secs(60))
        .await
        .expect("cluster up");
    cluster
}

async fn status(client: &Client, addr: &str) -> Option<pb::NodeStatus> {
    let mut cluster = client.cluster_at(addr).ok()?;
    let mut request = tonic::Request::new(pb::StatusRequest {});
    request.set_timeout(Duration::from_millis(500));
    cluster.status(request).await.ok().map(|r| r.into_inner())
}

/// Polls `probe` every 50 ms until it returns Some, or panics naming `what` after `timeout`.
async fn wait_for<T, Fut: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Fut,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A follower isolated for 8 s (five election timeouts) under produce load, then healed: the
/// leader keeps its leadership and its term throughout, and no write fails. Without pre-vote the
/// isolated follower raised its term at every election timeout and, on heal, forced the leader
/// down (every write failed for ~2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_follower_rejoins_without_deposing_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let endpoints = cluster.endpoints();
    let client = Client::new(endpoints.clone()).unwrap();
    client.create_topic("heal", 1).await.unwrap();
    let leader = cluster.leader().await.expect("a leader");
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let before = status(&client, &endpoints[leader]).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (client, stop, acked, failed) = (
            Client::new([endpoints[leader].clone()]).unwrap(),
            stop.clone(),
            acked.clone(),
            failed.clone(),
        );
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let record = raftlog_client::record(b"x".to_vec());
                match client.produce("heal", 0, vec![record]).await {
                    Ok(_) => acked.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.push(e.to_string());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            errors
        })
    };
    wait_for("load to run", Duration::from_secs(10), || async {
        (acked.load(Ordering::Relaxed) > 50).then_some(())
    })
    .await;

    let net = cluster.network().unwrap();
    net.partition(&isolate(3, follower)).unwrap();
    // The fault: five election timeouts (election_timeout_ms_max is 1500).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during_partition = acked.load(Ordering::Relaxed);
    net.heal().unwrap();
    let healed = Instant::now();

    // The follower catches up with the leader's commit index...
    let target = status(&client, &endpoints[leader])
        .await
        .unwrap()
        .committed_index;
    wait_for(
        "the follower to catch up",
        Duration::from_secs(15),
        || async {
            let s = status(&client, &endpoints[follower]).await?;
            (s.applied_index >= target).then_some(())
        },
    )
    .await;
    let caught_up_after = healed.elapsed();
    // ...and writes go on for a while after the heal: the window in which a higher term would
    // have deposed the leader.
    let after_heal = acked.load(Ordering::Relaxed);
    wait_for("writes after the heal", Duration::from_secs(15), || async {
        (acked.load(Ordering::Relaxed) > after_heal + 200).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let errors = load.await.unwrap();

    let after = status(&client, &endpoints[leader]).await.unwrap();
    assert_eq!(
        after.role,
        pb::Role::Leader as i32,
        "the leader stayed leader"
    );
    assert_eq!(
        after.term, before.term,
        "no election happened: the returning follower did not raise its term"
    );
    let follower_status = status(&client, &endpoints[follower]).await.unwrap();
    assert_eq!(follower_status.term, before.term);
    assert!(
        errors.is_empty(),
        "{} writes failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(during_partition > 50, "writes went on during the partition");
    eprintln!("follower caught up {caught_up_after:?} after the heal");
}

/// A write sent to a follower whose link to the leader is cut (the leader still leads through the
/// third node): the follower forwards it into a connection that delivers nothing, and the caller's
/// deadline (2 s) passes. After the heal, that write must never appear: the leader refuses a
/// forwarded write whose deadline has passed, however late it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_forwarded_into_a_cut_link_never_appears_after_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let endpoints = cluster.endpoints();
    let client = Client::new(endpoints.clone()).unwrap();
    client.create_topic("cut", 1).await.unwrap();
    let leader = cluster.leader().await.expect("a leader");
    let follower = (0..3).find(|&i| i != leader).unwrap();

    let through_follower = |value: &str| {
        let mut request = tonic::Request::new(pb::ProduceRequest {
            topic: "cut".into(),
            partition: Some(0),
            records: vec![raftlog_client::record(value.as_bytes().to_vec())],
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(2));
        request
    };
    let mut broker = client.broker_at(&endpoints[follower]).unwrap();
    // The follower's connection to the leader is open before the cut.
    broker
        .produce(through_follower("before"))
        .await
        .expect("a write through the follower");

    let net = cluster.network().unwrap();
    net.cut_links(&[(follower, leader)]).unwrap();
    let invoked = Instant::now();
    let outcome = broker.produce(through_follower("stuck")).await;
    assert!(
        outcome.is_err(),
        "with its route to the leader cut, the follower cannot have it applied in time: {outcome:?}"
    );
    assert!(
        invoked.elapsed() < Duration::from_secs(4),
        "the caller's deadline held"
    );
    // Long after the deadline, the link comes back: whatever was queued in it is delivered now.
    tokio::time::sleep(Duration::from_secs(10)).await;
    net.heal().unwrap();

    // A write through the same follower after the heal travels behind anything queued on that
    // connection: once it is acknowledged, the stuck write has reached the leader (and been
    // refused, or applied).
    wait_for(
        "a write through the follower after the heal",
        Duration::from_secs(30),
        || {
            let mut broker = broker.clone();
            async move { broker.produce(through_follower("after")).await.ok() }
        },
    )
    .await;
    cluster
        .wait_recovered(Duration::from_secs(30))
        .await
        .unwrap();

    let mut values = Vec::new();
    let mut offset = 0;
    loop {
        let records = client
            .fetch_from(
                &endpoints[leader],
                pb::FetchRequest {
                    topic: "cut".into(),
                    partition: 0,
                    offset,
                    max_records: 1000,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .records;
        if records.is_empty() {
            break;
        }
        for r in records {
            offset = r.offset + 1;
            values.push(String::from_utf8(r.value.to_vec()).unwrap());
        }
    }
    assert!(
        !values.iter().any(|v| v == "stuck"),
        "the write whose deadline passed was applied after the heal: {values:?}"
    );
    assert_eq!(values.first().map(String::as_str), Some("before"));
    assert!(values.iter().any(|v| v == "after"));
}
