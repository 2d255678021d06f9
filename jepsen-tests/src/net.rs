//! Real network partitions for the partition nemeses.
//!
//! This module owns the harness's private network: every node of the cluster under test runs in
//! its own Linux network namespace with its own IPv4 address, joined by a veth pair to a bridge in
//! the root namespace. The controller (the harness and its clients) sits on that bridge at `.1` and
//! can always reach every node. A partition is a set of iptables DROP rules inside the node
//! namespaces (INPUT from and OUTPUT to the peer's address), so it cuts node-to-node links only, in
//! both directions, and never the controller's; healing replaces those rules with none. Cutting
//! inside the namespaces (rather than on the bridge) keeps every fault local to what this module
//! created: the root namespace's firewall is touched only to let our own bridge forward (see
//! [`Network::create`]).
//!
//! Why namespaces rather than loopback ports: a partition must cut a node off from its peers while
//! the checker's clients still see the whole cluster, which needs one address per node and a place
//! to filter that the controller's traffic does not pass through.
//!
//! Requirements, checked at run time by [`Network::check_supported`]: root, `ip` (iproute2), and
//! `iptables` + `iptables-restore` (the `iptables` package). `scripts/install-deps.sh` must install
//! the Debian packages `iproute2` and `iptables`.
//!
//! Scope of the traffic: the subnet is `10.213.X.0/24`, with `X` chosen per network among those not
//! in use on this machine. It exists only on our bridge and inside our namespaces: the namespaces
//! get no default route, there is no NAT and nothing is routed anywhere else.
//!
//! Names: every object is named `rlj<pid>-<seq><kind>[<node>]` (pid and a per-process sequence
//! number in hex; kind `s` bridge, `n` namespace, `v` root end of a veth, `p` a probe namespace),
//! at most 15 characters (IFNAMSIZ). Concurrent runs therefore never collide, and
//! [`Network::cleanup_stale`] can tell what a crashed run left behind from what a live one uses.
//! The subnet is claimed by a file in [`CLAIM_DIR`] holding the run's name.
//!
//! The topology helpers at the end ([`halves`], [`isolate`], [`majority_ring`], [`bridge`],
//! [`permute_links`]) are pure functions of node indices, without randomness: the nemesis passes
//! an order drawn from its own seeded RNG.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{anyhow, bail, ensure, Context};

/// Prefix of every namespace, interface and claim this module creates.
const PREFIX: &str = "rlj";
/// The first two octets of every address this module assigns.
const NET_A: u8 = 10;
const NET_B: u8 = 213;
/// Where subnets are claimed (one file per subnet, holding the owning run's name). A tmpfs on
/// Debian, so claims vanish with the namespaces at reboot.
pub const CLAIM_DIR: &str = "/run/raftlog-jepsen-net";
/// The most nodes a network may have (names stay within IFNAMSIZ, addresses within the /24).
pub const MAX_NODES: usize = 64;

/// Per-process sequence number, so that several networks in one process (tests) do not collide.
static NEXT_SEQ: AtomicU32 = AtomicU32::new(0);

fn next_run_name() -> anyhow::Result<String> {
    let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
    ensure!(seq < 256, "too many networks created by one process");
    Ok(format!("{PREFIX}{:x}-{seq:x}", std::process::id()))
}

/// A private network of `nodes` namespaces; see the module documentation.
pub struct Network {
    /// `rlj<pid>-<seq>`: the prefix of every name of this network.
    run: String,
    /// The `X` of `10.213.X.0/24`.
    subnet: u8,
    nodes: usize,
    /// Whether an ACCEPT rule for our bridge was added to the root FORWARD chain.
    forward_rule: bool,
    torn_down: bool,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("run", &self.run)
            .field("subnet", &format!("{NET_A}.{NET_B}.{}.0/24", self.subnet))
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// Runs `program args` with `stdin` fed in, failing with its stderr (or a clear message when the
/// tool is not installed).
fn run_with_input(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow!(
                "`{program}` is not installed (scripts/install-deps.sh installs iproute2 and iptables)"
            ),
            _ => anyhow!("running {program}: {e}"),
        })?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("writing to {program}"))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    run_with_input(program, args, None)
}

