//! The nemesis: injects faults into the cluster on a schedule drawn from a seeded RNG (so a run's
//! schedule is reproducible from its seed), heals each one before the next, and records every
//! fault's interval for the report.
//!
//! Faults: kill -9 (a random node, the leader, a majority), pause with SIGSTOP (same targets),
//! network partitions (isolate the leader, random halves, majority ring, bridge; namespaces
//! only), and the combinations that broke other systems (pause then kill, partition then kill).

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use raftlog_client::{Client, RetryPolicy};

use crate::cluster::Cluster;
use crate::history::Recorder;
use crate::report::NemesisInterval;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillRandom,
    KillLeader,
    KillMajority,
    PauseRandom,
    PauseLeader,
    PauseMajority,
    PartitionIsolateLeader,
    PartitionHalves,
    PartitionMajorityRing,
    PartitionBridge,
    PauseThenKill,
    PartitionThenKill,
    /// Remove a voter from the membership; healing adds it back as a learner and promotes it.
    MembershipRemoveAdd,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillRandom => "kill-random",
            Fault::KillLeader => "kill-leader",
            Fault::KillMajority => "kill-majority",
            Fault::PauseRandom => "pause-random",
            Fault::PauseLeader => "pause-leader",
            Fault::PauseMajority => "pause-majority",
            Fault::PartitionIsolateLeader => "partition-leader",
            Fault::PartitionHalves => "partition-halves",
            Fault::PartitionMajorityRing => "partition-ring",
            Fault::PartitionBridge => "partition-bridge",
            Fault::PauseThenKill => "pause-then-kill",
            Fault::PartitionThenKill => "partition-then-kill",
            Fault::MembershipRemoveAdd => "membership-remove-add",
        }
    }

    pub fn needs_network(self) -> bool {
        matches!(
            self,
            Fault::PartitionIsolateLeader
                | Fault::PartitionHalves
                | Fault::PartitionMajorityRing
                | Fault::PartitionBridge
                | Fault::PartitionThenKill
        )
    }

    /// Parses a comma-separated list of groups (`kill`, `pause`, `partition`, `combo`, `all`,
    /// `none`) or single fault names.
    pub fn parse_list(spec: &str) -> anyhow::Result<Vec<Fault>> {
        use Fault::*;
        let mut out = Vec::new();
        for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let group: &[Fault] = match word {
                "none" => &[],
                "kill" => &[KillRandom, KillLeader, KillMajority],
                "pause" => &[PauseRandom, PauseLeader, PauseMajority],
                "partition" => &[PartitionIsolateLeader, PartitionHalves, PartitionMajorityRing, PartitionBridge],
                "combo" => &[PauseThenKill, PartitionThenKill],
                "membership" => &[MembershipRemoveAdd],
                "all" => &[
                    KillRandom, KillLeader, KillMajority, PauseRandom, PauseLeader, PauseMajority,
                    PartitionIsolateLeader, PartitionHalves, PartitionMajorityRing, PartitionBridge,
                    PauseThenKill, PartitionThenKill, MembershipRemoveAdd,
                ],
                name => match ALL.iter().find(|f| f.name() == name) {
                    Some(f) => std::slice::from_ref(f),
                    None => anyhow::bail!("unknown nemesis '{name}' (groups: kill, pause, partition, combo, membership, all, none)"),
                },
            };
            for f in group {
                if !out.contains(f) {
                    out.push(*f);
                }
            }
        }
        Ok(out)
    }
}

const ALL: [Fault; 13] = [
    Fault::KillRandom,
    Fault::KillLeader,
    Fault::KillMajority,
    Fault::PauseRandom,
    Fault::PauseLeader,
    Fault::PauseMajority,
    Fault::PartitionIsolateLeader,
    Fault::PartitionHalves,
    Fault::PartitionMajorityRing,
    Fault::PartitionBridge,
    Fault::PauseThenKill,
    Fault::PartitionThenKill,
    Fault::MembershipRemoveAdd,
];

pub struct Schedule {
    pub faults: Vec<Fault>,
    pub fault_secs: (u64, u64),
    pub quiet_secs: (u64, u64),
}

pub struct Nemesis {
    rng: StdRng,
    recorder: Recorder,
    pub intervals: Vec<NemesisInterval>,
    /// A node removed from the membership, to be added back when the fault heals.
    removed: Option<usize>,
}

