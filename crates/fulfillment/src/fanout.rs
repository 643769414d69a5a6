//! Changes between fulfillment replicas, through Redis pub/sub.
//!
//! The database's change history is the one source of the live queue: each replica reads it in
//! sequence order and hands it to its watchers ([`TaskStore::follow`]). Redis only rings: a
//! replica that commits a change publishes on the channel, and every replica subscribed reads
//! the history at once instead of at its next poll. A lost message, or Redis down or restarted,
//! costs at most one poll interval, never a change: the database holds them all. (Libraries
//! looked at for the fan-out itself: Redis streams would keep a second copy of what the
//! database already orders and keeps; a doorbell needs only pub/sub.)

use std::time::Duration;

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

    /// Rings `store` whenever any replica publishes, until `stop`; reconnects with backoff,
    /// and rings once after each (re)connection for what was published meanwhile.
    pub async fn listen(self: std::sync::Arc<Self>, store: TaskStore, stop: CancellationToken) {
        use futures::StreamExt;
        let mut backoff = Duration::from_millis(100);
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&self.channel).await?;
                redis::RedisResult::Ok(pubsub)
            };
            match subscribed.await {
                Ok(pubsub) => {
                    backoff = Duration::from_millis(100);
                    store.ring_here();
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            message = messages.next() => match message {
                                Some(_) => store.ring_here(),
                                None => break,
                            },
                        }
                    }
                    tracing::warn!("the Redis subscription ended; subscribing again");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "subscribing to queue changes in Redis failed; retrying")
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
