//! The fulfillment service's configuration section, `[fulfillment]`.

bookstore_platform::settings! {
    /// The fulfillment service's settings.
    pub struct Settings in "fulfillment" as grpc_service(
        port = 50054, grpc = fulfillment_grpc, url = fulfillment_url, database_url = fulfillment_database_url,
        advertise_addr = fulfillment_advertise_addr, weight = fulfillment_weight
    ) {
    }
}
