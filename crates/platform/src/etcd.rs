//! etcd v3 as the service registry, spoken through etcd's JSON gateway (`/v3/...` over HTTP).
//!
//! Why the gateway and not gRPC: the `etcd-client` crate compiles etcd's protos with a system
//! `protoc`, and etcd's protos import `gogoproto` and Google API annotations that would have
//! to be vendored for our pure-Rust codegen. The JSON gateway is part of every etcd v3 server,
//! speaks the same API (leases, keys, watches), and needs only an HTTP client.
//!
//! - [`register`]: a `serve` process puts each of its services at
//!   `/bookstore/services/<service>/<instance id>` under a lease (TTL [`LEASE_TTL`]), keeps it
//!   alive, puts it back when etcd returns after an outage, and revokes it on a graceful stop.
//! - [`follow`]: a client ranges over the prefix, then *watches* it from the next revision, so a
//!   new or vanished instance is seen within moments; while etcd is down it keeps the last
//!   targets it knew and tries again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::discovery::Target;

/// How long a registration outlives its process if the process dies without revoking it.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// The prefix every registration lives under.
pub const PREFIX: &str = "/bookstore/services/";
/// How long one call to etcd may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The wait before trying again after etcd failed.
const RETRY: Duration = Duration::from_millis(500);

/// A client of an etcd cluster: each call goes to the endpoint that last answered, and moves
/// on to the next when it fails.
#[derive(Clone)]
pub struct Etcd {
    endpoints: Arc<[String]>,
    current: Arc<AtomicUsize>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").field("endpoints", &self.endpoints).finish()
    }
}

/// An `etcd://host:port[,host:port...]` URL's endpoints, and the path after them.
pub fn parse_url(spec: &str) -> anyhow::Result<(Vec<String>, String)> {
    let rest = spec.trim().strip_prefix("etcd://").context("an etcd URL starts with etcd://")?;
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut endpoints = Vec::new();
    for host in hosts.split(',').map(str::trim) {
        let url = url::Url::parse(&format!("http://{host}"))
            .with_context(|| format!("{spec:?}: bad host {host:?}"))?;
        ensure!(
            url.host_str().is_some_and(|h| !h.is_empty()) && url.port().is_some() && url.path() == "/",
            "{spec:?}: each etcd endpoint is host:port, not {host:?}"
        );
        endpoints.push(format!("http://{host}"));
    }
    Ok((endpoints, path.trim_end_matches('/').to_owned()))
}

