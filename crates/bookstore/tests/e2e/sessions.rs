//! The security suite, for accounts and sessions: each test replays an attack an outside tester
//! got through with, and shows it now fails. Revocation reaching tokens still held (sign-out,
//! a password change, demotion, deletion), password guessing through the profile, the login
//! throttle counting per account whichever identifier is typed, lockout as denial of service,
//! sign-ups that told who is a customer, and email changes without the password.

use std::time::Duration;

use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{ADMIN_PASSWORD, System, book_json, get_json, login, post_json, shipping_address, until};

backend_tests!(
    signing_out_ends_that_sessions_access_tokens_alone,
    a_password_change_ends_the_access_tokens_of_every_session,
    a_demoted_staff_member_loses_staff_powers_within_seconds,
    a_deleted_account_cannot_order_with_a_token_it_still_holds,
    a_wrong_current_password_counts_as_a_failed_login,
    failures_by_username_and_by_email_count_for_one_account,
    guesses_from_one_address_do_not_lock_the_owner_out_from_another,
    an_email_change_needs_the_current_password,
    sign_up_answers_alike_for_a_taken_email_and_is_limited_per_address,
);

const PASSWORD: &str = "velvet lantern orbit crumble";
/// Revocations reach every verifier within seconds; this is the test's patience, not a target.
const PATIENCE: Duration = Duration::from_secs(20);

async fn sign_up(sys: &System, name: &str) {
    let body = json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD,
                      "full_name": name});
    let answer = sys.http.post(sys.url("/api/v1/auth/register")).json(&body).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::ACCEPTED, "signing up {name}");
}

