//! Shared, single-flight Azure reads with a short TTL: one JIT policy GET serves every grant on
//! that policy, one schedule-instance list serves every PIM grant of a principal at a scope.
//! Writes invalidate the entries they change.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

type Slot<V> = Arc<tokio::sync::Mutex<Option<(Instant, V)>>>;

/// A TTL cache where concurrent misses for one key make a single call.
pub struct ReadCache<K, V> {
    ttl: Duration,
    slots: Mutex<Slots<K, V>>,
}

struct Slots<K, V> {
    map: HashMap<K, Slot<V>>,
    /// Sweep expired entries when the map grows past this (doubles the live size each sweep),
    /// so the cache holds about what the last TTL used, not every key ever read.
    sweep_at: usize,
}

const MIN_SWEEP: usize = 1024;

impl<K: Eq + Hash + Clone, V: Clone> ReadCache<K, V> {
    /// New cache.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            slots: Mutex::new(Slots {
                map: HashMap::new(),
                sweep_at: MIN_SWEEP,
            }),
        }
    }

    fn slot(&self, key: &K) -> Slot<V> {
        let mut slots = match self.slots.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if slots.map.len() >= slots.sweep_at {
            Self::sweep_locked(&mut slots, self.ttl);
        }
        slots.map.entry(key.clone()).or_default().clone()
    }

    fn sweep_locked(slots: &mut Slots<K, V>, ttl: Duration) {
        // A slot in use (locked) or still fresh stays; an expired or empty one goes.
        slots.map.retain(|_, slot| match slot.try_lock() {
            Ok(v) => v.as_ref().is_some_and(|(at, _)| at.elapsed() < ttl),
            Err(_) => true,
        });
        slots.sweep_at = (slots.map.len() * 2).max(MIN_SWEEP);
    }

    /// Drops expired entries now (called periodically, so an idle cache does not keep what
    /// the last burst read).
    pub fn sweep(&self) {
        let mut slots = match self.slots.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        Self::sweep_locked(&mut slots, self.ttl);
    }

    /// The cached value, or the result of `load` (stored on success).
    pub async fn get_or_load<E, F, Fut>(&self, key: &K, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, E>>,
    {
        self.get_or_load_since(key, None, load).await
    }

    /// Like `get_or_load`, but a cached value only serves if its read started at or after
    /// `since` (e.g. a grant's end time: confirming an expiry needs a read made after it).
    pub async fn get_or_load_since<E, F, Fut>(
        &self,
        key: &K,
        since: Option<Instant>,
        load: F,
    ) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, E>>,
    {
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        if let Some((at, v)) = guard.as_ref()
            && at.elapsed() < self.ttl
            && since.is_none_or(|s| *at >= s)
        {
            return Ok(v.clone());
        }
        // Stamped with when the read started: the answer is at least that new.
        let started = Instant::now();
        let v = load().await?;
        *guard = Some((started, v.clone()));
        Ok(v)
    }

    /// Forgets a key (after a write that changed it).
    pub fn invalidate(&self, key: &K) {
        let mut slots = match self.slots.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        slots.map.remove(key);
    }
}

impl<K, V> ReadCache<K, V> {
    /// Keys held (fresh or not yet swept).
    pub fn len(&self) -> usize {
        match self.slots.lock() {
            Ok(m) => m.map.len(),
            Err(p) => p.into_inner().map.len(),
        }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_swept_so_the_cache_stays_bounded() {
        let c: ReadCache<u32, u32> = ReadCache::new(Duration::from_secs(2));
        for i in 0..10_000u32 {
            let v = c
                .get_or_load(&i, || async move { Ok::<_, ()>(i * 2) })
                .await;
            assert_eq!(v, Ok(i * 2));
            if i % 100 == 0 {
                tokio::time::advance(Duration::from_secs(1)).await;
            }
        }
        // About two seconds' worth of keys (200) live; sweeps keep at most ~2x the live set or
        // the minimum.
        assert!(c.len() <= 2 * MIN_SWEEP, "{} entries kept", c.len());
        // An explicit sweep after the TTL empties it.
        tokio::time::advance(Duration::from_secs(3)).await;
        c.sweep();
        assert!(c.is_empty(), "{} entries kept", c.len());
        c.get_or_load(&9_999, || async { Ok::<_, ()>(19_998) })
            .await
            .ok();
        // A fresh entry is served from the cache.
        let again = c.get_or_load(&9_999, || async { Err::<u32, ()>(()) }).await;
        assert_eq!(again, Ok(19_998));
        // ...but not to a caller that needs a read made after a later moment.
        tokio::time::advance(Duration::from_millis(500)).await;
        let since = Instant::now();
        let newer = c
            .get_or_load_since(&9_999, Some(since), || async { Ok::<_, ()>(7) })
            .await;
        assert_eq!(newer, Ok(7));
        let shared = c
            .get_or_load_since(&9_999, Some(since), || async { Err::<u32, ()>(()) })
            .await;
        assert_eq!(shared, Ok(7), "a read made after `since` is shared");
    }
}
