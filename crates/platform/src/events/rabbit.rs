//! RabbitMQ as the bus.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{Event, after_effect};

/// RabbitMQ as the bus: one durable topic exchange (`bookstore.events`, routing key = event
/// type), a durable quorum queue per consuming service bound to it, persistent messages with
/// publisher confirms, manual acknowledgements, and a dead-letter queue per consumer that the
/// broker fills once a message was delivered `max_attempts` times without an ack. Publishing
/// reconnects on the next call after a failure; consuming reconnects in a loop with backoff, so
/// both survive a broker restart.
pub struct RabbitBus {
    /// The broker's URL as lapin takes it: the TLS files taken out, a heartbeat put in.
    url: String,
    /// TLS to the broker, for an `amqps://` URL.
    tls: Option<BrokerTls>,
    publisher: tokio::sync::Mutex<Option<(lapin::Connection, lapin::Channel)>>,
    pub max_attempts: u32,
    /// The event types (routing-key patterns) a consumer's queue is bound to: `#`, every event,
    /// unless a consumer narrows it to what it handles, so the broker drops the rest for it.
    pub topics: Vec<String>,
    /// How long one broker operation may take (connecting and declaring, or publishing a batch
    /// and collecting its confirmations) before the connection is given up as broken: a broker
    /// that accepts connections but cannot serve a queue must fail a publish, not hang it.
    pub timeout: Duration,
    /// The first part of every exchange, queue and stream name (`<namespace>.events`,
    /// `<namespace>.<consumer>`): deployments (or tests) sharing one broker keep apart by it.
    pub namespace: String,
}

/// The namespace of a deployment that names none (the `amqp_namespace` setting).
pub const DEFAULT_NAMESPACE: &str = "bookstore";

impl RabbitBus {
    /// A bus on the broker at `url` (see [`BrokerTls`] for `amqps://`); an error names what in
    /// the URL is wrong.
    pub fn new(url: impl Into<String>) -> anyhow::Result<Self> {
        let (url, tls) = BrokerTls::split(&url.into())?;
        Ok(Self::parsed(url, tls))
    }

    fn parsed(url: String, tls: Option<BrokerTls>) -> Self {
        Self {
            url,
            tls,
            publisher: tokio::sync::Mutex::new(None),
            max_attempts: 5,
            topics: vec!["#".into()],
            timeout: Duration::from_secs(30),
            namespace: DEFAULT_NAMESPACE.to_owned(),
        }
    }

