//! Rate limits per agent (and per tool when the policy says so): at most N calls
//! in any window of W seconds, counted exactly with a log of recent calls under one
//! lock, so that N calls racing against a limit of k allow exactly k.
//!
//! Time is passed in, never read here, so the kernel stays free of I/O and tests
//! control the clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys remembered; past this, keys with no call inside their window are
/// dropped.
const MAX_KEYS: usize = 100_000;

/// Counters of recent calls.
#[derive(Debug, Default)]
pub struct Velocity {
    calls: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// The limit was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    /// When the oldest counted call leaves the window.
    pub retry_after: Duration,
}

impl Velocity {
    /// Counts a call for `key` at `now` if fewer than `limit` calls happened in the
    /// `window` before it; refuses it otherwise (a refused call is not counted).
    pub fn admit(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        now: Instant,
    ) -> Result<(), Exceeded> {
        let mut calls = match self.calls.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if calls.len() >= MAX_KEYS && !calls.contains_key(key) {
            calls.retain(|_, log| {
                log.back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < window)
            });
        }
        let log = calls.entry(key.to_owned()).or_default();
        while log
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            log.pop_front();
        }
        if log.len() as u64 >= limit {
            let oldest = log.front().copied().unwrap_or(now);
            return Err(Exceeded {
                retry_after: window.saturating_sub(now.saturating_duration_since(oldest)),
            });
        }
        log.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_window_slides() {
        let v = Velocity::default();
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        assert!(v.admit("a", 2, w, t0).is_ok());
        assert!(v.admit("a", 2, w, t0 + Duration::from_secs(10)).is_ok());
        let refused = v
            .admit("a", 2, w, t0 + Duration::from_secs(20))
            .unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(40));
        // Another key has its own count.
        assert!(v.admit("b", 2, w, t0 + Duration::from_secs(20)).is_ok());
        // The first call leaves the window at 60 s.
        assert!(v.admit("a", 2, w, t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn racing_calls_allow_exactly_the_limit() {
        let v = Arc::new(Velocity::default());
        let now = Instant::now();
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let v = v.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .filter(|_| v.admit("agent", 137, Duration::from_secs(60), now).is_ok())
                        .count()
                })
            })
            .collect();
        let allowed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(allowed, 137);
    }
}
