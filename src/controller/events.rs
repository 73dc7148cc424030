//! Kubernetes Events (`events.k8s.io/v1`) with a bounded series cache.
//!
//! kube-runtime's `Recorder` keeps every event of the last six minutes and walks that whole
//! cache on every publish: measured at 10k grants (BENCHMARKS.md) it was 17% of the operator's
//! CPU and a few KB of memory per recent transition. This publisher keeps the same behaviour
//! users see (a repeated event becomes one Event whose `series.count` grows, as the apiserver's
//! own recorder does) with a cache bounded in entries and age, and O(1) work per publish.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Who reports the events.
#[derive(Clone, Debug)]
pub struct Reporter {
    /// `reportingController`.
    pub controller: String,
    /// `reportingInstance` (the pod name), or the controller's name.
    pub instance: String,
}

/// One event to publish about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSpec {
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// Reason (CamelCase).
    pub reason: String,
    /// Human-readable note (at most 1 KB is sent).
    pub note: String,
    pub action: String,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    warning: bool,
    reason: String,
    note: String,
}

struct Entry {
    name: String,
    count: i32,
    seq: u64,
}

/// Bounded series cache: at most `capacity` entries, none older than `ttl`.
pub struct SeriesCache {
    capacity: usize,
    ttl: Duration,
    map: HashMap<Key, Entry>,
    order: VecDeque<(Instant, u64, Key)>,
    seq: u64,
}

/// What to send for one publish.
#[derive(Debug, PartialEq, Eq)]
pub enum Publish {
    /// A new Event object.
    Create { name: String },
    /// The Event `name` (in the object's namespace) seen again: its series count is now `count`.
    Repeat { name: String, count: i32 },
}

impl SeriesCache {
    /// New cache.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            ttl,
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn evict(&mut self, now: Instant) {
        // `order` holds one record per touch, oldest first; a record is stale when its key was
        // touched again later (the entry's `seq` is newer) and is then only dropped. Dropping a
        // live record evicts the least recently touched entry.
        while let Some((at, seq, key)) = self.order.front() {
            let too_many = self.map.len() > self.capacity;
            let expired = now.saturating_duration_since(*at) >= self.ttl;
            if !too_many && !expired && self.order.len() <= 2 * self.capacity {
                break;
            }
            let live = self.map.get(key).is_some_and(|e| e.seq == *seq);
            if let Some((_, _, key)) = self.order.pop_front()
                && live
            {
                self.map.remove(&key);
            }
        }
    }

    /// Records one publish and says what to send.
    pub fn touch(
        &mut self,
        uid: &str,
        ev: &EventSpec,
        fresh_name: impl FnOnce() -> String,
        now: Instant,
    ) -> Publish {
        self.evict(now);
        self.seq += 1;
        let seq = self.seq;
        let key = Key {
            uid: uid.to_string(),
            warning: ev.warning,
            reason: ev.reason.clone(),
            note: ev.note.clone(),
        };
        let send = match self.map.get_mut(&key) {
            Some(e) => {
                e.count += 1;
                e.seq = seq;
                Publish::Repeat {
                    name: e.name.clone(),
                    count: e.count,
                }
            }
            None => {
                let name = fresh_name();
                self.map.insert(
                    key.clone(),
                    Entry {
                        name: name.clone(),
                        count: 1,
                        seq,
                    },
                );
                Publish::Create { name }
            }
        };
        self.order.push_back((now, seq, key));
        self.evict(now);
        send
    }

    /// Forgets a key whose Event could not be written (so the next publish creates one).
    fn forget(&mut self, uid: &str, ev: &EventSpec) {
        self.map.remove(&Key {
            uid: uid.to_string(),
            warning: ev.warning,
            reason: ev.reason.clone(),
            note: ev.note.clone(),
        });
    }
}

/// Publishes Events for the controller.
pub struct Publisher {
    client: Client,
    reporter: Reporter,
    cache: Mutex<SeriesCache>,
}

/// Entries kept for series (one per distinct recent event).
pub const SERIES_CAPACITY: usize = 2048;
/// How long a repeated event joins its series (kube's recorder: 6 minutes).
pub const SERIES_TTL: Duration = Duration::from_secs(360);

