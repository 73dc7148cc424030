//! Field ownership (`metadata.managedFields`, FieldsV1) and server-side apply.
//!
//! Ownership is tracked per leaf field. Lists are atomic unless they are sets
//! (`metadata.finalizers`, or `x-kubernetes-list-type: set` in a CRD schema), whose elements
//! are owned individually, or maps (`x-kubernetes-list-type: map` with
//! `x-kubernetes-list-map-keys`), whose elements are identified by their keys and merged
//! field by field.

use std::collections::BTreeSet;
use std::ops::Bound;

use serde_json::{Map, Value, json};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Ord, PartialOrd)]
pub(crate) enum Pe {
    F(String),
    /// A set element, as its JSON text.
    V(String),
    /// A map-list element, by the JSON text of its key fields (`{"type":"Ready"}`).
    K(String),
}

pub(crate) type FPath = Vec<Pe>;
pub(crate) type FieldSet = BTreeSet<FPath>;

/// Which part of the object an operation may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The main resource; `with_status` when the kind has no status subresource.
    Main {
        with_status: bool,
    },
    Status,
}

impl Scope {
    pub fn subresource(self) -> &'static str {
        match self {
            Scope::Main { .. } => "",
            Scope::Status => "status",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: FieldSet,
}

pub(crate) fn path_string(p: &FPath) -> String {
    let mut s = String::new();
    for e in p {
        match e {
            Pe::F(f) => {
                s.push('.');
                s.push_str(f);
            }
            Pe::V(v) => {
                s.push_str("[=");
                s.push_str(v);
                s.push(']');
            }
            Pe::K(k) => {
                let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
                s.push('[');
                s.push_str(&parts.join(","));
                s.push(']');
            }
        }
    }
    s
}

fn fields_to_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for p in set {
        let mut cur = &mut root;
        for (i, e) in p.iter().enumerate() {
            let key = match e {
                Pe::F(f) => format!("f:{f}"),
                Pe::V(v) => format!("v:{v}"),
                Pe::K(k) => format!("k:{k}"),
            };
            let last = i + 1 == p.len();
            let entry = cur.entry(key).or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            let Some(next) = entry.as_object_mut() else {
                break;
            };
            // a path that is owned itself and also has owned children gets "." (its children
            // follow it directly in the set's order)
            if last {
                let has_children = set
                    .range::<FPath, _>((Bound::Excluded(p), Bound::Unbounded))
                    .next()
                    .is_some_and(|q| q.len() > p.len() && q.starts_with(p));
                if has_children || !next.is_empty() {
                    next.insert(".".into(), json!({}));
                }
            }
            cur = next;
        }
    }
    Value::Object(root)
}

fn v1_to_fields(v: &Value, prefix: &mut FPath, out: &mut FieldSet) {
    let Some(m) = v.as_object() else { return };
    for (k, child) in m {
        if k == "." {
            out.insert(prefix.clone());
            continue;
        }
        let pe = if let Some(f) = k.strip_prefix("f:") {
            Pe::F(f.to_string())
        } else if let Some(v) = k.strip_prefix("v:") {
            Pe::V(v.to_string())
        } else if let Some(v) = k.strip_prefix("k:") {
            Pe::K(v.to_string())
        } else {
            Pe::F(k.clone())
        };
        prefix.push(pe);
        if child.as_object().is_none_or(|c| c.is_empty()) {
            out.insert(prefix.clone());
        } else {
            v1_to_fields(child, prefix, out);
        }
        prefix.pop();
    }
}

pub(crate) fn parse_managed(obj: &Value) -> Vec<Entry> {
    let mut out = vec![];
    for e in obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let mut fields = FieldSet::new();
        v1_to_fields(&e["fieldsV1"], &mut vec![], &mut fields);
        out.push(Entry {
            manager: e["manager"].as_str().unwrap_or_default().into(),
            operation: e["operation"].as_str().unwrap_or("Update").into(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
            time: e["time"].as_str().unwrap_or_default().into(),
            subresource: e["subresource"].as_str().unwrap_or_default().into(),
            fields,
        });
    }
    out
}

