//! Orders' types and rules; no I/O.

/// Where an order is in its life. PLACED means its stock is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Placed,
    Fulfilling,
    Shipped,
    Delivered,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Placed => "PLACED",
            Status::Fulfilling => "FULFILLING",
            Status::Shipped => "SHIPPED",
            Status::Delivered => "DELIVERED",
            Status::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "PLACED" => Some(Status::Placed),
            "FULFILLING" => Some(Status::Fulfilling),
            "SHIPPED" => Some(Status::Shipped),
            "DELIVERED" => Some(Status::Delivered),
            "CANCELLED" => Some(Status::Cancelled),
            _ => None,
        }
    }

    /// Where an order goes when its fulfillment task reaches `task_state`, if that is ahead of
    /// where it is (task events may arrive out of order, so steps may be skipped, never undone):
    /// picked or packed → FULFILLING, shipped → SHIPPED, removed → CANCELLED while not shipped.
    pub fn following_task(self, task_state: &str) -> Option<Status> {
        match (task_state, self) {
            ("PICKING" | "PACKED", Status::Placed) => Some(Status::Fulfilling),
            ("SHIPPED", Status::Placed | Status::Fulfilling) => Some(Status::Shipped),
            ("REMOVED", Status::Placed | Status::Fulfilling) => Some(Status::Cancelled),
            _ => None,
        }
    }

    /// The moves an order may make: forward one step at a time, or cancelled while PLACED.
    pub fn can_become(self, next: Status) -> bool {
        matches!(
            (self, next),
            (Status::Placed, Status::Fulfilling)
                | (Status::Fulfilling, Status::Shipped)
                | (Status::Shipped, Status::Delivered)
                | (Status::Placed, Status::Cancelled)
        )
    }
}

/// Where an order's stock stands at books, as orders last recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockState {
    /// Reserved for the order, not yet sold: it goes back on the shelf if the hold expires.
    Held,
    /// Sold to the order.
    Confirmed,
    /// Back on the shelf (the order was cancelled or never stored).
    Released,
}

impl StockState {
    pub fn as_str(self) -> &'static str {
        match self {
            StockState::Held => "held",
            StockState::Confirmed => "confirmed",
            StockState::Released => "released",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "held" => Some(StockState::Held),
            "confirmed" => Some(StockState::Confirmed),
            "released" => Some(StockState::Released),
            _ => None,
        }
    }
}

/// How an order's reservation is settled at books.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// The order stands: sell the held stock.
    Confirm,
    /// The order is cancelled or failed: put the stock back.
    Release,
}

impl Settle {
    /// The settlement an order in `status` needs.
    pub fn for_status(status: Status) -> Self {
        if status == Status::Cancelled { Settle::Release } else { Settle::Confirm }
    }

    /// The stock state once it is done.
    pub fn outcome(self) -> StockState {
        match self {
            Settle::Confirm => StockState::Confirmed,
            Settle::Release => StockState::Released,
        }
    }
}

pub use bookstore_platform::status::InvalidField;

/// A basket line as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasketLine {
    pub book_id: String,
    pub quantity: i64,
}

/// Checks a basket by the rules every service shares ([`bookstore_platform::basket`]).
pub fn parse_basket(lines: Vec<BasketLine>) -> Result<Vec<BasketLine>, InvalidField> {
    bookstore_platform::basket::check(lines.iter().map(|l| (l.book_id.as_str(), l.quantity)))?;
    Ok(lines)
}

/// A fingerprint of a basket, order-insensitive, to tell a retry from a different request
/// under the same idempotency key.
pub fn basket_hash(lines: &[BasketLine]) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<_> = lines.iter().map(|l| format!("{}\u{1f}{}", l.book_id, l.quantity)).collect();
    sorted.sort();
    hex::encode(Sha256::digest(sorted.join("\u{1e}").as_bytes()))
}

/// An idempotency key: 1 to 255 visible ASCII characters.
pub fn parse_idempotency_key(key: &str) -> Result<&str, InvalidField> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InvalidField {
            field: "idempotency_key",
            reason: "must be 1 to 255 visible ASCII characters".into(),
        });
    }
    Ok(key)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub book_id: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
    pub currency: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: String,
    pub user_id: String,
    pub status: Status,
    pub lines: Vec<Line>,
    pub total_minor: i64,
    pub currency: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Where it ships; `None` only for orders placed before addresses existed.
    pub shipping_address: Option<ShippingAddress>,
    /// Why it is in its status, when someone said (empty otherwise).
    pub status_reason: String,
}

