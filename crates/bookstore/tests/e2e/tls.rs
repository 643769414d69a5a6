//! HTTPS at the gateway: a real handshake with a certificate from `admin dev-certs`, HSTS on
//! every answer, and a renewed certificate served without a restart. Mutual TLS between the
//! services: a checkout crosses every hop over it, and a caller without the deployment's
//! certificate is refused at the handshake.

use std::path::Path;
use std::time::Duration;

use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;
use reqwest::StatusCode;

use crate::{System, admin_buys_the_first_book, https_client, until};

backend_tests!(
    the_gateway_serves_https_with_hsts_and_a_renewed_certificate_without_a_restart,
    services_speak_mutual_tls_and_refuse_a_caller_without_the_deployments_certificate,
);

/// Copies a certificate pair over the one in service, each file replaced whole (as a secret
/// volume or certbot does).
fn install(from: &Path, to: &Path) {
    for name in ["server.pem", "server-key.pem"] {
        let staged = to.join(format!(".{name}.new"));
        std::fs::copy(from.join(name), &staged).unwrap();
        std::fs::rename(&staged, to.join(name)).unwrap();
    }
}

async fn the_gateway_serves_https_with_hsts_and_a_renewed_certificate_without_a_restart(backend: Backend) {
    let (live, renewed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    bookstore_platform::tls::dev_certs(live.path(), &[]).unwrap();
    let (cert, key) = (live.path().join("server.pem"), live.path().join("server-key.pem"));
    let Some(sys) = System::start_with(backend, true, |c| {
        c.gateway.tls_cert_file = Some(cert.clone());
        c.gateway.tls_key_file = Some(key.clone());
    })
    .await
    else {
        return;
    };
    assert!(sys.base.starts_with("https://"));
    let answer = sys.http.get(sys.url("/api/v1/books")).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK, "the admin signed in and the catalog reads over TLS");
    let hsts = answer.headers()["strict-transport-security"].to_str().unwrap();
    assert!(hsts.starts_with("max-age=31536000"), "browsers keep to HTTPS for a year: {hsts}");

    // Plain HTTP on the TLS port gets no answer it could mistake for one.
    let plain =
        reqwest::Client::new().get(sys.url("/api/v1/books").replace("https://", "http://")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // A renewed certificate, from another CA: served from the next connection on.
    bookstore_platform::tls::dev_certs(renewed.path(), &[]).unwrap();
    install(renewed.path(), live.path());
    let trusts_renewed = https_client(&renewed.path().join("ca.pem"));
    until("the renewed certificate to be served", Duration::from_secs(20), || async {
        trusts_renewed.get(sys.url("/api/v1/books")).send().await.is_ok_and(|a| a.status() == StatusCode::OK)
    })
    .await;
    let trusts_old = https_client(&live.path().join("ca.pem"));
    assert!(trusts_old.get(sys.url("/api/v1/books")).send().await.is_err(), "the old certificate is gone");
}

/// Whether the books service at `url` answers a health check from a client with `tls`.
async fn answers(url: &str, tls: Option<std::sync::Arc<rustls::ClientConfig>>) -> bool {
    use bookstore_platform::balance::{PeerChannel, ResilienceConfig};
    use tonic_health::pb::health_client::HealthClient;
    let channel = PeerChannel::connect("test", "books", url, ResilienceConfig::default(), tls).await.unwrap();
    let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
    HealthClient::new(channel).check(request).await.is_ok()
}

async fn services_speak_mutual_tls_and_refuse_a_caller_without_the_deployments_certificate(backend: Backend) {
    use bookstore_platform::tls::Mutual;
    let (certs, strangers) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    bookstore_platform::tls::dev_certs(certs.path(), &[]).unwrap();
    bookstore_platform::tls::dev_certs(strangers.path(), &[]).unwrap();
    let file = |dir: &Path, name: &str| dir.join(name);
    let Some(sys) = System::start_with(backend, true, |c| {
        c.process.mtls_cert_file = Some(file(certs.path(), "server.pem"));
        c.process.mtls_key_file = Some(file(certs.path(), "server-key.pem"));
        c.process.mtls_ca_file = Some(file(certs.path(), "ca.pem"));
    })
    .await
    else {
        return;
    };
    // The admin signed in (gateway → users, and the gateway's keys from users); a checkout goes
    // gateway → orders → books and users.
    admin_buys_the_first_book(&sys).await;

    // Straight to the books service's port.
    let ours = Mutual::load(
        &file(certs.path(), "server.pem"),
        &file(certs.path(), "server-key.pem"),
        &file(certs.path(), "ca.pem"),
    )
    .unwrap();
    assert!(answers(&sys.books_base, Some(ours.client)).await, "a caller with the deployment's certificate");
    assert!(!answers(&sys.books_base, None).await, "a caller in plain text");
    let stranger = Mutual::load(
        &file(strangers.path(), "server.pem"),
        &file(strangers.path(), "server-key.pem"),
        &file(certs.path(), "ca.pem"),
    )
    .unwrap();
    assert!(
        !answers(&sys.books_base, Some(stranger.client)).await,
        "a caller whose certificate another CA signed"
    );
}
