//! `meta.k8s.io/v1` Table responses (what `kubectl get` prints), from a CRD's
//! additionalPrinterColumns or the built-in kinds' columns.

use serde_json::{Value, json};

use super::registry::{Builtin, ResourceDef};

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// Kubernetes' `duration.HumanDuration`.
pub(crate) fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn age(ts: &Value) -> Value {
    match ts
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    {
        Some(t) => {
            let secs = super::clock::now()
                .signed_duration_since(t.with_timezone(&chrono::Utc))
                .num_seconds();
            json!(human_duration(secs))
        }
        None => json!("<unknown>"),
    }
}

/// Evaluates the simple JSONPath subset printer columns use: `.a.b`, `[0]`, `[*]`,
/// `[?(@.type=="Ready")]`. Returns every match.
pub(crate) fn jsonpath<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let path = path.trim();
    let path = path
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(path);
    let path = path.strip_prefix('$').unwrap_or(path);
    let mut cur: Vec<&Value> = vec![obj];
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            rest = &r[end..];
            if key.is_empty() {
                continue;
            }
            cur = cur.into_iter().filter_map(|v| v.get(key)).collect();
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = find_bracket_end(r) else {
                return vec![];
            };
            let inner = &r[..end];
            rest = &r[end + 1..];
            cur = cur.into_iter().flat_map(|v| index(v, inner)).collect();
        } else {
            return vec![];
        }
    }
    cur
}

fn find_bracket_end(r: &str) -> Option<usize> {
    let mut depth = 0;
    let mut in_str: Option<char> = None;
    for (i, c) in r.char_indices() {
        match (c, in_str) {
            ('"' | '\'', None) => in_str = Some(c),
            (c2, Some(q)) if c2 == q => in_str = None,
            ('[', None) => depth += 1,
            (']', None) if depth == 0 => return Some(i),
            (']', None) => depth -= 1,
            _ => {}
        }
    }
    None
}

fn index<'a>(v: &'a Value, inner: &str) -> Vec<&'a Value> {
    let inner = inner.trim();
    if inner == "*" {
        return match v {
            Value::Array(a) => a.iter().collect(),
            Value::Object(m) => m.values().collect(),
            _ => vec![],
        };
    }
    if let Ok(i) = inner.parse::<i64>() {
        let Some(a) = v.as_array() else { return vec![] };
        let idx = if i < 0 { a.len() as i64 + i } else { i };
        return a.get(idx.max(0) as usize).into_iter().collect();
    }
    if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        let Some(a) = v.as_array() else { return vec![] };
        let (lhs, op, rhs) = if let Some((l, r)) = filter.split_once("==") {
            (l, "==", r)
        } else if let Some((l, r)) = filter.split_once("!=") {
            (l, "!=", r)
        } else {
            (filter, "exists", "")
        };
        let lhs = lhs.trim().strip_prefix('@').unwrap_or(lhs.trim());
        let rhs = rhs.trim().trim_matches(|c| c == '"' || c == '\'');
        return a
            .iter()
            .filter(|el| {
                let got = jsonpath(el, lhs);
                match op {
                    "exists" => !got.is_empty(),
                    _ => {
                        let eq = got.first().is_some_and(|g| match g {
                            Value::String(s) => s == rhs,
                            other => serde_json::to_string(other).is_ok_and(|s| s == rhs),
                        });
                        (op == "==") == eq
                    }
                }
            })
            .collect();
    }
    let key = inner.trim_matches(|c| c == '"' || c == '\'');
    v.get(key).into_iter().collect()
}

fn cell(col_type: &str, v: Option<&Value>) -> Value {
    let Some(v) = v else { return Value::Null };
    match col_type {
        "string" => match v {
            Value::String(s) => json!(s),
            Value::Null => Value::Null,
            other => json!(other.to_string()),
        },
        "integer" => v.as_i64().map(Value::from).unwrap_or(Value::Null),
        "number" => v.as_f64().map(Value::from).unwrap_or(Value::Null),
        "boolean" => v.as_bool().map(Value::from).unwrap_or(Value::Null),
        "date" => age(v),
        _ => v.clone(),
    }
}

struct Col {
    name: String,
    ty: String,
    format: String,
    desc: String,
    priority: i64,
    path: String,
}

fn col(name: &str, ty: &str, path: &str, desc: &str) -> Col {
    Col {
        name: name.into(),
        ty: ty.into(),
        format: String::new(),
        desc: desc.into(),
        priority: 0,
        path: path.into(),
    }
}