bookstore_platform::text_type!(
    /// Who receives the parcel, 1 to 200 characters.
    RecipientName, "shipping_address.name", 1, 200
);
bookstore_platform::text_type!(
    /// The first line of a postal address (street and number), 1 to 200 characters.
    AddressLine1, "shipping_address.line1", 1, 200
);
bookstore_platform::text_type!(
    /// More of the address (flat, building, the rest of a free-form address), up to 200.
    AddressLine2, "shipping_address.line2", 0, 200
);
bookstore_platform::text_type!(
    /// The city, up to 100 characters (some addresses carry it in their lines).
    City, "shipping_address.city", 0, 100
);
bookstore_platform::text_type!(
    /// The postal code, up to 20 characters (not every country has them).
    PostalCode, "shipping_address.postal_code", 0, 20
);

/// An ISO 3166-1 alpha-2 country code, upper case, or empty when the address does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Country(String);

impl Country {
    pub fn parse(input: &str) -> Result<Self, InvalidField> {
        let code = input.trim().to_ascii_uppercase();
        if code.is_empty() || (code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase())) {
            return Ok(Self(code));
        }
        Err(InvalidField::new("shipping_address.country", "must be an ISO 3166-1 alpha-2 code, e.g. DE"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where an order ships, every part checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippingAddress {
    pub name: RecipientName,
    pub line1: AddressLine1,
    pub line2: AddressLine2,
    pub city: City,
    pub postal_code: PostalCode,
    pub country: Country,
}

/// A shipping address as it arrives or is stored (JSON, inside the ciphertext), unchecked.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlainAddress {
    pub name: String,
    pub line1: String,
    #[serde(default)]
    pub line2: String,
    #[serde(default)]
    pub city: String,
    #[serde(default)]
    pub postal_code: String,
    #[serde(default)]
    pub country: String,
}

impl PlainAddress {
    pub fn parse(&self) -> Result<ShippingAddress, InvalidField> {
        Ok(ShippingAddress {
            name: RecipientName::parse(&self.name)?,
            line1: AddressLine1::parse(&self.line1)?,
            line2: AddressLine2::parse(&self.line2)?,
            city: City::parse(&self.city)?,
            postal_code: PostalCode::parse(&self.postal_code)?,
            country: Country::parse(&self.country)?,
        })
    }

    /// The address of an account, which keeps one free-form text: its first line is `line1`,
    /// the others are `line2`, joined by commas. `None` when the account has no address.
    pub fn from_account(name: &str, address: &str) -> Option<Self> {
        let mut lines = address.lines().map(str::trim).filter(|l| !l.is_empty());
        let line1 = lines.next()?.to_owned();
        Some(Self {
            name: name.to_owned(),
            line1,
            line2: lines.collect::<Vec<_>>().join(", "),
            ..Self::default()
        })
    }
}

impl ShippingAddress {
    pub fn plain(&self) -> PlainAddress {
        PlainAddress {
            name: self.name.as_str().to_owned(),
            line1: self.line1.as_str().to_owned(),
            line2: self.line2.as_str().to_owned(),
            city: self.city.as_str().to_owned(),
            postal_code: self.postal_code.as_str().to_owned(),
            country: self.country.as_str().to_owned(),
        }
    }

    /// The address as the JSON text that is encrypted (at rest, and sealed in events).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.plain()).expect("an address serializes")
    }

    pub fn from_json(text: &str) -> Result<Self, InvalidField> {
        let plain: PlainAddress = serde_json::from_str(text)
            .map_err(|e| InvalidField::new("shipping_address", format!("is not an address: {e}")))?;
        plain.parse()
    }
}

/// The total of `lines`, which must share one currency.
pub fn total(lines: &[Line]) -> Result<(i64, String), InvalidField> {
    let currency = lines.first().map(|l| l.currency.clone()).unwrap_or_default();
    if lines.iter().any(|l| l.currency != currency) {
        return Err(InvalidField {
            field: "lines",
            reason: "books in one order must share a currency".into(),
        });
    }
    let total = lines
        .iter()
        .try_fold(0i64, |acc, l| l.unit_price_minor.checked_mul(l.quantity).and_then(|v| acc.checked_add(v)));
    total.map(|t| (t, currency)).ok_or(InvalidField { field: "lines", reason: "total is too large".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_move_forward_one_step_or_cancel_while_placed() {
        use Status::*;
        assert!(
            Placed.can_become(Fulfilling) && Fulfilling.can_become(Shipped) && Shipped.can_become(Delivered)
        );
        assert!(Placed.can_become(Cancelled));
        for (from, to) in [
            (Placed, Shipped),
            (Shipped, Cancelled),
            (Delivered, Placed),
            (Cancelled, Placed),
            (Fulfilling, Cancelled),
        ] {
            assert!(!from.can_become(to), "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn an_order_follows_its_task_forward_only() {
        use Status::*;
        assert_eq!(Placed.following_task("PICKING"), Some(Fulfilling));
        assert_eq!(Placed.following_task("SHIPPED"), Some(Shipped), "a late claim event is not needed");
        assert_eq!(Fulfilling.following_task("SHIPPED"), Some(Shipped));
        assert_eq!(Fulfilling.following_task("REMOVED"), Some(Cancelled));
        assert_eq!(Fulfilling.following_task("PICKING"), None, "never back");
        assert_eq!(Shipped.following_task("REMOVED"), None, "a shipped order stays shipped");
        assert_eq!(Cancelled.following_task("PICKING"), None, "a cancelled order stays cancelled");
        assert_eq!(Placed.following_task("QUEUED"), None);
    }

    #[test]
    fn baskets_are_bounded_and_each_book_appears_once() {
        let l = |b: &str, q| BasketLine { book_id: b.into(), quantity: q };
        assert!(parse_basket(vec![l("a", 1), l("b", 2)]).is_ok());
        assert!(parse_basket(vec![]).is_err());
        assert!(parse_basket(vec![l("a", 0)]).is_err());
        assert!(parse_basket(vec![l("a", 1001)]).is_err());
        assert!(parse_basket(vec![l("a", 1), l("a", 2)]).is_err());
    }

    #[test]
    fn the_basket_hash_ignores_line_order_but_not_quantities() {
        let l = |b: &str, q| BasketLine { book_id: b.into(), quantity: q };
        assert_eq!(basket_hash(&[l("a", 1), l("b", 2)]), basket_hash(&[l("b", 2), l("a", 1)]));
        assert_ne!(basket_hash(&[l("a", 1)]), basket_hash(&[l("a", 2)]));
    }

    #[test]
    fn a_shipping_address_needs_a_name_and_a_first_line_and_a_real_country_code() {
        let plain = |name: &str, line1: &str, country: &str| PlainAddress {
            name: name.into(),
            line1: line1.into(),
            country: country.into(),
            ..PlainAddress::default()
        };
        let address = plain("Ada Lovelace", "12 St James's Square", "gb").parse().unwrap();
        assert_eq!(address.country.as_str(), "GB", "upper-cased");
        assert_eq!(ShippingAddress::from_json(&address.to_json()).unwrap(), address, "round-trips");
        assert_eq!(plain("", "x", "").parse().unwrap_err().field, "shipping_address.name");
        assert_eq!(plain("a", " ", "").parse().unwrap_err().field, "shipping_address.line1");
        assert_eq!(plain("a", "b", "GBR").parse().unwrap_err().field, "shipping_address.country");
        assert!(plain("a", "b", "").parse().is_ok(), "the country may be left out");
    }

    #[test]
    fn an_accounts_free_form_address_becomes_line1_and_line2() {
        let plain = PlainAddress::from_account("Ada", "12 St James's Square\n\nLondon SW1Y 4JH\nUK").unwrap();
        assert_eq!(
            (plain.line1.as_str(), plain.line2.as_str()),
            ("12 St James's Square", "London SW1Y 4JH, UK")
        );
        assert!(PlainAddress::from_account("Ada", "  \n ").is_none(), "no address, no shipping address");
    }

    #[test]
    fn totals_are_exact_integers_in_one_currency() {
        let line = |p, q, c: &str| Line {
            book_id: "b".into(),
            quantity: q,
            unit_price_minor: p,
            currency: c.into(),
            title: "t".into(),
        };
        assert_eq!(total(&[line(1999, 3, "USD"), line(1, 1, "USD")]).unwrap(), (5998, "USD".to_owned()));
        assert!(total(&[line(1, 1, "USD"), line(1, 1, "EUR")]).is_err());
        assert!(total(&[line(i64::MAX, 2, "USD")]).is_err());
    }
}
