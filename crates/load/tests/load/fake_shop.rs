//! A fake of the shop's HTTP surface on 127.0.0.1:0, as much of it as the load generator uses:
//! sign-in and registration, the catalog, restocking, the scenarios' pages and calls. It
//! counts what it was asked, and answers some routes with errors on purpose: the catalog page
//! 503 (as an overloaded gateway does), a book's recommendations 500.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bookstore_load::shop::CUSTOMER_PASSWORD;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub const ADMIN_PASSWORD: &str = "fake admin passphrase";
pub const BOOKS: [(&str, &str); 5] = [
    ("b1", "Dune"),
    ("b2", "The Left Hand of Darkness"),
    ("b3", "Neuromancer"),
    ("b4", "Solaris"),
    ("b5", "Hyperion"),
];

#[derive(Default)]
pub struct Seen {
    /// Requests by what they asked for: "catalog page", "book page", "list", "search", "read",
    /// "recommendations", "login", "order".
    pub hits: BTreeMap<&'static str, u64>,
    /// `(book, delta)` of each restock.
    pub restocked: Vec<(String, i64)>,
}

struct Shop {
    accounts: Mutex<HashMap<String, String>>,
    seen: Mutex<Seen>,
    read_delay: Mutex<Duration>,
}

impl Shop {
    fn hit(&self, what: &'static str) {
        *self.seen.lock().unwrap().hits.entry(what).or_default() += 1;
    }
}

pub struct FakeShop {
    pub address: String,
    shop: Arc<Shop>,
    server: JoinHandle<()>,
}

impl Drop for FakeShop {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeShop {
    /// A fake shop with the admin account and the `existing` customers already registered.
    pub async fn start(existing: &[&str]) -> Self {
        let mut accounts = HashMap::from([("admin".to_owned(), ADMIN_PASSWORD.to_owned())]);
        accounts.extend(existing.iter().map(|name| (name.to_string(), CUSTOMER_PASSWORD.to_owned())));
        let shop = Arc::new(Shop {
            accounts: Mutex::new(accounts),
            seen: Mutex::new(Seen::default()),
            read_delay: Mutex::new(Duration::ZERO),
        });
        let router = Router::new()
            .route("/", get(catalog_page))
            .route("/books/{id}", get(book_page))
            .route("/api/v1/auth/login", post(login))
            .route("/api/v1/auth/register", post(register))
            .route("/api/v1/books", get(list))
            .route("/api/v1/books/{id}", get(read))
            .route("/api/v1/books/{id}/recommendations", get(recommendations))
            .route("/api/v1/books/{id}/stock", post(restock))
            .route("/api/v1/orders", post(order))
            .with_state(shop.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self { address, shop, server }
    }

    /// Book reads (`GET /api/v1/books/{id}`) take this long from now on.
    pub fn slow_reads(&self, delay: Duration) {
        *self.shop.read_delay.lock().unwrap() = delay;
    }

    /// What the shop was asked since it started, or since the last call.
    pub fn take_seen(&self) -> Seen {
        std::mem::take(&mut *self.shop.seen.lock().unwrap())
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
}

async fn catalog_page(State(shop): State<Arc<Shop>>) -> Response {
    shop.hit("catalog page");
    (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")], "the gateway is overloaded").into_response()
}

async fn book_page(State(shop): State<Arc<Shop>>, Path(_id): Path<String>) -> Html<&'static str> {
    shop.hit("book page");
    Html("<h1>A book</h1>")
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

async fn login(State(shop): State<Arc<Shop>>, Json(body): Json<Credentials>) -> Response {
    shop.hit("login");
    let known = shop.accounts.lock().unwrap().get(&body.username) == Some(&body.password);
    if known {
        let token = format!("token-{}", body.username);
        Json(json!({ "access_token": token, "token_type": "Bearer", "expires_in": 900 })).into_response()
    } else {
        (StatusCode::UNAUTHORIZED, Json(json!({ "error": { "message": "wrong username or password" } })))
            .into_response()
    }
}

async fn register(State(shop): State<Arc<Shop>>, Json(body): Json<Credentials>) -> StatusCode {
    let mut accounts = shop.accounts.lock().unwrap();
    if accounts.contains_key(&body.username) {
        return StatusCode::CONFLICT;
    }
    accounts.insert(body.username, body.password);
    StatusCode::ACCEPTED
}

async fn list(State(shop): State<Arc<Shop>>, Query(query): Query<HashMap<String, String>>) -> Json<Value> {
    shop.hit(if query.contains_key("q") { "search" } else { "list" });
    let items: Vec<Value> = BOOKS.iter().map(|(id, title)| json!({ "id": id, "title": title })).collect();
    Json(json!({ "items": items, "total": BOOKS.len(), "page": 1, "limit": 100 }))
}

async fn read(State(shop): State<Arc<Shop>>, Path(id): Path<String>) -> Json<Value> {
    shop.hit("read");
    let delay = *shop.read_delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    Json(json!({ "id": id }))
}

async fn recommendations(State(shop): State<Arc<Shop>>, Path(_id): Path<String>) -> StatusCode {
    shop.hit("recommendations");
    StatusCode::INTERNAL_SERVER_ERROR
}

#[derive(Deserialize)]
struct StockAdjustment {
    delta: i64,
}

async fn restock(
    State(shop): State<Arc<Shop>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<StockAdjustment>,
) -> StatusCode {
    if bearer(&headers) != Some("token-admin") {
        return StatusCode::UNAUTHORIZED;
    }
    shop.seen.lock().unwrap().restocked.push((id, body.delta));
    StatusCode::OK
}

async fn order(State(shop): State<Arc<Shop>>, headers: HeaderMap, Json(body): Json<Value>) -> StatusCode {
    shop.hit("order");
    let customer = bearer(&headers).is_some_and(|t| t.starts_with("token-") && t != "token-admin");
    let one_line = body["lines"].as_array().is_some_and(|l| l.len() == 1 && l[0]["quantity"] == 1);
    match (customer, one_line) {
        (false, _) => StatusCode::UNAUTHORIZED,
        (true, false) => StatusCode::BAD_REQUEST,
        (true, true) => StatusCode::CREATED,
    }
}
