//! Where a peer's replicas are: one interface, a source chosen per peer by its URL.
//!
//! - A static list: `http://10.0.0.1:50051,http://10.0.0.2:50051?weight=3` (commas; a weight
//!   per address as a query, default 1).
//! - DNS: `dns://books.shop.svc.cluster.local:50051`, a name resolving to many addresses (a
//!   Kubernetes headless Service), resolved again every [`DNS_REFRESH`] and at once when a
//!   client reports a connection failure.
//! - etcd: `etcd://10.0.0.1:2379,10.0.0.2:2379/books`, the instances registered there
//!   ([`crate::etcd`]), watched.
//!
//! Each source feeds a `watch` channel of [`Target`]s that the balancer follows; a source that
//! fails to resolve keeps the last targets it knew.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::sync::{Notify, watch};

/// How often a DNS source resolves its name again.
pub const DNS_REFRESH: Duration = Duration::from_secs(5);
/// The largest weight an address may have.
pub const MAX_WEIGHT: u32 = 1000;

/// One replica of a peer: where to reach it and its share of traffic relative to the others.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// `http://host:port`, without the weight.
    pub url: String,
    pub weight: u32,
}

/// Where a peer's targets come from, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Static(Vec<Target>),
    Dns {
        host: String,
        port: u16,
    },
    /// The instances registered in etcd under `/bookstore/services/<service>/`.
    Etcd {
        endpoints: Vec<String>,
        service: String,
    },
}

impl Source {
    /// Parses a peer URL. Errors say what is wrong with which address.
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let spec = spec.trim();
        if spec.starts_with("etcd://") {
            let (endpoints, service) = crate::etcd::parse_url(spec)?;
            ensure!(
                !service.is_empty() && !service.contains('/'),
                "{spec:?}: name the service after the endpoints: etcd://host:2379/books"
            );
            return Ok(Self::Etcd { endpoints, service });
        }
        if let Some(rest) = spec.strip_prefix("dns://") {
            let url = url::Url::parse(spec).with_context(|| format!("{spec:?} is not a URL"))?;
            let host = url.host_str().filter(|h| !h.is_empty()).context("a dns:// URL needs a name")?;
            let port = url.port().with_context(|| format!("{spec:?} needs a port: dns://name:port"))?;
            ensure!(
                url.path().is_empty() || url.path() == "/",
                "{spec:?}: a dns:// URL is a name and a port, not {rest:?}"
            );
            return Ok(Self::Dns { host: host.to_owned(), port });
        }
        let mut targets = Vec::new();
        for address in spec.split(',').map(str::trim) {
            ensure!(!address.is_empty(), "{spec:?} has an empty address between its commas");
            targets.push(parse_target(address)?);
        }
        Ok(Self::Static(targets))
    }

    /// Follows this source: the current targets now, and every change after. A DNS source
    /// resolves in a task of its own that ends when the last receiver is dropped; `refresh`
    /// asks it to resolve again at once.
    pub async fn watch(self) -> (watch::Receiver<Vec<Target>>, Arc<Notify>) {
        let refresh = Arc::new(Notify::new());
        match self {
            // Nothing will change: the receiver keeps the one value after the sender is gone.
            Self::Static(targets) => (watch::channel(targets).1, refresh),
            Self::Etcd { endpoints, service } => {
                (crate::etcd::follow(crate::etcd::Etcd::new(endpoints), service).await, refresh)
            }
            Self::Dns { host, port } => {
                let first = resolve(&host, port).await.unwrap_or_else(|e| {
                    tracing::warn!(host, error = %format!("{e:#}"), "could not resolve a peer yet");
                    Vec::new()
                });
                let (tx, rx) = watch::channel(first);
                let asked = refresh.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            () = tx.closed() => return,
                            () = tokio::time::sleep(DNS_REFRESH) => {}
                            () = asked.notified() => {}
                        }
                        match resolve(&host, port).await {
                            Ok(targets) => {
                                tx.send_if_modified(|known| {
                                    let changed = *known != targets;
                                    if changed {
                                        tracing::info!(
                                            host,
                                            targets = targets.len(),
                                            "peer addresses changed"
                                        );
                                        *known = targets;
                                    }
                                    changed
                                });
                            }
                            // Keep what we knew: a DNS hiccup must not empty the set.
                            Err(e) => {
                                tracing::warn!(host, error = %format!("{e:#}"), "could not resolve a peer")
                            }
                        }
                    }
                });
                (rx, refresh)
            }
        }
    }
}

