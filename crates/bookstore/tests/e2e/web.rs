//! The shop in a browser, as a browser without JavaScript uses it: plain GETs and form POSTs,
//! cookies kept between them, redirects read one at a time. Reading the catalog, registering,
//! signing in, filling a cart, checking out once however often the form is sent, seeing the
//! order; and the guards: CSRF tokens, other sites' forms, httpOnly sessions, renewal from the
//! refresh cookie, signing out.

use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use serde_json::json;

use crate::{System, book_json, get_json, login, post_json};

backend_tests!(
    the_catalog_pages_list_search_and_show_books_without_javascript,
    text_from_the_catalog_is_shown_as_text_never_as_markup,
    a_customer_registers_signs_in_and_checks_out_once_however_often_the_form_is_sent,
    a_cart_of_many_books_lists_every_one_in_the_order_they_were_added,
    a_checkout_the_api_refuses_shows_the_form_again_with_why,
    forms_without_this_browsers_csrf_token_or_from_another_site_are_refused,
    the_session_lives_in_http_only_cookies_renews_itself_and_ends_on_sign_out,
    staff_add_and_edit_books_and_adjust_stock_with_forms_that_customers_cannot_use,
    an_admin_sets_roles_and_creates_rotates_and_revokes_service_accounts_with_forms,
    the_pages_socket_and_order_stream_are_signed_in_by_the_session_cookie_alone,
);

const PASSWORD: &str = "quiet harbour copper lantern";

/// A browser without JavaScript: keeps cookies, does not follow redirects by itself.
fn browser() -> reqwest::Client {
    browser_and_jar().0
}

/// A browser, and its cookie jar to read.
fn browser_and_jar() -> (reqwest::Client, std::sync::Arc<reqwest::cookie::Jar>) {
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let http = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    (http, jar)
}

/// Signs in as `name` through the sign-in form.
async fn sign_in(sys: &System, http: &reqwest::Client, name: &str, password: &str) {
    let (_, form) = page(http, &sys.url("/signin")).await;
    let csrf = field(&form, "csrf");
    let fields = [("csrf", csrf.as_str()), ("next", "/"), ("username", name), ("password", password)];
    let answer = submit(http, &sys.url("/signin"), &fields).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER, "signing in {name}");
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
    let answer = http.get(sys.url("/no/such/page")).header("accept", "text/html,*/*").send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    assert!(answer.text().await.unwrap().contains("there is no page here"), "a browser gets a page");
    let answer = http.get(sys.url("/no/such/page")).send().await.unwrap();
    assert_eq!(
        answer.json::<serde_json::Value>().await.unwrap()["code"],
        "NOT_FOUND",
        "a client, the envelope"
    );
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

