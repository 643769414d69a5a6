//! The admin's pages: accounts and their roles, and service accounts (create with scopes, see
//! the secret once, rotate, revoke). The users service decides who may: anyone else gets the
//! API's 403 as a page.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{PageError, page, render, when};
use super::session::{Csrf, checked};
use crate::AppState;
use crate::auth::Auth;
use crate::error;
use crate::users::{
    NewServiceAccount, PageParams, Role, ServiceAccount, ServiceAccountList, UpdateUser, UserPage,
};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Paging {
    pub page: String,
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Customer => "customer",
        Role::Staff => "staff",
        Role::Admin => "admin",
        Role::Service => "service",
    }
}

/// `GET /admin/users`: every account, 50 a page, each with a form to set its role.
pub async fn users(
    State(state): State<AppState>,
    auth: Auth,
    csrf: Csrf,
    Query(paging): Query<Paging>,
) -> Result<Response, PageError> {
    let page_number = match paging.page.trim() {
        "" => 1,
        n => n.parse().map_err(|_| error::ApiError::invalid("page: must be a number"))?,
    };
    let params = PageParams { page: Some(page_number), limit: Some(50) };
    let error::Json(users): error::Json<UserPage> =
        crate::users::list_users(State(state), auth.clone(), error::Query(params)).await?;
    let main = html! {
        h1 { "Users" }
        p { a href="/admin/service-accounts" { "Service accounts" } }
        table {
            thead { tr { th scope="col" { "Username" } th scope="col" { "Name" } th scope="col" { "Since" } th scope="col" { "Role" } } }
            tbody {
                @for user in &users.items {
                    @let current = [Role::Admin, Role::Staff].into_iter().find(|r| user.roles.contains(r)).unwrap_or(Role::Customer);
                    tr {
                        td { (user.username) }
                        td { (user.full_name) }
                        td { (when(&user.created_at)) }
                        td {
                            form.role method="post" action={ "/admin/users/" (user.id) "/role" } {
                                input type="hidden" name="csrf" value=(csrf.0);
                                label for={ "role-" (user.id) } { "Role of " (user.username) }
                                select id={ "role-" (user.id) } name="role" {
                                    @for role in [Role::Customer, Role::Staff, Role::Admin] {
                                        option value=(role_name(role)) selected[role == current] { (role_name(role)) }
                                    }
                                }
                                " " button type="submit" { "Set" }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if users.page > 1 { a href={ "/admin/users?page=" (users.page - 1) } rel="prev" { "← Previous" } }
            @if i64::from(users.page) * i64::from(users.limit) < users.total {
                a href={ "/admin/users?page=" (users.page + 1) } rel="next" { "Next →" }
            }
        }
    };
    Ok(render(page("Users", &auth, &csrf, main)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RoleForm {
    pub csrf: String,
    pub role: String,
}

/// `POST /admin/users/{id}/role`: gives the account that one role.
pub async fn set_role(
    State(state): State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    auth: Auth,
    csrf: Csrf,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<RoleForm>,
) -> Result<Response, PageError> {
    checked(&form.csrf, &csrf)?;
    let body = UpdateUser {
        email: None,
        full_name: None,
        address: None,
        new_password: None,
        current_password: None,
        roles: Some(vec![form.role]),
    };
    crate::users::update_user(State(state), peer, headers, auth, error::Path(id), error::Json(body)).await?;
    Ok(Redirect::to("/admin/users").into_response())
}

/// `GET /admin/service-accounts`: every service account, with forms to create, rotate, revoke.
pub async fn service_accounts(
    State(state): State<AppState>,
    auth: Auth,
    csrf: Csrf,
) -> Result<Response, PageError> {
    let error::Json(list) = crate::users::list_service_accounts(State(state), auth.clone()).await?;
    Ok(render(service_accounts_page(&auth, &csrf, &list, None)))
}

fn service_accounts_page(
    auth: &Auth,
    csrf: &Csrf,
    list: &ServiceAccountList,
    secret: Option<&ServiceAccount>,
) -> Markup {
    let main = html! {
        h1 { "Service accounts" }
        @if let Some(account) = secret {
            section.notice role="status" aria-labelledby="secret" {
                h2 #secret { "The secret of " (account.name) }
                p { "Copy it now: it is shown this once, and never again." }
                dl {
                    dt { "Client id" } dd { code { (account.client_id) } }
                    dt { "Client secret" } dd { code #client-secret { (account.client_secret) } }
                }
            }
        }
        table {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Scopes" } th scope="col" { "Since" } th scope="col" { "Actions" } } }
            tbody {
                @for account in &list.items {
                    tr {
                        td { (account.name) br; code.muted { (account.client_id) } }
                        td { (account.scopes.join(", ")) }
                        td { (when(&account.created_at)) }
                        td {
                            @if let Some(revoked) = &account.revoked_at {
                                "Revoked " (when(revoked))
                            } @else {
                                form.inline method="post" action={ "/admin/service-accounts/" (account.client_id) "/rotate" } {
                                    input type="hidden" name="csrf" value=(csrf.0);
                                    button type="submit" aria-label={ "Rotate the secret of " (account.name) } { "Rotate secret" }
                                }
                                " · "
                                form.inline method="post" action={ "/admin/service-accounts/" (account.client_id) "/revoke" } {
                                    input type="hidden" name="csrf" value=(csrf.0);
                                    button type="submit" aria-label={ "Revoke " (account.name) } { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "New service account" }
        form method="post" action="/admin/service-accounts" {
            input type="hidden" name="csrf" value=(csrf.0);
            label for="name" { "Name" }
            input #name name="name" required maxlength="200";
            fieldset {
                legend { "Scopes" }
                @for (scope, what) in bookstore_platform::auth::SCOPES {
                    label.check { input type="checkbox" name="scope" value=(scope); " " code { (scope) } " — " (what) }
                }
            }
            p { button type="submit" { "Create" } }
        }
    };
    page("Service accounts", auth, csrf, main)
}

/// `POST /admin/service-accounts`: creates one and shows its secret, once.
pub async fn create_service_account(
    State(state): State<AppState>,
    auth: Auth,
    csrf: Csrf,
    axum::Form(form): axum::Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let value = |key: &str| form.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or_default();
    checked(&value("csrf"), &csrf)?;
    let scopes = form.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect();
    let body = NewServiceAccount { name: value("name"), scopes };
    let created =
        crate::users::create_service_account(State(state.clone()), auth.clone(), error::Json(body)).await?;
    let (account, _): (ServiceAccount, bool) = super::answer_of(Ok(created.into_response())).await?;
    shown_once(state, auth, csrf, account).await
}

/// The list, with `account`'s secret on top, kept out of every cache.
async fn shown_once(
    state: AppState,
    auth: Auth,
    csrf: Csrf,
    account: ServiceAccount,
) -> Result<Response, PageError> {
    let error::Json(list) = crate::users::list_service_accounts(State(state), auth.clone()).await?;
    Ok(render(service_accounts_page(&auth, &csrf, &list, Some(&account))))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrfOnly {
    pub csrf: String,
}

/// `POST /admin/service-accounts/{client_id}/rotate`: a new secret, shown once.
pub async fn rotate(
    State(state): State<AppState>,
    auth: Auth,
    csrf: Csrf,
    Path(client_id): Path<String>,
    axum::Form(form): axum::Form<CsrfOnly>,
) -> Result<Response, PageError> {
    checked(&form.csrf, &csrf)?;
    let error::Json(account) = crate::users::rotate_service_account_secret(
        State(state.clone()),
        auth.clone(),
        error::Path(client_id),
    )
    .await?;
    shown_once(state, auth, csrf, account).await
}

/// `POST /admin/service-accounts/{client_id}/revoke`.
pub async fn revoke(
    State(state): State<AppState>,
    auth: Auth,
    csrf: Csrf,
    Path(client_id): Path<String>,
    axum::Form(form): axum::Form<CsrfOnly>,
) -> Result<Response, PageError> {
    checked(&form.csrf, &csrf)?;
    crate::users::revoke_service_account(State(state), auth, error::Path(client_id)).await?;
    Ok(Redirect::to("/admin/service-accounts").into_response())
}
