//! The shop's traffic as labelled scenarios, the weights that mix them, and the dice that pick
//! a scenario (and a book, a customer, a word) for each request of a schedule.
//!
//! Each request of a schedule is one HTTP request. A scenario made of two requests (browsing:
//! the catalog page or a page of the API; a book: its page or its recommendations) sends one or
//! the other, half the time each, so a rate is always requests a second, comparable with the
//! other benchmarks and with the shop's own metrics.

use std::fmt;
use std::str::FromStr;

use crate::input::InputError;

/// What a visitor does, as the shop sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// `GET /` (the catalog page) or `GET /api/v1/books?limit=20&page=N`.
    Browse,
    /// `GET /api/v1/books?q=WORD`, a word from the catalog's titles.
    Search,
    /// `GET /books/{id}` (the page) or `GET /api/v1/books/{id}/recommendations`.
    Book,
    /// `GET /api/v1/books/{id}`.
    Read,
    /// `POST /api/v1/auth/login` as one of the prepared customers.
    Login,
    /// `POST /api/v1/orders`: one copy of a random book, as one of the prepared customers.
    Checkout,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Browse,
        Scenario::Search,
        Scenario::Book,
        Scenario::Read,
        Scenario::Login,
        Scenario::Checkout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Scenario::Browse => "browse",
            Scenario::Search => "search",
            Scenario::Book => "book",
            Scenario::Read => "read",
            Scenario::Login => "login",
            Scenario::Checkout => "checkout",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Whether an answer with this status is the one the visitor wanted: a sign-in is 200, an
    /// order placed 201, every read any 2xx.
    pub fn succeeded(self, status: u16) -> bool {
        match self {
            Scenario::Login => status == 200,
            Scenario::Checkout => status == 201,
            _ => (200..300).contains(&status),
        }
    }
}

impl FromStr for Scenario {
    type Err = InputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase();
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.label() == name)
            .ok_or(InputError::UnknownScenario(s.trim().to_owned()))
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// How often each scenario comes up, as whole weights (`read=40,checkout=5`); scenarios not
/// named weigh 0. At least one weight is above 0, each at most 1,000,000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 6],
    total: u64,
}

impl Mix {
    /// What the shop sees on an ordinary day, roughly: mostly reading, some searching, a few
    /// orders, and sign-ins rare (each one hashes a password, by design the dearest request).
    pub const DEFAULT: &'static str = "browse=20,search=10,book=20,read=44,login=1,checkout=5";

    pub fn weight(&self, scenario: Scenario) -> u32 {
        self.weights[scenario.index()]
    }

    /// The scenarios with a weight above 0, in the order of [`Scenario::ALL`].
    pub fn scenarios(&self) -> impl Iterator<Item = Scenario> + '_ {
        Scenario::ALL.into_iter().filter(|s| self.weight(*s) > 0)
    }

    /// The scenario that `dice` falls on, each with a chance of its weight over the total.
    pub fn pick(&self, dice: u64) -> Scenario {
        let mut point = dice % self.total;
        for scenario in Scenario::ALL {
            let weight = u64::from(self.weight(scenario));
            if point < weight {
                return scenario;
            }
            point -= weight;
        }
        unreachable!("the point is below the total of the weights")
    }
}

impl Default for Mix {
    fn default() -> Self {
        Self::DEFAULT.parse().expect("the default mix parses")
    }
}

impl FromStr for Mix {
    type Err = InputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut weights = [0u32; 6];
        let mut seen = [false; 6];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').ok_or_else(|| InputError::Malformed {
                what: "mix",
                expected: "scenario=weight pairs like read=40,checkout=5",
                got: part.to_owned(),
            })?;
            let scenario: Scenario = name.parse()?;
            let weight: u32 = weight.trim().parse().ok().filter(|w| *w <= 1_000_000).ok_or_else(|| {
                InputError::OutOfRange {
                    what: "mix weight",
                    got: weight.trim().to_owned(),
                    range: "0 to 1000000",
                }
            })?;
            if std::mem::replace(&mut seen[scenario.index()], true) {
                return Err(InputError::DuplicateScenario(scenario.label().to_owned()));
            }
            weights[scenario.index()] = weight;
        }
        let total = weights.iter().map(|w| u64::from(*w)).sum();
        if total == 0 {
            return Err(InputError::EmptyMix);
        }
        Ok(Self { weights, total })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.scenarios().map(|s| format!("{s}={}", self.weight(s))).collect();
        f.write_str(&parts.join(","))
    }
}