    /// The topic exchange events are published to.
    pub(crate) fn exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }

    fn dead_letter_exchange(&self) -> String {
        format!("{}.events.dead", self.namespace)
    }

    /// `consumer`'s queue (its dead letters are in `<queue>.dead`), or a subscription's
    /// stream with the suffix `.stream`.
    pub(crate) fn queue(&self, name: &str) -> String {
        format!("{}.{name}", self.namespace)
    }

    /// The same broker, for a consumer whose queue is bound to `topics` only.
    pub fn narrowed(&self, topics: &[&str]) -> Self {
        Self {
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            max_attempts: self.max_attempts,
            timeout: self.timeout,
            namespace: self.namespace.clone(),
            ..Self::parsed(self.url.clone(), self.tls.clone())
        }
    }

    /// `work`, or an error naming `what` once [`Self::timeout`] has passed.
    pub(super) async fn within<T>(
        &self,
        what: &str,
        work: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::time::timeout(self.timeout, work).await.unwrap_or_else(|_| {
            Err(anyhow::anyhow!("{what}: RabbitMQ did not answer within {:?}", self.timeout))
        })
    }

    pub(super) async fn open(&self) -> anyhow::Result<(lapin::Connection, lapin::Channel)> {
        use lapin::options::ExchangeDeclareOptions;
        let properties = lapin::ConnectionProperties::default();
        let conn = match &self.tls {
            None => lapin::Connection::connect(&self.url, properties).await,
            Some(tls) => {
                let runtime = lapin::runtime::default_runtime().context("the AMQP client's runtime")?;
                lapin::Connection::connect_with_config(&self.url, properties, tls.read()?, runtime).await
            }
        }
        .context("connecting to RabbitMQ")?;
        let channel = conn.create_channel().await.context("opening a channel")?;
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        for name in [self.exchange(), self.dead_letter_exchange()] {
            channel
                .exchange_declare(
                    name.as_str().into(),
                    lapin::ExchangeKind::Topic,
                    durable,
                    Default::default(),
                )
                .await
                .context("declaring the exchanges")?;
        }
        Ok((conn, channel))
    }

    /// Publishes each event persistently and waits for the broker's confirmation of all.
    pub async fn publish(&self, events: &[Event]) -> anyhow::Result<()> {
        let mut publisher = self.publisher.lock().await;
        let result = self.within("publishing", self.publish_on(&mut publisher, events)).await;
        if result.is_err() {
            // Start afresh next time: the connection may be gone, or stuck.
            *publisher = None;
        }
        result
    }

    async fn publish_on(
        &self,
        publisher: &mut Option<(lapin::Connection, lapin::Channel)>,
        events: &[Event],
    ) -> anyhow::Result<()> {
        use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
        if publisher.as_ref().is_none_or(|(conn, _)| !conn.status().connected()) {
            let (conn, channel) = self.open().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .context("enabling publisher confirms")?;
            *publisher = Some((conn, channel));
        }
        let (_, channel) = publisher.as_ref().expect("connected above");
        let exchange = self.exchange();
        {
            let mut confirms = Vec::with_capacity(events.len());
            for e in events {
                // The publish time (seconds) lets a subscription start from a moment.
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let properties = lapin::BasicProperties::default()
                    .with_message_id(e.id.as_str().into())
                    .with_type(e.event_type.as_str().into())
                    .with_timestamp(now.as_secs())
                    .with_delivery_mode(2);
                let confirm = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        e.event_type.as_str().into(),
                        BasicPublishOptions::default(),
                        &e.body,
                        properties,
                    )
                    .await
                    .context("publishing an event")?;
                confirms.push(confirm);
            }
            for confirm in confirms {
                let confirmation = confirm.await.context("waiting for the broker's confirmation")?;
                anyhow::ensure!(confirmation.is_ack(), "the broker refused an event");
            }
            Ok(())
        }
    }

    /// Declares `consumer`'s queue (and its dead-letter queue), bound to [`Self::topics`].
    /// Consuming does this too; calling it first makes sure nothing published meanwhile is missed.
    pub async fn declare(&self, consumer: &str) -> anyhow::Result<()> {
        self.within("declaring queues", async {
            let (conn, channel) = self.open().await?;
            self.declare_queues(&channel, consumer).await?;
            conn.close(200, "declared".into()).await.ok();
            Ok(())
        })
        .await
    }

    pub async fn consume<F, Fut>(
        &self,
        consumer: &str,
        handler: F,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()>
    where
        F: Fn(Event) -> Fut + Send + Sync,
        Fut: Future<Output = anyhow::Result<()>> + Send,
    {
        self.reconnecting(consumer, &shutdown, || self.consume_once(consumer, &handler, &shutdown)).await
    }

    /// One connection's worth of consuming: `Ok` on shutdown, `Err` when the connection broke.
    async fn consume_once<F, Fut>(
        &self,
        consumer: &str,
        handler: &F,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()>
    where
        F: Fn(Event) -> Fut + Send + Sync,
        Fut: Future<Output = anyhow::Result<()>> + Send,
    {
        use lapin::options::{
            BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, ConfirmSelectOptions,
        };
        let (conn, deliveries) = self
            .within("starting to consume", async {
                let (conn, channel) = self.open().await?;
                let queue = self.declare_queues(&channel, consumer).await?;
                channel.basic_qos(32, BasicQosOptions::default()).await.context("setting the prefetch")?;
                // Where an event given up on goes, with its error, confirmed before it is
                // acknowledged away.
                let dead = conn.create_channel().await.context("opening a channel")?;
                dead.confirm_select(ConfirmSelectOptions::default()).await.context("enabling confirms")?;
                let deliveries = channel
                    .basic_consume(
                        queue.as_str().into(),
                        consumer.into(),
                        BasicConsumeOptions::default(),
                        Default::default(),
                    )
                    .await
                    .context("starting to consume")?;
                Ok((conn, (deliveries, dead)))
            })
            .await?;
        let (mut deliveries, dead) = deliveries;
        while let Some(delivery) = next_delivery(&conn, &mut deliveries, shutdown).await? {
            let event = event_of(&delivery);
            let id = event.id.clone();
            match handler(event).await {
                Ok(()) => {
                    after_effect()?;
                    // Bounded: an acknowledgement on a connection that died must not hang the
                    // consumer; the broker redelivers what was not acknowledged.
                    self.within("acknowledging", async {
                        delivery.acker.ack(BasicAckOptions::default()).await.context("acknowledging")
                    })
                    .await?;
                }
                Err(e) => {
                    // The quorum queue counts the deliveries before this one.
                    let before = delivery
                        .properties
                        .headers()
                        .as_ref()
                        .and_then(|h| super::dead::header_number(h, "x-delivery-count"))
                        .unwrap_or(0);
                    let attempts = u32::try_from(before + 1).unwrap_or(u32::MAX);
                    if attempts >= self.max_attempts {
                        let error = format!("{e:#}");
                        match self
                            .within(
                                "dead-lettering",
                                self.set_aside(&dead, consumer, &delivery, &error, attempts),
                            )
                            .await
                        {
                            Ok(()) => {
                                tracing::warn!(consumer, event = %id, error = %error, "event dead-lettered");
                                self.within("acknowledging", async {
                                    delivery
                                        .acker
                                        .ack(BasicAckOptions::default())
                                        .await
                                        .context("acknowledging")
                                })
                                .await?;
                                continue;
                            }
                            // Returned instead: the broker's delivery limit sets it aside, without the error.
                            Err(e) => {
                                tracing::warn!(consumer, event = %id, error = %format!("{e:#}"), "could not dead-letter an event")
                            }
                        }
                    }
                    tracing::debug!(consumer, error = %format!("{e:#}"), "event failed; the broker will redeliver");
                    self.within("rejecting", async {
                        delivery
                            .acker
                            .nack(BasicNackOptions { requeue: true, ..Default::default() })
                            .await
                            .context("rejecting")
                    })
                    .await?;
                }
            }
        }
        Ok(())
    }
}

impl RabbitBus {
    /// Runs `once` (a connection's worth of consuming) again after each failure, with backoff,
    /// until it ends cleanly or `shutdown`: consumers survive a broker restart.
    pub(super) async fn reconnecting<F, Fut>(
        &self,
        name: &str,
        shutdown: &CancellationToken,
        once: F,
    ) -> anyhow::Result<()>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let mut backoff = Duration::from_millis(100);
        loop {
            match once().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(consumer = name, error = %format!("{e:#}"), "RabbitMQ consumer lost; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// TLS to the broker, asked for by an `amqps://` URL (port 5671 unless it names one). The
/// broker's certificate is verified against the system's roots and, when the URL names one, the
/// CA in `cacertfile`; a client certificate is shown when the URL names `certfile` and
/// `keyfile` (PEM), for a broker that asks for one (`fail_if_no_peer_cert`). These are the
/// names RabbitMQ's own URI specification gives them:
/// `amqps://user:pass@broker:5671/%2f?cacertfile=/etc/ca.pem&certfile=/etc/me.pem&keyfile=/etc/me-key.pem`.
/// The files are read at each connection, so a renewed certificate is used from the next
/// reconnection on. `verify=verify_none` is refused: an unverified broker is not TLS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokerTls {
    pub ca: Option<std::path::PathBuf>,
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl BrokerTls {
    const PARAMS: [&str; 4] = ["cacertfile", "certfile", "keyfile", "verify"];

    /// Splits `url` into the URL the AMQP client takes (the TLS parameters taken out, a 10 s
    /// heartbeat put in unless it names one: a connection that died silently, as when the
    /// broker's host vanishes, is noticed within two heartbeats) and its TLS, if `amqps://`.
    pub fn split(url: &str) -> anyhow::Result<(String, Option<Self>)> {
        let mut parsed = url::Url::parse(url).map_err(|e| anyhow::anyhow!("not a URL: {e}"))?;
        let secure = match parsed.scheme() {
            "amqp" => false,
            "amqps" => true,
            other => anyhow::bail!("an amqp:// or amqps:// URL, not {other}://"),
        };
        let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        let param = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let path = |name: &str| -> anyhow::Result<Option<std::path::PathBuf>> {
            match param(name) {
                Some(value) if value.is_empty() => anyhow::bail!("{name} is empty"),
                value => Ok(value.map(std::path::PathBuf::from)),
            }
        };
        let tls = Self {
            ca: path("cacertfile")?,
            client: match (path("certfile")?, path("keyfile")?) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => anyhow::bail!("certfile and keyfile go together"),
            },
        };
        if let Some(verify) = param("verify") {
            anyhow::ensure!(
                verify == "verify_peer",
                "verify={verify} is refused: the broker is always verified"
            );
        }
        anyhow::ensure!(
            secure || tls == Self::default(),
            "cacertfile, certfile and keyfile are for TLS: use amqps://"
        );
        let rest: Vec<_> = pairs.iter().filter(|(k, _)| !Self::PARAMS.contains(&k.as_str())).collect();
        if rest.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(rest);
        }
        if !pairs.iter().any(|(k, _)| k == "heartbeat") {
            parsed.query_pairs_mut().append_pair("heartbeat", "10");
        }
        Ok((parsed.to_string(), secure.then_some(tls)))
    }

    /// The files, read now, as the AMQP client takes them.
    fn read(&self) -> anyhow::Result<lapin::tcp::OwnedTLSConfig> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("reading {} for TLS to RabbitMQ", path.display()))
        };
        let cert_chain = match &self.ca {
            Some(ca) => {
                Some(String::from_utf8(read(ca)?).with_context(|| format!("{} is not PEM", ca.display()))?)
            }
            None => None,
        };
        let identity = match &self.client {
            Some((cert, key)) => Some(lapin::tcp::OwnedIdentity::PKCS8 { pem: read(cert)?, key: read(key)? }),
            None => None,
        };
        Ok(lapin::tcp::OwnedTLSConfig { identity, cert_chain })
    }
}

