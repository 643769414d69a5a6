//! The gateway's configuration section, `[gateway]`.

use std::net::SocketAddr;

bookstore_platform::settings! {
    /// The gateway's settings.
    pub struct Settings in "gateway", validate(check) {
        /// Where the gateway listens for HTTP (the public API, docs and pages).
        http: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)), flag http "ADDR";
        /// The largest JSON body accepted, in bytes; larger gets 413.
        max_body_bytes: usize = 64 * 1024, flag max_body_bytes "BYTES";
        /// Comma-separated origins allowed by CORS; empty turns CORS off.
        cors_allowed_origins: String = String::new(), flag cors_allowed_origins "ORIGINS";
        /// Comma-separated addresses or CIDRs of proxies whose X-Forwarded-For is believed.
        trusted_proxies: String = String::new(), flag trusted_proxies "CIDRS";
        /// Requests a client (token subject, else address) may make per window; 0 turns it off.
        rate_limit_requests: u32 = 6_000, flag rate_limit_requests "N";
        /// The rate limit's window, seconds.
        rate_limit_window_secs: u64 = 60, flag rate_limit_window_secs "SECS";
        /// Requests in flight at once; more are refused at once with 503.
        concurrency_limit: usize = 4_096, flag concurrency_limit "N";
        /// Redis (redis://...) that keeps rate-limit counts shared by every gateway replica.
        redis_url: Option<String> = None, flag redis_url "URL";
        /// What the gateway's Redis keys start with (one prefix per deployment sharing a Redis).
        redis_key_prefix: String = "bookstore".to_owned(), flag redis_key_prefix "PREFIX";
        /// Live connections one user may hold open at once: queue sockets and order event streams.
        queue_sockets_per_user: usize = crate::live::SOCKETS_PER_USER, flag queue_sockets_per_user "N";
        /// How long the gateway keeps a book's recommendations as it sent them, ms; 0 keeps none.
        recommendations_edge_cache_ms: u64 = 1000, flag recommendations_edge_cache_ms "MS";
        /// How long a recommendations call may take before the page gets the fallback, ms.
        recommendations_budget_ms: u64 = crate::recommendations::BUDGET.as_millis() as u64, flag recommendations_budget_ms "MS";
        /// PEM certificate chain: with tls_key_file, the gateway serves HTTPS (HTTP/2 and 1.1) on its
        /// port, reloading both files when they change.
        tls_cert_file: Option<std::path::PathBuf> = None, flag tls_cert_file "FILE";
        /// The PEM private key of tls_cert_file.
        tls_key_file: Option<std::path::PathBuf> = None, flag tls_key_file "FILE";
        /// `Strict-Transport-Security: max-age` sent on answers to requests that came over TLS (to
        /// the gateway, or to a trusted proxy saying `X-Forwarded-Proto: https`), seconds; 0 sends none.
        hsts_max_age_secs: u64 = 31_536_000, flag hsts_max_age_secs "SECS";
        /// Pass-through routes ([[gateway.routes]] tables: prefix, strip_prefix, backends).
        routes: Vec<crate::proxy::Route> = Vec::new(), file routes "TABLES";
    }
}

fn check(s: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        s.recommendations_budget_ms >= 10,
        "invalid configuration: recommendations_budget_ms must be at least 10"
    );
    anyhow::ensure!(s.max_body_bytes >= 1024, "invalid configuration: max_body_bytes must be at least 1024");
    crate::cors_layer(&s.cors_origins())?;
    s.trusted_proxies()?;
    anyhow::ensure!(
        s.rate_limit_window_secs >= 1,
        "invalid configuration: rate_limit_window_secs must be at least 1"
    );
    anyhow::ensure!(s.concurrency_limit >= 1, "invalid configuration: concurrency_limit must be at least 1");
    if let Some(url) = &s.redis_url {
        bookstore_platform::settings::check_url("redis_url", url, &["redis", "rediss"])?;
    }
    crate::proxy::check_routes(&s.routes)?;
    anyhow::ensure!(
        s.tls_cert_file.is_some() == s.tls_key_file.is_some(),
        "invalid configuration: tls_cert_file and tls_key_file go together"
    );
    Ok(())
}

impl Settings {
    /// The trusted proxies; a bare address is a one-address network.
    pub fn trusted_proxies(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "invalid configuration: trusted_proxies: {s:?} is not an address or CIDR"
                        )
                    })
            })
            .collect()
    }

    pub fn cors_origins(&self) -> Vec<String> {
        self.cors_allowed_origins
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl bookstore_platform::service::Endpoint for Settings {
    fn listen(&self) -> SocketAddr {
        self.http
    }
}
