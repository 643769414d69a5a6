//! What the command line says, parsed into values that cannot be wrong past the edge: an
//! arrival rate, lengths of time, a latency objective, an error budget, the cap on requests in
//! flight, the shop's address. Each type's `FromStr` is what clap calls, so a bad value stops
//! the start with a message that says what was expected.

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Duration;

/// Why a value from the command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("{what}: expected {expected}, got {got:?}")]
    Malformed { what: &'static str, expected: &'static str, got: String },
    #[error("{what}: {got} is out of range ({range})")]
    OutOfRange { what: &'static str, got: String, range: &'static str },
    #[error("mix: unknown scenario {0:?} (known: browse, search, book, read, login, checkout)")]
    UnknownScenario(String),
    #[error("mix: {0} is given twice")]
    DuplicateScenario(String),
    #[error("mix: every weight is 0, so nothing would be sent")]
    EmptyMix,
}

fn malformed(what: &'static str, expected: &'static str, got: &str) -> InputError {
    InputError::Malformed { what, expected, got: got.to_owned() }
}

/// Requests started a second: positive, finite, at most a million (one generator process on a
/// loopback socket cannot start more, and a typo like `20000000` should not try).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Rate(f64);

impl Rate {
    pub const MAX: f64 = 1_000_000.0;
    /// The lowest rate a search goes down to before it says no rate meets the objective.
    pub const MIN: f64 = 0.1;

    pub fn per_second(value: f64) -> Result<Self, InputError> {
        if value.is_finite() && (Self::MIN..=Self::MAX).contains(&value) {
            Ok(Self(value))
        } else {
            Err(InputError::OutOfRange {
                what: "rate",
                got: value.to_string(),
                range: "0.1 to 1000000 a second",
            })
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }

    /// This rate scaled by `factor`, if the result is still a rate.
    pub fn scaled(self, factor: f64) -> Result<Self, InputError> {
        Self::per_second(self.0 * factor)
    }

    /// How many requests this rate starts in `span`, rounded to the nearest whole request.
    pub fn requests_in(self, span: Duration) -> u64 {
        (self.0 * span.as_secs_f64()).round() as u64
    }

    /// When the `index`-th request (from 0) is due after the schedule's start.
    pub fn offset_of(self, index: u64) -> Duration {
        Duration::from_secs_f64(index as f64 / self.0)
    }
}

impl FromStr for Rate {
    type Err = InputError;

    /// `2000` or `2000/s`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let number = s.trim().strip_suffix("/s").unwrap_or(s.trim());
        let value: f64 =
            number.parse().map_err(|_| malformed("rate", "requests a second, like 2000 or 2000/s", s))?;
        Self::per_second(value)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let two_places = format!("{:.2}", self.0);
        write!(f, "{}/s", two_places.trim_end_matches('0').trim_end_matches('.'))
    }
}

fn parse_duration(what: &'static str, s: &str) -> Result<Duration, InputError> {
    humantime::parse_duration(s.trim())
        .map_err(|_| malformed(what, "a length of time like 500ms, 30s or 2m", s))
}

/// How long something lasts: a run, a search step, a request's timeout. More than nothing, at
/// most a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RunLength(Duration);

