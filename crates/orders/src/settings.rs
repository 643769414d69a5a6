//! The orders service's configuration section, `[orders]`.

use std::net::SocketAddr;

bookstore_platform::settings! {
    /// The orders service's settings.
    pub struct Settings in "orders", validate = check {
        /// Where the orders service listens for gRPC.
        grpc: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 50053)), flag orders_grpc "ADDR";
        /// URL of an orders service elsewhere [default: http://<orders_grpc>]
        url: Option<String> = None, flag orders_url "URL";
        /// Orders database, postgres://... or sqlite:... [default: <data-dir>/orders.db]
        database_url: Option<String> = None, flag orders_database_url "URL";
        /// The orders service account's client id, when orders runs apart from users.
        client_id: Option<String> = None, flag orders_client_id "ID";
        /// The orders service account's secret, when orders runs apart from users.
        client_secret: Option<String> = None, secret orders_client_secret "SECRET";
    }
}

fn check(s: &Settings) -> anyhow::Result<()> {
    use bookstore_platform::settings::check_url;
    if let Some(url) = &s.url {
        check_url("orders_url", url, &["http", "https"])?;
    }
    if let Some(url) = &s.database_url {
        check_url("orders_database_url", url, &["postgres", "postgresql", "sqlite"])?;
    }
    Ok(())
}

impl bookstore_platform::service::Endpoint for Settings {
    fn listen(&self) -> SocketAddr {
        self.grpc
    }
    fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }
    fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }
}
