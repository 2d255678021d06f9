//! The broker API as a client sees it, on a 3-node cluster of real processes: long-poll fetch and
//! subscribe deliver records written after they started, from any node; bad requests get the
//! documented gRPC status and change nothing.

mod support;

use std::time::Duration;

use raftlog_client::{pb, record};
use support::{NodeOptions, TestCluster};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_fetch_and_subscribe_deliver_records_written_after_they_started() {
    let cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let reader = if leader == 3 { 2 } else { 3 };
    let client = cluster.client();
    client.create_topic("live", 1).await.unwrap();
    // Wait until the reader has applied the topic, so subscribing there cannot race its creation.
    cluster.wait_converged(&[1, 2, 3]).await;

    let addr = cluster.node(reader).grpc.clone();
    let mut stream = client.subscribe(&addr, "live", 0, 0).await.unwrap();
    let poll = {
        let client = client.clone();
        let addr = addr.clone();
        tokio::spawn(async move {
            let request = pb::FetchRequest {
                topic: "live".into(),
                partition: 0,
                offset: 0,
                max_records: 10,
                max_bytes: 0,
                max_wait_ms: 20_000,
            };
            client.fetch_from(&addr, request).await
        })
    };

    for i in 0..50 {
        client
            .produce("live", 0, vec![record(format!("m{i}").into_bytes())])
            .await
            .unwrap();
    }

    // The long poll was waiting on an empty partition: it returns with the first records.
    let fetched = poll.await.unwrap().unwrap();
    assert!(!fetched.records.is_empty(), "long poll returned nothing");
    assert_eq!(fetched.records[0].value.as_ref(), b"m0");

    // The subscription pushes all 50, in order, with their offsets.
    let mut seen = Vec::new();
    while seen.len() < 50 {
        let message = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("subscription stalled")
            .unwrap()
            .expect("stream ended early");
        for r in message.records {
            seen.push((r.offset, String::from_utf8(r.value.to_vec()).unwrap()));
        }
    }
    let expected: Vec<_> = (0..50).map(|i| (i as u64, format!("m{i}"))).collect();
    assert_eq!(seen, expected);
}

/// The status code of a call that must fail.
fn code<T: std::fmt::Debug>(result: Result<T, raftlog_client::Error>) -> Code {
    result
        .expect_err("the request should have been rejected")
        .code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_errors_and_change_nothing() {
    let cluster = TestCluster::start(3, NodeOptions::default());
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("orders", 2).await.unwrap();
    client
        .produce("orders", 0, vec![record(b"a".to_vec())])
        .await
        .unwrap();
    let before = cluster.wait_converged(&[1, 2, 3]).await;

    assert_eq!(
        code(client.create_topic("bad name", 1).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.create_topic("", 1).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.create_topic(&"x".repeat(300), 1).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.create_topic("huge", 1_000_000).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.create_topic("orders", 1).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            client
                .produce("nosuch", 0, vec![record(b"x".to_vec())])
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            client
                .produce("orders", 7, vec![record(b"x".to_vec())])
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.produce("orders", 0, vec![]).await),
        Code::InvalidArgument
    );
    let too_big = record(vec![0u8; 2 * 1024 * 1024]);
    assert_eq!(
        code(client.produce("orders", 0, vec![too_big]).await),
        Code::InvalidArgument
    );
    let fetch = |offset| pb::FetchRequest {
        topic: "orders".into(),
        partition: 0,
        offset,
        ..Default::default()
    };
    assert_eq!(code(client.fetch(fetch(5)).await), Code::OutOfRange);
    assert_eq!(code(client.describe_topic("nosuch").await), Code::NotFound);

    // Rejected writes that reached the log (unknown topic, bad partition) were rejected when
    // applied: the log grew, but no topic, record or offset changed.
    let after = cluster.wait_converged(&[1, 2, 3]).await;
    let topics = client.list_topics().await.unwrap();
    assert_eq!(
        topics.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        vec!["orders"]
    );
    assert_eq!(
        topics[0]
            .partitions
            .iter()
            .map(|p| p.end_offset)
            .collect::<Vec<_>>(),
        vec![1, 0]
    );
    for d in &after {
        assert_eq!(
            d.keys, before[0].keys,
            "rejected requests added state: {before:?} -> {after:?}"
        );
    }
}