pub(crate) fn write_managed(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_to_v1(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(md) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            md.remove("managedFields");
        } else {
            md.insert("managedFields".into(), Value::Array(list));
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListKind {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// How the list at `path` merges: atomic, a set (per-element ownership, union on apply) or
/// a map keyed by some of its elements' fields.
pub(crate) fn list_kind(schema: Option<&Value>, path: &[Pe]) -> ListKind {
    if path == [Pe::F("metadata".into()), Pe::F("finalizers".into())] {
        return ListKind::Set;
    }
    let Some(mut s) = schema else {
        return ListKind::Atomic;
    };
    for e in path {
        match e {
            Pe::F(f) => {
                let next = &s["properties"][f];
                s = if next.is_object() {
                    next
                } else {
                    &s["additionalProperties"]
                };
            }
            Pe::V(_) | Pe::K(_) => s = &s["items"],
        }
    }
    match s["x-kubernetes-list-type"].as_str() {
        Some("set") => ListKind::Set,
        Some("map") => {
            let keys: Vec<String> = s["x-kubernetes-list-map-keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect();
            if keys.is_empty() {
                ListKind::Atomic
            } else {
                ListKind::Map(keys)
            }
        }
        _ => ListKind::Atomic,
    }
}

pub(crate) fn is_set_list(schema: Option<&Value>, path: &[Pe]) -> bool {
    list_kind(schema, path) == ListKind::Set
}

/// The key of a map-list element, as canonical JSON; None when a key field is missing.
fn element_key(el: &Value, keys: &[String]) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        let v = el.get(k)?;
        m.insert(k.clone(), v.clone());
    }
    Some(Value::Object(m).to_string())
}

/// A map-list element's own path (membership, not a value: never a conflict by itself).
fn is_element(p: &[Pe]) -> bool {
    matches!(p.last(), Some(Pe::K(_)))
}

fn key_matches(el: &Value, key: &str) -> bool {
    let Ok(Value::Object(want)) = serde_json::from_str::<Value>(key) else {
        return false;
    };
    want.iter().all(|(k, v)| el.get(k) == Some(v))
}

const OWNED_METADATA: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];

/// The part of `obj` an operation in `scope` may own.
pub(crate) fn scoped(obj: &Value, scope: Scope) -> Value {
    let mut out = Map::new();
    let Some(m) = obj.as_object() else {
        return Value::Object(out);
    };
    for (k, v) in m {
        match (k.as_str(), scope) {
            ("apiVersion" | "kind", _) => {}
            ("metadata", Scope::Main { .. }) => {
                let mut md = Map::new();
                for f in OWNED_METADATA {
                    if let Some(x) = v.get(f)
                        && !x.is_null()
                    {
                        md.insert(f.into(), x.clone());
                    }
                }
                if !md.is_empty() {
                    out.insert(k.clone(), Value::Object(md));
                }
            }
            ("metadata", Scope::Status) => {}
            ("status", Scope::Status) => {
                out.insert(k.clone(), v.clone());
            }
            ("status", Scope::Main { with_status }) => {
                if with_status {
                    out.insert(k.clone(), v.clone());
                }
            }
            (_, Scope::Main { .. }) => {
                out.insert(k.clone(), v.clone());
            }
            (_, Scope::Status) => {}
        }
    }
    Value::Object(out)
}

fn walk(v: &Value, prefix: &mut FPath, out: &mut FieldSet, schema: Option<&Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, cv) in m {
                prefix.push(Pe::F(k.clone()));
                walk(cv, prefix, out, schema);
                prefix.pop();
            }
        }
        Value::Array(a) if !a.is_empty() && is_set_list(schema, prefix) => {
            for el in a {
                prefix.push(Pe::V(el.to_string()));
                out.insert(prefix.clone());
                prefix.pop();
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let keys = match list_kind(schema, prefix) {
                ListKind::Map(keys) if a.iter().all(|el| element_key(el, &keys).is_some()) => keys,
                _ => {
                    out.insert(prefix.clone());
                    return;
                }
            };
            for el in a {
                let Some(k) = element_key(el, &keys) else {
                    continue;
                };
                prefix.push(Pe::K(k));
                // the element itself ("." in FieldsV1) and its fields
                out.insert(prefix.clone());
                walk(el, prefix, out, schema);
                prefix.pop();
            }
        }
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        }
    }
}

