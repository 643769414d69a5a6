//! `/api/v1/auth/*`, `/api/v1/users/*` and `/.well-known/jwks.json`: accounts and tokens over
//! REST, translated to the users service's gRPC.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use bookstore_api::users::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Auth;
use crate::books::rfc3339;
use crate::error::{ApiError, ErrorBody, ErrorCode, Json, Path, Query};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: String,
    #[schema(example = "ada")]
    pub username: String,
    #[schema(example = "ada@example.com")]
    pub email: String,
    #[schema(example = "Ada Lovelace")]
    pub full_name: String,
    pub address: String,
    pub roles: Vec<Role>,
    pub created_at: String,
    pub updated_at: String,
}

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Browses, buys, sees its own orders.
    Customer,
    /// Also manages the catalog and moves orders along.
    Staff,
    /// Also manages accounts.
    Admin,
    /// Another service, calling with its own credentials.
    Service,
}

/// The roles as the users service names them; one the gateway does not know is left out and
/// logged (it grants nothing here).
fn roles(names: Vec<String>) -> Vec<Role> {
    names
        .into_iter()
        .filter_map(|name| match serde_json::from_value(serde_json::Value::String(name.clone())) {
            Ok(role) => Some(role),
            Err(_) => {
                tracing::error!(role = name, "the users service sent a role the gateway does not know");
                None
            }
        })
        .collect()
}

impl From<pb::User> for User {
    fn from(u: pb::User) -> Self {
        Self {
            id: u.id,
            username: u.username,
            email: u.email,
            full_name: u.full_name,
            address: u.address,
            roles: roles(u.roles),
            created_at: rfc3339(u.create_time),
            updated_at: rfc3339(u.update_time),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserPage {
    pub items: Vec<User>,
    pub total: i64,
    pub page: i32,
    pub limit: i32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// 3–32 of a–z, 0–9, `.`, `_`, `-` (any case; kept in lower case), starting with a letter
    /// or digit.
    #[schema(example = "ada", pattern = r"^\s*[A-Za-z0-9][A-Za-z0-9._-]{2,31}\s*$")]
    pub username: String,
    /// An address like `name@example.com`, at most 254 characters.
    #[schema(
        example = "ada@example.com",
        max_length = 254,
        pattern = r"^\s*[^@\s]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+\s*$"
    )]
    pub email: String,
    /// 10 to 128 characters and not easy to guess (common passwords, keyboard walks and ones
    /// built from the username or email are refused). A few unrelated words make a good one.
    #[schema(example = "analytical engine punch cards", min_length = 10, max_length = 128)]
    pub password: String,
    /// 1 to 200 characters.
    #[schema(example = "Ada Lovelace")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^\s*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F]([^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F])?\s*$"
    )]
    pub full_name: String,
    /// Up to 500 characters.
    #[serde(default)]
    #[schema(max_length = 500, pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$")]
    pub address: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The username, or the email the account was registered with.
    #[schema(example = "ada")]
    pub username: String,
    #[schema(example = "analytical engine punch cards")]
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshToken {
    pub refresh_token: String,
}

/// The one grant `POST /api/v1/auth/token` takes.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the body names it as text
#[schema(rename_all = "snake_case")]
pub enum GrantType {
    ClientCredentials,
}

/// The client-credentials grant of a service account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentials {
    /// Must be `client_credentials`.
    #[schema(example = "client_credentials", value_type = GrantType)]
    pub grant_type: String,
    /// Absent when given as HTTP Basic.
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub client_secret: String,
    /// The services the token is for (RFC 8707 resource indicators, as service names, e.g.
    /// `["books"]`), to call them directly: such a token is refused anywhere else, this
    /// gateway included. Without it, the token is for this API.
    #[serde(default)]
    pub resource: Vec<String>,
    /// Space-separated: a subset of the account's scopes for this token (RFC 6749 §3.3);
    /// without it, all of them.
    #[serde(default)]
    pub scope: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Tokens {
    /// An EdDSA-signed JWT; send it as `Authorization: Bearer <token>`.
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Single use: each refresh returns a new one. Absent for service accounts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_expires_in: Option<i64>,
}

impl From<pb::TokenResponse> for Tokens {
    fn from(t: pb::TokenResponse) -> Self {
        let has_refresh = !t.refresh_token.is_empty();
        Self {
            access_token: t.access_token,
            token_type: t.token_type,
            expires_in: t.expires_in,
            refresh_token: has_refresh.then_some(t.refresh_token),
            refresh_expires_in: has_refresh.then_some(t.refresh_expires_in),
        }
    }
}

