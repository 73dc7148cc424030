//! Decoding of the Kubernetes protobuf request bodies kubectl's typed commands send
//! (`kubectl create namespace|serviceaccount|secret|configmap|token`, `kubectl auth whoami|can-i`): the `k8s\0` envelope
//! (`runtime.Unknown`) and the few message types below, by their field numbers in
//! k8s.io/api's `generated.proto`. Anything else gets 415 like an unknown media type.

use base64::Engine;
use serde_json::{Map, Value, json};

const MAGIC: &[u8] = b"k8s\0";

/// One decoded field: (number, value).
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn fields(b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = vec![];
    let mut pos = 0;
    while pos < b.len() {
        let key = varint(b, &mut pos)?;
        let (num, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((num, Field::Varint(varint(b, &mut pos)?))),
            1 => pos = pos.checked_add(8)?,
            2 => {
                let len = usize::try_from(varint(b, &mut pos)?).ok()?;
                let end = pos.checked_add(len)?;
                out.push((num, Field::Bytes(b.get(pos..end)?)));
                pos = end;
            }
            5 => pos = pos.checked_add(4)?,
            _ => return None,
        }
    }
    (pos == b.len()).then_some(out)
}

fn string(b: &[u8]) -> Option<Value> {
    std::str::from_utf8(b).ok().map(|s| json!(s))
}

/// map<string, string|bytes> entries (key = 1, value = 2).
fn map_entry(b: &[u8], value_bytes: bool) -> Option<(String, Value)> {
    let mut k = String::new();
    let mut v = json!("");
    for (n, f) in fields(b)? {
        if let Field::Bytes(x) = f {
            match n {
                1 => k = std::str::from_utf8(x).ok()?.to_string(),
                2 if value_bytes => v = json!(base64::engine::general_purpose::STANDARD.encode(x)),
                2 => v = string(x)?,
                _ => {}
            }
        }
    }
    Some((k, v))
}

fn object_meta(b: &[u8]) -> Option<Value> {
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = vec![];
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                m.insert("name".into(), string(x)?);
            }
            (2, Field::Bytes(x)) => {
                m.insert("generateName".into(), string(x)?);
            }
            (3, Field::Bytes(x)) => {
                m.insert("namespace".into(), string(x)?);
            }
            (11, Field::Bytes(x)) => {
                let (k, v) = map_entry(x, false)?;
                labels.insert(k, v);
            }
            (12, Field::Bytes(x)) => {
                let (k, v) = map_entry(x, false)?;
                annotations.insert(k, v);
            }
            (14, Field::Bytes(x)) => finalizers.push(string(x)?),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Some(Value::Object(m))
}

