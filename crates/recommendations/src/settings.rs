//! The recommendations service's configuration section, `[recommendations]`.

bookstore_platform::settings! {
    /// The recommendations service's settings.
    pub struct Settings in "recommendations" as grpc_service(
        port = 50055, grpc = recommendations_grpc, url = recommendations_url,
        database_url = recommendations_database_url,
        advertise_addr = recommendations_advertise_addr, weight = recommendations_weight
    ) {
        /// The recommendations service account's client id, when it runs apart from users.
        client_id: Option<String> = None, flag recommendations_client_id "ID";
        /// The recommendations service account's secret, when it runs apart from users.
        client_secret: Option<String> = None, secret recommendations_client_secret "SECRET";
        /// How long answers that are the same for every caller are kept, ms; 0 keeps none.
        cache_ttl_ms: u64 = 5000, flag recommendations_cache_ttl_ms "MS";
    }
}
