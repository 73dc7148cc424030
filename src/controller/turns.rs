//! One pass at a time per grant, across the controller's two lanes.
//!
//! kube's `Controller` runs at most one reconcile per object, but the operator runs two
//! controllers over the same grants: the main one, and a lane for grants that are taking
//! access away (deleted or suspended), so that a revocation never waits in the main queue
//! behind thousands of grants waiting for ARM's write budget. A grant in both queues must
//! still be reconciled by one pass at a time: the second waits for the first and then plans
//! from what the first left. (Two passes at once would stay safe, as two replicas do: every
//! Azure write is claimed by an intent written on the resourceVersion it was planned from.
//! They would only waste reads.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A grant's lock, by (namespace, name).
type Locks = HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>;

/// Per-grant turns: a map of per-key locks that holds only keys in use. (A pass cancelled while
/// waiting can leave its key behind: one small entry, reused by the grant's next pass.)
#[derive(Debug, Default)]
pub struct Turns {
    locks: Mutex<Locks>,
}

/// A grant's turn: held for a whole pass.
pub struct Turn<'a> {
    turns: &'a Turns,
    key: (String, String),
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Turns {
    /// Waits for the grant `(namespace, name)`'s turn.
    pub async fn take(&self, namespace: &str, name: &str) -> Turn<'_> {
        let key = (namespace.to_string(), name.to_string());
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        Turn {
            turns: self,
            key,
            lock,
            guard: Some(guard),
        }
    }

    /// Grants with a pass running or waiting.
    pub fn len(&self) -> usize {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// No pass running or waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.turns.locks.lock().unwrap_or_else(|p| p.into_inner());
        // The map and this turn hold the lock and nobody else: nobody waits for it, and nobody
        // can start to without the map's lock, which we hold.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_pass_at_a_time_per_grant_and_the_map_empties() {
        let turns = Arc::new(Turns::default());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (turns, running, most) = (turns.clone(), running.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let _t = turns.take("ns", "g").await;
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                running.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "never two passes at once");
        assert!(turns.is_empty(), "no lock kept once every pass is done");
    }

    #[tokio::test]
    async fn other_grants_do_not_wait() {
        use futures::FutureExt;
        let turns = Turns::default();
        let _a = turns.take("ns", "a").await;
        let _b = turns
            .take("ns", "b")
            .now_or_never()
            .expect("another grant's turn is free at once");
        let _c = turns
            .take("other", "a")
            .now_or_never()
            .expect("the same name in another namespace is another grant");
        assert!(
            turns.take("ns", "a").now_or_never().is_none(),
            "the same grant waits"
        );
        assert_eq!(turns.len(), 3);
    }
}
