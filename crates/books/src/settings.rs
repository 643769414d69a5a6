//! The books service's configuration section, `[books]`.

bookstore_platform::settings! {
    /// The books service's settings.
    pub struct Settings in "books" as grpc_service(
        port = 50051, grpc = books_grpc, url = books_url, database_url = books_database_url,
        advertise_addr = books_advertise_addr, weight = books_weight
    ), validate(check) {
        /// How long a book may be served from a process's own cache, ms; 0 turns that tier off.
        cache_ttl_ms: u64 = 1000, flag books_cache_ttl_ms "MS";
        /// Redis (redis://...) holding a read cache shared by every books replica, evicted on write.
        redis_url: Option<String> = None, flag books_redis_url "URL";
        /// How long a book stays in the shared cache, ms (evictions on write make it fresh sooner).
        redis_cache_ttl_ms: u64 = 60_000, flag books_redis_cache_ttl_ms "MS";
        /// The start of every key and channel books uses in Redis.
        redis_key_prefix: String = "bookstore".to_owned(), flag books_redis_key_prefix "PREFIX";
        /// Load the starter catalog into an empty catalog [default: yes for up, no for serve]
        seed: Option<bool> = None, env seed "BOOL";
    }
}

fn check(s: &Settings) -> anyhow::Result<()> {
    if let Some(url) = &s.redis_url {
        bookstore_platform::settings::check_url("books_redis_url", url, &["redis", "rediss"])?;
        anyhow::ensure!(
            s.redis_cache_ttl_ms > 0,
            "invalid configuration: books_redis_cache_ttl_ms must be above 0"
        );
    }
    Ok(())
}