fn body(kind: &str, raw: &[u8]) -> Option<Value> {
    let mut obj = Map::new();
    let mut data = Map::new();
    let mut string_data = Map::new();
    for (n, f) in fields(raw)? {
        match (kind, n, f) {
            (_, 1, Field::Bytes(x)) => {
                obj.insert("metadata".into(), object_meta(x)?);
            }
            ("Namespace", 2, Field::Bytes(x)) => {
                let mut fin = vec![];
                for (sn, sf) in fields(x)? {
                    if let (1, Field::Bytes(y)) = (sn, sf) {
                        fin.push(string(y)?);
                    }
                }
                obj.insert("spec".into(), json!({"finalizers": fin}));
            }
            ("Secret", 2, Field::Bytes(x)) => {
                let (k, v) = map_entry(x, true)?;
                data.insert(k, v);
            }
            ("Secret", 3, Field::Bytes(x)) => {
                obj.insert("type".into(), string(x)?);
            }
            ("Secret", 4, Field::Bytes(x)) | ("ConfigMap", 2, Field::Bytes(x)) => {
                let (k, v) = map_entry(x, false)?;
                if kind == "Secret" {
                    string_data.insert(k, v);
                } else {
                    data.insert(k, v);
                }
            }
            ("Secret", 5, Field::Varint(v)) | ("ConfigMap", 4, Field::Varint(v)) => {
                obj.insert("immutable".into(), json!(v != 0));
            }
            ("ServiceAccount", 4, Field::Varint(v)) => {
                obj.insert("automountServiceAccountToken".into(), json!(v != 0));
            }
            ("SelfSubjectAccessReview", 2, Field::Bytes(x)) => {
                let mut spec = Map::new();
                for (sn, sf) in fields(x)? {
                    let (key, names): (&str, &[&str]) = match sn {
                        1 => (
                            "resourceAttributes",
                            &[
                                "namespace",
                                "verb",
                                "group",
                                "version",
                                "resource",
                                "subresource",
                                "name",
                            ],
                        ),
                        2 => ("nonResourceAttributes", &["path", "verb"]),
                        _ => continue,
                    };
                    let Field::Bytes(y) = sf else { continue };
                    let mut attrs = Map::new();
                    for (an, af) in fields(y)? {
                        if let Field::Bytes(z) = af
                            && let Some(name) = usize::try_from(an)
                                .ok()
                                .and_then(|i| i.checked_sub(1))
                                .and_then(|i| names.get(i))
                        {
                            attrs.insert((*name).into(), string(z)?);
                        }
                    }
                    spec.insert(key.into(), Value::Object(attrs));
                }
                obj.insert("spec".into(), Value::Object(spec));
            }
            ("SelfSubjectRulesReview", 2, Field::Bytes(x)) => {
                let mut spec = Map::new();
                for (sn, sf) in fields(x)? {
                    if let (1, Field::Bytes(y)) = (sn, sf) {
                        spec.insert("namespace".into(), string(y)?);
                    }
                }
                obj.insert("spec".into(), Value::Object(spec));
            }
            ("TokenRequest", 2, Field::Bytes(x)) => {
                let mut spec = Map::new();
                let mut audiences = vec![];
                for (sn, sf) in fields(x)? {
                    match (sn, sf) {
                        (1, Field::Bytes(y)) => audiences.push(string(y)?),
                        (4, Field::Varint(v)) => {
                            spec.insert("expirationSeconds".into(), json!(v));
                        }
                        (3, Field::Bytes(y)) => {
                            let mut r = Map::new();
                            for (rn, rf) in fields(y)? {
                                if let Field::Bytes(z) = rf {
                                    let key = match rn {
                                        1 => "kind",
                                        2 => "apiVersion",
                                        3 => "name",
                                        4 => "uid",
                                        _ => continue,
                                    };
                                    r.insert(key.into(), string(z)?);
                                }
                            }
                            spec.insert("boundObjectRef".into(), Value::Object(r));
                        }
                        _ => {}
                    }
                }
                spec.insert("audiences".into(), Value::Array(audiences));
                obj.insert("spec".into(), Value::Object(spec));
            }
            _ => {}
        }
    }
    if !data.is_empty() {
        obj.insert("data".into(), Value::Object(data));
    }
    if !string_data.is_empty() {
        obj.insert("stringData".into(), Value::Object(string_data));
    }
    Some(Value::Object(obj))
}

/// Decodes a `application/vnd.kubernetes.protobuf` body of a supported kind into JSON.
pub(crate) fn decode(b: &[u8]) -> Option<Value> {
    let rest = b.strip_prefix(MAGIC)?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (n, f) in fields(rest)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (tn, tf) in fields(tm)? {
                    if let Field::Bytes(x) = tf {
                        match tn {
                            1 => api_version = std::str::from_utf8(x).ok()?.to_string(),
                            2 => kind = std::str::from_utf8(x).ok()?.to_string(),
                            _ => {}
                        }
                    }
                }
            }
            (2, Field::Bytes(x)) => raw = x,
            // a content encoding (compression) is not supported
            (3, Field::Bytes(x)) if !x.is_empty() => return None,
            _ => {}
        }
    }
    if !matches!(
        kind.as_str(),
        "Namespace"
            | "Secret"
            | "ConfigMap"
            | "ServiceAccount"
            | "TokenRequest"
            | "SelfSubjectReview"
            | "SelfSubjectAccessReview"
            | "SelfSubjectRulesReview"
    ) {
        return None;
    }
    let mut obj = body(&kind, raw)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Some(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(field: u8, b: &[u8]) -> Vec<u8> {
        let mut v = vec![(field << 3) | 2, b.len() as u8];
        v.extend_from_slice(b);
        v
    }

    #[test]
    fn decodes_a_namespace_envelope() {
        let tm = [ld(1, b"v1"), ld(2, b"Namespace")].concat();
        let meta = [
            ld(1, b"team-a"),
            ld(11, &[ld(1, b"tier"), ld(2, b"dev")].concat()),
        ]
        .concat();
        let raw = ld(1, &meta);
        let msg = [MAGIC.to_vec(), ld(1, &tm), ld(2, &raw)].concat();
        let v = decode(&msg).expect("decodes");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "team-a", "labels": {"tier": "dev"}}})
        );
        assert!(decode(b"k8s\0\xff").is_none());
        assert!(decode(b"{}").is_none());
    }
}
