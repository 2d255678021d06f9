//! Client authentication and authorization on real processes (docs/security.md): every RPC of
//! every client-facing service refuses a caller without credentials (UNAUTHENTICATED) and one
//! without a permission (PERMISSION_DENIED) and changes nothing; ACL entries grant exactly what
//! they name (literal, prefix, wildcard, deny over allow, super-users), also through a follower
//! that forwards to the leader; a token revoked through one node is refused by every node, and
//! an expired one by any; with TLS, a client certificate is a principal and a forwarding node
//! vouches for it; the admin port's /metrics and /status need a token; a principal over its
//! quota is told to wait, and the Rust client waits; creation caps bound what a principal owns.
//!
//! The full decision matrix is unit-tested on the matcher (`raftlog_core::auth`); these tests
//! check that the node applies it to the right resource and operation of each call.

mod support;

use std::collections::BTreeSet;

use prost::Message;
use raftlog_client::{pb, Client, TlsOptions};
use support::pki::Pki;
use support::{NodeOptions, TestCluster};
use tonic::{Code, Status};

const ADMIN_TOKEN: &str = "bootstrap-token-for-the-auth-tests-0123456789";

fn secured(args: &[&str]) -> NodeOptions {
    NodeOptions {
        args: args.iter().map(|a| a.to_string()).collect(),
        admin_token: Some(ADMIN_TOKEN.into()),
        ..Default::default()
    }
}

/// A token for `principal` made by `admin`; `expires_in_ms` 0: never expires.
async fn create_token(admin: &Client, principal: &str, expires_in_ms: u64) -> (String, String) {
    let request = pb::CreateTokenRequest {
        principal: principal.into(),
        expires_in_ms,
    };
    let created = admin
        .auth_write(|mut auth| {
            let request = request.clone();
            async move { auth.create_token(request).await }
        })
        .await
        .expect("the admin creates a token");
    (created.token, created.info.expect("token info").id)
}

async fn add_acl(
    admin: &Client,
    principal: &str,
    resource: pb::AclResourceType,
    pattern: &str,
    prefix: bool,
    operation: pb::AclOperation,
    permission: pb::AclPermission,
) -> u64 {
    let request = pb::AddAclRequest {
        acl: Some(pb::AclEntry {
            id: 0,
            principal: principal.into(),
            resource_type: resource as i32,
            pattern: pattern.into(),
            pattern_type: if prefix {
                pb::AclPatternType::Prefix
            } else {
                pb::AclPatternType::Literal
            } as i32,
            operation: operation as i32,
            permission: permission as i32,
        }),
    };
    admin
        .auth_write(|mut auth| {
            let request = request.clone();
            async move { auth.add_acl(request).await }
        })
        .await
        .expect("the admin adds an ACL entry")
        .id
}

async fn whoami(client: &Client) -> Result<String, Status> {
    let addr = client.endpoints()[0].clone();
    client
        .auth_at(&addr)
        .unwrap()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map(|r| r.into_inner().principal)
}

fn plain_client(cluster: &TestCluster, id: u64) -> Client {
    Client::new([cluster.node(id).grpc.clone()]).unwrap()
}

fn fetch(topic: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        topic: topic.into(),
        ..Default::default()
    }
}

fn one_record() -> Vec<pb::Record> {
    vec![raftlog_client::record(&b"v"[..])]
}

