//! Accounts, tokens, roles and personal data through the gateway, against the real users service.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bookstore_platform::auth::{AUDIENCE, Claims, ISSUER, Role};
use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;
use bookstore_platform::testing::TestIssuer;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{ADMIN_PASSWORD, System, book_json, login};

const PASSWORD: &str = "velvet lantern orbit crumble";

backend_tests!(
    register_login_refresh_and_logout_work_end_to_end,
    a_reused_refresh_token_ends_the_whole_session,
    tokens_breaking_rfc_8725_rules_are_refused_by_gateway_and_services,
    rotated_signing_keys_keep_old_tokens_valid_and_new_ones_verify,
    customers_see_and_change_only_their_own_accounts,
    personal_data_is_encrypted_at_rest_and_bound_to_its_row,
    failed_logins_are_throttled_per_account_and_per_address,
    the_address_limit_believes_forwarded_for_only_from_trusted_proxies,
    catalog_writes_need_staff_or_admin,
    service_accounts_get_tokens_by_client_credentials,
    weak_passwords_and_duplicate_accounts_are_refused,
    the_jwks_is_published_at_the_well_known_path,
    the_last_admin_cannot_be_deleted_or_demoted,
    two_admins_demoting_each_other_at_once_leave_one_admin,
    a_password_change_ends_every_session,
);