/// Only the fields present change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// Needs `current_password` on your own account.
    #[schema(max_length = 254, pattern = r"^\s*[^@\s]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+\s*$")]
    pub email: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^\s*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F]([^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F])?\s*$"
    )]
    pub full_name: Option<String>,
    #[schema(max_length = 500, pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$")]
    pub address: Option<String>,
    /// As at registration; needs `current_password` on your own account.
    #[schema(min_length = 10, max_length = 128)]
    pub new_password: Option<String>,
    /// Required to change your own password or email; a wrong one counts as a failed login.
    pub current_password: Option<String>,
    /// Admin only; replaces the roles (at least one).
    #[schema(value_type = Option<Vec<PersonRole>>, min_items = 1)]
    pub roles: Option<Vec<String>>,
}

/// The roles a person's account can hold.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the body names them as text, which users checks
#[schema(rename_all = "lowercase")]
pub enum PersonRole {
    Customer,
    Staff,
    Admin,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewServiceAccount {
    /// 1 to 200 characters.
    #[schema(example = "recommendations")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^\s*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F]([^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F])?\s*$"
    )]
    pub name: String,
    /// What it is granted (see the `oauth2` scheme's scopes); none grants nothing that needs one.
    #[serde(default)]
    #[schema(example = json!(["books:read"]), schema_with = scope_names)]
    pub scopes: Vec<String>,
}

/// Scopes, each one a service account can be granted ([`bookstore_platform::auth::SCOPES`]).
fn scope_names() -> utoipa::openapi::Array {
    use utoipa::openapi::{ArrayBuilder, ObjectBuilder, Type};
    let names = bookstore_platform::auth::SCOPES.iter().map(|(name, _)| *name);
    ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(names))).build()
}

/// A service account's credentials, as created or with a rotated secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServiceAccount {
    pub client_id: String,
    /// Shown once; store it as a secret.
    pub client_secret: String,
    pub name: String,
    pub scopes: Vec<String>,
}

impl From<pb::ServiceAccountCredentials> for ServiceAccount {
    fn from(c: pb::ServiceAccountCredentials) -> Self {
        Self { client_id: c.client_id, client_secret: c.client_secret, name: c.name, scopes: c.scopes }
    }
}

/// A service account as listed: never its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServiceAccountInfo {
    pub client_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: String,
    /// When it was revoked; absent while it is live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl From<pb::ServiceAccount> for ServiceAccountInfo {
    fn from(a: pb::ServiceAccount) -> Self {
        Self {
            client_id: a.client_id,
            name: a.name,
            scopes: a.scopes,
            created_at: rfc3339(a.create_time),
            revoked_at: a.revoke_time.map(|t| rfc3339(Some(t))),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServiceAccountList {
    pub items: Vec<ServiceAccountInfo>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// 1-based page number (default 1).
    #[param(minimum = 1, maximum = 10000)]
    pub page: Option<i32>,
    /// Items per page, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i32>,
}

/// The answer to a sign-up, the same whether the email was free or not.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    #[schema(
        example = "If no account has this email, yours is ready: sign in with your username and password."
    )]
    pub message: String,
}

/// What every accepted sign-up is told: whether the email already had an account is not said,
/// so the form cannot be used to find out who is a customer.
pub const REGISTERED: &str =
    "If no account has this email, yours is ready: sign in with your username and password.";

/// Register a customer account. The answer is the same whether or not the email already had an
/// account (which is left as it was); a taken username is said. Sign-ups are limited per client
/// address.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = Register,
    responses(
        (status = 202, description = "Accepted: sign in to continue", body = Registered),
        (status = 400, description = "A field is invalid or the password too weak", body = ErrorBody),
        (status = 409, description = "Username taken", body = ErrorBody),
        (status = 429, description = "Too many sign-ups from this address; see Retry-After", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait"))),
    ))]
