//! Safe retries and event sourcing on a 3-node cluster of real processes: the idempotent producer
//! stores every record exactly once and in order through leader kills and timed-out acks;
//! conditional appends never both succeed at one offset; retention deletes the same batches on
//! every node and moves the start offset; producer state and retention survive restarts and a
//! snapshot install; idle producers expire.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftlog_client::producer::{Producer, ProducerConfig};
use raftlog_client::{pb, record, Client, RetryPolicy};
use support::{read_all, NodeOptions, TestCluster};
use tonic::Code;

fn options(args: &[&str]) -> NodeOptions {
    NodeOptions {
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

fn assert_digests_equal(digests: &[pb::StateDigestResponse]) {
    for d in digests {
        assert_eq!(
            (d.applied_index, &d.sha256),
            (digests[0].applied_index, &digests[0].sha256),
            "replicas differ: {digests:?}"
        );
    }
}

/// One idempotent batch sent as a raw request, as a retrying client would send it.
fn idempotent_batch(
    topic: &str,
    producer_id: u64,
    sequence: u64,
    values: &[&str],
) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: topic.into(),
        partition: Some(0),
        records: values
            .iter()
            .map(|v| record(v.as_bytes().to_vec()))
            .collect(),
        producer_id,
        sequence,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotent_producer_stores_every_record_exactly_once_through_leader_kills_and_lost_acks(
) {
    const RECORDS: u64 = 6_000;
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    cluster.wait_for_leader().await;
    cluster.client().create_topic("payments", 2).await.unwrap();

    // Short request timeouts: some acks arrive after the client gave up on them (the batch is
    // stored, the client does not know), so the producer resends batches the log already holds.
    let impatient = Client::new(cluster.nodes.iter().map(|n| n.grpc.clone()))
        .unwrap()
        .with_retry(RetryPolicy {
            request_timeout: Duration::from_millis(40),
            ..RetryPolicy::default()
        });
    let config = ProducerConfig {
        linger: Duration::from_millis(1),
        batch_records: 20,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(impatient, config);
    let sent = Arc::new(AtomicBool::new(false));
    let sending = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut deliveries = Vec::new();
            for i in 0..RECORDS {
                let partition = (i % 2) as u32;
                let r = record(format!("{i}").into_bytes());
                deliveries.push(producer.send_to("payments", partition, r).await.unwrap());
                if i % 500 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            producer.flush().await;
            sent.store(true, Ordering::SeqCst);
            let mut acked = Vec::new();
            for (i, d) in deliveries.into_iter().enumerate() {
                let d = d.await.unwrap_or_else(|e| panic!("record {i} failed: {e}"));
                acked.push(d);
            }
            acked
        })
    };

    // Kill the leader twice while the producer runs, restarting it each time.
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if sent.load(Ordering::SeqCst) && round > 0 {
            break;
        }
        let leader = cluster.wait_for_leader().await;
        cluster.kill9(leader);
        cluster.wait_for_leader().await;
        cluster.spawn(leader);
    }
    let acked = sending.await.unwrap();
    assert_eq!(acked.len() as u64, RECORDS);

    cluster.wait_converged(&[1, 2, 3]).await;
    for node in 1..=3 {
        for partition in 0..2u32 {
            let values: Vec<u64> = read_all(&cluster, node, "payments", partition)
                .await
                .into_iter()
                .map(|(_, v)| v.parse().unwrap())
                .collect();
            // Exactly once and in the order sent: the partition holds its values, ascending.
            let expected: Vec<u64> = (0..RECORDS).filter(|i| i % 2 == partition as u64).collect();
            assert_eq!(
                values.len(),
                expected.len(),
                "node {node} partition {partition}: duplicates or losses"
            );
            assert_eq!(values, expected, "node {node} partition {partition}");
        }
    }
    // The acknowledged offsets are where the records are.
    for (i, d) in acked.iter().enumerate() {
        assert_eq!(d.partition, (i % 2) as u32);
        assert_eq!(d.offset, (i / 2) as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_batches_answer_their_original_offsets_and_gaps_are_refused() {
    let cluster = TestCluster::start(
        3,
        options(&["--producer-idle-ms", "1500", "--retention-check-ms", "100"]),
    );
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("events", 1).await.unwrap();
    let id = client.init_producer().await.unwrap();
    assert!(id > 0);

    let first = client
        .produce_request(idempotent_batch("events", id, 0, &["a", "b"]))
        .await
        .unwrap();
    assert_eq!((first.base_offset, first.duplicate), (0, false));
    // The ack was "lost": the same batch again answers the original offsets and appends nothing.
    let again = client
        .produce_request(idempotent_batch("events", id, 0, &["a", "b"]))
        .await
        .unwrap();
    assert_eq!(
        (again.base_offset, again.record_count, again.duplicate),
        (0, 2, true)
    );
    let next = client
        .produce_request(idempotent_batch("events", id, 2, &["c"]))
        .await
        .unwrap();
    assert_eq!((next.base_offset, next.duplicate), (2, false));
    // A gap (sequence 5 when 3 is next) is refused and changes nothing.
    let gap = client
        .produce_request(idempotent_batch("events", id, 5, &["x"]))
        .await
        .unwrap_err();
    assert_eq!(gap.code(), Code::FailedPrecondition);
    assert!(gap.to_string().contains("expected sequence 3"), "{gap}");
    // A retried *conditional* append gets its original offsets, not an offset mismatch.
    let conditional = |seq| pb::ProduceRequest {
        expected_end_offset: Some(3),
        ..idempotent_batch("events", id, seq, &["d"])
    };
    let c1 = client.produce_request(conditional(3)).await.unwrap();
    let c2 = client.produce_request(conditional(3)).await.unwrap();
    assert_eq!((c1.base_offset, c2.base_offset, c2.duplicate), (3, 3, true));
    let values: Vec<String> = read_all(&cluster, 1, "events", 0)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values, ["a", "b", "c", "d"]);

    // Unknown producer ids are refused; an idle producer expires (producer_idle_ms = 1.5 s).
    let unknown = client
        .produce_request(idempotent_batch("events", 9_999, 0, &["x"]))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::FailedPrecondition);
    // Expiry deletes the producer's row: wait for the row count to drop (without writing under
    // the id, which would keep it alive), then the id is refused.
    let rows = cluster.wait_converged(&[1, 2, 3]).await[0].keys;
    cluster
        .wait_for(
            "the idle producer to expire",
            Duration::from_secs(20),
            || async { (cluster.digest(1).await.keys < rows).then_some(()) },
        )
        .await;
    let expired = client
        .produce_request(idempotent_batch("events", id, 4, &["late"]))
        .await
        .unwrap_err();
    assert_eq!(expired.code(), Code::FailedPrecondition);
    assert!(expired.to_string().contains("expired"), "{expired}");
    assert_digests_equal(&cluster.wait_converged(&[1, 2, 3]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_conditional_appends_never_both_succeed_at_one_offset() {
    const ATTEMPTS: usize = 150;
    let cluster = TestCluster::start(3, NodeOptions::default());
    cluster.wait_for_leader().await;
    cluster.client().create_topic("account", 1).await.unwrap();

    let mut writers = Vec::new();
    for w in 0..2 {
        // Each writer talks to a different node first; writes reach the leader either way.
        let client = Client::new([
            cluster.node(1 + w).grpc.clone(),
            cluster.node(3).grpc.clone(),
        ])
        .unwrap();
        writers.push(tokio::spawn(async move {
            let mut believed_end = 0;
            let mut won = Vec::new();
            let mut lost = 0;
            for i in 0..ATTEMPTS {
                let request = pb::ProduceRequest {
                    topic: "account".into(),
                    partition: Some(0),
                    records: vec![record(format!("w{w}-{i}").into_bytes())],
                    expected_end_offset: Some(believed_end),
                    ..Default::default()
                };
                match client.produce_request(request).await {
                    Ok(ack) => {
                        assert_eq!(ack.base_offset, believed_end);
                        won.push((ack.base_offset, format!("w{w}-{i}")));
                        believed_end += 1;
                    }
                    Err(e) if e.code() == Code::FailedPrecondition => {
                        let actual = e.end_offset().expect("the actual end offset is attached");
                        assert!(
                            actual > believed_end,
                            "mismatch must mean someone else wrote"
                        );
                        believed_end = actual;
                        lost += 1;
                    }
                    Err(e) => panic!("writer {w}: {e}"),
                }
            }
            (won, lost)
        }));
    }
    let mut wins = Vec::new();
    let mut losses = 0;
    for w in writers {
        let (won, lost) = w.await.unwrap();
        wins.extend(won);
        losses += lost;
    }
    let offsets: BTreeSet<u64> = wins.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets.len(),
        wins.len(),
        "two writers succeeded at one offset"
    );
    assert_eq!(wins.len() + losses, 2 * ATTEMPTS);
    wins.sort();
    cluster.wait_converged(&[1, 2, 3]).await;
    for node in 1..=3 {
        assert_eq!(
            read_all(&cluster, node, "account", 0).await,
            wins,
            "node {node}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_the_same_batches_everywhere_and_survives_restart_and_snapshot_install() {
    let mut cluster = TestCluster::start(
        3,
        options(&[
            "--retention-check-ms",
            "100",
            "--snapshot-logs-since-last-max",
            "100",
            "--snapshot-logs-kept",
            "10",
            // Purge past a follower that is down, so it needs a snapshot.
            "--log-bytes-kept-for-followers-max",
            "0",
        ]),
    );
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client();
    let config = pb::TopicConfig {
        partitions: 1,
        retention_bytes: 10_000,
        ..Default::default()
    };
    client.create_topic_with("metrics", config).await.unwrap();
    // Producer state must survive everything below too.
    let id = client.init_producer().await.unwrap();
    let original = client
        .produce_request(idempotent_batch("metrics", id, 0, &["first"]))
        .await
        .unwrap();
    for i in 0..60 {
        let value = format!("{i:0>1000}"); // 1000 bytes
        client
            .produce("metrics", 0, vec![record(value.into_bytes())])
            .await
            .unwrap();
    }
    // At most ~10 kB stay: the start offset moves past the oldest batches. Wait for retention to
    // have caught up with the last append (a pass that ran before it left 11 records for a
    // moment; the next pass, 100 ms later, trims that).
    let start = cluster
        .wait_for(
            "retention to move the start offset",
            Duration::from_secs(20),
            || async {
                let p = client.describe_topic("metrics").await.ok()?.partitions[0];
                (p.end_offset == 61 && p.end_offset - p.start_offset <= 10)
                    .then_some(p.start_offset)
            },
        )
        .await;
    let digests = cluster.wait_converged(&[1, 2, 3]).await;
    assert_digests_equal(&digests);
    for node in 1..=3 {
        let held = read_all_from(&cluster, node, start).await;
        assert!(held.len() <= 10, "node {node} holds {} records", held.len());
        // Below the start: OUT_OF_RANGE with the start offset attached.
        let below = cluster
            .client_of(node)
            .fetch_from(
                &cluster.node(node).grpc,
                pb::FetchRequest {
                    topic: "metrics".into(),
                    offset: 0,
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(below.code(), Code::OutOfRange);
        assert!(below.start_offset().unwrap() >= start);
    }

    // A node that is down while retention runs and the log is purged catches up by snapshot.
    let lagging = if leader == 3 { 2 } else { 3 };
    cluster.kill9(lagging);
    client.alter_topic("metrics", Some(1), None).await.unwrap();
    for i in 0..150 {
        client
            .produce("metrics", 0, vec![record(format!("late-{i}").into_bytes())])
            .await
            .unwrap();
    }
    let leader = cluster.wait_for_leader().await;
    let purged = cluster
        .wait_for(
            "the leader to purge its log",
            Duration::from_secs(30),
            || async {
                let s = cluster.status(leader).await?;
                (s.purged_index > 150).then_some(s.purged_index)
            },
        )
        .await;
    cluster.spawn(lagging);
    assert_digests_equal(&cluster.wait_converged(&[1, 2, 3]).await);
    assert!(cluster.status(lagging).await.unwrap().snapshot_index >= purged);

    // Everything older than 1 ms goes at the next pass; restarts keep it that way.
    let end = cluster
        .wait_for(
            "age retention to empty the partition",
            Duration::from_secs(20),
            || async {
                let p = client.describe_topic("metrics").await.ok()?.partitions[0];
                (p.start_offset == p.end_offset).then_some(p.end_offset)
            },
        )
        .await;
    assert_eq!(end, 61 + 150);
    for node in 1..=3 {
        cluster.kill9(node);
        cluster.spawn(node);
    }
    cluster.wait_for_leader().await;
    let client = cluster.client();
    assert_digests_equal(&cluster.wait_converged(&[1, 2, 3]).await);
    let p = client.describe_topic("metrics").await.unwrap().partitions[0];
    assert_eq!((p.start_offset, p.end_offset), (end, end));
    // The producer's first batch is long deleted, yet its retry still answers the original offset.
    let retry = client
        .produce_request(idempotent_batch("metrics", id, 0, &["first"]))
        .await
        .unwrap();
    assert_eq!(
        (retry.base_offset, retry.duplicate),
        (original.base_offset, true)
    );
}

/// Reads one node's partition 0 of "metrics" from `offset` to its end.
async fn read_all_from(cluster: &TestCluster, node: u64, mut offset: u64) -> Vec<u64> {
    let client = cluster.client_of(node);
    let mut offsets = Vec::new();
    loop {
        let request = pb::FetchRequest {
            topic: "metrics".into(),
            offset,
            ..Default::default()
        };
        let response = client
            .fetch_from(&cluster.node(node).grpc, request)
            .await
            .unwrap();
        match response.records.last() {
            None => return offsets,
            Some(last) => offset = last.offset + 1,
        }
        offsets.extend(response.records.iter().map(|r| r.offset));
    }
}
