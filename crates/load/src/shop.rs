//! The shop as the load sees it: what the preparation found and made (books with stock to
//! sell, signed-in customers, words to search for), and the HTTP request each scenario sends.
//!
//! The preparation, before any load: sign in as the admin; restock the first 100 books by a
//! million units each (so checkouts never run out); register the customers `<prefix>0` to
//! `<prefix>N-1`, or sign in those that exist already (so a second run against the same shop
//! works); sign each in. It runs the same calls `bench/customers.py` makes, with the same
//! customer password, so a shop prepared by either serves both.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt, stream};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::client::ShopClient;
use crate::engine::Target;
use crate::input::{CustomerCount, Secret};
use crate::record::Outcome;
use crate::scenario::Scenario;

/// The prepared customers' password (the bench customers' of `bench/customers.py`).
pub const CUSTOMER_PASSWORD: &str = "velvet lantern orbit crumble";
/// How many books are restocked, and read, searched and ordered: the first page of 100.
pub const BOOKS: usize = 100;
/// Units added to each of those books' stock.
pub const RESTOCK: i64 = 1_000_000;
/// Books on a page of the API's catalog, as the browse scenario asks for them.
pub const PAGE_SIZE: u64 = 20;
/// Calls the preparation makes at once.
const PREPARING_AT_ONCE: usize = 8;

/// Who to sign in as, and how many customers to have.
#[derive(Debug, Clone)]
pub struct Preparation {
    pub admin_username: String,
    pub admin_password: Secret,
    pub customers: CustomerCount,
    pub customer_prefix: String,
}

/// A customer the load acts as.
#[derive(Debug, Clone)]
pub struct Customer {
    pub username: String,
    pub access_token: String,
}

/// What the preparation found and made.
#[derive(Debug, Clone)]
pub struct Shop {
    /// Ids of the books read, searched and ordered (each restocked).
    pub books: Vec<String>,
    /// Pages of the API's catalog at [`PAGE_SIZE`] a page, at least 1.
    pub catalog_pages: u64,
    /// Words from the books' titles, each of which finds at least that book.
    pub words: Vec<String>,
    pub customers: Vec<Customer>,
    /// When the customers' tokens were issued, and for how long they hold.
    pub signed_in_at: Instant,
    pub token_lifetime: Duration,
}

/// What the preparation did, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    pub restocked: usize,
    pub registered: usize,
    pub existing: usize,
}

#[derive(Deserialize)]
struct Tokens {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct BookPage {
    items: Vec<BookItem>,
    total: Option<u64>,
}

#[derive(Deserialize)]
struct BookItem {
    id: String,
    #[serde(default)]
    title: String,
}

fn body_excerpt(body: &Bytes) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.chars().count() > 300 {
        format!("{}…", text.chars().take(300).collect::<String>())
    } else {
        text.to_owned()
    }
}

async fn call(
    client: &ShopClient,
    request: Request<Full<Bytes>>,
    what: &str,
) -> anyhow::Result<(StatusCode, Bytes)> {
    client.fetch(request).await.map_err(|failure| anyhow::anyhow!("{what}: no answer ({failure})"))
}

fn json_body(value: serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(&value).expect("JSON values serialize"))
}

/// Signs `username` in; the token and its lifetime.
async fn sign_in(client: &ShopClient, username: &str, password: &str) -> anyhow::Result<(String, Duration)> {
    let body = json_body(json!({ "username": username, "password": password }));
    let request = client.request(Method::POST, "/api/v1/auth/login", None, Some(body));
    let (status, body) = call(client, request, &format!("signing in as {username}")).await?;
    if status != StatusCode::OK {
        bail!("signing in as {username}: {status}: {}", body_excerpt(&body));
    }
    let tokens: Tokens =
        serde_json::from_slice(&body).with_context(|| format!("signing in as {username}"))?;
    Ok((tokens.access_token, Duration::from_secs(tokens.expires_in.unwrap_or(15 * 60))))
}

