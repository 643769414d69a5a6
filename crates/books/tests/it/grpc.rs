//! The books gRPC server on a real port, through a real tonic client.

use bookstore_api::books::v1 as pb;
use bookstore_api::books::v1::book_service_client::BookServiceClient;
use bookstore_platform::auth::Role;
use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;
use bookstore_platform::service::{Process, Tasks};
use bookstore_platform::testing::{TestDatabase, TestIssuer};
use tonic::Code;
use tonic::transport::Channel;

use crate::isbn;

struct Server {
    client: BookServiceClient<Channel>,
    issuer: TestIssuer,
    addr: std::net::SocketAddr,
    /// Where its `/healthz`, `/readyz` and `/metrics` are.
    admin_addr: std::net::SocketAddr,
    _process: Process,
    _db: TestDatabase,
}

async fn start(backend: Backend) -> Option<Server> {
    let test_db = TestDatabase::new(backend).await?;
    let db = test_db.connect(&bookstore_books::MIGRATIONS).await;
    let issuer = TestIssuer::new();
    let tasks = Tasks::new();
    let ctx = bookstore_platform::testing::context("books", Some(db), issuer.verifier(), tasks.clone());
    let settings =
        bookstore_books::Settings { cache_ttl_ms: 60_000, seed: Some(false), ..Default::default() };
    let built = bookstore_books::build(ctx, settings).await.unwrap();
    let mut process = Process::new(tasks);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = process.serve("books", listener, built).unwrap();
    let admin_addr =
        process.serve_admin(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    Some(Server {
        client: BookServiceClient::new(channel),
        issuer,
        addr,
        admin_addr,
        _process: process,
        _db: test_db,
    })
}

/// `message` with a token of `roles`.
fn as_role<T>(server: &Server, roles: &[Role], message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let token = server.issuer.token("someone", roles);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn create_request(n: u32, title: &str) -> pb::CreateBookRequest {
    pb::CreateBookRequest {
        isbn: isbn(n),
        title: title.into(),
        author: "Frank Herbert".into(),
        description: "Spice.".into(),
        price: Some(pb::Money { amount_minor: 999, currency: "USD".into() }),
        stock: 3,
    }
}

backend_tests!(
    create_then_get_over_grpc_returns_the_same_book,
    grpc_errors_carry_the_right_status_codes,
    health_and_metrics_are_served_beside_grpc,
    catalog_writes_need_a_staff_or_admin_token_checked_by_the_service_itself,
);

async fn create_then_get_over_grpc_returns_the_same_book(backend: Backend) {
    let Some(mut server) = start(backend).await else { return };
    let request = as_role(&server, &[Role::Staff], create_request(1, "Dune"));
    let created = server.client.create_book(request).await.unwrap().into_inner();
    assert!(!created.id.is_empty());
    let got =
        server.client.get_book(pb::GetBookRequest { id: created.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got, created);
    assert_eq!(got.price.unwrap().amount_minor, 999);
    assert!(got.create_time.unwrap().seconds > 1_600_000_000);

    let page = server
        .client
        .list_books(pb::ListBooksRequest { page: 0, limit: 0, author: Some("frank herbert".into()) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((page.total, page.page, page.limit, page.books.len()), (1, 1, 20, 1));
}

async fn grpc_errors_carry_the_right_status_codes(backend: Backend) {
    let Some(server) = start(backend).await else { return };
    let mut c = server.client.clone();
    let admin = |message| as_role(&server, &[Role::Admin], message);

    let mut bad = create_request(1, "Dune");
    bad.isbn = "9780441172718".into();
    let err = c.create_book(admin(bad)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "isbn: check digit does not match");

    let mut no_price = create_request(1, "Dune");
    no_price.price = None;
    assert_eq!(c.create_book(admin(no_price)).await.unwrap_err().code(), Code::InvalidArgument);

    let book = c.create_book(admin(create_request(1, "Dune"))).await.unwrap().into_inner();
    let dup = c.create_book(admin(create_request(1, "Dune again"))).await.unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);

    let missing = c.get_book(pb::GetBookRequest { id: "nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let short = c
        .adjust_stock(as_role(
            &server,
            &[Role::Staff],
            pb::AdjustStockRequest { id: book.id.clone(), delta: -4 },
        ))
        .await
        .unwrap_err();
    assert_eq!(short.code(), Code::FailedPrecondition);
    assert!(short.message().contains("3 available"), "{}", short.message());

    let bad_page =
        c.list_books(pb::ListBooksRequest { page: 1, limit: 1000, author: None }).await.unwrap_err();
    assert_eq!(bad_page.code(), Code::InvalidArgument);

    let empty_query =
        c.search_books(pb::SearchBooksRequest { query: "  ".into(), page: 1, limit: 10 }).await.unwrap_err();
    assert_eq!(empty_query.code(), Code::InvalidArgument);
}

async fn health_and_metrics_are_served_beside_grpc(backend: Backend) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let Some(mut server) = start(backend).await else { return };
    let channel = Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest { service: "bookstore.books.v1.BookService".into() })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);

    server.client.get_book(pb::GetBookRequest { id: "nope".into() }).await.unwrap_err();

    let base = format!("http://{}", server.admin_addr);
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("grpc_server_requests_total")
            && l.contains(r#"rpc="/bookstore.books.v1.BookService/GetBook""#)
            && l.contains(r#"code="5""#)),
        "GetBook NOT_FOUND is counted:\n{metrics}"
    );
    assert!(metrics.contains("db_pool_connections{service=\"books\"}"), "pool gauges:\n{metrics}");
}

async fn catalog_writes_need_a_staff_or_admin_token_checked_by_the_service_itself(backend: Backend) {
    let Some(server) = start(backend).await else { return };
    let mut c = server.client.clone();

    let anonymous = c.create_book(create_request(1, "Dune")).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    let customer =
        c.create_book(as_role(&server, &[Role::Customer], create_request(1, "Dune"))).await.unwrap_err();
    assert_eq!(customer.code(), Code::PermissionDenied);

    let service =
        c.create_book(as_role(&server, &[Role::Service], create_request(1, "Dune"))).await.unwrap_err();
    assert_eq!(service.code(), Code::PermissionDenied);

    // A token from an issuer the service does not trust is refused before any handler runs.
    let stranger = TestIssuer::new();
    let mut forged = tonic::Request::new(create_request(1, "Dune"));
    let token = stranger.token("mallory", &[Role::Admin]);
    forged.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert_eq!(c.create_book(forged).await.unwrap_err().code(), Code::Unauthenticated);

    let book = c
        .create_book(as_role(&server, &[Role::Staff], create_request(1, "Dune")))
        .await
        .unwrap()
        .into_inner();
    for denied in [
        c.delete_book(as_role(&server, &[Role::Customer], pb::DeleteBookRequest { id: book.id.clone() }))
            .await,
        c.delete_book(pb::DeleteBookRequest { id: book.id.clone() }).await,
    ] {
        assert!(denied.is_err());
    }
    // Reads stay open to anyone.
    assert_eq!(
        c.get_book(pb::GetBookRequest { id: book.id.clone() }).await.unwrap().into_inner().title,
        "Dune"
    );
    c.delete_book(as_role(&server, &[Role::Admin], pb::DeleteBookRequest { id: book.id })).await.unwrap();
}
