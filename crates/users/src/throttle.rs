//! Login throttling, after OWASP's guidance on blocking brute force without handing attackers a
//! way to lock owners out: failures are counted per (account, client address), per address, and
//! per account from everywhere, and a key past its limit makes the next attempt wait a delay
//! that doubles with every further failure (from [`Limits::first_delay`] up to the window).
//!
//! - **(account, address)**: five wrong passwords for one account from one address, and that
//!   address waits for that account. The account is its id, whichever identifier was typed
//!   (username or email), so the two do not count apart.
//! - **address**: twenty failures from one address across accounts (password spraying), and the
//!   address waits for every account.
//! - **account, everywhere**: a hundred failures at one account from all addresses (a botnet),
//!   and addresses that have not signed in to it before wait; the owner's own addresses (signed
//!   in within 30 days) do not, so nobody elsewhere can lock the owner out.
//!
//! A success clears its (account, address) count and makes the address known to the account.
//! Every attempt counts as a failure until it succeeds ([`FailedLogins::attempt`]), so parallel
//! guesses cannot all pass before the first failure is recorded.
//!
//! governor's GCRA limiters were considered; they limit every attempt, not failures, cannot
//! forget a key on success, and have no growing delay. This is one replica's memory (with N
//! replicas an attacker gets at most N times the limits), bounded: the counts live in moka
//! caches with a capacity and a time-to-live of one window, whose TinyLFU admission keeps the
//! keys hit often (an account under attack) when a flood of one-off keys fills them. One short
//! lock orders check-and-count; nothing scans the table.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use moka::sync::Cache;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failures at one account from one address before that address waits for it.
    pub per_account: u32,
    /// Failures from one address, across accounts, before it waits for all of them.
    pub per_address: u32,
    /// Failures at one account from all addresses before addresses new to it wait.
    pub per_account_everywhere: u32,
    /// How long failures are remembered after the last one; also the longest wait.
    pub window: Duration,
    /// The first wait past a limit; it doubles with each further failure.
    pub first_delay: Duration,
    /// The most keys remembered at once, per kind.
    pub capacity: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_account: 5,
            per_address: 20,
            per_account_everywhere: 100,
            window: Duration::from_secs(15 * 60),
            first_delay: Duration::from_secs(5),
            capacity: 100_000,
        }
    }
}

/// How long an address that signed in to an account stays known to it.
const KNOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Clone, Copy)]
struct Count {
    failures: u32,
    last: Instant,
}

pub struct FailedLogins {
    limits: Limits,
    counts: Cache<String, Count>,
    /// (account, address) pairs that signed in.
    known: Cache<String, ()>,
    /// Orders check-and-count across the keys of an attempt.
    order: Mutex<()>,
}

impl FailedLogins {
    pub fn new(limits: Limits) -> Self {
        let counts = Cache::builder().max_capacity(limits.capacity).time_to_live(limits.window).build();
        let known = Cache::builder().max_capacity(limits.capacity).time_to_live(KNOWN_FOR).build();
        Self { limits, counts, known, order: Mutex::new(()) }
    }

    fn pair(account: &str, address: &str) -> String {
        format!("{account}\n{address}")
    }

    /// The keys an attempt at `account` from `address` counts under, with their limits.
    fn keys(&self, account: &str, address: &str) -> [(String, u32); 3] {
        [
            (format!("pair:{}", Self::pair(account, address)), self.limits.per_account),
            (format!("address:{address}"), self.limits.per_address),
            (format!("account:{account}"), self.limits.per_account_everywhere),
        ]
    }

    /// The count of `key`, when its failures are still remembered at `now`.
    fn count(&self, key: &str, now: Instant) -> Option<Count> {
        self.counts.get(key).filter(|c| now.saturating_duration_since(c.last) < self.limits.window)
    }

    /// How long `count` still makes an attempt wait at `now`, past `limit`.
    fn wait(&self, count: Count, limit: u32, now: Instant) -> Option<Duration> {
        let over = count.failures.checked_sub(limit)?;
        let delay = self.limits.first_delay.saturating_mul(1 << over.min(20)).min(self.limits.window);
        delay.checked_sub(now.saturating_duration_since(count.last)).filter(|left| !left.is_zero())
    }

    /// Starts a login attempt at `account` (its id; whatever identifies it when there is no
    /// such account) from `address`: `Err(wait)` when it must wait; otherwise the attempt
    /// counts as a failure until [`Self::succeeded`] says otherwise.
    pub fn attempt(&self, account: &str, address: &str) -> Result<(), Duration> {
        self.attempt_at(account, address, Instant::now())
    }

