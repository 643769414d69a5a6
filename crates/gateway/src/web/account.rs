//! Register, sign in and sign out, as forms over the API's auth handlers. Signing in puts the
//! tokens in httpOnly cookies ([`super::session`]); signing out ends the session at the users
//! service too, so its refresh token is dead even if a copy of the cookie survives.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::CookieJar;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{PageError, alert, explain, form_can_say, page, refused, render};
use super::session::{self, Csrf, Secure, checked};
use crate::AppState;
use crate::auth::Auth;
use crate::error;
use crate::users::{Login, RefreshToken, Register};

/// Where to go after signing in: a path of this site only (`/checkout`), never another site's
/// address (`//evil.example`, `https://...`), which would make the form an open redirect.
fn local_path(next: &str) -> &str {
    let ok =
        next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') && !next.contains("://");
    if ok { next } else { "/" }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Next {
    pub next: String,
    pub registered: String,
}

/// `GET /signin`.
pub async fn sign_in_form(auth: Auth, csrf: Csrf, Query(query): Query<Next>) -> Response {
    let notice = (!query.registered.is_empty()).then_some(crate::users::REGISTERED);
    render(sign_in_page(&auth, &csrf, "", local_path(&query.next), notice, None))
}

fn sign_in_page(
    auth: &Auth,
    csrf: &Csrf,
    username: &str,
    next: &str,
    notice: Option<&str>,
    problem: Option<&str>,
) -> Markup {
    let main = html! {
        h1 { "Sign in" }
        @if let Some(notice) = notice { p.notice role="status" { (notice) } }
        @if let Some(problem) = problem { (alert(problem)) }
        form method="post" action="/signin" {
            input type="hidden" name="csrf" value=(csrf.0);
            input type="hidden" name="next" value=(next);
            label for="username" { "Username or email" }
            input #username name="username" value=(username) required autocomplete="username";
            label for="password" { "Password" }
            input #password type="password" name="password" required autocomplete="current-password";
            p { button type="submit" { "Sign in" } }
        }
        p { "New here? " a href="/register" { "Register" } "." }
    };
    page("Sign in", auth, csrf, main)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SignIn {
    pub csrf: String,
    pub next: String,
    pub username: String,
    pub password: String,
}

/// `POST /signin`: on success, the session's cookies and on to `next`; otherwise the form again
/// with why (a wrong password, or too many tries and how long to wait).
pub async fn sign_in(
    State(state): State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    csrf: Csrf,
    Secure(secure): Secure,
    jar: CookieJar,
    axum::Form(form): axum::Form<SignIn>,
) -> Result<Response, PageError> {
    checked(&form.csrf, &csrf)?;
    let body = Login { username: form.username.clone(), password: form.password };
    match crate::users::login(State(state), peer, headers, error::Json(body)).await {
        Ok(error::Json(tokens)) => {
            let fresh_csrf = session::cookie(session::CSRF, session::new_token(), None, secure);
            let jar = session::session_cookies(&tokens, secure)
                .into_iter()
                .fold(jar.add(fresh_csrf), CookieJar::add);
            Ok((jar, Redirect::to(local_path(&form.next))).into_response())
        }
        Err(error) if error.status.is_client_error() => {
            let mut problem = error.message.clone();
            if let Some(secs) = error.retry_after {
                problem.push_str(&format!(" Try again in {secs} seconds."));
            }
            // Shown signed out: whoever was signed in here, this form is a new sign-in.
            let page = sign_in_page(
                &Auth::default(),
                &csrf,
                &form.username,
                local_path(&form.next),
                None,
                Some(&problem),
            );
            Ok(refused(error.status, page))
        }
        Err(error) => Err(error.into()),
    }
}

/// `GET /register`.
pub async fn register_form(auth: Auth, csrf: Csrf) -> Response {
    render(register_page(&auth, &csrf, &RegisterForm::default(), None))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RegisterForm {
    pub csrf: String,
    pub username: String,
    pub email: String,
    pub full_name: String,
    pub password: String,
}

fn register_page(auth: &Auth, csrf: &Csrf, form: &RegisterForm, problem: Option<&str>) -> Markup {
    let main = html! {
        h1 { "Register" }
        @if let Some(problem) = problem { (alert(problem)) }
        form method="post" action="/register" {
            input type="hidden" name="csrf" value=(csrf.0);
            label for="username" { "Username" }
            p.muted #username-hint { "3 to 32 letters, digits, dots, dashes or underscores." }
            input #username name="username" value=(form.username) required autocomplete="username" aria-describedby="username-hint";
            label for="email" { "Email" }
            input #email type="email" name="email" value=(form.email) required autocomplete="email";
            label for="full_name" { "Full name" }
            input #full_name name="full_name" value=(form.full_name) required autocomplete="name";
            label for="password" { "Password" }
            p.muted #password-hint { "At least 10 characters, not easy to guess: a few unrelated words make a good one." }
            input #password type="password" name="password" required minlength="10" autocomplete="new-password" aria-describedby="password-hint";
            p { button type="submit" { "Register" } }
        }
    };
    page("Register", auth, csrf, main)
}

/// `POST /register`: on to sign in, or the form again with why.
pub async fn register(
    State(state): State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    auth: Auth,
    csrf: Csrf,
    axum::Form(form): axum::Form<RegisterForm>,
) -> Result<Response, PageError> {
    checked(&form.csrf, &csrf)?;
    let body = Register {
        username: form.username.clone(),
        email: form.email.clone(),
        password: form.password.clone(),
        full_name: form.full_name.clone(),
        address: String::new(),
    };
    match crate::users::register(State(state), peer, headers, error::Json(body)).await {
        Ok(_) => Ok(Redirect::to("/signin?registered=1").into_response()),
        Err(error) if form_can_say(&error) => {
            let problem = explain(&error);
            Ok(refused(error.status, register_page(&auth, &csrf, &form, Some(&problem))))
        }
        Err(error) => Err(error.into()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SignOut {
    pub csrf: String,
}

/// `POST /signout`: ends the session at the users service and clears its cookies.
pub async fn sign_out(
    State(state): State<AppState>,
    csrf: Csrf,
    Secure(secure): Secure,
    jar: CookieJar,
    refreshed: Option<axum::Extension<session::Refreshed>>,
    axum::Extension(refreshes): axum::Extension<session::Refreshes>,
    axum::Form(form): axum::Form<SignOut>,
) -> Result<Response, PageError> {
    checked(&form.csrf, &csrf)?;
    if let Some(refresh) = session::current_refresh(refreshed.as_ref().map(|r| &r.0), &jar) {
        refreshes.forget(&refresh).await;
        // An unknown or spent token is signed out already; the cookies go either way.
        let _ =
            crate::users::logout(State(state), error::Json(RefreshToken { refresh_token: refresh })).await;
    }
    let jar = session::cleared(secure).into_iter().fold(jar, CookieJar::add);
    Ok((jar, Redirect::to("/")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_signing_in_only_a_path_of_this_site_is_followed() {
        for ok in ["/", "/checkout", "/books/1?x=2"] {
            assert_eq!(local_path(ok), ok);
        }
        for bad in ["//evil.example", "https://evil.example/", "/\\evil.example", "", "evil", "/x?u=http://e"]
        {
            assert_eq!(local_path(bad), "/", "{bad}");
        }
    }
}
