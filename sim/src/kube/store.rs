//! The object store: one global, monotonic resourceVersion; a bounded event history for watches.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use axum::body::Bytes;
use serde_json::Value;
use tokio::sync::broadcast;

use super::registry::{Builtin, ResourceDef, StoreKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One stored version of an object: its JSON, serialised once and shared (by reference count)
/// between the store, the watch history and every answer that shows it unchanged.
#[derive(Debug)]
pub(crate) struct Stored {
    json: Bytes,
    /// `apiVersion` and `kind` as stored (when strings): when they are the ones a request's
    /// resource shows, the stored JSON is exactly what that request answers.
    api_version: Option<Box<str>>,
    kind: Option<Box<str>>,
    /// `metadata.resourceVersion` as stored.
    resource_version: Box<str>,
}

impl Stored {
    pub fn new(v: &Value) -> Arc<Stored> {
        let json = serde_json::to_vec(v).unwrap_or_default();
        let s = |x: &Value| x.as_str().map(Box::<str>::from);
        Arc::new(Stored {
            json: Bytes::from(json),
            api_version: s(&v["apiVersion"]),
            kind: s(&v["kind"]),
            resource_version: s(&v["metadata"]["resourceVersion"]).unwrap_or_default(),
        })
    }
    /// The stored object (parsed from its JSON).
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }
    pub fn json_len(&self) -> usize {
        self.json.len()
    }
    pub fn resource_version(&self) -> &str {
        &self.resource_version
    }
    /// The JSON of the object as `def` shows it, when that is the stored JSON itself (the
    /// stored `apiVersion` and `kind` are `def`'s and no conversion applies), without parsing.
    pub fn presented_json(&self, def: &ResourceDef) -> Option<&Bytes> {
        let av_ok = self.api_version.as_deref().is_some_and(|av| {
            if def.group.is_empty() {
                av == def.version
            } else {
                av.strip_prefix(def.group.as_str())
                    .and_then(|r| r.strip_prefix('/'))
                    == Some(def.version.as_str())
            }
        });
        (def.builtin != Builtin::EventV1
            && av_ok
            && self.kind.as_deref() == Some(def.kind.as_str()))
        .then_some(&self.json)
    }
}

#[derive(Debug)]
pub(crate) struct StoreEvent {
    pub rv: u64,
    pub key: StoreKey,
    pub namespace: String,
    pub etype: EventType,
    pub object: Arc<Stored>,
    /// The version this event replaced (shared with the store's or history's copy).
    pub old: Option<Arc<Stored>>,
}

pub(crate) type ObjKey = (String, String);

/// Past events after a resourceVersion, and a receiver for the ones to come.
pub(crate) type Subscription = (Vec<Arc<StoreEvent>>, broadcast::Receiver<Arc<StoreEvent>>);

pub(crate) struct Store {
    rv: u64,
    objects: HashMap<StoreKey, BTreeMap<ObjKey, Arc<Stored>>>,
    history: VecDeque<Arc<StoreEvent>>,
    history_cap: usize,
    /// Watches from a resourceVersion older than this get 410 Gone.
    compacted: u64,
    tx: broadcast::Sender<Arc<StoreEvent>>,
}

