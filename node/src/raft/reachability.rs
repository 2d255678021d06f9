//! How reachable each peer is, as the leader's connections to it find out: when to try a failing
//! peer again (exponential backoff with jitter), what to log about it (a line when it becomes
//! unreachable, a summary every [`REPORT_INTERVAL`] while it stays so, a line when it is back)
//! and the `raftlog_peer_reachable` gauge.
//!
//! Why not openraft's own backoff: openraft consults `RaftNetworkV2::backoff` only between the
//! requests of an open replication stream. A stream that cannot be opened (connection refused,
//! timed out) ends the session at once; openraft reports the error and starts the next session
//! immediately, so a down follower was retried in a tight loop, every attempt logging two
//! warnings (docs/decisions.md, "Backoff for unreachable peers"). The wait therefore happens here,
//! before a connection attempt, and openraft's per-attempt warnings are filtered out
//! (`config::QUIET_OPENRAFT_TARGETS`) in favour of the summaries below.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use raftlog_core::NodeId;

/// First wait after a failed attempt; each further failure doubles it up to [`BACKOFF_MAX`].
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// Longest wait between attempts: a peer that comes back is caught up within about this long.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often a peer that stays unreachable is reported again.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Gauge: 1 while the last attempt to reach the peer succeeded, 0 while it fails.
pub const PEER_REACHABLE: &str = "raftlog_peer_reachable";
/// Counter: attempts to reach a peer that failed.
pub const PEER_FAILED_ATTEMPTS: &str = "raftlog_peer_failed_attempts_total";

/// Reachability of one peer, shared by every connection to it (replication, heartbeats, votes).
#[derive(Clone)]
pub struct Reachability {
    peer: NodeId,
    addr: String,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Set while the peer is unreachable.
    outage: Option<Outage>,
}

struct Outage {
    since: Instant,
    failed_attempts: u64,
    /// Failures in a row, for the backoff's exponent.
    consecutive: u32,
    next_attempt_at: Instant,
    reported_at: Instant,
    /// Attempts counted in the last report, to say how many failed since.
    reported_attempts: u64,
}

impl Reachability {
    pub fn new(peer: NodeId, addr: String) -> Self {
        metrics::gauge!(PEER_REACHABLE, "peer" => peer.to_string()).set(1.0);
        Self {
            peer,
            addr,
            state: Arc::default(),
        }
    }

    /// The address this reachability is about.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// How long to wait before the next attempt to reach the peer: zero unless it is failing.
    pub fn wait_before_attempt(&self) -> Duration {
        let state = self.state.lock().expect("reachability lock");
        state.outage.as_ref().map_or(Duration::ZERO, |outage| {
            outage
                .next_attempt_at
                .saturating_duration_since(Instant::now())
        })
    }

    /// Waits until the peer may be tried again (at once unless it is failing).
    pub async fn until_attempt_allowed(&self) {
        let wait = self.wait_before_attempt();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// An attempt reached the peer: ends an outage, with one line saying how long it lasted.
    pub fn succeeded(&self) {
        let mut state = self.state.lock().expect("reachability lock");
        let Some(outage) = state.outage.take() else {
            return;
        };
        metrics::gauge!(PEER_REACHABLE, "peer" => self.peer.to_string()).set(1.0);
        tracing::info!(
            peer = self.peer,
            addr = %self.addr,
            "peer {} at {} is reachable again after {:.1} s ({} failed attempts)",
            self.peer,
            self.addr,
            outage.since.elapsed().as_secs_f64(),
            outage.failed_attempts
        );
    }

    /// An attempt failed with `error`: schedules the next one and reports when it is due.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        let now = Instant::now();
        metrics::counter!(PEER_FAILED_ATTEMPTS, "peer" => self.peer.to_string()).increment(1);
        let mut state = self.state.lock().expect("reachability lock");
        let outage = match &mut state.outage {
            Some(outage) => outage,
            None => {
                metrics::gauge!(PEER_REACHABLE, "peer" => self.peer.to_string()).set(0.0);
                tracing::warn!(
                    peer = self.peer,
                    addr = %self.addr,
                    "peer {} at {} is unreachable: {error}; retrying every {} ms at most, \
                     reporting every {} s while it lasts",
                    self.peer,
                    self.addr,
                    BACKOFF_MAX.as_millis(),
                    REPORT_INTERVAL.as_secs()
                );
                state.outage.insert(Outage {
                    since: now,
                    failed_attempts: 0,
                    consecutive: 0,
                    next_attempt_at: now,
                    reported_at: now,
                    reported_attempts: 0,
                })
            }
        };
        outage.failed_attempts += 1;
        outage.consecutive = outage.consecutive.saturating_add(1);
        outage.next_attempt_at = now + backoff(outage.consecutive, &mut rand::rng());
        if now.duration_since(outage.reported_at) >= REPORT_INTERVAL {
            tracing::warn!(
                peer = self.peer,
                addr = %self.addr,
                "peer {} at {} still unreachable after {:.0} s ({} failed attempts, {} since the \
                 last report): {error}",
                self.peer,
                self.addr,
                outage.since.elapsed().as_secs_f64(),
                outage.failed_attempts,
                outage.failed_attempts - outage.reported_attempts
            );
            outage.reported_at = now;
            outage.reported_attempts = outage.failed_attempts;
        }
    }

    /// Whether the peer is currently failing.
    #[cfg(test)]
    pub fn is_unreachable(&self) -> bool {
        self.state
            .lock()
            .expect("reachability lock")
            .outage
            .is_some()
    }
}

/// The wait after the `consecutive`-th failure in a row: [`BACKOFF_INITIAL`] doubled per failure,
/// capped at [`BACKOFF_MAX`], then drawn uniformly from its upper half so that several leaders'
/// (or groups') attempts do not fall in step.
fn backoff(consecutive: u32, rng: &mut impl Rng) -> Duration {
    let exponent = consecutive.saturating_sub(1).min(16);
    let ceiling = BACKOFF_INITIAL
        .saturating_mul(1 << exponent)
        .min(BACKOFF_MAX);
    let floor = ceiling / 2;
    floor + ceiling.saturating_sub(floor).mul_f64(rng.random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_initial_wait_to_the_cap_with_jitter_in_the_upper_half() {
        let mut rng = rand::rng();
        for consecutive in 1..40 {
            let ceiling = BACKOFF_INITIAL
                .saturating_mul(1 << (consecutive - 1).min(16))
                .min(BACKOFF_MAX);
            for _ in 0..50 {
                let wait = backoff(consecutive, &mut rng);
                assert!(wait <= ceiling, "{wait:?} > {ceiling:?} at {consecutive}");
                assert!(wait >= ceiling / 2, "{wait:?} < half of {ceiling:?}");
            }
        }
        assert!(backoff(100, &mut rng) <= BACKOFF_MAX);
    }

    #[test]
    fn a_failing_peer_waits_and_a_success_ends_the_outage() {
        let peer = Reachability::new(2, "127.0.0.1:1".into());
        assert_eq!(peer.wait_before_attempt(), Duration::ZERO);
        for _ in 0..10 {
            peer.failed(&"connection refused");
        }
        assert!(peer.is_unreachable());
        let wait = peer.wait_before_attempt();
        assert!(wait > BACKOFF_MAX / 3 && wait <= BACKOFF_MAX, "{wait:?}");
        peer.succeeded();
        assert!(!peer.is_unreachable());
        assert_eq!(peer.wait_before_attempt(), Duration::ZERO);
    }
}