async fn register(sys: &System, username: &str, email: &str) -> Value {
    let response = sys
        .http
        .post(sys.url("/api/v1/auth/register"))
        .json(&json!({"username": username, "email": email, "password": PASSWORD,
                      "full_name": format!("{username} Fullname"), "address": "1 Test Street"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED, "registering {username}");
    // The answer says nothing of the account (it is the same for a taken email): read it.
    let token = login(&sys.http, &sys.base, username, PASSWORD).await;
    me(sys, &token).await.json().await.unwrap()
}

async fn tokens(sys: &System, username: &str, password: &str) -> reqwest::Response {
    sys.http
        .post(sys.url("/api/v1/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn me(sys: &System, token: &str) -> reqwest::Response {
    sys.http.get(sys.url("/api/v1/users/me")).bearer_auth(token).send().await.unwrap()
}

async fn refresh(sys: &System, refresh_token: &str) -> reqwest::Response {
    sys.http
        .post(sys.url("/api/v1/auth/refresh"))
        .json(&json!({"refresh_token": refresh_token}))
        .send()
        .await
        .unwrap()
}

async fn register_login_refresh_and_logout_work_end_to_end(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let user = register(&sys, "ada", "Ada@Example.com").await;
    assert_eq!(user["roles"], json!(["customer"]));
    assert_eq!(user["email"], "Ada@Example.com");
    assert!(user.get("password").is_none() && user.get("password_hash").is_none());

    let pair: Value = tokens(&sys, "ada", PASSWORD).await.json().await.unwrap();
    assert_eq!(pair["token_type"], "Bearer");
    assert_eq!(pair["expires_in"], 900);
    let access = pair["access_token"].as_str().unwrap();
    let profile: Value = me(&sys, access).await.json().await.unwrap();
    assert_eq!(profile["id"], user["id"]);
    assert_eq!(profile["address"], "1 Test Street");

    // Signing in with the email (any case) finds the account through the blind index.
    assert_eq!(tokens(&sys, "ada@example.COM", PASSWORD).await.status(), StatusCode::OK);

    let renewed: Value = refresh(&sys, pair["refresh_token"].as_str().unwrap()).await.json().await.unwrap();
    assert_ne!(renewed["refresh_token"], pair["refresh_token"], "refresh rotates");
    assert_eq!(me(&sys, renewed["access_token"].as_str().unwrap()).await.status(), StatusCode::OK);

    let logout = sys
        .http
        .post(sys.url("/api/v1/auth/logout"))
        .json(&json!({"refresh_token": renewed["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let after = refresh(&sys, renewed["refresh_token"].as_str().unwrap()).await;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED, "logout revokes");

    assert_eq!(me(&sys, "").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        sys.http.get(sys.url("/api/v1/users/me")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn a_reused_refresh_token_ends_the_whole_session(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    register(&sys, "bob", "bob@example.com").await;
    let first: Value = tokens(&sys, "bob", PASSWORD).await.json().await.unwrap();
    let stolen = first["refresh_token"].as_str().unwrap().to_owned();
    let second: Value = refresh(&sys, &stolen).await.json().await.unwrap();

    // The thief replays the used token: refused, and the legitimate chain dies with it.
    let replay = refresh(&sys, &stolen).await;
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    let body: Value = replay.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("already used"), "{body}");
    let legit = refresh(&sys, second["refresh_token"].as_str().unwrap()).await;
    assert_eq!(legit.status(), StatusCode::UNAUTHORIZED, "the whole family is revoked");

    // Another session of the same user is untouched.
    let other: Value = tokens(&sys, "bob", PASSWORD).await.json().await.unwrap();
    assert_eq!(refresh(&sys, other["refresh_token"].as_str().unwrap()).await.status(), StatusCode::OK);
}

/// Opens the users service's keyring beside the running service (same database, same master key).
fn sign(users: &bookstore_users::Users, claims: &Claims) -> String {
    let key = users.keyring.current_signing_key().unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

async fn tokens_breaking_rfc_8725_rules_are_refused_by_gateway_and_services(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let user = register(&sys, "carol", "carol@example.com").await;
    let id = user["id"].as_str().unwrap();
    let users = crate::users_of(&sys).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let honest = Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: id.into(),
        exp: now + 600,
        nbf: now,
        iat: now,
        jti: "j1".into(),
        roles: vec![Role::Customer],
        scope: String::new(),
        sid: None,
    };
    assert_eq!(me(&sys, &sign(&users, &honest)).await.status(), StatusCode::OK, "the honest twin verifies");

    let kid = users.keyring.current_signing_key().unwrap().kid;
    let payload =
        B64.encode(serde_json::to_vec(&Claims { roles: vec![Role::Admin], ..honest.clone() }).unwrap());
    let alg_none = format!("{}.{payload}.", B64.encode(json!({"alg": "none", "kid": kid}).to_string()));
    let jwk =
        users.keyring.jwks().keys.into_iter().find(|k| k.common.key_id.as_deref() == Some(&kid)).unwrap();
    let public_x = match &jwk.algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(p) => B64.decode(&p.x).unwrap(),
        other => panic!("unexpected key {other:?}"),
    };
    let hs_input = format!("{}.{payload}", B64.encode(json!({"alg": "HS256", "kid": kid}).to_string()));
    let hs_sig = jsonwebtoken::crypto::sign(
        hs_input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(&public_x),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    let hs256_with_public_key = format!("{hs_input}.{hs_sig}");

    let good = sign(&users, &honest);
    let parts: Vec<&str> = good.split('.').collect();
    let tampered_payload = format!("{}.{payload}.{}", parts[0], parts[2]);
    let mut sig = B64.decode(parts[2]).unwrap();
    sig[5] ^= 0x20;
    let tampered_signature = format!("{}.{}.{}", parts[0], parts[1], B64.encode(sig));

    let cases = [
        ("alg none", alg_none),
        ("HS256 signed with the public key", hs256_with_public_key),
        (
            "expired",
            sign(&users, &Claims { exp: now - 120, iat: now - 1000, nbf: now - 1000, ..honest.clone() }),
        ),
        ("not yet valid", sign(&users, &Claims { nbf: now + 600, ..honest.clone() })),
        ("wrong issuer", sign(&users, &Claims { iss: "evil".into(), ..honest.clone() })),
        ("wrong audience", sign(&users, &Claims { aud: "elsewhere".into(), ..honest.clone() })),
        ("unknown kid", TestIssuer::new().token(id, &[Role::Admin])),
        ("tampered payload", tampered_payload),
        ("tampered signature", tampered_signature),
    ];
    for (case, token) in &cases {
        let response = me(&sys, token).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "UNAUTHENTICATED", "{case}");
    }

    // The services check for themselves: the same tokens sent straight to books' gRPC.
    let channel =
        tonic::transport::Channel::from_shared(sys.books_base.clone()).unwrap().connect().await.unwrap();
    let mut books = bookstore_api::books::v1::book_service_client::BookServiceClient::new(channel);
    for (case, token) in &cases {
        let mut request = tonic::Request::new(bookstore_api::books::v1::CreateBookRequest {
            isbn: crate::isbn(1),
            title: "Forged".into(),
            author: "Mallory".into(),
            description: String::new(),
            price: Some(bookstore_api::books::v1::Money { amount_minor: 1, currency: "USD".into() }),
            stock: 1,
        });
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let err = books.create_book(request).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "books, {case}");
    }
}

async fn rotated_signing_keys_keep_old_tokens_valid_and_new_ones_verify(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let old_token = sys.admin.clone();
    let old_kid = jsonwebtoken::decode_header(&old_token).unwrap().kid.unwrap();

    let users = crate::users_of(&sys).await;
    let new_kid = users.keyring.add_signing_key(&users.store, Duration::ZERO).await.unwrap();
    assert_ne!(new_kid, old_kid);

    // The running service rereads its keys within moments; new logins are then signed anew.
    let mut new_token = None;
    for _ in 0..100 {
        let token = login(&sys.http, &sys.base, "admin", ADMIN_PASSWORD).await;
        if jsonwebtoken::decode_header(&token).unwrap().kid.as_deref() == Some(new_kid.as_str()) {
            new_token = Some(token);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new_token = new_token.expect("logins are signed with the new key");
    assert_eq!(me(&sys, &new_token).await.status(), StatusCode::OK, "the new key verifies");
    assert_eq!(
        me(&sys, &old_token).await.status(),
        StatusCode::OK,
        "the old key verifies until its tokens expire"
    );

    let jwks: Value =
        sys.http.get(sys.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let kids: Vec<&str> =
        jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert!(kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()), "{kids:?}");
}

async fn customers_see_and_change_only_their_own_accounts(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let alice = register(&sys, "alice", "alice@example.com").await;
    let mallory = register(&sys, "mallory", "mallory@example.com").await;
    let alice_token = login(&sys.http, &sys.base, "alice", PASSWORD).await;
    let mallory_token = login(&sys.http, &sys.base, "mallory", PASSWORD).await;
    let alice_url = sys.url(&format!("/api/v1/users/{}", alice["id"].as_str().unwrap()));

    // Mallory cannot tell Alice's account from a missing one.
    let peek = sys.http.get(&alice_url).bearer_auth(&mallory_token).send().await.unwrap();
    assert_eq!(peek.status(), StatusCode::NOT_FOUND);
    let change = sys
        .http
        .patch(&alice_url)
        .bearer_auth(&mallory_token)
        .json(&json!({"address": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(change.status(), StatusCode::NOT_FOUND);
    let delete = sys.http.delete(&alice_url).bearer_auth(&mallory_token).send().await.unwrap();
    assert_eq!(delete.status(), StatusCode::NOT_FOUND);
    let missing =
        sys.http.get(sys.url("/api/v1/users/no-such-id")).bearer_auth(&mallory_token).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let list = sys.http.get(sys.url("/api/v1/users")).bearer_auth(&mallory_token).send().await.unwrap();
    assert_eq!(list.status(), StatusCode::FORBIDDEN);
    let escalate = sys
        .http
        .patch(sys.url("/api/v1/users/me"))
        .bearer_auth(&mallory_token)
        .json(&json!({"roles": ["admin"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(escalate.status(), StatusCode::FORBIDDEN);

    // Alice reaches her own account by id and by /me, and changes it.
    assert_eq!(
        sys.http.get(&alice_url).bearer_auth(&alice_token).send().await.unwrap().status(),
        StatusCode::OK
    );
    let changed: Value = sys
        .http
        .patch(sys.url("/api/v1/users/me"))
        .bearer_auth(&alice_token)
        .json(&json!({"address": "2 New Road"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(changed["address"], "2 New Road");
    let wrong_current = sys
        .http
        .patch(sys.url("/api/v1/users/me"))
        .bearer_auth(&alice_token)
        .json(&json!({"new_password": "another long passphrase here", "current_password": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_current.status(), StatusCode::FORBIDDEN);

    // The admin sees everyone.
    let all: Value = sys
        .http
        .get(sys.url("/api/v1/users"))
        .bearer_auth(&sys.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["total"], 3);
    let seen: Value =
        sys.http.get(&alice_url).bearer_auth(&sys.admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(seen["address"], "2 New Road");

    // Mallory deletes herself; her token reaches no account: refused (401) once the deletion's
    // revocation has reached the gateway, which is at once, or, before it, 404.
    let gone = sys.http.delete(sys.url("/api/v1/users/me")).bearer_auth(&mallory_token).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    let after = me(&sys, &mallory_token).await.status();
    assert!(matches!(after, StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND), "{after}");
    assert_eq!(
        sys.http
            .get(sys.url(&format!("/api/v1/users/{}", mallory["id"].as_str().unwrap())))
            .bearer_auth(&sys.admin)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}

/// Every byte the database holds for the users service, as text a dump would show.
async fn dump(sys: &System, backend: Backend) -> Vec<u8> {
    match backend {
        Backend::Sqlite => {
            let path = sys.users_db.url.trim_start_matches("sqlite://").to_owned();
            let mut bytes = std::fs::read(&path).unwrap();
            for suffix in ["-wal", "-shm"] {
                if let Ok(more) = std::fs::read(format!("{path}{suffix}")) {
                    bytes.extend(more);
                }
            }
            bytes
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&sys.users_db.url).await.unwrap();
            let mut out = Vec::new();
            for table in ["users", "crypto_keys", "refresh_tokens", "service_accounts"] {
                let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
                for row in rows {
                    out.extend(row.into_bytes());
                }
            }
            out
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

async fn personal_data_is_encrypted_at_rest_and_bound_to_its_row(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let secret_email = "zanzibar.quokka@example.org";
    let response = sys
        .http
        .post(sys.url("/api/v1/auth/register"))
        .json(&json!({"username": "quokka", "email": secret_email, "password": PASSWORD,
                      "full_name": "Xerxes Quillfeather", "address": "77 Obscure Lane, Tinytown"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let token = login(&sys.http, &sys.base, "quokka", PASSWORD).await;
    let victim: Value = me(&sys, &token).await.json().await.unwrap();
    let other = register(&sys, "plain", "plain@example.com").await;

    let bytes = dump(&sys, backend).await;
    assert!(contains(&bytes, "quokka"), "the dump is real: the (not secret) username is in it");
    for plaintext in
        [secret_email, "zanzibar", "Xerxes Quillfeather", "Quillfeather", "Obscure Lane", "Tinytown"]
    {
        assert!(!contains(&bytes, plaintext), "{plaintext:?} is stored in the clear");
    }

    // A ciphertext copied onto another row does not decrypt there.
    let users = crate::users_of(&sys).await;
    let pool = users.store.database().pool();
    sqlx::query("UPDATE users SET address_ct = (SELECT address_ct FROM users WHERE id = $1) WHERE id = $2")
        .bind(victim["id"].as_str().unwrap())
        .bind(other["id"].as_str().unwrap())
        .execute(pool)
        .await
        .unwrap();
    let row = users.store.get_user(other["id"].as_str().unwrap()).await.unwrap().unwrap();
    let err = users.decrypt(&row).unwrap_err();
    assert!(format!("{err:#}").contains("decryption failed"), "{err:#}");
    let through_api = sys
        .http
        .get(sys.url(&format!("/api/v1/users/{}", other["id"].as_str().unwrap())))
        .bearer_auth(&sys.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(through_api.status(), StatusCode::INTERNAL_SERVER_ERROR, "never someone else's address");
    let body: Value = through_api.json().await.unwrap();
    assert_eq!(body["message"], "internal error");
}

async fn failed_logins_are_throttled_per_account_and_per_address(backend: Backend) {
    let Some(sys) = System::start_with(backend, false, |c| {
        c.users.login_failures_per_account = 3;
        c.users.login_failures_per_address = 6;
        c.users.login_first_delay_ms = 60_000;
    })
    .await
    else {
        return;
    };
    register(&sys, "dave", "dave@example.com").await;
    for _ in 0..3 {
        assert_eq!(tokens(&sys, "dave", "wrong password!").await.status(), StatusCode::UNAUTHORIZED);
    }
    let locked = tokens(&sys, "dave", PASSWORD).await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS, "even the right password waits");
    let retry_after: u64 = locked.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after > 0 && retry_after <= 900, "{retry_after}");
    let body: Value = locked.json().await.unwrap();
    assert_eq!(body["code"], "RESOURCE_EXHAUSTED");

    // Spraying other accounts from the same address hits the address limit (3 more failures).
    for name in ["erin", "frank", "grace"] {
        assert_eq!(tokens(&sys, name, "guess guess guess").await.status(), StatusCode::UNAUTHORIZED);
    }
    let sprayed = tokens(&sys, "heidi", "guess guess guess").await;
    assert_eq!(sprayed.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(sprayed.headers().contains_key("retry-after"));
}

async fn catalog_writes_need_staff_or_admin(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let ivan = register(&sys, "ivan", "ivan@example.com").await;
    let customer = login(&sys.http, &sys.base, "ivan", PASSWORD).await;
    let post = |token: Option<&str>, n: u32| {
        let request = sys.http.post(sys.url("/api/v1/books")).json(&book_json(n, "Staff Pick"));
        match token {
            Some(t) => request.bearer_auth(t).send(),
            None => request.send(),
        }
    };
    assert_eq!(post(None, 1).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let forbidden = post(Some(&customer), 1).await.unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    assert_eq!(forbidden.json::<Value>().await.unwrap()["code"], "PERMISSION_DENIED");

    let promote = sys
        .http
        .patch(sys.url(&format!("/api/v1/users/{}", ivan["id"].as_str().unwrap())))
        .bearer_auth(&sys.admin)
        .json(&json!({"roles": ["staff"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(promote.status(), StatusCode::OK);
    let staff = login(&sys.http, &sys.base, "ivan", PASSWORD).await;
    assert_eq!(post(Some(&staff), 1).await.unwrap().status(), StatusCode::CREATED);
    // Reads need no token at all.
    assert_eq!(sys.http.get(sys.url("/api/v1/books")).send().await.unwrap().status(), StatusCode::OK);
}

async fn service_accounts_get_tokens_by_client_credentials(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let created = sys
        .http
        .post(sys.url("/api/v1/service-accounts"))
        .bearer_auth(&sys.admin)
        .json(&json!({"name": "recommendations", "scopes": ["books:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let account: Value = created.json().await.unwrap();
    let grant = |secret: &str, grant_type: &str| {
        sys.http
            .post(sys.url("/api/v1/auth/token"))
            .json(&json!({"grant_type": grant_type, "client_id": account["client_id"], "client_secret": secret}))
            .send()
    };
    let issued = grant(account["client_secret"].as_str().unwrap(), "client_credentials").await.unwrap();
    assert_eq!(issued.status(), StatusCode::OK);
    let body: Value = issued.json().await.unwrap();
    assert!(body.get("refresh_token").is_none(), "no refresh token for services");
    let token = body["access_token"].as_str().unwrap();
    let payload: Value =
        serde_json::from_slice(&B64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(payload["roles"], json!(["service"]));
    assert_eq!(payload["sub"], account["client_id"]);

    assert_eq!(
        sys.http.get(sys.url("/api/v1/books")).bearer_auth(token).send().await.unwrap().status(),
        StatusCode::OK
    );
    let write = sys
        .http
        .post(sys.url("/api/v1/books"))
        .bearer_auth(token)
        .json(&book_json(1, "X"))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), StatusCode::FORBIDDEN);
    assert_eq!(grant("wrong secret", "client_credentials").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(grant("x", "password").await.unwrap().status(), StatusCode::BAD_REQUEST);

    // As a standard OAuth2 client sends it (RFC 6749 §4.4): a form, the credentials in the
    // body or in HTTP Basic (each part form-encoded), never both.
    let (id, secret) = (account["client_id"].as_str().unwrap(), account["client_secret"].as_str().unwrap());
    let form = |body: String| {
        sys.http
            .post(sys.url("/api/v1/auth/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let in_body = form(format!("grant_type=client_credentials&client_id={id}&client_secret={secret}"));
    let answer: Value = in_body.send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (answer["token_type"].as_str(), answer["expires_in"].as_i64().is_some()),
        (Some("Bearer"), true)
    );
    let basic =
        form("grant_type=client_credentials".into()).basic_auth(id, Some(secret)).send().await.unwrap();
    assert_eq!(basic.status(), StatusCode::OK);
    let twice = form(format!("grant_type=client_credentials&client_id={id}")).basic_auth(id, Some(secret));
    assert_eq!(twice.send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    let wrong =
        form("grant_type=client_credentials".into()).basic_auth(id, Some("wrong")).send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["code"], "UNAUTHENTICATED", "refusals stay in the envelope: {body}");
    let by_customer =
        sys.http.post(sys.url("/api/v1/service-accounts")).json(&json!({"name": "x"})).send().await.unwrap();
    assert_eq!(by_customer.status(), StatusCode::UNAUTHORIZED);
}

async fn weak_passwords_and_duplicate_accounts_are_refused(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let attempt = |username: &str, email: &str, password: &str| {
        sys.http
            .post(sys.url("/api/v1/auth/register"))
            .json(&json!({"username": username, "email": email, "password": password, "full_name": "J Doe"}))
            .send()
    };
    for weak in ["password123", "short", "qwertyuiop123", "judy-judy-judy"] {
        let response = attempt("judy", "judy@example.com", weak).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{weak}");
        let body: Value = response.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().starts_with("password"), "{body}");
    }
    assert_eq!(attempt("judy", "not-an-email", PASSWORD).await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(attempt("judy", "judy@example.com", PASSWORD).await.unwrap().status(), StatusCode::ACCEPTED);
    let same_name = attempt("JUDY", "other@example.com", PASSWORD).await.unwrap();
    assert_eq!(same_name.status(), StatusCode::CONFLICT);
    // A taken email is answered as a sign-up that worked, and makes no second account.
    let same_email = attempt("judy2", "Judy@Example.com", PASSWORD).await.unwrap();
    assert_eq!(same_email.status(), StatusCode::ACCEPTED);
    assert_eq!(tokens(&sys, "judy2", PASSWORD).await.status(), StatusCode::UNAUTHORIZED);

    // No account and wrong password look the same.
    let wrong: Value = tokens(&sys, "judy", "not the password").await.json().await.unwrap();
    let unknown: Value = tokens(&sys, "nobody-here", "not the password").await.json().await.unwrap();
    assert_eq!((&wrong["code"], &wrong["message"]), (&unknown["code"], &unknown["message"]));
}

async fn the_jwks_is_published_at_the_well_known_path(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let response = sys.http.get(sys.url("/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let jwks: Value = response.json().await.unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(
        (&key["kty"], &key["crv"], &key["alg"], &key["use"]),
        (&json!("OKP"), &json!("Ed25519"), &json!("EdDSA"), &json!("sig"))
    );
    assert_eq!(key["kid"], jsonwebtoken::decode_header(&sys.admin).unwrap().kid.unwrap().as_str());
    assert!(key.get("d").is_none(), "no private part");
}

async fn the_last_admin_cannot_be_deleted_or_demoted(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let demote = sys
        .http
        .patch(sys.url("/api/v1/users/me"))
        .bearer_auth(&sys.admin)
        .json(&json!({"roles": ["customer"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(demote.status(), StatusCode::CONFLICT);
    let delete = sys.http.delete(sys.url("/api/v1/users/me")).bearer_auth(&sys.admin).send().await.unwrap();
    assert_eq!(delete.status(), StatusCode::CONFLICT);
    assert_eq!(me(&sys, &sys.admin).await.status(), StatusCode::OK);
}

async fn two_admins_demoting_each_other_at_once_leave_one_admin(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let admin_id =
        me(&sys, &sys.admin).await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let eve_id = register(&sys, "eve", "eve@example.com").await["id"].as_str().unwrap().to_owned();
    let set_roles = |token: String, id: String, roles: Value| {
        let request = sys
            .http
            .patch(sys.url(&format!("/api/v1/users/{id}")))
            .bearer_auth(token)
            .json(&json!({ "roles": roles }));
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(set_roles(sys.admin.clone(), eve_id.clone(), json!(["admin"])).await, StatusCode::OK);
    let eve = login(&sys.http, &sys.base, "eve", PASSWORD).await;

    let (eve_demoted, admin_demoted) = tokio::join!(
        set_roles(sys.admin.clone(), eve_id.clone(), json!(["customer"])),
        set_roles(eve.clone(), admin_id.clone(), json!(["customer"])),
    );
    let mut outcomes = [eve_demoted, admin_demoted];
    outcomes.sort();
    assert_eq!(outcomes, [StatusCode::OK, StatusCode::CONFLICT], "one demotion wins, the other is refused");
    // Whoever won is still an admin, and can prove it.
    let winner = if eve_demoted == StatusCode::OK { &sys.admin } else { &eve };
    let users = sys.http.get(sys.url("/api/v1/users")).bearer_auth(winner).send().await.unwrap();
    assert_eq!(users.status(), StatusCode::OK);
    let admins: Vec<Value> = users.json::<Value>().await.unwrap()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["roles"].as_array().unwrap().contains(&json!("admin")))
        .cloned()
        .collect();
    assert_eq!(admins.len(), 1, "exactly one admin remains: {admins:?}");
}

async fn a_password_change_ends_every_session(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    register(&sys, "kim", "kim@example.com").await;
    let laptop: Value = tokens(&sys, "kim", PASSWORD).await.json().await.unwrap();
    let stolen: Value = tokens(&sys, "kim", PASSWORD).await.json().await.unwrap();
    let changed = sys
        .http
        .patch(sys.url("/api/v1/users/me"))
        .bearer_auth(laptop["access_token"].as_str().unwrap())
        .json(&json!({"new_password": "fresh meadow quantum kettle", "current_password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    for session in [&laptop, &stolen] {
        let renewed = refresh(&sys, session["refresh_token"].as_str().unwrap()).await;
        assert_eq!(renewed.status(), StatusCode::UNAUTHORIZED, "sessions from before the change are over");
    }
    assert_eq!(tokens(&sys, "kim", PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(tokens(&sys, "kim", "fresh meadow quantum kettle").await.status(), StatusCode::OK);
}

/// A login from `forwarded_for` as a proxy would send it.
async fn tokens_via(sys: &System, username: &str, forwarded_for: &str) -> reqwest::Response {
    sys.http
        .post(sys.url("/api/v1/auth/login"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"username": username, "password": "guess guess guess"}))
        .send()
        .await
        .unwrap()
}

async fn the_address_limit_believes_forwarded_for_only_from_trusted_proxies(backend: Backend) {
    // Untrusted (the default): a spoofed X-Forwarded-For does not escape the address limit.
    let Some(sys) = System::start_with(backend, false, |c| c.users.login_failures_per_address = 2).await
    else {
        return;
    };
    for (name, spoof) in [("ivan", "198.51.100.1"), ("judy", "198.51.100.2")] {
        assert_eq!(tokens_via(&sys, name, spoof).await.status(), StatusCode::UNAUTHORIZED);
    }
    let spoofed = tokens_via(&sys, "mallory", "198.51.100.3").await;
    assert_eq!(spoofed.status(), StatusCode::TOO_MANY_REQUESTS, "the peer address is what counts");
    drop(sys);

    // Behind a trusted proxy (the test client, on loopback), each forwarded client has its own.
    let Some(sys) = System::start_with(backend, false, |c| {
        c.users.login_failures_per_address = 2;
        c.gateway.trusted_proxies = "127.0.0.1/32, ::1".into();
    })
    .await
    else {
        return;
    };
    for name in ["ivan", "judy"] {
        assert_eq!(tokens_via(&sys, name, "198.51.100.1").await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(tokens_via(&sys, "mallory", "198.51.100.1").await.status(), StatusCode::TOO_MANY_REQUESTS);
    let other = tokens_via(&sys, "mallory", "198.51.100.2").await;
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED, "another client behind the proxy is not locked out");
}