impl Store {
    pub fn new(history_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self {
            rv: 0,
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            compacted: 0,
            tx,
        }
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn compacted_rv(&self) -> u64 {
        self.compacted
    }

    pub fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    pub fn get_stored(&self, key: &StoreKey, ns: &str, name: &str) -> Option<&Arc<Stored>> {
        self.objects
            .get(key)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
    }

    /// The stored object, parsed.
    pub fn get(&self, key: &StoreKey, ns: &str, name: &str) -> Option<Value> {
        self.get_stored(key, ns, name).map(|s| s.value())
    }

    pub fn contains(&self, key: &StoreKey, ns: &str, name: &str) -> bool {
        self.get_stored(key, ns, name).is_some()
    }

    /// Objects of a resource (in one namespace if given), in key order.
    pub fn list(&self, key: &StoreKey, ns: Option<&str>) -> Vec<(ObjKey, Arc<Stored>)> {
        let Some(m) = self.objects.get(key) else {
            return vec![];
        };
        match ns {
            Some(ns) => m
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            None => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// Objects in key order, optionally in one namespace and after a key (for paging).
    pub fn iter_from<'a>(
        &'a self,
        key: &StoreKey,
        ns: Option<&'a str>,
        after: Option<&ObjKey>,
    ) -> Box<dyn Iterator<Item = (&'a ObjKey, &'a Arc<Stored>)> + 'a> {
        use std::ops::Bound;
        let Some(m) = self.objects.get(key) else {
            return Box::new(std::iter::empty());
        };
        let lower = match (after, ns) {
            (Some(a), _) => Bound::Excluded(a.clone()),
            (None, Some(ns)) => Bound::Included((ns.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let it = m.range((lower, Bound::Unbounded));
        match ns {
            Some(ns) => Box::new(it.take_while(move |((n, _), _)| n == ns)),
            None => Box::new(it),
        }
    }

    pub fn count_in_namespace(&self, ns: &str) -> usize {
        self.objects
            .values()
            .map(|m| {
                m.range((ns.to_string(), String::new())..)
                    .take_while(|((n, _), _)| n == ns)
                    .count()
            })
            .sum()
    }

    pub fn keys(&self) -> Vec<StoreKey> {
        self.objects.keys().cloned().collect()
    }

    /// Stores `obj` (its metadata.resourceVersion must already be `rv`) and records the event.
    pub fn put(
        &mut self,
        key: &StoreKey,
        ns: &str,
        name: &str,
        obj: &Value,
        rv: u64,
    ) -> Arc<Stored> {
        let obj = Stored::new(obj);
        let old = self
            .objects
            .entry(key.clone())
            .or_default()
            .insert((ns.to_string(), name.to_string()), obj.clone());
        let etype = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(StoreEvent {
            rv,
            key: key.clone(),
            namespace: ns.to_string(),
            etype,
            object: obj.clone(),
            old,
        });
        obj
    }

    /// Removes an object; `last` is its final state (with the deletion's resourceVersion).
    pub fn remove(
        &mut self,
        key: &StoreKey,
        ns: &str,
        name: &str,
        last: &Value,
        rv: u64,
    ) -> Arc<Stored> {
        let last = Stored::new(last);
        let old = self
            .objects
            .get_mut(key)
            .and_then(|m| m.remove(&(ns.to_string(), name.to_string())));
        self.record(StoreEvent {
            rv,
            key: key.clone(),
            namespace: ns.to_string(),
            etype: EventType::Deleted,
            object: last.clone(),
            old,
        });
        last
    }

    fn record(&mut self, ev: StoreEvent) {
        let ev = Arc::new(ev);
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_cap {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        // No receivers is fine.
        let _ = self.tx.send(ev);
    }

    /// Forgets the whole event history (as an etcd compaction would): watches from any
    /// earlier resourceVersion then get 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Events after `rv`, plus a receiver for later ones; None if `rv` is too old.
    pub fn subscribe_from(&self, rv: u64) -> Option<Subscription> {
        if rv < self.compacted {
            return None;
        }
        // The history is in resourceVersion order.
        let first = self.history.partition_point(|e| e.rv <= rv);
        let past = self.history.range(first..).cloned().collect();
        Some((past, self.tx.subscribe()))
    }
}

/// One requirement of a label selector.
#[derive(Debug, Clone)]
pub(crate) enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn split_top_level(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

pub(crate) fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut reqs = vec![];
    for term in split_top_level(s) {
        if let Some(k) = term.strip_prefix('!') {
            reqs.push(LabelReq::NotExists(k.trim().to_string()));
            continue;
        }
        let set_op = |op: &str| -> Option<(String, Vec<String>)> {
            let idx = term.find(op)?;
            let key = term[..idx].trim().to_string();
            let rest = term[idx + op.len()..].trim();
            let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
            Some((
                key,
                inner
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect(),
            ))
        };
        if let Some((k, vs)) = set_op(" notin ") {
            reqs.push(LabelReq::NotIn(k, vs));
        } else if let Some((k, vs)) = set_op(" in ") {
            reqs.push(LabelReq::In(k, vs));
        } else if let Some((k, v)) = term.split_once("!=") {
            reqs.push(LabelReq::NotEq(k.trim().into(), v.trim().into()));
        } else if let Some((k, v)) = term.split_once("==") {
            reqs.push(LabelReq::Eq(k.trim().into(), v.trim().into()));
        } else if let Some((k, v)) = term.split_once('=') {
            reqs.push(LabelReq::Eq(k.trim().into(), v.trim().into()));
        } else if term.contains(['(', ')', ' ', '<', '>']) {
            return Err(format!("unable to parse requirement: {term}"));
        } else {
            reqs.push(LabelReq::Exists(term));
        }
    }
    Ok(reqs)
}

pub(crate) fn labels_match(reqs: &[LabelReq], obj: &Value) -> bool {
    let labels = &obj["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
        LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
        LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        LabelReq::Exists(k) => get(k).is_some(),
        LabelReq::NotExists(k) => get(k).is_none(),
    })
}

#[derive(Debug, Clone)]
pub(crate) struct FieldReq {
    pub path: String,
    pub value: String,
    pub negate: bool,
}

pub(crate) fn parse_field_selector(s: &str) -> Result<Vec<FieldReq>, String> {
    let mut reqs = vec![];
    for term in split_top_level(s) {
        let (path, value, negate) = if let Some((k, v)) = term.split_once("!=") {
            (k, v, true)
        } else if let Some((k, v)) = term.split_once("==") {
            (k, v, false)
        } else if let Some((k, v)) = term.split_once('=') {
            (k, v, false)
        } else {
            return Err(format!(
                "invalid selector: '{s}'; can't understand '{term}'"
            ));
        };
        reqs.push(FieldReq {
            path: path.trim().to_string(),
            value: value.trim().to_string(),
            negate,
        });
    }
    Ok(reqs)
}

/// The value of a dotted field path as a field selector sees it ("" when absent).
pub(crate) fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for part in path.trim_start_matches('.').split('.') {
        cur = &cur[part];
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

pub(crate) fn fields_match(reqs: &[FieldReq], obj: &Value) -> bool {
    reqs.iter()
        .all(|r| (field_value(obj, &r.path) == r.value) != r.negate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "n", "namespace": "ns", "labels": labels}, "spec": {"x": 1}})
    }

    #[test]
    fn label_selectors() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| labels_match(&parse_label_selector(s).unwrap(), &o);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("app in (api, web)"));
        assert!(!m("app notin (api,web)"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("tier in (front),app"));
        assert!(m(""));
        assert!(parse_label_selector("app in (a").is_err());
    }

    #[test]
    fn field_selectors() {
        let o = obj(json!({}));
        let m = |s: &str| fields_match(&parse_field_selector(s).unwrap(), &o);
        assert!(m("metadata.name=n"));
        assert!(m("metadata.namespace==ns,spec.x=1"));
        assert!(!m("metadata.name!=n"));
        assert!(parse_field_selector("nonsense").is_err());
    }

    #[test]
    fn history_window_and_compaction() {
        let mut s = Store::new(2);
        let key = StoreKey::new("g", "r");
        for i in 1..=4u64 {
            let rv = s.next_rv();
            s.put(&key, "ns", &format!("o{i}"), &json!({"metadata": {}}), rv);
        }
        // events 3 and 4 are kept: watching from 2 works, from 1 is too old
        assert_eq!(s.subscribe_from(2).map(|(p, _)| p.len()), Some(2));
        assert!(s.subscribe_from(1).is_none());
        s.compact();
        assert!(s.subscribe_from(3).is_none());
        assert_eq!(s.subscribe_from(4).map(|(p, _)| p.len()), Some(0));
    }
}