impl Etcd {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints: endpoints.into(),
            current: Arc::new(AtomicUsize::new(0)),
            http: reqwest::Client::builder().tcp_nodelay(true).build().expect("an HTTP client"),
        }
    }

    /// Posts `body` to `path` on the first endpoint that answers.
    async fn call(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let mut last = None;
        for _ in 0..self.endpoints.len() {
            let i = self.current.load(Ordering::Relaxed) % self.endpoints.len();
            let url = format!("{}{path}", self.endpoints[i]);
            let sent = self.http.post(&url).json(&body).timeout(CALL_TIMEOUT).send().await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    return response.json().await.with_context(|| format!("reading {url}"));
                }
                Ok(response) => {
                    let status = response.status();
                    last = Some(anyhow::anyhow!(
                        "{url}: {status}: {}",
                        response.text().await.unwrap_or_default()
                    ));
                }
                Err(e) => last = Some(anyhow::Error::new(e).context(url)),
            }
            self.current.store(i + 1, Ordering::Relaxed);
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no etcd endpoint")))
    }

    /// A new lease; its id.
    pub async fn grant(&self, ttl: Duration) -> anyhow::Result<String> {
        let answer = self.call("/v3/lease/grant", json!({ "TTL": ttl.as_secs() })).await?;
        answer["ID"].as_str().map(str::to_owned).context("etcd granted no lease id")
    }

    /// Renews `lease`; `false` when it has expired (its keys are gone).
    pub async fn keep_alive(&self, lease: &str) -> anyhow::Result<bool> {
        let answer = self.call("/v3/lease/keepalive", json!({ "ID": lease })).await?;
        let ttl = answer["result"]["TTL"].as_str().and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
        Ok(ttl > 0)
    }

    pub async fn revoke(&self, lease: &str) -> anyhow::Result<()> {
        self.call("/v3/lease/revoke", json!({ "ID": lease })).await.map(drop)
    }

    pub async fn put(&self, key: &str, value: &[u8], lease: &str) -> anyhow::Result<()> {
        let body = json!({ "key": B64.encode(key), "value": B64.encode(value), "lease": lease });
        self.call("/v3/kv/put", body).await.map(drop)
    }

    /// Every key under `prefix` with its value, and the store's revision at that moment.
    pub async fn range_prefix(&self, prefix: &str) -> anyhow::Result<(i64, Vec<(String, Vec<u8>)>)> {
        let body = json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) });
        let answer = self.call("/v3/kv/range", body).await?;
        let revision = revision_of(&answer["header"])?;
        let mut kvs = Vec::new();
        for kv in answer["kvs"].as_array().into_iter().flatten() {
            kvs.push((decode_string(&kv["key"])?, decode(&kv["value"])?));
        }
        Ok((revision, kvs))
    }

    /// Changes under `prefix` from `revision` on, as they happen, until the stream breaks.
    async fn watch_prefix(
        &self,
        prefix: &str,
        revision: i64,
    ) -> anyhow::Result<impl futures::Stream<Item = anyhow::Result<Vec<Change>>> + use<>> {
        let i = self.current.load(Ordering::Relaxed) % self.endpoints.len();
        let url = format!("{}/v3/watch", self.endpoints[i]);
        let body = json!({ "create_request": {
            "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)),
            "start_revision": revision.to_string(),
        }});
        let response = match self.http.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                self.current.store(i + 1, Ordering::Relaxed);
                bail!("{url}: {}", r.status())
            }
            Err(e) => {
                self.current.store(i + 1, Ordering::Relaxed);
                return Err(anyhow::Error::new(e).context(url));
            }
        };
        let mut buffer = Vec::new();
        Ok(response.bytes_stream().flat_map(move |chunk| {
            let mut out = Vec::new();
            match chunk {
                Err(e) => out.push(Err(anyhow::Error::new(e).context("the etcd watch broke"))),
                Ok(bytes) => {
                    buffer.extend_from_slice(&bytes);
                    while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buffer.drain(..=end).collect();
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        out.push(parse_watch_message(&line));
                    }
                }
            }
            futures::stream::iter(out)
        }))
    }
}

/// One key's change in a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Put(String, Vec<u8>),
    Delete(String),
}

fn parse_watch_message(line: &[u8]) -> anyhow::Result<Vec<Change>> {
    let message: Value = serde_json::from_slice(line).context("an etcd watch message")?;
    if let Some(error) = message.get("error") {
        bail!("etcd watch error: {error}");
    }
    let result = &message["result"];
    if result["canceled"].as_bool() == Some(true)
        || result["compact_revision"].as_str().is_some_and(|r| r != "0")
    {
        bail!("etcd cancelled the watch: {result}");
    }
    let mut changes = Vec::new();
    for event in result["events"].as_array().into_iter().flatten() {
        let key = decode_string(&event["kv"]["key"])?;
        changes.push(match event["type"].as_str() {
            Some("DELETE") => Change::Delete(key),
            _ => Change::Put(key, decode(&event["kv"]["value"])?),
        });
    }
    Ok(changes)
}

fn revision_of(header: &Value) -> anyhow::Result<i64> {
    header["revision"].as_str().and_then(|r| r.parse().ok()).context("etcd sent no revision")
}

fn decode(value: &Value) -> anyhow::Result<Vec<u8>> {
    match value.as_str() {
        None => Ok(Vec::new()),
        Some(text) => B64.decode(text).context("etcd sent bad base64"),
    }
}

fn decode_string(value: &Value) -> anyhow::Result<String> {
    String::from_utf8(decode(value)?).context("an etcd key that is not UTF-8")
}

/// The end of the range of keys that start with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// What a registration says of an instance.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Registration {
    /// `host:port` others dial.
    pub addr: String,
    pub weight: u32,
    pub version: String,
}