/// Registers `username`; whether it is new (false: it existed already).
async fn register(client: &ShopClient, username: &str) -> anyhow::Result<bool> {
    let body = json_body(json!({
        "username": username,
        "email": format!("{username}@example.com"),
        "password": CUSTOMER_PASSWORD,
        "full_name": username,
    }));
    let request = client.request(Method::POST, "/api/v1/auth/register", None, Some(body));
    let (status, body) = call(client, request, &format!("registering {username}")).await?;
    match status {
        StatusCode::ACCEPTED | StatusCode::CREATED | StatusCode::OK => Ok(true),
        StatusCode::CONFLICT => Ok(false),
        StatusCode::TOO_MANY_REQUESTS => bail!(
            "registering {username}: 429, the shop limits sign-ups per address; start it with \
             BOOKSTORE_REGISTRATIONS_PER_ADDRESS=0 for a load test"
        ),
        other => bail!("registering {username}: {other}: {}", body_excerpt(&body)),
    }
}

fn customer_names(preparation: &Preparation) -> Vec<String> {
    (0..preparation.customers.get()).map(|k| format!("{}{k}", preparation.customer_prefix)).collect()
}

/// Signs every customer in again (tokens expire: a long search outlives them).
pub async fn sign_in_customers(client: &ShopClient, shop: &mut Shop) -> anyhow::Result<()> {
    let names: Vec<String> = shop.customers.iter().map(|c| c.username.clone()).collect();
    let signed_in_at = Instant::now();
    let signed: Vec<(String, Duration)> = stream::iter(names.iter())
        .map(|name| sign_in(client, name, CUSTOMER_PASSWORD))
        .buffered(PREPARING_AT_ONCE)
        .try_collect()
        .await?;
    for (customer, (token, lifetime)) in shop.customers.iter_mut().zip(signed) {
        customer.access_token = token;
        shop.token_lifetime = lifetime;
    }
    shop.signed_in_at = signed_in_at;
    Ok(())
}

/// Prepares the shop for load (see the module's documentation).
pub async fn prepare(client: &ShopClient, preparation: &Preparation) -> anyhow::Result<(Shop, Prepared)> {
    let (admin, _) = sign_in(client, &preparation.admin_username, preparation.admin_password.expose())
        .await
        .context("the admin's sign-in (is --admin-password the shop's?)")?;

    let request = client.request(Method::GET, &format!("/api/v1/books?limit={BOOKS}"), None, None);
    let (status, body) = call(client, request, "listing the catalog").await?;
    if status != StatusCode::OK {
        bail!("listing the catalog: {status}: {}", body_excerpt(&body));
    }
    let page: BookPage = serde_json::from_slice(&body).context("listing the catalog")?;
    if page.items.is_empty() {
        bail!("the catalog is empty: start the shop with its starter catalog (`serve --seed`, or `up`)");
    }
    let total = page.total.unwrap_or(page.items.len() as u64);

    stream::iter(page.items.iter())
        .map(|book| {
            let body = json_body(json!({ "delta": RESTOCK }));
            let path = format!("/api/v1/books/{}/stock", book.id);
            let request = client.request(Method::POST, &path, Some(&admin), Some(body));
            async move {
                let (status, body) = call(client, request, &format!("restocking {}", book.id)).await?;
                if !status.is_success() {
                    bail!("restocking book {}: {status}: {}", book.id, body_excerpt(&body));
                }
                Ok(())
            }
        })
        .buffer_unordered(PREPARING_AT_ONCE)
        .try_collect::<()>()
        .await?;

    let names = customer_names(preparation);
    let new: Vec<bool> = stream::iter(names.iter())
        .map(|name| register(client, name))
        .buffered(PREPARING_AT_ONCE)
        .try_collect()
        .await?;
    let registered = new.iter().filter(|n| **n).count();

    let mut shop = Shop {
        books: page.items.iter().map(|b| b.id.clone()).collect(),
        catalog_pages: total.div_ceil(PAGE_SIZE).clamp(1, 500),
        words: title_words(page.items.iter().map(|b| b.title.as_str())),
        customers: names
            .into_iter()
            .map(|username| Customer { username, access_token: String::new() })
            .collect(),
        signed_in_at: Instant::now(),
        token_lifetime: Duration::ZERO,
    };
    sign_in_customers(client, &mut shop).await.context("signing the customers in")?;
    let prepared = Prepared { restocked: page.items.len(), registered, existing: new.len() - registered };
    Ok((shop, prepared))
}

