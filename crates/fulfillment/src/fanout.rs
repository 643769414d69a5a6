//! Changes between fulfillment replicas, through Redis pub/sub.
//!
//! The database's change history is the one source of the live queue: each replica reads it in
//! sequence order and hands it to its watchers ([`TaskStore::follow`]). Redis only rings: a
//! replica that commits a change publishes on the channel, and every replica subscribed reads
//! the history at once instead of at its next poll. A lost message, or Redis down or restarted,
//! costs at most one poll interval, never a change: the database holds them all. (Libraries
//! looked at for the fan-out itself: Redis streams would keep a second copy of what the
//! database already orders and keeps; a doorbell needs only pub/sub.)

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::store::TaskStore;

/// A replica's end of the channel.
pub struct Fanout {
    client: redis::Client,
    publisher: ConnectionManager,
    channel: String,
}

impl Fanout {
    pub async fn connect(url: &str, channel: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("fulfillment_redis_url: {e}"))?;
        let publisher =
            client.get_connection_manager().await.map_err(|e| anyhow::anyhow!("connecting to Redis: {e}"))?;
        Ok(Self { client, publisher, channel: channel.to_owned() })
    }

    /// Rings every replica (best effort: their polls catch what a lost message misses).
    pub async fn publish(&self) {
        let mut publisher = self.publisher.clone();
        let published: redis::RedisResult<i64> =
            redis::cmd("PUBLISH").arg(&self.channel).arg("changed").query_async(&mut publisher).await;
        if let Err(e) = published {
            tracing::warn!(error = %e, "publishing a queue change to Redis failed; replicas catch up at their next poll");
        }
    }

    /// Rings `store` whenever any replica publishes, until `stop`; rings once after each
    /// (re)subscription for what was published meanwhile.
    pub async fn listen(self: std::sync::Arc<Self>, store: TaskStore, stop: CancellationToken) {
        bookstore_platform::pubsub::listen(
            &self.client,
            &self.channel,
            "queue changes",
            &stop,
            || store.ring_here(),
            |_| store.ring_here(),
        )
        .await;
    }
}