impl Publisher {
    /// New publisher.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            cache: Mutex::new(SeriesCache::new(SERIES_CAPACITY, SERIES_TTL)),
        }
    }

    /// Publishes one event about `regarding` (which must carry namespace, name and uid).
    pub async fn publish(
        &self,
        ev: &EventSpec,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let uid = regarding.uid.clone().unwrap_or_default();
        let now = crate::clock::now();
        let base = regarding
            .name
            .as_deref()
            .unwrap_or(&self.reporter.controller);
        let send = {
            let mut cache = match self.cache.lock() {
                Ok(c) => c,
                Err(p) => p.into_inner(),
            };
            cache.touch(
                &uid,
                ev,
                || format!("{base}.{:x}", now.timestamp_nanos_opt().unwrap_or_default()),
                Instant::now(),
            )
        };
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let micro = MicroTime(jiff_now(now));
        let result = match &send {
            Publish::Create { name } => {
                let event = K8sEvent {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        ..Default::default()
                    },
                    action: Some(ev.action.clone()),
                    reason: Some(ev.reason.clone()),
                    note: Some(ev.note.chars().take(1000).collect()),
                    type_: Some(if ev.warning { "Warning" } else { "Normal" }.into()),
                    event_time: Some(micro),
                    regarding: Some(regarding.clone()),
                    reporting_controller: Some(self.reporter.controller.clone()),
                    reporting_instance: Some(self.reporter.instance.clone()),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &event).await.map(|_| ())
            }
            Publish::Repeat { name, count } => {
                let series = EventSeries {
                    count: *count,
                    last_observed_time: micro,
                };
                api.patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({ "series": series })),
                )
                .await
                .map(|_| ())
            }
        };
        if result.is_err() {
            let mut cache = match self.cache.lock() {
                Ok(c) => c,
                Err(p) => p.into_inner(),
            };
            cache.forget(&uid, ev);
        }
        result
    }
}

fn jiff_now(now: chrono::DateTime<chrono::Utc>) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::new(now.timestamp(), now.timestamp_subsec_nanos() as i32)
        .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(reason: &str) -> EventSpec {
        EventSpec {
            warning: false,
            reason: reason.into(),
            note: "n".into(),
            action: "Reconcile".into(),
        }
    }

    #[test]
    fn a_repeat_joins_the_series_and_a_new_reason_creates() {
        let mut c = SeriesCache::new(10, Duration::from_secs(60));
        let t = Instant::now();
        let mut n = 0;
        let mut name = || {
            n += 1;
            format!("e{n}")
        };
        assert_eq!(
            c.touch("u", &ev("A"), &mut name, t),
            Publish::Create { name: "e1".into() }
        );
        assert_eq!(
            c.touch("u", &ev("A"), &mut name, t),
            Publish::Repeat {
                name: "e1".into(),
                count: 2
            }
        );
        assert_eq!(
            c.touch("u", &ev("B"), &mut name, t),
            Publish::Create { name: "e2".into() }
        );
        assert_eq!(
            c.touch("v", &ev("A"), &mut name, t),
            Publish::Create { name: "e3".into() }
        );
    }

    #[test]
    fn the_cache_is_bounded_in_entries_and_age() {
        let mut c = SeriesCache::new(100, Duration::from_secs(60));
        let t = Instant::now();
        for i in 0..10_000 {
            c.touch(&format!("u{i}"), &ev("A"), || "x".into(), t);
            assert!(c.len() <= 100);
            assert!(c.order.len() <= 201);
        }
        // Repeats of one key do not grow it either, and stay one series.
        c.touch("same", &ev("A"), || "first".into(), t);
        for i in 0..10_000 {
            let send = c.touch("same", &ev("A"), || "x".into(), t);
            assert_eq!(
                send,
                Publish::Repeat {
                    name: "first".into(),
                    count: i + 2
                }
            );
            assert!(c.order.len() <= 201);
        }
        let later = t + Duration::from_secs(61);
        let send = c.touch("same", &ev("A"), || "fresh".into(), later);
        assert_eq!(
            send,
            Publish::Create {
                name: "fresh".into()
            }
        );
        assert_eq!(c.len(), 1);
    }
}