/// The next delivery, or `None` once `shutdown` (after closing the connection); an error when
/// the broker ends the consumer or the connection breaks.
pub(super) async fn next_delivery(
    conn: &lapin::Connection,
    deliveries: &mut lapin::Consumer,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<lapin::message::Delivery>> {
    use futures::StreamExt;
    let delivery = tokio::select! {
        d = deliveries.next() => d,
        () = shutdown.cancelled() => {
            conn.close(200, "shutting down".into()).await.ok();
            return Ok(None);
        }
    };
    match delivery {
        Some(Ok(d)) => Ok(Some(d)),
        Some(Err(e)) => Err(anyhow::Error::new(e).context("receiving")),
        None => anyhow::bail!("the broker ended the consumer"),
    }
}

/// The event a delivery carries. Its type is the message's `type` property, set when it was
/// published: a dead letter, or a replayed one, arrives with another routing key.
pub(super) fn event_of(delivery: &lapin::message::Delivery) -> Event {
    let event_type = match delivery.properties.kind() {
        Some(kind) => kind.to_string(),
        None => delivery.routing_key.to_string(),
    };
    Event {
        id: delivery.properties.message_id().as_ref().map(|s| s.to_string()).unwrap_or_default(),
        event_type,
        body: delivery.data.clone(),
    }
}

impl RabbitBus {
    /// Puts `delivery` in `consumer`'s dead-letter queue, with `error` and `attempts` in its
    /// headers, and waits for the broker's confirmation.
    async fn set_aside(
        &self,
        channel: &lapin::Channel,
        consumer: &str,
        delivery: &lapin::message::Delivery,
        error: &str,
        attempts: u32,
    ) -> anyhow::Result<()> {
        use lapin::options::BasicPublishOptions;
        let event = event_of(delivery);
        let properties = delivery
            .properties
            .clone()
            .with_type(event.event_type.as_str().into())
            .with_headers(super::dead::dead_headers(error, attempts))
            .with_delivery_mode(2);
        let confirm = channel
            .basic_publish(
                self.dead_letter_exchange().as_str().into(),
                consumer.into(),
                BasicPublishOptions::default(),
                &delivery.data,
                properties,
            )
            .await
            .context("dead-lettering")?;
        anyhow::ensure!(
            confirm.await.context("dead-lettering")?.is_ack(),
            "the broker refused a dead letter"
        );
        Ok(())
    }
}

impl RabbitBus {
    /// How many events wait in `consumer`'s dead-letter queue.
    pub(crate) async fn dead_letter_count(&self, consumer: &str) -> anyhow::Result<u64> {
        use lapin::options::QueueDeclareOptions;
        self.within("counting dead letters", async {
            let (conn, channel) = self.open().await?;
            let queue = format!("{}.dead", self.queue(consumer));
            let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
            let declared = channel.queue_declare(queue.as_str().into(), passive, Default::default()).await;
            conn.close(200, "done".into()).await.ok();
            Ok(u64::from(declared.context("counting dead letters")?.message_count()))
        })
        .await
    }
}

#[cfg(any(test, feature = "testing"))]
impl RabbitBus {
    /// Removes the exchanges of this bus's namespace, the queues of `consumers` and the streams
    /// of `subscriptions` (a test that gave itself a namespace cleans up after itself, so the
    /// shared broker does not fill up).
    pub async fn delete_namespace(&self, consumers: &[&str], subscriptions: &[&str]) -> anyhow::Result<()> {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        self.within("deleting a namespace", async {
            let (conn, channel) = self.open().await?;
            for consumer in consumers {
                for queue in [self.queue(consumer), format!("{}.dead", self.queue(consumer))] {
                    channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await
                        .context("deleting a queue")?;
                }
            }
            for name in subscriptions {
                let stream = self.queue(&format!("{name}.stream"));
                channel
                    .queue_delete(stream.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .context("deleting a stream")?;
            }
            for exchange in [self.exchange(), self.dead_letter_exchange()] {
                channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await
                    .context("deleting an exchange")?;
            }
            conn.close(200, "done".into()).await.ok();
            Ok(())
        })
        .await
    }

    /// Removes `consumer`'s queues (tests clean up after themselves).
    pub async fn delete_queues(&self, consumer: &str) -> anyhow::Result<()> {
        use lapin::options::QueueDeleteOptions;
        self.within("deleting queues", async {
            let (conn, channel) = self.open().await?;
            for queue in [self.queue(consumer), format!("{}.dead", self.queue(consumer))] {
                channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .context("deleting a queue")?;
            }
            conn.close(200, "done".into()).await.ok();
            Ok(())
        })
        .await
    }
}

impl RabbitBus {
    /// The consumer's quorum queue (dead-lettering after `max_attempts` deliveries), bound to
    /// [`Self::topics`], and its dead-letter queue; returns the queue's name.
    async fn declare_queues(&self, channel: &lapin::Channel, consumer: &str) -> anyhow::Result<String> {
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        use lapin::types::{AMQPValue, FieldTable};
        let (max_attempts, topics) = (self.max_attempts, &self.topics);
        let (exchange, dead_letter_exchange) = (self.exchange(), self.dead_letter_exchange());
        let queue = self.queue(consumer);
        let dead = format!("{queue}.dead");
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        channel
            .queue_declare(dead.as_str().into(), durable, FieldTable::default())
            .await
            .context("declaring the dead-letter queue")?;
        channel
            .queue_bind(
                dead.as_str().into(),
                dead_letter_exchange.as_str().into(),
                consumer.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("binding the dead-letter queue")?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        // The broker counts returns, not deliveries: a limit of n allows n + 1 deliveries.
        args.insert("x-delivery-limit".into(), AMQPValue::LongInt(max_attempts.saturating_sub(1) as i32));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dead_letter_exchange.as_str().into()),
        );
        args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(consumer.into()));
        channel.queue_declare(queue.as_str().into(), durable, args).await.context("declaring the queue")?;
        for topic in topics {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    topic.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .context("binding the queue")?;
        }
        Ok(queue)
    }
}
