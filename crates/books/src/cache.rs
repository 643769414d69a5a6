//! Books' read cache: an in-process tier in front of an optional tier shared in Redis.
//!
//! The in-process tier ([moka]) answers most reads without a socket. With `books_redis_url` set,
//! a miss there asks Redis before the database, so a book read by one replica is served to
//! every replica, and a write through any replica evicts the book everywhere at once: from
//! Redis, and from every replica's in-process tier through a pub/sub message.
//!
//! Staleness is ruled out by generations rather than bounded by a TTL alone:
//!
//! - In Redis each book has a generation counter, bumped (with the value deleted and the
//!   eviction published) after every committed write. A reader notes the generation in the same
//!   round trip as its lookup, reads the database, and fills Redis only if the generation has not
//!   moved meanwhile (a Lua script checks and sets at once). A reader that read the database
//!   before a write committed therefore either fills before the write's eviction, which then
//!   deletes the value, or is refused: the leases of Facebook's memcache paper, with a counter.
//! - In-process, a counter of evictions heard does the same for the local tier.
//!
//! What remains is bounded by the TTLs: a lost eviction (Redis down during a write, a pub/sub
//! message missed while a replica reconnected; a reconnection clears the local tier). Stock
//! decisions never read the cache: they are conditional updates in the database.
//!
//! (Libraries looked at: moka's own future cache has no second tier; `redis`' client-side caching
//! (RESP3 tracking) is marked experimental and needs RESP3 end to end; a cache crate such as
//! `cached` has Redis stores but no invalidation across replicas. The two tiers here are each a
//! well-kept crate; this module is the protocol between them.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::domain::Book;

/// How long a generation counter outlives the last write to its book: far longer than any read,
/// so a counter never restarts under a reader that noted it.
const GENERATION_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long a call to Redis may take before the read goes to the database instead.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// Sets the value only if the generation is still the one the reader saw before it read the
/// database. KEYS: generation, value. ARGV: generation seen ("" for none), value, TTL in ms.
const FILL: &str = r"
local now = redis.call('GET', KEYS[1]) or ''
if now ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
";

/// Both tiers, and the counters that say how they serve.
pub struct BookCache {
    local: Option<moka::sync::Cache<String, Book>>,
    shared: Option<Shared>,
    /// Evictions heard or made here; a local fill is dropped if this moved during its read.
    evictions: AtomicU64,
    /// `cache_lookups_total{cache="book"|"book_shared", result="hit"|"miss"}`.
    lookups: [metrics::Counter; 4],
}

impl std::fmt::Debug for BookCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BookCache")
            .field("local", &self.local.is_some())
            .field("shared", &self.shared.as_ref().map(|s| &s.prefix))
            .finish()
    }
}

/// What a lookup found before the database has to be asked.
pub enum Lookup {
    Hit(Book),
    /// Not cached: fill with [`BookCache::fill`] and this ticket once the database answered.
    Miss(Ticket),
}

/// The generations a reader saw before it read the database.
pub struct Ticket {
    local: u64,
    shared: Option<String>,
}

impl BookCache {
    /// No tiers: every read goes to the database.
    pub fn none() -> Self {
        let lookups = [("book", "hit"), ("book", "miss"), ("book_shared", "hit"), ("book_shared", "miss")]
            .map(|(cache, result)| {
                metrics::counter!("cache_lookups_total", "service" => "books", "cache" => cache, "result" => result)
            });
        Self { local: None, shared: None, evictions: AtomicU64::new(0), lookups }
    }

    /// Adds the in-process tier: up to `capacity` books for `ttl` each; a zero TTL leaves it off.
    pub fn with_local(mut self, ttl: Duration, capacity: u64) -> Self {
        self.local = (!ttl.is_zero())
            .then(|| moka::sync::Cache::builder().max_capacity(capacity).time_to_live(ttl).build());
        self
    }

    /// Adds the tier shared through Redis.
    pub fn with_shared(mut self, shared: Shared) -> Self {
        self.shared = Some(shared);
        self
    }

    pub fn is_off(&self) -> bool {
        self.local.is_none() && self.shared.is_none()
    }

    pub async fn lookup(&self, id: &str) -> Lookup {
        let local = self.evictions.load(Ordering::Acquire);
        if let Some(cache) = &self.local {
            if let Some(book) = cache.get(id) {
                self.lookups[0].increment(1);
                return Lookup::Hit(book);
            }
            self.lookups[1].increment(1);
        }
        let mut ticket = Ticket { local, shared: None };
        if let Some(shared) = &self.shared {
            match shared.lookup(id).await {
                Ok((Some(book), _)) => {
                    self.lookups[2].increment(1);
                    self.fill_local(&book, local);
                    return Lookup::Hit(book);
                }
                Ok((None, generation)) => {
                    self.lookups[3].increment(1);
                    ticket.shared = Some(generation);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the shared book cache did not answer; reading the database")
                }
            }
        }
        Lookup::Miss(ticket)
    }