/// Leaf field paths of an already scoped object.
pub(crate) fn leaves(scoped_obj: &Value, schema: Option<&Value>) -> FieldSet {
    let mut out = FieldSet::new();
    walk(scoped_obj, &mut vec![], &mut out, schema);
    out
}

pub(crate) fn value_at<'a>(obj: &'a Value, path: &[Pe]) -> Option<&'a Value> {
    let mut cur = obj;
    for e in path {
        match e {
            Pe::F(f) => cur = cur.get(f)?,
            Pe::V(v) => {
                let want: Value = serde_json::from_str(v).ok()?;
                cur = cur.as_array()?.iter().find(|x| **x == want)?;
            }
            Pe::K(k) => cur = cur.as_array()?.iter().find(|x| key_matches(x, k))?,
        }
    }
    Some(cur)
}

fn remove_path(obj: &mut Value, path: &[Pe]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for e in parent_path {
        let next = match e {
            Pe::F(f) => cur.get_mut(f),
            Pe::K(k) => cur
                .as_array_mut()
                .and_then(|a| a.iter_mut().find(|x| key_matches(x, k))),
            Pe::V(_) => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Pe::F(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Pe::V(v) => {
            if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(v), cur.as_array_mut()) {
                a.retain(|x| *x != want);
            }
        }
        Pe::K(k) => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|x| !key_matches(x, k));
            }
        }
    }
}

fn merge_into(target: &mut Value, applied: &Value, prefix: &mut FPath, schema: Option<&Value>) {
    match (target.as_object_mut(), applied) {
        (Some(tm), Value::Object(am)) => {
            for (k, av) in am {
                prefix.push(Pe::F(k.clone()));
                match tm.get_mut(k) {
                    Some(tv) => merge_into(tv, av, prefix, schema),
                    None => {
                        tm.insert(k.clone(), av.clone());
                    }
                }
                prefix.pop();
            }
        }
        _ => {
            if let (Some(ta), Some(aa)) = (target.as_array_mut(), applied.as_array()) {
                match list_kind(schema, prefix) {
                    ListKind::Set => {
                        for x in aa {
                            if !ta.contains(x) {
                                ta.push(x.clone());
                            }
                        }
                        return;
                    }
                    ListKind::Map(keys) if aa.iter().all(|el| element_key(el, &keys).is_some()) => {
                        for x in aa {
                            let Some(k) = element_key(x, &keys) else {
                                continue;
                            };
                            prefix.push(Pe::K(k.clone()));
                            match ta.iter_mut().find(|t| key_matches(t, &k)) {
                                Some(t) => merge_into(t, x, prefix, schema),
                                None => ta.push(x.clone()),
                            }
                            prefix.pop();
                        }
                        return;
                    }
                    _ => {}
                }
            }
            *target = applied.clone();
        }
    }
}