impl RunLength {
    pub fn new(span: Duration) -> Result<Self, InputError> {
        if span.is_zero() || span > Duration::from_secs(24 * 3600) {
            Err(InputError::OutOfRange {
                what: "length",
                got: format!("{span:?}"),
                range: "more than 0, at most 24h",
            })
        } else {
            Ok(Self(span))
        }
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for RunLength {
    type Err = InputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(parse_duration("length", s)?)
    }
}

/// A length of time that may be nothing: a warm-up (requests sent before any is recorded, so
/// that the recording sees the shop with its caches filled and its connections open) or a
/// cool-down between a search's steps. At most an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pause(Duration);

impl Pause {
    pub fn new(span: Duration) -> Result<Self, InputError> {
        if span > Duration::from_secs(3600) {
            Err(InputError::OutOfRange { what: "pause", got: format!("{span:?}"), range: "0 to 1h" })
        } else {
            Ok(Self(span))
        }
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for Pause {
    type Err = InputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "0" {
            return Ok(Self(Duration::ZERO));
        }
        Self::new(parse_duration("pause", s)?)
    }
}

/// The latency a search holds a rate to, like `5ms`: more than nothing, at most a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LatencyObjective(Duration);

impl LatencyObjective {
    pub fn new(limit: Duration) -> Result<Self, InputError> {
        if limit.is_zero() || limit > Duration::from_secs(60) {
            Err(InputError::OutOfRange {
                what: "latency objective",
                got: format!("{limit:?}"),
                range: "more than 0, at most 60s",
            })
        } else {
            Ok(Self(limit))
        }
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for LatencyObjective {
    type Err = InputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(parse_duration("latency objective", s)?)
    }
}

/// A share of requests, `1%` or `0.01`: at least 0, below 1.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Fraction(f64);

impl Fraction {
    pub fn new(value: f64) -> Result<Self, InputError> {
        if value.is_finite() && (0.0..1.0).contains(&value) {
            Ok(Self(value))
        } else {
            Err(InputError::OutOfRange { what: "share", got: value.to_string(), range: "0 to under 100%" })
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl FromStr for Fraction {
    type Err = InputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let value = match t.strip_suffix('%') {
            Some(percent) => percent.trim().parse::<f64>().map(|p| p / 100.0),
            None => t.parse::<f64>(),
        }
        .map_err(|_| malformed("share", "a percentage like 1% or a fraction like 0.01", s))?;
        Self::new(value)
    }
}

impl fmt::Display for Fraction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0 * 100.0)
    }
}

/// The most requests in flight at once: 1 to 100,000 (each is a connection, so a file
/// descriptor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxInFlight(NonZeroUsize);

impl MaxInFlight {
    pub fn new(n: usize) -> Result<Self, InputError> {
        match NonZeroUsize::new(n) {
            Some(n) if n.get() <= 100_000 => Ok(Self(n)),
            _ => Err(InputError::OutOfRange {
                what: "max in flight",
                got: n.to_string(),
                range: "1 to 100000",
            }),
        }
    }

    pub fn get(self) -> usize {
        self.0.get()
    }
}

impl FromStr for MaxInFlight {
    type Err = InputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s.trim().parse().map_err(|_| malformed("max in flight", "a whole number", s))?)
    }
}

/// How many customers the load signs in as: 1 to 10,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomerCount(usize);

impl CustomerCount {
    pub fn new(n: usize) -> Result<Self, InputError> {
        if (1..=10_000).contains(&n) {
            Ok(Self(n))
        } else {
            Err(InputError::OutOfRange { what: "customers", got: n.to_string(), range: "1 to 10000" })
        }
    }

    pub fn get(self) -> usize {
        self.0
    }
}

impl FromStr for CustomerCount {
    type Err = InputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s.trim().parse().map_err(|_| malformed("customers", "a whole number", s))?)
    }
}

/// A password given to the tool (the admin's, for the preparation): not empty, and never in
/// debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl FromStr for Secret {
    type Err = InputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            Err(malformed("password", "a password that is not empty", s))
        } else {
            Ok(Self(s.to_owned()))
        }
    }
}

/// Where the shop's gateway listens: `http://host:port`, nothing after the port. Plain HTTP
/// only: the load measures the shop, not a TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopAddress(String);

