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
    slots: Mutex<HashMap<K, Slot<V>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> ReadCache<K, V> {
    /// New cache.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, key: &K) -> Slot<V> {
        let mut map = match self.slots.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if map.len() > 50_000 {
            map.clear();
        }
        map.entry(key.clone()).or_default().clone()
    }

    /// The cached value, or the result of `load` (stored on success).
    pub async fn get_or_load<E, F, Fut>(&self, key: &K, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, E>>,
    {
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        if let Some((at, v)) = guard.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(v.clone());
        }
        let v = load().await?;
        *guard = Some((Instant::now(), v.clone()));
        Ok(v)
    }

    /// Forgets a key (after a write that changed it).
    pub fn invalidate(&self, key: &K) {
        let mut map = match self.slots.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.remove(key);
    }
}
