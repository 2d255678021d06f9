//! Test support: a cluster of real `raftlog-node` processes on loopback, each with its own data
//! directory, controlled the way an operator would (spawn, SIGTERM, kill -9) and observed only
//! through the public gRPC API. Shared by the integration tests of every crate; the node binary
//! is found with [`node_binary`].

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftlog_client::{pb, Client, TlsOptions};

pub mod pki;

/// Extra flags for every node of a cluster.
#[derive(Clone, Default)]
pub struct NodeOptions {
    pub args: Vec<String>,
    /// TLS: a directory of [`pki::Pki`] files. Node `id` serves with `node-<id>.pem`, and the
    /// cluster's clients connect with `ca.pem` and the `client` certificate.
    pub tls_dir: Option<PathBuf>,
    /// Auth on (docs/security.md): every node runs with `--auth-enabled true` and this token as
    /// its bootstrap token (`User:bootstrap`, a super-user), and the harness's own clients
    /// (status, digests, metrics, [`TestCluster::client`]) send it.
    pub admin_token: Option<String>,
}

pub struct TestNode {
    pub id: u64,
    pub grpc: String,
    pub admin: String,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
    pub initial_cluster: Option<String>,
}

pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    pub options: NodeOptions,
    _dir: tempfile::TempDir,
}

/// The `raftlog-node` binary the tests run: `$RAFTLOG_NODE_BIN`, else the one cargo built next to
/// the running test (`<target>/<profile>/raftlog-node`; test binaries live in
/// `<target>/<profile>/deps`). Tests of another crate than the node's must have it built first
/// (`cargo build --release -p raftlog-node`, as scripts/test.sh does for the whole workspace).
pub fn node_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RAFTLOG_NODE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in <target>/<profile>/deps");
    let node = profile_dir.join("raftlog-node");
    assert!(
        node.exists(),
        "{} not found: build it first (cargo build --release -p raftlog-node) or set RAFTLOG_NODE_BIN",
        node.display()
    );
    node
}

