//! Errors that name the cause and the fix. Every failure ends as one [`CliError`], printed as
//! `error: ...` and, when a fix is known, `hint: ...` (or one JSON object with `--json`).
//!
//! When a command cannot reach what it needs, the nodes are asked for their Cluster.Status and
//! the answers turned into a verdict: no quorum ("2 of 3 voters unreachable"), a cluster never
//! initialized, an endpoint that is the admin HTTP port, or no node answering at all.
//! [`guard`] does this while a command waits, so a write without quorum fails in seconds rather
//! than at the end of its retries.

use std::future::Future;
use std::time::Duration;

use futures::future::join_all;
use raftlog_client::{pb, Client, Error};
use serde_json::json;
use tokio::time::Instant;
use tonic::Code;

/// A failure for people: what happened and, when known, what to do about it.
#[derive(Debug, Clone)]
pub struct CliError {
    /// A stable name for programs (`--json`): a gRPC code such as `NotFound`, or one of the
    /// CLI's own (`NoQuorum`, `Uninitialized`, `AdminPort`, `Unreachable`, `Timeout`, ...).
    pub kind: String,
    pub message: String,
    pub hint: Option<String>,
}

impl CliError {
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn print(&self, as_json: bool) {
        if as_json {
            let error = json!({"kind": self.kind, "message": self.message, "hint": self.hint});
            eprintln!("{}", json!({ "error": error }));
            return;
        }
        eprintln!("error: {}", self.message);
        if let Some(hint) = &self.hint {
            eprintln!("hint: {hint}");
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// Node messages name proto fields; people type flags.
const FIELD_TO_FLAG: &[(&str, &str)] = &[
    ("expected_end_offset", "--expect-offset"),
    ("retention_ms", "--retention"),
    ("retention_bytes", "--retention-bytes"),
    ("max_record_bytes", "--max-record-bytes"),
    ("(raftlog topic create)", "(`raftlog topic create`)"),
];

fn with_flag_names(message: &str) -> String {
    FIELD_TO_FLAG
        .iter()
        .fold(message.to_string(), |m, (field, flag)| {
            m.replace(field, flag)
        })
}

/// What the nodes say about the cluster, asked at once of every endpoint and every voter.
pub struct Health {
    pub nodes: Vec<(String, Result<pb::NodeStatus, Error>)>,
    /// For an endpoint that answered HTTP: the gRPC address its node's `/status` names.
    pub grpc_of_admin: Vec<(String, String)>,
}

/// Asks every endpoint, then every voter they name that is not an endpoint, for its status.
pub async fn probe(client: &Client) -> Health {
    let mut nodes = status_of(client, client.endpoints().to_vec()).await;
    let known: Vec<String> = nodes.iter().map(|(a, _)| a.clone()).collect();
    let mut more: Vec<String> = nodes
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .flat_map(|s| s.voters.iter().chain(&s.learners).map(|m| m.addr.clone()))
        .filter(|a| !known.contains(a))
        .collect();
    more.sort();
    more.dedup();
    nodes.extend(status_of(client, more).await);
    let mut grpc_of_admin = Vec::new();
    for (addr, status) in &nodes {
        if status.as_ref().err().is_some_and(answered_http) {
            if let Some(grpc) = grpc_addr_from_admin(addr).await {
                grpc_of_admin.push((addr.clone(), grpc));
            }
        }
    }
    Health {
        nodes,
        grpc_of_admin,
    }
}

/// The gRPC address of the node whose admin HTTP port is `admin`, from its `/status` (`addr`,
/// docs/operations.md). Best effort: `None` when anything is not as expected.
async fn grpc_addr_from_admin(admin: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
        let request = format!("GET /status HTTP/1.0\r\nHost: {admin}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let start = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let status: serde_json::Value = serde_json::from_slice(&response[start..]).ok()?;
        Some(status.get("addr")?.as_str()?.to_string())
    };
    tokio::time::timeout(Duration::from_secs(1), get)
        .await
        .ok()?
}

async fn status_of(
    client: &Client,
    addrs: Vec<String>,
) -> Vec<(String, Result<pb::NodeStatus, Error>)> {
    join_all(addrs.into_iter().map(|addr| async move {
        let ask = async {
            client
                .cluster_at(&addr)?
                .status(pb::StatusRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(Error::Status)
        };
        let status = match tokio::time::timeout(Duration::from_secs(2), ask).await {
            Ok(status) => status,
            Err(_) => Err(Error::Status(tonic::Status::deadline_exceeded(
                "no answer within 2 s",
            ))),
        };
        (addr, status)
    }))
    .await
}

impl Health {
    pub fn reachable(&self) -> impl Iterator<Item = &pb::NodeStatus> {
        self.nodes.iter().filter_map(|(_, s)| s.as_ref().ok())
    }

    /// The voters as the most recent node (highest term, then applied index) knows them.
    pub fn voters(&self) -> Vec<pb::Member> {
        self.reachable()
            .max_by_key(|s| (s.term, s.applied_index))
            .map(|s| s.voters.clone())
            .unwrap_or_default()
    }

    /// The leader every reachable voter agrees on, if any.
    pub fn leader(&self) -> Option<u64> {
        let leader = self
            .reachable()
            .find(|s| s.role == pb::Role::Leader as i32)?;
        Some(leader.node_id)
    }

    /// The voters that did not answer, with the reason.
    pub fn unreachable_voters(&self) -> Vec<(pb::Member, String)> {
        let reachable: Vec<u64> = self.reachable().map(|s| s.node_id).collect();
        self.voters()
            .into_iter()
            .filter(|m| !reachable.contains(&m.node_id))
            .map(|m| {
                let why = self
                    .nodes
                    .iter()
                    .find(|(a, _)| *a == m.addr)
                    .and_then(|(_, s)| s.as_ref().err())
                    .map_or("no answer".to_string(), connect_reason);
                (m, why)
            })
            .collect()
    }

    /// Why commands cannot work, if something certainly stops them: writes need a quorum
    /// (`needs_quorum`); anything needs one node that answers.
    pub fn blocking_error(&self, needs_quorum: bool) -> Option<CliError> {
        if let Some(e) = self.admin_port_error() {
            return Some(e);
        }
        if self.reachable().next().is_none() {
            return Some(self.unreachable_error());
        }
        if self.voters().is_empty() {
            let addrs: Vec<&str> = self.reachable().map(|s| s.addr.as_str()).collect();
            let who = match addrs.as_slice() {
                [one] => format!("the node at {one} is"),
                many => format!("the nodes at {} are", many.join(", ")),
            };
            return Some(
                CliError::new(
                    "Uninitialized",
                    format!("{who} not part of an initialized cluster (no voters)"),
                )
                .hint(
                    "start every node with the same initial_cluster (RAFTLOG_INITIAL_CLUSTER, \
                     --initial-cluster), or run `raftlog cluster init --member 1=HOST:PORT \
                     --member 2=...` once",
                ),
            );
        }
        let voters = self.voters();
        let down = self.unreachable_voters();
        let majority = voters.len() / 2 + 1;
        if needs_quorum && voters.len() - down.len() < majority {
            let list: Vec<String> = down
                .iter()
                .map(|(m, why)| format!("node {} at {}: {why}", m.node_id, m.addr))
                .collect();
            return Some(
                CliError::new(
                    "NoQuorum",
                    format!(
                        "no quorum: {} of {} voters unreachable ({}); a write needs {majority} of {}",
                        down.len(),
                        voters.len(),
                        list.join("; "),
                        voters.len()
                    ),
                )
                .hint("start the stopped nodes (scripts/cluster.sh restart N) or check the network; reads still work"),
            );
        }
        None
    }

    fn admin_port_error(&self) -> Option<CliError> {
        let http: Vec<&str> = self
            .nodes
            .iter()
            .filter(|(_, s)| s.as_ref().err().is_some_and(answered_http))
            .map(|(a, _)| a.as_str())
            .collect();
        if http.is_empty() {
            return None;
        }
        let mut grpc: Vec<&str> = self.grpc_of_admin.iter().map(|(_, g)| g.as_str()).collect();
        if grpc.is_empty() {
            grpc = self.reachable().map(|s| s.addr.as_str()).collect();
        }
        let where_grpc = if grpc.is_empty() {
            "the node's listen_addr (127.0.0.1:805N in scripts/cluster.sh's cluster; the admin \
             port is 909N)"
                .to_string()
        } else {
            format!("e.g. {}", grpc.join(", "))
        };
        Some(
            CliError::new(
                "AdminPort",
                format!(
                    "{} answered with HTTP, not gRPC: that is a node's admin HTTP port \
                     (/healthz, /readyz, /metrics)",
                    http.join(", ")
                ),
            )
            .hint(format!(
                "give --endpoints (or RAFTLOG_ENDPOINTS) the gRPC port: {where_grpc}"
            )),
        )
    }

    fn unreachable_error(&self) -> CliError {
        let list: Vec<String> = self
            .nodes
            .iter()
            .map(|(a, s)| match s {
                Ok(_) => format!("{a}: ok"),
                Err(e) => format!("{a}: {}", connect_reason(e)),
            })
            .collect();
        let error = CliError::new(
            "Unreachable",
            format!("no node answered ({})", list.join("; ")),
        );
        let reasons = list.join(" ").to_lowercase();
        // A plaintext client's HTTP/2 preface is not a TLS hello: a TLS node just closes, which
        // the client reports as an HTTP/2 protocol error.
        if reasons.contains("h2 protocol error") {
            return error.hint(TLS_HINT);
        }
        if reasons.contains("certificate") {
            return error.hint(
                "a TLS certificate was refused: check that --tls-ca is the CA that signed the nodes, \
                 and --tls-cert/--tls-key one it signed that has not expired (docs/security.md)",
            );
        }
        error.hint("is the cluster up (scripts/cluster.sh status)? Are --endpoints / RAFTLOG_ENDPOINTS right?")
    }
}

/// A transport error in a few words ("connection refused", "no answer within 2 s").
fn connect_reason(e: &Error) -> String {
    let message = e
        .status()
        .map_or(e.to_string(), |s| s.message().to_string());
    let source = e
        .status()
        .and_then(|s| std::error::Error::source(s))
        .map(|s| format!("{s:?}"))
        .unwrap_or_default();
    if message.contains("Connection refused") || source.contains("ConnectionRefused") {
        "connection refused".into()
    } else if message.contains("tcp connect error") {
        "cannot connect".into()
    } else if answered_http(e) {
        "answered HTTP, not gRPC".into()
    } else {
        message
    }
}

/// tonic's words for an answer that was HTTP but not gRPC (an admin port, a web server).
fn answered_http(e: &Error) -> bool {
    e.status().is_some_and(|s| {
        s.message().contains("grpc-status header missing")
            || s.message().contains("HTTP status code")
    })
}

/// Turns any failure of a command into a [`CliError`], asking the nodes when the error alone
/// does not say why.
pub async fn explain(client: Option<&Client>, error: anyhow::Error) -> CliError {
    let error = match error.downcast::<CliError>() {
        Ok(e) => return e,
        Err(e) => e,
    };
    let Some(e) = error.downcast_ref::<Error>() else {
        return CliError::new("Error", format!("{error:#}"));
    };
    // CANCELLED: the node closed the connection under the request (a TLS node hearing
    // plaintext, a refused client certificate); the probe's per-node reasons say which.
    let client_failed = answered_http(e)
        || matches!(e, Error::Exhausted { .. })
        || matches!(e.code(), Code::Unavailable | Code::Cancelled);
    if let (true, Some(client)) = (client_failed, client) {
        if let Some(verdict) = probe(client).await.blocking_error(true) {
            return verdict;
        }
    }
    let (code, message) = match e {
        Error::Exhausted {
            attempts,
            elapsed,
            last,
        } => (
            last.code(),
            format!(
                "no leader accepted the request in {:.1} s ({attempts} attempts); last answer: {}",
                elapsed.as_secs_f64(),
                last.message()
            ),
        ),
        Error::Status(s) => (s.code(), s.message().to_string()),
        Error::Endpoint(_) | Error::Tls(_) | Error::Token(_) => {
            (Code::InvalidArgument, e.to_string())
        }
    };
    // The context the command added ("reading orders/0"), then the node's words.
    let context = error
        .chain()
        .take_while(|c| c.downcast_ref::<Error>().is_none())
        .map(|c| format!("{c}: "))
        .collect::<String>();
    let error = CliError::new(
        &format!("{code:?}"),
        format!("{context}{code:?}: {}", with_flag_names(&message)),
    );
    if closed_under_request(code, &message) {
        return error.hint(TLS_HINT);
    }
    match code {
        Code::Unauthenticated => error.hint(
            "the cluster requires authentication: give a token with --token (RAFTLOG_TOKEN); \
             an admin makes one with `raftlog user create` (docs/security.md)",
        ),
        Code::PermissionDenied => error.hint(
            "ask an admin for an ACL entry (`raftlog acl add`); `raftlog whoami` shows who the \
             cluster takes you for",
        ),
        _ => error,
    }
}

/// What a node that closed the connection under a request most likely means.
const TLS_HINT: &str = "the node closed the connection: if the nodes serve TLS, give their CA \
     with --tls-ca (RAFTLOG_TLS_CA); if you did, check it is the CA that signed them and that \
     --tls-cert/--tls-key are of that CA and unexpired (docs/security.md)";

/// How a connection the node closed under a request shows: a plaintext HTTP/2 preface sent to a
/// TLS node, or (TLS 1.3) a client certificate the node refused after the client's handshake.
fn closed_under_request(code: Code, message: &str) -> bool {
    matches!(code, Code::Cancelled | Code::Internal | Code::Unknown)
        && [
            "h2 protocol error",
            "operation was canceled",
            "transport error",
        ]
        .iter()
        .any(|words| message.contains(words))
}

/// Runs `work`, watching the cluster while it waits: once `stalled()` (when the oldest pending
/// operation started, `None` when nothing is pending) is 2 s old, the nodes are asked about
/// the cluster every second, and the work is abandoned with the verdict as soon as something
/// certainly stops it, or with a timeout once it is `timeout` old.
pub async fn guard<T>(
    client: &Client,
    timeout: Duration,
    needs_quorum: bool,
    stalled: impl Fn() -> Option<Instant>,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let watch = async {
        let first_probe = timeout.min(Duration::from_secs(2));
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Some(since) = stalled() else { continue };
            if since.elapsed() < first_probe {
                continue;
            }
            let health = probe(client).await;
            if let Some(e) = health.blocking_error(needs_quorum) {
                return e;
            }
            if since.elapsed() >= timeout {
                let leader = match health.leader() {
                    Some(id) => format!("node {id} is the leader"),
                    None => "no leader is known (an election may be under way)".into(),
                };
                return CliError::new(
                    "Timeout",
                    format!(
                        "no answer within {} (--timeout); {leader}",
                        humantime::format_duration(timeout)
                    ),
                )
                .hint("retry, or give more time with --timeout (e.g. --timeout 1m)");
            }
            tokio::time::sleep(Duration::from_millis(750)).await;
        }
    };
    tokio::select! {
        result = work => result,
        verdict = watch => Err(verdict.into()),
    }
}

/// [`guard`] for a command that is one operation: stalled from the start.
pub async fn guard_call<T>(
    client: &Client,
    timeout: Duration,
    needs_quorum: bool,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    guard(client, timeout, needs_quorum, move || Some(start), work).await
}
