//! Per-player token buckets (and per-address for logging in).
//!
//! Each replica limits on its own; with N replicas behind a balancer a player
//! gets at most N times the configured rate. That is deliberate: the limit
//! protects the database from one client's loop, not a billing quota.
//!
//! # Bounded memory without scans
//! Buckets live in two generations. New and touched buckets go to the
//! current one; a lookup that finds a bucket only in the previous
//! generation moves it over. When the current generation reaches half the
//! cap, or a refill window has passed (a bucket untouched that long is full
//! again — the same as a new one), the previous generation is dropped whole
//! and the current becomes the previous. So at most `max_tracked` buckets
//! exist whatever a million distinct callers do, each request costs O(1),
//! and nothing ever walks the whole map.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    Player(i64),
    /// Already reduced to its limit key (IPv6: the /64).
    Address(IpAddr),
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

struct Generations {
    current: HashMap<Caller, Bucket>,
    previous: HashMap<Caller, Bucket>,
    rotated: Instant,
}

pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    max_tracked: usize,
    /// How long an untouched bucket takes to be full again.
    window: Duration,
    buckets: Mutex<Generations>,
}

/// Default cap on tracked callers (two generations together).
pub const DEFAULT_MAX_TRACKED: usize = 100_000;

impl RateLimiter {
    /// `per_sec == 0` disables limiting.
    pub fn new(per_sec: f64, burst: u32) -> RateLimiter {
        Self::with_capacity(per_sec, burst, DEFAULT_MAX_TRACKED)
    }

    pub fn with_capacity(per_sec: f64, burst: u32, max_tracked: usize) -> RateLimiter {
        let burst = f64::from(burst.max(1));
        let window = if per_sec > 0.0 {
            Duration::from_secs_f64((burst / per_sec).min(3600.0))
        } else {
            Duration::from_secs(3600)
        };
        RateLimiter {
            per_sec,
            burst,
            max_tracked: max_tracked.max(2),
            window,
            buckets: Mutex::new(Generations {
                current: HashMap::new(),
                previous: HashMap::new(),
                rotated: Instant::now(),
            }),
        }
    }

    /// Takes one token for `caller`; on refusal returns the whole seconds to
    /// wait (at least 1), for `Retry-After`.
    pub fn check(&self, caller: Caller, now: Instant) -> Result<(), u64> {
        if self.per_sec <= 0.0 {
            return Ok(());
        }
        let Ok(mut g) = self.buckets.lock() else {
            return Ok(());
        };
        if g.current.len() >= self.max_tracked / 2
            || now.saturating_duration_since(g.rotated) >= self.window
        {
            g.previous = std::mem::take(&mut g.current);
            g.rotated = now;
        }
        let found = g
            .current
            .get(&caller)
            .copied()
            .or_else(|| g.previous.remove(&caller));
        let mut bucket = found.unwrap_or(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_sec).min(self.burst);
        bucket.updated = now;
        let result = if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.per_sec;
            Err((wait.ceil() as u64).max(1))
        };
        g.current.insert(caller, bucket);
        result
    }

    /// Callers tracked right now (both generations).
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .map(|g| g.current.len() + g.previous.len())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_million_callers_stay_within_the_cap_and_the_limit_still_bites() {
        let limiter = RateLimiter::new(1.0, 2);
        let t0 = Instant::now();
        let started = Instant::now();
        for i in 0..1_000_000i64 {
            let _ = limiter.check(Caller::Player(i), t0);
            assert!(limiter.tracked() <= DEFAULT_MAX_TRACKED);
        }
        println!("1,000,000 distinct callers in {:?}", started.elapsed());
        // A caller that keeps coming is still limited among the crowd.
        let hot = Caller::Player(-1);
        let mut refused = 0;
        for i in 0..1_000i64 {
            let _ = limiter.check(Caller::Player(2_000_000 + i), t0);
            if limiter.check(hot, t0).is_err() {
                refused += 1;
            }
        }
        assert!(refused >= 990, "refused {refused}");
    }
}
