//! The broker API as a client sees it, on a 3-node cluster of real processes: records from
//! several producers come back complete and in order from every node; long-poll fetch and
//! subscribe deliver records written after they started; consumer groups resume after a restart;
//! topics are deleted everywhere; bad requests get the documented gRPC status and change nothing.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use raftlog_client::consumer::{Consumer, ConsumerConfig, StartFrom};
use raftlog_client::producer::{Producer, ProducerConfig};
use raftlog_client::{pb, record};
use support::{read_all, NodeOptions, TestCluster};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_several_producers_come_back_complete_and_in_order_from_every_node() {
    const PRODUCERS: usize = 4;
    const PER_PRODUCER: usize = 25_000;
    const PARTITIONS: u32 = 4;
    let cluster = TestCluster::start(3, NodeOptions::default());
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("volume", PARTITIONS).await.unwrap();

    // Each producer sends keyed records (8 keys each, spread over the partitions by key hash)
    // through its own batching producer, and remembers where each record was acknowledged.
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        tasks.push(tokio::spawn(async move {
            let mut deliveries = Vec::with_capacity(PER_PRODUCER);
            for i in 0..PER_PRODUCER {
                let mut r = record(format!("{p}:{i}").into_bytes());
                r.key = Some(format!("key-{p}-{}", i % 8).into_bytes().into());
                deliveries.push(producer.send("volume", r).await.unwrap());
            }
            producer.flush().await;
            let mut acked = Vec::with_capacity(PER_PRODUCER);
            for (i, d) in deliveries.into_iter().enumerate() {
                let d = d.await.unwrap_or_else(|e| panic!("record {p}:{i}: {e}"));
                acked.push(((d.partition, d.offset), format!("{p}:{i}")));
            }
            acked
        }));
    }
    let mut acked: HashMap<(u32, u64), String> = HashMap::new();
    for task in tasks {
        for (at, value) in task.await.unwrap() {
            assert!(
                acked.insert(at, value).is_none(),
                "two records acked at {at:?}"
            );
        }
    }
    assert_eq!(acked.len(), PRODUCERS * PER_PRODUCER);
    let used: std::collections::BTreeSet<u32> = acked.keys().map(|(p, _)| *p).collect();
    assert!(used.len() > 1, "keys all hashed to one partition: {used:?}");

    cluster.wait_converged(&[1, 2, 3]).await;
    for node in 1..=3 {
        let mut total = 0;
        for partition in 0..PARTITIONS {
            let records = read_all(&cluster, node, "volume", partition).await;
            total += records.len();
            // Offsets are dense from 0, and every record is the one acknowledged there.
            let mut last_seq: BTreeMap<(String, u64), u64> = BTreeMap::new();
            for (i, (offset, value)) in records.iter().enumerate() {
                assert_eq!(*offset, i as u64, "node {node} partition {partition}: gap");
                assert_eq!(
                    acked.get(&(partition, *offset)),
                    Some(value),
                    "node {node} {partition}/{offset}"
                );
                // Per producer and key, records appear in the order they were sent.
                let (p, i) = value.split_once(':').unwrap();
                let i: u64 = i.parse().unwrap();
                let key = (p.to_string(), i % 8);
                if let Some(prev) = last_seq.insert(key, i) {
                    assert!(
                        prev < i,
                        "node {node} partition {partition}: {p}:{i} after {p}:{prev}"
                    );
                }
            }
        }
        assert_eq!(
            total,
            PRODUCERS * PER_PRODUCER,
            "node {node}: records missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_resumes_from_its_committed_offsets_after_a_node_restart() {
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("jobs", 3).await.unwrap();
    for partition in 0..3 {
        let records = (0..100)
            .map(|i| record(format!("{partition}-{i}").into_bytes()))
            .collect();
        client.produce("jobs", partition, records).await.unwrap();
    }

    // The first consumer reads partitions 0 and 1 whole and 40 records of partition 2, then commits.
    // A simple group (no membership): the consumer reads every partition it is given.
    let mut config = ConsumerConfig::new("jobs").group("workers");
    config.coordinate = false;
    let mut first = Consumer::new(client.clone(), config.clone()).await.unwrap();
    assert_eq!(
        first.positions().values().copied().collect::<Vec<_>>(),
        vec![0, 0, 0]
    );
    let mut seen = Vec::new();
    while seen.len() < 300 {
        for r in first.poll(Duration::from_secs(5)).await.unwrap() {
            seen.push((r.partition, r.record.offset));
        }
    }
    first.seek(2, 40);
    first.commit().await.unwrap();
    drop(first);

    // Restart the leader (kill -9): the commit is replicated state and survives it.
    cluster.kill9(leader);
    cluster.spawn(leader);
    cluster.wait_for_leader().await;
    let client = cluster.client();

    let described = client.describe_group("workers").await.unwrap();
    let lag: Vec<_> = described
        .partitions
        .iter()
        .map(|p| (p.partition, p.committed_offset, p.lag))
        .collect();
    assert_eq!(lag, vec![(0, 100, 0), (1, 100, 0), (2, 40, 60)]);
    assert_eq!(described.total_lag, 60);

    // A new consumer in the group starts where the group left off and reads exactly the rest.
    let mut second = Consumer::new(client.clone(), config).await.unwrap();
    assert_eq!(
        second.positions().clone(),
        BTreeMap::from([(0, 100), (1, 100), (2, 40)])
    );
    let mut rest = Vec::new();
    while rest.len() < 60 {
        for r in second.poll(Duration::from_secs(5)).await.unwrap() {
            assert_eq!(r.partition, 2);
            rest.push(String::from_utf8(r.record.value.to_vec()).unwrap());
        }
    }
    assert_eq!(
        rest,
        (40..100).map(|i| format!("2-{i}")).collect::<Vec<_>>()
    );
    second.commit().await.unwrap();
    assert_eq!(client.describe_group("workers").await.unwrap().total_lag, 0);
    let groups = client.list_groups().await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].group, "workers");
    // The group's offsets are the same on every node.
    let digests = cluster.wait_converged(&[1, 2, 3]).await;
    assert!(digests.iter().all(|d| d.sha256 == digests[0].sha256));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topic_is_gone_on_every_node_and_its_name_can_be_reused() {
    let cluster = TestCluster::start(3, NodeOptions::default());
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("tmp", 2).await.unwrap();
    client.create_topic("keep", 1).await.unwrap();
    client
        .produce("tmp", 1, vec![record(b"old".to_vec()); 10])
        .await
        .unwrap();
    client
        .produce("keep", 0, vec![record(b"kept".to_vec())])
        .await
        .unwrap();
    client.commit_offsets("g", "tmp", [(1, 5)]).await.unwrap();
    client.commit_offsets("g", "keep", [(0, 1)]).await.unwrap();
    let before = cluster.wait_converged(&[1, 2, 3]).await;

    client.delete_topic("tmp").await.unwrap();
    let after = cluster.wait_converged(&[1, 2, 3]).await;
    assert!(after.iter().all(|d| d.sha256 == after[0].sha256));
    assert!(
        after[0].keys < before[0].keys,
        "the topic's rows are still there"
    );
    for node in 1..=3 {
        let c = cluster.client_of(node);
        assert_eq!(code(c.describe_topic("tmp").await), Code::NotFound);
        let fetch = pb::FetchRequest {
            topic: "tmp".into(),
            partition: 1,
            ..Default::default()
        };
        assert_eq!(code(c.fetch(fetch).await), Code::NotFound);
        // The group keeps its offsets of other topics only.
        let g = c.describe_group("g").await.unwrap();
        assert_eq!(g.partitions.len(), 1);
        assert_eq!(g.partitions[0].topic, "keep");
        assert_eq!(
            read_all(&cluster, node, "keep", 0).await,
            vec![(0, "kept".into())]
        );
    }
    assert_eq!(code(client.delete_topic("tmp").await), Code::NotFound);

    // The name is free again; the new topic starts empty, at offset 0, with no group offsets.
    let again = client.create_topic("tmp", 1).await.unwrap();
    assert_eq!(again.partitions[0].end_offset, 0);
    let ack = client
        .produce("tmp", 0, vec![record(b"new".to_vec())])
        .await
        .unwrap();
    assert_eq!(ack.base_offset, 0);
    assert!(client.fetch_offsets("g", "tmp").await.unwrap().is_empty());
    let subscribe_from_start = Consumer::new(
        client.clone(),
        ConsumerConfig::new("tmp").start(StartFrom::Beginning),
    )
    .await
    .unwrap();
    assert_eq!(
        subscribe_from_start.positions().clone(),
        BTreeMap::from([(0, 0)])
    );
}

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
    let options = NodeOptions {
        args: ["--topics-max", "2", "--groups-max", "1"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let cluster = TestCluster::start(3, options);
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("orders", 2).await.unwrap();
    let small = pb::TopicConfig {
        partitions: 1,
        max_record_bytes: 10,
        ..Default::default()
    };
    client.create_topic_with("small", small).await.unwrap();
    client
        .produce("orders", 0, vec![record(b"a".to_vec())])
        .await
        .unwrap();
    client
        .commit_offsets("g1", "orders", [(0, 1)])
        .await
        .unwrap();
    let before = cluster.wait_converged(&[1, 2, 3]).await;

    // Topics: names, limits, existence.
    assert_eq!(
        code(client.create_topic("third", 1).await),
        Code::ResourceExhausted
    );
    assert_eq!(code(client.delete_topic("nosuch").await), Code::NotFound);
    assert_eq!(
        code(client.delete_topic("bad/name").await),
        Code::InvalidArgument
    );
    // Records over the topic's own limit, though under the cluster's.
    assert_eq!(
        code(
            client
                .produce("small", 0, vec![record(vec![0u8; 11])])
                .await
        ),
        Code::InvalidArgument
    );
    // Partitioners: explicit partition and a partitioner together; keys that map apart.
    let both = pb::ProduceRequest {
        topic: "orders".into(),
        partition: Some(0),
        records: vec![record(b"x".to_vec())],
        partitioner: pb::Partitioner::RoundRobin as i32,
        ..Default::default()
    };
    assert_eq!(
        code(client.produce_request(both).await),
        Code::InvalidArgument
    );
    let keyed = |k: &str| pb::Record {
        key: Some(k.as_bytes().to_vec().into()),
        ..record(b"v".to_vec())
    };
    let (k1, k2) = (0..)
        .map(|i| (format!("a{i}"), format!("b{i}")))
        .find(|(a, b)| {
            raftlog_proto::partition_for_key(a.as_bytes(), 2)
                != raftlog_proto::partition_for_key(b.as_bytes(), 2)
        })
        .unwrap();
    let apart = pb::ProduceRequest {
        topic: "orders".into(),
        partition: None,
        records: vec![keyed(&k1), keyed(&k2)],
        partitioner: pb::Partitioner::KeyHash as i32,
        ..Default::default()
    };
    assert_eq!(
        code(client.produce_request(apart).await),
        Code::InvalidArgument
    );
    let unkeyed = pb::ProduceRequest {
        topic: "orders".into(),
        partition: None,
        records: vec![record(b"v".to_vec())],
        partitioner: pb::Partitioner::KeyHash as i32,
        ..Default::default()
    };
    assert_eq!(
        code(client.produce_request(unkeyed).await),
        Code::InvalidArgument
    );
    let unknown_partitioner = pb::ProduceRequest {
        topic: "orders".into(),
        partition: None,
        records: vec![record(b"v".to_vec())],
        partitioner: 99,
        ..Default::default()
    };
    assert_eq!(
        code(client.produce_request(unknown_partitioner).await),
        Code::InvalidArgument
    );
    // Groups: names, existence, offsets beyond the end, unknown partitions, the group limit.
    assert_eq!(code(client.describe_group("nosuch").await), Code::NotFound);
    assert_eq!(
        code(client.commit_offsets("bad group", "orders", [(0, 0)]).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.commit_offsets("g1", "orders", [(0, 2)]).await),
        Code::OutOfRange
    );
    assert_eq!(
        code(client.commit_offsets("g1", "orders", [(5, 0)]).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            client
                .commit_offsets("g1", "orders", [(0, 0), (0, 1)])
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.commit_offsets("g1", "orders", []).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.commit_offsets("g1", "nosuch", [(0, 0)]).await),
        Code::NotFound
    );
    assert_eq!(
        code(client.commit_offsets("g2", "orders", [(0, 0)]).await),
        Code::ResourceExhausted
    );
    assert_eq!(
        code(client.fetch_offsets("g1", "nosuch").await),
        Code::NotFound
    );

    assert_eq!(
        code(client.create_topic("bad name", 1).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.create_topic("", 1).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.create_topic("..", 1).await),
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
        code(client.create_topic("small", 1).await),
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
        vec!["orders", "small"]
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
    let groups = client.list_groups().await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].partitions[0].committed_offset, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_writes_are_unavailable_and_certainly_not_applied() {
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("quorum", 1).await.unwrap();
    client
        .produce("quorum", 0, vec![record(b"before".to_vec())])
        .await
        .unwrap();
    cluster.wait_converged(&[1, 2, 3]).await;

    // Kill the leader and one follower: the survivor has no one to reach a majority with.
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    for id in (1..=3).filter(|id| *id != survivor) {
        cluster.kill9(id);
    }
    let lonely = raftlog_client::Client::new([cluster.node(survivor).grpc.clone()])
        .unwrap()
        .with_retry(raftlog_client::RetryPolicy {
            deadline: Duration::from_secs(2),
            ..Default::default()
        });
    let err = lonely
        .produce("quorum", 0, vec![record(b"lost".to_vec())])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(
        err.is_definite(),
        "the node must say the write was not applied: {err}"
    );

    // Once the others are back, the refused write is nowhere.
    for id in (1..=3).filter(|id| *id != survivor) {
        cluster.spawn(id);
    }
    cluster.wait_converged(&[1, 2, 3]).await;
    for node in 1..=3 {
        assert_eq!(
            read_all(&cluster, node, "quorum", 0).await,
            vec![(0, "before".to_string())]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_stream_pipelines_requests_in_order_answers_each_and_follows_the_leader() {
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.client().create_topic("piped", 2).await.unwrap();

    // Through a client that knows only a follower: the follower refuses the stream's requests as
    // not applied and names the leader; the client reopens its stream there.
    let stream = cluster.client_of(follower).produce_stream();
    let send = |partition: u32, value: String| {
        let stream = stream.clone();
        async move {
            stream
                .send(pb::ProduceRequest {
                    topic: "piped".into(),
                    partition: Some(partition),
                    records: vec![record(value.into_bytes())],
                    ..Default::default()
                })
                .await
        }
    };
    send(0, "first".into()).await.unwrap();

    // 600 requests in flight at once on one stream, in send order: each partition's offsets
    // follow that order exactly (requests are proposed as they arrive).
    let sends: Vec<_> = (0..600u32)
        .map(|i| send(i % 2, format!("{}:{i}", i % 2)))
        .collect();
    let acks = futures::future::join_all(sends).await;
    for (i, ack) in acks.iter().enumerate() {
        let ack = ack.as_ref().unwrap();
        let partition = (i % 2) as u32;
        let expected = (i / 2) as u64 + u64::from(partition == 0);
        assert_eq!((ack.partition, ack.base_offset), (partition, expected));
    }

    // A refused request is answered with Produce's error; the requests around it go through.
    let bad = stream.send(pb::ProduceRequest {
        topic: "no-such-topic".into(),
        partition: Some(0),
        records: vec![record(b"x".to_vec())],
        ..Default::default()
    });
    let empty = stream.send(pb::ProduceRequest {
        topic: "piped".into(),
        partition: Some(0),
        ..Default::default()
    });
    let (before, bad, empty, after) =
        tokio::join!(send(1, "1:600".into()), bad, empty, send(1, "1:601".into()));
    assert_eq!(code(bad), Code::NotFound);
    assert_eq!(code(empty), Code::InvalidArgument);
    assert_eq!(before.unwrap().base_offset + 1, after.unwrap().base_offset);

    // The leader dies: the stream breaks, the next sends go to the new leader.
    cluster.kill9(leader);
    let stream = cluster.client().produce_stream();
    let ack = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream
                .send(pb::ProduceRequest {
                    topic: "piped".into(),
                    partition: Some(1),
                    records: vec![record(b"1:after-failover".to_vec())],
                    ..Default::default()
                })
                .await
            {
                Ok(ack) => return ack,
                // The first attempts may meet the dying leader: outcome unknown, try again.
                Err(e) if !e.is_definite() => continue,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap();
    assert!(ack.base_offset >= 302);

    // Every node holds partition 0 exactly as sent.
    cluster.spawn(leader);
    cluster.wait_converged(&[1, 2, 3]).await;
    let expected: Vec<String> = std::iter::once("first".to_string())
        .chain((0..600).step_by(2).map(|i| format!("0:{i}")))
        .collect();
    for id in 1..=3 {
        let values: Vec<String> = read_all(&cluster, id, "piped", 0)
            .await
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(values, expected, "node {id}");
    }
}
