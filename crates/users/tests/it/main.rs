//! Integration tests of the users service's storage and keys, on each backend.

use bookstore_platform::auth::Role;
use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;
use bookstore_platform::testing::TestDatabase;
use bookstore_users::crypto::MasterKey;
use bookstore_users::domain::{Address, Email, FullName, Password, Username};
use bookstore_users::{MIGRATIONS, Users, UsersConfig};

backend_tests!(
    rotating_the_master_key_keeps_every_account_readable,
    a_wrong_master_key_stops_the_start_with_a_clear_message,
    the_first_admin_is_created_once,
    racing_refreshes_of_one_token_leave_no_live_session,
    an_update_based_on_a_stale_read_is_refused,
    two_admins_demoting_each_other_at_once_leave_one_admin,
    roles_stored_as_text_before_the_role_table_are_found_by_exact_match_after_it,
    service_accounts_made_before_scopes_keep_what_they_could_do,
    a_provisioned_service_account_is_created_once_follows_its_secret_and_stays_revoked,
);

async fn users_with(db: &TestDatabase, master: &str) -> anyhow::Result<Users> {
    // Users' own tables, and the outbox its revocations go through.
    let pool = bookstore_platform::db::Database::connect(&db.url, &Default::default()).await.unwrap();
    pool.migrate_all(&[&MIGRATIONS, &bookstore_platform::events::OUTBOX_MIGRATIONS]).await.unwrap();
    Users::new(
        pool,
        MasterKey::from_base64(master).unwrap(),
        UsersConfig { hash_concurrency: 2, ..Default::default() },
    )
    .await
}

async fn add_ada(users: &Users) -> String {
    users
        .create(
            &Username::parse("ada").unwrap(),
            &Email::parse("ada@example.com").unwrap(),
            &FullName::parse("Ada Lovelace").unwrap(),
            &Address::parse("12 St James's Square").unwrap(),
            &Password::parse("analytical engine punch cards", &[]).unwrap(),
            &[bookstore_platform::auth::Role::Customer],
        )
        .await
        .unwrap()
        .id
}

async fn rotating_the_master_key_keeps_every_account_readable(backend: Backend) {
    let Some(db) = TestDatabase::new(backend).await else { return };
    let (old, new) = (MasterKey::generate_base64(), MasterKey::generate_base64());
    let users = users_with(&db, &old).await.unwrap();
    let id = add_ada(&users).await;
    let kid_before = users.keyring.current_signing_key().unwrap().kid;

    let count = bookstore_users::keys::rotate_master_key(
        &users.store,
        &MasterKey::from_base64(&old).unwrap(),
        &MasterKey::from_base64(&new).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(count, 3, "data key, blind-index key, one signing key");

    let reopened = users_with(&db, &new).await.unwrap();
    let row = reopened.store.get_user(&id).await.unwrap().unwrap();
    let ada = reopened.decrypt(&row).unwrap();
    assert_eq!((ada.email.as_str(), ada.full_name.as_str()), ("ada@example.com", "Ada Lovelace"));
    assert_eq!(
        reopened.keyring.current_signing_key().unwrap().kid,
        kid_before,
        "same signing key, re-wrapped"
    );
    let found = reopened
        .store
        .find_by_email_index(&reopened.keyring.blind_index.email("ada@example.com"))
        .await
        .unwrap();
    assert_eq!(found.map(|r| r.id), Some(id), "the blind index still finds her");

    let err = users_with(&db, &old).await.err().expect("the old key no longer opens the keyring");
    assert!(format!("{err:#}").contains("master key"), "{err:#}");
}

async fn a_wrong_master_key_stops_the_start_with_a_clear_message(backend: Backend) {
    let Some(db) = TestDatabase::new(backend).await else { return };
    users_with(&db, &MasterKey::generate_base64()).await.unwrap();
    let err = users_with(&db, &MasterKey::generate_base64()).await.err().unwrap();
    let message = format!("{err:#}");
    assert!(
        message.contains("was wrapped by master key") && message.contains("configured master key"),
        "{message}"
    );
}

async fn the_first_admin_is_created_once(backend: Backend) {
    let Some(db) = TestDatabase::new(backend).await else { return };
    let users = users_with(&db, &MasterKey::generate_base64()).await.unwrap();
    let generated = users.ensure_admin(None).await.unwrap().expect("a generated password");
    assert!(generated.len() >= 40);
    assert_eq!(users.ensure_admin(None).await.unwrap(), None, "an admin exists now");
    assert_eq!(users.store.count_with_role(Role::Admin).await.unwrap(), 1);
    let admin = users.store.find_by_username("admin").await.unwrap().unwrap();
    let ok = users.hasher.verify(&Password::unchecked(&generated), Some(&admin.password_hash)).await.unwrap();
    assert!(ok, "the generated password signs in");

    let weak = TestDatabase::new(backend).await.unwrap();
    let users = users_with(&weak, &MasterKey::generate_base64()).await.unwrap();
    let err = users.ensure_admin(Some("admin")).await.unwrap_err();
    assert!(err.to_string().contains("BOOKSTORE_ADMIN_PASSWORD"), "{err}");
}

async fn racing_refreshes_of_one_token_leave_no_live_session(backend: Backend) {
    use bookstore_users::store::Refresh;
    let Some(db) = TestDatabase::new(backend).await else { return };
    let users = users_with(&db, &MasterKey::generate_base64()).await.unwrap();
    let id = add_ada(&users).await;
    let far = bookstore_platform::clock::now_ms() + 3_600_000;
    users.store.start_session(&id, "t0", far).await.unwrap();

    // The owner and a thief spend the same token at once.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = users.store.clone();
            tokio::spawn(async move { store.rotate_refresh("t0", &format!("t1-{i}"), far).await.unwrap() })
        })
        .collect();
    let mut rotated = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Refresh::Rotated { .. } => rotated.push(i),
            Refresh::Reused { .. } | Refresh::Revoked => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(rotated.len() <= 1, "at most one winner: {rotated:?}");
    // Whoever won, the reuse ended the session: the winner's new token is dead too.
    for i in rotated {
        let next = users.store.rotate_refresh(&format!("t1-{i}"), "t2", far).await.unwrap();
        assert_eq!(next, Refresh::Revoked);
    }
}

