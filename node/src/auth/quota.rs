//! Quotas per principal (docs/security.md, "Quotas"): a token bucket per principal and rate on
//! each node, filled at the quota's rate and holding at most one second of it (the burst).
//!
//! A call is admitted while its bucket is not in debt, and then takes its whole cost, which may
//! take the bucket below zero: a 1 MiB batch against a 100 KiB/s quota goes through, and the
//! principal's next calls wait out the debt (about 9 s). So a principal's rate over time is the
//! quota, whatever its batch sizes, and no call is ever refused for being larger than a second's
//! worth. A refused call does nothing and is told when to come back: the first refused caller
//! when the debt is paid, each further one a call's worth later than the one before. Telling
//! them all "when the debt is paid" would bring them back together, to admit one and refuse
//! the rest again (64 callers in flight: 63 refusals per admitted call).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raftlog_core::auth::Quota;

/// What a quota limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rate {
    Requests,
    ProduceBytes,
    FetchBytes,
}

impl Rate {
    /// The limit of this rate in `quota` (per second; 0: none).
    pub fn of(self, quota: &Quota) -> u64 {
        match self {
            Rate::Requests => quota.requests_per_sec,
            Rate::ProduceBytes => quota.produce_bytes_per_sec,
            Rate::FetchBytes => quota.fetch_bytes_per_sec,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Rate::Requests => "requests",
            Rate::ProduceBytes => "produce_bytes",
            Rate::FetchBytes => "fetch_bytes",
        }
    }
}

struct Bucket {
    /// Units available; below zero: the debt of calls already admitted.
    level: f64,
    at: Instant,
    /// The cost of the last call taken: how far apart refused callers are told to come back.
    last_cost: f64,
    /// When the next refused caller is told to come back, at the earliest.
    next_slot: Instant,
}

/// The furthest ahead a refused caller is told to come back beyond the debt: past that, callers
/// return together again (bounding what many refused callers that never return can hold back).
const RETRY_SLOTS_AHEAD: Duration = Duration::from_secs(10);

/// The buckets of one node. One entry per (principal, rate) that has a quota and has called.
#[derive(Default)]
pub struct Throttle {
    buckets: Mutex<HashMap<(String, Rate), Bucket>>,
}

impl Throttle {
    /// Admits a call of `principal` costing `amount` of `rate` limited to `per_sec`, or says how
    /// long until its bucket is out of debt.
    pub fn charge(
        &self,
        principal: &str,
        rate: Rate,
        per_sec: u64,
        amount: u64,
        now: Instant,
    ) -> Result<(), Duration> {
        self.admit(principal, rate, per_sec, now)?;
        self.debit(principal, rate, per_sec, amount, now);
        Ok(())
    }

    /// Whether a call may start now (its bucket is not in debt); it takes nothing.
    pub fn admit(
        &self,
        principal: &str,
        rate: Rate,
        per_sec: u64,
        now: Instant,
    ) -> Result<(), Duration> {
        if per_sec == 0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().expect("throttle lock");
        let bucket = refill(&mut buckets, principal, rate, per_sec, now);
        if bucket.level >= 0.0 {
            return Ok(());
        }
        let paid = now + Duration::from_secs_f64(-bucket.level / per_sec as f64);
        let back = bucket.next_slot.clamp(paid, paid + RETRY_SLOTS_AHEAD);
        bucket.next_slot = back + Duration::from_secs_f64(bucket.last_cost / per_sec as f64);
        Err(back - now)
    }

    /// Takes `amount` from the bucket, into debt if need be (what a fetch read, once it is known).
    pub fn debit(&self, principal: &str, rate: Rate, per_sec: u64, amount: u64, now: Instant) {
        if per_sec == 0 {
            return;
        }
        let mut buckets = self.buckets.lock().expect("throttle lock");
        let bucket = refill(&mut buckets, principal, rate, per_sec, now);
        bucket.level -= amount as f64;
        bucket.last_cost = amount as f64;
    }
}

/// The bucket of (principal, rate), new ones full, refilled up to now.
fn refill<'a>(
    buckets: &'a mut HashMap<(String, Rate), Bucket>,
    principal: &str,
    rate: Rate,
    per_sec: u64,
    now: Instant,
) -> &'a mut Bucket {
    let capacity = per_sec as f64;
    let bucket = buckets
        .entry((principal.to_string(), rate))
        .or_insert(Bucket {
            level: capacity,
            at: now,
            last_cost: 1.0,
            next_slot: now,
        });
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    bucket.level = (bucket.level + elapsed * capacity).min(capacity);
    bucket.at = now;
    bucket
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second's burst, then the rate; a large call goes through and its debt is waited out;
    /// principals and rates have their own buckets; 0 is no limit.
    #[test]
    fn buckets_admit_the_burst_then_the_rate_and_wait_out_debts() {
        let throttle = Throttle::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            throttle
                .charge("User:a", Rate::Requests, 10, 1, t0)
                .unwrap();
        }
        // The 11th at the same instant: the bucket is at 0, not in debt, so it is admitted and
        // takes it to -1 (a tenth of a second's debt).
        throttle
            .charge("User:a", Rate::Requests, 10, 1, t0)
            .unwrap();
        let wait = throttle
            .charge("User:a", Rate::Requests, 10, 1, t0)
            .unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // A second refused caller is told to come a call's worth later than the first.
        let later = throttle
            .admit("User:a", Rate::Requests, 10, t0)
            .unwrap_err();
        assert!((later.as_secs_f64() - 0.2).abs() < 1e-9, "{later:?}");
        // Another principal, another rate: their own buckets.
        throttle
            .charge("User:b", Rate::Requests, 10, 1, t0)
            .unwrap();
        throttle
            .charge("User:a", Rate::ProduceBytes, 10, 5, t0)
            .unwrap();
        // After the debt is paid the next call goes.
        let t1 = t0 + Duration::from_millis(100);
        throttle
            .charge("User:a", Rate::Requests, 10, 1, t1)
            .unwrap();
        // A call of ten seconds' worth is admitted, and its debt waited out.
        throttle
            .charge("User:c", Rate::ProduceBytes, 100, 1100, t0)
            .unwrap();
        let wait = throttle
            .admit(
                "User:c",
                Rate::ProduceBytes,
                100,
                t0 + Duration::from_secs(1),
            )
            .unwrap_err();
        assert!((wait.as_secs_f64() - 9.0).abs() < 1e-9, "{wait:?}");
        throttle
            .admit(
                "User:c",
                Rate::ProduceBytes,
                100,
                t0 + Duration::from_secs(10),
            )
            .unwrap();
        // No limit.
        for _ in 0..1000 {
            throttle.charge("User:d", Rate::Requests, 0, 1, t0).unwrap();
        }
        // Over 10 s at 10/s a steady caller gets 10 s x 10 + the burst of 10 (and one more, the
        // one that takes the bucket into debt).
        let mut admitted = 0;
        let mut now = t0;
        while now < t0 + Duration::from_secs(10) {
            if throttle
                .charge("User:e", Rate::Requests, 10, 1, now)
                .is_ok()
            {
                admitted += 1;
            }
            now += Duration::from_millis(1);
        }
        assert!((110..=111).contains(&admitted), "{admitted}");
    }
}