/// Signs in: (access token, refresh token).
async fn session(sys: &System, name: &str, password: &str) -> (String, String) {
    let answer = sys
        .http
        .post(sys.url("/api/v1/auth/login"))
        .json(&json!({"username": name, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK, "signing in {name}");
    let body: Value = answer.json().await.unwrap();
    (body["access_token"].as_str().unwrap().into(), body["refresh_token"].as_str().unwrap().into())
}

async fn status_of_me(sys: &System, token: &str) -> StatusCode {
    sys.http.get(sys.url("/api/v1/users/me")).bearer_auth(token).send().await.unwrap().status()
}

/// Waits until `token` is refused on `path` (GET) with 401.
async fn until_refused(sys: &System, token: &str, path: &str, what: &str) {
    until(what, PATIENCE, || async {
        let answer = sys.http.get(sys.url(path)).bearer_auth(token).send().await.unwrap();
        answer.status() == StatusCode::UNAUTHORIZED
    })
    .await;
}

async fn signing_out_ends_that_sessions_access_tokens_alone(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    sign_up(&sys, "olga").await;
    let (phone, phone_refresh) = session(&sys, "olga", PASSWORD).await;
    let (laptop, _) = session(&sys, "olga", PASSWORD).await;
    let out = sys
        .http
        .post(sys.url("/api/v1/auth/logout"))
        .json(&json!({"refresh_token": phone_refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    until_refused(&sys, &phone, "/api/v1/users/me", "the signed-out session's token to be refused").await;
    assert_eq!(status_of_me(&sys, &laptop).await, StatusCode::OK, "the other session goes on");
}

async fn a_password_change_ends_the_access_tokens_of_every_session(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    sign_up(&sys, "piet").await;
    let (first, _) = session(&sys, "piet", PASSWORD).await;
    let (second, _) = session(&sys, "piet", PASSWORD).await;
    let new_password = "copper meadow whistle dawn";
    let changed = sys
        .http
        .patch(sys.url("/api/v1/users/me"))
        .bearer_auth(&first)
        .json(&json!({"current_password": PASSWORD, "new_password": new_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    for token in [&first, &second] {
        until_refused(&sys, token, "/api/v1/users/me", "every session's token to be refused").await;
    }
    let (fresh, _) = session(&sys, "piet", new_password).await;
    assert_eq!(status_of_me(&sys, &fresh).await, StatusCode::OK, "a new sign-in works");
}

async fn a_demoted_staff_member_loses_staff_powers_within_seconds(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    sign_up(&sys, "quinn").await;
    let (token, _) = session(&sys, "quinn", PASSWORD).await;
    let me: Value = get_json(&sys.http, &sys.url("/api/v1/users/me"), &token).await;
    let id = me["id"].as_str().unwrap();
    let set_roles = |roles: Value| {
        sys.http
            .patch(sys.url(&format!("/api/v1/users/{id}")))
            .bearer_auth(&sys.admin)
            .json(&json!({"roles": roles}))
            .send()
    };
    assert_eq!(set_roles(json!(["staff"])).await.unwrap().status(), StatusCode::OK);
    let (staff, _) = session(&sys, "quinn", PASSWORD).await;
    let book: Value =
        post_json(&sys.http, &sys.url("/api/v1/books"), &staff, &book_json(1, "Held Back")).await;
    let book_id = book["id"].as_str().unwrap();

    assert_eq!(set_roles(json!(["customer"])).await.unwrap().status(), StatusCode::OK);
    until_refused(&sys, &staff, "/api/v1/fulfillment/queue", "the demoted staff token to be refused").await;
    let stock = sys
        .http
        .post(sys.url(&format!("/api/v1/books/{book_id}/stock")))
        .bearer_auth(&staff)
        .json(&json!({"delta": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(stock.status(), StatusCode::UNAUTHORIZED, "no stock change with the old token");
}

async fn a_deleted_account_cannot_order_with_a_token_it_still_holds(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let book: Value =
        post_json(&sys.http, &sys.url("/api/v1/books"), &sys.admin, &book_json(2, "Never Sold")).await;
    let book_id = book["id"].as_str().unwrap();
    sign_up(&sys, "rita").await;
    let (token, _) = session(&sys, "rita", PASSWORD).await;
    let deleted = sys.http.delete(sys.url("/api/v1/users/me")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    until_refused(&sys, &token, "/api/v1/orders", "the deleted account's token to be refused").await;
    let order = sys
        .http
        .post(sys.url("/api/v1/orders"))
        .bearer_auth(&token)
        .json(
            &json!({"lines": [{"book_id": book_id, "quantity": 1}], "shipping_address": shipping_address()}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(order.status(), StatusCode::UNAUTHORIZED);
    let after: Value = sys
        .http
        .get(sys.url(&format!("/api/v1/books/{book_id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(after["stock"], book["stock"], "no stock reserved");
}

async fn a_wrong_current_password_counts_as_a_failed_login(backend: Backend) {
    let Some(sys) = System::start_with(backend, false, |c| c.users.login_first_delay_ms = 60_000).await
    else {
        return;
    };
    sign_up(&sys, "sven").await;
    let (token, _) = session(&sys, "sven", PASSWORD).await;
    let change = |current: &str| {
        sys.http
            .patch(sys.url("/api/v1/users/me"))
            .bearer_auth(&token)
            .json(&json!({"current_password": current, "new_password": "copper meadow whistle dawn"}))
            .send()
    };
    for _ in 0..5 {
        assert_eq!(change("a wrong guess here").await.unwrap().status(), StatusCode::FORBIDDEN);
    }
    let throttled = change("a wrong guess here").await.unwrap();
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(throttled.headers().contains_key("retry-after"));
    assert_eq!(
        change(PASSWORD).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right one waits"
    );
    let login = sys
        .http
        .post(sys.url("/api/v1/auth/login"))
        .json(&json!({"username": "sven", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::TOO_MANY_REQUESTS, "one count with the login form");
}

async fn failures_by_username_and_by_email_count_for_one_account(backend: Backend) {
    let Some(sys) = System::start_with(backend, false, |c| c.users.login_first_delay_ms = 60_000).await
    else {
        return;
    };
    sign_up(&sys, "tove").await;
    let try_as = |identifier: &str, password: &str| {
        sys.http
            .post(sys.url("/api/v1/auth/login"))
            .json(&json!({"username": identifier, "password": password}))
            .send()
    };
    for identifier in ["tove", "tove@example.com", "TOVE", "Tove@Example.com", "tove"] {
        assert_eq!(
            try_as(identifier, "a wrong guess here").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    for identifier in ["tove", "tove@example.com"] {
        let answer = try_as(identifier, PASSWORD).await.unwrap();
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS, "waits as {identifier}");
    }
}

async fn guesses_from_one_address_do_not_lock_the_owner_out_from_another(backend: Backend) {
    // The test client stands in for a proxy, so each request names its client.
    let Some(sys) = System::start_with(backend, false, |c| {
        c.gateway.trusted_proxies = "127.0.0.1/32, ::1".into();
        c.users.login_first_delay_ms = 60_000;
    })
    .await
    else {
        return;
    };
    let from = |client: &'static str, password: &'static str| {
        sys.http
            .post(sys.url("/api/v1/auth/login"))
            .header("x-forwarded-for", client)
            .json(&json!({"username": "admin", "password": password}))
            .send()
    };
    for _ in 0..5 {
        assert_eq!(
            from("203.0.113.66", "a wrong guess here").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        from("203.0.113.66", ADMIN_PASSWORD).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the guesser waits"
    );
    assert_eq!(
        from("198.51.100.7", ADMIN_PASSWORD).await.unwrap().status(),
        StatusCode::OK,
        "the admin signs in"
    );
}

async fn an_email_change_needs_the_current_password(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    sign_up(&sys, "ulla").await;
    let (token, _) = session(&sys, "ulla", PASSWORD).await;
    let change =
        |body: Value| sys.http.patch(sys.url("/api/v1/users/me")).bearer_auth(&token).json(&body).send();
    let without = change(json!({"email": "thief@example.com"})).await.unwrap();
    assert_eq!(without.status(), StatusCode::FORBIDDEN);
    let wrong = change(json!({"email": "thief@example.com", "current_password": "a wrong guess here"}))
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let me: Value = get_json(&sys.http, &sys.url("/api/v1/users/me"), &token).await;
    assert_eq!(me["email"], "ulla@example.com", "unchanged");
    let right = change(json!({"email": "ulla@example.org", "current_password": PASSWORD})).await.unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    // Other fields need no password.
    assert_eq!(change(json!({"full_name": "Ulla U"})).await.unwrap().status(), StatusCode::OK);
}

async fn sign_up_answers_alike_for_a_taken_email_and_is_limited_per_address(backend: Backend) {
    let Some(sys) = System::start_with(backend, false, |c| c.users.registrations_per_address = 3).await
    else {
        return;
    };
    let attempt = |username: &str, email: &str| {
        let body = json!({"username": username, "email": email, "password": PASSWORD, "full_name": "V V"});
        sys.http.post(sys.url("/api/v1/auth/register")).json(&body).send()
    };
    let fresh = attempt("vera", "vera@example.com").await.unwrap();
    let (fresh_status, fresh_body) = (fresh.status(), fresh.json::<Value>().await.unwrap());
    let taken = attempt("vera2", "Vera@Example.com").await.unwrap();
    let (taken_status, taken_body) = (taken.status(), taken.json::<Value>().await.unwrap());
    assert_eq!(fresh_status, StatusCode::ACCEPTED);
    assert_eq!((taken_status, &taken_body), (fresh_status, &fresh_body), "nothing tells them apart");
    assert_eq!(
        sys.http
            .post(sys.url("/api/v1/auth/login"))
            .json(&json!({"username": "vera2", "password": PASSWORD}))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED,
        "no second account"
    );
    assert_eq!(attempt("wim", "wim@example.com").await.unwrap().status(), StatusCode::ACCEPTED);
    let flood = attempt("xena", "xena@example.com").await.unwrap();
    assert_eq!(flood.status(), StatusCode::TOO_MANY_REQUESTS, "the fourth sign-up from one address waits");
    assert!(flood.headers().contains_key("retry-after"));
    let _ = login(&sys.http, &sys.base, "vera", PASSWORD).await;
}
