//! A Redis pub/sub channel listened to for as long as the process runs: subscribed again with
//! backoff whenever the subscription ends or cannot be made.
//!
//! Whoever listens is told of each (re)subscription as well as of each message, because what was
//! published while the subscription was down is lost: each listener catches up in its own way
//! (the live queue reads its history, the books cache drops what it holds).

use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Listens on `channel` until `stop`: `subscribed()` after each (re)subscription, then
/// `message(payload)` for each message (`None` for a payload that is not text). `what` names
/// the channel's purpose in the log.
pub async fn listen(
    client: &redis::Client,
    channel: &str,
    what: &str,
    stop: &CancellationToken,
    mut subscribed: impl FnMut(),
    mut message: impl FnMut(Option<String>),
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let subscription = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            redis::RedisResult::Ok(pubsub)
        };
        match subscription.await {
            Ok(pubsub) => {
                backoff = Duration::from_millis(100);
                subscribed();
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        next = messages.next() => match next {
                            Some(m) => message(m.get_payload::<String>().ok()),
                            None => break,
                        },
                    }
                }
                tracing::warn!(channel, "the Redis subscription to {what} ended; subscribing again");
            }
            Err(e) => tracing::warn!(error = %e, channel, "subscribing to {what} in Redis failed; retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
