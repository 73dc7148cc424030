//! `/openapi/v2`: the Swagger 2.0 document kube-apiserver publishes, as JSON or in the
//! gnostic protobuf encoding (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`)
//! that kubectl before 1.27 requires for `explain` and client-side validation.
//! The protobuf writer below is hand-written against the field numbers of gnostic's
//! `openapiv2/OpenAPIv2.proto` (package `openapi.v2`).

use serde_json::{Map, Value, json};

use super::discovery::{
    GIT_VERSION, definition_name, kind_schema, list_meta_schema, object_meta_schema,
};
use super::registry::Registry;

pub(crate) const PROTO_MIME: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

const V3_REF: &str = "#/components/schemas/";
const V2_REF: &str = "#/definitions/";

/// Converts an OpenAPI v3 (structural) schema to Swagger 2.0 as kube-apiserver publishes it:
/// `$ref`s point at `#/definitions/`, single-`allOf` ref wrappers collapse to the `$ref`,
/// and what Swagger 2.0 cannot say (oneOf, anyOf, not, nullable, CEL rules) is dropped.
fn to_v2(s: &Value) -> Value {
    let Some(m) = s.as_object() else {
        return s.clone();
    };
    if let Some(all) = m.get("allOf").and_then(Value::as_array)
        && all.len() == 1
        && all[0].get("$ref").is_some()
    {
        let mut out = Map::new();
        if let Some(r) = all[0]["$ref"].as_str() {
            out.insert("$ref".into(), json!(r.replace(V3_REF, V2_REF)));
        }
        if let Some(d) = m.get("description") {
            out.insert("description".into(), d.clone());
        }
        return Value::Object(out);
    }
    let mut out = Map::new();
    for (k, v) in m {
        match k.as_str() {
            "oneOf" | "anyOf" | "not" | "nullable" | "x-kubernetes-validations" => {}
            "$ref" => {
                out.insert(
                    k.clone(),
                    json!(v.as_str().unwrap_or_default().replace(V3_REF, V2_REF)),
                );
            }
            "properties" => {
                let props: Map<String, Value> = v
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(pk, pv)| (pk.clone(), to_v2(pv)))
                    .collect();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" if v.is_object() => {
                out.insert(k.clone(), to_v2(v));
            }
            "allOf" => {
                let subs: Vec<Value> = v.as_array().into_iter().flatten().map(to_v2).collect();
                out.insert(k.clone(), Value::Array(subs));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

pub(crate) fn v2_json(registry: &Registry) -> Value {
    let mut defs = Map::new();
    defs.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into(),
        to_v2(&object_meta_schema()),
    );
    defs.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta".into(),
        to_v2(&list_meta_schema()),
    );
    // Built-ins have only placeholder schemas here; leaving them out makes kubectl skip its
    // client-side validation for them instead of rejecting their real fields.
    for d in registry.defs.iter().filter(|d| d.schema.is_some()) {
        defs.insert(definition_name(d), to_v2(&kind_schema(d)));
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": {},
        "definitions": defs,
    })
}

// ---------------------------------------------------------------- protobuf wire format

struct Pb(Vec<u8>);

