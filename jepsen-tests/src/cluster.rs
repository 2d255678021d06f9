//! Process control of the cluster under test: start, kill -9, restart, pause (SIGSTOP) and resume
//! (SIGCONT) real `raftlog-node` processes, each with its own data directory; and the few
//! observations the harness needs (who leads, has everyone caught up), made through the public
//! gRPC API only.
//!
//! Nodes listen on loopback ports, or, when partitions are enabled, each inside its own network
//! namespace at its own address ([`crate::net`]).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use raftlog_client::{pb, Client};

use crate::net::Network;

pub struct NodeProcess {
    pub id: u64,
    pub grpc: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
    paused: bool,
}

pub struct Cluster {
    pub nodes: Vec<NodeProcess>,
    node_bin: PathBuf,
    initial_cluster: String,
    net: Option<Network>,
}

/// A loopback port for a node (when not in network namespaces), below the kernel's ephemeral
/// range: a port from "bind port 0" may be handed to an outgoing connection before the node (or
/// a node restarted by a nemesis) binds it. Candidates are checked free with a bind.
fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(10_000);
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        anyhow::ensure!(port < 20_000, "no free port left in 10000..20000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

/// Sends a signal with the system's `kill` (the workspace forbids unsafe code, so no libc call).
fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{sig} {pid} failed");
    Ok(())
}

impl Cluster {
    /// Starts `n` nodes bootstrapped from a static member list, in `data_root`.
    pub fn start(
        n: usize,
        node_bin: PathBuf,
        data_root: PathBuf,
        net: Option<Network>,
    ) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = i as u64 + 1;
            let grpc = match &net {
                Some(net) => format!("{}:8051", net.node_ip(i)),
                None => format!("127.0.0.1:{}", free_port()?),
            };
            nodes.push(NodeProcess {
                id,
                grpc,
                data_dir: data_root.join(format!("node-{id}")),
                child: None,
                paused: false,
            });
        }
        for node in &nodes {
            let host = node.grpc.rsplit_once(':').map_or("", |(host, _)| host);
            crate::secure::issue_node_certificate(node.id, host)?;
        }
        let initial_cluster = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.grpc))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            nodes,
            node_bin,
            initial_cluster,
            net,
        };
        for i in 0..n {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }

    pub fn has_network(&self) -> bool {
        self.net.is_some()
    }

    pub fn network(&self) -> Option<&Network> {
        self.net.as_ref()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.grpc.clone()).collect()
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    pub fn is_paused(&self, i: usize) -> bool {
        self.nodes[i].paused
    }

    /// Starts node `i` (index, 0-based) if it is not running.
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&node.data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.data_dir.join("node.log"))?;
        let mut cmd = match &self.net {
            Some(net) => net.command(i, &self.node_bin),
            None => Command::new(&self.node_bin),
        };
        // The admin HTTP port is not used by the harness; inside a namespace any fixed port is free.
        let admin = match &self.net {
            Some(net) => format!("{}:9090", net.node_ip(i)),
            None => format!("127.0.0.1:{}", free_port()?),
        };
        cmd.arg("--node-id")
            .arg(node.id.to_string())
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--listen-addr")
            .arg(&node.grpc)
            .arg("--admin-addr")
            .arg(admin)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            // No write is proposed after the workload's client has given up on it (checked as
            // `late-write`).
            .arg("--write-timeout-ms-max")
            .arg(crate::workload::CLIENT_DEADLINE.as_millis().to_string())
            .envs(crate::secure::node_env(node.id))
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        node.child = Some(
            cmd.spawn()
                .with_context(|| format!("starting node {}", node.id))?,
        );
        node.paused = false;
        Ok(())
    }

    /// kill -9 node `i`: no flush, no goodbye.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill()?;
            child.wait()?;
        }
        self.nodes[i].paused = false;
        Ok(())
    }

    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(child) = &self.nodes[i].child {
            signal(child.id(), "STOP")?;
            self.nodes[i].paused = true;
        }
        Ok(())
    }

    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(child) = &self.nodes[i].child {
            if self.nodes[i].paused {
                signal(child.id(), "CONT")?;
            }
        }
        self.nodes[i].paused = false;
        Ok(())
    }

    /// Ends every fault: resumes paused nodes, starts dead ones, heals the network.
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        if let Some(net) = &self.net {
            net.heal()?;
        }
        for i in 0..self.nodes.len() {
            self.resume(i)?;
            self.start_node(i)?;
        }
        Ok(())
    }

    async fn status(&self, i: usize) -> Option<pb::NodeStatus> {
        let client =
            crate::secure::secured(Client::new([self.nodes[i].grpc.clone()]).ok()?).ok()?;
        let mut cluster = client.cluster_at(&self.nodes[i].grpc).ok()?;
        let mut request = tonic::Request::new(pb::StatusRequest {});
        request.set_timeout(Duration::from_millis(500));
        cluster.status(request).await.ok().map(|r| r.into_inner())
    }

    /// The index of the node that currently claims leadership, if a reachable one does.
    pub async fn leader(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if !self.is_up(i) || self.is_paused(i) {
                continue;
            }
            if let Some(s) = self.status(i).await {
                if s.role == pb::Role::Leader as i32 {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Waits until one leader is known to every node and every node has applied what the leader
    /// committed: the cluster has recovered. Errors after `timeout`.
    pub async fn wait_recovered(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader().await {
                if let Some(ls) = self.status(leader).await {
                    let mut all = true;
                    for i in 0..self.nodes.len() {
                        match self.status(i).await {
                            Some(s)
                                if s.has_leader
                                    && s.leader_id == ls.node_id
                                    && s.applied_index >= ls.committed_index => {}
                            _ => all = false,
                        }
                    }
                    if all {
                        return Ok(());
                    }
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "cluster did not recover within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.resume(i);
            let _ = self.kill(i);
        }
    }
}