/// Scenarios named together, like `read,book` (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioSet(Vec<Scenario>);

impl ScenarioSet {
    pub fn new(mut scenarios: Vec<Scenario>) -> Option<Self> {
        scenarios.sort();
        scenarios.dedup();
        (!scenarios.is_empty()).then_some(Self(scenarios))
    }

    pub fn contains(&self, scenario: Scenario) -> bool {
        self.0.contains(&scenario)
    }

    pub fn iter(&self) -> impl Iterator<Item = Scenario> + '_ {
        self.0.iter().copied()
    }
}

impl FromStr for ScenarioSet {
    type Err = InputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let scenarios = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(scenarios).ok_or(InputError::Malformed {
            what: "scenarios",
            expected: "one or more of browse, search, book, read, login, checkout, comma-separated",
            got: s.to_owned(),
        })
    }
}

impl fmt::Display for ScenarioSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<&str> = self.0.iter().map(|s| s.label()).collect();
        f.write_str(&labels.join(","))
    }
}

/// Random bits for the `index`-th request of a schedule seeded with `seed` (SplitMix64): the
/// same seed gives the same requests in the same order, and no lock is shared between
/// requests to draw them.
pub fn dice(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_default_mix_has_every_scenario() {
        let mix = Mix::default();
        assert_eq!(mix.scenarios().count(), 6);
        assert_eq!(mix.to_string(), Mix::DEFAULT);
    }

    #[test]
    fn a_mix_names_scenarios_once_and_weighs_something() {
        assert!(matches!("read=1,bogus=2".parse::<Mix>(), Err(InputError::UnknownScenario(_))));
        assert!(matches!("read=1,read=2".parse::<Mix>(), Err(InputError::DuplicateScenario(_))));
        assert_eq!("read=0".parse::<Mix>(), Err(InputError::EmptyMix));
        assert!("read".parse::<Mix>().unwrap_err().to_string().contains("scenario=weight"));
        assert!("read=-1".parse::<Mix>().is_err());
        assert_eq!(
            "checkout=1".parse::<Mix>().unwrap().scenarios().collect::<Vec<_>>(),
            [Scenario::Checkout]
        );
    }

    #[test]
    fn picks_follow_the_weights() {
        let mix: Mix = "read=3,checkout=1".parse().unwrap();
        let reads = (0..40_000).filter(|i| mix.pick(dice(7, *i)) == Scenario::Read).count();
        assert!((29_000..31_000).contains(&reads), "{reads} reads of 40000, expected about 30000");
    }

    #[test]
    fn success_is_the_status_each_scenario_expects() {
        assert!(Scenario::Checkout.succeeded(201));
        assert!(!Scenario::Checkout.succeeded(200), "an order is created, not read");
        assert!(Scenario::Login.succeeded(200));
        assert!(!Scenario::Login.succeeded(202));
        assert!(Scenario::Read.succeeded(204));
        assert!(!Scenario::Read.succeeded(503));
    }

    #[test]
    fn scenario_sets_read_comma_separated() {
        let set: ScenarioSet = "read, book,read".parse().unwrap();
        assert_eq!(set.to_string(), "book,read");
        assert!(",".parse::<ScenarioSet>().is_err());
    }

    proptest! {
        #[test]
        fn a_pick_is_always_a_scenario_with_weight(weights in proptest::collection::vec(0u32..5, 6), dice in any::<u64>()) {
            prop_assume!(weights.iter().any(|w| *w > 0));
            let text = Scenario::ALL.iter().zip(&weights).map(|(s, w)| format!("{s}={w}")).collect::<Vec<_>>().join(",");
            let mix: Mix = text.parse().unwrap();
            prop_assert!(mix.weight(mix.pick(dice)) > 0);
        }
    }
}
