//! JSON merge patch, JSON patch (RFC 6902, including `test`) and the strategic-merge-patch
//! subset kubectl sends for built-in kinds.

use serde_json::Value;

use super::error::{ApiError, ApiResult};

pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

pub(crate) fn json_patch(target: &mut Value, patch_body: &[u8]) -> ApiResult<()> {
    let mut ops: Vec<Value> = serde_json::from_slice(patch_body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    // kube-apiserver's JSON patch (evanphx/json-patch) lets `test` with a null value pass
    // when the path does not exist; kube-runtime's finalizer helper relies on it
    // (`test /metadata/finalizers null` then `add`). Apply each such op against the
    // document as the earlier ops leave it.
    let mut doc = target.clone();
    for op in ops.drain(..) {
        let is_null_test = op["op"] == "test" && op.get("value").is_none_or(Value::is_null);
        let missing = op["path"]
            .as_str()
            .is_some_and(|p| doc.pointer(p).is_none());
        if is_null_test && missing {
            continue;
        }
        let one: json_patch::Patch = serde_json::from_value(Value::Array(vec![op]))
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        json_patch::patch(&mut doc, &one).map_err(ApiError::patch_failed)?;
    }
    *target = doc;
    Ok(())
}

/// Merge key of a list field under strategic merge patch (the built-ins kube-sim serves).
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "webhooks" => Some("name"),
        "ownerReferences" => Some("uid"),
        "conditions" => Some("type"),
        _ => None,
    }
}

fn primitive_merge(field: &str) -> bool {
    field == "finalizers"
}

pub(crate) fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(pm) = patch else {
        *target = patch.clone();
        return;
    };
    if pm.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = patch.clone();
        if let Some(o) = p.as_object_mut() {
            o.remove("$patch");
        }
        *target = strip_directives(&p);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Some(tm) = target.as_object_mut() else {
        return;
    };
    if let Some(keep) = pm.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        tm.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, pv) in pm {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Some(del)) = (tm.get_mut(field), pv.as_array()) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        match pv {
            Value::Null => {
                tm.remove(k);
            }
            Value::Object(o) if o.get("$patch").and_then(Value::as_str) == Some("delete") => {
                tm.remove(k);
            }
            Value::Object(_) => {
                let entry = tm.entry(k.clone()).or_insert(Value::Null);
                strategic_merge(entry, pv);
            }
            Value::Array(items) => {
                let cur = tm.get(k).and_then(Value::as_array).cloned();
                let merged = match (cur, merge_key(k)) {
                    (Some(mut cur), Some(key)) => {
                        for it in items {
                            let id = &it[key];
                            let pos = cur.iter().position(|c| &c[key] == id);
                            if it.get("$patch").and_then(Value::as_str) == Some("delete") {
                                if let Some(p) = pos {
                                    cur.remove(p);
                                }
                            } else if let Some(p) = pos {
                                strategic_merge(&mut cur[p], it);
                            } else {
                                cur.push(strip_directives(it));
                            }
                        }
                        cur
                    }
                    (Some(mut cur), None) if primitive_merge(k) => {
                        for it in items {
                            if !cur.contains(it) {
                                cur.push(it.clone());
                            }
                        }
                        cur
                    }
                    _ => items.iter().map(strip_directives).collect(),
                };
                tm.insert(k.clone(), Value::Array(merged));
            }
            other => {
                tm.insert(k.clone(), other.clone());
            }
        }
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}
