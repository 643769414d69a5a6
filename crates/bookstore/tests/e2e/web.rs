//! The shop in a browser, as a browser without JavaScript uses it: plain GETs and form POSTs,
//! cookies kept between them, redirects read one at a time. Reading the catalog, registering,
//! signing in, filling a cart, checking out once however often the form is sent, seeing the
//! order; and the guards: CSRF tokens, other sites' forms, httpOnly sessions, renewal from the
//! refresh cookie, signing out.

use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};

use crate::{System, book_json, get_json, login, post_json};

backend_tests!(
    the_catalog_pages_list_search_and_show_books_without_javascript,
    text_from_the_catalog_is_shown_as_text_never_as_markup,
    a_customer_registers_signs_in_and_checks_out_once_however_often_the_form_is_sent,
    a_checkout_the_api_refuses_shows_the_form_again_with_why,
    forms_without_this_browsers_csrf_token_or_from_another_site_are_refused,
    the_session_lives_in_http_only_cookies_renews_itself_and_ends_on_sign_out,
);

const PASSWORD: &str = "quiet harbour copper lantern";

/// A browser without JavaScript: keeps cookies, does not follow redirects by itself.
fn browser() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// GETs a page: its status and HTML.
async fn page(http: &reqwest::Client, url: &str) -> (StatusCode, String) {
    let answer = http.get(url).send().await.unwrap();
    (answer.status(), answer.text().await.unwrap())
}

/// The value of the form field `name` in `html` (the first one).
fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no field {name} in {html}")) + marker.len();
    html[start..start + html[start..].find('"').unwrap()].to_owned()
}

/// POSTs a form: the answer (not followed).
async fn submit(http: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
    http.post(url).form(form).send().await.unwrap()
}

fn location(answer: &reqwest::Response) -> String {
    answer.headers().get(LOCATION).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

/// Registers `name` and signs in through the pages, in `http`'s cookie jar.
async fn sign_up_and_in(sys: &System, http: &reqwest::Client, name: &str) {
    let (_, form) = page(http, &sys.url("/register")).await;
    let (email, csrf) = (format!("{name}@example.com"), field(&form, "csrf"));
    let fields = [
        ("csrf", csrf.as_str()),
        ("username", name),
        ("email", &email),
        ("full_name", "Page Tester"),
        ("password", PASSWORD),
    ];
    let answer = submit(http, &sys.url("/register"), &fields).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{}", answer.text().await.unwrap());
    assert_eq!(location(&answer), "/signin?registered=1");
    let (_, form) = page(http, &sys.url("/signin?registered=1")).await;
    assert!(form.contains("sign in with your username"), "{form}");
    let csrf = field(&form, "csrf");
    let fields = [("csrf", csrf.as_str()), ("next", "/orders"), ("username", name), ("password", PASSWORD)];
    let answer = submit(http, &sys.url("/signin"), &fields).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&answer), "/orders");
}

