//! The fulfillment service's configuration section, `[fulfillment]`.

bookstore_platform::settings! {
    /// The fulfillment service's settings.
    pub struct Settings in "fulfillment" as grpc_service(
        port = 50054, grpc = fulfillment_grpc, url = fulfillment_url, database_url = fulfillment_database_url,
        advertise_addr = fulfillment_advertise_addr, weight = fulfillment_weight
    ), validate(check) {
        /// The newest queue changes kept for clients that resume (at least 1000).
        change_history: u32 = crate::store::DEFAULT_HISTORY, flag fulfillment_change_history "N";
    }
}

fn check(s: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        s.change_history >= 1000,
        "invalid configuration: fulfillment_change_history must be at least 1000"
    );
    Ok(())
}