pub async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<Register>,
) -> Result<impl IntoResponse, ApiError> {
    use bookstore_platform::status::reason;
    use tonic_types::StatusExt;
    let request = pb::CreateUserRequest {
        username: body.username,
        email: body.email,
        password: body.password,
        full_name: body.full_name,
        address: body.address,
        client_address: crate::client::client_address(peer.ip(), &headers, &state.trusted_proxies)
            .to_string(),
    };
    match state.users.clone().create_user(state.request(request, &Auth::default())).await {
        Ok(_) => {}
        Err(status)
            if status.get_error_details().error_info().is_some_and(|i| i.reason == reason::EMAIL_TAKEN) => {}
        Err(status) => return Err(status.into()),
    }
    let answer = Registered { message: REGISTERED.to_owned() };
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, "/api/v1/auth/login")], Json(answer)))
}

/// Sign in with a username (or email) and password.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = Login,
    responses(
        (status = 200, description = "Signed in", body = Tokens),
        (status = 401, description = "Wrong username or password", body = ErrorBody),
        (status = 429, description = "Too many failed logins; see Retry-After", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait"))),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Login>,
) -> Result<Json<Tokens>, ApiError> {
    let client = crate::client::client_address(peer.ip(), &headers, &state.trusted_proxies);
    let request = pb::LoginRequest {
        username: body.username,
        password: body.password,
        client_address: client.to_string(),
    };
    let tokens = state.users.clone().login(state.request(request, &Auth::default())).await?;
    Ok(Json(tokens.into_inner().into()))
}

/// Trade a refresh token (once) for a new pair.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshToken,
    responses(
        (status = 200, description = "New tokens", body = Tokens),
        (status = 401, description = "Unknown, expired or reused refresh token (reuse ends the session)", body = ErrorBody),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    Json(body): Json<RefreshToken>,
) -> Result<Json<Tokens>, ApiError> {
    let request = pb::RefreshRequest { refresh_token: body.refresh_token };
    let tokens = state.users.clone().refresh(state.request(request, &Auth::default())).await?;
    Ok(Json(tokens.into_inner().into()))
}

/// End the session of a refresh token.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshToken,
    responses((status = 204, description = "Signed out")))]
pub async fn logout(
    State(state): State<AppState>,
    Json(body): Json<RefreshToken>,
) -> Result<StatusCode, ApiError> {
    let request = pb::LogoutRequest { refresh_token: body.refresh_token };
    state.users.clone().logout(state.request(request, &Auth::default())).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A service account's client credentials for an access token with the `service` role: as JSON,
/// or as RFC 6749's form (`application/x-www-form-urlencoded`, §4.4), with the client's id and
/// secret in the body or in HTTP Basic (§2.3.1), so standard OAuth2 clients work unchanged.
#[utoipa::path(post, path = "/api/v1/auth/token", tag = "auth",
    request_body(content(
        (ClientCredentials = "application/json"),
        (ClientCredentials = "application/x-www-form-urlencoded"),
    ), description = "With the form, `client_id` and `client_secret` may come as HTTP Basic instead; `resource` may repeat."),
    responses(
        (status = 200, description = "An access token", body = Tokens),
        (status = 400, description = "Unsupported grant type, or credentials given twice", body = ErrorBody),
        (status = 401, description = "Wrong client id or secret", body = ErrorBody),
    ))]
pub async fn token(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Json<Tokens>, ApiError> {
    let form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let basic = basic_credentials(request.headers())?;
    let mut body = if form {
        // A token request is a few short fields.
        let bytes = axum::body::to_bytes(request.into_body(), 16 * 1024).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                "the form is over 16 KiB",
            )
        })?;
        ClientCredentials::from_form(&bytes)
    } else {
        use axum::extract::FromRequest;
        Json::<ClientCredentials>::from_request(request, &state).await?.0
    };
    if let Some((id, secret)) = basic {
        if !body.client_id.is_empty() || !body.client_secret.is_empty() {
            return Err(ApiError::invalid("client credentials: in HTTP Basic or in the body, not both"));
        }
        (body.client_id, body.client_secret) = (id, secret);
    }
    if body.grant_type != "client_credentials" {
        return Err(ApiError::invalid("grant_type: only client_credentials is supported"));
    }
    let request = pb::IssueServiceTokenRequest {
        client_id: body.client_id,
        client_secret: body.client_secret,
        resources: body.resource,
        scopes: body.scope.split_whitespace().map(str::to_owned).collect(),
    };
    let tokens = state.users.clone().issue_service_token(state.request(request, &Auth::default())).await?;
    Ok(Json(tokens.into_inner().into()))
}