impl Pb {
    fn new() -> Self {
        Pb(Vec::new())
    }
    fn varint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }
    fn tag(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.tag(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }
    fn message(&mut self, field: u32, m: Pb) {
        self.bytes(field, &m.0);
    }
    fn boolean(&mut self, field: u32, b: bool) {
        if b {
            self.tag(field, 0);
            self.varint(1);
        }
    }
    fn int64(&mut self, field: u32, v: i64) {
        self.tag(field, 0);
        self.varint(v as u64);
    }
    fn double(&mut self, field: u32, v: f64) {
        self.tag(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

/// openapi.v2.Any with the value as YAML text (JSON is YAML), as kube-openapi reads it.
fn any(v: &Value) -> Pb {
    let mut p = Pb::new();
    p.string(2, &v.to_string());
    p
}

fn named_any(name: &str, v: &Value) -> Pb {
    let mut p = Pb::new();
    p.string(1, name);
    p.message(2, any(v));
    p
}

fn schema(s: &Value) -> Pb {
    let mut p = Pb::new();
    let str_field = |p: &mut Pb, field: u32, key: &str| {
        if let Some(v) = s.get(key).and_then(Value::as_str) {
            p.string(field, v);
        }
    };
    str_field(&mut p, 1, "$ref");
    str_field(&mut p, 2, "format");
    str_field(&mut p, 3, "title");
    str_field(&mut p, 4, "description");
    if let Some(d) = s.get("default") {
        p.message(5, any(d));
    }
    for (field, key) in [(6, "multipleOf"), (7, "maximum")] {
        if let Some(x) = s.get(key).and_then(Value::as_f64) {
            p.double(field, x);
        }
    }
    p.boolean(8, s["exclusiveMaximum"].as_bool() == Some(true));
    if let Some(x) = s.get("minimum").and_then(Value::as_f64) {
        p.double(9, x);
    }
    p.boolean(10, s["exclusiveMinimum"].as_bool() == Some(true));
    for (field, key) in [(11, "maxLength"), (12, "minLength")] {
        if let Some(x) = s.get(key).and_then(Value::as_i64) {
            p.int64(field, x);
        }
    }
    str_field(&mut p, 13, "pattern");
    for (field, key) in [(14, "maxItems"), (15, "minItems")] {
        if let Some(x) = s.get(key).and_then(Value::as_i64) {
            p.int64(field, x);
        }
    }
    p.boolean(16, s["uniqueItems"].as_bool() == Some(true));
    for (field, key) in [(17, "maxProperties"), (18, "minProperties")] {
        if let Some(x) = s.get(key).and_then(Value::as_i64) {
            p.int64(field, x);
        }
    }
    for r in s["required"].as_array().into_iter().flatten() {
        if let Some(r) = r.as_str() {
            p.bytes(19, r.as_bytes());
        }
    }
    for e in s["enum"].as_array().into_iter().flatten() {
        p.message(20, any(e));
    }
    match s.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut a = Pb::new();
            a.tag(2, 0);
            a.varint(u64::from(*b));
            p.message(21, a);
        }
        Some(sub @ Value::Object(_)) => {
            let mut a = Pb::new();
            a.message(1, schema(sub));
            p.message(21, a);
        }
        _ => {}
    }
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let mut ti = Pb::new();
        ti.bytes(1, t.as_bytes());
        p.message(22, ti);
    }
    if let Some(items) = s.get("items").filter(|i| i.is_object()) {
        let mut ii = Pb::new();
        ii.message(1, schema(items));
        p.message(23, ii);
    }
    for sub in s["allOf"].as_array().into_iter().flatten() {
        p.message(24, schema(sub));
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        let mut pp = Pb::new();
        for (k, v) in props {
            let mut ns = Pb::new();
            ns.string(1, k);
            ns.message(2, schema(v));
            pp.message(1, ns);
        }
        p.message(25, pp);
    }
    p.boolean(27, s["readOnly"].as_bool() == Some(true));
    if let Some(m) = s.as_object() {
        for (k, v) in m {
            if k.starts_with("x-") {
                p.message(31, named_any(k, v));
            }
        }
    }
    p
}

/// The gnostic `openapi.v2.Document` encoding of a Swagger 2.0 JSON document.
pub(crate) fn v2_proto(doc: &Value) -> Vec<u8> {
    let mut p = Pb::new();
    p.string(1, doc["swagger"].as_str().unwrap_or("2.0"));
    let mut info = Pb::new();
    info.string(1, doc["info"]["title"].as_str().unwrap_or_default());
    info.string(2, doc["info"]["version"].as_str().unwrap_or_default());
    p.message(2, info);
    p.message(8, Pb::new());
    let mut defs = Pb::new();
    for (name, s) in doc["definitions"].as_object().into_iter().flatten() {
        let mut ns = Pb::new();
        ns.string(1, name);
        ns.message(2, schema(s));
        defs.message(1, ns);
    }
    p.message(9, defs);
    p.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields_encode_as_protobuf() {
        let mut p = Pb::new();
        p.varint(300);
        assert_eq!(p.0, vec![0xac, 0x02]);
        let mut p = Pb::new();
        p.string(1, "2.0");
        assert_eq!(p.0, vec![0x0a, 3, b'2', b'.', b'0']);
        let s = schema(&json!({"type": "string", "description": "d"}));
        // description (4, len) then type (22 -> TypeItem{value: "string"})
        assert_eq!(s.0[0], (4 << 3) | 2);
        assert_eq!(&s.0[3..6], &[0xb2, 0x01, 8]);
    }

    #[test]
    fn v3_refs_become_v2_refs() {
        let v = to_v2(
            &json!({"properties": {"metadata": {"allOf": [{"$ref": "#/components/schemas/X"}], "description": "m"}},
                              "oneOf": [{}], "nullable": true}),
        );
        assert_eq!(
            v,
            json!({"properties": {"metadata": {"$ref": "#/definitions/X", "description": "m"}}})
        );
    }
}