/// Calls every method of the Broker, Cluster and Auth services on one node with a request that
/// would change something (or show something) if it were served, and gives each outcome by
/// method path. `existing_acl` and `existing_token` are ids a removal could hit.
async fn call_every_rpc(
    client: &Client,
    existing_acl: u64,
    existing_token: &str,
) -> Vec<(&'static str, Result<(), Status>)> {
    let addr = client.endpoints()[0].clone();
    let mut broker = client.broker_at(&addr).unwrap();
    let mut cluster = client.cluster_at(&addr).unwrap();
    let mut auth = client.auth_at(&addr).unwrap();
    let mut out: Vec<(&'static str, Result<(), Status>)> = Vec::new();
    macro_rules! call {
        ($path:literal, $call:expr) => {
            out.push(($path, $call.await.map(|_| ())));
        };
    }
    call!(
        "/raftlog.v1.Broker/CreateTopic",
        broker.create_topic(pb::CreateTopicRequest {
            name: "new".into(),
            config: None
        })
    );
    // Lists answer (filtered) rather than refuse: an empty answer counts as refused.
    let listed = broker.list_topics(pb::ListTopicsRequest {}).await;
    out.push((
        "/raftlog.v1.Broker/ListTopics",
        listed.and_then(|r| match r.into_inner().topics.len() {
            0 => Err(Status::permission_denied("(filtered to nothing)")),
            _ => Ok(()),
        }),
    ));
    call!(
        "/raftlog.v1.Broker/DescribeTopic",
        broker.describe_topic(pb::DescribeTopicRequest { name: "t".into() })
    );
    call!(
        "/raftlog.v1.Broker/DeleteTopic",
        broker.delete_topic(pb::DeleteTopicRequest { name: "t".into() })
    );
    call!(
        "/raftlog.v1.Broker/AlterTopic",
        broker.alter_topic(pb::AlterTopicRequest {
            name: "t".into(),
            retention_ms: Some(1),
            retention_bytes: None
        })
    );
    call!(
        "/raftlog.v1.Broker/InitProducer",
        broker.init_producer(pb::InitProducerRequest {})
    );
    call!(
        "/raftlog.v1.Broker/Produce",
        broker.produce(pb::ProduceRequest {
            topic: "t".into(),
            partition: Some(0),
            records: one_record(),
            ..Default::default()
        })
    );
    out.push((
        "/raftlog.v1.Broker/ProduceStream",
        produce_stream_once(&mut broker).await,
    ));
    call!(
        "/raftlog.v1.Broker/Fetch",
        broker.fetch(pb::FetchRequest {
            topic: "t".into(),
            ..Default::default()
        })
    );
    call!(
        "/raftlog.v1.Broker/Subscribe",
        broker.subscribe(pb::SubscribeRequest {
            topic: "t".into(),
            ..Default::default()
        })
    );
    call!(
        "/raftlog.v1.Broker/CommitOffsets",
        broker.commit_offsets(pb::CommitOffsetsRequest {
            group: "g".into(),
            topic: "t".into(),
            offsets: vec![pb::PartitionOffset {
                partition: 0,
                offset: 0
            }],
            allow_rewind: true,
            ..Default::default()
        })
    );
    call!(
        "/raftlog.v1.Broker/FetchOffsets",
        broker.fetch_offsets(pb::FetchOffsetsRequest {
            group: "g".into(),
            topic: "t".into()
        })
    );
    let listed = broker.list_groups(pb::ListGroupsRequest {}).await;
    out.push((
        "/raftlog.v1.Broker/ListGroups",
        listed.and_then(|r| match r.into_inner().groups.len() {
            0 => Err(Status::permission_denied("(filtered to nothing)")),
            _ => Ok(()),
        }),
    ));
    call!(
        "/raftlog.v1.Broker/DescribeGroup",
        broker.describe_group(pb::DescribeGroupRequest { group: "g".into() })
    );
    call!(
        "/raftlog.v1.Broker/DeleteGroup",
        broker.delete_group(pb::DeleteGroupRequest { group: "g".into() })
    );
    call!(
        "/raftlog.v1.Broker/ListOffsets",
        broker.list_offsets(pb::ListOffsetsRequest {
            topic: "t".into(),
            ..Default::default()
        })
    );
    call!(
        "/raftlog.v1.Broker/GroupHeartbeat",
        broker.group_heartbeat(pb::GroupHeartbeatRequest {
            group: "g2".into(),
            subscription: Some(pb::Subscription {
                topics: vec!["t".into()]
            }),
            ..Default::default()
        })
    );
    call!(
        "/raftlog.v1.Broker/RemoveGroupMember",
        broker.remove_group_member(pb::RemoveGroupMemberRequest {
            group: "g".into(),
            member_id: "0123456789abcdef".into()
        })
    );
    let mut queues = client.queues_at(&addr).unwrap();
    call!(
        "/raftlog.v1.Queues/CreateQueue",
        queues.create_queue(pb::CreateQueueRequest {
            queue: "q".into(),
            topic: "t".into(),
            settings: None,
        })
    );
    call!(
        "/raftlog.v1.Queues/DescribeQueue",
        queues.describe_queue(pb::DescribeQueueRequest { queue: "q".into() })
    );
    let listed = queues.list_queues(pb::ListQueuesRequest {}).await;
    out.push((
        "/raftlog.v1.Queues/ListQueues",
        listed.and_then(|r| match r.into_inner().queues.len() {
            0 => Err(Status::permission_denied("(filtered to nothing)")),
            _ => Ok(()),
        }),
    ));
    call!(
        "/raftlog.v1.Queues/DeleteQueue",
        queues.delete_queue(pb::DeleteQueueRequest { queue: "q".into() })
    );
    call!(
        "/raftlog.v1.Queues/Receive",
        queues.receive(pb::ReceiveRequest {
            queue: "q".into(),
            ..Default::default()
        })
    );
    call!(
        "/raftlog.v1.Queues/ReceiveStream",
        queues.receive_stream(pb::ReceiveStreamRequest {
            queue: "q".into(),
            ..Default::default()
        })
    );
    call!(
        "/raftlog.v1.Queues/Settle",
        queues.settle(pb::SettleRequest {
            queue: "q".into(),
            settlements: vec![pb::Settlement {
                delivery_id: "0.0.1".into(),
                action: pb::SettleAction::Ack as i32,
                ..Default::default()
            }],
        })
    );
    call!(
        "/raftlog.v1.Queues/Redrive",
        queues.redrive(pb::RedriveRequest {
            queue: "q".into(),
            max_records: 0,
        })
    );
    call!(
        "/raftlog.v1.Cluster/Initialize",
        cluster.initialize(pb::InitializeRequest {
            members: vec![pb::Member {
                node_id: 1,
                addr: addr.clone()
            }]
        })
    );
    call!(
        "/raftlog.v1.Cluster/AddLearner",
        cluster.add_learner(pb::AddLearnerRequest {
            member: Some(pb::Member {
                node_id: 9,
                addr: "127.0.0.1:1".into()
            }),
            blocking: false
        })
    );
    call!(
        "/raftlog.v1.Cluster/PromoteVoter",
        cluster.promote_voter(pb::NodeRequest { node_id: 9 })
    );
    call!(
        "/raftlog.v1.Cluster/RemoveNode",
        cluster.remove_node(pb::NodeRequest { node_id: 3 })
    );
    call!(
        "/raftlog.v1.Cluster/TransferLeader",
        cluster.transfer_leader(pb::NodeRequest { node_id: 2 })
    );
    call!(
        "/raftlog.v1.Cluster/Status",
        cluster.status(pb::StatusRequest {})
    );
    call!(
        "/raftlog.v1.Cluster/TriggerSnapshot",
        cluster.trigger_snapshot(pb::TriggerSnapshotRequest {})
    );
    call!(
        "/raftlog.v1.Cluster/StateDigest",
        cluster.state_digest(pb::StateDigestRequest {})
    );
    call!(
        "/raftlog.v1.Auth/CreateToken",
        auth.create_token(pb::CreateTokenRequest {
            principal: "mallory2".into(),
            expires_in_ms: 0
        })
    );
    call!(
        "/raftlog.v1.Auth/ListTokens",
        auth.list_tokens(pb::ListTokensRequest {})
    );
    call!(
        "/raftlog.v1.Auth/RevokeToken",
        auth.revoke_token(pb::RevokeTokenRequest {
            id: existing_token.into()
        })
    );
    call!(
        "/raftlog.v1.Auth/AddAcl",
        auth.add_acl(pb::AddAclRequest {
            acl: Some(pb::AclEntry {
                principal: "*".into(),
                resource_type: pb::AclResourceType::Topic as i32,
                pattern: "*".into(),
                operation: pb::AclOperation::All as i32,
                permission: pb::AclPermission::Allow as i32,
                ..Default::default()
            })
        })
    );
    call!(
        "/raftlog.v1.Auth/ListAcls",
        auth.list_acls(pb::ListAclsRequest::default())
    );
    call!(
        "/raftlog.v1.Auth/RemoveAcl",
        auth.remove_acl(pb::RemoveAclRequest { id: existing_acl })
    );
    call!(
        "/raftlog.v1.Auth/WhoAmI",
        auth.who_am_i(pb::WhoAmIRequest {})
    );
    call!(
        "/raftlog.v1.Auth/SetQuota",
        auth.set_quota(pb::SetQuotaRequest {
            quota: Some(pb::Quota {
                principal: "other".into(),
                requests_per_sec: 1,
                ..Default::default()
            })
        })
    );
    call!(
        "/raftlog.v1.Auth/ListQuotas",
        auth.list_quotas(pb::ListQuotasRequest {})
    );
    out
}

/// One message on a produce stream; the stream's refusal, or the message's.
async fn produce_stream_once(
    broker: &mut pb::broker_client::BrokerClient<raftlog_client::Connection>,
) -> Result<(), Status> {
    let message = pb::ProduceStreamRequest {
        request_id: 1,
        request: Some(pb::ProduceRequest {
            topic: "t".into(),
            partition: Some(0),
            records: one_record(),
            ..Default::default()
        }),
    };
    let mut answers = broker
        .produce_stream(tokio_stream::iter([message]))
        .await?
        .into_inner();
    let answer = answers
        .message()
        .await?
        .ok_or_else(|| Status::internal("no answer"))?;
    match answer.outcome {
        Some(pb::produce_stream_response::Outcome::Error(e)) => {
            Err(Status::new(Code::from(e.code), e.message))
        }
        _ => Ok(()),
    }
}

/// What the cluster holds, as far as a refused call could have changed it: the rows of each
/// node's state, topics with their end offsets and retention, groups with their offsets, tokens,
/// ACL entries, the membership and the leader.
async fn fingerprint(cluster: &TestCluster, admin: &Client) -> String {
    let digests = cluster.wait_converged(&[1, 2, 3]).await;
    let rows: Vec<u64> = digests.iter().map(|d| d.keys).collect();
    let topics = admin.list_topics().await.unwrap();
    let groups = admin.list_groups().await.unwrap();
    let addr = admin.endpoints()[0].clone();
    let mut auth = admin.auth_at(&addr).unwrap();
    let tokens: BTreeSet<String> = auth
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens
        .into_iter()
        .map(|t| t.id)
        .collect();
    let acls = auth
        .list_acls(pb::ListAclsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .acls;
    let quotas = auth
        .list_quotas(pb::ListQuotasRequest {})
        .await
        .unwrap()
        .into_inner()
        .quotas;
    let status = cluster.status(1).await.unwrap();
    format!(
        "rows {rows:?}\ntopics {:?}\ngroups {:?}\ntokens {tokens:?}\nacls {acls:?}\nquotas {quotas:?}\n\
         voters {:?} learners {:?} leader {}",
        topics
            .iter()
            .map(|t| (
                &t.name,
                t.config.as_ref().map(|c| c.retention_ms),
                t.partitions
                    .iter()
                    .map(|p| p.end_offset)
                    .collect::<Vec<_>>()
            ))
            .collect::<Vec<_>>(),
        groups
            .iter()
            .map(|g| (&g.group, g.encode_to_vec().len(), g.state.clone()))
            .collect::<Vec<_>>(),
        status.voters,
        status.learners,
        status.leader_id,
    )
}

/// The client-facing methods, from the compiled descriptors: the call list above must cover
/// them all (a new RPC fails this test until it is added).
fn client_facing_methods() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(raftlog_proto::FILE_DESCRIPTOR_SET).unwrap();
    set.file
        .iter()
        .filter(|f| f.package() == "raftlog.v1")
        .flat_map(|f| {
            f.service.iter().flat_map(|s| {
                s.method
                    .iter()
                    .map(move |m| format!("/raftlog.v1.{}/{}", s.name(), m.name()))
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_the_unauthenticated_and_the_unauthorized_and_changes_nothing() {
    let cluster = TestCluster::start(3, secured(&[]));
    cluster.wait_for_leader().await;
    let admin = cluster.client();
    // Something for each call to change: a topic with records, a group with offsets, a queue,
    // a token and an ACL entry (of someone else).
    admin.create_topic("t", 1).await.unwrap();
    support::produce_values(&admin, "t", 0, "v", 3).await;
    admin.commit_offsets("g", "t", [(0, 2)]).await.unwrap();
    admin
        .create_queue("q", "t", pb::QueueSettings::default())
        .await
        .unwrap();
    let (mallory, _) = create_token(&admin, "mallory", 0).await;
    let (_, other_token) = create_token(&admin, "other", 0).await;
    let other_acl = add_acl(
        &admin,
        "other",
        pb::AclResourceType::Topic,
        "t",
        false,
        pb::AclOperation::Read,
        pb::AclPermission::Allow,
    )
    .await;
    let before = fingerprint(&cluster, &admin).await;

    // Node 1 may be the leader or a follower: the check comes before any forwarding.
    let anonymous = plain_client(&cluster, 1);
    let outcomes = call_every_rpc(&anonymous, other_acl, &other_token).await;
    let called: BTreeSet<String> = outcomes.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(
        called,
        client_facing_methods(),
        "the test must call every RPC"
    );
    for (path, outcome) in &outcomes {
        let status = outcome.as_ref().expect_err(path);
        assert_eq!(status.code(), Code::Unauthenticated, "{path}: {status:?}");
    }

    let unauthorized = plain_client(&cluster, 1).with_token(&mallory).unwrap();
    let outcomes = call_every_rpc(&unauthorized, other_acl, &other_token).await;
    for (path, outcome) in &outcomes {
        if *path == "/raftlog.v1.Auth/WhoAmI" {
            assert!(outcome.is_ok(), "{path}: {outcome:?}");
            continue;
        }
        let status = outcome.as_ref().expect_err(path);
        assert_eq!(status.code(), Code::PermissionDenied, "{path}: {status:?}");
        if !status.message().starts_with("(filtered") {
            assert!(
                status.message().contains("User:mallory may not"),
                "{path}: the refusal names the principal: {status:?}"
            );
        }
    }
    let denied = outcomes
        .iter()
        .find(|(p, _)| *p == "/raftlog.v1.Broker/DeleteTopic")
        .unwrap();
    assert!(
        denied
            .1
            .as_ref()
            .unwrap_err()
            .message()
            .contains("User:mallory may not delete topic 't'"),
        "{denied:?}"
    );
    assert_eq!(
        fingerprint(&cluster, &admin).await,
        before,
        "nothing changed"
    );

    // The refusals are counted and audited.
    let metrics = cluster.metrics(1).await;
    assert!(
        support::sample(
            &metrics,
            "raftlog_auth_failures_total",
            "reason=\"no_credentials\""
        )
        .unwrap_or(0.0)
            >= outcomes.len() as f64,
        "{metrics}"
    );
    assert!(support::sample(
        &metrics,
        "raftlog_permission_denials_total",
        "resource=\"cluster\""
    )
    .is_some_and(|n| n > 0.0));
    let log = std::fs::read_to_string(cluster.node(1).data_dir.join("node.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("raftlog::audit") && l.contains("User:mallory")),
        "an audit line names the principal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_entries_grant_what_they_name_through_any_node() {
    let cluster = TestCluster::start(3, secured(&["--super-users", "root"]));
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let admin = cluster.client();
    for topic in ["orders-1", "orders-secret", "public-news", "other"] {
        admin.create_topic(topic, 1).await.unwrap();
    }
    let (alice, _) = create_token(&admin, "alice", 0).await;
    let (bob, _) = create_token(&admin, "User:bob", 0).await;
    let (root, _) = create_token(&admin, "root", 0).await;
    use pb::AclOperation::{Create, Read, Write};
    use pb::AclPermission::{Allow, Deny};
    use pb::AclResourceType::Topic;
    add_acl(&admin, "alice", Topic, "orders-", true, Write, Allow).await;
    add_acl(&admin, "alice", Topic, "orders-", true, Create, Allow).await;
    add_acl(&admin, "alice", Topic, "orders-secret", false, Write, Deny).await;
    add_acl(&admin, "*", Topic, "public-*", false, Read, Allow).await;
    cluster.wait_caught_up(&[1, 2, 3]).await;

    // Through a follower, which forwards the write to the leader with alice's token.
    let alice_there = plain_client(&cluster, follower).with_token(&alice).unwrap();
    let write = |client: &Client, topic: &'static str| {
        let client = client.clone();
        async move { client.produce(topic, 0, one_record()).await }
    };
    write(&alice_there, "orders-1")
        .await
        .expect("prefix allows");
    let denied = write(&alice_there, "orders-secret").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "deny wins: {denied}");
    assert!(
        denied
            .to_string()
            .contains("User:alice may not write topic 'orders-secret'"),
        "{denied}"
    );
    let denied = write(&alice_there, "other").await.unwrap_err();
    assert_eq!(
        denied.code(),
        Code::PermissionDenied,
        "default deny: {denied}"
    );
    alice_there
        .create_topic("orders-2", 1)
        .await
        .expect("create on the prefix");
    let denied = alice_there.create_topic("billing", 1).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied}");
    let denied = alice_there.fetch(fetch("orders-1")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "write is not read");
    // Alice sees the topics she may describe: those she may write (describe is implied), and
    // the ones everybody may read.
    let mut seen: Vec<String> = alice_there
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        ["orders-1", "orders-2", "orders-secret", "public-news"]
    );
    // And the queues she may describe (read implies it).
    for (queue, topic) in [("orders-q", "orders-1"), ("other-q", "other")] {
        admin
            .create_queue(queue, topic, pb::QueueSettings::default())
            .await
            .unwrap();
    }
    add_acl(
        &admin,
        "alice",
        pb::AclResourceType::Queue,
        "orders-q",
        false,
        Read,
        Allow,
    )
    .await;
    cluster.wait_caught_up(&[1, 2, 3]).await;
    let queues: Vec<String> = alice_there
        .list_queues()
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.queue)
        .collect();
    assert_eq!(queues, ["orders-q"]);

    // A wildcard entry for everyone.
    let bob = plain_client(&cluster, leader).with_token(&bob).unwrap();
    bob.fetch(fetch("public-news"))
        .await
        .expect("* may read public-*");
    let denied = write(&bob, "public-news").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied}");
    // A stream the layer read the request of before handing it on.
    admin.produce("public-news", 0, one_record()).await.unwrap();
    cluster.wait_caught_up(&[leader]).await;
    let mut stream = bob
        .subscribe(&cluster.node(leader).grpc, "public-news", 0, 0)
        .await
        .expect("* may read public-*");
    let first = stream.message().await.unwrap().expect("a message");
    assert_eq!(first.records.len(), 1);
    let denied = bob
        .subscribe(&cluster.node(leader).grpc, "orders-1", 0, 0)
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied}");

    // A consumer group: joining needs read on the group.
    add_acl(
        &admin,
        "bob",
        pb::AclResourceType::Group,
        "bobs",
        false,
        Read,
        Allow,
    )
    .await;
    cluster.wait_caught_up(&[1, 2, 3]).await;
    let join = |group: &str| pb::GroupHeartbeatRequest {
        group: group.into(),
        subscription: Some(pb::Subscription {
            topics: vec!["public-news".into()],
        }),
        ..Default::default()
    };
    let joined = bob
        .group_heartbeat(join("bobs"))
        .await
        .expect("read on the group");
    assert!(!joined.member_id.is_empty());
    let denied = bob.group_heartbeat(join("others")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied}");

    // A super-user from the configuration needs no entry.
    let root = plain_client(&cluster, follower).with_token(&root).unwrap();
    root.delete_topic("other").await.expect("super-user");
    assert_eq!(whoami(&root).await.unwrap(), "User:root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_through_one_node_is_refused_by_every_node_and_expired_ones_by_any() {
    let cluster = TestCluster::start(3, secured(&[]));
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let admin = cluster.client();
    let (carol, carol_id) = create_token(&admin, "carol", 0).await;
    cluster.wait_caught_up(&[1, 2, 3]).await;
    for id in 1..=3 {
        let carol = plain_client(&cluster, id).with_token(&carol).unwrap();
        assert_eq!(whoami(&carol).await.unwrap(), "User:carol", "node {id}");
    }

    // Revoked through a follower (which forwards to the leader).
    let through = cluster.client_of(follower);
    through
        .auth_write(|mut auth| {
            let id = carol_id.clone();
            async move { auth.revoke_token(pb::RevokeTokenRequest { id }).await }
        })
        .await
        .unwrap();
    cluster.wait_caught_up(&[1, 2, 3]).await;
    for id in 1..=3 {
        let carol = plain_client(&cluster, id).with_token(&carol).unwrap();
        let refused = whoami(&carol).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "node {id}: {refused:?}"
        );
    }
    // Revoking it again: NOT_FOUND.
    let again = admin
        .auth_write(|mut auth| {
            let id = carol_id.clone();
            async move { auth.revoke_token(pb::RevokeTokenRequest { id }).await }
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound, "{again}");

    // Expiry is judged by each node's clock when the token is checked.
    let (expired, _) = create_token(&admin, "dave", 1).await;
    let (lasting, _) = create_token(&admin, "erin", 3_600_000).await;
    cluster.wait_caught_up(&[1, 2, 3]).await;
    for id in 1..=3 {
        let refused = whoami(&plain_client(&cluster, id).with_token(&expired).unwrap())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "node {id}");
        assert!(refused.message().contains("expired"), "{refused:?}");
        let accepted = whoami(&plain_client(&cluster, id).with_token(&lasting).unwrap()).await;
        assert_eq!(accepted.unwrap(), "User:erin");
    }
    // A made-up token of the right shape, and garbage.
    for bad in [
        "raftlog_0123456789abcdef_00",
        "nonsense",
        carol.replace('_', "-").as_str(),
    ] {
        let refused = whoami(&plain_client(&cluster, leader).with_token(bad).unwrap())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{bad}");
    }
    let log = std::fs::read_to_string(cluster.node(leader).data_dir.join("node.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("raftlog::audit")
                && l.contains(&format!("token {carol_id} revoked"))),
        "the revocation is audited on the node that served it"
    );
}

/// GET `path` from node `id`'s admin port, with `token` if given; the status code.
async fn admin_get(cluster: &TestCluster, id: u64, path: &str, token: Option<&str>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = &cluster.node(id).admin;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let authorization = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{authorization}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("an HTTP status line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_a_client_certificate_is_a_principal_and_forwarding_nodes_vouch_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::for_cluster(dir.path(), 3);
    let options = NodeOptions {
        tls_dir: Some(pki.dir().to_path_buf()),
        ..secured(&[])
    };
    let cluster = TestCluster::start(3, options);
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let admin = cluster.client();
    admin.create_topic("t", 1).await.unwrap();
    // The certificate alone, no token: `client` is its common name.
    let certified = |id: u64| {
        Client::new([cluster.node(id).grpc.clone()])
            .unwrap()
            .with_tls(&TlsOptions {
                ca: pki.dir().join("ca.pem"),
                cert: Some(pki.dir().join("client.pem")),
                key: Some(pki.dir().join("client-key.pem")),
            })
            .unwrap()
    };
    assert_eq!(whoami(&certified(follower)).await.unwrap(), "User:client");
    let denied = certified(follower)
        .produce("t", 0, one_record())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied}");

    // A client cannot claim another principal with the header nodes vouch with: only a member
    // node's certificate makes it count.
    let mut claiming = certified(leader)
        .auth_at(&cluster.node(leader).grpc)
        .unwrap();
    let mut request = tonic::Request::new(pb::CreateTokenRequest {
        principal: "eve".into(),
        expires_in_ms: 0,
    });
    request
        .metadata_mut()
        .insert("raftlog-principal", "User:bootstrap".parse().unwrap());
    let refused = claiming.create_token(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("User:client"), "{refused:?}");

    add_acl(
        &admin,
        "client",
        pb::AclResourceType::Topic,
        "t",
        false,
        pb::AclOperation::Write,
        pb::AclPermission::Allow,
    )
    .await;
    cluster.wait_caught_up(&[1, 2, 3]).await;
    // Written through a follower: the leader sees the follower's node certificate and the
    // principal it vouches for (no token to forward).
    certified(follower)
        .produce("t", 0, one_record())
        .await
        .expect("allowed, forwarded with the vouched principal");

    // The admin port: probes open, /metrics and /status need a token that may describe the
    // cluster.
    let (nobody, _) = create_token(&admin, "nobody", 0).await;
    cluster.wait_caught_up(&[1, 2, 3]).await;
    assert_eq!(admin_get(&cluster, follower, "/healthz", None).await, 200);
    assert_eq!(admin_get(&cluster, follower, "/metrics", None).await, 401);
    assert_eq!(admin_get(&cluster, follower, "/status", None).await, 401);
    assert_eq!(
        admin_get(&cluster, follower, "/metrics", Some("wrong")).await,
        401
    );
    assert_eq!(
        admin_get(&cluster, follower, "/status", Some(&nobody)).await,
        403
    );
    assert_eq!(
        admin_get(&cluster, follower, "/status", Some(ADMIN_TOKEN)).await,
        200
    );
    assert_eq!(
        admin_get(&cluster, follower, "/metrics", Some(ADMIN_TOKEN)).await,
        200
    );
}

async fn set_quota(admin: &Client, quota: pb::Quota) {
    let request = pb::SetQuotaRequest { quota: Some(quota) };
    admin
        .auth_write(|mut auth| {
            let request = request.clone();
            async move { auth.set_quota(request).await }
        })
        .await
        .expect("the admin sets a quota");
}

fn produce_one() -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: "t".into(),
        partition: Some(0),
        records: one_record(),
        ..Default::default()
    }
}

