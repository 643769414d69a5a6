//! The fulfillment service's configuration section, `[fulfillment]`.

bookstore_platform::settings! {
    /// The fulfillment service's settings.
    pub struct Settings in "fulfillment" as grpc_service(
        port = 50054, grpc = fulfillment_grpc, url = fulfillment_url, database_url = fulfillment_database_url,
        advertise_addr = fulfillment_advertise_addr, weight = fulfillment_weight
    ), validate(check) {
        /// The newest queue changes kept for clients that resume (at least 1000).
        change_history: u32 = crate::store::DEFAULT_HISTORY, flag fulfillment_change_history "N";
        /// How often each replica reads the change history unbidden (what other replicas committed), ms.
        change_poll_ms: u64 = 500, flag fulfillment_change_poll_ms "MS";
        /// Redis (redis://...) through which replicas tell each other of changes at once.
        redis_url: Option<String> = None, flag fulfillment_redis_url "URL";
        /// The Redis pub/sub channel of queue changes.
        redis_channel: String = "bookstore:fulfillment:changes".to_owned(), flag fulfillment_redis_channel "NAME";
    }
}

fn check(s: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        s.change_history >= 1000,
        "invalid configuration: fulfillment_change_history must be at least 1000"
    );
    anyhow::ensure!(
        s.change_poll_ms >= 10,
        "invalid configuration: fulfillment_change_poll_ms must be at least 10"
    );
    if let Some(url) = &s.redis_url {
        bookstore_platform::settings::check_url("fulfillment_redis_url", url, &["redis", "rediss"])?;
    }
    Ok(())
}
