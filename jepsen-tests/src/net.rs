//! Real network partitions: every node of the cluster under test runs in its own Linux network
//! namespace with its own address, joined by a veth pair to a bridge in the root namespace, where
//! the controller (the harness and its clients) sits at `.1` and can always reach every node.
//! Partitions are iptables DROP rules inside the node namespaces, so they cut node-to-node links
//! only, in both directions, and healing is flushing those rules.
//!
//! Needs root, `ip` (iproute2) and `iptables` (scripts/install-deps.sh installs both). The subnet
//! (10.213.X.0/24) exists only inside namespaces this module creates: no route, NAT or default
//! gateway leads anywhere else. Names carry the creating pid, so concurrent runs do not collide
//! and [`Network::cleanup_stale`] can remove what a crashed run left behind.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

pub struct Network {
    tag: String,
    subnet: u8,
    nodes: usize,
    torn_down: bool,
}

/// Runs a command, failing with its stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Network {
    /// Whether partitions can work here; the reason when not.
    pub fn check_supported() -> Result<(), String> {
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
            });
        if uid.as_deref() != Some("0") {
            return Err("network partitions need root (network namespaces and iptables)".into());
        }
        for (tool, version_flag) in [("ip", "-V"), ("iptables", "--version")] {
            let found = Command::new(tool)
                .arg(version_flag)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !found.is_ok_and(|s| s.success()) {
                return Err(format!(
                    "`{tool}` is not installed (scripts/install-deps.sh installs it)"
                ));
            }
        }
        let probe = format!("rlprobe{}", std::process::id());
        if let Err(e) = run("ip", &["netns", "add", &probe]) {
            return Err(format!("cannot create a network namespace: {e}"));
        }
        run_quiet("ip", &["netns", "del", &probe]);
        Ok(())
    }

    /// Creates the bridge, the controller address and one namespace per node.
    pub fn create(nodes: usize) -> anyhow::Result<Network> {
        anyhow::ensure!((1..=50).contains(&nodes), "1 to 50 nodes");
        let pid = std::process::id();
        let mut net = Network {
            tag: format!("{pid:x}"),
            subnet: (pid % 250 + 2) as u8,
            nodes,
            torn_down: false,
        };
        if let Err(e) = net.build() {
            net.teardown();
            return Err(e);
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("rlb{}", self.tag)
    }

    fn namespace(&self, node: usize) -> String {
        format!("rl{}n{node}", self.tag)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let bridge = self.bridge();
        let controller = format!("{}/24", self.controller_ip());
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &controller, "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        // With br_netfilter loaded, bridged frames traverse the root FORWARD chain; make sure a
        // restrictive policy there does not partition our nodes by accident.
        run(
            "iptables",
            &[
                "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
            ],
        )?;
        for i in 0..self.nodes {
            let ns = self.namespace(i);
            let host = format!("rl{}h{i}", self.tag);
            let inner = format!("rl{}c{i}", self.tag);
            let addr = format!("{}/24", self.node_ip(i));
            run("ip", &["netns", "add", &ns])?;
            run(
                "ip",
                &["link", "add", &host, "type", "veth", "peer", "name", &inner],
            )?;
            run("ip", &["link", "set", &inner, "netns", &ns])?;
            run("ip", &["link", "set", &host, "master", &bridge])?;
            run("ip", &["link", "set", &host, "up"])?;
            run(
                "ip",
                &[
                    "netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", &inner,
                ],
            )?;
            run(
                "ip",
                &["netns", "exec", &ns, "ip", "link", "set", &inner, "up"],
            )?;
            run(
                "ip",
                &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"],
            )?;
        }
        Ok(())
    }

    pub fn node_ip(&self, node: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 10 + node as u8)
    }

    pub fn controller_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 1)
    }

    /// A command that runs `program` inside `node`'s namespace. `ip netns exec` execs the program,
    /// so the child's pid is the program's and signals reach it directly.
    pub fn command(&self, node: usize, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace(node)])
            .arg(program);
        cmd
    }

    fn drop_between(&self, a: usize, b: usize) -> anyhow::Result<()> {
        for (me, peer) in [(a, b), (b, a)] {
            let ns = self.namespace(me);
            let ip = self.node_ip(peer).to_string();
            run(
                "ip",
                &[
                    "netns", "exec", &ns, "iptables", "-A", "INPUT", "-s", &ip, "-j", "DROP",
                ],
            )?;
            run(
                "ip",
                &[
                    "netns", "exec", &ns, "iptables", "-A", "OUTPUT", "-d", &ip, "-j", "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// Cuts every link between nodes of different groups; nodes in no group are isolated.
    pub fn partition(&self, groups: &[Vec<usize>]) -> anyhow::Result<()> {
        self.heal()?;
        let group_of = |n: usize| groups.iter().position(|g| g.contains(&n));
        for a in 0..self.nodes {
            for b in a + 1..self.nodes {
                let same = matches!((group_of(a), group_of(b)), (Some(x), Some(y)) if x == y);
                if !same {
                    self.drop_between(a, b)?;
                }
            }
        }
        Ok(())
    }

    /// Cuts exactly these links (both directions).
    pub fn cut_links(&self, cut: &[(usize, usize)]) -> anyhow::Result<()> {
        self.heal()?;
        for &(a, b) in cut {
            self.drop_between(a, b)?;
        }
        Ok(())
    }

    pub fn heal(&self) -> anyhow::Result<()> {
        for i in 0..self.nodes {
            let ns = self.namespace(i);
            run("ip", &["netns", "exec", &ns, "iptables", "-F", "INPUT"])?;
            run("ip", &["netns", "exec", &ns, "iptables", "-F", "OUTPUT"])?;
        }
        Ok(())
    }

    /// Deletes everything this network created. Idempotent; also run on drop.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        for i in 0..self.nodes {
            // Deleting the namespace deletes the veth pair with it.
            run_quiet("ip", &["netns", "del", &self.namespace(i)]);
        }
        let bridge = self.bridge();
        run_quiet(
            "iptables",
            &[
                "-D", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
            ],
        );
        run_quiet("ip", &["link", "del", &bridge]);
        self.torn_down = true;
    }

    /// Removes namespaces and bridges of earlier runs whose process is gone.
    pub fn cleanup_stale() {
        let alive = |tag: &str| {
            u32::from_str_radix(tag, 16)
                .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
        };
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or("");
                if let Some(rest) = name.strip_prefix("rl") {
                    if let Some((tag, _)) = rest.split_once('n') {
                        if !alive(tag) {
                            run_quiet("ip", &["netns", "del", name]);
                        }
                    }
                }
            }
        }
        if let Ok(out) = Command::new("ip")
            .args(["-o", "link", "show", "type", "bridge"])
            .output()
        {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split(':').nth(1).map(str::trim).unwrap_or("");
                if let Some(tag) = name.strip_prefix("rlb") {
                    if !alive(tag) {
                        run_quiet(
                            "iptables",
                            &["-D", "FORWARD", "-i", name, "-o", name, "-j", "ACCEPT"],
                        );
                        run_quiet("ip", &["link", "del", name]);
                    }
                }
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// `node` alone, the rest together.
pub fn isolate(n: usize, node: usize) -> Vec<Vec<usize>> {
    vec![vec![node], (0..n).filter(|&i| i != node).collect()]
}

/// Two halves (the smaller first) of the nodes in `order` (a shuffled 0..n from the caller's RNG).
pub fn halves(n: usize, order: &[usize]) -> Vec<Vec<usize>> {
    assert_eq!(order.len(), n);
    vec![order[..n / 2].to_vec(), order[n / 2..].to_vec()]
}

/// Links to cut so every node still sees a majority (itself included) but no two neighbours see the
/// same majority, as in Jepsen's majorities-ring: nodes stay linked only to ring neighbours.
pub fn majority_ring(n: usize) -> Vec<(usize, usize)> {
    if n == 3 {
        // Node 1 sees all; nodes 0 and 2 each see a different majority.
        return vec![(0, 2)];
    }
    let reach = (n / 2).div_ceil(2);
    let mut cut = Vec::new();
    for a in 0..n {
        for b in a + 1..n {
            let d = (b - a).min(n - (b - a));
            if d > reach {
                cut.push((a, b));
            }
        }
    }
    cut
}

/// Two halves that talk only through one bridge node in the middle (node n/2).
pub fn bridge(n: usize) -> Vec<(usize, usize)> {
    let middle = n / 2;
    let mut cut = Vec::new();
    for a in 0..middle {
        for b in middle + 1..n {
            cut.push((a, b));
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linked(n: usize, cut: &[(usize, usize)], a: usize) -> Vec<usize> {
        (0..n)
            .filter(|&b| b == a || !cut.contains(&(a.min(b), a.max(b))))
            .collect()
    }

    #[test]
    fn majority_ring_leaves_each_node_a_distinct_majority() {
        for n in [3, 5] {
            let cut = majority_ring(n);
            let views: Vec<_> = (0..n).map(|a| linked(n, &cut, a)).collect();
            for v in &views {
                assert!(v.len() > n / 2, "n={n}: {v:?} is not a majority");
            }
            assert!(views.iter().any(|v| v.len() < n), "n={n}: nothing was cut");
            assert!(
                views.windows(2).any(|w| w[0] != w[1]),
                "n={n}: every node sees the same majority"
            );
        }
    }

    #[test]
    fn bridge_node_reaches_everyone_and_the_sides_do_not_meet() {
        let cut = bridge(5);
        assert_eq!(linked(5, &cut, 2), vec![0, 1, 2, 3, 4]);
        assert_eq!(linked(5, &cut, 0), vec![0, 1, 2]);
        assert_eq!(linked(5, &cut, 4), vec![2, 3, 4]);
    }

    #[test]
    fn halves_and_isolate_cover_every_node_once() {
        let h = halves(5, &[3, 1, 4, 0, 2]);
        assert_eq!(h, vec![vec![3, 1], vec![4, 0, 2]]);
        assert_eq!(isolate(3, 1), vec![vec![1], vec![0, 2]]);
    }
}
