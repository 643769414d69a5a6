//! Recommendations through the gateway: what was bought together, for the signed-in customer,
//! filled up with best-sellers and the catalog, out-of-stock books left out; and a page that
//! still gets an answer when the recommendations service is gone.

use reqwest::StatusCode;
use serde_json::{Value, json};

use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;
use bookstore_platform::service::Mode;

use crate::{System, book_json, customer, post_json, shipping_address, until};

backend_tests!(
    recommendations_rank_what_was_bought_together_and_fill_up_with_what_is_in_stock,
    with_the_recommendations_service_gone_a_book_page_gets_the_best_sellers_marked_fallback,
    a_service_token_asked_for_books_opens_books_and_nothing_else,
);

/// Book `n`, titled "Book n", with `stock`; its id.
async fn book(sys: &System, n: u32, stock: i64) -> String {
    let mut body = book_json(n, &format!("Book {n}"));
    body["stock"] = json!(stock);
    post_json(&sys.http, &sys.url("/api/v1/books"), &sys.admin, &body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn checkout(sys: &System, token: &str, books: &[&str]) {
    let lines: Vec<Value> = books.iter().map(|b| json!({"book_id": b, "quantity": 1})).collect();
    let body = json!({"lines": lines, "shipping_address": shipping_address()});
    let placed = post_json(&sys.http, &sys.url("/api/v1/orders"), token, &body).await;
    assert_eq!(placed["status"], "PLACED", "{placed}");
}

/// The answer at `path` (as `token`, if any): its status, its `X-Degraded`, its items as
/// (book id, reason, score).
async fn recommended(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> (StatusCode, Option<String>, Vec<(String, String, i64)>) {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status();
    let degraded = answer.headers().get("x-degraded").map(|v| v.to_str().unwrap().to_owned());
    let body: Value = answer.json().await.unwrap();
    let items = body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    let id = i["book"]["id"].as_str().unwrap().to_owned();
                    (id, i["reason"].as_str().unwrap().to_owned(), i["score"].as_i64().unwrap())
                })
                .collect()
        })
        .unwrap_or_default();
    (status, degraded, items)
}

