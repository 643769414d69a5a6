//! The orders service's configuration section, `[orders]`.

bookstore_platform::settings! {
    /// The orders service's settings.
    pub struct Settings in "orders" as grpc_service(
        port = 50053, grpc = orders_grpc, url = orders_url, database_url = orders_database_url,
        advertise_addr = orders_advertise_addr, weight = orders_weight
    ) {
        /// The orders service account's client id, when orders runs apart from users.
        client_id: Option<String> = None, flag orders_client_id "ID";
        /// The orders service account's secret, when orders runs apart from users.
        client_secret: Option<String> = None, secret orders_client_secret "SECRET";
    }
}