/// Words of four letters or more from the titles, lower case, each once, so that every search
/// finds something; `book` if the titles have none.
fn title_words<'a>(titles: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut words: Vec<String> = titles
        .flat_map(|t| t.split(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|w| w.len() >= 4)
        .map(str::to_ascii_lowercase)
        .collect();
    words.sort();
    words.dedup();
    if words.is_empty() {
        words.push("book".to_owned());
    }
    words
}

impl Shop {
    /// Whether the customers' tokens are past half their lifetime, and should be renewed before
    /// another run.
    pub fn tokens_are_stale(&self) -> bool {
        self.signed_in_at.elapsed() > self.token_lifetime / 2
    }

    fn pick<T>(items: &[T], dice: u64) -> &T {
        &items[(dice % items.len() as u64) as usize]
    }

    /// The request `scenario` sends, its choices made by `dice`.
    pub fn request(&self, client: &ShopClient, scenario: Scenario, dice: u64) -> Request<Full<Bytes>> {
        let either = dice & 1 == 0;
        let book = Self::pick(&self.books, dice >> 1);
        let customer = Self::pick(&self.customers, dice >> 22);
        match scenario {
            Scenario::Browse if either => client.request(Method::GET, "/", None, None),
            Scenario::Browse => {
                let page = 1 + (dice >> 1) % self.catalog_pages;
                client.request(
                    Method::GET,
                    &format!("/api/v1/books?limit={PAGE_SIZE}&page={page}"),
                    None,
                    None,
                )
            }
            Scenario::Search => {
                let word = Self::pick(&self.words, dice >> 43);
                client.request(Method::GET, &format!("/api/v1/books?q={word}"), None, None)
            }
            Scenario::Book if either => client.request(Method::GET, &format!("/books/{book}"), None, None),
            Scenario::Book => {
                client.request(Method::GET, &format!("/api/v1/books/{book}/recommendations"), None, None)
            }
            Scenario::Read => client.request(Method::GET, &format!("/api/v1/books/{book}"), None, None),
            Scenario::Login => {
                let body = json_body(json!({ "username": customer.username, "password": CUSTOMER_PASSWORD }));
                client.request(Method::POST, "/api/v1/auth/login", None, Some(body))
            }
            Scenario::Checkout => {
                let body = json_body(json!({
                    "lines": [{ "book_id": book, "quantity": 1 }],
                    "shipping_address": {
                        "name": "Bench Customer", "line1": "1 Bench Street", "city": "Benchtown", "country": "DE",
                    },
                }));
                client.request(Method::POST, "/api/v1/orders", Some(&customer.access_token), Some(body))
            }
        }
    }
}

/// The shop over HTTP, as the schedule's target.
pub struct ShopTarget {
    pub client: ShopClient,
    pub shop: Shop,
}

impl Target for ShopTarget {
    async fn send(&self, scenario: Scenario, dice: u64) -> Outcome {
        self.client.exchange(self.shop.request(&self.client, scenario, dice)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_words_come_from_titles() {
        let words = title_words(["Dune", "The Left Hand of Darkness", "I, Robot"].into_iter());
        assert_eq!(words, ["darkness", "dune", "hand", "left", "robot"]);
        assert_eq!(title_words(["A B"].into_iter()), ["book"]);
    }
}