impl Nemesis {
    pub fn new(seed: u64, recorder: Recorder) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            recorder,
            intervals: Vec::new(),
            removed: None,
        }
    }

    fn random_node(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }

    fn majority(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut self.rng);
        order.truncate(n / 2 + 1);
        order
    }

    fn shuffled(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut self.rng);
        order
    }

    async fn leader_or_random(&mut self, cluster: &Cluster) -> usize {
        match cluster.leader().await {
            Some(l) => l,
            None => self.random_node(cluster.nodes.len()),
        }
    }

    /// Starts `fault`. Returns a description of what was done.
    async fn inject(&mut self, cluster: &mut Cluster, fault: Fault) -> anyhow::Result<String> {
        let n = cluster.nodes.len();
        Ok(match fault {
            Fault::KillRandom => {
                let i = self.random_node(n);
                cluster.kill(i)?;
                format!("killed node {}", i + 1)
            }
            Fault::KillLeader => {
                let i = self.leader_or_random(cluster).await;
                cluster.kill(i)?;
                format!("killed leader node {}", i + 1)
            }
            Fault::KillMajority => {
                let nodes = self.majority(n);
                for &i in &nodes {
                    cluster.kill(i)?;
                }
                format!(
                    "killed nodes {:?}",
                    nodes.iter().map(|i| i + 1).collect::<Vec<_>>()
                )
            }
            Fault::PauseRandom => {
                let i = self.random_node(n);
                cluster.pause(i)?;
                format!("paused node {}", i + 1)
            }
            Fault::PauseLeader => {
                let i = self.leader_or_random(cluster).await;
                cluster.pause(i)?;
                format!("paused leader node {}", i + 1)
            }
            Fault::PauseMajority => {
                let nodes = self.majority(n);
                for &i in &nodes {
                    cluster.pause(i)?;
                }
                format!(
                    "paused nodes {:?}",
                    nodes.iter().map(|i| i + 1).collect::<Vec<_>>()
                )
            }
            Fault::PauseThenKill => {
                let i = self.leader_or_random(cluster).await;
                cluster.pause(i)?;
                tokio::time::sleep(Duration::from_millis(self.rng.random_range(500..3000))).await;
                cluster.kill(i)?;
                format!("paused then killed node {}", i + 1)
            }
            Fault::PartitionIsolateLeader => {
                let i = self.leader_or_random(cluster).await;
                let groups = crate::net::isolate(n, i);
                cluster
                    .network()
                    .expect("partition faults need the network")
                    .partition(&groups)?;
                format!("isolated leader node {}", i + 1)
            }
            Fault::PartitionHalves => {
                let order = self.shuffled(n);
                let groups = crate::net::halves(n, &order);
                cluster
                    .network()
                    .expect("partition faults need the network")
                    .partition(&groups)?;
                format!("partitioned into {groups:?} (0-based)")
            }
            Fault::PartitionMajorityRing => {
                let order = self.shuffled(n);
                let cut = crate::net::permute_links(&crate::net::majority_ring(n), &order);
                cluster
                    .network()
                    .expect("partition faults need the network")
                    .cut_links(&cut)?;
                "majority ring".to_string()
            }
            Fault::PartitionBridge => {
                let order = self.shuffled(n);
                let cut = crate::net::permute_links(&crate::net::bridge(n), &order);
                cluster
                    .network()
                    .expect("partition faults need the network")
                    .cut_links(&cut)?;
                "bridge".to_string()
            }
            Fault::MembershipRemoveAdd => {
                let i = self.random_node(n);
                let id = cluster.nodes[i].id;
                admin_client(cluster)?.remove_node(id).await?;
                self.removed = Some(i);
                format!("removed node {id} from the membership")
            }
            Fault::PartitionThenKill => {
                let order = self.shuffled(n);
                let groups = crate::net::halves(n, &order);
                cluster
                    .network()
                    .expect("partition faults need the network")
                    .partition(&groups)?;
                tokio::time::sleep(Duration::from_millis(self.rng.random_range(500..3000))).await;
                let i = self.leader_or_random(cluster).await;
                cluster.kill(i)?;
                format!("partitioned {groups:?} then killed node {}", i + 1)
            }
        })
    }

    /// Adds a removed node back: as a learner (it catches up), then as a voter. Retries through
    /// elections; a membership change that cannot be made within a minute fails the run.
    pub async fn restore_membership(&mut self, cluster: &Cluster) -> anyhow::Result<()> {
        let Some(i) = self.removed else { return Ok(()) };
        let (id, addr) = (cluster.nodes[i].id, cluster.nodes[i].grpc.clone());
        let client = admin_client(cluster)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = match client.add_learner(id, &addr, true).await {
                Ok(_) => client.promote_voter(id).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    anyhow::bail!("could not add node {id} back: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        self.removed = None;
        tracing::info!("added node {id} back as a voter");
        Ok(())
    }

    /// Runs faults until `deadline`: a quiet stretch, a fault for a while, heal, repeat.
    pub async fn run(
        &mut self,
        cluster: &mut Cluster,
        schedule: &Schedule,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        if schedule.faults.is_empty() {
            tokio::time::sleep_until(deadline.into()).await;
            return Ok(());
        }
        while Instant::now() < deadline {
            let quiet = Duration::from_secs(
                self.rng
                    .random_range(schedule.quiet_secs.0..=schedule.quiet_secs.1),
            );
            tokio::time::sleep_until((Instant::now() + quiet).min(deadline).into()).await;
            if Instant::now() >= deadline {
                break;
            }
            let fault = schedule.faults[self.rng.random_range(0..schedule.faults.len())];
            let start_ns = self.recorder.elapsed_ns();
            let what = self.inject(cluster, fault).await?;
            tracing::info!(fault = fault.name(), "{what}");
            let hold = Duration::from_secs(
                self.rng
                    .random_range(schedule.fault_secs.0..=schedule.fault_secs.1),
            );
            tokio::time::sleep_until((Instant::now() + hold).min(deadline).into()).await;
            cluster.heal_all()?;
            self.restore_membership(cluster).await?;
            self.intervals.push(NemesisInterval {
                name: fault.name().into(),
                start_ns,
                end_ns: self.recorder.elapsed_ns(),
            });
            tracing::info!(fault = fault.name(), "healed");
        }
        Ok(())
    }
}

fn admin_client(cluster: &Cluster) -> anyhow::Result<Client> {
    crate::secure::secured(Client::new(cluster.endpoints())?.with_retry(RetryPolicy {
        deadline: Duration::from_secs(20),
        ..RetryPolicy::default()
    }))
}