    /// Keeps what the database answered, in each tier whose generation did not move.
    pub async fn fill(&self, book: &Book, ticket: Ticket) {
        if let (Some(shared), Some(generation)) = (&self.shared, ticket.shared)
            && let Err(e) = shared.fill(book, &generation).await
        {
            tracing::debug!(error = %e, "filling the shared book cache failed");
        }
        self.fill_local(book, ticket.local);
    }

    fn fill_local(&self, book: &Book, seen: u64) {
        if let Some(cache) = &self.local {
            // `get_with`-style races are fine: a concurrent eviction bumps the counter first.
            if self.evictions.load(Ordering::Acquire) == seen {
                cache.insert(book.id.clone(), book.clone());
            }
        }
    }

    /// Evicts books after a committed write: here, in Redis, and (by message) in every replica.
    pub async fn evict<'a>(&self, ids: impl IntoIterator<Item = &'a str> + Clone) {
        self.evict_here(ids.clone());
        if let Some(shared) = &self.shared
            && let Err(e) = shared.evict(ids).await
        {
            tracing::warn!(
                error = %e,
                "evicting books from the shared cache failed; other replicas may serve them stale until the TTL"
            );
        }
    }

    fn evict_here<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        self.evictions.fetch_add(1, Ordering::AcqRel);
        if let Some(cache) = &self.local {
            for id in ids {
                cache.invalidate(id);
            }
        }
    }

    fn evict_all_here(&self) {
        self.evictions.fetch_add(1, Ordering::AcqRel);
        if let Some(cache) = &self.local {
            cache.invalidate_all();
        }
    }

    /// Hears other replicas' evictions until `stop`; after each (re)subscription, clears the
    /// in-process tier for what was published meanwhile.
    pub async fn listen(self: Arc<Self>, stop: CancellationToken) {
        let Some(shared) = &self.shared else { return };
        bookstore_platform::pubsub::listen(
            &shared.client,
            &shared.channel,
            "book evictions",
            &stop,
            || self.evict_all_here(),
            |ids| match ids {
                Some(ids) => self.evict_here(ids.split(',')),
                None => self.evict_all_here(),
            },
        )
        .await;
    }
}

/// The tier in Redis: `<prefix>:books:book:<id>` (the book, JSON, with a TTL),
/// `<prefix>:books:generation:<id>`, and evictions on the channel `<prefix>:books:evicted`
/// (comma-separated ids).
pub struct Shared {
    client: redis::Client,
    connection: ConnectionManager,
    prefix: String,
    channel: String,
    ttl: Duration,
    fill: redis::Script,
}

impl Shared {
    /// The tier in Redis at `url` (connected on first use); keys start with `prefix`; books are
    /// kept for `ttl` (above 0).
    pub async fn connect(url: &str, prefix: &str, ttl: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("books_redis_url: {e}"))?;
        // Lazy, and quick to give up: a read never waits long on a cache that is down, and books
        // starts (reading the database) while Redis is away.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let prefix = format!("{prefix}:books");
        Ok(Self {
            client,
            connection,
            channel: format!("{prefix}:evicted"),
            prefix,
            ttl,
            fill: redis::Script::new(FILL),
        })
    }

    fn value_key(&self, id: &str) -> String {
        format!("{}:book:{id}", self.prefix)
    }

    fn generation_key(&self, id: &str) -> String {
        format!("{}:generation:{id}", self.prefix)
    }

    /// The cached book if any, and the book's generation ("" for none), in one round trip.
    async fn lookup(&self, id: &str) -> anyhow::Result<(Option<Book>, String)> {
        let mut connection = self.connection.clone();
        let (value, generation): (Option<String>, Option<String>) = redis::pipe()
            .get(self.value_key(id))
            .get(self.generation_key(id))
            .query_async(&mut connection)
            .await?;
        // One that does not decode (written by another release, say) is read from the database
        // and written anew.
        let book = value.and_then(|json| serde_json::from_str::<Book>(&json).ok());
        Ok((book, generation.unwrap_or_default()))
    }

    async fn fill(&self, book: &Book, generation: &str) -> anyhow::Result<()> {
        let mut connection = self.connection.clone();
        let _: i64 = self
            .fill
            .key(self.generation_key(&book.id))
            .key(self.value_key(&book.id))
            .arg(generation)
            .arg(serde_json::to_string(book)?)
            .arg(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut connection)
            .await?;
        Ok(())
    }

    async fn evict<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut published = Vec::new();
        for id in ids {
            let generation = self.generation_key(id);
            pipe.incr(&generation, 1).ignore();
            pipe.pexpire(&generation, i64::try_from(GENERATION_TTL.as_millis()).unwrap_or(i64::MAX)).ignore();
            pipe.del(self.value_key(id)).ignore();
            published.push(id);
        }
        if published.is_empty() {
            return Ok(());
        }
        pipe.publish(&self.channel, published.join(",")).ignore();
        let mut connection = self.connection.clone();
        let () = pipe.query_async(&mut connection).await?;
        Ok(())
    }
}