fn parse_target(address: &str) -> anyhow::Result<Target> {
    let mut url = url::Url::parse(address).with_context(|| format!("{address:?} is not a URL"))?;
    ensure!(
        matches!(url.scheme(), "http" | "https"),
        "{address:?}: a peer address is http:// or https:// (or the whole URL is dns://name:port or etcd://host:port/service)"
    );
    ensure!(url.host_str().is_some_and(|h| !h.is_empty()), "{address:?} has no host");
    let mut weight = 1;
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "weight" => {
                weight = value.parse().ok().filter(|w| (1..=MAX_WEIGHT).contains(w)).with_context(|| {
                    format!("{address:?}: weight must be a whole number from 1 to {MAX_WEIGHT}")
                })?;
            }
            other => bail!("{address:?}: unknown option {other:?} (the only one is weight)"),
        }
    }
    url.set_query(None);
    let url = url.as_str().trim_end_matches('/').to_owned();
    Ok(Target { url, weight })
}

async fn resolve(host: &str, port: u16) -> anyhow::Result<Vec<Target>> {
    let mut targets: Vec<Target> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .map(|addr| Target { url: format!("http://{addr}"), weight: 1 })
        .collect();
    targets.sort();
    targets.dedup();
    ensure!(!targets.is_empty(), "{host} resolved to no address");
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(url: &str, weight: u32) -> Target {
        Target { url: url.to_owned(), weight }
    }

    #[test]
    fn a_static_list_is_split_on_commas_with_weights_from_the_query() {
        let source = Source::parse("http://10.0.0.1:50051, http://10.0.0.2:50051?weight=3").unwrap();
        assert_eq!(
            source,
            Source::Static(vec![t("http://10.0.0.1:50051", 1), t("http://10.0.0.2:50051", 3)])
        );
        assert_eq!(
            Source::parse("http://books:50051/").unwrap(),
            Source::Static(vec![t("http://books:50051", 1)])
        );
    }

    #[test]
    fn bad_peer_urls_say_what_is_wrong() {
        let err = |s: &str| Source::parse(s).unwrap_err().to_string();
        assert!(err("http://a:1,,http://b:2").contains("empty address"));
        assert!(err("ftp://a:1").contains("http:// or https://"));
        assert!(err("http://a:1?weight=0").contains("weight must be"));
        assert!(err("http://a:1?weight=x").contains("weight must be"));
        assert!(err("http://a:1?color=red").contains("unknown option"));
        assert!(err("dns://books").contains("needs a port"));
        assert!(err("etcd://127.0.0.1:2379").contains("name the service"));
        assert_eq!(
            Source::parse("etcd://127.0.0.1:2379,127.0.0.2:2379/books").unwrap(),
            Source::Etcd {
                endpoints: vec!["http://127.0.0.1:2379".into(), "http://127.0.0.2:2379".into()],
                service: "books".into()
            }
        );
    }

    #[test]
    fn a_dns_url_names_a_host_and_a_port() {
        assert_eq!(
            Source::parse("dns://books.shop.svc.cluster.local:50051").unwrap(),
            Source::Dns { host: "books.shop.svc.cluster.local".into(), port: 50051 }
        );
    }

    #[tokio::test]
    async fn a_dns_source_resolves_a_name_to_its_addresses() {
        let (rx, _) = Source::Dns { host: "localhost".into(), port: 50051 }.watch().await;
        let targets = rx.borrow().clone();
        assert!(!targets.is_empty());
        assert!(
            targets.iter().all(|t| t.url == "http://127.0.0.1:50051" || t.url == "http://[::1]:50051"),
            "{targets:?}"
        );
    }

    #[tokio::test]
    async fn a_dns_source_that_cannot_resolve_starts_empty_and_says_why() {
        let (rx, refresh) = Source::Dns { host: "no-such-host.invalid".into(), port: 1 }.watch().await;
        assert!(rx.borrow().is_empty());
        refresh.notify_one();
    }
}