/// A principal over its quota of requests is refused with RESOURCE_EXHAUSTED, a retry-after and
/// the not-applied mark, and nothing is done; the Rust client waits as told and gets through, at
/// about the quota's rate. Removing the quota lifts the limit. (How close a long run comes to the
/// rate is a benchmark's question, not this test's: it only bounds the time from below.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_over_its_quota_is_told_to_wait_and_the_client_waits() {
    let cluster = TestCluster::start(3, secured(&[]));
    let leader = cluster.wait_for_leader().await;
    let admin = cluster.client();
    admin.create_topic("t", 1).await.unwrap();
    let (frank, _) = create_token(&admin, "frank", 0).await;
    add_acl(
        &admin,
        "frank",
        pb::AclResourceType::Topic,
        "t",
        false,
        pb::AclOperation::All,
        pb::AclPermission::Allow,
    )
    .await;
    let quota = |requests_per_sec| pb::Quota {
        principal: "frank".into(),
        requests_per_sec,
        ..Default::default()
    };
    set_quota(&admin, quota(5)).await;
    cluster.wait_caught_up(&[1, 2, 3]).await;
    let frank = plain_client(&cluster, leader).with_token(&frank).unwrap();

    // Raw calls, no retries: the burst (5, and one into debt) goes, then refusals.
    let mut broker = frank.broker_at(&cluster.node(leader).grpc).unwrap();
    let mut refused = None;
    for _ in 0..20 {
        if let Err(status) = broker.produce(produce_one()).await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("the quota refuses within 20 calls");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("User:frank is over its quota"),
        "{refused:?}"
    );
    let wait: u64 = refused
        .metadata()
        .get("retry-after-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 0 && wait <= 1000, "{wait}");
    assert!(refused.metadata().contains_key("raftlog-not-applied"));
    let metrics = cluster.metrics(leader).await;
    assert!(
        support::sample(&metrics, "raftlog_throttled_total", "rate=\"requests\"")
            .is_some_and(|n| n > 0.0),
        "{metrics}"
    );

    // Through the client, which waits as told: 15 more produces at 5/s take about 3 s (the
    // bucket starts in debt; 1.8 s is a safe lower bound), and each is applied once.
    let end = |admin: Client| async move {
        admin.describe_topic("t").await.unwrap().partitions[0].end_offset
    };
    let end_before = end(admin.clone()).await;
    let started = std::time::Instant::now();
    for _ in 0..15 {
        frank
            .produce("t", 0, one_record())
            .await
            .expect("the client waits out the quota");
    }
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(1800), "{took:?}");
    assert_eq!(end(admin.clone()).await - end_before, 15);

    // All zero removes the quota.
    set_quota(&admin, quota(0)).await;
    cluster.wait_caught_up(&[1, 2, 3]).await;
    for _ in 0..30 {
        broker
            .produce(produce_one())
            .await
            .expect("no quota any more");
    }
}