async fn an_update_based_on_a_stale_read_is_refused(backend: Backend) {
    let Some(db) = TestDatabase::new(backend).await else { return };
    let users = users_with(&db, &MasterKey::generate_base64()).await.unwrap();
    let id = add_ada(&users).await;
    let read_by_a = users.store.get_user(&id).await.unwrap().unwrap();
    let read_by_b = read_by_a.clone();

    let mut demoted = read_by_a;
    demoted.roles = "staff".into();
    assert!(users.store.update_user(&demoted, false).await.unwrap(), "the first writer wins");
    let mut stale = read_by_b;
    stale.address_ct = stale.address_ct.clone();
    assert!(
        !users.store.update_user(&stale, false).await.unwrap(),
        "the second, based on the old version, is refused"
    );
    assert_eq!(users.store.get_user(&id).await.unwrap().unwrap().roles, "staff");
}

async fn two_admins_demoting_each_other_at_once_leave_one_admin(backend: Backend) {
    use bookstore_users::store::StoreError;
    let Some(db) = TestDatabase::new(backend).await else { return };
    let users = users_with(&db, &MasterKey::generate_base64()).await.unwrap();
    let template = users.store.get_user(&add_ada(&users).await).await.unwrap().unwrap();
    for round in 0..10 {
        let admin = |name: &str| {
            let mut row = template.clone();
            row.id = format!("{name}-{round}");
            row.username = format!("{name}{round}");
            row.email_bidx = format!("{name}-{round}-bidx");
            row.roles = "admin".into();
            row
        };
        let (a, b) = (admin("a"), admin("b"));
        users.store.insert_user(&a).await.unwrap();
        users.store.insert_user(&b).await.unwrap();
        let demote = |row: &bookstore_users::store::UserRow| {
            let mut row = row.clone();
            row.roles = "customer".into();
            row
        };
        let (da, db_) = (demote(&a), demote(&b));
        let (first, second) =
            tokio::join!(users.store.update_user(&da, true), users.store.update_user(&db_, true));
        let wins = [&first, &second].iter().filter(|r| matches!(r, Ok(true))).count();
        let refusals = [&first, &second].iter().filter(|r| matches!(r, Err(StoreError::LastAdmin))).count();
        assert_eq!((wins, refusals), (1, 1), "round {round}: {first:?} {second:?}");
        // Demote the survivor unguarded, so the next round starts with no admin again.
        let survivor = if matches!(first, Ok(true)) { &b } else { &a };
        let mut survivor = users.store.get_user(&survivor.id).await.unwrap().unwrap();
        assert_eq!(survivor.roles, "admin");
        survivor.roles = "customer".into();
        assert!(users.store.update_user(&survivor, false).await.unwrap());
    }
}

/// A database from before `user_roles` (roles only as comma-joined text) is migrated: every
/// role of every user becomes a row, and `sysadmin`-like text cannot match `admin`.
async fn roles_stored_as_text_before_the_role_table_are_found_by_exact_match_after_it(backend: Backend) {
    let Some(db) = TestDatabase::new(backend).await else { return };
    let pool = migrated_before(&db, backend, 3).await;
    for (id, roles) in [("u1", "customer"), ("u2", "staff,admin"), ("u3", "admin"), ("u4", "customer,staff")]
    {
        sqlx::query(
            "INSERT INTO users (id, username, email_bidx, email_ct, full_name_ct, address_ct, dek_id, \
             password_hash, roles, created_at, updated_at) VALUES ($1, $1, $1, $2, $2, $2, 'k', 'h', $3, 0, 0)",
        )
        .bind(id)
        .bind(vec![0u8])
        .bind(roles)
        .execute(pool.pool())
        .await
        .unwrap();
    }
    pool.migrate(&MIGRATIONS).await.unwrap();
    let store = bookstore_users::store::UserStore::new(pool);
    assert_eq!(store.count_with_role(Role::Admin).await.unwrap(), 2);
    assert_eq!(store.count_with_role(Role::Staff).await.unwrap(), 2);
    assert_eq!(store.count_with_role(Role::Customer).await.unwrap(), 2);
    assert_eq!(store.count_with_role(Role::Service).await.unwrap(), 0);
}