/// The address a replica bound to `bound` registers: `bound` itself, unless that is the
/// unspecified address (`0.0.0.0:50051`, as in a container), which no peer can dial; then this
/// host's address, of the bound family, that packets to the registry leave from, with the
/// bound port. A UDP socket "connected" to an endpoint asks the kernel for that route and sends
/// nothing. Tried again each second until an endpoint resolves and routes; `None` if `stop`
/// comes first.
pub async fn reachable_addr(
    endpoints: &[String],
    bound: std::net::SocketAddr,
    stop: &CancellationToken,
) -> Option<std::net::SocketAddr> {
    if !bound.ip().is_unspecified() {
        return Some(bound);
    }
    let mut announced = false;
    loop {
        let found = tokio::select! {
            () = stop.cancelled() => return None,
            found = route_toward(endpoints, bound.is_ipv4()) => found,
        };
        if let Some(ip) = found {
            return Some(std::net::SocketAddr::new(ip, bound.port()));
        }
        if !announced {
            tracing::warn!(
                ?endpoints,
                "no route to the registry yet, so no address to register; trying again"
            );
            announced = true;
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// This host's address (IPv4 or IPv6, as asked) that packets to the first endpoint that
/// resolves and routes leave from.
async fn route_toward(endpoints: &[String], ipv4: bool) -> Option<std::net::IpAddr> {
    for endpoint in endpoints {
        let Some((host, port)) = url::Url::parse(endpoint)
            .ok()
            .and_then(|u| Some((u.host_str()?.trim_matches(['[', ']']).to_owned(), u.port()?)))
        else {
            continue;
        };
        let Ok(targets) = tokio::net::lookup_host((host.as_str(), port)).await else { continue };
        // A listener on 0.0.0.0 takes IPv4 only: an IPv6 route would register an address
        // nobody could reach it at (and the other way round).
        for target in targets.filter(|t| t.is_ipv4() == ipv4) {
            let any: std::net::IpAddr = if ipv4 {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            let Ok(socket) = tokio::net::UdpSocket::bind((any, 0)).await else { continue };
            if socket.connect(target).await.is_err() {
                continue;
            }
            if let Ok(local) = socket.local_addr()
                && !local.ip().is_unspecified()
            {
                return Some(local.ip());
            }
        }
    }
    None
}

/// Keeps `service`'s instance `instance` registered until `stop`, then revokes its lease (which
/// deletes the key). Survives etcd outages: registers again when etcd answers.
pub async fn register(
    etcd: Etcd,
    service: &str,
    instance: &str,
    registration: Registration,
    stop: CancellationToken,
) {
    let key = format!("{PREFIX}{service}/{instance}");
    let value = serde_json::to_vec(&registration).expect("a registration serializes");
    let mut announced = false;
    loop {
        let lease = async {
            let lease = etcd.grant(LEASE_TTL).await?;
            etcd.put(&key, &value, &lease).await?;
            anyhow::Ok(lease)
        };
        let lease = tokio::select! {
            () = stop.cancelled() => return,
            lease = lease => lease,
        };
        let lease = match lease {
            Ok(lease) => {
                tracing::info!(service, key, addr = registration.addr, "registered in etcd");
                announced = false;
                lease
            }
            Err(e) => {
                if !announced {
                    tracing::warn!(service, error = %format!("{e:#}"), "could not register in etcd; trying again");
                    announced = true;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    match etcd.revoke(&lease).await {
                        Ok(()) => tracing::info!(service, key, "deregistered from etcd"),
                        Err(e) => tracing::warn!(service, error = %format!("{e:#}"), "could not deregister; the lease expires"),
                    }
                    return;
                }
                () = tokio::time::sleep(LEASE_TTL / 4) => {}
            }
            match etcd.keep_alive(&lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(service, "etcd lease expired; registering again");
                    break;
                }
                // etcd is away: keep trying to renew; if the lease lapses meanwhile, the next
                // renewal says so and the registration is put back.
                Err(e) => tracing::debug!(service, error = %format!("{e:#}"), "etcd keepalive failed"),
            }
        }
    }
}

/// Follows the registrations of `service`: the targets now (empty, after saying why, if etcd
/// does not answer), and every change after, until every receiver is gone.
pub async fn follow(etcd: Etcd, service: String) -> watch::Receiver<Vec<Target>> {
    let prefix = format!("{PREFIX}{service}/");
    let first = etcd.range_prefix(&prefix).await;
    let (mut known, mut revision) = match first {
        Ok((revision, kvs)) => (kvs.into_iter().collect::<BTreeMap<_, _>>(), Some(revision)),
        Err(e) => {
            tracing::warn!(service, error = %format!("{e:#}"), "etcd did not answer; no replicas known yet");
            (BTreeMap::new(), None)
        }
    };
    let (tx, rx) = watch::channel(targets_of(&service, &known));
    tokio::spawn(async move {
        loop {
            // Catch up with a range when the watch is new or broke; keep what we knew on failure.
            let from = match revision.take() {
                Some(r) => r,
                None => match etcd.range_prefix(&prefix).await {
                    Ok((r, kvs)) => {
                        known = kvs.into_iter().collect();
                        publish(&tx, &service, &known);
                        r
                    }
                    Err(_) => {
                        tokio::select! {
                            () = tx.closed() => return,
                            () = tokio::time::sleep(RETRY) => continue,
                        }
                    }
                },
            };
            if let Ok(stream) = etcd.watch_prefix(&prefix, from + 1).await {
                let mut stream = std::pin::pin!(stream);
                loop {
                    let next = tokio::select! {
                        () = tx.closed() => return,
                        next = stream.next() => next,
                    };
                    match next {
                        Some(Ok(changes)) => {
                            for change in changes {
                                match change {
                                    Change::Put(key, value) => known.insert(key, value),
                                    Change::Delete(key) => known.remove(&key),
                                };
                            }
                            publish(&tx, &service, &known);
                        }
                        Some(Err(e)) => {
                            tracing::warn!(service, error = %format!("{e:#}"), "etcd watch ended");
                            break;
                        }
                        None => break,
                    }
                }
            }
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    });
    rx
}

fn publish(tx: &watch::Sender<Vec<Target>>, service: &str, known: &BTreeMap<String, Vec<u8>>) {
    let targets = targets_of(service, known);
    tx.send_if_modified(|current| {
        let changed = *current != targets;
        if changed {
            tracing::info!(service, replicas = targets.len(), "registered replicas changed");
            *current = targets;
        }
        changed
    });
}

fn targets_of(service: &str, known: &BTreeMap<String, Vec<u8>>) -> Vec<Target> {
    let mut targets: Vec<Target> = known
        .iter()
        .filter_map(|(key, value)| match serde_json::from_slice::<Registration>(value) {
            Ok(r) => Some(Target {
                url: format!("http://{}", r.addr),
                weight: r.weight.clamp(1, crate::discovery::MAX_WEIGHT),
            }),
            Err(e) => {
                tracing::warn!(service, key, error = %e, "ignoring a registration that does not parse");
                None
            }
        })
        .collect();
    targets.sort();
    targets.dedup();
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_urls_name_endpoints_and_a_path() {
        let (endpoints, path) = parse_url("etcd://10.0.0.1:2379,10.0.0.2:2379/books").unwrap();
        assert_eq!(endpoints, ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
        assert_eq!(path, "books");
        assert_eq!(parse_url("etcd://127.0.0.1:2379").unwrap().1, "");
        assert!(parse_url("etcd://127.0.0.1/books").is_err(), "a port is required");
        assert!(parse_url("http://127.0.0.1:2379/books").is_err());
    }

    #[tokio::test]
    async fn a_replica_bound_to_every_address_registers_the_one_it_reaches_the_registry_from() {
        let stop = CancellationToken::new();
        let bound: std::net::SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let toward_loopback = ["http://127.0.0.1:2379".to_owned()];
        let addr = reachable_addr(&toward_loopback, bound, &stop).await.unwrap();
        assert_eq!(
            addr,
            "127.0.0.1:50051".parse().unwrap(),
            "a registry on this host is reached over the loopback"
        );

        let specific: std::net::SocketAddr = "10.1.2.3:50051".parse().unwrap();
        assert_eq!(
            reachable_addr(&toward_loopback, specific, &stop).await,
            Some(specific),
            "a bound address is kept"
        );

        // Only an IPv6 registry for an IPv4 listener: no address it could be reached at, so it
        // keeps trying, and registers nothing once told to stop.
        let only_v6 = ["http://[::1]:2379".to_owned()];
        let trying = tokio::spawn({
            let stop = stop.clone();
            async move { reachable_addr(&only_v6, bound, &stop).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!trying.is_finished(), "still trying");
        stop.cancel();
        assert_eq!(trying.await.unwrap(), None);
    }

    #[test]
    fn a_prefix_range_ends_after_every_key_that_starts_with_it() {
        assert_eq!(prefix_end("/a/"), b"/a0");
        assert_eq!(prefix_end("ab"), b"ac");
    }

    #[test]
    fn watch_messages_become_puts_and_deletes() {
        let put = format!(
            r#"{{"result":{{"header":{{"revision":"5"}},"events":[{{"kv":{{"key":"{}","value":"{}"}}}},{{"type":"DELETE","kv":{{"key":"{}"}}}}]}}}}"#,
            B64.encode("/k/1"),
            B64.encode("v"),
            B64.encode("/k/2")
        );
        assert_eq!(
            parse_watch_message(put.as_bytes()).unwrap(),
            vec![Change::Put("/k/1".into(), b"v".to_vec()), Change::Delete("/k/2".into())]
        );
        assert!(parse_watch_message(br#"{"result":{"canceled":true}}"#).is_err());
        assert_eq!(parse_watch_message(br#"{"result":{"created":true}}"#).unwrap(), vec![]);
    }
}

/// Against a real etcd of the test's own (`BOOKSTORE_TEST_ETCD`).
#[cfg(test)]
mod server_tests {
    use std::time::Instant;

    use super::*;
    use crate::testing::EtcdNode;

    fn client(node: &EtcdNode) -> Etcd {
        Etcd::new(parse_url(&node.url()).unwrap().0)
    }

    fn registration(port: u16, weight: u32) -> Registration {
        Registration { addr: format!("127.0.0.1:{port}"), weight, version: "test".into() }
    }

    async fn until(what: &str, rx: &mut watch::Receiver<Vec<Target>>, want: impl Fn(&[Target]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !want(&rx.borrow_and_update()) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}; have {:?}", *rx.borrow());
            let _ = tokio::time::timeout(left, rx.changed()).await;
        }
    }

    fn urls(targets: &[Target]) -> Vec<(&str, u32)> {
        targets.iter().map(|t| (t.url.as_str(), t.weight)).collect()
    }

    #[tokio::test]
    async fn registrations_appear_to_watchers_and_vanish_when_revoked() {
        let Some(node) = EtcdNode::start_or_skip().await else { return };
        let mut rx = follow(client(&node), "books".into()).await;
        assert!(rx.borrow().is_empty());
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        let a = tokio::spawn(register(client(&node), "books", "a", registration(1, 1), stop_a.clone()));
        tokio::spawn(register(client(&node), "books", "b", registration(2, 3), stop_b.clone()));
        // Another service's registrations are not books'.
        tokio::spawn(register(client(&node), "users", "u", registration(3, 1), CancellationToken::new()));
        until("both books replicas", &mut rx, |t| {
            urls(t) == [("http://127.0.0.1:1", 1), ("http://127.0.0.1:2", 3)]
        })
        .await;
        stop_a.cancel();
        a.await.unwrap();
        until("a's deregistration", &mut rx, |t| urls(t) == [("http://127.0.0.1:2", 3)]).await;
        stop_b.cancel();
    }

    #[tokio::test]
    async fn while_etcd_is_down_watchers_keep_what_they_knew_and_registrations_return_after() {
        let Some(mut node) = EtcdNode::start_or_skip().await else { return };
        let mut rx = follow(client(&node), "books".into()).await;
        tokio::spawn(register(client(&node), "books", "a", registration(1, 1), CancellationToken::new()));
        until("a", &mut rx, |t| t.len() == 1).await;

        node.stop();
        tokio::spawn(register(client(&node), "books", "b", registration(2, 1), CancellationToken::new()));
        // The watch breaks and the client cannot range: it keeps its last replicas.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(urls(&rx.borrow()), [("http://127.0.0.1:1", 1)]);

        node.start().await.unwrap();
        until("a and b after etcd returned", &mut rx, |t| t.len() == 2).await;
    }
}
