//! Login throttling: failed logins are counted per account and per client address, and once
//! either passes its limit within the window, logins for it are refused (with how long to wait)
//! until the window ends. A successful login clears the account's count.
//!
//! governor's GCRA limiters were considered; they limit every attempt, not failures, and cannot
//! forget a key on success, which is the behaviour a person who mistyped twice expects. This is
//! a fixed window per key, bounded in memory, in one replica's memory (each replica limits on its
//! own; with N replicas an attacker gets at most N times the limit).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_account: u32,
    pub per_address: u32,
    pub window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { per_account: 5, per_address: 20, window: Duration::from_secs(15 * 60) }
    }
}

struct Window {
    started: Instant,
    failures: u32,
}

pub struct FailedLogins {
    limits: Limits,
    windows: Mutex<HashMap<String, Window>>,
}

const MAX_KEYS: usize = 100_000;

impl FailedLogins {
    pub fn new(limits: Limits) -> Self {
        Self { limits, windows: Mutex::new(HashMap::new()) }
    }

    fn keys(account: &str, address: &str) -> [(String, u32); 2] {
        [(format!("account:{account}"), 0), (format!("address:{address}"), 1)]
    }

    fn limit(&self, which: u32) -> u32 {
        if which == 0 { self.limits.per_account } else { self.limits.per_address }
    }

    /// Starts a login attempt: `Err(wait)` when the account or the address is locked out;
    /// otherwise the attempt counts as a failure until [`Self::succeeded`] says otherwise, so a
    /// burst of parallel guesses cannot all pass before the first failure is recorded.
    pub fn attempt(&self, account: &str, address: &str) -> Result<(), Duration> {
        let mut windows = self.windows.lock().expect("throttle lock");
        if windows.len() > MAX_KEYS {
            let window = self.limits.window;
            windows.retain(|_, w| w.started.elapsed() < window);
        }
        let mut wait = None;
        for (key, which) in Self::keys(account, address) {
            if let Some(w) = windows.get(&key) {
                let age = w.started.elapsed();
                if age < self.limits.window && w.failures >= self.limit(which) {
                    let left = self.limits.window - age;
                    wait = Some(wait.map_or(left, |w: Duration| w.max(left)));
                }
            }
        }
        if let Some(wait) = wait {
            return Err(wait);
        }
        for (key, _) in Self::keys(account, address) {
            let w = windows.entry(key).or_insert(Window { started: Instant::now(), failures: 0 });
            if w.started.elapsed() >= self.limits.window {
                *w = Window { started: Instant::now(), failures: 0 };
            }
            w.failures += 1;
        }
        Ok(())
    }

    /// The attempt succeeded: the account's count is cleared and the address is not charged.
    pub fn succeeded(&self, account: &str, address: &str) {
        let mut windows = self.windows.lock().expect("throttle lock");
        windows.remove(&format!("account:{account}"));
        if let Some(w) = windows.get_mut(&format!("address:{address}")) {
            w.failures = w.failures.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_locks_after_its_limit_and_a_success_clears_it() {
        let t =
            FailedLogins::new(Limits { per_account: 3, per_address: 100, window: Duration::from_secs(60) });
        for _ in 0..3 {
            assert!(t.attempt("ada", "1.2.3.4").is_ok());
        }
        let wait = t.attempt("ada", "1.2.3.4").unwrap_err();
        assert!(wait <= Duration::from_secs(60) && wait > Duration::from_secs(50));
        assert!(t.attempt("ada", "5.6.7.8").is_err(), "the account is locked from anywhere");
        assert!(t.attempt("bob", "1.2.3.4").is_ok(), "the address is under its own limit");
        t.succeeded("ada", "1.2.3.4");
        assert!(t.attempt("ada", "1.2.3.4").is_ok());
    }

    #[test]
    fn attempts_in_flight_count_before_they_fail() {
        let t =
            FailedLogins::new(Limits { per_account: 5, per_address: 1000, window: Duration::from_secs(60) });
        // 50 parallel guesses, none finished yet: only the first 5 get to try.
        let allowed = (0..50).filter(|_| t.attempt("ada", "1.2.3.4").is_ok()).count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn successful_logins_do_not_charge_the_address() {
        let t =
            FailedLogins::new(Limits { per_account: 100, per_address: 2, window: Duration::from_secs(60) });
        for name in ["a", "b", "c", "d"] {
            t.attempt(name, "office").unwrap();
            t.succeeded(name, "office");
        }
        assert!(t.attempt("e", "office").is_ok());
    }

    #[test]
    fn an_address_locks_after_failures_across_accounts() {
        let t =
            FailedLogins::new(Limits { per_account: 100, per_address: 3, window: Duration::from_secs(60) });
        for name in ["a", "b", "c"] {
            t.attempt(name, "9.9.9.9").unwrap();
        }
        assert!(t.attempt("d", "9.9.9.9").is_err());
        assert!(t.attempt("d", "8.8.8.8").is_ok());
    }

    #[test]
    fn the_window_expires() {
        let t =
            FailedLogins::new(Limits { per_account: 1, per_address: 1, window: Duration::from_millis(30) });
        t.attempt("ada", "x").unwrap();
        assert!(t.attempt("ada", "x").is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert!(t.attempt("ada", "x").is_ok());
    }
}