    fn attempt_at(&self, account: &str, address: &str, now: Instant) -> Result<(), Duration> {
        let _order = self.order.lock().expect("throttle lock");
        let keys = self.keys(account, address);
        let known = self.known.contains_key(&Self::pair(account, address));
        let wait = keys
            .iter()
            .enumerate()
            // The owner's own addresses do not wait for what others did elsewhere.
            .filter(|(i, _)| !(known && *i == 2))
            .filter_map(|(_, (key, limit))| self.wait(self.count(key, now)?, *limit, now))
            .max();
        if let Some(wait) = wait {
            return Err(wait);
        }
        for (key, _) in keys {
            let failures = self.count(&key, now).map_or(0, |c| c.failures);
            self.counts.insert(key, Count { failures: failures + 1, last: now });
        }
        Ok(())
    }

    /// The attempt succeeded: the (account, address) count is cleared, the other two are not
    /// charged, and the address is known to the account from now on.
    pub fn succeeded(&self, account: &str, address: &str) {
        let _order = self.order.lock().expect("throttle lock");
        let [(pair, _), others @ ..] = self.keys(account, address);
        self.counts.invalidate(&pair);
        let now = Instant::now();
        for (key, _) in others {
            if let Some(mut count) = self.count(&key, now) {
                count.failures = count.failures.saturating_sub(1);
                self.counts.insert(key, count);
            }
        }
        self.known.insert(Self::pair(account, address), ());
    }

    /// How many keys are remembered (after pending evictions).
    pub fn remembered(&self) -> u64 {
        self.counts.run_pending_tasks();
        self.counts.entry_count()
    }
}

/// Sign-ups per client address in a fixed window: past the limit, registration from that
/// address waits until the window ends.
pub struct Registrations {
    limit: u32,
    window: Duration,
    counts: Cache<String, Count>,
    order: Mutex<()>,
}

impl Registrations {
    /// `limit` sign-ups per `window` per address (0: no limit).
    pub fn new(limit: u32, window: Duration, capacity: u64) -> Self {
        let counts = Cache::builder().max_capacity(capacity).time_to_live(window).build();
        Self { limit, window, counts, order: Mutex::new(()) }
    }

