//! Per-player token buckets (and per-address for logging in).
//!
//! Each replica limits on its own; with N replicas behind a balancer a player
//! gets at most N times the configured rate. That is deliberate: the limit
//! protects the database from one client's loop, not a billing quota.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    Player(i64),
    Address(IpAddr),
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<Caller, Bucket>>,
}

/// Beyond this many tracked callers, full buckets are forgotten.
const PRUNE_ABOVE: usize = 10_000;

impl RateLimiter {
    /// `per_sec == 0` disables limiting.
    pub fn new(per_sec: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            per_sec,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `caller`; on refusal returns the whole seconds to
    /// wait (at least 1), for `Retry-After`.
    pub fn check(&self, caller: Caller, now: Instant) -> Result<(), u64> {
        if self.per_sec <= 0.0 {
            return Ok(());
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() > PRUNE_ABOVE {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * per_sec < burst
            });
        }
        let bucket = buckets.entry(caller).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_sec).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.per_sec;
            Err((wait.ceil() as u64).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        let who = Caller::Player(1);
        for _ in 0..3 {
            assert!(limiter.check(who, t0).is_ok());
        }
        assert_eq!(limiter.check(who, t0), Err(1));
        assert!(limiter.check(Caller::Player(2), t0).is_ok(), "per player");
        assert!(limiter.check(who, t0 + Duration::from_millis(500)).is_ok());
        assert!(limiter.check(who, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn zero_rate_disables() {
        let limiter = RateLimiter::new(0.0, 1);
        for _ in 0..1000 {
            assert!(limiter.check(Caller::Player(1), Instant::now()).is_ok());
        }
    }
}