fn builtin_columns(def: &ResourceDef) -> Vec<Col> {
    let age_col = col("Age", "string", ".metadata.creationTimestamp", AGE_DESC);
    let mut cols = match def.builtin {
        Builtin::Namespace => vec![col(
            "Status",
            "string",
            ".status.phase",
            "The status of the namespace",
        )],
        Builtin::Secret => vec![
            col("Type", "string", ".type", "The type of the secret"),
            col(
                "Data",
                "string",
                "#count:.data",
                "The number of entries in the data",
            ),
        ],
        Builtin::ConfigMap => vec![col(
            "Data",
            "string",
            "#count:.data",
            "Number of data entries",
        )],
        Builtin::ServiceAccount => vec![col(
            "Secrets",
            "string",
            "#count:.secrets",
            "Number of secrets",
        )],
        Builtin::Lease => vec![col(
            "Holder",
            "string",
            ".spec.holderIdentity",
            "The holder of the lease",
        )],
        Builtin::MutatingWebhook | Builtin::ValidatingWebhook => {
            vec![col(
                "Webhooks",
                "integer",
                "#count:.webhooks",
                "The number of webhooks",
            )]
        }
        Builtin::Event | Builtin::EventV1 => {
            let (reason, obj, msg) = if def.builtin == Builtin::Event {
                (".reason", ".involvedObject", ".message")
            } else {
                (".reason", ".regarding", ".note")
            };
            vec![
                col("Type", "string", ".type", "Type of the event"),
                col("Reason", "string", reason, "Reason of the event"),
                col(
                    "Object",
                    "string",
                    &format!("#object:{obj}"),
                    "The object the event is about",
                ),
                col("Message", "string", msg, "The message of the event"),
            ]
        }
        Builtin::Crd => vec![col(
            "Created At",
            "date",
            ".metadata.creationTimestamp",
            AGE_DESC,
        )],
        Builtin::Custom | Builtin::SelfSubjectReview | Builtin::AccessReview => vec![],
        Builtin::Rbac | Builtin::Opaque => vec![],
    };
    if def.builtin != Builtin::Crd {
        cols.push(age_col);
    }
    cols
}

fn columns(def: &ResourceDef) -> Vec<Col> {
    let mut cols = vec![Col {
        name: "Name".into(),
        ty: "string".into(),
        format: "name".into(),
        desc: NAME_DESC.into(),
        priority: 0,
        path: ".metadata.name".into(),
    }];
    if def.is_custom() {
        if def.columns.is_empty() {
            let mut c = col("Age", "date", ".metadata.creationTimestamp", AGE_DESC);
            c.name = "Age".into();
            cols.push(c);
        } else {
            for c in &def.columns {
                cols.push(Col {
                    name: c["name"].as_str().unwrap_or_default().into(),
                    ty: c["type"].as_str().unwrap_or("string").into(),
                    format: c["format"].as_str().unwrap_or_default().into(),
                    desc: c["description"].as_str().unwrap_or_default().into(),
                    priority: c["priority"].as_i64().unwrap_or(0),
                    path: c["jsonPath"].as_str().unwrap_or_default().into(),
                });
            }
        }
    } else {
        cols.extend(builtin_columns(def));
    }
    cols
}

fn eval_col(c: &Col, obj: &Value) -> Value {
    if c.name == "Age" && !c.path.starts_with('#') && c.ty == "string" {
        return age(&obj["metadata"]["creationTimestamp"]);
    }
    if let Some(p) = c.path.strip_prefix("#count:") {
        let n = match jsonpath(obj, p).first() {
            Some(Value::Object(m)) => m.len(),
            Some(Value::Array(a)) => a.len(),
            _ => 0,
        };
        return if c.ty == "integer" {
            json!(n)
        } else {
            json!(n.to_string())
        };
    }
    if let Some(p) = c.path.strip_prefix("#object:") {
        let o = jsonpath(obj, p)
            .first()
            .cloned()
            .cloned()
            .unwrap_or(Value::Null);
        return json!(format!(
            "{}/{}",
            o["kind"].as_str().unwrap_or_default().to_lowercase(),
            o["name"].as_str().unwrap_or_default()
        ));
    }
    cell(&c.ty, jsonpath(obj, &c.path).first().copied())
}

/// A Table of `items` (already in the requested version).
pub(crate) fn table(
    def: &ResourceDef,
    items: &[Value],
    rv: u64,
    cont: Option<Value>,
    include_object: Option<&str>,
) -> Value {
    let cols = columns(def);
    let defs: Vec<Value> = cols
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": if c.ty == "date" { "date" } else { c.ty.as_str() },
                   "format": c.format, "description": c.desc, "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols.iter().map(|c| eval_col(c, o)).collect();
            let mut row = json!({"cells": cells});
            match include_object {
                Some("None") => {}
                Some("Object") => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o["metadata"],
                    })
                }
            }
            row
        })
        .collect();
    let mut md = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        md["continue"] = c;
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": md,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_kubernetes() {
        assert_eq!(human_duration(-5), "<invalid>");
        assert_eq!(human_duration(-1), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(human_duration(10 * 3600), "10h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(30 * 86400), "30d");
        assert_eq!(human_duration(3 * 365 * 86400 + 86400), "3y1d");
    }

    #[test]
    fn jsonpath_subset() {
        let o = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "Active", "status": "False"}]},
            "spec": {"ports": [{"n": 1}, {"n": 2}]}});
        assert_eq!(
            jsonpath(&o, ".status.conditions[?(@.type==\"Active\")].status"),
            vec![&json!("False")]
        );
        assert_eq!(jsonpath(&o, ".spec.ports[1].n"), vec![&json!(2)]);
        assert_eq!(jsonpath(&o, ".spec.ports[*].n").len(), 2);
        assert_eq!(jsonpath(&o, "{.spec.ports[-1].n}"), vec![&json!(2)]);
        assert!(jsonpath(&o, ".spec.missing").is_empty());
    }
}