async fn a_cart_of_many_books_lists_every_one_in_the_order_they_were_added(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    // More books than the page asks books for at once, added newest first (not the ids' order).
    let mut ids = Vec::new();
    for n in 0..11 {
        let title = format!("Cart Volume {n:02}");
        let book = post_json(&sys.http, &sys.url("/api/v1/books"), &sys.admin, &book_json(n, &title)).await;
        ids.push((book["id"].as_str().unwrap().to_owned(), title));
    }
    ids.reverse();
    let http = browser();
    let (_, shown) = page(&http, &sys.url(&format!("/books/{}", ids[0].0))).await;
    let csrf = field(&shown, "csrf");
    for (id, _) in &ids {
        let fields = [("csrf", csrf.as_str()), ("book_id", id), ("quantity", "1"), ("mode", "add")];
        assert_eq!(submit(&http, &sys.url("/cart"), &fields).await.status(), StatusCode::SEE_OTHER);
    }
    let (status, cart) = page(&http, &sys.url("/cart")).await;
    assert_eq!(status, StatusCode::OK);
    let positions: Vec<usize> = ids
        .iter()
        .map(|(_, title)| {
            cart.find(title.as_str()).unwrap_or_else(|| panic!("{title} missing from the cart"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in the order added: {positions:?}");
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
    let new_csrf = value("bookstore_csrf");
    assert_ne!(new_csrf, csrf, "signing in sets a new CSRF token");
    let (csrf, csrf_cookie) = (new_csrf.clone(), format!("bookstore_csrf={new_csrf}"));
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

async fn staff_add_and_edit_books_and_adjust_stock_with_forms_that_customers_cannot_use(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let staff = browser();
    sign_in(&sys, &staff, "admin", crate::ADMIN_PASSWORD).await;
    let (status, form) = page(&staff, &sys.url("/staff/books/new")).await;
    assert_eq!(status, StatusCode::OK);
    let csrf = field(&form, "csrf");
    let isbn = crate::isbn(41);
    let mut book = vec![
        ("csrf", csrf.clone()),
        ("isbn", isbn.clone()),
        ("title", "Forms and Their Keepers".into()),
        ("author", "Page Staff".into()),
        ("description", String::new()),
        ("price", "12.5".into()),
        ("currency", "EUR".into()),
        ("stock", "4".into()),
    ];
    let answer = staff.post(sys.url("/staff/books/new")).form(&book).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let shown = location(&answer);
    let id = shown.strip_prefix("/books/").expect("on to the book's page").to_owned();
    let api = get_json(&sys.http, &sys.url(&format!("/api/v1/books/{id}")), &sys.admin).await;
    assert_eq!((api["price"]["amount_minor"].as_i64(), api["stock"].as_i64()), (Some(1250), Some(4)));

    // A price that is not one comes back as the form, with what was typed.
    book[5].1 = "12,50".into();
    book[1].1 = crate::isbn(42);
    let answer = staff.post(sys.url("/staff/books/new")).form(&book).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let again = answer.text().await.unwrap();
    assert!(again.contains("price: an amount like 19.99") && again.contains("value=\"12,50\""), "{again}");

    // Edit, then adjust stock, from the book's page.
    let (_, edit) = page(&staff, &sys.url(&format!("/staff/books/{id}/edit"))).await;
    assert_eq!(field(&edit, "price"), "12.50");
    let fields = [
        ("csrf", csrf.as_str()),
        ("isbn", isbn.as_str()),
        ("title", "Forms and Their Keepers, Revised"),
        ("author", "Page Staff"),
        ("description", "Now with more forms."),
        ("price", "14"),
        ("currency", "EUR"),
    ];
    let answer = submit(&staff, &sys.url(&format!("/staff/books/{id}/edit")), &fields).await;
    assert_eq!(location(&answer), shown);
    let (_, page_now) = page(&staff, &sys.url(&shown)).await;
    assert!(
        page_now.contains("Forms and Their Keepers, Revised") && page_now.contains("EUR 14.00"),
        "{page_now}"
    );
    assert!(page_now.contains("Adjust stock"), "staff see the stock form");
    let answer =
        submit(&staff, &sys.url(&format!("/staff/books/{id}/stock")), &[("csrf", &csrf), ("delta", "3")])
            .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let api = get_json(&sys.http, &sys.url(&format!("/api/v1/books/{id}")), &sys.admin).await;
    assert_eq!(api["stock"], 7);

    // A customer sees no staff tools, and the service refuses their forms.
    let customer = browser();
    sign_up_and_in(&sys, &customer, "pagecustomer").await;
    let (_, as_customer) = page(&customer, &sys.url(&shown)).await;
    assert!(!as_customer.contains("Adjust stock"));
    let (_, any) = page(&customer, &sys.url("/signin")).await;
    let theirs = field(&any, "csrf");
    let answer = submit(
        &customer,
        &sys.url(&format!("/staff/books/{id}/stock")),
        &[("csrf", &theirs), ("delta", "5")],
    )
    .await;
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    let (status, _) = page(&customer, &sys.url("/staff/queue")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let api = get_json(&sys.http, &sys.url(&format!("/api/v1/books/{id}")), &sys.admin).await;
    assert_eq!(api["stock"], 7, "unchanged");
    // Staff's changes through the pages are in the audit trail; a customer's attempt is not.
    let trail =
        get_json(&sys.http, &sys.url("/api/v1/audit?action=POST%20/staff/books/%7Bid%7D/stock"), &sys.admin)
            .await;
    let entries = trail["items"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{trail}");
    assert_eq!(entries[0]["target"], format!("/staff/books/{id}/stock"));
    assert_eq!(entries[0]["status"], 303);
}

async fn an_admin_sets_roles_and_creates_rotates_and_revokes_service_accounts_with_forms(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let customer = browser();
    sign_up_and_in(&sys, &customer, "pagepromoted").await;
    let (status, _) = page(&customer, &sys.url("/admin/users")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a customer is refused the admin's pages");

    let admin = browser();
    sign_in(&sys, &admin, "admin", crate::ADMIN_PASSWORD).await;
    let (status, users) = page(&admin, &sys.url("/admin/users")).await;
    assert_eq!(status, StatusCode::OK);
    let csrf = field(&users, "csrf");
    // The form of this user: the last one to start before the label that names them.
    let label = users.find("Role of pagepromoted").expect("the user is listed");
    let action = users[..label].rsplit("action=\"").next().unwrap().split('"').next().unwrap();
    let answer = submit(&admin, &sys.url(action), &[("csrf", &csrf), ("role", "staff")]).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let id = action.trim_start_matches("/admin/users/").trim_end_matches("/role");
    let user = get_json(&sys.http, &sys.url(&format!("/api/v1/users/{id}")), &sys.admin).await;
    assert_eq!(user["roles"], json!(["staff"]), "{user}");

    // A service account: its secret is shown once, and works; rotating and revoking end it.
    let fields = [("csrf", csrf.as_str()), ("name", "page-partner"), ("scope", "books:read")];
    let answer = submit(&admin, &sys.url("/admin/service-accounts"), &fields).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let shown = answer.text().await.unwrap();
    let secret_of = |html: &str| {
        let at = html.find("id=\"client-secret\">").expect("the secret, shown once")
            + "id=\"client-secret\">".len();
        html[at..at + html[at..].find('<').unwrap()].to_owned()
    };
    let client_id_of = |html: &str| {
        let at = html.find("<dt>Client id</dt><dd><code>").unwrap() + "<dt>Client id</dt><dd><code>".len();
        html[at..at + html[at..].find('<').unwrap()].to_owned()
    };
    let (client_id, secret) = (client_id_of(&shown), secret_of(&shown));
    let token = |secret: String| {
        let (sys, client_id) = (&sys, client_id.clone());
        async move {
            let body =
                json!({"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret});
            sys.http.post(sys.url("/api/v1/auth/token")).json(&body).send().await.unwrap().status()
        }
    };
    assert_eq!(token(secret.clone()).await, StatusCode::OK);
    let (_, listed) = page(&admin, &sys.url("/admin/service-accounts")).await;
    assert!(listed.contains("page-partner") && !listed.contains(&secret), "listed, never with its secret");
    let answer =
        submit(&admin, &sys.url(&format!("/admin/service-accounts/{client_id}/rotate")), &[("csrf", &csrf)])
            .await;
    let rotated = secret_of(&answer.text().await.unwrap());
    assert_ne!(rotated, secret);
    assert_eq!(token(secret).await, StatusCode::UNAUTHORIZED, "the old secret stops working");
    assert_eq!(token(rotated.clone()).await, StatusCode::OK);
    let answer =
        submit(&admin, &sys.url(&format!("/admin/service-accounts/{client_id}/revoke")), &[("csrf", &csrf)])
            .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(token(rotated).await, StatusCode::UNAUTHORIZED, "revoked");
}

async fn the_pages_socket_and_order_stream_are_signed_in_by_the_session_cookie_alone(backend: Backend) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let Some(sys) = System::start(backend, false).await else { return };
    let (staff, jar) = browser_and_jar();
    sign_in(&sys, &staff, "admin", crate::ADMIN_PASSWORD).await;
    let cookies = reqwest::cookie::CookieStore::cookies(&*jar, &sys.base.parse().unwrap()).unwrap();
    let ws = sys.base.replacen("http://", "ws://", 1) + "/staff/queue/ws";
    let open = |cookie: Option<reqwest::header::HeaderValue>, origin: String| {
        let ws = ws.clone();
        async move {
            let mut request = ws.into_client_request().unwrap();
            request.headers_mut().insert("origin", origin.parse().unwrap());
            if let Some(cookie) = cookie {
                request.headers_mut().insert("cookie", cookie.to_str().unwrap().parse().unwrap());
            }
            tokio_tungstenite::connect_async(request).await
        }
    };
    // Signed in by the cookie: no token in the first message.
    let (mut socket, _) = open(Some(cookies.clone()), sys.base.clone()).await.expect("the socket opens");
    socket.send(Message::Text(json!({"type": "auth"}).to_string().into())).await.unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let snapshot: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    // Without the cookie, no token is no caller.
    let (mut anonymous, _) = open(None, sys.base.clone()).await.unwrap();
    anonymous.send(Message::Text(json!({"type": "auth"}).to_string().into())).await.unwrap();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(30), anonymous.next()).await.unwrap();
    assert!(
        matches!(closed, Some(Ok(Message::Close(Some(ref f)))) if u16::from(f.code) == 4401),
        "{closed:?}"
    );
    // Another site's page cannot use the visitor's cookie.
    let refused = open(Some(cookies.clone()), "http://evil.example".into()).await;
    assert!(refused.is_err(), "the upgrade is refused");

    // The orders stream, for the pages' script: signed in by the same cookie.
    let answer = staff.get(sys.url("/orders/events")).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["content-type"], "text/event-stream");
    let answer = browser().get(sys.url("/orders/events")).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "a script's stream, answered as the API answers");
}