async fn the_catalog_pages_list_search_and_show_books_without_javascript(backend: Backend) {
    let Some(sys) = System::start(backend, true).await else { return };
    let http = browser();
    let answer = http.get(sys.url("/")).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let csp = answer.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(answer.headers()["cache-control"], "no-store");
    // Our forms must carry their origin (under `no-referrer` a browser sends `Origin: null`).
    assert_eq!(answer.headers()["referrer-policy"], "same-origin");
    assert!(answer.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let home = answer.text().await.unwrap();
    assert!(!home.contains("<script"), "no script on a reading page");
    let catalog = get_json(&sys.http, &sys.url("/api/v1/books?limit=100"), &sys.admin).await;
    let total = catalog["total"].as_i64().unwrap();
    assert!(total > 12, "the starter catalog fills more than one page");
    assert!(home.contains(&format!("{total} books · page 1 of {}", (total + 11) / 12)), "{home}");
    assert!(home.contains("href=\"/?page=2\""), "a link to the next page");
    let (status, second) = page(&http, &sys.url("/?page=2")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(second.contains("rel=\"prev\""));

    // A search finds a book by a word of its title, and its page offers the cart.
    let book = &catalog["items"][0];
    let (title, id) = (book["title"].as_str().unwrap(), book["id"].as_str().unwrap());
    let word = title.split_whitespace().max_by_key(|w| w.len()).unwrap();
    let (status, found) = page(&http, &sys.url(&format!("/?q={word}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(found.contains(&format!("href=\"/books/{id}\"")), "searching {word:?} finds {title:?}");
    let (status, shown) = page(&http, &sys.url(&format!("/books/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(shown.contains("Add to cart") && shown.contains("<label for=\"quantity\">"), "{shown}");
    let (status, nothing) = page(&http, &sys.url("/?q=zzyzxnotaword")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(nothing.contains("No books match"));

    // What the API refuses, a page shows as a page, with the API's status.
    let (status, missing) = page(&http, &sys.url("/books/no-such-book")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(missing.contains("<h1>Not found</h1>"), "{missing}");
    let (status, bad) = page(&http, &sys.url("/?page=many")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad.contains("page: must be a number"), "{bad}");
    // The stylesheet is the binary's own, cacheable for good.
    let sheet = home.split("href=\"/static/").nth(1).unwrap().split('"').next().unwrap();
    let answer = http.get(sys.url(&format!("/static/{sheet}"))).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(answer.headers()["cache-control"].to_str().unwrap().contains("immutable"));
}

async fn text_from_the_catalog_is_shown_as_text_never_as_markup(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let body = book_json(7, "<script>alert('owned')</script> & \"friends\"");
    let book = post_json(&sys.http, &sys.url("/api/v1/books"), &sys.admin, &body).await;
    let id = book["id"].as_str().unwrap();
    for path in [format!("/books/{id}"), "/".to_owned()] {
        let (status, html) = page(&browser(), &sys.url(&path)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!html.contains("<script>alert"), "{path}: {html}");
        assert!(
            html.contains("&lt;script&gt;alert('owned')&lt;/script&gt; &amp; &quot;friends&quot;"),
            "{path}"
        );
    }
}

async fn a_customer_registers_signs_in_and_checks_out_once_however_often_the_form_is_sent(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let book =
        post_json(&sys.http, &sys.url("/api/v1/books"), &sys.admin, &book_json(1, "Paper Trails")).await;
    let id = book["id"].as_str().unwrap();
    let http = browser();

    // Checkout needs an account: a visitor is sent to sign in, and back.
    let answer = http.get(sys.url("/checkout")).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&answer), "/signin?next=%2Fcheckout");
    sign_up_and_in(&sys, &http, "pagebuyer").await;

    let (_, shown) = page(&http, &sys.url(&format!("/books/{id}"))).await;
    let csrf = field(&shown, "csrf");
    for _ in 0..2 {
        let fields = [("csrf", csrf.as_str()), ("book_id", id), ("quantity", "1"), ("mode", "add")];
        let answer = submit(&http, &sys.url("/cart"), &fields).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&answer), "/cart");
    }
    let (_, cart) = page(&http, &sys.url("/cart")).await;
    assert!(cart.contains("Paper Trails") && cart.contains("value=\"2\""), "two copies: {cart}");
    assert!(cart.contains("USD 39.98"), "{cart}");

    let (status, form) = page(&http, &sys.url("/checkout")).await;
    assert_eq!(status, StatusCode::OK);
    let (key, lines) = (field(&form, "key"), field(&form, "cart"));
    let fields = [
        ("csrf", csrf.as_str()),
        ("key", key.as_str()),
        ("cart", lines.as_str()),
        ("name", "Page Tester"),
        ("line1", "1 Form Street"),
        ("city", "Testville"),
        ("postal_code", "12345"),
        ("country", "DE"),
    ];
    // A double click: the same form, twice.
    let first = submit(&http, &sys.url("/checkout"), &fields).await;
    let second = submit(&http, &sys.url("/checkout"), &fields).await;
    assert_eq!(first.status(), StatusCode::SEE_OTHER, "{}", first.text().await.unwrap());
    assert_eq!(second.status(), StatusCode::SEE_OTHER);
    let order_page = location(&first);
    assert!(order_page.starts_with("/orders/"), "{order_page}");
    assert_eq!(location(&second), order_page, "the same order, once");

    let (status, order) = page(&http, &sys.url(&order_page)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        order.contains("PLACED") && order.contains("Paper Trails") && order.contains("1 Form Street"),
        "{order}"
    );
    let (_, mine) = page(&http, &sys.url("/orders")).await;
    assert_eq!(mine.matches("href=\"/orders/").count(), 1, "one order: {mine}");
    let (_, emptied) = page(&http, &sys.url("/cart")).await;
    assert!(emptied.contains("Your cart is empty"), "{emptied}");
    let token = login(&sys.http, &sys.base, "pagebuyer", PASSWORD).await;
    let orders = get_json(&sys.http, &sys.url("/api/v1/orders"), &token).await;
    assert_eq!(orders["total"], 1, "{orders}");
    assert_eq!(orders["items"][0]["lines"][0]["quantity"], 2);
}

async fn a_checkout_the_api_refuses_shows_the_form_again_with_why(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    // Five on the shelf; the customer wants six.
    let book = post_json(&sys.http, &sys.url("/api/v1/books"), &sys.admin, &book_json(2, "Scarce")).await;
    let id = book["id"].as_str().unwrap();
    let http = browser();
    sign_up_and_in(&sys, &http, "pagewanter").await;
    let (_, shown) = page(&http, &sys.url(&format!("/books/{id}"))).await;
    let csrf = field(&shown, "csrf");
    let fields = [("csrf", csrf.as_str()), ("book_id", id), ("quantity", "6"), ("mode", "add")];
    submit(&http, &sys.url("/cart"), &fields).await;
    let (_, form) = page(&http, &sys.url("/checkout")).await;
    let (key, lines) = (field(&form, "key"), field(&form, "cart"));
    let mut fields = vec![("csrf", csrf.as_str()), ("key", key.as_str()), ("cart", lines.as_str())];
    fields.extend([("name", "Page Tester"), ("line1", "2 Form Street"), ("country", "DE")]);
    let answer = submit(&http, &sys.url("/checkout"), &fields).await;
    assert_eq!(answer.status(), StatusCode::CONFLICT);
    let again = answer.text().await.unwrap();
    assert!(again.contains("role=\"alert\"") && again.contains("“Scarce”: 6 wanted, 5 left"), "{again}");
    assert!(again.contains("value=\"2 Form Street\""), "what was typed stays: {again}");
    // A bad address is named field by field.
    let fields =
        [("csrf", csrf.as_str()), ("key", "k2"), ("cart", lines.as_str()), ("name", ""), ("line1", "x")];
    let answer = submit(&http, &sys.url("/checkout"), &fields).await;
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    assert!(answer.text().await.unwrap().contains("shipping_address.name"));
}

async fn forms_without_this_browsers_csrf_token_or_from_another_site_are_refused(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let book = post_json(&sys.http, &sys.url("/api/v1/books"), &sys.admin, &book_json(3, "Guarded")).await;
    let id = book["id"].as_str().unwrap();
    let http = browser();
    let (_, shown) = page(&http, &sys.url(&format!("/books/{id}"))).await;
    let csrf = field(&shown, "csrf");
    let add =
        |token: &'static str| vec![("csrf", token), ("book_id", "x"), ("quantity", "1"), ("mode", "add")];

    let answer = submit(&http, &sys.url("/cart"), &add("")).await;
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(answer.text().await.unwrap().contains("this form has expired"));
    let other = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert_eq!(submit(&http, &sys.url("/cart"), &add(other)).await.status(), StatusCode::FORBIDDEN);
    // Another browser's token is not this one's.
    let (_, elsewhere) = page(&browser(), &sys.url("/signin")).await;
    let theirs = field(&elsewhere, "csrf");
    let fields = [("csrf", theirs.as_str()), ("book_id", id), ("quantity", "1"), ("mode", "add")];
    assert_eq!(submit(&http, &sys.url("/cart"), &fields).await.status(), StatusCode::FORBIDDEN);
    // The right token, from another site's page.
    let fields = [("csrf", csrf.as_str()), ("book_id", id), ("quantity", "1"), ("mode", "add")];
    let answer = http
        .post(sys.url("/cart"))
        .header("origin", "http://evil.example")
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(answer.text().await.unwrap().contains("another site"));
    let (_, cart) = page(&http, &sys.url("/cart")).await;
    assert!(cart.contains("Your cart is empty"), "nothing refused got in: {cart}");
    // The right token from our own page.
    let answer = http.post(sys.url("/cart")).header("origin", &sys.base).form(&fields).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
}

async fn the_session_lives_in_http_only_cookies_renews_itself_and_ends_on_sign_out(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let (_, form) = page(&browser(), &sys.url("/signin")).await;
    // Sign in with a client that keeps no cookies: this test reads and sends them itself.
    let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let csrf = field(&form, "csrf");
    let csrf_cookie = format!("bookstore_csrf={csrf}");
    let fields =
        [("csrf", csrf.as_str()), ("next", "/"), ("username", "admin"), ("password", crate::ADMIN_PASSWORD)];
    let answer =
        plain.post(sys.url("/signin")).header("cookie", &csrf_cookie).form(&fields).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let cookies: Vec<String> =
        answer.headers().get_all(SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    let value = |name: &str| {
        let set = cookies
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{cookies:?}"));
        for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(set.contains(attribute), "{set}");
        }
        assert!(!set.contains("Secure"), "plain HTTP: a Secure cookie would never come back");
        set.split(';').next().unwrap().split_once('=').unwrap().1.to_owned()
    };
    let (access, refresh) = (value("bookstore_access"), value("bookstore_refresh"));
    let signed_in = format!("{csrf_cookie}; bookstore_access={access}; bookstore_refresh={refresh}");
    let answer = plain.get(sys.url("/orders")).header("cookie", &signed_in).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let html = answer.text().await.unwrap();
    assert!(html.contains("<h1>My orders</h1>"));
    assert!(!html.contains(&access) && !html.contains(&refresh), "no token in the page");

    // An access cookie that no longer verifies is renewed from the refresh cookie.
    let stale = format!("{csrf_cookie}; bookstore_access=not.a.token; bookstore_refresh={refresh}");
    let answer = plain.get(sys.url("/orders")).header("cookie", &stale).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK, "signed in again");
    let renewed: Vec<String> =
        answer.headers().get_all(SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    let new_refresh = renewed
        .iter()
        .find_map(|c| c.strip_prefix("bookstore_refresh="))
        .map(|c| c.split(';').next().unwrap().to_owned())
        .expect("a new refresh cookie");
    assert_ne!(new_refresh, refresh, "refresh tokens are single use");
    assert!(
        renewed.iter().any(|c| c.starts_with("bookstore_access=") && !c.starts_with("bookstore_access=;"))
    );

    // Signing out ends the session at the users service: the cookie's refresh token is dead.
    let current = format!("{csrf_cookie}; bookstore_refresh={new_refresh}");
    let answer = plain
        .post(sys.url("/signout"))
        .header("cookie", &current)
        .form(&[("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let cleared: Vec<String> =
        answer.headers().get_all(SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert!(
        cleared.iter().any(|c| c.starts_with("bookstore_refresh=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    let answer = plain.get(sys.url("/orders")).header("cookie", &current).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER, "signed out");
    assert_eq!(location(&answer), "/signin");
}