impl ClientCredentials {
    /// RFC 6749's form: unknown parameters are ignored (§3.2), `resource` may repeat (RFC 8707).
    fn from_form(body: &[u8]) -> Self {
        let mut grant = Self {
            grant_type: String::new(),
            client_id: String::new(),
            client_secret: String::new(),
            resource: Vec::new(),
            scope: String::new(),
        };
        for (key, value) in url::form_urlencoded::parse(body) {
            match key.as_ref() {
                "grant_type" => grant.grant_type = value.into_owned(),
                "client_id" => grant.client_id = value.into_owned(),
                "client_secret" => grant.client_secret = value.into_owned(),
                "resource" => grant.resource.push(value.into_owned()),
                "scope" => grant.scope = value.into_owned(),
                _ => {}
            }
        }
        grant
    }
}

/// `Authorization: Basic`: the client's id and secret, each form-encoded (RFC 6749 §2.3.1).
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, ApiError> {
    use base64::Engine;
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some((scheme, encoded)) = value.split_once(' ') else { return Ok(None) };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let unreadable = || ApiError::invalid("Authorization: Basic must be base64 of client_id:client_secret");
    let decoded =
        base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| unreadable())?;
    let decoded = String::from_utf8(decoded).map_err(|_| unreadable())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(unreadable)?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("v={s}").as_bytes()).next().map(|(_, v)| v.into_owned())
    };
    Ok(Some((unescape(id).unwrap_or_default(), unescape(secret).unwrap_or_default())))
}

/// The public keys that verify access tokens (RFC 7517).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "JWKS", content_type = "application/json", body = Object)))]
pub async fn jwks(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let (request, anyone) = (pb::GetJwksRequest {}, Auth::default());
    let jwks =
        state
            .read(&state.peers.users, &state.users, &anyone, request, |mut c, r| async move {
                c.get_jwks(r).await
            })
            .await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "public, max-age=60")],
        jwks.jwks_json,
    ))
}

fn update_request(id: String, body: UpdateUser, client_address: String) -> pb::UpdateUserRequest {
    pb::UpdateUserRequest {
        id,
        client_address,
        email: body.email,
        full_name: body.full_name,
        address: body.address,
        new_password: body.new_password,
        current_password: body.current_password,
        set_roles: body.roles.is_some(),
        roles: body.roles.unwrap_or_default(),
    }
}

/// Your own account.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = User), (status = 401, body = ErrorBody)))]
pub async fn get_me(State(state): State<AppState>, auth: Auth) -> Result<Json<User>, ApiError> {
    let id = auth.required()?.identity.subject.clone();
    get_user_by_id(&state, &auth, id).await
}

/// Change your own account.
#[utoipa::path(patch, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])), request_body = UpdateUser,
    responses((status = 200, body = User), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Wrong current_password, or roles without admin", body = ErrorBody),
        (status = 409, description = "Email taken", body = ErrorBody),
        (status = 429, description = "Too many wrong passwords; see Retry-After", body = ErrorBody)))]
pub async fn update_me(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    auth: Auth,
    Json(body): Json<UpdateUser>,
) -> Result<Json<User>, ApiError> {
    let id = auth.required()?.identity.subject.clone();
    let client = crate::client::client_address(peer.ip(), &headers, &state.trusted_proxies).to_string();
    update_user_by_id(&state, &auth, id, body, client).await
}

/// Delete your own account (and end all its sessions).
#[utoipa::path(delete, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody)))]
pub async fn delete_me(State(state): State<AppState>, auth: Auth) -> Result<StatusCode, ApiError> {
    let id = auth.required()?.identity.subject.clone();
    delete_user_by_id(&state, &auth, id).await
}

/// All accounts (admin).
#[utoipa::path(get, path = "/api/v1/users", tag = "users", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = UserPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_users(
    State(state): State<AppState>,
    auth: Auth,
    Query(params): Query<PageParams>,
) -> Result<Json<UserPage>, ApiError> {
    auth.required()?;
    let (page, limit) = crate::error::paging(params.page, params.limit)?;
    let request = pb::ListUsersRequest { page, limit };
    let page =
        state
            .read(&state.peers.users, &state.users, &auth, request, |mut c, r| async move {
                c.list_users(r).await
            })
            .await?;
    Ok(Json(UserPage {
        items: page.users.into_iter().map(User::from).collect(),
        total: page.total,
        page: page.page,
        limit: page.limit,
    }))
}

/// One account: yours, or any for an admin (others answer 404).
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, body = User), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_user(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    auth.required()?;
    get_user_by_id(&state, &auth, id).await
}