fn overlaps(a: &[Pe], b: &[Pe]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Whether some path of `set` overlaps `p` (is `p`, above it or below it), by lookups: the
/// paths above `p` are its prefixes, the paths below follow `p` in the set's order.
fn overlaps_any(set: &FieldSet, p: &[Pe]) -> bool {
    (0..=p.len()).any(|k| set.contains(&p[..k]))
        || set
            .range::<[Pe], _>((Bound::Excluded(p), Bound::Unbounded))
            .next()
            .is_some_and(|q| q.starts_with(p))
}

/// Records an Update (PUT, or a non-apply patch) by `manager` from `old` to `new` in new's
/// managedFields. Returns whether anything changed.
pub(crate) fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    scope: Scope,
    schema: Option<&Value>,
    now: &str,
) {
    let mut entries = old.map(parse_managed).unwrap_or_default();
    let empty = Value::Object(Map::new());
    let old_scoped = scoped(old.unwrap_or(&empty), scope);
    let new_scoped = scoped(new, scope);
    let new_leaves = leaves(&new_scoped, schema);
    let changed: FieldSet = new_leaves
        .iter()
        .filter(|p| {
            if is_element(p) {
                value_at(&old_scoped, p).is_none()
            } else {
                value_at(&old_scoped, p) != value_at(&new_scoped, p)
            }
        })
        .cloned()
        .collect();
    let removed: FieldSet = leaves(&old_scoped, schema)
        .into_iter()
        .filter(|p| value_at(&new_scoped, p).is_none())
        .collect();
    if changed.is_empty() && removed.is_empty() {
        write_managed(new, &entries);
        return;
    }
    for e in &mut entries {
        if e.subresource != scope.subresource()
            && !matches!(scope, Scope::Main { with_status: true })
        {
            // entries of the other scope own disjoint fields
        }
        e.fields
            .retain(|p| !overlaps_any(&changed, p) && !removed.contains(p));
    }
    let sub = scope.subresource();
    match entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == sub)
    {
        Some(e) => {
            e.fields.extend(changed);
            e.time = now.to_string();
            e.api_version = api_version.to_string();
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version: api_version.to_string(),
            time: now.to_string(),
            subresource: sub.to_string(),
            fields: changed,
        }),
    }
    write_managed(new, &entries);
}

pub(crate) struct ApplyRequest<'a> {
    pub manager: &'a str,
    pub force: bool,
    pub scope: Scope,
    pub schema: Option<&'a Value>,
    pub api_version: &'a str,
    pub now: &'a str,
}

