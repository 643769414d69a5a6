//! The catalog's types and rules. No I/O here: every value that gets past `parse` is valid, so
//! the store and the gRPC adapter never check again.

use std::fmt;

pub use bookstore_platform::status::InvalidField;

/// An ISBN-13 with a valid check digit, kept as its 13 digits. Hyphens and spaces in the input
/// are ignored (`978-0-441-17271-9` and `9780441172719` are the same book).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Isbn(String);

impl Isbn {
    pub fn parse(input: &str) -> Result<Self, InvalidField> {
        let digits: String = input.chars().filter(|c| !matches!(c, '-' | ' ')).collect();
        if digits.len() != 13 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidField::new("isbn", "must be an ISBN-13: 13 digits, hyphens allowed"));
        }
        if !(digits.starts_with("978") || digits.starts_with("979")) {
            return Err(InvalidField::new("isbn", "an ISBN-13 starts with 978 or 979"));
        }
        let bytes = digits.as_bytes();
        if check_digit(&bytes[..12]) != bytes[12] - b'0' {
            return Err(InvalidField::new("isbn", "check digit does not match"));
        }
        Ok(Self(digits))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The ISBN-13 check digit of the first twelve digits (weights 1, 3, 1, 3, ...).
pub fn check_digit(first_twelve: &[u8]) -> u8 {
    let sum: u32 = first_twelve
        .iter()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

impl fmt::Display for Isbn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An ISO 4217 currency code: three letters, stored upper-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currency(String);

impl Currency {
    pub fn parse(input: &str) -> Result<Self, InvalidField> {
        if input.len() == 3 && input.bytes().all(|b| b.is_ascii_alphabetic()) {
            Ok(Self(input.to_ascii_uppercase()))
        } else {
            Err(InvalidField::new("price.currency", "must be a three-letter ISO 4217 code such as USD"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Money as integer minor units (cents) of a currency; never a float.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: Currency,
}

/// The most a single price may be, in minor units (one million whole units).
pub const MAX_PRICE_MINOR: i64 = 100_000_000;

impl Money {
    pub fn parse(amount_minor: i64, currency: &str) -> Result<Self, InvalidField> {
        if !(0..=MAX_PRICE_MINOR).contains(&amount_minor) {
            return Err(InvalidField::new(
                "price.amount_minor",
                format!("must be between 0 and {MAX_PRICE_MINOR} (minor units, e.g. cents)"),
            ));
        }
        Ok(Self { amount_minor, currency: Currency::parse(currency)? })
    }
}

use bookstore_platform::text_type;

text_type!(
    /// A book's title, 1 to 300 characters.
    Title, "title", 1, 300
);
text_type!(
    /// A book's author or authors, 1 to 200 characters.
    Author, "author", 1, 200
);
text_type!(
    /// A book's description, up to 5,000 characters.
    Description, "description", 0, 5000
);

impl Title {
    /// The sort key: lower-cased, so "dune" and "Dune" sort together on every backend.
    pub fn sort_key(&self) -> String {
        self.0.to_lowercase()
    }
}

impl Author {
    /// The key an author filter matches on, case-insensitively.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

/// Units on the shelf; never negative.
pub const MAX_STOCK: i64 = 1_000_000_000;

pub fn parse_stock(stock: i64) -> Result<i64, InvalidField> {
    if (0..=MAX_STOCK).contains(&stock) {
        Ok(stock)
    } else {
        Err(InvalidField::new("stock", format!("must be between 0 and {MAX_STOCK}")))
    }
}

/// A change of stock: not zero, and not beyond what stock can hold.
pub fn parse_stock_delta(delta: i64) -> Result<i64, InvalidField> {
    if delta == 0 {
        Err(InvalidField::new("delta", "must not be zero"))
    } else if delta.unsigned_abs() > MAX_STOCK as u64 {
        Err(InvalidField::new("delta", format!("must be between -{MAX_STOCK} and {MAX_STOCK}")))
    } else {
        Ok(delta)
    }
}

pub use bookstore_platform::page::PageRequest;

/// A full-text query: the words of the input (letters and digits), at most 16 of them.
/// Both backends get the same words and match books that contain all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    words: Vec<String>,
}

impl SearchQuery {
    pub const MAX_CHARS: usize = 200;
    pub const MAX_WORDS: usize = 16;

    pub fn parse(input: &str) -> Result<Self, InvalidField> {
        if input.chars().count() > Self::MAX_CHARS {
            return Err(InvalidField::new("q", format!("must be at most {} characters", Self::MAX_CHARS)));
        }
        let words: Vec<String> = input
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        if words.is_empty() {
            return Err(InvalidField::new("q", "must contain at least one word"));
        }
        if words.len() > Self::MAX_WORDS {
            return Err(InvalidField::new("q", format!("must have at most {} words", Self::MAX_WORDS)));
        }
        Ok(Self { words })
    }

    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// The query for SQLite's FTS5: each word quoted (so no word is read as an operator),
    /// all required.
    pub fn fts5(&self) -> String {
        self.words.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(" ")
    }

    /// The query text for PostgreSQL's `plainto_tsquery`, which also requires every word.
    pub fn plain(&self) -> String {
        self.words.join(" ")
    }
}

/// A book as a client asks to add it.
#[derive(Debug, Clone)]
pub struct NewBook {
    pub isbn: Isbn,
    pub title: Title,
    pub author: Author,
    pub description: Description,
    pub price: Money,
    pub stock: i64,
}

/// The fields of a book a client asks to change; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct BookPatch {
    pub isbn: Option<Isbn>,
    pub title: Option<Title>,
    pub author: Option<Author>,
    pub description: Option<Description>,
    pub price: Option<Money>,
}

impl BookPatch {
    pub fn is_empty(&self) -> bool {
        self.isbn.is_none()
            && self.title.is_none()
            && self.author.is_none()
            && self.description.is_none()
            && self.price.is_none()
    }
}

/// A book in the catalog (serialized only for the shared read cache).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Book {
    pub id: String,
    pub isbn: String,
    pub title: String,
    pub author: String,
    pub description: String,
    pub price_minor: i64,
    pub currency: String,
    pub stock: i64,
    /// Units held for unconfirmed orders.
    pub reserved: i64,
    /// Units sold.
    pub sold: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_real_isbn_13_parses_with_or_without_hyphens() {
        assert_eq!(Isbn::parse("9780441172719").unwrap().as_str(), "9780441172719");
        assert_eq!(Isbn::parse("978-0-441-17271-9").unwrap().as_str(), "9780441172719");
        assert_eq!(Isbn::parse(" 979-8-6024-0569-5 ").unwrap_err().reason, "check digit does not match");
    }

    #[test]
    fn an_isbn_with_a_wrong_check_digit_is_refused() {
        let err = Isbn::parse("9780441172718").unwrap_err();
        assert_eq!(err.field, "isbn");
        assert_eq!(err.reason, "check digit does not match");
    }

    #[test]
    fn isbn_10_and_non_digits_are_refused() {
        assert!(Isbn::parse("0441172717").is_err());
        assert!(Isbn::parse("97804411727X9").is_err());
        assert!(Isbn::parse("1234567890128").is_err(), "prefix must be 978 or 979");
        assert!(Isbn::parse("").is_err());
    }

    #[test]
    fn money_is_integer_minor_units_within_bounds() {
        let m = Money::parse(1999, "usd").unwrap();
        assert_eq!((m.amount_minor, m.currency.as_str()), (1999, "USD"));
        assert!(Money::parse(-1, "USD").is_err());
        assert!(Money::parse(MAX_PRICE_MINOR + 1, "USD").is_err());
        assert!(Money::parse(100, "US").is_err());
        assert!(Money::parse(100, "U$D").is_err());
    }

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(Title::parse("  Dune ").unwrap().as_str(), "Dune");
        assert_eq!(Title::parse("   ").unwrap_err().reason, "must not be empty");
        assert!(Title::parse(&"x".repeat(301)).is_err());
        assert!(Title::parse(&"é".repeat(300)).is_ok(), "length counts characters, not bytes");
        assert!(Author::parse("a\u{0}b").is_err());
        assert!(Description::parse("").is_ok());
        assert!(Description::parse("line one\nline two").is_ok());
    }

    #[test]
    fn search_queries_keep_words_only_and_quote_them_for_fts5() {
        let q = SearchQuery::parse("Rust: \"programming\" OR -language*").unwrap();
        assert_eq!(q.words(), ["rust", "programming", "or", "language"]);
        assert_eq!(q.fts5(), r#""rust" "programming" "or" "language""#);
        assert!(SearchQuery::parse(" !!! ").is_err());
        assert!(SearchQuery::parse(&"a ".repeat(17)).is_err());
    }

    #[test]
    fn stock_deltas_must_change_something() {
        assert!(parse_stock_delta(0).is_err());
        assert_eq!(parse_stock_delta(-3).unwrap(), -3);
        assert!(parse_stock_delta(i64::MIN).is_err());
        assert!(parse_stock(-1).is_err());
    }

    proptest! {
        #[test]
        fn every_twelve_digits_with_their_check_digit_parse(body in "97[89][0-9]{9}") {
            let check = check_digit(body.as_bytes());
            let isbn = format!("{body}{check}");
            let parsed = Isbn::parse(&isbn).unwrap();
            prop_assert_eq!(parsed.as_str(), isbn.as_str());
        }

        #[test]
        fn any_other_last_digit_is_refused(body in "97[89][0-9]{9}", wrong in 1u8..10) {
            let check = (check_digit(body.as_bytes()) + wrong) % 10;
            let isbn = format!("{body}{check}");
            prop_assert!(Isbn::parse(&isbn).is_err());
        }

        #[test]
        fn isbn_parse_never_panics(input in "\\PC{0,40}") {
            let _ = Isbn::parse(&input);
        }

        #[test]
        fn page_offsets_never_overflow_and_stay_in_bounds(page in any::<i32>(), limit in any::<i32>()) {
            if let Ok(p) = PageRequest::parse(page, limit) {
                prop_assert!(p.limit() >= 1 && p.limit() <= PageRequest::MAX_LIMIT);
                prop_assert!(p.page() >= 1 && p.page() <= PageRequest::MAX_PAGE);
                prop_assert_eq!(p.offset(), i64::from(p.page() - 1) * i64::from(p.limit()));
            }
        }

        #[test]
        fn fts5_queries_have_only_quoted_alphanumeric_words(input in "\\PC{0,100}") {
            if let Ok(q) = SearchQuery::parse(&input) {
                for token in q.fts5().split(' ') {
                    prop_assert!(token.starts_with('"') && token.ends_with('"') && token.len() > 2);
                    prop_assert!(token[1..token.len() - 1].chars().all(char::is_alphanumeric));
                }
            }
        }
    }
}

/// Where a reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationState {
    /// Units taken off the shelf for an order, until it confirms or the hold expires.
    Held,
    /// Sold to the order.
    Confirmed,
    /// Back on the shelf: the order was cancelled, failed, or its hold expired.
    Released,
}

impl ReservationState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationState::Held => "held",
            ReservationState::Confirmed => "confirmed",
            ReservationState::Released => "released",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [ReservationState::Held, ReservationState::Confirmed, ReservationState::Released]
            .into_iter()
            .find(|state| state.as_str() == s)
    }
}

/// How a reservation is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Sell the held units.
    Confirm,
    /// Put the units back on the shelf (sold ones too: a cancelled order's books go back on sale).
    Release,
}

impl Settlement {
    /// The state a reservation is in once settled this way.
    pub fn target(self) -> ReservationState {
        match self {
            Settlement::Confirm => ReservationState::Confirmed,
            Settlement::Release => ReservationState::Released,
        }
    }
}

/// One line of a reservation request: a book and how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveLine {
    pub book_id: String,
    pub quantity: i64,
}

/// Checks a reservation's lines by the basket rules every service shares
/// ([`bookstore_platform::basket`]).
pub fn parse_reserve_lines(lines: Vec<ReserveLine>) -> Result<Vec<ReserveLine>, InvalidField> {
    bookstore_platform::basket::check(lines.iter().map(|l| (l.book_id.as_str(), l.quantity)))?;
    Ok(lines)
}
