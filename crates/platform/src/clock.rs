//! The one clock: wall time as Unix milliseconds, the unit every table and event stores.

/// Milliseconds since the Unix epoch; 0 on a clock set before 1970.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// How often loops that are woken when work arrives in this process also look for work nobody
/// woke them for (another process's): the outbox relay, the event log's readers. A second,
/// unless [`set_idle_poll`] said otherwise.
static IDLE_POLL_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);

pub fn idle_poll() -> std::time::Duration {
    std::time::Duration::from_millis(IDLE_POLL_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Sets [`idle_poll`] for the whole process. The instruction-count workload, alone in its
/// process, makes it long, so its counts do not grow with how slowly the machine runs it.
pub fn set_idle_poll(period: std::time::Duration) {
    let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
    IDLE_POLL_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}