async fn service_accounts_made_before_scopes_keep_what_they_could_do(backend: Backend) {
    let Some(db) = TestDatabase::new(backend).await else { return };
    let pool = migrated_before(&db, backend, 4).await;
    sqlx::query("INSERT INTO service_accounts (client_id, name, secret_hash, created_at) VALUES ('svc-old', 'orders', 'h', 0)")
        .execute(pool.pool())
        .await
        .unwrap();
    pool.migrate(&MIGRATIONS).await.unwrap();
    let store = bookstore_users::store::UserStore::new(pool);
    store.insert_service_account("svc-new", "reader", "h", &["books:read".to_owned()]).await.unwrap();
    let scopes = |id: &str| {
        let store = store.clone();
        let id = id.to_owned();
        async move { store.live_service_account(&id).await.unwrap().unwrap().1 }
    };
    assert_eq!(
        scopes("svc-old").await,
        ["books:read", "books:reserve"],
        "what a service account could do before"
    );
    assert_eq!(scopes("svc-new").await, ["books:read"], "a new one gets what it is granted");
}

async fn a_provisioned_service_account_is_created_once_follows_its_secret_and_stays_revoked(
    backend: Backend,
) {
    use bookstore_users::accounts::{Provisioned, provision_service_account};
    use bookstore_users::crypto::sha256_hex;
    let Some(db) = TestDatabase::new(backend).await else { return };
    let users = users_with(&db, &MasterKey::generate_base64()).await.unwrap();
    let store = &users.store;
    let name = FullName::parse("orders").unwrap();
    let scopes = ["books:read".to_owned(), "books:reserve".to_owned()];
    let (first, second) = ("a".repeat(40), "b".repeat(40));
    let provision = |secret: &str, scopes: &[String]| {
        let (secret, scopes) = (secret.to_owned(), scopes.to_vec());
        let name = name.clone();
        async move { provision_service_account(store, "svc-orders", &name, &secret, &scopes).await }
    };

    // Revocations waiting in the outbox for the bus.
    let revocations = || async {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(store.database().pool())
            .await
            .unwrap();
        count
    };
    assert_eq!(provision(&first, &scopes).await.unwrap(), Provisioned::Created);
    assert_eq!(provision(&first, &scopes).await.unwrap(), Provisioned::Unchanged, "again: nothing to do");
    let live = store.live_service_account("svc-orders").await.unwrap().unwrap();
    assert_eq!(live, (sha256_hex(&first), scopes.to_vec()), "the secret's hash and the scopes");

    assert_eq!(provision(&second, &scopes[..1]).await.unwrap(), Provisioned::Updated);
    let live = store.live_service_account("svc-orders").await.unwrap().unwrap();
    assert_eq!(
        live,
        (sha256_hex(&second), vec!["books:read".to_owned()]),
        "a rotation and a scope change apply"
    );
    assert_eq!(store.service_accounts().await.unwrap().len(), 1, "still one account");
    assert_eq!(revocations().await, 1, "a scope taken away ends the tokens that carried it");
    let third = "c".repeat(40);
    assert_eq!(provision(&third, &scopes).await.unwrap(), Provisioned::Updated);
    assert_eq!(revocations().await, 1, "a rotation that widens nothing leaves tokens be");

    let short = provision("too short", &scopes).await.unwrap_err().to_string();
    assert!(short.contains("at least 32"), "{short}");
    let unknown = provision(&first, &["books:everything".to_owned()]).await.unwrap_err().to_string();
    assert!(unknown.contains("no scope \"books:everything\""), "{unknown}");

    store.revoke_service_account("svc-orders").await.unwrap().unwrap();
    let revoked = provision(&first, &scopes).await.unwrap_err().to_string();
    assert!(revoked.contains("was revoked"), "{revoked}");
    assert!(store.live_service_account("svc-orders").await.unwrap().is_none(), "revoked stays revoked");
}

/// `db` with users' migrations before `version` applied, as a database of an older release.
async fn migrated_before(
    db: &TestDatabase,
    backend: Backend,
    version: i64,
) -> bookstore_platform::db::Database {
    let pool = bookstore_platform::db::Database::connect(&db.url, &Default::default()).await.unwrap();
    let full = match backend {
        Backend::Postgres => &MIGRATIONS.postgres,
        Backend::Sqlite => &MIGRATIONS.sqlite,
    };
    let before = sqlx::migrate::Migrator {
        migrations: full
            .migrations
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(pool.pool()).await.unwrap();
    pool
}
