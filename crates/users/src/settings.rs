//! The users service's configuration section, `[users]`. (The master key is the process's:
//! `master_key`, `master_key_file`.)

use std::time::Duration;

bookstore_platform::settings! {
    /// The users service's settings.
    pub struct Settings in "users" as grpc_service(
        port = 50052, grpc = users_grpc, url = users_url, database_url = users_database_url,
        advertise_addr = users_advertise_addr, weight = users_weight
    ), validate(check) {
        /// The first admin's password, used only when there is no admin yet [default: generated, shown once]
        admin_password: Option<String> = None, secret admin_password "PASSWORD";
        /// Access-token lifetime, s.
        access_token_ttl_secs: u64 = 15 * 60, flag access_token_ttl_secs "SECS";
        /// Refresh-token lifetime, s.
        refresh_token_ttl_secs: u64 = 30 * 24 * 3600, flag refresh_token_ttl_secs "SECS";
        /// How often users rereads its signing keys, ms.
        signing_key_reload_ms: u64 = 30_000, flag signing_key_reload_ms "MS";
        /// How long a new signing key is published before it signs, s.
        signing_key_publish_ahead_secs: u64 = 120, flag signing_key_publish_ahead_secs "SECS";
        /// Failed logins at one account from one client address before that address waits (429).
        login_failures_per_account: u32 = 5, flag login_failures_per_account "N";
        /// Failed logins from one client address, across accounts, before it waits (429).
        login_failures_per_address: u32 = 20, flag login_failures_per_address "N";
        /// Failed logins at one account from every address before addresses new to it wait.
        login_failures_per_account_everywhere: u32 = 100, flag login_failures_per_account_everywhere "N";
        /// The first wait past a login limit, ms; it doubles with each further failure.
        login_first_delay_ms: u64 = 5_000, flag login_first_delay_ms "MS";
        /// How long failed logins are remembered after the last one (and the longest wait), s.
        login_failure_window_secs: u64 = 15 * 60, flag login_failure_window_secs "SECS";
        /// The most accounts and addresses the login throttle remembers at once (memory bound).
        login_throttle_capacity: u64 = 100_000, flag login_throttle_capacity "N";
        /// Sign-ups per client address per registration window (0: no limit).
        registrations_per_address: u32 = 10, flag registrations_per_address "N";
        /// The registration window, s.
        registration_window_secs: u64 = 3600, flag registration_window_secs "SECS";
    }
}

fn check(s: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        (60..=24 * 3600).contains(&s.access_token_ttl_secs),
        "invalid configuration: access_token_ttl_secs must be between 60 and 86400"
    );
    anyhow::ensure!(
        s.login_failures_per_account >= 1
            && s.login_failures_per_address >= 1
            && s.login_failures_per_account_everywhere >= 1,
        "invalid configuration: login_failures_per_account, login_failures_per_address and \
         login_failures_per_account_everywhere must be at least 1"
    );
    anyhow::ensure!(
        s.login_throttle_capacity >= 100,
        "invalid configuration: login_throttle_capacity must be at least 100"
    );
    Ok(())
}

impl Settings {
    /// The service's runtime settings.
    pub fn users_config(&self) -> crate::UsersConfig {
        crate::UsersConfig {
            access_ttl: Duration::from_secs(self.access_token_ttl_secs),
            refresh_ttl: Duration::from_secs(self.refresh_token_ttl_secs),
            limits: crate::throttle::Limits {
                per_account: self.login_failures_per_account,
                per_address: self.login_failures_per_address,
                per_account_everywhere: self.login_failures_per_account_everywhere,
                window: Duration::from_secs(self.login_failure_window_secs),
                first_delay: Duration::from_millis(self.login_first_delay_ms),
                capacity: self.login_throttle_capacity,
            },
            registrations_per_address: self.registrations_per_address,
            registration_window: Duration::from_secs(self.registration_window_secs.max(1)),
            signing_key_reload: Duration::from_millis(self.signing_key_reload_ms.max(10)),
            ..Default::default()
        }
    }
}
