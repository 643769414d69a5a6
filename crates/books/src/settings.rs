//! The books service's configuration section, `[books]`.

bookstore_platform::settings! {
    /// The books service's settings.
    pub struct Settings in "books" as grpc_service(
        port = 50051, grpc = books_grpc, url = books_url, database_url = books_database_url,
        advertise_addr = books_advertise_addr, weight = books_weight
    ) {
        /// How long a cached book may be served, ms; 0 turns the cache off.
        cache_ttl_ms: u64 = 1000, flag books_cache_ttl_ms "MS";
        /// Load the starter catalog into an empty catalog [default: yes for up, no for serve]
        seed: Option<bool> = None, env seed "BOOL";
    }
}