/// A port for a node to bind, below the kernel's ephemeral range.
///
/// Not "bind port 0 and release it": that port comes from the ephemeral range, and between its
/// release and the node's bind (or a restarted node's re-bind) any outgoing connection of a
/// parallel test may be given it, and the node fails to start. Ports below the range are never
/// handed out that way. Each test process walks its own slice of 20000..32000 (by pid), and each
/// candidate is checked free with a bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % 48) as u16 * 250;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(offset < SPAN, "no free port left for test nodes");
        let port = FIRST + (start + offset) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl TestCluster {
    /// Starts `n` nodes bootstrapped from a static member list.
    pub fn start(n: u64, options: NodeOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<TestNode> = (1..=n)
            .map(|id| TestNode {
                id,
                grpc: format!("127.0.0.1:{}", free_port()),
                admin: format!("127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(format!("node-{id}")),
                child: None,
                initial_cluster: None,
            })
            .collect();
        let initial = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.grpc))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            nodes,
            options,
            _dir: dir,
        };
        for node in &mut cluster.nodes {
            node.initial_cluster = Some(initial.clone());
        }
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster
    }

    /// Adds a node process that is not a member yet (to be added as a learner).
    pub fn add_node_process(&mut self) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        self.nodes.push(TestNode {
            id,
            grpc: format!("127.0.0.1:{}", free_port()),
            admin: format!("127.0.0.1:{}", free_port()),
            data_dir: self._dir.path().join(format!("node-{id}")),
            child: None,
            initial_cluster: None,
        });
        self.spawn(id);
        id
    }

    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[(id - 1) as usize]
    }

    pub fn spawn(&mut self, id: u64) {
        let options = self.options.clone();
        let node = &mut self.nodes[(id - 1) as usize];
        assert!(node.child.is_none(), "node {id} is already running");
        std::fs::create_dir_all(&node.data_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.data_dir.join("node.log"))
            .unwrap();
        let mut cmd = Command::new(node_binary());
        cmd.arg("--node-id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--listen-addr")
            .arg(&node.grpc)
            .arg("--admin-addr")
            .arg(&node.admin)
            .args(&options.args)
            .args(options.tls_dir.iter().flat_map(|dir| {
                [
                    "--tls-ca".into(),
                    dir.join("ca.pem"),
                    "--tls-cert".into(),
                    dir.join(format!("node-{id}.pem")),
                    "--tls-key".into(),
                    dir.join(format!("node-{id}-key.pem")),
                ]
            }))
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(initial) = &node.initial_cluster {
            cmd.arg("--initial-cluster").arg(initial);
        }
        if let Some(token) = &options.admin_token {
            let file = node.data_dir.join("bootstrap.token");
            std::fs::write(&file, token).unwrap();
            cmd.arg("--auth-enabled")
                .arg("true")
                .arg("--bootstrap-token-file")
                .arg(file);
        }
        node.child = Some(cmd.spawn().expect("spawn raftlog-node"));
    }

    /// kill -9: no chance to flush anything.
    pub fn kill9(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        if let Some(mut child) = node.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, as systemd or Kubernetes stop a node, and wait for the process to exit.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        let node = &mut self.nodes[(id - 1) as usize];
        let mut child = node.child.take().expect("node is running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        child.wait().expect("wait for the node to exit")
    }

    /// The node's Prometheus metrics, from its admin HTTP server.
    pub async fn metrics(&self, id: u64) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A plain HTTP/1.0 GET: enough for one text page, and no HTTP client dependency.
        let mut stream = tokio::net::TcpStream::connect(&self.node(id).admin)
            .await
            .expect("connect to the admin HTTP server");
        let authorization = self
            .options
            .admin_token
            .as_ref()
            .map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request = format!(
            "GET /metrics HTTP/1.0\r\nHost: {}\r\n{authorization}\r\n",
            self.node(id).admin
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        body.to_string()
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).child.is_some()
    }

    /// The exit status of node `id` if its process has exited on its own (crashed or stopped);
    /// `None` while it runs or when it was never started or was killed through this harness.
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let node = &mut self.nodes[(id - 1) as usize];
        node.child
            .as_mut()?
            .try_wait()
            .expect("polling a node process")
    }

    /// A client that knows every running node.
    pub fn client(&self) -> Client {
        self.with_tls(
            Client::new(
                self.nodes
                    .iter()
                    .filter(|n| n.child.is_some())
                    .map(|n| n.grpc.clone()),
            )
            .unwrap(),
        )
    }

    pub fn client_of(&self, id: u64) -> Client {
        self.with_tls(Client::new([self.node(id).grpc.clone()]).unwrap())
    }

    /// `client` over TLS with the cluster's `client` certificate, when the cluster runs TLS, and
    /// with the admin token when auth is on.
    fn with_tls(&self, client: Client) -> Client {
        let client = match &self.options.admin_token {
            None => client,
            Some(token) => client
                .with_token(token)
                .expect("a token a header can carry"),
        };
        match &self.options.tls_dir {
            None => client,
            Some(dir) => client
                .with_tls(&TlsOptions {
                    ca: dir.join("ca.pem"),
                    cert: Some(dir.join("client.pem")),
                    key: Some(dir.join("client-key.pem")),
                })
                .expect("the test PKI's client files"),
        }
    }

    /// Sends SIGHUP to node `id` (a TLS node reloads its certificates).
    pub fn hangup(&self, id: u64) {
        let child = self.node(id).child.as_ref().expect("node is running");
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP failed");
    }

    pub async fn status(&self, id: u64) -> Option<pb::NodeStatus> {
        let client = self.client_of(id);
        let mut cluster = client.cluster_at(&self.node(id).grpc).ok()?;
        cluster
            .status(pb::StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    pub async fn digest(&self, id: u64) -> pb::StateDigestResponse {
        let client = self.client_of(id);
        let mut cluster = client.cluster_at(&self.node(id).grpc).unwrap();
        cluster
            .state_digest(pb::StateDigestRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    /// Polls `probe` until it returns Some, or panics with `what` after `timeout`.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the running nodes agree on one leader; returns its id.
    pub async fn wait_for_leader(&self) -> u64 {
        self.wait_for(
            "a leader all running nodes agree on",
            Duration::from_secs(30),
            || async {
                let mut leader = None;
                for node in self.nodes.iter().filter(|n| n.child.is_some()) {
                    let status = self.status(node.id).await?;
                    if !status.has_leader || leader.is_some_and(|l| l != status.leader_id) {
                        return None;
                    }
                    leader = Some(status.leader_id);
                }
                let leader = leader?;
                let status = self.status(leader).await?;
                (status.role == pb::Role::Leader as i32).then_some(leader)
            },
        )
        .await
    }

    /// Waits until every node of `ids` has applied what the leader had committed at the call.
    /// Holds while writes go on (unlike [`Self::wait_converged`], which needs them to pause
    /// long enough for all nodes to stand at one applied index).
    pub async fn wait_caught_up(&self, ids: &[u64]) {
        let leader = self.wait_for_leader().await;
        let target = self.status(leader).await.unwrap().committed_index;
        for &id in ids {
            self.wait_for(
                &format!("node {id} to apply index {target}"),
                Duration::from_secs(60),
                || async move {
                    let s = self.status(id).await?;
                    (s.applied_index >= target).then_some(())
                },
            )
            .await;
        }
    }

    /// Waits until every running node in `ids` has applied at least the leader's commit index, and
    /// returns their digests at one applied index (which must then be equal).
    pub async fn wait_converged(&self, ids: &[u64]) -> Vec<pb::StateDigestResponse> {
        self.wait_caught_up(ids).await;
        // Applied indices may still differ by entries committed since; compare at equal indices.
        self.wait_for(
            "equal applied indices and digests",
            Duration::from_secs(30),
            || async {
                let mut digests = Vec::new();
                for &id in ids {
                    digests.push(self.digest(id).await);
                }
                let first = &digests[0];
                digests
                    .iter()
                    .all(|d| d.applied_index == first.applied_index)
                    .then_some(digests)
            },
        )
        .await
    }

    pub fn dump_logs(&self) {
        for node in &self.nodes {
            if let Ok(log) = std::fs::read_to_string(node.data_dir.join("node.log")) {
                let tail: Vec<_> = log.lines().rev().take(40).collect();
                eprintln!("----- node {} log (last 40 lines) -----", node.id);
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Produces `count` single-record batches with values `{prefix}-{i}`; returns (offset, value).
pub async fn produce_values(
    client: &Client,
    topic: &str,
    partition: u32,
    prefix: &str,
    count: usize,
) -> Vec<(u64, String)> {
    let mut acked = Vec::with_capacity(count);
    for i in 0..count {
        let value = format!("{prefix}-{i}");
        let ack = client
            .produce(
                topic,
                partition,
                vec![raftlog_client::record(value.clone().into_bytes())],
            )
            .await
            .unwrap_or_else(|e| panic!("produce {value}: {e}"));
        acked.push((ack.base_offset, value));
    }
    acked
}

/// Reads the whole partition from one node.
pub async fn read_all(
    cluster: &TestCluster,
    id: u64,
    topic: &str,
    partition: u32,
) -> Vec<(u64, String)> {
    let client = cluster.client_of(id);
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let request = pb::FetchRequest {
            topic: topic.into(),
            partition,
            offset,
            max_records: 1000,
            max_bytes: 0,
            max_wait_ms: 0,
        };
        let response = client
            .fetch_from(&cluster.node(id).grpc, request)
            .await
            .unwrap();
        if response.records.is_empty() {
            return out;
        }
        for r in response.records {
            offset = r.offset + 1;
            out.push((r.offset, String::from_utf8(r.value.to_vec()).unwrap()));
        }
    }
}

/// The value of the sample `name{labels}` (labels exactly as rendered, "" for none) in a
/// Prometheus text page, if present.
pub fn sample(page: &str, name: &str, labels: &str) -> Option<f64> {
    let wanted = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series == wanted).then(|| value.parse().ok())?
    })
}

/// Every replica at the same applied index with the same state digest (and not empty).
pub fn assert_digests_equal(digests: &[pb::StateDigestResponse]) {
    let first = &digests[0];
    for d in digests {
        assert_eq!(
            (d.applied_index, &d.sha256),
            (first.applied_index, &first.sha256),
            "replicas differ: {digests:?}"
        );
    }
    assert!(first.keys > 0);
}
