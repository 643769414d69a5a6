//! The tonic adapter and the account rules that need the caller: who may see, change and delete
//! which account, and the token flows.

use std::sync::Arc;

use bookstore_api::users::v1 as pb;
use bookstore_api::users::v1::user_service_server::UserService;
use bookstore_platform::auth::{Identity, Role, require};
use bookstore_platform::grpc::timestamp;
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use crate::crypto::sha256_hex;
use crate::domain::{
    Address, Email, FullName, InvalidField, Password, User, Username, parse_person_roles, roles_from_text,
};
use crate::store::{StoreError, UserRow};
use crate::tokens::{access_token, random_secret};
use crate::{Users, UsersConfig};
use bookstore_platform::clock::now_ms;
use bookstore_platform::page::PageRequest;

fn invalid(err: InvalidField) -> Status {
    err.into()
}

fn internal(err: impl std::fmt::Display) -> Status {
    bookstore_platform::status::unexpected("users", &anyhow::anyhow!("{err}"))
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::DuplicateUsername | StoreError::DuplicateEmail => {
                Status::already_exists(err.to_string())
            }
            StoreError::LastAdmin => Status::failed_precondition(err.to_string()),
            StoreError::Unexpected(e) => bookstore_platform::status::unexpected("users", &e),
        }
    }
}

fn to_proto(user: User) -> pb::User {
    pb::User {
        id: user.id,
        username: user.username,
        email: user.email,
        full_name: user.full_name,
        address: user.address,
        roles: user.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        create_time: Some(timestamp(user.created_at)),
        update_time: Some(timestamp(user.updated_at)),
    }
}

fn unauthenticated_login() -> Status {
    Status::unauthenticated("wrong username or password")
}

fn throttled(wait: std::time::Duration) -> Status {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    bookstore_platform::status::retry_after(
        format!("too many failed logins; try again in {secs} s"),
        std::time::Duration::from_secs(secs),
    )
}

fn too_many_sign_ups(wait: std::time::Duration) -> Status {
    let secs = wait.as_secs().max(1);
    bookstore_platform::status::retry_after(
        format!("too many sign-ups from this address; try again in {secs} s"),
        std::time::Duration::from_secs(secs),
    )
}

/// The end client's address the gateway passed on, for the throttles.
fn client_address(given: &str) -> &str {
    if given.is_empty() { "unknown" } else { given }
}

/// The gRPC face of the users service.
#[derive(Clone)]
pub struct UsersGrpc {
    users: Arc<Users>,
}

impl UsersGrpc {
    pub fn new(users: Arc<Users>) -> Self {
        Self { users }
    }

    fn config(&self) -> &UsersConfig {
        &self.users.config
    }

