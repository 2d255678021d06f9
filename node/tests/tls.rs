//! TLS on real processes with real certificates (rcgen, written as PEM files): a TLS cluster
//! replicates and serves; a plaintext client, a certificate of another CA and an expired
//! certificate are refused at the handshake; the Raft service admits only certificates naming a
//! member node; certificates rotate on SIGHUP and on file change without a restart (a broken
//! file keeps the previous ones); garbage and unfinished handshakes neither crash nor stall a node.

mod support;

use std::path::Path;
use std::time::Duration;

use raftlog_client::{pb, Client, TlsOptions};
use raftlog_proto::raft::v1::raft_client::RaftClient;
use raftlog_proto::raft::v1::RaftEnvelope;
use support::pki::{replace, Pki, Validity};
use support::{sample, NodeOptions, TestCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

fn tls_options(dir: &Path, args: &[&str]) -> NodeOptions {
    NodeOptions {
        args: args.iter().map(|a| a.to_string()).collect(),
        tls_dir: Some(dir.to_path_buf()),
        ..Default::default()
    }
}

/// A client of `cluster`'s node `id` with `ca` trusted and `identity` (a file stem in `dir`)
/// presented.
fn client_with(
    cluster: &TestCluster,
    id: u64,
    ca: &Path,
    identity: Option<(&Path, &str)>,
) -> Client {
    Client::new([cluster.node(id).grpc.clone()])
        .unwrap()
        .with_tls(&TlsOptions {
            ca: ca.to_path_buf(),
            cert: identity.map(|(dir, stem)| dir.join(format!("{stem}.pem"))),
            key: identity.map(|(dir, stem)| dir.join(format!("{stem}-key.pem"))),
        })
        .unwrap()
}

async fn status(client: &Client) -> Result<pb::NodeStatus, tonic::Status> {
    let addr = client.endpoints()[0].clone();
    let mut cluster = client.cluster_at(&addr).unwrap();
    cluster
        .status(pb::StatusRequest {})
        .await
        .map(|r| r.into_inner())
}

/// A call refused by the TLS handshake: the transport fails and the service never answered.
/// With TLS 1.3 the client sends its certificate after it considers the handshake done, so a
/// refused client certificate surfaces as the connection closing under the first request
/// (CANCELLED, "connection closed", or UNKNOWN) rather than as a failed connect (UNAVAILABLE).
fn refused_at_handshake(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

fn handshake_failures(page: &str) -> f64 {
    sample(page, "raftlog_tls_handshake_failures_total", "").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_and_refuses_plaintext_other_cas_and_expired_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::for_cluster(dir.path(), 3);
    let cluster = TestCluster::start(3, tls_options(pki.dir(), &[]));
    let leader = cluster.wait_for_leader().await;

    // Replication and forwarding run over TLS between the nodes: every node applies the writes.
    let client = cluster.client();
    client.create_topic("t", 1).await.unwrap();
    let acked = support::produce_values(&client, "t", 0, "v", 20).await;
    cluster.wait_caught_up(&[1, 2, 3]).await;
    for id in 1..=3 {
        assert_eq!(support::read_all(&cluster, id, "t", 0).await, acked);
    }
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let before = handshake_failures(&cluster.metrics(follower).await);

    // A plaintext client: the TLS port answers no gRPC to it.
    let plaintext = Client::new([cluster.node(follower).grpc.clone()]).unwrap();
    let refused = status(&plaintext).await.unwrap_err();
    assert_ne!(refused.code(), Code::Ok);

    // A client certificate of another CA: refused at the handshake, even though client
    // certificates are optional (a presented one must verify).
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::new(other_dir.path(), "another CA");
    other.client("mallory", Validity::Current);
    let ca = pki.dir().join("ca.pem");
    let err = status(&client_with(
        &cluster,
        follower,
        &ca,
        Some((other.dir(), "mallory")),
    ))
    .await
    .unwrap_err();
    assert!(refused_at_handshake(&err), "{err}");
    // A client that trusts only the other CA does not accept the node's certificate.
    let err = status(&client_with(
        &cluster,
        follower,
        &other.dir().join("ca.pem"),
        None,
    ))
    .await
    .unwrap_err();
    assert!(refused_at_handshake(&err), "{err}");

    // An expired certificate of the right CA.
    pki.client("expired", Validity::Expired);
    let err = status(&client_with(
        &cluster,
        follower,
        &ca,
        Some((pki.dir(), "expired")),
    ))
    .await
    .unwrap_err();
    assert!(refused_at_handshake(&err), "{err}");

    // Each was refused by the node, and counted; good clients go on.
    let page = cluster.metrics(follower).await;
    assert!(
        handshake_failures(&page) >= before + 3.0,
        "handshake failures {} -> {}",
        before,
        handshake_failures(&page)
    );
    assert!(status(&client_with(&cluster, follower, &ca, None))
        .await
        .is_ok());
    assert!(status(&client_with(
        &cluster,
        follower,
        &ca,
        Some((pki.dir(), "client"))
    ))
    .await
    .is_ok());
    let expiry = sample(
        &page,
        "raftlog_tls_cert_expiry_timestamp_seconds",
        "cert=\"node\"",
    )
    .expect("the expiry metric");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now && expiry < now + 86_400.0 + 60.0, "{expiry}");
}

/// A Raft client to `node` over TLS presenting `identity` (a file stem in `pki`'s directory),
/// checking that the node is node-`id`.
fn raft_client(
    cluster: &TestCluster,
    pki: &Pki,
    id: u64,
    identity: Option<&str>,
) -> RaftClient<tonic::transport::Channel> {
    let read = |name: String| std::fs::read(pki.dir().join(name)).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_pem()))
        .domain_name(format!("node-{id}"));
    if let Some(stem) = identity {
        tls = tls.identity(Identity::from_pem(
            read(format!("{stem}.pem")),
            read(format!("{stem}-key.pem")),
        ));
    }
    let channel = Endpoint::from_shared(format!("https://{}", cluster.node(id).grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    RaftClient::new(channel)
}

/// A vote request for a group no node hosts: a member gets past the admission check and is told
/// NOT_FOUND; anyone else never reaches the group.
async fn vote(client: &mut RaftClient<tonic::transport::Channel>) -> tonic::Status {
    client
        .vote(RaftEnvelope {
            group_id: 999,
            payload: vec![0u8].into(),
        })
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_service_admits_only_certificates_naming_a_member_node() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::for_cluster(dir.path(), 3);
    let cluster = TestCluster::start(3, tls_options(pki.dir(), &[]));
    cluster.wait_for_leader().await;

    // A member (node 2's own certificate) is admitted: the request reaches the group lookup.
    let member = vote(&mut raft_client(&cluster, &pki, 1, Some("node-2"))).await;
    assert_eq!(member.code(), Code::NotFound, "{member}");

    // A valid certificate of the cluster CA for node 4, which is not a member.
    pki.node(4, Validity::Current);
    let outsider = vote(&mut raft_client(&cluster, &pki, 1, Some("node-4"))).await;
    assert_eq!(outsider.code(), Code::PermissionDenied, "{outsider}");
    assert!(
        outsider.message().contains("node 4 is not a member"),
        "{outsider}"
    );
    // A client's certificate names no node.
    let client = vote(&mut raft_client(&cluster, &pki, 1, Some("client"))).await;
    assert_eq!(client.code(), Code::PermissionDenied, "{client}");
    // No certificate at all.
    let anonymous = vote(&mut raft_client(&cluster, &pki, 1, None)).await;
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous}");
    // Node 2's identity in an expired certificate: refused at the handshake.
    pki.issue(
        "node-2-expired",
        &["node-2"],
        Validity::Expired,
        &[rcgen::ExtendedKeyUsagePurpose::ClientAuth],
    );
    let expired = vote(&mut raft_client(&cluster, &pki, 1, Some("node-2-expired"))).await;
    assert!(refused_at_handshake(&expired), "{expired}");

    let page = cluster.metrics(1).await;
    assert_eq!(
        sample(
            &page,
            "raftlog_peer_refusals_total",
            "reason=\"not_a_member\""
        ),
        Some(1.0)
    );
    // The refusals changed nothing: the cluster still writes.
    let client = cluster.client();
    client.create_topic("after", 1).await.unwrap();
    support::produce_values(&client, "after", 0, "v", 5).await;
}

