//! The books service's configuration section, `[books]`.

use std::net::SocketAddr;

bookstore_platform::settings! {
    /// The books service's settings.
    pub struct Settings in "books", validate = check {
        /// Where the books service listens for gRPC.
        grpc: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 50051)), flag books_grpc "ADDR";
        /// URL of a books service elsewhere [default: http://<books_grpc>]
        url: Option<String> = None, flag books_url "URL";
        /// Books database, postgres://... or sqlite:... [default: <data-dir>/books.db]
        database_url: Option<String> = None, flag books_database_url "URL";
        /// How long a cached book may be served, ms; 0 turns the cache off.
        cache_ttl_ms: u64 = 1000, flag books_cache_ttl_ms "MS";
        /// Load the starter catalog into an empty catalog [default: yes for up, no for serve]
        seed: Option<bool> = None, env seed "BOOL";
    }
}

fn check(settings: &Settings) -> anyhow::Result<()> {
    if let Some(url) = &settings.url {
        bookstore_platform::settings::check_url("books_url", url, &["http", "https"])?;
    }
    if let Some(url) = &settings.database_url {
        bookstore_platform::settings::check_url(
            "books_database_url",
            url,
            &["postgres", "postgresql", "sqlite"],
        )?;
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
