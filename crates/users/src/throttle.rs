//! Login throttling: failed logins are counted per account and per client address, and once
//! either passes its limit within the window, logins for it are refused (with how long to wait)
//! until the window ends. A successful login clears the account's count.
//!
//! governor's GCRA limiters were considered; they limit every attempt, not failures, and cannot
//! forget a key on success, which is the behaviour a person who mistyped twice expects. This is
//! a fixed window per key, in one replica's memory (each replica limits on its own; with N
//! replicas an attacker gets at most N times the limit).
//!
//! Memory is bounded: the windows live in a moka cache with a capacity and a time-to-live of one
//! window. When a flood of new addresses fills it, TinyLFU admission keeps the keys that are
//! hit often (an account under attack is checked on every guess) and turns away one-off keys.
//! One short lock orders check-and-count, so parallel guesses cannot all pass before the first
//! failure is recorded; nothing scans the table.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use moka::sync::Cache;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_account: u32,
    pub per_address: u32,
    pub window: Duration,
    /// The most accounts and addresses remembered at once.
    pub capacity: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { per_account: 5, per_address: 20, window: Duration::from_secs(15 * 60), capacity: 100_000 }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

pub struct FailedLogins {
    limits: Limits,
    windows: Cache<String, Window>,
    /// Orders check-and-count across the two keys of an attempt.
    order: Mutex<()>,
}

impl FailedLogins {
    pub fn new(limits: Limits) -> Self {
        let windows = Cache::builder().max_capacity(limits.capacity).time_to_live(limits.window).build();
        Self { limits, windows, order: Mutex::new(()) }
    }

    fn keys(account: &str, address: &str) -> [(String, u32); 2] {
        [(format!("account:{account}"), 0), (format!("address:{address}"), 1)]
    }

    fn limit(&self, which: u32) -> u32 {
        if which == 0 { self.limits.per_account } else { self.limits.per_address }
    }

    /// The window of `key`, when one is open.
    fn open_window(&self, key: &str) -> Option<Window> {
        self.windows.get(key).filter(|w| w.started.elapsed() < self.limits.window)
    }

    /// Starts a login attempt: `Err(wait)` when the account or the address is locked out;
    /// otherwise the attempt counts as a failure until [`Self::succeeded`] says otherwise, so a
    /// burst of parallel guesses cannot all pass before the first failure is recorded.
    pub fn attempt(&self, account: &str, address: &str) -> Result<(), Duration> {
        let _order = self.order.lock().expect("throttle lock");
        let mut wait = None;
        for (key, which) in Self::keys(account, address) {
            if let Some(w) = self.open_window(&key)
                && w.failures >= self.limit(which)
            {
                let left = self.limits.window.saturating_sub(w.started.elapsed());
                wait = Some(wait.map_or(left, |w: Duration| w.max(left)));
            }
        }
        if let Some(wait) = wait {
            return Err(wait);
        }
        for (key, _) in Self::keys(account, address) {
            let mut w = self.open_window(&key).unwrap_or(Window { started: Instant::now(), failures: 0 });
            w.failures += 1;
            self.windows.insert(key, w);
        }
        Ok(())
    }

    /// The attempt succeeded: the account's count is cleared and the address is not charged.
    pub fn succeeded(&self, account: &str, address: &str) {
        let _order = self.order.lock().expect("throttle lock");
        self.windows.invalidate(&format!("account:{account}"));
        let key = format!("address:{address}");
        if let Some(mut w) = self.open_window(&key) {
            w.failures = w.failures.saturating_sub(1);
            self.windows.insert(key, w);
        }
    }

    /// How many accounts and addresses are remembered (after pending evictions).
    pub fn remembered(&self) -> u64 {
        self.windows.run_pending_tasks();
        self.windows.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_locks_after_its_limit_and_a_success_clears_it() {
        let t = FailedLogins::new(Limits {
            per_account: 3,
            per_address: 100,
            window: Duration::from_secs(60),
            ..Limits::default()
        });
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
        let t = FailedLogins::new(Limits {
            per_account: 5,
            per_address: 1000,
            window: Duration::from_secs(60),
            ..Limits::default()
        });
        // 50 parallel guesses, none finished yet: only the first 5 get to try.
        let allowed = (0..50).filter(|_| t.attempt("ada", "1.2.3.4").is_ok()).count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn successful_logins_do_not_charge_the_address() {
        let t = FailedLogins::new(Limits {
            per_account: 100,
            per_address: 2,
            window: Duration::from_secs(60),
            ..Limits::default()
        });
        for name in ["a", "b", "c", "d"] {
            t.attempt(name, "office").unwrap();
            t.succeeded(name, "office");
        }
        assert!(t.attempt("e", "office").is_ok());
    }

    #[test]
    fn an_address_locks_after_failures_across_accounts() {
        let t = FailedLogins::new(Limits {
            per_account: 100,
            per_address: 3,
            window: Duration::from_secs(60),
            ..Limits::default()
        });
        for name in ["a", "b", "c"] {
            t.attempt(name, "9.9.9.9").unwrap();
        }
        assert!(t.attempt("d", "9.9.9.9").is_err());
        assert!(t.attempt("d", "8.8.8.8").is_ok());
    }

    #[test]
    fn the_window_expires() {
        let t = FailedLogins::new(Limits {
            per_account: 1,
            per_address: 1,
            window: Duration::from_millis(30),
            ..Limits::default()
        });
        t.attempt("ada", "x").unwrap();
        assert!(t.attempt("ada", "x").is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert!(t.attempt("ada", "x").is_ok());
    }

    #[test]
    fn a_flood_of_new_addresses_stays_within_capacity_and_keeps_a_lockout() {
        let limits =
            Limits { per_account: 3, per_address: 3, window: Duration::from_secs(60), capacity: 1_000 };
        let t = FailedLogins::new(limits);
        for _ in 0..3 {
            t.attempt("ada", "1.1.1.1").unwrap();
        }
        for i in 0..20_000u32 {
            let address = std::net::Ipv4Addr::from(i.wrapping_add(0x0a00_0000)).to_string();
            let _ = t.attempt(&format!("guess{i}"), &address);
            // The account under attack is tried between the flood's guesses.
            if i % 100 == 0 {
                assert!(t.attempt("ada", &address).is_err(), "ada stays locked at guess {i}");
            }
        }
        assert!(t.remembered() <= 1_000, "remembered {} keys", t.remembered());
        assert!(t.attempt("ada", "2.2.2.2").is_err(), "the lockout survived the flood");
    }
}