/// Change an account: yours, or any for an admin.
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])), request_body = UpdateUser,
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, body = User), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_user(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<UpdateUser>,
) -> Result<Json<User>, ApiError> {
    auth.required()?;
    let client = crate::client::client_address(peer.ip(), &headers, &state.trusted_proxies).to_string();
    update_user_by_id(&state, &auth, id, body, client).await
}

/// Delete an account: yours, or any for an admin.
#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The last admin cannot be deleted", body = ErrorBody)))]
pub async fn delete_user(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.required()?;
    delete_user_by_id(&state, &auth, id).await
}

/// Create a service account (admin); its secret is shown once.
#[utoipa::path(post, path = "/api/v1/service-accounts", tag = "users", security(("bearer" = [])),
    request_body = NewServiceAccount,
    responses((status = 201, body = ServiceAccount), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_service_account(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<NewServiceAccount>,
) -> Result<impl IntoResponse, ApiError> {
    auth.required()?;
    let request = pb::CreateServiceAccountRequest { name: body.name, scopes: body.scopes };
    let created =
        state.users.clone().create_service_account(state.request(request, &auth)).await?.into_inner();
    Ok((StatusCode::CREATED, Json(ServiceAccount::from(created))))
}

/// Every service account, revoked ones included (admin); never a secret.
#[utoipa::path(get, path = "/api/v1/service-accounts", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = ServiceAccountList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_service_accounts(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<ServiceAccountList>, ApiError> {
    auth.required()?;
    let request = pb::ListServiceAccountsRequest {};
    let listed = state.users.clone().list_service_accounts(state.request(request, &auth)).await?.into_inner();
    Ok(Json(ServiceAccountList { items: listed.accounts.into_iter().map(Into::into).collect() }))
}

/// A new secret for a service account (admin), shown once; the old one stops working at once.
#[utoipa::path(post, path = "/api/v1/service-accounts/{client_id}/rotate-secret", tag = "users",
    security(("bearer" = [])), params(("client_id" = String, Path, description = "The account's client id")),
    responses((status = 200, body = ServiceAccount), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No live account with that id", body = ErrorBody)))]
pub async fn rotate_service_account_secret(
    State(state): State<AppState>,
    auth: Auth,
    Path(client_id): Path<String>,
) -> Result<Json<ServiceAccount>, ApiError> {
    auth.required()?;
    let request = pb::ServiceAccountRequest { client_id };
    let rotated =
        state.users.clone().rotate_service_account_secret(state.request(request, &auth)).await?.into_inner();
    Ok(Json(rotated.into()))
}

/// Revokes a service account (admin): it gets no more tokens; those it holds live out their
/// minutes. It stays listed, with when it was revoked.
#[utoipa::path(post, path = "/api/v1/service-accounts/{client_id}/revoke", tag = "users",
    security(("bearer" = [])), params(("client_id" = String, Path, description = "The account's client id")),
    responses((status = 200, body = ServiceAccountInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn revoke_service_account(
    State(state): State<AppState>,
    auth: Auth,
    Path(client_id): Path<String>,
) -> Result<Json<ServiceAccountInfo>, ApiError> {
    auth.required()?;
    let request = pb::ServiceAccountRequest { client_id };
    let revoked =
        state.users.clone().revoke_service_account(state.request(request, &auth)).await?.into_inner();
    Ok(Json(revoked.into()))
}

async fn get_user_by_id(state: &AppState, auth: &Auth, id: String) -> Result<Json<User>, ApiError> {
    let request = pb::GetUserRequest { id };
    let user = state
        .read(&state.peers.users, &state.users, auth, request, |mut c, r| async move { c.get_user(r).await });
    Ok(Json(user.await?.into()))
}

async fn update_user_by_id(
    state: &AppState,
    auth: &Auth,
    id: String,
    body: UpdateUser,
    client_address: String,
) -> Result<Json<User>, ApiError> {
    let request = update_request(id, body, client_address);
    let user = state.users.clone().update_user(state.request(request, auth)).await?;
    Ok(Json(user.into_inner().into()))
}

async fn delete_user_by_id(state: &AppState, auth: &Auth, id: String) -> Result<StatusCode, ApiError> {
    state.users.clone().delete_user(state.request(pb::DeleteUserRequest { id }, auth)).await?;
    Ok(StatusCode::NO_CONTENT)
}