    /// The account `id` as `who` may see it: their own, or any for an admin. Anything else is
    /// NOT_FOUND, exactly as if it did not exist, so ids cannot be probed.
    async fn visible_row(&self, who: &Identity, id: &str) -> Result<UserRow, Status> {
        if who.subject != id && !who.is_admin() {
            return Err(Status::not_found(format!("no user with id {id}")));
        }
        self.users
            .store
            .get_user(id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no user with id {id}")))
    }

    /// An access token for `user_id`, and a refresh token: a new session, or (when `refresh` is
    /// given, with its session) the next token of the session whose token was spent.
    async fn tokens(
        &self,
        user_id: &str,
        roles: &[Role],
        refresh: Option<(&str, &str)>,
    ) -> Result<pb::TokenResponse, Status> {
        let config = self.config();
        let (refresh_token, session) = match refresh {
            Some((token, session)) => (token.to_owned(), session.to_owned()),
            None => {
                let token = random_secret();
                let expires_at = now_ms() + config.refresh_ttl.as_millis() as i64;
                let session = self
                    .users
                    .store
                    .start_session(user_id, &sha256_hex(&token), expires_at)
                    .await
                    .map_err(internal)?;
                (token, session)
            }
        };
        let access =
            access_token(&self.users.keyring, user_id, roles, &[], &[], Some(&session), config.access_ttl)
                .map_err(internal)?;
        Ok(pb::TokenResponse {
            access_token: access,
            token_type: "Bearer".into(),
            expires_in: config.access_ttl.as_secs() as i64,
            refresh_token,
            refresh_expires_in: config.refresh_ttl.as_secs() as i64,
        })
    }
}

/// Whether a change to `row` (new roles, or `None` for a deletion) takes the admin role away;
/// the store then refuses it if no other admin remains.
fn drops_admin(row: &UserRow, new_roles: Option<&[Role]>) -> bool {
    roles_from_text(&row.roles).contains(&Role::Admin) && !new_roles.is_some_and(|r| r.contains(&Role::Admin))
}

#[tonic::async_trait]
impl UserService for UsersGrpc {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let req = request.into_inner();
        let username = Username::parse(&req.username).map_err(invalid)?;
        let email = Email::parse(&req.email).map_err(invalid)?;
        let full_name = FullName::parse(&req.full_name).map_err(invalid)?;
        let address = Address::parse(&req.address).map_err(invalid)?;
        let local = email.as_str().split('@').next().unwrap_or_default();
        let password =
            Password::parse(&req.password, &[username.as_str(), email.as_str(), local, full_name.as_str()])
                .map_err(invalid)?;
        self.users.registrations.admit(client_address(&req.client_address)).map_err(too_many_sign_ups)?;
        // A taken username is said (usernames are chosen, and shown); a taken email is not
        // ([`reason::EMAIL_TAKEN`]), and costs the same password hash as a sign-up that works.
        if self.users.store.find_by_username(username.as_str()).await.map_err(internal)?.is_some() {
            return Err(StoreError::DuplicateUsername.into());
        }
        match self.users.create(&username, &email, &full_name, &address, &password, &[Role::Customer]).await {
            Ok(user) => {
                tracing::info!(id = %user.id, "user registered");
                Ok(Response::new(to_proto(user)))
            }
            Err(StoreError::DuplicateEmail) => {
                let email_hash = &self.users.keyring.blind_index.email(&email.normalized())[..16];
                tracing::info!(email_hash, "sign-up with a taken email");
                Err(bookstore_platform::status::with_reason(
                    tonic::Code::AlreadyExists,
                    "email taken",
                    bookstore_platform::status::reason::EMAIL_TAKEN,
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        let who = require(&request, &[Role::Customer, Role::Staff, Role::Admin])?.clone();
        let row = self.visible_row(&who, &request.get_ref().id).await?;
        Ok(Response::new(to_proto(self.users.decrypt(&row).map_err(internal)?)))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let who = require(&request, &[Role::Customer, Role::Staff, Role::Admin])?.clone();
        let req = request.into_inner();
        let row = self.visible_row(&who, &req.id).await?;
        let current = self.users.decrypt(&row).map_err(internal)?;

        let email = req.email.as_deref().map(Email::parse).transpose().map_err(invalid)?;
        let full_name = req.full_name.as_deref().map(FullName::parse).transpose().map_err(invalid)?;
        let address = req.address.as_deref().map(Address::parse).transpose().map_err(invalid)?;
        let roles = if req.set_roles {
            if !who.is_admin() {
                return Err(Status::permission_denied("only an admin changes roles"));
            }
            let roles = parse_person_roles(&req.roles).map_err(invalid)?;
            Some(roles)
        } else {
            None
        };
        let demoted = roles.as_deref().is_some_and(|r| drops_admin(&row, Some(r)));
        // The owner proves it is them before changing how they sign in (password, email); an
        // admin resetting someone else's does not. A wrong password is a failed login.
        if who.subject == row.id && (req.new_password.is_some() || email.is_some()) {
            let client = client_address(&req.client_address);
            self.users.throttle.attempt(&row.id, client).map_err(throttled)?;
            let current_password = Password::unchecked(req.current_password.as_deref().unwrap_or_default());
            if !self
                .users
                .hasher
                .verify(&current_password, Some(&row.password_hash))
                .await
                .map_err(internal)?
            {
                tracing::info!(user = %row.id, address = client, "wrong current_password");
                return Err(Status::permission_denied("current_password is wrong"));
            }
            self.users.throttle.succeeded(&row.id, client);
        }
        let password_hash = match &req.new_password {
            None => None,
            Some(new) => {
                let email_text = email.as_ref().map_or(current.email.as_str(), |e| e.as_str()).to_owned();
                let password = Password::parse(new, &[row.username.as_str(), email_text.as_str()])
                    .map_err(|e| invalid(InvalidField { field: "new_password", reason: e.reason }))?;
                Some(self.users.hasher.hash(&password).await.map_err(internal)?)
            }
        };

        let updated = User {
            email: email.map_or(current.email, |e| e.as_str().to_owned()),
            full_name: full_name.map_or(current.full_name, |n| n.as_str().to_owned()),
            address: address.map_or(current.address, |a| a.as_str().to_owned()),
            roles: roles.unwrap_or(current.roles),
            updated_at: now_ms(),
            ..current
        };
        let credentials_changed = password_hash.is_some() || req.set_roles;
        let mut new_row = self.users.encrypt(&updated, password_hash.unwrap_or(row.password_hash.clone()));
        new_row.created_at = row.created_at;
        new_row.version = row.version;
        if !self.users.store.update_user(&new_row, demoted).await? {
            return Err(Status::aborted(
                "the account was changed by another request; read it again and retry",
            ));
        }
        if credentials_changed {
            // A new password or new roles end every session: a thief's refresh token dies, and
            // the next sign-in carries the new roles.
            self.users.store.revoke_sessions_of(&row.id).await.map_err(internal)?;
        }
        Ok(Response::new(to_proto(updated)))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let who = require(&request, &[Role::Customer, Role::Staff, Role::Admin])?.clone();
        let row = self.visible_row(&who, &request.get_ref().id).await?;
        self.users.store.delete_user(&row.id, drops_admin(&row, None)).await?;
        tracing::info!(id = %row.id, by = %who.subject, "user deleted");
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        require(&request, &[Role::Admin])?;
        let req = request.into_inner();
        let paging = PageRequest::parse(req.page, req.limit).map_err(invalid)?;
        let (page, limit) = (paging.page() as i32, paging.limit() as i32);
        let (rows, total) =
            self.users.store.list_users(i64::from(limit), paging.offset()).await.map_err(internal)?;
        let users = rows
            .iter()
            .map(|r| self.users.decrypt(r).map(to_proto))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(internal)?;
        Ok(Response::new(pb::ListUsersResponse { users, total, page, limit }))
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::TokenResponse>, Status> {
        let req = request.into_inner();
        let identifier = req.username.trim().to_lowercase();
        let address = client_address(&req.client_address).to_owned();

        // A username, or the email it was registered with (found through the blind index).
        let row = if identifier.contains('@') {
            match Email::parse(&identifier) {
                Ok(email) => self
                    .users
                    .store
                    .find_by_email_index(&self.users.keyring.blind_index.email(&email.normalized()))
                    .await
                    .map_err(internal)?,
                Err(_) => None,
            }
        } else {
            self.users.store.find_by_username(&identifier).await.map_err(internal)?
        };
        // Counted per account, whichever identifier was typed; per identifier when none matches.
        let account = row.as_ref().map_or_else(|| format!("unknown:{identifier}"), |r| r.id.clone());
        self.users.throttle.attempt(&account, &address).map_err(throttled)?;
        let password = Password::unchecked(&req.password);
        let ok = self
            .users
            .hasher
            .verify(&password, row.as_ref().map(|r| r.password_hash.as_str()))
            .await
            .map_err(internal)?;
        let Some(row) = row.filter(|_| ok) else {
            // The identifier may be an email (or a password typed in the wrong box): log its
            // keyed hash, never the text.
            let account_hash = &self.users.keyring.blind_index.email(&identifier)[..16];
            tracing::info!(account_hash, address, "failed login");
            return Err(unauthenticated_login());
        };
        self.users.throttle.succeeded(&account, &address);
        let roles = roles_from_text(&row.roles);
        Ok(Response::new(self.tokens(&row.id, &roles, None).await?))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        use crate::store::Refresh;
        let token = request.into_inner().refresh_token;
        let next = random_secret();
        let expires_at = now_ms() + self.config().refresh_ttl.as_millis() as i64;
        let outcome = self
            .users
            .store
            .rotate_refresh(&sha256_hex(&token), &sha256_hex(&next), expires_at)
            .await
            .map_err(internal)?;
        let (user_id, session) = match outcome {
            Refresh::Rotated { user_id, family } => (user_id, family),
            Refresh::Reused { user_id, family } => {
                // A token used twice was stolen, or its owner's copy was: the whole chain ends.
                tracing::warn!(user = %user_id, family = %family, "refresh token reuse; session revoked");
                return Err(Status::unauthenticated(
                    "refresh token already used; the session was ended, sign in again",
                ));
            }
            Refresh::Revoked => return Err(Status::unauthenticated("the session was ended; sign in again")),
            Refresh::Expired => return Err(Status::unauthenticated("refresh token expired; sign in again")),
            Refresh::Unknown => return Err(Status::unauthenticated("unknown refresh token")),
        };
        let row = self
            .users
            .store
            .get_user(&user_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::unauthenticated("account no longer exists"))?;
        let roles = roles_from_text(&row.roles);
        Ok(Response::new(self.tokens(&row.id, &roles, Some((&next, &session))).await?))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let hash = sha256_hex(&request.into_inner().refresh_token);
        // Unknown tokens log out just as quietly: the answer says nothing about which exist.
        if let Some(family) = self.users.store.family_of(&hash).await.map_err(internal)? {
            self.users.store.revoke_family(&family).await.map_err(internal)?;
        }
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let jwks_json = serde_json::to_string(&self.users.keyring.jwks()).map_err(internal)?;
        Ok(Response::new(pb::GetJwksResponse { jwks_json }))
    }

    async fn create_service_account(
        &self,
        request: Request<pb::CreateServiceAccountRequest>,
    ) -> Result<Response<pb::ServiceAccountCredentials>, Status> {
        require(&request, &[Role::Admin])?;
        let req = request.into_inner();
        let name = FullName::parse(&req.name)
            .map_err(|e| invalid(InvalidField { field: "name", reason: e.reason }))?;
        let scopes = scopes_of(&req.scopes)?;
        let client_id = format!("svc-{}", uuid::Uuid::now_v7().simple());
        let secret = random_secret();
        self.users
            .store
            .insert_service_account(&client_id, name.as_str(), &sha256_hex(&secret), &scopes)
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::ServiceAccountCredentials {
            client_id,
            client_secret: secret,
            name: name.as_str().to_owned(),
            scopes,
        }))
    }

    async fn list_service_accounts(
        &self,
        request: Request<pb::ListServiceAccountsRequest>,
    ) -> Result<Response<pb::ListServiceAccountsResponse>, Status> {
        require(&request, &[Role::Admin])?;
        let accounts = self.users.store.service_accounts().await.map_err(internal)?;
        Ok(Response::new(pb::ListServiceAccountsResponse {
            accounts: accounts.iter().map(service_account_to_proto).collect(),
        }))
    }

    async fn rotate_service_account_secret(
        &self,
        request: Request<pb::ServiceAccountRequest>,
    ) -> Result<Response<pb::ServiceAccountCredentials>, Status> {
        require(&request, &[Role::Admin])?;
        let client_id = request.into_inner().client_id;
        let secret = random_secret();
        let account = self
            .users
            .store
            .set_service_account_secret(&client_id, &sha256_hex(&secret))
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no live service account {client_id}")))?;
        Ok(Response::new(pb::ServiceAccountCredentials {
            client_id: account.client_id,
            client_secret: secret,
            name: account.name,
            scopes: account.scopes,
        }))
    }

    async fn revoke_service_account(
        &self,
        request: Request<pb::ServiceAccountRequest>,
    ) -> Result<Response<pb::ServiceAccount>, Status> {
        require(&request, &[Role::Admin])?;
        let client_id = request.into_inner().client_id;
        let account = self
            .users
            .store
            .revoke_service_account(&client_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no service account {client_id}")))?;
        Ok(Response::new(service_account_to_proto(&account)))
    }

    async fn record_audit(
        &self,
        request: Request<pb::RecordAuditRequest>,
    ) -> Result<Response<pb::RecordAuditResponse>, Status> {
        // Who is the verified caller, never what the request says.
        let who = require(&request, &[Role::Staff, Role::Admin, Role::Service])?.clone();
        let req = request.into_inner();
        let fits = |value: &str, max: usize| value.chars().count() <= max;
        if req.action.is_empty()
            || !fits(&req.action, 200)
            || !fits(&req.target, 2000)
            || !fits(&req.request_id, 200)
            || !fits(&req.address, 100)
            || !(100..=599).contains(&req.status)
        {
            return Err(Status::invalid_argument("an audit entry's fields are missing or too long"));
        }
        let roles: Vec<&str> = who.roles.iter().map(|r| r.as_str()).collect();
        self.users.record_audit(who.subject, roles.join(" "), req).await.map_err(internal)?;
        Ok(Response::new(pb::RecordAuditResponse {}))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        require(&request, &[Role::Admin])?;
        let req = request.into_inner();
        if !(0..=1000).contains(&req.limit) || req.since_ms < 0 {
            return Err(Status::invalid_argument("limit is 1 to 1000, and since is a time"));
        }
        let filter = crate::store::AuditFilter {
            actor: Some(req.actor).filter(|a| !a.is_empty()),
            action: Some(req.action).filter(|a| !a.is_empty()),
            since_ms: req.since_ms,
            limit: if req.limit == 0 { 100 } else { i64::from(req.limit) },
        };
        let rows = self.users.store.audit(&filter).await.map_err(internal)?;
        let data = &self.users.keyring.data;
        let entries = rows
            .into_iter()
            .map(|row| pb::AuditEntry {
                address: data.decrypt(&row.id, "address", &row.address_sealed).unwrap_or_default(),
                id: row.id,
                at_ms: row.at_ms,
                actor: row.actor,
                roles: row.roles.split_whitespace().map(str::to_owned).collect(),
                action: row.action,
                target: row.target,
                status: i32::try_from(row.status).unwrap_or(0),
                request_id: row.request_id,
            })
            .collect();
        Ok(Response::new(pb::ListAuditResponse { entries }))
    }

    async fn issue_service_token(
        &self,
        request: Request<pb::IssueServiceTokenRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        let req = request.into_inner();
        // A revoked account is as good as none.
        let stored = self.users.store.live_service_account(&req.client_id).await.map_err(internal)?;
        // Secrets are 256 random bits, so a SHA-256 is as good as a slow hash; compare in
        // constant time all the same.
        let presented = sha256_hex(&req.client_secret);
        let granted = match stored {
            Some((hash, scopes)) if bool::from(hash.as_bytes().ct_eq(presented.as_bytes())) => scopes,
            _ => return Err(Status::unauthenticated("wrong client id or secret")),
        };
        // A narrower token when asked (RFC 6749 §3.3), never a wider one.
        let scopes = if req.scopes.is_empty() {
            granted
        } else {
            let asked = scopes_of(&req.scopes)?;
            if let Some(extra) = asked.iter().find(|s| !granted.contains(s)) {
                return Err(Status::invalid_argument(format!(
                    "scopes: {extra} is not granted to this account"
                )));
            }
            asked
        };
        let audience = parse_resources(&req.resources)?;
        let ttl = self.config().access_ttl;
        let access = access_token(
            &self.users.keyring,
            &req.client_id,
            &[Role::Service],
            &scopes,
            &audience,
            None,
            ttl,
        )
        .map_err(internal)?;
        Ok(Response::new(pb::TokenResponse {
            access_token: access,
            token_type: "Bearer".into(),
            expires_in: ttl.as_secs() as i64,
            refresh_token: String::new(),
            refresh_expires_in: 0,
        }))
    }
}

/// The services a service token is asked for (RFC 8707's resource indicators, here service
/// names): at most 8, each a lowercase name. None asks for the public API.
fn parse_resources(resources: &[String]) -> Result<Vec<String>, Status> {
    let valid = |r: &String| {
        (1..=40).contains(&r.len())
            && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if resources.len() > 8 || !resources.iter().all(valid) {
        return Err(Status::invalid_argument(
            "resources: at most 8 service names, each lowercase letters, digits and dashes",
        ));
    }
    Ok(resources.to_vec())
}

/// Scopes as asked for, if each is one a service account may hold
/// ([`bookstore_platform::auth::SCOPES`]).
fn scopes_of(scopes: &[String]) -> Result<Vec<String>, Status> {
    bookstore_platform::auth::parse_scopes(scopes)
        .map_err(|unknown| Status::invalid_argument(format!("scopes: no scope {unknown:?}")))
}

fn service_account_to_proto(a: &crate::store::StoredServiceAccount) -> pb::ServiceAccount {
    pb::ServiceAccount {
        client_id: a.client_id.clone(),
        name: a.name.clone(),
        scopes: a.scopes.clone(),
        create_time: Some(timestamp(a.created_at)),
        revoke_time: a.revoked_at.map(timestamp),
    }
}