/// Server-side apply of `applied` onto `live`. Err carries the conflicts (manager, field).
pub(crate) fn apply(
    live: &Value,
    applied: &Value,
    req: &ApplyRequest<'_>,
) -> Result<Value, Vec<(String, String)>> {
    let mut entries = parse_managed(live);
    let applied_scoped = scoped(applied, req.scope);
    let live_scoped = scoped(live, req.scope);
    let new_set = leaves(&applied_scoped, req.schema);
    let sub = req.scope.subresource();
    let is_me =
        |e: &Entry| e.manager == req.manager && e.operation == "Apply" && e.subresource == sub;
    let prev_set: FieldSet = entries
        .iter()
        .find(|e| is_me(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();

    let mut conflicts: Vec<(String, String)> = vec![];
    let mut taken: FieldSet = FieldSet::new();
    for p in new_set.iter().filter(|p| !is_element(p)) {
        let live_v = value_at(&live_scoped, p);
        let applied_v = value_at(&applied_scoped, p);
        for e in entries
            .iter()
            .filter(|e| !is_me(e) && e.manager != req.manager)
        {
            for q in &e.fields {
                let conflict = if q == p {
                    live_v.is_some() && live_v != applied_v
                } else if p.starts_with(q) {
                    value_at(&live_scoped, q).is_some_and(|v| !v.is_object())
                } else {
                    false
                };
                if conflict {
                    let c = (e.manager.clone(), path_string(q));
                    if !conflicts.contains(&c) {
                        conflicts.push(c);
                    }
                    taken.insert(q.clone());
                }
            }
        }
    }
    if !conflicts.is_empty() && !req.force {
        return Err(conflicts);
    }

    let mut result = live.clone();
    for p in prev_set.difference(&new_set) {
        let owned_by_other = entries
            .iter()
            .filter(|e| !is_me(e))
            .any(|e| e.fields.iter().any(|q| overlaps(p, q)));
        if !owned_by_other {
            remove_path(&mut result, p);
            // A map left empty by the removal goes too (kube-apiserver removes the map the
            // manager owned, not only its leaves), unless someone still sets something in it.
            for k in (1..p.len()).rev() {
                let parent = &p[..k];
                let empty = value_at(&result, parent)
                    .is_some_and(|v| v.as_object().is_some_and(|m| m.is_empty()));
                let still_wanted = new_set.iter().any(|q| q.starts_with(parent))
                    || entries
                        .iter()
                        .filter(|e| !is_me(e))
                        .any(|e| e.fields.iter().any(|q| q.starts_with(parent)));
                if !empty || still_wanted {
                    break;
                }
                remove_path(&mut result, parent);
            }
        }
    }
    let mut to_merge = applied_scoped.clone();
    // Only the owned metadata fields merge; name, namespace, uid ... are the server's.
    if let Some(md) = to_merge.get("metadata").cloned() {
        to_merge["metadata"] = md;
    }
    if !result.is_object() {
        result = Value::Object(Map::new());
    }
    merge_into(&mut result, &to_merge, &mut vec![], req.schema);

    for e in entries.iter_mut().filter(|e| !is_me(e)) {
        // A field this apply sets to another value than it has changes hands.
        e.fields.retain(|q| {
            !taken.contains(q)
                && (is_element(q)
                    || !(new_set.contains(q)
                        && value_at(&live_scoped, q).is_some()
                        && value_at(&live_scoped, q) != value_at(&applied_scoped, q)))
        });
    }
    match entries.iter_mut().find(|e| is_me(e)) {
        Some(e) => {
            if e.fields != new_set || value_changed(live, &result) {
                e.time = req.now.to_string();
            }
            e.fields = new_set;
            e.api_version = req.api_version.to_string();
        }
        None => entries.push(Entry {
            manager: req.manager.to_string(),
            operation: "Apply".into(),
            api_version: req.api_version.to_string(),
            time: req.now.to_string(),
            subresource: sub.to_string(),
            fields: new_set,
        }),
    }
    write_managed(&mut result, &entries);
    Ok(result)
}

fn value_changed(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(md) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            md.remove("managedFields");
        }
        v
    };
    strip(a) != strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_v1_round_trip() {
        let obj = json!({"metadata": {"labels": {"a": "1"}, "finalizers": ["x", "y"], "name": "n"},
                         "spec": {"a": {"b": 1}, "list": [1, 2]}, "status": {"s": 1}});
        let scope = Scope::Main { with_status: false };
        let set = leaves(&scoped(&obj, scope), None);
        assert!(set.contains(&vec![Pe::F("spec".into()), Pe::F("list".into())]));
        assert!(set.contains(&vec![
            Pe::F("metadata".into()),
            Pe::F("finalizers".into()),
            Pe::V("\"x\"".into())
        ]));
        assert!(!set.iter().any(|p| p[0] == Pe::F("status".into())));
        let v1 = fields_to_v1(&set);
        assert_eq!(v1["f:metadata"]["f:finalizers"]["v:\"y\""], json!({}));
        let mut back = FieldSet::new();
        v1_to_fields(&v1, &mut vec![], &mut back);
        assert_eq!(back, set);
    }
}

#[cfg(test)]
mod map_list_tests {
    use super::*;

    #[test]
    fn empty_apply_keeps_other_entries() {
        let schema = json!({"type": "object", "properties": {"status": {"type": "object", "properties": {
            "conditions": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
                "items": {"type": "object", "properties": {"type": {"type": "string"}, "status": {"type": "string"}}}}}}}});
        let req = |m: &'static str| ApplyRequest {
            manager: m,
            force: false,
            scope: Scope::Status,
            schema: Some(&schema),
            api_version: "v1",
            now: "t",
        };
        let live = json!({"metadata": {}, "status": {}});
        let a = apply(
            &live,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            &req("a"),
        )
        .unwrap();
        let b = apply(
            &a,
            &json!({"status": {"conditions": [{"type": "Synced", "status": "True"}]}}),
            &req("b"),
        )
        .unwrap();
        assert_eq!(
            b["status"]["conditions"].as_array().unwrap().len(),
            2,
            "{b}"
        );
        let c = apply(&b, &json!({"status": {"conditions": []}}), &req("b")).unwrap();
        assert_eq!(
            c["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}]),
            "{c}"
        );
    }
}