/// The sample of `name` with `labels` on node `id`, once it is at least `at_least`.
async fn wait_metric(cluster: &TestCluster, id: u64, name: &str, labels: &str, at_least: f64) {
    cluster
        .wait_for(
            &format!("{name}{{{labels}}} >= {at_least} on node {id}"),
            Duration::from_secs(20),
            || async move {
                let page = cluster.metrics(id).await;
                sample(&page, name, labels)
                    .filter(|v| *v >= at_least)
                    .map(|_| ())
            },
        )
        .await
}

fn node_expiry(page: &str) -> f64 {
    sample(
        page,
        "raftlog_tls_cert_expiry_timestamp_seconds",
        "cert=\"node\"",
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_on_sighup_without_a_restart_and_a_broken_file_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::for_cluster(dir.path(), 3);
    let options = tls_options(
        pki.dir(),
        &[
            "--tls-client-cert-required",
            "true",
            "--tls-reload-check-ms",
            "0",
        ],
    );
    let cluster = TestCluster::start(3, options);
    cluster.wait_for_leader().await;
    let ca = pki.dir().join("ca.pem");
    let pids: Vec<u32> = cluster
        .nodes
        .iter()
        .map(|n| n.child.as_ref().unwrap().id())
        .collect();

    // Client certificates are required: none is refused.
    assert!(status(&client_with(&cluster, 1, &ca, None)).await.is_err());
    // A new CA the cluster does not trust yet, and a client of it.
    let new_dir = tempfile::tempdir().unwrap();
    let new_ca = Pki::new(new_dir.path(), "next CA");
    new_ca.client("bob", Validity::Current);
    let bob = |id| client_with(&cluster, id, &ca, Some((new_ca.dir(), "bob")));
    assert!(status(&bob(1)).await.is_err());

    // Rotation: trust both CAs, and give node 1 a new certificate (valid for two days).
    let old_expiry = node_expiry(&cluster.metrics(1).await);
    replace(&ca, &format!("{}{}", pki.ca_pem(), new_ca.ca_pem()));
    pki.node(1, Validity::For(Duration::from_secs(2 * 86_400)));
    for id in 1..=3 {
        cluster.hangup(id);
    }
    for id in 1..=3 {
        wait_metric(
            &cluster,
            id,
            "raftlog_tls_reloads_total",
            "result=\"ok\"",
            1.0,
        )
        .await;
    }
    for id in 1..=3 {
        let answer = status(&bob(id)).await;
        assert!(answer.is_ok(), "node {id}: {answer:?}");
    }
    let new_expiry = node_expiry(&cluster.metrics(1).await);
    assert!(
        new_expiry > old_expiry + 12.0 * 3600.0,
        "{old_expiry} -> {new_expiry}"
    );

    // A key that does not parse: the reload fails and node 3 keeps serving with what it had.
    replace(&pki.dir().join("node-3-key.pem"), "not a key\n");
    cluster.hangup(3);
    wait_metric(
        &cluster,
        3,
        "raftlog_tls_reloads_total",
        "result=\"error\"",
        1.0,
    )
    .await;
    assert!(status(&bob(3)).await.is_ok());

    // No process was restarted, and the cluster still replicates over TLS.
    for (i, node) in cluster.nodes.iter().enumerate() {
        assert_eq!(node.child.as_ref().unwrap().id(), pids[i]);
    }
    let client = cluster.client();
    client.create_topic("after", 1).await.unwrap();
    support::produce_values(&client, "after", 0, "v", 10).await;
    cluster.wait_caught_up(&[1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_file_is_reloaded_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::for_cluster(dir.path(), 1);
    let cluster = TestCluster::start(1, tls_options(pki.dir(), &["--tls-reload-check-ms", "200"]));
    cluster.wait_for_leader().await;
    let old_expiry = node_expiry(&cluster.metrics(1).await);
    pki.node(1, Validity::For(Duration::from_secs(3 * 86_400)));
    wait_metric(
        &cluster,
        1,
        "raftlog_tls_reloads_total",
        "result=\"ok\"",
        1.0,
    )
    .await;
    let new_expiry = node_expiry(&cluster.metrics(1).await);
    assert!(
        new_expiry > old_expiry + 36.0 * 3600.0,
        "{old_expiry} -> {new_expiry}"
    );
    assert!(status(&cluster.client_of(1)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_unfinished_handshakes_neither_crash_nor_stall_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::for_cluster(dir.path(), 1);
    let mut cluster = TestCluster::start(1, tls_options(pki.dir(), &[]));
    cluster.wait_for_leader().await;
    let addr = cluster.node(1).grpc.clone();
    let before = handshake_failures(&cluster.metrics(1).await);

    // Connections that say nothing, and ones that stop inside a ClientHello: a TLS record header
    // announcing 512 bytes of handshake, a ClientHello header, and then silence.
    let mut held = Vec::new();
    for i in 0..40 {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 1 {
            let truncated = [
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x00, 0x01,
            ];
            tcp.write_all(&truncated).await.unwrap();
        }
        held.push(tcp);
    }
    // Garbage of several kinds: each connection is closed by the node, promptly.
    let garbage: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        &[0xff; 4096],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00],
    ];
    for bytes in garbage {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // The node may close before all is written.
        let _ = tcp.write_all(bytes).await;
        let mut answer = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        assert!(closed.is_ok(), "the node left a garbage connection open");
    }

    // While the unfinished handshakes are held open, the node serves a real client at once.
    let answer = tokio::time::timeout(Duration::from_secs(3), status(&cluster.client_of(1))).await;
    assert!(
        matches!(answer, Ok(Ok(_))),
        "stalled by unfinished handshakes: {answer:?}"
    );
    assert!(cluster.exited(1).is_none(), "the node exited");
    let page = cluster.metrics(1).await;
    assert!(handshake_failures(&page) >= before + 4.0);
    let client = cluster.client();
    client.create_topic("t", 1).await.unwrap();
    support::produce_values(&client, "t", 0, "v", 5).await;
    drop(held);
}

/// A node given a certificate that is not its own, or an expired one, does not start, and says
/// which file is wrong and why.
#[test]
fn a_node_refuses_to_start_with_another_nodes_or_an_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::for_cluster(dir.path(), 2);
    pki.issue(
        "node-1-expired",
        &["node-1"],
        Validity::Expired,
        &[rcgen::ExtendedKeyUsagePurpose::ServerAuth],
    );
    let start = |cert: &str| {
        let data = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(support::node_binary())
            .args(["--node-id", "1", "--listen-addr"])
            .arg(format!("127.0.0.1:{}", support::free_port()))
            .arg("--admin-addr")
            .arg(format!("127.0.0.1:{}", support::free_port()))
            .arg("--data-dir")
            .arg(data.path())
            .arg("--tls-ca")
            .arg(pki.dir().join("ca.pem"))
            .arg("--tls-cert")
            .arg(pki.dir().join(format!("{cert}.pem")))
            .arg("--tls-key")
            .arg(pki.dir().join(format!("{cert}-key.pem")))
            .env("RAFTLOG_LOG_COLOR", "never")
            .output()
            .unwrap();
        assert!(!output.status.success(), "started with {cert}");
        String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr)
    };
    let other = start("node-2");
    assert!(
        other.contains("must name this node as DNS name node-1") && other.contains("node-2"),
        "{other}"
    );
    let expired = start("node-1-expired");
    assert!(expired.contains("expired"), "{expired}");
}

/// Membership is the peer allow-list: a fourth node with a certificate of the CA joins a TLS
/// cluster as a learner (it admits the leader while it has no membership), becomes a voter and
/// replicates; once removed, its certificate no longer gets Raft calls through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_over_tls_replicates_and_once_removed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::for_cluster(dir.path(), 4);
    let mut cluster = TestCluster::start(3, tls_options(pki.dir(), &[]));
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("members", 1).await.unwrap();
    let mut acked = support::produce_values(&client, "members", 0, "x", 20).await;

    let new_id = cluster.add_node_process();
    assert_eq!(new_id, 4);
    let addr = cluster.node(new_id).grpc.clone();
    client.add_learner(new_id, &addr, true).await.unwrap();
    client.promote_voter(new_id).await.unwrap();
    acked.extend(support::produce_values(&client, "members", 0, "y", 20).await);
    cluster.wait_caught_up(&[1, 2, 3, 4]).await;
    assert_eq!(support::read_all(&cluster, 4, "members", 0).await, acked);
    // While a member, node 4's certificate is admitted by the others.
    let member = vote(&mut raft_client(&cluster, &pki, 1, Some("node-4"))).await;
    assert_eq!(member.code(), Code::NotFound, "{member}");

    client.remove_node(new_id).await.unwrap();
    cluster
        .wait_for(
            "node 1 to apply the removal",
            Duration::from_secs(20),
            || async {
                let status = cluster.status(1).await?;
                status
                    .voters
                    .iter()
                    .all(|m| m.node_id != new_id)
                    .then_some(())
            },
        )
        .await;
    let removed = vote(&mut raft_client(&cluster, &pki, 1, Some("node-4"))).await;
    assert_eq!(removed.code(), Code::PermissionDenied, "{removed}");
    cluster.kill9(new_id);
    support::produce_values(&client, "members", 0, "z", 10).await;
}