async fn recommendations_rank_what_was_bought_together_and_fill_up_with_what_is_in_stock(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let ids = [book(&sys, 1, 100).await, book(&sys, 2, 100).await, book(&sys, 3, 100).await];
    let (a, b, c) = (ids[0].as_str(), ids[1].as_str(), ids[2].as_str());
    let (d, e, f) = (book(&sys, 4, 100).await, book(&sys, 5, 100).await, book(&sys, 6, 1).await);
    let (ada, bob, cat, dan) = (
        customer(&sys, "ada").await,
        customer(&sys, "bob").await,
        customer(&sys, "cat").await,
        customer(&sys, "dan").await,
    );
    checkout(&sys, &ada, &[a, b]).await;
    checkout(&sys, &bob, &[a, b, c]).await;
    checkout(&sys, &cat, &[a, c]).await;
    // Dan buys the last copy of F: bought with A, and now out of stock.
    checkout(&sys, &dan, &[a, &f]).await;

    let url = sys.url(&format!("/api/v1/books/{a}/recommendations?limit=4"));
    until("recommendations to hear of all four orders", std::time::Duration::from_secs(30), || async {
        let (_, _, items) = recommended(&sys.http, &url, None).await;
        items.len() == 4 && items[..2].iter().all(|(_, _, score)| *score == 2)
    })
    .await;
    let (status, degraded, items) = recommended(&sys.http, &url, None).await;
    assert_eq!((status, degraded), (StatusCode::OK, None));
    // B and C are both in 2 baskets with A, each bought by 2 customers: the tie goes to the
    // smaller book id. F is out of stock; the best-sellers (A, B, C, F) are all taken or left
    // out; the catalog fills up in title order.
    let together: Vec<&str> = items[..2].iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(together, [b.min(c), b.max(c)]);
    assert!(items[..2].iter().all(|(_, reason, _)| reason == "bought_together"));
    assert_eq!(
        items[2..].iter().map(|(id, reason, _)| (id.as_str(), reason.as_str())).collect::<Vec<_>>(),
        [(d.as_str(), "catalog"), (e.as_str(), "catalog")]
    );

    // Ada bought A and B: C is with A in 2 baskets and with B in 1; F is out of stock; what
    // she bought is left out; the catalog fills up.
    let mine = sys.url("/api/v1/users/me/recommendations?limit=3");
    let (status, _, items) = recommended(&sys.http, &mine, Some(&ada)).await;
    assert_eq!(status, StatusCode::OK);
    let got: Vec<(&str, &str, i64)> = items.iter().map(|(id, r, s)| (id.as_str(), r.as_str(), *s)).collect();
    assert_eq!(got, [(c, "bought_together", 3), (d.as_str(), "catalog", 0), (e.as_str(), "catalog", 0)]);

    // The caller's mistakes stay theirs.
    let (status, _, _) = recommended(&sys.http, &sys.url("/api/v1/users/me/recommendations"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) =
        recommended(&sys.http, &sys.url(&format!("/api/v1/books/{a}/recommendations?limit=0")), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) =
        recommended(&sys.http, &sys.url("/api/v1/books/missing/recommendations"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn with_the_recommendations_service_gone_a_book_page_gets_the_best_sellers_marked_fallback(
    backend: Backend,
) {
    let Some(sys) = System::start(backend, false).await else { return };
    let (a, b) = (book(&sys, 1, 100).await, book(&sys, 2, 100).await);
    let ada = customer(&sys, "ada").await;
    checkout(&sys, &ada, &[&a, &b]).await;
    let heard = sys.url(&format!("/api/v1/books/{b}/recommendations"));
    until("recommendations to hear of the order", std::time::Duration::from_secs(30), || async {
        let (_, _, items) = recommended(&sys.http, &heard, None).await;
        items.first().is_some_and(|(id, reason, _)| *id == a && reason == "bought_together")
    })
    .await;

    // Recommendations in a process of its own, apart from users: it signs in to read books
    // with a service account, as it would on another host. A gateway of its own calls it.
    let account = post_json(
        &sys.http,
        &sys.url("/api/v1/service-accounts"),
        &sys.admin,
        &json!({"name": "recommendations", "scopes": ["books:read"]}),
    )
    .await;
    let app = sys.app.as_ref().unwrap();
    let mut config = sys.config.clone();
    let port0: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    (config.gateway.http, config.recommendations.grpc, config.process.admin_http) = (port0, port0, port0);
    for (peer, url) in [
        ("books", &mut config.books.url),
        ("users", &mut config.users.url),
        ("orders", &mut config.orders.url),
        ("fulfillment", &mut config.fulfillment.url),
    ] {
        *url = Some(format!("http://{}", app.addr(peer).unwrap()));
    }
    config.recommendations.client_id = Some(account["client_id"].as_str().unwrap().to_owned());
    config.recommendations.client_secret = Some(account["client_secret"].as_str().unwrap().to_owned());
    let recommendations = bookstore::App::start(&["recommendations"], &config, Mode::Serve).await.unwrap();
    config.recommendations.url = Some(format!("http://{}", recommendations.addr("recommendations").unwrap()));
    // The gateway keeps the page it sent for a minute here, far longer than the test takes.
    config.gateway.recommendations_edge_cache_ms = 60_000;
    let gateway = bookstore::App::start(&["gateway"], &config, Mode::Serve).await.unwrap();
    let url = format!("http://{}/api/v1/books/{b}/recommendations", gateway.addr("gateway").unwrap());

    let (status, degraded, items) = recommended(&sys.http, &url, None).await;
    assert_eq!((status, degraded), (StatusCode::OK, None), "a good answer through the separate service");
    assert_eq!(items[0], (a.clone(), "bought_together".to_owned(), 1));

    // Gone. The page the gateway sent is still fresh: the same answer, not degraded.
    recommendations.shutdown_token().cancel();
    recommendations.wait().await.unwrap();
    let (status, degraded, kept) = recommended(&sys.http, &url, None).await;
    assert_eq!((status, degraded, kept), (StatusCode::OK, None, items), "the gateway's copy");
    // Any other page still gets 200: the best-sellers the gateway last heard (A; B is the
    // book asked about), marked.
    let (status, degraded, items) = recommended(&sys.http, &format!("{url}?limit=5"), None).await;
    assert_eq!((status, degraded.as_deref()), (StatusCode::OK, Some("fallback")));
    let got: Vec<(&str, &str)> = items.iter().map(|(id, r, _)| (id.as_str(), r.as_str())).collect();
    assert_eq!(got, [(a.as_str(), "best_seller")]);
    // A customer's own, the same.
    let mine = format!("http://{}/api/v1/users/me/recommendations", gateway.addr("gateway").unwrap());
    let (status, degraded, _) = recommended(&sys.http, &mine, Some(&ada)).await;
    assert_eq!((status, degraded.as_deref()), (StatusCode::OK, Some("fallback")));
    gateway.shutdown_token().cancel();
}

async fn a_service_token_asked_for_books_opens_books_and_nothing_else(backend: Backend) {
    use bookstore_api::books::v1 as books;
    use bookstore_api::orders::v1 as orders;
    let Some(sys) = System::start(backend, false).await else { return };
    let a = book(&sys, 1, 5).await;
    let account = post_json(
        &sys.http,
        &sys.url("/api/v1/service-accounts"),
        &sys.admin,
        &json!({"name": "reader", "scopes": ["books:read"]}),
    )
    .await;
    let token_for = |resource: Value| {
        let body = json!({"grant_type": "client_credentials", "client_id": account["client_id"],
                          "client_secret": account["client_secret"], "resource": resource});
        let http = sys.http.clone();
        let url = sys.url("/api/v1/auth/token");
        async move {
            let answer: Value = http.post(url).json(&body).send().await.unwrap().json().await.unwrap();
            answer["access_token"].as_str().unwrap_or_else(|| panic!("no token: {answer}")).to_owned()
        }
    };
    let (for_books, for_orders) = (token_for(json!(["books"])).await, token_for(json!(["orders"])).await);
    fn with<T>(token: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    }
    let channel =
        tonic::transport::Channel::from_shared(sys.books_base.clone()).unwrap().connect().await.unwrap();
    let mut books_client = books::book_service_client::BookServiceClient::new(channel);
    let read = books_client.get_book(with(&for_books, books::GetBookRequest { id: a.clone() })).await;
    assert_eq!(read.unwrap().into_inner().id, a, "books takes a token asked for books");
    let refused = books_client.get_book(with(&for_orders, books::GetBookRequest { id: a.clone() })).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated, "and refuses one asked for orders");

    let orders_url = format!("http://{}", sys.app.as_ref().unwrap().addr("orders").unwrap());
    let channel = tonic::transport::Channel::from_shared(orders_url).unwrap().connect().await.unwrap();
    let mut orders_client = orders::order_service_client::OrderServiceClient::new(channel);
    let refused = orders_client.list_orders(with(&for_books, orders::ListOrdersRequest::default())).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated, "orders refuses books' token");
    // Nor is it good at the gateway, which takes tokens for the public API only.
    let at_the_edge = sys.http.get(sys.url("/api/v1/orders")).bearer_auth(&for_books).send().await.unwrap();
    assert_eq!(at_the_edge.status(), StatusCode::UNAUTHORIZED);
    // A name that is not one is refused in the envelope.
    let body = json!({"grant_type": "client_credentials", "client_id": account["client_id"],
                      "client_secret": account["client_secret"], "resource": ["Books!"]});
    let bad = sys.http.post(sys.url("/api/v1/auth/token")).json(&body).send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}