/// The code and message of a refused call of the Rust client.
fn refusal<T: std::fmt::Debug>(result: Result<T, raftlog_client::Error>) -> (Code, String) {
    let status = match result.expect_err("refused") {
        raftlog_client::Error::Status(status) => status,
        other => panic!("not a refusal: {other:?}"),
    };
    (status.code(), status.message().to_string())
}

/// Creation caps: a principal may own at most so many topics, partitions and groups (consumer
/// groups and queues), counted from what it created that still exists, through any node. A
/// create past a cap is refused with RESOURCE_EXHAUSTED and changes nothing; deleting makes
/// room; what others create does not count; the counts survive a restart of every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_caps_bound_what_a_principal_owns_through_any_node_and_a_restart() {
    let mut cluster = TestCluster::start(3, secured(&[]));
    let leader = cluster.wait_for_leader().await;
    let admin = cluster.client();
    let (gina, _) = create_token(&admin, "gina", 0).await;
    for resource in [
        pb::AclResourceType::Topic,
        pb::AclResourceType::Group,
        pb::AclResourceType::Queue,
    ] {
        let (op, allow) = (pb::AclOperation::All, pb::AclPermission::Allow);
        add_acl(&admin, "gina", resource, "g-", true, op, allow).await;
    }
    let caps = pb::Quota {
        principal: "gina".into(),
        topics_max: 2,
        partitions_max: 4,
        groups_max: 2,
        ..Default::default()
    };
    set_quota(&admin, caps).await;
    let listed = admin
        .auth_at(&cluster.node(leader).grpc)
        .unwrap()
        .list_quotas(pb::ListQuotasRequest {})
        .await
        .unwrap()
        .into_inner()
        .quotas;
    assert_eq!(
        listed
            .iter()
            .map(|q| (
                q.principal.as_str(),
                q.topics_max,
                q.partitions_max,
                q.groups_max
            ))
            .collect::<Vec<_>>(),
        [("User:gina", 2, 4, 2)]
    );
    cluster.wait_caught_up(&[1, 2, 3]).await;
    // Through a follower: it forwards the creates, and the leader counts them for gina.
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let gina = plain_client(&cluster, follower).with_token(&gina).unwrap();

    gina.create_topic("g-a", 2).await.unwrap();
    let (code, message) = refusal(gina.create_topic("g-b", 3).await);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(
        message.contains("User:gina may own at most 4 partitions"),
        "{message}"
    );
    assert_eq!(
        refusal(admin.describe_topic("g-b").await).0,
        Code::NotFound,
        "a refused create changes nothing"
    );
    gina.create_topic("g-b", 2).await.unwrap();
    let (code, message) = refusal(gina.create_topic("g-c", 1).await);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.contains("at most 2 topics"), "{message}");
    // Others' topics are not gina's.
    admin.create_topic("g-admins", 8).await.unwrap();

    // Groups: a consumer group (by its first commit) and a queue fill the cap of 2.
    gina.commit_offsets("g-1", "g-a", [(0, 0)]).await.unwrap();
    gina.create_queue("g-q", "g-a", pb::QueueSettings::default())
        .await
        .unwrap();
    let (code, message) = refusal(gina.commit_offsets("g-2", "g-a", [(0, 0)]).await);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.contains("at most 2 groups"), "{message}");
    let mut broker = gina.broker_at(&cluster.node(leader).grpc).unwrap();
    let join = broker
        .group_heartbeat(pb::GroupHeartbeatRequest {
            group: "g-3".into(),
            subscription: Some(pb::Subscription {
                topics: vec!["g-a".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(join.code(), Code::ResourceExhausted, "{join:?}");
    // Committing to a group it has is no creation.
    gina.commit_offsets("g-1", "g-a", [(1, 0)]).await.unwrap();

    // Deleting makes room.
    admin.delete_topic("g-b").await.unwrap();
    gina.create_topic("g-c", 1).await.unwrap();

    // Every node restarts; the owners and caps are in the replicated state.
    for id in 1..=3 {
        cluster.kill9(id);
    }
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.wait_for_leader().await;
    let (code, message) = refusal(gina.create_topic("g-d", 1).await);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.contains("at most 2 topics"), "{message}");
    let (code, _) = refusal(gina.commit_offsets("g-2", "g-a", [(0, 0)]).await);
    assert_eq!(code, Code::ResourceExhausted);
    support::assert_digests_equal(&cluster.wait_converged(&[1, 2, 3]).await);
}