impl ShopAddress {
    /// `http://host:port`, without a trailing slash; paths are appended to it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ShopAddress {
    type Err = InputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "http://host:port (plain HTTP, no path)";
        let t = s.trim();
        let rest = if let Some(rest) = t.strip_prefix("http://") {
            rest
        } else if t.contains("://") {
            return Err(malformed("target", EXPECTED, s));
        } else {
            t
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let valid = !rest.is_empty()
            && !rest.contains(['/', '?', '#', '@', ' '])
            && format!("http://{rest}/").parse::<hyper::Uri>().is_ok_and(|u| u.host().is_some());
        if valid { Ok(Self(format!("http://{rest}"))) } else { Err(malformed("target", EXPECTED, s)) }
    }
}

impl fmt::Display for ShopAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn rates_read_with_or_without_a_unit() {
        assert_eq!("2000".parse::<Rate>().unwrap().get(), 2000.0);
        assert_eq!("2000/s".parse::<Rate>().unwrap().get(), 2000.0);
        assert_eq!("0.5".parse::<Rate>().unwrap().to_string(), "0.5/s");
        assert_eq!("1412.5".parse::<Rate>().unwrap().to_string(), "1412.5/s");
        assert_eq!("2000".parse::<Rate>().unwrap().to_string(), "2000/s");
    }

    #[test]
    fn a_rate_that_is_no_rate_is_refused_with_what_was_expected() {
        for bad in ["", "fast", "0", "-5", "NaN", "inf", "2000000"] {
            let error = bad.parse::<Rate>().unwrap_err().to_string();
            assert!(error.starts_with("rate:"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn lengths_of_time_read_in_human_units() {
        assert_eq!("500ms".parse::<RunLength>().unwrap().get(), Duration::from_millis(500));
        assert_eq!("2m".parse::<RunLength>().unwrap().get(), Duration::from_secs(120));
        assert_eq!("0".parse::<Pause>().unwrap().get(), Duration::ZERO);
        assert!("0s".parse::<RunLength>().is_err(), "a run of no length is refused");
        assert!("30".parse::<RunLength>().unwrap_err().to_string().contains("like 500ms"));
        assert_eq!("5ms".parse::<LatencyObjective>().unwrap().get(), Duration::from_millis(5));
    }

    #[test]
    fn shares_read_as_percentages_or_fractions() {
        assert_eq!("1%".parse::<Fraction>().unwrap().get(), 0.01);
        assert_eq!("0.01".parse::<Fraction>().unwrap().get(), 0.01);
        assert!("100%".parse::<Fraction>().is_err());
        assert!("-1%".parse::<Fraction>().is_err());
    }

    #[test]
    fn the_target_is_a_plain_http_origin() {
        assert_eq!("127.0.0.1:8080".parse::<ShopAddress>().unwrap().as_str(), "http://127.0.0.1:8080");
        assert_eq!(
            "http://localhost:8080/".parse::<ShopAddress>().unwrap().as_str(),
            "http://localhost:8080"
        );
        for bad in ["https://shop:443", "http://shop:8080/api", "", "http://", "http://a b"] {
            assert!(bad.parse::<ShopAddress>().is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn a_secret_stays_out_of_debug_output() {
        let secret: Secret = "hunter2 hunter2".parse().unwrap();
        assert_eq!(secret.expose(), "hunter2 hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert!("".parse::<Secret>().is_err());
    }

    proptest! {
        #[test]
        fn every_rate_in_range_reads_back_as_itself(tenths in 1u64..10_000_000) {
            let value = tenths as f64 / 10.0;
            let rate: Rate = format!("{value}").parse().unwrap();
            prop_assert_eq!(rate.get(), value);
        }

        #[test]
        fn a_schedule_offset_grows_with_the_index(rate in 1.0f64..100_000.0, index in 0u64..1_000_000) {
            let rate = Rate::per_second(rate).unwrap();
            prop_assert!(rate.offset_of(index) <= rate.offset_of(index + 1));
        }

        #[test]
        fn max_in_flight_takes_exactly_1_to_100000(n in 0usize..200_000) {
            prop_assert_eq!(MaxInFlight::new(n).is_ok(), (1..=100_000).contains(&n));
        }
    }
}