    /// Counts a sign-up from `address`: `Err(wait)` past the limit.
    pub fn admit(&self, address: &str) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let _order = self.order.lock().expect("registration lock");
        let now = Instant::now();
        // The window starts at the first sign-up (`last` holds its start here).
        let count = self
            .counts
            .get(address)
            .filter(|c| now.saturating_duration_since(c.last) < self.window)
            .unwrap_or(Count { failures: 0, last: now });
        if count.failures >= self.limit {
            return Err(self.window.saturating_sub(now.saturating_duration_since(count.last)));
        }
        self.counts.insert(address.to_owned(), Count { failures: count.failures + 1, ..count });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_account: u32, per_address: u32, everywhere: u32) -> Limits {
        Limits {
            per_account,
            per_address,
            per_account_everywhere: everywhere,
            window: Duration::from_secs(900),
            first_delay: Duration::from_secs(5),
            capacity: 100_000,
        }
    }

    #[test]
    fn an_account_and_address_past_its_limit_waits_longer_after_each_failure() {
        let t = FailedLogins::new(limits(3, 100, 1000));
        let start = Instant::now();
        for _ in 0..3 {
            assert!(t.attempt_at("ada", "1.2.3.4", start).is_ok());
        }
        let wait = t.attempt_at("ada", "1.2.3.4", start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(5));
        // After the first delay, one more try; failing it doubles the next delay.
        let later = start + Duration::from_secs(5);
        assert!(t.attempt_at("ada", "1.2.3.4", later).is_ok());
        assert_eq!(t.attempt_at("ada", "1.2.3.4", later).unwrap_err(), Duration::from_secs(10));
        let much_later = later + Duration::from_secs(10);
        assert!(t.attempt_at("ada", "1.2.3.4", much_later).is_ok());
        assert_eq!(t.attempt_at("ada", "1.2.3.4", much_later).unwrap_err(), Duration::from_secs(20));
    }

    #[test]
    fn the_owner_elsewhere_is_not_locked_out_by_guesses_from_one_address() {
        let t = FailedLogins::new(limits(5, 20, 100));
        let now = Instant::now();
        for _ in 0..5 {
            t.attempt_at("admin-id", "203.0.113.9", now).unwrap();
        }
        assert!(t.attempt_at("admin-id", "203.0.113.9", now).is_err(), "the guesser waits");
        assert!(t.attempt_at("admin-id", "198.51.100.7", now).is_ok(), "the owner signs in from home");
    }

    #[test]
    fn a_botnet_makes_new_addresses_wait_but_not_the_owners_known_one() {
        let t = FailedLogins::new(limits(5, 20, 10));
        let now = Instant::now();
        t.attempt_at("ada", "home", now).unwrap();
        t.succeeded("ada", "home");
        for bot in 0..10 {
            t.attempt_at("ada", &format!("bot{bot}"), now).unwrap();
        }
        assert!(t.attempt_at("ada", "bot99", now).is_err(), "a new address waits");
        assert!(t.attempt_at("ada", "home", now).is_ok(), "the owner's address does not");
    }

    #[test]
    fn a_success_clears_the_pair_and_does_not_charge_the_address() {
        let t = FailedLogins::new(limits(3, 2, 1000));
        let now = Instant::now();
        for name in ["a", "b", "c", "d"] {
            t.attempt_at(name, "office", now).unwrap();
            t.succeeded(name, "office");
        }
        assert!(t.attempt_at("e", "office", now).is_ok());
        for _ in 0..2 {
            t.attempt_at("f", "lab", now).unwrap();
        }
        t.succeeded("f", "lab");
        assert!(t.attempt_at("f", "lab", now).is_ok(), "cleared by the success");
    }

    #[test]
    fn attempts_in_flight_count_before_they_fail() {
        let t = FailedLogins::new(limits(5, 1000, 1000));
        let now = Instant::now();
        // 50 parallel guesses, none finished yet: only the first 5 get to try.
        let allowed = (0..50).filter(|_| t.attempt_at("ada", "1.2.3.4", now).is_ok()).count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn an_address_waits_after_failures_across_accounts() {
        let t = FailedLogins::new(limits(100, 3, 1000));
        let now = Instant::now();
        for name in ["a", "b", "c"] {
            t.attempt_at(name, "9.9.9.9", now).unwrap();
        }
        assert!(t.attempt_at("d", "9.9.9.9", now).is_err());
        assert!(t.attempt_at("d", "8.8.8.8", now).is_ok());
    }

    #[test]
    fn failures_are_forgotten_a_window_after_the_last_and_no_wait_exceeds_it() {
        let t = FailedLogins::new(limits(1, 100, 1000));
        let start = Instant::now();
        let mut now = start;
        t.attempt_at("ada", "x", now).unwrap();
        // Keep failing as soon as allowed: the waits grow, but never past the window.
        for _ in 0..30 {
            let wait = t.attempt_at("ada", "x", now).unwrap_err();
            assert!(wait <= Duration::from_secs(900), "{wait:?}");
            now += wait;
            t.attempt_at("ada", "x", now).unwrap();
        }
        assert!(t.attempt_at("ada", "x", now + Duration::from_secs(900)).is_ok(), "forgotten");
    }

    #[test]
    fn sign_ups_past_the_limit_wait_for_the_window_per_address() {
        let r = Registrations::new(3, Duration::from_secs(3600), 1000);
        for _ in 0..3 {
            assert!(r.admit("1.2.3.4").is_ok());
        }
        let wait = r.admit("1.2.3.4").unwrap_err();
        assert!(wait > Duration::from_secs(3590) && wait <= Duration::from_secs(3600), "{wait:?}");
        assert!(r.admit("5.6.7.8").is_ok(), "another address has its own count");
        assert!(Registrations::new(0, Duration::from_secs(1), 10).admit("x").is_ok(), "0: no limit");
    }

    #[test]
    fn a_flood_of_new_addresses_stays_within_capacity_and_keeps_a_lockout() {
        let limits = Limits { capacity: 1_000, ..limits(3, 3, 1000) };
        let t = FailedLogins::new(limits);
        let now = Instant::now();
        for _ in 0..3 {
            t.attempt_at("ada", "1.1.1.1", now).unwrap();
        }
        for i in 0..20_000u32 {
            let address = std::net::Ipv4Addr::from(i.wrapping_add(0x0a00_0000)).to_string();
            let _ = t.attempt_at(&format!("guess{i}"), &address, now);
            // The pair under attack is tried between the flood's guesses.
            if i % 100 == 0 {
                assert!(t.attempt_at("ada", "1.1.1.1", now).is_err(), "ada waits at guess {i}");
            }
        }
        assert!(t.remembered() <= 1_000, "remembered {} keys", t.remembered());
        assert!(t.attempt_at("ada", "1.1.1.1", now).is_err(), "the wait survived the flood");
    }
}