/// Runs a command whose failure does not matter (cleanup of what may already be gone).
fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The run (`rlj<pid>-<seq>`) and pid an object name of this module belongs to, if it is one.
fn parse_name(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid_hex, rest) = rest.split_once('-')?;
    let pid = u32::from_str_radix(pid_hex, 16).ok()?;
    let seq_len = rest.bytes().take_while(u8::is_ascii_hexdigit).count();
    if seq_len == 0 {
        return None;
    }
    let kind = rest[seq_len..].chars().next()?;
    if !"snvp".contains(kind) {
        return None;
    }
    let run_len = PREFIX.len() + pid_hex.len() + 1 + seq_len;
    Some((&name[..run_len], pid))
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes every object (namespace, interface, root FORWARD rule, subnet claim) of the runs for
/// which `doomed(run, pid)` holds. Best effort: whatever cannot be listed is left alone.
fn remove_runs(doomed: impl Fn(&str, u32) -> bool) {
    let belongs = |name: &str| parse_name(name).is_some_and(|(run, pid)| doomed(run, pid));
    // Root ends of veths first: deleting one deletes its peer even if a process still holds the
    // namespace open.
    if let Ok(links) = run("ip", &["-o", "link", "show"]) {
        let mut bridges = Vec::new();
        for line in links.lines() {
            let Some(field) = line.split(':').nth(1) else {
                continue;
            };
            let name = field.trim().split('@').next().unwrap_or("");
            if !belongs(name) {
                continue;
            }
            if name.ends_with('s') {
                bridges.push(name.to_string());
            } else {
                run_quiet("ip", &["link", "del", name]);
            }
        }
        for name in bridges {
            run_quiet("ip", &["link", "del", &name]);
        }
    }
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if belongs(name) {
                run_quiet("ip", &["netns", "del", name]);
            }
        }
    }
    if let Ok(rules) = run("iptables", &["-w", "-S", "FORWARD"]) {
        for rule in rules.lines() {
            let words: Vec<&str> = rule.split_whitespace().collect();
            let ours = words.windows(2).any(|w| w[0] == "-i" && belongs(w[1]));
            if ours && words.first() == Some(&"-A") {
                let mut args = vec!["-w", "-D"];
                args.extend(&words[1..]);
                run_quiet("iptables", &args);
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(CLAIM_DIR) {
        for entry in dir.flatten() {
            let owner = std::fs::read_to_string(entry.path()).unwrap_or_default();
            // A claim's content is the run name: extend it to an object name to parse it.
            if belongs(&format!("{}s", owner.trim())) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn claim_path(subnet: u8) -> PathBuf {
    Path::new(CLAIM_DIR).join(format!("{NET_A}.{NET_B}.{subnet}"))
}

/// Claims a `10.213.X.0/24` that no interface or route of this machine uses and no other live
/// run has claimed. The claim file is created exclusively, so concurrent runs cannot both win.
fn claim_subnet(run_name: &str) -> anyhow::Result<u8> {
    std::fs::create_dir_all(CLAIM_DIR).with_context(|| format!("creating {CLAIM_DIR}"))?;
    let in_use = format!(
        "{}\n{}",
        run("ip", &["-4", "-o", "addr", "show"])?,
        run("ip", &["-4", "route", "show", "table", "all"])?
    );
    let start = std::process::id() as usize + NEXT_SEQ.load(Ordering::Relaxed) as usize * 37;
    for k in 0..256 {
        let subnet = ((start + k) % 256) as u8;
        if in_use.contains(&format!("{NET_A}.{NET_B}.{subnet}.")) {
            continue;
        }
        let path = claim_path(subnet);
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    file.write_all(run_name.as_bytes())
                        .with_context(|| format!("writing {}", path.display()))?;
                    return Ok(subnet);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // Taken; if by a run whose process is gone, free it and try once more.
                    let owner = std::fs::read_to_string(&path).unwrap_or_default();
                    let dead = parse_name(&format!("{}s", owner.trim()))
                        .is_some_and(|(_, pid)| !process_alive(pid));
                    if !dead {
                        break;
                    }
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
    }
    bail!("no free subnet {NET_A}.{NET_B}.X.0/24 left")
}

impl Network {
    /// Whether partitions can work here: running as root, `ip`, `iptables` and `iptables-restore`
    /// present, and a throwaway namespace can be created with a bridge, a veth pair and iptables
    /// rules inside it. `Err(reason)` otherwise (the harness then skips partition nemeses).
    pub fn check_supported() -> Result<(), String> {
        let euid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("Uid:"))?;
                line.split_whitespace().nth(2).map(str::to_string)
            });
        if euid.as_deref() != Some("0") {
            return Err("network partitions need root (network namespaces and iptables)".into());
        }
        for (tool, arg) in [
            ("ip", "-V"),
            ("iptables", "--version"),
            ("iptables-restore", "--version"),
        ] {
            run(tool, &[arg]).map_err(|e| format!("{e:#}"))?;
        }
        let probe = next_run_name().map_err(|e| e.to_string())? + "p";
        let result = (|| -> anyhow::Result<()> {
            run("ip", &["netns", "add", &probe]).context("cannot create a network namespace")?;
            run("ip", &["-n", &probe, "link", "add", "b0", "type", "bridge"])
                .context("cannot create a bridge")?;
            run(
                "ip",
                &[
                    "-n", &probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
                ],
            )
            .context("cannot create a veth pair")?;
            run_with_input(
                "ip",
                &["netns", "exec", &probe, "iptables-restore", "-w"],
                Some(&ruleset(&[])),
            )
            .context("cannot set iptables rules inside a network namespace")?;
            Ok(())
        })();
        run_quiet("ip", &["netns", "del", &probe]);
        result.map_err(|e| format!("{e:#}"))
    }

    /// Creates a bridge in the root namespace holding the controller address (`.1`) and one
    /// namespace per node, each joined to the bridge by a veth pair (`eth0` inside), node `i`
    /// (0-based) at `.(10+i)`, loopback up. Cleans up anything half-made on error.
    ///
    /// When `br_netfilter` is loaded, bridged frames traverse the root namespace's FORWARD chain;
    /// an ACCEPT rule for our bridge (removed at teardown) keeps a restrictive FORWARD policy
    /// (Docker's, say) from partitioning the nodes by accident.
    pub fn create(nodes: usize) -> anyhow::Result<Network> {
        ensure!(
            (1..=MAX_NODES).contains(&nodes),
            "a network has 1 to {MAX_NODES} nodes, not {nodes}"
        );
        let run_name = next_run_name()?;
        // Anything already named like this belongs to a dead process that had our pid.
        remove_runs(|run, _| run == run_name);
        let subnet = claim_subnet(&run_name)?;
        let mut net = Network {
            run: run_name,
            subnet,
            nodes,
            forward_rule: false,
            torn_down: false,
        };
        if let Err(e) = net.build() {
            net.teardown();
            return Err(e.context("creating the partition network"));
        }
        Ok(net)
    }

    fn bridge_name(&self) -> String {
        format!("{}s", self.run)
    }

    fn namespace(&self, node: usize) -> String {
        format!("{}n{node}", self.run)
    }

    fn veth(&self, node: usize) -> String {
        format!("{}v{node}", self.run)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let bridge = self.bridge_name();
        ensure!(
            self.veth(self.nodes - 1).len() <= 15,
            "interface name {} too long",
            self.veth(self.nodes - 1)
        );
        let controller = format!("{}/24", self.controller_ip());
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &controller, "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        if Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
            run(
                "iptables",
                &[
                    "-w", "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
                ],
            )?;
            self.forward_rule = true;
        }
        for i in 0..self.nodes {
            let ns = self.namespace(i);
            let veth = self.veth(i);
            let addr = format!("{}/24", self.node_ip(i));
            run("ip", &["netns", "add", &ns])?;
            run(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            run("ip", &["link", "set", &veth, "master", &bridge, "up"])?;
            run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// The number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Node `node`'s address (0-based), `10.213.X.(10+node)`.
    pub fn node_ip(&self, node: usize) -> Ipv4Addr {
        assert!(node < self.nodes, "node {node} of {}", self.nodes);
        Ipv4Addr::new(NET_A, NET_B, self.subnet, 10 + node as u8)
    }

    /// The controller's address on the bridge, `10.213.X.1`.
    pub fn controller_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(NET_A, NET_B, self.subnet, 1)
    }

    /// The name of `node`'s namespace (for logs and manual inspection).
    pub fn namespace_name(&self, node: usize) -> String {
        assert!(node < self.nodes, "node {node} of {}", self.nodes);
        self.namespace(node)
    }

    /// A command that runs `program` inside `node`'s namespace (`ip netns exec <ns> program`).
    /// `ip netns exec` execs the program, so the child's pid is the program's own and signals
    /// (kill, SIGSTOP/SIGCONT) reach it directly. Kill such processes before [`Self::teardown`].
    pub fn command(&self, node: usize, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace_name(node)])
            .arg(program);
        cmd
    }

    /// Cuts every link between nodes in different groups (both directions). Nodes in no group are
    /// isolated from everyone. The controller keeps reaching all nodes. Replaces any previous
    /// partition.
    pub fn partition(&self, groups: &[Vec<usize>]) -> anyhow::Result<()> {
        let mut group_of = vec![None; self.nodes];
        for (g, group) in groups.iter().enumerate() {
            for &node in group {
                ensure!(node < self.nodes, "node {node} of {}", self.nodes);
                ensure!(group_of[node].is_none(), "node {node} is in two groups");
                group_of[node] = Some(g);
            }
        }
        let mut cut = Vec::new();
        for a in 0..self.nodes {
            for b in a + 1..self.nodes {
                let together = matches!((group_of[a], group_of[b]), (Some(x), Some(y)) if x == y);
                if !together {
                    cut.push((a, b));
                }
            }
        }
        self.apply(&cut)
    }

    /// Cuts exactly the given links, each in both directions, and no others. Replaces any
    /// previous partition.
    pub fn cut_links(&self, cut: &[(usize, usize)]) -> anyhow::Result<()> {
        for &(a, b) in cut {
            ensure!(
                a < self.nodes && b < self.nodes,
                "link ({a}, {b}) of {} nodes",
                self.nodes
            );
        }
        self.apply(cut)
    }

    /// Removes all partition rules.
    pub fn heal(&self) -> anyhow::Result<()> {
        self.apply(&[])
    }

    /// Replaces every node's rules with DROPs for exactly its peers across `cut`. Each namespace's
    /// rules change atomically (one `iptables-restore`), so there is no healed moment in between.
    fn apply(&self, cut: &[(usize, usize)]) -> anyhow::Result<()> {
        ensure!(!self.torn_down, "the network was torn down");
        let mut blocked = vec![BTreeSet::new(); self.nodes];
        for &(a, b) in cut {
            if a != b {
                blocked[a].insert(b);
                blocked[b].insert(a);
            }
        }
        for (node, peers) in blocked.iter().enumerate() {
            let peers: Vec<Ipv4Addr> = peers.iter().map(|&p| self.node_ip(p)).collect();
            run_with_input(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.namespace(node),
                    "iptables-restore",
                    "-w",
                ],
                Some(&ruleset(&peers)),
            )
            .with_context(|| format!("setting the partition rules of node {node}"))?;
        }
        Ok(())
    }

    /// Deletes the namespaces, veths, bridge, FORWARD rule and subnet claim. Idempotent; also run
    /// on drop. Processes still running inside a namespace are left with loopback only.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        for i in 0..self.nodes {
            run_quiet("ip", &["link", "del", &self.veth(i)]);
            run_quiet("ip", &["netns", "del", &self.namespace(i)]);
        }
        let bridge = self.bridge_name();
        if self.forward_rule {
            run_quiet(
                "iptables",
                &[
                    "-w", "-D", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
                ],
            );
        }
        run_quiet("ip", &["link", "del", &bridge]);
        let claim = claim_path(self.subnet);
        if std::fs::read_to_string(&claim).is_ok_and(|owner| owner.trim() == self.run) {
            let _ = std::fs::remove_file(claim);
        }
        self.torn_down = true;
    }

    /// Removes leftovers of earlier runs that crashed: namespaces, interfaces, root FORWARD rules
    /// and subnet claims named by this module whose creating process is gone. Call at harness start.
    /// (A crashed run's pid reused by an unrelated process keeps its leftovers until that exits.)
    pub fn cleanup_stale() {
        remove_runs(|_, pid| !process_alive(pid));
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// An `iptables-restore` input for a node namespace's filter table: DROP everything from and to
/// `peers`, accept the rest.
fn ruleset(peers: &[Ipv4Addr]) -> String {
    let mut rules =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for peer in peers {
        rules.push_str(&format!("-A INPUT -s {peer}/32 -j DROP\n"));
        rules.push_str(&format!("-A OUTPUT -d {peer}/32 -j DROP\n"));
    }
    rules.push_str("COMMIT\n");
    rules
}

/// `node` alone, the rest together.
pub fn isolate(n: usize, node: usize) -> Vec<Vec<usize>> {
    assert!(node < n, "node {node} of {n}");
    vec![vec![node], (0..n).filter(|&i| i != node).collect()]
}

/// Two halves of the nodes, the smaller first: the first `n / 2` of `order` (a permutation of
/// `0..n` drawn by the caller's seeded RNG) and the rest.
pub fn halves(n: usize, order: &[usize]) -> Vec<Vec<usize>> {
    assert_permutation(n, order);
    vec![order[..n / 2].to_vec(), order[n / 2..].to_vec()]
}

/// Links to cut so that every node still sees a majority (itself included) but no two nodes see
/// the same majority, as in Jepsen's majorities-ring: nodes sit on a ring `0..n` and each stays
/// linked to the nearest `ceil((n/2)/2)` on either side. With 3 nodes links are symmetric, so the
/// best is one cut (0, 2): node 1 sees everyone, 0 and 2 different majorities. With fewer than 3
/// nothing can be cut. Relabel with [`permute_links`] to vary which nodes sit where.
pub fn majority_ring(n: usize) -> Vec<(usize, usize)> {
    if n < 3 {
        return Vec::new();
    }
    if n == 3 {
        return vec![(0, 2)];
    }
    let reach = (n / 2).div_ceil(2);
    let mut cut = Vec::new();
    for a in 0..n {
        for b in a + 1..n {
            let distance = (b - a).min(n - (b - a));
            if distance > reach {
                cut.push((a, b));
            }
        }
    }
    cut
}

/// Two halves that talk only through one bridge node: nodes `0..n/2` on one side, `n/2` the
/// bridge, `n/2+1..n` on the other; every link across the sides is cut. Relabel with
/// [`permute_links`] to vary which node bridges.
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

/// Relabels a topology: node `i` of `links` becomes `order[i]` (`order` a permutation of `0..n`
/// drawn by the caller's seeded RNG), pairs normalized smaller first.
pub fn permute_links(links: &[(usize, usize)], order: &[usize]) -> Vec<(usize, usize)> {
    assert_permutation(order.len(), order);
    links
        .iter()
        .map(|&(a, b)| {
            let (a, b) = (order[a], order[b]);
            (a.min(b), a.max(b))
        })
        .collect()
}

fn assert_permutation(n: usize, order: &[usize]) {
    let distinct: BTreeSet<usize> = order.iter().copied().collect();
    assert!(
        order.len() == n && distinct.len() == n && distinct.iter().all(|&i| i < n),
        "{order:?} is not a permutation of 0..{n}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::{SocketAddr, TcpStream};
    use std::process::Child;
    use std::time::Duration;

    /// The nodes `a` can talk to (itself included) once `cut` is applied.
    fn view(n: usize, cut: &[(usize, usize)], a: usize) -> BTreeSet<usize> {
        (0..n)
            .filter(|&b| b == a || !(cut.contains(&(a, b)) || cut.contains(&(b, a))))
            .collect()
    }

    #[test]
    fn majority_ring_leaves_each_node_a_distinct_majority() {
        for n in 3..=9 {
            let cut = majority_ring(n);
            let views: Vec<_> = (0..n).map(|a| view(n, &cut, a)).collect();
            for (a, v) in views.iter().enumerate() {
                assert!(
                    v.len() > n / 2,
                    "n={n}: node {a} sees {v:?}, not a majority"
                );
            }
            let distinct: BTreeSet<_> = views.iter().collect();
            assert_eq!(
                distinct.len(),
                n,
                "n={n}: two nodes see the same set: {views:?}"
            );
        }
        // With 5 nodes, exactly the ring neighbours: each sees 3.
        let cut = majority_ring(5);
        for a in 0..5 {
            assert_eq!(view(5, &cut, a).len(), 3);
        }
        assert!(majority_ring(2).is_empty());
    }

    #[test]
    fn bridge_node_reaches_everyone_and_the_sides_do_not_meet() {
        let cut = bridge(5);
        assert_eq!(view(5, &cut, 2), (0..5).collect());
        assert_eq!(view(5, &cut, 0), [0, 1, 2].into());
        assert_eq!(view(5, &cut, 1), [0, 1, 2].into());
        assert_eq!(view(5, &cut, 3), [2, 3, 4].into());
        assert_eq!(view(5, &cut, 4), [2, 3, 4].into());
        assert_eq!(bridge(3), vec![(0, 2)]);
    }

    #[test]
    fn halves_and_isolate_cover_every_node_once() {
        for n in 1..=7 {
            let order: Vec<usize> = (0..n).rev().collect();
            let h = halves(n, &order);
            assert_eq!(h.len(), 2);
            assert!(h[0].len() <= h[1].len() && h[1].len() - h[0].len() <= 1);
            let mut all: Vec<usize> = h.concat();
            all.sort();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
        }
        assert_eq!(halves(5, &[3, 1, 4, 0, 2]), vec![vec![3, 1], vec![4, 0, 2]]);
        assert_eq!(isolate(3, 1), vec![vec![1], vec![0, 2]]);
        assert_eq!(isolate(5, 0), vec![vec![0], vec![1, 2, 3, 4]]);
    }

    #[test]
    #[should_panic(expected = "not a permutation")]
    fn halves_rejects_a_non_permutation() {
        halves(3, &[0, 0, 1]);
    }

    #[test]
    fn permute_links_relabels_the_bridge() {
        // Node 2 bridges in bridge(5); with order[2] = 0, node 0 does.
        let cut = permute_links(&bridge(5), &[4, 3, 0, 1, 2]);
        assert_eq!(view(5, &cut, 0), (0..5).collect());
        assert_eq!(view(5, &cut, 4), [0, 3, 4].into());
    }

    #[test]
    fn names_parse_back_to_their_run_and_pid() {
        assert_eq!(parse_name("rlj1fa3-0s"), Some(("rlj1fa3-0", 0x1fa3)));
        assert_eq!(parse_name("rlj1fa3-ffn12"), Some(("rlj1fa3-ff", 0x1fa3)));
        assert_eq!(
            parse_name("rlj400000-ffv63"),
            Some(("rlj400000-ff", 0x400000))
        );
        assert_eq!(parse_name("rlj400000-ffv63").unwrap().0.len() + 3, 15);
        assert_eq!(parse_name("rlj1-2p"), Some(("rlj1-2", 1)));
        for other in [
            "eth0",
            "rlj",
            "rlj1fa3",
            "rlj1fa3-",
            "rlj1fa3-s",
            "rljx-1s",
            "rlj1-1q",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }

    #[test]
    fn ruleset_drops_peers_both_ways() {
        let rules = ruleset(&[Ipv4Addr::new(10, 213, 7, 11)]);
        assert!(rules.starts_with("*filter\n"));
        assert!(rules.contains("-A INPUT -s 10.213.7.11/32 -j DROP\n"));
        assert!(rules.contains("-A OUTPUT -d 10.213.7.11/32 -j DROP\n"));
        assert!(rules.ends_with("COMMIT\n"));
    }

    /// Kills and reaps a child process when dropped, so a failing assertion leaves none behind.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn python() -> &'static Path {
        let system = Path::new("/usr/bin/python3");
        if system.exists() {
            system
        } else {
            Path::new("python3")
        }
    }

    /// Whether `node`'s namespace can open a TCP connection to `addr` (1 s timeout).
    fn node_connects(net: &Network, node: usize, addr: SocketAddr) -> bool {
        let script = format!(
            "import socket\nsocket.create_connection(('{}', {}), timeout=1).close()",
            addr.ip(),
            addr.port()
        );
        let output = net
            .command(node, python())
            .args(["-c", &script])
            .stdin(Stdio::null())
            .output()
            .expect("running python3 in a namespace");
        output.status.success()
    }

    fn controller_connects(addr: SocketAddr) -> bool {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    }

    fn names_of(run: &str) -> Vec<String> {
        let netns = run_quiet_output("ip", &["netns", "list"]);
        let links = run_quiet_output("ip", &["-o", "link", "show"]);
        let rules = run_quiet_output("iptables", &["-w", "-S", "FORWARD"]);
        let mut found: Vec<String> = format!("{netns}\n{links}\n{rules}")
            .split(|c: char| c.is_whitespace() || c == ':' || c == '@')
            .filter(|word| parse_name(word).is_some_and(|(r, _)| r == run))
            .map(str::to_string)
            .collect();
        found.sort();
        found.dedup();
        found
    }

    fn run_quiet_output(program: &str, args: &[&str]) -> String {
        run(program, args).unwrap_or_default()
    }

    /// Runs only as root with `ip` and `iptables` (as in CI): otherwise it prints why and passes.
    #[test]
    fn partition_cuts_node_links_but_not_the_controller() {
        if let Err(reason) = Network::check_supported() {
            eprintln!("SKIPPED partition_cuts_node_links_but_not_the_controller: {reason}");
            return;
        }
        let mut net = Network::create(3).expect("creating a 3-node network");
        let run_name = net.run.clone();
        let claim = claim_path(net.subnet);
        assert_eq!(std::fs::read_to_string(&claim).unwrap(), run_name);
        // Three namespaces, three veths and the bridge (which the FORWARD rule, if any, names).
        assert_eq!(names_of(&run_name).len(), 7, "{:?}", names_of(&run_name));
        let target = SocketAddr::from((net.node_ip(1), 7000));
        let script = format!(
            "import socket\n\
             s = socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{}', {}))\n\
             s.listen(64)\n\
             print('ready', flush=True)\n\
             while True:\n    s.accept()[0].close()\n",
            target.ip(),
            target.port()
        );
        let mut listener = Reaped(
            net.command(1, python())
                .args(["-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .expect("starting a listener in node 1's namespace"),
        );
        let mut line = String::new();
        BufReader::new(listener.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");

        assert!(controller_connects(target), "controller -> node 1");
        assert!(node_connects(&net, 0, target), "node 0 -> node 1");
        assert!(node_connects(&net, 2, target), "node 2 -> node 1");

        net.partition(&[vec![0], vec![1, 2]]).unwrap();
        assert!(
            !node_connects(&net, 0, target),
            "node 0 -> node 1 across the partition"
        );
        assert!(
            node_connects(&net, 2, target),
            "node 2 -> node 1 on the same side"
        );
        assert!(
            controller_connects(target),
            "controller -> node 1 during the partition"
        );

        net.cut_links(&[(2, 1)]).unwrap();
        assert!(
            node_connects(&net, 0, target),
            "node 0 -> node 1 after a new cut"
        );
        assert!(!node_connects(&net, 2, target), "node 2 -> node 1 cut");

        net.heal().unwrap();
        assert!(node_connects(&net, 0, target), "node 0 -> node 1 healed");
        assert!(node_connects(&net, 2, target), "node 2 -> node 1 healed");
        assert!(controller_connects(target), "controller -> node 1 healed");

        drop(listener);
        net.teardown();
        net.teardown();
        assert_eq!(names_of(&run_name), Vec::<String>::new());
        assert!(!claim.exists(), "claim {} left behind", claim.display());
        assert!(net.heal().is_err(), "healing a torn-down network");
    }

    /// Runs only as root with `ip` and `iptables` (as in CI): otherwise it prints why and passes.
    #[test]
    fn cleanup_stale_removes_dead_runs_only() {
        if let Err(reason) = Network::check_supported() {
            eprintln!("SKIPPED cleanup_stale_removes_dead_runs_only: {reason}");
            return;
        }
        let live = Network::create(2).expect("creating a 2-node network");
        let dead_pid = (0x3f_0000..0x3f_ffff)
            .find(|&pid| !process_alive(pid))
            .unwrap();
        let dead = format!("{PREFIX}{dead_pid:x}-0");
        let (ns, bridge) = (format!("{dead}n0"), format!("{dead}s"));
        run("ip", &["netns", "add", &ns]).unwrap();
        run("ip", &["link", "add", &bridge, "type", "bridge"]).unwrap();
        run(
            "iptables",
            &[
                "-w", "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
            ],
        )
        .unwrap();
        std::fs::create_dir_all(CLAIM_DIR).unwrap();
        let claim = Path::new(CLAIM_DIR).join(format!("test-{dead_pid:x}"));
        std::fs::write(&claim, &dead).unwrap();
        assert_eq!(names_of(&dead).len(), 2, "{:?}", names_of(&dead));

        Network::cleanup_stale();
        assert_eq!(names_of(&dead), Vec::<String>::new());
        assert!(!claim.exists());
        assert_eq!(names_of(&live.run).len(), 5, "{:?}", names_of(&live.run));
        assert!(claim_path(live.subnet).exists());
        let run_name = live.run.clone();
        drop(live);
        assert_eq!(names_of(&run_name), Vec::<String>::new());
    }
}
